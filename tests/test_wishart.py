"""Tests of the Gaussian bias terms and the bias-corrected MID (mid_metric.wishart).

Every expectation is checked against Monte Carlo or an analytic value, never against the code's own output: the
Wishart facts against simulated sample covariances, and the estimators against the population MID of the Gaussian
model of ``_gaussian_model``. The long Monte-Carlo checks (the corrected MID is unbiased per protocol, the plug-in
MI's bias, candidates sharing the reference's rows) run in ``benchmarks/statistical_checks.py``, which
``tests/test_benchmarks_smoke.py`` runs in full.
"""

from __future__ import annotations

import math

import pytest
import torch
from _gaussian_model import F64, Model, packed, random_spd, wishart_covariances

from mid_metric import MutualInformationDivergence, moments, wishart
from mid_metric.functional import (
    divergence_from_moments,
    mutual_information,
    mutual_information_divergence,
    reference_from_moments,
)
from mid_metric.gaussian import block_traces


# ----------------------------------------------------------------------------- Wishart facts vs Monte Carlo
def test_logdet_mean_and_variance_match_monte_carlo():
    dim, n, reps = 5, 12, 20000
    sigma = random_spd(dim, 1)
    logdets = torch.linalg.slogdet(wishart_covariances(dim, n, reps, sigma, seed=2))[1] - torch.logdet(sigma)
    sem = float(logdets.std()) / math.sqrt(reps)
    assert abs(float(logdets.mean()) - wishart.logdet_bias(dim, n)) < 4 * sem
    assert wishart.logdet_bias(dim, n) < -0.5  # a large bias at n = 12: the test can fail
    assert float(logdets.var()) == pytest.approx(wishart.logdet_variance(dim, n), rel=0.05)


def test_inverse_expectation_matches_monte_carlo():
    dim, n, reps = 3, 15, 20000
    sigma = random_spd(dim, 3)
    inverses = torch.linalg.inv(wishart_covariances(dim, n, reps, sigma, seed=4))
    expected = wishart.inverse_bias_factor(dim, n) * torch.linalg.inv(sigma)
    sem = inverses.std(dim=0) / math.sqrt(reps)
    assert bool(((inverses.mean(dim=0) - expected).abs() < 4 * sem).all())
    assert wishart.inverse_bias_factor(dim, n) == pytest.approx(15 / 11)


def test_distance_trace_expectation_with_sample_mean_noise():
    # E[tr(S^-1 S_hat)] = M/(M-1) n/(n-p-1) (tr(Sigma^-1 C0) + p/N) for candidates independent of the reference.
    dim, count, m, reps = 3, 20, 10, 20000
    g = torch.Generator().manual_seed(5)
    ref = torch.randn(reps, count, dim, dtype=F64, generator=g)
    cand = 1.5 * torch.randn(reps, m, dim, dtype=F64, generator=g) + 0.4
    mean = ref.mean(dim=1, keepdim=True)
    cov = (ref - mean).mT @ (ref - mean) / (count - 1)
    scatter = (cand - mean).mT @ (cand - mean) / (m - 1)
    traces = torch.linalg.solve(cov, scatter).diagonal(dim1=-2, dim2=-1).sum(-1)
    population = dim * (1.5**2 + 0.4**2)
    expected = m / (m - 1) * wishart.inverse_bias_factor(dim, count - 1) * (population + dim / count)
    assert abs(float(traces.mean()) - expected) < 4 * float(traces.std()) / math.sqrt(reps)


def test_wishart_argument_errors():
    with pytest.raises(ValueError, match="`dof`"):
        wishart.logdet_bias(5, 4)
    with pytest.raises(ValueError, match="`dof`"):
        wishart.inverse_bias_factor(5, 6)
    with pytest.raises(ValueError, match="`dim`"):
        wishart.logdet_variance(0, 6)


# ----------------------------------------------------------------------------- the corrected estimator
def test_shared_modality_detection():
    model = Model(3)
    g = torch.Generator().manual_seed(8)
    x, y = model.reference(60, g)
    ref = reference_from_moments(packed(x, y), 3)

    def detect(cand: torch.Tensor) -> object:
        m = int(moments.unpack(cand).count)
        _, scatter = moments.mean_and_scatter(cand, center=ref.mean)
        return wishart.shared_modality(ref, scatter / (m - 1), m)

    perm = torch.randperm(60, generator=g)
    assert detect(packed(model.images_for(y, g), y)) == "text"
    assert detect(packed(x, model.images_for(x, g))) == "image"
    assert detect(packed(x, y)) == "both"
    assert detect(packed(x[perm], y[perm])) == "both"  # the same pairs in another order
    assert detect(packed(x[perm], y)) == "repaired"  # the reference's images and texts, paired differently
    assert detect(packed(x, y[perm])) == "repaired"
    x2, y2 = model.reference(60, g)
    assert detect(packed(x2, y2)) is None
    assert detect(packed(model.images_for(y[:59], g), y[:59])) is None  # a subset is not the same rows
    # Texts with exactly the reference's text trace but other rows: stretch one whitened direction, shrink another.
    chol_y, mean_y = ref.chol_text, ref.mean[3:]
    stretch = torch.tensor([1.2, math.sqrt(2.0 - 1.44), 1.0], dtype=F64)
    whitened = torch.linalg.solve_triangular(chol_y, (y - mean_y).mT, upper=False)
    same_trace = mean_y + (chol_y @ (stretch.unsqueeze(1) * whitened)).mT
    assert abs(float(block_traces(ref, packed_cov(x, same_trace, ref)).text) - 3.0) < 1e-9  # fools a trace
    assert detect(packed(model.images_for(same_trace, g), same_trace)) is None


