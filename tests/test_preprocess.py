"""OpenAI CLIP's image preprocessing, against an independent implementation of the same steps in numpy and PIL.

The reference (:mod:`preprocess_reference`) follows torchvision's documented behaviour step by step, with numpy
arrays and index arithmetic rather than the package's helpers; the MID paper's text-to-image variant is checked
against a bilinear resize written out in numpy.
"""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"

import numpy as np
import pytest
import torch
from clip_fixtures import build_tiny_clip
from PIL import Image
from preprocess_reference import MEAN, STD, reference_bilinear, reference_openai

from mid_metric.features import PREPROCESSING, load_clip, openai_pixels, text_to_image_pixels

pytest.importorskip("transformers")
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::FutureWarning")


def smooth_image(width: int, height: int, seed: int, mode: str = "RGB") -> Image.Image:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    base = np.stack([np.sin(xx / 5 + c) * np.cos(yy / 7 - c) for c in range(3)], axis=-1)
    pixels = np.clip(127 + 90 * base + rng.normal(0, 25, size=base.shape), 0, 255).astype(np.uint8)
    image = Image.fromarray(pixels)
    return image.convert(mode) if mode != "RGB" else image


# (width, height): landscape, portrait, square, and long sides whose crop offset is k + 0.5 with k even and odd
SIZES = [(50, 37), (37, 50), (40, 40), (33, 32), (64, 43), (43, 66), (32, 32), (100, 31)]


@pytest.mark.parametrize("size", SIZES)
def test_openai_pixels_equal_the_independent_pipeline(size):
    image = smooth_image(*size, seed=sum(size))
    expected = reference_openai(image, 32)
    got = openai_pixels([image], 32)
    assert got.shape == (1, 3, 32, 32) and got.dtype == torch.float32
    np.testing.assert_allclose(got[0].numpy(), expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "CMYK"])
def test_other_modes_are_resized_in_their_mode_then_converted(mode):
    image = smooth_image(45, 38, seed=3, mode=mode)
    np.testing.assert_allclose(openai_pixels([image], 24)[0].numpy(), reference_openai(image, 24), atol=1e-6)


def test_the_crop_offset_is_rounded_as_torchvision_does():
    # 64 x 43 -> 47 x 32: offset (47 - 32) / 2 = 7.5 rounds to 8 (floor, as Hugging Face's processor does, is 7).
    image = smooth_image(64, 43, seed=5)
    resized = np.asarray(image.resize((47, 32), Image.BICUBIC), dtype=np.float32) / np.float32(255.0)
    eight = ((resized[:, 8:40] - MEAN) / STD).transpose(2, 0, 1)
    seven = ((resized[:, 7:39] - MEAN) / STD).transpose(2, 0, 1)
    got = openai_pixels([image], 32)[0].numpy()
    np.testing.assert_allclose(got, eight, atol=1e-6)
    assert np.abs(got - seven).max() > 0.1


def test_tensor_inputs_match_pil_inputs():
    images = [smooth_image(41, 35, seed=s) for s in range(3)]
    arrays = [torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1) for image in images]
    from_pil = openai_pixels(images, 28)
    assert torch.equal(openai_pixels(arrays, 28), from_pil)  # uint8 tensors: converted exactly
    assert torch.equal(openai_pixels(torch.stack(arrays), 28), from_pil)  # a batch tensor
    floats = [array.float() / 255 for array in arrays]  # float tensors: rounded to the same 8 bits
    assert torch.equal(openai_pixels(floats, 28), from_pil)


