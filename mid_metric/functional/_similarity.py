"""Cosine similarities: per pair in float64, and blockwise over all candidate captions from float32 products.

Every cosine here is taken between rows scaled to unit norm in float64 by :func:`unit_rows`, which first divides
each float64 row by its largest magnitude: a row of norm 1e-200 or 1e200 gets its exact direction (the norm alone
would underflow to 0 or overflow to infinity). CLIP-R-Precision and InfoNCE keep their candidate features as
:func:`stored_rows` (float32 rows; float64 ones scaled by a power of two first, so that none underflows or
overflows), and their functional forms score the same rows, so that a metric class and its function give the same
value on the same pairs.

CLIP-R-Precision and InfoNCE score every candidate image against every candidate caption. :func:`score_blocks`
yields those scores a block of images at a time (:class:`ScoreBlock`), so that memory stays ``O(block * M)``
instead of ``O(M^2)``. The block is one float32 matrix product of the unit rows rounded to float32 (about 1.7x
faster than float64 on a CPU, far more on most GPUs). Its entries differ from the float64 cosines by at most
:func:`float32_score_error` (``(D + 2) 2^-24`` for ``D``-dimensional rows, whatever the order of the sums), so a
caller never trusts a float32 score near a decision: :meth:`ScoreBlock.exact_where` and
:meth:`ScoreBlock.count_below` recompute in float64 every entry whose float64 score may lie on the other side of a
bound, and the comparisons are then those of the float64 scores. The score of each image's own caption
(``matching``) is always float64. Where the float32 products may be rounded further (TF32 or bfloat16 matrix
products enabled by the user, or another kind of device), the blocks are float64 products, as in 0.3.1.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor

#: Number of scores per block (``rows * M``): 2**22, i.e. 16 MiB of float32 scores (32 MiB in float64).
BLOCK_ELEMENTS = 1 << 22
#: ... but at least this many rows (see :func:`block_rows`).
MIN_BLOCK_ROWS = 512
#: A block row is recomputed whole, by one float64 product, when more than ``max(DENSE_MINIMUM, DENSE_FRACTION * M)``
#: of its scores are uncertain: recomputing them one by one would then read more caption rows from memory than a
#: float64 product of the row costs (on CLIP-like features about one score a row is uncertain).
DENSE_FRACTION = 1 / 256
DENSE_MINIMUM = 32
#: Entries recomputed per step of :func:`exact_pair_scores` (two ``(PAIR_CHUNK, D)`` float64 gathers).
PAIR_CHUNK = 2048


def unit_rows(features: Tensor) -> Tensor:
    """Return the rows of ``features`` in float64, scaled to unit L2 norm (a zero row stays zero).

    A float64 row is first divided by its largest magnitude, so that its norm is taken from values in ``[-1, 1]``
    (at least one of them of magnitude 1): it can neither underflow nor overflow, whatever the scale of the row.
    Narrower rows (float16, bfloat16, float32) need no such step: their squares neither underflow nor overflow in
    float64. Either way, a row and the row times a power of two give the same unit row, bit for bit.

    Example:
        >>> unit_rows(torch.tensor([[3.0, 4.0]])).tolist()
        [[0.6, 0.8]]
        >>> unit_rows(torch.tensor([[3e-200, 4e-200], [3e200, 4e200]], dtype=torch.float64)).tolist()
        [[0.6, 0.8], [0.6, 0.8]]
    """
    rows = features.to(torch.float64, copy=True)  # one allocation: scaled in place
    if features.dtype == torch.float64:
        largest = torch.linalg.vector_norm(rows, ord=math.inf, dim=1, keepdim=True)
        rows.div_(torch.where(largest > 0, largest, 1.0))
    norms = torch.linalg.vector_norm(rows, dim=1, keepdim=True)  # 0 only for a zero row
    return rows.div_(norms.clamp_(min=math.ulp(0.0)))  # a zero row stays zero


def stored_rows(features: Tensor) -> Tensor:
    """Return the rows as CLIP-R-Precision and InfoNCE store them: in float32, with the direction of every row kept.

    Float16, bfloat16 and float32 rows are kept exactly, as float32 (the tensor itself when it is float32). Float64
    rows are first multiplied by the power of two that brings their largest magnitude into ``[0.5, 1)``, an exact
    product, so that rows of any scale are rounded to float32 without underflowing to zero or overflowing. No cosine
    sees the scale of a row: :func:`unit_rows` of a row and of the row times a power of two are the same.

    Example:
        >>> tiny = torch.tensor([[3.0, 4.0], [0.0, 0.0]], dtype=torch.float64) * 2.0**-700   # norms 5e-211 and 0
        >>> stored_rows(tiny)
        tensor([[0.3750, 0.5000],
                [0.0000, 0.0000]])
    """
    if features.dtype != torch.float64:
        return features.to(torch.float32)  # exact: float16 and bfloat16 values are float32 values
    rows = features.clone()
    _, exponent = torch.frexp(torch.linalg.vector_norm(rows, ord=math.inf, dim=1, keepdim=True))
    # Two steps, each by at most 2^538, so that the power of two itself stays finite (-exponent reaches 1073).
    half = torch.div(-exponent, 2, rounding_mode="floor")
    return torch.ldexp(torch.ldexp(rows, half), -exponent - half).to(torch.float32)


def stored_scoring_rows(images: Tensor, texts: Tensor) -> tuple[Tensor, Tensor]:
    """The inputs of :func:`score_blocks` for candidate pairs as the metric classes store them.

    Returns ``(stored_rows(images), unit_rows(stored_rows(texts)))``: the images as stored (float32) and the
    captions as unit float64 rows of their float32 ones (pass ``texts_are_unit=True``). The classes build the same
    two tensors from their state, so that a class and its function score identical rows.

    Example:
        >>> images, captions = stored_scoring_rows(torch.eye(2), torch.ones(2, 2))
        >>> images.dtype, captions.dtype
        (torch.float32, torch.float64)
    """
    return stored_rows(images), unit_rows(stored_rows(texts))


def pair_cosines(first: Tensor, second: Tensor) -> Tensor:
    """Return ``cos(first_i, second_i)`` for each row pair, in float64 ``(B,)``.

    Example:
        >>> pair_cosines(torch.tensor([[1.0, 0.0], [3.0, 4.0]]), torch.tensor([[0.0, 2.0], [4.0, 3.0]])).tolist()
        [0.0, 0.96]
    """
    return (unit_rows(first) * unit_rows(second)).sum(dim=1)


def block_rows(count: int, block_elements: Optional[int] = None) -> int:
    """Rows of images per block when each row holds ``count`` scores: about ``block_elements`` scores a block.

    Without ``block_elements``, a block has :data:`BLOCK_ELEMENTS` scores but at least :data:`MIN_BLOCK_ROWS` rows
    (beyond ``M = 8,192``): fewer, larger blocks run the products at the full rate and pay the fixed cost of each
    operation on a block fewer times (each costs a scheduler time slice on a busy machine).

    Example:
        >>> block_rows(10_000), block_rows(30_000)
        (512, 512)
    """
    if block_elements is None:
        return max(1, min(count, max(MIN_BLOCK_ROWS, BLOCK_ELEMENTS // max(count, 1))))
    return max(1, min(count, block_elements // max(count, 1)))


def float32_score_error(dim: int) -> float:
    """A bound on ``|s32 - s64|`` for the cosine of two unit float64 rows of length ``dim``.

    ``s64`` is their float64 dot product, summed in any order; ``s32`` the float32 dot product of the rows rounded
    to float32, summed in any order (with or without fused multiply-adds, as BLAS libraries do). With ``u = 2^-24``,
    ``gamma_n = n u / (1 - n u)`` and the float64 rows of norm at most ``nu = 1 + (dim + 4) 2^-53``, the rounding of
    the inputs, the float32 sums and the float64 sums add up to at most
    ``nu^2 ((1 + u)^2 (1 + gamma_dim) - 1 + gamma64_dim) + dim 2^-120`` (the last term: underflows, even with
    denormals flushed to zero), about ``(dim + 2) u``: 4.6e-5 at ``dim = 768``. Infinite when ``dim u >= 1/2``.

    Example:
        >>> round(float32_score_error(768) / 2.0**-24, 3)
        770.035
    """
    unit32, unit64 = 2.0**-24, 2.0**-53
    if dim * unit32 >= 0.5:
        return math.inf
    gamma32 = dim * unit32 / (1 - dim * unit32)
    gamma64 = dim * unit64 / (1 - dim * unit64)
    norms = (1 + (dim + 4) * unit64) ** 2
    bound = norms * ((1 + unit32) ** 2 * (1 + gamma32) - 1 + gamma64) + dim * 2.0**-120
    return bound * (1 + 2.0**-40) + 2.0**-50  # room for this computation's own rounding and the threshold's


def float32_products_are_ieee(device: torch.device) -> bool:
    """Whether float32 matrix products on ``device`` round as IEEE float32 does, so :func:`float32_score_error` holds.

    False when TF32 or bfloat16 products are enabled (``torch.set_float32_matmul_precision("high")`` and the
    backends' ``allow_tf32``/``fp32_precision`` settings), and on devices other than CPUs and CUDA GPUs.

    Example:
        >>> float32_products_are_ieee(torch.device("cpu"))
        True
    """
    if torch.get_float32_matmul_precision() != "highest":
        return False
    settings = [getattr(torch.backends, "fp32_precision", "none")]
    if device.type == "cuda":
        if torch.backends.cuda.matmul.allow_tf32:
            return False
        settings.append(getattr(torch.backends.cuda.matmul, "fp32_precision", "none"))
    elif device.type == "cpu":
        settings.append(getattr(getattr(torch.backends.mkldnn, "matmul", None), "fp32_precision", "none"))
    else:
        return False
    return all(setting in ("none", "ieee") for setting in settings)


def _row_dots(first: Tensor, second: Tensor) -> Tensor:
    """``<first_i, second_i>`` for contiguous float64 ``(P, D)`` rows: one product, one sum per row, always alike."""
    return torch.mul(first, second).sum(dim=1)


def exact_pair_scores(images: Tensor, captions: Tensor, rows: Tensor, columns: Tensor) -> Tensor:
    """``<images[rows[i]], captions[columns[i]]>`` in float64 for each ``i`` (unit float64 rows in, ``(P,)`` out).

    Every score is summed the same way, so two identical captions get bit-identical scores.

    Example:
        >>> rows = torch.eye(2, dtype=torch.float64)
        >>> exact_pair_scores(rows, rows, torch.tensor([0, 1, 1]), torch.tensor([0, 0, 1])).tolist()
        [1.0, 0.0, 1.0]
    """
    out = torch.empty(rows.shape[0], dtype=torch.float64, device=images.device)
    for start in range(0, rows.shape[0], PAIR_CHUNK):
        stop = start + PAIR_CHUNK
        pairs = (images.index_select(0, rows[start:stop]), captions.index_select(0, columns[start:stop]))
        out[start:stop] = _row_dots(*pairs)
    return out


@dataclass
class Recomputed:
    """Entries of a :class:`ScoreBlock` recomputed in float64: single entries, and rows recomputed whole.

    Attributes:
        rows: Block rows of the single entries.
        columns: Their caption indices.
        scores: Their float64 scores.
        whole_rows: Block rows recomputed whole (those with many entries to recompute; none of them is in ``rows``).
        whole: Their float64 scores, ``(len(whole_rows), M)``.
    """

    rows: Tensor
    columns: Tensor
    scores: Tensor
    whole_rows: Tensor
    whole: Tensor


class ScoreBlock:
    """The scores of a block of images against all ``M`` captions.

    Attributes:
        start: The block's first image.
        scores: ``(rows, M)``: ``scores[i, k]`` approximates ``cos(image_{start+i}, caption_k)`` within ``error``
            (float32 products; float64 ones, with ``error = 0``, where float32 products are not IEEE). Overwritten
            by the next block.
        matching: ``(rows,)`` float64: the exact score of each image's own caption.
        error: The bound on ``|scores - float64 score|``.
    """

    def __init__(
        self, start: int, scores: Tensor, images: Tensor, captions: Tensor, error: float, buffers: dict[str, Tensor]
    ) -> None:
        self.start, self.scores, self.error = start, scores, error
        self._images, self._captions = images, captions  # unit float64 rows: the block's images, all captions
        self._buffers = buffers  # reused from block to block
        if error == 0:  # float64 products: the block's own diagonal, so that equal captions score alike
            local = torch.arange(scores.shape[0], device=scores.device)
            self.matching = scores[local, local + start].clone()
        else:
            self.matching = _row_dots(images, captions[start : start + scores.shape[0]])

    def _bounds(self, values: Tensor, down: bool) -> Tensor:
        """Per-row ``(rows, 1)`` bounds in the dtype of ``scores``: ``values -/+ error``, on the safe side.

        In float32, ``error`` is widened by ``2^-23`` (a float32 ulp of a number below 2, so more than the rounding
        of such a bound to the nearest float32): cosines and the thresholds built from them stay below 2.
        """
        if self.error == 0:
            return values.unsqueeze(1)
        margin = self.error + 2.0**-23
        return (values - margin if down else values + margin).to(torch.float32).unsqueeze(1)

    def exact_scores(self, rows: Tensor, columns: Tensor) -> Tensor:
        """The float64 scores of the entries ``(rows[i], columns[i])`` of the block (``scores`` where float64)."""
        if self.error == 0:
            return self.scores[rows, columns]
        return exact_pair_scores(self._images, self._captions, rows, columns)

    def _buffer(self, name: str, dtype: torch.dtype) -> Tensor:
        """A ``(rows, M)`` buffer of ``dtype`` shared by the blocks (allocated once: no per-block temporaries)."""
        buffer = self._buffers.get(name)
        if buffer is None:
            buffer = self._buffers[name] = torch.empty_like(self._buffers["scores"], dtype=dtype)
        return buffer[: self.scores.shape[0]]

    def exact_where(self, low: Tensor) -> Recomputed:
        """Every entry whose float64 score may be at least ``low_i``, recomputed in float64.

        Every entry left out has a float64 score below ``low_i``.
        """
        window = torch.ge(self.scores, self._bounds(low, down=True), out=self._buffer("window", torch.bool))
        return self._recomputed(window)

    def _recomputed(self, window: Tensor) -> Recomputed:
        """The entries where ``window`` (boolean, like ``scores``) is true, with their float64 scores.

        A row with more than ``max(DENSE_MINIMUM, DENSE_FRACTION * M)`` of them is recomputed whole.
        """
        rows, columns = window.nonzero(as_tuple=True)
        whole_rows = torch.empty(0, dtype=torch.long, device=window.device)
        whole = self.scores.new_empty(0, self.scores.shape[1], dtype=torch.float64)
        if self.error > 0 and rows.numel() > DENSE_MINIMUM:
            per_row = torch.bincount(rows, minlength=self.scores.shape[0])
            dense = per_row > max(DENSE_MINIMUM, DENSE_FRACTION * self.scores.shape[1])
            whole_rows = dense.nonzero(as_tuple=True)[0]
            if whole_rows.numel() > 0:
                whole = torch.matmul(self._images[whole_rows], self._captions.T)  # (rows, M) float64
                single = ~dense[rows]
                rows, columns = rows[single], columns[single]
        return Recomputed(rows, columns, self.exact_scores(rows, columns).double(), whole_rows, whole)

    def count_below(self, thresholds: Tensor, inclusive: bool) -> Tensor:
        """``#{k : s_ik <= t_i}`` (``inclusive``) or ``#{k : s_ik < t_i}`` per block row, from the float64 scores.

        Entries more than ``error`` from the threshold are counted from ``scores``; the others are recomputed.
        ``scores`` is overwritten.
        """
        window = self._buffer("window", torch.bool)
        if self.error == 0:  # float64 scores: the window's entries are read from them before they are overwritten
            found = self._recomputed(torch.eq(self.scores, thresholds.unsqueeze(1), out=window))
            at_most = torch.le(self.scores, thresholds.unsqueeze(1), out=self.scores)
        else:
            torch.ge(self.scores, self._bounds(thresholds, down=True), out=window)
            at_most = torch.le(self.scores, self._bounds(thresholds, down=False), out=self.scores)
            found = self._recomputed(window.logical_and_(at_most))  # within error of the threshold
        # 1.0 where the score is at most the upper bound, written over the scores: a boolean mask's sum would first
        # copy it to int64 (8 bytes an entry), and float sums of ones are exact below 2^24. Those of the recomputed
        # entries that fail the test are taken off.
        counts = at_most.sum(dim=1).long()
        wanted = thresholds[found.rows]
        fails = found.scores > wanted if inclusive else found.scores >= wanted
        counts -= torch.bincount(found.rows[fails], minlength=self.scores.shape[0])
        if found.whole_rows.numel() > 0:
            wanted = thresholds[found.whole_rows].unsqueeze(1)
            below = found.whole <= wanted if inclusive else found.whole < wanted
            counts[found.whole_rows] = below.sum(dim=1)
        return counts

    def shifted(self, top: Optional[Tensor]) -> Tensor:
        """``scores - top_i`` per row (``scores`` when ``top`` is None) in float64.

        In place when ``scores`` is float64, else in a buffer shared by the blocks (``copy_`` converts as it goes;
        a float32 - float64 operation would first copy the block to float64).
        """
        scores = self.scores if self.scores.dtype == torch.float64 else self._buffer("float64", torch.float64)
        if scores is not self.scores:
            scores.copy_(self.scores)
        return scores if top is None else scores.sub_(top.unsqueeze(1))


def score_blocks(
    images: Tensor, texts: Tensor, block_elements: Optional[int] = None, texts_are_unit: bool = False
) -> Iterator[ScoreBlock]:
    """Yield a :class:`ScoreBlock` for consecutive blocks of images, in order.

    ``texts_are_unit=True`` says that ``texts`` already holds :func:`unit_rows` of the captions (float64), which
    are then used as they are instead of normalised into a copy.

    Every block's scores are written into one buffer, allocated once. (Allocating a fresh block each time lets
    glibc's heap fragment, and then the process keeps hundreds of MB it no longer uses.)

    Example:
        >>> images, texts = torch.eye(3), torch.eye(3)
        >>> [tuple(block.scores.shape) for block in score_blocks(images, texts, block_elements=6)]
        [(2, 3), (1, 3)]
        >>> [block.matching.tolist() for block in score_blocks(images, texts, block_elements=6)]
        [[1.0, 1.0], [1.0]]
    """
    count = images.shape[0]
    captions = texts if texts_are_unit else unit_rows(texts)
    error = float32_score_error(captions.shape[1])
    if not (math.isfinite(error) and float32_products_are_ieee(captions.device)):
        error = 0.0
    dtype = torch.float64 if error == 0 else torch.float32
    product_captions = captions.T if error == 0 else captions.to(torch.float32).T
    rows = block_rows(count, block_elements)
    buffers = {"scores": torch.empty(min(rows, count), count, dtype=dtype, device=images.device)}
    for start in range(0, count, rows):
        stop = min(start + rows, count)
        scores = buffers["scores"][: stop - start]
        block_images = unit_rows(images[start:stop])
        torch.matmul(block_images.to(dtype), product_captions, out=scores)
        yield ScoreBlock(start, scores, block_images, captions, error, buffers)
