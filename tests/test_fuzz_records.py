"""Findings of the 2025 black-box fuzz pass on record tables and their relocations.

Four were quadratic: a crafted (or merely large) file made one of them walk every section, or
compare the whole symbol table, once for each record, record section, restored call or stub name.
A timing would pass on the old code at any size a test can afford, so these tests count instead:
the walks over an image's sections (``Image.sections`` iterated) or the comparisons of the symbol
table's names, which must not grow with the count of records, tables or names. Each also checks
the answer, against a plain walk or the input.

Two were a vmlinux whose ``.dynamic`` disagrees with ``.rela.dyn`` (``DT_RELASZ`` smaller than
the rows a drop moves: an internal error; ``DT_RELAENT`` other than 24, which relocate() of 6.0
and later steps its walk by: a drop that lowered ``DT_RELASZ`` by bytes, and a kernel that would
apply the moved rows at boot). Both are refused in one line now.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Final

import numpy as np
import pytest
from boot import require_tool
from conftest import _MINI_LDS, FIXTURES, assert_one_line, invoke, mini_vmlinux

from rewriter import arrays, mcount
from rewriter.elf import structs as S
from rewriter.elf.image import Image, Section, Symbols
from rewriter.sites import scan


class _CountedSections(list[Section]):
    """An image's section list that counts the walks over it (each ``for``, comprehension,
    ``next(...)``), indexing aside."""

    walks = 0

    def __iter__(self) -> Iterator[Section]:
        _CountedSections.walks += 1
        return super().__iter__()


@pytest.fixture
def counted_walks(monkeypatch: pytest.MonkeyPatch) -> type[_CountedSections]:
    """Every image loaded from now on counts the walks over its sections."""
    read = Image._read_sections
    monkeypatch.setattr(Image, "_read_sections", lambda self: _CountedSections(read(self)))
    _CountedSections.walks = 0
    return _CountedSections


def _assemble(tmp_path: Path, name: str, lines: list[str]) -> Path:
    tmp_path.mkdir(exist_ok=True)
    src, obj = tmp_path / f"{name}.s", tmp_path / f"{name}.o"
    src.write_text("\n".join(lines) + "\n")
    subprocess.run([require_tool("powerpc64le-linux-gnu-as"), "-o", str(obj), str(src)], check=True)
    return obj


def _modinfo(version: str) -> list[str]:
    """A module's ``.modinfo``, naming the kernel ``version`` it is built for, and the sections
    every module has, which its loader refuses one without (rewriter/modload.py)."""
    return [
        '\t.section .modinfo,"a",@progbits',
        f'\t.asciz "vermagic={version} SMP mod_unload "',
        '\t.asciz "license=GPL"',
        '\t.section .stubs,"ax",@nobits',
        '\t.section .gnu.linkonce.this_module,"aw",@progbits',
    ]


def _mini_vmlinux_with(tmp_path: Path, extra: Path) -> Path:
    """conftest's vmlinux in miniature (fixtures/bin/prof-le.o and its linker script), with one
    more object linked in: its ``__mcount_loc`` entries join the record table, its symbols the
    symbol table."""
    ld = require_tool("powerpc64le-linux-gnu-ld")
    script, out = tmp_path / "mini.lds", tmp_path / "vmlinux"
    script.write_text(_MINI_LDS)
    link = [ld, "-pie", "--no-dynamic-linker", "--no-warn-rwx-segments", "-T", str(script)]
    subprocess.run([*link, str(FIXTURES / "bin" / "prof-le.o"), str(extra), "-o", str(out)], check=True)
    return out


# -- §2: a record that names no site is placed by a search, not a walk over every section ----------


def _walked_section_of_addr(image: Image, addr: int) -> Section | None:
    """What ``Image.section_of_addr`` answered when it walked every section."""
    for sec in image.sections:
        if sec.contains_addr(addr) and sec.type != S.SHT_NOBITS:
            return sec
    return None


@pytest.mark.parametrize("name", ["prof-le", "prof-le.o", "std-le", "anom-dangling"])
def test_section_of_addr_answers_as_a_walk_over_every_section(name: str) -> None:
    """At and around every section's bounds, and in a relocatable file, where every section starts
    at 0 (the first in header order has the address, as the walk found it)."""
    image = Image.load(FIXTURES / "bin" / name)
    bounds = {b for s in image.sections for b in (s.addr, s.addr + s.size)}
    probes = sorted({max(b + d, 0) for b in bounds for d in (-1, 0, 1, 4)} | {(1 << 64) - 1})
    for addr in probes:
        assert image.section_of_addr(addr) == _walked_section_of_addr(image, addr), hex(addr)


def _table_of(tmp_path: Path, records: int) -> Path:
    """A vmlinux whose record table has ``records`` more entries than its sites: half name
    addresses in no section, half the bytes from ``linux_banner`` (.rodata) on, into the sections
    after it. The kernel skips them all (outside its text), and the scan says where each lies."""
    entries = [f"\t.quad {0xD000_0000_0000_0000 + 8 * k:#x}" for k in range(records // 2)]
    entries += [f"\t.quad linux_banner+{k}" for k in range(records - records // 2)]
    table = _assemble(tmp_path, "table", ['\t.section __mcount_loc,"a",@progbits', *entries])
    return _mini_vmlinux_with(tmp_path, table)


def test_records_that_name_no_site_are_placed_without_a_walk_each(
    tmp_path: Path, counted_walks: type[_CountedSections]
) -> None:
    """Each skipped, unmatched, repeated or unread record was placed by a walk over every section:
    a scan of N such records in a file of N sections took N^2 (32,000 of each: killed at 60 s)."""
    walks = []
    for records in (10, 100):
        image = Image.load(_table_of(tmp_path / str(records), records))
        counted_walks.walks = 0
        result = scan(image)
        walks.append(counted_walks.walks)
        skipped = result.records.skipped
        assert len(skipped) == records
        for place in skipped:
            assert place.addr is not None
            walked = _walked_section_of_addr(image, place.addr)
            assert place.section == (walked.name if walked else None), place
        assert [p.section for p in skipped].count(".rodata") == min(records - records // 2, 21)  # the banner's
    assert walks[0] == walks[1], f"section walks grew with the records: {walks}"


# -- §3: the module loader's view is computed once per module, not once per record section ----------


def _own_record_sections(functions: int) -> list[str]:
    """``functions`` patchable functions, each with its own ``__patchable_function_entries``
    (SHF_LINK_ORDER, as gcc 13 makes them): one record section each."""
    lines = ["\t.abiversion 2", "\t.text"]
    for i in range(functions):
        lines += [f"\t.globl f{i}", f"\t.type f{i},@function", f"f{i}:", f".Lp{i}:", "\tnop", "\tnop", "\tblr"]
        lines += [f"\t.size f{i},.-f{i}", f'\t.section __patchable_function_entries,"awo",@progbits,f{i}']
        lines += ["\t.p2align 3", f"\t.quad .Lp{i}", "\t.text"]
    return lines


def _own_record_sections_module(tmp_path: Path, functions: int) -> Path:
    """:func:`_own_record_sections` as a module for a 6.6 kernel: its loader takes the module and
    reads only the first record section (rewriter/modload.py)."""
    obj = _assemble(tmp_path, f"own{functions}", _own_record_sections(functions) + _modinfo("6.6.0"))
    return obj.rename(tmp_path / f"own{functions}.ko")


def test_the_record_sections_the_loader_reads_are_found_without_a_walk_each(
    tmp_path: Path, counted_walks: type[_CountedSections]
) -> None:
    """Which record sections a pre-6.12 loader reads was asked once per record section, and each
    question walked every section twice (the shared names, then the first of the name): 16,000
    record sections took 44 s."""
    walks = []
    for functions in (20, 60):
        image = Image.load(_own_record_sections_module(tmp_path, functions))
        counted_walks.walks = 0
        result = scan(image)
        walks.append(counted_walks.walks)
        assert result.records.count == 1 and len(result.records.unread) == functions - 1
        assert [s.function for s in result.sites if s.recorded] == ["f0"]
    assert walks[0] == walks[1], f"section walks grew with the record sections: {walks}"


# -- §3b: putting back a -ffunction-sections module's calls indexes its tables once ---------------


def _function_sections_module(tmp_path: Path, functions: int) -> Path:
    """A 6.1-style mprofile module built as ``-ffunction-sections`` builds one: each function in its
    own ``.text.fN`` with its own ``.rela.text.fN``."""
    lines = ["\t.abiversion 2"]
    for i in range(functions):
        lines += [f'\t.section .text.f{i},"ax",@progbits', f"\t.globl f{i}", f"\t.type f{i},@function", f"f{i}:"]
        lines += ["\tmflr 0", f".Lp{i}:", "\tbl _mcount", "\tnop", "\tblr", f"\t.size f{i},.-f{i}"]
    lines += ['\t.section __mcount_loc,"a",@progbits', "\t.p2align 3"] + [f"\t.quad .Lp{i}" for i in range(functions)]
    lines += _modinfo("6.1.0")
    return _assemble(tmp_path, f"fs{functions}", lines).rename(tmp_path / f"fs{functions}.ko")


def test_calls_put_back_into_function_sections_find_their_tables_without_a_walk_each(
    tmp_path: Path, counted_walks: type[_CountedSections]
) -> None:
    """``apply --to enabled`` after ``nop --drop-records`` puts each REL24 back from the patch log.
    For each call it listed every relocation table (twice), and for each table it grew walked
    every section: 8,000 functions took 38 s. The module comes back byte for byte."""
    walks = []
    for functions in (20, 60):
        d = tmp_path / str(functions)
        d.mkdir()
        module = _function_sections_module(d, functions)
        assert invoke("nop", module, "-o", d / "nop.ko", "--drop-records").exit_code == 0
        counted_walks.walks = 0
        result = invoke("apply", d / "nop.ko", "--to", "enabled", "-o", d / "on.ko")
        walks.append(counted_walks.walks)
        assert result.exit_code == 0, result.output
        assert (d / "on.ko").read_bytes() == module.read_bytes()
    assert walks[0] == walks[1], f"section walks grew with the functions: {walks}"


def test_records_dropped_from_and_put_back_into_a_table_per_function_take_no_pass_each(
    tmp_path: Path, counted_walks: type[_CountedSections], monkeypatch: pytest.MonkeyPatch
) -> None:
    """gcc 13's one record table per function: ``--drop-records`` tested each table's entries
    against all the records to drop (sorting those once per table), and putting them back
    searched every table of the name (walking every section) for each record. The object comes
    back byte for byte."""
    tested: list[int] = []
    member = arrays.member

    def counted_member(values: np.ndarray, of: np.ndarray | Sequence[int]) -> np.ndarray:
        tested.append(len(of))
        return member(values, of)

    monkeypatch.setattr(arrays, "member", counted_member)
    counts = []
    for functions in (20, 60):
        d = tmp_path / str(functions)
        d.mkdir()
        obj = _assemble(d, "own", _own_record_sections(functions))  # an object: every table goes into the link
        tested.clear()
        dropped = invoke("nop", obj, "-o", d / "nop.o", "--drop-records")
        assert dropped.exit_code == 0 and f"made {functions} sites untraceable" in dropped.output, dropped.output
        drop_tests = len(tested)
        counted_walks.walks = 0
        assert invoke("apply", d / "nop.o", "--to", "enabled", "-o", d / "on.o").exit_code == 0
        counts.append((drop_tests, counted_walks.walks))
        assert (d / "on.o").read_bytes() == obj.read_bytes()
    assert counts[0] == counts[1], f"(membership tests, section walks) grew with the tables: {counts}"


def _nopped_object(tmp_path: Path) -> tuple[Path, Image, Section]:
    """fixtures/bin/prof-le.o nopped: its ``.rela.text`` lost the REL24s of the calls, and the
    bytes after it (the freed tail) are zero."""
    nopped = tmp_path / "nop.o"
    assert invoke("nop", FIXTURES / "bin" / "prof-le.o", "-o", nopped).exit_code == 0
    image = Image.load(nopped)
    rela = image.section(".rela.text")
    assert rela is not None
    return nopped, image, rela


def test_a_table_that_cannot_grow_back_into_its_freed_tail_says_why(tmp_path: Path) -> None:
    """The room check searches the sections by offset now: a table still may not grow into bytes
    that are not zero, nor into another section, named."""
    nopped, image, rela = _nopped_object(tmp_path)
    end = rela.offset + rela.size
    data = bytearray(nopped.read_bytes())
    data[end + 5] = 1
    nopped.write_bytes(data)
    _forge_log_output(Path(f"{nopped}.mcountrw.jsonl"), nopped)
    refused = invoke("apply", nopped, "--to", "enabled", "-o", tmp_path / "on.o")
    assert_one_line(refused, 2, "error", str(nopped), ".rela.text: no room", "the bytes after it are not free")
    data[end + 5] = 0
    # An empty-looking note moved into the freed tail: a section the table would reach.
    other = next(s for s in image.sections if s.name == ".note.GNU-stack")
    field = int(image.ehdr["e_shoff"]) + other.shndx * 64 + 24  # sh_offset
    data[field : field + 8] = (end + 8).to_bytes(8, "little")
    data[field + 8 : field + 16] = (8).to_bytes(8, "little")  # sh_size
    nopped.write_bytes(data)
    _forge_log_output(Path(f"{nopped}.mcountrw.jsonl"), nopped)
    refused = invoke("apply", nopped, "--to", "enabled", "-o", tmp_path / "on.o")
    assert_one_line(refused, 2, "error", ".rela.text: no room", "it would reach .note.GNU-stack")
    assert not (tmp_path / "on.o").exists()


# -- §10b: the linker stubs' names are looked up in one pass ---------------------------------------


class _CountedEq(np.ndarray):
    """A column that counts the comparisons made with it."""

    compared = 0

    def __eq__(self, other: object) -> Any:  # type: ignore[override]
        _CountedEq.compared += 1
        return np.ndarray.__eq__(self, other)


def test_long_branch_stub_names_are_looked_up_in_one_pass(tmp_path: Path) -> None:
    """Each ``<id>.long_branch._mcount`` in the string table compared the whole symbol table with
    its name: 160,000 names took 17.6 s. Every such name is still an mcount entry."""
    compared = []
    for names in (20, 60):
        lines = ["\t.text", *[f"s{i}.long_branch._mcount:\n\tnop" for i in range(names)]]
        lines += [f"p{i}.plt_branch._mcount:\n\tnop" for i in range(3)]
        vmlinux = _mini_vmlinux_with(tmp_path / str(names), _assemble(tmp_path / str(names), "lb", lines))
        image = Image.load(vmlinux)
        syms = image.symbols
        assert syms is not None
        expected = [
            int(syms.table["st_value"][syms.find(f"{p}{i}.{kind}._mcount")[0]])
            for p, kind, count in (("s", "long_branch", names), ("p", "plt_branch", 3))
            for i in range(count)
        ]
        image.__dict__["symbols"] = Symbols(syms.table.view(_CountedEq), syms.strtab)
        _CountedEq.compared = 0
        assert sorted(mcount._stub_symbols(image)) == sorted(expected)
        compared.append(_CountedEq.compared)
        assert set(expected) <= set(scan(Image.load(vmlinux)).mcount_entries)
    assert compared[0] == compared[1], f"symbol table comparisons grew with the names: {compared}"


# -- §5, §8: a .dynamic that disagrees with .rela.dyn --------------------------------------------------


def _dynamic_field(path: Path, tag: int) -> int:
    """The file offset of ``tag``'s d_val in ``path``'s ``.dynamic``."""
    image = Image.load(path)
    dyn = image.section(".dynamic")
    assert dyn is not None
    table = image.table(dyn, S.dyn_dtype(image.endian), ".dynamic")
    (i,) = np.flatnonzero(table["d_tag"] == tag)
    return int(dyn.offset + i * table.dtype.itemsize + 8)


def _set_dynamic(path: Path, tag: int, value: int) -> int:
    """Set ``tag`` in ``path``'s ``.dynamic``; its old value."""
    at = _dynamic_field(path, tag)
    data = bytearray(path.read_bytes())
    old = int.from_bytes(data[at : at + 8], "little")
    data[at : at + 8] = value.to_bytes(8, "little")
    path.write_bytes(data)
    return old


