"""Rules on the batches a metric receives: feature tensors, their pairing, reference features and caption lists.

A feature batch is a floating tensor ``(B, D)`` whose values are finite and of magnitude at most
:data:`MAX_FEATURE_MAGNITUDE`; a pair batch is two of them with one row count on one device.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from mid_metric.batch_passes import within_bound

FLOATING_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


#: Largest feature magnitude accepted. The statistics sum outer products ``v v^T`` of up to 2^53 rows in float64
#: (largest value about 1.8e308): rows bounded by 1e100 keep every sum, and the squared distances of ``pmi`` and the
#: standard error, far from overflow. Real embeddings are of order 1; float32 input can never exceed it.
MAX_FEATURE_MAGNITUDE = 1e100


def check_features(features: object, name: str, dim: Optional[int] = None, check_finite: bool = True) -> Tensor:
    """Check that ``features`` is a finite floating tensor of shape ``(B, dim)`` and return it.

    Args:
        features: The value to check.
        name: Argument name used in error messages.
        dim: Expected feature size, or ``None`` to accept any.
        check_finite: Whether to reject NaN, Inf and magnitudes above :data:`MAX_FEATURE_MAGNITUDE` (one host
            synchronisation on CUDA).

    Raises:
        TypeError: If ``features`` is not a tensor, or not of a floating dtype.
        ValueError: If the shape is wrong, a value is NaN or infinite, or its magnitude exceeds
            :data:`MAX_FEATURE_MAGNITUDE`.

    Example:
        >>> check_features(torch.zeros(4, 3), "images", dim=3).shape
        torch.Size([4, 3])
        >>> check_features(torch.zeros(4, 2), "images", dim=3)
        Traceback (most recent call last):
        ...
        ValueError: `images` must have shape (batch, 3), got (4, 2).
    """
    if not isinstance(features, Tensor):
        raise TypeError(f"`{name}` must be a torch.Tensor of shape (batch, features), got {type(features).__name__}.")
    if features.dtype not in FLOATING_DTYPES:
        raise TypeError(
            f"`{name}` must be a floating tensor (float16, bfloat16, float32 or float64), got {features.dtype}."
            " Integer or boolean features are not embeddings; pass the encoder's output."
        )
    expected = f"(batch, {dim})" if dim is not None else "(batch, features)"
    if features.ndim != 2 or (dim is not None and features.shape[1] != dim):
        raise ValueError(f"`{name}` must have shape {expected}, got {tuple(features.shape)}.")
    # One flag (one host sync) catches NaN and Inf too: they fail the comparison with a finite bound of the dtype.
    if check_finite and features.numel() > 0 and not bool(_within_bound(features)):
        finite = torch.isfinite(features)
        if not bool(finite.all()):
            bad = int((~finite).any(dim=1).sum())
            raise ValueError(f"`{name}` contains NaN or Inf values (in {bad} of {features.shape[0]} rows).")
        largest = float(features.abs().max())
        raise ValueError(
            f"`{name}` holds values of magnitude up to {largest:.3g}, above the bound {MAX_FEATURE_MAGNITUDE:g}:"
            " the float64 sums of their outer products could overflow. Pass embeddings of ordinary scale (CLIP's"
            " are L2-normalised)."
        )
    return features


def _within_bound(features: Tensor) -> Tensor | bool:
    """Whether every value of ``features`` is finite and of magnitude at most the bound.

    A host ``bool`` for a CPU tensor (passes on the calling thread), else a 0-dim bool tensor on its device (no
    host synchronisation); see :func:`mid_metric.batch_passes.within_bound`.
    """
    return within_bound(features, min(MAX_FEATURE_MAGNITUDE, torch.finfo(features.dtype).max))


def check_within_bound(named_features: dict[str, Tensor]) -> None:
    """Reject NaN, Inf and magnitudes above :data:`MAX_FEATURE_MAGNITUDE` in several tensors, with one host sync.

    The tensors must have passed :func:`check_features` with ``check_finite=False`` already; when one fails, the
    error is the one :func:`check_features` gives for it.

    Raises:
        ValueError: As :func:`check_features`, for the first offending tensor.

    Example:
        >>> check_within_bound({"images": torch.zeros(2, 3), "texts": torch.tensor([[float("nan")]] * 2)})
        Traceback (most recent call last):
        ...
        ValueError: `texts` contains NaN or Inf values (in 2 of 2 rows).
    """
    within = [_within_bound(features) for features in named_features.values() if features.numel() > 0]
    on_device = [flag for flag in within if isinstance(flag, Tensor)]
    # One flag per tensor: the CPU's on the host, the others combined on the device (one host sync for the call).
    if all(flag for flag in within if not isinstance(flag, Tensor)) and (
        not on_device or bool(torch.stack([flag.to(on_device[0].device) for flag in on_device]).all())
    ):
        return
    for name, features in named_features.items():
        check_features(features, name)


def check_pairs(
    images: object, texts: object, image_dim: Optional[int] = None, text_dim: Optional[int] = None, prefix: str = ""
) -> tuple[Tensor, Tensor]:
    """Check a batch of (image, text) feature pairs and return them.

    Args:
        images: Image features ``(B, image_dim)``.
        texts: Text features ``(B, text_dim)``.
        image_dim: Expected image feature size, or ``None``.
        text_dim: Expected text feature size, or ``None``.
        prefix: Prefix of the argument names in messages, such as ``"reference_"``.

    Raises:
        TypeError: See :func:`check_features`.
        ValueError: See :func:`check_features`, or if the two batch sizes differ.

    Example:
        >>> check_pairs(torch.zeros(3, 2), torch.zeros(4, 2))
        Traceback (most recent call last):
        ...
        ValueError: `images` and `texts` must hold the same number of pairs, got 3 and 4 rows.
    """
    images = check_features(images, f"{prefix}images", image_dim, check_finite=False)
    texts = check_features(texts, f"{prefix}texts", text_dim, check_finite=False)
    check_same_batch(images, texts, f"{prefix}images", f"{prefix}texts")
    check_within_bound({f"{prefix}images": images, f"{prefix}texts": texts})
    return images, texts


def check_same_batch(first: Tensor, second: Tensor, first_name: str, second_name: str) -> None:
    """Check that two feature batches hold the same number of rows and live on the same device.

    Raises:
        ValueError: If they do not.

    Example:
        >>> check_same_batch(torch.zeros(2, 1), torch.zeros(2, 3), "images", "texts")
    """
    if first.shape[0] != second.shape[0]:
        raise ValueError(
            f"`{first_name}` and `{second_name}` must hold the same number of pairs,"
            f" got {first.shape[0]} and {second.shape[0]} rows."
        )
    check_same_device(first, second, first_name, second_name)


def check_same_device(first: Tensor, second: Tensor, first_name: str, second_name: str) -> None:
    """Check that two tensors live on the same device.

    Raises:
        ValueError: If they do not, naming both arguments and their devices.

    Example:
        >>> check_same_device(torch.zeros(2, 1), torch.zeros(5, 1), "real_features", "generated_features")
    """
    if first.device != second.device:
        raise ValueError(
            f"`{first_name}` and `{second_name}` must be on the same device, got {first.device} and {second.device}."
        )


def check_nonzero_rows(features: Tensor, name: str) -> Tensor:
    """Check that no row of ``features`` is the zero vector (which has no direction, so no cosine) and return it.

    Raises:
        ValueError: If some row is zero.

    Example:
        >>> check_nonzero_rows(torch.tensor([[1.0, 0.0], [0.0, 0.0]]), "texts")
        Traceback (most recent call last):
        ...
        ValueError: `texts` has 1 row(s) of zero norm (the first is row 1): a cosine similarity needs a non-zero \
