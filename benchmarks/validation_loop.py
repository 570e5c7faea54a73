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
This file is the orchestrator; the sizes and the measures are in ``validation_measures.py``, the summary and the
markdown in ``validation_report.py``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Optional

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from common import add_size_flags, cpu_model, rotated, utc_now  # noqa: E402
from validation_measures import CONFIGS, FULL, QUICK, TINY, Config, worker  # noqa: E402
from validation_report import markdown, summarise  # noqa: E402

ROOT = HERE.parent
BEFORE_COMMIT = "f052cb9"
DEFAULT_BEFORE_TREE = Path("/tmp/mid_before")
DEFAULT_NOTES = Path("/tmp/notes/results_14.md")
SIDES = ("before", "after")


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


def main(argv: Optional[list[str]] = None) -> int:
    """Parse the arguments; run the worker, or the alternated subprocesses and the report."""
    parser = argparse.ArgumentParser(description="Benchmark of issue 14 (before f052cb9 against this tree)")
    add_size_flags(parser, "smoke run, ~3 minutes", "tiny sizes, for a smoke test only (no targets)")
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
        for side in rotated(SIDES, rep):
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
    cpu = cpu_model()
    context = {
        "before": f"`{before_head[:7]}` (mid-metric {summary['before']['version']}), git worktree, in subprocesses",
        "after": f"working tree at `{after_head}` with {len(changed)} changed path(s) under `mid_metric/`"
        f" (mid-metric {summary['after']['version']}); {flags}",
        "subprocesses": f"{cfg.processes} per side, alternated before/after; ratios taken inside each",
        "CPU": f"{cpu}, {os.cpu_count()} logical cores, {first['threads']} torch threads",
        "torch / Python": f"{first['torch']} / {platform.python_version()}",
        "date (UTC)": utc_now(),
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
