"""Results compose: every result type of every function is accepted by every function that takes what it holds
(priors, a calibration, target priors, training counts), and gives what the plain value gives, checked against numpy.
Anything else is a LacalError that names the parameter."""

from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

import lacal
from lacal.errors import LacalError, MismatchError, OptionError
from lacal.methods import estimate_target_priors
from .conftest import long_tail_problem

CLASSES = 8
TAU = 1.3
RATES = np.array([0.5, 0.3, 0.2, 0.1, 0.05])


def _balanced_error(logits, labels, shift) -> float:
    predicted = np.argmax(logits.astype(np.float64) + shift, axis=1)
    return float(np.mean([np.mean(predicted[labels == c] != c) for c in np.unique(labels)]))


class World:
    """One small long-tailed problem, its files, and one result of every kind (made once for the module)."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.val_logits, self.val_labels, counts = long_tail_problem(num_classes=CLASSES, seed=0)
        self.test_logits, test_labels, _ = long_tail_problem(num_samples=500, num_classes=CLASSES, seed=3)
        # a shifted test set: its labels follow the training counts, so the target priors are not uniform
        rng = np.random.default_rng(4)
        keep = rng.random(test_labels.size) < (counts / counts.max())[test_labels] + 0.05
        self.test_logits, self.test_labels = self.test_logits[keep], test_labels[keep]
        self.train_labels = np.repeat(np.arange(CLASSES), counts)
        self.counts = np.bincount(self.train_labels, minlength=CLASSES)
        self.pi = self.counts / self.counts.sum()
        self.priors_result = lacal.count_priors(self.train_labels, out=folder / "priors.json")
        self.fit_result = lacal.fit(self.val_logits, self.val_labels, train_labels=self.train_labels, device="cpu",
                                    out=folder / "calibration.json")
        self.estimate = lacal.estimate_priors(self.test_logits, train_labels=self.train_labels, device="cpu",
                                              out=folder / "q.json")
        self.target_counts = np.bincount(self.test_labels, minlength=CLASSES)
        weight, bias = torch.randn(CLASSES, 5, dtype=torch.float64), torch.randn(CLASSES, dtype=torch.float64)
        save_file({"fc.weight": weight, "fc.bias": bias}, str(folder / "model.safetensors"))
        self.bias = bias.numpy()
        self.multi = MultiLabelWorld(folder)


class MultiLabelWorld:
    def __init__(self, folder: Path):
        self.folder = folder
        rng = np.random.default_rng(5)

        def split(size):
            y = rng.random((size, RATES.size)) < RATES
            return (1.8 * y - 0.9 + rng.normal(size=y.shape) + np.log(RATES / (1 - RATES))).astype(np.float32), y

        self.val_logits, self.val_labels = split(400)
        self.test_logits, self.test_labels = split(300)
        self.train_labels = rng.random((2000, RATES.size)) < RATES
        self.positives = self.train_labels.sum(0)
        self.log_odds = np.log(self.positives / (self.train_labels.shape[0] - self.positives))
        self.priors_result = lacal.count_priors(self.train_labels, multi_label=True, out=folder / "ml_priors.json")
        self.fit_result = lacal.fit(self.val_logits, self.val_labels, train_labels=self.train_labels,
                                    multi_label=True, device="cpu", out=folder / "ml_calibration.json")
        save_file({"fc.weight": torch.randn(RATES.size, 3, dtype=torch.float64),
                   "fc.bias": torch.zeros(RATES.size, dtype=torch.float64)}, str(folder / "ml_model.safetensors"))


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return World(tmp_path_factory.mktemp("compose"))


def _patched_bias(world, tmp_path, *args, **options) -> np.ndarray:
    out = tmp_path / "patched.safetensors"
    lacal.patch_checkpoint(world.folder / "model.safetensors", *args, out=out, device="cpu", **options)
    return load_file(str(out))["fc.bias"].numpy()


# ------------------------------------------------------------------------------------------------- priors

PRIORS = {  # name: (the value, whether it carries the training counts)
    "count_priors result": (lambda w: w.priors_result, True),
    "Priors": (lambda w: w.priors_result.priors, True),
    "counts array": (lambda w: w.counts, True),
    "counts list": (lambda w: w.counts.tolist(), True),
    "counts tensor": (lambda w: torch.from_numpy(w.counts), True),
    "probabilities": (lambda w: w.pi, False),
    "priors file": (lambda w: str(w.folder / "priors.json"), True),
    "priors file as Path": (lambda w: w.folder / "priors.json", True),
    "read_priors": (lambda w: lacal.core.read_priors(w.folder / "priors.json"), True),
}


def _fit(world, priors, tmp_path, has_counts):
    result = lacal.fit(world.val_logits, world.val_labels, priors, device="cpu")
    assert result.tau == world.fit_result.tau
    np.testing.assert_allclose(result.calibration.priors, world.pi, rtol=1e-12)


def _estimate(world, priors, tmp_path, has_counts):
    result = lacal.estimate_priors(world.test_logits, priors, device="cpu")
    np.testing.assert_allclose(result.priors, world.estimate.priors, rtol=1e-12)
    np.testing.assert_allclose(result.train_priors.priors, world.pi, rtol=1e-12)


def _compare(world, priors, tmp_path, has_counts):
    result = lacal.compare(world.val_logits, world.val_labels, priors, test_logits=world.test_logits,
                           test_labels=world.test_labels, device="cpu")
    fitted = next(m for m in result.methods if m.method == "logit adjustment, fitted tau")
    assert fitted.tau == world.fit_result.tau
    assert fitted.evaluation.balanced_error == pytest.approx(
        _balanced_error(world.test_logits, world.test_labels, -fitted.tau * np.log(world.pi)))
    assert np.array_equal(result.train_counts, world.counts) if has_counts else result.train_counts is None


def _report_counts(world, priors, tmp_path, has_counts):
    result = lacal.report(world.test_logits, world.test_labels, priors=priors, device="cpu")
    assert result.adjusted is None
    assert np.array_equal(result.train_counts, world.counts) if has_counts else result.train_counts is None


def _report_tau(world, priors, tmp_path, has_counts):
    result = lacal.report(world.test_logits, world.test_labels, tau=TAU, priors=priors, device="cpu")
    assert result.adjusted.balanced_error == pytest.approx(
        _balanced_error(world.test_logits, world.test_labels, -TAU * np.log(world.pi)))


def _apply(world, priors, tmp_path, has_counts):
    adjusted = lacal.apply(world.test_logits.astype(np.float64), tau=TAU, priors=priors, device="cpu")
    np.testing.assert_allclose(adjusted, world.test_logits - TAU * np.log(world.pi), rtol=1e-12)


def _patch(world, priors, tmp_path, has_counts):
    bias = _patched_bias(world, tmp_path, tau=TAU, priors=priors)
    np.testing.assert_allclose(bias, world.bias - TAU * np.log(world.pi), rtol=1e-12)


PRIORS_TAKERS = {"fit": _fit, "estimate_priors": _estimate, "compare": _compare, "report (counts)": _report_counts,
                 "report (tau)": _report_tau, "apply (tau)": _apply, "patch_checkpoint (tau)": _patch}


@pytest.mark.parametrize("taker", PRIORS_TAKERS)
@pytest.mark.parametrize("given", PRIORS)
def test_every_priors_value_goes_where_priors_go(world, tmp_path, given, taker):
    make, has_counts = PRIORS[given]
    PRIORS_TAKERS[taker](world, make(world), tmp_path, has_counts)


# ------------------------------------------------------------------------------------------------ calibration

CALIBRATIONS = {
    "fit result": lambda w: w.fit_result,
    "Calibration": lambda w: w.fit_result.calibration,
    "calibration file": lambda w: str(w.folder / "calibration.json"),
    "calibration file as Path": lambda w: w.folder / "calibration.json",
    "Calibration.load": lambda w: lacal.Calibration.load(w.folder / "calibration.json"),
}


def _shift(world):
    return -world.fit_result.tau * np.log(world.pi)


def _apply_calibration(world, calibration, tmp_path):
    adjusted = lacal.apply(world.test_logits.astype(np.float64), calibration, device="cpu")
    np.testing.assert_allclose(adjusted, world.test_logits + _shift(world), rtol=1e-12)


def _apply_calibration_to_file(world, calibration, tmp_path):
    result = lacal.apply(world.test_logits.astype(np.float64), calibration, tmp_path / "adjusted.npy", device="cpu")
    assert result.tau == world.fit_result.tau
    np.testing.assert_allclose(np.load(tmp_path / "adjusted.npy"), world.test_logits + _shift(world), rtol=1e-12)


def _report_calibration(world, calibration, tmp_path):
    result = lacal.report(world.test_logits, world.test_labels, calibration, device="cpu")
    assert result.adjusted.balanced_error == pytest.approx(
        _balanced_error(world.test_logits, world.test_labels, _shift(world)))
    assert np.array_equal(result.train_counts, world.counts)  # the training counts from the calibration


def _patch_checkpoint_calibration(world, calibration, tmp_path):
    np.testing.assert_allclose(_patched_bias(world, tmp_path, calibration), world.bias + _shift(world), rtol=1e-12)


def _patch_module_calibration(world, calibration, tmp_path):
    head = torch.nn.Linear(5, CLASSES).double()
    bias = head.bias.detach().numpy().copy()
    lacal.patch_module(head, calibration)
    np.testing.assert_allclose(head.bias.detach().numpy(), bias + _shift(world), rtol=1e-12)


CALIBRATION_TAKERS = {"apply": _apply_calibration, "apply to a file": _apply_calibration_to_file,
                      "report": _report_calibration, "patch_checkpoint": _patch_checkpoint_calibration,
                      "patch_module": _patch_module_calibration}


@pytest.mark.parametrize("taker", CALIBRATION_TAKERS)
@pytest.mark.parametrize("given", CALIBRATIONS)
def test_every_calibration_value_goes_where_a_calibration_goes(world, tmp_path, given, taker):
    CALIBRATION_TAKERS[taker](world, CALIBRATIONS[given](world), tmp_path)


# ---------------------------------------------------------------------------------------------- target priors

TARGETS = {  # name: (the value, q it means)
    "estimate_priors result": (lambda w: w.estimate, lambda w: w.estimate.priors),
    "methods.PriorEstimate": (lambda w: estimate_target_priors(w.test_logits, w.pi),
                              lambda w: w.estimate.priors),
    "estimate file": (lambda w: str(w.folder / "q.json"), lambda w: w.estimate.priors),
    "q array": (lambda w: w.estimate.priors, lambda w: w.estimate.priors),
    "q list": (lambda w: w.estimate.priors.tolist(), lambda w: w.estimate.priors),
    "q tensor": (lambda w: torch.from_numpy(w.estimate.priors), lambda w: w.estimate.priors),
    "count_priors of target labels": (lambda w: lacal.count_priors(w.test_labels, num_classes=CLASSES),
                                      lambda w: w.target_counts / w.target_counts.sum()),
    "Priors of target labels": (lambda w: lacal.count_priors(w.test_labels, num_classes=CLASSES).priors,
                                lambda w: w.target_counts / w.target_counts.sum()),
}


def _fit_target(world, target, q, tmp_path):
    result = lacal.fit(world.val_logits, world.val_labels, world.priors_result, target_priors=target, device="cpu")
    np.testing.assert_allclose(result.target_priors, q, rtol=1e-6)
    np.testing.assert_allclose(result.calibration.offsets, -result.tau * np.log(world.pi) + np.log(q), rtol=1e-6)
    assert result.target["kind"] in ("em", "priors", "array", "file")


def _apply_target(world, target, q, tmp_path):
    adjusted = lacal.apply(world.test_logits.astype(np.float64), tau=TAU, priors=world.priors_result,
                           target_priors=target, device="cpu")
    np.testing.assert_allclose(adjusted, world.test_logits - TAU * np.log(world.pi) + np.log(q), rtol=1e-6)


def _report_target(world, target, q, tmp_path):
    result = lacal.report(world.test_logits, world.test_labels, tau=TAU, priors=world.priors_result,
                          target_priors=target, device="cpu")
    np.testing.assert_allclose(result.target_priors, q, rtol=1e-6)
    assert result.adjusted.balanced_error == pytest.approx(
        _balanced_error(world.test_logits, world.test_labels, -TAU * np.log(world.pi) + np.log(q)))


def _patch_target(world, target, q, tmp_path):
    bias = _patched_bias(world, tmp_path, tau=TAU, priors=world.priors_result, target_priors=target)
    np.testing.assert_allclose(bias, world.bias - TAU * np.log(world.pi) + np.log(q), rtol=1e-6)


TARGET_TAKERS = {"fit": _fit_target, "apply (tau)": _apply_target, "report (tau)": _report_target,
                 "patch_checkpoint (tau)": _patch_target}


@pytest.mark.parametrize("taker", TARGET_TAKERS)
@pytest.mark.parametrize("given", TARGETS)
def test_every_target_priors_value_goes_where_target_priors_go(world, tmp_path, given, taker):
    make, q = TARGETS[given]
    TARGET_TAKERS[taker](world, make(world), q(world), tmp_path)


def test_an_estimate_keeps_its_em_record_in_the_calibration(world):
    result = lacal.fit(world.val_logits, world.val_labels, world.priors_result, target_priors=world.estimate,
                       device="cpu")
    assert result.target == world.estimate.info
    assert result.target["kind"] == "em" and result.target["iterations"] == world.estimate.info["iterations"]


# ---------------------------------------------------------------------------------------------- multi-label

MULTI_PRIORS = {
    "count_priors result": lambda m: m.priors_result,
    "MultiLabelPriors": lambda m: m.priors_result.priors,
    "priors file": lambda m: m.folder / "ml_priors.json",
}


def _fit_multi(multi, priors, tmp_path, flag):
    result = lacal.fit(multi.val_logits, multi.val_labels, priors, device="cpu", **flag)
    assert isinstance(result, lacal.FitResult) and result.task.multi_label
    assert result.tau == multi.fit_result.tau
    np.testing.assert_allclose(result.calibration.offsets, -result.tau * multi.log_odds, rtol=1e-12)


def _apply_multi(multi, priors, tmp_path, flag):
    adjusted = lacal.apply(multi.test_logits.astype(np.float64), tau=TAU, priors=priors, device="cpu", **flag)
    np.testing.assert_allclose(adjusted, multi.test_logits - TAU * multi.log_odds, rtol=1e-12)


def _report_multi(multi, priors, tmp_path, flag):
    result = lacal.report(multi.test_logits, multi.test_labels, priors=priors, device="cpu", **flag)
    assert np.array_equal(result.train_counts, multi.positives)


def _compare_multi(multi, priors, tmp_path, flag):
    result = lacal.compare(multi.val_logits, multi.val_labels, priors, test_logits=multi.test_logits,
                           test_labels=multi.test_labels, device="cpu", **flag)
    assert np.array_equal(result.train_counts, multi.positives)
    assert multi.fit_result.tau in [row["tau"] for row in result.rows()]


MULTI_PRIORS_TAKERS = {"fit": _fit_multi, "apply (tau)": _apply_multi, "report": _report_multi,
                       "compare": _compare_multi}


@pytest.mark.parametrize("flag", [{}, {"multi_label": True}], ids=["found from the priors", "multi_label=True"])
@pytest.mark.parametrize("taker", MULTI_PRIORS_TAKERS)
@pytest.mark.parametrize("given", MULTI_PRIORS)
def test_every_multi_label_priors_value_goes_where_priors_go(world, tmp_path, given, taker, flag):
    multi = world.multi
    MULTI_PRIORS_TAKERS[taker](multi, MULTI_PRIORS[given](multi), tmp_path, flag)


MULTI_CALIBRATIONS = {
    "fit result": lambda m: m.fit_result,
    "Calibration": lambda m: m.fit_result.calibration,
    "calibration file": lambda m: m.folder / "ml_calibration.json",
}


def _multi_shift(multi):
    return -multi.fit_result.tau * multi.log_odds


def _apply_multi_calibration(multi, calibration, tmp_path, flag):
    adjusted = lacal.apply(multi.test_logits.astype(np.float64), calibration, device="cpu", **flag)
    np.testing.assert_allclose(adjusted, multi.test_logits + _multi_shift(multi), rtol=1e-12)


def _report_multi_calibration(multi, calibration, tmp_path, flag):
    result = lacal.report(multi.test_logits, multi.test_labels, calibration, device="cpu", **flag)
    assert result.tau == multi.fit_result.tau
    assert np.array_equal(result.train_counts, multi.positives)


def _patch_module_multi(multi, calibration, tmp_path, flag):
    head = torch.nn.Linear(3, RATES.size).double()
    bias = head.bias.detach().numpy().copy()
    lacal.patch_module(head, calibration)
    np.testing.assert_allclose(head.bias.detach().numpy(), bias + _multi_shift(multi), rtol=1e-12)


def _patch_checkpoint_multi(multi, calibration, tmp_path, flag):
    lacal.patch_checkpoint(multi.folder / "ml_model.safetensors", calibration, out=tmp_path / "p.safetensors",
                           device="cpu")
    np.testing.assert_allclose(load_file(str(tmp_path / "p.safetensors"))["fc.bias"].numpy(), _multi_shift(multi),
                               rtol=1e-12)


MULTI_CALIBRATION_TAKERS = {"apply": _apply_multi_calibration, "report": _report_multi_calibration,
                            "patch_module": _patch_module_multi, "patch_checkpoint": _patch_checkpoint_multi}


MULTI_CALIBRATION_CASES = [  # patch_module and patch_checkpoint take no multi_label flag: the calibration says it
    pytest.param(given, taker, flag, id=f"{given}-{taker}-{'multi_label=True' if flag else 'found'}")
    for given in MULTI_CALIBRATIONS for taker in MULTI_CALIBRATION_TAKERS
    for flag in ([{}] if taker.startswith("patch_") else [{}, {"multi_label": True}])]


@pytest.mark.parametrize("given, taker, flag", MULTI_CALIBRATION_CASES)
def test_every_multi_label_calibration_value_goes_where_a_calibration_goes(world, tmp_path, given, taker, flag):
    multi = world.multi
    MULTI_CALIBRATION_TAKERS[taker](multi, MULTI_CALIBRATIONS[given](multi), tmp_path, flag)


# ------------------------------------------------------------------------------------------------- refused

def _not_priors(w):
    return {"an int": 5, "a dict": {"counts": [1, 2]}, "an estimate_priors result": w.estimate,
            "a fit result": w.fit_result, "a Calibration": w.fit_result.calibration,
            "a report": lacal.report(w.test_logits, w.test_labels, device="cpu")}


def _not_calibrations(w):
    return {"an int": 5, "a dict": {"tau": 1.0}, "a count_priors result": w.priors_result,
            "a Priors": w.priors_result.priors, "an estimate_priors result": w.estimate, "counts": w.counts}


def _not_targets(w):
    return {"an int": 5, "a dict": {"q": [0.5, 0.5]}, "a fit result": w.fit_result,
            "a Calibration": w.fit_result.calibration, "a multi-label count_priors result": w.multi.priors_result}


def _model(w):
    return w.folder / "model.safetensors"


REFUSALS = {  # name: (the bad values, the call, the parameter it names)
    "fit priors": (_not_priors, lambda w, bad, tmp: lacal.fit(w.val_logits, w.val_labels, bad, device="cpu"),
                   "priors"),
    "estimate_priors train_priors": (_not_priors, lambda w, bad, tmp: lacal.estimate_priors(
        w.test_logits, bad, device="cpu"), "train_priors"),
    "compare priors": (_not_priors, lambda w, bad, tmp: lacal.compare(w.val_logits, w.val_labels, bad,
                                                                      device="cpu"), "priors"),
    "report priors": (_not_priors, lambda w, bad, tmp: lacal.report(w.test_logits, w.test_labels, priors=bad,
                                                                    device="cpu"), "priors"),
    "apply priors": (_not_priors, lambda w, bad, tmp: lacal.apply(w.test_logits, tau=1.0, priors=bad,
                                                                  device="cpu"), "priors"),
    "patch_checkpoint priors": (_not_priors, lambda w, bad, tmp: lacal.patch_checkpoint(
        _model(w), tau=1.0, priors=bad, out=tmp / "p.safetensors", device="cpu"), "priors"),
    "apply calibration": (_not_calibrations, lambda w, bad, tmp: lacal.apply(w.test_logits, bad, device="cpu"),
                          "calibration"),
    "report calibration": (_not_calibrations, lambda w, bad, tmp: lacal.report(w.test_logits, w.test_labels, bad,
                                                                               device="cpu"), "calibration"),
    "patch_checkpoint calibration": (_not_calibrations, lambda w, bad, tmp: lacal.patch_checkpoint(
        _model(w), bad, out=tmp / "p.safetensors", device="cpu"), "calibration"),
    "patch_module calibration": (_not_calibrations, lambda w, bad, tmp: lacal.patch_module(
        torch.nn.Linear(5, CLASSES), bad), "calibration"),
    "fit target_priors": (_not_targets, lambda w, bad, tmp: lacal.fit(
        w.val_logits, w.val_labels, w.priors_result, target_priors=bad, device="cpu"), "target_priors"),
    "apply target_priors": (_not_targets, lambda w, bad, tmp: lacal.apply(
        w.test_logits, tau=1.0, priors=w.priors_result, target_priors=bad, device="cpu"), "target_priors"),
    "report target_priors": (_not_targets, lambda w, bad, tmp: lacal.report(
        w.test_logits, w.test_labels, tau=1.0, priors=w.priors_result, target_priors=bad, device="cpu"),
        "target_priors"),
    "patch_checkpoint target_priors": (_not_targets, lambda w, bad, tmp: lacal.patch_checkpoint(
        _model(w), tau=1.0, priors=w.priors_result, target_priors=bad, out=tmp / "p.safetensors", device="cpu"),
        "target_priors"),
}


@pytest.mark.parametrize("call", REFUSALS)
def test_anything_else_is_a_lacal_error_naming_the_parameter(world, tmp_path, call):
    values, run, parameter = REFUSALS[call]
    for name, bad in values(world).items():
        with pytest.raises(LacalError) as error:
            run(world, bad, tmp_path)
        assert error.value.source == parameter, (name, error.value.message)
        assert len(error.value.message.splitlines()) == 1, name
    assert not (tmp_path / "p.safetensors").exists()


def test_results_say_where_they_go_instead(world):
    with pytest.raises(LacalError, match="pass it as `target_priors`"):
        lacal.fit(world.val_logits, world.val_labels, world.estimate, device="cpu")
    with pytest.raises(LacalError, match="take as `calibration`"):
        lacal.fit(world.val_logits, world.val_labels, world.fit_result, device="cpu")
    with pytest.raises(LacalError, match="pass them as `priors`, with `tau`"):
        lacal.apply(world.test_logits, world.priors_result, device="cpu")
    with pytest.raises(LacalError, match="pass it as `priors`") as error:
        lacal.fit(world.val_logits, world.val_labels, train_labels=world.priors_result, device="cpu")
    assert error.value.source == "train_labels"


def test_the_other_heads_priors_are_a_mismatch_naming_the_parameter(world):
    multi = world.multi
    with pytest.raises(OptionError, match="multi-label head's priors") as error:  # EM is for a softmax head only
        lacal.estimate_priors(world.test_logits, multi.priors_result, device="cpu")
    assert error.value.source == "train_priors"
    with pytest.raises(MismatchError) as error:
        lacal.fit(multi.val_logits, multi.val_labels, world.priors_result, multi_label=True, device="cpu")
    assert error.value.source == "priors"
    with pytest.raises(LacalError) as error:
        lacal.fit(multi.val_logits, multi.val_labels, multi.positives, multi_label=True, device="cpu")
    assert error.value.source == "priors"
