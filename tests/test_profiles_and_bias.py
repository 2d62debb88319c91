"""Profile commands and validation; the router-bias controller."""
import json
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from cli import app
from simulator.errors import MoesimError
from simulator.loading import PROFILES_DIR, known_names, load_profile
from simulator.router_bias import BiasConfig, simulate_bias

ROOT = Path(__file__).resolve().parent.parent
runner = CliRunner()
PUBLIC = ["h800", "h100-sxm", "h200-sxm", "a100-80gb-sxm", "a800-80gb-sxm", "a30-pcie", "mi300x"]


def test_shipped_profiles_and_every_number_has_a_source():
    names = known_names(PROFILES_DIR)
    assert set(PUBLIC + ["h800-paper-theoretical"]) <= set(names)
    for n in names:
        data = yaml.safe_load((PROFILES_DIR / f"{n}.yaml").read_text())

        def walk(d):
            for k, v in d.items():
                if k == "calibration":        # metadata about the fit, not hardware numbers
                    continue
                if isinstance(v, dict):
                    if "value" in v or "points" in v:
                        assert len(v.get("source", "")) > 3, (n, k)
                    else:
                        walk(v)
                else:
                    assert not isinstance(v, (int, float)) or isinstance(v, bool), (n, k, v)
        walk(data)
        p = load_profile(n)
        if n in PUBLIC:
            assert p.nvlink.spec_bandwidth_Bps.value >= p.nvlink.bandwidth_Bps.value
            assert p.nic.spec_bandwidth_Bps.value >= p.nic.bandwidth_Bps.value
            assert p.idealizations.gemm_weight_floor


def test_profiles_command_and_show():
    r = runner.invoke(app, ["profiles"], terminal_width=200)
    assert r.exit_code == 0 and "mi300x" in r.output and "a100-80gb-sxm" in r.output
    h800 = next(line for line in r.output.splitlines() if "│ h800 " in line)
    assert [c.strip() for c in h800.split("│")[3:9]] == ["989", "80", "3.35", "160", "46", "2.00"]
    from simulator.outputs.tables import sourced_cell
    assert sourced_cell({"p": {"value": "312.0e12"}}, ("p",), 1e12, None) == "312"   # YAML text
    assert sourced_cell({"n": {"b": {"value": 4.6e10}}}, ("n", "b"), 1e9, ".0f") == "46"
    for bad in ({}, {"p": 3}, {"p": {"value": True}}, {"p": {"value": "fast"}}):
        assert sourced_cell(bad, ("p",), 1.0, ".2f") == "?"
    r = runner.invoke(app, ["profile", "show", "h800"])
    assert r.exit_code == 0
    assert "nic.bandwidth_Bps" in r.output and "nccl-tests" in r.output
    assert "gemm_efficiency" in r.output
    r = runner.invoke(app, ["profile", "show", "cpu-2core-example"], terminal_width=200)
    assert r.exit_code == 0, r.output            # a measured profile: fits, tables, eager fields
    for key in ("eager_op_overhead_s", "rank_jitter", "mla_attention_score_rate",
                "calibration.fits.gemm.mape", "gemm_shape_efficiency", "M 1024:"):
        assert key in r.output


def _bad_profile(tmp_path, old, new):
    text = (PROFILES_DIR / "h200-sxm.yaml").read_text()     # hand-written, one line a number
    assert old in text
    p = tmp_path / "bad.yaml"
    p.write_text(text.replace(old, new))
    r = runner.invoke(app, ["profile", "show", str(p)])
    assert r.exit_code == 2 and "Traceback" not in r.output
    return " ".join(r.output.split())


def test_number_without_source_is_refused(tmp_path):
    out = _bad_profile(tmp_path, 'hbm_bytes: {value: 141.0e9, source: "NVIDIA H200 datasheet: '
                       '141 GB HBM3e"}', "hbm_bytes: 141.0e9")
    assert "hbm_bytes" in out and "no source" in out
    out = _bad_profile(tmp_path, 'source: "NVIDIA H200 datasheet: 141 GB HBM3e"', 'source: ""')
    assert "hbm_bytes" in out and "source" in out


def test_efficiency_outside_unit_interval_is_refused(tmp_path):
    out = _bad_profile(tmp_path, "[4096, 0.74]", "[4096, 1.4]")
    assert "gemm_efficiency" in out and "(0, 1]" in out


def test_non_positive_bandwidth_is_refused(tmp_path):
    out = _bad_profile(tmp_path, "bandwidth_Bps: {value: 46.0e9", "bandwidth_Bps: {value: 0")
    assert "nic.bandwidth_Bps" in out and "positive" in out


def test_bias_controller_reaches_target_and_balances_load():
    cfg = BiasConfig(steps=300)
    trace = simulate_bias(cfg)
    assert abs(trace.mean_real[0] - cfg.target_real) > 2          # a skewed start
    assert trace.load_max_over_mean[0] > 5
    settled = trace.first_step_settled(cfg.target_real)
    assert settled is not None and settled < 300                  # stated: within 300 steps
    assert abs(trace.mean_real[-1] - 8.0) <= 0.2 and trace.load_max_over_mean[-1] < 1.3


def test_bias_controller_bad_input():
    with pytest.raises(MoesimError, match="exceeds top-k"):
        BiasConfig(target_real=13).check()
    with pytest.raises(MoesimError, match="negative skew"):
        BiasConfig(skew=-1).check()


def test_router_bias_cli_writes_figure(tmp_path):
    plot = tmp_path / "rb.html"
    r = runner.invoke(app, ["router-bias", "--steps", "20", "--tokens", "256", "--plot", str(plot),
                            "--json"])
    assert r.exit_code == 0, r.output
    data = json.loads(r.output)
    assert len(data["mean_real"]) == 20 and plot.read_text().count("plotly") > 0
    r = runner.invoke(app, ["router-bias", "--target", "20"])
    assert r.exit_code == 2 and "top-k" in r.output
