"""Many files at once: expand directories, scan in parallel, keep going past bad files.

Each worker process loads and scans one file and sends back the finished :class:`Scan` (or, from
:func:`render_many`, the report made of it), or the one-line error for that file. Results come back
in input order so that output is reproducible whatever ``--jobs`` is.
"""

from __future__ import annotations

import enum
import gc
import os
import signal
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Final, Generic, NamedTuple, TypeVar

from rewriter.elf.compress import MODULE_SUFFIXES
from rewriter.elf.image import Image, is_elf, is_foreign_elf, is_ppc64_executable, read_head
from rewriter.errors import RewriteError
from rewriter.generations import Generation
from rewriter.prose import counted
from rewriter.reading import not_a_file
from rewriter.sites import Scan, scan

if TYPE_CHECKING:
    from concurrent.futures import ProcessPoolExecutor

T = TypeVar("T")
R = TypeVar("R")


class Outcome(NamedTuple):
    path: Path
    scan: Scan | None
    error: str | None


@dataclass(frozen=True)
class Rendered(Generic[R]):
    """A file's scan as a report needs it, made where it was scanned: its text, or its text and
    the counts a closing line adds up (a dataclass: a generic NamedTuple needs Python 3.11)."""

    path: Path
    report: R | None
    error: str | None


class Found(NamedTuple):
    """A file to read, and its name in the tree it was found in (:func:`tree_name`)."""

    path: Path
    name: str


def tree_name(path: Path, root: Path | None) -> str:
    """A file's name in its tree: its path below ``root``, the directory argument it was found
    under (``kernel/fs/ext4/ext4.ko``), or its own name when it was named itself (``root`` None).
    ``prenop -o`` lays out its output tree and ``--log-dir`` its logs by this name, so every
    command that looks a file's log up under ``--log-dir`` finds it by the same rule."""
    return path.name if root is None else path.relative_to(root).as_posix()


def name_named(path: Path, paths: Sequence[Path]) -> str:
    """The name in its tree of ``path``, a file named itself: its path below the first directory of
    ``paths`` that holds it (Debian 7.2's ``<release>/vmlinuz`` named with a directory above it), so
    that ``prenop -o`` writes its rewrite where the copy of the tree has it, and two kernels' files
    of one name in two trees keep two names; else its own name (:func:`tree_name`)."""
    where = Path(os.path.abspath(path))
    for d in paths:
        if d.is_dir() and where.is_relative_to(os.path.abspath(d)):
            return tree_name(where, Path(os.path.abspath(d)))
    return tree_name(path, None)


def expand(paths: Sequence[Path]) -> tuple[list[Path], list[str]]:
    """Files named, and PowerPC64 ELF files or modules found below directories named (sorted), plus
    one error line for each path that cannot be read. Symlinks to directories are not followed."""
    found, errors = expand_named(paths)
    return [f.path for f in found], errors


def expand_named(paths: Sequence[Path]) -> tuple[list[Found], list[str]]:
    """:func:`expand`, each file with its name in its tree (where ``--log-dir`` keeps its log)."""
    found, errors, _ = expand_noting(paths)
    return found, errors


def expand_noting(paths: Sequence[Path]) -> tuple[list[Found], list[str], list[str]]:
    """:func:`expand_named`, and a warning line for each directory that holds symbolic links named
    as modules: the walk follows no link, so they are left out (RHEL's ``weak-updates/`` is such
    links), and a scan of the tree was silently short of them."""
    files: list[Found] = []
    errors: list[str] = []
    warnings: list[str] = []
    for path in paths:
        if path.is_dir():
            below, errs, links = _walk(path)
            files.extend(Found(f, tree_name(f, path)) for f in below)
            errors.extend(errs)
            if not below and not errs:  # a named directory that holds nothing to read is a wrong path
                errors.append(f"{path}: no PowerPC64 ELF file or module below it{_not_followed(path)}")
            elif links:
                warnings.append(
                    f"{path}: {counted(len(links), 'symbolic link')} named as a module not followed, left out "
                    f"(first: {links[0]}): name a link's target to read it"
                )
        elif path.exists():
            files.append(Found(path, name_named(path, paths)))
        else:
            errors.append(f"{path}: {not_a_file(path)}")
    return first_of_each(files, lambda f: f.path), errors, warnings


