"""Findings of the 2026-12-05 black-box passes on the rewrite commands: a file rewritten or undone
in place kept its bytes but not its owner, and patch logs of a chain of rewrites could be written
over or moved aside by the options of a later step (the only way back to the original)."""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path
from typing import Final

import pytest
from conftest import FIXTURES, assert_one_line, invoke

from rewriter.log import load

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


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def chain(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """p0 (prof-le) -> p1 -> p2, each step's log beside its output; run from ``tmp_path``."""
    monkeypatch.chdir(tmp_path)
    shutil.copyfile(BIN / "prof-le", "p0")
    assert invoke("nop", "p0", "-o", "p1", "--only", "leaf_add").exit_code == 0
    assert invoke("nop", "p1", "-o", "p2", "--only", "sum8").exit_code == 0
    return tmp_path


REPLACING_A_STEP_BEFORE: Final = [
    pytest.param(("undo", "p2", "-o", "p1.mcountrw.jsonl"), "-o p1.mcountrw.jsonl: is", id="undo-o"),
    pytest.param(("nop", "p2", "-o", "p1.mcountrw.jsonl", "--only", "fp_mix"), "-o p1.mcountrw.jsonl: is", id="nop-o"),
    pytest.param(
        ("nop", "p2", "-o", "p3", "--only", "fp_mix", "--log", "p1.mcountrw.jsonl"),
        "p1.mcountrw.jsonl: the patch log would replace",
        id="nop-log",
    ),
]


@pytest.mark.parametrize(("args", "lead"), REPLACING_A_STEP_BEFORE)
def test_no_output_replaces_the_log_of_an_earlier_step(chain: Path, args: tuple[str, ...], lead: str) -> None:
    """p1's log is the only way from p1 back to p0. `undo p2 -o p1.mcountrw.jsonl` wrote the
    restored ELF over it, exit 0, and then named it as the log to undo the step before with."""
    before = {p.name: _sha(p) for p in chain.iterdir()}
    refused = invoke(*args)
    assert_one_line(
        refused,
        2,
        "error",
        f"{lead} the patch log of an earlier step (p2.mcountrw.jsonl builds on it), which undo needs to go back "
        "past that step",
    )
    assert {p.name: _sha(p) for p in chain.iterdir()} == before


def test_the_inputs_own_log_is_not_moved_aside_for_another_output(chain: Path) -> None:
    """`--log p1.mcountrw.jsonl -o p3` renamed p1's log to a hashed name no command looks for, put
    p3's log in its place, and `undo p1` then said there was nothing to undo."""
    before = {p.name: _sha(p) for p in chain.iterdir()}
    refused = invoke("nop", "p1", "-o", "p3", "--only", "fp_mix", "--log", "p1.mcountrw.jsonl")
    assert_one_line(
        refused,
        2,
        "error",
        "p1.mcountrw.jsonl: the patch log would replace the patch log of the input p1, which its undo needs "
        "(only --in-place, whose log takes that name, moves it aside first)",
    )
    assert {p.name: _sha(p) for p in chain.iterdir()} == before


def test_a_base_log_is_named_from_its_logs_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The second step, run from a/ and writing to b/, named its base `g.o.mcountrw.jsonl` (from the
    working directory), so undo from b/ said the log of the step before was not found."""
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    shutil.copyfile(BIN / "prof-le.o", tmp_path / "a" / "f.o")
    monkeypatch.chdir(tmp_path)
    assert invoke("nop", "a/f.o", "-o", "a/g.o", "--drop-records", "--only", "leaf_add").exit_code == 0
    monkeypatch.chdir(tmp_path / "a")
    assert invoke("nop", "g.o", "-o", "../b/h.o", "--drop-records", "--only", "sum8").exit_code == 0
    base = load(tmp_path / "b" / "h.o.mcountrw.jsonl").header.base
    assert base is not None and base.path == "../a/g.o.mcountrw.jsonl"
    for where in (tmp_path / "b", tmp_path):
        monkeypatch.chdir(where)
        done = invoke("undo", tmp_path / "b" / "h.o", "-o", tmp_path / "g2.o")
        assert done.exit_code == 0, done.output
        step_before = tmp_path / "a" / "g.o.mcountrw.jsonl"  # named plainly, not b/../a/ (log.find_base)
        assert f"its own log: {step_before} (undo with it for the step before)" in done.stderr
    assert invoke("undo", tmp_path / "g2.o", "--log", step_before, "-o", tmp_path / "f2.o").exit_code == 0
    assert _sha(tmp_path / "f2.o") == _sha(BIN / "prof-le.o")


def test_an_in_place_undo_whose_base_log_is_gone_removes_the_undone_log(tmp_path: Path) -> None:
    """The archived log of the step before was deleted by hand: the undone step's log stayed beside
    the file, describing a file that no longer exists, so every scan warned of it and the next
    in-place rewrite refused the file."""
    f = tmp_path / "f"
    shutil.copyfile(BIN / "prof-le", f)
    assert invoke("nop", f, "--in-place", "--only", "leaf_add").exit_code == 0
    assert invoke("nop", f, "--in-place", "--only", "sum8").exit_code == 0
    (archived,) = tmp_path.glob("f.mcountrw.*.jsonl")
    archived.unlink()
    done = invoke("undo", f, "--in-place")
    assert done.exit_code == 0, done.output
    assert f"removed {f}.mcountrw.jsonl: the step it describes is undone" in done.stderr
    assert f"the log of the step before, {archived.name} " in done.stderr and "is not found" in done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f"]
    again = invoke("nop", f, "--in-place", "--only", "fp_mix")
    assert again.exit_code == 0, again.output


@pytest.mark.parametrize(
    "args",
    [("undo", "{missing}", "-o", "{out}"), ("verify", "{missing}", "{fixture}"), ("verify", "{fixture}", "{missing}")],
    ids=["undo", "verify-original", "verify-patched"],
)
def test_a_missing_file_is_named_as_missing_not_as_lacking_a_log(args: tuple[str, ...], tmp_path: Path) -> None:
    missing = tmp_path / "nonexist"
    values = {"missing": missing, "out": tmp_path / "out", "fixture": BIN / "prof-le.o"}
    refused = invoke(*(a.format(**values) for a in args))
    assert_one_line(refused, 2, "error", f"{missing}: No such file or directory")
    assert sorted(tmp_path.iterdir()) == []
