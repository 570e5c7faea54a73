"""MID as a validation metric in a PyTorch Lightning loop, on one process or with DDP, logged to TensorBoard.

A toy text-to-image "generator" (a linear map from caption features to image features) is trained to match real
image features; every validation epoch scores it with MID, logs the MI and distance terms beside it and, when
asked, a histogram of the per-sample PMI. The features are synthetic CLIP-like unit vectors, so this runs offline.

It needs PyTorch Lightning and TensorBoard, the ``lightning`` extra; from the clone::

    pip install ".[lightning]"

Run it on one process, or on two CPU processes with DDP (Lightning re-launches this script once per rank)::

    python examples/lightning_validation.py --devices 1 --epochs 2 --logdir runs
    python examples/lightning_validation.py --devices 2 --mode validate --out result.json

``--logdir`` is where TensorBoard's logs go (``runs/`` is in the repository's ``.gitignore``); without it nothing
is logged and nothing is written.

Each rank validates a different, uneven share of the data (a third and two thirds with two ranks); the metric's
``compute()`` merges the statistics of all ranks, so the logged value is the single-process value.
"""

from __future__ import annotations

import argparse
import json
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from mid_metric import MutualInformationDivergence

try:
    import lightning as L
except ImportError as error:  # the way out for a user without the extra: one line when run, an ImportError if imported
    _MISSING = (
        f"This example needs PyTorch Lightning and TensorBoard ({error}). Install the `lightning` extra from the"
        ' mid-metric folder: pip install ".[lightning]"'
    )
    if __name__ == "__main__":
        raise SystemExit(_MISSING) from None
    raise ImportError(_MISSING) from error


def make_pairs(num_pairs: int, dim: int, seed: int = 0) -> tuple[Tensor, Tensor]:
    """Return ``(image_features, caption_features)``: unit vectors with a common mean, the images tied to the texts."""
    generator = torch.Generator().manual_seed(seed)
    common = F.normalize(torch.randn(dim, generator=generator), dim=0)
    texts = F.normalize(3.0 * common + torch.randn(num_pairs, dim, generator=generator), dim=1)
    mixing = torch.randn(dim, dim, generator=generator) / dim**0.5
    images = F.normalize(3.0 * common + texts @ mixing + 0.5 * torch.randn(num_pairs, dim, generator=generator), dim=1)
    return images, texts


def rank_share(num: int, rank: int, world_size: int) -> slice:
    """Rows of rank ``rank``: contiguous shares proportional to 1, 2, ..., world_size, so ranks get uneven data."""
    total = world_size * (world_size + 1) // 2
    start = num * (rank * (rank + 1) // 2) // total
    stop = num * ((rank + 1) * (rank + 2) // 2) // total
    return slice(start, stop)


class PairsDataModule(L.LightningDataModule):
    """Training and validation pairs; each rank takes its own uneven share (``use_distributed_sampler=False``)."""

    def __init__(self, train: tuple[Tensor, Tensor], val: tuple[Tensor, Tensor], batch_size: int = 32) -> None:
        super().__init__()
        self.train, self.val, self.batch_size = train, val, batch_size

    def _share(self, pairs: tuple[Tensor, Tensor]) -> TensorDataset:
        rows = rank_share(pairs[0].shape[0], self.trainer.global_rank, self.trainer.world_size)
        return TensorDataset(pairs[0][rows], pairs[1][rows])

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self._share(self.train), batch_size=self.batch_size, shuffle=False)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self._share(self.val), batch_size=self.batch_size, shuffle=False)


