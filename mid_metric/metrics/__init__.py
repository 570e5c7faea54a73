"""The torchmetrics classes: a shared base (:mod:`mid_metric.metrics._base`) and one module per metric."""

from mid_metric.metrics.mid import MutualInformationDivergence

__all__ = ["MutualInformationDivergence"]
