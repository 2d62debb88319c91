"""Measured kernel tables (simulator/kernels) and pricing from them (pricing/measured.py), on the
real aiconfigurator-core 0.12.0 data files: units, interpolation, extrapolation, the shipped
profiles' tables, runtime selection and the calibrate importer."""
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from simulator.errors import MoesimError
from simulator.graph.ops import Op
from simulator.kernels import store
from simulator.kernels.aiconfigurator import data_root, read_set
from simulator.kernels.grid import EXTRAPOLATED, INTERPOLATED, MEASURED, KernelGrid, Lookup
from simulator.kernels.heldout import kfold_errors
from simulator.loading import PROFILES_DIR, load_profile
from simulator.pricing.hardware import compute_time_s, standalone_comm_time_s
from simulator.pricing.measured import select, static_part
from simulator.pricing.peaks import peak_flops
from simulator.schema import ParallelPlan, Precision, RuntimeSpec

ROOT = Path(__file__).resolve().parent.parent
FLAT = (lambda x: 1.0)          # a roofline that scales nothing


@pytest.fixture(scope="module")
def h200():
    return read_set("h200_sxm", "sglang")


def _parquet(rel: str) -> pd.DataFrame:
    return pd.read_parquet(data_root() / rel)


def _priced(profile: str, framework: str | None = None, kv_bytes: float = 2.0,
            fp8_scaling: str = "block"):
    prof = load_profile(profile)
    ms = select(prof, RuntimeSpec(framework=framework),
                Precision(kv_bytes=kv_bytes, fp8_scaling=fp8_scaling))
    return prof.with_measured(ms)


# -- the grid's rules, on a hand-made table ------------------------------------------------
def _grid() -> KernelGrid:
    # latency = 1e-6 * m at n = 1, twice that at n = 4; one cell never measured
    v = np.array([[1e-6, 2e-6], [4e-6, 8e-6], [16e-6, np.nan]])
    return KernelGrid("gemm", ("bf16",), ("m", "n"), (np.array([1.0, 4.0, 16.0]),
                                                       np.array([1.0, 4.0])), v)


def test_a_measured_point_is_returned_exactly():
    hit = _grid().lookup((4, 4), FLAT)
    assert hit.source == MEASURED and hit.seconds == 8e-6


def test_interpolation_is_log_linear_between_measured_points():
    hit = _grid().lookup((2, 1), FLAT)          # halfway from 1 to 4 in log m
    assert hit.source == INTERPOLATED
    assert hit.seconds == pytest.approx(math.sqrt(1e-6 * 4e-6), rel=1e-12)


def test_interpolation_weights_each_side_by_its_log_distance():
    f = math.log(1.5) / math.log(4)                  # m = 1.5 between 1 and 4
    hit = _grid().lookup((1.5, 1), FLAT)
    assert hit.seconds == pytest.approx(1e-6 * 4 ** f, rel=1e-12)


def test_interpolation_is_monotone_where_the_data_are():
    ms = np.geomspace(1, 16, 41)
    ts = [_grid().lookup((m, 1), FLAT).seconds for m in ms]
    assert all(b >= a for a, b in zip(ts, ts[1:]))


def test_outside_the_hull_scales_the_edge_by_the_roofline():
    hit = _grid().lookup((64, 1), lambda x: x[0] * 1e-7)     # roofline linear in m
    assert hit.source == EXTRAPOLATED and "m 64" in hit.outside
    assert hit.seconds == pytest.approx(16e-6 * 64 / 16, rel=1e-12)


def test_a_shape_enclosed_by_measured_corners_of_a_part_measured_cell_is_interpolated():
    # cell m 4..16, n 1..4 misses (16, 4); (6, 1.5) lies in the simplex of (4, 1) and its
    # measured neighbours (16, 1) and (4, 4): weights 1 - fm - fn, fm, fn on log latency
    f = math.log(1.5) / math.log(4)
    hit = _grid().lookup((6, 1.5), FLAT)
    assert hit.source == INTERPOLATED
    want = math.exp((1 - 2 * f) * math.log(4e-6) + f * math.log(16e-6) + f * math.log(8e-6))
    assert hit.seconds == pytest.approx(want, rel=1e-12)
    # on the simplex's far face (fm + fn = 1) only the two neighbours count
    assert _grid().lookup((8, 2), FLAT).seconds == pytest.approx(math.sqrt(16e-6 * 8e-6),
                                                                  rel=1e-12)


def test_an_unmeasured_corner_anchors_on_the_nearest_measured_point():
    # (12, 3) lies beyond every measured simplex of its cell (fm + fn = 1.58 from (4, 1)):
    # nearest measured point in span-scaled log distance is (4, 4) (0.20 against (16, 1)'s
    # 0.64), its latency scaled by the roofline m x n
    hit = _grid().lookup((12, 3), lambda x: x[0] * x[1])
    assert hit.source == EXTRAPOLATED and "unmeasured" in hit.outside
    assert hit.seconds == pytest.approx(8e-6 * (12 * 3) / (4 * 4), rel=1e-12)


def test_kfold_heldout_error_is_zero_on_a_power_law_and_not_on_noise():
    m = np.geomspace(1, 1024, 11)
    exact = KernelGrid("gemm", ("bf16",), ("m",), (m,), 1e-6 * m ** 0.7)
    assert kfold_errors(exact).max() < 1e-9
    noisy = KernelGrid("gemm", ("bf16",), ("m",), (m,),
                       1e-6 * m ** 0.7 * np.where(np.arange(11) % 2, 1.3, 1.0))
    assert kfold_errors(noisy).max() > 0.1


