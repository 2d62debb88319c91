"""What a silicon-corpus run's publisher configured and the corpus leaves out.

The corpus (aiconfigurator-core's systems/silicon_sample.csv) has no field for speculative
decoding, and its InferenceX records of disaggregated runs leave the worker counts out and often
write a decode pool's attention data parallelism as tensor parallelism. Public sources settle
a run where they can:
- benchmarks/inferencex_runs.json (benchmarks/inferencex_runs.py): every run InferenceX
  configured, with the dates each configuration was in effect. A disaggregated record is
  matched by its container image, GPU, engine, precision, lengths and client count among the
  configurations in effect on its measured date, and takes what they all agree on (each pool's
  workers, each pool's parallelism whole, MTP); the rest stays the corpus's, and it says which.
- the same table's single-node runs: an aggregated record ran MTP where every configuration of
  its image, GPU, engine, precision, lengths, clients, GPUs and attention DP in effect on its
  measured date did, at the draft depth of its script (silicon.yaml `single_node_mtp`).
The draft acceptance is the model family's published one (silicon.yaml `mtp_acceptance`).
- silicon.yaml `launch_settings`: engine settings a publisher's launch script set beyond the
  engine's defaults (token budget, running cap, TensorRT-LLM's delayed batching, SGLang's
  receive interval), for the records that script measured: by source, engine, mode, model,
  system, precision, measured date, lengths, tensor parallelism, clients and speculation.
"""
from __future__ import annotations

import json
import math
import re
from functools import lru_cache
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RUNS = ROOT / "benchmarks" / "inferencex_runs.json"
DYNAMO = {"trtllm": "dynamo-trt", "sglang": "dynamo-sglang", "vllm": "dynamo-vllm"}
ENGINES = {"trtllm": "trt", "sglang": "sglang", "vllm": "vllm"}
GPUS = {"h100_sxm": "h100", "h200_sxm": "h200", "b200_sxm": "b200", "gb200": "gb200"}
POOL_KEYS = {"workers": "num_workers", "attention_tp": "tp_size",
             "attention_dp": "attention_dp_size", "moe_tp": "moe_tp_size", "moe_ep": "moe_ep_size"}


class NotSettled(Exception):
    """The publisher ran it in a way moesim cannot write down; the message is the reason."""


def source_image(row: dict) -> str:
    """The container image the record's source string names ('' if none): an `image=` field
    (the CSV exports), else a last field that reads as a registry path with a tag (the database
    dump writes it bare), nvcr.io spelled with a slash (srt-slurm writes `nvcr.io#`)."""
    source = row.get("silicon_data_source", "") or ""
    m = re.search(r"image=([^;]+)", source)
    bare = re.fullmatch(r"[\w.#-]+(?:/[\w.-]+)+:[\w.-]+", source.split(";")[-1].strip())
    image = m.group(1).strip() if m else bare.group(0) if bare else ""
    return image.replace("nvcr.io#", "nvcr.io/")


@lru_cache(maxsize=4)
def load_runs(path: Path = RUNS) -> tuple[dict, ...]:
    """InferenceX's run configurations (benchmarks/inferencex_runs.json)."""
    return tuple(json.loads(path.read_text())["runs"])


