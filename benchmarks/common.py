"""Code the benchmark scripts share: timing, data, subprocesses, memory probes, markdown blocks, plots, flags.

Every script here runs as ``python benchmarks/<script>.py``, which puts this folder first on ``sys.path``, so they
import this module as ``common``. Nothing here is part of the package.

- **Timing**: :func:`timed` (seconds per call, CUDA synchronised), :func:`median_seconds`, and :func:`rotated` for
  taking turns (before/after, ours/baseline) so that both terms of a ratio see the same load.
- **Data**: :func:`common_direction` and :func:`near_direction` (CLIP-like unit rows around one direction),
  :func:`clip_like_features`, :class:`ClipLikeModel` (non-Gaussian CLIP-like pairs from latent concepts), and
  :class:`CorrelatedPairs` (Gaussian or multivariate-t pairs whose population MID is known).
- **Subprocesses and memory**: :func:`run_for_json` runs a probe and parses its JSON lines; :func:`peak_rss_growth`
  measures the peak resident set growth of a call, from :func:`status_kib` and :func:`reset_peak_rss`.
- **Reports**: :func:`markdown_table`, :func:`markdown_section`, :class:`Report` (tables and PASS/FAIL verdicts),
  :func:`verdict_word`, :func:`cpu_model`, :func:`utc_now`, :func:`relative_spread`, and :func:`write_block`, which
  rewrites one ``<!-- BEGIN name -->`` ... ``<!-- END name -->`` block of a results file and keeps the rest.
- **Figures**: :func:`pyplot` (matplotlib on the Agg backend), :func:`label_axes` and :func:`save_figure`.
- **Command lines**: :func:`add_size_flags` (``--quick``, ``--tiny``) and :func:`add_results_flag` (``--results``).
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import statistics
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence, TypeVar, Union

import torch

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "RESULTS.md"
Item = TypeVar("Item")


# ------------------------------------------------------------------------------------------------------ timing
def synchronize(device: Optional[torch.device]) -> None:
    """Wait for the device's queued work (CUDA), so that a timer reads the work done, not the work queued."""
    if device is not None and device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], device: Optional[torch.device] = None, calls: int = 1) -> float:
    """Seconds per call of ``fn`` over ``calls`` back-to-back calls."""
    synchronize(device)
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    synchronize(device)
    return (time.perf_counter() - start) / calls


def median_seconds(fn: Callable[[], object], repeats: int) -> float:
    """Median over ``repeats`` timings of one call of ``fn``."""
    return statistics.median(timed(fn) for _ in range(repeats))


def rotated(items: Sequence[Item], shift: int) -> list[Item]:
    """``items`` starting at ``shift`` (modulo its length): the order of turn ``shift`` when runs take turns."""
    shift %= len(items)
    return list(items[shift:]) + list(items[:shift])


