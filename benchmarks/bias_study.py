"""Sample-size bias study for the bias-corrected MID, the jackknife and their confidence intervals (issues 7, 15).

``python benchmarks/bias_study.py`` (about 5-10 minutes on 2 CPU cores) is the Gaussian-correction study (issue 7): it
writes ``benchmarks/bias.png`` and rewrites only the block between ``<!-- BEGIN bias -->`` and ``<!-- END bias -->`` of
``benchmarks/RESULTS.md``. ``python benchmarks/bias_study.py jackknife`` is the study of
``bias_correction="jackknife"`` (issue 15; see ``jackknife_main`` below): it writes ``benchmarks/jackknife.png`` and the
block between ``<!-- BEGIN jackknife -->`` and ``<!-- END jackknife -->``.

Issue 7 protocols:

1. Gaussian data, Dx = Dy = 64, with a known population MID (independent coordinate pairs: reference correlations
   rho_k, candidate images generated from the captions with correlation 0.8 rho_k). Both protocols: independent
   candidates, and the text-to-image protocol (generated images for the reference's own captions). Mean of the
   paper's and the corrected estimator over repetitions at N = M in {500, 1k, 2k, 5k, 20k}.
2. CLIP-like, non-Gaussian, L2-normalised features at D = 512 (a clustered latent "concept" pushed through
   nonlinear maps, mean norm about 0.9), text-to-image protocol, N = 5k, 10k, 20k, 40k: a measurement of drift.
3. Coverage of the 95% interval of the corrected estimator on Gaussian data (D = 64 + 64, N = M = 5000).
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
import time
import zlib
from pathlib import Path

import torch

from mid_metric import bias, jackknife, moments, uncertainty
from mid_metric.functional import divergence_from_moments, reference_from_moments

F64 = torch.float64
HERE = Path(__file__).resolve().parent
BEGIN, END = "<!-- BEGIN bias -->", "<!-- END bias -->"


# ----------------------------------------------------------------------------- Gaussian model with known MID
class GaussianModel:
    def __init__(self, dim: int = 64, cand_scale: float = 0.8) -> None:
        self.dim = dim
        self.rho = torch.linspace(0.9, 0.05, dim, dtype=F64)
        self.cand_rho = cand_scale * self.rho
        residual = (self.cand_rho - self.rho) ** 2 + 1 - self.cand_rho**2
        self.truth = float((-0.5 * torch.log1p(-(self.rho**2)) + 0.5 * (1 - residual / (1 - self.rho**2))).sum())

    def reference(self, n: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.randn(n, self.dim, dtype=F64, generator=g)
        return x, self.rho * x + torch.sqrt(1 - self.rho**2) * torch.randn(n, self.dim, dtype=F64, generator=g)

    def images_for(self, texts: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        noise = torch.randn(texts.shape, dtype=F64, generator=g)
        return self.cand_rho * texts + torch.sqrt(1 - self.cand_rho**2) * noise


def _spread(values: list[float], largest_n: str) -> str:
    """The range of ``values`` over N, absolute and as a share of the value at the largest N (the last one)."""
    width = max(values) - min(values)
    return f"{width:.3f} ({100 * width / abs(values[-1]):.1f}% of the N = {largest_n} value)"


def packed(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return moments.from_features(torch.cat([x.to(F64), y.to(F64)], dim=1))


def both_estimates(x: torch.Tensor, y: torch.Tensor, cand: torch.Tensor, ci: bool = False):
    ref = reference_from_moments(packed(x, y), x.shape[1])
    raw = float(divergence_from_moments(ref, cand).mid)
    corrected = bias.corrected_divergence(ref, cand)
    if ci:
        corrected = bias.with_confidence_interval(corrected, ref, cand, 0.95)
    return raw, corrected


def gaussian_sweep(sizes: list[int], reps_at: dict[int, int], seed: int = 0) -> list[dict]:
    model = GaussianModel()
    g = torch.Generator().manual_seed(seed)
    rows = []
    for protocol in ("independent", "shared captions"):
        for n in sizes:
            raws, cors = [], []
            for _ in range(reps_at[n]):
                x, y = model.reference(n, g)
                if protocol == "independent":
                    texts = torch.randn(n, model.dim, dtype=F64, generator=g)
                    cand = packed(model.images_for(texts, g), texts)
                else:
                    cand = packed(model.images_for(y, g), y)
                raw, cor = both_estimates(x, y, cand)
                raws.append(raw)
                cors.append(float(cor.mid))
            raw_t, cor_t = torch.tensor(raws), torch.tensor(cors)
            reps = len(raws)
            rows.append(
                {
                    "protocol": protocol,
                    "n": n,
                    "reps": reps,
                    "truth": model.truth,
                    "raw": float(raw_t.mean()),
                    "raw_sem": float(raw_t.std()) / math.sqrt(reps),
                    "cor": float(cor_t.mean()),
                    "cor_sem": float(cor_t.std()) / math.sqrt(reps),
                }
            )
            r = rows[-1]
            print(
                f"gaussian {protocol:17s} N={n:6d} reps={reps:4d} truth={r['truth']:.4f} paper={r['raw']:.4f}"
                f" corrected={r['cor']:.4f}+-{r['cor_sem']:.4f}",
                flush=True,
            )
    return rows


# ----------------------------------------------------------------------------- CLIP-like non-Gaussian features
class ClipLikeModel:
    """Clustered latent concepts pushed through nonlinear maps into L2-normalised 512-d image and text features."""

    def __init__(self, dim: int = 512, latent: int = 96, concepts: int = 300, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        self.dim, self.latent = dim, latent
        self.centres = 1.5 * torch.randn(concepts, latent, generator=g)
        spectrum = torch.logspace(0, -2.5, latent)
        self.map_x = torch.randn(latent, dim, generator=g) * spectrum.unsqueeze(1) / math.sqrt(latent)
        self.map_y = torch.randn(latent, dim, generator=g) * spectrum.unsqueeze(1) / math.sqrt(latent)
        noise_spectrum = torch.logspace(-1.5, -3.5, dim)
        self.noise_x = torch.linalg.qr(torch.randn(dim, dim, generator=g))[0] * noise_spectrum
        self.noise_y = torch.linalg.qr(torch.randn(dim, dim, generator=g))[0] * noise_spectrum
        self.mean_x = torch.randn(dim, generator=g)
        self.mean_y = torch.randn(dim, generator=g)
        self.mean_x *= 0.3 / self.mean_x.norm()
        self.mean_y *= 0.3 / self.mean_y.norm()

    def concepts(self, n: int, g: torch.Generator) -> torch.Tensor:
        which = torch.randint(self.centres.shape[0], (n,), generator=g)
        return self.centres[which] + torch.randn(n, self.latent, generator=g)

    def images(self, s: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        raw = self.mean_x + torch.tanh(s) @ self.map_x + torch.randn(s.shape[0], self.dim, generator=g) @ self.noise_x
        return torch.nn.functional.normalize(raw, dim=1)

    def texts(self, s: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        raw = self.mean_y + (s + 0.3 * s.abs()) @ self.map_y
        raw = raw + torch.randn(s.shape[0], self.dim, generator=g) @ self.noise_y
        return torch.nn.functional.normalize(raw, dim=1)


def clip_like_sweep(sizes: list[int], reps: int, seed: int = 1) -> list[dict]:
    model = ClipLikeModel()
    g = torch.Generator().manual_seed(seed)
    rows = []
    for n in sizes:
        raws, cors = [], []
        for _ in range(reps):
            s = model.concepts(n, g)
            x, y = model.images(s, g), model.texts(s, g)
            # A generator that gets the concept slightly wrong: images for the reference's own captions.
            x0 = model.images(s + 0.5 * torch.randn(s.shape, generator=g), g)
            raw, cor = both_estimates(x, y, packed(x0, y))
            raws.append(raw)
            cors.append(float(cor.mid))
        rows.append({"n": n, "reps": reps, "raw": sum(raws) / reps, "cor": sum(cors) / reps})
        print(f"clip-like N={n:6d} paper={rows[-1]['raw']:.3f} corrected={rows[-1]['cor']:.3f}", flush=True)
    return rows


# ----------------------------------------------------------------------------- interval coverage
def coverage(n: int, reps: int, seed: int = 2) -> dict:
    model = GaussianModel()
    g = torch.Generator().manual_seed(seed)
    out = {}
    for protocol in ("independent", "shared captions"):
        hits, ses, ests = 0, [], []
        for _ in range(reps):
            x, y = model.reference(n, g)
            if protocol == "independent":
                texts = torch.randn(n, model.dim, dtype=F64, generator=g)
                cand = packed(model.images_for(texts, g), texts)
            else:
                cand = packed(model.images_for(y, g), y)
            _, res = both_estimates(x, y, cand, ci=True)
            hits += float(res.ci_low) <= model.truth <= float(res.ci_high)
            ses.append(float(res.standard_error))
            ests.append(float(res.mid))
        out[protocol] = {
            "reps": reps,
            "coverage": hits / reps,
            "mean_se": sum(ses) / reps,
            "sd": float(torch.tensor(ests).std()),
        }
        print(f"coverage {protocol}: {out[protocol]}", flush=True)
    return out


# ----------------------------------------------------------------------------- outputs
def plot(gauss: list[dict], clip: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    ax = axes[0]
    for protocol, style in (("independent", "-"), ("shared captions", "--")):
        rows = [r for r in gauss if r["protocol"] == protocol]
        ns = [r["n"] for r in rows]
        ax.errorbar(
            ns,
            [r["raw"] for r in rows],
            [2 * r["raw_sem"] for r in rows],
            fmt="o" + style,
            color="tab:red",
            label=f"paper's estimator ({protocol})",
        )
        ax.errorbar(
            ns,
            [r["cor"] for r in rows],
            [2 * r["cor_sem"] for r in rows],
            fmt="s" + style,
            color="tab:blue",
            label=f"bias_correction=True ({protocol})",
        )
    ax.axhline(gauss[0]["truth"], color="k", lw=1, label="population MID")
    ax.set_xscale("log")
    ax.set_xlabel("N = M (pairs)")
    ax.set_ylabel("mean MID over repetitions")
    ax.set_title("Gaussian, Dx = Dy = 64 (known truth)")
    ax.legend(fontsize=7)
    ax = axes[1]
    ns = [r["n"] for r in clip]
    ax.plot(ns, [r["raw"] for r in clip], "o-", color="tab:red", label="paper's estimator")
    ax.plot(ns, [r["cor"] for r in clip], "s-", color="tab:blue", label="bias_correction=True")
    ax.set_xscale("log")
    ax.set_xlabel("N = M (pairs)")
    ax.set_ylabel("MID")
    ax.set_title("CLIP-like non-Gaussian, D = 512 (truth unknown)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"wrote {path}")


def markdown(gauss: list[dict], clip: list[dict], cov: dict, cov_n: int, seconds: float) -> str:
    lines = [
        "## Sample-size bias (issue 7)",
        "",
        "Generated by `python benchmarks/bias_study.py`; figure: `benchmarks/bias.png`.",
        "",
        "### Gaussian data, Dx = Dy = 64, known population MID",
        "",
        "Mean over repetitions (± standard error of that mean). Candidates: images generated from captions with",
        "correlation 0.8 ρ_k; *independent* = fresh captions, *shared captions* = the reference's own captions",
        "(the official text-to-image protocol). Error = (mean − truth) / truth.",
        "",
        "| protocol | N = M | reps | truth | paper's MID | error | corrected MID | error |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in gauss:
        lines.append(
            f"| {r['protocol']} | {r['n']} | {r['reps']} | {r['truth']:.3f} | {r['raw']:.3f} ± {r['raw_sem']:.3f}"
            f" | {100 * (r['raw'] - r['truth']) / r['truth']:+.1f}% | {r['cor']:.3f} ± {r['cor_sem']:.3f}"
            f" | {100 * (r['cor'] - r['truth']) / r['truth']:+.2f}% |"
        )
    worst = max(abs(r["cor"] - r["truth"]) / r["truth"] for r in gauss)
    lines += [
        "",
        f"Largest corrected error: {100 * worst:.2f}% (acceptance: within 1% at every N).",
        "",
        "### CLIP-like non-Gaussian, L2-normalised features, D = 512 (measurement)",
        "",
        "Text-to-image protocol (generated images for the reference's own captions); mean over repetitions.",
        "",
        "| N = M | reps | paper's MID | corrected MID |",
        "|---:|---:|---:|---:|",
    ]
    for r in clip:
        lines.append(f"| {r['n']} | {r['reps']} | {r['raw']:.3f} | {r['cor']:.3f} |")

    def spread(key: str) -> str:
        return _spread([r[key] for r in clip], "40k")

    lines += [
        "",
        f"Range across N: paper's {spread('raw')}; corrected {spread('cor')}. These features are not Gaussian, so",
        "the correction is not exact here; it removes most of the drift, not all of it.",
        "",
        f"### Coverage of the 95% interval (corrected estimator, Gaussian, D = 64 + 64, N = M = {cov_n})",
        "",
        "| protocol | reps | coverage | mean standard error | sd of estimates |",
        "|---|---:|---:|---:|---:|",
    ]
    for protocol, c in cov.items():
        lines.append(f"| {protocol} | {c['reps']} | {100 * c['coverage']:.1f}% | {c['mean_se']:.4f} | {c['sd']:.4f} |")
    lines += ["", f"Total run time: {seconds / 60:.1f} min on this machine."]
    return "\n".join(lines)


def write_block(text: str, path: Path, begin: str = BEGIN, end: str = END) -> None:
    content = path.read_text() if path.exists() else f"{begin}\n{end}\n"
    if begin not in content or end not in content:
        content = content.rstrip("\n") + f"\n\n{begin}\n{end}\n"
    pattern = re.compile(re.escape(begin) + ".*?" + re.escape(end), re.S)
    path.write_text(pattern.sub(lambda _: f"{begin}\n{text}\n{end}", content, count=1))
    print(f"updated {path}")


# ============================================================================ issue 15: the grouped jackknife
JK_BEGIN, JK_END = "<!-- BEGIN jackknife -->", "<!-- END jackknife -->"
HEAVY_SIZES = [300, 500, 1000, 2000, 5000, 10000]
HEAVY_REPS = {300: 400, 500: 400, 1000: 300, 2000: 250, 5000: 250, 10000: 250}
HEAVY_DOFS = {"gauss": None, "t8": 8.0, "t6": 6.0, "t5": 5.0}
PROTOCOLS = ("independent", "shared captions", "shared captions, weaker generator")
# The weaker generator's MID* is 3.4 times smaller at D = 16 + 16, so its relative errors are noisier: more repetitions.
REPS_FACTOR = {"shared captions, weaker generator": 3}
CLIP_SIZES = [5000, 10000, 20000, 40000]
CLIP_REPS = {5000: 6, 10000: 4, 20000: 3, 40000: 2}


class HeavyTailModel:
    """Multivariate-t pairs with a known population value of the MID functional.

    A row is ``(x, y) = s (u, v)`` with ``(u_k, v_k)`` standard Gaussian pairs of correlation ``rho_k``, independent
    across ``k``, and one scale ``s = sqrt(nu / chi2_nu)`` per row: an elliptical t with ``nu`` degrees of freedom
    (``nu = None``: Gaussian). Its covariance is ``nu / (nu - 2)`` times the Gaussian one. The MID functional
    depends on the distributions only through their means and covariances and is invariant under a common scaling
    (MI is a log-determinant ratio, the traces are ratios), so for candidates ``(x0, y)`` with
    ``x0 = c rho y + sqrt(1 - c^2 rho^2) s e`` (the same row scale ``s``) it is the Gaussian model's value
    ``sum_k -1/2 log(1 - rho_k^2) + 1/2 (1 - ((c rho_k - rho_k)^2 + 1 - c^2 rho_k^2) / (1 - rho_k^2))``, which is
    ``-1/2 sum log(1 - rho_k^2)`` (the MI ``I``; distance term 0) when ``c = 1``, i.e. when the candidates follow
    the reference's law. (For t it is the population value of the Gaussian-fit functional that MID estimates, not
    the true mutual information of the t pair.)
    """

    def __init__(self, dim: int = 16, dof: float | None = 6.0, rho_max: float = 0.9, rho_min: float = 0.05) -> None:
        self.dim, self.dof = dim, dof
        self.rho = torch.linspace(rho_max, rho_min, dim, dtype=F64)

    def truth(self, generator_scale: float = 1.0) -> float:
        cand_rho = generator_scale * self.rho
        residual = (cand_rho - self.rho) ** 2 + 1 - cand_rho**2
        return float((-0.5 * torch.log1p(-(self.rho**2)) + 0.5 * (1 - residual / (1 - self.rho**2))).sum())

    def sample(self, n: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        scale = torch.ones(n, 1, dtype=F64)
        if self.dof is not None:
            chi2 = 2.0 * torch._standard_gamma(torch.full((n, 1), self.dof / 2.0, dtype=F64), generator=g)
            scale = (self.dof / chi2).sqrt()
        u = torch.randn(n, self.dim, dtype=F64, generator=g)
        v = self.rho * u + torch.sqrt(1 - self.rho**2) * torch.randn(n, self.dim, dtype=F64, generator=g)
        return scale * u, scale * v, scale

    def images_for(self, y: torch.Tensor, scale: torch.Tensor, g: torch.Generator, generator_scale: float = 1.0):
        cand_rho = generator_scale * self.rho
        noise = torch.randn(y.shape, dtype=F64, generator=g)
        return cand_rho * y + torch.sqrt(1 - cand_rho**2) * scale * noise


def _draw(model: HeavyTailModel, protocol: str, n: int, g: torch.Generator):
    """Reference rows, candidate rows, the key ("text": the captions are shared) and the population MID."""
    x, y, scale = model.sample(n, g)
    if protocol == "independent":
        xc, yc, _ = model.sample(n, g)
        truth = model.truth()
    elif protocol == "shared captions":
        xc, yc, truth = model.images_for(y, scale, g), y, model.truth()
    else:
        xc, yc, truth = model.images_for(y, scale, g, 0.8), y, model.truth(0.8)
    return moments.joint_rows(x, y), moments.joint_rows(xc, yc), truth


def _summary(values: list[float], truth: float) -> dict:
    t = torch.tensor(values, dtype=F64)
    return {
        "mean": float(t.mean()),
        "sem": float(t.std()) / math.sqrt(len(values)),
        "sd": float(t.std()),
        "error": float(t.mean()) / truth - 1,
        "error_sem": float(t.std()) / math.sqrt(len(values)) / abs(truth),
    }


def heavy_sweep(name: str, dim: int, sizes: list[int], reps_at: dict[int, int], protocols, groups: int = 10) -> list:
    """Paper's, Gaussian-corrected and jackknifed MID, with interval coverage, over repetitions at each N."""
    model = HeavyTailModel(dim, HEAVY_DOFS[name])
    rows = []
    for protocol in protocols:
        for n in sizes:
            g = torch.Generator().manual_seed(zlib.crc32(f"{name} {dim} {protocol} {n}".encode()))
            paper, gauss, jack, jack_se = [], [], [], []
            jack_hits = gauss_hits = 0
            reps = reps_at[n] * REPS_FACTOR.get(protocol, 1)
            for _ in range(reps):
                ref_rows, cand_rows, truth = _draw(model, protocol, n, g)
                ref_groups, cand_groups = (jackknife.group_moments(r, dim, groups) for r in (ref_rows, cand_rows))
                ref_packed, cand_packed = jackknife.merge_groups(ref_groups), jackknife.merge_groups(cand_groups)
                reference = reference_from_moments(ref_packed, dim)
                paper.append(float(divergence_from_moments(reference, cand_packed).mid))
                corrected = divergence_from_moments(reference, cand_packed, bias_correction=True)
                corrected = uncertainty.with_confidence_interval(corrected, reference, cand_packed, 0.95)
                gauss.append(float(corrected.mid))
                gauss_hits += float(corrected.ci_low) <= truth <= float(corrected.ci_high)
                result = jackknife.jackknife_divergence(ref_groups, cand_groups, dim, level=0.95)
                jack.append(float(result.mid))
                jack_se.append(float(result.standard_error))
                jack_hits += float(result.ci_low) <= truth <= float(result.ci_high)
            row = {
                "model": name,
                "dim": dim,
                "protocol": protocol,
                "n": n,
                "reps": reps,
                "truth": truth,
                "paper": _summary(paper, truth),
                "gauss": _summary(gauss, truth),
                "jack": _summary(jack, truth),
                "jack_mean_se": sum(jack_se) / reps,
                "jack_coverage": jack_hits / reps,
                "gauss_coverage": gauss_hits / reps,
            }
            rows.append(row)
            print(
                f"{name} D={dim}+{dim} {protocol:34s} N={n:6d} reps={reps}:"
                f" error paper {100 * row['paper']['error']:+6.2f}%"
                f" True {100 * row['gauss']['error']:+6.2f}% jackknife {100 * row['jack']['error']:+6.2f}%"
                f" (+-{100 * row['jack']['error_sem']:.2f}); coverage jackknife {100 * row['jack_coverage']:.1f}%"
                f" True {100 * row['gauss_coverage']:.1f}%",
                flush=True,
            )
    return rows


