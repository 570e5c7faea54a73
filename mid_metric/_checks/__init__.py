"""Every rule on arguments, features, counts and states, each with its one error message.

Every check raises ``TypeError`` or ``ValueError`` with a message that names the offending argument; none of them
modifies anything, so a caller that checks everything before it changes anything leaves a metric's state as it was
when a check fails. The functional API, the metric classes and the command line all call these.
"""

from __future__ import annotations

import math
from typing import Optional, Union

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
    # One flag (one host sync) catches NaN and Inf too: they fail the comparison with a finite bound of the dtype.
    if check_finite and features.numel() > 0 and not bool(_within_bound(features)):
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


def _within_bound(features: Tensor) -> Tensor:
    """A 0-dim bool tensor: every value of ``features`` is finite and of magnitude at most the bound.

    One pass without temporaries: ``aminmax`` propagates NaN, and NaN and Inf fail the comparisons with a finite
    bound.
    """
    bound = min(MAX_FEATURE_MAGNITUDE, torch.finfo(features.dtype).max)
    smallest, largest = torch.aminmax(features)
    return (largest <= bound) & (smallest >= -bound)


def check_within_bound(named_features: dict[str, Tensor]) -> None:
    """Reject NaN, Inf and magnitudes above :data:`MAX_FEATURE_MAGNITUDE` in several tensors, with one host sync.

    The tensors must have passed :func:`check_features` with ``check_finite=False`` already; when one fails, the
    error is the one :func:`check_features` gives for it.

    Raises:
        ValueError: As :func:`check_features`, for the first offending tensor.

    Example:
        >>> check_within_bound({"images": torch.zeros(2, 3), "texts": torch.tensor([[float("nan")]] * 2)})
        Traceback (most recent call last):
        ...
        ValueError: `texts` contains NaN or Inf values (in 2 of 2 rows).
    """
    within = [_within_bound(features) for features in named_features.values() if features.numel() > 0]
    if not within:
        return
    # One flag per tensor, combined on the device: one host sync for the call.
    if bool(torch.stack([flag.to(within[0].device) for flag in within]).all()):
        return
    for name, features in named_features.items():
        check_features(features, name)


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
        ValueError: `images` and `texts` must hold the same number of pairs, got 3 and 4 rows.
    """
    images = check_features(images, f"{prefix}images", image_dim, check_finite=False)
    texts = check_features(texts, f"{prefix}texts", text_dim, check_finite=False)
    check_same_batch(images, texts, f"{prefix}images", f"{prefix}texts")
    check_within_bound({f"{prefix}images": images, f"{prefix}texts": texts})
    return images, texts


def check_same_batch(first: Tensor, second: Tensor, first_name: str, second_name: str) -> None:
    """Check that two feature batches hold the same number of rows and live on the same device.

    Raises:
        ValueError: If they do not.

    Example:
        >>> check_same_batch(torch.zeros(2, 1), torch.zeros(2, 3), "images", "texts")
    """
    if first.shape[0] != second.shape[0]:
        raise ValueError(
            f"`{first_name}` and `{second_name}` must hold the same number of pairs,"
            f" got {first.shape[0]} and {second.shape[0]} rows."
        )
    if first.device != second.device:
        raise ValueError(
            f"`{first_name}` and `{second_name}` must be on the same device, got {first.device} and {second.device}."
        )


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
#: Version of the companion metrics' state layout (CLIP-S, RefCLIP-S, CLIP-R-Precision, InfoNCE), recorded in
#: their ``state_format`` state like MID's.
COMPANION_STATE_FORMAT_VERSION = 1

# Largest magnitude accepted in packed moments from outside (``merge_state``, ``load_state_dict``). Features are
# bounded by MAX_FEATURE_MAGNITUDE, so a state built from them stays below ~1e217; this leaves room for merging.
_MAX_STATE_MAGNITUDE = 1e250
_MAX_COUNT = 2.0**53  # counts are float64 and exact up to here


def state_format(image_dim: int, text_dim: int, version: int = STATE_FORMAT_VERSION) -> Tensor:
    """Return the record of a metric's state layout: ``[version, image_dim, text_dim]`` (int64).

    ``version`` is :data:`STATE_FORMAT_VERSION` for MID and :data:`COMPANION_STATE_FORMAT_VERSION` for the
    companion metrics (CLIP-S, RefCLIP-S, CLIP-R-Precision, InfoNCE).

    Example:
        >>> state_format(768, 512).tolist()
        [2, 768, 512]
    """
    return torch.tensor([version, image_dim, text_dim], dtype=torch.int64)


def describe_state_format(record: Tensor) -> str:
    """Describe a state-format record in words, for error messages.

    Example:
        >>> describe_state_format(state_format(6, 10))
        'state format 2 with (image_dim, text_dim) = (6, 10)'
    """
    if record.numel() != 3:  # another settings record (the jackknife's [groups, key])
        return f"settings {record.tolist()}"
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


def check_level(level: object, allow_none: bool = False) -> None:
    """Check a confidence level: a number in ``(0, 1)`` (or ``None`` where ``allow_none``).

    Raises:
        ValueError: If it is not.

    Example:
        >>> check_level(1.5)
        Traceback (most recent call last):
        ...
        ValueError: `level` must be a number in (0, 1), got 1.5.
    """
    if allow_none and level is None:
        return
    if isinstance(level, bool) or not isinstance(level, (int, float)) or not 0.0 < float(level) < 1.0:
        expected = "a number in (0, 1) or None" if allow_none else "a number in (0, 1)"
        raise ValueError(f"`level` must be {expected}, got {level!r}.")


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


def check_bias_correction(bias_correction: object, eps: float, allow_jackknife: bool = False) -> Union[bool, str]:
    """Validate the ``bias_correction`` argument against ``eps`` and return it.

    ``False`` is the paper's estimator, ``True`` the Gaussian correction and ``"jackknife"`` the grouped jackknife
    on top of it (:mod:`mid_metric.jackknife`), accepted only where the caller implements it
    (``allow_jackknife=True``).

    Raises:
        TypeError: If ``bias_correction`` is not a bool (or ``"jackknife"``, when allowed).
        ValueError: If a correction is asked for while ``eps > 0`` (both are derived for unregularised
            covariances), or ``"jackknife"`` where it is not allowed.

    Example:
        >>> check_bias_correction(True, 0.0)
        True
        >>> check_bias_correction("jackknife", 0.0, allow_jackknife=True)
        'jackknife'
    """
    if isinstance(bias_correction, str) and bias_correction == "jackknife":
        if not allow_jackknife:
            raise ValueError(
                "`bias_correction='jackknife'` is not available here: it needs the rows in groups"
                " (mid_metric.jackknife.jackknife_divergence). Use True or False."
            )
        if eps > 0.0:
            raise ValueError(
                f"`bias_correction='jackknife'` needs `eps=0` (got eps={eps}): it jackknifes the Gaussian correction,"
                " which is derived for unregularised covariances. Drop `eps`."
            )
        return bias_correction
    if not isinstance(bias_correction, bool):
        expected = "True, False or 'jackknife'" if allow_jackknife else "a bool"
        raise TypeError(f"`bias_correction` must be {expected}, got {bias_correction!r}.")
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


# ---------------------------------------------------------------- the companion metrics (CLIP-S, R-precision, InfoNCE)
def check_positive_number(value: object, name: str) -> float:
    """Check that ``value`` is a finite number > 0 (not a bool) and return it as a float.

    Raises:
        TypeError: If ``value`` is not an int or a float.
        ValueError: If it is not finite or not positive.

    Example:
        >>> check_positive_number(0.0, "temperature")
        Traceback (most recent call last):
        ...
        ValueError: `temperature` must be a finite number > 0, got 0.0.
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"`{name}` must be a number > 0, got {type(value).__name__}.")
    if not (0.0 < value < float("inf")):
        raise ValueError(f"`{name}` must be a finite number > 0, got {value}.")
    return float(value)


