"""Two-process DDP (torch.distributed, gloo on localhost): the synced value equals the single-process value.

One launch of 2 spawned processes runs three scenarios; each rank saves what it saw and the parent compares.
"""

from __future__ import annotations

import pytest
import torch
from _ddp import WORLD_SIZE, ddp_marks, run_in_processes
from reference_impl import ClipLikeDistribution, ref_mid, well_conditioned_pairs

from mid_metric import MutualInformationDivergence

DX, DY = 6, 5
REL = 1e-10
HARD_ABS = 5e-9

pytestmark = ddp_marks


def _data():
    x, y = well_conditioned_pairs(400, DX, DY, seed=0)
    x0, y0 = well_conditioned_pairs(300, DX, DY, seed=1, strength=0.3)
    return x, y, x0, y0


def _hard_data():
    dist_ = ClipLikeDistribution(32, 32, seed=7)
    x, y = dist_.sample(1500, seed=8)
    x0, y0 = dist_.sample(1000, seed=9, rho_scale=0.95)
    return x, y, x0, y0


# Per scenario, per rank: (reference row ranges, candidate row ranges), each range one update() call.
# Uneven numbers of batches per rank; rank 1 sees no candidates ("well", "hard"), or nothing at all ("idle").
SPLITS = {
    "well": {
        0: ([(0, 50), (50, 170)], [(0, 7), (7, 100), (100, 300)]),
        1: ([(170, 171), (171, 250), (250, 330), (330, 390), (390, 400)], []),
    },
    "hard": {
        0: ([(0, 700)], [(0, 1), (1, 400), (400, 1000)]),
        1: ([(700, 701), (701, 1200), (1200, 1500)], []),
    },
    "idle": {
        0: ([(0, 400)], [(0, 300)]),
        1: ([], []),
    },
}


MISMATCHES = {"other_split": {0: (6, 5), 1: (5, 6)}, "other_size": {0: (6, 5), 1: (6, 6)}}


def _fill(metric, data, ranges):
    x, y, x0, y0 = data
    for start, stop in ranges[0]:
        metric.update(x[start:stop], y[start:stop], real=True)
    for start, stop in ranges[1]:
        metric.update(x0[start:stop], y0[start:stop], real=False)


def _worker(rank: int, world_size: int) -> dict:
    report = {}
    for scenario, split in SPLITS.items():
        data = _hard_data() if scenario == "hard" else _data()
        metric = MutualInformationDivergence(feature=(data[0].shape[1], data[1].shape[1]))
        _fill(metric, data, split[rank])
        local = {k: v.clone() for k, v in metric.metric_state.items()}
        value = metric.compute()  # a collective: every rank calls it
        after = {k: v.clone() for k, v in metric.metric_state.items()}
        result = metric.compute_result()  # cached value, no second sync
        # Accumulation goes on after compute (states were unsynced), and a second compute syncs again.
        # Every rank must update before the next compute(): torchmetrics returns the cached value, without the
        # collective, on a rank that has not updated since its last compute, and the ranks would then deadlock.
        # Rank 0's batch is empty (it changes no statistic but clears the cache).
        rows = slice(0, 5) if rank == 1 else slice(0, 0)
        metric.update(data[2][rows], data[3][rows], real=False)
        second = metric.compute()
        report[scenario] = {
            "value": value,
            "mid": result.mid,
            "mi": result.mutual_information,
            "num_reference": result.num_reference,
            "num_candidates": result.num_candidates,
            "local": local,
            "after": after,
            "second": second,
        }
    # Ranks built with another feature split (same total size), or another size: every rank must raise the
    # same clear error before any statistic is reduced (0.1 mixed the former silently and aborted inside gloo
    # on the latter), and the processes stay usable afterwards.
    for scenario, features in MISMATCHES.items():
        dims = features[rank]
        metric = MutualInformationDivergence(feature=dims)
        z = torch.randn(40, sum(dims), generator=torch.Generator().manual_seed(rank))
        metric.update(z[:, : dims[0]], z[:, dims[0] :], real=True)
        metric.update(z[:10, : dims[0]], z[:10, dims[0] :], real=False)
        before = {k: v.clone() for k, v in metric.metric_state.items()}
        try:
            metric.compute()
            report[scenario] = {"error": None}
        except ValueError as error:
            report[scenario] = {"error": str(error)}
        report[scenario]["unchanged"] = all(torch.equal(before[k], v) for k, v in metric.metric_state.items())
    return report


