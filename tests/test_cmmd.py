"""CMMD against a dense float64 implementation written from the paper's formula, its invariances, and the metric.

The dense reference forms every squared distance ``||a - b||^2`` from explicit differences in float64 and averages
``exp(-d^2 / (2 sigma^2))`` over all pairs (the paper's estimator: diagonals included), or over the pairs of
distinct rows (``unbiased``). The metric runs through the shared tester (batch splits, order, pickle, clone,
``state_dict``, ``merge_state``, and 2-process DDP with uneven and empty ranks).
"""

from __future__ import annotations

import math
from functools import partial

import pytest
import torch
from _ddp import ddp_marks
from _tester import MetricCase, check_all_in_process, check_ddp
from clip_fixtures import TINY_IMAGE_SIZE, build_tiny_clip

from mid_metric.functional.cmmd import cmmd
from mid_metric.metrics.cmmd import CMMD

F64 = torch.float64
D = 32

# The tester computes a metric loaded from a state_dict, which torchmetrics warns about (no update() was called).
pytestmark = pytest.mark.filterwarnings("ignore:The ``compute`` method of metric")


def dense_cmmd(x, y, sigma=10.0, scale=1000.0, unbiased=False, normalize=True) -> float:
    x, y = x.to(F64), y.to(F64)
    if normalize:
        x, y = x / x.norm(dim=1, keepdim=True), y / y.norm(dim=1, keepdim=True)

    def kernel(a, b):
        return torch.exp(-(a[:, None, :] - b[None, :, :]).square().sum(dim=2) / (2 * sigma**2))

    def within(a):
        k, n = kernel(a, a), a.shape[0]
        return float((k.sum() - k.diagonal().sum()) / (n * (n - 1))) if unbiased else float(k.mean())

    return scale * (within(x) + within(y) - 2 * float(kernel(x, y).mean()))


def embeddings(n: int, seed: int, shift: float = 0.0, dim: int = D) -> torch.Tensor:
    """CLIP-like float32 unit embeddings: a common direction plus noise (pairwise cosines around 0.5)."""
    g = torch.Generator().manual_seed(seed)
    common = torch.randn(dim, generator=torch.Generator().manual_seed(0))
    offset = torch.randn(dim, generator=torch.Generator().manual_seed(1))
    rows = common + torch.randn(n, dim, generator=g) + shift * offset
    return torch.nn.functional.normalize(rows, dim=1)


@pytest.fixture(scope="module")
def sets() -> tuple[torch.Tensor, torch.Tensor]:
    return embeddings(150, seed=2), embeddings(120, seed=3, shift=0.5)


# ------------------------------------------------------------------------------------- functional
@pytest.mark.parametrize("unbiased", [False, True])
def test_agrees_with_dense_implementation(sets, unbiased):
    real, generated = sets
    expected = dense_cmmd(real, generated, unbiased=unbiased)
    value = cmmd(real, generated, unbiased=unbiased)
    assert value.dtype == F64
    assert math.isclose(float(value), expected, rel_tol=1e-10)


def test_close_sets_keep_their_precision(sets):
    real = sets[0]
    generated = embeddings(150, seed=4, shift=0.02)  # the same distribution, nearly: CMMD is tiny
    expected = dense_cmmd(real, generated)
    assert expected < 0.5
    assert math.isclose(float(cmmd(real, generated)), expected, rel_tol=1e-10)


def test_unnormalized_features_with_an_offset(sets):
    real, generated = (10 * rows + 50.0 for rows in sets)  # far from the origin: centring keeps the precision
    for sigma in (10.0, 40.0):
        expected = dense_cmmd(real, generated, sigma=sigma, normalize=False)
        assert math.isclose(float(cmmd(real, generated, sigma=sigma, normalize=False)), expected, rel_tol=1e-10)


@pytest.mark.parametrize("block_size", [1, 7, 39, 40, 4096])
def test_blockwise_equals_dense_for_any_block_size(sets, block_size):
    real, generated = sets[0][:40], sets[1][:33]
    for unbiased in (False, True):
        expected = dense_cmmd(real, generated, unbiased=unbiased)
        value = float(cmmd(real, generated, unbiased=unbiased, block_size=block_size))
        assert math.isclose(value, expected, rel_tol=1e-10)