def check_weight(weight: object) -> float:
    """Check CLIP-S's ``weight`` (a finite number > 0: 2.5 in Hessel et al., 100 in torchmetrics) and return it.

    Example:
        >>> check_weight(100)
        100.0
    """
    return check_positive_number(weight, "weight")


def check_temperature(temperature: object) -> float:
    """Check InfoNCE's ``temperature`` (a finite number > 0; CLIP's logit scale is 1 / 0.01) and return it.

    Example:
        >>> check_temperature(0.01)
        0.01
    """
    return check_positive_number(temperature, "temperature")


def check_positive_int(value: object, name: str) -> int:
    """Check that ``value`` is an int >= 1 (not a bool) and return it.

    Raises:
        TypeError: If ``value`` is not an int.
        ValueError: If it is below 1.

    Example:
        >>> check_positive_int(0, "num_negatives")
        Traceback (most recent call last):
        ...
        ValueError: `num_negatives` must be an int >= 1, got 0.
    """
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"`{name}` must be an int >= 1, got {value!r}.")
    if value < 1:
        raise ValueError(f"`{name}` must be an int >= 1, got {value}.")
    return value


def check_choice(value: object, name: str, choices: tuple[str, ...]) -> str:
    """Check that ``value`` is one of the strings ``choices`` and return it.

    Example:
        >>> check_choice("random", "negatives", ("replacement", "distinct"))
        Traceback (most recent call last):
        ...
        ValueError: `negatives` must be one of 'replacement', 'distinct'; got 'random'.
    """
    if not isinstance(value, str) or value not in choices:
        listed = ", ".join(repr(choice) for choice in choices)
        raise ValueError(f"`{name}` must be one of {listed}; got {value!r}.")
    return value


