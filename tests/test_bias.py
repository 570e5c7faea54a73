"""Tests of the bias-corrected MID and its confidence interval (mid_metric.bias).

Every expectation is checked against Monte Carlo or an analytic value, never against the code's own output: the
Wishart facts against simulated sample covariances, and the estimators against the population MID of jointly
Gaussian data whose coordinate pairs are independent, where

    MID* = sum_k [ -1/2 log(1 - rho_k^2) + 1/2 (E xh_k^2 - E (xh_k - rho_k yh_k)^2 / (1 - rho_k^2)) ]

for a standard reference with correlations rho_k and candidates (xh, yh) (section 1 of shared/GUIDE.md: PMI is
I + 1/2 (d2_x - d2_{x|y}), and d2_{x|y} is the residual of x given y).
"""

from __future__ import annotations

import math

import pytest
import torch

from mid_metric import MutualInformationDivergence, bias, moments
from mid_metric.functional import (
    divergence_from_moments,
    mutual_information,
    mutual_information_divergence,
    reference_from_moments,
)

F64 = torch.float64


# ----------------------------------------------------------------------------- Gaussian test model
def population_mid(rho: torch.Tensor, cand_rho: torch.Tensor, shift: float) -> float:
    """MID* for candidates xh = cand_rho * yh + sqrt(1 - cand_rho^2) e + shift, yh ~ N(0, 1), per coordinate."""
    second_x = 1.0 + shift**2
    residual = (cand_rho - rho) ** 2 + 1.0 - cand_rho**2 + shift**2
    return float((-0.5 * torch.log1p(-(rho**2)) + 0.5 * (second_x - residual / (1.0 - rho**2))).sum())


