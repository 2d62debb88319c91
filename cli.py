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

from simulator.schema import HardwareProfile, ModelSpec, Workload
from simulator.errors import MoesimError
from simulator.loading import load_model, load_workload
from simulator.graph.params import count_params

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Simulate Mixture-of-Experts training and serving clusters.")
TOP_ROWS = 25              # sweep rows printed (all are in --json and the results file)
out = Console(width=max(Console().width, 150))
err = Console(stderr=True)


def user_errors(fn: Callable) -> Callable:
    """Print MoesimError as one paragraph and exit 2, never a traceback; Ctrl-C exits 130."""
    @wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except MoesimError as exc:
            err.print(f"[bold red]error[/]: {escape(exc.render())}", highlight=False, soft_wrap=True)
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


def _print_json(obj) -> None:
    """Print strict JSON (RFC 8259: no NaN or Infinity; undefined numbers are null)."""
    from simulator.jsonout import dumps
    print(dumps(obj))


def _print_warnings(caught: list) -> None:
    """Show captured user warnings, one line each, on stderr."""
    for c in caught:
        if issubclass(c.category, UserWarning):
            err.print(f"[yellow]warning[/]: {escape(str(c.message))}", highlight=False)


def _fmt(x: Optional[float], nd: int = 1) -> str:
    return "-" if x is None else f"{x:,.{nd}f}"


def _sig(x: float) -> str:
    """Three significant digits without exponents: 1,307 / 989 / 2.04 / 0.117."""
    return f"{x:,.0f}" if abs(x) >= 100 else f"{x:.3g}"


def _public(metrics: dict, with_ops: bool = True) -> dict:
    return metrics if with_ops else {k: v for k, v in metrics.items() if k != "ops"}


@app.command()
@user_errors
def simulate(workload: str = typer.Argument(..., help="workload YAML"),
             schedule: Optional[str] = typer.Option(None, help="override the workload's schedule"),
             as_json: bool = typer.Option(False, "--json", help="print the JSON result"),
             per_rank: bool = typer.Option(False, "--per-rank", help="simulate every rank"),
             report: Optional[Path] = typer.Option(None, help="write an HTML report here"),
             trace: Optional[Path] = typer.Option(None, help="write a Perfetto/Chrome trace")) -> None:
    """One step of a workload: per-op table for one layer, then the totals."""
    from simulator.step.whatif import simulate as run
    _outputs(report=report, trace=trace)
    w = load_workload(workload)
    res = run(w, schedule, per_rank=per_rank)
    _write_outputs([res], report, trace)
    if as_json:
        _print_json(res.metrics)
        return
    _print_layer_table(res)
    if per_rank:
        _print_rank_spread(res)
    _print_totals([res])
    if report:
        out.print(f"report written to {report}")


@app.command()
@user_errors
def compare(workload: str = typer.Argument(..., help="workload YAML"),
            schedules: str = typer.Option("sequential,scmoe,sbo,tbo",
                                          help="comma-separated schedule names"),
            as_json: bool = typer.Option(False, "--json", help="print a JSON list of results"),
            per_rank: bool = typer.Option(False, "--per-rank", help="simulate every rank"),
            report: Optional[Path] = typer.Option(None, help="write an HTML report here"),
            trace: Optional[Path] = typer.Option(None, help="write a Perfetto/Chrome trace")) -> None:
    """Several schedules of one workload side by side, with speedups over the first."""
    from simulator.step.whatif import resolve, simulate as run
    from simulator.engine.schedule import get_schedule
    _outputs(report=report, trace=trace)
    w = load_workload(workload)
    names = [s.strip() for s in schedules.split(",") if s.strip()]
    if not names:
        raise MoesimError("--schedules", "no schedule given", "e.g. --schedules sequential,sbo")
    for n in names:
        get_schedule(n)
    r = resolve(w)
    results = [run(w, n, per_rank=per_rank, resolved=r) for n in names]
    _write_outputs(results, report, trace)
    if as_json:
        base = results[0].metrics["step_time_ms"]
        _print_json([dict(_public(x.metrics, False), speedup=base / x.metrics["step_time_ms"])
                     for x in results])
        return
    _print_totals(results)
    _explain_ties(results)
    if report:
        out.print(f"report written to {report}")


