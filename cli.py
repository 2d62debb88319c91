"""moesim command line: simulate, compare, model, schema. Configs are files; flags override."""
from __future__ import annotations

import json
import math
import os
import sys
from functools import wraps
from pathlib import Path
from typing import Callable, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from simulator.errors import MoesimError
from simulator.outputs import tables as T

app = typer.Typer(add_completion=False, no_args_is_help=True, rich_markup_mode=None,
                  help="Simulate Mixture-of-Experts training and serving clusters.")
stdout = Console(width=max(Console().width, 150))
err = Console(stderr=True)


def user_errors(fn: Callable) -> Callable:
    """Print MoesimError as one paragraph and exit 2, never a traceback; Ctrl-C exits 130."""
    @wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except MoesimError as exc:
            err.print(f"[bold red]error[/]: {escape(T.printable(exc.render()))}", highlight=False,
                      soft_wrap=True)
            raise typer.Exit(getattr(exc, "exit_code", 2)) from None
        except KeyboardInterrupt:
            err.print("interrupted: stopped on Ctrl-C; nothing half-written was kept",
                      highlight=False)
            raise typer.Exit(130) from None
        except MemoryError:
            err.print("[bold red]error[/]: the run needs more memory than this machine has. Fix: "
                      "shrink the workload (batch, context, duration or ranks)", highlight=False)
            raise typer.Exit(2) from None
    return wrapper


def _number(value: Optional[float], option: str, *, low: float = 0.0, allow_low: bool = False,
            high: float = float("inf")) -> None:
    """Refuse a CLI number that is NaN, infinite, or outside (low, high]."""
    if value is None:
        return
    if not math.isfinite(value) or value < low or (value == low and not allow_low) \
            or value > high:
        bound = f">= {low:g}" if allow_low else f"> {low:g}"
        top = f" and <= {high:g}" if math.isfinite(high) else ""
        raise MoesimError(option, f"{value} is not a finite number {bound}{top}",
                          f"pass {option} with a number {bound}{top}")


def _outputs(**paths: Optional[Path]) -> None:
    """Check every output path before any work is done (a directory, under a file, unwritable)."""
    from simulator.atomic import check_output_path
    for option, path in paths.items():
        if path is not None:
            check_output_path(path, "--" + option.replace("_", "-"))


def load_workload(path: str, hardware: Optional[str] = None, gpus: Optional[int] = None,
                  batch: Optional[int] = None):
    """The workload YAML (schemas imported only when a command needs them: a fast --help), with
    the command line's overrides applied and named in its title."""
    from simulator.loading import load_workload as load
    w = load(path)
    return override(w, hardware=hardware, gpus=gpus, batch=batch)


def override(w, hardware: Optional[str] = None, gpus: Optional[int] = None,
             batch: Optional[int] = None):
    """`w` with --hardware, --gpus (the plan's GPU count, every degree kept) and --batch
    (sequences per device) applied; its name says what was changed."""
    changes, update = [], {}
    if hardware is not None:
        update["hardware"] = hardware
        changes.append(f"on {hardware}")
    if gpus is not None:
        if gpus <= 0:
            raise MoesimError("--gpus", f"{gpus} is not a positive GPU count", "pass --gpus 8")
        update["plan"] = w.plan.variant(gpus=gpus)
        changes.append(f"{gpus} GPUs")
    if batch is not None:
        if batch <= 0:
            raise MoesimError("--batch", f"{batch} is not a positive batch", "pass --batch 8")
        update["batch_per_device"] = batch
        changes.append(f"batch {batch}")
    if not changes:
        return w
    return w.variant(**update, name=f"{w.name} ({', '.join(changes)})")


HARDWARE = typer.Option(None, "--hardware", help="run on this profile instead of the workload's")
GPUS = typer.Option(None, "--gpus", help="the plan's GPU count (its parallel degrees kept)")
BATCH = typer.Option(None, "--batch", help="sequences per device (batch_per_device)")


def _print_json(obj) -> None:
    """Print strict JSON (RFC 8259: no NaN or Infinity; undefined numbers are null)."""
    from simulator.jsonout import dumps
    print(dumps(obj))


def _print_warnings(caught: list) -> None:
    """Show captured user warnings, one line each, on stderr."""
    for c in caught:
        if issubclass(c.category, UserWarning):
            err.print(f"[yellow]warning[/]: {escape(str(c.message))}", highlight=False)


