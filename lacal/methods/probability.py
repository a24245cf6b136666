"""Probability calibration after logit adjustment: a temperature, or a per-class bias together with a temperature.

Both are fitted on the balanced validation data's adjusted logits z = f - tau * log(pi), as softmax(z / T + b);
target priors q, when used, are added afterwards: softmax(z / T + b + log(q)). A temperature keeps every prediction;
a bias can move them.

- temperature: T minimises the validation NLL. The NLL is convex in beta = 1 / T, so Newton's method on beta (with
  step halving that keeps beta > 0) finds it; a validation set that the logits separate perfectly has no finite
  optimum (the NLL keeps falling as T -> 0), which is reported as not converged.
- bias: (T, b) minimise the class-balanced cross-entropy (each class weighs the same, whatever its validation
  support) plus (l2 / 2) * mean(b^2). The loss is convex in (beta, b); L-BFGS finds the optimum. The L2 term keeps b
  finite and centred (softmax ignores a constant added to b). A class without validation samples gets the mean of the
  other biases: the data say nothing about it, and a free bias would be pushed down to win on the other classes.

When the logits separate the validation set (every sample right with a margin), the loss has no minimum: it keeps
falling as T -> 0, so the fit stops where the loss is negligible and says it did not converge.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from ..errors import OptionError

METHODS = ("temperature", "bias")
DEFAULT_BIAS_L2 = 1e-2
MOVE_THRESHOLD = 1e-3
SEPARATED_LOSS = 1e-6  # a loss this small with a gradient still asking for a lower T: the data are separated


@dataclass(frozen=True, eq=False)
class ProbabilityFit:
    """A fitted temperature (and bias), with the loss before (T = 1, b = 0) and after, and how the fit went."""

    method: str
    temperature: float
    bias: np.ndarray | None
    loss_before: float
    loss_after: float
    iterations: int
    converged: bool
    message: str
    l2: float | None = None
    gradient_norm: float = field(default=0.0)

    @property
    def moved(self) -> bool:
        shift = 0.0 if self.bias is None else float(np.abs(self.bias).max())
        return abs(self.temperature - 1.0) > MOVE_THRESHOLD or shift > MOVE_THRESHOLD

    def to_dict(self) -> dict:
        return {"method": self.method, "temperature": self.temperature,
                "bias": None if self.bias is None else [float(b) for b in self.bias],
                "loss": "nll" if self.method == "temperature" else "class-balanced cross-entropy",
                "loss_before": self.loss_before, "loss_after": self.loss_after, "iterations": self.iterations,
                "converged": self.converged, "moved": self.moved, "message": self.message, "l2": self.l2,
                "gradient_norm": self.gradient_norm}


class _Data:
    """The adjusted logits (float64 blocks on the device) and labels, held in memory when the budget allows it."""

    def __init__(self, logits, labels, offset, device, rows, memory_budget, context=None):
        import torch

        from ..engine.distributed import Context

        from ..data.readers import LogitsSource, source_from_array
        from ..engine.passes import DEFAULT_MEMORY_BUDGET, labels_tensor

        self.source = logits if isinstance(logits, LogitsSource) else source_from_array(logits)
        self.device = torch.device(device)
        self.labels = labels_tensor(labels, self.source, self.device)
        self.shift = torch.as_tensor(np.zeros(self.source.num_classes) if offset is None else np.asarray(offset),
                                     dtype=torch.float64, device=self.device)
        self.rows, self.budget = rows, memory_budget or DEFAULT_MEMORY_BUDGET
        self.cached, failure = None, None
        try:  # read everything once (and keep it when it fits), so that a bad block fails here, on every rank
            blocks = list(self._stream()) if self.source.num_samples * self.source.num_classes * 8 <= \
                self.budget // 2 else [None for _ in self._stream()]
            self.cached = blocks if blocks and blocks[0] is not None else None
        except Exception as exc:  # noqa: BLE001  (re-raised on every rank by agree)
            failure = exc
        (context or Context()).agree(failure)

    def _stream(self):
        from ..engine.passes import iter_blocks

        for start, block in iter_blocks(self.source, self.device, self.rows, memory_budget=self.budget):
            yield block.double() + self.shift, self.labels[start:start + block.shape[0]]

    def blocks(self):
        return iter(self.cached) if self.cached is not None else self._stream()


def fit_temperature(logits, labels, offset=None, device="cpu", rows: int | None = None,
                    memory_budget: int | None = None, max_iterations: int = 100, context=None) -> ProbabilityFit:
    """The temperature T > 0 that minimises the NLL of softmax((logits + offset) / T) on (logits, labels). Under
    torch.distributed, `context` sums every rank's share of the samples."""
    import torch

    from ..engine.distributed import Context

    context = context or Context()
    data = _Data(logits, labels, offset, device, rows, memory_budget, context)
    count = int(context.sum(np.array([data.source.num_samples]))[0])

    def evaluate(beta: float):
        loss = gradient = curvature = 0.0
        for z, y in data.blocks():
            scaled = beta * z
            log_p = torch.log_softmax(scaled, 1)
            p = log_p.exp()
            z_y = z.gather(1, y[:, None])[:, 0]
            mean_z = (p * z).sum(1)
            loss -= float(log_p.gather(1, y[:, None]).sum())
            gradient += float((mean_z - z_y).sum())
            curvature += float(((p * z * z).sum(1) - mean_z ** 2).sum())
        loss, gradient, curvature = context.sum(np.array([loss, gradient, curvature]))
        return float(loss) / count, float(gradient) / count, float(curvature) / count

    beta, (loss, gradient, curvature) = 1.0, evaluate(1.0)
    before = loss
    converged, message, iterations = False, "", 0
    for iterations in range(1, max_iterations + 1):
        if abs(gradient) <= 1e-10 * max(1.0, abs(loss)):
            converged = True
            break
        step = gradient / curvature if curvature > 0 else math.copysign(beta, gradient)
        trial = beta - step
        while trial <= 0 or trial > 1e6:
            step /= 2
            trial = beta - step
        new = evaluate(trial)
        while new[0] > loss + 1e-15 * max(1.0, abs(loss)) and abs(step) > 1e-15 * beta:
            step /= 2
            trial = beta - step
            new = evaluate(trial)
        if abs(trial - beta) <= 1e-14 * beta:
            converged = abs(new[1]) <= 1e-8 * max(1.0, abs(new[0]))
            beta, (loss, gradient, curvature) = trial, new
            break
        beta, (loss, gradient, curvature) = trial, new
    if loss < SEPARATED_LOSS and gradient < 0:
        converged = False
        message = (f"the logits separate the validation set: the NLL ({loss:.2g}) keeps falling as T -> 0, so "
                   f"T = {1 / beta:.3g} is only where it became negligible")
    elif not converged:
        message = (f"did not converge in {iterations} Newton steps (|gradient| {abs(gradient):.2g}); the "
                   "temperature found is the best so far")
    return ProbabilityFit("temperature", 1.0 / beta, None, before, loss, iterations, converged, message,
                          gradient_norm=abs(gradient))


