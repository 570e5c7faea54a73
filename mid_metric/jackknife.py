r"""Grouped jackknife of the bias-corrected MID: an estimate that does not drift with ``N`` for non-Gaussian features.

The Gaussian correction (:mod:`mid_metric.wishart`) is exact when the reference is Gaussian. On other features a
bias of order ``1/N`` remains (heavier tails make the sample covariance noisier than a Wishart's). The
delete-a-group jackknife removes it without a model of the features:

* every row gets one of ``K`` groups from a hash of its content (:func:`row_groups`), so the assignment depends on
  neither batching, order nor the number of processes; each group keeps its own packed moments
  (:func:`accumulate_groups_`), and their merge is the full state;
* the Gaussian-corrected MID ``t`` of the full sample and ``t_k`` of each leave-one-group-out sample (group ``k``
  dropped from the reference *and* the candidates) are combined with the reference fractions ``f_k = n_k / N``
  (:func:`jackknife_combine`): ``t_J = G t - sum_k (1 - f_k) t_k``, with a distribution-free standard error from the
  spread of the pseudo-values ``h_k t - (h_k - 1) t_k``, ``h_k = 1 / f_k``.

``docs/bias_correction.md`` (section 5) derives it and gives the measured bias, spread and coverage.
"""

from __future__ import annotations

import functools
import math
from collections.abc import MutableSequence
from typing import NamedTuple, Optional

import torch
from torch import Tensor

from mid_metric import moments, wishart
from mid_metric._checks import check_finite_result, check_level
from mid_metric.gaussian import block_traces, candidate_scatter, reference_from_moments
from mid_metric.result import MIDResult

__all__ = [
    "GROUP_KEYS",
    "DEFAULT_GROUPS",
    "check_num_groups",
    "check_key",
    "row_hashes",
    "row_groups",
    "empty_group_moments",
    "accumulate_groups_",
    "group_moments",
    "merge_groups",
    "reduce_group_states",
    "leave_one_out",
    "jackknife_combine",
    "two_sided_t_quantile",
    "JackknifeEstimates",
    "jackknife_estimates",
    "jackknife_divergence",
    "jackknife_mutual_information",
]

#: Which part of a row ``z = [x; y]`` decides its group: the text (default), the image, or both.
GROUP_KEYS = ("text", "image", "joint")

#: Default number of groups ``K`` (docs/bias_correction.md, section 5, has the evidence for it).
DEFAULT_GROUPS = 10

# -------------------------------------------------------------------------------------------- row hashing
# The hash works on the top 32 bits of each float64 value (sign, exponent and 20 mantissa bits), with products below
# 2^63: integer arithmetic is exact and identical on every device. Modulus: the Mersenne prime p = 2^31 - 1, so a
# product reduces modulo p with a mask, a shift and an add (x = (x & p) + (x >> 31) mod p), without a division.
_PRIME = 2**31 - 1
_MASK32 = 0xFFFFFFFF


