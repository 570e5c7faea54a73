"""Benchmark of issue 14: the Lightning validation loop, small batches, cached compute(), end to end, precision.

    python benchmarks/validation_loop.py                  # full run (~15 minutes on 2 quiet cores, more if loaded)
    python benchmarks/validation_loop.py --quick          # smoke run (~3 minutes quiet): one process per side
    python benchmarks/validation_loop.py --json out.json  # also write every sample as JSON
    python benchmarks/validation_loop.py --threads 1      # torch threads in the subprocesses (default: torch's)

It compares *before* (commit f052cb9, mid-metric 0.2.0, checked out as a git worktree in ``/tmp/mid_before``) with
*after* (this working tree) at D = 768 per modality (joint J = 1536), float32 input. Each side runs in its own
subprocesses (``PYTHONPATH`` set to its tree), alternated before/after; each subprocess does a fixed inner loop and
reports ratios taken inside itself, so that both terms of a ratio see the same load. Figures are medians. Measures:

1. **forward in the Lightning pattern**: every step ``update(x, y, real=True)`` then ``metric(x0, y, real=False)``
   at batch 32 for 64 steps, after a warm-up with 4096 reference rows, against a second metric of the same type fed
   the same rows with ``update(x0, y, real=False)`` in place of the forward: the ratio of the summed times of the
   forward calls to those of the updates over the steps. *Batch value staleness*: the largest absolute difference,
   over the steps, between the value ``forward`` returned and the exact mean PMI of that batch under all reference
   rows seen so far (computed here from independent float64 moments), and the same without the step's own rows.
2. **small batches**: update throughput (rows/s) at batch 8, 16, 32, 256 as a fraction of batch 1024: the same
   rows fed to one fresh metric per batch size in batches of ``b``, then one flush (``metric._flush_staged()``
   where it exists, otherwise ``state_dict()``, which flushes any staged rows); the batch sizes take turns every
   1024 rows.
3. **compute()** in Choleskys: the time of ``compute()`` divided by that of ``torch.linalg.cholesky`` of a
   J x J SPD float64 matrix, timed right before and after it. *Cold*: after a real update of 8 rows (a new
   reference each time). *Cached*: ``reset_real_features=False``, then per candidate set ``reset()``, update the
   candidates, ``compute()``. Rows still staged are flushed (``_flush_staged``, untimed) first where the method
   exists; the table also gives the ratio with that flush included.
4. **end to end** against ``baseline.OfficialMID`` (the official code's operations, step for step) and
   ``baseline.StoreAllMID`` (a leaner store-all algorithm): N reference pairs and N candidates, batch 256; ours
   uses ``update_pairs(x, y, x0)`` where it exists, else two updates per batch; ours and the two baselines take
   turns inside each subprocess (5 subprocesses per side at N = 30k, 3 at 10k). Reports each baseline's time /
   ours and the relative difference of the values.
5. **precision** on the hard CLIP-like features of ``tests/reference_impl.py``: ``|MID - two-pass|``.

The markdown section is printed and written to ``/tmp/notes/results_14.md`` (``--notes`` to change it), for
``benchmarks/RESULTS.md``. The script works whether or not the after side has the new APIs (``hasattr`` guards).
"""

from __future__ import annotations

import argparse
import datetime
import gc
import hashlib
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Optional

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
BEFORE_COMMIT = "f052cb9"
DEFAULT_BEFORE_TREE = Path("/tmp/mid_before")
DEFAULT_NOTES = Path("/tmp/notes/results_14.md")
SIDES = ("before", "after")

# Targets of issue 14.
FORWARD_TARGET = 1.5
SMALL_BATCH_TARGET = 0.85
CACHED_TARGET = 1.5
COLD_TARGET = 4.0
E2E_TARGET = 3.5
AGREEMENT_TARGET = 1e-6
PRECISION_TARGET = 5e-9


