"""`moesim validate`: the executor and the simulator on the same workload, op by op and layer by
layer, for the sequential and scmoe schedules."""
from __future__ import annotations

import os
import statistics
import warnings
from dataclasses import replace

import numpy as np

from simulator.schema import HardwareProfile, Workload
from simulator.errors import MoesimError
from simulator.loading import load_model, load_profile
from simulator.graph.params import count_params, is_moe_layer
from simulator.engine.timeline import Timeline
from simulator.step.whatif import StepResult, resolve, simulate

SCHEDULES = ("sequential", "scmoe")


def _workload(w: Workload, ranks: int, profile: str) -> Workload:
    plan = w.plan.variant(gpus=ranks, gpus_per_node=ranks, ep=ranks, tp=1, pp=1, cp=1,
                          dp_attention=None)
    # the executor sends one row per (token, real expert), as DeepEP's low-latency kernels do
    # (its normal kernels send a token once per destination GPU)
    routing = w.routing.variant(ep_kernel="low_latency")
    return w.variant(plan=plan, hardware=profile, phase="prefill", routing=routing,
                     serving=None, training=None)


def _check(w: Workload, ranks: int) -> None:
    model = load_model(w.model)
    if model.layer_kind != "shortcut" or model.moe is None:
        raise MoesimError("model", f"{model.name} is not a shortcut-connected MoE model",
                          "validate a LongCat-style model (layer_kind: shortcut), e.g. tiny-scmoe")
    if model.moe.num_experts % ranks:
        raise MoesimError("--ranks", f"{ranks} ranks do not divide the {model.moe.num_experts} "
                          "experts", "choose a divisor of the expert count")
    c = count_params(model, float(model.moe.top_k))
    weights = (c.total - c.embedding) * 4.0               # every rank builds every weight (fp32)
    tokens = w.batch_per_device * w.context_length
    acts = tokens * model.hidden_size * 4.0 * 64
    need = ranks * (weights + acts)
    avail = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    if need > 0.8 * avail:
        raise MoesimError("workload", f"too big for this machine's memory: {ranks} ranks x "
                          f"({weights / 1e9:.1f} GB weights + {acts / 1e9:.1f} GB activations) = "
                          f"{need / 1e9:.1f} GB against {avail / 1e9:.1f} GB",
                          "use a smaller model (workloads/models/tiny-scmoe.yaml) or fewer ranks")
    cores = os.cpu_count() or 1
    if ranks > cores:
        warnings.warn(f"{ranks} ranks on {cores} cores: ranks share cores, so measured times "
                      "include time-slicing the simulator does not model", stacklevel=3)


def expert_slot(res: StepResult, layer: int) -> int:
    """Where the simulator's scmoe schedule put the experts among the dense window ops."""
    from executor.runner import WINDOW
    tl = res.timeline
    names = sorted((tl.start_s[0, i], op.name) for i, op in enumerate(tl.ops) if op.layer == layer)
    order = [n.split(".", 1)[1] for _, n in names]
    before = order[:order.index("moe.experts")]
    return sum(1 for w in WINDOW if w in before)


def measured_timeline(pred: StepResult, ranks: list[dict]) -> Timeline:
    """The measured op times (all ranks) laid on the predicted timeline's ops."""
    ops = [op for op in pred.timeline.ops if op.name in ranks[0]["ops"]]
    idx = {op.name: i for i, op in enumerate(pred.timeline.ops)}
    start = np.array([[r["ops"][op.name][0] for op in ops] for r in ranks])
    end = np.array([[r["ops"][op.name][1] for op in ops] for r in ranks])
    streams = [pred.timeline.streams[idx[op.name]] for op in ops]
    return Timeline(ops, streams, start, end, [0.0] * len(ops))


def _layer_ends(tl: Timeline) -> dict[int, float]:
    ends: dict[int, float] = {}
    for i, op in enumerate(tl.ops):
        ends[op.layer] = max(ends.get(op.layer, 0.0), float(tl.end_s[:, i].max()))
    return ends


def predict(w: Workload, profile: str, ranks: int,
            prof: HardwareProfile | None = None) -> dict[str, StepResult]:
    """The simulator's run of both schedules on `ranks` ranks of `profile` (or of `prof`, a
    profile object standing in for it)."""
    wv = _workload(w, ranks, profile)
    r = resolve(wv, profile=prof)
    return {s: simulate(wv, s, resolved=r) for s in SCHEDULES}


def in_run(w: Workload, profile: str, ranks_out: list[dict], slot: int) -> dict:
    """The same measurement predicted with the profile scaled to the machine's speed measured
    by the in-run probes: {"machine_speed": measured/profiled time per probe, "mape": ...,
    "speedup_predicted": ...}. A busy machine moves the probes and the layers alike."""
    from executor.probes import probe_dims, scaled_profile, speed_ratios
    prof = load_profile(profile)
    dims = probe_dims(load_model(w.model), w.batch_per_device, w.context_length)
    ratios = speed_ratios(prof, [r["probes"] for r in ranks_out], *dims)
    v = compare(w, profile, predict(w, profile, len(ranks_out), scaled_profile(prof, ratios)),
                ranks_out, slot)
    return {"machine_speed": ratios, "mape": v["mape"], "layers": v["layers"],
            "speedup_predicted": v["speedup_predicted"]}


