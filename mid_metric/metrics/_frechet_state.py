"""FrechetDistance's states and the outside: syncs, merges and checkpoints, each checked whole before anything changes.

The metric registers one state per group of images with torchmetrics: ``real_moments`` and ``generated_moments``,
packed float64 moments of the image features (:mod:`mid_metric.moments`), or ``K`` packed states each (``(K, P)``)
with the jackknife (whose rows also hold a caption tag column with ``jackknife_key="text"``). The stores
(:mod:`mid_metric.store`, the real images' in the reference store and the generated images' in the candidate store)
hold those tensors; the properties here give torchmetrics the attributes under those names. Next to them,
``state_dict()`` saves the stores' host state (batch counts and staged rows) as the module's extra state, and the
statistics of loaded reference files as ``loaded_real_moments``.

A ``load_state_dict`` or ``merge_state`` checks every incoming state before it assigns any, so one that raises leaves
the metric as it was: a missing or (with ``strict=True``) unexpected key, a state of another feature size or of the
other configuration (the jackknife's ``(K, P)`` states, or a plain ``(P,)`` one), and invalid values.
"""

from __future__ import annotations

from typing import Any, Optional, Union

import torch
from torch import Tensor

from mid_metric._checks import check_packed_moments
from mid_metric.metrics._base import _EXTRA_STATE_KEY
from mid_metric.metrics._store_state import StoreStateMethods
from mid_metric.store import PairedStores

__all__ = ["FrechetStateMethods"]

_LOADED_KEY = "loaded_real_moments"


def _store_state(group: str, name: str) -> property:
    """The attribute ``name`` of the metric: the state of the store of ``group`` (``reference`` or ``candidate``)."""

    def read(metric: Any) -> Tensor:
        return metric._stores[group].state

    def write(metric: Any, value: Tensor) -> None:
        metric._stores[group].state = value

    return property(read, write, doc=f"The registered state ``{name}``, held by the {group} store.")


