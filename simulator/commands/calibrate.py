"""`moesim calibrate`: a hardware profile fitted on this device, from measured kernel files, or
from aiconfigurator-core's measured tables."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

from simulator.commands import common as c
from simulator.errors import MoesimError
from simulator.outputs import tables as T


def calibrate(device: str, from_measurements: Optional[Path], from_aiconfigurator: Optional[str],
              framework: str, version: Optional[str], base: Optional[str], quick: bool,
              full: bool, ranks: int, out: Optional[Path], name: Optional[str],
              price: Optional[float], force: bool) -> None:
    """Microbenchmark this device (or read measured kernel times) and fit a hardware profile,
    with the held-out error of every fit."""
    import warnings
    c.check_number(price, "--price", allow_low=True)
    if price is not None and (from_aiconfigurator or from_measurements):
        raise MoesimError("--price", "a profile fitted from measurements keeps its base "
                          "profile's sourced price", "leave --price out, then set "
                          "price_per_gpu_hour in the written profile with its source")
    if from_aiconfigurator is not None:
        from_aiconfigurator_tables(from_aiconfigurator, framework, version, base, out)
        return
    if from_measurements is not None:
        from_files(from_measurements, device, base or device, out, force)
        return
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
    if quick and full:
        raise MoesimError("--quick/--full", "both given", "pass one of them")
    if ranks < 1:
        raise MoesimError("--ranks", f"{ranks} processes cannot run a benchmark",
                          "pass --ranks 1 or more")
    c.check_outputs(out=out)
    from executor.calibrate import calibrate as run_calibration
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with Progress(TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn(),
                      console=c.err, transient=True) as bar:
            task = bar.add_task("calibrating", total=5)
            path, data = run_calibration(
                device=device, mode="full" if full else "quick", ranks=ranks, out=out,
                force=force, price=0.05 if price is None else price, name=name,
                progress=lambda label, i, n: bar.update(task, description=label, completed=i,
                                                        total=n))
    c.print_warnings(caught)
    c.stdout.print(T.fits_table(f"calibrated {data['gpu']} -> {path}", data))
    c.stdout.print(f"peak {data['peak_bf16_flops']['value'] / 1e9:.1f} GFLOP/s, memory "
                   f"{data['hbm_bandwidth_Bps']['value'] / 1e9:.1f} GB/s, all-to-all "
                   f"{data['nvlink']['bandwidth_Bps']['value'] / 1e9:.2f} GB/s, comm takes "
                   f"{data['comm_sm_fraction']['value']:.0%} of compute", highlight=False)


def from_aiconfigurator_tables(system: str, framework: str, version: Optional[str],
                               base: Optional[str], out: Optional[Path]) -> None:
    """A profile whose measured kernel tables come from aiconfigurator-core's data."""
    from simulator.outputs.aiconfigurator_profile import (FOLDS_NOTE,
                                                          profile_from_aiconfigurator)
    out = out or Path(f"{system}-{framework}.yaml")
    c.check_outputs(out=out)
    with c.err.status(f"reading {system} {framework} tables"):
        path, tables, reports, notes = profile_from_aiconfigurator(system, framework, version,
                                                                   out, base)
    c.stdout.print(T.import_table(f"{system} {framework}: measured kernels -> {tables}", reports))
    c.stdout.print(FOLDS_NOTE, highlight=False)
    for n in notes:
        c.stdout.print(f"note: {n}", highlight=False)
    c.stdout.print(f"profile written: {path}", highlight=False)


def from_files(root: Path, device: str, base: str, out: Optional[Path], force: bool) -> None:
    """A profile whose GEMM tables are fitted from measured kernel files under `root`."""
    from simulator.outputs.kernel_profile import profile_from_measurements
    if out is not None:
        c.check_outputs(out=out)
    path, data, not_fitted = profile_from_measurements(root, device, base, out, force)
    c.stdout.print(T.fits_table(f"{data['gpu']}: fitted from {root} -> {path}", data))
    if not_fitted:
        c.stdout.print(f"not fitted (kept from {base}): {'; '.join(not_fitted)}",
                       highlight=False)
