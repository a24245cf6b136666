"""What the framework integrations refuse, and when: bad options when they are built (not after an epoch of
training), targets that are not class ids, a model whose logits average several heads; and what they pass through
(smoothing for a class with no training samples, the class names)."""

import numpy as np
import pytest
import torch

import lacal
from lacal.errors import OptionError
from lacal.integrations.common import fit_logits, module_head

from .conftest import long_tail_problem


BAD = [({"metric": "balanced_error"}, "metric", "unknown metric 'balanced_error'"),
       ({"tau_range": (2.0, 1.0)}, "tau_range", "reversed"),
       ({"smoothing": -1}, "smoothing", "at least 0")]


@pytest.mark.parametrize("options, parameter, text", BAD)
def test_lightning_callback_refuses_bad_options_when_built(options, parameter, text):
    pytest.importorskip("lightning")
    from lacal.integrations.lightning import LogitAdjustment

    with pytest.raises(OptionError, match=text) as refused:
        LogitAdjustment(**options)
    assert refused.value.source == parameter


@pytest.mark.parametrize("options, parameter, text", BAD)
def test_huggingface_metrics_and_callback_refuse_bad_options_when_built(options, parameter, text):
    pytest.importorskip("transformers")
    from lacal.integrations.huggingface import LogitAdjustmentCallback, LogitAdjustmentMetrics

    for build in (lambda: LogitAdjustmentMetrics([50, 20, 5], **options), lambda: LogitAdjustmentCallback(**options)):
        with pytest.raises(OptionError, match=text) as refused:
            build()
        assert refused.value.source == parameter


def test_targets_that_are_not_class_ids_are_refused_not_truncated():
    logits, labels, counts = long_tail_problem(num_samples=60, num_classes=4)
    with pytest.raises(lacal.LacalError, match="integer class ids"):
        fit_logits(logits, labels + 0.7, counts)
    with pytest.raises(lacal.LacalError, match="integer class ids"):
        fit_logits(torch.from_numpy(logits), torch.from_numpy(labels).float(), counts)


def test_smoothing_reaches_the_fit_for_a_class_without_training_samples():
    logits, labels, counts = long_tail_problem(num_samples=60, num_classes=4)
    counts = counts.copy()
    counts[-1] = 0
    with pytest.raises(lacal.LacalError, match="smoothing"):
        fit_logits(logits, labels, counts)
    result = fit_logits(torch.from_numpy(logits), torch.from_numpy(labels), counts, smoothing=1.0)
    expected = lacal.fit(logits, labels, counts, smoothing=1.0, device="cpu", record_inputs=False)
    assert result.tau == expected.tau and result.calibration.smoothing == 1.0


def test_a_model_averaging_two_heads_has_no_one_head_to_hook():
    class TwoHeads(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.body = torch.nn.Linear(6, 8)
            self.head = torch.nn.Linear(8, 5)
            self.head_dist = torch.nn.Linear(8, 5)

        def forward(self, x):
            h = self.body(x)
            return (self.head(h) + self.head_dist(h)) / 2

    for name in (None, "head_dist"):  # naming one names the pair (as checkpoint patching patches both)
        with pytest.raises(OptionError, match="averages 2 classifier heads") as refused:
            module_head(TwoHeads(), 5, name)
        assert refused.value.source == "head"


def test_sklearn_fitted_tau_keeps_the_class_names():
    pytest.importorskip("sklearn")
    from sklearn.linear_model import LogisticRegression

    from lacal.integrations.sklearn import LogitAdjustedClassifier

    rng = np.random.default_rng(0)
    X = rng.normal(size=(300, 4))
    y = np.array(["ant", "bee", "cat"])[np.minimum((X[:, 0] > 0.5) + (X[:, 1] > 1.0) * 2, 2)]
    auto = LogitAdjustedClassifier(LogisticRegression(max_iter=500), cv=3).fit(X, y)
    fixed = LogitAdjustedClassifier(LogisticRegression(max_iter=500), tau=1.0).fit(X, y)
    assert auto.calibration_.class_names == fixed.calibration_.class_names == ["ant", "bee", "cat"]
