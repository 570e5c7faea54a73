"""The Fréchet distance against pytorch-fid's formula, torchmetrics' FID, an independent float64 route, and analytics.

- pytorch-fid's ``calculate_frechet_distance`` is written again here with ``scipy.linalg.sqrtm`` (with its ``eps``
  retry and its real part), and its ``np.cov`` statistics;
- torchmetrics' ``FrechetInceptionDistance`` is given the same features through a custom feature extractor (an
  ``nn.Module`` that looks the features up by index), which needs no torch-fidelity and no download;
- the independent float64 route centres the features (two passes), takes their QR factors ``X_c = Q R``, and uses
  ``tr (S_r^1/2 S_g S_r^1/2)^1/2 = ||R_g R_r^T||_* / sqrt((N_r - 1)(N_g - 1))`` (the nuclear norm, by SVD): no
  covariance and no matrix square root is formed;
- analytic values: commuting covariances, the 2 x 2 closed form ``tr sqrt(A) = sqrt(tr A + 2 sqrt(det A))``, a
  shift, identical sets, invariance to a common rotation and translation, symmetry.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from reference_impl import ClipLikeDistribution
from scipy import linalg
from torch import nn
from torchmetrics.image.fid import FrechetInceptionDistance

from mid_metric.functional.frechet import frechet_distance, frechet_distance_from_moments, mean_and_covariance

F64 = torch.float64


# ----------------------------------------------------------------------------------------- references
def pytorch_fid_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray, eps=1e-6):
    """pytorch-fid's ``calculate_frechet_distance``, written again from its formula."""
    diff = mu1 - mu2
    covmean = linalg.sqrtm(sigma1.dot(sigma2))
    if not np.isfinite(covmean).all():
        offset = np.eye(sigma1.shape[0]) * eps
        covmean = linalg.sqrtm((sigma1 + offset).dot(sigma2 + offset))
    if np.iscomplexobj(covmean):
        assert np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3)
        covmean = covmean.real
    return float(diff.dot(diff) + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean))


