"""The jackknife estimator: leave-one-group-out Gaussian-corrected MIDs, their combination and its t interval.

The Gaussian-corrected MID ``t`` of the full sample and ``t_k`` of each leave-one-group-out sample (group ``k``
dropped from the reference *and* the candidates, :mod:`mid_metric.jackknife.grouping`) are combined with the
reference fractions ``f_k = n_k / N`` (:func:`jackknife_combine`): ``t_J = G t - sum_k (1 - f_k) t_k``, with a
distribution-free standard error from the spread of the pseudo-values ``h_k t - (h_k - 1) t_k``, ``h_k = 1 / f_k``,
and an interval from Student's t with ``G - 1`` degrees of freedom (:func:`two_sided_t_quantile`).
"""

from __future__ import annotations

import math
from typing import NamedTuple, Optional

import torch
from torch import Tensor

from mid_metric import moments, wishart
from mid_metric._checks import check_finite_result, check_level
from mid_metric.gaussian import (
    GaussianReference,
    block_traces,
    candidate_scatter,
    reference_from_moments,
)
from mid_metric.jackknife.grouping import leave_one_out, leave_one_out_moments, merge_groups
from mid_metric.jackknife.left_out import left_out_fits
from mid_metric.jackknife.shared_fit import SampleMoments, shared_terms_from_covariances
from mid_metric.result import MIDResult

__all__ = [
    "jackknife_combine",
    "two_sided_t_quantile",
    "JackknifeEstimates",
    "jackknife_estimates",
    "jackknife_divergence",
    "jackknife_mutual_information",
]


def jackknife_combine(full: Tensor, left_out: Tensor, fractions: Tensor) -> tuple[Tensor, Tensor]:
    r"""Combine a statistic and its leave-one-group-out values: the delete-a-group jackknife for unequal groups.

    With ``G`` groups holding fractions ``f_k`` of the rows (``sum f_k = 1``) and ``h_k = 1 / f_k``:
    ``t_J = G t - sum_k (1 - f_k) t_k`` and
    ``se^2 = 1/G sum_k (tau_k - t_J)^2 / (h_k - 1)`` with pseudo-values ``tau_k = h_k t - (h_k - 1) t_k``
    (Busing, Meijer and van der Leeden, 1999). If ``E[t] = theta + a / N`` whatever the group sizes, ``t_J`` is
    exactly unbiased; with equal groups it is the textbook ``K t - (K - 1) mean(t_k)`` and
    ``se^2 = (K - 1) / K sum (t_k - mean)^2``.

    Args:
        full: The statistic on all rows, shape ``(...)``.
        left_out: Its values without each group, shape ``(G, ...)``.
        fractions: ``f_k``, shape ``(G,)``, each in ``(0, 1)``.

    Returns:
        ``(t_J, se)``, each of shape ``(...)``.

    Example:
        >>> # The plug-in variance (divisor N) has mean (1 - 1/N) sigma^2: the jackknife gives the unbiased one.
        >>> v = torch.tensor([1.0, 2.0, 4.0, 7.0], dtype=torch.float64)
        >>> def plug_in(u):
        ...     return ((u - u.mean()) ** 2).mean()
        >>> left_out = torch.stack([plug_in(torch.cat([v[:k], v[k + 1:]])) for k in range(4)])
        >>> estimate, _ = jackknife_combine(plug_in(v), left_out, torch.full((4,), 0.25, dtype=torch.float64))
        >>> torch.allclose(estimate, v.var())
        True
    """
    groups = left_out.shape[0]
    shape = (groups,) + (1,) * (left_out.ndim - 1)
    fractions = fractions.to(left_out).view(shape)
    estimate = groups * full - ((1.0 - fractions) * left_out).sum(dim=0)
    inflation = 1.0 / fractions
    pseudo = inflation * full - (inflation - 1.0) * left_out
    variance = ((pseudo - estimate) ** 2 / (inflation - 1.0)).sum(dim=0) / groups
    return estimate, variance.sqrt()


