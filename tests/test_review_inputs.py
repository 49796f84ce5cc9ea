"""Inputs a hostile review found mishandled (2026-12-03): names the system cannot hold, JSON
nested or sized past what Python's parser takes, file names that are not UTF-8, and outputs that
would land on another file of the same run. Each either works or gets one exit-2 line, with
nothing written."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import struct
from pathlib import Path

from conftest import FIXTURES, assert_one_line, invoke

PROG = FIXTURES / "bin" / "prof-le.o"  # 6 mprofile sites, little-endian ELFv2


def _copy(tmp_path: Path, name: str = "p.o") -> Path:
    dst = tmp_path / name
    shutil.copy(PROG, dst)
    return dst


def _listing(directory: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in directory.iterdir() if p.is_file()}


# -- names too long for a log beside them ---------------------------------------------------


def test_a_file_whose_log_name_cannot_exist_is_read_as_having_no_log(tmp_path: Path) -> None:
    """243 characters: the file's name fits, ``<name>.mcountrw.jsonl`` does not; every command
    looks for that log, and used to fail with an internal error (exit 3) when it could not."""
    prog = _copy(tmp_path, "f" * 241 + ".o")
    for args in (
        ("scan", prog),
        ("audit", prog),
        ("policy", "check", FIXTURES.parent / "examples" / "keep-core.policy", prog),
    ):
        result = invoke(*args)
        assert result.exit_code in (0, 1) and "internal error" not in result.output, (args, result.output)
    assert "6 sites" in invoke("scan", prog).stdout


def test_an_output_whose_log_name_is_too_long_is_refused_before_any_work(tmp_path: Path) -> None:
    prog = _copy(tmp_path)
    before = _listing(tmp_path)
    out = tmp_path / ("h" * 245)
    assert_one_line(
        invoke("nop", prog, "-o", out), 2, "error", ".mcountrw.jsonl: cannot write here (File name too long)"
    )
    assert _listing(tmp_path) == before


def test_an_output_name_that_nearly_fills_name_max_is_written_and_undone(tmp_path: Path) -> None:
    """The temporary file beside it gets a shortened name: a 250-character output is writable."""
    prog = _copy(tmp_path)
    out, log = tmp_path / ("k" * 250), tmp_path / "short.log"
    assert invoke("nop", prog, "-o", out, "--log", log).exit_code == 0
    assert invoke("verify", prog, out, "--log", log).exit_code == 0
    back = tmp_path / "back.o"
    assert invoke("undo", out, "--log", log, "-o", back).exit_code == 0
    assert back.read_bytes() == PROG.read_bytes()


# -- JSON Python's parser refuses -----------------------------------------------------------


def test_a_log_nested_too_deeply_is_bad_input(tmp_path: Path) -> None:
    prog = _copy(tmp_path)
    nopped = tmp_path / "p.nop"
    assert invoke("nop", prog, "-o", nopped).exit_code == 0
    deep = tmp_path / "deep.jsonl"
    deep.write_text("[" * 100_000)
    before = _listing(tmp_path)
    for args in (("undo", nopped, "-o", tmp_path / "back", "--log", deep), ("verify", prog, nopped, "--log", deep)):
        assert_one_line(invoke(*args), 2, "error", "deep.jsonl:1: not JSON", "nested too deeply")
    assert _listing(tmp_path) == before


def test_a_plan_with_a_number_past_the_digit_limit_or_nested_too_deeply_is_bad_input(tmp_path: Path) -> None:
    big = tmp_path / "big.json"
    big.write_text('{"format": "mcountrw-plan", "version": ' + "9" * 5000 + "}")
    assert_one_line(invoke("check-plan", big), 2, "error", "big.json: not JSON: a number with too many digits")
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 100_000)
    assert_one_line(invoke("check-plan", deep), 2, "error", "deep.json: not JSON: nested too deeply")


# -- file names that are not UTF-8 ----------------------------------------------------------


def test_reports_of_a_file_whose_name_is_not_utf8_are_written(tmp_path: Path) -> None:
    """CSV keeps the name's own bytes (as on stdout), HTML shows it escaped, SARIF percent-encodes
    its bytes; all three used to end in an internal error (UnicodeEncodeError)."""
    raw = os.fsencode(tmp_path) + b"/x\xff.o"
    shutil.copy(PROG, raw)
    name = os.fsdecode(raw)
    cwd = Path.cwd()
    os.chdir(tmp_path)
    try:
        relative = os.fsdecode(b"x\xff.o")
        csv, page, sarif = tmp_path / "r.csv", tmp_path / "r.html", tmp_path / "r.sarif"
        assert invoke("scan", "--format", "csv", "-o", csv, name).exit_code == 0
        assert invoke("audit", "--format", "html", "-o", page, name).exit_code == 0
        assert invoke("audit", "--format", "sarif", "-o", sarif, relative).exit_code == 0
    finally:
        os.chdir(cwd)
    assert b"/x\xff.o," in csv.read_bytes()
    assert "x\\udcff.o" in page.read_text()
    uris = {loc["physicalLocation"]["artifactLocation"]["uri"] for run in json.loads(sarif.read_text())["runs"]
            for res in run["results"] for loc in res["locations"]}  # fmt: skip
    assert uris <= {"x%FF.o"}


# -- outputs that would land on another file of the run -------------------------------------


def test_a_log_named_as_the_backup_is_refused(tmp_path: Path) -> None:
    prog = _copy(tmp_path)
    before = _listing(tmp_path)
    result = invoke("nop", prog, "--in-place", "--backup", "--log", tmp_path / "p.o.orig")
    assert_one_line(result, 2, "error", "p.o.orig: the patch log would overwrite the backup")
    assert _listing(tmp_path) == before


def test_an_output_or_log_named_as_a_stage_image_is_refused(tmp_path: Path) -> None:
    prog = _copy(tmp_path)
    before = _listing(tmp_path)
    result = invoke("nop", prog, "-o", tmp_path / "p.o.stage1", "--stage-images", tmp_path)
    assert_one_line(result, 2, "error", "p.o.stage1: -o would be a stage image of this run")
    result = invoke("apply", prog, "--to", "disabled", "-o", tmp_path / "x", "--stage-images", tmp_path,
                    "--log", tmp_path / "p.o.stage12")  # fmt: skip
    assert_one_line(result, 2, "error", "p.o.stage12: the patch log would be a stage image of this run")
    assert _listing(tmp_path) == before
    ok = invoke("nop", prog, "-o", tmp_path / "p.o.stage", "--stage-images", tmp_path)
    assert ok.exit_code == 0, ok.output  # not a stage image's name: no number


def test_an_output_over_the_inputs_own_patch_log_is_refused(tmp_path: Path) -> None:
    prog = _copy(tmp_path)
    disabled = tmp_path / "p.dis"
    assert invoke("apply", prog, "--to", "disabled", "-o", disabled).exit_code == 0
    before = _listing(tmp_path)
    result = invoke("apply", disabled, "--to", "enabled", "-o", tmp_path / "p.dis.mcountrw.jsonl")
    assert_one_line(result, 2, "error", "is the patch log of the input", "which its undo needs")
    assert _listing(tmp_path) == before
    assert invoke("undo", disabled, "-o", tmp_path / "back").exit_code == 0


# -- messages -------------------------------------------------------------------------------


def _edited(tmp_path: Path, name: str, fmt: str, offset: int, value: int, *, in_headers: bool = False) -> Path:
    """A copy of the fixture with ``value`` written at ``offset``: of the file, or ``in_headers``
    of the section header table (section N's field F is at ``64 * N + F``)."""
    data = bytearray(PROG.read_bytes())
    base = struct.unpack_from("<Q", data, 0x28)[0] if in_headers else 0  # e_shoff
    struct.pack_into(fmt, data, base + offset, value)
    out = tmp_path / name
    out.write_bytes(bytes(data))
    return out


def test_records_that_name_no_site_are_said_to_be_the_cause_of_nothing_to_do(tmp_path: Path) -> None:
    """``.text`` made NOBITS: 6 records, no site. The cause was "nopped by an earlier rewrite"."""
    broken = _edited(tmp_path, "t.o", "<I", 64 * 1 + 4, 8, in_headers=True)  # section 1's sh_type
    result = invoke("nop", broken, "-o", tmp_path / "x")
    line = assert_one_line(result, 1, "nothing to do", "6 records there, but none names a site")
    assert "earlier rewrite" not in line


def test_section_header_links_are_named_in_their_errors(tmp_path: Path) -> None:
    no_names = _edited(tmp_path, "s0.o", "<H", 0x3E, 0)  # e_shstrndx
    assert_one_line(invoke("scan", no_names), 2, "error", "s0.o: no section name string table (e_shstrndx is 0)")
    wrong_link = _edited(tmp_path, "l1.o", "<I", 64 * 6 + 40, 1, in_headers=True)  # .rela__mcount_loc's sh_link
    assert_one_line(
        invoke("scan", wrong_link),
        2,
        "error",
        ".rela__mcount_loc: its sh_link names section 1 (.text), not a symbol table",
    )


def test_a_policy_rule_is_printed_with_its_control_characters_escaped(tmp_path: Path) -> None:
    policy = tmp_path / "p.policy"
    policy.write_bytes(b"default nop\nkeep a\x00b\nkeep \x1b[31mred\n")
    result = invoke("policy", "check", policy, PROG)
    assert "keep a\\x00b" in result.stdout and "keep \\x1b[31mred" in result.stdout
    assert "\x1b" not in result.output and "\x00" not in result.output


def test_every_name_too_long_is_one_line_of_bad_input(tmp_path: Path) -> None:
    """Found by a second review: an -o of 256 bytes, a backup with no room for ``.orig``, the
    default log beside a 250-byte file: each ended in an internal error (pathlib's exists() raises
    for a name too long), wherever the check met it."""
    prog = _copy(tmp_path)
    long_out = tmp_path / ("n" * 250)
    assert invoke("nop", prog, "-o", long_out, "--log", tmp_path / "l.jsonl").exit_code == 0
    before = _listing(tmp_path)
    for args in (("undo", long_out, "-o", tmp_path / "u"), ("verify", prog, long_out)):
        assert_one_line(invoke(*args), 2, "error", "no patch log beside it", "pass --log")
    too_long = tmp_path / ("c" * 256)
    for args in (
        ("nop", prog, "-o", too_long, "--log", tmp_path / "l2.jsonl"),
        ("nop", prog, "--dry-run", "-o", too_long),
        ("apply", prog, "--to", "disabled", "-o", tmp_path / "x", "--stage-images", too_long),
    ):
        assert_one_line(invoke(*args), 2, "error", "File name too long")
    no_room = _copy(tmp_path, "b" * 252)
    before[no_room.name] = hashlib.sha256(no_room.read_bytes()).hexdigest()
    result = invoke("nop", no_room, "--in-place", "--backup", "--log", tmp_path / "s.jsonl")
    assert_one_line(result, 2, "error", ".orig: File name too long")
    assert _listing(tmp_path) == before


def test_the_inputs_own_log_is_refused_as_output_however_it_is_spelled(tmp_path: Path) -> None:
    prog = _copy(tmp_path)
    (tmp_path / "out").mkdir()
    before = _listing(tmp_path)
    spelled = Path("out") / ".." / "p.o.mcountrw.jsonl"
    cwd = Path.cwd()
    os.chdir(tmp_path)
    try:
        result = invoke("apply", prog.resolve(), "--to", "disabled", "-o", spelled)
    finally:
        os.chdir(cwd)
    assert_one_line(result, 2, "error", "is the patch log of the input")
    assert _listing(tmp_path) == before
