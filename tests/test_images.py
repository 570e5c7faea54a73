"""Images of every bit depth and mode reach CLIP's pipelines as the files say: scaled to 8 bits, never clipped.

- 16-bit files (PNG, TIFF) are scaled by their full scale, ``round(v / 257)``; float files (mode ``F``) in
  ``[0, 1]`` by ``round(255 v)``; mode ``I`` as 16-bit data; anything whose range is not known is refused.
- The command line's loader keeps the file's mode, so palette, RGBA and CMYK files go through OpenAI's order
  (resize in their own mode, RGB after the crop), which ``preprocess_reference.reference_openai`` writes out.

The expected 8-bit values are computed here with numpy from the rule, not with the package's helpers.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from preprocess_reference import MEAN, STD, reference_openai

from mid_metric.features import images_to_float_list, openai_pixels, text_to_image_pixels
from mid_metric.features.preprocess import to_pil_images
from mid_metric.io.pairs import Pair, PairsError, load_image

pytestmark = pytest.mark.filterwarnings("ignore:Palette images with Transparency:UserWarning")


def saved(image: Image.Image, path: Path, **options) -> Path:
    image.save(path, **options)
    return path


def load(path: Path):
    """The image as the command line loads it (row 1 of a pairs file in the same folder)."""
    return load_image(Pair(row=1, image=path.name, image_path=path, caption="a caption"), path.parent / "pairs.csv")


def ramp(height: int, width: int, top: float) -> np.ndarray:
    """Values from 0 to ``top`` across the image, with a different phase per row (float64)."""
    yy, xx = np.mgrid[0:height, 0:width]
    return ((xx * 7 + yy * 3) % (width + 5)) / (width + 4) * top


def eight_bit_of_16(values: np.ndarray) -> np.ndarray:
    return np.floor(values.astype(np.float64) * 255.0 / 65535.0 + 0.5).astype(np.uint8)


def grey_pixels(level: int) -> float:
    """OpenAI's normalised red value of a uniform grey image of 8-bit ``level``."""
    return float((np.float32(level) / np.float32(255.0) - MEAN[0]) / STD[0])


# ---------------------------------------------------------------------------------------------------- 16 bits
def test_a_16_bit_mid_grey_png_reads_mid_grey(tmp_path):
    path = saved(Image.fromarray(np.full((30, 40), 32768, dtype=np.uint16)), tmp_path / "grey16.png")
    image = load(path)
    assert image.mode == "I;16"  # the file's own mode, not RGB
    # 32768 / 257 = 127.5..., so mid-grey is 128 of 255; clipped, it read as 255 (white).
    assert openai_pixels([image], 24)[0, 0].flatten().tolist() == pytest.approx([grey_pixels(128)] * 576, abs=1e-6)
    unit = images_to_float_list([image])[0]
    assert torch.equal(unit, torch.full((3, 30, 40), 128 / 255.0))
    assert float(text_to_image_pixels([image], 16)[0, 0].mean()) == pytest.approx(grey_pixels(128), abs=1e-5)


@pytest.mark.parametrize(("suffix", "dtype"), [(".png", "<u2"), (".tif", "<u2"), (".tif", ">u2")])
def test_16_bit_files_are_scaled_by_their_full_scale(tmp_path, suffix, dtype):
    values = np.round(ramp(37, 53, 65535.0)).astype(dtype)
    values[0, :3] = [0, 65535, 128]  # both ends, and the first value that rounds up (128 / 257 = 0.498...)
    path = saved(Image.fromarray(values), tmp_path / f"ramp{suffix}")
    image = load(path)
    assert image.mode.startswith("I;16")
    expected = eight_bit_of_16(values)
    assert expected[0, :3].tolist() == [0, 255, 0]
    # OpenAI's pipeline on the 8-bit grey image the rule gives, written out independently
    np.testing.assert_allclose(
        openai_pixels([image], 24)[0].numpy(), reference_openai(Image.fromarray(expected), 24), atol=1e-6
    )
    got = images_to_float_list([image])[0]
    np.testing.assert_array_equal((got[0] * 255).round().numpy().astype(np.uint8), expected)


def test_mode_i_is_read_as_16_bit_data_and_other_ranges_are_refused():
    values = np.round(ramp(20, 24, 65535.0)).astype(np.int32)
    image = Image.fromarray(values)
    assert image.mode == "I"
    np.testing.assert_array_equal(np.asarray(to_pil_images([image])[0]), eight_bit_of_16(values))
    for bad, shown in ((70000, r"\[0, 70000\]"), (-1, r"\[-1, 0\]")):
        values = np.zeros((4, 4), dtype=np.int32)
        values[0, 0] = bad
        with pytest.raises(
            ValueError, match=rf"`images\[1\]` is a 32-bit integer image \(mode I\) with values in {shown}"
        ):
            openai_pixels([Image.new("L", (4, 4)), Image.fromarray(values)], 8)
        with pytest.raises(ValueError, match="0..65535"):
            images_to_float_list([Image.fromarray(values)])


