r"""Sample-size bias of MID: a bias-corrected estimator, and a standard error with a confidence interval.

The paper's estimator plugs the reference sample mean ``z_bar`` and covariance ``S`` (``n = N - 1`` degrees of
freedom) into the population formula, so its expectation depends on ``N``: ``log|S|`` is biased low and ``S^-1``
is biased high. Under a Gaussian reference the biases are known exactly (``docs/bias_correction.md`` has the full
derivation):

* ``E[log|S_b|] = log|Sigma_b| + c(p_b, n)`` with ``c(p, n) = p log(2/n) + sum_{i=1..p} psi((n - i + 1) / 2)``;
* ``E[S_b^-1] = n / (n - p_b - 1) Sigma_b^-1``, and ``z_bar ~ N(mu, Sigma / N)`` independently of ``S``.

**The target** ("true MID") is the population value: the mean PMI of the candidate *population* ``Q`` under the
*population* reference Gaussian ``N(mu, Sigma)``,

.. math:: \mathrm{MID}^* = I(\Sigma) + \tfrac12 \sum_b \pm\,\mathrm{tr}(\Sigma_b^{-1} C^0_b),
    \qquad C^0 = \mathbb E_Q[(\hat z - \mu)(\hat z - \mu)^T],

with ``+`` for the image block ``x`` and the text block ``y`` and ``-`` for the joint block ``z``. With
``T_b = tr(S_b^-1 S_hat_b)`` the paper's trace of block ``b`` (``S_hat``: candidate scatter about the reference
mean over ``M - 1``), the corrected estimator is

.. math:: \hat I_c = \hat I - \tfrac12 (c(D_x, n) + c(D_y, n) - c(D_z, n)),\qquad
    \hat T_b^c = \tfrac{n - p_b - 1}{n}\,\tfrac{M - 1}{M}\,T_b - \tfrac{p_b}{N},

which is exactly unbiased when the reference is Gaussian and the candidates are independent of it. When the
candidates reuse the reference's texts (the text-to-image protocol of the official code, detected by
:func:`shared_modality` because then ``M = N`` and the candidates' text moments equal the reference's), the text
term is already exact and the joint term is corrected by a regression argument instead
(``(N - D_z - 2) T_r / N - D_x (1 + D_y) / N`` for the conditional term ``T_r = T_z - T_y``); the captioning
protocol (shared images) is handled symmetrically. Candidates that reuse both the reference's images and its texts,
paired differently (shuffled captions), get a correction of their own, and the reference's own pairs get ``I`` alone.

**Standard error.** ``MID - I`` is the mean over candidates of a quadratic form ``q(z_hat)/2`` with a matrix fixed by
the reference. Its variance over candidates is taken under a Gaussian model of the candidates (from their mean and
covariance, which the metric keeps); the reference's sampling noise is added to first order by the delta method
under a Gaussian reference. The interval is ``estimate +/- z_{(1+level)/2} * standard_error``.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, NamedTuple, Optional

import torch
from torch import Tensor

from mid_metric import moments
from mid_metric.result import MIDResult
from mid_metric.validation import check_finite_result

if TYPE_CHECKING:  # functional imports this module, so only the type is needed here
    from mid_metric.functional import GaussianReference

__all__ = [
    "logdet_bias",
    "logdet_variance",
    "inverse_bias_factor",
    "mutual_information_bias",
    "BlockTraces",
    "block_traces",
    "shared_modality",
    "corrected_divergence",
    "standard_error",
    "with_confidence_interval",
    "check_bias_correction",
]


# --------------------------------------------------------------------------------------------- Wishart facts
def _check_dims(dim: int, dof: int, need: int) -> None:
    if dim < 1:
        raise ValueError(f"`dim` must be a positive integer, got {dim}.")
    if dof < dim + need:
        raise ValueError(f"`dof` must be at least dim + {need} = {dim + need} for this Wishart moment, got {dof}.")


def logdet_bias(dim: int, dof: int) -> float:
    r"""Return ``E[log|S|] - log|Sigma|`` for a sample covariance ``S`` with ``dof`` degrees of freedom.

    ``S = W / n`` with ``W ~ Wishart_p(n, Sigma)``; the value is ``p log(2/n) + sum_{i=1..p} psi((n - i + 1)/2)``
    and does not depend on ``Sigma``. It is negative: ``log|S|`` underestimates ``log|Sigma|``.

    Args:
        dim: Dimension ``p``.
        dof: Degrees of freedom ``n`` (``N - 1`` for a covariance about the sample mean of ``N`` points).

    Raises:
        ValueError: If ``dim < 1`` or ``dof < dim``.

    Example:
        >>> round(logdet_bias(1, 10), 6)  # E[log(chi2_10 / 10)] = log(2/10) + psi(5)
        -0.10332
    """
    _check_dims(dim, dof, 0)
    halves = (dof - torch.arange(dim, dtype=torch.float64)) / 2.0
    return float(dim * math.log(2.0 / dof) + torch.special.digamma(halves).sum())


def logdet_variance(dim: int, dof: int) -> float:
    r"""Return ``Var[log|S|] = sum_{i=1..p} psi'((n - i + 1)/2)`` for a Gaussian sample covariance.

    Args:
        dim: Dimension ``p``.
        dof: Degrees of freedom ``n``.

    Raises:
        ValueError: If ``dim < 1`` or ``dof < dim``.

    Example:
        >>> round(logdet_variance(1, 10), 6)  # Var[log chi2_10] = psi'(5)
        0.221323
    """
    _check_dims(dim, dof, 0)
    halves = (dof - torch.arange(dim, dtype=torch.float64)) / 2.0
    return float(torch.special.polygamma(1, halves).sum())


def inverse_bias_factor(dim: int, dof: int) -> float:
    """Return ``n / (n - p - 1)``, the factor in ``E[S^-1] = n / (n - p - 1) Sigma^-1``.

    Args:
        dim: Dimension ``p``.
        dof: Degrees of freedom ``n``; must exceed ``p + 1``.

    Raises:
        ValueError: If ``dim < 1`` or ``dof <= dim + 1``.

    Example:
        >>> inverse_bias_factor(2, 10)
        1.4285714285714286
    """
    _check_dims(dim, dof, 2)
    return dof / (dof - dim - 1)


def mutual_information_bias(dim_image: int, dim_text: int, count: int) -> float:
    """Return ``E[I_hat] - I`` for the Gaussian MI of ``count`` reference pairs (positive: ``I_hat`` is too high).

    Args:
        dim_image: ``Dx``.
        dim_text: ``Dy``.
        count: Number of reference pairs ``N``; needs ``N > Dx + Dy``.

    Raises:
        ValueError: If the dimensions are not positive or ``count <= dim_image + dim_text``.

    Example:
        >>> round(mutual_information_bias(1, 1, 101), 6)  # about 1 / (2 N) for 1-d x and y
        0.005076
    """
    dof = count - 1
    joint = dim_image + dim_text
    _check_dims(joint, dof, 0)
    return 0.5 * (logdet_bias(dim_image, dof) + logdet_bias(dim_text, dof) - logdet_bias(joint, dof))


# ------------------------------------------------------------------------------------------ the estimator
class BlockTraces(NamedTuple):
    """The paper's traces ``T_b = tr(S_b^-1 S_hat_b)`` of the image, text and joint blocks (0-dim float64)."""

    image: Tensor
    text: Tensor
    joint: Tensor


