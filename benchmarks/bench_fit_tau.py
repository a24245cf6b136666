"""Benchmark of lacal's tau search against the cost of reading the logits once, and against what users write today.

    python benchmarks/bench_fit_tau.py                  # both shapes, CPU or the GPU when there is one
    python benchmarks/bench_fit_tau.py --shapes imagenet-lt --device cpu --repeats 5
    python benchmarks/bench_fit_tau.py --budget-check 256MB

For each shape it builds long-tailed logits (class evidence plus log-prior, like an ERM model's) and times, in one run:
  (a) one numpy.argmax pass over the logits: the floor;
  (b) lacal's exact search (lacal.methods.fit_tau);
  (c) lacal's grid of 301 tau values (lacal.methods.fit_tau(search="grid", grid_size=301));
  (d) what a user writes today: scikit-learn's balanced_accuracy_score in a Python loop over the same 301 values.
It prints medians, the ratios b/a, c/a, d/b and d/c, the peak resident memory each adds to the loaded logits
(measured in a fresh process per method), and checks that the exact
tau's balanced error is at most the grid's. --budget-check SIZE runs `lacal fit-tau` (and `lacal apply`) on a .npy
file four times larger than SIZE with --memory-budget SIZE in a child process and reports its peak resident memory.
Needs scikit-learn for (d) (`pip install scikit-learn`, or `pip install -e '.[bench]'`).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

SHAPES = {
    # name: (samples, classes, largest training class, smallest training class)
    "imagenet-lt": (50_000, 1_000, 1_280, 5),
    "inaturalist": (24_426, 8_142, 1_000, 2),
    "imagenet-21k": (20_000, 21_841, 1_300, 2),  # 1.75 GB of float32 logits; fewer repeats (--large-repeats)
}
LARGE = {"imagenet-21k"}
GRID = 301
TAU_RANGE = (0.0, 4.0)


def long_tail_counts(classes: int, largest: int, smallest: int) -> np.ndarray:
    ratio = smallest / largest
    return np.array([max(smallest, int(largest * ratio ** (i / (classes - 1)))) for i in range(classes)])


def make_logits(samples: int, classes: int, counts: np.ndarray, seed: int = 0):
    """Logits of an ERM-like model: evidence for the true class plus log pi, noise elsewhere; balanced labels."""
    rng = np.random.default_rng(seed)
    labels = np.arange(samples) % classes
    rng.shuffle(labels)
    log_priors = np.log(counts / counts.sum()).astype(np.float32)
    logits = np.empty((samples, classes), dtype=np.float32)
    step = max(1, (64 << 20) // (4 * classes))
    for start in range(0, samples, step):
        stop = min(start + step, samples)
        block = rng.standard_normal((stop - start, classes), dtype=np.float32) * 1.5
        block[np.arange(stop - start), labels[start:stop]] += 5.0
        logits[start:stop] = block + log_priors
    return logits, labels, counts


def timed(function, repeats: int, sync=lambda: None):
    times, result = [], None
    for _ in range(repeats):
        sync()
        start = time.perf_counter()
        result = function()
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result, times


def child_peak_mb(method: str, workdir: Path, device: str) -> tuple[float, float]:
    """Peak resident memory a method adds on top of the loaded logits, and the process's whole peak (both MB),
    measured in a fresh process."""
    command = [sys.executable, __file__, "--child", method, "--workdir", str(workdir), "--device", device]
    result = subprocess.run(command, capture_output=True, text=True, check=True)
    added, total = result.stdout.strip().splitlines()[-1].split()
    return float(added), float(total)


@contextlib.contextmanager
def busy_machine(enabled: bool = True):
    """A competing process for the duration: one Python busy loop, like `stress --cpu 1` (started and stopped
    here)."""
    if not enabled:
        yield
        return
    loop = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.5)  # let it get going
        yield
    finally:
        loop.kill()
        loop.wait()


def timed_with_threads(function, threads: int, repeats: int):
    """timed(function) with torch's thread count set to `threads` (restored afterwards)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return timed(function, repeats)[0]
    finally:
        torch.set_num_threads(before)


