"""Console tables of typed results (rich renderables): what the CLI prints, in one place."""
from __future__ import annotations

import math
import re
from typing import TYPE_CHECKING, Iterable, Optional

from rich.table import Table

if TYPE_CHECKING:                       # the CLI imports this module at start-up: stay light
    from simulator.schema import ServingRuntime
    from simulator.step.result import StepResult
    from simulator.training.result import TrainResult

TOP_ROWS = 25              # sweep rows printed (all are in --json and the results file)


def fmt(x: Optional[float], nd: int = 1) -> str:
    """A number with thousands separators, or '-' when undefined."""
    return "-" if x is None else f"{x:,.{nd}f}"


def sig(x: float) -> str:
    """Three significant digits without exponents: 1,307 / 989 / 2.04 / 0.117."""
    return f"{x:,.0f}" if abs(x) >= 100 else f"{x:.3g}"


def sourced_cell(data: dict, keys: tuple[str, ...], scale: float, fmt: str | None) -> str:
    """A profile mapping's `{value, source}` number at `keys`, divided by `scale` and formatted
    (`sig` when fmt is None); '?' when it is not a number (the profile does not validate)."""
    node = data
    for k in keys:
        node = node.get(k) if isinstance(node, dict) else None
    value = node.get("value") if isinstance(node, dict) else None
    try:                # YAML 1.1 reads 312.0e12 (no exponent sign) as text; the schema coerces
        number = float(value) if not isinstance(value, bool) else None
    except (TypeError, ValueError):
        number = None
    if number is None or number != number:
        return "?"
    return sig(number / scale) if fmt is None else format(number / scale, fmt)


CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def printable(text: str) -> str:
    """`text` with control characters (ANSI escapes, bells, carriage returns) shown as \\xNN,
    so a name in a file cannot drive the terminal (the HTML reports escape them too)."""
    return CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text)


def _table(title: str, cols: Iterable[str], left: Iterable[str] = ()) -> Table:
    table = Table(title=printable(title))
    left = set(left)
    for c in cols:
        table.add_column(c, justify="left" if c in left else "right")
    return table


def layer_table(res: StepResult) -> Table:
    """Every op of the representative layer on rank 0, in start order."""
    tl, r, layer = res.timeline, res.resolved, res.representative_layer
    idx = [i for i, op in enumerate(tl.ops) if op.layer == layer]
    t0 = min(tl.start_s[0, i] for i in idx)
    table = _table(f"{r.workload.name}: layer {layer} under {res.schedule} "
                   f"({r.model.name} on {r.profile.name})",
                   ("op", "kind", "stream", "start us", "us", "alone us", "GFLOP", "MB"),
                   ("op", "kind", "stream"))
    for i in sorted(idx, key=lambda i: (tl.start_s[0, i], i)):
        op = tl.ops[i]
        table.add_row(op.name, op.kind, tl.streams[i], fmt((tl.start_s[0, i] - t0) * 1e6),
                      fmt((tl.end_s[0, i] - tl.start_s[0, i]) * 1e6),
                      fmt(tl.standalone_s[i] * 1e6), fmt(op.flops / 1e9, 2),
                      fmt(op.bytes / 1e6, 2))
    return table


def totals_table(results: list[StepResult], title: str = "totals") -> Table:
    """One row per schedule with its speedup over the first."""
    table = _table(title, ("schedule", "layer us", "step ms", "TPOT ms", "tok/GPU/s",
                              "exposed comm us", "hidden comm us", "$/M out", "speedup"),
                   ("schedule",))
    base = results[0].step_time_s
    for r in results:
        table.add_row(r.schedule, fmt(r.layer_time_s * 1e6), fmt(r.step_time_s * 1e3, 2),
                      fmt(None if r.tpot_s is None else r.tpot_s * 1e3, 2),
                      fmt(r.tokens_per_gpu_s, 0), fmt(r.exposed_comm_s * 1e6, 0),
                      fmt(r.hidden_comm_s * 1e6, 0), fmt(r.cost_per_million_output_tokens, 3),
                      f"{base / r.step_time_s:.2f}x")
    return table


