"""Bootstrap intervals for a multi-label head's macro metrics, resampling samples (rows).

Each (sample, label) decision is right on one open tau-interval: with t = f / L (L = log(pi / (1 - pi))), a positive
label is predicted for tau < t when L > 0 and for tau > t when L < 0, so a positive sample is right on one side of t
and a negative one on the other (labels with L = 0 never flip). Treating every (sample, label) pair as a unit of
"class" 2k + y (the positives and the negatives of label k), the macro balanced error is the mean error over those
classes, and a replicate's exact refit is `bootstrap.Sweep`'s weighted sweep, with each unit drawn as often as its
sample. A label without positives or negatives in a replicate drops out of that replicate's average, as in
`multilabel.fit_multilabel_tau`. Replicates equal refits except where a refit's optimum is a single flip point
(flips of both kinds meeting exactly, from exact ties in the logits), which the sweep does not consider.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .bootstrap import DEFAULT_REPLICATES, Replicates, SampleIntervals, Sweep, class_matrix, class_sums, \
    interval_pair, single_threaded
from .resampling import DEFAULT_LEVEL, Slots, percentile_interval

METRICS = ("balanced_error", "macro_f1")


@dataclass(frozen=True, eq=False)
class MultiLabelBootstrap(Replicates):
    """Bootstrap replicates of a multi-label fit (or of a fixed adjustment, `refitted` False).

    Attributes:
        taus: each replicate's refitted tau (empty when not refitted).
        before, at_fitted: B x 2, the macro balanced error and macro-F1 at tau = 0 and at the fitted tau.
        refit, original_at_refit: B, the macro balanced error at each replicate's tau, on the replicate and on the
            original samples (their mean difference is the optimism).
        per_label: B x C, each label's balanced error at the fitted tau.
        original: 2 x 2, the original samples' figures at tau = 0 and at the fitted tau.
    """

    per_label: np.ndarray = field(repr=False)
    original: np.ndarray = field(repr=False)
    refitted: bool = True

    @property
    def optimism(self) -> float:
        return float(np.mean(self.original_at_refit - self.refit)) if self.refitted else 0.0

    @property
    def tau_ci(self):
        return percentile_interval(self.taus, self.level) if self.refitted else None

    def ci(self, metric: str, when: str):
        """The interval of `metric` ("balanced_error" or "macro_f1") `before`, `after` or its `change`; the
        balanced error after (and its change) shifted by the optimism of refitting tau."""
        k = METRICS.index(metric)
        values = {"before": self.before[:, k], "after": self.at_fitted[:, k],
                  "change": self.at_fitted[:, k] - self.before[:, k]}[when]
        interval = percentile_interval(values, self.level)
        if interval is None:
            return None
        shift = self.optimism if metric == "balanced_error" and when != "before" else 0.0
        return interval[0] + shift, interval[1] + shift

    def to_dict(self) -> dict:
        result = {"bootstrap": {"replicates": self.replicates, "seed": self.seed, "level": self.level,
                                "resampled": "samples", "optimism": self.optimism}}
        if self.refitted:
            result["tau_ci"] = interval_pair(self.tau_ci)
        for metric in METRICS:
            for when in ("before", "after", "change"):
                result[f"{metric}_{when}_ci"] = interval_pair(self.ci(metric, when))
        result["per_label_balanced_error_after_ci"] = [
            interval_pair(percentile_interval(self.per_label[:, k], self.level))
            for k in range(self.per_label.shape[1])]
        return result


def unit_intervals(logits, truth, ratios, points):
    """(the units' `SampleIntervals` with classes 2k + y, each unit's row) for the N x C `logits` (float64 flips as
    the multi-label search computes them) and 0/1 `truth`; `hits` at `points` with apply's float32 arithmetic."""
    logits = np.asarray(logits)
    truth = np.asarray(truth, dtype=bool)
    rows, classes = truth.shape
    f = logits.astype(np.float64)
    ratios = np.asarray(ratios, dtype=np.float64)
    flips = ratios != 0
    with np.errstate(divide="ignore", invalid="ignore"):
        t = f / np.where(flips, ratios, 1.0)
    falling = (ratios > 0)[None, :]  # predicted below the flip
    below = falling == truth  # right below the flip: a predicted positive, or an unpredicted negative
    lo = np.where(below, -np.inf, t)
    hi = np.where(below, t, np.inf)
    fixed = ~flips[None, :] & np.ones_like(truth)
    always = (f > 0) == truth
    lo = np.where(fixed, np.where(always, -np.inf, np.inf), lo)
    hi = np.where(fixed, np.where(always, np.inf, -np.inf), hi)
    compute = logits.dtype if logits.dtype == np.float64 else np.float32
    hits = {float(p): ((logits.astype(compute) + (-float(p) * ratios).astype(compute)) > 0) == truth
            for p in points}
    code = 2 * np.arange(classes)[None, :] + truth
    return (SampleIntervals(lo.ravel(), hi.ravel(), code.ravel().astype(np.int64),
                            {p: h.ravel() for p, h in hits.items()}, 2 * classes),
            np.repeat(np.arange(rows), classes))


