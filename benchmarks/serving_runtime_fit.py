"""Calibrate what no engine document states, per serving runtime, on the silicon corpus.

Three named parameters per engine (shared across its models and GPUs; never one per model, row
or configuration):
- extra_kernels_per_layer: kernels a layer runs that moesim's op graph folds away (norms, rope,
  activation quantisation, router top-k, permutes ...), each at the profile's
  kernel_latency_s; every decode step pays layers x k x kernel_latency_s (aggregated rows);
- request_overhead_s: seconds between a client sending a request and the engine queueing it
  (HTTP, tokenisation), part of every TTFT (aggregated rows);
- kv_transfer_s: fixed seconds a disaggregated request's handoff from its prefill worker to a
  decode worker takes beyond its KV bytes over the NIC (disaggregated rows).

Input: the JSON of `python benchmarks/silicon.py --systems h100_sxm,h200_sxm --uncalibrated
--json out/silicon-uncal.json` (the presets' calibrated costs at zero), and optionally runs of
the same with `--request-overhead-ms MS` or `--kv-transfer-ms MS` at other values. Each
parameter is the grid value minimising the median |error| of its metric (TPOT for k, TTFT for
the others) over the engine's rows of its mode. k's effect is read to first order (it adds its
time to every decode step). The overhead's and the KV transfer's are read end to end from the
runs where there are several (a closed loop's clients send their next requests that much
later, which moves how the engine's steps batch them, not only every TTFT by its sum); without
runs the overhead is read to first order over a fine grid, and the KV transfer is not
fitted. Held-out error: k-fold with folds grouped by model (a fold's models are never seen by
its fit). `--write` puts the all-row fit into the presets where it lowers the held-out median
|error| (else 0), with this command as their source; the silicon benchmark run again with them
measures the result end to end.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

PRESETS = {"sglang": ("sglang-0.5", "sglang-0.4"), "vllm": ("vllm-v1",),
           "trtllm": ("trtllm-pytorch",)}
K_GRID = [i / 2 for i in range(0, 121)]            # extra kernels per layer: 0 .. 60
C_GRID = [i / 1000 for i in range(0, 401)]         # request overhead: 0 .. 400 ms
FOLDS = 5


def tpot(row: dict, k: float) -> float:
    """Predicted TPOT (ms) with k extra kernels a layer."""
    return row["tpot_ms"]["predicted"] + k * row["layers"] * row["kernel_latency_s"] * 1e3


def ttft(row: dict, c: float) -> float:
    """Predicted TTFT (ms) with a request overhead of c seconds: the run at c where the row
    carries runs (`ttft_at`), else the zero-overhead prediction plus c."""
    at = row.get("ttft_at")
    return at[c] if at else row["ttft_ms"]["predicted"] + c * 1e3


def abs_errors(rows: list[dict], metric: str, value: float) -> list[float]:
    """|predicted / measured - 1| of every row at one parameter value."""
    f = tpot if metric == "tpot_ms" else ttft
    return [abs(f(r, value) / r[metric]["measured"] - 1) for r in rows]


def best(rows: list[dict], metric: str, grid: list[float]) -> float:
    """The grid value of least median |error| (the smallest of equals)."""
    return min(grid, key=lambda v: (statistics.median(abs_errors(rows, metric, v)), v))


def with_runs(rows: list[dict], runs: dict[float, list[dict]]) -> tuple[list[dict], list[float]]:
    """The zero-overhead rows, each carrying its TTFT predicted by every run (`ttft_at`, by
    overhead in seconds; rows some run lacks are left out), and the overheads as the grid; no
    other runs: the rows as they are and the first-order grid."""
    if not runs:
        return rows, C_GRID
    grid = sorted({0.0, *runs})
    by_run = {c: {r["id"]: r["ttft_ms"]["predicted"] for r in rs} for c, rs in runs.items()}
    out = []
    for r in rows:
        at = {0.0: r["ttft_ms"]["predicted"]}
        at.update({c: got[r["id"]] for c, got in by_run.items() if r["id"] in got})
        if len(at) == len(grid):
            out.append({**r, "ttft_at": at})
    return out, grid


def p90(x: list[float]) -> float:
    """Nearest-rank 90th percentile."""
    s = sorted(x)
    return s[max(0, -(-9 * len(s) // 10) - 1)]


def held_out(rows: list[dict], metric: str, grid: list[float]) -> list[float]:
    """Every row's |error| under the fit of the folds that do not hold its model."""
    models = sorted({r["model"] for r in rows})
    folds = [models[i::min(FOLDS, len(models))] for i in range(min(FOLDS, len(models)))]
    out: list[float] = []
    for fold in folds:
        train = [r for r in rows if r["model"] not in fold]
        test = [r for r in rows if r["model"] in fold]
        if not train:          # one model only: nothing to hold out from
            train = test
        out += abs_errors(test, metric, best(train, metric, grid))
    return out


# (preset key, the metric it moves, the rows' serving mode, its statistics' name in a result)
PARAMS = (("extra_kernels_per_layer", "tpot_ms", "agg", "tpot_ms"),
          ("request_overhead_s", "ttft_ms", "agg", "ttft_ms"),
          ("kv_transfer_s", "ttft_ms", "disagg", "disagg_ttft_ms"))
MODES = {"agg": "aggregated", "disagg": "disaggregated"}


