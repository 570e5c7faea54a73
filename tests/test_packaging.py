"""Packaging: license metadata, the py.typed marker in the wheel, the sdist's contents, the extras, and install hints
that work from a clone."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

try:
    import tomllib
except ImportError:  # Python < 3.11
    tomllib = pytest.importorskip("tomli")


def pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))


def test_license_is_an_spdx_string_with_a_license_file():
    project = pyproject()["project"]
    assert project["license"] == "MIT"  # a string (PEP 639), not the deprecated {text = ...} table
    assert project["license-files"] == ["LICENSE"]
    text = (ROOT / "LICENSE").read_text(encoding="utf-8")
    assert text.startswith("MIT License") and "Copyright (c) 2026 mid-metric developers" in text
    assert 'THE SOFTWARE IS PROVIDED "AS IS"' in text
    # SPDX strings need setuptools 77, and a license classifier may not be given next to one.
    requires = pyproject()["build-system"]["requires"]
    assert any(re.fullmatch(r"setuptools>=(\d+)", r) and int(r.split(">=")[1]) >= 77 for r in requires), requires
    assert not [c for c in project.get("classifiers", []) if c.startswith("License ::")]


def test_py_typed_marker_is_package_data():
    assert (ROOT / "mid_metric" / "py.typed").is_file()
    assert "py.typed" in pyproject()["tool"]["setuptools"]["package-data"]["mid_metric"]


@pytest.mark.slow
def test_wheel_has_license_expression_license_file_and_py_typed(tmp_path):
    setuptools = pytest.importorskip("setuptools")
    if int(setuptools.__version__.split(".")[0]) < 77:
        pytest.skip("the installed setuptools predates SPDX license strings")
    source = tmp_path / "src"  # a clean copy, so that the build leaves nothing in the work tree
    shutil.copytree(ROOT / "mid_metric", source / "mid_metric", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(ROOT / name, source / name)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(tmp_path / "dist"),
            str(source),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SetuptoolsDeprecationWarning" not in proc.stdout + proc.stderr
    (wheel,) = (tmp_path / "dist").glob("mid_metric-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        metadata = archive.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    assert "mid_metric/py.typed" in names
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names), names
    assert "License-Expression: MIT" in metadata.splitlines()


def _source_copy(tmp_path: Path) -> Path:
    """A clean copy of what a clone holds for packaging (tests, docs and examples included), to build from."""
    source = tmp_path / "src"
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info", "*.pyc")
    for folder in ("mid_metric", "tests", "docs", "examples"):
        shutil.copytree(ROOT / folder, source / folder, ignore=ignore)
    for name in ("pyproject.toml", "README.md", "LICENSE", "MANIFEST.in"):
        shutil.copy(ROOT / name, source / name)
    return source


@pytest.mark.slow
def test_sdist_leaves_the_tests_out_and_holds_the_whole_package(tmp_path):
    # The tests need their helpers, fixtures, benchmarks/ and examples/: shipped alone, they failed at collection
    # (`No module named '_cli'`). The sdist leaves them out (MANIFEST.in); they run from a clone.
    setuptools = pytest.importorskip("setuptools")
    if int(setuptools.__version__.split(".")[0]) < 77:
        pytest.skip("the installed setuptools predates SPDX license strings")
    source = _source_copy(tmp_path)
    build = f"from setuptools import build_meta; print(build_meta.build_sdist({str(tmp_path / 'dist')!r}))"
    proc = subprocess.run([sys.executable, "-c", build], cwd=source, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (sdist,) = (tmp_path / "dist").glob("mid_metric-*.tar.gz")
    with tarfile.open(sdist) as archive:
        names = {name.split("/", 1)[1] for name in archive.getnames() if "/" in name}
    assert not [name for name in names if name == "tests" or name.startswith("tests/")], sorted(names)
    package = {path.relative_to(source).as_posix() for path in (source / "mid_metric").rglob("*") if path.is_file()}
    assert package and package <= names, sorted(package - names)
    assert {"pyproject.toml", "README.md", "LICENSE", "PKG-INFO"} <= names


def test_scipy_is_a_core_dependency_and_each_example_has_its_extra():
    project = pyproject()["project"]
    # the jackknife's t quantile and Kendall's tau need scipy whatever the extras
    assert "scipy>=1.7" in project["dependencies"]
    extras = project["optional-dependencies"]
    assert {"lightning>=2.2", "tensorboard>=2.12"} <= set(extras["lightning"])
    assert set(extras["lightning"]) <= set(extras["test"])
    assert "scipy>=1.7" in extras["benchmark"]  # old install lines keep working
    # the install line stands next to the example, in the README and in the example's docstring
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("## PyTorch Lightning and TensorBoard")[1].split("\n## ")[0]
    assert 'pip install ".[lightning]"' in section
    assert 'pip install ".[lightning]"' in (ROOT / "examples" / "lightning_validation.py").read_text(encoding="utf-8")


def test_example_logs_go_to_an_ignored_folder():
    ignored = (ROOT / ".gitignore").read_text(encoding="utf-8").splitlines()
    assert "runs/" in ignored and "lightning_logs/" in ignored
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert re.findall(r"--logdir (\S+)", readme) and set(re.findall(r"--logdir (\S+)", readme)) == {"runs"}


def test_readme_examples_run_on_the_cpu_build():
    # The Quickstart installs a CPU build on many machines: no example may move the metric to CUDA unconditionally.
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```python\n(.*?)```", readme, flags=re.S)
    assert blocks
    for block in blocks:
        for line in block.splitlines():
            if re.search(r"\.to\(\s*[\"']cuda", line) or re.search(r"\.cuda\(\)", line):
                raise AssertionError(f"README moves to CUDA unconditionally: {line.strip()!r}")
    assert 'torch.device("cuda" if torch.cuda.is_available() else "cpu")' in readme


def test_readme_says_how_long_the_tests_take():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    quickstart = readme.split("## What MID measures")[0]
    assert re.search(r"takes about [\w.]+ minutes?", quickstart), "the Quickstart should say how long the tests take"


def text_files() -> list[Path]:
    files = [ROOT / "README.md", ROOT / ".ci" / "run"]
    for folder, pattern in (("mid_metric", "*.py"), ("docs", "*.md"), ("examples", "*.py")):
        files.extend(sorted((ROOT / folder).rglob(pattern)))
    return [path for path in files if path.is_file()]


def test_install_hints_work_from_a_clone():
    # mid-metric is on no package index: `pip install "mid-metric[clip]"` fails, `pip install ".[clip]"` works.
    by_name = re.compile(r"pip install\s+[\"']?mid-metric\b")
    offenders = [
        f"{path.relative_to(ROOT)}:{number}: {line.strip()}"
        for path in text_files()
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1)
        if by_name.search(line)
    ]
    assert not offenders, offenders
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert 'pip install ".[clip]"' in readme and 'pip install ".[plot]"' in readme
    extras = set(pyproject()["project"]["optional-dependencies"])
    for extra in re.findall(r"pip install [\"']\.\[(\w+)\][\"']", readme):
        assert extra in extras, extra


def test_readme_says_what_the_torch_command_installs():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    # The first two commands stay as they are ...
    assert "pip install torch==2.13.0 && pip install . && mid-metric demo" in readme
    assert 'pip install torch==2.13.0 && pip install -e ".[test]" && HF_HUB_OFFLINE=1 python -m pytest -q' in readme
    # ... without the claim that they pin the CPU build, and with the way to ask for it.
    assert "pins the CPU build" not in readme
    assert "pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu" in readme
    assert "CUDA" in readme.split("## What MID measures")[0]
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert "it is the CPU wheel" not in ci and "--index-url https://download.pytorch.org/whl/cpu" in ci