# -- the importer on the real files ---------------------------------------------------------
def test_gemm_table_reproduces_its_parquet_rows_in_seconds(h200):
    ks, _ = h200
    raw = _parquet("h200_sxm/gemm/sglang/0.5.14/gemm_perf.parquet")
    raw = raw[raw["gemm_dtype"] == "fp8_block"].sample(300, random_state=0)
    grid = ks.get("gemm", ("fp8_block",))
    for r in raw.itertuples():
        hit = grid.lookup((r.m, r.n, r.k), FLAT)
        assert hit.source == MEASURED
        assert hit.seconds == pytest.approx(r.latency / 1e3, rel=1e-12)   # ms -> s


def test_deepep_columns_are_microseconds(h200):
    ks, _ = h200
    raw = _parquet("h200_sxm/comm/sglang/0.5.12/wideep_deepep_ll_perf.parquet")
    r = raw[(raw.hidden_size == 7168) & (raw.num_topk == 8) & (raw.num_experts == 256) &
            (raw.num_token == 128)].iloc[0]
    grid = ks.get("deepep_ll_dispatch", (7168, 8, 256))
    assert grid.lookup((1, 128), FLAT).seconds == pytest.approx(r.dispatch_avg_t_us * 1e-6)
    # and the figure is physical: 128 tokens x 8 copies x 7168 FP8 bytes over NVLink in
    # tens of microseconds, never milliseconds or nanoseconds
    assert 10e-6 < grid.lookup((1, 128), FLAT).seconds < 500e-6


def test_nccl_message_size_is_elements_of_two_bytes(h200):
    ks, _ = h200
    grid = ks.get("nccl", ("all_reduce", 8))
    nbytes = grid.points[0][-1]
    t = grid.lookup((nbytes,), FLAT).seconds
    busbw = 2 * 7 / 8 * nbytes / t                   # ring all-reduce bus bandwidth
    assert 350e9 < busbw < 500e9                      # NVLink 4: 450 GB/s per direction


def test_duplicated_keys_are_averaged_and_counted():
    ks, reads = read_set("gb200", "sglang")
    dup = [r for r in reads if r.op_class == "mla_generation"][0]
    assert dup.duplicates > 0 and any("measured twice" in n for n in ks.notes)
    raw = _parquet("gb200/mla/sglang/0.5.14/generation_mla_perf.parquet")
    k = raw[(raw.kv_cache_dtype == "bfloat16") & (raw.num_heads == 16) &
            (raw.batch_size == 64) & (raw.isl + raw.step == 4096)]
    assert len(k) == 2
    grid = ks.get("mla_generation", ("bf16", 16))
    assert grid.lookup((64, 4096), FLAT).seconds == pytest.approx(k.latency.mean() / 1e3)


@pytest.mark.parametrize("profile,system,framework", [
    ("h100-sxm", "h100_sxm", "sglang"), ("h200-sxm", "h200_sxm", "sglang"),
    ("b200-sxm", "b200_sxm", "sglang"), ("gb200", "gb200", "sglang"),
    ("h200-sxm", "h200_sxm", "trtllm"), ("b200-sxm", "b200_sxm", "vllm"),
    ("b200-sxm", "b200_sxm", "trtllm")])
def test_shipped_tables_equal_what_the_importer_writes(profile, system, framework):
    prof = load_profile(profile)
    ref = [m for m in prof.measured_kernels if m.framework == framework][-1]
    shipped = store.load(PROFILES_DIR / ref.file)
    fresh, _ = read_set(system, framework, ref.version)
    assert [(g.op_class, g.key) for g in shipped.grids] == \
        [(g.op_class, g.key) for g in fresh.grids]
    for a, b in zip(shipped.grids, fresh.grids):
        assert a.axes == b.axes and all(np.array_equal(x, y) for x, y in zip(a.points,
                                                                               b.points))
        np.testing.assert_allclose(a.seconds, b.seconds.astype(np.float32), rtol=0,
                                   equal_nan=True)


def test_trtllm_per_tensor_fp8_gemms_lose_their_dynamic_quantisation():
    # TensorRT-LLM's GEMM collector loads no input scale, so its per-tensor FP8 Linear
    # quantises dynamically; the computescale table measures dynamic minus static. At M = 4
    # that difference is the whole gap to SGLang's and vLLM's tables for the same GEMM.
    gemm = _parquet("h200_sxm/gemm/trtllm/1.3.0rc20/gemm_perf.parquet")
    cs = _parquet("h200_sxm/quantize/trtllm/1.3.0rc20/computescale_perf.parquet")
    sgl = _parquet("h200_sxm/gemm/sglang/0.5.14/gemm_perf.parquet")

    def at(df, m, n, k, dtype="fp8"):
        r = df[(df.gemm_dtype == dtype) & (df.m == m) & (df.n == n) & (df.k == k)]
        assert len(r) == 1
        return r.latency.iloc[0] / 1e3
    d = cs[(cs.m == 4) & (cs.k == 8192)].latency.iloc[0] / 1e3
    assert at(gemm, 4, 7168, 8192) - d == pytest.approx(at(sgl, 4, 7168, 8192), rel=0.15)
    op = Op("L0.ffn", "gemm", m=4, gemm_nk=(7168 * 8192,), gemm_dims=((7168, 8192),),
            precision="fp8")
    trt = _priced("h200-sxm", "trtllm", fp8_scaling="tensor")
    assert compute_time_s(op, trt) == pytest.approx(at(gemm, 4, 7168, 8192) - d)
    # block-scaled and BF16 GEMMs keep their tables' time; so do the other engines'
    block = _priced("h200-sxm", "trtllm", fp8_scaling="block")
    assert compute_time_s(op, block) == pytest.approx(at(gemm, 4, 7168, 8192, "fp8_block"))
    assert compute_time_s(op, _priced("h200-sxm", "sglang", fp8_scaling="tensor")) == \
        pytest.approx(at(sgl, 4, 7168, 8192))
    # never below the GEMM's roofline, whatever the difference reads
    big = Op("L0.ffn", "gemm", m=4096, gemm_nk=(7168 * 8192,), gemm_dims=((7168, 8192),),
             precision="fp8")
    assert compute_time_s(big, trt) >= 2 * 4096 * 7168 * 8192 / peak_flops(trt, "fp8")
    part = static_part(Lookup(10e-6, MEASURED), Lookup(12e-6, INTERPOLATED), 3e-6)
    assert part.seconds == pytest.approx(3e-6) and part.source == INTERPOLATED
    assert static_part(Lookup(10e-6, MEASURED), Lookup(4e-6, MEASURED), 3e-6).seconds == \
        pytest.approx(6e-6)


