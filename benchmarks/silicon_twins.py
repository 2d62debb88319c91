"""One row per measurement of the silicon corpus.

aiconfigurator-core's `silicon_sample.csv` lists many measured runs more than once: the same
run under two or three ids (a database dump and one or two later CSV exports), with the same
TTFT and TPOT to the last digit. The exports often leave fields empty that the dump states
(a disaggregated run's prefill and decode worker counts and batch sizes). Counting a run three
times weighs it three times in every median; writing it from the record that leaves its
workers empty runs it on fewer GPUs than it had. So the benchmark keeps one row per
measurement, the record that states the most fields, and names the others.
"""
from __future__ import annotations

import math
import re

# the fields that say how a run was deployed; the record stating more of them is kept
STATED = ("batch_size", "tp_size", "pp_size", "attention_dp_size", "moe_tp_size",
          "moe_ep_size", "prefill_batch_size", "prefill_num_workers", "decode_batch_size",
          "decode_num_workers", *(f"{pool}_{k}" for pool in ("prefill", "decode")
                                  for k in ("tp_size", "pp_size", "attention_dp_size",
                                            "moe_tp_size", "moe_ep_size")))


def source_clients(row: dict) -> int | None:
    """The clients a record's source string states (`silicon_concurrency=N`), or None."""
    m = re.search(r"silicon_concurrency=(\d+)", row.get("silicon_data_source", "") or "")
    return int(m.group(1)) if m else None


def _figure(text: str) -> str:
    """A measured figure to 9 significant digits (records may print a float's last digits
    differently)."""
    return f"{float(text):.9g}" if text not in (None, "") and math.isfinite(float(text)) else ""


def measurement_key(row: dict) -> tuple:
    """What identifies one measured run: the GPU, engine, precision, lengths, clients and the
    measured TTFT and TPOT themselves (two different runs never agree on both to nine digits;
    the model is left out: the records of one run name DeepSeek-R1 or its twin architecture
    DeepSeek-V3)."""
    return (row["system"], row["backend"], row["precision"], row["gemm_quant_mode"],
            row["moe_quant_mode"], float(row["isl"]), float(row["osl"]), source_clients(row),
            _figure(row["silicon_ttft_ms"]), _figure(row["silicon_tpot_ms"]))


def stated(row: dict) -> int:
    """How many deployment fields the record states."""
    return sum(str(row.get(k, "") or "").strip() != "" for k in STATED)


def one_per_measurement(rows: list[dict]) -> tuple[list[dict], list[dict]]:
    """(kept rows in file order, one per measurement; [{id, same_as, differs}] for every
    measurement listed more than once). The kept record states the most fields (the first
    in the file on a tie); `same_as` are the other records' ids, `differs` the fields where
    a stating twin disagrees with the kept one. Each kept row carries its twins under
    `_same_as` and `_differs`."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault(measurement_key(r), []).append(r)
    kept_ids, twins = set(), []
    for group in groups.values():
        best = max(group, key=stated)            # max keeps the first of equals
        kept_ids.add(id(best))
        others = [r for r in group if r is not best]
        best["_same_as"] = [r["id"] for r in others]
        best["_differs"] = sorted({k for r in others for k in STATED
                                   if _num(r.get(k)) is not None
                                   and _num(r.get(k)) != _num(best.get(k))})
        if others:
            twins.append({"id": best["id"], "same_as": best["_same_as"],
                          "differs": best["_differs"]})
    return [r for r in rows if id(r) in kept_ids], twins


def _num(text) -> float | None:
    try:
        return float(text)
    except (TypeError, ValueError):
        return None