vector.
    """
    if features.numel() == 0:
        return features
    zero = ~(features != 0).any(dim=1)
    if bool(zero.any()):
        first = int(zero.nonzero()[0, 0])
        raise ValueError(
            f"`{name}` has {int(zero.sum())} row(s) of zero norm (the first is row {first}): a cosine similarity"
            " needs a non-zero vector."
        )
    return features


def check_float32_range(features: Tensor, name: str, what: str) -> Tensor:
    """Check that ``features`` fit in float32, in which ``what`` stores them, and return them.

    Raises:
        ValueError: If a value's magnitude exceeds the float32 range.

    Example:
        >>> check_float32_range(torch.tensor([[1e300, 1.0]], dtype=torch.float64), "images", "InfoNCE")
        Traceback (most recent call last):
        ...
        ValueError: `images` holds values of magnitude up to 1e+300, beyond float32 (3.4e+38), in which InfoNCE \
stores the candidate features. Pass embeddings of ordinary scale (CLIP's are L2-normalised).
    """
    bound = torch.finfo(torch.float32).max
    if features.numel() > 0 and features.dtype == torch.float64 and not bool((features.abs() <= bound).all()):
        largest = float(features.abs().max())
        raise ValueError(
            f"`{name}` holds values of magnitude up to {largest:.3g}, beyond float32 ({bound:.2g}), in which {what}"
            " stores the candidate features. Pass embeddings of ordinary scale (CLIP's are L2-normalised)."
        )
    return features


def check_references(
    references: object, count: int, dim: Optional[int], reference_mask: object = None, check_finite: bool = True
) -> tuple[Tensor, Tensor]:
    """Check the reference captions' features of ``count`` candidate pairs; return them flattened with their owners.

    ``references`` is a list of ``count`` tensors ``(R_i, dim)`` (``R_i >= 1``), or a tensor ``(count, R, dim)``
    with an optional boolean ``reference_mask`` ``(count, R)`` that marks the real references among padding
    (``None``: all of them). Masked-out rows are never read, so they may hold anything.

    Returns:
        ``(flat, owners)``: the ``T`` references ``(T, dim)`` and, for each, the index of its pair (int64 ``(T,)``).

    Raises:
        TypeError: If ``references`` or ``reference_mask`` has the wrong type.
        ValueError: If a shape is wrong, a pair has no reference, or a reference is NaN, Inf or too large.

    Example:
        >>> flat, owners = check_references([torch.ones(2, 3), torch.ones(1, 3)], 2, 3)
        >>> flat.shape, owners.tolist()
        (torch.Size([3, 3]), [0, 0, 1])
        >>> check_references(torch.ones(2, 4, 3), 2, 3, torch.tensor([[True] * 4, [False] * 4]))
        Traceback (most recent call last):
        ...
        ValueError: `reference_mask` leaves 1 pair(s) without a reference (the first is pair 1); every candidate \
needs at least one.
    """
    expected = f"a list of {count} tensors of shape (R_i, {dim if dim is not None else 'features'})"
    if isinstance(references, Tensor):
        if references.dtype not in FLOATING_DTYPES:
            raise TypeError(f"`references` must be a floating tensor, got {references.dtype}.")
        if references.ndim != 3 or references.shape[0] != count or (dim is not None and references.shape[2] != dim):
            raise ValueError(
                f"`references` must be {expected}, or a tensor of shape ({count}, R, {dim}) with a `reference_mask`,"
                f" got a tensor of shape {tuple(references.shape)}."
            )
        if references.shape[1] == 0 and count > 0:
            raise ValueError("`references` has R = 0 references per pair; every candidate needs at least one.")
        if reference_mask is None:
            mask = torch.ones(references.shape[:2], dtype=torch.bool, device=references.device)
        else:
            if not isinstance(reference_mask, Tensor) or reference_mask.dtype != torch.bool:
                found = reference_mask.dtype if isinstance(reference_mask, Tensor) else type(reference_mask).__name__
                raise TypeError(f"`reference_mask` must be a bool tensor of shape (B, R), got {found}.")
            if reference_mask.shape != references.shape[:2]:
                raise ValueError(
                    f"`reference_mask` must have shape {tuple(references.shape[:2])} (pairs, references), got"
                    f" {tuple(reference_mask.shape)}."
                )
            if reference_mask.device != references.device:
                raise ValueError(
                    f"`reference_mask` must be on the device of `references` ({references.device}), got"
                    f" {reference_mask.device}."
                )
            mask = reference_mask
        empty = ~mask.any(dim=1)
        if bool(empty.any()):
            raise ValueError(
                f"`reference_mask` leaves {int(empty.sum())} pair(s) without a reference (the first is pair"
                f" {int(empty.nonzero()[0, 0])}); every candidate needs at least one."
            )
        flat = references[mask]
        owners = torch.arange(count, device=references.device).repeat_interleave(mask.sum(dim=1))
        check_features(flat, "references", dim, check_finite=check_finite)
        return flat, owners
    if reference_mask is not None:
        raise ValueError(
            "`reference_mask` marks the real references of a (B, R, D) tensor of `references`; a list of tensors"
            " needs none (each holds its own R_i references)."
        )
    if not isinstance(references, (list, tuple)):
        raise TypeError(
            f"`references` must be {expected}, or a tensor of shape ({count}, R, {dim}), got"
            f" {type(references).__name__}."
        )
    if len(references) != count:
        raise ValueError(f"`references` must hold one entry per pair ({count}), got {len(references)}.")
    if count == 0:
        return torch.empty(0, dim or 0), torch.empty(0, dtype=torch.int64)
    checked = []
    for index, item in enumerate(references):
        item = check_features(item, f"references[{index}]", dim, check_finite=check_finite)
        if item.shape[0] == 0:
            raise ValueError(f"`references[{index}]` holds no reference; every candidate needs at least one.")
        if item.device != references[0].device:
            raise ValueError(
                f"`references[{index}]` is on {item.device}, unlike `references[0]` ({references[0].device})."
            )
        checked.append(item)
    lengths = torch.tensor([item.shape[0] for item in checked], device=checked[0].device)
    dtype = torch.promote_types(checked[0].dtype, torch.float32)
    flat = torch.cat([item.to(dtype) for item in checked])
    return flat, torch.arange(count, device=flat.device).repeat_interleave(lengths)


def check_reference_captions(references: object, count: int) -> list[list[str]]:
    """Check the reference captions (a list of ``count`` non-empty lists of strings) and return them.

    Raises:
        TypeError: If ``references`` or one of its entries is not a list of strings.
        ValueError: If the number of entries differs from ``count`` or an entry is empty.

    Example:
        >>> check_reference_captions([["a dog"], []], 2)
        Traceback (most recent call last):
        ...
        ValueError: `references[1]` holds no reference caption; every candidate needs at least one.
    """
    if not isinstance(references, (list, tuple)):
        raise TypeError(
            f"`references` must be a list of {count} lists of reference captions, got {type(references).__name__}."
        )
    if len(references) != count:
        raise ValueError(f"`references` must hold one list of captions per pair ({count}), got {len(references)}.")
    checked = []
    for index, captions in enumerate(references):
        if not isinstance(captions, (list, tuple)) or not all(isinstance(text, str) for text in captions):
            raise TypeError(f"`references[{index}]` must be a list of strings, got {captions!r:.80}.")
        if len(captions) == 0:
            raise ValueError(f"`references[{index}]` holds no reference caption; every candidate needs at least one.")
        checked.append(list(captions))
    return checked


def check_caption_list(value: object, name: str, expected: Optional[int] = None) -> list[str]:
    """Check that ``value`` is a list of strings (of length ``expected`` when given) and return it as a list.

    Raises:
        TypeError: If ``value`` is a single string or holds something other than strings.
        ValueError: If its length differs from ``expected``.

    Example:
        >>> check_caption_list(["a cat", 3], "images")
        Traceback (most recent call last):
        ...
        TypeError: `images` must be a list of strings (captions), got int at position 1.
    """
    if isinstance(value, str) or not isinstance(value, (list, tuple)):
        found = "a single str; wrap it in a list" if isinstance(value, str) else type(value).__name__
        raise TypeError(f"`{name}` must be a list of strings (captions), got {found}.")
    for index, text in enumerate(value):
        if not isinstance(text, str):
            raise TypeError(
                f"`{name}` must be a list of strings (captions), got {type(text).__name__} at position {index}."
            )
    if expected is not None and len(value) != expected:
        raise ValueError(f"`{name}` must hold {expected} captions (one per pair), got {len(value)}.")
    return list(value)
