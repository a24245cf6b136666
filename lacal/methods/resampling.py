"""Resampling weights, folds and interval arithmetic for `bootstrap`: pure numpy, no torch.

A replicate's weights are a function of the seed, the replicate's number and the samples' global order and labels
only, never of how the samples are split into blocks or torchrun ranks. The samples are put in class order (stable
in the global order); replicate b draws, from SFC64 seeded by SeedSequence([seed, b]), one uniform pick per sample
slot (32 random bits x, scaled to floor(x * n / 2**32) among the slot's n choices). Stratified (the default), the
slots of class c pick among the n_c samples of class c, so every replicate keeps each class's support (and the
balanced error's class weights); unstratified, every slot picks among all N samples.
"""

from __future__ import annotations

import numpy as np

from ..errors import OptionError

DEFAULT_LEVEL = 0.95
FOLD_STREAM = 2**32 - 1  # the random stream of the folds, apart from every replicate's
COUNT_CHUNK_BYTES = 3 << 20  # the draws' working memory: a few replicates' picks, within a core's cache


def check_replicates(replicates) -> int:
    if isinstance(replicates, bool) or not isinstance(replicates, (int, np.integer)) or replicates < 1:
        raise OptionError(f"the number of bootstrap replicates must be a whole number of at least 1, got "
                          f"{replicates!r}", "bootstrap")
    return int(replicates)


def check_level(level) -> float:
    try:
        value = float(level)
    except (TypeError, ValueError):
        value = float("nan")
    if not 0.0 < value < 1.0:
        raise OptionError(f"the interval level must lie strictly between 0 and 1 (for example 0.95), got {level!r}",
                          "level")
    return value


def check_seed(seed) -> int:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise OptionError(f"the seed must be a whole number of at least 0, got {seed!r}", "seed")
    return int(seed)


def check_folds(folds, support) -> int:
    """K for K-fold cross-fitting: at least 2 and at most the smallest class's number of samples."""
    if isinstance(folds, bool) or not isinstance(folds, (int, np.integer)) or folds < 2:
        raise OptionError(f"cross-fitting needs a whole number of at least 2 folds, got {folds!r}", "folds")
    if support is None:
        return int(folds)
    support = np.asarray(support)
    smallest = int(support[support > 0].min())
    if folds > smallest:
        raise OptionError(f"{folds} folds is more than the smallest class's {smallest} validation samples (class "
                          f"{int(np.flatnonzero(support == smallest)[0])}); every fold needs one sample of each "
                          f"class: use at most {smallest}", "folds")
    return int(folds)


