"""What the silicon benchmark's rows add up to and how they are shown: median, nearest-rank p90
and share optimistic by group, TPOT growth along each concurrency sweep, the error bands
`simulate` reports, the console summary and the plotly figures (benchmarks/silicon.py runs
the rows)."""
from __future__ import annotations

import math
import statistics

POOL_FIELDS = ("tp_size", "pp_size", "attention_dp_size", "moe_tp_size", "moe_ep_size")
BANDS = ((1, 8, "1-8"), (9, 32, "9-32"), (33, 128, "33-128"), (129, 10 ** 9, ">128"))


def band(c: int) -> str:
    """The concurrency band of a row."""
    return next(name for lo, hi, name in BANDS if lo <= c <= hi)


SWEEP_FIELDS = ("system", "backend", "backend_version", "model_path", "precision", "mode",
                "isl", "osl", "gemm_quant_mode", "moe_quant_mode")


def sweep_key(r: dict) -> str:
    """What a row ran, all but its load: rows with the same key differ only in concurrency."""
    pools = sorted(k for k in r if k.endswith(POOL_FIELDS) or k.endswith("_workers"))
    return "|".join(f"{k}={r.get(k, '')}" for k in (*SWEEP_FIELDS, *pools))


def load_growth(rows: list[dict], within: float = 0.25) -> dict:
    """Along each concurrency sweep (rows of one sweep key, two or more concurrencies): the
    TPOT ratio from the lightest to the heaviest load, predicted against measured; the share of
    sweeps whose predicted ratio is within `within` of the measured one."""
    groups: dict[str, list[dict]] = {}
    for r in rows:
        if r["tpot_ms"]["predicted"] and r["tpot_ms"]["measured"] > 0:
            groups.setdefault(r["sweep"], []).append(r)
    ratios = []
    for g in groups.values():
        lo = min(g, key=lambda r: r["concurrency"])
        hi = max(g, key=lambda r: r["concurrency"])
        if hi["concurrency"] == lo["concurrency"]:
            continue
        meas = hi["tpot_ms"]["measured"] / lo["tpot_ms"]["measured"]
        pred = hi["tpot_ms"]["predicted"] / lo["tpot_ms"]["predicted"]
        ratios.append(pred / meas - 1)
    ok = sum(abs(x) <= within for x in ratios)
    return {"sweeps": len(ratios), "within": within,
            "share_within": ok / len(ratios) if ratios else None,
            "median_ratio_error": statistics.median(ratios) if ratios else None}


def _stats(errors: list[float]) -> dict:
    if not errors:
        return {"rows": 0, "median_abs_error": None, "p90_abs_error": None,
                "share_optimistic": None}
    a = sorted(abs(e) for e in errors)
    p90 = a[min(len(a) - 1, math.ceil(0.9 * len(a)) - 1)]     # nearest-rank percentile
    return {"rows": len(errors), "median_abs_error": statistics.median(a), "p90_abs_error": p90,
            "share_optimistic": sum(e < 0 for e in errors) / len(errors)}


def summary(rows: list[dict]) -> dict:
    """Median |error|, nearest-rank p90 |error| and the share optimistic (predicted faster:
    error < 0) of TTFT and TPOT, overall and by system, backend, model, mode and concurrency
    band."""
    def of(subset: list[dict]) -> dict:
        return {k: _stats([r[k]["error"] for r in subset if r[k]["error"] is not None])
                for k in ("ttft_ms", "tpot_ms")}
    out = {"overall": of(rows)}
    for dim, key in (("system", "system"), ("backend", "backend"), ("model", "model"),
                     ("mode", "mode"), ("concurrency_band", "concurrency")):
        groups: dict[str, list] = {}
        for r in rows:
            groups.setdefault(band(r[key]) if dim == "concurrency_band" else r[key], []).append(r)
        out[f"by_{dim}"] = {g: of(v) for g, v in sorted(groups.items())}
    if all("sweep" in r for r in rows):
        out["load_growth"] = load_growth(rows)
    return out


# -- output -----------------------------------------------------------------------------------
def reasons(unexpressed: list[dict]) -> list[tuple[str, int]]:
    """Unexpressed rows counted by reason (numbers in the reason kept: they name the case)."""
    counts: dict[str, int] = {}
    for u in unexpressed:
        counts[u["reason"]] = counts.get(u["reason"], 0) + 1
    return sorted(counts.items(), key=lambda kv: -kv[1])