def groups_sweep(sizes: list[int], reps: int, counts=(5, 10, 20)) -> list:
    """Bias, spread and coverage against K, with the delete-a-group weights and with equal weights."""
    model = HeavyTailModel(16, 6.0)
    rows = []
    for n in sizes:
        g = torch.Generator().manual_seed(100 + n)
        found: dict = {(k, w): ([], []) for k in counts for w in ("unequal-group", "equal")}
        for _ in range(reps):
            ref_rows, cand_rows, truth = _draw(model, "independent", n, g)
            for k in counts:
                est = jackknife.jackknife_estimates(
                    jackknife.group_moments(ref_rows, 16, k), jackknife.group_moments(cand_rows, 16, k), 16
                )
                value, error = est.combined()
                found[(k, "unequal-group")][0].append(float(value[0]))
                found[(k, "unequal-group")][1].append(float(error[0]))
                equal = torch.full_like(est.fractions, 1.0 / est.fractions.shape[0])
                value, error = jackknife.jackknife_combine(est.full, est.left_out, equal)
                found[(k, "equal")][0].append(float(value[0]))
                found[(k, "equal")][1].append(float(error[0]))
        for (k, weights), (values, errors) in found.items():
            v, e = torch.tensor(values, dtype=F64), torch.tensor(errors, dtype=F64)
            t_q, z_q = jackknife.two_sided_t_quantile(0.95, k - 1), 1.959963984540054
            row = {
                "n": n,
                "k": k,
                "weights": weights,
                "reps": reps,
                "error": float(v.mean()) / truth - 1,
                "error_sem": float(v.std()) / math.sqrt(reps) / truth,
                "sd": float(v.std()),
                "mean_se": float(e.mean()),
                "sd_se": float(e.std()),
                "coverage_t": float(((v - t_q * e <= truth) & (truth <= v + t_q * e)).double().mean()),
                "coverage_z": float(((v - z_q * e <= truth) & (truth <= v + z_q * e)).double().mean()),
            }
            rows.append(row)
            print(f"groups N={n} K={k} {weights}: {row}", flush=True)
    return rows


