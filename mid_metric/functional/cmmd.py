r"""CMMD: the maximum mean discrepancy between real and generated image embeddings under a Gaussian RBF kernel.

CMMD (Jayasumana et al., CVPR 2024, "Rethinking FID: Towards a Better Evaluation Metric for Image Generation")
compares the real embeddings ``x_1..x_n`` with the generated ones ``y_1..y_m`` by the squared MMD of Gretton et al.
(2012) under the kernel ``k(a, b) = exp(-||a - b||^2 / (2 sigma^2))``, times a ``scale`` that makes the numbers
readable:

.. math:: \mathrm{CMMD} = \mathrm{scale} \cdot \Bigl( \frac{1}{n^2} \sum_{i, i'} k(x_i, x_{i'})
          + \frac{1}{m^2} \sum_{j, j'} k(y_j, y_{j'}) - \frac{2}{n m} \sum_{i, j} k(x_i, y_j) \Bigr)

The paper's code (google-research ``cmmd/distance.py``) takes every pair, the diagonals ``i = i'`` and ``j = j'``
included: the biased, minimum-variance estimator (Gretton et al. 2012, Eq. 5), which is never negative, with
``sigma = 10`` and ``scale = 1000``. ``unbiased=True`` leaves the diagonals out (the means of the first two sums run
over the ``n (n - 1)`` and ``m (m - 1)`` pairs of distinct rows); that estimator can be negative.

The embeddings of the paper's code are L2-normalised: its CLIP ViT-L/14 image tower (336 px) returns unit vectors,
since the CLIP model it calls normalises them by default. ``normalize=True`` (the default) does the same here, which
changes nothing for features that are unit already (the CLIP extractors of this package return unit features).

How it is computed: blockwise, so that no ``n x n`` matrix exists. Each block of ``block_size`` rows is read in
float64 (scaled to unit norm when ``normalize``); each block of ``block_size x block_size`` pairs takes one float64
matrix product ``a b^T``, from which ``||a - b||^2 = ||a||^2 + ||b||^2 - 2 a.b`` and then
``k - 1 = expm1(-||a - b||^2 / (2 sigma^2))`` are formed and summed in float64. Summing ``k - 1`` instead of ``k``
keeps the precision of the three means, whose ``1``s cancel exactly in the difference; a diagonal distance is exactly
0. The symmetric sums over ``x x`` and ``y y`` are taken over blocks on and above the diagonal only. Features that
are not normalised are first centred on the mean of both sets (distances do not change), so that a common offset
costs no precision. Memory beyond the features is two blocks of rows and one block of pairs (about 56 MiB at the
default ``block_size`` and D = 768), read straight from the parts in which the metric stores its batches; the value
agrees with a dense float64 computation to about 1e-12 relative.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from typing import Optional

import torch
from torch import Tensor

from mid_metric._checks import (
    check_bool,
    check_features,
    check_nonzero_rows,
    check_positive_int,
    check_positive_number,
    check_same_device,
)

__all__ = ["DEFAULT_BLOCK_SIZE", "cmmd", "cmmd_of_parts"]

F64 = torch.float64

#: Rows per block: a block of pairs takes 32 MiB (float64) at the default.
DEFAULT_BLOCK_SIZE = 2048


class _RowSet:
    """The rows of one set, stored in one or several parts (the metric's batches), read a block at a time."""

    def __init__(self, parts: Sequence[Tensor]) -> None:
        self.parts = [part for part in parts if part.shape[0] > 0]
        self.starts = [0]
        for part in self.parts:
            self.starts.append(self.starts[-1] + int(part.shape[0]))
        self.count = self.starts[-1]

    def rows(self, start: int, stop: int) -> Tensor:
        """Rows ``start`` to ``stop`` (exclusive) as a new float64 tensor (the parts are never modified)."""
        first = bisect.bisect_right(self.starts, start) - 1
        pieces = []
        for index in range(first, len(self.parts)):
            part_start = self.starts[index]
            if part_start >= stop:
                break
            pieces.append(self.parts[index][max(start - part_start, 0) : stop - part_start])
        if len(pieces) == 1:
            return pieces[0].to(F64, copy=True)
        return torch.cat([piece.to(F64) for piece in pieces])

    def row_sum(self, block_size: int) -> Tensor:
        """The float64 sum of all rows."""
        total = torch.zeros(self.parts[0].shape[1], dtype=F64, device=self.parts[0].device)
        for start in range(0, self.count, block_size):
            total += self.rows(start, start + block_size).sum(dim=0)
        return total


class _BlockReader:
    """Reads a block of rows of a set as float64: scaled to unit norm, or shifted by the common mean."""

    def __init__(self, block_size: int, normalize: bool, offset: Optional[Tensor]) -> None:
        self.block_size, self.normalize, self.offset = block_size, normalize, offset

    def __call__(self, rows: _RowSet, start: int) -> Tensor:
        block = rows.rows(start, start + self.block_size)
        if self.normalize:
            return block.div_(torch.linalg.vector_norm(block, dim=1, keepdim=True))
        return block.sub_(self.offset) if self.offset is not None else block


def _kernel_sum(first: _RowSet, second: _RowSet, symmetric: bool, gamma: float, read: _BlockReader) -> Tensor:
    """``sum_{i, j} (k(first_i, second_j) - 1)`` in float64, over all pairs (``symmetric``: ``second`` is ``first``).

    The diagonal pairs of a symmetric sum count with distance exactly 0, i.e. ``k - 1 = 0``.
    """
    total = torch.zeros((), dtype=F64, device=first.parts[0].device)
    size = read.block_size
    for i in range(0, first.count, size):
        rows = read(first, i)
        row_norms = rows.square().sum(dim=1, keepdim=True)
        for j in range(i if symmetric else 0, second.count, size):
            columns = rows if symmetric and i == j else read(second, j)
            # ||a - b||^2 = ||a||^2 - 2 a.b + ||b||^2, one product and three in-place passes over the block
            distances = torch.addmm(row_norms, rows, columns.T, alpha=-2.0)
            distances.add_(columns.square().sum(dim=1)).clamp_min_(0.0)
            if symmetric and i == j:
                distances.fill_diagonal_(0.0)
            block_sum = distances.mul_(-gamma).expm1_().sum()
            total += block_sum if not symmetric or i == j else 2.0 * block_sum
    return total


def cmmd_of_parts(
    real_parts: Sequence[Tensor],
    generated_parts: Sequence[Tensor],
    sigma: float = 10.0,
    scale: float = 1000.0,
    unbiased: bool = False,
    normalize: bool = True,
    block_size: int = DEFAULT_BLOCK_SIZE,
) -> Tensor:
    """CMMD of checked feature blocks, as :func:`cmmd` computes it (the rows of each set may come in several parts).

    The metric class calls this on its stored float32 rows. The arguments must have passed :func:`cmmd`'s checks.

    Example:
        >>> x = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
        >>> cmmd_of_parts([x[:1], x[1:]], [x]).item()
        0.0
    """
    real, generated = _RowSet(real_parts), _RowSet(generated_parts)
    real_count, generated_count = real.count, generated.count
    offset = None
    if not normalize:
        offset = (real.row_sum(block_size) + generated.row_sum(block_size)) / (real_count + generated_count)
    read = _BlockReader(block_size, normalize, offset)
    gamma = 1.0 / (2.0 * sigma * sigma)
    real_pairs = real_count * (real_count - 1) if unbiased else real_count**2
    generated_pairs = generated_count * (generated_count - 1) if unbiased else generated_count**2
    # With k - 1 summed, the means' 1s cancel: 1 + 1 - 2 * 1 = 0 (also without the diagonals, which are all 1).
    real_mean = _kernel_sum(real, real, True, gamma, read) / real_pairs
    generated_mean = _kernel_sum(generated, generated, True, gamma, read) / generated_pairs
    cross_mean = _kernel_sum(real, generated, False, gamma, read) / (real_count * generated_count)
    return scale * (real_mean + generated_mean - 2.0 * cross_mean)


def check_cmmd_arguments(
    sigma: object, scale: object, unbiased: object, normalize: object, block_size: object
) -> tuple[float, float, bool, bool, int]:
    """Check CMMD's settings and return them (``sigma`` and ``scale`` as floats).

    Raises:
        TypeError: If a flag is not a bool or ``block_size`` not an int.
        ValueError: If ``sigma`` or ``scale`` is not a finite number > 0, or ``block_size`` is below 1.

    Example:
        >>> check_cmmd_arguments(10, 1000, False, True, 2048)
        (10.0, 1000.0, False, True, 2048)
    """
    return (
        check_positive_number(sigma, "sigma"),
        check_positive_number(scale, "scale"),
        check_bool(unbiased, "unbiased"),
        check_bool(normalize, "normalize"),
        check_positive_int(block_size, "block_size"),
    )


def check_cmmd_counts(real_count: int, generated_count: int, unbiased: bool, hint: str = "") -> None:
    """Check that both sets have enough rows: 1 each, or 2 each for the unbiased estimator.

    ``hint`` is appended to the message (the metric class says how to add images).

    Raises:
        ValueError: If one has too few.

    Example:
        >>> check_cmmd_counts(5, 1, unbiased=True)
        Traceback (most recent call last):
        ...
        ValueError: The unbiased CMMD needs at least 2 generated image(s), got 1.
    """
    minimum = 2 if unbiased else 1
    what = "The unbiased CMMD" if unbiased else "CMMD"
    for name, count in (("real", real_count), ("generated", generated_count)):
        if count < minimum:
            raise ValueError(f"{what} needs at least {minimum} {name} image(s), got {count}{hint}.")


def cmmd(
    real_features: Tensor,
    generated_features: Tensor,
    sigma: float = 10.0,
    scale: float = 1000.0,
    unbiased: bool = False,
    normalize: bool = True,
    block_size: int = DEFAULT_BLOCK_SIZE,
) -> Tensor:
    """CMMD between real and generated image embeddings (the CMMD paper's estimator by default).

    Args:
        real_features: Embeddings of the real images, ``(n, D)``.
        generated_features: Embeddings of the generated images, ``(m, D)``.
        sigma: Bandwidth of the Gaussian RBF kernel (10 in the paper).
        scale: Factor of the squared MMD (1000 in the paper).
        unbiased: Leave the pairs of a row with itself out of the within-set means (the unbiased estimator, which
            can be negative); ``False`` counts every pair (the paper's biased, minimum-variance estimator).
        normalize: Scale each embedding to unit L2 norm first, as the paper's CLIP embeddings are.
        block_size: Rows per block of the blockwise sums (memory, not the value, depends on it).

    Returns:
        0-dim float64 tensor on the features' device.

    Raises:
        TypeError: If the features are not floating tensors, a flag is not a bool or ``block_size`` not an int.
        ValueError: If a shape is wrong or the feature sizes differ, the features are on different devices, a value
            is NaN or Inf, a row is zero (with ``normalize``), a set is empty (has fewer than 2 rows when
            ``unbiased``), ``sigma`` or ``scale`` is not a finite number > 0, or ``block_size`` is below 1.

    Example:
        >>> import math, torch
        >>> from mid_metric.functional.cmmd import cmmd
        >>> real = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
        >>> cmmd(real, real).item()
        0.0
        >>> value = cmmd(real[:1], real[1:])   # one image each, k = exp(-||a - b||^2 / 200) = exp(-0.01)
        >>> round(value.item(), 6), round(1000 * (2 - 2 * math.exp(-0.01)), 6)
        (19.900333, 19.900333)

    The value is ``1000 (1 + 1 - 2 k)``: each set's only pair is a row with itself, ``k = 1``.
    """
    sigma, scale, unbiased, normalize, block_size = check_cmmd_arguments(sigma, scale, unbiased, normalize, block_size)
    real_features = check_features(real_features, "real_features")
    generated_features = check_features(generated_features, "generated_features", real_features.shape[1])
    check_same_device(real_features, generated_features, "real_features", "generated_features")
    if normalize:
        check_nonzero_rows(real_features, "real_features")
        check_nonzero_rows(generated_features, "generated_features")
    check_cmmd_counts(real_features.shape[0], generated_features.shape[0], unbiased)
    return cmmd_of_parts([real_features], [generated_features], sigma, scale, unbiased, normalize, block_size)
