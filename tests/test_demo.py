import json

import numpy as np

from lacal.cli.app import app
from lacal.cli.demo import DEMO_FILES, long_tail_counts
from typer.testing import CliRunner

from . import reference


def test_long_tail_counts_follow_the_cifar100_lt_profile():
    counts = long_tail_counts()
    assert counts[0] == 500 and counts[-1] == 5 and counts.sum() == 10847
    assert (np.diff(counts) <= 0).all()


def test_demo_improves_the_balanced_error(tmp_path):
    runner = CliRunner()
    result = runner.invoke(app, ["demo", "--dir", str(tmp_path / "demo")], env={"COLUMNS": "120"})
    assert result.exit_code == 0, result.output
    d = tmp_path / "demo"
    assert sorted(p.name for p in d.iterdir()) == sorted(DEMO_FILES)
    for command in ("$ lacal fit-tau", "$ lacal apply", "$ lacal report"):
        assert command in result.stdout
    labels = np.load(d / "test_labels.npy")
    raw = reference.predictions(np.load(d / "test_logits.npy"))
    adjusted = reference.predictions(np.load(d / "test_adjusted.npy"))
    before = reference.balanced_error(raw, labels, 100)
    after = reference.balanced_error(adjusted, labels, 100)
    assert after < before - 0.03, (before, after)
    calibration = json.loads((d / "calibration.json").read_text())
    assert 0 < calibration["tau"] < 4
    again = runner.invoke(app, ["demo", "--dir", str(d)])
    assert again.exit_code == 8 and "--force" in again.stderr
