import os
import subprocess

import numpy as np
import pytest
from typer.testing import CliRunner

os.environ.setdefault("COLUMNS", "120")


def long_tail_problem(num_samples=600, num_classes=8, seed=0, margin=1.5, imbalance=50.0, dtype=np.float32):
    """Logits that behave like an ERM model's: class evidence plus log pi, on class-balanced validation labels.
    Returns (logits, labels, train_counts)."""
    rng = np.random.default_rng(seed)
    counts = np.array([max(1, int(400 * imbalance ** (-i / (num_classes - 1)))) for i in range(num_classes)])
    labels = rng.integers(0, num_classes, num_samples)
    logits = rng.normal(size=(num_samples, num_classes))
    logits[np.arange(num_samples), labels] += margin
    logits += np.log(counts / counts.sum())[None, :]
    return logits.astype(dtype), labels.astype(np.int64), counts


@pytest.fixture
def tmpfs(tmp_path):
    """Mounts a small tmpfs: `tmpfs("128k")` gives its folder (needs root and mount; the test is skipped elsewhere),
    unmounted after the test."""
    mounted = []

    def mount(size: str):
        disk = tmp_path / f"disk{len(mounted) or ''}"
        disk.mkdir()
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(disk)], capture_output=True)
        if done.returncode != 0:
            pytest.skip("cannot mount a tmpfs here")
        mounted.append(disk)
        return disk

    yield mount
    for disk in mounted:
        subprocess.run(["umount", "-l", str(disk)], capture_output=True)


@pytest.fixture
def problem():
    return long_tail_problem()


@pytest.fixture
def files(tmp_path, problem):
    """The problem written as user files: val logits (.npy), val labels (.npy), train labels (.txt)."""
    logits, labels, counts = problem
    np.save(tmp_path / "val_logits.npy", logits)
    np.save(tmp_path / "val_labels.npy", labels)
    train = np.repeat(np.arange(len(counts)), counts)
    np.random.default_rng(1).shuffle(train)
    (tmp_path / "train_labels.txt").write_text("\n".join(map(str, train)) + "\n")
    return tmp_path


def run(*args):
    """The `lacal` command in process, at 120 columns, with every argument as a string."""
    from lacal.cli.app import app

    return CliRunner().invoke(app, [str(a) for a in args], env={"COLUMNS": "120"})


def one_clean_line(result, code):
    """The run failed with `code`, one `lacal: error:` line on stderr, and no traceback."""
    assert result.exit_code == code, result.output
    assert not isinstance(result.exception, Exception) or isinstance(result.exception, SystemExit), result.exception
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("lacal: error: "), result.stderr
    return lines[0]
