"""Golden outputs: every command run with --json (and every file `apply` writes) on fixed inputs, against the output
stored in tests/golden/. They pin today's behaviour so that moving code between modules cannot change a key, a value or
a written byte unnoticed.

Inputs are made by numpy's seeded generator (stable across machines and versions). Floats are compared to 1e-9
relative, which absorbs the last-bit differences of transcendental functions between CPUs but nothing a change of
method would cause; integers, strings and keys must match exactly.

To regenerate after an intended change: LACAL_UPDATE_GOLDEN=1 python -m pytest tests/test_golden.py, then read the
diff of tests/golden/ before committing it.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from lacal.cli.app import app

from .conftest import long_tail_problem

GOLDEN = Path(__file__).parent / "golden"
UPDATE = os.environ.get("LACAL_UPDATE_GOLDEN") == "1"


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """Validation and test logits of one long-tailed problem (the test split shifted toward rare classes), its
    training labels, and a small checkpoint whose head produces such logits."""
    import torch

    folder = tmp_path_factory.mktemp("golden")
    logits, labels, counts = long_tail_problem(num_samples=600, num_classes=8, seed=3)
    test_logits, test_labels, _ = long_tail_problem(num_samples=400, num_classes=8, seed=4)
    np.save(folder / "val_logits.npy", logits)
    np.save(folder / "val_labels.npy", labels)
    np.save(folder / "test_logits.npy", test_logits)
    np.save(folder / "test_labels.npy", test_labels)
    train = np.repeat(np.arange(len(counts)), counts)
    np.random.default_rng(5).shuffle(train)
    (folder / "train_labels.txt").write_text("\n".join(map(str, train)) + "\n")
    rng = np.random.default_rng(6)
    state = {"backbone.weight": torch.from_numpy(rng.normal(size=(16, 12)).astype(np.float32)),
             "fc.weight": torch.from_numpy(rng.normal(size=(8, 16)).astype(np.float32)),
             "fc.bias": torch.from_numpy(rng.normal(size=8).astype(np.float32))}
    from safetensors.torch import save_file

    save_file(state, str(folder / "model.safetensors"))
    _multi_label_inputs(folder)
    return folder


RATES = np.array([0.4, 0.2, 0.08, 0.03, 0.5, 0.01])


def _multi_label_inputs(folder: Path) -> None:
    """A multi-label problem (6 labels of long-tailed positive rates; logits as binary cross-entropy learns them) and
    a small checkpoint with a 6-label head."""
    import torch
    from safetensors.torch import save_file

    rng = np.random.default_rng(7)
    for split, size in (("ml_val", 500), ("ml_test", 700)):
        y = rng.random((size, RATES.size)) < RATES
        f = 1.8 * y - 0.9 + rng.normal(size=y.shape) + np.log(RATES / (1 - RATES))
        np.save(folder / f"{split}_logits.npy", f.astype(np.float32))
        np.save(folder / f"{split}_labels.npy", y.astype(np.uint8))
    np.save(folder / "ml_train_labels.npy", (rng.random((3000, RATES.size)) < RATES).astype(np.uint8))
    state = {"backbone.weight": torch.from_numpy(rng.normal(size=(16, 12)).astype(np.float32)),
             "fc.weight": torch.from_numpy(rng.normal(size=(RATES.size, 16)).astype(np.float32)),
             "fc.bias": torch.from_numpy(rng.normal(size=RATES.size).astype(np.float32))}
    save_file(state, str(folder / "ml_model.safetensors"))


def _run(folder: Path, *args) -> str:
    result = CliRunner().invoke(app, [str(a) for a in args], env={"COLUMNS": "120"}, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.stdout


def _normalise(value, folder: Path):
    """Replace the run's temporary folder in strings so that paths compare."""
    if isinstance(value, dict):
        return {k: _normalise(v, folder) for k, v in value.items()}
    if isinstance(value, list):
        return [_normalise(v, folder) for v in value]
    if isinstance(value, str):
        return value.replace(str(folder), "<dir>")
    return value


