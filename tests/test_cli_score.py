"""``mid-metric score``: precomputed features, model provenance, the report, ``--metrics`` and the estimators.

Expected values come from the functional API and from the formulas written out in the tests.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from _cli import close, fail, gaussian_features, run, run_cli, unit
from _cli_clip import EPS, build_work, encode, identity_of, load_extractor
from clip_fixtures import TINY_PROJECTION_DIM
from safetensors.torch import save_file

from mid_metric import cli
from mid_metric.functional import mutual_information_divergence, pointwise_mutual_information


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    return build_work(tmp_path_factory.mktemp("cli"))


@pytest.fixture(scope="module")
def extractor(work):
    return load_extractor(work)


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
    from mid_metric.metrics import MutualInformationDivergence

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


# ------------------------------------------------------------------------------------ --metrics (one feature pass)
def test_score_computes_every_requested_metric_from_one_feature_pass(tmp_path, capsys):
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(21)
    x = unit(torch.randn(300, 6, generator=g))
    y = unit(x + 0.7 * torch.randn(300, 6, generator=g))
    xc = unit(y[:120] + 0.9 * torch.randn(120, 6, generator=g))
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
    cos = unit(xd) @ unit(yd).T  # cos(image_j, text_k)
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
    x, y = unit(torch.randn(40, 4, generator=g)), unit(torch.randn(40, 4, generator=g))
    save_file({"image_features": x, "text_features": y}, str(tmp_path / "f.safetensors"))
    base = ["score", str(tmp_path / "f.safetensors"), "--reference-pairs", str(tmp_path / "f.safetensors")]
    assert cli.main([*base, "--metrics", "clip-score", "--quiet"]) == 0
    text = capsys.readouterr().out
    expected = (2.5 * (x.double() * y.double()).sum(dim=1).clamp(min=0)).mean().item()
    assert f"CLIP-S: {expected:.6f}" in text and "MID" not in text
    with pytest.raises(SystemExit) as exit_info:
        cli.main([*base, "--metrics", "mid,fid"])
    assert exit_info.value.code == 2
    assert (
        "expected a comma-separated list of mid, clip-score, r-precision, infonce, fd, cmmd" in capsys.readouterr().err
    )


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


# ------------------------------------------------------------------------- the jackknife on the command line
def _captioning_features(tmp_path: Path) -> tuple[Path, Path, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Reference pairs (x, y) and generated captions of the very same images (x, y_gen), as features files."""
    gen = torch.Generator().manual_seed(31)
    x = torch.randn(120, 3, generator=gen, dtype=torch.float64)
    y = 0.6 * x + 0.8 * torch.randn(120, 3, generator=gen, dtype=torch.float64)
    y_gen = 0.4 * x + 0.9 * torch.randn(120, 3, generator=gen, dtype=torch.float64)
    np.savez(tmp_path / "real.npz", image_features=x.numpy(), text_features=y.numpy())
    np.savez(tmp_path / "captions.npz", image_features=x.numpy(), text_features=y_gen.numpy())
    return tmp_path / "real.npz", tmp_path / "captions.npz", x, y, y_gen


def _no_python_names(err: str) -> None:
    """A command-line error names options, never the library's arguments, and never advises eps."""
    assert "`" not in err and "jackknife_key" not in err and "num_groups" not in err, err
    assert "eps" not in err, err


def test_jackknife_runs_the_captioning_protocol_with_the_image_key(tmp_path, capsys):
    from mid_metric import jackknife, moments

    real, captions, x, y, y_gen = _captioning_features(tmp_path)
    argv = ["score", str(captions), "--reference-pairs", str(real), "--bias-correction", "jackknife", "--json", "-q"]
    # Grouped by caption (the default without --generated-caption-column), the shared images cannot stay together:
    # the error says which option groups them by image.
    _no_python_names(fail(argv, capsys, "--jackknife-key image"))
    for groups in (10, 7):
        assert cli.main([*argv, "--jackknife-key", "image", "--jackknife-groups", str(groups)]) == 0
        report = json.loads(capsys.readouterr().out)
        reference, candidates = (
            jackknife.group_moments(moments.joint_rows(x, texts), 3, groups, key="image") for texts in (y, y_gen)
        )
        expected = jackknife.jackknife_divergence(reference, candidates, image_dim=3)
        assert report["estimator"] == "jackknife" and close(report["mid"], expected.mid.item(), 1e-9)
        assert close(report["ci_low"], expected.ci_low.item(), 1e-9)
    # The jackknife's options need the jackknife.
    plain = ["score", str(captions), "--reference-pairs", str(real)]
    fail([*plain, "--jackknife-key", "image"], capsys, "--jackknife-key", "--bias-correction jackknife")
    fail([*plain, "--bias-correction", "--jackknife-groups", "5"], capsys, "--jackknife-groups")


