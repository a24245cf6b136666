"""Simulation study of lacal's bootstrap intervals, cross-fitted estimate and tau rules on small validation sets.

    python benchmarks/sim_intervals.py                           # 200 draws at 3, 10 and 20 samples a class
    python benchmarks/sim_intervals.py --draws 40 --replicates 300 --sizes 10   # quick

The generative model is known, so every number has a true value: C classes with long-tailed training counts (500 down
to 5, so many-, medium- and few-shot groups all exist); a sample of class y has logits N(0, 1) + margin * [j = y] +
log pi_j (the evidence of an ERM model plus its prior, as in tests/conftest.py). A "population" of --population
samples a class stands in for the true distribution: the population balanced error of any tau is computed exactly
from it (each sample's correct-for-tau interval, as lacal computes them). For each validation draw of n samples a
class it runs lacal's fit, bootstrap (--replicates) and cross-fit (5 folds, or n when n < 5), then records whether
each printed interval holds the population value of what it estimates:

  tau                       the population's own minimiser of the balanced error
  balanced error before     the population balanced error at tau = 0
  balanced error after      the population balanced error at the fitted tau (what to expect on new data)
  change                    after - before, both in the population
  worst-class before/after  the population worst-class error at tau = 0 / the fitted tau
  group before/after        the population many/medium/few-shot error at tau = 0 / the fitted tau
  per-class before/after    the population per-class error (coverage averaged over classes)

For the errors at the fitted tau it measures two intervals: the plain percentile interval of the replicates' error
at the fitted tau ("naive") and the same shifted by the bootstrap estimate of optimism ("corrected", what lacal
prints). It also records the bias of the in-sample and the cross-fitted estimates of the error at the fitted tau,
and the population error of the tau chosen by each rule (min, one-se). Results go to benchmarks/results/.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("OMP_NUM_THREADS", "1")


def problem(classes: int, margin: float, seed: int):
    counts = np.array([max(5, int(500 * 0.01 ** (i / (classes - 1)))) for i in range(classes)])
    return counts, np.log(counts / counts.sum())


def draw(n_per_class: int, classes: int, margin: float, log_priors, rng, prior_scale: float = 1.0):
    labels = np.repeat(np.arange(classes), n_per_class)
    logits = rng.normal(size=(labels.size, classes))
    logits[np.arange(labels.size), labels] += margin
    logits += prior_scale * log_priors[None, :]
    return logits.astype(np.float32), labels


def intervals_of(logits, labels, counts, points=(0.0, 1.0, 4.0)):
    from lacal.core.offsets import as_priors_array
    from lacal.data.readers import source_from_array
    from lacal.methods import fit_tau
    from lacal.methods.bootstrap import sample_intervals

    fit = fit_tau(logits, labels, counts, keep_intervals=True)
    intervals = sample_intervals(source_from_array(logits), fit.intervals, np.log(as_priors_array(counts)),
                                 points)
    return fit, intervals


class Population:
    """The true per-class errors of any tau, from a large draw's per-sample intervals."""

    def __init__(self, classes, margin, log_priors, counts, per_class, seed, prior_scale=1.0):
        rng = np.random.default_rng(seed)
        los, his, labels = [], [], []
        chunk = max(1, 200_000 // classes)
        done = 0
        while done < per_class:
            k = min(chunk, per_class - done)
            logits, y = draw(k, classes, margin, log_priors, rng, prior_scale)
            _, iv = intervals_of(logits, y, counts, ())
            los.append(iv.lo), his.append(iv.hi), labels.append(iv.labels)
            done += k
        self.lo, self.hi, self.labels = np.concatenate(los), np.concatenate(his), np.concatenate(labels)
        self.classes = classes
        self.support = np.bincount(self.labels, minlength=classes)

    def class_errors(self, tau: float) -> np.ndarray:
        right = (self.lo < tau) & (tau < self.hi)
        return 1.0 - np.bincount(self.labels[right], minlength=self.classes) / self.support

    def minimiser(self, tau_range=(0.0, 4.0)) -> float:
        from lacal.methods.bootstrap import SampleIntervals, Sweep, class_weights
        import torch

        iv = SampleIntervals(self.lo, self.hi, self.labels, {}, self.classes).in_class_order()
        sweep = Sweep(iv, tau_range)
        weights, exact, _ = class_weights(iv.support)
        taus, _, _ = sweep.fit(torch.from_numpy(weights)[torch.from_numpy(iv.labels)][:, None].double(), exact)
        return float(taus[0])


def inside(interval, value) -> bool:
    return interval is not None and interval[0] <= value <= interval[1]


def study(n_per_class, draws, replicates, classes, margin, population, counts, log_priors, seed, level,
          prior_scale=1.0):
    from lacal.core.metrics import GROUPS, shot_groups
    from lacal.methods.bootstrap import bootstrap_fit, cross_fit, one_se_tau
    from lacal.methods.resampling import percentile_interval

    groups = shot_groups(counts)
    true_tau = population.minimiser()
    true_before = population.class_errors(0.0)
    rng = np.random.default_rng([seed, n_per_class])
    hits: dict[str, list] = {}
    record = lambda key, ok: hits.setdefault(key, []).append(bool(ok))  # noqa: E731
    bias_in, bias_cross, err_min, err_one_se, widths = [], [], [], [], []
    folds = min(5, n_per_class)
    for d in range(draws):
        logits, labels = draw(n_per_class, classes, margin, log_priors, rng, prior_scale)
        fit, iv = intervals_of(logits, labels, counts)
        boot = bootstrap_fit(iv, fit.tau, (0.0, 4.0), replicates, seed=d, level=level, train_counts=counts)
        after_true = population.class_errors(fit.tau)
        record("tau", inside(boot.tau_ci, true_tau))
        widths.append(boot.tau_ci[1] - boot.tau_ci[0])
        truth = {"balanced_error": (true_before.mean(), after_true.mean()),
                 "worst_class_error": (true_before.max(), after_true.max())}
        for g in GROUPS:
            truth[g] = (true_before[groups == g].mean(), after_true[groups == g].mean())
        for k, (name, (before, after)) in enumerate(truth.items()):
            record(f"{name} before", inside(boot.ci(name, "before"), before))
            record(f"{name} after (corrected)", inside(boot.ci(name, "after"), after))
            record(f"{name} after (naive)", inside(percentile_interval(boot.at_fitted[:, k], level), after))
            if name != "worst_class_error":
                record(f"{name} before (not rescaled)", inside(boot.ci(name, "before", False), before))
                record(f"{name} after (not rescaled)", inside(boot.ci(name, "after", False), after))
            if name in GROUPS:
                record(f"{name} before (shipped: union)", inside(boot.group_ci(name, "before"), before))
            if name != "worst_class_error":
                record(f"{name} before (Agresti-Caffo)", inside(boot.wald(name, "before"), before))
                record(f"{name} after (Agresti-Caffo)", inside(boot.wald(name, "after"), after))
        record("change (corrected)", inside(boot.ci("balanced_error", "change"), truth["balanced_error"][1]
                                            - truth["balanced_error"][0]))
        record("change (not rescaled)", inside(boot.ci("balanced_error", "change", False),
                                               truth["balanced_error"][1] - truth["balanced_error"][0]))
        record("change (naive)", inside(percentile_interval(boot.at_fitted[:, 0] - boot.before[:, 0], level),
                                        truth["balanced_error"][1] - truth["balanced_error"][0]))
        for when, true_errors in (("before", true_before), ("after", after_true)):
            wilson = boot.per_class_ci(when)
            covered = (wilson[:, 0] <= true_errors) & (true_errors <= wilson[:, 1])
            hits.setdefault(f"per-class {when} (Wilson)", []).extend(covered.tolist())
        bias_in.append(fit.after.balanced_error - after_true.mean())
        bias_cross.append(cross_fit(iv, (0.0, 4.0), folds, seed=d).balanced_error - after_true.mean())
        tau_se, _ = one_se_tau(iv, (0.0, 4.0), boot.standard_error)
        err_min.append(after_true.mean())
        err_one_se.append(population.class_errors(tau_se).mean())
    coverage = {k: {"coverage": float(np.mean(v)), "trials": len(v)} for k, v in hits.items()}
    return {"prior_scale": prior_scale, "samples_per_class": n_per_class, "draws": draws, "replicates": replicates, "folds": folds,
            "true_tau": true_tau, "coverage": coverage, "median_tau_interval_width": float(np.median(widths)),
            "bias_in_sample": float(np.mean(bias_in)), "bias_cross_fitted": float(np.mean(bias_cross)),
            "spread_in_sample": float(np.std(bias_in)), "spread_cross_fitted": float(np.std(bias_cross)),
            "test_error_min_rule": float(np.mean(err_min)), "test_error_one_se_rule": float(np.mean(err_one_se)),
            "one_se_minus_min": float(np.mean(np.array(err_one_se) - np.array(err_min))),
            "one_se_minus_min_se": float(np.std(np.array(err_one_se) - np.array(err_min)) / np.sqrt(draws)),
            "population_error_at_true_tau": float(population.class_errors(true_tau).mean())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[3, 10, 20], help="validation samples a class")
    parser.add_argument("--draws", type=int, default=200)
    parser.add_argument("--replicates", type=int, default=1000)
    parser.add_argument("--classes", type=int, default=50)
    parser.add_argument("--margin", type=float, default=2.0)
    parser.add_argument("--prior-scales", type=float, nargs="+", default=[1.0, 1.6],
                        help="the logits hold scale * log pi: at 1 the best tau is near 1 (the paper's Fisher-"
                             "consistent case), at 1.6 it is near 1.6")
    parser.add_argument("--population", type=int, default=20_000, help="samples a class of the population")
    parser.add_argument("--level", type=float, default=0.95)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "sim_intervals")
    args = parser.parse_args()
    started = time.perf_counter()
    counts, log_priors = problem(args.classes, args.margin, args.seed)
    results = []
    for scale in args.prior_scales:
        population = Population(args.classes, args.margin, log_priors, counts, args.population, args.seed + 1000,
                                scale)
        results += [study(n, args.draws, args.replicates, args.classes, args.margin, population, counts,
                          log_priors, args.seed, args.level, scale) for n in args.sizes]
    meta = {"machine": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
            "seconds": time.perf_counter() - started, **{k: v for k, v in vars(args).items() if k != "out"}}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps({"meta": meta, "results": results}, indent=1,
                                                        default=str))
    lines = [f"simulation: {args.classes} classes, train counts 500..5, margin {args.margin}, population "
             f"{args.population} a class, prior scales {args.prior_scales}, {args.draws} draws, {args.replicates} replicates, level {args.level}, "
             f"{meta['seconds']:.0f} s on {meta['cpus']} CPUs", ""]
    keys = list(results[0]["coverage"])
    lines.append("prior scale".ljust(40) + "".join(f"{r['prior_scale']:<10g}" for r in results))
    lines.append("coverage (%) / samples a class".ljust(40) + "".join(f"n={r['samples_per_class']:<8}"
                                                                       for r in results))
    for key in keys:
        lines.append(key.ljust(40) + "".join(f"{100 * r['coverage'][key]['coverage']:<10.1f}" for r in results))
    lines.append("")
    for key in ("median_tau_interval_width", "bias_in_sample", "spread_in_sample", "bias_cross_fitted",
                "spread_cross_fitted", "test_error_min_rule", "test_error_one_se_rule", "one_se_minus_min",
                "one_se_minus_min_se", "population_error_at_true_tau", "true_tau"):
        lines.append(key.ljust(40) + "".join(f"{r[key]:<10.4f}" for r in results))
    text = "\n".join(lines)
    args.out.with_suffix(".txt").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
