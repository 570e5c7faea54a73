r"""CLIP-R-Precision as an exact expectation, computed blockwise (never an ``M x M`` matrix).

The estimator of the MID paper's code scores each candidate pair ``(v_j, c_j)`` against 99 captions drawn uniformly,
with replacement, from all ``M`` candidate captions (the pair's own caption among them), and counts a hit when the
matching caption scores at least as high as every drawn one (``torch.max`` returns the first index, and the
matching caption comes first). With ``s_{jk} = \cos(v_j, c_k)`` and ``c_j = \#\{k : s_{jk} \le s_{jj}\}``, the
probability of a hit is ``(c_j / M)^{99}``, so its expected value is

.. math:: \mathrm{R\text{-}Precision} = \frac1M \sum_j \left(\frac{c_j}{M}\right)^{n}, \quad n = 99

which this module returns: the same number without Monte-Carlo noise and without a seed. The text-to-image papers'
variant draws ``n`` *distinct other* captions; a hit then needs all of them to score strictly lower, with
probability ``C(b_j, n) / C(M - 1, n)`` where ``b_j = \#\{k : s_{jk} < s_{jj}\}``.

Two scores closer than :data:`TIE_TOLERANCE` count as equal: float64 cosines of unit vectors carry rounding errors
of about ``D * 2^-53`` (1e-13 at D = 768), so a caption identical to the matching one always ties with it, wherever
the two scores were computed. ``docs/companion_metrics.md`` derives both expectations.

The counts are those of the float64 cosines, though the scores are float32 matrix products (about twice the rate of
float64 ones): a float32 score differs from the float64 one by at most
:func:`~mid_metric.functional._similarity.float32_score_error` (``(D + 2) 2^-24``, 4.6e-5 at D = 768), so every
score that close to the threshold ``s_jj +/- TIE_TOLERANCE`` is recomputed in float64 and compared as such, and no
pair changes between hit and miss. The matching score ``s_jj`` is always float64.

The features are scored as :class:`~mid_metric.CLIPRPrecision` stores them: rounded to float32 (exact for float16,
bfloat16 and float32 features; float64 rows are scaled by a power of two first, see
:func:`~mid_metric.functional._similarity.stored_rows`); so the function and the metric class give the same value
on the same pairs.
"""

from __future__ import annotations

import torch
from torch import Tensor

from mid_metric._checks import (
    check_choice,
    check_features,
    check_nonzero_rows,
    check_pair_count,
    check_pairs,
    check_positive_int,
)
from mid_metric.functional._similarity import score_blocks, stored_scoring_rows

__all__ = ["clip_r_precision", "r_precision_values", "NEGATIVES", "TIE_TOLERANCE"]

#: How the negatives are drawn: ``"replacement"`` (uniform with replacement over all candidate captions, as the
#: MID paper's code does) or ``"distinct"`` (distinct other captions, as text-to-image papers do).
NEGATIVES = ("replacement", "distinct")
#: Scores (cosines) within this distance of each other count as ties.
TIE_TOLERANCE = 1e-12


def check_r_precision_count(count: int, num_negatives: int, negatives: str) -> None:
    """Check that ``count`` candidate pairs can be scored with ``num_negatives`` negatives drawn as ``negatives``.

    Raises:
        ValueError: If there is no pair, or fewer than ``num_negatives + 1`` for distinct negatives.

    Example:
        >>> check_r_precision_count(50, 99, "distinct")
        Traceback (most recent call last):
        ...
        ValueError: CLIP-R-Precision needs at least 100 candidate pair(s) (99 distinct negatives per pair), got 50: \
call `update(images, texts)` with the generated pairs before computing.
    """
    if negatives == "distinct":
        reason = f" ({num_negatives} distinct negatives per pair)"
        check_pair_count(count, num_negatives + 1, "CLIP-R-Precision", reason)
    check_pair_count(count, 1, "CLIP-R-Precision")