def two_sided_t_quantile(level: float, dof: int) -> float:
    """Return ``t`` with ``P(|T| < t) = level`` for Student's t with ``dof`` degrees of freedom.

    This is ``scipy.stats.t.ppf((1 + level) / 2, dof)``.

    Raises:
        ValueError: If ``level`` is not in ``(0, 1)`` or ``dof`` is not a positive int.

    Example:
        >>> round(two_sided_t_quantile(0.95, 9), 4)  # t_{0.975} with 9 degrees of freedom
        2.2622
        >>> round(two_sided_t_quantile(0.95, 10**6), 3)  # the normal quantile
        1.96
    """
    from scipy.stats import t as student_t  # scipy.stats takes a few tenths of a second to import: only when used

    if not 0.0 < level < 1.0:
        raise ValueError(f"`level` must be in (0, 1), got {level!r}.")
    if isinstance(dof, bool) or not isinstance(dof, int) or dof < 1:
        raise ValueError(f"`dof` must be a positive int, got {dof!r}.")
    return float(student_t.ppf((1.0 + level) / 2.0, dof))


class JackknifeEstimates(NamedTuple):
    """The Gaussian-corrected terms of the full sample and of each leave-one-group-out sample.

    Attributes:
        full: ``(3,)``: corrected MID, ``I`` and distance term of all the rows.
        left_out: ``(G, 3)``: the same without group ``k``, for the ``G`` groups that hold reference rows.
        fractions: ``(G,)``: ``n_k / N``, the share of the reference rows in each of those groups.
        num_reference: ``N``.
        num_candidates: ``M``.
        shared: What the candidates share with the reference (:func:`mid_metric.wishart.shared_modality`).
    """

    full: Tensor
    left_out: Tensor
    fractions: Tensor
    num_reference: int
    num_candidates: int
    shared: Optional[str]

    def combined(self) -> tuple[Tensor, Tensor]:
        """Return the jackknifed ``(MID, I, distance)`` and their standard errors (:func:`jackknife_combine`)."""
        return jackknife_combine(self.full, self.left_out, self.fractions)

    def result(self, level: Optional[float] = 0.95) -> MIDResult:
        """Return the jackknifed :class:`~mid_metric.result.MIDResult`, as :func:`jackknife_divergence` does.

        A caller that needs both the value and an interval (``compute`` and ``compute_with_ci``) can keep the
        estimates, whose ``K + 1`` fits are the whole cost, and call this for each level.

        Raises:
            ValueError: If ``level`` is not in ``(0, 1)`` or ``None``, or the result is not finite.
        """
        check_level(level, allow_none=True)
        values, errors = self.combined()
        mid = check_finite_result(values[0], "MID", regularisable=False)
        standard_error = check_finite_result(errors[0], "The standard error", regularisable=False)
        ci_low = ci_high = None
        if level is not None:
            quantile = two_sided_t_quantile(float(level), self.left_out.shape[0] - 1)
            ci_low, ci_high = mid - quantile * standard_error, mid + quantile * standard_error
        return MIDResult(
            mid,
            values[1],
            values[2],
            self.num_reference,
            self.num_candidates,
            bias_corrected=True,
            standard_error=standard_error,
            ci_low=ci_low,
            ci_high=ci_high,
            ci_level=None if level is None else float(level),
        )


_SHARED_NAMES = {"text": "texts", "image": "images", "both": "pairs"}


