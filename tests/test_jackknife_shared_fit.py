"""The faster algebra of the jackknife's ``compute()`` against the formulas it replaces, written out here.

* the shared link ``C_hat_uw S_w^-1 S_wu S_u^-1`` from one triangular solve, against explicit inverses;
* the shared-rows terms through Schur complements (``mid_metric.jackknife.shared_fit``), against
  ``wishart.corrected_terms`` on the fitted reference (the joint factorisation and block traces);
* the leave-one-out covariances and the merge of group states, against moments of the rows themselves;
* the traces that the sharing test's whitened scatter gives, against explicit inverses.
"""

from __future__ import annotations

import pytest
import torch

from mid_metric import gaussian, moments, wishart
from mid_metric.jackknife import (
    group_moments,
    jackknife_estimates,
    leave_one_out_moments,
    merge_groups,
    row_groups,
)
from mid_metric.jackknife.shared_fit import shared_corrected_terms

F64 = torch.float64


def _sharing_sets(shared: str, seed: int, n: int = 400, dx: int = 4, dy: int = 3):
    """Reference pairs with correlated, non-isotropic blocks, and candidates that reuse one of their modalities."""
    g = torch.Generator().manual_seed(seed)

    def mixing(dim: int) -> torch.Tensor:  # well conditioned, so that explicit inverses are accurate to 1e-13
        return torch.eye(dim, dtype=F64) + 0.3 * torch.randn(dim, dim, dtype=F64, generator=g)

    x = torch.randn(n, dx, dtype=F64, generator=g) @ mixing(dx) + 2.0
    y = x[:, :dy] * 0.7 + torch.randn(n, dy, dtype=F64, generator=g) @ mixing(dy)
    if shared == "text":
        x0 = 0.5 * y @ mixing(dx)[:dy] + torch.randn(n, dx, dtype=F64, generator=g) - 0.2
        return moments.joint_rows(x, y), moments.joint_rows(x0, y)
    y0 = x[:, :dy] * 0.4 + torch.randn(n, dy, dtype=F64, generator=g) + 0.5
    return moments.joint_rows(x, y), moments.joint_rows(x, y0)


def _explicit_link(reference_rows, candidate_rows, dx, shared):
    """``Cov(u_hat, w) S_w^-1 S_wu S_u^-1`` with explicit inverses of two-pass covariances (``u`` the new block)."""
    covariance = reference_rows.T.cov()
    candidate_cross = torch.cov(torch.cat([candidate_rows[:, :dx], candidate_rows[:, dx:]], 1).T)
    new, kept = (slice(0, dx), slice(dx, None)) if shared == "text" else (slice(dx, None), slice(0, dx))
    return (
        candidate_cross[new, kept]
        @ torch.linalg.inv(covariance[kept, kept])
        @ covariance[kept, new]
        @ torch.linalg.inv(covariance[new, new])
    )