@dataclass(frozen=True)
class Config:
    """Sizes and repetitions of one run (one subprocess per side and repetition)."""

    name: str
    dim: int = 768
    processes: int = 5  # subprocesses per side, alternated before/after
    forward_steps: int = 64
    forward_batch: int = 32
    exact_every: int = 2  # the exact batch value (for the staleness) every this many steps
    warmup_rows: int = 4096
    stream_batches: tuple[int, ...] = (8, 16, 32, 256, 1024)
    stream_rows: int = 8192
    stream_rounds: int = 1
    compute_reference_rows: int = 4096
    compute_candidate_rows: int = 2000  # not a multiple of a staging buffer's size
    compute_reps: int = 5
    e2e_ns: tuple[int, ...] = (30_000, 10_000)  # the first is the target's N
    e2e_batch: int = 256
    e2e_processes: tuple[int, ...] = (5, 3)  # per N: how many of the subprocesses of each side run it
    precision_dim: int = 64
    precision_rows: tuple[int, int] = (3000, 2000)
    precision_batches: tuple[int, ...] = (1, 32, 256)


FULL = Config("full")
QUICK = Config(
    "quick",
    processes=1,
    forward_steps=64,
    exact_every=8,
    stream_rows=4096,
    compute_reps=3,
    e2e_ns=(10_000,),
    e2e_processes=(1,),
    precision_batches=(32, 256),
)
TINY = Config(
    "tiny",
    dim=16,
    processes=1,
    forward_steps=8,
    warmup_rows=256,
    stream_rows=2048,
    stream_rounds=1,
    compute_reference_rows=256,
    compute_candidate_rows=100,
    compute_reps=2,
    e2e_ns=(2_000,),
    e2e_processes=(1,),
    precision_dim=8,
    precision_rows=(300, 200),
    precision_batches=(32,),
)
CONFIGS = {cfg.name: cfg for cfg in (FULL, QUICK, TINY)}


# ================================================================================================ worker side
# Everything below up to the orchestrator runs inside a subprocess whose PYTHONPATH selects the side's code.


def _pairs(n: int, dim: int, seed: int) -> tuple[Any, Any, Any]:
    """CLIP-like float32 features: reference images and captions that share a latent, and other images.

    Each row is a common direction plus noise, L2-normalised (as CLIP features are); the images and captions share
    part of their noise, the "generated" images less of it, so MI and MID are of a realistic size.
    """
    import torch

    directions = torch.Generator().manual_seed(0)
    dx, dy = torch.randn(dim, generator=directions), torch.randn(dim, generator=directions)
    g = torch.Generator().manual_seed(seed)
    shared = torch.randn(n, dim, generator=g)

    def rows(direction: Any, weight: float) -> Any:
        noise = weight * shared + (1.0 - weight**2) ** 0.5 * torch.randn(n, dim, generator=g)
        return torch.nn.functional.normalize(direction / dim**0.5 + 0.03 * noise, dim=1)

    return rows(dx, 0.6), rows(dy, 0.6), rows(dx, 0.4)


def _flush(metric: Any) -> None:
    """Accumulate any staged rows: the after side's private flush, otherwise ``state_dict()`` (which flushes)."""
    if hasattr(metric, "_flush_staged"):
        metric._flush_staged()
    else:
        metric.state_dict()


def _timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


class _ExactReference:
    """Float64 moments of the reference rows, kept apart from the metric, for the exact batch value."""

    def __init__(self, image_dim: int, shift: Any) -> None:
        import torch

        self.image_dim = image_dim
        self.shift = shift.to(torch.float64)
        self.count = 0
        self.sum = torch.zeros_like(self.shift)
        self.outer = torch.zeros(shift.shape[0], shift.shape[0], dtype=torch.float64)

    def add(self, images: Any, texts: Any) -> None:
        import torch

        rows = torch.cat([images, texts], dim=1).to(torch.float64) - self.shift
        self.count += rows.shape[0]
        self.sum += rows.sum(dim=0)
        self.outer.addmm_(rows.mT, rows)

    def mean_pmi(self, images: Any, texts: Any) -> float:
        """Mean PMI of the pairs under the Gaussian of all rows added so far (unbiased covariance, eps = 0)."""
        import torch

        n, dx = self.count, self.image_dim
        mean = self.shift + self.sum / n
        cov = (self.outer - torch.outer(self.sum, self.sum) / n) / (n - 1)
        cov = 0.5 * (cov + cov.mT)
        centred = (torch.cat([images, texts], dim=1).to(torch.float64) - mean).mT
        total = torch.zeros(centred.shape[1], dtype=torch.float64)
        log_det = torch.zeros((), dtype=torch.float64)
        for block, sign in ((slice(0, dx), 1.0), (slice(dx, None), 1.0), (slice(0, None), -1.0)):
            factor = torch.linalg.cholesky(cov[block, block])
            solved = torch.linalg.solve_triangular(factor, centred[block], upper=False)
            total += sign * solved.pow(2).sum(dim=0)
            log_det += sign * factor.diagonal().log().sum()
        # PMI = 1/2 (log|Sx| + log|Sy| - log|Sz|) + 1/2 (d2_x + d2_y - d2_z); log|S| = 2 sum log diag(L).
        return float((log_det + 0.5 * total).mean())


