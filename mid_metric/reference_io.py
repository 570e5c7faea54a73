"""Reference statistics files: save the fitted reference once, score many candidate sets against it later.

A file holds the packed float64 moments of the reference pairs (count, shift, shifted sums and outer-product sums
of ``z = [x; y]``; see :mod:`mid_metric.moments`) as one safetensors tensor named ``reference_moments``, with string
metadata:

=====================  ===========================================================================
``format``             ``"mid-metric-reference-statistics"`` (marks the kind of file)
``format_version``     ``"1"``; files from a newer format are refused with a clear error
``feature_extractor``  name of the extractor of the features (``""`` when unknown)
``image_dim``          ``Dx``
``text_dim``           ``Dy``
``num_samples``        number of reference pairs
``eps``                the ``eps`` of the metric that wrote the file
``library_version``    version of mid-metric that wrote the file
=====================  ===========================================================================

Files are written atomically (a temporary file in the same folder, then :func:`os.replace`), so a crash never
leaves a half-written file under the final name. Loading never unpickles anything: safetensors holds raw numbers
and a JSON header, and this module parses and checks that header itself before it reads the tensor.
"""

from __future__ import annotations

import json
import math
import os
import struct
import tempfile
from pathlib import Path
from typing import Any, Union

import torch
from torch import Tensor

from mid_metric import moments
from mid_metric._version import __version__

__all__ = ["FORMAT_NAME", "FORMAT_VERSION", "TENSOR_NAME", "save_reference_statistics", "load_reference_statistics"]

FORMAT_NAME = "mid-metric-reference-statistics"
FORMAT_VERSION = 1
TENSOR_NAME = "reference_moments"
_MAX_HEADER_BYTES = 100_000_000  # safetensors' own limit

PathLike = Union[str, "os.PathLike[str]"]


