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
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from baseline import StoreAllMID  # noqa: E402

from mid_metric import MutualInformationDivergence, moments  # noqa: E402
from mid_metric import functional as F  # noqa: E402
from mid_metric.gaussian import whitened_scatter  # noqa: E402

BEGIN, END = "<!-- BEGIN benchmark -->", "<!-- END benchmark -->"

NOTES = """## Notes

- **Timings on a shared machine.** Every ratio (throughput against the GEMM, baseline against ours) is taken
  between runs interleaved in one process, and reported as a median, so that both sides see the same load.
  Absolute figures (samples/s, ms) move with the load; the load average at the start and end of the run is in the
  first table. The GEMM rate measured here is the machine's float64 peak *under that load*.
- **Performance work, before -> after** (the *previous* columns are measured in the same run):
  - *Update*: `moments.accumulate_` now adds `C^T C` to the lower triangle of the state only, as a syrk would
    (`moments._add_gram_`): one GEMM per 192-row block, over the columns up to the block's end, written in place
    into the state (no temporary J x J matrix): 56% of the flops of the full product at J = 1536. Only the lower
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


@dataclass
class Report:
    """Tables (markdown lines) and target verdicts collected during a run."""

    sections: list[str] = field(default_factory=list)
    verdicts: list[tuple[str, str, str]] = field(default_factory=list)  # (target, measured, PASS/FAIL/n.a.)
    memory_rows: list[dict] = field(default_factory=list)

    def table(self, title: str, header: list[str], rows: list[list[str]], note: str = "") -> None:
        lines = [f"### {title}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(row) + " |" for row in rows]
        if note:
            lines += ["", note]
        self.sections.append("\n".join(lines))
        print("\n".join(lines) + "\n", flush=True)

    def verdict(self, target: str, measured: str, passed: Optional[bool]) -> None:
        status = "n.a." if passed is None else ("PASS" if passed else "FAIL")
        self.verdicts.append((target, measured, status))
        print(f"[{status}] {target}: {measured}", flush=True)


# ----------------------------------------------------------------------------------------------- helpers
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn: Callable[[], object], device: torch.device, calls: int = 1) -> float:
    """Seconds per call of ``fn`` over ``calls`` back-to-back calls."""
    _sync(device)
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    _sync(device)
    return (time.perf_counter() - start) / calls


def _features(n: int, dim: int, generator: torch.Generator, device: torch.device) -> torch.Tensor:
    """CLIP-like float32 features: a common direction plus noise, L2-normalised."""
    direction = torch.randn(dim, generator=torch.Generator().manual_seed(0))
    noise = 0.03 * torch.randn(n, dim, generator=generator)
    return torch.nn.functional.normalize(direction / dim**0.5 + noise, dim=1).to(device)


def _previous_accumulate_(packed: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
    """The update before the performance work (one full GEMM), kept here for the before/after figures."""
    fields = moments.unpack(packed)
    batch = features.to(dtype=torch.float64)
    fields.shift.copy_(torch.where(fields.count == 0, batch.mean(dim=0), fields.shift))
    batch = batch - fields.shift
    fields.shifted_sum.add_(batch.sum(dim=0))
    fields.shifted_outer_sum.addmm_(batch.mT, batch)
    fields.count.add_(batch.shape[0])
    return packed


def _previous_traces(reference: F.GaussianReference, candidate_packed: torch.Tensor) -> torch.Tensor:
    """The candidate part of compute() before the performance work: two triangular solves per trace."""
    count = int(moments.unpack(candidate_packed).count)
    _, scatter = moments.mean_and_scatter(candidate_packed, center=reference.mean)
    cov = scatter / (count - 1)
    dx = reference.image_dim
    whitened, text = whitened_scatter(reference, cov)
    return whitened[:dx, :dx].diagonal().sum() + text.diagonal().sum() - whitened.diagonal().sum()


def _median(values: list[float]) -> float:
    return statistics.median(values)


def _fmt_ms(seconds: float) -> str:
    return f"{seconds * 1e3:.1f}"


def _fmt_bytes(count: float) -> str:
    if count < 2**20:
        return f"{count / 2**10:.1f} KiB"
    return f"{count / 2**20:.1f} MiB"


# ------------------------------------------------------------------------------------------- 1. updates
def _throughput_one(dim: int, cfg: Config, device: torch.device) -> tuple[list[str], float]:
    joint, batch = 2 * dim, cfg.batch
    generator = torch.Generator().manual_seed(1)
    images = _features(batch, dim, generator, device)
    texts = _features(batch, dim, generator, device)
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
        _previous_accumulate_(previous, joint_batch)

    for warm in (gemm, update, update_previous):
        _timed(warm, device, 2)
    t_gemm, t_update, t_prev, r_new, r_prev = [], [], [], [], []
    for _ in range(cfg.throughput_reps):
        g = _timed(gemm, device, calls)
        u = _timed(update, device, calls)
        g2 = _timed(gemm, device, calls)
        p = _timed(update_previous, device, calls)
        t_gemm += [g, g2]
        t_update.append(u)
        t_prev.append(p)
        r_new.append(g / u)
        r_prev.append(g2 / p)
    flops = 2.0 * batch * joint * joint
    ratio = _median(r_new)
    row = [
        f"{dim} ({joint})",
        f"{flops / _median(t_gemm) / 1e9:.0f}",
        f"{batch / _median(t_gemm):,.0f}",
        f"{batch / _median(t_update):,.0f}",
        f"**{ratio:.2f}**",
        f"{batch / _median(t_prev):,.0f}",
        f"{_median(r_prev):.2f}",
    ]
    return row, ratio


def bench_throughput(cfg: Config, report: Report, device: torch.device) -> dict[int, float]:
    rows, ratios = [], {}
    for dim in cfg.throughput_dims:
        row, ratios[dim] = _throughput_one(dim, cfg, device)
        rows.append(row)
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
            texts = _features(size, dim, generator, device)
            metric.update(_features(size, dim, generator, device), texts, real=group_real)
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
        _previous_traces(ref, metric.candidate_moments)
        _sync(device)

    def cholesky() -> None:
        torch.linalg.cholesky_ex(covariance)

    for warm in (cold_compute, warm_compute, previous, cholesky):
        _timed(warm, device)
    cold, hot, prev, chol = [], [], [], []
    for _ in range(cfg.compute_reps):
        cold.append(_timed(cold_compute, device))
        hot.append(_timed(warm_compute, device))
        prev.append(_timed(previous, device))
        chol.append(_timed(cholesky, device))
    row = [
        f"{dim} ({2 * dim})",
        f"**{_fmt_ms(_median(cold))}** (min {_fmt_ms(min(cold))})",
        f"{_fmt_ms(_median(hot))}",
        f"{_fmt_ms(_median(prev))} (min {_fmt_ms(min(prev))})",
        f"{_fmt_ms(_median(chol))}",
    ]
    return row, _median(cold)


def bench_compute(cfg: Config, report: Report, device: torch.device) -> dict[int, float]:
    rows, medians = [], {}
    for dim in cfg.compute_dims:
        row, medians[dim] = _compute_one(dim, cfg, device)
        rows.append(row)
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
    gemm_seconds = _median([_timed(lambda: gram.addmm_(operand.mT, operand), torch.device("cpu"), 4) for _ in range(9)])
    gemm_rate = 2.0 * batch * joint * joint / gemm_seconds
    for n in cfg.e2e_ns:
        generator = torch.Generator().manual_seed(3)
        images, texts, generated = (_features(n, dim, generator, torch.device("cpu")) for _ in range(3))
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
        ratio = _median(per_rep)
        ratios[n] = ratio
        # Any streaming metric must accumulate the joint second moments of both groups: each of the J (J + 1) / 2
        # distinct entries needs N multiply-adds, so at least 2 groups x N J^2 flops (a perfect syrk at GEMM speed).
        bound = 2 * n * joint * joint / gemm_rate
        bound_ratios[n] = _median(base_t) / bound
        assert values is not None
        rows.append(
            [
                f"{n:,}",
                f"{_median(ours_t):.2f}",
                f"{_median(base_t):.2f}",
                f"**{ratio:.1f}x**",
                f"{bound:.2f} ({_median(base_t) / bound:.1f}x)",
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


# -------------------------------------------------------------------------------------------- 4. memory
def _probe(impl: str, n: int, dim: int, batch: int) -> Optional[dict]:
    command = [sys.executable, os.path.join(HERE, "memory_probe.py"), "--impl", impl, "--n", str(n), "--dim", str(dim)]
    command += ["--batch", str(batch)]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        print(f"memory probe {impl} n={n} failed: {done.stderr.strip()[-300:]}", flush=True)
        return None
    return json.loads(done.stdout.strip().splitlines()[-1])


def bench_memory(cfg: Config, report: Report) -> Optional[float]:
    rows = []
    results: dict[tuple[str, int], dict] = {}
    for n in sorted(set(cfg.memory_ns) | set(cfg.baseline_memory_ns)):
        for impl, ns in (("ours", cfg.memory_ns), ("baseline", cfg.baseline_memory_ns)):
            if n in ns:
                probe = _probe(impl, n, cfg.memory_dim, cfg.batch)
                if probe is not None:
                    results[(impl, n)] = probe
                    report.memory_rows.append(probe)
        ours, base = results.get(("ours", n)), results.get(("baseline", n))
        base_note = "not run"
        measured = [(k[1], v["growth_bytes"]) for k, v in results.items() if k[0] == "baseline"]
        if base is None and measured:
            largest_n, largest = max(measured)
            base_note = f"skipped: about {largest * n / largest_n / 2**30:.0f} GiB by linear extrapolation"
        rows.append(
            [
                f"{n:,}",
                _fmt_bytes(ours["growth_bytes"]) if ours else "not run",
                _fmt_bytes(base["growth_bytes"]) if base else base_note,
                f"{ours['seconds']:.1f} / {base['seconds']:.1f}" if ours and base else "",
            ]
        )
    first, last = min(cfg.memory_ns), max(cfg.memory_ns)
    ratio = None
    if ("ours", first) in results and ("ours", last) in results:
        ratio = results[("ours", last)]["growth_bytes"] / results[("ours", first)]["growth_bytes"]
    report.table(
        f"Peak memory (RSS growth in a fresh process), D = {cfg.memory_dim} per modality",
        ["N (reference = candidates)", "ours", "store-all baseline", "seconds ours / baseline"],
        rows,
        "Each figure is the peak resident set size of a fresh `memory_probe.py` process after its imports minus its"
        " RSS before the first update; it includes the input batches, the state and everything `compute()`"
        " allocates. The probes run with one torch thread, so that their duration does not depend on the load."
        " State size (both groups): " + _fmt_bytes(2 * 8 * moments.packed_size(2 * cfg.memory_dim)) + ".",
    )
    return ratio


def plot_memory(rows: list[dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(6, 4))
    for impl, label, marker in (("ours", "mid-metric (streaming)", "o"), ("baseline", "store-all baseline", "s")):
        points = sorted((r["n"], r["growth_bytes"] / 2**20) for r in rows if r["impl"] == impl)
        if points:
            axes.plot([p[0] for p in points], [p[1] for p in points], marker=marker, label=label)
    axes.set_xscale("log")
    axes.set_yscale("log")
    axes.set_xlabel("N (reference pairs = candidate pairs)")
    axes.set_ylabel("peak RSS growth (MiB)")
    dims = sorted({r["dim"] for r in rows})
    axes.set_title(f"Peak memory vs N, D = {dims[0] if dims else '?'} per modality")
    axes.grid(True, which="both", alpha=0.3)
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


# ---------------------------------------------------------------------------------------------- 5. sync
def bench_sync(cfg: Config, report: Report) -> tuple[Optional[bool], str]:
    command = [sys.executable, os.path.join(HERE, "sync_bytes.py"), "--dim", str(cfg.sync_dim), "--n"]
    command += [str(n) for n in cfg.sync_ns]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        print(f"sync benchmark failed: {done.stderr.strip()[-500:]}", flush=True)
        return None, "failed to run"
    results = [json.loads(line) for line in done.stdout.strip().splitlines() if line.startswith("{")]
    rows = [
        [
            f"{r['n']:,}",
            f"{r['max_bytes_sent']:,} ({_fmt_bytes(r['max_bytes_sent'])})",
            ", ".join(f"{k} x{v}" for k, v in sorted(r["calls"].items())),
            f"{r['state_bytes']:,} ({_fmt_bytes(r['state_bytes'])})",
            r["sync_fn"],
        ]
        for r in results
    ]
    report.table(
        f"Bytes a rank sends in one DDP sync (2 gloo processes, D = {cfg.sync_dim} per modality)",
        ["N (total, per group)", "bytes sent per rank", "collectives", "size of the metric's states", "dist_sync_fn"],
        rows,
        "Counted by wrapping the `torch.distributed` collectives during `compute()` (see `sync_bytes.py`); each rank"
        " holds N/2 reference and N/2 candidate pairs (eps = 5e-4 so that N = 1k is full rank).",
    )
    sent = [r["max_bytes_sent"] for r in results]
    flat = len(set(sent)) == 1
    bounded = all(r["max_bytes_sent"] <= r["state_bytes"] for r in results)
    return flat and bounded, f"{sent[0]:,} B at N = {cfg.sync_ns[0]:,} and {sent[-1]:,} B at N = {cfg.sync_ns[-1]:,}"


# ---------------------------------------------------------------------------------------------- report
def machine_description() -> list[list[str]]:
    model = platform.processor() or "unknown"
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    rows = [
        ["CPU", model],
        ["logical cores / torch threads", f"{os.cpu_count()} / {torch.get_num_threads()}"],
        ["torch", torch.__version__],
        ["Python", platform.python_version()],
        ["date (UTC)", datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M")],
    ]
    if torch.cuda.is_available():
        rows.append(["GPU", torch.cuda.get_device_name(0)])
    return rows


def write_results(path: str, body: str) -> None:
    block = f"{BEGIN}\n{body.rstrip()}\n{END}"
    if os.path.exists(path):
        with open(path) as handle:
            text = handle.read()
    else:
        text = "# Benchmark results\n\n" + BEGIN + "\n" + END + "\n"
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        tail = rest.split(END, 1)[1]
        text = head + block + tail
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    tmp = path + ".tmp"
    with open(tmp, "w") as handle:
        handle.write(text)
    os.replace(tmp, path)


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description="mid-metric benchmarks")
    parser.add_argument("--quick", action="store_true", help="fewer repetitions, memory up to N = 100k (< 2 min)")
    parser.add_argument("--tiny", action="store_true", help="tiny sizes, for the smoke test only (no targets)")
    parser.add_argument("--results", default=os.path.join(HERE, "RESULTS.md"), help="markdown file to update")
    parser.add_argument("--plot", default=os.path.join(HERE, "memory.png"), help="memory plot to write")
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
        growth = bench_memory(cfg, report)
        plot_memory(report.memory_rows, args.plot)
        last = max(cfg.memory_ns)
        report.verdict(
            f"peak memory growth at N = {last:,} <= 1.2x the growth at N = {min(cfg.memory_ns):,}",
            "not measured" if growth is None else f"{growth:.2f}x",
            None if growth is None else growth <= 1.2,
        )
    if "sync" not in args.skip:
        passed, measured = bench_sync(cfg, report)
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
        "| | |\n|---|---|\n" + "\n".join(f"| {k} | {v} |" for k, v in machine),
        "",
        "## Targets",
        "",
        "| target | measured | verdict |\n|---|---|---|\n"
        + "\n".join(f"| {t} | {m} | **{v}** |" for t, m, v in report.verdicts),
        "",
        gpu_note,
        "",
        NOTES,
        "## Tables",
        "",
        "\n\n".join(report.sections),
        "",
        f"![Peak memory against N]({os.path.basename(args.plot)})" if "memory" not in args.skip else "",
    ]
    write_results(args.results, "\n".join(parts))
    print(f"wrote {args.results} in {elapsed:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
