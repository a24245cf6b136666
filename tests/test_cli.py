import csv
import hashlib
import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

import lacal
from lacal.cli.app import app

from . import reference

runner = CliRunner()


def run(*args):
    return runner.invoke(app, [str(a) for a in args], env={"COLUMNS": "120"})


def fit_args(d, *extra):
    return ["fit-tau", d / "val_logits.npy", d / "val_labels.npy", "--train-labels", d / "train_labels.txt",
            "--device", "cpu", *extra]


# -------------------------------------------------------------------------------------------------------- priors


def test_priors_writes_counts_and_priors(files):
    result = run("priors", files / "train_labels.txt", "--out", files / "priors.json")
    assert result.exit_code == 0, result.output
    data = json.loads((files / "priors.json").read_text())
    train = np.array([int(v) for v in (files / "train_labels.txt").read_text().split()])
    assert data["counts"] == np.bincount(train).tolist()
    np.testing.assert_allclose(data["priors"], np.bincount(train) / train.size)
    table = run("priors", files / "train_labels.txt")
    assert table.exit_code == 0 and "prior" in table.stdout
    as_json = json.loads(run("priors", files / "train_labels.txt", "--json").stdout)
    assert as_json["counts"] == data["counts"]


def test_priors_zero_count_class(tmp_path):
    (tmp_path / "train.txt").write_text("0\n0\n2\n")
    result = run("priors", tmp_path / "train.txt", "--num-classes", 4, "--out", tmp_path / "p.json")
    assert result.exit_code == 5
    assert result.stderr.strip() == (f"lacal: error: {tmp_path / 'train.txt'}: 2 class(es) have no training "
                                     "samples: 1, 3; log(0) is undefined, so pass --smoothing ALPHA to add ALPHA to "
                                     "every count")
    assert not (tmp_path / "p.json").exists()
    ok = run("priors", tmp_path / "train.txt", "--num-classes", 4, "--smoothing", 1, "--json")
    assert ok.exit_code == 0
    np.testing.assert_allclose(json.loads(ok.stdout)["priors"], np.array([3, 1, 2, 1]) / 7)


# ------------------------------------------------------------------------------------------------------- fit-tau


def test_fit_tau_json_matches_the_library(files, problem):
    logits, labels, counts = problem
    result = run(*fit_args(files, "--json"))
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    fit = lacal.methods.fit_tau(logits, labels, counts)
    assert data["tau"] == fit.tau and data["tau_interval"] == list(fit.interval)
    assert data["balanced_error_before"] == pytest.approx(reference.metric_at(logits, labels, counts, 0.0))
    assert data["balanced_error_tau1"] == pytest.approx(reference.metric_at(logits, labels, counts, 1.0))
    assert data["balanced_error_after"] == pytest.approx(reference.metric_at(logits, labels, counts, fit.tau))
    assert (data["metric"], data["num_classes"], data["num_samples"]) == ("balanced-error", 8, 600)


def test_fit_tau_summary_and_calibration_file(files):
    result = run(*fit_args(files, "--out", files / "cal.json"))
    assert result.exit_code == 0, result.output
    assert "tau = " in result.stdout and "balanced error" in result.stdout and "before (tau=0)" in result.stdout
    data = json.loads((files / "cal.json").read_text())
    assert data["format"] == "lacal-calibration" and data["schema_version"] == 2
    for name in ("val_logits.npy", "val_labels.npy", "train_labels.txt"):
        digest = hashlib.sha256((files / name).read_bytes()).hexdigest()
        assert data["inputs"][name]["sha256"] == digest
    counts = np.bincount([int(v) for v in (files / "train_labels.txt").read_text().split()])
    np.testing.assert_allclose(data["offsets"], -data["tau"] * np.log(counts / counts.sum()))
    assert data["validation"]["balanced_error_after"] <= data["validation"]["balanced_error_before"]


