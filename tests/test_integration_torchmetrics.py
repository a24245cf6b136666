"""The torchmetrics metric, for real: its value is `lacal.fit` on all the batches it saw, merging states (as DDP's
sync does with the declared `cat` reduction) changes nothing, and Lightning's `self.log` takes it."""

import numpy as np
import pytest
import torch

torchmetrics = pytest.importorskip("torchmetrics")

import lacal  # noqa: E402
from lacal.integrations.torchmetrics import LogitAdjustedError  # noqa: E402

from .conftest import long_tail_problem  # noqa: E402


def test_value_is_lacal_fit_on_every_batch():
    logits, labels, counts = long_tail_problem(num_samples=900, num_classes=6, seed=4)
    metric = LogitAdjustedError(counts)
    assert torch.isnan(metric.tau)
    for start in range(0, 900, 128):
        metric.update(torch.from_numpy(logits[start:start + 128]), torch.from_numpy(labels[start:start + 128]))
    value = metric.compute()
    expected = lacal.fit(logits, labels, counts).tau_fit
    assert float(metric.tau) == expected.tau
    assert float(value) == expected.after.balanced_error
    assert metric.values["balanced_error"] == expected.before.balanced_error
    assert metric.result.calibration.tau == expected.tau
    metric.reset()
    metric.update(torch.from_numpy(logits[:300]), torch.from_numpy(labels[:300]))
    assert float(metric.compute()) == lacal.fit(logits[:300], labels[:300], counts).tau_fit.after.balanced_error


def test_worst_class_metric_and_merged_states():
    logits, labels, counts = long_tail_problem(num_samples=600, num_classes=5, seed=5)
    parts = [LogitAdjustedError(counts, metric="worst-class-error") for _ in range(3)]
    for part, rows in zip(parts, np.array_split(np.arange(600), 3)):
        part.update(torch.from_numpy(logits[rows]), torch.from_numpy(labels[rows]))
    merged = parts[0]
    for part in parts[1:]:
        merged.merge_state(part)  # what the cross-process `cat` reduction does under DDP
    expected = lacal.fit(logits, labels, counts, metric="worst-class-error").tau_fit
    assert float(merged.compute()) == expected.after.worst_class_error
    assert float(merged.tau) == expected.tau


@pytest.mark.parametrize("metric", ["balanced-error", "worst-class-error"])
def test_intervals_give_the_same_fit_as_the_logits(metric):
    logits, labels, counts = long_tail_problem(num_samples=800, num_classes=7, seed=6)
    parts = [LogitAdjustedError(counts, metric=metric, keep="intervals") for _ in range(2)]
    for part, rows in zip(parts, np.array_split(np.arange(800), 2)):
        for start in range(0, len(rows), 150):
            block = rows[start:start + 150]
            part.update(torch.from_numpy(logits[block]), torch.from_numpy(labels[block]))
    assert sum(t.numel() for t in parts[0].lo) == 400  # one interval a sample, not C logits
    parts[0].merge_state(parts[1])
    value = parts[0].compute()
    expected = lacal.fit(logits, labels, counts, metric=metric)
    assert float(parts[0].tau) == expected.tau
    assert parts[0].result.tau_fit.interval == expected.tau_fit.interval
    name = "balanced_error" if metric == "balanced-error" else "worst_class_error"
    assert float(value) == getattr(expected.tau_fit.after, name)
    assert parts[0].values[name] == getattr(expected.tau_fit.before, name)
    assert parts[0].result.calibration.offsets.tolist() == expected.calibration.offsets.tolist()


@pytest.mark.parametrize("keep", ["logits", "intervals"])
def test_a_count_priors_result_is_taken_as_priors(keep):
    """Results compose: `count_priors(...)` is accepted as `priors` whatever `keep` is (it crashed with a TypeError
    under keep="intervals")."""
    logits, labels, counts = long_tail_problem(num_samples=300, num_classes=5, seed=3)
    priors = lacal.count_priors(np.repeat(np.arange(5), counts))
    metric = LogitAdjustedError(priors, keep=keep)
    metric.update(torch.from_numpy(logits), torch.from_numpy(labels))
    expected = lacal.fit(logits, labels, counts).tau_fit
    assert float(metric.compute()) == expected.after.balanced_error
    assert float(metric.tau) == expected.tau


def test_bad_input_is_refused():
    metric = LogitAdjustedError([10, 5, 1])
    with pytest.raises(lacal.LacalError, match="logits"):
        metric.update(torch.zeros(4, 3), torch.zeros(5, dtype=torch.long))
    with pytest.raises(lacal.LacalError, match="metric"):
        LogitAdjustedError([10, 5, 1], metric="accuracy")
    with pytest.raises(lacal.LacalError, match="keep"):
        LogitAdjustedError([10, 5, 1], keep="everything")
    with pytest.raises(lacal.LacalError, match="4 classes but the priors 3"):
        LogitAdjustedError([10, 5, 1], keep="intervals").update(torch.zeros(2, 4), torch.zeros(2, dtype=torch.long))


def test_lightning_self_log_takes_it(tmp_path):
    L = pytest.importorskip("lightning")
    from .lightning_model import COUNTS, TinyClassifier, loaders

    class Logged(TinyClassifier):
        def __init__(self):
            super().__init__()
            self.adjusted = LogitAdjustedError(list(COUNTS))

        def validation_step(self, batch, batch_idx):
            x, y = batch
            self.adjusted.update(self(x), y)
            self.log("val/adjusted_error", self.adjusted, on_epoch=True)

    train, val = loaders()
    model = Logged()
    trainer = L.Trainer(max_epochs=1, accelerator="cpu", logger=False, enable_progress_bar=False,
                        enable_model_summary=False, enable_checkpointing=False, default_root_dir=tmp_path)
    trainer.fit(model, train, val)
    model.eval()
    with torch.no_grad():
        pairs = [(model(x), y) for x, y in val]
    logits, targets = torch.cat([p[0] for p in pairs]).numpy(), torch.cat([p[1] for p in pairs]).numpy()
    expected = lacal.fit(logits, targets, np.array(COUNTS)).tau_fit.after.balanced_error
    assert float(trainer.callback_metrics["val/adjusted_error"]) == pytest.approx(expected, abs=1e-7)
