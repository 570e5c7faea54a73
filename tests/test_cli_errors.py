"""Bad input to the command line: one line on stderr, exit status 1, never a traceback, no output left behind."""

from __future__ import annotations

import io
import struct
import sys
import zlib

import numpy as np
import pytest
import torch
from _cli import fail, run, write_csv
from _cli_clip import NUM_PAIRS, build_work, copy_images

from mid_metric import cli


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    return build_work(tmp_path_factory.mktemp("cli"))


@pytest.fixture()
def bad(work, tmp_path):
    return copy_images(work, tmp_path)


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
