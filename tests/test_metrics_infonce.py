"""``InfoNCE`` (the torchmetrics class): the tester's checks, per-pair values, the cap, and blockwise memory."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from dataclasses import replace

import pytest
import torch
from _state import assert_same_state_dict, snapshot_state_dict
from _tester import check_all_in_process
from companion_refs import OfficialInfoNCETwin, aligned_pairs, infonce_cases, naive_infonce_per_pair

from mid_metric import InfoNCE

pytestmark = pytest.mark.filterwarnings("ignore:The ``compute`` method of metric")

# float32 products: the documented agreement with the float64 formula is a relative 1e-6
REL = 1e-6
CASES = {name: replace(case, rel=REL) for name, case in infonce_cases().items()}
D = 8


@pytest.mark.parametrize("name", sorted(CASES))
def test_every_in_process_check(name):
    check_all_in_process(CASES[name])


@pytest.fixture(scope="module")
def pairs():
    return aligned_pairs(160, D, noise=0.7, seed=61)


@pytest.mark.parametrize("temperature", [1.0, 0.01])
def test_per_sample_is_each_pairs_matching_probability_in_order(pairs, temperature):
    images, texts = pairs
    metric = InfoNCE(feature=D, temperature=temperature)
    metric.update(images[:100], texts[:100])
    metric.update(images[100:], texts[100:])
    values = metric.per_sample()
    assert values.dtype == torch.float64 and values.shape == (160,)
    torch.testing.assert_close(values, naive_infonce_per_pair(images, texts, temperature), rtol=REL, atol=0)
    merged, other = InfoNCE(feature=D, temperature=temperature), InfoNCE(feature=D, temperature=temperature)
    merged.update(images[100:], texts[100:])
    other.update(images[:100], texts[:100])
    merged.merge_state(other)  # own pairs first, then the merged ones
    torch.testing.assert_close(merged.per_sample(), torch.cat([values[100:], values[:100]]), rtol=1e-12, atol=0)


def test_agrees_with_the_official_code_in_class_form():
    images, texts = aligned_pairs(1500, 32, noise=1.0, seed=62)
    twin, ours = OfficialInfoNCETwin(), InfoNCE(feature=32)
    for start in range(0, 1500, 256):
        stop = start + 256
        twin.update(
            torch.zeros(stop - start if stop <= 1500 else 1500 - start, 32), texts[start:stop], images[start:stop]
        )
        ours.update(images[start:stop], texts[start:stop])
    assert float(ours.compute()) == pytest.approx(float(twin.compute()), rel=2e-6)
    torch.testing.assert_close(ours.per_sample(), twin.compute(reduction=False).double(), rtol=2e-6, atol=0)


def test_the_official_code_truncates_silently_and_we_refuse(pairs):
    images, texts = pairs
    twin = OfficialInfoNCETwin(limit=100)
    twin.update(torch.zeros(160, D), texts, images)
    assert twin.compute(reduction=False).shape == (100,)  # 60 pairs dropped without a word
    metric = InfoNCE(feature=D, max_samples=100)
    metric.update(images[:100], texts[:100])
    before = snapshot_state_dict(metric)
    with pytest.raises(ValueError, match="InfoNCE stores at most `max_samples` = 100"):
        metric.update(images[100:], texts[100:])
    assert_same_state_dict(metric, before)


@pytest.mark.parametrize(
    "make, error, match",
    [
        (lambda: InfoNCE(feature=(4, 6)), ValueError, "one embedding space"),
        (lambda: InfoNCE(feature=4, temperature=-0.1), ValueError, "`temperature`"),
        (lambda: InfoNCE(feature=4, max_samples=-1), ValueError, "`max_samples`"),
        (lambda: InfoNCE(feature=4, validate_args=1), TypeError, "`validate_args`"),
    ],
)
def test_bad_constructor_arguments(make, error, match):
    with pytest.raises(error, match=match):
        make()


def test_bad_input_changes_nothing(pairs):
    images, texts = pairs
    metric = InfoNCE(feature=D)
    metric.update(images[:50], texts[:50])
    before = snapshot_state_dict(metric)
    for call, error, match in [
        (lambda: metric.update(images[:5], texts[:4]), ValueError, "same number of pairs"),
        (lambda: metric.update(images[:5], texts[:5] * float("nan")), ValueError, "`texts` contains NaN"),
        (lambda: metric(images[:5], torch.zeros(5, D)), ValueError, "`texts` has 5 row"),
        (lambda: metric.update(images[:5], texts[:5], True, 1), TypeError, "positional argument"),
    ]:
        with pytest.raises(error, match=match):
            call()
        assert_same_state_dict(metric, before)


def test_validate_args_false_skips_the_checks_but_not_the_cap(pairs):
    images, texts = pairs
    metric = InfoNCE(feature=D, validate_args=False, max_samples=100)
    metric.update(images[:100], texts[:100])
    with pytest.raises(ValueError, match="max_samples"):
        metric.update(images[100:], texts[100:])
    torch.testing.assert_close(metric.per_sample(), naive_infonce_per_pair(images[:100], texts[:100]), rtol=REL, atol=0)


# --------------------------------------------------------------------------------------------- memory
_PROBE = textwrap.dedent(
    """
    import json, sys, torch
    from mid_metric import CLIPRPrecision, InfoNCE

    def rss_kib(field):
        with open("/proc/self/status") as status:
            return next(int(line.split()[1]) for line in status if line.startswith(field + ":"))

    m, d = int(sys.argv[1]), int(sys.argv[2])
    generator = torch.Generator().manual_seed(0)
    texts = torch.nn.functional.normalize(torch.randn(m, d, generator=generator), dim=1)
    images = torch.nn.functional.normalize(texts + torch.randn(m, d, generator=generator), dim=1)
    metrics = [CLIPRPrecision(feature=d), InfoNCE(feature=d)]
    metrics[0].update(images[:8], texts[:8]); metrics[0].compute(); metrics[0].reset()  # warm the code paths
    with open("/proc/self/clear_refs", "w") as refs:
        refs.write("5")
    start = rss_kib("VmRSS")
    for metric in metrics:
        for begin in range(0, m, 512):
            metric.update(images[begin : begin + 512], texts[begin : begin + 512])
    values = [float(metric.compute()) for metric in metrics]
    print(json.dumps({"growth": (rss_kib("VmHWM") - start) * 1024, "values": values}))
    """
)


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads the peak RSS from /proc")
def test_memory_stays_far_below_one_m_by_m_matrix():
    m, d = 8000, 64
    done = subprocess.run([sys.executable, "-c", _PROBE, str(m), str(d)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    one_matrix = m * m * 8  # 512 MB: what the official InfoNCE builds, twice
    assert report["growth"] < one_matrix / 4, report


def test_plot_draws_the_values(pairs):
    matplotlib = pytest.importorskip("matplotlib")
    matplotlib.use("Agg")
    images, texts = pairs
    metric = InfoNCE(feature=D)
    metric.update(images, texts)
    fig, ax = metric.plot()  # the value of compute()
    assert fig is not None and ax is not None
    _, ax = metric.plot([metric.compute(), metric.compute()])
    assert len(ax.lines[0].get_ydata()) == 2
