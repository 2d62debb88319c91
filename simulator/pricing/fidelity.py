"""Where each op's price comes from, mirroring hardware.py's choices: a measured table at a
shape inside its measured range ("measured": a measured kernel time, interpolated between
measured shapes, or an efficiency table read inside its range), the same table at a shape
outside it ("extrapolated"), or the roofline alone: a datasheet peak or link rate times one
scalar efficiency ("roofline"). A step's measured share weighs its ops by their time."""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from simulator.graph.ops import Op
from simulator.kernels.grid import Lookup
from simulator.pricing.measured import comm_lookup, compute_lookup, deepep_lookup, nodes_of
from simulator.schema import HardwareProfile, ParallelPlan

MEASURED, EXTRAPOLATED, ROOFLINE = "measured", "extrapolated", "roofline"
MAX_LISTED = 10          # extrapolated shapes a result lists
MIN_SHARE = 0.25         # the band widens as 1 / measured share, at most 4x (a rule, not a fit)
TRAINING_BANDS = Path(__file__).resolve().parents[2] / "hardware_profiles" / "fidelity" / \
    "training_bands.yaml"
BANDS = Path(__file__).resolve().parents[2] / "hardware_profiles" / "fidelity" / "bands.yaml"


def _inside(xs: list[float], x: float) -> bool:
    return x <= 0 or len(xs) < 2 or xs[0] <= x <= xs[-1]


def _table(inside: bool, what: str) -> tuple[str, str]:
    return (MEASURED, "") if inside else (EXTRAPOLATED, what)


def op_source(op: Op, plan: ParallelPlan, prof: HardwareProfile) -> tuple[str, str]:
    """(measured | extrapolated | roofline, what lay outside the table when extrapolated)."""
    hit = kernel_source(op, plan, prof)
    if hit is not None:
        return (EXTRAPOLATED, hit.outside) if hit.source == EXTRAPOLATED else (MEASURED, "")
    if op.is_comm:
        if op.group not in ("tp", "cp"):
            return ROOFLINE, ""                 # EP all-to-all: link rates and latency
        size = plan.tp if op.group == "tp" else plan.cp
        xs = [p[0] for p in prof.collective_efficiency.points]
        per_peer = op.bytes / max(size - 1, 1)
        return _table(_inside(xs, per_peer), f"collective bytes per peer {per_peer:.3g}")
    if op.kind in ("gemm", "grouped_gemm"):
        table = prof.gemm_shape_efficiency
        if table is not None and op.gemm_nk:
            ok = _inside(table.m, op.m) and all(_inside(table.weights, nk) for nk in op.gemm_nk)
            return _table(ok, f"GEMM M {op.m:.3g}, N x K {max(op.gemm_nk):.3g}")
        t = prof.grouped_gemm_efficiency if op.kind == "grouped_gemm" else prof.gemm_efficiency
        return _table(_inside([p[0] for p in t.points], op.m), f"GEMM M {op.m:.3g}")
    if op.kind == "attention" and op.kernel in prof.attention_tables:
        t = prof.attention_tables[op.kernel]
        return _table(_inside(t.batch, op.seqs) and _inside(t.kv_len, op.kv_len),
                      f"{op.kernel} sequences {op.seqs:.3g}, KV length {op.kv_len:.3g}")
    if op.kind == "elementwise" and prof.memory_efficiency is not None:
        xs = [p[0] for p in prof.memory_efficiency.points]
        return _table(_inside(xs, op.bytes), f"bytes moved {op.bytes:.3g}")
    return ROOFLINE, ""


def kernel_source(op: Op, plan: ParallelPlan, prof: HardwareProfile) -> Lookup | None:
    """The measured kernel table's answer that prices `op` (as hardware.py and traffic.py
    read it), or None where no table of the runtime holds it."""
    if prof.measured is None:
        return None
    if not op.is_comm:
        return compute_lookup(op, prof)
    if op.group == "ep" and op.moe_key and prof.idealizations.ep_flat_bandwidth_Bps is None:
        h, _, top_k, experts, _, ep = op.moe_key[:6]
        hit = deepep_lookup(prof, op.kernel, nodes_of(ep, plan.gpus_per_node), h, top_k,
                            experts, op.m, 2.0)
        return None if hit is None else hit["combine" in op.name]
    return comm_lookup(op, plan, prof)


def op_source_name(op: Op, plan: ParallelPlan, prof: HardwareProfile) -> str:
    """measured | interpolated | extrapolated | roofline: where `op`'s price comes from (an
    efficiency table read inside its range counts as measured)."""
    hit = kernel_source(op, plan, prof)
    return hit.source if hit is not None else op_source(op, plan, prof)[0]


def measured_share(ops: list[tuple[Op, float]], plan: ParallelPlan,
                   prof: HardwareProfile) -> tuple[float, list[str]]:
    """(time-weighted share of `ops` (op, seconds) priced inside measured tables, the
    distinct op shapes that were extrapolated, op name's last part first)."""
    total = inside = 0.0
    outside: dict[str, None] = {}
    for op, secs in ops:
        src, what = op_source(op, plan, prof)
        total += secs
        if src == MEASURED:
            inside += secs
        elif src == EXTRAPOLATED:
            outside[f"{op.name.rsplit('.', 1)[-1]}: {what}"] = None
    return (inside / total if total > 0 else 0.0), list(outside)


@lru_cache(maxsize=1)
def _bands() -> dict:
    from simulator.loading import read_yaml_mapping
    return read_yaml_mapping(BANDS)


@lru_cache(maxsize=1)
def _training_bands() -> dict:
    from simulator.loading import read_yaml_mapping
    return read_yaml_mapping(TRAINING_BANDS) if TRAINING_BANDS.exists() else {}


def expected_error_pct(profile: str, phase: str, share: float) -> float | None:
    """The error band (%) of a case like this: the p90 |error| of the silicon corpus' rows of
    this GPU and kind (TPOT for decode, TTFT otherwise; all GPUs' band where this GPU has no
    rows), widened as 1 / measured share (at most 1 / MIN_SHARE) for time priced outside
    measured tables (hardware_profiles/fidelity/bands.yaml); phase "training": the p90 of the
    published training rows (hardware_profiles/fidelity/training_bands.yaml)."""
    if phase == "training":
        bands = _training_bands().get("bands") or {}
        band = bands.get(profile) or bands.get("all")
        return band["training"] / max(share, MIN_SHARE) if band else None
    bands = _bands().get("bands") or {}
    kind = "decode" if phase == "decode" else "prefill"
    band = bands.get(profile) or bands.get("all")
    if not band:
        return None                  # no corpus rows measured yet
    return band[kind] / max(share, MIN_SHARE)
