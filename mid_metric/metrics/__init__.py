"""The torchmetrics classes: a shared base (:mod:`mid_metric.metrics._base`) and one module per metric."""

from mid_metric.metrics.clip_score import CLIPScore, RefCLIPScore
from mid_metric.metrics.cmmd import CMMD
from mid_metric.metrics.frechet import FrechetDistance
from mid_metric.metrics.infonce import InfoNCE
from mid_metric.metrics.mid import MutualInformationDivergence
from mid_metric.metrics.r_precision import CLIPRPrecision

__all__ = [
    "MutualInformationDivergence",
    "CLIPScore",
    "RefCLIPScore",
    "CLIPRPrecision",
    "InfoNCE",
    "FrechetDistance",
    "CMMD",
]
