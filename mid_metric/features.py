"""Feature extractors that turn images and captions into the L2-normalised embeddings MID is computed on.

An extractor is any object with the members of :class:`FeatureExtractor`: a ``name``, the two feature sizes and
``encode_images`` / ``encode_texts``, which return float32 rows of unit norm. This module provides:

- :func:`load_clip` and :class:`ClipFeatureExtractor`: a Hugging Face ``CLIPModel`` with its ``CLIPProcessor``,
  from a model id such as ``"openai/clip-vit-large-patch14"``, a local folder, or an already-loaded pair;
- :class:`CallableFeatureExtractor`: any other encoder (SigLIP, OpenCLIP, a fine-tuned CLIP) given as two
  callables, or as an object with ``encode_images`` and ``encode_texts`` methods;
- :func:`as_feature_extractor`, which picks the right one for the ``feature=`` argument of the metric;
- :func:`model_identity`, the name recorded for a model in reference statistics files: a Hugging Face model id is
  recorded as it is, a local model folder as ``local:<name>@sha256:<fingerprint of its weights>``, which is the
  same from any working directory and for any copy of the folder.

Hugging Face transformers is imported only when a CLIP model is requested, so ``import mid_metric`` stays light.

Images are accepted as a uint8 tensor ``(N, 3, H, W)``, a float tensor ``(N, 3, H, W)`` with values in ``[0, 1]``,
or a list of PIL images or ``(3, H, W)`` tensors (of different sizes if need be). Texts are a list of strings.
Every encoder runs under :func:`torch.inference_mode` in the model's own dtype; its output is converted to float32
and L2-normalised there, as the paper does.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
from collections.abc import Sequence
from typing import Any, Callable, Optional, Protocol, Union, runtime_checkable

import torch
from torch import Tensor, nn

__all__ = [
    "FeatureExtractor",
    "ClipFeatureExtractor",
    "CallableFeatureExtractor",
    "load_clip",
    "as_feature_extractor",
    "images_to_float_list",
    "count_images",
    "check_texts",
    "normalize_features",
    "LOCAL_MODEL_PREFIX",
    "looks_like_local_path",
    "model_identity",
    "is_local_model_identity",
    "same_model",
    "weights_fingerprint",
]

#: Prefix of the identity of a model loaded from a local folder (see :func:`model_identity`).
LOCAL_MODEL_PREFIX = "local:"
#: Hex digits of the weights' SHA-256 kept in a local model's identity.
FINGERPRINT_LENGTH = 16
# Weights files in the order transformers prefers them; an index lists the shards of a sharded checkpoint.
_WEIGHTS = (
    ("model.safetensors", "model.safetensors.index.json"),
    ("pytorch_model.bin", "pytorch_model.bin.index.json"),
)
# What a Hugging Face model id looks like: ``name`` or ``owner/name``.
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?$")

#: What ``encode_images`` accepts: a batch tensor, or a sequence of PIL images or ``(3, H, W)`` tensors.
ImageBatch = Union[Tensor, Sequence[Any]]


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


# ---------------------------------------------------------------------------------------------------- inputs
def count_images(images: object) -> int:
    """Return the number of images in a batch tensor or a sequence of images.

    Raises:
        TypeError: If ``images`` is neither a tensor nor a list or tuple.

    Example:
        >>> count_images(torch.zeros(4, 3, 8, 8, dtype=torch.uint8)), count_images([torch.zeros(3, 8, 8)])
        (4, 1)
    """
    if isinstance(images, Tensor):
        if images.ndim != 4:
            raise ValueError(
                f"`images` must be a batch tensor of shape (N, 3, H, W) or a list of images, got shape"
                f" {tuple(images.shape)}."
            )
        return int(images.shape[0])
    if isinstance(images, (list, tuple)):
        return len(images)
    raise TypeError(
        "`images` must be a uint8 or float tensor of shape (N, 3, H, W), or a list of PIL images or (3, H, W)"
        f" tensors, got {type(images).__name__}."
    )


def check_texts(texts: object, expected: Optional[int] = None) -> list[str]:
    """Check that ``texts`` is a list (or tuple) of strings, of length ``expected`` when given, and return a list.

    Raises:
        TypeError: If ``texts`` is a single string or holds something other than strings.
        ValueError: If its length differs from ``expected``.

    Example:
        >>> check_texts(("a cat", "a dog"), expected=2)
        ['a cat', 'a dog']
        >>> check_texts("a cat")
        Traceback (most recent call last):
        ...
        TypeError: `texts` must be a list of strings (captions), got a single str; wrap it in a list.
    """
    if isinstance(texts, str):
        raise TypeError("`texts` must be a list of strings (captions), got a single str; wrap it in a list.")
    if not isinstance(texts, (list, tuple)):
        raise TypeError(f"`texts` must be a list of strings (captions), got {type(texts).__name__}.")
    for index, text in enumerate(texts):
        if not isinstance(text, str):
            raise TypeError(f"`texts` must hold only strings, got {type(text).__name__} at position {index}.")
    if expected is not None and len(texts) != expected:
        raise ValueError(
            f"`images` and `texts` must hold the same number of pairs, got {expected} images and {len(texts)} texts."
        )
    return list(texts)


def _image_tensor_to_float(image: Tensor, where: str) -> Tensor:
    """Return a ``(3, H, W)`` or ``(N, 3, H, W)`` image tensor as float32 in ``[0, 1]`` (uint8 is divided by 255)."""
    if image.shape[-3] != 3:
        raise ValueError(f"{where} must have 3 colour channels first, (3, H, W), got shape {tuple(image.shape)}.")
    if image.dtype == torch.uint8:
        return image.to(torch.float32) / 255.0
    if not image.is_floating_point():
        raise TypeError(f"{where} must be uint8 (0..255) or floating point (0..1), got {image.dtype}.")
    image = image.to(torch.float32)
    if image.numel() > 0:
        low, high = float(image.min()), float(image.max())
        if not (math.isfinite(low) and math.isfinite(high)) or low < 0.0 or high > 1.0:
            raise ValueError(
                f"{where} is a float tensor, so its values must lie in [0, 1], got values in [{low:g}, {high:g}]."
                " Pass uint8 tensors for 0..255 data."
            )
    return image


def images_to_float_list(images: ImageBatch) -> list[Tensor]:
    """Convert any accepted image batch to a list of float32 ``(3, H, W)`` CPU tensors with values in ``[0, 1]``.

    uint8 data is divided by 255; PIL images are converted to RGB first. This is the common form handed to an
    image processor with ``do_rescale=False``, which then resizes, crops and normalises exactly as it would the
    uint8 data.

    Raises:
        TypeError: If an image is not a tensor or a PIL image, or a tensor has an unsupported dtype.
        ValueError: If a tensor has the wrong shape, or float values outside ``[0, 1]``.

    Example:
        >>> batch = torch.full((2, 3, 4, 4), 255, dtype=torch.uint8)
        >>> [tuple(image.shape) for image in images_to_float_list(batch)], images_to_float_list(batch)[0].max().item()
        ([(3, 4, 4), (3, 4, 4)], 1.0)
    """
    count_images(images)  # type and batch-shape check
    if isinstance(images, Tensor):
        return list(_image_tensor_to_float(images.detach().cpu(), "`images`").unbind(0))
    converted = []
    for index, image in enumerate(images):
        where = f"`images[{index}]`"
        if isinstance(image, Tensor):
            if image.ndim != 3:
                raise ValueError(f"{where} must be a (3, H, W) tensor, got shape {tuple(image.shape)}.")
            converted.append(_image_tensor_to_float(image.detach().cpu(), where))
        elif hasattr(image, "convert") and hasattr(image, "size") and hasattr(image, "mode"):  # a PIL image
            import numpy as np

            array = np.asarray(image.convert("RGB"), dtype=np.uint8)
            converted.append(torch.from_numpy(array.copy()).permute(2, 0, 1).to(torch.float32) / 255.0)
        else:
            raise TypeError(f"{where} must be a PIL image or a (3, H, W) tensor, got {type(image).__name__}.")
    return converted


def normalize_features(features: Tensor, what: str = "features") -> Tensor:
    """Return ``features`` as float32 rows of unit L2 norm (computed in float32).

    Raises:
        ValueError: If ``features`` is not 2-D, or a row is not finite or is all zeros.

    Example:
        >>> normalize_features(torch.tensor([[3.0, 4.0]])).tolist()
        [[0.6000000238418579, 0.800000011920929]]
    """
    if features.ndim != 2:
        raise ValueError(f"The {what} must have shape (batch, dim), got {tuple(features.shape)}.")
    features = features.to(torch.float32)
    norms = torch.linalg.vector_norm(features, dim=1, keepdim=True)
    if features.numel() > 0 and not bool((torch.isfinite(norms) & (norms > 0)).all()):
        raise ValueError(f"The {what} contain NaN, Inf or all-zero rows, which cannot be L2-normalised.")
    return features / norms


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


# ---------------------------------------------------------------------------------------------------- model names
def looks_like_local_path(name_or_path: str) -> bool:
    """Whether a ``--model``/``feature=`` string names a local folder (an existing one, or one written as a path).

    Example:
        >>> looks_like_local_path("openai/clip-vit-large-patch14"), looks_like_local_path("./my-clip")
        (False, True)
    """
    return (
        os.path.isabs(name_or_path)
        or name_or_path.startswith((".", "~"))
        or os.path.exists(os.path.expanduser(name_or_path))
    )


def _weights_files(folder: str) -> list[str]:
    """The weights files of a ``save_pretrained`` folder that transformers loads, in a fixed order."""
    for single, index in _WEIGHTS:
        if os.path.isfile(os.path.join(folder, single)):
            return [os.path.join(folder, single)]
        index_path = os.path.join(folder, index)
        if os.path.isfile(index_path):
            try:
                with open(index_path, encoding="utf-8") as handle:
                    weight_map = json.load(handle)["weight_map"]
                shards = sorted(set(weight_map.values()))
            except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
                raise OSError(f"Cannot read the weights index {index_path!r} ({error}).") from None
            paths = [os.path.join(folder, shard) for shard in shards]
            missing = [path for path in paths if not os.path.isfile(path)]
            if missing:
                raise OSError(f"The weights index {index_path!r} lists {missing[0]!r}, which does not exist.")
            return paths
    raise OSError(
        f"Model folder {folder!r} holds no weights (model.safetensors, pytorch_model.bin or a sharded index of"
        " them); pass a folder written by `save_pretrained`."
    )


def weights_fingerprint(folder: str) -> str:
    """Return the first 16 hex digits of the SHA-256 of a local model's weights.

    The weights are the file transformers loads (``model.safetensors``, else ``pytorch_model.bin``), or its shards
    in name order, hashed as one stream: the same value as ``sha256sum model.safetensors`` (or
    ``cat model-*.safetensors | sha256sum``) prints.

    Args:
        folder: A folder written by ``save_pretrained``.

    Raises:
        OSError: If the folder holds no weights or they cannot be read.
    """
    digest = hashlib.sha256()
    for path in _weights_files(os.path.expanduser(folder)):
        with open(path, "rb") as stream:
            for chunk in iter(lambda: stream.read(1 << 22), b""):
                digest.update(chunk)
    return digest.hexdigest()[:FINGERPRINT_LENGTH]


def _config_name(folder: str) -> str:
    """A readable name from a model folder's ``config.json``: its hub id, else its ``model_type``, else ``model``."""
    try:
        with open(os.path.join(folder, "config.json"), encoding="utf-8") as handle:
            config = json.load(handle)
    except (OSError, ValueError):
        return "model"
    if not isinstance(config, dict):
        return "model"
    recorded = config.get("_name_or_path")
    if isinstance(recorded, str) and _HUB_ID.match(recorded) and not looks_like_local_path(recorded):
        return recorded  # e.g. the hub id of the model this folder was saved from
    model_type = config.get("model_type")
    return model_type if isinstance(model_type, str) and _HUB_ID.match(model_type) else "model"


