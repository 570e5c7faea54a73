"""``clip_r_precision``: the exact expectation against the formula, the official Monte-Carlo estimator, and ties."""

from __future__ import annotations

import math

import pytest
import torch
from companion_refs import OfficialRPrecisionTwin, aligned_pairs, naive_r_precision, naive_r_precision_per_pair

from mid_metric.functional import _similarity, clip_r_precision
from mid_metric.functional._similarity import block_rows
from mid_metric.functional.r_precision import r_precision_values

REL = 1e-10


@pytest.mark.parametrize("negatives", ["replacement", "distinct"])
@pytest.mark.parametrize("n", [1, 9, 99])
def test_matches_the_formula(negatives, n):
    images, texts = aligned_pairs(400, 16, noise=0.9, seed=1, duplicates=5)
    value = clip_r_precision(images, texts, num_negatives=n, negatives=negatives)
    assert value.dtype == torch.float64 and value.ndim == 0
    assert float(value) == pytest.approx(naive_r_precision(images, texts, n, negatives), rel=REL)


def test_blockwise_values_match_the_whole_matrix_across_blocks(monkeypatch):
    monkeypatch.setattr(_similarity, "BLOCK_ELEMENTS", 1 << 21)
    images, texts = aligned_pairs(3000, 32, noise=1.0, seed=2, duplicates=20)
    assert block_rows(3000) < 3000 / 2  # several blocks, the last one partial
    for negatives in ("replacement", "distinct"):
        ours = r_precision_values(images, texts, 99, negatives)
        torch.testing.assert_close(ours, naive_r_precision_per_pair(images, texts, 99, negatives), rtol=REL, atol=0)


def test_official_monte_carlo_mean_is_within_four_standard_errors_of_the_expectation():
    images, texts = aligned_pairs(1000, 32, noise=1.6, seed=3, duplicates=10)
    twin = OfficialRPrecisionTwin()
    twin.update(torch.zeros_like(images), texts, images)
    draws = []
    for seed in range(30):
        torch.manual_seed(seed)
        draws.append(float(twin.compute()))
    mean = sum(draws) / len(draws)
    spread = math.sqrt(sum((d - mean) ** 2 for d in draws) / (len(draws) - 1))
    expected = float(clip_r_precision(images, texts))
    assert 0.2 < expected < 0.8  # a value the draws can miss on either side
    assert spread > 0
    assert abs(mean - expected) < 4 * spread / math.sqrt(len(draws)), (mean, expected, spread)


def test_distinct_negatives_are_the_expectation_of_drawing_distinct_other_captions():
    # Simulate the text-to-image papers' estimator: 99 distinct other captions, a hit when all score strictly lower.
    images, texts = aligned_pairs(400, 16, noise=1.2, seed=4)
    scores = images.double() @ texts.double().T
    m = scores.shape[0]
    generator = torch.Generator().manual_seed(5)
    draws = []
    for _ in range(30):
        hits = 0
        for j in range(m):
            others = torch.cat([torch.arange(j), torch.arange(j + 1, m)])
            chosen = others[torch.randperm(m - 1, generator=generator)[:99]]
            hits += bool((scores[j, chosen] < scores[j, j]).all())
        draws.append(hits / m)
    mean = sum(draws) / len(draws)
    spread = math.sqrt(sum((d - mean) ** 2 for d in draws) / (len(draws) - 1))
    expected = float(clip_r_precision(images, texts, negatives="distinct"))
    assert abs(mean - expected) < 4 * spread / math.sqrt(len(draws)), (mean, expected, spread)


def test_ties_count_as_hits_with_replacement_and_as_misses_with_distinct_negatives():
    texts = torch.ones(120, 4)  # every caption identical: every score ties with the matching one
    images = torch.randn(120, 4, generator=torch.Generator().manual_seed(6)).abs()
    assert float(clip_r_precision(images, texts)) == 1.0
    assert float(clip_r_precision(images, texts, negatives="distinct")) == 0.0


def test_a_duplicate_of_the_matching_caption_ties_wherever_it_is(monkeypatch):
    # Two copies of one caption, at the two ends of a set spanning several blocks: both tie exactly.
    monkeypatch.setattr(_similarity, "BLOCK_ELEMENTS", 1 << 21)
    images, texts = aligned_pairs(2500, 16, noise=0.3, seed=7)
    texts[-1] = texts[0]
    images[0] = texts[0]
    values = r_precision_values(images, texts, 99, "replacement")
    assert float(values[0]) == 1.0  # the copy ties with the own caption: no caption scores higher


def test_value_is_in_the_unit_interval_and_higher_for_aligned_pairs():
    aligned = clip_r_precision(*aligned_pairs(300, 16, noise=0.3, seed=8))
    shuffled_images, texts = aligned_pairs(300, 16, noise=0.3, seed=8)
    shuffled = clip_r_precision(shuffled_images.roll(1, dims=0), texts)
    assert 0.0 <= float(shuffled) < float(aligned) <= 1.0


@pytest.mark.parametrize(
    "call, error, match",
    [
        (lambda x, y: clip_r_precision(x, y, num_negatives=0), ValueError, "`num_negatives` must be an int >= 1"),
        (lambda x, y: clip_r_precision(x, y, num_negatives=2.0), TypeError, "`num_negatives`"),
        (lambda x, y: clip_r_precision(x, y, negatives="random"), ValueError, "`negatives` must be one of"),
        (lambda x, y: clip_r_precision(x[:50], y[:50], negatives="distinct"), ValueError, "at least 100 candidate"),
        (lambda x, y: clip_r_precision(x[:0], y[:0]), ValueError, "at least 1 candidate pair"),
        (lambda x, y: clip_r_precision(x, y[:, :8]), ValueError, r"`texts` must have shape \(batch, 16\)"),
        (lambda x, y: clip_r_precision(x, y * 0), ValueError, "`texts` has 200 row"),
        (lambda x, y: clip_r_precision(x.index_fill(0, torch.tensor([0]), float("nan")), y), ValueError, "NaN"),
    ],
)
def test_bad_input_raises_naming_the_argument(call, error, match):
    images, texts = aligned_pairs(200, 16, seed=9)
    with pytest.raises(error, match=match):
        call(images, texts)
