"""How cheap can an exact batch score be? The floor of ``forward / update`` at batch 32 (issue 14's forward target).

    python benchmarks/forward_floor.py          # D = 768 per modality (J = 1536), batch 32, ~1 minute
    python benchmarks/forward_floor.py --dim 512

``forward(real=False)`` accumulates the batch exactly as ``update(real=False)`` does, then scores it: the batch's
mean PMI under the reference. So ``forward / update = 1 + score / update`` for any implementation, and the score
of B rows under a full-rank Gaussian of dimension J has to apply a J x Dy (or two D x D) whitening map to them.
This script times, in one process and in turns, the metric's ``update(real=False)`` per step (staged, flushes
included) and the bare matrix products of three exact ways to score a batch, **with the fit taken as free** (the
matrices are precomputed and not timed), so each ratio is a lower bound for an exact batch score of that kind:

- *joint products, float64*: the metric's way since 0.3.0, ``|c A^T|^2 - |c_y B^T|^2`` with ``A`` the text rows
  of ``L_z^-1`` (Dy x J) and ``B = L_y^-1`` (Dy x Dy), about ``1.5 J^2 B`` flops;
- *canonical form, float64*: whitened and rotated to canonical correlations, two D x D products, ``J^2 B`` flops
  (the fewest for an exact score; its fit needs an SVD);
- *canonical form, float32*: the same in single precision;
- *one row, float32*: the canonical form's products for a single row, the memory-bound cost of any exact score
  (the matrices must be read once per call).

It prints a markdown block for ``benchmarks/RESULTS.md``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch
from common import cpu_model, median_seconds, utc_now

from mid_metric import MutualInformationDivergence


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dim", type=int, default=768, help="features per modality (default 768)")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    dim, batch = args.dim, args.batch
    joint = 2 * dim
    generator = torch.Generator().manual_seed(0)
    rows = torch.nn.functional.normalize(torch.randn(16384, joint, generator=generator), dim=1)

    metric = MutualInformationDivergence(feature=dim)
    metric.update(rows[:4096, :dim], rows[:4096, dim:], real=True)
    position = [4096]

    def update_step() -> None:  # one update(real=False) of `batch` rows; flushes happen every buffer_rows rows
        start = position[0]
        position[0] = 4096 + (start + batch - 4096) % (12288 - batch)
        metric.update(rows[start : start + batch, :dim], rows[start : start + batch, dim:], real=False)

    def per_step_update_ms() -> float:
        steps = 4 * metric.buffer_rows // batch  # four flushes per sample
        start = time.perf_counter()
        for _ in range(steps):
            update_step()
        return 1e3 * (time.perf_counter() - start) / steps

    centred64 = rows[:batch].to(torch.float64)
    joint_rows = torch.randn(dim, joint, dtype=torch.float64, generator=generator)
    text_rows = torch.randn(dim, dim, dtype=torch.float64, generator=generator)
    canonical = [torch.randn(dim, dim, dtype=torch.float64, generator=generator) for _ in range(2)]
    centred32, canonical32 = centred64.float(), [m.float() for m in canonical]

    def joint_products() -> None:
        (centred64 @ joint_rows.mT).square().sum(1) - (centred64[:, dim:] @ text_rows.mT).square().sum(1)

    def canonical_form(images: torch.Tensor, texts: torch.Tensor, maps: list[torch.Tensor]) -> None:
        a, b = images @ maps[0].mT, texts @ maps[1].mT
        (a * b).sum(1) - (a.square() + b.square()).sum(1)

    kernels = {
        "joint products, float64": joint_products,
        "canonical form, float64": lambda: canonical_form(centred64[:, :dim], centred64[:, dim:], canonical),
        "canonical form, float32": lambda: canonical_form(centred32[:, :dim], centred32[:, dim:], canonical32),
        "one row, float32": lambda: canonical_form(centred32[:1, :dim], centred32[:1, dim:], canonical32),
    }
    for fn in kernels.values():
        fn()
    per_step_update_ms()  # warm-up
    update_ms: list[float] = []
    kernel_ms: dict[str, list[float]] = {name: [] for name in kernels}
    for _ in range(args.rounds):  # in turns, so that all terms of a ratio see the same load
        update_ms.append(per_step_update_ms())
        for name, fn in kernels.items():
            kernel_ms[name].append(1e3 * median_seconds(fn, 30))
    update = statistics.median(update_ms)
    print(
        f"## forward floor: exact batch scores at batch {batch} (D = {dim} per modality, J = {joint})\n\n"
        f"{cpu_model()}, {os.cpu_count()} logical cores, {torch.get_num_threads()}"
        f" torch threads, torch {torch.__version__}, {utc_now()}"
        f" UTC; medians of {args.rounds} rounds taken in turns in one process (`python"
        f" benchmarks/forward_floor.py --dim {dim}`).\n\n"
        f"`update(real=False)` per step of {batch} rows (staged, flushes included): {update:.3f} ms.\n\n"
        "| exact score of the batch, fit free | ms per step | lower bound of forward / update |\n|---|---|---|"
    )
    for name, samples in kernel_ms.items():
        cost = statistics.median(samples)
        print(f"| {name} | {cost:.3f} | {1 + cost / update:.2f} |")


if __name__ == "__main__":
    main()
