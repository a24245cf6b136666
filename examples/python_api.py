"""The three steps of lacal from Python, as you would call them at the end of a training script.

Run: python examples/python_api.py   (about 5 seconds on 2 CPU cores)

It builds the same seeded long-tailed problem as `lacal demo` (100 Gaussian classes, CIFAR-100-LT counts), trains a
linear classifier with plain cross-entropy, fits tau on the validation split and reports the test balanced error.
"""

import tempfile
from pathlib import Path

import torch

import lacal
from lacal.demo import make_problem, train_softmax


def main() -> None:
    (train_x, train_y), (val_x, val_y), (test_x, test_y) = make_problem(seed=0)
    model = train_softmax(train_x, train_y)
    with torch.no_grad():
        val_logits = model(torch.from_numpy(val_x))
        test_logits = model(torch.from_numpy(test_x))

    priors = lacal.priors_from_labels(train_y, num_classes=100)
    fit = lacal.fit_tau(val_logits, val_y, priors)  # exact search over tau in [0, 4]
    calibration = lacal.Calibration.from_fit(fit, priors)

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "calibration.json"
        calibration.save(path)
        calibration = lacal.Calibration.load(path)  # what a deployment script would do
    adjusted = calibration.adjust(test_logits)

    before = lacal.evaluate(test_logits, test_y)
    after = lacal.evaluate(adjusted, test_y)
    groups_before = lacal.group_errors(before, priors.counts)
    groups_after = lacal.group_errors(after, priors.counts)
    print(f"tau = {fit.tau:.4f}, optimal on ({fit.interval[0]:.4f}, {fit.interval[1]:.4f})")
    print(f"{'test':<18}{'before':>8}{'after':>8}")
    print(f"{'balanced error':<18}{before.balanced_error:>8.2%}{after.balanced_error:>8.2%}")
    print(f"{'accuracy':<18}{before.accuracy:>8.2%}{after.accuracy:>8.2%}")
    for group in ("many", "medium", "few"):
        print(f"{group + '-shot error':<18}{groups_before[group]['error']:>8.2%}{groups_after[group]['error']:>8.2%}")


if __name__ == "__main__":
    main()
