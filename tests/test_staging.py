"""The staging buffer of MID's stores: staged rows, flushes, checkpoints that save them, and ``num_pairs``.

Every value is compared with an independent computation: the two-pass float64 implementation in ``reference_impl``,
a metric without buffer (``buffer_rows=1``), or separate calls, bit for bit where the feature promises it.
"""

from __future__ import annotations

import io
import random

import pytest
import torch
from _mid_feed import (
    DX,
    DY,
    F64,
    _area,
    _assert_same_metric_state,
    _batches,
    _batches_seen,
    _close,
    _data,
    _feed_pairs,
    _feed_separate,
    _joint,
    _pairs,
    _same_bits,
    _staged_rows,
)
from _state import assert_same_state_dict, snapshot_state_dict
from reference_impl import ref_mid

from mid_metric import MutualInformationDivergence, moments

# A restored metric has not seen an update() yet; torchmetrics warns about that on compute().
pytestmark = pytest.mark.filterwarnings("ignore:The ``compute`` method of metric")


# ---------------------------------------------------------------------------------------- 1. staging buffer
@pytest.mark.parametrize(
    "value, error", [(0, ValueError), (-1, ValueError), (1.5, TypeError), (True, TypeError), ("8", TypeError)]
)
def test_buffer_rows_is_validated(value, error):
    with pytest.raises(error, match="buffer_rows"):
        MutualInformationDivergence(DX, buffer_rows=value)


def test_buffer_rows_default_and_lazy_float64_staging_areas():
    assert MutualInformationDivergence(DX).buffer_rows == 1024
    dx, dy = 7, 13
    x, y = _pairs(40, dx, dy)
    metric = MutualInformationDivergence((dx, dy), buffer_rows=16)
    assert _area(metric, "reference") is None and _area(metric, "candidate") is None
    metric.update(x[:20], y[:20], real=True)  # a batch >= buffer_rows goes straight to the statistics
    assert _area(metric, "reference") is None and _area(metric, "candidate") is None
    metric.update(x[20:25], y[20:25], real=True)
    area = _area(metric, "reference")
    assert area.shape == (16, dx + dy) and area.dtype == F64
    assert _area(metric, "candidate") is None  # allocated only when its group stages rows
    assert _staged_rows(metric) == {"reference": 5, "candidate": 0}
    # The staged rows are the float64 rows [x; y], bit for bit.
    assert _same_bits(area[:5], _joint(x[20:25], y[20:25]))
    metric.update(x[:3].float(), y[:3].float(), real=False)
    assert _area(metric, "candidate").shape == (16, dx + dy) and _area(metric, "candidate").dtype == F64
    assert _same_bits(_area(metric, "candidate")[:3], _joint(x[:3].float(), y[:3].float()))


def test_full_staging_area_is_flushed():
    x, y = _pairs(60)
    metric = MutualInformationDivergence(DX, buffer_rows=16)
    metric.update(x[:8], y[:8], real=True)
    assert _staged_rows(metric)["reference"] == 8 and int(metric.reference_moments[0]) == 0
    metric.update(x[8:16], y[8:16], real=True)  # exactly full: flushed
    assert _staged_rows(metric)["reference"] == 0 and int(metric.reference_moments[0]) == 16
    metric.update(x[16:26], y[16:26], real=True)
    metric.update(x[26:36], y[26:36], real=True)  # would overflow: the 10 staged rows are flushed first
    assert _staged_rows(metric)["reference"] == 10 and int(metric.reference_moments[0]) == 26
    metric.update(x[36:60], y[36:60], real=True)  # a batch >= buffer_rows: staged rows first, then the batch
    assert _staged_rows(metric)["reference"] == 0 and int(metric.reference_moments[0]) == 60
    assert _batches_seen(metric)["reference"] == 4
    mean, scatter = moments.mean_and_scatter(metric.reference_moments)
    two_pass = _joint(x, y)
    torch.testing.assert_close(mean, two_pass.mean(0), rtol=1e-13, atol=1e-13)
    centred = two_pass - two_pass.mean(0)
    torch.testing.assert_close(scatter, centred.T @ centred, rtol=1e-12, atol=1e-12)


