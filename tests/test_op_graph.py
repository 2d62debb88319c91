"""Op graphs: one builder for shortcut and conventional layers, phases, zero experts."""
import networkx as nx
import pytest

from simulator.schema import ParallelPlan, Precision
from simulator.loading import load_model
from simulator.graph.backward import build_backward
from simulator.graph.model import build_forward
from simulator.graph.ops import COMPUTE_KINDS, Shape

PLAN = ParallelPlan(gpus=128, gpus_per_node=8, ep=128)
PREC = Precision()
DECODE = Shape("decode", 32, 1, 4096)


def names(g):
    return set(g.nodes)


def test_shortcut_layer_structure():
    m = load_model("longcat-flash")
    g = build_forward(m, PLAN, PREC, DECODE, 8.0, layers=1, with_head=False)
    blocks = {g.nodes[n]["op"].block for n in g}
    assert {"attn0", "ffn0", "attn1", "ffn1", "moe"} <= blocks
    # the MoE branch starts from MLA_0's output, in parallel with the dense path
    assert g.has_edge("L0.attn0.o_proj", "L0.moe.router")
    assert g.has_edge("L0.attn0.o_proj", "L0.ffn0.ffn")
    assert not nx.has_path(g, "L0.moe.experts", "L0.ffn1.ffn")
    assert nx.has_path(g, "L0.moe.unpermute", "L0.residual")
    for part in ("router", "permute", "dispatch", "experts", "combine", "unpermute"):
        assert f"L0.moe.{part}" in g


def test_conventional_layer_is_serial_and_dense_layers_have_no_moe():
    m = load_model("deepseek-v3")
    g = build_forward(m, PLAN, PREC, DECODE, 8.0, layers=4, with_head=False)
    assert "L0.ffn.ffn" in g and "L0.moe.router" not in g      # first_k_dense
    assert nx.has_path(g, "L3.attn.o_proj", "L3.moe.dispatch")
    assert "L3.moe.shared" in g


def test_every_op_has_kind_and_inputs():
    m = load_model("longcat-flash")
    g = build_forward(m, PLAN, PREC, DECODE, 8.0, layers=2, mtp=True)
    for n in g:
        op = g.nodes[n]["op"]
        assert op.kind in COMPUTE_KINDS + ("collective",)
        assert op.flops >= 0 and op.bytes >= 0
    roots = [n for n in g if g.in_degree(n) == 0]
    assert roots == ["L0.attn0.qkv_proj"]


def test_tp_collectives_around_dense_ffn():
    m = load_model("longcat-flash")
    plan = ParallelPlan(gpus=16, gpus_per_node=8, tp=2, ep=16)
    g = build_forward(m, plan, PREC, DECODE, 8.0, layers=1, with_head=False)
    assert g.has_edge("L0.ffn0.all_gather", "L0.ffn0.ffn")
    assert g.has_edge("L0.ffn0.ffn", "L0.ffn0.reduce_scatter")
    g1 = build_forward(m, PLAN, PREC, DECODE, 8.0, layers=1, with_head=False)
    assert "L0.ffn0.all_gather" not in g1


def test_zero_computation_experts_cost_nothing():
    m = load_model("longcat-flash")
    full = build_forward(m, PLAN, PREC, DECODE, 12.0, layers=1, with_head=False)
    none = build_forward(m, PLAN, PREC, DECODE, 0.0, layers=1, with_head=False)
    for part in ("experts", "dispatch", "combine"):
        assert full.nodes[f"L0.moe.{part}"]["op"].flops + full.nodes[f"L0.moe.{part}"]["op"].bytes > 0
    assert none.nodes["L0.moe.experts"]["op"].flops == 0
    assert none.nodes["L0.moe.dispatch"]["op"].bytes == 0
    assert none.nodes["L0.moe.combine"]["op"].bytes == 0
    half = build_forward(m, PLAN, PREC, DECODE, 6.0, layers=1, with_head=False)
    assert half.nodes["L0.moe.dispatch"]["op"].bytes * 2 == full.nodes["L0.moe.dispatch"]["op"].bytes


