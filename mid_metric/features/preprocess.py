"""OpenAI CLIP's own image preprocessing, reproduced with PIL and torch alone (no torchvision).

The MID paper's numbers come from OpenAI's ``clip`` package, not from Hugging Face's ``CLIPImageProcessor``. The
two are close but not identical (the processor floors the crop offset where torchvision rounds it, and it resizes
through its own array conversions), so the features differ in the last digits and, near the crop edge, by a pixel
row. :data:`PREPROCESSING` names the pipelines a :class:`~mid_metric.features.ClipFeatureExtractor` can use:

- ``"processor"``: the model's Hugging Face image processor (the default of :func:`~mid_metric.features.load_clip`),
  handed 8-bit RGB PIL images (its ``do_rescale`` divides by 255, as for the files it is usually given);
- ``"openai"``: OpenAI CLIP's ``_transform(n_px)``, which the CLIPScore authors use too: a PIL **bicubic** resize of
  the short side to ``n_px`` (the long side becomes ``int(n_px * long / short)``), a center crop of ``n_px x n_px``
  whose offsets are ``int(round((side - n_px) / 2))``, conversion to RGB, ``/ 255`` in float32, then
  ``(x - mean) / std`` with CLIP's mean ``(0.48145466, 0.4578275, 0.40821073)`` and std
  ``(0.26862954, 0.26130258, 0.27577711)``;
- ``"mid-t2i"``: the MID paper's text-to-image protocol (its ``coco.py`` and ``main.py``): a PIL **bilinear**
  resize of the short side to 256 and a center crop to ``256 x 256``, ``/ 255``, then a bilinear resize of that
  tensor to ``n_px x n_px`` without antialiasing (torchvision's tensor default before 0.17) and the same
  normalisation;
- ``"cmmd"``: the CMMD paper's reference code (google-research ``cmmd/io_util.py``): the image converted to RGB,
  cropped to its largest centred square (offsets ``(side - short) // 2``, floored), resized to ``n_px x n_px``
  with PIL's **bicubic** filter (antialiased when it shrinks), ``/ 255``, then the same normalisation. Use it with
  CLIP ViT-L/14 at 336 px (``n_px = 336``), the paper's model, for values comparable with published CMMD.

``n_px`` is the model's input size (``vision_config.image_size``: 224 for ViT-B/32 and ViT-L/14). OpenAI's pipeline
takes 8-bit images: uint8 tensors are converted to PIL images exactly, float tensors in ``[0, 1]`` are rounded to
8 bits first, and PIL images of more than 8 bits (16-bit, 32-bit integer and float) are scaled to 8 bits by the rule
of :mod:`mid_metric.features.inputs` (``round(v / 257)`` for 16-bit data, ``round(255 v)`` for floats in ``[0, 1]``),
never clipped. PIL images are then resized in their own mode (palette, RGBA, CMYK, ...) and converted to RGB after
the crop, as OpenAI's code does; the command line hands its images over in the mode of their files for this reason.

:class:`PixelPipeline` is the whole preprocessing of one extractor as a picklable callable from 8-bit PIL images to
pixel values, which the command line runs in its DataLoader workers; :func:`openai_pixels`,
:func:`text_to_image_pixels` and ``ClipFeatureExtractor.encode_images`` run the same code in the calling process.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any, Callable, Iterable, Optional

import torch
from torch import Tensor

from mid_metric.cpu_threads import one_thread
from mid_metric.features.inputs import (
    ImageBatch,
    count_images,
    eight_bit_image,
    is_pil_image,
    unit_float_image,
    unit_to_eight_bit,
)

__all__ = [
    "PREPROCESSING",
    "CLIP_MEAN",
    "CLIP_STD",
    "check_preprocess",
    "resized_size",
    "center_crop_box",
    "to_pil_images",
    "openai_pixels",
    "text_to_image_pixels",
    "square_crop_box",
    "cmmd_pixels",
    "PixelPipeline",
]

#: The image pipelines a CLIP extractor can use (see the module docstring).
PREPROCESSING = ("processor", "openai", "mid-t2i", "cmmd")

#: CLIP's per-channel mean of the RGB values in ``[0, 1]``.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)

#: CLIP's per-channel standard deviation.
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

#: The side that the MID paper's text-to-image protocol resizes and crops to before the model's own size.
TEXT_TO_IMAGE_SIDE = 256


def check_preprocess(value: object) -> str:
    """Return ``value`` if it names one of :data:`PREPROCESSING`, else raise.

    Raises:
        ValueError: If ``value`` is not one of them.

    Example:
        >>> check_preprocess("openai")
        'openai'
        >>> check_preprocess("torchvision")
        Traceback (most recent call last):
        ...
        ValueError: `preprocess` must be one of 'processor', 'openai', 'mid-t2i', 'cmmd', got 'torchvision'.
    """
    if not isinstance(value, str) or value not in PREPROCESSING:
        expected = ", ".join(repr(name) for name in PREPROCESSING)
        raise ValueError(f"`preprocess` must be one of {expected}, got {value!r}.")
    return value


def resized_size(width: int, height: int, side: int) -> tuple[int, int]:
    """The ``(width, height)`` after resizing the short side to ``side``, as torchvision's ``Resize(side)`` gives.

    Example:
        >>> resized_size(500, 375, 224)   # landscape: height 224, width int(224 * 500 / 375)
        (298, 224)
        >>> resized_size(333, 500, 224)
        (224, 336)
    """
    if width <= height:
        return side, int(side * height / width)
    return int(side * width / height), side


def center_crop_box(width: int, height: int, side: int) -> tuple[int, int, int, int]:
    """PIL crop box ``(left, top, right, bottom)`` of the centred ``side x side`` square, offsets rounded.

    Python's ``round`` (half to even) is what torchvision's ``CenterCrop`` uses.

    Example:
        >>> center_crop_box(298, 224, 224)
        (37, 0, 261, 224)
        >>> center_crop_box(225, 227, 224)   # offsets round(0.5) = 0 and round(1.5) = 2
        (0, 2, 224, 226)
    """
    left = int(round((width - side) / 2.0))
    top = int(round((height - side) / 2.0))
    return left, top, left + side, top + side


def to_pil_images(images: ImageBatch) -> list[Any]:
    """Return the batch as 8-bit PIL images: tensors converted, PIL images in their own mode when they are 8-bit.

    uint8 tensors are converted exactly and float tensors rounded to 8 bits; PIL images of more than 8 bits are
    scaled to mode ``L`` by :func:`~mid_metric.features.inputs.eight_bit_image`.

    Raises:
        TypeError: If an image is of an unsupported type or dtype.
        ValueError: If a tensor has the wrong shape or float values outside ``[0, 1]``, or a PIL image of more than
            8 bits holds values outside its range.

    Example:
        >>> [image.size for image in to_pil_images(torch.zeros(2, 3, 5, 7, dtype=torch.uint8))]
        [(7, 5), (7, 5)]
    """
    import numpy as np
    from PIL import Image

    count_images(images)  # type and batch-shape check
    items = list(images.unbind(0)) if isinstance(images, Tensor) else list(images)
    converted = []
    for index, image in enumerate(items):
        where = f"`images[{index}]`"
        if isinstance(image, Tensor):
            if image.ndim != 3 or image.shape[0] != 3:
                raise ValueError(
                    f"{where} must have 3 colour channels first, (3, H, W), got shape {tuple(image.shape)}."
                )
            image = image.detach().cpu()
            if image.dtype != torch.uint8:
                image = unit_to_eight_bit(unit_float_image(image, where))
            converted.append(Image.fromarray(np.ascontiguousarray(image.permute(1, 2, 0).numpy()), mode="RGB"))
        elif is_pil_image(image):
            converted.append(eight_bit_image(image, where))
        else:
            raise TypeError(f"{where} must be a PIL image or a (3, H, W) tensor, got {type(image).__name__}.")
    return converted


def _on_one_thread(batch_function: Callable[..., Tensor]) -> Callable[..., Tensor]:
    """Run a preprocessing function on one torch thread, then give the caller its thread count back.

    A preprocessing is many small operations on one image at a time: several threads gain little on them and lose
    much when the cores are busy (each operation waits for its slowest thread, e.g. while loader workers use the
    other cores). One thread also gives the same bits everywhere: torch's bilinear kernel splits its work between
    its threads, and where a split falls changes the last bit of some values, so the main process (many threads)
    and a DataLoader worker (one) would disagree.
    """

    @functools.wraps(batch_function)
    def on_one_thread(*args: Any) -> Tensor:
        with one_thread():
            return batch_function(*args)

    return on_one_thread


def _resize_and_crop(image: Any, side: int, resample: int) -> Any:
    """Resize the short side of a PIL image to ``side`` with ``resample``, then crop the centred square."""
    width, height = resized_size(image.size[0], image.size[1], side)
    image = image.resize((width, height), resample)
    return image.crop(center_crop_box(width, height, side))


def _to_unit_tensor(image: Any) -> Tensor:
    """A PIL image as float32 ``(3, H, W)`` in ``[0, 1]`` (``ToTensor``): converted to RGB, then divided by 255."""
    import numpy as np

    array = np.asarray(image.convert("RGB"), dtype=np.uint8)
    return torch.from_numpy(array.copy()).permute(2, 0, 1).to(torch.float32).div(255)


def _normalised(units: Iterable[Tensor], count: int, size: int) -> Tensor:
    """Stack ``count`` float ``(3, size, size)`` images in ``[0, 1]`` normalised by CLIP's mean and std.

    Each image is normalised into its slot of the batch as it comes (``(x - mean) / std``, the same operations,
    value by value, as on the whole batch), while it is still in the cache: on a batch of 64 images of 224 x 224
    this takes a third of the time of normalising the stacked batch.
    """
    mean = torch.tensor(CLIP_MEAN, dtype=torch.float32).view(3, 1, 1)
    std = torch.tensor(CLIP_STD, dtype=torch.float32).view(3, 1, 1)
    batch = torch.empty(count, 3, size, size)
    for slot, unit in zip(batch, units):
        torch.sub(unit, mean, out=slot).div_(std)
    return batch


def openai_pixels(images: ImageBatch, size: int) -> Tensor:
    """OpenAI CLIP's preprocessing of a batch: bicubic short-side resize, center crop, CLIP normalisation.

    Args:
        images: A list of PIL images or ``(3, H, W)`` tensors, or a batch tensor ``(N, 3, H, W)`` (uint8, or float
            in ``[0, 1]``, rounded to 8 bits).
        size: The model's input side ``n_px`` (224 for ViT-B/32 and ViT-L/14).

    Returns:
        Float32 ``(N, 3, size, size)`` pixel values for ``get_image_features``.

    Raises:
        TypeError: If an image is of an unsupported type or dtype.
        ValueError: If a tensor has the wrong shape or float values outside ``[0, 1]``.

    Example:
        >>> from PIL import Image
        >>> pixels = openai_pixels([Image.new("RGB", (40, 30), (255, 0, 0))], size=24)
        >>> tuple(pixels.shape), round(pixels[0, 0, 0, 0].item(), 4)   # (1 - 0.4815) / 0.2686
        ((1, 3, 24, 24), 1.9303)
    """
    return _openai_batch(to_pil_images(images), size)


@_on_one_thread
def _openai_batch(pictures: Sequence[Any], size: int) -> Tensor:
    """:func:`openai_pixels` of 8-bit PIL images."""
    from PIL import Image

    units = (_to_unit_tensor(_resize_and_crop(image, size, Image.BICUBIC)) for image in pictures)
    return _normalised(units, len(pictures), size)


def text_to_image_pixels(images: ImageBatch, size: int) -> Tensor:
    """The MID paper's text-to-image preprocessing: bilinear resize and crop to 256, then a tensor resize to ``size``.

    Args:
        images: As for :func:`openai_pixels`.
        size: The model's input side.

    Returns:
        Float32 ``(N, 3, size, size)`` pixel values.

    Raises:
        TypeError: If an image is of an unsupported type or dtype.
        ValueError: If a tensor has the wrong shape or float values outside ``[0, 1]``.

    Example:
        >>> from PIL import Image
        >>> tuple(text_to_image_pixels([Image.new("RGB", (300, 260))], size=32).shape)
        (1, 3, 32, 32)
    """
    return _text_to_image_batch(to_pil_images(images), size)


@_on_one_thread
def _text_to_image_batch(pictures: Sequence[Any], size: int) -> Tensor:
    """:func:`text_to_image_pixels` of 8-bit PIL images."""
    from PIL import Image

    side = TEXT_TO_IMAGE_SIDE

    def unit(image: Any) -> Tensor:
        square = _to_unit_tensor(_resize_and_crop(image, side, Image.BILINEAR))
        if size == side:
            return square
        return torch.nn.functional.interpolate(
            square[None], size=(size, size), mode="bilinear", align_corners=False, antialias=False
        )[0]

    return _normalised((unit(image) for image in pictures), len(pictures), size)


def square_crop_box(width: int, height: int) -> tuple[int, int, int, int]:
    """PIL crop box ``(left, top, right, bottom)`` of the largest centred square, offsets floored (CMMD's code).

    Example:
        >>> square_crop_box(300, 200)
        (50, 0, 250, 200)
        >>> square_crop_box(200, 203)   # offset (203 - 200) // 2 = 1
        (0, 1, 200, 201)
    """
    side = min(width, height)
    left, top = (width - side) // 2, (height - side) // 2
    return left, top, left + side, top + side


def cmmd_pixels(images: ImageBatch, size: int) -> Tensor:
    """The CMMD paper's preprocessing: largest centred square, bicubic resize to ``size``, CLIP normalisation.

    Args:
        images: As for :func:`openai_pixels`.
        size: The model's input side (336 for CLIP ViT-L/14-336, the paper's model).

    Returns:
        Float32 ``(N, 3, size, size)`` pixel values.

    Raises:
        TypeError: If an image is of an unsupported type or dtype.
        ValueError: If a tensor has the wrong shape or float values outside ``[0, 1]``.

    Example:
        >>> from PIL import Image
        >>> pixels = cmmd_pixels([Image.new("RGB", (60, 40), (255, 0, 0))], size=24)
        >>> tuple(pixels.shape), round(pixels[0, 0, 5, 5].item(), 4)   # (1 - 0.4815) / 0.2686
        ((1, 3, 24, 24), 1.9303)
    """
    return _cmmd_batch(to_pil_images(images), size)


@_on_one_thread
def _cmmd_batch(pictures: Sequence[Any], size: int) -> Tensor:
    """:func:`cmmd_pixels` of 8-bit PIL images."""
    from PIL import Image

    def unit(image: Any) -> Tensor:
        image = image.convert("RGB")
        return _to_unit_tensor(image.crop(square_crop_box(*image.size)).resize((size, size), Image.BICUBIC))

    return _normalised((unit(image) for image in pictures), len(pictures), size)


@_on_one_thread
def _processor_batch(image_processor: Any, pictures: Sequence[Any]) -> Tensor:
    """The image processor's pixel values of 8-bit PIL images, handed over in RGB."""
    return image_processor(images=[picture.convert("RGB") for picture in pictures], return_tensors="pt")["pixel_values"]