def test_fit_tau_with_priors_file_grid_and_worst_class(files):
    assert run("priors", files / "train_labels.txt", "--out", files / "p.json").exit_code == 0
    by_labels = json.loads(run(*fit_args(files, "--json")).stdout)
    by_priors = json.loads(run("fit-tau", files / "val_logits.npy", files / "val_labels.npy", "--priors",
                               files / "p.json", "--json").stdout)
    assert by_priors["tau"] == by_labels["tau"]
    grid = json.loads(run(*fit_args(files, "--json", "--search", "grid", "--grid-size", 41)).stdout)
    assert grid["search"] == "grid" and np.abs(np.linspace(0, 4, 41) - grid["tau"]).min() < 1e-12
    assert grid["balanced_error_after"] >= by_labels["balanced_error_after"]
    worst = json.loads(run(*fit_args(files, "--json", "--metric", "worst-class-error")).stdout)
    assert worst["metric"] == "worst-class-error"
    assert worst["worst_class_error_after"] <= by_labels["worst_class_error_after"]


def test_probabilities_get_a_warning(files, problem):
    np.save(files / "probs.npy", torch.softmax(torch.from_numpy(problem[0]), 1).numpy())
    result = run("fit-tau", files / "probs.npy", files / "val_labels.npy", "--train-labels",
                 files / "train_labels.txt", "--json")
    assert result.exit_code == 0
    assert "look like probabilities" in result.stderr and "log-probabilities" in result.stderr
    json.loads(result.stdout)  # stdout stays clean JSON


# --------------------------------------------------------------------------------------------------------- apply


@pytest.mark.parametrize("suffix", [".npy", ".npz", ".safetensors", ".pt"])
def test_apply_writes_adjusted_logits(files, problem, suffix):
    logits, _, counts = problem
    out = files / f"adjusted{suffix}"
    result = run("apply", files / "val_logits.npy", "--tau", 1.25, "--train-labels", files / "train_labels.txt",
                 "--out", out)
    assert result.exit_code == 0, result.output
    if suffix == ".npy":
        written = np.load(out)
    elif suffix == ".npz":
        written = np.load(out)["logits"]
    elif suffix == ".safetensors":
        written = load_file(out)["logits"].numpy()
    else:
        written = torch.load(out, weights_only=True).numpy()
    assert written.dtype == np.float32 and written.shape == logits.shape
    np.testing.assert_allclose(written, reference.adjusted(logits, counts, 1.25), rtol=1e-6, atol=1e-5)


def test_apply_with_calibration_to_csv_with_names(files, problem):
    logits, _, counts = problem
    names = [f"class-{i}" for i in range(8)]
    (files / "classes.txt").write_text("\n".join(names) + "\n")
    assert run(*fit_args(files, "--classes", files / "classes.txt", "--out", files / "cal.json")).exit_code == 0
    tau = json.loads((files / "cal.json").read_text())["tau"]
    result = run("apply", files / "val_logits.npy", "--calibration", files / "cal.json", "--out",
                 files / "pred.csv", "--top-k", 2)
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(open(files / "pred.csv")))
    assert list(rows[0]) == ["sample", "class", "name", "probability", "class_2", "name_2", "probability_2"]
    scores = reference.adjusted(logits, counts, tau)
    expected = reference.predictions(scores)
    assert [int(r["class"]) for r in rows] == expected.tolist()
    assert rows[5]["name"] == names[expected[5]]
    probabilities = np.exp(scores - scores.max(1, keepdims=True))
    probabilities /= probabilities.sum(1, keepdims=True)
    assert float(rows[5]["probability"]) == pytest.approx(probabilities[5].max(), rel=1e-5)
    assert float(rows[5]["probability_2"]) == pytest.approx(np.sort(probabilities[5])[-2], rel=1e-5)


def test_apply_refuses_to_overwrite(files):
    target = files / "out.npy"
    target.write_bytes(b"keep")
    base = ["apply", files / "val_logits.npy", "--tau", 1, "--train-labels", files / "train_labels.txt"]
    result = run(*base, "--out", target)
    assert result.exit_code == 8 and "already exists; pass --force" in result.stderr
    assert target.read_bytes() == b"keep"
    assert run(*base, "--out", target, "--force").exit_code == 0
    original = (files / "val_logits.npy").read_bytes()
    same = run(*base, "--out", files / "val_logits.npy", "--force")
    assert same.exit_code == 8 and "is also an input" in same.stderr
    assert (files / "val_logits.npy").read_bytes() == original


# -------------------------------------------------------------------------------------------------------- report


