"""Store-all twins of the MID paper's companion metrics, written for the benchmarks (not used by the package).

They do what the official code (naver-ai/mid.metric, ``metrics/clips.py``, ``r_precision.py``, ``infonce.py``)
does, in our own code: ``update(x, y, x0)`` appends the real images ``x``, the captions ``y`` and the generated
images ``x0`` to lists, in float64; ``compute`` concatenates them, keeps the first ``limit`` pairs, and scores
the candidate pairs ``(x0, y)``:

- CLIP-S: ``2.5 * mean(<x0_j, y_j>)`` of the (unit) features, no clamp;
- R-precision: the matching caption and 99 captions ``y[randperm(N)]``, a hit when index 0 wins ``max``;
- InfoNCE: the diagonal of ``softmax(x0 y^T)`` over the whole ``N x N`` float64 matrix, averaged.

Each result is cast to float32, as the official code does.
"""

from __future__ import annotations

import torch
from torch import Tensor


class StoreAll:
    """The storage every official companion metric shares: every feature, in float64."""

    def __init__(self, limit: int = 30_000) -> None:
        self.limit = limit
        self.x: list[Tensor] = []
        self.y: list[Tensor] = []
        self.x0: list[Tensor] = []

    def update(self, x: Tensor, y: Tensor, x0: Tensor) -> None:
        self.x.append(x.double())
        self.y.append(y.double())
        self.x0.append(x0.double())

    def features(self) -> tuple[Tensor, Tensor]:
        """The captions and the generated images, cut to ``limit`` pairs."""
        y, x0 = torch.cat(self.y), torch.cat(self.x0)
        return y[: self.limit], x0[: self.limit]


class OfficialClipScore(StoreAll):
    def compute(self) -> Tensor:
        y, x0 = self.features()
        return 2.5 * (x0 * y).sum(dim=-1).float().mean()


class OfficialRPrecision(StoreAll):
    def compute(self) -> Tensor:
        y, x0 = self.features()
        columns = [(x0 * y).sum(dim=-1)]
        for _ in range(99):
            columns.append((x0 * y[torch.randperm(y.shape[0])]).sum(dim=-1))
        return (torch.stack(columns, dim=-1).max(dim=-1).indices == 0).float().mean()


class OfficialInfoNCE(StoreAll):
    def compute(self) -> Tensor:
        y, x0 = self.features()
        return (x0 @ y.T).softmax(dim=-1).diagonal().float().mean()


TWINS = {"clip-score": OfficialClipScore, "r-precision": OfficialRPrecision, "infonce": OfficialInfoNCE}
