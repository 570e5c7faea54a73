"""The streaming ``MutualInformationDivergence`` metric for torchmetrics: its stores in, its estimators out."""

from __future__ import annotations

from typing import Any, Optional, Union

from torch import Tensor

from mid_metric import jackknife, uncertainty
from mid_metric._checks import (
    check_bias_correction,
    check_bool,
    check_eps,
    check_finite_result,
    check_level,
    check_positive_int,
)
from mid_metric.functional.mid import divergence_from_moments
from mid_metric.gaussian import GaussianReference, pointwise_mutual_information_from_reference
from mid_metric.metrics._base import FeatureSpec, PairedFeatureMetric
from mid_metric.metrics._batch_score import BatchScorer, ForwardMethod
from mid_metric.metrics._loaded_reference import LoadedReference, PathLike, ReferenceFileMethods
from mid_metric.metrics._mid_frechet import FrechetMethods
from mid_metric.metrics._mid_plot import PlotMethod
from mid_metric.metrics._mid_state import StateMethods, store_state
from mid_metric.metrics._reference_fit import ReferenceFit
from mid_metric.metrics._shared_text_batch import shared_text_batch
from mid_metric.result import MIDResult
from mid_metric.store import GROUPS
from mid_metric.sync import sync_state

# Default staging buffer: rows per group (GEMMs over fewer rows are memory-bound on the J x J state), and the rows
# per jackknife group that a flush should carry with bias_correction="jackknife" (as many, for the same reason).
_BUFFER_ROWS, _JACKKNIFE_ROWS_PER_GROUP = 1024, 1024


