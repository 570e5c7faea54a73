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
``image_rms_norm``     root-mean-square L2 norm of the image features, ``sqrt(mean |x|^2)`` (``1`` for
                       L2-normalised features); absent from files of mid-metric 0.1.0 and earlier
``text_rms_norm``      the same for the text features
``tensor_sha256``      SHA-256 of the tensor's bytes as stored (hex); absent from files of 0.1.0 and earlier
=====================  ===========================================================================

Corruption is refused on load instead of silently changing MID: the tensor's bytes must match ``tensor_sha256``
when the file records it, and in every file the full symmetric matrix ``S2`` that the tensor holds must be
symmetric, with a non-negative diagonal that is consistent with the count (``S1_i^2 <= n S2_ii``, by
Cauchy-Schwarz), and imply correlations within ``[-1, 1]``.

Files are written atomically (a temporary file in the same folder, then :func:`os.replace`), so a crash never
leaves a half-written file under the final name; a new file gets the permissions that :func:`open` would give
(``0o666`` less the umask), and a replaced file keeps its own. Loading never unpickles anything: safetensors holds
raw numbers and a JSON header, and this module checks the header's length against the file's size, then parses and
checks the header itself, before it reads the tensor (and only the tensor).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import struct
from pathlib import Path
from typing import Any, BinaryIO, Optional, Union

import numpy as np
import torch
from torch import Tensor

from mid_metric import moments
from mid_metric._version import __version__
from mid_metric.io.atomic import create_temporary_file

__all__ = [
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "TENSOR_NAME",
    "save_reference_statistics",
    "load_reference_statistics",
]

FORMAT_NAME = "mid-metric-reference-statistics"


FORMAT_VERSION = 1


TENSOR_NAME = "reference_moments"


#: Largest header accepted on load. Ours are a few hundred bytes; the limit keeps a file of another kind whose
#: first 8 bytes happen to announce a huge header from being read into memory.
_MAX_HEADER_BYTES = 1 << 20


#: Longest ``feature_extractor`` name that :func:`save_reference_statistics` writes (so the header stays small).
_MAX_NAME_LENGTH = 4096


