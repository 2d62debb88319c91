"""The CLI's public interface: commands, JSON keys, reports; bad input exits 2 with one paragraph."""
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cli import app

ROOT = Path(__file__).resolve().parent.parent
LONGCAT = str(ROOT / "workloads" / "paper" / "table7-longcat-flash.yaml")
runner = CliRunner()

JSON_KEYS = {"schedule", "layer_time_us", "step_time_ms", "tpot_ms", "tokens_per_gpu_s",
             "exposed_comm_us", "hidden_comm_us", "cost_per_million_output_tokens", "ops"}
OP_KEYS = {"name", "kind", "stream", "start_us", "end_us", "flops", "bytes"}


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def test_simulate_json_keys_are_stable():
    r = invoke("simulate", LONGCAT, "--json")
    assert r.exit_code == 0, r.output
    data = json.loads(r.output)
    assert JSON_KEYS <= set(data)
    assert data["schedule"] == "sbo"
    assert OP_KEYS <= set(data["ops"][0])
    assert data["tpot_ms"] > 0 and data["exposed_comm_us"] >= 0
    assert all(o["end_us"] >= o["start_us"] for o in data["ops"])


def test_simulate_table_and_schedule_override():
    r = invoke("simulate", LONGCAT, "--schedule", "sequential")
    assert r.exit_code == 0, r.output
    assert "moe.dispatch" in r.output and "TPOT" in r.output and "sequential" in r.output


def test_compare_side_by_side_with_speedups(tmp_path):
    report = tmp_path / "r.html"
    r = invoke("compare", LONGCAT, "--schedules", "sequential,scmoe,sbo,tbo", "--json",
               "--report", report)
    assert r.exit_code == 0, r.output
    rows = json.loads(r.output)
    assert [x["schedule"] for x in rows] == ["sequential", "scmoe", "sbo", "tbo"]
    assert rows[0]["speedup"] == pytest.approx(1.0)
    assert all(x["speedup"] > 1.0 for x in rows[1:])
    for x in rows:                      # the first schedule's step over this one's
        assert x["speedup"] == pytest.approx(rows[0]["step_time_ms"] / x["step_time_ms"])
        assert x["batch_per_device"] is None and "ops" not in x
    r = invoke("compare", LONGCAT, "--schedules", "sequential,sbo", "--batch", "8,32", "--json")
    rows = json.loads(r.output)
    assert [(x["batch_per_device"], x["schedule"]) for x in rows] == \
        [(8, "sequential"), (8, "sbo"), (32, "sequential"), (32, "sbo")]
    for first, x in ((rows[0], rows[1]), (rows[2], rows[3])):
        assert x["speedup"] == pytest.approx(first["step_time_ms"] / x["step_time_ms"])
    html = report.read_text()
    assert "plotly" in html and "moesim-fig-2" in html
    assert not list(tmp_path.glob(".r.html.*"))     # atomic write left no temp file


def test_long_steps_show_a_spinner_on_a_terminal_only(monkeypatch):
    """compare --per-rank names each schedule and the rank count on a terminal's stderr while it
    runs; stdout stays the JSON alone."""
    import io

    from simulator.commands import common
    from rich.console import Console
    tty = io.StringIO()
    monkeypatch.setattr(common, "err", Console(file=tty, force_terminal=True))
    r = invoke("compare", LONGCAT, "--schedules", "sequential,sbo", "--per-rank", "--json")
    assert r.exit_code == 0, r.output
    assert [x["schedule"] for x in json.loads(r.output)] == ["sequential", "sbo"]
    shown = tty.getvalue()
    assert "under sbo, all " in shown and "(2 of 2)" in shown
    piped = io.StringIO()                        # not a terminal: nothing drawn
    monkeypatch.setattr(common, "err", Console(file=piped, force_terminal=False))
    assert invoke("simulate", LONGCAT, "--json").exit_code == 0
    assert piped.getvalue() == ""


def test_model_prints_parameter_counts():
    r = invoke("model", "longcat-flash")
    assert r.exit_code == 0, r.output
    assert "560." in r.output and "18.69B" in r.output and "31.38B" in r.output


def test_schema_prints_json_schema():
    r = invoke("schema")
    assert r.exit_code == 0
    schema = json.loads(r.output)
    assert "plan" in schema["properties"] and schema["additionalProperties"] is False
    assert json.loads(invoke("schema", "profile").output)["title"] == "HardwareProfile"


def _bad(result, *words):
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    text = " ".join(result.output.split())
    for w in words:
        assert w in text, (w, text)


def _write(tmp_path, text):
    p = tmp_path / "w.yaml"
    p.write_text(text)
    return p


BASE = """name: t
model: longcat-flash
hardware: h800
plan: {gpus: 128, gpus_per_node: 8, ep: 128}
phase: decode
batch_per_device: 32
context_length: 2048
schedule: sbo
"""


