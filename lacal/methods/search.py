"""Finding tau: the exact minimiser of the balanced (or worst-class) error over a range, or the best of a grid.

Each validation sample is classified correctly on one open tau-interval (possibly empty; see
`scoring.interval_pass`). The metric is therefore piecewise constant in tau, changing only at interval endpoints:
sorting the endpoints inside the range splits it into segments, and a cumulative sum over the sorted endpoints gives
each segment's metric. Among optimal segments (adjacent ones merged into runs) the run nearest tau = 1 wins and its
midpoint is returned.

Balanced error is summed in exact integer arithmetic (each class weighted by lcm(supports) / support) whenever that
fits in int64, which it does for the usual class-balanced validation sets; otherwise in float64, and segments within
1e-12 of the best are taken as tied. Worst-class error is exact: a binary search over the candidate values j / n_c.
"""

from __future__ import annotations

import contextlib
import math
import sys
from dataclasses import dataclass, field, replace

import numpy as np

from ..errors import OptionError
from ..core.metrics import ClassEvaluation

METRICS = ("balanced-error", "worst-class-error")
SEARCHES = ("exact", "grid")
DEFAULT_TAU_RANGE = (0.0, 4.0)
DEFAULT_GRID_SIZE = 401
FLOAT_TIE_TOLERANCE = 1e-12


class Measured:
    """What a tau fit (single- or multi-label) was measured on: the samples and classes of its `before`."""

    @property
    def num_samples(self) -> int:
        return self.before.num_samples

    @property
    def num_classes(self) -> int:
        return self.before.num_classes


@dataclass(frozen=True)
class TauFit(Measured):
    """The fitted tau, the open interval around it on which the metric takes the same optimal value, and the
    validation evaluations at tau = 0 (`before`), tau = 1 (`at_one`) and the fitted tau (`after`)."""

    tau: float
    interval: tuple[float, float]
    metric: str
    search: str
    tau_range: tuple[float, float]
    before: ClassEvaluation
    at_one: ClassEvaluation
    after: ClassEvaluation
    grid_taus: np.ndarray | None = field(default=None, repr=False)
    grid_values: np.ndarray | None = field(default=None, repr=False)
    intervals: object = field(default=None, repr=False, compare=False)  # engine.passes.IntervalStats, when kept

    def to_dict(self) -> dict:
        result = {"tau": self.tau, "tau_interval": list(self.interval), "metric": self.metric,
                  "search": self.search, "tau_range": list(self.tau_range),
                  "num_classes": self.num_classes, "num_samples": self.num_samples}
        for suffix, evaluation in (("before", self.before), ("tau1", self.at_one), ("after", self.after)):
            for key, value in evaluation.to_dict().items():
                result[f"{key}_{suffix}"] = value
        result["classes_without_samples"] = self.before.classes_without_samples
        return result


def check_tau_range(tau_range) -> tuple[float, float]:
    try:
        lo, hi = (float(v) for v in tau_range)
    except (TypeError, ValueError):
        raise OptionError(f"expected two numbers LO,HI, got {tau_range!r}", "tau_range") from None
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise OptionError(f"the range must be finite, got {lo:g},{hi:g}", "tau_range")
    if lo >= hi:
        kind = "empty" if lo == hi else "reversed"
        raise OptionError(f"the range {lo:g},{hi:g} is {kind}; give LO < HI, for example 0,4", "tau_range")
    if hi - lo <= 1024 * sys.float_info.epsilon * max(1.0, abs(lo), abs(hi)):
        raise OptionError(f"the range {lo!r},{hi!r} is narrower than floating-point rounding; give a wider one",
                          "tau_range")
    return lo, hi


