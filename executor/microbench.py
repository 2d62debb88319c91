"""Single-device microbenchmarks (torch): GEMM, grouped GEMM, attention, memory-bound ops,
gathers, eager dispatch; on a CPU run in every rank at once. Collectives: executor/collbench.py.

Each case is warmed up and repeated; the median and inter-quartile range are kept. On CPU the
thread count is pinned (torch.set_num_threads) for the whole run.
"""
from __future__ import annotations

import os
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass, field
from typing import Callable

import torch
import torch.multiprocessing as mp


@dataclass
class Measurement:
    """One timed case."""

    bench: str
    params: dict = field(default_factory=dict)
    median_s: float = 0.0
    iqr_s: float = 0.0
    flops: float = 0.0
    bytes: float = 0.0

    def row(self) -> dict:
        """Flat CSV row."""
        d = asdict(self)
        p = d.pop("params")
        d.update({f"p_{k}": v for k, v in p.items()})
        return d


@dataclass(frozen=True)
class Grid:
    """Sizes to measure (quick or full)."""

    gemm_m: tuple[int, ...]
    gemm_nk: tuple[tuple[int, int], ...]
    experts: tuple[int, ...]
    tokens_per_expert: tuple[int, ...]
    attn_batch: tuple[int, ...]
    attn_ctx: tuple[int, ...]
    copy_bytes: tuple[int, ...]
    coll_bytes: tuple[int, ...]
    warmup: int
    repeats: int


# GEMM shapes (N, K): weight sizes from a router's (8 x 512) to 2048 x 2048; shapes of equal
# N x K (128 x 512 and 512 x 128, 512 x 512 and 1024 x 256) show N x K is what matters
QUICK = Grid(gemm_m=(1, 8, 64, 256, 1024),
             gemm_nk=((8, 512), (128, 512), (512, 512), (2048, 512), (2048, 2048)),
             experts=(4, 8), tokens_per_expert=(8, 32, 128, 512),
             attn_batch=(1, 4), attn_ctx=(128, 256, 1024),
             copy_bytes=(1 << 12, 1 << 16, 1 << 20, 1 << 22, 1 << 24, 1 << 26),
             coll_bytes=(1 << 10, 1 << 14, 1 << 17, 1 << 20, 1 << 22), warmup=2, repeats=5)
FULL = Grid(gemm_m=(1, 4, 16, 64, 128, 256, 512, 1024, 2048),
            gemm_nk=((8, 512), (64, 512), (128, 512), (512, 128), (256, 512), (512, 512),
                     (1024, 256), (1024, 512), (2048, 512), (2048, 2048)),
            experts=(4, 8, 16), tokens_per_expert=(4, 16, 64, 128, 256, 512, 1024),
            attn_batch=(1, 4, 16), attn_ctx=(64, 128, 256, 1024, 4096),
            copy_bytes=(1 << 12, 1 << 14, 1 << 16, 1 << 18, 1 << 20, 1 << 22, 1 << 24, 1 << 25,
                        1 << 26, 1 << 27),
            coll_bytes=(1 << 8, 1 << 10, 1 << 12, 1 << 14, 1 << 16, 1 << 18, 1 << 20, 1 << 22,
                        1 << 23), warmup=3, repeats=9)


def pin_rank(rank: int, threads: int) -> None:
    """Bind a CPU rank to its own block of `threads` cores (as a GPU rank owns its GPU), when
    the cores go round; otherwise leave placement to the OS."""
    cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    block = cores[rank * threads:(rank + 1) * threads]
    if len(block) == threads and threads > 0:
        os.sched_setaffinity(0, set(block))
    torch.set_num_threads(threads)


def sync_for(device: str) -> Callable[[], None]:
    """The synchronisation a timer needs on this device."""
    if device == "cuda":
        return torch.cuda.synchronize
    return lambda: None


def backend_for(device: str) -> str:
    """torch.distributed backend: nccl on CUDA, gloo on CPU."""
    return "nccl" if device == "cuda" else "gloo"


