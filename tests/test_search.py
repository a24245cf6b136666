import numpy as np
import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st

import lacal
from lacal.errors import OptionError
from lacal.methods.multilabel import fit_label_thresholds, fit_multilabel_tau, multilabel_priors

from . import reference
from . import reference_multilabel as multilabel_reference
from .conftest import long_tail_problem

METRICS = ["balanced-error", "worst-class-error"]


@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("seed", range(5))
def test_exact_search_reaches_the_brute_force_minimum(metric, seed):
    logits, labels, counts = long_tail_problem(num_samples=60, num_classes=5, seed=seed, dtype=np.float64)
    fit = lacal.methods.fit_tau(logits, labels, counts, (0, 4), metric=metric)
    best = reference.brute_force_minimum(logits, labels, counts, 0.0, 4.0, metric)
    assert reference.metric_at(logits, labels, counts, fit.tau, metric) == pytest.approx(best, abs=1e-12)
    assert fit.after.metric(metric) == pytest.approx(best, abs=1e-12)
    assert fit.interval[0] < fit.tau < fit.interval[1]


@pytest.mark.parametrize("metric", METRICS)
def test_whole_interval_is_optimal(metric):
    logits, labels, counts = long_tail_problem(num_samples=80, num_classes=6, seed=11, dtype=np.float64)
    fit = lacal.methods.fit_tau(logits, labels, counts, metric=metric)
    low, high = fit.interval
    for t in np.linspace(low, high, 9)[1:-1]:
        assert reference.metric_at(logits, labels, counts, t, metric) == pytest.approx(fit.after.metric(metric))


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 100_000), classes=st.integers(2, 6), samples=st.integers(1, 50),
       metric=st.sampled_from(METRICS), low=st.floats(-2, 2), width=st.floats(0.1, 5))
def test_exact_is_never_worse_than_any_grid_point(seed, classes, samples, metric, low, width):
    logits, labels, counts = long_tail_problem(num_samples=samples, num_classes=classes, seed=seed,
                                               dtype=np.float64)
    fit = lacal.methods.fit_tau(logits, labels, counts, (low, low + width), metric=metric)
    found = reference.metric_at(logits, labels, counts, fit.tau, metric)
    for t in np.linspace(low, low + width, 23):
        assert found <= reference.metric_at(logits, labels, counts, t, metric) + 1e-12
    assert low <= fit.interval[0] < fit.tau < fit.interval[1] <= low + width


def test_tie_goes_to_the_run_nearest_one():
    # Every sample is right for every tau: one optimal run, the whole range, and its midpoint.
    logits = np.eye(3)[[0, 1, 2]] * 100.0
    fit = lacal.methods.fit_tau(logits, np.array([0, 1, 2]), [100, 10, 1], (0, 4))
    assert fit.interval == (0.0, 4.0) and fit.tau == 2.0


def test_of_two_optimal_runs_the_one_nearer_one_wins():
    # Two classes, priors 0.9/0.1, slope log(0.1/0.9) = -2.197. A class-1 sample is right for tau > its lo.
    # Sample A (label 0) is right for tau < a; sample B (label 1) for tau > b. With a < b the balanced error is
    # 0.5 on (low, a) and on (b, high), 1.0 between: two optimal runs.
    slope = np.log(0.9 / 0.1)
    a, b = 0.5, 2.5
    logits = np.array([[a * slope, 0.0], [0.0, -b * slope]])
    labels = np.array([0, 1])
    fit = lacal.methods.fit_tau(logits, labels, [9, 1], (0, 4))
    assert fit.interval == pytest.approx((0.0, a)) and fit.tau == pytest.approx(a / 2)
    fit = lacal.methods.fit_tau(logits, labels, [9, 1], (0.2, 4))
    assert fit.interval == pytest.approx((0.2, a))
    far = lacal.methods.fit_tau(logits, labels, [9, 1], (-4, 0.9))
    assert far.interval == pytest.approx((-4, a))


