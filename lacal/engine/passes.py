"""The batch scorer: one pass over logits, a block of rows at a time, on the chosen device.

Each pass returns mergeable statistics (per-class correct counts for a list of offset vectors, and the tau-interval on
which each sample is classified correctly), so the result does not depend on the block size.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..errors import InputDataError, OptionError
from ..data.readers import LogitsSource, source_from_array
from ..core.metrics import ClassEvaluation

DEFAULT_MEMORY_BUDGET = 2 << 30
WORK_BYTES_PER_VALUE = 24  # a block's logits in the compute dtype plus the temporaries a pass makes of it
CPU_BLOCK_BYTES = 2 << 20  # blocks this size stay in the CPU's cache while several operations run over them
CUDA_BLOCK_BYTES = 256 << 20


def compute_dtype(source: LogitsSource):
    import torch

    return torch.float64 if source.dtype_name == "float64" else torch.float32


def block_rows(source: LogitsSource, rows: int | None = None, memory_budget: int | None = None,
               device=None) -> int:
    """Rows per block: as given, else what the device works best with (a few MiB on a CPU, to stay in cache;
    larger on a GPU), never more than `memory_budget` (bytes) allows."""
    if rows is not None:
        if rows < 1:
            raise OptionError("`rows` must be at least 1", "rows")
        return int(rows)
    value_bytes = 8 if source.dtype_name == "float64" else 4
    on_gpu = device is not None and getattr(device, "type", str(device)) != "cpu"
    target = (CUDA_BLOCK_BYTES if on_gpu else CPU_BLOCK_BYTES) // (value_bytes * source.num_classes)
    budget = (memory_budget or DEFAULT_MEMORY_BUDGET) // (WORK_BYTES_PER_VALUE * source.num_classes)
    return max(1, min(target, budget))


def iter_blocks(source: LogitsSource, device, rows: int | None = None, progress=None,
                memory_budget: int | None = None):
    """Yield (start, logits block on `device` in the compute dtype), checking every value is finite.
    `progress(rows_done)` is called after each block."""
    import torch

    dtype = compute_dtype(source)
    step = block_rows(source, rows, memory_budget, device)
    for start in range(0, source.num_samples, step):
        block = source.rows(start, min(start + step, source.num_samples)).to(device=device, dtype=dtype)
        if not bool(torch.isfinite(block.sum())) and not bool(torch.isfinite(block).all()):  # a sum is cheap;
            finite = torch.isfinite(block)  # an overflowing one is checked value by value
            row = start + int((~finite).any(1).nonzero()[0, 0])
            kind = "NaN" if bool(torch.isnan(block).any()) else "Inf"
            name, row = _shard_row(source, row)
            raise InputDataError(f"logits hold {kind} values (the first non-finite row is {row + 1})", name)
        yield start, block
        if progress is not None:
            progress(start + block.shape[0])


def _shard_row(source: LogitsSource, row: int) -> tuple[str, int]:
    """(the file that holds `row` of a source made of shards, and its row there)."""
    for shard in getattr(source, "shards", None) or []:
        if row < shard.num_samples:
            return _shard_row(shard, row)
        row -= shard.num_samples
    return source.name, row


def labels_tensor(labels, source: LogitsSource, device, num_classes: int | None = None):
    """Labels as an int64 tensor on `device`, checked against the row count and the number of classes (the
    source's columns unless given)."""
    import torch

    from ..core.priors import check_labels

    labels = np.asarray(labels.cpu() if hasattr(labels, "cpu") else labels).astype(np.int64).ravel()
    if labels.shape[0] != source.num_samples:
        raise InputDataError(f"logits have {source.num_samples} rows but there are {labels.shape[0]} labels",
                             source.name)
    check_labels(labels, num_classes or source.num_classes, source.name)
    return torch.from_numpy(labels).to(device)


def _shifted(source, labels, offsets, device):
    """(the source, the device, the labels on it, each offset as a tensor in the logits' compute dtype), offsets
    that would overflow that dtype refused: what `score_pass` and `hit_pass` start from."""
    import torch

    source = source_from_array(source) if not isinstance(source, LogitsSource) else source
    device = torch.device(device)
    targets = labels_tensor(labels, source, device)
    dtype = compute_dtype(source)
    shifts = [torch.as_tensor(np.asarray(o), dtype=dtype, device=device) for o in offsets]
    for offset, shift in zip(offsets, shifts):
        check_fits(shift, offset, 1.0, getattr(source, "name", None))
    return source, device, targets, shifts


def score_pass(source, labels, offsets=(), device="cpu", rows: int | None = None, progress=None,
               memory_budget: int | None = None) -> tuple[ClassEvaluation, ...]:
    """One pass over `source` (a LogitsSource or an array): for each offset vector in `offsets`, the per-class
    evaluation of argmax(logits + offset) (torch.argmax takes the first of tied maxima)."""
    import torch

    source, device, targets, shifts = _shifted(source, labels, offsets, device)
    correct = torch.zeros(len(shifts), source.num_classes, dtype=torch.int64, device=device)
    for start, block in iter_blocks(source, device, rows, progress, memory_budget):
        y = targets[start:start + block.shape[0]]
        for k, shift in enumerate(shifts):
            hit = (block + shift).argmax(1) == y
            correct[k].index_add_(0, y, hit.to(torch.int64))
    support = torch.bincount(targets, minlength=source.num_classes).cpu().numpy()
    return tuple(ClassEvaluation(support, row) for row in correct.cpu().numpy())


@dataclass(frozen=True)
class IntervalStats:
    """What the tau-search pass gathers, mergeable over blocks.

    `points[tau][c]`: samples of class c that argmax(logits - tau * log pi) gets right, for each tau asked for.
    `lo`, `hi`: each sample's open interval of correct classification (lo >= hi when it is empty; -inf/+inf when
    unbounded). `labels`: the class of each sample (on the device).
    """

    support: np.ndarray
    points: dict
    lo: object
    hi: object
    labels: object


POINT_GAP = 1e-6  # interval ends this close to a scored point are settled by argmax itself


def _block_intervals(block, y, lp, buffers=(None, None, None), fused=None):
    """Each row's open tau-interval (lo, hi) of correct classification, in the block's dtype, for the rows of `block`
    with labels `y` and log priors `lp`; `buffers`: three tensors at least the block's size to work in (or None);
    `fused`: the compiled kernel of `fused.py`, used instead of the eager passes when given.

    With W = 1 / (lp_j - lp_y), class j's adjusted score crosses y's at tau = (f_j - f_y) * W: a lower bound on tau
    where W > 0 (lp_j > lp_y), an upper bound where W < 0. Classes sharing y's prior get W = 1 / 0 = +inf, and
    side = W * inf is +inf there and where W > 0, -inf where W < 0, so that

        lo = max_j min(crossing_j, side_j)      hi = min_j max(crossing_j, side_j)

    keep exactly the lower bounds in lo and the upper bounds in hi, with no per-label table: nine passes over the
    block, all elementwise or reductions. A class with y's prior that scores above y (y never wins) gives
    crossing = +inf and so lo = +inf; one below gives -inf and bounds nothing; y's own column is set to -inf. A
    class with y's prior and exactly y's score gives 0 * inf = NaN: those rows (exact ties, where argmax's
    first-maximum rule decides) are settled by `_tied_intervals`, one comparison at a time.
    """
    import torch

    lo = hi = None
    if fused is not None and block.shape[0] > 1:  # one row would be compiled anew (torch specialises size 1)
        try:
            lo, hi = fused(block, y, lp)
        except Exception:  # noqa: BLE001  (the eager pass below gives the same result)
            lo = hi = None
    if lo is None:
        work, side, spare = buffers
        n = block.shape[0]
        if work is not None:
            work, side, spare = work[:n], side[:n], spare[:n]
        weight = torch.sub(lp[None, :], lp.index_select(0, y)[:, None], out=side).reciprocal_()
        crossing = torch.sub(block, block.gather(1, y[:, None]), out=work)
        crossing.scatter_(1, y[:, None], -1.0)  # times W = +inf: y itself bounds nothing
        crossing.mul_(weight)
        side = weight.mul_(torch.inf)
        lo = torch.minimum(crossing, side, out=spare).amax(1)
        hi = torch.maximum(crossing, side, out=spare).amin(1)
    lo, hi = lo.add_(0.0), hi.add_(0.0)  # + 0.0: a bound of -0.0 reads +0.0
    hi.masked_fill_(lo == torch.inf, -torch.inf)  # y never wins: the interval is empty
    tied = lo.isnan()
    if bool(tied.any()):
        rows = tied.nonzero().flatten()
        lo[rows], hi[rows] = _tied_intervals(block.index_select(0, rows), y.index_select(0, rows), lp)
    return lo, hi


def _tied_intervals(block, y, lp):
    """`_block_intervals` for rows where y ties with a class of the same prior, the plain way: masks for the lower
    and upper bounds, and y never wins where a class with its prior scores higher, or the same and comes first
    (argmax keeps the first maximum)."""
    import torch

    f_y = block.gather(1, y[:, None])
    diff = lp[None, :] - lp.index_select(0, y)[:, None]
    same = diff == 0
    crossing = torch.sub(block, f_y).mul_(diff.reciprocal().masked_fill_(same, 0.0))
    lo = crossing.masked_fill(diff <= 0, -torch.inf).amax(1).add_(0.0)
    hi = crossing.masked_fill(diff >= 0, torch.inf).amin(1).add_(0.0)
    columns = torch.arange(block.shape[1], device=block.device)[None, :]
    peers = same & (columns != y[:, None])
    never = (peers & ((block > f_y) | ((block == f_y) & (columns < y[:, None])))).any(1)
    return lo.masked_fill_(never, torch.inf), hi.masked_fill_(never, -torch.inf)


def interval_pass(source, labels, log_priors, points=(), device="cpu", rows: int | None = None, progress=None,
                  memory_budget: int | None = None) -> IntervalStats:
    """One pass over the logits giving every sample's open tau-interval of correct classification, and the
    per-class correct counts at the taus in `points` (with argmax's tie rule).

    For a sample with label y, class j beats y at tau iff f_j - tau * lp_j > f_y - tau * lp_y, so each class gives
    one bound, (f_j - f_y) / (lp_j - lp_y): a lower bound on tau where lp_j > lp_y, an upper bound where
    lp_j < lp_y. The interval is (max of the lower bounds, min of the upper bounds); see `_block_intervals`. The
    working memory is a few blocks, linear in the number of classes. On a CPU the blocks are spread over torch's
    thread count, each worker doing its blocks single-threaded (see `parallel`). A point is right for a sample
    when the open interval holds it; samples with an interval end within a hair of the point are scored by argmax
    itself, which settles exact ties as `apply` and `report` do.
    """
    import threading

    import torch

    from .fused import fused_kernel
    from .threads import block_workers, run_blocks

    source = source_from_array(source) if not isinstance(source, LogitsSource) else source
    device = torch.device(device)
    targets = labels_tensor(labels, source, device)
    dtype = compute_dtype(source)
    log_priors = np.asarray(log_priors, dtype=np.float64)
    lp = torch.as_tensor(log_priors, dtype=dtype, device=device)
    budget = memory_budget or DEFAULT_MEMORY_BUDGET
    step = block_rows(source, rows, budget, device)
    workers = block_workers(device, -(-source.num_samples // step))
    step = block_rows(source, rows, budget // workers, device)  # each worker holds its blocks and buffers
    # allocated once: small per-block results kept between the large block buffers would fragment the heap
    lo_all = torch.empty(source.num_samples, dtype=torch.float64, device=device)
    hi_all = torch.empty(source.num_samples, dtype=torch.float64, device=device)
    buffers = {}
    fused = fused_kernel(dtype, device)  # None unless LACAL_COMPILE=1 and it compiles here

    def work(start, block):
        own = buffers.get(threading.get_ident())
        if own is None:
            own = buffers[threading.get_ident()] = tuple(
                torch.empty(step, source.num_classes, dtype=dtype, device=device) for _ in range(3))
        stop = start + block.shape[0]
        lo_all[start:stop], hi_all[start:stop] = _block_intervals(block, targets[start:stop], lp, own, fused)

    run_blocks(iter_blocks(source, device, step, None, budget), work, workers, progress)
    buffers.clear()
    lo, hi = lo_all, hi_all
    counts = {t: torch.bincount(targets[point_hits(source, targets, lo, hi, t, log_priors, device)],
                                minlength=source.num_classes).cpu().numpy() for t in points}
    support = torch.bincount(targets, minlength=source.num_classes)
    return IntervalStats(support=support.cpu().numpy(), points=counts, lo=lo, hi=hi, labels=targets)


def point_hits(source: LogitsSource, targets, lo, hi, t: float, log_priors, device):
    """Which samples argmax(logits - t * log pi) gets right (a bool tensor), from their open intervals (`lo`, `hi`);
    samples with an interval end within POINT_GAP of `t` are scored by argmax itself, which settles exact ties."""
    import torch

    dtype = compute_dtype(source)
    near = ((lo - t).abs() <= POINT_GAP * (1 + abs(t))) | ((hi - t).abs() <= POINT_GAP * (1 + abs(t)))
    right = (lo < t) & (t < hi) & ~near
    shift = torch.as_tensor(-t * np.asarray(log_priors, dtype=np.float64), dtype=dtype, device=device)
    for index in near.nonzero().flatten().tolist():
        row = source.rows(index, index + 1).to(device=device, dtype=dtype)
        right[index] = bool((row + shift).argmax(1)[0] == targets[index])
    return right


def hit_pass(source, labels, offsets, device="cpu", rows: int | None = None, progress=None,
             memory_budget: int | None = None) -> np.ndarray:
    """One pass over `source`: an N x K bool array, whether argmax(logits + offsets[k]) is each sample's label (what
    `score_pass` counts, kept per sample for resampling)."""
    source, device, targets, shifts = _shifted(source, labels, offsets, device)
    hits = np.zeros((source.num_samples, len(shifts)), dtype=bool)
    for start, block in iter_blocks(source, device, rows, progress, memory_budget):
        y = targets[start:start + block.shape[0]]
        for k, shift in enumerate(shifts):
            hits[start:start + block.shape[0], k] = ((block + shift).argmax(1) == y).cpu().numpy()
    return hits


def count_hits(hits: np.ndarray, labels, num_classes: int) -> tuple[ClassEvaluation, ...]:
    """`score_pass`'s evaluations from `hit_pass`'s per-sample hits (one column per offset), without another pass."""
    labels = np.asarray(labels, dtype=np.int64)
    support = np.bincount(labels, minlength=num_classes)
    return tuple(ClassEvaluation(support, np.bincount(labels[column], minlength=num_classes))
                 for column in np.asarray(hits, dtype=bool).T)


def check_fits(shift, offset, scale: float, name) -> None:
    """Refuse offsets (and a scale) that become infinite in the dtype the logits are computed in: the adjusted
    logits and every prediction from them would be wrong."""
    import torch

    if not bool(torch.isfinite(shift).all()) or not math.isfinite(float(torch.tensor(scale, dtype=shift.dtype))):
        raise InputDataError(f"the adjustment does not fit {str(shift.dtype).replace('torch.', '')}: offsets up to "
                             f"{float(np.max(np.abs(offset))):.3g}, scale {scale:.3g}; it would make the logits "
                             "infinite (check tau, the temperature and the bias)", name)


def iter_adjusted(source: LogitsSource, offset, device="cpu", rows: int | None = None, keep_dtype: bool = True,
                  progress=None, memory_budget: int | None = None, scale: float = 1.0):
    """Yield (start, block * scale + offset) as CPU tensors. The sum runs in float32 (float64 for float64 input); with
    keep_dtype it is rounded back to the source's dtype, as for writing adjusted logits. Predictions should use
    keep_dtype=False, so that rounding to float16/bfloat16 creates no new ties: they then match what fit-tau and
    report score."""
    import torch

    device = torch.device(device)
    shift = torch.as_tensor(np.asarray(offset), dtype=compute_dtype(source), device=device)
    out_dtype = getattr(torch, source.dtype_name) if keep_dtype else compute_dtype(source)
    check_fits(shift, offset, scale, source.name)
    for start, block in iter_blocks(source, device, rows, progress, memory_budget):
        values = block if scale == 1.0 else block * scale
        adjusted = (values + shift).to(out_dtype)
        if not bool(torch.isfinite(adjusted).all()):
            row = start + int((~torch.isfinite(adjusted)).any(1).nonzero()[0, 0])
            name, row = _shard_row(source, row)
            raise InputDataError(f"the adjusted logits of row {row + 1} are beyond the range of "
                                 f"{str(out_dtype).replace('torch.', '')} (offsets up to "
                                 f"{float(np.max(np.abs(offset))):.3g}, scale {scale:.3g}); nothing was written: "
                                 "check tau, the temperature and the bias", name)
        yield start, adjusted.cpu()


def head_logits(features: LogitsSource, weight, bias=None, device="cpu", name: str | None = None) -> LogitsSource:
    """Logits computed from N x D `features` by a linear head: features @ weight.T + bias, a block at a time on
    `device` (float32, or float64 for a float64 head)."""
    import torch
    import torch.nn.functional as F

    weight = weight.reshape(weight.shape[0], -1)  # a 1x1 convolution head is a linear layer
    if features.num_classes != weight.shape[1]:
        raise InputDataError(f"features have {features.num_classes} columns but the head takes {weight.shape[1]}",
                             features.name)
    device = torch.device(device)
    dtype = torch.float64 if weight.dtype == torch.float64 else torch.float32
    weight = weight.to(device=device, dtype=dtype)
    bias = None if bias is None else bias.to(device=device, dtype=dtype)

    def rows(start: int, stop: int):
        return F.linear(features.rows(start, stop).to(device=device, dtype=dtype), weight, bias)

    return LogitsSource(name or features.name, (features.num_samples, int(weight.shape[0])),
                        str(dtype).replace("torch.", ""), rows)


def score_model(model, inputs: LogitsSource, device="cpu", batch: int = 256, amp: str | None = None,
                progress=None):
    """Run `model` over the rows of `inputs` in batches on `device` under inference mode (with autocast to
    bfloat16 or float16 when `amp` says so), yielding (start, float32 logits on the CPU)."""
    import torch

    device = torch.device(device)
    model = model.to(device) if hasattr(model, "to") else model
    autocast_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(amp)
    width = None
    with torch.inference_mode():
        for start in range(0, inputs.num_samples, batch):
            x = inputs.rows(start, min(start + batch, inputs.num_samples)).to(device)
            try:
                if autocast_dtype is None:
                    out = model(x)
                else:
                    with torch.autocast(device_type=device.type, dtype=autocast_dtype):
                        out = model(x)
            except (RuntimeError, ValueError, TypeError, IndexError, AssertionError, torch.jit.Error) as exc:
                first = _model_error(exc)
                hint = ("; an exported model with a fixed batch size needs inputs in batches of that size: export "
                        "with a dynamic batch dimension (torch.export.Dim)" if "Guard failed" in str(exc) else "")
                raise InputDataError(f"the model failed on rows {start + 1} to {start + x.shape[0]} (inputs of "
                                     f"shape {tuple(x.shape[1:])} and dtype {x.dtype}): {first}{hint}",
                                     inputs.name) from None
            out = _logits_of(out, inputs.name)
            if out.shape[0] != x.shape[0]:
                raise InputDataError(f"the model returned {out.shape[0]} rows for a batch of {x.shape[0]}",
                                     inputs.name)
            if width is None:
                width = tuple(out.shape[1:])
            elif tuple(out.shape[1:]) != width:
                raise InputDataError(f"the model returned logits of shape {tuple(out.shape[1:])} for rows "
                                     f"{start + 1} to {start + x.shape[0]}, but {width} for the first batch; every "
                                     "batch must give the same number of classes", inputs.name)
            if not bool(torch.isfinite(out).all()):
                raise InputDataError(f"the model returned NaN or Inf logits for rows {start + 1} to "
                                     f"{start + x.shape[0]}", inputs.name)
            yield start, out.float().cpu()
            if progress is not None:
                progress(start + x.shape[0])


def _model_error(exc: BaseException) -> str:
    """One line for an exception a model raised: its first line, or for a TorchScript model (whose message starts
    with the interpreter's traceback) the last one, which names the original exception."""
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    if not lines:
        return type(exc).__name__
    return lines[-1] if lines[0].startswith("The following operation failed in the TorchScript interpreter") \
        else lines[0]


def _logits_of(out, name: str):
    """The logits in a model's output: a tensor, or the 'logits' entry (or first tensor) of a dict or tuple."""
    import torch

    if isinstance(out, dict):
        out = out.get("logits", next((v for v in out.values() if isinstance(v, torch.Tensor)), None))
    elif isinstance(out, (tuple, list)):
        out = next((v for v in out if isinstance(v, torch.Tensor)), None)
    if not isinstance(out, torch.Tensor) or out.ndim != 2:
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise InputDataError(f"the model should return N x C logits, it returned {shape}", name)
    return out


def probability_pass(source, labels, affines, bins: int = 15, device="cpu", rows: int | None = None,
                     progress=None, memory_budget: int | None = None) -> list:
    """NLL, Brier score, ECE and classwise ECE of softmax(logits * scale + shift) for each (scale, shift) in
    `affines`, in one pass (see metrics.ProbabilityMetrics)."""
    import torch

    from ..core.metrics import ProbabilityMetrics

    if bins < 1:
        raise OptionError("`bins` must be at least 1", "bins")
    source = source_from_array(source) if not isinstance(source, LogitsSource) else source
    device = torch.device(device)
    targets = labels_tensor(labels, source, device)
    classes = source.num_classes
    prepared = [(float(scale), torch.as_tensor(np.asarray(shift), dtype=torch.float64, device=device))
                for scale, shift in affines]
    sums = [dict(nll=0.0, brier=0.0, count=torch.zeros(bins, dtype=torch.float64, device=device),
                 confidence=torch.zeros(bins, dtype=torch.float64, device=device),
                 correct=torch.zeros(bins, dtype=torch.float64, device=device),
                 gap=torch.zeros(classes * bins, dtype=torch.float64, device=device)) for _ in prepared]
    columns = torch.arange(classes, device=device)
    for start, block in iter_blocks(source, device, rows, progress, memory_budget):
        y = targets[start:start + block.shape[0]]
        truth = torch.nn.functional.one_hot(y, classes).double()
        for (scale, shift), total in zip(prepared, sums):
            log_p = torch.log_softmax(block.double() * scale + shift, 1)
            p = log_p.exp()
            total["nll"] -= float(log_p.gather(1, y[:, None]).sum())
            total["brier"] += float(((p - truth) ** 2).sum())
            confidence, predicted = p.max(1)
            where = (confidence * bins).long().clamp(max=bins - 1)
            total["count"].index_add_(0, where, torch.ones_like(confidence))
            total["confidence"].index_add_(0, where, confidence)
            total["correct"].index_add_(0, where, (predicted == y).double())
            cells = columns[None, :] * bins + (p * bins).long().clamp(max=bins - 1)
            total["gap"].index_add_(0, cells.flatten(), (p - truth).flatten())
    return [ProbabilityMetrics(source.num_samples, t["nll"], t["brier"], t["count"].cpu().numpy(),
                               t["confidence"].cpu().numpy(), t["correct"].cpu().numpy(),
                               t["gap"].view(classes, bins).cpu().numpy()) for t in sums]