def disaggregated_run(row: dict, clients: int, runs: tuple[dict, ...]) -> tuple[dict | None, str]:
    """(what the publisher's configurations of this disaggregated record agree on, a note):
    each pool's workers, each pool's parallelism (attention TP and DP, MoE TP and EP, as one),
    and MTP with its depth, where every configuration matching the record and in effect on its
    measured date has one value, else None (the note names what differs); None for the whole
    where no configuration matches."""
    image = source_image(row)
    if not image:
        return None, ""
    found = _in_effect(row, [r for r in runs if r["mode"] == "disagg" and r["image"] == image
                             and r["framework"] == DYNAMO.get(row["backend"])
                             and _same_run(row, r, clients)])
    if not found:
        return None, ""
    agreed: dict = {"key": ", ".join(sorted({r["key"] for r in found})),
                    "recipe": found[0]["recipe"] if len({r["recipe"] for r in found}) == 1
                    else ""}
    differ = []
    for pool in ("prefill", "decode"):             # the workers, and the worker's shape whole
        workers = {r[pool]["workers"] for r in found}
        shapes = {json.dumps({k: v for k, v in r[pool].items() if k != "workers"},
                             sort_keys=True) for r in found}
        agreed[pool] = {**(json.loads(shapes.pop()) if len(shapes) == 1 else
                           {k: None for k in POOL_KEYS if k != "workers"}),
                        "workers": workers.pop() if len(workers) == 1 else None}
        differ += [f"{pool} workers"] if agreed[pool]["workers"] is None else []
        differ += [f"{pool} parallelism"] if agreed[pool]["attention_tp"] is None else []
    specs = {(r["spec"], r["draft_tokens"]) for r in found}
    agreed["spec"], agreed["draft_tokens"] = specs.pop() if len(specs) == 1 else (None, None)
    differ += ["MTP"] if agreed["spec"] is None else []
    if not differ:
        return agreed, ""
    return agreed, (f"InferenceX configured {len(found)} runs of this image, lengths and "
                    f"{clients} clients ({agreed['key']}) that differ in {', '.join(differ)}: "
                    "only what they agree on is taken, the corpus's fields for the rest")


def with_pools(row: dict, run: dict) -> tuple[dict, list[str]]:
    """The record with each pool's workers and parallelism as the publisher configured them,
    and a note per field that differed from the corpus's. A pool's parallelism is taken only
    where the publisher's worker has as many GPUs as the corpus's (some InferenceX keys list a
    placeholder TP 1 for pools their recipes size): the two then differ only in how those GPUs
    split (attention DP written as TP), which the publisher's configuration settles."""
    out, notes = dict(row), []
    for pool in ("prefill", "decode"):
        theirs, ours = run[pool], [_count(row.get(f"{pool}_{f}")) for f in
                                   ("tp_size", "attention_dp_size")]
        sized = theirs["attention_tp"] is not None and None not in ours and \
            theirs["attention_tp"] * theirs["attention_dp"] != ours[0] * ours[1]
        if sized:
            notes.append(f"{pool} worker of {theirs['attention_tp'] * theirs['attention_dp']} "
                         f"GPUs in InferenceX's configuration, {ours[0] * ours[1]} in the "
                         "corpus's: the corpus's parallelism kept")
        for key, field in POOL_KEYS.items():
            name = f"{pool}_{field}"
            value = theirs[key]
            if value is None or (sized and key != "workers"):   # differ, or not the same worker
                continue
            if _count(row.get(name)) != value:
                notes.append(f"{name} {row.get(name) or 'empty'} -> {value}")
            out[name] = str(value)
    return out, notes


def run_mtp(row: dict, run: dict, family: str, a: dict) -> dict | None:
    """The workload's `mtp` for a matched run (None when it ran without, or when its
    configurations differ on it)."""
    if run["spec"] in ("none", None):
        return None
    if run["draft_tokens"] is None:
        raise NotSettled(f"ran MTP ({run['key']}) at a draft depth no source states")
    return mtp(row, int(run["draft_tokens"]), family, a)


