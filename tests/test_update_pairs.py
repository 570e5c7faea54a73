"""``update_pairs``: bitwise the two ``update`` calls, its input checks, and the shared-texts flag of the stores."""

from __future__ import annotations

import math

import pytest
import torch
from _mid_feed import (
    DX,
    _assert_same_metric_state,
    _batches,
    _close,
    _data,
    _feed_pairs,
    _feed_separate,
    _pairs,
    _staged_rows,
)
from _state import assert_same_state_dict, snapshot_state_dict
from reference_impl import ref_mid

from mid_metric import MutualInformationDivergence

# A restored metric has not seen an update() yet; torchmetrics warns about that on compute().
pytestmark = pytest.mark.filterwarnings("ignore:The ``compute`` method of metric")


# -------------------------------------------------------------------------------------------- 5. update_pairs
PAIR_CASES = [
    # (dx, dy, buffer_rows, batch sizes)
    (6, 6, 1024, [37]),
    (6, 6, 16, [7]),
    (6, 6, 16, [16]),
    (6, 6, 16, [40]),
    (6, 6, 16, [3, 40, 9, 1, 33]),
    (6, 6, 1, [9]),
    (7, 13, 16, [5]),
    (7, 13, 16, [50]),
    (7, 13, 1, [11]),
    (16, 5, 8, [20]),
    (16, 5, 1024, [64]),
]
DIVIDING_PAIR_CASES = [(6, 6, 64, [16]), (6, 6, 16, [1]), (7, 13, 32, [8])]


def _pairs_vs_separate(dx, dy, buffer_rows, sizes):
    x, y, x0 = _data(300, dx, dy)
    slices = _batches(300, sizes)
    paired = _feed_pairs(MutualInformationDivergence((dx, dy), buffer_rows=buffer_rows), x, y, x0, slices)
    separate = _feed_separate(MutualInformationDivergence((dx, dy), buffer_rows=buffer_rows), x, y, x0, slices)
    assert paired._stores.texts_shared and not separate._stores.texts_shared
    _close(paired.compute(), ref_mid(x, y, x0, y))
    assert torch.equal(paired.compute(), separate.compute())
    _assert_same_metric_state(paired, separate)


@pytest.mark.parametrize("dx, dy, buffer_rows, sizes", PAIR_CASES)
def test_update_pairs_is_bitwise_the_two_updates(dx, dy, buffer_rows, sizes):
    _pairs_vs_separate(dx, dy, buffer_rows, sizes)


@pytest.mark.parametrize("dx, dy, buffer_rows, sizes", DIVIDING_PAIR_CASES)
def test_update_pairs_is_bitwise_the_two_updates_when_the_batch_divides_the_buffer(dx, dy, buffer_rows, sizes):
    _pairs_vs_separate(dx, dy, buffer_rows, sizes)


@pytest.mark.parametrize("buffer_rows", [1, 16, 1024])
def test_compute_after_more_update_pairs_is_not_the_cached_value(buffer_rows):
    # update_pairs is not wrapped by torchmetrics; it must still drop the value cached by compute(), and the
    # interval of compute_with_ci must come from the same state as the value (a regression found in review).
    dx, dy = 3, 4
    x, y, x0 = _data(300, dx, dy)
    metric = MutualInformationDivergence((dx, dy), buffer_rows=buffer_rows)
    twin = MutualInformationDivergence((dx, dy), buffer_rows=buffer_rows)  # flushed at the same point, no interval
    metric.update_pairs(x[:150], y[:150], x0[:150])
    twin.update_pairs(x[:150], y[:150], x0[:150])
    _close(metric.compute_with_ci().mid, ref_mid(x[:150], y[:150], x0[:150], y[:150]))
    twin.compute()
    metric.update_pairs(x[150:], y[150:], x0[150:])
    twin.update_pairs(x[150:], y[150:], x0[150:])
    _close(metric.compute(), ref_mid(x, y, x0, y))
    assert torch.equal(metric.compute(), twin.compute())
    with_ci, expected = metric.compute_with_ci(), twin.compute_with_ci()
    assert torch.equal(with_ci.mid, expected.mid)
    assert math.isclose(with_ci.standard_error, expected.standard_error, rel_tol=1e-12)


