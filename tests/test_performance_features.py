"""The performance features of ef1771e: staging buffer, checkpointed staged rows, forward's refit schedule,
update_pairs, the cached reference fit with precision matrices, num_pairs, and the moments/gaussian/_checks helpers.

Every value is compared with an independent computation: the two-pass float64 implementation in ``reference_impl``,
a metric without buffer (``buffer_rows=1``), or separate calls, bit for bit where the feature promises it.
"""

from __future__ import annotations

import io
import math
import random

import pytest
import torch
import torch.distributed as dist
from _state import assert_same_state_dict, snapshot_state_dict
from reference_impl import ClipLikeDistribution, ref_mid, ref_pmi, well_conditioned_pairs

from mid_metric import MutualInformationDivergence, moments
from mid_metric import functional as F
from mid_metric._checks import MAX_FEATURE_MAGNITUDE, check_within_bound
from mid_metric.gaussian import block_traces, candidate_scatter, reference_from_moments, reference_precisions
from mid_metric.metrics._reference_fit import ReferenceFit

# A restored metric has not seen an update() yet; torchmetrics warns about that on compute().
pytestmark = pytest.mark.filterwarnings("ignore:The ``compute`` method of metric")

F64 = torch.float64
REL = 1e-12
HARD_ABS = 5e-9  # CLIP-like data: absolute agreement with two-pass float64 (as in test_functional_mid.py)
DX, DY = 6, 6


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny GEMMs on a shared 2-core machine: one intra-op thread avoids thread-pool stalls (restored afterwards)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _pairs(n, dx=DX, dy=DY, seed=0, strength=0.7):
    return well_conditioned_pairs(n, dx, dy, seed=seed, strength=strength)


def _data(n=300, dx=DX, dy=DY):
    """Reference pairs (x, y) and candidates x0 generated from the same captions y."""
    x, y = _pairs(n, dx, dy, seed=0)
    x0 = 0.8 * x + 0.5 * torch.randn(n, dx, dtype=F64, generator=torch.Generator().manual_seed(7))
    return x, y, x0


def _same_bits(a, b):
    return (
        a.dtype == b.dtype
        and a.shape == b.shape
        and torch.equal(a.reshape(-1).view(torch.uint8), b.reshape(-1).view(torch.uint8))
    )


def _assert_same_metric_state(a, b):
    state_a, state_b = a.metric_state, b.metric_state
    assert sorted(state_a) == sorted(state_b)
    for name in state_a:
        assert _same_bits(state_a[name], state_b[name]), name


def _close(got, expected, rel=REL):
    got = float(got)
    assert math.isclose(got, expected, rel_tol=rel, abs_tol=0.0), (got, expected, abs(got - expected))


def _batches(n, sizes):
    """Split range(n) into consecutive slices of the given sizes (cycled), the last one possibly shorter."""
    out, start, k = [], 0, 0
    while start < n:
        stop = min(n, start + sizes[k % len(sizes)])
        out.append(slice(start, stop))
        start, k = stop, k + 1
    return out


def _feed_separate(metric, x, y, x0, slices):
    for s in slices:
        metric.update(x[s], y[s], real=True)
        metric.update(x0[s], y[s], real=False)
    return metric


def _feed_pairs(metric, x, y, x0, slices):
    for s in slices:
        metric.update_pairs(x[s], y[s], x0[s])
    return metric


def _joint(x, y):
    return torch.cat([x.to(F64), y.to(F64)], dim=1)


def _staged_rows(metric):
    """Rows waiting in each group's staging area."""
    return {group: metric._stores[group].staged_rows for group in ("reference", "candidate")}


def _batches_seen(metric):
    """Batches accumulated per group (the recentring schedule)."""
    return {group: metric._stores[group].batches_seen for group in ("reference", "candidate")}


def _area(metric, group):
    """The staging area of a group (None until the group stages rows)."""
    return metric._stores[group]._area


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


