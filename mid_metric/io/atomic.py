"""The one atomic writer: a temporary file beside the target, then a rename; permissions as ``open()`` gives."""

from __future__ import annotations

import contextlib
import os
import secrets
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Optional, Union

__all__ = [
    "create_temporary_file",
    "atomic_output",
]

PathLike = Union[str, "os.PathLike[str]"]


def create_temporary_file(target: PathLike) -> tuple[int, Path]:
    """Create a new, empty temporary file next to ``target``, with the permissions ``open(target, "w")`` would give.

    The file is created with mode ``0o666`` filtered by the process umask, as :func:`open` creates files (unlike
    :func:`tempfile.mkstemp`, whose files are always ``0o600``). When ``target`` exists already, its permission
    bits are copied instead, since ``open(target, "w")`` keeps them. The name is ``.<target name>.<random>.tmp``
    followed by ``target``'s suffix, so writers that look at the suffix still work.

    Args:
        target: The file that the temporary file will replace (its folder must exist).

    Returns:
        ``(descriptor, path)``: a descriptor open for binary writing (close it, or wrap it with
        :func:`os.fdopen`), and the path of the new file.

    Raises:
        OSError: If the file cannot be created (e.g. the folder does not exist or is not writable).
    """
    target = Path(target)
    folder = target.parent if str(target.parent) else Path(".")
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0) | getattr(os, "O_CLOEXEC", 0)
    for _ in range(100):
        path = folder / f".{target.name}.{secrets.token_hex(6)}.tmp{target.suffix}"
        try:
            descriptor = os.open(path, flags, 0o666)  # the kernel applies the umask, as for open()
        except FileExistsError:
            continue
        try:
            mode: Optional[int] = stat.S_IMODE(os.stat(target).st_mode)
        except OSError:
            mode = None  # no file to replace: keep the umask's mode
        if mode is not None:
            try:
                os.chmod(path, mode)
            except OSError:
                pass
        return descriptor, path
    raise FileExistsError(f"Cannot create a temporary file next to {str(target)!r}: every name tried exists.")


@contextlib.contextmanager
def atomic_output(path: PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; move it onto ``path`` only if the block succeeds.

    A reader never sees a half-written file, and a failure leaves no output behind (nor the temporary file). The
    temporary file keeps ``path``'s suffix, so writers that look at it still work, and it gets the permissions
    that ``open(path, "w")`` would give (see :func:`create_temporary_file`): the umask's for a new file, the old
    file's for a replaced one.

    Raises:
        ValueError: If ``path`` is empty or a folder, or the folder of ``path`` does not exist.

    Example:
        >>> import tempfile
        >>> target = Path(tempfile.mkdtemp()) / "out.txt"
        >>> with atomic_output(target) as tmp:
        ...     _ = tmp.write_text("done")
        >>> target.read_text()
        'done'
    """
    if not os.fspath(path):
        raise ValueError("Cannot write to an empty path: give a file name.")
    target = Path(path)
    if target.is_dir():
        raise ValueError(f"Cannot write {str(target)!r}: it is a folder; give a file name.")
    folder = target.parent if str(target.parent) else Path(".")
    if not folder.is_dir():
        raise ValueError(f"Cannot write {str(target)!r}: folder {str(folder)!r} does not exist.")
    handle, tmp = create_temporary_file(target)
    os.close(handle)
    try:
        yield tmp
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            tmp.unlink()
