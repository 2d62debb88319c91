"""GEMM efficiency by M and weight size (N x K): profile table, interpolation, fit, pricing."""
import pytest
from pydantic import ValidationError

from simulator.pricing.fits import Row, fit
from simulator.schema import ShapeEfficiencyTable
from simulator.pricing.hardware import bilinear_log, compute_time_s, gemm_efficiency
from simulator.loading import load_workload
from simulator.graph.model import build_forward
from simulator.graph.ops import Op, Shape, graph_ops
from simulator.step.whatif import resolve
from tests.conftest import ROOT, profile

TABLE = {"m": [16.0, 256.0], "weights": [4096.0, 1048576.0],
         "efficiency": [[0.05, 0.3], [0.2, 0.9]], "source": "test grid"}


def _eff(m: float, nk: float) -> float:
    """A known efficiency that depends on both M and N x K (not separable into a table by M)."""
    return min(1.0, (m / (m + 64)) * (nk / (nk + 2e5)) + 0.01)


def test_table_interpolates_in_log_space_and_clamps_with_a_warning():
    t = ShapeEfficiencyTable.model_validate(TABLE)
    assert bilinear_log(t.m, t.weights, t.efficiency, 16, 4096) == pytest.approx(0.05)
    assert bilinear_log(t.m, t.weights, t.efficiency, 256, 1048576) == pytest.approx(0.9)
    mid = bilinear_log(t.m, t.weights, t.efficiency, 64, 65536)   # half-way in both logs
    assert mid == pytest.approx((0.05 + 0.3 + 0.2 + 0.9) / 4)
    p = profile("cpu-2core-example", gemm_shape_efficiency=TABLE)
    op = Op("g", "gemm", flops=2 * 4096 * 4 * 8e6, m=4096, gemm_nk=(8e6,))
    from simulator.notes import collecting
    with collecting() as notes:
        assert gemm_efficiency(op, p) == pytest.approx(0.9)
    assert any("outside the calibrated range" in n for n in notes)


@pytest.mark.parametrize("bad, field", [
    ({"m": [256.0, 16.0]}, "m needs"),
    ({"weights": [4096.0]}, "one value per weights"),
    ({"efficiency": [[0.05, 1.3], [0.2, 0.9]]}, "(0, 1]"),
])
def test_bad_tables_are_refused_with_the_field(bad, field):
    with pytest.raises(ValidationError, match=field.replace("(", r"\(").replace("]", r"\]")):
        ShapeEfficiencyTable.model_validate({**TABLE, **bad})


def test_an_op_of_several_gemms_costs_the_sum_of_its_gemms():
    p = profile("cpu-2core-example", gemm_shape_efficiency=TABLE, eager_op_overhead_s=None)
    m, a, b = 128.0, 16384.0, 524288.0
    both = Op("two", "gemm", flops=2 * m * (a + b), m=m, gemm_nk=(a, b))
    one = [Op(f"g{nk}", "gemm", flops=2 * m * nk, m=m, gemm_nk=(nk,)) for nk in (a, b)]
    # each GEMM is its own launch: the op pays both kernel latencies, as two ops would (the
    # tables are fitted per kernel with one latency taken off each)
    assert compute_time_s(both, p) == pytest.approx(sum(compute_time_s(o, p) for o in one),
                                                    rel=1e-12)
    lat = p.kernel_latency_s.value
    assert compute_time_s(both, p) - 2 * lat == pytest.approx(
        sum(compute_time_s(o, p) - lat for o in one), rel=1e-9)
    # a small-weight GEMM runs further below peak than a large one at the same M
    assert gemm_efficiency(one[0], p) < gemm_efficiency(one[1], p)
    # a grouped op prices each expert's GEMMs at M = its tokens, from the same table
    grouped = Op("e", "grouped_gemm", flops=2 * 8 * m * (a + b), m=m, gemm_nk=(a, b))
    assert gemm_efficiency(grouped, p) == pytest.approx(gemm_efficiency(both, p))


def test_fit_recovers_a_shape_dependent_efficiency_that_a_table_by_m_cannot():
    peak, lat = 100e9, 1e-6
    rows = [Row("copy", 2e-6 + n / 20e9, 0, n, {}) for n in (1 << 12, 1 << 20, 1 << 24)]
    for m in (1, 16, 128, 1024):
        for n, k in ((8, 512), (128, 512), (512, 128), (512, 512), (2048, 2048)):
            flops = 2.0 * m * n * k
            rows.append(Row("gemm", lat + flops / (peak * _eff(m, n * k)), flops,
                            4.0 * (m * k + n * k), {"m": m, "n": n, "k": k}))
    f = fit(rows)
    ms, ws, grid = f.shape_table
    assert ms == [1, 16, 128, 1024] and ws == [4096, 65536, 262144, 4194304]
    top = _eff(1024, 2048 * 2048)           # the fastest case sets the peak
    for i, m in enumerate(ms):
        for j, w in enumerate(ws):
            assert grid[i][j] == pytest.approx(_eff(m, w) / top, rel=0.02)  # latency fit
    assert f.quality["gemm_by_shape"]["mape"] < f.quality["gemm"]["mape"] / 2


def test_every_gemm_op_lists_shapes_that_add_up_to_its_flops():
    w = load_workload(str(ROOT / "workloads" / "tiny-scmoe.yaml"))
    spec = resolve(w).model
    g = build_forward(spec, w.plan, w.precision, Shape("prefill", 4, 128, 128), 3.0)
    gemms = [op for op in graph_ops(g) if op.kind in ("gemm", "grouped_gemm")]
    assert {op.name.split(".", 1)[1] for op in gemms} >= {"attn0.qkv_proj", "moe.experts",
                                                          "ffn0.ffn", "moe.router"}
    for op in gemms:
        rows = op.m * (spec.moe.num_experts / w.plan.ep
                       if op.kind == "grouped_gemm" else 1)
        assert 2 * rows * sum(op.gemm_nk) == pytest.approx(op.flops), op.name