# --------------------------------------------------------------------- 3. pmi and forward leave statistics alone
def test_pmi_and_the_forward_batch_score_never_change_the_statistics():
    x, y, x0 = _data(260)
    probe_x, probe_y = _pairs(12, seed=31, strength=0.1)
    scored = MutualInformationDivergence(DX, buffer_rows=64)
    plain = MutualInformationDivergence(DX, buffer_rows=64)
    for s in _batches(260, [50, 7, 30]):
        for metric in (scored, plain):
            metric.update(x[s], y[s], real=True)
        staged = dict(_staged_rows(scored))
        before = snapshot_state_dict(scored)
        values = scored.pmi(probe_x, probe_y)
        assert _staged_rows(scored) == staged  # nothing flushed
        assert_same_state_dict(scored, before)
        # The pmi uses every reference pair so far, staged ones included.
        torch.testing.assert_close(values, ref_pmi(x[: s.stop], y[: s.stop], probe_x, probe_y), rtol=1e-9, atol=0)
        scored.pmi(probe_x, probe_y)
        scored(x0[s], y[s], real=False)  # forward: the batch is added, its score computed
        plain.update(x0[s], y[s], real=False)
    _assert_same_metric_state(scored, plain)
    assert _same_bits(scored.compute(), plain.compute())


# ------------------------------------------------------------------------------------- 4. forward schedule
def _expected_fits(epochs, joint_dim):
    """Independent re-implementation of forward's refit schedule.

    ``epochs`` is a list of lists of reference rows added per step (``reset()`` between epochs, with
    ``reset_real_features=True``). Returns, per step, how many of the epoch's reference rows the batch score's
    reference was fitted on, or ``None`` while no fit succeeded. A fit succeeds with more than ``joint_dim`` pairs.
    """
    out = []
    for sizes in epochs:
        attempted, rows_at_fit, since, fitted, total, epoch = False, 0, 0, None, 0, []
        for rows in sizes:
            total += rows
            since += rows
            if not attempted or since >= max(rows_at_fit, 1):
                attempted, rows_at_fit, since = True, total, 0
                fitted = total if total > joint_dim else None
            epoch.append(fitted)
        out.append(epoch)
    return out


SCHEDULES = {
    "fit_fails_first": [[5, 3, 3, 4, 2, 9, 1, 20, 30, 7, 40, 3, 90]],
    "fit_succeeds_first": [[10, 1, 9, 25, 2, 40, 3, 3, 100, 7], [12, 12, 12, 30]],
}


@pytest.mark.parametrize(
    "name, buffer_rows",
    [
        ("fit_fails_first", 1),
        ("fit_succeeds_first", 1),
        ("fit_succeeds_first", 1024),
        pytest.param("fit_fails_first", 1024),
        pytest.param("fit_fails_first", 8),
    ],
)
def test_forward_batch_scores_follow_the_refit_schedule(name, buffer_rows):
    dim = 3
    epochs = SCHEDULES[name]
    total = sum(sum(sizes) for sizes in epochs)
    x, y = _pairs(total, dim, dim, seed=0)
    x0, _ = _pairs(total, dim, dim, seed=1, strength=0.2)
    metric = MutualInformationDivergence(dim, buffer_rows=buffer_rows)
    expected_fits = _expected_fits(epochs, 2 * dim)
    start = 0
    for number, (sizes, fits) in enumerate(zip(epochs, expected_fits)):
        if number > 0:
            metric.reset()
        epoch_start = start
        for step, (rows, fitted) in enumerate(zip(sizes, fits)):
            s = slice(start, start + rows)
            if step % 2:
                assert metric(x[s], y[s], real=True) is None  # a reference batch has no score
            else:
                metric.update(x[s], y[s], real=True)  # the Lightning pattern
            value = metric(x0[s], y[s], real=False)
            if fitted is None:
                assert value is None, (step, value)
            else:
                used = slice(epoch_start, epoch_start + fitted)
                expected = ref_pmi(x[used], y[used], x0[s], y[s]).mean().item()
                assert value is not None, step
                _close(value, expected, rel=1e-9)
            start = s.stop
        epoch = slice(epoch_start, start)
        # compute() is exact whatever the batch scores used.
        _close(metric.compute(), ref_mid(x[epoch], y[epoch], x0[epoch], y[epoch]), rel=1e-10)


def test_forward_returns_none_for_reference_and_empty_batches():
    x, y, x0 = _data(100)
    metric = MutualInformationDivergence(DX)
    assert metric(x, y, real=True) is None
    assert metric(x0[:0], y[:0], real=False) is None
    value = metric(x0[:10], y[:10], real=False)
    _close(value, ref_pmi(x, y, x0[:10], y[:10]).mean().item(), rel=1e-9)


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


