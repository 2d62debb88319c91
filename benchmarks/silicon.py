"""moesim against thousands of measured serving runs (the silicon corpus).

Reads a CSV in the format of aiconfigurator-core's `systems/silicon_sample.csv` (default: the
pinned package's own file, `pip install -e '.[kernels]'`), writes each row down as a moesim
serving workload (the model from the package's Hugging Face config through moesim's importer;
hardware; every parallelism field; precision; lengths) and predicts its TTFT and TPOT the way
it was measured: a closed loop of `concurrency` clients, each sending its next request when
its last one ends. Rows moesim cannot express yet are listed with the reason, never dropped.
Assumptions the corpus leaves open are in benchmarks/silicon.yaml and on every row.

    python benchmarks/silicon.py [--csv FILE] [--json OUT] [--report OUT.html]
                                 [--workers N] [--limit N] [--systems h100_sxm,h200_sxm]
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import math
import re
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from simulator.errors import MoesimError  # noqa: E402
from simulator.loading import (load_profile, read_text_file, read_yaml_mapping,  # noqa: E402
                               serving_runtime_for)
from simulator.kernels.store import version_key  # noqa: E402
from benchmarks.silicon_twins import one_per_measurement, source_clients  # noqa: E402
from benchmarks.silicon_publisher import (NotSettled, disaggregated_run,  # noqa: E402
                                          launch_settings, load_runs, run_mtp,
                                          single_node_mtp, with_pools)
from benchmarks.silicon_report import (POOL_FIELDS, bands_yaml, figures,  # noqa: E402
                                       print_summary, summary, sweep_key)

ASSUMPTIONS = ROOT / "benchmarks" / "silicon.yaml"
PACKAGE = "aiconfigurator_core"
REQUIRED = ("id", "backend", "backend_version", "model_path", "system", "precision", "mode",
            "isl", "osl", "gemm_quant_mode", "moe_quant_mode", "silicon_ttft_ms",
            "silicon_tpot_ms")
MAX_CSV_BYTES = 256 * 2 ** 20


class Unexpressed(Exception):
    """A row moesim cannot write down yet; the message is the reason."""


@dataclass
class Case:
    """One expressible row: its workload and what was assumed to write it."""

    row: dict
    workload: dict
    assumed: list[str] = field(default_factory=list)
    layers: int = 0                   # the model's layers and the GPU's kernel latency, for
    kernel_latency_s: float = 0.0     # benchmarks/serving_runtime_fit.py


# -- reading ----------------------------------------------------------------------------------
def package_dir() -> Path:
    """The installed aiconfigurator-core package's folder (data only: nothing is imported
    from it but its location)."""
    import importlib.util
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise MoesimError("--csv", "no CSV given and the aiconfigurator-core package is not "
                          "installed", "pip install -e '.[kernels]', or pass --csv FILE")
    return Path(list(spec.submodule_search_locations)[0])


def read_rows(path: Path) -> list[dict]:
    """The CSV's rows as dicts, the header checked; a clear error on anything malformed."""
    if path.exists() and path.is_file() and path.stat().st_size > MAX_CSV_BYTES:
        raise MoesimError("--csv", f"{path} is larger than {MAX_CSV_BYTES >> 20} MiB",
                          "pass a smaller corpus")
    text = read_text_file(path, "silicon CSV")
    reader = csv.DictReader(io.StringIO(text.lstrip("\ufeff"), newline=""))
    missing = [k for k in REQUIRED if k not in (reader.fieldnames or [])]
    if missing:
        raise MoesimError(f"--csv {path.name} header", f"missing column(s) "
                          f"{', '.join(missing)}", "use the format of aiconfigurator-core's "
                          "systems/silicon_sample.csv")
    rows = []
    for i, row in enumerate(reader, start=2):
        if None in row or any(v is None for v in row.values()):
            raise MoesimError(f"--csv {path.name} line {i}", "has a different number of "
                              "fields than the header", "fix the line or drop it")
        for key in ("isl", "osl", "silicon_ttft_ms", "silicon_tpot_ms"):
            v = _number(row[key])
            if v is None or not v > 0:
                raise MoesimError(f"--csv {path.name} line {i} {key}", f"{row[key]!r} is not a "
                                  "positive number", "write a positive number")
        row["_line"] = i
        rows.append(row)
    if not rows:
        raise MoesimError(f"--csv {path.name}", "no rows", "add at least one measured run")
    return rows