def pytorch_fid_statistics(features: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """pytorch-fid's ``calculate_activation_statistics``: the mean and ``np.cov`` (N - 1) of the activations."""
    activations = features.double().numpy()
    return np.mean(activations, axis=0), np.cov(activations, rowvar=False)


def qr_route_distance(real: torch.Tensor, generated: torch.Tensor) -> float:
    """FD from the QR factors of the centred features (independent of any covariance square root)."""
    x, y = real.to(F64), generated.to(F64)
    mean_x, mean_y = x.mean(dim=0), y.mean(dim=0)
    r_x = torch.linalg.qr(x - mean_x, mode="r")[1]
    r_y = torch.linalg.qr(y - mean_y, mode="r")[1]
    n_x, n_y = x.shape[0] - 1, y.shape[0] - 1
    nuclear = torch.linalg.svdvals(r_y @ r_x.T).sum() / math.sqrt(n_x * n_y)
    traces = r_x.square().sum() / n_x + r_y.square().sum() / n_y
    return float((mean_x - mean_y).square().sum() + traces - 2 * nuclear)


class LookupFeatures(nn.Module):
    """A feature extractor for torchmetrics' FID: "images" are row indices into a fixed feature table."""

    def __init__(self, table: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("table", table)
        self.num_features = table.shape[1]

    def forward(self, indices: torch.Tensor) -> torch.Tensor:
        return self.table[indices]


# ------------------------------------------------------------------------------------------- data
def correlated_features(n: int, dim: int, seed: int, shift: float = 0.0, scale: float = 1.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    mixing = torch.eye(dim, dtype=F64) + 0.4 * torch.randn(dim, dim, dtype=F64, generator=g)
    return scale * torch.randn(n, dim, dtype=F64, generator=g) @ mixing + shift


def clip_like_sets(n: int = 2000, dim: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """Real and generated float32 CLIP-like features (eigenvalues 1e-3 .. 1e-9, mean norm 0.99), other bases.

    The generated set has the real set's mean plus a small shift, so the covariance terms dominate the distance.
    """
    real_model, other_model = ClipLikeDistribution(dim, dim, seed=0), ClipLikeDistribution(dim, dim, seed=1)
    real = real_model.sample(n, seed=2)[0]
    other = other_model.sample(n, seed=3, dtype=F64)[0]
    shift = torch.full((dim,), 0.01 / math.sqrt(dim), dtype=F64)
    generated = (other - other_model.mx + real_model.mx + shift).to(torch.float32)
    return real, generated


@pytest.fixture(scope="module")
def well_conditioned() -> tuple[torch.Tensor, torch.Tensor]:
    return correlated_features(400, 12, seed=1), correlated_features(300, 12, seed=2, shift=0.3, scale=1.2)


# ------------------------------------------------------------------------------------ anchors
def test_agrees_with_pytorch_fid_formula(well_conditioned):
    real, generated = well_conditioned
    expected = pytorch_fid_distance(*pytorch_fid_statistics(real), *pytorch_fid_statistics(generated))
    assert math.isclose(float(frechet_distance(real, generated)), expected, rel_tol=1e-6)


def test_agrees_with_torchmetrics_fid_through_a_custom_extractor(well_conditioned):
    real, generated = well_conditioned
    table = torch.cat([real, generated])
    fid = FrechetInceptionDistance(feature=LookupFeatures(table))
    fid.update(torch.arange(real.shape[0]), real=True)
    fid.update(torch.arange(real.shape[0], table.shape[0]), real=False)
    expected = float(fid.compute())
    assert math.isclose(float(frechet_distance(real, generated)), expected, rel_tol=1e-6)


def test_matches_independent_float64_route_on_hard_clip_like_features():
    real, generated = clip_like_sets()
    value = float(frechet_distance(real, generated))
    expected = qr_route_distance(real, generated)
    # The covariance terms are most of the value here: a wrong square root could not hide behind the means.
    assert float((real.double().mean(0) - generated.double().mean(0)).square().sum()) < 0.2 * expected
    assert math.isclose(value, expected, rel_tol=1e-9)


def test_rank_deficient_covariances_stay_finite_and_agree():
    real, generated = correlated_features(20, 40, seed=3), correlated_features(25, 40, seed=4, shift=0.1)
    value = float(frechet_distance(real, generated))
    assert math.isfinite(value)
    assert math.isclose(value, qr_route_distance(real, generated), rel_tol=1e-7)


def test_moments_form_equals_features_form(well_conditioned):
    real, generated = well_conditioned
    moments = (*mean_and_covariance(real), *mean_and_covariance(generated))
    assert float(frechet_distance_from_moments(*moments)) == float(frechet_distance(real, generated))


def test_two_pass_moments_match_numpy():
    features = correlated_features(5000, 6, seed=5, shift=1e4)  # a large offset: one pass would lose digits
    mean, covariance = mean_and_covariance(features)
    expected_mean, expected_covariance = pytorch_fid_statistics(features)
    torch.testing.assert_close(mean, torch.from_numpy(expected_mean), rtol=1e-12, atol=0)
    torch.testing.assert_close(covariance, torch.from_numpy(expected_covariance), rtol=1e-9, atol=1e-12)


# ------------------------------------------------------------------------------------ analytic
def test_commuting_covariances():
    a = torch.tensor([1.0, 4.0, 0.25, 9.0], dtype=F64)
    b = torch.tensor([4.0, 1.0, 1.0, 0.0], dtype=F64)
    mean_a, mean_b = torch.tensor([1.0, 2.0, 3.0, 4.0]), torch.tensor([0.0, 2.0, 1.0, 4.5])
    expected = float((mean_a - mean_b).square().sum() + (a.sqrt() - b.sqrt()).square().sum())
    value = frechet_distance_from_moments(mean_a, torch.diag(a), mean_b, torch.diag(b))
    assert value.dtype == F64
    assert math.isclose(float(value), expected, rel_tol=1e-14)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_two_by_two_closed_form(seed):
    g = torch.Generator().manual_seed(seed)
    factors = torch.randn(2, 2, 2, dtype=F64, generator=g)
    sigma_r, sigma_g = (f @ f.T + 0.1 * torch.eye(2, dtype=F64) for f in factors)
    mean_r, mean_g = torch.randn(2, 2, dtype=F64, generator=g)
    # For a 2 x 2 PSD matrix A: tr sqrt(A) = sqrt(tr A + 2 sqrt(det A)); A ~ S_r S_g (similar matrices).
    trace_root = math.sqrt(
        float(torch.trace(sigma_r @ sigma_g)) + 2 * math.sqrt(float(torch.det(sigma_r) * torch.det(sigma_g)))
    )
    expected = float((mean_r - mean_g).square().sum() + sigma_r.trace() + sigma_g.trace()) - 2 * trace_root
    assert math.isclose(float(frechet_distance_from_moments(mean_r, sigma_r, mean_g, sigma_g)), expected, rel_tol=1e-12)


def test_a_shift_gives_its_squared_norm(well_conditioned):
    real = well_conditioned[0]
    shift = torch.tensor([0.5, -1.0] + [0.0] * 10, dtype=F64)
    assert math.isclose(float(frechet_distance(real, real + shift)), 1.25, rel_tol=1e-9)


def test_identical_sets_give_zero(well_conditioned):
    real = well_conditioned[0]
    scale = float(mean_and_covariance(real)[1].trace())
    assert abs(float(frechet_distance(real, real))) < 1e-12 * scale
    clip_real = clip_like_sets(500)[0]
    assert abs(float(frechet_distance(clip_real, clip_real))) < 1e-10 * float(mean_and_covariance(clip_real)[1].trace())


def test_invariant_to_a_common_rotation_and_translation(well_conditioned):
    real, generated = well_conditioned
    g = torch.Generator().manual_seed(7)
    q, r = torch.linalg.qr(torch.randn(12, 12, dtype=F64, generator=g))
    rotation = q * torch.sign(r.diagonal())
    translation = 3.0 * torch.randn(12, dtype=F64, generator=g)
    moved = float(frechet_distance(real @ rotation + translation, generated @ rotation + translation))
    assert math.isclose(moved, float(frechet_distance(real, generated)), rel_tol=1e-10)


def test_symmetric_in_its_arguments(well_conditioned):
    real, generated = well_conditioned
    assert math.isclose(
        float(frechet_distance(real, generated)), float(frechet_distance(generated, real)), rel_tol=1e-10
    )


def test_float32_features_give_a_float64_value(well_conditioned):
    real, generated = (x.float() for x in well_conditioned)
    value = frechet_distance(real, generated)
    assert value.dtype == F64 and value.device == real.device
    assert math.isclose(float(value), qr_route_distance(real, generated), rel_tol=1e-9)


def test_rounding_level_negative_eigenvalues_are_clamped():
    direction = torch.tensor([[1.0], [2.0], [-1.0]], dtype=F64)
    singular = direction @ direction.T  # rank 1: two eigenvalues are zero, computed as +-1e-16
    value = frechet_distance_from_moments(torch.zeros(3), singular, torch.zeros(3), singular)
    assert abs(float(value)) < 1e-7


# ---------------------------------------------------------------------------------------- errors
def _moments(dim: int = 3) -> list[torch.Tensor]:
    return [torch.zeros(dim), torch.eye(dim), torch.ones(dim), 2 * torch.eye(dim)]


@pytest.mark.parametrize(
    ("position", "value", "error", "match"),
    [
        (0, [0.0, 0.0, 0.0], TypeError, "`mean_real` must be a torch.Tensor"),
        (0, torch.zeros(3, dtype=torch.int64), TypeError, "`mean_real` must be a floating tensor"),
        (0, torch.zeros(1, 3), ValueError, r"`mean_real` must have shape \(D,\)"),
        (2, torch.ones(4), ValueError, "`mean_real` and `mean_generated` must have one size"),
        (2, torch.tensor([0.0, float("nan"), 0.0]), ValueError, "`mean_generated` contains NaN or Inf"),
        (1, torch.eye(4), ValueError, r"`covariance_real` must have shape \(3, 3\)"),
        (
            3,
            torch.tensor([[1.0, 0.5, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]),
            ValueError,
            "`covariance_generated` is not symmetric",
        ),
        (1, torch.diag(torch.tensor([1.0, -0.5, 1.0])), ValueError, "`covariance_real` is not positive semi-definite"),
        (3, torch.full((3, 3), float("inf")), ValueError, "`covariance_generated` contains NaN or Inf"),
        (1, "eye", TypeError, "`covariance_real` must be a torch.Tensor"),
    ],
)
def test_bad_moments_name_the_argument(position, value, error, match):
    arguments = _moments()
    arguments[position] = value
    with pytest.raises(error, match=match):
        frechet_distance_from_moments(*arguments)


def test_bad_features_name_the_argument():
    good = torch.randn(5, 3)
    with pytest.raises(ValueError, match="`real_features` needs at least 2 rows"):
        frechet_distance(good[:1], good)
    with pytest.raises(ValueError, match="`generated_features` needs at least 2 rows"):
        frechet_distance(good, good[:1])
    with pytest.raises(ValueError, match=r"`generated_features` must have shape \(batch, 3\)"):
        frechet_distance(good, torch.randn(5, 4))
    with pytest.raises(ValueError, match="`real_features` contains NaN or Inf"):
        frechet_distance(torch.tensor([[0.0, float("inf"), 0.0]] * 3), good)
    with pytest.raises(TypeError, match="`generated_features` must be a floating tensor"):
        frechet_distance(good, torch.ones(5, 3, dtype=torch.int32))
