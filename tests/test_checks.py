"""The rules of mid_metric._checks, by subject: each accepts what it should and names what it refuses."""

from __future__ import annotations

import ast
import math
import re
import sys
from pathlib import Path

import pytest
import torch

from mid_metric import _checks, moments
from mid_metric._checks import arguments, batches, results, states


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


def test_every_rule_lives_in_one_module_and_the_package_re_exports_it():
    defined: dict[str, str] = {}
    for module in (arguments, batches, results, states):
        for node in ast.parse(Path(module.__file__).read_text()).body:
            names = [node.name] if isinstance(node, ast.FunctionDef) else []
            names += [target.id for target in getattr(node, "targets", []) if isinstance(target, ast.Name)]
            for name in (name for name in names if not name.startswith("_")):
                assert name not in defined, f"{name} is defined in {defined[name]} and {module.__name__}"
                defined[name] = module.__name__
    assert set(_checks.__all__) == set(defined)
    for name, module in defined.items():
        assert getattr(_checks, name) is getattr(sys.modules[module], name)


@pytest.mark.parametrize(
    ("check", "zero_ok"), [(_checks.check_eps, True), (lambda v: _checks.check_positive_number(v, "eps"), False)]
)
def test_finite_number_rules(check, zero_ok):
    bound = ">= 0" if zero_ok else "> 0"
    assert check(2) == 2.0 and isinstance(check(2), float)
    if zero_ok:
        assert check(0) == 0.0
    for bad in (-1.0, math.nan, math.inf, *(() if zero_ok else (0, 0.0))):
        with pytest.raises(ValueError, match=f"`eps` must be a finite number {bound}"):
            check(bad)
    for bad in (True, "1", None, torch.tensor(1.0)):
        with pytest.raises(TypeError, match=f"`eps` must be a number {bound}"):
            check(bad)


def test_records_to_combine_must_all_be_equal():
    record = _checks.state_format(3, 4)
    assert torch.equal(_checks.same_state_format(record), record)  # one record: nothing to compare
    assert torch.equal(_checks.same_state_format(torch.stack([record] * 3)), record)
    settings = torch.tensor([[2.5, 1.0]] * 2, dtype=torch.float64)
    assert _checks.same_settings(settings).tolist() == [2.5, 1.0]
    with pytest.raises(ValueError, match="different settings"):
        _checks.same_settings(torch.stack([settings[0], settings[0], torch.tensor([2.5, 2.0], dtype=torch.float64)]))


def test_sums_state_count_rule():
    good = torch.tensor([2.0, 1.5, -2.0], dtype=torch.float64)
    assert _checks.check_sums_state(good, "sums", 3, 1.0) is good
    for count in (-1.0, 0.5, 2.0**53 + 2):
        with pytest.raises(
            ValueError, match=re.escape(f"`sums` has a pair count of {count:g}; a count must be a whole number")
        ):
            _checks.check_sums_state(good.clone().index_fill(0, torch.tensor([0]), count), "sums", 3, 1.0)
