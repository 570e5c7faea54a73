"""The ``mid-metric`` command line, run as the real console script through subprocess, offline.

Expected values come from independent computations: the closed-form MID of the Gaussian demo, and the functional
API (``mid_metric.functional``) on features that the test computes itself from the same images and captions. Bad
input is checked for its exit status, its one-line message, and for leaving no output file behind; those checks
call ``cli.main`` in-process (the same code the console script runs), except two that go through the real script.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import json
import math
import os
import re
import shutil
import stat
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from _cli import fail_cli
from clip_fixtures import TINY_PROJECTION_DIM, build_tiny_clip
from safetensors.torch import save_file

import mid_metric
from mid_metric import cli
from mid_metric.functional import mutual_information, mutual_information_divergence, pointwise_mutual_information

pytest.importorskip("PIL")
pytest.importorskip("transformers")
from PIL import Image  # noqa: E402

ENV = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", PYTHONIOENCODING="utf-8")
EPS = 1e-3
NUM_PAIRS = 40
NUM_CANDIDATES = 12


def script() -> list[str]:
    """The installed console script, or ``python -m mid_metric`` when the package is not installed."""
    found = shutil.which("mid-metric")
    return [found] if found else [sys.executable, "-m", "mid_metric"]


def run(*args: str, cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*script(), *args], cwd=cwd, env=env or ENV, capture_output=True, text=True, timeout=300, check=False
    )


def write_csv(path: Path, rows: list[dict], columns: list[str]) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    return path


def random_png(path: Path, rng: np.random.Generator, index: int) -> None:
    size = (20 + index % 7, 18 + index % 5)
    base = rng.integers(0, 256, size=3)
    noise = rng.integers(-60, 60, size=(size[1], size[0], 3))
    Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8)).save(path)


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """A tiny CLIP model, real pairs (CSV), candidate pairs in another folder (JSONL, other column names)."""
    root = tmp_path_factory.mktemp("cli")
    model = build_tiny_clip(root / "tiny-clip")
    rng = np.random.default_rng(0)
    (root / "real" / "images").mkdir(parents=True)
    real_rows = []
    for i in range(NUM_PAIRS):
        random_png(root / "real" / "images" / f"{i}.png", rng, i)
        real_rows.append({"image": f"images/{i}.png", "caption": f"a {i % 9} thing {i}", "generated": f"gen {i % 5}"})
    write_csv(root / "real" / "pairs.csv", real_rows, ["image", "caption", "generated"])
    (root / "gen" / "img").mkdir(parents=True)
    cand_rows = []
    for i in range(NUM_CANDIDATES):
        random_png(root / "gen" / "img" / f"g{i}.png", rng, i + 3)
        cand_rows.append({"file": f"img/g{i}.png", "prompt": real_rows[i]["caption"]})
    with open(root / "gen" / "cands.jsonl", "w", encoding="utf-8") as handle:
        for row in cand_rows:
            handle.write(json.dumps(row) + "\n")
    return {"root": root, "model": model, "real_rows": real_rows, "cand_rows": cand_rows}


@pytest.fixture(scope="module")
def extractor(work):
    from mid_metric.features import load_clip

    return load_clip(str(work["model"]), device="cpu")


def encode(extractor, folder: Path, images: list[str], captions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Independent features: PIL-decoded images and the captions, encoded in one batch each."""
    pictures = [Image.open(folder / name).convert("RGB") for name in images]
    return extractor.encode_images(pictures).double(), extractor.encode_texts(captions).double()


def close(a: float, b: float, tol: float = 1e-4) -> bool:
    return abs(a - b) <= tol * max(1.0, abs(b))


def identity_of(folder: Path) -> str:
    """The recorded name of a local model folder, derived independently: model_type and sha256 of the weights."""
    model_type = json.loads((folder / "config.json").read_text())["model_type"]
    digest = hashlib.sha256((folder / "model.safetensors").read_bytes()).hexdigest()
    return f"local:{model_type}@sha256:{digest[:16]}"


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
    with Image.open(plot) as image:
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
        ],
    }
    for command, words in expected.items():
        with pytest.raises(SystemExit) as exit_info:
            cli.main([command, "--help"])
        assert exit_info.value.code == 0
        text = " ".join(capsys.readouterr().out.split())
        for word in words:
            assert word in text, (command, word)


