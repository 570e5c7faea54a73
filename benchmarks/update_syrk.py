"""Update throughput of ``MutualInformationDivergence.update`` against MKL's ``dsyrk`` on the same rows, in one run.

    python benchmarks/update_syrk.py              # D = 768 per modality, batches 32, 1024 and 4096, 5 repeats
    python benchmarks/update_syrk.py --quick      # 3 repeats
    git archive 76f199e mid_metric | tar -x -C /tmp/before   # an older package, extracted ...
    python benchmarks/update_syrk.py --before-tree /tmp/before   # ... timed in the same run: before and after

A pass feeds ``--rows`` float32 CLIP-like pairs (image and text features, ``D`` each) to ``update(..., real=True)``
in batches of ``B`` and ends with the flush of the staged rows (``_flush_staged``), so every row is in the timing.
The yardstick is BLAS ``dsyrk`` (lower triangle, float64) adding the same rows, already float64, to a ``J x J``
matrix in chunks of ``max(B, 1024)`` rows (the update stages smaller batches into 1024-row flushes). It is MKL's
``dsyrk`` (the one linked into torch, called through ``ctypes``) when torch exposes it, else scipy's. The update's
passes and the ``dsyrk`` passes take turns in an order that rotates with each repeat, each timed by this process's
CPU time (all threads), and each figure is a median. Targets of issue 23: update / dsyrk >= 0.85 at batches 1024
and 4096, and the batch-32 throughput >= 0.9 of the batch-1024 one.

With ``--before-tree``, the package found in that folder (an older commit's ``mid_metric``, extracted there) is
imported too, under the same names but kept apart from this tree's (the update path imports nothing lazily), and
its updates take turns with this tree's and with ``dsyrk`` in the same repeats: *before* and *after* in one run,
under the same load.
"""

from __future__ import annotations

import argparse
import ctypes
import importlib
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from common import clip_like_features, cpu_model, markdown_table, rotated, utc_now  # noqa: E402

from mid_metric import MutualInformationDivergence, __version__  # noqa: E402

SYRK_TARGET, SMALL_BATCH_TARGET = 0.85, 0.9


def _mkl_dsyrk() -> Callable[[np.ndarray, np.ndarray], None] | None:
    """``c += a^T a`` (lower triangle of the row-major ``c``) by MKL's dsyrk in torch's library, or ``None``."""
    try:
        library = ctypes.CDLL(os.path.join(os.path.dirname(torch.__file__), "lib", "libtorch_cpu.so"))
        function = library.mkl_blas_dsyrk
    except (OSError, AttributeError):
        return None
    upper, no_trans = ctypes.c_char(b"U"), ctypes.c_char(b"N")  # row-major lower = column-major upper
    one = ctypes.c_double(1.0)

    def syrk(rows: np.ndarray, gram: np.ndarray) -> None:
        # The row-major (k, n) rows are the column-major (n, k) matrix A: A A^T = rows^T rows.
        k, n = rows.shape
        n_int, k_int = ctypes.c_int(n), ctypes.c_int(k)
        function(
            ctypes.byref(upper), ctypes.byref(no_trans), ctypes.byref(n_int), ctypes.byref(k_int), ctypes.byref(one),
            rows.ctypes.data_as(ctypes.c_void_p), ctypes.byref(n_int), ctypes.byref(one),
            gram.ctypes.data_as(ctypes.c_void_p), ctypes.byref(n_int),
        )  # fmt: skip

    return syrk


def _scipy_dsyrk() -> Callable[[np.ndarray, np.ndarray], None]:
    from scipy.linalg.blas import dsyrk

    def syrk(rows: np.ndarray, gram: np.ndarray) -> None:
        # gram.T is Fortran-ordered, so it is updated in place; rows.T is the Fortran (n, k) matrix.
        dsyrk(1.0, rows.T, beta=1.0, c=gram.T, trans=0, lower=0, overwrite_c=1)

    return syrk


def import_package_from(tree: Path) -> type:
    """``MutualInformationDivergence`` of the ``mid_metric`` package in ``tree``, imported beside this tree's.

    This tree's modules are taken out of ``sys.modules`` while the other package is imported, then put back, so
    each package's functions keep the modules they imported at import time.
    """
    ours = {name: module for name, module in sys.modules.items() if name.split(".")[0] == "mid_metric"}
    for name in ours:
        del sys.modules[name]
    sys.path.insert(0, str(tree))
    try:
        package = importlib.import_module("mid_metric")
        if Path(package.__file__).resolve().parent != (tree / "mid_metric").resolve():
            raise SystemExit(f"{tree} holds no mid_metric package")
        return package.MutualInformationDivergence
    finally:
        sys.path.remove(str(tree))
        for name in [name for name in sys.modules if name.split(".")[0] == "mid_metric"]:
            del sys.modules[name]
        sys.modules.update(ours)