ROOT = Path(__file__).resolve().parent.parent


def fused_timings(run, repeats: int, busy: bool) -> dict:
    """The exact search with the compiled interval kernel (LACAL_COMPILE=1), idle and busy, after one call that
    compiles it; {} when it cannot be compiled here."""
    import torch

    import lacal.engine.fused

    before = os.environ.get(lacal.engine.fused.ENVIRONMENT)
    os.environ[lacal.engine.fused.ENVIRONMENT] = "1"
    try:
        if lacal.engine.fused.fused_kernel(torch.float32, "cpu") is None:
            return {}
        run()
        times = {"idle": timed(run, repeats)[0]}
        if busy:
            with busy_machine():
                times["busy"] = timed(run, repeats)[0]
        return times
    finally:
        if before is None:
            os.environ.pop(lacal.engine.fused.ENVIRONMENT)
        else:
            os.environ[lacal.engine.fused.ENVIRONMENT] = before


def process_seconds(command: list[str], env: dict) -> float:
    start = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True, env=env, cwd=ROOT)
    return time.perf_counter() - start


def whole_process(workdir: Path, repeats: int) -> dict:
    """Wall time of `lacal fit-tau` on the .npy files against the floor process (import torch, load the logits,
    one numpy.argmax), alternating the two, idle and with a busy process beside them; medians."""
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    floor = [sys.executable, "-c", f"import torch, numpy; numpy.load({str(workdir / 'logits.npy')!r}).argmax(1)"]
    fit = [sys.executable, "-m", "lacal", "fit-tau", str(workdir / "logits.npy"), str(workdir / "labels.npy"),
           "--priors", str(workdir / "counts.npy"), "--json", "--quiet"]
    result = {}
    for name, busy in (("idle", False), ("busy", True)):
        with busy_machine(busy):
            times = {"floor": [], "fit_tau": []}
            for _ in range(repeats):
                times["floor"].append(process_seconds(floor, env))
                times["fit_tau"].append(process_seconds(fit, env))
        floor_s, fit_s = statistics.median(times["floor"]), statistics.median(times["fit_tau"])
        result[name] = {"floor_s": floor_s, "fit_tau_s": fit_s, "ratio": fit_s / floor_s, "runs": times}
    peak, _ = _child_peak(f"import sys, runpy; sys.argv = ['lacal'] + {fit[3:]!r}; "
                          "runpy.run_module('lacal', run_name='__main__')")
    result["fit_tau_peak_rss_mb"] = peak
    return result


def _status_mb(field: str) -> float:
    """VmRSS (resident now) or VmHWM (peak resident) of this process, in MB. Unlike ru_maxrss, VmHWM starts afresh
    at exec, so a child does not inherit the parent's peak."""
    with open("/proc/self/status") as handle:
        line = next(line for line in handle if line.startswith(field + ":"))
    return int(line.split()[1]) / 1024


def run_child(method: str, workdir: Path, device: str) -> None:
    import lacal

    logits = np.load(workdir / "logits.npy")
    labels = np.load(workdir / "labels.npy")
    counts = np.load(workdir / "counts.npy")
    log_priors = np.log(counts / counts.sum())
    lacal.methods.fit_tau(logits[:1000], labels[:1000], counts, device=device)  # imports and warm-up, as in the timings
    np.argmax(logits, axis=1)
    before = _status_mb("VmRSS")
    with open("/proc/self/clear_refs", "w") as handle:  # restart the peak (VmHWM) from the current size
        handle.write("5")
    if method == "exact":
        lacal.methods.fit_tau(logits, labels, counts, TAU_RANGE, device=device)
    elif method == "grid":
        lacal.methods.fit_tau(logits, labels, counts, TAU_RANGE, search="grid", grid_size=GRID, device=device)
    elif method == "sklearn_loop":
        from sklearn.metrics import balanced_accuracy_score

        for tau in np.linspace(*TAU_RANGE, GRID):
            balanced_accuracy_score(labels, np.argmax(logits - tau * log_priors, axis=1))
    print(_status_mb("VmHWM") - before, _status_mb("VmHWM"))


