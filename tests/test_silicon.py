"""The silicon benchmark (benchmarks/silicon.py): rows -> workloads, reasons for what it cannot
express, summaries by arithmetic, bad CSVs, and a slice of the real corpus when installed."""
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks import silicon, silicon_publisher, silicon_report
from simulator.errors import MoesimError

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "tests" / "data" / "silicon"


@pytest.fixture(scope="module")
def small():
    return silicon.run(DATA / "corpus.csv", DATA / "model_configs", workers=1)


def test_every_allowed_row_is_predicted_or_listed_with_its_reason(small):
    predicted = {r["id"] for r in small["rows"]}
    reasons = {u["id"]: u["reason"] for u in small["unexpressed"]}
    assert predicted == {"moe-dp-ep", "moe-tp", "dense-tp", "moe-disagg", "on-blackwell"}
    assert "no moesim profile for gb300" in reasons["on-gb300"]
    assert "fp6" in reasons["odd-precision"] and "precision" in reasons["odd-precision"]
    assert "sparse attention" in reasons["sparse-attention"]
    # held apart: neither predicted nor listed, only counted
    assert "held-apart" not in predicted | set(reasons)
    assert small["held_apart"]["rows"] == 1
    # a second record of moe-disagg's run (a later export): counted once, named
    assert "moe-disagg-export" not in predicted | set(reasons)
    assert small["repeats"] == [{"id": "moe-disagg", "same_as": ["moe-disagg-export"],
                                 "differs": []}]
    row = next(r for r in small["rows"] if r["id"] == "moe-disagg")
    assert row["same_as"] == ["moe-disagg-export"]
    assert any("same measurement as moe-disagg-export" in a for a in row["assumed"])


def test_inferencex_records_draw_their_lengths_as_its_client_did_and_others_fixed(tmp_path):
    # InferenceX's bench_serving: --random-range-ratio 0.8, each length uniform from
    # int(L x 0.8) to L (1,024 -> 819..1,024; 8,192 -> 6,553..8,192); the CSV exports
    # (source_file=YYYY-MM-DD.csv) and the database dump (db-dump/...) are its records; any
    # other source (AIConfigurator's own harness) keeps fixed lengths
    a = silicon.read_yaml_mapping(silicon.ASSUMPTIONS)
    row = {r["id"]: r for r in silicon.read_rows(DATA / "corpus.csv")}["moe-dp-ep"]
    models = silicon.Models(DATA / "model_configs", tmp_path)
    sources = {"source_file=2026-04-06.csv; model=DeepSeek-R1; silicon_concurrency=16": True,
               "db-dump/2026-04-27; config_id=7; silicon_concurrency=16": True,
               "source_file=/x/aic-auto-gap-analysis/qwen3_32b.csv; silicon_concurrency=16":
               False, "source_file=kimi-k2.5-gap-analysis.csv; silicon_concurrency=16": False}
    for source, drawn in sources.items():
        for isl, osl, lo_in, lo_out in ((1024, 1024, 819, 819), (8192, 1024, 6553, 819)):
            case = silicon.to_case({**row, "silicon_data_source": source, "isl": str(isl),
                                    "osl": str(osl)}, models, a)
            serving = case.workload["serving"]
            if drawn:
                assert serving["input_tokens"] == {"dist": "uniform", "min": lo_in, "max": isl}
                assert serving["output_tokens"] == {"dist": "uniform", "min": lo_out,
                                                    "max": osl}
                assert any("--random-range-ratio 0.8" in x for x in case.assumed)
            else:
                assert serving["input_tokens"] == {"mean": isl}
                assert serving["output_tokens"] == {"mean": osl}
                assert any("fixed-length client" in x for x in case.assumed)


