"""Bootstrap intervals for a tau fit, a cross-fitted estimate of its error on new data, and the one-standard-error
tau rule.

Every validation sample is right on one open tau-interval (`engine.passes.interval_pass`), and resampling does not
change it: only how often the sample is drawn does. So the logits are scored once; a replicate's exact fit is a
weighted sweep over the sorted interval ends: each sample adds (times drawn) x (its class's weight) at its start and
takes it away at its end, a cumulative sum gives every segment's score, and the optimum is chosen as
`search.fit_tau` chooses it (the optimal run nearest tau = 1, its midpoint; a directly scored point only when it is
strictly better). A block of replicates is one scatter-add and one cumulative sum over an R x segments array, so the
working memory is bounded by the block.

The intervals are percentile intervals over the replicates. The error at the fitted tau is the minimum of a noisy
curve over the samples that chose tau, so it is biased low; its interval is the percentile interval of the
replicates' error at the fitted tau, shifted by the bootstrap estimate of that optimism (Efron 1983): the mean over
replicates of (the original data's error at the replicate's tau) - (the replicate's own error there). Per-class
errors get Wilson score intervals (a class's error at a fixed tau is a binomial proportion; for a class with 3
samples its bootstrap distribution has only four values). See docs/guide/intervals.md for the measured coverage.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..core.metrics import GROUPS, ClassEvaluation, shot_groups
from ..errors import OptionError
from .resampling import DEFAULT_LEVEL, Slots, class_order, percentile_interval, wilson_interval
from .search import FLOAT_TIE_TOLERANCE, balanced_weights, choose, representable

DEFAULT_REPLICATES = 1000
TAU_RULES = ("min", "one-se")
FEW_SAMPLES = 5  # classes with fewer validation samples than this are warned about
BLOCK_BYTES = 96 << 20  # working memory of a block of replicates
SINGLE_EXACT = 2 ** 22  # float32 holds every integer up to 2**24, and the sweep's sums stay within 4x the total
OPTIMISM_REPLICATES = 200  # replicates that estimate the optimism of the group and worst-class errors
BUCKETS = 512  # buckets of segments whose bounds let the sweep skip most of the range
SUMMARIES = ("balanced_error", "worst_class_error") + GROUPS


def single_threaded(function):
    """Run `function` with torch's intra-op threads set to one: its many small operations would otherwise spend
    their time in threads waiting for each other (see engine.threads and PERF.md)."""
    import functools

    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        from ..engine.threads import single_threaded_ops

        with single_threaded_ops():
            return function(*args, **kwargs)

    return wrapper


# --------------------------------------------------------------------------------------------- per-sample data


@dataclass(frozen=True, eq=False)
class SampleIntervals:
    """Every validation sample's open tau-interval of correct classification (`lo`, `hi`), its class, and whether
    it is right at the taus scored directly (`hits`: tau -> bool array), in the global sample order."""

    lo: np.ndarray
    hi: np.ndarray
    labels: np.ndarray
    hits: dict
    num_classes: int

    @property
    def support(self) -> np.ndarray:
        return np.bincount(self.labels, minlength=self.num_classes)

    @property
    def starts(self) -> np.ndarray:
        """Where each class's samples begin (for samples in class order)."""
        return np.concatenate([[0], np.cumsum(self.support)[:-1]]).astype(np.int64)

    def right_at(self, tau: float) -> np.ndarray:
        """Whether each sample is right at `tau` (argmax's own answer at the taus scored directly)."""
        if tau in self.hits:
            return self.hits[tau]
        return (self.lo < tau) & (tau < self.hi)

    def in_class_order(self) -> "SampleIntervals":
        """The same samples sorted by class (stably): the order the resampling works in."""
        order = class_order(self.labels)
        return SampleIntervals(self.lo[order], self.hi[order], self.labels[order],
                               {t: hits[order] for t, hits in self.hits.items()}, self.num_classes)


def sample_intervals(source, stats, log_priors, points, device="cpu", context=None) -> SampleIntervals:
    """The `SampleIntervals` of a fit's `IntervalStats` (this rank's share), gathered from every rank of a torchrun
    job in rank order (which is the global sample order); `points`: the taus to score directly."""
    from ..engine.passes import point_hits

    hits = {float(t): point_hits(source, stats.labels, stats.lo, stats.hi, float(t), log_priors, device)
            .cpu().numpy() for t in points}
    local = (stats.lo.cpu().numpy(), stats.hi.cpu().numpy(), stats.labels.cpu().numpy(),
             np.stack([hits[t] for t in sorted(hits)], 1) if hits else np.zeros((stats.lo.numel(), 0), bool))
    parts = [local] if context is None or not context.active else context.gather(local)
    lo, hi, labels, table = (np.concatenate([p[k] for p in parts]) for k in range(4))
    return SampleIntervals(lo.astype(np.float64), hi.astype(np.float64), labels.astype(np.int64),
                           {t: table[:, k] for k, t in enumerate(sorted(hits))}, int(stats.support.shape[0]))


# ------------------------------------------------------------------------------------------------ the sweep


