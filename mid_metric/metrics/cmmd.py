"""The ``CMMD`` metric for torchmetrics: the kernel MMD between real and generated image embeddings."""

from __future__ import annotations

from typing import Any, Optional, Union

import torch
from torch import Tensor
from torchmetrics import Metric

from mid_metric._checks import (
    check_bool,
    check_feature_rows_state,
    check_features,
    check_float32_range,
    check_nonzero_rows,
    check_positive_int,
)
from mid_metric.features import count_images
from mid_metric.functional.cmmd import DEFAULT_BLOCK_SIZE, check_cmmd_arguments, check_cmmd_counts, cmmd_of_parts
from mid_metric.metrics._base import FeatureSpec
from mid_metric.metrics._companion import DEFAULT_MAX_SAMPLES, CompanionMetric

#: The list state of each group of images.
_GROUPS = {True: "real_features", False: "generated_features"}


class CMMD(CompanionMetric):
    r"""CMMD (Jayasumana et al., CVPR 2024): the squared MMD between real and generated image embeddings, times 1000.

    With ``k(a, b) = exp(-||a - b||^2 / (2 sigma^2))``, real embeddings ``x_1..x_n`` and generated ones
    ``y_1..y_m``:

    .. math:: \mathrm{CMMD} = \mathrm{scale} \cdot \bigl( \overline{k(x, x')} + \overline{k(y, y')}
              - 2\, \overline{k(x, y)} \bigr)

    where each bar is the mean over all pairs, a row with itself included (the paper's biased, minimum-variance
    estimator; ``unbiased=True`` leaves those pairs out). Lower is better; identical sets give 0. The embeddings
    are L2-normalised first (``normalize=True``), as the paper's CLIP ViT-L/14 (336 px) embeddings are. See
    :func:`mid_metric.functional.cmmd.cmmd` for how it is computed, and ``docs/quality_metrics.md`` for what the
    values can be compared with.

    ``update(images, texts, real)`` has the signature of the other metrics here, so that one
    ``MetricCollection.update`` feeds them all: ``real=True`` batches are real images, ``real=False`` ones generated
    images, and ``texts`` is ignored (it may be left out). The image features of both groups are kept in float32
    (``4 D`` bytes an image: 92 MB for 30,000 images at D = 768), at most ``max_samples`` per group: a batch that
    would go beyond raises, and nothing of it is added. Under DDP the features are gathered once at ``compute()``
    (a collective: call it on every rank).

    Args:
        feature: Feature size (an int) or a feature extractor, as for the other metrics; only its image features are
            used. 768 is CLIP ViT-L/14's, the paper's model.
        sigma: Bandwidth of the Gaussian RBF kernel (10 in the paper).
        scale: Factor of the squared MMD (1000 in the paper).
        unbiased: Leave the pairs of an image with itself out of the within-group means.
        normalize: Scale each embedding to unit L2 norm before the kernel.
        max_samples: The cap on the stored images of each group; a batch beyond it raises.
        block_size: Rows per block of the blockwise sums at ``compute()`` (memory, not the value, depends on it).
        validate_args: Check inputs for shape, dtype, NaN/Inf and zero rows.
        kwargs: Passed to :class:`torchmetrics.Metric`.

    Raises:
        TypeError: If ``feature`` is none of the accepted forms, a flag is not a bool, or ``max_samples`` or
            ``block_size`` is not an int.
        ValueError: If ``sigma`` or ``scale`` is not a finite number > 0, or ``max_samples`` or ``block_size`` is
            below 1.

    Example:
        >>> import torch
        >>> from mid_metric.metrics.cmmd import CMMD
        >>> metric = CMMD(feature=2)
        >>> metric.update(torch.tensor([[1.0, 0.0], [0.0, 1.0]]), None, real=True)
        >>> metric.update(torch.tensor([[0.0, 3.0], [2.0, 0.0]]), None, real=False)   # the same directions
        >>> metric.compute().item()
        0.0
        >>> metric.update(torch.tensor([[1.0, 1.0]]), None, real=False)   # a direction the real images lack
        >>> round(metric.compute().item(), 4)
        0.0971
    """

    higher_is_better: bool = False
    is_differentiable: bool = False
    full_state_update: bool = False
    plot_lower_bound: Optional[float] = 0.0
    plot_upper_bound: Optional[float] = None

    real_features: list[Tensor]
    generated_features: list[Tensor]

    def __init__(
        self,
        feature: FeatureSpec = 768,
        sigma: float = 10.0,
        scale: float = 1000.0,
        unbiased: bool = False,
        normalize: bool = True,
        max_samples: int = DEFAULT_MAX_SAMPLES,
        block_size: int = DEFAULT_BLOCK_SIZE,
        validate_args: bool = True,
        **kwargs: Any,
    ) -> None:
        settings = check_cmmd_arguments(sigma, scale, unbiased, normalize, block_size)
        self.sigma, self.scale, self.unbiased, self.normalize, self.block_size = settings
        self.max_samples = check_positive_int(max_samples, "max_samples")
        super().__init__(feature, validate_args, **kwargs)
        for name in _GROUPS.values():
            self.add_checked_list_state(name, (self.image_dim,), torch.float32, self._check_rows)

    def _check_rows(self, value: object, name: str) -> list[Tensor]:
        rows = check_feature_rows_state(value, name, self.image_dim)
        count = sum(int(part.shape[0]) for part in rows)
        if count > self.max_samples:
            raise ValueError(f"`{name}` holds {count} images, above this metric's `max_samples` = {self.max_samples}.")
        if self.normalize:
            for part in rows:
                check_nonzero_rows(part, name)
        return [part.to(device=self.device, dtype=torch.float32, copy=True) for part in rows]

    def stored_counts(self) -> tuple[int, int]:
        """The numbers of real and generated images this process holds.

        Example:
            >>> from mid_metric.metrics.cmmd import CMMD
            >>> metric = CMMD(feature=4)
            >>> metric.update(torch.randn(3, 4), None, real=True)
            >>> metric.stored_counts()
            (3, 0)
        """
        real, generated = (self._count(name) for name in _GROUPS.values())
        return real, generated

    def _count(self, name: str) -> int:
        return sum(int(part.shape[0]) for part in self._list_state(name))

    def _check_room(self, name: str, incoming: int, incoming_what: str) -> None:
        stored = self._count(name)
        if stored + incoming > self.max_samples:
            group = name.split("_")[0]
            raise ValueError(
                f"CMMD stores at most `max_samples` = {self.max_samples} {group} images; it holds {stored} and"
                f" {incoming_what} has {incoming}. Nothing was added: compute() on the images so far, reset(), or"
                f" build the metric with a larger `max_samples` (the features take 4 x {self.image_dim} bytes an"
                " image)."
            )

    # ------------------------------------------------------------------------------------------- inputs
    def _is_skipped(self, real: object) -> bool:
        """No batch is skipped: ``real=True`` batches are the real images (``real`` must still be a bool)."""
        check_bool(real, "real")
        return False

    def _image_features(self, images: Any) -> Tensor:
        """Checked image features on the state's device (raw images are encoded first; the texts are not)."""
        self._check_device()
        if self.feature_extractor is not None and not (isinstance(images, Tensor) and images.ndim == 2):
            if count_images(images) == 0:
                return torch.empty(0, self.image_dim, device=self.device)
            images = self.feature_extractor.encode_images(images)
        features = check_features(images, "images", self.image_dim, check_finite=self.validate_args)
        if self.validate_args:
            check_float32_range(features, "images", "CMMD")
            if self.normalize:
                check_nonzero_rows(features, "images")
        return features.to(self.device)

    def _encode_arguments(self, arguments: dict[str, Any]) -> dict[str, Any]:
        """Replace raw images by their features (``forward`` encodes a batch once); the texts are left alone."""
        arguments["images"] = self._image_features(arguments["images"])
        return arguments

    def _batch_value(self, arguments: dict[str, Any]) -> Optional[Tensor]:
        """One batch holds one group of images, which has no CMMD of its own."""
        return None

    def update(self, images: Any, texts: Any = None, real: bool = False) -> None:
        """Store a batch of real (``real=True``) or generated image features; ``texts`` is ignored.

        Args:
            images: Image features ``(B, D)``, or raw images when the metric holds a model (see
                :class:`~mid_metric.MutualInformationDivergence`).
            texts: Ignored (the captions that the alignment metrics of a ``MetricCollection`` take); may be ``None``.
            real: ``True`` for real images, ``False`` for generated ones.

        Raises:
            TypeError: If ``real`` is not a bool or the features are not floating tensors.
            ValueError: If a shape is wrong, a value is NaN or Inf, a row is zero (with ``normalize``), or the batch
                would take its group beyond ``max_samples`` images (nothing is added then).
        """
        name = _GROUPS[check_bool(real, "real")]
        features = self._image_features(images)
        if features.shape[0] == 0:
            return
        self._check_room(name, features.shape[0], "this batch")
        getattr(self, name).append(features.detach().to(dtype=torch.float32, copy=True))

    def merge_state(self, incoming_state: Union[dict[str, Any], Metric]) -> None:
        """Merge another metric's states into this one, or none of them (see :meth:`CompanionMetric.merge_state`).

        Raises:
            ValueError: Also if a group of the merged metric would hold more than ``max_samples`` images.
        """
        state = incoming_state.metric_state if isinstance(incoming_state, Metric) else incoming_state
        for name in _GROUPS.values():
            rows = state.get(name) if isinstance(state, dict) else None
            if isinstance(rows, Tensor):
                rows = [rows]
            if isinstance(rows, (list, tuple)) and all(isinstance(part, Tensor) and part.ndim >= 1 for part in rows):
                self._check_room(name, sum(int(part.shape[0]) for part in rows), "the incoming state")
        super().merge_state(incoming_state)

    # ------------------------------------------------------------------------------------------ outputs
    def compute(self) -> Tensor:
        """Return CMMD between all real and all generated images (every rank's under DDP), a 0-dim float64 tensor.

        Raises:
            ValueError: If a group has no image (fewer than 2 with ``unbiased``), or the ranks together hold more
                than ``max_samples`` images of a group.
        """
        parts = {name: self._list_state(name) for name in _GROUPS.values()}
        counts = {name: sum(int(part.shape[0]) for part in rows) for name, rows in parts.items()}
        for name, count in counts.items():
            if count > self.max_samples:  # each rank is capped at update time; under DDP their sum may exceed it
                raise ValueError(
                    f"CMMD gathered {count} {name.split('_')[0]} images from all processes, above `max_samples` ="
                    f" {self.max_samples}. Give each process at most max_samples / world_size images, or raise the"
                    " cap."
                )
        real_name, generated_name = _GROUPS[True], _GROUPS[False]
        check_cmmd_counts(
            counts[real_name],
            counts[generated_name],
            self.unbiased,
            ": call `update(images, texts, real=True)` with real images and `real=False` with generated ones",
        )
        return cmmd_of_parts(
            parts[real_name],
            parts[generated_name],
            self.sigma,
            self.scale,
            self.unbiased,
            self.normalize,
            self.block_size,
        )

    def per_sample(self) -> Tensor:
        """CMMD compares two sets of images as wholes: it has no per-image values.

        Raises:
            NotImplementedError: Always.
        """
        raise NotImplementedError("CMMD is a distance between two sets of images; it has no per-sample values.")
