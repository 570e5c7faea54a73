"""An independent two-pass float64 MID implementation and synthetic data, for the tests only.

Nothing here imports ``mid_metric``: the functions below are written directly from the formulas in
``docs/estimator.md`` (Kim et al., NeurIPS 2022, and the official naver-ai/mid.metric estimator):

- reference pairs ``(x_i, y_i)``, ``z = [x; y]``, mean ``mu`` and unbiased covariance ``S = C^T C / (N - 1)``
  computed two-pass (centre first, then multiply);
- ``I = 1/2 (log|S_x| + log|S_y| - log|S_z|)`` with ``torch.linalg.slogdet`` (LU, not Cholesky);
- ``MID = I + 1/2 (tr(S_x^-1 Shat_x) + tr(S_y^-1 Shat_y) - tr(S_z^-1 Shat_z))`` where ``Shat`` is the candidates'
  scatter about the *reference* mean divided by ``M - 1``; traces via ``torch.linalg.solve``;
- ``PMI(xh, yh) = I + 1/2 (d2_x + d2_y - d2_z)`` with ``d2_x(v) = (v - mu_x)^T S_x^-1 (v - mu_x)``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

F64 = torch.float64


def _two_pass_cov(z: Tensor) -> tuple[Tensor, Tensor]:
    z = z.to(F64)
    mean = z.mean(dim=0)
    centred = z - mean
    return mean, centred.T @ centred / (z.shape[0] - 1)


def _logdet(matrix: Tensor) -> Tensor:
    sign, logabsdet = torch.linalg.slogdet(matrix)
    if float(sign) <= 0:
        raise ValueError("reference covariance is not positive definite")
    return logabsdet


def _add_eps(matrix: Tensor, eps: float) -> Tensor:
    return matrix + eps * torch.eye(matrix.shape[0], dtype=F64, device=matrix.device) if eps else matrix


def reference_stats(x: Tensor, y: Tensor, eps: float = 0.0) -> dict:
    """Two-pass mean, covariances (with ``eps I``) and MI of the reference pairs."""
    dx = x.shape[1]
    z = torch.cat([x.to(F64), y.to(F64)], dim=1)
    mean, cov = _two_pass_cov(z)
    sz = _add_eps(cov, eps)
    sx = _add_eps(cov[:dx, :dx], eps)
    sy = _add_eps(cov[dx:, dx:], eps)
    mi = 0.5 * (_logdet(sx) + _logdet(sy) - _logdet(sz))
    return {"mean": mean, "sx": sx, "sy": sy, "sz": sz, "mi": mi, "dx": dx}


def ref_mutual_information(x: Tensor, y: Tensor, eps: float = 0.0) -> float:
    """``I`` of the reference pairs, as a Python float."""
    return float(reference_stats(x, y, eps)["mi"])


def ref_mid_terms(x: Tensor, y: Tensor, x0: Tensor, y0: Tensor, eps: float = 0.0) -> tuple[float, float, float]:
    """Return ``(MID, I, distance)`` of candidates ``(x0, y0)`` against the reference ``(x, y)``."""
    st = reference_stats(x, y, eps)
    dx = st["dx"]
    z0 = torch.cat([x0.to(F64), y0.to(F64)], dim=1)
    centred = z0 - st["mean"]  # about the REFERENCE mean, as the official estimator does
    shat = centred.T @ centred / (z0.shape[0] - 1)
    tr_x = torch.linalg.solve(st["sx"], shat[:dx, :dx]).diagonal().sum()
    tr_y = torch.linalg.solve(st["sy"], shat[dx:, dx:]).diagonal().sum()
    tr_z = torch.linalg.solve(st["sz"], shat).diagonal().sum()
    distance = 0.5 * (tr_x + tr_y - tr_z)
    return float(st["mi"] + distance), float(st["mi"]), float(distance)


def ref_mid(x: Tensor, y: Tensor, x0: Tensor, y0: Tensor, eps: float = 0.0) -> float:
    """MID of candidates ``(x0, y0)`` against the reference ``(x, y)``, as a Python float."""
    return ref_mid_terms(x, y, x0, y0, eps)[0]


def ref_corrected_mid(x: Tensor, y: Tensor, x0: Tensor, y0: Tensor) -> float:
    """The Gaussian bias-corrected MID for candidates independent of the reference, from its formula.

    ``I_c = I - (c(Dx, n) + c(Dy, n) - c(Dz, n)) / 2`` with ``c(p, n) = p log(2/n) + sum_i psi((n - i + 1)/2)``, and
    ``T_b^c = (n - p - 1)/n (M - 1)/M T_b - p/N`` for each block trace ``T_b`` of the paper's estimator.
    """
    n_ref, m = x.shape[0], x0.shape[0]
    dof = n_ref - 1
    dims = (x.shape[1], y.shape[1], x.shape[1] + y.shape[1])

    def c(p: int) -> float:
        return p * math.log(2.0 / dof) + float(torch.special.digamma((dof - torch.arange(p, dtype=F64)) / 2.0).sum())

    stats = reference_stats(x, y)
    z0 = torch.cat([x0, y0], dim=1).to(F64)
    centred = z0 - stats["mean"]
    scatter = centred.T @ centred / (m - 1)
    dx = dims[0]
    blocks = ((stats["sx"], slice(0, dx)), (stats["sy"], slice(dx, None)), (stats["sz"], slice(None)))
    traces = [float(torch.trace(torch.linalg.inv(cov) @ scatter[b, b])) for cov, b in blocks]
    corrected = [(dof - p - 1) / dof * (m - 1) / m * t - p / n_ref for t, p in zip(traces, dims)]
    mi = ref_mutual_information(x, y) - 0.5 * (c(dims[0]) + c(dims[1]) - c(dims[2]))
    return mi + 0.5 * (corrected[0] + corrected[1] - corrected[2])


def ref_pmi(x: Tensor, y: Tensor, xs: Tensor, ys: Tensor, eps: float = 0.0) -> Tensor:
    """Per-sample PMI ``I + 1/2 (d2x + d2y - d2z)`` of ``(xs, ys)`` under the reference, float64 ``(B,)``."""
    st = reference_stats(x, y, eps)
    dx = st["dx"]
    c = torch.cat([xs.to(F64), ys.to(F64)], dim=1) - st["mean"]

    def d2(cov: Tensor, v: Tensor) -> Tensor:
        return (v * torch.linalg.solve(cov, v.T).T).sum(dim=1)

    return st["mi"] + 0.5 * (d2(st["sx"], c[:, :dx]) + d2(st["sy"], c[:, dx:]) - d2(st["sz"], c))


# ----------------------------------------------------------------------------- synthetic data
def analytic_mi(rho: Tensor) -> float:
    """MI of jointly Gaussian x, y whose coordinate pairs are independent with correlations ``rho``."""
    rho = torch.as_tensor(rho, dtype=F64)
    return float(-0.5 * torch.log1p(-rho * rho).sum())


def correlated_gaussian(n: int, rho: Tensor, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """Standard jointly Gaussian ``(u, v)`` of shape ``(n, D)`` with ``corr(u_k, v_k) = rho_k``, independent pairs."""
    rho = torch.as_tensor(rho, dtype=F64)
    d = rho.shape[0]
    u = torch.randn(n, d, dtype=F64, generator=generator)
    e = torch.randn(n, d, dtype=F64, generator=generator)
    v = rho * u + torch.sqrt(1 - rho * rho) * e
    return u, v


def well_conditioned_pairs(
    n: int, dx: int = 6, dy: int = 5, seed: int = 0, strength: float = 0.7
) -> tuple[Tensor, Tensor]:
    """Well-conditioned float64 Gaussian pairs with a random linear dependence of y on x."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, dx, dtype=F64, generator=g) @ (
        torch.eye(dx, dtype=F64) + 0.3 * torch.randn(dx, dx, generator=g, dtype=F64)
    )
    w = torch.randn(dx, dy, dtype=F64, generator=g) / math.sqrt(dx)
    y = strength * x @ w + torch.randn(n, dy, dtype=F64, generator=g) + 0.5
    return x + 1.0, y