class Slots:
    """The sample slots of the resampling, for samples in class order (`class_order`): for each slot the first
    sample it may pick and how many it picks among (the slot's class, or every sample when not stratified)."""

    def __init__(self, support: np.ndarray, stratified: bool = True):
        support = np.asarray(support, dtype=np.int64)
        self.size = int(support.sum())
        if stratified:
            first = np.concatenate([[0], np.cumsum(support)[:-1]])
            self.first = np.repeat(first, support).astype(np.int64)
            self.choices = np.repeat(support, support).astype(np.int64)
        else:
            self.first = np.zeros(self.size, dtype=np.int64)
            self.choices = np.full(self.size, self.size, dtype=np.int64)
        self.choices_unsigned = self.choices.astype(np.uint64)
        self.first_unsigned = self.first.astype(np.uint64)

    def counts(self, seed: int, replicates, dtype=None, reuse: bool = False):
        """N x R tensor (float64, or `dtype`): how often each sample (class order) is drawn in each of the
        replicates given (a column per replicate). Replicate b takes 32 random bits per slot from SFC64 seeded by
        SeedSequence([seed, b]) and scales them to the slot's range (floor(bits * n / 2**32)).

        `reuse`: work in, and return, this thread's arrays from its previous call with as many replicates (whose
        result is overwritten): a fresh array of a few MB costs more in page faults than filling it does."""
        import torch
        from numpy.random import SFC64, SeedSequence

        dtype = dtype or torch.float64
        kind = torch.empty(0, dtype=dtype).numpy().dtype
        half, count = (self.size + 1) // 2, len(replicates)
        numbers = [int(b) for b in replicates]
        array = self._kept_array if reuse else (lambda name, shape, kind: np.empty(shape, dtype=kind))
        drawn = torch.from_numpy(array("drawn", (count, self.size), kind))  # a replicate a row
        drawn.zero_()
        # a few replicates at a time, so that the in-place integer steps below work in the CPU's cache
        chunk = max(1, min(count, COUNT_CHUNK_BYTES // (16 * max(1, self.size))))
        raw = array("raw", (chunk, half), np.uint64)
        picks = array("picks", (chunk, self.size), np.uint64)
        ones = torch.ones(1, dtype=dtype).expand(chunk, self.size)
        for top in range(0, count, chunk):
            part = numbers[top:top + chunk]
            for row, b in enumerate(part):
                raw[row] = SFC64(SeedSequence([seed, b])).random_raw(half)
            # floor(bits * n / 2**32) in integers (bits * n < 2**64 for any n < 2**32), then each row's histogram
            # (torch's scatter-add: numpy's bincount holds the interpreter lock, so the workers would take turns)
            here = picks[:len(part)]
            np.multiply(raw[:len(part)].view(np.uint32)[:, :self.size], self.choices_unsigned, out=here)
            here >>= np.uint64(32)
            here += self.first_unsigned
            drawn[top:top + len(part)].scatter_add_(1, torch.from_numpy(here.view(np.int64)), ones[:len(part)])
        out = array("out", (self.size, count), kind)
        np.copyto(out, drawn.numpy().T)
        return torch.from_numpy(out)

    def _kept_array(self, name: str, shape: tuple, kind) -> np.ndarray:
        """This thread's array `name` of that shape and type, kept between calls."""
        import threading

        store = self.__dict__.setdefault("_arrays", threading.local()).__dict__
        key = (name, shape, np.dtype(kind))
        if key not in store:
            store[key] = np.empty(shape, dtype=kind)
        return store[key]

    def folds(self, seed: int, folds: int, labels: np.ndarray) -> np.ndarray:
        """The fold (0..K-1) of each sample (class order, `labels` sorted): within each class, the samples in a
        random order dealt out in turn."""
        rng = np.random.default_rng([seed, FOLD_STREAM])
        key = rng.random(self.size)
        within = np.lexsort((key, labels))
        starts = np.searchsorted(labels, labels, side="left")
        out = np.empty(self.size, dtype=np.int64)
        out[within] = (np.arange(self.size) - starts) % folds
        return out


def class_order(labels) -> np.ndarray:
    """The samples sorted by class, stably (the order the resampling works in)."""
    return np.argsort(np.asarray(labels), kind="stable")


def percentile_interval(values, level: float) -> tuple[float, float] | None:
    """The equal-tailed percentile interval of `values` (NaNs dropped); None when none are finite."""
    values = np.asarray(values, dtype=np.float64)
    values = values[np.isfinite(values)]
    if values.size == 0:
        return None
    lo, hi = np.quantile(values, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)


def wilson_interval(errors, trials, level: float) -> np.ndarray:
    """Wilson score intervals for `errors` out of `trials` (arrays), as an n x 2 array (NaN where trials = 0)."""
    from statistics import NormalDist

    z = NormalDist().inv_cdf((1 + level) / 2)
    k, n = np.asarray(errors, dtype=np.float64), np.asarray(trials, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        p = k / n
        centre = (p + z * z / (2 * n)) / (1 + z * z / n)
        half = z / (1 + z * z / n) * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
        out = np.stack([np.clip(centre - half, 0, 1), np.clip(centre + half, 0, 1)], axis=-1)
    out[n == 0] = np.nan
    return out

