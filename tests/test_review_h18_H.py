"""Review h18-H: output places a run cannot use are refused in one line naming them."""

from __future__ import annotations

import hashlib
import shutil
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
