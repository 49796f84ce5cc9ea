"""Review h17, helper Z: `mcountrw scan` as a new user runs it (README, overrides, odd trees)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from boot import require_kernel, require_tool
from conftest import FIXTURES, assert_one_line, invoke, unwrapped


@pytest.mark.parametrize(
    ("kernel", "given", "detected"),
    [("6.1", "patchable", "mprofile"), ("7.2", "patchable", "ool")],
)
def test_a_contradicted_generation_on_a_kernel_is_obeyed_not_blamed_on_its_build(
    kernel: str, given: str, detected: str
) -> None:
    """`scan --generation patchable` on 6.1's and 7.2's vmlinux exited 2 with "built with
    -fpatchable-function-entry=M,N, N > 0": a build neither kernel had, named because the forced
    generation made a few records look like nops before an entry. Every other contradicted
    --generation is obeyed and says what it overrode (README); so is this one now."""
    vmlinux = require_kernel(kernel).vmlinux
    result = invoke("scan", "--generation", given, vmlinux)
    assert result.exit_code == 0, result.output
    assert "-fpatchable-function-entry=M,N" not in result.output
    assert f"--generation {given} overrides what the image says: {detected} (" in unwrapped(result.stdout)
    header = unwrapped(result.stdout).splitlines()[0]
    assert header.startswith(f"{vmlinux}: vmlinux, little-endian elfv2, generation {given}: "), header


def test_a_contradicted_generation_on_a_patchable_object_is_not_called_classic_pg(tmp_path: Path) -> None:
    """`scan --generation mprofile fixtures/bin/patchable-lep-le.o` exited 2 with "6 calls to
    _mcount after the prologue ... classic -pg": the object calls no _mcount at all (its records
    name `nop; nop` after the global entry). It is obeyed now, in every format, and says so; a
    rewrite still refuses the contradiction, naming it."""
    obj = FIXTURES / "bin" / "patchable-lep-le.o"
    table = invoke("scan", "--generation", "mprofile", obj)
    assert table.exit_code == 0, table.output
    assert "classic -pg" not in table.output
    assert "--generation mprofile overrides what the image says: patchable (" in table.stdout
    as_json = invoke("scan", "--generation", "mprofile", "--format", "json", obj)
    assert as_json.exit_code == 0, as_json.output
    image = json.loads(as_json.stdout)["images"][0]
    assert image["generation"] == "mprofile" and image["generation_override"]["detected"] == "patchable"
    out = tmp_path / "out.o"
    refused = invoke("nop", "--generation", "mprofile", obj, "-o", out)
    assert refused.exit_code == 2 and "contradicts what the image says: patchable" in refused.stderr
    assert not out.exists()


@pytest.mark.parametrize("name", ["prof-le.o", "prof-le"])
def test_a_file_nopped_with_dropped_records_read_without_its_log_says_where_its_sites_went(
    tmp_path: Path, name: str
) -> None:
    """A file `nop --drop-records` (or prenop) wrote, scanned without its patch log (an installed
    tree whose logs are elsewhere), read "0 sites (no sites) ... 6 zeroed slots" and nothing more:
    a module with three nopped sites looked like one built without ftrace, and the user was not
    told that its log (--log, --log-dir) lists them. The table now says so; with the log, it shows
    the sites and no such line."""
    out = tmp_path / name
    assert invoke("nop", FIXTURES / "bin" / name, "--drop-records", "-o", out).exit_code == 0
    log = out.parent / f"{name}.mcountrw.jsonl"
    moved = log.rename(tmp_path / "elsewhere.jsonl")
    bare = invoke("scan", out)
    assert bare.exit_code == 0, bare.output
    head, note = unwrapped(bare.stdout).splitlines()[:2]
    assert "0 sites (no sites)" in head and "6 zeroed slots" in head, head
    assert note.startswith("  zeroed: 6 record slots hold 0: what a rewrite that drops records leaves"), note
    assert "--log, --log-dir" in note
    assert ("linker's padding" in note) is (name == "prof-le"), note  # only a linked image has the linker's
    with_log = invoke("scan", "--log", moved, out)
    assert with_log.exit_code == 0, with_log.output
    assert "6 sites (6 nopped->nopped, 6 of them from the patch log)" in unwrapped(with_log.stdout)
    assert "zeroed:" not in with_log.stdout


def test_a_generation_the_contents_also_fit_still_refuses_nops_before_the_entry(tmp_path: Path) -> None:
    """The refusals a contradicted --generation skips stay for one the contents fit as well
    (``Detect.also``: a linked program whose recorded nops are all followed by a nop may be ool,
    and a rewrite obeys that): a program built with -fpatchable-function-entry=2,1 read as ool is
    still refused by name, by scan and by nop, not rewritten."""
    cc = require_tool("powerpc64-linux-gnu-gcc")
    src, exe, out = tmp_path / "f.c", tmp_path / "f", tmp_path / "f.nop"
    src.write_text(
        "int g;\nint f(int x) { return g + x; }\nint h(int y) { return y * 3; }\nvoid _start(void) { for (;;) ; }\n"
    )
    subprocess.run([cc, "-O2", "-fpatchable-function-entry=2,1", "-nostdlib", "-static", str(src), "-o", str(exe)],
                   check=True)  # fmt: skip
    for command in (["scan"], ["nop", "-o", out]):
        assert_one_line(invoke(*command, "--generation", "ool", exe), 2, "error", "records at nops just before a "
                        "function's entry", "-fpatchable-function-entry=M,N, N > 0")  # fmt: skip
    assert not out.exists()


def test_a_directory_of_links_is_not_said_to_hold_nothing(tmp_path: Path) -> None:
    """The tree walk follows no link and opens no FIFO (by design); a directory whose modules are
    links (to a build tree, say) was refused with "no PowerPC64 ELF file or module below it", as
    if it held none. The line now says what was not followed and how to read it."""
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "prof-le.o").symlink_to(FIXTURES / "bin" / "prof-le.o")
    os.mkfifo(tree / "pipe.ko")
    line = assert_one_line(invoke("scan", tree), 2, "error", f"{tree}: no PowerPC64 ELF file or module below it")
    assert line.endswith("(1 symbolic link and 1 FIFO, socket or device not followed: name a file to read it)"), line
    named = invoke("scan", tree / "prof-le.o")
    assert named.exit_code == 0 and ": object, little-endian elfv2, generation mprofile: 6 sites" in unwrapped(
        named.stdout
    )
    empty = tmp_path / "empty"
    empty.mkdir()
    assert assert_one_line(invoke("scan", empty), 2, "error").endswith(": no PowerPC64 ELF file or module below it")


def test_a_csv_with_no_row_says_so(tmp_path: Path) -> None:
    """`scan --format csv` of files with no site printed the header alone, exit 0, and nothing on
    stderr: the table says "no sites" and why, the CSV said nothing. It now says so on stderr (the
    CSV itself stays what other tools parse); a CSV with rows gets no such line."""
    out = tmp_path / "p.o"
    assert invoke("nop", FIXTURES / "bin" / "prof-le.o", "--drop-records", "-o", out).exit_code == 0
    (tmp_path / "p.o.mcountrw.jsonl").unlink()
    empty = invoke("scan", "--format", "csv", out)
    assert empty.exit_code == 0, empty.output
    assert empty.stdout.count("\n") == 1 and empty.stdout.startswith("path,address,section,")
    assert empty.stderr == (
        "mcountrw: warning: no ftrace call site in the 1 file read: the CSV has its header only "
        "(--format table says why)\n"
    )
    rows = invoke("scan", "--format", "csv", out, FIXTURES / "bin" / "prof-le.o")
    assert rows.exit_code == 0 and rows.stdout.count("\n") == 7 and not rows.stderr, rows.output


@pytest.mark.parametrize("command", ["scan", "audit"])
def test_a_tree_with_links_named_as_modules_says_it_left_them_out(tmp_path: Path, command: str) -> None:
    """Beside real files, a link named as a module (RHEL's weak-updates/ holds such links) was left
    out in silence: the scan answered for fewer modules than the tree has. It still follows no
    link, and now warns which it left out; a link with another name (a modules dir's build/) is
    not worth a line."""
    tree = tmp_path / "tree"
    (tree / "weak-updates").mkdir(parents=True)
    (tree / "prof-le.o").write_bytes((FIXTURES / "bin" / "prof-le.o").read_bytes())
    (tree / "weak-updates" / "m.ko").symlink_to(FIXTURES / "bin" / "prof-le.o")
    (tree / "build").symlink_to(tmp_path)
    result = invoke(command, tree)
    assert result.exit_code == 0, result.output
    assert str(tree / "prof-le.o") in result.stdout and "m.ko" not in result.stdout
    assert result.stderr == (
        f"mcountrw: warning: {tree}: 1 symbolic link named as a module not followed, left out "
        f"(first: {tree / 'weak-updates' / 'm.ko'}): name a link's target to read it\n"
    )