def bands_yaml(res: dict, command: str, profiles: dict[str, str]) -> str:
    """hardware_profiles/fidelity/bands.yaml: the p90 |error| (%) of TPOT (decode) and TTFT
    (prefill) per moesim profile (`profiles`: corpus system -> profile) and over all rows,
    which `simulate` reports as its error band."""
    import yaml
    by = res["summary"]["by_system"]
    out = {}
    for system, stats in [("all", res["summary"]["overall"])] + sorted(by.items()):
        name = "all" if system == "all" else profiles[system]
        if stats["tpot_ms"]["rows"]:
            out[name] = {"decode": round(100 * stats["tpot_ms"]["p90_abs_error"], 1),
                         "prefill": round(100 * stats["ttft_ms"]["p90_abs_error"], 1),
                         "rows": stats["tpot_ms"]["rows"]}
    head = ("# Error bands of moesim's predictions (%): the p90 |error| of the silicon corpus\n"
            "# (aiconfigurator-core 0.12.0 systems/silicon_sample.csv, held-apart models "
            "excluded):\n# TPOT for decode, TTFT for prefill, per profile and over all rows. "
            "Written by:\n#   " + command + "\n")
    return head + yaml.safe_dump({"bands": out}, sort_keys=False)


def print_summary(res: dict) -> None:
    """The console summary: expressed share, overall and per-system errors, reasons."""
    n_rows, n_un = len(res["rows"]), len(res["unexpressed"])
    n_rep = sum(len(t["same_as"]) for t in res.get("repeats", []))
    print(f"{n_rows} rows predicted, {n_un} not expressed (of {n_rows + n_un} allowed "
          f"measurements; {res['held_apart']['rows']} rows held apart; {n_rep} rows repeat "
          "another row's measurement and are counted once)")
    s = res["summary"]
    for title, groups in (("overall", {"all": s["overall"]}), ("by system", s["by_system"]),
                          ("by backend", s["by_backend"]), ("by mode", s["by_mode"]),
                          ("by concurrency", s["by_concurrency_band"]),
                          ("by model", s["by_model"])):
        print(f"\n{title}:")
        print(f"  {'':34} {'rows':>5} {'TTFT med':>9} {'p90':>7} {'opt':>5} "
              f"{'TPOT med':>9} {'p90':>7} {'opt':>5}")
        for g, st in groups.items():
            t, p = st["ttft_ms"], st["tpot_ms"]
            if not p["rows"]:
                continue
            print(f"  {g[:34]:34} {p['rows']:5d} {t['median_abs_error']:9.1%} "
                  f"{t['p90_abs_error']:7.1%} {t['share_optimistic']:5.0%} "
                  f"{p['median_abs_error']:9.1%} {p['p90_abs_error']:7.1%} "
                  f"{p['share_optimistic']:5.0%}")
    g = s.get("load_growth")
    if g and g["sweeps"]:
        print(f"\nTPOT growth with load: {g['sweeps']} concurrency sweeps; the predicted "
              f"lightest-to-heaviest TPOT ratio within {g['within']:.0%} of the measured one in "
              f"{g['share_within']:.0%} of them (median ratio error {g['median_ratio_error']:+.0%})")
    if res["unexpressed"]:
        print("\nnot expressed (count: reason):")
        for reason, k in reasons(res["unexpressed"])[:15]:
            print(f"  {k:5d}: {reason}")


def figures(res: dict) -> list:
    """Predicted against measured TPOT and TTFT (log axes, one colour per system) and the
    error distribution by backend."""
    import plotly.graph_objects as go
    figs = []
    for key, title in (("tpot_ms", "TPOT"), ("ttft_ms", "TTFT")):
        fig = go.Figure()
        for system in sorted({r["system"] for r in res["rows"]}):
            rs = [r for r in res["rows"] if r["system"] == system]
            fig.add_trace(go.Scatter(
                x=[r[key]["measured"] for r in rs], y=[r[key]["predicted"] for r in rs],
                mode="markers", name=system, text=[r["id"] for r in rs],
                hovertemplate="%{text}<br>measured %{x:.4g} ms, moesim %{y:.4g} ms"
                              "<extra></extra>"))
        lo = min([r[key]["measured"] for r in res["rows"]] or [1])
        hi = max([r[key]["measured"] for r in res["rows"]] or [10])
        fig.add_trace(go.Scatter(x=[lo, hi], y=[lo, hi], mode="lines", name="moesim = measured",
                                 line={"dash": "dot", "color": "gray"}))
        fig.update_layout(title=f"{title}: moesim against measured (silicon corpus)",
                          xaxis_title=f"measured {title} (ms)",
                          yaxis_title=f"moesim {title} (ms)", xaxis_type="log",
                          yaxis_type="log")
        figs.append(fig)
    fig = go.Figure()
    for backend in sorted({r["backend"] for r in res["rows"]}):
        fig.add_trace(go.Box(y=[100 * r["tpot_ms"]["error"] for r in res["rows"]
                                if r["backend"] == backend], name=backend))
    fig.update_layout(title="TPOT error by backend (moesim / measured - 1)",
                      yaxis_title="error (%)", xaxis_title="backend")
    figs.append(fig)
    return figs