def cache_flusher(device: str) -> Callable[[], None]:
    """Writes a buffer the size of the last-level cache (untimed), so the next timed run reads
    its weights from memory as a layer of a real forward pass does (triton's do_bench does the
    same on GPUs)."""
    size = 256 << 20
    if device == "cuda":
        size = max(size, 2 * int(getattr(torch.cuda.get_device_properties(0), "L2_cache_size", 0)))
    else:
        try:
            text = open("/sys/devices/system/cpu/cpu0/cache/index3/size").read().strip()
            unit = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(text[-1], 1)
            size = int(text.rstrip("KMG")) * unit
        except (OSError, ValueError):
            pass
    buf = torch.empty(size // 4, device=device)
    return lambda: buf.fill_(1.0)


def _time_once(fn: Callable[[], object], sync: Callable[[], None],
               before: Callable[[], object] | None) -> float:
    if before is not None:
        before()
        sync()
    t = time.perf_counter()
    fn()
    sync()
    return time.perf_counter() - t


def _median_iqr(times: list[float]) -> tuple[float, float]:
    q = statistics.quantiles(times, n=4) if len(times) >= 2 else [times[0]] * 3
    return statistics.median(times), q[2] - q[0]


def time_fn(fn: Callable[[], object], sync: Callable[[], None], warmup: int,
            repeats: int, before: Callable[[], object] | None = None) -> tuple[float, float]:
    """(median, IQR) seconds of fn over `repeats` runs after `warmup` runs; `before` runs
    untimed ahead of each timed run."""
    for _ in range(warmup):
        fn()
    sync()
    return _median_iqr([_time_once(fn, sync, before) for _ in range(repeats)])


def time_rounds(fns: list[Callable[[], object]], sync: Callable[[], None], rounds: int,
                before: Callable[[], object] | None = None) -> list[tuple[float, float]]:
    """(median, IQR) seconds of each fn, timed once per round, round-robin over the cases after
    one warm-up pass: a machine whose speed drifts over minutes then shifts every case alike
    instead of bending the table between cases measured at different times."""
    for fn in fns:
        fn()
    sync()
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(rounds):
        for fn, ts in zip(fns, times):
            ts.append(_time_once(fn, sync, before))
    return [_median_iqr(ts) for ts in times]


def bench_gemm(device: str, grid: Grid, dtype: torch.dtype) -> list[Measurement]:
    """Dense GEMM x @ W.T as a linear layer runs it (x: M x K, W: N x K), weights cold in
    cache, every shape of the M by (N, K) grid once per round."""
    sync, flush = sync_for(device), cache_flusher(device)
    cases, fns = [], []
    for n, k in grid.gemm_nk:
        w = torch.randn(n, k, device=device, dtype=dtype)
        for m in grid.gemm_m:
            x = torch.randn(m, k, device=device, dtype=dtype)
            cases.append((m, n, k, x.element_size()))
            fns.append(lambda x=x, w=w: torch.nn.functional.linear(x, w))
    out = []
    for (m, n, k, es), (med, iqr) in zip(cases, time_rounds(fns, sync, grid.repeats, flush)):
        out.append(Measurement("gemm", {"m": m, "n": n, "k": k}, med, iqr, 2.0 * m * n * k,
                               float((m * k + k * n + m * n) * es)))
    return out


def bench_grouped_gemm(device: str, grid: Grid, dtype: torch.dtype, hidden: int = 512,
                       inter: int = 512) -> list[Measurement]:
    """Experts' FFN GEMMs: balanced (one bmm) and skewed (half the tokens on one expert),
    weights cold in cache."""
    sync, out, flush = sync_for(device), [], cache_flusher(device)
    for e in grid.experts:
        w = torch.randn(e, hidden, inter, device=device, dtype=dtype)
        for t in grid.tokens_per_expert:
            x = torch.randn(e, t, hidden, device=device, dtype=dtype)
            med, iqr = time_fn(lambda: torch.bmm(x, w), sync, grid.warmup, grid.repeats, flush)
            es = x.element_size()
            case = {"experts": e, "tokens_per_expert": t, "hidden": hidden, "inter": inter}
            out.append(Measurement("grouped_gemm", {**case, "skew": 0}, med, iqr,
                                   2.0 * e * t * hidden * inter,
                                   float((e * t * hidden + e * hidden * inter) * es)))
            total = e * t
            hot = total // 2
            rest = [(total - hot) // (e - 1)] * (e - 1)
            chunks = [torch.randn(n, hidden, device=device, dtype=dtype) for n in [hot] + rest]
            med, iqr = time_fn(lambda: [c @ w[i] for i, c in enumerate(chunks)], sync,
                               grid.warmup, grid.repeats, flush)
            out.append(Measurement("grouped_gemm", {**case, "skew": 1}, med, iqr,
                                   2.0 * sum(c.shape[0] for c in chunks) * hidden * inter,
                                   float((total * hidden + e * hidden * inter) * es)))
    return out


def bench_attention(device: str, grid: Grid, dtype: torch.dtype, heads: int = 8,
                    head_dim: int = 64) -> list[Measurement]:
    """Decode (one query token over a KV cache) and causal prefill attention."""
    sync, out = sync_for(device), []
    sdpa = torch.nn.functional.scaled_dot_product_attention
    for bsz in grid.attn_batch:
        for ctx in grid.attn_ctx:
            k = torch.randn(bsz, heads, ctx, head_dim, device=device, dtype=dtype)
            v = torch.randn_like(k)
            q1 = torch.randn(bsz, heads, 1, head_dim, device=device, dtype=dtype)
            med, iqr = time_fn(lambda: sdpa(q1, k, v), sync, grid.warmup, grid.repeats)
            es = k.element_size()
            out.append(Measurement("attention_decode", {"batch": bsz, "ctx": ctx,
                                                        "heads": heads, "head_dim": head_dim,
                                                        "scores": bsz * heads * ctx}, med, iqr,
                                   4.0 * bsz * heads * ctx * head_dim,
                                   float(2 * k.numel() * es)))
            if ctx <= 1024:
                sc = torch.randn(bsz, heads, ctx, ctx, device=device, dtype=dtype)
                mask = torch.ones(ctx, ctx, dtype=torch.bool, device=device).triu(1)
                med, iqr = time_fn(lambda: torch.softmax(sc.masked_fill(mask, float("-inf")), -1),
                                   sync, grid.warmup, grid.repeats)
                out.append(Measurement("attention_scores", {"batch": bsz, "ctx": ctx,
                                                            "scores": sc.numel()}, med, iqr,
                                       0.0, float(2 * sc.numel() * sc.element_size())))
            if ctx <= 1024 or bsz == 1:
                q = torch.randn_like(k)
                med, iqr = time_fn(lambda: sdpa(q, k, v, is_causal=True), sync, grid.warmup,
                                   grid.repeats)
                out.append(Measurement("attention_prefill", {"batch": bsz, "ctx": ctx,
                                                             "heads": heads, "head_dim": head_dim,
                                                             "scores": bsz * heads * ctx * ctx},
                                       med, iqr, 2.0 * bsz * heads * ctx * ctx * head_dim,
                                       float(4 * k.numel() * es)))
                # MLA's shape: query/key heads wider than value heads (nope + rope vs v)
                vd = head_dim * 2 // 3
                vm = torch.randn(bsz, heads, ctx, vd, device=device, dtype=dtype)
                med, iqr = time_fn(lambda: sdpa(q, k, vm, is_causal=True), sync, grid.warmup,
                                   grid.repeats)
                out.append(Measurement("attention_prefill_mla",
                                       {"batch": bsz, "ctx": ctx, "v_dim": vd,
                                        "scores": bsz * heads * ctx * ctx},
                                       med, iqr, 1.0 * bsz * heads * ctx * ctx * (head_dim + vd),
                                       float((3 * k.numel() + vm.numel()) * es)))
    return out


EAGER_CHAIN = 200


def bench_eager_ops(device: str, grid: Grid, dtype: torch.dtype) -> list[Measurement]:
    """Framework cost of one eager op: a chain of in-place adds on a 16-element tensor."""
    sync = sync_for(device)
    x = torch.zeros(16, device=device, dtype=dtype)

    def chain() -> None:
        for _ in range(EAGER_CHAIN):
            x.add_(1.0)
    med, iqr = time_fn(chain, sync, grid.warmup, grid.repeats * 2)
    return [Measurement("eager_op", {"ops": EAGER_CHAIN}, med, iqr, 0.0,
                        float(2 * EAGER_CHAIN * x.numel() * x.element_size()))]


def bench_gather(device: str, grid: Grid, dtype: torch.dtype,
                 width: int = 512) -> list[Measurement]:
    """Row gathers and scatters by advanced indexing (x[idx] as an eager permute and the
    experts pick the routed rows, out[idx] = y as the experts put them back) by bytes moved:
    these kernels address every element, so on CPUs they run several times below a streaming
    copy (index_select and index_add_ do not: they copy whole rows)."""
    sync, out = sync_for(device), []
    es = torch.tensor([], dtype=dtype).element_size()
    for nbytes in grid.copy_bytes:
        rows = max(1, nbytes // (2 * width * es))
        x = torch.randn(rows, width, device=device, dtype=dtype)
        idx = torch.randint(0, rows, (rows,), device=device)
        moved = float(2 * x.numel() * x.element_size())
        med, iqr = time_fn(lambda: x[idx], sync, grid.warmup, grid.repeats)
        out.append(Measurement("gather", {"bytes": moved, "op": "index"}, med, iqr, 0.0, moved))
        dst = torch.empty_like(x)
        med, iqr = time_fn(lambda: dst.__setitem__(idx, x), sync, grid.warmup, grid.repeats)
        out.append(Measurement("gather", {"bytes": moved, "op": "index_put"}, med, iqr, 0.0,
                               moved))
    return out


def bench_memory(device: str, grid: Grid, dtype: torch.dtype) -> list[Measurement]:
    """Device copies and elementwise adds (residual / unpermute-like) over a size sweep, each
    into a new output as an eager op writes (on CPUs a fresh buffer is not in cache: 1.2-1.7x
    slower than copying into the same buffer again)."""
    sync, out = sync_for(device), []
    es = torch.tensor([], dtype=dtype).element_size()
    for nbytes in grid.copy_bytes:
        n = max(1, nbytes // es)
        a = torch.randn(n, device=device, dtype=dtype)
        med, iqr = time_fn(lambda: a.clone(), sync, grid.warmup, grid.repeats)
        out.append(Measurement("copy", {"bytes": 2 * n * es}, med, iqr, 0.0, float(2 * n * es)))
        c = torch.randn_like(a)
        med, iqr = time_fn(lambda: a + c, sync, grid.warmup, grid.repeats)
        out.append(Measurement("elementwise", {"bytes": 3 * n * es}, med, iqr, 0.0,
                               float(3 * n * es)))
    return out


def write_rows(path: str, rows: list[Measurement]) -> None:
    """Measurements as a CSV (one column per field and p_ parameter)."""
    import csv
    with open(path, "w", newline="") as f:
        wr = csv.DictWriter(f, fieldnames=sorted({k for r in rows for k in r.row()}))
        wr.writeheader()
        for r in rows:
            wr.writerow(r.row())


COMPUTE_BENCHES = (("GEMM", bench_gemm), ("grouped GEMM", bench_grouped_gemm),
                   ("attention", bench_attention), ("memory", bench_memory),
                   ("gathers", bench_gather), ("eager ops", bench_eager_ops))


def _compute_worker(rank: int, device: str, grid: Grid, threads: int, dtype_name: str,
                    out_dir: str) -> None:
    """Every rank runs the single-device benchmarks at once, so a simulated device is measured
    the way it runs: beside the other ranks on the same host."""
    if device == "cpu":
        pin_rank(rank, threads)
    else:
        torch.set_num_threads(threads)
    dtype = getattr(torch, dtype_name)
    rows: list[Measurement] = []
    for _, fn in COMPUTE_BENCHES:
        rows += fn(device, grid, dtype)
    write_rows(os.path.join(out_dir, f"compute{rank}.csv"), rows)


def bench_compute_concurrently(device: str, ranks: int, grid: Grid, threads: int,
                               dtype_name: str = "float32") -> list[dict]:
    """The single-device benchmarks in `ranks` processes at once; per case, the slowest rank's
    row: ranks meet at every all-to-all, so an expert-parallel group runs at its slowest pace."""
    import csv
    with tempfile.TemporaryDirectory() as d:
        mp.start_processes(_compute_worker, args=(device, grid, threads, dtype_name, d),
                           nprocs=ranks, join=True, start_method="spawn")
        slowest: dict[tuple, dict] = {}
        for r in range(ranks):
            with open(os.path.join(d, f"compute{r}.csv"), newline="") as f:
                for row in csv.DictReader(f):
                    key = tuple(sorted((k, v) for k, v in row.items()
                                       if k not in ("median_s", "iqr_s")))
                    if key not in slowest or float(row["median_s"]) > float(
                            slowest[key]["median_s"]):
                        slowest[key] = row
        return list(slowest.values())
