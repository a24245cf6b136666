"""The two tasks behind one interface: a single-label (softmax) and a multi-label (sigmoid) head run through the same
workflows, whose results say which task they hold; the offsets of each task against an independent formula; and the
one table of the options each task takes, which the library and the CLI refuse alike."""

import numpy as np
import pytest
from typer.testing import CliRunner

import lacal
from lacal.cli.app import app
from lacal.cli.render import FLAGS
from lacal.core.tasks import MULTI_LABEL, OPTIONS, SINGLE_LABEL, task_of
from lacal.errors import OptionError

from .conftest import long_tail_problem

TASKS = [SINGLE_LABEL, MULTI_LABEL]
RATES = np.array([0.4, 0.2, 0.08, 0.03, 0.5])


def run(*args):
    return CliRunner().invoke(app, [str(a) for a in args], env={"COLUMNS": "120"})


def make_problem(task, seed=0):
    """Validation logits and labels, and training labels: class ids for a softmax head, 0/1 matrices (logits as
    binary cross-entropy learns them) for a multi-label one."""
    if not task.multi_label:
        logits, labels, counts = long_tail_problem(num_samples=300, num_classes=5, seed=seed)
        return logits, labels, np.repeat(np.arange(len(counts)), counts)
    rng = np.random.default_rng(seed)
    labels = rng.random((300, RATES.size)) < RATES
    logits = (1.8 * labels - 0.9 + rng.normal(size=labels.shape) + np.log(RATES / (1 - RATES))).astype(np.float32)
    return logits, labels, (rng.random((2000, RATES.size)) < RATES).astype(np.uint8)


@pytest.mark.parametrize("task", TASKS, ids=lambda task: task.name)
def test_offsets_are_minus_tau_times_the_log_prior_or_the_log_odds(task):
    pi = np.array([0.5, 0.1, 0.02, 0.38])
    expected = -1.7 * (np.log(pi / (1 - pi)) if task.multi_label else np.log(pi))
    np.testing.assert_allclose(task.offsets(pi, 1.7), expected, rtol=1e-12)


@pytest.mark.parametrize("task", TASKS, ids=lambda task: task.name)
def test_every_workflow_result_holds_its_task_and_applies_the_tasks_offsets(task, tmp_path):
    logits, labels, train = make_problem(task)
    multi = task.multi_label
    fit = lacal.fit(logits, labels, train_labels=train, multi_label=multi, device="cpu")
    priors = lacal.count_priors(train, multi_label=multi)
    report = lacal.report(logits, labels, fit.calibration, device="cpu")  # the task comes with the calibration
    comparison = lacal.compare(logits, labels, train_labels=train, multi_label=multi, device="cpu")
    applied = lacal.apply(logits, fit.calibration, tmp_path / "adjusted.npy")
    for result in (fit, priors, report, comparison, applied):
        assert result.task is task, type(result).__name__
    assert fit.calibration.multi_label is multi and task_of(calibration=fit.calibration) is task
    assert ("multi_label" in report.to_dict()) is multi and ("labels" in applied.to_dict()) is multi
    # adjusted = logits + the task's offsets from the counted priors, computed here in float64
    expected = logits.astype(np.float64) + task.offsets(priors.priors.priors, fit.tau)
    np.testing.assert_allclose(np.load(tmp_path / "adjusted.npy"), expected, rtol=1e-5, atol=1e-5)
    assert report.main.balanced_error == pytest.approx(fit.tau_fit.after.balanced_error)


