"""The batch scores of ``forward``: the mean PMI of a candidate batch, under a reference refitted on a schedule."""

from __future__ import annotations

from typing import Any, Callable, Optional

from torch import Tensor
from torchmetrics.utilities.exceptions import TorchMetricsUserError

from mid_metric._checks import check_finite_result
from mid_metric.gaussian import (
    GaussianReference,
    WhiteningMatrices,
    pointwise_mutual_information_by_products,
    whitening_matrices,
)
from mid_metric.metrics._base import are_features

__all__ = ["RefitSchedule", "BatchScorer", "ForwardMethod"]


class RefitSchedule:
    """When ``forward`` refits the reference it scores batches with: first use, then each time the rows double.

    A refit is due before the first batch score, and then once the reference pairs added since the last fit
    (attempted or not) are at least as many as it had: the batch scores then always use at least half of the
    reference, and an epoch of ``S`` steps pays about ``log2(S)`` factorisations instead of ``S``.

    Example:
        >>> schedule = RefitSchedule()
        >>> schedule.due()
        True
        >>> schedule.record(None, rows=100)  # a failed fit from 100 pairs
        >>> schedule.add_reference_rows(99)
        >>> schedule.due()
        False
        >>> schedule.add_reference_rows(1)
        >>> schedule.due()
        True
    """

    def __init__(self) -> None:
        self.reference: Optional[GaussianReference] = None
        self.matrices: Optional[WhiteningMatrices] = None
        self._attempted = False
        self._rows_at_fit = 0
        self._rows_since_fit = 0

    def clear(self) -> None:
        """Forget the fit: the reference statistics were replaced."""
        self.__init__()

    def add_reference_rows(self, rows: int) -> None:
        """Count reference pairs added since the last fit."""
        self._rows_since_fit += rows

    def due(self) -> bool:
        """Whether the next batch score should refit first."""
        return not self._attempted or self._rows_since_fit >= max(self._rows_at_fit, 1)

    def record(self, reference: Optional[GaussianReference], rows: int) -> None:
        """Record a fit from ``rows`` reference pairs (``reference`` is ``None`` when it failed)."""
        self.reference, self._attempted = reference, True
        self.matrices = None if reference is None else whitening_matrices(reference)
        self._rows_at_fit, self._rows_since_fit = rows, 0


class BatchScorer:
    """Scores candidate batches for ``forward``, refitting the reference on the schedule of :class:`RefitSchedule`.

    A batch on its own has no reference, so its score is the mean PMI of its pairs under the reference fitted so
    far (:func:`mid_metric.gaussian.pointwise_mutual_information_by_products`): a progress indicator, never the
    epoch value. Fitting at every step would cost a factorisation per step; the schedule refits when the
    reference pairs have doubled since the last fit, about ``log2(S)`` times in an epoch of ``S`` steps.

    Example:
        >>> import torch
        >>> from mid_metric import moments
        >>> from mid_metric.gaussian import reference_from_moments
        >>> rows = torch.randn(200, 4, dtype=torch.float64)
        >>> scorer = BatchScorer()
        >>> fit = lambda: reference_from_moments(moments.from_features(rows), image_dim=2)
        >>> scorer.add_reference_rows(200)
        >>> scorer.score(fit, lambda: 200, rows[:8, :2], rows[:8, 2:]).shape
        torch.Size([])
    """

    def __init__(self) -> None:
        self.schedule = RefitSchedule()

    def clear(self) -> None:
        """Forget the fit: the reference statistics were replaced."""
        self.schedule.clear()

    def add_reference_rows(self, rows: int) -> None:
        """Count reference pairs added since the last fit."""
        self.schedule.add_reference_rows(rows)

    def score(
        self, fit: Callable[[], GaussianReference], reference_rows: Callable[[], int], images: Tensor, texts: Tensor
    ) -> Optional[Tensor]:
        """The mean PMI of a checked candidate batch, or ``None`` while no reference could be fitted.

        Args:
            fit: Fits the reference from every reference pair so far; raises ``ValueError`` when it cannot.
            reference_rows: The number of reference pairs so far (asked when a fit fails).
            images: Image features ``(B, Dx)``.
            texts: Text features ``(B, Dy)``.
        """
        schedule = self.schedule
        if schedule.due():
            try:
                reference: Optional[GaussianReference] = fit()
            except ValueError:
                reference = None
            schedule.record(reference, reference.count if reference is not None else reference_rows())
        if schedule.reference is None or schedule.matrices is None:
            return None
        value = pointwise_mutual_information_by_products(schedule.reference, schedule.matrices, images, texts).mean()
        try:
            return check_finite_result(value, "the batch PMI")
        except ValueError:
            return None


class ForwardMethod:
    """The ``forward`` of :class:`~mid_metric.MutualInformationDivergence`: accumulate, then score the batch.

    Mixed into the metric, which provides the attributes annotated here.
    """

    _is_synced: bool
    _forward_cache: Any
    _batch_scores: BatchScorer
    feature_extractor: Any
    extract_features: Any
    update: Any
    num_pairs: dict[str, int]
    _fitted_reference: Callable[[], GaussianReference]

    def forward(self, images: Any, texts: Any, real: bool) -> Optional[Tensor]:
        """Accumulate a batch, like :meth:`update`, and return a batch score when one is defined.

        A batch on its own cannot be scored (it has no reference of its own), so, unlike most torchmetrics
        metrics, ``forward`` does not compute MID on the batch. It adds the batch to the global state and returns
        the mean PMI of a candidate batch, a progress indicator; otherwise (reference batches, or no usable
        reference yet) it returns ``None``. Log the metric object itself for the epoch value, which is exact.

        The reference the batches are scored with is refitted on a schedule, not on every call: when first
        needed, then each time the reference pairs seen since its fit are as many as it was fitted on (so it has
        at least half of them, and an epoch of ``S`` steps refits about ``log2(S)`` times). A failed fit (too few
        pairs yet) is retried on the same schedule. :meth:`pmi` always uses the current reference.
        """
        if self._is_synced:
            raise TorchMetricsUserError(
                "The Metric shouldn't be synced when performing ``forward``. HINT: Did you forget to call ``unsync`` ?."
            )
        if self.feature_extractor is not None and not are_features(images, texts):
            images, texts = self.extract_features(images, texts)  # encode once, for update and the batch score
        self.update(images, texts, real=real)
        batch_value = None
        if not real and images.shape[0] > 0:
            reference_rows = lambda: self.num_pairs["reference"]  # noqa: E731 - asked only when a fit fails
            batch_value = self._batch_scores.score(self._fitted_reference, reference_rows, images, texts)
        self._forward_cache = batch_value
        return batch_value