def _figures(correct: np.ndarray, support: np.ndarray):
    """(macro balanced error, macro-F1, per-label balanced errors) from per-class correct counts (R x 2C) and
    supports (R x 2C), over the labels with positives and negatives."""
    negatives, positives = support[:, 0::2], support[:, 1::2]
    true_negatives, true_positives = correct[:, 0::2], correct[:, 1::2]
    scored = (positives > 0) & (negatives > 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        balanced = np.where(scored, 1 - (true_positives / positives + true_negatives / negatives) / 2, np.nan)
        f1 = np.where(scored, 2 * true_positives / (true_positives + positives + negatives - true_negatives),
                      np.nan)
        count = scored.sum(1)
        macro = np.where(count > 0, np.nansum(balanced, 1) / np.maximum(count, 1), np.nan)
        macro_f1 = np.where(count > 0, np.nansum(f1, 1) / np.maximum(count, 1), np.nan)
    return macro, macro_f1, balanced


@single_threaded
def bootstrap_multilabel(logits, truth, ratios, tau: float, tau_range, replicates: int = DEFAULT_REPLICATES,
                         seed: int = 0, level: float = DEFAULT_LEVEL, refit: bool = True, context=None,
                         block: int | None = None) -> MultiLabelBootstrap:
    """Bootstrap replicates (rows drawn with replacement, replicate b from (`seed`, b) alone) of a multi-label fit
    of tau for the macro balanced error (`refit`), or of the fixed adjustment `tau` (not `refit`).

    Under torchrun (`context`) each rank passes its own rows; they are gathered in rank order and every rank takes
    every world-th block of replicates, so the result is that of one process.

    Example:
        >>> boot = bootstrap_multilabel(logits, label_matrix, log_odds(priors), fit.tau, (0, 4), 1000)
        >>> boot.ci("macro_f1", "after")
    """
    import torch

    if context is not None and context.active:
        parts = context.gather((np.asarray(logits), np.asarray(truth, dtype=bool)))
        logits, truth = (np.concatenate([p[k] for p in parts]) for k in range(2))
    truth = np.asarray(truth, dtype=bool)
    rows, classes = truth.shape
    intervals, unit_row = unit_intervals(logits, truth, ratios, sorted({0.0, float(tau)}))
    # the units of labels without positives or negatives are never averaged in, here or in any replicate
    positives = truth.sum(0)
    keep = ((positives > 0) & (positives < rows))[intervals.labels // 2]
    intervals = SampleIntervals(intervals.lo[keep], intervals.hi[keep], intervals.labels[keep],
                                {t: h[keep] for t, h in intervals.hits.items()}, 2 * classes)
    order = np.argsort(intervals.labels, kind="stable")
    data = intervals.in_class_order()
    unit_row = torch.from_numpy(unit_row[keep][order])
    support = data.support
    starts = data.starts
    # the multi-label search takes a single point only where flips of both kinds meet: no scored points here
    sweep = Sweep(SampleIntervals(data.lo, data.hi, data.labels, {}, 2 * classes), tau_range) if refit else None
    fixed = np.stack([data.right_at(0.0), data.right_at(float(tau))], 0)
    fixed_sums = class_matrix(fixed, data.labels, 2 * classes)
    slots = Slots(np.array([rows]), stratified=False)
    size = block or max(1, min(64, (64 << 20) // max(1, 40 * data.lo.size)))
    blocks = [range(a, min(a + size, replicates)) for a in range(0, replicates, size)]
    rank, world = (context.rank, context.world) if context is not None and context.active else (0, 1)
    unit_class = torch.from_numpy(data.labels)
    mine = []
    for index in range(rank, len(blocks), world):
        numbers = blocks[index]
        counts = slots.counts(seed, numbers).index_select(0, unit_row)  # units x R
        row_support = class_sums(counts.numpy(), starts, support)
        correct = (fixed_sums @ counts).numpy().reshape(2, 2 * classes, len(numbers)).transpose(0, 2, 1)
        zero, at_tau = _figures(correct[0], row_support), _figures(correct[1], row_support)
        taus = own = original = np.full(len(numbers), np.nan)
        if refit:
            scored = (row_support[:, 0::2] > 0) & (row_support[:, 1::2] > 0)
            weights = np.where(np.repeat(scored, 2, axis=1), 1.0 / np.maximum(row_support, 1), 0.0)
            mass = counts * torch.from_numpy(weights).T[unit_class]
            taus, _, scores = sweep.fit(mass, exact=False)
            own = 1.0 - scores / (2 * np.maximum(scored.sum(1), 1))
            original = sweep.original_errors(taus)
        mine.append((np.asarray(numbers), taus, np.stack(zero[:2], 1), np.stack(at_tau[:2], 1), own,
                     original, at_tau[2]))
    parts = [mine] if world == 1 else context.gather(mine)
    merged = [np.concatenate([piece[k] for part in parts for piece in part]) for k in range(7)]
    order = np.argsort(merged[0])
    _, taus, before, at_fitted, own, original, per_label = (m[order] for m in merged)
    correct = class_sums(fixed.T.astype(np.float64), starts, support)
    figures = [_figures(correct[k:k + 1], support[None, :]) for k in range(2)]
    original_figures = np.array([[f[0][0], f[1][0]] for f in figures])
    return MultiLabelBootstrap(replicates, seed, level, float(tau), taus if refit else np.zeros(0), before,
                               at_fitted, own, original, per_label, original_figures, refit)
