"""PyTorch Lightning, for real: `.ckpt` files written by `Trainer.save_checkpoint` patched by `lacal apply` and
reloaded with `LightningModule.load_from_checkpoint`, their SWA / EMA copies, and the `LogitAdjustment` callback
(its logged numbers equal `lacal.fit` on the same logits; its patched best checkpoint reloads adjusted), in one
process and under DDP with two CPU processes (gloo)."""

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

L = pytest.importorskip("lightning")

from lightning.pytorch.callbacks import ModelCheckpoint, StochasticWeightAveraging  # noqa: E402
from lightning.pytorch.loggers import CSVLogger  # noqa: E402

import lacal  # noqa: E402
from lacal.cli.app import app  # noqa: E402
from lacal.integrations.lightning import LogitAdjustment  # noqa: E402

from .lightning_model import COUNTS, TinyClassifier, loaders, val_logits  # noqa: E402

warnings.filterwarnings("ignore", message=".*does not have many workers.*")
warnings.filterwarnings("ignore", message=".*isinstance\\(treespec, LeafSpec\\).*")


def trainer(tmp_path, epochs=1, callbacks=(), **kwargs):
    return L.Trainer(max_epochs=epochs, accelerator="cpu", devices=1, default_root_dir=tmp_path,
                     enable_progress_bar=False, enable_model_summary=False, logger=kwargs.pop("logger", False),
                     callbacks=list(callbacks), **kwargs)


def calibration_for(model, val_loader, tmp_path):
    logits, targets = val_logits(model, val_loader)
    result = lacal.fit(logits.numpy(), targets.numpy(), np.array(COUNTS), out=tmp_path / "cal.json")
    return result.calibration


def assert_adjusted(patched, original, calibration):
    expected = original.double() + torch.from_numpy(calibration.offsets)
    tolerance = 8 * torch.finfo(torch.float32).eps * (1 + float(expected.abs().max()))
    torch.testing.assert_close(patched.double(), expected, rtol=0, atol=tolerance)


def test_lacal_apply_patches_a_lightning_ckpt_that_load_from_checkpoint_reloads(tmp_path):
    train, val = loaders()
    model = TinyClassifier()
    t = trainer(tmp_path, callbacks=[ModelCheckpoint(dirpath=tmp_path / "checkpoints")])
    t.fit(model, train, val)
    t.save_checkpoint(tmp_path / "model.ckpt")
    calibration = calibration_for(model, val, tmp_path)
    result = CliRunner().invoke(app, ["apply", str(tmp_path / "model.ckpt"), "--calibration",
                                      str(tmp_path / "cal.json"), "--out", str(tmp_path / "patched.ckpt")])
    assert result.exit_code == 0, result.output
    original, _ = val_logits(TinyClassifier.load_from_checkpoint(tmp_path / "model.ckpt"), val)
    patched_model = TinyClassifier.load_from_checkpoint(tmp_path / "patched.ckpt")
    patched, _ = val_logits(patched_model, val)
    assert_adjusted(patched, original, calibration)
    assert patched_model.hparams == model.hparams
    before = torch.load(tmp_path / "model.ckpt", weights_only=True)
    after = torch.load(tmp_path / "patched.ckpt", weights_only=True)
    assert set(after) == set(before) | {"lacal_patch"}
    for key in ("epoch", "global_step", "hyper_parameters", "loops", "callbacks", "pytorch-lightning_version"):
        assert after[key] == before[key], key
    torch.testing.assert_close(after["optimizer_states"], before["optimizer_states"])
    for name, tensor in before["state_dict"].items():
        if name != "classifier.bias":
            assert torch.equal(after["state_dict"][name], tensor), name
    assert after["lacal_patch"]["tau"] == calibration.tau
    # a Trainer resumes from the patched file as from any other
    trainer(tmp_path, epochs=2).fit(TinyClassifier(), train, val, ckpt_path=tmp_path / "patched.ckpt")


