"""The tiny random CLIP model and the pairs files that the CLIP tests of the command line share.

Each test module wraps :func:`build_work` and :func:`load_extractor` in its own module-scoped fixtures.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from _cli import write_csv
from clip_fixtures import build_tiny_clip

pytest.importorskip("PIL")
pytest.importorskip("transformers")
from PIL import Image  # noqa: E402

EPS = 1e-3
NUM_PAIRS = 40
NUM_CANDIDATES = 12


def random_png(path: Path, rng: np.random.Generator, index: int) -> None:
    size = (20 + index % 7, 18 + index % 5)
    base = rng.integers(0, 256, size=3)
    noise = rng.integers(-60, 60, size=(size[1], size[0], 3))
    Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8)).save(path)


def build_work(root: Path) -> dict:
    """A tiny CLIP model, real pairs (CSV), candidate pairs in another folder (JSONL, other column names)."""
    model = build_tiny_clip(root / "tiny-clip")
    rng = np.random.default_rng(0)
    (root / "real" / "images").mkdir(parents=True)
    real_rows = []
    for i in range(NUM_PAIRS):
        random_png(root / "real" / "images" / f"{i}.png", rng, i)
        real_rows.append({"image": f"images/{i}.png", "caption": f"a {i % 9} thing {i}", "generated": f"gen {i % 5}"})
    write_csv(root / "real" / "pairs.csv", real_rows, ["image", "caption", "generated"])
    (root / "gen" / "img").mkdir(parents=True)
    cand_rows = []
    for i in range(NUM_CANDIDATES):
        random_png(root / "gen" / "img" / f"g{i}.png", rng, i + 3)
        cand_rows.append({"file": f"img/g{i}.png", "prompt": real_rows[i]["caption"]})
    with open(root / "gen" / "cands.jsonl", "w", encoding="utf-8") as handle:
        for row in cand_rows:
            handle.write(json.dumps(row) + "\n")
    return {"root": root, "model": model, "real_rows": real_rows, "cand_rows": cand_rows}


def load_extractor(work: dict, preprocess: str = "openai"):
    """The feature extractor of the tiny model, on the CPU, with the command line's default preprocessing."""
    from mid_metric.features import load_clip

    return load_clip(str(work["model"]), device="cpu", preprocess=preprocess)


def copy_images(work: dict, folder: Path) -> Path:
    """``folder`` with a copy of the real images under ``images/``, for broken pairs files."""
    shutil.copytree(work["root"] / "real" / "images", folder / "images")
    return folder


def encode(extractor, folder: Path, images: list[str], captions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Independent features: PIL-decoded images and the captions, encoded in one batch each."""
    pictures = [Image.open(folder / name).convert("RGB") for name in images]
    return extractor.encode_images(pictures).double(), extractor.encode_texts(captions).double()


def identity_of(folder: Path) -> str:
    """The recorded name of a local model folder, derived independently: model_type and sha256 of the weights."""
    model_type = json.loads((folder / "config.json").read_text())["model_type"]
    digest = hashlib.sha256((folder / "model.safetensors").read_bytes()).hexdigest()
    return f"local:{model_type}@sha256:{digest[:16]}"
