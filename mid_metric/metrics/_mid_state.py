"""MID's states and the outside: checkpoints, merges and syncs, each checked whole before anything changes.

``MutualInformationDivergence`` registers with torchmetrics, in this order: ``state_format`` (``[version, Dx, Dy]``),
``jackknife_settings`` (``[K, key index]``, with the jackknife only), and each store's state: ``reference_moments``
and ``candidate_moments`` (packed moments), or ``reference_group_moments`` and ``candidate_group_moments`` (``K``
packed states each) with the jackknife. The stores (:mod:`mid_metric.store`) hold those tensors; :func:`store_state`
gives the metric the attributes torchmetrics reads and writes under those names. Next to them, ``state_dict()`` saves
the stores' host state (batch counts, staged rows, the shared-texts flag) as the module's extra state, and the
reference files' statistics as ``loaded_reference_moments``.

Every incoming state is checked before any is assigned: a ``load_state_dict`` or ``merge_state`` that raises leaves
the metric bit for bit as it was. That covers keys that are missing or unexpected (with ``strict=True``), a
checkpoint of another configuration (the jackknife's, or not), of another feature split or jackknife setting, and
invalid values. A checkpoint of mid-metric 0.1 (no ``state_format``) and one of the 0.3 jackknife (which also kept
the full states: they are checked against the merge of the groups, then dropped) load.
"""

from __future__ import annotations

from typing import Any, Optional, Union

import torch
from torch import Tensor

from mid_metric import jackknife
from mid_metric._checks import check_packed_moments, check_state_format, same_state_format, state_format
from mid_metric.metrics._base import _EXTRA_STATE_KEY
from mid_metric.metrics._store_state import StoreStateMethods
from mid_metric.store import GROUPS, JackknifeStore, MomentStore, PairedStores

__all__ = ["StateMethods", "store_state"]

_LOADED_REFERENCE_KEY = "loaded_reference_moments"
_JACKKNIFE_STATES = ("jackknife_settings", "reference_group_moments", "candidate_group_moments")
_FULL_STATES = ("reference_moments", "candidate_moments")


def store_state(group: str, suffix: str) -> property:
    """The attribute ``{group}_{suffix}`` of the metric: a state that lives in the store of ``group``.

    ``{group}_moments`` is the state of a plain store; with the jackknife it reads the full moments (the merge of
    the groups), which are no state. ``{group}_group_moments`` is the state of a jackknife store.
    """
    name = f"{group}_{suffix}"

    def read(metric: Any) -> Tensor:
        store = metric._stores[group]
        if suffix == store.state_suffix:
            return store.state
        if suffix == "moments":
            return store.moments()
        raise AttributeError(f"`{name}` is a state of MutualInformationDivergence(bias_correction='jackknife') only.")

    def write(metric: Any, value: Tensor) -> None:
        store = metric._stores[group]
        if suffix != store.state_suffix:
            raise AttributeError(f"`{name}` is not a state of this metric; it cannot be set.")
        store.state = value

    return property(read, write, doc=f"The registered state ``{name}``, held by the {group} store.")