def single_node_mtp(row: dict, clients: int, runs: tuple[dict, ...], family: str,
                    a: dict) -> tuple[dict | None, str]:
    """(the workload's `mtp` for an aggregated record, a note): MTP where every single-node
    configuration matching its image, GPU, engine, precision, lengths, clients, GPUs and
    attention DP, in effect on its measured date, ran it (at the depth its script sets,
    silicon.yaml `single_node_mtp`); None where they ran without, differ (the note says so)
    or none matches."""
    image = source_image(row)
    if not image:
        return None, ""
    adp = (_count(row.get("attention_dp_size")) or 1) > 1
    gpus = (_count(row.get("tp_size")) or 1) * ((_count(row.get("attention_dp_size")) or 1))
    found = _in_effect(row, [r for r in runs if r["mode"] == "agg" and r["image"] == image
                             and r["framework"] == ENGINES.get(row["backend"])
                             and r["gpus"] == gpus and r["attention_dp"] == adp
                             and _same_run(row, r, clients)])
    specs = {r["spec"] for r in found}
    keys = ", ".join(sorted({r["key"] for r in found}))
    if len(specs) > 1:
        return None, (f"InferenceX configured this image, lengths, {clients} clients and "
                      f"{gpus} GPUs both with MTP and without ({keys}): read without")
    if specs != {"mtp"}:
        return None, ""
    names = {r["key"] for r in found}
    depth = (a.get("single_node_mtp") or {}).get(names.pop()) if len(names) == 1 else None
    if depth is None:
        raise NotSettled(f"ran MTP ({keys}) at a draft depth silicon.yaml single_node_mtp "
                         "does not record")
    draft = depth["draft_tokens_attention_dp"] if adp else depth["draft_tokens"]
    return mtp(row, int(draft), family, a), ""


def launch_settings(row: dict, a: dict, clients: int, speculative: bool) -> \
        tuple[dict, list[str]]:
    """(the serving block's settings the record's launch script set, a note for each): every
    silicon.yaml `launch_settings` entry whose `match` the record meets: source pattern,
    engine, measured date within [from, to], and where given the mode, model (pattern), system,
    precision, lengths, tensor parallelism (exact or below a bound), clients (from, below)
    and whether the run was speculative."""
    serving: dict = {}
    notes: list[str] = []
    source = row.get("silicon_data_source", "") or ""
    day = re.search(r"measured=(\d{4}-\d\d-\d\d)", source)
    tp = _count(row.get("tp_size")) or 1
    for entry in a.get("launch_settings") or []:
        m = entry["match"]
        start, end = m["measured"]
        if not (re.search(m["sources"], source) and row["backend"] == m["backend"] and day
                and start <= day.group(1) <= end):
            continue
        if "model" in m and not re.search(m["model"], row.get("model_path", "")):
            continue
        if any(row.get(k) != m[k] for k in ("mode", "system", "precision") if k in m):
            continue
        if any(_count(row.get(k)) != m[k] for k in ("isl", "osl") if k in m):
            continue
        if ("tp" in m and tp != m["tp"]) or ("tp_below" in m and not tp < m["tp_below"]):
            continue
        if not m.get("clients_from", 0) <= clients < m.get("clients_below", math.inf):
            continue
        if "speculative" in m and speculative != m["speculative"]:
            continue
        serving.update(entry["serving"])
        notes.append(f"{', '.join(f'{k} {v}' for k, v in entry['serving'].items())}, as its "
                     f"launch script set ({entry['script']})")
    return serving, notes


def mtp(row: dict, draft: int, family: str, a: dict) -> dict:
    """`mtp` with `draft` tokens at the model family's published acceptance."""
    acceptance = (a.get("mtp_acceptance") or {}).get(family)
    if acceptance is None:
        raise NotSettled(f"ran MTP but {row['model_path']} ({family}) has no published draft "
                         "acceptance (silicon.yaml mtp_acceptance)")
    return {"enabled": True, "draft_tokens": draft, "acceptance": float(acceptance)}


def _same_run(row: dict, r: dict, clients: int) -> bool:
    """Whether configuration `r` is of the record's GPU, precision, lengths and clients."""
    return (r["gpu"] == GPUS.get(row["system"]) and r["precision"] == row["precision"]
            and r["isl"] == int(float(row["isl"])) and r["osl"] == int(float(row["osl"]))
            and r["clients"] == clients)


def _in_effect(row: dict, found: list[dict]) -> list[dict]:
    """The configurations in effect on the record's measured date (all where it has none)."""
    m = re.search(r"measured=(\d{4}-\d\d-\d\d)", row.get("silicon_data_source", "") or "")
    if not m:
        return found
    day = m.group(1)
    return [r for r in found if any(start <= day and (end is None or day <= end)
                                    for start, end, _ in r["in_effect"])]


def _count(text) -> int | None:
    try:
        return int(float(text))
    except (TypeError, ValueError):
        return None