def test_trtllm_nvfp4_experts_read_the_min_latency_kernel_up_to_128_tokens_cutlass_above():
    # TensorRT-LLM runs its gated NVFP4 MoE in min-latency mode up to 128 tokens, CUTLASS
    # above (AIConfigurator's own rule); the file measured both kernels at every token count
    # (DeepSeek-R1's experts at MoE TP 8: 25 us against CUTLASS's 88 us at 4 tokens)
    raw = _parquet("b200_sxm/moe/trtllm/1.3.0rc20/moe_perf.parquet")
    at = raw[(raw.moe_dtype == "nvfp4") & (raw.hidden_size == 7168) & (raw.inter_size == 2048)
             & (raw.topk == 8) & (raw.num_experts == 256) & (raw.moe_tp_size == 8) &
             (raw.moe_ep_size == 1) & (raw.distribution == "balanced")]

    def src(name, tokens):
        r = at[(at.kernel_source == name) & (at.num_tokens == tokens)]
        assert len(r) == 1
        return r.latency.iloc[0] / 1e3
    assert src("moe_torch_flow_min_latency", 4) < src("moe_torch_flow_cutlass", 4) / 2
    # the file measured the min-latency kernel above 128 tokens too: those points stay unread
    assert src("moe_torch_flow_min_latency", 256) != src("moe_torch_flow_cutlass", 256)
    ks, _ = read_set("b200_sxm", "trtllm", "1.3.0rc23")
    grid = ks.get("moe", ("fp4", "balanced", 7168, 2048, 8, 256, 8))
    for tokens, name in ((4, "moe_torch_flow_min_latency"), (128, "moe_torch_flow_min_latency"),
                         (256, "moe_torch_flow_cutlass"), (4096, "moe_torch_flow_cutlass")):
        assert grid.lookup((1, tokens), FLAT).seconds == pytest.approx(src(name, tokens),
                                                                         rel=1e-6)


def test_trtllm_and_vllm_all_to_all_tables_are_their_own_deepep_rows_in_microseconds():
    # TensorRT-LLM 1.3.0rc11 on H200: low-latency dispatch in FP8 and combine in BF16,
    # 128 tokens per rank, hidden 7168, top-8 of 256: the `latency` column is microseconds
    raw = _parquet("h200_sxm/comm/trtllm/1.3.0rc11/moe_a2a_perf.parquet")
    at = raw[(raw.comm_backend == "trtllm_deepep_ll") & (raw.hidden_size == 7168) &
             (raw.topk == 8) & (raw.num_experts == 256) & (raw.num_tokens == 128)]
    ks, _ = read_set("h200_sxm", "trtllm", "1.3.0rc20")
    for part, dtype in (("dispatch", "fp8"), ("combine", "bfloat16")):
        row = at[(at.phase == part) & (at.comm_dtype == dtype)]
        assert len(row) == 1
        grid = ks.get(f"deepep_ll_{part}", (7168, 8, 256))
        got = grid.lookup((1, 128), FLAT).seconds
        assert got == pytest.approx(float(row.latency.iloc[0]) * 1e-6)
        assert 20e-6 < got < 200e-6           # tens of microseconds, as DeepEP's own
    # vLLM's high-throughput kernels at the largest SM budget measured (20)
    raw = _parquet("h200_sxm/comm/vllm/0.24.0/moe_a2a_perf.parquet")
    row = raw[(raw.comm_backend == "deepep_ht") & (raw.phase == "combine") &
              (raw.hidden_size == 7168) & (raw.topk == 8) & (raw.num_experts == 256) &
              (raw.num_tokens == 1024) & (raw.sms == 20)]
    ks, _ = read_set("h200_sxm", "vllm", "0.24.0")
    assert ks.get("deepep_normal_combine", (7168, 8, 256)).lookup((1, 1024), FLAT).seconds == \
        pytest.approx(float(row.latency.iloc[0]) * 1e-6)


def test_the_stored_file_round_trips(tmp_path, h200):
    ks, _ = h200
    store.save(ks, tmp_path / "k.npz")
    back = store.load(tmp_path / "k.npz")
    assert back.framework == "sglang" and back.version == ks.version
    g = ks.grids[100]
    np.testing.assert_allclose(back.get(g.op_class, g.key).seconds,
                               g.seconds.astype(np.float32), equal_nan=True)


