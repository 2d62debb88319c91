"""`moesim plan`: the deployments of a model worth running, searched and priced.

For every hardware profile and GPU count asked, every parallel layout (data-parallel attention
with experts over all GPUs or over replicas of whole nodes; tensor-parallel attention groups of
2, 4 or 8 GPUs), KV dtype (BF16, FP8), MTP (off, and on where the model has it), schedule
(sequential and tbo; scmoe and sbo for shortcut models), decode batch per GPU and prefill chunk,
the candidate is written as a decode what-if at the mean context (prompt + half the answer) and
simulated, with one prompt's prefill on the same layout; `_points` serves it aggregated and
disaggregated from those two (TPOT, output tokens/s per GPU and per user, $ per million output
tokens, the prefill:decode GPU ratio, its fidelity). TTFT is one prompt's prefill (no queueing:
a lower bound). A
candidate whose batch does not fit in memory is pruned before it is priced. The answer: the
Pareto front of tokens/s per GPU against tokens/s per user, the best configuration meeting the
SLO on each hardware (or which constraint nothing meets, and by how much), every point a
runnable workload.
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import yaml

from simulator.atomic import write_text_atomic
from simulator.errors import MoesimError
from simulator.loading import load_model, load_profile
from simulator.outputs.pool import Point, code_version, execute_stored, point_key

BATCHES = (1, 2, 4, 8, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512)
CHUNKS = (8192, 4096, 2048)     # prefill chunks searched besides the whole prompt (the budgets
                                # SGLang and vLLM default to on 80-141 GB GPUs, and smaller)
KV_BYTES = (2.0, 1.0)
TP_GROUPS = (2, 4, 8)


@dataclass(frozen=True)
class Question:
    """What a user asks: a model on these GPUs and counts, these lengths, this SLO."""

    model: str
    hardware: tuple[str, ...]
    gpus: tuple[int, ...]
    isl: int
    osl: int
    ttft_ms: float
    tpot_ms: float
    runtime: str | None = None
    base: dict = field(default_factory=dict)      # a workload's fields to keep (precision ...)


def default_results() -> Path:
    """Where plans keep every priced what-if unless told otherwise: $XDG_CACHE_HOME/moesim (or
    ~/.cache/moesim)/plan.sqlite. Results are keyed by the workload, the model and profile
    files' contents and the simulator's code, so one from another version is never reused."""
    import os
    root = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(root) / "moesim" / "plan.sqlite"


def _check(q: Question) -> None:
    for name, v in (("--isl", q.isl), ("--osl", q.osl)):
        if not v > 0:
            raise MoesimError(name, f"{v} is not a positive token count", f"pass {name} 1024")
    for name, v in (("--ttft-ms", q.ttft_ms), ("--tpot-ms", q.tpot_ms)):
        if not (v > 0 and math.isfinite(v)):
            raise MoesimError(name, f"{v} is not a positive time", f"pass {name} 50")
    if not q.gpus or any(g <= 0 for g in q.gpus):
        raise MoesimError("--gpus", "needs positive GPU counts", "pass --gpus 8,16")
    for h in q.hardware:
        load_profile(h)                       # an unknown profile names the known ones


def layouts(q: Question, gpus: int, gpn: int) -> list[tuple[str, dict]]:
    """(name, plan) of every parallel layout of `gpus` GPUs the model allows: data-parallel
    attention with experts over all of them, or over replicas of whole nodes (the plan is
    one replica; `replicas` says how many serve side by side), or tensor-parallel attention."""
    m = load_model(q.model)
    node = min(gpn, gpus)
    out = []
    groups = sorted({gpus} | {g for g in (gpn * 2 ** i for i in range(8)) if g < gpus and
                              gpus % g == 0})
    for g in groups if m.moe is not None else ():
        if m.moe.num_experts % g:
            continue
        copies = f" x {gpus // g} replicas" if g < gpus else ""
        out.append((f"DP attention, EP{g}{copies}", {"gpus": g, "gpus_per_node": min(gpn, g),
                                                      "ep": g}))
    if m.moe is None:
        out.append(("DP", {"gpus": gpus, "gpus_per_node": node, "ep": 1}))
    for t in TP_GROUPS:
        if t <= node and gpus % t == 0 and m.attention.num_heads % t == 0 and \
                (m.moe is None or m.moe.num_experts % t == 0):
            out.append((f"TP{t} attention" + (f", EP{t}" if m.moe else ""),
                        {"gpus": gpus, "gpus_per_node": node, "tp": t, "attention_tp": t,
                         "ep": t if m.moe is not None else 1}))
    return out


def schedules(q: Question) -> list[str]:
    """The schedules the model's layers allow."""
    m = load_model(q.model)
    if m.layer_kind == "shortcut":
        return ["sequential", "scmoe", "sbo", "tbo"]
    return ["sequential", "tbo"] if m.moe is not None else ["sequential"]


