"""Bytes that a rank passes to torch.distributed collectives when MID syncs, with 2 real gloo processes.

The collectives are the real ones; the workers only wrap them to add up the sizes of the tensors they send and
receive. With the default all-reduce sync, a rank sends and receives exactly one state's size per state, whatever
the number of samples (N = 1k and 20k here); torchmetrics' all-gather sync receives world_size states per state.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.distributed as dist
from _ddp import run_in_processes
from reference_impl import ref_mid_terms
from torchmetrics.utilities.distributed import gather_all_tensors

from mid_metric import MutualInformationDivergence
from mid_metric.moments import packed_size

DIM = 8  # per modality; the packed state is (2 * DIM + 1)^2 float64 numbers
WORLD = 2
SIZES = (1000, 20000)


def _data(n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(n)
    x = torch.randn(n, DIM, generator=g, dtype=torch.float64) + 2.0
    y = 0.6 * x + torch.randn(n, DIM, generator=g, dtype=torch.float64)
    x0 = x + 0.5 * torch.randn(n, DIM, generator=g, dtype=torch.float64)
    return x, y, x0


def _share(n: int, rank: int) -> slice:
    return slice(0, n // 4) if rank == 0 else slice(n // 4, n)  # uneven: a quarter and three quarters


class _Counter:
    """Wraps the real collectives and adds up the bytes of the tensors passed to them."""

    def __init__(self) -> None:
        self.sent = 0
        self.received = 0
        self.calls: list[str] = []
        self._originals = {name: getattr(dist, name) for name in ("all_reduce", "all_gather", "broadcast")}

    def __enter__(self) -> _Counter:
        def all_reduce(tensor, *args, **kwargs):
            self.calls.append("all_reduce")
            self.sent += tensor.numel() * tensor.element_size()
            self.received += tensor.numel() * tensor.element_size()
            return self._originals["all_reduce"](tensor, *args, **kwargs)

        def all_gather(tensor_list, tensor, *args, **kwargs):
            self.calls.append("all_gather")
            self.sent += tensor.numel() * tensor.element_size()
            self.received += sum(t.numel() * t.element_size() for t in tensor_list)
            return self._originals["all_gather"](tensor_list, tensor, *args, **kwargs)

        def broadcast(tensor, *args, **kwargs):
            self.calls.append("broadcast")
            self.sent += tensor.numel() * tensor.element_size()
            return self._originals["broadcast"](tensor, *args, **kwargs)

        dist.all_reduce, dist.all_gather, dist.broadcast = all_reduce, all_gather, broadcast
        return self

    def __exit__(self, *exc: object) -> None:
        for name, fn in self._originals.items():
            setattr(dist, name, fn)


def _worker(rank: int, world_size: int) -> dict:
    report: dict = {}
    for n in SIZES:
        x, y, x0 = _data(n)
        rows = _share(n, rank)
        for name, sync_fn in (("all_reduce", None), ("all_gather", gather_all_tensors)):
            metric = MutualInformationDivergence(feature=DIM, dist_sync_fn=sync_fn)
            for start in range(rows.start, rows.stop, 500):
                batch = slice(start, min(start + 500, rows.stop))
                metric.update(x[batch], y[batch], real=True)
                metric.update(x0[batch], y[batch], real=False)
            with _Counter() as counter:
                result = metric.compute_result()
            report[f"{name}/{n}"] = {
                "sent": counter.sent,
                "received": counter.received,
                "calls": counter.calls,
                "mid": result.mid.item(),
                "num_reference": result.num_reference,
            }
    # A rank with no candidates and no reference pairs at all, and an all-empty candidate state.
    x, y, x0 = _data(300)
    metric = MutualInformationDivergence(feature=DIM)
    if rank == 0:
        metric.update(x, y, real=True)
        metric.update(x0, y, real=False)
    report["empty_rank"] = metric.compute().item()
    only_reference = MutualInformationDivergence(feature=DIM)
    only_reference.update(x[_share(300, rank)], y[_share(300, rank)], real=True)
    try:
        only_reference.compute()
        report["no_candidates"] = "no error"
    except ValueError as error:
        report["no_candidates"] = str(error)
    return report


@pytest.fixture(scope="module")
def reports() -> list[dict]:
    return run_in_processes(_worker, world_size=WORLD)


@pytest.mark.slow
def test_all_reduce_sync_sends_one_state_per_state_independent_of_n(reports):
    state_bytes = packed_size(2 * DIM) * 8
    for report in reports:
        traffic = [(report[f"all_reduce/{n}"]["sent"], report[f"all_reduce/{n}"]["received"]) for n in SIZES]
        assert traffic[0] == traffic[1], "sync traffic must not depend on the number of samples"
        # Two states (reference, candidates), each exactly one state's size in two all-reduces, after the one
        # int64 digest of the settings and the 3-number int64 format record, each gathered from every rank
        # (checked before any statistics move).
        record_bytes = 8 + 3 * 8
        assert traffic[0] == (2 * state_bytes + record_bytes, 2 * state_bytes + WORLD * record_bytes)
        assert report[f"all_reduce/{SIZES[0]}"]["calls"] == ["all_gather"] * 2 + ["all_reduce"] * 4
        # torchmetrics' all-gather sync sends as much, but every rank receives world_size states per state.
        gathered = report[f"all_gather/{SIZES[1]}"]
        assert gathered["received"] >= WORLD * 2 * state_bytes
        assert gathered["received"] == report[f"all_gather/{SIZES[0]}"]["received"]


@pytest.mark.slow
def test_synced_value_equals_single_process(reports):
    for n in SIZES:
        x, y, x0 = _data(n)
        expected = ref_mid_terms(x, y, x0, y)[0]
        for report in reports:
            for name in ("all_reduce", "all_gather"):
                entry = report[f"{name}/{n}"]
                assert entry["num_reference"] == n
                assert math.isclose(entry["mid"], expected, rel_tol=1e-10, abs_tol=1e-10), (name, n)
        # Both ranks computed the same value with both sync functions.
        values = {r[f"{name}/{n}"]["mid"] for r in reports for name in ("all_reduce", "all_gather")}
        assert max(values) - min(values) <= 1e-12 * max(1.0, abs(expected))


@pytest.mark.slow
def test_rank_with_zero_samples(reports):
    x, y, x0 = _data(300)
    expected = ref_mid_terms(x, y, x0, y)[0]
    for report in reports:
        assert math.isclose(report["empty_rank"], expected, rel_tol=1e-10)
        # No rank has candidates: every rank raises the same clear error instead of hanging.
        assert "candidate" in report["no_candidates"]
