"""torchmetrics' wrappers around the metric, run as the README documents them."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from torchmetrics.wrappers import BootStrapper

from mid_metric import MutualInformationDivergence
from mid_metric.functional import mutual_information_divergence

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_snippet(heading: str) -> str:
    """The first ```python block after the README heading that contains ``heading``."""
    text = README.read_text(encoding="utf-8")
    section = text[text.index(heading) :]
    match = re.search(r"```python\n(.*?)```", section, re.S)
    assert match, f"no python block after {heading!r}"
    return match.group(1)


def gaussian_pairs(n: int, seed: int, rho: float) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 8, generator=gen, dtype=torch.float64)
    y = rho * x + (1 - rho**2) ** 0.5 * torch.randn(n, 8, generator=gen, dtype=torch.float64)
    return x, y


def test_bootstrapper_as_the_readme_documents_it():
    real_images, captions = gaussian_pairs(3000, 0, 0.6)
    generated_images, _ = gaussian_pairs(3000, 1, 0.6)
    generated_images = 0.8 * real_images + 0.6 * generated_images  # partly aligned with the captions
    namespace = {"real_images": real_images, "captions": captions, "generated_images": generated_images}
    exec(readme_snippet("BootStrapper"), namespace)  # noqa: S102 - the README's own example
    result = namespace["result"]
    assert set(result) >= {"mean", "std", "quantile"}
    low, high = result["quantile"].tolist()
    assert result["quantile"].dtype == torch.float64 and low < high
    # Independent value: the MID of the whole sets, from the functional API. Resampling spreads the copies
    # around it; their mean is within a few spreads of it.
    full = mutual_information_divergence(real_images, captions, generated_images, captions).item()
    assert abs(result["mean"].item() - full) < 4 * result["std"].item() + 0.02
    assert low - 4 * result["std"].item() < full < high + 4 * result["std"].item()
    assert 0 < result["std"].item() < 0.5


def test_float32_quantiles_are_what_the_readme_warns_about():
    # The README says why the quantiles must be float64; check that the reason still holds.
    x, y = gaussian_pairs(400, 2, 0.5)
    bootstrap = BootStrapper(
        MutualInformationDivergence(feature=8), num_bootstraps=3, quantile=torch.tensor([0.05, 0.95])
    )
    bootstrap.update(x, y, real=True)
    bootstrap.update(x[:100], y[:100], real=False)
    with pytest.raises(RuntimeError, match="same dtype"):
        bootstrap.compute()
