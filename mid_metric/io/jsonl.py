"""JSON Lines tables: one JSON object per non-blank line, with line-numbered errors."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

__all__ = ["json_objects"]


def json_objects(path: Path, error: type[Exception]) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield ``(line number, object)`` for every non-blank line of a JSON Lines file (a BOM is skipped).

    Args:
        path: The file.
        error: The exception raised for a line that is not a JSON object, with the file and line in its message.

    Raises:
        error: If a line is not valid JSON or not a JSON object.

    Example:
        >>> import tempfile
        >>> path = Path(tempfile.mkdtemp()) / "t.jsonl"
        >>> _ = path.write_text('{"a": 1}' + chr(10) * 2 + "[2]" + chr(10))
        >>> rows = json_objects(path, ValueError)
        >>> next(rows)
        (1, {'a': 1})
        >>> try:
        ...     next(rows)
        ... except ValueError as error:
        ...     print(str(error).rsplit(", ", 1)[-1])
        line 3: each line must be a JSON object.
    """
    with open(path, encoding="utf-8-sig") as handle:
        for line_number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise error(f"{path}, line {line_number}: not valid JSON ({err.msg}).") from None
            if not isinstance(record, dict):
                raise error(f"{path}, line {line_number}: each line must be a JSON object.")
            yield line_number, record
