"""Many files at once (rewriter.batch): which files a directory holds, and reports made in workers."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import pytest
from conftest import FIXTURES, unwrapped

from rewriter.batch import expand, map_batches, scan_one
from rewriter.prose import wrapped
from rewriter.report import scanfmt

BIN = FIXTURES / "bin"


def test_a_directory_is_walked_depth_first_sorted_without_following_links(tmp_path: Path) -> None:
    elf = (BIN / "clean.o").read_bytes()
    for rel in ("b.o", "a.ko.xz", "z/deep/c.o", "m/d.ko", "m/e", "m/notes.txt", "real/f.o"):
        path = tmp_path / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"plain text, not ELF" if rel.endswith(".txt") else elf)
    (tmp_path / "m" / "link.o").symlink_to(tmp_path / "b.o")  # a link to a file: not followed
    (tmp_path / "linked").symlink_to(tmp_path / "real")  # a link to a directory: not entered
    os.mkfifo(tmp_path / "m" / "pipe.ko")  # named like a module, but would block a read
    files, errors = expand([tmp_path])
    assert errors == []
    # Each directory's files (sorted, by name or by their ELF magic) before its subdirectories.
    expect = ["a.ko.xz", "b.o", "m/d.ko", "m/e", "real/f.o", "z/deep/c.o"]
    assert [str(p.relative_to(tmp_path)) for p in files] == expect


def _scan(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "rewriter", "scan", *args], capture_output=True, text=True)


def test_reports_made_in_workers_are_the_one_process_report(tmp_path: Path) -> None:
    """Each worker formats the scans it made; joined in input order they must be, byte for byte,
    the report of one process, in every format, including the error lines of bad files."""
    names = ["prof-le", "prof-le.o", "std-le", "patchable-le.o", "anom-dangling", "anom-broken.o", "clean.o"]
    for name in names:
        (tmp_path / name).write_bytes((BIN / name).read_bytes())
    (tmp_path / "bad.ko").write_bytes(b"\x7fELF but nothing else")
    reports = {}
    for fmt in ("json", "csv", "table"):
        one = _scan("--jobs", "1", "--format", fmt, str(tmp_path))
        two = _scan("--jobs", "2", "--format", fmt, str(tmp_path))
        assert one.returncode == two.returncode == 2, two.stderr  # bad.ko
        assert (one.stdout, one.stderr) == (two.stdout, two.stderr)
        reports[fmt] = two.stdout
    files, _ = expand([tmp_path])
    outcomes = [scan_one(p) for p in files]
    scans = [o.scan for o in outcomes if o.scan is not None]
    errors = [o.error for o in outcomes if o.error is not None]
    assert len(scans) == len(names) and len(errors) == 1
    assert reports["json"] == scanfmt.scans_json_text(scans, errors) + "\n"
    assert json.loads(reports["json"]) == scanfmt.scans_json(scans, errors)
    assert reports["csv"] == scanfmt.csv_text(scans)
    pieces = [scanfmt.table_text_shared(s, 20) for s in scans]
    table = "".join(text for text, _, _ in pieces)
    shared = "".join(line + "\n" for line in scanfmt.shared_lines(notes for _, _, notes in pieces))
    totals = scanfmt.add_totals(counts for _, counts, _ in pieces)
    total = "".join(line + "\n" for line in wrapped(scanfmt.total_line(totals, len(errors))))
    assert reports["table"] == table + shared + total


def _default_sigint(batch: Sequence[int]) -> list[tuple[int, bool]]:
    """Each item, and whether this process leaves SIGINT to the default action (a quiet worker)."""
    return [(i, signal.getsignal(signal.SIGINT) == signal.SIG_DFL) for i in batch]


def test_map_batches_gives_each_batch_its_results_in_process_and_in_workers() -> None:
    """The one pool serves prenop's batches too: every batch once, with its own results; in order
    on this process with one job; in workers, quiet ones unless the caller needs them to unwind."""
    batches = [[0, 1, 2], [3], [4, 5], [6, 7, 8, 9]]
    here = list(map_batches(_default_sigint, batches, 1))
    assert here == [(b, [(i, False) for i in batch]) for b, batch in enumerate(batches)]
    for quiet in (True, False):
        done = dict(map_batches(_default_sigint, batches, 2, quiet_workers=quiet))
        assert done == {b: [(i, quiet) for i in batch] for b, batch in enumerate(batches)}


def test_a_file_named_twice_or_under_two_named_directories_is_read_once(tmp_path: Path) -> None:
    """`audit kernel/fs kernel/fs/nls` counted every nls module twice, and `scan F F` listed F
    twice in its total. The first naming wins: its tree name is the one reports and logs use."""
    sub = tmp_path / "fs" / "nls"
    sub.mkdir(parents=True)
    for name in ("a.o", "b.o"):
        (sub / name).write_bytes((FIXTURES / "bin" / "prof-le.o").read_bytes())
    files, errors = expand([tmp_path / "fs", sub, sub / "a.o", Path(f"{sub}/./b.o")])
    assert errors == [] and files == [sub / "a.o", sub / "b.o"]
    proc = subprocess.run(
        [sys.executable, "-m", "rewriter", "scan", str(tmp_path / "fs"), str(sub), str(sub / "a.o")],
        capture_output=True, text=True,
    )  # fmt: skip
    assert proc.returncode == 0 and unwrapped(proc.stdout).splitlines()[-1].startswith("total: 2 images, 12 sites"), (
        proc.stdout
    )
    policy = tmp_path / "p.policy"
    policy.write_text("default nop\n")
    check = subprocess.run(
        [sys.executable, "-m", "rewriter", "policy", "check", str(policy), str(sub / "a.o"), str(sub / "a.o")],
        capture_output=True, text=True,
    )  # fmt: skip
    assert check.returncode == 0 and "1 file (mprofile 1), 6 sites" in check.stdout, check.stdout + check.stderr


_ORPHAN = """
import multiprocessing, os, signal, sys, time
from rewriter.batch import map_batches
from rewriter.cli.exits import interrupt