def test_text_to_image_protocol_equals_the_independent_pipeline():
    for size in [(300, 260), (260, 300), (512, 256)]:
        image = smooth_image(*size, seed=size[0])
        # Resize(256) + CenterCrop(256) with PIL's bilinear filter, to [0, 1], bilinear to 32, then normalise.
        w, h = image.size
        scaled = (256, (256 * h) // w) if w <= h else ((256 * w) // h, 256)
        resized = np.asarray(image.resize(scaled, Image.BILINEAR), dtype=np.float32) / np.float32(255.0)
        top, left = int(np.round((scaled[1] - 256) / 2)), int(np.round((scaled[0] - 256) / 2))
        unit = resized[top : top + 256, left : left + 256].transpose(2, 0, 1)
        expected = (reference_bilinear(unit, 32) - MEAN[:, None, None]) / STD[:, None, None]
        np.testing.assert_allclose(text_to_image_pixels([image], 32)[0].numpy(), expected, atol=2e-5)


def test_bad_images_name_the_position():
    with pytest.raises(ValueError, match=r"`images\[1\]` is a float tensor"):
        openai_pixels([torch.zeros(3, 4, 4), torch.full((3, 4, 4), 2.0)], 8)
    with pytest.raises(TypeError, match=r"`images\[0\]` must be a PIL image"):
        openai_pixels(["cat.png"], 8)
    with pytest.raises(ValueError, match=r"\(3, H, W\)"):
        openai_pixels([torch.zeros(4, 4, 4)], 8)


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    return build_tiny_clip(tmp_path_factory.mktemp("tiny-clip-preprocess"))


def test_extractor_uses_the_chosen_pipeline(clip_dir):
    import transformers

    model = transformers.CLIPModel.from_pretrained(clip_dir).eval()
    images = [smooth_image(64, 43, seed=1), smooth_image(35, 52, seed=2)]
    pixels = torch.from_numpy(np.stack([reference_openai(image, 32) for image in images]))
    with torch.no_grad():
        output = model.get_image_features(pixel_values=pixels)
    expected = getattr(output, "pooler_output", output)
    expected = expected / expected.norm(dim=1, keepdim=True)
    extractor = load_clip(str(clip_dir), preprocess="openai")
    assert extractor.preprocess == "openai" and "preprocess='openai'" in repr(extractor)
    torch.testing.assert_close(extractor.encode_images(images), expected, rtol=1e-5, atol=1e-6)
    default = load_clip(str(clip_dir))
    assert default.preprocess == "processor" and "preprocess" not in repr(default)
    # Hugging Face's processor floors the crop offset: the 64 x 43 image is cropped one pixel further left.
    assert not torch.allclose(default.encode_images(images[:1]), expected[:1], atol=1e-4)
    t2i = load_clip(str(clip_dir), preprocess="mid-t2i").encode_images(images)
    assert t2i.shape == (2, extractor.image_dim)


def test_unknown_preprocess_is_refused(clip_dir):
    assert PREPROCESSING == ("processor", "openai", "mid-t2i", "cmmd")
    with pytest.raises(ValueError, match="`preprocess` must be one of 'processor', 'openai', 'mid-t2i', 'cmmd'"):
        load_clip(str(clip_dir), preprocess="torchvision")


@pytest.mark.parametrize("preprocess", PREPROCESSING)
def test_every_pipeline_reads_a_16_bit_image_as_its_8_bit_equivalent(clip_dir, preprocess):
    # 16-bit samples v are read as round(v / 257) (never clipped to 255): a 16-bit ramp gives the features of the
    # 8-bit ramp it scales to, and a float image (mode F) in [0, 1] those of round(255 v)
    extractor = load_clip(str(clip_dir), preprocess=preprocess)
    yy, xx = np.mgrid[0:40, 0:52]
    sixteen = ((xx * 1201 + yy * 977) % 65536).astype(np.uint16)
    eight = np.floor(sixteen / 257.0 + 0.5).astype(np.uint8)
    floats = (eight / np.float32(255.0)).astype(np.float32)
    images = [Image.fromarray(sixteen), Image.fromarray(floats)]
    assert [image.mode for image in images] == ["I;16", "F"]
    expected = extractor.encode_images([Image.fromarray(eight)] * 2)
    torch.testing.assert_close(extractor.encode_images(images), expected, rtol=0, atol=1e-6)
    clipped = extractor.encode_images([Image.fromarray(np.minimum(sixteen, 255).astype(np.uint8))])
    assert (clipped[0] - expected[0]).abs().max() > 1e-3  # what 0.3.1 computed differs


def test_text_to_image_pixels_do_not_depend_on_threads_or_batches():
    # torch splits its bilinear kernel between threads, and the split moves the last bit of some values; the
    # pipeline resizes on one thread, so a DataLoader worker (one thread) and the main process agree bit for bit
    images = [smooth_image(300 + 7 * s, 260 + 5 * s, seed=s) for s in range(6)]
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(4)
        several = text_to_image_pixels(images, 224)
        assert torch.get_num_threads() == 4  # restored
        torch.set_num_threads(1)
        one = text_to_image_pixels(images, 224)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(several, one)
    assert torch.equal(torch.cat([text_to_image_pixels([image], 224) for image in images]), one)


@pytest.mark.parametrize("preprocess", PREPROCESSING)
def test_the_pipeline_of_an_extractor_is_what_encode_images_runs(clip_dir, preprocess):
    extractor = load_clip(str(clip_dir), preprocess=preprocess)
    images = [smooth_image(64, 43, seed=1), smooth_image(35, 52, seed=2, mode="P")]
    pixels = extractor.pipeline(images)
    assert pixels.shape == (2, 3, 32, 32) and pixels.dtype == torch.float32
    torch.testing.assert_close(extractor.encode_pixels(pixels), extractor.encode_images(images), rtol=0, atol=0)
    arrays = [torch.from_numpy(np.asarray(image.convert("RGB")).copy()).permute(2, 0, 1) for image in images]
    # uint8 tensors reach every pipeline as the 8-bit RGB images they hold, the processor's included
    assert torch.equal(
        extractor.encode_images(arrays), extractor.encode_images([image.convert("RGB") for image in images])
    )
