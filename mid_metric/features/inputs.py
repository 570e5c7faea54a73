"""Raw inputs of feature extractors: image batches and captions, checked and converted; L2 normalisation."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Optional, Union

import torch
from torch import Tensor

#: What ``encode_images`` accepts: a batch tensor, or a sequence of PIL images or ``(3, H, W)`` tensors.
ImageBatch = Union[Tensor, Sequence[Any]]


# ---------------------------------------------------------------------------------------------------- inputs
def count_images(images: object) -> int:
    """Return the number of images in a batch tensor or a sequence of images.

    Raises:
        TypeError: If ``images`` is neither a tensor nor a list or tuple.

    Example:
        >>> count_images(torch.zeros(4, 3, 8, 8, dtype=torch.uint8)), count_images([torch.zeros(3, 8, 8)])
        (4, 1)
    """
    if isinstance(images, Tensor):
        if images.ndim != 4:
            raise ValueError(
                f"`images` must be a batch tensor of shape (N, 3, H, W) or a list of images, got shape"
                f" {tuple(images.shape)}."
            )
        return int(images.shape[0])
    if isinstance(images, (list, tuple)):
        return len(images)
    raise TypeError(
        "`images` must be a uint8 or float tensor of shape (N, 3, H, W), or a list of PIL images or (3, H, W)"
        f" tensors, got {type(images).__name__}."
    )


def check_texts(texts: object, expected: Optional[int] = None) -> list[str]:
    """Check that ``texts`` is a list (or tuple) of strings, of length ``expected`` when given, and return a list.

    Raises:
        TypeError: If ``texts`` is a single string or holds something other than strings.
        ValueError: If its length differs from ``expected``.

    Example:
        >>> check_texts(("a cat", "a dog"), expected=2)
        ['a cat', 'a dog']
        >>> check_texts("a cat")
        Traceback (most recent call last):
        ...
        TypeError: `texts` must be a list of strings (captions), got a single str; wrap it in a list.
    """
    if isinstance(texts, str):
        raise TypeError("`texts` must be a list of strings (captions), got a single str; wrap it in a list.")
    if not isinstance(texts, (list, tuple)):
        raise TypeError(f"`texts` must be a list of strings (captions), got {type(texts).__name__}.")
    for index, text in enumerate(texts):
        if not isinstance(text, str):
            raise TypeError(f"`texts` must hold only strings, got {type(text).__name__} at position {index}.")
    if expected is not None and len(texts) != expected:
        raise ValueError(
            f"`images` and `texts` must hold the same number of pairs, got {expected} images and {len(texts)} texts."
        )
    return list(texts)


def _image_tensor_to_float(image: Tensor, where: str) -> Tensor:
    """Return a ``(3, H, W)`` or ``(N, 3, H, W)`` image tensor as float32 in ``[0, 1]`` (uint8 is divided by 255)."""
    if image.shape[-3] != 3:
        raise ValueError(f"{where} must have 3 colour channels first, (3, H, W), got shape {tuple(image.shape)}.")
    if image.dtype == torch.uint8:
        return image.to(torch.float32) / 255.0
    if not image.is_floating_point():
        raise TypeError(f"{where} must be uint8 (0..255) or floating point (0..1), got {image.dtype}.")
    image = image.to(torch.float32)
    if image.numel() > 0:
        low, high = float(image.min()), float(image.max())
        if not (math.isfinite(low) and math.isfinite(high)) or low < 0.0 or high > 1.0:
            raise ValueError(
                f"{where} is a float tensor, so its values must lie in [0, 1], got values in [{low:g}, {high:g}]."
                " Pass uint8 tensors for 0..255 data."
            )
    return image


def images_to_float_list(images: ImageBatch) -> list[Tensor]:
    """Convert any accepted image batch to a list of float32 ``(3, H, W)`` CPU tensors with values in ``[0, 1]``.

    uint8 data is divided by 255; PIL images are converted to RGB first. This is the common form handed to an
    image processor with ``do_rescale=False``, which then resizes, crops and normalises exactly as it would the
    uint8 data.

    Raises:
        TypeError: If an image is not a tensor or a PIL image, or a tensor has an unsupported dtype.
        ValueError: If a tensor has the wrong shape, or float values outside ``[0, 1]``.

    Example:
        >>> batch = torch.full((2, 3, 4, 4), 255, dtype=torch.uint8)
        >>> [tuple(image.shape) for image in images_to_float_list(batch)], images_to_float_list(batch)[0].max().item()
        ([(3, 4, 4), (3, 4, 4)], 1.0)
    """
    count_images(images)  # type and batch-shape check
    if isinstance(images, Tensor):
        return list(_image_tensor_to_float(images.detach().cpu(), "`images`").unbind(0))
    converted = []
    for index, image in enumerate(images):
        where = f"`images[{index}]`"
        if isinstance(image, Tensor):
            if image.ndim != 3:
                raise ValueError(f"{where} must be a (3, H, W) tensor, got shape {tuple(image.shape)}.")
            converted.append(_image_tensor_to_float(image.detach().cpu(), where))
        elif hasattr(image, "convert") and hasattr(image, "size") and hasattr(image, "mode"):  # a PIL image
            import numpy as np

            array = np.asarray(image.convert("RGB"), dtype=np.uint8)
            converted.append(torch.from_numpy(array.copy()).permute(2, 0, 1).to(torch.float32) / 255.0)
        else:
            raise TypeError(f"{where} must be a PIL image or a (3, H, W) tensor, got {type(image).__name__}.")
    return converted


def normalize_features(features: Tensor, what: str = "features") -> Tensor:
    """Return ``features`` as float32 rows of unit L2 norm (computed in float32).

    Raises:
        ValueError: If ``features`` is not 2-D, or a row is not finite or is all zeros.

    Example:
        >>> normalize_features(torch.tensor([[3.0, 4.0]])).tolist()
        [[0.6000000238418579, 0.800000011920929]]
    """
    if features.ndim != 2:
        raise ValueError(f"The {what} must have shape (batch, dim), got {tuple(features.shape)}.")
    features = features.to(torch.float32)
    norms = torch.linalg.vector_norm(features, dim=1, keepdim=True)
    if features.numel() > 0 and not bool((torch.isfinite(norms) & (norms > 0)).all()):
        raise ValueError(f"The {what} contain NaN, Inf or all-zero rows, which cannot be L2-normalised.")
    return features / norms