def fit_tau(logits, labels, priors, tau_range=DEFAULT_TAU_RANGE, search: str = "exact",
            metric: str = "balanced-error", grid_size: int = DEFAULT_GRID_SIZE, device="cpu",
            rows: int | None = None, progress=None, memory_budget: int | None = None, context=None,
            keep_intervals: bool = False) -> TauFit:
    """Find the tau in `tau_range` that minimises `metric` for argmax(logits - tau * log(pi)) on (logits, labels).

    `logits`: N x C array, tensor or LogitsSource; `labels`: N class ids; `priors`: C priors or counts, or a Priors.
    `search='exact'` returns a true minimiser over the whole range; `'grid'` the best of `grid_size` evenly spaced
    values. Ties go to the optimum nearest tau = 1. `rows` (rows per block), `memory_budget` (bytes) and
    `progress` (called with the rows done) go to the scorer. Under torch.distributed, `context` (a
    distributed.Context) combines every rank's share of the samples; the result is that of one process with all.
    `keep_intervals`: keep this rank's per-sample intervals in `TauFit.intervals` (for `bootstrap`).
    On a CPU it uses torch's thread count (OMP_NUM_THREADS, torch.set_num_threads) as workers over blocks.
    """
    import torch

    from ..engine.threads import single_threaded_ops

    # on a CPU: many small operations, where torch's own threads would mostly wait for each other (see parallel);
    # the interval pass spreads its blocks over that many threads instead
    on_cpu = torch.device(device).type == "cpu"
    with single_threaded_ops() if on_cpu else contextlib.nullcontext():
        fit = _fit_tau(logits, labels, priors, tau_range, search, metric, grid_size, device, rows, progress,
                       memory_budget, context)
    return fit if keep_intervals else replace(fit, intervals=None)


def _fit_tau(logits, labels, priors, tau_range, search, metric, grid_size, device, rows, progress, memory_budget,
             context) -> TauFit:
    import torch

    from ..core.offsets import as_priors_array
    from ..data.readers import LogitsSource, source_from_array
    from ..engine.passes import interval_pass

    if metric not in METRICS:
        raise OptionError(f"unknown metric {metric!r}; use one of {', '.join(METRICS)}", "metric")
    if search not in SEARCHES:
        raise OptionError(f"unknown search {search!r}; use one of {', '.join(SEARCHES)}", "search")
    if search == "grid" and grid_size < 2:
        raise OptionError(f"the grid needs at least 2 points, got {grid_size}", "grid_size")
    lo_tau, hi_tau = check_tau_range(tau_range)
    log_priors = np.log(as_priors_array(priors))
    device = torch.device(device)

    # tau = 0, 1 and the range's ends are also scored directly: exact ties in the logits (common in float16 and
    # bfloat16) can make a single point better than the open segments around it, and argmax decides those ties.
    special = sorted({0.0, 1.0, lo_tau, hi_tau})
    source = logits if isinstance(logits, LogitsSource) else source_from_array(logits)
    from ..engine.distributed import Context

    context = context or Context()
    failure, stats = None, None
    try:  # a rank that fails here must not leave the others waiting in the sums below
        stats = interval_pass(source, labels, log_priors, special, device, rows, progress, memory_budget)
    except Exception as exc:  # noqa: BLE001  (re-raised, on every rank, by agree)
        failure = exc
    context.agree(failure)
    total = context.sum(np.stack([stats.support] + [stats.points[t] for t in special]))
    global_support = total[0]
    direct = {t: ClassEvaluation(global_support, total[k + 1]) for k, t in enumerate(special)}
    points = {t: e for t, e in direct.items() if lo_tau <= t <= hi_tau}
    support = torch.as_tensor(global_support, device=device)
    weights, exact_sums = balanced_weights(support)
    grid_taus = grid_values = None
    if search == "exact" and context.active and metric == "balanced-error":
        tau, interval, best = _exact_distributed(context, stats.lo, stats.hi, stats.labels, lo_tau, hi_tau, weights,
                                                 exact_sums)
    elif search == "exact":
        lo, hi, classes = stats.lo, stats.hi, stats.labels
        if context.active:  # the worst-class error needs every class's counts per segment: gather the intervals
            parts = context.gather((lo.cpu().numpy(), hi.cpu().numpy(), classes.cpu().numpy()))
            lo, hi, classes = (torch.as_tensor(np.concatenate([p[k] for p in parts]), device=device)
                               for k in range(3))
        tau, interval, best = _exact(lo, hi, classes, support, lo_tau, hi_tau, metric, weights, exact_sums)
        point_scores = {t: _score(e, metric, weights) for t, e in points.items()}
        winner = max(point_scores, key=lambda t: (point_scores[t], -abs(t - 1.0)))
        if better(point_scores[winner], best, exact_sums):
            tau, interval = winner, (winner, winner)
    else:
        grid_taus, grid_values, tau, interval = _grid(stats.lo, stats.hi, stats.labels, support, lo_tau, hi_tau,
                                                      grid_size, metric, weights, exact_sums, points, context)
    if tau in direct:
        after = direct[tau]
    else:
        local = _evaluate_inside(source, stats, tau, log_priors, device)
        after = ClassEvaluation(global_support, context.sum(local.correct))
        # Guard against float rounding between the interval arithmetic and argmax on extreme logits: never return
        # a tau that scores worse than one of the points scored directly.
        fallback = min(points, key=lambda t: (points[t].metric(metric), abs(t - 1.0)))
        if points[fallback].metric(metric) < after.metric(metric) - FLOAT_TIE_TOLERANCE:
            tau, interval, after = fallback, (fallback, fallback), points[fallback]
    return TauFit(tau=float(tau), interval=(float(interval[0]), float(interval[1])), metric=metric, search=search,
                  tau_range=(lo_tau, hi_tau), before=direct[0.0], at_one=direct[1.0], after=after,
                  grid_taus=grid_taus, grid_values=grid_values, intervals=stats)


