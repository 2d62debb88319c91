"""Eager-runtime pricing: kernel launches and unfused elementwise passes, only where the profile
declares an eager runtime (eager_op_overhead_s)."""
import pytest

from simulator.pricing.hardware import compute_time_s, efficiency
from simulator.loading import load_model
from simulator.step.whatif import resolve, simulate
from tests.conftest import profile, workload

TINY = "workloads/tiny-scmoe.yaml"
EAGER = {"value": 8e-6, "source": "test"}


def _ops(w, prof):
    res = simulate(w, "sequential", resolved=resolve(w, profile=prof))
    return {op.name: op for op in res.timeline.ops}, res


def test_fused_profiles_ignore_kernel_counts():
    prof = profile("h800")
    assert prof.eager_op_overhead_s is None
    ops, _ = _ops(workload(TINY, hardware="h800"), prof)
    core = ops["L1.attn0.core"]
    assert core.kernels > 1 and core.aux_bytes > 0
    bare = type(core)(**{**core.__dict__, "kernels": 1, "aux_bytes": 0.0})
    assert compute_time_s(core, prof) == compute_time_s(bare, prof)


def test_eager_profile_prices_every_launch_and_pass():
    fused = profile("cpu-2core-example", eager_op_overhead_s=None, gather_rate=None)
    eager = profile("cpu-2core-example", eager_op_overhead_s=EAGER, gather_rate=None)
    w = workload(TINY)
    ops, res_f = _ops(w, fused)
    _, res_e = _ops(w, eager)
    for name in ("L1.attn0.qkv_proj", "L1.attn0.core", "L1.moe.router", "L1.moe.permute",
                 "L1.moe.experts", "L1.ffn0.ffn", "L1.residual"):
        op = ops[name]
        extra = compute_time_s(op, eager) - compute_time_s(op, fused)
        assert extra >= op.kernels * EAGER["value"] * 0.999
        if op.aux_bytes:          # the unfused passes cost at most the slowest memory rate
            slowest = min(e for _, e in eager.memory_efficiency.points)
            assert extra <= op.kernels * EAGER["value"] + op.aux_bytes / (
                eager.hbm_bandwidth_Bps.value * slowest) * 1.0001
    assert res_e.metrics["step_time_ms"] > res_f.metrics["step_time_ms"]


def test_kernel_counts_follow_the_blocks():
    w = workload(TINY)
    ops, _ = _ops(w, profile("cpu-2core-example"))
    m = load_model("tiny-scmoe")
    # MLA core: kv norm, kv_b, two ropes, two concatenations, SDPA, output reshape
    assert ops["L1.attn0.core"].kernels > ops["L1.attn0.qkv_proj"].kernels > ops[
        "L1.attn0.o_proj"].kernels > 1
    assert "mla" in ops["L1.attn0.core"].tags
    # dispatch first swaps row counts: two collectives; combine reuses them
    assert ops["L1.moe.dispatch"].kernels == 2 and ops["L1.moe.combine"].kernels == 1
    # experts: a fixed cost per local expert (mask, gather, SwiGLU, scatter)
    local = m.moe.num_experts // w.plan.ep
    more = workload(TINY, plan={"ep": 1, "gpus": 1, "gpus_per_node": 1})
    ops1, _ = _ops(more, profile("cpu-2core-example"))
    per_expert = (ops1["L1.moe.experts"].kernels - ops["L1.moe.experts"].kernels) / (
        m.moe.num_experts - local)
    assert per_expert == 8
    # ffn0 takes the MoE branch's normed input; ffn1 normalises its own
    assert ops["L1.ffn1.ffn"].kernels == ops["L1.ffn0.ffn"].kernels + 6


def test_mla_prefill_uses_its_own_score_rate():
    slow = {"points": [[1.0, 1e8], [1e12, 1e8]], "source": "test"}
    base = profile("cpu-2core-example")
    prof = profile("cpu-2core-example", mla_attention_score_rate=slow)
    ops, _ = _ops(workload(TINY), base)
    core = ops["L1.attn0.core"]
    table = base.mla_attention_score_rate or base.attention_score_rate
    assert table.points[0][0] <= core.scores <= table.points[-1][0]   # inside the calibration
    assert compute_time_s(core, prof) - compute_time_s(core, base) == pytest.approx(
        core.scores / 1e8 - core.scores / efficiency(table, core.scores, "x"), rel=1e-6)


def test_jittery_ranks_set_the_pace_of_an_ep_group():
    from simulator.pricing.hardware import expected_max_normal, straggler_factor
    assert expected_max_normal(1) == 0.0
    assert expected_max_normal(2) == pytest.approx(0.5642, abs=0.03)    # 1 / sqrt(pi)
    assert expected_max_normal(256) == pytest.approx(2.8, abs=0.1)
    jit = profile("cpu-2core-example", rank_jitter={"value": 0.1, "source": "test"})
    calm = profile("cpu-2core-example", rank_jitter=None)
    assert straggler_factor(calm, 64) == 1.0
    w = workload(TINY)
    ops_j, res_j = _ops(w, jit)
    ops_c, res_c = _ops(w, calm)
    f = straggler_factor(jit, w.plan.ep)
    tl_j, tl_c = res_j.timeline, res_c.timeline
    for i, op in enumerate(tl_c.ops):
        if not op.is_comm:
            assert tl_j.standalone_s[i] == pytest.approx(tl_c.standalone_s[i] * f)
    assert res_j.metrics["step_time_ms"] > res_c.metrics["step_time_ms"]


def test_eager_index_copies_move_at_the_gather_rate():
    slow = {"points": [[1.0, 2e9], [1e12, 2e9]], "source": "test"}
    base = profile("cpu-2core-example", eager_op_overhead_s=EAGER, gather_rate=None)
    gath = profile("cpu-2core-example", eager_op_overhead_s=EAGER, gather_rate=slow)
    ops, res_b = _ops(workload(TINY), base)
    _, res_g = _ops(workload(TINY), gath)
    m, w = load_model("tiny-scmoe"), workload(TINY)
    routed = w.batch_per_device * w.context_length * m.moe.real_experts_per_token
    from simulator.pricing.hardware import memory_rate
    for name, passes in (("L1.moe.permute", 2), ("L1.moe.experts", 4)):
        op = ops[name]            # the routed rows, hidden-wide float32, read and written
        assert op.gather_bytes == pytest.approx(passes * routed * m.hidden_size * 4)
        g = op.gather_bytes
        assert compute_time_s(op, gath) - compute_time_s(op, base) == pytest.approx(
            g / 2e9 - g / memory_rate(base, g), rel=1e-6)
    for name in ("L1.ffn0.ffn", "L1.attn0.core", "L1.moe.unpermute"):   # index_add: rows
        assert ops[name].gather_bytes == 0
    assert res_g.metrics["step_time_ms"] > res_b.metrics["step_time_ms"]
    fused = profile("h800")           # fused kernels: no eager pricing, the field is ignored
    assert compute_time_s(op, fused) == compute_time_s(
        type(op)(**{**op.__dict__, "gather_bytes": 0.0}), fused)