def _not_followed(root: Path) -> str:
    """What a tree that gave nothing to read held that the walk does not open (links, FIFOs,
    sockets, devices), in words for its error line: a directory of links to modules was said to
    hold no module at all. Walked again only then, when the error is the whole answer."""
    kinds = Counter(entry.kind for entry in tree_entries(root)[0])
    parts = [
        counted(kinds[EntryKind.LINK], "symbolic link") if kinds[EntryKind.LINK] else "",
        counted(kinds[EntryKind.SPECIAL], "FIFO, socket or device", "FIFOs, sockets or devices")
        if kinds[EntryKind.SPECIAL]
        else "",
    ]
    said = " and ".join(p for p in parts if p)
    return f" ({said} not followed: name a file to read it)" if said else ""


def first_of_each(items: Sequence[T], path_of: Callable[[T], Path]) -> list[T]:
    """``items`` without those whose file came earlier (a file named twice, or a directory named
    with one of its subdirectories): read once and counted once. Compared by absolute path (links
    are not resolved, as the tree walk does not follow them)."""
    seen: set[str] = set()
    out = []
    for item in items:
        key = os.path.abspath(path_of(item))
        if key not in seen:
            seen.add(key)
            out.append(item)
    return out


Wanted = Callable[[os.DirEntry[str], list[str]], bool]
"""Whether a tree walk takes a file (it may add an error line, for a file it could not look into)."""


class EntryKind(enum.Enum):
    """What a tree walk found at one name. The walk itself tells apart what the directory listing
    says (``FILE`` is then any regular file); :func:`tree_entries` sorts regular files further."""

    DIRECTORY = "directory"
    LINK = "symlink"  # never followed: to a file or a directory alike
    SPECIAL = "special"  # a FIFO, socket or device: never opened (a FIFO's read would block)
    FILE = "file"  # a regular file that is neither of the two below
    MODULE = "module"  # *.ko[.xz|.gz|.zst], by its name
    KERNEL = "kernel"  # a PowerPC64 ELF executable image, by its ELF header: a vmlinux


class Entry(NamedTuple):
    path: Path
    kind: EntryKind


Visit = Callable[[os.DirEntry[str], EntryKind], None]
"""What a tree walk does with each entry below its root (before it descends into a directory)."""


def _walk(root: Path, wanted: Wanted | None = None) -> tuple[list[Path], list[str], list[Path]]:
    """Files of ``root`` and then of each subdirectory, depth first, each level sorted by name:
    those ``wanted`` takes (by default ELF files and modules, :func:`_elf_or_module`), one error
    line for each file or directory that cannot be read, and the links named as modules. Links are
    not followed, and FIFOs, sockets and devices are skipped (a read of a FIFO would block)."""
    found: list[Path] = []
    errors: list[str] = []
    links: list[Path] = []
    take = wanted or _elf_or_module

    def visit(entry: os.DirEntry[str], kind: EntryKind) -> None:
        if kind is EntryKind.FILE and take(entry, errors):
            found.append(Path(entry.path))
        elif kind is EntryKind.LINK and entry.name.endswith(MODULE_SUFFIXES):
            links.append(Path(entry.path))

    _walk_into(str(root), visit, errors)
    return found, errors, links


def tree_entries(root: Path) -> tuple[list[Entry], list[str]]:
    """Every name below ``root``, in :func:`_walk`'s order, and one error line for each directory
    that cannot be listed: what ``prenop`` rewrites in a tree (its modules, by name, as
    :data:`~rewriter.elf.compress.MODULE_SUFFIXES` says), and what its ``-o`` copies as it is (the
    other files, links, directories). A regular file that is no module has its ELF header read,
    and only that: a PowerPC64 executable (``KERNEL``) is a vmlinux the tree holds, which a
    directory never contributes (a build tree also holds ``vmlinux.o`` and host tools), and which
    the run then names as left out. A file whose header cannot be read is a ``FILE``: only a copy
    reads it, and its check says what is wrong."""
    entries: list[Entry] = []
    errors: list[str] = []

    def visit(entry: os.DirEntry[str], kind: EntryKind) -> None:
        entries.append(Entry(Path(entry.path), _file_kind(entry) if kind is EntryKind.FILE else kind))

    _walk_into(str(root), visit, errors)
    return entries, errors