def _image_factor(reference: GaussianReference) -> Tensor:
    return reference.chol_joint[: reference.dim_image, : reference.dim_image]


def _whitened_scatter(reference: GaussianReference, candidate_scatter: Tensor) -> tuple[Tensor, Tensor]:
    """Return ``Lz^-1 S_hat Lz^-T`` and ``Ly^-1 S_hat_y Ly^-T`` for the reference's Cholesky factors ``Lz`` and ``Ly``.

    The leading ``Dx`` block of the first is ``Lx^-1 S_hat_x Lx^-T``, because ``Lz`` is lower triangular.
    """
    dx = reference.dim_image
    joint = torch.linalg.solve_triangular(reference.chol_joint, candidate_scatter, upper=False)
    joint = torch.linalg.solve_triangular(reference.chol_joint, joint.mT, upper=False)
    text = torch.linalg.solve_triangular(reference.chol_text, candidate_scatter[dx:, dx:], upper=False)
    text = torch.linalg.solve_triangular(reference.chol_text, text.mT, upper=False)
    return joint, text


def _traces_of(reference: GaussianReference, joint: Tensor, text: Tensor) -> BlockTraces:
    dx = reference.dim_image
    return BlockTraces(joint[:dx, :dx].diagonal().sum(), text.diagonal().sum(), joint.diagonal().sum())