RELA_DYN_SIZE: Final = 6 * 24  # the miniature's .rela.dyn: one RELATIVE row per record

DISAGREEING: Final = [
    # DT_RELASZ 0: the drop lowered it below zero (OverflowError, exit 3)
    pytest.param(S.DT_RELASZ, 0, "DT_RELASZ 0x0 does not agree with .rela.dyn, whose size is 0x90", id="relasz-0"),
    # larger than the table: relocate() would walk into the rows a drop moves past it
    pytest.param(S.DT_RELASZ, RELA_DYN_SIZE + 24, "DT_RELASZ 0xa8 does not agree", id="relasz-past-table"),
    # relocate() steps DT_RELAENT bytes a row: DT_RELASZ was lowered by a byte a moved row
    pytest.param(S.DT_RELAENT, 1, "DT_RELAENT 1 does not agree with .rela.dyn, whose rows are 24", id="relaent-1"),
    pytest.param(S.DT_RELAENT, 0xFFFF_FFFF_FFFF, "DT_RELAENT 281474976710655 does not agree", id="relaent-huge"),
    pytest.param(S.DT_RELAENT, 0, "DT_RELAENT 0 does not agree", id="relaent-0"),  # relocate() applies nothing
    # relocate() before 6.0 would walk DT_RELACOUNT rows, past the table
    pytest.param(S.DT_RELACOUNT, 7, "DT_RELACOUNT 7 does not agree with .rela.dyn, which has 6 rows", id="relacount-7"),
]


