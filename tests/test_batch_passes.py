"""The element-wise passes of an update (mid_metric.batch_passes) against their formulas, on every path.

On the CPU the passes run in numpy (on the calling thread); bfloat16 and other devices take torch's path. Both must
give the centred rows bit for bit as ``cast, then subtract``, column sums within the rounding bound of a sum, and
the bound check's verdict of ``isfinite`` and ``abs() <= bound``.
"""

from __future__ import annotations

import math

import pytest
import torch

from mid_metric import moments
from mid_metric.batch_passes import TORCH_PARALLEL_GRAIN, centre_rows_, column_sums, host_array, within_bound

F64 = torch.float64
EPS = torch.finfo(F64).eps


def _parts(rows: int, widths: tuple[int, ...], dtype: torch.dtype, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(rows, width, generator=g) * 0.05 + 0.02).to(dtype) for width in widths]


def _fsum_columns(rows: torch.Tensor) -> torch.Tensor:
    """Exactly rounded column sums (math.fsum), an independent reference."""
    return torch.tensor([math.fsum(column) for column in rows.T.tolist()], dtype=F64)


def _assert_sums_within_rounding(sums: torch.Tensor, rows: torch.Tensor) -> None:
    """``|computed - exact| <= (B - 1) eps sum |v|`` per column: the bound of any order of B - 1 additions."""
    bound = (rows.shape[0] - 1) * EPS * rows.abs().sum(dim=0) + 1e-300
    assert bool(((sums - _fsum_columns(rows)).abs() <= bound).all())


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
@pytest.mark.parametrize("rows", [3, 40])  # 40 x 1000 is above torch's parallel grain: numpy's sum on the CPU
def test_centred_rows_are_the_cast_rows_less_the_shift_bit_for_bit(dtype, rows):
    parts = _parts(rows, (600, 400), dtype)
    shift = torch.linspace(-0.1, 0.1, 1000, dtype=F64)
    target = torch.full((rows + 2, 1000), float("nan"), dtype=F64)[:rows]  # a view of a larger workspace
    sums = centre_rows_(target, parts, shift)
    expected = torch.cat([part.to(F64) for part in parts], dim=1) - shift
    assert torch.equal(target, expected)
    _assert_sums_within_rounding(sums, expected)


def test_strided_parts_and_centring_in_place():
    g = torch.Generator().manual_seed(1)
    image_cols = torch.randn(300, 50, generator=g).T  # (50, 300), not contiguous
    text = torch.randn(50, 400, generator=g)[:, ::2]  # (50, 200), strided columns
    shift = torch.randn(500, dtype=F64, generator=g)
    target = torch.empty(50, 500, dtype=F64)
    centre_rows_(target, (image_cols, text), shift)
    assert torch.equal(target, torch.cat([image_cols.to(F64), text.to(F64)], dim=1) - shift)
    rows = torch.randn(80, 500, dtype=F64, generator=g)  # 40,000 elements: above the grain
    expected = rows - shift
    sums = centre_rows_(rows, (rows,), shift)  # a staging area flushed: centred where it is
    assert torch.equal(rows, expected)
    _assert_sums_within_rounding(sums, expected)


