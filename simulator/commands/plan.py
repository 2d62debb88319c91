"""`moesim plan`: the best deployment under a latency SLO, searched and priced."""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional

from simulator.commands import common as c
from simulator.commands.sweep import check_backend, progress_bar
from simulator.outputs import tables as T


def plan(target: str, gpus: str, hardware: Optional[str], isl: int, osl: int, ttft_ms: float,
         tpot_ms: float, runtime: Optional[str], train: bool, tokens: Optional[str],
         workers: int, backend: str, address: str, results: Optional[Path], as_json: bool,
         report: Optional[Path], out_dir: Optional[Path]) -> None:
    """The best deployment under a latency SLO (or, with --train, the fastest and cheapest
    training layouts): a searched front and its cost."""
    from simulator.outputs.plan import default_results
    c.check_outputs(report=report)
    workers = check_backend(backend, workers)
    run = dict(backend=backend, address=address, results=results or default_results())
    if train:
        plan_train(target, gpus, hardware, tokens, workers, run, as_json, report, out_dir)
        return
    from simulator.outputs.plan import Question, search
    q = Question(**plan_target(target), hardware=tuple(c.names(hardware or "h200-sxm",
                                                               "--hardware")),
                 gpus=tuple(c.int_list(gpus, "--gpus")), isl=isl, osl=osl, ttft_ms=ttft_ms,
                 tpot_ms=tpot_ms, runtime=runtime)
    from simulator.outputs.plan import write_points
    from simulator.outputs.report import plan_figures
    res = searched("plan", search, q, workers, run)
    if written(res, write_points, plan_figures, f"moesim plan: {q.model}", out_dir, report,
               as_json):
        return
    for table in T.plan_tables(res):
        c.stdout.print(table)
    for line in T.plan_lines(res):
        c.stdout.print(line, highlight=False, soft_wrap=True)


def plan_train(target: str, gpus: str, hardware: Optional[str], tokens: Optional[str],
               workers: int, run: dict, as_json: bool, report: Optional[Path],
               out_dir: Optional[Path]) -> None:
    """`plan --train`: a training workload's layouts searched for days and $ to train."""
    from simulator.outputs.plan_train import TrainQuestion, search
    from simulator.training.run import parse_tokens
    base = plan_target(target).get("base")
    if base is None or base.get("training") is None:
        from simulator.errors import MoesimError
        raise MoesimError("WORKLOAD", f"{target} is not a training workload",
                          "give a workload YAML with a training: block (see workloads/training/)")
    q = TrainQuestion(base=base, hardware=tuple(c.names(hardware or base["hardware"],
                                                        "--hardware")),
                      gpus=tuple(c.int_list(gpus, "--gpus")),
                      tokens=parse_tokens(tokens) if tokens is not None else None)
    from simulator.outputs.plan_train import write_points
    from simulator.outputs.report import plan_train_figures
    res = searched("plan --train", search, q, workers, run)
    if written(res, write_points, plan_train_figures, f"moesim plan --train: {q.base['model']}",
               out_dir, report, as_json):
        return
    c.stdout.print(T.plan_train_table(res))
    n = res["candidates"]
    c.stdout.print(f"{n['tried']} layouts tried, {n['pruned']} pruned (do not fit in memory at "
                   f"any recompute, or do not split the batch), {n['priced']} priced",
                   highlight=False)


def searched(label: str, search: Callable, q, workers: int, run: dict) -> dict:
    """A plan's search with a progress bar of what-ifs priced."""
    with progress_bar(label) as bar:
        task = bar.add_task("what-ifs", total=None)
        return search(q, workers, lambda d, t: bar.update(task, completed=d, total=t), **run)


def written(res: dict, write_points: Callable, figures: Callable, title: str,
            out_dir: Optional[Path], report: Optional[Path], as_json: bool) -> bool:
    """The front's workloads (--out-dir), the report (--report) and the JSON (--json, without
    every priced point) of a plan; True when the JSON was printed (nothing else to print)."""
    if out_dir is not None:
        write_points(res["front"], out_dir)
    if report:
        from simulator.outputs.report import write_figures
        write_figures(figures(res), title, report)
    if as_json:
        c.print_json({k: v for k, v in res.items() if k != "points"})
    return as_json


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
