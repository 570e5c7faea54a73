"""Raw inputs of feature extractors: image batches and captions, checked and converted; L2 normalisation.

**Bit depth.** CLIP's pipelines take 8-bit images, and every image reaches them through one rule, never a clip:

- uint8 tensors and 8-bit PIL images (modes ``1``, ``L``, ``P``, ``RGB``, ``RGBA``, ``CMYK``, ...) are used as they
  are;
- float tensors and float PIL images (mode ``F``, e.g. a 32-bit float TIFF) must hold values in ``[0, 1]``, the
  nominal range of float images; they are rounded to ``round(255 v)``. Values outside ``[0, 1]``, NaN or Inf are
  refused;
- 16-bit PIL images (modes ``I;16``, ``I;16L``, ``I;16B``, ``I;16N``: 16-bit PNG, TIFF or PGM files) are scaled by
  their full scale, 65535 to 255: ``round(v / 257)``, so mid-grey 32768 becomes 128;
- 32-bit integer PIL images (mode ``I``) are read as 16-bit data, PIL's own convention (Pillow before 10 opens
  16-bit PNG files in mode ``I``): values in ``0..65535`` are scaled as above, and any other value is refused,
  since the image's range cannot be known;
- integer tensors other than uint8 are refused: divide them by their full scale into a float tensor first.

A PIL image of more than 8 bits becomes a mode ``L`` image (:func:`eight_bit_image`); other modes are kept, so
the pipeline that follows converts them to RGB where its own order says.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Optional, Union

import torch
from torch import Tensor

#: What ``encode_images`` accepts: a batch tensor, or a sequence of PIL images or ``(3, H, W)`` tensors.
ImageBatch = Union[Tensor, Sequence[Any]]

#: PIL modes of 16-bit samples, scaled to 8 bits by their full scale 65535.
SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")

#: The largest value of 16-bit samples, which becomes 255.
SIXTEEN_BIT_FULL_SCALE = 65535


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


def is_pil_image(image: object) -> bool:
    """Whether ``image`` looks like a PIL image (duck-typed, so that PIL is imported only when one is passed)."""
    return hasattr(image, "convert") and hasattr(image, "size") and hasattr(image, "mode")


def _check_unit_range(values: Tensor, what: str) -> None:
    """Raise unless every value of the float tensor ``values`` is finite and in ``[0, 1]``."""
    if values.numel() == 0:
        return
    finite = torch.isfinite(values)
    if not bool(finite.all()):
        raise ValueError(f"{what}, so its values must lie in [0, 1], got NaN or Inf.")
    low, high = float(values.min()), float(values.max())
    if low < 0.0 or high > 1.0:
        raise ValueError(f"{what}, so its values must lie in [0, 1], got values in [{low:g}, {high:g}].")


def unit_float_image(image: Tensor, where: str) -> Tensor:
    """Return a ``(3, H, W)`` or ``(N, 3, H, W)`` image tensor as float32 in ``[0, 1]`` (uint8 is divided by 255).

    Args:
        image: A uint8 tensor, or a float tensor with values in ``[0, 1]``.
        where: How error messages name the tensor, e.g. ```images[2]```.

    Raises:
        TypeError: If the tensor is neither uint8 nor floating point.
        ValueError: If it has no 3 colour channels first, or float values outside ``[0, 1]`` or not finite.

    Example:
        >>> unit_float_image(torch.full((3, 1, 1), 255, dtype=torch.uint8), "`image`").flatten().tolist()
        [1.0, 1.0, 1.0]
        >>> unit_float_image(torch.full((3, 1, 1), 255.0), "`image`")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: `image` is a float tensor, so its values must lie in [0, 1], got values in [255, 255]. Pass ...
    """
    if image.ndim < 3 or image.shape[-3] != 3:
        raise ValueError(f"{where} must have 3 colour channels first, (3, H, W), got shape {tuple(image.shape)}.")
    if image.dtype == torch.uint8:
        return image.to(torch.float32) / 255.0
    if not image.is_floating_point():
        raise TypeError(
            f"{where} must be uint8 (0..255) or floating point (0..1), got {image.dtype}. Divide other integer"
            " images by their full scale (e.g. 65535 for 16-bit data) into a float tensor first."
        )
    values = image.to(torch.float32)
    try:
        _check_unit_range(values, f"{where} is a float tensor")
    except ValueError as err:
        raise ValueError(f"{err} Pass uint8 tensors for 0..255 data.") from None
    return values


def unit_to_eight_bit(values: Tensor) -> Tensor:
    """Round float values in ``[0, 1]`` to 8 bits, ``round(255 v)`` (half to even), as a uint8 tensor.

    Example:
        >>> unit_to_eight_bit(torch.tensor([0.0, 0.5, 1.0])).tolist()
        [0, 128, 255]
    """
    return (values * 255.0).round().to(torch.uint8)


def eight_bit_image(image: Any, where: str = "`image`") -> Any:
    """Return a PIL image with 8-bit samples: 8-bit modes as they are, 16-bit, 32-bit and float images scaled.

    The rule is in the module docstring: 16-bit samples become ``round(v / 257)``; mode ``I`` values must lie in
    ``0..65535`` and are scaled the same way; mode ``F`` values must lie in ``[0, 1]`` and become ``round(255 v)``.
    Scaled images come back in mode ``L``; an image of any other mode is returned itself.

    Args:
        image: A PIL image.
        where: How error messages name the image (an argument, or a file).

    Raises:
        ValueError: If a mode ``I`` image holds values outside ``0..65535``, or a mode ``F`` image values outside
            ``[0, 1]`` or NaN or Inf.

    Example:
        >>> import numpy as np
        >>> from PIL import Image
        >>> grey16 = Image.fromarray(np.full((2, 2), 32768, dtype=np.uint16))   # 16-bit mid-grey
        >>> grey16.mode, eight_bit_image(grey16).mode, eight_bit_image(grey16).getpixel((0, 0))
        ('I;16', 'L', 128)
        >>> eight_bit_image(Image.fromarray(np.full((2, 2), 0.25, dtype=np.float32))).getpixel((0, 0))
        64
        >>> eight_bit_image(Image.fromarray(np.full((2, 2), 200.0, dtype=np.float32)))
        Traceback (most recent call last):
        ...
        ValueError: `image` is a float image (mode F), so its values must lie in [0, 1], got values in [200, 200].
    """
    mode = image.mode
    if mode not in SIXTEEN_BIT_MODES and mode not in ("I", "F"):
        return image
    import numpy as np
    from PIL import Image

    if mode == "F":
        values = torch.from_numpy(np.asarray(image, dtype=np.float32).copy())
        _check_unit_range(values, f"{where} is a float image (mode F)")
        eight = unit_to_eight_bit(values)
    else:
        samples = torch.from_numpy(np.asarray(image).astype(np.int64))
        if mode == "I" and samples.numel() and (int(samples.min()) < 0 or int(samples.max()) > SIXTEEN_BIT_FULL_SCALE):
            raise ValueError(
                f"{where} is a 32-bit integer image (mode I) with values in [{int(samples.min())},"
                f" {int(samples.max())}]: only 0..{SIXTEEN_BIT_FULL_SCALE} (16-bit data) has a known range. Save"
                " it as an 8-bit or 16-bit image, or pass a float tensor in [0, 1]."
            )
        # round(v * 255 / 65535) = round(v / 257) in exact integer arithmetic (no ties: 257 is odd).
        eight = torch.div(samples * 255 * 2 + SIXTEEN_BIT_FULL_SCALE, 2 * SIXTEEN_BIT_FULL_SCALE, rounding_mode="floor")
        eight = eight.to(torch.uint8)
    return Image.fromarray(np.ascontiguousarray(eight.numpy()), mode="L")


def images_to_float_list(images: ImageBatch) -> list[Tensor]:
    """Convert any accepted image batch to a list of float32 ``(3, H, W)`` CPU tensors with values in ``[0, 1]``.

    uint8 data is divided by 255; PIL images are brought to 8 bits by :func:`eight_bit_image`, converted to RGB,
    then divided by 255. (The extractors' pipelines take 8-bit PIL images instead: an image processor handed
    floats converts each whole image back to 8 bits for its resize, which costs more than the rest of its work.)

    Raises:
        TypeError: If an image is not a tensor or a PIL image, or a tensor has an unsupported dtype.
        ValueError: If a tensor has the wrong shape, or float values (tensor or mode ``F`` image) outside
            ``[0, 1]``, or a mode ``I`` image values outside ``0..65535``.

    Example:
        >>> batch = torch.full((2, 3, 4, 4), 255, dtype=torch.uint8)
        >>> [tuple(image.shape) for image in images_to_float_list(batch)], images_to_float_list(batch)[0].max().item()
        ([(3, 4, 4), (3, 4, 4)], 1.0)
    """
    count_images(images)  # type and batch-shape check
    if isinstance(images, Tensor):
        return list(unit_float_image(images.detach().cpu(), "`images`").unbind(0))
    converted = []
    for index, image in enumerate(images):
        where = f"`images[{index}]`"
        if isinstance(image, Tensor):
            if image.ndim != 3:
                raise ValueError(f"{where} must be a (3, H, W) tensor, got shape {tuple(image.shape)}.")
            converted.append(unit_float_image(image.detach().cpu(), where))
        elif is_pil_image(image):
            import numpy as np

            array = np.asarray(eight_bit_image(image, where).convert("RGB"), dtype=np.uint8)
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
