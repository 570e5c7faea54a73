"""What the companion metrics (CLIP-S, RefCLIP-S, CLIP-R-Precision, InfoNCE) share.

:class:`CompanionMetric` adds to :class:`~mid_metric.metrics._base.PairedFeatureMetric`:

- a ``state_format`` record ``[version, image_dim, text_dim]`` like MID's, so that ``merge_state``,
  ``load_state_dict`` and the DDP sync refuse the states of another feature split;
- ``update(images, texts, real=False)``, whose ``real=True`` batches are skipped, so that one
  ``MetricCollection.update`` can feed MID (which takes reference pairs with ``real=True``) and these metrics;
- :meth:`CompanionMetric.per_sample`, the value of each candidate pair in the order the pairs were passed
  (under DDP: rank 0's pairs, then rank 1's, and so on);
- a ``forward`` that adds the batch and returns the batch's own value (over every rank's batch with
  ``dist_sync_on_step=True``), and never loses the accumulated state when a batch is rejected (torchmetrics'
  default ``forward`` resets the state before it updates);
- all-or-nothing ``load_state_dict``, with a check of the states against each other.

:class:`StoredPairsMetric` is the base of the two metrics that score every candidate image against every candidate
caption (CLIP-R-Precision, InfoNCE): it keeps the candidate features as float32 rows ``[image; text]`` in one list
state, under a ``max_samples`` cap that raises instead of truncating.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Optional, Union

import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.utilities.exceptions import TorchMetricsUserError

from mid_metric._checks import (
    COMPANION_STATE_FORMAT_VERSION,
    check_bool,
    check_capacity,
    check_feature_rows_state,
    check_joint_embedding,
    check_nonzero_rows,
    check_positive_int,
    check_state_format,
    same_state_format,
    state_format,
)
from mid_metric.functional._similarity import stored_rows, unit_rows
from mid_metric.metrics._base import FeatureSpec, PairedFeatureMetric, are_features

#: Default cap on the stored candidate pairs of CLIP-R-Precision and InfoNCE (the MID paper's code's ``limit``).
DEFAULT_MAX_SAMPLES = 30_000


def _check_nonzero_pairs(images: Tensor, texts: Tensor) -> None:
    """:func:`~mid_metric._checks.check_nonzero_rows` of both, from one reduction of each and one host sync.

    A zero row is one whose largest magnitude is 0; only then are the rows searched for the error message.
    """
    if images.numel() > 0 and texts.numel() > 0:
        largest = (torch.linalg.vector_norm(rows, ord=math.inf, dim=1) for rows in (images, texts))
        if not bool(torch.minimum(*largest).eq(0).any()):
            return
    check_nonzero_rows(images, "images")
    check_nonzero_rows(texts, "texts")


class CompanionMetric(PairedFeatureMetric):
    """Base of the companion metrics: a metric of candidate pairs only, with per-pair values.

    Args:
        feature: As for :class:`~mid_metric.MutualInformationDivergence`: feature sizes or a feature extractor.
        validate_args: Check inputs for shape, dtype, NaN/Inf and zero rows.
        kwargs: Passed to :class:`torchmetrics.Metric`.
    """

    higher_is_better: bool = True
    is_differentiable: bool = False
    full_state_update: bool = False

    state_format: Tensor

    def __init__(self, feature: FeatureSpec, validate_args: bool = True, **kwargs: Any) -> None:
        super().__init__(feature, validate_args, **kwargs)
        own_format = state_format(self.image_dim, self.text_dim, COMPANION_STATE_FORMAT_VERSION)
        self.add_checked_state("state_format", own_format, same_state_format, self._check_format)
        # The per-pair values of the latest compute(), in the order of the (synced) pairs.
        self._last_per_sample: Optional[Tensor] = None

    def _check_format(self, value: object, name: str) -> Tensor:
        return check_state_format(value, name, self.state_format)

    def _check_consistency(self, checked: dict[str, Any], where: str) -> None:
        """Check incoming states against each other (all of them are present); raise ``ValueError`` if they differ."""

    def _check_incoming(self, incoming: dict[str, Any], where: str) -> dict[str, Any]:
        checked = super()._check_incoming(incoming, where)
        self._check_consistency(checked, where)
        return checked

    # ------------------------------------------------------------------------------------------- inputs
    def _is_skipped(self, real: object) -> bool:
        """Whether a batch is reference pairs (``real=True``), which these metrics skip."""
        return check_bool(real, "real")

    def _stored_features(self, images: Any, texts: Any) -> tuple[Tensor, Tensor]:
        """Checked feature pairs on the state's device (raw inputs encoded first), with no zero rows."""
        self._check_device()
        images, texts = self._pair_features(images, texts)
        if self.validate_args:
            _check_nonzero_pairs(images, texts)
        return images.to(self.device), texts.to(self.device)

    def _encode_arguments(self, arguments: dict[str, Any]) -> dict[str, Any]:
        """Replace raw images and captions by their features (``forward`` encodes a batch once)."""
        images, texts = arguments["images"], arguments["texts"]
        if self.feature_extractor is not None and not are_features(images, texts):
            arguments["images"], arguments["texts"] = self.extract_features(images, texts)
        return arguments

    def _batch_value(self, arguments: dict[str, Any]) -> Optional[Tensor]:
        """The metric on one (encoded, candidate) batch's pairs alone, or ``None`` when it is undefined there.

        It is :meth:`compute` on a state that holds this batch only (synced across ranks with
        ``dist_sync_on_step=True``); the accumulated state is put back afterwards, whatever happens.
        """
        accumulated = {}
        for name in self._defaults:
            value = getattr(self, name)
            accumulated[name] = list(value) if isinstance(value, list) else value
        update_count, last_per_sample = self._update_count, self._last_per_sample
        try:
            self.reset()  # clears the list states in place: `accumulated` holds copies of the lists
            self.update(**arguments)
            if self.dist_sync_on_step:
                self.sync(
                    dist_sync_fn=self.dist_sync_fn,
                    process_group=self.process_group,
                    distributed_available=self.distributed_available_fn,
                )
            try:
                return type(self).compute(self)  # the computation alone: no sync, no cached value
            except ValueError:  # e.g. fewer pairs than the distinct negatives need: the same on every rank
                return None
        finally:
            self._is_synced, self._cache = False, None
            for name, value in accumulated.items():
                setattr(self, name, value)
            self._update_count, self._last_per_sample, self._computed = update_count, last_per_sample, None

    # ------------------------------------------------------------------------------------------ outputs
    def per_sample(self) -> Tensor:
        """Return each candidate pair's value, float64 ``(M,)``, in the order the pairs were passed.

        These are the values whose mean :meth:`compute` returns (the official code's ``compute(reduction=False)``).
        This calls :meth:`compute`, so under DDP it is a collective: call it on every rank. Every rank then gets
        the values of all ranks' pairs, rank-major: rank 0's pairs in the order its ``update`` calls passed them,
        then rank 1's, and so on. After ``merge_state``, this metric's pairs come before the merged ones.

        Raises:
            ValueError: As :meth:`compute`.
        """
        self.compute()
        if self._last_per_sample is None:  # pragma: no cover - compute() sets it whenever it succeeds
            raise RuntimeError("compute() produced no per-pair values")
        return self._last_per_sample.clone()

    # ------------------------------------------------------------------------------ torchmetrics hooks
    def forward(self, *args: Any, **kwargs: Any) -> Optional[Tensor]:
        """Add a batch, like ``update``, and return the metric on that batch's pairs alone.

        With ``dist_sync_on_step=True`` under DDP, the value is over the pairs of every rank's batch, and the same
        on every rank (a collective: every rank calls ``forward`` at each step), as torchmetrics metrics do.

        Returns ``None`` for a skipped batch (``real=True``), an empty one, or one that cannot be scored on its own
        (e.g. fewer pairs than CLIP-R-Precision's distinct negatives need). A rejected batch raises and leaves the
        state as it was. Raw inputs are encoded once.
        """
        if self._is_synced:
            raise TorchMetricsUserError(
                "The Metric shouldn't be synced when performing ``forward``. HINT: Did you forget to call ``unsync`` ?."
            )
        arguments = dict(self._update_signature.bind(*args, **kwargs).arguments)
        skipped = self._is_skipped(arguments.get("real", False))
        if not skipped:
            arguments = self._encode_arguments(arguments)
        self.update(**arguments)
        value = None if skipped else self._batch_value(arguments)
        self._forward_cache = value
        return value

    def reset(self) -> None:
        """Forget every pair."""
        super().reset()
        self._last_per_sample = None

    def merge_state(self, incoming_state: Union[dict[str, Any], Metric]) -> None:
        """Merge another metric's (or a ``metric_state`` dict's) states into this one, or none of them.

        Every incoming state is checked first (present, of this metric's ``state_format`` and settings, valid and
        consistent with the others); when one fails, this raises and nothing is merged. The incoming pairs come
        after this metric's own (see :meth:`per_sample`).

        Raises:
            ValueError: If ``incoming_state`` is neither a dict nor a metric of this class, lacks a state, or holds
                a state of another layout or settings, or an invalid one.
        """
        super().merge_state(incoming_state)
        self._last_per_sample = None

    def _load_from_state_dict(self, state_dict: dict, prefix: str, *args: Any) -> None:
        """Check every state of this metric in ``state_dict`` first, then load them all (or none).

        When a state is missing, or (``strict=True``) a key is not this metric's, nothing of this metric is loaded
        and the keys are reported (``load_state_dict`` raises with ``strict=True`` and returns them otherwise).
        """
        missing_keys, unexpected_keys = args[2], args[3]
        checked = self._load_checked_states(
            state_dict, prefix, tuple(self._defaults), missing_keys, {}, unexpected_keys
        )
        if checked is None:
            return
        for name, value in checked.items():
            setattr(self, name, value)
        super()._load_from_state_dict(state_dict, prefix, *args)
        self._computed = None  # a value cached before the load is stale
        self._last_per_sample = None

    def plot(self, val: Optional[Union[Tensor, Sequence[Tensor]]] = None, ax: Optional[Any] = None) -> tuple[Any, Any]:
        """Plot one value, or a sequence of values (e.g. one per epoch), with matplotlib (torchmetrics' plot API).

        Args:
            val: A value returned by ``compute``, or a sequence of them; ``None`` plots ``compute()``.
            ax: A matplotlib axes to draw on; a new figure is made when ``None``.

        Returns:
            ``(fig, ax)``; ``fig`` is ``None`` when ``ax`` was given.

        Raises:
            ModuleNotFoundError: If matplotlib is not installed.
        """
        return self._plot(val, ax)


