"""The library workflows give what the CLI commands give: the same --json, the same files, the same bytes."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import lacal
from lacal.cli.app import app

from . import reference
from .conftest import long_tail_problem


def run(*args) -> str:
    result = CliRunner().invoke(app, [str(a) for a in args], env={"COLUMNS": "120"}, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.stdout


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    folder = tmp_path_factory.mktemp("workflows")
    logits, labels, counts = long_tail_problem(num_samples=500, num_classes=6, seed=11)
    target, target_labels, _ = long_tail_problem(num_samples=300, num_classes=6, seed=12)
    np.save(folder / "val_logits.npy", logits)
    np.save(folder / "val_labels.npy", labels)
    np.save(folder / "test_logits.npy", target)
    np.save(folder / "test_labels.npy", target_labels)
    train = np.repeat(np.arange(len(counts)), counts)
    (folder / "train_labels.txt").write_text("\n".join(map(str, train)) + "\n")
    return folder


def test_fit_with_em_and_bias_equals_the_cli(data):
    cli = json.loads(run("fit-tau", data / "val_logits.npy", data / "val_labels.npy", "--train-labels",
                         data / "train_labels.txt", "--target-priors", "em", "--target-logits",
                         data / "test_logits.npy", "--calibrate", "bias", "--json"))
    result = lacal.fit(data / "val_logits.npy", data / "val_labels.npy", train_labels=data / "train_labels.txt",
                       target_priors="em", target_logits=data / "test_logits.npy", calibrate="bias", device="cpu")
    assert result.to_dict() == cli
    assert "balanced_error_calibrated" in cli and cli["target_priors"]["kind"] == "em"
    calibration = result.calibration
    assert calibration.bias is not None and calibration.target_priors is not None
    assert calibration.tau == cli["tau"]


def test_fit_writes_the_same_calibration_file_as_the_cli(data, tmp_path):
    run("fit-tau", data / "val_logits.npy", data / "val_labels.npy", "--train-labels", data / "train_labels.txt",
        "--calibrate", "temperature", "--out", tmp_path / "cli.json")
    lacal.fit(data / "val_logits.npy", data / "val_labels.npy", train_labels=data / "train_labels.txt",
              calibrate="temperature", out=tmp_path / "lib.json", device="cpu")
    assert json.loads((tmp_path / "cli.json").read_text()) == json.loads((tmp_path / "lib.json").read_text())


@pytest.mark.parametrize("extra", [(), ("--target-priors", "em", "--target-logits", "test_logits.npy")])
def test_report_equals_the_cli(data, monkeypatch, extra):
    monkeypatch.chdir(data)
    cli = json.loads(run("report", "test_logits.npy", "test_labels.npy", "--tau", "1.2", "--train-labels",
                         "train_labels.txt", *extra, "--json"))
    options = {"target_priors": "em", "target_logits": "test_logits.npy"} if extra else {}
    result = lacal.report("test_logits.npy", "test_labels.npy", tau=1.2, train_labels="train_labels.txt",
                          device="cpu", **options)
    assert result.to_dict() == cli
    # and from a calibration object, on arrays
    calibration = lacal.Calibration(tau=1.2, priors=lacal.core.priors_from_labels(
        np.loadtxt("train_labels.txt", dtype=np.int64), 6).priors,
        counts=lacal.core.priors_from_labels(np.loadtxt("train_labels.txt", dtype=np.int64), 6).counts)
    if not extra:
        again = lacal.report(np.load("test_logits.npy"), np.load("test_labels.npy"), calibration, device="cpu")
        assert again.to_dict()["balanced_error"] == cli["balanced_error"]


def test_estimate_priors_equals_the_cli(data, monkeypatch):
    monkeypatch.chdir(data)
    em = json.loads(run("priors", "--em", "test_logits.npy", "--train-labels", "train_labels.txt", "--json"))
    assert lacal.estimate_priors("test_logits.npy", train_labels="train_labels.txt",
                                 device="cpu").to_dict() == em


def test_apply_to_shards_writes_what_the_cli_writes(data, tmp_path):
    shards = tmp_path / "shards"
    shards.mkdir()
    logits = np.load(data / "test_logits.npy")
    for k, part in enumerate(np.array_split(logits, 3)):
        np.save(shards / f"part-{k}.npy", part)
    run("apply", shards, "--tau", "1", "--train-labels", data / "train_labels.txt", "--out", tmp_path / "cli")
    result = lacal.apply(shards, None, tmp_path / "lib", tau=1.0, train_labels=data / "train_labels.txt",
                         device="cpu")
    assert result.per_shard and result.rows == logits.shape[0]
    cli_files = sorted(p.name for p in (tmp_path / "cli").iterdir())
    assert cli_files == sorted(p.name for p in (tmp_path / "lib").iterdir()) and "index.json" in cli_files
    for name in cli_files:
        if name.endswith(".npy"):
            assert (tmp_path / "cli" / name).read_bytes() == (tmp_path / "lib" / name).read_bytes()
    index = json.loads((tmp_path / "lib" / "index.json").read_text())
    assert index["rows"] == logits.shape[0] and [s["file"] for s in index["shards"]] == [
        "part-0.npy", "part-1.npy", "part-2.npy"]
    expected = logits.astype(np.float64) - 1.0 * np.log(lacal.core.priors_from_labels(
        np.loadtxt(data / "train_labels.txt", dtype=np.int64), 6).priors)
    assert np.allclose(lacal.data.read_logits(tmp_path / "lib").rows(0, logits.shape[0]).numpy(), expected, atol=1e-5)


def _checkpoint(folder, suffix):
    rng = np.random.default_rng(6)
    state = {"backbone.weight": torch.from_numpy(rng.normal(size=(16, 12)).astype(np.float32)),
             "fc.weight": torch.from_numpy(rng.normal(size=(6, 16)).astype(np.float32)),
             "fc.bias": torch.from_numpy(rng.normal(size=6).astype(np.float32))}
    path = folder / f"model{suffix}"
    if suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(state, str(path))
    else:
        torch.save(state, path)
    return path


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_patch_checkpoint_writes_what_apply_writes(data, tmp_path, suffix):
    model = _checkpoint(tmp_path, suffix)
    run("fit-tau", data / "val_logits.npy", data / "val_labels.npy", "--train-labels", data / "train_labels.txt",
        "--calibrate", "temperature", "--out", tmp_path / "calibration.json")
    run("apply", model, "--calibration", tmp_path / "calibration.json", "--out", tmp_path / f"cli{suffix}")
    result = lacal.patch_checkpoint(model, tmp_path / "calibration.json", out=tmp_path / f"lib{suffix}",
                                    device="cpu")
    assert result.heads == ("fc",) and result.num_classes == 6
    if suffix == ".safetensors":
        assert (tmp_path / f"cli{suffix}").read_bytes() == (tmp_path / f"lib{suffix}").read_bytes()
    else:
        cli = torch.load(tmp_path / f"cli{suffix}", weights_only=True)
        lib = torch.load(tmp_path / f"lib{suffix}", weights_only=True)
        assert cli.keys() == lib.keys()
        for name in cli:
            if isinstance(cli[name], torch.Tensor):
                assert torch.equal(cli[name], lib[name])
            else:
                assert cli[name] == lib[name]
    # the patched bias is (b - tau log pi) / T, computed independently in float64
    calibration = lacal.Calibration.load(tmp_path / "calibration.json")
    original = torch.load(model, weights_only=True) if suffix == ".pt" else None
    if original is None:
        from safetensors.torch import load_file

        original, patched = load_file(str(model)), load_file(str(tmp_path / f"lib{suffix}"))
    else:
        patched = torch.load(tmp_path / f"lib{suffix}", weights_only=True)
    expected = (original["fc.bias"].double().numpy() - calibration.tau * np.log(calibration.priors)) \
        / calibration.temperature
    assert np.allclose(patched["fc.bias"].double().numpy(), expected, atol=1e-5)


def test_workflows_report_bad_input_by_parameter_name(data):
    with pytest.raises(lacal.errors.OptionError) as error:
        lacal.fit(data / "val_logits.npy", data / "val_labels.npy", device="cpu")
    assert error.value.source == "train_labels" and "`train_labels`" in error.value.problem
    with pytest.raises(lacal.errors.OptionError) as error:
        lacal.fit(data / "val_logits.npy", data / "val_labels.npy", train_labels=data / "train_labels.txt",
                  memory_budget="lots", device="cpu")
    assert error.value.source == "memory_budget"


@pytest.fixture
def six_class_calibration(tmp_path):
    """A calibration for the 6 classes of tests.models, with a temperature (folded into the head)."""
    counts = np.array([500, 200, 80, 30, 10, 3])
    calibration = lacal.Calibration(tau=1.3, priors=counts / counts.sum(), counts=counts, temperature=1.25)
    calibration.save(tmp_path / "calibration.json")
    return tmp_path / "calibration.json"


def _same_state(cli: dict, lib: dict) -> None:
    assert cli.keys() == lib.keys()
    for name in cli:
        if isinstance(cli[name], dict):
            _same_state(cli[name], lib[name])
        elif isinstance(cli[name], torch.Tensor):
            assert torch.equal(cli[name], lib[name]), name
        else:
            assert cli[name] == lib[name], name


def test_patch_checkpoint_writes_what_apply_writes_for_a_training_checkpoint(tmp_path, six_class_calibration):
    from .models import TorchvisionLike, build

    model, ema = build(TorchvisionLike, seed=0), build(TorchvisionLike, seed=1)
    torch.save({"epoch": 3, "state_dict": model.state_dict(), "state_dict_ema": ema.state_dict()},
               tmp_path / "m.pth.tar")
    run("apply", tmp_path / "m.pth.tar", "--calibration", six_class_calibration, "--out", tmp_path / "cli.pth.tar")
    result = lacal.patch_checkpoint(tmp_path / "m.pth.tar", six_class_calibration, out=tmp_path / "lib.pth.tar",
                                    device="cpu")
    cli = torch.load(tmp_path / "cli.pth.tar", weights_only=True)
    lib = torch.load(tmp_path / "lib.pth.tar", weights_only=True)
    _same_state(cli, lib)
    assert any("copies" in message for message in result.messages)  # the EMA copy is patched too
    calibration = lacal.Calibration.load(six_class_calibration)
    scale, shift = calibration.affine()
    for key, original in (("state_dict", model), ("state_dict_ema", ema)):
        expected = original.fc.bias.detach().double().numpy() * scale + shift
        assert np.allclose(lib[key]["fc.bias"].double().numpy(), expected, atol=1e-6)


def test_patch_checkpoint_writes_what_apply_writes_for_torchscript_and_onnx(tmp_path, six_class_calibration):
    from .models import TorchvisionLike, build

    model = build(TorchvisionLike)
    x = torch.randn(4, 3, 8, 8)
    torch.jit.script(model).save(str(tmp_path / "m.pt"))
    run("apply", tmp_path / "m.pt", "--calibration", six_class_calibration, "--out", tmp_path / "cli.pt")
    result = lacal.patch_checkpoint(tmp_path / "m.pt", six_class_calibration, out=tmp_path / "lib.pt", device="cpu")
    assert result.kind != "checkpoint" and result.heads == ("fc",)
    cli, lib = torch.jit.load(str(tmp_path / "cli.pt")), torch.jit.load(str(tmp_path / "lib.pt"))
    _same_state(dict(cli.state_dict()), dict(lib.state_dict()))
    scale, shift = lacal.Calibration.load(six_class_calibration).affine()
    with torch.no_grad():
        expected = model(x).double() * scale + torch.from_numpy(shift)
        assert torch.allclose(lib(x).double(), expected, atol=1e-5)

    torch.onnx.export(model, (x[:1],), str(tmp_path / "m.onnx"), dynamo=False, input_names=["x"],
                      output_names=["logits"], dynamic_axes={"x": {0: "n"}})
    run("apply", tmp_path / "m.onnx", "--calibration", six_class_calibration, "--out", tmp_path / "cli.onnx")
    lacal.patch_checkpoint(tmp_path / "m.onnx", six_class_calibration, out=tmp_path / "lib.onnx", device="cpu")
    assert (tmp_path / "cli.onnx").read_bytes() == (tmp_path / "lib.onnx").read_bytes()


def test_score_writes_what_the_cli_writes(tmp_path):
    from .models import TorchvisionLike, build

    model = build(TorchvisionLike)
    torch.jit.script(model).save(str(tmp_path / "m.pt"))
    x = torch.randn(10, 3, 8, 8)
    np.save(tmp_path / "x.npy", x.numpy())
    run("score", tmp_path / "m.pt", tmp_path / "x.npy", "--out", tmp_path / "cli.npy", "--batch-size", 3)
    result = lacal.score(tmp_path / "m.pt", tmp_path / "x.npy", tmp_path / "lib.npy", batch_size=3, device="cpu")
    assert (result.rows, result.num_classes) == (10, 6)
    assert (tmp_path / "cli.npy").read_bytes() == (tmp_path / "lib.npy").read_bytes()
    with torch.no_grad():
        assert np.allclose(np.load(tmp_path / "lib.npy"), model(x).numpy(), atol=1e-5)


RATES = np.array([0.5, 0.3, 0.15, 0.08, 0.04, 0.02])


@pytest.fixture(scope="module")
def multi(tmp_path_factory):
    """A multi-label head: logits f = 1.8 y - 0.9 + noise + log-odds of the label rates, as BCE learns them."""
    folder = tmp_path_factory.mktemp("multilabel")
    rng = np.random.default_rng(5)

    def split(size):
        y = rng.random((size, RATES.size)) < RATES
        return (1.8 * y - 0.9 + rng.normal(size=y.shape) + np.log(RATES / (1 - RATES))).astype(np.float32), y

    val_f, val_y = split(400)
    test_f, test_y = split(500)
    train_y = rng.random((2500, RATES.size)) < RATES
    for name, array in (("val_logits", val_f), ("val_labels", val_y), ("test_logits", test_f),
                        ("test_labels", test_y.astype(np.uint8)), ("train_labels", train_y.astype(np.uint8))):
        np.save(folder / f"{name}.npy", array)
    return folder, val_f, val_y, test_f, test_y, train_y


def _macro_balanced_error(f, y, offsets):
    predicted = f.astype(np.float64) + offsets > 0
    rates = [((~predicted[:, k] & y[:, k]).sum() / y[:, k].sum()
              + (predicted[:, k] & ~y[:, k]).sum() / (~y[:, k]).sum()) / 2
             for k in range(y.shape[1]) if y[:, k].any() and not y[:, k].all()]
    return float(np.mean(rates))


@pytest.fixture(params=["single-label", "multi-label"])
def task_data(request, data, multi):
    """One task's files and arrays: (CLI flags, folder, training labels file, val logits, val labels, train labels)."""
    if request.param == "single-label":
        return ((), data, data / "train_labels.txt", np.load(data / "val_logits.npy"),
                np.load(data / "val_labels.npy"), np.loadtxt(data / "train_labels.txt", dtype=np.int64))
    folder, val_f, val_y, _, _, train_y = multi
    return ("--multi-label",), folder, folder / "train_labels.npy", val_f, val_y, train_y


