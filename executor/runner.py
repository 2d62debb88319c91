"""Expert parallelism across processes with torch.distributed, timed op by op.

Each rank holds every non-expert weight (same seed) and num_experts / ep experts. A MoE layer
routes its tokens, sends only real-expert copies (zero-computation experts are applied locally:
their output is the token itself times its gate) with all_to_all_single and variable splits,
runs its experts, and sends the results back. Schedules: `sequential`; `scmoe`, where the
dispatch and combine run as async work handles under the dense path with the experts at slot K;
`sbo`, the same with K after the next attention block's QKV projection.
"""
from __future__ import annotations

import datetime
import json
import os
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from executor.model import Layer, TinyModel
from executor.probes import probe_dims, run_probes
from simulator.schema import ModelSpec

WINDOW = ("ffn0.ffn", "attn1.qkv_proj", "attn1.core", "attn1.o_proj", "ffn1.ffn")


@dataclass(frozen=True)
class RunConfig:
    """What one executor run does."""

    spec: dict                 # ModelSpec as a dict (picklable)
    ranks: int
    batch: int                 # sequences per rank
    seq: int                   # tokens per sequence
    schedule: str = "sequential"   # several, comma-separated, run alternately in one process group
    expert_slot: int = 2       # scmoe: experts before WINDOW[expert_slot]
    warmup: int = 2
    repeats: int = 5
    seed: int = 0
    threads: int = 1
    real_experts: float = 0.0  # real experts per token the routers are biased to; 0: the model's
    fail_rank: int = -1        # fault injection for tests: this rank raises mid-run


class _Clock:
    """Per-op start/end of one forward, relative to its start."""

    def __init__(self) -> None:
        self.t0 = time.perf_counter()
        self.ops: dict[str, list[float]] = {}

    def op(self, name: str, fn):
        s = time.perf_counter()
        out = fn()
        self.ops[name] = [s - self.t0, time.perf_counter() - self.t0]
        return out

    def start(self, name: str) -> None:
        self.ops[name] = [time.perf_counter() - self.t0, 0.0]

    def end(self, name: str) -> None:
        self.ops[name][1] = time.perf_counter() - self.t0


class _EP:
    """Dispatch / combine of one MoE layer over the EP group (or locally when ep == 1)."""

    def __init__(self, ep: int, rank: int, n_ffn: int) -> None:
        self.ep, self.rank, self.per = ep, rank, n_ffn // ep

    def permute(self, x: torch.Tensor, ids: torch.Tensor, n_ffn: int):
        real = ids < n_ffn
        tok, slot = real.nonzero(as_tuple=True)
        exp = ids[tok, slot]
        dest = exp // self.per
        order = torch.argsort(dest, stable=True)
        tok, slot, exp, dest = tok[order], slot[order], exp[order], dest[order]
        send = torch.cat([x[tok], (exp % self.per).to(x.dtype)[:, None]], dim=1)
        counts = torch.bincount(dest, minlength=self.ep)
        return send, counts, tok, slot

    def exchange_counts(self, counts: torch.Tensor) -> torch.Tensor:
        if self.ep == 1:
            return counts
        recv = torch.empty_like(counts)
        dist.all_to_all_single(recv, counts)
        return recv

    def all_to_all(self, send: torch.Tensor, out_splits: list[int], in_splits: list[int],
                   async_op: bool):
        if self.ep == 1:
            return send, None
        recv = send.new_empty((sum(out_splits), send.shape[1]))
        work = dist.all_to_all_single(recv, send, out_splits, in_splits, async_op=async_op)
        return recv, work


def layer_forward(layer: Layer, x: torch.Tensor, i: int, clock: _Clock, ep: _EP,
                  schedule: str, slot: int) -> torch.Tensor:
    """One layer, every op timed under its simulator name."""
    b, s, hdim = x.shape
    p = f"L{i}."
    attn = p + ("attn0." if layer.shortcut else "attn.")
    n = layer.norms[0](x)
    parts = clock.op(attn + "qkv_proj", lambda: layer.attn[0].qkv_proj(n))
    core = clock.op(attn + "core", lambda: layer.attn[0].core(parts, (b, s)))
    h = x + clock.op(attn + "o_proj", lambda: layer.attn[0].o(core))
    xm = layer.norms[1](h)
    if layer.moe is None:                                   # a dense layer
        out = clock.op(p + "ffn.ffn", lambda: layer.ffn[0](xm))
        return clock.op(p + "residual", lambda: h + out)
    state = {"h": h, "xm": xm}
    overlap = schedule in ("scmoe", "sbo")
    if layer.shortcut:                  # the dense path after MLA_0 overlaps the MoE branch
        window = _window(layer, state, b, s)
        k = 2 if schedule == "sbo" else (slot if overlap else 0)
    else:                               # conventional: only a shared expert can overlap
        shared = layer.moe.shared
        window = [] if shared is None else \
            [("moe.shared", lambda: state.update(shared=shared(xm)))]
        k = len(window) if overlap else 0
    moe_out = _moe(layer.moe, xm.reshape(b * s, hdim), clock, ep, p, window, overlap, k)
    return clock.op(p + "residual", lambda: state["h"] + moe_out.view(b, s, hdim)
                    + state.get("shared", 0.0))