def fit(rows: list[dict], runs: dict[float, list[dict]] | None = None,
        kv_runs: dict[float, list[dict]] | None = None) -> dict:
    """Per engine: the all-row fit and the held-out error before and after; `runs`: the rows
    of runs at other request overheads (seconds), `kv_runs` at other KV transfer times, each
    read end to end (the KV transfer on the disaggregated rows)."""
    out = {}
    ttft_rows = {"request_overhead_s": with_runs(rows, runs or {}),
                 "kv_transfer_s": with_runs(rows, kv_runs or {})}
    for engine in PRESETS:
        res: dict = {}
        for key, metric, mode, name in PARAMS:
            if key == "kv_transfer_s" and not kv_runs:     # read from its runs only
                continue
            pool, grid = ttft_rows[key] if key in ttft_rows else (rows, K_GRID)
            mine = [r for r in pool if r["backend"] == engine and r["mode"] == mode]
            if not mine:
                continue
            count = (len(mine), len({r["model"] for r in mine}))
            if mode == "disagg":
                res["disagg_rows"], res["disagg_models"] = count
            elif "rows" not in res:
                res["rows"], res["models"] = count
            before = abs_errors(mine, metric, 0.0)
            after = held_out(mine, metric, grid)
            res[key] = best(mine, metric, grid)
            res[name] = {"before_median": statistics.median(before), "before_p90": p90(before),
                         "held_out_median": statistics.median(after),
                         "held_out_p90": p90(after)}
        if "rows" in res:
            out[engine] = res
    return out


def kept(res: dict, key: str, metric: str) -> float:
    """The value a preset stores: the fit where it lowers the held-out median |error| below
    that of no cost at all, else 0 (a fit that does not predict held-out models is not kept)."""
    m = res[metric]
    return res[key] if m["held_out_median"] < m["before_median"] else 0.0


def write_presets(result: dict, command: str) -> None:
    """Put each engine's kept fit into its presets' YAML, the command as the source: only the
    calibrated entries are rewritten, the rest of each file stays as written."""
    import re

    import yaml
    from simulator.atomic import write_text_atomic
    from simulator.loading import SERVING_RUNTIMES_DIR
    for engine, res in result.items():
        for name in PRESETS[engine]:
            path = SERVING_RUNTIMES_DIR / f"{name}.yaml"
            text = path.read_text()
            for key, _, mode, metric in PARAMS:
                if metric not in res:
                    continue
                m, value = res[metric], kept(res, key, metric)
                rows, models = (res["disagg_rows"], res["disagg_models"]) if mode == "disagg" \
                    else (res["rows"], res["models"])
                what = (f"held-out (folds by model) median |error| {m['before_median']:.1%} -> "
                        f"{m['held_out_median']:.1%}, p90 {m['before_p90']:.1%} -> "
                        f"{m['held_out_p90']:.1%}")
                verdict = "" if value else (f"; the fit ({res[key]:g}) does not lower the "
                                            "held-out error, so none is kept")
                entry = yaml.safe_dump({key: {"value": value, "source": (
                    f"calibration on the {rows} {MODES[mode]} {engine} rows of the silicon "
                    f"corpus (H100, H200; {models} models): "
                    f"{command}; {what}{verdict} "
                    "(docs/accuracy.md s14)")}}, sort_keys=False, width=100)
                block = re.compile(rf"^{key}:\n(?:[ ].*\n)*", re.M)
                text = block.sub(lambda _: entry, text, count=1) if block.search(text) \
                    else text + entry
            write_text_atomic(path, text, "preset")


def main(argv: list[str] | None = None) -> int:
    """Fit, print, and (--write) store the calibration."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("silicon_json", type=Path, nargs="+", help="silicon.py --uncalibrated "
                    "--json output: one with neither a request overhead nor a KV transfer "
                    "time, and optionally runs at others of one of them (--request-overhead-ms, "
                    "--kv-transfer-ms)")
    ap.add_argument("--write", action="store_true", help="store the fit in the presets")
    args = ap.parse_args(argv)
    rows, runs, kv_runs = None, {}, {}
    for path in args.silicon_json:
        data = json.loads(path.read_text())
        c, kv = float(data.get("request_overhead_s", 0.0)), float(data.get("kv_transfer_s", 0.0))
        if c and kv:
            print(f"error: {path} sets both a request overhead and a KV transfer time; give "
                  "runs that move one of them", file=sys.stderr)
            return 2
        into, value, what = (runs, c, "request overhead") if c else \
            (kv_runs, kv, "KV transfer time") if kv else (None, 0.0, "")
        if into is None:
            if rows is not None:
                print("error: two runs with neither a request overhead nor a KV transfer time; "
                      "give each once", file=sys.stderr)
                return 2
            rows = data["rows"]
        elif value in into:
            print(f"error: two runs at a {what} of {value * 1e3:g} ms; give each once",
                  file=sys.stderr)
            return 2
        else:
            into[value] = data["rows"]
    if rows is None:
        print("error: no run without a request overhead; give silicon.py --uncalibrated's JSON "
              "without --request-overhead-ms or --kv-transfer-ms", file=sys.stderr)
        return 2
    result = fit(rows, runs, kv_runs)
    for engine, res in result.items():
        print(f"{engine}: {res['rows']} aggregated rows, {res['models']} models"
              + (f"; {res['disagg_rows']} disaggregated, {res['disagg_models']} models"
                 if "disagg_rows" in res else ""))
        for key, _, _, name in PARAMS:
            if name not in res:
                continue
            m, scale, unit = res[name], (1 if key == "extra_kernels_per_layer" else 1e3), \
                ("/layer" if key == "extra_kernels_per_layer" else " ms")
            print(f"  {key} {res[key] * scale:g}{unit} (kept {kept(res, key, name) * scale:g}"
                  f"{unit}): {name} median |error| {m['before_median']:.1%} -> "
                  f"{m['held_out_median']:.1%} held out; p90 {m['before_p90']:.1%} -> "
                  f"{m['held_out_p90']:.1%}")
    if args.write:
        write_presets(result, "python benchmarks/serving_runtime_fit.py " +
                      " ".join(argv if argv is not None else sys.argv[1:]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