def _corrected(
    reference_packed: Tensor,
    candidate_packed: Tensor,
    image_dim: int,
    shared: Optional[str],
    fitted: Optional[tuple[GaussianReference, Tensor]] = None,
) -> Tensor:
    """The Gaussian-corrected ``[MID, I, distance]`` of one (sub)sample whose candidates share ``shared`` or nothing.

    The reference's own pairs need the mutual information only; other candidates the fit and the block traces.
    ``fitted``: the reference's fit (``eps = 0``) and the candidates' scatter about its mean, when the caller has them.
    """
    reference = reference_from_moments(reference_packed, image_dim) if fitted is None else fitted[0]
    if shared == "both":
        bias = wishart.mutual_information_bias(image_dim, reference.text_dim, reference.count)
        mutual_info = reference.mutual_information - bias
        distance = torch.zeros_like(mutual_info)
    else:
        scatter = candidate_scatter(reference, candidate_packed) if fitted is None else fitted[1]
        traces = block_traces(reference, scatter)
        mutual_info, distance = wishart.corrected_terms(reference, candidate_packed, scatter, traces, shared=shared)
    return torch.stack([mutual_info + distance, mutual_info, distance])


def _shared_left_out(
    reference_full: Tensor,
    candidate_full: Tensor,
    reference_part: Tensor,
    candidate_part: Tensor,
    image_dim: int,
    shared: str,
) -> Tensor:
    """The corrected ``[MID, I, distance]`` without one group, for candidates that share ``shared`` rows.

    The subsets' covariances come straight from the full and group sums (:func:`leave_one_out_moments`) and go
    through :func:`shared_terms_from_covariances`: no packed state and no joint factorisation.
    """
    count = int(reference_full[0] - reference_part[0])
    num_candidates = int(candidate_full[0] - candidate_part[0])
    # Only the blocks that shared_terms_from_covariances reads: the reference's lower three, the candidates' new
    # block and its rows against the shared one (the candidates' shared block is the reference's).
    images, texts = slice(0, image_dim), slice(image_dim, None)
    reference_blocks = [(images, images), (texts, slice(None))]
    candidate_blocks = [(slice(None), images)] if shared == "text" else [(texts, slice(None))]
    mean, covariance = leave_one_out_moments(
        reference_full, reference_part, scale=1.0 / (count - 1), blocks=reference_blocks
    )
    candidate_mean, scatter = leave_one_out_moments(
        candidate_full, candidate_part, center=mean, scale=1.0 / (num_candidates - 1), blocks=candidate_blocks
    )
    mutual_info, distance = shared_terms_from_covariances(
        SampleMoments(mean, covariance, count),
        SampleMoments(candidate_mean, scatter, num_candidates),
        image_dim,
        shared,
    )
    return torch.stack([mutual_info + distance, mutual_info, distance])


def _check_group_states(reference_groups: Tensor, candidate_groups: Tensor) -> None:
    for name, value in (("reference_groups", reference_groups), ("candidate_groups", candidate_groups)):
        if not isinstance(value, Tensor) or value.dtype != torch.float64 or value.ndim != 2:
            raise TypeError(f"`{name}` must be a 2-D float64 tensor of group states (K, (D + 1)^2), got {value!r}.")
    if reference_groups.shape != candidate_groups.shape:
        raise ValueError(
            "`reference_groups` and `candidate_groups` must have the same shape (K, (D + 1)^2), got"
            f" {tuple(reference_groups.shape)} and {tuple(candidate_groups.shape)}."
        )


def _check_sizes(reference_counts: Tensor, candidate_counts: Tensor, joint_dim: int) -> None:
    total, total_candidates = float(reference_counts.sum()), float(candidate_counts.sum())
    smallest = int(total - float(reference_counts.max()))
    if smallest <= joint_dim + 2:
        raise ValueError(
            f"The jackknife needs more than Dx + Dy + 2 = {joint_dim + 2} reference pairs without each group; without"
            f" its largest group the reference has {smallest} of {int(total)}. Pass more reference pairs, more groups"
            " (`jackknife_groups`, each then holds fewer pairs), or use `bias_correction=True`."
        )
    if int(total_candidates - float(candidate_counts.max())) < 2:
        raise ValueError(
            "The jackknife needs at least 2 candidate pairs without each group; pass more candidate pairs or use"
            " `bias_correction=True`."
        )
    if int((reference_counts > 0).sum()) < 2:
        raise ValueError("The jackknife needs reference pairs in at least 2 groups; they all hashed to one.")


