r"""The Fréchet distance from packed moments: the plug-in value, and the delete-a-group jackknife with its interval.

The metrics keep each group of image features as packed float64 moments (count, shift, shifted sums;
:mod:`mid_metric.moments`), MID's over ``[x; y]`` and ``FrechetDistance``'s over the image features alone.
:func:`leading_block` takes the image block ``x`` of joint moments; :func:`frechet_distance_from_packed` is the
plug-in FD of two groups (the mean and the unbiased covariance, divided by ``N - 1``, as pytorch-fid and torchmetrics
take them; :func:`~mid_metric.functional.frechet.frechet_distance_from_moments` for the distance).

The plug-in FD is biased upward by about ``b / N`` (the sample covariances spread their eigenvalues). The
delete-a-group jackknife (:func:`jackknife_frechet_distance`) removes that term without a model of the features:
the rows of both sets fall in ``K`` groups (the metric hashes each image row, :func:`mid_metric.jackknife.row_groups`,
so the groups depend on neither batching, order nor the number of processes), ``FD_k`` is the plug-in value with
group ``k`` left out of the real *and* the generated rows, and
:func:`~mid_metric.jackknife.jackknife_combine` gives ``FD_J = G FD - sum_k (1 - f_k) FD_k`` with ``f_k`` the share
of all the rows (both sets) in group ``k``, a distribution-free standard error, and a Student-t interval with
``G - 1`` degrees of freedom.
"""

from __future__ import annotations

from typing import NamedTuple, Optional, Union

import torch
from torch import Tensor

from mid_metric import moments
from mid_metric._checks import check_level
from mid_metric.functional.frechet import frechet_distance_from_moments
from mid_metric.jackknife import jackknife_combine, leave_one_out, left_out_fits, merge_groups, two_sided_t_quantile

__all__ = [
    "BIAS_CORRECTIONS",
    "check_fd_bias_correction",
    "FrechetResult",
    "leading_block",
    "frechet_distance_from_packed",
    "jackknife_frechet_distance",
]


#: The values of ``bias_correction`` for the Fréchet distance: the plug-in value, or the delete-a-group jackknife.
BIAS_CORRECTIONS = (False, "jackknife")


def check_fd_bias_correction(bias_correction: object, name: str = "bias_correction") -> Union[bool, str]:
    """Check a Fréchet distance's ``bias_correction`` (``False`` or ``"jackknife"``) and return it.

    Raises:
        ValueError: If it is anything else (``True`` included: FD has no Gaussian correction here).

    Example:
        >>> check_fd_bias_correction("jackknife")
        'jackknife'
        >>> check_fd_bias_correction(True)
        Traceback (most recent call last):
        ...
        ValueError: `bias_correction` of the Fréchet distance must be False (the plug-in value) or 'jackknife', \
got True.
    """
    if bias_correction is False or (isinstance(bias_correction, str) and bias_correction == "jackknife"):
        return bias_correction
    raise ValueError(
        f"`{name}` of the Fréchet distance must be False (the plug-in value) or 'jackknife', got {bias_correction!r}."
    )


class FrechetResult(NamedTuple):
    """A Fréchet distance with what it came from, and its uncertainty when it was jackknifed.

    Attributes:
        value: The distance, 0-dim float64: the jackknife's estimate when ``bias_corrected``, else the plug-in value.
        plug_in: The plug-in value of all the rows (the same as ``value`` without the jackknife).
        num_real: Real images.
        num_generated: Generated images.
        bias_corrected: Whether ``value`` is the jackknife's.
        standard_error: The jackknife's standard error of ``value`` (``None`` for the plug-in value).
        ci_low: Lower end of the ``ci_level`` interval (``None`` when none was asked for).
        ci_high: Upper end.
        ci_level: Nominal coverage of the interval.
        num_groups: The jackknife's groups that hold images, ``G`` (``None`` for the plug-in value).
    """

    value: Tensor
    plug_in: Tensor
    num_real: int
    num_generated: int
    bias_corrected: bool = False
    standard_error: Optional[Tensor] = None
    ci_low: Optional[Tensor] = None
    ci_high: Optional[Tensor] = None
    ci_level: Optional[float] = None
    num_groups: Optional[int] = None

    def with_interval(self, level: float) -> FrechetResult:
        """This jackknife result with its ``level`` interval ``value +/- t_{G-1} standard_error``.

        Raises:
            ValueError: If ``level`` is not in ``(0, 1)``, or the result has no standard error (the plug-in value).
        """
        check_level(level)
        if self.standard_error is None or self.num_groups is None:
            raise ValueError("Only a jackknife Fréchet distance has a standard error and an interval.")
        quantile = two_sided_t_quantile(float(level), self.num_groups - 1)
        low, high = self.value - quantile * self.standard_error, self.value + quantile * self.standard_error
        return self._replace(ci_low=low, ci_high=high, ci_level=float(level))


