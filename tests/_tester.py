"""The metric tester every metric's tests use (in the spirit of torchmetrics' ``MetricTester``).

A :class:`MetricCase` is a metric factory, the ``update`` calls that feed it, the value an independent
implementation gives for all of those pairs, and optionally the functional twin's value. The checks run the metric
in every way a user can and compare each result with ``expected``:

* :func:`check_single`: the calls in order, and the functional twin;
* :func:`check_batch_splits` and :func:`check_order`: smaller batches, and the calls in reverse order;
* :func:`check_round_trips`: pickle, ``clone()``, ``state_dict()`` into a fresh metric, and ``merge_state`` of two
  metrics that each saw half of the calls (as a metric and as a ``metric_state`` dict);
* :func:`check_ddp`: 2 gloo processes (the launcher of ``_ddp``), with uneven shares and with one empty rank.
"""

from __future__ import annotations

import math
import pickle
from dataclasses import dataclass
from typing import Any, Callable, Optional

import torch
from _ddp import run_in_processes
from torch import Tensor
from torchmetrics import Metric

Call = tuple[tuple, dict]


@dataclass
class MetricCase:
    """A metric and what it is fed; ``factory`` and the calls must pickle (they travel to DDP ranks)."""

    factory: Callable[[], Metric]
    calls: list[Call]
    expected: float
    functional: Optional[Callable[[], Tensor]] = None
    rel: float = 1e-10
    abs: float = 1e-12


def _run(case: MetricCase, calls: list[Call]) -> Metric:
    metric = case.factory()
    for args, kwargs in calls:
        metric.update(*args, **kwargs)
    return metric


def _assert_close(value: Tensor, case: MetricCase, what: str) -> None:
    assert value.dtype == torch.float64, what
    got = float(value)
    assert math.isclose(got, case.expected, rel_tol=case.rel, abs_tol=case.abs), (what, got, case.expected)


def _split_call(call: Call, size: int) -> list[Call]:
    """Split one call's batch (its tensor and list arguments, along dim 0) into calls of ``size`` rows."""
    args, kwargs = call
    batched = [a for a in args if isinstance(a, (Tensor, list))]
    rows = len(batched[0])
    out = []
    for start in range(0, rows, size):
        piece = tuple(a[start : start + size] if isinstance(a, (Tensor, list)) else a for a in args)
        out.append((piece, kwargs))
    return out


def check_single(case: MetricCase) -> None:
    """The calls in order give ``expected``, and so does the functional twin."""
    _assert_close(_run(case, case.calls).compute(), case, "in order")
    if case.functional is not None:
        _assert_close(case.functional(), case, "functional")


def check_batch_splits(case: MetricCase, sizes: tuple[int, ...] = (1, 7, 64)) -> None:
    """Every call re-cut into batches of each of ``sizes`` rows gives ``expected``."""
    for size in sizes:
        calls = [piece for call in case.calls for piece in _split_call(call, size)]
        _assert_close(_run(case, calls).compute(), case, f"batches of {size}")


def check_order(case: MetricCase) -> None:
    """The calls in reverse order give ``expected``."""
    _assert_close(_run(case, case.calls[::-1]).compute(), case, "reversed")


def check_round_trips(case: MetricCase) -> None:
    """Pickle, clone, ``state_dict`` and ``merge_state`` keep the value, and the copies are independent."""
    metric = _run(case, case.calls)
    for what, copy in (("pickle", pickle.loads(pickle.dumps(metric))), ("clone", metric.clone())):
        _assert_close(copy.compute(), case, what)
    fresh = case.factory()
    fresh.load_state_dict(metric.state_dict())
    _assert_close(fresh.compute(), case, "state_dict")
    half = len(case.calls) // 2
    for as_dict in (False, True):
        first, second = _run(case, case.calls[:half]), _run(case, case.calls[half:])
        first.merge_state(second.metric_state if as_dict else second)
        _assert_close(first.compute(), case, f"merge_state (dict={as_dict})")
    _assert_close(metric.compute(), case, "original after the copies")


# Per plan, which rank makes call i of n: uneven shares (a third and two thirds), or everything on rank 0.
_PLANS: dict[str, Callable[[int, int], int]] = {
    "uneven": lambda i, n: 0 if i < max(1, n // 3) else 1,
    "one_empty_rank": lambda i, n: 0,
}


def _ddp_worker(rank: int, world_size: int, cases: tuple[MetricCase, ...]) -> list[dict[str, Any]]:
    results = []
    for case in cases:
        values = {}
        for plan, owner in _PLANS.items():
            calls = [call for i, call in enumerate(case.calls) if owner(i, len(case.calls)) == rank]
            values[plan] = _run(case, calls).compute().item()  # a collective: every rank computes
        results.append(values)
    return results


def check_ddp(*cases: MetricCase) -> None:
    """Two gloo ranks, with uneven shares and with one empty rank: every rank computes ``expected``.

    The cases share one launch of the processes.
    """
    reports = run_in_processes(_ddp_worker, cases)
    for rank, report in enumerate(reports):
        for case, values in zip(cases, report):
            for plan, got in values.items():
                assert math.isclose(got, case.expected, rel_tol=case.rel, abs_tol=case.abs), (rank, plan, got)


def check_all_in_process(case: MetricCase) -> None:
    """Every single-process check."""
    check_single(case)
    check_batch_splits(case)
    check_order(case)
    check_round_trips(case)
