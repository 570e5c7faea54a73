"""The batch scores of ``forward``: the mean PMI of a candidate batch, under a reference refitted on a schedule."""

from __future__ import annotations

from typing import Callable, Optional

from torch import Tensor

from mid_metric._checks import check_finite_result
from mid_metric.gaussian import (
    GaussianReference,
    WhiteningMatrices,
    pointwise_mutual_information_by_products,
    whitening_matrices,
)

__all__ = ["RefitSchedule", "BatchScorer"]


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
