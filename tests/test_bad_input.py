"""Bad input ends in exit 2 with one paragraph naming the field and a fix: no traceback, no hang,
no NaN in output, no file left behind. Odd-but-valid input simulates in bounded time."""
import json
import math
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from cli import app
from simulator.errors import MoesimError
from simulator.graph.memory import inference_memory
from simulator.graph.ops import Shape
from simulator.graph.params import ffn_params

ROOT = Path(__file__).resolve().parent.parent
DECODE = ROOT / "workloads" / "longcat-flash-decode-h800.yaml"
SERVE = ROOT / "workloads" / "serving" / "longcat-flash-h800.yaml"
TRAIN = ROOT / "workloads" / "training" / "longcat-flash-pretrain-h800.yaml"
TINY = ROOT / "workloads" / "tiny-scmoe.yaml"
runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def refused(result, *words):
    """Exit 2, one paragraph (no traceback), naming every word given."""
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output and result.exception is None or \
        isinstance(result.exception, SystemExit), result.output
    text = " ".join(result.output.split())
    assert text.startswith("error:") or "error:" in text, text
    for w in words:
        assert w in text, (w, text)
    return text


def strict_json(text: str):
    """Parse JSON as RFC 8259 does: NaN and Infinity are not JSON."""
    def bad(token):
        raise AssertionError(f"{token} in JSON output")
    return json.loads(text, parse_constant=bad)


def yaml_variant(tmp_path, src: Path, name="w.yaml", **update) -> Path:
    data = yaml.safe_load(src.read_text())
    for dotted, value in update.items():
        d = data
        keys = dotted.split("__")
        for k in keys[:-1]:
            d = d.setdefault(k, {})
        d[keys[-1]] = value
    p = tmp_path / name
    p.write_text(yaml.safe_dump(data))
    return p


def profile_variant(tmp_path, **update) -> Path:
    return yaml_variant(tmp_path, ROOT / "hardware_profiles" / "h800.yaml", "prof.yaml", **update)


# -- 2. files that are not what they should be --------------------------------------------------
def test_absolute_path_to_a_missing_workload(tmp_path):
    refused(invoke("simulate", tmp_path / "nope.yaml"), "WORKLOAD", "nope.yaml")


@pytest.mark.parametrize("cmd", ["simulate", "serve", "train"])
def test_a_directory_given_as_workload(tmp_path, cmd):
    refused(invoke(cmd, tmp_path), "directory")


def test_non_utf8_workload_config_and_trace(tmp_path):
    bad = tmp_path / "bin.yaml"
    bad.write_bytes(b"\xff\xfe\x00name: x\n")
    refused(invoke("simulate", bad), "UTF-8")
    cfg = tmp_path / "config.json"
    cfg.write_bytes(b"\xff{}")
    refused(invoke("model", "import", cfg), "UTF-8")
    trace = tmp_path / "t.csv"
    trace.write_bytes(b"arrival_s,input_tokens,output_tokens\n\xff\xfe\n")
    w = yaml_variant(tmp_path, SERVE, serving__arrivals={"process": "trace", "trace": str(trace)})
    refused(invoke("serve", w), "UTF-8")


def test_directory_as_hf_config(tmp_path):
    refused(invoke("model", "import", tmp_path), "directory")


@pytest.mark.parametrize("edit,word", [
    ({"model_type": ["deepseek_v3"]}, "model_type"),
    ({"num_attention_heads": 0}, "num_attention_heads"),
    ({"hidden_size": "4096"}, "hidden_size"),
    ({"hidden_size": None}, "hidden_size"),
    ({"num_key_value_heads": "eight"}, "num_key_value_heads"),
])
def test_hf_config_with_wrong_types(tmp_path, edit, word):
    cfg = {"model_type": "mixtral", "num_hidden_layers": 32, "hidden_size": 4096,
           "vocab_size": 32000, "num_attention_heads": 32, "num_key_value_heads": 8,
           "num_local_experts": 8, "num_experts_per_tok": 2, "intermediate_size": 14336}
    cfg.update(edit)
    p = tmp_path / "config.json"
    p.write_text(json.dumps(cfg))
    refused(invoke("model", "import", p), word)


def test_hf_config_with_nan(tmp_path):
    p = tmp_path / "config.json"
    p.write_text('{"model_type": "mixtral", "hidden_size": NaN}')
    refused(invoke("model", "import", p), "NaN")