def _number(text: str | None) -> float | None:
    try:
        v = float(text) if text not in (None, "") else None
    except ValueError:
        return None
    return v if v is not None and math.isfinite(v) else None


def concurrency(row: dict) -> int | None:
    """Clients of the measured run: `silicon_concurrency` in the source string, else the
    aggregated row's batch_size."""
    stated = source_clients(row)
    if stated is not None:
        return stated
    b = _number(row.get("batch_size"))
    return int(b) if row["mode"] == "agg" and b and b >= 1 else None


# -- models -----------------------------------------------------------------------------------
def _norm(name: str) -> str:
    """A model name without its organisation, case, and the suffixes a checkpoint's
    quantisation or chat tuning adds (the architecture is the same)."""
    n = name.split("/")[-1].split("--")[-1].removesuffix("_config.json").lower()
    n = n.removeprefix("meta-")
    for suffix in ("-instruct", "-nvfp4", "-fp8", "-base"):
        n = n.replace(suffix, "")
    return n


def config_for(model_path: str, configs: Path) -> tuple[Path, str | None]:
    """The package's config.json for a model id: the exact `org--name`, else the one whose
    normalised name matches (then the assumption is named)."""
    exact = configs / f"{model_path.replace('/', '--')}_config.json"
    if exact.exists():
        return exact, None
    want = _norm(model_path)
    cands = sorted(p for p in configs.glob("*_config.json") if _norm(p.name) == want)
    if not cands:
        raise Unexpressed(f"no config.json for {model_path} in the package")
    plain = [p for p in cands if p.name.split("--")[-1].lower().removesuffix("_config.json")
             == model_path.split("/")[-1].lower()]
    pick = (plain or sorted(cands, key=lambda p: (len(p.name), p.name)))[0]
    return pick, f"model config {pick.name} (same architecture as {model_path})"


class Models:
    """Imported models, one YAML each in a scratch folder, by config file."""

    def __init__(self, configs: Path, folder: Path) -> None:
        self.configs, self.folder, self.done = configs, folder, {}

    def path(self, model_path: str) -> tuple[str, object, str | None]:
        """(model YAML path, ModelSpec, assumption or None) for a model id."""
        from simulator.hf_import import import_hf_config, spec_to_yaml
        cfg, assumed = config_for(model_path, self.configs)
        if cfg not in self.done:
            try:
                spec = import_hf_config(cfg, name=model_path)
            except MoesimError as exc:
                self.done[cfg] = exc
            else:
                out = self.folder / (cfg.name.removesuffix("_config.json") + ".yaml")
                out.write_text(spec_to_yaml(spec))
                self.done[cfg] = (str(out), spec)
        got = self.done[cfg]
        if isinstance(got, MoesimError):
            raise Unexpressed(f"model import: {got.problem}")
        return got[0], got[1], assumed

    def config(self, model_path: str) -> dict:
        """The config.json a model id was imported from, as a mapping."""
        return json.loads(read_text_file(config_for(model_path, self.configs)[0], "config.json"))


# -- rows -> workloads ------------------------------------------------------------------------
# Fields a row may leave empty, and what an empty one is read as (said in `assumed`)
EMPTY_MEANS = {"attention_dp_size": (1, "no attention DP"), "num_workers": (1, "one worker"),
               "pp_size": (1, "no pipeline parallelism")}


