r"""Mutual Information Divergence as pure functions of feature tensors or of their Gaussian statistics.

Reference pairs ``(x_i, y_i)``, ``i = 1..N``, with ``z = [x; y]``, mean ``mu`` and unbiased covariance ``S``
(scatter / (N - 1)); candidate pairs ``(x_hat_j, y_hat_j)``, ``j = 1..M`` (Kim et al., NeurIPS 2022):

.. math::

    I = \tfrac12 (\log|S_x| + \log|S_y| - \log|S_z|)

    \mathrm{PMI}(\hat x, \hat y) = I + \tfrac12 (d^2_x(\hat x) + d^2_y(\hat y) - d^2_z([\hat x; \hat y])),
    \quad d^2_x(v) = (v - \mu_x)^T S_x^{-1} (v - \mu_x)

    \mathrm{MID} = I + \tfrac12 (\mathrm{tr}(S_x^{-1}\hat S_x) + \mathrm{tr}(S_y^{-1}\hat S_y)
    - \mathrm{tr}(S_z^{-1}\hat S_z))

where ``S_hat`` is the candidates' scatter about the *reference* mean divided by ``M - 1``, as in the official
estimator. The linear algebra lives in :mod:`mid_metric.gaussian`, the Gaussian bias correction in
:mod:`mid_metric.wishart` and the jackknife in :mod:`mid_metric.jackknife`; ``docs/estimator.md`` and
``docs/bias_correction.md`` explain them.
"""

from __future__ import annotations

from typing import Optional, Union

import torch  # noqa: F401 (the examples use it)
from torch import Tensor

from mid_metric import jackknife, moments, wishart
from mid_metric._checks import check_bias_correction, check_eps, check_finite_result, check_pairs, check_reference_count
from mid_metric.gaussian import (
    GaussianReference,
    ReferencePrecisions,
    block_traces,
    candidate_scatter,
    pointwise_mutual_information_from_reference,
    reference_from_moments,
)
from mid_metric.jackknife import jackknife_divergence
from mid_metric.result import MIDResult

__all__ = [
    "divergence_from_moments",
    "jackknife_divergence",
    "mutual_information",
    "mutual_information_divergence",
    "pointwise_mutual_information",
]


def divergence_from_moments(
    reference: GaussianReference,
    candidate_packed: Tensor,
    bias_correction: bool = False,
    precisions: Optional[ReferencePrecisions] = None,
) -> MIDResult:
    """Compute MID from a fitted reference and the candidates' packed moments.

    Args:
        reference: The fitted reference Gaussian.
        candidate_packed: Packed moments of the candidate pairs ``[x_hat; y_hat]``.
        bias_correction: Return the Gaussian bias-corrected estimator (:func:`mid_metric.wishart.corrected_terms`;
            the reference must be fitted with ``eps = 0`` from more than ``Dx + Dy + 2`` pairs) instead of the
            paper's. The jackknife needs the rows in groups: see :func:`jackknife_divergence`. ``True`` assumes
            candidates independent of the reference rows, or reusing them as they are; candidates derived from
            the reference's images (``x + noise``) make it over-correct (docs/bias_correction.md, section 3c).
        precisions: The reference's precision matrices (:func:`mid_metric.gaussian.reference_precisions`), when a
            caller that scores many candidate sets against one reference keeps them; the traces then need no
            factorisation.

    Returns:
        :class:`~mid_metric.result.MIDResult` with MID, ``I`` and the distance term (the corrected terms when
        ``bias_correction``).

    Raises:
        TypeError: If ``bias_correction`` is not a bool.
        ValueError: If there are fewer than 2 candidate pairs, too few reference pairs for the correction, or the
            result is not finite; or if ``bias_correction="jackknife"``.

    Example:
        >>> z = torch.randn(200, 4, dtype=torch.float64)
        >>> stats = moments.from_features(z)
        >>> result = divergence_from_moments(reference_from_moments(stats, 2), stats)
        >>> torch.allclose(result.mid, result.mutual_information)  # candidates = reference: MID = I
        True
    """
    check_bias_correction(bias_correction, 0.0)
    if bias_correction:
        check_reference_count(reference.count, reference.image_dim + reference.text_dim, 0.0, bias_correction=True)
    scatter = candidate_scatter(reference, candidate_packed)
    traces = block_traces(reference, scatter, precisions)
    if bias_correction:
        mutual_info, distance = wishart.corrected_terms(reference, candidate_packed, scatter, traces)
    else:
        mutual_info = reference.mutual_information
        distance = 0.5 * (traces.image + traces.text - traces.joint)
    mid = check_finite_result(mutual_info + distance, "MID", regularisable=not bias_correction)
    num_candidates = int(moments.unpack(candidate_packed).count)
    return MIDResult(mid, mutual_info, distance, reference.count, num_candidates, bias_corrected=bias_correction)


