"""Bootstrap intervals, cross-fitting and the one-SE tau rule: every replicate is an exact refit, the weights depend
only on the seed and the data, the intervals are what their replicates say, and bad options are refused."""

import json

import numpy as np
import pytest
from typer.testing import CliRunner

import lacal
from lacal.cli.app import app
from lacal.core.offsets import as_priors_array
from lacal.data.readers import source_from_array
from lacal.errors import OptionError
from lacal.methods import fit_tau
from lacal.methods.bootstrap import (bootstrap_fit, cross_fit, one_se_tau, replicate_counts,
                                     sample_intervals)
from lacal.methods.resampling import percentile_interval, wilson_interval

from . import reference
from .conftest import long_tail_problem, one_clean_line, run

runner = CliRunner()


def intervals_of(logits, labels, counts, tau_range=(0.0, 4.0)):
    fit = fit_tau(logits, labels, counts, tau_range, keep_intervals=True)
    points = sorted({0.0, 1.0, *tau_range})
    return fit, sample_intervals(source_from_array(logits), fit.intervals, np.log(as_priors_array(counts)), points)


def balanced(labels, right, weights, num_classes):
    """The balanced error of samples drawn `weights` times each, `right` where correct (plain numpy)."""
    support = np.bincount(labels, weights=weights, minlength=num_classes)
    correct = np.bincount(labels, weights=weights * right, minlength=num_classes)
    present = support > 0
    return float(np.mean(1 - correct[present] / support[present]))


# -------------------------------------------------------------------------------------------- replicate == refit


@pytest.mark.parametrize("stratified", [True, False])
@pytest.mark.parametrize("seed,dtype", [(0, np.float32), (1, np.float64), (2, np.float16)])
def test_every_replicate_is_an_exact_refit(stratified, seed, dtype):
    """Rebuild replicates' datasets from their weights (samples repeated) and refit from scratch: the same tau, the
    same run and the same balanced error; float16 logits have exact ties, which argmax settles."""
    logits, labels, counts = long_tail_problem(num_samples=240, num_classes=8, seed=seed, dtype=dtype)
    fit, intervals = intervals_of(logits, labels, counts)
    boot = bootstrap_fit(intervals, fit.tau, (0.0, 4.0), replicates=24, seed=seed, stratified=stratified, block=5)
    weights = replicate_counts(labels, 8, seed, range(24), stratified)
    for b in range(24):
        rows = np.repeat(np.arange(labels.size), weights[b])
        refit = fit_tau(logits[rows], labels[rows], counts)
        assert boot.taus[b] == refit.tau
        assert boot.refit[b, 0] == pytest.approx(refit.after.balanced_error, abs=1e-12)
        # the errors at tau = 0 and at the fitted tau, on the replicate's samples
        assert boot.before[b, 0] == pytest.approx(refit.before.balanced_error, abs=1e-12)
        at_fitted = fit_tau(logits[rows], labels[rows], counts, (fit.tau, fit.tau + 1e-9), search="grid",
                            grid_size=2)
        assert boot.at_fitted[b, 0] == pytest.approx(at_fitted.grid_values[0], abs=1e-12)



def test_replicates_of_equal_class_supports_are_exact_refits():
    """Every class with the same number of validation samples (as ImageNet-LT's 20): each class weighs 1, and the
    replicates are still the refits of their rebuilt datasets."""
    logits, _, counts = long_tail_problem(num_samples=160, num_classes=8, seed=4)
    labels = np.arange(160) % 8
    logits[np.arange(160), labels] += 1.0
    fit, intervals = intervals_of(logits, labels, counts)
    boot = bootstrap_fit(intervals, fit.tau, (0.0, 4.0), replicates=12, seed=5, block=5)
    weights = replicate_counts(labels, 8, 5, range(12))
    for b in range(12):
        rows = np.repeat(np.arange(labels.size), weights[b])
        refit = fit_tau(logits[rows], labels[rows], counts)
        assert boot.taus[b] == refit.tau
        assert boot.refit[b, 0] == pytest.approx(refit.after.balanced_error, abs=1e-12)

