"""A metric's two stores, reference and candidates: when staged rows are flushed, and their checkpoint form."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor

from mid_metric._checks import check_features
from mid_metric.store.jackknife_store import JackknifeStore
from mid_metric.store.moment_store import MomentStore

__all__ = ["GROUPS", "PairedStores"]

#: The two groups of pairs, in the order of their states.
GROUPS = ("reference", "candidate")
_STAGED, _SHARED, _GROUP_BATCHES = "staged", "texts_shared", "group_batches"


def _describe(value: object) -> str:
    """A short description of an invalid extra state for error messages (tensors by shape, not by value)."""
    if isinstance(value, dict):
        return "{" + ", ".join(f"{key!r}: {_describe(item)}" for key, item in value.items()) + "}"
    if isinstance(value, Tensor):
        return f"a tensor of shape {tuple(value.shape)}"
    return repr(value)


class PairedStores:
    """The reference store and the candidate store of one metric, and whether the candidates' texts are the reference's.

    While every batch since the last reset came in pairs with the same texts (:meth:`add_pairs`, the metric's
    ``update_pairs``), both stores have seen the same texts in the same batches, so the candidates' text block is
    copied from the reference's instead of computed again (:meth:`MomentStore.accumulate_paired`), and both are
    flushed together. Otherwise each store is flushed at its own row boundaries, which are those of
    :meth:`add_pairs` too, so two :meth:`add` calls per step give bitwise the statistics of one :meth:`add_pairs`.

    Args:
        reference: The reference pairs' store.
        candidate: The candidate pairs' store, of the same kind and sizes.
        metric_name: The name of the metric that holds the stores, for the messages about its extra state.

    Example:
        >>> stores = PairedStores(MomentStore(3, 2, buffer_rows=8), MomentStore(3, 2, buffer_rows=8))
        >>> x, y = torch.randn(5, 2), torch.randn(5, 1)
        >>> stores.add_pairs(x, y, 0.5 * x)
        >>> stores.reference.staged_rows, stores.texts_shared
        (5, True)
        >>> stores.add(False, x, y)  # 5 + 5 rows do not fit in 8: the staged ones are flushed first
        >>> stores.texts_shared, stores["candidate"].staged_rows, stores["candidate"].flushed_count()
        (False, 5, 5)
    """

    def __init__(self, reference: MomentStore, candidate: MomentStore, metric_name: str = "the metric") -> None:
        self.reference, self.candidate = reference, candidate
        self.metric_name = metric_name
        #: Whether every batch since the last reset came through :meth:`add_pairs`.
        self.texts_shared = True

    def __getitem__(self, group: str) -> MomentStore:
        return self.reference if group == GROUPS[0] else self.candidate

    def __iter__(self) -> Iterator[MomentStore]:
        return iter((self.reference, self.candidate))

    @property
    def buffer_rows(self) -> int:
        """Rows of each store's staging area."""
        return self.reference.buffer_rows

    # ---------------------------------------------------------------------------------------------------- rows
    def add(self, real: bool, images: Tensor, texts: Tensor) -> None:
        """Add a checked batch to the reference (``real``) or the candidates; their texts are no longer shared."""
        self.texts_shared = False
        self._stage(self.reference if real else self.candidate, images, texts)

    def add_pairs(self, real_images: Tensor, captions: Tensor, generated_images: Tensor) -> None:
        """Add checked reference pairs ``(real_images, captions)`` and candidates ``(generated_images, captions)``."""
        if self.texts_shared and real_images.shape[0] >= self.buffer_rows:
            self.flush()
            self.reference.accumulate_paired(self.candidate, (real_images, captions), (generated_images, captions))
            return
        self._stage(self.reference, real_images, captions)
        self._stage(self.candidate, generated_images, captions)

    def _stage(self, store: MomentStore, images: Tensor, texts: Tensor) -> None:
        """Stage a batch in ``store``, flushing first when it does not fit; a batch that fills it is accumulated."""
        if images.shape[0] >= store.buffer_rows:
            self._flush_for(store)
            store.accumulate_features(images, texts)
            return
        if images.shape[0] > store.room:
            self._flush_for(store)
        store.stage(images, texts)
        if store.room == 0 and not (self.texts_shared and store is self.reference):
            self._flush_for(store)  # (add_pairs stages the candidates next and flushes both together)

    def _flush_for(self, store: MomentStore) -> None:
        """Flush ``store`` (both stores while the texts are shared, so that they stay in step)."""
        if self.texts_shared:
            self.flush()
        else:
            store.flush()

    def flush(self) -> None:
        """Accumulate the staged rows of both stores (together while the texts are shared)."""
        reference, candidate = self.reference, self.candidate
        if self.texts_shared and reference.staged_rows == candidate.staged_rows > 0:
            reference.accumulate_paired(candidate, reference.staged(), candidate.staged())
            reference.staged_rows = candidate.staged_rows = 0
        else:
            reference.flush()
            candidate.flush()

    def add_rows(self, rows: dict[str, Tensor]) -> None:
        """Accumulate checked float64 joint rows per group (another metric's staged rows, merged into these)."""
        for group, group_rows in rows.items():
            if group_rows.shape[0] > 0:
                self.texts_shared = False
                self[group].accumulate(group_rows.to(self[group].device))

    def reset(self, keep_reference: bool) -> None:
        """Forget the candidates' staged rows and batch counts, and the reference's unless ``keep_reference``.

        A kept reference keeps its staged rows: they are flushed first. The metric resets the states.
        """
        if keep_reference:
            self.flush()
        else:
            self.reference.reset_host_state()
        self.candidate.reset_host_state()
        self.texts_shared = self.reference.batches_seen == 0

    def clear_staged(self) -> None:
        """Drop both stores' staged rows (the statistics they were staged for were replaced)."""
        for store in self:
            store.clear_staged()

    def follow_state_device(self) -> None:
        """Move the staging areas to the states' device."""
        for store in self:
            store.follow_state_device()

    # ----------------------------------------------------------------------------------------- checkpoints
    def extra_state(self) -> dict[str, Any]:
        """The host state a checkpoint needs next to the states: batch counts, staged rows, the shared-texts flag.

        ``{"reference": int, "candidate": int, "staged": {group: rows}, "texts_shared": bool}``, plus
        ``"group_batches": {group: [K ints]}`` for jackknife stores. The staged rows are copied, not flushed, so
        taking a checkpoint changes nothing, and a metric restored from it continues bit for bit.
        """
        staged = {group: self[group].staged().clone() for group in GROUPS if self[group].staged_rows > 0}
        state: dict[str, Any] = {group: self[group].batches_seen for group in GROUPS}
        state.update({_STAGED: staged, _SHARED: self.texts_shared})
        if isinstance(self.reference, JackknifeStore):
            state[_GROUP_BATCHES] = {group: list(self[group].group_batches_seen) for group in GROUPS}  # type: ignore
        return state

    def check_extra_state(self, state: Any) -> None:
        """Check an extra state from outside (checkpoints of 0.2 hold the batch counts only).

        Raises:
            ValueError: If ``state`` is not a dict of the form of :meth:`extra_state`.
        """
        counts_valid = isinstance(state, dict) and all(
            type(state[group]) is int and state[group] >= 0 for group in GROUPS if group in state
        )
        if not counts_valid or set(state) - {*GROUPS, _STAGED, _SHARED, _GROUP_BATCHES}:
            raise ValueError(
                f"The extra state of {self.metric_name} maps 'reference' and 'candidate' to batch counts"
                f" (whole numbers >= 0), with optional '{_STAGED}' rows and a '{_SHARED}' flag, got {_describe(state)}."
            )
        if not isinstance(state.get(_SHARED, False), bool):
            raise ValueError(
                f"The extra state of {self.metric_name}: '{_SHARED}' must be a bool, got {state[_SHARED]!r}."
            )
        self._check_group_batches(state.get(_GROUP_BATCHES, {}))
        staged = state.get(_STAGED, {})
        if not isinstance(staged, dict) or set(staged) - set(GROUPS):
            raise ValueError(
                f"The extra state of {self.metric_name}: '{_STAGED}' maps 'reference'/'candidate' to rows, got"
                f" {_describe(staged)}."
            )
        for group, rows in staged.items():
            self._check_staged_rows(rows, f"the staged {group} rows in the extra state of {self.metric_name}")

    def _check_group_batches(self, group_batches: object) -> None:
        size = self.reference.num_groups if isinstance(self.reference, JackknifeStore) else None
        valid = isinstance(group_batches, dict) and not set(group_batches) - set(GROUPS)
        valid = valid and all(
            isinstance(counts, list)
            and (size is None or len(counts) == size)
            and all(type(count) is int and count >= 0 for count in counts)
            for counts in group_batches.values()  # type: ignore[union-attr]
        )
        if not valid:
            expected = f"{size} batch counts" if size is not None else "lists of batch counts"
            raise ValueError(
                f"The extra state of {self.metric_name}: '{_GROUP_BATCHES}' maps 'reference'/'candidate' to"
                f" {expected} (whole numbers >= 0), got {_describe(group_batches)}."
            )

    def _check_staged_rows(self, rows: object, name: str) -> None:
        try:
            rows = check_features(rows, name, self.reference.joint_dim)
        except TypeError as error:  # an invalid checkpoint is a ValueError, like any other invalid state
            raise ValueError(str(error)) from None
        if rows.dtype != torch.float64:
            raise ValueError(f"{name} must be float64, got {rows.dtype}.")

    def load_extra_state(self, state: Any) -> None:
        """Restore the host state of :meth:`extra_state` (checked first; nothing changes when it is invalid).

        The shared-texts flag is kept only when both stores' text statistics agree bit for bit.

        Raises:
            ValueError: As :meth:`check_extra_state`.
        """
        self.check_extra_state(state)
        for group in GROUPS:
            store = self[group]
            store.batches_seen = state.get(group, store.batches_seen)
            counts = state.get(_GROUP_BATCHES, {}).get(group)
            if counts is not None and isinstance(store, JackknifeStore):
                store.group_batches_seen = list(counts)
            no_rows = torch.empty(0, store.joint_dim, dtype=torch.float64)
            store.restore_staged(state.get(_STAGED, {}).get(group, no_rows))
        self.texts_shared = bool(state.get(_SHARED, False)) and self._text_statistics_agree()

    def _text_statistics_agree(self) -> bool:
        """Whether both stores' text columns (counts, shifts, sums, text blocks, staged rows) are bitwise the same."""
        ours, theirs = self.reference.text_statistics(), self.candidate.text_statistics()
        return len(ours) == len(theirs) and all(a.shape == b.shape and torch.equal(a, b) for a, b in zip(ours, theirs))
