"""The Fréchet distance's drift over N: plug-in, a 1/N line extrapolation (FID-infinity) and the jackknife.

Two kinds of features, each as a real and a generated distribution whose population Fréchet distance is known:

- **Gaussian**: ``N(0, S_r)`` and ``N(delta, S_g)``, with ``S_r`` and ``S_g`` sharing a random rotation,
  eigenvalues log-spaced from 1 to 0.01 for ``S_r`` and those times ``exp(0.3 z)`` for ``S_g``, and a small shift
  ``delta``: the population FD is the formula on these parameters;
- **unit-sphere t**: rows ``normalize(m + 0.15 A t)`` with ``t`` multivariate t with 5 degrees of freedom (heavy
  tails), projected to the unit sphere as CLIP embeddings are; the generated rows have a shifted ``m`` and perturbed
  eigenvalues. Its population FD (the FD of the two distributions' means and covariances) is estimated once, by
  streaming moments, from a very large sample (2,000,000 rows per set; ``--quick`` 500,000);
- **Gaussian, paired by caption**: the Gaussian sets' marginals (so the same population FD), but each real image and
  the image generated from its caption share a caption term ``y`` (correlation 0.6 in every direction), as in
  text-to-image evaluation on the captions of the real images. The captions' features ``y`` are passed as ``texts``.

For every ``N`` (both sets), over repeated draws, the script reports the mean relative error against the
population value of:

- the **plug-in** FD of all ``N + N`` rows (what pytorch-fid, clean-fid and torchmetrics report);
- the **1/N extrapolation** in the manner of FID-infinity (Chong & Forsyth, CVPR 2020): the plug-in FD of 15
  nested random subsets of sizes evenly spaced from ``N / 10`` to ``N``, a least-squares line in ``1 / n``, and its
  value at ``1 / n = 0``;
- **FrechetDistance(bias_correction="jackknife")** with its default 10 groups, the images grouped by their own
  features (``jackknife_key="image"``) and, for the paired sets, by their captions (``jackknife_key="text"``), and
  how often the 95% interval of the one that fits the sets (caption groups for paired sets) holds the population
  value.

The feature size is D = 64 (``--dim``; 128 is about twice as slow), to keep the run within a few minutes on one
thread; the plug-in bias grows with D, and the jackknife's target is the same at any D. It prints the tables and the
verdicts (the target: the jackknife that fits the sets within 2% of the population FD at every N from 2,000 to
50,000) and writes
``benchmarks/frechet_bias.png``; ``--results FILE`` also writes the tables into that markdown file's
``frechet_bias`` block.

    python benchmarks/frechet_bias.py            # about 2 minutes on one thread
    python benchmarks/frechet_bias.py --quick    # half the draws, a smaller population sample
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from pathlib import Path
from typing import Any, Optional

import common
import numpy as np
import torch

from mid_metric import FrechetDistance, moments
from mid_metric.functional.frechet import frechet_distance_from_moments
from mid_metric.functional.frechet_moments import frechet_distance_from_packed

F64 = torch.float64
SIZES = (2_000, 5_000, 10_000, 20_000, 50_000)
TARGET = 0.02  # the jackknife's largest mean relative error at any N
SUBSETS = 15  # FID-infinity's number of subset sizes
FIGURE = common.HERE / "frechet_bias.png"


# ------------------------------------------------------------------------------------------------ features
class GaussianPair:
    """Real ``N(0, S_r)`` and generated ``N(delta, S_g)`` features with a known population FD."""

    name = "Gaussian"
    paired = False

    def __init__(self, dim: int, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        rotation = torch.linalg.qr(torch.randn(dim, dim, dtype=F64, generator=g))[0]
        eigenvalues = torch.logspace(0, -2, dim, dtype=F64)
        generated_eigenvalues = eigenvalues * torch.exp(0.3 * torch.randn(dim, dtype=F64, generator=g))
        self.factors = (rotation * eigenvalues.sqrt(), rotation * generated_eigenvalues.sqrt())
        self.means = (torch.zeros(dim, dtype=F64), 0.05 * torch.randn(dim, dtype=F64, generator=g))

    def population(self, rows: int) -> float:
        """The Fréchet distance of the two Gaussians (``rows`` is not used: it is known)."""
        (a_r, a_g), (m_r, m_g) = self.factors, self.means
        return float(frechet_distance_from_moments(m_r, a_r @ a_r.T, m_g, a_g @ a_g.T))

    def sample(self, n: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor]]:
        """``n`` real and ``n`` generated float64 rows (and no captions: the sets are independent)."""
        real, generated = (
            mean + torch.randn(n, mean.shape[0], dtype=F64, generator=g) @ factor.T
            for mean, factor in zip(self.means, self.factors)
        )
        return real, generated, None


class PairedGaussianPair(GaussianPair):
    """The Gaussian sets' marginals, each pair sharing a caption term: ``real = sqrt(c) A_r y + sqrt(1 - c) A_r e``."""

    name = "Gaussian, paired by caption"
    paired = True
    shared = 0.6  # c: the correlation of a real image and its generated image in every direction

    def sample(self, n: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor]]:
        """``n`` pairs of real and generated rows, and the caption features ``y`` they share."""
        dim = self.means[0].shape[0]
        captions = torch.randn(n, dim, dtype=F64, generator=g)
        real, generated = (
            mean
            + (
                math.sqrt(self.shared) * captions
                + math.sqrt(1 - self.shared) * torch.randn(n, dim, dtype=F64, generator=g)
            )
            @ factor.T
            for mean, factor in zip(self.means, self.factors)
        )
        return real, generated, captions