def _fits_by_block_size(task, metric, search):
    """The same search with one row, a few rows and all rows per block, for a softmax or a multi-label head."""
    if task == "single-label":
        logits, labels, counts = long_tail_problem(num_samples=101, num_classes=7, seed=5)
        return [lacal.methods.fit_tau(logits, labels, counts, metric=metric, search=search, rows=rows)
                for rows in (1, 7, None)]
    rng = np.random.default_rng(3)
    rates = np.linspace(0.02, 0.5, 7)
    y = rng.random((400, 7)) < rates
    f = rng.normal(size=(400, 7)) + 2 * y + np.log(rates / (1 - rates))
    return [lacal.methods.fit_multilabel_tau(f.astype(np.float32), y, rates, metric=metric, rows=rows)
            for rows in (None, 1, 17)]


@pytest.mark.parametrize("task, metric, search", [
    *[("single-label", metric, search) for metric in METRICS for search in ("exact", "grid")],
    *[("multi-label", metric, "exact") for metric in ("balanced-error", "macro-f1")]])
def test_block_size_does_not_change_the_result(task, metric, search):
    fits = _fits_by_block_size(task, metric, search)
    for fit in fits[1:]:
        assert (fit.tau, fit.interval, fit.after) == (fits[0].tau, fits[0].interval, fits[0].after)
    assert fits[0].after.balanced_error < fits[0].before.balanced_error


@pytest.mark.parametrize("metric", METRICS)
def test_grid_values_match_direct_evaluation(metric):
    logits, labels, counts = long_tail_problem(num_samples=120, num_classes=6, seed=2, dtype=np.float64)
    fit = lacal.methods.fit_tau(logits, labels, counts, (0, 3), search="grid", grid_size=31, metric=metric)
    expected = [reference.metric_at(logits, labels, counts, t, metric) for t in np.linspace(0, 3, 31)]
    np.testing.assert_allclose(fit.grid_values, expected, atol=1e-12)
    assert fit.tau in set(np.linspace(0, 3, 31).round(12)) or np.isclose(np.linspace(0, 3, 31), fit.tau).any()
    assert reference.metric_at(logits, labels, counts, fit.tau, metric) == pytest.approx(min(expected))
    best = [t for t, v in zip(np.linspace(0, 3, 31), expected) if v == pytest.approx(min(expected))]
    assert abs(fit.tau - 1) == pytest.approx(min(abs(t - 1) for t in best))


def test_exact_is_no_worse_than_grid():
    logits, labels, counts = long_tail_problem(num_samples=500, num_classes=10, seed=8)
    exact = lacal.methods.fit_tau(logits, labels, counts)
    grid = lacal.methods.fit_tau(logits, labels, counts, search="grid")
    assert exact.after.balanced_error <= grid.after.balanced_error


def test_equal_priors_and_tied_logits_agree_with_brute_force():
    rng = np.random.default_rng(4)
    logits = rng.integers(-2, 3, size=(80, 5)).astype(np.float64)  # many exact ties
    labels = rng.integers(0, 5, 80)
    counts = [50, 50, 20, 20, 5]  # equal priors in pairs
    for metric in METRICS:
        fit = lacal.methods.fit_tau(logits, labels, counts, metric=metric)
        best = reference.brute_force_minimum(logits, labels, counts, 0.0, 4.0, metric)
        assert reference.metric_at(logits, labels, counts, fit.tau, metric) == pytest.approx(best)


def test_exact_ties_at_zero_are_settled_like_argmax():
    # Sample 0 ties at tau = 0 and argmax gives the tie to class 0, its label: right only at tau <= 0. Sample 1
    # needs tau > 4.5. On the open range the balanced error is 1; at tau = 0 it is 0.5.
    logits, labels = np.array([[0.0, 0.0], [0.0, -10.0]]), np.array([0, 1])
    for search in ("exact", "grid"):
        fit = lacal.methods.fit_tau(logits, labels, [9, 1], (0, 4), search=search)
        assert fit.tau == 0.0 and fit.interval == (0.0, 0.0)
        assert fit.after.balanced_error == fit.before.balanced_error == 0.5


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 100_000), metric=st.sampled_from(METRICS),
       dtype=st.sampled_from(["float16", "bfloat16", "integers"]))