def block_traces(reference: GaussianReference, candidate_scatter: Tensor) -> BlockTraces:
    """Return the three traces of MID's distance term for a candidate covariance about the reference mean.

    Args:
        reference: The fitted reference Gaussian.
        candidate_scatter: ``S_hat``, the candidates' scatter about the reference mean divided by ``M - 1``.

    Example:
        >>> from mid_metric.functional import fit_reference
        >>> eye = torch.eye(3, dtype=torch.float64)
        >>> ref = fit_reference(torch.zeros(3, dtype=torch.float64), eye, dim_image=1, count=10)
        >>> [t.item() for t in block_traces(ref, 2 * eye)]
        [2.0, 4.0, 6.0]
    """
    return _traces_of(reference, *_whitened_scatter(reference, candidate_scatter))


# Largest Frobenius norm of ``L^-1 S_hat L^-T - I`` (per unit of sqrt(block size)) at which a block of the candidates
# counts as the reference's own rows. Rows that are the same up to summation order differ by rounding (1e-12 or less
# here even for CLIP-like spectra); an independent sample differs by about sqrt(2 / N) per entry, which stays above
# 1e-6 up to N = 1e12.
_SAME_ROWS_TOLERANCE = 1e-6


def _is_identity(whitened: Tensor) -> bool:
    dim = whitened.shape[0]
    gap = whitened - torch.eye(dim, dtype=whitened.dtype, device=whitened.device)
    return float(torch.linalg.matrix_norm(gap)) <= _SAME_ROWS_TOLERANCE * math.sqrt(dim)


def _shared_from_whitened(
    reference: GaussianReference, joint: Tensor, text: Tensor, num_candidates: int
) -> Optional[str]:
    if num_candidates != reference.count:
        return None
    dx = reference.dim_image
    if _is_identity(joint):
        return "both"
    text_shared, image_shared = _is_identity(text), _is_identity(joint[:dx, :dx])
    if text_shared and image_shared:
        return "repaired"
    if text_shared:
        return "text"
    if image_shared:
        return "image"
    return None


def _repaired_distance(reference: GaussianReference, traces: BlockTraces, dof: int) -> Tensor:
    """Corrected distance term for candidates made of the reference's images and texts, paired differently.

    Both own terms are exact (``T_x = D_x``, ``T_y = D_y``), so the plug-in distance is ``d = (D_x + D_y - T_z) / 2``.
    With ``t = tr(S_{y|x}^-1 S_yx S_x^-1 S_xy)`` (the sample's sum of ``rho_k^2 / (1 - rho_k^2)`` over its canonical
    correlations) and ``a = 1 + d / t`` the fraction of the reference's pairing that the candidates keep,
    ``E[t] = (n tau + D_x D_y) / (n - D_z - 1)`` under a Gaussian reference, which gives the unbiased
    ``(n - D_z - 1) d / n + (1 - a) D_x D_y / n`` (docs/bias_correction.md, section 4).
    """
    dx, dz = reference.dim_image, reference.chol_joint.shape[0]
    dy = dz - dx
    regression = torch.linalg.solve_triangular(
        reference.chol_joint[dx:, dx:], reference.chol_joint[dx:, :dx], upper=False
    )
    canonical = regression.square().sum()
    plug_in = 0.5 * (dx + dy - traces.joint)
    unpaired = (-plug_in / canonical).clamp(min=0.0, max=1.0) if float(canonical) > 0.0 else plug_in.new_zeros(())
    return ((dof - dz - 1) * plug_in + unpaired * dx * dy) / dof


