"""``mid-metric demo`` and ``--help``: the closed-form Gaussian demo, its figure, its options, and a closed stdout.

The demo's expected values are the closed form of its Gaussian model, derived in the test.
"""

from __future__ import annotations

import argparse
import io
import math
import re
import subprocess
import sys

import numpy as np
import pytest
import torch
from _cli import ENV, fail_cli, gaussian_features, script

from mid_metric import cli
from mid_metric.cli.parser import EXIT_BROKEN_PIPE

# ------------------------------------------------------------------------------------------------ demo
DEMO_WRAPPER = """
import runpy, sys
sys.argv = ["mid-metric", *sys.argv[1:]]
try:
    runpy.run_module("mid_metric", run_name="__main__", alter_sys=True)
    status = 0
except SystemExit as exit:
    status = exit.code
# torchmetrics itself imports the `transformers` package shell when it is installed; CLIP and our feature
# model code must stay unloaded.
heavy = sorted(m for m in sys.modules if m.startswith(("transformers.models.clip", "transformers.modeling_utils")))
print("HEAVY_MODULES=" + ",".join(heavy), file=sys.stderr)
sys.exit(status)
"""


def test_demo_prints_mid_next_to_the_analytic_value_and_plots(tmp_path):
    # `python -m mid_metric demo`, with a check that no CLIP model code was imported.
    plot = tmp_path / "demo.png"
    proc = subprocess.run(
        [sys.executable, "-c", DEMO_WRAPPER, "demo", "--plot", str(plot)],
        env=ENV,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert "HEAVY_MODULES=\n" in proc.stderr + "\n", proc.stderr

    # Independent closed form: d = 8 coordinate pairs with rho = 0.6; shuffling a fraction f of the captions
    # scales the cross-correlation by (1 - f), so MID(f) = I - f * d * rho^2 / (1 - rho^2).
    true_mi = -4.0 * math.log(1 - 0.36)
    assert f"{true_mi:.4f}" in proc.stdout
    rows = re.findall(r"^\s+([a-z ]+?)\s+(\d+)%\s+(-?\d+\.\d+)\s+(\d+\.\d+)\s+(-?\d+\.\d+)", proc.stdout, re.M)
    assert [float(r[1]) / 100 for r in rows] == [0.0, 0.25, 0.5, 0.75, 1.0], proc.stdout
    for label, percent, mid, standard_error, analytic in rows:
        expected = true_mi - float(percent) / 100 * 8 * 0.36 / 0.64
        assert float(analytic) == pytest.approx(expected, abs=1e-4), label
        assert abs(float(mid) - expected) < max(0.08, 5 * float(standard_error)), label
    aligned, shuffled = float(rows[0][2]), float(rows[-1][2])
    assert abs(aligned - true_mi) < 0.05  # aligned candidates score about the true MI ...
    assert shuffled < true_mi - 4.0  # ... and shuffled ones far below it
    assert "What MID measures" in proc.stdout
    image_module = pytest.importorskip("PIL.Image")
    with image_module.open(plot) as image:
        assert image.format == "PNG" and image.size[0] > 200


def test_help_of_the_command_and_of_each_subcommand(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for word in ("usage: mid-metric", "demo", "reference", "score", "--version", "examples:", "higher is better"):
        assert word in text.replace("Higher is better", "higher is better")
    expected = {
        "demo": ["--plot", "--seed", "analytic"],
        "reference": ["PAIRS", "--output", "--model", "--device", "--batch-size", "--num-workers", "--eps", "--quiet"],
        "score": [
            "--reference",
            "--reference-pairs",
            "--per-sample",
            "--json",
            "--generated-caption-column",
            "--image-column",
            "--caption-column",
            "image_features",
            "cuda",
            "--features-from-model",
            "--no-check-feature-extractor",
            "check_feature_extractor=False",
            "fingerprint",
            "--jackknife-key",
            "--jackknife-groups",
            "stdout",
        ],
    }
    for command, words in expected.items():
        with pytest.raises(SystemExit) as exit_info:
            cli.main([command, "--help"])
        assert exit_info.value.code == 0
        text = " ".join(capsys.readouterr().out.split())
        for word in words:
            assert word in text, (command, word)


# ------------------------------------------------------------------------------ options checked before any work
def test_plot_path_and_format_are_checked_before_the_demo_runs(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    for plot, words in (
        (tmp_path / "missing" / "demo.png", ("--plot", "folder", "does not exist")),
        (tmp_path / "demo.xyz", ("--plot", "'xyz'", ".png")),
        (tmp_path, ("--plot", "is a folder")),
    ):
        fail_cli(["demo", "--plot", str(plot)], capsys, *words)
        assert capsys.readouterr().out == ""  # the table was never computed, so never printed
    assert sorted(tmp_path.iterdir()) == []


def test_an_out_of_range_seed_is_one_line(tmp_path, capsys):
    for seed in ("-1", str(2**64), str(-(2**70))):
        fail_cli(["demo", f"--seed={seed}"], capsys, f"--seed {seed}", "out of range", "2**64 - 1")
        assert capsys.readouterr().out == ""
    # The bootstrap's seed follows the same rule, before any file is read.
    missing = [str(tmp_path / "scores.csv"), str(tmp_path / "ratings.csv")]
    argv = ["correlate", *missing, "--key", "k", "--score-column", "s", "--rating-column", "r"]
    fail_cli([*argv, f"--seed={2**64}"], capsys, "--seed", "out of range")
    # The largest seed is accepted by both generators that the commands use.
    from mid_metric.cli.parser import SEED_RANGE, check_arguments

    check_arguments(argparse.Namespace(seed=SEED_RANGE[1]))
    torch.Generator().manual_seed(SEED_RANGE[1])
    np.random.default_rng(SEED_RANGE[1])


# ------------------------------------------------------------------------------------------ a closed stdout
def test_output_into_a_closed_pipe_ends_quietly(tmp_path):
    # `mid-metric demo | head -0`: the reader is gone before the demo prints its table.
    proc = subprocess.Popen([*script(), "demo"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=ENV, cwd=tmp_path)
    proc.stdout.close()
    err = proc.stderr.read().decode()
    proc.stderr.close()
    assert proc.wait(timeout=300) == EXIT_BROKEN_PIPE == 141, err
    assert err == ""


class _ClosedPipe(io.StringIO):
    """A stdout whose reader has gone: every write fails as a write to a closed pipe does."""

    def write(self, text: str) -> int:
        raise BrokenPipeError(32, "Broken pipe")


def test_a_closed_stdout_in_process_gives_the_pipe_status_and_no_error_line(tmp_path, capsys, monkeypatch):
    real, cands, *_ = gaussian_features(tmp_path)
    for argv in (
        ["score", str(cands), "--reference-pairs", str(real), "-q"],
        ["score", str(cands), "--reference-pairs", str(real), "--per-sample", "-", "-q"],
    ):
        monkeypatch.setattr(sys, "stdout", _ClosedPipe())
        assert cli.main(argv) == EXIT_BROKEN_PIPE
        monkeypatch.undo()
        assert capsys.readouterr().err == ""
