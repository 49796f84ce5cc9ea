"""Many files at once: expand directories, scan in parallel, keep going past bad files.

Each worker process loads and scans one file and sends back the finished :class:`Scan`, or the
one-line error for that file. Results come back in input order so that output is reproducible
whatever ``--jobs`` is.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import NamedTuple

from rewriter.elf.image import Image
from rewriter.elf.structs import ELF_MAGIC
from rewriter.errors import RewriteError
from rewriter.sites import Scan, scan

MODULE_SUFFIXES = (".ko", ".ko.xz", ".ko.gz", ".ko.zst")


class Outcome(NamedTuple):
    path: Path
    scan: Scan | None
    error: str | None


def expand(paths: Sequence[Path]) -> tuple[list[Path], list[str]]:
    """Files named, and ELF files or modules found below directories named (sorted), plus one
    error line for each path that cannot be read. Symlinks to directories are not followed."""
    files: list[Path] = []
    errors: list[str] = []
    for path in paths:
        if path.is_dir():
            found, errs = _walk(path)
            files.extend(found)
            errors.extend(errs)
        elif path.exists():
            files.append(path)
        else:
            errors.append(f"{path}: no such file or directory")
    return files, errors


def _walk(root: Path) -> tuple[list[Path], list[str]]:
    found: list[Path] = []
    errors: list[str] = []

    def on_error(e: OSError) -> None:
        errors.append(f"{e.filename}: {e.strerror}")

    for dirpath, dirnames, filenames in os.walk(root, onerror=on_error):
        dirnames.sort()
        for name in sorted(filenames):
            path = Path(dirpath) / name
            if path.is_symlink() or not path.is_file():
                continue  # a FIFO would block the read below; links are not followed
            by_name = name.endswith(MODULE_SUFFIXES) or name.endswith(".o")
            if by_name or _looks_like_elf(path, errors):
                found.append(path)
    return found, errors


def _looks_like_elf(path: Path, errors: list[str]) -> bool:
    try:
        with open(path, "rb") as fh:
            head = fh.read(8)
    except OSError as e:
        errors.append(f"{path}: {e.strerror}")
        return False
    return head.startswith(ELF_MAGIC)


def scan_one(path: Path, mcount_addr: int | None = None) -> Outcome:
    try:
        return Outcome(path, scan(Image.load(path), mcount_addr), None)
    except RewriteError as e:
        return Outcome(path, None, str(e))
    except (ValueError, IndexError, OverflowError, MemoryError) as e:
        # A corrupt file that slipped past the structural checks: still one line, not a traceback.
        return Outcome(path, None, f"{path}: corrupt ELF data ({type(e).__name__}: {e})")


def scan_many(
    files: Sequence[Path],
    jobs: int,
    mcount_addr: int | None = None,
    progress: Callable[[], None] | None = None,
) -> Iterator[Outcome]:
    """Outcomes in the order of ``files``."""
    if jobs <= 1 or len(files) <= 1:
        for path in files:
            yield scan_one(path, mcount_addr)
            if progress:
                progress()
        return
    # Imported here: the process pool machinery costs 17 ms to import, a fifth of a vmlinux scan.
    from concurrent.futures import ProcessPoolExecutor
    from concurrent.futures.process import BrokenProcessPool

    with ProcessPoolExecutor(max_workers=jobs, initializer=_quiet_worker) as pool:
        chunk = max(1, min(64, len(files) // (jobs * 8)))
        try:
            for outcome in pool.map(scan_one, files, [mcount_addr] * len(files), chunksize=chunk):
                yield outcome
                if progress:
                    progress()
        except BrokenProcessPool:
            # A worker killed from outside: out of memory, or SIGBUS from a file truncated while
            # mapped. Which file it held is lost with it.
            raise RewriteError("a scan worker died (out of memory, or a file truncated while it was read?)") from None


def _quiet_worker() -> None:
    """Ctrl-C reaches the whole process group: workers just stop, and the parent reports it once."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def default_jobs() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