def cpu_seconds(fn: Callable[[], object]) -> float:
    """CPU seconds (this process, all threads) of one call of ``fn``."""
    start = time.process_time()
    fn()
    return time.process_time() - start


def main() -> None:
    """Time the update at each batch size and dsyrk in turns; print the table and the verdicts."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dim", type=int, default=768, help="feature size per modality")
    parser.add_argument("--rows", type=int, default=8192, help="rows per pass")
    parser.add_argument("--batches", type=int, nargs="+", default=[32, 1024, 4096], help="batch sizes")
    parser.add_argument("--repeats", type=int, default=5, help="alternating repeats")
    parser.add_argument("--quick", action="store_true", help="3 repeats")
    parser.add_argument("--before-tree", type=Path, default=None, help="folder of an older mid_metric to time too")
    args = parser.parse_args()
    if args.quick:
        args.repeats = 3
    generator = torch.Generator().manual_seed(0)
    images = clip_like_features(args.rows, args.dim, generator, torch.device("cpu"))
    texts = clip_like_features(args.rows, args.dim, generator, torch.device("cpu"))
    joint = torch.cat([images, texts], dim=1).double().numpy()
    gram = np.zeros((2 * args.dim, 2 * args.dim))
    syrk = _mkl_dsyrk()
    yardstick = "MKL dsyrk" if syrk is not None else "scipy (OpenBLAS) dsyrk"
    syrk = syrk or _scipy_dsyrk()
    sides = {"after": MutualInformationDivergence}
    if args.before_tree is not None:
        sides = {"before": import_package_from(args.before_tree), **sides}
    metrics = {(side, batch): kind(feature=args.dim) for side, kind in sides.items() for batch in args.batches}

    def feed(side: str, batch: int) -> None:
        metric = metrics[side, batch]
        for start in range(0, args.rows, batch):
            metric.update(images[start : start + batch], texts[start : start + batch], real=True)
        metric._flush_staged()

    def syrk_pass(chunk: int) -> None:
        for start in range(0, args.rows, chunk):
            syrk(joint[start : start + chunk], gram)

    tasks: dict[str, Callable[[], None]] = {
        f"{side} update {b}": (lambda s=side, b=b: feed(s, b)) for side in sides for b in args.batches
    }
    chunks = sorted({max(b, 1024) for b in args.batches})
    tasks.update({f"dsyrk {c}": (lambda c=c: syrk_pass(c)) for c in chunks})
    for task in tasks.values():  # warm-up: allocations, and the recentring schedule's first steps
        task()
    times: dict[str, list[float]] = {name: [] for name in tasks}
    for repeat in range(args.repeats):
        for name in rotated(list(tasks), repeat):
            times[name].append(cpu_seconds(tasks[name]))
    rate = {name: args.rows / statistics.median(seconds) for name, seconds in times.items()}
    print(f"mid-metric {__version__}, torch {torch.__version__}, {cpu_model()}, {torch.get_num_threads()} threads,")
    print(f"{utc_now()} UTC; D = {args.dim} + {args.dim}, float32 features, {args.rows} rows a pass,")
    print(f"{args.repeats} alternating repeats, CPU time; yardstick: {yardstick}")
    for side in sides:
        where = args.before_tree if side == "before" else HERE.parent
        print(f"\n{side}: the package in {where}\n")
        rows = []
        for batch in args.batches:
            chunk = max(batch, 1024)
            update_rate, syrk_rate = rate[f"{side} update {batch}"], rate[f"dsyrk {chunk}"]
            rows.append(
                [str(batch), f"{update_rate:,.0f}", f"{syrk_rate:,.0f} ({chunk})", f"{update_rate / syrk_rate:.2f}"]
            )
        header = ["batch", "update rows per CPU s", f"{yardstick} rows per CPU s (chunk)", "update / dsyrk"]
        print("\n".join(markdown_table(header, rows)))
        print()
        for batch in args.batches:
            ratio = rate[f"{side} update {batch}"] / rate[f"dsyrk {max(batch, 1024)}"]
            if batch >= 1024:
                verdict = "PASS" if ratio >= SYRK_TARGET else "FAIL"
                print(f"[{verdict}] {side}: update / dsyrk at batch {batch}: {ratio:.2f} (target >= {SYRK_TARGET})")
        if 32 in args.batches and 1024 in args.batches:
            small = rate[f"{side} update 32"] / rate[f"{side} update 1024"]
            verdict = "PASS" if small >= SMALL_BATCH_TARGET else "FAIL"
            print(f"[{verdict}] {side}: batch 32 / batch 1024 throughput: {small:.2f} (target >= {SMALL_BATCH_TARGET})")


if __name__ == "__main__":
    main()
