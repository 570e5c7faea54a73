r"""The ``FrechetDistance`` metric for torchmetrics: FD between real and generated images from streaming moments."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any, Optional, Union

import torch
from torch import Tensor
from torchmetrics.utilities.exceptions import TorchMetricsUserError

from mid_metric import jackknife
from mid_metric._checks import (
    check_bool,
    check_choice,
    check_features,
    check_level,
    check_positive_int,
    check_same_batch,
)
from mid_metric.features import check_texts, count_images
from mid_metric.functional.frechet_moments import (
    FrechetResult,
    check_fd_bias_correction,
    frechet_distance_from_packed,
    jackknife_frechet_distance,
    leading_block,
)
from mid_metric.metrics._base import FeatureSpec, PairedFeatureMetric
from mid_metric.metrics._frechet_state import FrechetStateMethods
from mid_metric.metrics._loaded_reference import LoadedReference, PathLike, check_reference_file
from mid_metric.store import JackknifeStore, MomentStore, PairedStores
from mid_metric.sync import sync_state

# Staging buffer: rows per group, as MID's (and per jackknife group with bias_correction="jackknife").
_BUFFER_ROWS = 1024
#: What decides an image's jackknife group: its own features, or the caption it was paired with.
JACKKNIFE_KEYS = ("image", "text")
# A caption's tag (the store's one "text" column with jackknife_key="text"): its hash modulo 2^20, exact in float64
# and distinct in the 32 leading bits that the row hash reads (mid_metric.jackknife.row_hashes).
_TAG_MODULUS = 2**20

__all__ = ["FrechetDistance"]


class FrechetDistance(FrechetStateMethods, PairedFeatureMetric):
    r"""The Fréchet distance between the image features of real and generated images, from float64 moments.

    For the Gaussians ``N(mu_r, S_r)`` and ``N(mu_g, S_g)`` fitted to the two groups (means and unbiased
    covariances, ``N - 1``):

    .. math:: \mathrm{FD} = \lVert \mu_r - \mu_g \rVert^2 + \operatorname{tr}\bigl(S_r + S_g
              - 2 (S_r^{1/2} S_g S_r^{1/2})^{1/2}\bigr)

    With Inception-v3 features it is FID, with CLIP or DINOv2 features FD_CLIP or FD_DINOv2. Lower is better. The
    metric keeps the count, mean and scatter of each group's image features in float64 (the statistics stores of
    :class:`~mid_metric.MutualInformationDivergence`, :mod:`mid_metric.store`, over the image features alone), so
    memory and DDP sync traffic are ``O(D^2)`` whatever the number of images, the value equals the two-pass one
    (:func:`mid_metric.functional.frechet_distance`) to rounding, merges are exact, and the sync is an all-reduce.
    ``compute()`` returns a 0-dim float64 tensor on the state's device (a collective under DDP: call it on every
    rank).

    ``update(images, texts, real)`` has the signature of the other metrics here, so that one
    ``MetricCollection.update`` feeds them all: ``real=True`` batches are real images, ``real=False`` ones generated
    images, and ``texts`` is ignored (it may be ``None``). A MID reference statistics file (``reference=``,
    :meth:`load_reference`) gives the real images' moments: they are the image block of the file's moments.

    **The dependence on N.** The plug-in value is biased upward by about ``b / N``, which at ``D = 768`` dominates
    below tens of thousands of images, so plug-in values are comparable only at the same ``N``.
    ``bias_correction="jackknife"`` removes that term: every image row goes to one of ``jackknife_groups`` groups by
    a hash of its features (:func:`mid_metric.jackknife.row_groups`, so the groups depend on neither batching,
    order nor the number of processes, and a duplicated image stays in one group), each group keeps its own
    moments, and the FDs with each group left out of both sets are combined by the delete-a-group jackknife
    (:func:`mid_metric.functional.frechet_moments.jackknife_frechet_distance`), which also gives
    :meth:`compute_with_ci` a standard error and an interval. Hashing the images treats the two sets as independent
    samples. When each generated image was made from the caption of a real image (the text-to-image protocol on
    paired sets), the two are correlated pair by pair, the plug-in bias is smaller, and image groups over-correct
    it (-9% at N = 2,000 in ``benchmarks/frechet_bias.py``); pass the captions (or their features) as ``texts`` and set
    ``jackknife_key="text"``, which puts a real image and the images made from its caption in one group.

    Args:
        feature: Feature size (an int, or ``(image_dim, text_dim)``), or a feature extractor as for MID: a Hugging
            Face CLIP id or folder, a ``(CLIPModel, CLIPProcessor)`` pair, two callables, or an object with
            ``encode_images``/``encode_texts``; only its image features are used (a DINOv2 model is a callable away).
        bias_correction: ``False`` (the plug-in value, as pytorch-fid, clean-fid and torchmetrics) or
            ``"jackknife"``.
        jackknife_groups: The number of groups ``K`` of the jackknife (2 to 1000); it keeps ``K`` states per group.
        jackknife_key: What decides an image's jackknife group: a hash of its ``"image"`` features (the default,
            for independent sets; ``texts`` may be ``None``), or of the ``"text"`` it comes with (captions or caption
            features, in every ``update``), for generated images paired with real ones by caption. Only a one-column
            hash of the caption is kept, next to the image features.
        reset_real_features: If ``False``, :meth:`reset` keeps the real images' statistics (and loaded files), so
            one reference scores many generated sets.
        reference: A MID reference statistics file (``MutualInformationDivergence.save_reference``), loaded as the
            real images' statistics (see :meth:`load_reference`). Not with the jackknife.
        check_feature_extractor: Refuse reference files made with a feature extractor of another name.
        buffer_rows: Batches of fewer rows are staged in a buffer of this many rows per group and added when it is
            full, as in MID; ``None`` means 1024 (times ``jackknife_groups`` with the jackknife), ``1`` turns it off.
        validate_args: Check inputs for shape, dtype and NaN/Inf (one host synchronisation per batch on CUDA).
        kwargs: Passed to :class:`torchmetrics.Metric`.

    Raises:
        TypeError: If ``feature`` is none of the accepted forms, or a flag is not a bool.
        ValueError: If ``bias_correction`` is not ``False`` or ``"jackknife"``, or ``jackknife_groups`` or
            ``buffer_rows`` is out of range.

    Example:
        >>> import torch
        >>> from mid_metric import FrechetDistance
        >>> real = torch.tensor([[0.0, 0.0], [2.0, 0.0], [0.0, 2.0], [2.0, 2.0]])
        >>> metric = FrechetDistance(feature=2)
        >>> metric.update(real, None, real=True)
        >>> metric.update(real + torch.tensor([3.0, 4.0]), None, real=False)   # the same set, shifted by (3, 4)
        >>> round(metric.compute().item(), 9)
        25.0
    """

    higher_is_better: bool = False
    is_differentiable: bool = False
    full_state_update: bool = False
    plot_lower_bound: Optional[float] = 0.0
    plot_upper_bound: Optional[float] = None

    def __init__(
        self,
        feature: FeatureSpec = 768,
        bias_correction: Union[bool, str] = False,
        jackknife_groups: int = jackknife.DEFAULT_GROUPS,
        jackknife_key: str = "image",
        reset_real_features: bool = True,
        reference: Optional[PathLike] = None,
        check_feature_extractor: bool = True,
        buffer_rows: Optional[int] = None,
        validate_args: bool = True,
        **kwargs: Any,
    ) -> None:
        if kwargs.get("dist_sync_fn") is None:
            kwargs["dist_sync_fn"] = sync_state  # all-reduce of the packed moments, as MID's
        self.bias_correction = check_fd_bias_correction(bias_correction)
        self.jackknife_groups = jackknife.check_num_groups(jackknife_groups, "jackknife_groups")
        self.jackknife_key = check_choice(jackknife_key, "jackknife_key", JACKKNIFE_KEYS)
        if buffer_rows is None:
            buffer_rows = _BUFFER_ROWS * (self.jackknife_groups if self.uses_jackknife else 1)
        self.buffer_rows = check_positive_int(buffer_rows, "buffer_rows")
        self.reset_real_features = check_bool(reset_real_features, "reset_real_features")
        self.check_feature_extractor = check_bool(check_feature_extractor, "check_feature_extractor")
        super().__init__(feature, validate_args, **kwargs)
        sizes = (self.image_dim + int(self.groups_by_text), self.image_dim, self.buffer_rows)
        if self.uses_jackknife:  # the image rows decide the groups, or the one "text" column of caption tags
            key = "text" if self.groups_by_text else "image"
            stores = [JackknifeStore(*sizes, self.jackknife_groups, key) for _ in range(2)]
        else:
            stores = [MomentStore(*sizes) for _ in range(2)]
        self._stores = PairedStores(*stores, metric_name=type(self).__name__)
        for name, store in zip(self.STATE_NAMES, self._stores):
            self.add_checked_state(name, store.empty_state(), store.reduce, store.check_state)
        self._loaded = LoadedReference(self.image_dim)  # reference files' image moments, apart from the synced state
        self._last: Optional[FrechetResult] = None  # the result of the latest compute()
        if reference is not None:
            self.load_reference(reference)

    @property
    def uses_jackknife(self) -> bool:
        """Whether ``bias_correction="jackknife"``: each group then keeps ``jackknife_groups`` states."""
        return self.bias_correction == "jackknife"

    @property
    def groups_by_text(self) -> bool:
        """Whether the jackknife groups the images by their captions (its stores then keep a caption tag column)."""
        return self.uses_jackknife and self.jackknife_key == "text"

    # ------------------------------------------------------------------------------------------- inputs
    def _image_features(self, images: Any) -> Tensor:
        """Checked image features (raw images are encoded first; the texts never are)."""
        self._check_device()
        if self.feature_extractor is not None and not (isinstance(images, Tensor) and images.ndim == 2):
            if count_images(images) == 0:
                return torch.empty(0, self.image_dim, device=self.device)
            images = self.feature_extractor.encode_images(images)
        return check_features(images, "images", self.image_dim, check_finite=self.validate_args)

    def update(self, images: Any, texts: Any = None, real: bool = False) -> None:
        """Add a batch of real (``real=True``) or generated images; ``texts`` only decide jackknife groups by caption.

        Args:
            images: Image features ``(B, D)`` of any floating dtype, or raw images when the metric holds a model (a
                uint8 tensor ``(B, 3, H, W)``, a float one in ``[0, 1]``, or a list of PIL images).
            texts: The captions that the alignment metrics of a ``MetricCollection`` take (a list of strings, or text
                features ``(B, text_dim)``): ignored, and may be ``None``, except with ``jackknife_key="text"``, where
                they decide the jackknife group of each image.
            real: ``True`` for real images, ``False`` for generated ones. An empty batch changes nothing.

        Raises:
            TypeError: If ``real`` is not a bool, the features are not a floating tensor, or (``jackknife_key="text"``)
                the texts are neither captions nor features.
            ValueError: If a shape is wrong, a value is NaN, Inf or above the magnitude bound, or
                (``jackknife_key="text"``) the texts are missing or their number differs from the images'.
        """
        real = check_bool(real, "real")
        features = self._image_features(images)
        tags = self._caption_tags(texts, features)
        if features.shape[0] > 0:
            self._stores.add(real, features, tags)

    def _caption_tags(self, texts: Any, features: Tensor) -> Tensor:
        """The rows' "text" columns: none, or with ``jackknife_key="text"`` one float64 hash of each caption."""
        count = features.shape[0]
        if not self.groups_by_text:
            return features.new_empty(count, 0)
        if texts is None:
            raise ValueError(
                "FrechetDistance(jackknife_key='text') groups the images by their captions: pass the captions (or"
                " their features) as `texts` with every batch."
            )
        if isinstance(texts, Tensor):
            texts = check_features(texts, "texts", self.text_dim, check_finite=self.validate_args)
            check_same_batch(features, texts, "images", "texts")
            hashes = jackknife.row_hashes(texts).cpu()
        else:
            hashes = torch.tensor([_caption_hash(caption) for caption in check_texts(texts, expected=count)])
        return (hashes % _TAG_MODULUS).to(dtype=torch.float64, device=self.device).unsqueeze(1)

    def forward(self, *args: Any, **kwargs: Any) -> None:
        """Add a batch, like :meth:`update`, and return ``None``: a batch holds one group, which has no FD alone."""
        if self._is_synced:
            raise TorchMetricsUserError(
                "The Metric shouldn't be synced when performing ``forward``. HINT: Did you forget to call ``unsync`` ?."
            )
        self.update(*args, **kwargs)
        self._forward_cache = None
        return None

    # ----------------------------------------------------------------------------------------- references
    def load_reference(self, path: PathLike, check_feature_extractor: Optional[bool] = None) -> None:
        """Load a MID reference statistics file as the real images' statistics (its image block), onto the device.

        The file (written by :meth:`MutualInformationDivergence.save_reference
        <mid_metric.MutualInformationDivergence.save_reference>`) holds the joint moments of image and text
        features; their image block is the count, mean and scatter of the real images, which is all FD needs. They
        add to any real images already seen and survive :meth:`reset` with ``reset_real_features=False``. Under DDP,
        load the file on every rank: it is counted once (it is not part of the synced state).

        Args:
            path: A ``.safetensors`` reference statistics file.
            check_feature_extractor: Refuse a file of another feature extractor; ``None`` uses the metric's setting.

        Raises:
            FileNotFoundError: If the file does not exist.
            ValueError: If the file is invalid, its image features are not of this metric's size or extractor, or
                the metric uses the jackknife (a file holds no groups).
        """
        from mid_metric.io.reference_files import load_reference_statistics

        if self.uses_jackknife:
            raise ValueError(
                f"{str(path)!r}: `bias_correction='jackknife'` cannot use a reference statistics file, which holds no"
                " jackknife groups; pass the real images to `update(..., real=True)` instead."
            )
        packed, metadata = load_reference_statistics(path)
        check = self.check_feature_extractor if check_feature_extractor is None else check_feature_extractor
        # Only the image size matters here: the file's text size is taken as it is.
        dims = (self.image_dim, metadata["text_dim"])
        check_reference_file(metadata, path, dims, self.feature_extractor_name, check)
        self._loaded.add(leading_block(packed, self.image_dim))
        if not self.feature_extractor_name:
            self.feature_extractor_name = metadata["feature_extractor"]
        self._statistics_replaced()

    # ------------------------------------------------------------------------------------------ outputs
    def _real_statistics(self) -> Tensor:
        """The real images' packed moments: the synced state and the loaded files' (staged rows are flushed)."""
        return self._loaded.merged_with(self._stores.reference.moments())

    def compute(self) -> Tensor:
        """Return the Fréchet distance (the jackknife's with ``bias_correction="jackknife"``), 0-dim float64.

        Raises:
            ValueError: If a group has fewer than 2 images (with the jackknife: without one of its groups), or a
                covariance is not positive semi-definite.
        """
        self._check_device()
        self._stores.flush()
        if self.uses_jackknife:
            groups = (leading_block(store.state, self.image_dim) for store in self._stores)
            self._last = jackknife_frechet_distance(*groups, level=None)
            return self._last.value
        real, generated = self._real_statistics(), self._stores.candidate.moments()
        value = frechet_distance_from_packed(real, generated)
        self._last = FrechetResult(value, value, int(real[0]), int(generated[0]))
        return value

    def compute_result(self) -> FrechetResult:
        """Return :meth:`compute`'s value with the plug-in value, the counts and (jackknife) the standard error.

        This calls :meth:`compute`, so it syncs under DDP and must run on every rank.
        """
        self.compute()  # sets self._last, or returns the cached value of the compute that set it
        if self._last is None:  # pragma: no cover - compute() always sets it when it succeeds
            raise RuntimeError("compute() produced no result")
        return self._last

    def compute_with_ci(self, level: float = 0.95) -> FrechetResult:
        """Return the jackknife FD with its standard error and a ``level`` interval, ``FD_J +/- t_{G-1} se``.

        Args:
            level: Nominal coverage, in ``(0, 1)``.

        Raises:
            ValueError: If the metric was built without ``bias_correction="jackknife"`` (the plug-in value has no
                interval here), ``level`` is not in ``(0, 1)``, or as :meth:`compute`.

        Example:
            >>> import torch
            >>> from mid_metric import FrechetDistance
            >>> g = torch.Generator().manual_seed(0)
            >>> metric = FrechetDistance(feature=4, bias_correction="jackknife")
            >>> metric.update(torch.randn(3000, 4, generator=g), None, real=True)
            >>> metric.update(1.5 * torch.randn(3000, 4, generator=g), None, real=False)   # population FD: 1
            >>> result = metric.compute_with_ci(0.95)
            >>> bool(result.ci_low < 1.0 < result.ci_high), result.num_real, result.num_groups
            (True, 3000, 10)
        """
        if not self.uses_jackknife:
            raise ValueError(
                "compute_with_ci() needs FrechetDistance(bias_correction='jackknife'): the plug-in value has no"
                " standard error here."
            )
        check_level(level)
        return self.compute_result().with_interval(level)

    def plot(self, val: Optional[Union[Tensor, Sequence[Tensor]]] = None, ax: Optional[Any] = None) -> tuple[Any, Any]:
        """Plot one value or a sequence of them with matplotlib (torchmetrics' plot API).

        Raises:
            ModuleNotFoundError: If matplotlib is not installed.
        """
        return self._plot(val, ax)


def _caption_hash(caption: str) -> int:
    """A hash of a caption's UTF-8 text, the same in every process (Python's ``hash`` of a str is not)."""
    return int.from_bytes(hashlib.blake2b(caption.encode("utf-8"), digest_size=8).digest(), "little") >> 1
