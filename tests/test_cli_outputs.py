"""Output files of the command line: never an input, never a folder, FIFO or device, written through links."""

from __future__ import annotations

import csv
import io
import os
import re
import shutil
import stat
from pathlib import Path

import numpy as np
import pytest
import torch
from _cli import fail, fail_cli, gaussian_features
from _cli_clip import build_work

from mid_metric import cli
from mid_metric.functional import mutual_information_divergence, pointwise_mutual_information
from mid_metric.io.reference_files import load_reference_statistics


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    return build_work(tmp_path_factory.mktemp("cli"))


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


# ------------------------------------------------------------------------------- links, FIFOs, folders and "-"
def _pmi_column(path_or_text) -> list[float]:
    text = path_or_text.read_text() if isinstance(path_or_text, Path) else path_or_text
    return [float(row["pmi"]) for row in csv.DictReader(io.StringIO(text))]


def test_writing_through_a_symlink_replaces_its_target_and_keeps_the_link(tmp_path, capsys):
    real, cands, x, y, xc, yc = gaussian_features(tmp_path)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    # A per-sample table behind a relative link in another folder, and behind a chain of two links.
    (elsewhere / "pmi.csv").write_text("stale\n")
    (tmp_path / "pmi-link.csv").symlink_to(Path("elsewhere") / "pmi.csv")
    (tmp_path / "chain.csv").symlink_to("pmi-link.csv")
    # A reference file behind a link to a file that does not exist yet: the link's target is created.
    (tmp_path / "ref-link.safetensors").symlink_to(elsewhere / "ref.safetensors")
    assert cli.main(["reference", str(real), "-o", str(tmp_path / "ref-link.safetensors"), "-q"]) == 0
    chain = str(tmp_path / "chain.csv")
    assert cli.main(["score", str(cands), "--reference-pairs", str(real), "--per-sample", chain, "-q"]) == 0
    capsys.readouterr()

    expected = pointwise_mutual_information(x, y, xc, yc).tolist()
    assert np.allclose(_pmi_column(elsewhere / "pmi.csv"), expected, rtol=1e-9, atol=1e-9)
    assert os.readlink(tmp_path / "pmi-link.csv") == str(Path("elsewhere") / "pmi.csv")  # the links are untouched
    assert os.readlink(tmp_path / "chain.csv") == "pmi-link.csv"
    assert (tmp_path / "ref-link.safetensors").is_symlink()
    packed, meta = load_reference_statistics(elsewhere / "ref.safetensors")
    assert meta["num_samples"] == 80
    # Nothing else is left behind: no temporary file in either folder.
    assert sorted(p.name for p in elsewhere.iterdir()) == ["pmi.csv", "ref.safetensors"]
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["cands.npz", "chain.csv", "elsewhere", "pmi-link.csv", "real.npz", "ref-link.safetensors"]


def test_the_demo_figure_is_written_through_a_symlink(tmp_path):
    pytest.importorskip("matplotlib")
    from mid_metric.cli.demo import plot_report, run_demo

    (tmp_path / "figures").mkdir()
    (tmp_path / "figures" / "demo.png").write_bytes(b"stale")
    (tmp_path / "latest.png").symlink_to(Path("figures") / "demo.png")
    plot_report(run_demo(num_reference=500, num_candidates=200, dim=2), tmp_path / "latest.png")
    assert (tmp_path / "figures" / "demo.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert os.readlink(tmp_path / "latest.png") == str(Path("figures") / "demo.png")
    assert sorted(p.name for p in (tmp_path / "figures").iterdir()) == ["demo.png"]


def _special_outputs(tmp_path: Path) -> dict[str, Path]:
    """A FIFO, a folder, a link to the FIFO and a symbolic link loop."""
    os.mkfifo(tmp_path / "fifo")
    (tmp_path / "folder").mkdir()
    (tmp_path / "to-fifo.csv").symlink_to("fifo")
    (tmp_path / "loop.csv").symlink_to("loop.csv")
    return {
        "FIFO": tmp_path / "fifo",
        "folder": tmp_path / "folder",
        "link": tmp_path / "to-fifo.csv",
        "loop": tmp_path / "loop.csv",
    }


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_outputs_that_are_not_regular_files_are_refused_and_left_as_they_are(tmp_path, capsys):
    real, cands, *_ = gaussian_features(tmp_path)
    specials = _special_outputs(tmp_path)
    words = {"FIFO": "FIFO", "folder": "is a folder", "link": "FIFO", "loop": "symbolic link loop"}
    for kind, path in specials.items():
        for argv in (
            ["score", str(cands), "--reference-pairs", str(real), "--per-sample", str(path)],
            ["reference", str(real), "-o", str(path)],
            ["demo", "--plot", str(path.with_suffix(".png") if kind == "loop" else path)],
        ):
            if kind == "loop" and argv[0] == "demo":
                (tmp_path / "loop.png").symlink_to("loop.png")
            err = (fail_cli if argv[0] == "demo" else fail)(argv, capsys, words[kind])  # demo has no --quiet
            assert "does not exist" not in err, err
            assert capsys.readouterr().out == ""  # refused before any work: nothing printed
            if kind == "loop" and argv[0] == "demo":
                (tmp_path / "loop.png").unlink()
    assert stat.S_ISFIFO(os.stat(specials["FIFO"]).st_mode) and os.listdir(specials["folder"]) == []
    assert os.readlink(specials["link"]) == "fifo" and os.readlink(specials["loop"]) == "loop.csv"
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "cands.npz",
        "fifo",
        "folder",
        "loop.csv",
        "real.npz",
        "to-fifo.csv",
    ]


