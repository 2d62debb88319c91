"""The mutation harness stays usable: every planted bug's snippet occurs exactly once in its
module, and every mutated module has tests mapped to it (benchmarks/mutation.py refuses either
at run time; this catches a refactor that breaks them before anyone runs it)."""
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

from mutants import MUTANTS  # noqa: E402
from mutation import TESTS  # noqa: E402


def test_every_mutant_snippet_occurs_once_in_its_module():
    stale = [(m.module, m.name) for m in MUTANTS
             if (ROOT / m.module).read_text().count(m.old) != 1]
    assert stale == []


def test_every_mutated_module_has_tests_that_exist():
    for module in {m.module for m in MUTANTS}:
        assert module in TESTS, module
        assert all((ROOT / t).exists() for t in TESTS[module]), module