def _explain_ties(results) -> None:
    """Say why two schedules print the same row (scmoe and sbo often do)."""
    by = {x.metrics["schedule"]: x.metrics["step_time_ms"] for x in results}
    if "scmoe" in by and "sbo" in by and math.isclose(by["scmoe"], by["sbo"], rel_tol=1e-9):
        err.print("note: scmoe and sbo time the same here. Both overlap the shortcut MoE's "
                  "all-to-all with dense compute; sbo fixes the experts right after the next "
                  "attention's QKV projection (LongCat-Flash's four stages), while scmoe picks "
                  "the slot that best balances compute against dispatch and combine, and here "
                  "that is the same slot. They differ when dispatch and combine are unequal "
                  "enough to pull the slot elsewhere (e.g. a slow NIC or a large batch).",
                  highlight=False, soft_wrap=True)


def _print_rank_spread(res) -> None:
    """Per-rank view of a --per-rank run: when each rank finishes the step, slowest first."""
    import numpy as np
    tl = res.timeline
    ends = tl.end_s.max(axis=1) * 1e3
    busy = np.array([sum(tl.end_s[r, i] - tl.start_s[r, i] for i, op in enumerate(tl.ops)
                         if not op.is_comm) for r in range(ends.size)]) * 1e3
    order = np.argsort(-ends, kind="stable")
    table = Table(title=f"per rank: {ends.size} ranks, step end min {ends.min():.3f} / median "
                        f"{float(np.median(ends)):.3f} / max {ends.max():.3f} ms")
    for col in ("rank", "step end ms", "compute busy ms", "waiting ms"):
        table.add_column(col, justify="right")
    shown = list(order[:5]) + ([int(order[-1])] if ends.size > 5 else [])
    for r in shown:
        table.add_row(str(int(r)), f"{ends[r]:.3f}", f"{busy[r]:.3f}", f"{ends[r] - busy[r]:.3f}")
    out.print(table)
    out.print(f"slowest 5 ranks and the fastest shown; the spread max/min is "
              f"{ends.max() / ends.min():.4f}", highlight=False)


def _write_outputs(results: list, report: Optional[Path], trace: Optional[Path]) -> None:
    if report:
        from simulator.outputs.report import write_report
        write_report(results, report)
    if trace:
        from simulator.outputs.trace import write_trace
        write_trace(results, trace)
        err.print(f"trace written to {trace} (open in ui.perfetto.dev or chrome://tracing)")


def _print_layer_table(res) -> None:
    m, tl = res.metrics, res.timeline
    layer = m["representative_layer"]
    idx = [i for i, op in enumerate(tl.ops) if op.layer == layer]
    t0 = min(tl.start_s[0, i] for i in idx)
    table = Table(title=f"{m['workload']}: layer {layer} under {m['schedule']} "
                        f"({m['model']} on {m['hardware']})")
    for col in ("op", "kind", "stream", "start us", "us", "alone us", "GFLOP", "MB"):
        table.add_column(col, justify="left" if col in ("op", "kind", "stream") else "right")
    for i in sorted(idx, key=lambda i: (tl.start_s[0, i], i)):
        op = tl.ops[i]
        table.add_row(op.name, op.kind, tl.streams[i], _fmt((tl.start_s[0, i] - t0) * 1e6),
                      _fmt((tl.end_s[0, i] - tl.start_s[0, i]) * 1e6),
                      _fmt(tl.standalone_s[i] * 1e6), _fmt(op.flops / 1e9, 2),
                      _fmt(op.bytes / 1e6, 2))
    out.print(table)


