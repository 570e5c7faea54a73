r"""CLIP-S and RefCLIP-S (Hessel et al., EMNLP 2021) as pure functions of feature tensors.

For candidate pairs ``(v_j, c_j)`` (an image and its caption, or two captions), ``j = 1..M``:

.. math::

    \mathrm{CLIP\text{-}S} = \frac1M \sum_j w \max(\cos(v_j, c_j), 0)

and, with reference captions ``r_{j,1..R_j}`` of each pair,

.. math::

    \mathrm{RefCLIP\text{-}S} = \frac1M \sum_j \frac{2 a_j b_j}{a_j + b_j},\quad a_j = w \max(\cos(v_j, c_j), 0),
    \quad b_j = \max(\max_r \cos(c_j, r_{j,r}), 0)

(0 when ``a_j + b_j = 0``). ``w = 2.5`` in Hessel et al. and in the MID paper's code, 100 in torchmetrics. The
cosines are taken in float64 after each row is scaled to unit norm. ``docs/companion_metrics.md`` compares these
conventions with the official code's and torchmetrics'.
"""

from __future__ import annotations

import torch
from torch import Tensor

from mid_metric._checks import (
    check_bool,
    check_features,
    check_nonzero_rows,
    check_pair_count,
    check_pairs,
    check_references,
    check_weight,
)
from mid_metric.functional._similarity import pair_cosines, unit_rows

__all__ = ["clip_score", "ref_clip_score", "harmonic_mean", "ref_clip_values"]


def _checked_pairs(images: object, texts: object) -> tuple[Tensor, Tensor]:
    """Check pairs of one feature size with no zero rows; return them."""
    images = check_features(images, "images", check_finite=False)
    images, texts = check_pairs(images, texts, images.shape[1], images.shape[1])
    return check_nonzero_rows(images, "images"), check_nonzero_rows(texts, "texts")


def clip_score(images: Tensor, texts: Tensor, weight: float = 2.5, clamp: bool = True) -> Tensor:
    """CLIP-S: the mean over pairs of ``weight * max(cos(image, text), 0)``, as a 0-dim float64 tensor.

    Args:
        images: Image features ``(M, D)``; for text-text pairs (the MID paper's "Caption" score), the features of
            the captions generated from the images.
        texts: Text features ``(M, D)`` paired row by row with ``images`` (the prompts).
        weight: Scale of the score: 2.5 (Hessel et al., the MID paper's code) or 100 (torchmetrics).
        clamp: Clamp each pair's cosine at 0, as Hessel et al. do. ``clamp=False, weight=2.5`` is the MID paper's
            code's CLIP-S (the mean raw cosine times 2.5).

    Returns:
        0-dim float64 tensor on the features' device.

    Raises:
        TypeError: If the features are not floating tensors or ``clamp`` is not a bool.
        ValueError: If the shapes differ, there are no pairs, a row is zero, NaN or Inf, or ``weight`` is not a
            finite number > 0.

    Example:
        >>> import torch
        >>> from mid_metric.functional import clip_score
        >>> images = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
        >>> texts = torch.tensor([[1.0, 1.0], [1.0, -1.0]])   # cosines 0.707 and -0.707
        >>> round(clip_score(images, texts).item(), 6)             # 2.5 * (0.707 + 0) / 2
        0.883883
        >>> round(clip_score(images, texts, clamp=False).item(), 6)
        0.0
    """
    weight = check_weight(weight)
    clamp = check_bool(clamp, "clamp")
    images, texts = _checked_pairs(images, texts)
    check_pair_count(images.shape[0], 1, "CLIP-S")
    cosines = pair_cosines(images, texts)
    return weight * (cosines.clamp(min=0.0) if clamp else cosines).mean()


