"""Label shift: a model trained on long-tailed data, deployed where the class frequencies are different again.

Run: python examples/label_shift.py [--dir FOLDER]   (a few seconds on 2 CPU cores)

The demo's problem (100 Gaussian classes, CIFAR-100-LT training counts) with a linear classifier trained by plain
cross-entropy. The deployment data is label-shifted: its class frequencies q run the other way (the rarest training
class is the most common one there, 100 times more frequent than the rarest). Tau is fitted on the balanced
validation split; q is estimated by EM from the unlabeled deployment logits. The table compares the deployment
accuracy of the raw model, of adjusting toward a uniform target, toward the EM estimate of q, and toward the true q.
With --dir, the files are written there for the CLI (see docs/tutorials/label-shift.md).
"""

import argparse
from pathlib import Path

import numpy as np
import torch

import lacal
from lacal.cli.demo import DIMENSIONS, MEAN_SPREAD, NUM_CLASSES, long_tail_counts, make_problem, train_softmax

DEPLOYED = 20_000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path)
    folder = parser.parse_args().dir

    (train_x, train_y), (val_x, val_y), _ = make_problem(seed=0)
    model = train_softmax(train_x, train_y)
    rng = np.random.default_rng(7)
    means = np.random.default_rng(0).normal(scale=MEAN_SPREAD, size=(NUM_CLASSES, DIMENSIONS))  # as make_problem
    q = long_tail_counts()[::-1].astype(np.float64)
    q /= q.sum()
    target_y = rng.choice(NUM_CLASSES, size=DEPLOYED, p=q)
    target_x = (means[target_y] + rng.normal(size=(DEPLOYED, DIMENSIONS))).astype(np.float32)
    with torch.no_grad():
        val_logits = model(torch.from_numpy(val_x)).numpy()
        target_logits = model(torch.from_numpy(target_x)).numpy()

    priors = lacal.core.priors_from_labels(train_y, NUM_CLASSES)
    fit = lacal.methods.fit_tau(val_logits, val_y, priors)
    estimate = lacal.methods.estimate_target_priors(target_logits, priors)
    observed = np.bincount(target_y, minlength=NUM_CLASSES) / DEPLOYED
    print(f"tau = {fit.tau:.4f} (fitted on the balanced validation split)")
    print(f"EM: {estimate.iterations} iterations, converged {estimate.converged}; "
          f"max |q_em - q| = {np.abs(estimate.priors - observed).max():.4f}, "
          f"total variation {0.5 * np.abs(estimate.priors - observed).sum():.4f}")
    rows = [("raw model (no adjustment)", np.zeros(NUM_CLASSES)),
            ("adjusted toward uniform", lacal.core.offsets(priors, fit.tau)),
            ("adjusted toward q from EM", lacal.core.offsets(priors, fit.tau, estimate.priors)),
            ("adjusted toward the true q", lacal.core.offsets(priors, fit.tau, observed))]
    print(f"{'deployment data (label-shifted)':<34}{'accuracy':>10}{'balanced error':>16}")
    for name, offset in rows:
        evaluation = lacal.methods.evaluate(target_logits, target_y, offset=offset)
        print(f"{name:<34}{evaluation.accuracy:>10.2%}{evaluation.balanced_error:>16.2%}")
    if folder is not None:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "train_labels.txt").write_text("\n".join(map(str, train_y.tolist())) + "\n")
        np.save(folder / "val_logits.npy", val_logits)
        np.save(folder / "val_labels.npy", val_y)
        np.save(folder / "target_logits.npy", target_logits)
        np.save(folder / "target_labels.npy", target_y)
        print(f"wrote train_labels.txt, val_logits.npy, val_labels.npy, target_logits.npy, target_labels.npy to "
              f"{folder}/")


if __name__ == "__main__":
    main()
