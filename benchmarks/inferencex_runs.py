"""The serving runs SemiAnalysis's InferenceX configured, as a table the silicon benchmark reads.

Part of the silicon corpus (aiconfigurator-core's systems/silicon_sample.csv) is InferenceX's
disaggregated runs, and the corpus records them without their worker counts, often with the
decode pool's attention data parallelism as tensor parallelism, and never with their
speculative decoding. InferenceX's configuration is public: `.github/configs/nvidia-master.yaml`
(github.com/SemiAnalysisAI/InferenceX) lists, per key, the container image and, per search
space, the client counts, each pool's workers, TP, EP and attention DP, and whether it ran MTP;
the srt-slurm recipe each names (github.com/NVIDIA/srt-slurm) gives SGLang's draft depth. This
script walks both repositories' history and writes every disaggregated run configuration it
finds (and every single-node one: its GPUs, EP, attention DP, clients and MTP or not) to
benchmarks/inferencex_runs.json, each with its key and when it was in effect: a list of
[from, until, commit] (commit dates; until null while it still was at the window's end).

    python benchmarks/inferencex_runs.py --inferencex PATH --srt-slurm PATH
                                         [--out benchmarks/inferencex_runs.json]

PATH: a git clone of each repository (any branch; every commit is read). The JSON is
committed: the benchmark reads it, never the repositories.
"""
from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from simulator.atomic import check_output_path, write_text_atomic  # noqa: E402
from simulator.errors import MoesimError  # noqa: E402

CONFIG = ".github/configs/nvidia-master.yaml"
SINCE, UNTIL = "2025-09-01", "2026-05-01"        # the corpus measured between these dates
PER_WORKER = re.compile(r"^c(\d+)_ctx\d+_gen\d+_")   # recipes whose c<N> counts per decode worker


def git(repo: Path, *args: str) -> str:
    """stdout of a git command in `repo`."""
    return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True,
                          check=True).stdout


def draft_depth(recipe: str, settings: list[str], spec: str, slurm: Path,
                cache: dict) -> int | None:
    """Draft tokens of a speculative run: a `DECODE_MTP_SIZE` setting, else the recipe name's
    `mtp<N>` (TensorRT-LLM recipes), else the one `speculative-num-steps` every version of the
    srt-slurm recipe states; 0 for a run without speculation, None when no source settles it."""
    if spec == "none":
        return 0
    for s in settings:
        m = re.fullmatch(r"DECODE_MTP_SIZE=(\d+)", str(s))
        if m:
            return int(m.group(1))
    name = recipe.split("/")[-1].split(":")[0]
    m = re.search(r"mtp(\d+)", name)
    if m:
        return int(m.group(1))
    path = recipe.split(":")[0]
    if not path:
        return None
    if path not in cache:
        steps: set[int] = set()
        for sha in git(slurm, "log", "--all", "--format=%H", "--", path).split():
            try:
                text = git(slurm, "show", f"{sha}:{path}")
            except subprocess.CalledProcessError:
                continue
            steps |= {int(v) for v in re.findall(r"speculative-num-steps:\s*(\d+)", text)}
        cache[path] = steps.pop() if len(steps) == 1 else None
    return cache[path]