def mtp_settings(q: Question) -> list[dict | None]:
    """MTP off, and on where the model has MTP layers (the workload's MTP settings when it
    gives them, else one draft token at the model's acceptance)."""
    m = load_model(q.model)
    if not m.mtp_layers:
        return [None]
    on = dict(q.base.get("mtp") or {})
    return [None, {**on, "enabled": True}]


def _precision(q: Question, kv: float) -> dict:
    base = dict(q.base.get("precision") or {})
    if not base:
        m = load_model(q.model)
        fp8 = getattr(m.serving_recipe, "expert_gemm", None) == "fp8"
        base = {"weight_bytes": 1.0 if fp8 else 2.0, "activation_bytes": 2.0,
                "dispatch_bytes": 1.03125 if fp8 else 2.0, "combine_bytes": 2.0}
    return {**base, "kv_bytes": kv}


def chunk_sizes(q: Question) -> list[int | None]:
    """Prefill chunks to try: the whole prompt (None), and each of CHUNKS shorter than it."""
    return [None] + [c for c in CHUNKS if c < q.isl]


def candidates(q: Question) -> list[tuple[str, dict, int, int | None]]:
    """(one-line configuration, decode workload, GPUs, prefill chunk) of every candidate, in a
    stable order; the workload is one replica of the configuration's GPUs."""
    out = []
    ctx = q.isl + q.osl // 2
    runtime = {"framework": q.runtime} if q.runtime else (q.base.get("runtime") or {})
    for hw in q.hardware:
        gpn = int(load_profile(hw).gpus_per_node.value)
        for g in q.gpus:
            for lname, plan in layouts(q, g, gpn):
                for kv, mtp, sched, b in itertools.product(KV_BYTES, mtp_settings(q),
                                                           schedules(q), BATCHES):
                    if sched != "sequential" and b < 2:
                        continue
                    w = {k: v for k, v in q.base.items() if k in ("routing", "seed")}
                    w.update(name=f"plan-{hw}-{g}gpu-{_slug(lname)}-kv{int(kv * 8)}-"
                             f"{'mtp-' if mtp else ''}{sched}-b{b}", model=q.model, hardware=hw,
                             plan=plan, phase="decode", batch_per_device=b, context_length=ctx,
                             schedule=sched, precision=_precision(q, kv))
                    if mtp:
                        w["mtp"] = mtp
                    if runtime:
                        w["runtime"] = runtime
                    cfg = (f"{hw} x {g}, {lname}, KV {'FP8' if kv == 1 else 'BF16'}, "
                           f"{'MTP, ' if mtp else ''}{sched}, batch {b}/GPU")
                    for chunk in chunk_sizes(q):
                        out.append((cfg + (f", prefill chunk {chunk}" if chunk else ""), w, g,
                                    chunk))
    return out


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in text.lower()).strip("-").replace("--", "-")


def prefills(w: dict, isl: int, chunk: int | None) -> list[dict]:
    """One prompt of `isl` tokens on the candidate's layout, whole or in chunks of `chunk`
    tokens one after another, each attending to the chunks before it (held as a cached
    prefix): its TTFT without queueing is their sum."""
    out, done = [], 0
    while done < isl:
        end = isl if chunk is None else min(done + chunk, isl)
        p = {**w, "name": f"{w['name']}-prefill{'' if chunk is None else f'-c{chunk}-{len(out)}'}",
             "phase": "prefill", "batch_per_device": 1, "context_length": end,
             "schedule": "sequential"}
        if done:
            p["prefix_hit_rate"] = done / end
        out.append(p)
        done = end
    return out


