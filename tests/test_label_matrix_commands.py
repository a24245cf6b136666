"""Label matrices (N x C 0/1, one sigmoid per label) from the shell: `--multi-label` on fit-tau, apply, report and
priors, checked against float64 numpy on the same files."""

import csv
import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

import lacal
from lacal.cli.app import app
from lacal.methods.multilabel import fit_multilabel_tau, multilabel_priors_from_labels

runner = CliRunner()
RATES = np.array([0.4, 0.2, 0.08, 0.03, 0.5, 0.01])


def run(*args):
    return runner.invoke(app, [str(a) for a in args], env={"COLUMNS": "120"})


def make_split(rng, size):
    y = rng.random((size, RATES.size)) < RATES
    f = 1.8 * y - 0.9 + rng.normal(size=y.shape) + np.log(RATES / (1 - RATES))  # what BCE learns: rates inside
    return f.astype(np.float32), y


@pytest.fixture
def ml(tmp_path):
    rng = np.random.default_rng(0)
    val_f, val_y = make_split(rng, 500)
    test_f, test_y = make_split(rng, 700)
    train_y = rng.random((3000, RATES.size)) < RATES
    np.save(tmp_path / "val_logits.npy", val_f)
    np.save(tmp_path / "val_labels.npy", val_y)
    np.save(tmp_path / "test_logits.npy", test_f)
    np.save(tmp_path / "test_labels.npy", test_y.astype(np.int64))
    np.save(tmp_path / "train_labels.npy", train_y.astype(np.uint8))
    (tmp_path / "train_labels.txt").write_text(
        "\n".join(",".join(str(k) for k in np.flatnonzero(row)) for row in train_y) + "\n")
    with open(tmp_path / "val_labels.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow([f"tag{k}" for k in range(RATES.size)])
        writer.writerows(val_y.astype(int).tolist())
    return tmp_path, val_f, val_y, test_f, test_y, train_y


def log_odds(train_y):
    p = train_y.sum(0).astype(np.float64)
    return np.log(p / (train_y.shape[0] - p))


def macro_balanced_error(f, y, offsets):
    predicted = f.astype(np.float64) + offsets > 0
    errors = []
    for k in range(y.shape[1]):
        p, n = y[:, k].sum(), (~y[:, k]).sum()
        if p and n:
            errors.append(((p - (predicted[:, k] & y[:, k]).sum()) / p + (predicted[:, k] & ~y[:, k]).sum() / n) / 2)
    return float(np.mean(errors))


def fit_json(d, labels="val_labels.npy", train="train_labels.npy", *extra):
    result = run("fit-tau", d / "val_logits.npy", d / labels, "--train-labels", d / train, "--device", "cpu",
                 "--json", *extra)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout), result.stderr


def test_fit_tau_json_matches_the_library_and_numpy(ml):
    d, val_f, val_y, _, _, train_y = ml
    data, _ = fit_json(d, "val_labels.npy", "train_labels.npy", "--multi-label")
    fit = fit_multilabel_tau(val_f, val_y, multilabel_priors_from_labels(train_y))
    assert data["tau"] == fit.tau and data["tau_interval"] == list(fit.interval)
    L = log_odds(train_y)
    for suffix, tau in (("before", 0.0), ("tau1", 1.0), ("after", fit.tau)):
        assert data[f"balanced_error_{suffix}"] == pytest.approx(macro_balanced_error(val_f, val_y, -tau * L))
    assert data["balanced_error_after"] < data["balanced_error_before"]
    assert (data["metric"], data["num_classes"], data["num_samples"], data["labels_without_samples"]) == \
        ("balanced-error", 6, 500, [])
    assert {"macro_f1_before", "macro_f1_tau1", "macro_f1_after"} <= set(data)


