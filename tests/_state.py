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
    if isinstance(value, (list, tuple)):  # a list state (tensors), or counts in an extra state (numbers)
        return type(value)(_copy(part) for part in value)
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
    elif isinstance(value, (list, tuple)):
        assert type(old) is type(value) and len(value) == len(old), key
        for index, (part, old_part) in enumerate(zip(value, old)):
            _assert_same_value(part, old_part, f"{key}[{index}]")
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