def search(q: Question, workers: int = 1,
           progress: Callable[[int, int], None] | None = None, backend: str = "local",
           address: str = "auto", results: Path | None = None) -> dict:
    """Every candidate priced (or pruned); the front, the best per hardware, the counts.
    With `results` (SQLite), every priced what-if is kept as it finishes and one already
    there is not priced again: an interrupted search resumes."""
    _check(q)
    cands = candidates(q)
    code = code_version()
    points: dict[str, Point] = {}
    cand_keys = []
    for cfg, w, _, _ in cands:
        key = point_key("simulate", w, code)
        cand_keys.append(key)
        points.setdefault(key, Point(key, {"config": cfg}, w))
    prefill_keys: dict[tuple, list[str]] = {}
    for _, w, _, chunk in cands:
        pk = (_prefill_key(w), chunk)
        if pk not in prefill_keys:
            prefill_keys[pk] = []
            for pre in prefills(w, q.isl, chunk):
                key = point_key("simulate", pre, code)
                prefill_keys[pk].append(key)
                points.setdefault(key, Point(key, {"prefill": pk[0]}, pre))
    outcome = execute_stored(list(points.values()), "simulate", results, backend, workers,
                             address, progress, what="plan", unit="what-ifs")
    priced, pruned = [], []
    for (cfg, w, gpus, chunk), key in zip(cands, cand_keys):
        metrics, error = outcome[key]
        pre = [outcome[k][0] for k in prefill_keys[(_prefill_key(w), chunk)]]
        if metrics is None or any(p is None for p in pre) or not metrics.get("tpot_ms"):
            pruned.append({"config": cfg, "reason": error or "its prefill does not fit"})
            continue
        ttft = sum(p["step_time_ms"] for p in pre)
        priced += _points(cfg, w, gpus, chunk, metrics, ttft, q)
    front = pareto(priced)
    best, by_mode = {}, {}
    for hw in q.hardware:
        ok = [p for p in priced if p["hardware"] == hw and p["meets_slo"]]
        best[hw] = _best(ok)
        by_mode[hw] = {mode: _best([p for p in ok if p["mode"] == mode])
                       for mode in ("aggregated", "disaggregated")}
    return {"question": {"model": q.model, "hardware": list(q.hardware), "gpus": list(q.gpus),
                         "isl": q.isl, "osl": q.osl, "ttft_ms": q.ttft_ms, "tpot_ms": q.tpot_ms},
            "candidates": {"tried": len(cands), "pruned": len(pruned),
                           "priced": len(cands) - len(pruned)},
            "front": front, "best": best, "best_by_mode": by_mode, "unmet": unmet(priced, q),
            "points": priced,
            "pruned": pruned[:20]}


def _best(points: list[dict]) -> dict | None:
    """The point with the most tokens/s per GPU (on fewer GPUs when tied), or None."""
    return max(points, key=lambda p: (p["tokens_per_gpu_s"], -p["gpus"])) if points else None


def _prefill_key(w: dict) -> str:
    return (f"{w['hardware']}|{sorted(w['plan'].items())}|{w['precision']['kv_bytes']}|"
            f"{bool(w.get('mtp'))}")


def _points(cfg: str, w: dict, gpus: int, chunk: int | None, m: dict, ttft: float,
            q: Question) -> list[dict]:
    """The candidate served two ways, from its decode step and one prompt's prefill (`ttft`,
    ms: whole, or the sum of its `chunk`-token chunks):

    every request costs `osl / D` GPU-seconds of decode (D: the decode step's tokens/s per GPU)
    and `c_p = T_p x group` GPU-seconds of prefill (T_p: one prompt's prefill on the layout,
    `group`: the GPUs that hold one sequence, the attention TP degree). Per GPU both modes then
    serve osl / (osl / D + c_p) output tokens/s.
    - aggregated: the same GPUs prefill between decode steps (as SGLang runs a prefill batch
      instead of a decode step), so decode stalls a share f = c_p / (osl / D + c_p) of the
      time: TPOT / (1 - f);
    - disaggregated: a prefill pool of c_p : osl / D GPUs beside the decode pool (same GPU and
      layout); TPOT is the decode step's, TTFT one prompt's prefill (KV transfer not priced).
    TTFT is one prompt's prefill in both: no queueing (a lower bound)."""
    tpot, d = m["tpot_ms"], m["tokens_per_gpu_s"]
    group = w["plan"].get("attention_tp", 1)
    c_p = ttft / 1e3 * group                             # GPU-seconds of prefill per request
    c_d = q.osl / d                                      # GPU-seconds of decode per request
    per_gpu = q.osl / (c_d + c_p)
    share = c_p / (c_d + c_p)
    f = m["fidelity"]
    price = m["cost_per_million_output_tokens"] * d / per_gpu \
        if m["cost_per_million_output_tokens"] else None
    out = []
    for mode, t in (("aggregated", tpot / (1 - share)), ("disaggregated", tpot)):
        ratio = f", prefill:decode GPUs {c_p / c_d:.2f}" if mode == "disaggregated" else ""
        out.append({
            "config": f"{cfg}, {mode}{ratio}", "mode": mode, "hardware": w["hardware"],
            "gpus": gpus, "replicas": gpus // w["plan"]["gpus"], "plan": w["plan"],
            "schedule": w["schedule"],
            "batch_per_device": w["batch_per_device"], "kv_bytes": w["precision"]["kv_bytes"],
            "mtp": bool(w.get("mtp")), "prefill_chunk": chunk,
            "tpot_ms": t, "ttft_ms": ttft, "tokens_per_gpu_s": per_gpu,
            "tokens_per_s_per_user": 1e3 / t, "cost_per_million_output_tokens": price,
            "prefill_share": share, "prefill_to_decode_gpus": c_p / c_d,
            "decode_tpot_ms": tpot, "decode_tokens_per_gpu_s": d,
            "layer_breakdown_us": m["breakdown_us"],
            "meets_slo": t <= q.tpot_ms and ttft <= q.ttft_ms,
            "slo_margin": {"tpot_ms": q.tpot_ms - t, "ttft_ms": q.ttft_ms - ttft},
            "fidelity": {"measured_share": f["measured_share"],
                         "expected_error_pct": f["expected_error_pct"]},
            "workload": w})
    return out


