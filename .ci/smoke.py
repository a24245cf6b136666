"""What a notebook user does with the installed wheel: each result passed on as it is to the next call.

Run from a folder outside the checkout, after `lacal demo --dir DEMO` (it reads the demo's files):

    python path/to/.ci/smoke.py DEMO
"""

import sys
from pathlib import Path

import numpy as np
import torch

import lacal

demo = Path(sys.argv[1])
installed = Path(lacal.__file__).resolve()
assert "site-packages" in installed.parts, f"lacal was imported from {installed}, not from the installed wheel"
assert (installed.parent / "py.typed").is_file(), "the wheel lacks py.typed"

val_logits, val_labels = np.load(demo / "val_logits.npy"), np.load(demo / "val_labels.npy")
test_logits, test_labels = np.load(demo / "test_logits.npy"), np.load(demo / "test_labels.npy")

priors = lacal.count_priors(demo / "train_labels.txt")                    # a PriorsResult ...
fitted = lacal.fit(val_logits, val_labels, priors)                        # ... taken as `priors`
on_disk = lacal.Calibration.load(demo / "calibration.json")               # what `lacal demo` fitted by the CLI
assert fitted.tau == on_disk.tau, (fitted.tau, on_disk.tau)

adjusted = lacal.apply(test_logits, fitted)                               # a FitResult taken as `calibration`
expected = test_logits.astype(np.float64) - fitted.tau * np.log(priors.priors.priors)
np.testing.assert_allclose(adjusted, expected, rtol=1e-5, atol=1e-4)

report = lacal.report(test_logits, test_labels, fitted)                   # training counts from the calibration
assert np.array_equal(report.train_counts, priors.priors.counts)
assert report.adjusted.balanced_error < report.baseline.balanced_error
unadjusted = lacal.report(test_logits, test_labels, priors=priors)        # ... or from a PriorsResult
assert np.array_equal(unadjusted.train_counts, priors.priors.counts)

shift = lacal.estimate_priors(test_logits, priors)                        # an EstimateResult ...
shifted = lacal.fit(val_logits, val_labels, priors, target_priors=shift)  # ... taken as `target_priors`
np.testing.assert_allclose(shifted.target_priors, shift.priors)

head = torch.nn.Linear(4, priors.priors.num_classes)
bias = head.bias.detach().double().clone()
lacal.patch_module(head, fitted)                                          # a FitResult taken by a model patch
np.testing.assert_allclose(head.bias.detach().double().numpy(), bias.numpy() - fitted.tau * np.log(
    priors.priors.priors), atol=1e-5)

print(f"lacal {lacal.__version__} from {installed.parent}: count_priors -> fit (tau = {fitted.tau:.4f}) -> apply -> "
      f"report (balanced error {report.baseline.balanced_error:.2%} -> {report.adjusted.balanced_error:.2%}); "
      f"estimate_priors -> fit; fit -> patch_module")
