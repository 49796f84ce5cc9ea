"""Review h18, helper A: the text a kernel developer reads at an 80-column terminal (scan's
table, the reason texts, every command's text output)."""

from __future__ import annotations

import json
import re
import subprocess
from itertools import takewhile
from pathlib import Path
from typing import Any

import pytest
from boot import require_kernel
from conftest import FIXTURES, invoke, scan_table, unwrapped

from rewriter.boot import SAID, Untraceable, they_text
from rewriter.prose import agreeing

# -- scan's table at 80 columns --------------------------------------------------------------


def _table_and_json(*args: object) -> tuple[str, list[dict[str, Any]]]:
    table = invoke("scan", "--all", *args)
    assert table.exit_code == 0, table.output
    doc = invoke("scan", "--format", "json", *args)
    assert doc.exit_code == 0, doc.output
    return table.stdout, json.loads(doc.stdout)["images"]


def _said(row: dict[str, str], column: str, every: str) -> str | None:
    """A dropped column's one value, as the ``every site:`` line says it (None if it does not)."""
    for part in row["every site"].split(", "):
        if part.startswith(every):
            return part.removeprefix(every)
    return row.get(column)


def _boot_cell(site: dict[str, Any], cell: str) -> bool:
    state, boot = cell.split("->")
    if site["boot_state"] is not None:
        return (state, boot) == (site["state"], site["boot_state"])
    return state == site["state"] and boot in ("REFUSED", "NO-STUB")


def _assert_every_fact_kept(table: str, images: list[dict[str, Any]]) -> None:
    """Each site of the JSON, in order, is a row of the table that says (in its cells, or in the
    ``every site:`` line for a column the table drops) its call slot, section, variant, states,
    record, whether it is traceable, its function and its stub area."""
    rows = scan_table(table)
    sites = [(image, s) for image in images for s in image["sites"]]
    assert len(rows) == len(sites) > 0
    for row, (image, site) in zip(rows, sites, strict=True):
        linked = site["address"] is not None
        slot = f"{site['address']:#x}" if linked else f"{site['section']}+{site['offset']:#x}"
        assert row["call slot"] == slot, row
        if linked:
            assert _said(row, "section", "in ") == site["section"], row
        variant = _said(row, "variant", "variant ")
        assert variant == site["variant"], row
        state = "file->load" if image["kind"] == "module" else "file->boot"
        assert _boot_cell(site, _said(row, state, f"{state} ") or ""), row
        rec = "LOG" if site["source"] == "log" else "rec" if site["recorded"] else "UNREC"
        said = {"recorded": "rec", "unrecorded (UNREC)": "UNREC", "known only from the patch log (LOG)": "LOG"}
        every = set(row["every site"].split(", "))
        assert row.get("rec", next((v for k, v in said.items() if k in every), None)) == rec, row
        traceable = row.get("traceable") or ("yes" if "traceable" in every else "NO")
        assert traceable.startswith("yes" if site["traceable"] else "NO"), row
        function = site["function"] or ("?" if site["listed_as"] is None else f"? (listed as {site['listed_as']})")
        assert row["function"] == function, row
        stub = row.get("[stub area]") or _said(row, "[stub area]", "ool stub in ") or ""
        assert stub.strip("[]") == (site["stub"] or ""), row


def _header_and_rows(table: str) -> list[tuple[str, list[str]]]:
    """(column header line, its rows) of each table in the text."""
    lines = table.splitlines()
    out = []
    for n, line in enumerate(lines):
        if line.lstrip().startswith("call slot"):
            rows = []
            for row in lines[n + 1 :]:
                if not row.startswith("  ") or row.startswith("  ... "):
                    break
                rows.append(row)
            out.append((line, rows))
    return out


def _assert_reads_at_80_columns(table: str, function_by: int) -> None:
    """The function (what a developer looks for) starts by column ``function_by`` of every row,
    so that a name of 80 - ``function_by`` characters ends by column 80 (an ool stub area may
    run past it, after the name); the ``every site:`` lines end by column 80."""
    lines = table.splitlines()
    every = [n for n, line in enumerate(lines) if line.startswith("  every site: ")]
    for n in every:  # the line that says the dropped columns, and its continuations, fit too
        block = [lines[n], *takewhile(lambda line: line.startswith(" " * 14), lines[n + 1 :])]
        assert all(len(line) <= 80 for line in block), block
    for header, rows in _header_and_rows(table):
        start = header.index("function")
        assert start <= function_by, header
        for row in rows:
            assert row[start - 2 : start] == "  " and row[start] != " ", (header, row)