def test_inferencex_runs_take_their_launch_scripts_settings(tmp_path):
    # InferenceX's 70b_*_trt_slurm.sh (2025-09-18 .. 2025-10-31): --max_num_tokens 16384 for
    # every run, and delayed batching (20 steps, 0.9) for 1k/1k below TP 8; not for TP 8, not
    # for other lengths, other engines, other models, or records measured outside those dates
    a = silicon.read_yaml_mapping(silicon.ASSUMPTIONS)
    row = {r["id"]: r for r in silicon.read_rows(DATA / "corpus.csv")}["moe-dp-ep"]
    src = "source_file=2026-04-06.csv; model=Llama-3.1-70B; silicon_concurrency=4; " \
          "measured=2025-10-29T04:10:00Z"
    base = {**row, "silicon_data_source": src, "backend": "trtllm", "isl": "1024",
            "osl": "1024", "tp_size": "4", "attention_dp_size": "1"}
    wait = {"steps": 20, "tokens_ratio": 0.9}
    cases = [({}, {"chunk_tokens_per_device": 16384, "batch_wait": wait}),
             ({"tp_size": "8"}, {"chunk_tokens_per_device": 16384}),
             ({"osl": "8192"}, {"chunk_tokens_per_device": 16384}),
             ({"backend": "vllm"}, {}),
             ({"silicon_data_source": src.replace("Llama-3.1-70B", "DeepSeek-R1")}, {}),
             ({"silicon_data_source": src.replace("2025-10-29", "2025-09-01")}, {}),
             ({"silicon_data_source": src.replace("2025-10-29", "2025-11-02")}, {})]
    for change, want in cases:
        got, notes = silicon_publisher.launch_settings({**base, **change}, a, 4, False)
        assert got == want, change
        assert len(notes) == len(want)
    # InferenceX's DeepSeek-R1 SGLang scripts on B200: the scheduler takes in requests every 30
    # decode steps from 16 clients, every 10 below; FP8 at TP 8 with a 32,768-token chunk and
    # 128 running requests; not their MTP twins, not disaggregated runs, not H200
    dsr1 = {**base, "backend": "sglang", "model_path": "deepseek-ai/DeepSeek-R1",
            "system": "b200_sxm", "precision": "fp8", "tp_size": "8", "mode": "agg",
            "silicon_data_source": "db-dump/2026-04-27; config_id=87; silicon_concurrency=16; "
                                   "measured=2025-11-18T00:00:00.000Z"}
    big = {"recv_interval": 30, "chunk_tokens_per_device": 32768,
           "decode": {"max_batch_per_device": 128}}
    for change, clients, spec, want in (({}, 16, False, big), ({}, 4, False,
                                        {**big, "recv_interval": 10}),
                                       ({}, 16, True, {}), ({"mode": "disagg"}, 16, False, {}),
                                       ({"system": "h200_sxm"}, 16, False, {})):
        got, _ = silicon_publisher.launch_settings({**dsr1, **change}, a, clients, spec)
        assert got == want, (change, clients, spec)
    row = {**row, **{k: base[k] for k in ("silicon_data_source", "backend", "isl", "osl")}}
    case = silicon.to_case(row, silicon.Models(DATA / "model_configs", tmp_path), a)
    assert case.workload["serving"]["batch_wait"] == wait
    assert any("batch_wait_timeout_iters 20" in x for x in case.assumed)


def test_uncalibrated_presets_zero_the_fit_but_the_values_a_run_moves(tmp_path):
    # the calibration's runs: every preset's three calibrated costs at zero, except the request
    # overhead and KV transfer time a run is asked for; the rest of each preset as shipped
    import yaml
    from simulator.loading import SERVING_RUNTIMES_DIR, known_names
    silicon.uncalibrated_presets(tmp_path, 0.03, 0.1)
    for name in known_names(SERVING_RUNTIMES_DIR):
        got = yaml.safe_load((tmp_path / f"{name}.yaml").read_text())
        shipped = yaml.safe_load((SERVING_RUNTIMES_DIR / f"{name}.yaml").read_text())
        assert got["extra_kernels_per_layer"]["value"] == 0.0
        assert got["request_overhead_s"]["value"] == 0.03
        assert got["kv_transfer_s"]["value"] == 0.1
        assert got["chunked_prefill_tokens"] == shipped["chunked_prefill_tokens"]


def _record(rid, ttft="200", tpot="6", clients="32", **fields):
    base = {"id": rid, "silicon_data_source": f"silicon_concurrency={clients}",
            "system": "h200_sxm", "backend": "trtllm", "precision": "fp8",
            "gemm_quant_mode": "fp8", "moe_quant_mode": "fp8", "isl": "1024", "osl": "1024",
            "silicon_ttft_ms": ttft, "silicon_tpot_ms": tpot, "prefill_tp_size": "8",
            "decode_tp_size": "8"}
    return {**base, **fields}


