"""Opening a file a user named: regular files only, and never a blocking open.

A FIFO named where a log, a policy, a plan or an image is expected would block ``open()`` until a
writer came (``undo FIFO`` once hung for eleven minutes, a first Ctrl-C swallowed); a device has no
end. Every reader of a user's file opens it here, ``O_NONBLOCK`` (which changes nothing for a
regular file), and refuses what is not a regular file with an ``OSError`` whose ``strerror`` is
the problem, so that each caller's usual ``f"{path}: {e.strerror}"`` says it in one line.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

NOT_REGULAR = "not a regular file (a FIFO, socket or device)"
# The system's own words for these (as in "F: No such file or directory" from an OSError), so that
# a message made here reads like one that came from the kernel.
IS_DIRECTORY = os.strerror(errno.EISDIR)
NO_SUCH_FILE = os.strerror(errno.ENOENT)
NOT_A_DIRECTORY = os.strerror(errno.ENOTDIR)


def open_regular(path: Path) -> tuple[int, os.stat_result]:
    """A read-only descriptor of ``path`` and its ``fstat``; the caller closes it. Raises
    ``FileNotFoundError`` as ``open`` does (some callers take a missing file for "none")."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            raise IsADirectoryError(errno.EISDIR, IS_DIRECTORY, str(path))
        if not stat.S_ISREG(st.st_mode):
            raise OSError(errno.EINVAL, NOT_REGULAR, str(path))
    except BaseException:
        os.close(fd)
        raise
    return fd, st


EMPTY_FILE = "empty file"
REPORTS_NO_SIZE = "a file that reports no size (procfs/sysfs?): not an image"
"""A regular file whose ``fstat`` says 0 bytes but whose read gives some: procfs and sysfs make
their contents when read (``/proc/kallsyms``). No kernel image is there (``/proc/kcore`` has a size,
and is refused as the core file it is), so such a file is not read as one: said for what it is,
not "empty file"."""


def zero_size_text(fd: int) -> str:
    """For the descriptor of a regular file whose ``fstat`` says 0 bytes: why it is no image, one
    byte read to tell an empty file (:data:`EMPTY_FILE`) from one of procfs or sysfs
    (:data:`REPORTS_NO_SIZE`)."""
    try:
        return REPORTS_NO_SIZE if os.pread(fd, 1, 0) else EMPTY_FILE
    except OSError:
        return EMPTY_FILE


def read_regular(path: Path) -> bytes:
    """The bytes of the regular file ``path`` (:func:`open_regular`'s refusals)."""
    fd, _ = open_regular(path)
    with open(fd, "rb", closefd=True) as fh:
        return fh.read()


def read_regular_mutable(path: Path) -> bytearray:
    """:func:`read_regular` into a buffer the caller may change: undo restores a file in the
    buffer it was read into, where a copy of a vmlinux cost 46 MB more and 20 ms."""
    fd, st = open_regular(path)
    with open(fd, "rb", closefd=True) as fh:
        buf = bytearray(st.st_size)
        got = fh.readinto(buf)
        del buf[got:]  # shorter since the fstat
        buf += fh.read()  # or longer: as read_regular, everything up to the end of the file
    return buf


def read_regular_text(path: Path) -> str:
    """:func:`read_regular` as UTF-8 text (``UnicodeDecodeError`` for what is not)."""
    return read_regular(path).decode()


def file_at(path: Path) -> bool:
    """``path.is_file()``, except that a name the system cannot hold (too long: a log's name beside
    a file whose own name leaves no room for the suffix) is no file, not an error: every command
    looks for a log beside each file it reads."""
    try:
        return path.is_file()
    except OSError:
        return False


def not_a_file(path: Path) -> str:
    """Why ``path``, neither a directory nor a regular file, cannot be read: what the system says
    when asked for it (``No such file or directory``, ``Too many levels of symbolic links`` for a
    link loop, ``Permission denied`` for a directory on the way), or, when it is there, that it is
    a FIFO, a socket or a device (the words :func:`open_regular` refuses it with)."""
    try:
        os.stat(path)
    except OSError as e:
        return e.strerror or NO_SUCH_FILE
    return NOT_REGULAR
