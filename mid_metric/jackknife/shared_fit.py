r"""The corrected MID of candidates that reuse the reference's rows of one modality, through Schur complements.

The jackknife fits every leave-one-group-out sample afresh. When the candidates share a modality ``w`` with the
reference (their texts, or their images) and bring a new one ``u``, the shared-rows estimator
(:func:`mid_metric.wishart.shared_distance`) needs only

* ``I = (log|S_u| - log|A|) / 2`` with ``A = S_u - S_uw S_w^-1 S_wu``, the conditional covariance of ``u`` given
  ``w`` (``log|S_w|`` cancels from ``log|S_x| + log|S_y| - log|S_z|``);
* the own trace ``T_u = tr(S_u^-1 S_hat_u)``;
* the conditional trace ``T_z - T_w = tr(A^-1 C)``, with ``C = [-B, I] S_hat [-B, I]^T`` the candidates' scatter
  of ``u`` about its regression ``B = S_uw S_w^-1`` on the shared rows; since ``S_hat_w = S_w``,
  ``C = S_hat_u - B S_hat_wu - S_hat_uw B^T + B S_w B^T``;
* the traces of the link ``L = C_hat_uw B^T S_u^-1`` and of its square.

With ``G^T = L_w^-1 S_wu`` and ``G_hat^T = L_w^-1 S_hat_wu`` (one triangular solve), ``B S_w B^T = G G^T`` and
``B S_hat_wu = G G_hat^T`` (two products, the first on its lower triangle only), so everything comes from three
``Dw``- and ``Du``-sized factorisations of the reference, one solve, those products, the inverses ``S_u^-1`` and
``A^-1`` from their factors (one thread each, side by side when this runs on several torch threads:
:func:`mid_metric.gaussian.precisions_from_choleskys`), which turn both traces into element-wise products, and one
product ``S_u^-1 F``, similar to the link. The shared block of the candidates is never read: the caller has checked
that it is the reference's
(:func:`mid_metric.wishart.shared_modality` and the group-by-group check of
:func:`mid_metric.jackknife.jackknife_estimates`). The jackknife runs each fit on one torch thread
(:func:`mid_metric.jackknife.left_out_fits`), so its element-wise passes open no parallel region.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from mid_metric import moments, wishart
from mid_metric._checks import check_candidate_count
from mid_metric.gaussian import checked_cholesky, precisions_from_choleskys

__all__ = ["SampleMoments", "shared_corrected_terms", "shared_terms_from_covariances"]


class SampleMoments(NamedTuple):
    """A sample's mean, its (scaled) covariance or scatter, of which the lower triangle is read, and its size."""

    mean: Tensor
    matrix: Tensor
    count: int


# Width of the row blocks of _lower_gram: 1/3 of D = 768, so that the lower tiles are 2/3 of the flops.
_GRAM_BLOCK = 256


def _lower_gram(columns: Tensor) -> Tensor:
    """``X^T X`` on its lower triangle (diagonal included; zeros above the diagonal blocks), in row blocks."""
    dim = columns.shape[1]
    gram = columns.new_zeros(dim, dim)
    for start in range(0, dim, _GRAM_BLOCK):
        stop = min(dim, start + _GRAM_BLOCK)
        gram[start:stop, :stop].addmm_(columns[:, start:stop].mT, columns[:, :stop], beta=0.0)
    return gram


def _trace_of_product(precision: Tensor, lower: Tensor) -> Tensor:
    """``tr(P M)`` for a symmetric ``P`` (both triangles stored) and a symmetric ``M`` (its lower triangle is read)."""
    products = precision * lower
    return 2.0 * products.tril().sum() - products.diagonal().sum()


def shared_corrected_terms(
    reference_packed: Tensor, candidate_packed: Tensor, image_dim: int, shared: str
) -> tuple[Tensor, Tensor]:
    """Return the bias-corrected ``(I, distance)`` for candidates sharing the reference's ``shared`` rows.

    These equal :func:`mid_metric.wishart.corrected_terms` with ``shared`` (to rounding) when the candidates'
    ``shared`` block is the reference's; that block of ``candidate_packed`` is not read.

    Args:
        reference_packed: Packed moments of the reference pairs (more than ``Dx + Dy + 2``).
        candidate_packed: Packed moments of the candidate pairs, whose ``shared`` features are the reference's.
        image_dim: ``Dx``.
        shared: ``"text"`` (the candidates reuse the reference's texts) or ``"image"``.

    Raises:
        ValueError: If a reference covariance is not positive definite, there are fewer than 2 candidates, or
            ``shared`` is neither ``"text"`` nor ``"image"``.

    Example:
        >>> from mid_metric.gaussian import block_traces, candidate_scatter, reference_from_moments
        >>> g = torch.Generator().manual_seed(0)
        >>> x, y = torch.randn(300, 2, dtype=torch.float64, generator=g), torch.randn(300, 2, dtype=torch.float64)
        >>> y = y + x
        >>> ref, cand = moments.from_features(torch.cat([x, y], 1)), moments.from_features(torch.cat([y - x, y], 1))
        >>> fast = shared_corrected_terms(ref, cand, 2, "text")
        >>> fit = reference_from_moments(ref, 2)
        >>> scatter = candidate_scatter(fit, cand)
        >>> slow = wishart.corrected_terms(fit, cand, scatter, block_traces(fit, scatter), shared="text")
        >>> all(torch.allclose(a, b, rtol=1e-12, atol=0) for a, b in zip(fast, slow))
        True
    """
    count = int(moments.unpack(reference_packed).count)
    num_candidates = int(moments.unpack(candidate_packed).count)
    check_candidate_count(num_candidates, "MID")
    mean, covariance = moments.mean_and_scatter(reference_packed, scale=1.0 / (count - 1), symmetric=False)
    candidate_mean, scatter = moments.mean_and_scatter(
        candidate_packed, center=mean, scale=1.0 / (num_candidates - 1), symmetric=False
    )
    reference = SampleMoments(mean, covariance, count)
    return shared_terms_from_covariances(
        reference, SampleMoments(candidate_mean, scatter, num_candidates), image_dim, shared
    )


