"""`moesim simulate` and `moesim compare`: one step of a workload, under one or several
schedules."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

from rich.markup import escape

from simulator.commands import common as c
from simulator.errors import MoesimError
from simulator.outputs import tables as T


def doing(w, schedule: str, per_rank: bool) -> str:
    """The spinner's line while a step is simulated."""
    ranks = f", all {w.plan.gpus // w.plan.pp} ranks" if per_rank else ""
    return f"simulating {w.name} under {schedule}{ranks}"


def simulate(workload: str, schedule: Optional[str], as_json: bool, per_rank: bool,
             report: Optional[Path], trace: Optional[Path], hardware: Optional[str],
             gpus: Optional[int], batch: Optional[int]) -> None:
    """One step of a workload: per-op table for one layer, then the totals."""
    from simulator.step.whatif import simulate as run
    c.check_outputs(report=report, trace=trace)
    w = c.load_workload(workload, hardware, gpus, batch)
    with c.err.status(doing(w, schedule or w.schedule, per_rank)):   # a terminal only
        res = run(w, schedule, per_rank=per_rank)
    write_outputs([res], report, trace)
    if as_json:
        c.print_json(res.to_json())
        return
    c.stdout.print(T.layer_table(res))
    if per_rank:
        spread, line = T.rank_spread(res)
        c.stdout.print(spread)
        c.stdout.print(line, highlight=False)
    print_totals([res])
    if report:
        c.stdout.print(f"report written to {report}")


def compare(workload: str, schedules: str, as_json: bool, per_rank: bool,
            report: Optional[Path], trace: Optional[Path], hardware: Optional[str],
            gpus: Optional[int], batch: Optional[str]) -> None:
    """Several schedules of one workload side by side, with speedups over the first."""
    from simulator.engine.schedule import get_schedule
    from simulator.step.whatif import resolve, simulate as run
    c.check_outputs(report=report, trace=trace)
    base_w = c.load_workload(workload, hardware, gpus)
    names = [s.strip() for s in schedules.split(",") if s.strip()]
    if not names:
        raise MoesimError("--schedules", "no schedule given", "e.g. --schedules sequential,sbo")
    for n in names:
        get_schedule(n)
    batches = c.int_list(batch, "--batch") if batch is not None else [None]
    results, groups = [], []
    with c.err.status(doing(base_w, names[0], per_rank)) as status:   # a terminal only
        for b in batches:
            w = c.override(base_w, batch=b)
            r = resolve(w)
            group = []
            for i, n in enumerate(names):
                status.update(doing(w, n, per_rank) + f" ({i + 1} of {len(names)})")
                group.append(run(w, n, per_rank=per_rank, resolved=r))
            groups.append((b, group))
            results += group
    write_outputs(results, report, trace)
    if as_json:
        c.print_json([dict(x.to_json(with_ops=False), batch_per_device=b,
                           speedup=group[0].step_time_s / x.step_time_s)
                      for b, group in groups for x in group])
        return
    if len(groups) > 1:
        for b, group in groups:
            c.stdout.print(T.totals_table(group, f"totals at batch {b} per device"))
        print_totals([], notes_of=results)
    else:
        print_totals(results)
    tie = T.tie_note(results)
    if tie:
        c.err.print(f"note: {tie}", highlight=False, soft_wrap=True)
    if report:
        c.stdout.print(f"report written to {report}")


def print_totals(results, notes_of=None) -> None:
    """The totals table, the link lines and the run's notes (once each)."""
    if results:
        c.stdout.print(T.totals_table(results))
        for line in T.link_lines(results):
            c.stdout.print(line, highlight=False)
    for note in dict.fromkeys(n for r in (notes_of or results)[:1] for n in r.notes):
        c.err.print(f"[yellow]note[/]: {escape(note)}", highlight=False, soft_wrap=True)


def write_outputs(results: list, report: Optional[Path], trace: Optional[Path]) -> None:
    """The HTML report and the Perfetto trace of step results, where asked."""
    if report:
        from simulator.outputs.report import write_report
        write_report(results, report)
    if trace:
        from simulator.outputs.trace import write_trace
        write_trace(results, trace)
        c.err.print(f"trace written to {trace} (open in ui.perfetto.dev or chrome://tracing)")
