"""Helpers that snapshot a metric's states and check that a rejected call left them bit for bit unchanged."""

import torch


def snapshot(metric):
    return {name: value.clone() for name, value in metric.metric_state.items()}


def assert_same_state(metric, before):
    for name, value in metric.metric_state.items():
        assert value.dtype == before[name].dtype and value.shape == before[name].shape, name
        assert torch.equal(value.view(torch.int64), before[name].view(torch.int64)), name  # bit-identical