def _random_orthogonal(d: int, g: torch.Generator) -> Tensor:
    q, r = torch.linalg.qr(torch.randn(d, d, dtype=F64, generator=g))
    return q * torch.sign(r.diagonal())


class ClipLikeDistribution:
    """Hard "CLIP-like" jointly Gaussian pairs with a known MI.

    ``x = mu_x + A_x u``, ``y = mu_y + A_y v`` with ``(u, v)`` from :func:`correlated_gaussian`. Each ``A`` is a
    random rotation times ``diag(sqrt(lambda))`` with eigenvalues ``lambda`` log-spaced from ``lam_max`` down to
    ``lam_min`` (1e-9), and each mean has norm 0.99, as CLIP features do. Because MI is invariant under invertible
    affine maps, ``I(x; y) = -1/2 sum log(1 - rho^2)`` still holds. Samples are cast to float32, as CLIP features
    are (and then the float32 values *are* the data both implementations see).
    """

    def __init__(
        self,
        dx: int = 64,
        dy: int = 64,
        lam_max: float = 1e-3,
        lam_min: float = 1e-9,
        mean_norm: float = 0.99,
        rho_max: float = 0.9,
        seed: int = 0,
    ) -> None:
        g = torch.Generator().manual_seed(seed)
        self.dx, self.dy = dx, dy
        d = min(dx, dy)
        # Correlations of the coordinate pairs (u_k, v_k), k < min(dx, dy); the other coordinates are independent.
        self.rho = torch.linspace(rho_max, 0.05, d, dtype=F64)[torch.randperm(d, generator=g)]

        def factor(dim: int) -> Tensor:
            lam = torch.logspace(math.log10(lam_max), math.log10(lam_min), dim, dtype=F64)
            return _random_orthogonal(dim, g) * lam.sqrt()

        def mean(dim: int) -> Tensor:
            m = torch.randn(dim, dtype=F64, generator=g)
            return mean_norm * m / m.norm()

        self.ax, self.ay = factor(dx), factor(dy)
        self.mx, self.my = mean(dx), mean(dy)

    @property
    def mutual_information(self) -> float:
        return analytic_mi(self.rho)

    def sample(
        self, n: int, seed: int, dtype: torch.dtype = torch.float32, rho_scale: float = 1.0
    ) -> tuple[Tensor, Tensor]:
        """Draw ``n`` pairs; ``rho_scale < 1`` gives less aligned "candidate" pairs from the same marginals."""
        g = torch.Generator().manual_seed(seed)
        d = self.rho.shape[0]
        u_pair, v_pair = correlated_gaussian(n, self.rho * rho_scale, g)
        u = torch.cat([u_pair, torch.randn(n, self.dx - d, dtype=F64, generator=g)], dim=1)
        v = torch.cat([v_pair, torch.randn(n, self.dy - d, dtype=F64, generator=g)], dim=1)
        x = self.mx + u @ self.ax.T
        y = self.my + v @ self.ay.T
        return x.to(dtype), y.to(dtype)


def clip_like_pairs(
    n: int, dim: int = 64, seed: int = 0, sample_seed: int = 1, rho_scale: float = 1.0
) -> tuple[Tensor, Tensor]:
    """Convenience wrapper: ``n`` float32 CLIP-like pairs of dimension ``dim``."""
    return ClipLikeDistribution(dim, dim, seed=seed).sample(n, sample_seed, rho_scale=rho_scale)


def seed123_example() -> tuple[Tensor, Tensor, Tensor]:
    """The official code's cross-check: ``x, y`` uniform in [-1, 1]^2 (seed 123, N = 10), ``x0 = 1.1 x``."""
    torch.manual_seed(123)
    x = torch.rand(10, 2, dtype=F64) * 2 - 1
    y = torch.rand(10, 2, dtype=F64) * 2 - 1
    return x, y, 1.1 * x
