"""The plumbing that MID and FrechetDistance share between their moment stores and torchmetrics.

Both metrics keep their statistics in :class:`~mid_metric.store.PairedStores` (``self._stores``), which stage rows
on the host before they reach the registered states. The methods here flush those rows before a sync or a
``metric_state`` read, and save or restore the stores' host state (batch counts, staged rows and flags) as the
module's extra state.
"""

from __future__ import annotations

from typing import Any, Union

from torch import Tensor

from mid_metric.metrics._base import _EXTRA_STATE_KEY
from mid_metric.store import PairedStores

__all__ = ["StoreStateMethods"]


class StoreStateMethods:
    """Sync, merge and extra-state methods of a metric whose states live in ``self._stores`` (mixed into it)."""

    _stores: PairedStores
    _is_synced: bool
    _defaults: dict[str, Any]

    def sync(self, *args: Any, **kwargs: Any) -> None:
        """Flush the staged rows, then sync the states across processes as :meth:`torchmetrics.Metric.sync`."""
        if not self._is_synced:
            self._stores.flush()
        super().sync(*args, **kwargs)  # type: ignore[misc]

    def get_extra_state(self) -> dict[str, Any]:
        """Return the host state that ``state_dict()`` saves next to the statistics (:meth:`PairedStores.extra_state`).

        The per-group batch counters, the rows staged but not yet added to the statistics (at most ``buffer_rows``
        per group) and, for MID, whether the candidates' texts are the reference's row for row. Saving the staged
        rows instead of flushing them keeps ``state_dict()`` free of side effects, so a metric restored from a
        checkpoint mid-epoch continues bit for bit like an uninterrupted one.
        """
        return self._stores.extra_state()

    def set_extra_state(self, state: Any) -> None:
        """Restore the host state saved by :meth:`get_extra_state` (``load_state_dict`` calls this).

        Checkpoints of mid-metric 0.2 and earlier hold the batch counters only. MID's ``texts_shared`` flag is kept only
        when the two groups' text statistics agree bit for bit.

        Raises:
            ValueError: If ``state`` is not such a dict.
        """
        self._stores.load_extra_state(state)

    @property
    def metric_state(self) -> dict[str, Any]:
        """The states of the metric (staged rows flushed first), e.g. to pass to another metric's ``merge_state``."""
        self._stores.flush()
        return {name: getattr(self, name) for name in self._defaults}

    def _merge_with_staged_rows(self, incoming_state: Union[dict[str, Any], Any]) -> None:
        """Merge the incoming states as the base class does, then the rows a ``state_dict()`` dict holds staged.

        The dict's extra state is checked before anything is merged, so one that raises changes nothing.
        """
        staged: dict[str, Tensor] = {}
        if isinstance(incoming_state, dict) and _EXTRA_STATE_KEY in incoming_state:
            self._stores.check_extra_state(incoming_state[_EXTRA_STATE_KEY])
            staged = incoming_state[_EXTRA_STATE_KEY].get("staged", {})
        super().merge_state(incoming_state)  # type: ignore[misc]  # a metric's metric_state flushes it first
        self._stores.add_rows(staged)

    def _before_merge(self) -> None:
        self._stores.flush()  # only once the incoming states are known to be valid: a refused merge changes nothing
