"""Peak memory and time of the CMMD metric: N real + N generated image embeddings, stored and computed blockwise.

    python benchmarks/cmmd_memory.py                      # N = 30,000 + 30,000, D = 768 (ViT-L/14)
    python benchmarks/cmmd_memory.py --n 2000 --dim 64    # a quick run

Each measurement runs in a fresh subprocess (``--probe``): it imports everything and makes a small pool of CLIP-like
unit embeddings (the same batches are fed again and again; the metric stores a copy of each), then resets the peak
resident set size (``/proc/self/clear_refs``; where that is not possible it reports the peak minus the RSS after the
imports, an upper bound), feeds ``N`` real and ``N`` generated embeddings in batches to
:class:`mid_metric.metrics.cmmd.CMMD` and calls ``compute()``. It prints one JSON line with the RSS growth
(``growth_bytes``), the bytes the stored float32 features take (``stored_bytes``), the time of the updates and of
``compute()``, and the value.

The target is a peak growth under 1.5 GB at N = 30,000 + 30,000, D = 768. A dense evaluation, as the paper's code
does, holds ``N x N`` kernel matrices: 3.6 GB each in float32 at N = 30,000.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time

import torch
from common import peak_rss_growth

from mid_metric.metrics.cmmd import CMMD

TARGET_BYTES = 1.5e9
POOL = 8


def _pool(dim: int, batch: int, shift: float, seed: int) -> list[torch.Tensor]:
    """Unit embeddings around a common direction (pairwise cosines about 0.5, as CLIP image embeddings)."""
    generator = torch.Generator().manual_seed(seed)
    common = torch.randn(dim, generator=torch.Generator().manual_seed(0))
    offset = torch.randn(dim, generator=torch.Generator().manual_seed(1))
    return [
        torch.nn.functional.normalize(common + torch.randn(batch, dim, generator=generator) + shift * offset, dim=1)
        for _ in range(POOL)
    ]


def probe(n: int, dim: int, batch: int, block_size: int) -> dict:
    real_pool, generated_pool = _pool(dim, batch, 0.0, seed=2), _pool(dim, batch, 0.3, seed=3)
    _ = torch.zeros(1).sum()  # warm the allocator and the thread pool before the baseline is read

    def run() -> tuple[float, float, float]:
        start = time.perf_counter()
        metric = CMMD(feature=dim, max_samples=n, block_size=block_size)
        for index, offset in enumerate(range(0, n, batch)):
            size = min(batch, n - offset)
            metric.update(real_pool[index % POOL][:size], None, real=True)
            metric.update(generated_pool[index % POOL][:size], None, real=False)
        updated = time.perf_counter()
        value = float(metric.compute())
        return value, updated - start, time.perf_counter() - updated

    (value, update_seconds, compute_seconds), growth = peak_rss_growth(run)
    return {
        "n": n,
        "dim": dim,
        "block_size": block_size,
        "growth_bytes": growth["growth_bytes"],
        "stored_bytes": 2 * n * dim * 4,
        "update_seconds": update_seconds,
        "compute_seconds": compute_seconds,
        "cmmd": value,
        "peak_reset": growth["peak_reset"],
    }


def _run_probe(args: argparse.Namespace) -> dict:
    command = [sys.executable, os.path.abspath(__file__), "--probe", "--n", str(args.n), "--dim", str(args.dim)]
    command += ["--batch", str(args.batch), "--block-size", str(args.block_size), "--threads", str(args.threads)]
    done = subprocess.run(command, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def _mib(count: float) -> str:
    return f"{count / 2**20:,.0f} MiB"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=30_000, help="real images, and as many generated ones")
    parser.add_argument("--dim", type=int, default=768, help="embedding size (768: CLIP ViT-L/14)")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--block-size", type=int, default=2048)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--probe", action="store_true", help="measure in this process and print one JSON line")
    args = parser.parse_args()
    if args.probe:
        torch.set_num_threads(args.threads)
        print(json.dumps(probe(args.n, args.dim, args.batch, args.block_size)))
        return
    result = _run_probe(args)
    verdict = "PASS" if result["growth_bytes"] < TARGET_BYTES else "FAIL"
    print(json.dumps(result))
    print(
        f"CMMD peak memory growth at N = {args.n:,} + {args.n:,}, D = {args.dim}: {_mib(result['growth_bytes'])}"
        f" (stored features {_mib(result['stored_bytes'])}; target < 1.5 GB) [{verdict}]"
    )
    print(
        f"| {args.n:,} + {args.n:,} | {args.dim} | {args.block_size} | {_mib(result['stored_bytes'])}"
        f" | {_mib(result['growth_bytes'])} | {result['update_seconds']:.1f} | {result['compute_seconds']:.1f}"
        f" | {result['cmmd']:.6g} |"
    )
    print(
        f"({platform.machine()}, {os.cpu_count()} logical cores, torch {torch.__version__}, {args.threads} threads,"
        f" load average {os.getloadavg()[0]:.2f})"
    )


if __name__ == "__main__":
    main()
