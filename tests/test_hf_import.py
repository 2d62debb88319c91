"""`moesim model import`: HF config.json of each family -> the same counts as the zoo."""
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cli import app
from simulator.hf_import import import_hf_config, spec_to_yaml
from simulator.loading import load_model
from simulator.graph.params import count_params

DATA = Path(__file__).resolve().parent / "data" / "hf"
PAIRS = [("longcat_flash", "longcat-flash"), ("deepseek_v3", "deepseek-v3"),
         ("qwen3_moe", "qwen3-235b-a22b"), ("mixtral", "mixtral-8x7b"), ("llama", "llama-3-70b")]


@pytest.mark.parametrize("config,zoo", PAIRS)
def test_import_matches_zoo_totals(config, zoo):
    spec = import_hf_config(DATA / f"{config}.json")
    ref = load_model(zoo)
    assert count_params(spec).total == count_params(ref).total
    assert spec.layer_kind == ref.layer_kind and spec.family == ref.family


def test_cli_import_writes_yaml_that_loads_back(tmp_path):
    out = tmp_path / "lc.yaml"
    r = CliRunner().invoke(app, ["model", "import", str(DATA / "longcat_flash.json"),
                                 "--out", str(out)])
    assert r.exit_code == 0, r.output
    spec = load_model(str(out))
    assert spec.moe.num_zero_experts == 256 and spec.layer_kind == "shortcut"
    again = CliRunner().invoke(app, ["model", "import", str(DATA / "longcat_flash.json"),
                                     "--out", str(out)])
    assert again.exit_code == 2 and "--force" in again.output
    r = CliRunner().invoke(app, ["model", str(out)])
    assert r.exit_code == 0 and "560." in r.output


def test_yaml_round_trip_is_lossless():
    spec = import_hf_config(DATA / "deepseek_v3.json")
    import yaml
    from simulator.schema import ModelSpec
    assert ModelSpec.model_validate(yaml.safe_load(spec_to_yaml(spec))) == spec


def test_unsupported_family_and_bad_json(tmp_path):
    bad = tmp_path / "c.json"
    bad.write_text(json.dumps({"model_type": "gpt2"}))
    r = CliRunner().invoke(app, ["model", "import", str(bad)])
    assert r.exit_code == 2 and "not a supported family" in r.output
    bad.write_text("{nope")
    r = CliRunner().invoke(app, ["model", "import", str(bad)])
    assert r.exit_code == 2 and "not valid JSON" in r.output
    missing = tmp_path / "m.json"
    missing.write_text(json.dumps({"model_type": "llama", "hidden_size": 64}))
    r = CliRunner().invoke(app, ["model", "import", str(missing)])
    assert r.exit_code == 2 and "num_hidden_layers" in r.output
