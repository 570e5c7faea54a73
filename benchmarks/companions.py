"""Benchmark of the companion metrics (CLIP-S, CLIP-R-Precision, InfoNCE) against store-all twins of the official code.

    python benchmarks/companions.py                      # M = 1k, 10k and 30k, D = 768 (10 to 15 minutes, 2 cores)
    python benchmarks/companions.py --sizes 1000,10000   # the same up to 10k (about 3 minutes)
    python benchmarks/companions.py --quick              # M = 600, D = 32, one repetition (the smoke test)

It measures, for M candidate pairs of D-dimensional CLIP-like unit features fed in batches of 256:

1. peak RSS growth of CLIP-S and of R-precision and InfoNCE together, each configuration in a fresh subprocess
   (``--probe``): the peak resident set is reset after the imports and the data (made beforehand, the same for both
   sides), then the metric is fed and computed. The official twins store ``x``, ``y`` and ``x0`` in float64 as the
   official ``update(x, y, x0)`` does; ours get ``update(x, y, real=True)`` (skipped) and ``update(x0, y)``;
2. time of all updates plus ``compute()``, ours, the previous version's and the twin's interleaved in this process
   (each taking each place in turn), median of the repetitions, reported as the ratio twin / ours. *Previous* is
   the same metric with float64 score blocks, as 0.3.1 computed them (what the metric still does where float32
   matrix products may be TF32 or bfloat16; forced here with ``torch.set_float32_matmul_precision("high")``);
3. agreement: CLIP-S (``clamp=False``) and InfoNCE against the twins' float32 results, and the twin's Monte-Carlo
   R-precision (one draw per repetition) against our exact expectation.

It prints the targets (R-precision and InfoNCE at least as fast as the official code at every size; the two together
under 1.5 GB at M = 30k, D = 768) with PASS/FAIL and writes its tables between ``<!-- BEGIN companions -->`` and
``<!-- END companions -->`` in ``benchmarks/RESULTS.md``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Optional

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (  # noqa: E402
    add_results_flag,
    add_size_flags,
    cpu_model,
    markdown_section,
    peak_rss_growth,
    rotated,
    run_for_json,
    utc_now,
    verdict_word,
    write_block,
)
from official_companions import TWINS  # noqa: E402

from mid_metric import CLIPRPrecision, CLIPScore, InfoNCE  # noqa: E402

NOTES = """### Notes

- **Time.** CLIP-R-Precision's exact expectation needs every score `cos(image_j, text_k)`: a matrix product of
  2 M^2 D flops (1.4 TFLOP at 30k), against the official estimator's 99 gathers of the captions (99 x 8 M D bytes
  moved); InfoNCE does the same product as the official code, blockwise, without its two M x M matrices. The
  product is float32 (1.7x the float64 rate on this CPU); the entries within its error bound,
  (D + 2) 2^-24 = 4.6e-5 at D = 768, of a decision (R-precision: the matching score; InfoNCE below a temperature
  of 2 / log M: the row maximum) are recomputed in float64, so R-precision's counts are the float64 counts, and
  InfoNCE takes its exponent sums in float64. *Previous* (float64 blocks) was 0.78 of the official code's speed
  for R-precision at 30k in 0.3.1.
- **Memory.** R-precision and InfoNCE hold 4 (Dx + Dy) bytes a pair (184 MB at 30k) and, in `compute()`, the images
  (float32), the unit captions (float64 and float32), a float32 block buffer, a mask and, for InfoNCE, a float64
  block buffer (512 rows at 30k: 59, 15 and 117 MiB); the official InfoNCE builds two M x M float64 matrices
  (14.4 GB at 30k). CLIP-S holds 24 bytes plus 8 a pair. The RSS figures also hold what glibc's heap keeps after
  freeing the per-batch temporaries (its mmap threshold adapts to them), which moves them by up to about 150 MB
  from run to run; run with `MALLOC_MMAP_THRESHOLD_=131072` to see the metrics' own memory.
- **Agreement.** CLIP-S and InfoNCE agree with the twins' float32 results to their float32 rounding (target: within
  2e-6 relative). The official R-precision is one random draw; the table gives the mean and standard error of the
  repetitions' draws around our exact expectation (`tests/test_functional_r_precision.py` checks 30 seeds within 4
  standard errors).