def test_ep_that_does_not_divide_experts(tmp_path):
    p = _write(tmp_path, BASE.replace("gpus: 128, gpus_per_node: 8, ep: 128",
                                      "gpus: 96, gpus_per_node: 8, ep: 96"))
    _bad(invoke("simulate", p), "plan.ep", "does not divide", "Fix")


def test_batch_that_does_not_fit_hbm_shows_breakdown(tmp_path):
    p = _write(tmp_path, BASE.replace("batch_per_device: 32", "batch_per_device: 4096"))
    _bad(invoke("simulate", p), "batch_per_device", "weights", "KV cache", "80 GB")


@pytest.mark.parametrize("field,old,new,words", [
    ("model", "model: longcat-flash", "model: gpt-9", ["unknown model", "longcat-flash"]),
    ("hardware", "hardware: h800", "hardware: tpu9", ["unknown hardware profile", "h800"]),
    ("schedule", "schedule: sbo", "schedule: magic", ["unknown schedule", "sequential"]),
])
def test_unknown_names_list_the_known_ones(tmp_path, field, old, new, words):
    _bad(invoke("simulate", _write(tmp_path, BASE.replace(old, new))), field, *words)


def test_unknown_schedule_flag():
    _bad(invoke("compare", LONGCAT, "--schedules", "sequential,nope"), "schedule", "nope")


@pytest.mark.parametrize("old,new,field", [
    ("batch_per_device: 32", "batch_per_device: 0", "batch_per_device"),
    ("context_length: 2048", "context_length: -5", "context_length"),
    ("gpus: 128,", "gpus: 0,", "plan.gpus"),
])
def test_zero_or_negative_sizes(tmp_path, old, new, field):
    _bad(invoke("simulate", _write(tmp_path, BASE.replace(old, new))), field, "greater than 0")


def test_yaml_not_a_mapping(tmp_path):
    _bad(invoke("simulate", _write(tmp_path, "- just\n- a list\n")), "not a mapping")


def test_unknown_keys(tmp_path):
    _bad(invoke("simulate", _write(tmp_path, BASE + "batch_size: 3\n")), "batch_size",
         "unknown key")


def test_bad_model_file_and_profile_file(tmp_path):
    model = tmp_path / "m.yaml"
    model.write_text("name: x\nnum_layers: 2\nhidden_size: 64\nvocab_size: 10\n"
                     "attention: {kind: gqa, num_heads: 4, num_kv_heads: 3, head_dim: 16}\n"
                     "dense_intermediate: 128\n")
    p = _write(tmp_path, BASE.replace("model: longcat-flash", f"model: {model}"))
    _bad(invoke("simulate", p), "attention", "multiple of num_kv_heads")
    prof = tmp_path / "p.yaml"
    text = (ROOT / "hardware_profiles" / "h800.yaml").read_text()
    prof.write_text(text.replace("value: 0.895", "value: 1.7"))
    p = _write(tmp_path, BASE.replace("hardware: h800", f"hardware: {prof}"))
    _bad(invoke("simulate", p), "hbm_efficiency", "(0, 1]")


def test_topology_that_cannot_hold_the_plan(tmp_path):
    p = _write(tmp_path, BASE.replace("gpus: 128, gpus_per_node: 8, ep: 128",
                                      "gpus: 12, gpus_per_node: 8, ep: 4"))
    _bad(invoke("simulate", p), "plan", "multiple of gpus_per_node")
    p = _write(tmp_path, BASE.replace("ep: 128", "ep: 256"))
    _bad(invoke("simulate", p), "plan", "ep (256)")


def test_missing_workload_file():
    _bad(invoke("simulate", "no/such/file.yaml"), "WORKLOAD")


def test_routing_target_mean_above_top_k(tmp_path):
    p = _write(tmp_path, BASE + "real_experts_per_token: 13\n")
    _bad(invoke("simulate", p), "real_experts_per_token", "top_k")


def test_negative_skew_parameters(tmp_path):
    p = _write(tmp_path, BASE + "routing: {popularity: zipf, zipf_s: -1}\n")
    _bad(invoke("simulate", p), "routing.zipf_s", "greater than or equal to 0")
    p = _write(tmp_path, BASE + "routing: {popularity: lognormal, lognormal_sigma: -0.5}\n")
    _bad(invoke("simulate", p), "routing.lognormal_sigma")


def test_group_limits_that_do_not_fit(tmp_path):
    p = _write(tmp_path, BASE + "routing: {expert_groups: 7, max_groups_per_token: 2}\n")
    _bad(invoke("simulate", p), "routing.expert_groups", "divide")


def test_limits_too_tight_for_top_k(tmp_path):
    p = _write(tmp_path, BASE + "routing: {expert_groups: 64, max_groups_per_token: 1}\n")
    _bad(invoke("simulate", p), "routing.max_groups_per_token", "top_k", "at least")
