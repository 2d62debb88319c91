"""Mutation check: plant each named plausible bug (benchmarks/mutants.py) in a scratch copy of the
project, run the tests that cover its module, and count the mutants the tests kill.

Run: python benchmarks/mutation.py [--quick] [--workers 2] [--only SUBSTRING] [--out results.json]
     python benchmarks/mutation.py --mechanical N   (N mutants per module derived mechanically by
     benchmarks/mechanical.py; a survivor is then run against the golden JSON test too, and a
     golden-only kill is reported apart, not counted as a kill)
Target (docs/testing.md): at least 90% of the non-equivalent mutants of every module killed.

A mutant is killed when its tests fail (or time out: a planted bug that makes the engine spin is
caught); it survives when they pass. Before any mutant runs, each module's tests must pass on
the unmutated copy, else the run stops (a red baseline would count every mutant as killed).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from mechanical import EQUIVALENT as MECHANICAL_EQUIVALENT, draw  # noqa: E402
from mutants import EQUIVALENT, MUTANTS, Mutant  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
COPY = ("simulator", "executor", "benchmarks", "tests", "workloads", "hardware_profiles", "cli.py",
        "pyproject.toml")
GOLDEN = "tests/test_golden.py"
TIMEOUT_S = 300           # ~20x the slowest baseline: a mutant that spins is killed

# The tests that pin each module's behaviour (fast ones: the whole suite takes ~5 minutes).
ENGINE = ["tests/test_engine.py", "tests/test_engine_time.py", "tests/test_engine_uses_hardware.py",
          "tests/test_engine_properties.py", "tests/test_physics.py", "tests/test_engine_ranks.py"]
SCHED = ["tests/test_schedules.py", "tests/test_engine.py", "tests/test_engine_properties.py",
         "tests/test_physics.py"]
TESTS: dict[str, list[str]] = {
    "simulator/engine/core.py": ENGINE,
    "simulator/engine/ranks.py": ["tests/test_engine_ranks.py", "tests/test_shared_prefix.py"],
    "simulator/engine/shared_prefix.py": ["tests/test_shared_prefix.py"],
    "simulator/engine/rank_inputs.py": ["tests/test_engine_ranks.py",
                                        "tests/test_shared_prefix.py"],
    "simulator/engine/schedule.py": SCHED,
    "simulator/engine/tbo_stages.py": SCHED,
    "simulator/engine/timeline.py": SCHED + ["tests/test_periodic.py"],
    "simulator/pricing/routing.py": ["tests/test_routing.py", "tests/test_deployments.py",
                                     "tests/test_physics.py"],
    "simulator/pricing/traffic.py": ["tests/test_routing.py", "tests/test_topology.py",
                                     "tests/test_fp8.py", "tests/test_engine.py",
                                     "tests/test_physics.py", "tests/test_measured_kernels.py"],
    "simulator/pricing/batched.py": ["tests/test_batched.py", "tests/test_physics.py"],
    "simulator/pricing/peaks.py": ["tests/test_fp8.py", "tests/test_engine_uses_hardware.py"],
    "simulator/pricing/measured.py": ["tests/test_measured_kernels.py", "tests/test_formulas_by_hand.py"],
    "simulator/kernels/aiconfigurator.py": ["tests/test_measured_kernels.py"],
    "simulator/kernels/grid.py": ["tests/test_measured_kernels.py"],
    "simulator/step/whatif.py": ["tests/test_physics.py", "tests/test_periodic.py",
                                 "tests/test_engine.py", "tests/test_schedules.py", "tests/test_training.py"],
    "simulator/pricing/hardware.py": ["tests/test_engine_uses_hardware.py", "tests/test_fp8.py",
                                      "tests/test_gemm_shape.py", "tests/test_topology.py",
                                      "tests/test_physics.py", "tests/test_kernel_calibration.py",
                                      "tests/test_training.py", "tests/test_formulas_by_hand.py", "tests/test_unfused.py"],
    "simulator/training/pipeline.py": ["tests/test_training.py", "tests/test_deployments.py",
                                       "tests/test_physics.py", "tests/test_pipeline_reference.py"],
    "simulator/training/host.py": ["tests/test_training.py", "tests/test_published.py"],
    "benchmarks/training_host_fit.py": ["tests/test_training_host_fit.py"],
    "simulator/training/run.py": ["tests/test_training.py", "tests/test_deployments.py",
                                  "tests/test_physics.py", "tests/test_formulas_by_hand.py", "tests/test_json_keys.py"],
    "simulator/training/passes.py": ["tests/test_training.py", "tests/test_formulas_by_hand.py",
                                     "tests/test_tensor_parallel.py"],
    "simulator/training/data_parallel.py": ["tests/test_training.py", "tests/test_formulas_by_hand.py",
                                            "tests/test_physics.py", "tests/test_deployments.py"],
    "simulator/serving/run.py": ["tests/test_serving.py", "tests/test_physics.py", "tests/test_formulas_by_hand.py", "tests/test_json_keys.py", "tests/test_measured_kernels.py", "tests/test_engine_policy.py"],
    "simulator/serving/pools.py": ["tests/test_serving.py", "tests/test_deployments.py",
                                   "tests/test_physics.py", "tests/test_engine_policy.py"],
    "simulator/serving/loop.py": ["tests/test_serving.py", "tests/test_physics.py",
                                  "tests/test_tensor_parallel.py", "tests/test_engine_policy.py"],
    "simulator/serving/engine_policy.py": ["tests/test_engine_policy.py", "tests/test_serving.py"],
    "simulator/pricing/fidelity.py": ["tests/test_tensor_parallel.py"],
    "simulator/serving/ready.py": ["tests/test_serving.py"],
    "simulator/serving/arrivals.py": ["tests/test_serving.py"],
    "simulator/schema/serving.py": ["tests/test_serving.py", "tests/test_bad_input.py"],
    "benchmarks/serving_runtime_fit.py": ["tests/test_serving_runtime_fit.py"],
    "simulator/engine/periodic.py": ["tests/test_periodic.py", "tests/test_schedules.py"],
    "simulator/serving/mtp.py": ["tests/test_serving.py", "tests/test_physics.py"],
    "simulator/serving/result.py": ["tests/test_serving.py", "tests/test_physics.py"],
    "simulator/serving/step_model.py": ["tests/test_serving.py", "tests/test_physics.py"],
    "simulator/graph/backward.py": ["tests/test_op_graph.py", "tests/test_training.py",
                                    "tests/test_formulas_by_hand.py"],
    "simulator/step/resolve.py": ["tests/test_training.py", "tests/test_published.py",
                                  "tests/test_tensor_parallel.py"],
    "simulator/graph/model.py": ["tests/test_op_graph.py", "tests/test_deployments.py",
                                 "tests/test_physics.py", "tests/test_tensor_parallel.py",
                                 "tests/test_measured_kernels.py"],
    "simulator/graph/ops.py": ["tests/test_op_graph.py", "tests/test_deployments.py",
                               "tests/test_physics.py", "tests/test_periodic.py"],
    "simulator/graph/params.py": ["tests/test_params.py", "tests/test_deployments.py",
                                  "tests/test_physics.py", "tests/test_tensor_parallel.py"],
    "simulator/graph/memory.py": ["tests/test_params.py", "tests/test_deployments.py",
                                  "tests/test_bad_input.py", "tests/test_physics.py", "tests/test_formulas_by_hand.py", "tests/test_memory_keys.py", "tests/test_json_keys.py",
                                  "tests/test_tensor_parallel.py"],
    "executor/probes.py": ["tests/test_executor.py"],
    "simulator/pricing/kernel_files.py": ["tests/test_kernel_calibration.py"],
    "simulator/pricing/attention_fit.py": ["tests/test_kernel_calibration.py"],
    "simulator/step/result.py": ["tests/test_physics.py", "tests/test_published.py"],
    "benchmarks/silicon_twins.py": ["tests/test_silicon.py"],
    "benchmarks/silicon.py": ["tests/test_silicon.py"],
    "benchmarks/silicon_publisher.py": ["tests/test_silicon.py"],
    "benchmarks/inferencex_runs.py": ["tests/test_silicon.py"],
    "simulator/pricing/cost.py": ["tests/test_serving.py", "tests/test_training.py",
                                  "tests/test_physics.py", "tests/test_formulas_by_hand.py", "tests/test_json_keys.py"],
}


def scratch_copy() -> Path:
    """A copy of the project's code, tests and data (no .git, no virtualenv)."""
    d = Path(tempfile.mkdtemp(prefix="moesim-mut-"))
    for name in COPY:
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, d / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(src, d / name)
    return d