# Largest relative gap between the block moments of a reference group and of the candidate group that reuses its
# rows. The same rows summed in another order or batching differ by rounding (about 1e-13 here); different rows
# differ by their sampling noise, orders of magnitude above.
_SAME_GROUP_TOLERANCE = 1e-9


def _block_moments(packed: Tensor, block: slice) -> tuple[Tensor, Tensor]:
    """Mean and lower-triangular scatter (about the mean) of the coordinates ``block`` of a packed state."""
    fields = moments.unpack(packed)
    count = fields.count.clamp(min=1.0)
    shifted_sum = fields.shifted_sum[block]
    mean = fields.shift[block] + shifted_sum / count
    scatter = fields.shifted_outer_sum[block, block] - torch.outer(shifted_sum, shifted_sum / count)
    return mean, scatter.tril()


def _same_block_sums(reference: Tensor, candidate: Tensor, block: slice) -> bool:
    """Whether two packed states hold bitwise the same shift and sums on the coordinates ``block`` (then the same rows).

    A metric that accumulates paired rows copies the shared block
    (:func:`mid_metric.jackknife.grouping.accumulate_group_pairs_`), so this
    comparison, with no temporaries, usually settles the check.
    """
    first, second = moments.unpack(reference), moments.unpack(candidate)
    return (
        torch.equal(first.shift[block], second.shift[block])
        and torch.equal(first.shifted_sum[block], second.shifted_sum[block])
        and torch.equal(first.shifted_outer_sum[block, block], second.shifted_outer_sum[block, block])
    )


def _groups_share(reference_groups: Tensor, candidate_groups: Tensor, block: slice) -> bool:
    """Whether every candidate group holds the same ``block`` rows as the reference group of the same number."""
    if not torch.equal(reference_groups[:, 0], candidate_groups[:, 0]):
        return False
    for reference, candidate in zip(reference_groups, candidate_groups):
        if float(reference[0]) == 0.0 or _same_block_sums(reference, candidate, block):
            continue
        ref_mean, ref_scatter = _block_moments(reference, block)
        cand_mean, cand_scatter = _block_moments(candidate, block)
        scale = float(ref_scatter.diagonal().max())
        mean_scale = float(ref_mean.abs().max()) + math.sqrt(scale / float(reference[0]))
        if float((ref_mean - cand_mean).abs().max()) > _SAME_GROUP_TOLERANCE * mean_scale:
            return False
        if float((ref_scatter - cand_scatter).abs().max()) > _SAME_GROUP_TOLERANCE * scale:
            return False
    return True


def _check_groups_keep_sharing(
    reference_groups: Tensor, candidate_groups: Tensor, image_dim: int, shared: Optional[str]
) -> None:
    """Check that the leave-one-group-out subsets share what the whole sets share: then they share it too."""
    if shared is None:
        return
    if shared == "repaired":
        raise ValueError(
            "The candidates are the reference's images and texts paired differently; the jackknife cannot keep that"
            " pairing in its subsets. Use `bias_correction=True` for such candidates."
        )
    block = {"text": slice(image_dim, None), "image": slice(0, image_dim), "both": slice(None)}[shared]
    if not _groups_share(reference_groups, candidate_groups, block):
        key = "image" if shared == "image" else "text"
        raise ValueError(
            f"The candidates share the reference's {_SHARED_NAMES[shared]}, but not group by group: the rows were not"
            f" grouped by the shared modality, or the shared features differ in their last bits (features computed"
            f" twice). Group the rows by {key}, `jackknife_key='{key}'` (the `key` of row_groups), and pass the same"
            " feature tensors to the reference and the candidates."
        )