def _reference_of(images: Tensor, texts: Tensor, eps: float, prefix: str = "reference_") -> GaussianReference:
    images, texts = check_pairs(images, texts, prefix=prefix)
    return reference_from_moments(moments.from_features(moments.joint_rows(images, texts)), images.shape[1], eps)


def mutual_information(
    images: Tensor,
    texts: Tensor,
    eps: float = 0.0,
    bias_correction: Union[bool, str] = False,
    jackknife_groups: int = jackknife.DEFAULT_GROUPS,
) -> Tensor:
    """Gaussian mutual information ``I`` between paired image and text features.

    Args:
        images: Image features ``(N, Dx)``, any floating dtype.
        texts: Text features ``(N, Dy)``.
        eps: Added to the diagonal of every covariance (0 reproduces the paper).
        bias_correction: ``True`` subtracts the Gaussian small-sample bias of the log-determinants
            (:func:`mid_metric.wishart.mutual_information_bias`); ``"jackknife"`` also jackknifes the corrected
            value over ``jackknife_groups`` groups of rows (:func:`mid_metric.jackknife.jackknife_mutual_information`;
            rows grouped by a hash of their text). Both need ``eps = 0``.
        jackknife_groups: Number of jackknife groups ``K`` (used with ``bias_correction="jackknife"`` only).

    Returns:
        0-dim float64 tensor.

    Raises:
        TypeError: If an input is not a floating tensor.
        ValueError: If the shapes disagree, a value is not finite, or ``N <= Dx + Dy`` with ``eps = 0``; or a
            correction is asked for with ``eps > 0``.

    Example:
        >>> x = torch.randn(1000, 1, dtype=torch.float64)
        >>> y = 0.6 * x + 0.8 * torch.randn(1000, 1, dtype=torch.float64)
        >>> r = torch.corrcoef(torch.cat([x, y], dim=1).T)[0, 1]  # sample correlation
        >>> torch.allclose(mutual_information(x, y), -0.5 * torch.log(1 - r**2))
        True
    """
    eps = check_eps(eps)
    check_bias_correction(bias_correction, eps, allow_jackknife=True)
    if bias_correction == "jackknife":
        jackknife_groups = jackknife.check_num_groups(jackknife_groups, "jackknife_groups")
        images, texts = check_pairs(images, texts)
        rows = moments.joint_rows(images, texts)
        groups = jackknife.group_moments(rows, images.shape[1], jackknife_groups)
        return jackknife.jackknife_mutual_information(groups, images.shape[1])[0]
    reference = _reference_of(images, texts, eps, prefix="")
    if not bias_correction:
        return reference.mutual_information
    return reference.mutual_information - wishart.mutual_information_bias(
        reference.image_dim, reference.text_dim, reference.count
    )


