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

    The setting is the process's: other threads that run torch operations meanwhile run them on one thread too.

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

    Each call runs on one torch thread (:func:`one_thread`), in the calling thread or in a short-lived helper thread
    (torch releases the GIL in its operations), with the caller's grad and inference modes; the threads take the
    items in order, one at a time. With one torch thread, or one item, this is the loop itself.

    Args:
        function: Called once per item; it must not depend on the order in which the items are computed.
        items: The items.
        at_most: The most calls at a time (``None``: as many as torch's threads), for calls that hold much memory.

    Returns:
        The results, in the order of ``items``.

    Raises:
        Exception: The error of the first failing item, as the loop would raise it; no item is started once a call
            has failed.

    Example:
        >>> side_by_side(lambda matrix: torch.linalg.cholesky(matrix).diagonal().prod().item(), [4 * torch.eye(2)] * 3)
        [4.0, 4.0, 4.0]
    """
    workers = min(len(items), torch.get_num_threads(), at_most or len(items))
    with one_thread():
        if workers <= 1:
            return [function(item) for item in items]
        results: dict[int, Result] = {}
        errors: dict[int, BaseException] = {}
        claims = itertools.count()  # (``next`` on it is atomic under the GIL)

        grad, inference = torch.is_grad_enabled(), torch.is_inference_mode_enabled()

        def work() -> None:
            with torch.inference_mode(inference), torch.set_grad_enabled(grad):  # (thread-local: the caller's)
                take_items()

        def take_items() -> None:
            for index in iter(claims.__next__, None):
                if index >= len(items) or errors:
                    return
                try:
                    results[index] = function(items[index])
                except BaseException as error:  # re-raised below, in the calling thread
                    errors[index] = error

        with ThreadPoolExecutor(max_workers=workers - 1) as pool:
            helpers = [pool.submit(work) for _ in range(workers - 1)]
            work()
            for helper in helpers:
                helper.result()
    if errors:
        raise errors[min(errors)]
    return [results[index] for index in range(len(items))]
