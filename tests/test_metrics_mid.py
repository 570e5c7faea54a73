"""``MutualInformationDivergence`` (the torchmetrics class) against the independent two-pass implementation."""

from __future__ import annotations

import pickle
from functools import partial

import pytest
import torch
from _state import assert_same_state, snapshot
from _tester import MetricCase, check_all_in_process, check_ddp
from reference_impl import (
    ClipLikeDistribution,
    ref_corrected_mid,
    ref_mid,
    ref_mid_terms,
    ref_pmi,
    seed123_example,
    well_conditioned_pairs,
)

from mid_metric import MIDResult, MutualInformationDivergence, jackknife, moments
from mid_metric.functional import mutual_information_divergence

REL = 1e-10
HARD_ABS = 5e-9
DX, DY = 6, 5
MOMENT_STATES = ("reference_moments", "candidate_moments")

pytestmark = pytest.mark.filterwarnings("ignore:The ``compute`` method of metric")


def feed(metric, x, y, real, batch_size):
    for start in range(0, x.shape[0], batch_size):
        metric.update(x[start : start + batch_size], y[start : start + batch_size], real=real)
    return metric


def filled(x, y, x0, y0, batch_size=64, **kwargs):
    metric = MutualInformationDivergence(feature=(x.shape[1], y.shape[1]), **kwargs)
    feed(metric, x, y, True, batch_size)
    return feed(metric, x0, y0, False, batch_size)


def assert_rel(actual, expected, rel=REL):
    assert float(actual) == pytest.approx(float(expected), rel=rel, abs=0.0), (float(actual), float(expected))


@pytest.fixture(scope="module")
def data():
    x, y = well_conditioned_pairs(400, DX, DY, seed=0)
    x0, y0 = well_conditioned_pairs(300, DX, DY, seed=1, strength=0.3)
    return x, y, x0, y0


@pytest.fixture(scope="module")
def hard_data():
    dist = ClipLikeDistribution(64, 64, seed=3)
    x, y = dist.sample(3000, seed=4)
    x0, y0 = dist.sample(2000, seed=5, rho_scale=0.95)
    return x, y, x0, y0, ref_mid(x, y, x0, y0)


# ------------------------------------------------------------------------------------------------ values
def test_seed123_cross_check():
    # Published check of the official naver-ai/mid.metric code (docs/estimator.md): MID ~= 0.151645, MI ~= 0.1543.
    x, y, x0 = seed123_example()
    metric = MutualInformationDivergence(feature=2)
    metric.update(x, y, real=True)
    metric.update(x0, y, real=False)
    value = metric.compute()
    assert value.dtype == torch.float64 and value.ndim == 0 and value.device.type == "cpu"
    assert value.item() == pytest.approx(0.151645, abs=5e-7)
    assert metric.compute_result().mutual_information.item() == pytest.approx(0.1543, abs=5e-5)


@pytest.mark.parametrize("batch_size", [1, 7, 256])
def test_well_conditioned_matches_two_pass_for_any_batch_size(data, batch_size):
    x, y, x0, y0 = data
    assert_rel(filled(x, y, x0, y0, batch_size).compute(), ref_mid(x, y, x0, y0))


@pytest.mark.parametrize("batch_size", [1, 7, 256])
def test_hard_clip_like_matches_two_pass_for_any_batch_size(hard_data, batch_size):
    x, y, x0, y0, expected = hard_data
    got = filled(x, y, x0, y0, batch_size).compute().item()
    assert abs(got - expected) <= HARD_ABS, (got, expected, got - expected)


