"""``mid-metric score``: MID and the other metrics of candidate pairs against a reference, as text, JSON and CSV."""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import math
from typing import Any, Optional, Union

import torch
from torch import Tensor

from mid_metric._version import __version__
from mid_metric.cli.messages import library_errors
from mid_metric.cli.parser import CommandError
from mid_metric.cli.quality import QUALITY_METRICS, check_quality_options, quality_lines, quality_scores
from mid_metric.cli.session import (
    Console,
    Features,
    Session,
    check_device,
    check_reference_count,
    check_reference_file,
    check_table_output,
    input_files,
    load_reference,
    matches_recorded_model,
    new_metric,
    print_report,
    read_source,
    recorded_identity,
    refuse_overwriting_inputs,
)
from mid_metric.io.atomic import atomic_text_output
from mid_metric.io.pairs import (
    FeaturePairs,
    PairsTable,
)

#: How far the root-mean-square norm of features may be from 1 for them to count as L2-normalised.
NORM_TOLERANCE = 1e-3


def _estimator(choice: Optional[str]) -> Union[bool, str]:
    """The metric's ``bias_correction`` for ``--bias-correction`` (absent, ``gaussian`` or ``jackknife``)."""
    return {None: False, "gaussian": True, "jackknife": "jackknife"}[choice]


def _scalar(value: Any) -> Any:
    if isinstance(value, Tensor):
        return value.item()
    return value


def _result_fields(result: Any) -> dict[str, Any]:
    """All fields of a MIDResult as JSON-ready scalars (new fields such as a confidence interval included)."""
    if dataclasses.is_dataclass(result):
        return {field.name: _scalar(getattr(result, field.name)) for field in dataclasses.fields(result)}
    return {name: _scalar(getattr(result, name)) for name in ("mid", "mutual_information", "distance")}


def _write_per_sample(path: str, candidates: Features, columns: dict[str, Tensor]) -> None:
    """Write one row per candidate pair (its row, image and caption, then one column per metric); ``-``: stdout."""
    with atomic_text_output(path) as handle:
        writer = csv.writer(handle)
        writer.writerow(["row", "image", "caption", *columns])
        values = list(zip(*(column.tolist() for column in columns.values())))
        if candidates.table is not None:
            for pair, row_values in zip(candidates.table.pairs, values):
                writer.writerow([pair.row, pair.image, pair.caption, *map(repr, row_values)])
        else:
            for row, row_values in enumerate(values, start=1):
                writer.writerow([row, "", "", *map(repr, row_values)])


#: Per metric of ``--metrics`` (MID apart): its class name in :mod:`mid_metric.metrics`, its label, and its column in
#: the per-sample CSV.
_COMPANIONS = {
    "clip-score": ("CLIPScore", "CLIP-S", "clip_score"),
    "r-precision": ("CLIPRPrecision", "CLIP-R-Precision", "r_precision"),
    "infonce": ("InfoNCE", "InfoNCE", "infonce"),
}


def _companion_scores(
    names: tuple[str, ...], candidates: Features, dims: tuple[int, int], device: torch.device
) -> dict[str, Any]:
    """Compute each requested companion metric on the candidates' features: ``{name: (value, per-sample values)}``.

    The metrics run on ``device``, the model's (``--device``): R-precision and InfoNCE score every pair against
    every caption, a matrix product that a GPU computes far faster.
    """
    from mid_metric import metrics

    scores = {}
    for name in names:
        if name == "mid" or name in QUALITY_METRICS:
            continue
        options = {} if name == "clip-score" else {"max_samples": max(len(candidates), 1)}  # all of them, no cap
        metric = getattr(metrics, _COMPANIONS[name][0])(feature=dims, **options).to(device)
        metric.update(candidates.images, candidates.texts)
        scores[name] = (float(metric.compute()), metric.per_sample())
    return scores


def _format_text(report: dict[str, Any]) -> str:
    """The report as text: MID with its terms and interval, then one line per other metric, then the run."""
    lines = _format_mid(report) if "mid" in report else []
    for name, entry in report["metrics"].items():
        if name in QUALITY_METRICS:
            lines.extend(quality_lines(name, entry))
        elif name != "mid":
            lines.append(f"{_COMPANIONS[name][1]}: {entry['value']:.6f}  (higher is better)")
    model = report["model"] or "(precomputed features)"
    if report.get("reference_model") != report["model"]:
        model += f"; reference model {report.get('reference_model') or '(precomputed features)'}"
    lines.append(
        f"  {report['num_candidates']} candidate pairs, {report['num_reference']} reference pairs;"
        f" model {model}; eps {report['eps']:g}"
    )
    return "\n".join(lines)