def shared_terms_from_covariances(
    reference: SampleMoments, candidates: SampleMoments, image_dim: int, shared: str
) -> tuple[Tensor, Tensor]:
    """:func:`shared_corrected_terms` from the reference covariance and the candidates' scatter about its mean.

    Args:
        reference: The reference mean, covariance (``scatter / (N - 1)``) and ``N``.
        candidates: The candidates' mean, scatter about the reference mean divided by ``M - 1``, and ``M``.
        image_dim: ``Dx``.
        shared: ``"text"`` or ``"image"``.

    Only the lower triangles (diagonal included) of the two matrices are read.
    """
    if shared not in ("text", "image"):
        raise ValueError(f"`shared` must be 'text' or 'image', got {shared!r}.")
    mean, covariance, count = reference
    candidate_mean, scatter, num_candidates = candidates
    dim = covariance.shape[0]
    images, texts = slice(0, image_dim), slice(image_dim, dim)
    kept, new = (texts, images) if shared == "text" else (images, texts)
    kept_what, new_what = ("text", "image") if shared == "text" else ("image", "text")

    def new_by_kept(matrix: Tensor) -> Tensor:  # the (u, w) block, from the stored text-image block
        block = matrix[image_dim:, :image_dim]
        return block.mT if shared == "text" else block

    chol_kept = checked_cholesky(covariance[kept, kept], f"reference {kept_what} features")
    chol_new = checked_cholesky(covariance[new, new], f"reference {new_what} features")
    new_dim = chol_new.shape[0]
    # [G^T, G_hat^T] = L_w^-1 [S_wu, S_hat_wu] in one solve, then G G^T (lower tiles) and G G_hat^T.
    offset = candidate_mean - mean
    right_side = torch.cat([new_by_kept(covariance).mT, new_by_kept(scatter).mT, offset[kept].unsqueeze(1)], dim=1)
    # (The last column, L_w^-1 d_w, serves the link's correction for the candidates' mean.)
    whitened = torch.linalg.solve_triangular(chol_kept, right_side, upper=False)
    explained = _lower_gram(whitened[:, :new_dim])  # B S_w B^T = G G^T, lower triangle
    mixed = whitened[:, :new_dim].mT @ whitened[:, new_dim : 2 * new_dim]  # B S_hat_wu = G G_hat^T
    new_variances = covariance[new, new].diagonal()
    schur_complement = covariance[new, new] - explained
    chol_conditional = checked_cholesky(schur_complement, "reference (image, text) pairs", new_variances)
    mutual_info = chol_new.diagonal().log().sum() - chol_conditional.diagonal().log().sum()  # (log|S_u| - log|A|) / 2
    # Both traces and the link from the two inverses (one thread's inverse of a factor costs less than factorising
    # the candidates' block and solving, and S_u^-1 serves the link too: S_u^-1 F is similar to L).
    new_precision, conditional_precision = precisions_from_choleskys(chol_new, chol_conditional)
    own_trace = _trace_of_product(new_precision, scatter[new, new])
    conditional_scatter = (scatter[new, new] - mixed).sub_(mixed.mT).add_(explained)  # C, lower triangle
    conditional_trace = _trace_of_product(conditional_precision, conditional_scatter)
    # The link L = C_hat_uw B^T S_u^-1, with C_hat the candidates' covariance about their own mean:
    # C_hat = S_hat - M / (M - 1) d d^T for d their mean less the reference's; L is similar to S_u^-1 F.
    regressed_offset = whitened[:, :new_dim].mT @ whitened[:, 2 * new_dim :]
    numerator = torch.addr(mixed.mT, offset[new], regressed_offset[:, 0], alpha=-num_candidates / (num_candidates - 1))
    coupling = wishart.link_coupling(new_precision @ numerator)
    mutual_info = mutual_info - wishart.mutual_information_bias(image_dim, dim - image_dim, count)
    own_dim, other_dim = new_dim, dim - new_dim
    distance = wishart.shared_distance(own_trace, conditional_trace, coupling, own_dim, other_dim, count)
    return mutual_info, distance