class Model:
    def __init__(self, dim: int, cand_scale: float = 0.7, shift: float = 0.3) -> None:
        self.dim = dim
        self.rho = torch.linspace(0.85, 0.1, dim, dtype=F64)
        self.cand_rho = cand_scale * self.rho
        self.shift = shift
        self.truth = population_mid(self.rho, self.cand_rho, shift)
        self.mi = float(-0.5 * torch.log1p(-(self.rho**2)).sum())

    def reference(self, n: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.randn(n, self.dim, dtype=F64, generator=g)
        y = self.rho * x + torch.sqrt(1 - self.rho**2) * torch.randn(n, self.dim, dtype=F64, generator=g)
        return x, y

    def images_for(self, texts: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        noise = torch.randn(texts.shape, dtype=F64, generator=g)
        return self.cand_rho * texts + torch.sqrt(1 - self.cand_rho**2) * noise + self.shift


def packed(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return moments.from_features(torch.cat([x, y], dim=1))


def run_estimators(model: Model, n: int, reps: int, protocol: str, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Return (paper's, corrected) MID over ``reps`` independent repetitions of reference and candidates."""
    g = torch.Generator().manual_seed(seed)
    raw, corrected = [], []
    for _ in range(reps):
        x, y = model.reference(n, g)
        if protocol == "independent":
            texts = torch.randn(n, model.dim, dtype=F64, generator=g)
            cand = packed(model.images_for(texts, g), texts)
        elif protocol == "shared_text":  # text-to-image: images generated for the reference's own captions
            cand = packed(model.images_for(y, g), y)
        else:  # captioning: captions generated for the reference's own images (the model is symmetric in x, y)
            cand = packed(x, model.images_for(x, g))
        ref = reference_from_moments(packed(x, y), model.dim)
        raw.append(float(divergence_from_moments(ref, cand).mid))
        corrected.append(float(bias.corrected_divergence(ref, cand).mid))
    return torch.tensor(raw, dtype=F64), torch.tensor(corrected, dtype=F64)


def wishart_covariances(dim: int, n: int, reps: int, sigma: torch.Tensor, seed: int) -> torch.Tensor:
    """``reps`` sample covariances (about the sample mean) of ``n + 1`` Gaussian points with covariance sigma."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(reps, n + 1, dim, dtype=F64, generator=g) @ torch.linalg.cholesky(sigma).mT
    centred = z - z.mean(dim=1, keepdim=True)
    return centred.mT @ centred / n


def random_spd(dim: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(dim, dim, dtype=F64, generator=g)
    return a @ a.T / dim + 0.5 * torch.eye(dim, dtype=F64)


# ----------------------------------------------------------------------------- Wishart facts vs Monte Carlo
def test_logdet_mean_and_variance_match_monte_carlo():
    dim, n, reps = 5, 12, 20000
    sigma = random_spd(dim, 1)
    logdets = torch.linalg.slogdet(wishart_covariances(dim, n, reps, sigma, seed=2))[1] - torch.logdet(sigma)
    sem = float(logdets.std()) / math.sqrt(reps)
    assert abs(float(logdets.mean()) - bias.logdet_bias(dim, n)) < 4 * sem
    assert bias.logdet_bias(dim, n) < -0.5  # a large bias at n = 12: the test can fail
    assert float(logdets.var()) == pytest.approx(bias.logdet_variance(dim, n), rel=0.05)


def test_inverse_expectation_matches_monte_carlo():
    dim, n, reps = 3, 15, 20000
    sigma = random_spd(dim, 3)
    inverses = torch.linalg.inv(wishart_covariances(dim, n, reps, sigma, seed=4))
    expected = bias.inverse_bias_factor(dim, n) * torch.linalg.inv(sigma)
    sem = inverses.std(dim=0) / math.sqrt(reps)
    assert bool(((inverses.mean(dim=0) - expected).abs() < 4 * sem).all())
    assert bias.inverse_bias_factor(dim, n) == pytest.approx(15 / 11)


def test_distance_trace_expectation_with_sample_mean_noise():
    # E[tr(S^-1 S_hat)] = M/(M-1) n/(n-p-1) (tr(Sigma^-1 C0) + p/N) for candidates independent of the reference.
    dim, count, m, reps = 3, 20, 10, 20000
    g = torch.Generator().manual_seed(5)
    ref = torch.randn(reps, count, dim, dtype=F64, generator=g)
    cand = 1.5 * torch.randn(reps, m, dim, dtype=F64, generator=g) + 0.4
    mean = ref.mean(dim=1, keepdim=True)
    cov = (ref - mean).mT @ (ref - mean) / (count - 1)
    scatter = (cand - mean).mT @ (cand - mean) / (m - 1)
    traces = torch.linalg.solve(cov, scatter).diagonal(dim1=-2, dim2=-1).sum(-1)
    population = dim * (1.5**2 + 0.4**2)
    expected = m / (m - 1) * bias.inverse_bias_factor(dim, count - 1) * (population + dim / count)
    assert abs(float(traces.mean()) - expected) < 4 * float(traces.std()) / math.sqrt(reps)


def test_mutual_information_bias_matches_monte_carlo():
    model, n, reps = Model(3), 25, 4000
    g = torch.Generator().manual_seed(6)
    estimates = torch.stack([mutual_information(*model.reference(n, g)) for _ in range(reps)])
    bias_value = bias.mutual_information_bias(3, 3, n)
    sem = float(estimates.std()) / math.sqrt(reps)
    assert abs(float(estimates.mean()) - model.mi - bias_value) < 4 * sem
    assert bias_value > 10 * sem


def test_wishart_argument_errors():
    with pytest.raises(ValueError, match="`dof`"):
        bias.logdet_bias(5, 4)
    with pytest.raises(ValueError, match="`dof`"):
        bias.inverse_bias_factor(5, 6)
    with pytest.raises(ValueError, match="`dim`"):
        bias.logdet_variance(0, 6)


# ----------------------------------------------------------------------------- the corrected estimator
@pytest.mark.parametrize("protocol", ["independent", "shared_text", "shared_image"])
def test_corrected_mid_is_unbiased_and_paper_estimator_is_not(protocol):
    # A strong image-caption link (cand_scale=1) makes the shared-row coupling term matter: without it the
    # shared-protocol means miss the truth by about 10 standard errors here.
    model, n, reps = Model(8, cand_scale=1.0, shift=0.2), 60, 1500
    raw, corrected = run_estimators(model, n, reps, protocol, seed=7)
    sem = float(corrected.std()) / math.sqrt(reps)
    assert abs(float(corrected.mean()) - model.truth) < 4 * sem
    assert abs(float(raw.mean()) - model.truth) > 20 * sem


def test_shared_modality_detection():
    model = Model(3)
    g = torch.Generator().manual_seed(8)
    x, y = model.reference(60, g)
    ref = reference_from_moments(packed(x, y), 3)

    def detect(cand: torch.Tensor) -> object:
        m = int(moments.unpack(cand).count)
        _, scatter = moments.mean_and_scatter(cand, center=ref.mean)
        return bias.shared_modality(ref, scatter / (m - 1), m)

    perm = torch.randperm(60, generator=g)
    assert detect(packed(model.images_for(y, g), y)) == "text"
    assert detect(packed(x, model.images_for(x, g))) == "image"
    assert detect(packed(x, y)) == "both"
    assert detect(packed(x[perm], y[perm])) == "both"  # the same pairs in another order
    assert detect(packed(x[perm], y)) == "repaired"  # the reference's images and texts, paired differently
    assert detect(packed(x, y[perm])) == "repaired"
    x2, y2 = model.reference(60, g)
    assert detect(packed(x2, y2)) is None
    assert detect(packed(model.images_for(y[:59], g), y[:59])) is None  # a subset is not the same rows
    # Texts with exactly the reference's text trace but other rows: stretch one whitened direction, shrink another.
    chol_y, mean_y = ref.chol_text, ref.mean[3:]
    stretch = torch.tensor([1.2, math.sqrt(2.0 - 1.44), 1.0], dtype=F64)
    whitened = torch.linalg.solve_triangular(chol_y, (y - mean_y).mT, upper=False)
    same_trace = mean_y + (chol_y @ (stretch.unsqueeze(1) * whitened)).mT
    assert abs(float(bias.block_traces(ref, packed_cov(x, same_trace, ref)).text) - 3.0) < 1e-9  # fools a trace
    assert detect(packed(model.images_for(same_trace, g), same_trace)) is None


def packed_cov(x: torch.Tensor, y: torch.Tensor, ref) -> torch.Tensor:
    cand = packed(x, y)
    _, scatter = moments.mean_and_scatter(cand, center=ref.mean)
    return scatter / (int(moments.unpack(cand).count) - 1)


# Population MID for the shared-row protocols below: x ~ N(0, I_D), y = RHO x + sqrt(1 - RHO^2) e per coordinate, so
# I = -D/2 log(1 - RHO^2). Candidates whose images are independent of their captions (shuffled, or new unrelated
# images) have C0 = blockdiag(I, I), hence distance = (2D - D * 2 / (1 - RHO^2)) / 2; aligned candidates (identical
# pairs, or images generated from the captions by the reference's own law) have distance 0; half-shuffled ones are
# the 50/50 mixture, and MID* is linear in C0.
RHO, SHARED_DIM = 0.6, 4
_SHARED_MI = -0.5 * SHARED_DIM * math.log(1 - RHO**2)
_UNALIGNED = _SHARED_MI + 0.5 * (2 * SHARED_DIM - SHARED_DIM * 2 / (1 - RHO**2))
SHARED_ROW_TRUTH = {
    "identical": _SHARED_MI,
    "shuffled": _UNALIGNED,
    "half_shuffled": 0.5 * (_SHARED_MI + _UNALIGNED),
    "independent": _UNALIGNED,
    "generated": _SHARED_MI,
}


def _correlated(n: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.randn(n, SHARED_DIM, dtype=F64, generator=g)
    return x, RHO * x + math.sqrt(1 - RHO**2) * torch.randn(n, SHARED_DIM, dtype=F64, generator=g)


def _shared_row_candidates(case: str, kept: torch.Tensor, other: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """The candidates' other modality: ``kept`` is the shared block (captions or images), ``other`` its partner."""
    n = kept.shape[0]
    if case == "identical":
        return other
    if case == "shuffled":
        return other[torch.randperm(n, generator=g)]
    if case == "half_shuffled":
        order = torch.arange(n)
        order[: n // 2] = order[: n // 2][torch.randperm(n // 2, generator=g)]
        return other[order]
    if case == "independent":
        return torch.randn(n, SHARED_DIM, dtype=F64, generator=g)
    # "generated": new partners drawn from the reference's conditional law given the shared rows
    return RHO * kept + math.sqrt(1 - RHO**2) * torch.randn(n, SHARED_DIM, dtype=F64, generator=g)


@pytest.mark.parametrize("shared", ["captions", "images"])
@pytest.mark.parametrize("case", list(SHARED_ROW_TRUTH))
def test_corrected_mid_with_shared_rows_matches_population_value(shared, case):
    # Regression for 0.1, which took equal image and text traces for "the same pairs" and scored shuffled
    # captions as perfectly aligned (MID = I, here 0.89 against a population value of -1.36).
    n, reps = 400, 200
    g = torch.Generator().manual_seed(31)
    values = []
    for _ in range(reps):
        x, y = _correlated(n, g)
        if shared == "captions":
            cand_x, cand_y = _shared_row_candidates(case, y, x, g), y
        else:
            cand_x, cand_y = x, _shared_row_candidates(case, x, y, g)
        values.append(float(mutual_information_divergence(x, y, cand_x, cand_y, bias_correction=True)))
    values = torch.tensor(values, dtype=F64)
    sem = float(values.std()) / math.sqrt(reps)
    assert abs(float(values.mean()) - SHARED_ROW_TRUTH[case]) < 4 * sem + 1e-3


def test_issue_reproducer_shuffled_captions_are_not_aligned():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2000, 8, dtype=F64, generator=g)
    y = 0.6 * x + 0.8 * torch.randn(2000, 8, dtype=F64, generator=g)
    perm = torch.randperm(2000, generator=g)
    truth = -4 * math.log(0.64) + 0.5 * (16 - 8 * 2 / 0.64)  # -2.715
    aligned = float(mutual_information_divergence(x, y, x, y, bias_correction=True))
    shuffled = float(mutual_information_divergence(x, y, x, y[perm], bias_correction=True))
    assert abs(aligned - (-4 * math.log(0.64))) < 0.1
    assert abs(shuffled - truth) < 0.15  # 0.1 returned 1.749, the aligned value


def test_same_pairs_give_corrected_mutual_information():
    model = Model(3)
    x, y = model.reference(50, torch.Generator().manual_seed(9))
    result = bias.corrected_divergence(reference_from_moments(packed(x, y), 3), packed(x, y))
    expected = mutual_information(x, y) - bias.mutual_information_bias(3, 3, 50)
    assert torch.allclose(result.mid, expected) and float(result.distance) == 0.0 and result.bias_corrected


def test_corrected_mid_is_affine_invariant():
    model = Model(3)
    g = torch.Generator().manual_seed(10)
    x, y = model.reference(80, g)
    xh, yh = model.images_for(y[:30], g), y[:30] + 0.1
    a = torch.randn(3, 3, dtype=F64, generator=g) + 2 * torch.eye(3, dtype=F64)
    b = torch.randn(3, dtype=F64, generator=g)
    plain = mutual_information_divergence(x, y, xh, yh, bias_correction=True)
    mapped = mutual_information_divergence(x @ a + b, y, xh @ a + b, yh, bias_correction=True)
    assert torch.allclose(plain, mapped, rtol=0, atol=1e-9)


def test_functional_metric_and_mutual_information_agree():
    model = Model(3)
    g = torch.Generator().manual_seed(11)
    x, y = model.reference(100, g)
    xh = model.images_for(y, g)
    metric = MutualInformationDivergence(feature=3, bias_correction=True)
    metric.update(x[:37], y[:37], real=True)
    metric.update(x[37:], y[37:], real=True)
    metric.update(xh, y, real=False)
    functional = mutual_information_divergence(x, y, xh, y, bias_correction=True)
    assert torch.allclose(metric.compute(), functional, rtol=0, atol=1e-10)
    assert not torch.allclose(functional, mutual_information_divergence(x, y, xh, y), rtol=0, atol=1e-3)
    result = metric.compute_result()
    assert result.bias_corrected and torch.allclose(result.mid, result.mutual_information + result.distance)
    corrected_mi = mutual_information(x, y, bias_correction=True)
    assert torch.allclose(corrected_mi, mutual_information(x, y) - bias.mutual_information_bias(3, 3, 100))
    assert torch.allclose(result.mutual_information, corrected_mi)


def test_argument_errors():
    x, y = torch.randn(30, 2), torch.randn(30, 2)
    with pytest.raises(TypeError, match="`bias_correction`"):
        MutualInformationDivergence(feature=2, bias_correction="yes")
    with pytest.raises(ValueError, match="`bias_correction=True` needs `eps=0`"):
        MutualInformationDivergence(feature=2, eps=1e-4, bias_correction=True)
    with pytest.raises(ValueError, match="`bias_correction=True` needs `eps=0`"):
        mutual_information_divergence(x, y, x, y, eps=1e-4, bias_correction=True)
    with pytest.raises(ValueError, match="`bias_correction=True` needs `eps=0`"):
        mutual_information(x, y, eps=1e-4, bias_correction=True)
    with pytest.raises(ValueError, match="more than 6 reference pairs"):
        mutual_information_divergence(x[:6], y[:6], x, y, bias_correction=True)
    metric = MutualInformationDivergence(feature=2)
    metric.update(x, y, real=True)
    metric.update(x, y, real=False)
    for level in (0.0, 1.0, 95, "0.9", True):
        with pytest.raises(ValueError, match="`level`"):
            metric.compute_with_ci(level)


# ----------------------------------------------------------------------------- standard error and interval
def test_interval_coverage_on_gaussian_data():
    """The corrected 95% interval covers the population MID in 90-99% of 200 repetitions."""
    model, n, reps = Model(4, cand_scale=0.6, shift=0.5), 600, 200
    g = torch.Generator().manual_seed(12)
    covered, estimates, errors = 0, [], []
    for _ in range(reps):
        x, y = model.reference(n, g)
        texts = torch.randn(n, model.dim, dtype=F64, generator=g)
        metric = MutualInformationDivergence(feature=model.dim, bias_correction=True)
        metric.update(x, y, real=True)
        metric.update(model.images_for(texts, g), texts, real=False)
        result = metric.compute_with_ci(0.95)
        covered += float(result.ci_low) <= model.truth <= float(result.ci_high)
        estimates.append(float(result.mid))
        errors.append(float(result.standard_error))
    assert 0.90 <= covered / reps <= 0.99
    # The standard error matches the spread of the estimates over repetitions.
    assert sum(errors) / reps == pytest.approx(float(torch.tensor(estimates).std()), rel=0.2)


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
    candidates_only = bias.standard_error(ref, cand, include_reference=False)
    # Gaussian candidates: the model variance of the quadratic form is the PMI values' sample variance.
    assert float(candidates_only) == pytest.approx(float(pmi.std()) / math.sqrt(4000) * 4000 / 3999, rel=0.1)
    # With 10x more candidates than reference pairs, the reference's noise dominates.
    assert float(bias.standard_error(ref, cand)) > 2 * float(candidates_only)


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
