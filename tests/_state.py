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
    if isinstance(value, dict):  # an extra state, possibly with tensors (staged rows)
        return {key: _copy(item) for key, item in value.items()}
    return value


def snapshot_state_dict(metric):
    """A deep copy of ``metric.state_dict()`` (tensors and list states cloned, the extra state copied)."""
    return {key: _copy(value) for key, value in metric.state_dict().items()}


def _assert_same_tensor(value, old, key):
    assert value.dtype == old.dtype and value.shape == old.shape, key
    assert torch.equal(value.reshape(-1).view(torch.uint8), old.reshape(-1).view(torch.uint8)), key  # bit-identical


def _assert_same_value(value, old, key):
    if isinstance(value, torch.Tensor):
        _assert_same_tensor(value, old, key)
    elif isinstance(value, list):
        assert isinstance(old, list) and len(value) == len(old), key
        for part, old_part in zip(value, old):
            _assert_same_tensor(part, old_part, key)
    elif isinstance(value, dict):
        assert isinstance(old, dict) and sorted(value) == sorted(old), key
        for name, item in value.items():
            _assert_same_value(item, old[name], f"{key}.{name}")
    else:
        assert value == old, key


def assert_same_state_dict(metric, before):
    after = metric.state_dict()
    assert sorted(after) == sorted(before)
    for key, value in after.items():
        _assert_same_value(value, before[key], key)
