"""The name a model is recorded under: a hub id as it is, a local folder by the fingerprint of its weights."""

from __future__ import annotations

import hashlib
import json
import os
import re
from typing import Optional

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