# A library call and a command line that give each option of the table a non-default value.
GIVEN = {
    "method": ("fit", {"method": "tau-norm"}, ["fit-tau", "X", "Y", "--method", "tau-norm"]),
    "search": ("fit", {"search": "grid"}, ["fit-tau", "X", "Y", "--search", "grid"]),
    "grid_size": ("fit", {"grid_size": 50}, ["fit-tau", "X", "Y", "--grid-size", "50"]),
    "target_priors": ("fit", {"target_priors": "em"}, ["fit-tau", "X", "Y", "--target-priors", "em"]),
    "target_logits": ("fit", {"target_logits": "X"}, ["fit-tau", "X", "Y", "--target-logits", "X"]),
    "calibrate": ("fit", {"calibrate": "temperature"}, ["fit-tau", "X", "Y", "--calibrate", "temperature"]),
    "bias_l2": ("fit", {"bias_l2": 3.0}, ["fit-tau", "X", "Y", "--bias-l2", "3"]),
    "head": ("fit", {"head": "fc"}, ["fit-tau", "X", "Y", "--head", "fc"]),
    "checkpoint": ("report", {"checkpoint": "X"}, ["report", "Y", "--checkpoint", "X", "--features", "X"]),
    "features": ("report", {"features": "X"}, ["report", "Y", "--features", "X"]),
    "plot": ("report", {"plot": "p.png"}, ["report", "X", "Y", "--plot", "p.png"]),
    "bins": ("report", {"bins": 10}, ["report", "X", "Y", "--bins", "10"]),
    "test_features": ("compare", {"test_features": "X"}, ["report", "X", "Y", "--compare", "--test-features", "X"]),
    "label_column": ("count_priors", {"label_column": "y"}, ["priors", "T", "--label-column", "y"]),
    "em": (None, {}, ["priors", "T", "--em", "X"]),
}


def test_the_table_names_every_option_given_here():
    assert set(GIVEN) == set(OPTIONS)


@pytest.mark.parametrize("option", sorted(OPTIONS))
def test_options_the_table_keeps_from_multi_label_are_refused_by_library_and_cli_alike(option, tmp_path):
    logits, labels, train = make_problem(MULTI_LABEL)
    paths = {"X": tmp_path / "x.npy", "Y": tmp_path / "y.npy", "T": tmp_path / "t.npy"}
    np.save(paths["X"], logits)
    np.save(paths["Y"], labels.astype(np.uint8))
    np.save(paths["T"], train)
    workflow, options, command = GIVEN[option]
    assert "multi-label" not in OPTIONS[option] and "single-label" in OPTIONS[option]
    if workflow is not None:
        data = {"fit": (logits, labels), "report": (logits, labels), "compare": (logits, labels),
                "count_priors": (train,)}[workflow]
        extra = {"train_labels": train} if workflow in ("fit", "compare") else {}
        with pytest.raises(OptionError) as error:
            getattr(lacal, workflow)(*data, multi_label=True, **extra, **options)
        assert error.value.source == option and f"`{option}` do(es) not apply to multi-label heads" in str(error.value)
    arguments = [str(paths.get(a, a)) for a in command] + ["--multi-label"]
    if command[0] in ("fit-tau", "report") and "--checkpoint" not in command and "--features" not in command:
        arguments += ["--train-labels", str(paths["T"])]
    result = run(*arguments)
    assert result.exit_code == 6, result.output
    assert result.stderr.startswith(f"lacal: error: {FLAGS[option]}: {FLAGS[option]}"), result.stderr
    assert "do(es) not apply to multi-label heads yet" in result.stderr


def test_a_single_label_head_takes_every_option_of_the_table():
    SINGLE_LABEL.refuse(**{option: True for option in OPTIONS})
    with pytest.raises(OptionError) as error:
        MULTI_LABEL.refuse(calibrate=None, smoothing=0.5, head="fc", plot="p.png")
    assert error.value.source == "head" and "`head`, `plot` do(es) not apply" in str(error.value)
    with pytest.raises(OptionError) as error:
        MULTI_LABEL.refuse(torchrun=True)
    assert error.value.source == "torchrun"
    SINGLE_LABEL.refuse(torchrun=True)


def test_a_metric_belongs_to_its_task():
    logits, labels, train = make_problem(MULTI_LABEL)
    with pytest.raises(OptionError) as error:
        lacal.fit(logits, labels, train_labels=train, multi_label=True, metric="worst-class-error")
    assert error.value.source == "metric" and "balanced-error or macro-f1" in str(error.value)
    single = make_problem(SINGLE_LABEL)
    with pytest.raises(OptionError) as error:
        lacal.compare(single[0], single[1], train_labels=single[2], metric="macro-f1")
    assert error.value.source == "metric"


