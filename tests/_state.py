"""Helpers that snapshot a metric's states and check that a rejected call left them bit for bit unchanged."""

import torch


def snapshot(metric):
    return {name: value.clone() for name, value in metric.metric_state.items()}


def assert_same_state(metric, before):
    for name, value in metric.metric_state.items():
        assert value.dtype == before[name].dtype and value.shape == before[name].shape, name
        assert torch.equal(value.view(torch.int64), before[name].view(torch.int64)), name  # bit-identical


def _copy(value):
    if isinstance(value, torch.Tensor):
        return value.clone()
    if isinstance(value, list):  # a list state: a list of tensors
        return [part.clone() for part in value]
    return dict(value)


def snapshot_state_dict(metric):
    """A deep copy of ``metric.state_dict()`` (tensors and list states cloned, the extra state copied)."""
    return {key: _copy(value) for key, value in metric.state_dict().items()}


def _assert_same_tensor(value, old, key):
    assert value.dtype == old.dtype and value.shape == old.shape, key
    assert torch.equal(value.reshape(-1).view(torch.uint8), old.reshape(-1).view(torch.uint8)), key  # bit-identical


def assert_same_state_dict(metric, before):
    after = metric.state_dict()
    assert sorted(after) == sorted(before)
    for key, value in after.items():
        if isinstance(value, torch.Tensor):
            _assert_same_tensor(value, before[key], key)
        elif isinstance(value, list):
            assert isinstance(before[key], list) and len(value) == len(before[key]), key
            for part, old in zip(value, before[key]):
                _assert_same_tensor(part, old, key)
        else:
            assert value == before[key], key
