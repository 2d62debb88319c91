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
    p = fitted(tmp_path)
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



@pytest.mark.parametrize("device,base", [("h800", "h800"), ("h20", "h20"),
                                         ("h800", "h100-sxm")])   # the H800's die, H100 links
def test_the_shipped_profile_is_what_the_command_writes(tmp_path, device, base):
    out = tmp_path / f"{base}.yaml"
    r = calibrate("--from-measurements", DATA, "--device", device, "--base", base, "--out", out)
    assert r.exit_code == 0, r.output
    assert "gemm_by_shape" in r.output and "held-out MAPE" in r.output
    fresh, shipped = yaml.safe_load(out.read_text()), \
        yaml.safe_load((ROOT / "hardware_profiles" / f"{base}.yaml").read_text())
    for key in ("nvlink", "nic", "peak_fp8_flops", "hbm_bandwidth_Bps"):   # kept from the base
        assert fresh[key] == shipped[key]
    for key in ("gemm_shape_efficiency", "grouped_gemm_efficiency"):
        assert fresh[key]["efficiency" if key.startswith("gemm_shape") else "points"] == \
            shipped[key]["efficiency" if key.startswith("gemm_shape") else "points"]
    for kernel, table in shipped["attention_tables"].items():
        for side in ("memory_efficiency", "compute_efficiency"):
            assert fresh["attention_tables"][kernel][side] == table[side]
    assert {"mla_decode", "gqa_decode"} <= set(shipped["attention_tables"])
    fits = load_profile(str(out)).calibration.fits
    assert set(fits) >= {"gemm_by_shape", "grouped_gemm", "attention_mla_decode",
                         "attention_gqa_decode"}
    assert all(0 <= q.mape < 1 for q in fits.values())


def write_attention(folder: Path, name: str, rows, header=("dtype", "kv_dtype", "batch_size",
                                                          "kv_len", "latency_us")) -> Path:
    p = folder / "mha" / "decode" / "x1" / name
    p.parent.mkdir(parents=True, exist_ok=True)
    with p.open("w", newline="") as f:
        w = csv.writer(f)
        if header:
            w.writerow(header)
        w.writerows(rows)
    return p


def fitted(tmp_path, base: str = "h800"):
    """Run calibrate --from-measurements over tmp_path's files; the profile it writes."""
    out = tmp_path / "p.yaml"
    r = calibrate("--from-measurements", tmp_path, "--device", "x1", "--base", base,
                  "--out", out)
    assert r.exit_code == 0, r.output
    return load_profile(str(out))


def gqa_decode_rows(eff: float, lat_s: float, hbm: float, kv_dtype: str = "bf16"):
    """GQA decode calls of 32 query heads over 4 KV heads of 128, memory-bound at these sizes
    on an H800 (8 FLOPs per KV byte against a ridge of 295), run at `eff` of the HBM rate."""
    kv_b = {"bf16": 2, "fp8": 1}[kv_dtype]
    out = []
    for b in (1, 16, 64):
        for kv in (1024, 4096, 16384):
            nbytes = b * kv * 2 * 4 * 128 * kv_b + 2 * b * 32 * 128 * 2
            out.append(("bf16", kv_dtype, b, kv, (lat_s + nbytes / (hbm * eff)) * 1e6))
    return out


@pytest.mark.parametrize("kv_dtype", ["bf16", "fp8"])
def test_an_attention_closed_form_is_fitted_back_and_prices_the_core(tmp_path, kv_dtype):
    # base h800: HBM 3.35 TB/s datasheet, kernel latency 4 us. Calls built at 40% of the HBM
    # rate must read 0.40 in every cell, with no held-out error; an FP8 KV cache reads half
    # the bytes, so the same 0.40 comes back only if the fitter counts its bytes right.
    write_gemm(tmp_path, synthetic(0.55, 4e-6, 1978.9e12))
    write_attention(tmp_path, "32-4-128.csv", gqa_decode_rows(0.4, 4e-6, 3.35e12, kv_dtype))
    p = fitted(tmp_path)
    t = p.attention_tables["gqa_decode"]
    assert t.batch == [1, 16, 64] and t.kv_len == [1024, 4096, 16384]
    assert all(e == pytest.approx(0.4, rel=1e-6) for row in t.memory_efficiency for e in row)
    # no call was compute-bound: the compute side is the base profile's attention efficiency
    # (H800: FlashMLA's 660 of 989.4 TFLOP/s), not a free 100% of the peak
    base = load_profile("h800").attention_efficiency.value
    assert all(e == pytest.approx(base) for row in t.compute_efficiency for e in row)
    assert p.calibration.fits["attention_gqa_decode"].mape < 1e-6
    assert "mha/decode/x1/32-4-128.csv rows 2-10" in t.source
    # the simulator prices a GQA decode core by the table: latency + KV bytes / (0.4 x 3.35 TB/s)
    from simulator.graph.ops import Op
    from simulator.pricing.hardware import compute_time_s
    kv_bytes = 48 * 3000 * 2 * 4 * 128 * 2
    op = Op("core", "attention", flops=48 * 3000 * 4 * 32 * 128, bytes=kv_bytes,
            kernel="gqa_decode", seqs=48, kv_len=3000)
    assert compute_time_s(op, p) == pytest.approx(4e-6 + kv_bytes / (0.4 * 3.35e12), rel=1e-9)
    # a profile without the kernel's table keeps the old pricing (attention_efficiency, HBM)
    assert compute_time_s(Op("core", "attention", flops=op.flops, bytes=kv_bytes,
                             kernel="mla_decode", seqs=48, kv_len=3000), p) != \
        pytest.approx(compute_time_s(op, p))


