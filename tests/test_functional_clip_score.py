"""``clip_score`` and ``ref_clip_score`` against the formulas, the official code's twin, and bad input."""

from __future__ import annotations

import pytest
import torch
from companion_refs import (
    OfficialClipScoreTwin,
    aligned_pairs,
    naive_clip_score,
    naive_pair_cosines,
    naive_refclip,
    pad_references,
    references_for,
)

from mid_metric.functional import clip_score
from mid_metric.functional import ref_clip_score as functional_ref_clip_score

REL = 1e-12


@pytest.fixture(scope="module")
def pairs():
    return aligned_pairs(300, 16, noise=1.2, seed=1)


@pytest.mark.parametrize("weight", [2.5, 100.0, 1])
@pytest.mark.parametrize("clamp", [True, False])
def test_clip_score_matches_the_formula(pairs, weight, clamp):
    images, texts = pairs
    value = clip_score(images, texts, weight=weight, clamp=clamp)
    assert value.dtype == torch.float64 and value.ndim == 0
    assert float(value) == pytest.approx(naive_clip_score(images, texts, weight, clamp), rel=REL)


def test_the_data_has_negative_cosines_so_the_clamp_matters(pairs):
    images, texts = pairs
    assert bool((naive_pair_cosines(images, texts) < 0).any())
    assert float(clip_score(images, texts)) > float(clip_score(images, texts, clamp=False))


def test_per_pair_clamp_differs_from_torchmetrics_clamp_of_the_mean():
    # torchmetrics' CLIPScore is max(100 * mean cos, 0); ours clamps each pair: 100 * mean max(cos, 0).
    images = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    texts = torch.tensor([[1.0, 0.0], [-1.0, 0.0]])  # cosines 1 and -1
    torchmetrics_style = max(float(clip_score(images, texts, weight=100, clamp=False)), 0.0)
    assert torchmetrics_style == 0.0
    assert float(clip_score(images, texts, weight=100)) == pytest.approx(50.0, rel=REL)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_clip_score_takes_any_floating_dtype_and_returns_float64(pairs, dtype):
    images, texts = (t.to(dtype) for t in pairs)
    value = clip_score(images, texts)
    assert value.dtype == torch.float64
    assert float(value) == pytest.approx(naive_clip_score(images, texts), rel=REL)


def test_clip_score_is_a_cosine_so_row_scales_do_not_matter(pairs):
    images, texts = pairs
    scales = torch.linspace(0.1, 30.0, images.shape[0])[:, None]
    assert float(clip_score(images * scales, texts / scales)) == pytest.approx(float(clip_score(images, texts)))


def test_clip_score_without_clamp_agrees_with_the_official_code(pairs):
    images, texts = pairs
    twin = OfficialClipScoreTwin()
    for start in range(0, 300, 64):
        stop = start + 64
        twin.update(images[start:stop], texts[start:stop], images[start:stop])
    official = twin.compute()
    assert official.dtype == torch.float32  # the official code casts back to the input dtype
    ours = clip_score(images, texts, clamp=False)
    assert float(ours) == pytest.approx(float(official), rel=2e-6)


def test_caption_clip_score_is_clip_score_between_two_text_features():
    # The official "Caption" score: the twin fed the captions' text features where the generated images go.
    captions, prompts = aligned_pairs(200, 16, noise=0.8, seed=2)
    twin = OfficialClipScoreTwin()
    twin.update(torch.zeros_like(captions), prompts, captions)
    assert float(clip_score(captions, prompts, clamp=False)) == pytest.approx(float(twin.compute()), rel=2e-6)


# ---------------------------------------------------------------------------------------------- RefCLIP-S
@pytest.fixture(scope="module")
def with_references():
    images, texts = aligned_pairs(150, 16, noise=1.2, seed=3)
    return images, texts, references_for(texts, seed=4)


@pytest.mark.parametrize("weight", [2.5, 100.0])
def test_ref_clip_score_matches_the_formula_for_lists_and_padded_tensors(with_references, weight):
    images, texts, references = with_references
    expected = naive_refclip(images, texts, references, weight)
    listed = functional_ref_clip_score(images, texts, references, weight=weight)
    padded, mask = pad_references(references)
    masked = functional_ref_clip_score(images, texts, padded, weight=weight, reference_mask=mask)
    assert listed.dtype == masked.dtype == torch.float64
    assert float(listed) == pytest.approx(expected, rel=REL)
    assert float(masked) == pytest.approx(expected, rel=REL)