def _pool(row: dict, prefix: str, model, gpn: int, assumed: list[str]) -> tuple[dict, int]:
    """A moesim plan for one pool of the row (prefix '' for aggregated, 'prefill_' or
    'decode_'), and its attention groups."""
    v = {k: _number(row.get(prefix + k)) for k in POOL_FIELDS}
    v["num_workers"] = _number(row.get(prefix + "num_workers")) if prefix else 1
    if model.moe is None:                # a dense model's MoE fields say nothing (0 or empty)
        v["moe_tp_size"] = v["moe_ep_size"] = 1
    for k, x in v.items():
        if x is None and k in EMPTY_MEANS:
            v[k], what = EMPTY_MEANS[k]
            assumed.append(f"{prefix + k} empty: read as {what}")
        elif x is None or x < 1 or x != int(x):
            raise Unexpressed(f"{prefix + k} is {row.get(prefix + k)!r}, not a positive count")
    tp, pp, adp, mtp, mep, workers = (int(v[k]) for k in (*POOL_FIELDS, "num_workers"))
    if pp > 1:
        raise Unexpressed("pipeline-parallel serving (pp > 1) is not modelled")
    if tp > 1 and adp > 1:
        raise Unexpressed(f"tp {tp} with attention DP {adp} (TP inside DP attention groups) is "
                          "not modelled")
    worker = tp * adp
    if tp > gpn:
        raise Unexpressed(f"tensor-parallel attention over {tp} GPUs spans nodes of {gpn}")
    if model.moe is not None and mtp * mep != worker:
        raise Unexpressed(f"moe_tp x moe_ep = {mtp} x {mep} does not cover the worker's "
                          f"{worker} GPUs")
    if model.moe is not None and mtp > 1 and tp == 1:
        raise Unexpressed("MoE tensor parallelism under DP attention is not modelled")
    gpus = worker * workers
    plan = {"gpus": gpus, "gpus_per_node": min(gpn, worker), "tp": tp,
            "ep": mep if model.moe is not None else 1}
    if tp > 1:
        plan["attention_tp"] = tp
        if model.moe is not None:
            plan["moe_tp"] = mtp
    return plan, adp * workers


def checkpoint_mode(cfg: dict) -> str:
    """The quantisation mode of a checkpoint's own config.json: its quantization_config
    (fp8 with a weight block size: fp8_block; mxfp4), else bf16."""
    q = cfg.get("quantization_config") or {}
    method = str(q.get("quant_method", "")).lower()
    if method == "fp8":
        return "fp8_block" if q.get("weight_block_size") else "fp8"
    return method if method in ("mxfp4", "nvfp4") else "bf16"


def _precision(row: dict, model, cfg: dict, a: dict, assumed: list[str]) -> dict:
    modes = a["quant_modes"]
    g, e = row["gemm_quant_mode"], row["moe_quant_mode"]
    if not g:
        g = checkpoint_mode(cfg)
        assumed.append(f"gemm_quant_mode empty: the checkpoint's own ({g})")
    if not e:
        e = g if model.moe is None else checkpoint_mode(cfg)
        if model.moe is not None:
            assumed.append(f"moe_quant_mode empty: the checkpoint's own ({e})")
    for what, mode in (("gemm_quant_mode", g), ("moe_quant_mode", e)):
        if mode not in modes:
            raise Unexpressed(f"{what} {mode} is not a precision moesim knows")
    weights = modes[e] if model.moe is not None else modes[g]
    if model.moe is not None and modes[e]["weight_bytes"] != modes[g]["weight_bytes"]:
        assumed.append(f"every weight at the experts' {e} width "
                       f"({modes[e]['weight_bytes']} bytes; one width per workload)")
    arch = "blackwell_compute" if row["system"] in a["fp4_systems"] else "hopper_compute"
    compute = {"dense_gemm": modes[g][arch], "expert_gemm": modes[e][arch],
               "attention": "bf16", "lm_head": "bf16"}
    for mode in sorted({g, e}):
        if modes[mode][arch] == "bf16" and mode != "bf16":
            assumed.append(f"{mode} weights widened to bf16 GEMMs (no tensor cores of that "
                           f"width on {row['system']})")
    kv = a["kv_bytes"]
    quantised = {g, e} & {"fp8", "fp8_block", "nvfp4"}
    if quantised and row["backend"] in a["kv_bytes_quantized"]:
        kv = a["kv_bytes_quantized"][row["backend"]]
        assumed.append(f"KV cache in {kv:g}-byte elements: {row['backend']} follows the "
                       "quantised checkpoint's KV format (ModelOpt's default, FP8)")
    else:
        assumed.append(f"KV cache in {kv:g}-byte elements (the engine's default)")
    return {"weight_bytes": weights["weight_bytes"], "activation_bytes": 2.0,
            "kv_bytes": kv, "dispatch_bytes": modes[e]["dispatch_bytes"],
            "combine_bytes": 2.0, "compute": compute, "fp8_scaling": _fp8_scaling(g, e, cfg,
                                                                                assumed)}


