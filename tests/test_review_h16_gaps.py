"""Gaps reviewers listed in the rewriting messages and in diff: a damaged patch log beside a file
was called another file's log, ... (see each test)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from unittest import mock

import pytest
from conftest import FIXTURES, assert_one_line, invoke

BIN = FIXTURES / "bin"


# -- a damaged log beside a file is damaged, not another file's -----------------------------------


def _cut_short(log: Path) -> None:
    log.write_text("".join(log.read_text().splitlines(keepends=True)[:-1]))  # the footer gone


def _not_json(log: Path) -> None:
    log.write_text(log.read_text()[:200])  # cut mid-line


def _bad_checksum(log: Path) -> None:
    lines = log.read_text().splitlines(keepends=True)
    footer = json.loads(lines[-1])
    footer["sha256"] = "0" * 64
    log.write_text("".join(lines[:-1]) + json.dumps(footer) + "\n")


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        (_cut_short, "truncated patch log (no footer)"),
        (_not_json, "not JSON"),
        (_bad_checksum, "footer checksum does not match"),
    ],
)
def test_a_damaged_log_beside_the_file_is_said_to_be_damaged(tmp_path: Path, damage: object, reason: str) -> None:
    """It was "the patch log beside it is not its log (REASON)": a log that cannot be read is not
    known to be another file's. Set aside all the same: nothing to do, exit 1, nothing written."""
    prog, out = tmp_path / "prog", tmp_path / "nop"
    shutil.copy(BIN / "prof-le", prog)
    assert invoke("nop", prog, "-o", out, "--drop-records").exit_code == 0
    log = tmp_path / "nop.mcountrw.jsonl"
    damage(log)  # type: ignore[operator]
    result = invoke("apply", out, "--to", "enabled", "-o", tmp_path / "en")
    line = assert_one_line(result, 1, "nothing to do", "the patch log beside it cannot be read (", reason)
    assert "is not its log" not in line and f"{log}" in line
    assert not (tmp_path / "en").exists()


@pytest.mark.parametrize(("damage", "reason"), [(_cut_short, "no footer"), (_not_json, "not JSON")])
def test_in_place_refuses_to_replace_a_damaged_log_and_says_it_is_damaged(
    tmp_path: Path, damage: object, reason: str
) -> None:
    """The file's own log, damaged, beside it: an in-place rewrite refused to replace it (right: it
    would keep no copy) as ``not the log of F``, a guess. Nothing written, the log left as it is."""
    prog = tmp_path / "prog"
    shutil.copy(BIN / "prof-le", prog)
    assert invoke("nop", prog, "--in-place", "--exclude", "leaf_add").exit_code == 0
    log = tmp_path / "prog.mcountrw.jsonl"
    damage(log)  # type: ignore[operator]
    kept = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    result = invoke("nop", prog, "--in-place")
    line = assert_one_line(result, 2, "error", f"{log}", reason, f"the patch log beside {prog} cannot be read")
    assert "not the log of" not in line and "an in-place rewrite would replace it" in line
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == kept


def test_another_files_log_beside_the_file_is_still_not_its_log(tmp_path: Path) -> None:
    """A whole log whose output is another file: that, and the two hashes, as before."""
    prog = tmp_path / "prog"
    shutil.copy(BIN / "prof-le", prog)
    assert invoke("nop", prog, "-o", tmp_path / "nop", "--drop-records").exit_code == 0
    assert invoke("nop", prog, "-o", tmp_path / "other", "--drop-records", "--exclude", "leaf_add").exit_code == 0
    shutil.copy(tmp_path / "other.mcountrw.jsonl", tmp_path / "nop.mcountrw.jsonl")
    result = invoke("apply", tmp_path / "nop", "--to", "enabled", "-o", tmp_path / "en")
    words = ("the patch log beside it is not its log (", "its output has sha256")
    line = assert_one_line(result, 1, "nothing to do", *words)
    assert "cannot be read" not in line and not (tmp_path / "en").exists()


# -- the --keep-records warning names its file -----------------------------------------------------


@pytest.mark.corpus
@pytest.mark.parametrize("command", [("nop",), ("apply", "--to", "nopped")])
def test_the_keep_records_warning_names_its_file(corpus, tmp_path: Path, command: tuple[str, ...]) -> None:  # type: ignore[no-untyped-def]
    """``mcountrw: warning: 3 recorded sites now hold nopped words, ...`` named no file, where every
    other line of the run names its file; a run over several files (a script's loop) could not
    tell which one it meant."""
    module = corpus.modules_dir / "fs/nls/nls_utf8.ko"
    result = invoke(*command[:1], module, *command[1:], "-o", tmp_path / "n.ko", "--keep-records", "--strip-signature")
    assert result.exit_code == 0, result.output
    warnings = [line for line in result.stderr.splitlines() if "warning:" in line]
    assert len(warnings) == 1 and warnings[0].startswith(f"mcountrw: warning: {module}: 3 recorded sites"), warnings


# -- --stage-images that cannot be written is refused before the work ----------------------------


