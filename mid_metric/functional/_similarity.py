"""Cosine similarities in float64, per pair and blockwise over all candidate captions.

CLIP-R-Precision and InfoNCE score every candidate image against every candidate caption. :func:`score_blocks`
yields those scores a block of images at a time, so that memory stays ``O(block * M)`` instead of ``O(M^2)``: the
captions are normalised once in float64 (``8 M D`` bytes), and each block of ``rows`` images gives a
``(rows, M)`` float64 matrix of about :data:`BLOCK_ELEMENTS` entries (32 MiB).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Optional

import torch
from torch import Tensor

#: Number of float64 scores per block (``rows * M``): 2**22, i.e. 32 MiB.
BLOCK_ELEMENTS = 1 << 22


def unit_rows(features: Tensor) -> Tensor:
    """Return the rows of ``features`` in float64, scaled to unit L2 norm (a zero row stays zero).

    Example:
        >>> unit_rows(torch.tensor([[3.0, 4.0]])).tolist()
        [[0.6, 0.8]]
    """
    rows = features.to(torch.float64, copy=True)  # one allocation: scaled in place
    return rows.div_(torch.linalg.vector_norm(rows, dim=1, keepdim=True).clamp_min_(1e-300))


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