def work(batch):
    time.sleep(batch[0])  # a long task: a worker rewriting a file
    return [os.getpid()]

if __name__ == "__main__":
    quiet = sys.argv[1] == "quiet"
    if not quiet:  # as the CLI runs a writing pool: its handlers, which the workers keep
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, interrupt)
    for n, _ in enumerate(map_batches(work, [[0.3], [0.3], [30.0], [30.0]], 2, quiet_workers=quiet)):
        if n == 1:
            time.sleep(0.3)  # both workers are in their long task now
            print(" ".join(str(c.pid) for c in multiprocessing.active_children()), flush=True)
            os._exit(0)  # the parent dies with its pool running: a second Ctrl-C as it shut down, a SIGKILL
"""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.mark.parametrize("quiet", ["quiet", "writing"])
def test_workers_end_with_their_parent(quiet: str, tmp_path: Path) -> None:
    """A parent that died while its pool ran left its workers waiting for work forever, holding the
    flocks they were forked with: every later prenop was refused, `locked by pid N` of a dead pid
    (an interrupted whole-tree run, SIGINT to it and then to its group, as `timeout -s INT` sends)."""
    script, pids_file, err_file = tmp_path / "orphan.py", tmp_path / "pids", tmp_path / "err"
    script.write_text(_ORPHAN)
    with pids_file.open("w") as out, err_file.open("w") as err:  # files: orphans holding a pipe would hang it
        subprocess.run([sys.executable, str(script), quiet], stdout=out, stderr=err, check=True, timeout=60)
    pids = [int(p) for p in pids_file.read_text().split()]
    assert len(pids) == 2
    try:
        deadline = time.monotonic() + 5  # their tasks would run 30 s
        while any(map(_alive, pids)) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not any(map(_alive, pids)), "workers outlived their parent"
        assert "Traceback" not in err_file.read_text(), err_file.read_text()
    finally:
        for pid in filter(_alive, pids):
            os.kill(pid, signal.SIGKILL)
