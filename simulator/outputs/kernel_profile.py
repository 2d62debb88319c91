"""`moesim calibrate --from-measurements`: a GPU profile whose GEMM, grouped-GEMM and attention
efficiency tables are fitted from measured kernel times, every other number kept (with its
source) from a base profile. No torch, no GPU: the measurements are files."""
from __future__ import annotations

import datetime as dt
from pathlib import Path

import yaml

from simulator.atomic import write_text_atomic
from simulator.errors import MoesimError
from simulator.loading import PROFILES_DIR, known_names, parse, read_yaml_mapping
from simulator.pricing.attention_fit import fit_attention
from simulator.pricing.fits import fit_gpu_kernels
from simulator.pricing.kernel_files import read_kernel_rows
from simulator.schema import HardwareProfile

EFF_FLOOR = 1e-4       # an efficiency table holds fractions in (0, 1]


def _base_mapping(base: str) -> dict:
    path = Path(base)
    if not (path.suffix in (".yaml", ".yml") and path.exists()):
        path = PROFILES_DIR / f"{base}.yaml"
    if not path.exists():
        raise MoesimError("--base", f"unknown profile '{base}'",
                          f"use one of: {', '.join(known_names(PROFILES_DIR))}, or a YAML path")
    return read_yaml_mapping(path)


def profile_from_measurements(root: Path, device: str, base: str, out: Path | None,
                              force: bool) -> tuple[Path, dict, list[str]]:
    """Fit, validate and write the profile; returns (path, profile mapping, kinds not fitted)."""
    data = _base_mapping(base)
    prof = parse(HardwareProfile, data, f"profile {base}")
    out = Path(out) if out is not None else Path(f"{device}-measured.yaml")
    if out.exists() and not force:
        raise MoesimError("--out", f"{out} already exists", "pass --force to overwrite it")
    rows, sources, not_fitted = read_kernel_rows(root, device)
    gemm_dtype = rows["gemm"][0].params["dtype"] if rows["gemm"] else "fp8"
    gemm_precision = "fp8" if gemm_dtype == "fp8" else "bf16"
    if prof.peak_fp8_flops is None and (gemm_precision == "fp8" and rows["gemm"]
                                        or rows["grouped_gemm"]):
        raise MoesimError("--base", f"profile {prof.name} has no peak_fp8_flops, and the "
                          "measurements are FP8 kernels", "add a sourced peak_fp8_flops")
    gemm_peak = prof.peak_fp8_flops.value if gemm_precision == "fp8" else \
        prof.peak_bf16_flops.value
    peak = prof.peak_fp8_flops.value if prof.peak_fp8_flops is not None else gemm_peak
    bw = prof.hbm_bandwidth_Bps.value * prof.hbm_efficiency.value
    lat = prof.kernel_latency_s.value
    if gemm_precision == "fp8":        # one precision: the shape table also prices the grouped
        shape, grouped, quality = fit_gpu_kernels(rows, peak, bw, lat)
    else:
        shape, _, quality = fit_gpu_kernels({"gemm": rows["gemm"]}, gemm_peak, bw, lat)
        _, grouped, grouped_quality = fit_gpu_kernels(
            {"grouped_gemm": rows["grouped_gemm"]}, peak, bw, lat)
        quality.update(grouped_quality)
    gemm_peak_name = "peak_fp8_flops" if gemm_precision == "fp8" else "peak_bf16_flops"
    how = (f"efficiency = FLOPs / (peak_fp8_flops x (latency - kernel_latency_s)), fitted by "
           f"`moesim calibrate --from-measurements {root} --device {device} --base {base}`")
    if shape is not None:
        ms, ws, grid = shape
        data["gemm_shape_efficiency"] = {
            "m": [float(m) for m in ms], "weights": [float(w) for w in ws],
            "efficiency": [[float(min(max(e, EFF_FLOOR), 1.0)) for e in row] for row in grid],
            "source": f"{sources['gemm']} ({gemm_dtype.upper()} dense GEMMs): median per "
                      f"(M, N x K) cell; {how.replace('peak_fp8_flops', gemm_peak_name)}",
            "precision": gemm_precision}
    if grouped is not None:
        data["grouped_gemm_efficiency"] = {
            "points": [[float(x), float(min(max(e, EFF_FLOOR), 1.0))] for x, e in grouped],
            "source": f"{sources['grouped_gemm']} (FP8 grouped GEMMs, up and down projections): "
                      f"median per tokens per expert; {how}",
            "precision": "fp8"}
    attn, attn_quality = fit_attention(rows, prof.peak_bf16_flops.value,
                                       prof.hbm_bandwidth_Bps.value, lat,
                                       (prof.hbm_efficiency.value,
                                        prof.attention_efficiency.value))
    quality.update(attn_quality)
    if attn:
        data["attention_tables"] = {
            kernel: {"batch": [float(b) for b in bs], "kv_len": [float(k) for k in ks],
                     "memory_efficiency": [[float(e) for e in row] for row in g_m],
                     "compute_efficiency": [[float(e) for e in row] for row in g_c],
                     "source": f"{sources[kernel]} (BF16 attention cores, every head layout "
                               f"pooled): per (sequences, KV length) cell, the median over the "
                               f"memory-bound calls of (bytes / hbm_bandwidth_Bps) and over the "
                               f"compute-bound ones of (FLOPs / peak_bf16_flops), each divided "
                               f"by (latency - kernel_latency_s); a side no call measured "
                               f"starts from the base profile's hbm_efficiency "
                               f"({prof.hbm_efficiency.source}) or attention_efficiency "
                               f"({prof.attention_efficiency.source}); fitted by `moesim calibrate "
                               f"--from-measurements {root} --device {device} --base {base}`",
                     "precision": "bf16"}
            for kernel, (bs, ks, g_m, g_c) in attn.items()}
    data["calibration"] = {
        "device": device, "device_name": prof.gpu, "cores": 0, "driver": "",
        "torch_version": "none (fitted from measurement files)",
        "date": dt.date.today().isoformat(), "mode": "from-measurements", "ranks": 1,
        "threads_per_rank": 0, "dtype": gemm_dtype,
        "fits": {k: {"mape": float(q["mape"]), "points": int(q["points"]),
                     "flagged": bool(q["flagged"])} for k, q in quality.items()}}
    parse(HardwareProfile, data, f"fitted profile {out.name}")      # refuse before writing
    header = (f"# Written by `moesim calibrate --from-measurements {root} --device {device} "
              f"--base {base}`:\n# GEMM, grouped-GEMM and attention tables fitted from measured kernel "
              f"times; every other number is the base profile's, with its source.\n")
    write_text_atomic(out, header + yaml.safe_dump(data, sort_keys=False, width=100), "--out")
    return out, data, not_fitted
