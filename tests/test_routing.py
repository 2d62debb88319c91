"""Routing model: skew, zero-computation experts, node limits, replicas, determinism."""
import numpy as np
import pytest

from simulator.schema import RoutingSpec
from simulator.pricing.routing import place_experts, popularity, route

LC = dict(n_experts=512, top_k=12, has_zero_experts=True, real_mean=8.0, ep=64,
          gpus_per_node=8, tokens_per_rank=128, seed=0)


def test_uniform_routing_is_nearly_balanced_and_conserves_copies():
    r = route(RoutingSpec(), **LC)
    assert r.t_expert.sum() == pytest.approx(64 * 128 * 8)      # 8 real experts per token
    assert r.rank_rows.sum() == r.t_expert.sum() == r.expert_load.sum()
    assert 1.0 <= r.imbalance < 1.3
    assert (r.t_gpu <= r.t_expert).all() and r.t_node.sum() <= r.t_gpu.sum()


def test_zero_computation_experts_mean_and_spread():
    r = route(RoutingSpec(real_experts_std=2.5), **LC)
    assert abs(r.real_mean - 8.0) < 0.2
    assert 2.0 < r.real_std < 2.8
    assert r.t_expert.sum() == pytest.approx(r.real_mean * 64 * 128)


def test_more_skew_more_imbalance():
    imb = [route(RoutingSpec(popularity="zipf", zipf_s=s), **LC).imbalance
           for s in (0.0, 0.5, 1.0)]
    assert imb[0] < imb[1] < imb[2]
    logn = [route(RoutingSpec(popularity="lognormal", lognormal_sigma=s), **LC).imbalance
            for s in (0.2, 1.5)]
    assert logn[0] < logn[1]


def test_node_limited_routing_caps_nodes_per_token():
    free = route(RoutingSpec(), **LC)
    limited = route(RoutingSpec(max_nodes_per_token=2), **LC)
    tokens = 64 * 128
    assert limited.t_node.sum() / tokens <= 2.0 + 1e-9
    assert limited.t_node.sum() < free.t_node.sum()


def test_group_limited_routing():
    r = route(RoutingSpec(expert_groups=8, max_groups_per_token=4), n_experts=256, top_k=8,
              has_zero_experts=False, real_mean=8, ep=8, gpus_per_node=8,
              tokens_per_rank=256, seed=1)
    # 8 GPUs, 32 experts each = one group per GPU: at most 4 GPUs per token
    assert r.t_gpu.sum() / (8 * 256) <= 4.0 + 1e-9


def test_redundant_copies_of_hot_experts_reduce_imbalance():
    spec = dict(popularity="zipf", zipf_s=1.0)
    base = route(RoutingSpec(**spec), **LC)
    replicated = route(RoutingSpec(**spec, redundant_experts=64), **LC)
    assert replicated.imbalance < base.imbalance
    assert replicated.placement.slots_per_rank.sum() == 512 + 64


def test_placement_puts_copies_on_distinct_ranks():
    p = popularity(RoutingSpec(popularity="zipf", zipf_s=1.2), 64, np.random.default_rng(0))
    pl = place_experts(64, 8, 16, p)
    assert all(len(set(c.tolist())) == len(c) for c in pl.copies)
    hottest = int(np.argmax(p))
    assert len(pl.copies[hottest]) > 1


def test_same_seed_same_routing_and_large_batches_use_expectations():
    a, b = route(RoutingSpec(real_experts_std=2.5), **LC), route(RoutingSpec(real_experts_std=2.5), **LC)
    assert np.array_equal(a.t_expert, b.t_expert) and a.real_std == b.real_std
    big = route(RoutingSpec(), **{**LC, "tokens_per_rank": 8192})
    assert big.t_expert.sum() == pytest.approx(64 * 8192 * 8, rel=1e-9)
    assert big.imbalance < 1.05


@pytest.mark.parametrize("tokens_per_rank", [1024, 131072])     # sampled exactly; pooled
def test_copies_to_one_gpu_are_sent_once(tokens_per_rank):
    """4 experts on 2 GPUs, a token's 2 distinct experts uniform: both sit on one GPU with
    probability 2/6, so a token reaches 1 x 1/3 + 2 x 2/3 = 5/3 GPUs (exactly 2 experts)."""
    r = route(RoutingSpec(), n_experts=4, top_k=2, has_zero_experts=False, real_mean=2.0, ep=2,
              gpus_per_node=8, tokens_per_rank=tokens_per_rank, seed=3)
    assert r.t_expert.sum(axis=1) == pytest.approx([2 * tokens_per_rank] * 2, rel=1e-12)
    gpus = r.t_gpu.sum(axis=1) / tokens_per_rank
    assert gpus == pytest.approx([5 / 3] * 2, rel=0.03)
    assert r.t_node.sum(axis=1) == pytest.approx([tokens_per_rank] * 2, rel=1e-12)  # one node


