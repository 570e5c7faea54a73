"""A Hugging Face ``CLIPModel`` with its processor as a feature extractor, loaded by id or from a folder."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any, Optional, Union

import torch
from torch import Tensor, nn

from mid_metric.features.identity import is_local_model_identity, looks_like_local_path, model_identity
from mid_metric.features.inputs import ImageBatch, check_texts, normalize_features
from mid_metric.features.preprocess import PixelPipeline, check_preprocess, to_pil_images
from mid_metric.features.protocol import _freeze, _pooled


# ---------------------------------------------------------------------------------------------------- CLIP
class ClipFeatureExtractor(nn.Module):
    """Image and text features from a Hugging Face CLIP model (``CLIPModel`` + ``CLIPProcessor``).

    The model is frozen (``requires_grad=False``) and stays in eval mode, even under ``train()``. It runs on the
    device of its parameters: move this module (or the metric that holds it) with ``.to(device)``, and the
    preprocessed batches follow. Captions are cut to the model's context window
    (``text_config.max_position_embeddings``) by the tokenizer's own truncation, which keeps the end-of-text token
    from which CLIP pools its text embedding; slicing token ids instead would silently change the embedding.

    The two halves of each encoder are also offered apart, so that a data pipeline can run the first in its
    workers: :attr:`pipeline` (8-bit PIL images to pixel values) then :meth:`encode_pixels`, and
    :attr:`tokenizer` (captions to token ids) then :meth:`encode_tokens`. Both pickle without the model.

    Args:
        model: A model with ``get_image_features`` and ``get_text_features`` (``transformers.CLIPModel``).
        processor: A processor with ``image_processor`` and ``tokenizer`` attributes (``transformers.CLIPProcessor``).
        name: Identifier written to reference statistics files; defaults to the model's ``name_or_path``, or,
            when that is a local folder, its :func:`model_identity` (``local:<name>@sha256:<fingerprint>``).
        batch_size: Largest number of images or captions sent to the model at once.
        preprocess: How images become pixel values (:mod:`mid_metric.features.preprocess`): ``"processor"`` (the
            processor's ``image_processor``, the default), ``"openai"`` (OpenAI CLIP's own pipeline, with which the
            published captioning numbers were computed), ``"mid-t2i"`` (the MID paper's text-to-image protocol,
            which resizes and crops to 256 first) or ``"cmmd"`` (the CMMD paper's: the largest centred square,
            resized bicubic). The last three need only PIL and use the model's input size
            ``vision_config.image_size``.

    Raises:
        TypeError: If ``model`` or ``processor`` lacks what is needed.
        ValueError: If ``batch_size`` is not positive or ``preprocess`` is unknown.

    Example:
        >>> extractor = load_clip("openai/clip-vit-base-patch32")  # doctest: +SKIP
        >>> extractor.encode_texts(["a photo of a cat"]).shape  # doctest: +SKIP
        torch.Size([1, 512])
    """

    def __init__(
        self,
        model: nn.Module,
        processor: Any,
        name: Optional[str] = None,
        batch_size: int = 64,
        preprocess: str = "processor",
    ) -> None:
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
        self.preprocess = check_preprocess(preprocess)
        image_size = getattr(getattr(config, "vision_config", None), "image_size", None)
        if self.preprocess != "processor" and not (isinstance(image_size, int) and image_size > 0):
            raise TypeError(
                f"`preprocess={self.preprocess!r}` needs the model's input size,"
                " `model.config.vision_config.image_size`, which is missing."
            )
        self.image_size = image_size
        _freeze(model)
        self.model = model
        self.processor = processor
        self.max_text_length = context
        self.pipeline = PixelPipeline(self.preprocess, image_size, processor.image_processor)
        self.tokenizer = CaptionTokenizer(processor.tokenizer, context)
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
                ``(3, H, W)`` tensors. They are brought to 8 bits
                (:func:`~mid_metric.features.preprocess.to_pil_images`), then resized, cropped and normalised by the
                extractor's ``preprocess`` (:attr:`pipeline`).

        Raises:
            TypeError: If the images are of an unsupported type or dtype.
            ValueError: If their shape is wrong or float values lie outside ``[0, 1]``.
        """
        pictures = to_pil_images(images)
        chunks = [
            self.encode_pixels(self.pipeline(pictures[start : start + self.batch_size]))
            for start in range(0, len(pictures), self.batch_size)
        ]
        if not chunks:
            return torch.empty(0, self.image_dim, device=self._model_device_dtype()[0])
        return torch.cat(chunks)

    def encode_pixels(self, pixel_values: Tensor) -> Tensor:
        """Return L2-normalised float32 features ``(N, image_dim)`` of preprocessed images, on the model's device.

        Args:
            pixel_values: Float ``(N, 3, n, n)`` pixel values as :attr:`pipeline` gives them. A CPU tensor in pinned
                memory is copied to a CUDA model without blocking.

        Raises:
            TypeError: If ``pixel_values`` is not a floating-point tensor.
            ValueError: If it is not 4-D with 3 channels.
        """
        if not isinstance(pixel_values, Tensor) or not pixel_values.is_floating_point():
            raise TypeError(f"`pixel_values` must be a float tensor (N, 3, n, n), got {_describe(pixel_values)}.")
        if pixel_values.ndim != 4 or pixel_values.shape[1] != 3:
            raise ValueError(f"`pixel_values` must have shape (N, 3, n, n), got {tuple(pixel_values.shape)}.")
        device, dtype = self._model_device_dtype()
        chunks = []
        for start in range(0, pixel_values.shape[0], self.batch_size):
            chunk = pixel_values[start : start + self.batch_size].to(device=device, non_blocking=True).to(dtype)
            with torch.inference_mode():
                chunks.append(_pooled(self.model.get_image_features(pixel_values=chunk), "image"))
        if not chunks:
            return torch.empty(0, self.image_dim, device=device)
        return normalize_features(torch.cat(chunks).clone(), "image features")

    def tokenize(self, texts: Sequence[str]) -> dict[str, Tensor]:
        """Tokenise captions as the model sees them: padded, and truncated to the context window by the tokenizer.

        Returns:
            The tokenizer's ``input_ids`` and ``attention_mask`` as CPU tensors.
        """
        return self.tokenizer(texts)

    def encode_texts(self, texts: Sequence[str]) -> Tensor:
        """Return L2-normalised float32 features ``(N, text_dim)`` of captions, on the model's device.

        Raises:
            TypeError: If ``texts`` is not a list of strings.
        """
        captions = check_texts(texts)
        chunks = [
            self.encode_tokens(self.tokenize(captions[start : start + self.batch_size]))
            for start in range(0, len(captions), self.batch_size)
        ]
        if not chunks:
            return torch.empty(0, self.text_dim, device=self._model_device_dtype()[0])
        return torch.cat(chunks)

    def encode_tokens(self, tokens: dict[str, Tensor]) -> Tensor:
        """Return L2-normalised float32 features ``(N, text_dim)`` of tokenised captions, on the model's device.

        Args:
            tokens: ``input_ids`` and ``attention_mask`` as :attr:`tokenizer` (or :meth:`tokenize`) gives them, all
                in one batch; CPU tensors in pinned memory are copied to a CUDA model without blocking.

        Raises:
            ValueError: If ``input_ids`` is missing or not 2-D.
        """
        ids = tokens.get("input_ids") if isinstance(tokens, dict) else None
        if not isinstance(ids, Tensor) or ids.ndim != 2:
            raise ValueError("`tokens` must hold `input_ids` of shape (N, length), as `tokenize` returns them.")
        device, _ = self._model_device_dtype()
        moved = {key: value.to(device, non_blocking=True) for key, value in tokens.items()}
        with torch.inference_mode():
            features = _pooled(self.model.get_text_features(**moved), "text")
        return normalize_features(features.clone(), "text features")

    def extra_repr(self) -> str:
        """Name and feature sizes, shown in ``repr``."""
        text = f"name={self.name!r}, image_dim={self.image_dim}, text_dim={self.text_dim}"
        return text if self.preprocess == "processor" else f"{text}, preprocess={self.preprocess!r}"


