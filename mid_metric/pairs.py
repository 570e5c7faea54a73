"""Compatibility: the import path of mid-metric 0.1 for pairs files.

They now live in :mod:`mid_metric.io.pairs`, and the atomic writer in :mod:`mid_metric.io.atomic`.
"""

from mid_metric.io.atomic import atomic_output, create_temporary_file
from mid_metric.io.pairs import (
    FEATURE_SUFFIXES,
    FeaturePairs,
    Pair,
    PairsError,
    PairsTable,
    is_features_file,
    load_image,
    read_features,
    read_pairs,
)

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
    "atomic_output",
    "create_temporary_file",
]
