"""The worker side of ``validation_loop.py``: its sizes, and the five measures each subprocess runs.

``validation_loop.py`` runs :func:`worker` in subprocesses whose ``PYTHONPATH`` selects the side's code (before or
after), so everything here imports ``mid_metric`` (and ``torch``) inside the functions, never at module level.
"""

from __future__ import annotations

import gc
import hashlib
import json
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from common import HERE, rotated, timed

ROOT = HERE.parent


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

        for run in rotated((forward_step, update_step), step):
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
            for b in rotated(batches, chunk + round_index):
                metric = metrics[b]
                begin = time.perf_counter()
                for offset in range(start, start + largest, b):
                    metric.update(x[offset : offset + b], y[offset : offset + b], real=True)
                seconds[b] += time.perf_counter() - begin
        for b in rotated(batches, round_index):
            seconds[b] += timed(lambda metric=metrics[b]: _flush(metric))
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
        return timed(lambda: torch.linalg.cholesky(spd))

    def sample(metric: Any) -> tuple[float, float, float]:
        """(compute, staged-row flush, Cholesky) seconds, the Cholesky the mean of one before and one after."""
        gc.collect()
        flush = timed(metric._flush_staged) if hasattr(metric, "_flush_staged") else 0.0
        first = cholesky()
        seconds = timed(metric.compute)
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
    for name, fn in rotated(runs, rep):
        gc.collect()
        record[f"{name}_s"] = timed(fn)
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
