"""One error convention: the library names the parameter, the CLI the flag, and one mismatch has one exit code."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import lacal
from lacal.cli.app import FLAGS, app, flagged
from lacal.errors import MismatchError


def run(*args):
    return CliRunner().invoke(app, [str(a) for a in args], env={"COLUMNS": "120"})


@pytest.fixture
def head(tmp_path, files):
    """A checkpoint whose head takes 5 features, and features 3 wide (too narrow)."""
    from safetensors.torch import save_file

    classes = int(np.load(files / "val_logits.npy").shape[1])
    rows = np.load(files / "val_labels.npy").shape[0]
    save_file({"fc.weight": torch.zeros(classes, 5), "fc.bias": torch.zeros(classes)}, str(tmp_path / "m.safetensors"))
    np.save(tmp_path / "narrow.npy", np.ones((rows, 3), dtype=np.float32))
    lacal.Calibration(tau=1.0, priors=np.full(classes, 1 / classes)).save(tmp_path / "calibration.json")
    return tmp_path


def test_features_narrower_than_the_head_get_the_mismatch_code_everywhere(files, head):
    common = ["--checkpoint", head / "m.safetensors", "--features", head / "narrow.npy"]
    commands = [
        ["fit-tau", files / "val_labels.npy", "--train-labels", files / "train_labels.txt", *common],
        ["fit-tau", files / "val_labels.npy", "--method", "tau-norm", *common],
        ["report", files / "val_labels.npy", *common],
        ["report", files / "val_labels.npy", "--train-labels", files / "train_labels.txt", "--compare", *common],
        ["apply", head / "m.safetensors", "--calibration", head / "calibration.json", "--out",
         head / "out.safetensors", "--verify-features", head / "narrow.npy"],
    ]
    for args in commands:
        result = run(*args)
        assert result.exit_code == MismatchError.exit_code, (args, result.output)
        assert "features have 3 columns but" in result.stderr and "takes 5" in result.stderr, result.stderr
    assert not (head / "out.safetensors").exists()


def test_the_library_names_the_parameter_and_the_cli_the_flag(files):
    with pytest.raises(lacal.errors.OptionError) as error:
        lacal.fit(files / "val_logits.npy", files / "val_labels.npy", train_labels=files / "train_labels.txt",
                  target_logits=files / "val_logits.npy", device="cpu")
    assert error.value.source == "target_logits" and "`target_logits` is for `target_priors` em" in str(error.value)
    result = run("fit-tau", files / "val_logits.npy", files / "val_labels.npy", "--train-labels",
                 files / "train_labels.txt", "--target-logits", files / "val_logits.npy")
    assert result.exit_code == 6
    assert result.stderr.strip() == ("lacal: error: --target-logits: --target-logits is for --target-priors em")


def test_bad_library_input_is_a_lacal_error_not_a_value_error():
    with pytest.raises(lacal.errors.PriorsError):
        lacal.core.offsets([0.5, 0.0, 0.5], 1.0)
    with pytest.raises(lacal.errors.MismatchError):
        lacal.core.adjust_logits(np.zeros((2, 3), dtype=np.float32), [0.5, 0.5], 1.0)
    with pytest.raises(lacal.errors.OptionError):
        lacal.methods.estimate_target_priors(np.zeros((4, 3), dtype=np.float32), [0.2, 0.3, 0.5], tolerance=0.0)


def test_every_flag_in_the_table_is_an_option_of_the_cli():
    from typer.main import get_command

    options = {opt for command in get_command(app).commands.values() for param in command.params
               for opt in getattr(param, "opts", [])}
    assert {flag for flag in FLAGS.values()} <= options
    assert flagged("give `tau` or `unknown_name`") == "give --tau or `unknown_name`"


def test_option_mistakes(files):
    base = ["report", files / "val_logits.npy", files / "val_labels.npy"]
    result = run(*base, "--target-priors", files / "nope.json")
    assert result.exit_code == 6 and "--target-priors goes with --tau" in result.stderr
    zero = run("priors", "--em", files / "val_logits.npy", "--train-labels", files / "train_labels.txt",
               "--em-tolerance", 0)
    assert zero.exit_code == 6 and "must be > 0" in zero.stderr