def _same(got, want, where="") -> None:
    if isinstance(want, dict):
        assert isinstance(got, dict) and list(got) == list(want), f"{where}: keys {list(got)} != {list(want)}"
        for key in want:
            _same(got[key], want[key], f"{where}.{key}")
    elif isinstance(want, list):
        assert isinstance(got, list) and len(got) == len(want), f"{where}: {got!r} != {want!r}"
        for i, (g, w) in enumerate(zip(got, want)):
            _same(g, w, f"{where}[{i}]")
    elif isinstance(want, float) and not isinstance(got, bool) and isinstance(got, (int, float)):
        assert math.isclose(got, want, rel_tol=1e-9, abs_tol=1e-12), f"{where}: {got!r} != {want!r}"
    else:
        assert type(got) is type(want) and got == want, f"{where}: {got!r} != {want!r}"


def _check(name: str, value) -> None:
    path = GOLDEN / f"{name}.json"
    if UPDATE:
        GOLDEN.mkdir(exist_ok=True)
        path.write_text(json.dumps(value, indent=1, sort_keys=False) + "\n", encoding="utf-8")
        return
    assert path.exists(), f"no golden output {path}; run with LACAL_UPDATE_GOLDEN=1 to create it"
    _same(value, json.loads(path.read_text(encoding="utf-8")), name)


def _array_summary(array: np.ndarray) -> dict:
    """An array as shape, dtype and values (floats compared to 1e-9 relative by _same)."""
    return {"shape": list(array.shape), "dtype": str(array.dtype), "values": array.astype(np.float64).ravel().tolist()}


PRIORS = ("--train-labels", "train_labels.txt")
ML_PRIORS = ("--train-labels", "ml_train_labels.npy")

COMMANDS = {
    "priors": ("priors", "train_labels.txt", "--json"),
    "priors_em": ("priors", "--em", "test_logits.npy", *PRIORS, "--json"),
    "fit_exact": ("fit-tau", "val_logits.npy", "val_labels.npy", *PRIORS, "--json"),
    "fit_grid": ("fit-tau", "val_logits.npy", "val_labels.npy", *PRIORS, "--search", "grid", "--grid-size", "41",
                 "--json"),
    "fit_worst": ("fit-tau", "val_logits.npy", "val_labels.npy", *PRIORS, "--metric", "worst-class-error", "--json"),
    "fit_range": ("fit-tau", "val_logits.npy", "val_labels.npy", *PRIORS, "--tau-range", "-1,2", "--json"),
    "fit_em_bias": ("fit-tau", "val_logits.npy", "val_labels.npy", *PRIORS, "--target-priors", "em",
                    "--target-logits", "test_logits.npy", "--calibrate", "bias", "--json"),
    "fit_temperature": ("fit-tau", "val_logits.npy", "val_labels.npy", *PRIORS, "--calibrate", "temperature",
                        "--json"),
    "report_tau": ("report", "test_logits.npy", "test_labels.npy", "--tau", "1", *PRIORS, "--json"),
    "report_em": ("report", "test_logits.npy", "test_labels.npy", "--tau", "1", *PRIORS, "--target-priors", "em",
                  "--target-logits", "test_logits.npy", "--json"),
    "report_compare": ("report", "val_logits.npy", "val_labels.npy", *PRIORS, "--compare", "--test-logits",
                       "test_logits.npy", "--test-labels", "test_labels.npy", "--json"),
    "ml_priors": ("priors", "ml_train_labels.npy", "--multi-label", "--json"),
    "ml_fit": ("fit-tau", "ml_val_logits.npy", "ml_val_labels.npy", *ML_PRIORS, "--multi-label", "--json"),
    "ml_fit_f1": ("fit-tau", "ml_val_logits.npy", "ml_val_labels.npy", *ML_PRIORS, "--multi-label", "--metric",
                  "macro-f1", "--tau-range", "-1,3", "--json"),
    "ml_report": ("report", "ml_test_logits.npy", "ml_test_labels.npy", "--multi-label", "--json"),
    "ml_report_tau": ("report", "ml_test_logits.npy", "ml_test_labels.npy", "--tau", "1", *ML_PRIORS,
                      "--multi-label", "--json"),
    "ml_report_compare": ("report", "ml_val_logits.npy", "ml_val_labels.npy", *ML_PRIORS, "--multi-label",
                          "--compare", "--test-logits", "ml_test_logits.npy", "--test-labels", "ml_test_labels.npy",
                          "--json"),
    "ml_report_compare_f1": ("report", "ml_val_logits.npy", "ml_val_labels.npy", *ML_PRIORS, "--multi-label",
                             "--compare", "--metric", "macro-f1", "--json"),
}


