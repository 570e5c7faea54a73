"""Reading (image, caption) pair files and precomputed feature files, and writing output files atomically.

A *pairs file* is a CSV (``.csv``, or ``.tsv`` with tabs) or JSON Lines (``.jsonl``/``.ndjson``) file with one
pair per row: an image path column (default ``image``) and a caption column (default ``caption``). It is read by
the rules of :mod:`~mid_metric.io.tables` (RFC 4180 quoting in CSV, none in TSV, as many cells as header columns,
no repeated column or JSON key, UTF-8). Image paths are relative to the pairs file unless absolute. For
captioning, the caption column can be a generated-caption column, so the same file gives the reference pairs
(image, human caption) and the candidates (image, generated caption).

A *features file* (``.safetensors`` or ``.npz``) holds two 2-D arrays with one row per pair, ``image_features``
and ``text_features``, so that MID can be computed without CLIP. ``.npz`` files are read with
``allow_pickle=False``.

Nothing here imports PIL, transformers or numpy at module import time.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union

import torch
from torch import Tensor

from mid_metric.io.tables import check_input_file, read_table_rows, table_format

__all__ = [
    "PairsError",
    "Pair",
    "PairsTable",
    "FeaturePairs",
    "FEATURE_SUFFIXES",
    "is_features_file",
    "read_pairs",
    "read_features",
    "load_image",
]

PathLike = Union[str, "os.PathLike[str]"]


#: Suffixes of precomputed features files.
FEATURE_SUFFIXES = (".safetensors", ".npz")


IMAGE_FEATURES_KEY = "image_features"


TEXT_FEATURES_KEY = "text_features"


class PairsError(ValueError):
    """A pairs or features file cannot be used; the message names the file and, where it applies, the row."""


@dataclass(frozen=True)
class Pair:
    """One (image, caption) pair of a pairs file.

    Attributes:
        row: 1-based number of the pair among the file's data rows (the CSV header and blank lines are not counted).
        image: The image path as written in the file.
        image_path: The resolved path of the image.
        caption: The caption.
    """

    row: int
    image: str
    image_path: Path
    caption: str


@dataclass(frozen=True)
class PairsTable:
    """The pairs read from a pairs file."""

    source: Path
    image_column: str
    caption_column: str
    pairs: tuple[Pair, ...]

    def __len__(self) -> int:
        return len(self.pairs)


@dataclass(frozen=True)
class FeaturePairs:
    """Precomputed (image, text) feature pairs read from a features file."""

    source: Path
    image_features: Tensor
    text_features: Tensor

    def __len__(self) -> int:
        return int(self.image_features.shape[0])


def is_features_file(path: PathLike) -> bool:
    """Whether ``path`` names a precomputed features file (by its suffix).

    Example:
        >>> is_features_file("feats.npz"), is_features_file("pairs.csv")
        (True, False)
    """
    return Path(path).suffix.lower() in FEATURE_SUFFIXES


def read_pairs(
    path: PathLike,
    image_column: str = "image",
    caption_column: str = "caption",
    image_option: str = "--image-column",
    caption_option: str = "--caption-column",
) -> PairsTable:
    r"""Read the (image path, caption) pairs of a CSV/TSV/JSONL pairs file.

    Args:
        path: The pairs file.
        image_column: Name of the image path column.
        caption_column: Name of the caption column (a generated-caption column for captioning candidates).
        image_option: How the image column is chosen, named in the error for a missing column.
        caption_option: How the caption column is chosen, named in the error for a missing column.

    Returns:
        The pairs in file order. Image paths are resolved relative to the file; their existence is not checked.

    Raises:
        PairsError: If the file is missing or unreadable, breaks a rule of :mod:`~mid_metric.io.tables` (a row
            with more or fewer cells than the header, a bad quote, a repeated column, bytes that are not UTF-8), a
            column is missing, or a row has an empty image path or an empty caption. The message names the file
            and the line.

    Example:
        >>> import tempfile
        >>> folder = Path(tempfile.mkdtemp())
        >>> _ = (folder / "pairs.csv").write_text("image,caption\nimgs/a.png,a red square\n")
        >>> table = read_pairs(folder / "pairs.csv")
        >>> table.pairs[0].caption, table.pairs[0].image_path == folder / "imgs" / "a.png"
        ('a red square', True)
    """
    source = Path(path)
    check_input_file(source, "Pairs file", PairsError)
    kind = table_format(source)
    if kind is None:
        raise PairsError(
            f"{source}: unsupported pairs file type {source.suffix.lower() or '(no suffix)'!r}; use .csv, .tsv, .jsonl"
            f" or .ndjson pairs, or a {' / '.join(FEATURE_SUFFIXES)} features file."
        )
    table = read_table_rows(source, PairsError)
    base = source.resolve().parent
    pairs = []
    for number, (line, record) in enumerate(table.rows, start=1):
        where = f"{source}, line {line} (row {number})"
        for column, option in ((image_column, image_option), (caption_column, caption_option)):
            if column not in record:  # a JSON object has its own keys; a CSV/TSV row has the header's columns
                found = ", ".join(repr(c) for c in (record if kind == "jsonl" else table.columns)) or "none"
                raise PairsError(
                    f"{where if kind == 'jsonl' else source}: no column {column!r} (columns found: {found}); choose"
                    f" the column with {option}."
                )
        image, caption = record[image_column], record[caption_column]
        if not isinstance(image, str) or not image.strip():
            raise PairsError(f"{where}: empty image path in column {image_column!r}.")
        if caption is None or not isinstance(caption, str):
            raise PairsError(f"{where}: the caption in column {caption_column!r} is not text.")
        if not caption.strip():
            raise PairsError(f"{where}: empty caption in column {caption_column!r}.")
        image_path = Path(image.strip()).expanduser()
        if not image_path.is_absolute():
            image_path = base / image_path
        pairs.append(Pair(number, image, image_path, caption))
    if not pairs:
        raise PairsError(f"{source} holds no pairs.")
    return PairsTable(source, image_column, caption_column, tuple(pairs))


def _to_tensor(array: Any, key: str, source: Path) -> Tensor:
    if not isinstance(array, Tensor):
        dtype = array.dtype
        if dtype.kind != "f" or dtype.itemsize not in (2, 4, 8):
            raise PairsError(
                f"{source}: {key!r} must hold floating-point features (float16, float32 or float64), got numpy"
                f" dtype {dtype.str!r} ({dtype.name})."
            )
        if not dtype.isnative:  # e.g. big-endian '>f4', which torch cannot wrap: convert to the native order
            array = array.astype(dtype.newbyteorder("="))
    tensor = array if isinstance(array, Tensor) else torch.from_numpy(array)
    if tensor.dtype not in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
        raise PairsError(f"{source}: {key!r} must hold floating-point features, got {tensor.dtype}.")
    if tensor.ndim != 2:
        raise PairsError(f"{source}: {key!r} must be a 2-D array (pairs, features), got shape {tuple(tensor.shape)}.")
    if tensor.numel() and not bool(torch.isfinite(tensor).all()):
        bad = int((~torch.isfinite(tensor)).any(dim=1).nonzero()[0]) + 1
        raise PairsError(f"{source}: {key!r} contains NaN or Inf (first in row {bad}).")
    return tensor


def read_features(path: PathLike) -> FeaturePairs:
    """Read precomputed features from a ``.safetensors`` or ``.npz`` file.

    The file must hold ``image_features`` ``(N, Dx)`` and ``text_features`` ``(N, Dy)``, floating point, one row
    per pair (row ``i`` of one belongs to row ``i`` of the other). ``.npz`` arrays of either byte order are
    accepted (big-endian ones are converted to the machine's order).

    Raises:
        PairsError: If the file is missing or unreadable, a key is missing, or the arrays do not fit together.

    Example:
        >>> import tempfile
        >>> from safetensors.torch import save_file
        >>> path = Path(tempfile.mkdtemp()) / "feats.safetensors"
        >>> save_file({"image_features": torch.zeros(3, 4), "text_features": torch.ones(3, 2)}, str(path))
        >>> feats = read_features(path)
        >>> len(feats), tuple(feats.text_features.shape)
        (3, (3, 2))
    """
    source = Path(path)
    check_input_file(source, "Features file", PairsError)
    suffix = source.suffix.lower()
    arrays: dict[str, Any]
    try:
        if suffix == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(source), framework="pt") as handle:
                keys = list(handle.keys())
                arrays = {key: handle.get_tensor(key) for key in (IMAGE_FEATURES_KEY, TEXT_FEATURES_KEY) if key in keys}
        elif suffix == ".npz":
            import numpy as np

            with np.load(source, allow_pickle=False) as handle:
                keys = list(handle.files)
                arrays = {key: handle[key] for key in (IMAGE_FEATURES_KEY, TEXT_FEATURES_KEY) if key in keys}
        else:
            raise PairsError(f"{source}: a features file must be .safetensors or .npz.")
    except PairsError:
        raise
    except Exception as err:  # safetensors/numpy raise many types for corrupt files
        detail = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise PairsError(f"{source} is not a readable {suffix} features file ({detail}).") from None
    for key in (IMAGE_FEATURES_KEY, TEXT_FEATURES_KEY):
        if key not in arrays:
            found = ", ".join(repr(k) for k in keys) or "none"
            raise PairsError(f"{source}: no array {key!r} (arrays found: {found}).")
    images = _to_tensor(arrays[IMAGE_FEATURES_KEY], IMAGE_FEATURES_KEY, source)
    texts = _to_tensor(arrays[TEXT_FEATURES_KEY], TEXT_FEATURES_KEY, source)
    if images.shape[0] != texts.shape[0]:
        raise PairsError(
            f"{source}: {IMAGE_FEATURES_KEY!r} has {images.shape[0]} rows but {TEXT_FEATURES_KEY!r} has"
            f" {texts.shape[0]}; they must hold one row per pair."
        )
    if images.shape[0] == 0:
        raise PairsError(f"{source} holds no pairs.")
    return FeaturePairs(source, images, texts)


def load_image(pair: Pair, source: Path) -> Any:
    """Open and fully decode the image of ``pair``, as a PIL image in the mode of its file.

    The mode is kept (palette, RGBA, CMYK, 16-bit, ...): the feature extractor brings the image to 8 bits and
    converts it to RGB where its pipeline says (OpenAI's resizes first and converts after the crop), as it would an
    image opened by the caller. The whole image is decoded here, so a truncated file fails at load time. PIL's guard
    against decompression bombs stays on: an image of more than twice ``PIL.Image.MAX_IMAGE_PIXELS`` pixels is
    refused like a corrupt one.

    Raises:
        PairsError: If the image is missing, unreadable, corrupt or too large; the message names the file and the
            row.
    """
    from PIL import Image, UnidentifiedImageError

    where = f"{source}, row {pair.row}"
    if not pair.image_path.is_file():
        raise PairsError(f"{where}: image {str(pair.image_path)!r} does not exist.")
    try:
        with Image.open(pair.image_path) as image:
            image.load()  # decodes the whole image, so truncated files fail here
            return image.copy()  # in memory, in the file's mode, with its palette; the file is closed on return
    except Image.DecompressionBombError as err:
        raise PairsError(
            f"{where}: image {str(pair.image_path)!r} is refused as a possible decompression bomb ({_first_line(err)})."
        ) from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as err:
        raise PairsError(f"{where}: cannot read image {str(pair.image_path)!r} ({_first_line(err)}).") from None
    except Exception as err:  # PIL's decoders raise other types on some malformed files (e.g. struct.error)
        detail = f"{type(err).__name__}: {_first_line(err)}"
        raise PairsError(f"{where}: cannot read image {str(pair.image_path)!r} ({detail}).") from None


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
