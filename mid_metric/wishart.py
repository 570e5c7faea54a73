r"""Gaussian small-sample bias of MID's terms, and the bias-corrected terms built from them.

The paper's estimator plugs the reference sample mean and covariance ``S`` (``n = N - 1`` degrees of freedom) into
the population formula, so its expectation depends on ``N``: ``log|S|`` is biased low and ``S^-1`` high. For a
Gaussian reference the biases are exact Wishart facts, for a block of dimension ``p``:

* ``E[log|S|] = log|Sigma| + c(p, n)`` with ``c(p, n) = p log(2/n) + sum_{i=1..p} psi((n - i + 1) / 2)``;
* ``E[S^-1] = n / (n - p - 1) Sigma^-1``, and the sample mean is ``N(mu, Sigma / N)``, independent of ``S``.

:func:`corrected_terms` turns the plug-in ``I`` and traces ``T_b`` into unbiased estimates of the population MID,
with one formula for independent candidates and others for candidates that reuse the reference's texts, images or
both (detected by :func:`shared_modality`). ``docs/bias_correction.md`` derives each of them.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor

from mid_metric import moments
from mid_metric.gaussian import BlockTraces, GaussianReference, whitened_scatter

__all__ = [
    "logdet_bias",
    "logdet_variance",
    "inverse_bias_factor",
    "mutual_information_bias",
    "shared_modality",
    "sharing_and_traces",
    "candidate_cross_covariance",
    "link_coupling",
    "shared_distance",
    "corrected_terms",
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


def mutual_information_bias(image_dim: int, text_dim: int, count: int) -> float:
    """Return ``E[I_hat] - I`` for the Gaussian MI of ``count`` reference pairs (positive: ``I_hat`` is too high).

    Args:
        image_dim: ``Dx``.
        text_dim: ``Dy``.
        count: Number of reference pairs ``N``; needs ``N > Dx + Dy``.

    Raises:
        ValueError: If the dimensions are not positive or ``count <= image_dim + text_dim``.

    Example:
        >>> round(mutual_information_bias(1, 1, 101), 6)  # about 1 / (2 N) for 1-d x and y
        0.005076
    """
    dof = count - 1
    joint = image_dim + text_dim
    _check_dims(joint, dof, 0)
    return 0.5 * (logdet_bias(image_dim, dof) + logdet_bias(text_dim, dof) - logdet_bias(joint, dof))


# ------------------------------------------------------------------------------- candidates sharing rows
# Largest Frobenius norm of ``L^-1 S_hat L^-T - I`` (per unit of sqrt(block size)) at which a block of the candidates
# counts as the reference's own rows. Rows that are the same up to summation order differ by rounding (1e-12 or less
# here even for CLIP-like spectra); an independent sample differs by about sqrt(2 / N) per entry, which stays above
# 1e-6 up to N = 1e12.
_SAME_ROWS_TOLERANCE = 1e-6


def _is_identity(whitened: Tensor) -> bool:
    dim = whitened.shape[0]
    gap = whitened - torch.eye(dim, dtype=whitened.dtype, device=whitened.device)
    return float(torch.linalg.matrix_norm(gap)) <= _SAME_ROWS_TOLERANCE * math.sqrt(dim)


def shared_modality(reference: GaussianReference, scatter: Tensor, num_candidates: int) -> Optional[str]:
    """Detect candidates that reuse the reference's pairs, its images and texts re-paired, its texts or its images.

    The answer is ``"both"``, ``"repaired"``, ``"text"`` or ``"image"`` respectively. The decision compares second
    moments, not traces: a block counts as shared when the candidates' scatter about the reference mean, whitened
    by the reference covariance, is the identity to rounding
    (``S_hat_b = S_b``, with ``M = N``). A trace alone cannot tell the reference's rows from other rows with the
    same trace, nor the reference's pairs from its images and texts paired differently (shuffled captions have
    exactly the reference's image and text blocks, but not its joint block). The estimator is a function of the
    moments, which do not depend on row order, so neither does this test: it sees the *multisets* of texts,
    images and pairs.

    Args:
        reference: The fitted reference Gaussian.
        scatter: ``S_hat``, the candidates' scatter about the reference mean divided by ``M - 1``.
        num_candidates: ``M``.

    Returns:
        ``"both"``, ``"repaired"``, ``"text"``, ``"image"`` or ``None`` (independent candidates).

    Example:
        >>> from mid_metric.gaussian import candidate_scatter, reference_from_moments
        >>> z = torch.randn(40, 4, dtype=torch.float64)
        >>> ref = reference_from_moments(moments.from_features(z), image_dim=2)
        >>> def detect(z_hat):
        ...     return shared_modality(ref, candidate_scatter(ref, moments.from_features(z_hat)), 40)
        >>> detect(torch.cat([z[:, :2] + 1.0, z[:, 2:]], dim=1))  # new images, the reference's texts
        'text'
        >>> detect(torch.cat([z[:, :2], z[torch.randperm(40), 2:]], dim=1))  # shuffled captions
        'repaired'
        >>> detect(z[torch.randperm(40)])  # the reference's pairs, in another order
        'both'
    """
    return sharing_and_traces(reference, scatter, num_candidates)[0]


def sharing_and_traces(
    reference: GaussianReference, scatter: Tensor, num_candidates: int
) -> tuple[Optional[str], Optional[BlockTraces]]:
    """:func:`shared_modality`, with the block traces that its whitened scatter gives when it computes one.

    The test whitens ``S_hat`` by the reference when ``M = N``; the traces of that matrix and of its blocks are
    :func:`mid_metric.gaussian.block_traces` (to rounding), which a caller then needs not compute. They are ``None``
    when ``M != N`` (no test is needed).

    Example:
        >>> from mid_metric.gaussian import candidate_scatter, reference_from_moments
        >>> z = torch.randn(40, 4, dtype=torch.float64)
        >>> ref = reference_from_moments(moments.from_features(z), image_dim=2)
        >>> shared, traces = sharing_and_traces(ref, candidate_scatter(ref, moments.from_features(z)), 40)
        >>> shared, round(traces.joint.item(), 9)
        ('both', 4.0)
    """
    if num_candidates != reference.count:
        return None, None
    joint, text = whitened_scatter(reference, scatter)
    image_dim = reference.image_dim
    image = joint[:image_dim, :image_dim]
    traces = BlockTraces(image.diagonal().sum(), text.diagonal().sum(), joint.diagonal().sum())
    if _is_identity(joint):
        return "both", traces
    text_shared, image_shared = _is_identity(text), _is_identity(image)
    if text_shared and image_shared:
        return "repaired", traces
    if text_shared:
        return "text", traces
    if image_shared:
        return "image", traces
    return None, traces


def _repaired_distance(reference: GaussianReference, traces: BlockTraces, dof: int) -> Tensor:
    """Corrected distance term for candidates made of the reference's images and texts, paired differently.

    Both own terms are exact (``T_x = D_x``, ``T_y = D_y``), so the plug-in distance is ``d = (D_x + D_y - T_z) / 2``.
    With ``t = tr(S_{y|x}^-1 S_yx S_x^-1 S_xy)`` (the sample's sum of ``rho_k^2 / (1 - rho_k^2)`` over its canonical
    correlations) and ``a = 1 + d / t`` the fraction of the reference's pairing that the candidates keep,
    ``E[t] = (n tau + D_x D_y) / (n - D_z - 1)`` under a Gaussian reference, which gives the unbiased
    ``(n - D_z - 1) d / n + (1 - a) D_x D_y / n`` (docs/bias_correction.md, section 4).
    """
    dx, dy = reference.image_dim, reference.text_dim
    dz = dx + dy
    regression = torch.linalg.solve_triangular(
        reference.chol_joint[dx:, dx:], reference.chol_joint[dx:, :dx], upper=False
    )
    canonical = regression.square().sum()
    plug_in = 0.5 * (dx + dy - traces.joint)
    unpaired = (-plug_in / canonical).clamp(min=0.0, max=1.0) if float(canonical) > 0.0 else plug_in.new_zeros(())
    return ((dof - dz - 1) * plug_in + unpaired * dx * dy) / dof


def candidate_cross_covariance(candidate_packed: Tensor, image_dim: int) -> Tensor:
    """Return ``C_hat_yx``, the candidates' text-image covariance about their own mean (divided by ``M - 1``).

    Only this ``Dy x Dx`` block of the packed state is read and computed (it lies in the stored lower triangle).

    Example:
        >>> v = torch.tensor([[0.0, 1.0], [2.0, 5.0], [4.0, 3.0]], dtype=torch.float64)
        >>> candidate_cross_covariance(moments.from_features(v), image_dim=1).tolist()  # cov(v[:, 1], v[:, 0])
        [[2.0]]
    """
    fields = moments.unpack(candidate_packed)
    count = fields.count.clamp(min=1.0)
    scale = 1.0 / (float(fields.count) - 1.0)
    sums = fields.shifted_sum
    block = fields.shifted_outer_sum[image_dim:, :image_dim]
    return torch.addr(block, sums[image_dim:], sums[:image_dim] / count, beta=scale, alpha=-scale)


def link_coupling(link: Tensor) -> Tensor:
    """Return ``2 tr(L) + tr(L^2) + tr(L)^2``, the term of the shared-rows correction that the link ``L`` adds.

    It depends on the traces of ``L`` and ``L^2`` only, so any matrix similar to ``L`` gives the same value.

    Example:
        >>> link_coupling(torch.diag(torch.tensor([1.0, 2.0], dtype=torch.float64))).item()  # 2 * 3 + 5 + 9
        20.0
    """
    trace = link.diagonal().sum()
    return 2.0 * trace + (link * link.mT).sum() + trace**2


def _shared_link(reference: GaussianReference, candidate_packed: Tensor, shared: str) -> Tensor:
    """Return ``L = Cov(u_hat, u) Sigma_u^-1``, the regression of the new modality's candidates on its reference.

    With shared rows ``w`` (texts or images), ``Cov(u_hat, u) = Cov(u_hat, w) Sigma_w^-1 Sigma_wu``, estimated from
    the candidates' cross-covariance and the reference covariance. The reference's regression of the texts on the
    images is ``S_yx S_x^-1 = L_yx L_x^-1`` (``L`` the joint Cholesky factor): one triangular solve.
    """
    dx = reference.image_dim
    cand_yx = candidate_cross_covariance(candidate_packed, dx)
    # S_yx S_x^-1 = L_yx L_xx^T L_xx^-T L_xx^-1 = L_yx L_xx^-1 (Dy x Dx), solved from the right.
    regression = torch.linalg.solve_triangular(
        reference.chol_image, reference.chol_joint[dx:, :dx], upper=False, left=False
    )
    if shared == "text":  # L = C_hat_xy S_y^-1 S_yx S_x^-1
        return cand_yx.mT @ torch.cholesky_solve(regression, reference.chol_text)
    # "image": L = C_hat_yx S_x^-1 S_xy S_y^-1 = (S_y^-1 (S_yx S_x^-1) C_hat_xy)^T
    return torch.cholesky_solve(regression @ cand_yx.mT, reference.chol_text).mT


def shared_distance(
    own_trace: Tensor, conditional_trace: Tensor, coupling: Tensor, own_dim: int, other_dim: int, count: int
) -> Tensor:
    """Return the corrected distance term of candidates that reuse the reference's rows of one modality.

    The shared modality's own term is exact; the conditional term of the other (new) one given it is corrected by a
    regression argument, and its own term for its correlation with the reference through the shared rows
    (docs/bias_correction.md, section 3).

    Args:
        own_trace: ``T_u = tr(S_u^-1 S_hat_u)`` of the new modality ``u``.
        conditional_trace: ``T_z - T_w``, the joint trace less that of the shared modality ``w``.
        coupling: :func:`link_coupling` of the link ``L = Cov(u_hat, u) Sigma_u^-1``, the regression of the new
            modality's candidates on its reference rows.
        own_dim: ``D_u``.
        other_dim: ``D_w``.
        count: Number of reference pairs ``N``.

    Example:
        >>> one = torch.tensor(1.0, dtype=torch.float64)
        >>> round(shared_distance(one, one, 0.0 * one, 1, 1, 100).item(), 6)
        0.01
    """
    dof = count - 1
    joint_dim = own_dim + other_dim
    conditional = ((count - joint_dim - 2) * conditional_trace - own_dim * (1 + other_dim)) / count
    own = ((dof - own_dim - 1) * own_trace - own_dim + coupling) / count
    return 0.5 * (own - conditional)


# Default of ``corrected_terms(shared=...)``: detect the sharing with :func:`shared_modality`.
_DETECT = "detect"


def corrected_terms(
    reference: GaussianReference,
    candidate_packed: Tensor,
    scatter: Tensor,
    traces: BlockTraces,
    *,
    shared: Optional[str] = _DETECT,
) -> tuple[Tensor, Tensor]:
    """Return the bias-corrected ``(I, distance)`` of MID from the plug-in quantities (``eps = 0``).

    Args:
        reference: The reference Gaussian, fitted with ``eps = 0`` from more than ``Dx + Dy + 2`` pairs.
        candidate_packed: Packed moments of the candidate pairs (``M >= 2``).
        scatter: ``S_hat`` of the candidates (:func:`mid_metric.gaussian.candidate_scatter`).
        traces: Its :func:`mid_metric.gaussian.block_traces`.
        shared: What the candidates share with the reference, when the caller has already run
            :func:`shared_modality` (it costs two triangular solves when ``M = N``); detected by default.

    Returns:
        The corrected mutual information and distance term; MID is their sum.

    Example:
        >>> from mid_metric.gaussian import block_traces, candidate_scatter, reference_from_moments
        >>> z = torch.randn(400, 4, dtype=torch.float64)
        >>> stats = moments.from_features(z)
        >>> ref = reference_from_moments(stats, 2)
        >>> scatter = candidate_scatter(ref, stats)
        >>> _, distance = corrected_terms(ref, stats, scatter, block_traces(ref, scatter))
        >>> distance.item()  # the reference's own pairs: the distance term is 0
        0.0
    """
    num_candidates = int(moments.unpack(candidate_packed).count)
    dx, dy = reference.image_dim, reference.text_dim
    dz, count = dx + dy, reference.count
    dof = count - 1
    mutual_info = reference.mutual_information - mutual_information_bias(dx, dy, count)

    def independent(trace: Tensor, dim: int) -> Tensor:
        return (dof - dim - 1) / dof * (num_candidates - 1) / num_candidates * trace - dim / count

    if shared == _DETECT:
        shared = shared_modality(reference, scatter, num_candidates)
    if shared == "both":
        distance = torch.zeros_like(mutual_info)
    elif shared == "repaired":
        distance = _repaired_distance(reference, traces, dof)
    elif shared in ("text", "image"):
        own_trace, own_dim, other_dim = (traces.image, dx, dy) if shared == "text" else (traces.text, dy, dx)
        conditional_trace = traces.joint - (traces.text if shared == "text" else traces.image)
        coupling = link_coupling(_shared_link(reference, candidate_packed, shared))
        distance = shared_distance(own_trace, conditional_trace, coupling, own_dim, other_dim, count)
    else:
        distance = 0.5 * (independent(traces.image, dx) + independent(traces.text, dy) - independent(traces.joint, dz))
    return mutual_info, distance