def model_identity(name_or_path: str) -> str:
    """Return the name that identifies a model in reference statistics files, wherever the model is used from.

    A Hugging Face model id is its own identity. A local folder is identified by what it holds, not by its path
    (which depends on the working directory, and differs between copies):
    ``local:<name>@sha256:<first 16 hex digits of the SHA-256 of its weights>``, where ``<name>`` is the hub id
    recorded in its ``config.json`` (``_name_or_path``) when there is one, else its ``model_type`` (e.g.
    ``clip``). Identities that are already of this form are returned unchanged.

    Args:
        name_or_path: A Hugging Face model id, or a local folder written by ``save_pretrained``.

    Returns:
        The identity string.

    Raises:
        OSError: If ``name_or_path`` is written as a path but is not an existing folder, or a folder without
            weights.

    Example:
        >>> model_identity("openai/clip-vit-large-patch14")
        'openai/clip-vit-large-patch14'
    """
    if is_local_model_identity(name_or_path):
        return name_or_path
    folder = os.path.expanduser(name_or_path)
    if os.path.isdir(folder):
        return f"{LOCAL_MODEL_PREFIX}{_config_name(folder)}@sha256:{weights_fingerprint(folder)}"
    if looks_like_local_path(name_or_path):
        raise OSError(
            f"Model {name_or_path!r} is written as a local path, but there is no such folder. Pass an existing"
            " folder written by `save_pretrained`, or a Hugging Face model id such as 'openai/clip-vit-large-patch14'."
        )
    return name_or_path