class SphereTPair(GaussianPair):
    """Rows ``normalize(m + 0.15 A t)``, ``t`` multivariate t with 5 dof: heavy-tailed, on the unit sphere."""

    name = "unit-sphere t (5 dof)"
    dof = 5

    def __init__(self, dim: int, seed: int = 0) -> None:
        super().__init__(dim, seed)
        g = torch.Generator().manual_seed(seed + 1)
        direction = torch.randn(dim, dtype=F64, generator=g)
        direction /= direction.norm()
        shift = 0.05 * torch.randn(dim, dtype=F64, generator=g) / math.sqrt(dim)
        self.means = (direction, direction + shift)
        self.factors = tuple(0.15 * factor for factor in self.factors)

    def population(self, rows: int) -> float:
        """The FD of the distributions' means and covariances, from ``rows`` rows per set by streaming moments."""
        chunk = min(rows, 100_000)
        g = torch.Generator().manual_seed(12345)
        states = [moments.empty_moments(self.means[0].shape[0]) for _ in range(2)]
        for _ in range(rows // chunk):
            for state, part in zip(states, self.sample(chunk, g)[:2]):
                moments.accumulate_(state, part)
                moments.recentre_(state)
        return float(frechet_distance_from_packed(*states))

    def sample(self, n: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor]]:
        """``n`` real and ``n`` generated float64 unit rows (independent sets)."""
        sets = []
        for mean, factor in zip(self.means, self.factors):
            gaussian = torch.randn(n, mean.shape[0], dtype=F64, generator=g)
            chi2 = torch.randn(n, self.dof, dtype=F64, generator=g).square().sum(dim=1, keepdim=True)
            sets.append(torch.nn.functional.normalize(mean + (gaussian / (chi2 / self.dof).sqrt()) @ factor.T, dim=1))
        return sets[0], sets[1], None


# --------------------------------------------------------------------------------------------- estimators
def extrapolated(real: torch.Tensor, generated: torch.Tensor) -> float:
    """FID-infinity's estimate: the plug-in FD of nested subsets from N/10 to N, a line in 1/n, its intercept."""
    n, dim = real.shape
    sizes = [round(n / 10 + j * (n - n / 10) / (SUBSETS - 1)) for j in range(SUBSETS)]
    states = [moments.empty_moments(dim) for _ in range(2)]
    values, previous = [], 0
    for size in sizes:
        for state, rows in zip(states, (real, generated)):
            moments.accumulate_(state, rows[previous:size])
        values.append(float(frechet_distance_from_packed(*states)))
        previous = size
    slope, intercept = np.polyfit(1.0 / np.array(sizes, dtype=float), np.array(values), 1)
    return float(intercept)