def pareto(points: list[dict]) -> list[dict]:
    """Points no other beats on both tokens/s per GPU and tokens/s per user, by throughput (of
    points with the same two figures, the one on the fewest GPUs)."""
    ranked = sorted(points, key=lambda p: (-p["tokens_per_gpu_s"], -p["tokens_per_s_per_user"],
                                           p["gpus"]))
    front, best_user = [], -math.inf
    for p in ranked:
        if p["tokens_per_s_per_user"] > best_user:
            front.append(p)
            best_user = p["tokens_per_s_per_user"]
    return front


def unmet(points: list[dict], q: Question) -> dict:
    """Per hardware with no point meeting the SLO: the closest each constraint came."""
    out = {}
    for hw in q.hardware:
        mine = [p for p in points if p["hardware"] == hw]
        if not mine or any(p["meets_slo"] for p in mine):
            continue
        tp = min(p["tpot_ms"] for p in mine)
        tt = min(p["ttft_ms"] for p in mine)
        why = []
        if tp > q.tpot_ms:
            why.append(f"the fastest TPOT is {tp:.1f} ms against {q.tpot_ms:g} ms")
        if tt > q.ttft_ms:
            why.append(f"the fastest TTFT is {tt:.0f} ms against {q.ttft_ms:g} ms")
        if not why:
            why.append("no single configuration meets both: lowering one raises the other")
        out[hw] = "; ".join(why)
    return out


def write_workloads(points: list[dict], out_dir: Path, head: Callable[[dict], str]) -> list[Path]:
    """Each point's runnable workload as YAML under `out_dir`, numbered in order, `head(point)`
    (comment lines) above it."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise MoesimError("--out-dir", f"{out_dir} is a file", "give a folder")
    paths = []
    for i, p in enumerate(points):
        path = out_dir / f"{i + 1:02d}-{p['workload']['name']}.yaml"
        write_text_atomic(path, head(p) + yaml.safe_dump(p["workload"], sort_keys=False),
                          "--out-dir")
        paths.append(path)
    return paths


def write_points(points: list[dict], out_dir: Path) -> list[Path]:
    """Each point as a runnable workload YAML (`moesim simulate FILE` reproduces its TPOT and
    tokens/GPU/s), numbered in front order."""
    def head(p: dict) -> str:
        copies = f" (one of {p['replicas']} replicas)" if p["replicas"] > 1 else ""
        return (f"# moesim plan: {p['config']}{copies}\n# this decode step: TPOT "
                f"{p['decode_tpot_ms']:.2f} ms, {p['decode_tokens_per_gpu_s']:.0f} tokens/s per "
                f"GPU (moesim simulate this file); served {p['mode']} with prefill: TPOT "
                f"{p['tpot_ms']:.2f} ms, {p['tokens_per_gpu_s']:.0f} tokens/s per GPU, TTFT "
                f"(one prompt's prefill) {p['ttft_ms']:.0f} ms\n")
    return write_workloads(points, out_dir, head)
