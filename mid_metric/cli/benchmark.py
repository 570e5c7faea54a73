"""``mid-metric benchmark``: the paper's human-judgment correlations (Flickr8K Expert and CrowdFlower) end to end.

For every judged (image, candidate caption) pair this computes three per-sample scores from one CLIP pass:

- **MID**: the pointwise mutual information of the pair under the reference Gaussian, with the captions encoded
  as they are, exactly as ``mid-metric reference`` encodes a reference's captions (so the benchmark's own
  reference and a ``--reference`` file built on COCO see the same kind of text features);
- **CLIP-S** (Hessel et al.): ``2.5 * max(cos(image, caption), 0)``, the caption prefixed with
  ``"A photo depicts "`` unless ``--no-prompt-prefix``;
- **RefCLIP-S**: the harmonic mean of CLIP-S and the caption's best cosine to the image's references (prefixed
  like it), clamped at 0.

Each is correlated with the ratings by :func:`mid_metric.functional.correlation.correlate` (Kendall's tau-c for
Expert, tau-b for CrowdFlower, as the papers report), the bootstrap drawing whole candidate pairs with all their
ratings. The files and exclusions are those of :mod:`mid_metric.io.flickr8k`.
"""

from __future__ import annotations

import argparse
import csv
import json
from typing import Any, Optional

import torch
from torch import Tensor

from mid_metric._version import __version__
from mid_metric.cli.correlate import correlation_table, result_fields
from mid_metric.cli.encoding import encode_images, encode_texts
from mid_metric.cli.messages import library_errors
from mid_metric.cli.parser import CommandError
from mid_metric.cli.session import (
    Console,
    Session,
    check_device,
    check_images_exist,
    check_reference_count,
    check_reference_file,
    check_table_output,
    input_files,
    load_reference,
    matches_recorded_model,
    new_metric,
    preprocessing,
    print_report,
    recorded_identity,
    refuse_overwriting_inputs,
)
from mid_metric.functional.correlation import KendallResult, correlate, require_scipy
from mid_metric.io.atomic import atomic_text_output
from mid_metric.io.flickr8k import IMAGE_FOLDER, TOKEN_FILE, Flickr8kError, Flickr8kJudgments, read_flickr8k
from mid_metric.io.pairs import Pair, PairsTable

#: Hessel et al.'s prompt prefix for CLIP-S and RefCLIP-S.
PROMPT_PREFIX = "A photo depicts "

#: Kendall's tau published in the MID paper (Kim et al. 2022, CLIP ViT-B/32), per benchmark and metric.
PAPER = {
    "flickr8k-expert": {"mid": 0.549, "clip_score": 0.512, "ref_clip_score": 0.530},
    "flickr8k-cf": {"mid": 0.373, "clip_score": 0.344, "ref_clip_score": 0.364},
}

#: The metrics in the order they are reported, with their labels.
LABELS = {"mid": "MID", "clip_score": "CLIP-S", "ref_clip_score": "RefCLIP-S"}

_TITLES = {"flickr8k-expert": "Flickr8K-Expert", "flickr8k-cf": "Flickr8K-CF"}


def _image_table(bench: Flickr8kJudgments) -> PairsTable:
    """The judged images as a pairs table (captions unused), each named by the first annotation line with it."""
    first_line: dict[str, int] = {}
    for item in bench.items:
        first_line.setdefault(item.image, item.line)
    pairs = tuple(Pair(line, image, bench.image_path(image), "") for image, line in first_line.items())
    table = PairsTable(bench.annotations, "image", "caption", pairs)
    try:
        check_images_exist(table, where="line")
    except ValueError as error:
        raise Flickr8kError(f"{error} (Images are read from {IMAGE_FOLDER}/ under --root.)") from None
    return table


def _reference_model(args: argparse.Namespace, metadata: dict[str, Any]) -> Optional[str]:
    """The model of the run with --reference: --model (checked against the file's), else the file's."""
    recorded = metadata.get("feature_extractor") or None
    if args.model:
        requested = recorded_identity(args.model)
        if recorded and not matches_recorded_model(args.model, requested, recorded):
            raise CommandError(
                f"{args.reference} was built with model {recorded!r}, but --model {args.model!r} is {requested!r};"
                " MID values from different models are not comparable. Build a reference with this model, or drop"
                " --model."
            )
        return args.model
    if not recorded:
        raise CommandError(
            f"{args.reference} records no model (it was built from precomputed features): pass --model with the"
            " model those features came from."
        )
    return recorded


