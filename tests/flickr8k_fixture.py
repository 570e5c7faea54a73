"""A synthetic Flickr8K in the distributed layout, with rows that the exclusion rules must drop.

:func:`build_flickr8k` writes ``Flicker8k_Dataset/*.jpg`` (small generated JPEGs of several sizes),
``Flickr8k.token.txt`` (5 captions per image), ``ExpertAnnotations.txt`` and ``CrowdFlowerAnnotations.txt``, and
returns what a correct reader must make of them, worked out here from how each line was generated (not by
re-implementing the rules on the files):

- Expert: rows rating an image's own caption (by id, and one by a caption of another id whose text is one of the
  image's references) are skipped; one row has one NaN rating, one row only NaN ratings;
- CrowdFlower: rows rating one of the image's own captions keep their judgment, and that caption leaves the
  image's references; one row has a NaN fraction.

Captions carry a few spacing oddities (double and trailing spaces), which the reader collapses.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

NUM_IMAGES = 24

ADJECTIVES = ("red", "small", "happy", "wet", "old", "black")
NOUNS = ("dog", "girl", "man", "cat")
VERBS = ("runs", "jumps", "sits", "plays", "swims")
PLACES = ("on grass", "in water", "by a tree", "on a road", "in snow")


@dataclass
class Expected:
    """What the reader must return for one benchmark: per kept item, its image, caption, references, ratings."""

    items: list[tuple[str, str, tuple[str, ...], list[tuple[int, float]]]] = field(default_factory=list)
    skipped_own_reference: int = 0
    removed_references: int = 0
    skipped_nan: int = 0

    @property
    def num_judgments(self) -> int:
        return sum(len(ratings) for *_, ratings in self.items)


def image_name(index: int) -> str:
    return f"{1000 + index}_{index:04x}c0ffee.jpg"


def _caption(index: int, k: int) -> str:
    return f"a {ADJECTIVES[index % 6]} {NOUNS[index % 4]} {VERBS[k]} {PLACES[(index + k) % 5]} {index}"


def build_flickr8k(root: Path, seed: int = 0) -> dict:
    """Write the synthetic Flickr8K under ``root``; return ``{"expert": Expected, "cf": Expected, ...}``."""
    rng = np.random.default_rng(seed)
    (root / "Flicker8k_Dataset").mkdir(parents=True)
    for i in range(NUM_IMAGES):
        width, height = 34 + 7 * (i % 5), 30 + 9 * (i % 3)  # landscape, portrait and square shapes
        yy, xx = np.mgrid[0:height, 0:width]
        base = np.stack([np.sin(xx / (3 + i % 4) + c) * np.cos(yy / (2 + i % 3)) for c in range(3)], axis=-1)
        pixels = np.clip(127 + 100 * base + rng.normal(0, 20, size=base.shape), 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(root / "Flicker8k_Dataset" / image_name(i), quality=90)

    captions = {(i, k): _caption(i, k) for i in range(NUM_IMAGES) for k in range(5)}
    captions[(5, 2)] = captions[(3, 1)]  # one text under two ids: image 5's reference #2 is image 3's #1
    lines = []
    for i in range(NUM_IMAGES):
        for k in range(5):
            text = captions[(i, k)]
            if (i, k) == (4, 0):
                text = text.replace(" ", "  ", 2) + "  "  # spacing the reader must collapse
            lines.append(f"{image_name(i)}#{k}\t{text}")
    (root / "Flickr8k.token.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    references = {i: tuple(captions[(i, k)] for k in range(5)) for i in range(NUM_IMAGES)}

    # Expert: three ratings per row; expected items in file order.
    expert, rows = Expected(), []
    for i in range(NUM_IMAGES):
        if i % 6 == 0:  # the image's own caption, by id: skipped
            rows.append(f"{image_name(i)}\t{image_name(i)}#0\t4\t4\t3")
            expert.skipped_own_reference += 1
        for step, k in ((1, i % 5), (7, (i + 2) % 5), (13, (i + 4) % 5)):
            j = (i + step) % NUM_IMAGES
            ratings = [int(r) for r in rng.integers(1, 5, size=3)]
            cells = [str(r) for r in ratings]
            kept = list(enumerate(map(float, ratings), start=1))
            if (i, step) == (2, 7):  # one NaN rating: that judgment alone is skipped
                cells[1], kept = "NaN", [kept[0], kept[2]]
                expert.skipped_nan += 1
            if (i, step) == (8, 13):  # only NaN ratings: the row gives no judgment
                cells, kept = ["NaN", "NaN", "NaN"], []
                expert.skipped_nan += 3
            rows.append(f"{image_name(i)}\t{image_name(j)}#{k}\t" + "\t".join(cells))
            if kept:
                expert.items.append((image_name(i), captions[(j, k)], references[i], kept))
        if i == 3:  # another id, but the text is one of image 3's own references: skipped
            rows.append(f"{image_name(3)}\t{image_name(5)}#2\t2\t3\t2")
            expert.skipped_own_reference += 1
    (root / "ExpertAnnotations.txt").write_text("\n".join(rows) + "\n", encoding="utf-8")

    # CrowdFlower: one rating per row (the fraction of yes); rated own captions leave the references.
    cf, rows, pending = Expected(), [], []
    left = {i: list(references[i]) for i in range(NUM_IMAGES)}
    for i in range(NUM_IMAGES):
        targets = [((i + 2) % NUM_IMAGES, 1), ((i + 5) % NUM_IMAGES, 3)]
        if i % 4 == 0:
            targets.insert(1, (i, i % 5))  # its own caption: kept, and removed from its references
        for j, k in targets:
            yes, no = int(rng.integers(0, 4)), int(rng.integers(1, 4))
            fraction = f"{yes / (yes + no):.6f}"
            if (i, j, k) == (7, 12, 3):
                fraction = "NaN"
                cf.skipped_nan += 1
            rows.append(f"{image_name(i)}\t{image_name(j)}#{k}\t{fraction}\t{yes}\t{no}")
            if j == i:
                left[i].remove(captions[(i, k)])
                cf.removed_references += 1
            if fraction != "NaN":
                pending.append((i, captions[(j, k)], float(fraction)))
    cf.items = [(image_name(i), caption, tuple(left[i]), [(1, rating)]) for i, caption, rating in pending]
    (root / "CrowdFlowerAnnotations.txt").write_text("\n".join(rows) + "\n", encoding="utf-8")
    return {"expert": expert, "cf": cf, "references": references}
