"""Bytes a rank sends in one DDP sync of ``MutualInformationDivergence``, with 2 gloo processes.

    python benchmarks/sync_bytes.py --n 1000 100000 --dim 768

For each ``n``, two processes (gloo, CPU) each feed ``n / 2`` reference pairs and ``n / 2`` candidate pairs, then
call ``compute()``, which syncs the states with the metric's default ``dist_sync_fn``. Every
``torch.distributed`` collective is wrapped to count the bytes of the tensors (or pickled objects) the rank hands
to it during that ``compute()``; nested calls (a collective built on another) are counted once. It prints one
JSON line per ``n`` with the payload bytes per rank, the calls made, and the size of the metric's states.

Payload is what a rank contributes. For 2 ranks it is also what a rank puts on the wire: a ring all-reduce sends
``2 (k - 1) / k`` times the payload and an all-gather ``k - 1`` times it, both 1 for ``k = 2``.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import socket
import tempfile
from typing import Any, Callable

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from common import common_direction, near_direction

WRAPPED = (
    "all_reduce",
    "all_gather",
    "all_gather_into_tensor",
    "all_gather_object",
    "broadcast",
    "broadcast_object_list",
    "reduce",
    "reduce_scatter",
    "gather",
    "scatter",
    "send",
    "isend",
    "all_to_all",
    "barrier",
)


def _tensor_bytes(value: Any) -> int:
    if isinstance(value, torch.Tensor):
        return value.numel() * value.element_size()
    if isinstance(value, (list, tuple)):
        return sum(_tensor_bytes(item) for item in value)
    return 0


class ByteCounter:
    """Wraps the ``torch.distributed`` collectives and counts what this rank sends while ``active``."""

    def __init__(self) -> None:
        self.active = False
        self.depth = 0
        self.bytes = 0
        self.calls: dict[str, int] = {}
        self._originals: dict[str, Callable[..., Any]] = {}

    def _sent(self, name: str, args: tuple, kwargs: dict) -> int:
        if name == "barrier":
            return 0
        if name == "all_gather_object":
            return len(pickle.dumps(args[1] if len(args) > 1 else kwargs["obj"]))
        if name == "broadcast_object_list":
            src = args[1] if len(args) > 1 else kwargs.get("src", 0)
            objects = args[0] if args else kwargs["object_list"]
            return len(pickle.dumps(objects)) if dist.get_rank() == src else 0
        if name in ("all_gather", "gather", "reduce_scatter", "all_to_all"):
            # all_gather(output_list, input), gather(input, ...), reduce_scatter(output, input_list)
            sent = args[1] if name in ("all_gather", "reduce_scatter", "all_to_all") else args[0]
            return _tensor_bytes(sent)
        if name == "all_gather_into_tensor":
            return _tensor_bytes(args[1] if len(args) > 1 else kwargs["input_tensor"])
        if name in ("broadcast", "scatter"):
            src = args[1] if len(args) > 1 else kwargs.get("src", 0)
            return _tensor_bytes(args[0]) if dist.get_rank() == src else 0
        return _tensor_bytes(args[0] if args else next(iter(kwargs.values())))

    def install(self) -> None:
        for name in WRAPPED:
            original = getattr(dist, name, None)
            if original is None:
                continue
            self._originals[name] = original

            def wrapper(*args: Any, _name: str = name, _original: Callable[..., Any] = original, **kwargs: Any) -> Any:
                if self.active and self.depth == 0:
                    self.bytes += self._sent(_name, args, kwargs)
                    self.calls[_name] = self.calls.get(_name, 0) + 1
                self.depth += 1
                try:
                    return _original(*args, **kwargs)
                finally:
                    self.depth -= 1

            setattr(dist, name, wrapper)
            if hasattr(dist.distributed_c10d, name):
                setattr(dist.distributed_c10d, name, wrapper)


def _worker(rank: int, world: int, port: int, ns: list[int], dim: int, batch: int, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        from mid_metric import MutualInformationDivergence

        counter = ByteCounter()
        counter.install()
        generator = torch.Generator().manual_seed(rank)
        direction = common_direction(dim)
        pool = [near_direction(direction, batch, generator) for _ in range(6)]
        for n in ns:
            _one_sync(MutualInformationDivergence(feature=dim, eps=5e-4), counter, pool, rank, world, n, batch, out_dir)
    finally:
        dist.destroy_process_group()


def _one_sync(
    metric: Any, counter: ByteCounter, pool: list, rank: int, world: int, n: int, batch: int, out: str
) -> None:
    """Feed ``n / world`` pairs per group on this rank, then count what ``compute()`` sends."""
    local = n // world
    for index, offset in enumerate(range(0, local, batch)):
        size = min(batch, local - offset)
        metric.update(pool[index % 3][:size], pool[3 + index % 3][:size], real=True)
        metric.update(pool[(index + 1) % 3][:size], pool[3 + index % 3][:size], real=False)
    state_bytes = sum(_tensor_bytes(value) for value in metric.metric_state.values())
    counter.bytes, counter.calls = 0, {}
    counter.active = True
    value = float(metric.compute())
    counter.active = False
    result = {
        "rank": rank,
        "n": n,
        "dim": metric.image_dim,
        "bytes_sent": counter.bytes,
        "calls": counter.calls,
        "state_bytes": state_bytes,
        "mid": value,
        "sync_fn": getattr(metric.dist_sync_fn, "__name__", repr(metric.dist_sync_fn)),
    }
    with open(os.path.join(out, f"rank{rank}_n{n}.json"), "w") as handle:
        json.dump(result, handle)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def measure(ns: list[int], dim: int = 768, batch: int = 256, world: int = 2) -> list[dict]:
    """Run one sync per ``n`` with ``world`` gloo processes; return rank 0's figures plus the largest over ranks."""
    results = []
    with tempfile.TemporaryDirectory() as out_dir:
        mp.spawn(_worker, args=(world, _free_port(), list(ns), dim, batch, out_dir), nprocs=world, join=True)
        for n in ns:
            ranks = []
            for rank in range(world):
                with open(os.path.join(out_dir, f"rank{rank}_n{n}.json")) as handle:
                    ranks.append(json.load(handle))
            result = dict(ranks[0])
            result["max_bytes_sent"] = max(r["bytes_sent"] for r in ranks)
            result["world"] = world
            results.append(result)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, nargs="+", default=[1000, 100000], help="total pairs per group")
    parser.add_argument("--dim", type=int, default=768, help="feature size per modality")
    parser.add_argument("--batch", type=int, default=256)
    args = parser.parse_args()
    for result in measure(args.n, args.dim, args.batch):
        print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