@pytest.mark.parametrize("shared", ["text", "image"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_shared_link_equals_explicit_inverses(shared, seed):
    reference_rows, candidate_rows = _sharing_sets(shared, seed)
    reference = gaussian.reference_from_moments(moments.from_features(reference_rows), 4)
    link = wishart._shared_link(reference, moments.from_features(candidate_rows), shared)
    expected = _explicit_link(reference_rows, candidate_rows, 4, shared)
    torch.testing.assert_close(link, expected, rtol=1e-12, atol=1e-12 * float(expected.abs().max()))
    # The coupling depends on the traces of L and L^2 only: any similar matrix gives it.
    similar = torch.linalg.solve(reference.chol_image if shared == "text" else reference.chol_text, link)
    similar = similar @ (reference.chol_image if shared == "text" else reference.chol_text)
    assert float(wishart.link_coupling(similar)) == pytest.approx(float(wishart.link_coupling(link)), rel=1e-12)
    trace = float(expected.trace())
    written_out = 2 * trace + float((expected @ expected).trace()) + trace**2
    assert float(wishart.link_coupling(link)) == pytest.approx(written_out, rel=1e-12)


def test_candidate_cross_covariance_is_the_two_pass_block():
    _, candidate_rows = _sharing_sets("text", 3)
    block = wishart.candidate_cross_covariance(moments.from_features(candidate_rows), 4)
    torch.testing.assert_close(block, candidate_rows.T.cov()[4:, :4], rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize("shared", ["text", "image"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_schur_complement_terms_equal_the_joint_factorisation(shared, seed):
    reference_rows, candidate_rows = _sharing_sets(shared, seed)
    reference_packed, candidate_packed = (moments.from_features(r) for r in (reference_rows, candidate_rows))
    fit = gaussian.reference_from_moments(reference_packed, 4)
    scatter = gaussian.candidate_scatter(fit, candidate_packed)
    assert wishart.shared_modality(fit, scatter, candidate_rows.shape[0]) == shared
    expected = wishart.corrected_terms(
        fit, candidate_packed, scatter, gaussian.block_traces(fit, scatter), shared=shared
    )
    actual = shared_corrected_terms(reference_packed, candidate_packed, 4, shared)
    for value, reference in zip(actual, expected):
        assert float(value) == pytest.approx(float(reference), rel=1e-12)
    assert float(expected[1]) != pytest.approx(0.0, abs=1e-3)  # a distance term that the test can get wrong


def test_schur_complement_terms_refuse_other_sharing_and_dependent_features():
    reference_rows, candidate_rows = _sharing_sets("text", 4)
    packed = [moments.from_features(r) for r in (reference_rows, candidate_rows)]
    with pytest.raises(ValueError, match="shared"):
        shared_corrected_terms(*packed, 4, "both")
    # A text coordinate that is a linear function of the images: the images given the texts are degenerate.
    function_of_images = reference_rows[:, :1] * 2.0 + reference_rows[:, 1:2] * 3.0
    dependent = torch.cat([reference_rows[:, :4], function_of_images, reference_rows[:, 5:]], 1)
    with pytest.raises(ValueError, match=r"reference \(image, text\) pairs"):
        shared_corrected_terms(moments.from_features(dependent), packed[1], 4, "text")


@pytest.mark.parametrize("center", [False, True])
def test_leave_one_out_moments_equal_the_rest_of_the_rows(center):
    g = torch.Generator().manual_seed(5)
    rows = torch.randn(300, 5, dtype=F64, generator=g) @ torch.randn(5, 5, dtype=F64, generator=g) + 4.0
    groups = group_moments(rows, 2, 6)
    labels = row_groups(rows, 2, 6)
    full = merge_groups(groups)
    point = torch.linspace(-1.0, 1.0, 5, dtype=F64)
    for k in range(6):
        rest = rows[labels != k]
        about = point if center else rest.mean(0)
        expected = (rest - about).T @ (rest - about) / 7.0
        mean, scatter = leave_one_out_moments(full, groups[k], center=point if center else None, scale=1.0 / 7.0)
        torch.testing.assert_close(mean, rest.mean(0), rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(
            scatter.tril(), expected.tril(), rtol=1e-11, atol=1e-11 * float(expected.abs().max())
        )
        blocks = [(slice(0, 2), slice(0, 2)), (slice(2, None), slice(None))]  # what the shared fit reads
        _, only = leave_one_out_moments(full, groups[k], point if center else None, 1.0 / 7.0, blocks=blocks)
        for block in blocks:
            torch.testing.assert_close(
                only.tril()[block], expected.tril()[block], rtol=1e-11, atol=1e-11 * float(expected.abs().max())
            )


def test_merge_groups_equals_the_moments_of_all_rows():
    g = torch.Generator().manual_seed(6)
    rows = torch.randn(500, 4, dtype=F64, generator=g) * torch.tensor([1.0, 10.0, 0.1, 3.0], dtype=F64) + 100.0
    merged = merge_groups(group_moments(rows, 2, 7))
    mean, scatter = moments.mean_and_scatter(merged)
    torch.testing.assert_close(mean, rows.mean(0), rtol=1e-14, atol=0)
    torch.testing.assert_close(scatter, rows.T.cov() * 499, rtol=1e-11, atol=0)
    assert float(merged[0]) == 500.0


@pytest.mark.parametrize("shared", ["text", "image"])
def test_sharing_test_traces_equal_explicit_inverses(shared):
    reference_rows, candidate_rows = _sharing_sets(shared, 7)
    fit = gaussian.reference_from_moments(moments.from_features(reference_rows), 4)
    scatter = gaussian.candidate_scatter(fit, moments.from_features(candidate_rows))
    found, traces = wishart.sharing_and_traces(fit, scatter, candidate_rows.shape[0])
    assert found == shared
    covariance = reference_rows.T.cov()
    expected = [
        torch.trace(torch.linalg.solve(covariance[:4, :4], scatter[:4, :4])),
        torch.trace(torch.linalg.solve(covariance[4:, 4:], scatter[4:, 4:])),
        torch.trace(torch.linalg.solve(covariance, scatter)),
    ]
    for value, reference in zip(traces, expected):
        assert float(value) == pytest.approx(float(reference), rel=1e-12)
    assert wishart.sharing_and_traces(fit, scatter, candidate_rows.shape[0] - 1) == (None, None)


@pytest.mark.parametrize("shared", ["text", "image"])
def test_jackknife_left_out_terms_equal_the_joint_factorisation_of_each_subset(shared):
    reference_rows, candidate_rows = _sharing_sets(shared, 8, n=600)
    key = "text" if shared == "text" else "image"
    groups = (group_moments(reference_rows, 4, 5, key), group_moments(candidate_rows, 4, 5, key))
    estimates = jackknife_estimates(*groups, image_dim=4)
    assert estimates.shared == shared
    labels = row_groups(reference_rows, 4, 5, key)
    for index, k in enumerate(int(k) for k in torch.unique(labels)):
        keep = labels != k
        packed = [moments.from_features(reference_rows[keep]), moments.from_features(candidate_rows[keep])]
        fit = gaussian.reference_from_moments(packed[0], 4)
        scatter = gaussian.candidate_scatter(fit, packed[1])
        mi, distance = wishart.corrected_terms(
            fit, packed[1], scatter, gaussian.block_traces(fit, scatter), shared=shared
        )
        torch.testing.assert_close(
            estimates.left_out[index], torch.stack([mi + distance, mi, distance]), rtol=1e-11, atol=0
        )
