"""Atomic file output: a temporary file in the target directory, fsync, read back, rename.

Strategy: nothing is ever written into a file that already exists. Each output is written in full
to a temporary file beside its target, read back and compared with what was meant, flushed to the
disk (``fsync``; :func:`write_temp`, or :func:`stage` then :func:`land` to fsync on another
thread), and only then renamed over the target (:func:`commit`: ``os.replace``, atomic on POSIX
within one file system) and the directory fsynced. So a run killed
at any moment, or a disk that fills up, leaves the target either as it was or complete; never
partial.

Reports (``-o`` of scan, audit, plan, diff) are written the same way but not forced to the disk
(``durable=False``): a reader still sees the old file or the whole new one, never part of one, but
after a power cut the file may be lost. A report is made again by running the command again; the
rewritten images, patch logs and backups are not, and stay fsynced and read back. (An fsync of a
module tree's 43 MB scan report took from a hundredth to a tenth of the whole scan here, with the
disk's load.)

A run killed by SIGKILL cannot clean up after itself: its temporary files stay behind. They are
named ``.<target name>.<random>.mcountrw-tmp`` (hidden, in the target's directory), are never
taken for output, and can be deleted at any time when no mcountrw is running.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import mmap
import os
import secrets
import stat
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Final, NamedTuple

from rewriter.errors import OutputError
from rewriter.reading import IS_DIRECTORY

TMP_SUFFIX = ".mcountrw-tmp"
NAME_MAX: Final = 255  # bytes in one file name: Linux's NAME_MAX, on every file system it mounts
_TEMP_ROOM: Final = 48  # what a temporary name adds to its target's: dots, random part, suffixes


def _temp_prefix(path: Path) -> str:
    """The start of a temporary file's name beside ``path``: a dot and the target's name, cut short
    so that the whole temporary name fits even when the target's own name nearly fills NAME_MAX."""
    name = os.fsencode(path.name)[: NAME_MAX - _TEMP_ROOM]
    return "." + os.fsdecode(name) + "."


_READ_BACK_CHUNK = 1 << 22


def atomic_write(
    path: Path, data: bytes | bytearray | memoryview | mmap.mmap, mode: int | None = None, durable: bool = True
) -> None:
    """Replace ``path`` with ``data``. ``mode`` defaults to the existing file's, else 0o644.
    ``durable=False``: a report, not forced to the disk (see the module's docstring).

    A report sent to a device or a FIFO (``-o /dev/null``, ``-o /dev/stdout``) is written into it:
    renaming a temporary file over it would replace the device node itself."""
    if _special(path):
        try:
            with open(path, "wb") as fh:
                fh.write(data)
        except OSError as e:
            raise OutputError(f"{path}: {e.strerror or e}") from None
        return
    commit_all([write_temp(path, data, mode, durable)])


def atomic_symlink(path: Path, target: str) -> None:
    """Replace ``path`` with a symbolic link to ``target``: made beside it under a temporary name
    and renamed over it, as every output is, so that ``path`` is never missing."""
    temp = _temp_name(path, path.parent if str(path.parent) else Path("."))
    try:
        os.symlink(target, temp)  # inside: a signal handled as it returns leaves no link behind
        os.replace(temp, path)
    except FileExistsError:
        raise  # the random name was another's: not ours to remove
    except BaseException:
        _remove_quietly(temp)
        raise


def check_replaceable(path: Path, parent_made: bool = False) -> None:
    """Before any work: ``path`` is a place :func:`atomic_write` can put a file, so that a bad
    ``-o`` is refused before a long run, not by its last step. A directory is refused in the
    system's words, ``.``, ``..`` and ``/`` too (renaming over them fails with EBUSY, not EISDIR);
    the directory the file goes in must exist and be writable (the temporary file is made there),
    unless ``path`` is a device or FIFO, which is written into. A name longer than the file system
    holds is refused here too, in its words, not by the write at the end. ``parent_made``: the run
    makes the directory if it is not there (``--stage-images``, whose own check says whether it can)."""
    try:
        _check_replaceable(path, parent_made)
    except OSError as e:
        raise OutputError(f"{path}: cannot write here ({e.strerror})") from None


