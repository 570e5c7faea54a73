r"""Reading tables: one set of rules for every CSV, TSV and JSON Lines file the package reads.

Pairs files (:mod:`~mid_metric.io.pairs`), per-sample score tables and judgment tables
(:mod:`~mid_metric.io.judgments`) and the Flickr8K files (:mod:`~mid_metric.io.flickr8k`) are all read here, so
that a file means the same to each of them. The rules:

- **Text.** The file is UTF-8; a UTF-8 byte-order mark at its start is skipped. Other bytes are an error that names
  the line. Lines end with LF, CR LF or CR.
- **Format by suffix.** ``.csv`` is comma-separated with RFC 4180 quoting, ``.tsv`` is tab-separated with no
  quoting at all, ``.jsonl`` and ``.ndjson`` hold one JSON object per line.
- **Header.** The first non-empty line of a CSV or TSV file names the columns. A repeated column name is an error.
- **Cells.** Every row has exactly as many cells as the header; one more or one less is an error that names the
  line (an unquoted comma in a CSV caption is the usual cause). Cells are kept as written (no space is stripped).
- **CSV quoting** (RFC 4180). A field is quoted when it starts with ``"``; a ``"`` inside it is written ``""``, and
  the closing quote is followed by a comma or the end of the line. A quote inside an unquoted field, text after a
  closing quote, or a quote that is never closed is an error that names the line where the field begins, so an
  unbalanced quote never merges rows. A quoted field may hold line breaks (RFC 4180 allows them, and
  ``csv.writer`` writes them): each becomes ``"\n"``, and the record is numbered by the line it starts on.
- **TSV has no quoting.** A ``"`` is text wherever it is, so a caption may start with one.
- **JSON Lines.** Each non-blank line is one JSON object; a key repeated in one object (at any depth) is an error.
- **Blank lines** (empty ones in CSV and TSV, white-space-only ones in JSON Lines) are skipped and still counted.

Every error is raised as the exception class the caller passes (each reader has its own), with the file and, for
a bad line, its number in the message. Nothing here imports numpy, torch or PIL.
"""

from __future__ import annotations

import errno
import json
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Union

__all__ = [
    "TABLE_FORMATS",
    "Table",
    "check_input_file",
    "table_format",
    "text_lines",
    "json_object",
    "read_table_rows",
]

PathLike = Union[str, "os.PathLike[str]"]

#: The table format of each suffix (compared in lower case).
TABLE_FORMATS = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".ndjson": "jsonl"}

_BOM = "\ufeff"

_LINE_BREAK = re.compile(r"\r\n|\r|\n")


@dataclass(frozen=True)
class Table:
    """The rows of a CSV/TSV/JSON Lines table.

    Attributes:
        source: The file.
        columns: The column names (of the header, or of the first JSON object).
        rows: ``(line number, record)`` per data row, in file order; a record maps each column to its cell (CSV and
            TSV: text) or each key to its JSON value.
    """

    source: Path
    columns: tuple[str, ...]
    rows: tuple[tuple[int, dict[str, Any]], ...]

    def __len__(self) -> int:
        return len(self.rows)


def check_input_file(path: Path, what: str, error: type[Exception]) -> None:
    """Raise ``error`` unless ``path`` can be opened as a file: it must exist, and not be a folder or a link loop.

    Args:
        path: The file.
        what: What the file is, first in the message (``"Pairs file"``).
        error: The exception raised.

    Example:
        >>> import tempfile
        >>> try:
        ...     check_input_file(Path(tempfile.mkdtemp()), "Pairs file", ValueError)
        ... except ValueError as err:
        ...     print(str(err).rsplit("' ", 1)[-1])
        is a folder, not a file.
    """
    _check_reachable(path, what, error)
    if path.is_dir():
        raise error(f"{what} {str(path)!r} is a folder, not a file.")


def _check_reachable(path: Path, what: str, error: type[Exception]) -> None:
    """Raise ``error`` naming why ``path`` cannot be reached: a link loop, a dangling link, missing, unreadable."""
    try:
        path.stat()
    except OSError as err:
        if err.errno == errno.ELOOP:
            raise error(f"{what} {str(path)!r} is a symbolic link loop.") from None
        if path.is_symlink() and err.errno == errno.ENOENT:
            raise error(f"{what} {str(path)!r} is a symbolic link to a path that does not exist.") from None
        if err.errno in (errno.ENOENT, errno.ENOTDIR):
            raise error(f"{what} {str(path)!r} does not exist.") from None
        raise error(f"{what} {str(path)!r} cannot be read ({err.strerror or err}).") from None