def test_replicates_reach_the_independent_reference_minimum():
    """Against tests/reference.py (naive float64 loops): each replicate's own error is the brute-force minimum
    over its resampled data, and its tau reaches it."""
    logits, labels, counts = long_tail_problem(num_samples=90, num_classes=5, seed=7, dtype=np.float64)
    fit, intervals = intervals_of(logits, labels, counts)
    boot = bootstrap_fit(intervals, fit.tau, (0.0, 4.0), replicates=4, seed=3)
    weights = replicate_counts(labels, 5, 3, range(4))
    for b in range(4):
        rows = np.repeat(np.arange(labels.size), weights[b])
        best = reference.brute_force_minimum(logits[rows], labels[rows], counts, 0.0, 4.0)
        assert boot.refit[b, 0] == pytest.approx(best, abs=1e-12)
        assert reference.metric_at(logits[rows], labels[rows], counts, boot.taus[b]) == pytest.approx(best, abs=1e-12)


def test_stratified_replicates_keep_every_class_support():
    _, labels, _ = long_tail_problem(num_samples=300, num_classes=7, seed=4)
    weights = replicate_counts(labels, 7, 11, range(50))
    for row in weights:
        assert np.array_equal(np.bincount(labels, weights=row, minlength=7), np.bincount(labels, minlength=7))
    loose = replicate_counts(labels, 7, 11, range(50), stratified=False)
    assert (loose.sum(1) == labels.size).all()
    assert any(not np.array_equal(np.bincount(labels, weights=row, minlength=7), np.bincount(labels, minlength=7))
               for row in loose)
    # about 1 - 1/e of the samples are drawn at least once
    assert abs((weights > 0).mean() - (1 - np.exp(-1))) < 0.03


# ------------------------------------------------------------------------------------------------ reproducibility


def test_seed_and_block_size():
    logits, labels, counts = long_tail_problem(num_samples=300, num_classes=8, seed=5)
    fit, intervals = intervals_of(logits, labels, counts)
    a = bootstrap_fit(intervals, fit.tau, (0.0, 4.0), replicates=40, seed=9, block=7)
    b = bootstrap_fit(intervals, fit.tau, (0.0, 4.0), replicates=40, seed=9, block=64)
    c = bootstrap_fit(intervals, fit.tau, (0.0, 4.0), replicates=40, seed=10)
    assert np.array_equal(a.taus, b.taus) and np.array_equal(a.at_fitted, b.at_fitted, equal_nan=True)
    assert a.to_dict() == b.to_dict()
    assert not np.array_equal(a.taus, c.taus)
    # replicate b depends on (seed, b) alone: the first 10 of 40 are the 10 of a shorter run
    d = bootstrap_fit(intervals, fit.tau, (0.0, 4.0), replicates=10, seed=9)
    assert np.array_equal(d.taus, a.taus[:10])


def test_weights_follow_the_samples_not_their_position_in_a_shard():
    """The weights are a function of the seed, the global order and the labels: the same for any split into
    shards, as the ranks of a torchrun job concatenate them in rank order."""
    _, labels, _ = long_tail_problem(num_samples=200, num_classes=6, seed=2)
    whole = replicate_counts(labels, 6, 4, range(5))
    again = replicate_counts(labels.copy(), 6, 4, [3, 1])
    assert np.array_equal(again, whole[[3, 1]])



