"""Argument, count and state rules (mid_metric._checks): each accepts what it should and names what it refuses."""

from __future__ import annotations

import math

import pytest
import torch

from mid_metric import _checks, moments


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_non_finite_values_are_refused_in_every_dtype(dtype):
    for bad in (math.nan, math.inf, -math.inf):
        features = torch.zeros(3, 2, dtype=dtype)
        features[1, 0] = bad
        with pytest.raises(ValueError, match=r"`images` contains NaN or Inf values \(in 1 of 3 rows\)"):
            _checks.check_features(features, "images", 2)


def test_magnitude_bound_applies_to_float64_only_where_it_bites():
    ok = torch.full((2, 2), 1e100, dtype=torch.float64)
    assert _checks.check_features(ok, "texts", 2) is ok  # at the bound
    with pytest.raises(ValueError, match=r"`texts` holds values of magnitude up to 2e\+100, above the bound 1e\+100"):
        _checks.check_features(ok * 2, "texts", 2)
    big32 = torch.full((2, 2), 3e38, dtype=torch.float32)  # float32 cannot exceed the bound
    assert _checks.check_features(big32, "texts", 2) is big32


def test_state_format_records_and_compares_the_split():
    own = _checks.state_format(6, 10)
    assert own.dtype == torch.int64 and own.tolist() == [_checks.STATE_FORMAT_VERSION, 6, 10]
    assert torch.equal(_checks.check_state_format(own.clone(), "state_format", own), own)
    with pytest.raises(ValueError, match=r"\(8, 8\).*\(6, 10\)"):
        _checks.check_state_format(_checks.state_format(8, 8), "state_format", own)
    with pytest.raises(ValueError, match="must be an integer tensor"):
        _checks.check_state_format(own.double(), "state_format", own)
    with pytest.raises(ValueError, match="different layouts"):
        _checks.same_state_format(torch.stack([own, _checks.state_format(8, 8)]))


def test_packed_moments_checks():
    good = moments.from_features(torch.randn(5, 3, dtype=torch.float64))
    assert _checks.check_packed_moments(good, "m", 3) is good
    for count, message in ((math.nan, "NaN"), (-1.0, "count of -1"), (1.5, "count of 1.5"), (2.0**54, "count of")):
        bad = good.clone()
        bad[0] = count
        with pytest.raises(ValueError, match=f"`m`.*{message}"):
            _checks.check_packed_moments(bad, "m", 3)
    with pytest.raises(ValueError, match=r"shape \(16,\)"):
        _checks.check_packed_moments(good[:-1], "m", 3)
    with pytest.raises(ValueError, match="count of 0 but non-zero sums"):
        _checks.check_packed_moments(torch.ones(16, dtype=torch.float64).index_fill(0, torch.tensor([0]), 0.0), "m", 3)
    with pytest.raises(ValueError, match="floating tensor"):
        _checks.check_packed_moments(good.long(), "m", 3)


def test_count_rules():
    with pytest.raises(ValueError, match="No reference pairs"):
        _checks.check_reference_count(0, 4, eps=0.0)
    _checks.check_reference_count(5, 4, eps=0.0)
    _checks.check_reference_count(2, 4, eps=1e-3)  # eps regularises a rank-deficient covariance
    with pytest.raises(ValueError, match="more than 6 reference pairs"):
        _checks.check_reference_count(6, 4, eps=0.0, bias_correction=True)
    with pytest.raises(ValueError, match="at least 2 candidate pairs, got 1"):
        _checks.check_candidate_count(1)


def test_feature_dims_and_flags():
    assert _checks.check_feature_dims(8) == (8, 8)
    assert _checks.check_feature_dims([3, 5]) == (3, 5)
    for bad in (True, 2.0, (1, 2, 3), "8"):
        with pytest.raises(TypeError, match="`feature`"):
            _checks.check_feature_dims(bad)
    with pytest.raises(ValueError, match="positive"):
        _checks.check_feature_dims((0, 3))
    with pytest.raises(TypeError, match="`validate_args` must be a bool"):
        _checks.check_bool("yes", "validate_args")
    with pytest.raises(ValueError, match="needs `eps=0`"):
        _checks.check_bias_correction(True, 1e-3)


def test_finite_result():
    with pytest.raises(ValueError, match=r"MID is not finite \(1 of 1 values\)"):
        _checks.check_finite_result(torch.tensor(math.nan), "MID")
