"""Every rule on arguments, features, counts and states, each with its one error message.

Every check raises ``TypeError`` or ``ValueError`` with a message that names the offending argument; none of them
modifies anything, so a caller that checks everything before it changes anything leaves a metric's state as it was
when a check fails. The functional API, the metric classes and the command line all call these.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor

from mid_metric import moments

FLOATING_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)

#: Largest feature magnitude accepted. The statistics sum outer products ``v v^T`` of up to 2^53 rows in float64
#: (largest value about 1.8e308): rows bounded by 1e100 keep every sum, and the squared distances of ``pmi`` and the
#: standard error, far from overflow. Real embeddings are of order 1; float32 input can never exceed it.
MAX_FEATURE_MAGNITUDE = 1e100


def check_features(features: object, name: str, dim: Optional[int] = None, check_finite: bool = True) -> Tensor:
    """Check that ``features`` is a finite floating tensor of shape ``(B, dim)`` and return it.

    Args:
        features: The value to check.
        name: Argument name used in error messages.
        dim: Expected feature size, or ``None`` to accept any.
        check_finite: Whether to reject NaN, Inf and magnitudes above :data:`MAX_FEATURE_MAGNITUDE` (one host
            synchronisation on CUDA).

    Raises:
        TypeError: If ``features`` is not a tensor, or not of a floating dtype.
        ValueError: If the shape is wrong, a value is NaN or infinite, or its magnitude exceeds
            :data:`MAX_FEATURE_MAGNITUDE`.

    Example:
        >>> check_features(torch.zeros(4, 3), "images", dim=3).shape
        torch.Size([4, 3])
        >>> check_features(torch.zeros(4, 2), "images", dim=3)
        Traceback (most recent call last):
        ...
        ValueError: `images` must have shape (batch, 3), got (4, 2).
    """
    if not isinstance(features, Tensor):
        raise TypeError(f"`{name}` must be a torch.Tensor of shape (batch, features), got {type(features).__name__}.")
    if features.dtype not in FLOATING_DTYPES:
        raise TypeError(
            f"`{name}` must be a floating tensor (float16, bfloat16, float32 or float64), got {features.dtype}."
            " Integer or boolean features are not embeddings; pass the encoder's output."
        )
    expected = f"(batch, {dim})" if dim is not None else "(batch, features)"
    if features.ndim != 2 or (dim is not None and features.shape[1] != dim):
        raise ValueError(f"`{name}` must have shape {expected}, got {tuple(features.shape)}.")
    # One comparison (one host sync) catches NaN and Inf too: they fail `<=` against a finite bound of the dtype.
    bound = min(MAX_FEATURE_MAGNITUDE, torch.finfo(features.dtype).max)
    if check_finite and features.numel() > 0 and not bool((features.abs() <= bound).all()):
        finite = torch.isfinite(features)
        if not bool(finite.all()):
            bad = int((~finite).any(dim=1).sum())
            raise ValueError(f"`{name}` contains NaN or Inf values (in {bad} of {features.shape[0]} rows).")
        largest = float(features.abs().max())
        raise ValueError(
            f"`{name}` holds values of magnitude up to {largest:.3g}, above the bound {MAX_FEATURE_MAGNITUDE:g}:"
            " the float64 sums of their outer products could overflow. Pass embeddings of ordinary scale (CLIP's"
            " are L2-normalised)."
        )
    return features


def check_pairs(
    images: object, texts: object, image_dim: Optional[int] = None, text_dim: Optional[int] = None, prefix: str = ""
) -> tuple[Tensor, Tensor]:
    """Check a batch of (image, text) feature pairs and return them.

    Args:
        images: Image features ``(B, image_dim)``.
        texts: Text features ``(B, text_dim)``.
        image_dim: Expected image feature size, or ``None``.
        text_dim: Expected text feature size, or ``None``.
        prefix: Prefix of the argument names in messages, such as ``"reference_"``.

    Raises:
        TypeError: See :func:`check_features`.
        ValueError: See :func:`check_features`, or if the two batch sizes differ.

    Example:
        >>> check_pairs(torch.zeros(3, 2), torch.zeros(4, 2))
        Traceback (most recent call last):
        ...
        ValueError: `images` and `texts` must hold the same number of pairs, got 3 images and 4 texts.
    """
    images = check_features(images, f"{prefix}images", image_dim, check_finite=False)
    texts = check_features(texts, f"{prefix}texts", text_dim, check_finite=False)
    if images.shape[0] != texts.shape[0]:
        raise ValueError(
            f"`{prefix}images` and `{prefix}texts` must hold the same number of pairs,"
            f" got {images.shape[0]} images and {texts.shape[0]} texts."
        )
    if images.device != texts.device:
        raise ValueError(
            f"`{prefix}images` and `{prefix}texts` must be on the same device, got {images.device} and {texts.device}."
        )
    check_features(images, f"{prefix}images", image_dim)
    check_features(texts, f"{prefix}texts", text_dim)
    return images, texts


def check_eps(eps: object) -> float:
    """Check the regulariser ``eps`` (a finite float >= 0) and return it as a float.

    Example:
        >>> check_eps(-1.0)
        Traceback (most recent call last):
        ...
        ValueError: `eps` must be a finite number >= 0, got -1.0.
    """
    if isinstance(eps, bool) or not isinstance(eps, (int, float)):
        raise TypeError(f"`eps` must be a float >= 0, got {type(eps).__name__}.")
    if not (eps >= 0.0 and eps < float("inf")):
        raise ValueError(f"`eps` must be a finite number >= 0, got {eps}.")
    return float(eps)


#: Version of the metric's state layout, recorded in its ``state_format`` state. Version 1 (mid-metric 0.1) had no
#: record; version 2 added it, with the same packed moments.
STATE_FORMAT_VERSION = 2

# Largest magnitude accepted in packed moments from outside (``merge_state``, ``load_state_dict``). Features are
# bounded by MAX_FEATURE_MAGNITUDE, so a state built from them stays below ~1e217; this leaves room for merging.
_MAX_STATE_MAGNITUDE = 1e250
_MAX_COUNT = 2.0**53  # counts are float64 and exact up to here


def state_format(image_dim: int, text_dim: int) -> Tensor:
    """Return the record of a metric's state layout: ``[STATE_FORMAT_VERSION, image_dim, text_dim]`` (int64).

    Example:
        >>> state_format(768, 512).tolist()
        [2, 768, 512]
    """
    return torch.tensor([STATE_FORMAT_VERSION, image_dim, text_dim], dtype=torch.int64)


def describe_state_format(record: Tensor) -> str:
    """Describe a state-format record in words, for error messages.

    Example:
        >>> describe_state_format(state_format(6, 10))
        'state format 2 with (image_dim, text_dim) = (6, 10)'
    """
    version, image_dim, text_dim = (int(v) for v in record.tolist())
    return f"state format {version} with (image_dim, text_dim) = ({image_dim}, {text_dim})"


def check_state_format(record: object, name: str, expected: Tensor) -> Tensor:
    """Check a state-format record against this metric's and return it as int64 on ``expected``'s device.

    Raises:
        ValueError: If ``record`` is not a 3-element integer tensor, or differs from ``expected``.

    Example:
        >>> check_state_format(state_format(6, 10), "state_format", state_format(8, 8))
        Traceback (most recent call last):
        ...
        ValueError: `state_format` is state format 2 with (image_dim, text_dim) = (6, 10), but this metric has \
