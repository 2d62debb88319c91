"""`moesim train`: one training step simulated; MFU, tokens/day, days and $ to train."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

from simulator.commands import common as c
from simulator.outputs import tables as T


def train(workload: str, tokens: Optional[str], schedule: Optional[str], as_json: bool,
          report: Optional[Path], trace: Optional[Path], hardware: Optional[str],
          gpus: Optional[int]) -> None:
    """One training step simulated; MFU, tokens/day, days and $ to train."""
    from simulator.training.run import parse_tokens, train as run_train
    c.check_outputs(report=report, trace=trace)
    w = c.load_workload(workload, hardware, gpus)
    if schedule:
        from simulator.engine.schedule import get_schedule
        get_schedule(schedule)
        w = w.variant(schedule=schedule)
    res = run_train(w, parse_tokens(tokens) if tokens is not None else None)
    if report:
        from simulator.outputs.report import (pipeline_figure, training_figure, training_intro,
                                              write_figures)
        write_figures([training_figure(res), pipeline_figure(res)],
                      f"moesim training: {res.workload}", report, intro=training_intro(res))
    if trace:
        from simulator.outputs.trace import write_training_trace
        write_training_trace(res, trace)
    if as_json:
        c.print_json(res.to_json())
        return
    c.stdout.print(T.train_table(res))
