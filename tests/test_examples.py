import re
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def test_python_api_example_runs_and_improves():
    result = subprocess.run([sys.executable, str(EXAMPLES / "python_api.py")], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr
    before, after = map(float, re.search(r"balanced error\s+([\d.]+)%\s+([\d.]+)%", result.stdout).groups())
    assert after < before


def test_make_checkpoints_example_writes_patchable_layouts(tmp_path):
    from lacal.models.checkpoints import find_head, open_checkpoint

    result = subprocess.run([sys.executable, str(EXAMPLES / "make_checkpoints.py"), "--dir", str(tmp_path)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    for name, head in (("model.safetensors", "fc"), ("checkpoint.pth", "module.fc"), ("hf-model", "fc")):
        checkpoint = open_checkpoint(tmp_path / name)
        assert find_head(checkpoint, 100).name == head
    assert open_checkpoint(tmp_path / "hf-model").class_names[3] == "species-03"


def test_label_shift_example_improves_with_em(tmp_path):
    result = subprocess.run([sys.executable, str(EXAMPLES / "label_shift.py"), "--dir", str(tmp_path)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    accuracy = {name: float(value) for name, value in
                re.findall(r"^(raw model|adjusted toward uniform|adjusted toward q from EM)\D*([\d.]+)%", result.stdout,
                           re.M)}
    assert accuracy["adjusted toward q from EM"] > accuracy["adjusted toward uniform"] > accuracy["raw model"]
    assert (tmp_path / "target_logits.npy").exists()


def _rows(output):
    return {name.strip(): float(value) for name, value in re.findall(r"^(.+?)\s+([\d.]+)%", output, re.M)}


def test_gaussian_example_reaches_the_bayes_error():
    result = subprocess.run([sys.executable, str(EXAMPLES / "gaussian_bayes.py")], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr
    rows = _rows(result.stdout)
    bayes = rows["Bayes-optimal balanced error, Phi(-sqrt 2)"]
    assert bayes == 7.86
    for name in ("post-hoc adjustment, tau = 1", "post-hoc adjustment, fitted tau", "logit-adjusted loss, tau = 1"):
        assert abs(rows[name] - bayes) < 0.3, name
    assert rows["ERM (plain cross-entropy)"] > bayes + 3


def test_digits_example_shows_the_effect_on_real_data():
    result = subprocess.run([sys.executable, str(EXAMPLES / "digits_long_tail.py")], capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    rows = _rows(result.stdout)
    erm = rows["ERM (plain cross-entropy)"]
    for name in ("post-hoc adjustment, tau = 1", "post-hoc adjustment, fitted tau", "logit-adjusted loss, tau = 1"):
        assert rows[name] < erm - 2, name


@pytest.mark.slow
def test_multilabel_example_fitted_tau_improves_the_test_split(tmp_path):
    result = subprocess.run([sys.executable, str(EXAMPLES / "multilabel_long_tail.py"), "--dir", str(tmp_path)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    rows = {name.strip(): float(value) for name, value in
            re.findall(r"^(no adjustment \(tau = 0\)|shared tau = 1|shared tau = [\d.]+ \(fitted on validation\))"
                       r"\s+([\d.]+)%", result.stdout, re.M)}
    assert len(rows) == 3, result.stdout
    fitted = next(value for name, value in rows.items() if "fitted" in name)
    assert fitted < rows["no adjustment (tau = 0)"] - 5  # the rare labels are no longer missed
    assert fitted <= rows["shared tau = 1"] + 0.5
    for name in ("val_logits.npy", "val_labels.npy", "test_logits.npy", "test_labels.npy", "train_labels.npy"):
        assert (tmp_path / name).exists()


def _run(script, *args, timeout=600):
    result = subprocess.run([sys.executable, str(EXAMPLES / script), *map(str, args)], capture_output=True,
                            text=True, timeout=timeout)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def test_sklearn_example_beats_the_plain_model_and_matches_the_tuned_threshold():
    rows = _rows(_run("sklearn_meta_estimator.py"))
    assert rows["LogitAdjustedClassifier"] > rows["LogisticRegression"] + 3
    assert rows["LogitAdjustedClassifier"] >= rows["class_weight='balanced'"] - 1.5


def test_torchmetrics_example_lowers_the_balanced_error():
    plain, adjusted = map(float, re.search(r"plain ([\d.]+)%, adjusted ([\d.]+)%", _run("torchmetrics_metric.py"))
                          .groups())
    assert adjusted < plain - 5


@pytest.mark.slow
def test_lightning_example_writes_the_adjusted_best_checkpoint(tmp_path):
    out = _run("lightning_callback.py", "--dir", tmp_path)
    before, after = map(float, re.search(r"balanced error ([\d.]+)% -> ([\d.]+)% adjusted", out).groups())
    assert after < before
    assert (tmp_path / "calibration.json").is_file() and list(tmp_path.glob("*-adjusted.ckpt"))


@pytest.mark.slow
def test_huggingface_example_pipeline_gives_the_adjusted_error(tmp_path):
    out = _run("huggingface_trainer.py", "--dir", tmp_path)
    before, after = map(float, re.search(r"balanced error ([\d.]+)% -> ([\d.]+)% adjusted", out).groups())
    assert after < before
    # pipeline(...) on the adjusted folder classifies as the adjusted logits do
    assert float(re.search(r"adjusted folder: balanced error ([\d.]+)%", out).group(1)) == after
