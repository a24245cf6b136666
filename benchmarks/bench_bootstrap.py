"""Benchmark of lacal's bootstrap against one exact fit, on the ImageNet-LT validation shape.

    python benchmarks/bench_bootstrap.py                      # 20,000 x 1,000, 1,000 replicates
    python benchmarks/bench_bootstrap.py --replicates 200 --repeats 3

It builds long-tailed logits (class evidence plus log-prior, like an ERM model's; 20 validation samples a class, as
ImageNet-LT's validation split has) and times, in one process and one run:
  (a) one exact fit: lacal.methods.fit_tau on the logits array, as a user calls it (the interval pass and the search);
  (b) the bootstrap: every sample's interval gathered once, then --replicates stratified replicates, each an exact
      refit of tau with the errors at tau = 0, at the fitted tau and at its own tau (methods.bootstrap);
  (c) the K-fold cross-fit (5 folds).
(b) reads the logits through the source the workflow already holds. (a) and (b) alternate --repeats times. It prints
medians and the ratio b/a (the target: at most 5), and the peak resident memory of (a) and of (a) + (b) in fresh
processes (the bootstrap works on blocks of replicates, so its memory does not grow with --replicates).
Results go to benchmarks/results/.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent


def problem(samples: int, classes: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    counts = np.array([max(5, int(1280 * (5 / 1280) ** (i / (classes - 1)))) for i in range(classes)])
    labels = np.arange(samples) % classes
    rng.shuffle(labels)
    logits = rng.normal(size=(samples, classes)).astype(np.float32)
    logits[np.arange(samples), labels] += 3.0
    logits += np.log(counts / counts.sum()).astype(np.float32)
    return logits, labels, counts


def timed(function, repeats: int):
    times, value = [], None
    for _ in range(repeats):
        started = time.perf_counter()
        value = function()
        times.append(time.perf_counter() - started)
    return statistics.median(times), value


def peak_memory(samples: int, classes: int, replicates: int) -> float:
    """Peak resident MB of a fresh process that fits (and bootstraps, when replicates > 0)."""
    code = (f"import resource, sys; sys.path.insert(0, {str(ROOT)!r}); sys.path.insert(0, {str(ROOT / 'benchmarks')!r})\n"
            "from bench_bootstrap import problem, run_once\n"
            f"logits, labels, counts = problem({samples}, {classes})\n"
            f"run_once(logits, labels, counts, {replicates})\n"
            "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def run_once(logits, labels, counts, replicates: int):
    from lacal.core.offsets import as_priors_array
    from lacal.data.readers import source_from_array
    from lacal.methods import fit_tau
    from lacal.methods.bootstrap import bootstrap_fit, sample_intervals

    fit = fit_tau(logits, labels, counts, keep_intervals=True)
    if replicates:
        intervals = sample_intervals(source_from_array(logits), fit.intervals, np.log(as_priors_array(counts)),
                                     [0.0, 1.0, 4.0])
        bootstrap_fit(intervals, fit.tau, (0.0, 4.0), replicates, seed=0, train_counts=counts)
    return fit


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=20_000)
    parser.add_argument("--classes", type=int, default=1_000)
    parser.add_argument("--replicates", type=int, default=1_000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "cpu-2core-bootstrap")
    args = parser.parse_args()
    import torch

    from lacal.core.offsets import as_priors_array
    from lacal.data.readers import source_from_array
    from lacal.methods import fit_tau
    from lacal.methods.bootstrap import bootstrap_fit, cross_fit, sample_intervals

    logits, labels, counts = problem(args.samples, args.classes)
    # (a) is what a user calls, on their array; (b) reads the logits through the source the workflow already holds
    # (lacal.fit wraps the array once for both), so it does not pay for wrapping them a second time
    source, log_priors = source_from_array(logits), np.log(as_priors_array(counts))
    fit_tau(logits, labels, counts)  # warm up

    def bootstrap(fit):
        intervals = sample_intervals(source, fit.intervals, log_priors, [0.0, 1.0, 4.0])
        return intervals, bootstrap_fit(intervals, fit.tau, (0.0, 4.0), args.replicates, seed=0,
                                        train_counts=counts)

    # fit and bootstrap alternate, so that a change of load on a shared machine touches both alike
    fit_times, boot_times = [], []
    for _ in range(args.repeats):
        one, fit = timed(lambda: fit_tau(logits, labels, counts, keep_intervals=True), 1)
        other, (intervals, boot) = timed(lambda: bootstrap(fit), 1)
        fit_times.append(one)
        boot_times.append(other)
    fit_time, boot_time = statistics.median(fit_times), statistics.median(boot_times)
    ratios = [b / a for a, b in zip(fit_times, boot_times)]
    cross_time, crossed = timed(lambda: cross_fit(intervals, (0.0, 4.0), 5, 0), args.repeats)
    memory_fit = peak_memory(args.samples, args.classes, 0)
    memory_boot = peak_memory(args.samples, args.classes, args.replicates)
    machine = {"python": platform.python_version(), "torch": torch.__version__, "numpy": np.__version__,
               "cpu": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
               "torch_threads": torch.get_num_threads(), "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS")}
    result = {"machine": machine, "samples": args.samples, "classes": args.classes, "replicates": args.replicates,
              "fit_seconds": fit_time, "bootstrap_seconds": boot_time, "ratio": boot_time / fit_time,
              "ratios_of_pairs": ratios, "fit_times": fit_times, "bootstrap_times": boot_times,
              "per_replicate_ms": 1000 * boot_time / args.replicates, "cross_fit_seconds": cross_time,
              "peak_mb_fit": memory_fit, "peak_mb_fit_and_bootstrap": memory_boot,
              "tau": fit.tau, "tau_ci": boot.tau_ci, "balanced_error_after": fit.after.balanced_error,
              "balanced_error_after_ci": boot.ci("balanced_error", "after"),
              "balanced_error_cross_fitted": crossed.balanced_error}
    lines = [f"machine: {machine}", "",
             f"{args.samples} x {args.classes} float32 (ImageNet-LT validation shape), {args.replicates} replicates",
             f"  (a) one exact fit (fit_tau)               {1000 * fit_time:9.1f} ms  (median of {args.repeats})",
             f"  (b) bootstrap, {args.replicates} replicates          {1000 * boot_time:9.1f} ms  b/a = "
             f"{boot_time / fit_time:.1f}  ({1000 * boot_time / args.replicates:.2f} ms a replicate; b/a of the "
             f"alternating pairs {min(ratios):.1f} to {max(ratios):.1f})",
             f"  (c) 5-fold cross-fit                      {1000 * cross_time:9.1f} ms",
             f"  peak resident memory, fresh process: fit {memory_fit:.0f} MB, fit + bootstrap {memory_boot:.0f} MB",
             f"  tau {fit.tau:.4f} ({boot.tau_ci[0]:.4f}-{boot.tau_ci[1]:.4f}); balanced error "
             f"{100 * fit.after.balanced_error:.2f}% in-sample, {100 * crossed.balanced_error:.2f}% cross-fitted"]
    text = "\n".join(lines)
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".txt").write_text(text + "\n")
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=1, default=str) + "\n")


if __name__ == "__main__":
    main()