def fit_tau_intervals(lo, hi, labels, num_classes: int, tau_range=DEFAULT_TAU_RANGE,
                      metric: str = "balanced-error") -> TauFit:
    """The exact search on each sample's open tau-interval of correct classification alone (`lo`, `hi` and the
    label, as `engine.passes.interval_pass` gives them), without the logits: 3 numbers a sample instead of C, so
    intervals gathered from many places (a metric's states across processes) can be searched at once.

    A sample counts as right at tau where its open interval holds tau. `fit_tau` also settles exact ties in the
    logits at tau = 0 and 1 with argmax itself; here, without logits, it cannot, so the two differ only when the
    logits hold exact ties.

    Returns:
        A `TauFit`, as `fit_tau` gives (search "exact").
    """
    import torch

    if metric not in METRICS:
        raise OptionError(f"unknown metric {metric!r}; use one of {', '.join(METRICS)}", "metric")
    lo_tau, hi_tau = check_tau_range(tau_range)
    lo, hi = (torch.as_tensor(v, dtype=torch.float64).flatten() for v in (lo, hi))
    labels = torch.as_tensor(labels, dtype=torch.int64).flatten()
    support = torch.bincount(labels, minlength=num_classes)
    weights, exact_sums = balanced_weights(support)
    tau, interval, _ = _exact(lo, hi, labels, support, lo_tau, hi_tau, metric, weights, exact_sums)

    def at(t: float) -> ClassEvaluation:
        right = (lo < t) & (t < hi)
        return ClassEvaluation(support.numpy(), torch.bincount(labels[right], minlength=num_classes).numpy())

    return TauFit(tau=float(tau), interval=(float(interval[0]), float(interval[1])), metric=metric, search="exact",
                  tau_range=(lo_tau, hi_tau), before=at(0.0), at_one=at(1.0), after=at(float(tau)))


AMBIGUOUS_GAP = 1e-6


def _evaluate_inside(source, stats, tau: float, log_priors, device) -> ClassEvaluation:
    """Per-class counts at a tau inside the range: a sample is right where its interval holds tau. Samples with an
    interval end within a hair of tau (where float rounding could tip argmax either way) are scored directly."""
    import torch

    from ..engine.passes import compute_dtype

    inside = (stats.lo < tau) & (tau < stats.hi)
    near = ((stats.lo - tau).abs() < AMBIGUOUS_GAP * (1 + abs(tau))) | \
        ((stats.hi - tau).abs() < AMBIGUOUS_GAP * (1 + abs(tau)))
    shift = torch.as_tensor(-tau * np.asarray(log_priors), dtype=compute_dtype(source), device=device)
    for index in near.nonzero().flatten().tolist():
        row = source.rows(index, index + 1).to(device=device, dtype=shift.dtype)
        inside[index] = bool((row + shift).argmax(1)[0] == stats.labels[index])
    correct = torch.bincount(stats.labels[inside], minlength=int(stats.support.shape[0]))
    return ClassEvaluation(stats.support, correct.cpu().numpy())