def check_joint_embedding(image_dim: int, text_dim: int, what: str) -> None:
    """Check that image and text features have one size, as the cosine similarities of ``what`` need.

    Raises:
        ValueError: If the sizes differ.

    Example:
        >>> check_joint_embedding(512, 768, "CLIPScore")
        Traceback (most recent call last):
        ...
        ValueError: CLIPScore compares image and text features by their cosine similarity, so they must live in \
one embedding space of one size; got `feature` = (512, 768).
    """
    if image_dim != text_dim:
        raise ValueError(
            f"{what} compares image and text features by their cosine similarity, so they must live in one"
            f" embedding space of one size; got `feature` = ({image_dim}, {text_dim})."
        )


def check_nonzero_rows(features: Tensor, name: str) -> Tensor:
    """Check that no row of ``features`` is the zero vector (which has no direction, so no cosine) and return it.

    Raises:
        ValueError: If some row is zero.

    Example:
        >>> check_nonzero_rows(torch.tensor([[1.0, 0.0], [0.0, 0.0]]), "texts")
        Traceback (most recent call last):
        ...
        ValueError: `texts` has 1 row(s) of zero norm (the first is row 1): a cosine similarity needs a non-zero \
vector.
    """
    if features.numel() == 0:
        return features
    zero = ~(features != 0).any(dim=1)
    if bool(zero.any()):
        first = int(zero.nonzero()[0, 0])
        raise ValueError(
            f"`{name}` has {int(zero.sum())} row(s) of zero norm (the first is row {first}): a cosine similarity"
            " needs a non-zero vector."
        )
    return features