def _file_kind(entry: os.DirEntry[str]) -> EntryKind:
    if entry.name.endswith(MODULE_SUFFIXES):
        return EntryKind.MODULE
    try:
        head = read_head(Path(entry.path))
    except OSError:
        return EntryKind.FILE
    return EntryKind.KERNEL if is_ppc64_executable(head) else EntryKind.FILE


def _elf_or_module(entry: os.DirEntry[str], errors: list[str]) -> bool:
    """Modules (by name: a compressed one cannot be looked into here), objects and other ELF files,
    except ELF files built for another machine (:func:`~rewriter.elf.image.is_foreign_elf`): a
    kernel build tree holds host tools (``scripts/``) and 32-bit vDSO objects next to its PowerPC64
    ones, and scanning the tree means the latter. Named on the command line, such a file is still
    refused."""
    if entry.name.endswith(MODULE_SUFFIXES):
        return True
    try:
        head = read_head(Path(entry.path))
    except OSError as e:
        errors.append(f"{entry.path}: {e.strerror}")
        return False
    if is_foreign_elf(head):
        return False
    return entry.name.endswith(".o") or is_elf(head)  # an object that is not ELF: its load says so


def _walk_into(top: str, visit: Visit, errors: list[str]) -> None:
    # os.scandir's entries know their type from the directory listing: no stat per file, which
    # for a module tree (3,154 files) was a tenth of a second before any worker could start.
    try:
        with os.scandir(top) as listing:
            entries = sorted(listing, key=lambda entry: entry.name)
    except OSError as e:
        errors.append(f"{e.filename}: {e.strerror}")
        return
    subdirs = []
    for entry in entries:
        kind = _kind_of(entry)
        visit(entry, kind)
        if kind is EntryKind.DIRECTORY:
            subdirs.append(entry.path)
    for subdir in subdirs:
        _walk_into(subdir, visit, errors)


def _kind_of(entry: os.DirEntry[str]) -> EntryKind:
    """What the directory listing says ``entry`` is; links are not followed (a link to a directory
    is a ``LINK``, not a way into it)."""
    if entry.is_symlink():
        return EntryKind.LINK
    if _is_dir(entry):
        return EntryKind.DIRECTORY
    if entry.is_file(follow_symlinks=False):
        return EntryKind.FILE
    return EntryKind.SPECIAL


def _is_dir(entry: os.DirEntry[str]) -> bool:
    try:
        return entry.is_dir()
    except OSError:
        return False


def scan_one(path: Path, mcount_addr: int | None = None, generation: Generation | None = None) -> Outcome:
    """``generation`` overrides the scanner's detection (``--generation``, for stripped images)."""
    image, error = _attempt(path, Image.load, path)
    if image is None:
        return Outcome(path, None, error)
    return _scan_loaded(path, image, mcount_addr, generation)


def _scan_loaded(path: Path, image: Image, mcount_addr: int | None, generation: Generation | None) -> Outcome:
    result, error = _attempt(path, scan, image, mcount_addr, generation)
    return Outcome(path, result, error)


def _attempt(path: Path, fn: Callable[..., R], *args: object) -> tuple[R | None, str | None]:
    """``fn(*args)``, or None and the one-line error for ``path``."""
    try:
        return fn(*args), None
    except RewriteError as e:
        return None, str(e)
    except (ValueError, IndexError, OverflowError, MemoryError) as e:
        # A corrupt file that slipped past the structural checks: still one line, not a traceback.
        return None, f"{path}: corrupt ELF data ({type(e).__name__}: {e})"


# How many decompressed bytes a worker holds while it loads files ahead of scanning them.
LOAD_AHEAD = 32 << 20