def _doing(w, schedule: str, per_rank: bool) -> str:
    """The spinner's line while a step is simulated."""
    ranks = f", all {w.plan.gpus // w.plan.pp} ranks" if per_rank else ""
    return f"simulating {w.name} under {schedule}{ranks}"


@app.command()
@user_errors
def simulate(workload: str = typer.Argument(..., help="workload YAML"),
             schedule: Optional[str] = typer.Option(None, help="override the workload's schedule"),
             as_json: bool = typer.Option(False, "--json", help="print the JSON result"),
             per_rank: bool = typer.Option(False, "--per-rank", help="simulate every rank"),
             report: Optional[Path] = typer.Option(None, help="write an HTML report here"),
             trace: Optional[Path] = typer.Option(None, help="write a Perfetto/Chrome trace"),
             hardware: Optional[str] = HARDWARE, gpus: Optional[int] = GPUS,
             batch: Optional[int] = BATCH) -> None:
    """One step of a workload: per-op table for one layer, then the totals."""
    from simulator.step.whatif import simulate as run
    _outputs(report=report, trace=trace)
    w = load_workload(workload, hardware, gpus, batch)
    with err.status(_doing(w, schedule or w.schedule, per_rank)):   # shown on a terminal only
        res = run(w, schedule, per_rank=per_rank)
    _write_outputs([res], report, trace)
    if as_json:
        _print_json(res.to_json())
        return
    stdout.print(T.layer_table(res))
    if per_rank:
        spread, line = T.rank_spread(res)
        stdout.print(spread)
        stdout.print(line, highlight=False)
    _print_totals([res])
    if report:
        stdout.print(f"report written to {report}")


@app.command()
@user_errors
def compare(workload: str = typer.Argument(..., help="workload YAML"),
            schedules: str = typer.Option("sequential,scmoe,sbo,tbo",
                                          help="comma-separated schedule names"),
            as_json: bool = typer.Option(False, "--json", help="print a JSON list of results"),
            per_rank: bool = typer.Option(False, "--per-rank", help="simulate every rank"),
            report: Optional[Path] = typer.Option(None, help="write an HTML report here"),
            trace: Optional[Path] = typer.Option(None, help="write a Perfetto/Chrome trace"),
            hardware: Optional[str] = HARDWARE, gpus: Optional[int] = GPUS,
            batch: Optional[str] = typer.Option(
                None, "--batch", help="sequences per device, one or a list: 8,32,128 (a "
                "table per batch, each schedule's speedup over the first at that batch)")) -> None:
    """Several schedules of one workload side by side, with speedups over the first."""
    from simulator.step.whatif import resolve, simulate as run
    from simulator.engine.schedule import get_schedule
    _outputs(report=report, trace=trace)
    base_w = load_workload(workload, hardware, gpus)
    names = [s.strip() for s in schedules.split(",") if s.strip()]
    if not names:
        raise MoesimError("--schedules", "no schedule given", "e.g. --schedules sequential,sbo")
    for n in names:
        get_schedule(n)
    batches = _int_list(batch, "--batch") if batch is not None else [None]
    results, groups = [], []
    with err.status(_doing(base_w, names[0], per_rank)) as status:  # shown on a terminal only
        for b in batches:
            w = override(base_w, batch=b)
            r = resolve(w)
            group = []
            for i, n in enumerate(names):
                status.update(_doing(w, n, per_rank) + f" ({i + 1} of {len(names)})")
                group.append(run(w, n, per_rank=per_rank, resolved=r))
            groups.append((b, group))
            results += group
    _write_outputs(results, report, trace)
    if as_json:
        _print_json([dict(x.to_json(with_ops=False), batch_per_device=b,
                          speedup=group[0].step_time_s / x.step_time_s)
                     for b, group in groups for x in group])
        return
    if len(groups) > 1:
        for b, group in groups:
            stdout.print(T.totals_table(group, f"totals at batch {b} per device"))
        _print_totals([], notes_of=results)
    else:
        _print_totals(results)
    tie = T.tie_note(results)
    if tie:
        err.print(f"note: {tie}", highlight=False, soft_wrap=True)
    if report:
        stdout.print(f"report written to {report}")


def _print_totals(results, notes_of=None) -> None:
    if results:
        stdout.print(T.totals_table(results))
        for line in T.link_lines(results):
            stdout.print(line, highlight=False)
    for note in dict.fromkeys(n for r in (notes_of or results)[:1] for n in r.notes):
        err.print(f"[yellow]note[/]: {escape(note)}", highlight=False, soft_wrap=True)


