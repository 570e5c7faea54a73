"""The streaming ``MutualInformationDivergence`` metric for torchmetrics."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Optional, Union

import torch
from torch import Tensor
from torchmetrics.utilities.exceptions import TorchMetricsUserError

from mid_metric import jackknife, moments, uncertainty
from mid_metric._checks import (
    check_bias_correction,
    check_bool,
    check_eps,
    check_features,
    check_finite_result,
    check_level,
    check_packed_moments,
    check_positive_int,
    check_same_batch,
    check_state_format,
    check_within_bound,
    same_state_format,
    state_format,
)
from mid_metric.features import count_images
from mid_metric.functional.mid import divergence_from_moments
from mid_metric.gaussian import (
    GaussianReference,
    pointwise_mutual_information_by_products,
    pointwise_mutual_information_from_reference,
)
from mid_metric.metrics._base import FeatureSpec, PairedFeatureMetric, are_features
from mid_metric.metrics._loaded_reference import LoadedReference, PathLike, check_reference_file
from mid_metric.metrics._reference_fit import ReferenceFit, RefitSchedule
from mid_metric.result import MIDResult
from mid_metric.sync import sync_state

_LOADED_REFERENCE_KEY = "loaded_reference_moments"
# Default staging buffer: rows per group (GEMMs over fewer rows are memory-bound on the J x J state), and the rows
# per jackknife group that a flush should carry with bias_correction="jackknife".
_BUFFER_ROWS, _JACKKNIFE_ROWS_PER_GROUP = 1024, 256
_STAGED_KEY, _SHARED_KEY, _GROUP_BATCHES_KEY = "staged", "texts_shared", "group_batches"
_GROUPS = ("reference", "candidate")


def _describe(value: object) -> str:
    """A short description of an invalid extra state for error messages (tensors by shape, not by value)."""
    if isinstance(value, dict):
        return "{" + ", ".join(f"{key!r}: {_describe(item)}" for key, item in value.items()) + "}"
    if isinstance(value, Tensor):
        return f"a tensor of shape {tuple(value.shape)}"
    return repr(value)


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
        buffer_rows: Batches of fewer rows are staged in a buffer of this many rows per group, and added to the
            statistics when it is full, so that small batches (8 to 64 rows) run at the speed of large ones; ``1``
            turns the buffer off. It is flushed before anything reads the statistics (``compute``, ``pmi``, the DDP
            sync, ``state_dict``, ``metric_state``, ``merge_state``, ``save_reference``), never holds more rows
            than this, and costs ``16 * buffer_rows * (Dx + Dy)`` bytes (25 MB at 1024 rows for ViT-L/14).
            ``None`` means 1024, or ``256 * jackknife_groups`` with ``bias_correction="jackknife"``, whose flushes
            are split among the groups.
        bias_correction: ``False`` (the default) is the paper's estimator, which published numbers use. ``True``
            computes the Gaussian bias-corrected MID (:mod:`mid_metric.wishart`), which estimates the same
            population value at any ``N`` when the features are Gaussian. ``"jackknife"`` adds a grouped jackknife
            on top of it (:mod:`mid_metric.jackknife`), which removes the remaining ``1/N`` bias of non-Gaussian
            features and gives :meth:`compute_with_ci` a distribution-free standard error; it keeps
            ``jackknife_groups`` extra states per group (``K`` times the memory and sync traffic), and cannot use
            reference files. Both corrections need ``eps = 0``.
        jackknife_groups: The number of groups ``K`` of the jackknife (2 to 1000).
        jackknife_key: What decides a row's jackknife group: a hash of its ``"text"`` features (the default, for
            candidates generated from the reference's captions), its ``"image"`` features (captioning, where the
            candidates share the reference's images) or both (``"joint"``). It depends on neither batching, order
            nor the number of processes.
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
        bias_correction: Union[bool, str] = False,
        buffer_rows: Optional[int] = None,
        jackknife_groups: int = jackknife.DEFAULT_GROUPS,
        jackknife_key: str = "text",
        **kwargs: Any,
    ) -> None:
        if kwargs.get("dist_sync_fn") is None:
            # All-reduce the packed moments: sync traffic of one state's size, not world_size states; the format
            # record is compared across ranks first (see mid_metric.sync).
            kwargs["dist_sync_fn"] = sync_state
        super().__init__(feature, validate_args, **kwargs)
        self.eps = check_eps(eps)
        self.bias_correction = check_bias_correction(bias_correction, self.eps, allow_jackknife=True)
        self.jackknife_groups = jackknife.check_num_groups(jackknife_groups, "jackknife_groups")
        self.jackknife_key = jackknife.check_key(jackknife_key, "jackknife_key")
        if buffer_rows is None:  # the jackknife splits each flush K ways: give every group about 256 rows
            buffer_rows = _JACKKNIFE_ROWS_PER_GROUP * self.jackknife_groups if self.uses_jackknife else _BUFFER_ROWS
        self.buffer_rows = check_positive_int(buffer_rows, "buffer_rows")
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
        if self.uses_jackknife:
            # The K groups' moments per group (mid_metric.jackknife), after a record of K and the key, which the
            # DDP sync compares first like state_format.
            self.add_checked_state(
                "jackknife_settings", self._own_jackknife_settings(), same_state_format, self._check_settings
            )
            for group in _GROUPS:
                empty = jackknife.empty_group_moments(self.jackknife_groups, joint_dim)
                self.add_checked_state(
                    f"{group}_group_moments", empty, jackknife.reduce_group_states, self._check_group_moments
                )
        # Host-side: batches per group since its reset (the recentring schedule of moments.accumulate_batch_), the
        # staged rows per group, whether the candidates' texts have been the reference's row for row since the
        # last reset (update_pairs), the fitted reference, the one forward() scores batches with, the last result
        # with the candidates it came from, and the reference files' statistics.
        self._batches_seen = dict.fromkeys(_GROUPS, 0)
        self._group_batches_seen = {group: [0] * self.jackknife_groups for group in _GROUPS}
        self._staged: dict[str, Optional[Tensor]] = dict.fromkeys(_GROUPS)
        self._staged_rows = dict.fromkeys(_GROUPS, 0)
        self._texts_shared = True
        self._reference_revision = 0  # bumped whenever reference rows are added (the key of the fitted reference)
        self._reference_fit = ReferenceFit()
        self._batch_scoring = RefitSchedule()
        # (the third item: the candidates' moments, or the jackknife's estimates, which give its interval)
        self._last: Optional[tuple[MIDResult, GaussianReference, Union[Tensor, jackknife.JackknifeEstimates]]] = None
        self._loaded = LoadedReference(joint_dim)
        if reference is not None:
            self.load_reference(reference)

    @property
    def uses_jackknife(self) -> bool:
        """Whether ``bias_correction="jackknife"``: the metric then keeps ``jackknife_groups`` sub-states per group."""
        return self.bias_correction == "jackknife"

    def _own_jackknife_settings(self) -> Tensor:
        return torch.tensor([self.jackknife_groups, jackknife.GROUP_KEYS.index(self.jackknife_key)], dtype=torch.int64)

    def _check_settings(self, value: object, name: str) -> Tensor:
        own = self._own_jackknife_settings()
        if not isinstance(value, Tensor) or value.dtype != torch.int64 or not torch.equal(value.cpu(), own):
            raise ValueError(
                f"`{name}` must be the jackknife settings of this metric, [jackknife_groups, key index] ="
                f" {own.tolist()}, got {value.tolist() if isinstance(value, Tensor) else value!r}."
            )
        return value.to(device=self.reference_moments.device, copy=True)

    def _check_group_moments(self, value: object, name: str) -> Tensor:
        joint_dim = self.image_dim + self.text_dim
        shape = (self.jackknife_groups, moments.packed_size(joint_dim))
        if not isinstance(value, Tensor) or value.ndim != 2 or tuple(value.shape) != shape:
            got = tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__
            raise ValueError(f"`{name}` must be {shape[0]} packed moments states, shape {shape}, got {got}.")
        rows = [check_packed_moments(row, f"{name}[{index}]", joint_dim) for index, row in enumerate(value)]
        return torch.stack(rows).to(device=self.reference_moments.device, dtype=torch.float64)

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
        images, texts = self._pair_features(images, texts)
        if images.shape[0] == 0:
            return
        self._texts_shared = False
        group = _GROUPS[0] if real else _GROUPS[1]
        self._stage(group, images, texts)
        if real:
            self._batch_scoring.add_reference_rows(images.shape[0])

    def update_pairs(self, real_images: Any, captions: Any, generated_images: Any) -> None:
        """Add reference pairs ``(real_images, captions)`` and candidate pairs ``(generated_images, captions)``.

        The one-call form of the text-to-image protocol, and of the official code's ``update(x, y, x0)``: it is
        ``update(real_images, captions, real=True)`` then ``update(generated_images, captions, real=False)``,
        with the captions encoded once in model mode. While every batch since the last :meth:`reset` came through
        this method, the candidates' text block of the statistics is the reference's, row for row, and it is
        copied instead of computed again (about 10% less work end to end at ``Dx = Dy``); the result is bitwise
        the same as with the two ``update`` calls.

        Args:
            real_images: Image features ``(B, image_dim)`` of the real images, or raw images in model mode.
            captions: Text features ``(B, text_dim)`` of their captions, or a list of ``B`` captions in model mode.
            generated_images: Image features ``(B, image_dim)`` of the images generated from those captions, or raw
                images in model mode.

        Raises:
            TypeError, ValueError: As :meth:`update`; nothing is added when either pair fails its checks.

        Example:
            >>> import torch
            >>> x, y = torch.randn(40, 2), torch.randn(40, 2)
            >>> paired, separate = MutualInformationDivergence(2), MutualInformationDivergence(2)
            >>> paired.update_pairs(x, y, 0.9 * x)
            >>> separate.update(x, y, real=True)
            >>> separate.update(0.9 * x, y, real=False)
            >>> torch.equal(paired.compute(), separate.compute())
            True
        """
        # torchmetrics wraps `update` only: its wrapper (the cached value dropped, the update counted, gradients
        # off as in update) serves this method too.
        self._wrap_update(self._update_pairs)(real_images, captions, generated_images)

    def _update_pairs(self, real_images: Any, captions: Any, generated_images: Any) -> None:
        self._check_device()
        if self.feature_extractor is not None and not are_features(real_images, captions):
            real_images, captions = self.extract_features(real_images, captions)
        if self.feature_extractor is not None and not are_features(generated_images, captions):
            count = count_images(generated_images)
            extractor = self.feature_extractor
            generated_images = extractor.encode_images(generated_images) if count else torch.empty(0, self.image_dim)
        if self.validate_args:
            named = {"real_images": real_images, "captions": captions, "generated_images": generated_images}
            dims = {"real_images": self.image_dim, "captions": self.text_dim, "generated_images": self.image_dim}
            named = {name: check_features(value, name, dims[name], check_finite=False) for name, value in named.items()}
            check_same_batch(named["real_images"], named["captions"], "real_images", "captions")
            check_same_batch(named["generated_images"], named["captions"], "generated_images", "captions")
            check_within_bound(named)  # one host sync for the three
            real_images, captions, generated_images = named.values()
        rows = real_images.shape[0]
        if rows == 0:
            return
        if self._texts_shared and rows >= self.buffer_rows:
            self._flush_staged()
            device = self.reference_moments.device
            self._accumulate_pairs(
                moments.joint_rows(real_images, captions, device),
                moments.joint_rows(generated_images, captions, device),
            )
        else:
            self._stage(_GROUPS[0], real_images, captions)
            self._stage(_GROUPS[1], generated_images, captions)
        self._batch_scoring.add_reference_rows(rows)

    # ------------------------------------------------------------------------------ staged rows
    def _updatable(self, name: str) -> Tensor:
        """The state or staging area ``name``, as a tensor that can be updated in place in the current mode.

        A reset() under torch.inference_mode() (as in Lightning's validation) makes inference tensors, which cannot
        be updated in place outside that mode; they are replaced by an ordinary copy.
        """
        tensor = getattr(self, name)
        if tensor.is_inference() and not torch.is_inference_mode_enabled():
            tensor = tensor.clone()
            setattr(self, name, tensor)
        return tensor

    def _state_for_update(self, group: str) -> Tensor:
        return self._updatable(f"{group}_moments")

    def _staging_area(self, group: str) -> Tensor:
        area = self._staged[group]
        device = self.reference_moments.device
        if area is None or area.device != device:
            area = torch.empty(self.buffer_rows, self.image_dim + self.text_dim, dtype=torch.float64, device=device)
            self._staged[group] = area
        elif area.is_inference() and not torch.is_inference_mode_enabled():
            area = area.clone()  # as in _updatable (the areas live in a dict, not in attributes)
            self._staged[group] = area
        return area

    def _stage(self, group: str, images: Tensor, texts: Tensor) -> None:
        """Add checked rows of ``group`` to its staging area, or straight to its statistics when they fill it."""
        rows = images.shape[0]
        if rows >= self.buffer_rows:
            self._flush_group(group)
            self._accumulate(group, moments.joint_rows(images, texts, self.reference_moments.device))
            return
        if self._staged_rows[group] + rows > self.buffer_rows:
            self._flush_group(group)
        area = self._staging_area(group)
        start, stop = self._staged_rows[group], self._staged_rows[group] + rows
        area[start:stop, : self.image_dim].copy_(images)  # the cast to float64 happens in the copy
        area[start:stop, self.image_dim :].copy_(texts)
        self._staged_rows[group] = stop
        if group == _GROUPS[0]:
            self._reference_revision += 1
        if stop == self.buffer_rows and not (self._texts_shared and group == _GROUPS[0]):
            self._flush_group(group)  # (update_pairs stages the candidates next and flushes both together)

    def _flush_group(self, group: str) -> None:
        """Flush one group's staged rows (both groups while the texts are shared).

        Each group is flushed at its own row boundaries, so two ``update`` calls per step stage and flush exactly
        as ``update_pairs`` does, and give bitwise the same statistics.
        """
        if self._texts_shared:
            self._flush_staged()
        else:
            self._flush_rows_of(group)

    def _flush_rows_of(self, group: str) -> None:
        """Accumulate ``group``'s staged rows on their own (not in the shared-texts mode) and empty its area."""
        count = self._staged_rows[group]
        if count > 0:
            self._accumulate(group, self._staged[group][:count])  # type: ignore[index]
            self._clear_staged((group,))

    def _accumulate(self, group: str, rows: Tensor) -> None:
        self._batches_seen[group] += 1
        moments.accumulate_batch_(self._state_for_update(group), rows, self._batches_seen[group], self.image_dim)
        self._accumulate_groups(group, rows)
        if group == _GROUPS[0]:
            self._reference_revision += 1

    def _accumulate_groups(self, group: str, rows: Tensor) -> None:
        """Add rows to the jackknife sub-states of ``group`` (one host sync on CUDA), when there are any."""
        if not self.uses_jackknife:
            return
        grouped = self._updatable(f"{group}_group_moments")
        labels = jackknife.row_groups(rows, self.image_dim, self.jackknife_groups, self.jackknife_key)
        jackknife.accumulate_groups_(grouped, rows, labels, self._group_batches_seen[group])

    def _accumulate_pairs(self, reference_rows: Tensor, candidate_rows: Tensor) -> None:
        """Add rows to both groups while the candidates' texts are the reference's (see :meth:`update_pairs`)."""
        reference, candidate = (self._state_for_update(group) for group in _GROUPS)
        for group in _GROUPS:
            self._batches_seen[group] += 1
        number = self._batches_seen[_GROUPS[0]]
        moments.accumulate_pairs_(reference, candidate, reference_rows, candidate_rows, number, self.image_dim)
        self._accumulate_groups(_GROUPS[0], reference_rows)
        self._accumulate_groups(_GROUPS[1], candidate_rows)
        self._reference_revision += 1

    def _flush_staged(self) -> None:
        """Add the staged rows of both groups to their statistics (both at once while the texts are shared)."""
        counts = [self._staged_rows[group] for group in _GROUPS]
        if self._texts_shared and counts[0] == counts[1] and counts[0] > 0:
            self._accumulate_pairs(*(self._staged[group][: counts[0]] for group in _GROUPS))  # type: ignore[index]
            self._clear_staged()
        else:
            for group in _GROUPS:
                self._flush_rows_of(group)

    def _clear_staged(self, groups: Sequence[str] = _GROUPS) -> None:
        for group in groups:
            self._staged_rows[group] = 0

    # ----------------------------------------------------------------------------------- outputs
    def _reference_statistics(self) -> Tensor:
        """The reference's packed moments: the state, the loaded files' and the staged rows (nothing is changed)."""
        packed = self._loaded.merged_with(self.reference_moments)
        staged = self._staged_rows[_GROUPS[0]]
        if staged == 0:
            return packed
        rows = moments.from_features(self._staged[_GROUPS[0]][:staged])  # type: ignore[index]
        return moments.merge(torch.stack([packed, rows])) if int(packed[0]) > 0 else rows

    def _fitted_reference(self) -> GaussianReference:
        """Return the reference Gaussian of all reference pairs so far, refitted only when they changed.

        The staged rows are included without being flushed, so :meth:`pmi` and the batch scores of ``forward``
        leave the statistics bit for bit as they were.
        """
        key = (self.reference_moments, self._loaded.moments, self._reference_revision)
        return self._reference_fit.reference(key, self._reference_statistics, self.image_dim, self.eps)

    def compute(self) -> Tensor:
        """Return MID as a 0-dim float64 tensor on the device of the state.

        Raises:
            ValueError: If there is no reference, too few reference pairs for a full-rank covariance with
                ``eps = 0`` (more than ``image_dim + text_dim`` are needed), fewer than 2 candidates, a covariance
                that is not positive definite, or a result that is not finite.
        """
        self._check_device()
        reference = self._fitted_reference()
        if self.uses_jackknife:
            estimates = jackknife.jackknife_estimates(
                self.reference_group_moments, self.candidate_group_moments, self.image_dim
            )
            result = estimates.result(level=None)
            self._last = (result, reference, estimates)  # compute_with_ci takes its interval from them
            return result.mid
        # Kept with the fit from its second use on: later candidate sets then need no factorisation or solve.
        precisions = self._reference_fit.precisions_when_reused()
        result = divergence_from_moments(reference, self.candidate_moments, self.bias_correction, precisions)
        # The states this came from, for compute_with_ci: a copy while synced (unsync restores the local ones after
        # compute); otherwise the state itself. Everything that changes it (update, update_pairs, forward, reset,
        # merge_state, load_state_dict) clears the cached value first, so compute_with_ci recomputes before it reads.
        candidates = self.candidate_moments.clone() if self._is_synced else self.candidate_moments
        self._last = (result, reference, candidates)
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
        if isinstance(candidates, jackknife.JackknifeEstimates):
            check_level(level)  # (the estimates also take None, for no interval)
            return candidates.result(level)
        return uncertainty.with_confidence_interval(result, reference, candidates, level)

    @property
    def num_pairs(self) -> dict[str, int]:
        """The pairs seen so far: ``{"reference": N, "candidate": M}`` (this process's, staged rows included).

        Reference pairs loaded from files count as reference pairs. Reading it changes nothing (one host
        synchronisation on CUDA).

        Example:
            >>> metric = MutualInformationDivergence(feature=2)
            >>> metric.update(torch.randn(5, 2), torch.randn(5, 2), real=True)
            >>> metric.num_pairs
            {'reference': 5, 'candidate': 0}
        """
        counts = {group: int(getattr(self, f"{group}_moments")[0]) + self._staged_rows[group] for group in _GROUPS}
        counts[_GROUPS[0]] += self._loaded.count
        return counts

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
        the mean PMI of a candidate batch, a progress indicator; otherwise (reference batches, or no usable
        reference yet) it returns ``None``. Log the metric object itself for the epoch value, which is exact.

        The reference the batches are scored with is refitted on a schedule, not on every call: when first
        needed, then each time the reference pairs seen since its fit are as many as it was fitted on (so it has
        at least half of them, and an epoch of ``S`` steps refits about ``log2(S)`` times). A failed fit (too few
        pairs yet) is retried on the same schedule. :meth:`pmi` always uses the current reference.
        """
        if self._is_synced:
            raise TorchMetricsUserError(
                "The Metric shouldn't be synced when performing ``forward``. HINT: Did you forget to call ``unsync`` ?."
            )
        if self.feature_extractor is not None and not are_features(images, texts):
            images, texts = self.extract_features(images, texts)  # encode once, for update and the batch score
        self.update(images, texts, real=real)
        batch_value = None if real or images.shape[0] == 0 else self._batch_score(images, texts)
        self._forward_cache = batch_value
        return batch_value

    def _batch_score(self, images: Tensor, texts: Tensor) -> Optional[Tensor]:
        """The mean PMI of a checked candidate batch under the scheduled reference, or ``None`` without one."""
        schedule = self._batch_scoring
        if schedule.due():
            try:
                reference: Optional[GaussianReference] = self._fitted_reference()
            except ValueError:
                reference = None
            rows = reference.count if reference is not None else self.num_pairs[_GROUPS[0]]
            schedule.record(reference, rows)
        if schedule.reference is None or schedule.matrices is None:
            return None
        value = pointwise_mutual_information_by_products(schedule.reference, schedule.matrices, images, texts).mean()
        try:
            return check_finite_result(value, "the batch PMI")
        except ValueError:
            return None

    def reset(self) -> None:
        """Reset the state; keep the reference statistics when ``reset_real_features=False``."""
        if not self.reset_real_features:
            self._flush_staged()  # the kept reference includes its staged rows
        self._clear_staged()
        kept = None if self.reset_real_features else self.reference_moments
        kept_groups = getattr(self, "reference_group_moments", None)
        super().reset()
        self._batches_seen["candidate"] = 0
        self._group_batches_seen["candidate"] = [0] * self.jackknife_groups
        if kept is not None and kept_groups is not None:
            self.reference_group_moments = kept_groups
        if kept is None:
            self._batches_seen["reference"] = 0
            self._group_batches_seen["reference"] = [0] * self.jackknife_groups
            self._loaded.clear()
            self._reference_fit.clear()
            self._batch_scoring.clear()
        else:
            self.reference_moments = kept
        self._texts_shared = self._batches_seen["reference"] == 0
        self._last = None

    def sync(self, *args: Any, **kwargs: Any) -> None:
        """Flush the staged rows, then sync the states across processes as :meth:`torchmetrics.Metric.sync`."""
        if not self._is_synced:
            self._flush_staged()
        super().sync(*args, **kwargs)

    @property
    def metric_state(self) -> dict[str, Any]:
        """The states of the metric (staged rows flushed first), e.g. to pass to another metric's ``merge_state``."""
        self._flush_staged()
        return {name: getattr(self, name) for name in self._defaults}

    def merge_state(self, incoming_state: Union[dict[str, Any], Any]) -> None:
        """Merge another metric's (or a ``metric_state`` dict's) statistics into this one (exact, Chan-style).

        The incoming states are checked first (all present, the same ``state_format``, which records the
        ``(image_dim, text_dim)`` split, valid moments); when one fails, this raises and nothing is merged.
        Statistics loaded from a reference file are not merged (each metric loads its own file).

        Raises:
            ValueError: If ``incoming_state`` is neither a dict nor a metric of this class, lacks a state, or holds
                a state of another layout or an invalid one.
        """
        super().merge_state(incoming_state)  # a metric's metric_state flushes its staged rows first
        self._texts_shared = False
        self._reference_fit.clear()
        self._batch_scoring.clear()
        self._last = None

    def _before_merge(self) -> None:
        self._flush_staged()  # only once the incoming states are known to be valid: a refused merge changes nothing

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
        defaults = {"state_format": self.state_format.clone()}  # a 0.1 checkpoint
        required = ("reference_moments", "candidate_moments")
        if self.uses_jackknife:
            required += ("jackknife_settings", "reference_group_moments", "candidate_group_moments")
        checked = self._load_checked_states(state_dict, prefix, required, missing_keys, defaults)
        if checked is None:
            return
        extra = state_dict.get(prefix + "_extra_state")
        if extra is not None:
            self._check_extra_state(extra)
        # Everything is valid: apply (nn.Module then loads the extra state).
        state_dict.pop(prefix + _LOADED_REFERENCE_KEY, None)
        for name, value in checked.items():
            setattr(self, name, value)
        self._clear_staged()  # rows staged before the load belong to the statistics it replaces
        self._texts_shared = False
        super()._load_from_state_dict(state_dict, prefix, *args)  # set_extra_state restores the staged rows
        if loaded is not None:
            self._loaded.replace(loaded)
        self._reference_fit.clear()
        self._batch_scoring.clear()
        self._computed = None  # a value cached before the load is stale
        self._last = None

    def _check_extra_state(self, state: Any) -> None:
        counts_valid = isinstance(state, dict) and all(
            type(state[group]) is int and state[group] >= 0 for group in _GROUPS if group in state
        )
        if not counts_valid or set(state) - {*_GROUPS, _STAGED_KEY, _SHARED_KEY, _GROUP_BATCHES_KEY}:
            raise ValueError(
                "The extra state of MutualInformationDivergence maps 'reference' and 'candidate' to batch counts"
                f" (whole numbers >= 0), with optional '{_STAGED_KEY}' rows and a '{_SHARED_KEY}' flag, got"
                f" {_describe(state)}."
            )
        if not isinstance(state.get(_SHARED_KEY, False), bool):
            raise ValueError(f"The extra state's '{_SHARED_KEY}' must be a bool, got {state[_SHARED_KEY]!r}.")
        group_batches = state.get(_GROUP_BATCHES_KEY, {})
        groups_valid = isinstance(group_batches, dict) and not set(group_batches) - set(_GROUPS)
        groups_valid = groups_valid and all(
            isinstance(counts, list)
            and len(counts) == self.jackknife_groups
            and all(type(count) is int and count >= 0 for count in counts)
            for counts in group_batches.values()
        )
        if not groups_valid:
            raise ValueError(
                f"The extra state's '{_GROUP_BATCHES_KEY}' maps 'reference'/'candidate' to {self.jackknife_groups}"
                f" batch counts (whole numbers >= 0), got {_describe(group_batches)}."
            )
        staged = state.get(_STAGED_KEY, {})
        if not isinstance(staged, dict) or set(staged) - set(_GROUPS):
            raise ValueError(
                f"The extra state's '{_STAGED_KEY}' maps 'reference'/'candidate' to rows, got {_describe(staged)}."
            )
        for group, rows in staged.items():
            name = f"the extra state's staged {group} rows"
            try:
                rows = check_features(rows, name, self.image_dim + self.text_dim)
            except TypeError as error:  # an invalid checkpoint is a ValueError, like any other invalid state
                raise ValueError(str(error)) from None
            if rows.dtype != torch.float64:
                raise ValueError(f"{name} must be float64, got {rows.dtype}.")

    def get_extra_state(self) -> dict[str, Any]:
        """Return the host state that ``state_dict()`` saves next to the statistics.

        That is the per-group batch counters, which decide when the shift is recentred, the rows staged but not yet
        added to the statistics (at most ``buffer_rows`` per group), and whether the candidates' texts are the
        reference's row for row (:meth:`update_pairs`). Saving the staged rows instead of flushing them keeps
        ``state_dict()`` free of side effects, so a metric restored from a checkpoint mid-epoch continues bit for
        bit like an uninterrupted one.
        """
        staged = {
            group: self._staged[group][:count].clone()  # type: ignore[index]
            for group, count in self._staged_rows.items()
            if count > 0
        }
        state = {**self._batches_seen, _STAGED_KEY: staged, _SHARED_KEY: self._texts_shared}
        if self.uses_jackknife:
            state[_GROUP_BATCHES_KEY] = {group: list(counts) for group, counts in self._group_batches_seen.items()}
        return state

    def set_extra_state(self, state: Any) -> None:
        """Restore the host state saved by :meth:`get_extra_state` (``load_state_dict`` calls this).

        Checkpoints of mid-metric 0.2 and earlier hold the batch counters only. A ``texts_shared`` flag is kept only
        when the two groups' text statistics agree bit for bit.

        Raises:
            ValueError: If ``state`` is not such a dict.
        """
        self._check_extra_state(state)
        self._batches_seen.update({group: state[group] for group in _GROUPS if group in state})
        for group, counts in state.get(_GROUP_BATCHES_KEY, {}).items():
            self._group_batches_seen[group] = list(counts)
        self._clear_staged()
        for group, rows in state.get(_STAGED_KEY, {}).items():
            if rows.shape[0] >= self.buffer_rows:  # saved by a metric with a larger buffer
                self._accumulate(group, rows.to(self.reference_moments.device))
            else:
                self._staging_area(group)[: rows.shape[0]].copy_(rows)
                self._staged_rows[group] = rows.shape[0]
        self._texts_shared = bool(state.get(_SHARED_KEY, False)) and self._text_statistics_agree()

    def _text_statistics_agree(self) -> bool:
        """Whether both groups' text columns (shift, sums, text block, staged rows) are bitwise the same."""
        if self._staged_rows[_GROUPS[0]] != self._staged_rows[_GROUPS[1]]:
            return False
        split, count = self.image_dim, self._staged_rows[_GROUPS[0]]
        fields = [moments.unpack(getattr(self, f"{group}_moments")) for group in _GROUPS]
        pairs = [(field.shift[split:], field.shifted_sum[split:]) for field in fields]
        same = all(torch.equal(a, b) for a, b in zip(*pairs)) and torch.equal(fields[0].count, fields[1].count)
        same = same and torch.equal(*(field.shifted_outer_sum[split:, split:].tril() for field in fields))
        if count > 0:
            same = same and torch.equal(*(self._staged[group][:count, split:] for group in _GROUPS))  # type: ignore
        return same

    def state_dict(  # type: ignore[override]
        self, destination: Optional[dict[str, Any]] = None, prefix: str = "", keep_vars: bool = False
    ) -> dict[str, Any]:
        """Return the metric states, without the feature extractor's weights (they come from the model).

        Statistics loaded from a reference file are included as ``loaded_reference_moments`` when there are any.
        Rows staged but not yet added to the statistics are saved in the extra state (:meth:`get_extra_state`).
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
        staged = getattr(self, "_staged", {})
        for group, area in staged.items():  # so are the staged rows
            if area is not None:
                staged[group] = area.to(device=self.reference_moments.device)
        if hasattr(self, "_batch_scoring"):
            self._batch_scoring.clear()
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
        if self.uses_jackknife:
            raise ValueError(
                f"{os.fspath(path)!r}: `bias_correction='jackknife'` cannot use a reference statistics file, which"
                " holds no jackknife groups; pass the reference pairs to `update(..., real=True)` instead."
            )
        check_reference_file(metadata, path, (self.image_dim, self.text_dim), self.feature_extractor_name, check)
        self._loaded.add(packed)
        self._batch_scoring.clear()
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