def test_coarse_logits_with_many_ties(seed, metric, dtype):
    rng = np.random.default_rng(seed)
    counts = rng.integers(1, 30, 5)
    labels = rng.integers(0, 5, 40)
    if dtype == "integers":
        logits = rng.integers(-2, 3, size=(40, 5)).astype(np.float64)
    else:
        logits = torch.from_numpy(rng.normal(size=(40, 5)) * 3).to(getattr(torch, dtype)).double().numpy()
    fit = lacal.methods.fit_tau(logits, labels, counts, (0, 4), metric=metric)
    found = reference.metric_at(logits, labels, counts, fit.tau, metric)
    assert found == pytest.approx(fit.after.metric(metric), abs=1e-12)
    assert found == pytest.approx(reference.brute_force_minimum(logits, labels, counts, 0.0, 4.0, metric), abs=1e-12)
    assert fit.after.metric(metric) <= fit.before.metric(metric) + 1e-12
    assert fit.after.metric(metric) <= fit.at_one.metric(metric) + 1e-12


def test_before_and_tau_one_are_reported():
    logits, labels, counts = long_tail_problem(seed=3, dtype=np.float64)
    fit = lacal.methods.fit_tau(logits, labels, counts)
    assert fit.before.balanced_error == pytest.approx(reference.metric_at(logits, labels, counts, 0.0))
    assert fit.at_one.balanced_error == pytest.approx(reference.metric_at(logits, labels, counts, 1.0))
    data = fit.to_dict()
    for key in ("tau", "tau_interval", "balanced_error_before", "balanced_error_after", "balanced_error_tau1",
                "metric", "num_classes", "num_samples"):
        assert key in data
    assert 0 <= data["balanced_error_after"] <= data["balanced_error_before"] <= 1


@pytest.mark.parametrize("bad", [(1, 1), (3, 1), (0, float("inf"))])
def test_bad_tau_ranges_are_refused(bad):
    logits, labels, counts = long_tail_problem(num_samples=10)
    with pytest.raises(OptionError):
        lacal.methods.fit_tau(logits, labels, counts, bad)


@pytest.mark.parametrize("rows", [1, None])  # one row per block, or all rows (ties settled row by row or together)
def test_shared_priors_both_ways(rows):
    for seed in range(12):
        rng = np.random.default_rng(seed)
        counts = rng.choice([3, 3, 3, 7, 7, 20], size=6)
        labels = rng.integers(0, 6, 50)
        logits = rng.integers(-2, 3, size=(50, 6)).astype(np.float64)
        for metric in METRICS:
            fit = lacal.methods.fit_tau(logits, labels, counts, metric=metric, rows=rows)
            best = reference.brute_force_minimum(logits, labels, counts, 0.0, 4.0, metric)
            assert reference.metric_at(logits, labels, counts, fit.tau, metric) == pytest.approx(best, abs=1e-12)


# Multi-label heads (one sigmoid per label): the same behaviour, the other task.


@settings(max_examples=150, deadline=None)
@given(multilabel_reference.problems(), st.sampled_from(["balanced-error", "macro-f1"]), st.sampled_from([None, 1, 3]))
@example((np.array([[0, 0, 0, 0]] * 7 + [[1.75, -1.75, 0, 0]] + [[0, 0, 0, 0]] * 2),
          np.array([[True, False, False, False], [False] * 4, [False, True, False, False]] + [[False] * 4] * 7),
          np.array([31, 6, 1, 1]), 37, (0.0, 4.0)), "balanced-error", None)  # flips meet where float32 cannot land
