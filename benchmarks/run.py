"""Benchmark suite of mid-metric: speed, memory and sync traffic, against the store-all baseline and the hardware.

    python benchmarks/run.py            # full run (about 10 minutes on 2 quiet cores), rewrites RESULTS.md
    python benchmarks/run.py --quick    # under 2 minutes: fewer repetitions and sizes, memory up to N = 100k

It measures, in one run:

1. update throughput at D = 512 and 768 per modality (batch 256), as a ratio to the float64 GEMM peak measured
   in the same run on the equivalent product (the ``(2D x B) (B x 2D)`` product of one update), interleaved with
   it so that both see the same load;
2. ``compute()`` latency at D = 512, 768, 1024 per modality (reference factorised afresh each time);
3. end to end (all updates, then ``compute()``) at N = 10k and 30k, D = 768, against the store-all baseline;
4. peak RSS growth, each configuration in a fresh subprocess (``memory_probe.py``), N = 10k ... 1M;
5. bytes a rank sends in one DDP sync with 2 gloo processes (``sync_bytes.py``) at N = 1k and 100k;
6. on CUDA, when available: throughput against the GPU's float64 matmul and ``compute()`` latency on the GPU.

It prints each target with PASS/FAIL and writes its tables between ``<!-- BEGIN benchmark -->`` and
``<!-- END benchmark -->`` in ``benchmarks/RESULTS.md`` (the rest of the file is kept), plus ``memory.png``.
Parts 4 and 5 live in ``run_footprint.py``; the baselines and the code before the speed work in ``baseline.py``.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from baseline import StoreAllMID, previous_accumulate_, previous_traces  # noqa: E402
from common import (  # noqa: E402
    Report,
    add_results_flag,
    add_size_flags,
    clip_like_features,
    cpu_model,
    markdown_table,
    synchronize,
    timed,
    utc_now,
    write_block,
)
from run_footprint import bench_memory, bench_sync, plot_memory  # noqa: E402

from mid_metric import MutualInformationDivergence, moments  # noqa: E402
from mid_metric import functional as F  # noqa: E402

NOTES = """## Notes

- **Timings on a shared machine.** Every ratio (throughput against the GEMM, baseline against ours) is taken
  between runs interleaved in one process, and reported as a median, so that both sides see the same load.
  Absolute figures (samples/s, ms) move with the load; the load average at the start and end of the run is in the
  first table. The GEMM rate measured here is the machine's float64 peak *under that load*.
- **Performance work, before -> after** (the *previous* columns are measured in the same run):
  - *Update*: `moments.accumulate_` now adds `C^T C` to the lower triangle of the state only, as a syrk would
    (`moments._add_gram_`): one GEMM per 384-row block, over the columns up to the block's end, written in place
    into the state (no temporary J x J matrix): 62% of the flops of the full product at J = 1536. Only the lower
    triangle of the outer-product sum is kept; `compute()` and reference files rebuild the full matrix from it. The
    previous update was one full GEMM.
  - *compute()*: when the candidate covariance is positive definite (more candidates than dimensions), it is
    factorised too (`S_hat = R R^T`), and each trace becomes a squared norm, `tr(S^-1 S_hat) = |L^-1 R|_F^2`, from
    one triangular solve that skips the zero blocks of the triangular right-hand side (`L^-1 R` is lower
    triangular; `gaussian._squared_norms_of_solve`). The image trace is the leading block of the same solve.
    Otherwise (too few candidates) it falls back to the previous two triangular solves per trace. The scatter
    matrices are formed with one `addr` pass each instead of separate outer products and sums. The results agree
    with a two-pass float64 computation to within 5e-9 on the hard CLIP-like features of `tests/reference_impl.py`
    (mean norm 0.99, eigenvalues down to 1e-9, float32 input), before and after.
- **End to end against the store-all baseline.** The streaming metric must accumulate the joint second moments of
  both groups batch by batch; that work (the flop bound in the end-to-end table) is a fixed fraction of the
  baseline's own covariance products, since the baseline computes the x, y and z covariances of both groups with
  2 N (Dx^2 + Dy^2 + J^2) = 3 N J^2 flops per group, against N J^2 for a perfect symmetric update. The ratio is
  therefore bounded by about 3x plus the baseline's SVD and inverse costs, whatever the implementation of the
  update; the limit is printed next to the end-to-end verdict. The baseline's memory, on the other hand, grows with
  N (gigabytes at 100k), whereas ours stays at the size of the state plus what compute() allocates.
