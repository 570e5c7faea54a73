"""What the commands share: console output, reading and encoding pairs, devices, models and reference files."""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import torch
from torch import Tensor

from mid_metric import _checks
from mid_metric._version import __version__
from mid_metric.cli.encoding import encode_images, encode_texts
from mid_metric.cli.messages import cli_wording
from mid_metric.cli.parser import DEFAULT_PREPROCESS, PROG, CommandError
from mid_metric.features import is_local_model_identity, model_identity, same_model
from mid_metric.io.atomic import STDOUT, OutputPathError, output_target
from mid_metric.io.pairs import (
    FeaturePairs,
    PairsError,
    PairsTable,
    is_features_file,
    read_features,
    read_pairs,
)
from mid_metric.io.tables import check_input_file


# ---------------------------------------------------------------------------------------------- messages
class Console:
    """Messages and progress on stderr, silenced by --quiet."""

    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet

    def info(self, message: str) -> None:
        """Print a progress or status line on stderr, unless ``--quiet``."""
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
class Features:
    """Encoded (or precomputed) pairs with what is needed to report them."""

    images: Tensor
    texts: Tensor
    source: Path
    table: Optional[PairsTable] = None

    def __len__(self) -> int:
        return int(self.images.shape[0])


def read_source(path: str, args: argparse.Namespace, caption_column: str, caption_option: str) -> Any:
    """Read PAIRS: a features file as it is, or a table of image paths and captions (checked to exist)."""
    if is_features_file(path):
        return read_features(path)
    return read_pairs(path, args.image_column, caption_column, caption_option=caption_option)


def check_images_exist(table: PairsTable, where: str = "row") -> None:
    """Fail with one line naming the file and row (``where``) of the first image that is missing or a link loop."""
    for pair in table.pairs:
        check_input_file(pair.image_path, f"{table.source}, {where} {pair.row}: image", PairsError)


class Session:
    """Loads the feature extractor once, on demand, and turns PAIRS files into features.

    Each image file and each caption is encoded once per run: a reference and its candidates that share images
    (captioning) or captions (text-to-image) get bit-identical features for them, whatever the batches, as the
    estimators that detect shared rows need.
    """

    def __init__(self, args: argparse.Namespace, console: Console, model: Optional[str]) -> None:
        self.args = args
        self.console = console
        self.model = model
        self._extractor: Any = None
        self._images: dict[Path, Tensor] = {}  # by resolved path
        self._texts: dict[str, Tensor] = {}

    def extractor(self, needed_for: Path) -> Any:
        """Return the ``--model`` feature extractor, loaded once; ``needed_for`` names the file that needs it."""
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
            check_device(self.args.device)
            self.console.quiet_transformers()
            preprocess = preprocessing(self.args)
            self.console.info(f"Loading {self.model} on {self.args.device} (preprocessing: {preprocess}) ...")
            self._warn_older_reference()
            dtype = getattr(self.args, "dtype", None)
            self._extractor = load_clip(
                self.model,
                device=self.args.device,
                dtype=getattr(torch, dtype) if dtype else None,
                batch_size=self.args.batch_size,
                preprocess=preprocess,
            )
        return self._extractor

    def _warn_older_reference(self) -> None:
        """Warn when images are encoded with the default preprocessing for a reference file of another default.

        Reference files record no preprocessing, but they record the release that wrote them, and mid-metric 0.3
        and earlier preprocessed with the model's image processor unless told otherwise. An explicit
        ``--preprocess`` silences the warning, and so does a file built from precomputed features.
        """
        path = getattr(self.args, "reference", None)
        if not path or getattr(self.args, "preprocess", None) is not None:
            return
        from mid_metric.io.reference_files import load_reference_statistics

        metadata = load_reference_statistics(path)[1]
        version = metadata.get("library_version", "")
        recorded = default_preprocess_of(version)
        if metadata.get("feature_extractor") and recorded != default_preprocess_of(__version__):
            writer = f"mid-metric {version}" if version else "an older mid-metric"
            self.console.warn(
                f"{path} was written by {writer}, whose default preprocessing was {recorded!r}; this run uses"
                f" {preprocessing(self.args)!r}, and reference files do not record it. Pass --preprocess {recorded}"
                " if the reference was built with that default, or --preprocess to state the one it was built with."
            )

    def features(self, source: Any) -> Features:
        """Return the features of a source: read from a features file, or encoded with the model."""
        if isinstance(source, FeaturePairs):
            return Features(source.image_features, source.text_features, source.source)
        check_images_exist(source)  # fail before loading the model and encoding anything
        extractor = self.extractor(source.source)
        paths = [pair.image_path.resolve() for pair in source.pairs]
        new = {path: pair for path, pair in zip(paths, source.pairs) if path not in self._images}
        if new:
            table = dataclasses.replace(source, pairs=tuple(new.values()))
            self._images.update(zip(new, encode_images(table, extractor, self.args, self.console)))
        captions = [pair.caption for pair in source.pairs]
        unseen = [caption for caption in dict.fromkeys(captions) if caption not in self._texts]
        if unseen:
            self._texts.update(zip(unseen, encode_texts(unseen, extractor, self.args)))
        images = torch.stack([self._images[path] for path in paths])
        texts = torch.stack([self._texts[caption] for caption in captions])
        return Features(images, texts, source.source, source)


