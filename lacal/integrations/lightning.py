"""A PyTorch Lightning callback that fits tau at every validation and leaves an adjusted checkpoint
(`pip install lacal[lightning]`).

    trainer = L.Trainer(callbacks=[LogitAdjustment()])

At each validation epoch end it fits tau exactly on the validation logits and logs `val/tau`, `val/balanced_error`,
`val/balanced_error_adjusted`, `val/worst_class_error` and `val/worst_class_error_adjusted` through the Trainer's
loggers. At the end of `fit` it writes `calibration.json` beside the best checkpoint, and a patched copy of that
checkpoint (`NAME-adjusted.ckpt`) that `LightningModule.load_from_checkpoint` loads with adjusted logits.

The validation logits come from what `validation_step` returns (a logits tensor, or a dict with `logits`), else from
a forward hook on the classifier head (found as checkpoint patching finds it); the targets from the step's dict or
the batch (`(inputs, targets)`, or `labels` / `label` / `targets` / `target` / `y` in a dict). Under DDP each rank
fits on its own share and the ranks merge their statistics exactly (as `lacal fit-tau` under torchrun does); the
samples DistributedSampler repeats to even out the shards are left out.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
from lightning.pytorch.callbacks import Callback

from ..errors import OptionError
from ..methods.search import DEFAULT_TAU_RANGE
from .common import batch_targets, check_fit_options, distributed_context, fit_logits, fit_numbers, module_head, \
    step_logits, step_targets

CALIBRATION_FILE = "calibration.json"


class LogitAdjustment(Callback):
    """Fit tau on the validation set at every validation epoch end, log it, and leave an adjusted checkpoint.

    Args:
        priors: the training class counts or priors (a vector, a `lacal.Priors`, or a priors file); None counts the
            targets of the training batches during the first training epoch (summed over ranks; pass the counts
            when a sampler rebalances the classes, since then the batches do not show the training frequencies).
        head: the classifier layer's name in the LightningModule (`"classifier"`, `"model.fc"`); found by usual
            name and by the number of classes when None.
        tau_range: (low, high) searched for tau.
        metric: "balanced-error" or "worst-class-error", minimised by tau.
        smoothing: added to every training count (needed when a class has none; see `lacal.count_priors`).
        prefix: the logged names' prefix.
        save: at the end of `fit`, write `calibration.json` beside the best checkpoint and its patched copy
            `NAME-adjusted.ckpt`.
        patch_module: at the end of `fit`, also patch the LightningModule in memory (with the tau of the last
            validation, fitted on the weights it holds then).

    Attributes:
        calibration: the `lacal.Calibration` of the last validation (None before one).
        result: its `lacal.FitResult`.
        calibration_path, patched_path: what `save` wrote (None before the end of `fit`, or when there was no best
            checkpoint).

    Example:
        >>> trainer = L.Trainer(max_epochs=10, callbacks=[LogitAdjustment()])
        >>> trainer.fit(model, train_loader, val_loader)
        >>> Classifier.load_from_checkpoint(trainer.callbacks[0].patched_path)   # adjusted logits
    """

    def __init__(self, priors: Any = None, *, head: Optional[str] = None, tau_range=DEFAULT_TAU_RANGE,
                 metric: str = "balanced-error", smoothing: float = 0.0, prefix: str = "val/", save: bool = True,
                 patch_module: bool = False):
        self.priors = priors
        self.head = head
        self.tau_range = check_fit_options(metric, tau_range, smoothing)
        self.metric = metric
        self.smoothing = smoothing
        self.prefix = prefix
        self.save = save
        self.patch_module = patch_module
        self.calibration = None
        self.result = None
        self.calibration_path: Optional[Path] = None
        self.patched_path: Optional[Path] = None
        self._fits: dict[int, Any] = {}  # global step -> calibration fitted at that validation
        self._counts = np.zeros(0, dtype=np.int64)
        self._counted = priors is not None
        self._no_targets = False
        self._logits: list = []
        self._targets: list = []
        self._hooked: list = []
        self._hook = None
        self._head_name: Optional[str] = head
        self._head_error: Optional[Exception] = None
        self._active = False

    # ------------------------------------------------------------------------------------------- training counts

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self._counted:
            return
        targets = batch_targets(batch)
        if targets is None:
            self._no_targets = True
            self._counted = True
            return
        counts = np.bincount(targets.detach().cpu().numpy().astype(np.int64))
        if counts.size > self._counts.size:
            self._counts = np.pad(self._counts, (0, counts.size - self._counts.size))
        self._counts[:counts.size] += counts
        if trainer.is_last_batch:
            self._counted = True

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self._counted = True

    # ------------------------------------------------------------------------------------- validation logits

    def on_validation_epoch_start(self, trainer, pl_module) -> None:
        self._active = not trainer.sanity_checking
        self._logits, self._targets = [], []
        if not self._active:
            return
        try:
            name, layer = module_head(pl_module, self._num_classes(), self.head)
        except Exception as exc:  # noqa: BLE001  (only an error when the steps return no logits either)
            self._head_error = exc
            return
        self._head_name = name
        self._hook = layer.register_forward_hook(lambda module, args, output: self._hooked.append(output))

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0) -> None:
        self._hooked = []

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        if not self._active or dataloader_idx != 0:
            return
        targets = step_targets(outputs)
        if targets is None:
            targets = batch_targets(batch)
        if targets is None:
            raise OptionError("cannot find the targets of the validation batch: return them from validation_step "
                              "as {'logits': ..., 'targets': ...}, or give batches as (inputs, targets) or dicts "
                              "with 'labels'", "validation_step")
        logits = step_logits(outputs, len(targets))
        if logits is None:
            logits = self._hooked_logits(len(targets))
        self._logits.append(logits.detach().float().cpu())
        self._targets.append(targets.detach().cpu())

    def _hooked_logits(self, rows: int):
        if self._hook is None:
            raise OptionError(f"validation_step returns no logits and the classifier head was not found "
                              f"({self._head_error}); return the logits from validation_step or name the head",
                              "head")
        outputs = [out if isinstance(out, torch.Tensor) else out[0] for out in self._hooked]
        outputs = [out.flatten(1) if out.ndim == 4 else out for out in outputs]
        if not outputs or sum(out.shape[0] for out in outputs) != rows:
            raise OptionError(f"the head {self._head_name!r} gave {sum(o.shape[0] for o in outputs)} rows for a "
                              f"batch of {rows} targets (it ran {len(outputs)} times); return the logits from "
                              "validation_step instead", "head")
        return torch.cat(outputs)

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        if self._hook is not None:
            self._hook.remove()
            self._hook = None
        if not self._active:
            return
        self._active = False
        context = distributed_context(trainer.local_rank)
        logits, targets = self._collected(trainer)
        priors = self._priors(context, logits.shape[1])
        if priors is None:
            return
        self.result = fit_logits(logits, targets, priors, tau_range=self.tau_range, metric=self.metric,
                                 smoothing=self.smoothing, context=context)
        self.calibration = self.result.calibration
        self._fits[trainer.global_step] = self.calibration
        for name, value in fit_numbers(self.result, self.prefix).items():
            pl_module.log(name, value, on_step=False, on_epoch=True, sync_dist=False)

    def _num_classes(self) -> Optional[int]:
        from ..core.conversions import PRIORS_KINDS, held

        if self.priors is None or isinstance(self.priors, (str, Path)):
            return None
        found = held(self.priors, "priors", PRIORS_KINDS)  # a Priors, or a count_priors result holding one
        return int(found.num_classes if found is not None else len(self.priors))

    def _collected(self, trainer):
        """This rank's logits and targets, without the samples DistributedSampler added to even out the ranks."""
        width = self._logits[0].shape[1] if self._logits else (self._num_classes() or 0)
        logits = torch.cat(self._logits) if self._logits else torch.zeros(0, width)
        targets = torch.cat(self._targets) if self._targets else torch.zeros(0, dtype=torch.int64)
        loader = trainer.val_dataloaders
        loader = loader[0] if isinstance(loader, (list, tuple)) else loader
        sampler = getattr(loader, "sampler", None)
        if isinstance(sampler, torch.utils.data.DistributedSampler) and not sampler.drop_last \
                and logits.shape[0] == sampler.num_samples:
            positions = sampler.rank + sampler.num_replicas * np.arange(sampler.num_samples)
            keep = torch.from_numpy(positions < len(sampler.dataset))
            logits, targets = logits[keep], targets[keep]
        return logits, targets

    def _priors(self, context, num_classes: int):
        if self.priors is not None:
            return self.priors
        if not self._counted or self._no_targets:
            if self._no_targets:
                warnings.warn("LogitAdjustment: the training batches hold no targets it can count; pass the "
                              "training class counts as `priors`", stacklevel=2)
            return None
        counts = np.pad(self._counts, (0, max(0, num_classes - self._counts.size)))
        return counts if context is None else context.sum(counts)

    # ---------------------------------------------------------------------------------------------- fit end

    def on_fit_end(self, trainer, pl_module) -> None:
        if self.calibration is None:
            return
        if self.save:
            best = _best_checkpoint(trainer)
            if best is not None:
                self.calibration_path = best.parent / CALIBRATION_FILE
                self.patched_path = best.with_name(best.stem + "-adjusted.ckpt")
                if trainer.is_global_zero:
                    self._write(best)
                trainer.strategy.barrier("lacal-logit-adjustment")
        if self.patch_module:
            from ..models import patch_module

            patch_module(pl_module, self.calibration, head=self._head_name)

    def _write(self, best: Path) -> None:
        from ..data.readers import load_torch_file
        from ..workflows import patch_checkpoint

        step = load_torch_file(best).get("global_step")
        calibration = self._fits.get(step)
        if calibration is None:
            warnings.warn(f"LogitAdjustment: no validation ran at the best checkpoint's step ({step}); using the "
                          "tau of the last validation", stacklevel=2)
            calibration = self.calibration
        calibration.save(self.calibration_path, force=True)
        patch_checkpoint(best, self.calibration_path, out=self.patched_path, head=self._head_name, force=True)


def _best_checkpoint(trainer) -> Optional[Path]:
    callback = trainer.checkpoint_callback
    if callback is None:
        return None
    for path in (getattr(callback, "best_model_path", ""), getattr(callback, "last_model_path", "")):
        if path and Path(path).is_file():
            return Path(path)
    return None