class MutualInformationDivergence(
    ForwardMethod, ReferenceFileMethods, PlotMethod, FrechetMethods, StateMethods, PairedFeatureMetric
):
    r"""Mutual Information Divergence (Kim et al., NeurIPS 2022) with streaming float64 Gaussian statistics.

    Reference pairs ``(x, y)`` (real images and their captions) define a joint Gaussian; candidate pairs
    ``(x_hat, y_hat)`` are scored by their mean pointwise mutual information under it:

    .. math:: \mathrm{MID} = I(X; Y) + \tfrac12\,(\mathrm{tr}(S_x^{-1}\hat S_x) + \mathrm{tr}(S_y^{-1}\hat S_y)
        - \mathrm{tr}(S_z^{-1}\hat S_z))

    Higher is better: candidates whose images and texts are as aligned as the reference score about ``I``, and
    unaligned ones score lower. The metric keeps only the count, mean and scatter of each group in float64 (one
    store per group, :mod:`mid_metric.store`), so memory and DDP sync traffic are ``O((Dx + Dy)^2)`` whatever the
    number of samples, and it agrees with the official estimator (``update(x, y, x0)`` there is
    ``update(x, y, real=True)`` then ``update(x0, y, real=False)`` here). ``compute()`` returns a 0-dim float64
    tensor on the state's device.

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
            turns the buffer off. It is flushed before ``compute``, the DDP sync, ``metric_state``,
            ``merge_state`` and ``save_reference``; :meth:`pmi`, ``forward``'s batch scores and ``state_dict`` (which
            saves the staged rows) read it without flushing. It never holds more rows than this, and costs
            ``16 * buffer_rows * (Dx + Dy)`` bytes (25 MB at 1024 rows for ViT-L/14). ``None`` means 1024, or
            ``1024 * jackknife_groups`` with ``bias_correction="jackknife"``, whose flushes are split among the
            groups (each group's state then gets as many rows a flush as the one state of ``True``).
        bias_correction: ``False`` (the default) is the paper's estimator, which published numbers use. ``True``
            computes the Gaussian bias-corrected MID (:mod:`mid_metric.wishart`), which estimates the same
            population value at any ``N`` when the features are Gaussian. ``"jackknife"`` adds a grouped jackknife
            on top of it (:mod:`mid_metric.jackknife`), which removes the remaining ``1/N`` bias of non-Gaussian
            features and gives :meth:`compute_with_ci` a distribution-free standard error; it keeps
            ``jackknife_groups`` states per group instead of one (``K`` times the memory and sync traffic), each
            row accumulated once, and cannot use reference files. Both corrections need ``eps = 0``. ``True``
            assumes candidates independent of the reference rows, or reusing them as they are: candidates derived
            from the reference's images (``x + noise``: edits, reconstructions) make it over-correct; use
            ``"jackknife"`` keyed on the block they keep, or a reference of other rows (docs/bias_correction.md).
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
    # The statistics live in the stores; these names are the torchmetrics states that hold them (see _mid_state).
    reference_moments = store_state("reference", "moments")
    candidate_moments = store_state("candidate", "moments")
    reference_group_moments = store_state("reference", "group_moments")
    candidate_group_moments = store_state("candidate", "group_moments")

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
        if buffer_rows is None:  # the jackknife splits each flush K ways: give every group about 1024 rows
            buffer_rows = _JACKKNIFE_ROWS_PER_GROUP * self.jackknife_groups if self.uses_jackknife else _BUFFER_ROWS
        self.buffer_rows = check_positive_int(buffer_rows, "buffer_rows")
        self.reset_real_features = check_bool(reset_real_features, "reset_real_features")
        self.check_feature_extractor = check_bool(check_feature_extractor, "check_feature_extractor")
        self._register_stores()  # the reference's and the candidates' stores, whose states torchmetrics syncs
        self._reference_fit = ReferenceFit()  # the reference fitted for compute() and pmi()
        self._batch_scores = BatchScorer()  # forward's batch scores and their refit schedule
        # The last result, with the reference and the candidates' moments (or the jackknife's estimates) it came from.
        self._last: Optional[tuple[MIDResult, GaussianReference, Union[Tensor, jackknife.JackknifeEstimates]]] = None
        # Statistics of reference files, apart from the synced state.
        self._loaded = LoadedReference(self.image_dim + self.text_dim)
        if reference is not None:
            self.load_reference(reference)

    @property
    def uses_jackknife(self) -> bool:
        """Whether ``bias_correction="jackknife"``: each group's store then keeps ``jackknife_groups`` states."""
        return self.bias_correction == "jackknife"

    # ------------------------------------------------------------------------------------------------ update
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
        if images.shape[0] > 0:
            self._stores.add(real, images, texts)
            if real:
                self._batch_scores.add_reference_rows(images.shape[0])

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
        real_images, captions, generated_images = shared_text_batch(self, real_images, captions, generated_images)
        if real_images.shape[0] > 0:
            self._stores.add_pairs(real_images, captions, generated_images)
            self._batch_scores.add_reference_rows(real_images.shape[0])

    def _flush_staged(self) -> None:
        """Accumulate the staged rows of both groups (the benchmarks call this to time a flush on its own)."""
        self._stores.flush()

    # ----------------------------------------------------------------------------------------------- outputs
    def _reference_statistics(self) -> Tensor:
        """The reference's packed moments: the stored ones, the loaded files' and the staged rows (nothing changes)."""
        store = self._stores.reference
        return store.including_staged(self._loaded.merged_with(store.moments()))

    def _fitted_reference(self) -> GaussianReference:
        """The reference Gaussian of every reference pair so far, refitted only when they changed."""
        key = (self._stores.reference.revision, self._loaded.moments)
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
            groups = (self._stores.reference.state, self._stores.candidate.state)
            merged = (self._stores.reference.moments(), self._stores.candidate.moments())  # (cached merges)
            full = self._reference_fit.fit_of(merged[0], 0.0)  # (the full sample's fit)
            estimates = jackknife.jackknife_estimates(*groups, self.image_dim, full, merged)
            result = estimates.result(level=None)
            self._last = (result, reference, estimates)  # compute_with_ci takes its interval from them
            return result.mid
        # Kept with the fit from its second use on: later candidate sets then need no factorisation or solve.
        precisions = self._reference_fit.precisions_when_reused()
        candidates = self._stores.candidate.moments()
        result = divergence_from_moments(reference, candidates, self.bias_correction, precisions)
        # For compute_with_ci: a copy while synced (unsync restores the local states after compute); otherwise the
        # state itself, which everything that changes it (update, forward, reset, merge, load) replaces first.
        self._last = (result, reference, candidates.clone() if self._is_synced else candidates)
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

        ``standard_error``, ``ci_low``, ``ci_high`` and ``ci_level`` are filled in (the jackknife's own, or
        :func:`mid_metric.uncertainty.standard_error`). It covers the candidates' sampling noise and, to first
        order, the reference's. With ``bias_correction=True`` it targets the population MID; with the paper's
        estimator it is centred on a value biased by the sample size. It syncs under DDP like :meth:`compute`.

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

        Reference pairs loaded from files count as reference pairs. Reading it changes nothing.

        Example:
            >>> import torch
            >>> metric = MutualInformationDivergence(feature=2)
            >>> metric.update(torch.randn(5, 2), torch.randn(5, 2), real=True)
            >>> metric.num_pairs
            {'reference': 5, 'candidate': 0}
        """
        counts = {group: self._stores[group].count() for group in GROUPS}
        counts["reference"] += self._loaded.count
        return counts

    @property
    def last_result(self) -> Optional[MIDResult]:
        """The :class:`~mid_metric.result.MIDResult` of the latest :meth:`compute`, or ``None`` before one."""
        return None if self._last is None else self._last[0]

    def pmi(self, images: Any, texts: Any) -> Tensor:
        """Per-pair pointwise mutual information under the reference fitted so far (this process's state).

        The mean over the candidates equals MID up to the ``M / (M - 1)`` scaling of the distance part; these are
        the official code's sample-wise scores (``compute(reduction=False)``), which the paper correlates with
        human judgments. Staged reference rows are included without being flushed.

        Args:
            images: Image features ``(B, image_dim)``, or raw images in model mode (see :meth:`update`).
            texts: Text features ``(B, text_dim)``, or a list of captions in model mode.

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

    # ---------------------------------------------------------------------------------- torchmetrics hooks
    def reset(self) -> None:
        """Reset the state; keep the reference statistics when ``reset_real_features=False``."""
        keep = not self.reset_real_features
        self._stores.reset(keep_reference=keep)  # a kept reference is flushed first
        kept = self._stores.reference.state if keep else None
        super().reset()
        if kept is not None:
            self._stores.reference.state = kept
        else:
            self._loaded.clear()
            self._reference_fit.clear()
            self._batch_scores.clear()
        self._last = None

    def _reference_replaced(self) -> None:
        """Drop everything computed from the reference statistics (they were merged, loaded or replaced)."""
        self._reference_fit.clear()
        self._batch_scores.clear()
        self._computed = None
        self._last = None