@pytest.mark.parametrize("stratified", [True, False])
def test_weights_are_the_documented_draw(stratified):
    """Replicate b's counts are the documented draw, computed here slot by slot in plain Python: SFC64 seeded by
    SeedSequence([seed, b]), one 32-bit number x per slot (the low half of each 64-bit output first), the pick
    floor(x * n / 2**32) among the slot's n choices (its class's samples in class order, or all samples).
    A class of 70,000 samples makes x * n overflow 32 bits, as large validation sets do."""
    from numpy.random import SFC64, SeedSequence

    labels = np.concatenate([np.full(70_000, 2), np.arange(40) % 5, [4]])
    np.random.default_rng(8).shuffle(labels)
    order = np.argsort(labels, kind="stable")
    sizes = np.bincount(labels)
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    counts = replicate_counts(labels, 5, 13, [0, 6], stratified)
    for row, b in enumerate([0, 6]):
        words = SFC64(SeedSequence([13, b])).random_raw((labels.size + 1) // 2)
        bits = [int(w) >> shift & 0xFFFFFFFF for w in words.tolist() for shift in (0, 32)]
        expected = np.zeros(labels.size, dtype=np.int64)
        for slot, label in enumerate(labels[order].tolist()):
            first, n = (int(starts[label]), int(sizes[label])) if stratified else (0, labels.size)
            expected[order[first + (bits[slot] * n >> 32)]] += 1
        assert np.array_equal(counts[row], expected)

# --------------------------------------------------------------------------------------------------- intervals


def test_intervals_are_the_replicates_percentiles():
    """The printed intervals, recomputed from the replicates' weights with plain numpy."""
    logits, labels, counts = long_tail_problem(num_samples=400, num_classes=6, seed=8)
    fit, intervals = intervals_of(logits, labels, counts)
    boot = bootstrap_fit(intervals, fit.tau, (0.0, 4.0), replicates=200, seed=1, train_counts=counts)
    weights = replicate_counts(labels, 6, 1, range(200)).astype(np.float64)
    right_0 = fit_tau(logits, labels, counts, keep_intervals=True)
    lo, hi = intervals.lo, intervals.hi
    at_zero = np.array([balanced(labels, intervals.hits[0.0], w, 6) for w in weights])
    inside = (lo < fit.tau) & (fit.tau < hi)
    at_tau = np.array([balanced(labels, inside, w, 6) for w in weights])
    assert np.allclose(boot.before[:, 0], at_zero) and np.allclose(boot.at_fitted[:, 0], at_tau)
    assert boot.tau_ci == pytest.approx(tuple(np.quantile(boot.taus, [0.025, 0.975])))
    n = np.bincount(labels)
    factor = np.sqrt(np.sum(1 / (n - 1)) / np.sum(1 / n))
    estimate = fit.after.balanced_error
    optimism = np.mean(boot.original_at_refit[:, 0] - boot.refit[:, 0])
    low, high = np.quantile(at_tau, [0.025, 0.975])
    expected = (estimate + optimism + factor * (low - estimate), estimate + optimism + factor * (high - estimate))
    assert boot.ci("balanced_error", "after") == pytest.approx(expected)
    assert right_0.before == fit.before
    assert boot.standard_error == pytest.approx(np.std(at_tau, ddof=1))


def test_wilson_interval_closed_forms():
    z2 = 1.959963984540054 ** 2
    zero = wilson_interval(np.array([0]), np.array([3]), 0.95)[0]
    assert zero[0] == 0 and zero[1] == pytest.approx(z2 / (3 + z2))
    half = wilson_interval(np.array([5]), np.array([10]), 0.95)[0]
    assert half.mean() == pytest.approx(0.5)
    assert np.isnan(wilson_interval(np.array([0]), np.array([0]), 0.95)).all()
    assert percentile_interval([np.nan, np.nan], 0.9) is None


def test_report_intervals_of_a_fixed_adjustment():
    logits, labels, counts = long_tail_problem(num_samples=300, num_classes=6, seed=3)
    report = lacal.report(logits, labels, tau=1.0, priors=counts, bootstrap=150, seed=2, device="cpu")
    weights = replicate_counts(labels, 6, 2, range(150)).astype(np.float64)
    before = logits.argmax(1) == labels
    after = (logits - np.log(counts / counts.sum())).argmax(1) == labels
    change = np.array([balanced(labels, after, w, 6) - balanced(labels, before, w, 6) for w in weights])
    n = np.bincount(labels)
    factor = np.sqrt(np.sum(1 / (n - 1)) / np.sum(1 / n))
    estimate = report.adjusted.balanced_error - report.baseline.balanced_error
    low, high = np.quantile(change, [0.025, 0.975])
    assert report.intervals.ci("balanced_error", "change") == pytest.approx(
        (estimate + factor * (low - estimate), estimate + factor * (high - estimate)))
    data = report.to_dict()
    assert len(data["per_class_error_after_ci"]) == 6
    assert set(data["groups_before_ci"]) == {"many", "medium", "few"}
    # where tau falls when refitted on the same replicates: the refit bootstrap's interval
    fit, intervals = intervals_of(logits, labels, counts)
    refit = bootstrap_fit(intervals, fit.tau, (0.0, 4.0), replicates=150, seed=2)
    assert data["tau_ci"] == pytest.approx(list(refit.tau_ci))
    plain = lacal.report(logits, labels, tau=1.0, priors=counts, device="cpu").to_dict()
    assert set(data) - set(plain) == {"bootstrap", "tau_ci", "balanced_error_before_ci", "balanced_error_after_ci",
                                      "balanced_error_change_ci", "groups_before_ci", "groups_after_ci",
                                      "per_class_error_before_ci", "per_class_error_after_ci"}


# ------------------------------------------------------------------------------------- cross-fitting and one-SE


def test_cross_fit_refits_on_the_other_folds():
    logits, labels, counts = long_tail_problem(num_samples=200, num_classes=5, seed=6)
    fit, intervals = intervals_of(logits, labels, counts)
    crossed = cross_fit(intervals, (0.0, 4.0), folds=4, seed=3)
    # rebuild the folds: every class is dealt out over every fold
    from lacal.methods.resampling import Slots, class_order

    order = class_order(labels)
    fold = np.empty(labels.size, dtype=np.int64)
    fold[order] = Slots(np.bincount(labels), True).folds(3, 4, labels[order])
    correct = np.zeros(5)
    for k in range(4):
        assert set(labels[fold == k]) == set(range(5))
        train = fold != k
        refit = fit_tau(logits[train], labels[train], counts)
        assert crossed.taus[k] == refit.tau
        held = fold == k
        predicted = (logits[held] - refit.tau * np.log(counts / counts.sum())).argmax(1)
        correct += np.bincount(labels[held][predicted == labels[held]], minlength=5)
    assert crossed.balanced_error == pytest.approx(1 - np.mean(correct / np.bincount(labels)))


def test_one_se_rule():
    logits, labels, counts = long_tail_problem(num_samples=150, num_classes=6, seed=12, dtype=np.float64)
    fit, intervals = intervals_of(logits, labels, counts)
    best = fit.after.balanced_error
    tau, run = one_se_tau(intervals, (0.0, 4.0), 0.0)
    assert reference.metric_at(logits, labels, counts, tau) == pytest.approx(best, abs=1e-12)
    for se in (0.01, 0.03, 0.2):
        tau, run = one_se_tau(intervals, (0.0, 4.0), se)
        assert reference.metric_at(logits, labels, counts, tau) <= best + se + 1e-12
        if tau != 1.0:  # nothing between tau and 1 qualifies
            for t in np.linspace(min(tau, 1.0), max(tau, 1.0), 41)[1:-1]:
                if not run[0] < t < run[1]:
                    assert reference.metric_at(logits, labels, counts, t) > best + se - 1e-12
    assert one_se_tau(intervals, (0.0, 4.0), 1.0)[0] == 1.0


def test_fit_with_intervals_and_rules():
    logits, labels, counts = long_tail_problem(num_samples=400, num_classes=8, seed=1)
    plain = lacal.fit(logits, labels, counts, device="cpu")
    result = lacal.fit(logits, labels, counts, bootstrap=100, folds=5, device="cpu")
    data = result.to_dict()
    assert {k: data[k] for k in plain.to_dict()} == plain.to_dict()
    assert data["tau_ci"][0] <= result.tau <= data["tau_ci"][1]
    assert data["balanced_error_cross_fitted"] == result.intervals.cross_fit.balanced_error
    one_se = lacal.fit(logits, labels, counts, bootstrap=100, tau_rule="one-se", device="cpu")
    assert one_se.intervals.tau_min == plain.tau
    # its replicates are those of a full bootstrap at the rule's tau (refits and the errors at that tau)
    assert one_se.tau != plain.tau
    fitted = fit_tau(logits, labels, counts, keep_intervals=True)
    intervals = sample_intervals(source_from_array(logits), fitted.intervals, np.log(as_priors_array(counts)),
                                 [0.0, 1.0, 4.0])
    full = bootstrap_fit(intervals, one_se.tau, (0.0, 4.0), replicates=100, seed=0, train_counts=counts)
    for name in ("taus", "before", "at_fitted", "refit", "original_at_refit", "correct_after"):
        np.testing.assert_array_equal(getattr(one_se.intervals.bootstrap, name), getattr(full, name))
    assert one_se.intervals.bootstrap.tau == one_se.tau
    assert one_se.calibration.tau == one_se.tau
    # the calibration file says which rule chose tau (its tau_interval is then the rule's run), and the minimiser
    assert one_se.calibration.validation["tau_rule"] == "one-se"
    assert one_se.calibration.validation["tau_min"] == plain.tau
    assert "tau_rule" not in result.calibration.validation and "tau_rule" not in plain.calibration.validation
    assert one_se.tau_fit.after.balanced_error <= plain.tau_fit.after.balanced_error + \
        one_se.intervals.bootstrap.standard_error + 1e-9


def test_one_se_run_is_not_called_an_interval_of_equal_error(tmp_path):
    """Under the one-SE rule the interval beside tau is the run of taus within one standard error of the minimum,
    whose errors differ: fit-tau must not print it as "the same balanced error for every tau in (a, b)"."""
    logits, labels, counts = long_tail_problem(num_samples=400, num_classes=8, seed=1)
    np.save(tmp_path / "logits.npy", logits)
    np.save(tmp_path / "labels.npy", labels)
    np.save(tmp_path / "counts.npy", counts)
    args = ["fit-tau", tmp_path / "logits.npy", tmp_path / "labels.npy", "--priors", tmp_path / "counts.npy",
            "--device", "cpu", "--bootstrap", "100", "--tau-rule", "one-se"]
    table = runner.invoke(app, [str(a) for a in args], env={"COLUMNS": "200"})
    assert table.exit_code == 0, table.output
    data = json.loads(runner.invoke(app, [str(a) for a in args + ["--json"]]).stdout)
    low, high = data["tau_interval"]
    errors = {reference.metric_at(logits, labels, counts, t) for t in np.linspace(low, high, 23)[1:-1]}
    assert data["tau"] != data["tau_min"] and len(errors) > 1  # the case under test
    assert "the same balanced error for every tau" not in table.stdout
    assert f"every tau in ({low:.4f}, {high:.4f}) is within one bootstrap standard error" in table.stdout


def test_few_samples_and_unidentified_tau_are_warned():
    logits, labels, counts = long_tail_problem(num_samples=24, num_classes=8, seed=1, margin=0.2)
    result = lacal.fit(logits, labels, counts, bootstrap=200, device="cpu")
    text = " ".join(result.warnings)
    assert "fewer than 5 validation samples" in text and "points wide" in text
    assert "does not pin tau down" in text


# ---------------------------------------------------------------------------------------------------- coverage


def test_coverage_on_a_small_simulation():
    """A seeded miniature of benchmarks/sim_intervals.py: the population balanced error at the fitted tau falls in
    the printed 95% interval in most of 40 validation draws (the docs publish the full study)."""
    rng = np.random.default_rng(0)
    classes, per_class = 12, 10
    counts = np.array([max(5, int(500 * 0.01 ** (i / (classes - 1)))) for i in range(classes)])
    log_priors = np.log(counts / counts.sum())

    def draw(n):
        y = np.repeat(np.arange(classes), n)
        x = rng.normal(size=(y.size, classes))
        x[np.arange(y.size), y] += 1.5
        return (x + log_priors).astype(np.float32), y

    big_x, big_y = draw(4000)
    _, population = intervals_of(big_x, big_y, counts)

    def true_error(tau):
        right = (population.lo < tau) & (tau < population.hi)
        return balanced(population.labels, right, np.ones(right.size), classes)

    covered, naive = [], []
    for d in range(40):
        x, y = draw(per_class)
        fit, intervals = intervals_of(x, y, counts)
        boot = bootstrap_fit(intervals, fit.tau, (0.0, 4.0), replicates=200, seed=d)
        truth = true_error(fit.tau)
        low, high = boot.ci("balanced_error", "after")
        covered.append(low <= truth <= high)
        naive_low, naive_high = percentile_interval(boot.at_fitted[:, 0], 0.95)
        naive.append(naive_low <= truth <= naive_high)
    assert np.mean(covered) >= 0.85
    assert np.mean(covered) >= np.mean(naive)


# ----------------------------------------------------------------------------------------------------- options


@pytest.mark.parametrize("options,flag,text", [
    (["--bootstrap", "0"], "--bootstrap", "at least 1"),
    (["--bootstrap", "10", "--level", "1.5"], "--level", "strictly between 0 and 1"),
    (["--bootstrap", "10", "--level", "0"], "--level", "strictly between 0 and 1"),
    (["--folds", "1"], "--folds", "at least 2 folds"),
    (["--folds", "500"], "--folds", "more than the smallest class"),
    (["--tau-rule", "median"], "--tau-rule", "unknown tau rule"),
    (["--bootstrap", "10", "--metric", "worst-class-error"], "--bootstrap", "exact balanced-error search"),
    (["--folds", "3", "--metric", "worst-class-error"], "--folds", "exact balanced-error search"),
    (["--tau-rule", "one-se", "--search", "grid"], "--tau-rule", "exact balanced-error search"),
    (["--bootstrap", "10", "--seed", "-1"], "--seed", "at least 0"),
])
def test_bad_options_are_refused_in_one_line(files, options, flag, text):
    args = ["fit-tau", files / "val_logits.npy", files / "val_labels.npy", "--train-labels",
            files / "train_labels.txt", "--device", "cpu", "--out", files / "cal.json", *options]
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == OptionError.exit_code
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"lacal: error: {flag}: ") and text in lines[0]
    assert not (files / "cal.json").exists()