@pytest.mark.parametrize("name", list(COMMANDS))
def test_command_json_is_unchanged(inputs, monkeypatch, name):
    monkeypatch.chdir(inputs)
    output = json.loads(_run(inputs, *COMMANDS[name]))
    _check(name, _normalise(output, inputs))


def test_calibration_file_and_apply_outputs_are_unchanged(inputs, monkeypatch, tmp_path):
    monkeypatch.chdir(inputs)
    _run(inputs, "fit-tau", "val_logits.npy", "val_labels.npy", *PRIORS, "--calibrate", "temperature", "--out",
         tmp_path / "calibration.json", "--json")
    calibration = json.loads((tmp_path / "calibration.json").read_text())
    _check("calibration_file", _normalise(calibration, inputs))

    _run(inputs, "apply", "test_logits.npy", "--calibration", tmp_path / "calibration.json", "--out",
         tmp_path / "adjusted.npy")
    _run(inputs, "apply", "test_logits.npy", "--calibration", tmp_path / "calibration.json", "--out",
         tmp_path / "predictions.csv", "--top-k", "2")
    _run(inputs, "apply", "model.safetensors", "--calibration", tmp_path / "calibration.json", "--out",
         tmp_path / "patched.safetensors")
    from safetensors import safe_open

    with safe_open(str(tmp_path / "patched.safetensors"), framework="np") as handle:
        tensors = {name: _array_summary(handle.get_tensor(name)) for name in sorted(handle.keys())}
        metadata = dict(sorted((handle.metadata() or {}).items()))
    metadata["lacal_patch"] = json.loads(metadata["lacal_patch"])
    # The record names the calibration by the sha256 of its bytes, whose last float digits vary with numpy's build:
    # check it against the file this run wrote, and pin everything else.
    written = hashlib.sha256((tmp_path / "calibration.json").read_bytes()).hexdigest()
    assert metadata["lacal_patch"].pop("calibration_sha256") == written
    _check("apply_outputs", _normalise({
        "adjusted": _array_summary(np.load(tmp_path / "adjusted.npy")),
        "predictions_csv": (tmp_path / "predictions.csv").read_text(encoding="utf-8"),
        "patched_tensors": tensors,
        "patched_metadata": metadata,
    }, tmp_path))