def check_own_place(path: Path) -> None:
    """The part of :func:`check_replaceable` that is the file's own, not its directory's: its name
    fits the file system, and no directory is there. For a run that writes many files into one
    directory and checks that directory once (prenop: a directory at another file's place than the
    first was found by the rename at the end, that file failing and the others written).
    A link there is no directory, whatever it points at: the run replaces the link itself (prenop
    -o copies a tree's links as links, and a rerun lays them down again)."""
    try:
        _check_name_fits(path)
    except OSError as e:
        raise OutputError(f"{path}: cannot write here ({e.strerror})") from None
    if path.is_dir() and not path.is_symlink():
        raise OutputError(f"{path}: {IS_DIRECTORY}")


def _check_name_fits(path: Path) -> None:
    if len(os.fsencode(path.name)) > NAME_MAX:
        raise OSError(errno.ENAMETOOLONG, os.strerror(errno.ENAMETOOLONG), str(path))


def _check_replaceable(path: Path, parent_made: bool = False) -> None:
    _check_name_fits(path)
    if path.is_dir():
        raise OutputError(f"{path}: {IS_DIRECTORY}")
    if _special(path):
        return
    parent = path.parent if str(path.parent) else Path(".")
    if parent_made and not os.path.lexists(parent):
        return
    if os.path.lexists(parent) and not parent.is_dir():  # "directory F does not exist" of a file F
        raise OutputError(f"{path}: {parent} is not a directory")
    if not parent.is_dir():
        raise OutputError(f"{path}: directory {parent} does not exist")
    if not os.access(parent, os.W_OK):
        raise OutputError(f"{path}: {cannot_write_in(parent)}")


def directory_problem(directory: Path, writable: bool = True) -> str | None:
    """Why the run cannot put files in ``directory``, which it makes if it is not there (``mkdir
    -p``): a file, or a symlink to nothing, at it or at a part of its path (mkdir said only "File
    exists", or "Not a directory"), or the nearest part that is there cannot be written in (not
    checked if ``writable`` is False: prenop checks that file by file, naming the first). None
    when files can go there."""
    for place in (directory, *directory.parents):
        try:
            is_dir = stat.S_ISDIR(os.stat(place).st_mode)
        except (FileNotFoundError, NotADirectoryError):
            if os.path.islink(place):  # mkdir fails on it: "File exists"
                return f"{place} is a symlink to nothing"
            continue  # not there (a part under a file is said when the file is reached)
        except OSError as e:
            return e.strerror or str(e)
        if not is_dir:
            return "not a directory" if place == directory else f"{place} is not a directory"
        if writable and not os.access(place, os.W_OK | os.X_OK):
            return cannot_write_in(place)
        return None
    return None


def cannot_write_in(place: Path) -> str:
    """Why no file can be made in the directory ``place``, which the caller found it cannot write
    in: a read-only mount is said, since there no permission the user can change would help (the
    stage images' check said it, -o's did not)."""
    try:
        ro = bool(os.statvfs(place).f_flag & os.ST_RDONLY)
    except OSError:
        ro = False
    return f"cannot write in {place}{' (a read-only file system)' if ro else ''}"


# linux/fs.h: _IOR('f', 1, long) on a 64-bit kernel: direction read (2), 8 bytes, type 'f', number 1
FS_IOC_GETFLAGS: Final = (2 << 30) | (8 << 16) | (ord("f") << 8) | 1
_NO_REPLACE: Final = 0x10 | 0x20  # FS_IMMUTABLE_FL, FS_APPEND_FL: neither unlinked nor renamed over


def check_not_immutable(path: Path) -> None:
    """Before any work: ``path`` is no file the system will not let a rename replace (root
    included), immutable or append-only. apply, nop and undo found it by that rename at the end,
    after the output, its log and any stage images were written (and removed): "f: Operation not
    permitted". (prenop keeps it a failure of that file alone, the others done: docs/prenop.md.)"""
    if _immutable(path):
        raise OutputError(f"{path}: immutable or append-only (chattr +i, +a): the rename that replaces it would fail")