#: The release whose commands preprocess with :data:`~mid_metric.cli.parser.DEFAULT_PREPROCESS` by default.
NEW_DEFAULT_SINCE = (0, 4)


def default_preprocess_of(version: str) -> str:
    """The preprocessing that mid-metric ``version`` (a file's ``library_version``) used by default.

    Example:
        >>> default_preprocess_of("0.3.1"), default_preprocess_of("0.4.0")
        ('processor', 'openai')
    """
    return "processor" if written_before(version, NEW_DEFAULT_SINCE) else DEFAULT_PREPROCESS


def preprocessing(args: argparse.Namespace) -> str:
    """The image preprocessing of the run: ``--preprocess``, else :data:`~mid_metric.cli.parser.DEFAULT_PREPROCESS`."""
    return getattr(args, "preprocess", None) or DEFAULT_PREPROCESS


def written_before(version: str, release: tuple[int, int]) -> bool:
    """Whether a recorded ``library_version`` is older than ``release`` (an empty or unreadable one is).

    Example:
        >>> written_before("0.3.1", (0, 4)), written_before("0.4.0", (0, 4)), written_before("", (0, 4))
        (True, False, True)
    """
    numbers = version.split(".")[:2]
    try:
        return tuple(int(number) for number in numbers) < release
    except ValueError:
        return True


def check_reference_count(
    count: int, image_dim: int, text_dim: int, eps: float, what: str, bias_correction: Union[bool, str] = False
) -> None:
    """Refuse too few reference pairs (by :func:`mid_metric._checks.check_reference_count`), naming ``what``.

    A bias-corrected run (``bias_correction`` true), which needs ``--eps 0``, is not advised to set ``--eps``.
    """
    try:
        _checks.check_reference_count(count, image_dim + text_dim, eps, bias_correction=bool(bias_correction))
    except ValueError as error:
        message = cli_wording(" ".join(str(error).split()), eps_allowed=not bias_correction)
        raise CommandError(f"{what} holds {count} pairs: {message}") from None


def check_device(text: str) -> torch.device:
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
        raise CommandError(f"--device {text!r} is not available here ({one_line(error)}); use --device cpu.") from None
    return device


def recorded_identity(model: Optional[str]) -> Optional[str]:
    """The recorded name of a --model: the id as it is, a local folder as its weights' fingerprint."""
    return model_identity(model) if model else None


def matches_recorded_model(requested: str, identity: str, recorded: str) -> bool:
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
def save_reference(path: str, metric: Any, model: Optional[str]) -> None:
    """Write the metric's reference statistics atomically, through a symbolic link to its file (the link stays)."""
    metric.save_reference(output_target(path), feature_extractor=model or "")


