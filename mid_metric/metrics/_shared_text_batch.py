"""The inputs of ``update_pairs``: real images, their captions and the images generated from them, checked as one."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from mid_metric._checks import check_features, check_same_batch, check_within_bound
from mid_metric.features import count_images
from mid_metric.metrics._base import PairedFeatureMetric, are_features

__all__ = ["shared_text_batch"]


def shared_text_batch(
    metric: PairedFeatureMetric, real_images: Any, captions: Any, generated_images: Any
) -> tuple[Tensor, Tensor, Tensor]:
    """Return the checked features of a batch of ``update_pairs``, encoding raw inputs once with ``metric``'s model.

    The captions are encoded once for both kinds of images. With ``metric.validate_args``, each tensor is checked
    (dtype, shape, finite and bounded values, in one host synchronisation for the three) and both image batches
    must have as many rows as the captions; nothing is changed when a check fails.

    Raises:
        TypeError, ValueError: As ``metric.update``, naming ``real_images``, ``captions`` or ``generated_images``.

    Example:
        >>> from mid_metric import MutualInformationDivergence
        >>> metric = MutualInformationDivergence(feature=(2, 3))
        >>> x, y = torch.zeros(4, 2), torch.zeros(5, 3)
        >>> shared_text_batch(metric, x, y, x)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: `real_images` and `captions` must ... 4 and 5 ...
    """
    extractor = metric.feature_extractor
    if extractor is not None and not are_features(real_images, captions):
        real_images, captions = metric.extract_features(real_images, captions)
    if extractor is not None and not are_features(generated_images, captions):
        count = count_images(generated_images)
        generated_images = extractor.encode_images(generated_images) if count else torch.empty(0, metric.image_dim)
    if metric.validate_args:
        named = {"real_images": real_images, "captions": captions, "generated_images": generated_images}
        dims = {"real_images": metric.image_dim, "captions": metric.text_dim, "generated_images": metric.image_dim}
        named = {name: check_features(value, name, dims[name], check_finite=False) for name, value in named.items()}
        check_same_batch(named["real_images"], named["captions"], "real_images", "captions")
        check_same_batch(named["generated_images"], named["captions"], "generated_images", "captions")
        check_within_bound(named)  # one host sync for the three
        real_images, captions, generated_images = named.values()
    return real_images, captions, generated_images
