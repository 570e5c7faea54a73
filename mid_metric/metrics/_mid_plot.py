"""Plotting of MID values (one value, or one per epoch) with matplotlib, for ``MutualInformationDivergence``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Optional, Union

from torch import Tensor

__all__ = ["PlotMethod"]


class PlotMethod:
    """The ``plot`` method of :class:`~mid_metric.MutualInformationDivergence` (mixed into a torchmetrics metric)."""

    _plot: Any  # torchmetrics.Metric._plot

    def plot(self, val: Optional[Union[Tensor, Sequence[Tensor]]] = None, ax: Optional[Any] = None) -> tuple[Any, Any]:
        """Plot one MID value, or a sequence of values (e.g. one per epoch), with matplotlib.

        Follows torchmetrics' plot API; matplotlib is the optional extra ``plot`` (``pip install ".[plot]"``).

        Args:
            val: A value returned by :meth:`compute`, or a sequence of them, plotted as a curve over steps.
                ``None`` plots the result of :meth:`compute`.
            ax: A matplotlib axes to draw on; a new figure is made when ``None``.

        Returns:
            ``(fig, ax)``; ``fig`` is ``None`` when ``ax`` was given.

        Raises:
            ModuleNotFoundError: If matplotlib is not installed.

        Example:
            >>> import matplotlib
            >>> import torch
            >>> from mid_metric import MutualInformationDivergence
            >>> matplotlib.use("Agg")
            >>> metric = MutualInformationDivergence(feature=2)
            >>> values = [torch.tensor(0.3), torch.tensor(0.5), torch.tensor(0.6)]
            >>> fig, ax = metric.plot(values)
            >>> len(ax.lines[0].get_ydata())
            3
        """
        return self._plot(val, ax)