def test_sampled_experts_follow_plackett_luce_probabilities():
    """A token's first pick is expert i with probability p_i, and its second pick is j given a
    first i with p_j / (1 - p_i) (sampling without replacement by popularity), worked out here
    from the popularity vector, not read back from the sampler."""
    from simulator.pricing.routing import AliasTable, _sampled
    p = np.array([0.4, 0.3, 0.2, 0.1])
    n = 200_000
    picks = _sampled(AliasTable(p), [np.random.default_rng(3)], n, RoutingSpec(), 1, 2)
    first = np.bincount(picks[:, 0], minlength=4) / n
    assert first == pytest.approx(p, abs=0.005)             # ~4.5 standard errors
    pair = np.mean((picks[:, 0] == 0) & (picks[:, 1] == 1))
    assert pair == pytest.approx(0.4 * 0.3 / 0.6, abs=0.004)   # 0.2
    assert (picks[:, 0] != picks[:, 1]).all()


@pytest.mark.parametrize("spec,nodes", [(RoutingSpec(max_nodes_per_token=1), 2),
                                        (RoutingSpec(expert_groups=2, max_groups_per_token=1), 1)])
def test_limits_keep_the_block_a_token_reaches_first(spec, nodes):
    """Experts {0, 1} and {2, 3} form two blocks (nodes, or groups); a token may use one, and
    takes two experts. Its block is the one its first pick falls in, so the pair is (i, the
    other expert of i's block) with probability p_i, worked out from the popularity."""
    from simulator.pricing.routing import AliasTable, _sampled
    p = np.array([0.1, 0.2, 0.3, 0.4])
    n = 100_000
    picks = _sampled(AliasTable(p), [np.random.default_rng(5), np.random.default_rng(6)], n // 2,
                     spec, nodes, 2)
    partner = np.array([1, 0, 3, 2])
    assert (picks[:, 1] == partner[picks[:, 0]]).all()      # never outside the first block
    first = np.bincount(picks[:, 0], minlength=4) / n
    assert first == pytest.approx(p, abs=0.006)             # ~4 standard errors


def test_alias_table_draws_the_popularity():
    from simulator.pricing.routing import AliasTable
    p = np.array([0.5, 0.05, 0.25, 0.2])
    drawn = AliasTable(p).draw(np.random.default_rng(0).random(400_000), np.empty(400_000, int))
    got = np.bincount(drawn, minlength=4) / 400_000
    assert got == pytest.approx(p, abs=0.003)               # ~4 standard errors


def test_micro_batches_route_different_tokens_of_one_sample():
    """Micro-batch 1 routes the tokens right after micro-batch 0's, so the two together are the
    routing of twice the tokens (destination counts add up exactly); above the sampling cap both
    share the pooled expectations."""
    args = {**LC, "tokens_per_rank": 64}
    m0 = route(RoutingSpec(), **args, micro_batch=0)
    m1 = route(RoutingSpec(), **args, micro_batch=1)
    both = route(RoutingSpec(), **{**args, "tokens_per_rank": 128})
    assert not np.array_equal(m0.t_expert, m1.t_expert)
    assert np.array_equal(m0.rank_rows + m1.rank_rows, both.rank_rows)
    assert np.array_equal(m0.expert_load + m1.expert_load, both.expert_load)
    big = {**LC, "tokens_per_rank": 8192}
    assert np.array_equal(route(RoutingSpec(), **big, micro_batch=1).t_expert,
                          route(RoutingSpec(), **big).t_expert)


def test_draws_do_not_depend_on_how_many_chunks_are_drawn_at_once():
    from simulator.pricing.routing import CHUNK_TOKENS, _TokenDraws
    args = (RoutingSpec(expert_groups=8, max_groups_per_token=4), 256, 8, False, 8.0, 16, 8, 4)
    together, stepwise = _TokenDraws(*args), _TokenDraws(*args)
    a = together.upto(3 * CHUNK_TOKENS)
    stepwise.upto(CHUNK_TOKENS)
    b = stepwise.upto(3 * CHUNK_TOKENS)
    for (ka, ca, pa), (kb, cb, pb) in zip(a, b):
        assert np.array_equal(ka, kb) and np.array_equal(ca, cb) and np.array_equal(pa, pb)


def test_limits_that_cannot_hold_top_k_experts_are_refused(tmp_path):
    from simulator.errors import MoesimError
    from simulator.pricing.routing import AliasTable, _sampled
    with pytest.raises(MoesimError, match="max_nodes_per_token"):
        _sampled(AliasTable(np.full(4, 0.25)), [np.random.default_rng(0)], 8,
                 RoutingSpec(max_nodes_per_token=1), 2, 3)
