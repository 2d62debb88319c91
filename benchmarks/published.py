"""moesim against published end-to-end measurements of real deployments.

Reads `benchmarks/published.yaml` (each row: a workload under workloads/validation/ or
workloads/deployments/ written as the deployment ran,
the metric, the published figure and its source), predicts every row and prints the table of
docs/accuracy.md, "End-to-end against published deployments", with the summary the fidelity
goals are stated in (median |error|, worst row, signs of the decode rows).

    python benchmarks/published.py [--json OUT] [--report OUT.html]
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from pathlib import Path
from typing import Literal, Optional

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pydantic import Field  # noqa: E402

from simulator.loading import load_model, load_workload, read_yaml_mapping, parse  # noqa: E402
from simulator.schema import Strict  # noqa: E402

MANIFEST = ROOT / "benchmarks" / "published.yaml"
Metric = Literal["decode_tokens_per_gpu_s", "prefill_tokens_per_gpu_s", "tpot_ms", "ttft_ms",
                 "gpu_hours_per_trillion_tokens", "speedup", "train_step_s",
                 "train_tokens_per_gpu_s", "train_tflops_per_gpu", "request_tpot_ms",
                 "request_ttft_ms"]
TRAINING = ("gpu_hours_per_trillion_tokens", "train_step_s", "train_tokens_per_gpu_s",
            "train_tflops_per_gpu")


class PublishedRow(Strict):
    """One published figure and the workload that reproduces its deployment."""

    id: str
    workload: str
    baseline: Optional[str] = Field(None, description="speedup rows: the baseline workload")
    metric: Metric
    measured: float = Field(gt=0)
    kind: str
    publisher: str = Field(min_length=2, description="who measured and published the figure")
    source: str = Field(min_length=10)


class Manifest(Strict):
    """The rows of benchmarks/published.yaml."""

    rows: list[PublishedRow] = Field(min_length=1)


def load_manifest(path: Path = MANIFEST) -> list[PublishedRow]:
    """The manifest's rows, validated."""
    return parse(Manifest, read_yaml_mapping(path), str(path)).rows


def _step_ms(path: str) -> dict:
    from simulator.step.whatif import simulate
    return simulate(load_workload(str(ROOT / path))).to_json()


def predict(row: PublishedRow) -> float:
    """moesim's figure for a row's metric, from one simulation of its workload(s)."""
    if row.metric in TRAINING:
        return training_metric(row.metric, str(ROOT / row.workload))
    if row.metric in ("request_tpot_ms", "request_ttft_ms"):
        from simulator.serving.run import ServingSim
        m = ServingSim(load_workload(str(ROOT / row.workload))).run().to_json()
        return m["tpot_ms" if row.metric == "request_tpot_ms" else "ttft_ms"]["mean"]
    s = _step_ms(row.workload)
    if row.metric in ("decode_tokens_per_gpu_s", "prefill_tokens_per_gpu_s"):
        return s["tokens_per_gpu_s"]
    if row.metric == "tpot_ms":
        return s["tpot_ms"]
    if row.metric == "ttft_ms":
        return s["step_time_ms"]
    assert row.baseline is not None, f"{row.id}: a speedup row needs a baseline"
    return _step_ms(row.baseline)["step_time_ms"] / s["step_time_ms"]


def training_metric(metric: str, path: str, runtime=None) -> float:
    """A training row's figure from one simulated optimizer step: GPU-hours per 10^12 tokens,
    seconds per step, tokens/s per GPU, or model TFLOPS per GPU (moesim's model FLOPs: three
    times the forward's, attention included, as MFU counts them)."""
    from simulator.training.run import train
    w = load_workload(path)
    r = train(w, runtime=runtime).to_json()
    step, tokens, gpus = r["step_time_s"], r["tokens_per_step"], w.plan.gpus
    return {"gpu_hours_per_trillion_tokens": gpus * step / tokens * 1e12 / 3600,
            "train_step_s": step, "train_tokens_per_gpu_s": tokens / gpus / step,
            "train_tflops_per_gpu": r["model_tflops_per_gpu"]}[metric]


TIMES = ("tpot_ms", "ttft_ms", "gpu_hours_per_trillion_tokens", "train_step_s",
         "request_tpot_ms", "request_ttft_ms")                                   # lower: faster


def signed_error(row: PublishedRow, predicted: float) -> float:
    """moesim / published - 1."""
    return predicted / row.measured - 1.0


def optimistic(row: PublishedRow, predicted: float) -> bool:
    """True when moesim predicts the deployment faster than it ran (a shorter time, or a
    higher rate or speedup)."""
    return predicted < row.measured if row.metric in TIMES else predicted > row.measured


def run(rows: list[PublishedRow]) -> list[dict]:
    """Every row predicted, with its signed error and which way it errs."""
    out = []
    for row in rows:
        p = float(predict(row))
        w = load_workload(str(ROOT / row.workload))
        d = row.model_dump()
        out.append({**d, "kind": row_kind(d), "what": row.kind, "gpu": w.hardware,
                    "model": load_model(w.model).name, "predicted": p,
                    "error": signed_error(row, p), "optimistic": bool(optimistic(row, p))})
    return out


