"""Bad input: every rejected call raises a clear ValueError/TypeError naming the argument and changes no state."""

from __future__ import annotations

import math

import pytest
import torch
from _state import assert_same_state, snapshot
from reference_impl import well_conditioned_pairs

from mid_metric import MutualInformationDivergence
from mid_metric import functional as F

DX, DY = 4, 3

pytestmark = pytest.mark.filterwarnings("ignore:The ``compute`` method of metric")


@pytest.fixture
def pairs():
    x, y = well_conditioned_pairs(60, DX, DY, seed=0)
    return x.float(), y.float()


@pytest.fixture
def metric(pairs):
    """A metric that already holds some reference and candidate pairs (so 'unchanged' is not trivially zeros)."""
    m = MutualInformationDivergence(feature=(DX, DY))
    x, y = pairs
    m.update(x, y, real=True)
    m.update(x[:10] * 1.1, y[:10], real=False)
    return m


def _with(t, row, col, value):
    t = t.clone()
    t[row, col] = value
    return t


def bad_update_cases():
    x = torch.randn(5, DX)
    y = torch.randn(5, DY)
    return [
        # (images, texts, error, match)
        pytest.param(x[0], y, ValueError, r"`images` must have shape \(batch, 4\)", id="images-1d"),
        pytest.param(x, y[0], ValueError, r"`texts` must have shape \(batch, 3\)", id="texts-1d"),
        pytest.param(x.unsqueeze(0), y, ValueError, "`images` must have shape", id="images-3d"),
        pytest.param(x, y.unsqueeze(0), ValueError, "`texts` must have shape", id="texts-3d"),
        pytest.param(torch.randn(5, DX + 1), y, ValueError, "`images`.*got \\(5, 5\\)", id="images-wrong-dim"),
        pytest.param(x, torch.randn(5, DY - 1), ValueError, "`texts`.*got \\(5, 2\\)", id="texts-wrong-dim"),
        pytest.param(y, x, ValueError, "`images`", id="swapped"),
        pytest.param(x, y[:4], ValueError, "`images` and `texts` must hold the same number", id="batch-mismatch"),
        pytest.param(_with(x, 2, 1, math.nan), y, ValueError, "`images` contains NaN", id="images-nan"),
        pytest.param(x, _with(y, 4, 0, math.nan), ValueError, "`texts` contains NaN", id="texts-nan"),
        pytest.param(_with(x, 0, 0, math.inf), y, ValueError, "`images` contains NaN or Inf", id="images-inf"),
        pytest.param(x, _with(y, 1, 2, -math.inf), ValueError, "`texts` contains NaN or Inf", id="texts-neginf"),
        pytest.param(_with(x.half(), 0, 0, 7e4), y, ValueError, "`images`", id="half-overflow-inf"),
        pytest.param(x.long(), y, TypeError, "`images` must be a floating tensor", id="images-int64"),
        pytest.param(x, y.int(), TypeError, "`texts` must be a floating tensor", id="texts-int32"),
        pytest.param(x > 0, y, TypeError, "`images` must be a floating tensor", id="images-bool"),
        pytest.param(x, (y > 0), TypeError, "`texts` must be a floating tensor", id="texts-bool"),
        pytest.param(x.to(torch.uint8), y, TypeError, "`images`", id="images-uint8"),
        pytest.param(x.to(torch.complex64), y, TypeError, "`images`", id="images-complex"),
        pytest.param(x.tolist(), y, TypeError, "`images` must be a torch.Tensor", id="images-list"),
        pytest.param(x, y.numpy(), TypeError, "`texts` must be a torch.Tensor", id="texts-numpy"),
        pytest.param(None, y, TypeError, "`images`", id="images-none"),
    ]


@pytest.mark.parametrize("real", [True, False])
@pytest.mark.parametrize(("images", "texts", "error", "match"), bad_update_cases())
def test_bad_update_is_rejected_and_state_unchanged(metric, images, texts, error, match, real):
    before = snapshot(metric)
    with pytest.raises(error, match=match):
        metric.update(images, texts, real=real)
    assert_same_state(metric, before)
    with pytest.raises(error, match=match):
        metric(images, texts, real=real)  # forward
    assert_same_state(metric, before)
    if not real:
        with pytest.raises(error, match=match):
            metric.pmi(images, texts)
        assert_same_state(metric, before)


@pytest.mark.parametrize("real", [1, 0, "yes", None, 1.0, torch.tensor(True)], ids=repr)
def test_real_must_be_bool(metric, pairs, real):
    x, y = pairs
    before = snapshot(metric)
    with pytest.raises(TypeError, match="`real` must be a bool"):
        metric.update(x, y, real=real)
    assert_same_state(metric, before)


def test_real_is_required(metric, pairs):
    x, y = pairs
    before = snapshot(metric)
    with pytest.raises(TypeError):
        metric.update(x, y)
    assert_same_state(metric, before)


