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

:func:`check_same_settings` runs before any state of a metric of this package is exchanged: every rank describes the
settings that change its metric's value or the layout of its states (``PairedFeatureMetric._sync_settings``), and
the ranks all-gather one int64 digest of that description (SHA-256 of its canonical JSON text; Python's ``hash`` of
a string differs between processes). The collective has one fixed shape whatever the settings, so it cannot hang
when they differ. When the digests differ, the ranks gather the descriptions themselves and all raise the same
``ValueError``, which names each differing setting with every rank's value.
"""

from __future__ import annotations

import hashlib
import json
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


def settings_text(settings: dict[str, Any]) -> str:
    """Return the canonical JSON text of a metric's settings (keys sorted), which the ranks compare.

    Raises:
        TypeError: If a key is not a string or a value is not a bool, int, float, str or ``None``.

    Example:
        >>> settings_text({"weight": 2.5, "metric": "CLIPScore", "clamp": True})
        '{"clamp": true, "metric": "CLIPScore", "weight": 2.5}'
    """
    for name, value in settings.items():
        if not isinstance(name, str) or not (value is None or isinstance(value, (bool, int, float, str))):
            raise TypeError(
                f"A metric's sync settings map names to bools, ints, floats, strings or None; got {name!r}:"
                f" {type(value).__name__}."
            )
    return json.dumps(settings, sort_keys=True)


def settings_digest(text: str) -> int:
    """Return a stable signed 64-bit digest of a settings text: the first 8 bytes of its SHA-256.

    Example:
        >>> settings_digest('{"metric": "InfoNCE"}') == settings_digest('{"metric": "InfoNCE"}')
        True
    """
    return int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "little", signed=True)


def _gather_texts(text: str, group: Optional[Any], device: torch.device) -> list[str]:
    """All-gather one string per rank: its length first, then its UTF-8 bytes padded to the longest."""
    data = torch.tensor(list(text.encode("utf-8")), dtype=torch.uint8, device=device)
    lengths = [int(length) for length in _gather(torch.tensor([data.numel()], dtype=torch.int64, device=device), group)]
    padded = torch.zeros(max(lengths), dtype=torch.uint8, device=device)
    padded[: data.numel()] = data
    parts = _gather(padded, group)
    return [bytes(part[:length].tolist()).decode("utf-8") for part, length in zip(parts, lengths)]


def describe_settings_mismatch(per_rank: list[dict[str, Any]]) -> str:
    """Return the error message for ranks whose settings differ: each differing setting with every rank's value.

    Example:
        >>> print(describe_settings_mismatch([{"metric": "InfoNCE", "temperature": 1.0},
        ...                                   {"metric": "InfoNCE", "temperature": 0.01}]))
        The processes built InfoNCE with different settings, so their states cannot be combined: `temperature` \
(rank 0: 1.0; rank 1: 0.01). Build the metric with the same arguments on every rank.
    """
    names = sorted({str(settings.get("metric")) for settings in per_rank})
    keys = sorted({key for settings in per_rank for key in settings})

    def shown(settings: dict[str, Any], key: str) -> str:
        return repr(settings[key]) if key in settings else "(none)"

    differing = [key for key in keys if len({shown(settings, key) for settings in per_rank}) > 1]
    if "metric" in differing:  # different metrics altogether: their other settings do not compare
        differing = ["metric"]
    described = "; ".join(
        f"`{key}` ({'; '.join(f'rank {rank}: {shown(settings, key)}' for rank, settings in enumerate(per_rank))})"
        for key in differing
    )
    return (
        f"The processes built {' and '.join(names)} with different settings, so their states cannot be combined:"
        f" {described}. Build the metric with the same arguments on every rank."
    )


def check_same_settings(
    settings: dict[str, Any], group: Optional[Any] = None, device: Optional[torch.device] = None
) -> None:
    """Raise the same ``ValueError`` on every rank of ``group`` when the ranks' metric settings differ.

    A collective: every rank must call it. It all-gathers one int64 digest of :func:`settings_text` (a fixed
    shape, so it returns or raises on every rank whatever the settings); only when the digests differ does it
    gather the texts too, to name the differing settings. Without ``torch.distributed`` initialised it does
    nothing.

    Args:
        settings: This rank's settings (see :func:`settings_text` for the values allowed).
        group: Process group; ``None`` means the default group.
        device: Where the gathered tensors live (a CUDA device for NCCL); ``None`` means the CPU.

    Raises:
        ValueError: If the ranks' settings differ (see :func:`describe_settings_mismatch`).
        TypeError: If a setting's value is not allowed.

    Example:
        >>> check_same_settings({"metric": "CLIPScore", "clamp": True})   # one process here: nothing to compare
    """
    text = settings_text(settings)
    if not (dist.is_available() and dist.is_initialized()):
        return
    device = torch.device("cpu") if device is None else device
    digest = torch.tensor([settings_digest(text)], dtype=torch.int64, device=device)
    digests = [int(value) for value in _gather(digest, group)]
    if len(set(digests)) == 1:
        return
    per_rank = [json.loads(gathered) for gathered in _gather_texts(text, group, device)]
    raise ValueError(describe_settings_mismatch(per_rank))


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
