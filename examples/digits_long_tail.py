"""Real data: scikit-learn's handwritten digits, made long-tailed, and the post-hoc methods against the
logit-adjusted loss.

Run: python examples/digits_long_tail.py   (about half a minute on 2 CPU cores; needs scikit-learn)

The 1,797 8x8 digit images that ship inside scikit-learn are split per class into a balanced test split (50 per
class), a balanced validation split (20 per class) and a training split thinned with the CIFAR-LT exp profile,
n_i = int(110 * 50^(-i/9)): 110 images of the commonest digit down to 2 of the rarest. A small MLP is trained with
plain cross-entropy (ERM), and again with the logit-adjusted loss (tau = 1). The table gives the balanced error on
the test split, mean and standard deviation over five seeds (each a new thinning and a new network):
ERM; post-hoc adjustment at tau = 1 and at the tau fitted on the validation split; tau-normalisation of the last
layer fitted on the validation split; the logit-adjusted loss.
"""

import numpy as np
import torch
from sklearn.datasets import load_digits

import lacal

CLASSES, LARGEST, IMBALANCE = 10, 110, 50
TEST_PER_CLASS, VAL_PER_CLASS = 50, 20
SEEDS = range(5)


class MLP(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.body = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.ReLU())
        self.fc = torch.nn.Linear(64, CLASSES)

    def forward(self, x):
        return self.fc(self.body(x))


def split(seed: int):
    digits = load_digits()
    x, y = (digits.data / 16.0).astype(np.float32), digits.target
    rng = np.random.default_rng(seed)
    order = rng.permutation(CLASSES)  # which digit is common and which is rare changes with the seed
    counts = [int(LARGEST * IMBALANCE ** (-rank / (CLASSES - 1))) for rank in range(CLASSES)]
    parts = {"train": [], "val": [], "test": []}
    for rank, digit in enumerate(order):
        members = rng.permutation(np.flatnonzero(y == digit))
        parts["test"].append(members[:TEST_PER_CLASS])
        parts["val"].append(members[TEST_PER_CLASS:TEST_PER_CLASS + VAL_PER_CLASS])
        parts["train"].append(members[TEST_PER_CLASS + VAL_PER_CLASS:][:counts[rank]])
    return {name: (x[np.concatenate(i)], y[np.concatenate(i)]) for name, i in parts.items()}


def train(x, y, loss_fn, seed: int) -> MLP:
    torch.manual_seed(seed)
    model = MLP()
    optimiser = torch.optim.Adam(model.parameters(), lr=0.01, weight_decay=1e-4)
    inputs, targets = torch.from_numpy(x), torch.from_numpy(y)
    for _ in range(400):
        optimiser.zero_grad()
        loss_fn(model(inputs), targets).backward()
        optimiser.step()
    return model.eval()


def run(seed: int) -> dict:
    data = split(seed)
    (train_x, train_y), (val_x, val_y), (test_x, test_y) = data["train"], data["val"], data["test"]
    priors = lacal.core.priors_from_labels(train_y, CLASSES)
    erm = train(train_x, train_y, torch.nn.functional.cross_entropy, seed)
    adjusted_loss = train(train_x, train_y, lacal.methods.LogitAdjustedLoss(priors, tau=1.0), seed)
    with torch.no_grad():
        val_logits, test_logits = erm(torch.from_numpy(val_x)), erm(torch.from_numpy(test_x))
        val_features, test_features = erm.body(torch.from_numpy(val_x)), erm.body(torch.from_numpy(test_x))
        loss_logits = adjusted_loss(torch.from_numpy(test_x))
    fit = lacal.methods.fit_tau(val_logits, val_y, priors)
    norm = lacal.methods.fit_tau_norm(val_features, val_y, erm.fc.weight.detach())
    normed = lacal.methods.tau_norm_logits(test_features, erm.fc.weight.detach(), norm.tau)
    return {
        "ERM (plain cross-entropy)": lacal.methods.balanced_error(test_logits, test_y),
        "post-hoc adjustment, tau = 1": lacal.methods.balanced_error(test_logits, test_y, priors, 1.0),
        "post-hoc adjustment, fitted tau": lacal.methods.balanced_error(test_logits, test_y, priors, fit.tau),
        "tau-normalisation, fitted tau": lacal.methods.balanced_error(normed, test_y),
        "logit-adjusted loss, tau = 1": lacal.methods.balanced_error(loss_logits, test_y),
    }


def main() -> None:
    results = [run(seed) for seed in SEEDS]
    sizes = split(0)
    print(f"digits: {len(sizes['train'][1])} training images ({LARGEST} down to "
          f"{int(LARGEST * IMBALANCE ** -1)} per class), {len(sizes['val'][1])} validation, {len(sizes['test'][1])} "
          f"test; balanced error on the test split over {len(results)} seeds")
    print(f"{'method':<36}{'mean':>8}{'std':>8}")
    for name in results[0]:
        values = np.array([r[name] for r in results])
        print(f"{name:<36}{values.mean():>8.2%}{values.std():>8.2%}")


if __name__ == "__main__":
    main()
