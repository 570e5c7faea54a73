"""Update throughput of ``bias_correction="jackknife"`` against ``bias_correction=True``, measured in one run.

    python benchmarks/jackknife_throughput.py            # D = 768 per modality, 5 alternating repeats
    python benchmarks/jackknife_throughput.py --quick    # fewer rows and repeats

Both metrics get the same float32 CLIP-like features through ``update`` in batches of 256 (a reference batch, then
a candidate batch, as in a validation loop), each with its default staging buffer; the time of a pass includes its
last flush (``_flush_staged``). Each metric is built and fed one untimed pass first, which allocates and touches its
states and takes it past the early steps of the recentring schedule (powers of two: the jackknife recentres each of
its ``K`` group states on it); the timed passes then continue to feed the same metrics, as the steps of a long
validation loop do. The configurations take turns, in an order that rotates with each repeat, so that both see
the same load, and the figure is the ratio of their median throughputs (rows per second, both groups counted).
The first, untimed pass of a fresh metric is reported too. The target of issue 21 is a ratio of at least 0.8 at
D = 768: the jackknife accumulates every row once, into its group's statistics, and keeps no separate full state.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from common import clip_like_features, cpu_model, markdown_table, rotated, timed, utc_now  # noqa: E402

from mid_metric import MutualInformationDivergence, __version__  # noqa: E402

CONFIGURATIONS = {"True": True, "jackknife": "jackknife"}
TARGET = 0.8


def feed(metric: MutualInformationDivergence, batches: list[tuple[torch.Tensor, torch.Tensor, bool]]) -> None:
    """Pass every batch to ``update`` and flush the staged rows, so that every row is in the timing."""
    for images, texts, real in batches:
        metric.update(images, texts, real=real)
    metric._flush_staged()


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
    first = {name: timed(lambda metric=metric: feed(metric, batches)) for name, metric in metrics.items()}
    seconds: dict[str, list[float]] = {name: [] for name in CONFIGURATIONS}
    for repeat in range(args.repeats):
        for name in rotated(list(CONFIGURATIONS), repeat):
            seconds[name].append(timed(lambda name=name: feed(metrics[name], batches)))
    rows_fed = 2 * args.rows
    medians = {name: rows_fed / statistics.median(times) for name, times in seconds.items()}
    ratio = medians["jackknife"] / medians["True"]
    per_repeat = [t / j for t, j in zip(seconds["True"], seconds["jackknife"])]
    table = [
        [
            f"`{name}`",
            f"{medians[name]:,.0f}",
            " ".join(f"{t:.2f}" for t in seconds[name]),
            f"{rows_fed / first[name]:,.0f}",
        ]
        for name in CONFIGURATIONS
    ]
    print(f"mid-metric {__version__}, torch {torch.__version__}, {cpu_model()}, {torch.get_num_threads()} threads,")
    print(f"{utc_now()} UTC; D = {args.dim} + {args.dim}, float32 features, batches of {args.batch},")
    print(f"{args.rows} rows per group, {args.repeats} alternating repeats\n")
    print(
        "\n".join(
            markdown_table(["bias_correction", "rows/s (median)", "seconds per pass", "first pass rows/s"], table)
        )
    )
    spread = f"{min(per_repeat):.2f}-{max(per_repeat):.2f}"
    verdict = "PASS" if ratio >= TARGET else "FAIL"
    first_ratio = first["True"] / first["jackknife"]  # (seconds, so True over jackknife)
    print(f"\n[{verdict}] jackknife / True throughput: {ratio:.2f} (per repeat {spread}; target >= {TARGET})")
    print(f"first pass of a fresh metric (allocation and early recentring included): {first_ratio:.2f}")


if __name__ == "__main__":
    main()