def test_multilabel_search_finds_the_brute_force_minimum_and_its_exact_run(problem, metric, rows):
    f, y, positives, train_n, tau_range = problem
    priors = multilabel_priors(positives, train_n)
    L = priors.log_odds
    lo, hi = tau_range
    if not ((y.any(0)) & (~y).any(0)).any():
        return  # no label has both kinds of samples: nothing to score
    fit = fit_multilabel_tau(f, y, priors, tau_range, metric, rows=rows)
    points, middles = multilabel_reference.candidates(f, L, lo, hi)
    best = min(multilabel_reference.value(f, y, L, t, metric) for t in points + middles)
    if fit.interval[0] < fit.interval[1] and multilabel_reference.value(f, y, L, fit.tau, metric) > best + 1e-12:
        # the best is a single point where flips meet exactly, which the float32 arithmetic of `apply` does not land
        # on: the search must then give the best open segment, and say what apply gives there
        best = min(multilabel_reference.value(f, y, L, t, metric) for t in middles)
    assert multilabel_reference.value(f, y, L, fit.tau, metric) == pytest.approx(best, abs=1e-12)
    assert fit.after.metric(metric) == pytest.approx(best, abs=1e-12)
    assert fit.search_value == pytest.approx(best, abs=1e-12)  # the sweep's own value at its optimum
    left, right = fit.interval
    assert lo <= left <= fit.tau <= right <= hi
    if left == right:  # a single point: strictly better than every segment
        assert all(multilabel_reference.value(f, y, L, t, metric) > best + 1e-12 for t in middles)
        return
    inside = [t for t in middles if left < t < right]
    assert inside and all(multilabel_reference.value(f, y, L, t, metric) == pytest.approx(best, abs=1e-12)
                          for t in inside)
    beyond = [t for t in middles if t > right][:1] + [t for t in middles if t < left][-1:]
    assert all(multilabel_reference.value(f, y, L, t, metric) > best + 1e-12 for t in beyond)  # the run is maximal


def test_multilabel_search_memory_budget_is_enforced():
    rng = np.random.default_rng(0)
    f = rng.normal(size=(2000, 300)).astype(np.float32)
    y = rng.random((2000, 300)) < 0.1
    with pytest.raises(OptionError, match="memory budget"):
        fit_multilabel_tau(f, y, np.full(300, 0.1), memory_budget=1 << 20)


def test_label_thresholds_minimise_each_labels_balanced_error():
    rng = np.random.default_rng(1)
    y = rng.random((60, 3)) < 0.3
    f = np.round(rng.normal(size=(60, 3)) + y, 1)
    thresholds = fit_label_thresholds(f, y)
    for k in range(3):
        p, n = y[:, k].sum(), (~y[:, k]).sum()

        def error(theta):
            predicted = f[:, k] > theta
            return ((p - (predicted & y[:, k]).sum()) / p + (predicted & ~y[:, k]).sum() / n) / 2

        cuts = np.unique(f[:, k])
        best = min(error(t) for t in np.r_[cuts - 1e-3, cuts[-1] + 1])
        assert error(thresholds[k]) == pytest.approx(best)


def test_a_flip_point_where_both_kinds_of_flips_meet_can_win_alone():
    # label 0 is rare (L < 0), label 1 common (L > 0); both negatives of sample 0 flip at tau = 2, where both are
    # "off" and so right, while each open segment around it gets one of them wrong
    priors = multilabel_priors([1, 9], 10)
    L = priors.log_odds
    f = np.array([[2 * L[0], 2 * L[1]], [30.0, 30.0]])
    y = np.array([[False, False], [True, True]])
    fit = fit_multilabel_tau(f, y, priors)
    assert fit.tau == 2.0 and fit.interval == (2.0, 2.0)
    assert fit.after.balanced_error == 0.0
    assert multilabel_reference.value(f, y, L, 2.0, "balanced-error") == 0.0
    value = multilabel_reference.value
    assert value(f, y, L, 1.999, "balanced-error") == value(f, y, L, 2.001, "balanced-error") == 0.25