@pytest.mark.parametrize("command", ["fit-tau", "report"])
@pytest.mark.parametrize("options,flag", [(["--level", "1.5"], "--level"), (["--level", "nan"], "--level"),
                                          (["--seed", "-1"], "--seed")])
def test_bad_level_or_seed_is_refused_even_without_bootstrap(files, command, options, flag):
    """A typo in --level or --seed is not silently ignored because --bootstrap was left out."""
    inputs = ["--train-labels", files / "train_labels.txt"]
    if command == "report":
        assert run("fit-tau", files / "val_logits.npy", files / "val_labels.npy", *inputs, "--device", "cpu",
                   "--out", files / "cal.json").exit_code == 0
        inputs = ["--calibration", files / "cal.json"]
    line = one_clean_line(run(command, files / "val_logits.npy", files / "val_labels.npy", *inputs, "--device", "cpu",
                              *options), OptionError.exit_code)
    assert line.startswith(f"lacal: error: {flag}: ")


def test_cli_prints_and_writes_intervals(files):
    args = ["fit-tau", files / "val_logits.npy", files / "val_labels.npy", "--train-labels",
            files / "train_labels.txt", "--device", "cpu", "--bootstrap", "200", "--folds", "3", "--seed", "4"]
    table = runner.invoke(app, [str(a) for a in args], env={"COLUMNS": "160"})
    assert table.exit_code == 0, table.output
    assert "95% intervals: 200 stratified bootstrap replicates, seed 4" in table.stdout
    assert "cross-fitted (3 folds" in table.stdout
    data = json.loads(runner.invoke(app, [str(a) for a in args + ["--json"]]).stdout)
    after = data["balanced_error_after_ci"]
    assert f"{100 * data['balanced_error_after']:.2f}% ({100 * after[0]:.1f}-{100 * after[1]:.1f})" in table.stdout
    assert data["bootstrap"]["replicates"] == 200 and len(data["per_class_error_after_ci"]) == data["num_classes"]
    report = runner.invoke(app, [str(a) for a in ["report", files / "val_logits.npy", files / "val_labels.npy",
                                                  "--train-labels", files / "train_labels.txt", "--tau", "1",
                                                  "--device", "cpu", "--bootstrap", "100", "--json"]])
    assert report.exit_code == 0, report.output
    assert json.loads(report.stdout)["balanced_error_change_ci"][0] < 0