def test_staging_area_never_holds_more_than_buffer_rows():
    buffer_rows = 16
    rng = random.Random(0)
    x, y = _pairs(1000)
    x0, y0 = _pairs(1000, seed=3, strength=0.2)
    metric = MutualInformationDivergence(DX, buffer_rows=buffer_rows)
    unbuffered = MutualInformationDivergence(DX, buffer_rows=1)
    fed = {"reference": [], "candidate": []}
    start = 0
    while start < 900:
        rows = rng.randint(1, 3 * buffer_rows)
        s = slice(start, min(start + rows, 1000))
        start = s.stop
        kind = rng.choice(["real", "fake", "pairs"])
        if kind == "pairs":
            metric.update_pairs(x[s], y[s], x0[s])
            unbuffered.update_pairs(x[s], y[s], x0[s])
            fed["reference"].append((x[s], y[s]))
            fed["candidate"].append((x0[s], y[s]))
        else:
            real = kind == "real"
            images, texts = (x[s], y[s]) if real else (x0[s], y0[s])
            metric.update(images, texts, real=real)
            unbuffered.update(images, texts, real=real)
            fed["reference" if real else "candidate"].append((images, texts))
        totals = {group: sum(part[0].shape[0] for part in parts) for group, parts in fed.items()}
        for group in ("reference", "candidate"):
            assert 0 <= _staged_rows(metric)[group] <= buffer_rows, (group, _staged_rows(metric))
            flushed = int(getattr(metric, f"{group}_moments")[0])
            assert flushed + _staged_rows(metric)[group] == totals[group]  # no row lost or counted twice
        assert metric.num_pairs == totals
    assert _staged_rows(unbuffered) == {"reference": 0, "candidate": 0}
    ref = [torch.cat([part[i] for part in fed["reference"]]) for i in (0, 1)]
    cand = [torch.cat([part[i] for part in fed["candidate"]]) for i in (0, 1)]
    expected = ref_mid(*ref, *cand)
    _close(metric.compute(), expected)
    _close(unbuffered.compute(), expected)
    _close(metric.compute(), unbuffered.compute().item())


SPLITS = {
    "ones": (8, [1]),
    "below": (16, [7]),
    "equal": (16, [16]),
    "one_below": (16, [15]),
    "one_above": (16, [17]),
    "mixed": (16, [3, 40, 1, 16, 9, 2, 31]),
    "default_buffer": (1024, [64, 5, 200]),
    "single": (16, [10_000]),
}


@pytest.mark.parametrize("name", sorted(SPLITS))
def test_batch_split_invariance(name):
    buffer_rows, sizes = SPLITS[name]
    n = 120 if sizes == [1] else 200
    x, y, x0 = _data(n)
    slices = _batches(n, sizes)
    expected = ref_mid(x, y, x0, y)
    buffered = _feed_separate(MutualInformationDivergence(DX, buffer_rows=buffer_rows), x, y, x0, slices)
    unbuffered = _feed_separate(MutualInformationDivergence(DX, buffer_rows=1), x, y, x0, slices)
    whole = _feed_separate(MutualInformationDivergence(DX, buffer_rows=1), x, y, x0, [slice(0, n)])
    for metric in (buffered, unbuffered, whole):
        _close(metric.compute(), expected)
    _close(buffered.compute(), unbuffered.compute().item())
    _close(buffered.compute(), whole.compute().item())
    # Reading the statistics in between (compute flushes) does not change the end result either.
    interrupted = MutualInformationDivergence(DX, buffer_rows=buffer_rows)
    for k, s in enumerate(slices):
        _feed_separate(interrupted, x, y, x0, [s])
        if k % 3 == 2 and s.stop > DX + DY:
            interrupted.compute()
            assert _staged_rows(interrupted) == {"reference": 0, "candidate": 0}
    _close(interrupted.compute(), expected)


def _staged_metric(buffer_rows=64, pairs=False):
    """A metric with 130 pairs in its statistics and 9 more of each group staged."""
    x, y, x0 = _data(139)
    metric = MutualInformationDivergence(DX, buffer_rows=buffer_rows)
    slices = [slice(0, 65), slice(65, 130), slice(130, 139)]
    (_feed_pairs if pairs else _feed_separate)(metric, x, y, x0, slices)
    assert _staged_rows(metric) == {"reference": 9, "candidate": 9}
    return metric, (x, y, x0)


def test_compute_and_metric_state_flush_but_state_dict_does_not():
    metric, (x, y, x0) = _staged_metric()
    metric.state_dict()
    assert _staged_rows(metric) == {"reference": 9, "candidate": 9}
    state = metric.metric_state
    assert _staged_rows(metric) == {"reference": 0, "candidate": 0}
    assert int(state["reference_moments"][0]) == 139 and int(state["candidate_moments"][0]) == 139
    other, _ = _staged_metric()
    _close(other.compute(), ref_mid(x, y, x0, y))
    assert _staged_rows(other) == {"reference": 0, "candidate": 0}
    # Flushing by metric_state or by compute gives the same statistics, bit for bit.
    _assert_same_metric_state(metric, other)


