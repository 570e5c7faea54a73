"""What the options of ``mid-metric`` accept: the value types that argparse converts their text with."""

from __future__ import annotations

import argparse
import math
import os
from typing import Callable

__all__ = [
    "METRIC_NAMES",
    "int_at_least",
    "positive_int",
    "non_negative_int",
    "integer",
    "jackknife_groups",
    "eps_value",
    "metric_names",
    "MAX_AUTOMATIC_WORKERS",
    "usable_cores",
    "automatic_workers",
]


def int_at_least(minimum: int) -> Callable[[str], int]:
    """Return an argparse type that accepts integers >= ``minimum``."""
    expected = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
        return value

    return parse


positive_int = int_at_least(1)


def integer(text: str) -> int:
    """An integer of any size: its range is checked after parsing, with a one-line error.

    Example:
        >>> integer("18446744073709551616")
        18446744073709551616
    """
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None


def jackknife_groups(text: str) -> int:
    """A number of jackknife groups, from 2 to 1000."""
    value = int_at_least(2)(text)
    if value > 1000:
        raise argparse.ArgumentTypeError(f"expected an integer from 2 to 1000, got {text!r}")
    return value


non_negative_int = int_at_least(0)


def eps_value(text: str) -> float:
    """A finite number >= 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text!r}") from None
    if not (value >= 0.0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"expected a finite number >= 0, got {text!r}")
    return value


#: The metrics ``score --metrics`` can compute, in the order they are reported.
METRIC_NAMES = ("mid", "clip-score", "r-precision", "infonce", "fd", "cmmd")


def metric_names(text: str) -> tuple[str, ...]:
    """Comma-separated names of :data:`METRIC_NAMES`, returned in that order.

    Example:
        >>> metric_names("infonce, mid")
        ('mid', 'infonce')
    """
    names = tuple(dict.fromkeys(name.strip() for name in text.split(",") if name.strip()))
    unknown = [name for name in names if name not in METRIC_NAMES]
    if not names or unknown:
        raise argparse.ArgumentTypeError(f"expected a comma-separated list of {', '.join(METRIC_NAMES)}; got {text!r}")
    return tuple(name for name in METRIC_NAMES if name in names)


#: The most worker processes that ``--num-workers`` gives by default.
MAX_AUTOMATIC_WORKERS = 8


def usable_cores() -> int:
    """The CPU cores this process may run on (its affinity where the system tells it, else all of them)."""
    try:
        return max(len(os.sched_getaffinity(0)), 1)
    except AttributeError:  # macOS and Windows have no affinity call
        return max(os.cpu_count() or 1, 1)


def automatic_workers(cores: int) -> int:
    """The default of ``--num-workers`` on ``cores`` usable cores: one less, for the main process, at most 8.

    Example:
        >>> [automatic_workers(cores) for cores in (1, 2, 4, 16, 64)]
        [0, 1, 3, 8, 8]
    """
    return max(0, min(MAX_AUTOMATIC_WORKERS, cores - 1))