def r_precision_values(
    images: Tensor, texts: Tensor, num_negatives: int = 99, negatives: str = "replacement", texts_are_unit: bool = False
) -> Tensor:
    """Each pair's probability of a hit (float64 ``(M,)``, in the order of the pairs), from checked features.

    ``texts_are_unit=True``: ``texts`` are already unit float64 rows (see :func:`~._similarity.score_blocks`).

    Example:
        >>> images = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
        >>> r_precision_values(images, images, num_negatives=2).tolist()   # each scores 2 of 2 captions: 1
        [1.0, 1.0]
        >>> r_precision_values(images, images.flip(0), num_negatives=2).tolist()   # 1 of 2: (1/2)^2
        [0.25, 0.25]
    """
    count = images.shape[0]
    steps = torch.arange(num_negatives, dtype=torch.float64, device=images.device)
    parts = []
    for block in score_blocks(images, texts, texts_are_unit=texts_are_unit):
        # The counts are those of the float64 scores: entries near the threshold are recomputed in float64.
        if negatives == "replacement":
            at_most = block.count_below(block.matching + TIE_TOLERANCE, inclusive=True).double()
            parts.append((at_most / count) ** num_negatives)
        else:
            below = block.count_below(block.matching - TIE_TOLERANCE, inclusive=False).double()
            # C(b, n) / C(M - 1, n) as the product of (b - i) / (M - 1 - i), i < n: 0 once b < n.
            ratios = ((below.unsqueeze(1) - steps) / (count - 1 - steps)).clamp(min=0.0)
            parts.append(ratios.prod(dim=1))
    return torch.cat(parts) if parts else torch.empty(0, dtype=torch.float64, device=images.device)


def clip_r_precision(images: Tensor, texts: Tensor, num_negatives: int = 99, negatives: str = "replacement") -> Tensor:
    """CLIP-R-Precision's exact expectation over the random negatives, as a 0-dim float64 tensor.

    Args:
        images: Generated image features ``(M, D)``.
        texts: Their prompts' features ``(M, D)``, paired row by row; they are also the pool of negatives.
        num_negatives: Negatives per pair (99: R-precision at R = 1 among 100 captions).
        negatives: ``"replacement"``: drawn uniformly with replacement from all ``M`` captions, the matching one
            included, and ties count as hits (the MID paper's code); ``"distinct"``: ``num_negatives`` distinct
            other captions, each of which must score strictly lower (the text-to-image papers'), which needs
            ``M > num_negatives``.

    Returns:
        0-dim float64 tensor in ``[0, 1]`` on the features' device.

    Raises:
        TypeError: If the features are not floating tensors or ``num_negatives`` is not an int.
        ValueError: If the shapes differ, a row is zero, NaN or Inf, ``num_negatives < 1``, ``negatives`` is
            unknown, or there are too few pairs.

    Example:
        >>> import torch
        >>> from mid_metric.functional import clip_r_precision
        >>> _ = torch.manual_seed(0)
        >>> texts = torch.randn(300, 16)
        >>> images = texts + 1.5 * torch.randn(300, 16)     # images near their own prompts
        >>> round(clip_r_precision(images, texts).item(), 4)
        0.4612
        >>> round(clip_r_precision(images, texts, negatives="distinct").item(), 4)
        0.4375
    """
    num_negatives = check_positive_int(num_negatives, "num_negatives")
    negatives = check_choice(negatives, "negatives", NEGATIVES)
    images = check_features(images, "images", check_finite=False)
    images, texts = check_pairs(images, texts, images.shape[1], images.shape[1])
    check_nonzero_rows(images, "images")
    check_nonzero_rows(texts, "texts")
    check_r_precision_count(images.shape[0], num_negatives, negatives)
    images, captions = stored_scoring_rows(images, texts)
    return r_precision_values(images, captions, num_negatives, negatives, texts_are_unit=True).mean()
