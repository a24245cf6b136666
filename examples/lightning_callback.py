"""The Lightning callback: tau fitted and logged at every validation, an adjusted copy of the best checkpoint.

Run: python examples/lightning_callback.py [--dir DIR]   (about 20 seconds on a CPU)

A small MLP trained for three epochs on long-tailed Gaussian classes (400 down to 10 training samples per class) with
`LogitAdjustment()` among the Trainer's callbacks. The validation_step returns nothing: the callback reads the
logits from the classifier head and counts the classes from the training batches. At the end it wrote
calibration.json and `...-adjusted.ckpt` beside the best checkpoint; `load_from_checkpoint` gives adjusted logits.
"""

import argparse
import tempfile
import warnings
from pathlib import Path

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from torch import nn

from lacal.integrations.lightning import LogitAdjustment

COUNTS = [400, 150, 60, 25, 10]


class Classifier(L.LightningModule):
    def __init__(self, dim: int = 6, classes: int = len(COUNTS)):
        super().__init__()
        self.save_hyperparameters()
        self.backbone = nn.Sequential(nn.Linear(dim, 32), nn.ReLU())
        self.classifier = nn.Linear(32, classes)

    def forward(self, x):
        return self.classifier(self.backbone(x))

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.cross_entropy(self(x), y)

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val/loss", nn.functional.cross_entropy(self(x), y))

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=0.01)


def loader(counts, rng, centres, shuffle):
    y = np.repeat(np.arange(len(counts)), counts)
    x = centres[y] + rng.normal(size=(len(y), centres.shape[1]))
    data = torch.utils.data.TensorDataset(torch.tensor(x, dtype=torch.float32), torch.tensor(y))
    return torch.utils.data.DataLoader(data, batch_size=64, shuffle=shuffle)


def main(folder: Path) -> None:
    warnings.filterwarnings("ignore")
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    centres = rng.normal(scale=1.2, size=(len(COUNTS), 6))
    train, val = loader(COUNTS, rng, centres, True), loader([100] * len(COUNTS), rng, centres, False)

    adjustment = LogitAdjustment()
    best = ModelCheckpoint(dirpath=folder, monitor="val/balanced_error_adjusted")
    trainer = L.Trainer(max_epochs=3, accelerator="cpu", logger=False, enable_progress_bar=False,
                        enable_model_summary=False, callbacks=[adjustment, best])
    trainer.fit(Classifier(), train, val)

    numbers = {name: float(value) for name, value in trainer.callback_metrics.items() if name.startswith("val/")}
    print(f"last validation: tau = {numbers['val/tau']:.3f}, balanced error {numbers['val/balanced_error']:.2%} "
          f"-> {numbers['val/balanced_error_adjusted']:.2%} adjusted")
    print(f"wrote {adjustment.calibration_path.name} and {adjustment.patched_path.name} beside "
          f"{Path(best.best_model_path).name}")

    patched = Classifier.load_from_checkpoint(adjustment.patched_path).eval()
    x, y = next(iter(val))
    with torch.no_grad():
        shown = patched(x).argmax(1)
    print(f"the patched checkpoint's predictions on a validation batch: {float((shown == y).float().mean()):.0%} "
          "right")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, help="where to write the checkpoints (a temporary folder if not given)")
    arguments = parser.parse_args()
    if arguments.dir is not None:
        main(arguments.dir)
    else:
        with tempfile.TemporaryDirectory() as name:
            main(Path(name))