@pytest.mark.parametrize(
    "bad",
    [
        lambda: MutualInformationDivergence((DX - 1, DY + 1)),  # another split
        lambda: {"state_format": torch.tensor([2.0, DX, DY])},  # a state is missing
        "nan",
    ],
    ids=["other_split", "missing_state", "nan_moments"],
)
def test_refused_merge_leaves_staged_rows_and_state_bit_identical(bad):
    metric, _ = _staged_metric()
    if bad == "nan":
        donor, _ = _staged_metric()
        incoming = {name: value.clone() for name, value in donor.metric_state.items()}
        incoming["candidate_moments"][5] = float("nan")
    else:
        incoming = bad()
        if isinstance(incoming, MutualInformationDivergence):
            incoming.update(torch.randn(5, DX - 1), torch.randn(5, DY + 1), real=True)
    before = snapshot_state_dict(metric)
    with pytest.raises(ValueError):
        metric.merge_state(incoming)
    assert _staged_rows(metric) == {"reference": 9, "candidate": 9}
    assert_same_state_dict(metric, before)


def test_merge_state_flushes_both_sides_and_is_exact():
    metric, (x, y, x0) = _staged_metric()
    xb, yb = _pairs(50, seed=11)
    x0b, y0b = _pairs(45, seed=12, strength=0.1)
    incoming = MutualInformationDivergence(DX, buffer_rows=64)
    incoming.update(xb, yb, real=True)
    incoming.update(x0b, y0b, real=False)
    assert _staged_rows(incoming) == {"reference": 50, "candidate": 45}
    metric.merge_state(incoming)
    assert _staged_rows(metric) == {"reference": 0, "candidate": 0}
    assert metric.num_pairs == {"reference": 189, "candidate": 184}
    expected = ref_mid(torch.cat([x, xb]), torch.cat([y, yb]), torch.cat([x0, x0b]), torch.cat([y, y0b]))
    _close(metric.compute(), expected)


@pytest.mark.parametrize("reset_real_features", [False, True])
def test_reset_keeps_staged_reference_rows_only_with_reset_real_features_false(reset_real_features):
    x, y, x0 = _data(200)
    metric = MutualInformationDivergence(DX, buffer_rows=64, reset_real_features=reset_real_features)
    _feed_separate(metric, x, y, x0, _batches(150, [40]))  # the last 30 rows of each group are staged
    assert _staged_rows(metric) == {"reference": 30, "candidate": 30}
    metric.reset()
    assert _staged_rows(metric) == {"reference": 0, "candidate": 0}
    kept = 150 if not reset_real_features else 0
    assert metric.num_pairs == {"reference": kept, "candidate": 0}
    x1, y1 = _pairs(60, seed=21, strength=0.3)
    metric.update(x[150:], y[150:], real=True)
    metric.update(x1, y1, real=False)
    reference = (x, y) if not reset_real_features else (x[150:], y[150:])
    _close(metric.compute(), ref_mid(*reference, x1, y1))


def test_save_reference_includes_staged_rows(tmp_path):
    x, y, x0 = _data(120)
    metric = MutualInformationDivergence(DX, buffer_rows=64)
    metric.update(x[:100], y[:100], real=True)
    metric.update(x[100:], y[100:], real=True)
    assert _staged_rows(metric)["reference"] == 20
    path = metric.save_reference(tmp_path / "ref.safetensors")
    scorer = MutualInformationDivergence.from_reference(path)
    assert scorer.num_pairs == {"reference": 120, "candidate": 0}
    scorer.update(x0[:50], y[:50], real=False)
    _close(scorer.compute(), ref_mid(x, y, x0[:50], y[:50]))