def _print_totals(results) -> None:
    table = Table(title="totals")
    cols = ["schedule", "layer us", "step ms", "TPOT ms", "tok/GPU/s", "exposed comm us",
            "hidden comm us", "$/M out", "speedup"]
    for c in cols:
        table.add_column(c, justify="left" if c == "schedule" else "right")
    base = results[0].metrics["step_time_ms"]
    for r in results:
        m = r.metrics
        table.add_row(m["schedule"], _fmt(m["layer_time_us"]), _fmt(m["step_time_ms"], 2),
                      _fmt(m["tpot_ms"], 2), _fmt(m["tokens_per_gpu_s"], 0),
                      _fmt(m["exposed_comm_us"], 0), _fmt(m["hidden_comm_us"], 0),
                      _fmt(m["cost_per_million_output_tokens"], 3),
                      f"{base / m['step_time_ms']:.2f}x")
    out.print(table)
    for r in results:
        m = r.metrics
        links = ", ".join(f"{k} {v['utilisation']:.0%}" for k, v in m.get("links", {}).items())
        ep = m.get("ep")
        line = f"{m['schedule']}: link utilisation (slowest rank) {links or '-'}"
        if ep:
            line += (f"; EP {ep['kernel']} kernel, rank imbalance {ep['imbalance']:.2f} "
                     f"(max/mean expert rows), expert imbalance {ep['expert_imbalance']:.2f}, "
                     f"real experts/token {ep['real_experts_mean']:.2f} +- "
                     f"{ep['real_experts_std']:.2f}")
        out.print(line, highlight=False)
    for note in results[0].metrics["notes"]:
        err.print(f"[yellow]note[/]: {escape(note)}", highlight=False, soft_wrap=True)


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
        out.print(f"wrote {out_path}")
        return
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
    out.print(table)


@app.command()
@user_errors
def serve(workload: str = typer.Argument(..., help="workload YAML with a serving block"),
          rate: Optional[float] = typer.Option(None, help="requests/s (overrides the YAML)"),
          duration: Optional[float] = typer.Option(None, help="seconds of arrivals"),
          sweep_batch: Optional[str] = typer.Option(
              None, "--sweep-batch", help="e.g. 8,16,32,64: throughput-interactivity curve"),
          schedules: str = typer.Option("sequential,sbo,tbo", help="schedules for --sweep-batch"),
          as_json: bool = typer.Option(False, "--json"),
          report: Optional[Path] = typer.Option(None, help="write an HTML report here")) -> None:
    """Request-level serving simulation: TTFT, TPOT, tokens/GPU/s, $ per million tokens."""
    from simulator.serving.batch_sweep import batch_sweep
    from simulator.serving.run import ServingSim
    _number(rate, "--rate")
    _number(duration, "--duration")
    _outputs(report=report)
    w = load_workload(workload)
    if sweep_batch:
        try:
            batches = [int(x) for x in sweep_batch.split(",") if x.strip()]
        except ValueError:
            raise MoesimError("--sweep-batch", f"'{sweep_batch}' is not a list of integers",
                              "write e.g. --sweep-batch 8,16,32,64") from None
        if not batches or min(batches) <= 0:
            raise MoesimError("--sweep-batch", "needs positive batch sizes", "e.g. 8,16,32")
        names = [x.strip() for x in schedules.split(",") if x.strip()]
        points = batch_sweep(w, batches, names)
        if report:
            from simulator.outputs.report import write_serving_report
            write_serving_report(None, points, report)
        if as_json:
            _print_json(points)
            return
        table = Table(title=f"{w.name}: throughput vs interactivity (context {w.context_length})")
        for col in ("schedule", "batch/device", "tok/s/user", "tok/GPU/s", "TPOT ms", "$/M out", "note"):
            table.add_column(col, justify="left" if col in ("schedule", "note") else "right")
        for p in points:
            table.add_row(p["schedule"], str(p["batch_per_device"]), _fmt(p["tokens_per_s_per_user"]),
                          _fmt(p["tokens_per_gpu_s"], 0), _fmt(p["tpot_ms"], 2),
                          _fmt(p["cost_per_million_output_tokens"], 3), p["note"] or "")
        out.print(table)
        return
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
    sim = ServingSim(w, rate=rate, duration=duration)
    with Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(),
                  console=err, transient=True) as bar:
        bar.add_task("checking capacity and simulating step shapes", total=None)
        cap = sim.capacity_rps()
        res = sim.run()
    m = dict(res.metrics, capacity_rps=cap)
    if report:
        from simulator.outputs.report import write_serving_report
        write_serving_report(res, None, report)
    if as_json:
        _print_json(m)
        return
    table = Table(title=f"{w.name}: {m['requests']['arrived']} requests, {m['mode']}")
    for col in ("metric", "p50", "p90", "p99"):
        table.add_column(col, justify="left" if col == "metric" else "right")
    for key in ("ttft_ms", "tpot_ms", "e2e_ms"):
        table.add_row(key, *(_fmt(m[key][p]) for p in ("p50", "p90", "p99")))
    out.print(table)
    out.print(f"tokens/s per user {_fmt(m['tokens_per_s_per_user'])}; decode tokens/GPU/s "
              f"{_fmt(m['decode_tokens_per_gpu_s'], 0)}; prefill tokens/GPU/s "
              f"{_fmt(m['prefill_tokens_per_gpu_s'], 0)}", highlight=False)
    out.print(f"$ per million output tokens: {_fmt(m['cost_per_million_output_tokens'], 3)} "
              f"(decode GPUs only), {_fmt(m['cost_per_million_output_tokens_all_gpus'], 3)} "
              f"(all GPUs, prefill included); $ per million input tokens (prefill GPUs): "
              f"{_fmt(m['cost_per_million_input_tokens'], 3)}", highlight=False)
    r = m["requests"]
    out.print(f"requests: {r['arrived']} arrived, {r['finished']} finished, {r['rejected']} rejected, "
              f"{r['preempted']} preemptions; goodput {m['goodput_rps']:.1f} req/s under SLO "
              f"TTFT {m['slo']['ttft_ms']:.0f} ms / TPOT {m['slo']['tpot_ms']:.0f} ms; "
              f"KV utilisation mean {m['kv_utilisation']['mean']:.0%}, max "
              f"{m['kv_utilisation']['max']:.0%}; capacity {cap:.1f} req/s", highlight=False)


