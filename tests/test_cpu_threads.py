"""torch's CPU threads (mid_metric.cpu_threads): one thread, pieces side by side, and the fits that use them.

The test processes run torch on one thread (``tests/conftest.py``), where :func:`side_by_side` is the plain loop; these
tests set more threads so that the helper threads run.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import torch

from mid_metric import moments
from mid_metric.cpu_threads import one_thread, side_by_side
from mid_metric.functional.frechet_moments import jackknife_frechet_distance
from mid_metric.jackknife import (
    group_moments,
    jackknife_estimates,
    jackknife_mutual_information,
    left_out_fits,
    row_groups,
)

F64 = torch.float64


@contextmanager
def torch_threads(count: int) -> Iterator[None]:
    """torch on ``count`` threads inside, restored after."""
    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def test_one_thread_restores_the_threads_after_an_error():
    with torch_threads(2):
        with pytest.raises(RuntimeError, match="inside"):
            with one_thread():
                assert torch.get_num_threads() == 1
                raise RuntimeError("inside")
        assert torch.get_num_threads() == 2


@pytest.mark.parametrize("threads", [2, 3])
def test_side_by_side_keeps_the_order_when_items_finish_out_of_order(threads):
    finished = {index: threading.Event() for index in range(6)}
    seen = []

    def square(value: int) -> int:
        if value == 0:  # item 0 ends only after item 1, which another thread computes
            assert finished[1].wait(timeout=10)
        seen.append((value, torch.get_num_threads(), threading.current_thread().name))
        finished[value].set()
        return value * value

    with torch_threads(threads):
        assert side_by_side(square, list(range(6))) == [value * value for value in range(6)]
        assert torch.get_num_threads() == threads
    assert [value for value, _, _ in seen].index(1) < [value for value, _, _ in seen].index(0)
    assert sorted((value, count) for value, count, _ in seen) == [(value, 1) for value in range(6)]
    assert len({name for _, _, name in seen}) >= 2  # helper threads ran items, each on one torch thread


def test_side_by_side_with_one_thread_or_no_items_is_the_loop():
    calls = []
    with torch_threads(1):
        assert side_by_side(lambda value: calls.append(threading.current_thread().name) or -value, [1, 2, 3]) == [
            -1,
            -2,
            -3,
        ]
        assert side_by_side(lambda value: value, []) == []
    with torch_threads(2):
        assert side_by_side(lambda value: calls.append(threading.current_thread().name) or value, [7]) == [7]
    assert set(calls) == {threading.current_thread().name}


@pytest.mark.parametrize("inference", [False, True])
def test_side_by_side_calls_see_the_callers_grad_and_inference_modes(inference):
    barrier = threading.Barrier(2, timeout=10)  # both calls at once, so one of them runs in a helper thread

    def modes(_: int) -> tuple[bool, bool, str]:
        barrier.wait()
        return torch.is_grad_enabled(), torch.is_inference_mode_enabled(), threading.current_thread().name

    with torch_threads(2), torch.inference_mode(inference), torch.no_grad():
        seen = side_by_side(modes, [0, 1])
    assert {(grad, mode) for grad, mode, _ in seen} == {(False, inference)}
    assert len({name for _, _, name in seen}) == 2


def test_side_by_side_runs_the_items_at_once_up_to_at_most():
    # Two items that each wait for the other: only concurrent calls get past the barrier (a loop breaks it).
    barrier = threading.Barrier(2, timeout=10)

    def meet(value: int) -> int:
        barrier.wait()
        return value

    with torch_threads(2):
        assert side_by_side(meet, [1, 2]) == [1, 2]
    lonely = threading.Barrier(2, timeout=0.2)
    with torch_threads(1), pytest.raises(threading.BrokenBarrierError):
        side_by_side(lambda value: lonely.wait() and value, [1, 2])  # one torch thread: the loop
    lonely = threading.Barrier(2, timeout=0.2)
    with torch_threads(3), pytest.raises(threading.BrokenBarrierError):
        side_by_side(lambda value: lonely.wait() and value, [1, 2], at_most=1)


@pytest.mark.parametrize("at_most", [0, -1, 1.5, True, "2"])
def test_side_by_side_refuses_a_bad_at_most(at_most):
    with pytest.raises(ValueError, match="`at_most` must be None or a positive integer"):
        side_by_side(lambda value: value, [1, 2], at_most=at_most)


def test_side_by_side_raises_the_first_failing_items_error_when_a_later_one_fails_first():
    later_failed = threading.Event()
    started = []

    def check(value: int) -> int:
        started.append(value)
        if value == 3:  # fails only after item 5 has failed in the other thread
            assert later_failed.wait(timeout=10)
            raise ValueError("item 3")
        if value == 5:
            later_failed.set()
            raise ValueError("item 5")
        return value

    with torch_threads(2):
        with pytest.raises(ValueError, match="item 3"):
            side_by_side(check, list(range(12)))
        assert torch.get_num_threads() == 2
    assert sorted(started) == [0, 1, 2, 3, 4, 5]  # nothing after a failed item was started


def test_side_by_side_stops_the_helpers_on_an_interrupt():
    helper_started = threading.Event()
    started = []

    def work(value: int) -> int:
        started.append(value)
        if threading.current_thread() is threading.main_thread():  # interrupted while a helper computes its item
            assert helper_started.wait(timeout=10)
            raise KeyboardInterrupt
        helper_started.set()
        time.sleep(0.2)
        return value

    with torch_threads(2):
        with pytest.raises(KeyboardInterrupt):
            side_by_side(work, list(range(6)))
        assert torch.get_num_threads() == 2
    assert len(started) == 2  # the interrupted item and the helper's: no other item was started


def _pairs(shared: str, seed: int, n: int = 800, dx: int = 6, dy: int = 5):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, dx, dtype=F64, generator=g) + 1.0
    y = 0.6 * x[:, :dy] + torch.randn(n, dy, dtype=F64, generator=g)
    if shared == "text":
        x0 = 0.3 * torch.cat([y, y[:, :1]], 1) + torch.randn(n, dx, dtype=F64, generator=g)
        return moments.joint_rows(x, y), moments.joint_rows(x0, y)
    x0 = torch.randn(n, dx, dtype=F64, generator=g)
    y0 = 0.5 * x0[:, :dy] + torch.randn(n, dy, dtype=F64, generator=g)
    return moments.joint_rows(x, y), moments.joint_rows(x0, y0)


@pytest.mark.parametrize("shared", ["text", None])
def test_jackknife_fits_side_by_side_equal_the_fits_one_after_the_other(shared):
    reference_rows, candidate_rows = _pairs(shared or "none", 3)
    groups = (group_moments(reference_rows, 6, 7, "text"), group_moments(candidate_rows, 6, 7, "text"))
    alone = jackknife_estimates(*groups, image_dim=6)  # one torch thread: the loop
    with torch_threads(2):
        together = jackknife_estimates(*groups, image_dim=6)
    assert together.shared == alone.shared == shared
    assert together.left_out.shape == alone.left_out.shape == (7, 3)
    # Each fit runs on one thread either way, in its own order of operations: the same bits.
    assert torch.equal(together.left_out, alone.left_out)


def test_a_failing_fit_side_by_side_raises_the_loops_error():
    reference_rows, candidate_rows = _pairs("none", 4)
    labels = row_groups(reference_rows, 6, 7, "text")
    # Image column 0 varies only in group 2's rows: the full sample is fine, but the subset without group 2 has a
    # constant first column (not positive definite).
    reference_rows[labels != 2, 0] = 0.5
    groups = (group_moments(reference_rows, 6, 7, "text"), group_moments(candidate_rows, 6, 7, "text"))
    with pytest.raises(ValueError, match="not positive definite") as alone:
        jackknife_estimates(*groups, image_dim=6)
    for threads in (2, 3):
        with torch_threads(threads), pytest.raises(ValueError, match="not positive definite") as together:
            jackknife_estimates(*groups, image_dim=6)
        assert str(together.value) == str(alone.value)


def test_left_out_fits_run_side_by_side_on_the_cpu_only():
    def where(k: int) -> torch.Tensor:
        time.sleep(0.05)  # long enough that a helper thread takes some of the items
        return torch.tensor(float(k)), threading.current_thread().name

    with torch_threads(2):
        on_cpu = left_out_fits(where, list(range(6)), torch.device("cpu"))
        elsewhere = left_out_fits(where, list(range(6)), torch.device("meta"))  # any other device: the loop
    assert [float(value) for value, _ in on_cpu] == [float(value) for value, _ in elsewhere] == list(range(6))
    assert len({name for _, name in on_cpu}) == 2
    assert {name for _, name in elsewhere} == {threading.current_thread().name}


def test_frechet_and_mutual_information_jackknives_side_by_side_equal_the_loop():
    g = torch.Generator().manual_seed(5)
    real, generated = torch.randn(900, 8, dtype=F64, generator=g), 1.3 * torch.randn(900, 8, dtype=F64, generator=g)
    groups = (group_moments(real, 8, 6, "image"), group_moments(generated, 8, 6, "image"))
    reference_rows = _pairs("none", 6)[0]
    reference_groups = group_moments(reference_rows, 6, 6, "text")
    alone = jackknife_frechet_distance(*groups), jackknife_mutual_information(reference_groups, 6)
    with torch_threads(2):
        together = jackknife_frechet_distance(*groups), jackknife_mutual_information(reference_groups, 6)
    for first, second in zip(
        [alone[0].value, alone[0].standard_error, *alone[1]],
        [together[0].value, together[0].standard_error, *together[1]],
    ):
        assert torch.equal(first, second)
