"""Cosine similarities in float64, per pair and blockwise over all candidate captions.

Every cosine here is taken between rows scaled to unit norm by :func:`unit_rows`, which divides each row by its
largest magnitude before it takes the norm: a float64 row of norm 1e-200 or 1e200 gets its exact direction (the
norm alone would underflow to 0 or overflow to infinity). CLIP-R-Precision and InfoNCE keep their candidate
features as :func:`stored_rows` (float32 rows, scaled by a power of two so that none underflows or overflows), and
their functional forms score the same rows, so that a metric class and its function give the same value on the
same pairs.

CLIP-R-Precision and InfoNCE score every candidate image against every candidate caption. :func:`score_blocks`
yields those scores a block of images at a time, so that memory stays ``O(block * M)`` instead of ``O(M^2)``: the
captions are normalised once in float64 (``8 M D`` bytes), and each block of ``rows`` images gives a
``(rows, M)`` float64 matrix of about :data:`BLOCK_ELEMENTS` entries (32 MiB).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Optional

import torch
from torch import Tensor

#: Number of float64 scores per block (``rows * M``): 2**22, i.e. 32 MiB.
BLOCK_ELEMENTS = 1 << 22


def unit_rows(features: Tensor) -> Tensor:
    """Return the rows of ``features`` in float64, scaled to unit L2 norm (a zero row stays zero).

    Each row is first divided by its largest magnitude, so that its norm is taken from values in ``[-1, 1]`` (at
    least one of them of magnitude 1): it can neither underflow nor overflow, whatever the scale of the row.

    Example:
        >>> unit_rows(torch.tensor([[3.0, 4.0]])).tolist()
        [[0.6, 0.8]]
        >>> unit_rows(torch.tensor([[3e-200, 4e-200], [3e200, 4e200]], dtype=torch.float64)).tolist()
        [[0.6, 0.8], [0.6, 0.8]]
    """
    rows = features.to(torch.float64, copy=True)  # one allocation: scaled in place
    largest = torch.linalg.vector_norm(rows, ord=math.inf, dim=1, keepdim=True)
    rows.div_(torch.where(largest > 0, largest, 1.0))
    norms = torch.linalg.vector_norm(rows, dim=1, keepdim=True)  # in [1, sqrt(D)], or 0 for a zero row
    return rows.div_(torch.where(norms > 0, norms, 1.0))


def stored_rows(features: Tensor) -> Tensor:
    """Return the rows as CLIP-R-Precision and InfoNCE store them: scaled by a power of two, rounded to float32.

    Each row is multiplied by the power of two that brings its largest magnitude into ``[0.5, 1)``. That product
    is exact, so float16, bfloat16 and float32 rows are kept exactly (up to their scale, which no cosine sees), and
    float64 rows of any scale are rounded to float32 without underflowing to zero or overflowing.

    Example:
        >>> tiny = torch.tensor([[3.0, 4.0], [0.0, 0.0]], dtype=torch.float64) * 2.0**-700   # norms 5e-211 and 0
        >>> stored_rows(tiny)
        tensor([[0.3750, 0.5000],
                [0.0000, 0.0000]])
    """
    rows = features.to(torch.float64, copy=True)
    _, exponent = torch.frexp(torch.linalg.vector_norm(rows, ord=math.inf, dim=1, keepdim=True))
    # Two steps, each by at most 2^538, so that the power of two itself stays finite (-exponent reaches 1073).
    half = torch.div(-exponent, 2, rounding_mode="floor")
    return torch.ldexp(torch.ldexp(rows, half), -exponent - half).to(torch.float32)


def stored_scoring_rows(images: Tensor, texts: Tensor) -> tuple[Tensor, Tensor]:
    """The inputs of :func:`score_blocks` for candidate pairs as the metric classes store them.

    Returns ``(stored_rows(images), unit_rows(stored_rows(texts)))``: the images as stored (float32) and the
    captions as unit float64 rows of their float32 ones (pass ``texts_are_unit=True``). The classes build the same
    two tensors from their state, so that a class and its function score identical rows.

    Example:
        >>> images, captions = stored_scoring_rows(torch.eye(2), torch.ones(2, 2))
        >>> images.dtype, captions.dtype
        (torch.float32, torch.float64)
    """
    return stored_rows(images), unit_rows(stored_rows(texts))


def pair_cosines(first: Tensor, second: Tensor) -> Tensor:
    """Return ``cos(first_i, second_i)`` for each row pair, in float64 ``(B,)``.

    Example:
        >>> pair_cosines(torch.tensor([[1.0, 0.0], [3.0, 4.0]]), torch.tensor([[0.0, 2.0], [4.0, 3.0]])).tolist()
        [0.0, 0.96]
    """
    return (unit_rows(first) * unit_rows(second)).sum(dim=1)


def block_rows(count: int, block_elements: Optional[int] = None) -> int:
    """Rows of images per block when each row holds ``count`` scores.

    Example:
        >>> block_rows(30_000)
        139
    """
    elements = BLOCK_ELEMENTS if block_elements is None else block_elements
    return max(1, min(count, elements // max(count, 1)))


def score_blocks(
    images: Tensor, texts: Tensor, block_elements: Optional[int] = None, texts_are_unit: bool = False
) -> Iterator[tuple[Tensor, Tensor]]:
    """Yield ``(scores, matching)`` for consecutive blocks of images, in order.

    ``texts_are_unit=True`` says that ``texts`` already holds :func:`unit_rows` of the captions (float64), which
    are then used as they are instead of normalised into a copy.

    ``scores[i, k] = cos(image_{s+i}, text_k)`` over all ``M`` captions (float64, ``(rows, M)``), where ``s`` is the
    block's first image; ``matching[i] = scores[i, s + i]`` is the score of the image's own caption, taken from the
    same matrix so that a caption identical to it scores exactly the same.

    Every block is written into one buffer, allocated once: ``scores`` is overwritten by the next block, and the
    caller may modify it in place. (Allocating a fresh block each time lets glibc's heap fragment, and then the
    process keeps hundreds of MB it no longer uses.)

    Example:
        >>> images, texts = torch.eye(3), torch.eye(3)
        >>> [tuple(scores.shape) for scores, _ in score_blocks(images, texts, block_elements=6)]
        [(2, 3), (1, 3)]
    """
    count = images.shape[0]
    captions = (texts if texts_are_unit else unit_rows(texts)).T
    rows = block_rows(count, block_elements)
    buffer = torch.empty(min(rows, count), count, dtype=torch.float64, device=images.device)
    for start in range(0, count, rows):
        stop = min(start + rows, count)
        scores = buffer[: stop - start]
        torch.matmul(unit_rows(images[start:stop]), captions, out=scores)
        local = torch.arange(stop - start, device=scores.device)
        yield scores, scores[local, local + start]