def is_local_model_identity(name: str) -> bool:
    """Whether ``name`` is the identity of a local model folder, ``local:<name>@sha256:<hex>``.

    Example:
        >>> is_local_model_identity("local:clip@sha256:0123456789abcdef"), is_local_model_identity("openai/clip")
        (True, False)
    """
    return _local_fingerprint(name) is not None


def _local_fingerprint(name: str) -> Optional[str]:
    if not name.startswith(LOCAL_MODEL_PREFIX):
        return None
    _, separator, fingerprint = name.rpartition("@sha256:")
    if not separator or not re.fullmatch(f"[0-9a-f]{{{FINGERPRINT_LENGTH}}}", fingerprint):
        return None
    return fingerprint


def same_model(first: str, second: str) -> bool:
    """Whether two recorded model names denote the same model.

    Equal names do; two local identities do when their weights' fingerprints agree (the readable part before
    ``@`` may differ, e.g. when one copy was re-saved). Anything else does not.

    Example:
        >>> same_model("local:clip@sha256:0123456789abcdef", "local:my-clip@sha256:0123456789abcdef")
        True
        >>> same_model("openai/clip-vit-base-patch32", "openai/clip-vit-large-patch14")
        False
    """
    if first == second:
        return True
    fingerprints = _local_fingerprint(first), _local_fingerprint(second)
    return fingerprints[0] is not None and fingerprints[0] == fingerprints[1]