@pytest.mark.parametrize("opt", ["--report", "--trace"])
def test_outputs_into_a_directory_under_a_file_or_unwritable(tmp_path, opt):
    a_file = tmp_path / "f.txt"
    a_file.write_text("x")
    refused(invoke("simulate", DECODE, opt, tmp_path), opt, "directory")
    refused(invoke("simulate", DECODE, opt, a_file / "x.html"), opt, "is a file")
    refused(invoke("simulate", DECODE, opt, "/proc/moesim-nope/x.html"), opt)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.txt"]      # nothing left behind


def test_model_import_out_and_router_bias_plot_into_a_directory(tmp_path):
    cfg = tmp_path / "c.json"
    cfg.write_text("{}")
    refused(invoke("model", "import", cfg, "--out", tmp_path), "--out", "directory")
    refused(invoke("router-bias", "--steps", 3, "--plot", tmp_path), "--plot", "directory")


def test_profile_with_nan_or_inf_numbers(tmp_path):
    for field, value in (("peak_bf16_flops", float("nan")), ("peak_bf16_flops", float("inf")),
                         ("hbm_bandwidth_Bps", float("inf"))):
        prof = profile_variant(tmp_path, **{field: {"value": value, "source": "test"}})
        w = yaml_variant(tmp_path, DECODE, hardware=str(prof))
        refused(invoke("simulate", w), field, "finite")


@pytest.mark.parametrize("link,field", [("nic", "bandwidth_Bps"), ("nvlink", "bandwidth_Bps"),
                                        ("nic", "latency_s")])
def test_nan_link_numbers_are_refused_not_dropped(tmp_path, link, field):
    prof = profile_variant(tmp_path, **{f"{link}__{field}": {"value": float("nan"),
                                                               "source": "test"}})
    refused(invoke("simulate", yaml_variant(tmp_path, DECODE, hardware=str(prof))),
            f"{link}.{field}", "finite")


@pytest.mark.parametrize("price", [float("nan"), float("inf")])
def test_non_finite_prices(tmp_path, price):
    prof = profile_variant(tmp_path, price_per_gpu_hour={"value": price, "source": "test"})
    refused(invoke("simulate", yaml_variant(tmp_path, DECODE, hardware=str(prof))),
            "price_per_gpu_hour")


def test_fractional_gpus_per_node(tmp_path):
    prof = profile_variant(tmp_path, gpus_per_node={"value": 0.5, "source": "test"})
    refused(invoke("simulate", yaml_variant(tmp_path, DECODE, hardware=str(prof))),
            "gpus_per_node", "whole number")


def test_inf_weight_bytes_and_boolean_batch(tmp_path):
    refused(invoke("simulate", yaml_variant(tmp_path, DECODE,
                                            precision__weight_bytes=float("inf"))),
            "precision.weight_bytes", "finite")
    refused(invoke("simulate", yaml_variant(tmp_path, DECODE, batch_per_device=True)),
            "batch_per_device", "boolean")


# -- serving and CLI numbers -------------------------------------------------------------------
@pytest.mark.parametrize("opt,value", [("--rate", -1), ("--rate", "nan"), ("--rate", "inf"),
                                       ("--rate", 0), ("--duration", 0), ("--duration", -5),
                                       ("--duration", "nan")])
def test_serve_options_out_of_range(opt, value):
    refused(invoke("serve", SERVE, opt, value), opt)


def test_serve_huge_duration_is_refused_not_a_memory_error():
    refused(invoke("serve", SERVE, "--duration", "1e12"), "duration_s")


@pytest.mark.parametrize("field,value", [("rate_per_s", -1.0), ("rate_per_s", float("nan")),
                                         ("duration_s", float("inf"))])
def test_serving_yaml_numbers(tmp_path, field, value):
    w = yaml_variant(tmp_path, SERVE, **{f"serving__arrivals__{field}": value})
    refused(invoke("serve", w), field)


def test_serving_input_mean_of_a_billion_is_refused_quickly(tmp_path):
    w = yaml_variant(tmp_path, SERVE, serving__input_tokens={"mean": 1e9})
    refused(invoke("serve", w), "serving")


@pytest.mark.parametrize("lengths,words", [
    ({"dist": "uniform", "min": 800}, ["serving.input_tokens", "min and max"]),
    ({"dist": "uniform", "min": 900, "max": 800}, ["serving.input_tokens", "swap them"]),
    ({"dist": "uniform", "min": 800, "max": 1000, "mean": 950}, ["serving.input_tokens",
                                                                 "(min + max) / 2 = 900"]),
    ({"mean": 1000, "min": 800}, ["serving.input_tokens", "dist: uniform only"]),
    ({"dist": "lognormal"}, ["serving.input_tokens", "needs mean"])])
