"""The paper's Table 7 on the paper-theoretical H800 profile: one profile, no per-model factors."""
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
import table7  # noqa: E402

CELLS = {(c, r): (p, pred, e) for c, r, p, pred, e in table7.rows()}


@pytest.mark.parametrize("column", list(table7.PAPER))
@pytest.mark.parametrize("row", ["dispatch", "moe", "combine"])
def test_communication_and_moe_rows_within_5_percent(column, row):
    paper, pred, err = CELLS[(column, row)]
    assert abs(err) <= 0.05, f"{column} {row}: paper {paper}, moesim {pred:.1f}"


def test_longcat_cost_per_million_output_tokens_within_10_percent():
    paper, pred, err = CELLS[("longcat-flash", "cost")]
    assert abs(err) <= 0.10, pred


# The attention rows the honest model misses (docs/accuracy.md, "Table 7", says why): expected
# failures against the paper's figure, strict, so a change that fixes one is noticed.
ATTENTION_MISSES = {
    "longcat-flash": "memory-bound absorbed MLA at 5000 tokens of context reads 553 MB of KV: "
                     "~183 us against the paper's 264 (docs/accuracy.md)",
    "deepseek-v3": "the paper's 471 us implies compute-bound attention (MTP verification at "
                   "FlashMLA's rate), at odds with the table's own 96-token MoE rows",
}


@pytest.mark.parametrize("column", [
    pytest.param(c, marks=pytest.mark.xfail(reason=ATTENTION_MISSES[c], strict=True))
    if c in ATTENTION_MISSES else c for c in table7.PAPER])
def test_attention_row_within_20_percent_of_the_paper(column):
    paper, pred, err = CELLS[(column, "attention")]
    assert abs(pred / paper - 1) <= 0.20, f"{column} attention: paper {paper}, moesim {pred:.0f}"


@pytest.mark.parametrize("column", [
    pytest.param(c, marks=pytest.mark.xfail(
        reason="Qwen3-235B has no MTP layer; the paper's 26.2 ms divides by an MTP-like 1.69 "
               "that moesim does not credit (docs/accuracy.md)", strict=True))
    if c == "qwen3-235b" else c for c in table7.PAPER])
def test_tpot_within_10_percent_of_the_paper(column):
    paper, pred, err = CELLS[(column, "tpot_ms")]
    assert abs(pred / paper - 1) <= 0.10, f"{column} TPOT: paper {paper}, moesim {pred:.1f}"


def test_theoretical_profile_is_an_idealisation_and_public_profile_keeps_floors():
    from simulator.loading import load_profile
    ideal, real = load_profile("h800-paper-theoretical"), load_profile("h800")
    assert not ideal.idealizations.gemm_weight_floor and real.idealizations.gemm_weight_floor
    assert real.idealizations.ep_flat_bandwidth_Bps is None
    # the physical profile predicts a slower LongCat decode than the idealisation
    phys = table7.predict("longcat-flash", "h800")
    assert phys["tpot_ms"] > CELLS[("longcat-flash", "tpot_ms")][1]
