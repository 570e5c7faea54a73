"""``infonce`` and ``infonce_bound`` against the formula and the official code's twin."""

from __future__ import annotations

import math

import pytest
import torch
from companion_refs import (
    OfficialInfoNCETwin,
    aligned_pairs,
    naive_infonce,
    naive_infonce_bound,
    naive_infonce_per_pair,
)

from mid_metric.functional import _similarity, infonce, infonce_bound
from mid_metric.functional._similarity import block_rows
from mid_metric.functional.infonce import infonce_log_probabilities

# The scores are float32 products (log-sum-exp in float64): each p_jj is within a relative 1e-6 of the float64 value.
REL = 1e-6


@pytest.mark.parametrize("temperature", [1.0, 0.07, 0.01, 1e-3])
def test_infonce_matches_the_formula(temperature):
    images, texts = aligned_pairs(300, 16, noise=0.8, seed=1)
    value = infonce(images, texts, temperature)
    assert value.dtype == torch.float64 and value.ndim == 0
    assert float(value) == pytest.approx(naive_infonce(images, texts, temperature), rel=REL)


@pytest.mark.parametrize("temperature", [1.0, 0.01])
def test_bound_matches_the_formula_and_is_at_most_log_m(temperature):
    images, texts = aligned_pairs(300, 16, noise=0.8, seed=2)
    bound = infonce_bound(images, texts, temperature)
    assert bound.dtype == torch.float64
    assert float(bound) == pytest.approx(naive_infonce_bound(images, texts, temperature), rel=REL)
    assert float(bound) <= math.log(300)


def test_bound_grows_with_alignment_at_clip_temperature():
    loose = infonce_bound(*aligned_pairs(500, 16, noise=2.0, seed=3, flipped=0), temperature=0.01)
    tight = infonce_bound(*aligned_pairs(500, 16, noise=0.2, seed=3, flipped=0), temperature=0.01)
    assert float(loose) < float(tight) <= math.log(500)
    assert float(tight) > 0.9 * math.log(500)


def test_blockwise_log_probabilities_match_the_whole_softmax_across_blocks(monkeypatch):
    monkeypatch.setattr(_similarity, "BLOCK_ELEMENTS", 1 << 21)
    images, texts = aligned_pairs(3000, 32, noise=1.0, seed=4)
    assert block_rows(3000) < 3000 / 2
    ours = infonce_log_probabilities(images, texts, 0.05).exp()
    torch.testing.assert_close(ours, naive_infonce_per_pair(images, texts, 0.05), rtol=REL, atol=0)


def test_agrees_with_the_official_code_within_its_float32_rounding():
    images, texts = aligned_pairs(2000, 64, noise=1.0, seed=5)
    twin = OfficialInfoNCETwin()
    for start in range(0, 2000, 500):
        twin.update(torch.zeros(500, 64), texts[start : start + 500], images[start : start + 500])
    official = twin.compute()
    assert official.dtype == torch.float32
    assert float(infonce(images, texts)) == pytest.approx(float(official), rel=2e-6)


def test_a_tiny_temperature_stays_finite():
    images, texts = aligned_pairs(200, 8, noise=0.5, seed=6)
    value = infonce(images, texts, temperature=1e-6)
    bound = infonce_bound(images, texts, temperature=1e-6)
    assert math.isfinite(float(value)) and math.isfinite(float(bound))


@pytest.mark.parametrize(
    "call, error, match",
    [
        (lambda x, y: infonce(x, y, temperature=0), ValueError, "`temperature` must be a finite number > 0"),
        (lambda x, y: infonce(x, y, temperature=float("nan")), ValueError, "`temperature`"),
        (lambda x, y: infonce_bound(x, y, temperature="0.01"), TypeError, "`temperature`"),
        (lambda x, y: infonce(x[:0], y[:0]), ValueError, "InfoNCE needs at least 1 candidate pair"),
        (lambda x, y: infonce(x, y[:-1]), ValueError, "same number of pairs"),
        (lambda x, y: infonce(x * 0, y), ValueError, "`images` has 50 row"),
        (lambda x, y: infonce_bound(x, y.index_fill(0, torch.tensor([1]), float("inf")), 0.01), ValueError, "Inf"),
    ],
)
def test_bad_input_raises_naming_the_argument(call, error, match):
    images, texts = aligned_pairs(50, 8, seed=7)
    with pytest.raises(error, match=match):
        call(images, texts)


def test_bound_needs_a_temperature():
    images, texts = aligned_pairs(5, 4, seed=8)
    with pytest.raises(TypeError):
        infonce_bound(images, texts)  # type: ignore[call-arg]
