"""What the benchmarks measure mid-metric against: store-all MID baselines, and our own code before its speed work.

Not used by the package. Two store-all baselines: :class:`OfficialMID` repeats the official code's sequence of
operations (naver-ai/mid.metric, ``metrics/mid.py``) step for step, in our own code, and is what "against the
official code" is measured with; :class:`StoreAllMID` is a leaner store-all algorithm (singular values only, no
explicit products with inverses).

It does what the paper's official estimator does, in our own code: ``update`` appends every feature batch to
Python lists; ``compute`` concatenates them, casts to float64, builds each covariance two-pass (centre, then
multiply) for ``x``, ``y`` and ``z = [x; y]`` separately, takes log-determinants from singular values (SVD) and
forms explicit inverses of the reference covariances to take the traces

    MID = I + 1/2 (tr(Sx^-1 Shat_x) + tr(Sy^-1 Shat_y) - tr(Sz^-1 Shat_z)),
    I = 1/2 (log|Sx| + log|Sy| - log|Sz|),

where ``Shat`` is the candidates' scatter about the reference mean divided by ``M - 1``. Its memory grows
linearly with the number of samples and its ``compute`` is dominated by the covariance products.

The text-to-image call ``update(x, y, x0)`` of the official code stores real images ``x``, captions ``y`` and the
generated images ``x0``; the candidate pairs are ``(x0, y)``.

And two pieces of the streaming metric as they were before the performance work, for the *previous* columns of
``run.py``: :func:`previous_accumulate_` (the update as one full GEMM) and :func:`previous_traces` (the candidate
traces from two triangular solves each).
"""

from __future__ import annotations

import torch
from torch import Tensor

from mid_metric import moments
from mid_metric.functional import GaussianReference
from mid_metric.gaussian import whitened_scatter

F64 = torch.float64


def _svd_logdet(matrix: Tensor) -> Tensor:
    return torch.linalg.svdvals(matrix).log().sum()


def _two_pass_covariance(features: Tensor) -> tuple[Tensor, Tensor]:
    mean = features.mean(dim=0)
    centred = features - mean
    return mean, centred.T @ centred / (features.shape[0] - 1)


def _scatter_about(features: Tensor, centre: Tensor) -> Tensor:
    centred = features - centre
    return centred.T @ centred / (features.shape[0] - 1)


class StoreAllMID:
    """MID that stores every feature and computes everything at the end (the official code's approach, leaner)."""

    def __init__(self) -> None:
        self.images: list[Tensor] = []
        self.texts: list[Tensor] = []
        self.candidate_images: list[Tensor] = []

    def update(self, images: Tensor, texts: Tensor, candidate_images: Tensor) -> None:
        """Store a batch of reference pairs ``(images, texts)`` and the images generated from ``texts``."""
        self.images.append(images)
        self.texts.append(texts)
        self.candidate_images.append(candidate_images)

    def compute(self) -> Tensor:
        """Return MID of the candidate pairs ``(candidate_images, texts)`` against the pairs ``(images, texts)``."""
        x = torch.cat(self.images).to(F64)
        y = torch.cat(self.texts).to(F64)
        x0 = torch.cat(self.candidate_images).to(F64)
        z = torch.cat([x, y], dim=1)
        z0 = torch.cat([x0, y], dim=1)

        mean_x, cov_x = _two_pass_covariance(x)
        mean_y, cov_y = _two_pass_covariance(y)
        mean_z, cov_z = _two_pass_covariance(z)
        mutual_information = 0.5 * (_svd_logdet(cov_x) + _svd_logdet(cov_y) - _svd_logdet(cov_z))

        trace_x = torch.trace(torch.linalg.inv(cov_x) @ _scatter_about(x0, mean_x))
        trace_y = torch.trace(torch.linalg.inv(cov_y) @ _scatter_about(y, mean_y))
        trace_z = torch.trace(torch.linalg.inv(cov_z) @ _scatter_about(z0, mean_z))
        return mutual_information + 0.5 * (trace_x + trace_y - trace_z)