def fit_bias(logits, labels, offset=None, l2: float = DEFAULT_BIAS_L2, device="cpu", rows: int | None = None,
             memory_budget: int | None = None, max_iterations: int = 500, context=None) -> ProbabilityFit:
    """(T, b) minimising the class-balanced cross-entropy of softmax((logits + offset) / T + b) plus
    (l2 / 2) * mean(b^2). Under torch.distributed, `context` sums every rank's loss and gradient, so that every rank
    takes the same steps."""
    import torch

    from ..engine.distributed import Context

    context = context or Context()
    if not l2 > 0 or not math.isfinite(l2):
        raise OptionError(f"the bias fit needs an L2 weight > 0 (softmax ignores a constant added to the bias), got "
                          f"{l2}", "--bias-l2")
    data = _Data(logits, labels, offset, device, rows, memory_budget, context)
    classes = data.source.num_classes
    support = context.sum(torch.bincount(data.labels, minlength=classes).double())
    weight = torch.where(support > 0, 1.0 / support.clamp(min=1), 0.0) / int((support > 0).sum())
    log_beta = torch.zeros((), dtype=torch.float64, device=data.device, requires_grad=True)
    seen = support > 0
    free = torch.zeros(int(seen.sum()), dtype=torch.float64, device=data.device, requires_grad=True)

    def full_bias():  # a class without samples follows the mean, so that raising every other class cannot ban it
        base = free.mean() * torch.ones(classes, dtype=torch.float64, device=data.device)
        return base.masked_scatter(seen, free)

    def objective(backward: bool):
        total = 0.0
        for z, y in data.blocks():
            bias = full_bias()
            logits_ = log_beta.exp() * z + bias
            loss = (weight[y] * (torch.logsumexp(logits_, 1) - logits_.gather(1, y[:, None])[:, 0])).sum()
            if backward:
                loss.backward()
            total += float(loss.detach())
        total = float(context.sum(np.array([total]))[0])
        if backward and context.active:  # the data terms of every rank; the penalty is added once, below
            for parameter in (log_beta, free):
                if parameter.grad is None:
                    parameter.grad = torch.zeros_like(parameter)
                parameter.grad = context.sum(parameter.grad)
        penalty = l2 / 2 * (full_bias() ** 2).mean()
        if backward:
            penalty.backward()
        return total + float(penalty.detach())

    with torch.no_grad():
        before = objective(False)
    optimiser = torch.optim.LBFGS([log_beta, free], lr=1.0, max_iter=max_iterations, history_size=20,
                                  tolerance_grad=1e-10, tolerance_change=1e-14, line_search_fn="strong_wolfe")

    def closure():
        optimiser.zero_grad()
        return torch.tensor(objective(True), dtype=torch.float64)

    optimiser.step(closure)
    optimiser.zero_grad()
    after = objective(True)
    gradient = float(torch.cat([log_beta.grad.reshape(1), free.grad]).abs().max())
    iterations = int(optimiser.state[optimiser._params[0]].get("n_iter", 0))
    converged = gradient <= 1e-7
    message = "" if converged else (f"stopped after {iterations} L-BFGS iterations with |gradient| {gradient:.2g}; "
                                    "the parameters are the best found")
    if after < SEPARATED_LOSS and float(log_beta.grad) < 0:
        converged = False
        message = (f"the logits separate the validation set: the loss ({after:.2g}) keeps falling as T -> 0, so "
                   "T and the bias are only where it became negligible")
    missing = int((~seen).sum())
    if missing:
        message = (message + "; " if message else "") + (f"{missing} class(es) have no validation samples and get "
                                                          "the mean bias")
    temperature = float(torch.exp(-log_beta.detach()))
    return ProbabilityFit("bias", temperature, full_bias().detach().cpu().numpy(), before, after, iterations,
                          converged, message, l2=l2, gradient_norm=gradient)


def fit_probabilities(method: str, logits, labels, offset=None, l2: float = DEFAULT_BIAS_L2, **kwargs):
    if method == "temperature":
        return fit_temperature(logits, labels, offset, **kwargs)
    if method == "bias":
        return fit_bias(logits, labels, offset, l2, **kwargs)
    raise OptionError(f"unknown calibration {method!r}; use one of {', '.join(METHODS)}", "calibrate")