def test_fit_from_arrays_and_files_equals_the_cli_and_numpy(task_data, tmp_path):
    flags, folder, train_file, val_f, val_y, train_y = task_data
    multi_label = bool(flags)
    cli = json.loads(run("fit-tau", folder / "val_logits.npy", folder / "val_labels.npy", "--train-labels",
                         train_file, *flags, "--json", "--device", "cpu", "--out", tmp_path / "cli.json"))
    for logits in (val_f, torch.from_numpy(val_f)):
        result = lacal.fit(logits, val_y, train_labels=train_y, multi_label=multi_label, device="cpu")
        assert isinstance(result, lacal.FitResult) and result.task.multi_label is multi_label
        assert result.calibration.multi_label is multi_label
        assert result.to_dict() == cli and result.warnings == ()
    files = lacal.fit(folder / "val_logits.npy", folder / "val_labels.npy", train_labels=train_file,
                      multi_label=multi_label, device="cpu", out=tmp_path / "lib.json")
    assert files.to_dict() == cli and files.out == tmp_path / "lib.json"
    assert lacal.Calibration.load(tmp_path / "lib.json") == lacal.Calibration.load(tmp_path / "cli.json")
    # the offsets and the balanced error after, computed here in float64 from the training labels
    if multi_label:
        positives = train_y.sum(0).astype(np.float64)
        offsets = -result.tau * np.log(positives / (train_y.shape[0] - positives))
        balanced_error = _macro_balanced_error(val_f, val_y, offsets)
    else:
        counts = np.bincount(train_y, minlength=val_f.shape[1]).astype(np.float64)
        offsets = -result.tau * np.log(counts / counts.sum())
        balanced_error = reference.metric_at(val_f, val_y, counts, result.tau)
    assert np.allclose(result.calibration.offsets, offsets)
    assert cli["balanced_error_after"] == pytest.approx(balanced_error)
    if multi_label:
        with pytest.raises(lacal.errors.OptionError) as error:
            lacal.fit(val_f, val_y, train_labels=train_y, multi_label=True, calibrate="bias")
        assert error.value.source == "calibrate"