def _format_mid(report: dict[str, Any]) -> list[str]:
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
    kind = "jackknife " if report.get("estimator") == "jackknife" else ""
    estimator = (
        f"bias-corrected {kind}estimator (--bias-correction; not comparable with published MID)"
        if corrected
        else "the paper's estimator (not bias-corrected)"
    )
    lines.append(f"  estimator: {estimator}")
    return lines


def _rms_norm(features: Tensor) -> float:
    """Root-mean-square L2 norm of feature rows, ``sqrt(mean |v|^2)``, in float64."""
    return math.sqrt(float(features.double().square().sum(dim=1).mean()))


def _warn_unnormalised(
    console: Console, reference: tuple[Optional[float], Optional[float]], candidates: Features, where: str
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


def _check_finite(report: dict[str, Any], eps_allowed: bool) -> None:
    """Fail with one line when a number of the result is NaN or infinite (JSON has no such numbers).

    The advice to pass ``--eps`` is left out of bias-corrected runs, which need ``--eps 0``.
    """
    bad = [f"{key} = {value}" for key, value in report.items() if isinstance(value, float) and not math.isfinite(value)]
    if bad:
        advice = "check them, or pass --eps" if eps_allowed else "check them"
        raise CommandError(
            f"the result is not a finite number ({', '.join(bad)}); nothing is printed or written. The features are"
            f" probably degenerate (constant, duplicated or far from the reference); {advice}."
        )


def _check_options(args: argparse.Namespace) -> None:
    """Refuse, before any work, options that do not go together, naming only options that exist."""
    check_quality_options(args)
    if args.bias_correction and args.eps and "mid" in args.metrics:
        raise CommandError(
            f"--bias-correction needs --eps 0 (its corrections are derived for unregularised covariances), got --eps"
            f" {args.eps:g}: drop --eps, or drop --bias-correction."
        )
    jackknifes_fd = args.bias_correction == "jackknife" and "fd" in args.metrics
    if args.bias_correction and "mid" not in args.metrics and not jackknifes_fd:
        if "fd" in args.metrics:
            raise CommandError(
                "--bias-correction gaussian has no form for fd, whose bias-corrected value is --bias-correction"
                " jackknife's: pass that, or drop --bias-correction."
            )
        raise CommandError(
            f"--bias-correction changes none of --metrics {','.join(args.metrics)}: drop it, or see --help for the"
            " metrics it changes."
        )
    if args.bias_correction != "jackknife":
        for option, value in (("--jackknife-key", args.jackknife_key), ("--jackknife-groups", args.jackknife_groups)):
            if value is not None:
                raise CommandError(f"{option} applies to --bias-correction jackknife only; drop it, or add that.")
        return
    if args.reference is not None:
        raise CommandError(
            "--bias-correction jackknife needs the reference pairs themselves (--reference-pairs): a reference"
            f" statistics file such as {args.reference} holds no jackknife groups."
        )


def _metric_options(args: argparse.Namespace) -> dict[str, Any]:
    """The jackknife's options of MID and fd (``jackknife_key``, ``jackknife_groups``) from the command line."""
    if args.bias_correction != "jackknife":
        return {}
    # Captioning (--generated-caption-column): the candidates are the reference's images with generated captions,
    # so a pair's image decides its group; text-to-image candidates share the reference's captions.
    key = args.jackknife_key or ("image" if args.generated_caption_column else "text")
    options: dict[str, Any] = {"jackknife_key": key}
    if args.jackknife_groups is not None:
        options["jackknife_groups"] = args.jackknife_groups
    return options


def _check_model_sizes(session: Session, source: Any, dims: tuple[int, int], reference_label: str) -> None:
    """Fail before encoding when the model for ``source`` gives features of other sizes than the reference's."""
    if isinstance(source, FeaturePairs):
        return
    extractor = session.extractor(source.source)
    if (extractor.image_dim, extractor.text_dim) != dims:
        raise CommandError(
            f"Model {session.model!r} gives features of sizes (image_dim, text_dim) = ({extractor.image_dim},"
            f" {extractor.text_dim}), but the reference {reference_label} has {dims}."
        )


def run_score(args: argparse.Namespace) -> int:
    """``mid-metric score PAIRS``: score candidate pairs against a reference; return the exit status."""
    console = Console(args.quiet)
    check_device(args.device)
    _check_options(args)
    with_mid = "mid" in args.metrics
    eps_allowed = not args.bias_correction  # the corrections need --eps 0: never advise another
    caption_column = args.generated_caption_column or args.caption_column
    caption_option = "--generated-caption-column" if args.generated_caption_column else "--caption-column"
    candidates_source = read_source(args.pairs, args, caption_column, caption_option)
    check_table_output("--per-sample", args.per_sample, args.json)  # before any work
    reference_source = None
    if args.reference is not None:
        check_reference_file(args.reference)
    else:
        reference_source = read_source(args.reference_pairs, args, args.caption_column, "--caption-column")
    refuse_overwriting_inputs(
        {"--per-sample": args.per_sample},
        input_files(args, [candidates_source, reference_source], [args.reference]),
    )
    requested = recorded_identity(args.model)

    if args.reference is not None:
        with library_errors(eps_allowed):
            metric, metadata = load_reference(args.reference, args.eps, _estimator(args.bias_correction))
        image_dim, text_dim, eps = metric.image_dim, metric.text_dim, metric.eps
        recorded = metadata["feature_extractor"]
        if requested and recorded and not args.no_check_feature_extractor:
            if not matches_recorded_model(args.model, requested, recorded):
                raise CommandError(
                    f"{args.reference} was built with model {recorded!r}, but --model {args.model!r} is"
                    f" {requested!r}; scores from different models are not comparable. Build a reference with"
                    " this model, drop --model, or pass --no-check-feature-extractor if both denote the same model."
                )
        if with_mid:
            check_reference_count(
                metadata["num_samples"], image_dim, text_dim, eps, str(args.reference), args.bias_correction
            )
        num_reference = int(metadata["num_samples"])
        session = Session(args, console, args.model or recorded or None)
        run_model = requested or recorded or None
        reference_model = recorded or None
        reference_norms = (metadata.get("image_rms_norm"), metadata.get("text_rms_norm"))
        reference_label = args.reference
        reference = None
    else:
        eps = 0.0 if args.eps is None else args.eps
        session = Session(args, console, args.model)
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
            f" {model!r}; scores of features from two models are meaningless. If the features of {unknown} were"
            f" computed with {model!r} (L2-normalised, as mid-metric does), pass --features-from-model."
        )

    if reference_source is not None:
        reference = session.features(reference_source)
        image_dim, text_dim = reference.images.shape[1], reference.texts.shape[1]
        num_reference = len(reference)
        if with_mid:
            check_reference_count(len(reference), image_dim, text_dim, eps, str(reference.source), args.bias_correction)
            with library_errors(eps_allowed):
                metric = new_metric(image_dim, text_dim, eps, _estimator(args.bias_correction), **_metric_options(args))
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
    report: dict[str, Any] = {}
    if with_mid:
        if len(candidates) < 2:
            raise CommandError(
                f"{candidates.source} holds {len(candidates)} pair; MID needs at least 2 candidate pairs."
            )
        _warn_unnormalised(console, reference_norms, candidates, str(reference_label))
        with library_errors(eps_allowed):
            metric.update(candidates.images, candidates.texts, real=False)
            result = metric.compute_with_ci()  # MID, its terms, a standard error and a 95% confidence interval
        report.update(_result_fields(result))
    else:  # the counts, for the report
        report.update({"num_reference": num_reference, "num_candidates": len(candidates)})
    with library_errors():
        companions = _companion_scores(args.metrics, candidates, (image_dim, text_dim), torch.device(args.device))
        quality = quality_scores(
            args.metrics,
            (image_dim, text_dim),
            None if reference is None else (reference.images, reference.texts, str(reference.source)),
            args.reference,
            (candidates.images, candidates.texts, str(candidates.source)),
            {"bias_correction": args.bias_correction, **_metric_options(args)},
            torch.device(args.device),
        )
    report["metrics"] = {
        name: {"value": report["mid"]} if name == "mid" else quality.get(name) or {"value": companions[name][0]}
        for name in args.metrics
    }
    report.update(
        {
            "model": candidates_model or reference_model,
            "reference_model": reference_model,
            "image_dim": image_dim,
            "text_dim": text_dim,
            "eps": eps,
            "estimator": {None: "paper", "gaussian": "gaussian", "jackknife": "jackknife"}[args.bias_correction],
            "candidates": str(args.pairs),
            "reference": str(reference_label),
            "version": __version__,
        }
    )
    _check_finite(report, eps_allowed)
    _check_finite({name: entry["value"] for name, entry in report["metrics"].items()}, eps_allowed)
    if args.per_sample:
        columns: dict[str, Tensor] = {}
        if with_mid:
            with library_errors(eps_allowed):
                columns["pmi"] = metric.pmi(candidates.images, candidates.texts)
        for name, (_, values) in companions.items():
            columns[_COMPANIONS[name][2]] = values
        for column, values in columns.items():
            if not bool(torch.isfinite(values).all()):
                row = int((~torch.isfinite(values)).nonzero()[0]) + 1
                raise CommandError(
                    f"the {column} of candidate row {row} is not finite; {args.per_sample} is not written."
                )
        _write_per_sample(args.per_sample, candidates, columns)
        if args.per_sample != "-":
            what = ", ".join(columns)
            console.info(f"Wrote {args.per_sample}: {what} of each of the {len(candidates)} candidate pairs.")
    if args.json:
        print(json.dumps(report, indent=2, allow_nan=False))
    else:
        print_report(_format_text(report), args.per_sample, console)
    return 0