def test_a_run_listed_three_times_is_counted_once_from_its_fullest_record():
    from benchmarks.silicon_twins import one_per_measurement
    rows = [_record("export-a", ttft="1807.868141", tpot="30.901037"),
            # the database record states the workers and the pools' batch sizes, and its
            # prefill runs DP attention where the exports say TP 8
            _record("db", ttft="1807.86814100", tpot="30.9010370", prefill_tp_size="1",
                    prefill_attention_dp_size="8", prefill_num_workers="1",
                    decode_num_workers="9", decode_batch_size="64", prefill_batch_size="1"),
            _record("export-b", ttft="1807.868141", tpot="30.901037"),
            # other runs: 0.01% apart, or the same figures at other clients / lengths
            _record("other-run", ttft="1808.05", tpot="30.901037"),
            _record("other-clients", ttft="1807.868141", tpot="30.901037", clients="64"),
            _record("other-lengths", ttft="1807.868141", tpot="30.901037", isl="8192")]
    kept, repeats = one_per_measurement(rows)
    assert [r["id"] for r in kept] == ["db", "other-run", "other-clients", "other-lengths"]
    # the exports state prefill_tp_size 8 against the kept record's 1 (their empty
    # attention DP size says nothing)
    assert repeats == [{"id": "db", "same_as": ["export-a", "export-b"],
                        "differs": ["prefill_tp_size"]}]
    assert kept[0]["decode_num_workers"] == "9"
    # of records stating as much, the first in the file is kept
    tie, _ = one_per_measurement([_record("first"), _record("second")])
    assert [r["id"] for r in tie] == ["first"]


def test_rows_carry_the_measured_figures_errors_and_assumptions(small):
    rows = {r["id"]: r for r in small["rows"]}
    r = rows["moe-dp-ep"]
    assert r["concurrency"] == 16 and r["ttft_ms"]["measured"] == 100
    for key in ("ttft_ms", "tpot_ms"):
        m, p = r[key]["measured"], r[key]["predicted"]
        assert p > 0 and r[key]["error"] == pytest.approx(p / m - 1)
    assert any("requests per client" in a for a in r["assumed"])
    # the config was found under another checkpoint's name: said so
    assert any("acme--TinyMoE_config.json" in a for a in rows["moe-tp"]["assumed"])
    # concurrency from batch_size when the source string has none
    assert rows["moe-tp"]["concurrency"] == 4


def test_blackwell_rows_compute_nvfp4_on_fp4_tensor_cores_under_their_engine(tmp_path):
    a = silicon.read_yaml_mapping(silicon.ASSUMPTIONS)
    rows = {r["id"]: r for r in silicon.read_rows(DATA / "corpus.csv")}
    case = silicon.to_case(rows["on-blackwell"], silicon.Models(DATA / "model_configs",
                                                                 tmp_path), a)
    w = case.workload
    assert w["hardware"] == "b200-sxm"
    assert w["precision"]["compute"]["expert_gemm"] == "fp4"
    # the row ran SGLang 0.5.9; the profile's SGLang tables are 0.5.14: priced there, said so
    assert w["runtime"] == {"framework": "sglang", "version": "0.5.14"}
    assert any("0.5.14" in x and "0.5.9" in x for x in case.assumed)


def test_tensorrt_llm_keeps_a_quantised_checkpoints_fp8_kv_and_the_others_bf16(tmp_path):
    # TensorRT-LLM's "auto" KV dtype follows the ModelOpt checkpoint's kv_cache_quant_algo
    # (FP8 by default); SGLang's and vLLM's "auto" is the model's BF16
    a = silicon.read_yaml_mapping(silicon.ASSUMPTIONS)
    rows = {r["id"]: r for r in silicon.read_rows(DATA / "corpus.csv")}
    models = silicon.Models(DATA / "model_configs", tmp_path)
    kv = {rid: silicon.to_case(rows[rid], models, a) for rid in ("moe-tp", "moe-dp-ep",
                                                                  "dense-tp")}
    assert kv["moe-tp"].workload["precision"]["kv_bytes"] == 1.0          # trtllm, fp8
    assert any("1-byte" in x and "trtllm" in x for x in kv["moe-tp"].assumed)
    assert kv["moe-dp-ep"].workload["precision"]["kv_bytes"] == 2.0       # sglang, fp8
    assert kv["dense-tp"].workload["precision"]["kv_bytes"] == 2.0        # vllm, fp8
    assert any("2-byte" in x for x in kv["dense-tp"].assumed)


def _single(spec="mtp", key="dsr1-fp8-b200-trt-mtp", gpus=8, adp=False, clients=8,
            in_effect=(("2026-01-30", None, "c1"),)):
    return {"mode": "agg", "key": key, "image": "nvcr.io/nvidia/tensorrt-llm/release:1.2.0",
            "gpu": "b200", "framework": "trt", "precision": "fp8", "isl": 512, "osl": 64,
            "clients": clients, "spec": spec, "gpus": gpus, "ep": 8, "attention_dp": adp,
            "in_effect": [list(x) for x in in_effect]}