def test_report_compare_and_priors_equal_the_cli_and_numpy(task_data, tmp_path):
    flags, folder, train_file, _, _, train_y = task_data
    multi_label = bool(flags)
    test_f, test_y = np.load(folder / "test_logits.npy"), np.load(folder / "test_labels.npy")
    test_y = test_y.astype(bool) if multi_label else test_y  # a 0/1 matrix, saved as uint8
    run("fit-tau", folder / "val_logits.npy", folder / "val_labels.npy", "--train-labels", train_file, *flags,
        "--device", "cpu", "--out", tmp_path / "cal.json")
    calibration = lacal.Calibration.load(tmp_path / "cal.json")
    cli = json.loads(run("report", folder / "test_logits.npy", folder / "test_labels.npy", "--calibration",
                         tmp_path / "cal.json", *flags, "--json", "--device", "cpu"))
    result = lacal.report(test_f, test_y, calibration, multi_label=multi_label, device="cpu")
    assert result.to_dict() == cli
    assert lacal.report(folder / "test_logits.npy", folder / "test_labels.npy", tmp_path / "cal.json",
                        multi_label=multi_label, device="cpu").to_dict() == cli
    expected = (_macro_balanced_error(test_f, test_y, calibration.offsets) if multi_label
                else reference.metric_at(test_f, test_y, calibration.priors, calibration.tau))
    assert result.task.multi_label is multi_label and result.main.balanced_error == pytest.approx(expected)
    compare = json.loads(run("report", folder / "val_logits.npy", folder / "val_labels.npy", "--train-labels",
                             train_file, "--compare", "--test-logits", folder / "test_logits.npy",
                             "--test-labels", folder / "test_labels.npy", *flags, "--json", "--device", "cpu"))
    methods = lacal.compare(folder / "val_logits.npy", folder / "val_labels.npy", train_labels=train_y,
                            test_logits=folder / "test_logits.npy", test_labels=test_y, multi_label=multi_label,
                            device="cpu")
    assert methods.to_dict() == compare and not methods.warnings
    priors = json.loads(run("priors", train_file, *flags, "--json"))
    assert lacal.count_priors(train_file, multi_label=multi_label).to_dict() == priors
    counted = train_y.sum(0) if multi_label else np.bincount(train_y)
    assert priors["positives" if multi_label else "counts"] == counted.tolist()


