"""Review h18-H: output places a run cannot use are refused in one line naming them."""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from click.testing import Result
from conftest import FIXTURES, assert_one_line, invoke

OBJ = FIXTURES / "bin" / "prof-le.o"  # 6 mprofile sites; prenop takes it as a module under a .ko name


def _shas(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in root.rglob("*") if p.is_file()
    }


@pytest.fixture
def place(tmp_path: Path) -> Path:
    """``tree/x.ko``, a policy that nops all, a regular file ``file`` and a symlink to nothing ``gone``."""
    (tmp_path / "tree").mkdir()
    shutil.copy(OBJ, tmp_path / "tree" / "x.ko")
    (tmp_path / "nop.policy").write_text("default nop\n")
    (tmp_path / "file").write_text("a file\n")
    (tmp_path / "gone").symlink_to(tmp_path / "nothing")
    return tmp_path


def _prenop(place: Path, *more: object) -> tuple[Result, dict[str, str]]:
    before = _shas(place)
    result = invoke("prenop", "--policy", place / "nop.policy", place / "tree", *more)
    return result, before


@pytest.mark.parametrize(
    ("out", "problem"),
    [
        ("file", "{o}: not a directory (a tree is written into one: name a directory, or a path not there)"),
        ("gone", "{o}: {o} is a symlink to nothing"),
        ("file/x", "{o}: {p}/file is not a directory"),
    ],
)
def test_prenop_of_a_tree_to_an_output_that_cannot_be_a_directory(place: Path, out: str, problem: str) -> None:
    """``prenop TREE -o FILE`` said only ``FILE: File exists`` (the mkdir of the output tree), a
    symlink to nothing too; ``-o FILE/x`` said ``FILE/x: Not a directory``, naming no file."""
    o = place / out
    result, before = _prenop(place, "-o", o)
    assert_one_line(result, 2, "error", "-o " + problem.format(o=o, p=place))
    assert _shas(place) == before and not result.stdout


def test_prenop_log_dir_that_is_a_symlink_to_nothing_is_refused_before_anything(place: Path) -> None:
    """It ran the whole tree, each module failing with ``gone: File exists``, then exit 2."""
    result, before = _prenop(place, "-o", place / "out", "--log-dir", place / "gone")
    assert_one_line(result, 2, "error", f"--log-dir {place / 'gone'}: {place / 'gone'} is a symlink to nothing")
    assert _shas(place) == before and not (place / "out").exists()


@pytest.mark.parametrize("command", [("nop",), ("scan",), ("apply", "--to", "nopped")])
def test_an_output_under_a_regular_file_names_that_file(place: Path, command: tuple[str, ...]) -> None:
    """``-o FILE/x`` said ``FILE/x: directory FILE does not exist``: FILE is there, a regular file."""
    before = _shas(place)
    result = invoke(*command, place / "tree" / "x.ko", "-o", place / "file" / "x")
    assert_one_line(result, 2, "error", f"{place / 'file' / 'x'}: {place / 'file'} is not a directory")
    assert _shas(place) == before


# -- a one-file run inside a tree a prenop holds, and the prenop of a tree a one-file run writes in --


def _start(*args: object) -> subprocess.Popen[str]:
    cmd = [sys.executable, "-m", "rewriter", *map(str, args)]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@contextmanager
def _held(path: Path) -> Iterator[None]:
    """The exclusive flock on ``path``, held by the test: a run that needs it waits (``--wait``)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _waiting(run: subprocess.Popen[str], on: Path) -> None:
    """``run`` has said it waits for the test's lock on ``on``: it holds every lock ordered before."""
    assert run.stderr is not None
    line = run.stderr.readline()
    assert line == f"mcountrw: waiting for pid {os.getpid()}, which holds the lock on {on}\n", line


def _refused_for(result: tuple[int, str], tree: Path, pid: int) -> None:
    code, text = result
    line = (
        f"mcountrw: error: {tree}: locked by pid {pid} (another mcountrw run rewriting it?); pass --wait to wait for it"
    )
    assert code == 2 and text.strip() == line, text


def _run(*args: object) -> tuple[int, str]:
    p = _start(*args)
    out, err = p.communicate(timeout=60)
    return p.returncode, out + err


@pytest.mark.parametrize("command", [("nop",), ("apply", "--to", "nopped")])
def test_a_one_file_run_inside_a_tree_a_prenop_rewrites_is_refused(place: Path, command: tuple[str, ...]) -> None:
    """``nop --in-place TREE/x.ko`` during ``prenop --in-place TREE`` locked only x.ko: both ran,
    and the later replaced the earlier's work (a log could land beside the other's file). The
    prenop holds TREE; it waits here for the test's lock on its --log-dir, which sorts after TREE."""
    logs = place / "zlogs"
    logs.mkdir()
    tree = place / "tree"
    with _held(logs):
        prenop = _start("prenop", "--policy", place / "nop.policy", "--in-place", "--log-dir", logs, "--wait", tree)
        _waiting(prenop, logs)
        before = _shas(tree)
        _refused_for(_run(*command, tree / "x.ko", "--in-place", "--drop-records"), tree, prenop.pid)
        assert _shas(tree) == before  # nothing written by the refused run, no log beside x.ko
    assert prenop.wait(timeout=60) == 0, prenop.communicate()
    assert (logs / "x.ko.mcountrw.jsonl").is_file() and not (tree / "x.ko.mcountrw.jsonl").exists()


def test_a_prenop_of_a_tree_a_one_file_run_rewrites_in_is_refused(place: Path) -> None:
    """The other way round: ``nop --in-place TREE/x.ko`` holds TREE shared (it waits here for the
    test's lock on x.ko itself); ``prenop --in-place TREE`` and ``prenop --in-place`` of the
    directory above are refused naming TREE, and write nothing."""
    tree = place / "tree"
    sub = tree / "sub"
    sub.mkdir()
    shutil.copy(OBJ, sub / "y.ko")
    x = tree / "x.ko"
    with _held(x):
        nop = _start("nop", x, "--in-place", "--drop-records", "--wait")
        _waiting(nop, x)
        before = _shas(place)
        _refused_for(_run("prenop", "--policy", place / "nop.policy", "--in-place", tree), tree, nop.pid)
        code, text = _run("prenop", "--policy", place / "nop.policy", "--in-place", place)
        assert code == 2 and f"{place}: locked by pid {nop.pid} " in text and "\n" not in text.strip(), text
        assert _shas(place) == before
        code, text = _run("nop", sub / "y.ko", "--in-place", "--drop-records")  # side by side: not kept apart
        assert code == 0, text
    assert nop.wait(timeout=60) == 0, nop.communicate()


def test_the_directories_above_leave_out_one_that_cannot_be_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A directory the user may not read (mode 711 above a user's file) cannot be opened to lock:
    it is left out of the shared locks, rather than refusing a run that ran before."""
    from rewriter import lock

    f = tmp_path / "d" / "f"
    f.parent.mkdir()
    assert tmp_path / "d" in lock.above([f]) and Path("/") in lock.above([f])
    real = os.access
    monkeypatch.setattr(lock.os, "access", lambda p, mode: Path(p) != tmp_path and real(p, mode))
    assert tmp_path not in lock.above([f]) and tmp_path / "d" in lock.above([f])
    with lock.hold([], shared=lock.above([f.parent])):
        pass
