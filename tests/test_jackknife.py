"""The grouped jackknife (``bias_correction="jackknife"``) against its formula, an independent implementation and data.

The independent implementation recomputes every leave-one-group-out estimate from the raw rows with two-pass
covariances (``reference_impl``, which does not import mid_metric) and combines them with the delete-a-group
formula written out here.
"""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from reference_impl import ClipLikeDistribution, ref_corrected_mid, ref_mutual_information

from mid_metric import _checks, gaussian, jackknife, moments, wishart
from mid_metric import functional as F
from mid_metric.jackknife import (
    accumulate_groups_,
    empty_group_moments,
    group_moments,
    jackknife_combine,
    jackknife_divergence,
    merge_groups,
    reduce_group_states,
    row_groups,
    row_hashes,
)

F64 = torch.float64


def t_pairs(n: int, rho: torch.Tensor, dof, g: torch.Generator):
    """Multivariate t pairs (one chi-square scale per row) whose coordinate pairs have correlations ``rho``."""
    scale = torch.ones(n, 1, dtype=F64)
    if dof is not None:
        scale = (dof / (2.0 * torch._standard_gamma(torch.full((n, 1), dof / 2.0, dtype=F64), g))).sqrt()
    x = torch.randn(n, rho.shape[0], dtype=F64, generator=g)
    y = rho * x + (1 - rho**2).sqrt() * torch.randn(n, rho.shape[0], dtype=F64, generator=g)
    return scale * x, scale * y, scale