def _moe(moe, flat: torch.Tensor, clock: _Clock, ep: _EP, p: str, window: list, overlap: bool,
         k: int) -> torch.Tensor:
    """Router, permute, dispatch, experts, combine, unpermute; `window` ops run in series after
    the combine, or (overlap) window[:k] under the dispatch and window[k:] under the combine."""
    hdim = flat.shape[1]
    ids, gates = clock.op(p + "moe.router", lambda: moe.route(flat))
    send, counts, tok, kslot = clock.op(p + "moe.permute",
                                        lambda: ep.permute(flat, ids, moe.n_ffn))
    clock.start(p + "moe.dispatch")
    rcounts = ep.exchange_counts(counts)
    in_splits, out_splits = counts.tolist(), rcounts.tolist()
    recv, work = ep.all_to_all(send, out_splits, in_splits, async_op=overlap)
    if overlap:
        for name, fn in window[:k]:
            clock.op(p + name, fn)
    if work is not None:
        work.wait()
    clock.end(p + "moe.dispatch")

    def experts():
        out = torch.empty_like(recv[:, :hdim])
        local = recv[:, hdim].long()
        for e in range(ep.per):
            rows = (local == e).nonzero(as_tuple=True)[0]
            if rows.numel():
                out[rows] = moe.experts[ep.rank * ep.per + e](recv[rows, :hdim])
        return out
    y = clock.op(p + "moe.experts", experts)
    clock.start(p + "moe.combine")
    back, work = ep.all_to_all(y.contiguous(), in_splits, out_splits, async_op=overlap)
    if overlap:
        for name, fn in window[k:]:
            clock.op(p + name, fn)
    if work is not None:
        work.wait()
    clock.end(p + "moe.combine")
    if not overlap:
        for name, fn in window:
            clock.op(p + name, fn)

    def unpermute():
        zero = ids >= moe.n_ffn
        out = flat * (gates * zero).sum(dim=1, keepdim=True)      # identity experts, locally
        out.index_add_(0, tok, back * gates[tok, kslot][:, None])
        return out
    return clock.op(p + "moe.unpermute", unpermute)


def _window(layer: Layer, st: dict, b: int, s: int) -> list:
    """The dense path after MLA_0 as (name, thunk) pairs that update st['h']."""
    def ffn0():
        st["h"] = st["h"] + layer.ffn[0](st["xm"])

    def qkv1():
        st["parts"] = layer.attn[1].qkv_proj(layer.norms[2](st["h"]))

    def core1():
        st["core"] = layer.attn[1].core(st["parts"], (b, s))

    def o1():
        st["h"] = st["h"] + layer.attn[1].o(st["core"])

    def ffn1():
        st["h"] = st["h"] + layer.ffn[1](layer.norms[3](st["h"]))
    return list(zip(WINDOW, (ffn0, qkv1, core1, o1, ffn1)))


def forward(model: TinyModel, x: torch.Tensor, ep: _EP, schedule: str, slot: int):
    """All layers; returns (output, op timings)."""
    clock = _Clock()
    for i, layer in enumerate(model.layers):
        x = layer_forward(layer, x, i, clock, ep, schedule, slot)
    return x, clock.ops


def inputs(cfg: RunConfig, rank: int, hidden: int) -> torch.Tensor:
    """The batch of one rank (deterministic)."""
    g = torch.Generator().manual_seed(cfg.seed + 1000 + rank)
    return torch.randn(cfg.batch, cfg.seq, hidden, generator=g)


def balance_routers(model: TinyModel, cfg: RunConfig) -> None:
    """Bias every router (as LongCat's controller would have in training) on the inputs of all
    ranks: the same result on every rank, routing the model's real experts per token."""
    spec, hidden = model.spec, model.spec.hidden_size
    if spec.moe is None:
        return
    x = torch.cat([inputs(cfg, r, hidden) for r in range(cfg.ranks)])
    b, s, _ = x.shape
    ep = _EP(1, 0, spec.moe.num_experts)
    with torch.no_grad():
        for i, layer in enumerate(model.layers):
            if layer.moe is not None:
                h = x + layer.attn[0].o(layer.attn[0].core(
                    layer.attn[0].qkv_proj(layer.norms[0](x)), (b, s)))
                layer.moe.balance(layer.norms[1](h).reshape(b * s, hidden),
                                  cfg.real_experts or spec.moe.mean_real_experts)
            x = layer_forward(layer, x, i, _Clock(), ep, "sequential", 0)


