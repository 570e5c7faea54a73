r"""InfoNCE: the MID paper's mean matching probability, and the InfoNCE bound on mutual information in nats.

For candidate pairs ``(v_j, c_j)``, ``j = 1..M``, with ``s_{jk} = \cos(v_j, c_k)`` and temperature ``\tau``, the
probability that ``v_j`` picks its own caption among all ``M`` candidate captions is

.. math:: p_{jj} = \frac{\exp(s_{jj} / \tau)}{\sum_k \exp(s_{jk} / \tau)}

:func:`infonce` returns ``mean_j p_jj`` (the MID paper's "InfoNCE" column, at ``tau = 1``), and
:func:`infonce_bound` returns ``log M + mean_j log p_jj``, the InfoNCE lower bound on ``I(X; Y)`` in nats (van den
Oord et al. 2018): the negative of the contrastive loss, shifted by ``log M``. Both are computed a block of images
at a time, so no ``M x M`` matrix is ever built. ``docs/companion_metrics.md`` relates the bound to MID's
``I(X; Y)`` term.

The scores are float32 matrix products (about twice the rate of float64 ones); the log-sum-exp is taken in float64,
and the matching score ``s_jj`` is always float64. At a temperature of at least ``2 / log M`` every weight is within
a factor ``M`` of the others, so no float32 score's error weighs much. Below it, every score that may be a row's
largest (within twice :func:`~mid_metric.functional._similarity.float32_score_error` of the float32 maximum) and
each row's :data:`HEAVY_CAPTIONS` highest scores are recomputed in float64, so the row maximum is exact. Each
``p_jj`` agrees with the float64 computation within a relative :data:`RELATIVE_TOLERANCE` (1e-6; measured on
CLIP-like features at D = 768: 4e-9 at ``tau = 1``, 2.3e-7 at ``tau = 0.01``). The worst-case bound is larger:
``error / tau`` for a float32 score error ``error`` of about ``(D + 2) 2^-24``.

Below a temperature of ``2 / log M``, each row's largest cosine is subtracted before the division by the
temperature, so the scaled scores are at most 0 and never overflow (above it, they lie within ``+/- log(M) / 2``): a
small temperature gives the limit it tends to (probability 1 for a caption that scores strictly highest). A
temperature must be a normal float64 number (at least about 2.2e-308): below, the scaled differences of cosines, up
to ``2 / temperature``, would overflow. The features are scored as
:class:`~mid_metric.InfoNCE` stores them (rounded to float32: exact for float16, bfloat16 and float32 features,
float64 rows scaled by a power of two first; see :func:`~mid_metric.functional._similarity.stored_rows`), so the
function and the class agree.
"""

from __future__ import annotations

import math
import sys

import torch
from torch import Tensor

from mid_metric._checks import (
    check_features,
    check_nonzero_rows,
    check_pair_count,
    check_pairs,
    check_temperature,
)
from mid_metric.functional._similarity import Recomputed, ScoreBlock, score_blocks, stored_scoring_rows

__all__ = ["infonce", "infonce_bound", "infonce_log_probabilities", "check_infonce_temperature"]

#: The smallest temperature accepted: the smallest normal float64 number.
SMALLEST_TEMPERATURE = sys.float_info.min
#: Below a temperature of ``2 / log M`` one caption may carry much of a row's softmax weight (``e^(2 / tau) > M``):
#: the row's ``HEAVY_CAPTIONS`` highest float32 scores are then recomputed in float64 too.
HEAVY_CAPTIONS = 16
#: The documented agreement of each ``p_jj`` with the float64 computation (relative).
RELATIVE_TOLERANCE = 1e-6


def check_infonce_temperature(temperature: object) -> float:
    """Check InfoNCE's ``temperature``: a finite number > 0 that is a normal float64 (not subnormal); return it.

    Raises:
        TypeError: If ``temperature`` is not a number.
        ValueError: If it is not finite, not positive, or below :data:`SMALLEST_TEMPERATURE`.

    Example:
        >>> check_infonce_temperature(1e-310)
        Traceback (most recent call last):
        ...
        ValueError: `temperature` must be at least 2.2250738585072014e-308 (the smallest normal float64), got \
1e-310: differences of cosines divided by it would overflow.
    """
    temperature = check_temperature(temperature)
    if temperature < SMALLEST_TEMPERATURE:
        raise ValueError(
            f"`temperature` must be at least {SMALLEST_TEMPERATURE!r} (the smallest normal float64), got"
            f" {temperature!r}: differences of cosines divided by it would overflow."
        )
    return temperature


def infonce_log_probabilities(
    images: Tensor, texts: Tensor, temperature: float = 1.0, texts_are_unit: bool = False
) -> Tensor:
    """``log p_jj`` for each pair (float64 ``(M,)``, in the order of the pairs), from checked features.

    ``texts_are_unit=True``: ``texts`` are already unit float64 rows (see :func:`~._similarity.score_blocks`).

    Example:
        >>> images = torch.eye(2)
        >>> infonce_log_probabilities(images, images).exp().tolist()   # e / (e + 1)
        [0.7310585786300049, 0.7310585786300049]
    """
    parts = []
    for block in score_blocks(images, texts, texts_are_unit=texts_are_unit):
        count = block.scores.shape[1]
        matching = block.matching
        if count > 1 and 2 / temperature <= math.log(count):
            # Each weight is within a factor e^(2 / tau) <= M of the others, so no float32 score's error weighs much,
            # and |s / tau| <= log(M) / 2: the exponentials can neither overflow nor underflow, with no shift.
            scores = block.shifted(None)  # float64
        else:
            # One caption may carry much of a row's weight: the scores near the top are recomputed, the exact row
            # maximum is subtracted first, so that the scaled scores are <= 0 (0 at the maximum, so the sum is >= 1)
            # and cannot overflow, whatever the temperature.
            found = _exact_entries(block)
            top = torch.full_like(matching, -math.inf).scatter_reduce_(0, found.rows, found.scores, "amax")
            if found.whole_rows.numel() > 0:
                top[found.whole_rows] = found.whole.amax(dim=1)
            top = torch.maximum(top, matching)
            scores = block.shifted(top)  # float64
            scores[found.rows, found.columns] = found.scores - top[found.rows]
            if found.whole_rows.numel() > 0:  # after the single entries: a row recomputed whole wins
                scores[found.whole_rows] = found.whole - top[found.whole_rows].unsqueeze(1)
            matching = matching - top
        local = torch.arange(scores.shape[0], device=scores.device)
        scores[local, local + block.start] = matching
        if temperature != 1.0:
            scores.div_(temperature)
            matching = matching / temperature
        parts.append(matching - scores.exp_().sum(dim=1).log())  # log-sum-exp in float64
    return torch.cat(parts) if parts else torch.empty(0, dtype=torch.float64, device=images.device)


