"""Review h19-F: scan's text as a kernel developer reads it at an 80-column terminal: each reason a
site is not traceable said as one sentence that names its JSON key."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
from boot import require_kernel, require_tool
from conftest import FIXTURES, invoke, scan_table, unwrapped

from rewriter.boot import Untraceable

BIN = FIXTURES / "bin"


# -- 1. a rewritten image's table fits 80 columns -----------------------------------------------------


def _function_column(table: str) -> int:
    header = next(line for line in table.splitlines() if line.lstrip().startswith("call slot"))
    return header.index("function")


def _assert_rows_say_the_json(table: str, sites: list[dict[str, Any]]) -> None:
    """Each row (scan_table: a state said for its traceable cell is in its column; one said for
    every site is in the ``every site:`` line) says its site's state in the file and after boot,
    its record mark and its function, as the JSON does."""
    rows = scan_table(table)
    assert len(rows) == len(sites) > 0
    for row, site in zip(rows, sites, strict=True):
        boot = site["boot_state"] or "REFUSED"
        every = dict(part.split(" ", 1) for part in row["every site"].split(", ") if " " in part)
        assert row.get("file->boot", every.get("file->boot")) == f"{site['state']}->{boot}", (row, site)
        assert row["rec"] == ("LOG" if site["source"] == "log" else "rec" if site["recorded"] else "UNREC"), row
        assert row["traceable"].startswith("yes" if site["traceable"] else "NO"), row
        assert row["function"] == (site["function"] or row["function"]), row


def test_a_rewritten_programs_states_are_said_once_for_each_traceable_cell(tmp_path: Path) -> None:
    """The rows of a rewritten program said "nopped->nopped  LOG  NO unrecorded" on each LOG site,
    the function at column 50: the state follows from the traceable cell, said once above."""
    out = tmp_path / "prog.nop"
    done = invoke("nop", BIN / "prof-le", "--exclude", "leaf_add", "--drop-records", "-o", out)
    assert done.exit_code == 0, done.output
    table = invoke("scan", out).stdout
    sites = json.loads(invoke("scan", "--format", "json", out).stdout)["images"][0]["sites"]
    assert "  every site with traceable NO unrecorded: file->boot nopped->nopped\n" in table, table
    assert "  every site with traceable yes: file->boot enabled->disabled\n" in table, table
    assert _function_column(table) <= 36, table
    _assert_rows_say_the_json(table, sites)


@pytest.mark.corpus
@pytest.mark.parametrize("kernel", ["6.1", "6.12", "7.2"])
def test_a_rewritten_kernels_table_fits_80_columns(kernel: str, tmp_path: Path) -> None:
    """`nop VMLINUX --only 'vfs_*' --drop-records`, then `scan --all`: the function started at
    column 72 (``0xc00000000046df8c  .text       nopped->nopped    LOG  NO unrecorded  vfs_fadvise``),
    where an unrewritten kernel's starts by 48; now by 54, every row's facts kept."""
    out = tmp_path / "vmlinux.nop"
    done = invoke("nop", require_kernel(kernel).vmlinux, "--only", "vfs_*", "--drop-records", "-o", out)
    assert done.exit_code == 0, done.output
    table = invoke("scan", "--all", out).stdout
    sites = json.loads(invoke("scan", "--format", "json", out).stdout)["images"][0]["sites"]
    assert _function_column(table) <= 54, table[:3000]
    assert all(len(line) <= 80 for line in table.splitlines() if line.startswith("  every site")), table[:3000]
    _assert_rows_say_the_json(table, sites)


# -- 2. a reason a site is not traceable reads as one sentence ---------------------------------------


@pytest.mark.parametrize("reason", list(Untraceable))
def test_each_not_traceable_note_is_one_sentence_naming_its_key(reason: Untraceable) -> None:
    """The note read "not traceable: 261 weak-body: weak-function bodies the kernel disables: in no
    sized function ..., the kernel marks them ...": three labels in a row before the sentence."""
    from rewriter.boot import said_text  # here, not at the top: the other tests run on the old code too

    for n, noun in ((1, "1 site "), (3, "3 sites ")):
        text = said_text(reason, n)
        assert text.startswith(f"{noun}({reason.value}) "), text
        assert ":" not in text, text  # the note's one colon is the one after "not traceable"
    assert not re.search(r"\b(them|their|they|bodies|are|have|hold)\b", said_text(reason, 1)), reason


def test_an_unrecorded_site_is_one_sentence_in_the_table() -> None:
    table = unwrapped(invoke("scan", BIN / "anom-unrecorded").stdout)
    assert "  not traceable: 1 site (unrecorded) has no kernel record, so ftrace never patches it\n" in table


def test_the_612_weak_bodies_are_one_sentence_with_the_json_key_and_the_kernels_reason() -> None:
    vmlinux = require_kernel("6.12").vmlinux
    doc = json.loads(invoke("scan", "--format", "json", vmlinux).stdout)
    weak = doc["images"][0]["summary"]["untraceable"]["weak-body"]
    notes = [line for line in unwrapped(invoke("scan", vmlinux).stdout).splitlines() if "not traceable" in line]
    assert notes == [
        f"  not traceable: {weak} sites (weak-body) are weak-function bodies the kernel disables, in no sized "
        "function and more than FTRACE_MCOUNT_MAX_OFFSET past a symbol, so the kernel marks their records "
        "FTRACE_FL_DISABLED"
    ]


# -- 3. what a stranger reads: every line true -------------------------------------------------------


