r"""Mutual Information Divergence as pure functions of feature tensors or of their Gaussian statistics.

Notation (see ``shared/GUIDE.md`` and Kim et al., NeurIPS 2022): reference pairs ``(x_i, y_i)``, ``i = 1..N``,
with ``z = [x; y]``, mean ``mu`` and unbiased covariance ``S`` (scatter / (N - 1)); candidate pairs
``(x_hat_j, y_hat_j)``, ``j = 1..M``.

.. math::

    I = \tfrac12 (\log|S_x| + \log|S_y| - \log|S_z|)

    \mathrm{PMI}(\hat x, \hat y) = I + \tfrac12 (d^2_x(\hat x) + d^2_y(\hat y) - d^2_z([\hat x; \hat y])),
    \quad d^2_x(v) = (v - \mu_x)^T S_x^{-1} (v - \mu_x)

    \mathrm{MID} = I + \tfrac12 (\mathrm{tr}(S_x^{-1}\hat S_x) + \mathrm{tr}(S_y^{-1}\hat S_y)
    - \mathrm{tr}(S_z^{-1}\hat S_z))

where ``S_hat`` is the candidates' scatter about the *reference* mean divided by ``M - 1``, as in the official
estimator. All linear algebra is float64 Cholesky: the factor of ``S_z`` gives ``log|S_z|`` and its leading block
is the factor of ``S_x``; traces and distances come from triangular solves, never from an explicit inverse.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from mid_metric import bias, moments
from mid_metric.result import MIDResult
from mid_metric.validation import check_eps, check_finite_result, check_pairs

__all__ = [
    "GaussianReference",
    "fit_reference",
    "reference_from_moments",
    "divergence_from_moments",
    "pointwise_mutual_information_from_reference",
    "mutual_information",
    "mutual_information_divergence",
    "pointwise_mutual_information",
]


class GaussianReference(NamedTuple):
    """A fitted reference Gaussian: its mean, Cholesky factors and mutual information.

    Attributes:
        mean: Mean of ``z = [x; y]``, shape ``(Dx + Dy,)``.
        chol_joint: Lower Cholesky factor of ``S_z + eps I``; its leading ``Dx`` block is the factor of ``S_x``.
        chol_text: Lower Cholesky factor of ``S_y + eps I``.
        dim_image: ``Dx``.
        mutual_information: ``I``, a 0-dim float64 tensor.
        count: Number of reference pairs.
    """

    mean: Tensor
    chol_joint: Tensor
    chol_text: Tensor
    dim_image: int
    mutual_information: Tensor
    count: int


# A covariance that is singular in exact arithmetic (duplicate or linearly dependent features) can still factorise
# in floating point, with a pivot at rounding level, and then gives a meaningless MID. L_kk^2 / S_kk is the fraction
# of coordinate k's variance that the earlier coordinates leave unexplained; below this it is treated as dependent.
# It is far below any real features' value (about 1e-4 on CLIP-like data with eigenvalues down to 1e-9) and above
# the float32 quantisation floor (about 1e-14) and float64 rounding of an exactly singular matrix (1e-16 or less).
_MIN_RELATIVE_PIVOT = 1e-12


def _cholesky(matrix: Tensor, what: str) -> Tensor:
    factor, info = torch.linalg.cholesky_ex(matrix)
    failed_at = int(info)
    if failed_at == 0:
        relative_pivots = factor.diagonal().square() / matrix.diagonal()
        worst = int(relative_pivots.argmin())
        if not float(relative_pivots[worst]) >= _MIN_RELATIVE_PIVOT:
            failed_at = worst + 1
    if failed_at != 0:
        raise ValueError(
            f"The covariance of the {what} is not positive definite (Cholesky failed at column {failed_at} of"
            f" {matrix.shape[0]}). The features are linearly dependent or too few; pass more reference pairs or"
            " set `eps` > 0 (e.g. eps=5e-4) to regularise the covariances."
        )
    return factor


def _logdet_from_cholesky(factor: Tensor) -> Tensor:
    return 2.0 * factor.diagonal().log().sum()


def fit_reference(mean: Tensor, covariance: Tensor, dim_image: int, count: int, eps: float = 0.0) -> GaussianReference:
    """Factorise the reference covariance of ``z = [x; y]`` and compute the mutual information ``I``.

    Args:
        mean: Reference mean of ``z``, shape ``(D,)``.
        covariance: Unbiased reference covariance of ``z``, shape ``(D, D)``.
        dim_image: Number of leading coordinates of ``z`` that are image features.
        count: Number of reference pairs the statistics come from.
        eps: Added to the diagonal of every covariance.

    Returns:
        The fitted :class:`GaussianReference`.

    Raises:
        ValueError: If a covariance is not positive definite.

    Example:
        >>> cov = torch.tensor([[1.0, 0.6], [0.6, 1.0]], dtype=torch.float64)
        >>> ref = fit_reference(torch.zeros(2, dtype=torch.float64), cov, dim_image=1, count=100)
        >>> round(ref.mutual_information.item(), 6)  # -0.5 * log(1 - 0.6 ** 2)
        0.223144
    """
    covariance = covariance.to(torch.float64)
    if eps > 0.0:
        covariance = covariance + eps * torch.eye(covariance.shape[0], dtype=covariance.dtype, device=covariance.device)
    chol_joint = _cholesky(covariance, "reference (image, text) pairs")
    chol_text = _cholesky(covariance[dim_image:, dim_image:], "reference text features")
    logdet_joint = _logdet_from_cholesky(chol_joint)
    logdet_image = _logdet_from_cholesky(chol_joint[:dim_image, :dim_image])
    logdet_text = _logdet_from_cholesky(chol_text)
    mutual_info = 0.5 * (logdet_image + logdet_text - logdet_joint)
    return GaussianReference(mean.to(torch.float64), chol_joint, chol_text, dim_image, mutual_info, count)


def _check_reference_count(count: int, dim: int, eps: float) -> None:
    if count == 0:
        raise ValueError(
            "No reference pairs: call `update(images, texts, real=True)` with the real pairs (or load a reference"
            " statistics file) before computing MID."
        )
    if eps == 0.0 and count <= dim:
        raise ValueError(
            f"MID needs more than {dim} reference pairs (image dim + text dim = {dim}) for a full-rank joint"
            f" covariance, got {count}. Pass at least {dim + 1} reference pairs, or set `eps` > 0 (e.g. eps=5e-4)"
            " to regularise the covariances."
        )
    if count < 2:
        raise ValueError(f"MID needs at least 2 reference pairs for a covariance, got {count}.")


def reference_from_moments(packed: Tensor, dim_image: int, eps: float = 0.0) -> GaussianReference:
    """Fit the reference Gaussian from packed moments (see :mod:`mid_metric.moments`).

    Raises:
        ValueError: If there are no reference pairs, too few for a full-rank covariance with ``eps = 0``, or a
            covariance is not positive definite.

    Example:
        >>> z = torch.randn(50, 4, dtype=torch.float64)
        >>> reference_from_moments(moments.from_features(z), dim_image=2).count
        50
    """
    count = int(moments.unpack(packed).count)
    dim = moments.dim_from_packed_size(packed.shape[-1])
    _check_reference_count(count, dim, eps)
    mean, scatter = moments.mean_and_scatter(packed)
    return fit_reference(mean, scatter / (count - 1), dim_image, count, eps)


def _trace_of_solve(chol: Tensor, matrix: Tensor) -> Tensor:
    """Return ``L^-1 M L^-T`` for the lower factor ``L`` of ``S``; its trace is ``tr(S^-1 M)`` for symmetric M."""
    half = torch.linalg.solve_triangular(chol, matrix, upper=False)
    return torch.linalg.solve_triangular(chol, half.mT, upper=False)


# Width of the column blocks in which _squared_norms_of_solve solves L X = R.
_SOLVE_BLOCK = 256


def _squared_norms_of_solve(chol: Tensor, factor: Tensor, split: int) -> tuple[Tensor, Tensor]:
    """Return ``|L^-1 R|_F^2`` and the same sum over its leading ``split x split`` block, for lower triangular L, R.

    With ``S = L L^T`` and ``M = R R^T``, ``tr(S^-1 M) = |L^-1 R|_F^2``, and the leading block of ``L^-1 R`` is
    ``Lx^-1 Rx``, whose squared norm is the trace for the leading sub-matrices. ``X = L^-1 R`` is lower triangular,
    so the columns ``[c0, c1)`` of ``X`` are zero above row ``c0`` and their other rows solve
    ``L[c0:, c0:] X = R[c0:, c0:c1]``: solving block by block skips the zeros, about half the flops of one full
    triangular solve, and ``X`` is never assembled.
    """
    dim = chol.shape[0]
    total = chol.new_zeros(())
    leading = chol.new_zeros(())
    for start in range(0, dim, _SOLVE_BLOCK):
        stop = min(dim, start + _SOLVE_BLOCK)
        block = torch.linalg.solve_triangular(chol[start:, start:], factor[start:, start:stop], upper=False).square()
        total = total + block.sum()
        if start < split:
            leading = leading + block[: split - start, : min(stop, split) - start].sum()
    return total, leading


def _candidate_traces(reference: GaussianReference, candidate_cov: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Return ``tr(Sx^-1 Shat_x)``, ``tr(Sy^-1 Shat_y)`` and ``tr(Sz^-1 Shat_z)``.

    When the candidate covariance is positive definite (more candidates than dimensions), its Cholesky factors
    ``R`` (of ``Shat_z``) and ``Ry`` (of ``Shat_y``) turn each trace into a squared norm ``|L^-1 R|_F^2`` with one
    blocked triangular solve (see :func:`_squared_norms_of_solve`), about half the cost of solving with the full
    matrix from both sides. Otherwise it solves ``L^-1 Shat L^-T`` with two triangular solves per trace.
    """
    dim_image = reference.dim_image
    candidate_text = candidate_cov[dim_image:, dim_image:]
    chol_joint, info_joint = torch.linalg.cholesky_ex(candidate_cov)
    if int(info_joint) == 0:
        chol_text, info_text = torch.linalg.cholesky_ex(candidate_text)
        if int(info_text) == 0:
            trace_joint, trace_image = _squared_norms_of_solve(reference.chol_joint, chol_joint, dim_image)
            trace_text, _ = _squared_norms_of_solve(reference.chol_text, chol_text, 0)
            return trace_image, trace_text, trace_joint
    whitened = _trace_of_solve(reference.chol_joint, candidate_cov)
    # The leading block of L^-1 S_hat L^-T is Lx^-1 S_hat_x Lx^-T, because L is lower triangular.
    trace_image = whitened[:dim_image, :dim_image].diagonal().sum()
    trace_joint = whitened.diagonal().sum()
    trace_text = _trace_of_solve(reference.chol_text, candidate_text).diagonal().sum()
    return trace_image, trace_text, trace_joint