def test_a_single_node_run_its_publisher_ran_with_mtp_is_written_with_it(tmp_path, monkeypatch):
    # InferenceX's dsr1-fp8-b200-trt-mtp ran MTP; its script sets num_nextn_predict_layers 3,
    # and 1 under attention DP (silicon.yaml single_node_mtp); the acceptance is the DeepSeek-V3
    # report's lower end (85%)
    a = silicon.read_yaml_mapping(silicon.ASSUMPTIONS)
    models = silicon.Models(DATA / "model_configs", tmp_path)
    base = {r["id"]: r for r in silicon.read_rows(DATA / "corpus.csv")}["on-blackwell"]

    def case(adp=1, model="acme/TinyMLA", system="b200_sxm", clients=8):
        row = dict(base, backend="trtllm", model_path=model, backend_version="1.2.0rc6",
                   silicon_data_source=f"silicon_concurrency={clients}; measured=2026-02-14"
                   "T00:00:00Z; image=nvcr.io#nvidia/tensorrt-llm/release:1.2.0",
                   system=system, attention_dp_size=str(adp), tp_size=str(8 // adp),
                   moe_tp_size="1", moe_ep_size="8", gemm_quant_mode="fp8",
                   moe_quant_mode="fp8", precision="fp8")
        return silicon.to_case(row, models, a)

    monkeypatch.setattr(silicon, "load_runs", lambda: (_single(), _single(adp=True)))
    spec = case()
    assert spec.workload["mtp"] == {"enabled": True, "draft_tokens": 3, "acceptance": 0.85}
    assert any("MTP with 3 draft" in x for x in spec.assumed)
    assert case(adp=8).workload["mtp"]["draft_tokens"] == 1        # attention DP: MTP 1
    for other in (case(clients=16), case(system="h200_sxm")):      # not that configuration
        assert "mtp" not in other.workload
        assert "no MTP / speculative decoding" in other.assumed
    with pytest.raises(silicon.Unexpressed, match="no published draft acceptance"):
        case(model="acme/TinyMoE")                                 # Qwen3: none published
    # the same clients configured with MTP and without: read without, and said so
    monkeypatch.setattr(silicon, "load_runs", lambda: (_single(), _single(
        spec="none", key="dsr1-fp8-b200-trt")))
    both = case()
    assert "mtp" not in both.workload and any("both with MTP and without" in x
                                              for x in both.assumed)
    # ... but attention DP tells runs apart: DEP 8 without MTP, TEP 8 with it
    monkeypatch.setattr(silicon, "load_runs", lambda: (_single(), _single(
        spec="none", key="dsr1-fp8-b200-trt", adp=True)))
    dep = case(adp=8)
    assert "mtp" not in dep.workload and not any("both" in x for x in dep.assumed)
    assert case().workload["mtp"]["draft_tokens"] == 3
    # ... unless one was no longer in effect when the run was measured
    monkeypatch.setattr(silicon, "load_runs", lambda: (_single(), _single(
        spec="none", key="dsr1-fp8-b200-trt", in_effect=(("2025-12-01", "2026-01-15", "c0"),))))
    assert case().workload["mtp"]["draft_tokens"] == 3
    # an MTP key whose script's depth silicon.yaml does not record: not written down
    monkeypatch.setattr(silicon, "load_runs", lambda: (_single(key="acme-mtp"),))
    with pytest.raises(silicon.Unexpressed, match="single_node_mtp"):
        case()


def _disagg_row(clients=44, image="nvcr.io#acme/engine:1", measured="2026-02-14"):
    return {"id": "d", "silicon_data_source": f"silicon_concurrency={clients}; "
                                              f"measured={measured}T06:57:35Z; image={image}",
            "backend": "trtllm", "backend_version": "1.0", "model_path": "acme/TinyMLA",
            "system": "h200_sxm", "precision": "fp8", "mode": "disagg", "isl": "1024",
            "osl": "1024", "gemm_quant_mode": "fp8", "moe_quant_mode": "fp8",
            **{f"{p}_{k}": v for p in ("prefill", "decode") for k, v in
               (("tp_size", "8"), ("pp_size", "1"), ("attention_dp_size", "1"),
                ("moe_tp_size", "1"), ("moe_ep_size", "8"), ("num_workers", ""),
                ("batch_size", ""))},
            "silicon_ttft_ms": "100", "silicon_tpot_ms": "10"}


def _published(decode_workers=11, adp=False, spec="mtp", draft=3, clients=44,
               in_effect=(("2026-01-30", None, "c1"),), decode_ep=8):
    # (a disaggregated configuration as benchmarks/inferencex_runs.json holds one)
    pool = lambda w, dp, ep=8: {"workers": w, "attention_tp": 1 if dp else 8,  # noqa: E731
                                "attention_dp": 8 if dp else 1, "moe_tp": 8 // ep, "moe_ep": ep}
    return {"mode": "disagg", "key": "k", "image": "nvcr.io/acme/engine:1", "gpu": "h200",
            "framework": "dynamo-trt", "precision": "fp8", "isl": 1024, "osl": 1024,
            "clients": clients, "spec": spec, "draft_tokens": draft, "recipe": "r.yaml",
            "prefill": pool(1, True), "decode": pool(decode_workers, adp, decode_ep),
            "in_effect": [list(x) for x in in_effect]}


def test_a_disaggregated_run_takes_its_publishers_pools_and_mtp(tmp_path, monkeypatch):
    # the corpus leaves the workers out and writes the decode pool as TP 8; InferenceX's
    # config of the same image, lengths and clients says 11 decode workers, prefill with
    # attention DP, MTP with 3 drafts
    a = silicon.read_yaml_mapping(silicon.ASSUMPTIONS)
    models = silicon.Models(DATA / "model_configs", tmp_path)
    monkeypatch.setattr(silicon, "load_runs", lambda: (_published(),))
    case = silicon.to_case(_disagg_row(), models, a)
    serving = case.workload["serving"]
    dec, pre = serving["decode"]["plan"], serving["prefill"]["plan"]
    assert dec["gpus"] == 8 * 11 and dec["attention_tp"] == 8
    assert pre["gpus"] == 8 and pre["tp"] == 1 and pre["ep"] == 8       # attention DP 8
    assert case.workload["mtp"] == {"enabled": True, "draft_tokens": 3, "acceptance": 0.85}
    assert any("decode_num_workers empty -> 11" in x for x in case.assumed)
    # another client count, another image: no match, the corpus's fields (one worker)
    for row in (_disagg_row(clients=45), _disagg_row(image="nvcr.io#acme/engine:2")):
        other = silicon.to_case(row, models, a)
        assert other.workload["serving"]["decode"]["plan"]["gpus"] == 8
        assert "mtp" not in other.workload
    # two configurations of the same run, one with MTP and one without: their common pools
    # are taken (11 decode workers), MTP is not, and it says so
    monkeypatch.setattr(silicon, "load_runs",
                        lambda: (_published(), _published(spec="none", draft=0)))
    both = silicon.to_case(_disagg_row(), models, a)
    assert "mtp" not in both.workload
    assert both.workload["serving"]["decode"]["plan"]["gpus"] == 8 * 11
    assert any("differ in MTP" in x for x in both.assumed)
    # ... and where they differ in the decode workers (11 or 7) too, those stay the corpus's
    # (empty: one worker), the prefill's attention DP both share is taken
    monkeypatch.setattr(silicon, "load_runs", lambda: (
        _published(), _published(decode_workers=7, spec="none", draft=0)))
    split = silicon.to_case(_disagg_row(), models, a)
    assert split.workload["serving"]["decode"]["plan"]["gpus"] == 8
    assert split.workload["serving"]["prefill"]["plan"]["tp"] == 1
    assert any("differ in decode workers, MTP" in x for x in split.assumed)
    # a pool's parallelism is taken whole or not at all: DEP 8 in one, TP 8 with MoE TP 8 in
    # the other (each unlike the corpus's TP 8, EP 8) leaves the corpus's, with the 11
    # workers both share
    monkeypatch.setattr(silicon, "load_runs", lambda: (_published(adp=True),
                                                       _published(decode_ep=1)))
    mixed = silicon.to_case(_disagg_row(), models, a).workload["serving"]["decode"]["plan"]
    assert mixed["gpus"] == 8 * 11 and mixed["attention_tp"] == 8 and mixed["ep"] == 8
    # a publisher's worker of another size than the corpus's (a placeholder TP 1): its
    # workers are taken, the corpus's parallelism is kept, and it says so
    monkeypatch.setattr(silicon, "load_runs", lambda: (dict(_published(), decode={
        "workers": 11, "attention_tp": 1, "attention_dp": 1, "moe_tp": 1, "moe_ep": 1}),))
    placeholder = silicon.to_case(_disagg_row(), models, a)
    plan = placeholder.workload["serving"]["decode"]["plan"]
    assert plan["gpus"] == 8 * 11 and plan["attention_tp"] == 8 and plan["ep"] == 8
    assert any("decode worker of 1 GPUs" in x for x in placeholder.assumed)
    # ... unless only one of them was in effect on the measured date (configured 2026-01-30
    # on; the other from 2026-02-20 to 2026-03-01): measured 2026-02-14, the first
    monkeypatch.setattr(silicon, "load_runs", lambda: (
        _published(), _published(spec="none", draft=0,
                                 in_effect=(("2026-02-20", "2026-03-01", "c2"),))))
    assert silicon.to_case(_disagg_row(), models, a).workload["mtp"]["draft_tokens"] == 3
    later = silicon.to_case(_disagg_row(measured="2026-02-25"), models, a)
    assert "mtp" not in later.workload and any("differ in MTP" in x for x in later.assumed)
    monkeypatch.setattr(silicon, "load_runs", lambda: (_published(draft=None),))
    with pytest.raises(silicon.Unexpressed, match="draft depth"):
        silicon.to_case(_disagg_row(), models, a)


def test_inferencex_pools_and_client_counts_by_its_configs():
    from benchmarks import inferencex_runs
    assert inferencex_runs.pool({"num-worker": 7, "tp": 8, "ep": 8, "dp-attn": True}) == {
        "workers": 7, "attention_tp": 1, "attention_dp": 8, "moe_tp": 1, "moe_ep": 8}
    assert inferencex_runs.pool({"tp": 4, "ep": 1}) == {
        "workers": 1, "attention_tp": 4, "attention_dp": 1, "moe_tp": 4, "moe_ep": 1}
    # the shipped table: srt-slurm's recipe c4_ctx1_gen11_tep8_batch128_eplb0_mtp3 benchmarks
    # "concurrencies: 44" (4 a decode worker, 11 workers) with MTP 3 on H200
    runs = [r for r in silicon.load_runs() if r.get("recipe", "").endswith(
        "h200/1k1k/mtp/c4_ctx1_gen11_tep8_batch128_eplb0_mtp3.yaml")]
    assert runs and all(r["clients"] == 44 and r["decode"]["workers"] == 11
                        and r["draft_tokens"] == 3 and r["spec"] == "mtp" for r in runs)
    # a single-node search space { tp: 8, ep: 1, conc-start: 4, conc-end: 128 } is the client
    # counts 4, 8, ..., 128 (dsr1-fp8-b200-trt-mtp's at 1,024 / 1,024 tokens, 2026-03-25)
    assert [r["clients"] for r in inferencex_runs.single_node("k", {
        "image": "i", "seq-len-configs": [{"isl": 1, "osl": 1, "search-space": [
            {"tp": 8, "ep": 1, "conc-start": 4, "conc-end": 128, "spec-decoding": "mtp"}]}]})
    ] == [4, 8, 16, 32, 64, 128]
    shipped = {r["clients"] for r in silicon.load_runs() if r["mode"] == "agg"
               and r["key"] == "dsr1-fp8-b200-trt-mtp" and (r["isl"], r["osl"]) == (1024, 1024)
               and r["gpus"] == 8 and not r["attention_dp"]}
    assert {4, 8, 16, 32, 64, 128} <= shipped


def test_rows_are_written_as_they_ran(tmp_path):
    a = silicon.read_yaml_mapping(silicon.ASSUMPTIONS)
    rows = {r["id"]: r for r in silicon.read_rows(DATA / "corpus.csv")}
    models = silicon.Models(DATA / "model_configs", tmp_path)
    tp = silicon.to_case(rows["moe-tp"], models, a).workload
    assert tp["plan"] == {"gpus": 8, "gpus_per_node": 8, "tp": 8, "attention_tp": 8,
                          "moe_tp": 2, "ep": 4}
    assert tp["serving"]["mode"] == "colocated"
    assert "decode" not in tp["serving"]       # the engine's own caps (its runtime preset)
    assert any("runtime preset trtllm-pytorch" in x for x in silicon.to_case(
        rows["moe-tp"], models, a).assumed)
    dp = silicon.to_case(rows["moe-dp-ep"], models, a).workload
    assert dp["plan"] == {"gpus": 8, "gpus_per_node": 8, "tp": 1, "ep": 8}
    assert dp["precision"]["compute"]["expert_gemm"] == "fp8"
    assert dp["serving"]["arrivals"] == {"process": "closed", "concurrency": 16,
                                         "requests": 16 * a["requests_per_client"]}
    dis = silicon.to_case(rows["moe-disagg"], models, a).workload
    assert dis["serving"]["mode"] == "disaggregated"
    assert dis["serving"]["prefill"]["plan"]["attention_tp"] == 8
    assert dis["serving"]["decode"]["plan"]["ep"] == 8


def _row(err_ttft, err_tpot, **kw):
    base = {"system": "h200_sxm", "backend": "sglang", "model": "m", "mode": "agg",
            "concurrency": 4}
    base.update(kw)
    return {**base, "ttft_ms": {"error": err_ttft}, "tpot_ms": {"error": err_tpot}}


def test_summary_by_arithmetic():
    rows = [_row(-0.10, 0.20), _row(0.30, -0.05), _row(-0.50, -0.40, system="h100_sxm"),
            _row(0.05, 0.10, concurrency=64, backend="vllm")]
    s = silicon_report.summary(rows)
    t = s["overall"]["tpot_ms"]
    # |errors| 0.05, 0.10, 0.20, 0.40: median 0.15, nearest-rank p90 = the 4th, 2 of 4 < 0
    assert t["rows"] == 4
    assert t["median_abs_error"] == pytest.approx(0.15)
    assert t["p90_abs_error"] == pytest.approx(0.40)
    assert t["share_optimistic"] == pytest.approx(0.5)
    f = s["overall"]["ttft_ms"]      # |errors| 0.05, 0.10, 0.30, 0.50
    assert f["median_abs_error"] == pytest.approx(0.20)
    assert f["share_optimistic"] == pytest.approx(0.5)
    h200 = s["by_system"]["h200_sxm"]["tpot_ms"]       # 0.20, -0.05, 0.10
    assert h200["rows"] == 3 and h200["median_abs_error"] == pytest.approx(0.10)
    assert h200["share_optimistic"] == pytest.approx(1 / 3)
    assert s["by_concurrency_band"]["33-128"]["tpot_ms"]["rows"] == 1
    assert s["by_concurrency_band"]["1-8"]["tpot_ms"]["rows"] == 3
    assert set(s["by_backend"]) == {"sglang", "vllm"}


def test_concurrency_bands_cover_every_count():
    assert [silicon_report.band(c) for c in (1, 8, 9, 32, 33, 128, 129, 5000)] == \
        ["1-8", "1-8", "9-32", "9-32", "33-128", "33-128", ">128", ">128"]


def test_a_malformed_csv_is_a_clear_error(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("id,system\nx,h200_sxm\n")
    with pytest.raises(MoesimError, match="missing column"):
        silicon.read_rows(bad)
    good = (DATA / "corpus.csv").read_text().splitlines()
    short = tmp_path / "short.csv"
    short.write_text("\n".join([good[0], good[1].rsplit(",", 3)[0]]) + "\n")
    with pytest.raises(MoesimError, match="number of fields"):
        silicon.read_rows(short)
    nan = tmp_path / "nan.csv"
    nan.write_text("\n".join([good[0], good[1].rsplit(",", 1)[0] + ",nan"]) + "\n")
    with pytest.raises(MoesimError, match="silicon_tpot_ms"):
        silicon.read_rows(nan)
    # from the command line: exit 2, one paragraph, no traceback
    p = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "silicon.py"), "--csv",
                        str(bad)], capture_output=True, text=True, timeout=120)
    assert p.returncode == 2
    assert "missing column" in p.stderr and "Traceback" not in p.stderr