def jackknife_estimates(
    reference_groups: Tensor,
    candidate_groups: Tensor,
    image_dim: int,
    full_reference: Optional[GaussianReference] = None,
    merged: Optional[tuple[Tensor, Tensor]] = None,
) -> JackknifeEstimates:
    """Return the Gaussian-corrected MID terms of the full sample and of every leave-one-group-out sample.

    Group ``k`` is dropped from the reference and from the candidates at once. Groups without reference rows are
    never dropped (their candidates stay in every subset): the corrected estimator is unbiased in ``M`` given
    the reference, so its bias depends on the reference rows only. What the candidates share with the reference
    (:func:`mid_metric.wishart.shared_modality`) is detected once, on the full sets; when they share rows, every
    candidate group must then hold the shared rows of its reference group (checked on the groups' moments), so
    that every subset shares them too and gets the same formula.

    Args:
        reference_groups: ``(K, (D + 1)^2)`` packed moments of the reference rows by group.
        candidate_groups: ``(K, (D + 1)^2)`` packed moments of the candidate rows by group, from the same rule.
        image_dim: ``Dx``.
        full_reference: The fit (``eps = 0``) of ``merge_groups(reference_groups)``, when the caller has it (the
            metric's reference fit): it is used as it is instead of fitted again.
        merged: ``(merge_groups(reference_groups), merge_groups(candidate_groups))``, when the caller keeps them
            (the metric's stores cache them): used as they are instead of merged again.

    Returns:
        :class:`JackknifeEstimates`.

    Raises:
        TypeError: If a state is not a 2-D float64 tensor.
        ValueError: If the shapes differ; a subset has too few reference (``<= Dx + Dy + 2``) or candidate
            (``< 2``) pairs; a covariance is not positive definite; or candidates that share the reference's rows
            were not grouped by the shared modality (or re-pair the reference's images and texts).
    """
    _check_group_states(reference_groups, candidate_groups)
    joint_dim = moments.dim_from_packed_size(reference_groups.shape[1])
    reference_counts, candidate_counts = reference_groups[:, 0], candidate_groups[:, 0]
    _check_sizes(reference_counts, candidate_counts, joint_dim)
    if merged is None:
        merged = (merge_groups(reference_groups), merge_groups(candidate_groups))
    reference_full, candidate_full = merged
    # What the candidates share is detected once, on the full sets, from the full sample's fit and scatter.
    if full_reference is None:
        full_reference = reference_from_moments(reference_full, image_dim)
    full_scatter = candidate_scatter(full_reference, candidate_full)
    num_candidates = int(moments.unpack(candidate_full).count)
    shared, traces = wishart.sharing_and_traces(full_reference, full_scatter, num_candidates)
    _check_groups_keep_sharing(reference_groups, candidate_groups, image_dim, shared)
    if shared in ("text", "image") and traces is not None:  # the test's whitened scatter gave the full traces
        terms = wishart.corrected_terms(full_reference, candidate_full, full_scatter, traces, shared=shared)
        full = torch.stack([terms[0] + terms[1], terms[0], terms[1]])
    else:
        full = _corrected(reference_full, candidate_full, image_dim, shared, (full_reference, full_scatter))
    kept = [k for k in range(reference_groups.shape[0]) if float(reference_counts[k]) > 0]

    def fit_without(k: int) -> Tensor:
        if shared in ("text", "image"):  # straight to the subsets' covariances, without their packed states
            return _shared_left_out(
                reference_full, candidate_full, reference_groups[k], candidate_groups[k], image_dim, shared
            )
        reference_rest = leave_one_out(reference_full, reference_groups[k])
        candidate_rest = leave_one_out(candidate_full, candidate_groups[k])
        return _corrected(reference_rest, candidate_rest, image_dim, shared)

    left_out = left_out_fits(fit_without, kept, reference_full.device)
    num_reference = int(moments.unpack(reference_full).count)
    fractions = reference_counts[kept] / num_reference
    return JackknifeEstimates(full, torch.stack(left_out), fractions, num_reference, num_candidates, shared)