def _padded_references(bench: Flickr8kJudgments, index: dict[str, int], texts: Tensor) -> tuple[Tensor, Tensor]:
    """The references of every item as a ``(M, R, D)`` tensor with its mask."""
    width = max(len(item.references) for item in bench.items)
    padded = torch.zeros(len(bench.items), width, texts.shape[1], dtype=texts.dtype)
    mask = torch.zeros(len(bench.items), width, dtype=torch.bool)
    for row, item in enumerate(bench.items):
        rows = [index[caption] for caption in item.references]
        padded[row, : len(rows)] = texts[rows]
        mask[row, : len(rows)] = True
    return padded, mask


def _write_per_sample(path: str, bench: Flickr8kJudgments, scores: dict[str, Tensor]) -> None:
    """Write one row per judgment with the three scores (``-``: standard output)."""
    with atomic_text_output(path) as handle:
        writer = csv.writer(handle)
        writer.writerow(["judgment", "line", "image", "caption_id", "caption", "rater", "rating", *scores])
        columns = {name: values.tolist() for name, values in scores.items()}
        for number, judgment in enumerate(bench.judgments, start=1):
            item = bench.items[judgment.item]
            values = [repr(columns[name][judgment.item]) for name in scores]
            writer.writerow(
                [number, item.line, item.image, item.caption_id, item.caption, judgment.rater, judgment.rating, *values]
            )


def _format_text(report: dict[str, Any], results: dict[str, KendallResult]) -> str:
    title = _TITLES[report["benchmark"]]
    lines = [
        f"{title}: Kendall tau-{report['variant']} of {report['num_judgments']} judgments ({report['num_items']}"
        f" candidate captions of {report['num_images']} images) with the human ratings"
    ]
    excluded = [f"{report['skipped_nan_ratings']} NaN ratings skipped"]
    if report["benchmark"] == "flickr8k-expert":
        excluded.insert(0, f"{report['skipped_own_reference']} rows whose caption is one of the image's references")
    else:
        excluded.insert(0, f"{report['removed_references']} rated captions removed from their image's references")
    lines.append("  excluded: " + "; ".join(excluded))
    prefix = f"prefixed with {report['prompt_prefix']!r}" if report["prompt_prefix"] else "without prompt prefix"
    lines.append(
        f"  model {report['model']} ({report['dtype']} on {report['device']}), preprocessing {report['preprocess']};"
        f" CLIP-S and RefCLIP-S captions {prefix}"
    )
    reference = report["reference"]
    where = (
        "the benchmark's own (image, reference caption) pairs"
        if reference["source"] == "benchmark"
        else f"{reference['source']} (model {reference['model']})"
    )
    lines.append(f"  MID reference: {where}, N = {reference['num_samples']}, eps {reference['eps']:g}")
    labelled = {LABELS[name]: result for name, result in results.items()}
    paper = {LABELS[name]: f"{value:.3f}" for name, value in report["paper"].items()}
    lines.extend(correlation_table(labelled, paper))
    bootstrap = report["bootstrap"]
    if bootstrap["resamples"]:
        lines.append(
            f"  interval: {bootstrap['resamples']} bootstrap resamples of the candidate captions (all their ratings"
            f" together), seed {bootstrap['seed']}"
        )
    return "\n".join(lines)