# -- pricing from the tables ----------------------------------------------------------------
def test_a_gemm_op_takes_its_measured_latency():
    prof = _priced("h200-sxm")
    raw = _parquet("h200_sxm/gemm/sglang/0.5.14/gemm_perf.parquet")
    r = raw[(raw.gemm_dtype == "bfloat16") & (raw.m == 64) & (raw.n == 7168) &
            (raw.k == 2048)].iloc[0]
    r2 = raw[(raw.gemm_dtype == "bfloat16") & (raw.m == 64) & (raw.n == 2048) &
             (raw.k == 7168)].iloc[0]
    op = Op("L0.attn.o_proj", "gemm", flops=1.0, m=64, gemm_nk=(7168 * 2048, 2048 * 7168),
            gemm_dims=((7168, 2048), (2048, 7168)), precision="bf16")
    assert compute_time_s(op, prof) == pytest.approx((r.latency + r2.latency) / 1e3)


def test_fp8_scaling_picks_the_block_or_the_tensor_table_with_its_quantisation_inside():
    # the collectors time the engine's linear module on a BF16 input (SGLang: its per-token or
    # per-group quantise kernel, then the scaled GEMM), so a table's time already holds the
    # input's quantisation: nothing is added, for either scaling, and so in any engine
    raw = _parquet("h200_sxm/gemm/sglang/0.5.14/gemm_perf.parquet")
    op = Op("L0.ffn", "gemm", m=256, gemm_nk=(4096 * 7168,), gemm_dims=((4096, 7168),),
            precision="fp8")
    for scaling, dtype in (("block", "fp8_block"), ("tensor", "fp8")):
        r = raw[(raw.gemm_dtype == dtype) & (raw.m == 256) & (raw.n == 4096) &
                (raw.k == 7168)].iloc[0]
        assert compute_time_s(op, _priced("h200-sxm", fp8_scaling=scaling)) == \
            pytest.approx(r.latency / 1e3)
    vllm = _parquet("h200_sxm/gemm/vllm/0.24.0/gemm_perf.parquet")
    r = vllm[(vllm.gemm_dtype == "fp8") & (vllm.m == 4) & (vllm.n == 7168) & (vllm.k == 8192)]
    small = Op("L0.ffn", "gemm", m=4, gemm_nk=(7168 * 8192,), gemm_dims=((7168, 8192),),
               precision="fp8")
    assert compute_time_s(small, _priced("h200-sxm", "vllm", fp8_scaling="tensor")) == \
        pytest.approx(r.latency.iloc[0] / 1e3)
    bf16 = Op("L0.ffn", "gemm", m=256, gemm_nk=(4096 * 7168,), gemm_dims=((4096, 7168),))
    r = raw[(raw.gemm_dtype == "bfloat16") & (raw.m == 256) & (raw.n == 4096) &
            (raw.k == 7168)].iloc[0]
    assert compute_time_s(bf16, _priced("h200-sxm")) == pytest.approx(r.latency / 1e3)   # none


def test_sglang_experts_behind_deepep_read_its_deepgemm_tables():
    """SGLang runs its experts behind DeepEP on DeepGEMM (contiguous after the normal
    dispatch, masked after the low-latency one), measured by (EP, the group's tokens) in the
    package's wideep_*_moe_perf tables: a rank with 1,024 rows (128 tokens x top-8 from each
    of 32 ranks, routed uniformly) reads EP 32 at 128 x 32 = 4,096 group tokens."""
    prof = _priced("h200-sxm")
    w_exp = 3 * 7168 * 2048
    rows = 128 * 8
    for kernel, phase in (("normal", "context"), ("low_latency", "generation")):
        raw = _parquet(f"h200_sxm/moe/sglang/0.5.10/wideep_{phase}_moe_perf.parquet")
        r = raw[(raw.distribution == "uniform") & (raw.moe_ep_size == 32) &
                (raw.num_tokens == 4096)].latency.iloc[0] / 1e3
        op = Op("L3.moe.experts", "grouped_gemm", flops=2 * rows * w_exp, m=rows / 8,
                gemm_nk=(2 * 7168 * 2048, 7168 * 2048), precision="fp8", kernel=kernel,
                moe_key=(7168, 2048, 8, 256, 1, 32, 1 / 8, False))
        assert compute_time_s(op, prof) == pytest.approx(r)
    trt = _priced("h200-sxm", "trtllm")               # no such table: the EP-1 reading
    assert trt.measured.kernels.get("moe_deepep_context", (
        "fp8_block", "uniform", 7168, 2048, 8, 256, 1)) is None


def test_experts_after_an_all_to_all_read_the_ep1_table_over_ep():
    """After an all-to-all a rank holds only its rows: 64 tokens per rank x top-8 on EP 8 give
    it 512 rows over its 32 of DeepSeek's 256 experts, 16 rows each. The EP tables hand every
    rank the group's tokens (and SGLang's Triton kernel pays for the rows it masks), so the
    rank reads the EP-1 table at the tokens that give every expert 16 rows (512 x 8 / 8 = 512)
    and runs 1/8 of those experts."""
    prof = _priced("h200-sxm")
    raw = _parquet("h200_sxm/moe/sglang/0.5.14/moe_perf.parquet")
    sel = raw[(raw.moe_dtype == "fp8_block") & (raw.distribution == "balanced") &
              (raw.hidden_size == 7168) & (raw.inter_size == 2048) & (raw.topk == 8) &
              (raw.num_experts == 256) & (raw.moe_tp_size == 1)]
    ep1 = sel[(sel.moe_ep_size == 1) & (sel.num_tokens == 512)].latency.iloc[0] / 1e3
    ep8 = sel[(sel.moe_ep_size == 8) & (sel.num_tokens == 64)].latency.iloc[0] / 1e3
    w_exp = 3 * 7168 * 2048
    rows = 64 * 8                                   # 64 tokens per rank x top-8
    op = Op("L3.moe.experts", "grouped_gemm", flops=2 * rows * w_exp, m=rows / 32,
            gemm_nk=(2 * 7168 * 2048, 7168 * 2048), precision="fp8",
            moe_key=(7168, 2048, 8, 256, 1, 8, 1 / 8, False))
    assert compute_time_s(op, prof) == pytest.approx(ep1 / 8)
    assert ep1 / 8 != pytest.approx(ep8, rel=0.05)   # not the EP-8 table at a rank's tokens