def link_lines(results: list[StepResult]) -> list[str]:
    """Per schedule: link utilisation of the slowest rank and the EP routing summary."""
    lines = []
    for r in results:
        links = ", ".join(f"{k} {v['utilisation']:.0%}" for k, v in r.links.items())
        line = f"{r.schedule}: link utilisation (slowest rank) {links or '-'}"
        if r.ep:
            ep = r.ep
            line += (f"; EP {ep['kernel']} kernel, rank imbalance {ep['imbalance']:.2f} "
                     f"(max/mean expert rows), expert imbalance {ep['expert_imbalance']:.2f}, "
                     f"real experts/token {ep['real_experts_mean']:.2f} +- "
                     f"{ep['real_experts_std']:.2f}")
        lines.append(line)
        f = r.fidelity
        band = f"; expected error +-{f['expected_error_pct']:.0f}% (silicon corpus p90, " \
            "docs/accuracy.md)" if f["expected_error_pct"] is not None else ""
        tables = f" ({f['kernel_tables']} kernels)" if f.get("kernel_tables") else ""
        lines.append(f"{r.schedule}: {f['measured_share']:.0%} of op time priced inside "
                     f"measured tables{tables}{band}")
        if f["extrapolated"]:
            lines.append(f"{r.schedule}: warning: priced outside the measured shapes: "
                         f"{'; '.join(f['extrapolated'][:4])}")
    return lines


def tie_note(results: list[StepResult]) -> Optional[str]:
    """Why scmoe and sbo print the same row, when they do."""
    by = {x.schedule: x.step_time_s for x in results}
    if "scmoe" in by and "sbo" in by and math.isclose(by["scmoe"], by["sbo"], rel_tol=1e-9):
        return ("scmoe and sbo time the same here. Both overlap the shortcut MoE's all-to-all "
                "with dense compute; sbo fixes the experts right after the next attention's QKV "
                "projection (LongCat-Flash's four stages), while scmoe picks the slot that best "
                "balances compute against dispatch and combine, and here that is the same slot. "
                "They differ when dispatch and combine are unequal enough to pull the slot "
                "elsewhere (e.g. a slow NIC or a large batch).")
    return None


def rank_spread(res: StepResult) -> tuple[Table, str]:
    """A --per-rank run: when each rank finishes the step, slowest first, and the spread."""
    import numpy as np
    tl = res.timeline
    ends = tl.end_s.max(axis=1) * 1e3
    busy = np.array([sum(tl.end_s[r, i] - tl.start_s[r, i] for i, op in enumerate(tl.ops)
                         if not op.is_comm) for r in range(ends.size)]) * 1e3
    order = np.argsort(-ends, kind="stable")
    table = _table(f"per rank: {ends.size} ranks, step end min {ends.min():.3f} / median "
                   f"{float(np.median(ends)):.3f} / max {ends.max():.3f} ms",
                   ("rank", "step end ms", "compute busy ms", "waiting ms"))
    shown = list(order[:5]) + ([int(order[-1])] if ends.size > 5 else [])
    for r in shown:
        table.add_row(str(int(r)), f"{ends[r]:.3f}", f"{busy[r]:.3f}", f"{ends[r] - busy[r]:.3f}")
    return table, (f"slowest 5 ranks and the fastest shown; the spread max/min is "
                   f"{ends.max() / ends.min():.4f}")


def train_table(res: TrainResult) -> Table:
    """Step time, MFU, tokens/day, exposure, memory, days and $ of a training what-if."""
    table = _table(f"{res.workload}: {res.model} on {res.gpus} x {res.hardware}, "
                   f"{res.schedule} layers, {res.pipeline} pipeline", ("quantity", "value"),
                   ("quantity",))
    rows = [("step time", f"{res.step_time_s:.2f} s"),
            ("MFU", f"{res.mfu:.1%} of the BF16 peak"
             + (f", {res.mfu_at_precision_peak:.1%} of the {res.precision.upper()} peak"
                if res.precision != "bf16" else "")),
            ("step parts", ", ".join(f"{k.replace('_', ' ')} {v:.2f} s"
                                     for k, v in res.breakdown_s.items() if v > 0)),
            ("inside the passes", ", ".join(f"{k.replace('_', ' ')} {v:.2f} s"
                                            for k, v in res.within_s.items())),
            ("tokens/day", f"{res.tokens_per_day / 1e9:.1f} B"),
            ("exposed communication", f"{res.exposed_comm_fraction:.1%} of the step"),
            ("pipeline bubble", f"{res.bubble_fraction:.1%}"),
            ("peak memory per GPU", f"{res.memory.total / 1e9:.1f} GB"),
            ("micro-batches per step", str(res.micro_batches)),
            ("largest micro-batch that fits", f"{res.max_micro_batch} sequences"),
            (f"days to train {res.tokens_to_train / 1e12:g}T tokens", f"{res.days_to_train:.1f}"),
            ("cost", f"${res.cost_usd / 1e6:.2f} M")]
    if res.fidelity:
        rows.append(("priced inside measured tables",
                     f"{res.fidelity['measured_share']:.0%} of a micro-batch"))
    for k, v in rows:
        table.add_row(k, v)
    return table