- **GPU.** `python benchmarks/run.py` measures update throughput against the GPU's float64 matmul and compute()
  latency with the state on the GPU whenever `torch.cuda.is_available()`.
"""


@dataclass
class Config:
    """Sizes and repetitions of one run."""

    name: str
    throughput_dims: tuple[int, ...] = (512, 768)
    batch: int = 256
    throughput_reps: int = 15
    compute_dims: tuple[int, ...] = (512, 768, 1024)
    compute_reps: int = 9
    e2e_dim: int = 768
    e2e_ns: tuple[int, ...] = (10_000, 30_000)
    e2e_reps: int = 3
    memory_dim: int = 768
    memory_ns: tuple[int, ...] = (10_000, 30_000, 100_000, 1_000_000)
    baseline_memory_ns: tuple[int, ...] = (10_000, 30_000, 100_000)
    sync_dim: int = 768
    sync_ns: tuple[int, ...] = (1_000, 100_000)
    compute_target_dim: int = 768
    throughput_target_dims: tuple[int, ...] = (512, 768)


FULL = Config("full")
QUICK = Config(
    "quick",
    throughput_reps=7,
    compute_reps=5,
    e2e_ns=(30_000,),
    e2e_reps=1,
    memory_ns=(10_000, 30_000, 100_000),
    baseline_memory_ns=(10_000, 30_000),
)
TINY = Config(
    "tiny",
    throughput_dims=(24, 32),
    batch=64,
    throughput_reps=3,
    compute_dims=(16, 32),
    compute_reps=3,
    e2e_dim=16,
    e2e_ns=(500, 1_500),
    e2e_reps=1,
    memory_dim=16,
    memory_ns=(1_000, 3_000),
    baseline_memory_ns=(1_000,),
    sync_dim=8,
    sync_ns=(100, 1_000),
    compute_target_dim=32,
    throughput_target_dims=(24, 32),
)


def _fmt_ms(seconds: float) -> str:
    return f"{seconds * 1e3:.1f}"


def _per_dim(
    measure: Callable[[int, Config, torch.device], tuple[list[str], float]],
    dims: tuple[int, ...],
    cfg: Config,
    device: torch.device,
) -> tuple[list[list[str]], dict[int, float]]:
    """The table rows of ``measure`` at each of ``dims``, and its figure per dimension."""
    rows, figures = [], {}
    for dim in dims:
        row, figures[dim] = measure(dim, cfg, device)
        rows.append(row)
    return rows, figures


# ------------------------------------------------------------------------------------------- 1. updates
def _throughput_one(dim: int, cfg: Config, device: torch.device) -> tuple[list[str], float]:
    joint, batch = 2 * dim, cfg.batch
    generator = torch.Generator().manual_seed(1)
    images = clip_like_features(batch, dim, generator, device)
    texts = clip_like_features(batch, dim, generator, device)
    metric = MutualInformationDivergence(feature=dim).to(device)
    previous = moments.empty_moments(joint, device=device)
    joint_batch = torch.cat([images, texts], dim=1)
    gram = torch.zeros(joint, joint, dtype=torch.float64, device=device)
    operand = torch.randn(batch, joint, dtype=torch.float64, device=device)
    calls = 4

    def gemm() -> None:
        gram.addmm_(operand.mT, operand)

    def update() -> None:
        metric.update(images, texts, real=True)

    def update_previous() -> None:
        previous_accumulate_(previous, joint_batch)

    for warm in (gemm, update, update_previous):
        timed(warm, device, 2)
    t_gemm, t_update, t_prev, r_new, r_prev = [], [], [], [], []
    for _ in range(cfg.throughput_reps):
        g = timed(gemm, device, calls)
        u = timed(update, device, calls)
        g2 = timed(gemm, device, calls)
        p = timed(update_previous, device, calls)
        t_gemm += [g, g2]
        t_update.append(u)
        t_prev.append(p)
        r_new.append(g / u)
        r_prev.append(g2 / p)
    flops = 2.0 * batch * joint * joint
    ratio = statistics.median(r_new)
    row = [
        f"{dim} ({joint})",
        f"{flops / statistics.median(t_gemm) / 1e9:.0f}",
        f"{batch / statistics.median(t_gemm):,.0f}",
        f"{batch / statistics.median(t_update):,.0f}",
        f"**{ratio:.2f}**",
        f"{batch / statistics.median(t_prev):,.0f}",
        f"{statistics.median(r_prev):.2f}",
    ]
    return row, ratio


def bench_throughput(cfg: Config, report: Report, device: torch.device) -> dict[int, float]:
    rows, ratios = _per_dim(_throughput_one, cfg.throughput_dims, cfg, device)
    report.table(
        f"Update throughput ({device.type}, batch {cfg.batch}, float32 input, median of {cfg.throughput_reps})",
        [
            "D per modality (joint)",
            "float64 GEMM GFLOP/s",
            "GEMM samples/s",
            "update samples/s",
            "ratio to GEMM",
            "previous update samples/s",
            "previous ratio",
        ],
        rows,
        "GEMM: `S.addmm_(C.T, C)` with `C` of shape (batch, joint) in float64, the product one update needs, timed"
        " alternately with the update. *Update*: `metric.update(images, texts, real=True)` with argument checks on."
        " *Previous*: the same accumulation with one full GEMM (before the symmetric update).",
    )
    return ratios


# ------------------------------------------------------------------------------------------- 2. compute
def _filled_metric(dim: int, device: torch.device, seed: int = 2) -> MutualInformationDivergence:
    generator = torch.Generator().manual_seed(seed)
    metric = MutualInformationDivergence(feature=dim).to(device)
    count = 3 * 2 * dim
    for group_real in (True, False):
        for start in range(0, count, 1024):
            size = min(1024, count - start)
            texts = clip_like_features(size, dim, generator, device)
            metric.update(clip_like_features(size, dim, generator, device), texts, real=group_real)
    metric.metric_state  # noqa: B018 (reading it flushes the staging buffer into the statistics read below)
    return metric


def _compute_one(dim: int, cfg: Config, device: torch.device) -> tuple[list[str], float]:
    metric = _filled_metric(dim, device)
    empty = torch.zeros(0, dim, device=device)

    def cold_compute() -> None:
        metric._reference_fit.clear()  # the reference is factorised again (and its precision matrices)
        metric.update(empty, empty, real=False)  # clears torchmetrics' cached value; changes no statistic
        metric.compute()

    def warm_compute() -> None:
        metric.update(empty, empty, real=False)
        metric.compute()

    reference = F.reference_from_moments(metric.reference_moments, dim)
    covariance = moments.mean_and_scatter(metric.reference_moments)[1] / (int(reference.count) - 1)

    def previous() -> None:
        ref = F.reference_from_moments(metric.reference_moments, dim)
        previous_traces(ref, metric.candidate_moments)
        synchronize(device)

    def cholesky() -> None:
        torch.linalg.cholesky_ex(covariance)

    for warm in (cold_compute, warm_compute, previous, cholesky):
        timed(warm, device)
    cold, hot, prev, chol = [], [], [], []
    for _ in range(cfg.compute_reps):
        cold.append(timed(cold_compute, device))
        hot.append(timed(warm_compute, device))
        prev.append(timed(previous, device))
        chol.append(timed(cholesky, device))
    row = [
        f"{dim} ({2 * dim})",
        f"**{_fmt_ms(statistics.median(cold))}** (min {_fmt_ms(min(cold))})",
        f"{_fmt_ms(statistics.median(hot))}",
        f"{_fmt_ms(statistics.median(prev))} (min {_fmt_ms(min(prev))})",
        f"{_fmt_ms(statistics.median(chol))}",
    ]
    return row, statistics.median(cold)


def bench_compute(cfg: Config, report: Report, device: torch.device) -> dict[int, float]:
    rows, medians = _per_dim(_compute_one, cfg.compute_dims, cfg, device)
    report.table(
        f"compute() latency in ms ({device.type}, median of {cfg.compute_reps})",
        [
            "D per modality (joint)",
            "compute()",
            "compute(), reference cached",
            "previous compute()",
            "one Cholesky of the joint covariance",
        ],
        rows,
        "*compute()*: the reference is factorised afresh each time (Cholesky of S_z and S_y), then the candidate"
        " traces. *Reference cached*: a second compute() on the same reference (one reference, many candidate"
        " sets). *Previous*: the same with the traces from two triangular solves per trace (before the Cholesky of"
        " the candidate covariance and the blocked solve).",
    )
    return medians


# ---------------------------------------------------------------------------------------- 3. end to end
def bench_end_to_end(cfg: Config, report: Report) -> tuple[dict[int, float], dict[int, float]]:
    rows, ratios, bound_ratios = [], {}, {}
    dim, batch = cfg.e2e_dim, cfg.batch
    joint = 2 * dim
    gram = torch.zeros(joint, joint, dtype=torch.float64)
    operand = torch.randn(batch, joint, dtype=torch.float64)
    gemm_seconds = statistics.median(
        [timed(lambda: gram.addmm_(operand.mT, operand), torch.device("cpu"), 4) for _ in range(9)]
    )
    gemm_rate = 2.0 * batch * joint * joint / gemm_seconds
    for n in cfg.e2e_ns:
        generator = torch.Generator().manual_seed(3)
        images, texts, generated = (clip_like_features(n, dim, generator, torch.device("cpu")) for _ in range(3))
        ours_t, base_t, per_rep, values = [], [], [], None
        for _ in range(cfg.e2e_reps):
            start = time.perf_counter()
            metric = MutualInformationDivergence(feature=dim)
            for offset in range(0, n, batch):
                metric.update(images[offset : offset + batch], texts[offset : offset + batch], real=True)
                metric.update(generated[offset : offset + batch], texts[offset : offset + batch], real=False)
            ours_value = float(metric.compute())
            middle = time.perf_counter()
            store = StoreAllMID()
            for offset in range(0, n, batch):
                sl = slice(offset, offset + batch)
                store.update(images[sl], texts[sl], generated[sl])
            base_value = float(store.compute())
            end = time.perf_counter()
            del metric, store
            ours_t.append(middle - start)
            base_t.append(end - middle)
            per_rep.append((end - middle) / (middle - start))
            values = (ours_value, base_value)
        ratio = statistics.median(per_rep)
        ratios[n] = ratio
        # Any streaming metric must accumulate the joint second moments of both groups: each of the J (J + 1) / 2
        # distinct entries needs N multiply-adds, so at least 2 groups x N J^2 flops (a perfect syrk at GEMM speed).
        bound = 2 * n * joint * joint / gemm_rate
        bound_ratios[n] = statistics.median(base_t) / bound
        assert values is not None
        rows.append(
            [
                f"{n:,}",
                f"{statistics.median(ours_t):.2f}",
                f"{statistics.median(base_t):.2f}",
                f"**{ratio:.1f}x**",
                f"{bound:.2f} ({statistics.median(base_t) / bound:.1f}x)",
                f"{abs(values[0] - values[1]):.1e}",
            ]
        )
    report.table(
        f"End to end, D = {dim} per modality, batch {batch} (seconds, median of {cfg.e2e_reps})",
        [
            "N (reference = candidates)",
            "ours",
            "store-all baseline",
            "baseline / ours",
            "flop bound of any streaming update (baseline / bound)",
            "abs. difference of MID",
        ],
        rows,
        "Ours: `update` of every reference and candidate batch, then `compute()`. Baseline (`baseline.py`): stores"
        " the batches, then concatenates, two-pass covariances, SVD log-determinants and explicit inverses."
        f" *Flop bound*: 2 groups x N x J^2 flops (J = {joint}; the symmetric half of the joint second moments, as a"
        f" perfect syrk) at the float64 GEMM rate measured here ({gemm_rate / 1e9:.0f} GFLOP/s); no streaming"
        " update can take less, so the baseline / bound column is the largest end-to-end ratio any streaming metric"
        " could show against this baseline on this machine.",
    )
    return ratios, bound_ratios


# --------------------------------------------------------------------------------------------- the run
def machine_description() -> list[list[str]]:
    """The rows of the "Machine and run" table that do not depend on the run."""
    rows = [
        ["CPU", cpu_model()],
        ["logical cores / torch threads", f"{os.cpu_count()} / {torch.get_num_threads()}"],
        ["torch", torch.__version__],
        ["Python", platform.python_version()],
        ["date (UTC)", utc_now()],
    ]
    if torch.cuda.is_available():
        rows.append(["GPU", torch.cuda.get_device_name(0)])
    return rows


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description="mid-metric benchmarks")
    add_size_flags(
        parser, "fewer repetitions, memory up to N = 100k (< 2 min)", "tiny sizes, for the smoke test only (no targets)"
    )
    add_results_flag(parser)
    parser.add_argument("--plot", type=Path, default=HERE / "memory.png", help="memory plot to write")
    parser.add_argument("--skip", nargs="*", default=[], choices=["throughput", "compute", "e2e", "memory", "sync"])
    args = parser.parse_args(argv)
    cfg = TINY if args.tiny else (QUICK if args.quick else FULL)
    report = Report()
    command = "python benchmarks/run.py" + (" --quick" if args.quick else "") + (" --tiny" if args.tiny else "")
    load_before = os.getloadavg()
    started = time.perf_counter()
    cpu = torch.device("cpu")

    if "throughput" not in args.skip:
        ratios = bench_throughput(cfg, report, cpu)
        for dim in cfg.throughput_target_dims:
            if dim in ratios:
                report.verdict(
                    f"update throughput >= 0.75 of the float64 GEMM peak at D = {dim}",
                    f"{ratios[dim]:.2f}",
                    ratios[dim] >= 0.75,
                )
    if "compute" not in args.skip:
        latency = bench_compute(cfg, report, cpu)
        dim = cfg.compute_target_dim
        if dim in latency:
            report.verdict(f"compute() < 100 ms at D = {dim}", f"{latency[dim] * 1e3:.1f} ms", latency[dim] < 0.1)
    if "e2e" not in args.skip:
        e2e, bounds = bench_end_to_end(cfg, report)
        n = max(cfg.e2e_ns)
        report.verdict(
            f"end to end >= 4x faster than store-all at N = {n:,}",
            f"{e2e[n]:.1f}x (limit for any streaming update, from its flop count: {bounds[n]:.1f}x)",
            e2e[n] >= 4.0,
        )
    if "memory" not in args.skip:
        growth = bench_memory(report, cfg.memory_dim, cfg.batch, cfg.memory_ns, cfg.baseline_memory_ns)
        plot_memory(report.memory_rows, args.plot)
        last = max(cfg.memory_ns)
        report.verdict(
            f"peak memory growth at N = {last:,} <= 1.2x the growth at N = {min(cfg.memory_ns):,}",
            "not measured" if growth is None else f"{growth:.2f}x",
            None if growth is None else growth <= 1.2,
        )
    if "sync" not in args.skip:
        passed, measured = bench_sync(report, cfg.sync_dim, cfg.sync_ns)
        report.verdict("sync bytes per rank independent of N and <= the state's size", measured, passed)

    gpu_note = (
        "No CUDA device was visible to this run, so no GPU figures were measured (the session that wrote this"
        " benchmark had no GPU machine lent to it). With CUDA, the same command adds GPU throughput and compute()"
        " tables, with the state and compute() on the GPU."
    )
    if torch.cuda.is_available():
        gpu = torch.device("cuda")
        gpu_note = f"GPU: {torch.cuda.get_device_name(0)}; state and compute() stay on the GPU."
        gpu_ratios = bench_throughput(cfg, report, gpu)
        gpu_latency = bench_compute(cfg, report, gpu)
        for dim, ratio in gpu_ratios.items():
            report.verdict(f"GPU update throughput / float64 matmul at D = {dim}", f"{ratio:.2f}", None)
        for dim, seconds in gpu_latency.items():
            report.verdict(f"GPU compute() at D = {dim}", f"{seconds * 1e3:.1f} ms", None)

    load_after = os.getloadavg()
    elapsed = time.perf_counter() - started
    if args.tiny:
        print(f"done in {elapsed:.0f} s (tiny sizes: targets not meaningful)")
    machine = machine_description() + [
        ["load average (1 min) at start / end", f"{load_before[0]:.2f} / {load_after[0]:.2f}"],
        ["command", f"`{command}` ({cfg.name} mode, {elapsed:.0f} s)"],
    ]
    parts = [
        "## Machine and run",
        "",
        *markdown_table(["", ""], machine),
        "",
        "## Targets",
        "",
        *markdown_table(["target", "measured", "verdict"], [[t, m, f"**{v}**"] for t, m, v in report.verdicts]),
        "",
        gpu_note,
        "",
        NOTES,
        "## Tables",
        "",
        "\n\n".join(report.sections),
        "",
        f"![Peak memory against N]({args.plot.name})" if "memory" not in args.skip else "",
    ]
    write_block(args.results, "\n".join(parts), "benchmark")
    print(f"wrote {args.results} in {elapsed:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