def test_gqa_decode_attention_reads_the_generation_table_at_its_kv_length():
    prof = _priced("h200-sxm")
    raw = _parquet("h200_sxm/attention/sglang/0.5.14/generation_attention_perf.parquet")
    r = raw[(raw.num_heads == 64) & (raw.num_key_value_heads == 8) & (raw.head_dim == 128) &
            (raw.window_size == 0) & (raw.kv_cache_dtype == "bfloat16") &
            (raw.batch_size == 32) & (raw.step == 1023)].iloc[0]
    kv = r.isl + r.step
    op = Op("L0.attn.core", "attention", flops=1.0, bytes=1.0, m=32, seqs=32, kv_len=kv,
            attn_len=kv, attn_key=(64, 8, 128), kernel="gqa_decode")
    assert compute_time_s(op, prof) == pytest.approx(r.latency / 1e3)


def test_fp8_kv_cache_reads_its_own_attention_table():
    bf16 = _priced("h200-sxm", kv_bytes=2.0)
    fp8 = _priced("h200-sxm", kv_bytes=1.0)
    op = Op("L0.attn.core", "attention", flops=1.0, bytes=1.0, m=64, seqs=64, kv_len=8192,
            attn_len=8192, attn_key=(128,), kernel="mla_decode")
    assert compute_time_s(op, bf16) != compute_time_s(op, fp8)


def test_a_tp_all_reduce_takes_the_custom_all_reduce_time():
    prof = _priced("h200-sxm")
    raw = _parquet("h200_sxm/comm/sglang/0.5.14/custom_allreduce_perf.parquet")
    r = raw[(raw.num_gpus == 8) & (raw.backend == "sglang_graph") &
            (raw.message_size == 1048576)].iloc[0]
    size = r.message_size * 2                       # elements of bf16
    op = Op("L0.attn.all_reduce", "collective", bytes=2 * 7 / 8 * size,
            collective="all_reduce", group="tp")
    plan = ParallelPlan(gpus=8, tp=8, attention_tp=8, ep=8)
    assert standalone_comm_time_s(op, plan, prof) == pytest.approx(r.latency / 1e3)


def test_without_a_runtime_the_roofline_prices_as_before():
    prof = load_profile("h200-sxm")                  # no tables attached
    op = Op("L0.ffn", "gemm", flops=2 * 64 * 4096 * 7168, bytes=4096 * 7168 * 2, m=64,
            weight_bytes=4096 * 7168 * 2, gemm_nk=(4096 * 7168,), gemm_dims=((4096, 7168),))
    assert prof.measured is None
    assert compute_time_s(op, prof) != compute_time_s(op, _priced("h200-sxm"))


def test_deepep_measured_time_is_the_mean_ranks_all_to_all():
    from simulator.loading import load_workload
    from simulator.pricing.hardware import link_bandwidths
    from simulator.pricing.traffic import ep_traffic
    from simulator.step.resolve import resolve
    w = load_workload(str(ROOT / "workloads/validation/deepseek-v3-h100-sglang-decode.yaml"))
    w = w.model_copy(update={"plan": w.plan.model_copy(update={"gpus": 8, "ep": 8}),
                             "hardware": "h200-sxm", "batch_per_device": 64,
                             "routing": w.routing.model_copy(update={"redundant_experts": 0})})
    r = resolve(w)
    t = ep_traffic(r.model, w, r.profile, 64, r.real_experts, w.seed)
    grid = r.profile.measured.kernels.get("deepep_ll_dispatch", (7168, 8, 256))
    measured = grid.lookup((1, 64), FLAT).seconds
    mean = float(np.mean(t.times_s(False, 1.0, t.latency(False), link_bandwidths(r.profile))))
    assert mean == pytest.approx(measured, rel=1e-9)


