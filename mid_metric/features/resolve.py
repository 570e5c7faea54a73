"""Turn the ``feature=`` argument of a metric into a feature extractor, or ``None`` for feature sizes."""

from __future__ import annotations

from typing import Optional

from torch import nn

from mid_metric.features.callables import CallableFeatureExtractor
from mid_metric.features.clip import ClipFeatureExtractor, load_clip
from mid_metric.features.protocol import _freeze


# ---------------------------------------------------------------------------------------------------- dispatch
def as_feature_extractor(feature: object) -> Optional[nn.Module]:
    """Turn the metric's ``feature=`` argument into a feature extractor, or ``None`` when it gives feature sizes.

    Accepted forms:

    - an int, or a pair of ints ``(image_dim, text_dim)``: the user passes features; returns ``None``;
    - a str: a Hugging Face model id or a local folder, loaded with :func:`load_clip`;
    - a pair ``(model, processor)``: an already-loaded ``CLIPModel`` (anything with ``get_image_features`` and
      ``get_text_features``) and its ``CLIPProcessor``, wrapped in :class:`ClipFeatureExtractor`;
    - a :class:`ClipFeatureExtractor` or :class:`CallableFeatureExtractor`: used as it is;
    - an object with ``encode_images`` and ``encode_texts`` methods (optionally ``name``, ``image_dim`` and
      ``text_dim`` attributes; missing sizes are probed): wrapped in :class:`CallableFeatureExtractor`;
    - a pair of callables ``(image_encoder, text_encoder)``: wrapped in :class:`CallableFeatureExtractor`.

    Raises:
        TypeError: If ``feature`` is none of these.

    Example:
        >>> import torch
        >>> as_feature_extractor((512, 512)) is None
        True
        >>> extractor = as_feature_extractor((lambda im: im.float().flatten(1), lambda tx: torch.ones(len(tx), 4)))
        >>> extractor.text_dim
        4
    """
    if isinstance(feature, bool):
        raise TypeError(f"`feature` must be a feature size, a model name or a feature extractor, got {feature!r}.")
    if isinstance(feature, int):
        return None
    if isinstance(feature, (tuple, list)) and len(feature) == 2:
        first, second = feature
        if all(isinstance(d, int) and not isinstance(d, bool) for d in feature):
            return None
        if hasattr(first, "get_image_features") and hasattr(first, "get_text_features"):
            return ClipFeatureExtractor(first, second)
        if callable(first) and callable(second):
            return CallableFeatureExtractor(first, second)
    if isinstance(feature, str):
        return load_clip(feature)
    if isinstance(feature, (ClipFeatureExtractor, CallableFeatureExtractor)):
        return feature
    if callable(getattr(feature, "encode_images", None)) and callable(getattr(feature, "encode_texts", None)):
        if isinstance(feature, nn.Module):
            _freeze(feature)
        name = getattr(feature, "name", None)
        extractor = CallableFeatureExtractor(
            feature.encode_images,  # type: ignore[union-attr]
            feature.encode_texts,  # type: ignore[union-attr]
            name=name if isinstance(name, str) else type(feature).__name__,
            image_dim=_optional_dim(getattr(feature, "image_dim", None)),
            text_dim=_optional_dim(getattr(feature, "text_dim", None)),
        )
        if isinstance(feature, nn.Module):
            extractor.wrapped = feature  # registered, so it moves with .to(device)
        return extractor
    raise TypeError(
        "`feature` must be an int or (image_dim, text_dim) for precomputed features, a Hugging Face model id or"
        " folder, a (model, processor) pair, an object with encode_images/encode_texts, or a pair of callables"
        f" (image_encoder, text_encoder); got {type(feature).__name__}."
    )


def _optional_dim(value: object) -> Optional[int]:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None