def _fp8_scaling(g: str, e: str, cfg: dict, assumed: list[str]) -> str:
    """Block-scaled FP8 where the row or its checkpoint (a weight block size) says so: the
    engine runs the kernels the checkpoint's weights need."""
    if "fp8_block" in (g, e):
        return "block"
    if "fp8" in (g, e) and checkpoint_mode(cfg) == "fp8_block":
        assumed.append("fp8 read as block-scaled: the checkpoint's weights have a block size")
        return "block"
    return "tensor"


def _runtime(row: dict, profile: str, assumed: list[str]) -> dict:
    """The row's engine as the workload's runtime: the profile's measured tables of the row's
    backend (its own version where the profile has it, else the newest it has, said so)."""
    have = {m.version for m in load_profile(profile).measured_kernels
            if m.framework == row["backend"]}
    if not have:
        raise Unexpressed(f"{profile} has no measured kernel tables for {row['backend']}")
    version = row["backend_version"]
    if version in have:
        return {"framework": row["backend"], "version": version}
    newest = max(have, key=version_key)
    assumed.append(f"kernels measured under {row['backend']} {newest} (the row ran "
                   f"{version or 'an unstated version'})")
    return {"framework": row["backend"], "version": newest}


CALIBRATED = ("extra_kernels_per_layer", "request_overhead_s", "kv_transfer_s")  # the fit's


def uncalibrated_presets(folder: Path, request_overhead_s: float = 0.0,
                         kv_transfer_s: float = 0.0) -> Path:
    """Copies of the serving runtime presets with the calibrated costs at zero (the request
    overhead and the KV transfer at the values given), in `folder` (the runs
    benchmarks/serving_runtime_fit.py fits them from)."""
    import yaml
    from simulator.loading import SERVING_RUNTIMES_DIR, known_names
    for name in known_names(SERVING_RUNTIMES_DIR):
        data = read_yaml_mapping(SERVING_RUNTIMES_DIR / f"{name}.yaml")
        for key in CALIBRATED:
            data[key] = {"value": 0.0, "source": "zeroed for the calibration's starting point"}
        data["request_overhead_s"]["value"] = request_overhead_s
        data["kv_transfer_s"]["value"] = kv_transfer_s
        (folder / f"{name}.yaml").write_text(yaml.safe_dump(data))
    return folder


