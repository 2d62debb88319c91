"""`moesim calibrate --from-measurements`: GPU tables fitted from measured kernel times."""
import csv
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from cli import app
from simulator.loading import load_profile

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "hardware_profiles" / "measurements" / "gpu-kernels"
runner = CliRunner()



def calibrate(*args):
    return runner.invoke(app, ["calibrate", *[str(a) for a in args]])


def write_gemm(folder: Path, rows, header=("m", "k", "n", "latency_us")) -> Path:
    p = folder / "gemm" / "x1" / "data.csv"
    p.parent.mkdir(parents=True, exist_ok=True)
    with p.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return p


def synthetic(eff: float, lat_s: float, peak: float):
    """GEMMs that run at exactly `eff` of `peak` after a fixed latency: a closed form."""
    out = []
    for m in (256, 1024, 4096, 16384):
        for k, n in ((7168, 2048), (2048, 7168), (7168, 18432)):
            t = lat_s + 2 * m * n * k / (peak * eff)
            out.append((m, k, n, t * 1e6))
    return out


def test_a_closed_form_is_fitted_back_exactly(tmp_path):
    # base h800: FP8 peak 1978.9 TFLOP/s, kernel latency 4 us. Rows built at 55% of peak are
    # compute-bound at these shapes, so every cell must read 0.55 and held-out error be ~0.
    write_gemm(tmp_path, synthetic(0.55, 4e-6, 1978.9e12))
    out = tmp_path / "p.yaml"
    r = calibrate("--from-measurements", tmp_path, "--device", "x1", "--base", "h800",
                  "--out", out)
    assert r.exit_code == 0, r.output
    p = load_profile(str(out))
    t = p.gemm_shape_efficiency
    assert t.precision == "fp8"
    assert all(e == pytest.approx(0.55, rel=1e-6) for row in t.efficiency for e in row)
    assert p.calibration.fits["gemm_by_shape"].mape < 1e-6
    assert "gemm/x1/data.csv rows 2-13" in t.source
    # everything the files do not measure is the base profile's, with its source
    base = load_profile("h800")
    assert p.nic == base.nic and p.peak_fp8_flops == base.peak_fp8_flops


@pytest.mark.parametrize("mutate,words", [
    (lambda rows: (rows, ("m", "k", "latency_us")), ["header", "missing column n"]),
    (lambda rows: ([rows[0][:3] + ("fast",)] + rows[1:], None), ["row 2 column latency_us",
                                                                   "'fast'"]),
    (lambda rows: ([rows[0][:3] + (-3.0,)] + rows[1:], None), ["row 2 column latency_us",
                                                               "positive"]),
    (lambda rows: (rows[:3], None), ["too few"]),
])
def test_bad_measurement_files_are_refused_and_nothing_is_written(tmp_path, mutate, words):
    rows, header = mutate(synthetic(0.5, 4e-6, 1978.9e12))
    write_gemm(tmp_path, rows, header or ("m", "k", "n", "latency_us"))
    out = tmp_path / "p.yaml"
    r = calibrate("--from-measurements", tmp_path, "--device", "x1", "--base", "h800",
                  "--out", out)
    assert r.exit_code == 2, r.output
    text = " ".join(r.output.split())
    assert "Traceback" not in text and "data.csv" in text
    for w in words:
        assert w in text, (w, text)
    assert not out.exists()


def test_an_unknown_kernel_kind_is_refused(tmp_path):
    write_gemm(tmp_path, synthetic(0.5, 4e-6, 1978.9e12))
    (tmp_path / "convolutions").mkdir()
    r = calibrate("--from-measurements", tmp_path, "--device", "x1", "--out", tmp_path / "p.yaml",
                  "--base", "h800")
    assert r.exit_code == 2 and "unknown kernel kind 'convolutions'" in " ".join(r.output.split())


def test_a_base_without_an_fp8_peak_is_refused(tmp_path):
    write_gemm(tmp_path, synthetic(0.5, 4e-6, 1978.9e12))
    r = calibrate("--from-measurements", tmp_path, "--device", "x1", "--base", "a100-80gb-sxm",
                  "--out", tmp_path / "p.yaml")
    assert r.exit_code == 2 and "peak_fp8_flops" in r.output



@pytest.mark.parametrize("device", ["h800", "h20"])
def test_the_shipped_profile_is_what_the_command_writes(tmp_path, device):
    out = tmp_path / f"{device}.yaml"
    r = calibrate("--from-measurements", DATA, "--device", device, "--out", out)
    assert r.exit_code == 0, r.output
    assert "gemm_by_shape" in r.output and "held-out MAPE" in r.output
    fresh, shipped = yaml.safe_load(out.read_text()), \
        yaml.safe_load((ROOT / "hardware_profiles" / f"{device}.yaml").read_text())
    for key in ("gemm_shape_efficiency", "grouped_gemm_efficiency"):
        assert fresh[key]["efficiency" if key.startswith("gemm_shape") else "points"] == \
            shipped[key]["efficiency" if key.startswith("gemm_shape") else "points"]
    fits = load_profile(str(out)).calibration.fits
    assert set(fits) >= {"gemm_by_shape", "grouped_gemm"}
    assert all(0 <= q.mape < 1 for q in fits.values())
