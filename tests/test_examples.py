import re
import subprocess
import sys
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def test_python_api_example_runs_and_improves():
    result = subprocess.run([sys.executable, str(EXAMPLES / "python_api.py")], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr
    before, after = map(float, re.search(r"balanced error\s+([\d.]+)%\s+([\d.]+)%", result.stdout).groups())
    assert after < before