def divergence_from_moments(reference: GaussianReference, candidate_packed: Tensor) -> MIDResult:
    """Compute MID from a fitted reference and the candidates' packed moments.

    Args:
        reference: The fitted reference Gaussian.
        candidate_packed: Packed moments of the candidate pairs ``[x_hat; y_hat]``.

    Returns:
        :class:`~mid_metric.result.MIDResult` with MID, ``I`` and the distance term.

    Raises:
        ValueError: If there are fewer than 2 candidate pairs.

    Example:
        >>> z = torch.randn(200, 4, dtype=torch.float64)
        >>> stats = moments.from_features(z)
        >>> result = divergence_from_moments(reference_from_moments(stats, 2), stats)
        >>> torch.allclose(result.mid, result.mutual_information)  # candidates = reference: MID = I
        True
    """
    num_candidates = int(moments.unpack(candidate_packed).count)
    if num_candidates < 2:
        raise ValueError(
            f"MID needs at least 2 candidate pairs, got {num_candidates}: call `update(images, texts, real=False)`"
            " with the generated pairs before computing."
        )
    _, scatter = moments.mean_and_scatter(candidate_packed, center=reference.mean)
    candidate_cov = scatter.div_(num_candidates - 1)  # scatter is a fresh tensor
    trace_image, trace_text, trace_joint = _candidate_traces(reference, candidate_cov)
    distance = 0.5 * (trace_image + trace_text - trace_joint)
    mid = reference.mutual_information + distance
    if not bool(torch.isfinite(mid)):
        raise ValueError("MID is not finite; the reference covariance is too ill-conditioned. Set `eps` > 0.")
    return MIDResult(mid, reference.mutual_information, distance, reference.count, num_candidates)


