"""``mid-metric score --metrics ...,fd,cmmd``: the image-quality metrics from the one feature pass.

Expected values come from the Python metrics on the very features the files hold, and from the formulas written
out here (FD: ``|mu_r - mu_g|^2 + tr(S_r + S_g - 2 (S_r^1/2 S_g S_r^1/2)^1/2)`` with numpy's symmetric
eigendecomposition; CMMD: the dense mean of Gaussian kernels).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from _cli import count_encoded_images, fail, run_cli, unit, write_csv
from safetensors.torch import save_file

from mid_metric import cli
from mid_metric.metrics import CMMD, FrechetDistance


def _sqrt_psd(matrix: np.ndarray) -> np.ndarray:
    values, vectors = np.linalg.eigh((matrix + matrix.T) / 2)
    return (vectors * np.sqrt(np.clip(values, 0, None))) @ vectors.T


def frechet_formula(real: np.ndarray, generated: np.ndarray) -> float:
    """The Fréchet distance of Gaussians fitted to the rows (covariances with N - 1), in float64."""
    mu_r, mu_g = real.mean(0), generated.mean(0)
    s_r, s_g = np.cov(real, rowvar=False), np.cov(generated, rowvar=False)
    root = _sqrt_psd(s_r)
    cross = _sqrt_psd(root @ s_g @ root)
    return float(((mu_r - mu_g) ** 2).sum() + np.trace(s_r) + np.trace(s_g) - 2 * np.trace(cross))


def cmmd_formula(real: np.ndarray, generated: np.ndarray, sigma: float = 10.0, scale: float = 1000.0) -> float:
    """CMMD of L2-normalised rows: scale * (mean k(x, x') + mean k(y, y') - 2 mean k(x, y)), all pairs."""
    x = real / np.linalg.norm(real, axis=1, keepdims=True)
    y = generated / np.linalg.norm(generated, axis=1, keepdims=True)

    def kernel_mean(a: np.ndarray, b: np.ndarray) -> float:
        squared = (a**2).sum(1)[:, None] + (b**2).sum(1)[None, :] - 2 * a @ b.T
        return float(np.exp(-squared / (2 * sigma**2)).mean())

    return scale * (kernel_mean(x, x) + kernel_mean(y, y) - 2 * kernel_mean(x, y))


@pytest.fixture(scope="module")
def features(tmp_path_factory) -> dict:
    """Real pairs (200) and candidates (90) in R^6 x R^6 as .safetensors files, and the float32 arrays they hold."""
    folder = tmp_path_factory.mktemp("quality")
    g = torch.Generator().manual_seed(31)
    x = unit(torch.randn(200, 6, generator=g))
    y = unit(x + 0.8 * torch.randn(200, 6, generator=g))
    xc = unit(1.3 * torch.randn(90, 6, generator=g) + 0.4)
    yc = y[:90].clone()
    save_file({"image_features": x, "text_features": y}, str(folder / "real.safetensors"))
    save_file({"image_features": xc, "text_features": yc}, str(folder / "cands.safetensors"))
    return {"folder": folder, "x": x, "y": y, "xc": xc, "yc": yc}


def _score(features: dict, *options: str) -> list[str]:
    folder = features["folder"]
    return ["score", str(folder / "cands.safetensors"), "--reference-pairs", str(folder / "real.safetensors"), *options]


def test_fd_and_cmmd_equal_the_python_metrics_and_the_formulas(features, capsys):
    argv = _score(features, "--metrics", "cmmd,fd,mid,clip-score", "--json", "-q")
    report = json.loads(run_cli(argv, capsys))
    assert list(report["metrics"]) == ["mid", "clip-score", "fd", "cmmd"]  # the documented order
    x, xc = features["x"], features["xc"]
    fd = FrechetDistance(feature=6)
    fd.update(x, None, real=True)
    fd.update(xc, None, real=False)
    kernel = CMMD(feature=6)
    kernel.update(x, real=True)
    kernel.update(xc, real=False)
    entry_fd, entry_cmmd = report["metrics"]["fd"], report["metrics"]["cmmd"]
    assert entry_fd["value"] == float(fd.compute()) and entry_cmmd["value"] == float(kernel.compute())
    assert math.isclose(entry_fd["value"], frechet_formula(x.double().numpy(), xc.double().numpy()), rel_tol=1e-9)
    assert math.isclose(entry_cmmd["value"], cmmd_formula(x.double().numpy(), xc.double().numpy()), rel_tol=1e-5)
    # The JSON entries: the value first, then what it came from.
    assert list(entry_fd) == [
        "value",
        "plug_in",
        "estimator",
        "num_real",
        "num_generated",
        "standard_error",
        "ci_low",
        "ci_high",
        "ci_level",
        "num_groups",
    ]
    assert entry_fd["estimator"] == "plug-in" and entry_fd["plug_in"] == entry_fd["value"]
    assert (entry_fd["num_real"], entry_fd["num_generated"], entry_fd["ci_low"]) == (200, 90, None)
    assert entry_cmmd == {**entry_cmmd, "sigma": 10.0, "scale": 1000.0, "num_real": 200, "num_generated": 90}
    assert report["mid"] == report["metrics"]["mid"]["value"]  # MID's fields stay where they were

    text = run_cli(_score(features, "--metrics", "fd,cmmd", "-q"), capsys)
    assert f"FD: {entry_fd['value']:.6f}  (lower is better" in text
    assert f"CMMD: {entry_cmmd['value']:.6f}  (lower is better" in text
    assert "MID" not in text and "200 reference pairs" in text


def test_fd_from_a_reference_file_equals_fd_from_the_same_reference_pairs(features, capsys):
    folder = features["folder"]
    ref = folder / "ref.safetensors"
    if not ref.exists():
        assert cli.main(["reference", str(folder / "real.safetensors"), "-o", str(ref), "-q"]) == 0
    from_pairs = json.loads(run_cli(_score(features, "--metrics", "fd", "--json", "-q"), capsys))
    argv = ["score", str(folder / "cands.safetensors"), "--reference", str(ref), "--metrics", "fd", "--json", "-q"]
    from_file = json.loads(run_cli(argv, capsys))
    assert math.isclose(from_file["metrics"]["fd"]["value"], from_pairs["metrics"]["fd"]["value"], rel_tol=1e-9)
    assert from_file["metrics"]["fd"]["num_real"] == 200 and "mid" not in from_file


def test_cmmd_with_a_statistics_file_is_refused_before_any_work(features, capsys):
    folder = features["folder"]
    missing = folder / "no-such-candidates.csv"  # never read: the refusal comes first
    argv = ["score", str(missing), "--reference", str(folder / "ref.safetensors"), "--metrics", "fd,cmmd"]
    line = fail(argv, capsys, "cmmd needs the real images' features", "--reference-pairs")
    assert "MID" not in line and "mid " not in line


def test_fd_alone_needs_none_of_mids_checks_and_its_errors_name_only_fd(tmp_path, capsys):
    g = torch.Generator().manual_seed(32)
    # 8 reference pairs in R^6 x R^6: too few for MID's covariance of (image, text) at eps 0, enough for FD.
    x, y = torch.randn(8, 6, generator=g), torch.randn(8, 6, generator=g)
    xc, yc = torch.randn(5, 6, generator=g) + 1.0, torch.randn(5, 6, generator=g)
    save_file({"image_features": x, "text_features": y}, str(tmp_path / "small.safetensors"))
    save_file({"image_features": xc, "text_features": yc}, str(tmp_path / "c.safetensors"))
    argv = ["score", str(tmp_path / "c.safetensors"), "--reference-pairs", str(tmp_path / "small.safetensors")]
    report = json.loads(run_cli([*argv, "--metrics", "fd", "--json", "-q"], capsys))
    expected = frechet_formula(x.double().numpy(), xc.double().numpy())  # a singular S_g: its root is ill-conditioned
    assert math.isclose(report["metrics"]["fd"]["value"], expected, rel_tol=1e-6)
    fail([*argv, "--metrics", "mid,fd"], capsys, "MID")  # MID itself still refuses so small a reference
    save_file({"image_features": xc[:1], "text_features": yc[:1]}, str(tmp_path / "one.safetensors"))
    argv[1] = str(tmp_path / "one.safetensors")
    line = fail([*argv, "--metrics", "fd,cmmd"], capsys, "fd needs at least 2")
    assert "MID" not in line and "mid" not in line.replace("mid-metric", "")


def test_per_sample_has_no_column_for_the_set_level_metrics(features, tmp_path, capsys):
    out = tmp_path / "rows.csv"
    run_cli(_score(features, "--metrics", "clip-score,fd,cmmd", "--per-sample", str(out), "-q"), capsys)
    assert out.read_text().splitlines()[0] == "row,image,caption,clip_score"
    line = fail(_score(features, "--metrics", "fd,cmmd", "--per-sample", str(tmp_path / "x.csv")), capsys, "fd,cmmd")
    assert "--per-sample" in line and not (tmp_path / "x.csv").exists()


def test_the_jackknife_of_mid_jackknifes_fd_with_the_same_groups(features, capsys):
    groups = ["--bias-correction", "jackknife", "--jackknife-groups", "6"]
    report = json.loads(run_cli(_score(features, "--metrics", "fd", *groups, "--json", "-q"), capsys))
    # Text-to-image candidates (no --generated-caption-column): the groups are keyed by the captions, as MID's.
    metric = FrechetDistance(feature=(6, 6), bias_correction="jackknife", jackknife_groups=6, jackknife_key="text")
    metric.update(features["x"], features["y"], real=True)
    metric.update(features["xc"], features["yc"], real=False)
    expected = metric.compute_with_ci(0.95)
    entry = report["metrics"]["fd"]
    assert entry["estimator"] == "jackknife" and entry["num_groups"] == expected.num_groups
    assert entry["value"] == float(expected.value) and entry["plug_in"] == float(expected.plug_in)
    assert (entry["ci_low"], entry["ci_high"]) == (float(expected.ci_low), float(expected.ci_high))
    text = run_cli(_score(features, "--metrics", "fd", *groups, "-q"), capsys)
    assert f"FD (bias-corrected jackknife): {entry['value']:.6f}" in text and "95% confidence interval" in text
    # 'gaussian' has no FD counterpart: alone with fd it is refused, with mid it leaves fd at its plug-in value.
    fail(_score(features, "--metrics", "fd", "--bias-correction", "gaussian"), capsys, "--bias-correction jackknife")
    line = fail(_score(features, "--metrics", "clip-score,cmmd", *groups), capsys, "none of --metrics clip-score,cmmd")
    assert "mid" not in line.replace("mid-metric", "") and "fd" not in line
    mixed = json.loads(run_cli(_score(features, "--metrics", "mid,fd", "--bias-correction", "--json", "-q"), capsys))
    assert mixed["metrics"]["fd"]["estimator"] == "plug-in" and mixed["bias_corrected"] is True


def test_one_feature_pass_with_the_tiny_clip_and_the_cmmd_preprocessing(tmp_path, capsys, monkeypatch):
    from _cli_clip import NUM_CANDIDATES, NUM_PAIRS, build_work

    from mid_metric.features import load_clip

    work = build_work(tmp_path)
    encoded = count_encoded_images(monkeypatch)  # how many images each call encodes
    root, model = work["root"], str(work["model"])
    rows = [{"image": row["file"], "caption": row["prompt"]} for row in work["cand_rows"]]
    write_csv(root / "gen" / "cands.csv", rows, ["image", "caption"])
    argv = ["score", str(root / "gen" / "cands.csv"), "--reference-pairs", str(root / "real" / "pairs.csv")]
    argv += ["--model", model, "--preprocess", "cmmd", "--metrics", "clip-score,fd,cmmd", "--json", "-q"]
    report = json.loads(run_cli(argv, capsys))
    assert sum(encoded) == NUM_PAIRS + NUM_CANDIDATES, encoded  # each image once, every metric from that pass
    extractor = load_clip(model, device="cpu", preprocess="cmmd")
    from PIL import Image

    real = [Image.open(root / "real" / row["image"]) for row in work["real_rows"]]
    generated = [Image.open(root / "gen" / row["file"]) for row in work["cand_rows"]]
    x, xc = extractor.encode_images(real).double().numpy(), extractor.encode_images(generated).double().numpy()
    assert math.isclose(report["metrics"]["fd"]["value"], frechet_formula(x, xc), rel_tol=1e-4)
    assert math.isclose(report["metrics"]["cmmd"]["value"], cmmd_formula(x, xc), rel_tol=1e-4, abs_tol=1e-6)
    assert Path(report["candidates"]).name == "cands.csv"
