"""Any other encoder as a feature extractor: two callables, or an object with ``encode_images``/``encode_texts``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Callable, Optional

import torch
from torch import Tensor, nn

from mid_metric.features.inputs import ImageBatch, check_texts, count_images, normalize_features
from mid_metric.features.protocol import _freeze, _pooled


# ---------------------------------------------------------------------------------------------------- callables
class CallableFeatureExtractor(nn.Module):
    """Wrap any image encoder and text encoder (SigLIP, OpenCLIP, a fine-tuned CLIP) as a feature extractor.

    ``image_encoder(images)`` receives the images exactly as given to the metric and ``text_encoder(texts)`` a list
    of strings; each returns a ``(N, dim)`` tensor. Their outputs are converted to float32 and L2-normalised. Both
    run under :func:`torch.inference_mode`. Encoders that are ``nn.Module`` objects are registered as submodules
    (they move with ``.to(device)``) and frozen: eval mode and ``requires_grad=False``; pass a copy of a model you
    are still training. Preprocessing (resizing, normalisation, tokenisation) and the device of the inputs are the
    encoders' job.

    Args:
        image_encoder: Callable mapping a batch of images to features.
        text_encoder: Callable mapping a list of strings to features.
        name: Identifier written to reference statistics files (default: the encoders' class names).
        image_dim: Image feature size; discovered by encoding one probe image when ``None``.
        text_dim: Text feature size; discovered by encoding one probe caption when ``None``.
        probe_image_size: Side of the grey uint8 image ``(1, 3, s, s)`` used to discover ``image_dim``.

    Raises:
        TypeError: If an encoder is not callable or a given dimension is not a positive int.

    Example:
        >>> weight = torch.randn(3, 8)
        >>> extractor = CallableFeatureExtractor(
        ...     lambda images: images.float().mean(dim=(2, 3)) @ weight,   # (N, 3, H, W) -> (N, 8)
        ...     lambda texts: torch.tensor([[len(t), 1.0] for t in texts]),  # list of str -> (N, 2)
        ...     name="toy",
        ... )
        >>> extractor.image_dim, extractor.text_dim
        (8, 2)
        >>> extractor.encode_texts(["abcd"]).tolist()  # (4, 1) scaled to unit norm
        [[0.9701425433158875, 0.24253563582897186]]
    """

    def __init__(
        self,
        image_encoder: Callable[[Any], Tensor],
        text_encoder: Callable[[list[str]], Tensor],
        name: Optional[str] = None,
        image_dim: Optional[int] = None,
        text_dim: Optional[int] = None,
        probe_image_size: int = 224,
    ) -> None:
        super().__init__()
        for argument, encoder in (("image_encoder", image_encoder), ("text_encoder", text_encoder)):
            if not callable(encoder):
                raise TypeError(f"`{argument}` must be callable, got {type(encoder).__name__}.")
            if isinstance(encoder, nn.Module):
                _freeze(encoder)
        self.image_encoder = image_encoder
        self.text_encoder = text_encoder
        if name is None:
            name = f"{_callable_name(image_encoder)}+{_callable_name(text_encoder)}"
        if not isinstance(name, str):
            raise TypeError(f"`name` must be a str, got {type(name).__name__}.")
        self.name = name
        for argument, value in (("image_dim", image_dim), ("text_dim", text_dim)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise TypeError(f"`{argument}` must be a positive int or None, got {value!r}.")
        if image_dim is None:
            probe = torch.full((1, 3, probe_image_size, probe_image_size), 128, dtype=torch.uint8)
            image_dim = int(self._run(image_encoder, probe, 1, "image", normalize=False).shape[1])
        if text_dim is None:
            text_dim = int(self._run(text_encoder, ["a photo"], 1, "text", normalize=False).shape[1])
        self.image_dim = image_dim
        self.text_dim = text_dim

    def train(self, mode: bool = True) -> CallableFeatureExtractor:
        """Keep frozen encoders in eval mode whatever is asked."""
        return super().train(False)

    def _run(
        self, encoder: Callable[[Any], Tensor], inputs: Any, count: int, what: str, normalize: bool = True
    ) -> Tensor:
        with torch.inference_mode():
            output = encoder(inputs)
        output = _pooled(output, what) if not isinstance(output, Tensor) else output
        if output.ndim != 2 or output.shape[0] != count:
            raise ValueError(
                f"The {what} encoder must return a ({count}, dim) tensor for {count} inputs, got shape"
                f" {tuple(output.shape)}."
            )
        expected = getattr(self, f"{what}_dim", None)
        if expected is not None and output.shape[1] != expected:
            raise ValueError(f"The {what} encoder returned {output.shape[1]} features per row, expected {expected}.")
        if not normalize:
            return output
        return normalize_features(output.clone(), f"{what} features")

    def encode_images(self, images: ImageBatch) -> Tensor:
        """Encode images with ``image_encoder``; return L2-normalised float32 features ``(N, image_dim)``."""
        return self._run(self.image_encoder, images, count_images(images), "image")

    def encode_texts(self, texts: Sequence[str]) -> Tensor:
        """Encode captions with ``text_encoder``; return L2-normalised float32 features ``(N, text_dim)``."""
        captions = check_texts(texts)
        return self._run(self.text_encoder, captions, len(captions), "text")

    def extra_repr(self) -> str:
        """Name and feature sizes, shown in ``repr``."""
        return f"name={self.name!r}, image_dim={self.image_dim}, text_dim={self.text_dim}"


def _callable_name(function: object) -> str:
    return str(getattr(function, "__name__", None) or type(function).__name__)