@pytest.fixture(scope="module")
def reports():
    return run_in_processes(_worker, world_size=WORLD_SIZE)


def _single_process(scenario):
    data = _hard_data() if scenario == "hard" else _data()
    metric = MutualInformationDivergence(feature=(data[0].shape[1], data[1].shape[1]))
    for rank in range(WORLD_SIZE):
        _fill(metric, data, SPLITS[scenario][rank])
    return metric.compute(), data


@pytest.mark.parametrize("scenario", list(SPLITS))
def test_ddp_equals_single_process(reports, scenario):
    single, data = _single_process(scenario)
    total_ref = sum(b - a for rank in range(WORLD_SIZE) for a, b in SPLITS[scenario][rank][0])
    total_cand = sum(b - a for rank in range(WORLD_SIZE) for a, b in SPLITS[scenario][rank][1])
    assert total_ref == data[0].shape[0] and total_cand == data[2].shape[0]
    for rank, report in enumerate(reports):
        got = report[scenario]
        assert got["value"].dtype == torch.float64
        assert got["value"].item() == pytest.approx(single.item(), rel=REL, abs=0.0), rank
        assert torch.equal(got["mid"], got["value"])
        assert (got["num_reference"], got["num_candidates"]) == (total_ref, total_cand)
    assert torch.equal(reports[0][scenario]["value"], reports[1][scenario]["value"])  # all ranks agree exactly
    if scenario == "hard":
        assert abs(reports[0][scenario]["value"].item() - ref_mid(*data)) <= HARD_ABS


@pytest.mark.parametrize("scenario", list(SPLITS))
def test_local_state_restored_after_compute(reports, scenario):
    for rank, report in enumerate(reports):
        got = report[scenario]
        for name, local in got["local"].items():
            assert torch.equal(got["after"][name], local), (rank, name)
        ranges = SPLITS[scenario][rank]
        assert int(got["after"]["reference_moments"][0]) == sum(b - a for a, b in ranges[0])
        assert int(got["after"]["candidate_moments"][0]) == sum(b - a for a, b in ranges[1])


@pytest.mark.parametrize("scenario", list(SPLITS))
def test_accumulation_continues_after_compute(reports, scenario):
    _, data = _single_process(scenario)
    x, y, x0, y0 = data
    # After the first compute, rank 1 added candidates x0[:5]; the second compute sees all data plus those.
    expected = ref_mid(x, y, torch.cat([x0, x0[:5]]), torch.cat([y0, y0[:5]]))
    for report in reports:
        second = report[scenario]["second"].item()
        if scenario == "hard":
            assert abs(second - expected) <= HARD_ABS
        else:
            assert second == pytest.approx(expected, rel=REL, abs=0.0)


@pytest.mark.parametrize("scenario", list(MISMATCHES))
def test_ranks_with_different_feature_sizes_all_raise_the_same_error(reports, scenario):
    errors = [report[scenario]["error"] for report in reports]
    assert errors[0] is not None and errors[0] == errors[1]
    assert "built MutualInformationDivergence with different settings" in errors[0]
    for index, name in enumerate(("image_dim", "text_dim")):
        sizes = [MISMATCHES[scenario][rank][index] for rank in (0, 1)]
        if sizes[0] != sizes[1]:
            assert f"`{name}` (rank 0: {sizes[0]}; rank 1: {sizes[1]})" in errors[0]
        else:
            assert f"`{name}`" not in errors[0]
    assert all(report[scenario]["unchanged"] for report in reports)
