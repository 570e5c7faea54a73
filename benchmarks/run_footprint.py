"""Parts 4 and 5 of ``benchmarks/run.py``: peak memory against N, and the bytes a rank sends in one DDP sync.

Both run in fresh subprocesses (``memory_probe.py`` once per implementation and N, ``sync_bytes.py`` once with two
gloo processes), so that their figures do not depend on what the suite's own process allocated before.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

from common import HERE, Report, label_axes, pyplot, run_for_json, save_figure

from mid_metric import moments


def format_bytes(count: float) -> str:
    """Bytes in KiB below one MiB, else in MiB."""
    if count < 2**20:
        return f"{count / 2**10:.1f} KiB"
    return f"{count / 2**20:.1f} MiB"


def _probe(impl: str, n: int, dim: int, batch: int) -> Optional[dict]:
    command = [sys.executable, str(HERE / "memory_probe.py"), "--impl", impl, "--n", str(n), "--dim", str(dim)]
    found = run_for_json(command + ["--batch", str(batch)], f"memory probe {impl} n={n}")
    return found[-1] if found else None


def bench_memory(
    report: Report, dim: int, batch: int, ns: tuple[int, ...], baseline_ns: tuple[int, ...]
) -> Optional[float]:
    """Peak RSS growth of ours at ``ns`` and of the store-all baseline at ``baseline_ns``; return the growth ratio.

    The ratio is ours at the largest N over ours at the smallest (``None`` where either probe failed).
    """
    rows = []
    results: dict[tuple[str, int], dict] = {}
    for n in sorted(set(ns) | set(baseline_ns)):
        for impl, sizes in (("ours", ns), ("baseline", baseline_ns)):
            if n in sizes:
                probe = _probe(impl, n, dim, batch)
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
                format_bytes(ours["growth_bytes"]) if ours else "not run",
                format_bytes(base["growth_bytes"]) if base else base_note,
                f"{ours['seconds']:.1f} / {base['seconds']:.1f}" if ours and base else "",
            ]
        )
    first, last = min(ns), max(ns)
    ratio = None
    if ("ours", first) in results and ("ours", last) in results:
        ratio = results[("ours", last)]["growth_bytes"] / results[("ours", first)]["growth_bytes"]
    report.table(
        f"Peak memory (RSS growth in a fresh process), D = {dim} per modality",
        ["N (reference = candidates)", "ours", "store-all baseline", "seconds ours / baseline"],
        rows,
        "Each figure is the peak resident set size of a fresh `memory_probe.py` process after its imports minus its"
        " RSS before the first update; it includes the input batches, the state and everything `compute()`"
        " allocates. The probes run with one torch thread, so that their duration does not depend on the load."
        " State size (both groups): " + format_bytes(2 * 8 * moments.packed_size(2 * dim)) + ".",
    )
    return ratio


def plot_memory(rows: list[dict], path: Path) -> None:
    """Peak RSS growth against N, ours and the baseline, on log-log axes."""
    plt = pyplot()
    figure, axes = plt.subplots(figsize=(6, 4))
    for impl, label, marker in (("ours", "mid-metric (streaming)", "o"), ("baseline", "store-all baseline", "s")):
        points = sorted((r["n"], r["growth_bytes"] / 2**20) for r in rows if r["impl"] == impl)
        if points:
            axes.plot([p[0] for p in points], [p[1] for p in points], marker=marker, label=label)
    axes.set_yscale("log")
    axes.grid(True, which="both", alpha=0.3)
    dims = sorted({r["dim"] for r in rows})
    title = f"Peak memory vs N, D = {dims[0] if dims else '?'} per modality"
    label_axes(axes, "N (reference pairs = candidate pairs)", "peak RSS growth (MiB)", title, 10)
    save_figure(figure, path)


def bench_sync(report: Report, dim: int, ns: tuple[int, ...]) -> tuple[Optional[bool], str]:
    """Bytes a rank sends in one sync at each N; the verdict is: the same at every N and at most the state's size."""
    command = [sys.executable, str(HERE / "sync_bytes.py"), "--dim", str(dim), "--n", *(str(n) for n in ns)]
    results = run_for_json(command, "sync benchmark")
    if results is None:
        return None, "failed to run"
    rows = [
        [
            f"{r['n']:,}",
            f"{r['max_bytes_sent']:,} ({format_bytes(r['max_bytes_sent'])})",
            ", ".join(f"{k} x{v}" for k, v in sorted(r["calls"].items())),
            f"{r['state_bytes']:,} ({format_bytes(r['state_bytes'])})",
            r["sync_fn"],
        ]
        for r in results
    ]
    report.table(
        f"Bytes a rank sends in one DDP sync (2 gloo processes, D = {dim} per modality)",
        ["N (total, per group)", "bytes sent per rank", "collectives", "size of the metric's states", "dist_sync_fn"],
        rows,
        "Counted by wrapping the `torch.distributed` collectives during `compute()` (see `sync_bytes.py`); each rank"
        " holds N/2 reference and N/2 candidate pairs (eps = 5e-4 so that N = 1k is full rank).",
    )
    sent = [r["max_bytes_sent"] for r in results]
    flat = len(set(sent)) == 1
    bounded = all(r["max_bytes_sent"] <= r["state_bytes"] for r in results)
    return flat and bounded, f"{sent[0]:,} B at N = {ns[0]:,} and {sent[-1]:,} B at N = {ns[-1]:,}"
