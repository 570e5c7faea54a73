"""``MutualInformationDivergence.plot`` (torchmetrics' plot API), rendered to PNG with the Agg backend."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from reference_impl import ref_mid  # noqa: E402

from mid_metric import MutualInformationDivergence  # noqa: E402

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
DIM = 8


def _epochs() -> tuple[MutualInformationDivergence, list[torch.Tensor], list[float]]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(200, DIM, generator=g, dtype=torch.float64)
    y = 0.5 * x + torch.randn(200, DIM, generator=g, dtype=torch.float64)
    metric = MutualInformationDivergence(feature=DIM)
    values, expected = [], []
    for noise in (2.0, 1.0, 0.5):
        candidates = x + noise * torch.randn(200, DIM, generator=g, dtype=torch.float64)
        metric.update(x, y, real=True)
        metric.update(candidates, y, real=False)
        values.append(metric.compute())
        expected.append(ref_mid(x, y, candidates, y))
        metric.reset()
    return metric, values, expected


def test_plot_sequence_over_epochs_to_png(tmp_path):
    metric, values, expected = _epochs()
    fig, ax = metric.plot(values)
    path = tmp_path / "mid.png"
    fig.savefig(path)
    assert path.read_bytes()[:8] == PNG_MAGIC
    ys = ax.lines[0].get_ydata()
    assert list(ys) == pytest.approx(expected, rel=1e-10)
    assert ax.get_ylabel() == "MutualInformationDivergence"
    plt.close(fig)


def test_plot_single_value_and_default_compute(tmp_path):
    metric, _, expected = _epochs()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(100, DIM, generator=g, dtype=torch.float64)
    y = 0.5 * x + torch.randn(100, DIM, generator=g, dtype=torch.float64)
    metric.update(x, y, real=True)
    metric.update(x, y, real=False)
    fig, ax = metric.plot()  # plots compute()
    assert ax.lines[0].get_ydata()[0] == pytest.approx(ref_mid(x, y, x, y), rel=1e-10)
    fig.savefig(tmp_path / "single.png")
    assert (tmp_path / "single.png").read_bytes()[:8] == PNG_MAGIC
    plt.close(fig)


def test_plot_on_given_axes():
    metric, values, _ = _epochs()
    fig, ax = plt.subplots()
    returned_fig, returned_ax = metric.plot(values[0], ax=ax)
    assert returned_fig is None and returned_ax is ax
    assert len(ax.lines) >= 1
    plt.close(fig)
