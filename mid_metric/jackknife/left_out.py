"""The leave-one-group-out fits of a jackknife, computed side by side on the CPU."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Callable

import torch
from torch import Tensor

from mid_metric.cpu_threads import side_by_side

__all__ = ["left_out_fits"]

# The most leave-one-group-out fits computed at a time on the CPU (one torch thread each), which bounds the memory:
# a fit of MID's at D = 768 + 768 holds about 135 MiB.
_FITS_AT_ONCE = 4


def left_out_fits(fit_without: Callable[[int], Tensor], groups: Sequence[int], device: torch.device) -> list[Tensor]:
    """Return ``[fit_without(k) for k in groups]``: on the CPU side by side, each on one torch thread, 4 at most.

    A leave-one-group-out fit is a chain of factorisations and products on a few hundred columns, whose parallel
    regions pay more in barriers than they gain; fits on separate threads do not wait for each other
    (:func:`mid_metric.cpu_threads.side_by_side`). Each fit is computed on one thread whatever the number of
    threads, so the values are those of the loop, bit for bit, and so is the first error. On other devices this is
    the loop.

    Args:
        fit_without: The estimate with group ``k`` left out.
        groups: The groups to leave out, in the order of the results.
        device: The device of the statistics.

    Returns:
        The estimates, in the order of ``groups``.

    Example:
        >>> left_out_fits(lambda k: torch.tensor(float(k * k)), [1, 2, 3], torch.device("cpu"))
        [tensor(1.), tensor(4.), tensor(9.)]
    """
    if device.type != "cpu":
        return [fit_without(k) for k in groups]
    return side_by_side(fit_without, groups, _FITS_AT_ONCE)
