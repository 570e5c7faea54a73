"""Pairs and features files, and the atomic writer (mid_metric.io.pairs, mid_metric.io.atomic)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from _cli import fail_cli
from safetensors.torch import save_file

from mid_metric.io.atomic import atomic_output
from mid_metric.io.pairs import PairsError, is_features_file, read_features, read_pairs

ROWS = [("imgs/a.png", "a red square"), ("imgs/b.png", "two, three; with a comma"), ("c.png", "ünïcode")]


def _write(folder, suffix):
    path = folder / f"pairs{suffix}"
    if suffix == ".jsonl":
        path.write_text("".join(json.dumps({"image": i, "caption": c}) + "\n" for i, c in ROWS), encoding="utf-8")
    else:
        sep = "," if suffix == ".csv" else "\t"
        quote = (lambda text: f'"{text}"') if suffix == ".csv" else (lambda text: text)
        lines = [f"image{sep}caption"] + [f"{i}{sep}{quote(c)}" for i, c in ROWS]
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.mark.parametrize("suffix", [".csv", ".tsv", ".jsonl"])
def test_pairs_are_read_in_order_with_paths_resolved_beside_the_file(tmp_path, suffix):
    table = read_pairs(_write(tmp_path, suffix))
    assert [(p.image, p.caption) for p in table.pairs] == ROWS
    assert [p.row for p in table.pairs] == [1, 2, 3]
    assert table.pairs[0].image_path == tmp_path / "imgs" / "a.png"
    assert len(table) == 3


def test_missing_column_names_the_file_the_column_and_the_option(tmp_path):
    path = _write(tmp_path, ".csv")
    with pytest.raises(PairsError, match=r"pairs\.csv.*'prompt'.*--caption-column"):
        read_pairs(path, caption_column="prompt")


def test_empty_caption_names_the_row(tmp_path):
    path = tmp_path / "pairs.csv"
    path.write_text("image,caption\na.png,fine\nb.png,\n")
    with pytest.raises(PairsError, match="row 2"):
        read_pairs(path)


def test_an_unquoted_comma_in_a_caption_is_an_error_naming_the_line_not_a_cut_caption(tmp_path, capsys):
    path = tmp_path / "pairs.csv"
    path.write_text("image,caption\nb.png,A dog\na.png,A man, riding a horse\n", encoding="utf-8")
    with pytest.raises(PairsError, match=r"pairs\.csv, line 3: 3 cells, but the header has 2 columns"):
        read_pairs(path)
    shifted = tmp_path / "shifted.csv"  # the caption column first: the comma used to shift the image path
    shifted.write_text("caption,image\nA man, riding a horse,a.png\n", encoding="utf-8")
    with pytest.raises(PairsError, match=r"shifted\.csv, line 2: 3 cells"):
        read_pairs(shifted)
    quoted = tmp_path / "quoted.csv"
    quoted.write_text('image,caption\na.png,"A man, riding a horse"\n', encoding="utf-8")
    assert read_pairs(quoted).pairs[0].caption == "A man, riding a horse"
    # The command line reads the pairs before anything else and reports the line in one line on stderr.
    fail_cli(["score", str(path), "--reference", str(tmp_path / "none.safetensors"), "-q"], capsys, f"{path}, line 3")


def test_a_tsv_caption_that_starts_with_a_quote_keeps_every_following_pair(tmp_path):
    path = tmp_path / "pairs.tsv"
    captions = ['"Stop" says the sign', "A dog", 'A "quoted" word', "A cat"]
    path.write_text("image\tcaption\n" + "".join(f"{i}.png\t{c}\n" for i, c in enumerate(captions)), encoding="utf-8")
    table = read_pairs(path)
    assert [pair.caption for pair in table.pairs] == captions and [pair.row for pair in table.pairs] == [1, 2, 3, 4]


@pytest.mark.parametrize("kind", ["safetensors", "npz"])
def test_features_files_round_trip(tmp_path, kind):
    images, texts = torch.randn(4, 3), torch.randn(4, 2)
    path = tmp_path / f"features.{kind}"
    if kind == "safetensors":
        save_file({"image_features": images, "text_features": texts}, str(path))
    else:
        np.savez(path, image_features=images.numpy(), text_features=texts.numpy())
    assert is_features_file(path)
    pairs = read_features(path)
    assert torch.equal(pairs.image_features, images) and torch.equal(pairs.text_features, texts)


def test_features_file_with_mismatched_counts_is_refused(tmp_path):
    path = tmp_path / "features.safetensors"
    save_file({"image_features": torch.randn(4, 3), "text_features": torch.randn(5, 3)}, str(path))
    with pytest.raises(PairsError, match="features.safetensors"):
        read_features(path)


def test_atomic_output_leaves_nothing_behind_on_failure_and_keeps_the_old_file(tmp_path):
    target = tmp_path / "out.csv"
    target.write_text("old")
    with pytest.raises(RuntimeError, match="boom"):
        with atomic_output(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("boom")
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.csv"]  # no temporary file left
    with atomic_output(target) as tmp:
        tmp.write_text("new")
    assert target.read_text() == "new"


def test_atomic_output_refuses_folders_and_missing_folders(tmp_path):
    with pytest.raises(ValueError, match="it is a folder"):
        with atomic_output(tmp_path):
            pass
    with pytest.raises(ValueError, match="does not exist"):
        with atomic_output(tmp_path / "missing" / "out.csv"):
            pass
