"""Generated bad and odd inputs: every workload, profile and serving block either runs to a finite
result in bounded time or is refused with a MoesimError. Nothing else escapes."""
import copy
import math
import os
import signal
from contextlib import contextmanager
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from simulator.schema import HardwareProfile, Workload
from simulator.errors import MoesimError
from simulator.loading import parse, read_yaml_mapping

ROOT = Path(__file__).resolve().parent.parent
BOUND_S = 60          # "bounded time": a hang is a failure, not a slow pass

ODD = st.sampled_from([float("nan"), float("inf"), float("-inf"), -1, -1e-9, 0, 0.5, 1, 3,
                       1e6, 1e12, 1e308, 10 ** 30, True, False, None, "abc", "12", [], [1],
                       {}, {"value": 1}])

WORKLOAD_FIELDS = ["batch_per_device", "context_length", "seed", "real_experts_per_token",
                   "plan.gpus", "plan.gpus_per_node", "plan.ep", "plan.tp", "plan.pp",
                   "plan.dp_attention", "precision.weight_bytes", "precision.kv_bytes",
                   "precision.dispatch_bytes", "mtp.draft_tokens", "mtp.acceptance",
                   "routing.zipf_s", "routing.real_experts_std", "routing.redundant_experts",
                   "routing.max_nodes_per_token", "plan", "precision", "routing", "mtp"]
PROFILE_FIELDS = ["peak_bf16_flops.value", "hbm_bytes.value", "hbm_bandwidth_Bps.value",
                  "hbm_efficiency.value", "attention_efficiency.value", "kernel_latency_s.value",
                  "nvlink.bandwidth_Bps.value", "nvlink.latency_s.value",
                  "nic.bandwidth_Bps.value", "nic.latency_s.value", "gpus_per_node.value",
                  "network.nodes_per_leaf.value", "network.oversubscription.value",
                  "ep_kernel_latency_s.value", "comm_sm_fraction.value",
                  "price_per_gpu_hour.value", "gemm_efficiency.points", "peak_bf16_flops"]
SERVING_FIELDS = ["arrivals.rate_per_s", "arrivals.duration_s", "arrivals.gamma_cv",
                  "input_tokens.mean", "input_tokens.max", "input_tokens.sigma",
                  "output_tokens.mean", "decode.max_batch_per_device", "chunk_tokens_per_device",
                  "slo.ttft_ms", "max_queue", "drain_s"]


@contextmanager
def bounded(seconds: int = BOUND_S):
    def stop(*_):
        raise TimeoutError(f"no result within {seconds} s: the input made it hang")
    old = signal.signal(signal.SIGALRM, stop)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def put(data: dict, dotted: str, value) -> dict:
    data = copy.deepcopy(data)
    d = data
    keys = dotted.split(".")
    for k in keys[:-1]:
        if not isinstance(d.get(k), dict):
            d[k] = {}
        d = d[k]
    d[keys[-1]] = value
    return data


def finite(x) -> None:
    if isinstance(x, float):
        assert math.isfinite(x), x
    elif isinstance(x, dict):
        for v in x.values():
            finite(v)
    elif isinstance(x, (list, tuple)):
        for v in x:
            finite(v)


EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", 30))     # more locally: FUZZ_EXAMPLES=1000
SETTINGS = settings(max_examples=EXAMPLES, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


@SETTINGS
@given(field=st.sampled_from(WORKLOAD_FIELDS), value=ODD)
def test_generated_workloads_run_or_are_refused(field, value):
    from simulator.step.whatif import simulate
    base = read_yaml_mapping(ROOT / "workloads" / "longcat-flash-decode-h800.yaml")
    with bounded():
        try:
            w = parse(Workload, put(base, field, value), "workload")
            m = simulate(w).metrics
        except MoesimError:
            return
    finite({k: v for k, v in m.items() if k != "ops"})
    assert m["step_time_ms"] > 0


@SETTINGS
@given(field=st.sampled_from(PROFILE_FIELDS), value=ODD)
def test_generated_profiles_run_or_are_refused(field, value):
    from simulator.step.whatif import resolve, simulate
    from simulator.loading import load_workload
    base = read_yaml_mapping(ROOT / "hardware_profiles" / "h800.yaml")
    w = load_workload(str(ROOT / "workloads" / "longcat-flash-decode-h800.yaml"))
    with bounded():
        try:
            prof = parse(HardwareProfile, put(base, field, value), "profile")
            m = simulate(w, resolved=resolve(w, profile=prof)).metrics
        except MoesimError:
            return
    finite({k: v for k, v in m.items() if k != "ops"})


@settings(max_examples=20, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow])
@given(field=st.sampled_from(SERVING_FIELDS), value=ODD)
def test_generated_serving_blocks_run_or_are_refused(field, value):
    from simulator.serving.run import ServingSim
    base = read_yaml_mapping(ROOT / "workloads" / "tiny-scmoe.yaml")
    base["serving"] = put(base["serving"], field, value)
    with bounded():
        try:
            w = parse(Workload, base, "workload")
            sim = ServingSim(w, duration=min(w.serving.arrivals.duration_s, 5.0))
            m = sim.run().metrics
        except MoesimError:
            return
    finite(m)


@settings(max_examples=60, deadline=None, derandomize=True)
@given(text=st.one_of(st.text(max_size=200),
                      st.recursive(st.none() | st.booleans() | st.floats() | st.integers() |
                                   st.text(max_size=10),
                                   lambda kids: st.lists(kids, max_size=4) |
                                   st.dictionaries(st.text(max_size=8), kids, max_size=4),
                                   max_leaves=12).map(lambda d: yaml.safe_dump(d))))
def test_any_yaml_loads_or_is_a_moesim_error(tmp_path_factory, text):
    from simulator.loading import load_profile, load_workload
    p = tmp_path_factory.mktemp("y") / "x.yaml"
    p.write_text(text)
    for load in (load_workload, load_profile):
        try:
            load(str(p))
        except MoesimError:
            pass


def test_bounded_catches_a_hang():
    import time
    with pytest.raises(TimeoutError):
        with bounded(1):
            time.sleep(3)
