"""What a first-time user sees: every output says what it is, nothing is written unasked."""
import json
import os
from pathlib import Path

import yaml
from typer.testing import CliRunner

from cli import app

ROOT = Path(__file__).resolve().parent.parent
DECODE = ROOT / "workloads" / "longcat-flash-decode-h800.yaml"
TINY = ROOT / "workloads" / "tiny-scmoe.yaml"
runner = CliRunner()


def invoke(*args):
    r = runner.invoke(app, [str(a) for a in args])
    return r, " ".join(r.output.split())


def test_identical_scmoe_and_sbo_rows_are_explained():
    r, text = invoke("compare", DECODE, "--schedules", "scmoe,sbo")
    assert r.exit_code == 0, r.output
    assert "scmoe and sbo time the same here" in text and "QKV projection" in text


def test_per_rank_shows_the_spread_over_ranks():
    r, text = invoke("simulate", DECODE, "--per-rank")
    assert r.exit_code == 0, r.output
    assert "per rank: 128 ranks" in text and "step end ms" in text
    plain, plain_text = invoke("simulate", DECODE)
    assert "per rank:" not in plain_text


def test_router_bias_writes_nothing_unasked(tmp_path):
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        r, text = invoke("router-bias", "--steps", 20)
        assert r.exit_code == 0, r.output
        assert list(tmp_path.iterdir()) == [] and "--plot" in text
        r, _ = invoke("router-bias", "--steps", 20, "--plot", "fig.html")
        assert r.exit_code == 0 and (tmp_path / "fig.html").stat().st_size > 1000
    finally:
        os.chdir(cwd)


def test_serve_headline_shows_both_costs_labelled():
    r, text = invoke("serve", TINY, "--duration", 5)
    assert r.exit_code == 0, r.output
    assert "(decode GPUs only)" in text and "(all GPUs, prefill included)" in text


def test_profiles_show_a_cpu_peak_that_is_not_zero():
    r, _ = invoke("profiles")
    row = next(line for line in r.output.splitlines() if "cpu-2core-example" in line)
    cells = [c.strip() for c in row.split("│") if c.strip()]
    assert float(cells[2]) > 0          # 0.117 TFLOP/s, not "0"


def test_schema_names_the_kinds_on_a_bad_one():
    r, text = invoke("schema", "")
    assert r.exit_code == 2 and "workload, model, profile" in text
    for kind in ("workload", "model", "profile"):
        r, _ = invoke("schema", kind)
        assert r.exit_code == 0 and json.loads(r.output)["type"] == "object"
    assert "moesim schema [" not in (ROOT / "README.md").read_text()


def test_sweep_table_says_when_it_shows_only_the_top_rows(tmp_path):
    s = tmp_path / "s.yaml"
    s.write_text(yaml.safe_dump({"name": "many", "base": str(DECODE),
                                 "grid": {"batch_per_device": list(range(1, 28))}}))
    r, text = invoke("sweep", s, "--workers", 1)
    assert r.exit_code == 0, r.output
    assert "27 points" in text and "the best 25 by tok/GPU/s shown (--json for all)" in text


def test_sweep_results_are_ignored_by_git():
    ignored = (ROOT / ".gitignore").read_text().split()
    assert "*.sqlite" in ignored


def test_calibrate_quick_help_does_not_promise_a_minute():
    r, text = invoke("calibrate", "--help")
    assert "about a minute" not in text and "two minutes" in text
