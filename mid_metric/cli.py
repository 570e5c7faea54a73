"""The ``mid-metric`` command line (also ``python -m mid_metric``).

Subcommands:

- ``mid-metric demo [--plot out.png]``: MID on a Gaussian model whose answer is known in closed form;
- ``mid-metric reference PAIRS -o ref.safetensors --model MODEL``: build reference statistics once from real
  (image, caption) pairs;
- ``mid-metric score PAIRS --reference ref.safetensors`` (or ``--reference-pairs REAL_PAIRS --model MODEL``):
  print MID of candidate pairs, with ``--per-sample out.csv`` and ``--json``.

PAIRS is a CSV/TSV/JSONL file with an image path column and a caption column (see :mod:`mid_metric.pairs`), or a
``.safetensors``/``.npz`` file of precomputed ``image_features`` and ``text_features``. Bad input ends the command
with one line on stderr and exit status 1 (2 for a command-line usage error), and no output file is left behind:
every file is written to a temporary name and moved into place only when complete. An output path that is one of
the command's inputs (a PAIRS or reference file, an image, a model file) is refused before anything is done.

Models are recorded by :func:`mid_metric.features.model_identity`: a Hugging Face id as it is, a local folder as
``local:<name>@sha256:<fingerprint of its weights>``, so a reference file names its model the same way from any
working directory. Features files carry no model name: scoring them against features of a known model is refused
unless ``--features-from-model`` states that they come from that model.

Only the CLIP path imports transformers, so ``mid-metric demo`` and precomputed features never do.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import math
import os
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import torch
from torch import Tensor

from mid_metric._version import __version__
from mid_metric.features import is_local_model_identity, model_identity, same_model
from mid_metric.pairs import (
    FeaturePairs,
    PairsError,
    PairsTable,
    atomic_output,
    is_features_file,
    load_image,
    read_features,
    read_pairs,
)

__all__ = ["main", "build_parser", "CommandError"]

PROG = "mid-metric"
#: Exit status for bad input (missing files, bad rows, incompatible reference, too few pairs, ...).
EXIT_BAD_INPUT = 1
#: Exit status when interrupted with Ctrl-C.
EXIT_INTERRUPTED = 130
#: Name recorded for the feature extractor when the features were computed elsewhere and no --model is given.
PRECOMPUTED = "precomputed"
#: How far the root-mean-square norm of features may be from 1 for them to count as L2-normalised.
NORM_TOLERANCE = 1e-3


class CommandError(Exception):
    """A problem with the user's input, reported as one line on stderr with a non-zero exit status."""


# ------------------------------------------------------------------------------------------ argument parsing
def _int_at_least(minimum: int) -> Callable[[str], int]:
    """Return an argparse type that accepts integers >= ``minimum``."""
    expected = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
        return value

    return parse


_positive_int = _int_at_least(1)
_non_negative_int = _int_at_least(0)


def _eps(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text!r}") from None
    if not (value >= 0.0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"expected a finite number >= 0, got {text!r}")
    return value


def _default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