def test_invariant_to_row_order_and_symmetric(sets):
    real, generated = sets
    value = float(cmmd(real, generated))
    g = torch.Generator().manual_seed(5)
    shuffled = float(cmmd(real[torch.randperm(150, generator=g)], generated[torch.randperm(120, generator=g)]))
    assert math.isclose(shuffled, value, rel_tol=1e-9)
    assert math.isclose(float(cmmd(generated, real)), value, rel_tol=1e-9)


def test_normalize_ignores_row_lengths(sets):
    real, generated = sets
    lengths = torch.linspace(0.1, 30.0, real.shape[0], dtype=F64)[:, None]
    assert math.isclose(float(cmmd(real * lengths, generated)), float(cmmd(real, generated)), rel_tol=1e-9)


def test_scale_and_bandwidth(sets):
    real, generated = (rows.double() for rows in sets)
    value = float(cmmd(real, generated, normalize=False))
    assert math.isclose(float(cmmd(real, generated, scale=1.0, normalize=False)) * 1000, value, rel_tol=1e-12)
    # Scaling the features and sigma together leaves every kernel value unchanged.
    scaled = float(cmmd(3 * real, 3 * generated, sigma=30.0, normalize=False))
    assert math.isclose(scaled, value, rel_tol=1e-12)


def test_analytic_values():
    e1, e2 = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]])
    k = math.exp(-2 / 200)  # ||e1 - e2||^2 = 2
    assert math.isclose(float(cmmd(e1, e2)), 1000 * (2 - 2 * k), rel_tol=1e-12)
    both = torch.cat([e1, e2])
    assert float(cmmd(both, both)) == 0.0  # identical sets
    # Unbiased: the within-set means run over the one pair of distinct rows, k; the cross mean is (1 + k) / 2.
    assert math.isclose(float(cmmd(both, both, unbiased=True)), 1000 * (2 * k - (1 + k)), rel_tol=1e-12)
    assert float(cmmd(both, both, unbiased=True)) < 0  # the unbiased estimator can be negative


def test_identical_sets_give_zero_up_to_rounding(sets):
    real = sets[0]
    assert abs(float(cmmd(real, real))) < 1e-9


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"sigma": 0.0}, ValueError, "`sigma` must be a finite number > 0"),
        ({"scale": float("inf")}, ValueError, "`scale` must be a finite number > 0"),
        ({"unbiased": 1}, TypeError, "`unbiased`"),
        ({"normalize": "yes"}, TypeError, "`normalize`"),
        ({"block_size": 0}, ValueError, "`block_size` must be an int >= 1"),
        ({"block_size": 2.0}, TypeError, "`block_size` must be an int >= 1"),
    ],
)
def test_bad_settings_name_the_argument(sets, kwargs, error, match):
    with pytest.raises(error, match=match):
        cmmd(*sets, **kwargs)


def test_bad_features_name_the_argument(sets):
    real, generated = sets
    with pytest.raises(ValueError, match=r"`generated_features` must have shape \(batch, 32\)"):
        cmmd(real, generated[:, :8])
    with pytest.raises(ValueError, match="`real_features` contains NaN or Inf"):
        cmmd(torch.full((3, D), float("nan")), generated)
    with pytest.raises(ValueError, match="`generated_features` has 1 row"):
        cmmd(real, torch.cat([generated[:3], torch.zeros(1, D)]))
    with pytest.raises(ValueError, match="CMMD needs at least 1 real image"):
        cmmd(real[:0], generated)
    with pytest.raises(ValueError, match="The unbiased CMMD needs at least 2 generated image"):
        cmmd(real, generated[:1], unbiased=True)
    with pytest.raises(TypeError, match="`real_features` must be a floating tensor"):
        cmmd(real.to(torch.int64), generated)
    # Without normalisation a zero row is an ordinary point.
    assert math.isfinite(float(cmmd(real, torch.zeros(2, D), normalize=False)))


# ----------------------------------------------------------------------------------------- metric
def _case(real: torch.Tensor, generated: torch.Tensor, unbiased: bool = False) -> MetricCase:
    calls = [
        ((real[:60], None), {"real": True}),
        ((generated[:50], None), {"real": False}),
        ((real[60:], None), {"real": True}),
        ((generated[50:], None), {"real": False}),
    ]
    return MetricCase(
        factory=partial(CMMD, feature=D, unbiased=unbiased, block_size=64),
        calls=calls,
        expected=dense_cmmd(real, generated, unbiased=unbiased),
        functional=partial(cmmd, real, generated, unbiased=unbiased),
        rel=1e-10,
    )


