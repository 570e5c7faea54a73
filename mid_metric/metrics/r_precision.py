"""The ``CLIPRPrecision`` metric for torchmetrics: the exact expectation of the MID paper's CLIP-R-Precision."""

from __future__ import annotations

from typing import Any

from torch import Tensor

from mid_metric._checks import check_choice, check_positive_int
from mid_metric.functional.r_precision import NEGATIVES, check_r_precision_count, r_precision_values
from mid_metric.metrics._base import FeatureSpec
from mid_metric.metrics._companion import DEFAULT_MAX_SAMPLES, StoredPairsMetric


class CLIPRPrecision(StoredPairsMetric):
    r"""CLIP-R-Precision: how often a generated image's own prompt outscores ``num_negatives`` drawn prompts.

    The MID paper's code (like text-to-image GAN papers such as XMC-GAN) scores each candidate pair
    ``(image_j, text_j)`` against 99 captions drawn at random from all ``M`` candidate captions and counts a hit
    when the matching caption scores highest by cosine similarity. That value is random; this metric returns its
    exact expectation, with no Monte-Carlo noise and no seed:

    - ``negatives="replacement"`` (default, the MID paper's code): the negatives are drawn uniformly with
      replacement from all ``M`` captions (the matching one included), and ties count as hits, so
      ``E = mean_j (c_j / M)^n`` with ``c_j = #{k : cos(image_j, text_k) <= cos(image_j, text_j)}``;
    - ``negatives="distinct"`` (the text-to-image papers'): ``n`` distinct other captions, each of which must score
      strictly lower, so ``E = mean_j C(b_j, n) / C(M - 1, n)`` with ``b_j`` the number of captions that score
      strictly lower; it needs ``M > n``.

    Scores within :data:`~mid_metric.functional.r_precision.TIE_TOLERANCE` (1e-12) of each other tie. The
    candidate features are kept in float32 (see :class:`~mid_metric.metrics._companion.StoredPairsMetric`: at most
    ``max_samples`` pairs, gathered once at ``compute()`` under DDP) and scored a block of images at a time, so
    memory stays ``O(M D)``, never ``O(M^2)``. The blocks are float32 products; every score within their error
    bound of a pair's threshold is recomputed in float64, so the counts are exactly those of the float64 scores.
    Batches passed with ``real=True`` are skipped. Under DDP, ``compute()`` and :meth:`per_sample` are
    collectives: call them on every rank.

    Args:
        feature: Feature size (an int, or equal ``(image_dim, text_dim)``) or a feature extractor.
        num_negatives: Negatives per pair (99: R-precision among 100 captions).
        negatives: ``"replacement"`` or ``"distinct"``.
        max_samples: The cap on the stored pairs (30,000, the MID paper's ``limit``); a batch beyond it raises.
        validate_args: Check inputs for shape, dtype, NaN/Inf and zero rows.
        kwargs: Passed to :class:`torchmetrics.Metric`.

    Raises:
        TypeError: If ``feature`` is none of the accepted forms, or ``num_negatives``/``max_samples`` is not an int.
        ValueError: If ``num_negatives`` or ``max_samples`` is below 1, ``negatives`` is unknown, or the image and
            text features differ in size.

    Example:
        >>> import torch
        >>> from mid_metric import CLIPRPrecision
        >>> _ = torch.manual_seed(0)
        >>> texts = torch.randn(300, 16)
        >>> images = texts + 1.5 * torch.randn(300, 16)    # images near their own prompts
        >>> metric = CLIPRPrecision(feature=16)
        >>> for start in range(0, 300, 100):
        ...     metric.update(images[start : start + 100], texts[start : start + 100])
        >>> round(metric.compute().item(), 4)
        0.4612
        >>> metric.per_sample().shape                      # each pair's probability of a hit
        torch.Size([300])
    """

    def __init__(
        self,
        feature: FeatureSpec = 768,
        num_negatives: int = 99,
        negatives: str = "replacement",
        max_samples: int = DEFAULT_MAX_SAMPLES,
        validate_args: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(feature, max_samples, validate_args, **kwargs)
        self.num_negatives = check_positive_int(num_negatives, "num_negatives")
        self.negatives = check_choice(negatives, "negatives", NEGATIVES)

    def _values(self, images: Tensor, captions: Tensor) -> Tensor:
        check_r_precision_count(images.shape[0], self.num_negatives, self.negatives)
        return r_precision_values(images, captions, self.num_negatives, self.negatives, texts_are_unit=True)

    def _sync_settings(self) -> dict[str, object]:
        return {**super()._sync_settings(), "num_negatives": self.num_negatives, "negatives": self.negatives}

    def compute(self) -> Tensor:
        """Return the expected CLIP-R-Precision over all candidate pairs (every rank's under DDP), 0-dim float64.

        Raises:
            ValueError: If there is no pair, fewer than ``num_negatives + 1`` with distinct negatives, or the ranks
                together hold more than ``max_samples``.
        """
        return super().compute()

    def per_sample(self) -> Tensor:
        """Return each pair's probability of a hit, float64 ``(M,)``, in the order the pairs were passed.

        Under DDP a collective whose result is rank-major (rank 0's pairs, then rank 1's, ...).

        Raises:
            ValueError: As :meth:`compute`.
        """
        return super().per_sample()
