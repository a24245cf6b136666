"""Multi-label (sigmoid) heads: one tau shared by every label.

Label k has training positive rate pi_k; its adjusted score is s_k = f_k - tau * log(pi_k / (1 - pi_k)) and it is
predicted when s_k > 0 (strictly: at s_k == 0 the label is not predicted). The target metric is the macro balanced
error, the mean over labels of (false-negative rate + false-positive rate) / 2, over the labels that have both
positive and negative samples (the others are listed, never averaged in).

The exact search: a (sample, label) decision with L_k = log(pi_k / (1 - pi_k)) != 0 flips at exactly one tau,
t = f_k / L_k (positive for tau > t when L_k < 0, for tau < t when L_k > 0, negative at t itself); labels with
pi_k = 0.5 never flip. Sorting the flips inside the range splits it into open segments on which every decision is
fixed, and a cumulative sum over the sorted flips gives each segment's metric, and each flip point's (a point can beat
the segments on both sides when flips of both signs meet there). As in the single-label search (`search.py`), optimal
segments are merged into runs, the run nearest tau = 1 wins and its midpoint is returned; a single point is returned
only when it is strictly better than every segment. Macro balanced error is summed in exact integers when the weights
fit in int64; macro-F1 (not linear in the counts) from per-label running counts, in float64.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import InputDataError, OptionError
from ..core.metrics import Counts, macro_mean
from .search import DEFAULT_TAU_RANGE, Measured, check_tau_range

METRICS = ("balanced-error", "macro-f1")
# the peak memory of the exact search per flip inside the range (its position and label, the sort, the running counts),
# measured on CPU with 0.8 to 3.2 million flips: about 150 bytes (balanced error) and 256 (macro-F1)
EVENT_BYTES = {"balanced-error": 160, "macro-f1": 272}


from ..core.positive_rates import (PRIORS_FORMAT, MultiLabelPriors, log_odds, multilabel_offsets,  # noqa: F401
                             multilabel_priors, multilabel_priors_from_labels)


# ------------------------------------------------------------------------------------------------------ metrics


@dataclass(frozen=True, eq=False)
class MultiLabelEvaluation(Counts):
    """Per-label counts: positive and negative samples, true and false positives."""

    positives: np.ndarray
    negatives: np.ndarray
    true_positives: np.ndarray
    false_positives: np.ndarray

    @property
    def num_samples(self) -> int:
        return int(self.positives[0] + self.negatives[0]) if self.num_classes else 0

    @property
    def scored(self) -> np.ndarray:
        """Labels with positive and negative samples: the ones the macro figures average over."""
        return (self.positives > 0) & (self.negatives > 0)

    @property
    def labels_without_samples(self) -> list[int]:
        return np.flatnonzero(~self.scored).tolist()

    @property
    def false_negative_rates(self) -> np.ndarray:
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(self.positives > 0, 1 - self.true_positives / np.maximum(self.positives, 1), np.nan)

    @property
    def false_positive_rates(self) -> np.ndarray:
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(self.negatives > 0, self.false_positives / np.maximum(self.negatives, 1), np.nan)

    @property
    def balanced_errors(self) -> np.ndarray:
        """(FNR + FPR) / 2 per label; NaN where a label lacks positive or negative samples."""
        return np.where(self.scored, (self.false_negative_rates + self.false_positive_rates) / 2, np.nan)

    @property
    def f1_scores(self) -> np.ndarray:
        """2 TP / (2 TP + FP + FN) per label; NaN where a label lacks positive or negative samples."""
        tp, fp = self.true_positives, self.false_positives
        return np.where(self.scored, 2 * tp / np.maximum(tp + fp + self.positives, 1), np.nan)

    @property
    def errors(self) -> np.ndarray:
        """The per-label error a report sorts by: the balanced error."""
        return self.balanced_errors

    @property
    def support(self) -> np.ndarray:
        """The per-label support a report shows: the positive samples."""
        return self.positives

    @property
    def balanced_error(self) -> float:
        """Macro balanced error over the scored labels."""
        return macro_mean(self.balanced_errors, self.scored)

    @property
    def macro_f1(self) -> float:
        return macro_mean(self.f1_scores, self.scored)

    @property
    def micro_balanced_error(self) -> float:
        """(FN / P + FP / N) / 2 over all (sample, label) pairs."""
        p, n = self.positives.sum(), self.negatives.sum()
        if p == 0 or n == 0:
            return float("nan")
        return float(((p - self.true_positives.sum()) / p + self.false_positives.sum() / n) / 2)

    @property
    def micro_f1(self) -> float:
        tp = self.true_positives.sum()
        total = tp + self.false_positives.sum() + self.positives.sum()
        return float(2 * tp / total) if total else float("nan")

    def metric(self, name: str) -> float:
        """The value to minimise: the macro balanced error, or 1 - macro-F1."""
        return self.balanced_error if name == "balanced-error" else 1 - self.macro_f1

    def to_dict(self) -> dict:
        return {"balanced_error": self.balanced_error, "macro_f1": self.macro_f1,
                "micro_balanced_error": self.micro_balanced_error, "micro_f1": self.micro_f1}


def check_label_matrix(labels, num_samples: int, num_classes: int, name=None) -> np.ndarray:
    """An N x C label matrix as bool, checked against the logits' shape."""
    import torch

    if isinstance(labels, torch.Tensor):
        labels = labels.cpu().numpy()
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise InputDataError(f"multi-label labels must be an N x C matrix, got shape {labels.shape}", name)
    if labels.shape != (num_samples, num_classes):
        raise InputDataError(f"the label matrix is {labels.shape[0]} x {labels.shape[1]} but the logits are "
                             f"{num_samples} x {num_classes}", name)
    if labels.dtype != bool:
        if labels.dtype.kind not in "iuf" or not np.all((labels == 0) | (labels == 1)):
            raise InputDataError("the label matrix must hold only 0 and 1", name)
        labels = labels.astype(bool)
    return labels


