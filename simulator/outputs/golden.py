"""Golden results of the shipped workloads: what every refactor and speed change must reproduce.

`python -m simulator.outputs.golden --write` regenerates tests/golden/*.json (do it only in a commit
that changes results on purpose, and say why); tests/test_golden.py compares.
"""
from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any, Iterator

from simulator.jsonout import json_safe
from simulator.loading import WORKLOADS_DIR, load_workload

GOLDEN_DIR = WORKLOADS_DIR.parent / "tests" / "golden"
SERVE_DURATION_S = 10.0        # seconds of arrivals per serving golden (keeps the check quick)
REL_TOL = 1e-9                 # float noise where the order of additions may change


def shipped() -> list[Path]:
    """Every runnable workload YAML shipped under workloads/ (models and sweeps excluded)."""
    skip = {"models", "sweeps"}
    return sorted(p for p in WORKLOADS_DIR.rglob("*.yaml")
                  if not skip & set(p.relative_to(WORKLOADS_DIR).parts[:-1]))


def results(path: Path) -> dict[str, Any]:
    """simulate (no ops), and train / serve where the workload has those blocks."""
    from simulator.step.whatif import simulate
    w = load_workload(str(path))
    out: dict[str, Any] = {}
    m = simulate(w).metrics
    out["simulate"] = {k: v for k, v in m.items() if k not in ("ops", "notes")}
    if w.training is not None:
        from simulator.training.run import train
        out["train"] = {k: v for k, v in train(w).to_json().items() if k != "notes"}
    if w.serving is not None:
        from simulator.serving.run import ServingSim
        dur = min(SERVE_DURATION_S, w.serving.arrivals.duration_s)
        out["serve"] = ServingSim(w, duration=dur).run().metrics
    return json_safe(out)


def golden_name(path: Path) -> str:
    """tests/golden file name of a workload: its path under workloads/, slashes as '__'."""
    return "__".join(path.relative_to(WORKLOADS_DIR).with_suffix("").parts) + ".json"


def differences(expected: Any, actual: Any, where: str = "") -> Iterator[str]:
    """Every leaf where two results differ beyond REL_TOL (numbers) or at all (the rest)."""
    if isinstance(expected, dict) and isinstance(actual, dict):
        for k in sorted(set(expected) | set(actual)):
            if k not in expected or k not in actual:
                yield f"{where}.{k}: only in {'actual' if k in actual else 'golden'}"
            else:
                yield from differences(expected[k], actual[k], f"{where}.{k}")
    elif isinstance(expected, list) and isinstance(actual, list) and len(expected) == len(actual):
        for i, (a, b) in enumerate(zip(expected, actual)):
            yield from differences(a, b, f"{where}[{i}]")
    elif isinstance(expected, (int, float)) and isinstance(actual, (int, float)) and \
            not isinstance(expected, bool):
        if not math.isclose(expected, actual, rel_tol=REL_TOL, abs_tol=1e-12):
            yield f"{where}: golden {expected!r}, now {actual!r}"
    elif expected != actual:
        yield f"{where}: golden {expected!r}, now {actual!r}"


def main() -> None:
    """Write (--write) or check the golden files."""
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--write", action="store_true", help="regenerate tests/golden/*.json")
    args = ap.parse_args()
    GOLDEN_DIR.mkdir(parents=True, exist_ok=True)
    bad = 0
    for path in shipped():
        target = GOLDEN_DIR / golden_name(path)
        res = results(path)
        if args.write:
            target.write_text(json.dumps(res, indent=1, sort_keys=True) + "\n")
            print(f"wrote {target.name}")
            continue
        if not target.exists():
            bad += 1
            print(f"{path.relative_to(WORKLOADS_DIR)}: no golden file yet (run with --write)")
            continue
        diffs = list(differences(json.loads(target.read_text()), res))
        bad += bool(diffs)
        print(f"{path.relative_to(WORKLOADS_DIR)}: " + ("same" if not diffs else
                                                      f"{len(diffs)} differ, e.g. {diffs[0]}"))
    raise SystemExit(1 if bad else 0)


if __name__ == "__main__":
    main()
