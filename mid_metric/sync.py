"""All-reduce synchronisation of packed moments states across processes.

torchmetrics syncs a metric state by calling ``dist_sync_fn(tensor, group=...)``, which by default
(``gather_all_tensors``) all-gathers the state of every rank. Each process then holds ``world_size`` copies of every
state, so the memory for the sync grows with the number of processes (for ``D = 1536``, a packed state is 19 MB, so
64 ranks gather 1.2 GB per state on every rank).

:func:`all_reduce_moments` merges packed moments (see :mod:`mid_metric.moments`) with two all-reduces whose total
payload is exactly one state's size, whatever the number of samples or ranks:

1. all-reduce-sum ``[n, n * mean]`` (``D + 1`` numbers), which gives every rank the pooled count and mean;
2. each rank moves its shifted sums to the pooled mean as the common shift (a local, exact Chan-style move);
3. all-reduce-sum ``[S1, S2]`` about that common shift (``D + D^2`` numbers).

It returns a one-element list holding the merged state, so that the state's ``dist_reduce_fx``
(:func:`mid_metric.moments.merge`) is an identity on it. A rank that has seen no samples contributes zeros, and when
no rank has seen any, the result is an empty state on every rank.

:func:`sync_state`, the metric's ``dist_sync_fn``, also handles the metric's small integer ``state_format`` record
(format version, image and text dimensions). torchmetrics syncs the states in the order they were added, and the
record is added first, so it is gathered and compared before any packed state is reduced: ranks built with another
feature split then all raise the same clear error, instead of aborting inside the collective (a size mismatch) or
silently mixing statistics of different splits (the same total size).
"""

from __future__ import annotations

from typing import Any, Optional

import torch
import torch.distributed as dist
from torch import Tensor

from mid_metric import _checks, moments


def all_reduce_moments(tensor: Tensor, group: Optional[Any] = None) -> list[Tensor]:
    """Merge a packed moments state across all processes of ``group`` with all-reduces (a ``dist_sync_fn``).

    This is the default ``dist_sync_fn`` of :class:`~mid_metric.MutualInformationDivergence`. Like every
    collective it must be called on every rank of the group (torchmetrics does so inside ``compute()``).

    Args:
        tensor: This rank's packed moments, float64, of length ``(D + 1)^2``.
        group: Process group; ``None`` means the default (whole world) group.

    Returns:
        A list holding one tensor: the merged packed moments of all ranks (count, pooled mean as shift, and the
        shifted sums about it). When ``torch.distributed`` is not initialised, the list holds a copy of ``tensor``.

    Raises:
        TypeError: If ``tensor`` is not a float64 tensor.
        ValueError: If ``tensor`` is not 1-D of length ``(D + 1)^2``.

    Example:
        >>> import torch
        >>> from mid_metric import _checks, moments
        >>> state = moments.from_features(torch.tensor([[0.0, 1.0], [2.0, 3.0]]))
        >>> merged, = all_reduce_moments(state)   # one process here, so a copy comes back
        >>> torch.equal(merged, state)
        True
    """
    if not isinstance(tensor, Tensor) or tensor.dtype != torch.float64:
        raise TypeError(
            f"`tensor` must be a float64 packed moments tensor, got {getattr(tensor, 'dtype', type(tensor))}."
        )
    if tensor.ndim != 1:
        raise ValueError(f"`tensor` must be a 1-D packed moments tensor, got shape {tuple(tensor.shape)}.")
    dim = moments.dim_from_packed_size(tensor.shape[0])
    if not (dist.is_available() and dist.is_initialized()):
        return [tensor.clone()]

    fields = moments.unpack(tensor)
    count = fields.count
    local_mean = fields.shift + fields.shifted_sum / count.clamp(min=1.0)

    # 1. Pooled count and mean: sum over ranks of [n, n * mean] (a rank with n = 0 adds zeros).
    first = torch.cat([count.reshape(1), count * local_mean])
    dist.all_reduce(first, op=dist.ReduceOp.SUM, group=group)
    total = first[0]
    common = first[1:] / total.clamp(min=1.0)

    # 2. Move this rank's sums from its own shift to the common shift (moments.moved_sums).
    moved_sum, moved_outer = moments.moved_sums(*fields, common)
    second = torch.empty(dim + dim * dim, dtype=torch.float64, device=tensor.device)
    second[:dim] = moved_sum
    second[dim:].view(dim, dim).copy_(moved_outer)

    # 3. Sum the sums about the common shift.
    dist.all_reduce(second, op=dist.ReduceOp.SUM, group=group)

    merged = torch.empty_like(tensor)
    merged[0] = total
    merged[1 : 1 + dim] = common
    merged[1 + dim :] = second
    return [merged]


def _gather(tensor: Tensor, group: Optional[Any]) -> list[Tensor]:
    parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size(group))]
    dist.all_gather(parts, tensor.contiguous(), group=group)
    return parts


def sync_state(tensor: Tensor, group: Optional[Any] = None) -> list[Tensor]:
    """Sync one state of :class:`~mid_metric.MutualInformationDivergence` across processes (its ``dist_sync_fn``).

    Packed float64 moments are merged by :func:`all_reduce_moments` (a ``(K, P)`` stack of them, as the jackknife
    groups are kept, state by state). The int64 records (``state_format``, and ``jackknife_settings``) are gathered
    from every rank and checked: when the ranks disagree, every rank raises the same ``ValueError``.

    Args:
        tensor: A state of the metric.
        group: Process group; ``None`` means the default group.

    Returns:
        The merged moments (one tensor), or the gathered records (one per rank).

    Raises:
        ValueError: If the ranks' records differ.

    Example:
        >>> import torch
        >>> from mid_metric._checks import state_format
        >>> sync_state(state_format(4, 4))[0].tolist()   # one process here, so a copy comes back
        [2, 4, 4]
    """
    if tensor.dtype != torch.int64:
        if tensor.ndim == 2:  # a stack of packed states (the jackknife groups): merged state by state
            return [torch.stack([all_reduce_moments(row, group)[0] for row in tensor])]
        return all_reduce_moments(tensor, group)
    if not (dist.is_available() and dist.is_initialized()):
        return [tensor.clone()]
    gathered = _gather(tensor, group)
    stacked = torch.stack(gathered)
    if not bool((stacked == stacked[0]).all()):
        described = "; ".join(
            f"rank {rank}: {_checks.describe_state_format(record)}" for rank, record in enumerate(gathered)
        )
        raise ValueError(
            "The processes built MutualInformationDivergence with different feature sizes or jackknife settings, so"
            f" their statistics cannot be combined ({described}). Build the metric with the same `feature`,"
            " `jackknife_groups` and `jackknife_key` on every rank."
        )
    return gathered