def test_backward_doubles_gemm_flops_and_reverses_edges():
    m = load_model("mixtral-8x7b")
    plan = ParallelPlan(gpus=8, gpus_per_node=8, ep=8)
    shape = Shape("train_fwd", 2, 4096, 4096)
    fwd = build_forward(m, plan, PREC, shape, 2.0, layers=2)
    bwd = build_backward(fwd, PREC)
    gemm = lambda g: sum(g.nodes[n]["op"].flops for n in g
                         if g.nodes[n]["op"].kind in ("gemm", "grouped_gemm"))
    assert abs(gemm(bwd) - 2 * gemm(fwd)) < 1e-6 * gemm(fwd)
    assert bwd.has_edge("L0.moe.combine.bwd", "L0.moe.experts.dgrad")
    assert bwd.has_edge("L0.moe.experts.dgrad", "L0.moe.dispatch.bwd")
    assert nx.is_directed_acyclic_graph(bwd)
    wgrads = [n for n in bwd if n.endswith(".wgrad")]
    assert wgrads and all(bwd.out_degree(n) == 0 for n in wgrads)


def test_backward_gemms_have_their_own_shapes_and_bytes_by_hand():
    # Mixtral: h 4096, experts 14336 wide, 8 KV heads of 128; one micro-batch of 2 x 4096
    # tokens on a GPU, EP 8, top-2 (2 real experts per token), BF16 weights
    m = load_model("mixtral-8x7b")
    plan = ParallelPlan(gpus=8, gpus_per_node=8, ep=8)
    t, h, i = 2 * 4096, 4096, 14336
    fwd = build_forward(m, plan, PREC, Shape("train_fwd", 2, 4096, 4096), 2.0, layers=1,
                        with_head=False)
    bwd = build_backward(fwd, PREC)
    o = fwd.nodes["L0.attn.o_proj"]["op"]                  # Y[t, h] = X[t, 32 x 128] W
    d, w = bwd.nodes["L0.attn.o_proj.dgrad"]["op"], bwd.nodes["L0.attn.o_proj.wgrad"]["op"]
    assert o.gemm_dims == ((h, 4096),)
    assert d.gemm_dims == ((4096, h),) and d.m == t        # dX[t, 4096] = dY[t, h] W^T
    assert w.gemm_dims == ((4096, t),) and w.gemm_rows == (h,)   # dW[h, 4096], inner t
    assert d.flops == w.flops == o.flops == 2 * t * h * 4096
    # a non-square one: QKV's (N, K) = ((32 + 2 x 8) x 128, h) turns round for its dgrad
    q = fwd.nodes["L0.attn.qkv_proj"]["op"]
    assert q.gemm_dims == ((48 * 128, h),)
    assert bwd.nodes["L0.attn.qkv_proj.dgrad"]["op"].gemm_dims == ((h, 48 * 128),)
    assert bwd.nodes["L0.attn.qkv_proj.wgrad"]["op"].gemm_rows == (48 * 128,)
    # the weight gradient reads the activations and reads + writes the FP32 main gradient
    assert w.weight_bytes == h * 4096 * 2 * 4
    assert w.bytes == o.bytes - o.weight_bytes + h * 4096 * 8
    # the experts' weight gradient: every local expert's FP32 gradient, read and written
    e = fwd.nodes["L0.moe.experts"]["op"]
    ew = bwd.nodes["L0.moe.experts.wgrad"]["op"]
    weights = e.weight_bytes / 2
    assert weights == pytest.approx(1 * 3 * h * i)      # 8 experts over EP 8: one, all hit
    assert ew.bytes - ew.weight_bytes == pytest.approx(e.bytes - e.weight_bytes)
    assert ew.weight_bytes == pytest.approx(3 * h * i * 8)
    assert all(op.cast_bytes == 0 for _, op in bwd.nodes(data="op"))   # BF16: no casts
    # BF16 main gradients (training.grad_bytes 2): 2 bytes read and 2 written per weight
    half = build_backward(fwd, PREC, grad_bytes=2.0).nodes["L0.attn.o_proj.wgrad"]["op"]
    assert half.weight_bytes == h * 4096 * 2 * 2
    assert half.bytes == o.bytes - o.weight_bytes + h * 4096 * 4


