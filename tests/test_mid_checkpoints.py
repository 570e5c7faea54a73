"""MID's checkpoints and merges from outside: 0.3.1 files load, refused ones change nothing, staged rows are merged.

The 0.3.1 fixtures (``tests/fixtures/make_mid_0_3_fixture.py``, written with the 0.3.1 code) are a jackknife metric,
which kept its full states next to its groups, and an ``update_pairs`` metric with rows staged; both load and score
what 0.3.1 computed. A ``load_state_dict`` that raises (another configuration, other settings, an unexpected key,
another metric's dict, a full state that is not the merge of its groups) leaves the metric bit for bit as it was,
its host state (staged rows, batch counts, shared-texts flag, loaded reference) included. ``merge_state`` of a
``state_dict()`` merges the rows it holds staged: the result equals one metric fed every row.
"""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch
from fixtures.make_mid_0_3_fixture import RECIPE, batches, pair_batches
from reference_impl import ref_mid, well_conditioned_pairs

from mid_metric import CLIPScore, MutualInformationDivergence

pytestmark = pytest.mark.filterwarnings("ignore:The ``compute`` method of metric")

FIXTURES = Path(__file__).resolve().parent / "fixtures"
RECORD: dict[str, Any] = json.loads((FIXTURES / "mid_0_3_1_state_dict.json").read_text())
DX, DY = RECIPE["feature"]
REL = 1e-12


def _fixture(name: str) -> dict[str, Any]:
    return torch.load(FIXTURES / f"mid_0_3_1_{name}_state_dict.pt", weights_only=True)


def _jackknife(**kwargs: Any) -> MutualInformationDivergence:
    groups = kwargs.pop("jackknife_groups", RECIPE["jackknife_groups"])
    return MutualInformationDivergence(
        (DX, DY), bias_correction="jackknife", jackknife_groups=groups, buffer_rows=16, **kwargs
    )


def _split(batch: list[list[float]]) -> tuple[torch.Tensor, torch.Tensor]:
    joint = torch.tensor(batch, dtype=torch.float64)
    return joint[:, :DX], joint[:, DX:]


def _feed(metric: MutualInformationDivergence, group: str, sizes: list[int]) -> None:
    for batch in batches(group, sizes):
        metric.update(*_split(batch), real=group == "reference")


def _close(value: float, expected: float, rel: float = REL) -> bool:
    return math.isclose(value, expected, rel_tol=rel, abs_tol=0.0)


def _assert_same(value: Any, old: Any, key: str = "state_dict") -> None:
    """Bitwise equality of two state dicts (tensors, and the extra state's dicts, lists and numbers)."""
    assert type(value) is type(old), key
    if isinstance(value, torch.Tensor):
        assert value.dtype == old.dtype and value.shape == old.shape, key
        assert torch.equal(value.reshape(-1).view(torch.uint8), old.reshape(-1).view(torch.uint8)), key
    elif isinstance(value, dict):
        assert sorted(value) == sorted(old), key
        for name in value:
            _assert_same(value[name], old[name], f"{key}.{name}")
    elif isinstance(value, list):
        assert len(value) == len(old), key
        for index, (item, old_item) in enumerate(zip(value, old)):
            _assert_same(item, old_item, f"{key}[{index}]")
    else:
        assert value == old, key


