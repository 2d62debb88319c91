"""The cluster as a networkx graph: nodes of GPUs on NVLink (switch) or a full mesh (Infinity
Fabric), one NIC per GPU, one network plane per rail with leaves and a spine (oversubscribed).

Routes (what DeepEP's kernels do):
- same node: GPU -> NVSwitch -> GPU (or the direct mesh link);
- normal kernels, other node: GPU -> its NIC -> its rail's plane -> the NIC of the GPU with the same
  local rank in the destination node (the relay) -> NVLink -> destination; one copy per node;
- low-latency kernels, other node: GPU -> NIC -> plane -> destination's NIC -> GPU; one copy per expert.
A collective's per-link bytes come from its traffic matrix through these routes; its time is the
latency plus the largest bytes / bandwidth over the links it uses.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import networkx as nx
import numpy as np

from simulator.schema import HardwareProfile
from simulator.errors import MoesimError


@dataclass(frozen=True)
class Cluster:
    """GPUs, nodes, NICs and network planes of a deployment."""

    n_gpus: int
    gpus_per_node: int
    nodes_per_leaf: int
    oversubscription: float
    mesh: bool                 # scale-up is a full mesh of per-peer links (no switch)
    nvlink_Bps: float          # per GPU per direction (switch) or per peer link (mesh)
    nic_Bps: float

    @classmethod
    def from_profile(cls, prof: HardwareProfile, n_gpus: int, gpus_per_node: int) -> "Cluster":
        """The cluster of `n_gpus` GPUs built from a profile's network description."""
        if n_gpus % gpus_per_node and n_gpus > gpus_per_node:
            raise MoesimError("plan.gpus", f"{n_gpus} GPUs is not a multiple of "
                              f"{gpus_per_node} GPUs per node", "use whole nodes")
        net = prof.network
        return cls(n_gpus=n_gpus, gpus_per_node=min(gpus_per_node, n_gpus),
                   nodes_per_leaf=int(net.nodes_per_leaf.value),
                   oversubscription=net.oversubscription.value, mesh=net.scale_up == "mesh",
                   nvlink_Bps=prof.nvlink.bandwidth_Bps.value, nic_Bps=prof.nic.bandwidth_Bps.value)

    @property
    def n_nodes(self) -> int:
        """Nodes in the cluster."""
        return max(1, self.n_gpus // self.gpus_per_node)

    def node(self, gpu: int) -> int:
        """Node index of a GPU."""
        return gpu // self.gpus_per_node

    def leaf(self, node: int) -> int:
        """Leaf switch index (within each plane) of a node."""
        return node // self.nodes_per_leaf

    @cached_property
    def uplink_Bps(self) -> float:
        """Capacity of one leaf's uplinks to the spine of its plane, per direction."""
        per_leaf = min(self.nodes_per_leaf, self.n_nodes)
        return per_leaf * self.nic_Bps / self.oversubscription

    # -- graph ------------------------------------------------------------------------------
    @cached_property
    def graph(self) -> nx.DiGraph:
        """Directed graph; every edge has `bandwidth_Bps` and `kind` (nvlink, pcie, net)."""
        g = nx.DiGraph()
        gpn, planes = self.gpus_per_node, self.gpus_per_node

        def link(a: str, b: str, bw: float, kind: str) -> None:
            g.add_edge(a, b, bandwidth_Bps=bw, kind=kind)
            g.add_edge(b, a, bandwidth_Bps=bw, kind=kind)

        for n in range(self.n_nodes):
            gpus = [n * gpn + i for i in range(gpn)]
            if self.mesh:
                for i in gpus:
                    for j in gpus:
                        if i < j:
                            link(f"gpu{i}", f"gpu{j}", self.nvlink_Bps, "nvlink")
            else:
                for i in gpus:
                    link(f"gpu{i}", f"nvs{n}", self.nvlink_Bps, "nvlink")
            for i in gpus:
                link(f"gpu{i}", f"nic{i}", float("inf"), "pcie")
                link(f"nic{i}", f"leaf{i % gpn}.{self.leaf(n)}", self.nic_Bps, "net")
        leaves = self.leaf(self.n_nodes - 1) + 1
        if leaves > 1:
            for p in range(planes):
                for lf in range(leaves):
                    link(f"leaf{p}.{lf}", f"spine{p}", self.uplink_Bps, "net")
        return g

    def route(self, a: int, b: int, kernel: str = "normal") -> list[tuple[str, str]]:
        """Edges a message from GPU a to GPU b crosses."""
        if a == b:
            return []
        na, nb, gpn = self.node(a), self.node(b), self.gpus_per_node
        if na == nb:
            return self._local(a, b)
        relay = nb * gpn + a % gpn if kernel == "normal" else b
        path = [(f"gpu{a}", f"nic{a}"), (f"nic{a}", f"leaf{a % gpn}.{self.leaf(na)}")]
        la, lb = self.leaf(na), self.leaf(nb)
        if la != lb:
            path += [(f"leaf{a % gpn}.{la}", f"spine{a % gpn}"),
                     (f"spine{a % gpn}", f"leaf{a % gpn}.{lb}")]
        path += [(f"leaf{a % gpn}.{lb}", f"nic{relay}"), (f"nic{relay}", f"gpu{relay}")]
        return path + self._local(relay, b)

    def _local(self, a: int, b: int) -> list[tuple[str, str]]:
        if a == b:
            return []
        if self.mesh:
            return [(f"gpu{a}", f"gpu{b}")]
        n = self.node(a)
        return [(f"gpu{a}", f"nvs{n}"), (f"nvs{n}", f"gpu{b}")]


@dataclass(frozen=True)
class RankLoads:
    """Bytes each rank's links carry for one collective, by link class, per direction."""

    nvlink_out: np.ndarray
    nvlink_in: np.ndarray
    nic_out: np.ndarray
    nic_in: np.ndarray
    uplink_s: np.ndarray       # seconds the rank's leaf uplinks need (shared by the leaf)
    nvlink_peer_max: np.ndarray  # mesh: the busiest per-peer link out of / into the rank

    def demand(self, cluster: Cluster) -> tuple[np.ndarray, np.ndarray]:
        """Per-rank bytes on the engine's link classes (nvlink, nic) at class bandwidth."""
        nvl = self.nvlink_peer_max if cluster.mesh else np.maximum(self.nvlink_out, self.nvlink_in)
        nic = np.maximum(np.maximum(self.nic_out, self.nic_in), self.uplink_s * cluster.nic_Bps)
        return nvl, nic


def rank_loads(cluster: Cluster, ep: int, per_expert: np.ndarray, per_gpu: np.ndarray,
               per_node: np.ndarray, kernel: str) -> RankLoads:
    """Per-rank link bytes of an all-to-all over the first `ep` GPUs of the cluster.

    `per_expert` and `per_gpu` are [ep, ep] bytes (one copy per expert / per destination GPU),
    `per_node` is [ep, nodes] bytes deduplicated per destination node.
    """
    g = min(cluster.gpus_per_node, ep)
    nodes = max(1, ep // g)
    idx = np.arange(ep)
    node = idx // g
    lr = idx % g
    same = node[:, None] == node[None, :]
    eye = np.eye(ep, dtype=bool)
    local = same & ~eye
    if kernel == "low_latency":
        m = per_expert
        nvl_out = (m * local).sum(axis=1)
        nvl_in = (m * local).sum(axis=0)
        nic_out = (m * ~same).sum(axis=1)
        nic_in = (m * ~same).sum(axis=0)
        peer = m * local
    else:
        m = per_gpu
        remote_node = node[:, None] != np.arange(nodes)[None, :]
        nic_out = (per_node * remote_node).sum(axis=1)
        # relay c = (node n, local rank j) receives from every remote source of local rank j
        nic_in = np.zeros(ep)
        for j in range(g):
            src = lr == j
            into = (per_node[src] * remote_node[src]).sum(axis=0)       # bytes into each node
            nic_in[np.arange(nodes) * g + j] = into
        # forwarded: source a (remote) -> relay (node(b), lr(a)) -> b
        fwd_out = np.zeros(ep)
        fwd_in = np.zeros(ep)
        peer = m * local
        for j in range(g):
            src = (lr == j)
            for n in range(nodes):
                dst = (node == n) & (lr != j)
                rows = src & (node != n)
                if not rows.any():
                    continue
                block = m[np.ix_(rows, dst)]
                relay = n * g + j
                fwd_out[relay] += block.sum()
                fwd_in[dst] += block.sum(axis=0)
                if cluster.mesh:
                    peer[relay, dst] += block.sum(axis=0)
        nvl_out = (m * local).sum(axis=1) + fwd_out
        nvl_in = (m * local).sum(axis=0) + fwd_in
    peer_max = np.maximum(peer.max(axis=1), peer.max(axis=0)) if ep > 1 else np.zeros(ep)
    uplink = np.zeros(ep)
    leaves = (nodes - 1) // cluster.nodes_per_leaf + 1
    if leaves > 1:
        leaf = node // cluster.nodes_per_leaf
        cross = leaf[:, None] != leaf[None, :]
        out_bytes = (m * cross).sum(axis=1) if kernel == "low_latency" else \
            (per_node * (leaf[:, None] != (np.arange(nodes) // cluster.nodes_per_leaf)[None, :])
             ).sum(axis=1)
        for j in range(g):
            for lf in range(leaves):
                members = (lr == j) & (leaf == lf)
                t = out_bytes[members].sum() / cluster.uplink_Bps
                uplink[members] = t
    return RankLoads(nvl_out, nvl_in, nic_out, nic_in, uplink, peer_max)