def test_a_32_bit_integer_tiff_out_of_the_16_bit_range_is_refused_not_clipped(tmp_path):
    path = saved(Image.fromarray(np.full((8, 8), 2**30, dtype=np.int32)), tmp_path / "int32.tif")
    image = load(path)
    assert image.mode == "I"
    with pytest.raises(ValueError, match="mode I"):
        openai_pixels([image], 8)


# ---------------------------------------------------------------------------------------------------- floats
def test_a_float_tiff_in_unit_range_reads_as_its_values(tmp_path):
    values = ramp(33, 45, 1.0).astype(np.float32)
    values[0, :2] = [0.0, 1.0]
    path = saved(Image.fromarray(values), tmp_path / "float.tif")
    image = load(path)
    assert image.mode == "F"
    expected = np.round(values * np.float32(255.0)).astype(np.uint8)  # round(255 v), half to even
    # clipped to 0..255 as PIL converts F to RGB, every value in [0, 1) was black
    np.testing.assert_allclose(
        openai_pixels([image], 24)[0].numpy(), reference_openai(Image.fromarray(expected), 24), atol=1e-6
    )
    np.testing.assert_array_equal((images_to_float_list([image])[0][1] * 255).round().numpy(), expected)
    # the same values as a float tensor give the same pixels
    tensor = torch.from_numpy(values).expand(3, -1, -1)
    assert torch.equal(openai_pixels([tensor], 24), openai_pixels([image], 24))


@pytest.mark.parametrize(
    ("fill", "message"), [(255.0, r"got values in \[0, 255\]"), (-0.5, r"\[-0.5, 0\]"), (float("nan"), "NaN or Inf")]
)
def test_float_images_outside_the_unit_range_are_refused(fill, message):
    values = np.zeros((5, 6), dtype=np.float32)
    values[2, 3] = fill
    image = Image.fromarray(values)
    for convert in (lambda batch: openai_pixels(batch, 8), images_to_float_list):
        with pytest.raises(ValueError, match=r"`images\[0\]` is a float image \(mode F\), .*\[0, 1\]") as info:
            convert([image])
        assert info.match(message)


def test_integer_tensors_other_than_uint8_are_refused_with_the_way_out():
    for dtype in (torch.int16, torch.int32, torch.int64):
        for convert in (lambda batch: openai_pixels(batch, 8), images_to_float_list):
            with pytest.raises(TypeError, match=r"must be uint8 \(0..255\) or floating point .*full scale"):
                convert([torch.zeros(3, 4, 4, dtype=dtype)])
    with pytest.raises(ValueError, match=r"float tensor, so its values must lie in \[0, 1\], got NaN or Inf"):
        images_to_float_list(torch.full((1, 3, 2, 2), float("inf")))


# ---------------------------------------------------------------------------------------------------- modes
def smooth_rgba(width: int, height: int) -> Image.Image:
    yy, xx = np.mgrid[0:height, 0:width]
    channels = [127 + 100 * np.sin(xx / 4 + c) * np.cos(yy / 5 - c) for c in range(3)]
    alpha = 255 * ((xx // 6 + yy // 5) % 2)  # hard alpha edges: resizing premultiplied differs from RGB
    return Image.fromarray(np.clip(np.stack([*channels, alpha], axis=-1), 0, 255).astype(np.uint8), mode="RGBA")


@pytest.mark.parametrize(
    ("mode", "suffix"), [("P", ".png"), ("RGBA", ".png"), ("CMYK", ".tif"), ("CMYK", ".jpg"), ("LA", ".png")]
)
def test_the_cli_loader_keeps_the_mode_so_openai_order_holds(tmp_path, mode, suffix):
    source = smooth_rgba(47, 38)
    if mode == "CMYK":  # four free channels (an RGB image converted to CMYK has no black, K = 0)
        layers = np.asarray(source)
        picture = Image.fromarray(
            np.stack([layers[..., 0], layers[..., 1], layers[..., 2] // 2, layers[..., 3]], -1), mode
        )
    else:
        picture = source if mode == "RGBA" else source.convert(mode)
    path = saved(picture, tmp_path / f"picture{suffix}")
    image = load(path)
    with Image.open(path) as opened:
        assert image.mode == opened.mode == mode
        expected = reference_openai(opened, 24)  # resize in the file's mode, RGB after the crop
        converted_first = reference_openai(opened.convert("RGB"), 24)
    np.testing.assert_allclose(openai_pixels([image], 24)[0].numpy(), expected, atol=1e-6)
    # converting to RGB at load time (as 0.3.1 did) gives other pixels: the test can tell the two orders apart
    assert np.abs(converted_first - expected).max() > 1e-2


def test_a_truncated_file_still_fails_at_load_time(tmp_path):
    path = saved(smooth_rgba(64, 64).convert("RGB"), tmp_path / "whole.png")
    cut = tmp_path / "cut.png"
    cut.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(PairsError, match=r"pairs\.csv, row 1: cannot read image .*cut\.png"):
        load(cut)
    assert load(path).size == (64, 64)
