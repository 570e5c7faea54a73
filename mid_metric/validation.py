"""Checks of user input, shared by the functional API and the metric class.

Every check raises ``TypeError`` or ``ValueError`` with a message that names the offending argument; none of them
modifies anything, so a failed call leaves a metric's state as it was.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

FLOATING_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def check_features(features: object, name: str, dim: Optional[int] = None, check_finite: bool = True) -> Tensor:
    """Check that ``features`` is a finite floating tensor of shape ``(B, dim)`` and return it.

    Args:
        features: The value to check.
        name: Argument name used in error messages.
        dim: Expected feature size, or ``None`` to accept any.
        check_finite: Whether to reject NaN and Inf (costs one host synchronisation on CUDA).

    Raises:
        TypeError: If ``features`` is not a tensor, or not of a floating dtype.
        ValueError: If the shape is wrong or a value is NaN or infinite.

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
    if check_finite and features.numel() > 0 and not bool(torch.isfinite(features).all()):
        bad = int((~torch.isfinite(features)).any(dim=1).sum())
        raise ValueError(f"`{name}` contains NaN or Inf values (in {bad} of {features.shape[0]} rows).")
    return features


def check_pairs(
    images: object, texts: object, dim_x: Optional[int] = None, dim_y: Optional[int] = None, prefix: str = ""
) -> tuple[Tensor, Tensor]:
    """Check a batch of (image, text) feature pairs and return them.

    Args:
        images: Image features ``(B, dim_x)``.
        texts: Text features ``(B, dim_y)``.
        dim_x: Expected image feature size, or ``None``.
        dim_y: Expected text feature size, or ``None``.
        prefix: Prefix of the argument names in messages, such as ``"reference_"``.

    Raises:
        TypeError: See :func:`check_features`.
        ValueError: See :func:`check_features`, or if the two batch sizes differ.

    Example:
        >>> check_pairs(torch.zeros(3, 2), torch.zeros(4, 2))
        Traceback (most recent call last):
        ...
        ValueError: `images` and `texts` must hold the same number of pairs, got 3 images and 4 texts.
    """
    images = check_features(images, f"{prefix}images", dim_x, check_finite=False)
    texts = check_features(texts, f"{prefix}texts", dim_y, check_finite=False)
    if images.shape[0] != texts.shape[0]:
        raise ValueError(
            f"`{prefix}images` and `{prefix}texts` must hold the same number of pairs,"
            f" got {images.shape[0]} images and {texts.shape[0]} texts."
        )
    if images.device != texts.device:
        raise ValueError(
            f"`{prefix}images` and `{prefix}texts` must be on the same device, got {images.device} and {texts.device}."
        )
    check_features(images, f"{prefix}images", dim_x)
    check_features(texts, f"{prefix}texts", dim_y)
    return images, texts


def check_eps(eps: object) -> float:
    """Check the regulariser ``eps`` (a finite float >= 0) and return it as a float.

    Example:
        >>> check_eps(-1.0)
        Traceback (most recent call last):
        ...
        ValueError: `eps` must be a finite number >= 0, got -1.0.
    """
    if isinstance(eps, bool) or not isinstance(eps, (int, float)):
        raise TypeError(f"`eps` must be a float >= 0, got {type(eps).__name__}.")
    if not (eps >= 0.0 and eps < float("inf")):
        raise ValueError(f"`eps` must be a finite number >= 0, got {eps}.")
    return float(eps)