@pytest.mark.parametrize(("tag", "value", "words"), DISAGREEING)
def test_a_drop_from_a_vmlinux_whose_dynamic_disagrees_with_rela_dyn_is_refused(
    tmp_path: Path, tag: int, value: int, words: str
) -> None:
    vmlinux = mini_vmlinux(tmp_path)
    rela = Image.load(vmlinux).section(".rela.dyn")
    assert rela is not None and rela.size == RELA_DYN_SIZE
    _set_dynamic(vmlinux, tag, value)
    assert invoke("scan", vmlinux).exit_code == 0  # what the file holds, read as before
    refused = invoke("nop", vmlinux, "-o", tmp_path / "out", "--drop-records")
    assert_one_line(refused, 2, "error", f"{vmlinux}: .dynamic {words}")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mini.lds", "vmlinux"]


def _forge_log_output(log: Path, output: Path) -> None:
    """Make ``log`` name ``output``'s bytes as the file it wrote (header and footer)."""
    lines = log.read_text().splitlines()[:-1]
    header = json.loads(lines[0])
    digest = hashlib.sha256(output.read_bytes()).hexdigest()
    header["output"]["sha256"] = header["output"]["content_sha256"] = digest
    lines[0] = json.dumps(header, sort_keys=True)
    body = "".join(line + "\n" for line in lines).encode()
    footer = {"type": "footer", "lines": len(lines), "sha256": hashlib.sha256(body).hexdigest()}
    log.write_bytes(body + json.dumps(footer, sort_keys=True).encode() + b"\n")


