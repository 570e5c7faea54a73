"""Reference statistics files on the metric side: loading, saving, and the loaded statistics kept apart.

Under DDP every rank loads the same reference file. If its statistics went into the synced state, the sync would
count them once per rank; kept here, they are merged with the synced reference pairs once, at fitting time.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Optional, Union

import torch
from torch import Tensor

from mid_metric import moments
from mid_metric.features import same_model
from mid_metric.metrics._base import FeatureSpec
from mid_metric.store import PairedStores

PathLike = Union[str, "os.PathLike[str]"]


class LoadedReference:
    """The packed moments of every reference file loaded into one metric (empty when none was).

    Example:
        >>> store = LoadedReference(joint_dim=2)
        >>> store.add(moments.from_features(torch.randn(5, 2, dtype=torch.float64)))
        >>> store.count, int(store.merged_with(moments.empty_moments(2))[0])
        (5, 5)
    """

    def __init__(self, joint_dim: int, device: Union[torch.device, str, None] = None) -> None:
        self.moments = moments.empty_moments(joint_dim, device=device)
        self.count = 0

    def add(self, packed: Tensor) -> None:
        """Add a file's packed moments (float64, on the store's device)."""
        packed = packed.to(device=self.moments.device, dtype=torch.float64)
        self.moments = packed if self.count == 0 else moments.merge(torch.stack([self.moments, packed]))
        self.count = int(self.moments[0])

    def replace(self, packed: Tensor) -> None:
        """Replace the store's moments (a checkpoint's ``loaded_reference_moments``)."""
        self.moments = packed.to(device=self.moments.device, dtype=torch.float64)
        self.count = int(self.moments[0])

    def clear(self) -> None:
        """Forget every loaded file."""
        self.moments = torch.zeros_like(self.moments)
        self.count = 0

    def to(self, device: torch.device) -> None:
        """Move the moments to ``device``."""
        self.moments = self.moments.to(device=device)

    def merged_with(self, state: Tensor) -> Tensor:
        """Return the packed moments of the loaded files and of ``state`` together."""
        if self.count == 0:
            return state
        return moments.merge(torch.stack([self.moments.to(state.device), state]))


def check_reference_file(
    metadata: dict[str, Any], path: PathLike, dims: tuple[int, int], extractor_name: str, check_extractor: bool
) -> None:
    """Refuse a reference file whose dimensions, or whose feature extractor, differ from the metric's.

    Extractor names are compared as :func:`mid_metric.features.same_model` does: hub ids by name, local model
    folders (``local:<name>@sha256:<fingerprint>``) by the fingerprint of their weights.

    Raises:
        ValueError: On a mismatch.

    Example:
        >>> metadata = {"image_dim": 4, "text_dim": 4, "feature_extractor": ""}
        >>> check_reference_file(metadata, "r.safetensors", (8, 8), "", True)
        Traceback (most recent call last):
        ...
        ValueError: Reference statistics 'r.safetensors' have (image_dim, text_dim) = (4, 4), but this metric has \
(8, 8); build the metric with the same feature extractor as the file.
    """
    where = repr(os.fspath(path))
    recorded = (metadata["image_dim"], metadata["text_dim"])
    if recorded != dims:
        raise ValueError(
            f"Reference statistics {where} have (image_dim, text_dim) = {recorded}, but this metric has {dims};"
            " build the metric with the same feature extractor as the file."
        )
    theirs = metadata["feature_extractor"]
    if check_extractor and theirs and extractor_name and not same_model(theirs, extractor_name):
        raise ValueError(
            f"Reference statistics {where} were computed with the feature extractor {theirs!r}, but this metric"
            f" uses {extractor_name!r}; MID values from different extractors are not comparable. Pass"
            " check_feature_extractor=False if both names denote the same model."
        )


class ReferenceFileMethods:
    """The reference-file methods of :class:`~mid_metric.MutualInformationDivergence` (mixed into it).

    The metric provides the attributes annotated here; the files' statistics live in its ``_loaded``
    (:class:`LoadedReference`), apart from the synced state.
    """

    uses_jackknife: bool
    image_dim: int
    text_dim: int
    eps: float
    feature_extractor_name: str
    check_feature_extractor: bool
    dist_sync_fn: Any
    sync_context: Any
    _loaded: LoadedReference
    _stores: PairedStores

    def _reference_replaced(self) -> None:
        """Called when the reference statistics changed other than by an update (drops what was computed from them)."""
        raise NotImplementedError

    def _adopt_reference(self, packed: Tensor, metadata: dict[str, Any], path: PathLike, check: bool) -> None:
        """Check loaded reference statistics against this metric, then add them (nothing changes on error)."""
        if self.uses_jackknife:
            raise ValueError(
                f"{os.fspath(path)!r}: `bias_correction='jackknife'` cannot use a reference statistics file, which"
                " holds no jackknife groups; pass the reference pairs to `update(..., real=True)` instead."
            )
        check_reference_file(metadata, path, (self.image_dim, self.text_dim), self.feature_extractor_name, check)
        self._loaded.add(packed)
        if not self.feature_extractor_name:
            self.feature_extractor_name = metadata["feature_extractor"]
        self._reference_replaced()

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
            >>> from mid_metric import MutualInformationDivergence
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
            packed = self._loaded.merged_with(self._stores.reference.moments())
            if int(packed[0]) == 0:
                raise ValueError("There are no reference pairs to save: call `update(images, texts, real=True)` first.")
            distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
            if not distributed or torch.distributed.get_rank() == 0:
                save_reference_statistics(
                    path, packed, image_dim=self.image_dim, text_dim=self.text_dim, feature_extractor=name, eps=self.eps
                )
        return Path(os.fspath(path))

    @classmethod
    def from_reference(cls, path: PathLike, feature: Optional[FeatureSpec] = None, **kwargs: Any) -> Any:
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
