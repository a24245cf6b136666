"""The paper's synthetic setting: two Gaussian classes, means +-(1, 1), identity covariance, 5% minority.

Run: python examples/gaussian_bayes.py   (a few seconds)

The balanced-error-optimal (Bayes) rule here is the sign of x . (1, 1): its balanced error is Phi(-sqrt(2)) =
7.86%. A linear softmax classifier trained by plain cross-entropy (ERM) learns the 5% prior too, so its threshold
sits too far toward the minority and its balanced error is higher. Post-hoc logit adjustment (tau = 1, or tau fitted
on a balanced validation split) and the logit-adjusted loss both move it back to the Bayes rule. Errors are measured
on 200,000 balanced test points, means over five training draws.
"""

import math

import numpy as np
import torch

import lacal

TRAIN, MINORITY, VALIDATION, TEST = 10_000, 0.05, 2_000, 200_000
MEANS = np.array([[-1.0, -1.0], [1.0, 1.0]])


def draw(rng, count: int, minority: float):
    labels = (rng.random(count) < minority).astype(np.int64)
    points = MEANS[labels] + rng.normal(size=(count, 2))
    return points.astype(np.float32), labels


def train(x, y, loss_fn, seed: int) -> torch.nn.Linear:
    torch.manual_seed(seed)
    model = torch.nn.Linear(2, 2)
    optimiser = torch.optim.LBFGS(model.parameters(), max_iter=200, line_search_fn="strong_wolfe")
    inputs, targets = torch.from_numpy(x), torch.from_numpy(y)

    def closure():
        optimiser.zero_grad()
        loss = loss_fn(model(inputs), targets)
        loss.backward()
        return loss

    optimiser.step(closure)
    return model


def main() -> None:
    bayes = 0.5 * math.erfc(math.sqrt(2) / math.sqrt(2))  # Phi(-sqrt(2))
    rows = {}
    for seed in range(5):
        rng = np.random.default_rng(seed)
        train_x, train_y = draw(rng, TRAIN, MINORITY)
        val_x, val_y = draw(rng, VALIDATION, 0.5)
        test_x, test_y = draw(rng, TEST, 0.5)
        priors = lacal.core.priors_from_labels(train_y, 2)
        erm = train(train_x, train_y, torch.nn.functional.cross_entropy, seed)
        la_loss = train(train_x, train_y, lacal.methods.LogitAdjustedLoss(priors, tau=1.0), seed)
        with torch.no_grad():
            val_logits, test_logits = erm(torch.from_numpy(val_x)), erm(torch.from_numpy(test_x))
            loss_logits = la_loss(torch.from_numpy(test_x))
        fit = lacal.methods.fit_tau(val_logits, val_y, priors)
        bayes_logits = np.stack([-(test_x @ np.ones(2)), test_x @ np.ones(2)], 1)
        for name, value in (
                ("ERM (plain cross-entropy)", lacal.methods.balanced_error(test_logits, test_y)),
                ("post-hoc adjustment, tau = 1", lacal.methods.balanced_error(test_logits, test_y, priors, 1.0)),
                ("post-hoc adjustment, fitted tau", lacal.methods.balanced_error(test_logits, test_y, priors, fit.tau)),
                ("logit-adjusted loss, tau = 1", lacal.methods.balanced_error(loss_logits, test_y)),
                ("Bayes rule, sign(x . (1, 1)), measured", lacal.methods.balanced_error(bayes_logits, test_y))):
            rows.setdefault(name, []).append(value)
    print(f"two Gaussians, means +-(1, 1), {MINORITY:.0%} minority in training; balanced error on {TEST:,} balanced "
          f"test points, mean of 5 draws")
    print(f"{'method':<42}{'balanced error':>16}{'above Bayes':>13}")
    for name, values in rows.items():
        mean = float(np.mean(values))
        print(f"{name:<42}{mean:>16.2%}{mean - bayes:>+13.2%}")
    print(f"{'Bayes-optimal balanced error, Phi(-sqrt 2)':<42}{bayes:>16.2%}")


if __name__ == "__main__":
    main()