def test_deepep_tables_are_read_at_the_tokens_that_move_the_workloads_bytes():
    """DeepEP's benchmark routes each token to k experts drawn uniformly from all E, so a
    normal-kernel dispatch reaches R(1 - C(E - E/R, k) / C(E, k)) of the R ranks on average;
    torchtitan's forced balance (copy i to expert i mod E) puts a token's k consecutive experts
    on one rank. The table is read at tokens x 1 / (R(1 - C(E - E/R, k) / C(E, k))): closed
    form here, sampled in the code. A low-latency dispatch sends one copy per real expert, as
    the table's routing does: read at the tokens themselves."""
    from simulator.loading import load_workload
    from simulator.pricing.hardware import link_bandwidths
    from simulator.pricing.traffic import ep_traffic
    from simulator.step.resolve import resolve
    w = load_workload(str(ROOT / "workloads/validation/training/qwen3-30b-a3b-b200-deepep-8.yaml"))
    w = w.model_copy(update={"phase": "prefill", "batch_per_device": 1})
    r = resolve(w)
    assert r.profile.measured is not None and w.routing.popularity == "round_robin"
    e, k, ranks, tokens = 128, 8, 8, 4096
    miss = math.comb(e - e // ranks, k) / math.comb(e, k)       # a rank none of k experts is on
    fan_out = ranks * (1 - miss)                                 # about 5.3 ranks a token
    t = ep_traffic(r.model, w, r.profile, tokens, r.real_experts, w.seed)
    grid = r.profile.measured.kernels.get("deepep_normal_dispatch", (2048, 8, 128))
    bw = link_bandwidths(r.profile)
    mean = float(np.mean(t.times_s(False, 1.0, t.latency(False), bw)))
    at_equal_bytes = grid.lookup((1, tokens / fan_out), FLAT).seconds
    at_tokens = grid.lookup((1, tokens), FLAT).seconds
    assert mean == pytest.approx(at_equal_bytes, rel=0.03)       # the sample's own fan-out
    assert mean < 0.5 * at_tokens                                 # not the table's traffic
    uniform = w.model_copy(update={"routing": w.routing.model_copy(
        update={"popularity": "uniform"})})
    u = ep_traffic(r.model, uniform, r.profile, tokens, r.real_experts, w.seed)
    assert float(np.mean(u.times_s(False, 1.0, u.latency(False), bw))) == \
        pytest.approx(at_tokens, rel=1e-9)


# -- the runtime field ----------------------------------------------------------------------
def test_the_default_runtime_is_the_newest_sglang():
    ms = select(load_profile("h200-sxm"), RuntimeSpec(), Precision())
    assert (ms.kernels.framework, ms.kernels.version) == ("sglang", "0.5.14")


def test_a_runtime_picks_its_own_tables():
    ms = select(load_profile("b200-sxm"), RuntimeSpec(framework="trtllm"), Precision())
    assert ms.kernels.framework == "trtllm" and ms.kernels.system == "b200_sxm"


def test_a_runtime_without_tables_for_the_gpu_names_those_that_have_them():
    with pytest.raises(MoesimError) as e:
        select(load_profile("h200-sxm"), RuntimeSpec(framework="vllm", version="0.1"),
               Precision())
    assert e.value.field == "runtime.version" and "sglang 0.5.14" in str(e.value)
    with pytest.raises(MoesimError) as e:
        select(load_profile("h800"), RuntimeSpec(framework="sglang"), Precision())
    assert e.value.field == "runtime.framework" and "none" in str(e.value)


def test_a_profile_without_tables_and_no_runtime_prices_by_the_roofline():
    assert select(load_profile("h800"), RuntimeSpec(), Precision()) is None


def _moesim(*args, cwd=None):
    return subprocess.run([sys.executable, str(ROOT / "cli.py"), *args], capture_output=True,
                          text=True, cwd=cwd, timeout=300)


def test_simulate_says_where_each_op_is_priced_from():
    import json
    out = _moesim("simulate", str(ROOT / "workloads/validation/deepseek-v3-h100-sglang-prefill"
                                  ".yaml"), "--json")
    assert out.returncode == 0, out.stderr
    d = json.loads(out.stdout)
    assert d["fidelity"]["kernel_tables"] == "sglang 0.5.14 (h100_sxm)"
    sources = {o["source"] for o in d["ops"]}
    assert sources <= {"measured", "interpolated", "extrapolated", "roofline"}
    assert {"measured", "interpolated"} & sources
    # the experts behind DeepEP read SGLang's DeepGEMM table (measured up to 524,288 group
    # tokens): a rank's 8,192 tokens per micro-batch x EP 32 lie inside it
    experts = {o["source"] for o in d["ops"] if o["name"].endswith("moe.experts")}
    assert experts <= {"measured", "interpolated"}
    assert d["fidelity"]["measured_share"] >= 0.8


# -- calibrate --from-aiconfigurator --------------------------------------------------------
def test_calibrate_writes_a_profile_that_loads_and_prints_heldout_errors(tmp_path):
    out = _moesim("calibrate", "--from-aiconfigurator", "h100_sxm", "--framework", "vllm",
                  "--out", str(tmp_path / "h100-vllm.yaml"))
    assert out.returncode == 0, out.stderr
    assert "held out" in out.stdout and "gemm" in out.stdout and "moe" in out.stdout
    prof = load_profile(str(tmp_path / "h100-vllm.yaml"))
    assert [m.framework for m in prof.measured_kernels] == ["vllm"]
    assert (tmp_path / prof.measured_kernels[0].file).is_file()


@pytest.mark.parametrize("args,field,names", [
    (["--from-aiconfigurator", "h20_sxm"], "SYSTEM", "h200_sxm"),
    (["--from-aiconfigurator", "h200_sxm", "--framework", "tgi"], "--framework", "vllm"),
    (["--from-aiconfigurator", "h200_sxm", "--version", "9.9"], "--version", "0.5.14")])
def test_calibrate_errors_name_what_exists(tmp_path, args, field, names):
    out = _moesim("calibrate", *args, "--out", str(tmp_path / "p.yaml"))
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert field in out.stderr and names in out.stderr


def test_calibrate_without_the_package_says_how_to_install_it(tmp_path):
    code = ("import sys; sys.modules['aiconfigurator_core'] = None; sys.argv = ['moesim', "
            "'calibrate', '--from-aiconfigurator', 'h200_sxm', '--out', 'p.yaml']; "
            f"sys.path.insert(0, {str(ROOT)!r}); from cli import main; main()")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=tmp_path, timeout=120)
    assert out.returncode == 2 and "kernels" in out.stderr and "Traceback" not in out.stderr