def clip_sweep(sizes: list[int], reps_at: dict[int, int], seed: int = 1) -> list:
    """The CLIP-like D = 512 text-to-image protocol of issue 7, with the jackknife next to the other two."""
    model = ClipLikeModel()
    g = torch.Generator().manual_seed(seed)
    rows = []
    for n in sizes:
        found: dict = {"paper": [], "gauss": [], "jack": [], "se": []}
        for _ in range(reps_at[n]):
            s = model.concepts(n, g)
            x, y = model.images(s, g), model.texts(s, g)
            x0 = model.images(s + 0.5 * torch.randn(s.shape, generator=g), g)
            ref_groups = jackknife.group_moments(moments.joint_rows(x, y), model.dim, 10)
            cand_groups = jackknife.group_moments(moments.joint_rows(x0, y), model.dim, 10)
            ref_packed, cand_packed = jackknife.merge_groups(ref_groups), jackknife.merge_groups(cand_groups)
            reference = reference_from_moments(ref_packed, model.dim)
            found["paper"].append(float(divergence_from_moments(reference, cand_packed).mid))
            found["gauss"].append(float(divergence_from_moments(reference, cand_packed, bias_correction=True).mid))
            result = jackknife.jackknife_divergence(ref_groups, cand_groups, model.dim)
            found["jack"].append(float(result.mid))
            found["se"].append(float(result.standard_error))
        row = {"n": n, "reps": reps_at[n]}
        for key in ("paper", "gauss", "jack"):
            t = torch.tensor(found[key], dtype=F64)
            row[key] = float(t.mean())
            row[key + "_sem"] = float(t.std()) / math.sqrt(len(t)) if len(t) > 1 else float("nan")
        row["jack_se"] = sum(found["se"]) / len(found["se"])
        rows.append(row)
        print(f"clip-like N={n}: {row}", flush=True)
    return rows