def test_column_sums_keep_torchs_bits_below_the_grain_and_are_exact_to_rounding_above():
    g = torch.Generator().manual_seed(2)
    small = torch.randn(16, 12, dtype=F64, generator=g)  # (as in the checkpoints saved by 0.3.1)
    assert torch.equal(column_sums(small), small.sum(dim=0))
    large = torch.randn(TORCH_PARALLEL_GRAIN // 256 + 1, 256, dtype=F64, generator=g) + 3.0
    _assert_sums_within_rounding(column_sums(large), large)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
@pytest.mark.parametrize("value", [0.5, -7.0, float("nan"), float("inf"), -float("inf"), 1e30, -1e30])
def test_within_bound_is_finite_and_bounded(dtype, value):
    bound = min(1e20, torch.finfo(dtype).max)
    features = torch.zeros(5, 7, dtype=dtype)
    features[3, 4] = value
    stored = features[3, 4].item()  # (after the cast: 1e30 is Inf in float16)
    expected = math.isfinite(stored) and abs(stored) <= bound
    verdict = within_bound(features, bound)
    assert isinstance(verdict, bool) == (dtype != torch.bfloat16)  # a host bool where numpy ran the check
    assert bool(verdict) is expected
    assert within_bound(features[:0], bound) is True  # nothing to reject in an empty batch


def test_host_array_is_a_view_only_where_numpy_may_read_or_write():
    tensor = torch.zeros(2, 3)
    view = host_array(tensor, writable=True)
    view[0, 0] = 5.0
    assert tensor[0, 0].item() == 5.0  # the same memory, no copy
    assert host_array(torch.zeros(2, dtype=torch.bfloat16)) is None
    assert host_array(torch.zeros(2, device="meta")) is None
    assert host_array(torch.zeros(2, requires_grad=True)) is not None  # read through a detached view
    with torch.inference_mode():
        frozen = torch.zeros(2)
    assert host_array(frozen) is not None
    assert host_array(frozen, writable=True) is None  # torch's path then refuses the write, as it always did


def test_a_batch_above_the_grain_accumulates_as_two_pass_and_pairs_stay_bitwise():
    """accumulate_ through numpy's passes, and the recentring's GEMM: two-pass moments, paired text block copied."""
    g = torch.Generator().manual_seed(3)
    dx, dy, rows = 150, 100, 160  # 160 x 250 = 40,000 elements per batch
    x, x_hat, y = (torch.randn(2 * rows, d, generator=g) * 0.1 + 0.5 for d in (dx, dx, dy))
    reference, candidate = moments.empty_moments(dx + dy), moments.empty_moments(dx + dy)
    separate = moments.empty_moments(dx + dy)
    for number, start in enumerate((0, rows), start=1):
        batch = slice(start, start + rows)
        moments.accumulate_pairs_(reference, candidate, (x[batch], y[batch]), (x_hat[batch], y[batch]), number, dx)
        moments.accumulate_batch_(separate, (x_hat[batch], y[batch]), number, dx)
    assert torch.equal(candidate, separate)
    joint = torch.cat([x, y], dim=1).to(F64)
    centred = joint - joint.mean(dim=0)
    mean, scatter = moments.mean_and_scatter(reference)
    torch.testing.assert_close(mean, joint.mean(dim=0), rtol=0, atol=1e-14)
    torch.testing.assert_close(scatter, centred.T @ centred, rtol=1e-12, atol=1e-12)


def test_take_rows_equals_indexing_on_every_path():
    from mid_metric.batch_passes import take_rows

    rows = torch.randn(50, 7, dtype=torch.float64)
    index = torch.randperm(50)[:30]
    for source in (rows, rows.float(), rows.bfloat16(), rows[:, 2:5]):  # numpy paths, the torch path, a strided view
        assert torch.equal(take_rows(source, index), source[index])
        out = torch.full((40, source.shape[1]), 7.0, dtype=source.dtype)  # more rows than taken: the rest untouched
        taken = take_rows(source, index, out=out)
        assert torch.equal(taken, source[index]) and taken.data_ptr() == out.data_ptr()
        assert bool((out[30:] == 7.0).all())


def _hash_from_the_formula(rows: torch.Tensor) -> torch.Tensor:
    """The row hash written out from its definition, in Python integers: mix(sum_j (a_j u_j mod p) mod p)."""
    import struct

    from mid_metric.jackknife import grouping

    prime, coefficients = 2**31 - 1, grouping._coefficients_list(rows.shape[1])
    sums = []
    for row in rows.double().tolist():
        tops = [struct.unpack("<Q", struct.pack("<d", value + 0.0))[0] >> 32 for value in row]
        sums.append(sum(a * u % prime for a, u in zip(coefficients, tops)) % prime)
    return grouping._mix(torch.tensor(sums, dtype=torch.int64))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16, torch.bfloat16])
def test_row_hashes_on_the_host_follow_the_formula(dtype):
    from mid_metric.jackknife import row_hashes

    gen = torch.Generator().manual_seed(5)
    rows = (torch.randn(300, 9, generator=gen) * torch.logspace(-3, 3, 9)).to(dtype)  # two blocks of 256 rows
    rows[0, 0], rows[1, 1], rows[2, 2], rows[3, 3], rows[4] = -0.0, float("inf"), float("-inf"), float("nan"), 0.0
    expected = _hash_from_the_formula(rows)
    assert torch.equal(row_hashes(rows), expected)
    assert torch.equal(row_hashes(rows[:, 3:7]), _hash_from_the_formula(rows[:, 3:7]))  # a strided block
