"""The base of every metric here: features or raw input, float64 states, all-or-nothing merges and loads.

A metric of this family takes paired image and text features, or raw images and captions when it holds a feature
extractor (see :mod:`mid_metric.features`). :class:`PairedFeatureMetric` turns its ``feature`` argument into feature
sizes and an optional frozen extractor, checks and encodes batches, keeps float64 states float64 whatever dtype
is asked, leaves the extractor's weights out of ``state_dict()``, and checks every incoming state before it
changes any (``merge_state`` and ``load_state_dict``), so that a rejected call leaves the metric as it was.

``load_state_dict`` checks the keys too before it assigns a state: with ``strict=True``, a key that is not this
metric's (another metric's state mixed in) is reported and nothing is loaded, where torch's loader would assign the
states and only then raise. Under DDP, the ranks compare the settings that change the value
(:meth:`PairedFeatureMetric._sync_settings`) before any state is exchanged, so that metrics built differently raise
one error on every rank instead of hanging or mixing their states.

List states (torchmetrics' ``dist_reduce_fx="cat"``), registered with
:meth:`PairedFeatureMetric.add_checked_list_state`, keep their dtype through ``.to(dtype)``, merge in order (this
metric's rows, then the incoming ones), and sync under DDP from a rank that holds none (torchmetrics would send a
1-D float32 placeholder there, which cannot be gathered with the other ranks' rows).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Callable, Optional, Union

import torch
from torch import Tensor, nn
from torchmetrics import Metric
from torchmetrics.utilities.distributed import gather_all_tensors

from mid_metric._checks import check_bool, check_feature_dims, check_pairs
from mid_metric.features import as_feature_extractor, check_texts, count_images
from mid_metric.sync import check_same_settings

#: What ``feature=`` accepts: an int, ``(image_dim, text_dim)``, or a feature extractor spec.
FeatureSpec = Union[int, tuple[int, int], str, tuple[Any, Any], Callable[..., Any], Any]
#: A check of one incoming state: ``(value, name) -> value to store`` (raises ``ValueError`` when invalid).
StateCheck = Callable[[object, str], Tensor]
#: A check of one incoming list state: ``(value, name) -> list of tensors to store`` (raises ``ValueError``).
ListStateCheck = Callable[[object, str], list[Tensor]]

_EXTRACTOR_PREFIX = "feature_extractor."
_EXTRA_STATE_KEY = "_extra_state"


def are_features(images: object, texts: object) -> bool:
    """Whether a batch is already features (a 2-D image tensor and a text tensor), not raw images and captions.

    Example:
        >>> are_features(torch.zeros(2, 3), torch.zeros(2, 3)), are_features(torch.zeros(2, 3, 8, 8), ["a", "b"])
        (True, False)
    """
    return isinstance(images, Tensor) and images.ndim == 2 and isinstance(texts, Tensor)


class PairedFeatureMetric(Metric):
    """A torchmetrics ``Metric`` of paired image and text features, with the conventions of this package.

    Subclasses register their states with :meth:`add_checked_state`, which also records how to check a state that
    comes from outside (another metric, a checkpoint).

    Args:
        feature: Feature sizes (an int, or ``(image_dim, text_dim)``), or a feature extractor: a Hugging Face CLIP
            id or local folder, a ``(CLIPModel, CLIPProcessor)`` pair, two callables, or an object with
            ``encode_images``/``encode_texts`` (:func:`mid_metric.features.as_feature_extractor`).
        validate_args: Check inputs for shape, dtype and NaN/Inf (one host synchronisation per batch on CUDA).
        kwargs: Passed to :class:`torchmetrics.Metric`.

    Raises:
        TypeError: If ``feature`` is none of the forms above, or ``validate_args`` is not a bool.
    """

    is_differentiable: bool = False
    full_state_update: bool = False
    _strict_load = True  # the `strict` of the load_state_dict in progress (a load from a parent module is strict)

    def __init__(self, feature: FeatureSpec, validate_args: bool = True, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.validate_args = check_bool(validate_args, "validate_args")
        extractor = as_feature_extractor(feature)
        if extractor is None:
            self.image_dim, self.text_dim = check_feature_dims(feature)
            self.feature_extractor: Optional[nn.Module] = None
            #: Name of the extractor of the features, written to reference files ("" when unknown).
            self.feature_extractor_name = ""
        else:
            self.feature_extractor = extractor  # a frozen submodule: moves with .to(), kept out of state_dict
            self.image_dim, self.text_dim = int(extractor.image_dim), int(extractor.text_dim)
            self.feature_extractor_name = str(extractor.name)
        self._state_checks: dict[str, Any] = {}
        #: Row shape and dtype of each list state (see add_checked_list_state).
        self._list_states: dict[str, tuple[tuple[int, ...], torch.dtype]] = {}

    def add_checked_state(
        self, name: str, default: Tensor, dist_reduce_fx: Callable[..., Any], check: StateCheck
    ) -> None:
        """Add a persistent tensor state, with the check that incoming values of it must pass."""
        self.add_state(name, default, dist_reduce_fx=dist_reduce_fx, persistent=True)
        self._state_checks[name] = check

    def add_checked_list_state(
        self, name: str, row_shape: tuple[int, ...], dtype: torch.dtype, check: ListStateCheck
    ) -> None:
        """Add a persistent list state of tensors ``(n_i, *row_shape)`` of ``dtype``, concatenated under DDP.

        ``check`` validates incoming values (a list of tensors, or one tensor) and returns the list to store.
        """
        self.add_state(name, [], dist_reduce_fx="cat", persistent=True)
        self._state_checks[name] = check
        self._list_states[name] = (tuple(row_shape), dtype)

    def _list_state(self, name: str) -> list[Tensor]:
        """The tensors of a list state (a synced list state is one tensor, which comes back as a list of it)."""
        value = getattr(self, name)
        return [value] if isinstance(value, Tensor) else list(value)

    def _cat_list_state(self, name: str) -> Tensor:
        """A list state as one tensor ``(n, *row_shape)`` (no copy when it holds one tensor)."""
        parts = self._list_state(name)
        if not parts:
            row_shape, dtype = self._list_states[name]
            return torch.empty((0, *row_shape), dtype=dtype, device=self.device)
        return parts[0] if len(parts) == 1 else torch.cat(parts)

    # ------------------------------------------------------------------------------------------- inputs
    def extract_features(self, images: Any, texts: Any) -> tuple[Tensor, Tensor]:
        """Encode raw images and captions with the metric's feature extractor.

        This is what ``update`` does with raw inputs; call it to encode a batch once and pass the features to
        several metrics (they all accept features).

        Args:
            images: A uint8 tensor ``(B, 3, H, W)``, a float tensor ``(B, 3, H, W)`` in ``[0, 1]``, or a list of
                PIL images or ``(3, H, W)`` tensors.
            texts: A list of ``B`` captions.

        Returns:
            ``(image_features, text_features)``: float32, L2-normalised, on the extractor's device.

        Raises:
            TypeError: If the metric holds no extractor (it was built with feature sizes), or an input has the
                wrong type.
            ValueError: If the numbers of images and captions differ, or an image is malformed.
        """
        extractor = self.feature_extractor
        if extractor is None:
            raise TypeError(
                f"This metric was built with feature sizes, so it takes features, not images and captions. Build it"
                f" with a model, e.g. {type(self).__name__}(feature='openai/clip-vit-large-patch14'), to pass raw"
                " inputs."
            )
        count = count_images(images)
        captions = check_texts(texts, expected=count)
        if count == 0:
            return torch.empty(0, self.image_dim), torch.empty(0, self.text_dim)
        return extractor.encode_images(images), extractor.encode_texts(captions)

    def _pair_features(self, images: Any, texts: Any) -> tuple[Tensor, Tensor]:
        """Return checked feature pairs: raw inputs are encoded first when the metric holds an extractor."""
        if self.feature_extractor is not None and not are_features(images, texts):
            images, texts = self.extract_features(images, texts)
        if self.validate_args:
            images, texts = check_pairs(images, texts, self.image_dim, self.text_dim)
        return images, texts

    def _check_device(self) -> None:
        if self.device.type == "mps":
            raise RuntimeError(
                f"{type(self).__name__} keeps float64 statistics, which Apple MPS does not support. Keep the metric"
                " on the CPU (`metric.to('cpu')`); features on MPS are moved to it automatically."
            )

    # ---------------------------------------------------------------------------- incoming states
    def _check_incoming(self, incoming: dict[str, Any], where: str) -> dict[str, Tensor]:
        """Check the states in ``incoming`` (keys without prefix) and return the values to store; change nothing."""
        return {
            name: check(incoming[name], where + name) for name, check in self._state_checks.items() if name in incoming
        }

    def merge_state(self, incoming_state: Union[dict[str, Any], Metric]) -> None:
        """Merge another metric's (or a ``metric_state`` dict's) states into this one, or none of them.

        Every incoming state is checked first (present, of this metric's layout, valid); when one fails, this
        raises and nothing is merged.

        Raises:
            ValueError: If ``incoming_state`` is neither a dict nor a metric of this class, lacks a state, or holds
                a state of another layout or an invalid one.
        """
        if isinstance(incoming_state, type(self)):
            incoming_state = incoming_state.metric_state
        if not isinstance(incoming_state, dict):
            raise ValueError(
                f"`incoming_state` must be a {type(self).__name__} or a dict of its states, got"
                f" {type(incoming_state).__name__}."
            )
        missing = [name for name in self._defaults if name not in incoming_state]
        if missing:
            raise ValueError(
                f"`incoming_state` lacks the state(s) {missing}; pass another {type(self).__name__}'s `metric_state`."
            )
        checked = self._check_incoming(incoming_state, "incoming ")
        self._before_merge()
        # torchmetrics would put the incoming rows of a list state first; keep this metric's rows first instead.
        appended = {name: checked.pop(name) for name in self._list_states if name in checked}
        for name in appended:
            setattr(self, name, self._list_state(name))
            checked[name] = []
        super().merge_state(checked)
        for name, rows in appended.items():
            setattr(self, name, self._list_state(name) + list(rows))
        self._computed = None  # torchmetrics keeps the value of an earlier compute() after a merge; it is stale now

    def _before_merge(self) -> None:
        """Called by :meth:`merge_state` once the incoming states passed their checks, before anything is merged."""

    def _load_checked_states(
        self,
        state_dict: dict,
        prefix: str,
        required: tuple[str, ...],
        missing_keys: list[str],
        defaults: dict[str, Tensor],
        unexpected_keys: Optional[list[str]] = None,
    ) -> Optional[dict[str, Tensor]]:
        """Pop and check this metric's states from ``state_dict``; return them, or ``None`` when some are missing.

        ``defaults`` fills states that older checkpoints lack. When ``unexpected_keys`` is given and the load is
        strict, keys that are not this metric's are added to it and ``None`` is returned too. Nothing is popped when
        a key is missing or unexpected or a check fails, so the caller can stop without a change.
        """
        present = {name: state_dict[prefix + name] for name in self._state_checks if prefix + name in state_dict}
        missing = [prefix + name for name in required if name not in present]
        if missing:  # nn.Module always passes strict=True to this hook, and applies the caller's choice to these
            missing_keys.extend(missing)
            return None
        checked = self._check_incoming(present, prefix)
        unexpected = self._unexpected_keys(state_dict, prefix) if unexpected_keys is not None else []
        if unexpected and self._strict_load:  # torch would assign the states first, then raise for these
            unexpected_keys.extend(unexpected)  # type: ignore[union-attr]
            return None
        for name, value in defaults.items():
            checked.setdefault(name, value)
        for name in present:
            state_dict.pop(prefix + name)
        if self.feature_extractor is not None:
            # The extractor's weights are not saved (see state_dict); supply its own so that strict loading passes.
            extractor_prefix = prefix + _EXTRACTOR_PREFIX
            for key, value in self.feature_extractor.state_dict(prefix=extractor_prefix, keep_vars=True).items():
                state_dict.setdefault(key, value)
        return checked

    # --------------------------------------------------------------------------- dtype and state_dict
    def _apply(self, fn: Any, exclude_state: Any = "") -> Any:
        """Move the states with ``.to(device)`` / ``.cuda()``, but keep float64 states float64 whatever is asked."""

        def keep_float64(tensor: Tensor) -> Tensor:
            moved = fn(tensor)
            if tensor.dtype == torch.float64 and moved.dtype != torch.float64:
                return tensor.to(device=moved.device)  # `.to(torch.float16)` would otherwise round the statistics
            return moved

        list_names = list(getattr(self, "_list_states", {}))
        if not list_names:
            return super()._apply(keep_float64, exclude_state)
        excluded = [exclude_state] if isinstance(exclude_state, str) else list(exclude_state)
        result = super()._apply(keep_float64, [name for name in excluded if name] + list_names)

        def keep_dtype(tensor: Tensor) -> Tensor:
            moved = fn(tensor)
            return moved if moved.dtype == tensor.dtype else tensor.to(device=moved.device)

        for name in list_names:  # list states move with the metric and keep their registered dtype
            if name not in excluded:
                setattr(self, name, [keep_dtype(part) for part in self._list_state(name)])
        return result

    def _sync_settings(self) -> dict[str, object]:
        """The settings that change this metric's value or the layout of its states, which all ranks must share.

        The DDP sync compares them across ranks before any state is exchanged
        (:func:`mid_metric.sync.check_same_settings`). Values are bools, ints, floats, strings or ``None``.
        Subclasses extend the dict: ``{**super()._sync_settings(), "clamp": self.clamp}``.

        Example:
            >>> from mid_metric import InfoNCE
            >>> InfoNCE(feature=8, temperature=0.1)._sync_settings()["temperature"]
            0.1
        """
        return {"metric": type(self).__name__, "image_dim": self.image_dim, "text_dim": self.text_dim}

    def _sync_dist(self, dist_sync_fn: Callable = gather_all_tensors, process_group: Optional[Any] = None) -> None:
        """Sync the states, once every rank is known to hold a metric of the same settings.

        The settings are compared first (one fixed-shape collective), so that ranks whose metrics differ all raise
        the same ``ValueError`` before any state moves. An empty list state is sent as an empty tensor of its own
        row shape and dtype.
        """
        check_same_settings(self._sync_settings(), process_group or self.process_group, self.device)
        for name, (row_shape, dtype) in self._list_states.items():
            if isinstance(getattr(self, name), list) and not getattr(self, name):
                setattr(self, name, [torch.empty((0, *row_shape), dtype=dtype, device=self.device)])
        super()._sync_dist(dist_sync_fn, process_group)

    def set_dtype(self, dst_type: Union[str, torch.dtype]) -> PairedFeatureMetric:
        """Keep the float64 states: the results need them, so the states ignore dtype requests."""
        return self

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False) -> Any:
        """Load the states of ``state_dict`` (as :meth:`torch.nn.Module.load_state_dict`), or none of them.

        Every state is checked, and with ``strict=True`` every key too, before any state is assigned: a dict with a
        state of another layout, settings or value, a missing state, or (strict) a key that is not this metric's
        raises and leaves the metric as it was.

        Raises:
            RuntimeError: As :meth:`torch.nn.Module.load_state_dict`, for missing or unexpected keys.
            ValueError: If a state is of another layout or settings, or invalid.
        """
        self._strict_load = strict
        try:
            return super().load_state_dict(state_dict, strict=strict, assign=assign)
        finally:
            self._strict_load = True

    def _load_keys(self) -> set[str]:
        """The keys (without prefix) that this metric reads from a state dict: its states, and its extra state."""
        keys = set(self._state_checks)
        if type(self).set_extra_state is not nn.Module.set_extra_state:
            keys.add(_EXTRA_STATE_KEY)
        return keys

    def _unexpected_keys(self, state_dict: dict, prefix: str) -> list[str]:
        """The keys under ``prefix`` that are neither this metric's (:meth:`_load_keys`) nor its submodules'."""
        known = self._load_keys()
        return [
            key
            for key in state_dict
            if key.startswith(prefix)
            and key[len(prefix) :] not in known
            and key[len(prefix) :].split(".", 1)[0] not in self._modules
        ]

    def state_dict(  # type: ignore[override]
        self, destination: Optional[dict[str, Any]] = None, prefix: str = "", keep_vars: bool = False
    ) -> dict[str, Any]:
        """Return the metric states; the feature extractor's weights are left out (they come from the model)."""
        destination = super().state_dict(destination=destination, prefix=prefix, keep_vars=keep_vars)
        for key in [key for key in destination if key.startswith(prefix + _EXTRACTOR_PREFIX)]:
            del destination[key]
        return destination
