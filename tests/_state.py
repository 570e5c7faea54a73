"""Helpers that snapshot a metric's states and check that a rejected call left them bit for bit unchanged."""

import torch


def snapshot(metric):
    return {name: value.clone() for name, value in metric.metric_state.items()}


def assert_same_state(metric, before):
    for name, value in metric.metric_state.items():
        assert value.dtype == before[name].dtype and value.shape == before[name].shape, name
        assert torch.equal(value.view(torch.int64), before[name].view(torch.int64)), name  # bit-identical


def snapshot_state_dict(metric):
    """A deep copy of ``metric.state_dict()`` (tensors cloned, the extra state copied)."""
    return {
        key: value.clone() if isinstance(value, torch.Tensor) else dict(value)
        for key, value in metric.state_dict().items()
    }


def assert_same_state_dict(metric, before):
    after = metric.state_dict()
    assert sorted(after) == sorted(before)
    for key, value in after.items():
        if isinstance(value, torch.Tensor):
            old = before[key]
            assert value.dtype == old.dtype and value.shape == old.shape, key
            assert torch.equal(value.view(torch.uint8), old.view(torch.uint8)), key  # bit-identical
        else:
            assert value == before[key], key