def pointwise_mutual_information_from_reference(reference: GaussianReference, images: Tensor, texts: Tensor) -> Tensor:
    """Per-pair PMI of feature pairs under a fitted reference Gaussian.

    Args:
        reference: The fitted reference Gaussian.
        images: Image features ``(B, Dx)``; already checked.
        texts: Text features ``(B, Dy)``; already checked.

    Returns:
        Float64 tensor of shape ``(B,)`` on the reference's device.

    Example:
        >>> z = torch.randn(100, 4, dtype=torch.float64)
        >>> ref = reference_from_moments(moments.from_features(z), dim_image=2)
        >>> pointwise_mutual_information_from_reference(ref, z[:3, :2], z[:3, 2:]).shape
        torch.Size([3])
    """
    device = reference.mean.device
    joint = torch.cat([images.to(device=device, dtype=torch.float64), texts.to(device=device, dtype=torch.float64)], 1)
    centred = (joint - reference.mean).mT
    dim_image = reference.dim_image
    whitened = torch.linalg.solve_triangular(reference.chol_joint, centred, upper=False).square()
    distance_joint = whitened.sum(dim=0)
    distance_image = whitened[:dim_image].sum(dim=0)  # Lx^-1 is the leading block of L^-1
    distance_text = torch.linalg.solve_triangular(reference.chol_text, centred[dim_image:], upper=False)
    distance_text = distance_text.square().sum(dim=0)
    return reference.mutual_information + 0.5 * (distance_image + distance_text - distance_joint)


