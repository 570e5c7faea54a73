"""Compatibility: the import path of mid-metric 0.1 for the bias correction and the confidence interval.

The Wishart bias terms now live in :mod:`mid_metric.wishart`, the standard error in :mod:`mid_metric.uncertainty`,
and the corrected estimator is ``divergence_from_moments(..., bias_correction=True)`` in :mod:`mid_metric.functional`.
"""

from __future__ import annotations

from torch import Tensor

from mid_metric._checks import check_bias_correction
from mid_metric.functional.mid import divergence_from_moments
from mid_metric.gaussian import BlockTraces, GaussianReference, block_traces
from mid_metric.result import MIDResult
from mid_metric.uncertainty import standard_error, with_confidence_interval
from mid_metric.wishart import (
    inverse_bias_factor,
    logdet_bias,
    logdet_variance,
    mutual_information_bias,
    shared_modality,
)

__all__ = [
    "logdet_bias",
    "logdet_variance",
    "inverse_bias_factor",
    "mutual_information_bias",
    "BlockTraces",
    "block_traces",
    "shared_modality",
    "corrected_divergence",
    "standard_error",
    "with_confidence_interval",
    "check_bias_correction",
]


def corrected_divergence(reference: GaussianReference, candidate_packed: Tensor) -> MIDResult:
    """Bias-corrected MID: ``divergence_from_moments(reference, candidate_packed, bias_correction=True)``."""
    return divergence_from_moments(reference, candidate_packed, bias_correction=True)
