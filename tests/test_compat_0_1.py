"""Checkpoints and reference files written by mid-metric 0.1.0 load and score the same with the current code.

The fixtures in ``tests/fixtures`` were written by ``tests/fixtures/make_mid_0_1_fixture.py`` with the 0.1 code
(commit 812b4c9): a ``MutualInformationDivergence(feature=(3, 2))`` fed deterministic rows, its ``state_dict()``, its
``save_reference`` file and the values 0.1 computed. The rows are regenerated here from the recorded recipe.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch
from _state import assert_same_state_dict, snapshot_state_dict
from fixtures.make_mid_0_1_fixture import rows

from mid_metric import MutualInformationDivergence

FIXTURES = Path(__file__).resolve().parent / "fixtures"
RECORD: dict[str, Any] = json.loads((FIXTURES / "mid_0_1_state_dict.json").read_text())
RECIPE: dict[str, Any] = RECORD["recipe"]
IMAGE_DIM, TEXT_DIM = RECIPE["feature"]
RTOL = 1e-12


def _state_dict() -> dict[str, Any]:
    return torch.load(FIXTURES / "mid_0_1_state_dict.pt", weights_only=True)


def _feed(metric: MutualInformationDivergence, group: str, sizes: list[int]) -> None:
    for batch in rows(RECIPE["seed"], sizes, group):
        joint = torch.tensor(batch, dtype=torch.float64)
        metric.update(joint[:, :IMAGE_DIM], joint[:, IMAGE_DIM:], real=group == "reference")


def _metric(**kwargs: Any) -> MutualInformationDivergence:
    return MutualInformationDivergence(feature=(IMAGE_DIM, TEXT_DIM), eps=RECIPE["eps"], **kwargs)


def _close(value: float, expected: float) -> bool:
    return math.isclose(value, expected, rel_tol=RTOL, abs_tol=0.0)


def test_fixtures_are_tiny_and_from_0_1() -> None:
    for name in ("mid_0_1_state_dict.pt", "mid_0_1_state_dict.json", "mid_0_1_reference.safetensors"):
        assert (FIXTURES / name).stat().st_size < 10_000, name
    assert RECORD["mid_metric_version"] == "0.1.0"
    assert "state_format" not in _state_dict()  # a 0.1 checkpoint: no format record


@pytest.mark.filterwarnings("ignore:The ``compute`` method of metric:UserWarning")  # loaded, never updated
def test_state_dict_loads_strictly_and_computes_the_0_1_value() -> None:
    metric = _metric()
    result = metric.load_state_dict(_state_dict(), strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    value = metric.compute()
    assert value.dtype == torch.float64
    assert _close(value.item(), float(RECORD["compute_0_1"])), (value.item(), RECORD["compute_0_1"])


def test_resumed_checkpoint_matches_a_metric_fed_every_row() -> None:
    resumed = _metric()
    resumed.load_state_dict(_state_dict(), strict=True)
    _feed(resumed, "continued", RECIPE["continued_candidate_batches"])

    fresh = _metric()
    _feed(fresh, "reference", RECIPE["reference_batches"])
    _feed(fresh, "candidate", RECIPE["candidate_batches"])
    assert _close(fresh.compute().item(), float(RECORD["compute_0_1"]))
    _feed(fresh, "continued", RECIPE["continued_candidate_batches"])

    value, expected = resumed.compute().item(), fresh.compute().item()
    assert _close(value, expected), (value, expected)
    assert _close(value, float(RECORD["continued_compute_0_1"])), (value, RECORD["continued_compute_0_1"])


def test_reference_file_loads_and_scores_the_same() -> None:
    scorer = MutualInformationDivergence.from_reference(FIXTURES / "mid_0_1_reference.safetensors")
    assert (scorer.image_dim, scorer.text_dim) == (IMAGE_DIM, TEXT_DIM)
    assert scorer.feature_extractor_name == RECORD["reference_file_feature_extractor"]
    _feed(scorer, "candidate", RECIPE["candidate_batches"])
    value = scorer.compute().item()
    assert _close(value, float(RECORD["reference_file_compute_0_1"])), (value, RECORD["reference_file_compute_0_1"])
    assert _close(value, float(RECORD["compute_0_1"]))

    loaded = _metric()
    loaded.load_state_dict(_state_dict(), strict=True)
    points = torch.tensor(rows(RECIPE["seed"], [4], "continued")[0], dtype=torch.float64)
    pmi_file = scorer.pmi(points[:, :IMAGE_DIM], points[:, IMAGE_DIM:])
    pmi_state = loaded.pmi(points[:, :IMAGE_DIM], points[:, IMAGE_DIM:])
    torch.testing.assert_close(pmi_file, pmi_state, rtol=RTOL, atol=1e-13)


@pytest.mark.parametrize("feature", [(4, 2), (3, 3), (2, 2)])
def test_0_1_state_dict_of_other_dims_is_refused_without_a_change(feature: tuple[int, int]) -> None:
    metric = MutualInformationDivergence(feature=feature)
    torch.manual_seed(0)
    metric.update(torch.randn(9, feature[0]), torch.randn(9, feature[1]), real=True)
    metric.update(torch.randn(4, feature[0]), torch.randn(4, feature[1]), real=False)
    before = snapshot_state_dict(metric)
    with pytest.raises(ValueError, match="reference_moments|candidate_moments"):
        metric.load_state_dict(_state_dict(), strict=True)
    assert_same_state_dict(metric, before)