def test_the_json_is_strict_and_complete(small, tmp_path):
    from simulator.jsonout import dumps
    data = json.loads(dumps(small))
    assert set(data) >= {"rows", "unexpressed", "summary"}
    for r in data["rows"]:
        assert set(r) >= {"id", "system", "backend", "model", "mode", "concurrency", "ttft_ms",
                          "tpot_ms", "assumed"}
        for key in ("ttft_ms", "tpot_ms"):
            assert set(r[key]) == {"measured", "predicted", "error"}
            assert math.isfinite(r[key]["predicted"])


def test_a_slice_of_the_real_corpus():
    """The pinned package's own corpus (the `kernels` extra): its first allowed H200 rows run,
    every one predicted or listed with a reason; nothing held apart is touched."""
    try:
        pkg = silicon.package_dir()
    except MoesimError:
        pytest.skip("aiconfigurator-core is not installed (pip install -e '.[kernels]')")
    res = silicon.run(pkg / "systems" / "silicon_sample.csv", pkg / "model_configs",
                      workers=1, limit=12, systems=["h200_sxm"])
    assert len(res["rows"]) + len(res["unexpressed"]) == 12
    assert len(res["rows"]) >= 6
    held = set(silicon.read_yaml_mapping(silicon.ASSUMPTIONS)["held_apart"])
    assert not any(r["model"] in held for r in res["rows"])
    for r in res["rows"]:
        assert r["system"] == "h200_sxm"
        assert 0.1 < r["tpot_ms"]["predicted"] / r["tpot_ms"]["measured"] < 10