def _scanned(paths: Sequence[Path], mcount_addr: int | None, generation: Generation | None) -> Iterator[Outcome]:
    """:func:`scan_one` of each path, in order, but the files are loaded (read and decompressed)
    a run at a time, up to :data:`LOAD_AHEAD` bytes, before any of them is scanned. Measured on
    6.12's tree (3,154 .ko.xz): everything but decompression took 2.5 s of CPU when each scan
    followed its own file's decompression and 1.9 s this way, the decompressor and the scan no
    longer evicting each other's code and data from the caches file by file."""
    at = 0
    while at < len(paths):
        run: list[tuple[Path, Image | None, str | None]] = []
        held = 0
        while at < len(paths) and (not run or held < LOAD_AHEAD):
            image, error = _attempt(paths[at], Image.load, paths[at])
            run.append((paths[at], image, error))
            held += 0 if image is None else image.size
            at += 1
        for path, image, error in run:
            yield Outcome(path, None, error) if image is None else _scan_loaded(path, image, mcount_addr, generation)
        del run


def map_chunks(fn: Callable[[Sequence[T]], list[R]], items: Sequence[T], jobs: int) -> Iterator[R]:
    """``fn`` over chunks of ``items`` in ``jobs`` worker processes; results in input order.

    Chunks of a few dozen files amortise the per-task cost (pickling, a worker's first imports)."""
    if jobs <= 1 or len(items) <= 1:
        yield from fn(items)
        return
    chunks = chunks_of(items, jobs)
    with worker_pool(min(jobs, len(chunks))) as pool:
        for results in pool.map(fn, chunks):
            yield from results


def map_batches(
    fn: Callable[[Sequence[T]], list[R]], batches: Sequence[Sequence[T]], jobs: int, quiet_workers: bool = True
) -> Iterator[tuple[int, list[R]]]:
    """``fn`` over each of ``batches`` (the caller chose them); ``(index of the batch, its results)``
    as each batch ends. With ``jobs`` <= 1 or one batch, on this process in the order given; else in
    ``jobs`` worker processes (:func:`worker_pool`), in the order they finish."""
    if jobs <= 1 or len(batches) <= 1:
        for b, batch in enumerate(batches):
            yield b, fn(batch)
        return
    from concurrent.futures import as_completed

    with worker_pool(min(jobs, len(batches)), quiet_workers) as pool:
        task = partial(_run_task, fn, os.getpid())
        futures = {pool.submit(task, batch): b for b, batch in enumerate(batches)}
        for done in as_completed(futures):
            yield futures[done], done.result()


@contextmanager
def worker_pool(jobs: int, quiet_workers: bool = True) -> Iterator[ProcessPoolExecutor]:
    """The one pool of worker processes. ``quiet_workers``: Ctrl-C and SIGTERM just end a worker
    (it only reads); otherwise a worker keeps the handlers it was forked with, and a signal unwinds
    it like the parent, so that the files it was writing leave no temporary files behind."""
    # Imported here: the process pool machinery costs 17 ms to import, a fifth of a vmlinux scan.
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor
    from concurrent.futures.process import BrokenProcessPool

    # The workers are forked: what the parent holds now (modules, imports) is never garbage, and
    # frozen the collector in a worker does not walk it, nor copy the pages it would touch.
    gc.freeze()
    try:
        start = partial(_start_worker, os.getpid(), quiet_workers)
        # Forked, whatever the interpreter's default (forkserver from Python 3.14): the workers
        # share what the parent loaded, and their parent is this process (_end_with_parent).
        fork = multiprocessing.get_context("fork")
        with ProcessPoolExecutor(max_workers=jobs, initializer=start, mp_context=fork) as pool:
            try:
                yield pool
            except BaseException:
                _stop_workers(pool)
                raise
    except BrokenProcessPool:
        # A worker killed from outside: out of memory, or SIGBUS from a file truncated while
        # mapped. Which file it held is lost with it.
        raise RewriteError("a worker died (out of memory, or a file truncated while it was read?)") from None
    finally:
        gc.unfreeze()


