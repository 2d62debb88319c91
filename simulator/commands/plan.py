"""`moesim plan`: the best deployment under a latency SLO, searched and priced."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

from simulator.commands import common as c
from simulator.commands.sweep import check_backend, progress_bar
from simulator.outputs import tables as T


def plan(target: str, gpus: str, hardware: str, isl: int, osl: int, ttft_ms: float,
         tpot_ms: float, runtime: Optional[str], workers: int, as_json: bool,
         report: Optional[Path], out_dir: Optional[Path]) -> None:
    """The best deployment under a latency SLO: a searched Pareto front and its cost."""
    from simulator.outputs.plan import Question, search
    c.check_outputs(report=report)
    workers = check_backend("local", max(1, workers))
    q = Question(**plan_target(target), hardware=tuple(c.names(hardware, "--hardware")),
                 gpus=tuple(c.int_list(gpus, "--gpus")), isl=isl, osl=osl, ttft_ms=ttft_ms,
                 tpot_ms=tpot_ms, runtime=runtime)
    with progress_bar("plan") as bar:
        task = bar.add_task("candidates", total=None)
        res = search(q, workers, lambda d, t: bar.update(task, completed=d, total=t))
    if out_dir is not None:
        from simulator.outputs.plan import write_points
        write_points(res["front"], out_dir)
    if report:
        from simulator.outputs.report import plan_figures, write_figures
        write_figures(plan_figures(res), f"moesim plan: {q.model}", report)
    if as_json:
        c.print_json({k: v for k, v in res.items() if k != "points"})
        return
    for table in T.plan_tables(res):
        c.stdout.print(table)
    for line in T.plan_lines(res):
        c.stdout.print(line, highlight=False, soft_wrap=True)


def plan_target(target: str) -> dict:
    """A plan's model and the fields a workload file keeps (precision, runtime, routing)."""
    from simulator.loading import load_model, read_yaml_mapping, resolve_paths
    path = Path(target)
    if path.suffix in (".yaml", ".yml") and path.is_file():
        data = read_yaml_mapping(path)
        if "plan" in data and "model" in data:          # a workload
            data = resolve_paths(data, path.resolve().parent)
            load_model(data["model"])
            return {"model": data["model"], "base": data}
    load_model(target)
    return {"model": target}