def shared_modality(reference: GaussianReference, candidate_scatter: Tensor, num_candidates: int) -> Optional[str]:
    """Detect candidates that reuse the reference's texts (``"text"``), images (``"image"``) or pairs (``"both"``).

    The decision compares second moments, not traces: a block counts as shared when the candidates' scatter
    about the reference mean, whitened by the reference covariance, is the identity to rounding
    (``S_hat_b = S_b``, with ``M = N``). A trace alone cannot tell the reference's rows from other rows with the
    same trace, nor the reference's pairs from its images and texts paired differently (shuffled captions have
    exactly the reference's image and text blocks, but not its joint block). The estimator is a function of the
    moments, which do not depend on row order, so neither does this test: it sees the *multisets* of texts,
    images and pairs. Candidates whose text and image blocks are both the reference's but whose joint block is not
    (the reference's images and captions, paired differently, e.g. shuffled) are ``"repaired"``.

    Args:
        reference: The fitted reference Gaussian.
        candidate_scatter: ``S_hat``, the candidates' scatter about the reference mean divided by ``M - 1``.
        num_candidates: ``M``.

    Returns:
        ``"both"``, ``"repaired"``, ``"text"``, ``"image"`` or ``None`` (independent candidates).

    Example:
        >>> from mid_metric.functional import reference_from_moments
        >>> z = torch.randn(40, 4, dtype=torch.float64)
        >>> ref = reference_from_moments(moments.from_features(z), dim_image=2)
        >>> def detect(z_hat):
        ...     _, scatter = moments.mean_and_scatter(moments.from_features(z_hat), center=ref.mean)
        ...     return shared_modality(ref, scatter / 39, 40)
        >>> detect(torch.cat([z[:, :2] + 1.0, z[:, 2:]], dim=1))  # new images, the reference's texts
        'text'
        >>> detect(torch.cat([z[:, :2], z[torch.randperm(40), 2:]], dim=1))  # shuffled captions
        'repaired'
        >>> detect(z[torch.randperm(40)])  # the reference's pairs, in another order
        'both'
    """
    return _shared_from_whitened(reference, *_whitened_scatter(reference, candidate_scatter), num_candidates)


def check_bias_correction(bias_correction: object, eps: float) -> bool:
    """Validate the ``bias_correction`` argument against ``eps`` and return it.

    Raises:
        TypeError: If ``bias_correction`` is not a bool.
        ValueError: If ``bias_correction`` is ``True`` while ``eps > 0``: the Wishart corrections hold for the
            unregularised covariances only.

    Example:
        >>> check_bias_correction(True, 0.0)
        True
    """
    if not isinstance(bias_correction, bool):
        raise TypeError(f"`bias_correction` must be a bool, got {bias_correction!r}.")
    if bias_correction and eps > 0.0:
        raise ValueError(
            f"`bias_correction=True` needs `eps=0` (got eps={eps}): the correction is derived for unregularised"
            " covariances. Drop `eps`; the corrected estimator does not need regularisation beyond N > Dx + Dy + 2."
        )
    return bias_correction


def _check_corrected_count(count: int, dim: int) -> None:
    if count <= dim + 2:
        raise ValueError(
            f"The bias-corrected MID needs more than {dim + 2} reference pairs (image dim + text dim + 2), got {count}."
        )