def _int_list(text: str, option: str) -> list[int]:
    """A comma-separated list of positive integers, or a clear error."""
    try:
        out = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise MoesimError(option, f"{text!r} is not a list of whole numbers",
                          f"e.g. {option} 8,32,128") from None
    if not out or any(x <= 0 for x in out):
        raise MoesimError(option, f"{text!r} needs positive whole numbers",
                          f"e.g. {option} 8,32,128")
    return out


def _write_outputs(results: list, report: Optional[Path], trace: Optional[Path]) -> None:
    if report:
        from simulator.outputs.report import write_report
        write_report(results, report)
    if trace:
        from simulator.outputs.trace import write_trace
        write_trace(results, trace)
        err.print(f"trace written to {trace} (open in ui.perfetto.dev or chrome://tracing)")


@app.command()
@user_errors
def model(name: str = typer.Argument(..., help="zoo name or YAML path, or 'import'"),
          config: Optional[Path] = typer.Argument(None, help="HF config.json (with 'import')"),
          out_path: Optional[Path] = typer.Option(None, "--out", help="where to write the YAML"),
          force: bool = typer.Option(False, help="overwrite --out if it exists")) -> None:
    """`moesim model NAME`: parameter counts. `moesim model import CONFIG.json`: HF -> YAML."""
    if name == "import":
        from simulator.hf_import import import_hf_config, spec_to_yaml
        if config is None:
            raise MoesimError("CONFIG", "no config.json given",
                              "run `moesim model import path/to/config.json`")
        if out_path is not None:
            _outputs(out=out_path)
        spec = import_hf_config(config)
        text = spec_to_yaml(spec)
        if out_path is None:
            print(text, end="")
            return
        if out_path.exists() and not force:
            raise MoesimError("--out", f"{out_path} exists", "pass --force or another path")
        from simulator.atomic import write_text_atomic
        write_text_atomic(out_path, text, "--out")
        stdout.print(f"wrote {out_path}")
        return
    from simulator.graph.params import count_params
    from simulator.loading import load_model
    spec = load_model(name)
    c = count_params(spec)
    table = Table(title=f"{spec.name} ({spec.family}, {spec.num_layers} layers, {spec.layer_kind})")
    table.add_column("quantity")
    table.add_column("parameters", justify="right")
    table.add_row("total (excl. MTP)", f"{c.total / 1e9:.2f}B")
    table.add_row("activated per token", f"{c.activated / 1e9:.2f}B")
    if spec.moe and spec.moe.num_zero_experts:
        for k in (0, spec.moe.mean_real_experts, spec.moe.top_k):
            table.add_row(f"activated at {k:g} real experts",
                          f"{count_params(spec, k).activated / 1e9:.2f}B")
    table.add_row("routed experts (all layers)", f"{c.expert_total / 1e9:.2f}B")
    table.add_row("embedding + LM head", f"{c.embedding / 1e9:.2f}B")
    if c.mtp:
        table.add_row("MTP layers (extra)", f"{c.mtp / 1e9:.2f}B")
    stdout.print(table)


@app.command()
@user_errors
def serve(workload: str = typer.Argument(..., help="workload YAML with a serving block"),
          rate: Optional[float] = typer.Option(None, help="requests/s (overrides the YAML)"),
          duration: Optional[float] = typer.Option(None, help="seconds of arrivals"),
          sweep_batch: Optional[str] = typer.Option(
              None, "--sweep-batch", help="e.g. 8,16,32,64: throughput-interactivity curve"),
          sweep_concurrency: Optional[str] = typer.Option(
              None, "--sweep-concurrency", help="e.g. 1,8,64: one closed-loop run per number "
              "of clients (latency against load)"),
          sweep_rate: Optional[str] = typer.Option(
              None, "--sweep-rate", help="e.g. 1,2,4,8: one Poisson run per rate (req/s)"),
          schedules: str = typer.Option("sequential,sbo,tbo", help="schedules for --sweep-batch"),
          as_json: bool = typer.Option(False, "--json"),
          report: Optional[Path] = typer.Option(None, help="write an HTML report here"),
          hardware: Optional[str] = HARDWARE, gpus: Optional[int] = GPUS) -> None:
    """Request-level serving simulation: TTFT, TPOT, tokens/GPU/s, $ per million tokens."""
    from simulator.serving.batch_sweep import batch_sweep
    from simulator.serving.run import ServingSim
    _number(rate, "--rate")
    _number(duration, "--duration")
    _outputs(report=report)
    w = load_workload(workload, hardware, gpus)
    if sweep_concurrency or sweep_rate:
        _serve_load_sweep(w, sweep_concurrency, sweep_rate, as_json, report)
        return
    if sweep_batch:
        batches = _int_list(sweep_batch, "--sweep-batch")
        names = [x.strip() for x in schedules.split(",") if x.strip()]
        points = batch_sweep(w, batches, names)
        if report:
            from simulator.outputs.report import write_serving_report
            write_serving_report(None, points, report)
        if as_json:
            _print_json(points)
            return
        stdout.print(T.batch_sweep_table(w.name, w.context_length, points))
        return
    from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
    sim = ServingSim(w, rate=rate, duration=duration)
    with Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(),
                  TimeElapsedColumn(), console=err, transient=True) as bar:
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
    if report:
        from simulator.outputs.report import write_serving_report
        write_serving_report(res, None, report, m)
    if as_json:
        _print_json(m)
        return
    table, lines = T.serve_tables(m, cap)
    stdout.print(table)
    for line in lines:
        stdout.print(line, highlight=False)


