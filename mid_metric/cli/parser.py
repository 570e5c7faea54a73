"""The argument parser of ``mid-metric``: its commands, options and their help."""

from __future__ import annotations

import argparse
import textwrap
from typing import Any

import torch

from mid_metric._version import __version__
from mid_metric.cli.values import (
    MAX_AUTOMATIC_WORKERS,
    automatic_workers,
    eps_value,
    integer,
    jackknife_groups,
    metric_names,
    non_negative_int,
    positive_int,
    usable_cores,
)
from mid_metric.features.preprocess import PREPROCESSING

PROG = "mid-metric"


#: Exit status for bad input (missing files, bad rows, incompatible reference, too few pairs, ...).
EXIT_BAD_INPUT = 1


#: Exit status when interrupted with Ctrl-C.
EXIT_INTERRUPTED = 130


#: Exit status when standard output is a pipe that its reader closed (``mid-metric demo | head -1``): 128 + SIGPIPE,
#: what a shell reports for a Unix tool that the signal ended.
EXIT_BROKEN_PIPE = 128 + 13


#: The seeds every ``--seed`` takes: those of :meth:`torch.Generator.manual_seed` and :func:`numpy.random.default_rng`.
SEED_RANGE = (0, 2**64 - 1)


#: Name recorded for the feature extractor when the features were computed elsewhere and no --model is given.
PRECOMPUTED = "precomputed"


class CommandError(Exception):
    """A problem with the user's input, reported as one line on stderr with a non-zero exit status."""


# ------------------------------------------------------------------------------------------ argument parsing
#: The benchmarks of ``mid-metric benchmark``.
BENCHMARK_NAMES = ("flickr8k-expert", "flickr8k-cf")


def check_arguments(args: argparse.Namespace) -> None:
    """The checks of parsed options that end with one line (exit status 1) rather than argparse's usage message.

    Raises:
        CommandError: If ``--seed`` is outside :data:`SEED_RANGE`.

    Example:
        >>> check_arguments(argparse.Namespace(seed=-1))
        Traceback (most recent call last):
        ...
        mid_metric.cli.parser.CommandError: --seed -1 is out of range: a seed is an integer from 0 to 2**64 - 1.
    """
    seed = getattr(args, "seed", None)
    if seed is not None and not SEED_RANGE[0] <= seed <= SEED_RANGE[1]:
        raise CommandError(f"--seed {seed} is out of range: a seed is an integer from 0 to 2**64 - 1.")


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


#: The preprocessing of every command when ``--preprocess`` is not given: OpenAI CLIP's own, which the paper used,
#: defined by this package alone (the processor's result depends on the transformers release and its backend).
DEFAULT_PREPROCESS = "openai"


