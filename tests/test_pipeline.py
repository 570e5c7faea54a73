"""The command line's input pipeline: decoding, preprocessing and tokenising in DataLoader workers.

The tiny random CLIP model of ``clip_fixtures`` encodes real image files. The number of workers must not change a
single bit of the results; the pixels the workers prepare are compared with the package's own preprocessing in the
calling process and, for OpenAI's pipeline, with the independent numpy implementation of ``preprocess_reference``.
"""

from __future__ import annotations

import argparse
import json
import pickle
import re

import numpy as np
import pytest
import torch
from _cli import fail, run_cli, write_csv
from _cli_clip import EPS, NUM_PAIRS, build_work, copy_images
from PIL import Image
from preprocess_reference import reference_openai

from mid_metric import cli
from mid_metric.cli import encoding, session
from mid_metric.cli.values import automatic_workers, usable_cores
from mid_metric.features import PREPROCESSING, load_clip
from mid_metric.io.pairs import read_pairs

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::FutureWarning")


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    return build_work(tmp_path_factory.mktemp("pipeline"))


@pytest.fixture(scope="module")
def extractors(work):
    return {choice: load_clip(str(work["model"]), device="cpu", preprocess=choice) for choice in PREPROCESSING}


def _score(work, capsys, tmp_path, preprocess: str, workers: int) -> tuple[dict, str]:
    """Score the real pairs against themselves with generated captions: the JSON report and the per-sample CSV."""
    real = str(work["root"] / "real" / "pairs.csv")
    table = tmp_path / f"{preprocess}-{workers}.csv"
    argv = ["score", real, "--reference-pairs", real, "--generated-caption-column", "generated"]
    argv += ["--model", str(work["model"]), "--eps", str(EPS), "--preprocess", preprocess]
    argv += ["--num-workers", str(workers), "--batch-size", "8", "--per-sample", str(table), "--json", "-q"]
    return json.loads(run_cli(argv, capsys)), table.read_text()


@pytest.mark.parametrize("preprocess", PREPROCESSING)
def test_results_are_bit_identical_with_and_without_workers(work, capsys, tmp_path, preprocess):
    # 40 images and captions in batches of 8: five batches, so two workers do prepare them
    assert encoding.loader_workers(NUM_PAIRS, argparse.Namespace(num_workers=2, batch_size=8)) == 2
    report, table = _score(work, capsys, tmp_path, preprocess, 0)
    report_workers, table_workers = _score(work, capsys, tmp_path, preprocess, 2)
    assert report_workers == report and table_workers == table
    assert report["num_candidates"] == NUM_PAIRS and np.isfinite(report["mid"])


class _Spy:
    """An extractor's pipeline and model halves, recording the pixel batches the main process receives."""

    def __init__(self, extractor):
        self.extractor, self.pipeline, self.tokenizer = extractor, extractor.pipeline, extractor.tokenizer
        self.image_dim, self.text_dim = extractor.image_dim, extractor.text_dim
        self.batches: list[torch.Tensor] = []

    def encode_pixels(self, pixels):
        self.batches.append(pixels.clone())
        return self.extractor.encode_pixels(pixels)

    def encode_tokens(self, tokens):
        return self.extractor.encode_tokens(tokens)


@pytest.mark.parametrize("preprocess", PREPROCESSING)
def test_the_workers_prepare_the_pixels_of_the_python_preprocessing(work, extractors, preprocess):
    extractor = extractors[preprocess]
    table = read_pairs(str(work["root"] / "real" / "pairs.csv"), "image", "caption")
    spy = _Spy(extractor)
    args = argparse.Namespace(num_workers=2, batch_size=16, device="cpu")
    features = encoding.encode_images(table, spy, args, session.Console(quiet=True))
    assert [len(batch) for batch in spy.batches] == [16, 16, 8]
    pixels = torch.cat(spy.batches)
    images = [Image.open(pair.image_path) for pair in table.pairs]
    assert torch.equal(pixels, extractor.pipeline(images))  # what encode_images runs in the calling process
    in_python = [extractor.encode_images(images[start : start + 16]) for start in (0, 16, 32)]
    assert torch.equal(features, torch.cat(in_python))  # bit for bit, in the same batches
    if preprocess == "openai":  # and the independent implementation of OpenAI's steps
        expected = np.stack([reference_openai(image, extractor.image_size) for image in images])
        np.testing.assert_allclose(pixels.numpy(), expected, rtol=0, atol=1e-6)
    if preprocess == "processor":  # the processor as users call it on the files
        rgb = [image.convert("RGB") for image in images]
        direct = extractor.processor.image_processor(images=rgb, return_tensors="pt")["pixel_values"]
        assert torch.equal(pixels, direct)


def test_captions_are_tokenised_in_the_workers_as_in_the_calling_process(work, extractors):
    extractor = extractors["openai"]
    captions = [row["caption"] for row in work["real_rows"]] + ["a caption far longer than the context window"]
    args = argparse.Namespace(num_workers=2, batch_size=8, device="cpu")
    got = encoding.encode_texts(captions, extractor, args)
    expected = torch.cat([extractor.encode_texts(captions[start : start + 8]) for start in range(0, len(captions), 8)])
    assert torch.equal(got, expected)


def test_the_halves_of_the_extractor_pickle_without_the_model(work, extractors):
    images = [Image.open(work["root"] / "real" / "images" / f"{i}.png") for i in range(3)]
    for extractor in extractors.values():
        pipeline = pickle.loads(pickle.dumps(extractor.pipeline))
        assert torch.equal(pipeline(images), extractor.pipeline(images))
        tokenizer = pickle.loads(pickle.dumps(extractor.tokenizer))
        assert all(
            torch.equal(a, b) for a, b in zip(tokenizer(["a cat"]).values(), extractor.tokenize(["a cat"]).values())
        )
        assert len(pickle.dumps(extractor.pipeline)) + len(pickle.dumps(extractor.tokenizer)) < 200_000  # no weights


