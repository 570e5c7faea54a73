"""The command line on a CLIP model: ``reference`` and ``score`` end to end, and how models are named.

The tiny random CLIP model of ``clip_fixtures`` encodes real images; expected values come from the functional API
(``mid_metric.functional``) on features that the test computes itself from the same images and captions.
"""

from __future__ import annotations

import csv
import json
import os
import re
import shutil

import pytest
from _cli import ENV, close, count_encoded_images, fail, run_cli, run_in_one_process, write_csv
from _cli_clip import EPS, NUM_CANDIDATES, NUM_PAIRS, build_work, encode, identity_of, load_extractor
from clip_fixtures import TINY_PROJECTION_DIM, build_tiny_clip

import mid_metric
from mid_metric import cli
from mid_metric.functional import mutual_information, mutual_information_divergence, pointwise_mutual_information


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    return build_work(tmp_path_factory.mktemp("cli"))


@pytest.fixture(scope="module")
def extractor(work):
    return load_extractor(work)


# ------------------------------------------------------------------------------------------ CLIP path
def test_reference_round_trip_score_json_and_per_sample(work, extractor, tmp_path, capsys, monkeypatch):
    root, model = work["root"], str(work["model"])
    ref = tmp_path / "ref.safetensors"
    monkeypatch.chdir(root)  # the pairs files' relative paths
    status = cli.main(
        [
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
        ]
    )
    quiet = capsys.readouterr()
    assert status == 0, quiet.err
    assert quiet.err == "" and quiet.out == ""  # --quiet

    real = work["real_rows"]
    x, y = encode(extractor, root / "real", [r["image"] for r in real], [r["caption"] for r in real])

    from mid_metric.io.reference_files import load_reference_statistics

    packed, meta = load_reference_statistics(ref)
    assert meta["feature_extractor"] == identity_of(work["model"])  # not the path, which depends on the cwd
    assert (meta["image_dim"], meta["text_dim"], meta["num_samples"]) == (TINY_PROJECTION_DIM,) * 2 + (NUM_PAIRS,)
    assert meta["eps"] == EPS

    per_sample = tmp_path / "per_sample.csv"
    shown = run_cli(
        [
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
        ],
        capsys,
    )
    report = json.loads(shown)

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


def test_captioning_with_reference_pairs_and_generated_captions(work, extractor, capsys, monkeypatch):
    root, model = work["root"], str(work["model"])
    monkeypatch.chdir(root)
    status = cli.main(
        [
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
        ]
    )
    proc = capsys.readouterr()
    assert status == 0, proc.err
    real = work["real_rows"]
    x, y = encode(extractor, root / "real", [r["image"] for r in real], [r["caption"] for r in real])
    _, y_gen = encode(extractor, root / "real", [], [r["generated"] for r in real])
    expected_mid = mutual_information_divergence(x, y, x, y_gen, eps=EPS).item()
    # The text output: MID to 6 decimals, what it means, the counts and the model; messages go to stderr.
    shown = re.search(r"^MID: (-?\d+\.\d+)", proc.out, re.M)
    assert shown and abs(float(shown.group(1)) - expected_mid) < 2e-6 * max(1.0, abs(expected_mid)), proc.out
    assert "higher is better" in proc.out and f"{NUM_PAIRS} candidate pairs" in proc.out
    assert identity_of(work["model"]) in proc.out and "Loading" in proc.err


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


# ------------------------------------------------------------------------------------------ model identity
@pytest.fixture(scope="module")
def moved(work, tmp_path_factory):
    """A layout where the model is given by relative paths: root/tinyclip, root/data.csv, root/elsewhere/."""
    root = tmp_path_factory.mktemp("relative")
    shutil.copytree(work["model"], root / "tinyclip")
    shutil.copytree(work["root"] / "real" / "images", root / "images")
    shutil.copy(work["root"] / "real" / "pairs.csv", root / "data.csv")
    (root / "elsewhere").mkdir()
    here = os.getcwd()
    os.chdir(root)
    try:
        status = cli.main(["reference", "data.csv", "-o", "ref.safetensors", "--model", "tinyclip", "--eps", str(EPS)])
    finally:
        os.chdir(here)
    assert status == 0
    return root