def test_an_attention_file_with_an_unknown_kv_dtype_or_a_bad_name_is_refused(tmp_path):
    rows = gqa_decode_rows(0.4, 4e-6, 3.35e12)
    rows[2] = ("bf16", "int3") + rows[2][2:]
    write_attention(tmp_path, "32-4-128.csv", rows)
    r = calibrate("--from-measurements", tmp_path, "--device", "x1", "--base", "h800",
                  "--out", tmp_path / "p.yaml")
    text = " ".join(r.output.split())
    assert r.exit_code == 2 and "32-4-128.csv row 4 column kv_dtype" in text and "'int3'" in text
    (tmp_path / "mha" / "decode" / "x1" / "32-4-128.csv").unlink()
    write_attention(tmp_path, "gqa.csv", gqa_decode_rows(0.4, 4e-6, 3.35e12))
    r = calibrate("--from-measurements", tmp_path, "--device", "x1", "--base", "h800",
                  "--out", tmp_path / "p.yaml")
    text = " ".join(r.output.split())
    assert r.exit_code == 2 and "gqa.csv name" in text and "32-4-128.csv" in text
    assert not (tmp_path / "p.yaml").exists()


def test_a_file_without_a_header_row_is_named_and_left_out(tmp_path):
    write_attention(tmp_path, "32-4-128.csv", gqa_decode_rows(0.4, 4e-6, 3.35e12))
    write_attention(tmp_path, "64-2-128.csv", gqa_decode_rows(0.9, 4e-6, 3.35e12), header=())
    out = tmp_path / "p.yaml"
    r = calibrate("--from-measurements", tmp_path, "--device", "x1", "--base", "h800",
                  "--out", out)
    assert r.exit_code == 0, r.output
    assert "64-2-128.csv (no header row)" in " ".join(r.output.split())
    t = load_profile(str(out)).attention_tables["gqa_decode"]
    assert all(e == pytest.approx(0.4, rel=1e-6) for row in t.memory_efficiency for e in row)


def test_an_attention_grid_is_interpolated_by_sequences_and_kv_length_and_held_out(tmp_path):
    # efficiency = f(sequences) x g(KV length): the fitted grid is that product cell by cell;
    # between cells it is linear in the logs (2048 lies halfway from 1024 to 4096); and a held-
    # out cell is priced from its neighbours, so the held-out error is not zero
    f = {1: 0.2, 16: 0.5, 64: 0.9}
    g = {1024: 0.5, 4096: 0.75, 16384: 1.0}
    rows = []
    for b in f:
        for kv in g:
            nbytes = b * kv * 2 * 4 * 128 * 2 + 2 * b * 32 * 128 * 2
            rows.append(("bf16", "bf16", b, kv, (4e-6 + nbytes / (3.35e12 * f[b] * g[kv])) * 1e6))
    write_attention(tmp_path, "32-4-128.csv", rows)
    p = fitted(tmp_path)
    t = p.attention_tables["gqa_decode"]
    for i, b in enumerate(f):
        for j, kv in enumerate(g):
            assert t.memory_efficiency[i][j] == pytest.approx(f[b] * g[kv], rel=1e-6)
    assert p.calibration.fits["attention_gqa_decode"].mape > 0.02
    from simulator.graph.ops import Op
    from simulator.pricing.hardware import compute_time_s
    for seqs, kv, eff in ((16, 4096, 0.375), (16, 2048, 0.5 * 0.625)):
        nbytes = seqs * kv * 2 * 4 * 128 * 2
        op = Op("core", "attention", flops=seqs * kv * 4 * 32 * 128, bytes=nbytes,
                kernel="gqa_decode", seqs=seqs, kv_len=kv)
        assert compute_time_s(op, p) == pytest.approx(4e-6 + nbytes / (3.35e12 * eff), rel=1e-6)


def test_memory_and_compute_bound_layouts_keep_their_own_side(tmp_path):
    # base h20: BF16 peak 148 TFLOP/s, HBM 4.0 TB/s (ridge 37 FLOP/B). 32 query heads over 4 KV
    # heads do 8 FLOPs per KV byte (memory-bound), 256 over 2 do 128 (compute-bound). Calls
    # built at 80% of the HBM rate and at 50% of the peak, in the same cells, must give a
    # memory side of 0.8 and a compute side of 0.5, and price both layouts back exactly.
    lat = load_profile("h20").kernel_latency_s.value
    out_rows = {}
    for name, (a, kvh) in {"32-4-128.csv": (32, 4), "256-2-128.csv": (256, 2)}.items():
        rows = []
        for b in (1, 16, 64):
            for kv in (1024, 4096, 16384):
                flops = b * kv * 4 * a * 128
                nbytes = b * kv * 2 * kvh * 128 * 2 + 2 * b * a * 128 * 2
                t = lat + max(flops / (148e12 * 0.5), nbytes / (4.0e12 * 0.8))
                rows.append(("bf16", "bf16", b, kv, t * 1e6))
        out_rows[name] = rows
        write_attention(tmp_path, name, rows)
    p = fitted(tmp_path, base="h20")
    t = p.attention_tables["gqa_decode"]
    assert all(e == pytest.approx(0.8, rel=1e-6) for row in t.memory_efficiency for e in row)
    assert all(e == pytest.approx(0.5, rel=1e-6) for row in t.compute_efficiency for e in row)
    assert p.calibration.fits["attention_gqa_decode"].mape < 1e-6