def check_float32_range(features: Tensor, name: str, what: str) -> Tensor:
    """Check that ``features`` fit in float32, in which ``what`` stores them, and return them.

    Raises:
        ValueError: If a value's magnitude exceeds the float32 range.

    Example:
        >>> check_float32_range(torch.tensor([[1e300, 1.0]], dtype=torch.float64), "images", "InfoNCE")
        Traceback (most recent call last):
        ...
        ValueError: `images` holds values of magnitude up to 1e+300, beyond float32 (3.4e+38), in which InfoNCE \
stores the candidate features. Pass embeddings of ordinary scale (CLIP's are L2-normalised).
    """
    bound = torch.finfo(torch.float32).max
    if features.numel() > 0 and features.dtype == torch.float64 and not bool((features.abs() <= bound).all()):
        largest = float(features.abs().max())
        raise ValueError(
            f"`{name}` holds values of magnitude up to {largest:.3g}, beyond float32 ({bound:.2g}), in which {what}"
            " stores the candidate features. Pass embeddings of ordinary scale (CLIP's are L2-normalised)."
        )
    return features


def check_capacity(stored: int, incoming: int, max_samples: int, what: str, incoming_what: str = "this batch") -> None:
    """Refuse a batch that would take ``what`` beyond ``max_samples`` stored pairs (it never truncates silently).

    Raises:
        ValueError: If ``stored + incoming > max_samples``.

    Example:
        >>> check_capacity(29_990, 20, 30_000, "InfoNCE")
        Traceback (most recent call last):
        ...
        ValueError: InfoNCE stores at most `max_samples` = 30000 candidate pairs; it holds 29990 and this batch has \
20. Nothing was added: compute() on the pairs so far, reset(), or build the metric with a larger `max_samples` (the \
features take 4 (image_dim + text_dim) bytes a pair).
    """
    if stored + incoming > max_samples:
        raise ValueError(
            f"{what} stores at most `max_samples` = {max_samples} candidate pairs; it holds {stored} and"
            f" {incoming_what} has {incoming}. Nothing was added: compute() on the pairs so far, reset(), or build the"
            " metric with a larger `max_samples` (the features take 4 (image_dim + text_dim) bytes a pair)."
        )


def check_pair_count(count: int, minimum: int, what: str, reason: str = "") -> None:
    """Check that ``what`` has at least ``minimum`` candidate pairs.

    Raises:
        ValueError: If ``count < minimum``.

    Example:
        >>> check_pair_count(0, 1, "CLIPScore")
        Traceback (most recent call last):
        ...
        ValueError: CLIPScore needs at least 1 candidate pair(s), got 0: call `update(images, texts)` with the \
generated pairs before computing.
    """
    if count < minimum:
        raise ValueError(
            f"{what} needs at least {minimum} candidate pair(s){reason}, got {count}: call `update(images, texts)`"
            " with the generated pairs before computing."
        )


