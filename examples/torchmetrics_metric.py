"""The adjusted balanced error as a torchmetrics metric, in a plain evaluation loop.

Run: python examples/torchmetrics_metric.py   (a few seconds)

A linear classifier trained with plain cross-entropy on long-tailed Gaussian classes; `LogitAdjustedError`
accumulates the validation logits batch by batch (under DDP its `cat` states gather every process's batches) and
`compute()` fits tau and returns the balanced error at it.
"""

import numpy as np
import torch

from lacal.integrations.torchmetrics import LogitAdjustedError

COUNTS = [500, 200, 80, 30, 12, 5]


def data(counts, rng, centres):
    y = np.repeat(np.arange(len(counts)), counts)
    x = centres[y] + rng.normal(size=(len(y), centres.shape[1]))
    return torch.tensor(x, dtype=torch.float32), torch.tensor(y)


def main() -> None:
    rng = np.random.default_rng(0)
    centres = rng.normal(scale=1.3, size=(len(COUNTS), 8))
    train_x, train_y = data(COUNTS, rng, centres)
    val_x, val_y = data([100] * len(COUNTS), rng, centres)
    torch.manual_seed(0)
    model = torch.nn.Linear(8, len(COUNTS))
    optimizer = torch.optim.Adam(model.parameters(), lr=0.05)
    for _ in range(200):
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(train_x), train_y).backward()
        optimizer.step()

    metric = LogitAdjustedError(COUNTS)
    with torch.no_grad():
        for start in range(0, len(val_y), 64):
            metric.update(model(val_x[start:start + 64]), val_y[start:start + 64])
    adjusted = metric.compute()
    print(f"balanced error: plain {metric.values['balanced_error']:.2%}, adjusted {float(adjusted):.2%} "
          f"at tau = {float(metric.tau):.3f}")


if __name__ == "__main__":
    main()
