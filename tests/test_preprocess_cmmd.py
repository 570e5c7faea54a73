"""``preprocess="cmmd"``: the CMMD paper's image preprocessing, against an independent PIL/numpy implementation.

The CMMD reference code crops each image to its largest centred square with floored offsets, resizes that square
to the model's size with PIL's bicubic filter (antialiased when it shrinks), divides by 255 and applies CLIP's
normalisation. The implementation here slices numpy arrays for the crop and normalises in numpy.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("PIL")
from PIL import Image  # noqa: E402

from mid_metric.features.preprocess import PixelPipeline, check_preprocess, cmmd_pixels  # noqa: E402

MEAN = np.array([0.48145466, 0.4578275, 0.40821073], dtype=np.float32)
STD = np.array([0.26862954, 0.26130258, 0.27577711], dtype=np.float32)


def reference_cmmd(image: Image.Image, n: int) -> np.ndarray:
    """RGB array, centred square of side min(w, h) at floor((w - side) / 2), bicubic to n x n, /255, normalised."""
    rgb = np.asarray(image.convert("RGB"))
    height, width = rgb.shape[:2]
    side = min(width, height)
    top, left = int(np.floor((height - side) / 2)), int(np.floor((width - side) / 2))
    square = Image.fromarray(np.ascontiguousarray(rgb[top : top + side, left : left + side]))
    resized = np.asarray(square.resize((n, n), Image.BICUBIC), dtype=np.float32) / np.float32(255.0)
    return ((resized - MEAN) / STD).transpose(2, 0, 1)


def _pictures() -> list[Image.Image]:
    rng = np.random.default_rng(5)
    pictures = []
    for width, height in ((53, 40), (40, 53), (37, 37), (24, 61), (200, 101)):
        array = rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)
        pictures.append(Image.fromarray(array))
    grey = Image.fromarray(rng.integers(0, 256, size=(45, 30), dtype=np.uint8))  # mode L
    rgba = Image.fromarray(rng.integers(0, 256, size=(31, 44, 4), dtype=np.uint8))  # mode RGBA: alpha dropped
    palette = pictures[0].convert("P")  # mode P: its colours, resized as RGB
    return [*pictures, grey, rgba, palette]


@pytest.mark.parametrize("size", [16, 36])
def test_cmmd_pixels_equal_an_independent_implementation(size):
    pictures = _pictures()
    assert {picture.mode for picture in pictures} == {"RGB", "L", "RGBA", "P"}
    got = cmmd_pixels(pictures, size)
    assert got.shape == (len(pictures), 3, size, size) and got.dtype == torch.float32
    for index, picture in enumerate(pictures):
        np.testing.assert_allclose(got[index].numpy(), reference_cmmd(picture, size), rtol=0, atol=1e-6)
    # The pipeline that the command line runs in its workers gives the same pixels.
    assert torch.equal(PixelPipeline("cmmd", size=size)(pictures), got)


def test_cmmd_crop_keeps_the_centre_and_tensors_go_through_unchanged():
    # A 7 x 4 image whose columns are 10, 20, ..., 70: the square is columns 1..4 (offset (7 - 4) // 2 = 1),
    # and at the same size (4) the bicubic resize leaves it as it is.
    columns = np.arange(1, 8, dtype=np.uint8) * 10
    array = np.repeat(np.repeat(columns[None, :, None], 4, axis=0), 3, axis=2)
    pixels = cmmd_pixels([Image.fromarray(array)], 4)
    expected = (np.array([20, 30, 40, 50], dtype=np.float32) / np.float32(255.0) - MEAN[0]) / STD[0]
    np.testing.assert_allclose(pixels[0, 0, 2].numpy(), expected, atol=1e-6)
    # A uint8 tensor batch is the same images as PIL images.
    batch = torch.from_numpy(np.stack([array, array[:, ::-1]])).permute(0, 3, 1, 2).contiguous()
    as_pil = [Image.fromarray(array), Image.fromarray(np.ascontiguousarray(array[:, ::-1]))]
    assert torch.equal(cmmd_pixels(batch, 4), cmmd_pixels(as_pil, 4))
    assert check_preprocess("cmmd") == "cmmd"
    assert cmmd_pixels([], 8).shape == (0, 3, 8, 8)


def test_load_clip_with_the_cmmd_preprocessing_encodes_its_pixels(tmp_path):
    from clip_fixtures import build_tiny_clip

    from mid_metric.features import load_clip

    extractor = load_clip(str(build_tiny_clip(tmp_path / "clip")), device="cpu", preprocess="cmmd")
    pictures = _pictures()[:3]
    size = extractor.model.config.vision_config.image_size
    expected = extractor.encode_pixels(cmmd_pixels(pictures, size))
    torch.testing.assert_close(extractor.encode_images(pictures), expected, rtol=1e-5, atol=1e-6)
    openai = load_clip(str(tmp_path / "clip"), device="cpu", preprocess="openai").encode_images(pictures)
    assert not torch.allclose(openai, expected, atol=1e-4)  # the crops differ: so do the features
