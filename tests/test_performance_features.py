"""MID's performance features besides staging: batch scores and their refit schedule, the cached reference fit
with precision matrices, and the moments/gaussian/_checks helpers they rest on.

Every value is compared with an independent computation: the two-pass float64 implementation in ``reference_impl``,
a metric without buffer (``buffer_rows=1``), or separate calls, bit for bit where the feature promises it.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.distributed as dist
from _mid_feed import (
    DX,
    F64,
    HARD_ABS,
    _assert_same_metric_state,
    _batches,
    _close,
    _data,
    _joint,
    _pairs,
    _same_bits,
    _staged_rows,
)
from _state import assert_same_state_dict, snapshot_state_dict
from reference_impl import ClipLikeDistribution, ref_mid, ref_pmi

from mid_metric import MutualInformationDivergence, moments
from mid_metric import functional as F
from mid_metric._checks import MAX_FEATURE_MAGNITUDE, check_within_bound
from mid_metric.gaussian import block_traces, candidate_scatter, reference_from_moments, reference_precisions
from mid_metric.metrics._reference_fit import ReferenceFit

# A restored metric has not seen an update() yet; torchmetrics warns about that on compute().
pytestmark = pytest.mark.filterwarnings("ignore:The ``compute`` method of metric")


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