# ---------------------------------------------------------------------------------------------------- CLIP
class ClipFeatureExtractor(nn.Module):
    """Image and text features from a Hugging Face CLIP model (``CLIPModel`` + ``CLIPProcessor``).

    The model is frozen (``requires_grad=False``) and stays in eval mode, even under ``train()``. It runs on the
    device of its parameters: move this module (or the metric that holds it) with ``.to(device)``, and the
    preprocessed batches follow. Captions are cut to the model's context window
    (``text_config.max_position_embeddings``) by the tokenizer's own truncation, which keeps the end-of-text token
    from which CLIP pools its text embedding; slicing token ids instead would silently change the embedding.

    Args:
        model: A model with ``get_image_features`` and ``get_text_features`` (``transformers.CLIPModel``).
        processor: A processor with ``image_processor`` and ``tokenizer`` attributes (``transformers.CLIPProcessor``).
        name: Identifier written to reference statistics files; defaults to the model's ``name_or_path``, or,
            when that is a local folder, its :func:`model_identity` (``local:<name>@sha256:<fingerprint>``).
        batch_size: Largest number of images or captions sent to the model at once.

    Raises:
        TypeError: If ``model`` or ``processor`` lacks what is needed.
        ValueError: If ``batch_size`` is not positive.

    Example:
        >>> extractor = load_clip("openai/clip-vit-base-patch32")  # doctest: +SKIP
        >>> extractor.encode_texts(["a photo of a cat"]).shape  # doctest: +SKIP
        torch.Size([1, 512])
    """

    def __init__(self, model: nn.Module, processor: Any, name: Optional[str] = None, batch_size: int = 64) -> None:
        super().__init__()
        if not (hasattr(model, "get_image_features") and hasattr(model, "get_text_features")):
            raise TypeError(
                "`model` must have get_image_features and get_text_features (a transformers CLIPModel), got"
                f" {type(model).__name__}."
            )
        if not isinstance(model, nn.Module):
            raise TypeError(f"`model` must be a torch.nn.Module, got {type(model).__name__}.")
        if not (hasattr(processor, "image_processor") and hasattr(processor, "tokenizer")):
            raise TypeError(
                "`processor` must have `image_processor` and `tokenizer` attributes (a transformers CLIPProcessor),"
                f" got {type(processor).__name__}."
            )
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"`batch_size` must be a positive int, got {batch_size!r}.")
        config = getattr(model, "config", None)
        text_config = getattr(config, "text_config", None)
        context = getattr(text_config, "max_position_embeddings", None)
        if not isinstance(context, int):
            raise TypeError("`model.config.text_config.max_position_embeddings` (the context window) is missing.")
        _freeze(model)
        self.model = model
        self.processor = processor
        self.max_text_length = context
        self.batch_size = batch_size
        self.name = name if name is not None else _default_name(model)
        projection = getattr(config, "projection_dim", None)
        image_dim = getattr(getattr(model, "visual_projection", None), "out_features", projection)
        text_dim = getattr(getattr(model, "text_projection", None), "out_features", projection)
        if not (isinstance(image_dim, int) and isinstance(text_dim, int)):
            raise TypeError("Cannot tell the feature sizes of `model`: it has no `config.projection_dim`.")
        self.image_dim = image_dim
        self.text_dim = text_dim

    def train(self, mode: bool = True) -> ClipFeatureExtractor:
        """Keep the frozen model in eval mode whatever is asked (so dropout never runs in feature extraction)."""
        return super().train(False)

    def _model_device_dtype(self) -> tuple[torch.device, torch.dtype]:
        parameter = next(self.model.parameters())
        return parameter.device, parameter.dtype

    def encode_images(self, images: ImageBatch) -> Tensor:
        """Return L2-normalised float32 features ``(N, image_dim)`` of a batch of images, on the model's device.

        Args:
            images: uint8 ``(N, 3, H, W)``, float ``(N, 3, H, W)`` in ``[0, 1]``, or a list of PIL images or
                ``(3, H, W)`` tensors.

        Raises:
            TypeError: If the images are of an unsupported type or dtype.
            ValueError: If their shape is wrong or float values lie outside ``[0, 1]``.
        """
        pictures = images_to_float_list(images)
        device, dtype = self._model_device_dtype()
        chunks = []
        for start in range(0, len(pictures), self.batch_size):
            chunk = pictures[start : start + self.batch_size]
            pixels = self.processor.image_processor(images=chunk, do_rescale=False, return_tensors="pt")
            pixel_values = pixels["pixel_values"].to(device=device, dtype=dtype)
            with torch.inference_mode():
                chunks.append(_pooled(self.model.get_image_features(pixel_values=pixel_values), "image"))
        if not chunks:
            return torch.empty(0, self.image_dim, device=device)
        return normalize_features(torch.cat(chunks).clone(), "image features")

    def tokenize(self, texts: Sequence[str]) -> dict[str, Tensor]:
        """Tokenise captions as the model sees them: padded, and truncated to the context window by the tokenizer.

        Returns:
            The tokenizer's ``input_ids`` and ``attention_mask`` as CPU tensors.
        """
        encoded = self.processor.tokenizer(
            list(texts), padding=True, truncation=True, max_length=self.max_text_length, return_tensors="pt"
        )
        return {key: encoded[key] for key in ("input_ids", "attention_mask") if key in encoded}

    def encode_texts(self, texts: Sequence[str]) -> Tensor:
        """Return L2-normalised float32 features ``(N, text_dim)`` of captions, on the model's device.

        Raises:
            TypeError: If ``texts`` is not a list of strings.
        """
        captions = check_texts(texts)
        device, _ = self._model_device_dtype()
        chunks = []
        for start in range(0, len(captions), self.batch_size):
            tokens = self.tokenize(captions[start : start + self.batch_size])
            tokens = {key: value.to(device) for key, value in tokens.items()}
            with torch.inference_mode():
                chunks.append(_pooled(self.model.get_text_features(**tokens), "text"))
        if not chunks:
            return torch.empty(0, self.text_dim, device=device)
        return normalize_features(torch.cat(chunks).clone(), "text features")

    def extra_repr(self) -> str:
        """Name and feature sizes, shown in ``repr``."""
        return f"name={self.name!r}, image_dim={self.image_dim}, text_dim={self.text_dim}"