def test_label_files_in_every_format_give_the_same_fit_and_a_matrix_is_detected(ml):
    d = ml[0]
    given, _ = fit_json(d, "val_labels.npy", "train_labels.npy", "--multi-label")
    detected, note = fit_json(d, "val_labels.npy", "train_labels.npy")
    assert detected == given
    assert "val_labels.npy is a 500 x 6 matrix of 0/1, so the labels are read as multi-label" in note
    from_csv_and_txt, note = fit_json(d, "val_labels.csv", "train_labels.txt")
    assert "val_labels.csv is a CSV of 6 0/1 columns" in note
    assert from_csv_and_txt == given


def test_macro_f1_metric(ml):
    d, val_f, val_y, _, _, train_y = ml
    data, _ = fit_json(d, "val_labels.npy", "train_labels.npy", "--multi-label", "--metric", "macro-f1")
    from sklearn.metrics import f1_score

    predicted = val_f.astype(np.float64) - data["tau"] * log_odds(train_y) > 0
    assert data["macro_f1_after"] == pytest.approx(f1_score(val_y, predicted, average="macro"))
    assert data["macro_f1_after"] >= max(data["macro_f1_before"], data["macro_f1_tau1"])


def test_calibration_apply_and_report(ml):
    d, _, _, test_f, test_y, train_y = ml
    fitted = run("fit-tau", d / "val_logits.npy", d / "val_labels.npy", "--train-labels", d / "train_labels.npy",
                 "--multi-label", "--out", d / "cal.json", "--device", "cpu")
    assert fitted.exit_code == 0, fitted.output
    data = json.loads((d / "cal.json").read_text())
    assert data["multi_label"] is True and data["schema_version"] == 3 and data["train_samples"] == 3000
    tau = data["tau"]
    offsets = -tau * log_odds(train_y)
    np.testing.assert_allclose(data["offsets"], offsets, rtol=1e-12)
    assert lacal.Calibration.load(d / "cal.json") == lacal.Calibration.load(d / "cal.json")

    applied = run("apply", d / "test_logits.npy", "--calibration", d / "cal.json", "--out", d / "adj.npy")
    assert applied.exit_code == 0, applied.output
    adjusted = np.load(d / "adj.npy")
    assert adjusted.dtype == np.float32
    np.testing.assert_allclose(adjusted, test_f.astype(np.float64) + offsets, rtol=1e-6, atol=1e-6)

    predicted = run("apply", d / "test_logits.npy", "--calibration", d / "cal.json", "--out", d / "pred.csv",
                    "--top-k", 2)
    assert predicted.exit_code == 0, predicted.output
    rows = list(csv.reader(open(d / "pred.csv")))
    assert rows[0] == ["sample", "labels", "label_1", "probability_1", "label_2", "probability_2"]
    expected = test_f.astype(np.float32) + offsets.astype(np.float32) > 0
    for row, on in zip(rows[1:], expected):
        assert row[1] == " ".join(str(k) for k in np.flatnonzero(on))
    assert len(rows) == 1 + test_f.shape[0]

    report = run("report", d / "test_logits.npy", d / "test_labels.npy", "--calibration", d / "cal.json", "--json")
    assert report.exit_code == 0, report.output
    result = json.loads(report.stdout)
    assert result["balanced_error"] == pytest.approx(macro_balanced_error(test_f, test_y, offsets))
    assert result["baseline"]["balanced_error"] == pytest.approx(macro_balanced_error(test_f, test_y, 0.0))
    label = result["per_label"][5]
    on = test_f[:, 5].astype(np.float64) + offsets[5] > 0
    assert label["train_positives"] == int(train_y[:, 5].sum())
    assert label["fnr"] == pytest.approx(1 - (on & test_y[:, 5]).sum() / test_y[:, 5].sum())
    assert label["fpr"] == pytest.approx((on & ~test_y[:, 5]).sum() / (~test_y[:, 5]).sum())
    counts = train_y.sum(0)
    few = counts < 20
    assert result["groups"]["few"]["labels"] == int(few.sum())
    table = run("report", d / "test_logits.npy", d / "test_labels.npy", "--calibration", d / "cal.json")
    assert table.exit_code == 0 and "macro balanced error" in table.stdout and "FNR" in table.stdout


