r"""The Flickr8K human judgments (Expert and CrowdFlower) as distributed, read with the SPICE/CLIPScore exclusions.

Flickr8K (Hodosh, Young and Hockenmaier, JAIR 2013) comes with a caption file and two sets of human judgments of
(image, caption) pairs, in a folder ``ROOT`` laid out as the CLIPScore authors' preprocessing reads it:

==================================  ===========================================================================
``ROOT/Flicker8k_Dataset/<image>``  the images (the misspelt folder name is the distributed one)
``ROOT/Flickr8k.token.txt``         lines ``<image>#<k>\t<caption>``: 5 reference captions per image
``ROOT/ExpertAnnotations.txt``      lines ``<image>\t<caption id>\t<e1>\t<e2>\t<e3>``: three expert ratings 1-4
``ROOT/CrowdFlowerAnnotations.txt`` lines ``<image>\t<caption id>\t<fraction yes>\t<n yes>\t<n no>``
==================================  ===========================================================================

A caption id is a key of the token file and may belong to another image than the one judged. Each annotation line
is one *item*, a candidate pair (image, caption); its ratings are the *judgments*: three per Expert line (each
expert's rating counts on its own), one per CrowdFlower line (the fraction of "yes").

**Exclusions**, as in SPICE and CLIPScore:

- an Expert line whose caption is one of the image's own reference captions is skipped;
- for CrowdFlower, every rated caption that is one of the image's references is removed from that image's
  references (the line itself is kept);
- a judgment whose rating is NaN is skipped.

Captions are compared, encoded and reported with their whitespace collapsed (``" ".join(text.split())``), as the
CLIPScore code does. References are grouped by the image name up to its first dot, as that code groups them, so a
token-file entry written ``<id>.jpg.1#k`` counts for ``<id>.jpg``.

Every problem is a :class:`Flickr8kError` naming the file and, for a bad line, its number. Nothing here imports
torch, numpy or PIL.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Union

from mid_metric.io.tables import check_input_folder, text_lines

__all__ = [
    "BENCHMARKS",
    "IMAGE_FOLDER",
    "TOKEN_FILE",
    "Flickr8kError",
    "Item",
    "Judgment",
    "Flickr8kJudgments",
    "read_token_file",
    "read_flickr8k",
    "normalise_caption",
]

PathLike = Union[str, "os.PathLike[str]"]

#: The folder of the images under the root (misspelt as distributed).
IMAGE_FOLDER = "Flicker8k_Dataset"

#: The reference-caption file under the root.
TOKEN_FILE = "Flickr8k.token.txt"

#: Per benchmark: its annotation file and the Kendall tau variant the papers report.
BENCHMARKS = {
    "flickr8k-expert": ("ExpertAnnotations.txt", "c"),
    "flickr8k-cf": ("CrowdFlowerAnnotations.txt", "b"),
}

#: Largest difference allowed between a CrowdFlower fraction and ``n_yes / (n_yes + n_no)``.
FRACTION_TOLERANCE = 1e-5


class Flickr8kError(ValueError):
    """A Flickr8K file is missing or malformed; the message names the file and, for a bad line, its number."""


@dataclass(frozen=True)
class Item:
    """One annotation line: a candidate (image, caption) pair.

    Attributes:
        line: The line of the annotation file.
        image: The image file name, as written there.
        caption_id: The caption's id in the token file.
        caption: The caption, whitespace collapsed.
        references: The image's reference captions after the exclusions, whitespace collapsed.
    """

    line: int
    image: str
    caption_id: str
    caption: str
    references: tuple[str, ...]


@dataclass(frozen=True)
class Judgment:
    """One human rating of an item.

    Attributes:
        item: Index of the item in :attr:`Flickr8kJudgments.items`.
        rater: 1-3 for the experts' columns, 1 for CrowdFlower's fraction.
        rating: The rating.
    """

    item: int
    rater: int
    rating: float


@dataclass(frozen=True)
class Flickr8kJudgments:
    """A Flickr8K benchmark read from its files, exclusions applied.

    Attributes:
        name: ``"flickr8k-expert"`` or ``"flickr8k-cf"``.
        variant: The Kendall tau variant the papers report for it (``"c"`` or ``"b"``).
        root: The root folder.
        annotations: The annotation file.
        items: The candidate pairs kept, in file order.
        judgments: Their ratings, NaN ones left out.
        skipped_own_reference: Expert lines skipped because their caption is one of the image's references.
        removed_references: CrowdFlower references removed because they are rated.
        skipped_nan: Judgments skipped because their rating is NaN.
    """

    name: str
    variant: str
    root: Path
    annotations: Path
    items: tuple[Item, ...]
    judgments: tuple[Judgment, ...]
    skipped_own_reference: int
    removed_references: int
    skipped_nan: int

    @property
    def images(self) -> tuple[str, ...]:
        """The judged images, each once, in order of first appearance."""
        return tuple(dict.fromkeys(item.image for item in self.items))

    def image_path(self, image: str) -> Path:
        """The path of an image file."""
        return self.root / IMAGE_FOLDER / image


def normalise_caption(text: str) -> str:
    r"""Collapse runs of whitespace to one space and strip the ends, as the CLIPScore code does.

    Example:
        >>> normalise_caption("  A dog  runs\tfast . ")
        'A dog runs fast .'
    """
    return " ".join(text.split())


def _image_group(image: str) -> str:
    """The name references are grouped by: the image name up to its first dot."""
    return image.split(".", 1)[0]


def _check_file(path: Path) -> None:
    if not path.exists():
        raise Flickr8kError(f"{path} does not exist.")
    if path.is_dir():
        raise Flickr8kError(f"{path} is a folder, not a file.")


def _lines(path: Path) -> Iterator[tuple[int, list[str]]]:
    """Yield ``(line number, tab-separated fields)`` of each non-blank line, the line stripped first.

    The text rules are those of every table (:func:`~mid_metric.io.tables.text_lines`): UTF-8 with an optional
    byte-order mark, LF, CR LF or CR line ends; there is no quoting.
    """
    _check_file(path)
    for number, line in enumerate(text_lines(path, Flickr8kError), start=1):
        text = line.strip()
        if text:
            yield number, text.split("\t")


def read_token_file(path: PathLike) -> tuple[dict[str, str], dict[str, list[str]]]:
    r"""Read ``Flickr8k.token.txt``: captions by id, and the reference captions of each image group.

    Returns:
        ``(captions, references)``: ``captions[caption id]`` is the caption (whitespace collapsed);
        ``references[group]`` lists the captions of an image group (the image name up to its first dot) in file
        order.

    Raises:
        Flickr8kError: If the file is missing or a line is not ``<image>#<k>\t<caption>``, or an id repeats with
            another caption.

    Example:
        >>> import tempfile
        >>> path = Path(tempfile.mkdtemp()) / "Flickr8k.token.txt"
        >>> _ = path.write_text("1_a.jpg#0\tA dog .\n1_a.jpg#1\tA  brown dog .\n")
        >>> captions, references = read_token_file(path)
        >>> captions["1_a.jpg#1"], references["1_a"]
        ('A brown dog .', ['A dog .', 'A brown dog .'])
    """
    source = Path(path)
    captions: dict[str, str] = {}
    lines: dict[str, int] = {}
    references: dict[str, list[str]] = {}
    for number, fields in _lines(source):
        if len(fields) != 2:
            raise Flickr8kError(
                f"{source}, line {number}: expected '<image>#<k>' and the caption separated by one tab, got"
                f" {len(fields)} field(s)."
            )
        caption_id, caption = fields[0].strip(), normalise_caption(fields[1])
        image, hash_sign, index = caption_id.rpartition("#")
        if not hash_sign or not image or not index.strip():
            raise Flickr8kError(f"{source}, line {number}: caption id {caption_id!r} is not '<image>#<k>'.")
        if not caption:
            raise Flickr8kError(f"{source}, line {number}: empty caption for {caption_id!r}.")
        if caption_id in captions:
            if captions[caption_id] != caption:
                raise Flickr8kError(
                    f"{source}, line {number}: caption id {caption_id!r} appears again (first on line"
                    f" {lines[caption_id]}) with another caption."
                )
            continue
        captions[caption_id] = caption
        lines[caption_id] = number
        references.setdefault(_image_group(image), []).append(caption)
    if not captions:
        raise Flickr8kError(f"{source} holds no captions.")
    return captions, references


def _rating(text: str, source: Path, number: int, what: str, low: float, high: float) -> float:
    try:
        value = float(text)
    except ValueError:
        raise Flickr8kError(f"{source}, line {number}: {what} {text!r} is not a number.") from None
    if not math.isnan(value) and not low <= value <= high:
        raise Flickr8kError(f"{source}, line {number}: {what} {text!r} is outside [{low:g}, {high:g}].")
    return value


def _count(text: str, source: Path, number: int, what: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise Flickr8kError(f"{source}, line {number}: {what} {text!r} is not a whole number >= 0.")
    return value


def _annotation_lines(source: Path, captions: dict[str, str], token_file: Path) -> Iterator[tuple[int, list[str]]]:
    for number, fields in _lines(source):
        if len(fields) != 5:
            raise Flickr8kError(
                f"{source}, line {number}: expected 5 tab-separated fields (image, caption id and 3 values), got"
                f" {len(fields)}."
            )
        fields = [field.strip() for field in fields]
        if not fields[0]:
            raise Flickr8kError(f"{source}, line {number}: empty image name.")
        if fields[1] not in captions:
            raise Flickr8kError(f"{source}, line {number}: caption id {fields[1]!r} is not in {token_file}.")
        yield number, fields


def read_flickr8k(root: PathLike, name: str) -> Flickr8kJudgments:
    r"""Read a Flickr8K benchmark from ``root`` and apply the exclusions (see the module docstring).

    Image files are not opened or checked here.

    Args:
        root: The folder holding ``Flickr8k.token.txt``, the annotation files and ``Flicker8k_Dataset/``.
        name: ``"flickr8k-expert"`` or ``"flickr8k-cf"``.

    Returns:
        The items and judgments kept, with the counts of what was excluded.

    Raises:
        Flickr8kError: If ``root`` or a file is missing, a line is malformed (the message gives its number), a
            caption id is unknown, an image has no reference captions, or nothing is left to correlate.
        ValueError: If ``name`` is not a Flickr8K benchmark.

    Example:
        >>> import tempfile
        >>> root = Path(tempfile.mkdtemp())
        >>> _ = (root / "Flickr8k.token.txt").write_text("a.jpg#0\tA dog .\nb.jpg#0\tA cat .\n")
        >>> lines = ["a.jpg\ta.jpg#0\t4\t4\t4", "a.jpg\tb.jpg#0\t1\t2\t1"]   # a's own caption, then b's
        >>> _ = (root / "ExpertAnnotations.txt").write_text("\n".join(lines) + "\n")
        >>> bench = read_flickr8k(root, "flickr8k-expert")
        >>> [(item.caption, item.references) for item in bench.items], bench.skipped_own_reference
        ([('A cat .', ('A dog .',))], 1)
        >>> [judgment.rating for judgment in bench.judgments]
        [1.0, 2.0, 1.0]
    """
    if name not in BENCHMARKS:
        raise ValueError(f"Unknown Flickr8K benchmark {name!r}; expected one of {', '.join(BENCHMARKS)}.")
    folder = Path(root)
    file_name, variant = BENCHMARKS[name]
    check_input_folder(folder, "The Flickr8K root", Flickr8kError, f"{TOKEN_FILE}, {file_name} and {IMAGE_FOLDER}/")
    token_file, source = folder / TOKEN_FILE, folder / file_name
    _check_file(source)  # before the (large) token file is read
    captions, references = read_token_file(token_file)
    rows = []
    skipped_own = removed = 0
    if name == "flickr8k-expert":
        for number, fields in _annotation_lines(source, captions, token_file):
            image, caption_id = fields[0], fields[1]
            ratings = [
                _rating(text, source, number, f"expert rating {k}", 1.0, 4.0) for k, text in enumerate(fields[2:], 1)
            ]
            own = references.get(_image_group(image))
            if own is None:
                raise Flickr8kError(
                    f"{source}, line {number}: image {image!r} has no reference captions in {token_file}."
                )
            if captions[caption_id] in own:
                skipped_own += 1
                continue
            rows.append((number, image, caption_id, ratings))
        remaining = {group: tuple(captions_of) for group, captions_of in references.items()}
    else:
        left = {group: list(captions_of) for group, captions_of in references.items()}
        for number, fields in _annotation_lines(source, captions, token_file):
            image, caption_id = fields[0], fields[1]
            fraction = _rating(fields[2], source, number, "fraction of yes", 0.0, 1.0)
            yes, no = _count(fields[3], source, number, "n yes"), _count(fields[4], source, number, "n no")
            if not math.isnan(fraction) and yes + no > 0 and abs(fraction - yes / (yes + no)) > FRACTION_TOLERANCE:
                raise Flickr8kError(
                    f"{source}, line {number}: the fraction of yes {fields[2]} is not n yes / (n yes + n no) ="
                    f" {yes}/{yes + no}."
                )
            group = _image_group(image)
            if group not in left:
                raise Flickr8kError(
                    f"{source}, line {number}: image {image!r} has no reference captions in {token_file}."
                )
            if captions[caption_id] in left[group]:
                left[group].remove(captions[caption_id])
                removed += 1
            rows.append((number, image, caption_id, [fraction]))
        remaining = {group: tuple(captions_of) for group, captions_of in left.items()}
    items, judgments = [], []
    skipped_nan = 0
    for number, image, caption_id, ratings in rows:
        kept = [(rater, rating) for rater, rating in enumerate(ratings, start=1) if not math.isnan(rating)]
        skipped_nan += len(ratings) - len(kept)
        if not kept:
            continue
        own = remaining[_image_group(image)]
        if not own:
            raise Flickr8kError(
                f"{source}, line {number}: every reference caption of image {image!r} is rated in {source.name}, so"
                " none is left for RefCLIP-S."
            )
        judgments.extend(Judgment(len(items), rater, rating) for rater, rating in kept)
        items.append(Item(number, image, caption_id, captions[caption_id], own))
    if len(judgments) < 2:
        raise Flickr8kError(f"{source}: {len(judgments)} judgment(s) left after the exclusions; at least 2 are needed.")
    return Flickr8kJudgments(
        name, variant, folder, source, tuple(items), tuple(judgments), skipped_own, removed, skipped_nan
    )