def _stop_workers(pool: ProcessPoolExecutor) -> None:
    """The run is unwinding (a signal sent to this process alone: ``kill PID``, ``timeout``,
    ``systemctl stop``; or an error): the batches not yet started are cancelled, and each worker
    is sent SIGTERM, so that a task it runs unwinds as this process does (the files it published
    stay whole, each with its log; its temporary files go) and one that waits for work ends. The
    pool's shutdown ran every batch left instead: a SIGTERM to a prenop of a tree wrote the rest
    of the tree (15 s more over 130 modules), and then the run said it was interrupted."""
    import multiprocessing

    workers = multiprocessing.active_children()  # this process's only children are the pool's
    pool.shutdown(wait=False, cancel_futures=True)
    for child in workers:
        if child.pid is not None:
            with suppress(ProcessLookupError):
                os.kill(child.pid, signal.SIGTERM)
    # Waited for: a shutdown that does not wait forgets the pool's threads, and the later one that
    # should (the pool's ``with``) returned at once, the run ending while its workers still wrote.
    # A further Ctrl-C or SIGTERM meanwhile is spent: the workers are stopping already (they spend
    # theirs too: _on_signal), and a run that ended first said it was over while they still wrote.
    for child in workers:
        while True:
            try:
                child.join()
                break
            except BaseException:  # the signal's exception, raised by the parent's handler
                continue