def test_empty_batch_changes_nothing(metric):
    before = snapshot(metric)
    metric.update(torch.empty(0, DX), torch.empty(0, DY), real=True)
    metric.update(torch.empty(0, DX), torch.empty(0, DY), real=False)
    assert_same_state(metric, before)
    assert metric.pmi(torch.empty(0, DX), torch.empty(0, DY)).shape == (0,)
    with pytest.raises(ValueError, match="`images`"):
        metric.update(torch.empty(0, DX + 1), torch.empty(0, DY), real=True)
    assert_same_state(metric, before)


# ------------------------------------------------------------------------------------------- constructor
@pytest.mark.parametrize(
    ("feature", "error"),
    [
        (b"768", TypeError),
        (2.5, TypeError),
        (True, TypeError),
        (None, TypeError),
        ((3,), TypeError),
        ((3, 4, 5), TypeError),
        ((3, 4.0), TypeError),
        ((3, True), TypeError),
        (0, ValueError),
        (-1, ValueError),
        ((3, 0), ValueError),
    ],
    ids=repr,
)
def test_bad_feature(feature, error):
    with pytest.raises(error, match="`feature`"):
        MutualInformationDivergence(feature=feature)


@pytest.mark.parametrize(
    ("eps", "error"),
    [
        (-1e-3, ValueError),
        (math.nan, ValueError),
        (math.inf, ValueError),
        ("0.1", TypeError),
        (True, TypeError),
        (None, TypeError),
    ],
    ids=repr,
)
def test_bad_eps(eps, error):
    with pytest.raises(error, match="`eps`"):
        MutualInformationDivergence(feature=2, eps=eps)
    x, y = well_conditioned_pairs(20, 2, 2)
    with pytest.raises(error, match="`eps`"):
        F.mutual_information_divergence(x, y, x, y, eps=eps)
    with pytest.raises(error, match="`eps`"):
        F.mutual_information(x, y, eps=eps)
    with pytest.raises(error, match="`eps`"):
        F.pointwise_mutual_information(x, y, x, y, eps=eps)


def test_bad_reset_real_features():
    with pytest.raises(TypeError, match="`reset_real_features`"):
        MutualInformationDivergence(feature=2, reset_real_features="no")


# ---------------------------------------------------------------------------------------------- compute
def test_compute_without_reference(pairs):
    x, y = pairs
    metric = MutualInformationDivergence(feature=(DX, DY))
    metric.update(x, y, real=False)
    before = snapshot(metric)
    with pytest.raises(ValueError, match="No reference pairs"):
        metric.compute()
    with pytest.raises(ValueError, match="No reference pairs"):
        metric.pmi(x, y)
    assert_same_state(metric, before)
    with pytest.raises(ValueError, match="No reference pairs"):
        MutualInformationDivergence(feature=(DX, DY)).compute()


@pytest.mark.parametrize("count", [1, 2, DX + DY - 1, DX + DY])
def test_too_few_reference_pairs(pairs, count):
    x, y = pairs
    metric = MutualInformationDivergence(feature=(DX, DY))
    metric.update(x[:count], y[:count], real=True)
    metric.update(x, y, real=False)
    needed = DX + DY + 1
    with pytest.raises(ValueError, match=rf"more than {DX + DY} reference pairs.*got {count}.*{needed}.*`eps`") as info:
        metric.compute()
    assert "eps" in str(info.value)
    with pytest.raises(ValueError, match=rf"{needed}.*`eps`"):
        metric.pmi(x, y)
    with pytest.raises(ValueError, match=rf"{needed}.*`eps`"):
        F.mutual_information_divergence(x[:count], y[:count], x, y)
    # One more pair than Dx + Dy is enough; eps > 0 makes any count >= 2 usable.
    metric.update(x[count:needed], y[count:needed], real=True)
    assert torch.isfinite(metric.compute())
    if count >= 2:
        regularised = MutualInformationDivergence(feature=(DX, DY), eps=1e-3)
        regularised.update(x[:count], y[:count], real=True)
        regularised.update(x, y, real=False)
        assert torch.isfinite(regularised.compute())


def test_single_reference_pair_with_eps():
    x, y = well_conditioned_pairs(5, DX, DY)
    metric = MutualInformationDivergence(feature=(DX, DY), eps=1e-3)
    metric.update(x[:1], y[:1], real=True)
    metric.update(x, y, real=False)
    with pytest.raises(ValueError, match="at least 2 reference pairs"):
        metric.compute()


@pytest.mark.parametrize("count", [0, 1])
def test_fewer_than_two_candidates(pairs, count):
    x, y = pairs
    metric = MutualInformationDivergence(feature=(DX, DY))
    metric.update(x, y, real=True)
    metric.update(x[:count], y[:count], real=False)
    before = snapshot(metric)
    with pytest.raises(ValueError, match=f"at least 2 candidate pairs, got {count}"):
        metric.compute()
    assert_same_state(metric, before)
    with pytest.raises(ValueError, match=f"at least 2 candidate pairs, got {count}"):
        F.mutual_information_divergence(x, y, x[:count], y[:count])