def test_a_length_distribution_missing_or_contradicting_its_numbers_is_refused(tmp_path, lengths,
                                                                                words):
    w = yaml_variant(tmp_path, SERVE, serving__input_tokens=lengths)
    refused(invoke("serve", w), *words)


@pytest.mark.parametrize("wait,word", [({"steps": 0, "tokens_ratio": 0.9}, "steps"),
                                       ({"steps": 20, "tokens_ratio": 1.5}, "tokens_ratio"),
                                       ({"steps": 20}, "tokens_ratio"),
                                       ({"steps": 20, "tokens_ratio": 0.9, "ms": 3}, "ms")])
def test_delayed_batching_out_of_range_or_half_set_is_refused(tmp_path, wait, word):
    w = yaml_variant(tmp_path, SERVE, serving__batch_wait=wait)
    refused(invoke("serve", w), "serving.batch_wait", word)


@pytest.mark.parametrize("value", [0, -3, 1.5, "often"])
def test_a_receive_interval_that_is_not_a_whole_number_of_steps_is_refused(tmp_path, value):
    w = yaml_variant(tmp_path, SERVE, serving__recv_interval=value)
    refused(invoke("serve", w), "serving.recv_interval")


def test_train_tokens_out_of_range():
    for value in ("1e400", "0", "-3T", "nan"):
        refused(invoke("train", TRAIN, "--tokens", value), "--tokens")


@pytest.mark.parametrize("args,word", [(("--zero-experts", -5), "--zero-experts"),
                                       (("--target", "nan"), "--target"),
                                       (("--skew", "nan"), "--skew"),
                                       (("--mu", "nan"), "--mu")])
def test_router_bias_bad_numbers(args, word):
    refused(invoke("router-bias", *args), word)


def test_validate_ranks_and_repeats_zero():
    refused(invoke("validate", TINY, "--ranks", 0), "--ranks")
    refused(invoke("validate", TINY, "--repeats", 0), "--repeats")


def test_redundant_experts_beyond_what_ep_can_hold(tmp_path):
    # 512 experts on EP 128: each rank can hold at most one copy of each other expert
    refused(invoke("simulate", yaml_variant(tmp_path, DECODE,
                                            routing__redundant_experts=10 ** 9)),
            "routing.redundant_experts", str(512 * 127))


def test_redundant_experts_cost_their_weights_in_hbm():
    from simulator.loading import load_model
    from simulator.schema import ParallelPlan, Precision
    m = load_model("deepseek-v3")
    plan = ParallelPlan(gpus=144, gpus_per_node=8, ep=16)
    prec = Precision(weight_bytes=1)
    shape = Shape("decode", 8, 1, 4096)
    base = inference_memory(m, plan, prec, shape, False)
    more = inference_memory(m, plan, prec, shape, False, redundant_experts=32)
    # 32 copies over 16 ranks: 2 more experts per rank in each of the 58 MoE layers,
    # 3 * 7168 * 2048 weights each at 1 byte
    per_expert = 3 * 7168 * 2048
    assert ffn_params(7168, 2048) == per_expert
    assert more.weights - base.weights == pytest.approx(2 * 58 * per_expert * 1.0)


# -- misleading errors -------------------------------------------------------------------------
def test_plan_as_a_number_says_it_is_a_block(tmp_path):
    text = refused(invoke("simulate", yaml_variant(tmp_path, DECODE, plan=5)), "plan")
    assert "has no source" not in text and "mapping" in text


def test_python_tag_says_tags_are_not_allowed(tmp_path):
    p = tmp_path / "w.yaml"
    p.write_text("name: !!python/object/apply:os.system ['true']\n")
    text = refused(invoke("simulate", p), "tags are not allowed")
    assert "syntax" not in text


# -- JSON is JSON ------------------------------------------------------------------------------
def test_json_outputs_are_strict_rfc8259():
    for args in (("simulate", DECODE, "--json"), ("train", TRAIN, "--json"),
                 ("compare", DECODE, "--schedules", "sequential,sbo", "--json")):
        r = invoke(*args)
        assert r.exit_code == 0, r.output
        strict_json(r.output)


