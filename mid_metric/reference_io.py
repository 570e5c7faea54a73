"""Compatibility: the import path of mid-metric 0.1 for reference statistics files.

They now live in :mod:`mid_metric.io.reference_files`.
"""

from mid_metric.io.reference_files import (
    FORMAT_NAME,
    FORMAT_VERSION,
    TENSOR_NAME,
    load_reference_statistics,
    save_reference_statistics,
)

__all__ = ["FORMAT_NAME", "FORMAT_VERSION", "TENSOR_NAME", "save_reference_statistics", "load_reference_statistics"]
