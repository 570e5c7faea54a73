"""A ``load_state_dict`` that raises leaves the metric bit-identical: every companion metric, and MID.

Each refused dict is one a user can really pass: another metric's (a jackknife MID's), one of the same metric with
the keys of another one mixed in (a strict load refuses the unexpected keys, after which torch's loader had already
assigned the metric's own states), one of another configuration, one with a key missing. Each test checks the
whole state dict bit for bit, and the value the metric then computes.
"""

from __future__ import annotations

from typing import Any, Callable

import pytest
import torch
from _state import assert_same_state_dict, snapshot_state_dict
from clip_fixtures import build_tiny_clip
from companion_refs import aligned_pairs, references_for
from reference_impl import well_conditioned_pairs

from mid_metric import CLIPRPrecision, CLIPScore, InfoNCE, MutualInformationDivergence, RefCLIPScore

D = 8

COMPANIONS: dict[str, Callable[..., Any]] = {
    "clip_s": lambda feature=D, **kw: CLIPScore(feature=feature, **kw),
    "refclip_s": lambda feature=D, **kw: RefCLIPScore(feature=feature, **kw),
    "r_precision": lambda feature=D, **kw: CLIPRPrecision(feature=feature, num_negatives=3, **kw),
    "infonce": lambda feature=D, **kw: InfoNCE(feature=feature, **kw),
}
# Per metric: another configuration whose states cannot be loaded into the default one, and the error it gets.
OTHER_CONFIGURATION = {
    "clip_s": ({"pairs": "text-text"}, "kind of pairs"),
    "refclip_s": ({"weight": 100.0}, "weight"),
    "r_precision": ({"feature": 4}, "state format"),
    "infonce": ({"feature": 4}, "state format"),
}


def _fed(name: str, seed: int, count: int = 12, **kwargs: Any) -> Any:
    metric = COMPANIONS[name](**kwargs)
    images, texts = aligned_pairs(count, kwargs.get("feature", D), seed=seed)
    if name == "refclip_s":
        metric.update(images, texts, references_for(texts, seed=seed))
    else:
        metric.update(images, texts)
    return metric


@pytest.fixture(scope="module")
def jackknife_mid_dict() -> dict:
    x, y = well_conditioned_pairs(60, D, D, seed=1)
    mid = MutualInformationDivergence(feature=D, bias_correction="jackknife")
    mid.update(x, y, real=True)
    mid.update(x[:30] + 0.1, y[:30], real=False)
    return mid.state_dict()


def _assert_refused(metric: Any, state_dict: dict, error: Any, match: str, strict: bool = True) -> None:
    value = metric.compute().clone()  # first: MID's compute() flushes its staged rows into the state
    before = snapshot_state_dict(metric)
    with pytest.raises(error, match=match):
        metric.load_state_dict(state_dict, strict=strict)
    assert_same_state_dict(metric, before)
    assert torch.equal(metric.compute(), value)


@pytest.mark.parametrize("name", list(COMPANIONS))
def test_a_jackknife_mids_dict_changes_nothing(name, jackknife_mid_dict):
    _assert_refused(_fed(name, seed=0), jackknife_mid_dict, RuntimeError, "Missing key")


@pytest.mark.parametrize("name", list(COMPANIONS))
def test_own_states_with_another_metrics_keys_change_nothing(name, jackknife_mid_dict):
    # The states of the same metric, plus a jackknife MID's keys: torch's loader assigned the metric's states and
    # only then raised for the unexpected keys.
    mixed = {**jackknife_mid_dict, **_fed(name, seed=1, count=20).state_dict()}
    _assert_refused(_fed(name, seed=0), mixed, RuntimeError, "Unexpected key.*jackknife_settings")


@pytest.mark.parametrize("name", list(COMPANIONS))
def test_another_configuration_changes_nothing(name):
    arguments, match = OTHER_CONFIGURATION[name]
    _assert_refused(_fed(name, seed=0), _fed(name, seed=1, count=20, **arguments).state_dict(), ValueError, match)


@pytest.mark.parametrize("name", list(COMPANIONS))
def test_another_metrics_dict_changes_nothing(name):
    other_name = "clip_s" if name != "clip_s" else "infonce"
    _assert_refused(_fed(name, seed=0), _fed(other_name, seed=1).state_dict(), RuntimeError, "key")


@pytest.mark.parametrize("name", list(COMPANIONS))
def test_a_missing_key_changes_nothing_strict_or_not(name):
    metric = _fed(name, seed=0)
    incomplete = dict(_fed(name, seed=1, count=20).state_dict())
    missing = sorted(incomplete)[-1]
    del incomplete[missing]
    _assert_refused(metric, incomplete, RuntimeError, f"Missing key.*{missing}")
    before = snapshot_state_dict(metric)
    assert metric.load_state_dict(incomplete, strict=False).missing_keys == [missing]
    assert_same_state_dict(metric, before)


@pytest.mark.parametrize("name", list(COMPANIONS))
def test_a_valid_load_still_loads_everything(name):
    source, target = _fed(name, seed=1, count=20), _fed(name, seed=0)
    target.load_state_dict(source.state_dict())
    assert torch.equal(target.compute(), source.compute())
    assert torch.equal(target.per_sample(), source.per_sample())


def test_a_plain_mid_given_a_jackknife_mids_dict_changes_nothing(jackknife_mid_dict):
    x, y = well_conditioned_pairs(80, D, D, seed=2)
    plain = MutualInformationDivergence(feature=D)
    plain.update(x, y, real=True)
    plain.update(x[:40] + 0.2, y[:40], real=False)
    _assert_refused(plain, jackknife_mid_dict, (RuntimeError, ValueError), "jackknife")


@pytest.fixture(scope="module")
def tiny_clip_dir(tmp_path_factory):
    return build_tiny_clip(tmp_path_factory.mktemp("tiny-clip"))


def test_a_metric_with_a_model_loads_all_or_nothing(tiny_clip_dir, monkeypatch, jackknife_mid_dict):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    images = torch.randint(0, 256, (3, 3, 40, 40), dtype=torch.uint8)
    captions = ["a dog", "a cat", "a red car"]
    metric, source = CLIPScore(feature=str(tiny_clip_dir)), CLIPScore(feature=str(tiny_clip_dir))
    metric.update(images[:2], captions[:2])
    source.update(images, captions)
    weights = {key: value.clone() for key, value in metric.feature_extractor.state_dict().items()}
    _assert_refused(metric, {**jackknife_mid_dict, **source.state_dict()}, RuntimeError, "Unexpected key")
    metric.load_state_dict(source.state_dict())
    assert torch.equal(metric.compute(), source.compute())
    for key, value in metric.feature_extractor.state_dict().items():
        assert torch.equal(value, weights[key]), key
