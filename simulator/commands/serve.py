"""`moesim serve`: request-level serving, one run or a sweep of batch, rate or concurrency."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

from simulator.commands import common as c
from simulator.errors import MoesimError
from simulator.outputs import tables as T


def serve(workload: str, rate: Optional[float], duration: Optional[float],
          sweep_batch: Optional[str], sweep_concurrency: Optional[str],
          sweep_rate: Optional[str], schedules: str, as_json: bool, report: Optional[Path],
          hardware: Optional[str], gpus: Optional[int],
          requests_csv: Optional[Path] = None, runtime: Optional[str] = None) -> None:
    """Request-level serving simulation: TTFT, TPOT, tokens/GPU/s, $ per million tokens."""
    from simulator.serving.batch_sweep import batch_sweep
    from simulator.serving.run import ServingSim
    c.check_number(rate, "--rate")
    c.check_number(duration, "--duration")
    c.check_outputs(report=report, requests_csv=requests_csv)
    w = c.load_workload(workload, hardware, gpus)
    presets = c.names(runtime, "--runtime", "sglang-0.5,vllm-v1") if runtime else []
    if len(presets) > 1 and not (sweep_concurrency or sweep_rate):
        raise MoesimError("--runtime", "several runtime presets for one serving run",
                          "name one, or add --sweep-concurrency / --sweep-rate to compare "
                          "them against load")
    for name in presets:
        from simulator.loading import NO_RUNTIME, load_serving_runtime
        if name != NO_RUNTIME:
            load_serving_runtime(name)              # an unknown name fails here, by --runtime
    if presets:
        w = w.variant(runtime=w.runtime.variant(preset=presets[0]))
    if requests_csv is not None and (sweep_batch or sweep_concurrency or sweep_rate):
        raise MoesimError("--requests-csv", "a sweep runs many serving runs",
                          "write the requests of one run: drop the --sweep-* option")
    if sweep_concurrency or sweep_rate:
        load_sweep(w, sweep_concurrency, sweep_rate, as_json, report, presets)
        return
    if sweep_batch:
        batches = c.int_list(sweep_batch, "--sweep-batch")
        points = batch_sweep(w, batches, c.names(schedules, "--schedules", "sequential,tbo"))
        if report:
            from simulator.outputs.report import write_serving_report
            write_serving_report(None, points, report)
        if as_json:
            c.print_json(points)
            return
        c.stdout.print(T.batch_sweep_table(w.name, w.context_length, points))
        return
    from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
    sim = ServingSim(w, rate=rate, duration=duration)
    with Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(),
                  TimeElapsedColumn(), console=c.err, transient=True) as bar:
        task = bar.add_task("checking capacity and simulating step shapes", total=None)
        cap = sim.capacity_rps()

        def simulated(t: float, horizon: float) -> None:
            what = f"simulated {t:,.0f} of {horizon:,.0f} s of arrivals" if t <= horizon else \
                f"draining: simulated {t:,.0f} s ({horizon:,.0f} s of arrivals)"
            bar.update(task, description=what, total=horizon, completed=min(t, horizon),
                       refresh=True)
        res = sim.run(progress=simulated)
        fidelity = sim.fidelity()
    m = dict(res.metrics, capacity_rps=cap, fidelity=fidelity)
    if requests_csv is not None:
        from simulator.atomic import write_text_atomic
        write_text_atomic(requests_csv, res.requests_csv(), "--requests-csv")
    if report:
        from simulator.outputs.report import write_serving_report
        write_serving_report(res, None, report, m)
    if as_json:
        c.print_json(m)
        return
    table, lines = T.serve_tables(m, cap)
    c.stdout.print(table)
    for line in lines:
        c.stdout.print(line, highlight=False)


def load_sweep(w, concurrency: Optional[str], rate: Optional[str], as_json: bool,
               report: Optional[Path], presets: Optional[list[str]] = None) -> None:
    """One serving run per number of clients or per rate (per runtime preset when several
    are named): latency against load."""
    from simulator.serving.load_sweep import load_sweep as sweep
    if concurrency and rate:
        raise MoesimError("--sweep-concurrency/--sweep-rate", "both given", "pass one of them")
    if w.serving is None:
        raise MoesimError("serving", "the workload has no serving block",
                          "add `serving:` (see workloads/serving/)")
    kind = "concurrency" if concurrency else "rate"
    if concurrency:
        loads: list = c.int_list(concurrency, "--sweep-concurrency")
    else:
        try:
            loads = [float(x) for x in rate.split(",") if x.strip()]
        except ValueError:
            raise MoesimError("--sweep-rate", f"{rate!r} is not a list of rates",
                              "e.g. --sweep-rate 1,2,4") from None
        for x in loads:
            c.check_number(x, "--sweep-rate")
        if not loads:
            raise MoesimError("--sweep-rate", "no rate given", "e.g. --sweep-rate 1,2,4")
    points: list[dict] = []
    for name in presets or [None]:
        wl = w if name is None else w.variant(runtime=w.runtime.variant(preset=name))
        with c.err.status(f"serving at {len(loads)} loads" + (f" under {name}" if name else "")):
            points += sweep(wl, kind, loads)
    if report:
        from simulator.outputs.report import load_figures, write_figures
        write_figures(load_figures(points, kind), f"moesim serving: {w.name}, latency against "
                      f"{kind}", report)
    if as_json:
        c.print_json(points)
        return
    c.stdout.print(T.load_sweep_table(w.name, kind, points))
