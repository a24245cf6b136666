import re
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


@pytest.mark.slow
def test_multilabel_example_fitted_tau_improves_the_test_split(tmp_path):
    result = subprocess.run([sys.executable, str(EXAMPLES / "multilabel_long_tail.py"), "--dir", str(tmp_path)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    rows = {name.strip(): float(value) for name, value in
            re.findall(r"^(no adjustment \(tau = 0\)|shared tau = 1|shared tau = [\d.]+ \(fitted on validation\))"
                       r"\s+([\d.]+)%", result.stdout, re.M)}
    assert len(rows) == 3, result.stdout
    fitted = next(value for name, value in rows.items() if "fitted" in name)
    assert fitted < rows["no adjustment (tau = 0)"] - 5  # the rare labels are no longer missed
    assert fitted <= rows["shared tau = 1"] + 0.5
    for name in ("val_logits.npy", "val_labels.npy", "test_logits.npy", "test_labels.npy", "train_labels.npy"):
        assert (tmp_path / name).exists()