def _add_common_options(
    parser: argparse.ArgumentParser, model_help: str, eps_default: str, columns: bool = True
) -> None:
    group = parser.add_argument_group("features")
    group.add_argument("--model", metavar="MODEL", help=model_help)
    if columns:
        group.add_argument(
            "--image-column", default="image", metavar="NAME", help="column of PAIRS with the image path"
        )
        group.add_argument(
            "--caption-column", default="caption", metavar="NAME", help="column of PAIRS with the caption"
        )
    group.add_argument(
        "--preprocess",
        choices=PREPROCESSING,
        default=None,
        help=f"how images are resized, cropped and normalised for CLIP: 'openai' (the default since 0.4.0: OpenAI"
        " CLIP's own pipeline, with which the paper's numbers were computed: bicubic resize of the short side,"
        " center crop, CLIP mean and std), 'processor' (the model's Hugging Face image processor, the default of"
        " mid-metric 0.3 and earlier), 'mid-t2i' (the MID paper's text-to-image protocol: resize and crop to 256"
        " first) or 'cmmd' (the CMMD paper's: the largest centred square, bicubic resize to the model's size). Use"
        " the same for a reference and its candidates: reference files do not record it (default:"
        f" {DEFAULT_PREPROCESS})",
    )
    group.add_argument(
        "--device",
        default=_default_device(),
        help="device the CLIP model runs on (default: cuda when available, else cpu); an unavailable device is an"
        " error in every run, also one that needs no model",
    )
    group.add_argument(
        "--batch-size", type=positive_int, default=64, metavar="N", help="images or captions encoded at once"
    )
    group.add_argument(
        "--num-workers",
        type=non_negative_int,
        default=automatic_workers(usable_cores()),
        metavar="N",
        help="worker processes that decode and preprocess the images and tokenise the captions while the main"
        " process runs the model, at most one per batch (0: all in the main process). The results are the same"
        f" for every N (default: automatic, the usable CPU cores less one, at most {MAX_AUTOMATIC_WORKERS}:"
        " %(default)s here)",
    )
    group.add_argument(
        "--eps",
        type=eps_value,
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
    """Return the argument parser of ``mid-metric`` with its subcommands.

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
            "      --model openai/clip-vit-large-patch14\n"
            "  mid-metric correlate a.csv ratings.tsv --key row --score-column pmi --rating-column rating\n"
            "  mid-metric benchmark flickr8k-expert --root flickr8k --model openai/clip-vit-base-patch32\n\n"
            "Run 'mid-metric COMMAND --help' for the options of each command."
        ),
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    _add_demo_command(commands)
    _add_reference_command(commands)
    _add_score_command(commands)
    _add_correlate_command(commands)
    _add_benchmark_command(commands)
    return parser


def _add_demo_command(commands: Any) -> None:
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
    demo.add_argument(
        "--plot",
        metavar="OUT.png",
        help="also draw the table as a figure (needs matplotlib); the format follows the suffix (.png, .pdf, .svg,"
        " ...). The path and its format are checked before the demo runs",
    )
    demo.add_argument(
        "--seed",
        type=integer,
        default=0,
        help="random seed, from 0 to 2**64 - 1; the demo is deterministic for a given seed",
    )


def _add_reference_command(commands: Any) -> None:
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


def _add_score_command(commands: Any) -> None:
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
        help="write one row per candidate: row, image, caption and its pointwise mutual information (pmi), then a"
        " column per other metric; '-' prints the table on stdout (the summary then goes to stderr, and --json is"
        " refused)",
    )
    score.add_argument(
        "--metrics",
        type=metric_names,
        default=("mid",),
        metavar="NAMES",
        help="comma-separated metrics to compute from the one feature pass: mid, clip-score (CLIP-S, weight 2.5,"
        " clamped at 0), r-precision (the exact expectation of CLIP-R-Precision with 99 negatives), infonce (the"
        " mean softmax probability of the matching caption, temperature 1), fd (Fréchet distance of the real and the"
        " candidate image features) and cmmd (CMMD, sigma 10, scale 1000; needs --reference-pairs); fd and cmmd are"
        " set-level, with no --per-sample column; MID by default",
    )
    score.add_argument(
        "--bias-correction",
        nargs="?",
        const="gaussian",
        choices=("gaussian", "jackknife"),
        default=None,
        help="use a bias-corrected estimator, whose value does not drift with the number of samples (see the"
        " README): 'gaussian' (the default of the flag) or 'jackknife' (also for non-Gaussian features; needs"
        " --reference-pairs, since reference files hold no jackknife groups). Published MID numbers use the"
        " paper's uncorrected estimator, the default. Needs --eps 0. 'jackknife' jackknifes fd too, with an"
        " interval (its images grouped by caption where MID's key is text, by image otherwise); 'gaussian' leaves"
        " fd at its plug-in value",
    )
    score.add_argument(
        "--jackknife-key",
        choices=("text", "image", "joint"),
        default=None,
        help="with --bias-correction jackknife: what puts a pair in its jackknife group. 'image' when the candidates"
        " share the reference's images (captioning: generated captions of the reference images), 'text' when they"
        " share its captions (text-to-image: images generated from the reference captions), 'joint' for both."
        " Default: image with --generated-caption-column, else text",
    )
    score.add_argument(
        "--jackknife-groups",
        type=jackknife_groups,
        default=None,
        metavar="K",
        help="with --bias-correction jackknife: the number of jackknife groups, 2 to 1000 (default: 10)",
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


def _confidence_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("confidence interval")
    group.add_argument(
        "--bootstrap",
        type=non_negative_int,
        default=1000,
        metavar="N",
        help="bootstrap resamples for the 95%% interval of tau; items are drawn with replacement (0: no interval)",
    )
    group.add_argument(
        "--seed",
        type=integer,
        default=0,
        help="seed of the bootstrap, from 0 to 2**64 - 1: the same seed gives the same interval (default: 0)",
    )


def _add_correlate_command(commands: Any) -> None:
    correlate = commands.add_parser(
        "correlate",
        help="Kendall's tau between per-sample scores and human judgments",
        formatter_class=_Formatter,
        description=(
            "Join per-sample scores (e.g. the CSV of 'mid-metric score --per-sample') with human judgments on a key\n"
            "column, and print Kendall's tau of each score column against the ratings, exactly as\n"
            "scipy.stats.kendalltau(scores, ratings, variant=...) computes it, with its p-value, the number of\n"
            "judgments and a seeded bootstrap 95% interval. Both files may be CSV (.csv), TSV (.tsv) or JSON Lines\n"
            "(.jsonl). A key names one row of SCORES; JUDGMENTS may rate a key several times, and each rating counts\n"
            "(the bootstrap draws a key with all its ratings). Judgments whose rating is empty or NaN are skipped.\n"
            "Uses scipy, a dependency of mid-metric."
        ),
    )
    correlate.add_argument("scores", metavar="SCORES", help="per-sample scores: a key column and score columns")
    correlate.add_argument("judgments", metavar="JUDGMENTS", help="human judgments: a key column and a rating column")
    correlate.add_argument("--key", required=True, metavar="NAME", help="the key column, in both files")
    correlate.add_argument(
        "--score-column",
        required=True,
        action="append",
        metavar="NAME",
        help="a score column of SCORES (e.g. pmi); repeat it for a table of several metrics",
    )
    correlate.add_argument("--rating-column", required=True, metavar="NAME", help="the rating column of JUDGMENTS")
    correlate.add_argument(
        "--variant",
        choices=("b", "c"),
        default="b",
        help="Kendall's tau-b (ties adjusted, scipy's default) or tau-c (Stuart's, used for Flickr8K-Expert)",
    )
    correlate.add_argument(
        "--allow-missing",
        action="store_true",
        help="correlate the keys found in both files; without it, a row present in only one file is an error",
    )
    correlate.add_argument(
        "--json",
        action="store_true",
        help="print a JSON object (tau, p_value, n, ci_low, ci_high per score column) instead of text",
    )
    _confidence_options(correlate)


def _add_benchmark_command(commands: Any) -> None:
    benchmark = commands.add_parser(
        "benchmark",
        help="reproduce the paper's human-judgment correlations on a public captioning benchmark",
        formatter_class=_Formatter,
        description=(
            "Score every judged (image, caption) pair of a captioning benchmark with MID (per-sample PMI), CLIP-S and\n"
            "RefCLIP-S, and print each metric's Kendall tau with the human ratings next to the MID paper's value.\n\n"
            "flickr8k-expert (tau-c) and flickr8k-cf (tau-b) read the files of Flickr8K as distributed, under --root:\n"
            "  Flicker8k_Dataset/<image>.jpg, Flickr8k.token.txt, ExpertAnnotations.txt, CrowdFlowerAnnotations.txt.\n"
            "As in SPICE and CLIPScore, Expert rows whose caption is one of the image's references are skipped, a\n"
            "rated CrowdFlower caption is removed from the image's references, and NaN ratings are skipped.\n\n"
            "MID's reference is fitted on the benchmark's own (image, reference caption) pairs unless --reference\n"
            "gives a statistics file. MID encodes the captions as they are (as 'mid-metric reference' does); CLIP-S\n"
            "and RefCLIP-S prefix them with 'A photo depicts ', as Hessel et al. do. Needs scipy (the 'benchmark'\n"
            "extra)."
        ),
    )
    benchmark.add_argument("name", metavar="NAME", choices=BENCHMARK_NAMES, help=f"one of {', '.join(BENCHMARK_NAMES)}")
    benchmark.add_argument("--root", required=True, metavar="DIR", help="the folder holding the benchmark's files")
    benchmark.add_argument(
        "--reference",
        metavar="REF.safetensors",
        help="MID reference statistics file (from 'mid-metric reference', e.g. on COCO) instead of the benchmark's"
        " own reference pairs",
    )
    benchmark.add_argument(
        "--no-prompt-prefix",
        action="store_true",
        help="encode CLIP-S's and RefCLIP-S's captions without Hessel et al.'s prefix 'A photo depicts '",
    )
    benchmark.add_argument(
        "--per-sample",
        metavar="OUT.csv",
        help="write one row per judgment: judgment (its number), line (of the annotation file), image, caption_id,"
        " caption, rater, rating, mid, clip_score, ref_clip_score (a table that 'mid-metric correlate' reads); '-'"
        " prints it on stdout (the summary then goes to stderr, and --json is refused)",
    )
    benchmark.add_argument(
        "--json",
        action="store_true",
        help="print a JSON object (benchmark, counts, model, reference, each metric's tau, p_value and interval,"
        " the paper's values) instead of text",
    )
    benchmark.add_argument(
        "--dtype",
        choices=("float32", "float16", "bfloat16"),
        default="float32",
        help="dtype of the CLIP weights; the published values come from OpenAI's CLIP in float16 on a GPU",
    )
    _confidence_options(benchmark)
    _add_common_options(
        benchmark,
        "Hugging Face CLIP model id or local model folder (the paper: openai/clip-vit-base-patch32); defaults to"
        " the model recorded in --reference",
        eps_default="the eps recorded in --reference, else 0",
        columns=False,
    )
