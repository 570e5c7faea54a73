"""MID and the companion metrics in one ``MetricCollection``, fed by one feature pass, as the README shows."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from clip_fixtures import build_tiny_clip
from companion_refs import (
    INFONCE_REL,
    aligned_pairs,
    naive_clip_per_pair,
    naive_infonce_per_pair,
    naive_r_precision_per_pair,
    naive_refclip_per_pair,
    references_for,
)
from torchmetrics import MetricCollection

from mid_metric import CLIPRPrecision, CLIPScore, InfoNCE, MutualInformationDivergence, RefCLIPScore
from mid_metric.features import load_clip

pytestmark = pytest.mark.filterwarnings("ignore:The ``compute`` method of metric")

D = 8


def _collection(**extra):
    return MetricCollection(
        {
            "mid": MutualInformationDivergence(feature=D),
            "clip_s": CLIPScore(feature=D),
            "clip_s_official": CLIPScore(feature=D, clamp=False),
            "caption_clip_s": CLIPScore(feature=D, pairs="text-text"),
            "r_precision": CLIPRPrecision(feature=D),
            "r_precision_distinct": CLIPRPrecision(feature=D, negatives="distinct"),
            "infonce": InfoNCE(feature=D),
            "refclip_s": RefCLIPScore(feature=D),
            "refclip_s_100": RefCLIPScore(feature=D, weight=100.0),
        },
        **extra,
    )


@pytest.mark.parametrize("compute_groups", [True, False])
def test_one_update_per_batch_feeds_every_metric(compute_groups):
    reference = aligned_pairs(300, D, noise=0.5, seed=81)
    images, texts = aligned_pairs(240, D, noise=0.9, seed=82, duplicates=4)
    references = references_for(texts, seed=83)
    metrics = _collection(compute_groups=compute_groups)
    for start in range(0, 300, 100):
        metrics.update(reference[0][start : start + 100], reference[1][start : start + 100], real=True)
    for start in range(0, 240, 80):
        stop = start + 80
        metrics.update(images[start:stop], texts[start:stop], references=references[start:stop], real=False)
    values = metrics.compute()
    expected = {
        "clip_s": naive_clip_per_pair(images, texts),
        "clip_s_official": naive_clip_per_pair(images, texts, clamp=False),
        "caption_clip_s": naive_clip_per_pair(images, texts),
        "r_precision": naive_r_precision_per_pair(images, texts),
        "r_precision_distinct": naive_r_precision_per_pair(images, texts, negatives="distinct"),
        "infonce": naive_infonce_per_pair(images, texts),
        "refclip_s": naive_refclip_per_pair(images, texts, references),
        "refclip_s_100": naive_refclip_per_pair(images, texts, references, weight=100.0),
    }
    for name, per_pair in expected.items():
        assert values[name].dtype == torch.float64, name
        rel = INFONCE_REL if name == "infonce" else 1e-10
        assert float(values[name]) == pytest.approx(float(per_pair.mean()), rel=rel), name
        torch.testing.assert_close(metrics[name].per_sample(), per_pair, rtol=rel, atol=1e-13, msg=name)
    alone = MutualInformationDivergence(feature=D)
    alone.update(*reference, real=True)
    alone.update(images, texts, real=False)
    assert float(values["mid"]) == pytest.approx(float(alone.compute()), rel=1e-12)
    if compute_groups:
        # The metrics of one state share it (R-precision with InfoNCE, CLIP-S with its weight/clamp variants);
        # the text-text CLIP-S and the two RefCLIP-S weights keep their own.
        groups = [sorted(group) for group in metrics.compute_groups.values()]
        assert sorted(["infonce", "r_precision", "r_precision_distinct"]) in groups
        assert sorted(["clip_s", "clip_s_official"]) in groups
        assert ["caption_clip_s"] in groups and ["refclip_s"] in groups and ["refclip_s_100"] in groups


# ------------------------------------------------------------------------------------------------- README
README = Path(__file__).resolve().parents[1] / "README.md"
README_HEADING = "## MID and its companion metrics from one feature pass"


def _readme_snippet() -> str:
    text = README.read_text(encoding="utf-8")
    section = text[text.index(README_HEADING) :]
    match = re.search(r"```python\n(.*?)```", section, re.S)
    assert match, f"no python block after {README_HEADING!r}"
    return match.group(1)


@pytest.fixture(scope="module")
def tiny_clip_dir(tmp_path_factory):
    return build_tiny_clip(tmp_path_factory.mktemp("tiny-clip"))


@pytest.mark.slow
def test_the_readme_example_runs_with_one_feature_pass(tiny_clip_dir, monkeypatch):
    generator = torch.Generator().manual_seed(84)
    prompts = ["a red cube", "two dogs", "a blue sky", "a cat", "green hills", "a boat"]
    loader = [
        (
            torch.randint(0, 256, (12, 3, 32, 32), dtype=torch.uint8, generator=generator),
            torch.randint(0, 256, (12, 3, 32, 32), dtype=torch.uint8, generator=generator),
            [prompts[(b * 12 + i) % 6] + f" {b}{i}" for i in range(12)],
        )
        for b in range(4)
    ]
    calls = {"images": 0, "texts": 0}
    clip = load_clip(str(tiny_clip_dir))
    for kind in ("images", "texts"):
        method = getattr(clip, f"encode_{kind}")

        def counted(batch, _method=method, _kind=kind):
            calls[_kind] += 1
            return _method(batch)

        monkeypatch.setattr(clip, f"encode_{kind}", counted)
    # The example loads "openai/clip-vit-large-patch14"; here the tiny offline CLIP stands in for it.
    monkeypatch.setattr("mid_metric.features.load_clip", lambda name_or_path, **kwargs: clip)
    namespace = {"loader": loader}
    exec(_readme_snippet(), namespace)  # noqa: S102 - the README's own example
    scores, per_pair = namespace["scores"], namespace["per_pair"]
    assert set(scores) == {"mid", "clip_s", "clip_s_official", "r_precision", "infonce"}
    assert all(value.dtype == torch.float64 for value in scores.values())
    assert per_pair.shape == (48,)
    assert calls == {"images": 8, "texts": 4}  # one encoder pass per batch and modality, for all five metrics
