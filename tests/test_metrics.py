import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import lacal
from lacal.core.metrics import group_errors, shot_groups
from lacal.methods.multilabel import evaluate_multilabel, multilabel_offsets, multilabel_priors

from . import reference
from . import reference_multilabel as multilabel_reference
from .conftest import long_tail_problem


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("tau", [0.0, 1.0, 2.3])
def test_evaluate_matches_reference(seed, tau):
    logits, labels, counts = long_tail_problem(num_samples=300, num_classes=6, seed=seed, dtype=np.float64)
    evaluation = lacal.methods.evaluate(logits, labels, counts, tau)
    preds = reference.predictions(reference.adjusted(logits, counts, tau))
    expected = reference.per_class_errors(preds, labels, 6)
    assert evaluation.errors.tolist() == pytest.approx(expected)
    assert evaluation.balanced_error == pytest.approx(reference.balanced_error(preds, labels, 6))
    assert evaluation.worst_class_error == pytest.approx(reference.worst_class_error(preds, labels, 6))
    assert evaluation.accuracy == pytest.approx(np.mean(preds == labels))


def test_classes_without_samples_are_left_out():
    logits = np.array([[2.0, 0, 0, 0], [0, 2.0, 0, 0], [2.0, 0, 0, 0]])
    labels = np.array([0, 1, 1])  # classes 2 and 3 have no samples
    evaluation = lacal.methods.evaluate(logits, labels)
    assert evaluation.classes_without_samples == [2, 3]
    assert np.isnan(evaluation.errors[2]) and np.isnan(evaluation.errors[3])
    assert evaluation.balanced_error == pytest.approx((0.0 + 0.5) / 2)
    assert evaluation.worst_class_error == pytest.approx(0.5)


def test_tied_logits_take_the_first_class_like_argmax():
    logits = np.array([[1.0, 1.0, 0.0], [1.0, 1.0, 0.0]])
    evaluation = lacal.methods.evaluate(logits, np.array([0, 1]))
    assert evaluation.correct.tolist() == [1, 0, 0]


def test_evaluate_predictions_matches_reference():
    rng = np.random.default_rng(3)
    preds, labels = rng.integers(0, 5, 200), rng.integers(0, 5, 200)
    evaluation = lacal.core.evaluate_predictions(preds, labels, 5)
    assert evaluation.errors.tolist() == pytest.approx(reference.per_class_errors(preds, labels, 5))


def test_shot_group_boundaries():
    assert shot_groups([101, 100, 20, 19, 0]).tolist() == ["many", "medium", "medium", "few", "few"]


def test_group_errors_average_member_classes():
    logits = np.eye(3)[[0, 1, 2, 0]] * 2
    labels = np.array([0, 1, 1, 2])  # class 0 right, class 1 half right, class 2 wrong
    groups = group_errors(lacal.methods.evaluate(logits, labels), [500, 50, 5])
    assert groups["many"] == {"classes": 1, "classes_with_samples": 1, "error": 0.0}
    assert groups["medium"]["error"] == pytest.approx(0.5)
    assert groups["few"]["error"] == pytest.approx(1.0)


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_adjust_matches_reference_and_keeps_type(dtype):
    logits, _, counts = long_tail_problem(num_samples=50, num_classes=5, dtype=dtype)
    out = lacal.core.adjust_logits(logits, counts, 1.7)
    assert isinstance(out, np.ndarray) and out.dtype == dtype and out.shape == logits.shape
    tolerance = {np.float16: 1e-2, np.float32: 1e-5, np.float64: 1e-12}[dtype]
    np.testing.assert_allclose(out.astype(np.float64), reference.adjusted(logits, counts, 1.7), rtol=tolerance,
                               atol=tolerance)


def test_adjust_torch_in_torch_out_bfloat16():
    logits = torch.randn(10, 4).to(torch.bfloat16)
    out = lacal.core.adjust_logits(logits, [10, 20, 30, 40], 1.0)
    assert isinstance(out, torch.Tensor) and out.dtype == torch.bfloat16
    expected = reference.adjusted(logits.float().numpy(), [10, 20, 30, 40], 1.0)
    np.testing.assert_allclose(out.float().numpy(), expected, atol=0.07)


def test_offsets_are_minus_tau_log_prior():
    np.testing.assert_allclose(lacal.core.offsets([1, 3], 2.0), [-2 * np.log(0.25), -2 * np.log(0.75)])


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10_000), shift=st.floats(-50, 50), tau=st.floats(0, 4))
def test_adding_a_constant_to_a_row_changes_no_prediction(seed, shift, tau):
    logits, labels, counts = long_tail_problem(num_samples=40, num_classes=5, seed=seed, dtype=np.float64)
    shifted = logits + shift * np.random.default_rng(seed).integers(0, 2, (40, 1))
    a = reference.predictions(lacal.core.adjust_logits(logits, counts, tau))
    b = reference.predictions(lacal.core.adjust_logits(shifted, counts, tau))
    assert (a == b).all()
    assert lacal.methods.evaluate(logits, labels, counts, tau) == lacal.methods.evaluate(shifted, labels, counts, tau)


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 10_000))
def test_tau_zero_changes_nothing(seed):
    logits, labels, counts = long_tail_problem(num_samples=40, num_classes=5, seed=seed)
    np.testing.assert_array_equal(lacal.core.adjust_logits(logits, counts, 0.0), logits)
    assert lacal.methods.evaluate(logits, labels, counts, 0.0) == lacal.methods.evaluate(logits, labels)


# Multi-label heads (one sigmoid per label): the same behaviour, the other task.


@settings(max_examples=60, deadline=None)
@given(multilabel_reference.problems())
def test_multilabel_evaluation_matches_the_reference_counts(problem):
    f, y, positives, train_n, _ = problem
    priors = multilabel_priors(positives, train_n)
    evaluation = evaluate_multilabel(f, y, [multilabel_offsets(priors, 0.7)])[0]
    predicted = multilabel_reference.decisions(f, priors.log_odds, 0.7)
    np.testing.assert_array_equal(evaluation.true_positives, (predicted & y).sum(0))
    np.testing.assert_array_equal(evaluation.false_positives, (predicted & ~y).sum(0))
    if ((y.any(0)) & (~y).any(0)).any():
        value = multilabel_reference.value
        assert evaluation.balanced_error == pytest.approx(value(f, y, priors.log_odds, 0.7, "balanced-error"))
        assert 1 - evaluation.macro_f1 == pytest.approx(value(f, y, priors.log_odds, 0.7, "macro-f1"))


def test_multilabel_metrics_agree_with_scikit_learn():
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
