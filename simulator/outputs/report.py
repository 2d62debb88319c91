"""Self-contained interactive HTML report (plotly JS embedded, opens offline)."""
from __future__ import annotations

import html
from pathlib import Path

import plotly.graph_objects as go

from simulator.training.result import TrainResult
from simulator.atomic import write_text_atomic

COLORS = {"gemm": "#4C78A8", "grouped_gemm": "#F58518", "attention": "#54A24B",
          "elementwise": "#B0B0B0", "collective": "#E45756"}


def timeline_figure(results: list, layers: int = 3, max_ranks: int = 4) -> go.Figure:
    """Per-stream, per-rank Gantt of a few middle layers for each schedule, with the exposed
    communication (no compute running beside it) on its own row; hover shows achieved rates."""
    fig = go.Figure()
    seen: set[str] = set()
    rows = 0
    for res in results:
        tl, m = res.timeline, res.metrics
        rep = m["representative_layer"]
        keep = [i for i, op in enumerate(tl.ops) if abs(op.layer - rep) <= layers // 2]
        if not keep:
            continue
        for r in range(min(tl.n_ranks, max_ranks)):
            t0 = min(tl.start_s[r, i] for i in keep)
            tag = f"{html.escape(m['schedule'])}" + (f" / rank {r}" if tl.n_ranks > 1 else "")
            for kind, color in COLORS.items():
                idx = [i for i in keep if tl.ops[i].kind == kind]
                if not idx:
                    continue
                dur = [(tl.end_s[r, i] - tl.start_s[r, i]) * 1e6 for i in idx]
                hover = [_hover(tl.ops[i], tl.streams[i], d) for i, d in zip(idx, dur)]
                fig.add_trace(go.Bar(
                    orientation="h", base=[(tl.start_s[r, i] - t0) * 1e6 for i in idx], x=dur,
                    y=[f"{tag} / {tl.streams[i]}" for i in idx], marker_color=color, name=kind,
                    legendgroup=kind, showlegend=kind not in seen, hovertext=hover,
                    hoverinfo="text"))
                seen.add(kind)
            exposed = [(a, b) for a, b in tl.exposed_intervals(r, keep) if b - a > 1e-12]
            if exposed:
                fig.add_trace(go.Bar(
                    orientation="h", base=[(a - t0) * 1e6 for a, _ in exposed],
                    x=[(b - a) * 1e6 for a, b in exposed], y=[f"{tag} / exposed comm"] * len(exposed),
                    marker_color="#B10026", name="exposed communication", legendgroup="exposed",
                    showlegend="exposed" not in seen,
                    hovertext=[f"exposed {(b - a) * 1e6:.1f} us" for a, b in exposed],
                    hoverinfo="text"))
                seen.add("exposed")
            rows += 3
    fig.update_layout(barmode="overlay", title=f"Timeline of {layers} middle layers "
                      "(dark red row: communication with no compute beside it)",
                      xaxis_title="time (us)", height=250 + 30 * rows)
    return fig


def _hover(op, stream: str, dur_us: float) -> str:
    sec = max(dur_us * 1e-6, 1e-12)
    return (f"{html.escape(op.name)}<br>{op.kind} on {stream}<br>{dur_us:.1f} us<br>"
            f"{op.flops / 1e9:.2f} GFLOP, {op.bytes / 1e6:.2f} MB<br>"
            f"{op.flops / sec / 1e12:.1f} TFLOP/s, {op.bytes / sec / 1e9:.1f} GB/s")


def summary_figure(results: list) -> go.Figure:
    """Step time and exposed communication per schedule."""
    names = [html.escape(r.metrics["schedule"]) for r in results]
    fig = go.Figure([
        go.Bar(name="step time (ms)", x=names, y=[r.metrics["step_time_ms"] for r in results]),
        go.Bar(name="exposed comm (ms)", x=names,
               y=[r.metrics["exposed_comm_us"] / 1e3 for r in results]),
        go.Bar(name="hidden comm (ms)", x=names,
               y=[r.metrics["hidden_comm_us"] / 1e3 for r in results])])
    fig.update_layout(barmode="group", title="Schedules side by side", yaxis_title="ms")
    return fig


def breakdown_figure(results: list) -> go.Figure:
    """Standalone op-time breakdown of one layer, per schedule."""
    fig = go.Figure()
    parts = list(results[0].metrics["breakdown_us"]) if results else []
    for part in parts:
        fig.add_trace(go.Bar(name=part, x=[html.escape(r.metrics["schedule"]) for r in results],
                             y=[r.metrics["breakdown_us"][part] for r in results]))
    fig.update_layout(barmode="stack", title="One layer's ops, standalone (us)", yaxis_title="us")
    return fig


def write_report(results: list, path: Path) -> None:
    """Schedules side by side: a summary table, step bars, op breakdown, timelines (atomic)."""
    first = results[0].metrics
    base = results[0].step_time_s

    def num(v, f):
        return "-" if v is None else format(v, f)
    rows = "".join(
        f"<tr><td>{html.escape(r.metrics['schedule'])}</td>"
        f"<td>{r.metrics['step_time_ms']:.3f}</td><td>{num(r.metrics['tpot_ms'], '.3f')}</td>"
        f"<td>{num(r.metrics['tokens_per_gpu_s'], ',.0f')}</td>"
        f"<td>{num(r.metrics['cost_per_million_output_tokens'], '.3f')}</td>"
        f"<td>{r.metrics['exposed_comm_us']:.0f}</td><td>{base / r.step_time_s:.2f}x</td></tr>"
        for r in results)
    table = ("<table border='1' cellpadding='4'><tr><th>schedule</th><th>step ms</th>"
             "<th>TPOT ms</th><th>tokens/GPU/s</th><th>$ per M output tokens</th>"
             f"<th>exposed comm us</th><th>speedup</th></tr>{rows}</table>")
    write_figures([summary_figure(results), breakdown_figure(results), timeline_figure(results)],
                  f"moesim: {first['workload']} ({first['model']} on {first['hardware']})", path,
                  intro=table + fidelity_html(first["fidelity"]) + STANDALONE_NOTE)


STANDALONE_NOTE = ("<p>The op breakdown bars are standalone times (each op with the GPU to "
                   "itself); under an overlapping schedule (scmoe, sbo, tbo) ops run side by "
                   "side, so a schedule's bars can sum to more than its step.</p>")


def fidelity_html(f: dict | None) -> str:
    """One paragraph: the measured share, the kernel tables and the expected error band."""
    if not f:
        return ""
    band = f.get("expected_error_pct")
    if isinstance(band, dict):
        band_text = ", ".join(f"{k.split('_')[0].upper()} +-{v:.0f}%" for k, v in band.items()
                              if v is not None)
    else:
        band_text = f"+-{band:.0f}%" if band is not None else ""
    band_text = f"expected error {band_text} (silicon corpus p90, docs/accuracy.md)" \
        if band_text else "no error band: the silicon corpus holds no run of this kind"
    tables = f" from {html.escape(f['kernel_tables'])} kernel tables" \
        if f.get("kernel_tables") else ""
    out = (f"<p><b>Fidelity</b>: {f['measured_share']:.0%} of the op time priced inside "
           f"measured tables{tables}; {band_text}.")
    if f.get("extrapolated"):
        out += " Priced outside the measured shapes: " + html.escape("; ".join(
            f["extrapolated"][:5])) + "."
    return out + "</p>"

def serving_figures(res, points, metrics: dict | None = None) -> list[go.Figure]:
    """Latency CDFs (with the SLO lines) and KV utilisation of a serving run; the
    throughput-interactivity curve."""
    import numpy as np
    figs = []
    if res is not None:
        cdf = go.Figure()
        for name, x in (("TTFT", res.ttft_s), ("TPOT", res.tpot_s), ("E2E", res.e2e_s)):
            if x.size:
                xs = np.sort(x) * 1e3
                cdf.add_trace(go.Scatter(x=xs, y=np.arange(1, xs.size + 1) / xs.size, name=name))
        cdf.update_layout(title="Latency CDFs", xaxis_title="latency (ms)", xaxis_type="log",
                          yaxis_title="fraction of requests")
        if metrics is not None:
            for name, v in (("TTFT SLO", metrics["slo"]["ttft_ms"]),
                            ("TPOT SLO", metrics["slo"]["tpot_ms"])):
                cdf.add_vline(x=v, line_dash="dash", annotation_text=name)
        figs.append(cdf)
        kv = go.Figure(go.Scatter(x=res.kv_t, y=res.kv_util, name="KV in use / budget"))
        kv.update_layout(title="KV-cache utilisation over time", xaxis_title="time (s)",
                         yaxis_title="fraction of the KV budget")
        figs.append(kv)
    if points:
        curve = go.Figure()
        for sched in dict.fromkeys(p["schedule"] for p in points):
            pts = [p for p in points if p["schedule"] == sched and p["tokens_per_gpu_s"]]
            curve.add_trace(go.Scatter(
                x=[p["tokens_per_s_per_user"] for p in pts], y=[p["tokens_per_gpu_s"] for p in pts],
                mode="lines+markers", name=html.escape(sched),
                hovertext=[f"batch {p['batch_per_device']}<br>${p['cost_per_million_output_tokens']:.3f}"
                           f" per M output tokens" for p in pts], hoverinfo="text+x+y"))
        curve.update_layout(title="Throughput vs interactivity ($ per million tokens on hover)",
                            xaxis_title="tokens/s per user", yaxis_title="tokens/GPU/s")
        figs.append(curve)
    return figs


def write_serving_report(res, points, path: Path, metrics: dict | None = None) -> None:
    """A serving report (headline numbers, CDFs, KV, curve) written atomically."""
    title = f"moesim serving: {res.metrics['workload']}" if res is not None else \
        "moesim serving report"
    intro = ""
    if metrics is not None:
        th, r = metrics["throughput"], metrics["requests"]

        def ms(k, p):
            v = metrics[k][p]
            return "-" if v is None else f"{v:,.1f}"
        cost = metrics["cost_per_million_output_tokens_all_gpus"]
        intro = (f"<p>{r['finished']} of {r['arrived']} requests finished, {r['preempted']} "
                 f"preemptions; makespan {th['makespan_s']:.1f} s; output "
                 f"{th['output_tokens_per_s']:,.0f} tokens/s ({th['output_tokens_per_s_per_gpu']:,.0f}"
                 f" per GPU); goodput {metrics['goodput_rps']:.2f} req/s; $ "
                 f"{'-' if cost is None else format(cost, '.3f')} per million output tokens "
                 f"(all GPUs).</p><p>TTFT p50 {ms('ttft_ms', 'p50')} ms, p99 "
                 f"{ms('ttft_ms', 'p99')} ms; TPOT p50 {ms('tpot_ms', 'p50')} ms, p99 "
                 f"{ms('tpot_ms', 'p99')} ms (SLO: TTFT {metrics['slo']['ttft_ms']:.0f} ms, "
                 f"TPOT {metrics['slo']['tpot_ms']:.0f} ms)</p>")
        f = metrics.get("fidelity")
        if f:
            intro += fidelity_html(f)
    write_figures(serving_figures(res, points, metrics), title, path, intro=intro)


def training_intro(res: TrainResult) -> str:
    """The training answer in one paragraph: days and $ to train, step, MFU, tokens/day."""
    return (f"<p>{res.tokens_to_train / 1e12:g}T tokens on {res.gpus} x "
            f"{html.escape(res.hardware)}: <b>{res.days_to_train:.1f} days, "
            f"${res.cost_usd / 1e6:.2f} M</b>; step {res.step_time_s:.2f} s, MFU {res.mfu:.1%}, "
            f"{res.tokens_per_day / 1e9:.1f} B tokens/day, exposed communication "
            f"{res.exposed_comm_fraction:.1%}, bubble {res.bubble_fraction:.1%}.</p>"
            + fidelity_html(res.fidelity))


def training_figure(res: TrainResult) -> go.Figure:
    """Where a training step's seconds go on the busiest stage (forward, backward,
    recompute, host launch time, pipeline bubble, exposed data-parallel traffic, optimizer),
    one stacked bar; the exposed EP and TP/CP communication and the FP8 casts inside the
    passes as a second bar beside it."""
    fig = go.Figure()
    for k, v in res.breakdown_s.items():
        fig.add_trace(go.Bar(name=k.replace("_", " "), x=["step"], y=[v * 1e3],
                             hovertext=f"{k}: {v * 1e3:.1f} ms", hoverinfo="text"))
    for k, v in res.within_s.items():
        fig.add_trace(go.Bar(name=k.replace("_", " ") + " (inside the passes)",
                             x=["of which"], y=[v * 1e3], hovertext=f"{k}: {v * 1e3:.1f} ms",
                             hoverinfo="text"))
    fig.update_layout(barmode="stack", title=html.escape(
        f"Training step anatomy: {res.workload} ({res.step_time_s:.2f} s, MFU {res.mfu:.1%})"),
        yaxis_title="ms per step", xaxis_title="busiest pipeline stage")
    return fig


def pipeline_figure(res: TrainResult, device: int = 0) -> go.Figure:
    """One pipeline device's step as a timeline: a bar per forward, backward and
    weight-gradient task (hover: micro-batch and chunk), idle gaps being its bubble."""
    colours = {"F": "#1f77b4", "B": "#d62728", "W": "#2ca02c", "FB": "#9467bd"}
    fig = go.Figure()
    for kind, colour in colours.items():
        tasks = [t for t in res.pipeline_tasks if t[0] == device and t[1] == kind]
        if not tasks:
            continue
        fig.add_trace(go.Bar(
            name={"F": "forward", "B": "backward (input gradient)", "W": "weight gradient",
                  "FB": "forward + backward (DualPipe)"}[kind],
            y=[f"device {device}"] * len(tasks), x=[(e - s) * 1e3 for *_, s, e in tasks],
            base=[s * 1e3 for *_, s, _ in tasks], orientation="h", marker_color=colour,
            hovertext=[f"{kind} micro-batch {mb} chunk {c}: {(e - s) * 1e3:.2f} ms"
                       for _, _, mb, c, s, e in tasks], hoverinfo="text"))
    fig.update_layout(barmode="overlay", title=html.escape(
        f"Pipeline device {device} over one step ({res.pipeline}, {res.micro_batches} "
        f"micro-batches)"), xaxis_title="time in the step (ms)")
    return fig


def write_figures(figs: list, title: str, path: Path, intro: str = "") -> None:
    """A page of figures (plotly.js inline once) written atomically."""
    body = "".join(f.to_html(full_html=False, include_plotlyjs=(i == 0), div_id=f"moesim-fig-{i}")
                   for i, f in enumerate(figs))
    t = html.escape(title)
    write_text_atomic(Path(path), f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{t}"
                      f"</title></head><body style='font-family:sans-serif'><h1>{t}</h1>{intro}"
                      f"{body}</body></html>")


def sweep_figure(rows: list, front: list) -> go.Figure:
    """Tokens/GPU/s against tokens/s per user for every sweep point; the Pareto front joined."""
    from simulator.outputs.sweep import axis_value
    ok = [r for r in rows if r["metrics"] and r["metrics"].get("tpot_ms")]
    label = lambda r: html.escape(", ".join(f"{k}={v}" for k, v in sorted(r["overrides"].items())))
    fig = go.Figure()
    fig.add_trace(go.Scatter(
        x=[axis_value(r, "tokens_per_s_per_user") for r in ok],
        y=[r["metrics"]["tokens_per_gpu_s"] for r in ok], mode="markers", name="points",
        marker=dict(color=[r["metrics"].get("cost_per_million_output_tokens") or 0 for r in ok],
                    colorscale="Viridis", showscale=True,
                    colorbar=dict(title="$/M out", x=1.02, len=0.7, y=0.35, yanchor="middle")),
        hovertext=[label(r) + f"<br>${r['metrics'].get('cost_per_million_output_tokens') or 0:.3f}/M"
                   for r in ok], hoverinfo="text+x+y"))
    fig.add_trace(go.Scatter(x=[axis_value(r, "tokens_per_s_per_user") for r in front],
                             y=[r["metrics"]["tokens_per_gpu_s"] for r in front],
                             mode="lines+markers", name="Pareto front",
                             hovertext=[label(r) for r in front], hoverinfo="text+x+y"))
    fig.update_layout(title="Sweep: throughput vs interactivity", xaxis_title="tokens/s per user",
                      yaxis_title="tokens/GPU/s",    # the legend above the plot, clear of the bar
                      legend=dict(orientation="h", yanchor="bottom", y=1.02, x=0))
    return fig


def plan_figures(res: dict) -> list[go.Figure]:
    """A plan's front per hardware (hover: the configuration), and $/M against tokens/s/user."""
    pts = res["points"]
    front_fig, cost_fig = go.Figure(), go.Figure()
    for hw in res["question"]["hardware"]:
        mine = sorted((p for p in res["front"] if p["hardware"] == hw),
                      key=lambda p: p["tokens_per_s_per_user"])
        every = [p for p in pts if p["hardware"] == hw]
        hover = [html.escape(p["config"]) for p in every]
        front_fig.add_trace(go.Scatter(x=[p["tokens_per_s_per_user"] for p in every],
                                       y=[p["tokens_per_gpu_s"] for p in every], mode="markers",
                                       name=f"{html.escape(hw)} candidates", opacity=0.35,
                                       hovertext=hover, hoverinfo="text+x+y"))
        if mine:
            front_fig.add_trace(go.Scatter(
                x=[p["tokens_per_s_per_user"] for p in mine],
                y=[p["tokens_per_gpu_s"] for p in mine], mode="lines+markers",
                name=f"{html.escape(hw)} front", hovertext=[html.escape(p["config"]) for p in mine],
                hoverinfo="text+x+y"))
        cost_fig.add_trace(go.Scatter(
            x=[p["tokens_per_s_per_user"] for p in every],
            y=[p["cost_per_million_output_tokens"] for p in every], mode="markers",
            name=html.escape(hw), hovertext=hover, hoverinfo="text+x+y"))
    q = res["question"]
    for fig in (front_fig, cost_fig):
        fig.add_vline(x=1e3 / q["tpot_ms"], line_dash="dash", annotation_text="TPOT SLO")
    front_fig.update_layout(title="Output tokens/s per GPU against tokens/s per user",
                            xaxis_title="tokens/s per user", yaxis_title="tokens/s per GPU")
    cost_fig.update_layout(title="$ per million output tokens against tokens/s per user",
                           xaxis_title="tokens/s per user",
                           yaxis_title="$ per million output tokens", yaxis_type="log")
    return [front_fig, cost_fig, chosen_breakdown_figure(res)]


def chosen_breakdown_figure(res: dict) -> go.Figure:
    """The chosen point per hardware (the best meeting the SLO): its decode layer's time by
    part, stacked."""
    chosen = [(hw, p) for hw, p in res["best"].items() if p is not None]
    parts = list(dict.fromkeys(k for _, p in chosen for k in p["layer_breakdown_us"]))
    fig = go.Figure([go.Bar(name=html.escape(part), x=[html.escape(hw) for hw, _ in chosen],
                            y=[p["layer_breakdown_us"].get(part, 0.0) for _, p in chosen],
                            hovertext=[html.escape(p["config"]) for _, p in chosen])
                     for part in parts])
    fig.update_layout(barmode="stack", xaxis_title="hardware", yaxis_title="us per decode layer",
                      title="The chosen configuration per hardware: a decode layer by part"
                      + ("" if chosen else " (nothing meets the SLO)"))
    return fig


def plan_train_figures(res: dict) -> list[go.Figure]:
    """A training plan: days to train against GPUs per hardware (every priced layout, the
    front), and $ against days."""
    days, cost = go.Figure(), go.Figure()
    for hw in res["question"]["hardware"]:
        every = [p for p in res["points"] if p["hardware"] == hw]
        hover = [html.escape(p["config"]) for p in every]
        days.add_trace(go.Scatter(x=[p["gpus"] for p in every],
                                  y=[p["days_to_train"] for p in every], mode="markers",
                                  opacity=0.35, name=f"{html.escape(hw)} layouts",
                                  hovertext=hover, hoverinfo="text+x+y"))
        cost.add_trace(go.Scatter(x=[p["days_to_train"] for p in every],
                                  y=[p["cost_usd"] for p in every], mode="markers",
                                  name=html.escape(hw), hovertext=hover, hoverinfo="text+x+y"))
    front = res["front"]
    days.add_trace(go.Scatter(x=[p["gpus"] for p in front], y=[p["days_to_train"] for p in front],
                              mode="lines+markers", name="front",
                              hovertext=[html.escape(p["config"]) for p in front],
                              hoverinfo="text+x+y"))
    days.update_layout(title="Days to train against GPUs", xaxis_title="GPUs",
                       yaxis_title="days", xaxis_type="log")
    cost.update_layout(title="$ to train against days", xaxis_title="days", yaxis_title="$")
    return [days, cost]


def load_figures(points: list[dict], kind: str) -> list[go.Figure]:
    """TTFT and TPOT (p50 and p90) against the offered load, and throughput against it."""
    unit = "clients (closed loop)" if kind == "concurrency" else "requests/s (Poisson)"
    runtimes = list(dict.fromkeys(p.get("runtime_preset", "") for p in points))
    lat, thr = go.Figure(), go.Figure()
    for rt in runtimes:                       # one line per runtime preset (and percentile)
        mine = [p for p in points if p.get("runtime_preset", "") == rt]
        x = [p[kind] for p in mine]
        tag = f"{rt}: " if len(runtimes) > 1 else ""
        for metric in ("ttft_ms", "tpot_ms"):
            for pct in ("p50", "p90"):
                lat.add_trace(go.Scatter(x=x, y=[p[metric][pct] for p in mine],
                                         mode="lines+markers",
                                         name=f"{tag}{metric.split('_')[0].upper()} {pct}"))
        thr.add_trace(go.Scatter(x=x, y=[p["output_tokens_per_s_per_gpu"] for p in mine],
                                 mode="lines+markers", name=f"{tag}output tokens/s per GPU"))
    lat.update_layout(title="Latency against load", xaxis_title=unit, yaxis_title="ms",
                      yaxis_type="log")
    thr.update_layout(title="Throughput against load", xaxis_title=unit,
                      yaxis_title="output tokens/s per GPU")
    return [lat, thr]
