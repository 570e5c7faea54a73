"""The ``InfoNCE`` metric for torchmetrics: the mean probability that a generated image picks its own prompt."""

from __future__ import annotations

from typing import Any

from torch import Tensor

from mid_metric._checks import check_pair_count
from mid_metric.functional.infonce import check_infonce_temperature, infonce_log_probabilities
from mid_metric.metrics._base import FeatureSpec
from mid_metric.metrics._companion import DEFAULT_MAX_SAMPLES, StoredPairsMetric


class InfoNCE(StoredPairsMetric):
    r"""InfoNCE as the MID paper's code reports it: the mean softmax probability of the matching caption.

    For each candidate pair, the softmax over all ``M`` candidate captions of the cosine similarities divided by
    ``temperature``, taken at the pair's own caption, averaged over the pairs:

    .. math:: \mathrm{InfoNCE} = \frac1M \sum_j \frac{\exp(\cos(v_j, c_j) / \tau)}{\sum_k \exp(\cos(v_j, c_k) / \tau)}

    At ``temperature=1`` (the MID paper's code) the probabilities stay close to ``1 / M``. The InfoNCE *bound* on
    mutual information, ``log M + mean_j log p_jj`` in nats, is
    :func:`mid_metric.functional.infonce_bound`. The candidate features are kept in float32 (at most
    ``max_samples`` pairs, gathered once at ``compute()`` under DDP) and scored a block of images at a time, from
    float32 products with ``logsumexp`` in float64: no ``M x M`` matrix is built. The matching scores are float64, and
    below a temperature of ``2 / log M`` so are the scores near each row's maximum; each pair's value agrees with a
    float64 computation within a relative 1e-6.
    Batches passed with ``real=True`` are skipped. Under DDP, ``compute()`` and :meth:`per_sample` are
    collectives: call them on every rank.

    Args:
        feature: Feature size (an int, or equal ``(image_dim, text_dim)``) or a feature extractor.
        temperature: Divides the cosines before the softmax (1: the MID paper's code; 0.01: CLIP's logit scale).
        max_samples: The cap on the stored pairs (30,000, the MID paper's ``limit``); a batch beyond it raises.
        validate_args: Check inputs for shape, dtype, NaN/Inf and zero rows.
        kwargs: Passed to :class:`torchmetrics.Metric`.

    Raises:
        TypeError: If ``feature`` is none of the accepted forms, or ``max_samples`` is not an int.
        ValueError: If ``temperature`` is not a finite number of at least about 2.2e-308 (the smallest normal
            float64), ``max_samples`` is below 1, or the image and text features differ in size.

    Example:
        >>> import torch
        >>> from mid_metric import InfoNCE
        >>> metric = InfoNCE(feature=3)
        >>> metric.update(torch.eye(3)[:2], torch.eye(3)[:2])
        >>> metric.update(torch.eye(3)[2:], torch.eye(3)[2:])
        >>> round(metric.compute().item(), 6)           # e / (e + 2) for each pair
        0.576117
        >>> sharp = InfoNCE(feature=3, temperature=0.01)
        >>> sharp.update(torch.eye(3), torch.eye(3))
        >>> sharp.per_sample().tolist()
        [1.0, 1.0, 1.0]
    """

    def __init__(
        self,
        feature: FeatureSpec = 768,
        temperature: float = 1.0,
        max_samples: int = DEFAULT_MAX_SAMPLES,
        validate_args: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(feature, max_samples, validate_args, **kwargs)
        self.temperature = check_infonce_temperature(temperature)

    def _values(self, images: Tensor, captions: Tensor) -> Tensor:
        check_pair_count(images.shape[0], 1, "InfoNCE")
        return infonce_log_probabilities(images, captions, self.temperature, texts_are_unit=True).exp()

    def _sync_settings(self) -> dict[str, object]:
        return {**super()._sync_settings(), "temperature": self.temperature}

    def compute(self) -> Tensor:
        """Return the mean matching probability over all candidate pairs (every rank's under DDP), 0-dim float64.

        Raises:
            ValueError: If there is no pair, or the ranks together hold more than ``max_samples``.
        """
        return super().compute()

    def per_sample(self) -> Tensor:
        """Return each pair's matching probability ``p_jj``, float64 ``(M,)``, in the order the pairs were passed.

        Under DDP a collective whose result is rank-major (rank 0's pairs, then rank 1's, ...).

        Raises:
            ValueError: As :meth:`compute`.
        """
        return super().per_sample()