def jackknife_divergence(
    reference_groups: Tensor, candidate_groups: Tensor, image_dim: int, level: Optional[float] = 0.95
) -> MIDResult:
    """Jackknifed, bias-corrected MID with a distribution-free standard error and confidence interval.

    The interval is ``MID +/- t_{G-1} * se`` with Student's quantile for ``G - 1`` degrees of freedom (``G`` the
    number of groups that hold reference rows): the jackknife variance has about ``G - 1`` of them.

    Args:
        reference_groups: ``(K, (D + 1)^2)`` packed moments of the reference rows by group (:func:`row_groups`).
        candidate_groups: ``(K, (D + 1)^2)`` packed moments of the candidate rows by group.
        image_dim: ``Dx``.
        level: Coverage of the interval in ``(0, 1)``; ``None`` leaves the interval out (the standard error stays).

    Returns:
        :class:`~mid_metric.result.MIDResult` with the jackknifed MID, ``I`` and distance term
        (``bias_corrected=True``), ``standard_error`` and, unless ``level`` is ``None``, the interval.

    Raises:
        ValueError: As :func:`jackknife_estimates`; if ``level`` is not in ``(0, 1)``; or if the result is not
            finite.

    Example:
        >>> from mid_metric.jackknife import group_moments
        >>> g = torch.Generator().manual_seed(0)
        >>> x = torch.randn(400, 2, dtype=torch.float64, generator=g)
        >>> y = 0.6 * x + 0.8 * torch.randn(400, 2, dtype=torch.float64, generator=g)
        >>> x0 = 0.6 * y + 0.8 * torch.randn(400, 2, dtype=torch.float64, generator=g)  # images for the captions
        >>> result = jackknife_divergence(group_moments(moments.joint_rows(x, y), 2, 10),
        ...                               group_moments(moments.joint_rows(x0, y), 2, 10), image_dim=2)
        >>> bool(result.ci_low < result.mid < result.ci_high), result.num_reference
        (True, 400)
    """
    check_level(level, allow_none=True)
    return jackknife_estimates(reference_groups, candidate_groups, image_dim).result(level)


def jackknife_mutual_information(reference_groups: Tensor, image_dim: int) -> tuple[Tensor, Tensor]:
    """Jackknifed, bias-corrected Gaussian mutual information ``I`` of the reference and its standard error.

    Args:
        reference_groups: ``(K, (D + 1)^2)`` packed moments of the reference rows by group.
        image_dim: ``Dx``.

    Returns:
        ``(I, se)``, 0-dim float64 tensors.

    Raises:
        ValueError: If a leave-one-group-out reference has ``Dx + Dy + 2`` pairs or fewer.

    Example:
        >>> from mid_metric.jackknife import group_moments
        >>> z = torch.randn(300, 4, dtype=torch.float64)
        >>> mi, se = jackknife_mutual_information(group_moments(z, 2, 10), image_dim=2)
        >>> bool(se > 0)
        True
    """
    _check_group_states(reference_groups, reference_groups)
    joint_dim = moments.dim_from_packed_size(reference_groups.shape[1])
    counts = reference_groups[:, 0]
    _check_sizes(counts, counts, joint_dim)
    full_state = merge_groups(reference_groups)

    def corrected_mi(packed: Tensor) -> Tensor:
        reference = reference_from_moments(packed, image_dim)
        bias = wishart.mutual_information_bias(image_dim, reference.text_dim, reference.count)
        return reference.mutual_information - bias

    kept = [k for k in range(reference_groups.shape[0]) if float(counts[k]) > 0]
    left_out = torch.stack(
        left_out_fits(lambda k: corrected_mi(leave_one_out(full_state, reference_groups[k])), kept, full_state.device)
    )
    fractions = counts[kept] / counts.sum()
    estimate, error = jackknife_combine(corrected_mi(full_state), left_out, fractions)
    return check_finite_result(estimate, "The mutual information", regularisable=False), error
