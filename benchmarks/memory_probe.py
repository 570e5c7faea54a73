"""Peak memory of one MID run, measured in this (fresh) process; run it as a subprocess.

    python benchmarks/memory_probe.py --impl ours --n 100000 --dim 768

It imports everything, then resets the peak resident set size (``/proc/self/clear_refs``; where that is not
available it subtracts the current RSS), feeds ``n`` reference pairs and ``n`` candidate pairs in batches and
calls ``compute()``. It prints one JSON line: ``{"impl", "n", "dim", "growth_bytes", "seconds", "mid"}``, where
``growth_bytes`` is the peak RSS after the imports minus the RSS after the imports.

The input batches come from a small pool made before the measurement starts (the same for both implementations),
so the figure is the memory the metric itself needs. The store-all baseline stores a copy of each batch, as it
would store fresh encoder outputs.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from baseline import StoreAllMID  # noqa: E402
from common import common_direction, near_direction, peak_rss_growth  # noqa: E402

from mid_metric import MutualInformationDivergence  # noqa: E402

POOL = 8


def _pool(dim: int, batch: int, seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    generator = torch.Generator().manual_seed(seed)
    direction = common_direction(dim, generator)
    return [tuple(near_direction(direction, batch, generator) for _ in range(3)) for _ in range(POOL)]


def probe(impl: str, n: int, dim: int, batch: int) -> dict:
    if impl not in ("ours", "baseline"):
        raise ValueError(f"unknown implementation {impl!r}")
    pool = _pool(dim, batch)
    torch.manual_seed(0)
    _ = torch.zeros(1).sum()  # warm the allocator and the thread pool before the baseline is read

    def run() -> float:
        if impl == "ours":
            metric = MutualInformationDivergence(feature=dim)
            for index, offset in enumerate(range(0, n, batch)):
                images, texts, generated = pool[index % POOL]
                size = min(batch, n - offset)
                metric.update(images[:size], texts[:size], real=True)
                metric.update(generated[:size], texts[:size], real=False)
            return float(metric.compute())
        store = StoreAllMID()
        for index, offset in enumerate(range(0, n, batch)):
            images, texts, generated = pool[index % POOL]
            size = min(batch, n - offset)
            store.update(images[:size].clone(), texts[:size].clone(), generated[:size].clone())
        return float(store.compute())

    mid, growth = peak_rss_growth(run)
    return {"impl": impl, "n": n, "dim": dim, **growth, "mid": mid}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--impl", choices=("ours", "baseline"), required=True)
    parser.add_argument("--n", type=int, required=True, help="reference pairs, and as many candidate pairs")
    parser.add_argument("--dim", type=int, default=768, help="feature size per modality")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (memory does not depend on them)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(json.dumps(probe(args.impl, args.n, args.dim, args.batch)))


if __name__ == "__main__":
    main()