class OfficialMID(StoreAllMID):
    """The official code's MID, operation for operation: what the speed target "against the official code" uses.

    ``update`` casts each batch to float64 and appends it. ``compute`` concatenates the lists, builds ``z = [x; y]``
    and ``z0 = [x0; y]``, forms the five covariances ``X``, ``Y``, ``Z`` (reference, about their means) and ``X0``,
    ``Z0`` (candidates, about the reference means) with one centred product each, takes each log-determinant as
    the sum of the logs of the singular values of a full SVD (``torch.svd`` there: singular vectors included), and
    each trace as ``tr(inverse(A) @ B)`` for ``(X, X0)``, ``(Y, Y)`` and ``(Z, Z0)``, with eps = 0 and no sample
    cap reached (N <= 30,000). Compared with :class:`StoreAllMID` it has one covariance product fewer and costs
    the SVDs' singular vectors (about 0.9 s at D = 768 on the benchmark CPU).
    """

    def update(self, images: Tensor, texts: Tensor, candidate_images: Tensor) -> None:
        """Store float64 copies of reference pairs ``(images, texts)`` and of the images generated from ``texts``."""
        super().update(images.to(F64), texts.to(F64), candidate_images.to(F64))

    def compute(self) -> Tensor:
        """Return MID of ``(candidate_images, texts)`` against ``(images, texts)``, as the official code does."""
        x, y, x0 = (torch.cat(part) for part in (self.images, self.texts, self.candidate_images))
        z, z0 = torch.cat([x, y], dim=-1), torch.cat([x0, y], dim=-1)
        mean_x, mean_y = x.mean(dim=0, keepdim=True), y.mean(dim=0, keepdim=True)
        mean_z = torch.cat([mean_x, mean_y], dim=-1)

        def covariance(rows: Tensor, centre: Tensor) -> Tensor:
            return (rows - centre).t() @ (rows - centre) / (rows.shape[0] - 1)

        cov_x, cov_y, cov_z = covariance(x, mean_x), covariance(y, mean_y), covariance(z, mean_z)
        scatter_x0, scatter_z0 = covariance(x0, mean_x), covariance(z0, mean_z)

        def log_det(matrix: Tensor) -> Tensor:
            return torch.linalg.svd(matrix, full_matrices=False)[1].log().sum()

        def trace_of_ratio(reference: Tensor, other: Tensor) -> Tensor:
            return (torch.linalg.inv(reference) @ other).trace()

        mutual_information = (log_det(cov_x) + log_det(cov_y) - log_det(cov_z)) / 2
        distance = (
            trace_of_ratio(cov_x, scatter_x0) + trace_of_ratio(cov_y, cov_y) - trace_of_ratio(cov_z, scatter_z0)
        ) / 2
        return mutual_information + distance


def previous_accumulate_(packed: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
    """The update before the performance work (one full GEMM), kept here for the before/after figures."""
    fields = moments.unpack(packed)
    batch = features.to(dtype=torch.float64)
    fields.shift.copy_(torch.where(fields.count == 0, batch.mean(dim=0), fields.shift))
    batch = batch - fields.shift
    fields.shifted_sum.add_(batch.sum(dim=0))
    fields.shifted_outer_sum.addmm_(batch.mT, batch)
    fields.count.add_(batch.shape[0])
    return packed


def previous_traces(reference: GaussianReference, candidate_packed: torch.Tensor) -> torch.Tensor:
    """The candidate part of compute() before the performance work: two triangular solves per trace."""
    count = int(moments.unpack(candidate_packed).count)
    _, scatter = moments.mean_and_scatter(candidate_packed, center=reference.mean)
    cov = scatter / (count - 1)
    dx = reference.image_dim
    whitened, text = whitened_scatter(reference, cov)
    return whitened[:dx, :dx].diagonal().sum() + text.diagonal().sum() - whitened.diagonal().sum()