def _worker(rank: int, cfg: RunConfig, port: int, out_dir: str) -> None:
    from executor.microbench import pin_rank
    pin_rank(rank, cfg.threads)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=cfg.ranks,
                            timeout=datetime.timedelta(seconds=60))
    try:
        _body(rank, cfg, out_dir)
    except BaseException as exc:               # leave the cause for the parent to report
        Path(out_dir, f"error{rank}.txt").write_text(f"rank {rank}: {type(exc).__name__}: {exc}")
        raise
    finally:
        dist.destroy_process_group()


def _body(rank: int, cfg: RunConfig, out_dir: str) -> None:
    """Build the model, time every schedule, write medians and outputs."""
    spec = ModelSpec.model_validate(cfg.spec)
    model = TinyModel(spec, cfg.seed).eval()
    balance_routers(model, cfg)
    ep = _EP(cfg.ranks, rank, spec.moe.num_experts if spec.moe else 1)
    x = inputs(cfg, rank, spec.hidden_size)
    schedules = cfg.schedule.split(",")
    runs: dict[str, list] = {sch: [] for sch in schedules}
    probes: list[dict[str, float]] = []
    outs = {}
    with torch.no_grad():
        for it in range(cfg.warmup + cfg.repeats):
            if rank == cfg.fail_rank and it == 1:
                raise RuntimeError(f"injected failure on rank {rank}")
            for sch in schedules:          # alternate: every schedule sees the same machine
                dist.barrier()
                outs[sch], ops = forward(model, x, ep, sch, cfg.expert_slot)
                if it >= cfg.warmup:
                    runs[sch].append(ops)
            if it >= cfg.warmup:           # how fast the machine is between these rounds
                probes.append(run_probes(*probe_dims(spec, cfg.batch, cfg.seq)))
    med = {sch: {name: [statistics.median(r[name][0] for r in rs),
                        statistics.median(r[name][1] for r in rs)] for name in rs[0]}
           for sch, rs in runs.items()}
    totals = {sch: [max(v[1] for v in ops.values()) for ops in rs] for sch, rs in runs.items()}
    Path(out_dir, f"rank{rank}.json").write_text(json.dumps(
        {"ops": med[schedules[0]], "by_schedule": med, "totals": totals, "probes": probes}))
    torch.save(outs[schedules[0]], Path(out_dir, f"out{rank}.pt"))
    dist.barrier()


def run(cfg: RunConfig) -> dict:
    """Run the EP model in cfg.ranks processes; per-rank median op timings and outputs."""
    from executor.collbench import free_port
    with tempfile.TemporaryDirectory() as d:
        try:
            mp.start_processes(_worker, args=(cfg, free_port(), d), nprocs=cfg.ranks,
                               join=True, start_method="spawn")
        except (mp.ProcessRaisedException, mp.ProcessExitedException) as exc:
            from simulator.errors import MoesimError
            causes = [p.read_text() for p in sorted(Path(d).glob("error*.txt"))]
            # the rank that failed first is the one whose error is not a broken connection
            root = [c for c in causes if "gloo" not in c.lower()] or causes or [str(exc)]
            raise MoesimError("executor", f"a rank failed and the others were stopped: "
                              f"{root[0].strip().splitlines()[0]}",
                              "fix the failing rank's cause; rerun with --ranks 1 to isolate "
                              "it") from None
        ranks = [json.loads(Path(d, f"rank{r}.json").read_text()) for r in range(cfg.ranks)]
        outs = [torch.load(Path(d, f"out{r}.pt")) for r in range(cfg.ranks)]
    return {"ranks": ranks, "outputs": outs}


def reference(cfg: RunConfig) -> list[torch.Tensor]:
    """Single-process outputs for every rank's batch (all experts local)."""
    spec = ModelSpec.model_validate(cfg.spec)
    model = TinyModel(spec, cfg.seed).eval()
    balance_routers(model, cfg)
    ep = _EP(1, 0, spec.moe.num_experts if spec.moe else 1)
    with torch.no_grad():
        return [forward(model, inputs(cfg, r, spec.hidden_size), ep, "sequential", 0)[0]
                for r in range(cfg.ranks)]
