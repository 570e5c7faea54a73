"""Pure functions of feature tensors: one module per metric.

:mod:`mid_metric.functional.mid` holds MID; :mod:`~mid_metric.functional.clip_score`,
:mod:`~mid_metric.functional.r_precision` and :mod:`~mid_metric.functional.infonce` the companion metrics;
:mod:`~mid_metric.functional.frechet` (with :mod:`~mid_metric.functional.frechet_moments`, its forms on packed
moments and its jackknife) and :mod:`~mid_metric.functional.cmmd` the image-quality metrics;
:mod:`~mid_metric.functional.correlation` Kendall's tau against human ratings, with a bootstrap interval.

``mid_metric.functional`` also re-exports the reference-Gaussian building blocks that mid-metric 0.1 documented
here (they live in :mod:`mid_metric.gaussian`).
"""

from mid_metric.functional.clip_score import clip_score, ref_clip_score
from mid_metric.functional.cmmd import cmmd
from mid_metric.functional.correlation import bootstrap_kendall_tau, kendall_tau
from mid_metric.functional.frechet import frechet_distance, frechet_distance_from_moments
from mid_metric.functional.frechet_moments import FrechetResult, jackknife_frechet_distance
from mid_metric.functional.infonce import infonce, infonce_bound
from mid_metric.functional.mid import (
    divergence_from_moments,
    jackknife_divergence,
    mutual_information,
    mutual_information_divergence,
    pointwise_mutual_information,
)
from mid_metric.functional.r_precision import clip_r_precision
from mid_metric.gaussian import (
    GaussianReference,
    fit_reference,
    pointwise_mutual_information_from_reference,
    reference_from_moments,
)

__all__ = [
    "GaussianReference",
    "fit_reference",
    "reference_from_moments",
    "divergence_from_moments",
    "jackknife_divergence",
    "pointwise_mutual_information_from_reference",
    "mutual_information",
    "mutual_information_divergence",
    "pointwise_mutual_information",
    "clip_score",
    "ref_clip_score",
    "clip_r_precision",
    "infonce",
    "infonce_bound",
    "frechet_distance",
    "frechet_distance_from_moments",
    "jackknife_frechet_distance",
    "FrechetResult",
    "cmmd",
    "kendall_tau",
    "bootstrap_kendall_tau",
]