def _median_seconds(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def cost_probe(dim: int = 768, n: int = 20000, repeats: int = 3) -> dict:
    """compute() time of True and of the jackknife, and update throughput with and without groups, at D = dim + dim."""
    torch.set_num_threads(2)
    g = torch.Generator().manual_seed(0)
    model = ClipLikeModel(dim=dim)
    s = model.concepts(n, g)
    x, y = model.images(s, g), model.texts(s, g)
    x0 = model.images(s + 0.5 * torch.randn(s.shape, generator=g), g)
    out: dict = {"dim": dim, "n": n, "repeats": repeats, "state_mib": 8 * (2 * dim + 1) ** 2 / 2**20}
    for protocol, (xc, yc) in (("shared captions", (x0, y)), ("independent", (x0[torch.randperm(n, generator=g)], y))):
        ref_rows, cand_rows = moments.joint_rows(x, y), moments.joint_rows(xc, yc)
        ref_groups = jackknife.group_moments(ref_rows, dim, 10)
        cand_groups = jackknife.group_moments(cand_rows, dim, 10)
        ref_packed, cand_packed = jackknife.merge_groups(ref_groups), jackknife.merge_groups(cand_groups)

        def gaussian(ref_packed=ref_packed, cand_packed=cand_packed) -> None:
            divergence_from_moments(reference_from_moments(ref_packed, dim), cand_packed, bias_correction=True)

        def jack(ref_groups=ref_groups, cand_groups=cand_groups) -> None:
            jackknife.jackknife_divergence(ref_groups, cand_groups, dim)

        gaussian()
        out[protocol] = {"true_s": _median_seconds(gaussian, repeats), "jackknife_s": _median_seconds(jack, repeats)}
        print(f"cost {protocol}: {out[protocol]}", flush=True)
    # Steady state: the states already hold rows (counters past the recentring schedule's early powers of two, which
    # recentre every group state once each and would dominate a short run).
    rows = moments.joint_rows(x, y)
    for batch in (256, 2560):
        chunks = [rows[i : i + batch] for i in range(0, min(n, 8 * 2560), batch)]
        plain_state = moments.from_features(rows[:batch])
        grouped_state = jackknife.group_moments(rows[:2560], dim, 10)

        def plain(chunks=chunks, state=plain_state) -> None:
            for number, chunk in enumerate(chunks, start=1001):
                moments.accumulate_batch_(state, chunk, number)

        def grouped(chunks=chunks, state=grouped_state) -> None:
            seen = [1000] * 10
            for chunk in chunks:
                jackknife.accumulate_groups_(state, chunk, jackknife.row_groups(chunk, dim, 10), seen)

        count = sum(c.shape[0] for c in chunks)
        out[f"update_{batch}"] = {
            "plain_rows_per_s": count / _median_seconds(plain, repeats),
            "grouped_rows_per_s": count / _median_seconds(grouped, repeats),
        }
        print(f"cost update batch {batch}: {out[f'update_{batch}']}", flush=True)
    return out


def _percent(value: float) -> str:
    return f"{100 * value:+.2f}%"


def jackknife_markdown(parts: dict) -> str:
    lines = [
        '## Jackknife bias correction (`bias_correction="jackknife"`, issue 15)',
        "",
        "Generated by `python benchmarks/bias_study.py jackknife`; figure: `benchmarks/jackknife.png`. K = 10",
        "groups; rows grouped by a hash of their caption. Error = (mean over repetitions − population value) /",
        "population value, ± the standard error of that mean. Coverage: share of repetitions whose 95% interval holds",
        "the population value (jackknife: ± t₉ · jackknife SE; `True`: the Gaussian delta-method interval of",
        "`compute_with_ci`).",
        "",
    ]
    heavy = [
        r for key in ("heavy-gauss", "heavy-t8", "heavy-t6", "heavy-t5", "heavy-t6-d64") for r in parts.get(key, [])
    ]
    if heavy:
        lines += [
            "### Heavy-tailed pairs with a known population value",
            "",
            "Multivariate t (one χ² scale per row; `gauss` = Gaussian), x and y correlated coordinate by coordinate",
            "(ρ from 0.9 to 0.05). Candidates: *independent* = fresh pairs of the reference's law; *shared captions* =",
            "images generated for the reference's own captions with the reference's law (both: MID* = I =",
            "−½ Σ log(1 − ρ²)); *weaker generator* = the same with correlation 0.8 ρ (MID* below I).",
            "",
            "| law | D | candidates | N = M | reps | MID* | paper's | `True` | jackknife | jackknife − MID*"
            " | coverage jackknife | coverage `True` |",
            "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for r in heavy:
            lines.append(
                f"| {r['model']} | {r['dim']}+{r['dim']} | {r['protocol']} | {r['n']} | {r['reps']} | {r['truth']:.3f}"
                f" | {_percent(r['paper']['error'])} | {_percent(r['gauss']['error'])}"
                f" | **{_percent(r['jack']['error'])}** ± {100 * r['jack']['error_sem']:.2f}"
                f" | {r['jack']['mean'] - r['truth']:+.4f} | {100 * r['jack_coverage']:.1f}%"
                f" | {100 * r['gauss_coverage']:.1f}% |"
            )
        lines.append("")
        for model in ("gauss", "t8", "t6", "t5"):
            rows = [r for r in heavy if r["model"] == model and r["dim"] == 16]
            if not rows:
                continue
            same = [r for r in rows if "weaker" not in r["protocol"]]
            weaker = [r for r in rows if "weaker" in r["protocol"]]
            text = f"- **{model}, D = 16 + 16**: candidates of the reference's law: "
            for label, chosen in (("", same), ("; weaker generator: ", weaker)):
                if chosen:
                    worst = max(chosen, key=lambda r: abs(r["jack"]["error"]))
                    worst_true = max(chosen, key=lambda r: abs(r["gauss"]["error"]))
                    text += (
                        f"{label}largest jackknife error {_percent(worst['jack']['error'])}"
                        f" ± {100 * worst['jack']['error_sem']:.2f} ({worst['protocol']}, N = {worst['n']}), `True`"
                        f" {_percent(worst_true['gauss']['error'])} (N = {worst_true['n']})"
                    )
            cov = [r["jack_coverage"] for r in rows]
            lines.append(text + f". Jackknife coverage {100 * min(cov):.1f}–{100 * max(cov):.1f}%.")
        lines.append("")
    groups = parts.get("groups", [])
    if groups:
        lines += [
            "### Number of groups K and the weights (t₆, D = 16 + 16, independent candidates)",
            "",
            "*unequal-group*: the delete-a-group weights `1 − n_k/N` (the default); *equal*: the textbook",
            "`K t − (K − 1) mean(t_k)`. Coverage with Student's t (K − 1 dof) and with the normal quantile.",
            "",
            "| N = M | K | weights | reps | error | sd of estimates | mean SE | sd of SE | coverage t | coverage z |",
            "|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for r in groups:
            lines.append(
                f"| {r['n']} | {r['k']} | {r['weights']} | {r['reps']}"
                f" | {_percent(r['error'])} ± {100 * r['error_sem']:.2f}"
                f" | {r['sd']:.4f} | {r['mean_se']:.4f} | {r['sd_se']:.4f} | {100 * r['coverage_t']:.1f}%"
                f" | {100 * r['coverage_z']:.1f}% |"
            )
        lines.append("")
    clip = parts.get("clip", [])
    if clip:
        lines += [
            "### CLIP-like non-Gaussian, L2-normalised features, D = 512 (text-to-image protocol; truth unknown)",
            "",
            "The features of the issue-7 study (`ClipLikeModel`). Mean over repetitions (± standard error).",
            "",
            "| N = M | reps | paper's MID | `True` | jackknife | jackknife SE (one run) |",
            "|---:|---:|---:|---:|---:|---:|",
        ]
        for r in clip:
            lines.append(
                f"| {r['n']} | {r['reps']} | {r['paper']:.3f} ± {r['paper_sem']:.3f}"
                f" | {r['gauss']:.3f} ± {r['gauss_sem']:.3f}"
                f" | **{r['jack']:.3f}** ± {r['jack_sem']:.3f} | {r['jack_se']:.3f} |"
            )

        def spread(key: str) -> str:
            return _spread([r[key] for r in clip], str(clip[-1]["n"]))

        lines += [
            "",
            f"Range across N: paper's {spread('paper')}; `True` {spread('gauss')}; jackknife {spread('jack')}.",
            "",
        ]
    cost = parts.get("cost")
    if cost:
        dim = cost["dim"]
        lines += [
            f"### Cost at D = {dim} + {dim}, K = 10 (N = M = {cost['n']}, median of {cost['repeats']}, 2 threads)",
            "",
            f"Memory: a packed state is 8·(J + 1)² bytes = {cost['state_mib']:.1f} MiB at J = {2 * dim}; the",
            f"jackknife keeps K of them per group: {10 * cost['state_mib']:.0f} MiB per group,",
            f"{20 * cost['state_mib']:.0f} MiB for the reference and the candidates (against",
            f"{2 * cost['state_mib']:.0f} MiB), and `compute()` holds two more transient ones.",
            "",
            "| candidates | `True` compute (s) | jackknife compute (s) | ratio |",
            "|---|---:|---:|---:|",
        ]
        for protocol in ("independent", "shared captions"):
            c = cost[protocol]
            lines.append(
                f"| {protocol} | {c['true_s']:.2f} | {c['jackknife_s']:.2f} | {c['jackknife_s'] / c['true_s']:.1f}x |"
            )
        lines += [
            "",
            "| rows per `accumulate` call | plain update (rows/s) | grouped update (rows/s) | ratio |",
            "|---:|---:|---:|---:|",
        ]
        for batch in (256, 2560):
            u = cost[f"update_{batch}"]
            lines.append(
                f"| {batch} | {u['plain_rows_per_s']:,.0f} | {u['grouped_rows_per_s']:,.0f}"
                f" | {u['grouped_rows_per_s'] / u['plain_rows_per_s']:.2f} |"
            )
        lines += [
            "",
            "Update: steady-state rows per second of `accumulate_batch_` (plain) and of `row_groups` +",
            "`accumulate_groups_` (grouped) for 20,000 rows in calls of the given size. A grouped call hashes the",
            "rows, sorts them by group and runs K updates of about B/K rows each. The metric also keeps the full",
            "state, so its update does both.",
        ]
    return "\n".join(lines)


def jackknife_plot(parts: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(12, 8.5))
    styles = {"independent": "-", "shared captions": "--", "shared captions, weaker generator": ":"}
    ax = axes[0, 0]
    t6 = [r for r in parts.get("heavy-t6", []) if r["dim"] == 16]
    for protocol, style in styles.items():
        rows = [r for r in t6 if r["protocol"] == protocol and "weaker" not in protocol]
        if not rows:
            continue
        ns = [r["n"] for r in rows]
        for key, colour, label in (
            ("paper", "tab:red", "paper's"),
            ("gauss", "tab:orange", "True"),
            ("jack", "tab:blue", "jackknife"),
        ):
            ax.errorbar(
                ns,
                [100 * r[key]["error"] for r in rows],
                [200 * r[key]["error_sem"] for r in rows],
                fmt="o" + style,
                ms=3,
                color=colour,
                label=f"{label} ({protocol})",
            )
    ax.axhspan(-2, 2, color="tab:green", alpha=0.12, label="±2%")
    ax.set_xscale("log")
    ax.set_ylim(-32, 6)
    ax.set_xlabel("N = M")
    ax.set_ylabel("error of the mean (%)")
    ax.set_title("t₆ pairs, Dx = Dy = 16, candidates of the reference's law")
    ax.legend(fontsize=6, ncol=2)

    ax = axes[0, 1]
    colours = {"gauss": "k", "t8": "tab:green", "t6": "tab:blue", "t5": "tab:purple"}
    for model, colour in colours.items():
        rows = [r for r in parts.get(f"heavy-{model}", []) if r["protocol"] == "independent" and r["dim"] == 16]
        if not rows:
            continue
        ns = [r["n"] for r in rows]
        ax.errorbar(ns, [100 * r["jack"]["error"] for r in rows], [200 * r["jack"]["error_sem"] for r in rows],
                    fmt="o-", ms=3, color=colour, label=f"jackknife, {model}")  # fmt: skip
        ax.plot(
            ns, [100 * r["gauss"]["error"] for r in rows], "s--", ms=3, color=colour, alpha=0.6, label=f"True, {model}"
        )
    ax.axhspan(-2, 2, color="tab:green", alpha=0.12)
    ax.axhline(0, color="k", lw=0.5)
    ax.set_xscale("log")
    ax.set_ylim(-11, 3)
    ax.set_xlabel("N = M")
    ax.set_ylabel("error of the mean (%)")
    ax.set_title("Independent candidates, D = 16 + 16, by tail weight")
    ax.legend(fontsize=7, ncol=2)

    ax = axes[1, 0]
    for model, colour in (("gauss", "k"), ("t6", "tab:blue"), ("t5", "tab:purple")):
        rows = [r for r in parts.get(f"heavy-{model}", []) if r["protocol"] == "independent" and r["dim"] == 16]
        if not rows:
            continue
        ns = [r["n"] for r in rows]
        ax.plot(ns, [100 * r["jack_coverage"] for r in rows], "o-", color=colour, label=f"jackknife, {model}")
        ax.plot(
            ns,
            [100 * r["gauss_coverage"] for r in rows],
            "s--",
            color=colour,
            alpha=0.6,
            label=f"True (Gaussian SE), {model}",
        )
    ax.axhspan(90, 99, color="tab:green", alpha=0.12, label="90–99%")
    ax.axhline(95, color="k", lw=0.5)
    ax.set_xscale("log")
    ax.set_xlabel("N = M")
    ax.set_ylabel("coverage of the 95% interval (%)")
    ax.set_title("Interval coverage (independent candidates)")
    ax.legend(fontsize=7)

    ax = axes[1, 1]
    clip = parts.get("clip", [])
    if clip:
        ns = [r["n"] for r in clip]
        for key, colour, label in (
            ("paper", "tab:red", "paper's"),
            ("gauss", "tab:orange", "True"),
            ("jack", "tab:blue", "jackknife"),
        ):
            sems = [2 * r[key + "_sem"] if r[key + "_sem"] == r[key + "_sem"] else 0.0 for r in clip]
            ax.errorbar(ns, [r[key] for r in clip], sems, fmt="o-", color=colour, label=label)
        ax.set_xscale("log")
        ax.set_xlabel("N = M")
        ax.set_ylabel("MID")
        ax.set_title("CLIP-like non-Gaussian features, D = 512 (truth unknown)")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"wrote {path}")


JACKKNIFE_PARTS = ("heavy-gauss", "heavy-t8", "heavy-t6", "heavy-t5", "heavy-t6-d64", "groups", "clip", "cost")


def run_part(part: str, quick: bool) -> object:
    reps_at = {n: 3 for n in HEAVY_SIZES} if quick else HEAVY_REPS
    if part.startswith("heavy-"):
        name = part.split("-")[1]
        if part == "heavy-t6-d64":
            sizes = [300, 1000, 3000, 10000]
            return heavy_sweep("t6", 64, sizes, {n: 3 if quick else 150 for n in sizes}, ("independent",))
        return heavy_sweep(name, 16, HEAVY_SIZES, reps_at, PROTOCOLS)
    if part == "groups":
        return groups_sweep([300, 1000], 3 if quick else 300)
    if part == "clip":
        sizes = CLIP_SIZES[:2] if quick else CLIP_SIZES
        return clip_sweep(sizes, {n: 1 for n in sizes} if quick else CLIP_REPS)
    if part == "cost":
        return cost_probe(dim=64 if quick else 768, n=3000 if quick else 20000, repeats=1 if quick else 3)
    raise ValueError(f"unknown part {part!r}; choose from {', '.join(JACKKNIFE_PARTS)}")


def jackknife_main(argv: list[str]) -> None:
    """``bias_study.py jackknife [--parts a,b] [--cache DIR] [--quick]``: the jackknife study (issue 15).

    Each part (heavy-gauss, heavy-t8, heavy-t6, heavy-t5, heavy-t6-d64, groups, clip, cost; 3-10 minutes each on one
    core, ``cost`` on two) is saved to ``DIR/<part>.json``, so parts can run in separate processes; the figure and
    the ``jackknife`` block of RESULTS.md are written from whatever parts the cache holds once every part is there
    (or from this run's parts without ``--cache``).
    """
    parser = argparse.ArgumentParser(prog="bias_study.py jackknife", description=jackknife_main.__doc__.splitlines()[0])
    parser.add_argument("--parts", default=",".join(JACKKNIFE_PARTS))
    parser.add_argument("--cache", type=Path, default=None, help="folder for per-part JSON results")
    parser.add_argument("--quick", action="store_true", help="few repetitions, for a smoke run (no files written)")
    parser.add_argument("--results", type=Path, default=HERE / "RESULTS.md")
    parser.add_argument("--figure", type=Path, default=HERE / "jackknife.png")
    parser.add_argument("--markdown", type=Path, default=None, help="also write the block to this file")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    parts: dict = {}
    for part in [p for p in args.parts.split(",") if p]:
        start = time.perf_counter()
        parts[part] = run_part(part, args.quick)
        print(f"part {part}: {time.perf_counter() - start:.0f} s", flush=True)
        if args.cache is not None and not args.quick:
            args.cache.mkdir(parents=True, exist_ok=True)
            (args.cache / f"{part}.json").write_text(json.dumps(parts[part]))
    if args.quick:
        print(jackknife_markdown(parts))
        return
    if args.cache is not None:
        for part in JACKKNIFE_PARTS:
            cached = args.cache / f"{part}.json"
            if cached.exists():
                parts[part] = json.loads(cached.read_text())
        missing = [p for p in JACKKNIFE_PARTS if p not in parts]
        if missing:
            print(f"cache lacks {', '.join(missing)}: no report written yet")
            return
    text = jackknife_markdown(parts)
    jackknife_plot(parts, args.figure)
    write_block(text, args.results, JK_BEGIN, JK_END)
    if args.markdown is not None:
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        args.markdown.write_text(text + "\n")
        print(f"wrote {args.markdown}")


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "jackknife":
        jackknife_main(sys.argv[2:])
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="few repetitions, for a smoke run (no files written)")
    args = parser.parse_args()
    torch.set_num_threads(2)
    start = time.perf_counter()
    sizes = [500, 1000, 2000, 5000, 20000]
    reps_at = {500: 400, 1000: 200, 2000: 100, 5000: 40, 20000: 12}
    clip_reps, cov_reps, cov_n = 2, 250, 5000
    if args.quick:
        reps_at = {n: 3 for n in sizes}
        clip_reps, cov_reps = 1, 5
    gauss = gaussian_sweep(sizes, reps_at)
    clip = clip_like_sweep([5000, 10000, 20000, 40000], clip_reps)
    cov = coverage(cov_n, cov_reps)
    seconds = time.perf_counter() - start
    if args.quick:
        return
    plot(gauss, clip, HERE / "bias.png")
    write_block(markdown(gauss, clip, cov, cov_n, seconds), HERE / "RESULTS.md")


if __name__ == "__main__":
    main()