def check_input_folder(path: Path, what: str, error: type[Exception], holds: str) -> None:
    """Raise ``error`` unless ``path`` is a folder (through links): missing, a link loop and a file are told apart.

    Args:
        path: The folder.
        what: What the folder is, first in the message (``"The Flickr8K root"``).
        error: The exception raised.
        holds: What the folder must hold, for the message of a path that is not a folder.

    Example:
        >>> import os, tempfile
        >>> loop = Path(tempfile.mkdtemp()) / "loop"
        >>> os.symlink(loop, loop)
        >>> try:
        ...     check_input_folder(loop, "Root", ValueError, "the data")
        ... except ValueError as err:
        ...     print(str(err).rsplit("' ", 1)[-1])
        is a symbolic link loop.
    """
    _check_reachable(path, what, error)
    if not path.is_dir():
        raise error(f"{what} {str(path)!r} is a file, not a folder; it must hold {holds}.")


def table_format(path: PathLike) -> Optional[str]:
    """``"csv"``, ``"tsv"`` or ``"jsonl"`` by the file's suffix, ``None`` for another suffix.

    Example:
        >>> table_format("ratings.TSV"), table_format("pairs.ndjson"), table_format("feats.npz")
        ('tsv', 'jsonl', None)
    """
    return TABLE_FORMATS.get(Path(path).suffix.lower())


def text_lines(path: Path, error: type[Exception]) -> list[str]:
    r"""The lines of a UTF-8 text file, without their line ends (line ``n`` is item ``n - 1``).

    A byte-order mark at the start is skipped; LF, CR LF and CR all end a line.

    Raises:
        error: If the file cannot be read, or holds bytes that are not UTF-8 (the message names the line).

    Example:
        >>> import tempfile
        >>> path = Path(tempfile.mkdtemp()) / "t.txt"
        >>> _ = path.write_bytes(b"\xef\xbb\xbfa\r\nb\rc\n")
        >>> text_lines(path, ValueError)
        ['a', 'b', 'c']
        >>> _ = path.write_bytes(b"ok\ncaf\xe9\n")
        >>> try:
        ...     text_lines(path, ValueError)
        ... except ValueError as err:
        ...     print(str(err).split(", ", 1)[1])
        line 2: byte 0xe9 is not UTF-8 text; save the file as UTF-8.
    """
    try:
        data = path.read_bytes()
    except OSError as err:
        raise error(f"{path} cannot be read ({err.strerror or err}).") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = _LINE_BREAK.split(data[: err.start].decode("utf-8"))
        raise error(
            f"{path}, line {len(line)}: byte 0x{data[err.start]:02x} is not UTF-8 text; save the file as UTF-8."
        ) from None
    if text.startswith(_BOM):
        text = text[len(_BOM) :]
    lines = _LINE_BREAK.split(text)
    if lines and lines[-1] == "":  # the last line's end
        lines.pop()
    return lines


class _RepeatedKey(Exception):
    pass


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    record: dict[str, Any] = {}
    for key, value in pairs:
        if key in record:
            raise _RepeatedKey(key)
        record[key] = value
    return record


def json_object(text: str, where: str, error: type[Exception]) -> dict[str, Any]:
    """Parse one JSON Lines line, which must be a JSON object with no key repeated in any of its objects.

    Args:
        text: The line.
        where: The file and line, for the message (``"FILE, line N"``).
        error: The exception raised for a bad line.

    Example:
        >>> json_object('{"a": {"b": 1}}', "t.jsonl, line 1", ValueError)
        {'a': {'b': 1}}
        >>> try:
        ...     json_object('{"a": 1, "a": 2}', "t.jsonl, line 1", ValueError)
        ... except ValueError as err:
        ...     print(err)
        t.jsonl, line 1: key 'a' appears twice in one JSON object.
    """
    try:
        record = json.loads(text, object_pairs_hook=_unique_keys)
    except json.JSONDecodeError as err:
        raise error(f"{where}: not valid JSON ({err.msg}).") from None
    except _RepeatedKey as err:
        raise error(f"{where}: key {err.args[0]!r} appears twice in one JSON object.") from None
    except RecursionError:
        raise error(f"{where}: the JSON is nested too deeply.") from None
    if not isinstance(record, dict):
        raise error(f"{where}: each line must be a JSON object.")
    return record


