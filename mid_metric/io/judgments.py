"""Tables of per-sample scores and of human judgments (CSV, TSV, JSON Lines), joined on a key column.

``mid-metric correlate`` reads two tables: per-sample scores (the CSV that ``mid-metric score --per-sample`` and
``mid-metric benchmark --per-sample`` write, or any table with a key and numeric score columns) and human
judgments (a key and a numeric rating column), read by the rules of :mod:`~mid_metric.io.tables` (RFC 4180
quoting in CSV, none in TSV, as many cells as header columns, no repeated column or JSON key, UTF-8). Every row is
kept with the line it starts on, so that a bad value is reported as ``FILE, line N``.

The join:

- each key names at most one row of scores (a repeated key there is an error), while judgments may repeat a key:
  several ratings of one sample each count, joined to the same score;
- a judgment whose rating is empty, ``NaN`` or ``null`` is skipped and counted;
- a key found in only one of the two tables is an error that gives the count and the first keys, unless
  ``allow_missing=True``, which keeps the keys present in both;
- keys are compared as text; a JSON number ``3`` (or ``3.0``) is the key ``"3"``, as in a CSV file.

Nothing here imports numpy, torch or scipy.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union

from mid_metric.io.tables import Table, check_input_file, read_table_rows

__all__ = ["JudgmentsError", "Table", "JoinedTable", "read_table", "join_on_key", "MAX_KEYS_SHOWN"]

PathLike = Union[str, "os.PathLike[str]"]

#: How many missing keys an error message shows.
MAX_KEYS_SHOWN = 5


class JudgmentsError(ValueError):
    """A scores or judgments table cannot be used; the message names the file and, where it applies, the line."""


@dataclass(frozen=True)
class JoinedTable:
    """Judgments joined with their scores: one entry per kept judgment, in the judgments' order.

    Attributes:
        keys: The key of each judgment.
        scores: Per score column, the score of each judgment.
        ratings: The rating of each judgment.
        skipped_nan: Judgments left out because their rating is missing or NaN.
        missing_scores: Keys of judgments without a row of scores (left out with ``allow_missing``).
        missing_judgments: Keys of score rows without a judgment.
    """

    keys: tuple[str, ...]
    scores: dict[str, tuple[float, ...]]
    ratings: tuple[float, ...]
    skipped_nan: int
    missing_scores: tuple[str, ...]
    missing_judgments: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.keys)


def read_table(path: PathLike, what: str = "Table") -> Table:
    r"""Read a CSV (``.csv``), TSV (``.tsv``) or JSON Lines (``.jsonl``, ``.ndjson``) table with line numbers.

    Args:
        path: The file.
        what: What the file is, for the messages (``"Scores"``, ``"Judgments"``).

    Raises:
        JudgmentsError: If the file is missing, of another type, holds no rows, or breaks a rule of
            :mod:`~mid_metric.io.tables` (a row with more or fewer cells than the header, a bad quote, a repeated
            column or JSON key, bytes that are not UTF-8); the message names the file and the line.

    Example:
        >>> import tempfile
        >>> path = Path(tempfile.mkdtemp()) / "ratings.tsv"
        >>> _ = path.write_text("id\trating\na\t3\nb\t4\n")
        >>> table = read_table(path)
        >>> table.columns, table.rows[1]
        (('id', 'rating'), (3, {'id': 'b', 'rating': '4'}))
    """
    source = Path(path)
    check_input_file(source, f"{what} file", JudgmentsError)
    table = read_table_rows(source, JudgmentsError)
    if not table.rows:
        raise JudgmentsError(f"{source} holds no rows.")
    return table


def _check_columns(table: Table, names: Sequence[str], option: str) -> None:
    for name in names:
        if name not in table.columns and not all(name in record for _, record in table.rows):
            found = ", ".join(repr(column) for column in table.columns) or "none"
            raise JudgmentsError(
                f"{table.source}: no column {name!r} (columns found: {found}); choose the column with {option}."
            )


def _cell(table: Table, line: int, record: dict[str, Any], column: str) -> Any:
    if column not in record:
        raise JudgmentsError(f"{table.source}, line {line}: no value in column {column!r}.")
    return record[column]


def _key(table: Table, line: int, record: dict[str, Any], column: str) -> str:
    value = _cell(table, line, record, column)
    if isinstance(value, bool) or value is None or isinstance(value, (dict, list)):
        raise JudgmentsError(f"{table.source}, line {line}: the key in column {column!r} is {json.dumps(value)}.")
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    text = str(value).strip()
    if not text:
        raise JudgmentsError(f"{table.source}, line {line}: empty key in column {column!r}.")
    return text


def _number(value: Any) -> float:
    """The value as a float: NaN for an empty cell or null; ``ValueError`` when it is not a number."""
    if value is None:
        return math.nan
    if isinstance(value, bool):
        raise ValueError(value)
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        text = value.strip()
        return math.nan if not text else float(text)
    raise ValueError(value)


def _numeric_cell(table: Table, line: int, record: dict[str, Any], column: str, what: str) -> tuple[float, Any]:
    """The cell of ``column`` as a number (NaN for an empty one), and the cell as read."""
    value = _cell(table, line, record, column)
    try:
        return _number(value), value
    except ValueError:
        raise JudgmentsError(
            f"{table.source}, line {line}: the {what} in column {column!r} is not a number: {value!r}."
        ) from None


def _score(table: Table, line: int, record: dict[str, Any], column: str) -> float:
    number, value = _numeric_cell(table, line, record, column, "score")
    if not math.isfinite(number):
        raise JudgmentsError(
            f"{table.source}, line {line}: the score in column {column!r} is not a finite number: {value!r}."
        )
    return number


def _rating(table: Table, line: int, record: dict[str, Any], column: str) -> float:
    number, _ = _numeric_cell(table, line, record, column, "rating")  # NaN: no rating, skipped by the caller
    if math.isinf(number):
        raise JudgmentsError(f"{table.source}, line {line}: the rating in column {column!r} is infinite.")
    return number


def _shown(keys: Sequence[str]) -> str:
    first = ", ".join(repr(key) for key in keys[:MAX_KEYS_SHOWN])
    return first + (", ..." if len(keys) > MAX_KEYS_SHOWN else "")


def join_on_key(
    scores: Table,
    judgments: Table,
    key: str,
    score_columns: Sequence[str],
    rating_column: str,
    allow_missing: bool = False,
) -> JoinedTable:
    r"""Join each judgment with the row of scores of the same key (see the module docstring for the rules).

    Args:
        scores: The per-sample scores.
        judgments: The human judgments.
        key: The key column, in both tables.
        score_columns: The score columns to take from ``scores``.
        rating_column: The rating column of ``judgments``.
        allow_missing: Keep only the keys found in both tables instead of failing.

    Raises:
        JudgmentsError: If a column is missing, a key repeats in ``scores``, a value is not a number, a key is in
            only one table (unless ``allow_missing``), or no judgment is left.

    Example:
        >>> import tempfile
        >>> folder = Path(tempfile.mkdtemp())
        >>> _ = (folder / "scores.csv").write_text("row,pmi\n1,0.5\n2,-0.25\n")
        >>> _ = (folder / "judgments.jsonl").write_text('{"row": 2, "r": 1}\n{"row": 1, "r": 4}\n{"row": 1, "r": 3}\n')
        >>> joined = join_on_key(read_table(folder / "scores.csv"), read_table(folder / "judgments.jsonl"),
        ...                      "row", ["pmi"], "r")
        >>> joined.keys, joined.scores["pmi"], joined.ratings
        (('2', '1', '1'), (-0.25, 0.5, 0.5), (1.0, 4.0, 3.0))
    """
    _check_columns(scores, [key], "--key")
    _check_columns(judgments, [key], "--key")
    _check_columns(scores, score_columns, "--score-column")
    _check_columns(judgments, [rating_column], "--rating-column")
    by_key: dict[str, tuple[int, tuple[float, ...]]] = {}
    for line, record in scores.rows:
        name = _key(scores, line, record, key)
        if name in by_key:
            raise JudgmentsError(
                f"{scores.source}, line {line}: key {name!r} appears again (first on line {by_key[name][0]}); each"
                f" key must name one row of scores. Choose a unique key column with --key."
            )
        by_key[name] = (line, tuple(_score(scores, line, record, column) for column in score_columns))
    keys, values, ratings = [], [], []
    missing: list[str] = []
    judged: set[str] = set()
    skipped = 0
    for line, record in judgments.rows:
        name = _key(judgments, line, record, key)
        rating = _rating(judgments, line, record, rating_column)
        judged.add(name)
        if name not in by_key:
            missing.append(name)
            continue
        if math.isnan(rating):
            skipped += 1
            continue
        keys.append(name)
        values.append(by_key[name][1])
        ratings.append(rating)
    unjudged = [name for name in by_key if name not in judged]
    missing_rows = len(missing)
    missing = list(dict.fromkeys(missing))
    if (missing or unjudged) and not allow_missing:
        parts = []
        if missing:
            parts.append(
                f"{missing_rows} row(s) of {judgments.source} ({len(missing)} key(s)) have no row in {scores.source}"
                f" (first keys: {_shown(missing)})"
            )
        if unjudged:
            parts.append(
                f"{len(unjudged)} row(s) of {scores.source} have no judgment in {judgments.source} (first keys:"
                f" {_shown(unjudged)})"
            )
        raise JudgmentsError(
            f"The tables do not match on column {key!r}: {'; '.join(parts)}. Pass --allow-missing to correlate the"
            " rows found in both."
        )
    if len(keys) < 2:
        raise JudgmentsError(
            f"Only {len(keys)} judgment(s) of {judgments.source} have a score and a rating; Kendall's tau needs at"
            " least 2."
        )
    columns = {column: tuple(row[index] for row in values) for index, column in enumerate(score_columns)}
    return JoinedTable(tuple(keys), columns, tuple(ratings), skipped, tuple(missing), tuple(unjudged))