def test_a_records_image_is_read_from_either_source_format():
    from benchmarks.silicon_publisher import source_image
    dump = ("db-dump/2026-04-27; config_id=759; silicon_concurrency=4; measured=2026-04-18T00:00"
            ":00.000Z; workflow_run_id=778; nvcr.io/nvidia/ai-dynamo/tensorrtllm-runtime:1.1.0")
    export = ("source_file=2026-03-25.csv; model=DeepSeek-R1; silicon_concurrency=8; wip=False; "
              "image=nvcr.io#nvidia/tensorrt-llm/release:1.2.0rc6.post3")
    assert source_image({"silicon_data_source": dump}) == \
        "nvcr.io/nvidia/ai-dynamo/tensorrtllm-runtime:1.1.0"
    assert source_image({"silicon_data_source": export}) == \
        "nvcr.io/nvidia/tensorrt-llm/release:1.2.0rc6.post3"
    assert source_image({"silicon_data_source": "source_file=x.csv; wip=False"}) == ""
    assert source_image({"silicon_data_source": "run=2; measured=2026-02-13T03:10:06Z"}) == ""


def test_inferencex_worker_counts_agree_with_the_corpus_records_that_state_them():
    """An independent check of the matching: a disaggregated record that takes its worker
    counts from InferenceX's configurations often states them itself (the database dump) or
    has a twin in the corpus (the same measured run, exported again) that does. They must
    agree."""
    try:
        pkg = silicon.package_dir()
    except MoesimError:
        pytest.skip("aiconfigurator-core is not installed (pip install -e '.[kernels]')")
    from benchmarks.silicon_publisher import disaggregated_run
    from benchmarks.silicon_twins import measurement_key
    twins: dict = {}
    for r in silicon.read_rows(pkg / "systems" / "silicon_sample.csv"):
        if r["mode"] == "disagg":
            twins.setdefault(measurement_key(r), []).append(r)
    compared, disagree = 0, []
    for group in twins.values():
        stated = [r for r in group if r["decode_num_workers"]]
        for r in group:                # a record, or its twin, that states the workers
            if not stated:
                continue
            run, _ = disaggregated_run(r, silicon.concurrency(r), silicon.load_runs())
            said = r if r["decode_num_workers"] else stated[0]
            for pool in ("prefill", "decode") if run else ():
                if run[pool]["workers"] is not None:
                    compared += 1
                    if run[pool]["workers"] != int(float(said[f"{pool}_num_workers"])):
                        disagree.append((r["id"], pool))
    assert compared >= 700 and disagree == []


