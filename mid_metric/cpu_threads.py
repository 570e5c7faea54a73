"""torch's CPU threads where a parallel region costs more than it gives: one thread, or pieces side by side.

torch runs an operation on all its intra-op threads, and a parallel region ends only once every thread has run. For
memory-bound passes over a matrix, and for LAPACK routines on a few hundred columns that synchronise their threads
many times (a Cholesky factor's inverse), the barriers cost more than the work: on a busy machine, where a thread
may wait for a time slice at every barrier, a region costs the waiting threads' CPU time as well (about 8 ms a
region on the shared 2-core machine of the benchmarks). :func:`one_thread` runs such operations on one thread;
:func:`side_by_side` runs independent pieces of such work at once, each on one thread, so that the cores are
still used, without barriers inside each piece. Operations on other devices are not affected.
"""

from __future__ import annotations

import contextlib
import itertools
import threading
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Optional, TypeVar

import torch

__all__ = ["one_thread", "side_by_side"]

Item = TypeVar("Item")
Result = TypeVar("Result")


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """Run torch's CPU operations inside on one thread, then restore the number of threads.

    torch keeps the count per OS thread in its OpenMP builds, and a thread that starts using torch takes the count
    last set by any thread: threads that first call torch inside this block keep one thread afterwards.

    Yields:
        Nothing; torch runs on one thread in the block.

    Example:
        >>> with one_thread():
        ...     torch.get_num_threads()
        1
    """
    threads = torch.get_num_threads()
    if threads == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def side_by_side(
    function: Callable[[Item], Result], items: Sequence[Item], at_most: Optional[int] = None
) -> list[Result]:
    """Return ``[function(item) for item in items]``, computed up to ``torch.get_num_threads()`` at a time.

    For CPU work: each call runs on one torch thread, in the calling thread or in a short-lived helper thread (torch
    releases the GIL in its operations), with the caller's grad and inference modes but not its other thread-local
    settings (CUDA device and stream, autocast). The threads take the items in order, one at a time. With one torch
    thread, or one item, this is the loop itself.

    Args:
        function: Called once per item; it must not depend on the order in which the items are computed.
        items: The items.
        at_most: The most calls at a time (``None``: as many as torch's threads), for calls that hold much memory.

    Returns:
        The results, in the order of ``items``.

    Raises:
        ValueError: If ``at_most`` is not ``None`` or a positive integer.
        Exception: The error of the first failing item, as the loop would raise it: no item after a failed one is
            started. An interrupt (``KeyboardInterrupt``) stops the helpers after their current items.

    Example:
        >>> side_by_side(lambda matrix: torch.linalg.cholesky(matrix).diagonal().prod().item(), [4 * torch.eye(2)] * 3)
        [4.0, 4.0, 4.0]
    """
    if at_most is not None and (isinstance(at_most, bool) or not isinstance(at_most, int) or at_most < 1):
        raise ValueError(f"`at_most` must be None or a positive integer, got {at_most!r}.")
    workers = min(len(items), torch.get_num_threads(), at_most or len(items))
    with one_thread():
        if workers <= 1:
            return [function(item) for item in items]
        results: dict[int, Result] = {}
        errors: dict[int, Exception] = {}
        lock, stop = threading.Lock(), threading.Event()
        claims = itertools.count()  # (``next`` on it is atomic under the GIL)
        grad, inference = torch.is_grad_enabled(), torch.is_inference_mode_enabled()

        def take_items() -> None:
            for index in iter(claims.__next__, None):
                with lock:
                    if stop.is_set() or index >= len(items) or any(failed < index for failed in errors):
                        return
                try:
                    results[index] = function(items[index])
                except Exception as error:  # re-raised below, in the calling thread, if no earlier item fails
                    with lock:
                        errors[index] = error

        def helper() -> None:
            torch.set_num_threads(1)  # (per thread: a helper may not have taken the caller's count)
            with torch.inference_mode(inference), torch.set_grad_enabled(grad):
                take_items()

        with ThreadPoolExecutor(max_workers=workers - 1) as pool:
            helpers = [pool.submit(helper) for _ in range(workers - 1)]
            try:
                take_items()
                for running in helpers:
                    running.result()
            finally:
                stop.set()
    if errors:
        raise errors[min(errors)]
    return [results[index] for index in range(len(items))]
