"""The streaming ``MutualInformationDivergence`` metric for torchmetrics."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Callable, Optional, Union

import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.utilities.exceptions import TorchMetricsUserError

from mid_metric import bias, moments
from mid_metric.features import as_feature_extractor, check_texts, count_images
from mid_metric.functional import (
    GaussianReference,
    divergence_from_moments,
    pointwise_mutual_information_from_reference,
    reference_from_moments,
)
from mid_metric.result import MIDResult
from mid_metric.sync import sync_state
from mid_metric.validation import (
    check_eps,
    check_finite_result,
    check_packed_moments,
    check_pairs,
    check_state_format,
    same_state_format,
    state_format,
)

FeatureSpec = Union[int, tuple[int, int], str, tuple[Any, Any], Callable[..., Any], Any]
ReferencePath = Union[str, "os.PathLike[str]"]
_EXTRACTOR_PREFIX = "feature_extractor."
_LOADED_REFERENCE_KEY = "loaded_reference_moments"
_FORMAT_KEY = "state_format"
_MOMENT_KEYS = ("reference_moments", "candidate_moments")
_EXTRA_STATE_KEY = "_extra_state"


def _are_features(images: object, texts: object) -> bool:
    """Whether a batch is already features (2-D image tensor and a text tensor), not raw images and captions."""
    return isinstance(images, Tensor) and images.ndim == 2 and isinstance(texts, Tensor)


def _parse_feature_dims(feature: object) -> tuple[int, int]:
    """Return ``(Dx, Dy)`` from an int or a pair of ints."""
    if isinstance(feature, bool):
        raise TypeError(f"`feature` must be an int or a pair (image_dim, text_dim) of ints, got {feature!r}.")
    if isinstance(feature, int):
        dims = (feature, feature)
    elif (
        isinstance(feature, (tuple, list))
        and len(feature) == 2
        and all(isinstance(d, int) and not isinstance(d, bool) for d in feature)
    ):
        dims = (feature[0], feature[1])
    else:
        raise TypeError(f"`feature` must be an int or a pair (image_dim, text_dim) of ints, got {feature!r}.")
    if min(dims) < 1:
        raise ValueError(f"`feature` dimensions must be positive, got {dims}.")
    return dims


class MutualInformationDivergence(Metric):
    r"""Mutual Information Divergence (Kim et al., NeurIPS 2022) with streaming float64 Gaussian statistics.

    Reference pairs ``(x, y)`` (real images and their captions) define a joint Gaussian; candidate pairs
    ``(x_hat, y_hat)`` are scored by their mean pointwise mutual information under it:

    .. math:: \mathrm{MID} = I(X; Y) + \tfrac12\,(\mathrm{tr}(S_x^{-1}\hat S_x) + \mathrm{tr}(S_y^{-1}\hat S_y)
        - \mathrm{tr}(S_z^{-1}\hat S_z))

    Higher is better: candidates whose images and texts are as aligned as the reference score about ``I``, and
    unaligned ones score lower. The metric keeps only the count, mean and scatter of each group in float64, so
    memory and DDP sync traffic are ``O((Dx + Dy)^2)`` whatever the number of samples, and it agrees with the
    official estimator (``update(x, y, x0)`` there is ``update(x, y, real=True)`` then
    ``update(x0, y, real=False)`` here). ``compute()`` returns a 0-dim float64 tensor on the state's device.

    Under DDP, ``compute()`` is a collective operation: call it on every rank, never on rank 0 alone, or the
    processes hang. :meth:`pmi` uses the reference statistics of the calling process only.

    Args:
        feature: Feature size: an int for both modalities, or a pair ``(image_dim, text_dim)``; then ``update`` and
            ``pmi`` take features. Or a feature extractor, and then they take images and captions: a Hugging Face
            CLIP id or local folder (``"openai/clip-vit-large-patch14"``), a ``(CLIPModel, CLIPProcessor)`` pair,
            two callables ``(image_encoder, text_encoder)``, or an object with ``encode_images``/``encode_texts``
            (see :func:`mid_metric.features.as_feature_extractor`). The model is frozen, moves with the metric and
            is not part of ``state_dict()``.
        eps: Added to the diagonal of every covariance; ``0`` reproduces the paper, which hints at ``5e-4`` for
            fewer than 30,000 reference pairs.
        reset_real_features: If ``False``, :meth:`reset` keeps the reference statistics, so one reference can
            score many candidate sets.
        validate_args: Check inputs for shape, dtype and NaN/Inf (one host synchronisation per batch on CUDA).
        reference: A reference statistics file written by :meth:`save_reference`, loaded as if its pairs had been
            passed with ``real=True`` (see :meth:`load_reference`).
        check_feature_extractor: Refuse reference files made with a feature extractor of another name.
        bias_correction: Compute the Gaussian bias-corrected MID of :mod:`mid_metric.bias`, which estimates the
            same population value at any ``N``, instead of the paper's estimator (the default, which published
            numbers use). Needs ``eps = 0``.
        kwargs: Passed to :class:`torchmetrics.Metric` (``dist_sync_on_step``, ``process_group``, ...).

    Raises:
        TypeError: If ``feature`` is none of the forms above.
        ImportError: If ``feature`` names a model and transformers is not installed.
        OSError: If the model named by ``feature`` cannot be found or loaded.
        ValueError: If ``eps`` is negative or not finite.

    Example:
        >>> import torch
        >>> from mid_metric import MutualInformationDivergence
        >>> _ = torch.manual_seed(123)
        >>> x = torch.rand(10, 2, dtype=torch.float64) * 2 - 1
        >>> y = torch.rand(10, 2, dtype=torch.float64) * 2 - 1
        >>> mid = MutualInformationDivergence(feature=2)
        >>> mid.update(x, y, real=True)          # reference pairs: real images and their captions
        >>> mid.update(1.1 * x, y, real=False)   # candidate pairs: generated images, same captions
        >>> round(mid.compute().item(), 6)
        0.151645
        >>> mid.pmi(1.1 * x[:2], y[:2]).shape
        torch.Size([2])
    """

    is_differentiable: bool = False
    higher_is_better: bool = True
    full_state_update: bool = False
    plot_lower_bound: Optional[float] = None
    plot_upper_bound: Optional[float] = None

    state_format: Tensor
    reference_moments: Tensor
    candidate_moments: Tensor

    def __init__(
        self,
        feature: FeatureSpec = 768,
        eps: float = 0.0,
        reset_real_features: bool = True,
        validate_args: bool = True,
        reference: Optional[ReferencePath] = None,
        check_feature_extractor: bool = True,
        bias_correction: bool = False,
        **kwargs: Any,
    ) -> None:
        if kwargs.get("dist_sync_fn") is None:
            # All-reduce the packed moments: sync traffic of one state's size, not world_size states; the format
            # record is compared across ranks first (see sync.py).
            kwargs["dist_sync_fn"] = sync_state
        super().__init__(**kwargs)
        self.eps = check_eps(eps)
        self.bias_correction = bias.check_bias_correction(bias_correction, self.eps)
        if not isinstance(reset_real_features, bool):
            raise TypeError(f"`reset_real_features` must be a bool, got {reset_real_features!r}.")
        if not isinstance(check_feature_extractor, bool):
            raise TypeError(f"`check_feature_extractor` must be a bool, got {check_feature_extractor!r}.")
        self.check_feature_extractor = check_feature_extractor
        # A model (or any encoder) when `feature` names one; None when the user passes features.
        extractor = as_feature_extractor(feature)
        if extractor is None:
            self.image_dim, self.text_dim = _parse_feature_dims(feature)
            self.feature_extractor: Optional[Any] = None
            #: Name of the extractor of the features, written to reference files ("" when unknown).
            self.feature_extractor_name = ""
        else:
            self.feature_extractor = extractor  # a frozen submodule: moves with .to(), kept out of state_dict
            self.image_dim, self.text_dim = int(extractor.image_dim), int(extractor.text_dim)
            self.feature_extractor_name = str(extractor.name)
        self.reset_real_features = reset_real_features
        self.validate_args = bool(validate_args)
        joint_dim = self.image_dim + self.text_dim
        # [format version, image_dim, text_dim]: lets state_dict, merge_state and the DDP sync refuse statistics of
        # another feature split. Added first, so the sync compares it before it reduces any statistics.
        self.add_state(
            _FORMAT_KEY, state_format(self.image_dim, self.text_dim), dist_reduce_fx=same_state_format, persistent=True
        )
        # Packed (count, shift, shifted sum, shifted outer-product sum) per group; see mid_metric.moments.
        self.add_state(
            "reference_moments", moments.empty_moments(joint_dim), dist_reduce_fx=moments.merge, persistent=True
        )
        self.add_state(
            "candidate_moments", moments.empty_moments(joint_dim), dist_reduce_fx=moments.merge, persistent=True
        )
        # Batches seen per group since its last reset (host side), to recentre the shift after batch 1, 2, 4, ...
        self._batches_seen = {"reference": 0, "candidate": 0}
        # (reference state, loaded statistics, fitted Gaussian); `update(real=True)` clears it, and any other change
        # replaces one of the two tensors, which the identity check sees.
        self._reference_cache: Optional[tuple[Tensor, Tensor, GaussianReference]] = None
        self._last_result: Optional[MIDResult] = None
        self._ci_inputs: Optional[tuple[GaussianReference, Tensor]] = None  # set by compute()
        # Statistics loaded from a reference file. They are kept apart from the synced state, so that under DDP,
        # where every rank loads the same file, they are counted once; `_fitted_reference` merges the two.
        self._loaded_reference = moments.empty_moments(joint_dim)
        self._loaded_count = 0
        if reference is not None:
            self.load_reference(reference)

    # ------------------------------------------------------------------ inputs
    def _check_device(self) -> None:
        if self.reference_moments.device.type == "mps":
            raise RuntimeError(
                "MutualInformationDivergence keeps float64 statistics, which Apple MPS does not support. Keep the"
                " metric on the CPU (`metric.to('cpu')`); features on MPS are moved to it automatically."
            )

    def _joint_features(self, images: Any, texts: Any) -> Tensor:
        if self.feature_extractor is not None and not _are_features(images, texts):
            images, texts = self.extract_features(images, texts)
        if self.validate_args:
            images, texts = check_pairs(images, texts, self.image_dim, self.text_dim)
        device = self.reference_moments.device
        return torch.cat(
            [images.to(device=device, dtype=torch.float64), texts.to(device=device, dtype=torch.float64)], dim=1
        )

    def update(self, images: Any, texts: Any, real: bool) -> None:
        """Add a batch of pairs to the reference (``real=True``) or to the candidates (``real=False``).

        Args:
            images: Image features ``(B, image_dim)``, float16/bfloat16/float32/float64, L2-normalised as CLIP's.
                When the metric holds a model (``feature`` named one), raw images instead: a uint8 tensor
                ``(B, 3, H, W)``, a float tensor ``(B, 3, H, W)`` in ``[0, 1]``, or a list of PIL images or
                ``(3, H, W)`` tensors (features are still accepted).
            texts: Text features ``(B, text_dim)`` paired row by row with ``images``; a list of ``B`` captions
                when the metric holds a model.
            real: ``True`` for reference pairs, ``False`` for candidate pairs. An empty batch changes nothing.

        Raises:
            TypeError: If ``real`` is not a bool or the features are not floating tensors.
            ValueError: If a shape is wrong, the batch sizes differ, or a value is NaN or Inf.
        """
        if not isinstance(real, bool):
            raise TypeError(f"`real` must be a bool (True for reference pairs, False for candidates), got {real!r}.")
        self._check_device()
        joint = self._joint_features(images, texts)
        if joint.shape[0] == 0:
            return
        group = "reference" if real else "candidate"
        state = getattr(self, f"{group}_moments")
        if state.is_inference() and not torch.is_inference_mode_enabled():
            # A reset() under torch.inference_mode() (as in Lightning's validation) made inference tensors, which
            # cannot be updated in place outside that mode; continue on an ordinary copy.
            state = state.clone()
            setattr(self, f"{group}_moments", state)
        moments.accumulate_(state, joint)
        if real:
            self._reference_cache = None
        self._batches_seen[group] += 1
        seen = self._batches_seen[group]
        if seen & (seen - 1) == 0:  # a power of two: keep the shift close to the mean (see moments.recentre_)
            moments.recentre_(state)

    # ----------------------------------------------------------------- outputs
    def _fitted_reference(self) -> GaussianReference:
        """Return the reference Gaussian of the current state, refactorised only when that state changed."""
        state, loaded = self.reference_moments, self._loaded_reference
        cached = self._reference_cache
        if cached is not None and cached[0] is state and cached[1] is loaded:
            return cached[2]
        reference = reference_from_moments(self._reference_statistics(), self.image_dim, self.eps)
        self._reference_cache = (state, loaded, reference)
        return reference

    def _reference_statistics(self) -> Tensor:
        """Packed moments of all reference pairs: those passed to ``update`` and those loaded from a file."""
        if self._loaded_count == 0:
            return self.reference_moments
        state = self.reference_moments
        return moments.merge(torch.stack([self._loaded_reference.to(state.device), state]))

    def compute(self) -> Tensor:
        """Return MID as a 0-dim float64 tensor on the device of the state.

        Raises:
            ValueError: If there is no reference, too few reference pairs for a full-rank covariance with
                ``eps = 0`` (more than ``image_dim + text_dim`` are needed), fewer than 2 candidates, or a
                covariance that is not positive definite.
        """
        self._check_device()
        reference = self._fitted_reference()
        if self.bias_correction:
            result = bias.corrected_divergence(reference, self.candidate_moments)
        else:
            result = divergence_from_moments(reference, self.candidate_moments)
        # What compute_with_ci needs, taken from the (synced) states this result came from.
        self._ci_inputs = (reference, self.candidate_moments.clone())
        self._last_result = result
        return result.mid

    def compute_result(self) -> MIDResult:
        """Return MID together with its MI and distance terms, for logging.

        This calls :meth:`compute` (so it syncs under DDP, and must run on every rank), then returns the result of
        that computation.

        Example:
            >>> import torch
            >>> metric = MutualInformationDivergence(feature=2)
            >>> x, y = torch.randn(50, 2), torch.randn(50, 2)
            >>> metric.update(x, y, real=True)
            >>> metric.update(x, y, real=False)
            >>> result = metric.compute_result()
            >>> torch.allclose(result.mid, result.mutual_information + result.distance)
            True
        """
        self.compute()  # fills self._last_result, or returns the cached value of the compute that filled it
        if self._last_result is None:  # pragma: no cover - compute() always sets it when it succeeds
            raise RuntimeError("compute() produced no result")
        return self._last_result

    def compute_with_ci(self, level: float = 0.95) -> MIDResult:
        """Return the result of :meth:`compute` with a standard error and a ``level`` confidence interval.

        ``standard_error``, ``ci_low``, ``ci_high`` and ``ci_level`` of the returned
        :class:`~mid_metric.result.MIDResult` are filled in (see :func:`mid_metric.bias.standard_error`). It covers
        the candidates' sampling noise and, to first order, the reference's. With ``bias_correction=True`` it
        targets the population MID; with the paper's estimator it is centred on a value biased by the sample size.
        Like :meth:`compute`, it syncs under DDP and must run on every rank.

        Args:
            level: Nominal coverage, in ``(0, 1)``.

        Raises:
            ValueError: If ``level`` is not in ``(0, 1)``, or as :meth:`compute`.

        Example:
            >>> import torch
            >>> metric = MutualInformationDivergence(feature=2, bias_correction=True)
            >>> z = torch.randn(300, 4)
            >>> metric.update(z[:200, :2], z[:200, 2:], real=True)
            >>> metric.update(z[200:, :2], z[200:, 2:], real=False)
            >>> result = metric.compute_with_ci(0.9)
            >>> bool(result.ci_low < result.mid < result.ci_high), result.ci_level
            (True, 0.9)
        """
        result = self.compute_result()
        if self._ci_inputs is None:  # pragma: no cover - compute() always sets it when it succeeds
            raise RuntimeError("compute() produced no statistics")
        reference, candidates = self._ci_inputs
        return bias.with_confidence_interval(result, reference, candidates, level)

    @property
    def last_result(self) -> Optional[MIDResult]:
        """The :class:`~mid_metric.result.MIDResult` of the latest :meth:`compute`, or ``None`` before one."""
        return self._last_result

    def pmi(self, images: Any, texts: Any) -> Tensor:
        """Per-pair pointwise mutual information under the reference fitted so far (this process's state).

        The mean over the candidates equals MID up to the ``M / (M - 1)`` scaling of the distance part; these are
        the official code's sample-wise scores (``compute(reduction=False)``), which the paper correlates with
        human judgments.

        Args:
            images: Image features ``(B, image_dim)``, or raw images when the metric holds a model (see
                :meth:`update`).
            texts: Text features ``(B, text_dim)``, or a list of captions when the metric holds a model.

        Returns:
            Float64 tensor of shape ``(B,)`` on the state's device.

        Raises:
            ValueError: If the inputs are invalid or the reference is not ready (see :meth:`compute`).
        """
        self._check_device()
        joint = self._joint_features(images, texts)
        reference = self._fitted_reference()
        values = pointwise_mutual_information_from_reference(
            reference, joint[:, : self.image_dim], joint[:, self.image_dim :]
        )
        check_finite_result(values, "PMI")
        return values

    # ------------------------------------------------------- torchmetrics hooks
    def forward(self, images: Any, texts: Any, real: bool) -> Optional[Tensor]:
        """Accumulate a batch, like :meth:`update`, and return a batch score when one is defined.

        A batch on its own cannot be scored (it has no reference of its own), so, unlike most torchmetrics
        metrics, ``forward`` does not compute MID on the batch. It adds the batch to the global state and returns
        the mean :meth:`pmi` of a candidate batch under the reference accumulated so far, when that reference is
        full-rank; otherwise (reference batches, or no usable reference yet) it returns ``None``. Log the metric
        object itself for the epoch value.
        """
        if self._is_synced:
            raise TorchMetricsUserError(
                "The Metric shouldn't be synced when performing ``forward``. HINT: Did you forget to call ``unsync`` ?."
            )
        if self.feature_extractor is not None and not _are_features(images, texts):
            images, texts = self.extract_features(images, texts)  # encode once, for update and pmi
        self.update(images, texts, real=real)
        batch_value: Optional[Tensor] = None
        if not real and images.shape[0] > 0:
            try:
                batch_value = self.pmi(images, texts).mean()
            except ValueError:
                batch_value = None
        self._forward_cache = batch_value
        return batch_value

    def reset(self) -> None:
        """Reset the state; keep the reference statistics when ``reset_real_features=False``."""
        kept = None if self.reset_real_features else self.reference_moments
        super().reset()
        self._batches_seen["candidate"] = 0
        if kept is None:
            self._batches_seen["reference"] = 0
            self._clear_loaded_reference()
        else:
            self.reference_moments = kept
        self._last_result = None

    def get_extra_state(self) -> dict[str, int]:
        """Return the per-group batch counters, which ``state_dict()`` saves next to the statistics.

        They decide when the shift is recentred, so a metric restored from a checkpoint mid-epoch continues
        bit for bit like an uninterrupted one.
        """
        return dict(self._batches_seen)

    def _check_extra_state(self, state: Any) -> None:
        if not isinstance(state, dict):
            raise ValueError(f"The extra state of MutualInformationDivergence must be a dict, got {type(state)}.")
        for group, value in state.items():
            if group not in self._batches_seen or isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(
                    "The extra state of MutualInformationDivergence maps 'reference' and 'candidate' to batch counts"
                    f" (whole numbers >= 0), got {state!r}."
                )

    def set_extra_state(self, state: Any) -> None:
        """Restore the batch counters saved by :meth:`get_extra_state` (``load_state_dict`` calls this).

        Raises:
            ValueError: If ``state`` is not a dict of batch counts.
        """
        self._check_extra_state(state)
        for group in self._batches_seen:
            if group in state:
                self._batches_seen[group] = int(state[group])

    def plot(self, val: Optional[Union[Tensor, Sequence[Tensor]]] = None, ax: Optional[Any] = None) -> tuple[Any, Any]:
        """Plot one MID value, or a sequence of values (e.g. one per epoch), with matplotlib.

        Follows torchmetrics' plot API; matplotlib is the optional extra ``mid-metric[plot]``.

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
            >>> matplotlib.use("Agg")
            >>> metric = MutualInformationDivergence(feature=2)
            >>> values = [torch.tensor(0.3), torch.tensor(0.5), torch.tensor(0.6)]
            >>> fig, ax = metric.plot(values)
            >>> len(ax.lines[0].get_ydata())
            3
        """
        return self._plot(val, ax)

    def _check_incoming_moments(self, incoming: dict[str, Any], where: str) -> dict[str, Tensor]:
        """Check every state in ``incoming`` (keys without prefix) and return float64 copies on this device.

        Nothing is changed here, so a caller that applies the result only after this returns changes nothing on
        error.
        """
        device = self.reference_moments.device
        checked: dict[str, Tensor] = {}
        if _FORMAT_KEY in incoming:
            checked[_FORMAT_KEY] = check_state_format(incoming[_FORMAT_KEY], where + _FORMAT_KEY, self.state_format)
        joint_dim = self.image_dim + self.text_dim
        for key in (*_MOMENT_KEYS, _LOADED_REFERENCE_KEY):
            if key in incoming:
                packed = check_packed_moments(incoming[key], where + key, joint_dim)
                checked[key] = packed.to(device=device, dtype=torch.float64, copy=True)
        return checked

    def merge_state(self, incoming_state: Union[dict[str, Any], Metric]) -> None:
        """Merge another metric's (or a ``metric_state`` dict's) statistics into this one (exact, Chan-style).

        The incoming states are checked first (all states present, the same ``state_format``, which records the
        ``(image_dim, text_dim)`` split, valid moments); when one fails, this raises and nothing is merged.
        Statistics loaded from a reference file are not merged (each metric loads its own file).

        Raises:
            ValueError: If ``incoming_state`` is neither a dict nor a metric of this class, lacks a state, or holds
                a state of another layout or an invalid one.
        """
        if isinstance(incoming_state, Metric):
            if not isinstance(incoming_state, type(self)):
                raise ValueError(
                    f"`incoming_state` must be a {type(self).__name__} or a dict of its states, got"
                    f" {type(incoming_state).__name__}."
                )
            incoming_state = incoming_state.metric_state
        if not isinstance(incoming_state, dict):
            raise ValueError(
                f"`incoming_state` must be a {type(self).__name__} or a dict of its states, got"
                f" {type(incoming_state).__name__}."
            )
        missing = [key for key in self._defaults if key not in incoming_state]
        if missing:
            raise ValueError(
                f"`incoming_state` lacks the state(s) {missing}; pass another metric's `metric_state` (mid-metric"
                " 0.1 states have no `state_format`: load them into a metric with `load_state_dict` first)."
            )
        checked = self._check_incoming_moments({key: incoming_state[key] for key in self._defaults}, "incoming ")
        super().merge_state(checked)
        # torchmetrics keeps the value of an earlier compute() after a merge; it is stale now.
        self._computed = None
        self._last_result = None

    def _load_from_state_dict(
        self,
        state_dict: dict,
        prefix: str,
        local_metadata: dict,
        strict: bool,
        missing_keys: list[str],
        unexpected_keys: list[str],
        error_msgs: list[str],
    ) -> None:
        """Check every state of this metric in ``state_dict`` first, then load them all (or none).

        When ``reference_moments`` or ``candidate_moments`` is missing, nothing of this metric is loaded and the
        keys are reported as missing (``load_state_dict`` raises with ``strict=True`` and returns them otherwise).
        A checkpoint of mid-metric 0.1 has no ``state_format``; it loads, with only the total dimension checked.
        """
        ours = {
            key: state_dict[prefix + key]
            for key in (*self._defaults, _LOADED_REFERENCE_KEY)
            if prefix + key in state_dict
        }
        missing = [prefix + key for key in _MOMENT_KEYS if key not in ours]
        if missing:  # (nn.Module always passes strict=True here, and applies the caller's choice to missing_keys)
            missing_keys.extend(missing)
            return
        checked = self._check_incoming_moments(ours, prefix)
        if _FORMAT_KEY not in checked:  # a 0.1 checkpoint
            checked[_FORMAT_KEY] = self.state_format.clone()
        extra = state_dict.get(prefix + _EXTRA_STATE_KEY)
        if extra is not None:
            self._check_extra_state(extra)
        # Everything is valid: apply. The popped keys are this metric's; the rest (the extractor's weights, which
        # are never saved, and the extra state) goes through nn.Module's loading.
        for key in ours:
            state_dict.pop(prefix + key)
        if self.feature_extractor is not None:
            extractor_prefix = prefix + _EXTRACTOR_PREFIX
            for key, value in self.feature_extractor.state_dict(prefix=extractor_prefix, keep_vars=True).items():
                state_dict.setdefault(key, value)
        for key in self._defaults:
            if key in checked:
                setattr(self, key, checked[key])
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )
        if _LOADED_REFERENCE_KEY in checked:
            self._loaded_reference = checked[_LOADED_REFERENCE_KEY]
            self._loaded_count = int(self._loaded_reference[0])
        self._computed = None  # a value cached before the load is stale
        self._last_result = None

    def _apply(self, fn: Any, exclude_state: Any = "") -> Any:
        """Move the states with ``.to(device)`` / ``.cuda()``, but keep them float64 whatever dtype is asked."""

        def keep_float64(tensor: Tensor) -> Tensor:
            moved = fn(tensor)
            if tensor.dtype == torch.float64 and moved.dtype != torch.float64:
                return tensor.to(device=moved.device)  # `.to(torch.float16)` would otherwise round the statistics
            return moved

        result = super()._apply(keep_float64, exclude_state)
        loaded = getattr(self, "_loaded_reference", None)
        if loaded is not None:  # reference-file statistics are not a state: move them with the states
            self._loaded_reference = loaded.to(device=self.reference_moments.device)
        return result

    # ------------------------------------------------ models and reference files
    def extract_features(self, images: Any, texts: Any) -> tuple[Tensor, Tensor]:
        """Encode raw images and captions with the metric's feature extractor.

        This is what :meth:`update` and :meth:`pmi` do with raw inputs; call it to cache features, which those
        methods also accept.

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
                "This metric was built with feature sizes, so it takes features, not images and captions. Build it"
                " with a model, e.g. MutualInformationDivergence(feature='openai/clip-vit-large-patch14'), to pass"
                " raw inputs."
            )
        count = count_images(images)
        captions = check_texts(texts, expected=count)
        if count == 0:
            return torch.empty(0, self.image_dim), torch.empty(0, self.text_dim)
        return extractor.encode_images(images), extractor.encode_texts(captions)

    def _clear_loaded_reference(self) -> None:
        self._loaded_reference = moments.empty_moments(
            self.image_dim + self.text_dim, device=self.reference_moments.device
        )
        self._loaded_count = 0

    def _adopt_reference(
        self, packed: Tensor, metadata: dict[str, Any], path: ReferencePath, check_feature_extractor: bool
    ) -> None:
        """Check loaded reference statistics against this metric, then add them (nothing changes on error)."""
        where = repr(os.fspath(path))
        dims = (metadata["image_dim"], metadata["text_dim"])
        if dims != (self.image_dim, self.text_dim):
            raise ValueError(
                f"Reference statistics {where} have (image_dim, text_dim) = {dims}, but this metric has"
                f" {(self.image_dim, self.text_dim)}; build the metric with the same feature extractor as the file."
            )
        theirs, ours = metadata["feature_extractor"], self.feature_extractor_name
        if check_feature_extractor and theirs and ours and theirs != ours:
            raise ValueError(
                f"Reference statistics {where} were computed with the feature extractor {theirs!r}, but this metric"
                f" uses {ours!r}; MID values from different extractors are not comparable. Pass"
                " check_feature_extractor=False if both names denote the same model."
            )
        loaded = packed.to(device=self.reference_moments.device, dtype=torch.float64)
        if self._loaded_count > 0:
            loaded = moments.merge(torch.stack([self._loaded_reference, loaded]))
        self._loaded_reference = loaded
        self._loaded_count = int(loaded[0])
        if not ours:
            self.feature_extractor_name = theirs
        self._computed = None
        self._last_result = None

    def load_reference(self, path: ReferencePath, check_feature_extractor: Optional[bool] = None) -> None:
        """Load reference statistics saved by :meth:`save_reference`, onto the metric's device.

        They act as if those pairs had been passed to ``update(..., real=True)``: they add to any reference pairs
        already seen, and with ``reset_real_features=False`` they survive :meth:`reset`. Under DDP, load the file
        on every rank; the loaded pairs are counted once (they are not part of the synced state).

        Args:
            path: A ``.safetensors`` file written by :meth:`save_reference`.
            check_feature_extractor: Refuse a file whose feature extractor name differs from this metric's;
                ``None`` uses the metric's ``check_feature_extractor`` setting.

        Raises:
            FileNotFoundError: If the file does not exist.
            ValueError: If the file is corrupt, of the wrong kind or of a newer format, holds NaN, or its
                dimensions or feature extractor do not match this metric.
        """
        from mid_metric.reference_io import load_reference_statistics

        if check_feature_extractor is None:
            check_feature_extractor = self.check_feature_extractor
        packed, metadata = load_reference_statistics(path)
        self._adopt_reference(packed, metadata, path, check_feature_extractor)

    def save_reference(self, path: ReferencePath, feature_extractor: Optional[str] = None) -> Path:
        """Save the reference statistics to a safetensors file (atomically), to score candidates against later.

        The file holds the float64 count, mean and scatter of the reference pairs (about ``8 (Dx + Dy + 1)^2``
        bytes: 19 MB for ViT-L/14) with the feature extractor's name, the dimensions, the sample count, ``eps``
        and the library version. Load it with :meth:`from_reference` or the ``reference=`` argument.

        Under DDP this syncs the reference across ranks, so call it on every rank; rank 0 writes the file.

        Args:
            path: Destination file, e.g. ``"coco-val2014-vit-l-14.safetensors"``.
            feature_extractor: Name to record for the extractor of the features; defaults to the metric's
                ``feature_extractor_name`` (the model's name in model mode, ``""`` when features were passed).

        Returns:
            The path written.

        Raises:
            ValueError: If there are no reference pairs yet.

        Example:
            >>> import os, tempfile
            >>> x, y = torch.randn(100, 2), torch.randn(100, 2)
            >>> mid = MutualInformationDivergence(feature=2)
            >>> mid.update(x, y, real=True)
            >>> path = mid.save_reference(os.path.join(tempfile.mkdtemp(), "ref.safetensors"), "toy-encoder")
            >>> scorer = MutualInformationDivergence.from_reference(path)
            >>> scorer.update(x[:10], y[:10], real=False)
            >>> mid.update(x[:10], y[:10], real=False)
            >>> torch.allclose(scorer.compute(), mid.compute(), rtol=0, atol=1e-12)
            True
        """
        from mid_metric.reference_io import save_reference_statistics

        if feature_extractor is None:
            feature_extractor = self.feature_extractor_name
        with self.sync_context(dist_sync_fn=self.dist_sync_fn, should_sync=True, should_unsync=True):
            packed = self._reference_statistics()
            if int(packed[0]) == 0:
                raise ValueError("There are no reference pairs to save: call `update(images, texts, real=True)` first.")
            rank_zero = not (torch.distributed.is_available() and torch.distributed.is_initialized()) or (
                torch.distributed.get_rank() == 0
            )
            if rank_zero:
                save_reference_statistics(
                    path,
                    packed,
                    image_dim=self.image_dim,
                    text_dim=self.text_dim,
                    feature_extractor=feature_extractor,
                    eps=self.eps,
                )
        return Path(os.fspath(path))

    @classmethod
    def from_reference(
        cls, path: ReferencePath, feature: Optional[FeatureSpec] = None, **kwargs: Any
    ) -> MutualInformationDivergence:
        """Build a metric whose reference is loaded from a file written by :meth:`save_reference`.

        Args:
            path: The reference statistics file.
            feature: ``None`` to take the dimensions from the file (pass features to the metric), or any value
                the constructor accepts, such as the model the file was built with, to pass raw images and captions.
            kwargs: Other constructor arguments. ``eps`` defaults to the value recorded in the file, and
                ``check_feature_extractor=False`` accepts a file whose extractor name differs from the model's.
                Pass ``reset_real_features=False`` to keep the reference across :meth:`reset`.

        Returns:
            The metric, with the reference loaded onto its device.

        Raises:
            FileNotFoundError: If the file does not exist.
            ValueError: If the file is invalid or does not match ``feature`` (see :meth:`load_reference`).
        """
        from mid_metric.reference_io import load_reference_statistics

        if "reference" in kwargs:
            raise TypeError("from_reference() takes the reference file as `path`; do not pass `reference=` too.")
        packed, metadata = load_reference_statistics(path)
        if feature is None:
            feature = (metadata["image_dim"], metadata["text_dim"])
        kwargs.setdefault("eps", metadata["eps"])
        metric = cls(feature=feature, **kwargs)
        metric._adopt_reference(packed, metadata, path, metric.check_feature_extractor)
        return metric

    def state_dict(  # type: ignore[override]
        self, destination: Optional[dict[str, Any]] = None, prefix: str = "", keep_vars: bool = False
    ) -> dict[str, Any]:
        """Return the metric states; the feature extractor's weights are left out (they come from the model).

        Statistics loaded from a reference file are included as ``loaded_reference_moments`` when there are any.
        """
        destination = super().state_dict(destination=destination, prefix=prefix, keep_vars=keep_vars)
        for key in [key for key in destination if key.startswith(prefix + _EXTRACTOR_PREFIX)]:
            del destination[key]
        if self._loaded_count > 0:
            destination[prefix + _LOADED_REFERENCE_KEY] = self._loaded_reference.detach().clone()
        return destination

    def set_dtype(self, dst_type: Union[str, torch.dtype]) -> MutualInformationDivergence:
        """Keep the float64 statistics: MID's log-determinants need them, so the states ignore dtype requests."""
        return self