def _serve_load_sweep(w, concurrency: Optional[str], rate: Optional[str], as_json: bool,
                      report: Optional[Path]) -> None:
    from simulator.serving.load_sweep import load_sweep
    if concurrency and rate:
        raise MoesimError("--sweep-concurrency/--sweep-rate", "both given", "pass one of them")
    if w.serving is None:
        raise MoesimError("serving", "the workload has no serving block",
                          "add `serving:` (see workloads/serving/)")
    kind = "concurrency" if concurrency else "rate"
    if concurrency:
        loads: list = _int_list(concurrency, "--sweep-concurrency")
    else:
        try:
            loads = [float(x) for x in rate.split(",") if x.strip()]
        except ValueError:
            raise MoesimError("--sweep-rate", f"{rate!r} is not a list of rates",
                              "e.g. --sweep-rate 1,2,4") from None
        for x in loads:
            _number(x, "--sweep-rate")
        if not loads:
            raise MoesimError("--sweep-rate", "no rate given", "e.g. --sweep-rate 1,2,4")
    with err.status(f"serving at {len(loads)} loads"):
        points = load_sweep(w, kind, loads)
    if report:
        from simulator.outputs.report import load_figures, write_figures
        write_figures(load_figures(points, kind), f"moesim serving: {w.name}, latency against "
                      f"{kind}", report)
    if as_json:
        _print_json(points)
        return
    stdout.print(T.load_sweep_table(w.name, kind, points))


@app.command()
@user_errors
def train(workload: str = typer.Argument(..., help="workload YAML with a training block"),
          tokens: Optional[str] = typer.Option(None, help="tokens to train: 20T, 800B, 1.5e12"),
          schedule: Optional[str] = typer.Option(None, help="override the layer schedule"),
          as_json: bool = typer.Option(False, "--json"),
          report: Optional[Path] = typer.Option(None, help="write an HTML report here"),
          trace: Optional[Path] = typer.Option(None, help="write one step's pipeline as a "
                                               "Perfetto / Chrome trace here"),
          hardware: Optional[str] = HARDWARE, gpus: Optional[int] = GPUS) -> None:
    """One training step simulated; MFU, tokens/day, days and $ to train."""
    from simulator.training.run import parse_tokens, train as run_train
    _outputs(report=report, trace=trace)
    w = load_workload(workload, hardware, gpus)
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
        _print_json(res.to_json())
        return
    stdout.print(T.train_table(res))


