"""MutualInformationDivergence inside a real PyTorch Lightning loop (one process, CPU).

Every logged value is compared with the independent two-pass float64 implementation in ``reference_impl`` on the
same features; the LightningModule is the one from ``examples/lightning_validation.py``.
"""

from __future__ import annotations

import math
import warnings

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from _examples import load_example
from reference_impl import ref_mid_terms, ref_pmi
from torch.utils.data import DataLoader, TensorDataset

from mid_metric import MutualInformationDivergence

ex = load_example("lightning_validation")
DIM = 16
BATCH = 32


def _args(*extra: str):
    return ex.build_parser().parse_args(["--dim", str(DIM), "--batch-size", str(BATCH), *extra])


def _generate(weights: dict, texts: torch.Tensor) -> torch.Tensor:
    """The generator's output, batch by batch as in validation_step, from saved weights."""
    with torch.no_grad():
        return torch.cat(
            [F.normalize(F.linear(t, weights["weight"], weights["bias"]), dim=1) for t in texts.split(BATCH)]
        )


def _expected(model, data, weights: dict) -> tuple[float, float, float]:
    x_val, y_val = data.val
    generated = _generate(weights, y_val)
    if model.reference is None:
        return ref_mid_terms(x_val, y_val, generated, y_val)
    return ref_mid_terms(model.reference[0], model.reference[1], generated, y_val)


def _check(logged: dict, expected: tuple[float, float, float]) -> None:
    for key, value in zip(("val/mid", "val/mutual_information", "val/distance"), expected):
        assert math.isclose(logged[key], value, rel_tol=1e-9, abs_tol=1e-9), (key, logged[key], value)


@pytest.mark.parametrize("fixed_reference", [False, True])
def test_validate_logs_the_standalone_value(fixed_reference):
    args = _args("--mode", "validate", *(["--fixed-reference"] if fixed_reference else []))
    model, data = ex.build(args)
    record = ex.RecordMetrics()
    trainer = ex.make_trainer(1, 1, None, [record])
    (returned,) = trainer.validate(model, datamodule=data, verbose=False)
    assert len(record.values) == 1
    expected = _expected(model, data, record.weights[0])
    _check(record.values[0], expected)
    _check(returned, expected)
    # The logged value is also what the metric gives outside Lightning on the same features.
    standalone = MutualInformationDivergence(feature=DIM)
    reference = data.val if model.reference is None else model.reference
    standalone.update(*reference, real=True)
    standalone.update(_generate(record.weights[0], data.val[1]), data.val[1], real=False)
    assert math.isclose(returned["val/mid"], standalone.compute().item(), rel_tol=1e-12)
    # Lightning reset the metric after the epoch (the reference survives only with a fixed reference).
    assert model.mid.num_pairs["candidate"] == 0
    expected_reference = args.val_pairs if fixed_reference else 0
    assert model.mid.num_pairs["reference"] == expected_reference


@pytest.mark.parametrize("fixed_reference", [False, True])
def test_fit_resets_between_epochs(fixed_reference):
    # Default sanity check (2 batches) included: its partial state must not leak into epoch 1.
    model, data = ex.build(_args(*(["--fixed-reference"] if fixed_reference else [])))
    record = ex.RecordMetrics()
    trainer = ex.make_trainer(1, 3, None, [record], limit_train_batches=4)
    trainer.fit(model, datamodule=data)
    assert len(record.values) == 3
    assert len(record.weights) == 4  # sanity check + 3 epochs
    for logged, weights in zip(record.values, record.weights[1:]):
        _check(logged, _expected(model, data, weights))
    mids = [v["val/mid"] for v in record.values]
    assert len(set(mids)) == 3, "the generator trains, so each epoch's value must differ"
    if fixed_reference:
        # The reference statistics survived every reset: fitted once, never added twice.
        assert model.mid.num_pairs["reference"] == model.reference[0].shape[0]
        mis = {v["val/mutual_information"] for v in record.values}
        assert len(mis) == 1


def test_forward_in_validation_step_returns_batch_pmi():
    model, data = ex.build(_args("--mode", "validate", "--fixed-reference"))
    record = ex.RecordMetrics()
    ex.make_trainer(1, 1, None, [record]).validate(model, datamodule=data, verbose=False)
    texts = data.val[1]
    generated = _generate(record.weights[0], texts)
    assert len(model.batch_scores) == math.ceil(texts.shape[0] / BATCH)
    for score, rows in zip(model.batch_scores, torch.arange(texts.shape[0]).split(BATCH)):
        expected = ref_pmi(*model.reference, generated[rows], texts[rows]).mean().item()
        assert score is not None and math.isclose(score.item(), expected, rel_tol=1e-9, abs_tol=1e-9)


def test_forward_without_usable_reference_returns_none_and_the_loop_continues():
    # Reference and candidates come batch by batch; the first batch (16 pairs, D = 32) cannot fit a full-rank
    # reference yet, so forward returns None there instead of raising.
    model, data = ex.build(_args("--mode", "validate", "--batch-size", "16"))
    record = ex.RecordMetrics()
    ex.make_trainer(1, 1, None, [record]).validate(model, datamodule=data, verbose=False)
    assert model.batch_scores[0] is None
    assert all(score is not None for score in model.batch_scores[3:])
    assert math.isfinite(record.values[0]["val/mid"])