def _source(logits):
    from ..data.readers import LogitsSource, source_from_array

    return logits if isinstance(logits, LogitsSource) else source_from_array(logits)


def evaluate_multilabel(logits, labels, offsets=None, device="cpu", rows: int | None = None, progress=None,
                        memory_budget: int | None = None, context=None) -> list[MultiLabelEvaluation]:
    """One pass over `logits` (N x C array, tensor or LogitsSource) scoring `logits + offset > 0` against the N x C
    0/1 `labels` for each offset vector in `offsets` (default: only the raw logits), in the compute dtype `apply`
    uses. Under torch.distributed, `context` adds up every rank's counts (each rank passing its own rows)."""
    from ..engine.distributed import Context

    context = context or Context()
    failure = result = None
    try:  # a rank that fails must not leave the others waiting in the sums
        result = _evaluate(logits, labels, offsets, device, rows, progress, memory_budget)
    except Exception as exc:  # noqa: BLE001  (re-raised, on every rank, by agree)
        failure = exc
    context.agree(failure)
    if not context.active:
        return result
    samples = int(context.sum(np.array([result[0].positives[0] + result[0].negatives[0]]))[0])
    positives = context.sum(result[0].positives)
    return [MultiLabelEvaluation(positives, samples - positives, context.sum(e.true_positives),
                                 context.sum(e.false_positives)) for e in result]


def _evaluate(logits, labels, offsets, device, rows, progress, memory_budget) -> list[MultiLabelEvaluation]:
    import torch

    from ..engine.passes import compute_dtype, iter_blocks

    source = _source(logits)
    device = torch.device(device)
    truth = torch.from_numpy(check_label_matrix(labels, source.num_samples, source.num_classes, source.name))
    dtype = compute_dtype(source)
    offsets = [np.zeros(source.num_classes)] if offsets is None else offsets
    shifts = [torch.as_tensor(np.asarray(o, dtype=np.float64), dtype=dtype, device=device) for o in offsets]
    tp = torch.zeros(len(shifts), source.num_classes, dtype=torch.int64, device=device)
    fp = torch.zeros_like(tp)
    for start, block in iter_blocks(source, device, rows, progress, memory_budget):
        y = truth[start:start + block.shape[0]].to(device)
        for k, shift in enumerate(shifts):
            predicted = (block + shift) > 0
            tp[k] += (predicted & y).sum(0)
            fp[k] += (predicted & ~y).sum(0)
    positives = truth.sum(0).numpy().astype(np.int64)
    negatives = source.num_samples - positives
    return [MultiLabelEvaluation(positives, negatives, tp[k].cpu().numpy(), fp[k].cpu().numpy())
            for k in range(len(shifts))]


# ------------------------------------------------------------------------------------------------------- search