def check_references(
    references: object, count: int, dim: Optional[int], reference_mask: object = None, check_finite: bool = True
) -> tuple[Tensor, Tensor]:
    """Check the reference captions' features of ``count`` candidate pairs; return them flattened with their owners.

    ``references`` is a list of ``count`` tensors ``(R_i, dim)`` (``R_i >= 1``), or a tensor ``(count, R, dim)``
    with an optional boolean ``reference_mask`` ``(count, R)`` that marks the real references among padding
    (``None``: all of them). Masked-out rows are never read, so they may hold anything.

    Returns:
        ``(flat, owners)``: the ``T`` references ``(T, dim)`` and, for each, the index of its pair (int64 ``(T,)``).

    Raises:
        TypeError: If ``references`` or ``reference_mask`` has the wrong type.
        ValueError: If a shape is wrong, a pair has no reference, or a reference is NaN, Inf or too large.

    Example:
        >>> flat, owners = check_references([torch.ones(2, 3), torch.ones(1, 3)], 2, 3)
        >>> flat.shape, owners.tolist()
        (torch.Size([3, 3]), [0, 0, 1])
        >>> check_references(torch.ones(2, 4, 3), 2, 3, torch.tensor([[True] * 4, [False] * 4]))
        Traceback (most recent call last):
        ...
        ValueError: `reference_mask` leaves 1 pair(s) without a reference (the first is pair 1); every candidate \
needs at least one.
    """
    expected = f"a list of {count} tensors of shape (R_i, {dim if dim is not None else 'features'})"
    if isinstance(references, Tensor):
        if references.dtype not in FLOATING_DTYPES:
            raise TypeError(f"`references` must be a floating tensor, got {references.dtype}.")
        if references.ndim != 3 or references.shape[0] != count or (dim is not None and references.shape[2] != dim):
            raise ValueError(
                f"`references` must be {expected}, or a tensor of shape ({count}, R, {dim}) with a `reference_mask`,"
                f" got a tensor of shape {tuple(references.shape)}."
            )
        if references.shape[1] == 0 and count > 0:
            raise ValueError("`references` has R = 0 references per pair; every candidate needs at least one.")
        if reference_mask is None:
            mask = torch.ones(references.shape[:2], dtype=torch.bool, device=references.device)
        else:
            if not isinstance(reference_mask, Tensor) or reference_mask.dtype != torch.bool:
                found = reference_mask.dtype if isinstance(reference_mask, Tensor) else type(reference_mask).__name__
                raise TypeError(f"`reference_mask` must be a bool tensor of shape (B, R), got {found}.")
            if reference_mask.shape != references.shape[:2]:
                raise ValueError(
                    f"`reference_mask` must have shape {tuple(references.shape[:2])} (pairs, references), got"
                    f" {tuple(reference_mask.shape)}."
                )
            if reference_mask.device != references.device:
                raise ValueError(
                    f"`reference_mask` must be on the device of `references` ({references.device}), got"
                    f" {reference_mask.device}."
                )
            mask = reference_mask
        empty = ~mask.any(dim=1)
        if bool(empty.any()):
            raise ValueError(
                f"`reference_mask` leaves {int(empty.sum())} pair(s) without a reference (the first is pair"
                f" {int(empty.nonzero()[0, 0])}); every candidate needs at least one."
            )
        flat = references[mask]
        owners = torch.arange(count, device=references.device).repeat_interleave(mask.sum(dim=1))
        check_features(flat, "references", dim, check_finite=check_finite)
        return flat, owners
    if reference_mask is not None:
        raise ValueError(
            "`reference_mask` marks the real references of a (B, R, D) tensor of `references`; a list of tensors"
            " needs none (each holds its own R_i references)."
        )
    if not isinstance(references, (list, tuple)):
        raise TypeError(
            f"`references` must be {expected}, or a tensor of shape ({count}, R, {dim}), got"
            f" {type(references).__name__}."
        )
    if len(references) != count:
        raise ValueError(f"`references` must hold one entry per pair ({count}), got {len(references)}.")
    if count == 0:
        return torch.empty(0, dim or 0), torch.empty(0, dtype=torch.int64)
    checked = []
    for index, item in enumerate(references):
        item = check_features(item, f"references[{index}]", dim, check_finite=check_finite)
        if item.shape[0] == 0:
            raise ValueError(f"`references[{index}]` holds no reference; every candidate needs at least one.")
        if item.device != references[0].device:
            raise ValueError(
                f"`references[{index}]` is on {item.device}, unlike `references[0]` ({references[0].device})."
            )
        checked.append(item)
    lengths = torch.tensor([item.shape[0] for item in checked], device=checked[0].device)
    dtype = torch.promote_types(checked[0].dtype, torch.float32)
    flat = torch.cat([item.to(dtype) for item in checked])
    return flat, torch.arange(count, device=flat.device).repeat_interleave(lengths)