def check_reference_file(path: str) -> None:
    """Refuse a ``--reference`` that is a folder, does not exist or is a symbolic link loop, with one line."""
    if Path(path).is_dir():
        raise CommandError(
            f"Reference file {path!r} is a folder; --reference takes the .safetensors file that 'mid-metric"
            " reference' wrote."
        )
    check_input_file(Path(path), "Reference file", CommandError)


def load_reference(
    path: str, eps: Optional[float], bias_correction: Union[bool, str] = False
) -> tuple[Any, dict[str, Any]]:
    """Return a metric holding the reference of ``path``, and the file's metadata."""
    from mid_metric.io.reference_files import load_reference_statistics
    from mid_metric.metrics import MutualInformationDivergence

    check_reference_file(path)
    _, metadata = load_reference_statistics(path)  # checks the file before anything else is done
    if bias_correction and eps is None and float(metadata["eps"]) != 0.0:
        raise CommandError(
            f"--bias-correction needs --eps 0, but {path} records eps {float(metadata['eps']):g}, which is used"
            " unless --eps is given: pass --eps 0 too."
        )
    options: dict[str, Any] = {"check_feature_extractor": False, "bias_correction": bias_correction}
    # (the CLI compares model names itself)
    if eps is not None:
        options["eps"] = eps
    return MutualInformationDivergence.from_reference(path, **options), metadata


# ------------------------------------------------------------------------------------- inputs and outputs
def input_files(args: argparse.Namespace, sources: Sequence[Any], files: Sequence[Optional[str]]) -> list[Path]:
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


def refuse_overwriting_inputs(outputs: dict[str, Optional[str]], inputs: Sequence[Path]) -> None:
    """Fail when an output path is (a link to, or another name of) one of the inputs."""
    for option, output in outputs.items():
        if not output or output == STDOUT:
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
def new_metric(
    image_dim: int, text_dim: int, eps: float, bias_correction: Union[bool, str] = False, **options: Any
) -> Any:
    """A metric for features of these sizes (imported here, so that ``--help`` stays fast); ``options`` go to it."""
    from mid_metric.metrics import MutualInformationDivergence

    return MutualInformationDivergence(
        feature=(image_dim, text_dim), eps=eps, bias_correction=bias_correction, **options
    )


def check_output(option: str, path: str, stdout_allowed: bool = False) -> None:
    """Refuse, before any work, an output that :func:`mid_metric.io.atomic.output_target` refuses, naming ``option``.

    That is an empty path, a folder, a FIFO, socket or device, a symbolic link loop, or a missing folder. ``-`` is
    standard output where ``stdout_allowed``, and refused elsewhere (a binary file has no place there).
    """
    if path == STDOUT:
        if stdout_allowed:
            return
        raise CommandError(f"{option} -: this file cannot go to standard output; give a file name.")
    try:
        output_target(path)
    except OutputPathError as error:
        raise CommandError(f"{option}: {error}") from None


def check_table_output(option: str, path: Optional[str], json_report: bool) -> None:
    """Check a per-sample table's output (``-``: standard output, which ``--json`` cannot share), before any work."""
    if not path:
        return
    if path == STDOUT and json_report:
        raise CommandError(
            f"{option} - prints the table on standard output, where --json prints its report: give {option} a"
            " file name, or drop --json."
        )
    check_output(option, path, stdout_allowed=True)


def print_report(text: str, table_output: Optional[str], console: Console) -> None:
    """Print the report on stdout, or on stderr (unless ``--quiet``) when the per-sample table went to stdout."""
    if table_output == STDOUT:
        console.info(text)
    else:
        print(text)


def one_line(error: BaseException) -> str:
    """The message of ``error`` on one line (its type name when it has none)."""
    text = " ".join(str(error).split()) or type(error).__name__
    return text