def serve_tables(m: dict, cap: float) -> tuple[Table, list[str]]:
    """Latency percentiles, then the throughput, cost and request lines of a serving run."""
    table = _table(f"{m['workload']}: {m['requests']['arrived']} requests, {m['mode']}",
                   ("metric", "p50", "p90", "p99"), ("metric",))
    for key in ("ttft_ms", "tpot_ms", "itl_ms", "e2e_ms"):
        table.add_row(key, *(fmt(m[key][p]) for p in ("p50", "p90", "p99")))
    r, th = m["requests"], m["throughput"]
    lines = [
        f"engine: runtime preset {m['runtime_preset']} (`moesim runtimes`)",
        f"makespan {th['makespan_s']:.1f} s; {th['requests_per_s']:.2f} requests/s; output "
        f"{fmt(th['output_tokens_per_s'], 0)} tokens/s ({fmt(th['output_tokens_per_s_per_gpu'], 0)}"
        f" per GPU, {fmt(th['output_tokens_per_s_per_node'], 0)} per node, every GPU counted)",
        f"tokens/s per user {fmt(m['tokens_per_s_per_user'])}; decode tokens/GPU/s "
        f"{fmt(m['decode_tokens_per_gpu_s'], 0)}; prefill tokens/GPU/s "
        f"{fmt(m['prefill_tokens_per_gpu_s'], 0)}",
        f"$ per million output tokens: {fmt(m['cost_per_million_output_tokens'], 3)} "
        f"(decode GPUs only), {fmt(m['cost_per_million_output_tokens_all_gpus'], 3)} "
        f"(all GPUs, prefill included); $ per million input tokens (prefill GPUs): "
        f"{fmt(m['cost_per_million_input_tokens'], 3)}",
        f"requests: {r['arrived']} arrived, {r['finished']} finished, {r['rejected']} rejected, "
        f"{r['preempted']} preemptions; goodput {m['goodput_rps']:.1f} req/s under SLO "
        f"TTFT {m['slo']['ttft_ms']:.0f} ms / TPOT {m['slo']['tpot_ms']:.0f} ms; "
        f"KV utilisation mean {m['kv_utilisation']['mean']:.0%}, max "
        f"{m['kv_utilisation']['max']:.0%}; capacity {cap:.1f} req/s"]
    f = m.get("fidelity")
    if f:
        band = f["expected_error_pct"]
        tables = f" ({f['kernel_tables']} kernels)" if f.get("kernel_tables") else ""
        lines.append(
            f"fidelity{tables}: {f['measured_share']:.0%} of a busy decode step and "
            f"{f['prefill_measured_share']:.0%} of a mean prefill priced inside measured tables; "
            f"expected error TPOT +-{fmt(band['tpot_ms'], 0)}%, TTFT +-{fmt(band['ttft_ms'], 0)}% "
            "(silicon corpus p90, docs/accuracy.md)")
    return table, lines


def batch_sweep_table(name: str, context: int, points: list[dict]) -> Table:
    """Throughput against interactivity, one row per (schedule, batch)."""
    table = _table(f"{name}: throughput vs interactivity (context {context})",
                   ("schedule", "batch/device", "tok/s/user", "tok/GPU/s", "TPOT ms", "$/M out",
                    "note"), ("schedule", "note"))
    for p in points:
        table.add_row(p["schedule"], str(p["batch_per_device"]), fmt(p["tokens_per_s_per_user"]),
                      fmt(p["tokens_per_gpu_s"], 0), fmt(p["tpot_ms"], 2),
                      fmt(p["cost_per_million_output_tokens"], 3), p["note"] or "")
    return table