def balanced_error(logits, labels, log_priors, tau: float) -> float:
    predictions = np.argmax(logits - tau * log_priors, axis=1)
    classes = np.unique(labels)
    return 1.0 - float(np.mean([np.mean(predictions[labels == c] == c) for c in classes]))


def compare_previous(logits, labels, log_priors, repeats: int) -> dict:
    """The interval pass against the one before it (tests/reference_intervals.py: per-label C x C tables, 2 MiB
    blocks), on the same logits in one run, idle, with torch's default threads; and whether they agree."""
    sys.path.insert(0, str(ROOT))
    from lacal.engine.passes import interval_pass
    from tests.reference_intervals import reference_intervals

    rows = max(1, (2 << 20) // (4 * logits.shape[1]))
    new_s, new, _ = timed(lambda: interval_pass(logits, labels, log_priors), repeats)
    old_s, old, _ = timed(lambda: reference_intervals(logits, labels, log_priors, rows=rows), repeats)
    old_1 = timed_with_threads(lambda: reference_intervals(logits, labels, log_priors, rows=rows), 1, repeats)
    same = bool(np.array_equal(new.lo.numpy(), old[0].numpy()) and np.array_equal(new.hi.numpy(), old[1].numpy()))
    return {"pass_s": new_s, "previous_pass_s": old_s, "previous_pass_1_thread_s": old_1, "speedup": old_s / new_s,
            "intervals_equal": same}


def bench_shape(name: str, repeats: int, device: str, skip_sklearn: bool, workdir: Path, busy: bool = True,
                process: bool = True, previous: bool = False) -> dict:
    import torch

    import lacal

    samples, classes, largest, smallest = SHAPES[name]
    counts = long_tail_counts(classes, largest, smallest)
    logits, labels, counts = make_logits(samples, classes, counts)
    log_priors = np.log(counts / counts.sum())
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    lacal.methods.fit_tau(logits[:1000], labels[:1000], counts, device=device)  # warm-up: libraries, kernels, caches

    floor, _, _ = timed(lambda: np.argmax(logits, axis=1), repeats)
    exact_s, exact, _ = timed(lambda: lacal.methods.fit_tau(logits, labels, counts, TAU_RANGE, device=device), repeats, sync)
    grid_s, grid, _ = timed(lambda: lacal.methods.fit_tau(logits, labels, counts, TAU_RANGE, search="grid",
                                                  grid_size=GRID, device=device), repeats, sync)
    np.save(workdir / "logits.npy", logits)
    np.save(workdir / "labels.npy", labels)
    np.save(workdir / "counts.npy", counts)
    methods = ["exact", "grid"] + ([] if skip_sklearn else ["sklearn_loop"])
    peaks = {m: child_peak_mb(m, workdir, device) for m in methods}
    result = {
        "shape": name, "samples": samples, "classes": classes, "device": device, "repeats": repeats,
        "logits_mb": logits.nbytes / 2 ** 20,
        "floor_argmax_s": floor, "exact_s": exact_s, "grid_s": grid_s,
        "exact_over_floor": exact_s / floor, "grid_over_floor": grid_s / floor,
        "peak_added_mb": {m: added for m, (added, _) in peaks.items()},
        "peak_total_mb": {m: total for m, (_, total) in peaks.items()},
        "tau_exact": exact.tau, "tau_grid": grid.tau,
        "balanced_error_exact": exact.after.balanced_error, "balanced_error_grid": grid.after.balanced_error,
        "balanced_error_before": exact.before.balanced_error,
    }
    if device.startswith("cuda"):
        result["cuda_peak_allocated_mb"] = torch.cuda.max_memory_allocated() / 2 ** 20
    if device == "cpu":  # the exact search with one thread and with torch's default, idle and beside a busy process
        default = torch.get_num_threads()
        run = lambda: lacal.methods.fit_tau(logits, labels, counts, TAU_RANGE, device=device)  # noqa: E731
        threads = {"default_threads": default,
                   "idle": {"argmax_s": floor, "exact_1_thread_s": timed_with_threads(run, 1, repeats),
                            "exact_default_threads_s": exact_s}}
        if busy:
            with busy_machine():
                threads["busy"] = {"argmax_s": timed(lambda: np.argmax(logits, axis=1), repeats)[0],
                                   "exact_1_thread_s": timed_with_threads(run, 1, repeats),
                                   "exact_default_threads_s": timed_with_threads(run, default, repeats)}
        fused = fused_timings(run, repeats, busy)
        if fused:
            for state, seconds in fused.items():
                threads[state]["exact_fused_s"] = seconds
        for row in [v for k, v in threads.items() if k in ("idle", "busy")]:
            row["exact_over_argmax"] = row["exact_default_threads_s"] / row["argmax_s"]
            row["default_over_1_thread"] = row["exact_default_threads_s"] / row["exact_1_thread_s"]
        result["threads"] = threads
    if process:
        result["process"] = whole_process(workdir, max(1, min(repeats, 3)))
    if previous:
        result["previous"] = compare_previous(logits, labels, log_priors, repeats)
    # an independent numpy check that the exact tau is no worse than the best grid point
    exact_np = balanced_error(logits, labels, log_priors, exact.tau)
    grid_np = balanced_error(logits, labels, log_priors, grid.tau)
    result["exact_not_worse_than_grid"] = bool(exact_np <= grid_np + 1e-12)
    if not skip_sklearn:
        from sklearn.metrics import balanced_accuracy_score

        def user_loop():
            taus = np.linspace(*TAU_RANGE, GRID)
            scores = [balanced_accuracy_score(labels, np.argmax(logits - t * log_priors, axis=1)) for t in taus]
            return taus[int(np.argmax(scores))]

        loop_s, loop_tau, _ = timed(user_loop, 1)
        result.update({"sklearn_loop_s": loop_s, "sklearn_tau": float(loop_tau),
                       "loop_over_exact": loop_s / exact_s, "loop_over_grid": loop_s / grid_s})
    return result


def budget_check(size_text: str, workdir: Path) -> dict:
    from lacal.workflows.inputs import memory_bytes as _parse_size

    budget = _parse_size(size_text)
    classes = 1_000
    samples = 4 * budget // (4 * classes)
    counts = long_tail_counts(classes, 1_280, 5)
    path = workdir / "big_logits.npy"
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(samples, classes))
    rng = np.random.default_rng(1)
    labels = np.arange(samples) % classes
    step = 16_384
    for start in range(0, samples, step):
        stop = min(start + step, samples)
        block = rng.standard_normal((stop - start, classes), dtype=np.float32)
        block[np.arange(stop - start), labels[start:stop]] += 4.0
        out[start:stop] = block + np.log(counts / counts.sum()).astype(np.float32)
    out.flush()
    del out
    np.save(workdir / "big_labels.npy", labels)
    np.save(workdir / "big_counts.npy", counts)
    arguments = ["fit-tau", str(path), str(workdir / "big_labels.npy"), "--priors", str(workdir / "big_counts.npy"),
                 "--memory-budget", size_text, "--json", "--quiet"]
    baseline, _ = _child_peak("import torch, numpy, lacal.cli.app, lacal.methods.search, lacal.engine.passes")
    start = time.perf_counter()
    peak, output = _child_peak(f"import sys, runpy; sys.argv = ['lacal'] + {arguments!r}; "
                               "runpy.run_module('lacal', run_name='__main__')")
    elapsed = time.perf_counter() - start
    applied = ["apply", str(path), "--tau", "1.0", "--priors", str(workdir / "big_counts.npy"), "--out",
               str(workdir / "big_adjusted.npy"), "--memory-budget", size_text, "--quiet"]
    apply_peak, _ = _child_peak(f"import sys, runpy; sys.argv = ['lacal'] + {applied!r}; "
                                "runpy.run_module('lacal', run_name='__main__')")
    file_mb = os.path.getsize(path) / 2 ** 20
    path.unlink()
    (workdir / "big_adjusted.npy").unlink()
    limit = budget / 2 ** 20 + 300
    added = max(peak, apply_peak) - baseline  # what lacal's work adds to the imports (torch alone is 200-500 MB)
    return {"budget_mb": budget / 2 ** 20, "file_mb": file_mb, "samples": samples, "classes": classes,
            "peak_rss_mb": peak, "apply_peak_rss_mb": apply_peak, "import_baseline_rss_mb": baseline,
            "seconds": elapsed, "under_budget_plus_300mb": peak <= limit and apply_peak <= limit,
            "added_over_imports_mb": added, "added_under_budget": added <= budget / 2 ** 20,
            "tau": json.loads(output)["tau"]}



