"""Golden JSON of every shipped workload: refactors and speed work change no result.

A commit that changes results on purpose regenerates them (`python -m simulator.outputs.golden --write`)
and says why in its message."""
import json

import pytest

from simulator.outputs.golden import GOLDEN_DIR, differences, golden_name, results, shipped


def test_every_shipped_workload_has_a_golden_file():
    names = {golden_name(p) for p in shipped()}
    assert len(names) >= 9
    assert names == {p.name for p in GOLDEN_DIR.glob("*.json")}


@pytest.mark.parametrize("path", shipped(), ids=lambda p: golden_name(p)[:-5])
def test_results_match_golden(path):
    golden = json.loads((GOLDEN_DIR / golden_name(path)).read_text())
    diffs = list(differences(golden, results(path)))
    assert not diffs, "\n".join(diffs[:20])


def test_differences_sees_a_moved_number_and_a_missing_key():
    assert list(differences({"a": 1.0, "b": {"c": 2}}, {"a": 1.0, "b": {"c": 2}})) == []
    assert list(differences({"a": 1.0}, {"a": 1.0 + 1e-6}))
    assert list(differences({"a": 1.0, "b": 2}, {"a": 1.0}))
    assert list(differences({"a": "sbo"}, {"a": "tbo"}))
