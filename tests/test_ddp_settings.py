"""Ranks that built a metric differently: one clear error on every rank, never a hang or a value per rank.

Two 2-process gloo launches: one for the companion metrics (settings that differ, and ``dist_sync_on_step=True`` in
``forward``), one for MID. Each collective fails after ``_ddp.TIMEOUT_S`` seconds, so a rank left blocked in a
collective makes the test fail instead of hanging the suite.
"""

from __future__ import annotations

from typing import Any, Callable

import pytest
import torch
from _ddp import ddp_marks, run_in_processes
from companion_refs import aligned_pairs, references_for
from reference_impl import well_conditioned_pairs

from mid_metric import CLIPRPrecision, CLIPScore, InfoNCE, MutualInformationDivergence, RefCLIPScore
from mid_metric.functional import clip_r_precision, clip_score, infonce, ref_clip_score

pytestmark = [*ddp_marks, pytest.mark.filterwarnings("ignore:The ``compute`` method of metric")]

D = 8

# Per case: the metric each rank builds, and the settings the error must name with each rank's value.
COMPANION_MISMATCHES: dict[str, tuple[Callable[[int], Any], dict[str, tuple[str, str]]]] = {
    "clamp": (lambda rank: CLIPScore(feature=D, clamp=rank == 0), {"clamp": ("True", "False")}),
    "weight": (lambda rank: CLIPScore(feature=D, weight=(2.5, 100.0)[rank]), {"weight": ("2.5", "100.0")}),
    # Another number of states: the ranks would run different collectives.
    "keep_per_sample": (
        lambda rank: CLIPScore(feature=D, keep_per_sample=rank == 0),
        {"keep_per_sample": ("True", "False")},
    ),
    "refclip_weight": (lambda rank: RefCLIPScore(feature=D, weight=(2.5, 1.0)[rank]), {"weight": ("2.5", "1.0")}),
    "num_negatives": (
        lambda rank: CLIPRPrecision(feature=D, num_negatives=(9, 99)[rank]),
        {"num_negatives": ("9", "99")},
    ),
    "negatives": (
        lambda rank: CLIPRPrecision(feature=D, num_negatives=3, negatives=("replacement", "distinct")[rank]),
        {"negatives": ("'replacement'", "'distinct'")},
    ),
    "max_samples": (
        lambda rank: InfoNCE(feature=D, max_samples=(1000, 2000)[rank]),
        {"max_samples": ("1000", "2000")},
    ),
    "temperature": (lambda rank: InfoNCE(feature=D, temperature=(1.0, 0.07)[rank]), {"temperature": ("1.0", "0.07")}),
    # Two different metrics at the same place (e.g. two collections in another order): other states altogether.
    "metric": (
        lambda rank: CLIPScore(feature=D) if rank == 0 else InfoNCE(feature=D),
        {"metric": ("'CLIPScore'", "'InfoNCE'")},
    ),
}

# The batches of two forward steps with dist_sync_on_step=True: (rows of rank 0, rows of rank 1) per step. In the
# second step rank 0's batch is empty.
STEPS = (((0, 12), (12, 30)), ((30, 30), (30, 37)))


def _data() -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
    images, texts = aligned_pairs(40, D, noise=0.8, seed=5, duplicates=2)
    return images, texts, references_for(texts, seed=6)


def _update(metric: Any, images: torch.Tensor, texts: torch.Tensor, references: list[torch.Tensor]) -> Any:
    if isinstance(metric, RefCLIPScore):
        return metric(images, texts, references)
    return metric(images, texts)


def _synced_steps() -> dict[str, Callable[[], Any]]:
    return {
        "clip_s": lambda: CLIPScore(feature=D, dist_sync_on_step=True),
        "refclip_s": lambda: RefCLIPScore(feature=D, dist_sync_on_step=True),
        "r_precision": lambda: CLIPRPrecision(feature=D, num_negatives=5, dist_sync_on_step=True),
        "infonce": lambda: InfoNCE(feature=D, temperature=0.1, dist_sync_on_step=True),
    }


def _expected_step(name: str, images: torch.Tensor, texts: torch.Tensor, references: list) -> torch.Tensor:
    if name == "clip_s":
        return clip_score(images, texts)
    if name == "refclip_s":
        return ref_clip_score(images, texts, references)
    if name == "r_precision":
        return clip_r_precision(images, texts, num_negatives=5)
    return infonce(images, texts, temperature=0.1)


def _companion_worker(rank: int, world_size: int) -> dict:
    images, texts, references = _data()
    report: dict[str, Any] = {}
    for case, (make, _) in COMPANION_MISMATCHES.items():
        metric = make(rank)
        rows = slice(0, 10) if rank == 0 else slice(10, 25)
        if isinstance(metric, RefCLIPScore):
            metric.update(images[rows], texts[rows], references[rows])
        else:
            metric.update(images[rows], texts[rows])
        before = {name: getattr(metric, name) for name in metric._defaults}
        try:
            metric.compute()
            report[case] = None
        except ValueError as error:
            report[case] = str(error)
        after = {name: getattr(metric, name) for name in metric._defaults}
        report[f"{case}/unchanged"] = all(
            (after[name] is value) if isinstance(value, torch.Tensor) else after[name] == value
            for name, value in before.items()
        )
    for name, make in _synced_steps().items():
        metric = make()
        values = []
        for step in STEPS:
            start, stop = step[rank]
            values.append(_update(metric, images[start:stop], texts[start:stop], references[start:stop]))
        report[f"{name}/steps"] = values
        report[f"{name}/local_count"] = metric.stored_count() if hasattr(metric, "stored_count") else None
        report[f"{name}/compute"] = metric.compute()
    return report


