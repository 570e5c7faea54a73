"""``compute()`` of ``bias_correction="jackknife"`` against the plain ``compute()`` (``True``), measured in one run.

    python benchmarks/jackknife_compute.py            # D = 768 per modality, N = 10k, 5 alternating repeats
    python benchmarks/jackknife_compute.py --quick    # 3 repeats
    python benchmarks/jackknife_compute.py --before /tmp/old   # first the same run on an extracted older package
    python benchmarks/jackknife_compute.py --frechet      # also FrechetDistance's jackknife against its plug-in value

``--before DIR`` runs this script first with ``DIR`` (a folder holding an older ``mid_metric``, e.g. from
``git archive <commit> mid_metric | tar -x -C DIR``) at the head of ``PYTHONPATH``, then measures the working tree, and
prints both tables: each ratio is taken within its own run, one right after the other.

Both metrics get the same float32 CLIP-like pairs (reference pairs, and candidates generated from the same
captions, fed in batches of 1024), then ``compute()`` once untimed. A timed ``compute()`` drops the metric's cached
value first and then computes again from the same statistics, as a second candidate set against the same reference
would: the plain metric reuses its reference fit (and its precision matrices), and so does the jackknife for its
full sample (whose traces come from the sharing test), but it fits every leave-one-group-out sample afresh. Both
take turns in an order that rotates with each repeat, each timed by this process's CPU time (all threads) and by
the wall clock, and each figure is the ratio of the medians.
Target of issue 23: at most 6 at D = 768.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from common import clip_like_features, cpu_model, markdown_table, rotated, utc_now  # noqa: E402

from mid_metric import FrechetDistance, MutualInformationDivergence, __version__  # noqa: E402

CONFIGURATIONS = {"True": True, "jackknife": "jackknife"}
TARGET = 6.0


def fresh_compute(metric: MutualInformationDivergence | FrechetDistance) -> tuple[float, float]:
    """CPU and wall-clock seconds of one ``compute()`` with the cached value dropped first."""
    metric._computed = None
    start, start_wall = time.process_time(), time.perf_counter()
    metric.compute()
    return time.process_time() - start, time.perf_counter() - start_wall


def main() -> None:
    """Time both configurations' ``compute()`` in turns and print the table and the ratio."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dim", type=int, default=768, help="feature size per modality")
    parser.add_argument("--rows", type=int, default=10_000, help="reference pairs (and as many candidates)")
    parser.add_argument("--repeats", type=int, default=5, help="alternating repeats")
    parser.add_argument("--quick", action="store_true", help="3 repeats")
    parser.add_argument("--before", metavar="DIR", help="first run the same measurement on the package in DIR")
    parser.add_argument("--frechet", action="store_true", help="also time FrechetDistance's jackknife (no target)")
    args = parser.parse_args()
    if args.quick:
        args.repeats = 3
    if args.before:
        command = [sys.executable, __file__, "--dim", str(args.dim), "--rows", str(args.rows)]
        command += ["--repeats", str(args.repeats)] + (["--frechet"] if args.frechet else [])
        environment = dict(os.environ, PYTHONPATH=os.pathsep.join([args.before, os.environ.get("PYTHONPATH", "")]))
        print(f"## before ({args.before})\n", flush=True)
        subprocess.run(command, env=environment, check=True, cwd=args.before)
        print("\n## after (this working tree)\n", flush=True)
    generator, cpu = torch.Generator().manual_seed(0), torch.device("cpu")
    images, texts, generated = (clip_like_features(args.rows, args.dim, generator, cpu) for _ in range(3))
    metrics: dict[str, MutualInformationDivergence | FrechetDistance] = {}
    for name, value in CONFIGURATIONS.items():
        metric = MutualInformationDivergence(feature=args.dim, bias_correction=value)
        for start in range(0, args.rows, 1024):
            rows = slice(start, start + 1024)
            metric.update_pairs(images[rows], texts[rows], generated[rows])
        metrics[name] = metric
    if args.frechet:
        for name, value in {"FD plug-in": False, "FD jackknife": "jackknife"}.items():
            metric = FrechetDistance(feature=args.dim, bias_correction=value)
            for start in range(0, args.rows, 1024):
                rows = slice(start, start + 1024)
                metric.update(images[rows], real=True)
                metric.update(generated[rows], real=False)
            metrics[name] = metric
    for metric in metrics.values():
        metric.compute()
    times: dict[str, list[float]] = {name: [] for name in metrics}
    walls: dict[str, list[float]] = {name: [] for name in metrics}
    for repeat in range(args.repeats):
        for name in rotated(list(metrics), repeat):
            cpu_seconds, wall_seconds = fresh_compute(metrics[name])
            times[name].append(cpu_seconds)
            walls[name].append(wall_seconds)
    medians = {name: statistics.median(seconds) for name, seconds in times.items()}
    wall_medians = {name: statistics.median(seconds) for name, seconds in walls.items()}
    print(f"mid-metric {__version__}, torch {torch.__version__}, {cpu_model()}, {torch.get_num_threads()} threads,")
    print(f"{utc_now()} UTC; D = {args.dim} + {args.dim}, N = M = {args.rows}, {args.repeats} alternating repeats\n")
    header = ["metric", "compute() CPU s (median)", "wall s (median)", "CPU s per repeat"]
    rows = [
        [f"`{name}`", f"{medians[name]:.3f}", f"{wall_medians[name]:.3f}", " ".join(f"{t:.3f}" for t in times[name])]
        for name in metrics
    ]
    print("\n".join(markdown_table(header, rows)))
    for what, figures in (("CPU time", medians), ("wall-clock time", wall_medians)):
        ratio = figures["jackknife"] / figures["True"]
        verdict = "PASS" if ratio <= TARGET else "FAIL"
        print(f"[{verdict}] jackknife / plain compute(): {ratio:.2f} ({what}; target <= {TARGET:.0f})")
        if args.frechet:
            frechet_ratio = figures["FD jackknife"] / figures["FD plug-in"]
            print(f"FrechetDistance jackknife / plug-in compute(): {frechet_ratio:.2f} ({what})")


if __name__ == "__main__":
    main()
