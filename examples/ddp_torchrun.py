"""MID over several processes with plain torch.distributed, launched by torchrun.

It needs nothing beyond mid-metric itself (torchrun comes with torch)::

    torchrun --nproc_per_node=2 examples/ddp_torchrun.py --out result.json

Every rank adds its own, uneven share of the reference and candidate pairs (shares proportional to 1, 2, ...;
with ``--empty-rank`` the last rank gets no candidates at all). ``compute()`` is a collective: every rank calls it
and gets the same value, which equals the single-process value on all the data. The metric syncs with two
all-reduces whose payload is one state's size, whatever the number of samples.
"""

from __future__ import annotations

import argparse
import json

import torch
import torch.distributed as dist
import torch.nn.functional as F

from mid_metric import MutualInformationDivergence


def make_data(num_pairs: int, dim: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Return ``(real_images, captions, generated_images)``, CLIP-like unit vectors, the same on every rank."""
    g = torch.Generator().manual_seed(seed)
    common = F.normalize(torch.randn(dim, generator=g), dim=0)
    captions = F.normalize(3.0 * common + torch.randn(num_pairs, dim, generator=g), dim=1)
    real = F.normalize(3.0 * common + captions + 0.5 * torch.randn(num_pairs, dim, generator=g), dim=1)
    generated = F.normalize(real + 0.3 * torch.randn(num_pairs, dim, generator=g), dim=1)
    return real, captions, generated


def share(num: int, rank: int, world_size: int) -> slice:
    """Contiguous rows of ``rank``, with shares proportional to 1, 2, ..., world_size."""
    total = world_size * (world_size + 1) // 2
    return slice(num * (rank * (rank + 1) // 2) // total, num * ((rank + 1) * (rank + 2) // 2) // total)


def main() -> None:
    parser = argparse.ArgumentParser(description="MID under torchrun")
    parser.add_argument("--pairs", type=int, default=500)
    parser.add_argument("--dim", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--empty-rank", action="store_true", help="give the last rank no candidate pairs")
    parser.add_argument("--out", default=None, help="JSON file for the result (written by rank 0)")
    args = parser.parse_args()

    dist.init_process_group("gloo")  # torchrun sets RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT
    rank, world_size = dist.get_rank(), dist.get_world_size()

    real, captions, generated = make_data(args.pairs, args.dim)
    mid = MutualInformationDivergence(feature=args.dim)
    mine = share(args.pairs, rank, world_size)
    for start in range(mine.start, mine.stop, args.batch_size):
        rows = slice(start, min(start + args.batch_size, mine.stop))
        mid.update(real[rows], captions[rows], real=True)
        if not (args.empty_rank and rank == world_size - 1):
            mid.update(generated[rows], captions[rows], real=False)

    result = mid.compute_result()  # collective: runs on every rank, never under `if rank == 0`
    if rank == 0:
        summary = {
            "world_size": world_size,
            "mid": result.mid.item(),
            "mutual_information": result.mutual_information.item(),
            "distance": result.distance.item(),
            "num_reference": result.num_reference,
            "num_candidates": result.num_candidates,
        }
        print(json.dumps(summary))
        if args.out:
            with open(args.out, "w") as handle:
                json.dump(summary, handle)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