def test_the_shared_stubs_note_of_ool_objects_calls_them_objects() -> None:
    """`scan fixtures/bin/*` said the .stubs of ool-be.o, ool-le.o and ool-fs-le.o "serve all 18
    records of 3 modules": they are objects (kind "object" in the head line and the JSON)."""
    objects = [BIN / "ool-be.o", BIN / "ool-le.o", BIN / "ool-fs-le.o"]
    doc = json.loads(invoke("scan", "--jobs", "1", "--format", "json", *objects).stdout)
    assert {image["kind"] for image in doc["images"]} == {"object"}
    records = sum(image["records"]["count"] for image in doc["images"])
    notes = unwrapped(invoke("scan", "--jobs", "1", *objects).stdout)
    assert f"serve all {records} records of 3 objects\n" in notes, notes
    assert "module" not in notes.split("notes on the images above:")[1], notes


def test_a_file_of_data_alone_is_not_said_to_lack_ftrace_flags(tmp_path: Path) -> None:
    """6.12's cast_common.ko and tuner-types.ko hold tables alone; scan guessed "not built with -pg
    -mprofile-kernel or -fpatchable-function-entry?" of them, which they were. A file with no
    function symbol says so; one with functions and no site keeps the guess."""
    cc = require_tool("powerpc64le-linux-gnu-gcc")
    tables, plain = tmp_path / "tables.o", tmp_path / "plain.o"
    for out, code in ((tables, "const int table[4] = {1, 2, 3, 4};\n"), (plain, "int f(int x) { return x + 1; }\n")):
        src = out.with_suffix(".c")
        src.write_text(code)
        subprocess.run([cc, "-O2", "-c", str(src), "-o", str(out)], check=True)
    said = unwrapped(invoke("scan", tables).stdout).splitlines()
    assert (
        said[1]
        == "  no sites: the file has no function symbol (data alone, or stripped), so nothing for ftrace to trace"
    )
    assert not any("-pg" in line for line in said), said
    assert "not built with -pg -mprofile-kernel" in unwrapped(invoke("scan", plain).stdout)


def test_a_file_with_nothing_to_count_says_so_once() -> None:
    """A module with no site and no record read "generation none: 0 sites (no sites), 0 traceable
    once loaded; 0 records (0 skipped, 0 unmatched), 0 zeroed slots, 0 sites unrecorded": seven
    ways of saying nothing, four lines under each of 6.12's 21 such modules."""
    module = require_kernel("6.12").modules_dir / "crypto" / "cast_common.ko.xz"
    doc = json.loads(invoke("scan", "--format", "json", module).stdout)["images"][0]
    assert (doc["generation"], doc["sites"], doc["records"]["count"], doc["records"]["zeroed"]) == (None, [], 0, 0)
    head = unwrapped(invoke("scan", module).stdout).splitlines()[0]
    assert head == f"{module}: module, little-endian elfv2: no sites and no records", head


def test_a_prenopped_trees_log_and_unrecorded_notes_are_said_once(tmp_path: Path) -> None:
    """`scan --log-dir LOGS TREE` of a prenopped tree said under each module why no scan finds its
    LOG sites and that its unrecorded sites are never patched, the same words 3 lines each; the
    module keeps its LOG line (its log's path), and the why is said once, the counts summed."""
    fixtures = {BIN / "prof-le": "leaf_add", BIN / "std-le": "std_leaf"}  # one site of each kept
    logs = tmp_path / "logs"
    (tmp_path / "tree").mkdir()
    logs.mkdir()
    for fixture, kept in fixtures.items():
        out = tmp_path / "tree" / fixture.name
        log = logs / f"{fixture.name}.mcountrw.jsonl"
        done = invoke("nop", fixture, "--exclude", kept, "--drop-records", "-o", out, "--log", log)
        assert done.exit_code == 0, done.output
    table = unwrapped(invoke("scan", "--jobs", "1", "--log-dir", logs, tmp_path / "tree").stdout)
    doc = json.loads(invoke("scan", "--jobs", "1", "--format", "json", "--log-dir", logs, tmp_path / "tree").stdout)
    logged = sum(1 for image in doc["images"] for site in image["sites"] if site["source"] == "log")
    assert logged > 2 and table.count("no scan of the file finds") == 1, table
    assert table.count("ftrace never patches") == 1, table
    shared = table.split("notes on the images above:\n")[1]
    assert f"  LOG: {logged} sites, in 2 executables, are known only from their patch logs (" in shared, shared
    assert f"  not traceable: {logged} sites (unrecorded), in 2 executables, have no kernel record" in shared
    for fixture in fixtures:
        assert f"known only from the patch log {logs / fixture.name}.mcountrw.jsonl\n" in table, table


def test_the_weak_bodies_of_several_kernels_are_said_once_in_words() -> None:
    """`scan` of the 6.12 and 7.2 vmlinux said the weak-body sentence under each; said once, it
    counts them "in 2 vmlinux images" (a kind's plural, not "2 vmlinuxs")."""
    kernels = [require_kernel("6.12").vmlinux, require_kernel("7.2").vmlinux]
    doc = json.loads(invoke("scan", "--jobs", "1", "--format", "json", *kernels).stdout)
    weak = sum(image["summary"]["untraceable"]["weak-body"] for image in doc["images"])
    table = unwrapped(invoke("scan", "--jobs", "1", *kernels).stdout)
    assert table.count("(weak-body)") == 1, table
    assert f"  not traceable: {weak} sites (weak-body), in 2 vmlinux images, are weak-function bodies" in table
