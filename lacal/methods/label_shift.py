"""Target label priors under label shift: the EM estimate of Saerens, Latinne and Decaestecker (2002).

A model trained where classes occur with priors pi gives posteriors p(y|x) = softmax(f(x)). On a target set whose
classes occur with unknown priors q (but the same p(x|y)), the posteriors become proportional to (q_y / pi_y) p(y|x).
EM alternates: E-step r_iy = (q_y / pi_y) p_iy / sum_c (q_c / pi_c) p_ic; M-step q_y = mean_i r_iy, starting from
q = pi. Each iteration is one pass over the unlabeled target logits; the log-likelihood it increases is
sum_i log sum_y (q_y / pi_y) p_iy.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import MismatchError, OptionError

DEFAULT_TOLERANCE = 1e-8
DEFAULT_MAX_ITERATIONS = 1000
PRIOR_FLOOR = 1e-12  # a prior EM drives to 0 is set to this, so that log(q) stays finite


@dataclass(frozen=True, eq=False)
class PriorEstimate:
    """The estimated target priors, and how EM got there."""

    priors: np.ndarray
    iterations: int
    converged: bool
    log_likelihood: float
    tolerance: float
    change: float  # max |q_new - q| of the last iteration
    floored: list = None  # classes whose prior fell below PRIOR_FLOOR and was raised to it
    floor: float = PRIOR_FLOOR

    def to_dict(self) -> dict:
        return {"priors": [float(p) for p in self.priors], "iterations": self.iterations,
                "converged": self.converged, "log_likelihood": self.log_likelihood, "tolerance": self.tolerance,
                "last_change": self.change, "floored_classes": list(self.floored or [])}


def estimate_target_priors(logits, train_priors, tolerance: float = DEFAULT_TOLERANCE,
                           max_iterations: int = DEFAULT_MAX_ITERATIONS, device="cpu", rows: int | None = None,
                           memory_budget: int | None = None, progress=None, context=None) -> PriorEstimate:
    """EM estimate of the class priors of unlabeled target data from the model's logits on it.

    `logits`: N x C array, tensor or LogitsSource (the model's raw logits on the target set); `train_priors`: the
    training priors pi (or counts, or a Priors). Stops when no prior moves by more than `tolerance`, or after
    `max_iterations` (then `converged` is False). `progress(iteration)` is called after each iteration. Under
    torch.distributed, `context` sums every rank's share of the samples.
    """
    import torch

    from ..core.offsets import as_priors_array
    from ..data.readers import LogitsSource, source_from_array
    from ..engine.passes import DEFAULT_MEMORY_BUDGET, iter_blocks

    if tolerance <= 0 or max_iterations < 1:
        raise OptionError("`tolerance` must be positive and `max_iterations` at least 1", "tolerance")
    from ..engine.distributed import Context

    context = context or Context()
    source = logits if isinstance(logits, LogitsSource) else source_from_array(logits)
    samples = int(context.sum(np.array([source.num_samples]))[0])
    pi = torch.as_tensor(as_priors_array(train_priors), dtype=torch.float64, device=device)
    if pi.numel() != source.num_classes:
        raise MismatchError(f"{pi.numel()} training priors for logits with {source.num_classes} classes",
                            source.name)
    budget = memory_budget or DEFAULT_MEMORY_BUDGET
    cached, failure = None, None
    if source.num_samples * source.num_classes * 8 <= budget // 2:  # posteriors kept: one matvec pair per step
        try:
            cached = [torch.softmax(block.double(), 1) for _, block in iter_blocks(source, device, rows,
                                                                                     memory_budget=budget)]
        except Exception as exc:  # noqa: BLE001  (re-raised on every rank by agree)
            failure = exc
    context.agree(failure)

    def posteriors():
        if cached is not None:
            yield from cached
        else:
            for _, block in iter_blocks(source, device, rows, memory_budget=budget):
                yield torch.softmax(block.double(), 1)

    def step(q):
        """(the M-step's new priors, the log-likelihood of q)."""
        ratio = q / pi
        total = torch.zeros_like(q)
        log_likelihood, failure = 0.0, None
        try:
            for p in posteriors():
                evidence = p @ ratio  # sum_y (q_y / pi_y) p_iy for each sample
                total += p.T @ (1.0 / evidence)
                log_likelihood += float(torch.log(evidence).sum())
        except Exception as exc:  # noqa: BLE001  (re-raised on every rank by agree)
            failure = exc
        context.agree(failure)
        total = context.sum(total)
        log_likelihood = float(context.sum(np.array([log_likelihood]))[0])
        new = ratio * total / samples
        return new / new.sum(), log_likelihood

    q = pi.clone()
    change, converged, iteration = float("inf"), False, 0
    for iteration in range(1, max_iterations + 1):
        new, _ = step(q)
        change = float((new - q).abs().max())
        q = new
        if progress is not None:
            progress(iteration)
        if change <= tolerance:
            converged = True
            break
    floored = torch.nonzero(q < PRIOR_FLOOR).flatten().tolist()
    if floored:
        q = torch.clamp(q, min=PRIOR_FLOOR)
        q = q / q.sum()
    _, log_likelihood = step(q)  # of the priors returned
    return PriorEstimate(priors=q.cpu().numpy(), iterations=iteration, converged=converged,
                         log_likelihood=log_likelihood, tolerance=tolerance, change=change, floored=floored)
