"""The report of ``validation_loop.py``: medians per side from every subprocess, and the markdown section."""

from __future__ import annotations

import statistics
from typing import Any, Optional

from common import markdown_table, verdict_word
from validation_measures import Config

# Targets of issue 14.
FORWARD_TARGET = 1.5
SMALL_BATCH_TARGET = 0.85
CACHED_TARGET = 1.5
COLD_TARGET = 4.0
E2E_TARGET = 3.5
AGREEMENT_TARGET = 1e-6
PRECISION_TARGET = 5e-9


def _verdict(value: Optional[float], target: float, higher_is_better: bool) -> str:
    if value is None:
        return "n.a."
    return f"**{verdict_word(value >= target if higher_is_better else value <= target)}**"


def summarise(cfg: Config, runs: dict[str, list[dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    """Medians (and spreads) per side from all subprocesses of that side."""
    summary: dict[str, dict[str, Any]] = {}
    for side, results in runs.items():
        forward = [r["forward"] for r in results]
        staleness = [f["staleness"] for f in forward if f["staleness"] is not None]
        prior = [f["prior_staleness"] for f in forward if f["prior_staleness"] is not None]
        stream = {b: [v for r in results for v in r["stream"]["fractions"][str(b)]] for b in cfg.stream_batches}
        rates = {b: [v for r in results for v in r["stream"]["rates"][str(b)]] for b in cfg.stream_batches}
        compute = {
            kind: {key: [v for r in results for v in r["compute"][kind][key]] for key in r0}
            for kind, r0 in results[0]["compute"].items()
        }
        e2e: dict[str, dict[str, Any]] = {}
        for n in cfg.e2e_ns:
            records = [r["e2e"][str(n)] for r in results if str(n) in r.get("e2e", {})]
            e2e[str(n)] = {
                "speedup": statistics.median([rec["speedup"] for rec in records]),
                "speedups": [rec["speedup"] for rec in records],
                "ours_s": statistics.median([rec["ours_s"] for rec in records]),
                "baseline_s": statistics.median([rec["baseline_s"] for rec in records]),
                "lean_s": statistics.median([rec["lean_s"] for rec in records]),
                "lean_speedup": statistics.median([rec["lean_speedup"] for rec in records]),
                "relative_difference": max(rec["relative_difference"] for rec in records),
                "update_pairs": records[0]["update_pairs"],
                "reps": len(records),
            }
        precision = next(r["precision"] for r in results if "precision" in r)
        summary[side] = {
            "version": results[0]["version"],
            "has_update_pairs": results[0]["has_update_pairs"],
            "has_flush_staged": results[0]["has_flush_staged"],
            "digests": sorted({r.get("source_digest", "not recorded") for r in results}),
            "forward_ratio": statistics.median([f["ratio"] for f in forward]),
            "forward_ratios": [f["ratio"] for f in forward],
            "forward_ms": statistics.median([f["forward_ms"] for f in forward]),
            "forward_max_ms": max(f["forward_max_ms"] for f in forward),
            "update_ms": statistics.median([f["update_ms"] for f in forward]),
            "staleness": max(staleness) if staleness else None,
            "prior_staleness": max(prior) if prior else None,
            "returned_none": sum(f["returned_none"] for f in forward),
            "value_range": [min(f["value_range"][0] for f in forward), max(f["value_range"][1] for f in forward)],
            "fractions": {b: statistics.median(v) for b, v in stream.items()},
            "fraction_samples": {b: len(v) for b, v in stream.items()},
            "rates": {b: statistics.median(v) for b, v in rates.items()},
            "compute": {
                kind: {key: statistics.median(v) for key, v in values.items()} for kind, values in compute.items()
            },
            "compute_samples": {kind: len(values["ratios"]) for kind, values in compute.items()},
            "e2e": e2e,
            "precision": max(precision["differences"].values()),
            "precision_by_batch": precision["differences"],
            "two_pass": precision["two_pass"],
        }
    return summary


def _fmt(value: Optional[float], digits: int = 2) -> str:
    return "n.a." if value is None else f"{value:.{digits}f}"


def _g(value: Optional[float]) -> str:
    return "n.a." if value is None else f"{value:.3g}"


def _sci(value: Optional[float]) -> str:
    return "n.a." if value is None else f"{value:.1e}"


def markdown(cfg: Config, summary: dict[str, dict[str, Any]], context: dict[str, str]) -> str:
    """The section for benchmarks/RESULTS.md."""
    b, a = summary["before"], summary["after"]
    joint = 2 * cfg.dim
    n_main = cfg.e2e_ns[0]
    small = 32 if 32 in cfg.stream_batches else min(cfg.stream_batches)
    largest = max(cfg.stream_batches)
    lines = [
        f"## Issue 14: validation loop, small batches, cached compute() (D = {cfg.dim} per modality, J = {joint})",
        "",
        *markdown_table(["", ""], [[key, value] for key, value in context.items()]),
        "",
        "### Targets",
        "",
    ]
    targets = [
        [
            f"forward(real=False) / update(real=False) per step, batch {cfg.forward_batch}",
            f"<= {FORWARD_TARGET}",
            _fmt(b["forward_ratio"]),
            _fmt(a["forward_ratio"]),
            _verdict(a["forward_ratio"], FORWARD_TARGET, False),
        ],
        [
            "batch value staleness (max abs. difference to the exact mean PMI, nats)",
            "reported",
            _g(b["staleness"]),
            _g(a["staleness"]),
            "n.a.",
        ],
        [
            f"update throughput at batch {small} / batch {largest}",
            f">= {SMALL_BATCH_TARGET}",
            _fmt(b["fractions"][small]),
            _fmt(a["fractions"][small]),
            _verdict(a["fractions"][small], SMALL_BATCH_TARGET, True),
        ],
        [
            "compute(), cached reference, in Choleskys of J x J",
            f"<= {CACHED_TARGET}",
            _fmt(b["compute"]["cached"]["ratios"]),
            _fmt(a["compute"]["cached"]["ratios"]),
            _verdict(a["compute"]["cached"]["ratios"], CACHED_TARGET, False),
        ],
        [
            "compute(), cold, in Choleskys of J x J",
            f"<= {COLD_TARGET}",
            _fmt(b["compute"]["cold"]["ratios"]),
            _fmt(a["compute"]["cold"]["ratios"]),
            _verdict(a["compute"]["cold"]["ratios"], COLD_TARGET, False),
        ],
        [
            f"end to end vs the official code's operations, N = {n_main:,}, batch {cfg.e2e_batch}",
            f">= {E2E_TARGET}x",
            f"{b['e2e'][str(n_main)]['speedup']:.2f}x",
            f"{a['e2e'][str(n_main)]['speedup']:.2f}x",
            _verdict(a["e2e"][str(n_main)]["speedup"], E2E_TARGET, True),
        ],
        [
            f"same value as the official code's operations, N = {n_main:,} (relative)",
            f"<= {AGREEMENT_TARGET:.0e}",
            _sci(b["e2e"][str(n_main)]["relative_difference"]),
            _sci(a["e2e"][str(n_main)]["relative_difference"]),
            _verdict(a["e2e"][str(n_main)]["relative_difference"], AGREEMENT_TARGET, False),
        ],
        [
            "hard CLIP-like case, max abs. difference to two-pass",
            f"<= {PRECISION_TARGET:.0e}",
            _sci(b["precision"]),
            _sci(a["precision"]),
            _verdict(a["precision"], PRECISION_TARGET, False),
        ],
    ]
    lines += markdown_table(["target", "goal", "before", "after", "verdict (after)"], targets)
    if cfg.name == "tiny":
        lines += ["", "*Tiny sizes (smoke test): the figures do not measure the targets.*"]
    elif cfg.name == "quick":
        lines += [
            "",
            f"*Quick mode: one subprocess per side, end to end at N = {n_main:,}; run the full mode for"
            " the figures of record.*",
        ]

    lines += ["", f"### 1. forward in the Lightning pattern (batch {cfg.forward_batch})", ""]
    rows = []
    for side, s in (("before", b), ("after", a)):
        rows.append(
            [
                side,
                f"**{_fmt(s['forward_ratio'])}** ({', '.join(_fmt(r) for r in s['forward_ratios'])})",
                _fmt(s["forward_ms"]),
                _fmt(s["forward_max_ms"], 1),
                _fmt(s["update_ms"]),
                _g(s["staleness"]),
                _g(s["prior_staleness"]),
                str(s["returned_none"]),
            ]
        )
    lines += markdown_table(
        [
            "side",
            "forward / update, per process",
            "median forward ms",
            "slowest forward ms",
            "median update ms",
            "staleness",
            "staleness without the step's rows",
            "forwards that returned None",
        ],
        rows,
    )
    low, high = a["value_range"]
    lines += [
        "",
        f"Per step: `update(x, y, real=True)`, then `metric(x0, y, real=False)` (timed), against a second metric fed"
        f" the same rows with `update(x0, y, real=False)` (timed) in place of the forward; {cfg.forward_steps} steps"
        f" after {cfg.warmup_rows:,} reference rows, the two metrics alternating. The ratio is the summed forward"
        " time over the summed update time (so a refit on a schedule is amortised over the steps). *Staleness*: max"
        " over the steps of |forward's value - exact mean PMI of that batch under every reference row so far|"
        f" (computed here from independent float64 moments); the exact values range over [{low:.2f}, {high:.2f}]"
        f" nats over the steps ({cfg.warmup_rows:,} to {cfg.warmup_rows + cfg.forward_steps * cfg.forward_batch:,}"
        f" reference rows for J = {2 * cfg.dim}). In this pattern the batch's captions were added to the reference"
        " (with the real images) just before the forward, so the exact value scores them in-sample, which with few"
        " reference rows per dimension moves the PMI a lot; a reference fitted before that step scores them out of"
        " sample. *Without the step's rows*: the same maximum against the exact value under the"
        " reference as it was before the step's `update(x, y, real=True)`, i.e. the staleness due to the refit"
        " schedule alone.",
        "",
        "### 2. Small batches: update throughput as a fraction of batch " + f"{largest}",
        "",
    ]
    rows = []
    for batch in cfg.stream_batches:
        rows.append(
            [
                str(batch),
                f"{b['rates'][batch]:,.0f}",
                _fmt(b["fractions"][batch]),
                f"{a['rates'][batch]:,.0f}",
                f"**{_fmt(a['fractions'][batch])}**",
            ]
        )
    lines += markdown_table(["batch", "before rows/s", "before fraction", "after rows/s", "after fraction"], rows)
    lines += [
        "",
        f"{cfg.stream_rows:,} rows (`real=True`, argument checks on) fed to one fresh metric per batch size in"
        " batches of b, then one flush (`_flush_staged()` where it exists, else `state_dict()`), timed together; the"
        f" batch sizes take turns every {largest} rows, so that they see the same load; median of"
        f" {a['fraction_samples'][small]} rounds (one per subprocess) per side. Rows/s move with the load; the"
        " fractions are taken within a round.",
        "",
        "### 3. compute() in Choleskys of a J x J SPD float64 matrix",
        "",
    ]
    rows = []
    for kind in ("cold", "cached"):
        for side, s in (("before", b), ("after", a)):
            c = s["compute"][kind]
            rows.append(
                [
                    kind,
                    side,
                    f"**{_fmt(c['ratios'])}**",
                    _fmt(c["ratios_with_flush"]),
                    _fmt(c["compute_ms"], 1),
                    _fmt(c["flush_ms"], 1),
                    _fmt(c["cholesky_ms"], 1),
                ]
            )
    lines += markdown_table(
        ["reference", "side", "compute / Cholesky", "with the flush", "compute ms", "flush ms", "Cholesky ms"], rows
    )
    lines += [
        "",
        f"Reference {cfg.compute_reference_rows:,} rows, candidate sets of {cfg.compute_candidate_rows:,} rows."
        " *Cold*: after a real update of 8 rows, so the reference is refitted. *Cached*: `reset_real_features=False`,"
        " then per candidate set `reset()`, `update(candidates, real=False)`, `compute()`. Rows still staged are"
        " flushed with `_flush_staged()` (where it exists) before the timed `compute()`; *with the flush* adds that"
        " time. The Cholesky is `torch.linalg.cholesky` timed just before and just after each `compute()`;"
        f" median of {a['compute_samples']['cold']} samples per side and kind.",
        "",
        f"### 4. End to end against the official code's operations (D = {cfg.dim}, batch {cfg.e2e_batch}, seconds)",
        "",
    ]
    rows = []
    for n in cfg.e2e_ns:
        for side, s in (("before", b), ("after", a)):
            e = s["e2e"][str(n)]
            rows.append(
                [
                    f"{n:,}",
                    side,
                    "`update_pairs`" if e["update_pairs"] else "two `update`s",
                    _fmt(e["ours_s"]),
                    _fmt(e["baseline_s"]),
                    f"**{e['speedup']:.2f}x** ({', '.join(f'{v:.2f}' for v in e['speedups'])})",
                    _fmt(e["lean_s"]),
                    f"{e['lean_speedup']:.2f}x",
                    _sci(e["relative_difference"]),
                ]
            )
    lines += markdown_table(
        [
            "N",
            "side",
            "ours per batch",
            "ours",
            "official",
            "official / ours (per process)",
            "lean store-all",
            "lean / ours",
            "relative difference",
        ],
        rows,
    )
    lines += [
        "",
        "N reference pairs and N candidates; median over "
        + ", ".join(f"{a['e2e'][str(n)]['reps']} repetitions at N = {n:,}" for n in cfg.e2e_ns)
        + " per side, each in its own subprocess with ours and the two baselines (`benchmarks/baseline.py`) taking"
        " turns inside it, before and after subprocesses alternated. *Official*: `OfficialMID`, the official"
        " code's operations step for step (float64 copies at update, five centred covariance products, full SVDs"
        " for the log-determinants, `inverse(A) @ B` for the traces); the target is measured against it. *Lean*:"
        " `StoreAllMID`, the same estimator with singular values only (it was the only baseline up to 0.3.0)."
        " The relative difference is against the official one, the largest over the repetitions.",
        "",
        "### 5. Precision on the hard CLIP-like features",
        "",
    ]
    rows = [
        [f"batch {batch}", _sci(b["precision_by_batch"][batch]), _sci(a["precision_by_batch"][batch])]
        for batch in b["precision_by_batch"]
    ]
    lines += markdown_table(["batch size", "before", "after"], rows)
    lines += [
        "",
        f"`ClipLikeDistribution({cfg.precision_dim}, {cfg.precision_dim}, seed=3)` of `tests/reference_impl.py`"
        f" (mean norm 0.99, eigenvalues down to 1e-9, float32): {cfg.precision_rows[0]:,} reference pairs,"
        f" {cfg.precision_rows[1]:,} candidates (`rho_scale=0.95`); |MID - two-pass float64| (two-pass:"
        f" {b['two_pass']:.6f}).",
    ]
    return "\n".join(lines) + "\n"