@dataclass(frozen=True)
class MultiLabelFit(Measured):
    """The shared tau, the run of tau around it with the same optimal value, and the validation evaluations at
    tau = 0, tau = 1 and the fitted tau (measured directly, with `apply`'s arithmetic)."""

    tau: float
    interval: tuple[float, float]
    metric: str
    tau_range: tuple[float, float]
    before: MultiLabelEvaluation
    at_one: MultiLabelEvaluation
    after: MultiLabelEvaluation
    search_value: float | None = None  # the optimum as the sweep computed it (`MultiLabelEvaluation.metric` units)

    def to_dict(self) -> dict:
        result = {"tau": self.tau, "tau_interval": list(self.interval), "metric": self.metric, "search": "exact",
                  "multi_label": True, "tau_range": list(self.tau_range), "num_classes": self.num_classes,
                  "num_samples": self.num_samples}
        for suffix, evaluation in (("before", self.before), ("tau1", self.at_one), ("after", self.after)):
            for key, value in evaluation.to_dict().items():
                result[f"{key}_{suffix}"] = value
        result["labels_without_samples"] = self.before.labels_without_samples
        return result


def fit_multilabel_tau(logits, labels, priors, tau_range=DEFAULT_TAU_RANGE, metric: str = "balanced-error",
                       device="cpu", rows: int | None = None, progress=None,
                       memory_budget: int | None = None, context=None) -> MultiLabelFit:
    """The tau in `tau_range` minimising the macro balanced error (or maximising the macro-F1) of
    `logits - tau * log(pi / (1 - pi)) > 0` on the N x C 0/1 `labels`, found exactly (see the module docstring).

    `priors`: a MultiLabelPriors or C positive rates in (0, 1). The flips inside the range are held in memory
    (about EVENT_BYTES[metric] bytes each, at most N x C of them); a search that would need more than
    `memory_budget` is refused. Under torch.distributed, `context` combines every rank's rows: the per-label counts
    are summed and the flips gathered, so every rank sweeps all of them and the result is that of one process.
    """
    import torch

    from ..engine.distributed import Context
    from ..engine.passes import DEFAULT_MEMORY_BUDGET
    from .search import FLOAT_TIE_TOLERANCE, best_mask, better, choose, representable

    if metric not in METRICS:
        raise OptionError(f"unknown multi-label metric {metric!r}; use one of {', '.join(METRICS)}", "metric")
    lo, hi = check_tau_range(tau_range)
    source = _source(logits)
    device = torch.device(device)
    budget = memory_budget or DEFAULT_MEMORY_BUDGET
    context = context or Context()
    ratios = log_odds(priors)
    if ratios.shape[0] != source.num_classes:
        raise InputDataError(f"priors have {ratios.shape[0]} labels but the logits have {source.num_classes}",
                             source.name)
    truth = torch.from_numpy(check_label_matrix(labels, source.num_samples, source.num_classes, source.name))
    L = torch.as_tensor(ratios, dtype=torch.float64, device=device)

    base_tp, base_fp, position, code, num_samples = _collect_flips(source, truth, L, (lo, hi), metric, device, rows,
                                                                   progress, budget, context)
    label, positive = (code >> 1).long(), (code & 1).bool()
    del code
    falls = (L > 0)[label]  # the decision turns negative at the flip (else positive)
    pos_count = context.sum(truth.sum(0)).to(device)
    base, delta, exact, unit = _flip_values(metric, position[2:], label, positive, falls, base_tp, base_fp, pos_count,
                                            num_samples - pos_count)
    del label, positive

    # each point's step, and the part of it that falling decisions make (they are already negative at the point)
    points, where = torch.unique(position, sorted=True, return_inverse=True)
    del position
    where = where[2:]
    step = torch.zeros(points.numel(), dtype=delta.dtype, device=device).index_add_(0, where, delta)
    right = torch.zeros_like(step).index_add_(0, where, torch.where(falls, delta, 0))
    del where, delta, falls
    after_point = base + step.cumsum(0)
    segments = after_point[:-1]  # the open segment (points[j], points[j + 1])
    at_points = after_point - step + right
    usable = representable(points)
    floor = min(float(segments.min()), float(at_points.min())) - 1
    segments = torch.where(usable, segments, torch.as_tensor(floor, dtype=segments.dtype, device=device))
    if bool(usable.any()):
        optimal = best_mask(segments, exact) & usable
        tau, interval = choose(points.cpu().numpy(), optimal.cpu().numpy())
        best = segments.max().item()
    else:
        tau, interval, best = None, None, floor
    segment = (tau, interval, best)
    best_point = at_points.max().item()
    if tau is None or better(best_point, best, exact):  # a point beats every segment: flips of both kinds meet
        candidates = points[best_mask(at_points, exact)].cpu().numpy()
        tau = float(candidates[np.argmin(np.abs(candidates - 1.0))])
        interval, best = (tau, tau), best_point
    search_value = 1 - best / unit if unit else float("nan")

    # the reported figures are measured directly, with apply's arithmetic, at 0, 1, the range ends and the fitted tau
    special = sorted({0.0, 1.0, lo, hi, tau, *(() if segment[0] is None else (segment[0],))})
    evaluations = evaluate_multilabel(source, truth.numpy(), [-t * ratios for t in special], device, rows,
                                      memory_budget=budget, context=context)
    direct = dict(zip(special, evaluations))
    delivered = direct[tau].metric(metric)
    if interval[0] == interval[1] and segment[0] is not None and delivered > search_value + FLOAT_TIE_TOLERANCE \
            and direct[segment[0]].metric(metric) <= delivered + FLOAT_TIE_TOLERANCE:
        # a single point where flips meet exactly: apply's float arithmetic does not land on it (the decisions come
        # out on one side), so it cannot be delivered; the best open segment can
        tau, interval, best = segment
        search_value = 1 - best / unit if unit else float("nan")
    in_range = [t for t in special if lo <= t <= hi]
    fallback = min(in_range, key=lambda t: (direct[t].metric(metric), abs(t - 1.0)))
    if direct[fallback].metric(metric) < direct[tau].metric(metric) - FLOAT_TIE_TOLERANCE:
        tau, interval = fallback, (fallback, fallback)  # float rounding at an extreme: keep the better direct point
    return MultiLabelFit(tau=float(tau), interval=(float(interval[0]), float(interval[1])), metric=metric,
                         tau_range=(lo, hi), before=direct[0.0], at_one=direct[1.0], after=direct[tau],
                         search_value=float(search_value))