class StateMethods(StoreStateMethods):
    """The state-dict, extra-state and merge methods of :class:`~mid_metric.MutualInformationDivergence`.

    Mixed into the metric, which provides the attributes annotated here.
    """

    image_dim: int
    text_dim: int
    eps: float
    bias_correction: Union[bool, str]
    jackknife_groups: int
    jackknife_key: str
    buffer_rows: int
    add_checked_state: Any
    uses_jackknife: bool
    state_format: Tensor
    _stores: PairedStores
    _loaded: Any
    _state_checks: dict[str, Any]
    _computed: Any
    _batch_scores: Any
    _strict_load = True  # the `strict` of the load_state_dict in progress (nested loads are taken as strict)

    def _reference_replaced(self) -> None:
        raise NotImplementedError

    # -------------------------------------------------------------------------------------------- records
    def _register_stores(self) -> None:
        """Build the two stores, and register their states and the records before them with torchmetrics."""
        sizes = (self.image_dim + self.text_dim, self.image_dim, self.buffer_rows)
        if self.uses_jackknife:
            stores = [JackknifeStore(*sizes, self.jackknife_groups, self.jackknife_key) for _ in GROUPS]
        else:
            stores = [MomentStore(*sizes) for _ in GROUPS]
        self._stores = PairedStores(*stores, metric_name=type(self).__name__)
        # [format version, image_dim, text_dim]: lets state_dict, merge_state and the DDP sync refuse statistics of
        # another feature split. Added first, so the sync compares it before it reduces any statistics.
        own_format = state_format(self.image_dim, self.text_dim)
        self.add_checked_state("state_format", own_format, same_state_format, self._check_format)
        if self.uses_jackknife:  # the jackknife's [K, key index], compared next
            settings = self._own_jackknife_settings()
            self.add_checked_state("jackknife_settings", settings, same_state_format, self._check_settings)
        for group in GROUPS:
            store = self._stores[group]
            name = f"{group}_{store.state_suffix}"
            self.add_checked_state(name, store.empty_state(), store.reduce, store.check_state)

    def _own_jackknife_settings(self) -> Tensor:
        return torch.tensor([self.jackknife_groups, jackknife.GROUP_KEYS.index(self.jackknife_key)], dtype=torch.int64)

    def _check_settings(self, value: object, name: str) -> Tensor:
        own = self._own_jackknife_settings()
        if not isinstance(value, Tensor) or value.dtype != torch.int64 or not torch.equal(value.cpu(), own):
            raise ValueError(
                f"`{name}` must be the jackknife settings of this metric, [jackknife_groups, key index] ="
                f" {own.tolist()}, got {value.tolist() if isinstance(value, Tensor) else value!r}."
            )
        return value.to(device=self._stores.reference.device, copy=True)

    def _check_format(self, value: object, name: str) -> Tensor:
        return check_state_format(value, name, self.state_format)

    # ------------------------------------------------------------------------------------- sync and devices
    def _sync_settings(self) -> dict[str, object]:
        """The settings every rank must share before a sync: those of the base class, the estimator's and ``eps``."""
        jackknife_settings = (self.jackknife_groups, self.jackknife_key) if self.uses_jackknife else (None, None)
        return {
            **super()._sync_settings(),  # type: ignore[misc]
            "bias_correction": self.bias_correction,
            "jackknife_groups": jackknife_settings[0],
            "jackknife_key": jackknife_settings[1],
            "eps": self.eps,
        }

    def _apply(self, fn: Any, exclude_state: Any = "") -> Any:
        result = super()._apply(fn, exclude_state)
        if hasattr(self, "_loaded"):  # the files' statistics and the staged rows are no states: they follow them
            self._loaded.to(self._stores.reference.device)
            self._stores.follow_state_device()
            self._batch_scores.clear()
        return result

    # ---------------------------------------------------------------------------------------------- merging
    def merge_state(self, incoming_state: Union[dict[str, Any], Any]) -> None:
        """Merge another metric's (or a ``metric_state`` or ``state_dict()`` dict's) statistics into this one.

        The merge is exact (Chan-style). The incoming states are checked first (all present, the same
        ``state_format``, which records the ``(image_dim, text_dim)`` split, the same jackknife settings, valid
        moments, and a valid extra state when the dict has one); when one fails, this raises and nothing is
        merged. The rows a ``state_dict()`` holds staged are merged too. Statistics loaded from a reference file
        are not merged (each metric loads its own file).

        Raises:
            ValueError: If ``incoming_state`` is neither a dict nor a metric of this class, lacks a state, or holds
                a state of another layout or an invalid one.
        """
        self._merge_with_staged_rows(incoming_state)
        self._stores.texts_shared = False
        self._reference_replaced()

    # ------------------------------------------------------------------------------------------- state_dict
    def state_dict(  # type: ignore[override]
        self, destination: Optional[dict[str, Any]] = None, prefix: str = "", keep_vars: bool = False
    ) -> dict[str, Any]:
        """Return the metric states, without the feature extractor's weights (they come from the model).

        Statistics loaded from a reference file are included as ``loaded_reference_moments`` when there are any.
        Rows staged but not yet added to the statistics are saved in the extra state (:meth:`get_extra_state`).
        """
        destination = super().state_dict(destination=destination, prefix=prefix, keep_vars=keep_vars)  # type: ignore
        if self._loaded.count > 0:
            destination[prefix + _LOADED_REFERENCE_KEY] = self._loaded.moments.detach().clone()
        return destination

    def _load_from_state_dict(self, state_dict: dict, prefix: str, *args: Any) -> None:
        """Check every state of this metric in ``state_dict`` first, then load them all (or none).

        When a state is missing, or (``strict=True``) a key is not this metric's, nothing of this metric is loaded
        and the keys are reported (``load_state_dict`` raises with ``strict=True`` and returns them otherwise). A
        checkpoint of the other configuration (the jackknife's, or not) is refused with a ``ValueError``. A
        checkpoint of mid-metric 0.1 has no ``state_format``; it loads, with only the total dimension checked. A
        jackknife checkpoint of 0.3 also holds the full states: they must be the merge of its groups, and are
        dropped.
        """
        local_metadata, strict, missing_keys, unexpected_keys, error_msgs = args
        self._check_configuration(state_dict, prefix)
        loaded = state_dict.get(prefix + _LOADED_REFERENCE_KEY)
        if loaded is not None:
            loaded = self._check_loaded_reference(loaded, prefix + _LOADED_REFERENCE_KEY)
        defaults = {"state_format": self.state_format.clone()}  # a 0.1 checkpoint
        required = tuple(name for name in self._state_checks if name != "state_format")
        if self._strict_load and prefix + _EXTRA_STATE_KEY not in state_dict:
            missing_keys.append(prefix + _EXTRA_STATE_KEY)  # (nn.Module would report it after loading the rest)
            return
        checked = self._load_checked_states(state_dict, prefix, required, missing_keys, defaults)  # type: ignore
        if checked is None:
            return
        unexpected = self._unexpected_keys(state_dict, prefix)
        if unexpected and self._strict_load:
            unexpected_keys.extend(unexpected)
            return
        full_states = self._legacy_full_states(state_dict, prefix, checked)
        extra = state_dict.get(prefix + _EXTRA_STATE_KEY)
        if extra is not None:
            self._stores.check_extra_state(extra)
        # Everything is valid: apply (nn.Module then loads the extra state).
        for key in (prefix + _LOADED_REFERENCE_KEY, *full_states):
            state_dict.pop(key, None)
        for name, value in checked.items():
            setattr(self, name, value)
        self._stores.clear_staged()  # rows staged before the load belong to the statistics it replaces
        self._stores.texts_shared = False
        super()._load_from_state_dict(state_dict, prefix, *args)  # type: ignore[misc]  # set_extra_state
        if loaded is not None:
            self._loaded.replace(loaded)
        self._reference_replaced()

    def _check_configuration(self, state_dict: dict, prefix: str) -> None:
        """Refuse a checkpoint of the other configuration: jackknife states in a plain metric, or none in one."""
        theirs = any(prefix + name in state_dict for name in _JACKKNIFE_STATES)
        plain = not theirs and any(prefix + name in state_dict for name in _FULL_STATES)
        if not (theirs and not self.uses_jackknife) and not (plain and self.uses_jackknife):
            return
        ours = "bias_correction='jackknife'" if self.uses_jackknife else "no jackknife"
        kind = "a metric with bias_correction='jackknife'" if theirs else "a metric without the jackknife"
        raise ValueError(
            f"This state_dict is of {kind}, but this metric has {ours}; build the metric with the same"
            " `bias_correction` (and jackknife settings) as the one that saved it."
        )

    def _check_loaded_reference(self, value: object, name: str) -> Tensor:
        if self.uses_jackknife:
            raise ValueError(f"`{name}`: a metric with bias_correction='jackknife' holds no reference file statistics.")
        packed = check_packed_moments(value, name, self.image_dim + self.text_dim)
        return packed.to(device=self._stores.reference.device, dtype=torch.float64, copy=True)

    def _load_keys(self) -> set[str]:
        """The keys (without prefix) this metric reads: the base class's and the reference files' statistics.

        With the jackknife, also the full states that a 0.3 checkpoint holds next to the groups'.
        """
        keys = {*super()._load_keys(), _LOADED_REFERENCE_KEY}  # type: ignore[misc]
        if self.uses_jackknife:
            keys.update(_FULL_STATES)
        return keys

    def _legacy_full_states(self, state_dict: dict, prefix: str, checked: dict[str, Tensor]) -> list[str]:
        """Check the full states a 0.3 jackknife checkpoint holds against its groups; return their keys."""
        if not self.uses_jackknife:
            return []
        keys = []
        for group, name in zip(GROUPS, _FULL_STATES):
            if prefix + name in state_dict:
                store = self._stores[group]
                if isinstance(store, JackknifeStore):
                    store.check_legacy_full_state(state_dict[prefix + name], checked[f"{group}_group_moments"], name)
                keys.append(prefix + name)
        return keys