class FrechetStateMethods(StoreStateMethods):
    """The state, sync, merge and checkpoint methods of :class:`~mid_metric.FrechetDistance` (mixed into it).

    The metric provides the attributes annotated here.
    """

    #: The registered states, real images first.
    STATE_NAMES = ("real_moments", "generated_moments")
    real_moments = _store_state("reference", "real_moments")
    generated_moments = _store_state("candidate", "generated_moments")

    image_dim: int
    bias_correction: Union[bool, str]
    jackknife_groups: int
    jackknife_key: str
    reset_real_features: bool
    uses_jackknife: bool
    _stores: PairedStores
    _loaded: Any
    _last: Any
    _computed: Any
    _strict_load = True  # the `strict` of the load_state_dict in progress (nested loads are taken as strict)

    def _statistics_replaced(self) -> None:
        """Drop what was computed from the statistics (they were merged, loaded or replaced other than by update)."""
        self._computed = None
        self._last = None

    # ------------------------------------------------------------------------------------- sync and devices
    def _sync_settings(self) -> dict[str, object]:
        """The settings every rank must share before a sync: the base class's, the estimator and its groups."""
        return {
            **super()._sync_settings(),  # type: ignore[misc]
            "bias_correction": self.bias_correction,
            "jackknife_groups": self.jackknife_groups if self.uses_jackknife else None,
            "jackknife_key": self.jackknife_key if self.uses_jackknife else None,
        }

    def _apply(self, fn: Any, exclude_state: Any = "") -> Any:
        result = super()._apply(fn, exclude_state)  # type: ignore[misc]
        if hasattr(self, "_loaded"):  # the files' statistics and the staged rows are no states: they follow them
            self._loaded.to(self._stores.reference.device)
            self._stores.follow_state_device()
        return result

    def reset(self) -> None:
        """Forget the generated images, and the real ones too unless ``reset_real_features=False``."""
        keep = not self.reset_real_features
        self._stores.reset(keep_reference=keep)  # a kept reference is flushed first
        kept = self._stores.reference.state if keep else None
        super().reset()  # type: ignore[misc]
        if kept is not None:
            self._stores.reference.state = kept
        else:
            self._loaded.clear()
        self._last = None

    # ---------------------------------------------------------------------------------------------- merging
    def merge_state(self, incoming_state: Union[dict[str, Any], Any]) -> None:
        """Merge another metric's (or a ``metric_state`` or ``state_dict()`` dict's) statistics into this one, exactly.

        The incoming states are checked first (all present, of this feature size and configuration, valid moments,
        and a valid extra state when the dict has one); when one fails, this raises and nothing is merged. The rows
        a ``state_dict()`` holds staged are merged too. Statistics loaded from reference files are not merged (each
        metric loads its own).

        Raises:
            ValueError: If ``incoming_state`` is neither a dict nor a metric of this class, lacks a state, or holds
                a state of another layout or an invalid one.
        """
        self._merge_with_staged_rows(incoming_state)
        self._statistics_replaced()

    # ------------------------------------------------------------------------------------------- state_dict
    def state_dict(  # type: ignore[override]
        self, destination: Optional[dict[str, Any]] = None, prefix: str = "", keep_vars: bool = False
    ) -> dict[str, Any]:
        """Return the metric states; the loaded reference files' statistics as ``loaded_real_moments`` if any."""
        destination = super().state_dict(destination=destination, prefix=prefix, keep_vars=keep_vars)  # type: ignore
        if self._loaded.count > 0:
            destination[prefix + _LOADED_KEY] = self._loaded.moments.detach().clone()
        return destination

    def _load_from_state_dict(self, state_dict: dict, prefix: str, *args: Any) -> None:
        """Check every state of this metric in ``state_dict`` first, then load them all (or none).

        When a state or the extra state is missing, or (``strict=True``) a key is not this metric's, nothing of this
        metric is loaded and the keys are reported (``load_state_dict`` raises with ``strict=True``).
        """
        missing_keys, unexpected_keys = args[2], args[3]
        loaded = state_dict.get(prefix + _LOADED_KEY)
        if loaded is not None:
            loaded = self._check_loaded(loaded, prefix + _LOADED_KEY)
        if self._strict_load and prefix + _EXTRA_STATE_KEY not in state_dict:
            missing_keys.append(prefix + _EXTRA_STATE_KEY)
            return
        unexpected = self._unexpected_keys(state_dict, prefix)
        if unexpected and self._strict_load:
            unexpected_keys.extend(unexpected)
            return
        checked = self._load_checked_states(state_dict, prefix, self.STATE_NAMES, missing_keys, {})  # type: ignore
        if checked is None:
            return
        extra = state_dict.get(prefix + _EXTRA_STATE_KEY)
        if extra is not None:
            self._stores.check_extra_state(extra)
        # Everything is valid: apply (nn.Module then loads the extra state).
        state_dict.pop(prefix + _LOADED_KEY, None)
        for name, value in checked.items():
            setattr(self, name, value)
        self._stores.clear_staged()  # rows staged before the load belong to the statistics it replaces
        super()._load_from_state_dict(state_dict, prefix, *args)  # type: ignore[misc]
        if loaded is not None:
            self._loaded.replace(loaded)
        self._statistics_replaced()

    def _check_loaded(self, value: object, name: str) -> Tensor:
        if self.uses_jackknife:
            raise ValueError(f"`{name}`: a FrechetDistance with bias_correction='jackknife' holds no reference files.")
        packed = check_packed_moments(value, name, self.image_dim)
        return packed.to(device=self._stores.reference.device, dtype=torch.float64, copy=True)

    def _load_keys(self) -> set[str]:
        """The keys (without prefix) this metric reads: the base class's, and the reference files' statistics."""
        return {*super()._load_keys(), _LOADED_KEY}  # type: ignore[misc]
