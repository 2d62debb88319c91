"""moesim calibrate: quick end-to-end on this CPU, fits with held-out error, bad input."""
import sys
import warnings

import pytest
from typer.testing import CliRunner

from cli import app
from simulator.pricing.fits import Row, fit, interp_log
from simulator.errors import MoesimError
from simulator.pricing.hardware import expected_max_normal
from simulator.loading import load_profile
from simulator.step.whatif import simulate
from tests.conftest import workload

torch = pytest.importorskip("torch")


def test_quick_calibration_writes_a_loadable_profile_with_raw_csv(tmp_path):
    out = tmp_path / "cpu-test.yaml"
    r = CliRunner().invoke(app, ["calibrate", "--device", "cpu", "--quick", "--ranks", "2",
                                 "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert "held-out MAPE" in r.output
    prof = load_profile(str(out))
    cal = prof.calibration
    assert cal.device == "cpu" and cal.cores >= 1 and cal.torch_version.startswith("2.")
    assert cal.ranks == 2 and {"gemm", "memory", "all_to_all"} <= set(cal.fits)
    for q in cal.fits.values():
        assert q.flagged == (q.mape > 0.10)
    csv = (tmp_path / "cpu-test" / "measurements.csv").read_text()
    assert "all_to_all" in csv and "interference" in csv and "gemm" in csv and "gather" in csv
    assert prof.gather_rate is not None and prof.gemm_shape_efficiency is not None
    assert prof.peak_bf16_flops.value > 1e9 and 0 <= prof.comm_sm_fraction.value < 1
    again = CliRunner().invoke(app, ["calibrate", "--quick", "--out", str(out)])
    assert again.exit_code == 2 and "--force" in again.output


def test_fitting_recovers_known_parameters():
    peak, bw, lat = 100e9, 20e9, 2e-6
    rows = []
    for m in (1, 16, 256, 1024):
        for k in (256, 1024):
            flops, nbytes = 2.0 * m * k * k, 4.0 * (m * k + k * k)
            eff = {1: 0.05, 16: 0.3, 256: 0.8, 1024: 0.9}[m]
            rows.append(Row("gemm", lat + max(flops / (peak * eff), nbytes / bw), flops, nbytes,
                            {"m": m}))
    for n in (1 << 12, 1 << 16, 1 << 20, 1 << 24):
        rows.append(Row("copy", lat * 2 + n / bw, 0, n, {}))
    for t in (8, 64, 512):
        rows.append(Row("grouped_gemm", lat + 1e9 / (peak * 0.5), 1e9, 1e6, {"tokens_per_expert": t}))
    rows.append(Row("attention_prefill", lat + 1e9 / (peak * 0.6), 1e9, 1e6, {}))
    for sc in (1e5, 1e6, 4e6):          # MLA-shaped prefill: matmuls at the peak + 2e8 scores/s
        rows.append(Row("attention_prefill_mla", lat + 1e3 * sc / (0.9 * peak) + sc / 2e8,
                        1e3 * sc, 1e6, {"scores": sc}))
    rows.append(Row("eager_op", 200 * 7e-6, 0, 0, {"ops": 200}))
    for n in (1 << 20, 1 << 24):      # indexed row copies at 5 GB/s
        rows.append(Row("gather", n / 5e9, 0, n, {"op": "index"}))
    rows.append(Row("straggling", 0.02, 1e9, 0, {"ranks": 4, "excess": 0.1}))
    for n in (1 << 12, 1 << 16, 1 << 20, 1 << 22):
        rows.append(Row("all_to_all", 50e-6 + n / 2e9, 0, n, {"ranks": 2}))
        rows.append(Row("all_gather", 30e-6 + n / 1.5e9, 0, n, {"ranks": 2}))
    rows.append(Row("interference", 0.004, 1, 0, {"alone_s": 0.003, "comm_s": 0.002,
                                                  "fraction": 0.25}))
    f = fit(rows)
    assert f.peak_flops == pytest.approx(peak * 0.9, rel=0.05)
    assert f.a2a_Bps == pytest.approx(2e9, rel=0.01) and f.a2a_latency_s == pytest.approx(50e-6, rel=0.05)
    assert f.comm_fraction == pytest.approx(0.25)
    assert interp_log(f.gemm_table, 16) == pytest.approx(0.3 / 0.9, rel=0.1)
    assert f.quality["all_to_all"]["mape"] < 0.01 and not f.quality["all_to_all"]["flagged"]
    assert interp_log(f.mla_score_rate, 1e6) == pytest.approx(2e8, rel=0.01)
    assert f.quality["attention_prefill_mla"]["mape"] < 0.01
    assert f.eager_op_s == pytest.approx(7e-6)
    assert interp_log(f.gather_rate, 1 << 24) == pytest.approx(5e9, rel=0.01)
    assert f.quality["gather"]["points"] == 2
    assert f.rank_jitter == pytest.approx(0.1 / expected_max_normal(4))


def test_refits_agree_within_noise():
    from executor.microbench import QUICK, bench_gemm
    torch.set_num_threads(1)
    peaks = []
    for _ in range(2):
        rows = [Row("gemm", m.median_s, m.flops, m.bytes, m.params)
                for m in bench_gemm("cpu", QUICK, torch.float32)]
        peaks.append(max(r.flops / r.median_s for r in rows))
    assert abs(peaks[0] - peaks[1]) / max(peaks) < 0.35


def test_shipped_cpu_profile_runs_every_command():
    p = load_profile("cpu-2core-example")
    assert p.calibration is not None and p.calibration.device == "cpu"
    w = workload("workloads/tiny-scmoe.yaml")
    assert simulate(w).metrics["step_time_ms"] > 0
    from simulator.serving.run import ServingSim
    from simulator.training.run import train
    assert ServingSim(w, duration=5).run().metrics["requests"]["unfinished"] == 0
    assert train(w).step_time_s > 0


def test_bad_requests():
    from executor.calibrate import check_request
    from pathlib import Path
    with pytest.raises(MoesimError, match="unknown device"):
        check_request("tpu", 2, Path("/nonexistent/x.yaml"), False)
    if not torch.cuda.is_available():
        with pytest.raises(MoesimError, match="no CUDA device"):
            check_request("cuda", 2, Path("/nonexistent/x.yaml"), False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        check_request("cpu", 64, Path("/nonexistent/x.yaml"), False)
    assert any("share cores" in str(c.message) for c in caught)


def test_missing_torch_names_the_extra(monkeypatch):
    from executor.calibrate import check_request
    from pathlib import Path
    monkeypatch.setitem(sys.modules, "torch", None)
    with pytest.raises(MoesimError) as e:
        check_request("cpu", 2, Path("/nonexistent/x.yaml"), False)
    assert "moesim[executor]" in e.value.render()


def test_cuda_path_selection_without_a_gpu():
    from executor.microbench import backend_for, sync_for
    assert backend_for("cuda") == "nccl" and backend_for("cpu") == "gloo"
    assert sync_for("cuda") is torch.cuda.synchronize


def test_cli_unknown_device():
    r = CliRunner().invoke(app, ["calibrate", "--device", "tpu", "--out", "/tmp/never.yaml"])
    assert r.exit_code == 2 and "unknown device" in r.output


def test_single_rank_calibration_runs_every_compute_bench(tmp_path):
    from executor.calibrate import calibrate
    from executor.microbench import COMPUTE_BENCHES
    path, _ = calibrate("cpu", "quick", 1, tmp_path / "one.yaml", force=True)
    csv = (tmp_path / "one" / "measurements.csv").read_text()
    benches = {line.split(",")[0] for line in csv.splitlines()[1:]}
    assert {"gemm", "grouped_gemm", "copy", "gather", "eager_op"} <= benches
    assert len({label for label, _ in COMPUTE_BENCHES}) == len(COMPUTE_BENCHES)
    prof = load_profile(str(path))
    assert prof.gather_rate is not None and prof.gemm_shape_efficiency is not None


def test_calibration_writes_kernel_files_the_measurement_fitter_reads(tmp_path):
    # `moesim calibrate` writes its GEMM and attention timings in the published kernel-file
    # layout; `calibrate --from-measurements` reads them back row for row and fits from them
    import csv as csvmod
    from executor.calibrate import calibrate, device_slug
    from simulator.pricing.kernel_files import read_kernel_rows
    path, data = calibrate("cpu", "quick", 1, tmp_path / "one.yaml", force=True)
    slug = device_slug(data["calibration"]["device_name"], "cpu")
    assert slug and all(c.isalnum() or c == "-" for c in slug)
    kernels = tmp_path / "one" / "kernels"
    raw = list(csvmod.DictReader((tmp_path / "one" / "measurements.csv").open()))
    gemms = [r for r in raw if r["bench"] == "gemm"]
    rows, sources, _ = read_kernel_rows(kernels, slug)
    assert len(rows["gemm"]) == len(gemms) > 0
    for got, meas in zip(rows["gemm"], gemms):
        assert got.median_s == pytest.approx(float(meas["median_s"]), rel=1e-9)
        assert (got.params["m"], got.params["n"], got.params["k"]) == \
            (float(meas["p_m"]), float(meas["p_n"]), float(meas["p_k"]))
        assert got.params["dtype"] == "fp32"
    decode = [r for r in raw if r["bench"] == "attention_decode"]
    assert len(rows["gqa_decode"]) == len(decode) and len(rows["gqa_prefill"]) >= 5
    out = tmp_path / "refit.yaml"
    r = CliRunner().invoke(app, ["calibrate", "--from-measurements", str(kernels), "--device",
                                 slug, "--base", str(path), "--out", str(out)])
    assert r.exit_code == 0, r.output
    refit = load_profile(str(out))
    assert refit.gemm_shape_efficiency.precision == "bf16"     # not FP8: priced at the fp32 peak
    assert {"gqa_decode", "gqa_prefill"} <= set(refit.attention_tables)
    assert "FP32 dense GEMMs" in refit.gemm_shape_efficiency.source


def test_device_slug_names_a_folder():
    from executor.calibrate import device_slug
    assert device_slug("NVIDIA H200", "cuda") == "nvidia-h200"
    assert device_slug("Intel(R) Xeon(R) Processor x2", "cpu") == "intel-r-xeon-r"
    assert device_slug("", "cuda") == "cuda"