def harmonic_mean(first: Tensor, second: Tensor) -> Tensor:
    """Elementwise ``2ab / (a + b)`` of non-negative finite tensors, 0 where ``a + b = 0``.

    Both are divided by the larger of the two first, so that no product or sum overflows, whatever their scale
    (the result is at most ``2 min(a, b)``).

    Example:
        >>> harmonic_mean(torch.tensor([1.0, 0.0, 0.0]), torch.tensor([3.0, 2.0, 0.0])).tolist()
        [1.5, 0.0, 0.0]
        >>> big = torch.tensor([1e308], dtype=torch.float64)
        >>> round(harmonic_mean(big, torch.ones(1, dtype=torch.float64)).item(), 12)   # 2e308 / (1e308 + 1)
        2.0
    """
    larger = torch.maximum(first, second)
    scale = torch.where(larger > 0, larger, 1)
    first, second = first / scale, second / scale  # in [0, 1], one of them 1 unless both are 0
    total = first + second
    return torch.where(total > 0, 2 * first * second / torch.where(total > 0, total, 1), 0) * scale


def ref_clip_values(images: Tensor, texts: Tensor, references: Tensor, owners: Tensor, weight: float) -> Tensor:
    """Per-pair RefCLIP-S (float64 ``(B,)``) from checked features and flattened references.

    Args:
        images: Image features ``(B, D)``.
        texts: Candidate caption features ``(B, D)``.
        references: Reference caption features ``(T, D)``, every pair's references one after another.
        owners: For each reference, the index of its pair (int64 ``(T,)``); every pair owns at least one.
        weight: CLIP-S's weight.

    Example:
        >>> images, texts = torch.eye(2), torch.eye(2)
        >>> references, owners = torch.tensor([[1.0, 0.0], [0.0, -1.0]]), torch.tensor([0, 1])
        >>> [round(v, 12) for v in ref_clip_values(images, texts, references, owners, 2.5).tolist()]   # b = 1, then 0
        [1.428571428571, 0.0]
    """
    clip_part = weight * pair_cosines(images, texts).clamp(min=0.0)
    reference_cosines = (unit_rows(texts).index_select(0, owners) * unit_rows(references)).sum(dim=1)
    best = torch.full_like(clip_part, -torch.inf).scatter_reduce(0, owners, reference_cosines, reduce="amax")
    return harmonic_mean(clip_part, best.clamp(min=0.0))


def ref_clip_score(
    images: Tensor,
    texts: Tensor,
    references: object,
    weight: float = 2.5,
    reference_mask: object = None,
) -> Tensor:
    """RefCLIP-S: the mean over pairs of the harmonic mean of CLIP-S and the best reference similarity.

    Per pair, ``a = weight * max(cos(image, text), 0)`` and ``b = max(max_r cos(text, reference_r), 0)``; the score
    is ``2ab / (a + b)`` (0 when both are 0). Hessel et al.'s code leaves ``b`` unclamped; the clamp only matters
    when every reference is further than 90 degrees from the caption, where their harmonic mean is meaningless.

    Args:
        images: Image features ``(M, D)``.
        texts: Candidate caption features ``(M, D)``.
        references: Reference caption features: a list of ``M`` tensors ``(R_j, D)``, or a tensor ``(M, R, D)``
            with ``reference_mask``.
        weight: CLIP-S's weight (2.5 in Hessel et al.).
        reference_mask: For a tensor of references, a bool tensor ``(M, R)`` that marks the real ones (``None``:
            all of them).

    Returns:
        0-dim float64 tensor on the features' device.

    Raises:
        TypeError: If an argument has the wrong type.
        ValueError: If a shape is wrong, a pair has no reference, there are no pairs, a row is zero, NaN or Inf,
            or ``weight`` is not a finite number > 0.

    Example:
        >>> import torch
        >>> from mid_metric.functional import ref_clip_score
        >>> images, texts = torch.eye(2), torch.eye(2)          # each caption matches its image: a = 2.5
        >>> references = [torch.tensor([[1.0, 0.0], [0.0, 1.0]]), torch.tensor([[1.0, 1.0]])]
        >>> round(ref_clip_score(images, texts, references).item(), 6)   # b = 1, then b = 0.707
        1.265489
    """
    weight = check_weight(weight)
    images, texts = _checked_pairs(images, texts)
    check_pair_count(images.shape[0], 1, "RefCLIP-S")
    flat, owners = check_references(references, images.shape[0], images.shape[1], reference_mask)
    check_nonzero_rows(flat, "references")
    flat, owners = flat.to(texts.device), owners.to(texts.device)
    return ref_clip_values(images, texts, flat, owners, weight).mean()