def to_case(row: dict, models: Models, a: dict, presets: Path | None = None) -> Case:
    """The row as a moesim serving workload, or Unexpressed with the reason."""
    system = row["system"]
    if system not in a["systems"]:
        raise Unexpressed(f"no moesim profile for {system} (profiles exist for "
                          f"{', '.join(a['systems'])})")
    conc = concurrency(row)
    if conc is None:
        raise Unexpressed("the measured concurrency is not stated")
    model_yaml, model, assumed_model = models.path(row["model_path"])
    assumed = [assumed_model] if assumed_model else []
    publisher, note = disaggregated_run(row, conc, load_runs()) if row["mode"] == "disagg" \
        else (None, "")
    assumed += [note] if note else []
    if publisher:
        row, changed = with_pools(row, publisher)
        assumed.append(f"pools as InferenceX configured the run ({publisher['key']}"
                       + (f", {publisher['recipe']}" if publisher["recipe"] else "") + ")"
                       + (": " + "; ".join(changed) if changed else ""))
    backend = row["backend"]
    isl, osl = int(float(row["isl"])), int(float(row["osl"]))
    prec = _precision(row, model, models.config(row["model_path"]), a, assumed)
    gpn = int(load_profile(a["systems"][system]).gpus_per_node.value)
    n_req = a["requests_per_client"] * conc
    serving = {"arrivals": {"process": "closed", "concurrency": conc, "requests": n_req},
               "input_tokens": {"mean": isl}, "output_tokens": {"mean": osl},
               "drain_s": 0.0}
    serving.update(client_lengths(row, isl, osl, a, assumed))
    if row["mode"] == "agg":
        plan, dp = _pool(row, "", model, gpn, assumed)
        serving.update(mode="colocated")
    elif row["mode"] == "disagg":
        plan, dp = _pool(row, "decode_", model, gpn, assumed)
        pplan, _ = _pool(row, "prefill_", model, gpn, assumed)
        pb = _number(row.get("prefill_batch_size")) or 1
        serving.update(mode="disaggregated",
                       decode={"plan": plan},
                       prefill={"plan": pplan, "max_tokens_per_device": int(isl * max(pb, 1))})
    else:
        raise Unexpressed(f"mode {row['mode']!r} is neither agg nor disagg")
    if row.get("_same_as"):
        assumed.append(f"the same measurement as {', '.join(row['_same_as'])} (listed again in "
                       "the corpus, counted once: this record states the most fields)" +
                       (f"; the other record states other {', '.join(row['_differs'])}: this "
                        "record's are used" if row.get("_differs") else ""))
    assumed += [f"{a['requests_per_client']} requests per client, all clients starting at once",
                "measured figures read as the mean over requests"]
    try:
        mtp, note = (run_mtp(row, publisher, model.family, a), "") if publisher else \
            single_node_mtp(row, conc, load_runs(), model.family, a) if row["mode"] == "agg" \
            else (None, "")
    except NotSettled as e:
        raise Unexpressed(str(e)) from None
    assumed += [note] if note else []
    if mtp and not model.mtp_layers:
        raise Unexpressed(f"ran with MTP but {row['model_path']} has no MTP layer in its config")
    assumed.append(f"MTP with {mtp['draft_tokens']} draft token(s) accepted at "
                   f"{mtp['acceptance']:g} (silicon.yaml mtp_acceptance), as its publisher ran "
                   "it" if mtp else "no MTP / speculative decoding")
    launched, notes = launch_settings(row, a, conc, bool(mtp))
    serving.update(launched)
    assumed += notes
    runtime = _runtime(row, a["systems"][system], assumed)
    preset = serving_runtime_for(backend, row["backend_version"])
    assumed.append(f"scheduled as {backend}'s defaults (runtime preset {preset})")
    if presets is not None:
        runtime["preset"] = str(presets / f"{preset}.yaml")
    w = {"name": f"silicon-{row['id']}"[:200], "model": model_yaml,
         "hardware": a["systems"][system], "plan": plan, "phase": "decode", "runtime": runtime,
         "batch_per_device": max(1, math.ceil(conc / dp)), "context_length": isl,
         "schedule": "sequential", "precision": prec, "serving": serving}
    if mtp:
        w["mtp"] = mtp
    if model.moe is not None and plan.get("attention_tp", 1) == 1 and plan["ep"] > 1:
        w["routing"] = {"popularity": "uniform"}
    return Case(row, w, assumed, model.num_layers,
                load_profile(a["systems"][system]).kernel_latency_s.value)


