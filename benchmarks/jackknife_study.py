"""The study of ``bias_correction="jackknife"`` (issue 15): ``python benchmarks/bias_study.py jackknife``.

Each part (see :func:`jackknife_main`) measures the paper's MID, the Gaussian-corrected one (``True``) and the
grouped jackknife over repetitions: heavy-tailed pairs with a known population value (``heavy-*``), the number of
groups K and the weights (``groups``), the CLIP-like features of the issue-7 study (``clip``), and the cost of the
jackknife at D = 768 (``cost``). ``jackknife_report.py`` turns the parts into the ``jackknife`` block of
``benchmarks/RESULTS.md`` and ``benchmarks/jackknife.png``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
import zlib
from pathlib import Path
from typing import Optional

import torch
from common import HERE, RESULTS, ClipLikeModel, CorrelatedPairs, add_size_flags, median_seconds, write_block
from jackknife_report import jackknife_markdown, jackknife_plot

from mid_metric import jackknife, moments, uncertainty
from mid_metric.functional import divergence_from_moments, reference_from_moments
from mid_metric.result import MIDResult

F64 = torch.float64
HEAVY_SIZES = [300, 500, 1000, 2000, 5000, 10000]
HEAVY_REPS = {300: 400, 500: 400, 1000: 300, 2000: 250, 5000: 250, 10000: 250}
HEAVY_DOFS = {"gauss": None, "t8": 8.0, "t6": 6.0, "t5": 5.0}
PROTOCOLS = ("independent", "shared captions", "shared captions, weaker generator")
# The weaker generator's MID* is 3.4 times smaller at D = 16 + 16, so its relative errors are noisier: more repetitions.
REPS_FACTOR = {"shared captions, weaker generator": 3}
CLIP_SIZES = [5000, 10000, 20000, 40000]
CLIP_REPS = {5000: 6, 10000: 4, 20000: 3, 40000: 2}
JACKKNIFE_PARTS = ("heavy-gauss", "heavy-t8", "heavy-t6", "heavy-t5", "heavy-t6-d64", "groups", "clip", "cost")


def _draw(model: CorrelatedPairs, protocol: str, n: int, g: torch.Generator):
    """Reference rows, candidate rows (joint, float64) and the population MID of the protocol."""
    x, y, scale = model.sample(n, g)
    if protocol == "independent":
        xc, yc, _ = model.sample(n, g)
        truth = model.truth()
    elif protocol == "shared captions":
        xc, yc, truth = model.images_for(y, scale, g), y, model.truth()
    else:
        xc, yc, truth = model.images_for(y, scale, g, 0.8), y, model.truth(0.8)
    return moments.joint_rows(x, y), moments.joint_rows(xc, yc), truth


def three_estimates(
    ref_rows: torch.Tensor, cand_rows: torch.Tensor, dim: int, groups: int = 10, level: Optional[float] = None
) -> tuple[float, MIDResult, MIDResult]:
    """The paper's MID, the Gaussian-corrected one and the jackknife's, from the same ``groups`` group states.

    With ``level``, both corrected results carry their interval (the Gaussian delta method, and t_{K-1} times the
    jackknife standard error).
    """
    ref_groups, cand_groups = (jackknife.group_moments(r, dim, groups) for r in (ref_rows, cand_rows))
    ref_packed, cand_packed = jackknife.merge_groups(ref_groups), jackknife.merge_groups(cand_groups)
    reference = reference_from_moments(ref_packed, dim)
    paper = float(divergence_from_moments(reference, cand_packed).mid)
    corrected = divergence_from_moments(reference, cand_packed, bias_correction=True)
    if level is None:
        return paper, corrected, jackknife.jackknife_divergence(ref_groups, cand_groups, dim)
    corrected = uncertainty.with_confidence_interval(corrected, reference, cand_packed, level)
    return paper, corrected, jackknife.jackknife_divergence(ref_groups, cand_groups, dim, level=level)


def _summary(values: list[float], truth: float) -> dict:
    t = torch.tensor(values, dtype=F64)
    return {
        "mean": float(t.mean()),
        "sem": float(t.std()) / math.sqrt(len(values)),
        "sd": float(t.std()),
        "error": float(t.mean()) / truth - 1,
        "error_sem": float(t.std()) / math.sqrt(len(values)) / abs(truth),
    }


def heavy_sweep(name: str, dim: int, sizes: list[int], reps_at: dict[int, int], protocols, groups: int = 10) -> list:
    """Paper's, Gaussian-corrected and jackknifed MID, with interval coverage, over repetitions at each N."""
    model = CorrelatedPairs(dim, HEAVY_DOFS[name])
    rows = []
    for protocol in protocols:
        for n in sizes:
            g = torch.Generator().manual_seed(zlib.crc32(f"{name} {dim} {protocol} {n}".encode()))
            paper, gauss, jack, jack_se = [], [], [], []
            jack_hits = gauss_hits = 0
            reps = reps_at[n] * REPS_FACTOR.get(protocol, 1)
            for _ in range(reps):
                ref_rows, cand_rows, truth = _draw(model, protocol, n, g)
                paper_mid, corrected, result = three_estimates(ref_rows, cand_rows, dim, groups, level=0.95)
                paper.append(paper_mid)
                gauss.append(float(corrected.mid))
                gauss_hits += float(corrected.ci_low) <= truth <= float(corrected.ci_high)
                jack.append(float(result.mid))
                jack_se.append(float(result.standard_error))
                jack_hits += float(result.ci_low) <= truth <= float(result.ci_high)
            row = {
                "model": name,
                "dim": dim,
                "protocol": protocol,
                "n": n,
                "reps": reps,
                "truth": truth,
                "paper": _summary(paper, truth),
                "gauss": _summary(gauss, truth),
                "jack": _summary(jack, truth),
                "jack_mean_se": sum(jack_se) / reps,
                "jack_coverage": jack_hits / reps,
                "gauss_coverage": gauss_hits / reps,
            }
            rows.append(row)
            print(
                f"{name} D={dim}+{dim} {protocol:34s} N={n:6d} reps={reps}:"
                f" error paper {100 * row['paper']['error']:+6.2f}%"
                f" True {100 * row['gauss']['error']:+6.2f}% jackknife {100 * row['jack']['error']:+6.2f}%"
                f" (+-{100 * row['jack']['error_sem']:.2f}); coverage jackknife {100 * row['jack_coverage']:.1f}%"
                f" True {100 * row['gauss_coverage']:.1f}%",
                flush=True,
            )
    return rows


