"""The one rule for output files: checked before any work, written atomically, links kept, nothing else replaced.

Every file that mid-metric writes (reference statistics, per-sample tables, the demo's figure) goes through
:func:`output_target`, then :func:`atomic_output` or :func:`atomic_write_bytes`:

- a **symbolic link** is written through: the file it points to (at the end of its chain of links) is replaced, in
  its own folder, and the link stays a link;
- a path that exists and is **not a regular file** (a folder, a FIFO, a socket, a character or block device such as
  ``/dev/null``) is refused with one clear line: a rename would replace the node itself;
- a **symbolic link loop** is reported as a loop, not as a missing file or folder;
- the file is written to a temporary name beside its target, with the permissions that ``open(path, "w")`` would
  give, and renamed onto it only when complete: a reader never sees half a file, and a failure leaves none.

Standard output (``-``) is no file: the commands that may print a table there decide so themselves
(:data:`STDOUT`, :func:`atomic_text_output`).
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import stat
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Optional, TextIO, Union

__all__ = [
    "STDOUT",
    "OutputPathError",
    "OutputIsAFolderError",
    "OutputFolderNotFoundError",
    "output_target",
    "create_temporary_file",
    "atomic_output",
    "atomic_write_bytes",
    "atomic_text_output",
]

PathLike = Union[str, "os.PathLike[str]"]

#: The output name that means standard output, for the tables that may go there.
STDOUT = "-"


class OutputPathError(ValueError):
    """An output path that cannot be written: empty, a symbolic link loop, or an existing non-regular file."""


class OutputIsAFolderError(OutputPathError, IsADirectoryError):
    """An output path that is a folder (also an :class:`IsADirectoryError`)."""


class OutputFolderNotFoundError(OutputPathError, FileNotFoundError):
    """An output path whose folder does not exist (also a :class:`FileNotFoundError`)."""


#: What each kind of non-regular file is called in an error message.
_KINDS = (
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
)


def _kind(mode: int) -> str:
    for test, name in _KINDS:
        if test(mode):
            return name
    return "not a regular file"  # pragma: no cover - doors, ports, whiteouts


def output_target(path: PathLike) -> Path:
    """Return the file that writing ``path`` replaces, after checking that it may be replaced.

    That file is ``path`` itself, or, when ``path`` is a symbolic link (or lies under linked folders), the real
    path it leads to, which need not exist yet (a link to a new file creates that file, as :func:`open` does).

    Args:
        path: The output path as the user gave it.

    Returns:
        The path of the file to write: ``path`` as it is, or the real path a symbolic link leads to.

    Raises:
        OutputPathError: If ``path`` is empty, is a symbolic link loop, or exists and is not a regular file (a FIFO,
            a socket, a device).
        OutputIsAFolderError: If ``path`` is a folder.
        OutputFolderNotFoundError: If the folder the file would go in does not exist.

    Example:
        >>> import tempfile
        >>> folder = Path(tempfile.mkdtemp())
        >>> (folder / "data.csv").write_text("old")
        3
        >>> (folder / "latest.csv").symlink_to("data.csv")
        >>> output_target(folder / "latest.csv") == (folder / "data.csv").resolve()
        True
        >>> try:
        ...     output_target(folder)
        ... except OutputIsAFolderError as error:
        ...     print(str(error).rsplit(": ", 1)[-1])
        it is a folder; give a file name.
    """
    text = os.fspath(path)
    if not text:
        raise OutputPathError("Cannot write to an empty path: give a file name.")
    given = Path(text)
    where = f"Cannot write {text!r}"
    try:
        found: Optional[os.stat_result] = os.stat(given)  # follows the links
    except OSError as err:
        if err.errno == errno.ELOOP:
            raise OutputPathError(f"{where}: it is a symbolic link loop.") from None
        if err.errno == errno.ENOTDIR:
            raise OutputFolderNotFoundError(f"{where}: a part of its folder is a file, not a folder.") from None
        found = None  # a new file, or a link to a new file
    target = given
    if given.is_symlink():  # write the file at the end of the links, in its own folder
        target = Path(os.path.realpath(given))
        where = f"Cannot write {text!r} (a link to {str(target)!r})"
    if found is not None:
        if stat.S_ISDIR(found.st_mode):
            raise OutputIsAFolderError(f"{where}: it is a folder; give a file name.")
        if not stat.S_ISREG(found.st_mode):
            raise OutputPathError(
                f"{where}: it is {_kind(found.st_mode)}, not a regular file; mid-metric writes files through a"
                " temporary file and a rename, which would replace it. Give a file name."
            )
    folder = target.parent if str(target.parent) else Path(".")
    if not folder.is_dir():
        raise OutputFolderNotFoundError(f"{where}: folder {str(folder)!r} does not exist.")
    return target


def create_temporary_file(target: PathLike) -> tuple[int, Path]:
    """Create a new, empty temporary file next to ``target``, with the permissions ``open(target, "w")`` would give.

    The file is created with mode ``0o666`` filtered by the process umask, as :func:`open` creates files (unlike
    :func:`tempfile.mkstemp`, whose files are always ``0o600``). When ``target`` exists already, its permission
    bits are copied instead, since ``open(target, "w")`` keeps them. The name is ``.<target name>.<random>.tmp``
    followed by ``target``'s suffix, so writers that look at the suffix still work.

    This is the low-level step: ``target`` is taken as it is. Writers call :func:`atomic_output` or
    :func:`atomic_write_bytes`, which resolve links and refuse what is not a regular file first.

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