def client_lengths(row: dict, isl: int, osl: int, a: dict, assumed: list[str]) -> dict:
    """The request lengths the record's benchmark client drew: uniform from int(L x ratio) to
    L where its source is one silicon.yaml `random_lengths` names, else fixed."""
    spec = a["random_lengths"]
    if not re.search(spec["sources"], row.get("silicon_data_source", "") or ""):
        assumed.append("every request of the stated lengths (a fixed-length client)")
        return {}
    r = float(spec["range_ratio"])
    assumed.append(f"lengths drawn uniformly from {r:g} x to 1 x the stated ones, as InferenceX's "
                   f"client draws them (--random-range-ratio {r:g})")
    return {"input_tokens": {"dist": "uniform", "min": max(1, int(isl * r)), "max": isl},
            "output_tokens": {"dist": "uniform", "min": max(1, int(osl * r)), "max": osl}}


# -- running ----------------------------------------------------------------------------------
def predict(cases: list[Case], workers: int, progress=None) -> list[tuple[Case, dict | None,
                                                                         str | None]]:
    """Every case's serve metrics (or its error), through the sweep's worker pool."""
    from simulator.outputs.pool import Point, execute
    points = [Point(str(i), {}, c.workload) for i, c in enumerate(cases)]
    out: list = [None] * len(cases)
    done = 0
    for point, (metrics, error) in execute(points, "serve", "local", workers):
        out[int(point.key)] = (cases[int(point.key)], metrics, error)
        done += 1
        if progress:
            progress(done, len(cases))
    return out


def _err(pred: float | None, meas: float) -> float | None:
    return None if pred is None or not meas > 0 else pred / meas - 1.0


def result_row(case: Case, metrics: dict) -> dict:
    """One row of the JSON: measured and predicted TTFT and TPOT, and their errors."""
    r = case.row
    conc = concurrency(r)
    out = {"id": r["id"], "system": r["system"], "backend": r["backend"],
           "backend_version": r["backend_version"], "model": r["model_path"], "mode": r["mode"],
           "isl": int(float(r["isl"])), "osl": int(float(r["osl"])), "concurrency": conc,
           "sweep": sweep_key(r), "assumed": case.assumed, "same_as": r.get("_same_as", []),
           "layers": case.layers, "kernel_latency_s": case.kernel_latency_s}
    for key in ("ttft_ms", "tpot_ms"):
        meas = float(r[f"silicon_{key}"])
        pred = metrics[key]["mean"]
        out[key] = {"measured": meas, "predicted": pred, "error": _err(pred, meas)}
    return out