#: Relative tolerance of the symmetry and Cauchy-Schwarz checks on load. Files of earlier versions were symmetric
#: to rounding only (about 1e-15 relative); a flipped byte anywhere above the lowest 1-2 of a float64 breaks them.
_MATRIX_TOLERANCE = 1e-12


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

    The root-mean-square norms of the image and text features (``image_rms_norm``, ``text_rms_norm``) are
    derived from the moments and recorded too, so that a user of the file can tell whether the reference
    features were L2-normalised.

    Raises:
        TypeError: If an argument has the wrong type.
        ValueError: If ``path`` is empty, the moments are empty, not finite or of the wrong size, ``eps`` is
            invalid, or ``feature_extractor`` is longer than 4096 characters.
        IsADirectoryError: If ``path`` is a folder.
        FileNotFoundError: If the folder of ``path`` does not exist.

    Example:
        >>> import tempfile, os
        >>> z = torch.randn(20, 3, dtype=torch.float64)
        >>> path = os.path.join(tempfile.mkdtemp(), "ref.safetensors")
        >>> _ = save_reference_statistics(path, moments.from_features(z), image_dim=2, text_dim=1,
        ...                               feature_extractor="toy", eps=0.0)
        >>> packed, meta = load_reference_statistics(path)  # the file holds the full symmetric S2
        >>> meta["num_samples"], torch.equal(packed, moments.symmetrized(moments.from_features(z)))
        (20, True)
    """
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"`path` must be a str or os.PathLike, got {type(path).__name__}.")
    if not os.fspath(path):
        raise ValueError("`path` is empty: give the file to write the reference statistics to, e.g. 'ref.safetensors'.")
    path = Path(os.fspath(path))
    for argument, value in (("image_dim", image_dim), ("text_dim", text_dim)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise TypeError(f"`{argument}` must be a positive int, got {value!r}.")
    if not isinstance(feature_extractor, str):
        raise TypeError(f"`feature_extractor` must be a str, got {type(feature_extractor).__name__}.")
    if len(feature_extractor) > _MAX_NAME_LENGTH:
        raise ValueError(
            f"`feature_extractor` is {len(feature_extractor)} characters long; at most {_MAX_NAME_LENGTH} are recorded."
        )
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
    if path.is_dir():
        raise IsADirectoryError(
            f"Cannot write reference statistics to {str(path)!r}: it is a folder; give a file name."
        )
    if not path.parent.is_dir():
        raise FileNotFoundError(f"Cannot write reference statistics to {str(path)!r}: its folder does not exist.")

    from safetensors.torch import save as safetensors_save

    image_rms, text_rms = _rms_norms(packed, image_dim)

    metadata = {
        "format": FORMAT_NAME,
        "format_version": str(FORMAT_VERSION),
        "feature_extractor": feature_extractor,
        "image_dim": str(image_dim),
        "text_dim": str(text_dim),
        "num_samples": str(int(count)),
        "eps": repr(float(eps)),
        "library_version": __version__,
        "image_rms_norm": repr(image_rms),
        "text_rms_norm": repr(text_rms),
    }
    metadata["tensor_sha256"] = hashlib.sha256(_stored_bytes(packed)).hexdigest()
    payload = safetensors_save({TENSOR_NAME: packed}, metadata=metadata)
    handle, temporary = create_temporary_file(path)  # the permissions open() would give, unlike mkstemp's 0600
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


def _stored_bytes(packed: Tensor) -> bytes:
    """The bytes safetensors stores for a float64 tensor: little-endian, contiguous."""
    return np.ascontiguousarray(packed.numpy(), dtype="<f8").tobytes()


def _rms_norms(packed: Tensor, image_dim: int) -> tuple[float, float]:
    """Root-mean-square norms ``sqrt(sum |x|^2 / n)`` of the image and the text features of packed moments."""
    dim = moments.dim_from_packed_size(packed.shape[0])
    _, raw = moments.mean_and_scatter(packed, center=torch.zeros(dim, dtype=torch.float64))  # sum v v^T
    count = max(float(packed[0]), 1.0)
    squares = raw.diagonal().clamp(min=0.0)
    return math.sqrt(float(squares[:image_dim].sum()) / count), math.sqrt(float(squares[image_dim:].sum()) / count)


def _bad(path: Path, problem: str) -> ValueError:
    return ValueError(f"{str(path)!r} is not a usable mid-metric reference statistics file: {problem}")


def _read_header(path: Path, stream: BinaryIO, size: int) -> tuple[dict[str, Any], int]:
    """Return the JSON header of a safetensors file and the offset of its data section, checking its framing.

    The header's announced length is checked against the file's size before anything more than its first 8
    bytes is read, so a large file of another kind is refused without being read.
    """
    prefix = stream.read(8)
    if len(prefix) < 8:
        raise _bad(path, f"it has only {size} bytes, so it is empty, truncated or not a safetensors file.")
    (header_size,) = struct.unpack("<Q", prefix)
    if 8 + header_size > size:
        raise _bad(
            path,
            f"its header claims {header_size} bytes but the file has {size}; it is truncated or not a safetensors"
            " file.",
        )
    if header_size > _MAX_HEADER_BYTES:
        raise _bad(
            path,
            f"its header claims {header_size} bytes, more than the {_MAX_HEADER_BYTES} of any mid-metric reference"
            " file; it is not one (or not a safetensors file).",
        )
    try:
        header = json.loads(stream.read(header_size).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise _bad(path, "its header is not valid JSON; it is corrupt or not a safetensors file.") from None
    if not isinstance(header, dict):
        raise _bad(path, "its header is not a JSON object; it is corrupt or not a safetensors file.")
    return header, 8 + header_size


def _optional_norm(path: Path, metadata: dict[str, Any], key: str) -> Optional[float]:
    if key not in metadata:
        return None  # files of mid-metric 0.1.0 and earlier
    try:
        value = float(metadata[key])
    except (TypeError, ValueError):
        raise _bad(path, f"its metadata {key!r} is not a number.") from None
    if not (0.0 <= value < math.inf):
        raise _bad(path, f"its metadata {key!r} is {value}, but must be finite and >= 0.")
    return value


def _check_matrix(path: Path, packed: Tensor) -> None:
    """Check the stored ``S2`` of packed moments: symmetric, with a diagonal and correlations that can be real.

    ``S2 = sum (v - s)(v - s)^T`` is a sum of outer products, so it is symmetric with a non-negative diagonal, and
    with ``S1 = sum (v - s)`` and the count ``n``, Cauchy-Schwarz gives ``S1_i^2 <= n S2_ii``. The scatter about
    the mean, ``C = S2 - S1 S1^T / n``, is positive semi-definite, so ``|C_ij| <= sqrt(C_ii C_jj)``.
    """
    fields = moments.unpack(packed)
    count = float(fields.count)
    outer = fields.shifted_outer_sum
    diagonal = outer.diagonal()
    if bool((diagonal < 0).any()):
        index = int((diagonal < 0).nonzero()[0])
        raise _bad(
            path,
            f"its scatter matrix has a negative diagonal entry ({float(diagonal[index]):g} at {index}), which a sum"
            " of squares cannot have; it is corrupt.",
        )
    roots = diagonal.sqrt()  # sqrt(S2_ii S2_jj) bounds |S2_ij| and the rounding of each entry
    # Two D x D temporaries in all (about 38 MB at D = 1536): `work` and `bound`.
    work = torch.sub(outer, outer.mT).abs_()
    bound = torch.outer(roots, roots).mul_(_MATRIX_TOLERANCE)
    if bool((work > bound).any()):
        row, column = (int(i) for i in (work > bound).nonzero()[0])
        raise _bad(
            path,
            f"its scatter matrix is not symmetric (entry ({row}, {column}) is {float(outer[row, column])!r} but"
            f" ({column}, {row}) is {float(outer[column, row])!r}); it is corrupt.",
        )
    excess = fields.shifted_sum.square() - count * diagonal * (1.0 + _MATRIX_TOLERANCE)
    if bool((excess > 0).any()):
        index = int((excess > 0).nonzero()[0])
        raise _bad(
            path,
            f"its statistics are inconsistent with its count of {count:g} pairs: coordinate {index} has a shifted sum"
            f" of {float(fields.shifted_sum[index]):g}, whose square exceeds count x the diagonal"
            f" ({float(diagonal[index]):g}); it is corrupt.",
        )
    torch.sub(outer, torch.outer(fields.shifted_sum, fields.shifted_sum / count), out=work).abs_()  # |C|
    spread = (diagonal - fields.shifted_sum.square() / count).clamp_(min=0.0).sqrt_()
    bound.mul_(4.0).addr_(spread, spread, alpha=1.0 + _MATRIX_TOLERANCE)
    if bool((work > bound).any()):
        row, column = (int(i) for i in (work > bound).nonzero()[0])
        raise _bad(
            path,
            f"its scatter matrix implies a correlation outside [-1, 1] between coordinates {row} and {column}; it"
            " is corrupt.",
        )


def load_reference_statistics(path: PathLike) -> tuple[Tensor, dict[str, Any]]:
    """Read and validate a reference statistics file written by :func:`save_reference_statistics`.

    Only the header (after checking its length against the file's size) and the statistics tensor are read, so a
    large file of another kind costs no memory.

    Args:
        path: The ``.safetensors`` file.

    Returns:
        ``(packed, metadata)``: the packed float64 moments on the CPU, and the metadata with ``image_dim``,
        ``text_dim``, ``num_samples`` and ``format_version`` as ints, ``eps`` as a float, ``feature_extractor``
        and ``library_version`` as strings, and ``image_rms_norm`` and ``text_rms_norm`` as floats (``None`` for
        files that do not record them).

    Raises:
        FileNotFoundError: If ``path`` does not exist.
        IsADirectoryError: If ``path`` is a folder.
        ValueError: If the file is truncated or corrupt (bytes that do not match the recorded checksum, or a
            scatter matrix that is not symmetric, has a negative diagonal or contradicts the count), is not a
            mid-metric reference file (another safetensors file, or not safetensors at all), comes from a newer
            format version, has inconsistent sizes or counts, or holds NaN or Inf. The message names the file and
            the problem.

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
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"`path` must be a str or os.PathLike, got {type(path).__name__}.")
    if not os.fspath(path):
        raise ValueError("`path` is empty: give the reference statistics file to load.")
    path = Path(os.fspath(path))
    if path.is_dir():
        raise IsADirectoryError(
            f"Reference statistics file {str(path)!r} is a folder, not a file; give the .safetensors file that"
            " `save_reference` (or `mid-metric reference`) wrote."
        )
    if not path.is_file():
        raise FileNotFoundError(f"Reference statistics file {str(path)!r} does not exist (or is not a file).")
    with open(path, "rb") as stream:
        size = os.fstat(stream.fileno()).st_size
        header, data_start = _read_header(path, stream, size)
        parsed = _parse_metadata(path, header)
        expected = moments.packed_size(parsed["image_dim"] + parsed["text_dim"])
        begin, end = _tensor_span(path, header, parsed, expected, size - data_start)
        stream.seek(data_start + begin)
        data = stream.read(end - begin)
    if len(data) != 8 * expected:
        raise _bad(path, f"it ended after {data_start + begin + len(data)} bytes while being read; it is truncated.")
    checksum = parsed.pop("tensor_sha256")
    if checksum is not None and hashlib.sha256(data).hexdigest() != checksum:
        raise _bad(path, "its statistics do not match the SHA-256 checksum recorded in its metadata; it is corrupt.")
    packed = torch.from_numpy(np.frombuffer(data, dtype="<f8").astype(np.float64))  # safetensors is little-endian
    if not bool(torch.isfinite(packed).all()):
        bad = int((~torch.isfinite(packed)).sum())
        raise _bad(path, f"its statistics contain {bad} NaN or Inf values.")
    count = float(packed[0])
    if count != parsed["num_samples"]:
        raise _bad(
            path, f"its statistics hold {count:g} pairs but its metadata says num_samples={parsed['num_samples']}."
        )
    _check_matrix(path, packed)
    return packed, parsed