def jackknifed(real: torch.Tensor, generated: torch.Tensor, captions: Optional[torch.Tensor], key: str) -> Any:
    """FrechetDistance(bias_correction="jackknife", jackknife_key=key) fed in batches of 1,000: its 95% result."""
    metric = FrechetDistance(feature=real.shape[1], bias_correction="jackknife", jackknife_key=key)
    for start in range(0, real.shape[0], 1000):
        texts = None if captions is None else captions[start : start + 1000]
        metric.update(real[start : start + 1000], texts, real=True)
        metric.update(generated[start : start + 1000], texts, real=False)
    return metric.compute_with_ci(0.95)


def one_draw(pair: GaussianPair, n: int, g: torch.Generator) -> dict[str, float]:
    """Every estimate on one draw of ``n + n`` rows, and the 95% interval of the jackknife that fits the sets."""
    real, generated, captions = pair.sample(n, g)
    by_image = jackknifed(real, generated, captions, "image")
    draw = {
        "plug_in": float(by_image.plug_in),
        "extrapolated": extrapolated(real, generated),
        "jackknife": float(by_image.value),
    }
    fitting = by_image
    if captions is not None:
        fitting = jackknifed(real, generated, captions, "text")
        draw["jackknife_text"] = float(fitting.value)
    draw["low"], draw["high"] = float(fitting.ci_low), float(fitting.ci_high)
    return draw


def draws_for(n: int, quick: bool, tiny: bool) -> int:
    """Draws per N: enough that the mean's standard error is a fraction of the 2% target at every N."""
    if tiny:
        return 2
    return max(4 if quick else 8, round((100_000 if quick else 200_000) / n))


# ----------------------------------------------------------------------------------------------- the study
ESTIMATORS = {
    "plug_in": "plug-in",
    "extrapolated": "1/N extrapolation",
    "jackknife": "jackknife, image groups",
    "jackknife_text": "jackknife, caption groups",
}


def estimators(pair: GaussianPair) -> dict[str, str]:
    """The estimators measured on ``pair``'s sets (caption groups need captions), and the one that fits them."""
    return {key: label for key, label in ESTIMATORS.items() if pair.paired or key != "jackknife_text"}


def study(pair: GaussianPair, sizes: tuple[int, ...], quick: bool, tiny: bool) -> tuple[float, list[dict]]:
    """The population FD, and per N the mean relative error (and its standard error) of each estimator."""
    started = time.perf_counter()
    population = pair.population(100_000 if tiny else 500_000 if quick else 2_000_000)
    print(f"{pair.name}: population FD {population:.6g} ({time.perf_counter() - started:.0f} s)", flush=True)
    rows = []
    for n in sizes:
        g = torch.Generator().manual_seed(n)
        draws = [one_draw(pair, n, g) for _ in range(draws_for(n, quick, tiny))]
        row: dict = {"n": n, "draws": len(draws)}
        for key in estimators(pair):
            errors = [draw[key] / population - 1 for draw in draws]
            row[key] = statistics.fmean(errors)
            row[key + "_se"] = statistics.stdev(errors) / math.sqrt(len(errors))
            row[key + "_sd"] = statistics.stdev(errors)
        row["coverage"] = statistics.fmean(draw["low"] <= population <= draw["high"] for draw in draws)
        rows.append(row)
        print(f"  N = {n:>6}: {len(draws)} draws ({time.perf_counter() - started:.0f} s)", flush=True)
    return population, rows


def percent(value: float, error: Optional[float] = None) -> str:
    return f"{100 * value:+.2f}%" + ("" if error is None else f" ± {100 * error:.2f}")