def measure_forward(cfg: Config) -> dict[str, Any]:
    """Measure 1: forward(real=False) against update(real=False), per step at batch 32, and the staleness."""
    import torch

    from mid_metric import MutualInformationDivergence

    dim, batch, steps = cfg.dim, cfg.forward_batch, cfg.forward_steps
    x, y, x0 = _pairs(cfg.warmup_rows + steps * batch, dim, seed=11)
    with_forward = MutualInformationDivergence(feature=dim)
    with_update = MutualInformationDivergence(feature=dim)
    exact = _ExactReference(dim, torch.cat([x[:256], y[:256]], dim=1).to(torch.float64).mean(dim=0))
    for offset in range(0, cfg.warmup_rows, 256):  # warm-up: a few thousand reference rows, some candidates
        part = slice(offset, offset + 256)
        for metric in (with_forward, with_update):
            metric.update(x[part], y[part], real=True)
        exact.add(x[part], y[part])
    for metric in (with_forward, with_update):
        metric.update(x0[:256], y[:256], real=False)
    with_forward(x0[:batch], y[:batch], real=False)  # untimed warm-up of the forward path (first-call costs)
    with_update.update(x0[:batch], y[:batch], real=False)
    forward_s, update_s, staleness, values, returned_none = [], [], [], [], 0
    trace: list[list[float]] = []  # [step, forward's value, exact value, exact value before the step's rows]
    prior_staleness: list[float] = []
    for step in range(steps):
        part = slice(cfg.warmup_rows + step * batch, cfg.warmup_rows + (step + 1) * batch)
        xs, ys, x0s = x[part], y[part], x0[part]
        result: list[Any] = []

        def forward_step(xs: Any = xs, ys: Any = ys, x0s: Any = x0s, result: list[Any] = result) -> None:
            with_forward.update(xs, ys, real=True)
            start = time.perf_counter()
            result.append(with_forward(x0s, ys, real=False))
            forward_s.append(time.perf_counter() - start)

        def update_step(xs: Any = xs, ys: Any = ys, x0s: Any = x0s) -> None:
            with_update.update(xs, ys, real=True)
            start = time.perf_counter()
            with_update.update(x0s, ys, real=False)
            update_s.append(time.perf_counter() - start)

        for run in (forward_step, update_step) if step % 2 == 0 else (update_step, forward_step):
            run()
        sampled = result[0] is not None and (step % cfg.exact_every == 0 or step == steps - 1)
        # The exact value without this step's reference rows: the batch's captions ys are among them (the
        # Lightning pattern), and with few rows per dimension their being in-sample moves the PMI a lot.
        prior = exact.mean_pmi(x0s, ys) if sampled else None
        exact.add(xs, ys)
        if result[0] is None:
            returned_none += 1
        elif sampled:
            expected = exact.mean_pmi(x0s, ys)
            values.append(expected)
            staleness.append(abs(float(result[0]) - expected))
            prior_staleness.append(abs(float(result[0]) - prior))
            trace.append([step, float(result[0]), expected, prior])
    return {
        "ratio": sum(forward_s) / sum(update_s),
        "forward_ms": 1e3 * statistics.median(forward_s),
        "update_ms": 1e3 * statistics.median(update_s),
        "forward_max_ms": 1e3 * max(forward_s),
        "staleness": max(staleness) if staleness else None,
        "prior_staleness": max(prior_staleness) if prior_staleness else None,
        "returned_none": returned_none,
        "value_range": [min(values), max(values)] if values else [float("nan")] * 2,
        "steps": steps,
        "exact_steps": len(values),
        "trace": trace,
    }


