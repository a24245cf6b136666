"""The docs site builds with no warning, its generated pages hold what the code has, and its figures are the ones
docs/figures.py draws with lacal's own plotting."""

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"


def test_site_builds_strict(tmp_path):
    pytest.importorskip("mkdocs")
    pytest.importorskip("mkdocstrings")
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
                          cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**__import__("os").environ, "NO_MKDOCS_2_WARNING": "1"})
    assert done.returncode == 0, done.stderr
    cli = (tmp_path / "site" / "reference" / "cli" / "index.html").read_text()
    api = (tmp_path / "site" / "reference" / "api" / "index.html").read_text()
    assert "--tau-range" in cli and "--verify-features" in cli
    assert 'id="lacal.workflows.fit.fit"' in api and "tau_range" in api


def test_cli_reference_lists_every_command_and_option():
    import typer

    sys.path.insert(0, str(DOCS / "hooks"))
    try:
        from cli_reference import cli_reference, exit_codes
    finally:
        sys.path.remove(str(DOCS / "hooks"))
    from lacal.cli import app
    from lacal.errors import EXIT_CODES

    page = cli_reference()
    group = typer.main.get_command(app)
    root = group.context_class(group, info_name="lacal")
    for name in group.list_commands(root):
        command = group.get_command(root, name)
        assert f"## `lacal {name}`" in page
        section = page.split(f"## `lacal {name}`")[1].split("\n## ")[0]
        for parameter in command.params:
            for option in getattr(parameter, "opts", []):
                if option.startswith("-"):
                    assert re.search(rf"`[^`|]*(?<![\w-]){re.escape(option)}(?![\w-])", section), (name, option)
    table = exit_codes()
    for code in EXIT_CODES:
        assert re.search(rf"^\| {code} \|", table, re.M), code
    assert "| 9 |" in table and "`CheckpointError`" in table


def test_every_picture_the_docs_show_is_there_and_drawn_by_the_figures_script():
    sys.path.insert(0, str(DOCS))
    try:
        from figures import FIGURES
    finally:
        sys.path.remove(str(DOCS))
    shown = set()
    for page in DOCS.rglob("*.md"):
        for target in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", page.read_text()):
            path = (page.parent / target).resolve()
            assert path.exists(), f"{page.relative_to(ROOT)} shows {target}, which is not there"
            shown.add(path.name)
    assert shown <= set(FIGURES), shown - set(FIGURES)
    assert {path.name for path in (DOCS / "img").glob("*.png")} == set(FIGURES)


@pytest.mark.slow
def test_figures_script_draws_the_groups_the_report_measures(tmp_path):
    pytest.importorskip("matplotlib")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sys.path.insert(0, str(DOCS))
    try:
        from figures import FIGURES, draw
    finally:
        sys.path.remove(str(DOCS))
    written = draw(tmp_path)
    assert sorted(path.name for path in written) == sorted(FIGURES)
    for path in written:
        image = plt.imread(path)
        panels = len(FIGURES[path.name])
        assert abs(image.shape[1] / image.shape[0] - 17 * panels / 3 / 5.2) < 0.05, path.name

    # the groups panel's bars are each shot group's mean per-class error, computed here from the logits
    import lacal
    from lacal.cli.demo import write_problem
    from lacal.workflows.plot import _groups

    write_problem(tmp_path, seed=0)
    labels = np.load(tmp_path / "test_labels.npy")
    logits = np.load(tmp_path / "test_logits.npy")
    counts = np.bincount(np.loadtxt(tmp_path / "train_labels.txt", dtype=np.int64), minlength=100)
    tau = 1.5
    report = lacal.report(logits, labels, tau=tau, train_labels=tmp_path / "train_labels.txt")
    figure, axis = plt.subplots()
    _groups(axis, report)
    heights = [bar.get_height() for bar in axis.patches]
    plt.close(figure)
    group = np.where(counts > 100, 0, np.where(counts >= 20, 1, 2))
    expected = []
    for scores in (logits, logits - tau * np.log(counts / counts.sum())):
        wrong = scores.argmax(1) != labels
        per_class = np.array([wrong[labels == c].mean() for c in range(100)])
        expected.append([per_class[group == g].mean() for g in range(3)])
    assert np.allclose(heights, expected[0] + expected[1], atol=1e-9)


def test_calibration_file_page_describes_every_key_lacal_writes():
    from lacal.core import Calibration, multilabel_priors_from_labels, priors_from_labels
    from lacal.methods import fit_multilabel_tau, fit_tau

    rng = np.random.default_rng(0)
    logits, labels = rng.normal(size=(60, 3)).astype(np.float32), np.arange(60) % 3
    priors = priors_from_labels(np.repeat([0, 1, 2], [30, 10, 3]), num_classes=3)
    single = Calibration.from_fit(fit_tau(logits, labels, priors), priors).to_dict()
    matrix = rng.random((60, 3)) < [0.5, 0.2, 0.1]
    multi_priors = multilabel_priors_from_labels(rng.random((200, 3)) < [0.5, 0.2, 0.1])
    multi = Calibration.from_fit(fit_multilabel_tau(logits, matrix, multi_priors), multi_priors).to_dict()
    table = set(re.findall(r"^\| `(\w+)` \|", (DOCS / "reference" / "calibration-file.md").read_text(), re.M))
    assert set(single) | set(multi) == table
    assert single["schema_version"] == 2 and multi["schema_version"] == 3
