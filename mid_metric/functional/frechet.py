r"""The Fréchet distance between two Gaussians fitted to feature sets, in float64 through symmetric eigenproblems.

For the Gaussians ``N(mu_r, S_r)`` (real images) and ``N(mu_g, S_g)`` (generated images), the squared 2-Wasserstein
(Fréchet) distance is

.. math:: \mathrm{FD} = \lVert \mu_r - \mu_g \rVert^2 + \operatorname{tr} S_r + \operatorname{tr} S_g
          - 2 \operatorname{tr} \bigl(S_r^{1/2} S_g S_r^{1/2}\bigr)^{1/2}

With Inception-v3 pool features this is FID; with CLIP or DINOv2 embeddings it is FD_CLIP or FD_DINOv2
(``docs/quality_metrics.md``).

How it is computed: ``S_r = V diag(lambda) V^T`` by ``torch.linalg.eigh`` gives ``S_r^{1/2} = V diag(sqrt(lambda))
V^T``; the product ``S_r^{1/2} S_g S_r^{1/2}`` is symmetric positive semi-definite, so its eigenvalues (by
``torch.linalg.eigvalsh``) are real and non-negative, and the last trace is the sum of their square roots. Both
eigenproblems are symmetric: stable, real, and without the complex parts and retries of a general matrix square
root (``scipy.linalg.sqrtm`` of ``S_r S_g``). Everything runs in float64 on the inputs' device.

Rounding makes some eigenvalues that are zero in exact arithmetic slightly negative. An eigenvalue of a covariance
down to ``-`` :data:`EIGENVALUE_TOLERANCE` ``x D x eps x`` (its largest eigenvalue), with ``eps`` the machine
epsilon of the covariance's dtype, counts as rounding and is set to 0; a more negative one means the matrix is not
a covariance, and raises. Negative eigenvalues of the product, which only rounding makes once both covariances have
passed that check, are set to 0.

:func:`frechet_distance` fits the two Gaussians to feature matrices as pytorch-fid and torchmetrics do: the sample
mean and the unbiased covariance (divided by ``N - 1``), computed in two passes in float64 (centre first, then
multiply), a block of rows at a time.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from mid_metric._checks import FLOATING_DTYPES, check_features, check_same_device

__all__ = ["EIGENVALUE_TOLERANCE", "frechet_distance", "frechet_distance_from_moments", "mean_and_covariance"]

F64 = torch.float64

#: Negative eigenvalues of a covariance down to ``EIGENVALUE_TOLERANCE * D * eps * largest eigenvalue`` are
#: rounding (set to 0); ``eps`` is the machine epsilon of the covariance's dtype.
EIGENVALUE_TOLERANCE = 10.0

#: Rows per block of the two-pass mean and covariance (bounds the float64 copy of the rows to ``8 * 4096 * D`` bytes).
_ROWS_PER_BLOCK = 4096


def _check_mean(mean: object, name: str) -> Tensor:
    if not isinstance(mean, Tensor):
        raise TypeError(f"`{name}` must be a torch.Tensor of shape (D,), got {type(mean).__name__}.")
    if mean.dtype not in FLOATING_DTYPES:
        raise TypeError(f"`{name}` must be a floating tensor, got {mean.dtype}.")
    if mean.ndim != 1 or mean.shape[0] == 0:
        raise ValueError(f"`{name}` must have shape (D,) with D >= 1, got {tuple(mean.shape)}.")
    if not bool(torch.isfinite(mean).all()):
        raise ValueError(f"`{name}` contains NaN or Inf values.")
    return mean


def _check_covariance(covariance: object, name: str, dim: int) -> Tensor:
    """Check a covariance ``(dim, dim)``: floating, finite, symmetric up to rounding; return it symmetrised, float64."""
    if not isinstance(covariance, Tensor):
        raise TypeError(f"`{name}` must be a torch.Tensor of shape ({dim}, {dim}), got {type(covariance).__name__}.")
    if covariance.dtype not in FLOATING_DTYPES:
        raise TypeError(f"`{name}` must be a floating tensor, got {covariance.dtype}.")
    if covariance.shape != (dim, dim):
        raise ValueError(f"`{name}` must have shape ({dim}, {dim}) to match the means, got {tuple(covariance.shape)}.")
    if not bool(torch.isfinite(covariance).all()):
        raise ValueError(f"`{name}` contains NaN or Inf values.")
    matrix = covariance.to(F64)
    # Asymmetry up to sqrt(eps) of the largest entry is rounding (a float32 product X^T X is not exactly symmetric).
    largest = float(matrix.abs().max())
    asymmetry = float((matrix - matrix.T).abs().max())
    if asymmetry > math.sqrt(torch.finfo(covariance.dtype).eps) * largest:
        raise ValueError(
            f"`{name}` is not symmetric (largest |S - S^T| is {asymmetry:.3g}, largest |S| is {largest:.3g});"
            " pass a covariance matrix."
        )
    return (matrix + matrix.T) / 2


def _clamped_eigenvalues(eigenvalues: Tensor, name: str, dtype: torch.dtype) -> Tensor:
    """Set rounding-level negative eigenvalues of a covariance to 0; raise if one is clearly negative."""
    dim = eigenvalues.shape[0]
    scale = float(eigenvalues.abs().max())
    tolerance = EIGENVALUE_TOLERANCE * dim * torch.finfo(dtype).eps * scale
    smallest = float(eigenvalues.min())
    if smallest < -tolerance:
        raise ValueError(
            f"`{name}` is not positive semi-definite: its smallest eigenvalue is {smallest:.3g} (largest"
            f" {scale:.3g}); pass a covariance matrix."
        )
    return eigenvalues.clamp_min(0.0)


def frechet_distance_from_moments(
    mean_real: Tensor, covariance_real: Tensor, mean_generated: Tensor, covariance_generated: Tensor
) -> Tensor:
    r"""The Fréchet distance between ``N(mean_real, covariance_real)`` and ``N(mean_generated, covariance_generated)``.

    Args:
        mean_real: Mean of the real features, ``(D,)``.
        covariance_real: Their covariance, ``(D, D)``, symmetric positive semi-definite.
        mean_generated: Mean of the generated features, ``(D,)``.
        covariance_generated: Their covariance, ``(D, D)``.

    Returns:
        0-dim float64 tensor (>= 0 up to rounding) on the device of ``mean_real``.

    Raises:
        TypeError: If an argument is not a floating tensor.
        ValueError: If a shape is wrong or the sizes differ, the arguments are on different devices, a value is NaN
            or Inf, or a covariance is not symmetric or not positive semi-definite (beyond rounding).

    Example:
        >>> import torch
        >>> from mid_metric.functional.frechet import frechet_distance_from_moments
        >>> eye = torch.eye(2, dtype=torch.float64)
        >>> # ||(3, 4)||^2 + tr(I) + tr(4 I) - 2 tr(2 I) = 25 + 2 + 8 - 8
        >>> frechet_distance_from_moments(torch.zeros(2), eye, torch.tensor([3.0, 4.0]), 4 * eye).item()
        27.0
    """
    mean_real = _check_mean(mean_real, "mean_real")
    mean_generated = _check_mean(mean_generated, "mean_generated")
    dim = mean_real.shape[0]
    if mean_generated.shape[0] != dim:
        raise ValueError(
            f"`mean_real` and `mean_generated` must have one size, got {dim} and {mean_generated.shape[0]}."
        )
    arguments = {
        "covariance_real": covariance_real,
        "mean_generated": mean_generated,
        "covariance_generated": covariance_generated,
    }
    for name, value in arguments.items():
        if isinstance(value, Tensor) and value.device != mean_real.device:
            raise ValueError(f"`{name}` is on {value.device}, but `mean_real` is on {mean_real.device}.")
    sigma_real = _check_covariance(covariance_real, "covariance_real", dim)
    sigma_generated = _check_covariance(covariance_generated, "covariance_generated", dim)

    eigenvalues_real, vectors_real = torch.linalg.eigh(sigma_real)
    eigenvalues_real = _clamped_eigenvalues(eigenvalues_real, "covariance_real", covariance_real.dtype)
    eigenvalues_generated = torch.linalg.eigvalsh(sigma_generated)
    _clamped_eigenvalues(eigenvalues_generated, "covariance_generated", covariance_generated.dtype)

    root_real = (vectors_real * eigenvalues_real.sqrt()) @ vectors_real.T
    product = root_real @ sigma_generated @ root_real
    product = (product + product.T) / 2
    trace_root = torch.linalg.eigvalsh(product).clamp_min(0.0).sqrt().sum()

    difference = mean_real.to(F64) - mean_generated.to(F64)
    # tr(S) is the sum of the diagonal (not of the clamped eigenvalues): the same as every reference implementation.
    traces = sigma_real.diagonal().sum() + sigma_generated.diagonal().sum()
    return difference.dot(difference) + traces - 2.0 * trace_root


def mean_and_covariance(features: Tensor, name: str = "features") -> tuple[Tensor, Tensor]:
    """The float64 mean ``(D,)`` and unbiased covariance ``(D, D)`` (divided by ``N - 1``) of checked features.

    Two passes over blocks of rows: the mean first, then the scatter of the centred rows, so that a large common
    offset of the features costs no precision.

    Raises:
        ValueError: If there are fewer than 2 rows.

    Example:
        >>> mean, covariance = mean_and_covariance(torch.tensor([[0.0, 1.0], [2.0, 3.0]]))
        >>> mean.tolist(), covariance.tolist()
        ([1.0, 2.0], [[2.0, 2.0], [2.0, 2.0]])
    """
    count = features.shape[0]
    if count < 2:
        raise ValueError(f"`{name}` needs at least 2 rows for a covariance, got {count}.")
    dim = features.shape[1]
    total = torch.zeros(dim, dtype=F64, device=features.device)
    for start in range(0, count, _ROWS_PER_BLOCK):
        total += features[start : start + _ROWS_PER_BLOCK].to(F64).sum(dim=0)
    mean = total / count
    scatter = torch.zeros(dim, dim, dtype=F64, device=features.device)
    for start in range(0, count, _ROWS_PER_BLOCK):
        centred = features[start : start + _ROWS_PER_BLOCK].to(F64) - mean
        scatter.addmm_(centred.T, centred)
    return mean, scatter / (count - 1)


def frechet_distance(real_features: Tensor, generated_features: Tensor) -> Tensor:
    r"""The Fréchet distance between Gaussians fitted to real and generated image features.

    The means and the unbiased covariances (``N - 1``, as pytorch-fid and torchmetrics) are computed in float64 in
    two passes; see :func:`frechet_distance_from_moments` for the distance. The value depends on the feature
    extractor, its preprocessing and the numbers of images (it is biased upward at small ``N``):
    ``docs/quality_metrics.md``.

    Args:
        real_features: Features of the real images, ``(N_r, D)``, ``N_r >= 2``.
        generated_features: Features of the generated images, ``(N_g, D)``, ``N_g >= 2``.

    Returns:
        0-dim float64 tensor on the features' device.

    Raises:
        TypeError: If the features are not floating tensors.
        ValueError: If a shape is wrong or the feature sizes differ, the features are on different devices, a value
            is NaN or Inf, or a set has fewer than 2 rows.

    Example:
        >>> import torch
        >>> from mid_metric.functional.frechet import frechet_distance
        >>> real = torch.tensor([[0.0, 0.0], [2.0, 0.0], [0.0, 2.0], [2.0, 2.0]])
        >>> round(frechet_distance(real, real + torch.tensor([3.0, 4.0])).item(), 9)   # a shift: ||(3, 4)||^2
        25.0
        >>> round(frechet_distance(real, 2 * real).item(), 9)   # the mean moves by (1, 1); the scale doubles
        4.666666667
    """
    real_features = check_features(real_features, "real_features")
    generated_features = check_features(generated_features, "generated_features", real_features.shape[1])
    check_same_device(real_features, generated_features, "real_features", "generated_features")
    mean_real, covariance_real = mean_and_covariance(real_features, "real_features")
    mean_generated, covariance_generated = mean_and_covariance(generated_features, "generated_features")
    return frechet_distance_from_moments(mean_real, covariance_real, mean_generated, covariance_generated)