# ------------------------------------------------------------------------------------------ 0.3.1 checkpoints
def test_jackknife_checkpoint_of_0_3_1_loads_and_continues():
    saved = _fixture("jackknife")
    assert {"reference_moments", "candidate_moments", "reference_group_moments"} <= set(saved)  # 0.3.1 kept both
    metric = _jackknife()
    result = metric.load_state_dict(saved, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    staged = {group: metric._stores[group].staged_rows for group in ("reference", "candidate")}
    assert staged == RECORD["jackknife_staged_rows"]
    assert "reference_moments" not in metric.state_dict()  # the full states were checked, then dropped
    with_ci = metric.compute_with_ci(0.9)
    assert _close(float(with_ci.mid), float(RECORD["jackknife_compute_0_3_1"]))
    assert _close(float(with_ci.standard_error), float(RECORD["jackknife_standard_error_0_3_1"]))
    _feed(metric, "continued", RECIPE["continued_candidate_batches"])
    fresh = _jackknife()
    for group in ("reference", "candidate", "continued"):
        _feed(fresh, group, RECIPE[f"{group}_batches" if group != "continued" else "continued_candidate_batches"])
    assert _close(float(metric.compute()), float(RECORD["jackknife_continued_compute_0_3_1"]))
    assert _close(float(metric.compute()), float(fresh.compute()))


def test_pairs_checkpoint_of_0_3_1_loads_with_its_staged_rows_and_shared_texts():
    metric = MutualInformationDivergence((DX, DY), buffer_rows=16)
    metric.load_state_dict(_fixture("pairs"), strict=True)
    assert metric._stores.texts_shared is RECORD["pairs_texts_shared"] is True
    assert {group: metric._stores[group].staged_rows for group in ("reference", "candidate")} == (
        RECORD["pairs_staged_rows"]
    )
    assert metric.compute().item() == float(RECORD["pairs_compute_0_3_1"])  # the same arithmetic: the same bits
    fresh = MutualInformationDivergence((DX, DY), buffer_rows=16)
    for reference, candidate in pair_batches():
        x, y = _split(reference)
        fresh.update_pairs(x, y, _split(candidate)[0])
    assert torch.equal(fresh.compute(), metric.compute())


# --------------------------------------------------------------------------------- refused loads change nothing
def _with_host_state(metric: MutualInformationDivergence, seed: int = 0) -> MutualInformationDivergence:
    """``metric`` with flushed and staged rows in both groups (20 staged per group at buffer_rows=64)."""
    x, y = well_conditioned_pairs(200, DX, DY, seed=seed)
    for start in range(0, 180, 36):
        metric.update_pairs(x[start : start + 36], y[start : start + 36], 0.8 * x[start : start + 36])
    return metric


def _plain() -> MutualInformationDivergence:
    return _with_host_state(MutualInformationDivergence((DX, DY), buffer_rows=64))


def _jack(**kwargs: Any) -> MutualInformationDivergence:
    metric = MutualInformationDivergence(
        (DX, DY), bias_correction="jackknife", jackknife_groups=kwargs.pop("groups", 4), buffer_rows=64, **kwargs
    )
    return _with_host_state(metric)


def _tampered_full_state() -> dict[str, Any]:
    saved = _fixture("jackknife")
    saved["candidate_moments"] = saved["candidate_moments"].clone()
    saved["candidate_moments"][2] += 1e-3  # a mean that is not the groups'
    return saved


REFUSED = {
    "plain_gets_jackknife": (_plain, lambda: _jack().state_dict(), ValueError, "bias_correction='jackknife'"),
    "plain_gets_0_3_1_jackknife": (_plain, lambda: _fixture("jackknife"), ValueError, "bias_correction='jackknife'"),
    "jackknife_gets_plain": (_jack, lambda: _plain().state_dict(), ValueError, "without the jackknife"),
    "jackknife_gets_other_groups": (_jack, lambda: _jack(groups=5).state_dict(), ValueError, "jackknife settings"),
    "jackknife_gets_other_key": (
        _jack,
        lambda: _jack(jackknife_key="image").state_dict(),
        ValueError,
        "jackknife settings",
    ),
    "unexpected_key": (_plain, lambda: {**_plain().state_dict(), "extra": torch.zeros(1)}, RuntimeError, "extra"),
    "clip_score_dict": (_plain, lambda: CLIPScore(feature=4).state_dict(), RuntimeError, "Missing key"),
    "0_3_1_full_state_not_the_groups": (_jack, _tampered_full_state, ValueError, "differs from the merge"),
    "staged_nan_rows": (_plain, lambda: _nan_staged(_plain().state_dict()), ValueError, "NaN"),
}


def _nan_staged(saved: dict[str, Any]) -> dict[str, Any]:
    rows = saved["_extra_state"]["staged"]["reference"].clone()
    rows[0, 0] = float("nan")
    saved["_extra_state"] = {**saved["_extra_state"], "staged": {"reference": rows}}
    return saved


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_a_refused_load_changes_nothing(name):
    build, incoming, error, match = REFUSED[name]
    metric = build()
    twin = copy.deepcopy(metric)
    before = copy.deepcopy(dict(metric.state_dict()))
    with pytest.raises(error, match=match):
        metric.load_state_dict(incoming())
    _assert_same(dict(metric.state_dict()), before)
    assert metric._stores.texts_shared is twin._stores.texts_shared is True
    assert [store.batches_seen for store in metric._stores] == [store.batches_seen for store in twin._stores]
    assert torch.equal(metric.compute(), twin.compute())


@pytest.mark.parametrize("name", ["plain_gets_jackknife", "unexpected_key", "clip_score_dict", "staged_nan_rows"])
def test_a_refused_load_into_a_parent_module_changes_nothing(name):
    # Inside another module (a LightningModule, a ModuleDict) the metric's own hook checks everything first.
    build, incoming, error, match = REFUSED[name]
    parent = torch.nn.ModuleDict({"mid": build()})
    twin = copy.deepcopy(parent["mid"])
    before = copy.deepcopy(dict(parent["mid"].state_dict()))
    with pytest.raises(error, match=match):
        parent.load_state_dict({f"mid.{key}": value for key, value in incoming().items()})
    _assert_same(dict(parent["mid"].state_dict()), before)
    assert torch.equal(parent["mid"].compute(), twin.compute())


def test_unexpected_keys_load_without_strict():
    metric, source = _plain(), _plain()
    result = metric.load_state_dict({**source.state_dict(), "extra": torch.zeros(1)}, strict=False)
    assert result.unexpected_keys == ["extra"]
    assert torch.equal(metric.compute(), source.compute())


# ---------------------------------------------------------------------------------- merging a state_dict
@pytest.mark.parametrize("configuration", ["plain", "jackknife"])
def test_merge_of_a_state_dict_merges_its_staged_rows(configuration):
    x, y = well_conditioned_pairs(700, DX, DY, seed=8)
    x0 = 0.7 * x + 0.4 * torch.randn(700, DX, dtype=torch.float64, generator=torch.Generator().manual_seed(9))
    kwargs = {"bias_correction": "jackknife", "jackknife_groups": 3} if configuration == "jackknife" else {}

    def metric() -> MutualInformationDivergence:
        return MutualInformationDivergence((DX, DY), buffer_rows=64, **kwargs)

    first, second, whole = metric(), metric(), metric()
    for part, rows in ((first, slice(0, 300)), (second, slice(300, 700))):
        for start in range(rows.start, rows.stop, 50):
            batch = slice(start, min(start + 50, rows.stop))
            part.update(x[batch], y[batch], real=True)
            part.update(x0[batch], y[batch], real=False)
    whole.update(x, y, real=True)
    whole.update(x0, y, real=False)
    assert second._stores.reference.staged_rows > 0 and second._stores.candidate.staged_rows > 0
    first.merge_state(second.state_dict())
    assert first.num_pairs == {"reference": 700, "candidate": 700}
    assert math.isclose(float(first.compute()), float(whole.compute()), rel_tol=1e-11)
    if configuration == "plain":
        assert math.isclose(float(first.compute()), ref_mid(x, y, x0, y), rel_tol=1e-10)


def test_merge_of_a_state_dict_with_invalid_staged_rows_changes_nothing():
    metric, donor = _plain(), _plain()
    before = copy.deepcopy(dict(metric.state_dict()))
    with pytest.raises(ValueError, match="NaN"):
        metric.merge_state(_nan_staged(donor.state_dict()))
    _assert_same(dict(metric.state_dict()), before)


# ----------------------------------------------------------------------------------------- DDP settings
def test_sync_settings_name_the_estimator_and_eps():
    settings = MutualInformationDivergence((DX, DY), bias_correction="jackknife", jackknife_groups=7)._sync_settings()
    assert settings["bias_correction"] == "jackknife" and settings["jackknife_groups"] == 7
    assert settings["jackknife_key"] == "text" and settings["eps"] == 0.0
    assert (settings["image_dim"], settings["text_dim"]) == (DX, DY)
    # A setting the estimator does not use does not count: two plain metrics with other jackknife_groups agree.
    plain = [MutualInformationDivergence((DX, DY), jackknife_groups=k)._sync_settings() for k in (3, 9)]
    assert plain[0] == plain[1] and plain[0]["jackknife_groups"] is None