def _score(evaluation: ClassEvaluation, metric: str, weights):
    """How good an evaluation is, in the units the sweep uses (higher is better): the weighted count of correct
    samples for balanced error, minus the worst-class error for worst-class error."""
    if metric == "balanced-error":
        correct = evaluation.correct
        values = weights.cpu().numpy()
        return int((correct.astype(np.int64) * values).sum()) if values.dtype.kind == "i" else \
            float((correct * values).sum())
    return -evaluation.worst_class_error


def better(candidate, best, exact: bool) -> bool:
    if isinstance(candidate, int) and isinstance(best, int):
        return candidate > best
    return candidate > best + FLOAT_TIE_TOLERANCE * max(1.0, abs(float(best)))


# ------------------------------------------------------------------------------------------------ class weights


def balanced_weights(support):
    """Per-class integer weights lcm / n_c when the sums fit in int64 (exact), else float64 weights 1 / n_c."""
    import torch

    sizes = sorted(set(support[support > 0].tolist()))
    classes = max(1, int((support > 0).sum()))
    common = 1
    for size in sizes:
        common = math.lcm(common, int(size))
        if common > (1 << 62) // classes:
            weights = torch.where(support > 0, 1.0 / support.clamp(min=1).double(), 0.0)
            return weights, False
    weights = torch.where(support > 0, common // support.clamp(min=1), 0)
    return weights.to(torch.int64), True


def best_mask(values, exact: bool):
    best = values.max()
    if exact:
        return values == best
    return values >= best - FLOAT_TIE_TOLERANCE * max(1.0, float(best))


# --------------------------------------------------------------------------------------------------- exact search


def _exact(lo, hi, labels, support, lo_tau: float, hi_tau: float, metric: str, weights, exact: bool):
    """The optimal run of open segments: (its midpoint, the run, the best score in `_score`'s units)."""
    import torch

    keep = (lo < hi) & (lo < hi_tau) & (hi > lo_tau)
    starts = lo[keep].clamp(min=lo_tau)
    ends = hi[keep].clamp(max=hi_tau)
    classes = labels[keep]
    bounds = torch.tensor([lo_tau, hi_tau], dtype=torch.float64, device=lo.device)
    points, where = torch.unique(torch.cat([bounds, starts, ends]), sorted=True, return_inverse=True)
    count = starts.numel()
    start_at, end_at = where[2:2 + count], where[2 + count:]
    segments = points.numel() - 1
    usable = representable(points)
    if metric == "balanced-error":
        step = torch.zeros(segments + 1, dtype=weights.dtype, device=lo.device)
        step.index_add_(0, start_at, weights[classes]).index_add_(0, end_at, -weights[classes])
        values = step.cumsum(0)[:segments]
        values = torch.where(usable, values, values.min() - 1)
        optimal = best_mask(values, exact) & usable
        best = values.max().item()
    else:
        optimal, worst = _worst_class_optimal(start_at, end_at, classes, support, segments, usable)
        best = -worst
    tau, run = choose(points.cpu().numpy(), optimal.cpu().numpy())
    return tau, run, best


HISTOGRAM_BUCKETS = 4096


def _exact_distributed(context, lo, hi, labels, lo_tau: float, hi_tau: float, weights, exact: bool,
                       buckets: int = HISTOGRAM_BUCKETS):
    """The exact balanced-error search over samples spread across ranks, without gathering every interval end.

    Each rank adds its interval ends into `buckets` equal-width buckets of the tau range: the summed change of the
    score in each bucket, and the summed starts alone. The score on the segment just before a bucket's left edge is
    then known exactly (S_b), and no segment inside bucket b scores more than S_b plus its starts. Only buckets whose
    bound reaches the best known S_b can hold an optimal segment, so only the interval ends in those buckets are
    gathered, and the exact sweep runs over them, starting each run of such buckets from its S_b. The optimum, its
    run and the midpoint are those one process finds (see the proof sketch in docs/how-it-works.md, "Many processes").
    """
    import torch

    device = lo.device
    keep = (lo < hi) & (lo < hi_tau) & (hi > lo_tau)
    starts = lo[keep].clamp(min=lo_tau)
    ends = hi[keep]
    mass = weights[labels[keep]]
    edges = lo_tau + (hi_tau - lo_tau) / buckets * np.arange(buckets + 1)
    edges[-1] = hi_tau
    edge_tensor = torch.as_tensor(edges, dtype=torch.float64, device=device)

    def bucket(x):  # the same edges as the sweep: bucket b holds edges[b] <= x < edges[b + 1]
        return (torch.searchsorted(edge_tensor, x.contiguous(), right=True) - 1).clamp(0, buckets - 1)

    start_bucket = bucket(starts)
    inside = ends < hi_tau  # an end at or past the range's top changes no segment inside it
    end_bucket = bucket(ends[inside])
    change = torch.zeros(buckets, dtype=weights.dtype, device=device)
    change.index_add_(0, start_bucket, mass).index_add_(0, end_bucket, -mass[inside])
    rises = torch.zeros(buckets, dtype=weights.dtype, device=device).index_add_(0, start_bucket, mass)
    change, rises = context.sum(change), context.sum(rises)
    before = torch.cat([torch.zeros(1, dtype=change.dtype, device=device), change.cumsum(0)])  # S_0 .. S_B
    # S_b is the score of the segment around edge b, between the last interval end before it and the first at or
    # after it; it counts toward the known best only when a float lies strictly inside that segment.
    positions = torch.cat([starts, ends[inside]])
    at = torch.cat([start_bucket, end_bucket])
    last = torch.full((buckets,), -torch.inf, dtype=torch.float64, device=device)
    last.scatter_reduce_(0, at, positions, reduce="amax")
    first = torch.full((buckets,), torch.inf, dtype=torch.float64, device=device)
    first.scatter_reduce_(0, at, positions, reduce="amin")
    last, first = context.max(last), context.min(first)
    previous = torch.cummax(last, 0).values.clamp(min=lo_tau)  # the last end in buckets 0..b-1, for edge b
    following = torch.flip(torch.cummin(torch.flip(first, [0]), 0).values, [0]).clamp(max=hi_tau)
    following = torch.cat([following[1:], torch.tensor([hi_tau], dtype=torch.float64, device=device)])
    reachable = _representable_pairs(previous, following)  # for edges 1 .. B
    known = before[1:][reachable].max() if bool(reachable.any()) else before.min() - 1
    bound = before[:-1] + rises
    candidate = bound >= (known if exact else known - FLOAT_TIE_TOLERANCE * max(1.0, float(known)))
    chosen = candidate.cpu().numpy()
    local_events = []
    for position, weight, at in ((starts, mass, start_bucket), (ends[inside], -mass[inside], end_bucket)):
        take = candidate[at]
        local_events.append((position[take].cpu().numpy(), weight[take].cpu().numpy()))
    gathered = context.gather(local_events)
    positions = np.concatenate([part[k][0] for part in gathered for k in range(2)])
    deltas = np.concatenate([part[k][1] for part in gathered for k in range(2)])
    return _sweep_candidates(positions, deltas, chosen, before.cpu().numpy(), edges, exact)


def _sweep_candidates(positions, deltas, chosen, before, edges, exact: bool):
    """The exact sweep over the events of the candidate buckets (see _exact_distributed); `edges` are the bucket
    edges the events were placed with."""
    buckets = chosen.size
    points, values, real = [], [], []
    b = 0
    while b < buckets:
        if not chosen[b]:
            b += 1
            continue
        first = b
        while b < buckets and chosen[b]:
            b += 1
        left, right = edges[first], edges[b]
        inside = (positions >= left) & ((positions < right) if b < buckets else (positions <= right))
        unique, where = np.unique(positions[inside], return_inverse=True)
        real.extend(unique.tolist())
        step = np.zeros(unique.size, dtype=deltas.dtype)
        np.add.at(step, where, deltas[inside])
        run_points = np.concatenate([[left], unique[unique > left], [right]]) if unique.size else \
            np.array([left, right])
        score = before[first]
        run_values = []
        if unique.size and unique[0] == left:  # events exactly at the run's left edge
            score = score + step[0]
            step, unique = step[1:], unique[1:]
        run_values.append(score)
        for delta in step:
            score = score + delta
            run_values.append(score)
        if points and points[-1] == run_points[0]:
            points.pop()
        elif points:
            values.append(None)  # the gap between two runs of candidate buckets: never optimal
        points.extend(run_points.tolist())
        values.extend(run_values)
    edges_of = np.array(points, dtype=np.float64)
    for k, usable in enumerate(representable(edges_of)):
        if not usable:
            values[k] = None
    best = max(v for v in values if v is not None)
    if exact:
        optimal = np.array([v is not None and v == best for v in values])
    else:
        optimal = np.array([v is not None and v >= best - FLOAT_TIE_TOLERANCE * max(1.0, abs(float(best)))
                            for v in values])
    tau, run = choose(np.array(points, dtype=np.float64), optimal, np.array(sorted(set(real)), dtype=np.float64))
    return tau, run, best


def _representable_pairs(left, right):
    middle = left + (right - left) / 2
    return (left < middle) & (middle < right)


def representable(points):
    """Segments between consecutive points that hold a float strictly inside (a segment one float wide holds none,
    so no tau can reach its score)."""
    middle = points[:-1] + (points[1:] - points[:-1]) / 2
    return (points[:-1] < middle) & (middle < points[1:])


def _worst_class_optimal(start_at, end_at, classes, support, segments: int, usable=None):
    """Mask of the segments where the worst-class error is smallest, and that error, found by a binary search over
    its possible values j / n_c (exact integer arithmetic)."""
    import torch

    device = support.device
    key = torch.cat([classes, classes]) * (segments + 1) + torch.cat([start_at, end_at])
    delta = torch.cat([torch.ones_like(start_at), -torch.ones_like(end_at)])
    group_key, group_of = torch.unique(key, sorted=True, return_inverse=True)
    group_delta = torch.zeros(group_key.numel(), dtype=torch.int64, device=device).index_add_(0, group_of, delta)
    group_class = group_key // (segments + 1)
    group_at = group_key % (segments + 1)
    running = group_delta.cumsum(0)
    first = torch.ones_like(group_class, dtype=torch.bool)
    first[1:] = group_class[1:] != group_class[:-1]
    class_base = torch.zeros(support.numel(), dtype=torch.int64, device=device)
    class_base[group_class[first]] = (running - group_delta)[first]
    after = running - class_base[group_class]  # correct count of the class from segment group_at on
    before = after - group_delta
    supported = support > 0
    needed_classes = int(supported.sum())

    def satisfied(j: int, n: int):
        need = support - (j * support) // n  # correct samples each class needs for error <= j / n
        change = (after >= need[group_class]).long() - (before >= need[group_class]).long()
        ok = torch.zeros(segments + 1, dtype=torch.int64, device=device).index_add_(0, group_at, change)
        met = (int(((need <= 0) & supported).sum()) + ok.cumsum(0)[:segments]) == needed_classes
        return met if usable is None else met & usable

    sizes = sorted(set(support[supported].tolist()))
    candidates = sorted({(j / n, j, n) for n in sizes for j in range(n + 1)})
    low, high = 0, len(candidates) - 1  # the last candidate (error 1) is always satisfied
    while low < high:
        middle = (low + high) // 2
        if bool(satisfied(candidates[middle][1], candidates[middle][2]).any()):
            high = middle
        else:
            low = middle + 1
    return satisfied(candidates[low][1], candidates[low][2]), candidates[low][1] / candidates[low][2]


def choose(points: np.ndarray, optimal: np.ndarray, events: np.ndarray | None = None):
    """The midpoint of the run of optimal segments nearest tau = 1 (the lower run on a tie), and the run.
    `events`: the interval ends among `points` (default: all of them), where a midpoint would sit on a tie."""
    index = np.flatnonzero(optimal)
    breaks = np.flatnonzero(np.diff(index) > 1)
    first = index[np.r_[0, breaks + 1]]
    last = index[np.r_[breaks, index.size - 1]]
    left, right = points[first], points[last + 1]
    middle = left + (right - left) / 2
    usable = (left < middle) & (middle < right)  # a run one float wide has no float strictly inside it
    if usable.any():
        first, last, left, right, middle = first[usable], last[usable], left[usable], right[usable], middle[usable]
    distance = np.where(right < 1, 1 - right, np.where(left > 1, left - 1, 0.0))
    pick = np.lexsort((left, distance))[0]
    tau = middle[pick]
    at = int(np.searchsorted(points, tau))
    on_event = events is None or bool(np.isin(tau, events))
    if first[pick] < at <= last[pick] and points[at] == tau and on_event:  # the midpoint is an interval end inside
        tau = (points[at] + points[at + 1]) / 2  # the run: use the midpoint of the segment that starts there
    return float(tau), (float(left[pick]), float(right[pick]))


# ---------------------------------------------------------------------------------------------------- grid search

def _grid(lo, hi, labels, support, lo_tau: float, hi_tau: float, grid_size: int, metric: str, weights, exact: bool,
          points: dict, context=None):
    """Evaluate the metric at every grid point at once: correct[g, c] counts the samples of class c whose interval
    holds grid point g (a run of grid points per sample, added up with a difference array per class). Grid points that were scored directly (`points`: tau -> ClassEvaluation) use those counts,
    which settle exact ties the way argmax does."""
    import torch

    device = lo.device
    taus = torch.linspace(lo_tau, hi_tau, grid_size, dtype=torch.float64, device=device)
    taus[0], taus[-1] = lo_tau, hi_tau
    # a sample is right on the grid points strictly inside its interval: a contiguous run [first, stop)
    first = torch.searchsorted(taus, lo.contiguous(), right=True)
    stop = torch.searchsorted(taus, hi.contiguous(), right=False)
    keep = first < stop
    classes = support.numel()
    steps = torch.zeros(classes * (grid_size + 1), dtype=torch.int64, device=device)
    ones = torch.ones(int(keep.sum()), dtype=torch.int64, device=device)
    row = labels[keep] * (grid_size + 1)
    steps.index_add_(0, row + first[keep], ones).index_add_(0, row + stop[keep], -ones)
    correct = steps.view(classes, grid_size + 1).cumsum(1)[:, :grid_size].T.contiguous()
    if context is not None and context.active:
        correct = context.sum(correct)
    for tau, evaluation in points.items():
        near = torch.isclose(taus, torch.tensor(tau, dtype=torch.float64, device=device), rtol=0, atol=1e-12)
        for g in near.nonzero().flatten().tolist():
            taus[g] = tau
            correct[g] = torch.as_tensor(evaluation.correct, device=device)
    supported = support > 0
    if metric == "balanced-error":
        score = (correct * weights[None, :]).sum(1)
        optimal = best_mask(score, exact)
        values = 1.0 - (correct[:, supported].double() / support[supported].double()).mean(1)
    else:
        errors = (support[supported] - correct[:, supported]).double() / support[supported].double()
        values = errors.max(1).values
        optimal = values == values.min()
    taus_np, optimal_np = taus.cpu().numpy(), optimal.cpu().numpy()
    index = np.flatnonzero(optimal_np)
    pick = index[np.lexsort((taus_np[index], np.abs(taus_np[index] - 1.0)))[0]]
    first = last = pick
    while first > 0 and optimal_np[first - 1]:
        first -= 1
    while last < grid_size - 1 and optimal_np[last + 1]:
        last += 1
    return taus_np, values.cpu().numpy(), float(taus_np[pick]), (float(taus_np[first]), float(taus_np[last]))