def groups_sweep(sizes: list[int], reps: int, counts=(5, 10, 20)) -> list:
    """Bias, spread and coverage against K, with the delete-a-group weights and with equal weights."""
    model = CorrelatedPairs(16, 6.0)
    rows = []
    for n in sizes:
        g = torch.Generator().manual_seed(100 + n)
        found: dict = {(k, w): ([], []) for k in counts for w in ("unequal-group", "equal")}
        for _ in range(reps):
            ref_rows, cand_rows, truth = _draw(model, "independent", n, g)
            for k in counts:
                est = jackknife.jackknife_estimates(
                    jackknife.group_moments(ref_rows, 16, k), jackknife.group_moments(cand_rows, 16, k), 16
                )
                value, error = est.combined()
                found[(k, "unequal-group")][0].append(float(value[0]))
                found[(k, "unequal-group")][1].append(float(error[0]))
                equal = torch.full_like(est.fractions, 1.0 / est.fractions.shape[0])
                value, error = jackknife.jackknife_combine(est.full, est.left_out, equal)
                found[(k, "equal")][0].append(float(value[0]))
                found[(k, "equal")][1].append(float(error[0]))
        for (k, weights), (values, errors) in found.items():
            v, e = torch.tensor(values, dtype=F64), torch.tensor(errors, dtype=F64)
            t_q, z_q = jackknife.two_sided_t_quantile(0.95, k - 1), 1.959963984540054
            row = {
                "n": n,
                "k": k,
                "weights": weights,
                "reps": reps,
                "error": float(v.mean()) / truth - 1,
                "error_sem": float(v.std()) / math.sqrt(reps) / truth,
                "sd": float(v.std()),
                "mean_se": float(e.mean()),
                "sd_se": float(e.std()),
                "coverage_t": float(((v - t_q * e <= truth) & (truth <= v + t_q * e)).double().mean()),
                "coverage_z": float(((v - z_q * e <= truth) & (truth <= v + z_q * e)).double().mean()),
            }
            rows.append(row)
            print(f"groups N={n} K={k} {weights}: {row}", flush=True)
    return rows


