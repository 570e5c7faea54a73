"""Jackknife groups: which group a row falls in (a hash of its content), and the packed moments of each group.

Every row gets one of ``K`` groups from a hash of its text, image or both (:func:`row_groups`), so the assignment
depends on neither batching, order nor the number of processes. Each group keeps its own packed moments
(:mod:`mid_metric.moments`), updated with :func:`accumulate_groups_`; their exact merge (:func:`merge_groups`) is
the moments of all the rows, and :func:`leave_one_out` gives those of all the rows but one group's.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator, MutableSequence, Sequence
from typing import Optional

import numpy as np
import torch
from torch import Tensor

from mid_metric import moments
from mid_metric.batch_passes import host_array, take_rows

__all__ = [
    "GROUP_KEYS",
    "DEFAULT_GROUPS",
    "check_num_groups",
    "check_key",
    "row_hashes",
    "row_groups",
    "empty_group_moments",
    "accumulate_groups_",
    "accumulate_group_pairs_",
    "group_moments",
    "merge_groups",
    "reduce_group_states",
    "leave_one_out",
    "leave_one_out_moments",
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


#: Rows hashed at a time on the host: the work buffer (256 x 768 x 8 bytes) stays in the cache for all its passes.
_HOST_HASH_ROWS = 256


def _hash_sums_on_host(array: np.ndarray) -> np.ndarray:
    """``(sum_j (a_j u_j mod p)) mod p`` of each row, as :func:`row_hashes` computes it, on the calling thread.

    The same integer arithmetic as the torch path, in numpy, a block of rows at a time in one reused buffer: the
    sums are bitwise the same, without a parallel region per pass (see :mod:`mid_metric.batch_passes`).
    """
    count, dim = array.shape
    coefficients = np.asarray(_coefficients_list(dim), dtype=np.int64)
    sums = np.empty(count, dtype=np.int64)
    buffer = np.empty((min(count, _HOST_HASH_ROWS), dim), dtype=np.float64)
    carry = np.empty_like(buffer, dtype=np.int64)
    for start in range(0, count, _HOST_HASH_ROWS):
        block = array[start : start + _HOST_HASH_ROWS]
        values, top, high = buffer[: len(block)], buffer[: len(block)].view(np.int64), carry[: len(block)]
        np.add(block, 0.0, out=values, dtype=np.float64)  # an exact cast; -0.0 + 0.0 is +0.0
        np.right_shift(top, 32, out=top)  # arithmetic shift: in [-2^31, 2^31)
        np.bitwise_and(top, _MASK32, out=top)
        np.multiply(top, coefficients, out=top)  # [0, 2^32) x [1, 2^31): < 2^63
        np.right_shift(top, 31, out=high)
        np.bitwise_and(top, _PRIME, out=top)
        np.add(top, high, out=top)  # congruent to the product mod p, below 2^33
        np.sum(top, axis=1, out=sums[start : start + len(block)])
    return sums % _PRIME


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
    host = host_array(rows)
    if host is not None:
        return _mix(torch.from_numpy(_hash_sums_on_host(host)))
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


def _sorted_by_group(groups: Tensor, num_groups: int) -> tuple[Tensor, list[int]]:
    """The indices that sort rows by their ``groups`` (stably) and the size of each group (one host sync on CUDA)."""
    sizes = torch.bincount(groups, minlength=num_groups).tolist()
    if len(sizes) != num_groups:
        raise ValueError(f"`groups` must lie in [0, {num_groups}), got a group {len(sizes) - 1}.")
    return torch.argsort(groups, stable=True), sizes


def _group_parts(rows: Tensor, order: Tensor, sizes: list[int]) -> Iterator[Tensor]:
    """Each group's rows in turn, gathered into one buffer of the largest group's size that every group reuses.

    A part is valid until the next is taken (the caller accumulates it, centring it in place, first). Gathering a
    group at a time keeps the copy within a buffer of about ``B / K`` rows, instead of a sorted copy of the batch.
    """
    buffer = torch.empty(max(sizes), rows.shape[1], dtype=rows.dtype, device=rows.device)
    start = 0
    for size in sizes:
        yield take_rows(rows, order[start : start + size], out=buffer)
        start += size


def accumulate_groups_(
    grouped: Tensor,
    rows: Tensor,
    groups: Tensor,
    batches_seen: Optional[MutableSequence[int]] = None,
    split: int = 0,
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
        split: The ``split`` of :func:`mid_metric.moments.accumulate_` (the metric passes ``image_dim``).

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
    order, sizes = _sorted_by_group(groups, grouped.shape[0])
    for group, part in enumerate(_group_parts(rows, order, sizes)):
        if part.shape[0] == 0:
            continue
        workspace = part if part.dtype == torch.float64 else None  # (a gathered copy: centred in place)
        if batches_seen is None:
            moments.accumulate_(grouped[group], part, split, workspace=workspace)
        else:
            batches_seen[group] += 1
            moments.accumulate_batch_(grouped[group], part, batches_seen[group], split, workspace=workspace)
    return grouped


def accumulate_group_pairs_(
    reference: Tensor,
    candidate: Tensor,
    reference_rows: Tensor,
    candidate_rows: Tensor,
    groups: Tensor,
    batches_seen: tuple[MutableSequence[int], MutableSequence[int]],
    split: int,
) -> None:
    """Add one batch to the group states of two sets whose rows share their trailing columns ``[split:]``, in place.

    This is :func:`accumulate_groups_` on each set, group by group through
    :func:`mid_metric.moments.accumulate_pairs_`, which copies the candidate's ``[split:, split:]`` block from the
    reference's instead of computing it again. ``groups`` must come from the shared columns (``key="text"``), so a
    reference row and the candidate row that shares its columns fall in the same group; then each pair of group
    states has seen the same trailing columns in the same batches, and the result is bitwise that of separate calls.

    Args:
        reference: ``(K, (D + 1)^2)`` group states of the reference.
        candidate: ``(K, (D + 1)^2)`` group states of the candidates.
        reference_rows: ``(B, D)`` joint rows.
        candidate_rows: ``(B, D)`` joint rows whose columns ``[split:]`` are ``reference_rows``'.
        groups: ``(B,)`` groups of the rows, from their shared columns.
        batches_seen: The per-group batch counters of the reference and of the candidates (equal), incremented in
            place.
        split: The first shared column (``image_dim``).

    Example:
        >>> x, x_hat, y = torch.randn(30, 2), torch.randn(30, 2), torch.randn(30, 1)
        >>> ref, cand = moments.joint_rows(x, y), moments.joint_rows(x_hat, y)
        >>> groups = row_groups(ref, 2, num_groups=3)
        >>> states = empty_group_moments(3, 3), empty_group_moments(3, 3)
        >>> accumulate_group_pairs_(*states, ref, cand, groups, ([0] * 3, [0] * 3), split=2)
        >>> torch.equal(states[1], accumulate_groups_(empty_group_moments(3, 3), cand, groups, [0] * 3, split=2))
        True
    """
    if reference_rows.shape[0] == 0:
        return
    order, sizes = _sorted_by_group(groups, reference.shape[0])
    parts = zip(_group_parts(reference_rows, order, sizes), _group_parts(candidate_rows, order, sizes))
    for group, (reference_part, candidate_part) in enumerate(parts):
        if reference_part.shape[0] == 0:
            continue
        for counters in batches_seen:
            counters[group] += 1
        number = batches_seen[0][group]
        workspaces = tuple(part if part.dtype == torch.float64 else None for part in (reference_part, candidate_part))
        moments.accumulate_pairs_(
            reference[group], candidate[group], reference_part, candidate_part, number, split, workspaces
        )


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
    """Return the full packed state: the exact merge of the ``K`` group states.

    As :func:`mid_metric.moments.merge`, every group is moved to the pooled mean before the sums are added: with
    ``d_k`` the group's shift less the pooled mean and ``w_k = S1_k + n_k d_k / 2``, the pooled ``S2`` is
    ``sum_k S2_k + D W^T + W D^T`` (``D``, ``W`` the ``D x K`` matrices of the ``d_k`` and ``w_k``): one reduction
    over the groups and one product of inner dimension ``2 K``, with no ``D x D`` temporary per group.

    Example:
        >>> z = torch.randn(30, 2, dtype=torch.float64)
        >>> full = merge_groups(group_moments(z, 1, num_groups=3))
        >>> all(torch.allclose(a, b) for a, b in zip(moments.mean_and_scatter(full),
        ...                                          moments.mean_and_scatter(moments.from_features(z))))
        True
    """
    if grouped.shape[0] == 1:
        return grouped[0].clone()
    dim = moments.dim_from_packed_size(grouped.shape[1])
    counts = grouped[:, :1]
    shifts, sums = grouped[:, 1 : 1 + dim], grouped[:, 1 + dim : 1 + 2 * dim]
    total = counts.sum()
    pooled_mean = (counts * shifts + sums).sum(dim=0) / total.clamp(min=1.0)
    offsets = shifts - pooled_mean
    weighted = sums + 0.5 * counts * offsets
    merged = torch.empty_like(grouped[0])
    fields = moments.unpack(merged)
    fields.count.copy_(total)
    fields.shift.copy_(pooled_mean)
    torch.sum(sums + counts * offsets, dim=0, out=fields.shifted_sum)
    outer_sum = merged[1 + 2 * dim :]
    torch.sum(grouped[:, 1 + 2 * dim :], dim=0, out=outer_sum)
    outer_sum.view(dim, dim).addmm_(torch.cat([offsets, weighted]).mT, torch.cat([weighted, offsets]))
    return merged


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

    ``part`` is moved to ``full``'s shift (:func:`mid_metric.moments.moved_sums`) and subtracted, on the lower
    triangle of ``S2`` only (the upper one is stale, as :mod:`mid_metric.moments` allows). The result keeps
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
    # The part about the full shift is S2_p + d w^T + w d^T (moments.moved_sums), subtracted on the lower triangle
    # only (the only meaningful one): one pass for S2 - S2_p, then two rank-1 updates over half the matrix.
    offset = part_fields.shift - fields.shift
    weighted = part_fields.shifted_sum + 0.5 * part_fields.count * offset
    rest = torch.empty_like(full)
    rest_fields = moments.unpack(rest)
    rest_fields.count.copy_(fields.count - part_fields.count)
    rest_fields.shift.copy_(fields.shift)
    torch.sub(fields.shifted_sum, part_fields.shifted_sum + part_fields.count * offset, out=rest_fields.shifted_sum)
    torch.sub(fields.shifted_outer_sum, part_fields.shifted_outer_sum, out=rest_fields.shifted_outer_sum)
    moments.subtract_symmetric_rank2_lower_(rest_fields.shifted_outer_sum, offset, weighted)
    return rest


def leave_one_out_moments(
    full: Tensor,
    part: Tensor,
    center: Optional[Tensor] = None,
    scale: float = 1.0,
    blocks: Optional[Sequence[tuple[slice, slice]]] = None,
) -> tuple[Tensor, Tensor]:
    """Return the mean and the scaled scatter of the rows of ``full`` that are not in ``part``, lower triangle only.

    This is :func:`mid_metric.moments.mean_and_scatter` of :func:`leave_one_out` (about the rows' own mean, or
    ``center``), in two passes over the ``D x D`` matrix instead of five: with ``c`` the full shift,
    ``d = shift_part - c``, ``w = S1_part + n_part d / 2``, the rest's sums about ``c`` are ``S1 = S1_full - S1_part
    - n_part d`` and ``S2 = S2_full - S2_part - d w^T - w d^T``, and its scatter about a point ``t`` is
    ``S2 + e u^T + u e^T`` with ``e = c - t``, ``u = S1 + n e / 2``: one difference and one rank-4 product.

    Args:
        full: Packed moments of all the rows.
        part: Packed moments of a subset of them (one group's state).
        center: The point the scatter is taken about; the rest's own mean when ``None``.
        scale: Factor applied to the scatter.
        blocks: ``(rows, columns)`` slices of the scatter to compute, when the caller reads only those (the rest
            of the matrix is left uninitialised); the whole matrix when ``None``.

    Returns:
        ``(mean, scatter)``, both new float64 tensors; only the lower triangle of ``scatter`` (diagonal included)
        is meaningful, and only in ``blocks`` when they are given.

    Example:
        >>> a, b = torch.randn(20, 3, dtype=torch.float64), torch.randn(7, 3, dtype=torch.float64)
        >>> full = moments.merge(torch.stack([moments.from_features(a), moments.from_features(b)]))
        >>> mean, scatter = leave_one_out_moments(full, moments.from_features(b))
        >>> bool(torch.allclose(mean, a.mean(0)) and torch.allclose(scatter.tril(), (19 * a.T.cov()).tril()))
        True
    """
    fields, part_fields = moments.unpack(full), moments.unpack(part)
    part_count = part_fields.count
    count = fields.count - part_count
    offset = part_fields.shift - fields.shift
    weighted = part_fields.shifted_sum + 0.5 * part_count * offset
    rest_sum = fields.shifted_sum - (part_fields.shifted_sum + part_count * offset)
    mean = fields.shift + rest_sum / count.clamp(min=1.0)
    to_center = fields.shift - (mean if center is None else center)
    centred = rest_sum + 0.5 * count * to_center
    left = torch.stack([-offset, -weighted, to_center, centred], dim=1)
    right = torch.stack([weighted, offset, centred, to_center], dim=0)
    if blocks is None:
        scatter = torch.sub(fields.shifted_outer_sum, part_fields.shifted_outer_sum)
        return mean, scatter.addmm_(left, right, beta=scale, alpha=scale)
    scatter = torch.empty_like(fields.shifted_outer_sum)
    for rows, columns in blocks:
        block = scatter[rows, columns]
        torch.sub(fields.shifted_outer_sum[rows, columns], part_fields.shifted_outer_sum[rows, columns], out=block)
        block.addmm_(left[rows], right[:, columns], beta=scale, alpha=scale)
    return mean, scatter
