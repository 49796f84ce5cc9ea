"""A module's record is an ``R_PPC64_ADDR64``: the loader stores S + A, the site's address, in the
record's slot. Other relocation types in a record table (made by a tool that edits records, never
by a kernel build) are what the loader makes of them, as qemu shows here:

* ``R_PPC64_NONE``: ppc64's ``apply_relocate_add()`` has no case for it ("Unknown ADD relocation:
  0", -ENOEXEC, arch/powerpc/kernel/module_64.c in 6.1 and 7.2 alike), so insmod fails and none of
  the module's functions is traced. scan said nothing of it.
* any other type leaves something in the slot that names no site (REL64 a distance, ADDR32 half an
  address): scan cannot say where the record points, and refuses the file in one line."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
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
from conftest import FIXTURES, invoke

from rewriter.elf import structs as S
from rewriter.elf.image import Image
from rewriter.records import rel_records

ENOEXEC = 8


def _module(name: str, out: Path) -> Path:
    return unsigned_module(name, "fs/nls/nls_utf8.ko*", out)


def _set_record_type(path: Path, entry: int, rtype: int) -> None:
    """Give entry ``entry`` of the module's (one) record relocation table the type ``rtype``,
    keeping its symbol and addend."""
    image = Image.load(path)
    ((table,), _) = rel_records(image)
    assert table.shndx is not None
    rsec = image.sections[table.shndx]
    rows = image.relocations(rsec)
    info = (int(rows["r_info"][entry]) & ~0xFFFF_FFFF) | rtype
    data = bytearray(path.read_bytes())
    at = rsec.offset + entry * S.rela_dtype("<").itemsize + 8
    data[at : at + 8] = info.to_bytes(8, "little")
    path.write_bytes(data)


def _record_types(path: Path) -> np.ndarray:
    image = Image.load(path)
    ((table,), _) = rel_records(image)
    assert table.shndx is not None
    types: np.ndarray = S.r_type(image.relocations(image.sections[table.shndx])["r_info"])
    return types


@pytest.mark.parametrize("name", ["6.1", "6.12", "7.2"])
def test_a_record_relocation_of_type_none_is_a_module_the_loader_refuses(name: str, tmp_path: Path) -> None:
    require_tool(QEMU)
    ko = _module(name, tmp_path / "nls_utf8.ko")
    assert set(_record_types(ko).tolist()) == {S.R_PPC64_ADDR64}
    before = json.loads(invoke("scan", "--format", "json", ko).stdout)["images"][0]
    assert before["summary"]["not_loaded"] is None and before["summary"]["traceable"] > 0
    _set_record_type(ko, 0, S.R_PPC64_NONE)

    not_loaded = _refused(name, ko, tmp_path, "nls_utf8: Unknown ADD relocation: 0")
    assert "R_PPC64_NONE" in not_loaded and "entry 0" in not_loaded
    assert "NOT LOADED: relocation section" in invoke("scan", ko).stdout


def _refused(name: str, ko: Path, tmp_path: Path, said: str) -> str:
    """Check that scan and audit call the module refused, and that kernel ``name``'s loader
    refuses it under qemu saying ``said``; scan's ``not_loaded``."""
    doc = json.loads(invoke("scan", "--format", "json", ko).stdout)["images"][0]
    assert doc["summary"]["not_loaded"] and doc["summary"]["traceable"] == 0
    audit = json.loads(invoke("audit", "--format", "json", ko).stdout)
    assert [a["kind"] for a in audit["images"][0]["anomalies"] if a["severity"] == "error"] == ["module-refused"]
    kernel = require_kernel(name)
    script = module_load_script(["nls_utf8"], aff_grep="[nls_utf8]")
    booted = boot(kernel.vmlinux, STANDARD_APPEND, make_initramfs(tmp_path / "i.cpio", kernel.busybox, [ko], script))
    assert booted.done and not booted.panicked, booted.console[-3000:]
    assert booted.insmod == {"nls_utf8": ENOEXEC}, booted.console[-3000:]
    assert said in booted.console
    assert not [line for line in booted.available_filter_functions or [] if line.endswith("[nls_utf8]")]
    not_loaded: str = doc["summary"]["not_loaded"]
    return not_loaded