def _check_budget(held: int, metric: str, budget: int) -> None:
    if held * EVENT_BYTES[metric] > budget:
        raise OptionError(f"the exact multi-label search holds every flip of a decision inside the tau range, about "
                          f"{EVENT_BYTES[metric]} bytes each; {held:,} flips so far exceed the memory budget of "
                          f"{budget:,} bytes: raise --memory-budget or narrow --tau-range", "--memory-budget")


def _collect_flips(source, truth, L, tau_range, metric: str, device, rows, progress, budget: int, context):
    """One pass over the logits: the per-label true and false positives just left of lo (every flip below lo
    done), every flip in [lo, hi] as a position (after lo and hi themselves) and a code 2 * label + y, and the
    number of samples; under torch.distributed, counted over every rank and with every rank's flips."""
    import torch

    from ..engine.passes import iter_blocks

    lo, hi = tau_range
    flips, falling = L != 0, L > 0  # falling: positive below the flip, negative from it on
    classes = torch.arange(source.num_classes, dtype=torch.int32, device=device)
    base_tp = torch.zeros(source.num_classes, dtype=torch.int64, device=device)
    base_fp = torch.zeros_like(base_tp)
    positions, codes, held = [], [], 0
    failure = None
    try:  # a rank that fails must not leave the others waiting in the sums below
        for start, block in iter_blocks(source, device, rows, progress, budget):
            f = block.double()
            y = truth[start:start + block.shape[0]].to(device)
            t = f / torch.where(flips, L, 1.0)
            predicted = torch.where(flips, torch.where(falling, t >= lo, t < lo), f > 0)
            base_tp += (predicted & y).sum(0)
            base_fp += (predicted & ~y).sum(0)
            inside = flips & (t >= lo) & (t <= hi)
            held += int(inside.sum())
            _check_budget(held, metric, budget)
            positions.append(t[inside])
            codes.append((2 * classes[None, :] + y.int())[inside])
    except Exception as exc:  # noqa: BLE001  (re-raised, on every rank, by agree)
        failure = exc
    context.agree(failure)
    num_samples = source.num_samples
    if context.active:
        base_tp, base_fp = context.sum(base_tp), context.sum(base_fp)
        num_samples = int(context.sum(np.array([num_samples]))[0])
        parts = context.gather((torch.cat(positions).cpu().numpy() if positions else np.zeros(0),
                                torch.cat(codes).cpu().numpy() if codes else np.zeros(0, dtype=np.int32)))
        failure = None
        try:
            _check_budget(sum(part[0].size for part in parts), metric, budget)
        except OptionError as exc:
            failure = exc
        context.agree(failure)
        positions = [torch.as_tensor(part[0], dtype=torch.float64, device=device) for part in parts]
        codes = [torch.as_tensor(part[1], dtype=torch.int32, device=device) for part in parts]
        del parts
    position = torch.cat([torch.tensor([lo, hi], dtype=torch.float64, device=device)] + positions)
    code = torch.cat(codes) if codes else torch.zeros(0, dtype=torch.int32, device=device)
    return base_tp, base_fp, position, code, num_samples