def _child_peak(code: str):
    """Run Python `code` in a child; return its peak resident memory (VmHWM, MB, read as it exits) and stdout."""
    report = ("import atexit, sys\n"
              "def _peak():\n"
              "    line = [l for l in open('/proc/self/status') if l.startswith('VmHWM:')][0]\n"
              "    sys.stderr.write('VmHWM ' + line.split()[1] + '\\n')\n"
              "atexit.register(_peak)\n")
    result = subprocess.run([sys.executable, "-c", report + code], capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"child failed ({result.returncode}): {result.stderr[-2000:]}")
    peak = int(result.stderr.strip().splitlines()[-1].split()[1]) / 1024
    return peak, result.stdout


def machine() -> dict:
    import torch

    info = {"python": platform.python_version(), "torch": torch.__version__, "numpy": np.__version__,
            "cpu": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads()}
    try:
        with open("/proc/cpuinfo") as handle:
            info["cpu"] = next(line.split(":", 1)[1].strip() for line in handle if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", default=",".join(SHAPES), help="comma-separated: " + ", ".join(SHAPES))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--large-repeats", type=int, default=1, help="repeats for " + ", ".join(sorted(LARGE)))
    parser.add_argument("--skip-sklearn", action="store_true", help="skip (d) (always skipped for the large shape)")
    parser.add_argument("--skip-busy", action="store_true", help="skip the rows with a busy process beside")
    parser.add_argument("--skip-process", action="store_true", help="skip the whole-process timings")
    parser.add_argument("--compare-previous", action="store_true",
                        help="also time the previous interval pass (tests/reference_intervals.py) on the same logits")
    parser.add_argument("--budget-check", metavar="SIZE", help="also run the larger-than-budget check")
    parser.add_argument("--json", metavar="FILE", help="write the results as JSON too")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--workdir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        run_child(args.child, Path(args.workdir), args.device)
        return

    import torch

    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    report = {"machine": machine(), "results": []}
    print(f"machine: {report['machine']}")
    for name in args.shapes.split(","):
        name = name.strip()
        repeats = args.large_repeats if name in LARGE else args.repeats
        with tempfile.TemporaryDirectory() as folder:
            result = bench_shape(name, repeats, device, args.skip_sklearn or name in LARGE, Path(folder),
                                 busy=not args.skip_busy, process=not args.skip_process,
                                 previous=args.compare_previous and name not in LARGE)
        result["load_average_after"] = os.getloadavg()
        report["results"].append(result)
        print(f"\n{name}: {result['samples']} x {result['classes']} float32, device {device}, median of "
              f"{repeats}; load average {' '.join(f'{v:.1f}' for v in os.getloadavg())}")
        print(f"  (a) numpy.argmax, the floor   {result['floor_argmax_s'] * 1e3:10.1f} ms")
        print(f"  (b) lacal exact search        {result['exact_s'] * 1e3:10.1f} ms   b/a = "
              f"{result['exact_over_floor']:.1f}")
        print(f"  (c) lacal grid of {GRID}        {result['grid_s'] * 1e3:10.1f} ms   c/a = "
              f"{result['grid_over_floor']:.1f}")
        if "sklearn_loop_s" in result:
            print(f"  (d) sklearn loop over {GRID}    {result['sklearn_loop_s'] * 1e3:10.1f} ms   d/b = "
                  f"{result['loop_over_exact']:.0f}   d/c = {result['loop_over_grid']:.0f}")
        print(f"  peak resident memory added to the {result['logits_mb']:.0f} MB of logits (MB, fresh process): "
              + ", ".join(f"{k} {v:.0f}" for k, v in result["peak_added_mb"].items())
              + (f"; CUDA peak allocated {result['cuda_peak_allocated_mb']:.0f} MB"
                 if "cuda_peak_allocated_mb" in result else ""))
        print("  peak resident memory of the whole process (MB): "
              + ", ".join(f"{k} {v:.0f}" for k, v in result["peak_total_mb"].items()))
        threads = result.get("threads")
        for state in ("idle", "busy"):
            if threads and state in threads:
                row = threads[state]
                print(f"  {state:4s}: argmax {row['argmax_s'] * 1e3:8.1f} ms, exact with 1 thread "
                      f"{row['exact_1_thread_s'] * 1e3:8.1f} ms, with {threads['default_threads']} "
                      f"{row['exact_default_threads_s'] * 1e3:8.1f} ms; exact/argmax = {row['exact_over_argmax']:.1f}, "
                      f"{threads['default_threads']} threads / 1 = {row['default_over_1_thread']:.2f}"
                      + (f"; compiled kernel {row['exact_fused_s'] * 1e3:.1f} ms ("
                         f"{row['exact_fused_s'] / row['argmax_s']:.1f}x argmax)" if "exact_fused_s" in row else ""))
        process = result.get("process")
        for state in ("idle", "busy"):
            if process:
                row = process[state]
                print(f"  whole process, {state}: floor (import torch, load, argmax) {row['floor_s']:6.2f} s, "
                      f"`lacal fit-tau` {row['fit_tau_s']:6.2f} s, ratio {row['ratio']:.2f}")
        if process:
            print(f"  `lacal fit-tau` peak resident memory: {process['fit_tau_peak_rss_mb']:.0f} MB")
        if "previous" in result:
            row = result["previous"]
            print(f"  interval pass {row['pass_s'] * 1e3:.1f} ms, the previous one (C x C tables) "
                  f"{row['previous_pass_s'] * 1e3:.1f} ms ({row['previous_pass_1_thread_s'] * 1e3:.1f} ms with one "
                  f"thread): {row['speedup']:.1f}x; intervals equal: {row['intervals_equal']}")
        print(f"  balanced error: before {result['balanced_error_before']:.4f}, exact tau {result['tau_exact']:.4f} "
              f"-> {result['balanced_error_exact']:.4f}, grid tau {result['tau_grid']:.4f} -> "
              f"{result['balanced_error_grid']:.4f}; exact <= grid: {result['exact_not_worse_than_grid']}")
    if args.budget_check:
        with tempfile.TemporaryDirectory() as folder:
            check = budget_check(args.budget_check, Path(folder))
        report["budget_check"] = check
        print(f"\nfit-tau on a {check['file_mb']:.0f} MB .npy ({check['samples']} x {check['classes']}) with "
              f"--memory-budget {check['budget_mb']:.0f} MB: peak resident {check['peak_rss_mb']:.0f} MB (a bare "
              f"`import torch, lacal` is {check['import_baseline_rss_mb']:.0f} MB), {check['seconds']:.1f} s; "
              f"`lacal apply` of the same file to a .npy: peak {check['apply_peak_rss_mb']:.0f} MB; "
              f"under budget + 300 MB: {check['under_budget_plus_300mb']}; at most "
              f"{check['added_over_imports_mb']:.0f} MB over the imports, within the budget: "
              f"{check['added_under_budget']}")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