def test_errors_of_bias_corrected_runs_never_advise_eps(tmp_path, capsys):
    real, cands, x, y, *_ = gaussian_features(tmp_path)
    # A reference whose text features are linearly dependent: its covariance is singular.
    np.savez(tmp_path / "flat.npz", image_features=x.numpy(), text_features=torch.cat([y[:, :2], y[:, :1]], 1).numpy())
    argv = ["score", str(cands), "--reference-pairs", str(tmp_path / "flat.npz")]
    fail(argv, capsys, "not positive definite", "--eps")  # the paper's estimator may regularise ...
    for estimator in ("gaussian", "jackknife"):  # ... the corrections, which need --eps 0, may not
        _no_python_names(fail([*argv, "--bias-correction", estimator], capsys, "not positive definite"))
    # Too few reference pairs left without a jackknife group: options of the command line, no eps.
    np.savez(tmp_path / "few.npz", image_features=x[:9].numpy(), text_features=y[:9].numpy())
    argv = ["score", str(cands), "--reference-pairs", str(tmp_path / "few.npz"), "--bias-correction", "jackknife"]
    _no_python_names(fail(argv, capsys, "--jackknife-groups", "--bias-correction gaussian"))
    # Asked for together, --eps and a correction are refused by name; so is the eps that a reference file records.
    argv = ["score", str(cands), "--reference-pairs", str(real), "--eps", "1e-3", "--bias-correction"]
    fail(argv, capsys, "--bias-correction needs --eps 0", "got --eps 0.001")
    assert cli.main(["reference", str(real), "-o", str(tmp_path / "ref.safetensors"), "--eps", "5e-4", "-q"]) == 0
    argv = ["score", str(cands), "--reference", str(tmp_path / "ref.safetensors"), "--bias-correction"]
    fail(argv, capsys, "records eps 0.0005", "--eps 0")
    assert cli.main([*argv, "--eps", "0", "-q"]) == 0
    capsys.readouterr()
    # Too few reference pairs for the corrected estimator: no eps either.
    np.savez(tmp_path / "eight.npz", image_features=x[:8].numpy(), text_features=y[:8].numpy())
    argv = ["score", str(cands), "--reference-pairs", str(tmp_path / "eight.npz"), "--bias-correction"]
    _no_python_names(fail(argv, capsys, "8 pairs", "8 reference pairs"))


def test_an_error_never_names_a_metric_that_was_not_requested(tmp_path, capsys):
    real, _, x, y, xc, yc = gaussian_features(tmp_path)
    np.savez(tmp_path / "one.npz", image_features=xc[:1].numpy(), text_features=yc[:1].numpy())
    np.savez(tmp_path / "tiny.npz", image_features=x[:4].numpy(), text_features=y[:4].numpy())  # too few for MID
    for reference in (real, tmp_path / "tiny.npz"):
        argv = ["score", str(tmp_path / "one.npz"), "--reference-pairs", str(reference), "--metrics", "clip-score"]
        out = run_cli([*argv, "--json", "-q"], capsys)
        expected = 2.5 * max(float(unit(xc[:1]) @ unit(yc[:1]).T), 0.0)  # CLIP-S of the one pair, by its formula
        assert close(json.loads(out)["metrics"]["clip-score"]["value"], expected, 1e-9)
    # Asked for, MID names itself.
    fail(["score", str(tmp_path / "one.npz"), "--reference-pairs", str(real)], capsys, "MID", "2 candidate pairs")
    fail(["score", str(tmp_path / "one.npz"), "--reference-pairs", str(tmp_path / "tiny.npz")], capsys, "4 pairs")
