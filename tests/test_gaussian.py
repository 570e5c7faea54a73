"""The fitted reference Gaussian (mid_metric.gaussian) against explicit inverses and log-determinants."""

from __future__ import annotations

import math

import pytest
import torch

from mid_metric import moments
from mid_metric.cpu_threads import one_thread
from mid_metric.gaussian import (
    block_traces,
    candidate_scatter,
    fit_reference,
    pointwise_mutual_information_from_reference,
    precision_from_cholesky,
    precisions_from_choleskys,
    reference_from_moments,
    whitened_scatter,
)

F64 = torch.float64


def _spd(dim: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(dim, dim, dtype=F64, generator=g)
    return a @ a.T / dim + 0.3 * torch.eye(dim, dtype=F64)


def test_mutual_information_equals_log_determinants():
    cov = _spd(7, 0)
    ref = fit_reference(torch.zeros(7, dtype=F64), cov, image_dim=3, count=100)
    expected = 0.5 * (torch.logdet(cov[:3, :3]) + torch.logdet(cov[3:, 3:]) - torch.logdet(cov))
    assert math.isclose(float(ref.mutual_information), float(expected), rel_tol=1e-12)
    assert (ref.image_dim, ref.text_dim, ref.count) == (3, 4, 100)
    torch.testing.assert_close(ref.chol_image @ ref.chol_image.T, cov[:3, :3])


@pytest.mark.parametrize("positive_definite", [True, False])
def test_block_traces_equal_explicit_inverse_traces(positive_definite):
    cov = _spd(6, 1)
    ref = fit_reference(torch.zeros(6, dtype=F64), cov, image_dim=2, count=50)
    scatter = _spd(6, 2)
    if not positive_definite:  # fewer candidates than dimensions: a rank-deficient scatter (the other branch)
        v = torch.randn(6, 3, dtype=F64, generator=torch.Generator().manual_seed(3))
        scatter = v @ v.T
    traces = block_traces(ref, scatter)
    expected = [
        torch.trace(torch.linalg.inv(cov[b, b]) @ scatter[b, b]) for b in (slice(0, 2), slice(2, None), slice(None))
    ]
    for got, want in zip(traces, expected):
        assert math.isclose(float(got), float(want), rel_tol=1e-10)


def test_whitened_scatter_of_the_reference_covariance_is_the_identity():
    cov = _spd(5, 4)
    ref = fit_reference(torch.zeros(5, dtype=F64), cov, image_dim=2, count=50)
    joint, text = whitened_scatter(ref, cov)
    torch.testing.assert_close(joint, torch.eye(5, dtype=F64))
    torch.testing.assert_close(text, torch.eye(3, dtype=F64))


def test_candidate_scatter_is_about_the_reference_mean_over_m_minus_1():
    g = torch.Generator().manual_seed(5)
    ref_rows, cand_rows = torch.randn(40, 3, dtype=F64, generator=g), torch.randn(9, 3, dtype=F64, generator=g) + 1
    ref = reference_from_moments(moments.from_features(ref_rows), image_dim=1)
    centred = cand_rows - ref_rows.mean(dim=0)
    torch.testing.assert_close(candidate_scatter(ref, moments.from_features(cand_rows)), centred.T @ centred / 8)
    with pytest.raises(ValueError, match="at least 2 candidate pairs"):
        candidate_scatter(ref, moments.from_features(cand_rows[:1]))


def test_pmi_equals_explicit_mahalanobis_distances():
    g = torch.Generator().manual_seed(6)
    z = torch.randn(200, 5, dtype=F64, generator=g) @ torch.linalg.cholesky(_spd(5, 7)).T
    ref = reference_from_moments(moments.from_features(z), image_dim=2)
    mean, cov = z.mean(dim=0), torch.cov(z.T)
    probe = torch.randn(4, 5, dtype=F64, generator=g)

    def d2(block: slice) -> torch.Tensor:
        c = probe[:, block] - mean[block]
        return ((c @ torch.linalg.inv(cov[block, block])) * c).sum(dim=1)

    expected = ref.mutual_information + 0.5 * (d2(slice(0, 2)) + d2(slice(2, None)) - d2(slice(None)))
    got = pointwise_mutual_information_from_reference(ref, probe[:, :2], probe[:, 2:])
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-10)


def test_singular_covariance_is_refused():
    cov = _spd(4, 8)
    cov[3] = cov[2]
    cov[:, 3] = cov[:, 2]  # a duplicated coordinate
    with pytest.raises(ValueError, match="not positive definite"):
        fit_reference(torch.zeros(4, dtype=F64), cov, image_dim=2, count=100)


def _lower_only_fit_matches(device):
    # reference_from_moments leaves the upper triangle of the covariance stale and relies on the factorisations
    # reading only the lower one: a state whose upper triangle is NaN must give the same fit, bit for bit.
    z = torch.randn(400, 9, dtype=torch.float64, generator=torch.Generator().manual_seed(3)).to(device)
    mixing = torch.eye(9, dtype=torch.float64, device=device) + 0.3 * torch.ones(
        9, 9, dtype=torch.float64, device=device
    )
    packed = moments.from_features(z @ mixing)
    spoiled = packed.clone()
    outer = moments.unpack(spoiled).shifted_outer_sum
    outer.masked_fill_(torch.ones_like(outer, dtype=torch.bool).triu(1), float("nan"))
    clean = reference_from_moments(moments.symmetrized(packed), image_dim=4)
    stale = reference_from_moments(spoiled, image_dim=4)
    assert torch.equal(clean.chol_joint, stale.chol_joint) and torch.equal(clean.chol_text, stale.chol_text)
    assert torch.equal(clean.mutual_information, stale.mutual_information)


def test_the_reference_fit_reads_only_the_lower_triangle():
    _lower_only_fit_matches("cpu")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA is not available")
def test_the_reference_fit_reads_only_the_lower_triangle_on_cuda():
    _lower_only_fit_matches("cuda")


def test_precision_from_cholesky_is_the_inverse_and_restores_the_threads():
    cov = _spd(9, 3)
    threads = torch.get_num_threads()
    precision = precision_from_cholesky(torch.linalg.cholesky(cov))
    assert torch.get_num_threads() == threads
    torch.testing.assert_close(precision, torch.linalg.inv(cov), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(precision @ cov, torch.eye(9, dtype=F64), rtol=0, atol=1e-12)


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_side_by_side_precisions_are_bitwise_the_lone_inverses(threads):
    covariances = [_spd(dim, seed) for dim, seed in ((7, 1), (40, 2), (12, 3), (40, 4))]
    factors = [torch.linalg.cholesky(cov) for cov in covariances]
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        together = precisions_from_choleskys(*factors)
        assert torch.get_num_threads() == threads
    finally:
        torch.set_num_threads(before)
    assert len(together) == len(factors)
    for factor, cov, precision in zip(factors, covariances, together):
        with one_thread():
            alone = torch.cholesky_inverse(factor)
        assert torch.equal(precision, alone)  # same order as given, same bits as one call on one thread
        torch.testing.assert_close(precision @ cov, torch.eye(cov.shape[0], dtype=F64), rtol=0, atol=1e-12)