def run_benchmark(args: argparse.Namespace) -> int:
    """``mid-metric benchmark NAME --root DIR``: correlate MID, CLIP-S and RefCLIP-S with the human ratings."""
    require_scipy()  # before minutes of encoding
    console = Console(args.quiet)
    check_device(args.device)
    bench = read_flickr8k(args.root, args.name)
    images = _image_table(bench)
    check_table_output("--per-sample", args.per_sample, args.json)
    if args.reference is not None:
        check_reference_file(args.reference)
    token_file = str(bench.root / TOKEN_FILE)
    refuse_overwriting_inputs(
        {"--per-sample": args.per_sample}, input_files(args, [images], [token_file, args.reference])
    )
    metadata: dict[str, Any] = {}
    metric = None
    if args.reference is not None:
        metric, metadata = load_reference(args.reference, args.eps)
        model = _reference_model(args, metadata)
    elif not args.model:
        raise CommandError(
            f"{args.name} scores images and captions with a CLIP model: pass --model (the paper uses"
            " openai/clip-vit-base-patch32), or --reference with a statistics file that records one."
        )
    else:
        model = args.model
    session = Session(args, console, model)
    extractor = session.extractor(bench.annotations)
    image_dim, text_dim = extractor.image_dim, extractor.text_dim
    if metric is not None:
        if (metric.image_dim, metric.text_dim) != (image_dim, text_dim):
            raise CommandError(
                f"Model {model!r} gives features of sizes (image_dim, text_dim) = ({image_dim}, {text_dim}), but the"
                f" reference {args.reference} has ({metric.image_dim}, {metric.text_dim})."
            )
        check_reference_count(int(metadata["num_samples"]), image_dim, text_dim, metric.eps, str(args.reference))

    # One pass over the images and over the distinct captions (as they are, and prefixed).
    console.info(f"Encoding {len(images)} images of {bench.name} ...")
    image_features = encode_images(images, extractor, args, console)
    captions = list(
        dict.fromkeys([item.caption for item in bench.items] + [r for i in bench.items for r in i.references])
    )
    caption_index = {caption: row for row, caption in enumerate(captions)}
    console.info(f"Encoding {len(captions)} distinct captions ...")
    raw = encode_texts(captions, extractor, args)
    prefix = "" if args.no_prompt_prefix else PROMPT_PREFIX
    prefixed = raw if not prefix else encode_texts([prefix + caption for caption in captions], extractor, args)

    image_index = {pair.image: row for row, pair in enumerate(images.pairs)}
    if metric is None:
        eps = 0.0 if args.eps is None else args.eps
        references_of = {item.image: item.references for item in bench.items}  # one tuple per image
        pairs = [(image_index[image], caption_index[r]) for image, refs in references_of.items() for r in refs]
        what = f"the {bench.name} reference pairs (its images with their reference captions)"
        check_reference_count(len(pairs), image_dim, text_dim, eps, what)
        if eps == 0.0 and len(image_index) <= image_dim:
            raise CommandError(
                f"{what} hold only {len(image_index)} distinct images for image features of size {image_dim}, so"
                " their image covariance is singular: pass --eps (e.g. 5e-4) or --reference with a larger reference."
            )
        rows = torch.tensor(pairs, dtype=torch.long)
        with library_errors():
            metric = new_metric(image_dim, text_dim, eps)
            metric.update(image_features[rows[:, 0]], raw[rows[:, 1]], real=True)
        reference = {"source": "benchmark", "num_samples": len(pairs), "eps": eps, "model": extractor.name}
    else:
        recorded = metadata.get("feature_extractor") or None
        reference = {
            "source": str(args.reference),
            "num_samples": int(metadata["num_samples"]),
            "eps": metric.eps,
            "model": recorded,
        }

    with library_errors():
        scores = _scores(bench, metric, image_features, raw, prefixed, image_index, caption_index)
    judged = torch.tensor([judgment.item for judgment in bench.judgments], dtype=torch.long)
    ratings = [judgment.rating for judgment in bench.judgments]
    groups = judged.tolist()
    results = {
        name: correlate(values[judged].tolist(), ratings, bench.variant, args.bootstrap, args.seed, groups=groups)
        for name, values in scores.items()
    }
    report: dict[str, Any] = {
        "benchmark": bench.name,
        "variant": bench.variant,
        "num_judgments": len(bench.judgments),
        "num_items": len(bench.items),
        "num_images": len(images),
        "skipped_own_reference": bench.skipped_own_reference,
        "removed_references": bench.removed_references,
        "skipped_nan_ratings": bench.skipped_nan,
        "model": extractor.name,
        "preprocess": preprocessing(args),
        "device": str(args.device),
        "dtype": str(next(extractor.model.parameters()).dtype).replace("torch.", ""),
        "prompt_prefix": prefix,
        "reference": reference,
        "metrics": {name: result_fields(result) for name, result in results.items()},
        "paper": PAPER[bench.name],
        "bootstrap": {"resamples": args.bootstrap, "seed": args.seed, "level": 0.95, "unit": "candidate caption"},
        "root": str(args.root),
        "version": __version__,
    }
    if args.per_sample:
        _write_per_sample(args.per_sample, bench, scores)
        if args.per_sample != "-":
            count = len(bench.judgments)
            console.info(f"Wrote {args.per_sample}: the scores and rating of each of the {count} judgments.")
    if args.json:
        print(json.dumps(report, indent=2, allow_nan=False))
    else:
        print_report(_format_text(report, results), args.per_sample, console)
    return 0


def _scores(
    bench: Flickr8kJudgments,
    metric: Any,
    image_features: Tensor,
    raw: Tensor,
    prefixed: Tensor,
    image_index: dict[str, int],
    caption_index: dict[str, int],
) -> dict[str, Tensor]:
    """Per item: MID's PMI, CLIP-S and RefCLIP-S (float64 ``(M,)`` each)."""
    from mid_metric.metrics import CLIPScore, RefCLIPScore

    images = image_features[[image_index[item.image] for item in bench.items]]
    rows = [caption_index[item.caption] for item in bench.items]
    dim = int(images.shape[1])
    clip_score = CLIPScore(feature=dim)
    clip_score.update(images, prefixed[rows])
    ref_clip_score = RefCLIPScore(feature=dim)
    references, mask = _padded_references(bench, caption_index, prefixed)
    ref_clip_score.update(images, prefixed[rows], references, mask)
    return {
        "mid": metric.pmi(images, raw[rows]),
        "clip_score": clip_score.per_sample(),
        "ref_clip_score": ref_clip_score.per_sample(),
    }
