"""The engine uses routing and topology: skew, node limits and NIC speed move the step."""
import pytest

from simulator.step.whatif import resolve, simulate
from tests.conftest import profile, workload

BASE = "workloads/longcat-flash-decode-h800.yaml"


def run(w, prof=None, schedule="sbo"):
    return simulate(w, schedule, resolved=resolve(w, profile=prof)).metrics


def test_simulate_reports_imbalance_and_link_utilisation():
    m = run(workload(BASE))
    assert m["ep"]["kernel"] == "low_latency"
    # uniform routing: a rank's rows are a sum of ~T k / ep independent picks (mean mu, variance
    # ~mu (1 - 1/ep)); the busiest of 128 ranks sits E[max of 128 normals] (Blom: 2.585) sigmas
    # above the mean, +-0.35 sigma
    from statistics import NormalDist
    mu = m["ep"]["tokens_per_rank"] * m["ep"]["real_experts_mean"]
    z = NormalDist().inv_cdf((128 - 0.375) / (128 + 0.25))
    sigma = (mu * (1 - 1 / 128)) ** 0.5
    assert m["ep"]["imbalance"] == pytest.approx(1 + z * sigma / mu, abs=1.05 * sigma / mu)
    assert 7.5 < m["ep"]["real_experts_mean"] < 8.5 and m["ep"]["real_experts_std"] > 2.0
    assert 0 < m["links"]["nic"]["utilisation"] < 1
    assert m["links"]["nvlink"]["bytes_per_step"] > 0


def test_more_routing_skew_lengthens_the_step():
    steps = [run(workload(BASE, routing={"popularity": "zipf", "zipf_s": s}))["step_time_ms"]
             for s in (0.0, 0.6, 1.2)]
    assert steps[0] < steps[1] < steps[2]


def test_redundant_experts_shorten_a_skewed_step():
    skew = {"popularity": "zipf", "zipf_s": 1.0}
    base = run(workload(BASE, routing=skew))
    replicated = run(workload(BASE, routing={**skew, "redundant_experts": 128}))
    assert replicated["ep"]["imbalance"] < base["ep"]["imbalance"]
    assert replicated["step_time_ms"] < base["step_time_ms"]


def test_node_limited_routing_shortens_inter_node_traffic():
    w = dict(routing={"ep_kernel": "normal"})
    free = run(workload(BASE, **w))
    limited = run(workload(BASE, routing={"ep_kernel": "normal", "max_nodes_per_token": 4}))
    assert limited["ep"]["inter_node_bytes_per_rank"] < free["ep"]["inter_node_bytes_per_rank"]
    assert limited["breakdown_us"]["dispatch"] < free["breakdown_us"]["dispatch"]


def test_faster_nic_shortens_exposed_communication():
    w = workload(BASE)
    slow = run(w, profile("h800"), "sequential")
    fast = run(w, profile("h800", nic={"bandwidth_Bps": {"value": 92e9}}), "sequential")
    assert fast["exposed_comm_us"] < slow["exposed_comm_us"]
    # under SBO the shipped NIC is hidden entirely; a 100 Gb/s NIC is not, and 200 Gb/s less so
    sbo = [run(w, profile("h800", nic={"bandwidth_Bps": {"value": bw}}))["exposed_comm_us"]
           for bw in (12.5e9, 25e9, 92e9)]
    assert sbo[0] > sbo[1] > sbo[2] == 0.0


def test_per_rank_skew_slowest_rank_sets_the_pace():
    w = workload(BASE, batch_per_device=16, plan={"gpus": 16, "ep": 16},
                 routing={"popularity": "zipf", "zipf_s": 1.0})
    collapsed = simulate(w, "sbo").metrics
    full = simulate(w, "sbo", per_rank=True).metrics
    # collapsed takes the slowest rank for every op: never faster than the per-rank run
    assert collapsed["step_time_ms"] >= full["step_time_ms"] * (1 - 1e-9)
    assert full["step_time_ms"] > simulate(workload(BASE, batch_per_device=16,
                                                    plan={"gpus": 16, "ep": 16}), "sbo",
                                           per_rank=True).metrics["step_time_ms"]


@pytest.mark.parametrize("name", ["h100-sxm", "h200-sxm", "a100-80gb-sxm", "mi300x"])
def test_every_public_profile_runs_longcat_decode(name):
    w = workload(BASE, hardware=name, batch_per_device=32)
    m = run(w)
    assert m["tpot_ms"] > 0 and m["exposed_comm_us"] >= 0
