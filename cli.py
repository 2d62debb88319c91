"""moesim command line: the commands and their options. Each command's body lives in
simulator/commands/ (one module per stage that owns it); configs are files, flags override."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer

from simulator.commands.common import user_errors

app = typer.Typer(add_completion=False, no_args_is_help=True, rich_markup_mode=None,
                  help="Simulate Mixture-of-Experts training and serving clusters.")
profile_app = typer.Typer(help="Inspect hardware profiles.", no_args_is_help=True,
                          rich_markup_mode=None)
app.add_typer(profile_app, name="profile")

HARDWARE = typer.Option(None, "--hardware", help="run on this profile instead of the workload's")
GPUS = typer.Option(None, "--gpus", help="the plan's GPU count (its parallel degrees kept)")
JSON = typer.Option(False, "--json", help="print the JSON result")
REPORT = typer.Option(None, help="write an HTML report here")
TRACE = typer.Option(None, help="write a Perfetto/Chrome trace")


@app.command()
@user_errors
def simulate(workload: str = typer.Argument(..., help="workload YAML"),
             schedule: Optional[str] = typer.Option(None, help="override the workload's schedule"),
             as_json: bool = JSON,
             per_rank: bool = typer.Option(False, "--per-rank", help="simulate every rank"),
             report: Optional[Path] = REPORT, trace: Optional[Path] = TRACE,
             hardware: Optional[str] = HARDWARE, gpus: Optional[int] = GPUS,
             batch: Optional[int] = typer.Option(None, "--batch",
                                                 help="sequences per device (batch_per_device)")
             ) -> None:
    """One step of a workload: per-op table for one layer, then the totals."""
    from simulator.commands.step import simulate as body
    body(workload, schedule, as_json, per_rank, report, trace, hardware, gpus, batch)


@app.command()
@user_errors
def compare(workload: str = typer.Argument(..., help="workload YAML"),
            schedules: str = typer.Option("sequential,scmoe,sbo,tbo",
                                          help="comma-separated schedule names"),
            as_json: bool = typer.Option(False, "--json", help="print a JSON list of results"),
            per_rank: bool = typer.Option(False, "--per-rank", help="simulate every rank"),
            report: Optional[Path] = REPORT, trace: Optional[Path] = TRACE,
            hardware: Optional[str] = HARDWARE, gpus: Optional[int] = GPUS,
            batch: Optional[str] = typer.Option(
                None, "--batch", help="sequences per device, one or a list: 8,32,128 (a "
                "table per batch, each schedule's speedup over the first at that batch)")) -> None:
    """Several schedules of one workload side by side, with speedups over the first."""
    from simulator.commands.step import compare as body
    body(workload, schedules, as_json, per_rank, report, trace, hardware, gpus, batch)


@app.command()
@user_errors
def model(name: str = typer.Argument(..., help="zoo name or YAML path, or 'import'"),
          config: Optional[Path] = typer.Argument(None, help="HF config.json (with 'import')"),
          out_path: Optional[Path] = typer.Option(None, "--out", help="where to write the YAML"),
          force: bool = typer.Option(False, help="overwrite --out if it exists")) -> None:
    """`moesim model NAME`: parameter counts. `moesim model import CONFIG.json`: HF -> YAML."""
    from simulator.commands.info import model as body
    body(name, config, out_path, force)


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
          as_json: bool = JSON, report: Optional[Path] = REPORT,
          requests_csv: Optional[Path] = typer.Option(
              None, "--requests-csv", help="write every finished request (arrival, lengths, "
              "TTFT, TPOT, end-to-end) as CSV here"),
          runtime: Optional[str] = typer.Option(
              None, "--runtime", help="serving runtime preset (`moesim runtimes`; none: the "
              "kernels alone); overrides the workload's runtime.preset"),
          hardware: Optional[str] = HARDWARE, gpus: Optional[int] = GPUS) -> None:
    """Request-level serving simulation: TTFT, TPOT, tokens/GPU/s, $ per million tokens."""
    from simulator.commands.serve import serve as body
    body(workload, rate, duration, sweep_batch, sweep_concurrency, sweep_rate, schedules,
         as_json, report, hardware, gpus, requests_csv, runtime)


@app.command()
@user_errors
def train(workload: str = typer.Argument(..., help="workload YAML with a training block"),
          tokens: Optional[str] = typer.Option(None, help="tokens to train: 20T, 800B, 1.5e12"),
          schedule: Optional[str] = typer.Option(None, help="override the layer schedule"),
          as_json: bool = JSON, report: Optional[Path] = REPORT,
          trace: Optional[Path] = typer.Option(None, help="write one step's pipeline as a "
                                               "Perfetto / Chrome trace here"),
          hardware: Optional[str] = HARDWARE, gpus: Optional[int] = GPUS) -> None:
    """One training step simulated; MFU, tokens/day, days and $ to train."""
    from simulator.commands.train import train as body
    body(workload, tokens, schedule, as_json, report, trace, hardware, gpus)


@app.command()
@user_errors
def sweep(spec_path: Path = typer.Argument(..., help="sweep YAML"),
          backend: str = typer.Option("local", help="local (process pool) or ray"),
          workers: int = typer.Option(2, help="local worker processes"),
          address: str = typer.Option("auto", help="Ray address: auto or HOST:PORT"),
          results: Optional[Path] = typer.Option(None, help="SQLite results file"),
          force: bool = typer.Option(False, help="discard results of another sweep definition"),
          report: Optional[Path] = REPORT, as_json: bool = JSON) -> None:
    """Run a grid or list of what-ifs; resumable; summary, Pareto front and report."""
    from simulator.commands.sweep import sweep as body
    body(spec_path, backend, workers, address, results, force, report, as_json)


@app.command()
@user_errors
def plan(target: str = typer.Argument(..., help="a model (zoo name or YAML) or a workload YAML "
                                       "whose model, precision and runtime are kept (with "
                                       "--train: a training workload)"),
         gpus: str = typer.Option("8", help="GPU counts to try, e.g. 8,16,32"),
         hardware: Optional[str] = typer.Option(
             None, help="profiles to try, e.g. h100-sxm,b200-sxm (default h200-sxm; with "
             "--train the workload's)"),
         isl: int = typer.Option(1024, help="input tokens per request"),
         osl: int = typer.Option(1024, help="output tokens per request"),
         ttft_ms: float = typer.Option(2000.0, "--ttft-ms", help="TTFT SLO"),
         tpot_ms: float = typer.Option(50.0, "--tpot-ms", help="TPOT SLO"),
         runtime: Optional[str] = typer.Option(None, help="sglang, trtllm or vllm kernels"),
         train: bool = typer.Option(False, "--train", help="search a training workload's "
                                    "layouts (TP, PP, EP, CP, micro-batch, pipeline, recompute) "
                                    "for days and $ to train"),
         tokens: Optional[str] = typer.Option(None, help="with --train: tokens to train, "
                                              "e.g. 20T"),
         workers: int = typer.Option(2, help="local worker processes"),
         backend: str = typer.Option("local", help="local (process pool) or ray"),
         address: str = typer.Option("auto", help="Ray address: auto or HOST:PORT"),
         results: Optional[Path] = typer.Option(
             None, help="SQLite file keeping every priced what-if, so an interrupted plan "
             "resumes (default: ~/.cache/moesim/plan.sqlite)"),
         as_json: bool = JSON, report: Optional[Path] = REPORT,
         out_dir: Optional[Path] = typer.Option(None, "--out-dir", help="write every Pareto "
                                                "point as a runnable workload YAML here")) -> None:
    """The best deployment under a latency SLO: a searched Pareto front and its cost; with
    --train, the fastest and cheapest training layouts."""
    from simulator.commands.plan import plan as body
    body(target, gpus, hardware, isl, osl, ttft_ms, tpot_ms, runtime, train, tokens, workers,
         backend, address, results, as_json, report, out_dir)


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
    from simulator.commands.calibrate import calibrate as body
    body(device, from_measurements, from_aiconfigurator, framework, version, base, quick, full,
         ranks, out, name, price, force)


@app.command()
@user_errors
def validate(workload: str = typer.Argument(..., help="workload YAML (a shortcut MoE model)"),
             profile: str = typer.Option("cpu-2core-example", help="hardware profile to predict"),
             ranks: int = typer.Option(2, help="executor processes (EP degree)"),
             repeats: int = typer.Option(10, help="timed repeats after warm-up (both "
                                              "schedules alternate in every repeat)"),
             report: Optional[Path] = REPORT, as_json: bool = JSON) -> None:
    """Run the companion torch executor and the simulator on one workload; compare them."""
    from simulator.commands.validate import validate as body
    body(workload, profile, ranks, repeats, report, as_json)


@app.command()
@user_errors
def profiles() -> None:
    """List the shipped hardware profiles (read, not validated: `moesim profile show NAME`
    checks one, and every command that uses a profile validates it)."""
    from simulator.commands.info import profiles as body
    body()


@app.command()
@user_errors
def runtimes() -> None:
    """List the serving engine presets (hardware_profiles/runtimes/serving/: chunked prefill,
    caps, CUDA graphs, KV reservation, overlap) and the training framework presets
    (hardware_profiles/runtimes/training/: host launch time per layer), with sources."""
    from simulator.commands.info import runtimes as body
    body()


@profile_app.command("show")
@user_errors
def profile_show(name: str = typer.Argument(..., help="profile name or YAML path")) -> None:
    """Peaks, effective values and the source of every number."""
    from simulator.commands.info import profile_show as body
    body(name)


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
                as_json: bool = JSON) -> None:
    """Simulate LongCat-Flash's router-bias controller over synthetic logits."""
    from simulator.commands.info import router_bias as body
    body(steps, tokens, target, top_k, ffn_experts, zero_experts, mu, ki, kd, skew, window, seed,
         plot, as_json)


@app.command()
@user_errors
def schema(kind: str = typer.Argument("workload", help="one of: workload, model, profile")) -> None:
    """Print the JSON Schema of a YAML file kind (workload, model or profile)."""
    from simulator.commands.info import schema as body
    body(kind)


def main() -> None:
    """Entry point for `python cli.py` and the `moesim` script."""
    app()


if __name__ == "__main__":
    sys.exit(main())