def _immutable(path: Path) -> bool:
    """Whether ``path`` is a regular file flagged immutable or append-only; False where the file
    system keeps no such flags, or the file is not there."""
    import fcntl

    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW)
    except OSError:
        return False
    try:
        flags = bytearray(8)
        fcntl.ioctl(fd, FS_IOC_GETFLAGS, flags)
    except OSError:
        return False
    finally:
        os.close(fd)
    return bool(int.from_bytes(flags[:4], sys.byteorder) & _NO_REPLACE)  # the kernel writes an int


def _special(path: Path) -> bool:
    """``path`` exists and is not a regular file (a device, FIFO or socket; not a directory)."""
    try:
        st = os.stat(path)
    except OSError:
        return False
    return not stat.S_ISREG(st.st_mode) and not stat.S_ISDIR(st.st_mode)


class Pending:
    """A complete temporary file waiting to be renamed over its target: fsync'ed, or (``synced``
    False, from :func:`stage`) written and read back but not yet flushed to the disk."""

    def __init__(
        self, path: Path, tmp: str, durable: bool = True, synced: bool = True, written: tuple[int, int] | None = None
    ) -> None:
        self.path = path
        self.tmp = tmp
        self.durable = durable
        self.synced = synced or not durable
        self.written = written  # (st_dev, st_ino) of the temporary file, once read back
        self.committed = False  # renamed over its target: nothing left to discard

    def sync(self) -> None:
        """Flush the temporary file to the disk (a no-op once done, or for a report)."""
        if self.synced:
            return
        # Opened again, not kept open since the write: a batch of small modules stages hundreds
        # of files before an I/O thread lands them.
        try:
            fd = os.open(self.tmp, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as e:
            self.discard()
            raise OutputError(f"{self.path}: {e.strerror or e}") from None
        self.synced = True

    def discard(self) -> None:
        """Remove the temporary file, unless it has been renamed over its target already: a
        caller's cleanup can discard everything it staged, whatever was published before an
        interruption."""
        if not self.committed:
            _remove_quietly(self.tmp)


def write_temp(
    path: Path, data: bytes | bytearray | memoryview | mmap.mmap, mode: int | None = None, durable: bool = True
) -> Pending:
    """First half of :func:`atomic_write`: write and fsync ``data`` next to ``path``, and read it
    back: the temporary file holds exactly ``data``, or this raises :class:`OutputError` and
    removes it. Lets a caller prepare several files (in threads, overlapping their I/O) and then
    publish them in the order it chooses, each by an atomic rename."""
    return _write(path, data, mode, durable, sync=True)


def _write(
    path: Path, data: bytes | bytearray | memoryview | mmap.mmap, mode: int | None, durable: bool, sync: bool
) -> Pending:
    """``data`` in a new temporary file beside ``path``, read back (``durable``) through the same
    descriptor, and fsync'ed if ``sync`` (else :meth:`Pending.sync` does it later)."""
    directory = path.parent if str(path.parent) else Path(".")
    try:
        before: os.stat_result | None = path.stat()
    except FileNotFoundError:
        before = None
    except OSError as e:
        raise OutputError(f"{path}: {e.strerror}") from None
    if mode is None:
        mode = 0o644 if before is None else before.st_mode & 0o7777
    try:
        fd, tmp = _create_temp(path, directory)
    except OSError as e:
        raise OutputError(f"{path}: cannot write here ({e.strerror})") from None
    written = None
    try:
        try:
            _write_all(fd, data)
            if before is not None:
                _keep_owner(fd, before)
            os.fchmod(fd, mode)  # after the owner: a change of owner clears set-user-ID bits
            if durable and sync:
                os.fsync(fd)
            if durable:
                written = _check_read_back(path, fd, data)
        finally:
            os.close(fd)
    except OSError as e:
        _remove_quietly(tmp)
        raise OutputError(f"{path}: {e.strerror or e}") from None
    except BaseException:
        _remove_quietly(tmp)
        raise
    return Pending(path, tmp, durable, synced=sync, written=written)


_TEMP_FLAGS: Final = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


def _temp_name(path: Path, directory: Path, what: str = "") -> str:
    """A new temporary name beside ``path``: ``.<name>.<random><what>.mcountrw-tmp``."""
    return os.path.join(str(directory), f"{_temp_prefix(path)}{secrets.token_hex(6)}{what}{TMP_SUFFIX}")


def _create_temp(path: Path, directory: Path) -> tuple[int, str]:
    """A new temporary file beside ``path``, open for reading and writing, mode 0600. Named before
    it is made, so that an interruption just after the ``open`` removes it: a signal's handler runs
    as the system call returns, and ``tempfile.mkstemp`` made the file inside, where Ctrl-C left it
    behind (``.ext4.ko.<random>.mcountrw-tmp``, a prenop's worker interrupted in its ``open``)."""
    while True:
        tmp = _temp_name(path, directory)
        try:
            return os.open(tmp, _TEMP_FLAGS, 0o600), tmp
        except FileExistsError:
            continue  # another's: never removed
        except BaseException:  # an error (nothing made: O_EXCL) or a signal once it was made
            _remove_quietly(tmp)
            raise


def _keep_owner(fd: int, before: os.stat_result) -> None:
    """Give the new file the owner and group of the file it replaces, as far as this process may
    (root: both; another user: a group it belongs to; else neither). A file rewritten in place,
    or undone, is the same file to the system that installed it: mcountrw run as root must not
    hand a module or vmlinux to root. The rename gives the target the temporary file's owner."""
    now = os.fstat(fd)
    if (now.st_uid, now.st_gid) == (before.st_uid, before.st_gid):
        return
    for uid in (before.st_uid, -1):
        try:
            os.fchown(fd, uid, before.st_gid)
            return
        except PermissionError:
            continue


def _write_all(fd: int, data: bytes | bytearray | memoryview | mmap.mmap) -> None:
    """Plain writes on the descriptor: a file object around it cost three more system calls a
    file (fstat, ioctl, lseek), each one a hand-over of the GIL when a prenop's I/O threads run."""
    view = memoryview(data).cast("B")
    while len(view):
        view = view[os.write(fd, view) :]


def commit(pending: Pending) -> None:
    """Second half: rename the temporary file over its target and make the rename durable. Never
    over a device or FIFO: that would replace the node itself (callers refuse such outputs first)."""
    if _special(pending.path):
        pending.discard()
        raise OutputError(f"{pending.path}: not a regular file (a device or FIFO): an output is replaced by a rename")
    try:
        os.replace(pending.tmp, pending.path)
    except OSError as e:
        pending.discard()
        raise OutputError(f"{pending.path}: {e.strerror or e}") from None
    except BaseException:
        # A signal handled as the rename returned: whether it was made, the file system says. Taken
        # for not made, the file renamed was not put back (commit_all): a new log stayed beside the
        # old file it does not describe.
        pending.committed = not os.path.lexists(pending.tmp)
        raise
    pending.committed = True
    if pending.durable:
        _fsync_dir(pending.path.parent if str(pending.path.parent) else Path("."))


def commit_all(pending: Sequence[Pending]) -> None:
    """:func:`commit` each in order. If one fails, or a signal (Ctrl-C, SIGTERM) interrupts the
    run meanwhile, every temporary file not yet renamed is removed, and of several files every
    target already renamed over is put back (its earlier file kept as a hard link until the end,
    :func:`_keep`): the files of one call are published together or not at all, and a log is never
    left beside a file it does not describe (a file that could not be replaced kept the new log,
    which replaced the log of what the file still was). No temporary file stays behind."""
    kept: list[tuple[Pending, str | None]] = []
    try:
        for p in pending:
            kept.append((p, _keep(p.path) if len(pending) > 1 else None))
            commit(p)
    except BaseException:
        for p in pending:
            p.discard()
        _put_back(kept)
        raise
    for _, previous in kept:
        if previous:
            _remove_quietly(previous)


_ABSENT: Final = ""  # _keep: no file was there


def _keep(path: Path) -> str | None:
    """A hard link to the file at ``path`` beside it (named as a temporary file: a SIGKILL leaves
    it as it leaves those); :data:`_ABSENT` when there is no file; None when its state is not known
    or no link can be made (a file system without them, protected_hardlinks): then the target is
    neither put back nor removed."""
    try:
        os.lstat(path)
    except FileNotFoundError:
        return _ABSENT
    except OSError:
        return None
    name = _temp_name(path, path.parent, ".previous")
    try:
        os.link(path, name, follow_symlinks=False)
    except OSError:
        return None
    except BaseException:  # a signal handled as the link returned: the link made goes
        _remove_quietly(name)
        raise
    return name


def _put_back(kept: Sequence[tuple[Pending, str | None]]) -> None:
    """Undo what :func:`commit_all` published before it stopped, last first: the earlier file back
    over its target, or a target that was not there removed; one whose earlier state is not known
    stays as published."""
    for p, previous in reversed(kept):
        if p.committed and previous:
            with contextlib.suppress(OSError):
                os.replace(previous, p.path)
        elif p.committed and previous == _ABSENT:
            _remove_quietly(str(p.path))
        elif previous:
            _remove_quietly(previous)


class NewFile(NamedTuple):
    """A file to publish: its target, its complete bytes, its mode."""

    path: Path
    data: bytes
    mode: int


def publish(files: Sequence[NewFile]) -> None:
    """Write every file to a temporary file beside its target (fsync'ed, read back), then rename
    each over its target in order (directories made as needed), then check that the last target
    is the file written (its device and inode). A run killed at any point leaves each target old
    or new, never partial, and a caller that puts a log before the file it undoes never leaves a
    rewritten file without its log."""
    land(stage(files))


def stage(files: Sequence[NewFile]) -> list[Pending]:
    """:func:`publish`'s first half without the waits on the disk: each file written to its
    temporary file and read back, not yet fsync'ed. The caller computes on while :func:`land`
    runs on an I/O thread, which then makes few system calls (each one hands the GIL back and
    forth with the thread that computes: 300 futex calls a module when the thread did it all)."""
    pending: list[Pending] = []
    try:
        for f in files:
            _mkdir(f.path.parent)
            pending.append(_write(f.path, f.data, f.mode, durable=True, sync=False))
    except BaseException:
        for p in pending:
            p.discard()
        raise
    return pending


def land(pending: Sequence[Pending]) -> None:
    """:func:`publish`'s second half: fsync every temporary file, rename each over its target in
    order, and check that the last target now is the file that was written."""
    try:
        for p in pending:
            p.sync()
    except BaseException:
        for p in pending:
            p.discard()
        raise
    commit_all(pending)
    check_landed(pending)


def check_landed(pending: Sequence[Pending]) -> None:
    """Check that every target of one :func:`land` now is the file written (its device and inode).
    Each target was checked but the last: two runs writing one ``-o OUT`` and its log at once (no
    lock keeps them apart: docs/prenop.md, "One writer at a time") could leave one's log beside
    the other's file, and the run whose file landed last said nothing. Every log lands before its
    file, so the run whose file is renamed last checks after the last log's rename: if that log is
    another run's, this run sees it and fails (exit 2) where it exited 0. (So for any targets
    renamed in one order, the file last, by every run: ``files`` publishes ``nop``'s and ``apply``'s
    log, backup and output so too.) The race is told, not prevented."""
    for p in pending:
        try:
            same = os.stat(p.path)
        except OSError as e:
            raise OutputError(f"{p.path}: {e.strerror}") from None
        if not p.written or (same.st_dev, same.st_ino) != p.written:
            together = f": {' and '.join(str(o.path) for o in pending)} may not match" if len(pending) > 1 else ""
            raise OutputError(
                f"{p.path}: after the rename, not the file that was written (another run writing it at the same "
                f"time?){together}; run again, alone"
            )


def _mkdir(path: Path) -> None:
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OutputError(f"{path}: {e.strerror}") from None


def _check_read_back(path: Path, fd: int, data: bytes | bytearray | memoryview | mmap.mmap) -> tuple[int, int]:
    """The bytes the file system gives back are the bytes meant; the file's (st_dev, st_ino)."""
    want = memoryview(data).cast("B")
    st = os.fstat(fd)
    if st.st_size != len(want):
        raise OutputError(f"{path}: read back {st.st_size} bytes, wrote {len(want)}")
    # Read into one buffer, reused chunk after chunk: a fresh 16 MiB buffer per read, and a copy
    # of what was meant to compare it with, took three times as long (33 ms for a vmlinux log,
    # 11 ms in 4 MiB chunks), most of it page faults. Smaller chunks fault less but hand the GIL
    # over more often (a read-back runs in a thread while the log is formatted); 1 MiB: 8 ms. A
    # bytearray compared with a memoryview is one memcmp (bytes with a memoryview: byte by byte).
    got = bytearray(min(len(want), _READ_BACK_CHUNK))
    for start in range(0, len(want), _READ_BACK_CHUNK):
        part = want[start : start + _READ_BACK_CHUNK]
        if len(part) != len(got):  # the last chunk, shorter
            got = bytearray(len(part))
        if _pread_into(fd, got, start) != len(got) or got != part:
            raise OutputError(f"{path}: read back differs from what was written near offset {start:#x}")
    return st.st_dev, st.st_ino


def _pread_into(fd: int, buf: bytearray, offset: int) -> int:
    """Fill ``buf`` from ``offset`` on; how many bytes were read (fewer only at the end of the file)."""
    view = memoryview(buf)
    done = 0
    while done < len(buf):
        n = os.preadv(fd, [view[done:]], offset + done)
        if not n:
            break
        done += n
    return done


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


class Place(NamedTuple):
    """A file a run reads or writes, and what it is to the run (the end of an error line).
    ``owner`` says whose it is: a target's patch log is read and written by the run as one file."""

    path: Path
    what: str
    owner: object


def _place_keys(path: Path, real: Callable[[str], str] = os.path.realpath) -> tuple[list[object], bool]:
    """Where ``path`` is, and whether a file is there: its name in its resolved directory (a file
    not there yet, ``tree/../x``) and, if it is there, its inode (a hard link, a symlink)."""
    directory, name = os.path.split(os.fspath(path))
    keys: list[object] = [(real(directory or "."), name)]
    try:
        st = os.stat(path)
    except OSError:  # not there, or a name the system cannot hold: only its name
        return keys, False
    return [*keys, (st.st_dev, st.st_ino)], True


def same_place(a: Path, b: Path) -> bool:
    """``a`` and ``b`` name one file (:func:`_place_keys`), whether or not it is there yet."""
    return not set(_place_keys(a)[0]).isdisjoint(_place_keys(b)[0])


class Places:
    """Files by where they are, as :func:`same_place` tells two apart, by lookup rather than in
    pairs: a tree has thousands of inputs, logs and outputs, and its directories are resolved once
    each."""

    def __init__(self) -> None:
        self._found: dict[object, list[Place]] = {}
        self._real = functools.cache(os.path.realpath)

    def _keys(self, path: Path) -> tuple[list[object], bool]:
        return _place_keys(path, self._real)

    def add_read(self, place: Place) -> None:
        """A file the run reads, if it is there (a patch log not written yet is no file to keep)."""
        keys, there = self._keys(place.path)
        if there:
            self._add(place, keys)

    def claim(self, place: Place) -> Place | None:
        """The first file added where ``place`` is that is not its own; else add ``place`` (a file
        the run writes, there or not) and None."""
        keys = self._keys(place.path)[0]
        for key in keys:
            for other in self._found.get(key, ()):
                if other.owner != place.owner:
                    return other
        self._add(place, keys)
        return None

    def _add(self, place: Place, keys: list[object]) -> None:
        for key in keys:
            self._found.setdefault(key, []).append(place)
