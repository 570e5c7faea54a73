"""Rules on what a result needs and what it must be: enough pairs, room to store them, and a finite value."""

from __future__ import annotations

import torch
from torch import Tensor


def check_finite_result(value: Tensor, what: str, regularisable: bool = True) -> Tensor:
    """Raise instead of returning a NaN or infinite result; return ``value`` otherwise.

    ``regularisable=False`` for the bias-corrected estimators, which need ``eps = 0``: their message does not
    suggest ``eps``.

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
        advice = "Set `eps` > 0 or check" if regularisable else "Check"
        raise ValueError(
            f"{what} is not finite ({int((~finite).sum())} of {value.numel()} values): the pairs are too far from the"
            f" reference, or its covariance is too ill-conditioned, for float64. {advice} the features' scale."
        )
    return value


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