def _shared_link(reference: GaussianReference, candidate_packed: Tensor, num_candidates: int, shared: str) -> Tensor:
    """Return ``L = Cov(u_hat, u) Sigma_u^-1``, the regression of the new modality's candidates on its reference.

    With shared rows ``w`` (texts or images), ``Cov(u_hat, u) = Cov(u_hat, w) Sigma_w^-1 Sigma_wu``, estimated from
    the candidates' cross-covariance and the reference covariance.
    """
    dx = reference.dim_image
    _, cand_scatter = moments.mean_and_scatter(candidate_packed)
    cand_cov = cand_scatter / (num_candidates - 1)
    ref_cov = reference.chol_joint @ reference.chol_joint.mT
    if shared == "text":
        new, kept, chol_new, chol_kept = slice(0, dx), slice(dx, None), _image_factor(reference), reference.chol_text
    else:
        new, kept, chol_new, chol_kept = slice(dx, None), slice(0, dx), reference.chol_text, _image_factor(reference)
    cross = cand_cov[new, kept] @ _solve(chol_kept, ref_cov[kept, new])  # Cov(u_hat, w) Sigma_w^-1 Sigma_wu
    return _solve(chol_new, cross.mT).mT


def _sizes(reference: GaussianReference, candidate_packed: Tensor, what: str) -> tuple[int, int, int, int]:
    """Return ``(M, Dx, Dy, Dx + Dy)``; raise when there are fewer than 2 candidates."""
    num_candidates = int(moments.unpack(candidate_packed).count)
    if num_candidates < 2:
        raise ValueError(f"{what} needs at least 2 candidate pairs, got {num_candidates}.")
    dx = reference.dim_image
    dy = reference.chol_text.shape[0]
    return num_candidates, dx, dy, dx + dy


def corrected_divergence(reference: GaussianReference, candidate_packed: Tensor) -> MIDResult:
    """Bias-corrected MID from a fitted reference (``eps = 0``) and the candidates' packed moments.

    See the module docstring and ``docs/bias_correction.md``. ``mutual_information`` and ``distance`` in the result
    are the corrected terms, and ``bias_corrected`` is ``True``.

    Args:
        reference: The reference Gaussian, fitted with ``eps = 0``.
        candidate_packed: Packed moments of the candidate pairs.

    Raises:
        ValueError: If there are fewer than 2 candidates or ``N <= Dx + Dy + 2``.

    Example:
        >>> from mid_metric.functional import reference_from_moments
        >>> z = torch.randn(400, 4, dtype=torch.float64)
        >>> stats = moments.from_features(z)
        >>> result = corrected_divergence(reference_from_moments(stats, 2), stats)
        >>> torch.allclose(result.mid, result.mutual_information)  # same pairs: the distance term is 0
        True
    """
    num_candidates, dx, dy, dz = _sizes(reference, candidate_packed, "MID")
    count = reference.count
    _check_corrected_count(count, dz)
    dof = count - 1
    _, scatter = moments.mean_and_scatter(candidate_packed, center=reference.mean)
    joint, text = _whitened_scatter(reference, scatter / (num_candidates - 1))
    traces = _traces_of(reference, joint, text)
    mutual_info = reference.mutual_information - mutual_information_bias(dx, dy, count)

    def independent(trace: Tensor, dim: int) -> Tensor:
        return (dof - dim - 1) / dof * (num_candidates - 1) / num_candidates * trace - dim / count

    shared = _shared_from_whitened(reference, joint, text, num_candidates)
    if shared == "both":
        distance = torch.zeros_like(mutual_info)
    elif shared == "repaired":
        distance = _repaired_distance(reference, traces, dof)
    elif shared in ("text", "image"):
        # The shared modality's own term is exact; the conditional term of the other one given it is corrected
        # by a regression argument, and its own term for its correlation with the reference through the shared
        # rows (docs/bias_correction.md, section 3).
        own_trace, own_dim, other_dim = (traces.image, dx, dy) if shared == "text" else (traces.text, dy, dx)
        conditional_trace = traces.joint - (traces.text if shared == "text" else traces.image)
        conditional = ((count - dz - 2) * conditional_trace - own_dim * (1 + other_dim)) / count
        link = _shared_link(reference, candidate_packed, num_candidates, shared)
        coupling = 2.0 * link.diagonal().sum() + (link * link.mT).sum() + link.diagonal().sum() ** 2
        own = ((dof - own_dim - 1) * own_trace - own_dim + coupling) / count
        distance = 0.5 * (own - conditional)
    else:
        distance = 0.5 * (independent(traces.image, dx) + independent(traces.text, dy) - independent(traces.joint, dz))
    mid = mutual_info + distance
    if not bool(torch.isfinite(mid)):
        raise ValueError("MID is not finite; the reference covariance is too ill-conditioned.")
    return MIDResult(mid, mutual_info, distance, count, num_candidates, bias_corrected=True)


