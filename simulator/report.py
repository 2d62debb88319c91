"""Self-contained interactive HTML report (plotly JS embedded, opens offline)."""
from __future__ import annotations

import html
from pathlib import Path

import plotly.graph_objects as go

from simulator.atomic import write_text_atomic

COLORS = {"gemm": "#4C78A8", "grouped_gemm": "#F58518", "attention": "#54A24B",
          "elementwise": "#B0B0B0", "collective": "#E45756"}


def timeline_figure(results: list, layers: int = 3) -> go.Figure:
    """Per-stream Gantt of a few middle layers for each schedule; hover shows achieved rates."""
    fig = go.Figure()
    seen: set[str] = set()
    for res in results:
        tl, m = res.timeline, res.metrics
        rep = m["representative_layer"]
        keep = [i for i, op in enumerate(tl.ops) if rep - layers // 2 <= op.layer <= rep + layers // 2]
        if not keep:
            continue
        t0 = min(tl.start_s[0, i] for i in keep)
        for kind, color in COLORS.items():
            idx = [i for i in keep if tl.ops[i].kind == kind]
            if not idx:
                continue
            dur = [(tl.end_s[0, i] - tl.start_s[0, i]) * 1e6 for i in idx]
            hover = []
            for i, d in zip(idx, dur):
                op = tl.ops[i]
                sec = max(d * 1e-6, 1e-12)
                hover.append(f"{html.escape(op.name)}<br>{op.kind} on {tl.streams[i]}"
                             f"<br>{d:.1f} us<br>{op.flops / 1e9:.2f} GFLOP, {op.bytes / 1e6:.2f} MB"
                             f"<br>{op.flops / sec / 1e12:.1f} TFLOP/s, "
                             f"{op.bytes / sec / 1e9:.1f} GB/s")
            fig.add_trace(go.Bar(
                orientation="h", base=[(tl.start_s[0, i] - t0) * 1e6 for i in idx], x=dur,
                y=[f"{html.escape(m['schedule'])} / {tl.streams[i]}" for i in idx],
                marker_color=color, name=kind, legendgroup=kind, showlegend=kind not in seen,
                hovertext=hover, hoverinfo="text"))
            seen.add(kind)
    fig.update_layout(barmode="overlay", title=f"Timeline of {layers} middle layers, rank 0 "
                      "(red = communication; a red bar alone on its row's time is exposed)",
                      xaxis_title="time (us)", height=250 + 60 * len(results) * 2)
    return fig


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


def render_html(results: list) -> str:
    """The whole report as one HTML string with plotly.js inline."""
    first = results[0].metrics
    figs = [summary_figure(results), breakdown_figure(results), timeline_figure(results)]
    body = []
    for k, fig in enumerate(figs):
        body.append(fig.to_html(full_html=False, include_plotlyjs=(k == 0),
                                div_id=f"moesim-fig-{k}"))
    rows = "".join(
        f"<tr><td>{html.escape(r.metrics['schedule'])}</td>"
        f"<td>{r.metrics['step_time_ms']:.3f}</td>"
        f"<td>{'-' if r.metrics['tpot_ms'] is None else format(r.metrics['tpot_ms'], '.3f')}</td>"
        f"<td>{r.metrics['exposed_comm_us']:.0f}</td></tr>" for r in results)
    title = html.escape(f"moesim: {first['workload']} ({first['model']} on {first['hardware']})")
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{title}</title></head>"
            f"<body style='font-family:sans-serif'><h1>{title}</h1>"
            f"<table border='1' cellpadding='4'><tr><th>schedule</th><th>step ms</th>"
            f"<th>TPOT ms</th><th>exposed comm us</th></tr>{rows}</table>"
            + "".join(body) + "</body></html>")


def write_report(results: list, path: Path) -> None:
    """Write the report atomically."""
    write_text_atomic(Path(path), render_html(results))


def serving_figures(res, points) -> list[go.Figure]:
    """Latency CDFs and KV utilisation of a serving run; the throughput-interactivity curve."""
    import numpy as np
    figs = []
    if res is not None:
        cdf = go.Figure()
        for name, x in (("TTFT", res.ttft_s), ("TPOT", res.tpot_s), ("E2E", res.e2e_s)):
            if x.size:
                xs = np.sort(x) * 1e3
                cdf.add_trace(go.Scatter(x=xs, y=np.arange(1, xs.size + 1) / xs.size, name=name))
        cdf.update_layout(title="Latency CDFs", xaxis_title="ms", xaxis_type="log",
                          yaxis_title="fraction of requests")
        figs.append(cdf)
        kv = go.Figure(go.Scatter(x=res.kv_t, y=res.kv_util, name="KV in use / budget"))
        kv.update_layout(title="KV-cache utilisation over time", xaxis_title="s",
                         yaxis_title="fraction of budget")
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


def write_serving_report(res, points, path: Path) -> None:
    """A serving report (CDFs, KV, curve) written atomically."""
    figs = serving_figures(res, points)
    body = "".join(f.to_html(full_html=False, include_plotlyjs=(i == 0), div_id=f"moesim-fig-{i}")
                   for i, f in enumerate(figs))
    title = "moesim serving report"
    if res is not None:
        title = html.escape(f"moesim serving: {res.metrics['workload']}")
    write_text_atomic(Path(path), f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{title}"
                      f"</title></head><body style='font-family:sans-serif'><h1>{title}</h1>{body}"
                      "</body></html>")