class PixelPipeline:
    """The whole preprocessing of one extractor: 8-bit PIL images in, float32 pixel values ``(N, 3, n, n)`` out.

    It holds only what the preprocessing needs (the choice, the model's input size, the image processor), not the
    model, so DataLoader workers can run it (it pickles for spawned workers too). Its input is what
    :func:`to_pil_images` or :func:`~mid_metric.features.inputs.eight_bit_image` gives: PIL images with 8-bit
    samples, in any mode. The ``"processor"`` choice hands them to the image processor as RGB PIL images, so it
    never converts whole images to float and back; its fast (torchvision) backend is used wherever transformers
    picks it.

    Args:
        preprocess: One of :data:`PREPROCESSING`.
        size: The model's input side ``n_px`` (``vision_config.image_size``); needed by all but ``"processor"``.
        image_processor: The model's Hugging Face image processor; needed by ``"processor"``.

    Raises:
        ValueError: If ``preprocess`` is unknown, or what it needs is missing.

    Example:
        >>> from PIL import Image
        >>> pipeline = PixelPipeline("openai", size=24)
        >>> tuple(pipeline([Image.new("RGB", (40, 30)), Image.new("L", (30, 50))]).shape)
        (2, 3, 24, 24)
    """

    def __init__(self, preprocess: str, size: Optional[int] = None, image_processor: Any = None) -> None:
        self.preprocess = check_preprocess(preprocess)
        if preprocess == "processor" and image_processor is None:
            raise ValueError("`preprocess='processor'` needs the model's `image_processor`.")
        if preprocess != "processor" and not (isinstance(size, int) and size > 0):
            raise ValueError(f"`preprocess={preprocess!r}` needs the model's input size `size`, got {size!r}.")
        self.size = size
        self.image_processor = image_processor

    def __call__(self, pictures: Sequence[Any]) -> Tensor:
        """Pixel values of a list of 8-bit PIL images, by the chosen preprocessing."""
        if self.preprocess == "openai":
            return _openai_batch(pictures, self.size)  # type: ignore[arg-type]
        if self.preprocess == "mid-t2i":
            return _text_to_image_batch(pictures, self.size)  # type: ignore[arg-type]
        if self.preprocess == "cmmd":
            return _cmmd_batch(pictures, self.size)  # type: ignore[arg-type]
        return _processor_batch(self.image_processor, pictures)

    def __repr__(self) -> str:
        return f"PixelPipeline({self.preprocess!r}, size={self.size!r})"