@pytest.mark.parametrize(
    ("name", "function_by"),
    [("prof-le", 48), ("std-le", 48), ("std-le.o", 48), ("patchable-le.o", 48), ("ool-be.o", 48),
     ("anom-unrecorded", 56), ("anom-broken", 56)],
)  # fmt: skip
def test_the_scan_table_of_a_fixture_keeps_every_fact_and_reads_at_80_columns(name: str, function_by: int) -> None:
    """The table ran to the function at column 86 (94 with a kernel's addresses), past an
    80-column terminal: each row wrapped. The function now comes by column 48, and the columns
    the same for every site (variant, states, record...) are said once, above the table; no fact
    of the JSON is lost (mprofile-std's variant included). Where states, records and reasons
    differ between sites, by column 56."""
    table, images = _table_and_json(FIXTURES / "bin" / name)
    _assert_every_fact_kept(table, images)
    _assert_reads_at_80_columns(table, function_by=function_by)


def test_a_rewritten_images_table_keeps_its_log_sites_and_reads_at_80_columns(tmp_path: Path) -> None:
    """Sites from a patch log (LOG), beside sites the image shows: states, records and reasons
    differ between rows, so those columns stay, and the function still starts by column 56."""
    out = tmp_path / "prog.nop"
    done = invoke("nop", FIXTURES / "bin" / "prof-le", "--exclude", "leaf_add", "--drop-records", "-o", out)
    assert done.exit_code == 0, done.output
    table, images = _table_and_json(out)
    assert {r["rec"] for r in scan_table(table)} == {"rec", "LOG"}
    _assert_every_fact_kept(table, images)
    _assert_reads_at_80_columns(table, function_by=56)


@pytest.mark.corpus
@pytest.mark.parametrize("kernel", ["6.1", "6.12", "7.2"])
def test_a_corpus_kernels_table_keeps_every_fact_and_reads_at_80_columns(kernel: str) -> None:
    """`scan <6.12 vmlinux>` printed rows like ``0xc00000000000faec  .text  patchable
    nopped->disabled  rec  yes  __traceiter_initcall_level``: the function at column 94. Now by
    column 48 on all three generations (--all: every row), every site's facts kept."""
    table, images = _table_and_json(require_kernel(kernel).vmlinux)
    _assert_every_fact_kept(table, images)
    _assert_reads_at_80_columns(table, function_by=48)
    default = invoke("scan", require_kernel(kernel).vmlinux).stdout
    assert len(scan_table(default)) == 20 and "every site: variant " in default


@pytest.mark.corpus
def test_a_module_trees_tables_keep_every_fact_and_close_with_the_total() -> None:
    """Several modules: a table each, the function by column 24 (a module's call slot names its
    section), and the total line after the last."""
    tree = require_kernel("6.12").modules_dir / "fs" / "nls"
    table, images = _table_and_json(tree)
    _assert_every_fact_kept(table, images)
    _assert_reads_at_80_columns(table, function_by=24)
    assert len(_header_and_rows(table)) == sum(1 for i in images if i["sites"]) > 1
    assert unwrapped(table).splitlines()[-1].startswith(f"total: {len(images)} images, ")


# -- counted reasons agree with their count ---------------------------------------------------


def test_one_unrecorded_site_is_it_not_them() -> None:
    """`scan` of a program with one unrecorded site said "1 unrecorded: no kernel record: ftrace
    never patches them"."""
    table = invoke("scan", FIXTURES / "bin" / "anom-unrecorded").stdout
    assert "  not traceable: 1 site (unrecorded) has no kernel record, so ftrace never patches it\n" in unwrapped(table)


@pytest.mark.parametrize("reason", list(Untraceable))
def test_every_reason_text_agrees_with_one_site_and_with_several(reason: Untraceable) -> None:
    """Each reason is said of one site in the singular, of several in the plural: one table,
    one helper (``prose.agreeing``) that picks."""
    one, many = they_text(reason, 1), they_text(reason, 2)
    assert (one, many) == (f"it {agreeing(1, *SAID[reason])}", f"they {agreeing(2, *SAID[reason])}")
    assert not re.search(r"\b(them|their|they|bodies|functions)\b", one), one
    assert they_text(reason, 0) == many


@pytest.mark.corpus
def test_a_modules_one_init_site_drops_its_record_not_theirs(tmp_path: Path) -> None:
    """nls_utf8 has one traceable init site: the note said "1 of the traceable sites is in init
    sections: ... drops their records"."""
    from boot import unsigned_module

    ko = unsigned_module("6.12", "fs/nls/nls_utf8.ko*", tmp_path / "nls_utf8.ko")
    (note,) = [line for line in unwrapped(invoke("scan", ko).stdout).splitlines() if line.startswith("  init text: ")]
    assert note.startswith("  init text: 1 of the traceable sites is in init sections: "), note
    assert "drops its record (ftrace_free_mem() in do_init_module())" in note, note