# ---------------------------------------------------------------------------------- 6. reference fit cache
def test_one_fit_scores_several_candidate_sets():
    x, y = _pairs(300)
    metric = MutualInformationDivergence(DX, reset_real_features=False, buffer_rows=64)
    for s in _batches(300, [40]):
        metric.update(x[s], y[s], real=True)
    fits, precisions = [], []
    for k in range(3):
        cx, cy = _pairs(80 + 10 * k, seed=10 + k, strength=0.3 * k)
        metric.reset()
        metric.update(cx, cy, real=False)
        value = metric.compute()
        fits.append(metric._reference_fit._reference)
        precisions.append(metric._reference_fit._precisions)
        _close(value, ref_mid(x, y, cx, cy))
        _close(value, F.mutual_information_divergence(x, y, cx, cy).item(), rel=1e-10)
    assert fits[0] is not None and all(fit is fits[0] for fit in fits)
    # The first candidate set takes its traces from solves; the precision matrices are computed for the second
    # and kept for every later one.
    assert precisions[0] is None and precisions[1] is not None and precisions[2] is precisions[1]
    # A real update changes the fit.
    xe, ye = _pairs(20, seed=51)
    metric.update(xe, ye, real=True)
    value = metric.compute()
    assert metric._reference_fit._reference is not fits[0]
    _close(value, ref_mid(torch.cat([x, xe]), torch.cat([y, ye]), cx, cy))


def test_merged_or_loaded_state_refits():
    x, y = _pairs(300)
    cx, cy = _pairs(100, seed=3, strength=0.2)
    metric = MutualInformationDivergence(DX, reset_real_features=False)
    metric.update(x[:200], y[:200], real=True)
    metric.update(cx, cy, real=False)
    metric.compute()
    first = metric._reference_fit._reference
    other = MutualInformationDivergence(DX)
    other.update(x[200:], y[200:], real=True)
    metric.merge_state(other)
    _close(metric.compute(), ref_mid(x, y, cx, cy))
    merged = metric._reference_fit._reference
    assert merged is not first
    metric.load_state_dict(metric.state_dict())
    _close(metric.compute(), ref_mid(x, y, cx, cy))
    assert metric._reference_fit._reference is not merged


def test_reference_fit_cache_with_hashable_keys():
    packed = moments.from_features(torch.randn(60, 5, dtype=F64, generator=torch.Generator().manual_seed(0)))
    fit = ReferenceFit()

    def never():
        raise AssertionError("statistics() must not be called for the same key")

    first = fit.reference(("state", 1), lambda: packed, image_dim=2, eps=0.0)
    assert fit.reference(("state", 1), never, image_dim=2, eps=0.0) is first
    assert fit.reference(("synced", 2), packed.clone, image_dim=2, eps=0.0) is first  # equal statistics
    changed = packed.clone()
    moments.accumulate_(changed, torch.ones(3, 5, dtype=F64))
    refit = fit.reference(("synced", 3), lambda: changed, image_dim=2, eps=0.0)
    assert refit is not first and refit.count == 63
    expected = reference_from_moments(changed, 2)
    assert torch.equal(refit.mean, expected.mean) and torch.equal(refit.chol_joint, expected.chol_joint)
    with pytest.raises(RuntimeError, match="needs a fit"):
        ReferenceFit().precisions()


def test_reference_fit_reuses_the_fit_for_equal_but_different_state_tensors():
    packed = moments.from_features(torch.randn(60, 5, dtype=F64, generator=torch.Generator().manual_seed(0)))
    loaded = moments.empty_moments(5)
    fit = ReferenceFit()
    first = fit.reference((packed, loaded, 1), lambda: packed, image_dim=2, eps=0.0)
    synced = packed.clone()  # what a DDP sync hands compute(): a new tensor with the same values
    assert fit.reference((synced, loaded, 1), synced.clone, image_dim=2, eps=0.0) is first


