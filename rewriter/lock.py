"""One writer at a time: advisory locks on what a run rewrites in place.

A run that rewrites a file in place (``apply``/``nop``/``undo --in-place``) holds ``flock`` on
that file; ``prenop`` holds it on the directories it writes (the tree it rewrites in place, the
output tree, the log directory). Each also holds a shared lock on every directory above those
(:func:`above`): a one-file run inside a tree a prenop holds, or a prenop of a tree a one-file run
writes in, meets the other's lock, while runs side by side in one directory do not (their shared
locks do not exclude each other). A second run either waits (``wait``) or stops at once with
:class:`Locked`, which names the holder's pid, before it has read anything. ``flock`` locks are
released by the kernel when their holder exits, however it exits (SIGKILL included), so a lock
can never be left behind.

Two details make this exact:

* an in-place rewrite replaces the file by a rename, so the locked inode is no longer the file
  once the holder is done. A run that waited for it would hold a lock on a file nobody sees; so
  after taking the lock the path is checked to still name the locked inode, and the lock is taken
  again on the new one if not (the usual lock-then-``fstat``-``stat`` pattern);
* ``flock`` does not say who holds a lock. ``/proc/locks`` does: its FLOCK rows carry the
  holder's pid and the ``major:minor:inode`` of the file.

Several paths are locked in one order (their resolved names), so two runs that wait for each other's
paths cannot deadlock. Imports are the standard library only: the CLI takes the lock before it
loads numpy, so the lock covers the whole run.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Final

from rewriter.errors import RewriteError

PROC_LOCKS: Final = Path("/proc/locks")
_RETRIES: Final = 100  # a path replaced under us this many times in a row is a bug, not a race


class Locked(RewriteError):
    """Another process holds the lock on a path this run would rewrite (bad input: exit 2)."""


class Unlockable(RewriteError):
    """A path this process cannot open or ``flock`` (a file system without flock, a directory it
    may not read): not another run's lock. Refuses a path the run writes; a directory above one
    (:func:`above`) is left out, as no run can hold that directory either."""


class Gone(RewriteError):
    """A path to lock is not there any more: removed while this run looked at it or waited for
    its lock. ``path`` says which, so that a caller that made it can make it again."""

    def __init__(self, path: Path, message: str) -> None:
        super().__init__(message)
        self.path = path


def holder(path_stat: os.stat_result, proc_locks: Path = PROC_LOCKS) -> int | None:
    """The pid holding an flock on the file of ``path_stat``, from ``/proc/locks``; None if no
    row names it (the lock went meanwhile, or /proc is not mounted)."""
    want = (os.major(path_stat.st_dev), os.minor(path_stat.st_dev), path_stat.st_ino)
    try:
        rows = proc_locks.read_text().splitlines()
    except OSError:
        return None
    for row in rows:
        fields = row.split()
        # "1: FLOCK  ADVISORY  WRITE 24340 fe:00:2146447 0 EOF"; a waiter's row reads "1: -> FLOCK ..."
        if len(fields) < 6 or fields[1] != "FLOCK":
            continue
        try:
            major, minor, inode = fields[5].split(":")
            key = (int(major, 16), int(minor, 16), int(inode))
            pid = int(fields[4])
        except ValueError:
            continue
        if key == want and pid > 0:
            return pid
    return None


def _open(path: Path) -> int:
    """A descriptor to lock ``path`` through: read-only (a directory can be opened no other way,
    and flock needs no write access)."""
    try:
        return os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    except FileNotFoundError as e:
        raise Gone(path, f"{path}: {e.strerror}") from None
    except OSError as e:
        raise Unlockable(f"{path}: {e.strerror}") from None


def _same_file(fd: int, path: Path) -> bool:
    try:
        now = os.stat(path)
    except FileNotFoundError:
        return False
    st = os.fstat(fd)
    return (st.st_dev, st.st_ino) == (now.st_dev, now.st_ino)


def _try(
    fd: int, path: Path, wait: bool, waiting: Callable[[Path, int | None], None] | None, how: int = fcntl.LOCK_EX
) -> bool:
    """Take the lock ``how`` (exclusive, or shared) on ``fd``: True once held; False if it was held
    but its holder is gone by the time we look (try again). Without ``wait``, raise
    :class:`Locked` naming the holder if it is still there."""
    try:
        fcntl.flock(fd, how | fcntl.LOCK_NB)
        return True
    except OSError as e:
        if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
            raise Unlockable(f"{path}: cannot lock it ({e.strerror})") from None
    pid = holder(os.fstat(fd))
    if pid is None and not wait:
        return False  # released meanwhile (or /proc/locks is not there: the retries end that)
    who = f"pid {pid}" if pid is not None else "another process"
    if not wait:
        raise Locked(f"{path}: locked by {who} (another mcountrw run rewriting it?); pass --wait to wait for it")
    if waiting is not None:
        waiting(path, pid)
    fcntl.flock(fd, how)
    return True


def lock_one(
    path: Path, wait: bool, waiting: Callable[[Path, int | None], None] | None = None, how: int = fcntl.LOCK_EX
) -> int:
    """The descriptor holding the lock ``how`` (exclusive by default) on the file or directory
    ``path`` *as it is now* (see the module docstring: a file replaced while we waited is locked
    again)."""
    for _ in range(_RETRIES):
        fd = _open(path)
        try:
            if _try(fd, path, wait, waiting, how) and _same_file(fd, path):
                return fd
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)  # its holder went, or replaced the file: lock what the path names now
    raise Locked(f"{path}: locked by another process (another mcountrw run rewriting it?); pass --wait to wait for it")


def above(paths: Sequence[Path]) -> list[Path]:
    """The directories above ``paths`` (their resolved names' parents, up to ``/``): a run holds
    them shared while it writes there, so that a run holding one of them exclusively (a prenop
    rewriting that tree, or writing it as its output or log directory) and this run keep apart,
    while runs writing side by side in one directory do not. A directory this process may not
    read is left out (one mode 711 above a user's file): it cannot be opened to lock, and a run
    that could hold it would have to read it to rewrite what is inside."""
    found: dict[Path, None] = {}
    for p in paths:
        found.update(dict.fromkeys(Path(os.path.realpath(p)).parents))
    return [d for d in found if os.access(d, os.R_OK)]


@contextlib.contextmanager
def hold(
    paths: Sequence[Path],
    wait: bool = False,
    waiting: Callable[[Path, int | None], None] | None = None,
    shared: Sequence[Path] = (),
) -> Iterator[None]:
    """Hold the exclusive lock on every existing path of ``paths``, and the shared lock on every
    existing path of ``shared`` (none of ``paths``: one process's two locks on one file would
    exclude each other), for the ``with`` block.

    ``waiting(path, pid)`` is called before blocking on a held lock (``wait`` only), so that the
    caller can say what it waits for."""
    order: dict[tuple[int, int], tuple[Path, int]] = {}
    for p, how in [*((p, fcntl.LOCK_EX) for p in paths), *((p, fcntl.LOCK_SH) for p in shared)]:
        try:
            st = os.stat(p)
        except FileNotFoundError:
            continue  # nothing there to rewrite in place yet
        except OSError as e:
            raise RewriteError(f"{p}: {e.strerror}") from None
        order.setdefault((st.st_dev, st.st_ino), (p, how))
    fds: list[int] = []
    try:
        # By name, not by inode: an in-place rewrite gives a file a new inode, never a new name.
        for p, how in sorted(order.values(), key=lambda ph: str(ph[0].resolve())):
            try:
                fds.append(lock_one(p, wait, waiting, how))
            except (Unlockable, Gone):
                if how == fcntl.LOCK_EX:
                    raise
                # A directory above (shared): one no run can lock keeps no run out, and a run
                # refused for it (an NFS or FUSE mount without flock above the file) ran before.
        yield
    finally:
        for fd in fds:
            os.close(fd)  # closing the last descriptor of an open file releases its flock
