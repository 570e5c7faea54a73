"""Compatibility: the module of mid-metric 0.1 that held the metric class (now :mod:`mid_metric.metrics.mid`)."""

from mid_metric.metrics.mid import MutualInformationDivergence

__all__ = ["MutualInformationDivergence"]
