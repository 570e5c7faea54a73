"""Rules on metric states that come from outside: state-format records, packed moments, stored rows and sums.

A state reaches a metric through ``load_state_dict``, ``merge_state`` or a sync; these rules refuse one of another
layout, of other settings, or with values no update could have produced, before anything is changed.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from mid_metric import moments
from mid_metric._checks.batches import MAX_FEATURE_MAGNITUDE

#: Version of the metric's state layout, recorded in its ``state_format`` state. Version 1 (mid-metric 0.1) had no
#: record; version 2 added it, with the same packed moments.
STATE_FORMAT_VERSION = 2
#: Version of the companion metrics' state layout (CLIP-S, RefCLIP-S, CLIP-R-Precision, InfoNCE), recorded in
#: their ``state_format`` state like MID's.
COMPANION_STATE_FORMAT_VERSION = 1


# Largest magnitude accepted in packed moments from outside (``merge_state``, ``load_state_dict``). Features are
# bounded by MAX_FEATURE_MAGNITUDE, so a state built from them stays below ~1e217; this leaves room for merging.
_MAX_STATE_MAGNITUDE = 1e250
_MAX_COUNT = 2.0**53  # counts are float64 and exact up to here


def state_format(image_dim: int, text_dim: int, version: int = STATE_FORMAT_VERSION) -> Tensor:
    """Return the record of a metric's state layout: ``[version, image_dim, text_dim]`` (int64).

    ``version`` is :data:`STATE_FORMAT_VERSION` for MID and :data:`COMPANION_STATE_FORMAT_VERSION` for the
    companion metrics (CLIP-S, RefCLIP-S, CLIP-R-Precision, InfoNCE).

    Example:
        >>> state_format(768, 512).tolist()
        [2, 768, 512]
    """
    return torch.tensor([version, image_dim, text_dim], dtype=torch.int64)


def describe_state_format(record: Tensor) -> str:
    """Describe a state-format record in words, for error messages.

    Example:
        >>> describe_state_format(state_format(6, 10))
        'state format 2 with (image_dim, text_dim) = (6, 10)'
    """
    if record.numel() != 3:  # another settings record (the jackknife's [groups, key])
        return f"settings {record.tolist()}"
    version, image_dim, text_dim = (int(v) for v in record.tolist())
    return f"state format {version} with (image_dim, text_dim) = ({image_dim}, {text_dim})"


def check_state_format(record: object, name: str, expected: Tensor) -> Tensor:
    """Check a state-format record against this metric's and return it as int64 on ``expected``'s device.

    Raises:
        ValueError: If ``record`` is not a 3-element integer tensor, or differs from ``expected``.

    Example:
        >>> check_state_format(state_format(6, 10), "state_format", state_format(8, 8))
        Traceback (most recent call last):
        ...
        ValueError: `state_format` is state format 2 with (image_dim, text_dim) = (6, 10), but this metric has \