@pytest.fixture(scope="module")
def companion_reports() -> list[dict]:
    return run_in_processes(_companion_worker, timeout_s=60)


@pytest.mark.parametrize("case", list(COMPANION_MISMATCHES))
def test_companions_built_differently_raise_one_error_on_every_rank(companion_reports, case):
    errors = [report[case] for report in companion_reports]
    assert errors[0] is not None and errors[0] == errors[1], errors
    assert "with different settings, so their states cannot be combined" in errors[0]
    for setting, (first, second) in COMPANION_MISMATCHES[case][1].items():
        assert f"`{setting}` (rank 0: {first}; rank 1: {second})" in errors[0]
    # Only the differing settings are named.
    assert errors[0].count("(rank 0:") == len(COMPANION_MISMATCHES[case][1])
    assert all(report[f"{case}/unchanged"] for report in companion_reports)


@pytest.mark.parametrize("name", list(_synced_steps()))
def test_dist_sync_on_step_returns_the_value_over_every_ranks_batch(companion_reports, name):
    images, texts, references = _data()
    for index, step in enumerate(STEPS):
        rows = [row for start, stop in step for row in range(start, stop)]  # rank 0's rows, then rank 1's
        expected = _expected_step(name, images[rows], texts[rows], [references[row] for row in rows])
        for rank, report in enumerate(companion_reports):
            got = report[f"{name}/steps"][index]
            assert got is not None, (name, index, rank)
            torch.testing.assert_close(got, expected, rtol=1e-12, atol=0.0, msg=f"{name} step {index} rank {rank}")
    # The accumulated state stays each rank's own, and compute() covers every rank's pairs.
    for rank, report in enumerate(companion_reports):
        if report[f"{name}/local_count"] is not None:
            assert report[f"{name}/local_count"] == sum(stop - start for start, stop in (s[rank] for s in STEPS))
        rows = [row for r in (0, 1) for start, stop in (s[r] for s in STEPS) for row in range(start, stop)]
        expected = _expected_step(name, images[rows], texts[rows], [references[row] for row in rows])
        torch.testing.assert_close(report[f"{name}/compute"], expected, rtol=1e-12, atol=0.0)


# MID: (each rank's keyword arguments, the setting the error must name). "jackknife" against True ran different
# collectives on the two ranks (one blocked until the process-group timeout); True against False returned a
# different value on each rank.
MID_MISMATCHES = {
    "true_false": (
        ({"bias_correction": True}, {"bias_correction": False}),
        "`bias_correction` (rank 0: True; rank 1: False)",
    ),
    "eps": (({"eps": 0.0}, {"eps": 1e-3}), "`eps` (rank 0: 0.0; rank 1: 0.001)"),
    "groups": (
        ({"bias_correction": "jackknife", "jackknife_groups": 5}, {"bias_correction": "jackknife"}),
        "`jackknife_groups` (rank 0: 5; rank 1: 10)",
    ),
    "key": (
        ({"bias_correction": "jackknife"}, {"bias_correction": "jackknife", "jackknife_key": "image"}),
        "`jackknife_key` (rank 0: 'text'; rank 1: 'image')",
    ),
    "jackknife_true": (
        ({"bias_correction": "jackknife"}, {"bias_correction": True}),
        "`bias_correction` (rank 0: 'jackknife'; rank 1: True)",
    ),
}


def _mid_worker(rank: int, world_size: int) -> dict:
    x, y = well_conditioned_pairs(240, 3, 3, seed=3)
    rows = slice(0, 120) if rank == 0 else slice(120, 240)
    report: dict[str, Any] = {}
    for case, (arguments, _) in MID_MISMATCHES.items():
        metric = MutualInformationDivergence(feature=(3, 3), **arguments[rank])
        metric.update(x[rows], y[rows], real=True)
        metric.update(x[rows][:60] + 0.1, y[rows][:60], real=False)
        try:
            report[case] = f"no error: {metric.compute().item()}"
        except ValueError as error:
            report[case] = str(error)
    return report


@pytest.fixture(scope="module")
def mid_reports() -> list[dict]:
    return run_in_processes(_mid_worker, timeout_s=60)


@pytest.mark.parametrize("case", list(MID_MISMATCHES))
def test_mid_built_differently_raises_one_error_on_every_rank(mid_reports, case):
    errors = [report[case] for report in mid_reports]
    assert errors[0] == errors[1], errors
    assert "with different settings" in errors[0], errors[0]
    assert MID_MISMATCHES[case][1] in errors[0]
