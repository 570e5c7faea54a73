r"""The ``mid-metric demo``: MID on a Gaussian image/text model whose answer is known in closed form.

It needs no network and no model weights. Image features ``x`` and text features ``y`` live in ``R^d`` and are
standard normal, and coordinate ``k`` of ``y`` is correlated with coordinate ``k`` of ``x`` with correlation
``rho_k`` (different coordinates are independent). The reference pairs come from this model, so their mutual
information is

.. math:: I(X; Y) = -\tfrac12 \sum_k \log(1 - \rho_k^2).

A candidate set is drawn from the same model, then the captions of a fraction ``f`` of its pairs are shuffled among
those pairs, so that they no longer match their images. Its population cross-correlation is ``(1 - f) rho_k``
while the marginals stay standard normal. Scored under the reference Gaussian, such a set has

.. math:: \mathrm{MID}(f) = I(X; Y) - f \sum_k \frac{\rho_k^2}{1 - \rho_k^2},

because ``E[d^2_x] = E[d^2_y] = d`` and ``E[d^2_z] = \sum_k 2 (1 - \rho_k \rho'_k) / (1 - \rho_k^2)`` with
``rho'_k = (1 - f) rho_k``. In particular a matched pair has expected PMI ``I`` and a shuffled pair
``I - sum_k rho_k^2 / (1 - rho_k^2)``. The demo estimates MID with :class:`~mid_metric.MutualInformationDivergence`
and prints it next to these values.
"""

from __future__ import annotations

import argparse
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence, TextIO

import torch
from torch import Tensor

from mid_metric.cli.parser import CommandError
from mid_metric.cli.session import check_output
from mid_metric.metrics import MutualInformationDivergence

__all__ = [
    "DemoRow",
    "DemoReport",
    "analytic_mutual_information",
    "analytic_mid",
    "sample_pairs",
    "shuffle_captions",
    "run_demo",
    "format_report",
    "plot_report",
]

#: Fractions of shuffled captions in the demo's candidate sets, with their labels.
CANDIDATE_SETS: tuple[tuple[str, float], ...] = (
    ("aligned", 0.0),
    ("mostly aligned", 0.25),
    ("half shuffled", 0.5),
    ("mostly shuffled", 0.75),
    ("shuffled", 1.0),
)


def analytic_mutual_information(rho: Tensor) -> float:
    """Mutual information of the Gaussian model with per-coordinate correlations ``rho``, in nats.

    Example:
        >>> round(analytic_mutual_information(torch.tensor([0.6])), 6)  # -0.5 * log(1 - 0.36)
        0.223144
    """
    return float(-0.5 * torch.log1p(-rho.double().square()).sum())


def analytic_mid(rho: Tensor, shuffled_fraction: float) -> float:
    """Population MID of a candidate set whose captions are shuffled in a fraction ``shuffled_fraction`` of pairs.

    Args:
        rho: Per-coordinate correlations of the reference model, each in ``(-1, 1)``.
        shuffled_fraction: Fraction ``f`` of candidate pairs whose caption belongs to another pair.

    Returns:
        ``I - f * sum(rho^2 / (1 - rho^2))``.

    Example:
        >>> rho = torch.tensor([0.6])
        >>> analytic_mid(rho, 0.0) == analytic_mutual_information(rho)
        True
        >>> round(analytic_mid(rho, 1.0), 4)  # 0.2231 - 0.36 / 0.64
        -0.3394
    """
    squared = rho.double().square()
    return analytic_mutual_information(rho) - shuffled_fraction * float((squared / (1.0 - squared)).sum())


