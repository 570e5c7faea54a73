"""Feature extractors that turn images and captions into the L2-normalised embeddings MID is computed on.

An extractor is any object with the members of :class:`FeatureExtractor`: a ``name``, the two feature sizes and
``encode_images`` / ``encode_texts``, which return float32 rows of unit norm. This module provides:

- :func:`load_clip` and :class:`ClipFeatureExtractor`: a Hugging Face ``CLIPModel`` with its ``CLIPProcessor``,
  from a model id such as ``"openai/clip-vit-large-patch14"``, a local folder, or an already-loaded pair;
- :class:`CallableFeatureExtractor`: any other encoder (SigLIP, OpenCLIP, a fine-tuned CLIP) given as two
  callables, or as an object with ``encode_images`` and ``encode_texts`` methods;
- :func:`as_feature_extractor`, which picks the right one for the ``feature=`` argument of the metric;
- :func:`openai_pixels` and :func:`text_to_image_pixels`: OpenAI CLIP's own image preprocessing and the MID
  paper's text-to-image variant, without torchvision (``load_clip(..., preprocess="openai")`` uses them), and
  :class:`PixelPipeline`, an extractor's whole preprocessing as a picklable callable, which data loader workers
  can run before ``ClipFeatureExtractor.encode_pixels`` (the command line does);
- :func:`model_identity`, the name recorded for a model in reference statistics files: a Hugging Face model id is
  recorded as it is, a local model folder as ``local:<name>@sha256:<fingerprint of its weights>``, which is the
  same from any working directory and for any copy of the folder.

One module per job: :mod:`~mid_metric.features.inputs` (image batches and captions),
:mod:`~mid_metric.features.protocol` (the extractor protocol), :mod:`~mid_metric.features.preprocess` (OpenAI's
image pipeline), :mod:`~mid_metric.features.identity` (model names), :mod:`~mid_metric.features.clip`,
:mod:`~mid_metric.features.callables` and :mod:`~mid_metric.features.resolve` (the ``feature=`` argument).
Hugging Face transformers is imported only when a CLIP model is requested, so ``import mid_metric`` stays light.

Images are accepted as a uint8 tensor ``(N, 3, H, W)``, a float tensor ``(N, 3, H, W)`` with values in ``[0, 1]``,
or a list of PIL images or ``(3, H, W)`` tensors (of different sizes if need be). Texts are a list of strings.
Every encoder runs under :func:`torch.inference_mode` in the model's own dtype; its output is converted to float32
and L2-normalised there, as the paper does.
"""

from mid_metric.features.callables import CallableFeatureExtractor
from mid_metric.features.clip import ClipFeatureExtractor, load_clip
from mid_metric.features.identity import (
    LOCAL_MODEL_PREFIX,
    is_local_model_identity,
    looks_like_local_path,
    model_identity,
    same_model,
    weights_fingerprint,
)
from mid_metric.features.inputs import ImageBatch, check_texts, count_images, images_to_float_list, normalize_features
from mid_metric.features.preprocess import PREPROCESSING, PixelPipeline, openai_pixels, text_to_image_pixels
from mid_metric.features.protocol import FeatureExtractor
from mid_metric.features.resolve import as_feature_extractor

__all__ = [
    "FeatureExtractor",
    "ClipFeatureExtractor",
    "CallableFeatureExtractor",
    "load_clip",
    "as_feature_extractor",
    "ImageBatch",
    "images_to_float_list",
    "count_images",
    "check_texts",
    "normalize_features",
    "PREPROCESSING",
    "openai_pixels",
    "text_to_image_pixels",
    "PixelPipeline",
    "LOCAL_MODEL_PREFIX",
    "looks_like_local_path",
    "model_identity",
    "is_local_model_identity",
    "same_model",
    "weights_fingerprint",
]
