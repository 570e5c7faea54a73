"""The streaming ``MutualInformationDivergence`` metric for torchmetrics."""

from __future__ import annotations

from typing import Any, Optional, Union

import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.utilities.exceptions import TorchMetricsUserError

from mid_metric import moments
from mid_metric.functional import (
    GaussianReference,
    divergence_from_moments,
    pointwise_mutual_information_from_reference,
    reference_from_moments,
)
from mid_metric.result import MIDResult
from mid_metric.validation import check_eps, check_pairs

FeatureSpec = Union[int, tuple[int, int]]


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
        feature: Feature size: an int for both modalities, or a pair ``(image_dim, text_dim)``.
        eps: Added to the diagonal of every covariance; ``0`` reproduces the paper, which hints at ``5e-4`` for
            fewer than 30,000 reference pairs.
        reset_real_features: If ``False``, :meth:`reset` keeps the reference statistics, so one reference can
            score many candidate sets.
        validate_args: Check inputs for shape, dtype and NaN/Inf (one host synchronisation per batch on CUDA).
        kwargs: Passed to :class:`torchmetrics.Metric` (``dist_sync_on_step``, ``process_group``, ...).

    Raises:
        TypeError: If ``feature`` is not an int or a pair of ints.
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

    reference_moments: Tensor
    candidate_moments: Tensor

    def __init__(
        self,
        feature: FeatureSpec = 768,
        eps: float = 0.0,
        reset_real_features: bool = True,
        validate_args: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.image_dim, self.text_dim = _parse_feature_dims(feature)
        self.eps = check_eps(eps)
        if not isinstance(reset_real_features, bool):
            raise TypeError(f"`reset_real_features` must be a bool, got {reset_real_features!r}.")
        self.reset_real_features = reset_real_features
        self.validate_args = bool(validate_args)
        joint_dim = self.image_dim + self.text_dim
        # Packed (count, shift, shifted sum, shifted outer-product sum) per group; see mid_metric.moments.
        self.add_state(
            "reference_moments", moments.empty_moments(joint_dim), dist_reduce_fx=moments.merge, persistent=True
        )
        self.add_state(
            "candidate_moments", moments.empty_moments(joint_dim), dist_reduce_fx=moments.merge, persistent=True
        )
        # Batches seen per group since its last reset (host side), to recentre the shift after batch 1, 2, 4, ...
        self._batches_seen = {"reference": 0, "candidate": 0}
        self._reference_cache: Optional[tuple[Tensor, int, GaussianReference]] = None
        self._last_result: Optional[MIDResult] = None

    # ------------------------------------------------------------------ inputs
    def _check_device(self) -> None:
        if self.reference_moments.device.type == "mps":
            raise RuntimeError(
                "MutualInformationDivergence keeps float64 statistics, which Apple MPS does not support. Keep the"
                " metric on the CPU (`metric.to('cpu')`); features on MPS are moved to it automatically."
            )

    def _joint_features(self, images: Tensor, texts: Tensor) -> Tensor:
        if self.validate_args:
            images, texts = check_pairs(images, texts, self.image_dim, self.text_dim)
        device = self.reference_moments.device
        return torch.cat(
            [images.to(device=device, dtype=torch.float64), texts.to(device=device, dtype=torch.float64)], dim=1
        )

    def update(self, images: Tensor, texts: Tensor, real: bool) -> None:
        """Add a batch of pairs to the reference (``real=True``) or to the candidates (``real=False``).

        Args:
            images: Image features ``(B, image_dim)``, float16/bfloat16/float32/float64, L2-normalised as CLIP's.
            texts: Text features ``(B, text_dim)`` paired row by row with ``images``.
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
        state = self.reference_moments if real else self.candidate_moments
        moments.accumulate_(state, joint)
        group = "reference" if real else "candidate"
        self._batches_seen[group] += 1
        seen = self._batches_seen[group]
        if seen & (seen - 1) == 0:  # a power of two: keep the shift close to the mean (see moments.recentre_)
            moments.recentre_(state)

    # ----------------------------------------------------------------- outputs
    def _fitted_reference(self) -> GaussianReference:
        """Return the reference Gaussian of the current state, refactorised only when that state changed."""
        state = self.reference_moments
        cached = self._reference_cache
        if cached is not None and cached[0] is state and cached[1] == state._version:
            return cached[2]
        reference = reference_from_moments(state, self.image_dim, self.eps)
        self._reference_cache = (state, state._version, reference)
        return reference

    def compute(self) -> Tensor:
        """Return MID as a 0-dim float64 tensor on the device of the state.

        Raises:
            ValueError: If there is no reference, too few reference pairs for a full-rank covariance with
                ``eps = 0`` (more than ``image_dim + text_dim`` are needed), fewer than 2 candidates, or a
                covariance that is not positive definite.
        """
        self._check_device()
        result = divergence_from_moments(self._fitted_reference(), self.candidate_moments)
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

    @property
    def last_result(self) -> Optional[MIDResult]:
        """The :class:`~mid_metric.result.MIDResult` of the latest :meth:`compute`, or ``None`` before one."""
        return self._last_result

    def pmi(self, images: Tensor, texts: Tensor) -> Tensor:
        """Per-pair pointwise mutual information under the reference fitted so far (this process's state).

        The mean over the candidates equals MID up to the ``M / (M - 1)`` scaling of the distance part; these are
        the official code's sample-wise scores (``compute(reduction=False)``), which the paper correlates with
        human judgments.

        Args:
            images: Image features ``(B, image_dim)``.
            texts: Text features ``(B, text_dim)``.

        Returns:
            Float64 tensor of shape ``(B,)`` on the state's device.

        Raises:
            ValueError: If the inputs are invalid or the reference is not ready (see :meth:`compute`).
        """
        self._check_device()
        joint = self._joint_features(images, texts)
        reference = self._fitted_reference()
        return pointwise_mutual_information_from_reference(
            reference, joint[:, : self.image_dim], joint[:, self.image_dim :]
        )

    # ------------------------------------------------------- torchmetrics hooks
    def forward(self, images: Tensor, texts: Tensor, real: bool) -> Optional[Tensor]:
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
        else:
            self.reference_moments = kept
        self._last_result = None

    def set_dtype(self, dst_type: Union[str, torch.dtype]) -> MutualInformationDivergence:
        """Keep the float64 statistics: MID's log-determinants need them, so the states ignore dtype requests."""
        return self