def test_options_a_multilabel_head_does_not_take_are_refused_not_ignored(tmp_path):
    rng = np.random.default_rng(11)
    np.save(tmp_path / "x.npy", rng.normal(size=(60, 4)).astype(np.float32))
    np.save(tmp_path / "y.npy", (rng.random((60, 4)) < 0.3).astype(np.int8))
    np.save(tmp_path / "t.npy", (rng.random((200, 4)) < 0.2).astype(np.int8))
    runner = CliRunner()
    base = ["fit-tau", str(tmp_path / "x.npy"), str(tmp_path / "y.npy"), "--train-labels", str(tmp_path / "t.npy")]
    report = ["report", str(tmp_path / "x.npy"), str(tmp_path / "y.npy"), "--train-labels", str(tmp_path / "t.npy")]
    cases = [(base + ["--grid-size", "50"], "--grid-size"), (base + ["--head", "fc"], "--head"),
             (base + ["--bias-l2", "3"], "--bias-l2"),
             (report + ["--tau", "1", "--head", "fc"], "--head"),
             (report + ["--tau", "1", "--metric", "macro-f1"], "--metric"),
             (report + ["--compare", "--sort", "error"], "--sort"),
             (["priors", str(tmp_path / "t.npy"), "--em", str(tmp_path / "x.npy"), "--multi-label"], "--em")]
    for arguments, flag in cases:
        result = runner.invoke(app, arguments)
        assert result.exit_code == 6 and flag in result.stderr, (arguments, result.output)


@pytest.mark.parametrize("task", TASKS, ids=lambda task: task.name)
def test_a_calibration_file_brings_its_task_to_apply_and_report(task, tmp_path):
    """Given a calibration file (not only a `Calibration`), `apply` and `report` run the task it was fitted for: a
    multi-label CSV lists the labels with adjusted logit > 0, a softmax one the top class."""
    logits, labels, train = make_problem(task)
    lacal.fit(logits, labels, train_labels=train, multi_label=task.multi_label, out=tmp_path / "c.json")
    np.save(tmp_path / "logits.npy", logits)
    result = lacal.apply(tmp_path / "logits.npy", tmp_path / "c.json", tmp_path / "p.csv")
    assert result.task is task
    header = (tmp_path / "p.csv").read_text().splitlines()[0].split(",")
    assert header[:2] == (["sample", "labels"] if task.multi_label else ["sample", "class"])
    report = lacal.report(logits, labels, tmp_path / "c.json")
    assert report.task is task
    expected = lacal.report(logits, labels, lacal.Calibration.load(tmp_path / "c.json")).to_dict()
    assert report.to_dict() == expected


@pytest.mark.parametrize("multi_label", [False, True], ids=["single-label", "multi-label"])
def test_patch_checkpoint_takes_the_task_from_a_fit_result_or_the_flag(tmp_path, multi_label):
    """One `patch_checkpoint` for both tasks: a fit result of either task, or `tau` with training labels and the
    task's flag, gives a head whose bias is the task's offsets (-tau log pi, or -tau log(pi / (1 - pi)))."""
    import torch
    from safetensors.torch import load_file, save_file

    rng = np.random.default_rng(3)
    rates = np.array([0.5, 0.3, 0.2, 0.1, 0.05])
    if multi_label:
        logits = rng.normal(size=(200, 5)).astype(np.float32)
        labels = (rng.random((200, 5)) < rates).astype(np.int64)
        train = (rng.random((3000, 5)) < rates).astype(np.int64)
        positives = train.sum(0)
        expected_at_one = -(np.log(positives) - np.log(len(train) - positives))
    else:
        labels = rng.integers(0, 5, 200)
        logits = (rng.normal(size=(200, 5)) + 2 * np.eye(5)[labels]).astype(np.float32)
        train = rng.choice(5, size=3000, p=rates / rates.sum())
        counts = np.bincount(train, minlength=5)
        expected_at_one = -np.log(counts / counts.sum())
    save_file({"fc.weight": torch.zeros(5, 8), "fc.bias": torch.zeros(5)}, str(tmp_path / "m.safetensors"))
    fit = lacal.fit(logits, labels, train_labels=train, multi_label=multi_label, device="cpu")
    lacal.patch_checkpoint(tmp_path / "m.safetensors", fit, out=tmp_path / "fit.safetensors", device="cpu")
    assert fit.task.multi_label == multi_label
    np.testing.assert_allclose(load_file(str(tmp_path / "fit.safetensors"))["fc.bias"].numpy(),
                               fit.tau * expected_at_one, rtol=1e-6, atol=1e-6)
    lacal.patch_checkpoint(tmp_path / "m.safetensors", tau=1.0, train_labels=train, multi_label=multi_label,
                           out=tmp_path / "tau.safetensors", device="cpu")
    np.testing.assert_allclose(load_file(str(tmp_path / "tau.safetensors"))["fc.bias"].numpy(), expected_at_one,
                               rtol=1e-6, atol=1e-6)