def test_uneven_batches_and_interleaved_groups(data):
    """Batches of varying size, reference and candidate updates interleaved."""
    x, y, x0, y0 = data
    metric = MutualInformationDivergence(feature=(DX, DY))
    sizes = [1, 3, 50, 1, 200, 17, 128]
    rs = cs = 0
    for size in sizes:
        metric.update(x[rs : rs + size], y[rs : rs + size], real=True)
        metric.update(x0[cs : cs + size // 2], y0[cs : cs + size // 2], real=False)
        rs, cs = rs + size, cs + size // 2
    metric.update(x[rs:], y[rs:], real=True)
    metric.update(x0[cs:], y0[cs:], real=False)
    assert_rel(metric.compute(), ref_mid(x, y, x0, y0))


def test_order_independence(data, hard_data):
    g = torch.Generator().manual_seed(0)
    x, y, x0, y0 = data
    p, q = torch.randperm(x.shape[0], generator=g), torch.randperm(x0.shape[0], generator=g)
    assert_rel(filled(x[p], y[p], x0[q], y0[q], 32).compute(), filled(x, y, x0, y0, 32).compute())
    hx, hy, hx0, hy0, expected = hard_data
    p, q = torch.randperm(hx.shape[0], generator=g), torch.randperm(hx0.shape[0], generator=g)
    assert abs(filled(hx[p], hy[p], hx0[q], hy0[q], 100).compute().item() - expected) <= HARD_ABS


def test_pmi_method_matches_per_sample_formula(data, hard_data):
    x, y, x0, y0 = data
    metric = filled(x, y, x0, y0)
    pmi = metric.pmi(x0, y0)
    assert pmi.dtype == torch.float64 and pmi.shape == (x0.shape[0],)
    torch.testing.assert_close(pmi, ref_pmi(x, y, x0, y0), rtol=REL, atol=0)
    m = x0.shape[0]
    result = metric.compute_result()
    derived = result.mutual_information + m / (m - 1) * (pmi - result.mutual_information).mean()
    assert_rel(result.mid, derived)
    hx, hy, hx0, hy0, _ = hard_data
    hard = filled(hx, hy, hx0, hy0, 500)
    torch.testing.assert_close(
        hard.pmi(hx0[:100], hy0[:100]), ref_pmi(hx, hy, hx0[:100], hy0[:100]), rtol=0, atol=HARD_ABS
    )


def test_compute_result_fields(data):
    x, y, x0, y0 = data
    metric = filled(x, y, x0, y0)
    assert metric.last_result is None
    result = metric.compute_result()
    assert isinstance(result, MIDResult)
    mid, mi, distance = ref_mid_terms(x, y, x0, y0)
    assert_rel(result.mid, mid)
    assert_rel(result.mutual_information, mi)
    assert_rel(result.distance, distance)
    assert torch.equal(result.mid, result.mutual_information + result.distance)
    assert torch.equal(result.mid, metric.compute())
    assert (result.num_reference, result.num_candidates) == (x.shape[0], x0.shape[0])
    assert all(
        t.dtype == torch.float64 and t.ndim == 0 for t in (result.mid, result.mutual_information, result.distance)
    )
    assert metric.last_result is result
    assert set(result.as_dict("val/")) == {"val/mid", "val/mutual_information", "val/distance"}


def test_candidates_equal_reference_give_mi(data):
    x, y, _, _ = data
    result = filled(x, y, x, y, 37).compute_result()
    assert abs(result.mid.item() - result.mutual_information.item()) <= 1e-12


def test_state_is_constant_size(data):
    x, y, x0, y0 = data
    small, big = filled(x[:20], y[:20], x0[:20], y0[:20]), filled(x, y, x0, y0, 1)
    for name in MOMENT_STATES:
        value = big.metric_state[name]
        assert value.shape == small.metric_state[name].shape == ((DX + DY + 1) ** 2,)
        assert value.dtype == torch.float64
    assert big.state_format.tolist() == small.state_format.tolist() == [2, DX, DY]


def test_validate_args_false_gives_same_value(data):
    x, y, x0, y0 = data
    assert_rel(filled(x, y, x0, y0, validate_args=False).compute(), ref_mid(x, y, x0, y0))


# ------------------------------------------------------------------------------------- torchmetrics API
def test_merge_state_equals_single_metric(data):
    x, y, x0, y0 = data
    whole = filled(x, y, x0, y0, 50).compute()
    first = filled(x[:130], y[:130], x0[:7], y0[:7], 50)
    second = filled(x[130:], y[130:], x0[7:], y0[7:], 50)
    first.compute()  # a cached value from before the merge must not be returned afterwards
    first.merge_state(second)
    assert_rel(first.compute(), whole)
    # The dict form of merge_state, and a part with no candidates at all.
    third = filled(x[:200], y[:200], x0[:0], y0[:0])
    fourth = filled(x[200:], y[200:], x0, y0)
    third.merge_state(fourth.metric_state)
    assert_rel(third.compute(), whole)


def test_forward_accumulates_and_returns_batch_mean_pmi(data):
    x, y, x0, y0 = data
    by_forward = MutualInformationDivergence(feature=(DX, DY))
    by_update = MutualInformationDivergence(feature=(DX, DY))
    # No reference yet: a candidate batch has no score.
    assert by_forward(x0[:10], y0[:10], real=False) is None
    by_update.update(x0[:10], y0[:10], real=False)
    for start in range(0, x.shape[0], 100):
        assert by_forward(x[start : start + 100], y[start : start + 100], real=True) is None  # reference batches
        by_update.update(x[start : start + 100], y[start : start + 100], real=True)
    for start in range(10, x0.shape[0], 90):
        batch = (x0[start : start + 90], y0[start : start + 90])
        expected = by_update.pmi(*batch).mean()  # under the reference accumulated so far
        value = by_forward(*batch, real=False)
        by_update.update(*batch, real=False)
        assert value is not None and value.dtype == torch.float64 and value.ndim == 0
        assert_rel(value, expected)
        assert_rel(value, ref_pmi(x, y, *batch).mean())
    assert_same_state(by_forward, snapshot(by_update))
    assert_rel(by_forward.compute(), ref_mid(x, y, x0, y0))


@pytest.mark.parametrize("reference_by_forward", [False, True])
def test_forward_with_kept_reference_does_not_double_count(data, reference_by_forward):
    x, y, x0, y0 = data
    metric = MutualInformationDivergence(feature=(DX, DY), reset_real_features=False)
    for start in range(0, x.shape[0], 100):
        if reference_by_forward:
            metric(x[start : start + 100], y[start : start + 100], real=True)
        else:
            metric.update(x[start : start + 100], y[start : start + 100], real=True)
    for start in range(0, 150, 50):
        metric(x0[start : start + 50], y0[start : start + 50], real=False)
    assert_rel(metric.compute(), ref_mid(x, y, x0[:150], y0[:150]))
    metric.reset()
    for start in range(150, x0.shape[0], 50):
        metric(x0[start : start + 50], y0[start : start + 50], real=False)
    result = metric.compute_result()
    assert (result.num_reference, result.num_candidates) == (x.shape[0], x0.shape[0] - 150)
    assert_rel(result.mid, ref_mid(x, y, x0[150:], y0[150:]))


def test_reset_semantics(data):
    x, y, x0, y0 = data
    metric = filled(x, y, x0, y0)
    first = metric.compute()
    metric.reset()
    assert metric.last_result is None
    assert all(int(metric.metric_state[name][0]) == 0 for name in MOMENT_STATES)  # both counts back to 0
    assert metric.state_format.tolist() == [2, DX, DY]
    with pytest.raises(ValueError, match="reference"):
        metric.compute()
    feed(metric, x, y, True, 64)
    feed(metric, x0, y0, False, 64)
    assert_rel(metric.compute(), first)

    keep = filled(x, y, x0, y0, reset_real_features=False)
    reference_before = keep.metric_state["reference_moments"].clone()
    keep.reset()
    assert torch.equal(keep.reference_moments, reference_before)
    assert int(keep.candidate_moments[0]) == 0
    with pytest.raises(ValueError, match="2 candidate"):
        keep.compute()
    feed(keep, x0[:100], y0[:100], False, 64)
    assert_rel(keep.compute(), ref_mid(x, y, x0[:100], y0[:100]))


def test_state_dict_round_trip(data):
    x, y, x0, y0 = data
    source = filled(x, y, x0[:100], y0[:100])
    expected = source.compute()
    saved = source.state_dict()
    assert {"reference_moments", "candidate_moments"} <= set(saved)
    saved_copy = {k: v.clone() for k, v in saved.items() if isinstance(v, torch.Tensor)}
    restored = MutualInformationDivergence(feature=(DX, DY))
    restored.load_state_dict(saved)
    assert torch.equal(restored.compute(), expected)
    # Resume mid-evaluation: the rest of the candidates give the uninterrupted value.
    feed(restored, x0[100:], y0[100:], False, 64)
    assert_rel(restored.compute(), ref_mid(x, y, x0, y0))
    # The loaded state is the metric's own: updating it changes neither the checkpoint nor another metric loaded
    # from it, and nor the source metric.
    for name, value in saved_copy.items():
        assert torch.equal(saved[name], value), name
    other = MutualInformationDivergence(feature=(DX, DY))
    other.load_state_dict(saved)
    assert torch.equal(other.compute(), expected)
    assert torch.equal(source.compute(), expected)
    # Loading into a metric that already computed something must not return its stale cached value.
    used = filled(x[:50], y0[:50], x0[:50], y0[:50])
    used.compute()
    used.load_state_dict(saved)
    assert torch.equal(used.compute(), expected)


def test_state_dict_with_wrong_feature_size_is_rejected(data):
    x, y, x0, y0 = data
    saved = filled(x, y, x0, y0).state_dict()
    other = MutualInformationDivergence(feature=(DX, DY + 1))
    before = snapshot(other)
    with pytest.raises((ValueError, RuntimeError), match="feature split"):
        other.load_state_dict(saved)
    assert_same_state(other, before)


def test_pickle_and_clone(data):
    x, y, x0, y0 = data
    metric = filled(x, y, x0, y0)
    expected = metric.compute()
    for copy in (pickle.loads(pickle.dumps(metric)), metric.clone()):
        assert torch.equal(copy.compute(), expected)
        assert copy.image_dim == DX and copy.text_dim == DY
        copy.update(x0[:5], y0[:5], real=False)  # independent of the original
        assert not torch.equal(copy.compute(), expected)
    assert torch.equal(metric.compute(), expected)
    fresh = pickle.loads(pickle.dumps(MutualInformationDivergence(feature=(DX, DY), eps=1e-3)))
    assert fresh.eps == 1e-3
    feed(fresh, x, y, True, 64)
    feed(fresh, x0, y0, False, 64)
    assert_rel(fresh.compute(), ref_mid(x, y, x0, y0, eps=1e-3))


# --------------------------------------------------------------------------------------------------- dtypes
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_input_dtypes_give_float64(data, dtype):
    x, y, x0, y0 = (t.to(dtype) for t in data)
    metric = filled(x, y, x0, y0)
    value = metric.compute()
    assert value.dtype == torch.float64
    assert all(metric.metric_state[name].dtype == torch.float64 for name in MOMENT_STATES)
    assert_rel(value, ref_mid(x, y, x0, y0))  # float64 arithmetic on the rounded inputs
    assert metric.pmi(x0[:3], y0[:3]).dtype == torch.float64


def test_mixed_input_dtypes(data):
    x, y, x0, y0 = data
    metric = MutualInformationDivergence(feature=(DX, DY))
    metric.update(x.half(), y.float(), real=True)
    metric.update(x0.bfloat16(), y0, real=False)
    assert_rel(metric.compute(), ref_mid(x.half(), y.float(), x0.bfloat16(), y0))


@pytest.mark.parametrize(
    "convert",
    [
        lambda m: m.half(),
        lambda m: m.float(),
        lambda m: m.double(),
        lambda m: m.bfloat16(),
        lambda m: m.set_dtype(torch.half),
        lambda m: m.set_dtype(torch.float32),
        lambda m: m.to(torch.float16),
        lambda m: m.to(dtype=torch.float32),
        lambda m: m.type(torch.float16),
    ],
    ids=["half", "float", "double", "bfloat16", "set_dtype_half", "set_dtype_float", "to_half", "to_float", "type"],
)
def test_dtype_requests_keep_float64_states(data, convert):
    x, y, x0, y0 = data
    metric = filled(x, y, x0[:150], y0[:150])
    before = snapshot(metric)
    metric = convert(metric)
    assert_same_state(metric, before)  # no rounding through a lower precision either
    feed(metric, x0[150:], y0[150:], False, 64)
    assert all(metric.metric_state[name].dtype == torch.float64 for name in MOMENT_STATES)
    fresh = convert(MutualInformationDivergence(feature=(DX, DY)))
    assert all(fresh.metric_state[name].dtype == torch.float64 for name in MOMENT_STATES)
    assert fresh.state_format.dtype == torch.int64
    metric.reset()  # the defaults stay float64 too
    assert all(metric.metric_state[name].dtype == torch.float64 for name in MOMENT_STATES)
    feed(metric, x, y, True, 64)
    feed(metric, x0, y0, False, 64)
    value = metric.compute()
    assert value.dtype == torch.float64
    assert_rel(value, ref_mid(x, y, x0, y0))


# ---------------------------------------------------------------------------- the shared metric tester
def _calls(x, y, x0, y0, batch=50):
    """Reference and candidate batches, interleaved as in a validation loop."""
    refs = [((x[i : i + batch], y[i : i + batch]), {"real": True}) for i in range(0, x.shape[0], batch)]
    cands = [((x0[i : i + batch], y0[i : i + batch]), {"real": False}) for i in range(0, x0.shape[0], batch)]
    calls = []
    for i in range(max(len(refs), len(cands))):
        calls += refs[i : i + 1] + cands[i : i + 1]
    return calls


def _cases():
    well = well_conditioned_pairs(400, DX, DY, seed=0) + well_conditioned_pairs(300, DX, DY, seed=1, strength=0.3)
    hard_dist = ClipLikeDistribution(32, 32, seed=7)
    hard = hard_dist.sample(1500, seed=8) + hard_dist.sample(1000, seed=9, rho_scale=0.95)
    independent = well_conditioned_pairs(500, DX, DY, seed=2) + well_conditioned_pairs(200, DX, DY, seed=3)
    return {
        "well": MetricCase(
            partial(MutualInformationDivergence, feature=(DX, DY)),
            _calls(*well),
            ref_mid(*well),
            functional=partial(mutual_information_divergence, *well),
        ),
        "eps": MetricCase(
            partial(MutualInformationDivergence, feature=(DX, DY), eps=1e-3),
            _calls(*well),
            ref_mid(*well, eps=1e-3),
            functional=partial(mutual_information_divergence, *well, eps=1e-3),
        ),
        "clip_like": MetricCase(
            partial(MutualInformationDivergence, feature=(32, 32)),
            _calls(*hard, batch=256),
            ref_mid(*hard),
            functional=partial(mutual_information_divergence, *hard),
            rel=0.0,
            abs=HARD_ABS,
        ),
        "bias_corrected": MetricCase(
            partial(MutualInformationDivergence, feature=(DX, DY), bias_correction=True),
            _calls(*independent),
            ref_corrected_mid(*independent),
            functional=partial(mutual_information_divergence, *independent, bias_correction=True),
        ),
        # The jackknife's groups come from a hash of each row's caption, so batches, order and ranks do not matter.
        # Expected: the grouped functional jackknife on the whole matrices (tests/test_jackknife.py checks it
        # against an implementation from the formula).
        "jackknife": MetricCase(
            partial(MutualInformationDivergence, feature=(DX, DY), bias_correction="jackknife", jackknife_groups=5),
            _calls(*independent),
            _grouped_jackknife(*independent, num_groups=5),
        ),
    }


def _grouped_jackknife(x, y, x0, y0, num_groups):
    groups = [jackknife.group_moments(moments.joint_rows(a, b), DX, num_groups) for a, b in ((x, y), (x0, y0))]
    return float(jackknife.jackknife_divergence(*groups, image_dim=DX).mid)


@pytest.mark.parametrize("name", ["well", "eps", "clip_like", "bias_corrected", "jackknife"])
def test_metric_tester_in_process(name):
    check_all_in_process(_cases()[name])


@pytest.mark.slow
def test_metric_tester_ddp():
    check_ddp(*_cases().values())


def test_jackknife_interval_is_the_functional_one_and_level_is_checked():
    x, y, x0, y0 = well_conditioned_pairs(500, DX, DY, seed=2) + well_conditioned_pairs(200, DX, DY, seed=3)
    metric = MutualInformationDivergence(feature=(DX, DY), bias_correction="jackknife", jackknife_groups=5)
    metric.update(x, y, real=True)
    metric.update(x0, y0, real=False)
    groups = [jackknife.group_moments(moments.joint_rows(a, b), DX, 5) for a, b in ((x, y), (x0, y0))]
    for level in (0.9, 0.95):
        expected = jackknife.jackknife_divergence(*groups, image_dim=DX, level=level)
        got = metric.compute_with_ci(level)
        assert got.ci_level == level
        for name in ("mid", "standard_error", "ci_low", "ci_high"):
            assert_rel(getattr(got, name), getattr(expected, name))
    for level in (None, 1.0, True):
        with pytest.raises(ValueError, match="`level` must be a number in \\(0, 1\\), got"):
            metric.compute_with_ci(level)