def _reference_of(images: Tensor, texts: Tensor, eps: float, prefix: str = "reference_") -> GaussianReference:
    images, texts = check_pairs(images, texts, prefix=prefix)
    packed = moments.from_features(torch.cat([images.to(torch.float64), texts.to(torch.float64)], dim=1))
    return reference_from_moments(packed, images.shape[1], eps)


def mutual_information(images: Tensor, texts: Tensor, eps: float = 0.0, bias_correction: bool = False) -> Tensor:
    """Gaussian mutual information ``I`` between paired image and text features.

    Args:
        images: Image features ``(N, Dx)``, any floating dtype.
        texts: Text features ``(N, Dy)``.
        eps: Added to the diagonal of every covariance (0 reproduces the paper).
        bias_correction: Subtract the Gaussian small-sample bias of the log-determinants (needs ``eps = 0``; see
            :func:`mid_metric.bias.mutual_information_bias`).

    Returns:
        0-dim float64 tensor.

    Raises:
        TypeError: If an input is not a floating tensor.
        ValueError: If the shapes disagree, a value is not finite, or ``N <= Dx + Dy`` with ``eps = 0``.

    Example:
        >>> x = torch.randn(1000, 1, dtype=torch.float64)
        >>> y = 0.6 * x + 0.8 * torch.randn(1000, 1, dtype=torch.float64)
        >>> r = torch.corrcoef(torch.cat([x, y], dim=1).T)[0, 1]  # sample correlation
        >>> torch.allclose(mutual_information(x, y), -0.5 * torch.log(1 - r**2))
        True
    """
    eps = check_eps(eps)
    bias.check_bias_correction(bias_correction, eps)
    mutual_info = _reference_of(images, texts, eps, prefix="").mutual_information
    if bias_correction:
        mutual_info = mutual_info - bias.mutual_information_bias(images.shape[1], texts.shape[1], images.shape[0])
    return mutual_info


