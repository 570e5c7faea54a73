"""Helpers that run the `mid-metric` command line, in-process or as the real console script, and check its output."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

from mid_metric import cli

#: The environment of a console-script run: offline, UTF-8.
ENV = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", PYTHONIOENCODING="utf-8")


def run_cli(args: list[str], capsys) -> str:
    """Run `mid-metric ARGS`, check that it succeeds, and return what it printed on stdout."""
    assert cli.main(args) == 0, capsys.readouterr().err
    return capsys.readouterr().out


def fail_cli(args: list[str], capsys, *words: str) -> str:
    """Run `mid-metric ARGS`, check that it exits 1 with one `mid-metric: error:` line holding ``words``; return it."""
    status = cli.main(args)
    err = capsys.readouterr().err
    assert status == 1, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("mid-metric: error: "), err
    for word in words:
        assert word in lines[0], (word, lines[0])
    return lines[0]


def fail(argv: list[str], capsys, *phrases: str) -> str:
    """:func:`fail_cli` with ``--quiet``, so that the error is all that stderr holds."""
    return fail_cli([*argv, "--quiet"], capsys, *phrases)


def script() -> list[str]:
    """The installed console script, or ``python -m mid_metric`` when the package is not installed."""
    found = shutil.which("mid-metric")
    return [found] if found else [sys.executable, "-m", "mid_metric"]


def run(*args: str, cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run the real console script with ``args`` in ``cwd``; return the finished process (text output)."""
    return subprocess.run(
        [*script(), *args], cwd=cwd, env=env or ENV, capture_output=True, text=True, timeout=300, check=False
    )


#: Runs ``mid_metric.cli.main`` on each ``[cwd, argv]`` of a JSON list in ``argv[1]``, in one interpreter.
_SESSION = """
import contextlib, io, json, os, sys
from mid_metric import cli
done = []
for cwd, argv in json.loads(sys.argv[1]):
    os.chdir(cwd)
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            status = cli.main(argv)
        except SystemExit as stop:
            status = stop.code
    done.append([argv, status, out.getvalue(), err.getvalue()])
sys.__stdout__.write(json.dumps(done))
"""


def run_in_one_process(calls: list[tuple[list[str], Path]], env: dict) -> list[subprocess.CompletedProcess]:
    """Run several ``mid-metric`` calls, one after the other, in one fresh interpreter with the environment ``env``.

    For tests whose subject is the environment a process starts with (an offline Hugging Face cache set by
    ``HF_HUB_CACHE``), at the cost of one interpreter start rather than one per call. Each call runs in its own
    folder (``calls`` holds ``(argv, cwd)`` pairs) and gets its own captured output.
    """
    payload = json.dumps([[str(cwd), list(argv)] for argv, cwd in calls])
    proc = subprocess.run(
        [sys.executable, "-c", _SESSION, payload], env=env, capture_output=True, text=True, timeout=300, check=False
    )
    assert proc.returncode == 0, proc.stderr
    return [subprocess.CompletedProcess(argv, status, out, err) for argv, status, out, err in json.loads(proc.stdout)]


def count_encoded_images(monkeypatch) -> list[int]:
    """Spy on the command line's image encoder: the returned list gets the number of images of each call."""
    from mid_metric.cli import session

    encoded: list[int] = []
    real_encode = session.encode_images

    def counting(table, *args):
        encoded.append(len(table.pairs))
        return real_encode(table, *args)

    monkeypatch.setattr(session, "encode_images", counting)
    return encoded


def write_csv(path: Path, rows: list[dict], columns: list[str]) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    return path


def close(a: float, b: float, tol: float = 1e-4) -> bool:
    return abs(a - b) <= tol * max(1.0, abs(b))


def unit(rows: torch.Tensor) -> torch.Tensor:
    """Rows scaled to norm 1."""
    return rows / rows.norm(dim=1, keepdim=True)


def gaussian_features(tmp_path: Path) -> tuple[Path, Path, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """80 correlated Gaussian reference pairs (real.npz) and 30 candidates (cands.npz) in R^3 x R^3, and the arrays."""
    gen = torch.Generator().manual_seed(8)
    x = torch.randn(80, 3, generator=gen, dtype=torch.float64)
    y = 0.6 * x + 0.8 * torch.randn(80, 3, generator=gen, dtype=torch.float64)
    xc = torch.randn(30, 3, generator=gen, dtype=torch.float64)
    yc = 0.4 * xc + 0.9 * torch.randn(30, 3, generator=gen, dtype=torch.float64)
    np.savez(tmp_path / "real.npz", image_features=x.numpy(), text_features=y.numpy())
    np.savez(tmp_path / "cands.npz", image_features=xc.numpy(), text_features=yc.numpy())
    return tmp_path / "real.npz", tmp_path / "cands.npz", x, y, xc, yc
