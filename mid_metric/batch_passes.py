"""The element-wise passes over a batch of feature rows, run on the calling thread when the batch is on the CPU.

An update makes a few memory-bound passes over its batch besides the GEMMs: the bound check of the features, the
cast into the float64 workspace with the centring on the shift, and the column sums. Each takes well under a
millisecond on one core for 1024 rows of 1536 features, but torch runs each in a parallel region of all its
threads, and a region ends only once every thread has run: on a busy machine, where a thread may wait for a time
slice, a region costs the waiting threads' CPU time as well (about 8 ms a region, measured on the shared 2-core
machine of the benchmarks, against 0.3 ms for the pass on one thread). So on the CPU these passes go through numpy,
which runs an element-wise pass on the calling thread; the GEMMs, where the threads pay off, stay in torch. On other
devices, and for dtypes that numpy lacks (bfloat16), torch runs them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Optional

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "TORCH_PARALLEL_GRAIN",
    "centre_rows_",
    "column_sums",
    "host_array",
    "take_rows",
    "within_bound",
]

_NUMPY_DTYPES = (torch.float16, torch.float32, torch.float64)

#: The size (in elements) from which torch runs an element-wise pass or a reduction in a parallel region
#: (``at::internal::GRAIN_SIZE``).
TORCH_PARALLEL_GRAIN = 32768


def host_array(tensor: Tensor, writable: bool = False) -> Optional[np.ndarray]:
    """A numpy view of ``tensor`` (no copy) when it is a strided CPU tensor of a dtype numpy has, else ``None``.

    ``writable``: the view will be written to, so ``None`` also where torch would refuse an in-place change (an
    inference tensor outside ``torch.inference_mode()``), so that the torch path raises as it always did.

    Example:
        >>> host_array(torch.ones(2, 3)).shape, host_array(torch.ones(2, dtype=torch.bfloat16))
        ((2, 3), None)
    """
    if tensor.device.type != "cpu" or tensor.layout != torch.strided or tensor.dtype not in _NUMPY_DTYPES:
        return None
    if type(tensor) is not Tensor and not isinstance(tensor, torch.nn.Parameter):
        return None  # (a tensor subclass may mean something else by its data)
    if writable and tensor.is_inference() and not torch.is_inference_mode_enabled():
        return None
    return tensor.detach().numpy()


def within_bound(features: Tensor, bound: float) -> Tensor | bool:
    """Whether every value of ``features`` is finite and of magnitude at most ``bound``.

    A host ``bool`` for a CPU tensor (two passes on the calling thread), else a 0-dim bool tensor on its device
    (one ``aminmax`` pass, no host synchronisation). NaN fails: both reductions propagate it, and it fails every
    comparison, as Inf fails the comparison with a finite bound.

    Example:
        >>> within_bound(torch.tensor([[1.0, -2.0]]), 2.0), within_bound(torch.tensor([[float("nan")]]), 2.0)
        (True, False)
    """
    if features.numel() == 0:
        return True
    array = host_array(features)
    if array is not None:
        return bool(array.max() <= bound and array.min() >= -bound)
    smallest, largest = torch.aminmax(features)
    return (largest <= bound) & (smallest >= -bound)


def centre_rows_(target: Tensor, parts: Sequence[Tensor], shift: Tensor) -> Tensor:
    """Write the column blocks ``parts`` side by side into ``target``, cast to its dtype, less ``shift``.

    One pass per block for the cast and the centring together (``target`` may be the only block itself: then it
    is centred in place), and one for the column sums, which are returned. The centred rows are bitwise the same on
    every path (an exact cast, then one subtraction); the column sums may differ in the last bits between the paths
    (numpy adds the rows in order, torch in a cascade).

    Args:
        target: ``(B, D)`` tensor that receives the rows.
        parts: Blocks ``(B, D_i)`` with ``sum D_i = D``, of any floating dtype, on ``target``'s device.
        shift: ``(D,)`` vector subtracted from every row, of ``target``'s dtype.

    Returns:
        The column sums of the centred rows, ``(D,)``.

    Example:
        >>> target = torch.empty(2, 3, dtype=torch.float64)
        >>> parts = (torch.tensor([[1.0, 2.0], [3.0, 4.0]]), torch.tensor([[5.0], [7.0]]))
        >>> centre_rows_(target, parts, torch.tensor([1.0, 1.0, 1.0], dtype=torch.float64)).tolist()
        [2.0, 4.0, 10.0]
        >>> target.tolist()
        [[0.0, 1.0, 4.0], [2.0, 3.0, 6.0]]
    """
    out, centre = host_array(target, writable=True), host_array(shift)
    arrays = [host_array(part) for part in parts]
    if out is not None and centre is not None and all(array is not None for array in arrays):
        column = 0
        for array in arrays:  # (numpy casts a float32 block in buffered chunks: no temporary of the batch's size)
            width = array.shape[1]
            np.subtract(array, centre[column : column + width], out=out[:, column : column + width])
            column += width
        return column_sums(target)
    column = 0
    for part in parts:  # cast and concatenation in one copy, centring in place (no temporary)
        width = part.shape[1]
        block, block_shift = target[:, column : column + width], shift[column : column + width]
        if part.dtype == target.dtype:
            torch.sub(part, block_shift, out=block)
        else:  # (a mixed-dtype sub would cast the part into a temporary first)
            block.copy_(part)
            block.sub_(block_shift)
        column += width
    return column_sums(target)


def column_sums(rows: Tensor) -> Tensor:
    """The column sums of ``rows`` ``(B, D)``: numpy's on the CPU where torch would sum in a parallel region.

    Below torch's parallel grain (:data:`TORCH_PARALLEL_GRAIN` elements) torch's sum runs on the calling thread
    anyway, and it gives the bits it always gave there (so that statistics saved by earlier versions continue bit
    for bit); above it, torch's parallel sum is itself bitwise different from its one-thread sum, and numpy adds
    the rows in order on the calling thread, which is as accurate (within a few units in the last place of the
    sum of the magnitudes).

    Example:
        >>> column_sums(torch.ones(3, 2)).tolist()
        [3.0, 3.0]
    """
    array = host_array(rows)
    if array is None or rows.numel() < TORCH_PARALLEL_GRAIN:
        return rows.sum(dim=0)
    return torch.from_numpy(np.add.reduce(array, axis=0))


def take_rows(rows: Tensor, index: Tensor, out: Optional[Tensor] = None) -> Tensor:
    """``rows[index]`` for a 1-D int64 ``index``, gathered on the calling thread on the CPU.

    Args:
        rows: ``(B, D)`` tensor.
        index: ``(n,)`` row numbers in ``[0, B)``.
        out: A tensor of ``rows``' dtype and device with at least ``n`` rows, of which the first ``n`` receive the
            rows and are returned; ``None``: a new tensor.

    Example:
        >>> take_rows(torch.tensor([[1.0], [2.0], [3.0]]), torch.tensor([2, 0])).tolist()
        [[3.0], [1.0]]
    """
    target = None if out is None else out[: index.shape[0]]
    array, positions = host_array(rows), host_array(index)
    written = None if target is None else host_array(target, writable=True)
    if array is None or positions is None or (target is not None and written is None):
        return rows[index] if target is None else torch.index_select(rows, 0, index, out=target)
    if target is None:
        return torch.from_numpy(np.take(array, positions, axis=0))
    np.take(array, positions, axis=0, out=written, mode="clip")  # (the index is in range: "clip" skips a copy)
    return target