def _rotated(values: tuple[int, ...], shift: int) -> tuple[int, ...]:
    shift %= len(values)
    return values[shift:] + values[:shift]


def measure_stream(cfg: Config) -> dict[str, Any]:
    """Measure 2: update throughput at small batches as a fraction of batch 1024, the batch sizes interleaved.

    One metric per batch size is fed the same rows, a chunk of ``max(batches)`` rows at a time: each chunk goes to
    every metric in turn (the order rotating), so that all batch sizes see the same load; then each metric is
    flushed. A round's time for batch ``b`` is the sum of its chunks and its flush.
    """
    from mid_metric import MutualInformationDivergence

    x, y, _ = _pairs(cfg.stream_rows, cfg.dim, seed=12)
    batches, largest = cfg.stream_batches, max(cfg.stream_batches)
    fractions: dict[int, list[float]] = {b: [] for b in batches}
    rates: dict[int, list[float]] = {b: [] for b in batches}
    for b in batches:  # untimed warm-up of every batch size (first-call costs)
        warm = MutualInformationDivergence(feature=cfg.dim)
        for offset in range(0, min(cfg.stream_rows, 2 * largest), b):
            warm.update(x[offset : offset + b], y[offset : offset + b], real=True)
        _flush(warm)
    del warm
    for round_index in range(cfg.stream_rounds):
        metrics = {b: MutualInformationDivergence(feature=cfg.dim) for b in batches}
        seconds = dict.fromkeys(batches, 0.0)
        gc.collect()
        for chunk, start in enumerate(range(0, cfg.stream_rows, largest)):
            for b in _rotated(batches, chunk + round_index):
                metric = metrics[b]
                begin = time.perf_counter()
                for offset in range(start, start + largest, b):
                    metric.update(x[offset : offset + b], y[offset : offset + b], real=True)
                seconds[b] += time.perf_counter() - begin
        for b in _rotated(batches, round_index):
            seconds[b] += _timed(lambda metric=metrics[b]: _flush(metric))
        for b in batches:
            rates[b].append(cfg.stream_rows / seconds[b])
            fractions[b].append(seconds[largest] / seconds[b])
        del metrics
    return {"fractions": fractions, "rates": rates}


def measure_compute(cfg: Config) -> dict[str, Any]:
    """Measure 3: compute(), cold and with a cached reference, in Choleskys of a J x J SPD matrix."""
    import torch

    from mid_metric import MutualInformationDivergence

    dim, joint = cfg.dim, 2 * cfg.dim
    g = torch.Generator().manual_seed(13)
    factor = torch.randn(2 * joint, joint, dtype=torch.float64, generator=g)
    spd = factor.mT @ factor / (2 * joint) + 0.1 * torch.eye(joint, dtype=torch.float64)
    x, y, _ = _pairs(cfg.compute_reference_rows + 8 * cfg.compute_reps, dim, seed=14)
    candidate_sets = []  # (generated images, captions)
    for k in range(cfg.compute_reps + 1):
        _, texts, images = _pairs(cfg.compute_candidate_rows, dim, seed=100 + k)
        candidate_sets.append((images, texts))
    reference_rows = cfg.compute_reference_rows

    def filled(**kwargs: Any) -> Any:
        metric = MutualInformationDivergence(feature=dim, **kwargs)
        for offset in range(0, reference_rows, 256):
            end = min(offset + 256, reference_rows)
            metric.update(x[offset:end], y[offset:end], real=True)
        images, texts = candidate_sets[0]
        metric.update(images, texts, real=False)
        metric.compute()  # warm-up
        return metric

    def cholesky() -> float:
        return _timed(lambda: torch.linalg.cholesky(spd))

    def sample(metric: Any) -> tuple[float, float, float]:
        """(compute, staged-row flush, Cholesky) seconds, the Cholesky the mean of one before and one after."""
        gc.collect()
        flush = _timed(metric._flush_staged) if hasattr(metric, "_flush_staged") else 0.0
        first = cholesky()
        seconds = _timed(metric.compute)
        return seconds, flush, 0.5 * (first + cholesky())

    cold, cached = [], []
    metric = filled()
    for rep in range(cfg.compute_reps):
        rows = slice(reference_rows + 8 * rep, reference_rows + 8 * (rep + 1))
        metric.update(x[rows], y[rows], real=True)  # a new reference: compute() refits it
        cold.append(sample(metric))
    del metric
    metric = filled(reset_real_features=False)
    for rep in range(cfg.compute_reps):
        metric.reset()
        images, texts = candidate_sets[rep + 1]
        metric.update(images, texts, real=False)
        cached.append(sample(metric))

    def summary(samples: list[tuple[float, float, float]]) -> dict[str, Any]:
        return {
            "ratios": [c / ch for c, _, ch in samples],
            "ratios_with_flush": [(c + f) / ch for c, f, ch in samples],
            "compute_ms": [1e3 * c for c, _, _ in samples],
            "flush_ms": [1e3 * f for _, f, _ in samples],
            "cholesky_ms": [1e3 * ch for _, _, ch in samples],
        }

    return {"cold": summary(cold), "cached": summary(cached)}