class CaptionTokenizer:
    """Captions to the token ids CLIP reads: padded, and truncated to the context window by the tokenizer itself.

    It holds only the tokenizer, so DataLoader workers can run it as their collate function.

    Args:
        tokenizer: The model's Hugging Face tokenizer.
        max_length: The context window (``text_config.max_position_embeddings``).
    """

    def __init__(self, tokenizer: Any, max_length: int) -> None:
        self.tokenizer = tokenizer
        self.max_length = max_length

    def __call__(self, texts: Sequence[str]) -> dict[str, Tensor]:
        """``input_ids`` and ``attention_mask`` of ``texts`` as CPU tensors."""
        encoded = self.tokenizer(
            list(texts), padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"
        )
        return {key: encoded[key] for key in ("input_ids", "attention_mask") if key in encoded}


def _describe(value: object) -> str:
    return f"a {value.dtype} tensor" if isinstance(value, Tensor) else type(value).__name__


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
    preprocess: str = "processor",
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
        preprocess: ``"processor"``, ``"openai"``, ``"mid-t2i"`` or ``"cmmd"``: see :class:`ClipFeatureExtractor`.

    Returns:
        The frozen extractor.

    Raises:
        ImportError: If transformers (or pillow) is not installed.
        OSError: If the model or its processor cannot be found or loaded (e.g. offline and not cached), or the
            folder holds no weights files.
        TypeError: If ``name_or_path`` is not a string.
        ValueError: If ``preprocess`` is unknown.

    Example:
        >>> from mid_metric.features import load_clip
        >>> extractor = load_clip("openai/clip-vit-large-patch14", device="cuda")  # doctest: +SKIP
        >>> extractor.image_dim, extractor.text_dim  # doctest: +SKIP
        (768, 768)
    """
    if not isinstance(name_or_path, str) or not name_or_path:
        raise TypeError(f"`name_or_path` must be a Hugging Face model id or a folder path, got {name_or_path!r}.")
    check_preprocess(preprocess)
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
    return ClipFeatureExtractor(model, processor, name=label, batch_size=batch_size, preprocess=preprocess)