def test_a_restore_into_a_vmlinux_whose_dynamic_disagrees_with_rela_dyn_is_refused(tmp_path: Path) -> None:
    """Putting records back raised DT_RELASZ by DT_RELAENT bytes a row: with DT_RELAENT 1 by 6
    bytes for 6 rows, and the rows put back stayed outside what relocate() applies."""
    vmlinux = mini_vmlinux(tmp_path)
    nopped = tmp_path / "nop"
    assert invoke("nop", vmlinux, "-o", nopped, "--drop-records").exit_code == 0
    assert _set_dynamic(nopped, S.DT_RELAENT, 1) == 24
    _forge_log_output(Path(f"{nopped}.mcountrw.jsonl"), nopped)
    refused = invoke("apply", nopped, "--to", "enabled", "-o", tmp_path / "on")
    assert_one_line(refused, 2, "error", f"{nopped}: .dynamic DT_RELAENT 1 does not agree")
    assert not (tmp_path / "on").exists()


def test_a_drop_and_its_restore_move_dt_relasz_by_whole_rows(tmp_path: Path) -> None:
    """A well-formed miniature: the drop lowers DT_RELASZ by 24 a row and DT_RELACOUNT by one,
    to agree with .rela.dyn's new sh_size, and putting the records back gives the input's bytes."""
    vmlinux = mini_vmlinux(tmp_path)
    nopped, on = tmp_path / "nop", tmp_path / "on"
    assert invoke("nop", vmlinux, "-o", nopped, "--drop-records").exit_code == 0
    image = Image.load(nopped)
    rela = image.section(".rela.dyn")
    assert rela is not None and rela.size == 0
    for tag, value in ((S.DT_RELASZ, 0), (S.DT_RELACOUNT, 0), (S.DT_RELAENT, 24)):
        at = _dynamic_field(nopped, tag)
        assert int.from_bytes(nopped.read_bytes()[at : at + 8], "little") == value
    assert invoke("apply", nopped, "--to", "enabled", "-o", on).exit_code == 0
    assert on.read_bytes() == vmlinux.read_bytes()