def _sync(path: Path) -> None:
    """Flush a finished file to the disk before it is renamed into place (best effort where unsupported)."""
    try:
        descriptor = os.open(path, os.O_RDONLY | getattr(os, "O_BINARY", 0))
    except OSError:  # pragma: no cover - the file was just written
        return
    try:
        os.fsync(descriptor)
    except OSError:  # pragma: no cover - file systems without fsync
        pass
    finally:
        os.close(descriptor)


@contextlib.contextmanager
def atomic_output(path: PathLike) -> Iterator[Path]:
    """Yield a temporary path beside the file ``path`` writes; move it onto that file only if the block succeeds.

    The target is :func:`output_target`'s: ``path``, or the file a symbolic link ``path`` leads to (the link
    stays). A reader never sees a half-written file, and a failure leaves no output behind (nor the temporary
    file). The temporary file keeps the target's suffix, so writers that look at it still work, and it gets the
    permissions that ``open(path, "w")`` would give (see :func:`create_temporary_file`).

    Raises:
        OutputPathError: As :func:`output_target` (before the block runs): an empty path, a link loop, a folder
            (:class:`OutputIsAFolderError`), a FIFO, socket or device, or a missing folder
            (:class:`OutputFolderNotFoundError`).

    Example:
        >>> import tempfile
        >>> target = Path(tempfile.mkdtemp()) / "out.txt"
        >>> with atomic_output(target) as tmp:
        ...     _ = tmp.write_text("done")
        >>> target.read_text()
        'done'
    """
    target = output_target(path)
    handle, tmp = create_temporary_file(target)
    os.close(handle)
    try:
        yield tmp
        _sync(tmp)
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            tmp.unlink()


def atomic_write_bytes(path: PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically, by the rules of :func:`atomic_output`; return the file written.

    Example:
        >>> import tempfile
        >>> folder = Path(tempfile.mkdtemp())
        >>> (folder / "link.bin").symlink_to("real.bin")  # a link to a file not written yet
        >>> atomic_write_bytes(folder / "link.bin", b"data").name, (folder / "real.bin").read_bytes()
        ('real.bin', b'data')
        >>> (folder / "link.bin").is_symlink()
        True
    """
    target = output_target(path)
    with atomic_output(target) as tmp:
        with open(tmp, "wb") as stream:
            stream.write(data)
    return target


@contextlib.contextmanager
def atomic_text_output(path: PathLike, stdout_allowed: bool = True) -> Iterator[TextIO]:
    r"""Yield a text stream for a table: standard output for ``-``, else a file written by :func:`atomic_output`.

    The file is UTF-8 with no newline translation (``newline=""``, as :mod:`csv` wants); standard output is left
    open.

    Args:
        path: The output path, or ``-``.
        stdout_allowed: Whether ``-`` means standard output; when ``False``, ``-`` is an ordinary file name.

    Example:
        >>> with atomic_text_output("-") as stream:
        ...     _ = stream.write("row,value\n")
        row,value
    """
    if stdout_allowed and os.fspath(path) == STDOUT:
        yield sys.stdout
        sys.stdout.flush()
        return
    with atomic_output(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as stream:
        yield stream