def test_load_growth_compares_each_sweeps_tpot_ratio_by_arithmetic():
    def row(sweep, c, meas, pred):
        return {"sweep": sweep, "concurrency": c,
                "tpot_ms": {"measured": meas, "predicted": pred}}
    rows = [row("a", 1, 10, 10), row("a", 8, 15, 16), row("a", 64, 30, 20),   # 3.0 vs 2.0
            row("b", 4, 20, 10), row("b", 32, 40, 22),                        # 2.0 vs 2.2
            row("c", 16, 50, 50)]                                             # one load: none
    g = silicon_report.load_growth(rows)
    assert g["sweeps"] == 2
    assert g["share_within"] == 0.5                  # b within 25% (+10%), a not (-33%)
    assert g["median_ratio_error"] == pytest.approx(((2 / 3 - 1) + (2.2 / 2 - 1)) / 2)


def test_the_inferencex_table_refuses_a_folder_that_is_not_its_repository(tmp_path, capsys):
    from benchmarks import inferencex_runs
    plain = tmp_path / "plain"
    plain.mkdir()
    assert inferencex_runs.main(["--inferencex", str(plain), "--srt-slurm", str(plain),
                                 "--out", str(tmp_path / "t.json")]) == 2
    err = capsys.readouterr().err
    assert "--inferencex" in err and "not a git repository" in err and "Traceback" not in err
    repo = tmp_path / "other"
    repo.mkdir()
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    (repo / "x").write_text("x")
    subprocess.run(["git", "-C", str(repo), "add", "x"], check=True)
    subprocess.run(["git", "-C", str(repo), "-c", "user.email=a@b", "-c", "user.name=a",
                    "commit", "-qm", "x"], check=True)
    assert inferencex_runs.main(["--inferencex", str(repo), "--srt-slurm", str(repo),
                                 "--out", str(tmp_path / "t.json")]) == 2
    assert "holds .github/configs/nvidia-master.yaml" in capsys.readouterr().err
    assert not (tmp_path / "t.json").exists()