def images_for(y: torch.Tensor, scale: torch.Tensor, rho: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Images "generated" for captions ``y``: ``(x0, y)`` has the law of the reference pairs."""
    return rho * y + (1 - rho**2).sqrt() * scale * torch.randn(y.shape, dtype=F64, generator=g)


def delete_a_group(full: float, left_out: list[float], fractions: list[float]) -> tuple[float, float]:
    """Busing et al. (1999): t_J = G t - sum (1 - f_k) t_k; se^2 = 1/G sum (tau_k - t_J)^2 / (h_k - 1)."""
    groups = len(left_out)
    estimate = groups * full - sum((1 - f) * t for f, t in zip(fractions, left_out))
    pseudo = [(1 / f) * full - (1 / f - 1) * t for f, t in zip(fractions, left_out)]
    variance = sum((p - estimate) ** 2 / (1 / f - 1) for p, f in zip(pseudo, fractions)) / groups
    return estimate, math.sqrt(variance)


# ------------------------------------------------------------------------------------------- group rule
def test_groups_depend_on_content_only():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(500, 3, generator=g), torch.randn(500, 4, generator=g)
    rows = moments.joint_rows(x, y)
    groups = row_groups(rows, 3, 7)
    perm = torch.randperm(500, generator=g)
    assert torch.equal(row_groups(rows[perm], 3, 7), groups[perm])  # order
    assert torch.equal(torch.cat([row_groups(rows[i : i + 37], 3, 7) for i in range(0, 500, 37)]), groups)  # batches
    # dtype: float16 captions and their float32 copies hash alike; the text key ignores the image columns
    half = y.half()
    assert torch.equal(
        row_groups(moments.joint_rows(x, half), 3, 7), row_groups(moments.joint_rows(x, half.float()), 3, 7)
    )
    assert torch.equal(row_groups(moments.joint_rows(torch.randn(500, 3, generator=g), y), 3, 7), groups)
    assert torch.equal(row_groups(rows, 3, 7, key="image"), row_groups(moments.joint_rows(x, -y), 3, 7, "image"))
    counts = torch.bincount(groups, minlength=7).double()
    assert float(counts.min()) > 40 and float(counts.max()) < 105  # about 71 each; a hash, not a constant
    assert not torch.equal(row_groups(rows, 3, 7, key="joint"), groups)


def test_hash_is_fixed_across_versions_and_devices():
    # The multipliers come from a seeded splitmix64 in integer arithmetic: these values must never change, or group
    # states saved by one version would not match the rows of another. CUDA gives the same values (exact int64).
    rows = torch.tensor([[0.0, 1.0], [0.5, -2.0], [1e-300, 3.0]], dtype=F64)
    assert row_hashes(rows).tolist() == [1322137470, 1798842689, 1321147862]
    if torch.cuda.is_available():
        assert row_hashes(rows.cuda()).cpu().tolist() == [1322137470, 1798842689, 1321147862]


def test_hash_spreads_structured_rows_evenly():
    # Integer-valued, one-hot and nearly equal rows (steps of 2^-20) fall in the groups like random draws: the
    # chi-square of the group counts (9 degrees of freedom) stays below its 0.1% quantile, 27.9.
    n = torch.arange(5000, dtype=F64).unsqueeze(1)
    for rows in (n.repeat(1, 4), torch.eye(500, dtype=F64), 1.0 + n * 2.0**-20):
        counts = torch.bincount(row_groups(rows, 0, 10, key="text"), minlength=10).double()
        expected = rows.shape[0] / 10
        assert float(((counts - expected) ** 2 / expected).sum()) < 27.9


def _relative_gap(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


def test_group_states_do_not_depend_on_batching_order_or_ranks():
    g = torch.Generator().manual_seed(1)
    z = torch.randn(900, 6, dtype=F64, generator=g) @ torch.randn(6, 6, dtype=F64, generator=g) + 3.0
    reference = group_moments(z, 2, 5)

    def stats(grouped):
        return torch.stack([torch.cat([m.reshape(-1) for m in moments.mean_and_scatter(s)]) for s in grouped])

    perm = torch.randperm(900, generator=g)
    state, seen = empty_group_moments(5, 6), [0] * 5
    for start in range(0, 900, 13):  # small shuffled batches with the recentring schedule
        rows = z[perm[start : start + 13]]
        accumulate_groups_(state, rows, row_groups(rows, 2, 5), seen)
    assert _relative_gap(stats(state), stats(reference)) < 1e-12
    assert torch.equal(state[:, 0], reference[:, 0]) and sum(seen) >= 5

    ranks = torch.stack([group_moments(z[perm[r::3]], 2, 5) for r in range(3)])  # 3 "ranks", interleaved rows
    assert _relative_gap(stats(reduce_group_states(ranks)), stats(reference)) < 1e-12
    full = merge_groups(reference)
    assert _relative_gap(stats(full.unsqueeze(0)), stats(moments.from_features(z).unsqueeze(0))) < 1e-12


# ------------------------------------------------------------------------------------------ combination
def test_combination_is_the_delete_a_group_formula():
    g = torch.Generator().manual_seed(2)
    left_out = torch.randn(6, 3, dtype=F64, generator=g)
    fractions = torch.tensor([0.1, 0.2, 0.15, 0.25, 0.2, 0.1], dtype=F64)
    full = torch.randn(3, dtype=F64, generator=g)
    estimate, error = jackknife_combine(full, left_out, fractions)
    for column in range(3):
        expected = delete_a_group(float(full[column]), left_out[:, column].tolist(), fractions.tolist())
        assert float(estimate[column]) == pytest.approx(expected[0], rel=1e-13)
        assert float(error[column]) == pytest.approx(expected[1], rel=1e-13)


def _plug_in_variance(v: torch.Tensor) -> torch.Tensor:
    return ((v - v.mean()) ** 2).mean()


def _jackknifed_plug_in(v: torch.Tensor, groups: torch.Tensor) -> torch.Tensor:
    kept = [k for k in range(int(groups.max()) + 1) if bool((groups == k).any())]
    left_out = torch.stack([_plug_in_variance(v[groups != k]) for k in kept])
    fractions = torch.tensor([float((groups == k).sum()) / v.shape[0] for k in kept], dtype=F64)
    return jackknife_combine(_plug_in_variance(v), left_out, fractions)[0]


def test_jackknife_removes_an_exact_one_over_n_bias_even_with_unequal_groups():
    # The plug-in variance has E = sigma^2 (1 - 1/N), a pure 1/N bias. Its jackknife is a quadratic form v^T A v
    # (shift-invariant), so for i.i.d. N(0, 1) data E = tr(A) = sum_i Q(e_i): unbiasedness is an exact identity.
    n = 23
    for groups in (torch.arange(n) % 4, torch.tensor([0] * 3 + [1] * 9 + [2] * 5 + [3] * 6)):
        trace = sum(float(_jackknifed_plug_in(torch.eye(n, dtype=F64)[i], groups)) for i in range(n))
        assert trace == pytest.approx(1.0, abs=1e-12)
    # With one row per group it is the textbook jackknife: exactly the unbiased sample variance.
    v = torch.randn(n, dtype=F64)
    assert float(_jackknifed_plug_in(v, torch.arange(n))) == pytest.approx(float(v.var()), rel=1e-12)


def test_student_t_quantile():
    for dof, expected in ((1, 12.7062047361747), (2, 4.30265272974946), (9, 2.26215716279820), (19, 2.09302405440831)):
        assert jackknife.two_sided_t_quantile(0.95, dof) == pytest.approx(expected, rel=1e-10)
    scipy_stats = pytest.importorskip("scipy.stats")
    for dof in (3, 4, 7, 10, 30, 200, 5000):
        for level in (0.5, 0.9, 0.99):
            expected = scipy_stats.t.ppf((1 + level) / 2, dof)
            assert jackknife.two_sided_t_quantile(level, dof) == pytest.approx(expected, rel=1e-9)


# ------------------------------------------------------------------------- against the independent recipe
def _independent_jackknife(x, y, x0, y0, num_groups, key="text"):
    """Leave-one-group-out Gaussian-corrected MIDs from the raw rows (two-pass, reference_impl)."""
    dx = x.shape[1]
    ref_groups = row_groups(moments.joint_rows(x, y), dx, num_groups, key)
    cand_groups = row_groups(moments.joint_rows(x0, y0), dx, num_groups, key)
    full = ref_corrected_mid(x, y, x0, y0)
    kept = [k for k in range(num_groups) if bool((ref_groups == k).any())]
    left_out = []
    for k in kept:
        r, c = ref_groups != k, cand_groups != k
        left_out.append(ref_corrected_mid(x[r], y[r], x0[c], y0[c]))
    fractions = [float((ref_groups == k).sum()) / x.shape[0] for k in kept]
    return delete_a_group(full, left_out, fractions), len(kept)


@pytest.mark.parametrize("num_groups", [2, 10])
def test_matches_independent_implementation(num_groups):
    g = torch.Generator().manual_seed(3)
    rho = torch.tensor([0.8, 0.5, 0.3], dtype=F64)
    x, y, _ = t_pairs(300, rho, 6.0, g)
    x0, y0, _ = t_pairs(250, 0.7 * rho, 6.0, g)
    (expected, expected_se), groups = _independent_jackknife(x, y, x0, y0, num_groups)
    result = jackknife_divergence(
        group_moments(moments.joint_rows(x, y), 3, num_groups),
        group_moments(moments.joint_rows(x0, y0), 3, num_groups),
        image_dim=3,
        level=0.9,
    )
    assert float(result.mid) == pytest.approx(expected, rel=1e-10)
    assert float(result.standard_error) == pytest.approx(expected_se, rel=1e-8)
    quantile = jackknife.two_sided_t_quantile(0.9, groups - 1)
    assert float(result.ci_high - result.mid) == pytest.approx(quantile * expected_se, rel=1e-8)
    assert torch.allclose(result.mid, result.mutual_information + result.distance, rtol=1e-12, atol=0)
    assert result.bias_corrected and (result.num_reference, result.num_candidates) == (300, 250)
    functional = F.mutual_information_divergence(x, y, x0, y0, bias_correction="jackknife", jackknife_groups=num_groups)
    assert float(functional) == pytest.approx(expected, rel=1e-10)


def test_clip_like_features_keep_their_precision():
    # Float32 features with mean norm 0.99 and covariance eigenvalues down to 1e-9 (Dx = Dy = 64): the jackknife
    # multiplies rounding errors by about K - 1, yet it meets the plain estimator's target against two-pass float64
    # (5e-9; measured 7e-10, against 1e-11 for `True`).
    dist = ClipLikeDistribution(64, 64, seed=0)
    x, y = dist.sample(2000, seed=1)
    x0, y0 = dist.sample(1900, seed=2, rho_scale=0.95)
    (expected, _), _ = _independent_jackknife(x, y, x0, y0, 10)
    actual = float(F.mutual_information_divergence(x, y, x0, y0, bias_correction="jackknife"))
    assert abs(actual - expected) < 5e-9, (actual, expected)


def test_jackknifed_mutual_information_matches_independent_implementation():
    g = torch.Generator().manual_seed(4)
    x, y, _ = t_pairs(200, torch.tensor([0.7, 0.4], dtype=F64), 5.0, g)
    groups = row_groups(moments.joint_rows(x, y), 2, 8)
    dims = (2, 2, 4)

    def corrected(xs, ys):
        dof = xs.shape[0] - 1

        def c(p):
            halves = (dof - torch.arange(p, dtype=F64)) / 2.0
            return p * math.log(2.0 / dof) + float(torch.special.digamma(halves).sum())

        return ref_mutual_information(xs, ys) - 0.5 * (c(dims[0]) + c(dims[1]) - c(dims[2]))

    left_out = [corrected(x[groups != k], y[groups != k]) for k in range(8)]
    fractions = [float((groups == k).sum()) / 200 for k in range(8)]
    expected, _ = delete_a_group(corrected(x, y), left_out, fractions)
    assert float(F.mutual_information(x, y, bias_correction="jackknife", jackknife_groups=8)) == pytest.approx(
        expected, rel=1e-10
    )


# ------------------------------------------------------------------------------- candidates sharing rows
def _raw_jackknife(x, y, x0, y0, num_groups, key):
    """The jackknife from raw leave-one-group-out subsets, each through the package's corrected estimator."""
    dx = x.shape[1]
    ref_groups = row_groups(moments.joint_rows(x, y), dx, num_groups, key)
    cand_groups = row_groups(moments.joint_rows(x0, y0), dx, num_groups, key)

    def corrected(r, c):
        reference = F.reference_from_moments(moments.from_features(moments.joint_rows(x[r], y[r])), dx)
        candidates = moments.from_features(moments.joint_rows(x0[c], y0[c]))
        return float(F.divergence_from_moments(reference, candidates, bias_correction=True).mid)

    everything = torch.ones(x.shape[0], dtype=torch.bool)
    left_out = [corrected(ref_groups != k, cand_groups != k) for k in range(num_groups)]
    fractions = [float((ref_groups == k).sum()) / x.shape[0] for k in range(num_groups)]
    return delete_a_group(corrected(everything, torch.ones(x0.shape[0], dtype=torch.bool)), left_out, fractions)[0]


@pytest.mark.parametrize("protocol", ["text", "image", "both"])
def test_candidates_sharing_the_reference_rows(protocol):
    g = torch.Generator().manual_seed(5)
    rho = torch.tensor([0.8, 0.6, 0.4], dtype=F64)
    x, y, scale = t_pairs(300, rho, 6.0, g)
    if protocol == "text":  # text-to-image: generated images for the reference's captions
        x0, y0, key = images_for(y, scale, rho, g), y, "text"
    elif protocol == "image":  # captioning: generated captions for the reference's images
        x0, y0, key = x, images_for(x, scale, rho, g), "image"
    else:
        x0, y0, key = x, y, "text"
    groups = (
        group_moments(moments.joint_rows(x, y), 3, 10, key),
        group_moments(moments.joint_rows(x0, y0), 3, 10, key),
    )
    estimates = jackknife.jackknife_estimates(*groups, image_dim=3)
    assert estimates.shared == protocol
    expected = _raw_jackknife(x, y, x0, y0, 10, key)
    assert float(jackknife_divergence(*groups, image_dim=3).mid) == pytest.approx(expected, rel=1e-9)
    if protocol == "both":
        corrected_mi = F.mutual_information(x, y, bias_correction="jackknife")
        assert float(jackknife_divergence(*groups, image_dim=3).mid) == pytest.approx(float(corrected_mi), rel=1e-12)


def test_rows_grouped_by_the_wrong_modality_are_refused():
    g = torch.Generator().manual_seed(6)
    rho = torch.tensor([0.8, 0.6], dtype=F64)
    x, y, scale = t_pairs(200, rho, None, g)
    captions = images_for(x, scale, rho, g)
    with pytest.raises(ValueError, match="share the reference's images.*`jackknife_key='image'`"):
        F.mutual_information_divergence(x, y, x, captions, bias_correction="jackknife")
    F.mutual_information_divergence(x, y, x, captions, bias_correction="jackknife", jackknife_key="image")
    generated = images_for(y, scale, rho, g)
    with pytest.raises(ValueError, match="share the reference's texts.*`jackknife_key='text'`"):
        F.mutual_information_divergence(x, y, generated, y, bias_correction="jackknife", jackknife_key="image")
    with pytest.raises(ValueError, match="paired differently.*`bias_correction=True`"):
        F.mutual_information_divergence(x, y, x, y[torch.randperm(200, generator=g)], bias_correction="jackknife")


def test_groups_without_reference_rows_are_never_left_out():
    # Eight distinct prompts, each captioning 50 rows, and K = 20: at least twelve groups are empty; the jackknife runs
    # over the others only, and equals the one computed on the compacted group states.
    g = torch.Generator().manual_seed(7)
    y = torch.randn(8, 2, dtype=F64, generator=g)[torch.arange(400) % 8]
    x = y @ torch.randn(2, 2, dtype=F64, generator=g) + torch.randn(400, 2, dtype=F64, generator=g)
    x0 = y @ torch.randn(2, 2, dtype=F64, generator=g) + torch.randn(400, 2, dtype=F64, generator=g)
    ref = group_moments(moments.joint_rows(x, y), 2, 20)
    cand = group_moments(moments.joint_rows(x0, y), 2, 20)
    occupied = ref[:, 0] > 0
    assert int(occupied.sum()) <= 8 and torch.equal(occupied, cand[:, 0] > 0)
    full = jackknife_divergence(ref, cand, 2)
    compact = jackknife_divergence(ref[occupied], cand[occupied], 2)
    assert float(full.mid) == pytest.approx(float(compact.mid), rel=1e-12)
    assert float(full.standard_error) == pytest.approx(float(compact.standard_error), rel=1e-12)


# ------------------------------------------------------------------------------------------ statistics
def test_removes_the_heavy_tail_bias_that_the_gaussian_correction_leaves():
    # t_6 pairs, Dx = Dy = 16, N = M = 300, independent candidates from the same law: MID* = -1/2 sum log(1 - rho^2).
    # Measured over these 60 repetitions: paper's -23.4%, Gaussian-corrected -6.8%, jackknife -1.8% (+- 0.8%).
    g = torch.Generator().manual_seed(8)
    rho = torch.linspace(0.9, 0.2, 16, dtype=F64)
    truth = float(-0.5 * torch.log1p(-(rho**2)).sum())
    gaussian, jack, covered = [], [], 0
    for _ in range(60):
        x, y, _ = t_pairs(300, rho, 6.0, g)
        x0, y0, _ = t_pairs(300, rho, 6.0, g)
        gaussian.append(float(F.mutual_information_divergence(x, y, x0, y0, bias_correction=True)))
        result = jackknife_divergence(
            group_moments(moments.joint_rows(x, y), 16, 10), group_moments(moments.joint_rows(x0, y0), 16, 10), 16
        )
        jack.append(float(result.mid))
        covered += float(result.ci_low) <= truth <= float(result.ci_high)
    jack_error = float(torch.tensor(jack).mean()) / truth - 1
    gaussian_error = float(torch.tensor(gaussian).mean()) / truth - 1
    assert gaussian_error < -0.05  # the Gaussian correction leaves a heavy-tail bias at this N
    assert abs(jack_error) < 0.035 and abs(jack_error) < abs(gaussian_error) / 2.5
    assert covered / 60 >= 0.85


# ----------------------------------------------------------------------------------------------- errors
def test_errors_name_the_argument():
    z = torch.randn(40, 4, dtype=F64)
    with pytest.raises(TypeError, match="`num_groups` must be an int"):
        row_groups(z, 2, 10.0)
    with pytest.raises(ValueError, match="`num_groups` must be between 2 and 1000"):
        row_groups(z, 2, 1)
    with pytest.raises(ValueError, match="`key` must be one of 'text', 'image', 'joint'"):
        row_groups(z, 2, 4, key="caption")
    with pytest.raises(ValueError, match="without its largest group"):
        jackknife_divergence(group_moments(z[:8], 2, 4), group_moments(z, 2, 4), 2)
    with pytest.raises(ValueError, match="`level` must be a number in \\(0, 1\\) or None"):
        jackknife_divergence(group_moments(z, 2, 4), group_moments(z, 2, 4), 2, level=1.5)
    assert jackknife_divergence(group_moments(z, 2, 4), group_moments(z, 2, 4), 2, level=None).ci_low is None
    with pytest.raises(TypeError, match="`candidate_groups` must be a 2-D float64 tensor"):
        jackknife_divergence(group_moments(z, 2, 4), moments.from_features(z), 2)
    with pytest.raises(ValueError, match="the same shape"):
        jackknife_divergence(group_moments(z, 2, 4), group_moments(z, 2, 5), 2)
    x, y = z[:, :2], z[:, 2:]
    with pytest.raises(ValueError, match="`bias_correction='jackknife'` needs `eps=0`"):
        F.mutual_information_divergence(x, y, x, y, eps=1e-4, bias_correction="jackknife")
    with pytest.raises(TypeError, match="`bias_correction` must be True, False or 'jackknife'"):
        F.mutual_information_divergence(x, y, x, y, bias_correction="jack")
    with pytest.raises(ValueError, match="`jackknife_key` must be one of"):
        F.mutual_information_divergence(x, y, x, y, bias_correction="jackknife", jackknife_key="pairs")
    with pytest.raises(TypeError, match="`jackknife_groups` must be an int"):
        F.mutual_information(x, y, bias_correction="jackknife", jackknife_groups="10")
    reference = F.reference_from_moments(moments.from_features(z), 2)
    with pytest.raises(ValueError, match="`bias_correction='jackknife'` is not available here"):
        F.divergence_from_moments(reference, moments.from_features(z), bias_correction="jackknife")
    with pytest.raises(TypeError, match="`bias_correction` must be a bool"):
        _checks.check_bias_correction("jackknife!", 0.0)
    assert _checks.check_bias_correction("jackknife", 0.0, allow_jackknife=True) == "jackknife"
    assert wishart.corrected_terms.__kwdefaults__ == {"shared": "detect"}


@pytest.mark.slow
def test_study_runs_quickly():
    # benchmarks/bias_study.py jackknife --quick: every table of the study, a few repetitions, no file written.
    root = Path(__file__).resolve().parents[1]
    command = [sys.executable, str(root / "benchmarks" / "bias_study.py"), "jackknife", "--quick"]
    done = subprocess.run(
        [*command, "--parts", "heavy-t6,groups,cost"], capture_output=True, text=True, timeout=600, cwd=root
    )
    assert done.returncode == 0, done.stderr[-2000:]
    for title in ("Heavy-tailed pairs", "Number of groups K", "Cost at D = 64 + 64"):
        assert title in done.stdout, title


def test_leave_one_out_fits_match_the_subsets_fitted_from_scratch():
    # Each left-out estimate comes from the full sums minus one group's (lower triangle only) and, for the full
    # sample, from the caller's fit; it must equal the estimate of the subset's rows accumulated from scratch.
    g = torch.Generator().manual_seed(11)
    rho = torch.tensor([0.8, 0.5, 0.3], dtype=F64)
    x, y, scale = t_pairs(400, rho, 6.0, g)
    x0 = images_for(y, scale, rho, g)
    reference_rows, candidate_rows = moments.joint_rows(x, y), moments.joint_rows(x0, y)
    groups = (group_moments(reference_rows, 3, 5), group_moments(candidate_rows, 3, 5))
    full_fit = gaussian.reference_from_moments(merge_groups(groups[0]), 3)
    estimates = jackknife.jackknife_estimates(*groups, image_dim=3, full_reference=full_fit)
    assert torch.equal(estimates.full, jackknife.jackknife_estimates(*groups, image_dim=3).full)
    labels = row_groups(reference_rows, 3, 5)
    for index, k in enumerate(int(k) for k in torch.unique(labels)):
        keep = labels != k
        subset = [moments.from_features(reference_rows[keep]), moments.from_features(candidate_rows[keep])]
        reference = gaussian.reference_from_moments(subset[0], 3)
        scatter = gaussian.candidate_scatter(reference, subset[1])
        traces = gaussian.block_traces(reference, scatter)
        mi, distance = wishart.corrected_terms(reference, subset[1], scatter, traces, shared=estimates.shared)
        expected = torch.stack([mi + distance, mi, distance])
        torch.testing.assert_close(estimates.left_out[index], expected, rtol=1e-10, atol=0)


def test_too_few_reference_pairs_without_a_group_advises_more_groups_and_never_eps():
    # 4 + 4 features: the jackknife needs more than Dx + Dy + 2 = 10 reference pairs without each group. With 14
    # pairs in 2 groups the larger group leaves at most 7; more groups (smaller ones) would leave more.
    from mid_metric import MutualInformationDivergence

    gen = torch.Generator().manual_seed(3)
    x, y = torch.randn(14, 4, generator=gen), torch.randn(14, 4, generator=gen)
    metric = MutualInformationDivergence(feature=4, bias_correction="jackknife", jackknife_groups=2)
    metric.update(x, y, real=True)
    metric.update(x + 0.1, y, real=False)
    with pytest.raises(ValueError, match=r"without each group") as caught:
        metric.compute()
    assert "more groups (`jackknife_groups`" in str(caught.value) and "eps" not in str(caught.value)


def test_a_non_finite_bias_corrected_result_does_not_suggest_eps():
    from mid_metric._checks import check_finite_result

    value = torch.tensor([float("nan")])
    with pytest.raises(ValueError, match="Set `eps` > 0"):
        check_finite_result(value, "MID")
    with pytest.raises(ValueError, match="Check the features' scale") as caught:
        check_finite_result(value, "MID", regularisable=False)
    assert "eps" not in str(caught.value)