# ------------------------------------------------------------------------------------------ CLIP path
def test_reference_round_trip_score_json_and_per_sample(work, extractor, tmp_path):
    root, model = work["root"], str(work["model"])
    ref = tmp_path / "ref.safetensors"
    proc = run(
        "reference",
        "real/pairs.csv",
        "-o",
        str(ref),
        "--model",
        model,
        "--eps",
        str(EPS),
        "--batch-size",
        "7",
        "-q",
        cwd=root,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == "" and proc.stdout == ""  # --quiet

    real = work["real_rows"]
    x, y = encode(extractor, root / "real", [r["image"] for r in real], [r["caption"] for r in real])

    from mid_metric.reference_io import load_reference_statistics

    packed, meta = load_reference_statistics(ref)
    assert meta["feature_extractor"] == identity_of(work["model"])  # not the path, which depends on the cwd
    assert (meta["image_dim"], meta["text_dim"], meta["num_samples"]) == (TINY_PROJECTION_DIM,) * 2 + (NUM_PAIRS,)
    assert meta["eps"] == EPS

    per_sample = tmp_path / "per_sample.csv"
    proc = run(
        "score",
        "gen/cands.jsonl",
        "--reference",
        str(ref),
        "--image-column",
        "file",
        "--caption-column",
        "prompt",
        "--json",
        "--per-sample",
        str(per_sample),
        "--num-workers",
        "1",
        "--batch-size",
        "5",
        "--device",
        "cpu",
        "--model",  # a local model is recorded by its fingerprint: the folder must be given again
        model,
        "--quiet",
        cwd=root,
    )
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)

    cands = work["cand_rows"]
    xc, yc = encode(extractor, root / "gen", [r["file"] for r in cands], [r["prompt"] for r in cands])
    expected_mid = mutual_information_divergence(x, y, xc, yc, eps=EPS).item()
    assert close(report["mid"], expected_mid)
    assert close(report["mutual_information"], mutual_information(x, y, eps=EPS).item())
    assert close(report["distance"], expected_mid - report["mutual_information"])
    assert report["num_reference"] == NUM_PAIRS and report["num_candidates"] == NUM_CANDIDATES
    assert report["model"] == identity_of(work["model"]) and report["version"] == mid_metric.__version__
    assert report["reference_model"] == report["model"]
    assert report["eps"] == EPS  # taken from the reference file
    assert (report["image_dim"], report["text_dim"]) == (TINY_PROJECTION_DIM, TINY_PROJECTION_DIM)

    with open(per_sample, newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert [r["image"] for r in rows] == [c["file"] for c in cands]
    assert [r["caption"] for r in rows] == [c["prompt"] for c in cands]
    assert [int(r["row"]) for r in rows] == list(range(1, NUM_CANDIDATES + 1))
    expected_pmi = pointwise_mutual_information(x, y, xc, yc, eps=EPS)
    for row, value in zip(rows, expected_pmi.tolist()):
        assert close(float(row["pmi"]), value)


def test_captioning_with_reference_pairs_and_generated_captions(work, extractor, tmp_path):
    root, model = work["root"], str(work["model"])
    proc = run(
        "score",
        "real/pairs.csv",
        "--reference-pairs",
        "real/pairs.csv",
        "--generated-caption-column",
        "generated",
        "--model",
        model,
        "--eps",
        str(EPS),
        cwd=root,
    )
    assert proc.returncode == 0, proc.stderr
    real = work["real_rows"]
    x, y = encode(extractor, root / "real", [r["image"] for r in real], [r["caption"] for r in real])
    _, y_gen = encode(extractor, root / "real", [], [r["generated"] for r in real])
    expected_mid = mutual_information_divergence(x, y, x, y_gen, eps=EPS).item()
    # The text output: MID to 6 decimals, what it means, the counts and the model; messages go to stderr.
    shown = re.search(r"^MID: (-?\d+\.\d+)", proc.stdout, re.M)
    assert shown and abs(float(shown.group(1)) - expected_mid) < 2e-6 * max(1.0, abs(expected_mid)), proc.stdout
    assert "higher is better" in proc.stdout and f"{NUM_PAIRS} candidate pairs" in proc.stdout
    assert identity_of(work["model"]) in proc.stdout and "Loading" in proc.stderr


# ----------------------------------------------------------------------------------- precomputed features
def test_precomputed_features_npz_and_safetensors(tmp_path, capsys):
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(60, 3, generator=gen)
    y = 0.7 * x + 0.5 * torch.randn(60, 4, generator=gen)[:, :3]
    y = torch.cat([y, torch.randn(60, 1, generator=gen)], dim=1)  # Dy = 4 != Dx
    xc = torch.randn(25, 3, generator=gen)
    yc = torch.cat([0.3 * xc, torch.randn(25, 1, generator=gen)], dim=1) + 0.2 * torch.randn(25, 4, generator=gen)
    np.savez(tmp_path / "real.npz", image_features=x.numpy(), text_features=y.numpy())
    save_file({"image_features": xc.half(), "text_features": yc.half()}, str(tmp_path / "cands.safetensors"))

    assert cli.main(["reference", str(tmp_path / "real.npz"), "-o", str(tmp_path / "ref.safetensors"), "-q"]) == 0
    proc = run(
        "score",
        "cands.safetensors",
        "--reference",
        "ref.safetensors",
        "--json",
        "--per-sample",
        "pmi.csv",
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    xc, yc = xc.half().double(), yc.half().double()  # what the file holds
    assert close(report["mid"], mutual_information_divergence(x.double(), y.double(), xc, yc).item(), 1e-8)
    assert report["model"] is None and (report["image_dim"], report["text_dim"]) == (3, 4)
    # The paper's estimator by default, with a 95% interval around it.
    assert report["bias_corrected"] is False and report["ci_level"] == 0.95
    assert report["ci_low"] < report["mid"] < report["ci_high"] and report["standard_error"] > 0
    # --bias-correction switches to the corrected estimator of the library.
    argv = ["score", str(tmp_path / "cands.safetensors"), "--reference", str(tmp_path / "ref.safetensors")]
    assert cli.main([*argv, "--json", "--bias-correction", "-q"]) == 0
    corrected = json.loads(capsys.readouterr().out)
    expected = mutual_information_divergence(x.double(), y.double(), xc, yc, bias_correction=True).item()
    assert corrected["bias_corrected"] is True and close(corrected["mid"], expected, 1e-8)
    assert not close(corrected["mid"], report["mid"], 1e-3)
    with open(tmp_path / "pmi.csv", newline="") as handle:
        values = [float(r["pmi"]) for r in csv.DictReader(handle)]
    expected = pointwise_mutual_information(x.double(), y.double(), xc, yc)
    assert np.allclose(values, expected.numpy(), rtol=1e-9, atol=1e-9)


# --------------------------------------------------------------------------------------------- bad input
def fail(argv: list[str], capsys, *phrases: str) -> str:
    return fail_cli([*argv, "--quiet"], capsys, *phrases)  # --quiet: the error is all that stderr holds


@pytest.fixture()
def bad(work, tmp_path):
    """A fresh folder with a copy of the real images and helpers to write broken pairs files."""
    shutil.copytree(work["root"] / "real" / "images", tmp_path / "images")
    return tmp_path


def test_missing_pairs_file_and_missing_column(work, bad, capsys):
    out = bad / "ref.safetensors"
    model = str(work["model"])
    fail(["reference", str(bad / "nope.csv"), "-o", str(out), "--model", model], capsys, "nope.csv", "does not exist")
    write_csv(bad / "cols.csv", [{"image": "images/0.png", "text": "a cat"}], ["image", "text"])
    fail(
        ["reference", str(bad / "cols.csv"), "-o", str(out), "--model", model],
        capsys,
        "cols.csv",
        "no column 'caption'",
        "'text'",
        "--caption-column",
    )
    fail(
        [
            "reference",
            str(bad / "cols.csv"),
            "-o",
            str(out),
            "--model",
            model,
            "--image-column",
            "path",
            "--caption-column",
            "text",
        ],
        capsys,
        "no column 'path'",
        "--image-column",
    )
    jsonl = bad / "gen.jsonl"
    jsonl.write_text('{"image": "images/0.png", "caption": "x", "generated": "y"}\n{"image": "images/1.png"}\n')
    fail(
        [
            "score",
            str(jsonl),
            "--reference-pairs",
            str(jsonl),
            "--generated-caption-column",
            "generated",
            "--model",
            model,
        ],
        capsys,
        "row 2",
        "no column 'generated'",
        "--generated-caption-column",
    )
    real = str(work["root"] / "real" / "pairs.csv")
    fail(["reference", real, "-o", str(out), "--model", model, "--device", "nodev"], capsys, "--device 'nodev'")
    assert not out.exists()


def test_missing_or_corrupt_image_and_empty_caption(work, bad, capsys):
    model = str(work["model"])
    rows = [{"image": f"images/{i}.png", "caption": f"c {i}"} for i in range(NUM_PAIRS)]
    out = bad / "ref.safetensors"

    missing = [dict(r) for r in rows]
    missing[6]["image"] = "images/absent.png"
    write_csv(bad / "missing.csv", missing, ["image", "caption"])
    fail(["reference", str(bad / "missing.csv"), "-o", str(out), "--model", model], capsys, "row 7", "absent.png")

    empty = [dict(r) for r in rows]
    empty[4]["caption"] = "   "
    write_csv(bad / "empty.csv", empty, ["image", "caption"])
    fail(["reference", str(bad / "empty.csv"), "-o", str(out), "--model", model], capsys, "row 5", "empty caption")
    assert not out.exists()

    # A corrupt image, through the real console script: file and row are named, and no output file is left.
    (bad / "images" / "9.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    write_csv(bad / "pairs.csv", rows, ["image", "caption"])
    proc = run("reference", "pairs.csv", "-o", "ref.safetensors", "--model", model, "--batch-size", "4", cwd=bad)
    assert proc.returncode == 1
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("mid-metric: error:") and "row 10" in last and "9.png" in last, proc.stderr
    assert not out.exists() and not [p for p in bad.iterdir() if p.name.startswith(".ref.safetensors")]
    truncated = (work["root"] / "real" / "images" / "2.png").read_bytes()
    (bad / "images" / "9.png").write_bytes(truncated[: len(truncated) // 2])
    fail(["reference", str(bad / "pairs.csv"), "-o", str(out), "--model", model], capsys, "row 10", "9.png")
    assert not out.exists()


def test_reference_from_another_model_or_of_other_sizes(work, tmp_path, capsys):
    root, model = work["root"], str(work["model"])
    ref = tmp_path / "ref.safetensors"
    assert cli.main(["reference", str(root / "real" / "pairs.csv"), "-o", str(ref), "--model", model, "-q"]) == 0
    capsys.readouterr()
    cands = [str(root / "gen" / "cands.jsonl"), "--image-column", "file", "--caption-column", "prompt"]
    per_sample = tmp_path / "pmi.csv"
    fail(
        [
            "score",
            *cands,
            "--reference",
            str(ref),
            "--model",
            "openai/clip-vit-large-patch14",
            "--per-sample",
            str(per_sample),
        ],
        capsys,
        "was built with model",
        "openai/clip-vit-large-patch14",
    )
    assert not per_sample.exists()

    # A reference of 3 + 3 precomputed features cannot score 16 + 16 CLIP features.
    gen = torch.Generator().manual_seed(0)
    np.savez(
        tmp_path / "small.npz",
        image_features=torch.randn(30, 3, generator=gen).numpy(),
        text_features=torch.randn(30, 3, generator=gen).numpy(),
    )
    small_ref = tmp_path / "small.safetensors"
    assert cli.main(["reference", str(tmp_path / "small.npz"), "-o", str(small_ref), "-q"]) == 0
    fail(["score", *cands, "--reference", str(small_ref), "--model", model], capsys, "(16, 16)", "(3, 3)")
    np.savez(tmp_path / "wide.npz", image_features=np.ones((5, 4), np.float32), text_features=np.ones((5, 3), "f4"))
    fail(["score", str(tmp_path / "wide.npz"), "--reference", str(small_ref)], capsys, "(4, 3)", "(3, 3)")
    fail(["score", *cands, "--reference", str(small_ref)], capsys, "--model")  # no model recorded, none given
    bogus = tmp_path / "bogus.safetensors"
    bogus.write_bytes(b"not a safetensors file")
    fail(["score", str(tmp_path / "wide.npz"), "--reference", str(bogus)], capsys, "bogus.safetensors")
    fail(["score", str(tmp_path / "wide.npz"), "--reference", str(tmp_path / "none.safetensors")], capsys, "exist")


def test_too_few_pairs_for_a_full_rank_covariance(work, tmp_path, capsys):
    root, model = work["root"], str(work["model"])
    few = write_csv(tmp_path / "few.csv", work["real_rows"][:20], ["image", "caption", "generated"])
    for row in work["real_rows"][:20]:
        (tmp_path / "images").mkdir(exist_ok=True)
        shutil.copy(root / "real" / row["image"], tmp_path / row["image"])
    out = tmp_path / "ref.safetensors"
    dim = 2 * TINY_PROJECTION_DIM
    fail(["reference", str(few), "-o", str(out), "--model", model], capsys, "20 pairs", f"{dim + 1}", "--eps")
    assert not out.exists()
    fail(["score", str(few), "--reference-pairs", str(few), "--model", model], capsys, f"{dim + 1}", "--eps")
    # With --eps the same pairs are usable.
    assert cli.main(["reference", str(few), "-o", str(out), "--model", model, "--eps", "5e-4", "-q"]) == 0
    assert out.exists()


def test_bad_features_files_and_usage_errors(tmp_path, capsys):
    np.savez(tmp_path / "nokey.npz", image_features=np.ones((5, 2), np.float32))
    fail(["reference", str(tmp_path / "nokey.npz"), "-o", str(tmp_path / "r.safetensors")], capsys, "text_features")
    np.savez(tmp_path / "objects.npz", image_features=np.array([{"a": 1}], dtype=object), text_features=np.ones(1))
    fail(["reference", str(tmp_path / "objects.npz"), "-o", str(tmp_path / "r.safetensors")], capsys, "objects.npz")
    np.savez(tmp_path / "ints.npz", image_features=np.ones((5, 2), np.int64), text_features=np.ones((5, 2)))
    fail(["reference", str(tmp_path / "ints.npz"), "-o", str(tmp_path / "r.safetensors")], capsys, "floating")
    (tmp_path / "pairs.txt").write_text("image,caption\n")
    fail(["reference", str(tmp_path / "pairs.txt"), "-o", str(tmp_path / "r.safetensors")], capsys, "unsupported")
    np.savez(tmp_path / "ok.npz", image_features=np.eye(8, 2), text_features=np.eye(8, 2)[::-1].copy())
    fail(["reference", str(tmp_path / "ok.npz"), "-o", str(tmp_path / "no" / "r.safetensors")], capsys, "folder")
    fail(["reference", str(tmp_path / "ok.npz"), "-o", str(tmp_path)], capsys, "is a folder")
    assert not (tmp_path / "r.safetensors").exists()
    # Command-line usage errors are argparse's: exit status 2 with a usage line.
    for argv in (
        ["score", "x.csv"],
        ["reference", "x.csv"],
        ["demo", "--seed", "x"],
        ["score", "x.csv", "--reference", "r", "--batch-size", "0"],
        ["score", "x.csv", "--reference", "r", "--eps", "-1"],
    ):
        with pytest.raises(SystemExit) as exit_info:
            cli.main(argv)
        assert exit_info.value.code == 2
        assert "usage:" in capsys.readouterr().err


def test_progress_bar_on_a_tty_only_and_never_with_quiet(work, tmp_path, monkeypatch, capsys):
    pytest.importorskip("tqdm")
    root, model = work["root"], str(work["model"])
    pairs = str(root / "real" / "pairs.csv")

    class TTY(io.StringIO):
        def isatty(self) -> bool:
            return True

    for quiet in (False, True):
        stream = TTY()
        monkeypatch.setattr(sys, "stderr", stream)
        argv = ["reference", pairs, "-o", str(tmp_path / "r.safetensors"), "--model", model, "--batch-size", "8"]
        assert cli.main(argv + (["--quiet"] if quiet else [])) == 0
        text = stream.getvalue()
        if quiet:
            assert text == ""
        else:
            assert "Encoding images" in text and f"{NUM_PAIRS}/{NUM_PAIRS}" in text
    monkeypatch.undo()
    capsys.readouterr()


# ------------------------------------------------------------------------------------ inputs are never outputs
def test_outputs_that_are_inputs_are_refused(work, tmp_path, capsys):
    root, model = work["root"], str(work["model"])
    gen = torch.Generator().manual_seed(2)
    np.savez(
        tmp_path / "real.npz",
        image_features=torch.randn(30, 3, generator=gen).numpy(),
        text_features=torch.randn(30, 3, generator=gen).numpy(),
    )
    np.savez(
        tmp_path / "cands.npz",
        image_features=torch.randn(9, 3, generator=gen).numpy(),
        text_features=torch.randn(9, 3, generator=gen).numpy(),
    )
    ref = tmp_path / "ref.safetensors"
    assert cli.main(["reference", str(tmp_path / "real.npz"), "-o", str(ref), "-q"]) == 0
    capsys.readouterr()
    files = [tmp_path / "real.npz", tmp_path / "cands.npz", ref]
    before = {path: path.read_bytes() for path in files}

    cands = str(tmp_path / "cands.npz")
    fail(["score", cands, "--reference", str(ref), "--per-sample", str(ref)], capsys, "--per-sample", "input")
    (tmp_path / "sub").mkdir()
    roundabout = str(tmp_path / "sub" / ".." / "ref.safetensors")
    fail(["score", cands, "--reference", str(ref), "--per-sample", roundabout], capsys, "refusing to overwrite")
    fail(["score", cands, "--reference", str(ref), "--per-sample", cands], capsys, "cands.npz")
    os.symlink(ref, tmp_path / "link.csv")
    fail(["score", cands, "--reference", str(ref), "--per-sample", str(tmp_path / "link.csv")], capsys, "input")
    fail(
        ["score", cands, "--reference-pairs", str(tmp_path / "real.npz"), "--per-sample", str(tmp_path / "real.npz")],
        capsys,
        "real.npz",
    )
    fail(["reference", str(tmp_path / "real.npz"), "-o", str(tmp_path / "real.npz")], capsys, "--output", "input")
    assert {path: path.read_bytes() for path in files} == before

    # The pairs file of a CLIP run, its images and the model's own files are inputs too.
    pairs = tmp_path / "pairs.csv"
    shutil.copy(root / "real" / "pairs.csv", pairs)
    shutil.copytree(root / "real" / "images", tmp_path / "images")
    image = tmp_path / "images" / "3.png"
    protected = [pairs, image, work["model"] / "model.safetensors"]
    before = {path: path.read_bytes() for path in protected}
    for output in protected:
        fail(["reference", str(pairs), "-o", str(output), "--model", model], capsys, "refusing to overwrite")
    fail(
        [
            "score",
            str(pairs),
            "--reference-pairs",
            str(pairs),
            "--model",
            model,
            "--eps",
            "1e-3",
            "--per-sample",
            str(image),
        ],
        capsys,
        "3.png",
    )
    assert {path: path.read_bytes() for path in protected} == before


# ------------------------------------------------------------------------------------ one line, never a traceback
def png_bytes(width: int, height: int) -> bytes:
    """A PNG that announces width x height pixels (its header only, written by hand)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")
    )


def test_decompression_bomb_image_is_one_line(work, bad):
    # 100,000 x 100,000 pixels in a 100-byte file: PIL refuses it as a decompression bomb (DecompressionBombError).
    (bad / "images" / "5.png").write_bytes(png_bytes(100_000, 100_000))
    rows = [{"image": f"images/{i}.png", "caption": f"c {i}"} for i in range(NUM_PAIRS)]
    write_csv(bad / "pairs.csv", rows, ["image", "caption"])
    proc = run("reference", "pairs.csv", "-o", "ref.safetensors", "--model", str(work["model"]), "-q", cwd=bad)
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("mid-metric: error:"), proc.stderr
    assert "row 6" in lines[0] and "5.png" in lines[0] and "decompression bomb" in lines[0]
    assert not (bad / "ref.safetensors").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without CUDA")
def test_unavailable_device_is_one_line_in_every_command(work, tmp_path, capsys):
    rng = np.random.default_rng(3)
    np.savez(tmp_path / "f.npz", image_features=rng.normal(size=(30, 3)), text_features=rng.normal(size=(30, 3)))
    out = tmp_path / "ref.safetensors"
    features_only = ["reference", str(tmp_path / "f.npz"), "-o", str(out)]
    for device in ("cuda", "cuda:1"):
        fail([*features_only, "--device", device], capsys, f"--device {device!r}", "--device cpu")
    assert not out.exists()
    assert cli.main([*features_only, "--device", "cpu", "-q"]) == 0
    fail(["score", str(tmp_path / "f.npz"), "--reference", str(out), "--device", "cuda"], capsys, "not available")
    fail(
        ["score", str(tmp_path / "f.npz"), "--reference-pairs", str(tmp_path / "f.npz"), "--device", "cuda"],
        capsys,
        "not available",
    )
    # A CLIP run, through the real console script: one line, no traceback.
    real = str(work["root"] / "real" / "pairs.csv")
    proc = run(
        "reference",
        real,
        "-o",
        str(tmp_path / "clip.safetensors"),
        "--model",
        str(work["model"]),
        "--device",
        "cuda",
        cwd=tmp_path,
    )
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()] and "--device 'cuda'" in proc.stderr
    assert not (tmp_path / "clip.safetensors").exists()


def test_reference_folder_is_reported_as_a_folder(tmp_path, capsys):
    np.savez(tmp_path / "f.npz", image_features=np.eye(12, 3, dtype="f4"), text_features=np.eye(12, 3, k=1, dtype="f4"))
    (tmp_path / "refs").mkdir()
    err = fail(["score", str(tmp_path / "f.npz"), "--reference", str(tmp_path / "refs")], capsys, "is a folder")
    assert "does not exist" not in err


# ------------------------------------------------------------------------------------------ model identity
@pytest.fixture(scope="module")
def moved(work, tmp_path_factory):
    """A layout where the model is given by relative paths: root/tinyclip, root/data.csv, root/elsewhere/."""
    root = tmp_path_factory.mktemp("relative")
    shutil.copytree(work["model"], root / "tinyclip")
    shutil.copytree(work["root"] / "real" / "images", root / "images")
    shutil.copy(work["root"] / "real" / "pairs.csv", root / "data.csv")
    (root / "elsewhere").mkdir()
    proc = run(
        "reference", "data.csv", "-o", "ref.safetensors", "--model", "tinyclip", "--eps", str(EPS), "-q", cwd=root
    )
    assert proc.returncode == 0, proc.stderr
    return root


def test_local_model_is_recorded_by_fingerprint_not_path(moved, work, extractor, capsys, monkeypatch):
    from mid_metric.reference_io import load_reference_statistics

    _, meta = load_reference_statistics(moved / "ref.safetensors")
    assert meta["feature_extractor"] == identity_of(moved / "tinyclip") == identity_of(work["model"])

    elsewhere = moved / "elsewhere"
    # Without --model, the recorded local model cannot be loaded: one clear line asks for it (no download tried).
    proc = run("score", "../data.csv", "--reference", "../ref.safetensors", cwd=elsewhere)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert "--model PATH" in last and identity_of(work["model"]) in last and "Could not load" not in last

    # With the folder given by another relative path, it is recognised as the same model, and scores right.
    proc = run(
        "score",
        "../data.csv",
        "--reference",
        "../ref.safetensors",
        "--model",
        "../tinyclip",
        "--json",
        "-q",
        cwd=elsewhere,
    )
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    real = work["real_rows"]
    x, y = encode(extractor, work["root"] / "real", [r["image"] for r in real], [r["caption"] for r in real])
    assert close(report["mid"], mutual_information_divergence(x, y, x, y, eps=EPS).item())
    assert report["model"] == identity_of(work["model"])

    # Another copy of the same weights is the same model too; other weights are another model.
    monkeypatch.chdir(elsewhere)
    argv = ["score", "../data.csv", "--reference", "../ref.safetensors", "--json", "-q"]
    assert cli.main([*argv, "--model", str(work["model"])]) == 0
    capsys.readouterr()
    other = build_tiny_clip(moved / "other-clip", seed=1)
    err = fail([*argv, "--model", "../other-clip"], capsys, "was built with model", "--no-check-feature-extractor")
    assert identity_of(other) in err and identity_of(work["model"]) in err
    # ... unless the check is turned off, and then both names are reported.
    assert cli.main([*argv, "--model", "../other-clip", "--no-check-feature-extractor"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["model"] == identity_of(other) and report["reference_model"] == identity_of(work["model"])


def test_hub_id_is_recorded_as_it_is_and_loaded_from_the_cache(work, extractor, tmp_path):
    # An offline Hugging Face cache that holds the tiny model under the id "tiny-org/tiny-clip".
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--tiny-org--tiny-clip"
    shutil.copytree(work["model"], repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    env = dict(ENV, HF_HUB_CACHE=str(tmp_path / "hub"))
    root = work["root"]
    ref = tmp_path / "ref.safetensors"
    proc = run(
        "reference",
        "real/pairs.csv",
        "-o",
        str(ref),
        "--model",
        "tiny-org/tiny-clip",
        "--eps",
        str(EPS),
        "-q",
        cwd=root,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr
    from mid_metric.reference_io import load_reference_statistics

    assert load_reference_statistics(ref)[1]["feature_extractor"] == "tiny-org/tiny-clip"
    # score takes the model from the file, from any folder.
    proc = run(
        "score",
        str(root / "gen" / "cands.jsonl"),
        "--image-column",
        "file",
        "--caption-column",
        "prompt",
        "--reference",
        str(ref),
        "--json",
        "-q",
        cwd=tmp_path,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["model"] == "tiny-org/tiny-clip"
    real, cands = work["real_rows"], work["cand_rows"]
    x, y = encode(extractor, root / "real", [r["image"] for r in real], [r["caption"] for r in real])
    xc, yc = encode(extractor, root / "gen", [r["file"] for r in cands], [r["prompt"] for r in cands])
    assert close(report["mid"], mutual_information_divergence(x, y, xc, yc, eps=EPS).item())
    # A local copy of the hub model is another name: refused, unless the check is turned off.
    proc = run(
        "score",
        str(root / "real" / "pairs.csv"),
        "--reference",
        str(ref),
        "--model",
        str(work["model"]),
        cwd=tmp_path,
        env=env,
    )
    assert proc.returncode == 1 and "--no-check-feature-extractor" in proc.stderr, proc.stderr
    proc = run(
        "score",
        str(root / "real" / "pairs.csv"),
        "--reference",
        str(ref),
        "--model",
        str(work["model"]),
        "--no-check-feature-extractor",
        "--json",
        "-q",
        cwd=tmp_path,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["reference_model"] == "tiny-org/tiny-clip"


# ---------------------------------------------------------------------------------------- mixed feature sources
def test_features_of_unknown_origin_against_a_model_are_refused_unless_stated(work, extractor, tmp_path, capsys):
    root, model = work["root"], str(work["model"])
    real = work["real_rows"]
    x, y = encode(extractor, root / "real", [r["image"] for r in real], [r["caption"] for r in real])
    ref = tmp_path / "clip-ref.safetensors"
    assert (
        cli.main(
            ["reference", str(root / "real" / "pairs.csv"), "-o", str(ref), "--model", model, "--eps", str(EPS), "-q"]
        )
        == 0
    )
    capsys.readouterr()

    # Unnormalised random candidates (as in the report that printed -122256 with exit status 0).
    gen = torch.Generator().manual_seed(4)
    raw = {
        "image_features": torch.randn(20, TINY_PROJECTION_DIM, generator=gen) * 5,
        "text_features": torch.randn(20, TINY_PROJECTION_DIM, generator=gen) * 5,
    }
    save_file(raw, str(tmp_path / "raw.safetensors"))
    score_raw = ["score", str(tmp_path / "raw.safetensors"), "--reference", str(ref)]
    fail([*score_raw, "--json"], capsys, "unknown origin", identity_of(work["model"]), "--features-from-model")
    fail([*score_raw, "--model", model], capsys, "--features-from-model")  # naming the model is no statement

    # Stated: accepted, labelled with the model, and the un-normalised features are warned about.
    assert cli.main([*score_raw, "--json", "--features-from-model"]) == 0
    captured = capsys.readouterr()
    report = json.loads(captured.out)
    assert report["model"] == identity_of(work["model"])
    warnings = [line for line in captured.err.splitlines() if line.startswith("mid-metric: warning:")]
    assert len(warnings) == 2 and "image features" in warnings[0] and "text features" in warnings[1]
    expected_norm = math.sqrt(float(raw["image_features"].double().square().sum(1).mean()))
    assert f"{expected_norm:.6g}" in warnings[0] and "not L2-normalised" in warnings[0]

    # L2-normalised features of the same model: no warning, and the MID of the features themselves.
    xc, yc = encode(
        extractor, root / "gen", [r["file"] for r in work["cand_rows"]], [r["prompt"] for r in work["cand_rows"]]
    )
    save_file({"image_features": xc.float(), "text_features": yc.float()}, str(tmp_path / "good.safetensors"))
    assert (
        cli.main(
            [
                "score",
                str(tmp_path / "good.safetensors"),
                "--reference",
                str(ref),
                "--json",
                "--features-from-model",
                "-q",
            ]
        )
        == 0
    )
    captured = capsys.readouterr()
    assert "warning" not in captured.err
    expected = mutual_information_divergence(x, y, xc.float().double(), yc.float().double(), eps=EPS).item()
    assert close(json.loads(captured.out)["mid"], expected)

    # The reverse: a reference of precomputed features, candidates encoded with a model.
    np.savez(tmp_path / "real.npz", image_features=x.float().numpy(), text_features=y.float().numpy())
    plain_ref = tmp_path / "plain-ref.safetensors"
    assert cli.main(["reference", str(tmp_path / "real.npz"), "-o", str(plain_ref), "--eps", str(EPS), "-q"]) == 0
    cands = [str(root / "gen" / "cands.jsonl"), "--image-column", "file", "--caption-column", "prompt"]
    fail(
        ["score", *cands, "--reference", str(plain_ref), "--model", model],
        capsys,
        "plain-ref.safetensors",
        "unknown origin",
        "--features-from-model",
    )
    fail(
        ["score", *cands, "--reference-pairs", str(tmp_path / "real.npz"), "--model", model, "--eps", str(EPS)],
        capsys,
        "real.npz",
        "unknown origin",
    )
    assert (
        cli.main(
            ["score", *cands, "--reference", str(plain_ref), "--model", model, "--features-from-model", "--json", "-q"]
        )
        == 0
    )
    report = json.loads(capsys.readouterr().out)
    assert report["model"] == report["reference_model"] == identity_of(work["model"])
    assert close(report["mid"], mutual_information_divergence(x, y, xc, yc, eps=EPS).item())
    # In a run of precomputed features only, --model alone would name nothing: it needs the statement.
    fail(
        ["score", str(tmp_path / "good.safetensors"), "--reference", str(plain_ref), "--model", model],
        capsys,
        "nothing is encoded",
        "--features-from-model",
    )
    assert (
        cli.main(
            [
                "score",
                str(tmp_path / "good.safetensors"),
                "--reference",
                str(plain_ref),
                "--model",
                model,
                "--features-from-model",
                "--json",
                "-q",
            ]
        )
        == 0
    )
    report = json.loads(capsys.readouterr().out)
    assert report["model"] == report["reference_model"] == identity_of(work["model"])
    # The statement needs a model to refer to.
    fail(
        ["score", str(tmp_path / "good.safetensors"), "--reference", str(plain_ref), "--features-from-model"],
        capsys,
        "--model",
    )


# ---------------------------------------------------------------------------------------------- the output
def gaussian_features(tmp_path: Path) -> tuple[Path, Path, torch.Tensor, ...]:
    gen = torch.Generator().manual_seed(8)
    x = torch.randn(80, 3, generator=gen, dtype=torch.float64)
    y = 0.6 * x + 0.8 * torch.randn(80, 3, generator=gen, dtype=torch.float64)
    xc = torch.randn(30, 3, generator=gen, dtype=torch.float64)
    yc = 0.4 * xc + 0.9 * torch.randn(30, 3, generator=gen, dtype=torch.float64)
    np.savez(tmp_path / "real.npz", image_features=x.numpy(), text_features=y.numpy())
    np.savez(tmp_path / "cands.npz", image_features=xc.numpy(), text_features=yc.numpy())
    return tmp_path / "real.npz", tmp_path / "cands.npz", x, y, xc, yc


def test_text_output_says_when_the_estimator_is_bias_corrected(tmp_path, capsys):
    real, cands, x, y, xc, yc = gaussian_features(tmp_path)
    argv = ["score", str(cands), "--reference-pairs", str(real), "-q"]
    assert cli.main([*argv, "--bias-correction"]) == 0
    text = capsys.readouterr().out
    shown = re.search(r"^MID \(bias-corrected\): (-?\d+\.\d+)", text, re.M)
    expected = mutual_information_divergence(x, y, xc, yc, bias_correction=True).item()
    assert shown and abs(float(shown.group(1)) - expected) < 1e-5, text
    assert "estimator: bias-corrected" in text
    assert cli.main(argv) == 0
    text = capsys.readouterr().out
    shown = re.search(r"^MID: (-?\d+\.\d+)", text, re.M)
    assert shown and abs(float(shown.group(1)) - mutual_information_divergence(x, y, xc, yc).item()) < 1e-5
    assert "MID (bias-corrected)" not in text and "estimator: the paper's estimator (not bias-corrected)" in text


@pytest.mark.parametrize("field", ["standard_error", "mid"])
@pytest.mark.parametrize("output", ["--json", "text"])
def test_non_finite_result_is_one_line_and_no_output(tmp_path, capsys, monkeypatch, field, output):
    # The library should not return such a result; if it does, the CLI must neither print Infinity nor exit 0.
    from mid_metric.metric import MutualInformationDivergence

    real_compute = MutualInformationDivergence.compute_with_ci

    def broken(self, *args, **kwargs):
        result = real_compute(self, *args, **kwargs)
        return dataclasses.replace(result, **{field: torch.tensor(float("inf"), dtype=torch.float64)})

    monkeypatch.setattr(MutualInformationDivergence, "compute_with_ci", broken)
    real, cands, *_ = gaussian_features(tmp_path)
    per_sample = tmp_path / "pmi.csv"
    argv = ["score", str(cands), "--reference-pairs", str(real), "--per-sample", str(per_sample)]
    fail([*argv, *([output] if output == "--json" else [])], capsys, "not a finite number", f"{field} = inf")
    assert capsys.readouterr().out == "" and not per_sample.exists()


def test_json_is_strict_json(tmp_path, capsys):
    real, cands, x, y, xc, yc = gaussian_features(tmp_path)
    assert cli.main(["score", str(cands), "--reference-pairs", str(real), "--json", "-q"]) == 0
    text = capsys.readouterr().out

    def refuse(constant):
        raise AssertionError(f"non-standard JSON constant {constant}")

    report = json.loads(text, parse_constant=refuse)
    assert close(report["mid"], mutual_information_divergence(x, y, xc, yc).item(), 1e-9)


def test_big_endian_npz_is_read_and_odd_dtypes_are_named(tmp_path, capsys):
    real, _, x, y, xc, yc = gaussian_features(tmp_path)
    np.savez(tmp_path / "big.npz", image_features=xc.numpy().astype(">f8"), text_features=yc.numpy().astype(">f4"))
    assert cli.main(["score", str(tmp_path / "big.npz"), "--reference-pairs", str(real), "--json", "-q"]) == 0
    report = json.loads(capsys.readouterr().out)
    expected = mutual_information_divergence(x, y, xc, yc.float().double()).item()
    assert close(report["mid"], expected, 1e-9)
    np.savez(tmp_path / "complex.npz", image_features=xc.numpy().astype(np.complex64), text_features=yc.numpy())
    fail(
        ["score", str(tmp_path / "complex.npz"), "--reference-pairs", str(real)],
        capsys,
        "complex.npz",
        "'image_features'",
        "floating-point",
    )


def test_output_files_get_the_umask_permissions(tmp_path, capsys):
    real, cands, *_ = gaussian_features(tmp_path)
    old = os.umask(0o027)
    try:
        assert cli.main(["reference", str(real), "-o", str(tmp_path / "ref.safetensors"), "-q"]) == 0
        assert (
            cli.main(
                [
                    "score",
                    str(cands),
                    "--reference",
                    str(tmp_path / "ref.safetensors"),
                    "--per-sample",
                    str(tmp_path / "pmi.csv"),
                    "-q",
                ]
            )
            == 0
        )
        capsys.readouterr()
        for name in ("ref.safetensors", "pmi.csv"):
            assert stat.S_IMODE(os.stat(tmp_path / name).st_mode) == 0o640, name  # 0o666 & ~0o027, as open() does
        os.umask(0o002)
        (tmp_path / "fresh.csv").write_text("")  # what open() gives under this umask, for comparison
        assert (
            cli.main(
                [
                    "score",
                    str(cands),
                    "--reference",
                    str(tmp_path / "ref.safetensors"),
                    "--per-sample",
                    str(tmp_path / "new.csv"),
                    "-q",
                ]
            )
            == 0
        )
        capsys.readouterr()
        assert (
            stat.S_IMODE(os.stat(tmp_path / "new.csv").st_mode)
            == stat.S_IMODE(os.stat(tmp_path / "fresh.csv").st_mode)
            == 0o664
        )
    finally:
        os.umask(old)


# ------------------------------------------------------------------------------------ --metrics (one feature pass)
def _unit(rows: torch.Tensor) -> torch.Tensor:
    return rows / rows.norm(dim=1, keepdim=True)


def test_score_computes_every_requested_metric_from_one_feature_pass(tmp_path, capsys):
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(21)
    x = _unit(torch.randn(300, 6, generator=g))
    y = _unit(x + 0.7 * torch.randn(300, 6, generator=g))
    xc = _unit(y[:120] + 0.9 * torch.randn(120, 6, generator=g))
    yc = y[:120]
    save_file({"image_features": x, "text_features": y}, str(tmp_path / "ref.safetensors"))
    save_file({"image_features": xc, "text_features": yc}, str(tmp_path / "cand.safetensors"))
    out = tmp_path / "per_sample.csv"
    argv = ["score", str(tmp_path / "cand.safetensors"), "--reference-pairs", str(tmp_path / "ref.safetensors")]
    argv += ["--metrics", "infonce,mid,clip-score,r-precision", "--json", "--per-sample", str(out), "--quiet"]
    assert cli.main(argv) == 0
    report = json.loads(capsys.readouterr().out)
    assert list(report["metrics"]) == ["mid", "clip-score", "r-precision", "infonce"]  # the documented order

    # Independent values, from the formulas (float64 on the float32 features).
    xd, yd = xc.double(), yc.double()
    cos = _unit(xd) @ _unit(yd).T  # cos(image_j, text_k)
    clip_s = 2.5 * cos.diagonal().clamp(min=0)
    infonce = torch.softmax(cos, dim=1).diagonal()
    r_prec = ((cos <= cos.diagonal().unsqueeze(1)).sum(dim=1).double() / 120) ** 99
    expected = {
        "mid": mutual_information_divergence(x.double(), y.double(), xd, yd).item(),
        "clip-score": clip_s.mean().item(),
        "r-precision": r_prec.mean().item(),
        "infonce": infonce.mean().item(),
    }
    for name, value in expected.items():
        assert math.isclose(report["metrics"][name]["value"], value, rel_tol=1e-6, abs_tol=1e-9), name
    assert report["mid"] == report["metrics"]["mid"]["value"]  # the MID fields stay where they were
    with open(out, newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0]) == ["row", "image", "caption", "pmi", "clip_score", "r_precision", "infonce"]
    columns = {"clip_score": clip_s, "r_precision": r_prec, "infonce": infonce}
    for column, values in columns.items():
        assert np.allclose([float(r[column]) for r in rows], values.numpy(), rtol=1e-6, atol=1e-9), column
    pmi = pointwise_mutual_information(x.double(), y.double(), xd, yd)
    assert np.allclose([float(r["pmi"]) for r in rows], pmi.numpy(), rtol=1e-9, atol=1e-9)


def test_score_without_mid_and_bad_metric_names(tmp_path, capsys):
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(22)
    x, y = _unit(torch.randn(40, 4, generator=g)), _unit(torch.randn(40, 4, generator=g))
    save_file({"image_features": x, "text_features": y}, str(tmp_path / "f.safetensors"))
    base = ["score", str(tmp_path / "f.safetensors"), "--reference-pairs", str(tmp_path / "f.safetensors")]
    assert cli.main([*base, "--metrics", "clip-score", "--quiet"]) == 0
    text = capsys.readouterr().out
    expected = (2.5 * (x.double() * y.double()).sum(dim=1).clamp(min=0)).mean().item()
    assert f"CLIP-S: {expected:.6f}" in text and "MID" not in text
    with pytest.raises(SystemExit) as exit_info:
        cli.main([*base, "--metrics", "mid,fid"])
    assert exit_info.value.code == 2
    assert "expected a comma-separated list of mid, clip-score, r-precision, infonce" in capsys.readouterr().err


def test_bias_correction_jackknife_with_reference_pairs(tmp_path, capsys):
    from mid_metric import jackknife, moments

    real, cands, x, y, xc, yc = gaussian_features(tmp_path)
    argv = ["score", str(cands), "--reference-pairs", str(real), "--json", "-q"]
    assert cli.main([*argv, "--bias-correction", "jackknife"]) == 0
    report = json.loads(capsys.readouterr().out)
    groups = [jackknife.group_moments(moments.joint_rows(a, b), 3, 10) for a, b in ((x, y), (xc, yc))]
    expected = jackknife.jackknife_divergence(*groups, image_dim=3)  # the grouped jackknife, K = 10, caption key
    assert report["estimator"] == "jackknife" and report["bias_corrected"] is True
    assert close(report["mid"], expected.mid.item(), 1e-9)
    assert close(report["ci_low"], expected.ci_low.item(), 1e-9) and close(
        report["ci_high"], expected.ci_high.item(), 1e-9
    )
    # The flag alone is the Gaussian correction, as before.
    assert cli.main([*argv, "--bias-correction"]) == 0
    gaussian = json.loads(capsys.readouterr().out)
    assert gaussian["estimator"] == "gaussian"
    assert close(gaussian["mid"], mutual_information_divergence(x, y, xc, yc, bias_correction=True).item(), 1e-9)


def test_bias_correction_jackknife_refuses_a_reference_file(tmp_path, capsys):
    real, cands, x, y, xc, yc = gaussian_features(tmp_path)
    reference = tmp_path / "ref.safetensors"
    assert cli.main(["reference", str(real), "-o", str(reference), "-q"]) == 0
    err = fail(["score", str(cands), "--reference", str(reference), "--bias-correction", "jackknife"], capsys)
    assert "jackknife" in err and "reference statistics file" in err