def run(csv_path: Path, configs: Path, workers: int = 1, limit: int | None = None,
        systems: list[str] | None = None, progress=None, uncalibrated: bool = False,
        request_overhead_s: float = 0.0, kv_transfer_s: float = 0.0) -> dict:
    """The whole benchmark: {csv, held_apart, rows, unexpressed, summary}; uncalibrated: the
    presets' calibrated costs at zero but the request overhead and KV transfer given (then in
    the result too)."""
    a = read_yaml_mapping(ASSUMPTIONS)
    held = set(a["held_apart"])
    rows = read_rows(csv_path)
    kept = [r for r in rows if r["model_path"] not in held]
    if systems:
        kept = [r for r in kept if r["system"] in systems]
    kept, repeats = one_per_measurement(kept)
    if limit is not None:
        kept = kept[:limit]
    cases, unexpressed = [], []
    with tempfile.TemporaryDirectory(prefix="moesim-silicon-") as tmp:
        models = Models(configs, Path(tmp))
        presets = None
        if uncalibrated:
            presets = Path(tmp) / "presets"
            presets.mkdir()
            uncalibrated_presets(presets, request_overhead_s, kv_transfer_s)
        for r in kept:
            try:
                cases.append(to_case(r, models, a, presets))
            except Unexpressed as exc:
                unexpressed.append({"id": r["id"], "reason": str(exc)})
        results = predict(cases, workers, progress)
    out_rows = []
    for case, metrics, error in results:
        if error is not None:
            unexpressed.append({"id": case.row["id"], "reason": f"moesim refused it: {error}"})
        else:
            out_rows.append(result_row(case, metrics))
    n_held = sum(r["model_path"] in held for r in rows)
    out = {"csv": str(csv_path), "held_apart": {"models": sorted(held), "rows": n_held},
           "repeats": repeats, "rows": out_rows, "unexpressed": unexpressed,
           "summary": summary(out_rows)}
    if uncalibrated:
        out["request_overhead_s"], out["kv_transfer_s"] = request_overhead_s, kv_transfer_s
    return out


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; print the summary; --json and --report write it."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--csv", type=Path, default=None, help="default: the package's own corpus")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--report", type=Path, default=None)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--limit", type=int, default=None, help="only the first N allowed rows")
    ap.add_argument("--systems", default=None, help="comma-separated systems to keep")
    ap.add_argument("--bands", type=Path, default=None,
                    help="write the error bands simulate reports (hardware_profiles/fidelity/bands.yaml)")
    ap.add_argument("--uncalibrated", action="store_true",
                    help="the serving presets' calibrated costs at zero (benchmarks/"
                    "serving_runtime_fit.py fits them from this run's JSON)")
    ap.add_argument("--request-overhead-ms", type=float, default=0.0,
                    help="with --uncalibrated: every preset's request overhead at this (the "
                    "fit reads runs at several)")
    ap.add_argument("--kv-transfer-ms", type=float, default=0.0,
                    help="with --uncalibrated: every preset's fixed KV transfer time of a "
                    "disaggregated request at this")
    args = ap.parse_args(argv)
    try:
        from simulator.atomic import check_output_path
        for opt, p in (("--json", args.json), ("--report", args.report), ("--bands", args.bands)):
            if p is not None:
                check_output_path(p, opt)
        for opt, ms in (("--request-overhead-ms", args.request_overhead_ms),
                        ("--kv-transfer-ms", args.kv_transfer_ms)):
            if not 0 <= ms <= 10_000 or (ms and not args.uncalibrated):
                raise MoesimError(opt, f"{ms:g} is not 0 to 10,000 ms on an --uncalibrated "
                                  "run", "give it with --uncalibrated, in milliseconds")
        if args.workers < 1:
            raise MoesimError("--workers", f"{args.workers} is not a positive count",
                              "use 1 or more")
        csv_path = args.csv or package_dir() / "systems" / "silicon_sample.csv"
        configs = package_dir() / "model_configs"
        bar = _progress_bar()
        res = run(csv_path, configs, args.workers, args.limit,
                  args.systems.split(",") if args.systems else None, bar, args.uncalibrated,
                  args.request_overhead_ms / 1e3, args.kv_transfer_ms / 1e3)
        print(file=sys.stderr)
        print_summary(res)
        if args.json:
            from simulator.atomic import write_text_atomic
            from simulator.jsonout import dumps
            write_text_atomic(args.json, dumps(res), "--json")
        if args.bands:
            from simulator.atomic import write_text_atomic
            command = "python benchmarks/silicon.py " + " ".join(argv or sys.argv[1:])
            write_text_atomic(args.bands, bands_yaml(res, command, read_yaml_mapping(
                ASSUMPTIONS)["systems"]), "--bands")
        if args.report:
            from simulator.outputs.report import write_figures
            s = res["summary"]["overall"]["tpot_ms"]
            write_figures(figures(res), "moesim against the silicon corpus", args.report,
                          f"<p>{s['rows']} rows; TPOT median |error| "
                          f"{(s['median_abs_error'] or 0):.1%}, p90 "
                          f"{(s['p90_abs_error'] or 0):.1%}; {len(res['unexpressed'])} rows "
                          "not expressed (docs/accuracy.md)</p>")
    except MoesimError as exc:
        print(f"error: {exc.render()}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
    return 0


def _progress_bar():
    def show(done: int, total: int) -> None:
        width = 30
        k = int(width * done / max(total, 1))
        print(f"\r[{'#' * k}{'.' * (width - k)}] {done}/{total} rows", end="", file=sys.stderr,
              flush=True)
    return show


if __name__ == "__main__":
    sys.exit(main())
