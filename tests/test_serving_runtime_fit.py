"""The serving-runtime calibration (benchmarks/serving_runtime_fit.py) on synthetic rows whose
answer is known by construction."""
import pytest

from benchmarks import serving_runtime_fit as fit


def _row(model, measured_tpot, predicted_tpot, measured_ttft, predicted_ttft, layers=40,
         backend="vllm"):
    return {"backend": backend, "mode": "agg", "model": model, "layers": layers,
            "kernel_latency_s": 4e-6,
            "tpot_ms": {"measured": measured_tpot, "predicted": predicted_tpot},
            "ttft_ms": {"measured": measured_ttft, "predicted": predicted_ttft}}


def test_a_shared_offset_is_found_and_holds_out():
    # every model misses TPOT by exactly 10 kernels x 40 layers x 4 us = 1.6 ms and TTFT by
    # 30 ms: the fit finds 10 and 30 ms, and each fold (by model) predicts its rows exactly
    rows = [_row(f"m{i}", 10.0 + i + 1.6, 10.0 + i, 100.0 + 7 * i + 30, 100.0 + 7 * i)
            for i in range(6)]
    res = fit.fit(rows)["vllm"]
    assert res["extra_kernels_per_layer"] == 10.0
    assert res["request_overhead_s"] == pytest.approx(0.030)
    assert res["tpot_ms"]["held_out_median"] == pytest.approx(0.0, abs=1e-9)
    assert res["ttft_ms"]["held_out_median"] == pytest.approx(0.0, abs=1e-9)
    assert res["tpot_ms"]["before_median"] > 0.1


def test_held_out_rows_never_train_their_own_fit():
    # one model needs 20 kernels a layer, the four others none: held out, the odd model is
    # predicted with the others' fit (0) and keeps its whole error
    rows = [_row(f"m{i}", 10.0, 10.0, 100.0, 100.0) for i in range(4)]
    odd = _row("odd", 10.0 + 20 * 40 * 4e-3, 10.0, 100.0, 100.0)
    errors = fit.held_out(rows + [odd], "tpot_ms", fit.K_GRID)
    assert max(errors) == pytest.approx(20 * 40 * 4e-3 / (10.0 + 20 * 40 * 4e-3))
    assert fit.best(rows + [odd], "tpot_ms", fit.K_GRID) == 0.0      # the median ignores one


def test_nearest_rank_p90():
    assert fit.p90(list(range(1, 11))) == 9 and fit.p90([5.0]) == 5.0


def test_a_fit_that_does_not_predict_held_out_models_is_not_kept():
    # models disagree in sign (two need +2 ms, two -2 ms, one 0): any shared offset helps the
    # models it was fitted on and hurts the one held out, so the stored value is 0; a shared
    # offset every model needs is stored as fitted
    rows = [_row(f"m{i}", 10.0 + d, 10.0, 100.0, 100.0) for i, d in
            enumerate((2.0, 2.0, -2.0, -2.0, 0.0))]
    res = fit.fit(rows)["vllm"]
    assert res["tpot_ms"]["held_out_median"] >= res["tpot_ms"]["before_median"]
    assert fit.kept(res, "extra_kernels_per_layer", "tpot_ms") == 0.0
    shared = fit.fit([_row(f"m{i}", 11.6 + i, 10.0 + i, 100.0, 100.0) for i in range(6)])
    assert fit.kept(shared["vllm"], "extra_kernels_per_layer", "tpot_ms") == 10.0