def test_ref_clip_score_without_a_mask_uses_every_reference(with_references):
    images, texts, _ = with_references
    padded = torch.nn.functional.normalize(torch.randn(150, 3, 16, generator=torch.Generator().manual_seed(5)), dim=2)
    expected = naive_refclip(images, texts, list(padded))
    assert float(functional_ref_clip_score(images, texts, padded)) == pytest.approx(expected, rel=REL)


def test_ref_clip_score_clamps_the_reference_similarity():
    # Every reference is opposite to the caption: b = max(-1, 0) = 0, so the harmonic mean is 0 (Hessel et al.'s
    # code, without that clamp, would give 2 * 2.5 * -1 / (2.5 - 1) = -3.33).
    images, texts = torch.eye(2)[:1], torch.eye(2)[:1]
    value = functional_ref_clip_score(images, texts, [torch.tensor([[-1.0, 0.0]])])
    assert float(value) == 0.0


def test_ref_clip_score_is_zero_when_both_parts_are_zero():
    images, texts = torch.tensor([[0.0, 1.0]]), torch.tensor([[1.0, 0.0]])  # a = 0
    assert float(functional_ref_clip_score(images, texts, [torch.tensor([[0.0, 1.0]])])) == 0.0  # b = 0


# -------------------------------------------------------------------------------------------- bad input
GOOD = (torch.eye(3), torch.eye(3))


@pytest.mark.parametrize(
    "call, error, match",
    [
        (lambda: clip_score(GOOD[0], torch.eye(3)[:2]), ValueError, "same number of pairs"),
        (lambda: clip_score(GOOD[0], torch.ones(3, 4)), ValueError, r"`texts` must have shape \(batch, 3\)"),
        (lambda: clip_score(torch.ones(3, 3, dtype=torch.int64), GOOD[1]), TypeError, "`images` must be a floating"),
        (lambda: clip_score(GOOD[0], GOOD[1].index_fill(0, torch.tensor([1]), float("nan"))), ValueError, "NaN"),
        (lambda: clip_score(torch.zeros(3, 3), GOOD[1]), ValueError, "`images` has 3 row"),
        (lambda: clip_score(torch.empty(0, 3), torch.empty(0, 3)), ValueError, "at least 1 candidate pair"),
        (lambda: clip_score(*GOOD, weight=0), ValueError, "`weight` must be a finite number > 0"),
        (lambda: clip_score(*GOOD, weight=True), TypeError, "`weight`"),
        (lambda: clip_score(*GOOD, clamp=1), TypeError, "`clamp` must be a bool"),
        (lambda: functional_ref_clip_score(*GOOD, [torch.eye(3)] * 2), ValueError, "one entry per pair"),
        (lambda: functional_ref_clip_score(*GOOD, "refs"), TypeError, "`references` must be a list"),
        (
            lambda: functional_ref_clip_score(*GOOD, [torch.eye(3), torch.empty(0, 3), torch.eye(3)]),
            ValueError,
            r"`references\[1\]` holds no reference",
        ),
        (
            lambda: functional_ref_clip_score(*GOOD, [torch.eye(3), torch.ones(2, 4), torch.eye(3)]),
            ValueError,
            r"`references\[1\]` must have shape",
        ),
        (lambda: functional_ref_clip_score(*GOOD, torch.ones(3, 2, 4)), ValueError, "`references` must be"),
        (
            lambda: functional_ref_clip_score(*GOOD, torch.ones(3, 2, 3), reference_mask=torch.ones(3, 2)),
            TypeError,
            "`reference_mask` must be a bool tensor",
        ),
        (
            lambda: functional_ref_clip_score(*GOOD, torch.ones(3, 2, 3), reference_mask=torch.ones(3, 3).bool()),
            ValueError,
            r"`reference_mask` must have shape \(3, 2\)",
        ),
        (
            lambda: functional_ref_clip_score(*GOOD, torch.ones(3, 2, 3), reference_mask=torch.eye(3, 2).bool()),
            ValueError,
            "leaves 1 pair",
        ),
        (
            lambda: functional_ref_clip_score(*GOOD, [torch.eye(3)] * 3, reference_mask=torch.ones(3, 3).bool()),
            ValueError,
            "`reference_mask` marks the real references",
        ),
        (lambda: functional_ref_clip_score(*GOOD, [torch.zeros(1, 3)] * 3), ValueError, "`references` has 3 row"),
    ],
)
def test_bad_input_raises_naming_the_argument(call, error, match):
    with pytest.raises(error, match=match):
        call()
