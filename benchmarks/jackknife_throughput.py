"""Update throughput of ``bias_correction="jackknife"`` against ``bias_correction=True``, measured in one run.

    python benchmarks/jackknife_throughput.py            # D = 768 per modality, 5 alternating repeats
    python benchmarks/jackknife_throughput.py --quick    # 3 repeats

Both metrics get the same float32 CLIP-like features through ``update`` in batches of 256 (a reference batch, then
a candidate batch, as in a validation loop), each with its default staging buffer; a pass is 10240 rows per group
(one flush of the jackknife's buffer, ten of ``True``'s), and its time includes its last flush (``_flush_staged``).
Each metric is built and fed one untimed pass first, which allocates and touches its states and takes it past the
early steps of the recentring schedule (powers of two: the jackknife recentres each of its ``K`` group states on
it); the timed passes then continue to feed the same metrics, as the steps of a long validation loop do. The
configurations take turns, in an order that rotates with each repeat, so that both see the same load, and the
figure is the ratio of their median throughputs (rows per second, both groups counted). Each pass is timed by the
process's CPU time (all threads), which other processes on a shared machine do not inflate, and by the wall clock.
The first pass of a fresh metric is reported too. The target of issue 21 is a ratio of at least 0.8 at D = 768:
the jackknife accumulates every row once, into its group's statistics, and keeps no separate full state.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from common import clip_like_features, cpu_model, markdown_table, rotated, utc_now  # noqa: E402

from mid_metric import MutualInformationDivergence, __version__  # noqa: E402

CONFIGURATIONS = {"True": True, "jackknife": "jackknife"}
TARGET = 0.8


def feed(metric: MutualInformationDivergence, batches: list[tuple[torch.Tensor, torch.Tensor, bool]]) -> None:
    """Pass every batch to ``update`` and flush the staged rows, so that every row is in the timing."""
    for images, texts, real in batches:
        metric.update(images, texts, real=real)
    metric._flush_staged()


def timed_both(fn: Callable[[], object]) -> tuple[float, float]:
    """CPU seconds (this process, all threads) and wall-clock seconds of one call of ``fn``."""
    cpu, wall = time.process_time(), time.perf_counter()
    fn()
    return time.process_time() - cpu, time.perf_counter() - wall


def main() -> None:
    """Time both configurations in turns and print the table and the ratio."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dim", type=int, default=768, help="feature size per modality")
    parser.add_argument("--rows", type=int, default=10240, help="rows per group and pass (one jackknife flush)")
    parser.add_argument("--batch", type=int, default=256, help="rows per update call")
    parser.add_argument("--repeats", type=int, default=5, help="alternating repeats")
    parser.add_argument("--quick", action="store_true", help="3 repeats")
    args = parser.parse_args()
    if args.quick:
        args.repeats = 3
    g = torch.Generator().manual_seed(0)
    device = torch.device("cpu")
    images, texts = (clip_like_features(2 * args.rows, args.dim, g, device) for _ in range(2))
    batches = []
    for start in range(0, args.rows, args.batch):
        stop = min(start + args.batch, args.rows)
        batches.append((images[start:stop], texts[start:stop], True))
        batches.append((images[args.rows + start : args.rows + stop], texts[start:stop], False))
    metrics = {
        name: MutualInformationDivergence(feature=args.dim, bias_correction=value)
        for name, value in CONFIGURATIONS.items()
    }
    first = {name: timed_both(lambda metric=metric: feed(metric, batches)) for name, metric in metrics.items()}
    cpu: dict[str, list[float]] = {name: [] for name in CONFIGURATIONS}
    wall: dict[str, list[float]] = {name: [] for name in CONFIGURATIONS}
    for repeat in range(args.repeats):
        for name in rotated(list(CONFIGURATIONS), repeat):
            cpu_seconds, wall_seconds = timed_both(lambda name=name: feed(metrics[name], batches))
            cpu[name].append(cpu_seconds)
            wall[name].append(wall_seconds)
    rows_fed = 2 * args.rows
    medians = {name: rows_fed / statistics.median(times) for name, times in cpu.items()}
    wall_medians = {name: rows_fed / statistics.median(times) for name, times in wall.items()}
    ratio = medians["jackknife"] / medians["True"]
    wall_ratio = wall_medians["jackknife"] / wall_medians["True"]
    per_repeat = [t / j for t, j in zip(cpu["True"], cpu["jackknife"])]
    table = [
        [
            f"`{name}`",
            f"{medians[name]:,.0f}",
            " ".join(f"{t:.2f}" for t in cpu[name]),
            f"{wall_medians[name]:,.0f}",
            " ".join(f"{t:.2f}" for t in wall[name]),
            f"{rows_fed / first[name][0]:,.0f}",
        ]
        for name in CONFIGURATIONS
    ]
    print(f"mid-metric {__version__}, torch {torch.__version__}, {cpu_model()}, {torch.get_num_threads()} threads,")
    print(f"{utc_now()} UTC; D = {args.dim} + {args.dim}, float32 features, batches of {args.batch},")
    print(f"{args.rows} rows per group, {args.repeats} alternating repeats\n")
    print(
        "\n".join(
            markdown_table(
                [
                    "bias_correction",
                    "rows per CPU s (median)",
                    "CPU s per pass",
                    "rows per wall s (median)",
                    "wall s per pass",
                    "first pass, rows per CPU s",
                ],
                table,
            )
        )
    )
    spread = f"{min(per_repeat):.2f}-{max(per_repeat):.2f}"
    verdict = "PASS" if ratio >= TARGET else "FAIL"
    first_ratio = first["True"][0] / first["jackknife"][0]  # (seconds, so True over jackknife)
    print(f"\n[{verdict}] jackknife / True throughput: {ratio:.2f} (CPU time; per repeat {spread}; target >= {TARGET})")
    print(f"wall clock: {wall_ratio:.2f}; first pass of a fresh metric (with its allocation): {first_ratio:.2f}")


if __name__ == "__main__":
    main()
