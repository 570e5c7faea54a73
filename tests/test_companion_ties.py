"""CLIP-R-Precision and InfoNCE from float32 products: every decision is the float64 scores' decision.

The blocks of scores are float32 products; entries within the bound of the float32 error of a decision are
recomputed in float64. Here captions are built a few float32 ulps away from others (near-ties: score differences of
1e-11 to 1e-7, below the float32 resolution of a cosine) and copied exactly (exact ties), and the counts are checked
against a float64 recount of the whole matrix written in the tests (``companion_refs.naive_*``).
"""

from __future__ import annotations

import importlib
import math

import pytest
import torch
from companion_refs import TIE, aligned_pairs, naive_cosine_matrix, naive_infonce_per_pair, naive_r_precision_per_pair

from mid_metric import CLIPRPrecision, InfoNCE
from mid_metric.functional import _similarity, clip_r_precision, infonce
from mid_metric.functional._similarity import (
    block_rows,
    float32_score_error,
    score_blocks,
    stored_scoring_rows,
    unit_rows,
)
from mid_metric.functional.r_precision import r_precision_values

infonce_module = importlib.import_module("mid_metric.functional.infonce")

M, D = 3000, 64
# caption -> its number of near-copies (rows with 40 of them are recomputed whole; 6 wrap around the end)
GROUPS = {0: 40, 600: 12, 1100: 12, 1400: 40, 1900: 12, 2400: 12, 2990: 6}


@pytest.fixture(autouse=True)
def several_blocks(monkeypatch):
    monkeypatch.setattr(_similarity, "BLOCK_ELEMENTS", 1 << 21)  # 699 rows a block at M = 3000


def _nudged(row: torch.Tensor, generator: torch.Generator, elements: int = 3) -> torch.Tensor:
    """``row`` with ``elements`` random entries moved by one float32 ulp, each up or down."""
    out = row.clone()
    where = torch.randperm(row.shape[0], generator=generator)[:elements]
    up = torch.rand(elements, generator=generator) < 0.5
    out[where] = torch.nextafter(out[where], torch.where(up, math.inf, -math.inf))
    return out


@pytest.fixture(scope="module")
def tied_pairs() -> tuple[torch.Tensor, torch.Tensor]:
    """Unit float32 pairs where groups of captions are near-copies (a few ulps apart) or exact copies.

    The images of a group lie near its first caption, so the group's captions are the top of their rows.
    """
    images, texts = aligned_pairs(M, D, noise=0.9, seed=71)
    generator = torch.Generator().manual_seed(72)
    for base, copies in GROUPS.items():
        members = [(base + offset) % M for offset in range(copies + 3)]
        for member in members[1 : copies + 1]:
            texts[member] = _nudged(texts[base], generator)
        texts[members[-2]] = texts[base]  # exact ties
        texts[members[-1]] = texts[members[1]]
        noise = 0.9 / D**0.5 * torch.randn(len(members), D, generator=generator)  # cosines near 0.74
        images[members] = torch.nn.functional.normalize(texts[base] + noise, dim=1)
    return images, texts


@pytest.fixture(scope="module")
def float64_scores(tied_pairs) -> torch.Tensor:
    return naive_cosine_matrix(*tied_pairs)


def test_the_data_holds_near_ties_below_float32_resolution_and_no_ambiguous_one(float64_scores):
    gaps = (float64_scores - float64_scores.diagonal().unsqueeze(1)).abs()
    assert int(((gaps > 1e-11) & (gaps < 1e-7)).sum()) > 500  # near-ties a float32 product cannot order
    assert int((gaps == 0).sum()) > M  # exact ties beside the diagonal
    # no gap within rounding of the tie tolerance, where two float64 evaluations could disagree
    assert int(((gaps - TIE).abs() < 1e-13).sum()) == 0


def test_a_plain_float32_product_would_change_hits(tied_pairs, float64_scores):
    # the check below has teeth: counting from the float32 product alone moves pairs between hit and miss
    images, texts = tied_pairs
    cheap = unit_rows(images).float() @ unit_rows(texts).float().T
    cheap_counts = (cheap <= cheap.diagonal().unsqueeze(1) + TIE).sum(dim=1)
    exact_counts = (float64_scores <= float64_scores.diagonal().unsqueeze(1) + TIE).sum(dim=1)
    assert int((cheap_counts != exact_counts).sum()) > 10


@pytest.mark.parametrize("negatives, n", [("replacement", 99), ("replacement", 1), ("distinct", 5)])
def test_counts_equal_the_float64_recount(tied_pairs, negatives, n):
    images, texts = tied_pairs
    assert block_rows(M) < M / 2  # several blocks; the groups straddle their ends
    expected = naive_r_precision_per_pair(images, texts, n, negatives)
    stored_images, captions = stored_scoring_rows(images, texts)
    values = r_precision_values(stored_images, captions, n, negatives, texts_are_unit=True)
    torch.testing.assert_close(values, expected, rtol=1e-12, atol=0)
    metric = CLIPRPrecision(feature=D, num_negatives=n, negatives=negatives, max_samples=M)
    for start in range(0, M, 700):
        metric.update(images[start : start + 700], texts[start : start + 700])
    assert torch.equal(metric.per_sample(), values)  # the class and the function score the same rows alike
    assert torch.equal(metric.compute(), clip_r_precision(images, texts, n, negatives))


