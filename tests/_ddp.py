"""One launcher for every multi-process test: gloo on localhost, one spawned process per rank.

``run_in_processes(worker, *args)`` starts ``world_size`` processes, initialises a gloo process group in each, calls
``worker(rank, world_size, *args)`` and returns what each rank returned (anything ``torch.save`` can store), in rank
order. The worker must be a module-level function (spawned processes import it by name).

Every collective times out after ``timeout_s`` seconds (gloo's default is 30 minutes), so that a test of ranks that
could block each other fails with an error instead of hanging the suite.
"""

from __future__ import annotations

import os
import socket
import sys
import tempfile
from datetime import timedelta
from pathlib import Path
from typing import Any, Callable

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

WORLD_SIZE = 2
#: Seconds a collective may wait for the other ranks before it fails.
TIMEOUT_S = 120

#: Marks for tests that use this launcher.
ddp_marks = [
    pytest.mark.slow,
    pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not available"),
    pytest.mark.skipif(sys.platform == "win32", reason="gloo over localhost TCP is not set up for Windows here"),
]


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _entry(
    rank: int, world_size: int, port: int, out_dir: str, timeout_s: float, worker: Callable[..., Any], args: tuple
) -> None:
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world_size, timeout=timedelta(seconds=timeout_s))
    try:
        result = worker(rank, world_size, *args)
        dist.barrier()
        torch.save(result, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def run_in_processes(
    worker: Callable[..., Any], *args: Any, world_size: int = WORLD_SIZE, timeout_s: float = TIMEOUT_S
) -> list[Any]:
    """Run ``worker(rank, world_size, *args)`` on ``world_size`` gloo ranks and return their results."""
    with tempfile.TemporaryDirectory() as out_dir:
        mp.start_processes(
            _entry,
            args=(world_size, _free_port(), out_dir, timeout_s, worker, args),
            nprocs=world_size,
            join=True,
            start_method="spawn",
        )
        return [torch.load(Path(out_dir) / f"rank{rank}.pt", weights_only=False) for rank in range(world_size)]
