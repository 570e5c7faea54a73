r"""Standard error and confidence interval of MID, from the reference Gaussian and the candidates' moments.

``MID - I_hat`` is the mean over candidates of a quadratic form ``q(z_hat) / 2`` with a matrix fixed by the
reference. Its variance over candidates is taken under a Gaussian model of the candidates (from their mean and
covariance, which the metric keeps); the reference's sampling noise is added to first order by the delta method
under a Gaussian reference. The interval is ``estimate +/- z_{(1+level)/2} * standard_error``.
``docs/bias_correction.md`` (section 4) derives it and says what it does not cover.
"""

from __future__ import annotations

import torch
from torch import Tensor

from mid_metric import moments
from mid_metric._checks import check_candidate_count, check_finite_result, check_level, check_reference_count
from mid_metric.gaussian import GaussianReference
from mid_metric.result import MIDResult

__all__ = ["standard_error", "with_confidence_interval"]


def _solve(chol: Tensor, rhs: Tensor) -> Tensor:
    return torch.cholesky_solve(rhs, chol)


def _apply_quadratic(reference: GaussianReference, rhs: Tensor, weights: tuple[float, float, float]) -> Tensor:
    """Return ``A_w rhs`` with ``A_w = w_x [S_x^-1 0; 0 0] + w_y [0 0; 0 S_y^-1] - w_z S_z^-1``."""
    dx = reference.image_dim
    out = -weights[2] * _solve(reference.chol_joint, rhs)
    out[:dx] += weights[0] * _solve(reference.chol_image, rhs[:dx])
    out[dx:] += weights[1] * _solve(reference.chol_text, rhs[dx:])
    return out


def standard_error(
    reference: GaussianReference,
    candidate_packed: Tensor,
    bias_correction: bool = False,
    include_reference: bool = True,
) -> Tensor:
    r"""Standard error of MID: the candidates' sampling noise plus, to first order, the reference's.

    **Candidates.** ``MID - I_hat = kappa / (2M) sum_j q(z_hat_j)`` with ``q(v) = (v - z_bar)^T A (v - z_bar)``,
    ``A = [S_x^-1 0; 0 S_y^-1] - S_z^-1`` (weighted per block by ``(n - p_b - 1)/n`` when corrected) and
    ``kappa = M / (M - 1)`` (``1`` when corrected). For Gaussian candidates ``N(m, C)``,
    ``Var q = 2 tr((A C)^2) + 4 d^T A C A d`` with ``d = m - z_bar``, estimated from the candidates' mean and
    covariance.

    **Reference** (``include_reference``). MID* is a smooth function ``f(mu, Sigma)`` of the reference, so to first
    order ``Var = g^T Sigma g / N + 2 tr((G Sigma)^2) / n`` with ``g = -A d`` and
    ``G = 1/2 sum_b +/- (Sigma_b^-1 - Sigma_b^-1 C0_b Sigma_b^-1)``, under a Gaussian reference (plug-in values).
    ``G`` vanishes when the candidates follow the reference distribution, where the reference noise is of second
    order.

    What it does not cover: the fourth moments of non-Gaussian candidates, second-order reference noise, and, for
    the uncorrected estimator, its bias (see :mod:`mid_metric.wishart`). It treats the candidates as independent
    of the reference.

    Args:
        reference: The fitted reference Gaussian.
        candidate_packed: Packed moments of the candidates (``M >= 2``).
        bias_correction: Weight the blocks as the corrected estimator does.
        include_reference: Add the reference's first-order sampling noise.

    Returns:
        0-dim float64 tensor.

    Raises:
        ValueError: If there are fewer than 2 candidates, or too few reference pairs for the correction.

    Example:
        >>> from mid_metric.gaussian import pointwise_mutual_information_from_reference, reference_from_moments
        >>> g = torch.Generator().manual_seed(0)
        >>> z = torch.randn(4000, 4, dtype=torch.float64, generator=g) @ torch.tensor(
        ...     [[1.0, 0, 0.8, 0], [0, 1, 0, 0.5], [0, 0, 0.6, 0], [0, 0, 0, 0.9]], dtype=torch.float64)
        >>> ref = reference_from_moments(moments.from_features(z[:2000]), image_dim=2)
        >>> se = standard_error(ref, moments.from_features(z[2000:]), include_reference=False)
        >>> pmi = pointwise_mutual_information_from_reference(ref, z[2000:, :2], z[2000:, 2:])
        >>> abs(se.item() / (pmi.std().item() / 2000**0.5) - 1) < 0.1  # agrees with the PMI values' spread
        True
    """
    num_candidates = int(moments.unpack(candidate_packed).count)
    check_candidate_count(num_candidates, "A standard error")
    dx, dy = reference.image_dim, reference.text_dim
    dz, count = dx + dy, reference.count
    dof = count - 1
    if bias_correction:
        check_reference_count(count, dz, 0.0, bias_correction=True)
        weights = tuple((dof - p - 1) / dof for p in (dx, dy, dz))
        kappa = 1.0
    else:
        weights = (1.0, 1.0, 1.0)
        kappa = num_candidates / (num_candidates - 1)
    cand_mean, cand_scatter = moments.mean_and_scatter(candidate_packed)
    cand_cov = cand_scatter / (num_candidates - 1)
    offset = (cand_mean - reference.mean).unsqueeze(1)

    a_cov = _apply_quadratic(reference, cand_cov, weights)  # type: ignore[arg-type]
    a_offset = _apply_quadratic(reference, offset, weights)  # type: ignore[arg-type]
    var_q = 2.0 * (a_cov * a_cov.mT).sum() + 4.0 * (a_offset.mT @ cand_cov @ a_offset).squeeze()
    variance = (0.5 * kappa) ** 2 * var_q.clamp(min=0.0) / num_candidates

    if include_reference:
        ones = (1.0, 1.0, 1.0)
        ref_cov = reference.covariance
        grad_mean = -_apply_quadratic(reference, offset, ones)
        variance = variance + (grad_mean.mT @ ref_cov @ grad_mean).squeeze() / count
        # G Sigma, block by block: (Sigma_b^-1 - Sigma_b^-1 C0_b Sigma_b^-1) Sigma_{b,:}.
        second = cand_cov * (num_candidates - 1) / num_candidates + offset @ offset.mT
        g_sigma = -(torch.eye(dz, dtype=ref_cov.dtype, device=ref_cov.device) - _solve(reference.chol_joint, second))
        proj_x = _solve(reference.chol_image, ref_cov[:dx])
        g_sigma[:dx] += proj_x - _solve(reference.chol_image, second[:dx, :dx] @ proj_x)
        proj_y = _solve(reference.chol_text, ref_cov[dx:])
        g_sigma[dx:] += proj_y - _solve(reference.chol_text, second[dx:, dx:] @ proj_y)
        g_sigma = 0.5 * g_sigma
        variance = variance + 2.0 * (g_sigma * g_sigma.mT).sum().clamp(min=0.0) / dof
    return variance.sqrt()


