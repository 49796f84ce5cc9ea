"""Findings of the 2026-12-05 black-box fuzz pass over every command (structural mutants of the
fixtures, of corpus modules and of the corpus vmlinux images, run through the CLI).

An ool count word of 2^31 or more: ftrace_init_ool_stub() (arch/powerpc/kernel/trace/ftrace.c,
7.2) copies the ``unsigned int`` ``ftrace_ool_stub_*_count`` into ``int ool_stub_count``, so the
count is negative there and ``WARN_ON(*ool_stub_index > ool_stub_count)`` fails the first record
of the area: ftrace bug, function tracing off. Scan compared the word unsigned and said every
record had its stub.

A plan file whose stage writes one slot many times: each state of the check tries every write its
stage has left, so a thousand writes to one slot (60 kB of JSON) ran for minutes under the state
bound (``MAX_STATES``). The check now bounds its moves too, and says so in one line.

A record table or an ool count word at an address no allocated section holds (an ``__mcount_loc``
section that lost SHF_ALLOC, a ``__start_mcount_loc`` or ``*_count`` symbol moved) was refused as
``address 0x... is in no section with file data``, naming neither the table nor the symbol.

A module with no ``.stubs`` section: ppc64's module_frob_arch_sections() fails the load ("doesn't
contain .stubs", insmod ENOEXEC under qemu); one with no allocated ``.gnu.linkonce.this_module``,
the loader's find_sec() ("No module found in object"; 7.2: "must occupy memory during process
execution"); one with a relocation of a type module_64.c's apply_relocate_add() does not apply, in
any table aimed at an allocated section ("Unknown ADD relocation: 255"). scan read each as loaded, every site traceable,
the first's ool records served by stubs carved from the section it does not have."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from boot import (
    QEMU,
    STANDARD_APPEND,
    boot,
    make_initramfs,
    module_load_script,
    require_kernel,
    require_tool,
    unsigned_module,
)
from conftest import FIXTURES, assert_one_line, invoke
from mutate import clear_alloc, rename_section, set_relocation_type

from rewriter import check as checker
from rewriter.boot import boot_of
from rewriter.elf import structs as S
from rewriter.elf.image import Image
from rewriter.sites import scan
from rewriter.stubs import OOL_TEXT_END


def _count_word_at(image: Image, area: str) -> int:
    syms = image.symbols
    assert syms is not None
    return int(image.offset_of(int(syms.table["st_value"][syms.find(area + "_count")[0]])))


def test_an_ool_count_word_the_kernel_reads_as_negative_gives_no_stub(tmp_path: Path) -> None:
    image = Image.load(require_kernel("7.2").vmlinux)
    before = {a.name: a for a in scan(image).stubs}[OOL_TEXT_END]
    assert before.used > 0 and before.covers
    at = _count_word_at(image, OOL_TEXT_END)
    data = bytearray(image.data)
    data[at : at + 4] = (1 << 31).to_bytes(4, "little")
    result = scan(Image.from_bytes(tmp_path / "vmlinuz", bytes(data)))
    area = {a.name: a for a in result.stubs}[OOL_TEXT_END]
    # every record of the area wants a stub, the kernel gives none: the first one's failure stops init
    assert (area.stub_count, area.used, area.need, area.covers) == (1 << 31, 0, before.used, False)
    assert boot_of(result).ftrace_off is not None


def test_a_stage_of_many_writes_to_one_slot_stops_at_the_move_bound(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    made = invoke("plan", "--generation", "ool", "--from", "enabled", "--to", "disabled", "--format", "json")
    doc = json.loads(made.stdout)
    (write,) = doc["stages"][0]
    doc["stages"][0] = [write] * 40
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps(doc))
    # 40 writes of one slot try about 200,000 moves; the real bound (3 million) is met by 1,000
    monkeypatch.setattr(checker, "MAX_MOVES", 20_000, raising=False)
    refused = invoke("check-plan", plan)
    assert_one_line(refused, 2, "error", "plan.json: site 0 (up to 40 writes in one stage)", "more than 20,000 moves")


def test_a_record_table_in_no_allocated_section_is_named(tmp_path: Path) -> None:
    image = Image.load(FIXTURES / "bin" / "prof-le")
    sec = image.section("__mcount_loc")
    assert sec is not None
    data = bytearray(image.data)
    at = int(image.ehdr["e_shoff"]) + sec.shndx * 64 + 8  # sh_flags
    data[at : at + 8] = (sec.flags & ~S.SHF_ALLOC).to_bytes(8, "little")
    path = tmp_path / "prof-le"
    path.write_bytes(data)
    refused = invoke("scan", path)
    assert_one_line(refused, 2, "error", f"{path}: __mcount_loc at {sec.addr:#x} is in no allocated section")


def test_an_ool_count_word_in_no_allocated_section_is_named(tmp_path: Path) -> None:
    image = Image.load(require_kernel("7.2").vmlinux)
    syms = image.symbols
    assert syms is not None
    row = int(syms.find(OOL_TEXT_END + "_count")[0])
    sym = syms.table[row]
    symtab = image.section(".symtab")
    assert symtab is not None
    data = bytearray(image.data)
    at = symtab.offset + row * 24 + 8  # st_value
    data[at : at + 8] = (0x100).to_bytes(8, "little")
    assert int(sym["st_value"]) != 0x100
    path = tmp_path / "vmlinuz"
    path.write_bytes(data)
    refused = invoke("scan", path)
    assert_one_line(refused, 2, "error", f"{path}: {OOL_TEXT_END}_count at 0x100 is in no allocated section")


def test_modules_the_loader_refuses_are_read_as_not_loaded(tmp_path: Path) -> None:
    require_tool(QEMU)
    kernel = require_kernel("7.2")
    (tmp_path / "m").mkdir()
    no_stubs = unsigned_module("7.2", "fs/nls/nls_utf8.ko*", tmp_path / "m" / "nls_utf8.ko")
    no_module = unsigned_module("7.2", "fs/nls/mac-celtic.ko*", tmp_path / "m" / "mac-celtic.ko")
    unknown = unsigned_module("7.2", "fs/nls/mac-roman.ko*", tmp_path / "m" / "mac-roman.ko")
    rename_section(no_stubs, ".stubs")
    clear_alloc(no_module, ".gnu.linkonce.this_module")
    set_relocation_type(unknown, ".rela.text", 255)
    said = {
        no_stubs: "no .stubs section",
        no_module: "no allocated .gnu.linkonce.this_module",
        unknown: ".rela.text entry 0 is of type 255, which the ppc64 module loader does not apply",
    }
    for ko, reason in said.items():
        doc = json.loads(invoke("scan", "--format", "json", ko).stdout)["images"][0]
        assert reason in doc["summary"]["not_loaded"] and doc["summary"]["traceable"] == 0
        audit = json.loads(invoke("audit", "--format", "json", ko).stdout)
        assert [a["kind"] for a in audit["images"][0]["anomalies"] if a["severity"] == "error"] == ["module-refused"]
    script = module_load_script(["nls_utf8", "mac-celtic", "mac-roman"], aff_grep="[nls_utf8]")
    initramfs = make_initramfs(tmp_path / "i.cpio", kernel.busybox, list(said), script)
    booted = boot(kernel.vmlinux, STANDARD_APPEND, initramfs)
    assert booted.done and not booted.panicked, booted.console[-3000:]
    assert booted.insmod == {"nls_utf8": 8, "mac-celtic": 8, "mac-roman": 8}, booted.console[-3000:]  # ENOEXEC
    assert "nls_utf8: doesn't contain .stubs." in booted.console
    assert "mac_celtic: .gnu.linkonce.this_module must occupy memory during process execution" in booted.console
    assert "mac_roman: Unknown ADD relocation: 255" in booted.console
