"""``mid-metric reference``: reference statistics from real (image, caption) pairs."""

from __future__ import annotations

import argparse

from mid_metric.cli.messages import library_errors
from mid_metric.cli.parser import PRECOMPUTED
from mid_metric.cli.session import (
    Console,
    Session,
    check_device,
    check_output,
    check_reference_count,
    input_files,
    new_metric,
    read_source,
    recorded_identity,
    refuse_overwriting_inputs,
    save_reference,
)
from mid_metric.io.pairs import (
    FeaturePairs,
)


def run_reference(args: argparse.Namespace) -> int:
    """``mid-metric reference PAIRS -o OUT``: fit and save the reference statistics; return the exit status."""
    console = Console(args.quiet)
    check_device(args.device)
    eps = 0.0 if args.eps is None else args.eps
    source = read_source(args.pairs, args, args.caption_column, "--caption-column")
    check_output("--output", args.output)  # a binary file: "-" is no standard output here
    refuse_overwriting_inputs({"--output": args.output}, input_files(args, [source], []))
    session = Session(args, console, args.model)
    if isinstance(source, FeaturePairs):
        label = recorded_identity(args.model) or ""  # --model states where the features come from
    else:
        label = session.extractor(source.source).name  # a missing --model is reported before anything is encoded
    features = session.features(source)
    image_dim, text_dim = features.images.shape[1], features.texts.shape[1]
    check_reference_count(len(features), image_dim, text_dim, eps, str(features.source))
    from mid_metric.functional import reference_from_moments

    with library_errors(prefix=f"{features.source}: "):
        metric = new_metric(image_dim, text_dim, eps)
        metric.update(features.images, features.texts, real=True)
        reference_from_moments(metric.metric_state["reference_moments"], image_dim, eps)  # fails now if singular
    save_reference(args.output, metric, label)
    console.info(
        f"Wrote {args.output}: {len(features)} reference pairs, image_dim {image_dim}, text_dim {text_dim},"
        f" model {label or PRECOMPUTED}, eps {eps:g}."
    )
    return 0