def test_swa_and_ema_copies_in_a_lightning_ckpt_are_patched_too(tmp_path):
    EMAWeightAveraging = getattr(L.pytorch.callbacks, "EMAWeightAveraging", None)
    if EMAWeightAveraging is None:
        pytest.skip("this Lightning has no EMAWeightAveraging (2.6 and later)")

    train, val = loaders()
    for name, callback in (("swa", StochasticWeightAveraging(swa_lrs=0.01, swa_epoch_start=1)),
                           ("ema", EMAWeightAveraging(decay=0.5))):
        saver = ModelCheckpoint(dirpath=tmp_path / name)  # saved while training: the copies differ from the model
        trainer(tmp_path / name, epochs=2, callbacks=[callback, saver]).fit(TinyClassifier(), train, val)
        patch = lacal.patch_checkpoint(saver.best_model_path, tau=1.0, priors=np.array(COUNTS),
                                       out=tmp_path / f"{name}-adjusted.ckpt")
        before = torch.load(saver.best_model_path, weights_only=True)
        after = torch.load(tmp_path / f"{name}-adjusted.ckpt", weights_only=True)
        offsets = torch.from_numpy(patch.calibration.offsets).float()
        # SWA keeps its averaged model in its callback state; EMAWeightAveraging saves the average as the state
        # dict and the live model as current_model_state, a copy with its own bias
        where = ("callbacks", "StochasticWeightAveraging", "average_model_state") if name == "swa" else \
            ("current_model_state",)
        key = "classifier.bias"
        copy_before, copy_after = before, after
        for part in where:
            copy_before, copy_after = copy_before[part], copy_after[part]
        assert not torch.equal(copy_before[key], before["state_dict"][key])
        torch.testing.assert_close(copy_after[key], copy_before[key] + offsets)
        torch.testing.assert_close(after["state_dict"]["classifier.bias"],
                                   before["state_dict"]["classifier.bias"] + offsets)
        assert after["lacal_patch"]["copies"] == ["/".join(where)]


@pytest.mark.parametrize("return_logits", [False, True], ids=["head-hook", "step-outputs"])
def test_callback_logs_lacal_fit_numbers_and_leaves_an_adjusted_best_checkpoint(tmp_path, return_logits):
    train, val = loaders()
    callback = LogitAdjustment()
    # a checkpoint of the second epoch only, then a third: the calibration beside it must be the one fitted at its
    # validation, not the last one
    best = ModelCheckpoint(dirpath=tmp_path / "checkpoints", every_n_epochs=2)
    t = trainer(tmp_path, epochs=3, callbacks=[callback, best], logger=CSVLogger(tmp_path / "logs"))
    t.fit(TinyClassifier(return_logits=return_logits), train, val)
    assert Path(best.best_model_path).name.startswith("epoch=1")
    # the priors are the training counts, seen in the first epoch's batches
    assert callback.calibration.counts.tolist() == list(COUNTS)
    # the best checkpoint's numbers are lacal.fit on that model's validation logits
    best_model = TinyClassifier.load_from_checkpoint(best.best_model_path)
    logits, targets = val_logits(best_model, val)
    expected = lacal.fit(logits.numpy(), targets.numpy(), np.array(COUNTS))
    saved = lacal.Calibration.load(callback.calibration_path)
    assert callback.calibration_path == Path(best.best_model_path).parent / "calibration.json"
    assert saved.tau == expected.tau and saved.tau_interval == expected.calibration.tau_interval
    patched, _ = val_logits(TinyClassifier.load_from_checkpoint(callback.patched_path), val)
    assert_adjusted(patched, logits, saved)
    # logged through the Trainer's loggers: the last validation's numbers are lacal.fit on the last model's logits
    last, _ = val_logits(t.lightning_module, val)
    expected = lacal.fit(last.numpy(), targets.numpy(), np.array(COUNTS)).tau_fit
    rows = (tmp_path / "logs" / "lightning_logs" / "version_0" / "metrics.csv").read_text().splitlines()
    header, values = rows[0].split(","), rows[-1].split(",")
    logged = {name: float(value) for name, value in zip(header, values) if value and name.startswith("val/")}
    assert logged["val/tau"] == pytest.approx(expected.tau, rel=1e-6)
    assert logged["val/balanced_error"] == pytest.approx(expected.before.balanced_error, rel=1e-6)
    assert logged["val/balanced_error_adjusted"] == pytest.approx(expected.after.balanced_error, rel=1e-6)
    assert logged["val/worst_class_error_adjusted"] == pytest.approx(expected.after.worst_class_error, rel=1e-6)
    assert logged["val/balanced_error_adjusted"] < logged["val/balanced_error"]


