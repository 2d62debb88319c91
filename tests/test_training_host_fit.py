"""The training host-time calibration (benchmarks/training_host_fit.py): its grid, the pair it
picks, that a left-out row never trains its own fit, and that host time slows a host-bound row."""
import math

import pytest

from benchmarks import training_host_fit as fit
from simulator.loading import load_training_runtime


def test_the_grid_axes_are_milliseconds_given_as_lo_hi_step():
    xs = fit.axis("0:5:0.5")
    assert len(xs) == 11 and xs[0] == 0.0 and xs[-1] == pytest.approx(0.005)
    assert fit.axis("1.5:2:0.25") == pytest.approx([0.0015, 0.00175, 0.002])


def test_the_runtime_takes_both_host_numbers_and_keeps_their_sources():
    base = load_training_runtime("megatron-core")
    rt = fit.runtime(base, 0.002, 0.004)
    assert rt.host_s_per_layer_forward.value == 0.002
    assert rt.host_s_per_pass.value == 0.004
    assert rt.host_s_per_layer_forward.source == base.host_s_per_layer_forward.source
    assert rt.backward_host_ratio == base.backward_host_ratio


def test_the_fit_minimises_the_mean_error_and_a_left_out_row_never_trains_it():
    grid = [(0.0, 0.0), (0.001, 0.0), (0.002, 0.0)]
    # ln errors: row a wants the middle point, b the middle, c (an outlier) the last
    errs = {"a": [-0.3, 0.0, 0.3], "b": [-0.2, 0.0, 0.2], "c": [-0.9, -0.6, -0.1]}
    # mean |error|: 0.467, 0.2, 0.2: the first least is the middle point
    assert fit.best(errs, ["a", "b", "c"], grid) == 1
    # left out, c is predicted at the point the others pick (the middle), not its own best
    assert fit.best(errs, ["a", "b"], grid) == 1
    assert fit.best(errs, ["c"], grid) == 2


def test_host_time_slows_a_host_bound_row():
    # the PP 32 row runs one layer a chunk: with the preset's host times its step is longer
    # than with none (train_step_s: published minus 1, in logs, grows)
    row = next(r for r in fit.rows() if r.id == "qwen3-235b-h100-tp2-ep8-pp32-train")
    errs = fit.errors([row], [(0.0, 0.0), (0.003, 0.003)])[row.id]
    assert errs[1] > errs[0] + math.log(1.2)
