"""The streaming ``MutualInformationDivergence`` metric for torchmetrics."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Optional, Union

import torch
from torch import Tensor
from torchmetrics.utilities.exceptions import TorchMetricsUserError

from mid_metric import moments, uncertainty
from mid_metric._checks import (
    check_bias_correction,
    check_bool,
    check_eps,
    check_finite_result,
    check_packed_moments,
    check_state_format,
    same_state_format,
    state_format,
)
from mid_metric.functional.mid import divergence_from_moments
from mid_metric.gaussian import GaussianReference, pointwise_mutual_information_from_reference, reference_from_moments
from mid_metric.metrics._base import FeatureSpec, PairedFeatureMetric, are_features
from mid_metric.metrics._loaded_reference import LoadedReference, PathLike, check_reference_file
from mid_metric.result import MIDResult
from mid_metric.sync import sync_state

_LOADED_REFERENCE_KEY = "loaded_reference_moments"
_GROUPS = ("reference", "candidate")


class MutualInformationDivergence(PairedFeatureMetric):
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
        bias_correction: Compute the Gaussian bias-corrected MID (:mod:`mid_metric.wishart`), which estimates the
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

    higher_is_better: bool = True
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
        reference: Optional[PathLike] = None,
        check_feature_extractor: bool = True,
        bias_correction: bool = False,
        **kwargs: Any,
    ) -> None:
        if kwargs.get("dist_sync_fn") is None:
            # All-reduce the packed moments: sync traffic of one state's size, not world_size states; the format
            # record is compared across ranks first (see mid_metric.sync).
            kwargs["dist_sync_fn"] = sync_state
        super().__init__(feature, validate_args, **kwargs)
        self.eps = check_eps(eps)
        self.bias_correction = check_bias_correction(bias_correction, self.eps)
        self.reset_real_features = check_bool(reset_real_features, "reset_real_features")
        self.check_feature_extractor = check_bool(check_feature_extractor, "check_feature_extractor")
        joint_dim = self.image_dim + self.text_dim
        # [format version, image_dim, text_dim]: lets state_dict, merge_state and the DDP sync refuse statistics of
        # another feature split. Added first, so the sync compares it before it reduces any statistics.
        own_format = state_format(self.image_dim, self.text_dim)
        self.add_checked_state("state_format", own_format, same_state_format, self._check_format)
        # Packed (count, shift, shifted sum, shifted outer-product sum) per group; see mid_metric.moments.
        for group in _GROUPS:
            self.add_checked_state(
                f"{group}_moments", moments.empty_moments(joint_dim), moments.merge, self._check_moments
            )
        # Host-side: batches per group since its reset (the recentring schedule of moments.accumulate_batch_), the
        # fitted reference with the two tensors it came from, the last result with the candidates it came from,
        # and the reference files' statistics.
        self._batches_seen = dict.fromkeys(_GROUPS, 0)
        self._reference_cache: Optional[tuple[Tensor, Tensor, GaussianReference]] = None
        self._last: Optional[tuple[MIDResult, GaussianReference, Tensor]] = None
        self._loaded = LoadedReference(joint_dim)
        if reference is not None:
            self.load_reference(reference)

    def _check_format(self, value: object, name: str) -> Tensor:
        return check_state_format(value, name, self.state_format)

    def _check_moments(self, value: object, name: str) -> Tensor:
        packed = check_packed_moments(value, name, self.image_dim + self.text_dim)
        return packed.to(device=self.reference_moments.device, dtype=torch.float64, copy=True)

    # ------------------------------------------------------------------------------------ update
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
            ValueError: If a shape is wrong, the batch sizes differ, or a value is NaN, Inf or above the magnitude
                bound of :data:`mid_metric._checks.MAX_FEATURE_MAGNITUDE`.
        """
        if not isinstance(real, bool):
            raise TypeError(f"`real` must be a bool (True for reference pairs, False for candidates), got {real!r}.")
        self._check_device()
        joint = moments.joint_rows(*self._pair_features(images, texts), self.reference_moments.device)
        if joint.shape[0] == 0:
            return
        group = _GROUPS[0] if real else _GROUPS[1]
        state = getattr(self, f"{group}_moments")
        if state.is_inference() and not torch.is_inference_mode_enabled():
            # A reset() under torch.inference_mode() (as in Lightning's validation) made inference tensors, which
            # cannot be updated in place outside that mode; continue on an ordinary copy.
            state = state.clone()
            setattr(self, f"{group}_moments", state)
        self._batches_seen[group] += 1
        moments.accumulate_batch_(state, joint, self._batches_seen[group])
        if real:
            self._reference_cache = None

    # ----------------------------------------------------------------------------------- outputs
    def _fitted_reference(self) -> GaussianReference:
        """Return the reference Gaussian of the current state, refitted only when that state changed."""
        state, loaded = self.reference_moments, self._loaded.moments
        cached = self._reference_cache
        if cached is not None and cached[0] is state and cached[1] is loaded:
            return cached[2]
        reference = reference_from_moments(self._loaded.merged_with(state), self.image_dim, self.eps)
        self._reference_cache = (state, loaded, reference)
        return reference

    def compute(self) -> Tensor:
        """Return MID as a 0-dim float64 tensor on the device of the state.

        Raises:
            ValueError: If there is no reference, too few reference pairs for a full-rank covariance with
                ``eps = 0`` (more than ``image_dim + text_dim`` are needed), fewer than 2 candidates, a covariance
                that is not positive definite, or a result that is not finite.
        """
        self._check_device()
        reference = self._fitted_reference()
        result = divergence_from_moments(reference, self.candidate_moments, self.bias_correction)
        self._last = (result, reference, self.candidate_moments.clone())  # the synced states this came from
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
        self.compute()  # fills self._last, or returns the cached value of the compute that filled it
        if self._last is None:  # pragma: no cover - compute() always sets it when it succeeds
            raise RuntimeError("compute() produced no result")
        return self._last[0]

    def compute_with_ci(self, level: float = 0.95) -> MIDResult:
        """Return the result of :meth:`compute` with a standard error and a ``level`` confidence interval.

        ``standard_error``, ``ci_low``, ``ci_high`` and ``ci_level`` of the returned
        :class:`~mid_metric.result.MIDResult` are filled in (see :func:`mid_metric.uncertainty.standard_error`).
        It covers the candidates' sampling noise and, to first order, the reference's. With
        ``bias_correction=True`` it targets the population MID; with the paper's estimator it is centred on a value
        biased by the sample size. Like :meth:`compute`, it syncs under DDP and must run on every rank.

        Args:
            level: Nominal coverage, in ``(0, 1)``.

        Raises:
            ValueError: If ``level`` is not in ``(0, 1)``, the standard error is not finite, or as :meth:`compute`.

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
        _, reference, candidates = self._last  # type: ignore[misc]
        return uncertainty.with_confidence_interval(result, reference, candidates, level)

    @property
    def last_result(self) -> Optional[MIDResult]:
        """The :class:`~mid_metric.result.MIDResult` of the latest :meth:`compute`, or ``None`` before one."""
        return None if self._last is None else self._last[0]

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
            ValueError: If the inputs are invalid, the reference is not ready (see :meth:`compute`), or a value is
                not finite in float64.
        """
        self._check_device()
        images, texts = self._pair_features(images, texts)
        values = pointwise_mutual_information_from_reference(self._fitted_reference(), images, texts)
        return check_finite_result(values, "PMI")

    # -------------------------------------------------------------------------- torchmetrics hooks
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
        if self.feature_extractor is not None and not are_features(images, texts):
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
            self._loaded.clear()
        else:
            self.reference_moments = kept
        self._last = None

    def merge_state(self, incoming_state: Union[dict[str, Any], Any]) -> None:
        """Merge another metric's (or a ``metric_state`` dict's) statistics into this one (exact, Chan-style).

        The incoming states are checked first (all present, the same ``state_format``, which records the
        ``(image_dim, text_dim)`` split, valid moments); when one fails, this raises and nothing is merged.
        Statistics loaded from a reference file are not merged (each metric loads its own file).

        Raises:
            ValueError: If ``incoming_state`` is neither a dict nor a metric of this class, lacks a state, or holds
                a state of another layout or an invalid one.
        """
        super().merge_state(incoming_state)
        self._last = None

    def _load_from_state_dict(self, state_dict: dict, prefix: str, *args: Any) -> None:
        """Check every state of this metric in ``state_dict`` first, then load them all (or none).

        When ``reference_moments`` or ``candidate_moments`` is missing, nothing of this metric is loaded and the
        keys are reported as missing (``load_state_dict`` raises with ``strict=True`` and returns them otherwise).
        A checkpoint of mid-metric 0.1 has no ``state_format``; it loads, with only the total dimension checked.
        """
        local_metadata, strict, missing_keys, unexpected_keys, error_msgs = args
        loaded = state_dict.get(prefix + _LOADED_REFERENCE_KEY)
        if loaded is not None:
            loaded = self._check_moments(loaded, prefix + _LOADED_REFERENCE_KEY)
        extra = state_dict.get(prefix + "_extra_state")
        if extra is not None:
            self._check_extra_state(extra)
        defaults = {"state_format": self.state_format.clone()}  # a 0.1 checkpoint
        checked = self._load_checked_states(
            state_dict, prefix, ("reference_moments", "candidate_moments"), missing_keys, defaults
        )
        if checked is None:
            return
        # Everything is valid: apply (nn.Module then loads the extra state).
        state_dict.pop(prefix + _LOADED_REFERENCE_KEY, None)
        for name, value in checked.items():
            setattr(self, name, value)
        super()._load_from_state_dict(state_dict, prefix, *args)
        if loaded is not None:
            self._loaded.replace(loaded)
        self._computed = None  # a value cached before the load is stale
        self._last = None

    def _check_extra_state(self, state: Any) -> None:
        valid = isinstance(state, dict) and all(
            group in self._batches_seen and type(value) is int and value >= 0 for group, value in state.items()
        )
        if not valid:
            raise ValueError(
                "The extra state of MutualInformationDivergence maps 'reference' and 'candidate' to batch counts"
                f" (whole numbers >= 0), got {state!r}."
            )

    def get_extra_state(self) -> dict[str, int]:
        """Return the per-group batch counters, which ``state_dict()`` saves next to the statistics.

        They decide when the shift is recentred, so a metric restored from a checkpoint mid-epoch continues
        bit for bit like an uninterrupted one.
        """
        return dict(self._batches_seen)

    def set_extra_state(self, state: Any) -> None:
        """Restore the batch counters saved by :meth:`get_extra_state` (``load_state_dict`` calls this).

        Raises:
            ValueError: If ``state`` is not a dict of batch counts.
        """
        self._check_extra_state(state)
        self._batches_seen.update(state)

    def state_dict(  # type: ignore[override]
        self, destination: Optional[dict[str, Any]] = None, prefix: str = "", keep_vars: bool = False
    ) -> dict[str, Any]:
        """Return the metric states, without the feature extractor's weights (they come from the model).

        Statistics loaded from a reference file are included as ``loaded_reference_moments`` when there are any.
        """
        destination = super().state_dict(destination=destination, prefix=prefix, keep_vars=keep_vars)
        if self._loaded.count > 0:
            destination[prefix + _LOADED_REFERENCE_KEY] = self._loaded.moments.detach().clone()
        return destination

    def _apply(self, fn: Any, exclude_state: Any = "") -> Any:
        result = super()._apply(fn, exclude_state)
        loaded = getattr(self, "_loaded", None)
        if loaded is not None:  # reference-file statistics are not a state: move them with the states
            loaded.to(self.reference_moments.device)
        return result

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
            >>> matplotlib.use("Agg")
            >>> metric = MutualInformationDivergence(feature=2)
            >>> values = [torch.tensor(0.3), torch.tensor(0.5), torch.tensor(0.6)]
            >>> fig, ax = metric.plot(values)
            >>> len(ax.lines[0].get_ydata())
            3
        """
        return self._plot(val, ax)

    # --------------------------------------------------------------------------- reference files
    def _adopt_reference(self, packed: Tensor, metadata: dict[str, Any], path: PathLike, check: bool) -> None:
        """Check loaded reference statistics against this metric, then add them (nothing changes on error)."""
        check_reference_file(metadata, path, (self.image_dim, self.text_dim), self.feature_extractor_name, check)
        self._loaded.add(packed)
        if not self.feature_extractor_name:
            self.feature_extractor_name = metadata["feature_extractor"]
        self._computed = None
        self._last = None

    def load_reference(self, path: PathLike, check_feature_extractor: Optional[bool] = None) -> None:
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
            IsADirectoryError: If ``path`` is a folder.
            ValueError: If the file is corrupt, of the wrong kind or of a newer format, holds NaN, or its
                dimensions or feature extractor do not match this metric.
        """
        from mid_metric.io.reference_files import load_reference_statistics

        packed, metadata = load_reference_statistics(path)
        check = self.check_feature_extractor if check_feature_extractor is None else check_feature_extractor
        self._adopt_reference(packed, metadata, path, check)

    def save_reference(self, path: PathLike, feature_extractor: Optional[str] = None) -> Path:
        """Save the reference statistics to a safetensors file (atomically), to score candidates against later.

        The file holds the float64 count, mean and scatter of the reference pairs (about ``8 (Dx + Dy + 1)^2``
        bytes: 19 MB for ViT-L/14) with the feature extractor's name, the dimensions, the sample count, ``eps``,
        the root-mean-square norms of the image and text features, a SHA-256 of the statistics and the library
        version. Load it with :meth:`from_reference` or the ``reference=`` argument.

        Under DDP this syncs the reference across ranks, so call it on every rank; rank 0 writes the file.

        Args:
            path: Destination file, e.g. ``"coco-val2014-vit-l-14.safetensors"``.
            feature_extractor: Name to record for the extractor of the features; defaults to the metric's
                ``feature_extractor_name``: in model mode the hub id, or ``local:<name>@sha256:<fingerprint>`` for a
                local folder (:func:`mid_metric.features.model_identity`); ``""`` when features were passed.

        Returns:
            The path written.

        Raises:
            ValueError: If there are no reference pairs yet, or ``path`` is empty.
            IsADirectoryError: If ``path`` is a folder.
            FileNotFoundError: If the folder of ``path`` does not exist.

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
        from mid_metric.io.reference_files import save_reference_statistics

        name = self.feature_extractor_name if feature_extractor is None else feature_extractor
        with self.sync_context(dist_sync_fn=self.dist_sync_fn, should_sync=True, should_unsync=True):
            packed = self._loaded.merged_with(self.reference_moments)
            if int(packed[0]) == 0:
                raise ValueError("There are no reference pairs to save: call `update(images, texts, real=True)` first.")
            distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
            if not distributed or torch.distributed.get_rank() == 0:
                save_reference_statistics(
                    path, packed, image_dim=self.image_dim, text_dim=self.text_dim, feature_extractor=name, eps=self.eps
                )
        return Path(os.fspath(path))

    @classmethod
    def from_reference(
        cls, path: PathLike, feature: Optional[FeatureSpec] = None, **kwargs: Any
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
            IsADirectoryError: If ``path`` is a folder.
            ValueError: If the file is invalid or does not match ``feature`` (see :meth:`load_reference`).
        """
        from mid_metric.io.reference_files import load_reference_statistics

        if "reference" in kwargs:
            raise TypeError("from_reference() takes the reference file as `path`; do not pass `reference=` too.")
        packed, metadata = load_reference_statistics(path)
        if feature is None:
            feature = (metadata["image_dim"], metadata["text_dim"])
        kwargs.setdefault("eps", metadata["eps"])
        metric = cls(feature=feature, **kwargs)
        metric._adopt_reference(packed, metadata, path, metric.check_feature_extractor)
        return metric
