"""The Gaussian image/text model that the bias and uncertainty tests share, with its population MID.

Jointly Gaussian data whose coordinate pairs are independent, where

    MID* = sum_k [ -1/2 log(1 - rho_k^2) + 1/2 (E xh_k^2 - E (xh_k - rho_k yh_k)^2 / (1 - rho_k^2)) ]

for a standard reference with correlations rho_k and candidates (xh, yh): PMI is I + 1/2 (d2_x - d2_{x|y}), and
d2_{x|y} is the residual of x given y (docs/estimator.md).
"""

from __future__ import annotations

import torch

from mid_metric import moments
from mid_metric.functional import divergence_from_moments, reference_from_moments

F64 = torch.float64


def population_mid(rho: torch.Tensor, cand_rho: torch.Tensor, shift: float) -> float:
    """MID* for candidates xh = cand_rho * yh + sqrt(1 - cand_rho^2) e + shift, yh ~ N(0, 1), per coordinate."""
    second_x = 1.0 + shift**2
    residual = (cand_rho - rho) ** 2 + 1.0 - cand_rho**2 + shift**2
    return float((-0.5 * torch.log1p(-(rho**2)) + 0.5 * (second_x - residual / (1.0 - rho**2))).sum())


class Model:
    def __init__(self, dim: int, cand_scale: float = 0.7, shift: float = 0.3) -> None:
        self.dim = dim
        self.rho = torch.linspace(0.85, 0.1, dim, dtype=F64)
        self.cand_rho = cand_scale * self.rho
        self.shift = shift
        self.truth = population_mid(self.rho, self.cand_rho, shift)
        self.mi = float(-0.5 * torch.log1p(-(self.rho**2)).sum())

    def reference(self, n: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.randn(n, self.dim, dtype=F64, generator=g)
        y = self.rho * x + torch.sqrt(1 - self.rho**2) * torch.randn(n, self.dim, dtype=F64, generator=g)
        return x, y

    def images_for(self, texts: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        noise = torch.randn(texts.shape, dtype=F64, generator=g)
        return self.cand_rho * texts + torch.sqrt(1 - self.cand_rho**2) * noise + self.shift


def packed(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return moments.from_features(torch.cat([x, y], dim=1))


def run_estimators(model: Model, n: int, reps: int, protocol: str, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Return (paper's, corrected) MID over ``reps`` independent repetitions of reference and candidates."""
    g = torch.Generator().manual_seed(seed)
    raw, corrected = [], []
    for _ in range(reps):
        x, y = model.reference(n, g)
        if protocol == "independent":
            texts = torch.randn(n, model.dim, dtype=F64, generator=g)
            cand = packed(model.images_for(texts, g), texts)
        elif protocol == "shared_text":  # text-to-image: images generated for the reference's own captions
            cand = packed(model.images_for(y, g), y)
        else:  # captioning: captions generated for the reference's own images (the model is symmetric in x, y)
            cand = packed(x, model.images_for(x, g))
        ref = reference_from_moments(packed(x, y), model.dim)
        raw.append(float(divergence_from_moments(ref, cand).mid))
        corrected.append(float(divergence_from_moments(ref, cand, bias_correction=True).mid))
    return torch.tensor(raw, dtype=F64), torch.tensor(corrected, dtype=F64)


def wishart_covariances(dim: int, n: int, reps: int, sigma: torch.Tensor, seed: int) -> torch.Tensor:
    """``reps`` sample covariances (about the sample mean) of ``n + 1`` Gaussian points with covariance sigma."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(reps, n + 1, dim, dtype=F64, generator=g) @ torch.linalg.cholesky(sigma).mT
    centred = z - z.mean(dim=1, keepdim=True)
    return centred.mT @ centred / n


def random_spd(dim: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(dim, dim, dtype=F64, generator=g)
    return a @ a.T / dim + 0.5 * torch.eye(dim, dtype=F64)