def test_compare_measures_per_label_thresholds_on_the_test_split(ml):
    d, val_f, val_y, test_f, test_y, train_y = ml
    result = run("report", d / "val_logits.npy", d / "val_labels.npy", "--train-labels", d / "train_labels.npy",
                 "--multi-label", "--compare", "--test-logits", d / "test_logits.npy", "--test-labels",
                 d / "test_labels.npy", "--json")
    assert result.exit_code == 0, result.output
    methods = {m["method"]: m for m in json.loads(result.stdout)["methods"]}
    tau = methods["shared tau, fitted"]["tau"]
    assert tau == fit_multilabel_tau(val_f, val_y, multilabel_priors_from_labels(train_y)).tau
    assert methods["shared tau, fitted"]["balanced_error"] == pytest.approx(
        macro_balanced_error(test_f, test_y, -tau * log_odds(train_y)))
    assert methods["no adjustment"]["balanced_error"] == pytest.approx(macro_balanced_error(test_f, test_y, 0.0))
    from lacal.methods.multilabel import fit_label_thresholds

    thresholds = fit_label_thresholds(val_f, val_y)
    assert methods["a threshold per label, fitted"]["balanced_error"] == pytest.approx(
        macro_balanced_error(test_f, test_y, -thresholds))


def test_priors_file_with_positives_and_samples(ml):
    d, val_f, val_y, _, _, train_y = ml
    written = run("priors", d / "train_labels.txt", "--multi-label", "--num-classes", 6, "--out", d / "p.json")
    assert written.exit_code == 0, written.output
    data = json.loads((d / "p.json").read_text())
    assert data["positives"] == train_y.sum(0).tolist() and data["num_samples"] == 3000
    (d / "plain.json").write_text(json.dumps({"positives": data["positives"], "num_samples": 3000}))
    result = run("fit-tau", d / "val_logits.npy", d / "val_labels.npy", "--priors", d / "plain.json",
                 "--multi-label", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["tau"] == fit_multilabel_tau(val_f, val_y,
                                                                  multilabel_priors_from_labels(train_y)).tau


def test_a_label_never_positive_in_training_needs_smoothing(tmp_path):
    np.save(tmp_path / "train.npy", np.array([[1, 0, 1], [0, 0, 1], [1, 0, 0]]))
    result = run("priors", tmp_path / "train.npy", "--multi-label", "--out", tmp_path / "p.json")
    assert result.exit_code == 5
    assert result.stderr.strip() == (f"lacal: error: {tmp_path / 'train.npy'}: 1 label(s) have no positive training "
                                     "samples: 1; log(pi / (1 - pi)) is undefined, so pass --smoothing ALPHA (pi = "
                                     "(positives + ALPHA) / (samples + 2 ALPHA))")
    assert not (tmp_path / "p.json").exists()
    ok = run("priors", tmp_path / "train.npy", "--multi-label", "--smoothing", 1, "--json")
    assert ok.exit_code == 0
    np.testing.assert_allclose(json.loads(ok.stdout)["priors"], [3 / 5, 1 / 5, 3 / 5])


def test_patching_a_checkpoint_moves_the_bias_by_the_multilabel_offsets(ml):
    d, *_ , train_y = ml
    torch.manual_seed(0)
    state = {"backbone.weight": torch.randn(5, 4), "fc.weight": torch.randn(6, 5), "fc.bias": torch.randn(6)}
    save_file(state, d / "model.safetensors")
    run("fit-tau", d / "val_logits.npy", d / "val_labels.npy", "--train-labels", d / "train_labels.npy",
        "--multi-label", "--out", d / "cal.json")
    tau = json.loads((d / "cal.json").read_text())["tau"]
    result = run("apply", d / "model.safetensors", "--calibration", d / "cal.json", "--out", d / "patched.safetensors")
    assert result.exit_code == 0, result.output
    patched = load_file(d / "patched.safetensors")
    expected = state["fc.bias"].double() - tau * torch.from_numpy(log_odds(train_y))
    torch.testing.assert_close(patched["fc.bias"].double(), expected, rtol=0, atol=1e-6)
    assert torch.equal(patched["fc.weight"], state["fc.weight"])
    by_tau = run("apply", d / "model.safetensors", "--tau", 0.5, "--train-labels", d / "train_labels.npy",
                 "--multi-label", "--out", d / "half.safetensors")
    assert by_tau.exit_code == 0, by_tau.output
    expected = state["fc.bias"].double() - 0.5 * torch.from_numpy(log_odds(train_y))
    torch.testing.assert_close(load_file(d / "half.safetensors")["fc.bias"].double(), expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize("extra, code, message", [
    (["--calibrate", "temperature"], 6, "--calibrate do(es) not apply to multi-label heads yet"),
    (["--metric", "worst-class-error"], 6, "multi-label heads are fitted for balanced-error or macro-f1"),
])
def test_options_that_do_not_apply_are_refused(ml, extra, code, message):
    d = ml[0]
    result = run("fit-tau", d / "val_logits.npy", d / "val_labels.npy", "--train-labels", d / "train_labels.npy",
                 "--multi-label", *extra)
    assert result.exit_code == code and message in result.stderr


def test_bad_inputs_get_one_line(ml):
    d = ml[0]
    np.save(d / "short.npy", np.zeros((10, 6), dtype=bool))
    result = run("fit-tau", d / "val_logits.npy", d / "short.npy", "--train-labels", d / "train_labels.npy",
                 "--multi-label")
    assert result.exit_code == 4
    assert result.stderr.strip() == (f"lacal: error: {d / 'short.npy'}: holds 10 label rows but "
                                     f"{d / 'val_logits.npy'} has 500 rows")
    (d / "bad.csv").write_text("a,b,c,d,e,f\n" + "0,1,0,2,0,0\n" * 500)
    bad = run("fit-tau", d / "val_logits.npy", d / "bad.csv", "--train-labels", d / "train_labels.npy",
              "--multi-label")
    assert bad.exit_code == 4 and "data row 1 holds '2'" in bad.stderr
    single = d / "single.json"
    lacal.Calibration(tau=1.0, priors=np.full(6, 1 / 6)).save(single)
    mixed = run("apply", d / "test_logits.npy", "--calibration", single, "--out", d / "x.npy", "--multi-label")
    assert mixed.exit_code == 7 and "single-label (softmax) calibration" in mixed.stderr
    assert not (d / "x.npy").exists()


def test_label_names_from_classes(ml):
    d, val_f, val_y, _, _, train_y = ml
    names = [f"tag{k}" for k in range(6)]
    (d / "names.txt").write_text("\n".join(names) + "\n")
    (d / "train_named.txt").write_text(
        "\n".join(",".join(names[k] for k in np.flatnonzero(row)) for row in train_y) + "\n")
    by_name, _ = fit_json(d, "val_labels.npy", "train_named.txt", "--multi-label", "--classes", d / "names.txt")
    by_id, _ = fit_json(d, "val_labels.npy", "train_labels.txt", "--multi-label")
    assert by_name == by_id
    report = run("report", d / "val_logits.npy", d / "val_labels.npy", "--tau", 1, "--train-labels",
                 d / "train_named.txt", "--classes", d / "names.txt", "--multi-label", "--json")
    assert report.exit_code == 0, report.output
    assert [row["name"] for row in json.loads(report.stdout)["per_label"]] == names
    wrong = run("fit-tau", d / "val_logits.npy", d / "val_labels.npy", "--train-labels", d / "train_labels.txt",
                "--multi-label", "--classes", d / "names.txt", "--json")
    assert wrong.exit_code == 0  # ids are still ids when names are known
    (d / "five.txt").write_text("\n".join(names[:5]) + "\n")
    mismatch = run("fit-tau", d / "val_logits.npy", d / "val_labels.npy", "--train-labels", d / "train_labels.txt",
                   "--multi-label", "--classes", d / "five.txt")
    assert mismatch.exit_code == 7 and "lists 5 class names but the logits have 6 classes" in mismatch.stderr
