"""Packed streaming statistics (mid_metric.moments) against two-pass float64 computations."""

from __future__ import annotations

import pytest
import torch

from mid_metric import moments

F64 = torch.float64


def _two_pass(z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    mean = z.mean(dim=0)
    centred = z - mean
    return mean, centred.T @ centred


def _rows(n: int, dim: int, seed: int, offset: float = 0.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, dim, dtype=F64, generator=g) * torch.linspace(0.1, 3.0, dim, dtype=F64) + offset


def _assert_matches(packed: torch.Tensor, z: torch.Tensor, tol: float = 1e-10) -> None:
    mean, scatter = moments.mean_and_scatter(packed)
    expected_mean, expected_scatter = _two_pass(z)
    assert int(packed[0]) == z.shape[0]
    torch.testing.assert_close(mean, expected_mean, rtol=0, atol=tol)
    torch.testing.assert_close(scatter, expected_scatter, rtol=tol, atol=tol)


@pytest.mark.parametrize("batch", [1, 3, 64, 500])
def test_batched_accumulation_with_recentring_matches_two_pass(batch):
    z = _rows(500, 7, seed=0, offset=5.0)  # a large common mean: raw sums would lose digits
    state = moments.empty_moments(7)
    for number, start in enumerate(range(0, 500, batch), start=1):
        moments.accumulate_batch_(state, z[start : start + batch], number)
    _assert_matches(state, z)


def test_merge_is_exact_in_any_order_and_split():
    z = _rows(300, 5, seed=1, offset=-2.0)
    parts = [z[:1], z[1:40], z[40:41], z[41:300]]
    packed = [moments.from_features(p) for p in parts]
    for order in ([0, 1, 2, 3], [3, 1, 0, 2]):
        _assert_matches(moments.merge(torch.stack([packed[i] for i in order])), z)
    empty = moments.empty_moments(5)
    _assert_matches(moments.merge(torch.stack([empty, moments.from_features(z), empty])), z)
    assert torch.equal(moments.merge(torch.stack([empty, empty])), empty)  # no samples anywhere


def test_moved_sums_is_the_scatter_about_the_new_shift():
    z = _rows(50, 4, seed=2)
    fields = moments.unpack(moments.from_features(z))
    centre = torch.tensor([1.0, -2.0, 0.5, 3.0], dtype=F64)
    moved_sum, moved_outer = moments.moved_sums(*fields, centre)
    torch.testing.assert_close(moved_sum, (z - centre).sum(dim=0))
    full_outer = moments.symmetrized(moments.from_features(z))  # only the lower triangle is meaningful in a state
    moved_full = moments.moved_sums(*moments.unpack(full_outer), centre)[1]
    torch.testing.assert_close(moved_full, (z - centre).T @ (z - centre))
    torch.testing.assert_close(moved_outer.tril(), ((z - centre).T @ (z - centre)).tril())


def test_recentre_changes_no_statistic_and_moves_the_shift_to_the_mean():
    z = _rows(40, 3, seed=3, offset=10.0)
    state = moments.from_features(z[:1])
    moments.accumulate_(state, z[1:])
    moments.recentre_(state)
    _assert_matches(state, z)
    torch.testing.assert_close(moments.unpack(state).shift, z.mean(dim=0))
    assert not moments.unpack(state).shifted_sum.any()


def test_recentring_schedule_is_powers_of_two():
    assert [n for n in range(0, 70) if moments.recentre_due(n)] == [1, 2, 4, 8, 16, 32, 64]


def test_joint_rows_are_float64_and_ordered_image_first():
    rows = moments.joint_rows(torch.ones(2, 2, dtype=torch.bfloat16), torch.full((2, 1), 3.0))
    assert rows.dtype == F64 and rows.tolist() == [[1.0, 1.0, 3.0], [1.0, 1.0, 3.0]]


def test_packed_size_round_trip():
    for dim in (1, 2, 768, 1536):
        assert moments.dim_from_packed_size(moments.packed_size(dim)) == dim
    with pytest.raises(ValueError, match=r"\(D \+ 1\)\^2"):
        moments.dim_from_packed_size(10)