def _flip_values(metric: str, position, label, positive, falls, base_tp, base_fp, pos_count, neg_count):
    """(the score just left of lo, each flip's change of it, whether the scores are exact integers, the score of a
    perfect prediction). The score is higher for better: the sum over scored labels of their balanced accuracy
    (weighted by lcm / count when that fits in int64, else 1 / count), or of their F1 (running counts per label)."""
    import torch

    from .search import balanced_weights

    scored = (pos_count > 0) & (neg_count > 0)
    if metric == "balanced-error":
        weights, exact = balanced_weights(torch.cat([torch.where(scored, pos_count, 0),
                                                      torch.where(scored, neg_count, 0)]))
        w_pos, w_neg = weights[:pos_count.numel()], weights[pos_count.numel():]
        base = (base_tp * w_pos + (neg_count - base_fp) * w_neg).sum()
        delta = torch.where(positive, w_pos[label], -w_neg[label])  # a positive decision: a gain if y = 1
        delta = torch.where(falls, -delta, delta)
        unit = 2 * float((w_pos * pos_count)[scored][0]) * int(scored.sum()) if bool(scored.any()) else 0
        return base, delta, exact, unit

    def f1(tp, fp, p):
        return 2 * tp.double() / (tp + fp + p).clamp(min=1)

    sign = torch.where(falls, -1, 1)
    d_tp, d_fp = torch.where(positive, sign, 0), torch.where(positive, 0, sign)
    del sign
    order = torch.argsort(position, stable=True)
    order = order[torch.argsort(label[order], stable=True)]  # by label, then position
    running_tp = _running(base_tp, label[order], d_tp[order])
    running_fp = _running(base_fp, label[order], d_fp[order])
    p = pos_count.double()[label[order]]
    change = f1(running_tp, running_fp, p) - f1(running_tp - d_tp[order], running_fp - d_fp[order], p)
    del running_tp, running_fp, p, d_tp, d_fp
    change = torch.where(scored[label[order]], change, 0.0)
    delta = torch.empty_like(change).index_put_((order,), change)
    base = torch.where(scored, f1(base_tp, base_fp, pos_count.double()), 0.0).sum()
    return base, delta, False, int(scored.sum())


def _running(base, label, delta):
    """Per-event running count of each event's label (events sorted by label), starting from `base[label]`."""
    import torch

    total = delta.cumsum(0)
    if total.numel() == 0:
        return total
    first = torch.ones_like(label, dtype=torch.bool)
    first[1:] = label[1:] != label[:-1]
    before_label = (total - delta)[first]  # the cumulative sum before each label's first event
    index = torch.cumsum(first.long(), 0) - 1
    return base[label] + total - before_label[index]


# ------------------------------------------------------------------------------------------ per-label thresholds


def fit_label_thresholds(logits, labels) -> np.ndarray:
    """For comparison: a threshold per label (predict f_k > theta_k) minimising that label's balanced error on
    (logits, labels), chosen between two distinct scores (their midpoint; below the lowest or above the highest by 1).
    Labels without positive or negative samples keep theta = 0. Holds the logits in memory as float64."""
    import torch

    source = _source(logits)
    values = source.rows(0, source.num_samples).double()
    truth = torch.from_numpy(check_label_matrix(labels, source.num_samples, source.num_classes, source.name))
    sorted_values, order = values.sort(0)
    y = truth.gather(0, order).double()
    positives, negatives = y.sum(0), (1 - y).sum(0)
    # cut after row j: rows 0..j are predicted negative
    false_negatives = y.cumsum(0)
    true_negatives = (1 - y).cumsum(0)
    score = (1 - false_negatives / positives.clamp(min=1) + true_negatives / negatives.clamp(min=1)) / 2
    distinct = torch.ones_like(score, dtype=torch.bool)
    distinct[:-1] = sorted_values[1:] > sorted_values[:-1]  # a cut between equal scores is no cut
    score = torch.where(distinct, score, -1.0)
    everything = 0.5 * torch.ones(1, source.num_classes, dtype=torch.float64)  # all positive: FNR 0, FPR 1
    score = torch.cat([everything, score])
    best = score.argmax(0)
    padded = torch.cat([sorted_values[:1] - 1, sorted_values, sorted_values[-1:] + 1])
    lower = padded.gather(0, best[None, :])[0]
    upper = padded.gather(0, best[None, :] + 1)[0]
    thresholds = lower + (upper - lower) / 2
    thresholds = torch.where((positives > 0) & (negatives > 0), thresholds, 0.0)
    return thresholds.numpy()
