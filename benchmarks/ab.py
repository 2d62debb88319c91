"""Run one benchmark command in this tree and in another commit, alternately, in one window.

This machine's speed drifts by 2x within minutes, so a figure against the previous code is only
meaningful when both run in the same window, interleaved: round 1 old, new; round 2 old, new ...
The other commit is checked out as a temporary git worktree (removed at the end).

Run: python benchmarks/ab.py --old REV [--rounds 3] -- python benchmarks/step_speed.py --repeats 15
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--old", required=True, help="the commit to compare against (e.g. HEAD~3)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("command", nargs=argparse.REMAINDER, help="-- then the command to run")
    args = ap.parse_args()
    cmd = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not cmd:
        ap.error("give the command after --")
    with tempfile.TemporaryDirectory(prefix="moesim-ab-") as tmp:
        old = Path(tmp) / "old"
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", "-q", str(old),
                        args.old], check=True)
        try:
            for i in range(1, args.rounds + 1):
                for label, tree in (("old", old), ("new", ROOT)):
                    out = subprocess.run(cmd, cwd=tree, capture_output=True, text=True)
                    text = (out.stdout + out.stderr).strip()
                    for line in text.splitlines() or [""]:
                        print(f"round {i} {label}: {line}", flush=True)
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(old)],
                           check=False)


if __name__ == "__main__":
    sys.exit(main())
