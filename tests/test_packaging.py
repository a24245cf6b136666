"""The wheel holds the whole package: every module under lacal/ and py.typed, and nothing else; its version is the
one in lacal/version.py, which `lacal --version` prints.

The wheel is built from a copy of the sources in a temporary folder, so the build leaves nothing in the checkout.
"""

import email
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SOURCES = ("pyproject.toml", "README.md", "LICENSE", "MANIFEST.in", "CHANGELOG.md", "BENCHMARKS.md", "lacal", "tests",
           "docs", "examples", "benchmarks")


def source_files() -> set[str]:
    """What the wheel must hold: every tracked-looking module of the package, and the typing marker."""
    files = {p.relative_to(ROOT).as_posix() for p in (ROOT / "lacal").rglob("*.py") if "__pycache__" not in p.parts}
    return files | {"lacal/py.typed"}


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    """A copy of what a clone holds of the package and its sdist's extras."""
    pytest.importorskip("setuptools", minversion="77")  # the test extra brings it
    tree = tmp_path_factory.mktemp("source")
    for name in SOURCES:
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(source, tree / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info"))
        elif source.exists():
            shutil.copy2(source, tree / name)
    return tree


@pytest.fixture(scope="module")
def wheel(tree, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
                           "--quiet", "--wheel-dir", str(out), str(tree)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    wheels = list(out.glob("lacal-*.whl"))
    assert len(wheels) == 1, wheels
    return wheels[0]


def test_the_wheel_holds_every_module_and_py_typed(wheel):
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
    package = {name for name in names if not name.split("/")[0].endswith(".dist-info")}
    expected = source_files()
    assert {"lacal/cli/app.py", "lacal/workflows/fit.py", "lacal/core/priors.py"} <= expected
    assert package - expected == set(), "files in the wheel that are not modules of the source tree"
    assert expected - package == set(), "modules of the source tree missing from the wheel"


def test_the_wheel_has_the_version_of_lacal_version_py(wheel):
    from lacal.version import __version__

    assert wheel.name.startswith(f"lacal-{__version__}-")
    with zipfile.ZipFile(wheel) as archive:
        metadata_name = next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))
        metadata = email.message_from_bytes(archive.read(metadata_name))
        scripts = archive.read(metadata_name.replace("METADATA", "entry_points.txt")).decode()
    assert metadata["Version"] == __version__
    assert metadata["License-Expression"] == "Apache-2.0"
    assert "Typing :: Typed" in metadata.get_all("Classifier")
    assert any(url.startswith("Changelog, ") for url in metadata.get_all("Project-URL"))
    assert "lacal = lacal.cli:main" in scripts


def test_the_sdist_holds_the_package_its_tests_and_the_changelog(tree, tmp_path):
    done = subprocess.run([sys.executable, "-c", "import sys; from setuptools import build_meta; "
                           "print(build_meta.build_sdist(sys.argv[1]))", str(tmp_path)], cwd=tree,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    archive_name = done.stdout.strip().splitlines()[-1]
    with tarfile.open(tmp_path / archive_name) as archive:
        top = archive_name.removesuffix(".tar.gz")
        names = {name.removeprefix(f"{top}/") for name in archive.getnames()}
    tests = {p.relative_to(ROOT).as_posix() for p in (ROOT / "tests").rglob("*.py")}
    assert source_files() - names == set(), "modules missing from the sdist"
    assert tests - names == set(), "tests missing from the sdist"
    assert {"pyproject.toml", "README.md", "LICENSE", "CHANGELOG.md"} <= names
    assert not [name for name in names if "__pycache__" in name or name.endswith(".pyc")]


def test_version_is_set_in_one_place():
    """pyproject.toml reads the version from lacal/version.py instead of stating its own."""
    tomllib = pytest.importorskip("tomllib")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "version" not in project["project"]
    assert "version" in project["project"]["dynamic"]
    assert project["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "lacal.version.__version__"}


def test_lacal_version_prints_the_version():
    from typer.testing import CliRunner

    from lacal.cli import app
    from lacal.version import __version__

    result = CliRunner().invoke(app, ["--version"])
    assert result.exit_code == 0
    assert result.output == f"lacal {__version__}\n"
