"""Lightning ``Trainer(strategy="ddp", devices=2, accelerator="cpu")`` validation: two real gloo processes.

Lightning's ddp strategy re-runs the script once per extra rank, so the trainer runs from
``examples/lightning_validation.py`` in a subprocess. Each rank validates an uneven share of the data (a third and
two thirds, so the ranks also see different numbers of batches); the value logged on rank 0 must equal the
single-process value and the independent two-pass computation on all the data.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from _examples import EXAMPLES, load_example
from reference_impl import ref_mid_terms

ex = load_example("lightning_validation")
KEYS = ("val/mid", "val/mutual_information", "val/distance")


@pytest.mark.slow
@pytest.mark.parametrize("fixed_reference", [False, True])
def test_ddp_validation_equals_single_process(tmp_path, fixed_reference):
    flags = ["--mode", "validate", "--dim", "16", "--val-pairs", "301", "--batch-size", "32"]
    flags += ["--fixed-reference"] if fixed_reference else []
    out = tmp_path / "ddp.json"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run(
        [sys.executable, str(EXAMPLES / "lightning_validation.py"), "--devices", "2", "--out", str(out), *flags],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    ddp = json.loads(out.read_text())
    assert ddp["world_size"] == 2
    (ddp_values,) = ddp["epochs"]

    # The uneven split the ranks used.
    assert ex.rank_share(301, 0, 2) == slice(0, 100) and ex.rank_share(301, 1, 2) == slice(100, 301)

    single = ex.main(["--devices", "1", *flags])
    (single_values,) = single["epochs"]

    args = ex.build_parser().parse_args(flags)
    model, data = ex.build(args)  # the same seeded weights as every rank used
    with torch.no_grad():
        generated = F.normalize(model.generator(data.val[1]), dim=1)
    reference = data.val if model.reference is None else model.reference
    expected = ref_mid_terms(reference[0], reference[1], generated, data.val[1])

    for key, value in zip(KEYS, expected):
        assert math.isclose(ddp_values[key], single_values[key], rel_tol=1e-12, abs_tol=1e-12), key
        assert math.isclose(ddp_values[key], value, rel_tol=1e-6, abs_tol=1e-9), key
