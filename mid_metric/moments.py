"""Streaming Gaussian sufficient statistics, packed into one flat float64 tensor.

The metric keeps, for each group of feature vectors ``v`` (reference or candidate pairs, ``v = [x; y]``), the
count ``n``, a shift ``s`` and the shifted sums ``S1 = sum(v - s)`` and ``S2 = sum((v - s)(v - s)^T)``.

Why a shift: raw float64 sums ``sum(v)`` and ``sum(v v^T)`` lose about 2.5 digits on CLIP features, whose mean has
norm close to 1 while the smallest covariance eigenvalues are near 1e-9 (the error grows like
``eps * |mean - s|^2 / lambda_min``). The shift is set to the mean of the first batch a group sees, which removes
almost all of the common mean, and the update stays a few in-place GEMMs (``S2 += C^T C``), which run at the
machine's matrix-multiply peak. Two packed states with different shifts are merged by moving both to their common
mean first (a Chan-style merge), so the reduction is exact whatever the order or the split across processes.

Layout of a packed tensor for dimension ``D`` (length ``1 + 2 D + D^2``)::

    [ n | shift (D) | S1 (D) | S2 (D x D, row-major) ]

``S2`` is symmetric, so the update computes only its lower triangle (diagonal included): **only the lower triangle
of S2 is meaningful**, and the upper one holds whatever the operations left there. Every operation on packed
tensors here is element-wise or adds symmetric terms, so it keeps the lower triangle right; :func:`symmetrized`
rebuilds the full matrix from it, and so does :func:`mean_and_scatter` unless asked for the lower triangle only.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple, Optional

import torch
from torch import Tensor

from mid_metric.batch_passes import centre_rows_


class GaussianMoments(NamedTuple):
    """Unpacked view of a packed moments tensor; see the module docstring for the meaning of each field."""

    count: Tensor
    shift: Tensor
    shifted_sum: Tensor
    shifted_outer_sum: Tensor


def packed_size(dim: int) -> int:
    """Return the length of the packed tensor for features of dimension ``dim``.

    Example:
        >>> packed_size(3)
        16
    """
    return 1 + 2 * dim + dim * dim


def dim_from_packed_size(size: int) -> int:
    """Invert :func:`packed_size`.

    Raises:
        ValueError: If ``size`` is not ``1 + 2 D + D^2`` for any integer ``D``.

    Example:
        >>> dim_from_packed_size(16)
        3
    """
    # 1 + 2D + D^2 = (D + 1)^2
    root = int(round(size**0.5))
    if root < 1 or root * root != size:
        raise ValueError(f"A packed moments tensor has (D + 1)^2 elements; got {size}.")
    return root - 1


def empty_moments(dim: int, device: torch.device | str | None = None) -> Tensor:
    """Return a zero packed moments tensor (no samples seen) in float64.

    Example:
        >>> empty_moments(2).shape
        torch.Size([9])
    """
    return torch.zeros(packed_size(dim), dtype=torch.float64, device=device)


def unpack(packed: Tensor) -> GaussianMoments:
    """Return views of the fields of a packed moments tensor (no copy, so in-place edits reach ``packed``).

    Example:
        >>> unpack(empty_moments(2)).shifted_outer_sum.shape
        torch.Size([2, 2])
    """
    dim = dim_from_packed_size(packed.shape[-1])
    return GaussianMoments(
        count=packed[0],
        shift=packed[1 : 1 + dim],
        shifted_sum=packed[1 + dim : 1 + 2 * dim],
        shifted_outer_sum=packed[1 + 2 * dim :].view(dim, dim),
    )


def accumulate_(
    packed: Tensor,
    features: Tensor | Sequence[Tensor],
    split: int = 0,
    skip_trailing_block: bool = False,
    workspace: Optional[Tensor] = None,
    may_be_empty: bool = True,
) -> Tensor:
    """Add a batch of feature rows to a packed moments tensor, in place.

    The first batch a group sees sets its shift to that batch's mean; the choice is made on the device, without a
    host synchronisation.

    Args:
        packed: Packed moments of dimension ``D``, float64.
        features: Batch of shape ``(B, D)``, or its column blocks (such as the image and the text features, which
            need not be concatenated first); any floating dtype. Each block is cast to float64 into ``workspace``
            and centred on the shift there.
        split: The outer-product update works in row blocks that never straddle column ``split`` (the metrics pass
            ``image_dim``, so the text block has blocks of its own); the result does not depend on it beyond
            rounding.
        skip_trailing_block: Leave the ``[split:, split:]`` block of ``S2`` unchanged: the caller copies it from a
            group that has seen the same trailing columns (see :func:`accumulate_pairs_`).
        workspace: A float64 ``(>= B, D)`` tensor on the state's device that receives the centred rows, so that
            no batch allocates; it may be ``features`` itself when the caller no longer needs them (a staging area
            being flushed). ``None``: a new tensor (the caller's features are never modified).
        may_be_empty: ``False`` when the caller knows the state holds rows already; the batch's mean, needed only
            for an empty state's shift, is then not computed.

    Returns:
        ``packed``, updated.

    Example:
        >>> state = empty_moments(2)
        >>> _ = accumulate_(state, torch.tensor([[1.0, 2.0], [3.0, 6.0]]))
        >>> mean, scatter = mean_and_scatter(state)
        >>> mean.tolist(), scatter.tolist()
        ([2.0, 4.0], [[2.0, 4.0], [4.0, 8.0]])
    """
    parts = (features,) if isinstance(features, Tensor) else tuple(features)
    rows = parts[0].shape[0]
    if rows == 0:
        return packed
    fields = unpack(packed)
    parts = tuple(part.to(device=packed.device) for part in parts)
    if may_be_empty:
        mean = torch.cat([part.mean(dim=0, dtype=torch.float64) for part in parts])
        fields.shift.copy_(torch.where(fields.count == 0, mean, fields.shift))
    if workspace is None:
        workspace = torch.empty(rows, fields.shift.shape[0], dtype=torch.float64, device=packed.device)
    batch = workspace[:rows]
    fields.shifted_sum.add_(centre_rows_(batch, parts, fields.shift))  # cast, concatenation and centring: one pass
    _add_gram_(fields.shifted_outer_sum, batch, split, skip_trailing_block)
    fields.count.add_(rows)
    return packed


# Width of the row blocks of the lower-triangular update in _add_gram_. On the 2-core CPU of the benchmarks, with the
# 1024-row flushes of the staging buffer at J = 1536, 384 ran 1.16x MKL's dsyrk against 1.05x for 192 (256: 0.95x,
# 512: 0.90x), and as fast as 192 with 4096 rows (benchmarks/update_syrk.py, issue 23).
_GRAM_BLOCK = 384


def _row_blocks(dim: int, split: int) -> list[tuple[int, int]]:
    """Row blocks of at most ``_GRAM_BLOCK`` rows covering ``[0, dim)``, none of them straddling ``split``."""
    edges = [(0, split), (split, dim)] if 0 < split < dim else [(0, dim)]
    return [
        (start, min(stop, start + _GRAM_BLOCK)) for first, stop in edges for start in range(first, stop, _GRAM_BLOCK)
    ]


def _add_gram_(outer: Tensor, batch: Tensor, split: int = 0, skip_trailing_block: bool = False) -> None:
    """``outer += batch^T batch`` on the lower triangle (diagonal included) of ``outer`` only, in place.

    The rows are taken in blocks of ``_GRAM_BLOCK`` that do not straddle ``split``; block ``[r0, r1)`` gets one GEMM
    over columns ``[0, r1)`` (two, ``[0, split)`` and ``[split, r1)``, below ``split``), written into a view of the
    state (no temporary ``D x D`` matrix). That is about ``(1 + block / D) / 2`` of the flops of the full product
    (62% at ``D = 1536``), as a BLAS ``syrk`` would do; the upper triangle is left stale (see the module docstring).
    Each entry is computed by a GEMM call of the same shape whatever the other columns hold, so two groups that
    share their trailing columns get bitwise the same ``[split:, split:]`` block, and ``skip_trailing_block`` may
    leave it out.
    """
    dim = outer.shape[0]
    for start, stop in _row_blocks(dim, split):
        rows = batch[:, start:stop].mT
        if start < split or split <= 0:
            outer[start:stop, :stop].addmm_(rows, batch[:, :stop])
            continue
        outer[start:stop, :split].addmm_(rows, batch[:, :split])
        if not skip_trailing_block:
            outer[start:stop, split:stop].addmm_(rows, batch[:, split:stop])


def symmetrized(packed: Tensor) -> Tensor:
    """Return a copy of ``packed`` whose ``S2`` is the full symmetric matrix rebuilt from its lower triangle.

    Example:
        >>> state = empty_moments(2)
        >>> unpack(state).shifted_outer_sum.copy_(torch.tensor([[1.0, 9.0], [2.0, 3.0]]))  # 9: a stale entry
        tensor([[1., 9.],
                [2., 3.]], dtype=torch.float64)
        >>> unpack(symmetrized(state)).shifted_outer_sum.tolist()
        [[1.0, 2.0], [2.0, 3.0]]
    """
    result = packed.clone()
    _mirror_lower_(unpack(result).shifted_outer_sum)
    return result


def joint_rows(images: Tensor, texts: Tensor, device: torch.device | str | None = None) -> Tensor:
    """Return the float64 rows ``z = [x; y]`` of paired image and text features, on ``device``.

    Example:
        >>> joint_rows(torch.ones(2, 1, dtype=torch.float16), torch.zeros(2, 2)).tolist()
        [[1.0, 0.0, 0.0], [1.0, 0.0, 0.0]]
    """
    device = images.device if device is None else device
    return torch.cat([images.to(device=device, dtype=torch.float64), texts.to(device=device, dtype=torch.float64)], 1)


def moved_sums(
    count: Tensor, shift: Tensor, shifted_sum: Tensor, shifted_outer_sum: Tensor, new_shift: Tensor
) -> tuple[Tensor, Tensor]:
    """Return the shifted sums of one group about ``new_shift`` instead of ``shift`` (the Chan-style move).

    With ``d = shift - new_shift``: ``sum (v - c) = S1 + n d`` and
    ``sum (v - c)(v - c)^T = S2 + d S1^T + S1 d^T + n d d^T = S2 + d w^T + w d^T`` with ``w = S1 + n d / 2``. Exact in
    exact arithmetic; the merge and the DDP sync move sums with it (the recentring is its special case
    ``new_shift = mean``, ``S2 - S1 S1^T / n``, done in place by :func:`recentre_`).

    Example:
        >>> v = torch.tensor([[1.0], [3.0]], dtype=torch.float64)
        >>> fields = unpack(from_features(v))
        >>> [t.tolist() for t in moved_sums(*fields, torch.zeros(1, dtype=torch.float64))]  # sums about 0
        [[4.0], [[10.0]]]
    """
    offset = shift - new_shift
    weighted = shifted_sum + 0.5 * count * offset
    moved_outer = shifted_outer_sum + torch.outer(offset, weighted) + torch.outer(weighted, offset)
    return shifted_sum + count * offset, moved_outer


def subtract_symmetric_rank2_lower_(outer: Tensor, first: Tensor, second: Tensor) -> Tensor:
    """``outer -= first second^T + second first^T`` on the lower triangle (diagonal included), in place.

    Row blocks as in the update: a pass over about half the matrix, with no ``D x D`` temporary (the upper triangle
    of the diagonal blocks is updated too, the rest of it is left as it was).

    Example:
        >>> outer = torch.zeros(2, 2, dtype=torch.float64)
        >>> one = torch.ones(2, dtype=torch.float64)
        >>> subtract_symmetric_rank2_lower_(outer, one, torch.tensor([1.0, 2.0], dtype=torch.float64)).tril().tolist()
        [[-2.0, 0.0], [-3.0, -4.0]]
    """
    for start, stop in _row_blocks(outer.shape[0], 0):
        block = outer[start:stop, :stop]
        block.addr_(first[start:stop], second[:stop], alpha=-1)
        block.addr_(second[start:stop], first[:stop], alpha=-1)
    return outer


def recentre_due(batches_seen: int) -> bool:
    """Whether to recentre a group's shift after its ``batches_seen``-th batch: after the 1st, 2nd, 4th, 8th, ...

    Recentring at powers of two keeps the shift within a factor of two of the data's spread from the mean at an
    ``O(D^2 log B)`` cost for ``B`` batches, so a first batch of one sample costs no precision.

    Example:
        >>> [n for n in range(1, 20) if recentre_due(n)]
        [1, 2, 4, 8, 16]
    """
    return batches_seen > 0 and batches_seen & (batches_seen - 1) == 0


def accumulate_batch_(
    packed: Tensor,
    features: Tensor | Sequence[Tensor],
    batches_seen: int,
    split: int = 0,
    workspace: Optional[Tensor] = None,
) -> Tensor:
    """Add the group's ``batches_seen``-th batch (counting this one) in place, and recentre when it is due.

    This is the one update rule of the metric's statistics: :func:`accumulate_`, then :func:`recentre_` on the
    schedule of :func:`recentre_due`. The schedule depends only on the batch number, which the metric keeps on the
    host, so the update needs no host synchronisation. ``features`` and ``workspace`` are as in :func:`accumulate_`.

    Example:
        >>> state = empty_moments(1)
        >>> for number, batch in enumerate([[[0.0]], [[2.0]], [[4.0]]], start=1):
        ...     _ = accumulate_batch_(state, torch.tensor(batch), number)
        >>> unpack(state).shift.tolist(), mean_and_scatter(state)[1].tolist()  # recentred after batch 2
        ([1.0], [[8.0]])
    """
    accumulate_(packed, features, split, workspace=workspace, may_be_empty=batches_seen <= 1)
    if row_count(features) > 0 and recentre_due(batches_seen):
        recentre_(packed)
    return packed


def row_count(features: Tensor | Sequence[Tensor]) -> int:
    """Rows of a batch given whole or as column blocks."""
    return features.shape[0] if isinstance(features, Tensor) else features[0].shape[0]


def accumulate_pairs_(
    reference: Tensor,
    candidate: Tensor,
    reference_rows: Tensor | Sequence[Tensor],
    candidate_rows: Tensor | Sequence[Tensor],
    batches_seen: int,
    split: int,
    workspaces: tuple[Optional[Tensor], Optional[Tensor]] = (None, None),
) -> None:
    """Add one batch to two groups whose rows share their trailing columns ``[split:]``, in place.

    This is :func:`accumulate_batch_` on each group, except that the candidate's ``[split:, split:]`` block of
    ``S2`` is copied from the reference's instead of computed again. It is exact, bit for bit, when both groups have
    seen the same trailing columns in the same batches since they were empty (the metric's ``update_pairs``, where
    the candidates are generated from the reference's own captions): then the shifts, sums and that block agree
    bitwise, and every operation here is element-wise or a GEMM of the same shape on the same columns. The rows and
    the workspaces (one per group) are as in :func:`accumulate_`.

    Example:
        >>> x, x_hat, y = torch.randn(6, 2), torch.randn(6, 2), torch.randn(6, 1)
        >>> ref, cand = empty_moments(3), empty_moments(3)
        >>> accumulate_pairs_(ref, cand, torch.cat([x, y], 1), torch.cat([x_hat, y], 1), 1, split=2)
        >>> separate = accumulate_batch_(empty_moments(3), torch.cat([x_hat, y], 1), 1, split=2)
        >>> torch.equal(cand, separate)
        True
    """
    first = batches_seen <= 1
    accumulate_(reference, reference_rows, split, workspace=workspaces[0], may_be_empty=first)
    accumulate_(candidate, candidate_rows, split, skip_trailing_block=True, workspace=workspaces[1], may_be_empty=first)
    source, target = unpack(reference).shifted_outer_sum, unpack(candidate).shifted_outer_sum
    for start, stop in _row_blocks(source.shape[0], split):  # the entries _add_gram_ writes, lower triangle included
        if start >= split:
            target[start:stop, split:stop].copy_(source[start:stop, split:stop])
    if row_count(reference_rows) > 0 and recentre_due(batches_seen):
        recentre_(reference)
        recentre_(candidate)


def recentre_(packed: Tensor) -> Tensor:
    """Move the shift of a packed moments tensor to its current mean, in place.

    This changes no statistic; it keeps later batches close to the shift. The metric calls it after the 1st, 2nd,
    4th, 8th, ... batch of a group, so a first batch of one sample costs no precision (an O(D^2 log N) cost).

    Example:
        >>> state = from_features(torch.tensor([[0.0], [2.0]]))
        >>> _ = accumulate_(state, torch.tensor([[10.0]]))
        >>> before = mean_and_scatter(state)
        >>> after = mean_and_scatter(recentre_(state))
        >>> all(torch.allclose(b, a) for b, a in zip(before, after)), unpack(state).shift.tolist()
        (True, [4.0])
    """
    fields = unpack(packed)
    scaled_sum = fields.shifted_sum / fields.count.clamp(min=1.0)
    # The move to the mean is S2 - S1 S1^T / n (moved_sums with w = S1 / 2): one rank-1 update, made in place by one
    # GEMM over the whole matrix (no D x D temporary). Its upper triangle gets the symmetric term too, which is twice
    # the writes of the lower triangle alone, but an element-wise kernel (addr) or one call per row block costs a
    # parallel region each, far more on a busy machine.
    fields.shifted_outer_sum.addmm_(fields.shifted_sum.unsqueeze(1), scaled_sum.unsqueeze(0), alpha=-1)
    fields.shift.add_(scaled_sum)
    fields.shifted_sum.zero_()  # the sum about the mean, exactly
    return packed


def from_features(features: Tensor) -> Tensor:
    """Return the packed moments of a whole feature matrix ``(N, D)``; this is an exact two-pass computation.

    Example:
        >>> from_features(torch.eye(2))[0].item()
        2.0
    """
    return accumulate_(empty_moments(features.shape[-1], device=features.device), features)


def merge(stacked: Tensor) -> Tensor:
    """Merge packed moments stacked along dim 0 into one packed tensor.

    Every part is moved to the pooled mean before the shifted sums are added, which is exact in exact arithmetic
    and as accurate as a two-pass computation in float64. This is the ``dist_reduce_fx`` of the metric's states,
    so it serves the DDP sync (all ranks stacked) as well as ``forward`` and ``merge_state`` (two states stacked).

    Args:
        stacked: Tensor of shape ``(K, (D + 1)^2)``.

    Returns:
        Tensor of shape ``((D + 1)^2,)``.

    Example:
        >>> a, b = torch.randn(5, 3, dtype=torch.float64), torch.randn(7, 3, dtype=torch.float64)
        >>> merged = merge(torch.stack([from_features(a), from_features(b)]))
        >>> whole = from_features(torch.cat([a, b]))
        >>> all(torch.allclose(m, w) for m, w in zip(mean_and_scatter(merged), mean_and_scatter(whole)))
        True
    """
    if stacked.ndim == 1:
        return stacked
    if stacked.shape[0] == 1:
        return stacked[0]
    dim = dim_from_packed_size(stacked.shape[-1])
    counts = stacked[:, 0]
    shifts = stacked[:, 1 : 1 + dim]
    sums = stacked[:, 1 + dim : 1 + 2 * dim]
    outer_sums = stacked[:, 1 + 2 * dim :].reshape(-1, dim, dim)

    total = counts.sum()
    part_means = shifts + sums / counts.clamp(min=1.0).unsqueeze(1)
    common = (counts.unsqueeze(1) * part_means).sum(dim=0) / total.clamp(min=1.0)

    merged = torch.zeros_like(stacked[0])
    fields = unpack(merged)
    fields.count.copy_(total)
    fields.shift.copy_(common)
    for part in range(stacked.shape[0]):  # move each part to the common shift, then add
        moved_sum, moved_outer = moved_sums(counts[part], shifts[part], sums[part], outer_sums[part], common)
        fields.shifted_sum.add_(moved_sum)
        fields.shifted_outer_sum.add_(moved_outer)
    return merged


def mean_and_scatter(
    packed: Tensor, center: Tensor | None = None, scale: float = 1.0, symmetric: bool = True
) -> tuple[Tensor, Tensor]:
    """Return the mean and the scatter matrix ``sum (v - c)(v - c)^T`` of a packed moments tensor.

    Args:
        packed: Packed moments.
        center: Point ``c`` about which the scatter is taken; the group's own mean when ``None``.
        scale: Factor applied to the scatter (``1 / (n - 1)`` gives the unbiased covariance), in the same pass.
        symmetric: Rebuild the upper triangle from the lower one. With ``False`` only the lower triangle (diagonal
            included) is meaningful, which is all a Cholesky factorisation reads, and half a pass is saved.

    Returns:
        ``(mean, scatter)``, both float64; ``scatter`` is a new tensor.

    Example:
        >>> state = from_features(torch.tensor([[0.0], [2.0]]))
        >>> [t.tolist() for t in mean_and_scatter(state)]
        [[1.0], [[2.0]]]
        >>> [t.tolist() for t in mean_and_scatter(state, center=torch.zeros(1, dtype=torch.float64))]
        [[1.0], [[4.0]]]
        >>> mean_and_scatter(state, scale=0.5)[1].tolist()
        [[1.0]]
    """
    fields = unpack(packed)
    count = fields.count.clamp(min=1.0)
    mean = fields.shift + fields.shifted_sum / count
    # One pass over the D x D matrix (two for another centre) builds the result from the stored lower triangle: S2
    # plus a rank-1 (own mean) or rank-2 (other centre) term, scaled; compute() latency is bound by such passes.
    if center is None:
        # S2 - S1 S1^T / n; S1 is small because the shift is close to the mean.
        scatter = torch.addr(
            fields.shifted_outer_sum, fields.shifted_sum, fields.shifted_sum / count, beta=scale, alpha=-scale
        )
    else:
        offset = fields.shift - center
        weighted = fields.shifted_sum + 0.5 * fields.count * offset
        # (two rank-1 updates: a rank-2 GEMM with an inner dimension of 2 is several times slower here)
        scatter = torch.addr(fields.shifted_outer_sum, offset, weighted, beta=scale, alpha=scale)
        scatter.addr_(weighted, offset, alpha=scale)
    if symmetric:
        _mirror_lower_(scatter)
    return mean, scatter


def _mirror_lower_(matrix: Tensor, block: int = 256) -> Tensor:
    """Overwrite the upper triangle of ``matrix`` with the transpose of its lower one, in place, in blocks."""
    dim = matrix.shape[0]
    for start in range(0, dim, block):
        stop = min(dim, start + block)
        matrix[start:stop, stop:] = matrix[stop:, start:stop].mT
        diagonal = matrix[start:stop, start:stop]
        diagonal.copy_(diagonal.tril() + diagonal.tril(-1).mT)
    return matrix