def test_json_safe_turns_non_finite_into_null():
    from simulator.jsonout import dumps
    assert json.loads(dumps({"a": float("nan"), "b": [float("inf"), 1.5]})) == \
        {"a": None, "b": [None, 1.5]}


# -- colocated prefill chunk priced on the tokens that exist -----------------------------------
def test_colocated_chunk_is_priced_on_its_tokens():
    from simulator.serving.pools import chunk_shape
    # one 1024-token prompt over 8 DP ranks: 128 tokens a rank, not a whole prompt on each
    seqs, ctx = chunk_shape(1024, 8, 1024)
    assert seqs * ctx == pytest.approx(128) and ctx == 128
    # a chunk of 16 whole prompts on 8 ranks: 2 prompts a rank at their length
    seqs, ctx = chunk_shape(16 * 1024, 8, 1024)
    assert (seqs, ctx) == (2.0, 1024)


# -- variants are validated however they are built ---------------------------------------------
def test_variant_refuses_what_yaml_refuses():
    from simulator.loading import load_workload
    w = load_workload(str(DECODE))
    for bad in ({"batch_per_device": -5}, {"batch_per_device": True},
                {"context_length": float("nan")}):
        with pytest.raises(MoesimError, match=next(iter(bad))):
            w.variant(**bad)
    assert w.variant(batch_per_device=3).batch_per_device == 3


def test_no_nan_in_any_metric():
    r = invoke("simulate", DECODE, "--json")
    data = strict_json(r.output)

    def walk(x):
        if isinstance(x, float):
            assert math.isfinite(x)
        elif isinstance(x, dict):
            for v in x.values():
                walk(v)
        elif isinstance(x, list):
            for v in x:
                walk(v)
    walk(data)


def test_serving_4096_token_prompts_on_the_cpu_profile_finish(tmp_path):
    # hung forever on the absolute-epsilon engine: seconds-long prefill steps
    import subprocess
    import sys
    w = yaml_variant(tmp_path, TINY, serving__input_tokens={"mean": 4096},
                     serving__arrivals={"process": "poisson", "rate_per_s": 0.02,
                                        "duration_s": 120})
    out = subprocess.run([sys.executable, str(ROOT / "cli.py"), "serve", str(w), "--json"],
                         capture_output=True, text=True, timeout=180, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    m = strict_json(out.stdout)
    assert m["requests"]["finished"] == m["requests"]["arrived"] >= 1
    assert m["ttft_ms"]["p50"] > 1000        # a 4096-token prefill on 2 cores takes seconds


def test_redundant_copies_that_do_not_divide_ep_charge_the_fullest_rank():
    # 33 copies over 16 ranks: placed evenly, one rank holds ceil(33 / 16) = 3 extra experts,
    # and the HBM charge is that rank's (the placement and the memory agree)
    import numpy as np
    from simulator.schema import ParallelPlan, Precision
    from simulator.loading import load_model
    from simulator.pricing.routing import place_experts
    m = load_model("deepseek-v3")
    plan = ParallelPlan(gpus=16, gpus_per_node=8, ep=16)
    shape = Shape("decode", 8, 1, 4096)
    base = inference_memory(m, plan, Precision(weight_bytes=1), shape, False)
    more = inference_memory(m, plan, Precision(weight_bytes=1), shape, False,
                            redundant_experts=33)
    assert more.weights - base.weights == pytest.approx(3 * 58 * 3 * 7168 * 2048)
    p = np.random.default_rng(0).dirichlet(np.ones(256))
    placement = place_experts(256, 16, 33, p)
    assert int(placement.slots_per_rank.max()) == 256 // 16 + 3
    assert int(placement.slots_per_rank.min()) == 256 // 16 + 2


def test_pipeline_parallel_serving_is_refused_not_priced_as_one_stage():
    """A decode or prefill step with pp > 1 would price every layer on every GPU; it is
    refused by name, while a training step with the same plan runs."""
    from simulator.step.whatif import simulate
    from simulator.training.run import train
    from tests.conftest import workload
    w = workload("workloads/serving/deepseek-v3-h200-kv-pressure.yaml")
    for phase in ("decode", "prefill"):
        with pytest.raises(MoesimError, match="plan.pp: pipeline parallelism .* training"):
            simulate(w.variant(phase=phase, plan=w.plan.variant(gpus=16, pp=2)))
    t = workload("workloads/validation/training/qwen3-235b-h100-tp2-ep32-pp8.yaml")
    assert t.plan.pp == 8 and train(t).step_time_s > 0