def leading_block(packed: Tensor, dim: int) -> Tensor:
    """Return the packed moments of the first ``dim`` coordinates of packed moments (one state or a ``(K, P)`` stack).

    The image block of MID's joint moments ``[x; y]`` is ``leading_block(packed, image_dim)``: the count, the first
    ``dim`` entries of the shift and of the shifted sums, and the leading ``dim x dim`` block of the outer-product
    sums. It is exact (a copy of those numbers).

    Raises:
        ValueError: If ``dim`` is not between 1 and the dimension of ``packed``.

    Example:
        >>> z = torch.tensor([[0.0, 5.0], [2.0, 1.0], [4.0, 3.0]], dtype=torch.float64)
        >>> block = leading_block(moments.from_features(z), 1)
        >>> [t.tolist() for t in moments.mean_and_scatter(block)]
        [[2.0], [[8.0]]]
    """
    full = moments.dim_from_packed_size(packed.shape[-1])
    if isinstance(dim, bool) or not isinstance(dim, int) or not 1 <= dim <= full:
        raise ValueError(f"`dim` must be an int from 1 to {full}, the dimension of the moments; got {dim!r}.")
    if dim == full:
        return packed
    lead = packed.shape[:-1]
    outer = packed[..., 1 + 2 * full :].reshape(*lead, full, full)[..., :dim, :dim]
    parts = [packed[..., :1], packed[..., 1 : 1 + dim], packed[..., 1 + full : 1 + full + dim]]
    return torch.cat([*parts, outer.reshape(*lead, dim * dim)], dim=-1)


def _mean_and_covariance(packed: Tensor, what: str) -> tuple[Tensor, Tensor]:
    count = int(packed[0])
    if count < 2:
        raise ValueError(f"The Fréchet distance needs at least 2 {what} images for a covariance, got {count}.")
    return moments.mean_and_scatter(packed, scale=1.0 / (count - 1))


def frechet_distance_from_packed(real: Tensor, generated: Tensor) -> Tensor:
    """The plug-in Fréchet distance between two groups of image features given as packed moments.

    The Gaussians are the groups' means and unbiased covariances (``N - 1``); the distance is
    :func:`~mid_metric.functional.frechet.frechet_distance_from_moments`. Both states must be of the same dimension.

    Args:
        real: Packed moments of the real images' features.
        generated: Packed moments of the generated images' features.

    Returns:
        0-dim float64 tensor on the states' device.

    Raises:
        ValueError: If a group has fewer than 2 images, or a covariance is not positive semi-definite.

    Example:
        >>> real = moments.from_features(torch.tensor([[0.0, 0.0], [2.0, 0.0], [0.0, 2.0], [2.0, 2.0]]))
        >>> generated = moments.from_features(torch.tensor([[3.0, 4.0], [5.0, 4.0], [3.0, 6.0], [5.0, 6.0]]))
        >>> round(frechet_distance_from_packed(real, generated).item(), 9)   # a shift by (3, 4)
        25.0
    """
    mean_real, covariance_real = _mean_and_covariance(real, "real")
    mean_generated, covariance_generated = _mean_and_covariance(generated, "generated")
    return frechet_distance_from_moments(mean_real, covariance_real, mean_generated, covariance_generated)