def sample_pairs(num: int, rho: Tensor, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """Draw ``num`` (image, text) feature pairs from the Gaussian model.

    ``x`` is standard normal and ``y = rho * x + sqrt(1 - rho^2) * noise``, so ``y`` is standard normal with
    ``corr(x_k, y_k) = rho_k``.

    Example:
        >>> x, y = sample_pairs(4, torch.tensor([0.5, 0.5]), torch.Generator().manual_seed(0))
        >>> x.shape, y.shape, x.dtype
        (torch.Size([4, 2]), torch.Size([4, 2]), torch.float64)
    """
    rho = rho.double()
    images = torch.randn(num, rho.numel(), generator=generator, dtype=torch.float64)
    noise = torch.randn(num, rho.numel(), generator=generator, dtype=torch.float64)
    return images, rho * images + torch.sqrt(1.0 - rho.square()) * noise


def shuffle_captions(texts: Tensor, shuffled_fraction: float) -> tuple[Tensor, Tensor]:
    """Give the first ``round(f * n)`` pairs each the caption of its neighbour (a cyclic shift among them).

    Every shifted pair gets the caption of another, independent pair (a derangement), so its image and caption
    are independent.

    Returns:
        ``(texts, is_shuffled)``: the new captions and a boolean mask of the shuffled pairs.

    Example:
        >>> texts, mask = shuffle_captions(torch.arange(6.0).unsqueeze(1), 0.5)
        >>> texts.squeeze(1).tolist(), mask.tolist()
        ([2.0, 0.0, 1.0, 3.0, 4.0, 5.0], [True, True, True, False, False, False])
    """
    count = int(round(shuffled_fraction * texts.shape[0]))
    mask = torch.zeros(texts.shape[0], dtype=torch.bool)
    if count < 2:  # one pair cannot be given another pair's caption
        return texts, mask
    texts = texts.clone()
    texts[:count] = texts[:count].roll(1, dims=0)
    mask[:count] = True
    return texts, mask


@dataclass(frozen=True)
class DemoRow:
    """One candidate set of the demo with its estimated and analytic MID.

    ``standard_error`` is the standard deviation of the set's per-pair PMIs over the square root of its size: the
    sampling error of the candidates (the reference's own sampling error is not included).
    """

    label: str
    shuffled_fraction: float
    mid: float
    analytic: float
    standard_error: float


@dataclass(frozen=True)
class DemoReport:
    """Everything the demo measured.

    Attributes:
        rho: Per-coordinate correlations of the model.
        num_reference: Number of reference pairs.
        num_candidates: Number of pairs in each candidate set.
        mutual_information: MI estimated from the reference pairs.
        analytic_mutual_information: True MI of the model.
        rows: One :class:`DemoRow` per candidate set.
        per_pair_set: Label of the partly shuffled set whose per-pair PMIs are summarised (``""`` if none).
        matched_pmi: Mean PMI of the matched pairs of that set.
        shuffled_pmi: Mean PMI of the shuffled pairs of that set.
        analytic_shuffled_pmi: Expected PMI of a shuffled pair, ``analytic_mid(rho, 1)``.
    """

    rho: Tensor
    num_reference: int
    num_candidates: int
    mutual_information: float
    analytic_mutual_information: float
    rows: tuple[DemoRow, ...]
    per_pair_set: str
    matched_pmi: float
    shuffled_pmi: float
    analytic_shuffled_pmi: float


def run_demo(
    seed: int = 0,
    dim: int = 8,
    rho: float = 0.6,
    num_reference: int = 60_000,
    num_candidates: int = 30_000,
    sets: Sequence[tuple[str, float]] = CANDIDATE_SETS,
) -> DemoReport:
    """Fit a reference from the Gaussian model and score candidate sets with more and more shuffled captions.

    Args:
        seed: Seed of the random generator; the demo is deterministic for a given seed.
        dim: Feature dimension of each modality.
        rho: Correlation of each image coordinate with the same text coordinate, in ``(-1, 1)``.
        num_reference: Number of reference pairs (must exceed ``2 * dim``).
        num_candidates: Number of pairs in each candidate set.
        sets: ``(label, shuffled fraction)`` of each candidate set.

    Returns:
        A :class:`DemoReport`.

    Raises:
        ValueError: If ``rho`` is not in ``(-1, 1)`` or ``dim`` is not positive.

    Example:
        >>> report = run_demo(num_reference=2_000, num_candidates=1_000, dim=2)
        >>> [row.label for row in report.rows][0], report.rows[0].analytic == report.analytic_mutual_information
        ('aligned', True)
        >>> abs(report.rows[0].mid - report.rows[0].analytic) < 0.1
        True
    """
    if not -1.0 < rho < 1.0:
        raise ValueError(f"`rho` must lie in (-1, 1), got {rho}.")
    if dim < 1:
        raise ValueError(f"`dim` must be positive, got {dim}.")
    generator = torch.Generator().manual_seed(seed)
    rhos = torch.full((dim,), float(rho), dtype=torch.float64)
    metric = MutualInformationDivergence(feature=dim, reset_real_features=False)
    metric.update(*sample_pairs(num_reference, rhos, generator), real=True)

    rows = []
    matched_pmi = shuffled_pmi = float("nan")
    per_pair_set = ""
    # The per-pair PMIs are shown for the partly shuffled set closest to half shuffled.
    partial = [f for _, f in sets if 0.0 < f < 1.0]
    per_pair_fraction = min(partial, key=lambda f: abs(f - 0.5)) if partial else None
    for label, fraction in sets:
        images, texts = sample_pairs(num_candidates, rhos, generator)
        texts, is_shuffled = shuffle_captions(texts, fraction)
        metric.reset()  # keeps the reference statistics (reset_real_features=False)
        metric.update(images, texts, real=False)
        result = metric.compute_result()
        pmi = metric.pmi(images, texts)
        standard_error = float(pmi.std() / math.sqrt(pmi.numel()))
        rows.append(DemoRow(label, fraction, float(result.mid), analytic_mid(rhos, fraction), standard_error))
        if fraction == per_pair_fraction and is_shuffled.any():
            matched_pmi = float(pmi[~is_shuffled].mean())
            shuffled_pmi = float(pmi[is_shuffled].mean())
            per_pair_set = label
    return DemoReport(
        rho=rhos,
        num_reference=num_reference,
        num_candidates=num_candidates,
        mutual_information=float(metric.compute_result().mutual_information),
        analytic_mutual_information=analytic_mutual_information(rhos),
        rows=tuple(rows),
        per_pair_set=per_pair_set,
        matched_pmi=matched_pmi,
        shuffled_pmi=shuffled_pmi,
        analytic_shuffled_pmi=analytic_mid(rhos, 1.0),
    )


def format_report(report: DemoReport) -> str:
    """Render a :class:`DemoReport` as the text that ``mid-metric demo`` prints.

    Example:
        >>> text = format_report(run_demo(num_reference=500, num_candidates=200, dim=2))
        >>> "analytic" in text and "shuffled" in text
        True
    """
    dim = report.rho.numel()
    rho = float(report.rho[0])
    true_mi = report.analytic_mutual_information
    lines = [
        "MID demo: a Gaussian image/text model whose mutual information is known in closed form",
        "(no network and no model weights; features are synthetic, as if from an image and a text encoder).",
        "",
        f"Reference: {report.num_reference:,} (image, caption) feature pairs x, y in R^{dim}; coordinate k of the",
        f"caption feature is correlated with coordinate k of the image feature (rho = {rho:g}).",
        f"  true mutual information  I(X;Y) = -{dim}/2 * log(1 - {rho:g}^2) = {true_mi:.4f} nats",
        f"  estimated from the pairs          = {report.mutual_information:.4f} nats",
        "",
        f"Candidate sets: {report.num_candidates:,} new pairs each, with the captions of a fraction of the pairs",
        "shuffled so that they describe other images. Analytic MID = I(X;Y) - f * sum(rho^2 / (1 - rho^2)).",
        "",
        f"  {'candidate set':<17}{'captions shuffled':>18}{'MID':>10}{'± s.e.':>8}{'analytic':>10}{'error':>9}",
    ]
    for row in report.rows:
        lines.append(
            f"  {row.label:<17}{row.shuffled_fraction:>17.0%} {row.mid:>10.4f}{row.standard_error:>8.4f}"
            f"{row.analytic:>10.4f}{row.mid - row.analytic:>+9.4f}"
        )
    lines += [
        "",
        "What MID measures: the mean pointwise mutual information (PMI) of the candidate pairs under the Gaussian",
        "fitted to the reference pairs. Higher is better. Candidates whose captions match their images as well as",
        f"the real pairs do score about I(X;Y) = {true_mi:.3f}; fully shuffled candidates score"
        f" {report.rows[-1].analytic:.3f}, far below.",
    ]
    if not math.isnan(report.matched_pmi):
        lines += [
            f"Per pair (mid-metric score --per-sample): in the {report.per_pair_set!r} set, matched pairs have mean"
            f" PMI {report.matched_pmi:.3f}",
            f"(expected {true_mi:.3f}) and shuffled pairs {report.shuffled_pmi:.3f}"
            f" (expected {report.analytic_shuffled_pmi:.3f}).",
        ]
    return "\n".join(lines)


def plot_format(path: Path) -> str:
    """The figure format of ``path``: its suffix in lower case (``png`` without one), checked with matplotlib.

    Raises:
        ImportError: If matplotlib is not installed.
        ValueError: If matplotlib cannot write that format.

    Example:
        >>> plot_format(Path("figure.PDF")), plot_format(Path("figure"))
        ('pdf', 'png')
    """
    from matplotlib.backend_bases import FigureCanvasBase

    suffix = Path(path).suffix.lstrip(".").lower() or "png"
    supported = FigureCanvasBase.get_supported_filetypes()
    if suffix not in supported:
        raise ValueError(
            f"Cannot draw {str(path)!r}: matplotlib writes no {suffix!r} files; use one of the suffixes"
            f" {', '.join('.' + name for name in sorted(supported))}."
        )
    return suffix


def plot_report(report: DemoReport, path: Path) -> None:
    """Draw estimated and analytic MID against the fraction of shuffled captions and save it to ``path``.

    The file is written atomically (:func:`mid_metric.io.atomic.atomic_output`: through a symbolic link, never over
    a folder, FIFO or device); its format follows the suffix (``.png``, ``.pdf``, ``.svg``, ...).

    Raises:
        ImportError: If matplotlib is not installed.
        ValueError: If the format is not one matplotlib writes, or the path cannot be written.
    """
    suffix = plot_format(path)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from mid_metric.io.atomic import atomic_output

    fractions = torch.linspace(0.0, 1.0, 101)
    fig, ax = plt.subplots(figsize=(6.4, 4.2), layout="constrained")
    ax.plot(
        fractions.tolist(),
        [analytic_mid(report.rho, float(f)) for f in fractions],
        color="tab:blue",
        label="analytic MID",
    )
    ax.errorbar(
        [row.shuffled_fraction for row in report.rows],
        [row.mid for row in report.rows],
        yerr=[2.0 * row.standard_error for row in report.rows],
        fmt="o",
        capsize=3,
        color="tab:orange",
        label=f"estimated MID ± 2 s.e. ({report.num_candidates:,} pairs per set)",
    )
    ax.axhline(report.analytic_mutual_information, color="gray", linestyle="--", label="true I(X;Y) of the reference")
    for row in report.rows:
        ax.annotate(row.label, (row.shuffled_fraction, row.mid), textcoords="offset points", xytext=(6, 6), fontsize=8)
    ax.set_xlabel("fraction of candidate pairs with a shuffled caption")
    ax.set_ylabel("MID (nats, higher is better)")
    ax.set_title(f"MID on a Gaussian model (d = {report.rho.numel()}, rho = {float(report.rho[0]):g})")
    ax.legend(loc="lower left")
    try:
        with atomic_output(path) as tmp:
            fig.savefig(tmp, format=suffix, dpi=120)
    finally:
        plt.close(fig)


def main(seed: int = 0, plot: Optional[Path] = None, stream: Optional[TextIO] = None) -> int:
    """Run the demo, print its table to ``stream`` (stdout by default) and optionally save the plot.

    Returns:
        The exit status, 0.
    """
    report = run_demo(seed=seed)
    out = sys.stdout if stream is None else stream
    print(format_report(report), file=out)
    if plot is not None:
        plot_report(report, plot)
        print(f"\nPlot written to {plot}", file=out)
    return 0


def run_demo_command(args: argparse.Namespace) -> int:
    """``mid-metric demo``: check ``--plot`` (matplotlib, its path, its format) first, then run :func:`main`."""
    plot = None
    if args.plot is not None:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            raise CommandError(
                "--plot needs matplotlib: pip install matplotlib (or, in the mid-metric source folder,"
                ' pip install ".[plot]").'
            ) from None
        check_output("--plot", args.plot)  # an empty path, a folder, a FIFO or device, a link loop, no folder
        plot = Path(args.plot)
        try:
            plot_format(plot)
        except ValueError as error:
            raise CommandError(f"--plot: {error}") from None
    return main(seed=args.seed, plot=plot)
