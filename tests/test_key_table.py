"""docs/testing.md maps every stable JSON key of simulate, compare, serve (and its sweeps), train,
sweep, plan and plan --train to the test that works its value out independently. This test
runs each command's JSON on a small case, collects every key it prints, and fails on a key the
table does not list or a test the table names that does not exist."""
import ast
import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# values whose keys are data (hardware names, link classes, a workload, a plan, sweep fields):
# the key itself is listed, not what it holds
OPAQUE = {"workload", "plan", "overrides", "metrics", "question", "best", "best_by_mode",
          "unmet", "fastest", "cheapest", "links", "notes", "slo"}


def flat(obj, prefix: str = "") -> set[str]:
    """Every key path of a JSON object: a.b for nested objects, the first element of a list of
    objects stands for all of them."""
    out = set()
    if isinstance(obj, list) and obj and isinstance(obj[0], dict):
        return flat(obj[0], prefix)
    if not isinstance(obj, dict):
        return out
    for k, v in obj.items():
        out.add(prefix + k)
        if k not in OPAQUE:
            out |= flat(v, prefix + k + ".")
    return out


def table() -> dict[str, list[tuple[str, list[str]]]]:
    """command -> [(key pattern, [test ids])] from docs/testing.md's key table."""
    text = (ROOT / "docs" / "testing.md").read_text()
    section = text.split("## Stable JSON keys", 1)[1].split("\n## ", 1)[0]
    rows: dict[str, list] = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 3 or cells[0] in ("command", "---"):
            continue
        tests = re.findall(r"`(tests/[\w/]+\.py::\w+)`", cells[2])
        for key in re.findall(r"`([\w.*]+)`", cells[1]):
            rows.setdefault(cells[0], []).append((key, tests))
    return rows


def covered(key: str, patterns: list[str]) -> bool:
    return any(key == p or (p.endswith(".*") and key.startswith(p[:-1])) for p in patterns)


@pytest.fixture(scope="module")
def outputs(tmp_path_factory):
    """Each command's JSON on a small case."""
    import simulator.outputs.plan_train as pt
    from typer.testing import CliRunner

    from cli import app
    from simulator.loading import read_yaml_mapping, resolve_paths
    from simulator.outputs.plan import Question, search
    from simulator.serving.batch_sweep import batch_sweep
    from simulator.serving.load_sweep import load_sweep
    from tests.conftest import workload
    from tests.test_serving import SMALL

    tmp = tmp_path_factory.mktemp("keys")
    run = CliRunner()

    def cli(*args):
        r = run.invoke(app, [*map(str, args), "--json"])
        assert r.exit_code == 0, r.output
        return json.loads(r.stdout)
    decode = ROOT / "workloads" / "serving" / "deepseek-v3-h200-kv-pressure.yaml"
    w = workload(str(decode))
    w = w.variant(phase="decode", batch_per_device=16,
                  mtp=w.mtp.model_copy(update={"enabled": True}))
    (tmp / "d.yaml").write_text(json.dumps(w.model_dump(mode="json")))
    (tmp / "s.yaml").write_text(json.dumps(SMALL))
    train_path = ROOT / "workloads" / "validation" / "training" / \
        "qwen3-30b-a3b-b200-deepep-16.yaml"
    (tmp / "sweep.yaml").write_text(json.dumps({"name": "k", "base": str(tmp / "d.yaml"),
                                                "grid": {"batch_per_device": [8, 16]}}))
    small = workload(str(tmp / "s.yaml"))
    q = Question(model="qwen3-30b-a3b", hardware=("h200-sxm",), gpus=(8,), isl=1024, osl=256,
                 ttft_ms=500, tpot_ms=30)
    mp = pytest.MonkeyPatch()
    for name, value in (("TP", (1,)), ("PP", (1, 2)), ("EP", (8,)), ("MICRO_BATCHES", (4,))):
        mp.setattr(pt, name, value)
    base = resolve_paths(read_yaml_mapping(train_path), train_path.parent)
    try:
        train_plan = pt.search(pt.TrainQuestion(base, ("b200-sxm",), (16,)), workers=1)
    finally:
        mp.undo()
    plan = search(q, workers=1)
    return {
        "simulate": cli("simulate", tmp / "d.yaml"),
        "compare": cli("compare", tmp / "d.yaml", "--schedules", "sequential,tbo")[1],
        "serve": cli("serve", tmp / "s.yaml"),
        "serve --sweep-concurrency": load_sweep(small, "concurrency", [2])[0],
        "serve --sweep-batch": batch_sweep(small, [8], ["sequential"])[0],
        "train": cli("train", train_path),
        "sweep": cli("sweep", tmp / "sweep.yaml", "--workers", "1"),
        "plan": {k: v for k, v in plan.items() if k != "points"},
        "plan --train": {k: v for k, v in train_plan.items() if k != "points"},
    }


def test_every_key_each_command_prints_is_in_the_table(outputs):
    rows = table()
    missing = {}
    for command, obj in outputs.items():
        patterns = [k for k, _ in rows.get(command, [])]
        keys = flat(obj)
        if command == "compare":           # compare prints simulate's keys and its own
            keys -= flat(outputs["simulate"])
        gaps = sorted(k for k in keys if not covered(k, patterns))
        if gaps:
            missing[command] = gaps
    assert not missing, missing


def test_every_row_names_tests_that_exist():
    defined = {}
    for f in (ROOT / "tests").glob("test_*.py"):
        tree = ast.parse(f.read_text())
        defined[f"tests/{f.name}"] = {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}
    rows = table()
    assert sum(len(r) for r in rows.values()) > 100
    for command, entries in rows.items():
        for key, tests in entries:
            assert tests, (command, key)
            for t in tests:
                path, name = t.split("::")
                assert name in defined.get(path, set()), (command, key, t)