def test_a_record_relocation_of_another_type_is_refused_in_one_line(tmp_path: Path) -> None:
    ko = _module("6.12", tmp_path / "nls_utf8.ko")
    _set_record_type(ko, 1, 44)  # R_PPC64_REL64: the slot would hold S + A - P
    out = tmp_path / "out.json"
    done = invoke("scan", "--format", "json", "-o", out, ko)
    assert done.exit_code == 2 and not out.exists()
    (line,) = done.output.strip().splitlines()
    assert str(ko) in line and "__patchable_function_entries entry 1 is of type 44, not R_PPC64_ADDR64" in line
    copy = tmp_path / "copy.ko"
    shutil.copyfile(ko, copy)
    done = invoke("nop", copy, "-o", tmp_path / "nopped.ko", "--drop-records")
    assert done.exit_code == 2 and not (tmp_path / "nopped.ko").exists()


_SHDR_FIELDS = {
    "sh_name": (0, 4),
    "sh_type": (4, 4),
    "sh_flags": (8, 8),
    "sh_info": (44, 4),
}  # Elf64_Shdr: offset, size


def _header_field(path: Path, section: str, field: str, value: int | None = None) -> int:
    """One field of section ``section``'s header (little-endian), set to ``value`` when given;
    the field as it was."""
    image = Image.load(path)
    sec = image.section(section)
    assert sec is not None
    data = bytearray(path.read_bytes())
    at, size = _SHDR_FIELDS[field]
    start = int.from_bytes(data[0x28:0x30], "little") + sec.shndx * 64 + at  # e_shoff
    old = int.from_bytes(data[start : start + size], "little")
    if value is not None:
        data[start : start + size] = value.to_bytes(size, "little")
        path.write_bytes(data)
    return old


def _records(path: Path) -> int:
    doc = json.loads(invoke("scan", "--format", "json", path).stdout)["images"][0]
    count: int = doc["records"]["count"]
    return count


@pytest.mark.parametrize("name", ["6.1", "6.12"])
def test_a_record_table_is_the_one_that_fills_a_record_section_whatever_its_name(name: str, tmp_path: Path) -> None:
    """The loader applies a RELA table to the section its sh_info names and reads the records from
    the allocated record section: a `.rela__mcount_loc` whose sh_info names no section fills no
    record (it was read as one), and a record table under another name fills them all (it was
    not read)."""
    ko = _module(name, tmp_path / "nls_utf8.ko")
    table = ".rela__mcount_loc" if name == "6.1" else ".rela__patchable_function_entries"
    records = _records(ko)
    assert records == 3
    renamed, unaimed, unallocated = (tmp_path / f"{n}.ko" for n in ("renamed", "unaimed", "unallocated"))
    for path in (renamed, unaimed, unallocated):
        path.write_bytes(ko.read_bytes())
    _header_field(renamed, table, "sh_name", _header_field(ko, ".rela.text", "sh_name"))
    _header_field(unaimed, table, "sh_info", 0)
    flags = _header_field(ko, table.removeprefix(".rela"), "sh_flags")
    _header_field(unallocated, table.removeprefix(".rela"), "sh_flags", flags & ~0x2)  # SHF_ALLOC
    assert (_records(renamed), _records(unaimed), _records(unallocated)) == (3, 0, 0)


def test_an_object_whose_record_table_links_no_symbol_table_is_refused(tmp_path: Path) -> None:
    """A module's was refused in one line; an object's read as 'generation none: 0 sites', and
    audit called it mprofile."""
    obj = tmp_path / "prof-le.o"
    shutil.copyfile(FIXTURES / "bin" / "prof-le.o", obj)
    _header_field(obj, ".symtab", "sh_type", 0)
    for command in ("scan", "audit"):
        done = invoke(command, obj)
        assert done.exit_code == 2
        (line,) = done.output.strip().splitlines()
        assert str(obj) in line and "relocation section .rela__mcount_loc: its sh_link names" in line
        assert line.endswith("(.symtab), not a symbol table")


@pytest.mark.parametrize("name", ["6.12", "7.2"])
def test_a_rel_record_table_is_a_module_the_loader_refuses(name: str, tmp_path: Path) -> None:
    """ppc64 modules are RELA only: an SHT_REL table aimed at an allocated section fails the load
    ("REL relocation unsupported", insmod ENOEXEC). scan read the module as loaded, its records
    gone (the table read as no record table)."""
    require_tool(QEMU)
    ko = _module(name, tmp_path / "nls_utf8.ko")
    _header_field(ko, ".rela__patchable_function_entries", "sh_type", 9)  # SHT_REL
    assert "is SHT_REL" in _refused(name, ko, tmp_path, "module nls_utf8: REL relocation unsupported")