def _end_to_end_once(cfg: Config, n: int, rep: int) -> dict[str, Any]:
    """One repetition at ``n`` pairs: ours and the two store-all baselines on the same rows, in rotating order."""
    sys.path.insert(0, str(HERE))
    from baseline import OfficialMID, StoreAllMID

    from mid_metric import MutualInformationDivergence

    images, texts, generated = _pairs(n, cfg.dim, seed=15)
    batch = cfg.e2e_batch
    record: dict[str, Any] = {}

    def ours() -> None:
        metric = MutualInformationDivergence(feature=cfg.dim)
        pairs = hasattr(metric, "update_pairs")
        for offset in range(0, n, batch):
            part = slice(offset, offset + batch)
            if pairs:
                metric.update_pairs(images[part], texts[part], generated[part])
            else:
                metric.update(images[part], texts[part], real=True)
                metric.update(generated[part], texts[part], real=False)
        record["ours_value"] = float(metric.compute())
        record["update_pairs"] = pairs

    def store_all(name: str, kind: Any) -> Callable[[], None]:
        def run() -> None:
            store = kind()
            for offset in range(0, n, batch):
                part = slice(offset, offset + batch)
                store.update(images[part], texts[part], generated[part])
            record[f"{name}_value"] = float(store.compute())

        return run

    runs = [("ours", ours), ("baseline", store_all("baseline", OfficialMID)), ("lean", store_all("lean", StoreAllMID))]
    for name, fn in runs[rep % 3 :] + runs[: rep % 3]:
        gc.collect()
        record[f"{name}_s"] = _timed(fn)
    record["speedup"] = record["baseline_s"] / record["ours_s"]
    record["lean_speedup"] = record["lean_s"] / record["ours_s"]
    difference = abs(record["ours_value"] - record["baseline_value"])
    record["relative_difference"] = difference / abs(record["baseline_value"])
    return record


def measure_end_to_end(cfg: Config, rep: int) -> dict[str, Any]:
    """Measure 4: all updates then compute(), ours against the store-all baselines, in turns in this process."""
    return {str(n): _end_to_end_once(cfg, n, rep) for n, count in zip(cfg.e2e_ns, cfg.e2e_processes) if rep < count}


def measure_precision(cfg: Config) -> dict[str, Any]:
    """Measure 5: |MID - two-pass| on the hard CLIP-like features of tests/reference_impl.py."""
    sys.path.insert(0, str(ROOT / "tests"))
    from reference_impl import ClipLikeDistribution, ref_mid

    from mid_metric import MutualInformationDivergence

    dist = ClipLikeDistribution(cfg.precision_dim, cfg.precision_dim, seed=3)
    x, y = dist.sample(cfg.precision_rows[0], seed=4)
    x0, y0 = dist.sample(cfg.precision_rows[1], seed=5, rho_scale=0.95)
    expected = ref_mid(x, y, x0, y0)
    differences = {}
    for batch in cfg.precision_batches:
        metric = MutualInformationDivergence(feature=cfg.precision_dim)
        for images, texts, real in ((x, y, True), (x0, y0, False)):
            for offset in range(0, images.shape[0], batch):
                metric.update(images[offset : offset + batch], texts[offset : offset + batch], real=real)
        differences[str(batch)] = abs(float(metric.compute()) - expected)
    return {"two_pass": expected, "differences": differences}