class TextToImageModule(L.LightningModule):
    """A linear caption-to-image generator, validated with MID.

    Args:
        dim: Feature size of images and captions.
        reference: Optional fixed reference pairs ``(images, texts)``. When given, the metric keeps them across
            epochs (``reset_real_features=False``), each rank fits its share once, and validation batches only add
            candidates. Otherwise every validation batch ``(images, texts)`` adds the reference pairs and the
            candidates ``(generated images, texts)``.
        pmi_histogram: Log a histogram of the per-sample PMI of the candidates to TensorBoard each epoch; needs
            a fixed ``reference`` (PMI is scored under the reference this process has fitted).
        lr: Learning rate.
    """

    def __init__(
        self,
        dim: int,
        reference: Optional[tuple[Tensor, Tensor]] = None,
        pmi_histogram: bool = False,
        lr: float = 0.05,
    ) -> None:
        super().__init__()
        if pmi_histogram and reference is None:
            raise ValueError("`pmi_histogram=True` needs a fixed `reference` to score the candidates against.")
        self.generator = nn.Linear(dim, dim)
        self.reference = reference
        self.pmi_histogram = pmi_histogram
        self.lr = lr
        self.mid = MutualInformationDivergence(feature=dim, reset_real_features=reference is None)
        self.batch_scores: list[Optional[Tensor]] = []  # what forward returned, for inspection
        self._pmi: list[Tensor] = []

    def generate(self, texts: Tensor) -> Tensor:
        return F.normalize(self.generator(texts), dim=1)

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        images, texts = batch
        return F.mse_loss(self.generate(texts), images)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=self.lr)

    def on_validation_epoch_start(self) -> None:
        if self.reference is not None and self.mid.num_pairs["reference"] == 0:  # fit this rank's share once
            rows = rank_share(self.reference[0].shape[0], self.global_rank, self.trainer.world_size)
            self.mid.update(self.reference[0][rows], self.reference[1][rows], real=True)
        self._pmi = []

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        images, texts = batch
        generated = self.generate(texts)
        if self.reference is None:
            self.mid.update(images, texts, real=True)
        # Calling the metric accumulates the candidates and returns their mean PMI under the reference fitted so
        # far, or None when there is none yet; the epoch value comes from logging the metric object below.
        self.batch_scores.append(self.mid(generated, texts, real=False))
        if self.pmi_histogram:
            self._pmi.append(self.mid.pmi(generated, texts))
        self.log("val/mid", self.mid)  # Lightning calls compute() at the epoch end, then reset()

    def on_validation_epoch_end(self) -> None:
        # compute() is collective under DDP, and this hook runs on every rank; the result is cached, so the
        # compute() that Lightning runs for "val/mid" afterwards costs nothing.
        result = self.mid.compute_result()
        # The terms are already global; sync_dist=True only averages equal numbers (and silences a DDP warning).
        self.log("val/mutual_information", result.mutual_information, sync_dist=True)
        self.log("val/distance", result.distance, sync_dist=True)
        tensorboard = isinstance(self.logger, L.pytorch.loggers.TensorBoardLogger)
        if self.pmi_histogram and tensorboard and not self.trainer.sanity_checking:
            self.logger.experiment.add_histogram("val/pmi", torch.cat(self._pmi), self.current_epoch)


class RecordMetrics(L.Callback):
    """Keep the logged validation values and the generator weights of every validation epoch."""

    def __init__(self) -> None:
        self.values: list[dict[str, float]] = []
        self.weights: list[dict[str, Tensor]] = []

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.weights.append({k: v.detach().clone() for k, v in pl_module.generator.state_dict().items()})

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        self.values.append({k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")})


def make_trainer(
    devices: int, epochs: int, logdir: Optional[str], callbacks: list[L.Callback], **kwargs: Any
) -> L.Trainer:
    """A CPU trainer; ``devices > 1`` runs DDP over gloo, one process per device."""
    logger: Any = L.pytorch.loggers.TensorBoardLogger(logdir, name="mid") if logdir else False
    return L.Trainer(
        accelerator="cpu",
        devices=devices,
        strategy="ddp" if devices > 1 else "auto",
        use_distributed_sampler=False,  # each rank takes its own share in PairsDataModule
        max_epochs=epochs,
        logger=logger,
        callbacks=callbacks,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        **kwargs,
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=1, help="CPU processes; more than 1 runs DDP")
    parser.add_argument("--mode", choices=["fit", "validate"], default="fit")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--dim", type=int, default=16)
    parser.add_argument("--train-pairs", type=int, default=256)
    parser.add_argument("--val-pairs", type=int, default=301)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--fixed-reference", action="store_true", help="fit the reference once, keep it")
    parser.add_argument("--pmi-histogram", action="store_true", help="log per-sample PMI (needs --fixed-reference)")
    parser.add_argument("--logdir", default=None, help="TensorBoard log directory (no logger when omitted)")
    parser.add_argument("--out", default=None, help="JSON file for the logged values (written by rank 0)")
    return parser


def build(args: argparse.Namespace) -> tuple[TextToImageModule, PairsDataModule]:
    """The seeded model and data of a run; the same on every rank and in the tests."""
    L.seed_everything(0, verbose=False)
    train = make_pairs(args.train_pairs, args.dim, seed=1)
    val = make_pairs(args.val_pairs, args.dim, seed=2)
    reference = make_pairs(args.val_pairs, args.dim, seed=3) if args.fixed_reference else None
    model = TextToImageModule(args.dim, reference=reference, pmi_histogram=args.pmi_histogram)
    return model, PairsDataModule(train, val, batch_size=args.batch_size)


def main(argv: Optional[list[str]] = None) -> dict[str, Any]:
    args = build_parser().parse_args(argv)
    model, data = build(args)
    record = RecordMetrics()
    trainer = make_trainer(args.devices, args.epochs, args.logdir, [record])
    if args.mode == "fit":
        trainer.fit(model, datamodule=data)
    else:
        trainer.validate(model, datamodule=data, verbose=False)

    summary = {"world_size": trainer.world_size, "epochs": record.values}
    if trainer.is_global_zero:
        print(json.dumps(summary))
        if args.out:
            with open(args.out, "w") as handle:
                json.dump(summary, handle)
    if args.devices > 1 and torch.distributed.is_initialized():
        # Shut gloo down before the interpreter exits; otherwise its threads can abort the process at exit.
        torch.distributed.destroy_process_group()
    return summary


if __name__ == "__main__":
    main()