def test_serve_and_train_carry_a_fidelity_block():
    import yaml
    from simulator.loading import load_workload
    from simulator.serving.run import ServingSim
    from simulator.training.run import train
    sim = ServingSim(load_workload(str(ROOT / "workloads/serving/deepseek-v3-h200-offline.yaml")))
    f = sim.fidelity()
    assert f["kernel_tables"] == "sglang 0.5.14 (h200_sxm)"
    assert 0 < f["measured_share"] <= 1 and 0 < f["prefill_measured_share"] <= 1
    # the shares are simulate's of a full decode step at the mean context and of one prompt
    from simulator.step.whatif import simulate
    w, spec = sim.w, sim.spec
    ctx = int(spec.input_tokens.mean + spec.output_tokens.mean / 2)
    dec = w.variant(phase="decode", serving=None, batch_per_device=spec.decode.max_batch_per_device,
                    context_length=ctx, plan=spec.decode.plan or w.plan,
                    schedule=spec.decode.schedule or w.schedule)
    pre = w.variant(phase="prefill", serving=None, batch_per_device=1,
                    context_length=int(spec.input_tokens.mean), plan=spec.prefill.plan or w.plan,
                    schedule=spec.prefill.schedule or w.schedule)
    assert f["measured_share"] == pytest.approx(simulate(dec).fidelity["measured_share"])
    assert f["prefill_measured_share"] == pytest.approx(simulate(pre).fidelity["measured_share"])
    bands = yaml.safe_load((ROOT / "hardware_profiles/fidelity/bands.yaml").read_text())["bands"]
    assert f["expected_error_pct"]["tpot_ms"] == pytest.approx(
        bands["h200-sxm"]["decode"] / max(f["measured_share"], 0.25))
    assert f["expected_error_pct"]["ttft_ms"] == pytest.approx(
        bands["h200-sxm"]["prefill"] / max(f["prefill_measured_share"], 0.25))
    t = train(load_workload(str(ROOT / "workloads/training/longcat-flash-pretrain-h800.yaml")))
    j = t.to_json()["fidelity"]
    tb = yaml.safe_load((ROOT / "hardware_profiles/fidelity/training_bands.yaml").read_text())
    band = (tb["bands"].get("h800") or tb["bands"]["all"])["training"]
    assert 0 < j["measured_share"] <= 1
    assert j["expected_error_pct"] == pytest.approx(band / max(j["measured_share"], 0.25))


def test_a_collective_faster_than_the_link_rate_keeps_its_measured_time():
    from simulator.pricing.measured import measured_demand
    prof = load_profile("h200-sxm")
    bw = prof.nvlink.bandwidth_Bps.value
    op = Op("L0.attn.all_reduce", "collective", bytes=1e6, collective="all_reduce", group="tp")
    for seconds in (0.5e6 / bw, 3e6 / bw):          # beats the link's rate; slower than it
        d = measured_demand(op, seconds, prof)
        assert d.latency_s + d.link_bytes["nvlink"] / bw == pytest.approx(seconds, rel=1e-12)
        assert d.latency_s >= 0


def test_four_bit_expert_weights_read_the_w4a16_moe_tables_and_wider_ones_do_not():
    raw = _parquet("h200_sxm/moe/sglang/0.5.14/moe_perf.parquet")
    sel = (raw.distribution == "balanced") & (raw.hidden_size == 2880) & \
        (raw.inter_size == 2880) & (raw.topk == 4) & (raw.num_experts == 128) & \
        (raw.moe_tp_size == 1) & (raw.moe_ep_size == 1) & (raw.num_tokens == 16)
    w4 = raw[sel & (raw.moe_dtype == "w4a16_mxfp4")].latency.iloc[0] / 1e3
    assert not (sel & (raw.moe_dtype == "bfloat16")).any()     # gpt-oss's shape: 4-bit only
    rows = 16 * 4
    op = Op("L1.moe.experts", "grouped_gemm", flops=2 * rows * 3 * 2880 * 2880, m=rows / 128,
            gemm_nk=(2 * 2880 * 2880, 2880 * 2880), precision="bf16",
            moe_key=(2880, 2880, 4, 128, 1, 1, 1 / 4, True))
    prof = load_profile("h200-sxm")
    four = prof.with_measured(select(prof, RuntimeSpec(), Precision(weight_bytes=0.53125)))
    wide = prof.with_measured(select(prof, RuntimeSpec(), Precision(weight_bytes=2.0)))
    from simulator.pricing.measured import moe_lookup
    assert compute_time_s(op, four) == pytest.approx(w4)
    assert moe_lookup(wide, op, rows) is None        # BF16 experts: no such table, roofline


def test_moe_tp_without_its_own_table_reads_the_tp1_table_at_ep_times_tp():
    """gpt-oss-120b's 4-bit experts have TensorRT-LLM tables at MoE TP 1 only. MoE TP 4 x EP 1
    holds every expert at a quarter of its width: the FLOPs and weight bytes per rank of EP 4
    at TP 1 for the same tokens, so it is read there, and labelled extrapolated."""
    raw = _parquet("h200_sxm/moe/trtllm/1.3.0rc20/moe_perf.parquet")
    sel = (raw.distribution == "balanced") & (raw.hidden_size == 2880) & \
        (raw.inter_size == 2880) & (raw.topk == 4) & (raw.num_experts == 128) & \
        (raw.moe_dtype == "w4a16_mxfp4") & (raw.num_tokens == 64)
    assert not (sel & (raw.moe_tp_size == 4)).any()         # no TP-4 table
    ep4 = raw[sel & (raw.moe_tp_size == 1) & (raw.moe_ep_size == 4)].latency.iloc[0] / 1e3
    ep1 = raw[sel & (raw.moe_tp_size == 1) & (raw.moe_ep_size == 1)].latency.iloc[0] / 1e3
    prof = load_profile("h200-sxm")
    four = prof.with_measured(select(prof, RuntimeSpec(framework="trtllm"),
                                     Precision(weight_bytes=0.53125)))
    from simulator.pricing.measured import moe_lookup
    rows = 64 * 4                                    # 64 tokens, top-4, every expert here
    tp4 = Op("L1.moe.experts", "grouped_gemm", flops=2 * rows * 3 * 2880 * 720, m=rows / 128,
             gemm_nk=(2 * 2880 * 720, 2880 * 720), precision="bf16",
             moe_key=(2880, 2880, 4, 128, 4, 1, 1 / 4, True))
    hit = moe_lookup(four, tp4, rows)
    assert hit.seconds == pytest.approx(ep4) and hit.seconds != pytest.approx(ep1)
    assert hit.source == EXTRAPOLATED and "MoE TP 4 x EP 1 read as EP 4" in hit.outside
    tp1 = Op("L1.moe.experts", "grouped_gemm", flops=2 * rows * 3 * 2880 * 2880, m=rows / 128,
             gemm_nk=(2 * 2880 * 2880, 2880 * 2880), precision="bf16",
             moe_key=(2880, 2880, 4, 128, 1, 1, 1 / 4, True))
    own = moe_lookup(four, tp1, rows)                # its own key: measured
    assert own.seconds == pytest.approx(ep1) and own.source == MEASURED and not own.outside


