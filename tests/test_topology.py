"""Topology: the graph, routes, and the vectorised per-link loads that follow those routes."""
from collections import defaultdict

import networkx as nx
import numpy as np
import pytest

from simulator.pricing.topology import Cluster, rank_loads


def cluster(gpus=32, gpn=4, leaf=2, over=1.0, mesh=False):
    return Cluster(n_gpus=gpus, gpus_per_node=gpn, nodes_per_leaf=leaf, oversubscription=over,
                   mesh=mesh, nvlink_Bps=100.0, nic_Bps=10.0)


def test_graph_shape():
    c = cluster()
    g = c.graph
    assert sum(1 for n in g if n.startswith("gpu")) == 32
    assert sum(1 for n in g if n.startswith("nic")) == 32          # one NIC per GPU
    assert sum(1 for n in g if n.startswith("spine")) == 4         # one plane per rail
    assert g["leaf0.0"]["spine0"]["bandwidth_Bps"] == pytest.approx(2 * 10.0)
    assert cluster(over=2.0).graph["leaf0.0"]["spine0"]["bandwidth_Bps"] == pytest.approx(10.0)
    for a in (0, 5):
        for b in (3, 17, 30):
            path = c.route(a, b)
            assert all(g.has_edge(u, v) for u, v in path)
            assert path[0][0] == f"gpu{a}" and path[-1][1] == f"gpu{b}"
            assert nx.is_simple_path(g, [path[0][0]] + [v for _, v in path])


@pytest.mark.parametrize("kernel", ["normal", "low_latency"])
@pytest.mark.parametrize("mesh", [False, True])
def test_vectorised_loads_equal_route_sums(kernel, mesh):
    c = cluster(gpus=16, gpn=4, leaf=8, mesh=mesh)
    rng = np.random.default_rng(0)
    per_gpu = rng.integers(0, 5, (16, 16)).astype(float) * 1000
    np.fill_diagonal(per_gpu, 0)
    per_node = np.zeros((16, 4))
    for a in range(16):
        for n in range(4):
            per_node[a, n] = per_gpu[a, n * 4:(n + 1) * 4].max()     # one copy per node
    loads = rank_loads(c, 16, per_gpu, per_gpu, per_node, kernel)
    edge = defaultdict(float)
    for a in range(16):
        for b in range(16):
            if a == b or per_gpu[a, b] == 0:
                continue
            if kernel == "normal" and c.node(a) != c.node(b):
                # network hops carry the node copy once; NVLink hops carry the GPU copy
                for u, v in c.route(a, b, kernel):
                    if not (u.startswith("gpu") and (v.startswith("nvs") or v.startswith("gpu"))) \
                            and not (u.startswith("nvs")):
                        continue
                    edge[(u, v)] += per_gpu[a, b]
            else:
                for u, v in c.route(a, b, kernel):
                    edge[(u, v)] += per_gpu[a, b]
    if kernel == "normal":
        for a in range(16):
            for n in range(4):
                if n != c.node(a) and per_node[a, n]:
                    relay = n * 4 + a % 4
                    edge[(f"nic{a}", "net")] += per_node[a, n]
                    edge[("net", f"nic{relay}")] += per_node[a, n]
    for r in range(16):
        if mesh:
            out = max((v for (u, w), v in edge.items() if u == f"gpu{r}" and w.startswith("gpu")),
                      default=0.0)
            inn = max((v for (u, w), v in edge.items() if w == f"gpu{r}" and u.startswith("gpu")),
                      default=0.0)
            assert loads.nvlink_peer_max[r] == pytest.approx(max(out, inn))
        else:
            assert loads.nvlink_out[r] == pytest.approx(edge[(f"gpu{r}", f"nvs{r // 4}")])
            assert loads.nvlink_in[r] == pytest.approx(edge[(f"nvs{r // 4}", f"gpu{r}")])
        nic_out = edge[(f"gpu{r}", f"nic{r}")] if kernel == "low_latency" else edge[(f"nic{r}", "net")]
        nic_in = edge[(f"nic{r}", f"gpu{r}")] if kernel == "low_latency" else edge[("net", f"nic{r}")]
        assert loads.nic_out[r] == pytest.approx(nic_out)
        assert loads.nic_in[r] == pytest.approx(nic_in)


def test_oversubscribed_uplinks_slow_cross_leaf_traffic():
    per = np.ones((32, 32)) * 1e6
    np.fill_diagonal(per, 0)
    node = np.arange(32) // 4
    per_node = np.stack([per[:, node == n].sum(axis=1) for n in range(8)], axis=1)
    fast = rank_loads(cluster(over=1.0), 32, per, per, per_node, "low_latency")
    slow = rank_loads(cluster(over=4.0), 32, per, per, per_node, "low_latency")
    c1, c4 = cluster(over=1.0), cluster(over=4.0)
    assert (slow.demand(c4)[1] > fast.demand(c1)[1]).all()
