"""The example scripts run as written: torchrun with 2 processes, and the README snippets come from them."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from _examples import EXAMPLES, load_example
from reference_impl import ref_mid_terms

README = Path(__file__).resolve().parent.parent / "README.md"


def _torchrun(tmp_path: Path, *flags: str) -> dict:
    out = tmp_path / "result.json"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    cmd += [str(EXAMPLES / "ddp_torchrun.py"), "--out", str(out), *flags]
    proc = subprocess.run(
        cmd, cwd=tmp_path, env=dict(os.environ), capture_output=True, text=True, timeout=240, start_new_session=True
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads(out.read_text())


@pytest.mark.slow
@pytest.mark.parametrize("empty_rank", [False, True])
def test_torchrun_example_equals_single_process(tmp_path, empty_rank):
    ex = load_example("ddp_torchrun")
    result = _torchrun(tmp_path, "--pairs", "400", "--dim", "16", *(["--empty-rank"] if empty_rank else []))
    assert result["world_size"] == 2
    real, captions, generated = ex.make_data(400, 16)
    assert ex.share(400, 0, 2) == slice(0, 133)  # uneven shares
    candidates = ex.share(400, 0, 2) if empty_rank else slice(0, 400)
    expected = ref_mid_terms(real, captions, generated[candidates], captions[candidates])
    assert result["num_reference"] == 400
    assert result["num_candidates"] == candidates.stop - candidates.start
    for key, value in zip(("mid", "mutual_information", "distance"), expected):
        assert math.isclose(result[key], value, rel_tol=1e-9, abs_tol=1e-9), key


def _section_code(title: str) -> list[str]:
    text = README.read_text()
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## )", text, flags=re.S | re.M)
    assert match, f"README has no section '## {title}'"
    return re.findall(r"```python\n(.*?)```", match.group(1), flags=re.S)


@pytest.mark.parametrize(
    ("title", "example"),
    [("PyTorch Lightning and TensorBoard", "lightning_validation.py"), ("Multi-process (DDP)", "ddp_torchrun.py")],
)
def test_readme_snippets_are_taken_from_the_examples(title, example):
    source = {line.strip() for line in (EXAMPLES / example).read_text().splitlines()}
    blocks = _section_code(title)
    assert blocks
    for block in blocks:
        for line in block.splitlines():
            if line.strip() and not line.strip().startswith(("#", "...")):
                assert line.strip() in source, f"README line not in examples/{example}: {line!r}"


def test_lightning_example_without_the_extra_says_how_to_install_it(monkeypatch):
    import runpy

    monkeypatch.setitem(sys.modules, "lightning", None)  # as if it were not installed: `import lightning` raises
    with pytest.raises(SystemExit) as run:  # run as a script: one line, no traceback
        runpy.run_path(str(EXAMPLES / "lightning_validation.py"), run_name="__main__")
    assert 'pip install ".[lightning]"' in str(run.value.code) and "\n" not in str(run.value.code)
    with pytest.raises(ImportError, match=r'needs PyTorch Lightning and TensorBoard.*pip install "\.\[lightning\]"'):
        runpy.run_path(str(EXAMPLES / "lightning_validation.py"), run_name="imported_example")
