"""``mid-metric benchmark flickr8k-expert|flickr8k-cf`` on a synthetic Flickr8K with a tiny CLIP, offline.

The expected values are computed independently: features straight from the transformers model (pixels by a numpy
re-implementation of OpenAI's preprocessing, captions by the tokenizer), the exclusions from how the fixture
generated each line (:mod:`flickr8k_fixture`), CLIP-S and RefCLIP-S by their formulas, MID's PMI by the metric's
API, and tau by ``scipy.stats.kendalltau``.
"""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"

import csv
import json
import stat
from pathlib import Path

import numpy as np
import pytest
import torch
from _cli import fail_cli as fail
from _cli import run_cli as run
from clip_fixtures import build_tiny_clip
from flickr8k_fixture import build_flickr8k, image_name
from PIL import Image
from preprocess_reference import reference_openai

from mid_metric import MutualInformationDivergence

transformers = pytest.importorskip("transformers")
scipy_stats = pytest.importorskip("scipy.stats")
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::FutureWarning")

EPS = 1e-3  # the tiny random model's features are close to degenerate
CONTEXT = 64  # long enough for "A photo depicts " and the captions
PREFIX = "A photo depicts "
BOOTSTRAP = ["--bootstrap", "200", "--seed", "5"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("flickr8k")
    expected = build_flickr8k(root / "f8k")
    model = build_tiny_clip(root / "clip", context_length=CONTEXT)
    return {"root": root / "f8k", "model": model, "expected": expected, "tmp": root}


@pytest.fixture(scope="module")
def encoder(data):
    """Independent features: the model called directly on numpy-preprocessed pixels and tokenizer output."""
    model = transformers.CLIPModel.from_pretrained(data["model"]).eval()
    tokenizer = transformers.CLIPTokenizer.from_pretrained(data["model"])

    def unit(output):
        features = getattr(output, "pooler_output", output).double()
        return features / features.norm(dim=1, keepdim=True)

    def images(names):
        pixels = [
            reference_openai(Image.open(data["root"] / "Flicker8k_Dataset" / n).convert("RGB"), 32) for n in names
        ]
        with torch.no_grad():
            return unit(model.get_image_features(pixel_values=torch.from_numpy(np.stack(pixels))))

    def texts(captions):
        tokens = tokenizer(list(captions), padding=True, truncation=True, max_length=CONTEXT, return_tensors="pt")
        with torch.no_grad():
            return unit(model.get_text_features(input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"]))

    return {"images": images, "texts": texts}


def expected_scores(expected, encoder, prefix: str = PREFIX) -> dict[str, np.ndarray]:
    """Per item: PMI (reference = every kept item's image with its references), CLIP-S and RefCLIP-S."""
    items = expected.items
    references = dict((image, refs) for image, _, refs, _ in items)
    reference_images = [image for image, refs in references.items() for _ in refs]
    reference_texts = [r for refs in references.values() for r in refs]
    metric = MutualInformationDivergence(feature=16, eps=EPS)
    metric.update(encoder["images"](reference_images).float(), encoder["texts"](reference_texts).float(), real=True)
    images = encoder["images"]([image for image, *_ in items])
    raw = encoder["texts"]([caption for _, caption, *_ in items])
    prefixed = encoder["texts"]([prefix + caption for _, caption, *_ in items])
    clip_s = 2.5 * (images * prefixed).sum(dim=1).clamp(min=0)
    best = torch.stack(
        [(encoder["texts"]([prefix + r for r in refs]) @ prefixed[j]).max() for j, (_, _, refs, _) in enumerate(items)]
    ).clamp(min=0)
    ref_clip_s = torch.where(clip_s + best > 0, 2 * clip_s * best / (clip_s + best), torch.zeros_like(best))
    return {
        "mid": metric.pmi(images.float(), raw.float()).numpy(),
        "clip_score": clip_s.numpy(),
        "ref_clip_score": ref_clip_s.numpy(),
    }


def expanded(expected, per_item: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    index = [n for n, (*_, ratings) in enumerate(expected.items) for _ in ratings]
    ratings = [rating for *_, ratings in expected.items for _, rating in ratings]
    return per_item[index], np.array(ratings)


def benchmark_args(data, name: str, *extra: str) -> list[str]:
    return ["benchmark", name, "--root", str(data["root"]), "--model", str(data["model"]), "-q", *BOOTSTRAP, *extra]


def test_expert_counts_and_tau_equal_scipy_on_independent_scores(data, encoder, tmp_path, capsys):
    per_sample = tmp_path / "expert.csv"
    report = json.loads(
        run(
            benchmark_args(data, "flickr8k-expert", "--eps", str(EPS), "--json", "--per-sample", str(per_sample)),
            capsys,
        )
    )
    expected = data["expected"]["expert"]
    assert report["benchmark"] == "flickr8k-expert" and report["variant"] == "c"
    assert report["num_judgments"] == expected.num_judgments == 212  # 71 rows x 3, less 1 NaN rating
    assert report["num_items"] == len(expected.items) == 71 and report["num_images"] == 24
    assert report["skipped_own_reference"] == expected.skipped_own_reference == 5
    assert report["skipped_nan_ratings"] == expected.skipped_nan == 4
    assert report["reference"] == {"source": "benchmark", "num_samples": 120, "eps": EPS, "model": report["model"]}
    assert report["preprocess"] == "openai" and report["prompt_prefix"] == PREFIX and report["dtype"] == "float32"
    assert report["paper"] == {"mid": 0.549, "clip_score": 0.512, "ref_clip_score": 0.530}
    scores = expected_scores(expected, encoder)
    with open(per_sample, newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 212 and rows[0]["judgment"] == "1"
    for name, per_item in scores.items():
        values, ratings = expanded(expected, per_item)
        np.testing.assert_allclose([float(row[name]) for row in rows], values, rtol=1e-4, atol=1e-5)
        tau = scipy_stats.kendalltau(values, ratings, variant="c")
        entry = report["metrics"][name]
        assert entry["tau"] == pytest.approx(tau.statistic, abs=1e-9), name
        assert entry["p_value"] == pytest.approx(tau.pvalue, rel=1e-6) and entry["n"] == 212
        assert entry["ci_low"] <= entry["tau"] <= entry["ci_high"]
    assert [float(row["rating"]) for row in rows] == list(expanded(expected, scores["mid"])[1])
    # The per-sample file is a table for `correlate`: the same tau from it.
    again = json.loads(
        run(
            [
                "correlate",
                str(per_sample),
                str(per_sample),
                "--key",
                "judgment",
                "--score-column",
                "mid",
                "--rating-column",
                "rating",
                "--variant",
                "c",
                "--json",
                "--bootstrap",
                "0",
            ],
            capsys,
        )
    )
    assert again["tau"] == report["metrics"]["mid"]["tau"] and again["n"] == 212


def test_crowdflower_removes_rated_references_and_uses_tau_b(data, encoder, capsys):
    report = json.loads(run(benchmark_args(data, "flickr8k-cf", "--eps", str(EPS), "--json"), capsys))
    expected = data["expected"]["cf"]
    assert report["variant"] == "b" and report["num_judgments"] == len(expected.items) == 53
    assert report["removed_references"] == expected.removed_references == 6 and report["skipped_nan_ratings"] == 1
    assert report["reference"]["num_samples"] == 24 * 5 - 6
    assert report["paper"] == {"mid": 0.373, "clip_score": 0.344, "ref_clip_score": 0.364}
    for name, per_item in expected_scores(expected, encoder).items():
        values, ratings = expanded(expected, per_item)
        assert report["metrics"][name]["tau"] == pytest.approx(
            scipy_stats.kendalltau(values, ratings, variant="b").statistic, abs=1e-9
        ), name


def test_two_runs_print_identical_text_which_names_the_prefix_and_reference(data, capsys):
    args = benchmark_args(data, "flickr8k-expert", "--eps", str(EPS))
    first, second = run(args, capsys), run(args, capsys)
    assert first == second
    assert "Flickr8K-Expert: Kendall tau-c of 212 judgments (71 candidate captions of 24 images)" in first
    assert "prefixed with 'A photo depicts '" in first and "preprocessing openai" in first
    assert "MID reference: the benchmark's own (image, reference caption) pairs, N = 120, eps 0.001" in first
    assert "5 rows whose caption is one of the image's references; 4 NaN ratings skipped" in first
    assert [line.split()[0] for line in first.splitlines() if line.split()[-1] in ("0.549", "0.512", "0.530")] == [
        "MID",
        "CLIP-S",
        "RefCLIP-S",
    ]


def test_no_prompt_prefix_encodes_the_captions_as_they_are(data, encoder, capsys):
    report = json.loads(
        run(benchmark_args(data, "flickr8k-cf", "--eps", str(EPS), "--json", "--no-prompt-prefix"), capsys)
    )
    expected = data["expected"]["cf"]
    assert report["prompt_prefix"] == ""
    scores = expected_scores(expected, encoder, prefix="")
    values, ratings = expanded(expected, scores["clip_score"])
    assert report["metrics"]["clip_score"]["tau"] == pytest.approx(
        scipy_stats.kendalltau(values, ratings, variant="b").statistic, abs=1e-9
    )


def test_a_reference_file_of_the_same_pairs_gives_the_same_mid(data, tmp_path, capsys):
    expected = data["expected"]["expert"]
    references = dict((image, refs) for image, _, refs, _ in expected.items)
    rows = [{"image": f"Flicker8k_Dataset/{image}", "caption": r} for image, refs in references.items() for r in refs]
    pairs = data["root"] / "reference_pairs.csv"
    with open(pairs, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=["image", "caption"])
        writer.writeheader()
        writer.writerows(rows)
    reference = tmp_path / "ref.safetensors"
    run(
        [
            "reference",
            str(pairs),
            "-o",
            str(reference),
            "--model",
            str(data["model"]),
            "--preprocess",
            "openai",
            "--eps",
            str(EPS),
            "-q",
        ],
        capsys,
    )
    own = json.loads(run(benchmark_args(data, "flickr8k-expert", "--eps", str(EPS), "--json"), capsys))
    # The file records the local model by its fingerprint; --model names the folder again.
    args = ["benchmark", "flickr8k-expert", "--root", str(data["root"]), "--reference", str(reference), "--json"]
    from_file = json.loads(run([*args, "--model", str(data["model"]), "-q", *BOOTSTRAP], capsys))
    assert from_file["reference"] == {"source": str(reference), "num_samples": 120, "eps": EPS, "model": own["model"]}
    assert from_file["metrics"]["mid"]["tau"] == pytest.approx(own["metrics"]["mid"]["tau"], abs=1e-9)
    assert from_file["metrics"]["clip_score"] == own["metrics"]["clip_score"]


def copy_tree(data, tmp_path: Path) -> Path:
    import shutil

    root = tmp_path / "copy"
    shutil.copytree(data["root"], root)
    return root


def test_malformed_or_missing_files_are_one_line_with_file_and_line(data, tmp_path, capsys):
    root = copy_tree(data, tmp_path)
    args = ["benchmark", "flickr8k-expert", "--root", str(root), "--model", str(data["model"]), "-q"]
    token, expert = root / "Flickr8k.token.txt", root / "ExpertAnnotations.txt"
    cf = root / "CrowdFlowerAnnotations.txt"
    lines = token.read_text(encoding="utf-8").splitlines()

    token.write_text("\n".join([*lines[:6], lines[6].replace("\t", " "), *lines[7:]]) + "\n", encoding="utf-8")
    fail(args, capsys, f"{token}, line 7", "separated by one tab")
    token.write_text("\n".join(lines) + "\n", encoding="utf-8")

    good = expert.read_text(encoding="utf-8").splitlines()
    for bad, words in (
        (good[3].rsplit("\t", 1)[0] + "\tfive", ["line 4", "expert rating 3 'five' is not a number"]),
        (good[3].rsplit("\t", 1)[0] + "\t7", ["line 4", "outside [1, 4]"]),
        (good[3].split("\t", 1)[0] + "\tnobody.jpg#9\t1\t2\t3", ["line 4", "caption id 'nobody.jpg#9' is not in"]),
        ("\t".join(good[3].split("\t")[:4]), ["line 4", "expected 5 tab-separated fields"]),
        ("ghost.jpg\t" + good[3].split("\t", 1)[1], ["line 4", "'ghost.jpg' has no reference captions"]),
    ):
        expert.write_text("\n".join([*good[:3], bad, *good[4:]]) + "\n", encoding="utf-8")
        fail(args, capsys, str(expert), *words)
    expert.write_text("\n".join(good) + "\n", encoding="utf-8")

    (root / "Flicker8k_Dataset" / image_name(1)).unlink()
    fail(args, capsys, f"{expert}, line", f"{image_name(1)}' does not exist", "Flicker8k_Dataset/")
    (root / "Flicker8k_Dataset" / image_name(1)).write_bytes(b"not a jpeg")
    fail(args, capsys, str(expert), "cannot read image", image_name(1))

    rows = cf.read_text(encoding="utf-8").splitlines()
    image, caption_id, _, yes, no = rows[1].split("\t")
    cf.write_text(
        "\n".join([rows[0], f"{image}\t{caption_id}\t0.999\t{yes}\t{no}", *rows[2:]]) + "\n", encoding="utf-8"
    )
    cf_args = ["benchmark", "flickr8k-cf", "--root", str(root), "--model", str(data["model"]), "-q"]
    fail(cf_args, capsys, f"{cf}, line 2", "is not n yes / (n yes + n no)")
    cf.unlink()
    fail(cf_args, capsys, f"{cf} does not exist")
    # A root that is missing, a link loop or a file is named as such.
    loop, a_file = tmp_path / "loop", tmp_path / "a-file.txt"
    os.symlink(loop, loop)
    a_file.write_text("not a folder\n")
    for where, words in [
        ("nowhere", "does not exist"),
        ("loop", "is a symbolic link loop"),
        ("a-file.txt", "is a file"),
    ]:
        fail(["benchmark", "flickr8k-cf", "--root", str(tmp_path / where), "--model", "m"], capsys, where, words)
    fail(["benchmark", "flickr8k-expert", "--root", str(data["root"])], capsys, "pass --model")
    # An output that is an input is refused, and the input stays as it was.
    before = expert.read_bytes()
    fail([*args, "--per-sample", str(expert)], capsys, "refusing to overwrite an input")
    assert expert.read_bytes() == before


def test_per_sample_dash_prints_the_table_on_stdout_and_special_files_are_refused(data, encoder, tmp_path, capsys):
    args = benchmark_args(data, "flickr8k-expert", "--eps", str(EPS), "--bootstrap", "0")
    table = run([*args, "--per-sample", "-"], capsys)  # -q: stdout holds the table and nothing else
    rows = list(csv.DictReader(table.splitlines()))
    expected = data["expected"]["expert"]
    assert len(rows) == expected.num_judgments == 212
    for name, per_item in expected_scores(expected, encoder).items():
        values, _ = expanded(expected, per_item)
        np.testing.assert_allclose([float(row[name]) for row in rows], values, rtol=1e-4, atol=1e-5)
    fail([*args, "--per-sample", "-", "--json"], capsys, "--per-sample -", "--json")
    if hasattr(os, "mkfifo"):
        os.mkfifo(tmp_path / "fifo")
        fail([*args, "--per-sample", str(tmp_path / "fifo")], capsys, "--per-sample", "FIFO")
        assert capsys.readouterr().out == "" and stat.S_ISFIFO(os.stat(tmp_path / "fifo").st_mode)