def test_policy_checks_one_nopped_site_and_one_module_in_the_singular() -> None:
    """`policy check`'s warning said "the vmlinux: nop on 1 site drops their records" and "1
    module: nop on 2 sites ... prenop refuses them"."""
    from rewriter.generations import Generation
    from rewriter.locs import ZERO_ADJUSTED, Locs
    from rewriter.policy import SiteFacts, Tally, parse

    t = Tally(parse("default keep\nnop *_slow\n", "p"))
    t.add_file("m", [SiteFacts("a_slow", ".text"), SiteFacts("b_slow", ".text")], Generation.PATCHABLE)
    t.add_file(None, [SiteFacts("e_slow", ".text")], Generation.PATCHABLE, Locs.ADJUSTS_FIRST)
    vmlinux, module = [w for w in t.warnings() if ZERO_ADJUSTED in w]
    assert vmlinux.startswith("the vmlinux: nop on 1 site drops its record, but "), vmlinux
    assert module.startswith("1 module: nop on 2 sites drops their records, ") and module.endswith("refuses it")


# -- a =2,2 build under --generation ----------------------------------------------------------

_NOPS_BEFORE = ("records at nops just before a function's entry", "-fpatchable-function-entry=M,N, N > 0")


@pytest.mark.parametrize("endian", ["powerpc64", "powerpc64le"])
@pytest.mark.parametrize("kind", ["program", "object"])
@pytest.mark.parametrize("given", [None, "ool", "patchable", "mprofile"])
def test_a_2_2_build_is_refused_whatever_generation_is_given(
    tmp_path: Path, endian: str, kind: str, given: str | None
) -> None:
    """``-fpatchable-function-entry=2,2`` puts both nops before the entry: no kernel's layout.
    Without --generation (and with patchable) scan refused it by name; ``--generation ool`` read
    its records in ool's one-word layout, which reaches no entry, and listed every site as an
    ool weak body (``--generation mprofile``: an ftrace bug at boot). The layout is the build's:
    one line, exit 2, under every --generation, naming the option the contents contradict."""
    from boot import require_tool
    from conftest import assert_one_line

    cc = require_tool(f"{endian}-linux-gnu-gcc")
    src, out = tmp_path / "f.c", tmp_path / ("f" if kind == "program" else "f.o")
    src.write_text("int g;\nint f(int x) { return g + x; }\nint h(int y) { return y * 3; }\nvoid _start(void) { }\n")
    link = ["-nostdlib", "-static", "-Wl,-e,_start"] if kind == "program" else ["-c"]
    subprocess.run(
        [cc, "-O2", "-fno-pie", "-fpatchable-function-entry=2,2", *link, str(src), "-o", str(out)], check=True
    )
    option = [] if given is None else ["--generation", given]
    line = assert_one_line(invoke("scan", *option, out), 2, "error", *_NOPS_BEFORE)
    assert (f"--generation {given} reads the {given} layout, not this one" in line) is (given in ("ool", "mprofile"))
    nopped = tmp_path / "f.nop"
    assert_one_line(invoke("nop", *option, out, "-o", nopped), 2, "error", *_NOPS_BEFORE)
    assert not nopped.exists()


# -- policy check's rule table at 80 columns --------------------------------------------------


def _rule_rows(output: str) -> list[str]:
    lines = output.splitlines()
    start = next(n for n, line in enumerate(lines) if line.split()[:2] == ["line", "rule"])
    end = next(n for n, line in enumerate(lines) if line.startswith("result: "))
    return lines[start:end]


def test_policy_checks_rule_rows_fit_80_columns_with_their_first_example() -> None:
    """The default rule's row named four examples and ran to column 94 on a test program (150 on
    a kernel): each rule's row wrapped. The examples now stop where the row reaches column 80,
    ``...`` saying some were left out; the first is always there."""
    done = invoke("policy", "check", Path(__file__).parent.parent / "examples" / "keep-core.policy",
                  FIXTURES / "bin" / "prof-le")  # fmt: skip
    assert done.exit_code == 1, done.output  # two rules match nothing
    rows = _rule_rows(done.stdout)
    assert all(len(row) <= 80 for row in rows), rows
    default = next(row for row in rows if "default nop" in row)
    assert default.endswith(", ...") and "fp_mix, " in default, default


