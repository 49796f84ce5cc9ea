"""Findings of the 2026-12-05 black-box passes on the rewrite commands: a file rewritten or undone
in place kept its bytes but not its owner, and patch logs of a chain of rewrites could be written
over or moved aside by the options of a later step (the only way back to the original)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from conftest import FIXTURES, invoke

BIN = FIXTURES / "bin"
NOBODY = 65534  # an owner and group that are not the test's


def _given_away(path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("only root can give a file to another user")  # CI runs as root
    os.chown(path, NOBODY, NOBODY)


def _owner(path: Path) -> tuple[int, int, int]:
    st = path.stat()
    return st.st_uid, st.st_gid, st.st_mode & 0o7777


@pytest.mark.parametrize("command", ["nop", "undo"])
def test_a_file_rewritten_in_place_keeps_its_owner_group_and_mode(command: str, tmp_path: Path) -> None:
    """The rename put root's temporary file in place of a module owned by another user."""
    f = tmp_path / "f.o"
    shutil.copyfile(BIN / "prof-le.o", f)
    if command == "undo":
        assert invoke("nop", f, "--in-place").exit_code == 0
    _given_away(f)
    f.chmod(0o640)
    done = invoke(command, f, "--in-place")
    assert done.exit_code == 0, done.output
    assert _owner(f) == (NOBODY, NOBODY, 0o640)


def test_prenop_in_place_keeps_each_modules_owner(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    tree.mkdir()
    shutil.copyfile(BIN / "prof-le.o", tree / "m.ko")
    _given_away(tree / "m.ko")
    policy = tmp_path / "p.policy"
    policy.write_text("default nop\n")
    done = invoke("prenop", "--policy", policy, "--in-place", tree)
    assert done.exit_code == 0, done.output
    assert (tree / "m.ko.mcountrw.jsonl").exists()  # it was rewritten
    assert _owner(tree / "m.ko")[:2] == (NOBODY, NOBODY)