class _Formatter(argparse.RawDescriptionHelpFormatter):
    """Keep the descriptions' line breaks, and show the defaults that say something."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        meaningful = not (action.default is None or action.default is False or action.default == argparse.SUPPRESS)
        if meaningful and action.option_strings and "default" not in text:
            text += " (default: %(default)s)"
        return text


_PAIRS_HELP = textwrap.fill(
    "PAIRS is a CSV (.csv, .tsv) or JSON Lines (.jsonl) file with one (image, caption) pair per row: an image path"
    " column and a caption column (see --image-column, --caption-column); image paths are relative to the file."
    " It may instead be a .safetensors or .npz file holding 2-D arrays 'image_features' and 'text_features'"
    " (one row per pair, e.g. L2-normalised CLIP features computed elsewhere), which needs no model.",
    width=104,
)


def _add_common_options(parser: argparse.ArgumentParser, model_help: str, eps_default: str) -> None:
    group = parser.add_argument_group("features")
    group.add_argument("--model", metavar="MODEL", help=model_help)
    group.add_argument("--image-column", default="image", metavar="NAME", help="column of PAIRS with the image path")
    group.add_argument("--caption-column", default="caption", metavar="NAME", help="column of PAIRS with the caption")
    group.add_argument(
        "--device",
        default=_default_device(),
        help="device the CLIP model runs on (default: cuda when available, else cpu); an unavailable device is an"
        " error in every run, also one that needs no model",
    )
    group.add_argument(
        "--batch-size", type=_positive_int, default=64, metavar="N", help="images or captions encoded at once"
    )
    group.add_argument(
        "--num-workers",
        type=_non_negative_int,
        default=0,
        metavar="N",
        help="worker processes that read and decode images (0: the main process)",
    )
    group.add_argument(
        "--eps",
        type=_eps,
        default=None,
        help=f"added to the diagonal of every covariance (default: {eps_default}). 0 reproduces the paper, which"
        " hints at 5e-4 for fewer than 30,000 reference pairs; with 0, more than image_dim + text_dim reference"
        " pairs are needed",
    )
    group.add_argument(
        "-q",
        "--quiet",
        action="store_true",
        help="no progress bar and no messages on stderr (errors and warnings still show)",
    )


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser of ``mid-metric`` with its three subcommands.

    Example:
        >>> args = build_parser().parse_args(["score", "gen.csv", "--reference", "ref.safetensors", "--json"])
        >>> args.command, args.reference, args.json, args.eps  # eps None: the reference file's, else 0
        ('score', 'ref.safetensors', True, None)
    """
    parser = argparse.ArgumentParser(
        prog=PROG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=(
            "Mutual Information Divergence (MID, Kim et al., NeurIPS 2022) for text-to-image and captioning models.\n\n"
            "Reference pairs (real images and their captions, as CLIP features) define a joint Gaussian; MID is the\n"
            "mean pointwise mutual information of the candidate pairs under it. Higher is better: candidates whose\n"
            "images and captions match as well as the real ones score about the reference's mutual information."
        ),
        epilog=(
            "examples:\n"
            "  mid-metric demo --plot demo.png\n"
            "  mid-metric reference coco_val.csv -o coco_ref.safetensors --model openai/clip-vit-large-patch14\n"
            "  mid-metric score generator_a.csv --reference coco_ref.safetensors --per-sample a.csv --json\n"
            "  mid-metric score captions.csv --reference-pairs captions.csv --generated-caption-column generated \\\n"
            "      --model openai/clip-vit-large-patch14\n\n"
            "Run 'mid-metric COMMAND --help' for the options of each command."
        ),
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    demo = commands.add_parser(
        "demo",
        help="show what MID measures on a Gaussian model with a known answer (no network, no model weights)",
        formatter_class=_Formatter,
        description=(
            "Draw reference pairs from a Gaussian image/text model whose mutual information is known in closed form,\n"
            "score candidate sets from aligned, through partly shuffled captions, to fully shuffled ones, and print\n"
            "the estimated MID next to the analytic value of each set. Needs no network and no model weights."
        ),
    )
    demo.add_argument("--plot", metavar="OUT.png", help="also draw the table as a figure (needs matplotlib)")
    demo.add_argument("--seed", type=int, default=0, help="random seed; the demo is deterministic for a given seed")

    reference = commands.add_parser(
        "reference",
        help="build a reference statistics file from real (image, caption) pairs",
        formatter_class=_Formatter,
        description=(
            "Encode real (image, caption) pairs with a CLIP model and write their Gaussian statistics (count, mean\n"
            "and scatter in float64, with the model name and feature sizes) to a .safetensors file. Build it once,\n"
            "then score any number of candidate sets against it with 'mid-metric score --reference'.\n\n" + _PAIRS_HELP
        ),
    )
    reference.add_argument("pairs", metavar="PAIRS", help="real (image, caption) pairs, or a features file")
    reference.add_argument(
        "-o", "--output", required=True, metavar="REF.safetensors", help="reference statistics file to write"
    )
    _add_common_options(
        reference,
        "Hugging Face CLIP model id or local model folder that encodes the pairs (e.g."
        " openai/clip-vit-large-patch14); needed unless PAIRS is a features file, where it states the model the"
        " features come from. An id is recorded as it is, a local folder as local:NAME@sha256:FINGERPRINT of its"
        " weights, which 'score' recognises from any working directory",
        eps_default="0; it is recorded in the output, and 'score --reference' uses it",
    )

    score = commands.add_parser(
        "score",
        help="print MID of candidate pairs against a reference",
        formatter_class=_Formatter,
        description=(
            "Print MID of the candidate pairs in PAIRS against a reference: a statistics file from 'mid-metric\n"
            "reference' (--reference) or real pairs encoded on the fly (--reference-pairs with --model).\n\n"
            "Text-to-image: PAIRS holds the generated images with the prompts they were generated from.\n"
            "Captioning: PAIRS holds the images with the generated captions (--generated-caption-column).\n\n"
            + _PAIRS_HELP
        ),
    )
    score.add_argument("pairs", metavar="PAIRS", help="candidate (image, caption) pairs, or a features file")
    source = score.add_mutually_exclusive_group(required=True)
    source.add_argument("--reference", metavar="REF.safetensors", help="reference statistics file")
    source.add_argument(
        "--reference-pairs", metavar="REAL_PAIRS", help="real (image, caption) pairs, or a features file"
    )
    score.add_argument(
        "--generated-caption-column",
        metavar="NAME",
        help="captioning: take the candidates' captions from this column of PAIRS instead of --caption-column",
    )
    score.add_argument(
        "--per-sample",
        metavar="OUT.csv",
        help="write one row per candidate: row, image, caption and its pointwise mutual information (pmi)",
    )
    score.add_argument(
        "--bias-correction",
        action="store_true",
        help="use the bias-corrected estimator, whose value does not drift with the number of samples (see the"
        " README); published MID numbers use the paper's uncorrected estimator, the default. Needs --eps 0",
    )
    score.add_argument(
        "--json",
        action="store_true",
        help="print a JSON object (MID, its terms, counts, standard error and 95%% confidence interval, model,"
        " version) instead of text",
    )
    score.add_argument(
        "--features-from-model",
        action="store_true",
        help="state that the precomputed features (PAIRS or REAL_PAIRS as a features file, or a --reference built"
        " from one without --model) were computed with the model of the run (--model, else the one recorded in"
        " --reference). Without it, features of unknown origin are scored only against features of unknown origin",
    )
    score.add_argument(
        "--no-check-feature-extractor",
        action="store_true",
        help="accept a --model whose name differs from the one recorded in --reference (e.g. a local copy of a hub"
        " model), as check_feature_extractor=False does in the Python API; both names are reported",
    )
    _add_common_options(
        score,
        "Hugging Face CLIP model id or local model folder that encodes images and captions; defaults to the"
        " model recorded in --reference, and must be the same model (a local folder is compared by the"
        " fingerprint of its weights, not by its path)",
        eps_default="the eps recorded in --reference, else 0",
    )
    return parser


# ---------------------------------------------------------------------------------------------- messages
class _Console:
    """Messages and progress on stderr, silenced by --quiet."""

    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet

    def info(self, message: str) -> None:
        if not self.quiet:
            print(message, file=sys.stderr)

    def warn(self, message: str) -> None:
        """One line ``mid-metric: warning: ...`` on stderr, shown even with --quiet."""
        print(f"{PROG}: warning: {message}", file=sys.stderr)

    def quiet_transformers(self) -> None:
        """Hide transformers' own progress bars unless ours show, and its warnings under --quiet."""
        try:
            from transformers.utils import logging as hf_logging
        except ImportError:  # load_clip reports the missing package
            return
        if self.quiet or not sys.stderr.isatty():
            hf_logging.disable_progress_bar()
        if self.quiet:
            hf_logging.set_verbosity_error()

    def progress(self, total: int, description: str) -> Any:
        """Return a tqdm bar on stderr, or a no-op when quiet, when stderr is not a TTY, or without tqdm."""
        enabled = not self.quiet and sys.stderr.isatty()
        if enabled:
            try:
                from tqdm.auto import tqdm
            except ImportError:  # pragma: no cover - tqdm comes with the [clip] extra
                enabled = False
        if not enabled:
            return _NoProgress()
        return tqdm(total=total, desc=description, unit="img", file=sys.stderr, dynamic_ncols=True)


class _NoProgress:
    def update(self, count: int = 1) -> None:
        pass

    def close(self) -> None:
        pass


# ------------------------------------------------------------------------------------------ feature sources
@dataclass
class _Features:
    """Encoded (or precomputed) pairs with what is needed to report them."""

    images: Tensor
    texts: Tensor
    source: Path
    table: Optional[PairsTable] = None

    def __len__(self) -> int:
        return int(self.images.shape[0])


class _ImageDataset(torch.utils.data.Dataset):
    """Decodes the images of a pairs table; errors are returned, not raised, so workers report them cleanly."""

    def __init__(self, table: PairsTable) -> None:
        self.table = table

    def __len__(self) -> int:
        return len(self.table.pairs)

    def __getitem__(self, index: int) -> tuple[Any, Optional[str]]:
        try:
            return load_image(self.table.pairs[index], self.table.source), None
        except PairsError as err:
            return None, str(err)


def _collate(batch: list[tuple[Any, Optional[str]]]) -> list[tuple[Any, Optional[str]]]:
    return batch


def _read_source(path: str, args: argparse.Namespace, caption_column: str, caption_option: str) -> Any:
    if is_features_file(path):
        return read_features(path)
    return read_pairs(path, args.image_column, caption_column, caption_option=caption_option)


def _check_images_exist(table: PairsTable) -> None:
    for pair in table.pairs:
        if not pair.image_path.is_file():
            raise PairsError(f"{table.source}, row {pair.row}: image {str(pair.image_path)!r} does not exist.")


def _encode(table: PairsTable, extractor: Any, args: argparse.Namespace, console: _Console) -> _Features:
    """Encode the images (through a DataLoader, with a progress bar) and the captions of a pairs table."""
    loader = torch.utils.data.DataLoader(
        _ImageDataset(table),
        batch_size=args.batch_size,
        num_workers=args.num_workers,
        collate_fn=_collate,
        shuffle=False,
    )
    image_chunks = []
    bar = console.progress(len(table), f"Encoding images of {table.source.name}")
    try:
        for batch in loader:
            errors = [error for _, error in batch if error is not None]
            if errors:
                raise PairsError(errors[0])
            image_chunks.append(extractor.encode_images([image for image, _ in batch]).float().cpu())
            bar.update(len(batch))
    finally:
        bar.close()
    captions = [pair.caption for pair in table.pairs]
    text_chunks = [
        extractor.encode_texts(captions[start : start + args.batch_size]).float().cpu()
        for start in range(0, len(captions), args.batch_size)
    ]
    return _Features(torch.cat(image_chunks), torch.cat(text_chunks), table.source, table)


class _Session:
    """Loads the feature extractor once, on demand, and turns PAIRS files into features."""

    def __init__(self, args: argparse.Namespace, console: _Console, model: Optional[str]) -> None:
        self.args = args
        self.console = console
        self.model = model
        self._extractor: Any = None

    def extractor(self, needed_for: Path) -> Any:
        if self._extractor is None:
            if not self.model:
                raise CommandError(
                    f"{needed_for} holds image paths and captions, so a CLIP model is needed to encode them: pass"
                    " --model (a Hugging Face model id such as openai/clip-vit-large-patch14, or a local model folder)."
                )
            from mid_metric.features import load_clip

            if is_local_model_identity(self.model):
                raise CommandError(
                    f"{needed_for} holds image paths and captions, and the reference was built with a local model"
                    f" folder, recorded as {self.model!r}: pass --model PATH with that folder to encode them."
                )
            _check_device(self.args.device)
            self.console.quiet_transformers()
            self.console.info(f"Loading {self.model} on {self.args.device} ...")
            self._extractor = load_clip(self.model, device=self.args.device, batch_size=self.args.batch_size)
        return self._extractor

    def features(self, source: Any) -> _Features:
        if isinstance(source, FeaturePairs):
            return _Features(source.image_features, source.text_features, source.source)
        _check_images_exist(source)  # fail before loading the model and encoding anything
        extractor = self.extractor(source.source)
        return _encode(source, extractor, self.args, self.console)


def _check_reference_count(count: int, image_dim: int, text_dim: int, eps: float, what: str) -> None:
    dim = image_dim + text_dim
    if count < 2:
        raise CommandError(f"{what} holds {count} pair(s); MID needs at least 2 (and more than {dim} with --eps 0).")
    if eps == 0.0 and count <= dim:
        raise CommandError(
            f"{what} holds {count} pairs, too few for a full-rank covariance: with image_dim + text_dim = {dim}, at"
            f" least {dim + 1} reference pairs are needed. Add pairs, or pass --eps (e.g. --eps 5e-4) to regularise"
            " the covariances."
        )


def _check_device(text: str) -> torch.device:
    """Return ``--device`` as a torch device, or fail with one line when it is not one or is not available here."""
    try:
        device = torch.device(text)
    except (RuntimeError, ValueError):
        raise CommandError(f"--device {text!r} is not a torch device (use e.g. cpu, cuda or cuda:1).") from None
    if device.type == "cpu":
        return device
    if device.type == "cuda":
        if not torch.cuda.is_available():
            why = "this torch build has no CUDA support" if torch.version.cuda is None else "no CUDA device is visible"
            raise CommandError(f"--device {text!r} is not available: {why}; use --device cpu.")
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise CommandError(
                f"--device {text!r} is not available: this machine has {count} CUDA device(s), cuda:0 to"
                f" cuda:{count - 1}."
            )
        return device
    try:
        torch.empty(1, device=device)
    except Exception as error:  # each backend fails its own way (RuntimeError, AssertionError, ...)
        raise CommandError(f"--device {text!r} is not available here ({_one_line(error)}); use --device cpu.") from None
    return device


def _identity(model: Optional[str]) -> Optional[str]:
    """The recorded name of a --model: the id as it is, a local folder as its weights' fingerprint."""
    return model_identity(model) if model else None


def _same_model(requested: str, identity: str, recorded: str) -> bool:
    """Whether --model (as given, and its identity) is the model a reference file records.

    Identities are compared (local folders by the fingerprint of their weights, wherever they are). Files of
    mid-metric 0.1.0 recorded --model as it was typed; such a path still matches when it names the same folder
    from here.
    """
    if same_model(identity, recorded):
        return True
    if is_local_model_identity(recorded):
        return False
    first, second = Path(requested).expanduser(), Path(recorded).expanduser()
    return first.exists() and second.exists() and first.resolve() == second.resolve()


# -------------------------------------------------------------------------------------- reference files
def _save_reference(path: str, metric: Any, model: Optional[str]) -> None:
    """Write the metric's reference statistics (atomically: a temporary file, then a rename)."""
    metric.save_reference(path, feature_extractor=model or "")


def _check_reference_file(path: str) -> None:
    if Path(path).is_dir():
        raise CommandError(
            f"Reference file {path!r} is a folder; --reference takes the .safetensors file that 'mid-metric"
            " reference' wrote."
        )
    if not Path(path).is_file():
        raise CommandError(f"Reference file {path!r} does not exist.")


def _load_reference(path: str, eps: Optional[float], bias_correction: bool = False) -> tuple[Any, dict[str, Any]]:
    """Return a metric holding the reference of ``path``, and the file's metadata."""
    from mid_metric.metric import MutualInformationDivergence
    from mid_metric.reference_io import load_reference_statistics

    _check_reference_file(path)
    _, metadata = load_reference_statistics(path)  # checks the file before anything else is done
    options: dict[str, Any] = {"check_feature_extractor": False, "bias_correction": bias_correction}
    # (the CLI compares model names itself)
    if eps is not None:
        options["eps"] = eps
    return MutualInformationDivergence.from_reference(path, **options), metadata


# ------------------------------------------------------------------------------------- inputs and outputs
def _input_files(args: argparse.Namespace, sources: Sequence[Any], files: Sequence[Optional[str]]) -> list[Path]:
    """Every file a command reads: PAIRS and reference files, the images they list, the model folder's files."""
    paths = [Path(file) for file in files if file]
    for source in sources:
        if source is None:
            continue
        paths.append(source.source)
        if isinstance(source, PairsTable):
            paths.extend(pair.image_path for pair in source.pairs)
    model = getattr(args, "model", None)
    if model and Path(model).expanduser().is_dir():
        paths.extend(path for path in Path(model).expanduser().iterdir() if path.is_file())
    return paths


def _refuse_overwriting_inputs(outputs: dict[str, Optional[str]], inputs: Sequence[Path]) -> None:
    """Fail when an output path is (a link to, or another name of) one of the inputs."""
    for option, output in outputs.items():
        if not output:
            continue
        try:
            target = os.stat(output)
        except OSError:
            continue  # it does not exist yet, so it is no input
        for path in inputs:
            try:
                found = os.stat(path)
            except OSError:
                continue
            if (found.st_dev, found.st_ino) == (target.st_dev, target.st_ino):
                raise CommandError(
                    f"{option} {output!r} is the input file {str(path)!r}; refusing to overwrite an input. Give"
                    f" {option} another file name."
                )


# --------------------------------------------------------------------------------------------- commands
def _new_metric(image_dim: int, text_dim: int, eps: float, bias_correction: bool = False) -> Any:
    from mid_metric.metric import MutualInformationDivergence

    return MutualInformationDivergence(feature=(image_dim, text_dim), eps=eps, bias_correction=bias_correction)


def _run_demo(args: argparse.Namespace) -> int:
    from mid_metric import demo

    plot = Path(args.plot) if args.plot else None
    if plot is not None:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            raise CommandError(
                "--plot needs matplotlib: pip install matplotlib (or, in the mid-metric source folder,"
                ' pip install ".[plot]").'
            ) from None
        if not (plot.parent if str(plot.parent) else Path(".")).is_dir():
            raise CommandError(f"Cannot write {str(plot)!r}: folder {str(plot.parent)!r} does not exist.")
    return demo.main(seed=args.seed, plot=plot)


def _check_output_folder(path: str) -> None:
    if not path:
        raise CommandError("The output file name is empty.")
    if Path(path).is_dir():
        raise CommandError(f"Cannot write {path!r}: it is a folder; give a file name.")
    folder = Path(path).parent
    if not folder.is_dir():
        raise CommandError(f"Cannot write {path!r}: folder {str(folder)!r} does not exist.")


def _run_reference(args: argparse.Namespace) -> int:
    console = _Console(args.quiet)
    _check_device(args.device)
    eps = 0.0 if args.eps is None else args.eps
    source = _read_source(args.pairs, args, args.caption_column, "--caption-column")
    _check_output_folder(args.output)
    _refuse_overwriting_inputs({"--output": args.output}, _input_files(args, [source], []))
    session = _Session(args, console, args.model)
    if isinstance(source, FeaturePairs):
        label = _identity(args.model) or ""  # --model states where the features come from
    else:
        label = session.extractor(source.source).name  # a missing --model is reported before anything is encoded
    features = session.features(source)
    image_dim, text_dim = features.images.shape[1], features.texts.shape[1]
    _check_reference_count(len(features), image_dim, text_dim, eps, str(features.source))
    metric = _new_metric(image_dim, text_dim, eps)
    metric.update(features.images, features.texts, real=True)
    from mid_metric.functional import reference_from_moments

    reference_from_moments(metric.reference_moments, image_dim, eps)  # fails now on a singular covariance
    _save_reference(args.output, metric, label)
    console.info(
        f"Wrote {args.output}: {len(features)} reference pairs, image_dim {image_dim}, text_dim {text_dim},"
        f" model {label or PRECOMPUTED}, eps {eps:g}."
    )
    return 0


def _scalar(value: Any) -> Any:
    if isinstance(value, Tensor):
        return value.item()
    return value


def _result_fields(result: Any) -> dict[str, Any]:
    """All fields of a MIDResult as JSON-ready scalars (new fields such as a confidence interval included)."""
    if dataclasses.is_dataclass(result):
        return {field.name: _scalar(getattr(result, field.name)) for field in dataclasses.fields(result)}
    return {name: _scalar(getattr(result, name)) for name in ("mid", "mutual_information", "distance")}


def _write_per_sample(path: str, candidates: _Features, pmi: Tensor) -> None:
    with atomic_output(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["row", "image", "caption", "pmi"])
        values = pmi.tolist()
        if candidates.table is not None:
            for pair, value in zip(candidates.table.pairs, values):
                writer.writerow([pair.row, pair.image, pair.caption, repr(value)])
        else:
            for row, value in enumerate(values, start=1):
                writer.writerow([row, "", "", repr(value)])


def _format_text(report: dict[str, Any]) -> str:
    corrected = bool(report.get("bias_corrected"))
    title = "MID (bias-corrected)" if corrected else "MID"
    lines = [f"{title}: {report['mid']:.6f}  (higher is better)"]
    lines.append(f"  mutual information of the reference I(X;Y): {report['mutual_information']:.6f}")
    lines.append(f"  distance term:                              {report['distance']:+.6f}")
    if report.get("ci_low") is not None and report.get("ci_high") is not None:
        level = report.get("ci_level")
        label = f"{level:.0%} confidence interval" if level else "confidence interval"
        lines.append(f"  {label}: [{report['ci_low']:.6f}, {report['ci_high']:.6f}]")
    elif report.get("standard_error") is not None:
        lines.append(f"  standard error: {report['standard_error']:.6f}")
    estimator = (
        "bias-corrected estimator (--bias-correction; not comparable with published MID)"
        if corrected
        else "the paper's estimator (not bias-corrected)"
    )
    lines.append(f"  estimator: {estimator}")
    model = report["model"] or "(precomputed features)"
    if report.get("reference_model") != report["model"]:
        model += f"; reference model {report.get('reference_model') or '(precomputed features)'}"
    lines.append(
        f"  {report['num_candidates']} candidate pairs, {report['num_reference']} reference pairs;"
        f" model {model}; eps {report['eps']:g}"
    )
    return "\n".join(lines)


def _rms_norm(features: Tensor) -> float:
    """Root-mean-square L2 norm of feature rows, ``sqrt(mean |v|^2)``, in float64."""
    return math.sqrt(float(features.double().square().sum(dim=1).mean()))


def _warn_unnormalised(
    console: _Console, reference: tuple[Optional[float], Optional[float]], candidates: _Features, where: str
) -> None:
    """Warn when the reference features were L2-normalised and the candidates' are not."""
    for what, reference_norm, features in (
        ("image", reference[0], candidates.images),
        ("text", reference[1], candidates.texts),
    ):
        if reference_norm is None or abs(reference_norm - 1.0) > NORM_TOLERANCE:
            continue
        norm = _rms_norm(features)
        if abs(norm - 1.0) > NORM_TOLERANCE:
            console.warn(
                f"the {what} features of {candidates.source} are not L2-normalised (RMS norm {norm:.6g}), but those"
                f" of the reference {where} are (RMS norm {reference_norm:.6g}); MID of such features is"
                " meaningless. L2-normalise them as the reference's were, with the same model."
            )


def _check_finite(report: dict[str, Any]) -> None:
    """Fail with one line when a number of the result is NaN or infinite (JSON has no such numbers)."""
    bad = [f"{key} = {value}" for key, value in report.items() if isinstance(value, float) and not math.isfinite(value)]
    if bad:
        raise CommandError(
            f"the result is not a finite number ({', '.join(bad)}); nothing is printed or written. The features are"
            " probably degenerate (constant, duplicated or far from the reference); check them, or pass --eps."
        )


def _check_model_sizes(session: _Session, source: Any, dims: tuple[int, int], reference_label: str) -> None:
    """Fail before encoding when the model for ``source`` gives features of other sizes than the reference's."""
    if isinstance(source, FeaturePairs):
        return
    extractor = session.extractor(source.source)
    if (extractor.image_dim, extractor.text_dim) != dims:
        raise CommandError(
            f"Model {session.model!r} gives features of sizes (image_dim, text_dim) = ({extractor.image_dim},"
            f" {extractor.text_dim}), but the reference {reference_label} has {dims}."
        )


def _run_score(args: argparse.Namespace) -> int:
    console = _Console(args.quiet)
    _check_device(args.device)
    caption_column = args.generated_caption_column or args.caption_column
    caption_option = "--generated-caption-column" if args.generated_caption_column else "--caption-column"
    candidates_source = _read_source(args.pairs, args, caption_column, caption_option)
    if args.per_sample:  # fail before any work when the output folder is missing
        _check_output_folder(args.per_sample)
    reference_source = None
    if args.reference is not None:
        _check_reference_file(args.reference)
    else:
        reference_source = _read_source(args.reference_pairs, args, args.caption_column, "--caption-column")
    _refuse_overwriting_inputs(
        {"--per-sample": args.per_sample},
        _input_files(args, [candidates_source, reference_source], [args.reference]),
    )
    requested = _identity(args.model)

    if args.reference is not None:
        metric, metadata = _load_reference(args.reference, args.eps, args.bias_correction)
        image_dim, text_dim, eps = metric.image_dim, metric.text_dim, metric.eps
        recorded = metadata["feature_extractor"]
        if requested and recorded and not args.no_check_feature_extractor:
            if not _same_model(args.model, requested, recorded):
                raise CommandError(
                    f"{args.reference} was built with model {recorded!r}, but --model {args.model!r} is"
                    f" {requested!r}; MID values from different models are not comparable. Build a reference with"
                    " this model, drop --model, or pass --no-check-feature-extractor if both denote the same model."
                )
        _check_reference_count(metadata["num_samples"], image_dim, text_dim, eps, str(args.reference))
        session = _Session(args, console, args.model or recorded or None)
        run_model = requested or recorded or None
        reference_model = recorded or None
        reference_norms = (metadata.get("image_rms_norm"), metadata.get("text_rms_norm"))
        reference_label = args.reference
        reference = None
    else:
        eps = 0.0 if args.eps is None else args.eps
        session = _Session(args, console, args.model)
        for source in (reference_source, candidates_source):
            if not isinstance(source, FeaturePairs):
                session.extractor(source.source)  # report a missing --model before encoding anything
        run_model = requested  # the name load_clip gives the model, without loading it for features files
        reference_model = None if isinstance(reference_source, FeaturePairs) else run_model
        reference_label = args.reference_pairs

    if isinstance(candidates_source, FeaturePairs):
        candidates_model = None
    else:
        candidates_model = session.extractor(candidates_source.source).name
        if args.reference is not None:  # the sizes are known: check them before the model names
            _check_model_sizes(session, candidates_source, (image_dim, text_dim), reference_label)
    if args.features_from_model:
        if run_model is None:
            raise CommandError(
                "--features-from-model states that the precomputed features come from the model of the run, but"
                " there is none: pass --model MODEL."
            )
        candidates_model = candidates_model or run_model
        reference_model = reference_model or run_model
    encodes_nothing = isinstance(candidates_source, FeaturePairs) and not isinstance(reference_source, PairsTable)
    if args.model and encodes_nothing and not args.features_from_model and candidates_model == reference_model:
        raise CommandError(
            f"--model {args.model!r} is given, but nothing is encoded: {args.pairs} and {reference_label} hold"
            " precomputed features. To state that they come from this model, pass --features-from-model too;"
            " otherwise drop --model."
        )
    if (candidates_model is None) != (reference_model is None):
        unknown, known = (args.pairs, reference_label) if candidates_model is None else (reference_label, args.pairs)
        model = candidates_model or reference_model
        raise CommandError(
            f"{unknown} holds precomputed features of unknown origin, but the features of {known} come from model"
            f" {model!r}; MID of features from two models is meaningless. If the features of {unknown} were"
            f" computed with {model!r} (L2-normalised, as mid-metric does), pass --features-from-model."
        )

    if reference_source is not None:
        reference = session.features(reference_source)
        image_dim, text_dim = reference.images.shape[1], reference.texts.shape[1]
        _check_reference_count(len(reference), image_dim, text_dim, eps, str(reference.source))
        metric = _new_metric(image_dim, text_dim, eps, args.bias_correction)
        metric.update(reference.images, reference.texts, real=True)
        reference_norms = (_rms_norm(reference.images), _rms_norm(reference.texts))
        _check_model_sizes(session, candidates_source, (image_dim, text_dim), reference_label)
    candidates = session.features(candidates_source)
    got = (int(candidates.images.shape[1]), int(candidates.texts.shape[1]))
    if got != (image_dim, text_dim):
        raise CommandError(
            f"{candidates.source} has features of sizes (image_dim, text_dim) = {got}, but the reference"
            f" {reference_label} has ({image_dim}, {text_dim}); both must come from the same model."
        )
    if len(candidates) < 2:
        raise CommandError(f"{candidates.source} holds {len(candidates)} pair; MID needs at least 2 candidate pairs.")
    _warn_unnormalised(console, reference_norms, candidates, str(reference_label))
    metric.update(candidates.images, candidates.texts, real=False)
    result = metric.compute_with_ci()  # MID, its terms, a standard error and a 95% confidence interval

    report: dict[str, Any] = _result_fields(result)
    report.update(
        {
            "model": candidates_model or reference_model,
            "reference_model": reference_model,
            "image_dim": image_dim,
            "text_dim": text_dim,
            "eps": eps,
            "candidates": str(args.pairs),
            "reference": str(reference_label),
            "version": __version__,
        }
    )
    _check_finite(report)
    if args.per_sample:
        pmi = metric.pmi(candidates.images, candidates.texts)
        if not bool(torch.isfinite(pmi).all()):
            row = int((~torch.isfinite(pmi)).nonzero()[0]) + 1
            raise CommandError(
                f"the pointwise mutual information of candidate row {row} is not finite; {args.per_sample} is not"
                " written."
            )
        _write_per_sample(args.per_sample, candidates, pmi)
        console.info(f"Wrote {args.per_sample}: the PMI of each of the {len(candidates)} candidate pairs.")
    if args.json:
        print(json.dumps(report, indent=2, allow_nan=False))
    else:
        print(_format_text(report))
    return 0


_COMMANDS = {"demo": _run_demo, "reference": _run_reference, "score": _run_score}


def _one_line(error: BaseException) -> str:
    text = " ".join(str(error).split()) or type(error).__name__
    return text


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run ``mid-metric`` with ``argv`` (``sys.argv[1:]`` when ``None``) and return the exit status.

    Bad input (missing or unreadable files, missing columns, corrupt images, empty captions, an incompatible
    reference, too few pairs) prints one line ``mid-metric: error: ...`` on stderr and returns 1; argument errors
    exit with status 2.

    Example:
        >>> main(["score", "missing.csv", "--reference", "ref.safetensors", "--quiet"])
        1
    """
    args = build_parser().parse_args(argv)
    try:
        return _COMMANDS[args.command](args)
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except (CommandError, ValueError, OSError, ImportError, RuntimeError) as error:
        print(f"{PROG}: error: {_one_line(error)}", file=sys.stderr)
        return EXIT_BAD_INPUT