@app.command()
@user_errors
def sweep(spec_path: Path = typer.Argument(..., help="sweep YAML"),
          backend: str = typer.Option("local", help="local (process pool) or ray"),
          workers: int = typer.Option(2, help="local worker processes"),
          address: str = typer.Option("auto", help="Ray address: auto or HOST:PORT"),
          results: Optional[Path] = typer.Option(None, help="SQLite results file"),
          force: bool = typer.Option(False, help="discard results of another sweep definition"),
          report: Optional[Path] = typer.Option(None, help="write an HTML report here"),
          as_json: bool = typer.Option(False, "--json")) -> None:
    """Run a grid or list of what-ifs; resumable; summary, Pareto front and report."""
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                               TimeElapsedColumn, TimeRemainingColumn)
    from simulator.outputs.sweep import describe, expand, load_spec, pareto, run_sweep
    if workers <= 0:
        raise MoesimError("--workers", "must be at least 1", "pass --workers 2")
    if backend not in ("local", "ray"):
        raise MoesimError("--backend", f"unknown backend '{backend}'", "use local or ray")
    cores = os.cpu_count() or 1
    if backend == "local" and workers > cores:
        err.print(f"note: --workers {workers} capped at this machine's {cores} cores",
                  highlight=False)
        workers = cores
    _outputs(report=report)
    spec = load_spec(spec_path)
    points = expand(spec, spec_path.parent)
    err.print(f"sweep {escape(spec.name)}: {describe(spec, len(points))}", highlight=False,
              soft_wrap=True)
    with Progress(TextColumn("sweep"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  TextColumn("ETA"), TimeRemainingColumn(), console=err, transient=True) as bar:
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
        _print_json({"results": str(path), "points": rows, "pareto": [r["key"] for r in front]})
        return
    stdout.print(T.sweep_table(spec.name, rows, {r["key"] for r in front}, str(path)))
    for r in rows:
        if r["error"]:
            err.print(f"[yellow]point {escape(str(r['overrides']))} failed[/]: {escape(r['error'])}")


@app.command()
@user_errors
def plan(target: str = typer.Argument(..., help="a model (zoo name or YAML) or a workload YAML "
                                       "whose model, precision and runtime are kept"),
         gpus: str = typer.Option("8", help="GPU counts to try, e.g. 8,16,32"),
         hardware: str = typer.Option("h200-sxm", help="profiles to try, e.g. h100-sxm,b200-sxm"),
         isl: int = typer.Option(1024, help="input tokens per request"),
         osl: int = typer.Option(1024, help="output tokens per request"),
         ttft_ms: float = typer.Option(2000.0, "--ttft-ms", help="TTFT SLO"),
         tpot_ms: float = typer.Option(50.0, "--tpot-ms", help="TPOT SLO"),
         runtime: Optional[str] = typer.Option(None, help="sglang, trtllm or vllm kernels"),
         workers: int = typer.Option(2, help="local worker processes"),
         as_json: bool = typer.Option(False, "--json"),
         report: Optional[Path] = typer.Option(None, help="write an HTML report here"),
         out_dir: Optional[Path] = typer.Option(None, "--out-dir", help="write every Pareto "
                                                "point as a runnable workload YAML here")) -> None:
    """The best deployment under a latency SLO: a searched Pareto front and its cost."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
    from simulator.outputs.plan import Question, search
    _outputs(report=report)
    q = Question(**_plan_target(target), hardware=tuple(_names(hardware, "--hardware")),
                 gpus=tuple(_int_list(gpus, "--gpus")), isl=isl, osl=osl, ttft_ms=ttft_ms,
                 tpot_ms=tpot_ms, runtime=runtime)
    with Progress(TextColumn("plan"), BarColumn(), MofNCompleteColumn(), console=err,
                  transient=True) as bar:
        task = bar.add_task("candidates", total=None)
        res = search(q, max(1, workers), lambda d, t: bar.update(task, completed=d, total=t))
    if out_dir is not None:
        from simulator.outputs.plan import write_points
        write_points(res["front"], out_dir)
    if report:
        from simulator.outputs.report import plan_figures, write_figures
        write_figures(plan_figures(res), f"moesim plan: {q.model}", report)
    if as_json:
        _print_json({k: v for k, v in res.items() if k != "points"})
        return
    for table in T.plan_tables(res):
        stdout.print(table)
    for line in T.plan_lines(res):
        stdout.print(line, highlight=False, soft_wrap=True)


def _names(text: str, option: str) -> list[str]:
    out = [x.strip() for x in text.split(",") if x.strip()]
    if not out:
        raise MoesimError(option, "no name given", f"e.g. {option} h200-sxm")
    return out


def _plan_target(target: str) -> dict:
    """A plan's model and the fields a workload file keeps (precision, runtime, routing)."""
    from pathlib import Path as P
    from simulator.loading import load_model, read_yaml_mapping, resolve_paths
    path = P(target)
    if path.suffix in (".yaml", ".yml") and path.is_file():
        data = read_yaml_mapping(path)
        if "plan" in data and "model" in data:          # a workload
            data = resolve_paths(data, path.resolve().parent)
            load_model(data["model"])
            return {"model": data["model"], "base": data}
    load_model(target)
    return {"model": target}


@app.command()
@user_errors
def calibrate(device: str = typer.Option("cpu", help="cpu or cuda; with --from-measurements "
                                                  "the device folder name (h800, h20 ...)"),
              from_measurements: Optional[Path] = typer.Option(
                  None, "--from-measurements", help="fit GEMM tables from measured kernel "
                  "times under this folder (gemm/DEVICE/data.csv, grouped_gemm/...)"),
              from_aiconfigurator: Optional[str] = typer.Option(
                  None, "--from-aiconfigurator", metavar="SYSTEM", help="write a profile whose "
                  "measured kernel tables come from aiconfigurator-core's data for SYSTEM "
                  "(h100_sxm, h200_sxm, b200_sxm, gb200 ...; needs the kernels extra)"),
              framework: str = typer.Option("sglang", help="with --from-aiconfigurator: "
                                            "sglang, trtllm or vllm"),
              version: Optional[str] = typer.Option(
                  None, help="with --from-aiconfigurator: the framework version (default: "
                  "the newest with GEMM tables)"),
              base: Optional[str] = typer.Option(
                  None, help="with --from-measurements or --from-aiconfigurator: the profile "
                  "whose other numbers are kept (default: the device's or system's own)"),
              quick: bool = typer.Option(False, "--quick",
                                         help="small grid (about two minutes on 2 cores)"),
              full: bool = typer.Option(False, "--full", help="large grid"),
              ranks: int = typer.Option(2, help="processes for the collective benchmarks"),
              out: Optional[Path] = typer.Option(None, help="profile YAML to write"),
              name: Optional[str] = typer.Option(None, help="profile name (default DEVICE-measured)"),
              price: Optional[float] = typer.Option(
                  None, help="$ per device-hour to record (this device's calibration; default "
                  "0.05)"),
              force: bool = typer.Option(False, help="overwrite --out")) -> None:
    """Microbenchmark this device (or read measured kernel times) and fit a hardware profile,
    with the held-out error of every fit."""
    import warnings
    _number(price, "--price", allow_low=True)
    if price is not None and (from_aiconfigurator or from_measurements):
        raise MoesimError("--price", "a profile fitted from measurements keeps its base "
                          "profile's sourced price", "leave --price out, then set "
                          "price_per_gpu_hour in the written profile with its source")
    if from_aiconfigurator is not None:
        _calibrate_from_aiconfigurator(from_aiconfigurator, framework, version, base, out)
        return
    if from_measurements is not None:
        _calibrate_from_files(from_measurements, device, base or device, out, force)
        return
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
    if quick and full:
        raise MoesimError("--quick/--full", "both given", "pass one of them")
    if ranks < 1:
        raise MoesimError("--ranks", f"{ranks} processes cannot run a benchmark",
                          "pass --ranks 1 or more")
    _outputs(out=out)
    from executor.calibrate import calibrate as run_calibration
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with Progress(TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn(),
                      console=err, transient=True) as bar:
            task = bar.add_task("calibrating", total=5)
            path, data = run_calibration(
                device=device, mode="full" if full else "quick", ranks=ranks, out=out,
                force=force, price=0.05 if price is None else price, name=name,
                progress=lambda label, i, n: bar.update(task, description=label, completed=i,
                                                        total=n))
    _print_warnings(caught)
    stdout.print(T.fits_table(f"calibrated {data['gpu']} -> {path}", data))
    stdout.print(f"peak {data['peak_bf16_flops']['value'] / 1e9:.1f} GFLOP/s, memory "
                f"{data['hbm_bandwidth_Bps']['value'] / 1e9:.1f} GB/s, all-to-all "
                f"{data['nvlink']['bandwidth_Bps']['value'] / 1e9:.2f} GB/s, comm takes "
                f"{data['comm_sm_fraction']['value']:.0%} of compute", highlight=False)


def _calibrate_from_aiconfigurator(system: str, framework: str, version: Optional[str],
                                   base: Optional[str], out: Optional[Path]) -> None:
    from simulator.outputs.aiconfigurator_profile import (FOLDS_NOTE,
                                                          profile_from_aiconfigurator)
    out = out or Path(f"{system}-{framework}.yaml")
    _outputs(out=out)
    with err.status(f"reading {system} {framework} tables"):
        path, tables, reports, notes = profile_from_aiconfigurator(system, framework, version,
                                                                   out, base)
    stdout.print(T.import_table(f"{system} {framework}: measured kernels -> {tables}", reports))
    stdout.print(FOLDS_NOTE, highlight=False)
    for n in notes:
        stdout.print(f"note: {n}", highlight=False)
    stdout.print(f"profile written: {path}", highlight=False)


def _calibrate_from_files(root: Path, device: str, base: str, out: Optional[Path],
                          force: bool) -> None:
    from simulator.outputs.kernel_profile import profile_from_measurements
    if out is not None:
        _outputs(out=out)
    path, data, not_fitted = profile_from_measurements(root, device, base, out, force)
    stdout.print(T.fits_table(f"{data['gpu']}: fitted from {root} -> {path}", data))
    if not_fitted:
        stdout.print(f"not fitted (kept from {base}): {'; '.join(not_fitted)}",
                     highlight=False)


@app.command()
@user_errors
def validate(workload: str = typer.Argument(..., help="workload YAML (a shortcut MoE model)"),
             profile: str = typer.Option("cpu-2core-example", help="hardware profile to predict"),
             ranks: int = typer.Option(2, help="executor processes (EP degree)"),
             repeats: int = typer.Option(10, help="timed repeats after warm-up (both "
                                              "schedules alternate in every repeat)"),
             report: Optional[Path] = typer.Option(None, help="write an HTML report here"),
             as_json: bool = typer.Option(False, "--json")) -> None:
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
    _outputs(report=report)
    w = load_workload(workload)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with err.status("running the executor and the simulator"):
            v = run_validate(w, profile, ranks, repeats)
    _print_warnings(caught)
    if report:
        from simulator.outputs.report import write_report
        write_report(report_results(v), report)
    public = {k: x for k, x in v.items() if not k.startswith("_")}
    if as_json:
        _print_json(public)
        return
    table = Table(title=f"{w.name}: measured vs predicted ({profile}, {ranks} ranks)")
    for col in ("schedule", "layer", "measured us", "predicted us", "error"):
        table.add_column(col, justify="left" if col == "schedule" else "right")
    for x in v["layers"]:
        table.add_row(x["schedule"], str(x["layer"]), T.fmt(x["measured_us"]),
                      T.fmt(x["predicted_us"]), f"{x['error']:+.1%}")
    stdout.print(table)
    ops = Table(title="ops, sequential schedule (median over ranks)")
    for col in ("op", "kind", "measured us", "predicted us", "error"):
        ops.add_column(col, justify="left" if col in ("op", "kind") else "right")
    for x in v["ops"]:
        ops.add_row(x["name"], x["kind"], T.fmt(x["measured_us"]), T.fmt(x["predicted_us"]),
                    f"{x['error']:+.1%}" if x["error"] is not None else "-")
    stdout.print(ops)
    lo, hi = v["speedup_measured_ci95"]
    noise = "; it spans 1: noise hides the sign here" if lo <= 1 <= hi else ""
    speed = ", ".join(f"{k} x{r:.2f}" for k, r in v["in_run"]["machine_speed"].items())
    stdout.print(f"per-layer MAPE {v['in_run']['mape']:.1%} with the profile scaled to this run's "
                 f"probes (time measured/profiled: {speed}); {v['mape']:.1%} with {profile} as "
                 "shipped", highlight=False)
    stdout.print(f"scmoe over sequential: measured "
              f"{v['speedup_measured']:.3f}x (95% interval {lo:.3f}-{hi:.3f}{noise}), "
              f"predicted {v['speedup_predicted']:.3f}x", highlight=False)


profile_app = typer.Typer(help="Inspect hardware profiles.", no_args_is_help=True,
                          rich_markup_mode=None)
app.add_typer(profile_app, name="profile")


@app.command()
@user_errors
def profiles() -> None:
    """List the shipped hardware profiles (read, not validated: `moesim profile show NAME`
    checks one, and every command that uses a profile validates it)."""
    from simulator.loading import PROFILES_DIR, known_names, read_yaml_mapping
    table = Table(title="hardware profiles (hardware_profiles/)")
    for col in ("name", "gpu", "BF16 TFLOP/s", "HBM GB", "HBM TB/s", "scale-up GB/s",
                "NIC GB/s", "$/GPU-h"):
        table.add_column(col, justify="left" if col in ("name", "gpu") else "right")
    for name in known_names(PROFILES_DIR):
        d = read_yaml_mapping(PROFILES_DIR / f"{name}.yaml")
        cells = [T.sourced_cell(d, keys, scale, fmt) for keys, scale, fmt in (
            (("peak_bf16_flops",), 1e12, None), (("hbm_bytes",), 1e9, ".0f"),
            (("hbm_bandwidth_Bps",), 1e12, ".2f"), (("nvlink", "bandwidth_Bps"), 1e9, ".0f"),
            (("nic", "bandwidth_Bps"), 1e9, ".0f"), (("price_per_gpu_hour",), 1.0, ".2f"))]
        table.add_row(name, str(d.get("gpu", "?")), *cells)
    stdout.print(table)


@app.command()
@user_errors
def runtimes() -> None:
    """List the training framework presets (hardware_profiles/runtimes/training/) with the
    host launch time they charge each layer and its source."""
    stdout.print(T.runtimes_table())


@profile_app.command("show")
@user_errors
def profile_show(name: str = typer.Argument(..., help="profile name or YAML path")) -> None:
    """Peaks, effective values and the source of every number."""
    from simulator.loading import load_profile
    p = load_profile(name)
    table = Table(title=f"{p.name}: {p.gpu}")
    table.add_column("field")
    table.add_column("value", justify="right")
    table.add_column("source", overflow="fold")
    for key, value, source in T.profile_rows(p.model_dump()):
        table.add_row(key, value, source)
    stdout.print(table)


@app.command("router-bias")
@user_errors
def router_bias(steps: int = typer.Option(400, help="controller steps"),
                tokens: int = typer.Option(2048, help="tokens routed per step"),
                target: float = typer.Option(8.0, help="target real experts per token (K_e)"),
                top_k: int = typer.Option(12, "--top-k"), ffn_experts: int = typer.Option(512),
                zero_experts: int = typer.Option(256), mu: float = typer.Option(0.2, help="P gain"),
                ki: float = typer.Option(0.0, help="I gain"), kd: float = typer.Option(0.0, help="D gain"),
                skew: float = typer.Option(1.0, help="log-normal sigma of expert affinity"),
                window: int = typer.Option(40, help="steps of load averaging"),
                seed: int = typer.Option(0),
                plot: Optional[Path] = typer.Option(
                    None, help="write the plotly figure (HTML) here; none = no file"),
                as_json: bool = typer.Option(False, "--json")) -> None:
    """Simulate LongCat-Flash's router-bias controller over synthetic logits."""
    from rich.progress import Progress
    from simulator.atomic import write_text_atomic
    from simulator.router_bias import BiasConfig, bias_figure, simulate_bias
    cfg = BiasConfig(n_ffn=ffn_experts, n_zero=zero_experts, top_k=top_k, target_real=target,
                     tokens_per_step=tokens, steps=steps, mu=mu, ki=ki, kd=kd, skew=skew,
                     window=window, seed=seed)
    cfg.check()
    _outputs(plot=plot)
    with Progress(console=err, transient=True) as bar:
        task = bar.add_task("routing steps", total=steps)
        trace = simulate_bias(cfg, progress=lambda _s: bar.advance(task))
    if plot is not None:
        write_text_atomic(plot, bias_figure(trace, cfg).to_html(include_plotlyjs=True), "--plot")
    settled = trace.first_step_settled(target)
    if as_json:
        _print_json({"settled_step": settled, "mean_real": trace.mean_real.tolist(),
                          "std_real": trace.std_real.tolist(),
                          "load_max_over_mean": trace.load_max_over_mean.tolist()})
        return
    table = Table(title=f"router bias: target {target} real experts of top-{top_k}")
    for col in ("step", "mean real", "std real", "max/mean load"):
        table.add_column(col, justify="right")
    marks = sorted({0, *range(steps // 10 - 1, steps, max(1, steps // 10)), steps - 1})
    for i in marks:
        table.add_row(str(i + 1), f"{trace.mean_real[i]:.2f}", f"{trace.std_real[i]:.2f}",
                      f"{trace.load_max_over_mean[i]:.2f}")
    stdout.print(table)
    stdout.print(f"settled (mean within 0.2 of target and max/mean load < 1.3 from then on): "
              f"{'step ' + str(settled + 1) if settled is not None else 'not within ' + str(steps) + ' steps'}")
    if plot is not None:
        stdout.print(f"figure written to {plot}")
    else:
        stdout.print("pass --plot router-bias.html for the interactive figure", highlight=False)


SCHEMAS = ("workload", "model", "profile")


@app.command()
def schema(kind: str = typer.Argument("workload", help="one of: workload, model, profile")) -> None:
    """Print the JSON Schema of a YAML file kind (workload, model or profile)."""
    from simulator.schema import HardwareProfile, ModelSpec, Workload
    classes = {"workload": Workload, "model": ModelSpec, "profile": HardwareProfile}
    if kind not in classes:
        err.print(f"[bold red]error[/]: KIND: unknown schema {kind!r}. Fix: use one of "
                  f"{', '.join(SCHEMAS)}, e.g. `moesim schema workload`", highlight=False)
        raise typer.Exit(2)
    print(json.dumps(classes[kind].model_json_schema(), indent=2))


def main() -> None:
    """Entry point for `python cli.py`."""
    app()


if __name__ == "__main__":
    sys.exit(main())