class StoredPairsMetric(CompanionMetric):
    """Base of the metrics that score every candidate image against every candidate caption.

    The candidate pairs are kept as float32 rows ``[image; text]`` (``4 (image_dim + text_dim)`` bytes a pair:
    184 MB for 30,000 pairs at D = 768) in the list state ``candidate_features``, gathered once at ``compute()``
    under DDP (:func:`~mid_metric.functional._similarity.stored_rows`): float16, bfloat16 and float32 rows are kept
    exactly, and each float64 row is scaled by a power of two before it is rounded to float32, so that rows of any
    scale keep their direction. The functional forms score the same rows. At most ``max_samples`` pairs are
    kept: a batch that would go beyond raises, and nothing of it is added.

    Args:
        feature: Feature sizes or a feature extractor; the image and text features must have one size.
        max_samples: The cap on the stored pairs.
        validate_args: Check inputs for shape, dtype, NaN/Inf and zero rows.
        kwargs: Passed to :class:`torchmetrics.Metric`.
    """

    plot_lower_bound: Optional[float] = 0.0
    plot_upper_bound: Optional[float] = 1.0

    candidate_features: list[Tensor]

    def __init__(
        self, feature: FeatureSpec, max_samples: int = DEFAULT_MAX_SAMPLES, validate_args: bool = True, **kwargs: Any
    ) -> None:
        super().__init__(feature, validate_args, **kwargs)
        check_joint_embedding(self.image_dim, self.text_dim, type(self).__name__)
        self.max_samples = check_positive_int(max_samples, "max_samples")
        width = self.image_dim + self.text_dim
        self.add_checked_list_state("candidate_features", (width,), torch.float32, self._check_rows)

    def _sync_settings(self) -> dict[str, object]:
        return {**super()._sync_settings(), "max_samples": self.max_samples}

    def _check_rows(self, value: object, name: str) -> list[Tensor]:
        rows = check_feature_rows_state(value, name, self.image_dim + self.text_dim)
        count = sum(int(part.shape[0]) for part in rows)
        if count > self.max_samples:
            raise ValueError(
                f"`{name}` holds {count} candidate pairs, above this metric's `max_samples` = {self.max_samples}."
            )
        return [self._as_stored(part, name) for part in rows]

    def _as_stored(self, rows: Tensor, name: str) -> Tensor:
        """Incoming ``[image; text]`` rows as this metric stores them; a row whose image or text is zero is refused.

        Float32 rows (another metric's state) are copied as they are; rows of another dtype are stored as
        :func:`~mid_metric.functional._similarity.stored_rows`, so that none underflows in float32.
        """
        images, texts = rows[:, : self.image_dim], rows[:, self.image_dim :]
        check_nonzero_rows(images, f"{name} (image features)")
        check_nonzero_rows(texts, f"{name} (text features)")
        if rows.dtype == torch.float32:
            return rows.to(device=self.device, copy=True)
        return torch.cat([stored_rows(images), stored_rows(texts)], dim=1).to(self.device)

    def stored_count(self) -> int:
        """The number of candidate pairs this process holds.

        Example:
            >>> from mid_metric import InfoNCE
            >>> metric = InfoNCE(feature=8)
            >>> metric.update(torch.randn(5, 8), torch.randn(5, 8))
            >>> metric.stored_count()
            5
        """
        return sum(int(part.shape[0]) for part in self._list_state("candidate_features"))

    def update(self, images: Any, texts: Any, real: bool = False) -> None:
        """Store a batch of candidate pairs; a batch with ``real=True`` (reference pairs) is skipped.

        Args:
            images: Generated image features ``(B, D)`` (L2-normalised or not: the cosines normalise them), or raw
                images when the metric holds a model (see :class:`~mid_metric.MutualInformationDivergence`).
            texts: Their prompts' features ``(B, D)``, paired row by row, or a list of ``B`` prompts.
            real: ``True`` skips the batch (reference pairs, which only MID uses); nothing is encoded or checked.

        Raises:
            TypeError: If ``real`` is not a bool or the features are not floating tensors.
            ValueError: If a shape is wrong, the batch sizes differ, a value is NaN or Inf, a row is zero, or the
                batch would take the metric beyond ``max_samples`` pairs (nothing is added then).
        """
        if self._is_skipped(real):
            return
        images, texts = self._stored_features(images, texts)
        count = images.shape[0]
        if count == 0:
            return
        check_capacity(self.stored_count(), count, self.max_samples, type(self).__name__)
        # float32 rows (stored_rows): float64 ones scaled by a power of two first, so that none underflows or overflows
        self.candidate_features.append(torch.cat([stored_rows(images), stored_rows(texts)], dim=1))

    def merge_state(self, incoming_state: Union[dict[str, Any], Metric]) -> None:
        """Merge another metric's states into this one, or none of them (see :meth:`CompanionMetric.merge_state`).

        Raises:
            ValueError: Also if the merged metric would hold more than ``max_samples`` pairs.
        """
        state = incoming_state.metric_state if isinstance(incoming_state, Metric) else incoming_state
        rows = state.get("candidate_features") if isinstance(state, dict) else None
        if isinstance(rows, Tensor):
            rows = [rows]
        if isinstance(rows, (list, tuple)) and all(isinstance(part, Tensor) and part.ndim >= 1 for part in rows):
            incoming = sum(int(part.shape[0]) for part in rows)
            check_capacity(self.stored_count(), incoming, self.max_samples, type(self).__name__, "the incoming state")
        super().merge_state(incoming_state)

    def _values(self, images: Tensor, captions: Tensor) -> Tensor:
        """Per-pair values of all stored pairs (float64 ``(M,)``) from the images and the unit float64 captions.

        Raise ``ValueError`` when they are undefined.
        """
        raise NotImplementedError

    def compute(self) -> Tensor:
        """Return the metric over all candidate pairs (of every rank under DDP), a 0-dim float64 tensor.

        Raises:
            ValueError: If there are too few pairs, or the ranks together hold more than ``max_samples``.
        """
        parts = self._list_state("candidate_features")
        count = sum(int(part.shape[0]) for part in parts)
        if count > self.max_samples:  # each rank is capped at update time; under DDP their sum may exceed the cap
            raise ValueError(
                f"{type(self).__name__} gathered {count} candidate pairs from all processes, above `max_samples` ="
                f" {self.max_samples}. Give each process at most max_samples / world_size pairs, or raise the cap."
            )
        values = self._values(*self._images_and_unit_captions(parts))
        self._last_per_sample = values
        return values.mean()

    def _images_and_unit_captions(self, parts: list[Tensor]) -> tuple[Tensor, Tensor]:
        """The stored image features (float32 ``(M, Dx)``) and the captions as unit float64 rows ``(M, Dy)``.

        Each is gathered from the stored parts in one step (no copy of the whole ``[image; text]`` rows is made).
        """
        if not parts:
            return (
                torch.empty(0, self.image_dim, dtype=torch.float32, device=self.device),
                torch.empty(0, self.text_dim, dtype=torch.float64, device=self.device),
            )
        images = torch.cat([part[:, : self.image_dim] for part in parts])
        return images, unit_rows(torch.cat([part[:, self.image_dim :] for part in parts]))