state format 2 with (image_dim, text_dim) = (8, 8); statistics of another feature split cannot be combined.
    """
    if not isinstance(record, Tensor) or record.shape != (3,) or record.dtype.is_floating_point or record.is_complex():
        raise ValueError(
            f"`{name}` must be an integer tensor [format version, image_dim, text_dim], got"
            f" {getattr(record, 'shape', type(record).__name__)}."
        )
    record = record.to(device=expected.device, dtype=torch.int64)
    if not torch.equal(record, expected):
        raise ValueError(
            f"`{name}` is {describe_state_format(record)}, but this metric has {describe_state_format(expected)};"
            " statistics of another feature split cannot be combined."
        )
    return record


def same_state_format(stacked: Tensor) -> Tensor:
    """Reduce stacked state-format records (the ``dist_reduce_fx`` of ``state_format``): all must be equal.

    Raises:
        ValueError: If the records differ.

    Example:
        >>> same_state_format(torch.stack([state_format(4, 4), state_format(4, 4)])).tolist()
        [2, 4, 4]
    """
    if not _all_equal(stacked):
        described = ", ".join(describe_state_format(row) for row in stacked)
        raise ValueError(f"The metric states to combine have different layouts: {described}.")
    return stacked if stacked.ndim == 1 else stacked[0]


def check_packed_moments(packed: object, name: str, dim: int) -> Tensor:
    """Check packed moments that come from outside the metric (a checkpoint, another metric's state).

    The tensor must be a floating 1-D tensor of length ``(dim + 1) ** 2`` (see :mod:`mid_metric.moments`), finite and
    of bounded magnitude, with a count that is a whole number in ``[0, 2**53]``; an empty state must be all zeros.

    Args:
        packed: The value to check.
        name: Its name in error messages, such as ``"candidate_moments"``.
        dim: The joint feature dimension ``image_dim + text_dim``.

    Returns:
        ``packed``.

    Raises:
        ValueError: If any of these conditions fails.

    Example:
        >>> state = moments.empty_moments(2)
        >>> state[0] = 2.5
        >>> check_packed_moments(state, "reference_moments", 2)
        Traceback (most recent call last):
        ...
        ValueError: `reference_moments` has a sample count of 2.5; a count must be a whole number from 0 to 2**53.
    """
    expected = moments.packed_size(dim)
    if not isinstance(packed, Tensor) or not packed.dtype.is_floating_point or packed.shape != (expected,):
        found = f"{packed.dtype} tensor of shape {tuple(packed.shape)}" if isinstance(packed, Tensor) else packed
        raise ValueError(
            f"`{name}` must be a floating tensor of packed moments of shape ({expected},) for a joint feature"
            f" dimension of {dim}, got {found if isinstance(found, str) else type(found).__name__}."
        )
    if not bool((packed.abs() <= _MAX_STATE_MAGNITUDE).all()):
        raise ValueError(f"`{name}` holds NaN, Inf or values above {_MAX_STATE_MAGNITUDE:g}; it is not a valid state.")
    count = _check_count(packed, name, "sample")
    if count == 0.0 and bool(packed.any()):
        raise ValueError(f"`{name}` has a sample count of 0 but non-zero sums; it is not a valid state.")
    return packed


def _as_tensor_list(value: object, name: str, ndim: int) -> list[Tensor]:
    items = [value] if isinstance(value, Tensor) else value
    if not isinstance(items, (list, tuple)) or not all(isinstance(item, Tensor) for item in items):
        raise ValueError(f"`{name}` must be a list of tensors, got {type(value).__name__}.")
    for item in items:
        if not item.dtype.is_floating_point or item.ndim != ndim:
            raise ValueError(
                f"`{name}` must hold floating tensors of {ndim} dimension(s), got a {item.dtype} tensor of shape"
                f" {tuple(item.shape)}."
            )
    return list(items)


def check_feature_rows_state(value: object, name: str, width: int) -> list[Tensor]:
    """Check a list state of stored feature rows ``(n_i, width)`` that comes from outside; return it as a list.

    Raises:
        ValueError: If it is not a list of floating 2-D tensors of ``width`` columns, or a value is NaN, Inf or too
            large.

    Example:
        >>> check_feature_rows_state([torch.ones(2, 3)], "candidate_features", 4)
        Traceback (most recent call last):
        ...
        ValueError: `candidate_features` must hold rows of 4 features, got a tensor of shape (2, 3).
    """
    items = _as_tensor_list(value, name, 2)
    for item in items:
        if item.shape[1] != width:
            raise ValueError(f"`{name}` must hold rows of {width} features, got a tensor of shape {tuple(item.shape)}.")
        bound = min(MAX_FEATURE_MAGNITUDE, torch.finfo(torch.float32).max)
        if item.numel() > 0 and not bool((item.abs() <= bound).all()):
            raise ValueError(f"`{name}` holds NaN, Inf or values beyond float32; it is not a valid state.")
    return items


def check_values_state(value: object, name: str, low: float, high: float) -> list[Tensor]:
    """Check a list state of per-pair values (1-D tensors in ``[low, high]``) that comes from outside.

    Raises:
        ValueError: If it is not a list of floating 1-D tensors, or a value is NaN or out of range.

    Example:
        >>> check_values_state([torch.tensor([0.5, 1.5])], "pair_cosines", -1.0, 1.0)
        Traceback (most recent call last):
        ...
        ValueError: `pair_cosines` holds NaN or values outside [-1, 1]; it is not a valid state.
    """
    items = _as_tensor_list(value, name, 1)
    slack = 1e-9 * max(1.0, abs(low), abs(high))
    for item in items:
        if item.numel() > 0 and not bool(((item >= low - slack) & (item <= high + slack)).all()):
            raise ValueError(f"`{name}` holds NaN or values outside [{low:g}, {high:g}]; it is not a valid state.")
    return items


def check_sums_state(value: object, name: str, length: int, bound: float) -> Tensor:
    """Check a ``[count, sum_1, ...]`` state of ``length`` float64 values that comes from outside; return it.

    The count must be a whole number in ``[0, 2**53]`` and every sum at most ``bound`` times the count in
    magnitude (each summand is at most ``bound``); an empty state must be all zeros.

    Raises:
        ValueError: If any of these conditions fails.

    Example:
        >>> check_sums_state(torch.tensor([2.0, 3.0], dtype=torch.float64), "sums", 2, 1.0)
        Traceback (most recent call last):
        ...
        ValueError: `sums` holds a sum of magnitude 3 for 2 pairs, above the bound 1 a pair; it is not a valid state.
    """
    if not isinstance(value, Tensor) or not value.dtype.is_floating_point or value.shape != (length,):
        found = f"shape {tuple(value.shape)}" if isinstance(value, Tensor) else type(value).__name__
        raise ValueError(f"`{name}` must be a floating tensor of shape ({length},), got {found}.")
    if not bool(torch.isfinite(value).all()):
        raise ValueError(f"`{name}` holds NaN or Inf; it is not a valid state.")
    count = _check_count(value, name, "pair")
    largest = float(value[1:].abs().max()) if length > 1 else 0.0
    if largest > bound * count * (1 + 1e-9) + 1e-9:
        raise ValueError(
            f"`{name}` holds a sum of magnitude {largest:g} for {count:g} pairs, above the bound {bound:g} a pair;"
            " it is not a valid state."
        )
    return value


def check_settings_state(value: object, name: str, expected: Tensor, described: str) -> Tensor:
    """Check a state that records the settings a metric's sums depend on; it must equal this metric's.

    Raises:
        ValueError: If ``value`` differs from ``expected``.

    Example:
        >>> own = torch.tensor([2.5], dtype=torch.float64)
        >>> check_settings_state(torch.tensor([100.0]), "settings", own, "weight")
        Traceback (most recent call last):
        ...
        ValueError: `settings` records weight [100.0], but this metric has [2.5]; states computed with other \
settings cannot be combined.
    """
    if not isinstance(value, Tensor) or value.shape != expected.shape or not value.dtype.is_floating_point:
        found = f"shape {tuple(value.shape)}" if isinstance(value, Tensor) else type(value).__name__
        raise ValueError(f"`{name}` must be a floating tensor of shape {tuple(expected.shape)}, got {found}.")
    value = value.to(device=expected.device, dtype=expected.dtype)
    if not torch.equal(value, expected):
        raise ValueError(
            f"`{name}` records {described} {value.tolist()}, but this metric has {expected.tolist()}; states"
            " computed with other settings cannot be combined."
        )
    return value


def same_settings(stacked: Tensor) -> Tensor:
    """Reduce stacked settings records (their ``dist_reduce_fx``): all must be equal.

    Raises:
        ValueError: If the records differ.

    Example:
        >>> same_settings(torch.tensor([[2.5], [2.5]], dtype=torch.float64)).tolist()
        [2.5]
    """
    if not _all_equal(stacked):
        raise ValueError(f"The metric states to combine were computed with different settings: {stacked.tolist()}.")
    return stacked if stacked.ndim == 1 else stacked[0]


def _check_count(state: Tensor, name: str, what: str) -> float:
    """Return the count a state opens with (``state[0]``), refusing one that is not a whole number in [0, 2**53]."""
    count = float(state[0])
    if not (0.0 <= count <= _MAX_COUNT and count == math.floor(count)):
        raise ValueError(f"`{name}` has a {what} count of {count:g}; a count must be a whole number from 0 to 2**53.")
    return count


def _all_equal(stacked: Tensor) -> bool:
    """Whether the records stacked along dim 0 are all equal (a 1-D tensor is one record)."""
    return stacked.ndim == 1 or all(torch.equal(other, stacked[0]) for other in stacked[1:])
