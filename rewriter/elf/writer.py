"""Atomic file output: a temporary file in the target directory, fsync, rename.

A run killed at any moment leaves the target either as it was or complete; never partial.
The temporary name starts with ``.`` and ends with ``.mcountrw-tmp`` so a leftover from a
killed run is easy to recognise and is never mistaken for output.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

from rewriter.errors import OutputError

TMP_SUFFIX = ".mcountrw-tmp"


def atomic_write(path: Path, data: bytes | bytearray | memoryview, mode: int | None = None) -> None:
    """Replace ``path`` with ``data``. ``mode`` defaults to the existing file's, else 0o644."""
    commit(write_temp(path, data, mode))


class Pending:
    """A complete, fsync'ed temporary file waiting to be renamed over its target."""

    def __init__(self, path: Path, tmp: str) -> None:
        self.path = path
        self.tmp = tmp

    def discard(self) -> None:
        _remove_quietly(self.tmp)


def write_temp(path: Path, data: bytes | bytearray | memoryview, mode: int | None = None) -> Pending:
    """First half of :func:`atomic_write`: write and fsync ``data`` next to ``path``. Lets a caller
    prepare several files (in threads, overlapping their I/O) and then publish them in the order
    it chooses, each by an atomic rename."""
    directory = path.parent if str(path.parent) else Path(".")
    if mode is None:
        try:
            mode = path.stat().st_mode & 0o7777
        except FileNotFoundError:
            mode = 0o644
        except OSError as e:
            raise OutputError(f"{path}: {e.strerror}") from None
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TMP_SUFFIX, dir=directory)
    except OSError as e:
        raise OutputError(f"{path}: cannot write here ({e.strerror})") from None
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, mode)
    except OSError as e:
        _remove_quietly(tmp)
        raise OutputError(f"{path}: {e.strerror or e}") from None
    except BaseException:
        _remove_quietly(tmp)
        raise
    return Pending(path, tmp)


def commit(pending: Pending) -> None:
    """Second half: rename the temporary file over its target and make the rename durable."""
    try:
        os.replace(pending.tmp, pending.path)
    except OSError as e:
        pending.discard()
        raise OutputError(f"{pending.path}: {e.strerror or e}") from None
    _fsync_dir(pending.path.parent if str(pending.path.parent) else Path("."))


def _remove_quietly(tmp: str) -> None:
    with contextlib.suppress(OSError):
        os.unlink(tmp)


def _fsync_dir(directory: Path) -> None:
    """Make the rename itself durable (POSIX: the directory entry lives in the directory)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
