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


PANELS = ("per-class", "tau", "reliability")   # what `lacal report --plot` draws; "groups" is the fourth


def plot_report(path, report, curve=None, tau: float | None = None, title: str = "", force: bool = False,
                inputs=(), panels=PANELS, band=None, tau_interval=None) -> None:
    """Write the panels to `path` (PNG), atomically. `curve`: (taus, balanced errors) or None; `panels`: which of
    `PANELS` and "groups" (each shot group's error before and after, as bars) to draw, left to right; `band`:
    (low, high) bootstrap percentiles of the curve at the same taus; `tau_interval`: the refitted tau's interval."""
    from ..data.writers import atomic_path

    plt = _pyplot()
    draw = {"per-class": lambda axis: _per_class(axis, report),
            "tau": lambda axis: _tau_curve(axis, curve, tau, band, tau_interval),
            "reliability": lambda axis: _reliability(axis, report), "groups": lambda axis: _groups(axis, report)}
    figure, axes = plt.subplots(1, len(panels), figsize=(17 * len(panels) / 3, 5.2), squeeze=False)
    for axis, panel in zip(axes[0], panels):
        draw[panel](axis)
    if title:
        figure.suptitle(title, parse_math=False)  # a file name with `$...$` is text, not mathtext
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


def _groups(axis, report) -> None:
    axis.set_title("error by shot group")
    before = report.groups(report.baseline)
    if before is None:
        axis.text(0.5, 0.5, "no training counts given\n(--train-labels, or counts in --priors)", ha="center",
                  va="center", transform=axis.transAxes)
        axis.set_axis_off()
        return
    names = [name for name in ("many", "medium", "few") if before[name]["error"] is not None]
    places = np.arange(len(names))
    rows = [("before (raw logits)", before, "tab:gray", -0.2)]
    if report.adjusted is not None:
        rows.append((f"after (tau = {report.tau:.3g})", report.groups(report.adjusted), "tab:blue", 0.2))
    for label, groups, color, shift in rows:
        values = [groups[name]["error"] for name in names]
        bars = axis.bar(places + shift, values, width=0.4, color=color, label=label)
        axis.bar_label(bars, labels=[f"{value:.1%}" for value in values], fontsize=8)
    axis.set_xticks(places, [f"{name}-shot\n({before[name]['classes']} classes)" for name in names])
    axis.set_ylabel("mean error of the group's classes")
    axis.legend(loc="upper left")