# ------------------------------------------------------------------------------- 2. state_dict, extra state
def test_state_dict_saves_staged_rows_without_flushing_and_is_repeatable():
    metric, (x, y, x0) = _staged_metric()
    twin, _ = _staged_metric()
    first = snapshot_state_dict(metric)
    extra = first["_extra_state"]
    assert sorted(extra) == ["candidate", "reference", "staged", "texts_shared"]
    assert type(extra["reference"]) is int and type(extra["candidate"]) is int
    assert extra["texts_shared"] is False
    assert sorted(extra["staged"]) == ["candidate", "reference"]
    assert _same_bits(extra["staged"]["reference"], _joint(x[130:], y[130:]))
    assert _same_bits(extra["staged"]["candidate"], _joint(x0[130:], y[130:]))
    assert _staged_rows(metric) == {"reference": 9, "candidate": 9}
    assert_same_state_dict(metric, first)  # a second state_dict() is bitwise the first
    # ... and state_dict() had no side effect: the metric continues exactly like its untouched twin.
    assert _same_bits(metric.compute(), twin.compute())
    _assert_same_metric_state(metric, twin)


def _round_trip(state_dict):
    buffer = io.BytesIO()
    torch.save(state_dict, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


@pytest.mark.parametrize("via_file", [False, True], ids=["in_memory", "torch_save"])
@pytest.mark.parametrize("pairs", [False, True], ids=["update", "update_pairs"])
def test_checkpoint_with_staged_rows_resumes_bit_for_bit(pairs, via_file):
    x, y, x0 = _data(300)
    feed = _feed_pairs if pairs else _feed_separate
    slices = _batches(300, [9])
    uninterrupted = feed(MutualInformationDivergence(DX, buffer_rows=32), x, y, x0, slices)
    first = feed(MutualInformationDivergence(DX, buffer_rows=32), x, y, x0, slices[:22])
    assert _staged_rows(first)["reference"] > 0 and _staged_rows(first)["candidate"] > 0
    checkpoint = first.state_dict()
    if via_file:
        checkpoint = _round_trip(checkpoint)
    resumed = MutualInformationDivergence(DX, buffer_rows=32)
    resumed.load_state_dict(checkpoint)
    assert _staged_rows(resumed) == _staged_rows(first)
    assert resumed._stores.texts_shared is pairs
    feed(resumed, x, y, x0, slices[22:])
    assert _same_bits(resumed.compute(), uninterrupted.compute())
    assert torch.equal(resumed.compute(), uninterrupted.compute())
    _assert_same_metric_state(resumed, uninterrupted)
    _close(resumed.compute(), ref_mid(x, y, x0, y))


@pytest.mark.parametrize("buffer_rows", [1, 4])
@pytest.mark.parametrize("pairs", [False, True], ids=["update", "update_pairs"])
def test_restore_into_a_smaller_buffer(pairs, buffer_rows):
    x, y, x0 = _data(300)
    feed = _feed_pairs if pairs else _feed_separate
    slices = _batches(300, [9])
    uninterrupted = feed(MutualInformationDivergence(DX, buffer_rows=32), x, y, x0, slices)
    first = feed(MutualInformationDivergence(DX, buffer_rows=32), x, y, x0, slices[:22])
    assert _staged_rows(first)["reference"] > buffer_rows
    resumed = MutualInformationDivergence(DX, buffer_rows=buffer_rows)
    resumed.load_state_dict(_round_trip(first.state_dict()))
    assert all(0 <= count <= buffer_rows for count in _staged_rows(resumed).values())
    assert resumed.num_pairs == first.num_pairs
    feed(resumed, x, y, x0, slices[22:])
    _close(resumed.compute(), uninterrupted.compute().item())
    _close(resumed.compute(), ref_mid(x, y, x0, y))


def _bad_extra_states(good, width):
    rows = torch.zeros(3, width, dtype=F64)
    nan_rows, inf_rows = rows.clone(), rows.clone()
    nan_rows[1, 2] = float("nan")
    inf_rows[0, 0] = float("inf")
    return {
        "unknown_key": {**good, "buffer": 3},
        "negative_count": {**good, "reference": -1},
        "bool_count": {**good, "candidate": True},
        "float_count": {**good, "reference": 2.0},
        "wrong_width": {**good, "staged": {"reference": torch.zeros(3, width + 1, dtype=F64)}},
        "one_dim_rows": {**good, "staged": {"reference": torch.zeros(width, dtype=F64)}},
        "float32_rows": {**good, "staged": {"reference": rows.float()}},
        "float16_rows": {**good, "staged": {"candidate": rows.half()}},
        "nan_rows": {**good, "staged": {"reference": nan_rows}},
        "inf_rows": {**good, "staged": {"candidate": inf_rows}},
        "unknown_group": {**good, "staged": {"fake": rows}},
        "staged_not_dict": {**good, "staged": [rows]},
        "texts_shared_int": {**good, "texts_shared": 1},
        "texts_shared_str": {**good, "texts_shared": "yes"},
        "not_a_dict": [1, 2],
    }


BAD_EXTRA = sorted(_bad_extra_states({}, DX + DY))


@pytest.mark.parametrize("how", ["load_state_dict", "set_extra_state"])
@pytest.mark.parametrize("name", BAD_EXTRA)
def test_invalid_extra_state_is_refused_and_changes_nothing(name, how):
    metric, _ = _staged_metric()
    donor, _ = _staged_metric()
    checkpoint = snapshot_state_dict(donor)
    bad = _bad_extra_states(checkpoint["_extra_state"], DX + DY)[name]
    before = snapshot_state_dict(metric)
    with pytest.raises(ValueError):
        if how == "load_state_dict":
            metric.load_state_dict({**checkpoint, "_extra_state": bad})
        else:
            metric.set_extra_state(bad)
    assert_same_state_dict(metric, before)
    assert _staged_rows(metric) == {"reference": 9, "candidate": 9}


@pytest.mark.parametrize("rows", ["int64", "list"])
def test_non_float_staged_rows_raise_value_error(rows):
    metric, _ = _staged_metric()
    checkpoint = snapshot_state_dict(metric)
    staged = torch.zeros(3, DX + DY, dtype=torch.int64) if rows == "int64" else [[0.0] * (DX + DY)] * 3
    before = snapshot_state_dict(metric)
    with pytest.raises(ValueError):
        metric.load_state_dict(
            {**checkpoint, "_extra_state": {**checkpoint["_extra_state"], "staged": {"reference": staged}}}
        )
    assert_same_state_dict(metric, before)


def test_old_extra_state_with_batch_counts_only_still_loads():
    x, y, x0 = _data(300)
    slices = _batches(300, [13])
    uninterrupted = _feed_separate(MutualInformationDivergence(DX, buffer_rows=1), x, y, x0, slices)
    first = _feed_separate(MutualInformationDivergence(DX, buffer_rows=1), x, y, x0, slices[:11])
    checkpoint = first.state_dict()
    assert checkpoint["_extra_state"]["staged"] == {}
    checkpoint["_extra_state"] = {"reference": 11, "candidate": 11}  # mid-metric 0.2
    resumed = MutualInformationDivergence(DX, buffer_rows=1)
    resumed.load_state_dict(checkpoint)
    assert _batches_seen(resumed) == {"reference": 11, "candidate": 11}
    assert _staged_rows(resumed) == {"reference": 0, "candidate": 0} and resumed._stores.texts_shared is False
    _feed_separate(resumed, x, y, x0, slices[11:])
    assert _same_bits(resumed.compute(), uninterrupted.compute())
    _assert_same_metric_state(resumed, uninterrupted)
    # The counts of the example in the brief: a 0.2 extra state on its own.
    target = MutualInformationDivergence(DX)
    target.load_state_dict(
        {**MutualInformationDivergence(DX).state_dict(), "_extra_state": {"reference": 3, "candidate": 2}}
    )
    assert _batches_seen(target) == {"reference": 3, "candidate": 2}


# ------------------------------------------------------------------------------------------------ 7. num_pairs
def test_num_pairs_counts_staged_rows_and_loaded_files_and_changes_nothing(tmp_path):
    x, y, x0 = _data(200)
    source = MutualInformationDivergence(DX)
    source.update(x[:70], y[:70], real=True)
    path = source.save_reference(tmp_path / "ref.safetensors")
    metric = MutualInformationDivergence(DX, buffer_rows=64, reference=path)
    assert metric.num_pairs == {"reference": 70, "candidate": 0}
    metric.update(x[70:170], y[70:170], real=True)  # 100 rows: flushed
    metric.update(x[170:], y[170:], real=True)  # 30 rows: staged
    metric.update(x0[:10], y[:10], real=False)
    assert _staged_rows(metric) == {"reference": 30, "candidate": 10}
    before = snapshot_state_dict(metric)
    assert metric.num_pairs == {"reference": 200, "candidate": 10}
    assert metric.num_pairs == {"reference": 200, "candidate": 10}
    assert _staged_rows(metric) == {"reference": 30, "candidate": 10}
    assert_same_state_dict(metric, before)
    metric.update(x0[10:], y[10:], real=False)
    _close(metric.compute(), ref_mid(x, y, x0, y))
    assert metric.num_pairs == {"reference": 200, "candidate": 200}
