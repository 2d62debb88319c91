"""Sweeps under change and interruption: cache keys cover every input, Ctrl-C keeps finished
points and stops at once, workers die with their parent, names stay in their folder."""
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import yaml

from simulator.errors import MoesimError
from simulator.outputs.sweep import SweepSpec, expand, run_sweep

ROOT = Path(__file__).resolve().parent.parent
BASE = ROOT / "workloads" / "longcat-flash-decode-h800.yaml"
TRAIN = ROOT / "workloads" / "training" / "deepseek-v3-pretrain-h800.yaml"


def spec(base, **kw) -> SweepSpec:
    d = {"name": "t", "base": str(base), "grid": {"batch_per_device": [8, 16]}}
    d.update(kw)
    return SweepSpec.model_validate(d)


def with_profile(tmp_path, price: float) -> Path:
    prof = yaml.safe_load((ROOT / "hardware_profiles" / "h800.yaml").read_text())
    prof["price_per_gpu_hour"] = {"value": price, "source": "test"}
    p = tmp_path / "prof.yaml"
    p.write_text(yaml.safe_dump(prof))
    w = yaml.safe_load(BASE.read_text())
    w["hardware"] = str(p)
    base = tmp_path / "base.yaml"
    base.write_text(yaml.safe_dump(w))
    return base


def test_changing_a_profile_recomputes_the_points(tmp_path):
    base = with_profile(tmp_path, 2.0)
    db = tmp_path / "r.sqlite"
    first, _ = run_sweep(spec(base), tmp_path, workers=1, results=db)
    base = with_profile(tmp_path, 20.0)          # price x10, same workload fields
    second, _ = run_sweep(spec(base), tmp_path, workers=1, results=db)
    c1 = sorted(r["metrics"]["cost_per_million_output_tokens"] for r in first)
    c2 = sorted(r["metrics"]["cost_per_million_output_tokens"] for r in second)
    assert c2 == pytest.approx([10 * c for c in c1])


def test_an_invalid_profile_stops_the_sweep_instead_of_serving_cached_numbers(tmp_path):
    base = with_profile(tmp_path, 2.0)
    db = tmp_path / "r.sqlite"
    run_sweep(spec(base), tmp_path, workers=1, results=db)
    (tmp_path / "prof.yaml").write_text("name: [unclosed\n")
    with pytest.raises(MoesimError, match="prof.yaml"):
        run_sweep(spec(base), tmp_path, workers=1, results=db)


def test_code_version_is_part_of_the_key(tmp_path, monkeypatch):
    import simulator.outputs.sweep as sw
    keys = {p.key for p in expand(spec(BASE), tmp_path)}
    monkeypatch.setattr(sw, "code_version", lambda: "another-build")
    assert keys.isdisjoint({p.key for p in expand(spec(BASE), tmp_path)})


@pytest.mark.parametrize("name", ["../escape", "a/b", "/abs", ".hidden"])
def test_sweep_name_cannot_leave_its_folder(name):
    with pytest.raises(Exception, match="name"):
        SweepSpec.model_validate({"name": name, "base": str(BASE), "grid": {"seed": [0]}})


def test_results_path_a_directory_or_not_a_database(tmp_path):
    with pytest.raises(MoesimError, match="directory"):
        run_sweep(spec(BASE), tmp_path, workers=1, results=tmp_path)
    junk = tmp_path / "junk.sqlite"
    junk.write_text("this is not sqlite " * 100)
    with pytest.raises(MoesimError, match="not a moesim results database"):
        run_sweep(spec(BASE), tmp_path, workers=1, results=junk)


POINTS = 36     # ~8-13 s of work left after the first point on 2 workers: more than a poll can lag


def slow_sweep(tmp_path) -> tuple[Path, Path]:
    """A sweep of DeepSeek-V3 training points, 0.5-0.7 s each (each seed draws its own routing
    sample), so it can be interrupted."""
    s = tmp_path / "slow.yaml"
    s.write_text(yaml.safe_dump({"name": "slow", "base": str(TRAIN), "kind": "train",
                                 "grid": {"seed": list(range(POINTS))}}))
    return s, tmp_path / "slow.sqlite"


