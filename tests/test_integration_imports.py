"""`import lacal` and `import lacal.integrations` load no framework: each integration module imports its own."""

import subprocess
import sys

FRAMEWORKS = ("torch", "lightning", "transformers", "sklearn", "torchmetrics")


def test_importing_lacal_and_its_integrations_package_loads_no_framework():
    code = ("import sys, lacal, lacal.integrations; lacal.__version__; "
            f"print([name for name in {FRAMEWORKS!r} if name in sys.modules])")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def _frameworks_after(statement: str) -> str:
    code = f"import sys; {statement}; print(sorted(n for n in {FRAMEWORKS!r} if n in sys.modules))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_each_integration_imports_no_framework_beyond_its_own():
    for module, framework in (("sklearn", "sklearn"), ("torchmetrics", "torchmetrics")):
        # the framework may import others itself (torchmetrics imports transformers when it is there)
        assert _frameworks_after(f"import lacal.integrations.{module}") == \
            _frameworks_after(f"import {framework}"), module
