"""The multi-label search, priors and metrics against a float64 brute force over every candidate tau."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lacal.errors import OptionError, PriorsError
from lacal.methods.multilabel import (evaluate_multilabel, fit_label_thresholds, fit_multilabel_tau, multilabel_offsets,
                              multilabel_priors, multilabel_priors_from_labels)


def decisions(f, L, tau):
    """Predicted labels at tau, by the flip rule: a label with L < 0 is on for tau > f / L, one with L > 0 for
    tau < f / L, one with L = 0 when f > 0; a decision at its flip point is off."""
    out = np.zeros(f.shape, dtype=bool)
    for i in range(f.shape[0]):
        for k in range(f.shape[1]):
            if L[k] == 0:
                out[i, k] = f[i, k] > 0
            else:
                t = f[i, k] / L[k]
                out[i, k] = tau > t if L[k] < 0 else tau < t
    return out


def value(f, y, L, tau, metric):
    """Macro balanced error, or 1 - macro-F1, over labels with positive and negative samples."""
    predicted = decisions(f, L, tau)
    scores = []
    for k in range(f.shape[1]):
        p, n = int(y[:, k].sum()), int((~y[:, k]).sum())
        if p == 0 or n == 0:
            continue
        tp = int((predicted[:, k] & y[:, k]).sum())
        fp = int((predicted[:, k] & ~y[:, k]).sum())
        if metric == "balanced-error":
            scores.append(((p - tp) / p + fp / n) / 2)
        else:
            scores.append(1 - 2 * tp / (2 * tp + fp + (p - tp)))
    return sum(scores) / len(scores) if scores else float("nan")


def candidates(f, L, lo, hi):
    """Every flip point in [lo, hi], the ends, and a tau strictly inside each segment between them."""
    flips = {f[i, k] / L[k] for i in range(f.shape[0]) for k in range(f.shape[1]) if L[k] != 0}
    points = sorted({lo, hi} | {t for t in flips if lo <= t <= hi})
    middles = [a + (b - a) / 2 for a, b in zip(points, points[1:]) if a < a + (b - a) / 2 < b]
    return points, middles


@st.composite
def problems(draw):
    n = draw(st.integers(1, 10))
    c = draw(st.integers(2, 4))
    f = np.array(draw(st.lists(st.integers(-8, 8), min_size=n * c, max_size=n * c)), dtype=np.float64).reshape(n, c)
    f /= 4
    y = np.array(draw(st.lists(st.booleans(), min_size=n * c, max_size=n * c))).reshape(n, c)
    train_n = draw(st.sampled_from([10, 20, 37]))
    positives = np.array(draw(st.lists(st.integers(1, train_n - 1), min_size=c, max_size=c)))
    if draw(st.booleans()):
        positives[0] = train_n // 2 if train_n % 2 == 0 else positives[0]  # pi = 0.5: never flips
    lo = draw(st.sampled_from([0.0, -1.0, 0.5]))
    hi = draw(st.sampled_from([4.0, 1.5, 2.0]))
    return f, y, positives, train_n, (lo, hi)


@settings(max_examples=150, deadline=None)
@given(problems(), st.sampled_from(["balanced-error", "macro-f1"]), st.sampled_from([None, 1, 3]))
def test_search_finds_the_brute_force_minimum_and_its_exact_run(problem, metric, rows):
    f, y, positives, train_n, tau_range = problem
    priors = multilabel_priors(positives, train_n)
    L = priors.log_odds
    lo, hi = tau_range
    if not ((y.any(0)) & (~y).any(0)).any():
        return  # no label has both kinds of samples: nothing to score
    fit = fit_multilabel_tau(f, y, priors, tau_range, metric, rows=rows)
    points, middles = candidates(f, L, lo, hi)
    best = min(value(f, y, L, t, metric) for t in points + middles)
    assert value(f, y, L, fit.tau, metric) == pytest.approx(best, abs=1e-12)
    assert fit.after.metric(metric) == pytest.approx(best, abs=1e-12)
    assert fit.search_value == pytest.approx(best, abs=1e-12)  # the sweep's own value at its optimum
    left, right = fit.interval
    assert lo <= left <= fit.tau <= right <= hi
    if left == right:  # a single point: strictly better than every segment
        assert all(value(f, y, L, t, metric) > best + 1e-12 for t in middles)
        return
    inside = [t for t in middles if left < t < right]
    assert inside and all(value(f, y, L, t, metric) == pytest.approx(best, abs=1e-12) for t in inside)
    beyond = [t for t in middles if t > right][:1] + [t for t in middles if t < left][-1:]
    assert all(value(f, y, L, t, metric) > best + 1e-12 for t in beyond)  # the run is maximal


@settings(max_examples=60, deadline=None)
@given(problems())
def test_evaluation_matches_the_reference_counts(problem):
    f, y, positives, train_n, _ = problem
    priors = multilabel_priors(positives, train_n)
    evaluation = evaluate_multilabel(f, y, [multilabel_offsets(priors, 0.7)])[0]
    predicted = decisions(f, priors.log_odds, 0.7)
    np.testing.assert_array_equal(evaluation.true_positives, (predicted & y).sum(0))
    np.testing.assert_array_equal(evaluation.false_positives, (predicted & ~y).sum(0))
    if ((y.any(0)) & (~y).any(0)).any():
        assert evaluation.balanced_error == pytest.approx(value(f, y, priors.log_odds, 0.7, "balanced-error"))
        assert 1 - evaluation.macro_f1 == pytest.approx(value(f, y, priors.log_odds, 0.7, "macro-f1"))


def test_metrics_agree_with_scikit_learn():
    from sklearn.metrics import balanced_accuracy_score, f1_score

    rng = np.random.default_rng(0)
    y = rng.random((300, 6)) < np.linspace(0.05, 0.6, 6)
    f = rng.normal(size=(300, 6)) + 2 * y - 1.5
    evaluation = evaluate_multilabel(f.astype(np.float32), y)[0]
    predicted = f.astype(np.float32) > 0
    expected = np.mean([1 - balanced_accuracy_score(y[:, k], predicted[:, k]) for k in range(6)])
    assert evaluation.balanced_error == pytest.approx(expected, abs=1e-12)
    assert evaluation.macro_f1 == pytest.approx(f1_score(y, predicted, average="macro"), abs=1e-12)
    assert evaluation.micro_f1 == pytest.approx(f1_score(y, predicted, average="micro"), abs=1e-12)


def test_labels_without_both_kinds_are_listed_and_left_out():
    f = np.array([[1.0, -1.0, 2.0], [-1.0, 1.0, 3.0]])
    y = np.array([[True, False, True], [False, False, True]])
    evaluation = evaluate_multilabel(f, y)[0]
    assert evaluation.labels_without_samples == [1, 2]
    assert evaluation.balanced_error == 0.0


def test_priors_refuse_labels_never_or_always_positive_unless_smoothed():
    labels = np.array([[1, 0, 1], [0, 0, 1], [1, 0, 1]], dtype=bool)
    with pytest.raises(PriorsError, match="1 label\\(s\\) have no positive training samples: 1"):
        multilabel_priors_from_labels(labels)
    smoothed = multilabel_priors_from_labels(labels, smoothing=1.0)
    np.testing.assert_allclose(smoothed.priors, [3 / 5, 1 / 5, 4 / 5])
    np.testing.assert_allclose(smoothed.log_odds, np.log([3 / 2, 1 / 4, 4 / 1]))
    with pytest.raises(PriorsError, match="only positive"):
        multilabel_priors_from_labels(labels[:, [0, 2]])


def test_offsets_are_minus_tau_times_the_log_odds():
    priors = multilabel_priors([1, 5, 9], 10)
    np.testing.assert_allclose(multilabel_offsets(priors, 2.0), -2 * np.log([1 / 9, 1.0, 9.0]))
    assert multilabel_offsets(priors, 2.0)[1] == 0.0


def test_search_memory_budget_is_enforced():
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
    assert value(f, y, L, 2.0, "balanced-error") == 0.0
    assert value(f, y, L, 1.999, "balanced-error") == value(f, y, L, 2.001, "balanced-error") == 0.25


@pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("metric", ["balanced-error", "macro-f1"])
def test_search_on_cuda_equals_cpu(metric):
    rng = np.random.default_rng(5)
    rates = np.linspace(0.01, 0.5, 30)
    y = rng.random((3000, 30)) < rates
    f = (rng.normal(size=y.shape) + 2 * y - 1 + np.log(rates / (1 - rates))).astype(np.float32)
    on_cpu = fit_multilabel_tau(f, y, rates, metric=metric, device="cpu")
    on_gpu = fit_multilabel_tau(f, y, rates, metric=metric, device="cuda")
    assert on_gpu.tau == on_cpu.tau and on_gpu.interval == on_cpu.interval
    np.testing.assert_array_equal(on_gpu.after.true_positives, on_cpu.after.true_positives)
    np.testing.assert_array_equal(on_gpu.after.false_positives, on_cpu.after.false_positives)


def test_label_readers_agree_and_name_the_problem(tmp_path):
    from lacal.errors import InputDataError
    from lacal.core.label_matrix import label_matrix_kind, read_label_matrix

    matrix = np.array([[1, 0, 1], [0, 0, 0], [0, 1, 0]], dtype=bool)
    np.save(tmp_path / "m.npy", matrix.astype(np.float32))
    (tmp_path / "m.csv").write_text("1,0,1\n0,0,0\n0,1,0\n")
    (tmp_path / "m.txt").write_text("0,2\n\nb\n")
    for name in ("m.npy", "m.csv"):
        np.testing.assert_array_equal(read_label_matrix(tmp_path / name, 3), matrix)
    np.testing.assert_array_equal(read_label_matrix(tmp_path / "m.txt", 3, ["a", "b", "c"]), matrix)
    assert label_matrix_kind(tmp_path / "m.npy") == "a 3 x 3 matrix of 0/1"
    assert label_matrix_kind(tmp_path / "m.txt") == "a text file of comma-separated label lists"
    np.save(tmp_path / "single.npy", np.array([0, 2, 1]))
    (tmp_path / "single.csv").write_text("label,weight\n1,0\n0,1\n")
    assert label_matrix_kind(tmp_path / "single.npy") is None and label_matrix_kind(tmp_path / "single.csv") is None
    (tmp_path / "far.txt").write_text("0\n1,7\n")
    with pytest.raises(InputDataError, match="line 2: label 7 is out of range for 3 labels"):
        read_label_matrix(tmp_path / "far.txt", 3)
    with pytest.raises(InputDataError, match="has 3 label columns but the logits have 4"):
        read_label_matrix(tmp_path / "m.npy", 4)
    np.save(tmp_path / "bad.npy", np.array([[0, 2], [1, 0]]))
    with pytest.raises(InputDataError, match="only 0 and 1"):
        read_label_matrix(tmp_path / "bad.npy")


def test_multilabel_calibration_round_trip_and_validation(tmp_path):
    import json

    from lacal.core.calibration import Calibration
    from lacal.errors import InputDataError

    priors = multilabel_priors([3, 50, 97], 100)
    calibration = Calibration(tau=1.5, priors=priors.priors, counts=priors.positives, multi_label=True,
                              train_samples=100)
    calibration.save(tmp_path / "c.json")
    loaded = Calibration.load(tmp_path / "c.json")
    assert loaded == calibration and loaded.multi_label and loaded.train_samples == 100
    np.testing.assert_allclose(loaded.offsets, -1.5 * np.log([3 / 97, 1.0, 97 / 3]))
    assert loaded.offsets[1] == 0.0 and loaded.affine()[0] == 1.0
    data = json.loads((tmp_path / "c.json").read_text())
    data["priors"][0] = 1.0
    (tmp_path / "bad.json").write_text(json.dumps(data))
    with pytest.raises(InputDataError, match="strictly between 0 and 1"):
        Calibration.load(tmp_path / "bad.json")