def test_a_single_label_calibration_for_a_multi_label_head_names_the_parameter(tmp_path):
    """The library's error names `multi_label` (its parameter), not the CLI's --multi-label; the CLI shows the
    flag."""
    from lacal.errors import MismatchError

    logits, labels, train = make_problem(SINGLE_LABEL)
    fit = lacal.fit(logits, labels, train_labels=train, device="cpu")
    with pytest.raises(MismatchError) as error:
        lacal.apply(logits, fit, multi_label=True)
    assert "`multi_label` was given" in str(error.value) and "--multi-label" not in str(error.value)
    fit.calibration.save(tmp_path / "c.json")
    np.save(tmp_path / "x.npy", logits)
    result = run("apply", tmp_path / "x.npy", "--calibration", tmp_path / "c.json", "--out", tmp_path / "y.npy",
                 "--multi-label")
    assert result.exit_code == 7 and "calibration, but --multi-label was given" in result.stderr


def test_em_refuses_a_multi_label_heads_priors_by_saying_so(tmp_path):
    """EM estimates a softmax head's target priors. Multi-label priors (a result or the file `lacal priors
    --multi-label` writes) are refused as such: not with a hint to pass a `multi_label` that estimate_priors does not
    take, nor as "not a lacal priors file"."""
    logits, _, train = make_problem(MULTI_LABEL)
    priors = lacal.count_priors(train, multi_label=True)
    with pytest.raises(OptionError) as error:
        lacal.estimate_priors(logits, priors)
    assert error.value.source == "train_priors" and "multi-label" in str(error.value)
    assert "multi_label=True" not in str(error.value)
    np.save(tmp_path / "t.npy", train)
    np.save(tmp_path / "x.npy", logits)
    assert run("priors", tmp_path / "t.npy", "--multi-label", "--out", tmp_path / "p.json").exit_code == 0
    result = run("priors", "--em", tmp_path / "x.npy", "--priors", tmp_path / "p.json")
    assert result.exit_code == 6, result.output
    assert result.stderr.startswith("lacal: error: --priors: ") and "multi-label" in result.stderr
    assert "not a lacal priors file" not in result.stderr


def test_apply_guesses_the_task_from_a_training_label_matrix_and_says_so(tmp_path):
    """`apply CHECKPOINT --tau 1 --train-labels MATRIX` without --multi-label: the matrix can only be multi-label
    labels, so the head gets -tau * log(pi / (1 - pi)), and a note says what was guessed."""
    import torch
    from safetensors.numpy import load_file
    from safetensors.torch import save_file

    rng = np.random.default_rng(0)
    train = (rng.random((500, 4)) < [0.5, 0.3, 0.1, 0.05]).astype(np.int64)
    np.save(tmp_path / "train.npy", train)
    save_file({"fc.weight": torch.zeros(4, 3), "fc.bias": torch.zeros(4)}, str(tmp_path / "m.safetensors"))
    result = CliRunner().invoke(app, ["apply", str(tmp_path / "m.safetensors"), "--tau", "1", "--train-labels",
                                      str(tmp_path / "train.npy"), "--out", str(tmp_path / "p.safetensors")])
    assert result.exit_code == 0, result.output
    assert "read as multi-label" in result.stderr
    positives = train.sum(0)
    np.testing.assert_allclose(load_file(str(tmp_path / "p.safetensors"))["fc.bias"],
                               -np.log(positives / (len(train) - positives)), rtol=1e-6, atol=1e-6)
