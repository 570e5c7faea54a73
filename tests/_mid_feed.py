"""Shared helpers of the MID performance-feature tests (staging buffer, update_pairs, batch scores, fit cache).

Data: ``_pairs`` (well-conditioned pairs) and ``_data`` (reference pairs and candidates generated from the same
captions); feeding: ``_batches``, ``_feed_separate`` (two ``update`` calls per step), ``_feed_pairs``
(``update_pairs``); comparisons: ``_same_bits``, ``_assert_same_metric_state``, ``_close``; the stores' host state:
``_staged_rows``, ``_batches_seen``, ``_area``.
"""

from __future__ import annotations

import math

import torch
from reference_impl import well_conditioned_pairs

F64 = torch.float64
REL = 1e-12
HARD_ABS = 5e-9  # CLIP-like data: absolute agreement with two-pass float64 (as in test_functional_mid.py)
DX, DY = 6, 6


def _pairs(n, dx=DX, dy=DY, seed=0, strength=0.7):
    return well_conditioned_pairs(n, dx, dy, seed=seed, strength=strength)


def _data(n=300, dx=DX, dy=DY):
    """Reference pairs (x, y) and candidates x0 generated from the same captions y."""
    x, y = _pairs(n, dx, dy, seed=0)
    x0 = 0.8 * x + 0.5 * torch.randn(n, dx, dtype=F64, generator=torch.Generator().manual_seed(7))
    return x, y, x0


def _same_bits(a, b):
    return (
        a.dtype == b.dtype
        and a.shape == b.shape
        and torch.equal(a.reshape(-1).view(torch.uint8), b.reshape(-1).view(torch.uint8))
    )


def _assert_same_metric_state(a, b):
    state_a, state_b = a.metric_state, b.metric_state
    assert sorted(state_a) == sorted(state_b)
    for name in state_a:
        assert _same_bits(state_a[name], state_b[name]), name


def _close(got, expected, rel=REL):
    got = float(got)
    assert math.isclose(got, expected, rel_tol=rel, abs_tol=0.0), (got, expected, abs(got - expected))


def _batches(n, sizes):
    """Split range(n) into consecutive slices of the given sizes (cycled), the last one possibly shorter."""
    out, start, k = [], 0, 0
    while start < n:
        stop = min(n, start + sizes[k % len(sizes)])
        out.append(slice(start, stop))
        start, k = stop, k + 1
    return out


def _feed_separate(metric, x, y, x0, slices):
    for s in slices:
        metric.update(x[s], y[s], real=True)
        metric.update(x0[s], y[s], real=False)
    return metric


def _feed_pairs(metric, x, y, x0, slices):
    for s in slices:
        metric.update_pairs(x[s], y[s], x0[s])
    return metric


def _joint(x, y):
    return torch.cat([x.to(F64), y.to(F64)], dim=1)


def _staged_rows(metric):
    """Rows waiting in each group's staging area."""
    return {group: metric._stores[group].staged_rows for group in ("reference", "candidate")}


def _batches_seen(metric):
    """Batches accumulated per group (the recentring schedule)."""
    return {group: metric._stores[group].batches_seen for group in ("reference", "candidate")}


def _area(metric, group):
    """The staging area of a group (None until the group stages rows)."""
    return metric._stores[group]._area