def packed_cov(x: torch.Tensor, y: torch.Tensor, ref) -> torch.Tensor:
    cand = packed(x, y)
    _, scatter = moments.mean_and_scatter(cand, center=ref.mean)
    return scatter / (int(moments.unpack(cand).count) - 1)


def test_issue_reproducer_shuffled_captions_are_not_aligned():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2000, 8, dtype=F64, generator=g)
    y = 0.6 * x + 0.8 * torch.randn(2000, 8, dtype=F64, generator=g)
    perm = torch.randperm(2000, generator=g)
    truth = -4 * math.log(0.64) + 0.5 * (16 - 8 * 2 / 0.64)  # -2.715
    aligned = float(mutual_information_divergence(x, y, x, y, bias_correction=True))
    shuffled = float(mutual_information_divergence(x, y, x, y[perm], bias_correction=True))
    assert abs(aligned - (-4 * math.log(0.64))) < 0.1
    assert abs(shuffled - truth) < 0.15  # 0.1 returned 1.749, the aligned value


def test_same_pairs_give_corrected_mutual_information():
    model = Model(3)
    x, y = model.reference(50, torch.Generator().manual_seed(9))
    result = divergence_from_moments(reference_from_moments(packed(x, y), 3), packed(x, y), bias_correction=True)
    expected = mutual_information(x, y) - wishart.mutual_information_bias(3, 3, 50)
    assert torch.allclose(result.mid, expected) and float(result.distance) == 0.0 and result.bias_corrected


def test_corrected_mid_is_affine_invariant():
    model = Model(3)
    g = torch.Generator().manual_seed(10)
    x, y = model.reference(80, g)
    xh, yh = model.images_for(y[:30], g), y[:30] + 0.1
    a = torch.randn(3, 3, dtype=F64, generator=g) + 2 * torch.eye(3, dtype=F64)
    b = torch.randn(3, dtype=F64, generator=g)
    plain = mutual_information_divergence(x, y, xh, yh, bias_correction=True)
    mapped = mutual_information_divergence(x @ a + b, y, xh @ a + b, yh, bias_correction=True)
    assert torch.allclose(plain, mapped, rtol=0, atol=1e-9)


def test_functional_metric_and_mutual_information_agree():
    model = Model(3)
    g = torch.Generator().manual_seed(11)
    x, y = model.reference(100, g)
    xh = model.images_for(y, g)
    metric = MutualInformationDivergence(feature=3, bias_correction=True)
    metric.update(x[:37], y[:37], real=True)
    metric.update(x[37:], y[37:], real=True)
    metric.update(xh, y, real=False)
    functional = mutual_information_divergence(x, y, xh, y, bias_correction=True)
    assert torch.allclose(metric.compute(), functional, rtol=0, atol=1e-10)
    assert not torch.allclose(functional, mutual_information_divergence(x, y, xh, y), rtol=0, atol=1e-3)
    result = metric.compute_result()
    assert result.bias_corrected and torch.allclose(result.mid, result.mutual_information + result.distance)
    corrected_mi = mutual_information(x, y, bias_correction=True)
    assert torch.allclose(corrected_mi, mutual_information(x, y) - wishart.mutual_information_bias(3, 3, 100))
    assert torch.allclose(result.mutual_information, corrected_mi)


def test_argument_errors():
    x, y = torch.randn(30, 2), torch.randn(30, 2)
    with pytest.raises(TypeError, match="`bias_correction`"):
        MutualInformationDivergence(feature=2, bias_correction="yes")
    with pytest.raises(ValueError, match="`bias_correction=True` needs `eps=0`"):
        MutualInformationDivergence(feature=2, eps=1e-4, bias_correction=True)
    with pytest.raises(ValueError, match="`bias_correction=True` needs `eps=0`"):
        mutual_information_divergence(x, y, x, y, eps=1e-4, bias_correction=True)
    with pytest.raises(ValueError, match="`bias_correction=True` needs `eps=0`"):
        mutual_information(x, y, eps=1e-4, bias_correction=True)
    with pytest.raises(ValueError, match="more than 6 reference pairs"):
        mutual_information_divergence(x[:6], y[:6], x, y, bias_correction=True)
    metric = MutualInformationDivergence(feature=2)
    metric.update(x, y, real=True)
    metric.update(x, y, real=False)
    for level in (0.0, 1.0, 95, "0.9", True):
        with pytest.raises(ValueError, match="`level`"):
            metric.compute_with_ci(level)