# -- the same fact named the same way in every command ----------------------------------------


@pytest.mark.corpus
def test_diff_counts_names_as_names_not_as_functions(tmp_path: Path) -> None:
    """nls_ascii has three functions with sites (scan lists three, audit counts three), and one
    has an alias (init_module): diff said "Functions with sites: 4 in both". It counts names."""
    from boot import unsigned_module

    a = unsigned_module("6.12", "fs/nls/nls_ascii.ko*", tmp_path / "a.ko")
    b = tmp_path / "b.ko"
    assert invoke("nop", a, "--only", "uni2char", "--drop-records", "-o", b).exit_code == 0
    functions = {r["function"] for r in scan_table(invoke("scan", a).stdout)}
    assert len(functions) == 3
    text = unwrapped(invoke("diff", a, b).stdout)  # its prose wraps at 80 columns
    assert "Functions with sites:" not in text
    assert "Function names with sites (a function's aliases are names of it): 4 in both, " in text, text


def test_audits_records_row_says_skipped_as_scan_does() -> None:
    """scan's head says "N skipped" of the records the kernel skips outside kernel text; the
    audit's table said only "outside kernel text" of them, which on a kernel with the older loop
    (6.1: it skips none, such a record is unmatched) reads as a count of all records there."""
    scan = unwrapped(invoke("scan", FIXTURES / "bin" / "prof-le").stdout)
    audit = invoke("audit", FIXTURES / "bin" / "prof-le").stdout
    assert "(0 skipped, 0 unmatched)" in scan.splitlines()[0]
    assert "| records (unmatched, duplicate, skipped: outside kernel text) / zeroed slots | 6 (0, 0, 0) / 0 |" in audit


def test_audits_zeroed_records_are_slots_as_scan_says(tmp_path: Path) -> None:
    """A table whose records were dropped: scan says "6 zeroed slots" (its note "6 record slots
    hold 0"), the audit's table "zeroed slots"; its anomaly said "6 zeroed entries"."""
    out = tmp_path / "prog.nop"
    assert invoke("nop", FIXTURES / "bin" / "prof-le", "--drop-records", "-o", out).exit_code == 0
    assert "6 zeroed slots" in unwrapped(invoke("scan", out).stdout).splitlines()[0]
    audit = invoke("audit", out).stdout
    assert "`zeroed-records`: 6 zeroed slots in __mcount_loc" in audit and "entries" not in audit, audit


@pytest.mark.corpus
def test_a_refused_rewrite_of_two_sites_says_1_more_site(tmp_path: Path) -> None:
    """Two sites a 6.12 module's init would refuse: the line said "(and 1 more sites)"."""
    from boot import unsigned_module
    from conftest import assert_one_line

    ko = unsigned_module("6.12", "fs/nls/nls_ascii.ko*", tmp_path / "a.ko")
    out = tmp_path / "b.ko"
    done = invoke("apply", ko, "--to", "disabled", "--only", "uni2char", "--only", "char2uni", "-o", out)
    line = assert_one_line(done, 2, "error", "would hold disabled (mflr r0; nop) at a recorded place")
    assert ".text+0x14 (uni2char) (and 1 more site): " in line, line


def _one_function(tmp_path: Path, entry: str) -> Path:
    from boot import require_tool

    cc = require_tool("powerpc64le-linux-gnu-gcc")
    src, obj = tmp_path / "one.c", tmp_path / f"one-{entry}.o"
    src.write_text("int f(int x) { return x + 1; }\n")
    subprocess.run([cc, "-O2", f"-fpatchable-function-entry={entry}", "-c", str(src), "-o", str(obj)], check=True)
    return obj


def test_an_object_of_one_record_is_said_in_the_singular(tmp_path: Path) -> None:
    """An ool object of one function: its stubs note said "serve 1 of 1 records"; the same
    patchable, its one record dropped and read without the log: "its 1 records are all zeroed"."""
    ool = unwrapped(invoke("scan", _one_function(tmp_path, "1")).stdout)
    assert "ool stubs: .stubs, carved out at load, one per table entry (1): serve 1 of 1 record\n" in ool, ool
    nopped = tmp_path / "one.nop.o"
    assert invoke("nop", _one_function(tmp_path, "2"), "--drop-records", "-o", nopped).exit_code == 0
    Path(f"{nopped}.mcountrw.jsonl").unlink()
    again = invoke("nop", nopped, "-o", tmp_path / "again.o")
    assert again.exit_code == 1 and "no ftrace call site found: its 1 record is zeroed (--drop-records)" in again.stderr