def mutual_information_divergence(
    reference_images: Tensor,
    reference_texts: Tensor,
    candidate_images: Tensor,
    candidate_texts: Tensor,
    eps: float = 0.0,
    bias_correction: Union[bool, str] = False,
    jackknife_groups: int = jackknife.DEFAULT_GROUPS,
    jackknife_key: str = "text",
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
        bias_correction: ``False``: the paper's estimator, whose value drifts with ``N``. ``True``: the Gaussian
            bias-corrected estimator (:mod:`mid_metric.wishart`; needs ``N > Dx + Dy + 2``), unbiased at any ``N``
            for Gaussian features. ``"jackknife"``: the grouped jackknife of the corrected estimator
            (:mod:`mid_metric.jackknife`), which also removes the ``1/N`` bias that non-Gaussian features leave;
            it needs ``N (K - 1) / K > Dx + Dy + 2`` and costs ``K + 1`` fits. Corrections need ``eps = 0``.
        jackknife_groups: Number of jackknife groups ``K`` (``"jackknife"`` only).
        jackknife_key: What decides a row's group (``"jackknife"`` only): ``"text"`` (default; text-to-image,
            candidates that reuse the reference's captions), ``"image"`` (captioning, candidates that reuse the
            reference's images) or ``"joint"`` (see :func:`mid_metric.jackknife.row_groups`).

    Returns:
        0-dim float64 tensor.

    Raises:
        TypeError: If an input is not a floating tensor, or ``bias_correction`` is not a bool or ``"jackknife"``.
        ValueError: If shapes disagree, a value is not finite, ``N <= Dx + Dy`` with ``eps = 0``, or ``M < 2``;
            a correction is asked for with ``eps > 0``; or, for the jackknife, a leave-one-group-out subset is too
            small, or the candidates share the reference's images while ``jackknife_key="text"`` (or the reverse).

    Example:
        >>> _ = torch.manual_seed(123)
        >>> x = torch.rand(10, 2, dtype=torch.float64) * 2 - 1
        >>> y = torch.rand(10, 2, dtype=torch.float64) * 2 - 1
        >>> round(mutual_information_divergence(x, y, 1.1 * x, y).item(), 6)
        0.151645

        >>> g = torch.Generator().manual_seed(0)
        >>> x = torch.randn(2000, 1, dtype=torch.float64, generator=g)
        >>> y = 0.6 * x + 0.8 * torch.randn(2000, 1, dtype=torch.float64, generator=g)
        >>> x0 = 0.6 * y + 0.8 * torch.randn(2000, 1, dtype=torch.float64, generator=g)  # images for the captions
        >>> round(mutual_information_divergence(x, y, x0, y, bias_correction="jackknife").item(), 2)
        0.23

        (The population value is ``-1/2 log(1 - 0.6^2) = 0.223``: these candidates follow the reference's law.)
    """
    eps = check_eps(eps)
    check_bias_correction(bias_correction, eps, allow_jackknife=True)
    if bias_correction == "jackknife":
        return _jackknife_of(
            reference_images, reference_texts, candidate_images, candidate_texts, jackknife_groups, jackknife_key
        ).mid
    reference = _reference_of(reference_images, reference_texts, eps)
    candidate_images, candidate_texts = check_pairs(
        candidate_images, candidate_texts, reference.image_dim, reference.text_dim, prefix="candidate_"
    )
    candidates = moments.from_features(moments.joint_rows(candidate_images, candidate_texts, reference.mean.device))
    return divergence_from_moments(reference, candidates, bias_correction).mid


def _jackknife_of(
    reference_images: Tensor,
    reference_texts: Tensor,
    candidate_images: Tensor,
    candidate_texts: Tensor,
    num_groups: int,
    key: str,
) -> MIDResult:
    num_groups = jackknife.check_num_groups(num_groups, "jackknife_groups")
    key = jackknife.check_key(key, "jackknife_key")
    reference_images, reference_texts = check_pairs(reference_images, reference_texts, prefix="reference_")
    dx, dy = reference_images.shape[1], reference_texts.shape[1]
    candidate_images, candidate_texts = check_pairs(candidate_images, candidate_texts, dx, dy, prefix="candidate_")
    reference_rows = moments.joint_rows(reference_images, reference_texts)
    candidate_rows = moments.joint_rows(candidate_images, candidate_texts, reference_rows.device)
    check_reference_count(reference_rows.shape[0], dx + dy, 0.0, bias_correction=True)
    return jackknife_divergence(
        jackknife.group_moments(reference_rows, dx, num_groups, key),
        jackknife.group_moments(candidate_rows, dx, num_groups, key),
        dx,
    )


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
    images, texts = check_pairs(images, texts, reference.image_dim, reference.text_dim)
    return check_finite_result(pointwise_mutual_information_from_reference(reference, images, texts), "PMI")
