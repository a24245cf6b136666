"""A long-tailed multi-label problem: one shared tau for every sigmoid output.

Run: python examples/multilabel_long_tail.py [--dir DIR] [--seed S]   (a few seconds on 2 CPU cores)

Forty labels whose training positive rates fall from 30% to 0.3% (an exp profile); a sample's features are the sum
of its labels' prototypes plus noise. A small MLP trained with plain binary cross-entropy learns the rates along with
the task, so rare labels are missed. lacal fits one tau on the validation split for all labels (the exact minimiser of
the macro balanced error of f_k - tau * log(pi_k / (1 - pi_k)) > 0) and the test split shows the effect, next to a
threshold per label fitted on the same validation split. With --dir, the logits and labels are written there for the
CLI (`lacal fit-tau val_logits.npy val_labels.npy --train-labels train_labels.npy --multi-label`).
"""

import argparse
from pathlib import Path

import numpy as np
import torch

from lacal.core.metrics import GROUPS, shot_groups
from lacal.methods.multilabel import (evaluate_multilabel, fit_label_thresholds, fit_multilabel_tau, multilabel_offsets,
                              multilabel_priors_from_labels)

LABELS, FEATURES = 40, 24
SIZES = {"train": 5000, "val": 4000, "test": 12000}


def make_problem(seed: int):
    """(x, y) for the train, val and test splits: y an N x C bool matrix, all splits with the same label rates."""
    rng = np.random.default_rng(seed)
    rates = 0.3 * 100.0 ** (-np.arange(LABELS) / (LABELS - 1))
    prototypes = rng.normal(size=(LABELS, FEATURES)) * 1.1
    splits = {}
    for name, size in SIZES.items():
        y = rng.random((size, LABELS)) < rates
        x = y.astype(np.float64) @ prototypes + rng.normal(size=(size, FEATURES)) * 1.5
        splits[name] = (x.astype(np.float32), y)
    return splits


def train_bce(x: np.ndarray, y: np.ndarray, seed: int, epochs: int = 300) -> torch.nn.Module:
    """An MLP trained full-batch with plain binary cross-entropy."""
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(FEATURES, 64), torch.nn.ReLU(), torch.nn.Linear(64, LABELS))
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-2)
    inputs, targets = torch.from_numpy(x), torch.from_numpy(y.astype(np.float32))
    for _ in range(epochs):
        optimiser.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(model(inputs), targets)
        loss.backward()
        optimiser.step()
    return model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, help="write the logits and labels here for the CLI")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)

    splits = make_problem(args.seed)
    model = train_bce(*splits["train"], seed=args.seed)
    with torch.no_grad():
        logits = {name: model(torch.from_numpy(x)).numpy() for name, (x, _) in splits.items()}
    labels = {name: y for name, (_, y) in splits.items()}
    priors = multilabel_priors_from_labels(labels["train"])

    fit = fit_multilabel_tau(logits["val"], labels["val"], priors)
    thresholds = fit_label_thresholds(logits["val"], labels["val"])
    test = evaluate_multilabel(logits["test"], labels["test"],
                               [np.zeros(LABELS), multilabel_offsets(priors, 1.0), multilabel_offsets(priors, fit.tau),
                                -thresholds])
    rows = [("no adjustment (tau = 0)", test[0]), ("shared tau = 1", test[1]),
            (f"shared tau = {fit.tau:.3f} (fitted on validation)", test[2]),
            ("a threshold per label (fitted on validation)", test[3])]
    positives = priors.positives
    print(f"{LABELS} labels, training positive rates {positives.max() / priors.num_samples:.1%} down to "
          f"{positives.min() / priors.num_samples:.1%} ({positives.max()} to {positives.min()} of "
          f"{priors.num_samples} samples); MLP trained with plain BCE")
    print(f"tau = {fit.tau:.4f} fitted on {SIZES['val']} validation samples, optimal on "
          f"({fit.interval[0]:.6f}, {fit.interval[1]:.6f}); measured on {SIZES['test']} test samples")
    groups = shot_groups(positives)
    sizes = {group: int((groups == group).sum()) for group in GROUPS}
    print(f"{'test split':<46}{'macro balanced error':>21}{'macro-F1':>10}"
          + "".join(f"{f'{group} ({sizes[group]})':>13}" for group in GROUPS))
    for name, evaluation in rows:
        by_group = [float(np.nanmean(evaluation.balanced_errors[groups == group])) for group in GROUPS]
        print(f"{name:<46}{evaluation.balanced_error:>21.2%}{evaluation.macro_f1:>10.2%}"
              + "".join(f"{value:>13.2%}" for value in by_group))
    print("many / medium / few: macro balanced error of the labels with > 100, 20 to 100, < 20 training positives")
    if args.dir is not None:
        args.dir.mkdir(parents=True, exist_ok=True)
        for name in ("val", "test"):
            np.save(args.dir / f"{name}_logits.npy", logits[name])
            np.save(args.dir / f"{name}_labels.npy", labels[name])
        np.save(args.dir / "train_labels.npy", labels["train"])
        print(f"wrote val/test logits and labels and train_labels.npy to {args.dir}")


if __name__ == "__main__":
    main()