def test_encode_pixels_and_tokens_refuse_other_inputs(extractors):
    extractor = extractors["openai"]
    with pytest.raises(TypeError, match="`pixel_values` must be a float tensor"):
        extractor.encode_pixels(torch.zeros(1, 3, 32, 32, dtype=torch.uint8))
    with pytest.raises(ValueError, match=r"`pixel_values` must have shape \(N, 3, n, n\), got \(3, 32, 32\)"):
        extractor.encode_pixels(torch.zeros(3, 32, 32))
    with pytest.raises(ValueError, match="`tokens` must hold `input_ids`"):
        extractor.encode_tokens({"attention_mask": torch.ones(1, 3)})
    assert extractor.encode_pixels(torch.zeros(0, 3, 32, 32)).shape == (0, extractor.image_dim)


@pytest.mark.parametrize("workers", [0, 2])
def test_an_unreadable_or_refused_image_names_its_file_and_row_with_workers(work, tmp_path, capsys, workers):
    folder = copy_images(work, tmp_path)
    rows = [dict(row) for row in work["real_rows"][:24]]
    Image.fromarray(np.full((6, 7), 3.5, dtype=np.float32)).save(folder / "images" / "float.tiff")  # mode F > 1
    rows[13]["image"] = "images/float.tiff"
    pairs = write_csv(folder / "pairs.csv", rows, ["image", "caption", "generated"])
    argv = ["reference", str(pairs), "-o", str(tmp_path / "ref.safetensors"), "--model", str(work["model"])]
    argv += ["--eps", str(EPS), "--batch-size", "4", "--num-workers", str(workers)]
    line = fail(argv, capsys, f"{pairs}, row 14: image", "float.tiff", "is a float image (mode F)", "[0, 1]")
    assert "Traceback" not in line and "worker" not in line
    (folder / "images" / "float.tiff").write_bytes(b"not an image")
    fail(argv, capsys, f"{pairs}, row 14:", "cannot read image", "float.tiff")
    assert not (tmp_path / "ref.safetensors").exists()


def test_help_states_the_automatic_workers_and_the_default_preprocessing(capsys):
    for command in ("score", "reference", "benchmark"):
        with pytest.raises(SystemExit):
            cli.main([command, "--help"])
        text = " ".join(capsys.readouterr().out.split())
        workers = re.search(r"--num-workers N (.*?)--eps", text).group(1)
        assert "default: automatic" in workers and f"{automatic_workers(usable_cores())} here" in workers, workers
        assert "(0: all in the main process)" in workers
        assert "(default: openai)" in re.search(r"--preprocess \{[^}]*\} (how images.*?)--device", text).group(1)


def test_automatic_workers_leave_a_core_to_the_main_process():
    assert [automatic_workers(cores) for cores in (1, 2, 3, 9, 100)] == [0, 1, 2, 8, 8]
    assert usable_cores() >= 1


def test_a_reference_of_an_older_default_is_flagged_unless_the_preprocessing_is_given(
    work, tmp_path, capsys, monkeypatch
):
    from safetensors import safe_open
    from safetensors.torch import save_file

    model, real = str(work["model"]), str(work["root"] / "real" / "pairs.csv")
    built = tmp_path / "built.safetensors"
    run_cli(["reference", real, "-o", str(built), "--model", model, "--eps", str(EPS), "-q"], capsys)
    with safe_open(str(built), "pt") as handle:  # the same statistics, as mid-metric 0.3.1 recorded them
        metadata, tensors = handle.metadata(), {key: handle.get_tensor(key) for key in handle.keys()}
    old = tmp_path / "old.safetensors"
    save_file(tensors, str(old), metadata=dict(metadata, library_version="0.3.1"))
    monkeypatch.setattr(session, "__version__", "0.4.0")
    argv = ["score", real, "--reference", str(old), "--model", model, "--json", "-q"]
    assert cli.main(argv) == 0
    captured = capsys.readouterr()
    assert np.isfinite(json.loads(captured.out)["mid"])
    err = captured.err.strip().splitlines()  # one warning, shown under --quiet too
    assert len(err) == 1 and err[0].startswith("mid-metric: warning: ") and str(old) in err[0], err
    assert "mid-metric 0.3.1" in err[0] and "'processor'" in err[0] and "--preprocess processor" in err[0]
    for explicit in ("openai", "processor"):  # a stated preprocessing is no surprise
        assert cli.main([*argv, "--preprocess", explicit]) == 0
        assert capsys.readouterr().err == ""
    assert cli.main(["score", real, "--reference", str(built), "--model", model, "-q", "--json"]) == 0
    assert capsys.readouterr().err == ""  # a file of this release's default


@pytest.mark.slow
def test_the_pipeline_benchmark_runs_and_writes_its_block(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    results = tmp_path / "RESULTS.md"
    results.write_text("# Results\n\n<!-- BEGIN pipeline -->\nold\n<!-- END pipeline -->\n")
    argv = [sys.executable, str(root / "benchmarks" / "pipeline.py"), "--images", "12", "--repeats", "1"]
    argv += ["--batch-size", "4", "--preprocess", "openai", "--workers", "0", "2"]
    argv += ["--data", str(tmp_path), "--results", str(results)]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=300, cwd=root, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    text = results.read_text()
    assert "\nold\n" not in text and "| openai | 0 |" in text and "cli / baseline" in text
    assert "[PASS] openai: features bit-identical" in done.stdout
