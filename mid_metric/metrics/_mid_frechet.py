"""MID's Fréchet distance: FD between its reference and candidate images, from the image block of its own moments."""

from __future__ import annotations

from typing import Any, Callable, Optional, Union

from torch import Tensor

from mid_metric.functional.frechet_moments import (
    FrechetResult,
    check_fd_bias_correction,
    frechet_distance_from_packed,
    jackknife_frechet_distance,
    leading_block,
)
from mid_metric.store import GROUPS, PairedStores

__all__ = ["FrechetMethods"]


class FrechetMethods:
    """The Fréchet-distance methods of :class:`~mid_metric.MutualInformationDivergence` (mixed into it).

    MID keeps the count, mean and scatter of the joint features ``[x; y]`` of its reference pairs and of its
    candidate pairs; their image blocks are those of the real images and of the generated ones, which is all FD
    needs. So FD costs no second pass and no extra state. The metric provides the attributes annotated here.
    """

    image_dim: int
    uses_jackknife: bool
    dist_sync_fn: Any
    sync_context: Any
    _stores: PairedStores
    _reference_statistics: Callable[[], Tensor]  # the reference's packed moments, files and staged rows included
    _check_device: Callable[[], None]

    def frechet_distance(self, bias_correction: Union[bool, str, None] = None) -> Tensor:
        """The Fréchet distance between the images of the reference pairs and those of the candidate pairs.

        It is the value of :class:`~mid_metric.FrechetDistance` fed the same images (to rounding), read from the
        image blocks of this metric's statistics: reference files and staged rows included, as :meth:`compute`.
        Under DDP it syncs the statistics like :meth:`compute`, so call it on every rank.

        Args:
            bias_correction: ``False`` for the plug-in value, ``"jackknife"`` for the delete-a-group jackknife over
                this metric's own jackknife groups (it needs ``bias_correction="jackknife"`` here). ``None`` (the
                default) follows the metric: the jackknife FD for a jackknife MID, the plug-in value otherwise.
                MID's groups come from its ``jackknife_key``: with ``"text"``, a real image and the image generated
                from its caption fall in the same group, the right grouping for the text-to-image protocol.

        Returns:
            0-dim float64 tensor on the state's device.

        Raises:
            ValueError: If ``bias_correction`` is not ``None``, ``False`` or ``"jackknife"``, or ``"jackknife"`` on a
                metric without the jackknife, or either group has fewer than 2 images (see
                :meth:`FrechetDistance.compute <mid_metric.FrechetDistance.compute>`).

        Example:
            >>> import torch
            >>> from mid_metric import MutualInformationDivergence
            >>> x, y = torch.randn(50, 2, dtype=torch.float64), torch.randn(50, 2)
            >>> mid = MutualInformationDivergence(feature=2)
            >>> mid.update(x, y, real=True)
            >>> mid.update(x + torch.tensor([3.0, 4.0]), y, real=False)   # the same images, shifted by (3, 4)
            >>> round(mid.frechet_distance().item(), 9)
            25.0
        """
        return self._frechet_result(bias_correction, None).value

    def frechet_distance_with_ci(self, level: float = 0.95) -> FrechetResult:
        """The jackknife Fréchet distance over this metric's groups, with its standard error and a ``level`` interval.

        Args:
            level: Nominal coverage, in ``(0, 1)``.

        Returns:
            :class:`~mid_metric.functional.frechet_moments.FrechetResult`.

        Raises:
            ValueError: If the metric was built without ``bias_correction="jackknife"``, ``level`` is not in
                ``(0, 1)``, or as :meth:`frechet_distance`.
        """
        return self._frechet_result("jackknife", level)

    def _frechet_result(self, bias_correction: Union[bool, str, None], level: Optional[float]) -> FrechetResult:
        jackknifed = self.uses_jackknife if bias_correction is None else bool(check_fd_bias_correction(bias_correction))
        if jackknifed and not self.uses_jackknife:
            raise ValueError(
                "The jackknife Fréchet distance reuses MID's jackknife groups: build the metric with"
                " bias_correction='jackknife', or use FrechetDistance(bias_correction='jackknife')."
            )
        self._check_device()
        with self.sync_context(dist_sync_fn=self.dist_sync_fn, should_sync=True, should_unsync=True):
            if jackknifed:
                real, generated = (leading_block(self._stores[group].state, self.image_dim) for group in GROUPS)
                return jackknife_frechet_distance(real, generated, level)
            candidates = self._stores.candidate
            real = leading_block(self._reference_statistics(), self.image_dim)
            generated = leading_block(candidates.including_staged(candidates.moments()), self.image_dim)
            value = frechet_distance_from_packed(real, generated)
            return FrechetResult(value, value, int(real[0]), int(generated[0]))
