"""One group's statistics: its packed float64 moments, the rows staged for them, and the recentring counter."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Optional

import torch
from torch import Tensor

from mid_metric import moments
from mid_metric._checks import check_packed_moments

__all__ = ["MomentStore"]


class MomentStore:
    """The statistics of one group of pairs (the reference or the candidates) of a metric.

    Rows come in as image and text features and are kept, cast to float64, in a staging area of ``buffer_rows``
    rows, so that small batches are accumulated as large ones; a full area, or a caller who reads the statistics,
    flushes them into the packed moments (:mod:`mid_metric.moments`). Each accumulated batch counts towards the
    recentring schedule of :func:`mid_metric.moments.accumulate_batch_`. A flush centres the staged rows in place;
    a batch of at least ``buffer_rows`` rows is accumulated at once, cast and centred in one pass into a float64
    workspace that is kept for the next such batch (as large as the largest of them; dropped on reset).

    :attr:`state` is the tensor the metric registers with torchmetrics under the name ``{group}_moments``: it is
    synced, merged, reset, moved and saved by the metric, which replaces it through this attribute. The store
    changes it in place only through its own methods, and :attr:`revision` changes with every change of the
    statistics (a staged row, an accumulated batch or a new state), so a value computed from them can be cached
    under it.

    Args:
        joint_dim: ``Dx + Dy``.
        split: ``Dx``: the update's GEMM blocks never straddle it (see :func:`mid_metric.moments.accumulate_`).
        buffer_rows: Rows of the staging area; ``1`` accumulates every batch at once.

    Example:
        >>> store = MomentStore(joint_dim=3, split=2, buffer_rows=4)
        >>> store.stage(torch.ones(3, 2), torch.zeros(3, 1))
        >>> store.staged_rows, store.flushed_count()
        (3, 0)
        >>> store.flush()
        >>> store.staged_rows, store.flushed_count(), store.batches_seen
        (0, 3, 1)
    """

    #: The state's name in the metric is ``{group}_{state_suffix}``.
    state_suffix = "moments"

    def __init__(self, joint_dim: int, split: int, buffer_rows: int) -> None:
        self.joint_dim, self.split, self.buffer_rows = joint_dim, split, buffer_rows
        self._state = self.empty_state()
        #: Batches accumulated since the last reset: the recentring schedule.
        self.batches_seen = 0
        #: Changes with every change of the statistics (staged rows included).
        self.revision = 0
        #: Rows in the staging area.
        self.staged_rows = 0
        self._area: Optional[Tensor] = None
        self._workspace: Optional[Tensor] = None

    # ----------------------------------------------------------------------------------------------- the state
    def empty_state(self, device: Optional[torch.device] = None) -> Tensor:
        """The state of a store that has seen no rows: zero packed moments."""
        return moments.empty_moments(self.joint_dim, device=device)

    @staticmethod
    def reduce(stacked: Tensor) -> Tensor:
        """Merge states stacked along dim 0 exactly (the state's ``dist_reduce_fx``: sync and ``merge_state``)."""
        return moments.merge(stacked)

    def check_state(self, value: object, name: str) -> Tensor:
        """Check a state from outside (a checkpoint, another metric) and return a float64 copy on this store's device.

        Raises:
            ValueError: If ``value`` is not valid packed moments of this dimension.
        """
        packed = check_packed_moments(value, name, self.joint_dim)
        return packed.to(device=self.device, dtype=torch.float64, copy=True)

    @property
    def state(self) -> Tensor:
        """The registered state: packed moments of the flushed rows."""
        return self._state

    @state.setter
    def state(self, value: Tensor) -> None:
        self._state = value
        self._changed()

    @property
    def device(self) -> torch.device:
        """The device of the state (the staging area follows it)."""
        return self._state.device

    def moments(self) -> Tensor:
        """The packed moments of every flushed row (the staged ones are not included)."""
        return self._state

    def flushed_count(self) -> int:
        """How many rows the statistics hold, staged rows not included (one host synchronisation on CUDA)."""
        return int(self._state[0])

    def count(self) -> int:
        """How many rows the store holds, staged rows included."""
        return self.flushed_count() + self.staged_rows

    def _changed(self, statistics: bool = True) -> None:
        """Record a change: of the flushed statistics, or (``statistics=False``) of the staged rows only."""
        self.revision += 1

    def _updatable(self) -> Tensor:
        """The state, as a tensor that can be updated in place in the current mode.

        A reset under ``torch.inference_mode()`` (as in Lightning's validation) makes an inference tensor, which
        cannot be updated in place outside that mode; it is replaced by an ordinary copy.
        """
        if self._state.is_inference() and not torch.is_inference_mode_enabled():
            self._state = self._state.clone()
        return self._state

    # ----------------------------------------------------------------------------------------------------- rows
    def accumulate(self, rows: Tensor | Sequence[Tensor], workspace: Optional[Tensor] = None) -> None:
        """Add a batch of joint rows ``[x; y]`` (or its column blocks ``(x, y)``) to the statistics now, as one batch.

        ``workspace``: as in :func:`mid_metric.moments.accumulate_` (a batch's own staging area when flushed).
        """
        if moments.row_count(rows) == 0:
            return
        self.batches_seen += 1
        moments.accumulate_batch_(self._updatable(), rows, self.batches_seen, self.split, workspace)
        self._changed()

    def accumulate_features(self, images: Tensor, texts: Tensor) -> None:
        """Add a checked batch of image and text features as one batch, through the kept workspace."""
        self.accumulate((images, texts), self.workspace(images.shape[0]))

    def accumulate_paired(
        self, candidate: MomentStore, rows: Tensor | Sequence[Tensor], candidate_rows: Tensor | Sequence[Tensor]
    ) -> None:
        """Add one batch to this store and to ``candidate``, whose rows share their text columns with ``rows``.

        The candidate's text block is copied from this store's (:func:`mid_metric.moments.accumulate_pairs_`):
        bitwise the same as two :meth:`accumulate` calls when both stores have seen the same texts in the same
        batches since they were empty, which the caller guarantees. Rows given as column blocks go through the
        kept workspace; whole rows are the stores' staging areas, centred in place.
        """
        count = moments.row_count(rows)
        if count == 0:
            return
        self.batches_seen += 1
        candidate.batches_seen += 1
        reference_state, candidate_state = self._updatable(), candidate._updatable()
        if isinstance(rows, Tensor):  # (a flush: each store's staged rows, in its own staging area)
            workspaces = (_writable(rows), _writable(candidate_rows))
        else:
            workspaces = (self.workspace(count), self.workspace(count))  # used one after the other
        moments.accumulate_pairs_(
            reference_state, candidate_state, rows, candidate_rows, self.batches_seen, self.split, workspaces
        )
        self._changed()
        candidate._changed()

    def workspace(self, rows: int) -> Tensor:
        """A float64 ``(>= rows, joint_dim)`` tensor on the state's device, kept for the next large batch."""
        area = self._workspace
        if area is None or area.shape[0] < rows or area.device != self.device or _writable(area) is None:
            area = torch.empty(rows, self.joint_dim, dtype=torch.float64, device=self.device)
        self._workspace = area
        return area

    @property
    def room(self) -> int:
        """Rows the staging area can still take."""
        return self.buffer_rows - self.staged_rows

    def stage(self, images: Tensor, texts: Tensor) -> None:
        """Copy a batch of at most :attr:`room` rows into the staging area (cast to float64 in the copy)."""
        area = self._staging_area()
        start, stop = self.staged_rows, self.staged_rows + images.shape[0]
        area[start:stop, : self.split].copy_(images)
        area[start:stop, self.split :].copy_(texts)
        self.staged_rows = stop
        self._changed(statistics=False)

    def staged(self) -> Tensor:
        """The staged rows, a view of the staging area (no copy)."""
        if self._area is None or self.staged_rows == 0:
            return torch.empty(0, self.joint_dim, dtype=torch.float64, device=self.device)
        return self._area[: self.staged_rows]

    def flush(self) -> None:
        """Accumulate the staged rows as one batch and empty the staging area."""
        if self.staged_rows > 0:
            staged = self.staged()
            self.accumulate(staged, workspace=_writable(staged))  # (centred in place: they are not needed after)
            self.staged_rows = 0

    def clear_staged(self) -> None:
        """Drop the staged rows (the statistics they were staged for were replaced)."""
        if self.staged_rows:
            self.staged_rows = 0
            self._changed(statistics=False)

    def restore_staged(self, rows: Tensor) -> None:
        """Put checked float64 rows back in the staging area (from a checkpoint).

        As many rows as fill the area, or more (saved by a metric with a larger buffer), are accumulated at once.
        """
        self.clear_staged()
        rows = rows.to(self.device)
        if rows.shape[0] >= self.buffer_rows:
            self.accumulate(rows)
            return
        self._staging_area()[: rows.shape[0]].copy_(rows)
        self.staged_rows = rows.shape[0]
        self._changed(statistics=False)

    def including_staged(self, packed: Tensor) -> Tensor:
        """``packed`` merged with the staged rows' moments, without flushing them (nothing changes)."""
        if self.staged_rows == 0:
            return packed
        rows = moments.from_features(self.staged())
        return moments.merge(torch.stack([packed, rows])) if int(packed[0]) > 0 else rows

    def _staging_area(self) -> Tensor:
        area = self._area
        if area is None or area.device != self.device:
            area = torch.empty(self.buffer_rows, self.joint_dim, dtype=torch.float64, device=self.device)
        elif area.is_inference() and not torch.is_inference_mode_enabled():
            area = area.clone()  # as in _updatable
        self._area = area
        return area

    def follow_state_device(self) -> None:
        """Move the staging area to the state's device (after the metric moved its states)."""
        if self._area is not None:
            self._area = self._area.to(device=self.device)

    def reset_host_state(self) -> None:
        """Forget the staged rows and the batch count (the metric resets the state itself)."""
        self.clear_staged()
        self.batches_seen = 0
        self._workspace = None

    # ----------------------------------------------------------------------------------------- checkpoints
    def text_statistics(self) -> list[Tensor]:
        """What the store holds of the text columns: counts, shifts, sums, text block of ``S2`` and staged texts.

        Two stores that have seen the same texts in the same batches give bitwise equal lists.
        """
        split, rows = self.split, self._state.reshape(-1, self._state.shape[-1])
        parts = [self.staged()[:, split:]]
        for packed in rows:
            fields = moments.unpack(packed)
            parts += [fields.count, fields.shift[split:], fields.shifted_sum[split:]]
            parts.append(fields.shifted_outer_sum[split:, split:].tril())
        return parts


def _writable(rows: Tensor) -> Optional[Tensor]:
    """``rows``, or ``None`` when they cannot be changed in place in the current mode (an inference tensor)."""
    return None if rows.is_inference() and not torch.is_inference_mode_enabled() else rows