def test_curve_band_is_the_replicates_pointwise_percentiles():
    from lacal.methods.bootstrap import curve_band

    logits, labels, counts = long_tail_problem(num_samples=240, num_classes=6, seed=9)
    _, intervals = intervals_of(logits, labels, counts)
    taus = np.array([0.25, 0.9, 1.3, 2.7])
    low, high = curve_band(intervals, taus, (0.0, 4.0), replicates=80, seed=4)
    weights = replicate_counts(labels, 6, 4, range(80)).astype(np.float64)
    for k, tau in enumerate(taus):
        right = (intervals.lo < tau) & (tau < intervals.hi)
        errors = [balanced(labels, right, w, 6) for w in weights]
        assert (low[k], high[k]) == pytest.approx(tuple(np.quantile(errors, [0.025, 0.975])))


def test_report_plot_with_bootstrap_band(tmp_path):
    pytest.importorskip("matplotlib")
    logits, labels, counts = long_tail_problem(num_samples=200, num_classes=5, seed=2)
    report = lacal.report(logits, labels, tau=1.0, priors=counts, bootstrap=40, plot=tmp_path / "r.png",
                          device="cpu")
    assert report.plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("with_tau", [True, False], ids=["adjusted", "raw logits"])
def test_a_report_with_the_bootstrap_reports_the_same_numbers(with_tau):
    """The bootstrap's per-sample hits come from the report's own pass (no second pass): the evaluations they give
    equal those of a report without the bootstrap, key for key."""
    logits, labels, counts = long_tail_problem(num_samples=500, num_classes=6, seed=11)
    options = dict(tau=1.0, priors=counts) if with_tau else dict(priors=counts)
    plain = lacal.report(logits, labels, device="cpu", **options).to_dict()
    booted = lacal.report(logits, labels, device="cpu", bootstrap=30, seed=2, **options)
    assert booted.intervals is not None
    assert {key: value for key, value in booted.to_dict().items() if key in plain} == plain
