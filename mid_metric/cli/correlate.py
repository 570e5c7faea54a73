"""``mid-metric correlate``: Kendall's tau of per-sample scores against human judgments, joined on a key."""

from __future__ import annotations

import argparse
import json
from typing import Any

from mid_metric._version import __version__
from mid_metric.functional.correlation import KendallResult, correlate, require_scipy
from mid_metric.io.judgments import join_on_key, read_table


def format_tau(value: Any, width: int = 8) -> str:
    """A tau (or interval end) with 4 decimals, ``n/a`` when undefined.

    Example:
        >>> format_tau(0.54912), format_tau(None)
        ('  0.5491', '     n/a')
    """
    return f"{value:{width}.4f}" if value is not None and value == value else "n/a".rjust(width)


def correlation_table(results: dict[str, KendallResult], extra: dict[str, str]) -> list[str]:
    r"""Text lines: a header, then one row per metric with tau, its interval, the p-value and any extra column.

    Example:
        >>> result = KendallResult(0.5, 0.01, 40, "b", 0.3, 0.7, 0.95, 1000, 0, 40)
        >>> print("\n".join(correlation_table({"pmi": result}, {})))
        column       tau   95% interval            p-value
        pmi       0.5000   [  0.3000,   0.7000]   1.00e-02
    """
    width = max([6, *(len(name) for name in results)])
    header = f"{'column'.ljust(width)}  {'tau':>8}   {'95% interval':<20}  {'p-value':>9}"
    if extra:
        header += "  paper"
    lines = [header]
    for name, result in results.items():
        interval = (
            f"[{format_tau(result.ci_low)}, {format_tau(result.ci_high)}]" if result.ci_low is not None else "none"
        )
        p_value = f"{result.p_value:9.2e}" if result.p_value == result.p_value else "n/a".rjust(9)
        line = f"{name.ljust(width)}  {format_tau(result.tau)}   {interval:<20}  {p_value}"
        if extra:
            line += f"  {extra.get(name, '')}"
        lines.append(line.rstrip())
    return lines


def result_fields(result: KendallResult) -> dict[str, Any]:
    """The JSON fields of one correlation: ``tau``, ``p_value``, ``n``, ``ci_low``, ``ci_high`` (``None`` if undefined).

    Example:
        >>> result_fields(KendallResult(0.5, 0.01, 40, "b", 0.3, 0.7, 0.95, 1000, 0, 40))
        {'tau': 0.5, 'p_value': 0.01, 'n': 40, 'ci_low': 0.3, 'ci_high': 0.7}
    """
    fields = result.as_dict()
    return {key: fields[key] for key in ("tau", "p_value", "n", "ci_low", "ci_high")}


def run_correlate(args: argparse.Namespace) -> int:
    """``mid-metric correlate SCORES JUDGMENTS``: print Kendall's tau of each score column; return the exit status.

    Both tables are read by the rules of :mod:`~mid_metric.io.tables`. With ``--json``, the report always holds
    ``columns`` (per score column: ``tau``, ``p_value``, ``n``, ``ci_low``, ``ci_high``) and the run's fields
    (``variant``, ``n``, ``num_keys``, the skipped and missing counts, ``bootstrap``, the files, ``version``). With
    one ``--score-column``, that column's ``tau``, ``p_value``, ``ci_low``, ``ci_high``, ``level``, ``resamples``,
    ``seed`` and ``items`` are also at the top level, with ``score_column``; with several, they are only under
    ``columns``.
    """
    require_scipy()
    columns = list(dict.fromkeys(args.score_column))
    scores = read_table(args.scores, "Scores")
    judgments = read_table(args.judgments, "Judgments")
    joined = join_on_key(scores, judgments, args.key, columns, args.rating_column, args.allow_missing)
    results = {
        column: correlate(
            joined.scores[column], joined.ratings, args.variant, args.bootstrap, args.seed, groups=joined.keys
        )
        for column in columns
    }
    report = {
        "variant": args.variant,
        "n": len(joined),
        "num_keys": len(set(joined.keys)),
        "skipped_nan_ratings": joined.skipped_nan,
        "missing_scores": len(joined.missing_scores),
        "missing_judgments": len(joined.missing_judgments),
        "bootstrap": {"resamples": args.bootstrap, "seed": args.seed, "level": 0.95, "unit": f"key ({args.key})"},
        "scores": str(args.scores),
        "judgments": str(args.judgments),
        "version": __version__,
    }
    if len(columns) == 1:  # the result's fields at the top level, as --json promises
        report.update({key: value for key, value in results[columns[0]].as_dict().items() if key != "variant"})
        report["score_column"] = columns[0]
    report["columns"] = {column: result_fields(result) for column, result in results.items()}
    if args.json:
        print(json.dumps(report, indent=2, allow_nan=False))
        return 0
    lines = [
        f"Kendall tau-{args.variant} of {len(joined)} judgments ({report['num_keys']} keys) against column"
        f" {args.rating_column!r} of {args.judgments}"
    ]
    lines.extend(correlation_table(results, {}))
    notes = []
    if joined.skipped_nan:
        notes.append(f"{joined.skipped_nan} judgment(s) with an empty or NaN rating skipped")
    if joined.missing_scores or joined.missing_judgments:
        notes.append(
            f"--allow-missing: {len(joined.missing_scores)} key(s) without scores and {len(joined.missing_judgments)}"
            " score row(s) without judgments left out"
        )
    interval = f"{args.bootstrap} bootstrap resamples of keys, seed {args.seed}" if args.bootstrap else "no bootstrap"
    notes.append(interval)
    lines.append("  " + "; ".join(notes))
    print("\n".join(lines))
    return 0