def _source_digest(tree: Path) -> str:
    """SHA-256 (first 12 hex digits) of the package's Python sources in ``tree``, to spot code changed mid-run."""
    digest = hashlib.sha256()
    for path in sorted((tree / "mid_metric").rglob("*.py")):
        digest.update(path.relative_to(tree).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:12]


def worker(side: str, tree: str, mode: str, rep: int, tasks: list[str], out: str, threads: int) -> None:
    """Run the tasks with the side's code and write their results as JSON to ``out``."""
    import torch

    if threads > 0:
        torch.set_num_threads(threads)

    import mid_metric

    location = Path(mid_metric.__file__).resolve()
    if Path(tree).resolve() not in location.parents:
        raise SystemExit(f"the {side} side imported mid_metric from {location}, not from {tree}")
    cfg = CONFIGS[mode]
    probe = mid_metric.MutualInformationDivergence(feature=2)
    result: dict[str, Any] = {
        "side": side,
        "rep": rep,
        "version": mid_metric.__version__,
        "module": str(location),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "has_update_pairs": hasattr(probe, "update_pairs"),
        "has_flush_staged": hasattr(probe, "_flush_staged"),
        "source_digest": _source_digest(Path(tree)),
    }
    measures: dict[str, Callable[[], dict[str, Any]]] = {
        "forward": lambda: measure_forward(cfg),
        "stream": lambda: measure_stream(cfg),
        "compute": lambda: measure_compute(cfg),
        "e2e": lambda: measure_end_to_end(cfg, rep),
        "precision": lambda: measure_precision(cfg),
    }
    for task in tasks:
        start = time.perf_counter()
        result[task] = measures[task]()
        result[f"{task}_wall_s"] = time.perf_counter() - start
    Path(out).write_text(json.dumps(result))


# ============================================================================================== orchestrator
def _git(*args: str, cwd: Path = ROOT) -> str:
    return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=True).stdout.strip()


def ensure_before_tree(path: Path) -> str:
    """Return the full commit of the before tree, adding the git worktree at BEFORE_COMMIT when it is missing."""
    expected = _git("rev-parse", BEFORE_COMMIT)
    if not (path / "mid_metric" / "__init__.py").exists():
        print(f"adding a git worktree of {BEFORE_COMMIT} at {path}", file=sys.stderr, flush=True)
        _git("worktree", "add", "--detach", str(path), BEFORE_COMMIT)
    head = _git("rev-parse", "HEAD", cwd=path)
    if head != expected:
        raise SystemExit(f"{path} is at {head[:12]}, not at {BEFORE_COMMIT}: remove it or pass --before-tree")
    dirty = _git("status", "--porcelain", "--untracked-files=no", cwd=path)
    if dirty:
        raise SystemExit(f"{path} has local changes; the before side must be the commit as it is")
    return head