def _parse_metadata(path: Path, header: dict[str, Any]) -> dict[str, Any]:
    """Check the ``__metadata__`` of a header and return it parsed (see :func:`load_reference_statistics`)."""
    metadata = header.get("__metadata__")
    if not isinstance(metadata, dict) or metadata.get("format") != FORMAT_NAME:
        raise _bad(
            path,
            f"it is a safetensors file without the metadata format={FORMAT_NAME!r}; write reference statistics"
            " with `MutualInformationDivergence.save_reference` (or mid_metric.io.reference_files).",
        )
    try:
        version = int(metadata.get("format_version", ""))
    except (TypeError, ValueError):
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
        except (KeyError, TypeError, ValueError):
            raise _bad(path, f"its metadata {key!r} is missing or not an integer.") from None
        if parsed[key] < 1:
            raise _bad(path, f"its metadata {key!r} is {parsed[key]}, but must be positive.")
    try:
        parsed["eps"] = float(metadata["eps"])
    except (KeyError, TypeError, ValueError):
        raise _bad(path, "its metadata 'eps' is missing or not a number.") from None
    if not (0.0 <= parsed["eps"] < math.inf):
        raise _bad(path, f"its metadata 'eps' is {parsed['eps']}, but must be finite and >= 0.")
    parsed["feature_extractor"] = str(metadata.get("feature_extractor", ""))
    parsed["library_version"] = str(metadata.get("library_version", ""))
    for key in ("image_rms_norm", "text_rms_norm"):
        parsed[key] = _optional_norm(path, metadata, key)
    checksum = metadata.get("tensor_sha256")
    if checksum is not None and not (
        isinstance(checksum, str) and len(checksum) == 64 and all(c in "0123456789abcdef" for c in checksum)
    ):
        raise _bad(path, f"its metadata 'tensor_sha256' is {checksum!r}, not a SHA-256 hex digest.")
    parsed["tensor_sha256"] = checksum
    return parsed