def report_tables(report: common.Report, pair: GaussianPair, population: float, rows: list[dict], dim: int) -> None:
    labels = estimators(pair)
    fitting = "jackknife_text" if pair.paired else "jackknife"
    header = ["N (each set)", "draws", *labels.values(), "sd of one run", "95% CI hits"]
    table = [
        [
            f"{row['n']:,}",
            str(row["draws"]),
            *(percent(row[key], row[key + "_se"]) for key in labels),
            f"{100 * row['extrapolated_sd']:.1f}% / {100 * row[fitting + '_sd']:.1f}%",
            f"{100 * row['coverage']:.0f}%",
        ]
        for row in rows
    ]
    note = (
        f"Mean relative error against the population FD ({population:.5g}) ± its standard error over the draws;"
        f" 'sd of one run' is the spread of one run's value (1/N extrapolation / {labels[fitting]}); '95% CI hits'"
        f" how often the 95% interval of the {labels[fitting]} held the population value."
    )
    report.table(f"{pair.name} features, D = {dim}", header, table, note)
    worst = max(abs(row[fitting]) for row in rows)
    drift = max(row["plug_in"] for row in rows) - min(row["plug_in"] for row in rows)
    measured = f"largest |mean error| {100 * worst:.2f}% (plug-in drifts by {100 * drift:.1f} points over N)"
    report.verdict(f"{pair.name}: {labels[fitting]} within 2% at every N", measured, worst <= TARGET)


def plot(results: list[tuple[GaussianPair, float, list[dict]]], dim: int, path: Path) -> None:
    plt = common.pyplot()
    figure, axes = plt.subplots(1, len(results), figsize=(5.6 * len(results), 4.4), squeeze=False)
    # (colour, marker, a small shift along N so that overlapping error bars stay apart)
    styles = {
        "plug_in": ("tab:red", "o", 1.0),
        "extrapolated": ("tab:orange", "s", 0.95),
        "jackknife": ("tab:blue", "D", 1.05),
        "jackknife_text": ("tab:purple", "^", 1.1),
    }
    for ax, (pair, population, rows) in zip(axes[0], results):
        sizes = [row["n"] for row in rows]
        ax.axhspan(-100 * TARGET, 100 * TARGET, color="tab:green", alpha=0.12, label="±2% target")
        ax.axhline(0.0, color="black", linewidth=0.8)
        for key, label in estimators(pair).items():
            color, marker, shift = styles[key]
            means = [100 * row[key] for row in rows]
            errors = [200 * row[key + "_se"] for row in rows]
            at = [shift * size for size in sizes]
            ax.errorbar(at, means, yerr=errors, color=color, marker=marker, capsize=3, label=f"{label} (± 2 se)")
        title = f"{pair.name}, D = {dim}\npopulation FD {population:.4g}"
        common.label_axes(ax, "N (images in each set)", "mean relative error of FD (%)", title, legend_size=7)
        ax.set_xticks(sizes, [f"{size:,}" for size in sizes])
        ax.minorticks_off()
    common.save_figure(figure, path)


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    common.add_size_flags(parser, "half the draws and a smaller population sample", "tiny sizes (smoke tests)")
    parser.add_argument("--dim", type=int, default=64, help="feature size D (default 64)")
    parser.add_argument("--figure", type=Path, default=FIGURE, help="where to write the figure")
    parser.add_argument("--results", type=Path, default=None, help="markdown file whose frechet_bias block to write")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    sizes = (300, 600) if args.tiny else SIZES
    report, results, started = common.Report(), [], time.perf_counter()
    for pair in (GaussianPair(args.dim), SphereTPair(args.dim), PairedGaussianPair(args.dim)):
        population, rows = study(pair, sizes, args.quick, args.tiny)
        report_tables(report, pair, population, rows, args.dim)
        results.append((pair, population, rows))
    plot(results, args.dim, args.figure)
    print(f"total {time.perf_counter() - started:.0f} s on {torch.get_num_threads()} thread", flush=True)
    if args.results is not None:
        verdicts = common.markdown_table(["target", "measured", "verdict"], [list(v) for v in report.verdicts])
        body = "\n\n".join(["## Fréchet distance over N (benchmarks/frechet_bias.py)", *report.sections])
        common.write_block(args.results, body + "\n\n" + "\n".join(verdicts), "frechet_bias")
    return 0 if all(verdict == "PASS" for _, _, verdict in report.verdicts) or args.tiny else 1


if __name__ == "__main__":
    raise SystemExit(main())