def clip_sweep(sizes: list[int], reps_at: dict[int, int], seed: int = 1) -> list:
    """The CLIP-like D = 512 text-to-image protocol of issue 7, with the jackknife next to the other two."""
    model = ClipLikeModel()
    g = torch.Generator().manual_seed(seed)
    rows = []
    for n in sizes:
        found: dict = {"paper": [], "gauss": [], "jack": [], "se": []}
        for _ in range(reps_at[n]):
            x, y, x0 = model.text_to_image(n, g)
            paper, corrected, result = three_estimates(moments.joint_rows(x, y), moments.joint_rows(x0, y), model.dim)
            found["paper"].append(paper)
            found["gauss"].append(float(corrected.mid))
            found["jack"].append(float(result.mid))
            found["se"].append(float(result.standard_error))
        row = {"n": n, "reps": reps_at[n]}
        for key in ("paper", "gauss", "jack"):
            t = torch.tensor(found[key], dtype=F64)
            row[key] = float(t.mean())
            row[key + "_sem"] = float(t.std()) / math.sqrt(len(t)) if len(t) > 1 else float("nan")
        row["jack_se"] = sum(found["se"]) / len(found["se"])
        rows.append(row)
        print(f"clip-like N={n}: {row}", flush=True)
    return rows


def cost_probe(dim: int = 768, n: int = 20000, repeats: int = 3, threads: int = 2) -> dict:
    """compute() time of True and of the jackknife, and update throughput with and without groups, at D = dim + dim."""
    torch.set_num_threads(threads)
    g = torch.Generator().manual_seed(0)
    x, y, x0 = ClipLikeModel(dim=dim).text_to_image(n, g)
    out: dict = {
        "dim": dim,
        "n": n,
        "repeats": repeats,
        "threads": threads,
        "state_mib": 8 * (2 * dim + 1) ** 2 / 2**20,
    }
    for protocol, (xc, yc) in (("shared captions", (x0, y)), ("independent", (x0[torch.randperm(n, generator=g)], y))):
        ref_rows, cand_rows = moments.joint_rows(x, y), moments.joint_rows(xc, yc)
        ref_groups = jackknife.group_moments(ref_rows, dim, 10)
        cand_groups = jackknife.group_moments(cand_rows, dim, 10)
        ref_packed, cand_packed = jackknife.merge_groups(ref_groups), jackknife.merge_groups(cand_groups)

        def gaussian(ref_packed=ref_packed, cand_packed=cand_packed) -> None:
            divergence_from_moments(reference_from_moments(ref_packed, dim), cand_packed, bias_correction=True)

        def jack(ref_groups=ref_groups, cand_groups=cand_groups) -> None:
            jackknife.jackknife_divergence(ref_groups, cand_groups, dim)

        gaussian()
        out[protocol] = {"true_s": median_seconds(gaussian, repeats), "jackknife_s": median_seconds(jack, repeats)}
        print(f"cost {protocol}: {out[protocol]}", flush=True)
    # Steady state: the states already hold rows (counters past the recentring schedule's early powers of two, which
    # recentre every group state once each and would dominate a short run).
    rows = moments.joint_rows(x, y)
    for batch in (256, 2560):
        chunks = [rows[i : i + batch] for i in range(0, min(n, 8 * 2560), batch)]
        plain_state = moments.from_features(rows[:batch])
        grouped_state = jackknife.group_moments(rows[:2560], dim, 10)

        def plain(chunks=chunks, state=plain_state) -> None:
            for number, chunk in enumerate(chunks, start=1001):
                moments.accumulate_batch_(state, chunk, number)

        def grouped(chunks=chunks, state=grouped_state) -> None:
            seen = [1000] * 10
            for chunk in chunks:
                jackknife.accumulate_groups_(state, chunk, jackknife.row_groups(chunk, dim, 10), seen)

        count = sum(c.shape[0] for c in chunks)
        out[f"update_{batch}"] = {
            "plain_rows_per_s": count / median_seconds(plain, repeats),
            "grouped_rows_per_s": count / median_seconds(grouped, repeats),
        }
        print(f"cost update batch {batch}: {out[f'update_{batch}']}", flush=True)
    return out


