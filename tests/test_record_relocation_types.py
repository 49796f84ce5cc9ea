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
from boot import QEMU, STANDARD_APPEND, boot, make_initramfs, module_load_script, require_kernel, require_tool
from conftest import invoke

from rewriter.elf import structs as S
from rewriter.elf.compress import Compression, decompress
from rewriter.elf.image import Image
from rewriter.elf.signature import parse_trailer
from rewriter.records import rel_records

ENOEXEC = 8


def _module(name: str, out: Path) -> Path:
    """The kernel ``name``'s nls_utf8 module, uncompressed and without its signature (an edited
    module's signature no longer matches, and the loader rejects it for that first), at ``out``."""
    src = next(require_kernel(name).modules_dir.glob("fs/nls/nls_utf8.ko*"))
    data = src.read_bytes()
    data = decompress(src, data, Compression.XZ) if src.suffix == ".xz" else data
    trailer = parse_trailer(data)
    out.write_bytes(data if trailer is None else data[: trailer.elf_end])
    return out


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

    doc = json.loads(invoke("scan", "--format", "json", ko).stdout)["images"][0]
    assert "R_PPC64_NONE" in doc["summary"]["not_loaded"] and "entry 0" in doc["summary"]["not_loaded"]
    assert doc["summary"]["traceable"] == 0
    text = invoke("scan", ko).stdout
    assert "NOT LOADED: relocation section" in text
    audit = json.loads(invoke("audit", "--format", "json", ko).stdout)
    assert [a["kind"] for a in audit["images"][0]["anomalies"] if a["severity"] == "error"] == ["module-refused"]

    kernel = require_kernel(name)
    script = module_load_script(["nls_utf8"], aff_grep="[nls_utf8]")
    booted = boot(kernel.vmlinux, STANDARD_APPEND, make_initramfs(tmp_path / "i.cpio", kernel.busybox, [ko], script))
    assert booted.done and not booted.panicked, booted.console[-3000:]
    assert booted.insmod == {"nls_utf8": ENOEXEC}, booted.console[-3000:]
    assert "nls_utf8: Unknown ADD relocation: 0" in booted.console
    assert not [line for line in booted.available_filter_functions or [] if line.endswith("[nls_utf8]")]


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
