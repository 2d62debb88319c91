"""`moesim calibrate`: run the microbenchmarks on this device and write a fitted profile.

Imports torch lazily so that the CLI can say which extra to install when torch is missing.
"""
from __future__ import annotations

import csv
import datetime as dt
import io
import os
import platform
import shutil
import subprocess
import warnings
from pathlib import Path
from typing import Callable

import yaml

from simulator.atomic import write_text_atomic
from simulator.pricing.fits import fit, profile_dict, rows_from_dicts
from simulator.schema import HardwareProfile
from simulator.errors import MoesimError

DEVICES = ("cpu", "cuda")


def check_request(device: str, ranks: int, out: Path, force: bool):
    """Refuse bad requests before measuring anything; returns the torch module."""
    if device not in DEVICES:
        raise MoesimError("--device", f"unknown device '{device}'", "use cpu or cuda")
    try:
        import torch
    except ImportError:
        raise MoesimError("torch", "PyTorch is not installed, and calibration measures with it",
                          "pip install torch==2.13.0 (CPU build), or pip install 'moesim[executor]'"
                          ) from None
    if device == "cuda" and not torch.cuda.is_available():
        raise MoesimError("--device cuda", "no CUDA device is available on this machine",
                          "run on a machine with an NVIDIA GPU, or use --device cpu")
    if ranks < 1:
        raise MoesimError("--ranks", "must be at least 1", "pass --ranks 2")
    if out.exists() and not force:
        raise MoesimError("--out", f"{out} already exists", "pass --force to overwrite it, or "
                          "choose another --out")
    cores = os.cpu_count() or 1
    if device == "cpu" and ranks > cores:
        warnings.warn(f"--ranks {ranks} exceeds the {cores} cores: ranks will share cores, so the "
                      "collective and interference figures will be slower than on a machine "
                      "with a core per rank", stacklevel=2)
    return torch


def identity(torch, device: str, mode: str, threads: int) -> dict:
    """Device identity recorded in the profile."""
    info = {"device": device, "torch_version": str(torch.__version__),
            "date": dt.date.today().isoformat(), "mode": mode, "threads_per_rank": threads,
            "cores": os.cpu_count() or 1, "driver": "", "dtype": "float32"}
    if device == "cuda":
        props = torch.cuda.get_device_properties(0)
        info.update(device_name=props.name, memory_bytes=float(props.total_memory),
                    dtype="bfloat16", driver=_nvidia_driver())
    else:
        info.update(device_name=_cpu_model(), memory_bytes=float(
            os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")))
    return info


def device_slug(device_name: str, device: str) -> str:
    """The folder name of this device's kernel files: its name in lower case, words joined by
    '-' (NVIDIA H200 -> nvidia-h200); the device kind when the name says nothing."""
    words = "".join(c if c.isalnum() else " " for c in device_name.lower()).split()
    return "-".join(words[:4]) or device


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"{line.split(':', 1)[1].strip()} x{os.cpu_count()}"
    except OSError:
        pass
    return f"{platform.processor() or platform.machine()} x{os.cpu_count()}"


def _nvidia_driver() -> str:
    exe = shutil.which("nvidia-smi")
    if not exe:
        return "unknown"
    try:
        return subprocess.run([exe, "--query-gpu=driver_version", "--format=csv,noheader"],
                              capture_output=True, text=True, timeout=20).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def calibrate(device: str = "cpu", mode: str = "quick", ranks: int = 2,
              out: Path | None = None, force: bool = False, price: float = 0.05,
              name: str | None = None,
              progress: Callable[[str, int, int], None] | None = None) -> tuple[Path, dict]:
    """Measure, fit, and write the profile YAML plus its raw CSV; returns (path, profile dict)."""
    name = name or f"{device}-measured"
    out = Path(out) if out else Path("hardware_profiles") / f"{name}.yaml"
    torch = check_request(device, ranks, out, force)
    from executor import microbench as mb
    grid = mb.FULL if mode == "full" else mb.QUICK
    cores = os.cpu_count() or 1
    # on CPU one simulated device is one rank: measure compute with the threads a rank gets
    threads = max(1, cores // max(ranks, 1)) if device == "cpu" else 1
    torch.set_num_threads(threads)
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    steps = mb.COMPUTE_BENCHES
    rows: list[dict] = []
    total = len(steps) + (1 if ranks > 1 else 0)
    if device == "cpu" and ranks > 1:
        # a CPU rank shares caches and memory bandwidth with the others: measure it beside them
        if progress:
            progress(f"compute on {ranks} concurrent ranks", 0, total)
        rows += mb.bench_compute_concurrently(device, ranks, grid, threads)
    else:
        for i, (label, fn) in enumerate(steps):
            if progress:
                progress(label, i, total)
            rows += [m.row() for m in fn(device, grid, dtype)]
    if ranks > 1:
        if progress:
            progress(f"collectives on {ranks} ranks", len(steps), total)
        from executor.collbench import bench_collectives
        rows += bench_collectives(device, ranks, grid, max(1, cores // ranks))
    if progress:
        progress("fitting", total, total)
    ident = identity(torch, device, mode, threads)
    csv_dir = out.parent / out.stem
    csv_path = csv_dir / "measurements.csv"
    fitted = fit(rows_from_dicts([{k: str(v) for k, v in r.items()} for r in rows]))
    data = profile_dict(fitted, name=out.stem, identity=ident, ranks=max(ranks, 1), price=price,
                        csv_name=f"{csv_dir.name}/measurements.csv")
    HardwareProfile.model_validate(data)                 # never write a profile we cannot load
    buf = io.StringIO()
    fields = sorted({k for r in rows for k in r})
    wr = csv.DictWriter(buf, fieldnames=fields)
    wr.writeheader()
    for r in rows:
        wr.writerow(r)
    write_text_atomic(csv_path, buf.getvalue())
    from simulator.pricing.kernel_files import write_kernel_files
    write_kernel_files(rows, csv_dir / "kernels", device_slug(ident["device_name"], device),
                       "bf16" if device == "cuda" else "fp32")
    header = (f"# Calibrated by `moesim calibrate --device {device} --{mode} --ranks {ranks}` on "
              f"{ident['device_name']}, torch {ident['torch_version']}, {ident['date']}.\n"
              f"# Raw measurements: {csv_dir.name}/measurements.csv; the GEMM and attention "
              f"timings also in the kernel-file layout under {csv_dir.name}/kernels/\n"
              f"# (`moesim calibrate --from-measurements` reads them).\n")
    write_text_atomic(out, header + yaml.safe_dump(data, sort_keys=False))
    return out, data