def test_callback_takes_a_count_priors_result_and_hooks_the_head(tmp_path):
    """Results compose: `priors=lacal.count_priors(...)` with a validation_step that returns no logits (the head is
    found by the priors' number of classes; `len()` of the result failed before)."""
    train, val = loaders()
    callback = LogitAdjustment(priors=lacal.count_priors(np.repeat(np.arange(len(COUNTS)), COUNTS)))
    t = trainer(tmp_path, epochs=1, callbacks=[callback], enable_checkpointing=False)
    t.fit(TinyClassifier(return_logits=False), train, val)
    logits, targets = val_logits(t.lightning_module, val)
    assert callback.calibration.tau == lacal.fit(logits.numpy(), targets.numpy(), np.array(COUNTS)).tau


def test_callback_patches_the_module_in_memory(tmp_path):
    class Snapshot(L.Callback):  # runs before LogitAdjustment's on_fit_end: the weights before the patch
        def on_fit_end(self, trainer, pl_module):
            self.state = {name: tensor.clone() for name, tensor in pl_module.state_dict().items()}

    train, val = loaders()
    model, snapshot = TinyClassifier(), Snapshot()
    callback = LogitAdjustment(priors=list(COUNTS), save=False, patch_module=True)
    trainer(tmp_path, epochs=1, callbacks=[snapshot, callback]).fit(model, train, val)
    assert callback.patched_path is None and model.lacal_patch["tau"] == callback.calibration.tau
    unpatched = TinyClassifier()
    unpatched.load_state_dict(snapshot.state)
    logits, targets = val_logits(unpatched, val)
    assert lacal.fit(logits.numpy(), targets.numpy(), np.array(COUNTS)).tau == callback.calibration.tau
    assert_adjusted(val_logits(model, val)[0], logits, callback.calibration)


DDP_SCRIPT = """
import json, sys, warnings
sys.path.insert(0, {root!r})
warnings.filterwarnings("ignore")
import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lacal.integrations.lightning import LogitAdjustment
from tests.lightning_model import TinyClassifier, long_tail_data

torch.manual_seed(0)
train, val = long_tail_data(per_class_val=61)   # 305 samples: DistributedSampler pads rank 1 with a repeat
train_loader = torch.utils.data.DataLoader(train, batch_size=64, shuffle=True)
val_loader = torch.utils.data.DataLoader(val, batch_size=64)
callback = LogitAdjustment()
best = ModelCheckpoint(dirpath={out!r}, monitor="val/balanced_error_adjusted")
trainer = L.Trainer(max_epochs=1, accelerator="cpu", devices=2, strategy="ddp", logger=False,
                    enable_progress_bar=False, enable_model_summary=False, callbacks=[callback, best])
trainer.fit(TinyClassifier(), train_loader, val_loader)
if trainer.is_global_zero:
    print("RESULT " + json.dumps({{"best": best.best_model_path, "tau": callback.calibration.tau,
                                  "counts": callback.calibration.counts.tolist(),
                                  "logged": float(trainer.callback_metrics["val/tau"]),
                                  "samples": callback.result.tau_fit.num_samples}}))
"""


@pytest.mark.slow
def test_callback_under_ddp_with_two_cpu_processes_equals_one_process_fit(tmp_path):
    from .lightning_model import long_tail_data

    root = str(Path(__file__).resolve().parent.parent)
    script = tmp_path / "ddp_fit.py"
    script.write_text(DDP_SCRIPT.format(root=root, out=str(tmp_path / "checkpoints")))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": root, "PL_DISABLE_FORK": "1"}
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=240, env=env,
                          cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(next(line for line in done.stdout.splitlines() if line.startswith("RESULT "))[7:])
    _, val = long_tail_data(per_class_val=61)
    loader = torch.utils.data.DataLoader(val, batch_size=64)
    logits, targets = val_logits(TinyClassifier.load_from_checkpoint(result["best"]), loader)
    # every validation sample once (DistributedSampler's repeat left out), merged exactly across the two ranks
    assert result["samples"] == len(val) == 305
    counts = np.array(result["counts"])
    assert counts.sum() in (sum(COUNTS), sum(COUNTS) + 1)  # the training sampler may repeat one sample too
    assert np.abs(counts - np.array(COUNTS)).max() <= 1
    expected = lacal.fit(logits.numpy(), targets.numpy(), counts)
    assert result["tau"] == expected.tau
    assert result["logged"] == pytest.approx(expected.tau, rel=1e-6)  # logged as a float32 tensor
    saved = lacal.Calibration.load(Path(result["best"]).parent / "calibration.json")
    assert saved.tau == expected.tau
    patched, _ = val_logits(TinyClassifier.load_from_checkpoint(Path(result["best"]).with_name(
        Path(result["best"]).stem + "-adjusted.ckpt")), loader)
    assert_adjusted(patched, logits, saved)
