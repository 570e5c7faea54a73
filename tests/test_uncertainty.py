"""Tests of the standard error and confidence interval of MID (mid_metric.uncertainty)."""

from __future__ import annotations

import math

import pytest
import torch
from _gaussian_model import F64, Model, packed

from mid_metric import MutualInformationDivergence
from mid_metric.functional import reference_from_moments
from mid_metric.uncertainty import standard_error


# ----------------------------------------------------------------------------- standard error and interval
def test_reference_noise_term_matters_and_candidate_term_matches_pmi_spread():
    model = Model(4, cand_scale=0.3, shift=1.0)
    g = torch.Generator().manual_seed(13)
    x, y = model.reference(400, g)
    texts = torch.randn(4000, model.dim, dtype=F64, generator=g)
    images = model.images_for(texts, g)
    ref = reference_from_moments(packed(x, y), model.dim)
    cand = packed(images, texts)
    from mid_metric.functional import pointwise_mutual_information_from_reference

    pmi = pointwise_mutual_information_from_reference(ref, images, texts)
    candidates_only = standard_error(ref, cand, include_reference=False)
    # Gaussian candidates: the model variance of the quadratic form is the PMI values' sample variance.
    assert float(candidates_only) == pytest.approx(float(pmi.std()) / math.sqrt(4000) * 4000 / 3999, rel=0.1)
    # With 10x more candidates than reference pairs, the reference's noise dominates.
    assert float(standard_error(ref, cand)) > 2 * float(candidates_only)


def test_compute_with_ci_result_fields_and_compute_stays_scalar():
    model = Model(2)
    g = torch.Generator().manual_seed(14)
    x, y = model.reference(200, g)
    metric = MutualInformationDivergence(feature=2)
    metric.update(x, y, real=True)
    metric.update(model.images_for(y, g), y, real=False)
    value = metric.compute()
    assert value.ndim == 0
    result = metric.compute_with_ci()
    assert torch.equal(result.mid, value) and not result.bias_corrected and result.ci_level == 0.95
    assert float(result.ci_low) < float(value) < float(result.ci_high)
    half_width = float(result.ci_high - result.ci_low) / 2
    assert half_width == pytest.approx(1.959964 * float(result.standard_error), rel=1e-6)
    assert sorted(result.as_dict()) == ["ci_high", "ci_low", "distance", "mid", "mutual_information", "standard_error"]
    narrow = metric.compute_with_ci(0.5)
    assert float(narrow.ci_high - narrow.ci_low) < 2 * half_width / 2


def test_compute_with_ci_after_merge_state_matches_single_metric():
    model = Model(2)
    g = torch.Generator().manual_seed(15)
    x, y = model.reference(120, g)
    xh = model.images_for(y, g)
    whole = MutualInformationDivergence(feature=2, bias_correction=True)
    whole.update(x, y, real=True)
    whole.update(xh, y, real=False)
    parts = [MutualInformationDivergence(feature=2, bias_correction=True) for _ in range(2)]
    for part, rows in zip(parts, (slice(0, 50), slice(50, None))):
        part.update(x[rows], y[rows], real=True)
        part.update(xh[rows], y[rows], real=False)
    parts[0].merge_state(parts[1])
    a, b = whole.compute_with_ci(), parts[0].compute_with_ci()
    assert torch.allclose(a.mid, b.mid, atol=1e-10) and torch.allclose(a.standard_error, b.standard_error)