@pytest.mark.parametrize("kind", ["numpy", "torch"])
def test_apply_in_memory_and_to_a_file_returns_the_cli_output(task_data, tmp_path, kind):
    flags, folder, train_file, _, _, _ = task_data
    multi_label = bool(flags)
    calibrate = () if multi_label else ("--calibrate", "temperature")
    run("fit-tau", folder / "val_logits.npy", folder / "val_labels.npy", "--train-labels", train_file, *flags,
        *calibrate, "--device", "cpu", "--out", tmp_path / "calibration.json")
    run("apply", folder / "test_logits.npy", "--calibration", tmp_path / "calibration.json", "--out",
        tmp_path / "adjusted.npy", "--device", "cpu")
    written = np.load(tmp_path / "adjusted.npy")
    logits = np.load(folder / "test_logits.npy")
    given = torch.from_numpy(logits) if kind == "torch" else logits
    calibration = lacal.Calibration.load(tmp_path / "calibration.json")
    adjusted = lacal.apply(given, calibration, device="cpu")
    assert type(adjusted) is type(given) and adjusted.dtype == given.dtype and adjusted.shape == given.shape
    assert written.dtype == logits.dtype and np.array_equal(np.asarray(adjusted), written)
    # an independent float64 computation: (f - tau log pi) / T, or f - tau log(pi / (1 - pi))
    pi = calibration.priors
    expected = (logits.astype(np.float64) - calibration.tau * (np.log(pi / (1 - pi)) if multi_label else np.log(pi))
                ) / calibration.temperature
    assert np.allclose(np.asarray(adjusted), expected, rtol=1e-5, atol=1e-5)
    by_path = lacal.apply(given, tmp_path / "calibration.json", multi_label=multi_label, device="cpu")
    assert np.array_equal(np.asarray(by_path), written)
    result = lacal.apply(folder / "test_logits.npy", tmp_path / "calibration.json", tmp_path / "lib.npy",
                         device="cpu", multi_label=multi_label)
    assert result.rows == logits.shape[0] and result.num_classes == logits.shape[1]
    assert result.task.multi_label is multi_label
    assert (tmp_path / "lib.npy").read_bytes() == (tmp_path / "adjusted.npy").read_bytes()
