"""The Hugging Face `Trainer` with logit adjustment (`pip install lacal[transformers]`).

    trainer = Trainer(..., compute_metrics=LogitAdjustmentMetrics(train_counts),
                      callbacks=[LogitAdjustmentCallback()])

`LogitAdjustmentMetrics` reports, at every evaluation, the fitted tau and the balanced and worst-class errors before
and after the adjustment (`eval_tau`, `eval_balanced_error`, `eval_balanced_error_adjusted`, ...).
`LogitAdjustmentCallback` fits tau on the evaluation set when training ends and writes a `save_pretrained` folder
whose classifier bias carries the adjustment (the patch record in its `config.json`), which
`AutoModelFor...Classification.from_pretrained` and `pipeline(...)` load with adjusted logits. Sequence and image
classification models alike.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
from transformers import TrainerCallback

from ..errors import OptionError
from ..methods.search import DEFAULT_TAU_RANGE
from .common import LABEL_KEYS, check_fit_options, fit_logits, fit_numbers

CALIBRATION_FILE = "calibration.json"
ADJUSTED_FOLDER = "adjusted"


class LogitAdjustmentMetrics:
    """A `compute_metrics` for the Hugging Face `Trainer`: tau fitted exactly on the evaluation logits, and the
    balanced and worst-class errors before and after the adjustment.

    Args:
        priors: the training class counts or priors (a vector, a `lacal.Priors`, a priors file), or the training
            data set itself (its `labels` / `label` column or items are counted).
        tau_range: (low, high) searched for tau.
        metric: "balanced-error" or "worst-class-error", minimised by tau.
        smoothing: added to every training count (needed when a class has none; see `lacal.count_priors`).

    Attributes:
        result: the `lacal.FitResult` of the last evaluation (None before one).

    Example:
        >>> trainer = Trainer(model, args, train_dataset=train, eval_dataset=val,
        ...                   compute_metrics=LogitAdjustmentMetrics(train))
        >>> trainer.evaluate()["eval_balanced_error_adjusted"]
    """

    def __init__(self, priors: Any, *, tau_range=DEFAULT_TAU_RANGE, metric: str = "balanced-error",
                 smoothing: float = 0.0):
        self.priors = priors
        self.tau_range = check_fit_options(metric, tau_range, smoothing)
        self.metric = metric
        self.smoothing = smoothing
        self.result = None
        self._counts = None

    def __call__(self, prediction) -> dict[str, float]:
        logits = prediction.predictions
        if isinstance(logits, (tuple, list)):
            logits = logits[0]
        labels = prediction.label_ids
        self.result = fit_logits(np.asarray(logits), np.asarray(labels), self.train_priors(np.shape(logits)[1]),
                                 tau_range=self.tau_range, metric=self.metric, smoothing=self.smoothing)
        return fit_numbers(self.result)

    def train_priors(self, num_classes: int):
        """The training priors: as given, or counted once from the training data set."""
        if not _is_dataset(self.priors):
            return self.priors
        if self._counts is None:
            self._counts = count_labels(self.priors, num_classes)
        return self._counts


class LogitAdjustmentCallback(TrainerCallback):
    """At the end of training, fit tau on the evaluation set and write an adjusted `save_pretrained` folder.

    The evaluation set is the one the Trainer last evaluated on (so give `eval_dataset` and evaluate at least
    once, with `eval_strategy`); the model is run over all of it in the main process.

    Args:
        priors: the training class counts or priors (a vector, a `lacal.Priors`, a priors file); None counts the
            training data set's labels.
        output_dir: the adjusted folder; `OUTPUT_DIR/adjusted` (under the TrainingArguments' output_dir) when None.
            `calibration.json` goes beside it.
        tau_range: (low, high) searched for tau.
        metric: "balanced-error" or "worst-class-error", minimised by tau.
        smoothing: added to every training count (needed when a class has none; see `lacal.count_priors`).
        patch_model: also patch the trained model in memory (`lacal.patch_module`).

    Attributes:
        calibration, result: the `lacal.Calibration` and `lacal.FitResult` (None before the end of training).
        output_path, calibration_path: what was written.

    Example:
        >>> trainer = Trainer(model, args, train_dataset=train, eval_dataset=val,
        ...                   callbacks=[LogitAdjustmentCallback()])
        >>> trainer.train()
        >>> AutoModelForSequenceClassification.from_pretrained(f"{args.output_dir}/adjusted")  # adjusted logits
    """

    def __init__(self, priors: Any = None, *, output_dir=None, tau_range=DEFAULT_TAU_RANGE,
                 metric: str = "balanced-error", smoothing: float = 0.0, patch_model: bool = False):
        self.priors = priors
        self.output_dir = output_dir
        self.tau_range = check_fit_options(metric, tau_range, smoothing)
        self.metric = metric
        self.smoothing = smoothing
        self.patch_model = patch_model
        self.calibration = None
        self.result = None
        self.output_path: Optional[Path] = None
        self.calibration_path: Optional[Path] = None

    def on_train_end(self, args, state, control, model=None, processing_class=None, train_dataloader=None,
                     eval_dataloader=None, **kwargs):
        if not state.is_world_process_zero:
            return
        if eval_dataloader is None:
            warnings.warn("LogitAdjustmentCallback: the Trainer never evaluated, so there is no evaluation set to fit "
                          "tau on; give eval_dataset and an eval_strategy", stacklevel=2)
            return
        logits, labels = _evaluation_logits(model, eval_dataloader, args.per_device_eval_batch_size)
        priors = self.priors
        if priors is None:
            if train_dataloader is None:
                raise OptionError("no training data set to count the classes of; pass the training counts as "
                                  "`priors`", "priors")
            priors = count_labels(train_dataloader.dataset, logits.shape[1])
        self.result = fit_logits(logits, labels, priors, tau_range=self.tau_range, metric=self.metric,
                                 smoothing=self.smoothing)
        self.calibration = self.result.calibration
        out = Path(self.output_dir) if self.output_dir is not None else Path(args.output_dir) / ADJUSTED_FOLDER
        self.output_path, self.calibration_path = out, out.parent / CALIBRATION_FILE
        save_adjusted(model, self.calibration, out, processing_class, self.calibration_path)
        if self.patch_model:
            from ..models import patch_module

            patch_module(model, self.calibration)


def save_adjusted(model, calibration, out, processing_class=None, calibration_path=None) -> Path:
    """Save a transformers model with `save_pretrained` and patch the folder: `out` then loads with
    `from_pretrained` (and `pipeline`) giving adjusted logits; the patch record goes into its `config.json`.

    Args:
        model: a `PreTrainedModel` (sequence or image classification).
        calibration: a `fit` result, a `lacal.Calibration` or a calibration file.
        out: the adjusted folder (replaced if it exists).
        processing_class: a tokenizer or image processor to save beside the weights (for `pipeline`).
        calibration_path: where to save the calibration first (its sha256 goes into the record); None keeps it only
            in the folder's record.

    Returns:
        `out`.
    """
    from ..workflows import patch_checkpoint

    from ..core.conversions import as_calibration

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if calibration_path is not None and not isinstance(calibration, (str, os.PathLike)):
        as_calibration(calibration, "calibration").save(calibration_path, force=True)  # a fit result too
        calibration = calibration_path
    staging = Path(tempfile.mkdtemp(prefix=".lacal-", dir=out.parent))
    try:
        model.save_pretrained(staging)
        if processing_class is not None:
            processing_class.save_pretrained(staging)
        patch_checkpoint(staging, calibration, out=out, force=True)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out


def count_labels(dataset, num_classes: Optional[int] = None) -> np.ndarray:
    """The class counts of a data set: its `labels` / `label` column (a `datasets.Dataset`), or the `labels` /
    `label` entry (or second item) of each of its items."""
    column = next((key for key in LABEL_KEYS if key in (getattr(dataset, "column_names", None) or ())), None)
    if column is not None:
        labels = np.asarray(dataset[column])
    else:
        labels = []
        for item in dataset:
            if isinstance(item, dict):
                value = next((item[key] for key in LABEL_KEYS if key in item), None)
            else:
                value = item[1] if isinstance(item, (tuple, list)) and len(item) > 1 else None
            if value is None:
                raise OptionError("cannot find the labels of the training data set's items; pass the training counts "
                                  "as `priors`", "priors")
            labels.append(int(value))
        labels = np.asarray(labels)
    return np.bincount(labels.astype(np.int64).ravel(), minlength=num_classes or 0)


def _is_dataset(value) -> bool:
    return hasattr(value, "__getitem__") and hasattr(value, "__len__") and not isinstance(
        value, (str, Path, np.ndarray, list, tuple, torch.Tensor)) and not hasattr(value, "priors")


def _evaluation_logits(model, loader, batch_size: int):
    """The model's logits and the labels over the whole evaluation set (the loader's data set and collator, one
    process)."""
    full = torch.utils.data.DataLoader(loader.dataset, batch_size=batch_size, collate_fn=loader.collate_fn)
    device = next(model.parameters()).device
    training = model.training
    model.eval()
    logits, labels = [], []
    try:
        with torch.no_grad():
            for batch in full:
                key = next((k for k in ("labels", "label") if k in batch), None)
                if key is None:
                    raise OptionError("the evaluation batches hold no `labels`", "eval_dataset")
                labels.append(batch.pop(key).cpu())
                inputs = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
                logits.append(model(**inputs).logits.float().cpu())
    finally:
        model.train(training)
    return torch.cat(logits), torch.cat(labels)
