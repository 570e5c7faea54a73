"""The ``mid-metric`` command line (also ``python -m mid_metric``).

Subcommands:

- ``mid-metric demo [--plot out.png]``: MID on a Gaussian model whose answer is known in closed form;
- ``mid-metric reference PAIRS -o ref.safetensors --model MODEL``: build reference statistics once from real
  (image, caption) pairs;
- ``mid-metric score PAIRS --reference ref.safetensors`` (or ``--reference-pairs REAL_PAIRS --model MODEL``):
  print MID of candidate pairs, with ``--per-sample out.csv`` and ``--json``;
- ``mid-metric correlate SCORES JUDGMENTS --key K --score-column C --rating-column R``: Kendall's tau (as scipy
  computes it) of per-sample scores against human ratings joined on a key, with a seeded bootstrap interval;
- ``mid-metric benchmark flickr8k-expert|flickr8k-cf --root DIR --model MODEL``: the paper's human-judgment
  protocol end to end: MID, CLIP-S and RefCLIP-S on Flickr8K's files as distributed, correlated with the ratings
  and printed next to the published values.

Every CLIP command takes ``--preprocess openai|processor|mid-t2i|cmmd`` (:mod:`mid_metric.features.preprocess`):
OpenAI CLIP's own pipeline, with which the published numbers were computed (the default), the model's Hugging Face
image processor, the official text-to-image code's pipeline, or CMMD's reference pipeline. Images are decoded and
preprocessed in ``--num-workers`` worker processes (by default the usable cores less one, at most 8).

PAIRS is a CSV/TSV/JSONL file with an image path column and a caption column (see :mod:`mid_metric.io.pairs`), or a
``.safetensors``/``.npz`` file of precomputed ``image_features`` and ``text_features``. Bad input ends the command
with one line on stderr and exit status 1 (2 for a command-line usage error), and no output file is left behind:
every file is written to a temporary name and moved into place only when complete (:mod:`mid_metric.io.atomic`).
An output that is a symbolic link is written through (the file it points to is replaced, the link stays); one that
is a folder, a FIFO, a socket or a device is refused, as is one that is one of the command's inputs (a PAIRS or
reference file, an image, a model file), before anything is done. ``--per-sample -`` prints the table on standard
output. Output into a pipe that its reader closed (``mid-metric demo | head -1``) ends quietly, with status 141.

Models are recorded by :func:`mid_metric.features.model_identity`: a Hugging Face id as it is, a local folder as
``local:<name>@sha256:<fingerprint of its weights>``, so a reference file names its model the same way from any
working directory. Features files carry no model name: scoring them against features of a known model is refused
unless ``--features-from-model`` states that they come from that model.

One module per command (:mod:`~mid_metric.cli.demo`, :mod:`~mid_metric.cli.reference`,
:mod:`~mid_metric.cli.score`, :mod:`~mid_metric.cli.correlate`, :mod:`~mid_metric.cli.benchmark`), with the parser
in :mod:`~mid_metric.cli.parser` (the options' value types in :mod:`~mid_metric.cli.values`), the library's errors
in the options' words in :mod:`~mid_metric.cli.messages`, and what they share in :mod:`~mid_metric.cli.session`.
Only the CLIP path loads a model through transformers, and only ``correlate`` and ``benchmark`` use scipy.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Optional, Sequence

from mid_metric.cli.benchmark import run_benchmark
from mid_metric.cli.correlate import run_correlate
from mid_metric.cli.demo import run_demo_command
from mid_metric.cli.parser import (
    EXIT_BAD_INPUT,
    EXIT_BROKEN_PIPE,
    EXIT_INTERRUPTED,
    PROG,
    CommandError,
    build_parser,
    check_arguments,
)
from mid_metric.cli.reference import run_reference
from mid_metric.cli.score import run_score
from mid_metric.cli.session import one_line

__all__ = ["main", "build_parser", "CommandError"]

_COMMANDS = {
    "demo": run_demo_command,
    "reference": run_reference,
    "score": run_score,
    "correlate": run_correlate,
    "benchmark": run_benchmark,
}


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run ``mid-metric`` with ``argv`` (``sys.argv[1:]`` when ``None``) and return the exit status.

    Bad input (missing or unreadable files, missing columns, corrupt images, empty captions, an incompatible
    reference, too few pairs, an output that is not a regular file) prints one line ``mid-metric: error: ...`` on
    stderr and returns 1; argument errors exit with status 2. When standard output is a pipe whose reader has
    closed it (``mid-metric demo | head -1``), the command ends quietly, as Unix tools do, with status 141
    (128 + SIGPIPE).

    Example:
        >>> main(["score", "missing.csv", "--reference", "ref.safetensors", "--quiet"])
        1
    """
    try:
        try:
            args = build_parser().parse_args(argv)
        finally:
            _flush_stdout()  # --help and --version print, then exit: a closed pipe must be seen here
        status = _run(args)
        _flush_stdout()
        return status
    except BrokenPipeError:
        _silence_stdout()
        return EXIT_BROKEN_PIPE


def _run(args: argparse.Namespace) -> int:
    """Run the parsed command; bad input becomes one line on stderr and exit status 1."""
    try:
        check_arguments(args)
        return _COMMANDS[args.command](args)
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        raise  # the reader of stdout is gone: main() ends quietly
    except (CommandError, ValueError, OSError, ImportError, RuntimeError) as error:
        print(f"{PROG}: error: {one_line(error)}", file=sys.stderr)
        return EXIT_BAD_INPUT


def _flush_stdout() -> None:
    if sys.stdout is not None:
        sys.stdout.flush()


def _silence_stdout() -> None:
    """Point standard output at the null device, so that the interpreter's last flush cannot fail again.

    This is what the Python documentation advises for SIGPIPE (``signal`` module, "Note on SIGPIPE").
    """
    try:
        null = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(null, sys.stdout.fileno())
        finally:
            os.close(null)
    except (AttributeError, OSError, ValueError):  # no stdout, or one without a descriptor (e.g. captured)
        pass