def pool(p: dict) -> dict:
    """A pool as the corpus writes one: workers, attention TP x attention DP, MoE TP x EP."""
    tp, ep, adp = int(p["tp"]), int(p.get("ep") or 1), bool(p.get("dp-attn"))
    return {"workers": int(p.get("num-worker") or 1), "attention_tp": 1 if adp else tp,
            "attention_dp": tp if adp else 1, "moe_tp": tp // ep, "moe_ep": ep}


def disaggregated(key: str, e: dict, slurm: Path, cache: dict):
    """Each run a disaggregated key configures (without its dates)."""
    for seq in e.get("seq-len-configs") or []:
        for ss in seq.get("search-space") or []:
            if "prefill" not in ss or "decode" not in ss:
                continue
            spec = ss.get("spec-decoding", "none")
            settings = [str(s) for p in ("prefill", "decode")
                        for s in ss[p].get("additional-settings") or []]
            recipe = next((s.split("=", 1)[1] for s in settings
                           if s.startswith("CONFIG_FILE=")), "")
            prefill, decode = pool(ss["prefill"]), pool(ss["decode"])
            per_worker = PER_WORKER.match(recipe.split("/")[-1])
            for conc in ss.get("conc-list") or []:
                clients = int(conc) * (decode["workers"] if per_worker else 1)
                yield {**_common(key, e, seq), "mode": "disagg", "clients": clients,
                       "spec": spec, "recipe": recipe, "prefill": prefill, "decode": decode,
                       "draft_tokens": draft_depth(recipe, settings, spec, slurm, cache)}


def single_node(key: str, e: dict):
    """Each run a single-node key configures (without its dates): its GPUs (tp), EP,
    attention DP and client count, the clients from conc-start doubling to conc-end
    (utils/matrix_logic/generate_sweep_configs.py) or its conc-list. The draft depth of a
    speculative one is in its shell script, not here (silicon.yaml `single_node_mtp`)."""
    for seq in e.get("seq-len-configs") or []:
        for ss in seq.get("search-space") or []:
            if "tp" not in ss:
                continue
            concs = [int(c) for c in ss.get("conc-list") or []]
            if ss.get("conc-start"):
                c, end = int(ss["conc-start"]), int(ss["conc-end"])
                while True:
                    concs.append(min(c, end))
                    if c >= end:
                        break
                    c *= 2
            for clients in concs:
                yield {**_common(key, e, seq), "mode": "agg", "clients": clients,
                       "spec": ss.get("spec-decoding", "none"), "gpus": int(ss["tp"]),
                       "ep": int(ss.get("ep") or 1), "attention_dp": bool(ss.get("dp-attn"))}


def _common(key: str, e: dict, seq: dict) -> dict:
    return {"key": key, "image": str(e["image"]).replace("nvcr.io#", "nvcr.io/"),
            "gpu": str(e.get("runner", "")).split("-")[0], "framework": e.get("framework"),
            "precision": e.get("precision"), "isl": int(seq["isl"]), "osl": int(seq["osl"])}


def runs(ix: Path, slurm: Path) -> list[dict]:
    """Every run configuration of InferenceX's NVIDIA configs in the window, with the
    commit dates it was in effect."""
    found: dict[str, dict] = {}
    cache: dict = {}
    log = git(ix, "log", "--reverse", "--format=%H %cs", f"--since={SINCE}", f"--until={UNTIL}",
              "--", CONFIG)
    present: set[str] = set()
    for line in log.splitlines():
        commit, date = line.split()
        try:
            doc = yaml.safe_load(git(ix, "show", f"{commit}:{CONFIG}")) or {}
        except (yaml.YAMLError, subprocess.CalledProcessError):
            continue
        now: set[str] = set()
        for key, e in doc.items():
            if not isinstance(e, dict) or "image" not in e:
                continue
            if e.get("disagg"):
                configured = disaggregated(key, e, slurm, cache)
            elif not e.get("multinode"):
                configured = single_node(key, e)
            else:
                continue
            for run in configured:
                ident = json.dumps(run, sort_keys=True)
                if ident not in found:
                    found[ident] = {**run, "in_effect": []}
                if ident not in present and ident not in now:   # (re)appears here
                    found[ident]["in_effect"].append([date, None, commit[:12]])
                now.add(ident)
        for ident in present - now:                  # gone from this commit on
            found[ident]["in_effect"][-1][1] = date
        present = now
    return sorted(found.values(), key=lambda r: (r["key"], r["isl"], r["osl"], r["clients"],
                                                 json.dumps(r, sort_keys=True)))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--inferencex", type=Path, required=True)
    ap.add_argument("--srt-slurm", type=Path, required=True)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "inferencex_runs.json")
    args = ap.parse_args(argv)
    try:
        check_output_path(args.out, "--out")
        for opt, repo, must in (("--inferencex", args.inferencex, CONFIG),
                                ("--srt-slurm", args.srt_slurm, "recipes")):
            if subprocess.run(["git", "-C", str(repo), "rev-parse", "--git-dir"],
                              capture_output=True).returncode != 0:
                raise MoesimError(opt, f"{repo} is not a git repository",
                                  "pass a clone of the repository (any branch)")
            if not git(repo, "log", "--all", "-1", "--format=%H", "--", must).strip():
                raise MoesimError(opt, f"no commit of {repo} holds {must}",
                                  "pass a clone of SemiAnalysisAI/InferenceX (--inferencex) "
                                  "and of NVIDIA/srt-slurm (--srt-slurm)")
    except MoesimError as exc:
        print(f"error: {exc.render()}", file=sys.stderr)
        return 2
    table = runs(args.inferencex, args.srt_slurm)
    head = git(args.inferencex, "log", "-1", "--format=%H", f"--until={UNTIL}", "--", CONFIG)
    doc = {"source": f"github.com/SemiAnalysisAI/InferenceX {CONFIG}, every commit from "
                     f"{SINCE} to {UNTIL} (last {head.strip()[:12]}); SGLang draft depths from "
                     "github.com/NVIDIA/srt-slurm recipes; benchmarks/inferencex_runs.py",
           "runs": table}
    lines = ",\n".join(json.dumps(r, sort_keys=True, separators=(",", ":")) for r in table)
    write_text_atomic(args.out, '{"source": ' + json.dumps(doc["source"]) + ',\n"runs": [\n'
                      + lines + "\n]}\n")
    print(f"{len(table)} run configurations -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