@pytest.mark.parametrize("unbiased", [False, True])
def test_metric_in_every_way(sets, unbiased):
    check_all_in_process(_case(sets[0][:70], sets[1][:65], unbiased=unbiased))


def test_metric_equals_functional_exactly(sets):
    real, generated = sets
    metric = CMMD(feature=D)
    metric.update(real, ["ignored"] * real.shape[0], real=True)
    metric.update(generated, torch.zeros(3, 5), real=False)  # the texts are not looked at
    assert float(metric.compute()) == float(cmmd(real, generated))
    assert metric.stored_counts() == (150, 120)


@pytest.mark.filterwarnings("ignore:The ``compute`` method of metric")
def test_metric_under_ddp(sets):
    check_ddp(_case(sets[0][:70], sets[1][:65]))


for _mark in ddp_marks:
    test_metric_under_ddp = _mark(test_metric_under_ddp)


def test_max_samples_raises_and_keeps_the_state(sets):
    real, generated = sets
    metric = CMMD(feature=D, max_samples=100)
    metric.update(real[:80], None, real=True)
    metric.update(generated[:100], None, real=False)
    with pytest.raises(ValueError, match="CMMD stores at most `max_samples` = 100 real images; it holds 80"):
        metric.update(real[80:110], None, real=True)
    with pytest.raises(ValueError, match="100 generated images; it holds 100 and this batch has 1"):
        metric.update(generated[100:101], None, real=False)
    assert metric.stored_counts() == (80, 100)
    assert math.isclose(float(metric.compute()), dense_cmmd(real[:80], generated[:100]), rel_tol=1e-10)

    other = CMMD(feature=D, max_samples=100)
    other.update(real[80:110], None, real=True)
    with pytest.raises(ValueError, match="the incoming state has 30"):
        metric.merge_state(other)
    assert metric.stored_counts() == (80, 100)

    state = CMMD(feature=D, max_samples=200)
    state.update(real[:150], None, real=True)
    with pytest.raises(ValueError, match="above this metric's `max_samples` = 100"):
        CMMD(feature=D, max_samples=100).load_state_dict(state.state_dict())


def test_forward_adds_the_batch_and_returns_none(sets):
    real, generated = sets
    metric = CMMD(feature=D)
    assert metric(real, None, real=True) is None
    assert metric(generated, None) is None
    assert math.isclose(float(metric.compute()), dense_cmmd(real, generated), rel_tol=1e-10)


def test_metric_errors(sets):
    real, generated = sets
    metric = CMMD(feature=D)
    with pytest.raises(ValueError, match="CMMD needs at least 1 generated image.*real=False"):
        metric.update(real, None, real=True)
        metric.compute()
    with pytest.raises(TypeError, match="`real`"):
        metric.update(generated, None, real="no")
    with pytest.raises(ValueError, match="`images` has 1 row"):
        metric.update(torch.zeros(1, D), None)
    with pytest.raises(ValueError, match=r"`images` must have shape \(batch, 32\)"):
        metric.update(torch.zeros(2, 8), None)
    with pytest.raises(NotImplementedError, match="no per-sample values"):
        metric.per_sample()
    with pytest.raises(ValueError, match="`sigma`"):
        CMMD(feature=D, sigma=-1.0)
    with pytest.raises(ValueError, match="`max_samples` must be an int >= 1"):
        CMMD(feature=D, max_samples=0)
    assert metric.stored_counts() == (150, 0)
    assert CMMD.higher_is_better is False and CMMD.full_state_update is False


def test_raw_images_are_encoded_without_the_texts(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    folder = build_tiny_clip(tmp_path / "tiny-clip")
    metric = CMMD(feature=str(folder))
    g = torch.Generator().manual_seed(6)
    real = torch.randint(0, 256, (6, 3, TINY_IMAGE_SIZE, TINY_IMAGE_SIZE), dtype=torch.uint8, generator=g)
    generated = torch.randint(0, 256, (5, 3, TINY_IMAGE_SIZE, TINY_IMAGE_SIZE), dtype=torch.uint8, generator=g)
    metric.update(real, None, real=True)
    metric.update(generated, None, real=False)
    extractor = metric.feature_extractor
    expected = dense_cmmd(extractor.encode_images(real), extractor.encode_images(generated))
    assert math.isclose(float(metric.compute()), expected, rel_tol=1e-10)
