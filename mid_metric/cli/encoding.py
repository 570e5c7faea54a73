"""The commands' input pipeline: images and captions to features, prepared in DataLoader workers.

The workers (``--num-workers``) do all the work before the model: an image worker decodes the files of a batch,
brings them to 8 bits by the rule of :mod:`mid_metric.features.inputs` (a refusal names the file and row) and runs
the extractor's whole preprocessing (``extractor.pipeline``: resize, crop, normalise, one stacked tensor); a caption
worker tokenises a batch (``extractor.tokenizer``). The main process only copies each batch to the device (from
pinned memory, without blocking, on CUDA) and runs the model. Batches are the same whatever the number of workers,
so the features are too.
"""

from __future__ import annotations

import argparse
from typing import Any, Optional, Sequence

import torch
from torch import Tensor

from mid_metric.features.inputs import eight_bit_image
from mid_metric.io.pairs import PairsError, PairsTable, load_image

__all__ = ["loader_workers", "encode_images", "encode_texts"]


class _ImageDataset(torch.utils.data.Dataset):
    """Decodes the images of a pairs table as 8-bit PIL images; errors are returned, not raised.

    An item is ``(image, None)``, or ``(None, message)`` when the image cannot be read or is refused by the 8-bit
    rule; the message names the file and the row, and the main process raises it, so that a worker reports it as
    one line.
    """

    def __init__(self, table: PairsTable) -> None:
        self.table = table

    def __len__(self) -> int:
        return len(self.table.pairs)

    def __getitem__(self, index: int) -> tuple[Any, Optional[str]]:
        pair = self.table.pairs[index]
        source = self.table.source
        try:
            image = load_image(pair, source)
            return eight_bit_image(image, f"{source}, row {pair.row}: image {str(pair.image_path)!r}"), None
        except ValueError as err:  # PairsError, or the 8-bit rule's refusal
            return None, str(err)


class _PixelBatches:
    """The collate function of the image loader: a batch's pixel values by the extractor's pipeline, or its error."""

    def __init__(self, pipeline: Any) -> None:
        self.pipeline = pipeline

    def __call__(self, batch: list[tuple[Any, Optional[str]]]) -> tuple[Optional[Tensor], Optional[str]]:
        errors = [error for _, error in batch if error is not None]
        if errors:
            return None, errors[0]
        return self.pipeline([image for image, _ in batch]), None


def _one_thread(worker_id: int) -> None:
    """Each loader worker computes on one thread, so that the workers do not oversubscribe the cores."""
    torch.set_num_threads(1)


def loader_workers(count: int, args: argparse.Namespace) -> int:
    """The worker processes of a loader over ``count`` items: ``--num-workers``, at most one per batch.

    A single batch is read in the main process: a worker could not overlap it with anything.

    Example:
        >>> loader_workers(100, argparse.Namespace(num_workers=4, batch_size=64)), loader_workers(
        ...     64, argparse.Namespace(num_workers=4, batch_size=64))
        (2, 0)
    """
    batches = -(-count // args.batch_size)
    return 0 if batches <= 1 else min(args.num_workers, batches)


def _loader(items: Any, collate: Any, args: argparse.Namespace) -> torch.utils.data.DataLoader:
    """A loader of ``batch_size`` items in order, prepared by ``collate`` in ``--num-workers`` processes.

    On a CUDA device the batches come in pinned memory, so that the extractor copies them without blocking.
    """
    workers = loader_workers(len(items), args)
    return torch.utils.data.DataLoader(
        items,
        batch_size=args.batch_size,
        shuffle=False,
        num_workers=workers,
        collate_fn=collate,
        pin_memory=torch.device(args.device).type == "cuda",
        worker_init_fn=_one_thread if workers else None,
    )


def encode_images(table: PairsTable, extractor: Any, args: argparse.Namespace, console: Any) -> Tensor:
    """Encode the images of a pairs table as float32 CPU features, with a progress bar.

    The loader's workers (``--num-workers``) decode each image and run the extractor's whole preprocessing
    (``extractor.pipeline``); the main process only runs the model on each batch (``extractor.encode_pixels``).
    """
    loader = _loader(_ImageDataset(table), _PixelBatches(extractor.pipeline), args)
    chunks = []
    bar = console.progress(len(table), f"Encoding images of {table.source.name}")
    try:
        for pixels, error in loader:
            if error is not None:
                raise PairsError(error)
            chunks.append(extractor.encode_pixels(pixels))
            bar.update(len(pixels))
    finally:
        bar.close()
    if not chunks:
        return torch.empty(0, extractor.image_dim)
    return torch.cat(chunks).float().cpu()


def encode_texts(captions: Sequence[str], extractor: Any, args: argparse.Namespace) -> Tensor:
    """Encode captions as float32 CPU features, ``--batch-size`` at a time, tokenised by the loader's workers."""
    loader = _loader(list(captions), extractor.tokenizer, args)
    chunks = [extractor.encode_tokens(tokens) for tokens in loader]
    if not chunks:
        return torch.empty(0, extractor.text_dim)
    return torch.cat(chunks).float().cpu()
