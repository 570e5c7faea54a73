"""Reference statistics loaded from files, kept apart from a metric's synced state.

Under DDP every rank loads the same reference file. If its statistics went into the synced state, the sync would
count them once per rank; kept here, they are merged with the synced reference pairs once, at fitting time.
"""

from __future__ import annotations

import os
from typing import Any, Union

import torch
from torch import Tensor

from mid_metric import moments
from mid_metric.features import same_model

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