def _default_name(model: nn.Module) -> str:
    """The model's ``name_or_path``: a hub id as it is, a local folder as its :func:`model_identity`."""
    recorded = str(getattr(getattr(model, "config", None), "name_or_path", "") or "")
    if not recorded:
        return type(model).__name__
    if os.path.isdir(os.path.expanduser(recorded)):
        try:
            return model_identity(recorded)
        except OSError:  # a folder without weights files: the weights came from elsewhere
            return recorded
    return recorded


def load_clip(
    name_or_path: str,
    device: Optional[Union[str, torch.device]] = None,
    dtype: Optional[torch.dtype] = None,
    batch_size: int = 64,
    name: Optional[str] = None,
) -> ClipFeatureExtractor:
    """Load a CLIP model and its processor with transformers and wrap them in a :class:`ClipFeatureExtractor`.

    The paper uses ``"openai/clip-vit-base-patch32"`` (ViT-B/32, 512-d features) and
    ``"openai/clip-vit-large-patch14"`` (ViT-L/14, 768-d). Offline (``HF_HUB_OFFLINE=1``), a model id loads from
    the local Hugging Face cache; a folder written by ``save_pretrained`` loads from disk.

    Args:
        name_or_path: Hugging Face model id, or a local folder holding the model and processor files.
        device: Device to put the model on (the metric moves it again with ``metric.to(device)``).
        dtype: Dtype of the model's weights (e.g. ``torch.float16`` on a GPU); features are float32 anyway.
        batch_size: Largest number of images or captions sent to the model at once.
        name: Name recorded in reference statistics files; defaults to :func:`model_identity` of
            ``name_or_path``: a model id as it is, a local folder as ``local:<name>@sha256:<fingerprint>``, so that
            the name does not depend on the working directory or on where the folder lives.

    Returns:
        The frozen extractor.

    Raises:
        ImportError: If transformers (or pillow) is not installed.
        OSError: If the model or its processor cannot be found or loaded (e.g. offline and not cached), or the
            folder holds no weights files.
        TypeError: If ``name_or_path`` is not a string.

    Example:
        >>> from mid_metric.features import load_clip
        >>> extractor = load_clip("openai/clip-vit-large-patch14", device="cuda")  # doctest: +SKIP
        >>> extractor.image_dim, extractor.text_dim  # doctest: +SKIP
        (768, 768)
    """
    if not isinstance(name_or_path, str) or not name_or_path:
        raise TypeError(f"`name_or_path` must be a Hugging Face model id or a folder path, got {name_or_path!r}.")
    try:
        from transformers import CLIPModel, CLIPProcessor
    except ImportError as error:
        raise ImportError(
            f"Loading the CLIP model {name_or_path!r} needs Hugging Face transformers, which is not installed."
            ' Install the `clip` extra from the mid-metric source folder with `pip install ".[clip]"` (or'
            ' `pip install "transformers>=4.40,<6" pillow tqdm`), or compute the features yourself and pass'
            " `feature=<dim>` to the metric."
        ) from error
    if is_local_model_identity(name_or_path):
        raise OSError(
            f"Could not load the CLIP model {name_or_path!r}: that is the identity recorded for a local model folder"
            " (its weights' fingerprint), not a path or a model id. Pass the folder that holds the model."
        )
    if looks_like_local_path(name_or_path) and not os.path.isdir(os.path.expanduser(name_or_path)):
        raise OSError(
            f"Could not load the CLIP model {name_or_path!r}: there is no such folder. Pass an existing folder"
            " written by `save_pretrained`, or a Hugging Face model id such as 'openai/clip-vit-large-patch14'"
            " (with HF_HUB_OFFLINE=1, it must be in the local cache)."
        )
    try:
        model = CLIPModel.from_pretrained(os.path.expanduser(name_or_path))
        processor = CLIPProcessor.from_pretrained(os.path.expanduser(name_or_path))
    except (OSError, ValueError) as error:
        raise OSError(
            f"Could not load the CLIP model {name_or_path!r} with its processor: {error}\nIf it is a Hugging Face"
            " model id, download it once while online (e.g. `hf download " + name_or_path + "`), or unset"
            " HF_HUB_OFFLINE so that it can be fetched; if it is a local folder, check that it exists and holds"
            " config.json, the weights and the processor files that `save_pretrained` writes."
        ) from error
    if dtype is not None:
        model = model.to(dtype=dtype)
    if device is not None:
        model = model.to(device=device)
    label = name if name is not None else model_identity(name_or_path)
    return ClipFeatureExtractor(model, processor, name=label, batch_size=batch_size)


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
