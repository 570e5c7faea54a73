"""The image-quality metrics of ``mid-metric score --metrics``: ``fd`` (Fréchet distance) and ``cmmd`` (CMMD).

Both compare the real images (the reference) with the candidates' images, from the features of the run's one
pass; neither looks at the captions, except the jackknife of ``fd``, which groups the images as MID's does. They
are set-level: one value for the whole candidate set, no per-sample column.
"""

from __future__ import annotations

import argparse
from typing import Any, Optional

import torch
from torch import Tensor

from mid_metric.cli.parser import CommandError

__all__ = ["QUALITY_METRICS", "check_quality_options", "quality_scores", "quality_lines"]

#: The set-level quality metrics of ``--metrics``, which have no per-sample column.
QUALITY_METRICS = ("fd", "cmmd")

#: The level of the jackknife interval of ``fd``, as MID's.
CI_LEVEL = 0.95


def check_quality_options(args: argparse.Namespace) -> None:
    """Refuse, before any work, a quality metric that the run's inputs cannot give.

    Raises:
        CommandError: If ``cmmd`` is asked for with a reference statistics file (it needs the real images'
            features), or ``--per-sample`` with no metric that has a per-sample column.
    """
    if "cmmd" in args.metrics and args.reference is not None:
        raise CommandError(
            f"cmmd needs the real images' features, which a reference statistics file such as {args.reference} does"
            " not hold: pass the real pairs (or their features file) with --reference-pairs instead of --reference."
        )
    if args.per_sample and all(name in QUALITY_METRICS for name in args.metrics):
        raise CommandError(
            f"--per-sample writes one value per candidate pair, but --metrics {','.join(args.metrics)} gives one value"
            " for the whole set (no per-sample column): drop --per-sample, or add a per-sample metric to --metrics."
        )


def _jackknife_key(mid_options: dict[str, Any]) -> str:
    """The group key of fd's jackknife from MID's: its images are grouped by caption only when MID's pairs are."""
    return "text" if mid_options.get("jackknife_key") == "text" else "image"


def _check_count(count: int, what: str, source: str) -> None:
    if count < 2:
        raise CommandError(f"{source} holds {count} {what}; fd needs at least 2 {what} (a covariance).")


def quality_scores(
    names: tuple[str, ...],
    dims: tuple[int, int],
    reference: Optional[tuple[Tensor, Tensor, str]],
    reference_file: Optional[str],
    candidates: tuple[Tensor, Tensor, str],
    mid_options: dict[str, Any],
    device: torch.device,
) -> dict[str, dict[str, Any]]:
    """Compute each requested quality metric: ``{name: its JSON entry}`` (``value`` first).

    Args:
        names: The run's ``--metrics``; those of :data:`QUALITY_METRICS` are computed.
        dims: ``(image_dim, text_dim)`` of the run's features.
        reference: The real pairs' image and text features and their source, or ``None`` with ``reference_file``.
        reference_file: A reference statistics file (its image moments are fd's real images), or ``None``.
        candidates: The candidates' image and text features and their source.
        mid_options: MID's estimator options (``bias_correction``, ``jackknife_key``, ``jackknife_groups``): fd is
            jackknifed when MID's estimator is the jackknife, with the same number of groups.
        device: Where the metrics run (``--device``, the model's): CMMD's kernel sums are much faster on a GPU.

    Raises:
        CommandError: If a group holds too few images for fd.
        ValueError: From the metrics (the caller turns it into a command-line error).
    """
    from mid_metric.metrics import CMMD, FrechetDistance

    entries: dict[str, dict[str, Any]] = {}
    images, texts, source = candidates
    images, texts = images.to(device), texts.to(device)
    if reference is not None:
        reference = (reference[0].to(device), reference[1].to(device), reference[2])
    if "fd" in names:
        _check_count(images.shape[0], "candidate images", source)
        options: dict[str, Any] = {}
        if mid_options.get("bias_correction") == "jackknife":
            options = {"bias_correction": "jackknife", "jackknife_key": _jackknife_key(mid_options)}
            if "jackknife_groups" in mid_options:
                options["jackknife_groups"] = mid_options["jackknife_groups"]
        metric = FrechetDistance(feature=dims, check_feature_extractor=False, **options).to(device)
        if reference_file is not None:
            metric.load_reference(reference_file)  # onto the metric's device
        if reference is not None:
            _check_count(reference[0].shape[0], "reference images", reference[2])
            metric.update(reference[0], reference[1], real=True)
        metric.update(images, texts, real=False)
        result = metric.compute_with_ci(CI_LEVEL) if metric.uses_jackknife else metric.compute_result()
        entries["fd"] = {
            "value": float(result.value),
            "plug_in": float(result.plug_in),
            "estimator": "jackknife" if result.bias_corrected else "plug-in",
            "num_real": result.num_real,
            "num_generated": result.num_generated,
            "standard_error": None if result.standard_error is None else float(result.standard_error),
            "ci_low": None if result.ci_low is None else float(result.ci_low),
            "ci_high": None if result.ci_high is None else float(result.ci_high),
            "ci_level": result.ci_level,
            "num_groups": result.num_groups,
        }
    if "cmmd" in names and reference is not None:  # check_quality_options refused it with a statistics file
        cap = max(reference[0].shape[0], images.shape[0], 1)  # all of them: the features are in memory already
        metric = CMMD(feature=dims[0], max_samples=cap).to(device)
        metric.update(reference[0], real=True)
        metric.update(images, real=False)
        entries["cmmd"] = {
            "value": float(metric.compute()),
            "sigma": metric.sigma,
            "scale": metric.scale,
            "num_real": int(reference[0].shape[0]),
            "num_generated": int(images.shape[0]),
        }
    return entries


def quality_lines(name: str, entry: dict[str, Any]) -> list[str]:
    """The text report's lines of one quality metric.

    Example:
        >>> quality_lines("cmmd", {"value": 0.25, "sigma": 10.0, "scale": 1000.0})
        ['CMMD: 0.250000  (lower is better; sigma 10, scale 1000, L2-normalised image features)']
    """
    if name == "cmmd":
        return [
            f"CMMD: {entry['value']:.6f}  (lower is better; sigma {entry['sigma']:g}, scale {entry['scale']:g},"
            " L2-normalised image features)"
        ]
    if entry["estimator"] != "jackknife":
        return [
            f"FD: {entry['value']:.6f}  (lower is better; plug-in value, compare only at the same numbers of images)"
        ]
    lines = [f"FD (bias-corrected jackknife): {entry['value']:.6f}  (lower is better)"]
    level = entry.get("ci_level")
    if level is not None and entry.get("ci_low") is not None:
        lines.append(f"  {level:.0%} confidence interval: [{entry['ci_low']:.6f}, {entry['ci_high']:.6f}]")
    lines.append(f"  plug-in value: {entry['plug_in']:.6f}  ({entry['num_groups']} jackknife groups)")
    return lines