def test_fp8_training_casts_every_gemm_input_by_hand():
    # FP8 dense and expert GEMMs: the forward casts each GEMM's input X (rows x K), the input
    # gradient casts dY (rows x N): 4 bytes an element block-scaled (read 2, write 1 row-wise
    # and 1 column-wise), 6 per-tensor (one more read for the amax)
    m = load_model("mixtral-8x7b")
    plan = ParallelPlan(gpus=8, gpus_per_node=8, ep=8)
    t, h, i = 4096, 4096, 14336
    for scaling, per in (("block", 4), ("tensor", 6)):
        prec = Precision(fp8_scaling=scaling,
                         compute={"dense_gemm": "fp8", "expert_gemm": "fp8"})
        fwd = build_forward(m, plan, prec, Shape("train_fwd", 1, 4096, 4096), 2.0, layers=1,
                            with_head=False, compute={"dense_gemm": "fp8", "expert_gemm": "fp8"})
        bwd = build_backward(fwd, prec)
        qkv = fwd.nodes["L0.attn.qkv_proj"]["op"]          # X[t, h] -> (32 + 2 x 8) x 128
        assert qkv.cast_bytes == t * h * per
        assert bwd.nodes["L0.attn.qkv_proj.dgrad"]["op"].cast_bytes == t * 48 * 128 * per
        assert bwd.nodes["L0.attn.qkv_proj.wgrad"]["op"].cast_bytes == 0
        e = fwd.nodes["L0.moe.experts"]["op"]              # 2 t routed rows: h in, i down
        assert e.cast_bytes == pytest.approx(2 * t * (h + i) * per)
        ed = bwd.nodes["L0.moe.experts.dgrad"]["op"]       # dY: 2 i up/gate, h down
        assert ed.cast_bytes == pytest.approx(2 * t * (2 * i + h) * per)
        router = fwd.nodes["L0.moe.router"]["op"]
        assert router.cast_bytes == 0                       # the router stays in BF16
    # inference never casts here (serving prices a per-tensor GEMM's quantise from its table)
    dec = build_forward(m, plan, prec, DECODE, 2.0, layers=1, with_head=False,
                        compute={"dense_gemm": "fp8", "expert_gemm": "fp8"})
    assert all(op.cast_bytes == 0 for _, op in dec.nodes(data="op"))


def test_prefill_attention_is_quadratic_in_prompt():
    m = load_model("llama-3-70b")
    plan = ParallelPlan(gpus=8, gpus_per_node=8)
    f = lambda L: build_forward(m, plan, PREC, Shape("prefill", 1, L, L), 0, layers=1,
                                with_head=False).nodes["L0.attn.core"]["op"].flops
    assert 3.9 < f(8192) / f(4096) < 4.1


def test_graph_ops_is_the_insertion_keyed_topological_order():
    # the schedules' issue order: networkx's lexicographical topological sort keyed by insertion
    # order, computed by hand on integer indices; a cycle is a clear error
    import networkx as nx
    from simulator.errors import MoesimError
    from simulator.graph.ops import Op, graph_ops
    from simulator.step.whatif import build_step_graph, resolve
    from tests.conftest import workload
    w = workload("workloads/longcat-flash-decode-h800.yaml")
    for phase, schedule in (("decode", "tbo"), ("train_bwd", "scmoe")):
        r = resolve(w.variant(phase=phase, batch_per_device=2, context_length=256),
                    with_head=phase == "decode")
        g = build_step_graph(r, schedule)
        order = {n: i for i, n in enumerate(g.nodes)}
        ref = list(nx.lexicographical_topological_sort(g, key=order.__getitem__))
        assert [op.name for op in graph_ops(g)] == ref
    g = nx.DiGraph()
    for n in ("a", "b", "c"):                          # c is ready first by insertion, b waits
        g.add_node(n, op=Op(n, "gemm"))
    g.add_edge("c", "b")
    assert [op.name for op in graph_ops(g)] == ["a", "c", "b"]
    g.add_edge("b", "c")
    with pytest.raises(MoesimError):
        graph_ops(g)


