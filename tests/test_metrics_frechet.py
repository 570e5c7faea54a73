"""FrechetDistance and MID.frechet_distance against independent implementations, and their jackknife.

- the plug-in value against a two-pass float64 numpy/scipy implementation written here from the formula (symmetric
  eigenproblems), on hard CLIP-like features (1e-9), and against pytorch-fid's formula (``scipy.linalg.sqrtm`` of
  ``S_r S_g``, its ``eps`` retry and real part) within 1e-6;
- the jackknife against the delete-a-group formula written here: each group's images left out of both sets, the
  plug-in values of the rest from the numpy implementation, combined as ``G t - sum_k (1 - f_k) t_k``;
- the metric through the shared tester (batch splits, order, pickle, clone, ``state_dict``, ``merge_state``, and one
  launch of 2-process DDP with uneven and empty ranks), reference files, MID's own statistics, a MetricCollection,
  and the jackknife's bias on Gaussian features with a known Fréchet distance.
"""

from __future__ import annotations

import math
from functools import partial

import numpy as np
import pytest
import torch
from _ddp import ddp_marks
from _tester import MetricCase, check_all_in_process, check_ddp
from reference_impl import ClipLikeDistribution
from scipy import linalg
from torch import nn
from torchmetrics import MetricCollection
from torchmetrics.image.fid import FrechetInceptionDistance

from mid_metric import CMMD, FrechetDistance, MutualInformationDivergence
from mid_metric.functional import frechet_distance
from mid_metric.jackknife import row_groups, row_hashes

F64 = torch.float64
D = 6
K = 4

# The tester computes a metric loaded from a state_dict, which torchmetrics warns about (no update() was called).
pytestmark = pytest.mark.filterwarnings("ignore:The ``compute`` method of metric")


# ----------------------------------------------------------------------------------------- references
def numpy_statistics(features: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Two-pass float64 mean and unbiased covariance."""
    rows = features.double().numpy()
    mean = rows.mean(axis=0)
    centred = rows - mean
    return mean, centred.T @ centred / (rows.shape[0] - 1)


def numpy_fd(real: torch.Tensor, generated: torch.Tensor) -> float:
    """``|mu_r - mu_g|^2 + tr S_r + tr S_g - 2 sum sqrt(eig(S_r^1/2 S_g S_r^1/2))`` with scipy's symmetric eigh."""
    (mu_r, s_r), (mu_g, s_g) = numpy_statistics(real), numpy_statistics(generated)
    values, vectors = linalg.eigh(s_r)
    root = (vectors * np.sqrt(np.clip(values, 0, None))) @ vectors.T
    inner = linalg.eigvalsh(root @ s_g @ root)
    return float(
        np.sum((mu_r - mu_g) ** 2) + np.trace(s_r) + np.trace(s_g) - 2 * np.sqrt(np.clip(inner, 0, None)).sum()
    )


def pytorch_fid(real: torch.Tensor, generated: torch.Tensor, eps: float = 1e-6) -> float:
    """pytorch-fid's ``calculate_frechet_distance`` on ``np.cov`` statistics, written again from its formula."""
    rows_r, rows_g = real.double().numpy(), generated.double().numpy()
    mu1, sigma1 = rows_r.mean(axis=0), np.cov(rows_r, rowvar=False)
    mu2, sigma2 = rows_g.mean(axis=0), np.cov(rows_g, rowvar=False)
    covmean = linalg.sqrtm(sigma1.dot(sigma2))
    if not np.isfinite(covmean).all():
        offset = np.eye(sigma1.shape[0]) * eps
        covmean = linalg.sqrtm((sigma1 + offset).dot(sigma2 + offset))
    if np.iscomplexobj(covmean):
        covmean = covmean.real
    diff = mu1 - mu2
    return float(diff.dot(diff) + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean))


def jackknife_fd(real: torch.Tensor, generated: torch.Tensor, groups_real, groups_generated, num_groups: int) -> float:
    """The delete-a-group jackknife: ``G t - sum_k (1 - f_k) t_k``, ``f_k`` the share of all rows in group ``k``."""
    full = numpy_fd(real, generated)
    total = real.shape[0] + generated.shape[0]
    estimate, used = 0.0, 0
    for k in range(num_groups):
        in_real, in_generated = groups_real == k, groups_generated == k
        share = (int(in_real.sum()) + int(in_generated.sum())) / total
        if share == 0:
            continue
        used += 1
        estimate -= (1 - share) * numpy_fd(real[~in_real], generated[~in_generated])
    return used * full + estimate