def run_part(part: str, quick: bool) -> object:
    """Run one part of the study; ``quick``: a few repetitions at the smaller sizes, on one thread (a smoke run)."""
    reps_at = {n: 3 for n in HEAVY_SIZES} if quick else HEAVY_REPS
    heavy_sizes = HEAVY_SIZES[:3] if quick else HEAVY_SIZES
    if part.startswith("heavy-"):
        name = part.split("-")[1]
        if part == "heavy-t6-d64":
            sizes = [300, 1000] if quick else [300, 1000, 3000, 10000]
            return heavy_sweep("t6", 64, sizes, {n: 3 if quick else 150 for n in sizes}, ("independent",))
        return heavy_sweep(name, 16, heavy_sizes, reps_at, PROTOCOLS)
    if part == "groups":
        return groups_sweep([300, 1000], 3 if quick else 300)
    if part == "clip":
        sizes = CLIP_SIZES[:1] if quick else CLIP_SIZES
        return clip_sweep(sizes, {n: 1 for n in sizes} if quick else CLIP_REPS)
    if part == "cost":
        if quick:
            return cost_probe(dim=64, n=3000, repeats=1, threads=1)
        return cost_probe()
    raise ValueError(f"unknown part {part!r}; choose from {', '.join(JACKKNIFE_PARTS)}")


def jackknife_main(argv: list[str]) -> None:
    """``bias_study.py jackknife [--parts a,b] [--cache DIR] [--quick]``: the jackknife study (issue 15).

    Each part (heavy-gauss, heavy-t8, heavy-t6, heavy-t5, heavy-t6-d64, groups, clip, cost; 3-10 minutes each on one
    core, ``cost`` on two) is saved to ``DIR/<part>.json``, so parts can run in separate processes; the figure and
    the ``jackknife`` block of RESULTS.md are written from whatever parts the cache holds once every part is there
    (or from this run's parts without ``--cache``).
    """
    parser = argparse.ArgumentParser(prog="bias_study.py jackknife", description=jackknife_main.__doc__.splitlines()[0])
    parser.add_argument("--parts", default=",".join(JACKKNIFE_PARTS))
    parser.add_argument("--cache", type=Path, default=None, help="folder for per-part JSON results")
    add_size_flags(parser, "few repetitions, for a smoke run (no files written)")
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--figure", type=Path, default=HERE / "jackknife.png")
    parser.add_argument("--markdown", type=Path, default=None, help="also write the block to this file")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    parts: dict = {}
    for part in [p for p in args.parts.split(",") if p]:
        start = time.perf_counter()
        parts[part] = run_part(part, args.quick)
        print(f"part {part}: {time.perf_counter() - start:.0f} s", flush=True)
        if args.cache is not None and not args.quick:
            args.cache.mkdir(parents=True, exist_ok=True)
            (args.cache / f"{part}.json").write_text(json.dumps(parts[part]))
    if args.quick:
        print(jackknife_markdown(parts))
        return
    if args.cache is not None:
        for part in JACKKNIFE_PARTS:
            cached = args.cache / f"{part}.json"
            if cached.exists():
                parts[part] = json.loads(cached.read_text())
        missing = [p for p in JACKKNIFE_PARTS if p not in parts]
        if missing:
            print(f"cache lacks {', '.join(missing)}: no report written yet")
            return
    text = jackknife_markdown(parts)
    jackknife_plot(parts, args.figure)
    write_block(args.results, text, "jackknife")
    print(f"updated {args.results}")
    if args.markdown is not None:
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        args.markdown.write_text(text + "\n")
        print(f"wrote {args.markdown}")


if __name__ == "__main__":
    jackknife_main(sys.argv[1:])