def test_mla_projections_are_two_gemms_with_q_a_and_kv_a_fused():
    # DeepSeek-V3: hidden 7168, q_lora 1536, kv_lora 512, rope 64, 128 heads of 128 + 64:
    # the fused q_a + kv_a GEMM is 7168 x 2112 (SGLang's fused_qkv_a_proj_with_mqa), then q_b
    m = load_model("deepseek-v3")
    g = build_forward(m, PLAN, PREC, DECODE, 8.0, layers=1, with_head=False)
    op = g.nodes["L0.attn.qkv_proj"]["op"]
    assert op.gemm_nk == (7168 * 2112, 1536 * 128 * 192)
    assert op.flops == 2 * DECODE.tokens * (7168 * 2112 + 1536 * 128 * 192)


@pytest.mark.parametrize("name", ["longcat-flash", "deepseek-v3", "qwen3-30b-a3b", "llama-3-70b",
                                  "mixtral-8x7b", "tiny-scmoe"])
@pytest.mark.parametrize("micro_batch,chunks", [(0, 1), (1, 2)])
def test_copied_layers_equal_layers_built_one_by_one(name, micro_batch, chunks):
    """build_forward copies each layer kind's first (recorded) layer; the reference here builds
    every layer afresh with the same builder. Nodes, op fields, edges and insertion order match."""
    from simulator.graph.model import _Builder
    m = load_model(name)
    plan = ParallelPlan(gpus=8, gpus_per_node=8, ep=8, tp=2 if name == "llama-3-70b" else 1)
    got = build_forward(m, plan, PREC, DECODE, 6.0, micro_batch=micro_batch, moe_chunks=chunks,
                        compute={"expert_gemm": "fp8"}, mtp=True)
    b = _Builder(m, plan, PREC, DECODE, 6.0, micro_batch, {"expert_gemm": "fp8"}, chunks)
    last = ""
    for i in range(m.num_layers):
        last = b.layer(i, last)
    b.mtp(m.num_layers, b.head(m.num_layers, last))
    want = b.g
    assert list(got.nodes) == list(want.nodes)
    assert list(got.edges) == list(want.edges)
    for n in want:
        assert got.nodes[n]["op"] == want.nodes[n]["op"], n
    assert len({id(got.nodes[n]["op"]) for n in got}) == len(got)    # no op shared by two nodes


def test_the_copied_layers_start_after_the_dense_ones():
    """copies_from: where the run of same-kind layers that ends the pass begins (the truncated
    pass keeps the layers before it as they are)."""
    from simulator.graph.model import copies_from
    assert copies_from(load_model("longcat-flash")) == 0           # 28 MoE layers
    assert copies_from(load_model("deepseek-v3")) == 3             # 3 dense, then 58 MoE
    assert copies_from(load_model("llama-3-70b")) == 0             # dense throughout
    ds = load_model("deepseek-v3")
    # every other layer MoE past the dense ones: the last kind-run is one layer long
    alternating = ds.variant(moe_layer_interval=2)
    assert copies_from(alternating) == alternating.num_layers - 1
    # a graph truncated to the first layers keeps the whole pass's tail names and index
    g = build_forward(ds, PLAN, PREC, DECODE, 8.0, layers=5, tail_at=ds.num_layers, mtp=True)
    tail = [n for n in g if g.nodes[n]["op"].layer >= 5]
    assert tail and all(n.startswith(f"L{ds.num_layers}.") and
                        g.nodes[n]["op"].layer == ds.num_layers for n in tail)
