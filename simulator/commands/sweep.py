"""`moesim sweep`: a grid or list of what-ifs, resumable, on a process pool or Ray."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

from rich.markup import escape

from simulator.commands import common as c
from simulator.errors import MoesimError
from simulator.outputs import tables as T


def check_backend(backend: str, workers: int) -> int:
    """The worker count to use (capped at this machine's cores for the local pool), or a
    clear error for an unknown backend or no workers."""
    if workers <= 0:
        raise MoesimError("--workers", "must be at least 1", "pass --workers 2")
    if backend not in ("local", "ray"):
        raise MoesimError("--backend", f"unknown backend '{backend}'", "use local or ray")
    cores = os.cpu_count() or 1
    if backend == "local" and workers > cores:
        c.err.print(f"note: --workers {workers} capped at this machine's {cores} cores",
                    highlight=False)
        return cores
    return workers


def progress_bar(label: str):
    """A transient progress bar on stderr with elapsed time and ETA."""
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                               TimeElapsedColumn, TimeRemainingColumn)
    return Progress(TextColumn(label), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    TextColumn("ETA"), TimeRemainingColumn(), console=c.err, transient=True)


def sweep(spec_path: Path, backend: str, workers: int, address: str, results: Optional[Path],
          force: bool, report: Optional[Path], as_json: bool) -> None:
    """Run a grid or list of what-ifs; resumable; summary, Pareto front and report."""
    from simulator.outputs.sweep import describe, expand, load_spec, pareto, run_sweep
    workers = check_backend(backend, workers)
    c.check_outputs(report=report)
    spec = load_spec(spec_path)
    points = expand(spec, spec_path.parent)
    c.err.print(f"sweep {escape(spec.name)}: {describe(spec, len(points))}", highlight=False,
                soft_wrap=True)
    with progress_bar("sweep") as bar:
        task = bar.add_task("points", total=None)
        rows, path = run_sweep(spec, spec_path.parent, backend=backend, workers=workers,
                               address=address, force=force, results=results,
                               progress=lambda d, t: bar.update(task, completed=d, total=t),
                               points=points)
    front = pareto(rows)
    if report:
        from simulator.outputs.report import sweep_figure, write_figures
        write_figures([sweep_figure(rows, front)], f"moesim sweep: {spec.name}", report)
    if as_json:
        c.print_json({"results": str(path), "points": rows, "pareto": [r["key"] for r in front]})
        return
    c.stdout.print(T.sweep_table(spec.name, rows, {r["key"] for r in front}, str(path)))
    for r in rows:
        if r["error"]:
            c.err.print(f"[yellow]point {escape(str(r['overrides']))} failed[/]: "
                        f"{escape(r['error'])}")