def run_tests(where: Path, tests: list[str]) -> tuple[bool, float, str]:
    """(passed, seconds, last lines) of pytest on `tests` inside the copy `where`."""
    present = [t for t in tests if (where / t).exists()]
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1", "MOESIM_MUTATION": "1"}
    t0 = time.perf_counter()
    try:
        p = subprocess.run([sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider",
                            "-m", "not slow", *present], cwd=where, env=env, capture_output=True,
                           text=True, timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        return False, time.perf_counter() - t0, "timeout"
    tail = "\n".join((p.stdout + p.stderr).strip().splitlines()[-3:])
    return p.returncode == 0, time.perf_counter() - t0, tail


def apply(where: Path, m: Mutant) -> str:
    """Plant the mutant in the copy; returns the original text to restore."""
    path = where / m.module
    text = path.read_text()
    n = text.count(m.old)
    if n != 1:
        raise SystemExit(f"mutant '{m.name}': its snippet occurs {n} times in {m.module} "
                         "(the code changed; update benchmarks/mutants.py)")
    path.write_text(text.replace(m.old, m.new))
    return text


def check_mutants(selected: list[Mutant]) -> None:
    """Every snippet occurs exactly once in today's code."""
    for m in selected:
        text = (ROOT / m.module).read_text()
        if text.count(m.old) != 1:
            raise SystemExit(f"mutant '{m.name}': its snippet occurs {text.count(m.old)} times "
                             f"in {m.module} (update benchmarks/mutants.py)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="only the mutants marked quick")
    ap.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1))
    ap.add_argument("--only", default=None, help="only mutants whose module or name has this")
    ap.add_argument("--out", type=Path, default=None, help="write the results as JSON")
    ap.add_argument("--mechanical", type=int, default=0, metavar="N",
                    help="N mechanically derived mutants per module instead of the named ones")
    ap.add_argument("--seed", type=int, default=None,
                    help="with --mechanical: draw with this seed (default: mechanical.SEED)")
    args = ap.parse_args()
    pool_of = draw(args.mechanical, ROOT, args.seed) if args.mechanical else MUTANTS
    selected = [m for m in pool_of if (m.quick or not args.quick) and
                (args.only is None or args.only in m.module or args.only in m.name)]
    check_mutants(selected)
    copies = [scratch_copy() for _ in range(max(1, args.workers))]
    t_start = time.perf_counter()
    try:
        suites = sorted({tuple(TESTS[m.module]) for m in selected})
        free = list(copies)

        def baseline(suite: tuple[str, ...]) -> None:
            where = free.pop()
            try:
                ok, secs, tail = run_tests(where, list(suite))
            finally:
                free.append(where)
            if not ok:
                raise SystemExit(f"baseline tests fail unmutated ({', '.join(suite)}):\n{tail}")
            print(f"baseline ok in {secs:.0f} s: {' '.join(suite)}", flush=True)
        with ThreadPoolExecutor(len(copies)) as pool:
            list(pool.map(baseline, suites))
        results: list[dict] = []

        def one(m: Mutant) -> dict:
            where = free.pop()
            try:
                original = apply(where, m)
                try:
                    passed, secs, tail = run_tests(where, TESTS[m.module])
                    golden_only = False
                    if passed and args.mechanical:     # does only the golden test see it?
                        golden_only = not run_tests(where, [GOLDEN])[0]
                finally:
                    (where / m.module).write_text(original)
            finally:
                free.append(where)
            r = {"module": m.module, "mutant": m.name, "killed": not passed,
                 "golden_only": golden_only, "equivalent": equivalent_why(m) is not None,
                 "why": equivalent_why(m), "seconds": round(secs, 1)}
            verdict = "killed  " if not passed else ("GOLDEN  " if golden_only else "SURVIVED")
            print(f"{verdict} {secs:5.0f} s  {m.module}: {m.name}", flush=True)
            return r

        with ThreadPoolExecutor(len(copies)) as pool:
            results = list(pool.map(one, selected))
    finally:
        for d in copies:
            shutil.rmtree(d, ignore_errors=True)
    report(results, time.perf_counter() - t_start)
    if args.out:
        args.out.write_text(json.dumps(results, indent=1))


