"""tau-normalisation (Kang et al., "Decoupling representation and classifier", ICLR 2020): a second post-hoc
method for when the head's weights and the penultimate features are known.

The score of class j is w_j . phi / ||w_j||^tau, the bias dropped as in their code: tau = 0 is the head without its
bias, tau = 1 fully normalised rows. Tau is chosen on validation data from a grid (their script sweeps 0 to 2 in
steps of 0.1, the default here); each grid point costs an argmax over the block of scores, the matrix product is
done once per block.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..core.metrics import ClassEvaluation

DEFAULT_RANGE = (0.0, 2.0)
DEFAULT_GRID_SIZE = 21


@dataclass(frozen=True, eq=False)
class TauNormFit:
    tau: float
    metric: str
    before: ClassEvaluation  # tau = 0
    after: ClassEvaluation
    taus: np.ndarray = field(repr=False)
    values: np.ndarray = field(repr=False)

    def to_dict(self) -> dict:
        result = {"method": "tau-norm", "tau": self.tau, "metric": self.metric, "search": "grid",
                  "tau_range": [float(self.taus[0]), float(self.taus[-1])], "grid_size": int(self.taus.size),
                  "num_classes": self.before.num_classes, "num_samples": self.before.num_samples}
        for suffix, evaluation in (("before", self.before), ("after", self.after)):
            for key, value in evaluation.to_dict().items():
                result[f"{key}_{suffix}"] = value
        return result


def normalised_weight(weight, tau: float):
    """W with each row divided by its norm to the power tau."""
    import torch

    weight = torch.as_tensor(weight).reshape(weight.shape[0], -1)
    norms = weight.norm(dim=1, keepdim=True)
    return weight / torch.where(norms > 0, norms.pow(tau), torch.ones_like(norms))  # a zero row stays zero


def tau_norm_logits(features, weight, tau: float):
    """features @ (W / ||w||^tau).T, the bias dropped."""
    import torch

    features = torch.as_tensor(features)
    return features @ normalised_weight(weight.to(features.dtype) if isinstance(weight, torch.Tensor) else
                                        torch.as_tensor(weight, dtype=features.dtype), tau).T


def fit_tau_norm(features, labels, weight, tau_range=DEFAULT_RANGE, grid_size: int = DEFAULT_GRID_SIZE,
                 metric: str = "balanced-error", device="cpu", rows: int | None = None, progress=None,
                 memory_budget: int | None = None) -> TauNormFit:
    """The grid tau minimising `metric` for argmax_j w_j . phi / ||w_j||^tau on (features, labels); ties go to the
    tau nearest 1."""
    import torch

    from ..errors import MismatchError, OptionError
    from ..data.readers import LogitsSource, source_from_array
    from ..engine.passes import labels_tensor, iter_blocks
    from .search import METRICS, check_tau_range

    if metric not in METRICS:
        raise OptionError(f"unknown metric {metric!r}; use one of {', '.join(METRICS)}", "metric")
    if grid_size < 2:
        raise OptionError(f"the grid needs at least 2 points, got {grid_size}", "grid_size")
    low, high = check_tau_range(tau_range)
    source = features if isinstance(features, LogitsSource) else source_from_array(features, what="features")
    device = torch.device(device)
    weight = torch.as_tensor(weight).to(device=device, dtype=torch.float32)
    weight = weight.reshape(weight.shape[0], -1)
    if source.num_classes != weight.shape[1]:
        raise MismatchError(f"features have {source.num_classes} columns but the head takes {weight.shape[1]}",
                            source.name)
    classes = weight.shape[0]
    targets = labels_tensor(labels, source, device, classes)
    taus = np.linspace(low, high, grid_size)
    taus[0], taus[-1] = low, high
    norms = weight.norm(dim=1).double()
    log_norms = torch.where(norms > 0, torch.log(norms), torch.zeros_like(norms))  # a zero row scores 0 for any tau
    scales = [torch.exp(-float(t) * log_norms).float() for t in taus]
    correct = torch.zeros(grid_size, classes, dtype=torch.int64, device=device)
    for start, block in iter_blocks(source, device, rows, progress, memory_budget):
        y = targets[start:start + block.shape[0]]
        scores = block.float() @ weight.T
        for g, scale in enumerate(scales):
            correct[g].index_add_(0, y, ((scores * scale).argmax(1) == y).to(torch.int64))
    support = torch.bincount(targets, minlength=classes).cpu().numpy()
    evaluations = [ClassEvaluation(support, c) for c in correct.cpu().numpy()]
    values = np.array([e.metric(metric) for e in evaluations])
    best = np.flatnonzero(values == values.min())
    pick = int(best[np.argmin(np.abs(taus[best] - 1.0))])
    before = evaluations[0] if low == 0 else None
    if before is None:
        zero = torch.zeros(classes, dtype=torch.int64, device=device)
        for start, block in iter_blocks(source, device, rows, None, memory_budget):
            y = targets[start:start + block.shape[0]]
            zero.index_add_(0, y, ((block.float() @ weight.T).argmax(1) == y).to(torch.int64))
        before = ClassEvaluation(support, zero.cpu().numpy())
    return TauNormFit(float(taus[pick]), metric, before, evaluations[pick], taus, values)