def test_experts_under_tensor_parallel_attention_read_the_table_at_the_batch_tokens(tmp_path):
    """The MoE tables' token axis counts the tokens every rank of the EP group holds: a rank
    with 16 of Qwen3-235B's 128 experts computes top-8 x N / 8 rows (TensorRT-LLM's H100 table
    at EP 8 grows with N until N = 16, when all 16 local experts are busy, and is flat after).
    Under tensor-parallel attention every GPU holds the batch's 4 tokens, so the step's
    experts read N near 4, not 4 / 8: the table's balanced routing sends 4 tokens' 32 picks to
    4 of a rank's experts, random routing to 16 (1 - (1 - 8/128)^4) = 3.63 of them, so the
    table is read at the 3.63 tokens that reach as many."""
    raw = _parquet("h100_sxm/moe/trtllm/1.3.0rc20/moe_perf.parquet")
    sel = raw[(raw.moe_dtype == "fp8_block") & (raw.distribution == "balanced") &
              (raw.hidden_size == 4096) & (raw.inter_size == 1536) & (raw.topk == 8) &
              (raw.num_experts == 128) & (raw.moe_tp_size == 1) & (raw.moe_ep_size == 8)]
    lat = dict(zip(sel.num_tokens, sel.latency / 1e3))
    assert lat[16] > 1.5 * lat[8] and lat[64] < 1.05 * lat[16]      # saturates at 16 experts
    import yaml
    from simulator.loading import load_workload
    from simulator.step.whatif import simulate
    spec = {"name": "qwen-tp8-ep8", "model": str(ROOT / "workloads/models/qwen3-235b-a22b.yaml"),
            "hardware": "h100-sxm", "phase": "decode", "batch_per_device": 4,
            "context_length": 1024, "schedule": "sequential",
            "plan": {"gpus": 8, "gpus_per_node": 8, "tp": 8, "attention_tp": 8, "ep": 8},
            "precision": {"weight_bytes": 1.0, "fp8_scaling": "block",
                          "compute": {"dense_gemm": "fp8", "expert_gemm": "fp8"}},
            "runtime": {"framework": "trtllm", "version": "1.3.0rc20"},
            "routing": {"popularity": "balanced"}}
    path = tmp_path / "w.yaml"
    path.write_text(yaml.safe_dump(spec))
    ops = simulate(load_workload(str(path))).to_json()["ops"]
    experts = next(o for o in ops if o["name"].endswith("moe.experts"))
    n_eff = 4 * 16 * (1 - (1 - 8 / 128) ** 4) / 4
    grid = _priced("h100-sxm", "trtllm").measured.kernels.get(
        "moe", ("fp8_block", "balanced", 4096, 1536, 8, 128, 1))
    want = grid.lookup((8, n_eff), lambda x: math.nan)          # inside the hull: no roofline
    assert lat[2] < want.seconds < lat[4] and want.source == INTERPOLATED
    assert experts["end_us"] - experts["start_us"] == pytest.approx(want.seconds * 1e6, rel=1e-6)
    assert experts["source"] == INTERPOLATED


def test_a_sum_of_parts_is_labelled_by_its_least_measured_part():
    from simulator.kernels.grid import Lookup
    from simulator.pricing.measured import worst
    parts = [Lookup(1.0, MEASURED), Lookup(2.0, INTERPOLATED), Lookup(3.0, EXTRAPOLATED, "m 9")]
    for order in (parts, parts[::-1], [parts[1], parts[2], parts[0]]):
        w = worst(order)
        assert w.seconds == 6.0 and w.source == EXTRAPOLATED and w.outside == "m 9"
    assert worst(parts[:2]).source == INTERPOLATED and worst(parts[1:2][::-1] + parts[:1]) \
        .source == INTERPOLATED


def test_a_tp_all_gather_takes_nccls_time_at_the_gathered_size():
    prof = _priced("h200-sxm")
    raw = _parquet("h200_sxm/comm/nccl/2.29.2/nccl_perf.parquet")
    r = raw[(raw.op_name == "all_gather") & (raw.num_gpus == 8) & (raw.nccl_dtype == "half") &
            (raw.message_size == 4194304)].iloc[0]
    whole = r.message_size * 2                       # bytes gathered on every GPU
    op = Op("L0.ffn0.all_gather", "collective", bytes=whole * 7 / 8,   # sent per GPU
            collective="all_gather", group="tp")
    plan = ParallelPlan(gpus=8, tp=8, ep=8)
    assert standalone_comm_time_s(op, plan, prof) == pytest.approx(r.latency / 1e3)
