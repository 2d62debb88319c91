"""Every rank's expert GEMM priced at once (pricing/batched.py) must equal pricing each rank's
op alone (hardware.compute_time_s), bit for bit and with the same notes, on every shipped
profile: its tables with and without a shape grid, a memory-rate table, eager overheads, a
one-point table, the weight floor off, and sizes below, inside and above every table."""
from __future__ import annotations

import numpy as np
import pytest

from simulator.errors import MoesimError
from simulator.graph.ops import Op
from simulator.loading import PROFILES_DIR, known_names, load_profile
from simulator.notes import collecting
from simulator.pricing.batched import efficiencies, gemm_times_s
from simulator.pricing.hardware import compute_time_s, efficiency

OPS = {
    "grouped, two GEMMs (shape grid)": Op("e", "grouped_gemm", gemm_nk=(25165824, 12582912),
                                         kernels=34, aux_bytes=7e7, gather_bytes=5e7),
    "grouped, no GEMM list": Op("e", "grouped_gemm"),
    "dense GEMM": Op("g", "gemm", gemm_nk=(4096 * 4096,)),
}


def _sizes(seed: int) -> tuple[np.ndarray, ...]:
    """Rows and active copies spanning 0 rows to far above any table, and the op fields the
    per-rank expert op would carry."""
    rng = np.random.default_rng(seed)
    rows = np.concatenate([[0.0, 0.5, 1.0, 3.0], rng.lognormal(5, 3, 60), [1e7, 3e9]])
    slots = rng.integers(0, 9, rows.size)
    m = rows / np.maximum(slots, 1)
    weights = slots * 3 * 6144 * 2048
    return rows * 2 * 6144 * 2048 * 3, m, weights + rows * 2 * 6144 * 2, weights


@pytest.mark.parametrize("name", known_names(PROFILES_DIR))
@pytest.mark.parametrize("kind", sorted(OPS))
@pytest.mark.parametrize("precision", ["bf16", "fp8"])
def test_batched_gemm_pricing_equals_pricing_each_size_alone(name, kind, precision):
    prof = load_profile(name)
    op = OPS[kind].copy()
    op.precision = precision
    flops, m, nbytes, weight_bytes = _sizes(len(name))
    if precision == "fp8" and prof.peak_fp8_flops is None:
        with pytest.raises(MoesimError):                 # the same refusal, not a wrong price
            gemm_times_s(op, prof, flops, m, nbytes, weight_bytes)
        return
    with collecting() as together:
        got = gemm_times_s(op, prof, flops, m, nbytes, weight_bytes)
    want = []
    with collecting() as alone:
        for f, mm, b, wb in zip(flops.tolist(), m.tolist(), nbytes.tolist(),
                                weight_bytes.tolist()):
            one = op.copy()
            one.flops, one.m, one.bytes, one.weight_bytes = f, mm, b, wb
            want.append(compute_time_s(one, prof))
    assert got.tolist() == want
    assert sorted(together) == sorted(alone)


def test_batched_tables_at_their_points_edges_and_a_zero_width_segment():
    from simulator.schema import RateTable
    t = RateTable(points=[(2.0, 10.0), (2.0, 20.0), (8.0, 40.0), (32.0, 50.0)], source="test")
    sizes = [-1.0, 0.0, 1.0, 2.0, 3.0, 8.0, 16.0, 32.0, 64.0]
    with collecting() as together:
        got = efficiencies(t, np.array(sizes), "x").tolist()
    with collecting() as alone:
        want = [efficiency(t, s, "x") for s in sizes]
    assert got == want and sorted(together) == sorted(alone)
    # closed forms: half-way in log from 8 to 32 is 16 -> 45; below the first point 10, above
    # the last 50; at the duplicated first size the later point's 20 (as the scalar reads it)
    assert got[6] == pytest.approx(45.0) and got[2] == 10.0 and got[8] == 50.0
    assert got[3] == 20.0 and len(alone) == 2            # notes for 1.0 and 64.0 only


@pytest.mark.parametrize("name", ["h800", "h100-sxm"])
def test_per_rank_fp8_casts_scale_with_each_ranks_rows(name):
    # a training FP8 expert GEMM casts its inputs: each rank pays the op's cast bytes in
    # proportion to its routed rows (its FLOPs), as the op would priced alone at that size
    prof = load_profile(name)
    op = Op("e", "grouped_gemm", gemm_nk=(25165824, 12582912), precision="fp8")
    flops, m, nbytes, weight_bytes = _sizes(7)
    op.flops, op.cast_bytes = float(flops.mean()), 3e8       # the op's own size and casts
    got = gemm_times_s(op, prof, flops, m, nbytes, weight_bytes)
    plain = op.copy()
    plain.cast_bytes = 0.0
    base = gemm_times_s(plain, prof, flops, m, nbytes, weight_bytes)
    want = []
    for f, mm, b, wb in zip(flops.tolist(), m.tolist(), nbytes.tolist(), weight_bytes.tolist()):
        one = op.copy()
        one.flops, one.m, one.bytes, one.weight_bytes = f, mm, b, wb
        one.cast_bytes = max(op.cast_bytes * f / op.flops, 1.0)
        want.append(compute_time_s(one, prof))
    assert got.tolist() == pytest.approx(want, rel=1e-12, abs=1e-12)   # 1 byte at a 0-row rank
    assert (got > base).all()                               # every rank pays its launches