def sweep_table(name: str, rows: list[dict], front_keys: set[str], path: str) -> Table:
    """The best TOP_ROWS points by tokens/GPU/s (saying so when there are more)."""
    ok = [r for r in rows if r["metrics"]]
    shown = min(len(ok), TOP_ROWS)
    top = f"; the best {shown} by tok/GPU/s shown (--json for all)" if shown < len(ok) else ""
    fields = sorted({k for r in rows for k in r["overrides"]})
    table = _table(f"sweep {name}: {len(rows)} points ({len(rows) - len(ok)} failed), "
                   f"results in {path}{top}",
                   fields + ["step ms", "TPOT ms", "tok/GPU/s", "$/M out", "Pareto"], fields)
    for r in sorted(ok, key=lambda r: -(r["metrics"].get("tokens_per_gpu_s") or 0))[:TOP_ROWS]:
        m = r["metrics"]
        table.add_row(*[str(r["overrides"].get(f, "")) for f in fields],
                      fmt(m.get("step_time_ms"), 2), fmt(m.get("tpot_ms"), 2),
                      fmt(m.get("tokens_per_gpu_s"), 0),
                      fmt(m.get("cost_per_million_output_tokens"), 3),
                      "*" if r["key"] in front_keys else "")
    return table


def fits_table(title: str, profile: dict) -> Table:
    """Held-out error of every fit a calibration stored in a profile mapping."""
    table = _table(title, ("fit", "held-out MAPE", "points", "flag"), ("fit",))
    for k, q in profile["calibration"]["fits"].items():
        table.add_row(k, f"{q['mape']:.1%}", str(q["points"]), "above 10%" if q["flagged"] else "")
    return table


def import_table(title: str, reports) -> Table:
    """Per op class of a measured-kernel import: tables, rows, shape ranges covered and the
    k-fold held-out error of the interpolation (outputs/aiconfigurator_profile.report)."""
    table = _table(title, ("op class", "tables", "rows", "shapes covered", "held out",
                           "median", "p90"), ("op class",))
    for r in reports:
        ranges = ", ".join(f"{a} {lo:.4g}-{hi:.4g}" for a, (lo, hi) in r.ranges.items())
        table.add_row(r.op_class, str(r.tables), str(r.rows), ranges, str(r.held_out),
                      f"{r.median_pct:.1f}%", f"{r.p90_pct:.1f}%")
    return table


def profile_rows(data: dict, prefix: str = ""):
    """(field, value, source) of every number and table of a profile's dump."""
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
            yield from profile_rows(value, f"{name}.")
        elif key not in ("name",):
            yield name, str(value), ""


def plan_tables(res: dict) -> list[Table]:
    """The Pareto front of a plan, then the best configuration per hardware."""
    front = _table(f"{res['question']['model']}: Pareto front of tokens/s per GPU against "
                   "tokens/s per user", ("configuration", "tok/GPU/s", "tok/s/user", "TPOT ms",
                                         "TTFT ms", "$/M out", "SLO", "measured"),
                   ("configuration", "SLO"))
    for p in res["front"]:
        front.add_row(p["config"], fmt(p["tokens_per_gpu_s"], 0),
                      fmt(p["tokens_per_s_per_user"], 1), fmt(p["tpot_ms"], 2),
                      fmt(p["ttft_ms"], 0), fmt(p["cost_per_million_output_tokens"], 3),
                      "meets" if p["meets_slo"] else "-",
                      f"{p['fidelity']['measured_share']:.0%}")
    best = _table("best configuration meeting the SLO, per hardware and serving mode",
                  ("hardware", "configuration", "tok/GPU/s", "$/M out", "TPOT margin ms",
                   "TTFT margin ms"), ("hardware", "configuration"))
    for hw, modes in res["best_by_mode"].items():
        for mode, p in modes.items():
            if p is None:
                best.add_row(hw, f"{mode}: none meets the SLO", "-", "-", "-", "-")
            else:
                best.add_row(hw, p["config"], fmt(p["tokens_per_gpu_s"], 0),
                             fmt(p["cost_per_million_output_tokens"], 3),
                             fmt(p["slo_margin"]["tpot_ms"], 1),
                             fmt(p["slo_margin"]["ttft_ms"], 0))
    return [front, best]


def plan_lines(res: dict) -> list[str]:
    """The counts of a plan, and why nothing met the SLO where nothing did."""
    c, q = res["candidates"], res["question"]
    lines = [f"{c['tried']} candidates tried, {c['pruned']} pruned (do not fit in memory), "
             f"{c['priced']} priced; SLO TTFT {q['ttft_ms']:g} ms (one prompt's prefill, no "
             f"queueing), TPOT {q['tpot_ms']:g} ms; {q['isl']} input / {q['osl']} output tokens"]
    for hw, why in res["unmet"].items():
        lines.append(f"{hw}: nothing meets the SLO: {why}")
    return lines


