"""``CLIPRPrecision`` (the torchmetrics class): the tester's checks, per-pair values, the cap and bad input."""

from __future__ import annotations

import pytest
import torch
from _state import assert_same_state_dict, snapshot_state_dict
from _tester import check_all_in_process
from companion_refs import aligned_pairs, naive_r_precision_per_pair, r_precision_cases

from mid_metric import CLIPRPrecision

pytestmark = pytest.mark.filterwarnings("ignore:The ``compute`` method of metric")

CASES = r_precision_cases()
D = 8


@pytest.mark.parametrize("name", sorted(CASES))
def test_every_in_process_check(name):
    check_all_in_process(CASES[name])


@pytest.fixture(scope="module")
def pairs():
    return aligned_pairs(150, D, noise=0.9, seed=51, duplicates=3)


def _fed(metric, images, texts, sizes):
    start = 0
    for size in sizes:
        metric.update(images[start : start + size], texts[start : start + size])
        start += size
    return metric


@pytest.mark.parametrize("negatives", ["replacement", "distinct"])
def test_per_sample_is_each_pairs_hit_probability_in_order(pairs, negatives):
    images, texts = pairs
    metric = _fed(CLIPRPrecision(feature=D, negatives=negatives), images, texts, [100, 50])
    values = metric.per_sample()
    assert values.dtype == torch.float64 and values.shape == (150,)
    torch.testing.assert_close(values, naive_r_precision_per_pair(images, texts, 99, negatives), rtol=1e-10, atol=0)
    # The other order of calls: the same set of pairs, so the same values, in that order.
    swapped = _fed(CLIPRPrecision(feature=D, negatives=negatives), torch.cat([images[100:], images[:100]]),
                   torch.cat([texts[100:], texts[:100]]), [50, 100])  # fmt: skip
    torch.testing.assert_close(swapped.per_sample(), torch.cat([values[100:], values[:100]]), rtol=1e-12, atol=0)
    assert float(swapped.compute()) == pytest.approx(float(metric.compute()), rel=1e-12)


def test_features_are_kept_in_float32(pairs):
    images, texts = pairs
    metric = _fed(CLIPRPrecision(feature=D), images.double(), texts.half(), [150])
    (rows,) = metric.candidate_features
    assert rows.dtype == torch.float32 and rows.shape == (150, 2 * D)
    metric.to(torch.float16)  # a dtype request does not round the stored features
    assert metric.candidate_features[0].dtype == torch.float32
    assert metric.stored_count() == 150


# ------------------------------------------------------------------------------------------ max_samples
def test_a_batch_beyond_max_samples_raises_and_adds_nothing(pairs):
    images, texts = pairs
    metric = _fed(CLIPRPrecision(feature=D, max_samples=120), images, texts, [100])
    before = snapshot_state_dict(metric)
    with pytest.raises(ValueError, match="at most `max_samples` = 120 candidate pairs; it holds 100 and this batch"):
        metric.update(images[100:], texts[100:])
    assert_same_state_dict(metric, before)
    metric.update(images[100:120], texts[100:120])  # up to the cap is fine
    assert metric.stored_count() == 120


def test_merge_and_load_beyond_max_samples_are_refused(pairs):
    images, texts = pairs
    metric = _fed(CLIPRPrecision(feature=D, max_samples=120), images, texts, [100])
    bigger = _fed(CLIPRPrecision(feature=D), images, texts, [150])
    before = snapshot_state_dict(metric)
    with pytest.raises(ValueError, match="the incoming state has 50"):
        metric.merge_state(_fed(CLIPRPrecision(feature=D), images, texts, [50]))
    with pytest.raises(ValueError, match="holds 150 candidate pairs, above this metric's `max_samples` = 120"):
        metric.load_state_dict(bigger.state_dict())
    assert_same_state_dict(metric, before)


# -------------------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    "call, error, match",
    [
        pytest.param(lambda m, x, y: m.update(x, y[:-1]), ValueError, "same number of pairs", id="sizes"),
        pytest.param(lambda m, x, y: m.update(x, y * 0), ValueError, "`texts` has 10 row", id="zero"),
        pytest.param(lambda m, x, y: m.merge_state({**m.metric_state, "candidate_features": [torch.cat(
            [x, y * 0], 1)]}), ValueError, r"candidate_features \(text features\)` has 10 row", id="merge-zero"),
        pytest.param(lambda m, x, y: m.update(x.bool(), y), TypeError, "`images` must be a floating", id="bool"),
        pytest.param(lambda m, x, y: m.update(x, y, real="no"), TypeError, "`real` must be a bool", id="real"),
        pytest.param(lambda m, x, y: m.merge_state({"candidate_features": [x]}), ValueError, "lacks the state",
                     id="merge-missing"),
        pytest.param(lambda m, x, y: m.merge_state({**m.metric_state, "candidate_features": [x]}), ValueError,
                     "must hold rows of 16 features", id="merge-width"),
        pytest.param(lambda m, x, y: m.merge_state({**m.metric_state, "candidate_features": [torch.cat(
            [x, y], 1).index_fill(0, torch.tensor([2]), float("nan"))]}), ValueError, "NaN", id="merge-nan"),
        pytest.param(lambda m, x, y: m.merge_state({**m.metric_state, "state_format": m.state_format * 2}),
                     ValueError, "state format 2", id="merge-format"),
    ],
)  # fmt: skip
def test_bad_input_changes_nothing(pairs, call, error, match):
    images, texts = pairs
    metric = _fed(CLIPRPrecision(feature=D), images, texts, [40])
    before = snapshot_state_dict(metric)
    with pytest.raises(error, match=match):
        call(metric, images[:10], texts[:10])
    assert_same_state_dict(metric, before)


@pytest.mark.parametrize(
    "make, error, match",
    [
        (lambda: CLIPRPrecision(feature=(4, 6)), ValueError, "one embedding space"),
        (lambda: CLIPRPrecision(feature=4, num_negatives=0), ValueError, "`num_negatives`"),
        (lambda: CLIPRPrecision(feature=4, negatives="all"), ValueError, "`negatives`"),
        (lambda: CLIPRPrecision(feature=4, max_samples=0), ValueError, "`max_samples` must be an int >= 1"),
        (lambda: CLIPRPrecision(feature=4, max_samples=1e4), TypeError, "`max_samples`"),
    ],
)
def test_bad_constructor_arguments(make, error, match):
    with pytest.raises(error, match=match):
        make()


def test_compute_needs_enough_pairs(pairs):
    images, texts = pairs
    metric = CLIPRPrecision(feature=D, negatives="distinct")
    metric.update(images, texts, real=True)
    with pytest.raises(ValueError, match="at least 100 candidate pair"):
        metric.compute()
    metric.update(images[:99], texts[:99])
    with pytest.raises(ValueError, match="99 distinct negatives per pair"):
        metric.compute()
    metric.update(images[99:100], texts[99:100])
    assert 0 <= float(metric.compute()) <= 1


def test_forward_returns_the_batch_value_or_none(pairs):
    images, texts = pairs
    metric = CLIPRPrecision(feature=D, negatives="distinct")
    assert metric(images[:50], texts[:50]) is None  # 50 pairs cannot give 99 distinct negatives
    batch = metric(images[50:], texts[50:])
    expected = naive_r_precision_per_pair(images[50:], texts[50:], 99, "distinct").mean()
    assert float(batch) == pytest.approx(float(expected), rel=1e-10)
    assert metric.stored_count() == 150
    assert metric(images[:3], texts[:3], real=True) is None