def test_multi_label_calibration_file_and_apply_outputs_are_unchanged(inputs, monkeypatch, tmp_path):
    monkeypatch.chdir(inputs)
    calibration = tmp_path / "ml_calibration.json"
    _run(inputs, "fit-tau", "ml_val_logits.npy", "ml_val_labels.npy", *ML_PRIORS, "--multi-label", "--out",
         calibration, "--json")
    _check("ml_calibration_file", _normalise(json.loads(calibration.read_text()), inputs))
    report = json.loads(_run(inputs, "report", "ml_test_logits.npy", "ml_test_labels.npy", "--calibration",
                             calibration, "--json"))
    _check("ml_report_calibration", _normalise(report, inputs))

    _run(inputs, "apply", "ml_test_logits.npy", "--calibration", calibration, "--out", tmp_path / "adjusted.npy")
    _run(inputs, "apply", "ml_test_logits.npy", "--calibration", calibration, "--out", tmp_path / "predictions.csv",
         "--top-k", "2")
    _run(inputs, "apply", "ml_test_logits.npy", "--multi-label", "--tau", "0.5", *ML_PRIORS, "--out",
         tmp_path / "tau.npy")
    _run(inputs, "apply", "ml_model.safetensors", "--calibration", calibration, "--out",
         tmp_path / "patched.safetensors")
    from safetensors import safe_open

    with safe_open(str(tmp_path / "patched.safetensors"), framework="np") as handle:
        tensors = {name: _array_summary(handle.get_tensor(name)) for name in sorted(handle.keys())}
        metadata = dict(sorted((handle.metadata() or {}).items()))
    metadata["lacal_patch"] = json.loads(metadata["lacal_patch"])
    written = hashlib.sha256(calibration.read_bytes()).hexdigest()
    assert metadata["lacal_patch"].pop("calibration_sha256") == written
    _check("ml_apply_outputs", _normalise({
        "adjusted": _array_summary(np.load(tmp_path / "adjusted.npy")),
        "predictions_csv": (tmp_path / "predictions.csv").read_text(encoding="utf-8"),
        "adjusted_tau": _array_summary(np.load(tmp_path / "tau.npy")),
        "patched_tensors": tensors,
        "patched_metadata": metadata,
    }, tmp_path))


def test_library_results_of_both_tasks_are_unchanged(inputs, monkeypatch, tmp_path):
    """The library's results (`to_dict()`, and `apply` to arrays in memory) for both tasks, as the CLI's are."""
    import lacal

    monkeypatch.chdir(inputs)
    single = lacal.fit("val_logits.npy", "val_labels.npy", train_labels="train_labels.txt", record_inputs=False)
    multi = lacal.fit(np.load("ml_val_logits.npy"), np.load("ml_val_labels.npy"),
                      train_labels=np.load("ml_train_labels.npy"), multi_label=True, record_inputs=False)
    ml_priors = lacal.count_priors(np.load("ml_train_labels.npy"), multi_label=True)
    _check("library_results", _normalise({
        "fit": single.to_dict(),
        "fit_ml": multi.to_dict(),
        "priors_ml": ml_priors.to_dict(),
        "report_ml": lacal.report(np.load("ml_test_logits.npy"), np.load("ml_test_labels.npy"),
                                  multi.calibration).to_dict(),
        "apply": _array_summary(lacal.apply(np.load("test_logits.npy"), single.calibration)),
        "apply_ml": _array_summary(lacal.apply(np.load("ml_test_logits.npy"), multi.calibration)),
        "apply_ml_file": lacal.apply("ml_test_logits.npy", multi.calibration, tmp_path / "out.npy").to_dict(),
    }, tmp_path))


def test_score_outputs_are_unchanged(inputs, monkeypatch, tmp_path):
    """`lacal score` of a TorchScript model (a seeded linear layer) on fixed inputs: the logits it writes. Weights and
    inputs are small whole numbers, so every sum is exact in float32 whatever order a CPU's kernel adds in."""
    import torch

    monkeypatch.chdir(inputs)
    rng = np.random.default_rng(8)
    layer = torch.nn.Linear(12, 8)
    with torch.no_grad():
        layer.weight.copy_(torch.from_numpy(rng.integers(-3, 4, size=(8, 12)).astype(np.float32)))
        layer.bias.copy_(torch.from_numpy(rng.integers(-3, 4, size=8).astype(np.float32) / 4))
    torch.jit.script(layer).save(str(tmp_path / "model.pt"))
    np.save(tmp_path / "features.npy", rng.integers(-5, 6, size=(50, 12)).astype(np.float32))
    _run(inputs, "score", tmp_path / "model.pt", tmp_path / "features.npy", "--out", tmp_path / "logits.npy",
         "--batch-size", "16")
    _check("score_outputs", {"logits": _array_summary(np.load(tmp_path / "logits.npy"))})