def chunks_of(items: Sequence[T], jobs: int) -> list[Sequence[T]]:
    """Up to 64 items a chunk, fewer towards the end (an eighth of what is left, shared by the
    workers; at least 4): the last chunks are small, so that no worker is left with a long one
    while the others have finished."""
    out = []
    at = 0
    while at < len(items):
        size = max(4, min(64, (len(items) - at) // (jobs * 8)))
        out.append(items[at : at + size])
        at += size
    return out


def _scan_chunk(
    paths: Sequence[Path], mcount_addr: int | None = None, generation: Generation | None = None
) -> list[Outcome]:
    return list(_scanned(paths, mcount_addr, generation))


def scan_many(
    files: Sequence[Path],
    jobs: int,
    mcount_addr: int | None = None,
    progress: Callable[[], None] | None = None,
    generation: Generation | None = None,
) -> Iterator[Outcome]:
    """Outcomes in the order of ``files``."""
    chunk = partial(_scan_chunk, mcount_addr=mcount_addr, generation=generation)
    for outcome in map_chunks(chunk, files, jobs):
        yield outcome
        if progress:
            progress()


def render_many(
    files: Sequence[Path],
    jobs: int,
    render: Callable[[Scan], R],
    mcount_addr: int | None = None,
    progress: Callable[[], None] | None = None,
    generation: Generation | None = None,
) -> Iterator[Rendered[R]]:
    """Like :func:`scan_many`, but each worker formats its scans with ``render`` (a module-level
    function, or a ``partial`` of one) and sends back only what it made: text, and small counts
    if the report needs them. A module tree's Scan objects (175,941 sites in 6.12's) cost more to
    pickle and unpickle than to format, and the parent would unpickle them alone while the
    workers wait."""
    chunk = partial(_render_chunk, render=render, mcount_addr=mcount_addr, generation=generation)
    for rendered in map_chunks(chunk, files, jobs):
        yield rendered
        if progress:
            progress()


def _render_chunk(
    paths: Sequence[Path], render: Callable[[Scan], R], mcount_addr: int | None, generation: Generation | None
) -> list[Rendered[R]]:
    out: list[Rendered[R]] = []
    for outcome in _scanned(paths, mcount_addr, generation):
        if outcome.scan is None:
            out.append(Rendered(outcome.path, None, outcome.error))
            continue
        # A render may read more than the file (its patch log's sites): what it cannot read is this
        # file's error, and the others are still rendered.
        report, error = _attempt(outcome.path, render, outcome.scan)
        out.append(Rendered(outcome.path, report, error))
    return out


def _start_worker(parent: int, quiet: bool) -> None:
    """A worker ends with its parent (:func:`_end_with_parent`); a ``quiet`` one just stops on
    Ctrl-C, which reaches the whole process group, and the parent reports it once. One that writes
    unwinds its task on the parent's handlers (no temporary file is left), and ends at once when it
    has no task, or once the task has unwound when the parent is gone (:func:`_on_signal`)."""
    if quiet:
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
    else:
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, partial(_on_signal, parent, signal.getsignal(signum)))
    _end_with_parent(parent)


class _Orphaned(BaseException):
    """A writing worker's parent died: its task unwinds (its ``with`` blocks remove their temporary
    files), then :func:`_run_task` ends the process. Not caught by the pool's own worker loop,
    which would send the task's end to no one and wait for the next task forever."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


_in_task = False  # in a worker: whether _run_task is running a task
_signalled = 0  # in a worker: the signal that is unwinding (or unwound) its task; 0: none yet
_stopped: BaseException | None = None  # in a worker: what that signal raised


def _on_signal(parent: int, inherited: object, signum: int, frame: object) -> None:
    """SIGINT or SIGTERM in a worker that writes. Waiting for work there is nothing to unwind: it
    ends (the parent's handler raised there, outside any task). In a task, the parent alive
    (Ctrl-C to the process group, or the parent's :func:`_stop_workers`): the parent's handler
    unwinds it; the parent gone: :class:`_Orphaned`. Only the first: a second (the group's Ctrl-C,
    then the parent's SIGTERM) raised again in the clean-up of the first, which stopped halfway
    and left the temporary files of the file being landed (``.ko.<random>.mcountrw-tmp`` and its
    log's); :func:`_run_task` ends the worker after the unwinding if the parent is gone by then."""
    global _signalled
    if not _in_task:
        os._exit(128 + signum)
    if _signalled:
        return
    _signalled = signum
    if os.getppid() != parent:
        raise _Orphaned(signum)
    if not callable(inherited):
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)
        return
    # The parent's handler may ignore the signals from here (rewriter.cli.exits.interrupt): this
    # one's stay, which end the worker when its parent dies after (PR_SET_PDEATHSIG, a SIGTERM).
    mine = {each: signal.getsignal(each) for each in (signal.SIGINT, signal.SIGTERM)}
    try:
        inherited(signum, frame)
    finally:
        for each, handler in mine.items():
            signal.signal(each, handler)


def _run_task(fn: Callable[[Sequence[T]], list[R]], parent: int, batch: Sequence[T]) -> list[R]:
    """``fn(batch)`` in a worker; ends the worker once an orphaned task has unwound. Once a signal
    has unwound a task, the batches already queued to this worker are not started: each raises
    that signal's exception again (the run is over; the worker ran each of them in full, the
    signal spent on the first)."""
    global _in_task, _stopped
    if _stopped is not None:
        raise _stopped
    _in_task = True
    try:
        return fn(batch)
    except _Orphaned as e:
        os._exit(128 + e.signum)
    except Exception:
        raise
    except BaseException as e:  # a signal's (rewriter.cli.exits.Interrupted)
        _stopped = e
        raise
    finally:
        _in_task = False
        if _signalled and os.getppid() != parent:  # its death signal came as the task unwound
            os._exit(128 + _signalled)


_PR_SET_PDEATHSIG: Final = 1  # linux/prctl.h


def _end_with_parent(parent: int) -> None:
    """Have the kernel send this worker SIGTERM when its parent dies. A parent that ends while its
    pool still runs (a second Ctrl-C as it shut the pool down, a SIGKILL) would otherwise leave the
    workers waiting for work forever (each holds the task pipe open for the others, so none reads
    its end), holding every descriptor they were forked with: the run's flocks on its trees, which
    then refused every later run. SIGTERM, not SIGKILL: a worker that writes unwinds as the parent
    would, and leaves no temporary file."""
    import ctypes  # here: only workers need it

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):  # not Linux: no such call, and the old behaviour
        return
    if os.getppid() != parent:  # it died before the call took effect
        os.kill(os.getpid(), signal.SIGTERM)


def default_jobs() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
