"""`lacal report --plot FILE.png`: three panels that show what adjustment did. matplotlib is an optional extra
(`pip install 'lacal[plot]'`) and is imported only here.

1. per-class error before and after against the training count (log scale), the shot-group borders marked;
2. the balanced error against tau, with tau = 1 and the chosen tau marked;
3. a reliability diagram (accuracy against confidence per bin) before and after.
"""

from __future__ import annotations

import numpy as np

from ..errors import OptionError
from ..core.metrics import FEW_SHOT_BELOW, MANY_SHOT_ABOVE


def _pyplot():
    try:
        import matplotlib
    except ImportError:
        raise OptionError("plots need matplotlib, an optional extra: pip install 'lacal[plot]' (or pip install "
                          "matplotlib)", "plot") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def check_plotting() -> None:
    """Fail early, before any work, when matplotlib is missing."""
    _pyplot()


def plot_report(path, report, curve=None, tau: float | None = None, title: str = "", force: bool = False,
                inputs=(), band=None, tau_interval=None) -> None:
    """Write the three panels to `path` (PNG), atomically. `curve`: (taus, balanced errors) or None; `band`:
    (low, high) bootstrap percentiles of the curve at the same taus; `tau_interval`: the refitted tau's interval."""
    from ..data.writers import atomic_path

    plt = _pyplot()
    figure, axes = plt.subplots(1, 3, figsize=(17, 5.2))
    _per_class(axes[0], report)
    _tau_curve(axes[1], curve, tau, band, tau_interval)
    _reliability(axes[2], report)
    if title:
        figure.suptitle(title)
    figure.tight_layout()
    try:
        with atomic_path(path, force, inputs) as temporary:
            figure.savefig(temporary, format="png", dpi=110)
    finally:
        plt.close(figure)


def _per_class(axis, report) -> None:
    axis.set_title("per-class error against training count")
    if report.train_counts is None:
        axis.text(0.5, 0.5, "no training counts given\n(--train-labels, or counts in --priors)", ha="center",
                  va="center", transform=axis.transAxes)
        axis.set_axis_off()
        return
    counts = np.maximum(np.asarray(report.train_counts, dtype=float), 0.5)
    before = report.baseline.errors
    axis.scatter(counts, before, s=14, alpha=0.6, color="tab:gray", label="before (raw logits)")
    if report.adjusted is not None:
        axis.scatter(counts, report.adjusted.errors, s=14, alpha=0.8, color="tab:blue",
                     label=f"after (tau = {report.tau:.3g})")
    for border in (FEW_SHOT_BELOW, MANY_SHOT_ABOVE):
        axis.axvline(border, color="black", linewidth=0.8, linestyle=":")
    axis.set_xscale("log")
    axis.set_xlabel("training samples of the class (log scale)")
    axis.set_ylabel("error on this class")
    axis.set_ylim(-0.03, 1.03)
    axis.legend(loc="upper right")


def _tau_curve(axis, curve, tau, band=None, tau_interval=None) -> None:
    axis.set_title("balanced error against tau (on these logits)")
    if curve is None:
        axis.text(0.5, 0.5, "no training priors given\n(--train-labels or --priors)", ha="center", va="center",
                  transform=axis.transAxes)
        axis.set_axis_off()
        return
    taus, values = curve
    axis.plot(taus, values, color="tab:blue", label="balanced error")
    if band is not None:
        axis.fill_between(taus, band[0], band[1], color="tab:blue", alpha=0.2, linewidth=0,
                          label="bootstrap band (pointwise)")
    if tau_interval is not None:
        axis.axvspan(tau_interval[0], tau_interval[1], color="tab:red", alpha=0.12,
                     label=f"tau interval {tau_interval[0]:.3g}-{tau_interval[1]:.3g}")
    axis.axvline(1.0, color="tab:gray", linestyle="--", linewidth=1, label="tau = 1")
    if tau is not None:
        at = float(np.interp(tau, taus, values))
        axis.axvline(tau, color="tab:red", linewidth=1)
        axis.plot([tau], [at], "o", color="tab:red", label=f"chosen tau = {tau:.3g}")
    axis.set_xlabel("tau")
    axis.set_ylabel("balanced error")
    axis.legend(loc="upper right")


def _reliability(axis, report) -> None:
    axis.set_title("reliability diagram")
    axis.plot([0, 1], [0, 1], color="black", linewidth=0.8, linestyle=":", label="perfect calibration")
    for quality, name, color in ((report.baseline_quality, "before", "tab:gray"),
                                 (report.adjusted_quality, "after", "tab:blue")):
        if quality is None:
            continue
        filled = quality.bin_count > 0
        centres = quality.bin_confidence[filled] / quality.bin_count[filled]
        accuracy = quality.bin_correct[filled] / quality.bin_count[filled]
        axis.plot(centres, accuracy, "o-", color=color, label=f"{name} (ECE {quality.ece:.1%})")
    axis.set_xlim(0, 1)
    axis.set_ylim(0, 1)
    axis.set_xlabel("confidence (mean of the bin)")
    axis.set_ylabel("accuracy in the bin")
    axis.legend(loc="upper left")