def _set_dynamic_entry(path: Path, index: int, tag: int, value: int) -> None:
    """Write entry ``index`` of ``path``'s ``.dynamic`` as (``tag``, ``value``)."""
    dyn = Image.load(path).section(".dynamic")
    assert dyn is not None
    at = dyn.offset + 16 * index
    data = bytearray(path.read_bytes())
    data[at : at + 16] = tag.to_bytes(8, "little") + value.to_bytes(8, "little")
    path.write_bytes(data)


def _zero_record_word(path: Path, row: int) -> None:
    """Zero the file word of the miniature's record slot ``row`` (its RELATIVE addend stays)."""
    records = Image.load(path).section(".init.data")
    assert records is not None and records.size == RELA_DYN_SIZE // 3
    data = bytearray(path.read_bytes())
    data[records.offset + 8 * row : records.offset + 8 * row + 8] = bytes(8)
    path.write_bytes(data)


def _recorded(path: Path) -> list[str]:
    scanned = invoke("scan", "--format", "json", path)
    assert scanned.exit_code == 0, scanned.output
    return [s["function"] for s in json.loads(scanned.output)["images"][0]["sites"] if s["record"] is not None]


ALL_SIX: Final = ["static_helper", "leaf_add", "nonleaf_calls", "sum8", "fp_mix", "touch_global"]