def plan_train_table(res: dict) -> Table:
    """A training plan: the front of days against GPUs, then the fastest and cheapest per
    hardware."""
    q = res["question"]
    table = _table(f"{q['model']}: {q['tokens_to_train']:.3g} tokens, front of days against "
                   "GPUs, then the fastest and the cheapest per hardware",
                   ("", "configuration", "days", "$", "MFU", "step s", "memory GB", "measured"),
                   ("", "configuration"))
    rows = [("front", p) for p in res["front"]]
    rows += [(f"{what} on {hw}", p) for what in ("fastest", "cheapest")
             for hw, p in res[what].items() if p is not None]
    for label, p in rows:
        share = p["fidelity"]["measured_share"]
        table.add_row(label, p["config"], fmt(p["days_to_train"], 1), fmt(p["cost_usd"], 0),
                      f"{p['mfu']:.1%}", fmt(p["step_time_s"], 2), fmt(p["peak_memory_gb"], 1),
                      "-" if share is None else f"{share:.0%}")
    return table


def load_sweep_table(name: str, kind: str, points: list[dict]) -> Table:
    """Latency and throughput at each offered load (closed-loop clients or Poisson rate)."""
    table = _table(f"{name}: latency against {kind}", ("runtime", kind, "TTFT p50 ms",
                                                        "TTFT p90 ms", "TPOT p50 ms",
                                                        "TPOT p90 ms", "tok/GPU/s",
                                                        "tok/s/user", "preempted"))
    for p in points:
        table.add_row(p["runtime_preset"], f"{p[kind]:g}", fmt(p["ttft_ms"]["p50"]),
                      fmt(p["ttft_ms"]["p90"]),
                      fmt(p["tpot_ms"]["p50"], 2), fmt(p["tpot_ms"]["p90"], 2),
                      fmt(p["output_tokens_per_s_per_gpu"], 0), fmt(p["tokens_per_s_per_user"]),
                      str(p["requests"]["preempted"]))
    return table


def serving_runtimes_table() -> Table:
    """Every serving engine preset: how it batches, its caps, graphs, reservation, overlap, and
    its calibrated costs (extra kernels a layer, request overhead)."""
    from simulator.loading import SERVING_RUNTIMES_DIR, known_names, load_serving_runtime
    table = _table("serving runtimes (hardware_profiles/runtimes/serving/; runtime.preset)",
                   ("name", "engine", "prefill", "chunk", "max running", "graphs up to",
                    "padding", "overlap", "KV reserve", "calibrated", "description"),
                   ("name", "description"))
    table.columns[-2].no_wrap = True            # the calibrated costs: a number with its unit
    for name in known_names(SERVING_RUNTIMES_DIR):
        rt = load_serving_runtime(name)
        table.add_row(name, f"{rt.engine} {rt.versions}", rt.mixing,
                      f"{rt.chunked_prefill_tokens.value:g}",
                      f"{rt.max_running_requests.value:g}", str(rt.cuda_graph_batch_sizes[-1]),
                      "yes" if rt.cuda_graph_padding else "no",
                      "yes" if rt.overlap_scheduler else "no",
                      f"{rt.kv_reserve_output.value:g}",
                      calibrated_costs(rt), rt.description)
    return table


def calibrated_costs(rt: ServingRuntime) -> str:
    """A serving preset's calibrated costs in a cell: extra kernels a layer, ms a request."""
    return (f"+{rt.extra_kernels_per_layer.value:g}/layer "
            f"{rt.request_overhead_s.value * 1e3:g} ms")


def runtimes_table() -> Table:
    """Every training framework preset: host ms per layer forward and per chunk pass,
    backward ratio, the kernel tables that price it, sources."""
    from simulator.loading import TRAINING_RUNTIMES_DIR, known_names, load_training_runtime
    table = _table("training runtimes (hardware_profiles/runtimes/training/)",
                   ("name", "host ms/layer fwd", "host ms/pass", "bwd/fwd", "kernel tables",
                    "source"), ("name", "source"))
    for name in known_names(TRAINING_RUNTIMES_DIR):
        rt = load_training_runtime(name)
        per_pass = rt.host_s_per_pass.value if rt.host_s_per_pass is not None else 0.0
        table.add_row(name, f"{rt.host_s_per_layer_forward.value * 1e3:.2f}",
                      f"{per_pass * 1e3:.2f}", f"{rt.backward_host_ratio.value:g}",
                      rt.kernel_tables or "workload's", rt.host_s_per_layer_forward.source)
    return table
