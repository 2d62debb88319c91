"""`moesim validate`: the companion torch executor against the simulator on one workload."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

from rich.table import Table

from simulator.commands import common as c
from simulator.errors import MoesimError
from simulator.outputs import tables as T


def validate(workload: str, profile: str, ranks: int, repeats: int, report: Optional[Path],
             as_json: bool) -> None:
    """Run the companion torch executor and the simulator on one workload; compare them."""
    import warnings
    try:
        from executor.validate import report_results, validate as run_validate
    except ImportError:
        raise MoesimError("torch", "PyTorch is not installed and the executor needs it",
                          "pip install torch==2.13.0, or pip install 'moesim[executor]'") from None
    if ranks < 1:
        raise MoesimError("--ranks", f"{ranks} executor processes cannot run a model",
                          "pass --ranks 1 or more (the EP degree)")
    if repeats < 1:
        raise MoesimError("--repeats", f"{repeats} timed repeats measure nothing",
                          "pass --repeats 1 or more (10 by default)")
    c.check_outputs(report=report)
    w = c.load_workload(workload)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with c.err.status("running the executor and the simulator"):
            v = run_validate(w, profile, ranks, repeats)
    c.print_warnings(caught)
    if report:
        from simulator.outputs.report import write_report
        write_report(report_results(v), report)
    public = {k: x for k, x in v.items() if not k.startswith("_")}
    if as_json:
        c.print_json(public)
        return
    table = Table(title=f"{w.name}: measured vs predicted ({profile}, {ranks} ranks)")
    for col in ("schedule", "layer", "measured us", "predicted us", "error"):
        table.add_column(col, justify="left" if col == "schedule" else "right")
    for x in v["layers"]:
        table.add_row(x["schedule"], str(x["layer"]), T.fmt(x["measured_us"]),
                      T.fmt(x["predicted_us"]), f"{x['error']:+.1%}")
    c.stdout.print(table)
    ops = Table(title="ops, sequential schedule (median over ranks)")
    for col in ("op", "kind", "measured us", "predicted us", "error"):
        ops.add_column(col, justify="left" if col in ("op", "kind") else "right")
    for x in v["ops"]:
        ops.add_row(x["name"], x["kind"], T.fmt(x["measured_us"]), T.fmt(x["predicted_us"]),
                    f"{x['error']:+.1%}" if x["error"] is not None else "-")
    c.stdout.print(ops)
    lo, hi = v["speedup_measured_ci95"]
    noise = "; it spans 1: noise hides the sign here" if lo <= 1 <= hi else ""
    speed = ", ".join(f"{k} x{r:.2f}" for k, r in v["in_run"]["machine_speed"].items())
    c.stdout.print(f"per-layer MAPE {v['in_run']['mape']:.1%} with the profile scaled to this "
                   f"run's probes (time measured/profiled: {speed}); {v['mape']:.1%} with "
                   f"{profile} as shipped", highlight=False)
    c.stdout.print(f"scmoe over sequential: measured {v['speedup_measured']:.3f}x (95% interval "
                   f"{lo:.3f}-{hi:.3f}{noise}), predicted {v['speedup_predicted']:.3f}x",
                   highlight=False)