@pytest.mark.parametrize("buffer_rows", [1, 1024])
def test_update_pairs_takes_features_that_require_grad(buffer_rows):
    # As update does (torchmetrics runs it with gradients off), update_pairs accumulates features that require
    # grad without recording a graph; it used to fail with "a leaf Variable that requires grad".
    x, y, x0 = (t.clone().requires_grad_() for t in _data(300, 3, 4))
    metric = MutualInformationDivergence((3, 4), buffer_rows=buffer_rows)
    metric.update_pairs(x, y, x0)
    value = metric.compute()
    assert not value.requires_grad and not metric.reference_moments.requires_grad
    _close(value, ref_mid(x.detach(), y.detach(), x0.detach(), y.detach()))


@pytest.mark.parametrize("buffer_rows", [1, 16, 1024])
def test_update_pairs_mixed_with_update(buffer_rows):
    dx, dy = 7, 13
    x, y, x0 = _data(300, dx, dy)
    extra_x, extra_y = _pairs(12, dx, dy, seed=41)
    paired = MutualInformationDivergence((dx, dy), buffer_rows=buffer_rows)
    separate = MutualInformationDivergence((dx, dy), buffer_rows=buffer_rows)
    slices = _batches(300, [7])
    _feed_pairs(paired, x, y, x0, slices[:20])
    _feed_separate(separate, x, y, x0, slices[:20])
    assert paired._stores.texts_shared
    for metric in (paired, separate):
        metric.update(extra_x, extra_y, real=True)
        metric.update(extra_x[:5], extra_y[:5], real=False)
    assert not paired._stores.texts_shared
    _feed_pairs(paired, x, y, x0, slices[20:])
    _feed_separate(separate, x, y, x0, slices[20:])
    assert not paired._stores.texts_shared  # update_pairs does not turn it back on
    expected = ref_mid(
        torch.cat([x, extra_x]), torch.cat([y, extra_y]), torch.cat([x0, extra_x[:5]]), torch.cat([y, extra_y[:5]])
    )
    _close(paired.compute(), expected)
    _close(paired.compute(), separate.compute().item())
    assert torch.equal(paired.compute(), separate.compute())
    _assert_same_metric_state(paired, separate)


def _bad_pair_inputs(x, y, x0):
    nan = x[:5].clone()
    nan[2, 1] = float("nan")
    inf = y[:5].clone()
    inf[0, 0] = float("inf")
    return {
        "real_width": ((x[:5, :-1], y[:5], x0[:5]), ValueError, "real_images"),
        "captions_width": ((x[:5], y[:5, :-1], x0[:5]), ValueError, "captions"),
        "generated_width": ((x[:5], y[:5], x0[:5, :-1]), ValueError, "generated_images"),
        "real_batch": ((x[:4], y[:5], x0[:5]), ValueError, "`real_images` and `captions`"),
        "generated_batch": ((x[:5], y[:5], x0[:3]), ValueError, "`generated_images` and `captions`"),
        "real_nan": ((nan, y[:5], x0[:5]), ValueError, "`real_images` contains NaN"),
        "captions_inf": ((x[:5], inf, x0[:5]), ValueError, "`captions` contains NaN or Inf"),
        "generated_nan": ((x[:5], y[:5], nan), ValueError, "`generated_images` contains NaN"),
        "generated_huge": ((x[:5], y[:5], x0[:5] * 1e101), ValueError, "`generated_images` holds values"),
        "generated_not_tensor": ((x[:5], y[:5], x0[:5].tolist()), TypeError, "generated_images"),
        "captions_int": ((x[:5], y[:5].long(), x0[:5]), TypeError, "captions"),
    }


