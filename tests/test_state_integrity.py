"""A rejected merge, load or update leaves the metric's ``state_dict()`` bit for bit as it was.

Regression tests for mid-metric 0.1, which merged the reference and then raised on a bad candidate state, replaced
the states and then raised on a NaN loaded reference, accepted a (6, 10) state in an (8, 8) metric, loaded
checkpoints without ``candidate_moments`` or with NaN, negative or fractional counts, let features near 1e200
overflow its float64 sums, and returned non-finite standard errors.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
from _state import assert_same_state_dict, snapshot_state_dict
from reference_impl import ref_mid, well_conditioned_pairs

from mid_metric import MutualInformationDivergence

DX, DY = 4, 4


def _filled(feature=(DX, DY), seed=0, **kwargs):
    x, y = well_conditioned_pairs(80, feature[0], feature[1], seed=seed)
    metric = MutualInformationDivergence(feature=feature, **kwargs)
    metric.update(x, y, real=True)
    metric.update(x[:20] * 1.1, y[:20], real=False)
    return metric


@pytest.fixture
def metric():
    return _filled()


def _expect_rejected(metric, call, error, match):
    metric.compute()  # (compute flushes the staged rows: snapshot after it)
    before = snapshot_state_dict(metric)
    twin = copy.deepcopy(metric)
    with pytest.raises(error, match=match):
        call()
    assert_same_state_dict(metric, before)
    # Both compute again (a failed update drops the cached value, a failed merge may not): as a second use of the
    # same fit, each takes its traces from the cached precision matrices (equal to the first compute's solves to
    # rounding only), so the metric and its untouched twin must give the same bits.
    metric._computed = twin._computed = None
    assert torch.equal(metric.compute(), twin.compute())


def _with_count(state, count):
    state = state.clone()
    state[0] = count
    return state


# ------------------------------------------------------------------------------------------- merge_state
def test_merge_with_one_bad_state_merges_nothing(metric):
    other = _filled(seed=1).metric_state
    bad = dict(other, candidate_moments=other["candidate_moments"][:-1])
    _expect_rejected(metric, lambda: metric.merge_state(bad), ValueError, "`incoming candidate_moments` must be")


@pytest.mark.parametrize(
    "corrupt",
    [
        pytest.param(lambda s: _with_count(s, math.nan), id="nan-count"),
        pytest.param(lambda s: _with_count(s, -3.0), id="negative-count"),
        pytest.param(lambda s: _with_count(s, 2.5), id="fractional-count"),
        pytest.param(lambda s: s.index_fill(0, torch.tensor([7]), math.inf), id="inf-sum"),
        pytest.param(lambda s: s.index_fill(0, torch.tensor([7]), 1e280), id="huge-sum"),
        pytest.param(lambda s: _with_count(torch.zeros_like(s), 0.0).index_fill(0, torch.tensor([3]), 1.0), id="empty"),
    ],
)
def test_merge_of_an_invalid_state_is_refused(metric, corrupt):
    other = dict(_filled(seed=1).metric_state)
    other["reference_moments"] = corrupt(other["reference_moments"])
    _expect_rejected(metric, lambda: metric.merge_state(other), ValueError, "`incoming reference_moments`")


def test_merge_of_another_split_is_refused(metric):
    # (6, 2) has the same joint size as (4, 4): 0.1 merged it silently.
    other = _filled(feature=(6, 2), seed=2)
    _expect_rejected(metric, lambda: metric.merge_state(other), ValueError, r"\(6, 2\).*\(4, 4\)")
    _expect_rejected(metric, lambda: metric.merge_state(other.metric_state), ValueError, r"\(6, 2\).*\(4, 4\)")


def test_merge_of_a_dict_without_the_format_record_is_refused(metric):
    other = {k: v for k, v in _filled(seed=1).metric_state.items() if k != "state_format"}
    _expect_rejected(metric, lambda: metric.merge_state(other), ValueError, "lacks the state")


def test_merge_of_another_class_is_refused(metric):
    from torchmetrics.aggregation import SumMetric

    _expect_rejected(metric, lambda: metric.merge_state(SumMetric()), ValueError, "`incoming_state` must be")


def test_valid_merge_still_equals_one_metric():
    x, y = well_conditioned_pairs(200, DX, DY, seed=3)
    a = MutualInformationDivergence(feature=(DX, DY))
    b = MutualInformationDivergence(feature=(DX, DY))
    a.update(x[:120], y[:120], real=True)
    b.update(x[120:], y[120:], real=True)
    a.update(x[:30] * 0.9, y[:30], real=False)
    b.update(x[30:50] * 0.9, y[30:50], real=False)
    a.merge_state(b)
    expected = ref_mid(x, y, x[:50] * 0.9, y[:50])
    assert math.isclose(float(a.compute()), expected, rel_tol=1e-10)


# --------------------------------------------------------------------------------------- load_state_dict
def test_load_of_another_split_is_refused(metric):
    saved = _filled(feature=(6, 2), seed=2).state_dict()
    _expect_rejected(metric, lambda: metric.load_state_dict(saved), ValueError, r"\(6, 2\).*\(4, 4\)")


def test_strict_load_without_candidate_moments_is_refused(metric):
    saved = _filled(seed=1).state_dict()
    del saved["candidate_moments"]
    _expect_rejected(metric, lambda: metric.load_state_dict(saved), RuntimeError, "Missing key.*candidate_moments")
    # Non-strict loading reports the missing key and loads none of the metric's statistics: half a state is not a
    # state (the candidates would no longer belong to the reference).
    before = snapshot_state_dict(metric)
    result = metric.load_state_dict(saved, strict=False)
    assert result.missing_keys == ["candidate_moments"]
    assert_same_state_dict(metric, before)


@pytest.mark.parametrize("count", [math.nan, -1.0, 10.5, 2.0**60])
@pytest.mark.parametrize("key", ["reference_moments", "candidate_moments"])
def test_load_of_an_invalid_count_is_refused(metric, key, count):
    saved = _filled(seed=1).state_dict()
    saved[key] = _with_count(saved[key], count)
    _expect_rejected(metric, lambda: metric.load_state_dict(saved), ValueError, f"`{key}`")


def test_load_with_a_nan_loaded_reference_changes_nothing(metric, tmp_path):
    with_file = _filled(seed=1)
    path = with_file.save_reference(tmp_path / "ref.safetensors")
    loaded = MutualInformationDivergence.from_reference(path)
    loaded.update(*well_conditioned_pairs(10, DX, DY, seed=4), real=False)
    saved = loaded.state_dict()
    assert "loaded_reference_moments" in saved
    saved["loaded_reference_moments"] = saved["loaded_reference_moments"].index_fill(0, torch.tensor([5]), math.nan)
    _expect_rejected(metric, lambda: metric.load_state_dict(saved), ValueError, "`loaded_reference_moments`")


def test_load_with_a_bad_extra_state_changes_nothing(metric):
    saved = _filled(seed=1).state_dict()
    saved["_extra_state"] = {"reference": -2, "candidate": 1}
    _expect_rejected(metric, lambda: metric.load_state_dict(saved), ValueError, "extra state")


def test_checkpoint_of_version_0_1_still_loads(metric):
    # 0.1 saved the same packed moments without the `state_format` record.
    source = _filled(seed=1)
    saved = {k: v for k, v in source.state_dict().items() if k != "state_format"}
    metric.load_state_dict(saved)
    assert torch.equal(metric.compute(), source.compute())
    assert metric.state_format.tolist() == [2, DX, DY]


def test_round_trip_is_exact(metric):
    fresh = MutualInformationDivergence(feature=(DX, DY))
    fresh.load_state_dict(metric.state_dict())
    assert_same_state_dict(fresh, snapshot_state_dict(metric))


# ------------------------------------------------------------------------------------ magnitudes and results
@pytest.mark.parametrize("real", [True, False])
@pytest.mark.parametrize("which", ["images", "texts"])
def test_features_too_large_for_float64_sums_are_refused(metric, real, which):
    x, y = well_conditioned_pairs(10, DX, DY, seed=5)
    x, y = x.double(), y.double()
    if which == "images":
        x = x * 1e200
    else:
        y = y * 1e200
    _expect_rejected(metric, lambda: metric.update(x, y, real=real), ValueError, rf"`{which}`.*above the bound 1e\+100")


def test_features_at_the_bound_do_not_overflow():
    # Rows of magnitude 1e99 (below the bound) keep the statistics finite, and MID is affine invariant, so it
    # equals the value at ordinary scale.
    x, y = well_conditioned_pairs(80, DX, DY, seed=6)
    small, large = MutualInformationDivergence(feature=(DX, DY)), MutualInformationDivergence(feature=(DX, DY))
    for m, scale in ((small, 1.0), (large, 1e99)):
        m.update(x.double() * scale, y.double(), real=True)
        m.update(x[:30].double() * scale * 1.2, y[:30].double(), real=False)
    assert torch.isfinite(large.reference_moments).all()
    assert math.isclose(float(large.compute()), float(small.compute()), rel_tol=1e-8)


def test_functional_refuses_huge_features():
    from mid_metric.functional import mutual_information_divergence

    x, y = well_conditioned_pairs(80, DX, DY, seed=7)
    with pytest.raises(ValueError, match=r"`candidate_images`.*bound"):
        mutual_information_divergence(x, y, x.double() * 1e150, y)


def test_non_finite_standard_error_is_an_error():
    # Candidates 1e80 away: 0.1 returned an infinite standard error (and the CLI printed `Infinity`).
    x, y = well_conditioned_pairs(80, DX, DY, seed=8)
    metric = MutualInformationDivergence(feature=(DX, DY))
    metric.update(x.double(), y.double(), real=True)
    metric.update(x[:30].double() + 1e80, y[:30].double(), real=False)
    with pytest.raises(ValueError, match="standard error is not finite"):
        metric.compute_with_ci()


def test_pmi_never_returns_inf():
    # A reference of scale 1e-60 and pairs of scale 1e99: the squared distances exceed float64's range.
    x, y = well_conditioned_pairs(80, DX, DY, seed=9)
    metric = MutualInformationDivergence(feature=(DX, DY))
    metric.update(x.double() * 1e-60, y.double() * 1e-60, real=True)
    with pytest.raises(ValueError, match="PMI is not finite"):
        metric.pmi(x[:3].double() * 1e99, y[:3].double())


# ----------------------------------------------------------------------------- jackknife: staged rows included
def _jackknife_with_staged_rows(seed=0):
    """A jackknife metric whose state dict holds staged rows and per-group counts in its extra state."""
    x, y = well_conditioned_pairs(120, DX, DY, seed=seed)
    metric = MutualInformationDivergence(feature=(DX, DY), bias_correction="jackknife", jackknife_groups=4)
    metric.update(x, y, real=True)
    metric.update(x[:40] * 1.1, y[:40], real=False)
    return metric


@pytest.mark.parametrize("call", ["load-invalid-count", "load-other-split", "merge-other-split", "update-nan"])
def test_jackknife_rejected_call_leaves_staged_rows_and_groups_unchanged(call):
    metric = _jackknife_with_staged_rows()
    before = snapshot_state_dict(metric)
    assert any(isinstance(v, dict) and v for v in before.values())  # the extra state is part of the snapshot
    saved = _jackknife_with_staged_rows(seed=1).state_dict()
    other_split = MutualInformationDivergence(feature=(6, 2), bias_correction="jackknife", jackknife_groups=4)
    other_split.update(*well_conditioned_pairs(40, 6, 2, seed=2), real=True)
    nan_images = torch.full((3, DX), math.nan)
    calls = {
        "load-invalid-count": lambda: metric.load_state_dict(
            {
                **saved,
                "reference_group_moments": saved["reference_group_moments"].index_fill(1, torch.tensor([0]), -1.0),
            }
        ),
        "load-other-split": lambda: metric.load_state_dict(other_split.state_dict()),
        "merge-other-split": lambda: metric.merge_state(other_split),
        "update-nan": lambda: metric.update(nan_images, torch.ones(3, DY), real=False),
    }
    with pytest.raises(ValueError):
        calls[call]()
    assert_same_state_dict(metric, before)
