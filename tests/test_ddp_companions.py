"""The companion metrics under 2-process gloo DDP: the tester's plans, per-pair order, and errors on every rank.

One launch runs every metric case of ``companion_refs.all_cases`` with uneven shares and with one empty rank; a
second checks that ``per_sample()`` is rank-major (rank 0's pairs, then rank 1's), that ranks built with another
feature split raise the same error, and that the ``max_samples`` cap holds for the gathered pairs.
"""

from __future__ import annotations

import pytest
import torch
from _ddp import ddp_marks, run_in_processes
from _tester import check_ddp
from companion_refs import (
    INFONCE_REL,
    aligned_pairs,
    all_cases,
    naive_clip_per_pair,
    naive_infonce_per_pair,
    naive_r_precision_per_pair,
    naive_refclip_per_pair,
    references_for,
)

from mid_metric import CLIPRPrecision, CLIPScore, InfoNCE, RefCLIPScore

pytestmark = [*ddp_marks, pytest.mark.filterwarnings("ignore:The ``compute`` method of metric")]

D = 8
SIZES = (20, 30, 40)
# Which rank makes each of the three calls: rank 0 gets the later calls, so rank-major order differs from the
# order of the calls.
PLANS = {"later-calls-on-rank-0": (1, 0, 0), "all-on-rank-1": (1, 1, 1), "all-on-rank-0": (0, 0, 0)}


def _data():
    images, texts = aligned_pairs(sum(SIZES), D, noise=0.9, seed=71, duplicates=2)
    return images, texts, references_for(texts, seed=72)


def _metrics():
    return {
        "clip_s": lambda: CLIPScore(feature=D),
        "refclip_s": lambda: RefCLIPScore(feature=D),
        "r_precision": lambda: CLIPRPrecision(feature=D, num_negatives=9),
        "infonce": lambda: InfoNCE(feature=D, temperature=0.1),
    }


def _calls(images, texts, references):
    calls, start = [], 0
    for size in SIZES:
        stop = start + size
        calls.append((images[start:stop], texts[start:stop], references[start:stop]))
        start = stop
    return calls


def _per_sample_worker(rank: int, world_size: int) -> dict:
    images, texts, references = _data()
    calls = _calls(images, texts, references)
    out = {}
    for plan, owners in PLANS.items():
        for name, make in _metrics().items():
            metric = make()
            for owner, (x, y, refs) in zip(owners, calls):
                if owner == rank:
                    if name == "refclip_s":
                        metric.update(x, y, refs)
                    else:
                        metric.update(x, y)
            out[(plan, name)] = metric.per_sample()
    # Ranks built with another feature split: the same error on every rank, not a hang or a silent mix.
    mismatched = InfoNCE(feature=4 + 2 * rank)
    mismatched.update(torch.randn(5, 4 + 2 * rank), torch.randn(5, 4 + 2 * rank))
    try:
        mismatched.compute()
        out["mismatch"] = None
    except ValueError as error:
        out["mismatch"] = str(error)
    # Each rank is under the cap, the gathered pairs are not.
    capped = CLIPRPrecision(feature=D, max_samples=60)
    capped.update(images[:40], texts[:40])
    try:
        capped.compute()
        out["cap"] = None
    except ValueError as error:
        out["cap"] = str(error)
    return out


def _expected(name, images, texts, references):
    if name == "clip_s":
        return naive_clip_per_pair(images, texts)
    if name == "refclip_s":
        return naive_refclip_per_pair(images, texts, references)
    if name == "r_precision":
        return naive_r_precision_per_pair(images, texts, n=9)
    return naive_infonce_per_pair(images, texts, 0.1)


def test_every_metric_case_under_ddp():
    check_ddp(*all_cases().values())


def test_per_sample_is_rank_major_and_errors_reach_every_rank():
    reports = run_in_processes(_per_sample_worker)
    images, texts, references = _data()
    calls = _calls(images, texts, references)
    for plan, owners in PLANS.items():
        ordered = [call for rank in (0, 1) for owner, call in zip(owners, calls) if owner == rank]
        x = torch.cat([c[0] for c in ordered])
        y = torch.cat([c[1] for c in ordered])
        refs = [r for c in ordered for r in c[2]]
        for name in _metrics():
            expected = _expected(name, x, y, refs)
            for rank, report in enumerate(reports):
                got = report[(plan, name)]
                assert got.dtype == torch.float64, (plan, name)
                rtol = INFONCE_REL if name == "infonce" else 1e-10
                torch.testing.assert_close(got, expected, rtol=rtol, atol=1e-13, msg=f"{plan} {name} rank {rank}")
    for report in reports:
        assert report["mismatch"] is not None and "`image_dim` (rank 0: 4; rank 1: 6)" in report["mismatch"]
        assert report["cap"] is not None and "gathered 80 candidate pairs" in report["cap"]