@pytest.mark.parametrize(
    ("tag", "name"), [(S.DT_RELA, "DT_RELA"), (S.DT_RELASZ, "DT_RELASZ"), (S.DT_RELAENT, "DT_RELAENT")]
)
def test_a_vmlinux_whose_dynamic_lacks_what_relocate_checks_keeps_its_file_words(
    tmp_path: Path, tag: int, name: str
) -> None:
    """relocate() (reloc_64.S) applies no row when DT_RELA, DT_RELASZ or DT_RELAENT is missing
    (``beq .Lout``), so each record slot holds its file word at boot, not its RELATIVE addend. A
    missing DT_RELASZ was read as the whole table: a slot whose file word is 0 counted as recorded.
    A drop is refused: there is no DT_RELASZ bound to move rows past."""
    vmlinux = mini_vmlinux(tmp_path)
    _zero_record_word(vmlinux, 0)
    assert _recorded(vmlinux) == ALL_SIX  # every addend applied over the file words
    _set_dynamic(vmlinux, tag, 0)
    at = _dynamic_field(vmlinux, tag) - 8
    data = bytearray(vmlinux.read_bytes())
    data[at : at + 8] = (21).to_bytes(8, "little")  # DT_DEBUG: the value is gone, the table's shape kept
    vmlinux.write_bytes(data)
    assert _recorded(vmlinux) == ALL_SIX[1:]  # the zero word is a skipped record
    refused = invoke("nop", vmlinux, "-o", tmp_path / "out", "--drop-records")
    assert_one_line(refused, 2, "error", f"{vmlinux}: .dynamic has no {name}: relocate() applies no row of .rela.dyn")
    assert not (tmp_path / "out").exists()


def test_relocate_reads_a_tags_last_value_before_dt_null(tmp_path: Path) -> None:
    """reloc_64.S walks ``.dynamic`` to the first DT_NULL and keeps the last value of each tag:
    a second DT_RELASZ of 5 rows leaves the sixth record's addend unapplied (it was read as the
    first, 6 rows), and one past DT_NULL is never read."""
    vmlinux = mini_vmlinux(tmp_path)
    _zero_record_word(vmlinux, 5)
    image = Image.load(vmlinux)
    dyn = image.section(".dynamic")
    assert dyn is not None
    tags = image.table(dyn, S.dyn_dtype(image.endian), ".dynamic")["d_tag"].tolist()
    null = tags.index(S.DT_NULL)
    _set_dynamic_entry(vmlinux, null + 1, S.DT_RELASZ, 5 * 24)  # past DT_NULL: ignored
    assert _recorded(vmlinux) == ALL_SIX
    textrel = tags.index(22)  # DT_TEXTREL, between the linker's DT_RELASZ and DT_NULL
    assert tags.index(S.DT_RELASZ) < textrel < null
    _set_dynamic_entry(vmlinux, textrel, S.DT_RELASZ, 5 * 24)
    assert _recorded(vmlinux) == ALL_SIX[:5]
    refused = invoke("nop", vmlinux, "-o", tmp_path / "out", "--drop-records")
    assert_one_line(refused, 2, "error", f"{vmlinux}: .dynamic DT_RELASZ 0x78 does not agree with .rela.dyn")
