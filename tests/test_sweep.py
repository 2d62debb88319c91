"""Sweeps: expansion, SQLite results, resume, refusals, local pool vs a real local Ray cluster."""
import json
import socket
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from cli import app
from simulator.errors import MoesimError
from simulator.loading import load_workload
from simulator.step.whatif import simulate
from simulator.outputs.sweep import SweepSpec, expand, field_paths, pareto, run_sweep

ROOT = Path(__file__).resolve().parent.parent
BASE = str(ROOT / "workloads" / "longcat-flash-decode-h800.yaml")


def spec(**kw) -> SweepSpec:
    d = {"name": "t", "base": BASE, "grid": {"batch_per_device": [8, 16], "schedule": ["sequential", "sbo"]}}
    d.update(kw)
    return SweepSpec.model_validate(d)


def test_expand_grid_and_list_with_stable_keys(tmp_path):
    pts = expand(spec(points=[{"batch_per_device": 8, "schedule": "tbo"},
                              {"batch_per_device": 8, "schedule": "sbo"}]), tmp_path)
    assert len(pts) == 5                                 # the duplicate sbo/8 collapses
    again = expand(spec(points=[{"batch_per_device": 8, "schedule": "tbo"}]), tmp_path)
    assert {p.key for p in again} <= {p.key for p in pts}
    assert "plan.ep" in field_paths() and "routing.zipf_s" in field_paths()


def test_unknown_field_lists_valid_ones(tmp_path):
    with pytest.raises(MoesimError) as e:
        expand(spec(grid={"batch": [1]}), tmp_path)
    assert "batch_per_device" in e.value.render() and "sweep field batch" in e.value.render()


def test_empty_grid(tmp_path):
    with pytest.raises(MoesimError, match="empty"):
        expand(spec(grid={}), tmp_path)
    with pytest.raises(MoesimError, match="empty list"):
        expand(spec(grid={"batch_per_device": []}), tmp_path)


def test_results_resume_without_recompute(tmp_path):
    db = tmp_path / "r.sqlite"
    seen = []
    rows, _ = run_sweep(spec(), tmp_path, workers=1, results=db,
                        progress=lambda d, t: seen.append((d, t)))
    assert len(rows) == 4 and all(r["metrics"] for r in rows)
    assert seen[0] == (0, 4)
    # a killed sweep: drop two finished rows, the rerun starts from 2 and recomputes only 2
    import sqlite3
    con = sqlite3.connect(db)
    keys = [k for (k,) in con.execute("SELECT key FROM results ORDER BY key LIMIT 2")]
    con.execute("DELETE FROM results WHERE key IN (?, ?)", keys)
    con.commit()
    con.close()
    seen.clear()
    rows2, _ = run_sweep(spec(), tmp_path, workers=1, results=db,
                         progress=lambda d, t: seen.append((d, t)))
    assert seen[0] == (2, 4) and seen[-1] == (4, 4)
    assert {r["key"]: r["metrics"] for r in rows2} == {r["key"]: r["metrics"] for r in rows}


def test_results_of_another_definition_are_refused(tmp_path):
    db = tmp_path / "r.sqlite"
    run_sweep(spec(grid={"batch_per_device": [8]}), tmp_path, workers=1, results=db)
    with pytest.raises(MoesimError, match="another sweep definition"):
        run_sweep(spec(), tmp_path, workers=1, results=db)
    rows, _ = run_sweep(spec(), tmp_path, workers=1, results=db, force=True)
    assert len(rows) == 4


def test_local_pool_equals_serial_and_pareto(tmp_path):
    serial, _ = run_sweep(spec(), tmp_path, workers=1, results=tmp_path / "a.sqlite")
    pool, _ = run_sweep(spec(), tmp_path, workers=2, results=tmp_path / "b.sqlite")
    assert serial == pool
    front = pareto(pool)
    assert front and all(r in pool for r in front)


def test_failed_points_are_recorded_not_fatal(tmp_path):
    rows, _ = run_sweep(spec(grid={"batch_per_device": [8, 100000]}), tmp_path, workers=1,
                        results=tmp_path / "f.sqlite")
    errors = [r for r in rows if r["error"]]
    assert len(errors) == 1 and "does not fit" in errors[0]["error"]


def test_ray_address_that_does_not_answer(tmp_path):
    pytest.importorskip("ray")
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    with pytest.raises(MoesimError) as e:
        run_sweep(spec(), tmp_path, backend="ray", address=f"127.0.0.1:{port}",
                  results=tmp_path / "r.sqlite")
    assert "--backend local" in e.value.render()


def test_real_local_ray_cluster_matches_local_pool(tmp_path, ray_cluster):
    local, _ = run_sweep(spec(), tmp_path, workers=2, results=tmp_path / "local.sqlite")
    remote, _ = run_sweep(spec(), tmp_path, backend="ray", address=ray_cluster,
                          results=tmp_path / "ray.sqlite")
    assert remote == local and len(remote) == 4


def test_sweep_cli_report_and_json(tmp_path):
    sweep_file = tmp_path / "s.yaml"
    sweep_file.write_text(yaml.safe_dump({"name": "cli", "base": BASE,
                                          "grid": {"batch_per_device": [8, 16]}}))
    report = tmp_path / "s.html"
    r = CliRunner().invoke(app, ["sweep", str(sweep_file), "--workers", "1", "--json",
                                 "--report", str(report)])
    assert r.exit_code == 0, r.output
    data = json.loads(r.stdout)   # the point count goes to stderr
    assert len(data["points"]) == 2 and data["pareto"]
    assert Path(data["results"]) == tmp_path / "cli.sqlite"
    for row in data["points"]:        # each point is simulate of the base with its overrides
        assert set(row) == {"key", "overrides", "metrics", "error"} and row["error"] is None
        b = row["overrides"]["batch_per_device"]
        want = simulate(load_workload(BASE).variant(batch_per_device=b)).to_json(with_ops=False)
        assert row["metrics"]["tokens_per_gpu_s"] == pytest.approx(want["tokens_per_gpu_s"])
        assert row["metrics"]["tpot_ms"] == pytest.approx(want["tpot_ms"])
    # not beaten on tokens/s per user (1000 / TPOT), tokens/s per GPU and $ at once
    fig = {r["key"]: (1e3 / r["metrics"]["tpot_ms"], r["metrics"]["tokens_per_gpu_s"],
                      -r["metrics"]["cost_per_million_output_tokens"]) for r in data["points"]}
    undominated = [k for k, a in fig.items() if not any(
        all(bi >= ai for ai, bi in zip(a, b)) and b != a for b in fig.values())]
    assert sorted(data["pareto"]) == sorted(undominated)
    assert (tmp_path / "cli.sqlite").exists() and "Pareto front" in report.read_text()
    bad = tmp_path / "b.yaml"
    bad.write_text(yaml.safe_dump({"name": "b", "base": BASE, "grid": {"nope": [1]}}))
    r = CliRunner().invoke(app, ["sweep", str(bad)])
    assert r.exit_code == 2 and "not a workload field" in r.output
