"""How much of each shipped workload's step time the measured kernel tables price, on the GPUs
that have them: every workload under workloads/validation/ and workloads/deployments/ (and the
top-level what-ifs), its hardware swapped for each profile with measured_kernels, simulated
once, and `fidelity.measured_share` read back (docs/accuracy.md, "Measured kernels").

    python benchmarks/measured_share.py [--profiles h100-sxm,h200-sxm,b200-sxm] [--json OUT]

A workload that does not fit a GPU's memory, or that the profile cannot run, is listed with the
reason instead of a share.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from simulator.errors import MoesimError  # noqa: E402
from simulator.loading import load_workload  # noqa: E402
from simulator.step.whatif import simulate  # noqa: E402

FOLDERS = ("workloads/validation", "workloads/deployments")
THRESHOLD = 0.8            # the share the measured-kernels issue asks of each workload


def shipped() -> list[Path]:
    """The shipped validation and deployment workloads that simulate one step."""
    paths = [p for f in FOLDERS for p in sorted((ROOT / f).glob("*.yaml"))]
    return [p for p in paths if load_workload(str(p)).phase in ("decode", "prefill")]


def share(path: Path, profile: str) -> dict:
    """The measured share (or the reason there is none) of `path` on `profile`."""
    w = load_workload(str(path))
    w = w.model_copy(update={"hardware": profile})
    try:
        r = simulate(w)
    except MoesimError as e:
        return {"workload": path.stem, "profile": profile, "share": None, "reason": str(e)}
    f = r.fidelity
    return {"workload": path.stem, "profile": profile, "share": f["measured_share"],
            "extrapolated": f["extrapolated"], "kernel_tables": f["kernel_tables"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profiles", default="h100-sxm,h200-sxm,b200-sxm")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    rows = [share(p, prof) for p in shipped() for prof in args.profiles.split(",")]
    print("| workload | profile | measured share | extrapolated or why not |")
    print("|---|---|---:|---|")
    for r in rows:
        s = "-" if r["share"] is None else f"{r['share']:.0%}"
        why = r.get("reason") or "; ".join(r["extrapolated"][:3])
        print(f"| {r['workload']} | {r['profile']} | {s} | {why[:110]} |")
    ran = [r for r in rows if r["share"] is not None]
    ok = sum(r["share"] >= THRESHOLD for r in ran)
    print(f"\n{ok} of {len(ran)} runs price at least {THRESHOLD:.0%} of their step from "
          f"measured tables ({len(rows) - len(ran)} could not run)")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