def image_groups(images: torch.Tensor, num_groups: int = K) -> torch.Tensor:
    """The group of each image row: the hash of its features (the metric's rule)."""
    return row_groups(images.double(), images.shape[1], num_groups, "image")


def caption_groups(texts: torch.Tensor, num_groups: int = K) -> torch.Tensor:
    """With ``jackknife_key="text"``: the hash of a one-column tag, the caption's row hash modulo 2^20."""
    tags = (row_hashes(texts) % 2**20).double().unsqueeze(1)
    return row_groups(tags, 0, num_groups, "text")


# ------------------------------------------------------------------------------------------- data
def correlated(n: int, seed: int, shift: float = 0.0, scale: float = 1.0, dim: int = D) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    mixing = torch.eye(dim, dtype=F64) + 0.4 * torch.randn(dim, dim, dtype=F64, generator=torch.Generator())
    return (scale * torch.randn(n, dim, dtype=F64, generator=g) @ mixing + shift).float()


@pytest.fixture(scope="module")
def sets() -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)  # the mixing matrix of `correlated`
    return correlated(90, seed=1), correlated(75, seed=2, shift=0.3, scale=1.2)


def clip_like_sets(n: int = 1500, dim: int = 48) -> tuple[torch.Tensor, torch.Tensor]:
    """float32 CLIP-like features (covariance eigenvalues 1e-3 .. 1e-9, mean norm 0.99), the two sets nearly alike."""
    real_model, other_model = ClipLikeDistribution(dim, dim, seed=0), ClipLikeDistribution(dim, dim, seed=1)
    real = real_model.sample(n, seed=2)[0]
    other = other_model.sample(n, seed=3, dtype=F64)[0]
    shift = torch.full((dim,), 0.01 / math.sqrt(dim), dtype=F64)
    return real, (other - other_model.mx + real_model.mx + shift).float()


def feed(metric, real: torch.Tensor, generated: torch.Tensor, batch: int = 64):
    for start in range(0, max(real.shape[0], generated.shape[0]), batch):
        metric.update(real[start : start + batch], None, real=True)
        metric.update(generated[start : start + batch], None, real=False)
    return metric


# ------------------------------------------------------------------------------------------ anchors
def test_equals_two_pass_on_hard_clip_like_features():
    real, generated = clip_like_sets()
    expected = numpy_fd(real, generated)
    value = feed(FrechetDistance(feature=48), real, generated, batch=100).compute()
    assert value.dtype == F64
    assert math.isclose(float(value), expected, rel_tol=1e-9)
    assert math.isclose(float(value), float(frechet_distance(real, generated)), rel_tol=1e-9)


def test_agrees_with_pytorch_fid_formula(sets):
    real, generated = sets
    value = float(feed(FrechetDistance(feature=D), real, generated, batch=20).compute())
    assert math.isclose(value, pytorch_fid(real, generated), rel_tol=1e-6)


