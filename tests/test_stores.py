"""The statistics stores (``mid_metric.store``): each against a two-pass computation, and the jackknife's against a
full store fed the same rows.

The jackknife store keeps only its ``K`` group states; the full moments that the reference fit, ``pmi``, ``forward``
and ``save_reference`` read are their exact merge. They must equal the moments of a plain store that saw the same
rows to 1e-12 relative (rounding only), and the metric's outputs built on them must agree to the same precision.
"""

from __future__ import annotations

import math

import pytest
import torch
from reference_impl import ref_pmi, well_conditioned_pairs

from mid_metric import MutualInformationDivergence, jackknife, moments
from mid_metric.store import JackknifeStore, MomentStore, PairedStores

F64 = torch.float64
DX, DY = 5, 4
REL = 1e-12


def _rows(n, seed=0, offset=0.7):
    """Float64 joint rows ``[x; y]`` with a common offset (the shift must matter) and correlated columns."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, DX + DY, dtype=F64, generator=g) @ torch.randn(DX + DY, DX + DY, dtype=F64, generator=g)
    return z + offset


def _two_pass(z):
    mean = z.mean(0)
    centred = z - mean
    return mean, centred.T @ centred


def _assert_moments_close(packed, mean, scatter, rel=REL):
    got_mean, got_scatter = moments.mean_and_scatter(packed)
    assert float((got_mean - mean).abs().max()) <= rel * float(mean.abs().max())
    assert float((got_scatter - scatter).abs().max()) <= rel * float(scatter.abs().max())


def _feed(store, z, sizes):
    """Stage batches of the given sizes (cycled), flushing when full; a batch larger than the room is added whole."""
    start, turn = 0, 0
    while start < z.shape[0]:
        part = z[start : start + sizes[turn % len(sizes)]]
        if part.shape[0] > store.room:
            store.flush()
        if part.shape[0] > store.room:
            store.accumulate(part)
        else:
            store.stage(part[:, :DX], part[:, DX:])
        start, turn = start + part.shape[0], turn + 1
    store.flush()
    return store


# -------------------------------------------------------------------------------------------- one store
def test_moment_store_equals_two_pass_and_counts_its_batches():
    z = _rows(700)
    store = _feed(MomentStore(DX + DY, DX, buffer_rows=64), z, [5, 64, 1, 200, 17])
    assert store.flushed_count() == 700 and store.staged_rows == 0
    _assert_moments_close(store.moments(), *_two_pass(z))
    assert store.batches_seen >= 8  # every flush and every large batch is one batch of the recentring schedule


def test_staged_rows_are_read_without_a_flush():
    z = _rows(50)
    store = MomentStore(DX + DY, DX, buffer_rows=64)
    store.accumulate(z[:30])
    store.stage(z[30:, :DX], z[30:, DX:])
    before, revision = store.state.clone(), store.revision
    _assert_moments_close(store.including_staged(store.moments()), *_two_pass(z))
    assert torch.equal(store.state, before) and store.revision == revision and store.staged_rows == 20
    assert store.count() == 50 and store.flushed_count() == 30


@pytest.mark.parametrize("num_groups, key", [(2, "text"), (7, "image"), (10, "joint")])
def test_jackknife_store_merged_moments_equal_a_full_store(num_groups, key):
    # The issue-21 identity: the jackknife keeps only its groups, and their merge is the full store's moments.
    z = _rows(1500, seed=num_groups)
    full = _feed(MomentStore(DX + DY, DX, buffer_rows=128), z, [9, 300, 40])
    grouped = _feed(JackknifeStore(DX + DY, DX, 128 * num_groups, num_groups, key), z, [9, 300, 40])
    assert grouped.state.shape == (num_groups, (DX + DY + 1) ** 2)
    assert grouped.flushed_count() == full.flushed_count() == 1500
    mean, scatter = moments.mean_and_scatter(full.moments())
    _assert_moments_close(grouped.moments(), mean, scatter)
    _assert_moments_close(grouped.moments(), *_two_pass(z))
    # Each group holds the rows its hash names, and the counts are exact.
    groups = jackknife.row_groups(z, DX, num_groups, key)
    assert grouped.state[:, 0].tolist() == torch.bincount(groups, minlength=num_groups).double().tolist()
    for k in range(num_groups):
        if int((groups == k).sum()) > 1:
            _assert_moments_close(grouped.state[k], *_two_pass(z[groups == k]), rel=1e-11)


def test_jackknife_merge_is_cached_until_the_statistics_change():
    z = _rows(300)
    store = JackknifeStore(DX + DY, DX, buffer_rows=1000, num_groups=4, key="text")
    store.accumulate(z[:200])
    merged = store.moments()
    assert store.moments() is merged  # read twice, merged once
    store.stage(z[200:, :DX], z[200:, DX:])
    assert store.moments() is merged  # staged rows are not in the full moments
    store.flush()
    assert store.moments() is not merged
    _assert_moments_close(store.moments(), *_two_pass(z))
    store.state = store.state.clone()  # a new state (a sync, a load): merged again
    assert store.moments() is not merged


@pytest.mark.parametrize("key", ["text", "image"])
def test_paired_accumulation_is_bitwise_two_accumulations(key):
    # update_pairs copies the candidates' text block from the reference's, group by group with the text key; with
    # another key it accumulates each store on its own. Either way, bitwise the result of separate calls.
    reference_rows, generated = _rows(900, seed=1), _rows(900, seed=2)
    candidate_rows = torch.cat([generated[:, :DX], reference_rows[:, DX:]], 1)
    paired = [JackknifeStore(DX + DY, DX, 64, 5, key) for _ in range(2)]
    separate = [JackknifeStore(DX + DY, DX, 64, 5, key) for _ in range(2)]
    for start in range(0, 900, 150):
        part = slice(start, start + 150)
        paired[0].accumulate_paired(paired[1], reference_rows[part], candidate_rows[part])
        separate[0].accumulate(reference_rows[part])
        separate[1].accumulate(candidate_rows[part])
    for ours, theirs in zip(paired, separate):
        assert torch.equal(ours.state.view(torch.int64), theirs.state.view(torch.int64))
        assert ours.group_batches_seen == theirs.group_batches_seen


def test_paired_stores_flush_both_together_while_the_texts_are_shared():
    x, y = well_conditioned_pairs(40, DX, DY, seed=3)
    stores = PairedStores(MomentStore(DX + DY, DX, 16), MomentStore(DX + DY, DX, 16))
    stores.add_pairs(x[:10], y[:10], x[:10] * 0.5)
    stores.add_pairs(x[10:16], y[10:16], x[10:16] * 0.5)  # the reference is full: it waits for its candidates
    assert stores.reference.flushed_count() == stores.candidate.flushed_count() == 16
    assert stores.texts_shared and stores.reference.staged_rows == 0
    stores.add(True, x[16:20], y[16:20])
    assert not stores.texts_shared and stores.reference.staged_rows == 4 and stores.candidate.staged_rows == 0
    stores.reset(keep_reference=True)  # the kept reference keeps its staged rows: flushed
    assert stores.reference.flushed_count() == 20 and stores.candidate.batches_seen == 0
    assert not stores.texts_shared  # the kept reference has rows the candidates never had
    stores.reset(keep_reference=False)
    assert stores.texts_shared and stores.reference.batches_seen == 0


def test_legacy_full_state_is_checked_against_the_groups():
    z = _rows(400)
    store = JackknifeStore(DX + DY, DX, 1000, 4, "text")
    store.accumulate(z)
    store.check_legacy_full_state(moments.from_features(z), store.state, "reference_moments")
    with pytest.raises(ValueError, match="counts 399 pairs, but its jackknife groups hold 400"):
        store.check_legacy_full_state(moments.from_features(z[1:]), store.state, "reference_moments")
    other = z.clone()
    other[0, 0] += 1e-3  # the same count, other rows
    with pytest.raises(ValueError, match="differs from the merge of its jackknife groups"):
        store.check_legacy_full_state(moments.from_features(other), store.state, "candidate_moments")


# ------------------------------------------------------------------- the jackknife metric sees the same moments
def _pair_of_metrics(n=600, **kwargs):
    x, y = well_conditioned_pairs(n, DX, DY, seed=4)
    x0 = 0.8 * x + 0.3 * torch.randn(n, DX, dtype=F64, generator=torch.Generator().manual_seed(5))
    plain = MutualInformationDivergence((DX, DY), bias_correction=True, buffer_rows=64, reset_real_features=False)
    jack = MutualInformationDivergence((DX, DY), bias_correction="jackknife", jackknife_groups=6, **kwargs)
    return plain, jack, (x, y, x0)


def test_jackknife_metric_full_moments_pmi_batch_scores_and_saved_file_match_a_plain_metric(tmp_path):
    plain, jack, (x, y, x0) = _pair_of_metrics(buffer_rows=64, reset_real_features=False)
    scores = []
    for start in range(0, 600, 50):
        batch = slice(start, start + 50)
        for metric in (plain, jack):
            metric.update(x[batch], y[batch], real=True)
        scores.append([metric(x0[batch], y[batch], real=False) for metric in (plain, jack)])
    for ours, theirs in scores:
        assert (ours is None) == (theirs is None)
        if ours is not None:
            assert math.isclose(float(theirs), float(ours), rel_tol=REL)
    probe = (x0[:7], y[:7])
    expected = plain.pmi(*probe)  # (PMI is a difference of terms: relative to its largest value)
    torch.testing.assert_close(jack.pmi(*probe), expected, rtol=REL, atol=REL * float(expected.abs().max()))
    torch.testing.assert_close(jack.pmi(*probe), ref_pmi(x, y, *probe), rtol=1e-9, atol=0)
    for metric in (plain, jack):
        metric.metric_state  # noqa: B018 - flushes the staged rows
    for name in ("reference_moments", "candidate_moments"):
        mean, scatter = moments.mean_and_scatter(getattr(plain, name))
        _assert_moments_close(getattr(jack, name), mean, scatter)
    saved = [metric.save_reference(tmp_path / f"{index}.safetensors") for index, metric in enumerate((plain, jack))]
    scorers = [MutualInformationDivergence.from_reference(path) for path in saved]
    for scorer in scorers:
        scorer.update(x0[:200], y[:200], real=False)
    assert math.isclose(float(scorers[1].compute()), float(scorers[0].compute()), rel_tol=1e-11)


def test_jackknife_metric_keeps_only_the_group_states():
    _, jack, (x, y, x0) = _pair_of_metrics()
    jack.update(x, y, real=True)
    jack.update(x0, y, real=False)
    states = {"state_format", "jackknife_settings", "reference_group_moments", "candidate_group_moments"}
    assert set(jack.metric_state) == states
    assert not {"reference_moments", "candidate_moments"} & set(jack.state_dict())
    assert jack.reference_group_moments.shape == (6, (DX + DY + 1) ** 2)
    plain = MutualInformationDivergence((DX, DY))
    with pytest.raises(AttributeError):
        plain.reference_group_moments  # noqa: B018 - a state of the jackknife only


@pytest.mark.parametrize("key", ["text", "image"])
def test_jackknife_update_pairs_is_bitwise_the_two_updates(key):
    x, y = well_conditioned_pairs(500, DX, DY, seed=6)
    x0 = 0.9 * x + 0.2 * torch.randn(500, DX, dtype=F64, generator=torch.Generator().manual_seed(7))
    kwargs = {"bias_correction": "jackknife", "jackknife_groups": 4, "jackknife_key": key, "buffer_rows": 40}
    paired, separate = MutualInformationDivergence((DX, DY), **kwargs), MutualInformationDivergence((DX, DY), **kwargs)
    for start in range(0, 500, 13):
        batch = slice(start, start + 13)
        paired.update_pairs(x[batch], y[batch], x0[batch])
        separate.update(x[batch], y[batch], real=True)
        separate.update(x0[batch], y[batch], real=False)
    assert paired._stores.texts_shared and not separate._stores.texts_shared
    for name, value in paired.metric_state.items():
        assert torch.equal(value, separate.metric_state[name]), name
    if key == "text":  # (with the image key the candidates' groups are not the reference's: the jackknife refuses)
        assert torch.equal(paired.compute(), separate.compute())