def _splitmix64(state: int) -> tuple[int, int]:
    state = (state + 0x9E3779B97F4A7C15) & 0xFFFFFFFFFFFFFFFF
    mixed = state
    mixed = ((mixed ^ (mixed >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
    mixed = ((mixed ^ (mixed >> 27)) * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
    return state, mixed ^ (mixed >> 31)


@functools.lru_cache(maxsize=16)
def _coefficients_list(dim: int) -> tuple[int, ...]:
    """``dim`` fixed pseudo-random multipliers in ``[1, p)``, from a seeded splitmix64 (device-independent)."""
    state, out = 20240515, []
    for _ in range(dim):
        state, value = _splitmix64(state)
        out.append(1 + value % (_PRIME - 1))
    return tuple(out)


@functools.lru_cache(maxsize=16)
def _coefficients(dim: int, device: torch.device) -> Tensor:
    return torch.tensor(_coefficients_list(dim), dtype=torch.int64, device=device)


def _mix(h: Tensor) -> Tensor:
    """A bijective scramble of ``[0, p)`` (xor-shifts and multiplications modulo ``p``), so nearby sums spread out."""
    for multiplier in (1_103_515_245, 1_597_334_677):
        h = h ^ (h >> 15)  # stays in [0, 2^31)
        h = (h * multiplier) % _PRIME  # product < 2^62
    return h


def row_hashes(rows: Tensor) -> Tensor:
    """Return a hash in ``[0, 2^31 - 1)`` of each row's values, the same on every device and for every batching.

    The rows are cast to float64 (exact for float16, bfloat16 and float32, so a row hashes the same whatever its
    dtype) and ``-0.0`` counts as ``0.0``. With ``u_j`` the top 32 bits of value ``j`` (sign, exponent and 20
    mantissa bits, about 6 significant digits), ``h = mix(sum_j (a_j u_j mod p)) mod p`` with fixed multipliers
    ``a_j`` and ``p = 2^31 - 1``: integer arithmetic without overflow, so CPU and CUDA agree bit for bit. Rows that
    agree to 6 digits in every coordinate share a hash, which is harmless for a grouping.

    Args:
        rows: ``(B, D)`` floating tensor.

    Returns:
        ``(B,)`` int64 tensor on the rows' device.

    Example:
        >>> rows = torch.tensor([[0.5, -1.0], [0.0, 2.0]])
        >>> torch.equal(row_hashes(rows), row_hashes(rows.double()[[1, 0]]).flip(0))  # dtype and order free
        True
        >>> torch.equal(row_hashes(torch.tensor([[-0.0, 2.0]])), row_hashes(torch.tensor([[0.0, 2.0]])))
        True
    """
    values = (rows.to(torch.float64) + 0.0).contiguous()  # a new tensor; -0.0 + 0.0 is +0.0
    top = values.view(torch.int64) >> 32  # arithmetic shift: in [-2^31, 2^31)
    top.bitwise_and_(_MASK32).mul_(_coefficients(rows.shape[1], top.device))  # [0, 2^32) x [1, 2^31): < 2^63
    carry = top >> 31
    terms = top.bitwise_and_(_PRIME).add_(carry)  # congruent to the product mod p, below 2^33
    return _mix(terms.sum(dim=1) % _PRIME)


def check_num_groups(num_groups: object, name: str = "num_groups") -> int:
    """Validate a number of jackknife groups (an int from 2 to 1000) and return it; errors name ``name``.

    Example:
        >>> check_num_groups(10)
        10
    """
    if isinstance(num_groups, bool) or not isinstance(num_groups, int):
        raise TypeError(f"`{name}` must be an int, got {num_groups!r}.")
    if not 2 <= num_groups <= 1000:
        raise ValueError(f"`{name}` must be between 2 and 1000, got {num_groups}.")
    return num_groups


def check_key(key: object, name: str = "key") -> str:
    """Validate a group key (one of :data:`GROUP_KEYS`) and return it; errors name ``name``.

    Example:
        >>> check_key("image")
        'image'
    """
    if not isinstance(key, str) or key not in GROUP_KEYS:
        raise ValueError(f"`{name}` must be one of {', '.join(map(repr, GROUP_KEYS))}, got {key!r}.")
    return key


def row_groups(rows: Tensor, image_dim: int, num_groups: int, key: str = "text") -> Tensor:
    """Return the jackknife group of each joint row ``z = [x; y]``: a hash of its text, image or both, mod ``K``.

    The group depends on the row's values only, so any batching, order or split across processes gives each row
    the same group. Hash the modality that candidates share with the reference: ``"text"`` for text-to-image (the
    generated images are scored with the reference's own captions) and ``"image"`` for captioning. A reference row
    and the candidate row that reuses its caption (or image) then always fall in the same group, so every
    leave-one-group-out subset of the candidates still shares the rows of its reference subset. Rows with the same
    key (one image with five captions, one prompt with several images) share a group, as a grouped jackknife allows.

    Args:
        rows: Joint rows ``(B, Dx + Dy)`` (:func:`mid_metric.moments.joint_rows`).
        image_dim: ``Dx``: the leading ``Dx`` columns are image features.
        num_groups: ``K``, between 2 and 1000.
        key: ``"text"``, ``"image"`` or ``"joint"``: what is hashed.

    Returns:
        ``(B,)`` int64 tensor of groups in ``[0, K)``.

    Raises:
        TypeError: If ``num_groups`` is not an int.
        ValueError: If ``num_groups`` is out of range or ``key`` is unknown.

    Example:
        >>> x, y = torch.randn(6, 2), torch.randn(6, 3)
        >>> reference = row_groups(moments.joint_rows(x, y), 2, num_groups=4)
        >>> generated = row_groups(moments.joint_rows(torch.randn(6, 2), y), 2, num_groups=4)  # same captions
        >>> torch.equal(reference, generated)
        True
    """
    num_groups = check_num_groups(num_groups)
    key = check_key(key)
    part = {"text": rows[:, image_dim:], "image": rows[:, :image_dim], "joint": rows}[key]
    return row_hashes(part) % num_groups


# --------------------------------------------------------------------------------------------- group states
def empty_group_moments(num_groups: int, dim: int, device: torch.device | str | None = None) -> Tensor:
    """Return ``K`` empty packed moments states, shape ``(K, (D + 1)^2)`` float64.

    Example:
        >>> empty_group_moments(3, 2).shape
        torch.Size([3, 9])
    """
    return torch.zeros(check_num_groups(num_groups), moments.packed_size(dim), dtype=torch.float64, device=device)


def accumulate_groups_(
    grouped: Tensor, rows: Tensor, groups: Tensor, batches_seen: Optional[MutableSequence[int]] = None
) -> Tensor:
    """Add a batch of joint rows to the packed moments of their groups, in place.

    Rows are sorted by group and each group's slice goes through :func:`mid_metric.moments.accumulate_batch_` (or
    :func:`~mid_metric.moments.accumulate_` when ``batches_seen`` is ``None``), so the flops are those of one
    update of the whole batch. Reading the group sizes costs one host synchronisation per batch on CUDA.

    Args:
        grouped: ``(K, (D + 1)^2)`` float64 states, contiguous.
        rows: ``(B, D)`` joint rows.
        groups: ``(B,)`` groups from :func:`row_groups`.
        batches_seen: Per-group batch counters for the recentring schedule, incremented in place for every group
            this batch reaches (the metric keeps them on the host).

    Returns:
        ``grouped``, updated.

    Example:
        >>> z = torch.randn(20, 3, dtype=torch.float64)
        >>> groups = row_groups(z, 1, num_groups=4)
        >>> state = accumulate_groups_(empty_group_moments(4, 3), z, groups)
        >>> torch.allclose(merge_groups(state)[0:4], moments.from_features(z)[0:4])  # count and mean
        True
    """
    if rows.shape[0] == 0:
        return grouped
    num_groups = grouped.shape[0]
    order = torch.argsort(groups, stable=True)
    sizes = torch.bincount(groups, minlength=num_groups).tolist()
    if len(sizes) != num_groups:
        raise ValueError(f"`groups` must lie in [0, {num_groups}), got a group {len(sizes) - 1}.")
    for group, part in enumerate(torch.split(rows[order], sizes)):
        if part.shape[0] == 0:
            continue
        if batches_seen is None:
            moments.accumulate_(grouped[group], part)
        else:
            batches_seen[group] += 1
            moments.accumulate_batch_(grouped[group], part, batches_seen[group])
    return grouped


def group_moments(rows: Tensor, image_dim: int, num_groups: int, key: str = "text") -> Tensor:
    """Return the ``(K, (D + 1)^2)`` packed moments of a whole matrix of joint rows, one state per group.

    Example:
        >>> z = torch.randn(30, 4, dtype=torch.float64)
        >>> group_moments(z, 2, num_groups=5)[:, 0].sum().item()  # counts add up to N
        30.0
    """
    grouped = empty_group_moments(num_groups, rows.shape[1], device=rows.device)
    return accumulate_groups_(grouped, rows.to(torch.float64), row_groups(rows, image_dim, num_groups, key))


def merge_groups(grouped: Tensor) -> Tensor:
    """Return the full packed state: the exact merge (:func:`mid_metric.moments.merge`) of the ``K`` group states.

    Example:
        >>> z = torch.randn(30, 2, dtype=torch.float64)
        >>> full = merge_groups(group_moments(z, 1, num_groups=3))
        >>> all(torch.allclose(a, b) for a, b in zip(moments.mean_and_scatter(full),
        ...                                          moments.mean_and_scatter(moments.from_features(z))))
        True
    """
    return moments.merge(grouped).clone() if grouped.shape[0] == 1 else moments.merge(grouped)


def reduce_group_states(stacked: Tensor) -> Tensor:
    """Merge group states of several processes or metric copies, stacked ``(W, K, P)``, group by group: ``(K, P)``.

    This is the ``dist_reduce_fx`` shape of a ``(K, P)`` state. A ``(K, P)`` input is returned as it is.

    Example:
        >>> z = torch.randn(40, 2, dtype=torch.float64)
        >>> parts = torch.stack([group_moments(z[:15], 1, 4), group_moments(z[15:], 1, 4)])
        >>> torch.allclose(reduce_group_states(parts)[:, 0], group_moments(z, 1, 4)[:, 0])  # counts per group
        True
    """
    if stacked.ndim == 2:
        return stacked
    return torch.stack([moments.merge(stacked[:, group]) for group in range(stacked.shape[1])])


def leave_one_out(full: Tensor, part: Tensor) -> Tensor:
    """Return the packed moments of the rows of ``full`` that are not in ``part`` (one group's state).

    ``part`` is moved to ``full``'s shift (:func:`mid_metric.moments.moved_sums`) and subtracted. The result keeps
    ``(K - 1) / K`` of the rows, so the subtraction loses no more than rounding: its error is ``eps`` times the
    full sums, as for the sums themselves.

    Args:
        full: The full packed state (:func:`merge_groups`).
        part: One group's packed state.

    Example:
        >>> a, b = torch.randn(7, 2, dtype=torch.float64), torch.randn(5, 2, dtype=torch.float64)
        >>> full = moments.merge(torch.stack([moments.from_features(a), moments.from_features(b)]))
        >>> rest = leave_one_out(full, moments.from_features(b))
        >>> all(torch.allclose(r, w) for r, w in zip(moments.mean_and_scatter(rest),
        ...                                          moments.mean_and_scatter(moments.from_features(a))))
        True
    """
    fields = moments.unpack(full)
    part_fields = moments.unpack(part)
    moved_sum, moved_outer = moments.moved_sums(*part_fields, fields.shift)
    rest = torch.empty_like(full)
    rest_fields = moments.unpack(rest)
    rest_fields.count.copy_(fields.count - part_fields.count)
    rest_fields.shift.copy_(fields.shift)
    torch.sub(fields.shifted_sum, moved_sum, out=rest_fields.shifted_sum)
    torch.sub(fields.shifted_outer_sum, moved_outer, out=rest_fields.shifted_outer_sum)
    return rest


# ------------------------------------------------------------------------------------------ the combination
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


def _student_t_central(t: float, dof: int) -> float:
    """``P(|T| < t)`` for Student's t with an integer number of degrees of freedom (Abramowitz-Stegun 26.7.3-4)."""
    theta = math.atan(t / math.sqrt(dof))
    sin, cos2 = math.sin(theta), math.cos(theta) ** 2
    if dof % 2 == 0:
        term, total = 1.0, 1.0
        for i in range(1, dof // 2):
            term *= cos2 * (2 * i - 1) / (2 * i)
            total += term
        return sin * total
    if dof == 1:
        return 2.0 * theta / math.pi
    term = math.cos(theta)
    total = term
    for i in range(1, (dof - 1) // 2):
        term *= cos2 * (2 * i) / (2 * i + 1)
        total += term
    return 2.0 / math.pi * (theta + sin * total)


def two_sided_t_quantile(level: float, dof: int) -> float:
    """Return ``t`` with ``P(|T| < t) = level`` for Student's t with ``dof`` degrees of freedom (bisection).

    Raises:
        ValueError: If ``level`` is not in ``(0, 1)`` or ``dof`` is not a positive int.

    Example:
        >>> round(two_sided_t_quantile(0.95, 9), 4)  # t_{0.975} with 9 degrees of freedom
        2.2622
        >>> round(two_sided_t_quantile(0.95, 10**6), 3)  # the normal quantile
        1.96
    """
    if not 0.0 < level < 1.0:
        raise ValueError(f"`level` must be in (0, 1), got {level!r}.")
    if isinstance(dof, bool) or not isinstance(dof, int) or dof < 1:
        raise ValueError(f"`dof` must be a positive int, got {dof!r}.")
    if dof > 2000:  # Cornish-Fisher to O(1/dof^2) is exact to 1e-9 here, and the series would be long
        z = float(torch.special.ndtri(torch.tensor((1.0 + level) / 2.0, dtype=torch.float64)))
        return z + (z**3 + z) / (4 * dof) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * dof**2)
    low, high = 0.0, 1.0
    while _student_t_central(high, dof) < level:
        low, high = high, 2.0 * high
    for _ in range(200):
        middle = 0.5 * (low + high)
        if _student_t_central(middle, dof) < level:
            low = middle
        else:
            high = middle
        if high - low <= 1e-13 * high:
            break
    return 0.5 * (low + high)


# -------------------------------------------------------------------------------------------------- MID
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
        mid = check_finite_result(values[0], "MID")
        standard_error = check_finite_result(errors[0], "The standard error")
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


_DETECT = "detect"


def _corrected(
    reference_packed: Tensor, candidate_packed: Tensor, image_dim: int, shared: Optional[str] = _DETECT
) -> tuple[Tensor, Optional[str]]:
    """The Gaussian-corrected ``[MID, I, distance]`` of one (sub)sample, and what its candidates share."""
    reference = reference_from_moments(reference_packed, image_dim)
    scatter = candidate_scatter(reference, candidate_packed)
    traces = block_traces(reference, scatter)
    if shared == _DETECT:
        shared = wishart.shared_modality(reference, scatter, int(moments.unpack(candidate_packed).count))
    mutual_info, distance = wishart.corrected_terms(reference, candidate_packed, scatter, traces, shared=shared)
    return torch.stack([mutual_info + distance, mutual_info, distance]), shared


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
            f" its largest group the reference has {smallest} of {int(total)}. Pass more reference pairs, fewer"
            " `num_groups`, or use `bias_correction=True`."
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


def _groups_share(reference_groups: Tensor, candidate_groups: Tensor, block: slice) -> bool:
    """Whether every candidate group holds the same ``block`` rows as the reference group of the same number."""
    if not torch.equal(reference_groups[:, 0], candidate_groups[:, 0]):
        return False
    for reference, candidate in zip(reference_groups, candidate_groups):
        if float(reference[0]) == 0.0:
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


def jackknife_estimates(reference_groups: Tensor, candidate_groups: Tensor, image_dim: int) -> JackknifeEstimates:
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
    reference_full, candidate_full = merge_groups(reference_groups), merge_groups(candidate_groups)
    full, shared = _corrected(reference_full, candidate_full, image_dim)
    _check_groups_keep_sharing(reference_groups, candidate_groups, image_dim, shared)
    kept = [k for k in range(reference_groups.shape[0]) if float(reference_counts[k]) > 0]
    left_out = []
    for k in kept:
        reference_rest = leave_one_out(reference_full, reference_groups[k])
        candidate_rest = leave_one_out(candidate_full, candidate_groups[k])
        left_out.append(_corrected(reference_rest, candidate_rest, image_dim, shared)[0])
    num_reference = int(moments.unpack(reference_full).count)
    fractions = reference_counts[kept] / num_reference
    num_candidates = int(moments.unpack(candidate_full).count)
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
    left_out = torch.stack([corrected_mi(leave_one_out(full_state, reference_groups[k])) for k in kept])
    fractions = counts[kept] / counts.sum()
    estimate, error = jackknife_combine(corrected_mi(full_state), left_out, fractions)
    return check_finite_result(estimate, "The mutual information"), error