def test_load_reference_after_compute(tmp_path):
    x, y = _pairs(300)
    cx, cy = _pairs(100, seed=3, strength=0.2)
    source = MutualInformationDivergence(DX)
    source.update(x[:150], y[:150], real=True)
    path = source.save_reference(tmp_path / "ref.safetensors")
    metric = MutualInformationDivergence(DX)
    metric.update(x[150:], y[150:], real=True)
    metric.update(cx, cy, real=False)
    _close(metric.compute(), ref_mid(x[150:], y[150:], cx, cy))
    metric.load_reference(path)
    _close(metric.compute(), ref_mid(x, y, cx, cy))


def test_inference_mode_reset_then_update_outside():
    x, y = _pairs(300)
    cx, cy = _pairs(100, seed=3, strength=0.2)
    metric = MutualInformationDivergence(DX, buffer_rows=1)
    with torch.inference_mode():
        metric.reset()
        metric.update(x[:100], y[:100], real=True)
        metric.update(cx, cy, real=False)
        metric.compute()
    metric.update(x[100:], y[100:], real=True)
    _close(metric.compute(), ref_mid(x, y, cx, cy))


@pytest.fixture
def single_rank_process_group(tmp_path):
    """A one-rank gloo process group in this process: torchmetrics then syncs (new state tensors each compute)."""
    if not dist.is_available() or not dist.is_gloo_available():
        pytest.skip("torch.distributed with gloo is not available")
    if dist.is_initialized():
        pytest.skip("a process group is already initialised in this process")
    dist.init_process_group("gloo", init_method=(tmp_path / "store").as_uri(), rank=0, world_size=1)
    try:
        yield
    finally:
        dist.destroy_process_group()


def test_ddp_second_candidate_set_reuses_the_fit(single_rank_process_group):
    x, y = _pairs(300)
    metric = MutualInformationDivergence(DX, reset_real_features=False)
    metric.update(x, y, real=True)
    for k in range(2):
        cx, cy = _pairs(100, seed=3 + k, strength=0.2)
        metric.reset()
        metric.update(cx, cy, real=False)
        _close(metric.compute(), ref_mid(x, y, cx, cy))
        if k == 0:
            first = metric._reference_fit._reference
    assert metric._reference_fit._reference is first


def test_hard_clip_like_case_with_precision_traces():
    dist = ClipLikeDistribution(64, 64, seed=0)
    x, y = dist.sample(4000, seed=1)
    metric = MutualInformationDivergence(64, reset_real_features=False)  # default buffer: staged batches of 256
    for s in _batches(4000, [256]):
        metric.update(x[s], y[s], real=True)
    for k, rho_scale in enumerate((0.95, 0.6)):
        x0, y0 = dist.sample(3000, seed=2 + k, rho_scale=rho_scale)
        metric.reset()
        for s in _batches(3000, [256]):
            metric.update(x0[s], y0[s], real=False)
        got = metric.compute().item()
        assert abs(got - ref_mid(x, y, x0, y0)) <= HARD_ABS
        functional = F.mutual_information_divergence(x, y, x0, y0).item()
        assert math.isclose(got, functional, rel_tol=1e-10, abs_tol=0.0), (got, functional)
    assert metric._reference_fit._precisions is not None


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


# -------------------------------------------------------------------------------------- 8. moments and traces
DIMS = [(3, 4), (7, 13), (16, 5), (192, 5), (200, 300), (768, 768)]


@pytest.mark.parametrize("dx, dy", DIMS)
def test_accumulate_pairs_is_bitwise_two_accumulate_batch_calls(dx, dy):
    g = torch.Generator().manual_seed(dx + dy)
    sizes = [5, 1, 40, 17, 3, 64, 9] if dx + dy < 1000 else [5, 40, 17]
    reference, candidate = moments.empty_moments(dx + dy), moments.empty_moments(dx + dy)
    separate_ref, separate_cand = moments.empty_moments(dx + dy), moments.empty_moments(dx + dy)
    for number, rows in enumerate(sizes, start=1):
        x = torch.randn(rows, dx, dtype=F64, generator=g) + 0.5
        x0 = 0.7 * x + 0.3 * torch.randn(rows, dx, dtype=F64, generator=g)
        y = torch.randn(rows, dy, dtype=F64, generator=g) - 0.25
        moments.accumulate_pairs_(reference, candidate, _joint(x, y), _joint(x0, y), number, split=dx)
        moments.accumulate_batch_(separate_ref, _joint(x, y), number, split=dx)
        moments.accumulate_batch_(separate_cand, _joint(x0, y), number, split=dx)
        assert _same_bits(reference, separate_ref), number
        assert _same_bits(candidate, separate_cand), number


