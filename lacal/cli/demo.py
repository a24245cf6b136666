"""`lacal demo`: a seeded long-tailed problem, a classifier trained on it with plain cross-entropy, and the three
commands run on its files.

100 Gaussian classes in 32 dimensions; training counts follow the CIFAR-LT exp profile n_c = int(500 * 100^(-c/99))
(500 down to 5, 10,847 samples); validation and test sets are class-balanced (20 and 50 per class).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np

NUM_CLASSES = 100
DIMENSIONS = 32
LARGEST_CLASS = 500
IMBALANCE = 100
VAL_PER_CLASS = 20
TEST_PER_CLASS = 50
MEAN_SPREAD = 0.8

DEMO_FILES = ("train_labels.txt", "val_logits.npy", "val_labels.npy", "test_logits.npy", "test_labels.npy",
              "calibration.json", "test_adjusted.npy", "test_predictions.csv")


def long_tail_counts(num_classes: int = NUM_CLASSES, largest: int = LARGEST_CLASS,
                     imbalance: float = IMBALANCE) -> np.ndarray:
    """The exp profile of the LDAM-DRW code: n_i = int(largest * imbalance^(-i / (C - 1)))."""
    return np.array([int(largest * imbalance ** (-i / (num_classes - 1))) for i in range(num_classes)])


def make_problem(seed: int = 0):
    """Train features/labels (long-tailed) and balanced validation and test sets, all float32."""
    rng = np.random.default_rng(seed)
    means = rng.normal(scale=MEAN_SPREAD, size=(NUM_CLASSES, DIMENSIONS))

    def sample(counts):
        labels = np.repeat(np.arange(NUM_CLASSES), counts)
        rng.shuffle(labels)
        features = means[labels] + rng.normal(size=(labels.size, DIMENSIONS))
        return features.astype(np.float32), labels

    train = sample(long_tail_counts())
    val = sample(np.full(NUM_CLASSES, VAL_PER_CLASS))
    test = sample(np.full(NUM_CLASSES, TEST_PER_CLASS))
    return train, val, test


def train_softmax(features: np.ndarray, labels: np.ndarray, seed: int = 0, steps: int = 300):
    """A linear softmax classifier fitted by full-batch Adam on plain (unweighted) cross-entropy."""
    import torch

    torch.manual_seed(seed)
    x = torch.from_numpy(features)
    y = torch.from_numpy(labels)
    model = torch.nn.Linear(features.shape[1], NUM_CLASSES)
    optimiser = torch.optim.Adam(model.parameters(), lr=0.05)
    for _ in range(steps):
        optimiser.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        optimiser.step()
    return model


def write_problem(directory: Path, seed: int = 0) -> None:
    """Write the demo's training labels and validation/test logits and labels into `directory`."""
    import torch

    (train_x, train_y), (val_x, val_y), (test_x, test_y) = make_problem(seed)
    model = train_softmax(train_x, train_y, seed)
    with torch.no_grad():
        val_logits = model(torch.from_numpy(val_x)).numpy()
        test_logits = model(torch.from_numpy(test_x)).numpy()
    (directory / "train_labels.txt").write_text("\n".join(map(str, train_y.tolist())) + "\n")
    np.save(directory / "val_logits.npy", val_logits)
    np.save(directory / "val_labels.npy", val_y)
    np.save(directory / "test_logits.npy", test_logits)
    np.save(directory / "test_labels.npy", test_y)


def run_demo(directory: Path, seed: int, echo: Callable[[str], None],
             invoke: Callable[[list[str]], None]) -> None:
    """Write the problem, then run fit-tau, apply and report on it through `invoke` (the CLI)."""
    for name in DEMO_FILES:
        (directory / name).unlink(missing_ok=True)
    counts = long_tail_counts()
    echo(f"lacal demo: {NUM_CLASSES} Gaussian classes, {counts.sum()} training samples "
         f"({counts[0]} in the largest class, {counts[-1]} in the smallest), a linear classifier trained with plain "
         f"cross-entropy; validation and test sets are balanced ({VAL_PER_CLASS} and {TEST_PER_CLASS} per class).")
    write_problem(directory, seed)
    echo(f"Wrote {', '.join(DEMO_FILES[:5])} to {directory}/. These are the commands you would run on your own "
         "files:")
    d = str(directory)
    invoke(["fit-tau", f"{d}/val_logits.npy", f"{d}/val_labels.npy", "--train-labels", f"{d}/train_labels.txt",
            "--out", f"{d}/calibration.json"])
    invoke(["apply", f"{d}/test_logits.npy", "--calibration", f"{d}/calibration.json", "--out",
            f"{d}/test_adjusted.npy"])
    invoke(["apply", f"{d}/test_logits.npy", "--calibration", f"{d}/calibration.json", "--out",
            f"{d}/test_predictions.csv", "--top-k", "3"])
    invoke(["report", f"{d}/test_logits.npy", f"{d}/test_labels.npy", "--calibration", f"{d}/calibration.json",
            "--sort", "count", "--limit", "12"])
