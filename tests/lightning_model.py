"""A tiny LightningModule and a long-tailed synthetic data set for the Lightning tests (importable by the DDP script
they spawn). Runs on the CPU in seconds."""

import lightning as L
import numpy as np
import torch
from torch import nn

COUNTS = (400, 150, 60, 25, 10)
DIM = 6


def long_tail_data(counts=COUNTS, per_class_val=60, seed=0):
    """(train, val) TensorDatasets of Gaussian clusters: training counts `counts` (long-tailed), a balanced
    validation set."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(scale=1.2, size=(len(counts), DIM))

    def draw(sizes):
        y = np.repeat(np.arange(len(sizes)), sizes)
        x = centres[y] + rng.normal(size=(len(y), DIM))
        order = rng.permutation(len(y))
        return torch.utils.data.TensorDataset(torch.tensor(x[order], dtype=torch.float32),
                                              torch.tensor(y[order], dtype=torch.int64))

    return draw(counts), draw([per_class_val] * len(counts))


class TinyClassifier(L.LightningModule):
    """A two-layer MLP under `backbone` with its head `classifier`; `return_logits` makes validation_step return the
    logits (else it returns nothing, and the callback hooks the head)."""

    def __init__(self, num_classes: int = len(COUNTS), hidden: int = 16, lr: float = 0.05,
                 return_logits: bool = False):
        super().__init__()
        self.save_hyperparameters()
        self.backbone = nn.Sequential(nn.Linear(DIM, hidden), nn.ReLU())
        self.classifier = nn.Linear(hidden, num_classes)

    def forward(self, x):
        return self.classifier(self.backbone(x))

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.cross_entropy(self(x), y)

    def validation_step(self, batch, batch_idx):
        x, y = batch
        logits = self(x)
        self.log("val/loss", nn.functional.cross_entropy(logits, y), sync_dist=True)
        return logits if self.hparams.return_logits else None

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.hparams.lr, momentum=0.9)


def loaders(batch_size=64, seed=0):
    train, val = long_tail_data(seed=seed)
    return (torch.utils.data.DataLoader(train, batch_size=batch_size, shuffle=True),
            torch.utils.data.DataLoader(val, batch_size=batch_size))


def val_logits(model, val_loader):
    """The model's logits and targets on the whole validation set, in order."""
    model.eval()
    with torch.no_grad():
        pairs = [(model(x), y) for x, y in val_loader]
    return torch.cat([p[0] for p in pairs]), torch.cat([p[1] for p in pairs])