def equivalent_why(m: Mutant) -> str | None:
    """Why a named or mechanical mutant cannot change any result, or None."""
    return EQUIVALENT.get(m.name) or MECHANICAL_EQUIVALENT.get((m.module, m.new.strip()))


def report(results: list[dict], wall: float) -> None:
    """Kill rate per module (equivalent mutants left out of the rate) and the survivors."""
    by: dict[str, list[dict]] = defaultdict(list)
    for r in results:
        by[r["module"]].append(r)
    print("\n| module | mutants | equivalent | killed | golden only | kill rate |\n"
          "|---|---:|---:|---:|---:|---:|")
    total = killed = golden = 0
    for mod in sorted(by):
        rs = [r for r in by[mod] if not r["equivalent"]]
        k = sum(r["killed"] for r in rs)
        g = sum(r.get("golden_only", False) for r in rs)
        total += len(rs)
        killed += k
        golden += g
        rate = f"{k / len(rs):.0%}" if rs else "-"
        print(f"| {mod} | {len(by[mod])} | {len(by[mod]) - len(rs)} | {k} | {g} | {rate} |")
    print(f"| all | {len(results)} | {len(results) - total} | {killed} | {golden} | "
          f"{killed / max(total, 1):.0%} |")
    survivors = [r for r in results if not r["killed"]]
    for r in survivors:
        why = r.get("why")
        tag = " (caught by the golden JSON only)" if r.get("golden_only") else ""
        print(f"survived: {r['module']}: {r['mutant']}{tag}" +
              (f" (equivalent: {why})" if why else ""))
    print(f"wall {wall:.0f} s")


if __name__ == "__main__":
    main()