def summary(results: list[dict]) -> dict:
    """Median and largest |error|, the distinct sources, and whether the decode rows err both
    ways (some optimistic, some pessimistic)."""
    errs = [abs(r["error"]) for r in results]
    decode = [r["optimistic"] for r in results if row_kind(r) == "decode"]
    out = {"rows": len(results), "publishers": len({r["publisher"] for r in results}),
           **band(results), "max_abs_error": max(errs),
           "decode_errors_both_ways": any(decode) and not all(decode)}
    for key in ("kind", "gpu", "publisher", "model"):
        groups: dict[str, list[dict]] = {}
        for r in results:
            groups.setdefault(r[key] if key != "kind" else row_kind(r), []).append(r)
        out[f"by_{key}"] = {k: {"rows": len(v), **band(v)} for k, v in sorted(groups.items())}
    return out


def band(rows: list[dict]) -> dict:
    """Median and 90th-percentile |error| and the share of rows moesim predicts too fast."""
    errs = sorted(abs(r["error"]) for r in rows)
    p90 = errs[min(len(errs) - 1, math.ceil(0.9 * len(errs)) - 1)]
    return {"median_abs_error": statistics.median(errs), "p90_abs_error": p90,
            "share_optimistic": sum(r["optimistic"] for r in rows) / len(rows)}


def row_kind(row: dict) -> str:
    """decode, prefill, request, training or speedup: the first word of a row's kind (its
    description while the manifest is read)."""
    text = row.get("what", row["kind"]) or ""
    return text.split(",")[0].split()[0].lower() if text else "other"


def table(results: list[dict]) -> str:
    """The markdown table of docs/accuracy.md."""
    lines = ["| row | what | metric | published | moesim | error | moesim is |",
             "|---|---|---|---:|---:|---:|---|"]
    for r in results:
        lines.append(f"| {r['id']} | {r['what']} | {r['metric']} | {r['measured']:.4g} | "
                     f"{r['predicted']:.4g} | {r['error']:+.1%} | "
                     f"{'optimistic' if r['optimistic'] else 'pessimistic'} |")
    return "\n".join(lines)


def error_figure(results: list[dict]):
    """Signed error of every row as a bar (optimistic and pessimistic coloured apart), with the
    +-10% and +-25% lines of the fidelity goals; the hover names the row's source."""
    import plotly.graph_objects as go
    fig = go.Figure(go.Bar(
        x=[r["id"] for r in results], y=[100 * r["error"] for r in results],
        marker_color=["#d62728" if r["optimistic"] else "#1f77b4" for r in results],
        customdata=[[r["metric"], r["measured"], r["predicted"], r["source"]] for r in results],
        hovertemplate="%{x}<br>%{customdata[0]}: published %{customdata[1]:.4g}, moesim "
                      "%{customdata[2]:.4g}<br>error %{y:+.1f}%<br>%{customdata[3]}<extra></extra>"))
    for y, dash in ((10, "dot"), (-10, "dot"), (25, "dash"), (-25, "dash")):
        fig.add_hline(y=y, line_dash=dash, line_color="gray")
    fig.update_layout(title="moesim / published - 1 (red: moesim optimistic, blue: pessimistic)",
                      yaxis_title="error (%)", xaxis_tickangle=-30)
    return fig


def training_bands(results: list[dict]) -> dict:
    """Error bands (%) for `train`'s fidelity block: the p90 |error| of the training rows, per
    GPU profile and over all (hardware_profiles/fidelity/training_bands.yaml)."""
    rows = [r for r in results if row_kind(r) == "training"]
    groups: dict[str, list[dict]] = {"all": rows}
    for r in rows:
        groups.setdefault(r["gpu"], []).append(r)
    return {"bands": {g: {"training": round(100 * band(v)["p90_abs_error"], 1), "rows": len(v)}
                      for g, v in sorted(groups.items()) if v}}


def main() -> None:
    """Print the table and the summary; --json writes both, --report a plotly page."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--report", type=Path, default=None, help="HTML page with the error figure")
    ap.add_argument("--training-bands", type=Path, default=None,
                    help="write the training rows' error bands (YAML) for train's fidelity")
    args = ap.parse_args()
    results = run(load_manifest())
    s = summary(results)
    print(table(results))
    print(f"\n{s['rows']} rows from {s['publishers']} publishers: median |error| "
          f"{s['median_abs_error']:.1%}, largest {s['max_abs_error']:.1%}; decode rows err both "
          f"ways: {s['decode_errors_both_ways']}")
    for kind, k in s["by_kind"].items():
        print(f"  {kind}: {k['rows']} rows, median |error| {k['median_abs_error']:.1%}, "
              f"{k['share_optimistic']:.0%} optimistic")
    if args.report:
        from simulator.outputs.report import write_figures
        write_figures([error_figure(results)], "moesim against published deployments",
                      args.report, f"<p>{s['rows']} rows from {s['publishers']} publishers; median "
                      f"|error| {s['median_abs_error']:.1%} (docs/accuracy.md s10)</p>")
    if args.training_bands:
        import yaml
        from simulator.atomic import write_text_atomic
        head = ("# Error bands of moesim's training predictions (%): the p90 |error| of the\n"
                "# training rows of benchmarks/published.yaml, per GPU profile and over all.\n"
                "# Written by: python benchmarks/published.py --training-bands "
                "hardware_profiles/fidelity/training_bands.yaml\n")
        write_text_atomic(args.training_bands,
                          head + yaml.safe_dump(training_bands(results), sort_keys=True),
                          "--training-bands")
    if args.json:
        from simulator.atomic import write_text_atomic
        write_text_atomic(args.json, json.dumps({"rows": results, "summary": s}, indent=2),
                          "--json")


if __name__ == "__main__":
    main()