def _tensor_span(
    path: Path, header: dict[str, Any], parsed: dict[str, Any], expected: int, data_size: int
) -> tuple[int, int]:
    """Return the byte range of the statistics tensor in the data section, checking it against the file's size."""
    entry = header.get(TENSOR_NAME)
    if not isinstance(entry, dict):
        raise _bad(path, f"it holds no tensor named {TENSOR_NAME!r}.")
    if entry.get("dtype") != "F64" or entry.get("shape") != [expected]:
        raise _bad(
            path,
            f"its tensor {TENSOR_NAME!r} has dtype {entry.get('dtype')} and shape {entry.get('shape')}, but"
            f" image_dim={parsed['image_dim']} and text_dim={parsed['text_dim']} need F64 and [{expected}].",
        )
    offsets = entry.get("data_offsets")
    if not (
        isinstance(offsets, list)
        and len(offsets) == 2
        and all(isinstance(o, int) and not isinstance(o, bool) and o >= 0 for o in offsets)
    ):
        raise _bad(path, f"the data offsets of {TENSOR_NAME!r} are malformed.")
    begin, end = offsets
    if end - begin != 8 * expected:
        raise _bad(
            path,
            f"the data offsets of {TENSOR_NAME!r} span {end - begin} bytes, not {8 * expected}; it is truncated or"
            " corrupt.",
        )
    # safetensors' data section holds exactly the tensors of the header, back to back.
    described = max(
        [end]
        + [
            int(value["data_offsets"][1])
            for value in header.values()
            if isinstance(value, dict)
            and isinstance(value.get("data_offsets"), list)
            and len(value["data_offsets"]) == 2
            and isinstance(value["data_offsets"][1], int)
        ]
    )
    if described != data_size:
        problem = "truncated or corrupt" if described > data_size else "corrupt (it has trailing data)"
        raise _bad(
            path,
            f"it has {data_size} bytes of data but its header describes {described}; it is {problem}.",
        )
    return begin, end
