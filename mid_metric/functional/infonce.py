r"""InfoNCE: the MID paper's mean matching probability, and the InfoNCE bound on mutual information in nats.

For candidate pairs ``(v_j, c_j)``, ``j = 1..M``, with ``s_{jk} = \cos(v_j, c_k)`` and temperature ``\tau``, the
probability that ``v_j`` picks its own caption among all ``M`` candidate captions is

.. math:: p_{jj} = \frac{\exp(s_{jj} / \tau)}{\sum_k \exp(s_{jk} / \tau)}

:func:`infonce` returns ``mean_j p_jj`` (the MID paper's "InfoNCE" column, at ``tau = 1``), and
:func:`infonce_bound` returns ``log M + mean_j log p_jj``, the InfoNCE lower bound on ``I(X; Y)`` in nats (van den
Oord et al. 2018): the negative of the contrastive loss, shifted by ``log M``. Both are computed a block of images
at a time with ``logsumexp`` in float64, so no ``M x M`` matrix is ever built. ``docs/companion_metrics.md``
relates the bound to MID's ``I(X; Y)`` term.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from mid_metric._checks import (
    check_features,
    check_nonzero_rows,
    check_pair_count,
    check_pairs,
    check_temperature,
)
from mid_metric.functional._similarity import score_blocks

__all__ = ["infonce", "infonce_bound", "infonce_log_probabilities"]


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
    for scores, matching in score_blocks(images, texts, texts_are_unit=texts_are_unit):
        if temperature != 1.0:
            scores.div_(temperature)
            matching = matching / temperature
        # log-sum-exp in place in the block (cosines are finite, so the row maximum is too)
        top = scores.amax(dim=1, keepdim=True)
        total = scores.sub_(top).exp_().sum(dim=1)
        parts.append(matching - top.squeeze(1) - total.log())
    return torch.cat(parts) if parts else torch.empty(0, dtype=torch.float64, device=images.device)


def _checked(images: object, texts: object, temperature: object) -> tuple[Tensor, Tensor, float]:
    temperature = check_temperature(temperature)
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
            a finite number > 0.

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
    return infonce_log_probabilities(images, texts, temperature).exp().mean()


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
    return math.log(images.shape[0]) + infonce_log_probabilities(images, texts, temperature).mean()