def save_reference_statistics(
    path: PathLike,
    packed_moments: Tensor,
    *,
    image_dim: int,
    text_dim: int,
    feature_extractor: str,
    eps: float,
) -> Path:
    """Write packed reference moments and their metadata to a safetensors file, atomically.

    Args:
        path: Destination file (conventionally ``*.safetensors``); its folder must exist. An existing file is
            replaced.
        packed_moments: Packed float64 moments of ``z = [x; y]``, length ``(image_dim + text_dim + 1) ** 2``.
        image_dim: Image feature size ``Dx``.
        text_dim: Text feature size ``Dy``.
        feature_extractor: Name of the feature extractor (``""`` if unknown).
        eps: The ``eps`` the statistics are meant to be used with (recorded only).

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        TypeError: If an argument has the wrong type.
        ValueError: If the moments are empty, not finite or of the wrong size, or ``eps`` is invalid.
        FileNotFoundError: If the folder of ``path`` does not exist.

    Example:
        >>> import tempfile, os
        >>> z = torch.randn(20, 3, dtype=torch.float64)
        >>> path = os.path.join(tempfile.mkdtemp(), "ref.safetensors")
        >>> _ = save_reference_statistics(path, moments.from_features(z), image_dim=2, text_dim=1,
        ...                               feature_extractor="toy", eps=0.0)
        >>> packed, meta = load_reference_statistics(path)
        >>> meta["num_samples"], torch.equal(packed, moments.from_features(z))
        (20, True)
    """
    path = Path(os.fspath(path))
    for argument, value in (("image_dim", image_dim), ("text_dim", text_dim)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise TypeError(f"`{argument}` must be a positive int, got {value!r}.")
    if not isinstance(feature_extractor, str):
        raise TypeError(f"`feature_extractor` must be a str, got {type(feature_extractor).__name__}.")
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not (0.0 <= eps < math.inf):
        raise ValueError(f"`eps` must be a finite number >= 0, got {eps!r}.")
    if not isinstance(packed_moments, Tensor):
        raise TypeError(f"`packed_moments` must be a torch.Tensor, got {type(packed_moments).__name__}.")
    expected = moments.packed_size(image_dim + text_dim)
    if packed_moments.ndim != 1 or packed_moments.shape[0] != expected:
        raise ValueError(
            f"`packed_moments` must be a 1-D tensor of {expected} values for image_dim={image_dim} and"
            f" text_dim={text_dim}, got shape {tuple(packed_moments.shape)}."
        )
    # The metric's states keep S2 on the lower triangle only; the file holds the full symmetric matrix.
    packed = moments.symmetrized(packed_moments.detach().to(device="cpu", dtype=torch.float64)).contiguous()
    if not bool(torch.isfinite(packed).all()):
        raise ValueError("`packed_moments` contains NaN or Inf; refusing to save broken reference statistics.")
    count = float(packed[0])
    if count < 1 or count != int(count):
        raise ValueError(f"`packed_moments` holds {count:g} reference pairs; there is nothing to save.")
    if not path.parent.is_dir():
        raise FileNotFoundError(f"Cannot write reference statistics to {str(path)!r}: its folder does not exist.")

    from safetensors.torch import save as safetensors_save

    metadata = {
        "format": FORMAT_NAME,
        "format_version": str(FORMAT_VERSION),
        "feature_extractor": feature_extractor,
        "image_dim": str(image_dim),
        "text_dim": str(text_dim),
        "num_samples": str(int(count)),
        "eps": repr(float(eps)),
        "library_version": __version__,
    }
    payload = safetensors_save({TENSOR_NAME: packed}, metadata=metadata)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as stream:
            stream.write(payload)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.unlink(temporary)
        raise
    return path


def _bad(path: Path, problem: str) -> ValueError:
    return ValueError(f"{str(path)!r} is not a usable mid-metric reference statistics file: {problem}")


def _parse_header(path: Path, data: bytes) -> tuple[dict[str, Any], int]:
    """Return the JSON header of a safetensors file and the offset of its data section, checking its framing."""
    if len(data) < 8:
        raise _bad(path, f"it has only {len(data)} bytes, so it is empty, truncated or not a safetensors file.")
    (header_size,) = struct.unpack("<Q", data[:8])
    if header_size > _MAX_HEADER_BYTES or 8 + header_size > len(data):
        raise _bad(
            path,
            f"its header claims {header_size} bytes but the file has {len(data)}; it is truncated or not a"
            " safetensors file.",
        )
    try:
        header = json.loads(data[8 : 8 + header_size].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise _bad(path, "its header is not valid JSON; it is corrupt or not a safetensors file.") from None
    if not isinstance(header, dict):
        raise _bad(path, "its header is not a JSON object; it is corrupt or not a safetensors file.")
    return header, 8 + header_size


def load_reference_statistics(path: PathLike) -> tuple[Tensor, dict[str, Any]]:
    """Read and validate a reference statistics file written by :func:`save_reference_statistics`.

    Args:
        path: The ``.safetensors`` file.

    Returns:
        ``(packed, metadata)``: the packed float64 moments on the CPU, and the metadata with ``image_dim``,
        ``text_dim``, ``num_samples`` and ``format_version`` as ints, ``eps`` as a float, and
        ``feature_extractor`` and ``library_version`` as strings.

    Raises:
        FileNotFoundError: If ``path`` does not exist.
        ValueError: If the file is truncated or corrupt, is not a mid-metric reference file (another safetensors
            file, or not safetensors at all), comes from a newer format version, has inconsistent sizes or
            counts, or holds NaN or Inf. The message names the file and the problem.

    Example:
        >>> import tempfile, os
        >>> path = os.path.join(tempfile.mkdtemp(), "not-stats.safetensors")
        >>> with open(path, "w") as f:
        ...     _ = f.write("hello")
        >>> load_reference_statistics(path)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: '...not-stats.safetensors' is not a usable mid-metric reference statistics file: it has only 5...
    """
    path = Path(os.fspath(path))
    if not path.is_file():
        raise FileNotFoundError(f"Reference statistics file {str(path)!r} does not exist (or is not a file).")
    data = path.read_bytes()
    header, data_start = _parse_header(path, data)

    metadata = header.get("__metadata__")
    if not isinstance(metadata, dict) or metadata.get("format") != FORMAT_NAME:
        raise _bad(
            path,
            f"it is a safetensors file without the metadata format={FORMAT_NAME!r}; write reference statistics"
            " with `MutualInformationDivergence.save_reference` (or mid_metric.reference_io).",
        )
    try:
        version = int(metadata.get("format_version", ""))
    except ValueError:
        raise _bad(path, f"its format_version {metadata.get('format_version')!r} is not an integer.") from None
    if version > FORMAT_VERSION:
        raise _bad(
            path,
            f"it has format version {version}, newer than the version {FORMAT_VERSION} this mid-metric"
            f" {__version__} reads (it was written by mid-metric {metadata.get('library_version', '?')}); upgrade"
            " mid-metric.",
        )
    if version < 1:
        raise _bad(path, f"its format version {version} is not valid.")
    parsed: dict[str, Any] = {"format_version": version}
    for key in ("image_dim", "text_dim", "num_samples"):
        try:
            parsed[key] = int(metadata[key])
        except (KeyError, ValueError):
            raise _bad(path, f"its metadata {key!r} is missing or not an integer.") from None
        if parsed[key] < 1:
            raise _bad(path, f"its metadata {key!r} is {parsed[key]}, but must be positive.")
    try:
        parsed["eps"] = float(metadata["eps"])
    except (KeyError, ValueError):
        raise _bad(path, "its metadata 'eps' is missing or not a number.") from None
    if not (0.0 <= parsed["eps"] < math.inf):
        raise _bad(path, f"its metadata 'eps' is {parsed['eps']}, but must be finite and >= 0.")
    parsed["feature_extractor"] = str(metadata.get("feature_extractor", ""))
    parsed["library_version"] = str(metadata.get("library_version", ""))

    entry = header.get(TENSOR_NAME)
    if not isinstance(entry, dict):
        raise _bad(path, f"it holds no tensor named {TENSOR_NAME!r}.")
    expected = moments.packed_size(parsed["image_dim"] + parsed["text_dim"])
    if entry.get("dtype") != "F64" or entry.get("shape") != [expected]:
        raise _bad(
            path,
            f"its tensor {TENSOR_NAME!r} has dtype {entry.get('dtype')} and shape {entry.get('shape')}, but"
            f" image_dim={parsed['image_dim']} and text_dim={parsed['text_dim']} need F64 and [{expected}].",
        )
    offsets = entry.get("data_offsets")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(isinstance(o, int) for o in offsets)):
        raise _bad(path, f"the data offsets of {TENSOR_NAME!r} are malformed.")
    if offsets[1] - offsets[0] != 8 * expected or data_start + offsets[1] > len(data):
        raise _bad(
            path,
            f"it has {len(data)} bytes but its header needs {data_start + offsets[1]}; it is truncated or corrupt.",
        )

    from safetensors.torch import load as safetensors_load

    try:
        tensors = safetensors_load(data)
    except Exception as error:  # safetensors raises its own error type for any framing problem
        raise _bad(path, f"safetensors cannot read it ({error}); it is truncated or corrupt.") from None
    packed = tensors[TENSOR_NAME].to(torch.float64)
    if not bool(torch.isfinite(packed).all()):
        bad = int((~torch.isfinite(packed)).sum())
        raise _bad(path, f"its statistics contain {bad} NaN or Inf values.")
    count = float(packed[0])
    if count != parsed["num_samples"]:
        raise _bad(
            path, f"its statistics hold {count:g} pairs but its metadata says num_samples={parsed['num_samples']}."
        )
    return packed, parsed