def check_reference_captions(references: object, count: int) -> list[list[str]]:
    """Check the reference captions (a list of ``count`` non-empty lists of strings) and return them.

    Raises:
        TypeError: If ``references`` or one of its entries is not a list of strings.
        ValueError: If the number of entries differs from ``count`` or an entry is empty.

    Example:
        >>> check_reference_captions([["a dog"], []], 2)
        Traceback (most recent call last):
        ...
        ValueError: `references[1]` holds no reference caption; every candidate needs at least one.
    """
    if not isinstance(references, (list, tuple)):
        raise TypeError(
            f"`references` must be a list of {count} lists of reference captions, got {type(references).__name__}."
        )
    if len(references) != count:
        raise ValueError(f"`references` must hold one list of captions per pair ({count}), got {len(references)}.")
    checked = []
    for index, captions in enumerate(references):
        if not isinstance(captions, (list, tuple)) or not all(isinstance(text, str) for text in captions):
            raise TypeError(f"`references[{index}]` must be a list of strings, got {captions!r:.80}.")
        if len(captions) == 0:
            raise ValueError(f"`references[{index}]` holds no reference caption; every candidate needs at least one.")
        checked.append(list(captions))
    return checked


def _as_tensor_list(value: object, name: str, ndim: int) -> list[Tensor]:
    items = [value] if isinstance(value, Tensor) else value
    if not isinstance(items, (list, tuple)) or not all(isinstance(item, Tensor) for item in items):
        raise ValueError(f"`{name}` must be a list of tensors, got {type(value).__name__}.")
    for item in items:
        if not item.dtype.is_floating_point or item.ndim != ndim:
            raise ValueError(
                f"`{name}` must hold floating tensors of {ndim} dimension(s), got a {item.dtype} tensor of shape"
                f" {tuple(item.shape)}."
            )
    return list(items)


def check_feature_rows_state(value: object, name: str, width: int) -> list[Tensor]:
    """Check a list state of stored feature rows ``(n_i, width)`` that comes from outside; return it as a list.

    Raises:
        ValueError: If it is not a list of floating 2-D tensors of ``width`` columns, or a value is NaN, Inf or too
            large.

    Example:
        >>> check_feature_rows_state([torch.ones(2, 3)], "candidate_features", 4)
        Traceback (most recent call last):
        ...
        ValueError: `candidate_features` must hold rows of 4 features, got a tensor of shape (2, 3).
    """
    items = _as_tensor_list(value, name, 2)
    for item in items:
        if item.shape[1] != width:
            raise ValueError(f"`{name}` must hold rows of {width} features, got a tensor of shape {tuple(item.shape)}.")
        bound = min(MAX_FEATURE_MAGNITUDE, torch.finfo(torch.float32).max)
        if item.numel() > 0 and not bool((item.abs() <= bound).all()):
            raise ValueError(f"`{name}` holds NaN, Inf or values beyond float32; it is not a valid state.")
    return items


def check_values_state(value: object, name: str, low: float, high: float) -> list[Tensor]:
    """Check a list state of per-pair values (1-D tensors in ``[low, high]``) that comes from outside.

    Raises:
        ValueError: If it is not a list of floating 1-D tensors, or a value is NaN or out of range.

    Example:
        >>> check_values_state([torch.tensor([0.5, 1.5])], "pair_cosines", -1.0, 1.0)
        Traceback (most recent call last):
        ...
        ValueError: `pair_cosines` holds NaN or values outside [-1, 1]; it is not a valid state.
    """
    items = _as_tensor_list(value, name, 1)
    slack = 1e-9 * max(1.0, abs(low), abs(high))
    for item in items:
        if item.numel() > 0 and not bool(((item >= low - slack) & (item <= high + slack)).all()):
            raise ValueError(f"`{name}` holds NaN or values outside [{low:g}, {high:g}]; it is not a valid state.")
    return items