@pytest.mark.parametrize("name", sorted(_bad_pair_inputs(*_data(10))))
def test_update_pairs_errors_name_the_argument_and_change_nothing(name):
    x, y, x0 = _data(60)
    metric = MutualInformationDivergence(DX, buffer_rows=64)
    metric.update_pairs(x[:50], y[:50], x0[:50])
    inputs, error, match = _bad_pair_inputs(x[50:], y[50:], x0[50:])[name]
    before = snapshot_state_dict(metric)
    with pytest.raises(error, match=match):
        metric.update_pairs(*inputs)
    assert_same_state_dict(metric, before)
    assert metric._stores.texts_shared and _staged_rows(metric) == {"reference": 50, "candidate": 50}


def test_texts_shared_flag_lifecycle():
    x, y, x0 = _data(60)
    metric = MutualInformationDivergence(DX)
    assert metric._stores.texts_shared
    metric.update_pairs(x[:20], y[:20], x0[:20])
    assert metric._stores.texts_shared
    metric.update(x0[20:30], y[20:30], real=False)
    assert not metric._stores.texts_shared
    metric.reset()  # reset_real_features=True: everything is empty again
    assert metric._stores.texts_shared
    metric.update_pairs(x[:20], y[:20], x0[:20])
    other = MutualInformationDivergence(DX)
    other.update_pairs(x[20:40], y[20:40], x0[20:40])
    metric.merge_state(other)
    assert not metric._stores.texts_shared

    keeping = MutualInformationDivergence(DX, reset_real_features=False)
    keeping.update(x0[:10], y[:10], real=False)  # candidates only: the reference stays empty
    assert not keeping._stores.texts_shared
    keeping.reset()
    assert keeping._stores.texts_shared
    keeping.update_pairs(x[:20], y[:20], x0[:20])
    keeping.reset()  # the kept reference has rows, the candidates none: their texts differ now
    assert not keeping._stores.texts_shared
    keeping.update_pairs(x[20:], y[20:], x0[20:])
    _close(keeping.compute(), ref_mid(x, y, x0[20:], y[20:]))


@pytest.mark.parametrize("mismatch", ["other_captions", "staged_counts"])
def test_texts_shared_restored_only_when_text_statistics_agree(mismatch):
    x, y, x0 = _data(300)
    slices = _batches(300, [9])
    source = MutualInformationDivergence(DX, buffer_rows=32)
    if mismatch == "other_captions":
        # Candidates with other captions: the text statistics of the two groups differ.
        y_other = y.flip(0)
        for s in slices[:20]:
            source.update(x[s], y[s], real=True)
            source.update(x0[s], y_other[s], real=False)
        cand = (torch.cat([x0[:180], x0[180:]]), torch.cat([y_other[:180], y[180:]]))
    else:
        _feed_pairs(source, x, y, x0, slices[:20])
        cand = (x0, y)
    checkpoint = source.state_dict()
    assert checkpoint["_extra_state"]["staged"]["reference"].shape[0] > 0
    checkpoint["_extra_state"]["texts_shared"] = True
    if mismatch == "staged_counts":  # drop the staged candidates: the texts are no longer the reference's
        staged = checkpoint["_extra_state"]["staged"]
        dropped = staged.pop("candidate").shape[0]
        cand = (torch.cat([x0[: 180 - dropped], x0[180:]]), torch.cat([y[: 180 - dropped], y[180:]]))
    restored = MutualInformationDivergence(DX, buffer_rows=32)
    restored.load_state_dict(checkpoint)
    assert restored._stores.texts_shared is False
    _feed_pairs(restored, x, y, x0, slices[20:])
    _close(restored.compute(), ref_mid(x, y, *cand))


def test_texts_shared_restored_when_text_statistics_agree():
    x, y, x0 = _data(200)
    source = _feed_pairs(MutualInformationDivergence(DX, buffer_rows=32), x, y, x0, _batches(200, [9]))
    restored = MutualInformationDivergence(DX, buffer_rows=32)
    restored.load_state_dict(source.state_dict())
    assert restored._stores.texts_shared is True
    flag_off = source.state_dict()
    flag_off["_extra_state"]["texts_shared"] = False
    restored.load_state_dict(flag_off)
    assert restored._stores.texts_shared is False