"""
BATCH = 256
TARGET_BYTES = 1.5e9
METRICS = ("clip-score", "r-precision", "infonce")
SPEED_TARGET = ("r-precision", "infonce")  # at least as fast as the official code at every size
OURS: dict[str, Callable[[int], object]] = {
    "clip-score": lambda d: CLIPScore(feature=d, clamp=False),
    "r-precision": lambda d: CLIPRPrecision(feature=d),
    "infonce": lambda d: InfoNCE(feature=d),
}


@dataclass
class Config:
    sizes: tuple[int, ...]
    dim: int
    reps: int  # repetitions at M <= 10k; one beyond (each run at 30k takes 10 to 40 s)
    probes: tuple[str, ...]  # metrics whose memory is probed ("r-precision+infonce": the two together)


FULL = Config((1_000, 10_000, 30_000), 768, 5, ("clip-score", "r-precision+infonce"))
QUICK = Config((600,), 32, 1, ("r-precision+infonce",))


def repetitions(cfg: Config, m: int) -> int:
    return cfg.reps if m <= 10_000 else 1


@contextlib.contextmanager
def float64_products() -> Iterator[None]:
    """Make our R-precision and InfoNCE score float64 blocks, as 0.3.1 did (the *previous* columns)."""
    precision = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("high")  # float32 products may round further: the metrics use float64 ones
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(precision)


# ------------------------------------------------------------------------------------------------- data
def make_data(m: int, dim: int, seed: int = 0, latent: int = 32) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """CLIP-like unit float32 features: captions ``y``, real images ``x`` and generated images ``x0`` near them.

    The pairs share a ``latent``-dimensional structure embedded in ``dim`` dimensions under isotropic noise, scaled
    so that at D = 768 a generated image and its caption have a cosine of about 0.3 (as with CLIP) and the expected
    R-precision is about 0.75.
    """
    generator = torch.Generator().manual_seed(seed)
    common = torch.randn(latent, generator=generator)
    projection = torch.randn(latent, dim, generator=generator) / latent**0.5
    noise = 2.5 * 3 * (latent / dim) ** 0.5

    def embed(codes: torch.Tensor) -> torch.Tensor:
        features = codes @ projection + noise * torch.randn(codes.shape[0], dim, generator=generator)
        return torch.nn.functional.normalize(features, dim=1)

    y = torch.randn(m, latent, generator=generator) + 0.5 * common
    x = y + 1.0 * torch.randn(m, latent, generator=generator)
    x0 = y + 1.2 * torch.randn(m, latent, generator=generator)
    return embed(x), embed(y), embed(x0)


def run_ours(names: list[str], data: tuple[torch.Tensor, ...], dim: int) -> dict[str, float]:
    x, y, x0 = data
    metrics = {name: OURS[name](dim) for name in names}
    for start in range(0, x.shape[0], BATCH):
        stop = start + BATCH
        for metric in metrics.values():
            metric.update(x[start:stop], y[start:stop], real=True)  # skipped, as in a shared MetricCollection
            metric.update(x0[start:stop], y[start:stop])
    return {name: float(metric.compute()) for name, metric in metrics.items()}


def run_official(names: list[str], data: tuple[torch.Tensor, ...], seed: int = 0) -> dict[str, float]:
    x, y, x0 = data
    twins = {name: TWINS[name](limit=x.shape[0]) for name in names}
    for start in range(0, x.shape[0], BATCH):
        stop = start + BATCH
        for twin in twins.values():
            twin.update(x[start:stop], y[start:stop], x0[start:stop])
    torch.manual_seed(seed)  # the official R-precision is unseeded; seed it here to vary it across repetitions
    return {name: float(twin.compute()) for name, twin in twins.items()}


# ------------------------------------------------------------------------------------------ memory probe
def probe(impl: str, names: list[str], m: int, dim: int) -> dict:
    """Feed and compute in this (fresh) process; return the peak RSS growth over the post-data baseline."""
    data = make_data(m, dim)
    run_ours(names, make_data(8, dim), dim) if impl == "ours" else run_official(names, make_data(8, dim))  # warm up
    values, growth = peak_rss_growth(
        lambda: run_ours(names, data, dim) if impl == "ours" else run_official(names, data)
    )
    return {"impl": impl, "metrics": names, "m": m, **growth, "values": values}


def run_probe(impl: str, metric: str, m: int, dim: int) -> Optional[dict]:
    command = [sys.executable, os.path.abspath(__file__), "--probe", impl, metric, str(m), str(dim)]
    found = run_for_json(command, f"  probe {impl} {metric} M={m}")
    return found[-1] if found else None


# ------------------------------------------------------------------------------------------------ report
def _fmt_bytes(count: float) -> str:
    if count < 2**20:
        return "< 1 MiB"
    return f"{count / 2**20:,.0f} MiB" if count < 2**30 else f"{count / 2**30:.2f} GiB"


def _timed(fn: Callable[..., dict[str, float]], *args: object, **kwargs: object) -> tuple[dict[str, float], float]:
    start = time.perf_counter()
    value = fn(*args, **kwargs)
    return value, time.perf_counter() - start


def measure_times(m: int, cfg: Config) -> tuple[list[list[str]], list[list[str]], dict[str, float]]:
    """Time rows, agreement rows and the official / ours ratio of each metric at ``m`` pairs."""
    data = make_data(m, cfg.dim, seed=1)
    time_rows, agreement_rows, ratios = [], [], {}
    reps = repetitions(cfg, m)
    for name in METRICS:
        times: dict[str, list[float]] = {"ours": [], "previous": [], "official": []}
        ours_v, draws = 0.0, []
        sides = ["ours", "previous", "official"] if name in SPEED_TARGET else ["ours", "official"]
        for rep in range(reps):
            for side in rotated(sides, rep):  # each side takes each place in turn
                if side == "official":
                    values, seconds = _timed(run_official, [name], data, seed=rep)
                    draws.append(values[name])
                elif side == "previous":
                    with float64_products():
                        seconds = _timed(run_ours, [name], data, cfg.dim)[1]
                else:
                    values, seconds = _timed(run_ours, [name], data, cfg.dim)
                    ours_v = values[name]
                times[side].append(seconds)
        ours_t, previous_t, official_t = times["ours"], times["previous"], times["official"]
        t_ours, t_official = statistics.median(ours_t), statistics.median(official_t)
        t_previous = statistics.median(previous_t) if previous_t else None
        ratios[name] = t_official / t_ours
        previous = ["-", "-"] if t_previous is None else [f"{t_previous:.2f}", f"{t_official / t_previous:.2f}"]
        time_rows.append(
            [f"{m:,}", name, f"{t_ours:.2f}", previous[0], f"{t_official:.2f}", f"**{ratios[name]:.2f}**", previous[1]]
        )
        print(f"time M={m:,} {name}: ours {t_ours:.2f} s, previous {previous[0]} s, official {t_official:.2f} s")
        official_v = statistics.mean(draws)
        if name == "r-precision":
            detail = f"{len(draws)} Monte-Carlo draw(s): mean {official_v:.5f}"
            if len(draws) > 1:  # (one draw has no standard error)
                detail += f", standard error {statistics.stdev(draws) / len(draws) ** 0.5:.5f}"
        else:
            detail = f"relative difference {abs(ours_v - official_v) / abs(official_v):.1e}"
        agreement_rows.append([f"{m:,}", name, f"{ours_v:.7g}", f"{official_v:.7g}", detail])
    return time_rows, agreement_rows, ratios


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_size_flags(parser, "small sizes, one repetition (smoke test)")
    add_results_flag(parser)
    parser.add_argument("--sizes", help="comma-separated numbers of pairs M at D = 768 (default 1000,10000,30000)")
    parser.add_argument("--probe", nargs=4, metavar=("IMPL", "METRIC", "M", "DIM"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.probe:
        impl, metric, m, dim = args.probe
        torch.set_num_threads(1)  # memory does not depend on the threads; keep the probes light
        print(json.dumps(probe(impl, metric.split("+"), int(m), int(dim))))
        return 0

    cfg = QUICK if args.quick else FULL
    if args.sizes and not args.quick:
        cfg = Config(tuple(int(size) for size in args.sizes.split(",")), cfg.dim, cfg.reps, cfg.probes)
    load_before, started = os.getloadavg(), time.perf_counter()
    sections: list[str] = []

    # 1. memory, one fresh process per configuration
    memory_rows, together_ours = [], {}
    for m in cfg.sizes:
        for metric in cfg.probes:
            found = {impl: run_probe(impl, metric, m, cfg.dim) for impl in ("ours", "official")}
            ours, official = found["ours"], found["official"]
            if ours and "+" in metric:
                together_ours[m] = ours["growth_bytes"]
            cells = [_fmt_bytes(r["growth_bytes"]) if r else "failed" for r in (ours, official)]
            measurable = ours and official and ours["growth_bytes"] >= 2**20
            ratio = f"{official['growth_bytes'] / ours['growth_bytes']:.0f}x" if measurable else "-"
            memory_rows.append([f"{m:,}", metric.replace("+", " + "), *cells, ratio])
            print(f"memory M={m:,} {metric}: ours {cells[0]}, official {cells[1]}")
    sections.append(
        markdown_section(
            f"Peak memory (RSS growth in a fresh process), D = {cfg.dim}",
            ["M", "metric", "ours", "official (store-all)", "official / ours"],
            memory_rows,
        )
    )

    # 2. and 3. time and agreement, interleaved in this process
    time_rows, agreement_rows, slowest = [], [], {}
    for m in cfg.sizes:
        rows, agreement, ratios = measure_times(m, cfg)
        time_rows += rows
        agreement_rows += agreement
        slowest[m] = min(ratios[name] for name in SPEED_TARGET)
    reps = ", ".join(f"{repetitions(cfg, m)} at {m:,}" for m in cfg.sizes)
    sections.append(
        markdown_section(
            f"Time of all updates + compute(), D = {cfg.dim} (seconds, median of the repetitions: {reps}; interleaved)",
            [
                "M",
                "metric",
                "ours",
                "previous (float64 blocks)",
                "official (store-all)",
                "official / ours",
                "official / previous",
            ],
            time_rows,
        )
    )
    sections.append(
        markdown_section(
            "Agreement with the official twins (same features)",
            ["M", "metric", "ours", "official", "comparison"],
            agreement_rows,
        )
    )

    # the targets
    worst = min(slowest, key=slowest.get)
    speed_passed = slowest[worst] >= 1.0
    speed = (
        "R-precision and InfoNCE at least as fast as the official code at every size (official / ours >= 1 at M ="
        f" {', '.join(f'{m:,}' for m in cfg.sizes)}): lowest {slowest[worst]:.2f} at M = {worst:,}"
        f" ({verdict_word(speed_passed)})"
    )
    largest = max(cfg.sizes)
    growth = together_ours.get(largest)
    passed = None if growth is None else growth < TARGET_BYTES
    verdict = "not measured" if growth is None else f"{_fmt_bytes(growth)} ({verdict_word(passed)})"
    target = f"R-precision + InfoNCE peak memory growth < 1.5 GB at M = {largest:,}, D = {cfg.dim}: {verdict}"
    print(f"[{verdict_word(speed_passed)}] {speed}")
    print(f"[{verdict_word(passed)}] {target}")

    load_after = os.getloadavg()
    command = "python benchmarks/companions.py" + (" --quick" if args.quick else "")
    command += f" --sizes {args.sizes}" if args.sizes and not args.quick else ""
    head = "\n".join(
        [
            "## Companion metrics (issues 12 and 23): CLIP-S, CLIP-R-Precision, InfoNCE against store-all twins",
            "",
            f"Generated by `{command}` on {cpu_model()},"
            f" {os.cpu_count()} logical cores, torch {torch.__version__} ({torch.get_num_threads()} threads),"
            f" {utc_now()} UTC, load average"
            f" {load_before[0]:.2f} / {load_after[0]:.2f} at start / end, {time.perf_counter() - started:.0f} s.",
            "",
            f"**Targets:** {speed}. {target}.",
            "",
            "The official twins (`benchmarks/official_companions.py`) store every feature in float64 and compute on the"
            " whole set; the official InfoNCE builds the M x M float64 matrix and its softmax. Ours keep float32"
            " candidate rows (R-precision, InfoNCE) or sums (CLIP-S) and score a block of images at a time from"
            " float32 products, with float64 recounts and sums. CLIP-S is timed with `clamp=False` (the official"
            " convention). Times move with the load of this shared machine; compare the ratios, which are taken"
            " between runs interleaved in one process.",
        ]
    )
    write_block(args.results, head + "\n\n" + "\n\n".join(sections) + "\n\n" + NOTES, "companions")
    print(f"wrote {args.results}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
