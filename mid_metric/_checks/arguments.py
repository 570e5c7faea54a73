"""Rules on constructor and call arguments: flags, numbers, levels, choices, feature sizes and the bias correction."""

from __future__ import annotations

import math
from typing import Union


def check_eps(eps: object) -> float:
    """Check the regulariser ``eps`` (a finite number >= 0, not a bool) and return it as a float.

    Raises:
        TypeError: If ``eps`` is not an int or a float.
        ValueError: If it is not finite or is negative.

    Example:
        >>> check_eps(-1.0)
        Traceback (most recent call last):
        ...
        ValueError: `eps` must be a finite number >= 0, got -1.0.
    """
    return _check_number(eps, "eps", zero_allowed=True)


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
    return _check_number(value, name, zero_allowed=False)


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


def _check_number(value: object, name: str, zero_allowed: bool) -> float:
    """The one rule behind :func:`check_eps` and :func:`check_positive_number`: a finite number above (or at) zero."""
    bound = ">= 0" if zero_allowed else "> 0"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"`{name}` must be a number {bound}, got {type(value).__name__}.")
    if not ((value >= 0.0 if zero_allowed else value > 0.0) and value < math.inf):  # NaN fails both
        raise ValueError(f"`{name}` must be a finite number {bound}, got {value}.")
    return float(value)
