"""lacal from Python, one call per step, as you would call it at the end of a training script.

Run: python examples/python_api.py   (about 10 seconds on 2 CPU cores)

It builds the same seeded long-tailed problem as `lacal demo` (100 Gaussian classes, CIFAR-100-LT counts), trains a
linear classifier with plain cross-entropy, then:
1. fits tau, with the target priors estimated by EM from the unlabeled test logits and a bias calibration;
2. applies the calibration to test logits stored as shards (one adjusted file per shard, and index.json);
3. patches a checkpoint of the model (safetensors), and 4. the model itself in memory;
5. reports the test errors before and after.
"""

import tempfile
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch

import lacal
from lacal.cli.demo import make_problem, train_softmax


def main() -> None:
    (train_x, train_y), (val_x, val_y), (test_x, test_y) = make_problem(seed=0)
    model = torch.nn.Sequential(OrderedDict(fc=train_softmax(train_x, train_y)))
    with torch.no_grad():
        val_logits = model(torch.from_numpy(val_x))
        test_logits = model(torch.from_numpy(test_x))

    with tempfile.TemporaryDirectory() as name:
        folder = Path(name)
        # 1. tau, EM target priors from the unlabeled test logits, and a per-class bias calibration
        result = lacal.fit(val_logits, val_y, train_labels=train_y, target_priors="em", target_logits=test_logits,
                           calibrate="bias", out=folder / "calibration.json")
        calibration = result.calibration
        print(f"tau = {result.tau:.4f}, temperature = {calibration.temperature:.3f}, "
              f"validation balanced error with the bias {result.calibrated.balanced_error:.2%}")

        # 2. test logits stored as shards: one adjusted file per shard, and an index.json
        (folder / "test").mkdir()
        for k, part in enumerate(np.array_split(test_logits.numpy(), 4)):
            np.save(folder / "test" / f"part-{k}.npy", part)
        written = lacal.apply(folder / "test", calibration, folder / "adjusted")
        print(f"wrote {written.rows} adjusted rows to {written.out.name}/: "
              f"{sorted(p.name for p in written.out.iterdir())}")

        # 3. a checkpoint whose classifier bias carries the adjustment
        from safetensors.torch import save_file

        save_file(model.state_dict(), str(folder / "model.safetensors"))
        patched = lacal.patch_checkpoint(folder / "model.safetensors", calibration,
                                         out=folder / "model-adjusted.safetensors")
        print(f"patched {patched.heads} of the checkpoint ({patched.num_classes} classes)")

    # 4. the model in memory: afterwards model(x) returns the calibrated, adjusted logits
    lacal.patch_module(model, calibration)
    with torch.no_grad():
        adjusted = model(torch.from_numpy(test_x))
    assert torch.allclose(adjusted, lacal.apply(test_logits, calibration), atol=1e-4)

    # 5. the test errors before and after, with the shot groups of the training counts the calibration holds
    report = lacal.report(test_logits, test_y, calibration)

    before, after = report.baseline, report.adjusted
    groups_before, groups_after = report.groups(before), report.groups(after)
    print(f"{'test':<18}{'before':>8}{'after':>8}")
    print(f"{'balanced error':<18}{before.balanced_error:>8.2%}{after.balanced_error:>8.2%}")
    print(f"{'accuracy':<18}{before.accuracy:>8.2%}{after.accuracy:>8.2%}")
    for group in ("many", "medium", "few"):
        print(f"{group + '-shot error':<18}{groups_before[group]['error']:>8.2%}{groups_after[group]['error']:>8.2%}")


if __name__ == "__main__":
    main()