def _check_groups(real_groups: Tensor, generated_groups: Tensor) -> Tensor:
    """Check the two ``(K, P)`` group stacks; return the pooled row count of each group."""
    for name, value in (("real_groups", real_groups), ("generated_groups", generated_groups)):
        if not isinstance(value, Tensor) or value.dtype != torch.float64 or value.ndim != 2:
            raise TypeError(f"`{name}` must be a 2-D float64 tensor of group states (K, (D + 1)^2), got {value!r}.")
    if real_groups.shape != generated_groups.shape:
        raise ValueError(
            "`real_groups` and `generated_groups` must have the same shape (K, (D + 1)^2), got"
            f" {tuple(real_groups.shape)} and {tuple(generated_groups.shape)}."
        )
    for what, groups in (("real", real_groups), ("generated", generated_groups)):
        counts = groups[:, 0]
        smallest = int(float(counts.sum()) - float(counts.max()))
        if smallest < 2:
            raise ValueError(
                f"The jackknife Fréchet distance needs at least 2 {what} images without each group; without its"
                f" largest group the {what} set has {smallest} of {int(counts.sum())}. Pass more images or fewer"
                " `jackknife_groups`."
            )
    pooled = real_groups[:, 0] + generated_groups[:, 0]
    if int((pooled > 0).sum()) < 2:
        raise ValueError("The jackknife Fréchet distance needs images in at least 2 groups; they all hashed to one.")
    return pooled


def jackknife_frechet_distance(
    real_groups: Tensor, generated_groups: Tensor, level: Optional[float] = 0.95
) -> FrechetResult:
    r"""The delete-a-group jackknife of the plug-in Fréchet distance, with its standard error and interval.

    ``FD_k`` is the plug-in value with group ``k`` left out of both sets (:func:`mid_metric.jackknife.leave_one_out`
    on each); the groups that hold no row are skipped, and the others are combined with their share ``f_k`` of all
    the rows: ``FD_J = G FD - sum_k (1 - f_k) FD_k`` (:func:`mid_metric.jackknife.jackknife_combine`). If
    ``E[FD] = FD_pop + a / N_r + b / N_g``, the ``1 / N`` terms cancel exactly when each group holds the same share
    of both sets, and to rounding of that share otherwise (hashed groups of two independent sets hold nearly equal
    shares). The interval is ``FD_J +/- t_{G-1} se``.

    Args:
        real_groups: ``(K, (D + 1)^2)`` packed moments of the real images by group.
        generated_groups: ``(K, (D + 1)^2)`` packed moments of the generated images by group, from the same rule.
        level: Coverage of the interval in ``(0, 1)``; ``None`` leaves it out (the standard error stays).

    Returns:
        :class:`FrechetResult` with ``bias_corrected=True``.

    Raises:
        TypeError: If a stack is not a 2-D float64 tensor.
        ValueError: If the shapes differ, a set has fewer than 2 images without one of the groups, the images all
            fall in one group, ``level`` is not in ``(0, 1)``, or the result is not finite.

    Example:
        >>> from mid_metric.jackknife import group_moments
        >>> g = torch.Generator().manual_seed(0)
        >>> real = torch.randn(2000, 4, dtype=torch.float64, generator=g)
        >>> generated = 1.5 * torch.randn(2000, 4, dtype=torch.float64, generator=g)  # FD = 4 (1.5 - 1)^2 = 1
        >>> result = jackknife_frechet_distance(group_moments(real, 4, 10, "image"),
        ...                                     group_moments(generated, 4, 10, "image"))
        >>> bool(result.ci_low < 1.0 < result.ci_high), bool(abs(result.value - 1) < abs(result.plug_in - 1))
        (True, True)
    """
    check_level(level, allow_none=True)
    pooled = _check_groups(real_groups, generated_groups)
    real_full, generated_full = merge_groups(real_groups), merge_groups(generated_groups)
    plug_in = frechet_distance_from_packed(real_full, generated_full)
    kept = [k for k in range(pooled.shape[0]) if float(pooled[k]) > 0]

    def distance_without(k: int) -> Tensor:
        return frechet_distance_from_packed(
            leave_one_out(real_full, real_groups[k]), leave_one_out(generated_full, generated_groups[k])
        )

    left_out = torch.stack(left_out_fits(distance_without, kept, real_full.device))
    value, error = jackknife_combine(plug_in, left_out, pooled[kept] / pooled.sum())
    if not bool(torch.isfinite(value) & torch.isfinite(error)):
        raise ValueError(
            f"The jackknife Fréchet distance is not finite (value {float(value)}, standard error {float(error)}): the"
            " features are too large for float64 sums of squares; scale them down."
        )
    result = FrechetResult(
        value,
        plug_in,
        int(real_full[0]),
        int(generated_full[0]),
        bias_corrected=True,
        standard_error=error,
        num_groups=len(kept),
    )
    return result if level is None else result.with_interval(level)