class LookupFeatures(nn.Module):
    """A feature extractor for torchmetrics' FID: "images" are row indices into a fixed feature table."""

    def __init__(self, table: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("table", table)
        self.num_features = table.shape[1]

    def forward(self, indices: torch.Tensor) -> torch.Tensor:
        return self.table[indices]


def test_agrees_with_torchmetrics_fid_given_the_same_features(sets):
    real, generated = sets
    fid = FrechetInceptionDistance(feature=LookupFeatures(torch.cat([real, generated])))
    fid.update(torch.arange(real.shape[0]), real=True)
    fid.update(torch.arange(real.shape[0], real.shape[0] + generated.shape[0]), real=False)
    value = float(feed(FrechetDistance(feature=D), real, generated, batch=16).compute())
    assert math.isclose(value, float(fid.compute()), rel_tol=1e-6)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("bias_correction", [False, "jackknife"])
def test_runs_on_the_state_device(sets, bias_correction):
    real, generated = sets
    on_cpu = feed(FrechetDistance(feature=D, bias_correction=bias_correction), real, generated, batch=16)
    on_gpu = FrechetDistance(feature=D, bias_correction=bias_correction).cuda()
    feed(on_gpu, real.cuda(), generated, batch=16)  # CPU features are moved to the state's device
    value = on_gpu.compute()
    assert value.device.type == "cuda" and value.dtype == F64
    assert math.isclose(float(value), float(on_cpu.compute()), rel_tol=1e-9)


def _cases(real: torch.Tensor, generated: torch.Tensor) -> list[MetricCase]:
    texts = torch.randn(real.shape[0], D, generator=torch.Generator().manual_seed(9))
    paired = [  # generated images for the first captions: the text key groups the pairs together
        ((real[:50], texts[:50]), {"real": True}),
        ((generated[:40], texts[:40]), {"real": False}),
        ((real[50:], texts[50:]), {"real": True}),
        ((generated[40:], texts[40:75]), {"real": False}),
    ]
    calls = [
        ((real[:50], None), {"real": True}),
        ((generated[:40], None), {"real": False}),
        ((real[50:], None), {"real": True}),
        ((generated[40:], None), {"real": False}),
    ]
    groups = (image_groups(real), image_groups(generated))
    plain = MetricCase(
        factory=partial(FrechetDistance, feature=D, buffer_rows=16),
        calls=calls,
        expected=numpy_fd(real, generated),
        functional=partial(frechet_distance, real, generated),
        rel=1e-10,
    )
    jackknifed = MetricCase(
        factory=partial(FrechetDistance, feature=D, bias_correction="jackknife", jackknife_groups=K, buffer_rows=32),
        calls=calls,
        expected=jackknife_fd(real, generated, *groups, K),
        rel=1e-9,
    )
    by_caption = MetricCase(
        factory=partial(
            FrechetDistance, feature=D, bias_correction="jackknife", jackknife_groups=K, jackknife_key="text"
        ),
        calls=paired,
        expected=jackknife_fd(real, generated, caption_groups(texts), caption_groups(texts[:75]), K),
        rel=1e-9,
    )
    return [plain, jackknifed, by_caption]


@pytest.mark.parametrize("which", [0, 1, 2], ids=["plain", "jackknife", "jackknife_by_caption"])
def test_metric_in_every_way(sets, which):
    check_all_in_process(_cases(*sets)[which])


@pytest.mark.filterwarnings("ignore:The ``compute`` method of metric")
def test_metric_under_ddp(sets):
    check_ddp(*_cases(*sets))


for _mark in ddp_marks:
    test_metric_under_ddp = _mark(test_metric_under_ddp)


# ----------------------------------------------------------------------------------------- jackknife
def test_jackknife_plug_in_equals_the_plain_metric(sets):
    real, generated = sets
    plain = feed(FrechetDistance(feature=D), real, generated, batch=7).compute()
    jackknifed = feed(FrechetDistance(feature=D, bias_correction="jackknife"), real, generated, batch=7)
    result = jackknifed.compute_result()
    assert math.isclose(float(result.plug_in), float(plain), rel_tol=1e-12)
    assert result.bias_corrected and result.num_groups == 10 and (result.num_real, result.num_generated) == (90, 75)
    ci = jackknifed.compute_with_ci(0.9)
    assert ci.ci_level == 0.9 and float(ci.ci_low) < float(ci.value) < float(ci.ci_high)
    assert math.isclose(float(ci.ci_high - ci.value), float(ci.value - ci.ci_low), rel_tol=1e-12)


def _gaussian_sets(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    scales = torch.linspace(0.8, 1.25, 8, dtype=F64)
    real = torch.randn(n, 8, dtype=F64, generator=g)
    return real, 0.05 + scales * torch.randn(n, 8, dtype=F64, generator=g)


def test_jackknife_is_closer_to_the_known_distance_than_the_plug_in():
    # N(0, I) and N(0.05, diag(s^2)): FD = 8 * 0.05^2 + sum (1 - s)^2.
    truth = 8 * 0.05**2 + float(((1 - torch.linspace(0.8, 1.25, 8, dtype=F64)) ** 2).sum())
    plug_in, jackknifed = [], []
    for seed in range(12):
        metric = feed(FrechetDistance(feature=8, bias_correction="jackknife"), *_gaussian_sets(400, seed), batch=400)
        result = metric.compute_result()
        plug_in.append(float(result.plug_in) / truth - 1)
        jackknifed.append(float(result.value) / truth - 1)
    plug_in_bias, jackknife_bias = float(np.mean(plug_in)), float(np.mean(jackknifed))
    assert plug_in_bias > 0.15  # the plug-in value is far too high at N = 400
    assert abs(jackknife_bias) < 0.05 and abs(jackknife_bias) < plug_in_bias / 4


def test_jackknife_groups_follow_the_image_rows(sets):
    real, generated = sets
    metric = feed(FrechetDistance(feature=D, bias_correction="jackknife", jackknife_groups=K), real, generated, 13)
    counts = torch.bincount(image_groups(real), minlength=K).double()
    assert torch.equal(metric.metric_state["real_moments"][:, 0], counts)  # the K group states, staged rows flushed


def _paired_sets(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Captions ``y``, real images ``0.8 y + 0.6 e`` and images made from the captions, ``0.9 y + 0.4 e' + 0.2``."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randn(n, 8, dtype=F64, generator=g)
    real = 0.8 * y + 0.6 * torch.randn(n, 8, dtype=F64, generator=g)
    return y, real, 0.9 * y + 0.4 * torch.randn(n, 8, dtype=F64, generator=g) + 0.2


def test_paired_sets_need_caption_groups():
    # Both sets are N(., s^2 I) with s^2 = 1.0 and 0.97, mean shift 0.2: FD = 8 (0.2^2 + (1 - sqrt(0.97))^2).
    truth = 8 * (0.2**2 + (1 - math.sqrt(0.97)) ** 2)
    errors: dict[str, list[float]] = {"plug_in": [], "image": [], "text": []}
    for seed in range(16):
        y, real, generated = _paired_sets(400, seed)
        for key in ("image", "text"):
            metric = FrechetDistance(feature=8, bias_correction="jackknife", jackknife_key=key)
            metric.update(real, y, real=True)
            metric.update(generated, [f"caption {i}" for i in range(400)] if key == "image" else y, real=False)
            result = metric.compute_result()
            errors[key].append(float(result.value) / truth - 1)
        errors["plug_in"].append(float(result.plug_in) / truth - 1)
    means = {key: float(np.mean(values)) for key, values in errors.items()}
    # Measured: plug-in +14%, image groups -26% (they remove the bias of independent sets, which is larger), caption
    # groups -2%, each +/- 3% (standard error over the seeds).
    assert means["plug_in"] > 0.05 and means["image"] < -0.1
    assert abs(means["text"]) < 0.1 and abs(means["text"]) < abs(means["image"]) / 2


def test_caption_strings_and_features_group_alike():
    y, real, generated = _paired_sets(60, seed=11)
    captions = [f"caption {i % 20}" for i in range(60)]
    values = []
    for texts in (captions, y):
        metric = FrechetDistance(feature=8, bias_correction="jackknife", jackknife_groups=3, jackknife_key="text")
        metric.update(real, texts, real=True)
        metric.update(generated, texts, real=False)
        state = metric.metric_state
        same = [torch.equal(state["real_moments"][:, 0], state["generated_moments"][:, 0])]
        values.append((metric.compute(), same))
    assert all(same for _, same in values)  # a caption's real and generated images fall in one group
    with pytest.raises(ValueError, match="pass the captions .* as `texts` with every batch"):
        metric.update(real, None, real=True)
    with pytest.raises(ValueError, match="same number of pairs"):
        metric.update(real, captions[:10], real=True)


# -------------------------------------------------------------------------------------- MID's statistics
def _pairs(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, D, dtype=F64, generator=g)
    y = 0.6 * x + 0.8 * torch.randn(n, D, dtype=F64, generator=g)
    x0 = 0.5 * y + 0.9 * torch.randn(n, D, dtype=F64, generator=g) + 0.1  # images generated for the captions y
    return x, y, x0


def test_mid_frechet_distance_equals_the_metric():
    x, y, x0 = _pairs(300, seed=3)
    mid = MutualInformationDivergence(feature=D, buffer_rows=64)
    for start in range(0, 300, 50):
        mid.update_pairs(x[start : start + 50], y[start : start + 50], x0[start : start + 50])
    mid.update(x[:7], y[:7], real=True)  # staged rows count too
    expected = numpy_fd(torch.cat([x, x[:7]]), x0)
    assert math.isclose(float(mid.frechet_distance()), expected, rel_tol=1e-10)
    metric = feed(FrechetDistance(feature=D), torch.cat([x, x[:7]]), x0, batch=50)
    assert math.isclose(float(mid.frechet_distance(bias_correction=False)), float(metric.compute()), rel_tol=1e-12)
    with pytest.raises(ValueError, match="reuses MID's jackknife groups"):
        mid.frechet_distance("jackknife")
    with pytest.raises(ValueError, match="must be False .* or 'jackknife', got True"):
        mid.frechet_distance(True)
    with pytest.raises(ValueError, match="reuses MID's jackknife groups"):
        mid.frechet_distance_with_ci()


def test_mid_jackknife_frechet_distance_groups_by_caption():
    x, y, x0 = _pairs(400, seed=4)
    mid = MutualInformationDivergence(feature=D, bias_correction="jackknife", jackknife_groups=K)
    mid.update_pairs(x, y, x0)
    text_groups = row_groups(torch.cat([x, y], 1), D, K, "text")  # a real image and its candidate share a group
    expected = jackknife_fd(x, x0, text_groups, text_groups, K)
    assert math.isclose(float(mid.frechet_distance()), expected, rel_tol=1e-9)
    assert math.isclose(float(mid.frechet_distance(False)), numpy_fd(x, x0), rel_tol=1e-10)
    result = mid.frechet_distance_with_ci(0.8)
    assert math.isclose(float(result.value), expected, rel_tol=1e-9) and result.ci_level == 0.8


def test_reference_file_gives_the_accumulated_value(tmp_path):
    x, y, x0 = _pairs(200, seed=5)
    mid = MutualInformationDivergence(feature=D)
    mid.update(x, y, real=True)
    path = mid.save_reference(tmp_path / "reference.safetensors", "toy-encoder")
    accumulated = feed(FrechetDistance(feature=D), x, x0, batch=32).compute()
    loaded = FrechetDistance(feature=D, reference=path, reset_real_features=False)
    loaded.update(x0, None, real=False)
    assert math.isclose(float(loaded.compute()), float(accumulated), rel_tol=1e-12)
    restored = FrechetDistance(feature=D)  # the loaded statistics travel in the state_dict
    restored.load_state_dict(loaded.state_dict())
    assert math.isclose(float(restored.compute()), float(accumulated), rel_tol=1e-12)
    loaded.reset()  # reset_real_features=False keeps the file
    loaded.update(x0[:100], None, real=False)
    assert math.isclose(float(loaded.compute()), numpy_fd(x, x0[:100]), rel_tol=1e-10)
    with pytest.raises(ValueError, match=r"\(image_dim, text_dim\) = \(6, 6\), but this metric has \(4, 6\)"):
        FrechetDistance(feature=4, reference=path)
    with pytest.raises(ValueError, match="cannot use a reference statistics file"):
        FrechetDistance(feature=D, bias_correction="jackknife", reference=path)


# -------------------------------------------------------------------------------------- the metric's API
def test_one_collection_feeds_alignment_and_quality():
    x, y, x0 = _pairs(120, seed=6)
    collection = MetricCollection(
        {"mid": MutualInformationDivergence(feature=D), "fd": FrechetDistance(feature=D), "cmmd": CMMD(feature=D)}
    )
    for start in range(0, 120, 40):
        collection.update(x[start : start + 40], y[start : start + 40], real=True)
        collection.update(x0[start : start + 40], y[start : start + 40], real=False)
    values = collection.compute()
    assert math.isclose(float(values["fd"]), float(collection["mid"].frechet_distance()), rel_tol=1e-12)


class PooledEncoder:
    """A feature extractor: images average-pooled to 2 x 2, times a fixed matrix; it counts its text calls."""

    name, image_dim, text_dim = "pooled-encoder", D, D

    def __init__(self) -> None:
        self.weights = torch.randn(12, D, generator=torch.Generator().manual_seed(7))
        self.text_calls = 0

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.adaptive_avg_pool2d(images.float(), 2).flatten(1) @ self.weights

    def encode_texts(self, texts: list[str]) -> torch.Tensor:
        self.text_calls += 1
        return torch.ones(len(texts), D)


def test_raw_images_go_through_the_image_encoder_only():
    encoder = PooledEncoder()
    metric = FrechetDistance(feature=encoder)
    g = torch.Generator().manual_seed(8)
    real, generated = torch.rand(40, 3, 4, 4, generator=g), 0.5 + 0.5 * torch.rand(30, 3, 4, 4, generator=g)
    metric.update(real, ["a caption"] * 40, real=True)
    metric.update(generated, None, real=False)
    features = [torch.nn.functional.normalize(encoder.encode_images(images), dim=1) for images in (real, generated)]
    assert math.isclose(float(metric.compute()), numpy_fd(*features), rel_tol=1e-9)
    assert encoder.text_calls == 0 and metric.feature_extractor_name == "pooled-encoder"


def test_forward_adds_the_batch_and_returns_none(sets):
    real, generated = sets
    metric = FrechetDistance(feature=D)
    assert metric(real, None, real=True) is None
    assert metric(generated, None, False) is None
    assert math.isclose(float(metric.compute()), numpy_fd(real, generated), rel_tol=1e-10)


def test_bad_input_raises_and_keeps_the_state(sets):
    real, generated = sets
    metric = FrechetDistance(feature=D, buffer_rows=8)
    feed(metric, real[:20], generated[:20], batch=5)
    before = {key: value.clone() for key, value in metric.state_dict().items() if isinstance(value, torch.Tensor)}
    with pytest.raises(TypeError, match="`real`"):
        metric.update(real, None, real="yes")
    with pytest.raises(ValueError, match=r"`images` must have shape \(batch, 6\)"):
        metric.update(real[:, :4], None, real=True)
    with pytest.raises(ValueError, match="`images` contains NaN or Inf"):
        metric.update(torch.full((2, D), float("nan")), None, real=True)
    other = FrechetDistance(feature=D, bias_correction="jackknife")
    other.update(real, None, real=True)
    with pytest.raises(ValueError, match="real_moments"):
        metric.merge_state(other)
    with pytest.raises(ValueError, match="real_moments"):
        metric.load_state_dict(other.state_dict())
    after = {key: value for key, value in metric.state_dict().items() if isinstance(value, torch.Tensor)}
    assert before.keys() == after.keys() and all(torch.equal(before[key], after[key]) for key in before)


def test_settings_and_counts_are_checked(sets):
    real, generated = sets
    with pytest.raises(ValueError, match="must be False .* or 'jackknife', got True"):
        FrechetDistance(feature=D, bias_correction=True)
    with pytest.raises(ValueError, match="`jackknife_groups` must be between 2 and 1000"):
        FrechetDistance(feature=D, bias_correction="jackknife", jackknife_groups=1)
    metric = FrechetDistance(feature=D)
    metric.update(real, None, real=True)
    metric.update(generated[:1], None, real=False)
    with pytest.raises(ValueError, match="needs at least 2 generated images"):
        metric.compute()
    with pytest.raises(ValueError, match="needs FrechetDistance\\(bias_correction='jackknife'\\)"):
        metric.compute_with_ci()
    jackknifed = FrechetDistance(feature=D, bias_correction="jackknife", jackknife_groups=K)
    jackknifed.update(real, None, real=True)
    jackknifed.update(generated[:2], None, real=False)
    with pytest.raises(ValueError, match="at least 2 generated images without each group"):
        jackknifed.compute()
    assert FrechetDistance.higher_is_better is False and FrechetDistance.full_state_update is False
    settings = FrechetDistance(feature=D, bias_correction="jackknife", jackknife_groups=K)._sync_settings()
    assert settings["bias_correction"] == "jackknife" and settings["jackknife_groups"] == K


def test_a_bad_extra_state_names_the_metric_and_changes_nothing(sets):
    real, generated = sets
    metric = feed(FrechetDistance(feature=D), real, generated, batch=7)
    saved = metric.state_dict()
    before = metric.compute()
    with pytest.raises(ValueError, match="extra state of FrechetDistance maps 'reference' and 'candidate'"):
        metric.load_state_dict({**saved, "_extra_state": {"reference": -2, "candidate": 1}})
    assert torch.equal(metric.compute(), before)
