"""Draw the docs' figures with lacal's own plotting (`lacal report --plot`), on the demo's problem.

Run: python docs/figures.py [--out docs/img]   (about 10 seconds on 2 CPU cores; needs matplotlib)

It writes the demo's files into a temporary folder, fits tau on the validation split, reports on the test split, and
draws with `lacal.workflows.plot.plot_report`, the function behind `lacal report --plot`:
- report.png: the three panels of `lacal report --plot`;
- per-class.png: the per-class error before and after against the training count, shot-group borders dotted;
- tau-curve.png: the balanced error against tau on the test split, tau = 1 and the fitted tau marked;
- groups.png: each shot group's error before and after.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

FIGURES = {"report.png": ("per-class", "tau", "reliability"), "per-class.png": ("per-class",),
           "tau-curve.png": ("tau",), "groups.png": ("groups",)}


def draw(out: Path) -> list[Path]:
    import numpy as np

    import lacal
    from lacal.cli.demo import write_problem
    from lacal.methods import fit_tau
    from lacal.workflows.plot import plot_report

    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as name:
        folder = Path(name)
        write_problem(folder, seed=0)
        result = lacal.fit(folder / "val_logits.npy", folder / "val_labels.npy",
                           train_labels=folder / "train_labels.txt")
        test_logits, test_labels = np.load(folder / "test_logits.npy"), np.load(folder / "test_labels.npy")
        report = lacal.report(test_logits, test_labels, result.calibration)
        # the curve `lacal report --plot` draws: the balanced error on a 401-point grid over [0, 4]
        grid = fit_tau(test_logits, test_labels, result.calibration.priors, (0.0, 4.0), search="grid",
                       grid_size=401)
        curve = (grid.grid_taus, grid.grid_values)
        written = []
        for filename, panels in FIGURES.items():
            title = "lacal report: the demo's test split" if len(panels) > 1 else ""
            plot_report(out / filename, report, curve, result.tau, title, force=True, panels=panels)
            written.append(out / filename)
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "img")
    for path in draw(parser.parse_args().out):
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