def with_confidence_interval(
    result: MIDResult,
    reference: GaussianReference,
    candidate_packed: Tensor,
    level: float = 0.95,
    include_reference: bool = True,
) -> MIDResult:
    """Return ``result`` with ``standard_error``, ``ci_low``, ``ci_high`` and ``ci_level`` filled in.

    The interval is ``mid +/- z * standard_error`` with ``z`` the normal quantile of ``(1 + level) / 2``. With a
    bias-corrected ``result`` it targets the population MID; with the paper's estimator it is centred on a biased
    value and covers only sampling noise (see :func:`standard_error`).

    Args:
        result: The MID result to extend (its ``bias_corrected`` flag selects the block weights).
        reference: The fitted reference Gaussian the result came from.
        candidate_packed: Packed moments of the candidates.
        level: Coverage level in ``(0, 1)``.
        include_reference: Add the reference's first-order sampling noise to the standard error.

    Raises:
        ValueError: If ``level`` is not in ``(0, 1)``, or the standard error is not finite in float64 (candidates
            extremely far from the reference).

    Example:
        >>> from mid_metric.functional import divergence_from_moments
        >>> from mid_metric.gaussian import reference_from_moments
        >>> z = torch.randn(300, 4, dtype=torch.float64)
        >>> ref = reference_from_moments(moments.from_features(z[:200]), 2)
        >>> cands = moments.from_features(z[200:])
        >>> r = with_confidence_interval(divergence_from_moments(ref, cands, bias_correction=True), ref, cands)
        >>> bool(r.ci_low < r.mid < r.ci_high), r.ci_level
        (True, 0.95)
    """
    check_level(level)
    se = check_finite_result(
        standard_error(reference, candidate_packed, result.bias_corrected, include_reference), "The standard error"
    )
    quantile = float(torch.special.ndtri(torch.tensor((1.0 + float(level)) / 2.0, dtype=torch.float64)))
    return MIDResult(
        result.mid,
        result.mutual_information,
        result.distance,
        result.num_reference,
        result.num_candidates,
        bias_corrected=result.bias_corrected,
        standard_error=se,
        ci_low=result.mid - quantile * se,
        ci_high=result.mid + quantile * se,
        ci_level=float(level),
    )