def start(sweep: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(ROOT / "cli.py"), "sweep", str(sweep),
                             "--workers", "2"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, cwd=ROOT, start_new_session=True)


def finished(db: Path) -> int:
    """Points stored so far; read-only, never creating the file (a connection that creates it
    before the sweep opens it would keep the sweep's WAL switch from taking effect)."""
    if not db.exists():
        return 0
    try:
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=0.2)   # never wait
        try:
            return con.execute("SELECT COUNT(*) FROM results").fetchone()[0]
        finally:
            con.close()
    except sqlite3.Error:
        return 0


def wait_for(cond, timeout=120.0):
    end = time.time() + timeout
    while time.time() < end:
        if cond():
            return True
        time.sleep(0.1)
    return False


def test_ctrl_c_stops_within_seconds_and_keeps_finished_points(tmp_path):
    sweep, db = slow_sweep(tmp_path)
    t_start = time.time()
    proc = start(sweep)
    assert wait_for(lambda: finished(db) >= 1), proc.communicate(timeout=5)
    # the pace of this machine now (start-up and one point): a busy machine is slower at
    # everything, so the stop is judged against it, not against a fixed wall-clock race
    pace = time.time() - t_start
    workers = psutil.Process(proc.pid).children(recursive=True)
    at_signal = finished(db)
    t0 = time.time()
    os.killpg(proc.pid, signal.SIGINT)          # what a terminal's Ctrl-C does
    out, err = proc.communicate(timeout=max(120, 10 * pace))
    stop = time.time() - t0
    assert stop < max(10.0, 2 * pace), f"Ctrl-C took {stop:.1f} s (start + a point: {pace:.1f} s)"
    assert proc.returncode == 130, err
    kept = finished(db)
    # what Ctrl-C means: nothing new starts; at most the points in flight (one per worker) land
    assert at_signal <= kept <= at_signal + 2 and kept < POINTS
    text = " ".join(err.split())
    assert f"{kept} of {POINTS} points are kept" in text and "resume" in text
    assert "Traceback" not in err
    assert wait_for(lambda: not any(w.is_running() and w.status() != psutil.STATUS_ZOMBIE
                                    for w in workers), 10 + pace)
    # resuming computes only what is missing
    rerun = subprocess.run([sys.executable, str(ROOT / "cli.py"), "sweep", str(sweep),
                            "--workers", "2", "--json"], capture_output=True, text=True,
                           cwd=ROOT, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    assert finished(db) == POINTS


def test_kill_9_of_the_parent_leaves_no_worker(tmp_path):
    sweep, db = slow_sweep(tmp_path)
    proc = start(sweep)
    assert wait_for(lambda: len(psutil.Process(proc.pid).children(recursive=True)) >= 2, 60)
    workers = psutil.Process(proc.pid).children(recursive=True)
    proc.kill()
    proc.wait(timeout=10)

    def gone():
        return not any(w.is_running() and w.status() != psutil.STATUS_ZOMBIE for w in workers)
    assert wait_for(gone, 10), [w.pid for w in workers if w.is_running()]


def test_more_workers_than_cores_are_capped_with_a_note(tmp_path):
    s = tmp_path / "s.yaml"
    s.write_text(yaml.safe_dump({"name": "cap", "base": str(BASE),
                                 "grid": {"batch_per_device": [8, 16]}}))
    out = subprocess.run([sys.executable, str(ROOT / "cli.py"), "sweep", str(s), "--workers",
                          str((os.cpu_count() or 1) + 10)], capture_output=True, text=True,
                         cwd=ROOT, timeout=300)
    assert out.returncode == 0, out.stderr
    assert f"capped at this machine's {os.cpu_count() or 1} cores" in " ".join(out.stderr.split())