def mutual_information_divergence(
    reference_images: Tensor,
    reference_texts: Tensor,
    candidate_images: Tensor,
    candidate_texts: Tensor,
    eps: float = 0.0,
    bias_correction: bool = False,
) -> Tensor:
    """Mutual Information Divergence of candidate pairs against reference pairs.

    For text-to-image, the reference pairs are (real image, caption) and the candidates (generated image, the
    same caption); for captioning, the candidates are (image, generated caption). The official code's
    ``update(x, y, x0)`` is ``mutual_information_divergence(x, y, x0, y)``.

    Args:
        reference_images: ``(N, Dx)`` image features of the reference pairs.
        reference_texts: ``(N, Dy)`` text features of the reference pairs.
        candidate_images: ``(M, Dx)`` image features of the candidate pairs.
        candidate_texts: ``(M, Dy)`` text features of the candidate pairs.
        eps: Added to the diagonal of every covariance (0 reproduces the paper).
        bias_correction: Return the Gaussian bias-corrected estimator of :func:`mid_metric.bias.corrected_divergence`
            instead of the paper's (needs ``eps = 0`` and ``N > Dx + Dy + 2``).

    Returns:
        0-dim float64 tensor.

    Raises:
        TypeError: If an input is not a floating tensor.
        ValueError: If shapes disagree, a value is not finite, ``N <= Dx + Dy`` with ``eps = 0``, or ``M < 2``;
            or ``bias_correction=True`` with ``eps > 0``.

    Example:
        >>> _ = torch.manual_seed(123)
        >>> x = torch.rand(10, 2, dtype=torch.float64) * 2 - 1
        >>> y = torch.rand(10, 2, dtype=torch.float64) * 2 - 1
        >>> round(mutual_information_divergence(x, y, 1.1 * x, y).item(), 6)
        0.151645
    """
    eps = check_eps(eps)
    bias.check_bias_correction(bias_correction, eps)
    reference = _reference_of(reference_images, reference_texts, eps)
    candidate_images, candidate_texts = check_pairs(
        candidate_images, candidate_texts, reference.dim_image, reference.chol_text.shape[0], prefix="candidate_"
    )
    device = reference.mean.device
    joint = torch.cat([candidate_images.to(device, torch.float64), candidate_texts.to(device, torch.float64)], 1)
    if bias_correction:
        return bias.corrected_divergence(reference, moments.from_features(joint)).mid
    return divergence_from_moments(reference, moments.from_features(joint)).mid


def pointwise_mutual_information(
    reference_images: Tensor, reference_texts: Tensor, images: Tensor, texts: Tensor, eps: float = 0.0
) -> Tensor:
    """Per-pair PMI of ``(images, texts)`` under the Gaussian fitted to the reference pairs.

    These are the official code's sample-wise scores (``compute(reduction=False)``). Their mean over the
    candidates equals MID up to the ``M / (M - 1)`` scaling of the distance part.

    Args:
        reference_images: ``(N, Dx)`` image features of the reference pairs.
        reference_texts: ``(N, Dy)`` text features of the reference pairs.
        images: ``(B, Dx)`` image features to score.
        texts: ``(B, Dy)`` text features to score.
        eps: Added to the diagonal of every covariance.

    Returns:
        Float64 tensor of shape ``(B,)``.

    Raises:
        TypeError: If an input is not a floating tensor.
        ValueError: If shapes disagree, a value is not finite, or ``N <= Dx + Dy`` with ``eps = 0``.

    Example:
        >>> x, y = torch.randn(100, 2), torch.randn(100, 2)
        >>> pointwise_mutual_information(x, y, x[:5], y[:5]).shape
        torch.Size([5])
    """
    reference = _reference_of(reference_images, reference_texts, check_eps(eps))
    images, texts = check_pairs(images, texts, reference.dim_image, reference.chol_text.shape[0])
    return check_finite_result(pointwise_mutual_information_from_reference(reference, images, texts), "PMI")