# -------------------------------------------------------------------------------------------------------- data
def common_direction(dim: int, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """The direction CLIP-like rows share: ``randn(dim)`` from ``generator`` (a fresh one seeded 0 by default)."""
    return torch.randn(dim, generator=generator if generator is not None else torch.Generator().manual_seed(0))


def near_direction(direction: torch.Tensor, n: int, generator: torch.Generator, noise: float = 0.03) -> torch.Tensor:
    """``n`` CLIP-like float32 unit rows: ``direction / sqrt(D)`` plus ``noise`` times Gaussian noise, normalised."""
    dim = direction.shape[0]
    return torch.nn.functional.normalize(direction / dim**0.5 + noise * torch.randn(n, dim, generator=generator), dim=1)


def clip_like_features(n: int, dim: int, generator: torch.Generator, device: torch.device) -> torch.Tensor:
    """CLIP-like float32 features on ``device``: the common direction (seed 0) plus noise, L2-normalised."""
    return near_direction(common_direction(dim), n, generator).to(device)


class ClipLikeModel:
    """Clustered latent concepts pushed through nonlinear maps into L2-normalised image and text features.

    Non-Gaussian, with a mean norm of about 0.9 before normalising: the features of the bias and jackknife studies
    whose MID has no known population value.
    """

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
        """``n`` latent concepts: a random centre each, plus unit Gaussian noise."""
        which = torch.randint(self.centres.shape[0], (n,), generator=g)
        return self.centres[which] + torch.randn(n, self.latent, generator=g)

    def images(self, s: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        """Unit image features of the concepts ``s``."""
        raw = self.mean_x + torch.tanh(s) @ self.map_x + torch.randn(s.shape[0], self.dim, generator=g) @ self.noise_x
        return torch.nn.functional.normalize(raw, dim=1)

    def texts(self, s: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        """Unit caption features of the concepts ``s``."""
        raw = self.mean_y + (s + 0.3 * s.abs()) @ self.map_y
        raw = raw + torch.randn(s.shape[0], self.dim, generator=g) @ self.noise_y
        return torch.nn.functional.normalize(raw, dim=1)

    def text_to_image(self, n: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Images ``x`` and captions ``y`` of ``n`` concepts, and images ``x0`` a generator makes for those captions.

        The generator gets the concept slightly wrong (concept noise 0.5): the text-to-image protocol, whose
        candidate pairs are ``(x0, y)``.
        """
        s = self.concepts(n, g)
        x, y = self.images(s, g), self.texts(s, g)
        return x, y, self.images(s + 0.5 * torch.randn(s.shape, generator=g), g)


class CorrelatedPairs:
    """Image-caption pairs with a known population value of the MID functional: Gaussian or multivariate t.

    A row is ``(x, y) = s (u, v)`` with ``(u_k, v_k)`` standard Gaussian pairs of correlation ``rho_k`` (from
    ``rho_max`` down to ``rho_min``), independent across ``k``, and one scale ``s = sqrt(nu / chi2_nu)`` per row: an
    elliptical t with ``nu = dof`` degrees of freedom (``dof = None``: Gaussian, ``s = 1``). Its covariance is
    ``nu / (nu - 2)`` times the Gaussian one. The MID functional depends on the distributions only through their means
    and covariances and is invariant under a common scaling (MI is a log-determinant ratio, the traces are ratios), so
    for candidates ``(x0, y)`` with ``x0 = c rho y + sqrt(1 - c^2 rho^2) s e`` (the same row scale ``s``) it is
    ``sum_k -1/2 log(1 - rho_k^2) + 1/2 (1 - ((c rho_k - rho_k)^2 + 1 - c^2 rho_k^2) / (1 - rho_k^2))``, which is
    ``-1/2 sum log(1 - rho_k^2)`` (the MI ``I``; distance term 0) when ``c = 1``, i.e. when the candidates follow
    the reference's law. (For t it is the population value of the Gaussian-fit functional that MID estimates, not
    the true mutual information of the t pair.)
    """

    def __init__(self, dim: int = 16, dof: Optional[float] = 6.0, rho_max: float = 0.9, rho_min: float = 0.05) -> None:
        self.dim, self.dof = dim, dof
        self.rho = torch.linspace(rho_max, rho_min, dim, dtype=torch.float64)

    def truth(self, generator_scale: float = 1.0) -> float:
        """The population MID of candidates made by :meth:`images_for` with this ``generator_scale`` (``c``)."""
        cand_rho = generator_scale * self.rho
        residual = (cand_rho - self.rho) ** 2 + 1 - cand_rho**2
        return float((-0.5 * torch.log1p(-(self.rho**2)) + 0.5 * (1 - residual / (1 - self.rho**2))).sum())

    def sample(self, n: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``n`` float64 pairs ``(x, y)`` of the law, and their row scales ``s`` (ones for the Gaussian)."""
        scale = torch.ones(n, 1, dtype=torch.float64)
        if self.dof is not None:
            chi2 = 2.0 * torch._standard_gamma(torch.full((n, 1), self.dof / 2.0, dtype=torch.float64), generator=g)
            scale = (self.dof / chi2).sqrt()
        u = torch.randn(n, self.dim, dtype=torch.float64, generator=g)
        v = self.rho * u + torch.sqrt(1 - self.rho**2) * torch.randn(n, self.dim, dtype=torch.float64, generator=g)
        return scale * u, scale * v, scale

    def images_for(
        self, y: torch.Tensor, scale: torch.Tensor, g: torch.Generator, generator_scale: float = 1.0
    ) -> torch.Tensor:
        """Images generated for the captions ``y`` (row scales ``scale``) with correlation ``generator_scale rho``."""
        cand_rho = generator_scale * self.rho
        noise = torch.randn(y.shape, dtype=torch.float64, generator=g)
        return cand_rho * y + torch.sqrt(1 - cand_rho**2) * scale * noise


# ------------------------------------------------------------------------------------ subprocesses and memory
def run_for_json(command: list[str], label: str, **kwargs: Any) -> Optional[list[dict]]:
    """Run ``command``; return the JSON objects it printed one a line, or ``None`` (and say so) when it failed."""
    done = subprocess.run(command, capture_output=True, text=True, **kwargs)
    if done.returncode != 0:
        print(f"{label} failed: {done.stderr.strip()[-500:]}", flush=True)
        return None
    return [json.loads(line) for line in done.stdout.strip().splitlines() if line.startswith("{")]


def status_kib(field_name: str) -> int:
    """A field of ``/proc/self/status`` in KiB, such as ``VmRSS`` (resident set) or ``VmHWM`` (its peak)."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field_name + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field_name} not in /proc/self/status")


def reset_peak_rss() -> bool:
    """Reset this process's peak resident set (``VmHWM``) to its current size; ``False`` where the OS does not."""
    try:
        with open("/proc/self/clear_refs", "w") as refs:
            refs.write("5")
        return True
    except OSError:
        return False


def peak_rss_growth(fn: Callable[[], Item]) -> tuple[Item, dict[str, Any]]:
    """Run ``fn`` and return its value and ``{"growth_bytes", "seconds", "peak_reset"}``.

    ``growth_bytes`` is the peak resident set during the call minus the resident set just before it: the peak is
    reset first where the OS allows (``peak_reset``), otherwise it is the process's peak so far (an upper bound).
    Call it in a fresh process, after the imports and the input data.
    """
    before = status_kib("VmRSS")
    cleared = reset_peak_rss()
    start = time.perf_counter()
    value = fn()
    seconds = time.perf_counter() - start
    peak = status_kib("VmHWM") if cleared else max(status_kib("VmHWM"), before)
    return value, {"growth_bytes": (peak - before) * 1024, "seconds": seconds, "peak_reset": cleared}


# ----------------------------------------------------------------------------------------------------- reports
def markdown_table(header: list[str], rows: list[list[str]]) -> list[str]:
    """The lines of a markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def markdown_section(title: str, header: list[str], rows: list[list[str]], note: str = "") -> str:
    """A ``###`` section: its title, a table and an optional note below it."""
    lines = [f"### {title}", "", *markdown_table(header, rows)]
    return "\n".join(lines + (["", note] if note else []))


def verdict_word(passed: Optional[bool]) -> str:
    """``PASS``, ``FAIL``, or ``n.a.`` where the target was not measured."""
    return "n.a." if passed is None else ("PASS" if passed else "FAIL")


@dataclass
class Report:
    """Tables (markdown sections, also printed) and target verdicts collected during a run."""

    sections: list[str] = field(default_factory=list)
    verdicts: list[tuple[str, str, str]] = field(default_factory=list)  # (target, measured, PASS/FAIL/n.a.)
    memory_rows: list[dict] = field(default_factory=list)

    def table(self, title: str, header: list[str], rows: list[list[str]], note: str = "") -> None:
        """Add a section and print it."""
        self.sections.append(markdown_section(title, header, rows, note))
        print(self.sections[-1] + "\n", flush=True)

    def verdict(self, target: str, measured: str, passed: Optional[bool]) -> None:
        """Record a target's verdict and print it as ``[PASS] target: measured``."""
        status = verdict_word(passed)
        self.verdicts.append((target, measured, status))
        print(f"[{status}] {target}: {measured}", flush=True)


def cpu_model() -> str:
    """The CPU's model name (from ``/proc/cpuinfo`` where there is one)."""
    model = platform.processor() or platform.machine() or "unknown"
    try:
        with open("/proc/cpuinfo") as info:
            return next((line.split(":", 1)[1].strip() for line in info if line.startswith("model name")), model)
    except OSError:
        return model


def utc_now() -> str:
    """The date and time in UTC, to the minute."""
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M")


def relative_spread(values: list[float], largest_n: str) -> str:
    """The range of ``values`` over N, absolute and as a share of the value at the largest N (the last one)."""
    width = max(values) - min(values)
    return f"{width:.3f} ({100 * width / abs(values[-1]):.1f}% of the N = {largest_n} value)"


def write_block(path: Union[str, Path], body: str, name: str) -> None:
    """Put ``body`` between ``<!-- BEGIN name -->`` and ``<!-- END name -->`` in ``path``, keeping the rest.

    A file without the markers gets the block at its end; a missing file is created with a title. The file is
    replaced at once (written next to it, then renamed), so an interrupted run leaves the old one.
    """
    path = Path(path)
    begin, end = f"<!-- BEGIN {name} -->", f"<!-- END {name} -->"
    block = f"{begin}\n{body.rstrip()}\n{end}"
    text = path.read_text() if path.exists() else "# Benchmark results\n"
    if begin in text and end in text.split(begin, 1)[1]:
        head, rest = text.split(begin, 1)
        text = head + block + rest.split(end, 1)[1]
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    partial = path.with_name(path.name + ".tmp")
    partial.write_text(text)
    os.replace(partial, path)


# ----------------------------------------------------------------------------------------------------- figures
def pyplot() -> Any:
    """``matplotlib.pyplot`` on the Agg backend (files only, no display)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def label_axes(axes: Any, xlabel: str, ylabel: str, title: str, legend_size: float = 8, **legend: Any) -> None:
    """A log-scaled x axis, the labels, the title and the legend of one panel."""
    axes.set_xscale("log")
    axes.set_xlabel(xlabel)
    axes.set_ylabel(ylabel)
    axes.set_title(title)
    axes.legend(fontsize=legend_size, **legend)


def save_figure(figure: Any, path: Union[str, Path]) -> None:
    """Lay the figure out, write it at 110 dpi, close it and say where it went."""
    import matplotlib.pyplot as plt

    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    print(f"wrote {path}", flush=True)


# ----------------------------------------------------------------------------------------------- command lines
def add_size_flags(parser: argparse.ArgumentParser, quick: str, tiny: Optional[str] = None) -> None:
    """``--quick`` (a shorter run) and, when ``tiny`` is given, ``--tiny`` (tiny sizes, for smoke tests only)."""
    parser.add_argument("--quick", action="store_true", help=quick)
    if tiny is not None:
        parser.add_argument("--tiny", action="store_true", help=tiny)


def add_results_flag(parser: argparse.ArgumentParser, default: Path = RESULTS) -> None:
    """``--results``: the markdown file whose block the run rewrites (default ``benchmarks/RESULTS.md``)."""
    parser.add_argument("--results", type=Path, default=default, help="markdown file to update")
