r"""Kendall's tau between per-sample scores and human ratings, with a seeded bootstrap interval.

The MID paper, like CLIPScore before it, reports how well a metric ranks samples as people do by Kendall's
:math:`\tau` between the per-sample scores and the human ratings: :math:`\tau_c` (Stuart's) on Flickr8K-Expert,
:math:`\tau_b` on Flickr8K-CrowdFlower and on the text-to-image judgments. :func:`kendall_tau` is exactly
``scipy.stats.kendalltau(scores, ratings, variant=...)``, statistic and p-value; the rank transform that the
official code applies first changes nothing, since tau depends on the ranks alone.

:func:`correlate` adds a percentile bootstrap interval: items are drawn with replacement, as many as there are,
and tau is recomputed on each resample. An *item* is one row, or, with ``groups``, every row of one group drawn
together (the three expert ratings of one caption, say), so that ratings of the same sample are never split
between resamples. The generator is ``numpy.random.default_rng(seed)``: the same seed gives the same interval.

scipy is imported only when tau is computed, so importing this module costs nothing.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Optional, Sequence

from mid_metric._checks import check_level

__all__ = ["VARIANTS", "KendallResult", "require_scipy", "kendall_tau", "bootstrap_kendall_tau", "correlate"]

#: The variants of Kendall's tau that scipy computes: ``"b"`` (ties adjusted) and ``"c"`` (Stuart's).
VARIANTS = ("b", "c")

_SCIPY_HINT = (
    "Kendall's tau needs scipy, a dependency of mid-metric that is missing here: reinstall mid-metric"
    " (`pip install .` from its source folder) or `pip install scipy`."
)


@dataclass(frozen=True)
class KendallResult:
    """Kendall's tau of scores against ratings, with its p-value and bootstrap interval.

    Attributes:
        tau: The statistic, as ``scipy.stats.kendalltau`` gives it (NaN when one side is constant).
        p_value: scipy's two-sided p-value for ``tau = 0``.
        n: Number of (score, rating) pairs.
        variant: ``"b"`` or ``"c"``.
        ci_low: Lower end of the bootstrap interval (``None`` without resamples).
        ci_high: Upper end of the bootstrap interval.
        level: Coverage of the interval (0.95).
        resamples: Number of bootstrap resamples (0: no interval).
        seed: Seed of the bootstrap generator.
        items: Number of items the bootstrap draws from (rows, or groups of rows).
    """

    tau: float
    p_value: float
    n: int
    variant: str
    ci_low: Optional[float]
    ci_high: Optional[float]
    level: float
    resamples: int
    seed: int
    items: int

    def as_dict(self) -> dict[str, Any]:
        """The fields as a dict of JSON-ready values (NaN becomes ``None``).

        Example:
            >>> KendallResult(float("nan"), 1.0, 3, "b", None, None, 0.95, 0, 0, 3).as_dict()["tau"] is None
            True
        """
        fields = asdict(self).items()
        return {key: (None if isinstance(value, float) and math.isnan(value) else value) for key, value in fields}


def require_scipy() -> Any:
    """Return ``scipy.stats``, or raise an ``ImportError`` that says how to install scipy.

    Commands call it first, so that a missing scipy is reported before any work is done.

    Raises:
        ImportError: If scipy is not installed.
    """
    try:
        import scipy.stats
    except ImportError as error:
        raise ImportError(_SCIPY_HINT) from error
    return scipy.stats


def _check_variant(variant: object) -> str:
    if variant not in VARIANTS:
        raise ValueError(f"`variant` must be 'b' or 'c', got {variant!r}.")
    return str(variant)


def _as_arrays(scores: Sequence[float], ratings: Sequence[float]) -> tuple[Any, Any]:
    import numpy as np

    first = np.asarray(scores, dtype=np.float64)
    second = np.asarray(ratings, dtype=np.float64)
    if first.ndim != 1 or second.ndim != 1:
        raise ValueError(f"`scores` and `ratings` must be 1-D, got shapes {first.shape} and {second.shape}.")
    if first.shape != second.shape:
        raise ValueError(f"`scores` and `ratings` must have one value per sample, got {first.size} and {second.size}.")
    if first.size < 2:
        raise ValueError(f"Kendall's tau needs at least 2 (score, rating) pairs, got {first.size}.")
    for name, values in (("scores", first), ("ratings", second)):
        if not np.isfinite(values).all():
            first_bad = int(np.flatnonzero(~np.isfinite(values))[0])
            raise ValueError(f"`{name}` holds NaN or Inf (first at position {first_bad}).")
    return first, second


def kendall_tau(scores: Sequence[float], ratings: Sequence[float], variant: str = "b") -> tuple[float, float]:
    """Return ``(tau, p_value)``: ``scipy.stats.kendalltau(scores, ratings, variant=variant)``.

    Args:
        scores: Per-sample metric values.
        ratings: The human rating of each sample.
        variant: ``"b"`` or ``"c"``.

    Raises:
        ImportError: If scipy is not installed.
        ValueError: If the lengths differ, there are fewer than 2 pairs, a value is not finite, or ``variant`` is
            unknown.

    Example:
        >>> tau, p = kendall_tau([0.1, 0.4, 0.3, 0.9], [1, 2, 3, 4], variant="b")
        >>> round(tau, 6), round(p, 6)
        (0.666667, 0.333333)
    """
    variant = _check_variant(variant)
    first, second = _as_arrays(scores, ratings)
    tau, p_value = require_scipy().kendalltau(first, second, variant=variant)  # (statistic, pvalue) in every scipy
    return float(tau), float(p_value)


def _group_layout(groups: Optional[Sequence[Any]], count: int) -> tuple[Any, Any, Any]:
    """Rows ordered by group, each group's first position in that order, and its size."""
    import numpy as np

    if groups is None:
        return np.arange(count), np.arange(count), np.ones(count, dtype=np.int64)
    if len(groups) != count:
        raise ValueError(f"`groups` must give one group per sample, got {len(groups)} for {count} samples.")
    codes: dict[Any, int] = {}
    labels = np.fromiter((codes.setdefault(group, len(codes)) for group in groups), dtype=np.int64, count=count)
    order = np.argsort(labels, kind="stable")
    sizes = np.bincount(labels)
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    return order, starts, sizes