def run_worker(side: str, tree: Path, cfg: Config, rep: int, tasks: list[str], threads: int) -> dict[str, Any]:
    """Run one subprocess of ``side`` and return its results."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(tree) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    with tempfile.TemporaryDirectory(prefix="mid14-") as folder:
        out = Path(folder) / "result.json"
        command = [sys.executable, str(Path(__file__).resolve()), "--worker", side, "--tree", str(tree)]
        command += ["--mode", cfg.name, "--rep", str(rep), "--tasks", ",".join(tasks), "--out", str(out)]
        command += ["--threads", str(threads)]
        start = time.perf_counter()
        done = subprocess.run(command, env=env, cwd=folder, capture_output=True, text=True)
        if done.returncode != 0:
            raise SystemExit(f"the {side} worker (rep {rep}) failed:\n{done.stderr[-4000:]}")
        result = json.loads(out.read_text())
    result["wall_s"] = time.perf_counter() - start
    print(
        f"  {side:6s} rep {rep}: {result['wall_s']:.0f} s ("
        + ", ".join(f"{task} {result[task + '_wall_s']:.0f} s" for task in tasks)
        + ")",
        file=sys.stderr,
        flush=True,
    )
    return result


def _median(values: list[float]) -> float:
    return statistics.median(values)


def _verdict(value: Optional[float], target: float, higher_is_better: bool) -> str:
    if value is None:
        return "n.a."
    return "**PASS**" if (value >= target if higher_is_better else value <= target) else "**FAIL**"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


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
                "speedup": _median([rec["speedup"] for rec in records]),
                "speedups": [rec["speedup"] for rec in records],
                "ours_s": _median([rec["ours_s"] for rec in records]),
                "baseline_s": _median([rec["baseline_s"] for rec in records]),
                "lean_s": _median([rec["lean_s"] for rec in records]),
                "lean_speedup": _median([rec["lean_speedup"] for rec in records]),
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
            "forward_ratio": _median([f["ratio"] for f in forward]),
            "forward_ratios": [f["ratio"] for f in forward],
            "forward_ms": _median([f["forward_ms"] for f in forward]),
            "forward_max_ms": max(f["forward_max_ms"] for f in forward),
            "update_ms": _median([f["update_ms"] for f in forward]),
            "staleness": max(staleness) if staleness else None,
            "prior_staleness": max(prior) if prior else None,
            "returned_none": sum(f["returned_none"] for f in forward),
            "value_range": [min(f["value_range"][0] for f in forward), max(f["value_range"][1] for f in forward)],
            "fractions": {b: _median(v) for b, v in stream.items()},
            "fraction_samples": {b: len(v) for b, v in stream.items()},
            "rates": {b: _median(v) for b, v in rates.items()},
            "compute": {kind: {key: _median(v) for key, v in values.items()} for kind, values in compute.items()},
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
        *_table(["", ""], [[key, value] for key, value in context.items()]),
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
    lines += _table(["target", "goal", "before", "after", "verdict (after)"], targets)
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
    lines += _table(
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
    lines += _table(["batch", "before rows/s", "before fraction", "after rows/s", "after fraction"], rows)
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
    lines += _table(
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
    lines += _table(
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
    lines += _table(["batch size", "before", "after"], rows)
    lines += [
        "",
        f"`ClipLikeDistribution({cfg.precision_dim}, {cfg.precision_dim}, seed=3)` of `tests/reference_impl.py`"
        f" (mean norm 0.99, eigenvalues down to 1e-9, float32): {cfg.precision_rows[0]:,} reference pairs,"
        f" {cfg.precision_rows[1]:,} candidates (`rho_scale=0.95`); |MID - two-pass float64| (two-pass:"
        f" {b['two_pass']:.6f}).",
    ]
    return "\n".join(lines) + "\n"


def main(argv: Optional[list[str]] = None) -> int:
    """Parse the arguments; run the worker, or the alternated subprocesses and the report."""
    parser = argparse.ArgumentParser(description="Benchmark of issue 14 (before f052cb9 against this tree)")
    parser.add_argument("--quick", action="store_true", help="smoke run, ~3 minutes")
    parser.add_argument("--tiny", action="store_true", help="tiny sizes, for a smoke test only (no targets)")
    parser.add_argument("--json", type=Path, default=None, help="write every sample and the summary here")
    parser.add_argument("--notes", type=Path, default=DEFAULT_NOTES, help="where to write the markdown section")
    parser.add_argument("--before-tree", type=Path, default=DEFAULT_BEFORE_TREE, help=f"worktree of {BEFORE_COMMIT}")
    parser.add_argument("--threads", type=int, default=0, help="torch threads in the subprocesses (0: torch's default)")
    parser.add_argument("--after-tree", type=Path, default=ROOT, help="tree of the after side (default: this one)")
    parser.add_argument("--render", type=Path, default=None, help="re-render the section from a --json file, no run")
    parser.add_argument("--worker", choices=SIDES, help=argparse.SUPPRESS)
    parser.add_argument("--tree", help=argparse.SUPPRESS)
    parser.add_argument("--mode", choices=sorted(CONFIGS), help=argparse.SUPPRESS)
    parser.add_argument("--rep", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--tasks", default="", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker(args.worker, args.tree, args.mode, args.rep, args.tasks.split(","), args.out, args.threads)
        return 0

    if args.render is not None:
        payload = json.loads(args.render.read_text())
        fields = {key: tuple(value) if isinstance(value, list) else value for key, value in payload["config"].items()}
        cfg, runs = Config(**fields), payload["runs"]
        _write(args, cfg, runs, payload["context"] | _code_context(runs))
        return 0

    cfg = TINY if args.tiny else (QUICK if args.quick else FULL)
    before_head = ensure_before_tree(args.before_tree)
    trees = {"before": args.before_tree, "after": args.after_tree.resolve()}
    load_start = os.getloadavg()[0]
    started = time.perf_counter()
    runs: dict[str, list[dict[str, Any]]] = {side: [] for side in SIDES}
    print(f"{cfg.name} mode: {cfg.processes} subprocess(es) per side, alternated", file=sys.stderr, flush=True)
    for rep in range(cfg.processes):
        tasks = ["forward", "stream", "compute"]
        if rep < max(cfg.e2e_processes):
            tasks.append("e2e")
        if rep == 0:
            tasks.append("precision")
        for side in SIDES if rep % 2 == 0 else SIDES[::-1]:
            runs[side].append(run_worker(side, trees[side], cfg, rep, tasks, args.threads))
    elapsed = time.perf_counter() - started
    load_end = os.getloadavg()[0]

    summary = summarise(cfg, runs)
    after_head = _git("rev-parse", "--short", "HEAD", cwd=trees["after"])
    changed = _git("status", "--porcelain", "--", "mid_metric", cwd=trees["after"]).splitlines()
    flags = ", ".join(
        f"`{name}`: {'yes' if summary['after'][key] else 'no'}"
        for name, key in (("update_pairs", "has_update_pairs"), ("_flush_staged", "has_flush_staged"))
    )
    first = runs["after"][0]
    command = "python benchmarks/validation_loop.py" + (" --quick" if args.quick else "")
    command += (" --tiny" if args.tiny else "") + (f" --threads {args.threads}" if args.threads else "")
    cpu = platform.processor() or "unknown"
    try:
        with open("/proc/cpuinfo") as info:
            cpu = next((line.split(":", 1)[1].strip() for line in info if line.startswith("model name")), cpu)
    except OSError:
        pass
    context = {
        "before": f"`{before_head[:7]}` (mid-metric {summary['before']['version']}), git worktree, in subprocesses",
        "after": f"working tree at `{after_head}` with {len(changed)} changed path(s) under `mid_metric/`"
        f" (mid-metric {summary['after']['version']}); {flags}",
        "subprocesses": f"{cfg.processes} per side, alternated before/after; ratios taken inside each",
        "CPU": f"{cpu}, {os.cpu_count()} logical cores, {first['threads']} torch threads",
        "torch / Python": f"{first['torch']} / {platform.python_version()}",
        "date (UTC)": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M"),
        "load average (1 min) at start / end": f"{load_start:.2f} / {load_end:.2f}",
        "command": f"`{command}` ({cfg.name} mode, {elapsed:.0f} s)",
        "input": "float32 features, argument checks on",
    }
    _write(args, cfg, runs, context | _code_context(runs))
    return 0


def _code_context(runs: dict[str, list[dict[str, Any]]]) -> dict[str, str]:
    """One line per side: the fingerprint of its sources in every subprocess, flagged when it changed mid-run."""
    lines = {}
    for side, results in runs.items():
        digests = [r.get("source_digest", "not recorded") for r in results]
        if len(set(digests)) == 1:
            lines[f"{side} sources (SHA-256 of mid_metric/*.py)"] = f"`{digests[0]}` in all {len(digests)} subprocesses"
        else:
            listed = ", ".join(f"`{d}`" for d in digests)
            lines[f"{side} sources (SHA-256 of mid_metric/*.py)"] = (
                f"**changed during the run** (per subprocess: {listed}): rerun for figures of one version"
            )
    return lines


def _write(
    args: argparse.Namespace, cfg: Config, runs: dict[str, list[dict[str, Any]]], context: dict[str, str]
) -> None:
    """Summarise, print the markdown section, write it to ``--notes`` and everything to ``--json``."""
    summary = summarise(cfg, runs)
    text = markdown(cfg, summary, context)
    print(text)
    args.notes.parent.mkdir(parents=True, exist_ok=True)
    args.notes.write_text(text)
    print(f"wrote {args.notes}", file=sys.stderr)
    if args.json is not None:
        payload = {"config": asdict(cfg), "context": context, "summary": summary, "runs": runs}
        args.json.write_text(json.dumps(payload, indent=1, default=str))
        print(f"wrote {args.json}", file=sys.stderr)


if __name__ == "__main__":
    raise SystemExit(main())
