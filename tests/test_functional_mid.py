"""The functional API against the independent two-pass implementation in ``reference_impl``."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from reference_impl import (
    ClipLikeDistribution,
    analytic_mi,
    correlated_gaussian,
    ref_mid,
    ref_mid_terms,
    ref_mutual_information,
    ref_pmi,
    seed123_example,
    well_conditioned_pairs,
)

from mid_metric import functional as F

REL = 1e-10  # well-conditioned data: relative agreement with two-pass float64
HARD_ABS = 5e-9  # CLIP-like data: absolute agreement with two-pass float64 (docs/estimator.md, "Streaming statistics")


def assert_rel(actual: float, expected: float, rel: float = REL) -> None:
    assert actual == pytest.approx(expected, rel=rel, abs=0.0), (actual, expected, abs(actual - expected))


@pytest.fixture(scope="module")
def hard_data():
    """CLIP-like float32 features, Dx = Dy = 64: 4000 reference pairs and 3000 less-aligned candidate pairs."""
    dist = ClipLikeDistribution(64, 64, seed=0)
    x, y = dist.sample(4000, seed=1)
    x0, y0 = dist.sample(3000, seed=2, rho_scale=0.95)
    return x, y, x0, y0


# --------------------------------------------------------------------------------------------- seed-123 check
def test_seed123_cross_check():
    # The official naver-ai/mid.metric README's own cross-check (docs/estimator.md): torch.manual_seed(123),
    # x, y = rand(10, 2) * 2 - 1, x0 = 1.1 x gives MID ~= 0.151645 and MI ~= 0.1543.
    x, y, x0 = seed123_example()
    mid = F.mutual_information_divergence(x, y, x0, y)
    assert mid.dtype == torch.float64 and mid.ndim == 0
    assert mid.item() == pytest.approx(0.151645, abs=5e-7)
    assert F.mutual_information(x, y).item() == pytest.approx(0.1543, abs=5e-5)
    assert_rel(mid.item(), ref_mid(x, y, x0, y))


# ------------------------------------------------------------------------------------ well-conditioned data
@pytest.mark.parametrize("dims", [(6, 5), (3, 8), (1, 1)])
@pytest.mark.parametrize("seed", [0, 1])
def test_well_conditioned_matches_two_pass(dims, seed):
    dx, dy = dims
    x, y = well_conditioned_pairs(400, dx, dy, seed=seed)
    x0, y0 = well_conditioned_pairs(300, dx, dy, seed=seed + 100, strength=0.3)
    expected_mid, expected_mi, _ = ref_mid_terms(x, y, x0, y0)
    assert_rel(F.mutual_information_divergence(x, y, x0, y0).item(), expected_mid)
    assert_rel(F.mutual_information(x, y).item(), expected_mi)
    torch.testing.assert_close(F.pointwise_mutual_information(x, y, x0, y0), ref_pmi(x, y, x0, y0), rtol=REL, atol=0)


def test_text_to_image_layout_text_term_is_dy():
    """Official layout: candidates (x0, y) share the reference texts, so tr(Sy^-1 Sy_hat) = Dy exactly.

    Then MID = I + (tr(Sx^-1 Sx_hat) + Dy - tr(Sz^-1 Sz_hat)) / 2; check against two-pass with the text term fixed.
    """
    x, y = well_conditioned_pairs(300, 4, 3, seed=5)
    x0 = 0.9 * x + 0.1 * torch.randn(x.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    mid, mi, distance = ref_mid_terms(x, y, x0, y)
    assert_rel(F.mutual_information_divergence(x, y, x0, y).item(), mid)


@pytest.mark.parametrize("eps", [1e-3, 0.5])
def test_eps_matches_two_pass_with_regularised_covariances(eps):
    x, y = well_conditioned_pairs(300, 4, 3, seed=2)
    x0, y0 = well_conditioned_pairs(50, 4, 3, seed=3)
    assert_rel(F.mutual_information_divergence(x, y, x0, y0, eps=eps).item(), ref_mid(x, y, x0, y0, eps=eps))
    assert_rel(F.mutual_information(x, y, eps=eps).item(), ref_mutual_information(x, y, eps=eps))
    torch.testing.assert_close(
        F.pointwise_mutual_information(x, y, x0, y0, eps=eps), ref_pmi(x, y, x0, y0, eps=eps), rtol=REL, atol=0
    )
    # eps changes the value (so the parameter is really used) ...
    assert abs(F.mutual_information_divergence(x, y, x0, y0, eps=eps).item() - ref_mid(x, y, x0, y0)) > 1e-6
    # ... and makes a reference with N <= Dx + Dy usable.
    few_x, few_y = x[:5], y[:5]
    assert_rel(
        F.mutual_information_divergence(few_x, few_y, x0, y0, eps=eps).item(), ref_mid(few_x, few_y, x0, y0, eps)
    )


# ------------------------------------------------------------------------------------------ hard CLIP data
def test_hard_clip_like_features_match_two_pass(hard_data):
    x, y, x0, y0 = hard_data
    assert x.dtype == torch.float32
    assert x.double().mean(0).norm().item() == pytest.approx(0.99, abs=5e-3)
    expected_mid, expected_mi, _ = ref_mid_terms(x, y, x0, y0)
    assert abs(F.mutual_information_divergence(x, y, x0, y0).item() - expected_mid) <= HARD_ABS
    assert abs(F.mutual_information(x, y).item() - expected_mi) <= HARD_ABS


def test_hard_clip_like_pmi_matches_two_pass(hard_data):
    x, y, x0, y0 = hard_data
    got = F.pointwise_mutual_information(x, y, x0[:200], y0[:200])
    torch.testing.assert_close(got, ref_pmi(x, y, x0[:200], y0[:200]), rtol=0, atol=HARD_ABS)


# ------------------------------------------------------------------------------------------- PMI and MID
def test_pmi_matches_per_sample_formula_and_relates_to_mid():
    x, y = well_conditioned_pairs(500, 5, 4, seed=7)
    x0, y0 = well_conditioned_pairs(37, 5, 4, seed=8, strength=0.2)
    pmi = F.pointwise_mutual_information(x, y, x0, y0)
    assert pmi.dtype == torch.float64 and pmi.shape == (37,)
    torch.testing.assert_close(pmi, ref_pmi(x, y, x0, y0), rtol=REL, atol=0)
    # MID = I + 1/2 mean over candidates of (d2x + d2y - d2z) * M / (M - 1), since Shat divides by M - 1:
    # MID = I + M / (M - 1) * mean(pmi - I).
    m = x0.shape[0]
    mi = F.mutual_information(x, y)
    derived = mi + m / (m - 1) * (pmi - mi).mean()
    assert_rel(F.mutual_information_divergence(x, y, x0, y0).item(), derived.item())
    # The plain mean of the PMIs is NOT MID (the scaling matters here, so this relation can fail).
    assert abs(pmi.mean().item() - derived.item()) > 1e-6


def test_candidates_equal_reference_give_mid_equal_mi():
    x, y = well_conditioned_pairs(400, 6, 5, seed=11)
    mid = F.mutual_information_divergence(x, y, x, y)
    mi = F.mutual_information(x, y)
    assert abs(mid.item() - mi.item()) <= 1e-12


def test_candidates_equal_reference_hard(hard_data):
    x, y, _, _ = hard_data
    assert abs(F.mutual_information_divergence(x, y, x, y).item() - F.mutual_information(x, y).item()) <= 1e-9


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_low_precision_inputs_give_float64_result(dtype):
    x, y = well_conditioned_pairs(300, 4, 3, seed=4)
    x0, y0 = well_conditioned_pairs(80, 4, 3, seed=6)
    cast = [t.to(dtype) for t in (x, y, x0, y0)]
    mid = F.mutual_information_divergence(*cast)
    assert mid.dtype == torch.float64
    # Computed in float64 from the (rounded) inputs, not in the input dtype: agree with two-pass on the same values.
    assert_rel(mid.item(), ref_mid(*cast))
    assert F.mutual_information(cast[0], cast[1]).dtype == torch.float64
    assert F.pointwise_mutual_information(*cast).dtype == torch.float64


# ----------------------------------------------------------------------------------------- known-MI Gaussian
def test_known_mi_gaussian_converges_to_analytic_mi():
    rho = torch.tensor([0.8, 0.5, 0.3], dtype=torch.float64)
    target = analytic_mi(rho)
    assert target == pytest.approx(-0.5 * sum(math.log(1 - r * r) for r in (0.8, 0.5, 0.3)))
    sizes = (200, 2000, 20000, 200000)
    mean_errors = []
    for n in sizes:
        errors = []
        for seed in range(8):
            g = torch.Generator().manual_seed(seed)
            x, y = correlated_gaussian(n, rho, g)
            x0, y0 = correlated_gaussian(n, rho, g)  # candidates from the reference distribution
            errors.append(abs(F.mutual_information_divergence(x, y, x0, y0).item() - target))
        mean_errors.append(sum(errors) / len(errors))
    # The estimator's standard deviation is about sqrt(sum rho^2 / N) ~ 1 / sqrt(N) here, its bias O(D^2 / N).
    assert all(a > b for a, b in zip(mean_errors, mean_errors[1:])), mean_errors
    assert all(err < 2 / math.sqrt(n) for err, n in zip(mean_errors, sizes)), mean_errors
    assert mean_errors[-1] < 3e-3 and mean_errors[-1] < mean_errors[0] / 10, mean_errors


def test_known_mi_on_ill_conditioned_clip_like_features():
    """The CLIP-like generator keeps the analytic MI (affine maps of a known-MI Gaussian), and MID recovers it."""
    dist = ClipLikeDistribution(16, 16, seed=5)
    assert dist.mutual_information == pytest.approx(analytic_mi(dist.rho))
    x, y = dist.sample(50000, seed=6)
    x0, y0 = dist.sample(50000, seed=7)
    # Bias of the plug-in MI is about Dx * Dy / (2 N) = 0.0026 here; its standard deviation about 0.006.
    assert F.mutual_information_divergence(x, y, x0, y0).item() == pytest.approx(dist.mutual_information, abs=0.03)
    assert F.mutual_information(x, y).item() == pytest.approx(dist.mutual_information, abs=0.03)


# ---------------------------------------------------------------------------------------- affine invariance
def _random_affine(dim: int, seed: int, log_spread: float) -> tuple[torch.Tensor, torch.Tensor]:
    """An invertible A = Q1 diag(10^u) Q2 (condition number <= 10^(2 log_spread)) and a shift b."""
    g = torch.Generator().manual_seed(seed)
    q1, _ = torch.linalg.qr(torch.randn(dim, dim, dtype=torch.float64, generator=g))
    q2, _ = torch.linalg.qr(torch.randn(dim, dim, dtype=torch.float64, generator=g))
    u = (torch.rand(dim, dtype=torch.float64, generator=g) * 2 - 1) * log_spread
    return q1 @ torch.diag(10.0**u) @ q2, torch.randn(dim, dtype=torch.float64, generator=g) * 3


@settings(max_examples=12, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    log_spread=st.floats(0.0, 1.5),
    modality=st.sampled_from(["image", "text"]),
)
def test_affine_invariance(seed, log_spread, modality):
    x, y = well_conditioned_pairs(120, 3, 2, seed=seed % 1000)
    x0, y0 = well_conditioned_pairs(40, 3, 2, seed=seed % 1000 + 1, strength=0.2)
    a, b = _random_affine(3 if modality == "image" else 2, seed, log_spread)

    def f(v):
        return v @ a.T + b

    if modality == "image":
        mapped = (f(x), y, f(x0), y0)
    else:
        mapped = (x, f(y), x0, f(y0))
    before = F.mutual_information_divergence(x, y, x0, y0).item()
    after = F.mutual_information_divergence(*mapped).item()
    assert after == pytest.approx(before, rel=1e-9, abs=1e-9)
    torch.testing.assert_close(
        F.pointwise_mutual_information(*mapped), F.pointwise_mutual_information(x, y, x0, y0), rtol=1e-9, atol=1e-9
    )
    assert F.mutual_information(*mapped[:2]).item() == pytest.approx(F.mutual_information(x, y).item(), rel=1e-9)


def test_non_affine_map_changes_mid():
    """Guard for the invariance test: a map that is not affine (squaring a coordinate) does change MID."""
    x, y = well_conditioned_pairs(120, 3, 2, seed=0)
    x0, y0 = well_conditioned_pairs(40, 3, 2, seed=1, strength=0.2)
    bent = torch.cat([x[:, :1] ** 3, x[:, 1:]], dim=1)
    bent0 = torch.cat([x0[:, :1] ** 3, x0[:, 1:]], dim=1)
    before = F.mutual_information_divergence(x, y, x0, y0).item()
    assert abs(F.mutual_information_divergence(bent, y, bent0, y0).item() - before) > 1e-4
