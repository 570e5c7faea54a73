"""The jackknife's statistics of one group: ``K`` sub-states by row hash, whose merge is the full statistics."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Optional

import torch
from torch import Tensor

from mid_metric import moments
from mid_metric._checks import check_packed_moments
from mid_metric.jackknife import grouping
from mid_metric.store.moment_store import MomentStore

__all__ = ["JackknifeStore"]

# Largest relative gap accepted between a full state saved by mid-metric 0.3 and the merge of its groups: the same
# rows summed in two orders differ by rounding (about 1e-13 relative), other rows by orders of magnitude more.
_LEGACY_TOLERANCE = 1e-9


class JackknifeStore(MomentStore):
    """A :class:`MomentStore` that keeps one packed state per jackknife group, and no separate full state.

    Every row goes to one of ``K`` groups by a hash of its text, image or both (:func:`mid_metric.jackknife.row_groups`)
    and is accumulated once, into its group's state, each group with its own recentring schedule. The full
    statistics, which the reference fit, :meth:`~mid_metric.MutualInformationDivergence.pmi` and the batch scores
    read, are the exact merge of the groups (:func:`mid_metric.jackknife.merge_groups`), computed when read and
    kept until the statistics change. Memory and sync traffic are ``K`` packed states.

    Args:
        joint_dim: ``Dx + Dy``.
        split: ``Dx``.
        buffer_rows: Rows of the staging area (a flush is split among the groups).
        num_groups: ``K``.
        key: ``"text"``, ``"image"`` or ``"joint"``: what decides a row's group.

    Example:
        >>> store = JackknifeStore(joint_dim=3, split=2, buffer_rows=1, num_groups=4, key="text")
        >>> rows = torch.randn(40, 3, dtype=torch.float64)
        >>> store.accumulate(rows)
        >>> store.state.shape, store.flushed_count()
        (torch.Size([4, 16]), 40)
        >>> full = moments.from_features(rows)
        >>> torch.allclose(moments.mean_and_scatter(store.moments())[1], moments.mean_and_scatter(full)[1])
        True
    """

    state_suffix = "group_moments"

    def __init__(self, joint_dim: int, split: int, buffer_rows: int, num_groups: int, key: str) -> None:
        self.num_groups, self.key = num_groups, key
        super().__init__(joint_dim, split, buffer_rows)
        #: Batches accumulated into each group since the last reset: the groups' recentring schedules.
        self.group_batches_seen = [0] * num_groups
        self._merged: Optional[tuple[int, Tensor]] = None  # (statistics version, merge of the groups)
        self._version = 0  # changes with the flushed statistics only (not with staged rows)

    def empty_state(self, device: Optional[torch.device] = None) -> Tensor:
        """``K`` zero packed states, ``(K, (D + 1)^2)``."""
        return grouping.empty_group_moments(self.num_groups, self.joint_dim, device=device)

    @staticmethod
    def reduce(stacked: Tensor) -> Tensor:
        """Merge ``(W, K, P)`` stacked group states group by group (the state's ``dist_reduce_fx``)."""
        return grouping.reduce_group_states(stacked)

    def check_state(self, value: object, name: str) -> Tensor:
        """Check ``K`` group states from outside and return a float64 copy on this store's device.

        Raises:
            ValueError: If ``value`` is not ``K`` valid packed states of this dimension.
        """
        shape = (self.num_groups, moments.packed_size(self.joint_dim))
        if not isinstance(value, Tensor) or value.ndim != 2 or tuple(value.shape) != shape:
            got = tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__
            raise ValueError(f"`{name}` must be {shape[0]} packed moments states, shape {shape}, got {got}.")
        rows = [check_packed_moments(row, f"{name}[{index}]", self.joint_dim) for index, row in enumerate(value)]
        return torch.stack(rows).to(device=self.device, dtype=torch.float64)

    def _changed(self, statistics: bool = True) -> None:
        super()._changed(statistics)
        if statistics:
            self._version += 1

    def moments(self) -> Tensor:
        """The full statistics: the exact merge of the group states, cached until they change."""
        if self._merged is None or self._merged[0] != self._version:
            self._merged = (self._version, grouping.merge_groups(self._state))
        return self._merged[1]

    def flushed_count(self) -> int:
        """How many rows the group states hold together."""
        return int(self._state[:, 0].sum())

    def accumulate(self, rows: Tensor | Sequence[Tensor], workspace: Optional[Tensor] = None) -> None:
        """Add a batch of joint rows (or its column blocks) to their groups' states now (one host sync on CUDA).

        Each group's rows are gathered into a buffer of the jackknife's own and centred there, so ``workspace``
        (the interface of :meth:`MomentStore.accumulate`) is not used.
        """
        rows = _joint(rows, self.device)
        if rows.shape[0] == 0:
            return
        self.batches_seen += 1
        groups = grouping.row_groups(rows, self.split, self.num_groups, self.key)
        grouping.accumulate_groups_(self._updatable(), rows, groups, self.group_batches_seen, self.split)
        self._changed()

    def accumulate_paired(
        self, candidate: MomentStore, rows: Tensor | Sequence[Tensor], candidate_rows: Tensor | Sequence[Tensor]
    ) -> None:
        """As :meth:`MomentStore.accumulate_paired`, group by group when the groups come from the shared texts.

        With another key a reference row and its candidate may fall in different groups, and each store
        accumulates its own rows (bitwise the same result).
        """
        rows, candidate_rows = _joint(rows, self.device), _joint(candidate_rows, self.device)
        if self.key != "text" or not isinstance(candidate, JackknifeStore):
            self.accumulate(rows)
            candidate.accumulate(candidate_rows)
            return
        if rows.shape[0] == 0:
            return
        self.batches_seen += 1
        candidate.batches_seen += 1
        groups = grouping.row_groups(rows, self.split, self.num_groups, self.key)
        counters = (self.group_batches_seen, candidate.group_batches_seen)
        states = (self._updatable(), candidate._updatable())
        grouping.accumulate_group_pairs_(*states, rows, candidate_rows, groups, counters, self.split)
        self._changed()
        candidate._changed()

    def reset_host_state(self) -> None:
        """Forget the staged rows and the batch counts."""
        super().reset_host_state()
        self.group_batches_seen = [0] * self.num_groups

    def check_legacy_full_state(self, full: object, groups: Tensor, name: str) -> None:
        """Check a full state saved by mid-metric 0.3 next to its groups: it must be their merge, to rounding.

        0.3 kept the full statistics as well as the groups'. They hold the same rows, so a checkpoint of 0.3 loads
        with the full state checked against the merge of ``groups`` (count exact; mean and scatter to a relative
        ``1e-9`` of their scale) and then dropped; the store rebuilds it from the groups when read.

        Raises:
            ValueError: If ``full`` is not valid packed moments, or not the merge of ``groups``.
        """
        packed = check_packed_moments(full, name, self.joint_dim).to(device=groups.device, dtype=torch.float64)
        merged = grouping.merge_groups(groups)
        if float(packed[0]) != float(merged[0]):
            raise ValueError(
                f"`{name}` counts {float(packed[0]):g} pairs, but its jackknife groups hold {float(merged[0]):g}: it"
                " is not the full state of these groups."
            )
        if float(merged[0]) == 0.0:
            return
        mean, scatter = moments.mean_and_scatter(packed)
        group_mean, group_scatter = moments.mean_and_scatter(merged)
        scale = float(group_scatter.diagonal().abs().max())
        mean_scale = float(group_mean.abs().max()) + math.sqrt(scale / float(merged[0]))
        mean_gap = float((mean - group_mean).abs().max())
        scatter_gap = float((scatter - group_scatter).abs().max())
        if mean_gap > _LEGACY_TOLERANCE * mean_scale or scatter_gap > _LEGACY_TOLERANCE * max(scale, 1e-300):
            raise ValueError(
                f"`{name}` differs from the merge of its jackknife groups (mean by {mean_gap:.3g}, scatter by"
                f" {scatter_gap:.3g}): it is not the full state of these groups."
            )


def _joint(rows: Tensor | Sequence[Tensor], device: torch.device) -> Tensor:
    """Joint float64 rows from whole rows or from their column blocks ``(images, texts)``."""
    return rows if isinstance(rows, Tensor) else moments.joint_rows(*rows, device=device)