def test_local_model_is_recorded_by_fingerprint_not_path(moved, work, extractor, capsys, monkeypatch):
    from mid_metric.io.reference_files import load_reference_statistics

    _, meta = load_reference_statistics(moved / "ref.safetensors")
    assert meta["feature_extractor"] == identity_of(moved / "tinyclip") == identity_of(work["model"])

    elsewhere = moved / "elsewhere"
    monkeypatch.chdir(elsewhere)
    capsys.readouterr()
    # Without --model, the recorded local model cannot be loaded: one clear line asks for it (no download tried).
    assert cli.main(["score", "../data.csv", "--reference", "../ref.safetensors"]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    last = err.strip().splitlines()[-1]
    assert "--model PATH" in last and identity_of(work["model"]) in last and "Could not load" not in last

    # With the folder given by another relative path, it is recognised as the same model, and scores right.
    shown = run_cli(
        ["score", "../data.csv", "--reference", "../ref.safetensors", "--model", "../tinyclip", "--json", "-q"], capsys
    )
    report = json.loads(shown)
    real = work["real_rows"]
    x, y = encode(extractor, work["root"] / "real", [r["image"] for r in real], [r["caption"] for r in real])
    assert close(report["mid"], mutual_information_divergence(x, y, x, y, eps=EPS).item())
    assert report["model"] == identity_of(work["model"])

    # Another copy of the same weights is the same model too; other weights are another model.
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
    cands = ["score", str(root / "gen" / "cands.jsonl"), "--image-column", "file", "--caption-column", "prompt"]
    local = ["score", str(root / "real" / "pairs.csv"), "--reference", str(ref), "--model", str(work["model"])]
    # One fresh interpreter whose environment names the cache, for the four calls.
    made, scored, refused, unchecked = run_in_one_process(
        [
            (["reference", "real/pairs.csv", "-o", str(ref), "--model", "tiny-org/tiny-clip", "--eps", str(EPS)], root),
            # score takes the model from the file, from any folder.
            ([*cands, "--reference", str(ref), "--json", "-q"], tmp_path),
            # A local copy of the hub model is another name: refused, unless the check is turned off.
            (local, tmp_path),
            ([*local, "--no-check-feature-extractor", "--json", "-q"], tmp_path),
        ],
        env,
    )
    assert made.returncode == 0, made.stderr
    from mid_metric.io.reference_files import load_reference_statistics

    assert load_reference_statistics(ref)[1]["feature_extractor"] == "tiny-org/tiny-clip"
    assert scored.returncode == 0, scored.stderr
    report = json.loads(scored.stdout)
    assert report["model"] == "tiny-org/tiny-clip"
    real, cands = work["real_rows"], work["cand_rows"]
    x, y = encode(extractor, root / "real", [r["image"] for r in real], [r["caption"] for r in real])
    xc, yc = encode(extractor, root / "gen", [r["file"] for r in cands], [r["prompt"] for r in cands])
    assert close(report["mid"], mutual_information_divergence(x, y, xc, yc, eps=EPS).item())
    assert refused.returncode == 1 and "--no-check-feature-extractor" in refused.stderr, refused.stderr
    assert unchecked.returncode == 0, unchecked.stderr
    assert json.loads(unchecked.stdout)["reference_model"] == "tiny-org/tiny-clip"


def test_captioning_with_the_jackknife_groups_by_image_and_encodes_each_image_once(work, tmp_path, capsys, monkeypatch):

    encoded = count_encoded_images(monkeypatch)  # how many images each call encodes
    root, model = work["root"], str(work["model"])
    # The candidates: the reference's images with generated captions, listed in another order, so read in other
    # batches. Each image is encoded once per run, so both sets hold the very same image features, and the run
    # gives what the reference file itself as candidates gives.
    reversed_rows = [dict(row, image=str(root / "real" / row["image"])) for row in reversed(work["real_rows"])]
    write_csv(tmp_path / "captions.csv", reversed_rows, ["image", "caption", "generated"])
    reference = ["--reference-pairs", str(root / "real" / "pairs.csv"), "--model", model]
    options = ["--generated-caption-column", "generated", "--bias-correction", "jackknife", "--jackknife-groups", "40"]
    reports = []
    for candidates in (root / "real" / "pairs.csv", tmp_path / "captions.csv"):
        argv = ["score", str(candidates), *reference, *options, "--batch-size", "7", "--json", "-q"]
        reports.append(json.loads(run_cli(argv, capsys)))
        assert sum(encoded) == NUM_PAIRS, encoded  # the candidates' images were encoded with the reference's
        encoded.clear()
    assert reports[0]["estimator"] == "jackknife" and reports[0]["num_candidates"] == NUM_PAIRS
    assert reports[0]["mid"] == pytest.approx(reports[1]["mid"], rel=1e-5)  # rows summed in another order
    assert reports[0]["ci_low"] == pytest.approx(reports[1]["ci_low"], rel=1e-5)