@pytest.mark.parametrize("where", ["image", "text", "cross"])
def test_singular_reference(where):
    x, y = well_conditioned_pairs(200, DX, DY, seed=1)
    if where == "image":
        x = torch.cat([x[:, :-1], x[:, :1]], dim=1)  # duplicate image column
    elif where == "text":
        y = torch.cat([y[:, :-1], y[:, :1]], dim=1)  # duplicate text column
    else:
        y = torch.cat([y[:, :-1], x[:, :1]], dim=1)  # a text column equal to an image column: only Sz is singular
    metric = MutualInformationDivergence(feature=(DX, DY))
    metric.update(x, y, real=True)
    metric.update(x, y, real=False)
    with pytest.raises(ValueError, match="not positive definite.*`eps`"):
        metric.compute()
    with pytest.raises(ValueError, match="not positive definite.*`eps`"):
        F.mutual_information_divergence(x, y, x, y)
    with pytest.raises(ValueError, match="not positive definite.*`eps`"):
        F.mutual_information(x, y)
    # The suggested fix works.
    assert torch.isfinite(F.mutual_information_divergence(x, y, x, y, eps=1e-3))


# --------------------------------------------------------------------------------------------- functional
def functional_cases():
    x, y = well_conditioned_pairs(40, DX, DY, seed=2)
    x0, y0 = x[:10] * 1.1, y[:10]
    return [
        pytest.param((x.unsqueeze(0), y, x0, y0), ValueError, "`reference_images`", id="ref-images-rank"),
        pytest.param((x[:, :2], y, x0, y0), ValueError, r"`candidate_images` must have shape \(batch, 2\)", id="dims"),
        pytest.param((x, y[0], x0, y0), ValueError, "`reference_texts`", id="ref-texts-rank"),
        pytest.param((x, y[:30], x0, y0), ValueError, "`reference_images` and `reference_texts`", id="ref-mismatch"),
        pytest.param(
            (_with(x, 0, 0, math.nan), y, x0, y0), ValueError, "`reference_images` contains NaN", id="ref-nan"
        ),
        pytest.param((x.long(), y, x0, y0), TypeError, "`reference_images`", id="ref-int"),
        pytest.param((x, y, x0[:, :3], y0), ValueError, "`candidate_images`", id="cand-images-dim"),
        pytest.param((x, y, x0, y0[:, :2]), ValueError, "`candidate_texts`", id="cand-texts-dim"),
        pytest.param((x, y, x0, y0[:9]), ValueError, "`candidate_images` and `candidate_texts`", id="cand-mismatch"),
        pytest.param((x, y, x0, _with(y0, 3, 1, math.inf)), ValueError, "`candidate_texts` contains", id="cand-inf"),
        pytest.param((x, y, x0 > 0, y0), TypeError, "`candidate_images`", id="cand-bool"),
        pytest.param((x, y, x0.tolist(), y0), TypeError, "`candidate_images`", id="cand-list"),
        pytest.param((x[:0], y[:0], x0, y0), ValueError, "No reference pairs", id="ref-empty"),
    ]


@pytest.mark.parametrize(("args", "error", "match"), functional_cases())
def test_functional_bad_input(args, error, match):
    with pytest.raises(error, match=match):
        F.mutual_information_divergence(*args)


def test_functional_pmi_and_mi_bad_input():
    x, y = well_conditioned_pairs(40, DX, DY, seed=2)
    with pytest.raises(ValueError, match="`images`"):
        F.pointwise_mutual_information(x, y, x[:, :2], y)
    with pytest.raises(ValueError, match="`texts` contains NaN"):
        F.pointwise_mutual_information(x, y, x, _with(y, 0, 0, math.nan))
    with pytest.raises(ValueError, match="`images` and `texts`"):
        F.pointwise_mutual_information(x, y, x, y[:3])
    with pytest.raises(ValueError, match="`reference_texts`"):
        F.pointwise_mutual_information(x, y[:, :1][0], x, y)
    with pytest.raises(TypeError, match="`images`"):
        F.mutual_information(x.int(), y)
    with pytest.raises(ValueError, match="`images` and `texts`"):
        F.mutual_information(x, y[:5])
    with pytest.raises(ValueError, match="`texts` contains NaN"):
        F.mutual_information(x, _with(y, 1, 1, math.nan))


def test_inputs_are_not_modified(pairs):
    x, y = pairs
    copies = (x.clone(), y.clone())
    metric = MutualInformationDivergence(feature=(DX, DY))
    metric.update(x, y, real=True)
    metric.update(x, y, real=False)
    metric.pmi(x, y)
    metric.compute()
    F.mutual_information_divergence(x, y, x, y)
    assert torch.equal(x, copies[0]) and torch.equal(y, copies[1])
