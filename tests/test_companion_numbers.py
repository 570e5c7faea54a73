"""The companion metrics at the edges of floating point, and their classes against their functions.

- Features of any scale give the value of the same directions: rows multiplied by a power of two (an exact product,
  down to norms of 1e-300 and up to 1e90) give bit for bit the value of the rows themselves, in the classes and in
  the functions (the norms alone underflowed: CLIP-S was 5e200, and the float32 store of CLIP-R-Precision held
  zeros).
- A temperature must be a normal float64; a tiny normal one gives the limit of the softmax; a huge ``weight`` does
  not overflow RefCLIP-S's harmonic mean.
- Each class, fed in uneven batches, returns what its function returns on the same pairs, and ``forward`` what the
  function returns on the batch: random, tiny and huge norms, duplicated prompts (ties), float16, float32, float64.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import pytest
import torch
from companion_refs import aligned_pairs, naive_clip_score, naive_cosine_matrix, naive_r_precision, references_for

from mid_metric import CLIPRPrecision, CLIPScore, InfoNCE, RefCLIPScore
from mid_metric.functional import clip_r_precision, clip_score, infonce, infonce_bound, ref_clip_score

D = 8
M = 40
SIZES = (1, 7, 32)  # the class's update calls

# name -> (class factory, function of (images, texts, references))
METRICS: dict[str, tuple[Callable[[], Any], Callable[..., torch.Tensor]]] = {
    "clip_s": (lambda: CLIPScore(feature=D), lambda x, y, r: clip_score(x, y)),
    "clip_s_raw": (
        lambda: CLIPScore(feature=D, clamp=False, weight=100.0),
        lambda x, y, r: clip_score(x, y, 100, False),
    ),
    "refclip_s": (lambda: RefCLIPScore(feature=D), lambda x, y, r: ref_clip_score(x, y, r)),
    "r_precision": (lambda: CLIPRPrecision(feature=D, num_negatives=9), lambda x, y, r: clip_r_precision(x, y, 9)),
    "r_precision_distinct": (
        lambda: CLIPRPrecision(feature=D, num_negatives=5, negatives="distinct"),
        lambda x, y, r: clip_r_precision(x, y, 5, "distinct"),
    ),
    "infonce": (lambda: InfoNCE(feature=D, temperature=0.05), lambda x, y, r: infonce(x, y, 0.05)),
}


def _pairs(kind: str) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
    images, texts = aligned_pairs(M, D, noise=0.9, seed=11, duplicates=4 if kind == "ties" else 0)
    references = references_for(texts, seed=12)
    if kind in ("float16", "float32", "ties"):
        dtype = torch.float16 if kind == "float16" else torch.float32
        return images.to(dtype), texts.to(dtype), [r.to(dtype) for r in references]
    scale = {"float64": 1.0, "tiny": 1e-200, "huge": 1e90}[kind]
    images, texts = images.double() * scale, texts.double() * scale
    return images, texts, [r.double() * scale for r in references]


def _class_value(name: str, images: torch.Tensor, texts: torch.Tensor, references: list) -> torch.Tensor:
    metric = METRICS[name][0]()
    start = 0
    for size in SIZES:
        rows = slice(start, start + size)
        if name == "refclip_s":
            metric.update(images[rows], texts[rows], references[rows])
        else:
            metric.update(images[rows], texts[rows])
        start += size
    return metric.compute()


@pytest.mark.parametrize("kind", ["float32", "float16", "float64", "tiny", "huge", "ties"])
@pytest.mark.parametrize("name", list(METRICS))
def test_the_class_and_the_function_agree(name, kind):
    images, texts, references = _pairs(kind)
    expected = METRICS[name][1](images, texts, references)
    torch.testing.assert_close(_class_value(name, images, texts, references), expected, rtol=1e-12, atol=1e-15)
    # forward's value is the function's on the batch alone
    metric = METRICS[name][0]()
    batch = slice(0, 24)
    arguments = (
        (images[batch], texts[batch], references[batch]) if name == "refclip_s" else (images[batch], texts[batch])
    )
    torch.testing.assert_close(
        metric(*arguments), METRICS[name][1](images[batch], texts[batch], references[batch]), rtol=1e-12, atol=1e-15
    )


@pytest.mark.parametrize("exponent", [-1000, -700, 300])
@pytest.mark.parametrize("name", list(METRICS))
def test_rows_scaled_by_a_power_of_two_give_the_same_value(name, exponent):
    images, texts, references = _pairs("float64")
    scale = 2.0**exponent
    scaled = (images * scale, texts * scale, [r * scale for r in references])
    assert torch.equal(METRICS[name][1](*scaled), METRICS[name][1](images, texts, references))
    assert torch.equal(_class_value(name, *scaled), _class_value(name, images, texts, references))


@pytest.mark.parametrize("name", list(METRICS))
def test_subnormal_rows_give_the_value_of_the_same_directions(name):
    # Rows of norm about 1e-313 are subnormal: they carry fewer bits, so the reference is the same rows brought
    # back by the (exact) power of two.
    images, texts, references = _pairs("float64")
    scale = 2.0**-1040
    tiny = (images * scale, texts * scale, [r * scale for r in references])
    normal = (tiny[0] / scale, tiny[1] / scale, [r / scale for r in tiny[2]])
    assert torch.equal(METRICS[name][1](*tiny), METRICS[name][1](*normal))
    assert torch.equal(_class_value(name, *tiny), _class_value(name, *normal))


def test_the_examples_of_the_issue():
    images, texts, _ = _pairs("float64")
    tiny_images, tiny_texts = images * 1e-200, texts * 1e-200
    assert clip_score(tiny_images, tiny_texts).item() == pytest.approx(naive_clip_score(images, texts), rel=1e-12)
    expected = naive_r_precision(images, texts, n=9)
    metric = CLIPRPrecision(feature=D, num_negatives=9)
    metric.update(tiny_images, tiny_texts)
    assert metric.compute().item() == pytest.approx(expected, rel=1e-12)
    assert clip_r_precision(tiny_images, tiny_texts, 9).item() == pytest.approx(expected, rel=1e-12)
    assert expected < 0.9  # not every pair is a hit, as zero rows made it


@pytest.mark.parametrize("temperature", [1e-310, 4e-324, math.inf, math.nan, 0.0, -1.0])
def test_a_temperature_that_is_not_a_normal_positive_float_is_refused(temperature):
    images, texts, _ = _pairs("float32")
    for call in (
        lambda: InfoNCE(feature=D, temperature=temperature),
        lambda: infonce(images, texts, temperature),
        lambda: infonce_bound(images, texts, temperature),
    ):
        with pytest.raises(ValueError, match="`temperature` must be"):
            call()


def test_a_tiny_temperature_gives_the_limit_of_the_softmax():
    images, texts, _ = _pairs("float32")  # no two captions alike: no ties
    scores = naive_cosine_matrix(images, texts)
    top = scores.max(dim=1).values
    expected = (scores.diagonal() == top).double()  # 1 where the own caption scores highest, 0 elsewhere
    assert 0 < float(expected.sum()) < M
    metric = InfoNCE(feature=D, temperature=1e-300)
    metric.update(images, texts)
    assert torch.equal(metric.per_sample(), expected)
    assert torch.equal(infonce(images, texts, 1e-300), expected.mean())
    # log p_jj = (s_jj - max_k s_jk) / temperature: finite, however negative, down to the smallest normal one.
    temperature = 2.3e-308
    bound = infonce_bound(images, texts, temperature)
    expected_bound = math.log(M) + float(((scores.diagonal() - top) / M / temperature).sum())
    assert math.isfinite(bound.item()) and expected_bound < -1e300
    assert bound.item() == pytest.approx(expected_bound, rel=1e-6)


def test_a_huge_weight_does_not_overflow_refclip_s():
    images, texts, references = _pairs("float32")
    weight = 1e308
    expected = []
    for v, c, refs in zip(images.double(), texts.double(), references):
        a = max(float(torch.nn.functional.cosine_similarity(v, c, dim=0)), 0.0)
        b = max(float(torch.nn.functional.cosine_similarity(c[None], refs.double()).max()), 0.0)
        expected.append(0.0 if a == 0 or b == 0 else 2 * b / (1 + b / (weight * a)))  # 2ab/(a+b), a = weight cos
    value = ref_clip_score(images, texts, references, weight=weight)
    assert value.item() == pytest.approx(sum(expected) / M, rel=1e-12)
    metric = RefCLIPScore(feature=D, weight=weight)
    metric.update(images, texts, references)
    assert metric.compute().item() == pytest.approx(value.item(), rel=1e-12)
    clip = CLIPScore(feature=D, weight=weight)
    clip.update(images, texts)
    assert clip.compute().item() == pytest.approx(weight * naive_clip_score(images, texts, weight=1.0), rel=1e-12)