@pytest.fixture
def unwritable_dir(tmp_path: Path) -> Iterator[Path]:
    """A directory no one can write in: mode 0555, or for root (who ignores the mode) immutable."""
    place = tmp_path / "ro"
    place.mkdir()
    if os.geteuid() != 0:
        place.chmod(0o555)
        yield place
        place.chmod(0o755)
        return
    if shutil.which("chattr") is None or subprocess.run(["chattr", "+i", place], capture_output=True).returncode:
        pytest.skip("root, and no chattr +i here to make a directory it cannot write in")
    try:
        yield place
    finally:
        subprocess.run(["chattr", "-i", place], check=True)


@pytest.mark.parametrize(
    ("stages", "words"),
    [
        ("{ro}/stages", "cannot write in {ro}"),
        ("{ro}", "cannot write in {ro}"),
        ("{prog}/stages", "{prog} is not a directory"),
    ],
)
@pytest.mark.parametrize("dry", [(), ("--dry-run",)])
def test_stage_images_that_cannot_be_written_are_refused_before_the_work(
    tmp_path: Path, unwritable_dir: Path, stages: str, words: str, dry: tuple[str, ...]
) -> None:
    """One line, exit 2, nothing written, and before the scan: it was found by the writes at the
    end (``--stage-images prog/st: Not a directory`` after 0.8 s of a 6.1 vmlinux's scan and
    rewrite), and a records-only rewrite wrote its output and said "no stage image written to" it."""
    prog = tmp_path / "prog"
    shutil.copy(BIN / "prof-le", prog)
    names = {"ro": unwritable_dir, "prog": prog}
    stage_dir = stages.format(**names)
    with mock.patch("rewriter.files.scan", side_effect=AssertionError("scanned before --stage-images was checked")):
        result = invoke("apply", prog, "--to", "disabled", "-o", tmp_path / "out", "--stage-images", stage_dir, *dry)
    assert_one_line(result, 2, "error", f"--stage-images {stage_dir}: {words.format(**names)}")
    assert not result.stdout and sorted(p.name for p in tmp_path.iterdir()) == ["prog", "ro"]


# -- a procfs or sysfs file is no empty file --------------------------------------------------------


PROC_FILE = Path("/proc/version")  # stat size 0, contents when read


@pytest.mark.skipif(not PROC_FILE.is_file() or PROC_FILE.stat().st_size != 0, reason="no procfs here")
@pytest.mark.parametrize("command", [("scan",), ("audit",), ("diff", str(BIN / "prof-le"))])
def test_a_procfs_file_is_said_to_report_no_size_not_to_be_empty(tmp_path: Path, command: tuple[str, ...]) -> None:
    """``scan /proc/kallsyms`` said ``/proc/kallsyms: empty file``: it is not (it reads as megabytes
    of text); it only reports no size. A file that is empty still says so."""
    assert PROC_FILE.read_bytes()  # what makes "empty" false
    result = invoke(*command, PROC_FILE)
    assert_one_line(result, 2, "error", f"{PROC_FILE}: a file that reports no size (procfs/sysfs?): not an image")
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    assert_one_line(invoke(*command, empty), 2, "error", f"{empty}: empty file")


# -- diff names the symbol a weak body follows ----------------------------------------------------


def _weak_changes(a: Path, b: Path) -> tuple[list[dict], str]:
    """The JSON changes of ``diff A B`` at sites in no function, and the markdown report."""
    result = invoke("diff", "--format", "json", a, b)
    assert result.exit_code == 1, result.output
    (image,) = json.loads(result.stdout)["images"]
    return [c for c in image["changes"] if c["function"] is None], invoke("diff", "--all", a, b).stdout


def _follows_nearest(change: dict, a: Path, b: Path) -> None:
    """``follows`` is among the names of the text symbol nearest before the site (pyelftools), and
    the markdown row names it."""
    from test_review_h16_scan import _nearest, _text_symbols

    path, site = (b, change["after"]) if change["before"] is None else (a, change["before"])
    assert change["follows"] in _nearest(_text_symbols(path), site)[1], change


@pytest.mark.corpus
def test_diff_names_the_symbol_an_unpaired_weak_body_follows() -> None:
    """6.12 and its 64k-page build: one weak body only in A, one only in B. Paired, a weak body is
    matched by the symbol it follows; unpaired, the report said only ``added | ? | | 0xc...``,
    and the JSON ``"function": null``: which weak body, the reader had to work out from the address."""
    from boot import require_kernel

    a, b = require_kernel("6.12").vmlinux, require_kernel("6.12-64k").vmlinux
    unnamed, md = _weak_changes(a, b)
    assert {c["change"] for c in unnamed} == {"added", "removed"}, unnamed
    for c in unnamed:
        _follows_nearest(c, a, b)
        assert f"| {c['change']} | ? (after {c['follows']}) |" in md, md


@pytest.mark.corpus
def test_diff_names_the_symbol_a_paired_weak_body_follows(corpus, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """6.1's kvm.ko and its nop: each of its four weak bodies changes state and loses its record;
    each change names the symbol the body follows, by which it was paired."""
    module = next((corpus.modules_dir / "arch/powerpc/kvm").glob("kvm.ko*"))
    nopped = tmp_path / module.name
    assert invoke("nop", module, "-o", nopped, "--drop-records", "--strip-signature").exit_code == 0
    unnamed, md = _weak_changes(module, nopped)
    assert len({c["before"]["offset"] for c in unnamed}) == 4 and len(unnamed) == 8, unnamed
    for c in unnamed:
        _follows_nearest(c, module, nopped)
        assert f"| {c['change']} | ? (after {c['follows']}) |" in md, md
