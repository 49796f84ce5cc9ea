"""Black-box review of the report formats: names that print alike in a diff, and what each
format says of the same facts."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from conftest import FIXTURES, invoke, unwrapped

from rewriter.diff import Change, FunctionChangeKind, diff_files
from rewriter.elf.compress import Compression, compress
from rewriter.report.sarif import FINGERPRINT

OBJECT = FIXTURES / "bin" / "patchable-le.o"  # static_helper leaf_add nonleaf_calls sum8 fp_mix touch_global


def renamed(src: Path, dst: Path, names: dict[bytes, bytes]) -> Path:
    """A copy of ``src`` whose string table names each function of ``names`` by its new bytes
    (no longer than the old: the rest of the old name's room becomes NULs)."""
    data = bytearray(src.read_bytes())
    for old, new in names.items():
        assert len(new) <= len(old) and data.count(old + b"\0") == 1, old
        at = data.find(old + b"\0")
        data[at : at + len(old)] = new.ljust(len(old), b"\0")
    dst.write_bytes(bytes(data))
    return dst


def test_a_diff_tells_apart_two_names_that_differ_in_a_byte_that_is_not_utf8(tmp_path: Path) -> None:
    # Both print as "leaf_ad\ufffd": a function renamed from one to the other is still a change.
    a = renamed(OBJECT, tmp_path / "a.o", {b"leaf_add": b"leaf_ad\xff"})
    b = renamed(OBJECT, tmp_path / "b.o", {b"leaf_add": b"leaf_ad\xfe"})
    d = diff_files(a, b)
    assert {(f.change, f.function) for f in d.functions} == {
        (FunctionChangeKind.REMOVED, "b'leaf_ad\\xff'"),
        (FunctionChangeKind.ADDED, "b'leaf_ad\\xfe'"),
    }
    assert {(c.change, c.function) for c in d.changes} == {
        (Change.REMOVED, "b'leaf_ad\\xff'"),
        (Change.ADDED, "b'leaf_ad\\xfe'"),
    }
    assert d.unchanged == 5 and d.common_functions == 5
    result = invoke("diff", "--format", "json", a, b)
    assert result.exit_code == 1, result.output
    functions = json.loads(result.stdout)["images"][0]["functions"]["changes"]
    assert sorted(f["function"] for f in functions) == ["b'leaf_ad\\xfe'", "b'leaf_ad\\xff'"]


def test_a_diff_tells_apart_a_control_character_from_its_escape_written_as_text(tmp_path: Path) -> None:
    # One function named with an ESC byte, another with the four characters \x1b: both print
    # "t\x1bglobal". B loses the first; the second is in both.
    twins = {b"static_helper": b"t\x1bglobal", b"touch_global": b"t\\x1bglobal"}
    a = renamed(OBJECT, tmp_path / "a.o", twins)
    b = renamed(OBJECT, tmp_path / "b.o", {**twins, b"static_helper": b"other"})
    d = diff_files(a, b)
    assert {(f.change, f.function) for f in d.functions} == {
        (FunctionChangeKind.REMOVED, "b't\\x1bglobal'"),
        (FunctionChangeKind.ADDED, "other"),
    }
    # the literal name is spelled as its bytes on both sides (its twin is in the diff): it pairs
    assert {c.function for c in d.changes} == {"b't\\x1bglobal'", "other"}
    assert d.common_functions == 5


def test_an_image_with_twin_names_against_itself_has_no_changes(tmp_path: Path) -> None:
    a = renamed(OBJECT, tmp_path / "a.o", {b"leaf_add": b"leaf_ad\xff", b"touch_global": b"leaf_ad\xfe"})
    shutil.copyfile(a, tmp_path / "b.o")
    d = diff_files(a, tmp_path / "b.o")
    assert d.changes == () and d.functions == () and d.unchanged == 6 and d.common_functions == 6


@pytest.mark.parametrize("drop", [True, False])
def test_the_scan_table_escapes_the_path_of_the_patch_log_it_names(tmp_path: Path, drop: bool) -> None:
    # The log is named after the rewritten file: a newline in that name must not break the
    # table's LOG note in two (every other name in the table is escaped: prose.printable). With
    # the records dropped the note counts the sites only the log knows; kept, it says it was read.
    out = tmp_path / "new\nline"
    rewrite = invoke("nop", FIXTURES / "bin" / "prof-le", "-o", out, *(["--drop-records"] if drop else []))
    assert rewrite.exit_code == 0, rewrite.output
    result = invoke("scan", out)
    assert result.exit_code == 0, result.output
    notes = [line for line in unwrapped(result.stdout).splitlines() if line.startswith("  LOG: ")]
    assert len(notes) == 1 and "new\\nline.mcountrw.jsonl" in notes[0], result.stdout
    assert ("known only from the patch log" in notes[0]) is drop, notes
    assert not any(line.startswith("line.mcountrw.jsonl") for line in result.stdout.splitlines()), result.stdout


def test_audit_names_its_report_file_on_one_line_when_it_fails(tmp_path: Path) -> None:
    # exit 1 with the report in a file: the line that says so quotes -o, escaped as every name is
    report = tmp_path / "re\nport.md"
    result = invoke("audit", FIXTURES / "bin" / "anom-broken", "-o", report)
    assert result.exit_code == 1 and report.exists(), result.output
    assert result.stderr.count("\n") == 1 and result.stderr.rstrip().endswith("re\\nport.md"), result.stderr


def test_a_module_keeps_its_sarif_fingerprints_when_the_tree_compresses_it(tmp_path: Path) -> None:
    # Debian's 6.1 tree ships kvm.ko, 6.12's kvm.ko.xz: the same anomaly in the same module must
    # keep its key, or code scanning closes and reopens every module alert at that update.
    plain = FIXTURES / "bin" / "anom-broken.o"
    keys = []
    for tree, name, data in (
        ("old", "x.ko", plain.read_bytes()),
        ("new", "x.ko.xz", compress(plain.read_bytes(), Compression.XZ)),
    ):
        (tmp_path / tree / "fs").mkdir(parents=True)
        (tmp_path / tree / "fs" / name).write_bytes(data)
        result = invoke("audit", "--format", "sarif", "--fail-on", "never", tmp_path / tree)
        assert result.exit_code == 0, result.output
        keys.append([r["partialFingerprints"][FINGERPRINT] for r in json.loads(result.stdout)["runs"][0]["results"]])
    assert keys[0] == keys[1] == ["broken:fs/x.ko:broken_fn"], keys


def test_a_file_only_one_tree_has_counts_names_that_print_alike_as_two(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    renamed(OBJECT, tmp_path / "a" / "t.o", {b"leaf_add": b"leaf_ad\xff", b"touch_global": b"leaf_ad\xfe"})
    (tmp_path / "b" / "u.o").write_bytes(OBJECT.read_bytes())
    result = invoke("diff", "--format", "json", tmp_path / "a", tmp_path / "b")
    assert result.exit_code == 1, result.output
    alone = {u["side"]: u for u in json.loads(result.stdout)["unpaired"]}
    assert alone["a"]["functions"] == alone["b"]["functions"] == 6, alone