def check_sums_state(value: object, name: str, length: int, bound: float) -> Tensor:
    """Check a ``[count, sum_1, ...]`` state of ``length`` float64 values that comes from outside; return it.

    The count must be a whole number in ``[0, 2**53]`` and every sum at most ``bound`` times the count in
    magnitude (each summand is at most ``bound``); an empty state must be all zeros.

    Raises:
        ValueError: If any of these conditions fails.

    Example:
        >>> check_sums_state(torch.tensor([2.0, 3.0], dtype=torch.float64), "sums", 2, 1.0)
        Traceback (most recent call last):
        ...
        ValueError: `sums` holds a sum of magnitude 3 for 2 pairs, above the bound 1 a pair; it is not a valid state.
    """
    if not isinstance(value, Tensor) or not value.dtype.is_floating_point or value.shape != (length,):
        found = f"shape {tuple(value.shape)}" if isinstance(value, Tensor) else type(value).__name__
        raise ValueError(f"`{name}` must be a floating tensor of shape ({length},), got {found}.")
    if not bool(torch.isfinite(value).all()):
        raise ValueError(f"`{name}` holds NaN or Inf; it is not a valid state.")
    count = float(value[0])
    if not (0.0 <= count <= _MAX_COUNT and count == math.floor(count)):
        raise ValueError(f"`{name}` has a pair count of {count:g}; a count must be a whole number from 0 to 2**53.")
    largest = float(value[1:].abs().max()) if length > 1 else 0.0
    if largest > bound * count * (1 + 1e-9) + 1e-9:
        raise ValueError(
            f"`{name}` holds a sum of magnitude {largest:g} for {count:g} pairs, above the bound {bound:g} a pair;"
            " it is not a valid state."
        )
    return value


def check_settings_state(value: object, name: str, expected: Tensor, described: str) -> Tensor:
    """Check a state that records the settings a metric's sums depend on; it must equal this metric's.

    Raises:
        ValueError: If ``value`` differs from ``expected``.

    Example:
        >>> own = torch.tensor([2.5], dtype=torch.float64)
        >>> check_settings_state(torch.tensor([100.0]), "settings", own, "weight")
        Traceback (most recent call last):
        ...
        ValueError: `settings` records weight [100.0], but this metric has [2.5]; states computed with other \
settings cannot be combined.
    """
    if not isinstance(value, Tensor) or value.shape != expected.shape or not value.dtype.is_floating_point:
        found = f"shape {tuple(value.shape)}" if isinstance(value, Tensor) else type(value).__name__
        raise ValueError(f"`{name}` must be a floating tensor of shape {tuple(expected.shape)}, got {found}.")
    value = value.to(device=expected.device, dtype=expected.dtype)
    if not torch.equal(value, expected):
        raise ValueError(
            f"`{name}` records {described} {value.tolist()}, but this metric has {expected.tolist()}; states"
            " computed with other settings cannot be combined."
        )
    return value


def same_settings(stacked: Tensor) -> Tensor:
    """Reduce stacked settings records (their ``dist_reduce_fx``): all must be equal.

    Raises:
        ValueError: If the records differ.

    Example:
        >>> same_settings(torch.tensor([[2.5], [2.5]], dtype=torch.float64)).tolist()
        [2.5]
    """
    if stacked.ndim == 1:
        return stacked
    first = stacked[0]
    for other in stacked[1:]:
        if not torch.equal(other, first):
            raise ValueError(f"The metric states to combine were computed with different settings: {stacked.tolist()}.")
    return first


def check_caption_list(value: object, name: str, expected: Optional[int] = None) -> list[str]:
    """Check that ``value`` is a list of strings (of length ``expected`` when given) and return it as a list.

    Raises:
        TypeError: If ``value`` is a single string or holds something other than strings.
        ValueError: If its length differs from ``expected``.

    Example:
        >>> check_caption_list(["a cat", 3], "images")
        Traceback (most recent call last):
        ...
        TypeError: `images` must be a list of strings (captions), got int at position 1.
    """
    if isinstance(value, str) or not isinstance(value, (list, tuple)):
        found = "a single str; wrap it in a list" if isinstance(value, str) else type(value).__name__
        raise TypeError(f"`{name}` must be a list of strings (captions), got {found}.")
    for index, text in enumerate(value):
        if not isinstance(text, str):
            raise TypeError(
                f"`{name}` must be a list of strings (captions), got {type(text).__name__} at position {index}."
            )
    if expected is not None and len(value) != expected:
        raise ValueError(f"`{name}` must hold {expected} captions (one per pair), got {len(value)}.")
    return list(value)
