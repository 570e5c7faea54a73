"""Test-session settings: one intra-op thread per process, so that tests and their workers do not oversubscribe.

The suite's matrices are tiny. With torch's default of one thread per core in each pytest-xdist worker (and in the
processes the tests start: DDP ranks, the command line), the thread pools of the workers fight over the same cores and
the statistical tests take 10 to 100 times longer. ``OMP_NUM_THREADS`` is set before torch is imported, so that the
processes the tests start inherit it; ``torch.set_num_threads`` covers a torch that was already imported.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402  (after the environment, which torch reads when it is first imported)

torch.set_num_threads(1)