def test_report_json_before_and_after(files, problem):
    logits, labels, counts = problem
    result = run("report", files / "val_logits.npy", files / "val_labels.npy", "--tau", 1.0, "--train-labels",
                 files / "train_labels.txt", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    after = reference.predictions(reference.adjusted(logits, counts, 1.0))
    before = reference.predictions(logits)
    assert data["balanced_error"] == pytest.approx(reference.balanced_error(after, labels, 8))
    assert data["baseline"]["balanced_error"] == pytest.approx(reference.balanced_error(before, labels, 8))
    assert data["accuracy"] == pytest.approx(np.mean(after == labels))
    assert data["worst_class_error"] == pytest.approx(reference.worst_class_error(after, labels, 8))
    errors = reference.per_class_errors(after, labels, 8)
    assert [row["error"] for row in data["per_class"]] == pytest.approx(errors)
    assert [row["train_count"] for row in data["per_class"]] == counts.tolist()
    many = [c for c in range(8) if counts[c] > 100]
    assert data["groups"]["many"]["error"] == pytest.approx(np.mean([errors[c] for c in many]))


def test_report_lists_classes_without_samples(files, problem):
    logits, labels, _ = problem
    keep = labels != 3
    np.save(files / "l.npy", logits[keep])
    np.save(files / "y.npy", labels[keep])
    data = json.loads(run("report", files / "l.npy", files / "y.npy", "--json").stdout)
    assert data["per_class"][3]["error"] is None and data["per_class"][3]["support"] == 0
    assert data["classes_without_samples"] == [3]
    assert data["groups"] is None
    table = run("report", files / "l.npy", files / "y.npy")
    assert table.exit_code == 0 and "no samples" in table.stderr


def test_report_table_sorted_by_error(files):
    result = run("report", files / "val_logits.npy", files / "val_labels.npy", "--tau", 1, "--train-labels",
                 files / "train_labels.txt", "--sort", "error", "--limit", 3)
    assert result.exit_code == 0, result.output
    assert "many-shot error" in result.stdout and "first 3 of 8 classes" in result.stdout


# ---------------------------------------------------------------------------------------------------- bad input


def _bad(tmp_path, problem):
    logits, labels, counts = problem
    d = tmp_path
    np.save(d / "rank3.npy", logits[None])
    np.save(d / "short_labels.npy", labels[:-1])
    nan = logits.copy()
    nan[7, 2] = np.nan
    np.save(d / "nan.npy", nan)
    inf = logits.copy()
    inf[9, 0] = np.inf
    np.save(d / "inf.npy", inf)
    np.save(d / "range_labels.npy", np.where(np.arange(len(labels)) == 4, 99, labels))
    (d / "names.txt").write_text("\n".join(["cat"] * len(labels)) + "\n")
    (d / "classes.txt").write_text("\n".join(f"c{i}" for i in range(8)) + "\n")
    (d / "zero_train.txt").write_text("0\n1\n2\n")
    (d / "x.h5").write_bytes(b"hdf")
    (d / "cal9.json").write_text(json.dumps(lacal.Calibration(tau=1.0, priors=np.full(9, 1 / 9)).to_dict()))
    good = lacal.Calibration(tau=1.0, priors=np.full(8, 1 / 8)).to_dict()
    (d / "cal_names.json").write_text(json.dumps({**good, "class_names": 5}))
    (d / "cal_interval.json").write_text(json.dumps({**good, "tau_interval": [1]}))
    (d / "empty.npy").write_bytes(b"")
    (d / "empty_folder").mkdir()
    (d / "broken.npz").write_bytes(b"PK\x03\x04x")
    (d / "priors_object.json").write_text('{"format": "lacal-priors"}')
    (d / "priors_bools.json").write_text("[true, 2, 3, 4, 5, 6, 7, 8]")
    return d


CASES = [
    # (name, argument builder, exit code, message fragment)
    ("missing file", lambda d: ["fit-tau", d / "nope.npy", d / "val_labels.npy", "--train-labels",
                                d / "train_labels.txt"], 3, "nope.npy: no such file"),
    ("folder without shards", lambda d: ["fit-tau", d / "empty_folder", d / "val_labels.npy", "--train-labels",
                                         d / "train_labels.txt"], 3, "is a folder with no"),
    ("glob without matches", lambda d: ["fit-tau", d / "nothing-*.npy", d / "val_labels.npy", "--train-labels",
                                        d / "train_labels.txt"], 3, "matches no files"),
    ("unknown format", lambda d: ["fit-tau", d / "x.h5", d / "val_labels.npy", "--train-labels",
                                  d / "train_labels.txt"], 3, "x.h5: unknown logits format '.h5'"),
    ("wrong rank", lambda d: ["fit-tau", d / "rank3.npy", d / "val_labels.npy", "--train-labels",
                              d / "train_labels.txt"], 4, "rank3.npy: logits must be a 2-D array"),
    ("sample counts", lambda d: ["fit-tau", d / "val_logits.npy", d / "short_labels.npy", "--train-labels",
                                 d / "train_labels.txt"], 4, "short_labels.npy: holds 599 labels but"),
    ("NaN", lambda d: ["fit-tau", d / "nan.npy", d / "val_labels.npy", "--train-labels", d / "train_labels.txt"],
     4, "nan.npy: logits hold NaN values (the first non-finite row is 8)"),
    ("Inf", lambda d: ["fit-tau", d / "inf.npy", d / "val_labels.npy", "--train-labels", d / "train_labels.txt"],
     4, "inf.npy: logits hold Inf values (the first non-finite row is 10)"),
    ("label out of range", lambda d: ["fit-tau", d / "val_logits.npy", d / "range_labels.npy", "--train-labels",
                                      d / "train_labels.txt"], 4, "label 99 (entry 5) is out of range for 8"),
    ("label not an integer", lambda d: ["fit-tau", d / "val_logits.npy", d / "names.txt", "--train-labels",
                                        d / "train_labels.txt"], 4, "is not an integer class id; pass --classes"),
    ("unknown class name", lambda d: ["fit-tau", d / "val_logits.npy", d / "names.txt", "--classes",
                                      d / "classes.txt", "--train-labels", d / "train_labels.txt"],
     4, "names.txt: unknown class name 'cat' (entry 1)"),
    ("zero-count class", lambda d: ["fit-tau", d / "val_logits.npy", d / "val_labels.npy", "--train-labels",
                                    d / "zero_train.txt"], 5, "5 class(es) have no training samples: 3, 4, 5"),
    ("empty tau range", lambda d: ["fit-tau", d / "val_logits.npy", d / "val_labels.npy", "--train-labels",
                                   d / "train_labels.txt", "--tau-range", "1,1"], 6, "--tau-range: the range 1,1 "
                                                                                     "is empty"),
    ("reversed tau range", lambda d: ["fit-tau", d / "val_logits.npy", d / "val_labels.npy", "--train-labels",
                                      d / "train_labels.txt", "--tau-range", "4,0"], 6, "is reversed"),
    ("garbled tau range", lambda d: ["fit-tau", d / "val_logits.npy", d / "val_labels.npy", "--train-labels",
                                     d / "train_labels.txt", "--tau-range", "zero"], 6, "expected LO,HI"),
    ("no priors", lambda d: ["fit-tau", d / "val_logits.npy", d / "val_labels.npy"], 6, "--train-labels FILE or"),
    ("empty npy", lambda d: ["fit-tau", d / "empty.npy", d / "val_labels.npy", "--train-labels",
                             d / "train_labels.txt"], 3, "empty.npy: cannot read as .npy"),
    ("broken npz", lambda d: ["fit-tau", d / "broken.npz", d / "val_labels.npy", "--train-labels",
                              d / "train_labels.txt"], 3, "broken.npz: cannot read as .npz"),
    ("empty labels", lambda d: ["fit-tau", d / "val_logits.npy", d / "empty.npy", "--train-labels",
                                d / "train_labels.txt"], 3, "empty.npy: cannot read as .npy"),
    ("priors object without values", lambda d: ["fit-tau", d / "val_logits.npy", d / "val_labels.npy", "--priors",
                                                d / "priors_object.json"], 5, "holds neither \"counts\" nor"),
    ("priors booleans", lambda d: ["fit-tau", d / "val_logits.npy", d / "val_labels.npy", "--priors",
                                   d / "priors_bools.json"], 5, "expected a JSON list of numbers"),
    ("calibration bad names", lambda d: ["apply", d / "val_logits.npy", "--calibration", d / "cal_names.json"],
     4, "cal_names.json: has an invalid calibration: \"class_names\" must be a list of 8 names"),
    ("calibration bad interval", lambda d: ["apply", d / "val_logits.npy", "--calibration", d / "cal_interval.json"],
     4, "\"tau_interval\" must be a list [low, high]"),
    ("tau not finite", lambda d: ["apply", d / "val_logits.npy", "--tau", "nan", "--train-labels",
                                  d / "train_labels.txt"], 6, "--tau: tau must be a finite number, got nan"),
    ("calibration class count", lambda d: ["apply", d / "val_logits.npy", "--calibration", d / "cal9.json"],
     7, "cal9.json: the calibration is for 9 classes but the logits have 8"),
    ("report calibration class count", lambda d: ["report", d / "val_logits.npy", d / "val_labels.npy",
                                                  "--calibration", d / "cal9.json"], 7, "is for 9 classes"),
]


@pytest.mark.parametrize("name, build, code, message", CASES, ids=[c[0] for c in CASES])
def test_bad_input_gives_one_line_and_no_output(files, problem, name, build, code, message):
    d = _bad(files, problem)
    args = build(d)
    out = d / ("out.npy" if args[0] == "apply" else "out.json")
    if args[0] != "report":
        args += ["--out", out]
    before = sorted(p.name for p in d.iterdir())
    result = run(*args)
    assert result.exit_code == code, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("lacal: error: ") and message in lines[0], result.stderr
    assert "Traceback" not in result.output
    assert result.stdout == ""
    assert sorted(p.name for p in d.iterdir()) == before  # no output, no temporary left behind


def test_class_list_is_never_overwritten(files):
    (files / "classes.txt").write_text("\n".join(f"c{i}" for i in range(8)) + "\n")
    before = (files / "classes.txt").read_bytes()
    for args in (fit_args(files, "--classes", files / "classes.txt", "--out", files / "classes.txt", "--force"),
                 ["priors", files / "train_labels.txt", "--classes", files / "classes.txt", "--out",
                  files / "classes.txt", "--force"]):
        result = run(*args)
        assert result.exit_code == 8 and "is also an input" in result.stderr
    assert (files / "classes.txt").read_bytes() == before


def test_csv_predictions_from_bfloat16_match_what_report_scores(tmp_path, problem):
    from safetensors.torch import save_file

    logits, labels, counts = problem
    tensor = torch.from_numpy(logits * 4).to(torch.bfloat16)
    save_file({"logits": tensor}, tmp_path / "l.safetensors")
    np.save(tmp_path / "y.npy", labels)
    np.save(tmp_path / "counts.npy", counts)
    common = ["--tau", 1.0, "--priors", tmp_path / "counts.npy"]
    assert run("apply", tmp_path / "l.safetensors", "--out", tmp_path / "p.csv", *common).exit_code == 0
    predicted = np.array([int(r["class"]) for r in csv.DictReader(open(tmp_path / "p.csv"))])
    expected = reference.predictions(reference.adjusted(tensor.double().numpy(), counts, 1.0))
    assert (predicted == expected).mean() > 0.999  # float32 sums, as scored; not re-rounded to bfloat16
    report = json.loads(run("report", tmp_path / "l.safetensors", tmp_path / "y.npy", *common, "--json").stdout)
    assert report["accuracy"] == pytest.approx(np.mean(predicted == labels))


def test_usage_errors_keep_click_code(files):
    assert run("fit-tau", files / "val_logits.npy", files / "val_labels.npy", "--no-such-option").exit_code == 2
    assert run("fit-tau").exit_code == 2
    one = run("fit-tau", files / "val_logits.npy", "--train-labels", files / "train_labels.txt")
    assert one.exit_code == 6 and "expected the logits and the labels files, got 1 path(s)" in one.stderr


# -------------------------------------------------------------------------------------------------- entry points


def test_help_does_not_import_torch():
    code = "import sys; from lacal.cli.app import app; assert 'torch' not in sys.modules and 'numpy' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
    for command in ("fit-tau", "apply", "report", "priors", "demo"):
        result = run(command, "--help")
        assert result.exit_code == 0 and "Usage" in result.stdout


def test_python_dash_m(files):
    result = subprocess.run([sys.executable, "-m", "lacal", "report", files / "val_logits.npy",
                             files / "val_labels.npy", "--json"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert 0 <= json.loads(result.stdout)["balanced_error"] <= 1


def test_one_megabyte_budget_is_accepted(files):
    result = run("report", files / "val_logits.npy", files / "val_labels.npy", "--memory-budget", "1MB", "--json")
    assert result.exit_code == 0
