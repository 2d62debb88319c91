"""`moesim plan --train`: the parallel layouts of a training run, searched and priced.

For every hardware profile and GPU count asked, every layout of the workload's training run
(tensor parallel TP, pipeline PP, expert parallel EP, context parallel CP, data parallel the
rest), micro-batch and pipeline schedule (1F1B, interleaved 1F1B, zero-bubble V, DualPipe) is
written as a training what-if of the workload (its model, precision, context, global batch,
ZeRO stage and framework kept). Recomputation is not searched but chosen: the lightest of none,
selective, moe, full whose memory fits, since each re-runs more of the forward than the one
before and changes nothing else in the step (`fitting`, the memory check of `moesim train`,
decides before anything is simulated). What does not fit, or does not split the global batch,
is pruned and says why. The answer: the front of days to train against GPUs, the fastest and
the cheapest layout per hardware, every point a runnable training workload.
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from pydantic import ValidationError

from simulator.errors import MoesimError, from_validation
from simulator.loading import load_model, load_profile
from simulator.outputs.plan import write_workloads
from simulator.outputs.pool import Point, code_version, execute_stored, point_key
from simulator.schema import Workload
from simulator.training.run import fitting

TP = (1, 2, 4, 8)
PP = (1, 2, 4, 8, 16)
EP = (1, 2, 4, 8, 16, 32, 64, 128, 256)
CP = (1, 2, 4, 8)
MIN_CP_TOKENS = 4096          # context parallel only where each rank keeps >= this many tokens
MICRO_BATCHES = (1, 2)
RECOMPUTE = ("none", "selective", "moe", "full")       # lightest first
PIPELINES = ("1f1b", "interleaved", "zb-v", "dualpipe")


@dataclass(frozen=True)
class TrainQuestion:
    """A training workload (its model, precision, batch and run kept) on these GPUs."""

    base: dict
    hardware: tuple[str, ...]
    gpus: tuple[int, ...]
    tokens: float | None = None


def _check(q: TrainQuestion) -> None:
    if q.base.get("training") is None:
        raise MoesimError("training", "the workload has no training block",
                          "give a training workload (see workloads/training/)")
    if not q.gpus or any(g <= 0 for g in q.gpus):
        raise MoesimError("--gpus", "needs positive GPU counts", "pass --gpus 1024,2048")
    for h in q.hardware:
        load_profile(h)


def layouts(q: TrainQuestion, gpus: int, gpn: int) -> list[dict]:
    """Every plan of `gpus` GPUs the model's shape allows (degrees that divide what they
    split); memory and the batch are checked later, per candidate."""
    m = load_model(q.base["model"])
    ctx = int(q.base["context_length"])
    experts = m.moe.num_experts if m.moe is not None else 1
    out = []
    for tp, pp, cp, ep in itertools.product(TP, PP, CP, EP):
        stage = gpus // pp
        if gpus % pp or pp > m.num_layers or tp > min(gpn, gpus) or \
                m.attention.num_heads % tp or stage % (tp * cp) or \
                (cp > 1 and ctx // cp < MIN_CP_TOKENS) or ep > stage or stage % ep or \
                experts % ep or (m.moe is None and ep > 1):
            continue
        out.append({"gpus": gpus, "gpus_per_node": min(gpn, gpus), "tp": tp, "pp": pp,
                    "cp": cp, "ep": ep})
    return out


def candidates(q: TrainQuestion) -> list[tuple[str, dict]]:
    """(one-line configuration, training workload) of every candidate, in a stable order;
    recompute left to `choose_recompute`."""
    out = []
    t0 = dict(q.base["training"])
    if q.tokens is not None:
        t0["tokens_to_train"] = q.tokens
    for hw in q.hardware:
        gpn = int(load_profile(hw).gpus_per_node.value)
        for g in q.gpus:
            for plan in layouts(q, g, gpn):
                pipes = PIPELINES if plan["pp"] > 1 else ("1f1b",)
                for mb, pipe in itertools.product(MICRO_BATCHES, pipes):
                    t = {**t0, "micro_batch_sequences": mb, "pipeline": pipe}
                    name = (f"train-{hw}-{g}gpu-tp{plan['tp']}-pp{plan['pp']}-cp{plan['cp']}-"
                            f"ep{plan['ep']}-mb{mb}-{pipe}")
                    w = {**q.base, "name": name, "hardware": hw, "plan": plan, "training": t}
                    cfg = (f"{hw} x {g}, TP{plan['tp']} PP{plan['pp']} CP{plan['cp']} "
                           f"EP{plan['ep']} DP{g // (plan['pp'] * plan['tp'] * plan['cp'])}, "
                           f"micro-batch {mb}, {pipe}")
                    out.append((cfg, w))
    return out


def choose_recompute(w: dict) -> tuple[dict | None, str]:
    """The candidate with the lightest recompute that fits in memory, or None and why not."""
    model = load_model(w["model"])
    prof = load_profile(w["hardware"])
    why = ""
    for rc in RECOMPUTE:
        data = {**w, "training": {**w["training"], "recompute": rc}}
        try:
            fitting(Workload.model_validate(data), model, prof)
        except ValidationError as exc:           # the schema refuses the combination
            return None, from_validation(exc, w["name"]).render()
        except MoesimError as exc:
            why = exc.render()
            if "does not fit" not in why:       # not memory: no recompute helps
                return None, why
            continue
        return data, rc
    return None, why


def search(q: TrainQuestion, workers: int = 1,
           progress: Callable[[int, int], None] | None = None, backend: str = "local",
           address: str = "auto", results: Path | None = None) -> dict:
    """Every candidate priced (or pruned); the front of days against GPUs, the fastest and
    the cheapest per hardware, the counts. `results` keeps priced what-ifs (resume)."""
    _check(q)
    cands = candidates(q)
    code = code_version()
    chosen, pruned = [], []
    for cfg, w in cands:
        data, why = choose_recompute(w)
        if data is None:
            pruned.append({"config": cfg, "reason": why})
        else:
            chosen.append((f"{cfg}, recompute {why}", data, point_key("train", data, code)))
    points = {key: Point(key, {"config": cfg}, data, group=_passes_key(data))
              for cfg, data, key in chosen}
    outcome = execute_stored(list(points.values()), "train", results, backend, workers, address,
                             progress, what="plan", unit="what-ifs")
    priced = []
    for cfg, data, key in chosen:
        metrics, error = outcome[key]
        if metrics is None:
            pruned.append({"config": cfg, "reason": error})
            continue
        priced.append(_point(cfg, data, metrics))
    fastest = {hw: _min([p for p in priced if p["hardware"] == hw], "days_to_train")
               for hw in q.hardware}
    cheapest = {hw: _min([p for p in priced if p["hardware"] == hw], "cost_usd")
                for hw in q.hardware}
    t = q.base["training"]
    return {"question": {"workload": q.base.get("name"), "model": q.base["model"],
                         "hardware": list(q.hardware), "gpus": list(q.gpus),
                         "tokens_to_train": q.tokens if q.tokens is not None else
                         t.get("tokens_to_train", 20e12)},
            "candidates": {"tried": len(cands), "pruned": len(pruned), "priced": len(priced)},
            "front": front(priced), "fastest": fastest, "cheapest": cheapest,
            "points": priced, "pruned": pruned[:20]}


def _passes_key(w: dict) -> str:
    """What sets a candidate's micro-batch passes: candidates that differ only in pipeline
    schedule or recompute share them (priced once on one worker, training.run memoises)."""
    return f"{w['hardware']}|{sorted(w['plan'].items())}|{w['training']['micro_batch_sequences']}"


def _point(cfg: str, w: dict, m: dict) -> dict:
    f = m["fidelity"]
    return {"config": cfg, "hardware": w["hardware"], "gpus": w["plan"]["gpus"],
            "plan": w["plan"], "micro_batch_sequences": w["training"]["micro_batch_sequences"],
            "pipeline": w["training"]["pipeline"], "recompute": w["training"]["recompute"],
            "step_time_s": m["step_time_s"], "mfu": m["mfu"],
            "tokens_per_day": m["tokens_per_day"], "days_to_train": m["days_to_train"],
            "cost_usd": m["cost_usd"], "peak_memory_gb": m["peak_memory_gb"],
            "fidelity": {"measured_share": f.get("measured_share"),
                         "expected_error_pct": f.get("expected_error_pct")},
            "workload": w}


def _min(points: list[dict], key: str) -> dict | None:
    """The point with the least `key` (on fewer GPUs when tied), or None."""
    return min(points, key=lambda p: (p[key], p["gpus"])) if points else None


def front(points: list[dict]) -> list[dict]:
    """Points no other beats on both GPUs (fewer) and days to train (fewer), by GPU count."""
    ranked = sorted(points, key=lambda p: (p["gpus"], p["days_to_train"], p["cost_usd"]))
    out, best_days = [], math.inf
    for p in ranked:
        if p["days_to_train"] < best_days:
            out.append(p)
            best_days = p["days_to_train"]
    return out


def write_points(points: list[dict], out_dir: Path) -> list[Path]:
    """Each point as a runnable training workload (`moesim train FILE` reproduces it)."""
    return write_workloads(points, out_dir, lambda p: (
        f"# moesim plan --train: {p['config']}\n# step {p['step_time_s']:.3f} s, MFU "
        f"{p['mfu']:.1%}, {p['days_to_train']:.1f} days, ${p['cost_usd']:,.0f} "
        "(moesim train this file)\n"))