class _SaveAt(L.Callback):
    def __init__(self, batch_idx: int, path) -> None:
        self.batch_idx, self.path = batch_idx, path

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        if batch_idx == self.batch_idx:
            trainer.save_checkpoint(self.path)


def test_checkpoint_mid_validation_then_resume_is_identical(tmp_path):
    path = tmp_path / "mid-validation.ckpt"
    args = _args("--mode", "validate")
    model, data = ex.build(args)
    record = ex.RecordMetrics()
    ex.make_trainer(1, 1, None, [record, _SaveAt(3, path)]).validate(model, datamodule=data, verbose=False)
    uninterrupted = record.values[0]

    # A fresh process would do this: rebuild, load the checkpoint (metric states are persistent), and validate the
    # batches that were not seen yet.
    resumed, _ = ex.build(args)
    checkpoint = torch.load(path, weights_only=True)
    resumed.load_state_dict(checkpoint["state_dict"])
    assert resumed.mid.num_pairs["reference"] == 4 * BATCH
    x_val, y_val = data.val
    rest = DataLoader(TensorDataset(x_val[4 * BATCH :], y_val[4 * BATCH :]), batch_size=BATCH)
    record_resumed = ex.RecordMetrics()
    ex.make_trainer(1, 1, None, [record_resumed]).validate(resumed, dataloaders=rest, verbose=False)
    assert record_resumed.values[0] == uninterrupted  # bit for bit


def test_state_dict_resume_is_bit_identical():
    x, y = ex.make_pairs(200, DIM, seed=5)
    full = MutualInformationDivergence(feature=DIM)
    first = MutualInformationDivergence(feature=DIM)
    for i, (xb, yb) in enumerate(zip(x.split(24), y.split(24))):
        for metric in (full, first) if i < 5 else (full,):
            metric.update(xb, yb, real=True)
            metric.update(xb.flip(0), yb, real=False)
    second = MutualInformationDivergence(feature=DIM)
    second.load_state_dict(first.state_dict())
    for xb, yb in list(zip(x.split(24), y.split(24)))[5:]:
        second.update(xb, yb, real=True)
        second.update(xb.flip(0), yb, real=False)
    assert torch.equal(second.metric_state["reference_moments"], full.metric_state["reference_moments"])
    assert torch.equal(second.compute(), full.compute())


def test_compute_before_update_warns_then_raises_a_clear_error():
    metric = MutualInformationDivergence(feature=DIM)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(ValueError, match="reference"):
            metric.compute()
    assert any("before the ``update``" in str(w.message) for w in caught)


def test_validation_without_updates_fails_with_the_metric_error():
    class NoUpdates(ex.TextToImageModule):
        def validation_step(self, batch, batch_idx):
            self.log("val/mid", self.mid)

        def on_validation_epoch_end(self):
            pass

    model = NoUpdates(DIM)
    loader = DataLoader(TensorDataset(*ex.make_pairs(8, DIM)), batch_size=4)
    trainer = ex.make_trainer(1, 1, None, [])
    with pytest.raises(ValueError, match="reference"):
        trainer.validate(model, dataloaders=loader, verbose=False)


class _ManualReset(L.LightningModule):
    """Computes and resets the metric itself at the end of each validation epoch (under inference mode)."""

    def __init__(self) -> None:
        super().__init__()
        self.mid = MutualInformationDivergence(feature=DIM)
        self.values: list[float] = []
        self.training_candidates: list[float] = []

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.mid.update(x, y, real=True)
        self.mid.update(x.flip(0) * 0.9, y, real=False)

    def on_validation_epoch_end(self):
        self.values.append(self.mid.compute().item())
        self.mid.reset()


def test_validate_twice_with_manual_reset_under_inference_mode():
    # 0.1 built its reference cache on the tensors' private `_version`, which inference tensors lack: the second
    # validate() crashed.
    x, y = ex.make_pairs(128, DIM, seed=11)
    loader = DataLoader(TensorDataset(x, y), batch_size=BATCH)
    model = _ManualReset()
    trainer = ex.make_trainer(1, 1, None, [])
    trainer.validate(model, dataloaders=loader, verbose=False)
    trainer.validate(model, dataloaders=loader, verbose=False)
    flipped = torch.cat([xb.flip(0) * 0.9 for xb in x.split(BATCH)])
    expected = ref_mid_terms(x, y, flipped, y)[0]
    assert len(model.values) == 2
    for value in model.values:
        assert math.isclose(value, expected, rel_tol=1e-9, abs_tol=1e-9)
    # The states reset under inference mode still accept updates, pmi and compute outside it.
    model.mid.update(x, y, real=True)
    model.mid.update(flipped, y, real=False)
    assert math.isclose(model.mid.compute().item(), expected, rel_tol=1e-9, abs_tol=1e-9)
    assert model.mid.pmi(x[:4], y[:4]).shape == (4,)