def test_runs_at_other_overheads_are_read_end_to_end_not_as_a_sum():
    # a closed loop answers a request overhead in more than its sum: here each model's TTFT
    # at 30 ms of overhead is measured exactly, though 0 ms + 30 would read 20 ms high (its
    # run says 90, the first order 120); the fit reads the runs, finds 30 ms, and holds out
    # exactly; one run alone keeps the first order (100 + c)
    rows = [dict(_row(f"m{i}", 10.0, 10.0, 90.0, 100.0), id=f"r{i}") for i in range(6)]
    runs = {0.015: [dict(r, ttft_ms={"measured": 90.0, "predicted": 70.0}) for r in rows],
            0.030: [dict(r, ttft_ms={"measured": 90.0, "predicted": 90.0}) for r in rows],
            0.060: [dict(r, ttft_ms={"measured": 90.0, "predicted": 150.0}) for r in rows]}
    res = fit.fit(rows, runs)["vllm"]
    assert res["request_overhead_s"] == 0.030
    assert res["ttft_ms"]["held_out_median"] == pytest.approx(0.0, abs=1e-12)
    assert res["ttft_ms"]["before_median"] == pytest.approx(10 / 90)
    assert fit.fit(rows)["vllm"]["request_overhead_s"] == 0.0       # 100 + c > 90 for all c
    # a row that a run lacks is left out of the overhead's fit, not priced at another run's
    partial = {c: rs[1:] for c, rs in runs.items()}
    got, grid = fit.with_runs(rows, partial)
    assert [r["id"] for r in got] == [f"r{i}" for i in range(1, 6)] and \
        grid == [0.0, 0.015, 0.030, 0.060]


def test_the_fit_refuses_two_base_runs_a_run_moving_both_or_none_at_zero(tmp_path, capsys):
    import json
    for name, c in (("a", 0.0), ("b", 0.0), ("c", 0.03)):
        (tmp_path / f"{name}.json").write_text(json.dumps({"request_overhead_s": c,
                                                           "rows": []}))
    assert fit.main([str(tmp_path / "a.json"), str(tmp_path / "b.json")]) == 2
    assert "two runs with neither" in capsys.readouterr().err
    (tmp_path / "d.json").write_text(json.dumps({"request_overhead_s": 0.03,
                                                 "kv_transfer_s": 0.1, "rows": []}))
    assert fit.main([str(tmp_path / "a.json"), str(tmp_path / "d.json")]) == 2
    assert "sets both" in capsys.readouterr().err
    assert fit.main([str(tmp_path / "c.json")]) == 2
    assert "no run without a request overhead" in capsys.readouterr().err


def test_the_kv_transfer_is_fitted_on_the_disaggregated_rows_from_its_own_runs():
    # disaggregated rows miss TTFT by a handoff the runs at 100 and 200 ms of KV transfer
    # settle (200 ms exact for every model); the aggregated rows and their overhead are left as
    # they are, and the kv fit never reads the aggregated rows (their TTFT would want none)
    agg = [dict(_row(f"a{i}", 10.0, 10.0, 100.0, 100.0, backend="trtllm"), id=f"a{i}")
           for i in range(4)]
    dis = [dict(_row(f"d{i % 2}", 10.0, 10.0, 500.0, 300.0, backend="trtllm"), id=f"d{i}",
                mode="disagg") for i in range(4)]
    kv_runs = {0.1: [dict(r, ttft_ms={"measured": 500.0, "predicted": 420.0}) for r in dis],
               0.2: [dict(r, ttft_ms={"measured": 500.0, "predicted": 500.0}) for r in dis]}
    res = fit.fit(agg + dis, None, kv_runs)["trtllm"]
    assert res["kv_transfer_s"] == 0.2 and res["request_overhead_s"] == 0.0
    assert res["disagg_rows"] == 4 and res["disagg_models"] == 2 and res["rows"] == 4
    assert res["disagg_ttft_ms"]["before_median"] == pytest.approx(0.4)
    assert res["disagg_ttft_ms"]["held_out_median"] == pytest.approx(0.0, abs=1e-12)
    assert fit.kept(res, "kv_transfer_s", "disagg_ttft_ms") == 0.2
    # without runs of its own the KV transfer is not fitted (nor stored)
    assert "kv_transfer_s" not in fit.fit(agg + dis)["trtllm"]