# ------------------------------------------------------------------------------ standard error and interval
def _solve(chol: Tensor, rhs: Tensor) -> Tensor:
    return torch.cholesky_solve(rhs, chol)


def _apply_quadratic(reference: GaussianReference, rhs: Tensor, weights: tuple[float, float, float]) -> Tensor:
    """Return ``A_w rhs`` with ``A_w = w_x [S_x^-1 0; 0 0] + w_y [0 0; 0 S_y^-1] - w_z S_z^-1``."""
    dx = reference.dim_image
    out = -weights[2] * _solve(reference.chol_joint, rhs)
    out[:dx] += weights[0] * _solve(_image_factor(reference), rhs[:dx])
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
    the uncorrected estimator, its bias (see :func:`corrected_divergence`). It treats the candidates as independent
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
        >>> from mid_metric.functional import pointwise_mutual_information_from_reference, reference_from_moments
        >>> g = torch.Generator().manual_seed(0)
        >>> z = torch.randn(4000, 4, dtype=torch.float64, generator=g) @ torch.tensor(
        ...     [[1.0, 0, 0.8, 0], [0, 1, 0, 0.5], [0, 0, 0.6, 0], [0, 0, 0, 0.9]], dtype=torch.float64)
        >>> ref = reference_from_moments(moments.from_features(z[:2000]), dim_image=2)
        >>> se = standard_error(ref, moments.from_features(z[2000:]), include_reference=False)
        >>> pmi = pointwise_mutual_information_from_reference(ref, z[2000:, :2], z[2000:, 2:])
        >>> abs(se.item() / (pmi.std().item() / 2000**0.5) - 1) < 0.1  # agrees with the PMI values' spread
        True
    """
    num_candidates, dx, dy, dz = _sizes(reference, candidate_packed, "A standard error")
    count = reference.count
    dof = count - 1
    if bias_correction:
        _check_corrected_count(count, dz)
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
        ref_cov = reference.chol_joint @ reference.chol_joint.mT
        grad_mean = -_apply_quadratic(reference, offset, ones)
        variance = variance + (grad_mean.mT @ ref_cov @ grad_mean).squeeze() / count
        # G Sigma, block by block: (Sigma_b^-1 - Sigma_b^-1 C0_b Sigma_b^-1) Sigma_{b,:}.
        second = cand_cov * (num_candidates - 1) / num_candidates + offset @ offset.mT
        g_sigma = -(torch.eye(dz, dtype=ref_cov.dtype, device=ref_cov.device) - _solve(reference.chol_joint, second))
        proj_x = _solve(_image_factor(reference), ref_cov[:dx])
        g_sigma[:dx] += proj_x - _solve(_image_factor(reference), second[:dx, :dx] @ proj_x)
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
        >>> from mid_metric.functional import reference_from_moments
        >>> z = torch.randn(300, 4, dtype=torch.float64)
        >>> ref = reference_from_moments(moments.from_features(z[:200]), 2)
        >>> cands = moments.from_features(z[200:])
        >>> r = with_confidence_interval(corrected_divergence(ref, cands), ref, cands)
        >>> bool(r.ci_low < r.mid < r.ci_high), r.ci_level
        (True, 0.95)
    """
    if isinstance(level, bool) or not isinstance(level, (int, float)) or not 0.0 < float(level) < 1.0:
        raise ValueError(f"`level` must be a number in (0, 1), got {level!r}.")
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
