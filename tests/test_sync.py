"""The metric's dist_sync_fn (mid_metric.sync) in one process; tests/test_ddp.py and test_sync_traffic.py run it
across real gloo processes."""

from __future__ import annotations

import pytest
import torch

from mid_metric import moments
from mid_metric._checks import state_format
from mid_metric.sync import all_reduce_moments, sync_state


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