def _csv_cells(lines: list[str], path: Path, error: type[Exception]) -> Iterator[tuple[int, list[str]]]:
    """Yield ``(line number where the record starts, cells)`` for each non-empty record (RFC 4180)."""
    index = 0
    while index < len(lines):
        start = index + 1
        text, index = lines[index], index + 1
        if not text:
            continue
        if '"' not in text:  # the common case: no quoted field
            yield start, text.split(",")
            continue
        cells: list[str] = []
        position = 0
        while True:  # one cell per turn
            if text.startswith('"', position):
                opened = index  # the line where the quote is, 1-based
                parts = []
                position += 1
                while True:
                    quote = text.find('"', position)
                    if quote < 0:  # the field goes on on the next line
                        if index >= len(lines):
                            raise error(
                                f"{path}, line {opened}: unbalanced quote: the quoted field that starts here is never"
                                ' closed (write a " inside a quoted field as "").'
                            )
                        parts.extend((text[position:], "\n"))
                        text, position, index = lines[index], 0, index + 1
                        continue
                    parts.append(text[position:quote])
                    if text.startswith('"', quote + 1):
                        parts.append('"')
                        position = quote + 2
                        continue
                    position = quote + 1
                    break
                cells.append("".join(parts))
                if position == len(text):
                    break
                if text[position] != ",":
                    raise error(
                        f"{path}, line {opened}: text after the closing quote of a quoted field"
                        f"{'' if opened == index else f' (closed on line {index})'}; a quoted field ends with"
                        ' its quote and a comma or the end of the line (write a " inside it as "").'
                    )
                position += 1
            else:
                comma = text.find(",", position)
                cell = text[position:] if comma < 0 else text[position:comma]
                if '"' in cell:
                    raise error(
                        f"{path}, line {index}: a quote inside the unquoted field {cell!r}; put the whole field in"
                        ' double quotes and write each " inside it as "".'
                    )
                cells.append(cell)
                if comma < 0:
                    break
                position = comma + 1
        yield start, cells


def _tsv_cells(lines: list[str]) -> Iterator[tuple[int, list[str]]]:
    for number, text in enumerate(lines, start=1):
        if text:
            yield number, text.split("\t")


def _cells_text(count: int) -> str:
    return f"{count} cell{'' if count == 1 else 's'}"


def _header_table(path: Path, cells: Iterator[tuple[int, list[str]]], kind: str, error: type[Exception]) -> Table:
    header = next(cells, None)
    if header is None:
        raise error(f"{path} is empty: a header row with the column names is needed.")
    header_line, columns = header
    seen: dict[str, int] = {}
    for position, name in enumerate(columns, start=1):
        if name in seen:
            raise error(
                f"{path}, line {header_line}: column {name!r} is named twice in the header (columns {seen[name]}"
                f" and {position}); each column name must be unique."
            )
        seen[name] = position
    rows = []
    for line, values in cells:
        if len(values) != len(columns):
            hint = ""
            if len(values) > len(columns):
                hint = (
                    "; a comma inside a field needs the field in double quotes"
                    if kind == "csv"
                    else "; a TSV field cannot hold a tab"
                )
            raise error(
                f"{path}, line {line}: {_cells_text(len(values))}, but the header has {len(columns)} columns{hint}."
            )
        rows.append((line, dict(zip(columns, values))))
    return Table(path, tuple(columns), tuple(rows))


def read_table_rows(path: Path, error: type[Exception]) -> Table:
    r"""Read a CSV, TSV or JSON Lines table by the rules of this module (see the module docstring).

    The file's existence is checked by the caller (:func:`check_input_file`). A table with a header and no row,
    or a JSON Lines file with no object, gives a :class:`Table` with no rows.

    Args:
        path: The file; its suffix gives the format.
        error: The exception raised for any problem, with the file and line in its message.

    Example:
        >>> import tempfile
        >>> path = Path(tempfile.mkdtemp()) / "pairs.csv"
        >>> _ = path.write_text('image,caption\na.png,"A man, riding a horse"\nb.png,A dog\n')
        >>> table = read_table_rows(path, ValueError)
        >>> table.columns, table.rows[0]
        (('image', 'caption'), (2, {'image': 'a.png', 'caption': 'A man, riding a horse'}))
        >>> _ = path.write_text("image,caption\na.png,A man, riding a horse\n")
        >>> try:
        ...     read_table_rows(path, ValueError)
        ... except ValueError as err:
        ...     print(str(err).split(", ", 1)[1])
        line 2: 3 cells, but the header has 2 columns; a comma inside a field needs the field in double quotes.
    """
    kind = table_format(path)
    if kind is None:
        raise error(
            f"{path}: unsupported table type {path.suffix or '(no suffix)'!r}; use .csv, .tsv, .jsonl or .ndjson."
        )
    lines = text_lines(path, error)
    if kind == "csv":
        return _header_table(path, _csv_cells(lines, path, error), kind, error)
    if kind == "tsv":
        return _header_table(path, _tsv_cells(lines), kind, error)
    rows = [
        (number, json_object(text, f"{path}, line {number}", error))
        for number, text in enumerate(lines, start=1)
        if text.strip()
    ]
    return Table(path, tuple(rows[0][1]) if rows else (), tuple(rows))