def _exact_entries(block: ScoreBlock) -> Recomputed:
    """The block's entries to take in float64 at a temperature below ``2 / log M``.

    They are every entry that may be its row's largest score (the others are more than the float32 error below
    it), so that the row maximum is exact and a tiny temperature gives the exact limit; and each row's
    :data:`HEAVY_CAPTIONS` highest scores, which may carry most of its weight. None for float64 scores, which are
    exact: only the row maximum is then taken.
    """
    found = block.exact_where(block.scores.amax(dim=1).double() - block.error)
    if block.error == 0:
        return found
    count = block.scores.shape[1]
    heavy = block.scores.topk(min(HEAVY_CAPTIONS, count), dim=1).indices
    heavy_rows = torch.arange(heavy.shape[0], device=heavy.device).repeat_interleave(heavy.shape[1])
    heavy_columns = heavy.flatten()
    found.rows = torch.cat([found.rows, heavy_rows])
    found.columns = torch.cat([found.columns, heavy_columns])
    found.scores = torch.cat([found.scores, block.exact_scores(heavy_rows, heavy_columns)])
    return found


def _checked(images: object, texts: object, temperature: object) -> tuple[Tensor, Tensor, float]:
    temperature = check_infonce_temperature(temperature)
    images = check_features(images, "images", check_finite=False)
    images, texts = check_pairs(images, texts, images.shape[1], images.shape[1])
    check_nonzero_rows(images, "images")
    check_nonzero_rows(texts, "texts")
    check_pair_count(images.shape[0], 1, "InfoNCE")
    return images, texts, temperature


def infonce(images: Tensor, texts: Tensor, temperature: float = 1.0) -> Tensor:
    """The mean over pairs of the softmax probability of the matching caption among all candidate captions.

    Args:
        images: Generated image features ``(M, D)``.
        texts: Their prompts' features ``(M, D)``, paired row by row; every other prompt is a negative.
        temperature: Divides the cosines before the softmax; 1 is the MID paper's code (whose probabilities are
            then close to ``1 / M``), 0.01 is CLIP's logit scale.

    Returns:
        0-dim float64 tensor in ``(0, 1]`` on the features' device.

    Raises:
        TypeError: If the features are not floating tensors.
        ValueError: If the shapes differ, there are no pairs, a row is zero, NaN or Inf, or ``temperature`` is not
            a finite number of at least :data:`SMALLEST_TEMPERATURE` (about 2.2e-308).

    Example:
        >>> import torch
        >>> from mid_metric.functional import infonce
        >>> images = torch.eye(3)
        >>> round(infonce(images, images).item(), 6)   # e / (e + 2)
        0.576117
        >>> round(infonce(images, images, temperature=0.01).item(), 6)
        1.0
    """
    images, texts, temperature = _checked(images, texts, temperature)
    images, captions = stored_scoring_rows(images, texts)
    return infonce_log_probabilities(images, captions, temperature, texts_are_unit=True).exp().mean()


def infonce_bound(images: Tensor, texts: Tensor, temperature: float) -> Tensor:
    """The InfoNCE lower bound on the mutual information of images and captions, ``log M + mean_j log p_jj``.

    It is at most ``log M`` nats, however strong the dependence; at CLIP's temperature (0.01) it approaches that
    cap for well-aligned pairs. The temperature has no default: at 1 (the MID paper's code) the bound is at most
    about 2 nats whatever the alignment, since cosines lie in ``[-1, 1]`` (so ``p_jj <= e^2 / M``).

    Args:
        images: Image features ``(M, D)``.
        texts: Caption features ``(M, D)``, paired row by row.
        temperature: Divides the cosines before the softmax (0.01 for CLIP's logit scale).

    Returns:
        0-dim float64 tensor, in nats, on the features' device.

    Raises:
        TypeError: If the features are not floating tensors.
        ValueError: As :func:`infonce`.

    Example:
        >>> import math, torch
        >>> from mid_metric.functional import infonce_bound
        >>> images = torch.eye(4)
        >>> bound = infonce_bound(images, images, temperature=0.01)   # each image picks its caption: log 4
        >>> round(bound.item(), 6), round(math.log(4), 6)
        (1.386294, 1.386294)
    """
    images, texts, temperature = _checked(images, texts, temperature)
    images, captions = stored_scoring_rows(images, texts)
    log_probabilities = infonce_log_probabilities(images, captions, temperature, texts_are_unit=True)
    # Each term divided first: at a tiny temperature the terms are near -2 / temperature, and their sum overflows.
    return math.log(images.shape[0]) + log_probabilities.div_(images.shape[0]).sum()