def bootstrap_kendall_tau(
    scores: Sequence[float],
    ratings: Sequence[float],
    variant: str = "b",
    resamples: int = 1000,
    seed: int = 0,
    level: float = 0.95,
    groups: Optional[Sequence[Any]] = None,
) -> tuple[Optional[float], Optional[float]]:
    """Percentile bootstrap interval of Kendall's tau, resampling items with replacement.

    Args:
        scores: Per-sample metric values.
        ratings: The human rating of each sample.
        variant: ``"b"`` or ``"c"``.
        resamples: Number of resamples (0 gives ``(None, None)``).
        seed: Seed of ``numpy.random.default_rng``.
        level: Coverage of the interval, in ``(0, 1)``.
        groups: Optional group label per sample; a group's samples are drawn together (one item).

    Returns:
        ``(low, high)``; ``(None, None)`` without resamples or when every resample's tau is undefined. Resamples
        whose tau is undefined (one side constant) are left out.

    Raises:
        ImportError: If scipy is not installed.
        ValueError: As :func:`kendall_tau`, or if ``resamples``, ``seed``, ``level`` or ``groups`` is invalid.

    Example:
        >>> low, high = bootstrap_kendall_tau([0.1, 0.4, 0.3, 0.9, 0.5, 0.2], [1, 2, 3, 4, 3, 1], resamples=200)
        >>> -1.0 <= low <= high <= 1.0
        True
    """
    import numpy as np

    variant = _check_variant(variant)
    first, second = _as_arrays(scores, ratings)
    if isinstance(resamples, bool) or not isinstance(resamples, int) or resamples < 0:
        raise ValueError(f"`resamples` must be an int >= 0, got {resamples!r}.")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"`seed` must be an int >= 0, got {seed!r}.")
    check_level(level)
    if resamples == 0:
        return None, None
    stats = require_scipy()
    order, starts, sizes = _group_layout(groups, first.size)
    rng = np.random.default_rng(seed)
    values = np.empty(resamples)
    for index in range(resamples):
        chosen = rng.integers(0, sizes.size, size=sizes.size)
        lengths = sizes[chosen]
        ends = np.cumsum(lengths)
        positions = np.arange(ends[-1]) - np.repeat(ends - lengths, lengths) + np.repeat(starts[chosen], lengths)
        rows = order[positions]
        values[index] = stats.kendalltau(first[rows], second[rows], variant=variant)[0]
    values = values[np.isfinite(values)]
    if values.size == 0:
        return None, None
    tail = (1.0 - level) / 2.0
    low, high = np.quantile(values, [tail, 1.0 - tail])
    return float(low), float(high)


def correlate(
    scores: Sequence[float],
    ratings: Sequence[float],
    variant: str = "b",
    resamples: int = 1000,
    seed: int = 0,
    level: float = 0.95,
    groups: Optional[Sequence[Any]] = None,
) -> KendallResult:
    """Kendall's tau of ``scores`` against ``ratings`` with its p-value and a seeded bootstrap interval.

    Args:
        scores: Per-sample metric values.
        ratings: The human rating of each sample.
        variant: ``"b"`` (ties adjusted; scipy's default) or ``"c"`` (Stuart's, for Flickr8K-Expert).
        resamples: Number of bootstrap resamples; 0 skips the interval.
        seed: Seed of the bootstrap.
        level: Coverage of the interval.
        groups: Optional group label per sample; the bootstrap draws whole groups (see the module docstring).

    Returns:
        A :class:`KendallResult`.

    Raises:
        ImportError: If scipy is not installed.
        ValueError: As :func:`kendall_tau` and :func:`bootstrap_kendall_tau`.

    Example:
        >>> scores, ratings = [0.1, 0.4, 0.3, 0.9], [1, 1, 2, 2]   # tied ratings: tau-b and tau-c differ
        >>> round(correlate(scores, ratings, variant="b", resamples=0).tau, 4)
        0.4082
        >>> result = correlate(scores, ratings, variant="c", resamples=100, seed=1)
        >>> round(result.tau, 4), result.n, result.resamples
        (0.5, 4, 100)
        >>> result == correlate(scores, ratings, variant="c", resamples=100, seed=1)   # seeded: reproducible
        True
    """
    tau, p_value = kendall_tau(scores, ratings, variant)
    low, high = bootstrap_kendall_tau(scores, ratings, variant, resamples, seed, level, groups)
    items = len(scores) if groups is None else len(set(groups))
    return KendallResult(tau, p_value, len(scores), variant, low, high, level, resamples, seed, items)