@app.command()
@user_errors
def train(workload: str = typer.Argument(..., help="workload YAML with a training block"),
          tokens: Optional[str] = typer.Option(None, help="tokens to train: 20T, 800B, 1.5e12"),
          schedule: Optional[str] = typer.Option(None, help="override the layer schedule"),
          as_json: bool = typer.Option(False, "--json"),
          report: Optional[Path] = typer.Option(None, help="write an HTML report here")) -> None:
    """One training step simulated; MFU, tokens/day, days and $ to train."""
    from simulator.training.run import parse_tokens, train as run_train
    _outputs(report=report)
    w = load_workload(workload)
    if schedule:
        from simulator.engine.schedule import get_schedule
        get_schedule(schedule)
        w = w.variant(schedule=schedule)
    m = run_train(w, parse_tokens(tokens) if tokens is not None else None)
    if report:
        from simulator.outputs.report import training_figure, write_figures
        write_figures([training_figure(m)], f"moesim training: {m['workload']}", report)
    if as_json:
        _print_json(m)
        return
    table = Table(title=f"{m['workload']}: {m['model']} on {m['gpus']} x {m['hardware']}, "
                        f"{m['schedule']} layers, {m['pipeline']} pipeline")
    table.add_column("quantity")
    table.add_column("value", justify="right")
    rows = [("step time", f"{m['step_time_s']:.2f} s"), ("MFU", f"{m['mfu']:.1%}"),
            ("tokens/day", f"{m['tokens_per_day'] / 1e9:.1f} B"),
            ("exposed communication", f"{m['exposed_comm_fraction']:.1%} of the step"),
            ("pipeline bubble", f"{m['bubble_fraction']:.1%}"),
            ("peak memory per GPU", f"{m['peak_memory_gb']:.1f} GB"),
            ("micro-batches per step", str(m["micro_batches"])),
            (f"days to train {m['tokens_to_train'] / 1e12:g}T tokens", f"{m['days_to_train']:.1f}"),
            ("cost", f"${m['cost_usd'] / 1e6:.2f} M")]
    for k, v in rows:
        table.add_row(k, v)
    out.print(table)


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
    from simulator.outputs.sweep import load_spec, pareto, run_sweep
    if workers <= 0:
        raise MoesimError("--workers", "must be at least 1", "pass --workers 2")
    cores = os.cpu_count() or 1
    if backend == "local" and workers > cores:
        err.print(f"note: --workers {workers} capped at this machine's {cores} cores",
                  highlight=False)
        workers = cores
    _outputs(report=report)
    spec = load_spec(spec_path)
    with Progress(TextColumn("sweep"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  TextColumn("ETA"), TimeRemainingColumn(), console=err, transient=True) as bar:
        task = bar.add_task("points", total=None)
        rows, path = run_sweep(spec, spec_path.parent, backend=backend, workers=workers,
                               address=address, force=force, results=results,
                               progress=lambda d, t: bar.update(task, completed=d, total=t))
    front = pareto(rows)
    if report:
        from simulator.outputs.report import sweep_figure, write_figures
        write_figures([sweep_figure(rows, front)], f"moesim sweep: {spec.name}", report)
    if as_json:
        _print_json({"results": str(path), "points": rows, "pareto": [r["key"] for r in front]})
        return
    ok = [r for r in rows if r["metrics"]]
    shown = min(len(ok), TOP_ROWS)
    top = f"; the best {shown} by tok/GPU/s shown (--json for all)" if shown < len(ok) else ""
    table = Table(title=f"sweep {spec.name}: {len(rows)} points ({len(rows) - len(ok)} failed), "
                        f"results in {path}{top}")
    fields = sorted({k for r in rows for k in r["overrides"]})
    for c in fields + ["step ms", "TPOT ms", "tok/GPU/s", "$/M out", "Pareto"]:
        table.add_column(c, justify="left" if c in fields else "right")
    keys = {r["key"] for r in front}
    for r in sorted(ok, key=lambda r: -(r["metrics"].get("tokens_per_gpu_s") or 0))[:TOP_ROWS]:
        m = r["metrics"]
        table.add_row(*[str(r["overrides"].get(f, "")) for f in fields],
                      _fmt(m.get("step_time_ms"), 2), _fmt(m.get("tpot_ms"), 2),
                      _fmt(m.get("tokens_per_gpu_s"), 0),
                      _fmt(m.get("cost_per_million_output_tokens"), 3),
                      "*" if r["key"] in keys else "")
    out.print(table)
    for r in rows:
        if r["error"]:
            err.print(f"[yellow]point {escape(str(r['overrides']))} failed[/]: {escape(r['error'])}")


@app.command()
@user_errors
def calibrate(device: str = typer.Option("cpu", help="cpu or cuda"),
              quick: bool = typer.Option(False, "--quick",
                                         help="small grid (about two minutes on 2 cores)"),
              full: bool = typer.Option(False, "--full", help="large grid"),
              ranks: int = typer.Option(2, help="processes for the collective benchmarks"),
              out: Optional[Path] = typer.Option(None, help="profile YAML to write"),
              name: Optional[str] = typer.Option(None, help="profile name (default DEVICE-measured)"),
              price: float = typer.Option(0.05, help="$ per device-hour to record"),
              force: bool = typer.Option(False, help="overwrite --out")) -> None:
    """Microbenchmark this device and fit a hardware profile (with held-out error)."""
    import warnings
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
    if quick and full:
        raise MoesimError("--quick/--full", "both given", "pass one of them")
    if ranks < 1:
        raise MoesimError("--ranks", f"{ranks} processes cannot run a benchmark",
                          "pass --ranks 1 or more")
    _number(price, "--price", allow_low=True)
    _outputs(out=out)
    from executor.calibrate import calibrate as run_calibration
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with Progress(TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn(),
                      console=err, transient=True) as bar:
            task = bar.add_task("calibrating", total=5)
            path, data = run_calibration(
                device=device, mode="full" if full else "quick", ranks=ranks, out=out,
                force=force, price=price, name=name,
                progress=lambda label, i, n: bar.update(task, description=label, completed=i,
                                                        total=n))
    _print_warnings(caught)
    table = Table(title=f"calibrated {data['gpu']} -> {path}")
    for col in ("fit", "held-out MAPE", "points", "flag"):
        table.add_column(col, justify="left" if col == "fit" else "right")
    for k, q in data["calibration"]["fits"].items():
        table.add_row(k, f"{q['mape']:.1%}", str(q["points"]), "above 10%" if q["flagged"] else "")
    out_c = out_console()
    out_c.print(table)
    out_c.print(f"peak {data['peak_bf16_flops']['value'] / 1e9:.1f} GFLOP/s, memory "
                f"{data['hbm_bandwidth_Bps']['value'] / 1e9:.1f} GB/s, all-to-all "
                f"{data['nvlink']['bandwidth_Bps']['value'] / 1e9:.2f} GB/s, comm takes "
                f"{data['comm_sm_fraction']['value']:.0%} of compute", highlight=False)


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
        table.add_row(x["schedule"], str(x["layer"]), _fmt(x["measured_us"]),
                      _fmt(x["predicted_us"]), f"{x['error']:+.1%}")
    out.print(table)
    ops = Table(title="ops, sequential schedule (median over ranks)")
    for col in ("op", "kind", "measured us", "predicted us", "error"):
        ops.add_column(col, justify="left" if col in ("op", "kind") else "right")
    for x in v["ops"]:
        ops.add_row(x["name"], x["kind"], _fmt(x["measured_us"]), _fmt(x["predicted_us"]),
                    f"{x['error']:+.1%}" if x["error"] is not None else "-")
    out.print(ops)
    lo, hi = v["speedup_measured_ci95"]
    noise = "; it spans 1: noise hides the sign here" if lo <= 1 <= hi else ""
    out.print(f"per-layer MAPE {v['mape']:.1%}; scmoe over sequential: measured "
              f"{v['speedup_measured']:.3f}x (95% interval {lo:.3f}-{hi:.3f}{noise}), "
              f"predicted {v['speedup_predicted']:.3f}x", highlight=False)


def out_console() -> Console:
    """The stdout console."""
    return out


profile_app = typer.Typer(help="Inspect hardware profiles.", no_args_is_help=True)
app.add_typer(profile_app, name="profile")


@app.command()
@user_errors
def profiles() -> None:
    """List the shipped hardware profiles."""
    from simulator.loading import PROFILES_DIR, known_names, load_profile
    table = Table(title="hardware profiles (hardware_profiles/)")
    for col in ("name", "gpu", "BF16 TFLOP/s", "HBM GB", "HBM TB/s", "scale-up GB/s",
                "NIC GB/s", "$/GPU-h"):
        table.add_column(col, justify="left" if col in ("name", "gpu") else "right")
    for name in known_names(PROFILES_DIR):
        p = load_profile(name)
        table.add_row(name, p.gpu, _sig(p.peak_bf16_flops.value / 1e12),
                      f"{p.hbm_bytes.value / 1e9:.0f}", f"{p.hbm_bandwidth_Bps.value / 1e12:.2f}",
                      f"{p.nvlink.bandwidth_Bps.value / 1e9:.0f}",
                      f"{p.nic.bandwidth_Bps.value / 1e9:.0f}", f"{p.price_per_gpu_hour.value:.2f}")
    out.print(table)


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
    for key, value, source in _profile_rows(p.model_dump()):
        table.add_row(key, value, source)
    out.print(table)


def _profile_rows(data: dict, prefix: str = ""):
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and "value" in value and "source" in value:
            yield name, f"{value['value']:.6g}", value["source"]
        elif isinstance(value, dict) and isinstance(value.get("points"), list):
            pts = ", ".join(f"{x:g}:{e:.3g}" for x, e in value["points"])
            yield name, pts, value["source"]
        elif isinstance(value, dict) and "efficiency" in value and "weights" in value:
            head = "N x K: " + " ".join(f"{w:.3g}" for w in value["weights"])
            rows = [f"M {m:g}: " + " ".join(f"{e:.2g}" for e in row)
                    for m, row in zip(value["m"], value["efficiency"])]
            yield name, "\n".join([head] + rows), value["source"]
        elif isinstance(value, dict):
            yield from _profile_rows(value, f"{name}.")
        elif key not in ("name",):
            yield name, str(value), ""


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
    out.print(table)
    out.print(f"settled (mean within 0.2 of target and max/mean load < 1.3 from then on): "
              f"{'step ' + str(settled + 1) if settled is not None else 'not within ' + str(steps) + ' steps'}")
    if plot is not None:
        out.print(f"figure written to {plot}")
    else:
        out.print("pass --plot router-bias.html for the interactive figure", highlight=False)


SCHEMAS = ("workload", "model", "profile")


@app.command()
def schema(kind: str = typer.Argument("workload", help="one of: workload, model, profile")) -> None:
    """Print the JSON Schema of a YAML file kind (workload, model or profile)."""
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