state format 2 with (image_dim, text_dim) = (8, 8); statistics of another feature split cannot be combined.
    """
    if not isinstance(record, Tensor) or record.shape != (3,) or record.dtype.is_floating_point or record.is_complex():
        raise ValueError(
            f"`{name}` must be an integer tensor [format version, image_dim, text_dim], got"
            f" {getattr(record, 'shape', type(record).__name__)}."
        )
    record = record.to(device=expected.device, dtype=torch.int64)
    if not torch.equal(record, expected):
        raise ValueError(
            f"`{name}` is {describe_state_format(record)}, but this metric has {describe_state_format(expected)};"
            " statistics of another feature split cannot be combined."
        )
    return record


def same_state_format(stacked: Tensor) -> Tensor:
    """Reduce stacked state-format records (the ``dist_reduce_fx`` of ``state_format``): all must be equal.

    Raises:
        ValueError: If the records differ.

    Example:
        >>> same_state_format(torch.stack([state_format(4, 4), state_format(4, 4)])).tolist()
        [2, 4, 4]
    """
    if stacked.ndim == 1:
        return stacked
    first = stacked[0]
    for other in stacked[1:]:
        if not torch.equal(other, first):
            described = ", ".join(describe_state_format(row) for row in stacked)
            raise ValueError(f"The metric states to combine have different layouts: {described}.")
    return first


def check_packed_moments(packed: object, name: str, dim: int) -> Tensor:
    """Check packed moments that come from outside the metric (a checkpoint, another metric's state).

    The tensor must be a floating 1-D tensor of length ``(dim + 1) ** 2`` (see :mod:`mid_metric.moments`), finite and
    of bounded magnitude, with a count that is a whole number in ``[0, 2**53]``; an empty state must be all zeros.

    Args:
        packed: The value to check.
        name: Its name in error messages, such as ``"candidate_moments"``.
        dim: The joint feature dimension ``image_dim + text_dim``.

    Returns:
        ``packed``.

    Raises:
        ValueError: If any of these conditions fails.

    Example:
        >>> state = moments.empty_moments(2)
        >>> state[0] = 2.5
        >>> check_packed_moments(state, "reference_moments", 2)
        Traceback (most recent call last):
        ...
        ValueError: `reference_moments` has a sample count of 2.5; a count must be a whole number from 0 to 2**53.
    """
    expected = moments.packed_size(dim)
    if not isinstance(packed, Tensor) or not packed.dtype.is_floating_point or packed.shape != (expected,):
        found = f"{packed.dtype} tensor of shape {tuple(packed.shape)}" if isinstance(packed, Tensor) else packed
        raise ValueError(
            f"`{name}` must be a floating tensor of packed moments of shape ({expected},) for a joint feature"
            f" dimension of {dim}, got {found if isinstance(found, str) else type(found).__name__}."
        )
    if not bool((packed.abs() <= _MAX_STATE_MAGNITUDE).all()):
        raise ValueError(f"`{name}` holds NaN, Inf or values above {_MAX_STATE_MAGNITUDE:g}; it is not a valid state.")
    count = float(packed[0])
    if not (0.0 <= count <= _MAX_COUNT and count == math.floor(count)):
        raise ValueError(f"`{name}` has a sample count of {count:g}; a count must be a whole number from 0 to 2**53.")
    if count == 0.0 and bool(packed.any()):
        raise ValueError(f"`{name}` has a sample count of 0 but non-zero sums; it is not a valid state.")
    return packed


def check_finite_result(value: Tensor, what: str) -> Tensor:
    """Raise instead of returning a NaN or infinite result; return ``value`` otherwise.

    Raises:
        ValueError: If any element of ``value`` is NaN or infinite.

    Example:
        >>> check_finite_result(torch.tensor([1.0, float("inf")]), "PMI")
        Traceback (most recent call last):
        ...
        ValueError: PMI is not finite (1 of 2 values): the pairs are too far from the reference, or its covariance \
is too ill-conditioned, for float64. Set `eps` > 0 or check the features' scale.
    """
    finite = torch.isfinite(value)
    if not bool(finite.all()):
        raise ValueError(
            f"{what} is not finite ({int((~finite).sum())} of {value.numel()} values): the pairs are too far from the"
            " reference, or its covariance is too ill-conditioned, for float64. Set `eps` > 0 or check the features'"
            " scale."
        )
    return value


def check_bool(value: object, name: str) -> bool:
    """Check that ``value`` is a bool and return it.

    Example:
        >>> check_bool(1, "reset_real_features")
        Traceback (most recent call last):
        ...
        TypeError: `reset_real_features` must be a bool, got 1.
    """
    if not isinstance(value, bool):
        raise TypeError(f"`{name}` must be a bool, got {value!r}.")
    return value


def check_feature_dims(feature: object) -> tuple[int, int]:
    """Return ``(image_dim, text_dim)`` from an int (both modalities) or a pair of ints.

    Raises:
        TypeError: If ``feature`` is neither.
        ValueError: If a dimension is not positive.

    Example:
        >>> check_feature_dims(768), check_feature_dims((512, 768))
        ((768, 768), (512, 768))
    """
    message = f"`feature` must be an int or a pair (image_dim, text_dim) of ints, got {feature!r}."
    if isinstance(feature, bool):
        raise TypeError(message)
    if isinstance(feature, int):
        dims = (feature, feature)
    elif (
        isinstance(feature, (tuple, list))
        and len(feature) == 2
        and all(isinstance(d, int) and not isinstance(d, bool) for d in feature)
    ):
        dims = (feature[0], feature[1])
    else:
        raise TypeError(message)
    if min(dims) < 1:
        raise ValueError(f"`feature` dimensions must be positive, got {dims}.")
    return dims


def check_bias_correction(bias_correction: object, eps: float) -> bool:
    """Validate the ``bias_correction`` argument against ``eps`` and return it.

    Raises:
        TypeError: If ``bias_correction`` is not a bool.
        ValueError: If ``bias_correction`` is ``True`` while ``eps > 0``: the Wishart corrections hold for the
            unregularised covariances only.

    Example:
        >>> check_bias_correction(True, 0.0)
        True
    """
    if not isinstance(bias_correction, bool):
        raise TypeError(f"`bias_correction` must be a bool, got {bias_correction!r}.")
    if bias_correction and eps > 0.0:
        raise ValueError(
            f"`bias_correction=True` needs `eps=0` (got eps={eps}): the correction is derived for unregularised"
            " covariances. Drop `eps`; the corrected estimator does not need regularisation beyond N > Dx + Dy + 2."
        )
    return bias_correction


def check_reference_count(count: int, joint_dim: int, eps: float, bias_correction: bool = False) -> None:
    """Check that ``count`` reference pairs can fit the reference Gaussian (and its bias correction).

    With ``eps = 0`` the joint covariance needs more than ``image_dim + text_dim`` pairs to be full rank; the
    bias-corrected estimator needs more than ``image_dim + text_dim + 2``.

    Raises:
        ValueError: If there are too few pairs.

    Example:
        >>> check_reference_count(8, 8, eps=0.0)
        Traceback (most recent call last):
        ...
        ValueError: MID needs more than 8 reference pairs (image dim + text dim = 8) for a full-rank joint \
covariance, got 8. Pass at least 9 reference pairs, or set `eps` > 0 (e.g. eps=5e-4) to regularise the covariances.
    """
    if count == 0:
        raise ValueError(
            "No reference pairs: call `update(images, texts, real=True)` with the real pairs (or load a reference"
            " statistics file) before computing MID."
        )
    if eps == 0.0 and count <= joint_dim:
        raise ValueError(
            f"MID needs more than {joint_dim} reference pairs (image dim + text dim = {joint_dim}) for a full-rank"
            f" joint covariance, got {count}. Pass at least {joint_dim + 1} reference pairs, or set `eps` > 0 (e.g."
            " eps=5e-4) to regularise the covariances."
        )
    if count < 2:
        raise ValueError(f"MID needs at least 2 reference pairs for a covariance, got {count}.")
    if bias_correction and count <= joint_dim + 2:
        raise ValueError(
            f"The bias-corrected MID needs more than {joint_dim + 2} reference pairs (image dim + text dim + 2), got"
            f" {count}."
        )


def check_candidate_count(count: int, what: str = "MID") -> None:
    """Check that there are at least 2 candidate pairs, which a scatter divided by ``M - 1`` needs.

    Raises:
        ValueError: If ``count < 2``.

    Example:
        >>> check_candidate_count(1)
        Traceback (most recent call last):
        ...
        ValueError: MID needs at least 2 candidate pairs, got 1: call `update(images, texts, real=False)` with the \
generated pairs before computing.
    """
    if count < 2:
        raise ValueError(
            f"{what} needs at least 2 candidate pairs, got {count}: call `update(images, texts, real=False)` with the"
            " generated pairs before computing."
        )