def measure(w: Workload, ranks: int, repeats: int, threads: int, slot: int) -> list[dict]:
    """Run the executor (both schedules, alternating); per-rank median op times."""
    from executor.runner import RunConfig, run
    model = load_model(w.model)
    cfg = RunConfig(spec=model.model_dump(), ranks=ranks, batch=w.batch_per_device,
                    seq=w.context_length, schedule=",".join(SCHEDULES), expert_slot=slot,
                    repeats=repeats, seed=w.seed, threads=threads,
                    real_experts=w.real_experts_per_token or 0.0)
    return run(cfg)["ranks"]


def prepare(w: Workload, profile: str, ranks: int) -> tuple[dict[str, StepResult], int, int]:
    """Checks, the prediction, the scmoe expert slot and the threads per rank to measure with
    (those the profile was measured with: a CPU "device")."""
    _check(w, ranks)
    prof = load_profile(profile)
    pred = predict(w, profile, ranks)
    model = load_model(w.model)
    middle = next(i for i in range(model.num_layers // 2, model.num_layers)
                  if is_moe_layer(model, i))       # a MoE layer, where the slot is chosen
    slot = expert_slot(pred["scmoe"], middle)
    threads = prof.calibration.threads_per_rank if prof.calibration else \
        max(1, (os.cpu_count() or 1) // ranks)
    return pred, slot, threads


def validate(w: Workload, profile: str, ranks: int = 2, repeats: int = 10) -> dict:
    """Measure and predict both schedules; the comparison as a JSON-able dict (with the profile
    as shipped, and under "in_run" scaled to the speed the probes measured in this run)."""
    pred, slot, threads = prepare(w, profile, ranks)
    ranks_out = measure(w, ranks, repeats, threads, slot)
    v = compare(w, profile, pred, ranks_out, slot)
    v["in_run"] = in_run(w, profile, ranks_out, slot)
    return v


def compare(w: Workload, profile: str, pred: dict[str, StepResult], ranks_out: list[dict],
            slot: int) -> dict:
    """Measured (executor ranks) against predicted (simulator) runs, per op and per layer."""
    ranks = len(ranks_out)
    meas, tls = {}, {}
    for s in SCHEDULES:
        meas[s] = [{"ops": r["by_schedule"][s]} for r in ranks_out]
        tls[s] = measured_timeline(pred[s], meas[s])
    layers = []
    for s in SCHEDULES:
        m_end, p_end = _layer_ends(tls[s]), _layer_ends(pred[s].timeline)
        prev_m = prev_p = 0.0
        for layer in sorted(m_end):
            mu, pu = (m_end[layer] - prev_m) * 1e6, (p_end[layer] - prev_p) * 1e6
            prev_m, prev_p = m_end[layer], p_end[layer]
            layers.append({"schedule": s, "layer": layer, "measured_us": mu, "predicted_us": pu,
                           "error": pu / mu - 1 if mu > 0 else None})
    ops = []
    tl_m, tl_p = tls["sequential"], pred["sequential"].timeline
    pidx = {op.name: i for i, op in enumerate(tl_p.ops)}
    for i, op in enumerate(tl_m.ops):
        mu = statistics.median(float(tl_m.end_s[r, i] - tl_m.start_s[r, i]) for r in range(ranks)) * 1e6
        j = pidx[op.name]
        pu = float(tl_p.end_s[0, j] - tl_p.start_s[0, j]) * 1e6
        ops.append({"name": op.name, "kind": op.kind, "measured_us": mu, "predicted_us": pu,
                    "error": pu / mu - 1 if mu > 0 else None})
    errs = [abs(x["error"]) for x in layers if x["error"] is not None]
    return {
        "workload": w.name, "profile": profile, "ranks": ranks, "expert_slot": slot,
        "layers": layers, "mape": float(np.mean(errs)) if errs else None, "ops": ops,
        "speedup_measured": paired_speedup(ranks_out),
        "speedup_measured_ci95": list(paired_speedup_ci(ranks_out)),
        "speedup_predicted": pred["sequential"].step_time_s / pred["scmoe"].step_time_s,
        "_timelines": (pred, tls),
    }


def _pair_ratios(ranks_out: list[dict]) -> np.ndarray:
    seq = np.max([r["totals"]["sequential"] for r in ranks_out], axis=0)
    sc = np.max([r["totals"]["scmoe"] for r in ranks_out], axis=0)
    return np.asarray(seq / sc, dtype=float)


def paired_speedup(ranks_out: list[dict]) -> float:
    """Median over repeats of sequential / scmoe forward time, each pair run back to back (the
    slowest rank's time per run): a drifting machine moves both runs of a pair alike."""
    return float(np.median(_pair_ratios(ranks_out)))


def paired_speedup_ci(ranks_out: list[dict], level: float = 0.95, draws: int = 2000,
                      seed: int = 0) -> tuple[float, float]:
    """Bootstrap interval of the paired speedup (the median of resampled pair ratios): where it
    spans 1, this machine's noise hides the sign of the gain."""
    ratios = _pair_ratios(ranks_out)
    rng = np.random.default_rng(seed)
    meds = np.median(rng.choice(ratios, size=(draws, ratios.size), replace=True), axis=1)
    tail = (1 - level) / 2 * 100
    return float(np.percentile(meds, tail)), float(np.percentile(meds, 100 - tail))


def report_results(v: dict) -> list:
    """StepResult-like objects for the report: predicted and measured, per schedule."""
    pred, tls = v["_timelines"]
    out = []
    for s in SCHEDULES:
        out.append(pred[s])
        exp_, hid = tls[s].comm_exposure_s(0)
        out.append(replace(pred[s], schedule=f"{s} (measured)", timeline=tls[s],
                           step_time_s=max(_layer_ends(tls[s]).values()),
                           exposed_comm_s=exp_, hidden_comm_s=hid))
    return out
