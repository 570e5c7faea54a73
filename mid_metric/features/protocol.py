"""What a feature extractor is, and the two helpers every extractor here is built with."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

from torch import Tensor, nn

from mid_metric.features.inputs import ImageBatch


@runtime_checkable
class FeatureExtractor(Protocol):
    """What the metric needs from a feature extractor.

    Attributes:
        name: Identifies the extractor in reference statistics files (e.g. ``"openai/clip-vit-large-patch14"``);
            scores from different extractors are not comparable.
        image_dim: Size of an image feature.
        text_dim: Size of a text feature.
    """

    name: str
    image_dim: int
    text_dim: int

    def encode_images(self, images: ImageBatch) -> Tensor:
        """Return L2-normalised float32 image features of shape ``(N, image_dim)``."""
        ...

    def encode_texts(self, texts: Sequence[str]) -> Tensor:
        """Return L2-normalised float32 text features of shape ``(N, text_dim)``."""
        ...


def _pooled(output: Any, what: str) -> Tensor:
    """Return the projected embedding of ``get_*_features``: a tensor (transformers 4.x) or ``pooler_output`` (5.x)."""
    if isinstance(output, Tensor):
        return output
    pooled = getattr(output, "pooler_output", None)
    if isinstance(pooled, Tensor):
        return pooled
    raise TypeError(
        f"get_{what}_features returned {type(output).__name__}, neither a tensor (transformers 4.x) nor an output"
        " with a `pooler_output` tensor (transformers 5.x)."
    )


def _freeze(module: nn.Module) -> None:
    module.eval()
    for parameter in module.parameters():
        parameter.requires_grad_(False)