class Sweep:
    """The exact balanced-error search of `search.fit_tau` for many weightings of the same samples at once.

    Works on `intervals` in class order (`SampleIntervals.in_class_order`). Scores are float64 sums of
    (times drawn) x (class weight); with integer class weights (lcm / n_c) they are exact integers below 2**53, so
    ties are exact as in `search`; otherwise segments within FLOAT_TIE_TOLERANCE of the best tie, as there.
    """

    def __init__(self, intervals: SampleIntervals, tau_range, buckets: int | None = None):
        import torch

        self.intervals = intervals
        self.lo_tau, self.hi_tau = (float(v) for v in tau_range)
        lo, hi = intervals.lo, intervals.hi
        keep = (lo < hi) & (lo < self.hi_tau) & (hi > self.lo_tau)
        self.kept = torch.from_numpy(np.flatnonzero(keep))
        # the samples right at some tau of the range: those kept, and those right at a point scored directly
        self.live = np.flatnonzero(keep | np.any([hits for hits in intervals.hits.values()], axis=0)) \
            if intervals.hits else self.kept.numpy()
        starts = np.maximum(lo[keep], self.lo_tau)
        ends = np.minimum(hi[keep], self.hi_tau)
        self.points, where = np.unique(np.concatenate([[self.lo_tau, self.hi_tau], starts, ends]),
                                       return_inverse=True)
        count = starts.size
        self.start_at = torch.from_numpy(where[2:2 + count].astype(np.int64))
        self.end_at = torch.from_numpy(where[2 + count:].astype(np.int64))
        self.segments = self.points.size - 1
        self.unusable = torch.from_numpy(np.flatnonzero(~representable(self.points)))
        self.labels = torch.from_numpy(intervals.labels)
        self.scored = [t for t in sorted(intervals.hits) if self.lo_tau <= t <= self.hi_tau]
        # the scored points in order of preference on a tie (nearest tau = 1, then the lower), and their hits
        self.preferred = sorted(self.scored, key=lambda t: (abs(t - 1.0), t))
        self.point_hits = torch.from_numpy(np.stack([intervals.hits[t] for t in self.preferred], 0)
                                           .astype(np.float64)) if self.preferred else None
        weights, self.exact, self.unit = class_weights(intervals.support)
        self.sample_weight = torch.from_numpy(weights)[self.labels]
        self._original = None
        self._buckets(buckets)

    def _buckets(self, buckets: int | None) -> None:
        """Split the segments into buckets of about equal count, and place every interval end in its bucket: the
        bucket holding the segment that starts at the end's point (ends at the range's top fall in none)."""
        import torch

        count = max(1, min(buckets or BUCKETS, self.segments))
        self.edges = np.unique(np.linspace(0, self.segments, count + 1).round().astype(np.int64))
        self.buckets = self.edges.size - 1
        bucket_of = lambda at: np.searchsorted(self.edges, at, side="right") - 1  # noqa: E731
        starts, ends = self.start_at.numpy(), self.end_at.numpy()
        self.start_bucket, self.end_bucket = bucket_of(starts), np.minimum(bucket_of(ends), self.buckets)
        self.start_on_edge = np.flatnonzero(starts == self.edges[self.start_bucket])
        ends_inside = self.end_bucket < self.buckets
        self.end_on_edge = np.flatnonzero(ends_inside & (ends == self.edges[np.minimum(self.end_bucket,
                                                                                      self.buckets - 1)]))
        usable = representable(self.points)
        self.edge_usable = torch.from_numpy(usable[self.edges[:-1]])
        self.usable_segments = usable
        # the events (interval ends) of each bucket, for the fine sweep of the candidate buckets
        event_bucket = np.concatenate([self.start_bucket, self.end_bucket])
        self.event_order = np.argsort(event_bucket, kind="stable")
        self.event_first = np.searchsorted(event_bucket[self.event_order], np.arange(self.buckets + 1))
        self.event_at = np.concatenate([starts, ends])
        # one sparse matrix gives every bucket's sums from the samples' masses: the starts inside it (rows
        # 0..buckets), the ends inside it (the next buckets + 1 rows), the starts minus the ends on its first edge
        # (ends at the top of the range fall in no bucket and are left out)
        kept, rows = self.kept.numpy(), self.buckets + 1
        on_start, on_end = self.start_on_edge, self.end_on_edge
        self._bucket_entries = (np.concatenate([self.start_bucket, rows + self.end_bucket[ends_inside],
                                                2 * rows + self.start_bucket[on_start],
                                                2 * rows + self.end_bucket[on_end]]),
                                np.concatenate([kept, kept[ends_inside], kept[on_start], kept[on_end]]),
                                np.concatenate([np.ones(kept.size + int(ends_inside.sum()) + on_start.size),
                                                -np.ones(on_end.size)]))
        self._bucket_matrices = {}

    def bucket_matrix(self, dtype):
        """The sparse (3 x (buckets + 1)) x N matrix of `_buckets` (compressed rows, in `dtype`)."""
        import warnings

        import torch

        if dtype not in self._bucket_matrices:
            rows, columns, values = self._bucket_entries
            order = np.lexsort((columns, rows))  # a sample adds to a row at most once, so no entries to merge
            height = 3 * (self.buckets + 1)
            crow = np.concatenate([[0], np.cumsum(np.bincount(rows, minlength=height))])
            with warnings.catch_warnings():  # compressed-row tensors are marked beta; products with them are exact
                warnings.simplefilter("ignore", UserWarning)
                self._bucket_matrices[dtype] = torch.sparse_csr_tensor(
                    torch.from_numpy(crow), torch.from_numpy(columns[order]),
                    torch.from_numpy(values[order]).to(dtype), (height, self.intervals.lo.size))
        return self._bucket_matrices[dtype]

    def columns_per_block(self, budget: int = BLOCK_BYTES) -> int:
        per_column = 8 * (2 * (self.segments + 1) + 6 * self.intervals.lo.size)
        return max(1, min(64, budget // per_column))

    def curve(self, mass):
        """R x segments: each segment's score, from each sample's mass (N x R: times drawn x class weight; a
        column per weighting). The steps are added with rows of R (fast along the samples), then summed along
        the segments in the transposed layout (fast along the segments)."""
        import torch

        kept = mass.index_select(0, self.kept)
        step = torch.zeros(self.segments + 1, mass.shape[1], dtype=mass.dtype)
        step.index_add_(0, self.start_at, kept).index_add_(0, self.end_at, -kept)
        return step[:self.segments].T.contiguous().cumsum_(1)

    def fit(self, mass, exact: bool):
        """For each column of `mass` (N x R float64 tensor: times drawn x class weight): the tau and run of optimal
        tau that `search.fit_tau` finds on the data with each sample repeated that often, and the optimal score."""
        values, segment_of = self._candidate_values(mass, exact)
        best = values.amax(1)
        if exact:
            optimal = values == best[:, None]
        else:
            optimal = values >= (best - FLOAT_TIE_TOLERANCE * best.clamp(min=1.0))[:, None]
        columns = mass.shape[1]
        column, local = optimal.nonzero(as_tuple=True)  # by column, then segment
        taus, lefts, rights, on_point = self._choose_runs(column.numpy(), segment_of[local.numpy()], columns)
        for k in np.flatnonzero(on_point).tolist():  # the chosen midpoint sits on a point: settled one by one
            full = np.zeros(self.segments, dtype=bool)
            full[segment_of[optimal[k].numpy()]] = True
            taus[k], (lefts[k], rights[k]) = self._choose(full, mass[:, k])
        scores = best.numpy().astype(np.float64)
        if self.point_hits is not None:  # a point scored directly wins only when strictly better than every segment
            point_scores = (self.point_hits.to(mass.dtype) @ mass).numpy().astype(np.float64)
            pick = point_scores.argmax(0)  # the first maximum: the preferred point among tied ones
            top = point_scores[pick, np.arange(columns)]
            wins = top > (scores if exact else scores + FLOAT_TIE_TOLERANCE * np.maximum(1.0, np.abs(scores)))
            chosen = np.asarray(self.preferred)[pick]
            taus[wins], lefts[wins], rights[wins], scores[wins] = chosen[wins], chosen[wins], chosen[wins], top[wins]
        return taus, np.stack([lefts, rights], 1), scores

    def _candidate_values(self, mass, exact: bool):
        """R x L: the scores of the segments of the buckets that may hold an optimum of some column, and the L
        segments' indices. A bucket's first segment scores exactly the sum of the changes before it plus the ends
        on its edge; no segment inside it scores more than the changes before it plus its starts. A bucket whose
        bound is below the best first segment of any bucket (in that column) holds no optimum, as in
        `search._exact_distributed`; the others are swept exactly (-inf on segments too narrow to hold a float)."""
        import torch

        buckets, columns = self.buckets, mass.shape[1]
        sums = self.bucket_matrix(mass.dtype) @ mass
        rises, at_edge = sums[:buckets], sums[2 * (buckets + 1):2 * (buckets + 1) + buckets]
        change = rises - sums[buckets + 1:2 * buckets + 1]
        base = torch.cat([torch.zeros(1, columns, dtype=mass.dtype), change.cumsum(0)[:-1]])
        first = torch.where(self.edge_usable[:, None], base + at_edge, -torch.inf)
        known = first.amax(0)
        if not exact:
            known = known - FLOAT_TIE_TOLERANCE * known.abs().clamp(min=1.0)
        chosen = np.flatnonzero(((base + rises) >= known[None, :]).any(1).numpy())
        # the fine sweep over the chosen buckets' segments, a cumulative sum restarted at each bucket
        sizes = self.edges[chosen + 1] - self.edges[chosen]
        segment_of = np.repeat(self.edges[chosen] - np.cumsum(np.concatenate([[0], sizes[:-1]])), sizes) + \
            np.arange(sizes.sum())
        bucket_local = np.repeat(np.arange(chosen.size), sizes)
        counts = self.event_first[chosen + 1] - self.event_first[chosen]
        events = self.event_order[np.repeat(self.event_first[chosen] - np.cumsum(np.concatenate([[0], counts[:-1]])),
                                            counts) + np.arange(counts.sum())]
        local = np.searchsorted(segment_of, self.event_at[events])
        start = events < self.start_bucket.size
        sample = np.where(start, events, events - self.start_bucket.size)
        step = torch.zeros(segment_of.size, columns, dtype=mass.dtype)
        sample = self.kept[torch.from_numpy(sample)]
        start = torch.from_numpy(start)
        step.index_add_(0, torch.from_numpy(local)[start], mass.index_select(0, sample[start]))
        step.index_add_(0, torch.from_numpy(local)[~start], mass.index_select(0, sample[~start]), alpha=-1)
        values = step.T.contiguous().cumsum_(1)
        before_bucket = np.concatenate([[0], np.cumsum(sizes)[:-1]])  # each bucket's first local segment
        offset = torch.cat([torch.zeros(columns, 1, dtype=mass.dtype), values], 1)[:, before_bucket]
        values += (base.T[:, torch.from_numpy(chosen)] - offset)[:, torch.from_numpy(bucket_local)]
        values[:, torch.from_numpy(~self.usable_segments[segment_of])] = -torch.inf
        return values, segment_of

    def _choose_runs(self, column: np.ndarray, segment: np.ndarray, columns: int):
        """`search.choose` for every column at once, from the optimal segments (`segment`, ascending within each
        `column`): each column's runs of consecutive optimal segments, and the midpoint of its run nearest tau = 1
        (the lower on a tie; among runs with a float strictly inside them, when there are any). Returns the taus,
        the runs' ends and where a midpoint falls on a point inside its run (those need `_choose`)."""
        new_run = np.ones(column.size, dtype=bool)
        new_run[1:] = (column[1:] != column[:-1]) | (segment[1:] != segment[:-1] + 1)
        begin = np.flatnonzero(new_run)
        owner, first, last = column[begin], segment[begin], segment[np.r_[begin[1:], column.size] - 1]
        left, right = self.points[first], self.points[last + 1]
        middle = left + (right - left) / 2
        usable = (left < middle) & (middle < right)  # a run one float wide has no float strictly inside it
        eligible = usable | (np.bincount(owner[usable], minlength=columns) == 0)[owner]
        distance = np.where(right < 1, 1 - right, np.where(left > 1, left - 1, 0.0))
        order = np.lexsort((left, distance, ~eligible, owner))
        pick = order[np.r_[True, owner[order][1:] != owner[order][:-1]]]  # each column's first in that order
        at = np.searchsorted(self.points, middle[pick])
        on_point = (first[pick] < at) & (at <= last[pick]) & \
            (self.points[np.minimum(at, self.segments)] == middle[pick])
        return middle[pick], left[pick], right[pick], on_point

    def _choose(self, optimal: np.ndarray, mass):
        """`search.choose` over this sweep's points, where only the ends of the intervals drawn in this column (not
        those of samples drawn 0 times) count as interval ends."""
        tau, run = choose(self.points, optimal)
        middle = run[0] + (run[1] - run[0]) / 2
        if tau == middle:
            return tau, run
        at = int(np.searchsorted(self.points, middle))
        drawn = (mass[self.kept] != 0).numpy()
        events = np.unique(np.concatenate([[0, self.segments], self.start_at.numpy()[drawn],
                                           self.end_at.numpy()[drawn]]))
        if at not in set(events.tolist()):
            return middle, run
        following = events[np.searchsorted(events, at, side="right")]
        return float((self.points[at] + self.points[following]) / 2), run

    def right_at(self, taus, rows=None):
        """N x R bool tensor: whether each sample (or each of `rows`) is right at each tau of `taus`."""
        import torch

        intervals = self.intervals
        pick = (lambda values: values) if rows is None else (lambda values: values[rows])  # noqa: E731
        taus = torch.as_tensor(np.asarray(taus, dtype=np.float64))
        lo, hi = torch.from_numpy(pick(intervals.lo)), torch.from_numpy(pick(intervals.hi))
        right = (lo[:, None] < taus[None, :]) & (taus[None, :] < hi[:, None])
        for k, tau in enumerate(taus.tolist()):
            if tau in intervals.hits:
                right[:, k] = torch.from_numpy(pick(intervals.hits[tau]))
        return right

    def original_errors(self, taus) -> np.ndarray:
        """The balanced error of the original (unweighted) samples at each tau of `taus`."""
        if self._original is None:
            self._original = self.curve(self.sample_weight[:, None].double())[0].numpy()
        taus = np.asarray(taus, dtype=np.float64)
        k = np.clip(np.searchsorted(self.points, taus, side="right") - 1, 0, self.segments - 1)
        scores = self._original[k].copy()
        special = (self.points[k] == taus) | np.isin(taus, list(self.intervals.hits))
        for index in np.flatnonzero(special).tolist():
            scores[index] = float(self.sample_weight.numpy()[self.intervals.right_at(float(taus[index]))].sum())
        return 1.0 - scores / self.unit


def class_sums(values, starts: np.ndarray, support: np.ndarray) -> np.ndarray:
    """R x C: per class, the sum of `values` (N x R, samples in class order; `starts`: each class's first)."""
    values = np.asarray(values)
    out = np.zeros((values.shape[1], support.size), dtype=values.dtype)
    present = support > 0
    if present.any():
        out[:, present] = np.add.reduceat(values, starts[present], axis=0).T
    return out


def class_weights(support: np.ndarray):
    """The balanced error's class weights for `support`: integers lcm / n_c when every score stays an exact
    float64 integer (then `exact`), else 1 / n_c; and the score of a perfect classifier."""
    import torch

    support = np.asarray(support)
    weights, exact = balanced_weights(torch.as_tensor(support))
    weights = weights.numpy().astype(np.float64)
    if exact and float((weights * support).sum()) * max(1, int(support.sum())) < 2.0 ** 53:
        return weights, True, float((weights * support).sum())
    with np.errstate(divide="ignore"):
        weights = np.where(support > 0, 1.0 / np.maximum(support, 1), 0.0)
    return weights, False, float((support > 0).sum())


def summaries(correct: np.ndarray, support: np.ndarray, groups) -> np.ndarray:
    """R x 5: balanced error, worst-class error and the many/medium/few-shot errors of per-class counts (R x C)."""
    correct = np.ascontiguousarray(correct, dtype=np.float64)  # sums in one order whatever the layout given
    support = np.asarray(support)
    present = support > 0
    errors = correct / np.maximum(support, 1)
    np.subtract(1.0, errors, out=errors)
    every = bool(present.all())  # the usual case: no absent class to leave out (the same numbers, fewer passes)
    wrong = errors if every else errors * present
    count = np.broadcast_to(present.sum(-1), correct.shape[:1])
    out = np.full((correct.shape[0], len(SUMMARIES)), np.nan)
    has = count > 0
    out[has, 0] = wrong.sum(1)[has] / count[has]
    out[has, 1] = (errors if every else np.where(present, errors, -np.inf)).max(1)[has]
    if groups is not None:
        # masked sums rather than a product with a group matrix: numpy hands products to a BLAS whose idle threads
        # spin, taking the CPU from the bootstrap's other worker
        members = [np.asarray(groups) == g for g in GROUPS]
        if present.ndim == 1:
            sizes = np.broadcast_to([present[m].sum() for m in members], (correct.shape[0], len(members)))
        else:
            sizes = np.stack([present[:, m].sum(1) for m in members], 1)
        sums = np.stack([wrong[:, m].sum(1) for m in members], 1)
        with np.errstate(invalid="ignore", divide="ignore"):
            out[:, 2:] = np.where(sizes > 0, sums / sizes, np.nan)
    return out


# ------------------------------------------------------------------------------------------------ results


@dataclass(frozen=True, eq=False)
class Replicates:
    """What every bootstrap of a tau fit holds, for a single- or a multi-label head: how it was resampled, the
    fitted tau, each replicate's refitted tau, and the replicates' figures at tau = 0, at the fitted tau, at their own
    tau, and the original samples' figures at each replicate's tau (their mean difference is the optimism)."""

    replicates: int
    seed: int
    level: float
    tau: float
    taus: np.ndarray = field(repr=False)
    before: np.ndarray = field(repr=False)
    at_fitted: np.ndarray = field(repr=False)
    refit: np.ndarray = field(repr=False)
    original_at_refit: np.ndarray = field(repr=False)


@dataclass(frozen=True, eq=False)
class TauBootstrap(Replicates):
    """Bootstrap replicates of a tau fit and the intervals they give.

    Attributes:
        replicates, seed, level, stratified: how it was resampled.
        tau: the fitted tau the intervals are for.
        taus: each replicate's refitted tau.
        before: B x 5 (balanced, worst-class, many, medium, few-shot error) at tau = 0, per replicate.
        at_fitted: B x 5 at the fitted tau, per replicate.
        refit: B x 5 at each replicate's own tau (its in-sample optimum).
        original_at_refit: B x 5, the original data's errors at each replicate's tau.
        support, correct_before, correct_after: the original per-class counts (for the Wilson intervals).
        has_groups: whether training counts gave shot groups.
    """

    stratified: bool = True
    support: np.ndarray = field(default=None, repr=False)
    correct_before: np.ndarray = field(default=None, repr=False)
    correct_after: np.ndarray = field(default=None, repr=False)
    groups: np.ndarray | None = field(default=None, repr=False)
    refitted: bool = True
    refit_tau_ci: tuple | None = None  # without a refit here: where tau falls when refitted on these samples

    @property
    def has_groups(self) -> bool:
        return self.groups is not None

    @property
    def optimism(self) -> np.ndarray:
        """Per summary: the mean of (original error at the replicate's tau) - (the replicate's own error there)."""
        difference = self.original_at_refit - self.refit
        seen = ~np.isnan(difference)
        return np.where(seen.any(0), np.where(seen, difference, 0).sum(0) / np.maximum(seen.sum(0), 1), np.nan)

    @property
    def standard_error(self) -> float:
        """The bootstrap standard error of the balanced error at the fitted tau."""
        values = self.at_fitted[:, 0]
        return float(np.std(values, ddof=1)) if values.size > 1 else 0.0

    @property
    def tau_ci(self):
        return percentile_interval(self.taus, self.level)

    def ci(self, summary: str, when: str, rescale: bool = True):
        """The interval of a summary ("balanced_error", "many", "medium", "few"; "worst_class_error" is computed
        but covers badly, see the docs) `before` (tau = 0), `after` (at the fitted tau, shifted by the optimism) or
        its `change` (after - before, paired, shifted by the optimism).

        The percentile interval is widened about the estimate by sqrt(sum 1/(n_c - 1) / sum 1/n_c) over the
        summary's classes (`rescale`): resampling n_c samples of a class with replacement shrinks the variance of
        its error rate by (n_c - 1) / n_c, which matters for classes with 3 samples."""
        k = SUMMARIES.index(summary)
        original = {"before": self.original[0, k], "after": self.original[1, k],
                    "change": self.original[1, k] - self.original[0, k]}[when]
        values = {"before": self.before[:, k], "after": self.at_fitted[:, k],
                  "change": self.at_fitted[:, k] - self.before[:, k]}[when]
        interval = percentile_interval(values, self.level)
        if interval is None:
            return None
        factor = self.small_sample_factor(summary) if rescale else 1.0
        shift = 0.0 if when == "before" else float(self.optimism[k])
        low, high = (original + shift + factor * (v - original) for v in interval)
        return (low, high) if when == "change" else (max(low, 0.0), min(high, 1.0))

    @property
    def original(self) -> np.ndarray:
        """2 x 5: the summaries of the original data at tau = 0 and at the fitted tau."""
        return summaries(np.stack([self.correct_before, self.correct_after]), self.support, self.groups)

    def small_sample_factor(self, summary: str) -> float:
        members = self.support > 1
        if summary in GROUPS:
            members = members & (self.groups == summary)
        n = self.support[members].astype(np.float64)
        return float(np.sqrt(np.sum(1 / (n - 1)) / np.sum(1 / n))) if n.size else 1.0

    def wald(self, summary: str, when: str):
        """The interval of a mean of per-class errors (the balanced or a group error) `before` or `after`, from
        Agresti-Caffo adjusted rates: (errors + 1) / (n + 2) per class give the variance, which a class with 0 or
        all of its few samples wrong would otherwise make 0; the estimate itself is the plain mean."""
        from statistics import NormalDist

        correct = self.correct_before if when == "before" else self.correct_after
        members = self.support > 0
        if summary != "balanced_error":
            members = members & (self.groups == summary)
        if not members.any():
            return None
        n, wrong = self.support[members].astype(np.float64), (self.support - correct)[members].astype(np.float64)
        estimate = float(np.mean(wrong / n))
        adjusted = (wrong + 1) / (n + 2)
        spread = float(np.sqrt(np.sum(adjusted * (1 - adjusted) / (n + 2)))) / members.sum()
        z = NormalDist().inv_cdf((1 + self.level) / 2)
        shift = float(self.optimism[SUMMARIES.index(summary)]) if when == "after" else 0.0
        return max(estimate + shift - z * spread, 0.0), min(estimate + shift + z * spread, 1.0)

    def per_class_ci(self, when: str) -> np.ndarray:
        correct = self.correct_before if when == "before" else self.correct_after
        return wilson_interval(self.support - correct, self.support, self.level)

    def group_ci(self, group: str, when: str):
        """The interval of a shot group's error. At a fixed tau (`before`, or `after` when tau was not refitted):
        the union of the rescaled bootstrap interval (`ci`) and the Agresti-Caffo one (`wald`), since each alone
        under-covered in the simulation where the other did not (a group whose classes are all wrong, or all
        right, on their few samples has no bootstrap spread). `after` a refit: the rescaled bootstrap interval
        shifted by the group's optimism. See docs/guide/intervals.md."""
        if when == "after" and self.refitted:
            return self.ci(group, "after")
        pieces = [p for p in (self.ci(group, when), self.wald(group, when)) if p is not None]
        return (min(p[0] for p in pieces), max(p[1] for p in pieces)) if pieces else None

    def to_dict(self) -> dict:
        """The intervals as `*_ci` pairs [low, high] (None where there is no interval). The worst-class error has
        none: no bootstrap interval of a maximum over classes covered in the simulation."""
        result = {"bootstrap": {"replicates": self.replicates, "seed": self.seed, "level": self.level,
                                "stratified": self.stratified, "standard_error": self.standard_error,
                                "optimism": _number(self.optimism[0])}}
        if self.refitted or self.refit_tau_ci is not None:
            result["tau_ci"] = interval_pair(self.tau_ci if self.refitted else self.refit_tau_ci)
        for when in ("before", "after"):
            result[f"balanced_error_{when}_ci"] = interval_pair(self.ci("balanced_error", when))
        result["balanced_error_change_ci"] = interval_pair(self.ci("balanced_error", "change"))
        if self.has_groups:
            for when in ("before", "after"):
                result[f"groups_{when}_ci"] = {g: interval_pair(self.group_ci(g, when)) for g in GROUPS}
        for when in ("before", "after"):
            result[f"per_class_error_{when}_ci"] = [interval_pair(row) for row in self.per_class_ci(when)]
        return result


@dataclass(frozen=True, eq=False)
class CrossFit:
    """A K-fold cross-fitted estimate: tau fitted on K - 1 folds, each sample scored with the tau fitted without
    its fold (stratified folds). `evaluation` pools the held-out predictions."""

    folds: int
    seed: int
    taus: np.ndarray
    evaluation: ClassEvaluation

    @property
    def balanced_error(self) -> float:
        return self.evaluation.balanced_error

    def to_dict(self) -> dict:
        return {"folds": self.folds, "seed": self.seed, "taus": [float(t) for t in self.taus],
                "balanced_error": self.evaluation.balanced_error,
                "worst_class_error": self.evaluation.worst_class_error}


def interval_pair(interval):
    """[low, high] of an interval as floats; None for none, or one with a NaN end."""
    return None if interval is None or any(v != v for v in interval) else [float(interval[0]), float(interval[1])]


def _number(value):
    value = float(value)
    return None if value != value else value


# ------------------------------------------------------------------------------------------------ computations


@single_threaded
def bootstrap_fit(intervals: SampleIntervals, tau: float, tau_range, replicates: int = DEFAULT_REPLICATES,
                  seed: int = 0, level: float = DEFAULT_LEVEL, stratified: bool = True, train_counts=None,
                  context=None, block: int | None = None) -> TauBootstrap:
    """Bootstrap replicates of the exact balanced-error fit of tau on `intervals`, and the errors at tau = 0, at
    the fitted `tau` and at each replicate's own tau.

    Replicate b's weights depend only on (`seed`, b) and the samples' global order and labels (see `resampling`);
    under torchrun (`context`) each rank takes every world-th block of replicates and the results are gathered, so
    any number of ranks gives the result of one process. The optimism of the group and worst-class errors (which
    needs every class's count at each replicate's tau) is estimated from the first OPTIMISM_REPLICATES replicates;
    that of the balanced error, from all of them.

    Example:
        >>> boot = bootstrap_fit(intervals, fit.tau, (0, 4), replicates=1000, seed=0)
        >>> boot.tau_ci, boot.ci("balanced_error", "after")
    """
    import torch

    data = intervals.in_class_order()
    sweep = Sweep(data, tau_range)
    support, starts, labels = data.support, data.starts, torch.from_numpy(data.labels)
    slots = Slots(support, stratified)
    groups = None if train_counts is None else shot_groups(np.asarray(train_counts))
    size = block or sweep.columns_per_block()
    blocks = [range(a, min(a + size, replicates)) for a in range(0, replicates, size)]
    rank, world = (context.rank, context.world) if context is not None and context.active else (0, 1)
    fixed = torch.from_numpy(np.stack([data.right_at(0.0), sweep.right_at([tau])[:, 0].numpy()], 0)
                             .astype(np.float64))
    # float32 counts and sums where they are exact (every sum an integer well below 2**24): half the memory traffic
    exact_single = stratified and sweep.exact and max(sweep.unit, slots.size) <= SINGLE_EXACT
    dtype = torch.float32 if exact_single else torch.float64
    fixed_sums = class_matrix(fixed.numpy(), data.labels, support.size, dtype)
    live = torch.from_numpy(sweep.live)
    members = class_matrix(np.ones((1, live.numel()), dtype=bool), data.labels[sweep.live], support.size, dtype)
    sample_weight = sweep.sample_weight.to(dtype)
    unit_weights = bool((sample_weight == 1).all())  # equal class supports: the mass is the counts themselves
    sweep.original_errors([tau])  # computes the original curve once, before any worker reads it
    sweep.bucket_matrix(dtype)  # likewise the sparse matrix of the sweep's buckets

    def one_block(numbers):
        counts = slots.counts(seed, numbers, dtype, reuse=True)  # N x R: a column per replicate
        if stratified:
            row_support = np.broadcast_to(support, (len(numbers), support.size))
            mass = counts if unit_weights else counts * sample_weight[:, None]
            exact, units = sweep.exact, np.full(len(numbers), sweep.unit)
        else:
            row_support = class_sums(counts.numpy(), starts, support).astype(np.int64)
            row_weights, exact = _row_weights(row_support)
            mass = counts * torch.from_numpy(row_weights).T[labels]
            units = (row_weights * row_support).sum(1)
        taus, _, scores = sweep.fit(mass, exact)
        at_fixed = at_fixed_sums(fixed_sums, counts, support.size)
        refit = np.full((len(numbers), len(SUMMARIES)), np.nan)
        original = refit.copy()
        refit[:, 0], original[:, 0] = 1.0 - scores / units, sweep.original_errors(taus)
        if numbers.start < OPTIMISM_REPLICATES:
            # only the samples right somewhere in the range can be right at a replicate's tau
            right = sweep.right_at(taus, sweep.live).to(dtype)
            original[:, 1:] = summaries((members @ right).T.numpy(), support, groups)[:, 1:]
            right.mul_(counts.index_select(0, live))
            refit[:, 1:] = summaries((members @ right).T.numpy(), row_support, groups)[:, 1:]
        return (np.asarray(numbers), taus, summaries(at_fixed[0], row_support, groups),
                summaries(at_fixed[1], row_support, groups), refit, original)

    mine = in_workers(one_block, [blocks[index] for index in range(rank, len(blocks), world)])
    parts = [mine] if world == 1 else context.gather(mine)
    merged = [np.concatenate([piece[k] for part in parts for piece in part]) for k in range(6)]
    order = np.argsort(merged[0])
    _, taus, before, at_fitted, refit, original_refit = (m[order] for m in merged)
    correct = class_sums(fixed.T.numpy(), starts, support)
    return TauBootstrap(replicates, seed, level, float(tau), taus, before, at_fitted, refit, original_refit,
                        stratified, support, correct[0], correct[1], groups)


def in_workers(work, blocks: list) -> list:
    """[work(block) for block in blocks], on as many threads as torch may use (each single-threaded, as the
    interval pass's workers are: see engine.threads); the results in order."""
    from ..engine.threads import block_workers

    workers = block_workers("cpu", len(blocks))
    if workers <= 1:
        return [work(block) for block in blocks]
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(workers, thread_name_prefix="lacal-bootstrap") as pool:
        return list(pool.map(work, blocks))


def at_fixed_sums(fixed_sums, counts, classes: int) -> np.ndarray:
    """K x R x C: per fixed mask, replicate and class, the summed counts of the class's samples in the mask."""
    sums = (fixed_sums @ counts).numpy().astype(np.float64)
    return sums.reshape(-1, classes, counts.shape[1]).transpose(0, 2, 1)


@single_threaded
def bootstrap_fixed(hits: np.ndarray, labels, num_classes: int, replicates: int = DEFAULT_REPLICATES,
                    seed: int = 0, level: float = DEFAULT_LEVEL, stratified: bool = True, train_counts=None,
                    context=None, block: int = 64) -> TauBootstrap:
    """Bootstrap replicates of the errors of two fixed predictions (`hits`: N x 2, whether each sample is right
    before and after an adjustment whose tau was fixed elsewhere), resampled as `bootstrap_fit` does: intervals of
    the balanced error before, after and of the change, the shot groups and every class (no refit, no optimism).
    Under torchrun (`context`) each rank passes its own samples (`hits`, `labels`); they are gathered in rank order.

    Example:
        >>> boot = bootstrap_fixed(hits, labels, 1000, replicates=1000)
        >>> boot.ci("balanced_error", "change")
    """

    if context is not None and context.active:
        parts = context.gather((np.asarray(hits), np.asarray(labels)))
        hits, labels = (np.concatenate([p[k] for p in parts]) for k in range(2))
    labels = np.asarray(labels, dtype=np.int64)
    order = class_order(labels)
    labels, fixed = labels[order], np.asarray(hits, dtype=bool)[order].T
    support = np.bincount(labels, minlength=num_classes)
    slots = Slots(support, stratified)
    starts = np.concatenate([[0], np.cumsum(support)[:-1]]).astype(np.int64)
    groups = None if train_counts is None else shot_groups(np.asarray(train_counts))
    fixed_sums = class_matrix(fixed, labels, num_classes)
    blocks = [range(a, min(a + block, replicates)) for a in range(0, replicates, block)]
    rank, world = (context.rank, context.world) if context is not None and context.active else (0, 1)
    mine = []
    for index in range(rank, len(blocks), world):
        numbers = blocks[index]
        counts = slots.counts(seed, numbers)
        row_support = support if stratified else class_sums(counts.numpy(), starts, support)
        at_fixed = at_fixed_sums(fixed_sums, counts, num_classes)
        mine.append((np.asarray(numbers), summaries(at_fixed[0], row_support, groups),
                     summaries(at_fixed[1], row_support, groups)))
    parts = [mine] if world == 1 else context.gather(mine)
    merged = [np.concatenate([piece[k] for part in parts for piece in part]) for k in range(3)]
    order = np.argsort(merged[0])
    before, after = merged[1][order], merged[2][order]
    correct = class_sums(fixed.T.astype(np.float64), starts, support)
    nothing = np.zeros_like(before)
    return TauBootstrap(replicates, seed, level, float("nan"), np.zeros(0), before, after, nothing, nothing,
                        stratified, support, correct[0], correct[1], groups, refitted=False)


def class_matrix(masks: np.ndarray, labels: np.ndarray, classes: int, dtype=None):
    """A sparse (K * C) x N matrix (float64, or `dtype`) whose product with counts (N x R) gives, for each of the
    K masks (K x N) and each class, the summed counts of the class's samples inside the mask."""
    import torch

    mask, sample = np.nonzero(masks)
    rows = torch.from_numpy(mask * classes + labels[sample])
    shape = (masks.shape[0] * classes, masks.shape[1])
    entries = torch.sparse_coo_tensor(torch.stack([rows, torch.from_numpy(sample)]),
                                      torch.ones(sample.size, dtype=dtype or torch.float64), shape,
                                      check_invariants=True)
    return entries.coalesce()


def _row_weights(row_support: np.ndarray):
    """Per-row class weights (R x C) and whether all of them are exact integers."""
    rows = [class_weights(row) for row in row_support]
    if all(exact for _, exact, _ in rows):
        return np.stack([w for w, _, _ in rows]), True
    with np.errstate(divide="ignore"):
        return np.where(row_support > 0, 1.0 / np.maximum(row_support, 1), 0.0), False


@single_threaded
def cross_fit(intervals: SampleIntervals, tau_range, folds: int = 5, seed: int = 0) -> CrossFit:
    """The K-fold cross-fitted evaluation of the exact balanced-error fit: stratified folds (each class's samples
    dealt out in a random order fixed by `seed`), tau fitted on the other K - 1 folds, each sample scored at the tau
    fitted without it.

    Example:
        >>> cross_fit(intervals, (0, 4), folds=5).balanced_error
    """
    import torch

    data = intervals.in_class_order()
    sweep = Sweep(data, tau_range)
    support, starts, labels = data.support, data.starts, torch.from_numpy(data.labels)
    fold = Slots(support, True).folds(seed, folds, data.labels)
    counts = torch.from_numpy(np.stack([(fold != k) for k in range(folds)], 1).astype(np.float64))  # N x K
    row_weights, exact = _row_weights(class_sums(counts.numpy(), starts, support).astype(np.int64))
    taus, _, _ = sweep.fit(counts * torch.from_numpy(row_weights).T[labels], exact)
    held_out = sweep.right_at(taus).numpy() & (fold[:, None] == np.arange(folds)[None, :])
    correct = class_sums(held_out.astype(np.int64), starts, support).sum(0)
    return CrossFit(folds, seed, taus, ClassEvaluation(support, correct))


@single_threaded
def one_se_tau(intervals: SampleIntervals, tau_range, standard_error: float):
    """The one-standard-error rule: among the taus whose balanced error is within `standard_error` of the minimum,
    the one nearest tau = 1 (tau = 1 itself when it qualifies, else the midpoint of the nearest qualifying segment).
    Returns (tau, the run of qualifying segments around it)."""

    sweep = Sweep(intervals, tau_range)
    mass, unit = sweep.sample_weight.double(), sweep.unit
    errors = 1.0 - sweep.curve(mass[:, None])[0].numpy() / unit
    errors = np.where(representable(sweep.points), errors, np.inf)
    scored = {t: 1.0 - float(mass.numpy()[intervals.hits[t]].sum()) / unit for t in sweep.scored}
    threshold = min([errors.min(), *scored.values()]) + standard_error + 1e-12
    qualifying = errors <= threshold
    left, right = sweep.points[:-1], sweep.points[1:]

    def run_around(k: int):
        first = last = k
        while first > 0 and qualifying[first - 1]:
            first -= 1
        while last < qualifying.size - 1 and qualifying[last + 1]:
            last += 1
        return float(left[first]), float(right[last])

    if 1.0 in scored and scored[1.0] <= threshold:
        inside = np.flatnonzero(qualifying & (left <= 1.0) & (1.0 <= right))
        return 1.0, (run_around(int(inside[0])) if inside.size else (1.0, 1.0))
    if not qualifying.any():  # only directly scored points qualify
        best = min(scored, key=lambda t: (scored[t], abs(t - 1.0)))
        return float(best), (float(best), float(best))
    distance = np.where(right < 1, 1 - right, np.where(left > 1, left - 1, 0.0))
    candidates = np.flatnonzero(qualifying)
    k = int(candidates[np.lexsort((left[candidates], distance[candidates]))[0]])
    if left[k] < 1.0 < right[k]:
        return 1.0, run_around(k)
    return float(left[k] + (right[k] - left[k]) / 2), run_around(k)


def check_tau_rule(rule: str) -> str:
    if rule not in TAU_RULES:
        raise OptionError(f"unknown tau rule {rule!r}; use one of {', '.join(TAU_RULES)}", "tau_rule")
    return rule


# ------------------------------------------------------------------------------------------------ a fit, assessed


@dataclass(frozen=True, eq=False)
class FitIntervals:
    """What `lacal.fit(..., bootstrap=N, folds=K, tau_rule=...)` adds to a fit.

    Attributes:
        bootstrap: the `TauBootstrap` (None without `bootstrap`, unless the one-SE rule needed it).
        cross_fit: the `CrossFit` (None without `folds`).
        tau_rule: "min" (the exact minimiser) or "one-se".
        tau_min: the exact minimiser's tau (the fitted tau under "min").
        in_sample: the balanced error at the fitted tau on the validation data that chose it.
        warnings: classes with very few samples, a tau that the data do not pin down.
    """

    bootstrap: TauBootstrap | None
    cross_fit: CrossFit | None
    tau_rule: str
    tau_min: float
    in_sample: float
    warnings: tuple[str, ...] = ()

    def to_dict(self) -> dict:
        result = {"tau_rule": self.tau_rule, "tau_min": self.tau_min}
        if self.bootstrap is not None:
            result.update(self.bootstrap.to_dict())
        if self.cross_fit is not None:
            result["balanced_error_cross_fitted"] = self.cross_fit.balanced_error
            result["cross_fit"] = self.cross_fit.to_dict()
        return result


def check_options(replicates, level, seed, folds, tau_rule, support) -> None:
    """Refuse bad options with one line naming the parameter."""
    from .resampling import check_folds, check_level, check_replicates, check_seed

    if replicates is not None:
        check_replicates(replicates)
    check_level(level)
    check_seed(seed)
    if folds is not None:
        check_folds(folds, support)
    check_tau_rule(tau_rule)


def assess_fit(source, tau_fit, priors, *, replicates: int | None = None, seed: int = 0,
               level: float = DEFAULT_LEVEL, folds: int | None = None, tau_rule: str = "min",
               stratified: bool = True, train_counts=None, device="cpu", context=None):
    """Bootstrap intervals, a cross-fitted estimate and the tau rule for an exact balanced-error `tau_fit` made
    with `keep_intervals=True` on `source` (this rank's share of the logits under torchrun).

    Returns:
        (the `TauFit`, with the one-SE rule's tau when `tau_rule` is "one-se"; a `FitIntervals`).

    Example:
        >>> fit = fit_tau(logits, labels, priors, keep_intervals=True)
        >>> fit, intervals = assess_fit(logits, fit, priors, replicates=1000, folds=5)
    """
    from dataclasses import replace

    from ..core.offsets import as_priors_array
    from ..data.readers import LogitsSource, source_from_array

    if tau_fit.metric != "balanced-error" or tau_fit.search != "exact":
        given = [name for name, value in (("bootstrap", replicates is not None), ("folds", folds is not None),
                                          ("tau_rule", tau_rule != "min")) if value]
        raise OptionError("intervals, cross-fitting and the tau rule go with the exact balanced-error search "
                          "(`search` exact, `metric` balanced-error)", (given or ["bootstrap"])[0])
    check_options(replicates, level, seed, folds, tau_rule, tau_fit.before.support)
    source = source if isinstance(source, LogitsSource) else source_from_array(source)
    log_priors = np.log(as_priors_array(priors))
    tau_range = tau_fit.tau_range
    points = sorted({0.0, 1.0, *tau_range})
    intervals = sample_intervals(source, tau_fit.intervals, log_priors, points, device, context)
    tau_min = tau_fit.tau
    boot = None
    if replicates is not None or tau_rule == "one-se":
        boot = bootstrap_fit(intervals, tau_fit.tau, tau_range, replicates or DEFAULT_REPLICATES, seed, level,
                             stratified, train_counts, context)
    if tau_rule == "one-se":
        tau, run = one_se_tau(intervals, tau_range, boot.standard_error)
        if tau != tau_fit.tau:
            correct = np.bincount(intervals.labels[intervals.right_at(tau)], minlength=intervals.num_classes)
            tau_fit = replace(tau_fit, tau=tau, interval=run, after=ClassEvaluation(intervals.support, correct))
            # the replicates' refits do not depend on the fitted tau: only the errors at it change, and the same
            # draws (same seed, same samples) give them without refitting (every rank holds all the samples here)
            hits = np.stack([intervals.right_at(0.0), intervals.right_at(tau)], 1)
            fixed = bootstrap_fixed(hits, intervals.labels, intervals.num_classes, replicates or DEFAULT_REPLICATES,
                                    seed, level, stratified, train_counts)
            boot = replace(boot, tau=float(tau), at_fitted=fixed.at_fitted, correct_after=fixed.correct_after)
    crossed = None if folds is None else cross_fit(intervals, tau_range, folds, seed)
    result = FitIntervals(boot, crossed, tau_rule, float(tau_min), tau_fit.after.balanced_error,
                          tuple(interval_warnings(boot, tau_range)))
    return replace(tau_fit, intervals=None), result


def interval_warnings(boot: TauBootstrap | None, tau_range) -> list[str]:
    """Warnings with numbers: classes with fewer than FEW_SAMPLES validation samples and how wide their per-class
    intervals are; a tau interval so wide that the data do not pin tau down."""
    if boot is None:
        return []
    out = []
    few = (boot.support > 0) & (boot.support < FEW_SAMPLES)
    if few.any():
        widths = np.diff(boot.per_class_ci("after"), axis=1)[few, 0]
        out.append(f"{int(few.sum())} class(es) have fewer than {FEW_SAMPLES} validation samples (as few as "
                   f"{int(boot.support[few].min())}); their per-class {100 * boot.level:g}% intervals are "
                   f"{100 * np.median(widths):.0f} points wide (median), so their errors say little")
    interval = boot.tau_ci
    low, high = tau_range
    if interval is not None and interval[1] - interval[0] > (high - low) / 2:
        out.append(f"the {100 * boot.level:g}% interval of tau, {interval[0]:.2f} to {interval[1]:.2f}, spans more "
                   f"than half the searched range [{low:g}, {high:g}]: this validation set does not pin tau down "
                   "(the fit is not identified); use more validation data, or tau = 1")
    return out


@single_threaded
def curve_band(intervals: SampleIntervals, taus, tau_range, replicates: int = DEFAULT_REPLICATES, seed: int = 0,
               level: float = DEFAULT_LEVEL, stratified: bool = True):
    """The pointwise percentile band of the balanced error at each tau of `taus` (inside `tau_range`) over
    bootstrap replicates (resampled as `bootstrap_fit` does): (low, high) arrays, for drawing around the curve.

    Example:
        >>> low, high = curve_band(intervals, np.linspace(0, 4, 401), (0, 4), replicates=1000)
    """
    import torch

    data = intervals.in_class_order()
    sweep = Sweep(data, tau_range)
    taus = np.asarray(taus, dtype=np.float64)
    at = np.clip(np.searchsorted(sweep.points, taus, side="right") - 1, 0, sweep.segments - 1)
    slots = Slots(data.support, stratified)
    weight = sweep.sample_weight.double()
    size = sweep.columns_per_block()
    errors = []
    for start in range(0, replicates, size):
        counts = slots.counts(seed, range(start, min(start + size, replicates)))
        if stratified:
            mass, units = counts * weight[:, None], sweep.unit
        else:
            row_support = class_sums(counts.numpy(), data.starts, data.support).astype(np.int64)
            row_weights, _ = _row_weights(row_support)
            mass = counts * torch.from_numpy(row_weights).T[torch.from_numpy(data.labels)]
            units = (row_weights * row_support).sum(1)[:, None]
        errors.append(1.0 - sweep.curve(mass)[:, torch.from_numpy(at)].numpy() / units)
    errors = np.concatenate(errors)
    return tuple(np.quantile(errors, [(1 - level) / 2, (1 + level) / 2], axis=0))


def replicate_counts(labels, num_classes: int, seed: int, replicates, stratified: bool = True) -> np.ndarray:
    """R x N: how often each sample (in the given, global order) is drawn in each replicate number of
    `replicates`: the weights `bootstrap_fit` and `bootstrap_fixed` use, for reproducing a replicate.

    Example:
        >>> counts = replicate_counts(labels, 1000, seed=0, replicates=[0, 1, 2])
        >>> again = np.repeat(np.arange(len(labels)), counts[0])  # replicate 0's samples
    """
    labels = np.asarray(labels, dtype=np.int64)
    order = class_order(labels)
    drawn = Slots(np.bincount(labels, minlength=num_classes), stratified).counts(seed, list(replicates)).T.numpy()
    out = np.zeros_like(drawn, dtype=np.int64)
    out[:, order] = drawn.astype(np.int64)
    return out
