"""TensorBoard logging of MID, its terms and the per-sample PMI, read back with tensorboard's event reader."""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F
from _examples import load_example
from reference_impl import ref_mid_terms, ref_pmi
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

ex = load_example("lightning_validation")
DIM = 16
BATCH = 32


def _generate(weights: dict, texts: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat(
            [F.normalize(F.linear(t, weights["weight"], weights["bias"]), dim=1) for t in texts.split(BATCH)]
        )


def _events(logdir: Path) -> EventAccumulator:
    (event_file,) = logdir.rglob("events.out.tfevents.*")
    accumulator = EventAccumulator(str(event_file), size_guidance={"scalars": 0, "histograms": 0})
    accumulator.Reload()
    return accumulator


def test_scalars_and_pmi_histogram_per_epoch(tmp_path):
    args = ex.build_parser().parse_args(
        ["--dim", str(DIM), "--batch-size", str(BATCH), "--epochs", "2", "--fixed-reference", "--pmi-histogram"]
    )
    model, data = ex.build(args)
    record = ex.RecordMetrics()
    trainer = ex.make_trainer(1, args.epochs, str(tmp_path), [record], limit_train_batches=4)
    trainer.fit(model, datamodule=data)

    events = _events(tmp_path)
    assert {"val/mid", "val/mutual_information", "val/distance"} <= set(events.Tags()["scalars"])
    assert "val/pmi" in events.Tags()["histograms"]

    ref_x, ref_y = model.reference
    texts = data.val[1]
    expected_terms = []
    expected_pmi = []
    for weights in record.weights[1:]:  # skip the sanity check's snapshot
        generated = _generate(weights, texts)
        expected_terms.append(ref_mid_terms(ref_x, ref_y, generated, texts))
        expected_pmi.append(ref_pmi(ref_x, ref_y, generated, texts))

    for index, key in enumerate(("val/mid", "val/mutual_information", "val/distance")):
        scalars = events.Scalars(key)
        assert len(scalars) == args.epochs
        # TensorBoard stores scalars as float32.
        for event, terms in zip(scalars, expected_terms):
            assert math.isclose(event.value, terms[index], rel_tol=1e-6, abs_tol=1e-6), (key, event.value, terms)
        assert scalars[0].step < scalars[1].step

    histograms = events.Histograms("val/pmi")
    assert len(histograms) == args.epochs  # none from the sanity check
    for event, epoch, pmi in zip(histograms, range(args.epochs), expected_pmi):
        value = event.histogram_value
        assert event.step == epoch
        assert value.num == texts.shape[0]
        assert math.isclose(value.sum, pmi.sum().item(), rel_tol=1e-9, abs_tol=1e-9)
        assert math.isclose(value.min, pmi.min().item(), rel_tol=1e-9, abs_tol=1e-12)
        assert math.isclose(value.max, pmi.max().item(), rel_tol=1e-9, abs_tol=1e-12)
    # Mean PMI and MID differ only by the M / (M - 1) scaling of the distance part.
    mean_pmi = expected_pmi[-1].mean().item()
    mid, mi, distance = expected_terms[-1]
    m = texts.shape[0]
    assert math.isclose(mean_pmi, mi + distance * (m - 1) / m, rel_tol=1e-9)


def test_no_histogram_unless_asked(tmp_path):
    args = ex.build_parser().parse_args(["--dim", str(DIM), "--mode", "validate", "--fixed-reference"])
    model, data = ex.build(args)
    ex.make_trainer(1, 1, str(tmp_path), []).validate(model, datamodule=data, verbose=False)
    events = _events(tmp_path)
    assert events.Tags()["histograms"] == []
    assert len(events.Scalars("val/mid")) == 1
