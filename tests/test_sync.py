"""The metric's dist_sync_fn (mid_metric.sync) in one process; tests/test_ddp.py and test_sync_traffic.py run it
across real gloo processes."""

from __future__ import annotations

import hashlib

import pytest
import torch

from mid_metric import moments
from mid_metric._checks import state_format
from mid_metric.sync import (
    all_reduce_moments,
    check_same_settings,
    describe_settings_mismatch,
    settings_digest,
    settings_text,
    sync_state,
)


def test_without_a_process_group_the_state_comes_back_as_a_copy():
    state = moments.from_features(torch.randn(6, 3, dtype=torch.float64))
    (merged,) = all_reduce_moments(state)
    assert torch.equal(merged, state) and merged is not state
    (record,) = sync_state(state_format(2, 1))
    assert record.tolist() == [2, 2, 1]
    (same,) = sync_state(state)  # float64 states go to the all-reduce
    assert torch.equal(same, state)


def test_bad_states_are_refused():
    with pytest.raises(TypeError, match="float64"):
        all_reduce_moments(torch.zeros(16, dtype=torch.float32))
    with pytest.raises(ValueError, match="1-D"):
        all_reduce_moments(torch.zeros(4, 4, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"\(D \+ 1\)\^2"):
        all_reduce_moments(torch.zeros(10, dtype=torch.float64))


def test_the_settings_digest_is_the_first_8_bytes_of_sha256():
    # Python's hash() of a string changes with PYTHONHASHSEED; the digest that the ranks compare must not.
    text = settings_text({"metric": "InfoNCE", "temperature": 0.07, "image_dim": 8})
    expected = int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little", signed=True)
    assert settings_digest(text) == expected
    assert settings_digest(settings_text({"metric": "InfoNCE", "temperature": 0.1, "image_dim": 8})) != expected


def test_settings_text_is_canonical_and_takes_only_plain_values():
    assert settings_text({"b": 1, "a": True}) == settings_text({"a": True, "b": 1}) == '{"a": true, "b": 1}'
    assert settings_text({"a": 1}) != settings_text({"a": 1.0}) != settings_text({"a": True})
    with pytest.raises(TypeError, match="bools, ints, floats, strings or None"):
        settings_text({"groups": (1, 2)})


def test_the_mismatch_message_names_each_differing_setting_with_every_ranks_value():
    message = describe_settings_mismatch(
        [
            {"metric": "CLIPScore", "clamp": True, "weight": 2.5, "image_dim": 8},
            {"metric": "CLIPScore", "clamp": False, "weight": 2.5, "image_dim": 8},
            {"metric": "CLIPScore", "clamp": True, "weight": 100.0, "image_dim": 8},
        ]
    )
    assert "built CLIPScore with different settings" in message
    assert "`clamp` (rank 0: True; rank 1: False; rank 2: True)" in message
    assert "`weight` (rank 0: 2.5; rank 1: 2.5; rank 2: 100.0)" in message
    assert "image_dim" not in message
    # Two different metrics: only that is named.
    other = describe_settings_mismatch([{"metric": "CLIPScore", "clamp": True}, {"metric": "InfoNCE", "x": 1}])
    assert "`metric` (rank 0: 'CLIPScore'; rank 1: 'InfoNCE')" in other and "clamp" not in other


def test_without_a_process_group_the_settings_check_passes():
    check_same_settings({"metric": "CLIPScore", "clamp": True})