def test_exact_where_returns_every_entry_that_may_reach_a_bound_with_its_float64_score(tied_pairs, float64_scores):
    images, texts = tied_pairs
    stored_images, captions = stored_scoring_rows(images, texts)
    seen_dense = seen_sparse = False
    for block in score_blocks(stored_images, captions, texts_are_unit=True):
        assert block.scores.dtype == torch.float32 and block.error == float32_score_error(D)
        exact = float64_scores[block.start : block.start + block.scores.shape[0]]
        torch.testing.assert_close(block.matching, exact.diagonal(block.start), rtol=0, atol=1e-15)
        low = block.matching + TIE  # the captions that may score above the matching one
        found = block.exact_where(low)
        torch.testing.assert_close(found.scores, exact[found.rows, found.columns], rtol=0, atol=1e-15)
        torch.testing.assert_close(found.whole, exact[found.whole_rows], rtol=0, atol=1e-15)
        left_out = torch.ones_like(exact, dtype=torch.bool)
        left_out[found.rows, found.columns] = False
        left_out[found.whole_rows] = False
        assert bool((exact < low.unsqueeze(1))[left_out].all())
        assert not bool(torch.isin(found.rows, found.whole_rows).any())
        seen_dense |= found.whole_rows.numel() > 0
        seen_sparse |= bool((torch.bincount(found.rows) > 1).any())
    assert seen_dense and seen_sparse  # rows recomputed whole and entry by entry


def test_the_float32_error_bound_holds_where_rounding_accumulates():
    # all-positive rows: every product has one sign, so the float32 sums' errors add up
    generator = torch.Generator().manual_seed(73)
    dim = 4096
    images = torch.rand(200, dim, generator=generator) + 1.0
    texts = torch.rand(200, dim, generator=generator) + 1.0
    stored_images, captions = stored_scoring_rows(images, texts)
    exact = unit_rows(stored_images) @ captions.T
    for block in score_blocks(stored_images, captions, texts_are_unit=True):
        assert block.error < 2.5e-4  # about (dim + 2) 2^-24
        rows = slice(block.start, block.start + block.scores.shape[0])
        assert float((block.scores.double() - exact[rows]).abs().max()) <= block.error


@pytest.mark.parametrize("temperature", [1.0, 0.07, 0.01, 1e-3, 1e-5])
def test_infonce_is_within_a_relative_1e_6_of_float64_at_clip_size(temperature):
    # CLIP-like rows at D = 768, scores near 0.3: each p_jj against the float64 softmax
    generator = torch.Generator().manual_seed(74)
    common = torch.randn(768, generator=generator)
    texts = torch.randn(600, 768, generator=generator) + 0.6 * common
    images = texts + 1.3 * torch.randn(600, 768, generator=generator)
    expected = naive_infonce_per_pair(images, texts, temperature)
    value = InfoNCE(feature=768, temperature=temperature)
    value.update(images, texts)
    torch.testing.assert_close(value.per_sample(), expected, rtol=1e-6, atol=1e-300)
    assert torch.equal(value.compute(), infonce(images, texts, temperature))


def test_a_tiny_temperature_picks_the_float64_maximum_among_near_ties(tied_pairs, float64_scores):
    images, texts = tied_pairs
    top = float64_scores.max(dim=1, keepdim=True).values
    winners = float64_scores == top
    expected = winners.diagonal().double() / winners.sum(dim=1)  # exact ties at the top would share it
    contested = ((top - float64_scores) < 1e-7).sum(dim=1) > 1  # a near-copy within float32 resolution of the top
    assert int((contested & (expected == 1)).sum()) > 0 and int((contested & (expected == 0)).sum()) > 50
    metric = InfoNCE(feature=D, temperature=1e-300, max_samples=M)
    metric.update(images, texts)
    assert torch.equal(metric.per_sample(), expected)


def test_without_ieee_float32_products_the_blocks_are_float64_and_agree(tied_pairs):
    images, texts = tied_pairs
    fast_counts = clip_r_precision(images, texts)
    fast_infonce = infonce_module.infonce_log_probabilities(*stored_scoring_rows(images, texts), 0.05, True)
    precision = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("high")  # TF32 on GPUs, bfloat16 on some CPUs: the bound would not hold
    try:
        stored_images, captions = stored_scoring_rows(images, texts)
        blocks = list(score_blocks(stored_images[:10], captions[:10], texts_are_unit=True))
        assert blocks[0].scores.dtype == torch.float64 and blocks[0].error == 0
        assert torch.equal(clip_r_precision(images, texts), fast_counts)
        slow_infonce = infonce_module.infonce_log_probabilities(stored_images, captions, 0.05, True)
    finally:
        torch.set_float32_matmul_precision(precision)
    torch.testing.assert_close(fast_infonce.exp(), slow_infonce.exp(), rtol=1e-6, atol=0)