def test_the_atomic_writer_refuses_a_fifo_and_a_loop_before_the_block_runs(tmp_path):
    from mid_metric.io.atomic import OutputIsAFolderError, OutputPathError, atomic_output

    specials = _special_outputs(tmp_path)
    for kind, path in specials.items():
        expected = OutputIsAFolderError if kind == "folder" else OutputPathError
        with pytest.raises(expected):
            with atomic_output(path):
                raise AssertionError("the block must not run")
    with pytest.raises(FileNotFoundError, match="does not exist"):  # also an OutputPathError, a ValueError
        with atomic_output(tmp_path / "missing" / "out.csv"):
            raise AssertionError("the block must not run")


def test_dash_prints_the_per_sample_table_on_stdout(tmp_path, capsys, monkeypatch):
    real, cands, x, y, xc, yc = gaussian_features(tmp_path)
    monkeypatch.chdir(tmp_path)
    assert cli.main(["score", str(cands), "--reference-pairs", str(real), "--per-sample", "-"]) == 0
    captured = capsys.readouterr()
    assert captured.out.startswith("row,image,caption,pmi")  # stdout holds the table and nothing else ...
    expected = pointwise_mutual_information(x, y, xc, yc).tolist()
    assert np.allclose(_pmi_column(captured.out), expected, rtol=1e-9, atol=1e-9)
    shown = re.search(r"^MID: (-?\d+\.\d+)", captured.err, re.M)  # ... and the summary goes to stderr
    assert shown and abs(float(shown.group(1)) - mutual_information_divergence(x, y, xc, yc).item()) < 1e-5
    assert not (tmp_path / "-").exists()
    # The JSON report would share stdout with the table; a binary reference file has no place there.
    fail(["score", str(cands), "--reference-pairs", str(real), "--per-sample", "-", "--json"], capsys, "--json")
    fail(["reference", str(real), "-o", "-"], capsys, "--output -", "standard output")
    assert not (tmp_path / "-").exists()


def test_symlink_loops_as_inputs_are_reported_as_loops(work, tmp_path, capsys):
    real, cands, *_ = gaussian_features(tmp_path)
    assert cli.main(["reference", str(real), "-o", str(tmp_path / "ref.safetensors"), "-q"]) == 0
    (tmp_path / "loop.npz").symlink_to("loop.npz")
    (tmp_path / "loop.safetensors").symlink_to("loop.safetensors")
    for argv in (
        ["score", str(tmp_path / "loop.npz"), "--reference-pairs", str(real)],
        ["score", str(cands), "--reference-pairs", str(tmp_path / "loop.npz")],
        ["score", str(cands), "--reference", str(tmp_path / "loop.safetensors")],
        ["reference", str(tmp_path / "loop.npz"), "-o", str(tmp_path / "out.safetensors")],
    ):
        err = fail(argv, capsys, "loop.", "symbolic link loop")
        assert "does not exist" not in err, err
    # An image of a pairs file that is a loop, in a CLIP run.
    shutil.copytree(work["root"] / "real" / "images", tmp_path / "images")
    os.remove(tmp_path / "images" / "4.png")
    (tmp_path / "images" / "4.png").symlink_to("4.png")
    shutil.copy(work["root"] / "real" / "pairs.csv", tmp_path / "pairs.csv")
    model = str(work["model"])
    err = fail(
        ["reference", str(tmp_path / "pairs.csv"), "-o", str(tmp_path / "clip.safetensors"), "--model", model],
        capsys,
        "row 5",
        "4.png",
        "symbolic link loop",
    )
    assert "does not exist" not in err
    assert not (tmp_path / "out.safetensors").exists() and not (tmp_path / "clip.safetensors").exists()