@pytest.mark.parametrize("dx, dy", DIMS)
def test_accumulate_split_and_skip_trailing_block(dx, dy):
    dim = dx + dy
    g = torch.Generator().manual_seed(dim)
    start = moments.from_features(torch.randn(30, dim, dtype=F64, generator=g))
    rows = torch.randn(25, dim, dtype=F64, generator=g) + 1.0
    split, unsplit, skipped = start.clone(), start.clone(), start.clone()
    moments.accumulate_(split, rows, dx)
    moments.accumulate_(unsplit, rows)
    moments.accumulate_(skipped, rows, dx, skip_trailing_block=True)
    # The split changes rounding only.
    for a, b in zip(moments.mean_and_scatter(split), moments.mean_and_scatter(unsplit)):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    expected_scatter = moments.mean_and_scatter(moments.merge(torch.stack([start, moments.from_features(rows)])))[1]
    torch.testing.assert_close(moments.mean_and_scatter(split)[1], expected_scatter, rtol=1e-12, atol=1e-12)
    # skip_trailing_block leaves the [dx:, dx:] block of S2 as it was, and computes everything else as the split.
    outer = moments.unpack(skipped).shifted_outer_sum
    assert _same_bits(outer[dx:, dx:], moments.unpack(start).shifted_outer_sum[dx:, dx:])
    mask = torch.ones(dim, dim, dtype=torch.bool)
    mask[dx:, dx:] = False
    assert _same_bits(outer[mask], moments.unpack(split).shifted_outer_sum[mask])
    for field in ("count", "shift", "shifted_sum"):
        assert _same_bits(getattr(moments.unpack(skipped), field), getattr(moments.unpack(split), field)), field


@pytest.mark.parametrize("candidates", [200, 8], ids=["definite_scatter", "singular_scatter"])
@pytest.mark.parametrize("eps", [0.0, 1e-3])
def test_block_traces_with_precisions_equal_the_cholesky_path(candidates, eps):
    dx, dy = 7, 9
    x, y = _pairs(400, dx, dy)
    x0, y0 = _pairs(candidates, dx, dy, seed=5, strength=0.3)
    reference = reference_from_moments(moments.from_features(_joint(x, y)), dx, eps)
    scatter = candidate_scatter(reference, moments.from_features(_joint(x0, y0)))
    precisions = reference_precisions(reference)
    covariance = reference.covariance
    for matrix, precision in (
        (covariance[:dx, :dx], precisions.image),
        (covariance[dx:, dx:], precisions.text),
        (covariance, precisions.joint),
    ):
        torch.testing.assert_close(precision, torch.linalg.inv(matrix), rtol=1e-10, atol=1e-12)
    fast = block_traces(reference, scatter, precisions)
    slow = block_traces(reference, scatter)
    for a, b in zip(fast, slow):
        _close(a, b.item())


# ------------------------------------------------------------------------------------ 10. check_within_bound
def test_check_within_bound_checks_every_tensor_and_names_the_offender():
    good = torch.zeros(3, 2)
    check_within_bound({"a": good, "b": good.double(), "c": torch.zeros(0, 4), "d": good.half()})
    check_within_bound({})
    nan, inf = good.clone(), good.clone()
    nan[1, 0] = float("nan")
    inf[2, 1] = float("-inf")
    huge = torch.full((3, 2), MAX_FEATURE_MAGNITUDE * 10, dtype=F64)
    cases = [
        ({"first": good, "second": nan}, "`second` contains NaN or Inf values \\(in 1 of 3 rows\\)"),
        ({"first": inf, "second": good}, "`first` contains NaN or Inf"),
        ({"x": good, "y": good, "z": huge}, "`z` holds values of magnitude"),
        ({"empty": torch.zeros(0, 2), "bad": nan}, "`bad`"),
        ({"both_a": nan, "both_b": inf}, "`both_a`"),  # the first offender in order
        ({"half": torch.full((2, 2), float("inf"), dtype=torch.float16)}, "`half` contains NaN or Inf"),
    ]
    for named, match in cases:
        with pytest.raises(ValueError, match=match):
            check_within_bound(named)
