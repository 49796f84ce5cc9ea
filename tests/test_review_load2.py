"""What the kernel makes of odd modules and vmlinux images: open items of the 2026-12-05 fuzz pass.

A module the loader refuses (here one without ``.stubs``: module_frob_arch_sections() fails the
load, tests/test_review_fuzz.py shows it under qemu) never has its ``.stubs`` carved: scan said
its ool records were served by stubs all the same."""

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
from conftest import invoke
from mutate import clear_alloc, rename_section, set_relocation_type

from rewriter.elf.image import Image
from rewriter.generations import OOL_INITTEXT, OOL_TEXT, OOL_TEXT_END


def test_a_refused_ool_module_has_no_stub_serving_its_records(tmp_path: Path) -> None:
    ko = unsigned_module("7.2", "fs/nls/nls_utf8.ko*", tmp_path / "nls_utf8.ko")
    loaded = json.loads(invoke("scan", "--format", "json", ko).stdout)["images"][0]
    assert loaded["stubs"][0]["used"] == loaded["records"]["count"] > 0
    rename_section(ko, ".stubs")
    scanned = invoke("scan", ko)
    doc = json.loads(invoke("scan", "--format", "json", ko).stdout)["images"][0]
    assert "no .stubs section" in doc["summary"]["not_loaded"]
    assert doc["stubs"][0]["used"] == 0 and all(s["stub"] is None for s in doc["sites"])
    assert "NOT LOADED" in scanned.stdout and "serve 0 of" in scanned.stdout
    assert ".stubs, never carved (the loader refuses the module)" in scanned.stdout
    assert (
        ".stubs, carved out at load"
        in invoke("scan", unsigned_module("7.2", "fs/nls/nls_utf8.ko*", tmp_path / "x.ko")).stdout
    )


def _not_loaded(ko: Path) -> str | None:
    doc = json.loads(invoke("scan", "--format", "json", ko).stdout)["images"][0]
    reason: str | None = doc["summary"]["not_loaded"]
    return reason


@pytest.mark.parametrize("kernel", ["6.1", "7.2"])
def test_a_pcrel_relocation_is_refused_by_a_kernel_built_with_a_toc(tmp_path: Path, kernel: str) -> None:
    """R_PPC64_REL24_NOTOC (116): module_64.c's apply_relocate_add() has no case for it before 6.4,
    and from 6.4 only under CONFIG_PPC_KERNEL_PCREL (Debian's 6.12 and 7.2 are built without it;
    a module for a PCREL build has .mygot). Both corpus kernels refuse it under qemu."""
    require_tool(QEMU)
    files = require_kernel(kernel)
    (tmp_path / "m").mkdir()
    ko = unsigned_module(kernel, "fs/nls/mac-roman.ko*", tmp_path / "m" / "mac-roman.ko")
    assert _not_loaded(ko) is None
    set_relocation_type(ko, ".rela.init.text", 116)
    reason = _not_loaded(ko)
    assert reason is not None and ".rela.init.text entry 0 is of type 116" in reason
    assert ("before 6.4" if kernel == "6.1" else "without CONFIG_PPC_KERNEL_PCREL") in reason
    script = module_load_script(["mac-roman"])
    booted = boot(files.vmlinux, STANDARD_APPEND, make_initramfs(tmp_path / "i.cpio", files.busybox, [ko], script))
    assert booted.done and not booted.panicked, booted.console[-3000:]
    assert booted.insmod == {"mac-roman": 8}, booted.console[-3000:]  # ENOEXEC
    assert "mac_roman: Unknown ADD relocation: 116" in booted.console


def test_a_toc_relocation_is_refused_in_a_module_for_a_pcrel_kernel(tmp_path: Path) -> None:
    """A module with .mygot (which a CONFIG_PPC_KERNEL_PCREL build gives every module) is for a
    loader without the TOC types: its TOC16_HA rows are refused. A PCREL type is not (a 7.2
    module; no corpus kernel is a PCREL build, so no qemu here)."""
    ko = unsigned_module("7.2", "fs/nls/mac-roman.ko*", tmp_path / "mac-roman.ko")
    set_relocation_type(ko, ".rela.init.text", 116)
    data = bytearray(ko.read_bytes())
    at = data.index(b"\0.comment\0") + 1
    data[at : at + 8] = b".mygot\0t"
    ko.write_bytes(data)
    reason = _not_loaded(ko)
    assert (
        reason is not None
        and "of type 50" in reason
        and "CONFIG_PPC_KERNEL_PCREL kernel (the module has .mygot" in reason
    )
    assert "type 116" not in reason


def _renamed_symbol(image: Image, name: str, out: Path) -> Path:
    """``image`` with symbol ``name`` renamed in its string table (its last letter made ``X``):
    the kernel, linked with the name, is the same; only the symbol table no longer says it."""
    data = bytearray(image.data)
    at = data.index(b"\0" + name.encode() + b"\0") + len(name)
    data[at] = ord("X")
    out.write_bytes(data)
    return out


def test_an_ool_stub_area_the_symbol_table_does_not_name_leaves_its_stubs_unknown(tmp_path: Path) -> None:
    """A 7.2 vmlinux whose ``ftrace_ool_stub_text_end`` (or its ``_count`` word) is renamed: scan
    called its 8,119 sites traceable with no stub (or, the count renamed, every one of them without
    a stub, ftrace off). The kernel is the same image, and under qemu it boots with ftrace on: the
    scan cannot know those stubs, and says so."""
    require_tool(QEMU)
    files = require_kernel("7.2")
    image = Image.load(files.vmlinux)
    whole = json.loads(invoke("scan", "--format", "json", files.vmlinux).stdout)["images"][0]["summary"]
    for name in (OOL_TEXT_END, OOL_TEXT_END + "_count"):
        path = _renamed_symbol(image, name, tmp_path / name)
        doc = json.loads(invoke("scan", "--format", "json", path).stdout)["images"][0]
        summary, areas = doc["summary"], [a["name"] for a in doc["stubs"]]
        unknown = summary["untraceable"]["stub-unknown"]
        assert summary["ftrace_off"] is None and areas == [OOL_TEXT, OOL_INITTEXT], name
        assert unknown == 8119 and summary["traceable"] == whole["traceable"] - unknown, name
        assert sum(s["traceable"] for s in doc["sites"]) == summary["traceable"], name  # each site says it too
        assert "the stubs of 8121 recorded sites are unknown" in invoke("scan", path).stdout
        audit = invoke("audit", path).stdout
        assert f"ool stub areas not found (no {name} symbol): whether 8121 records get a stub" in audit
    script = module_load_script([])
    booted = boot(path, STANDARD_APPEND, make_initramfs(tmp_path / "i.cpio", files.busybox, [], script))
    assert booted.done and not booted.ftrace_bug and booted.tracer_rc == 0, booted.console[-3000:]


def _with_section_renamed(ko: Path, section: str, name: str) -> Path:
    """Give allocated ``section`` the name ``name``, written over the ``.note.GNU-stack`` string
    (``name`` no longer than it; the two empty notes take the name too, unallocated)."""
    image = Image.load(ko)
    sec, shstr = image.section(section), image.sections[int(image.ehdr["e_shstrndx"])]
    assert sec is not None and len(name) <= len(".note.GNU-stack")
    data = bytearray(ko.read_bytes())
    at = data.index(b"\0.note.GNU-stack\0") + 1
    data[at : at + len(name) + 1] = name.encode() + b"\0"
    header = int(image.ehdr["e_shoff"]) + sec.shndx * 64  # sh_name
    data[header : header + 4] = (at - shstr.offset).to_bytes(4, "little")
    ko.write_bytes(data)
    return ko


def test_a_module_with_both_record_sections_has_the_one_its_kernel_reads_read(tmp_path: Path) -> None:
    """A 7.2 module (vermagic ``patchable-function-entry``) given an ``__mcount_loc`` too (its
    ``.exit.data``, whose one ADDR64 row names the exit function): find_module_sections() reads
    FTRACE_CALLSITE_SECTION alone, ``__patchable_function_entries`` there. scan read both, took the
    ``__mcount_loc`` for mprofile, and called all four records unmatched, ftrace off; qemu loads the
    module with ftrace on and its functions listed."""
    require_tool(QEMU)
    files = require_kernel("7.2")
    (tmp_path / "m").mkdir()
    ko = unsigned_module("7.2", "fs/nls/mac-roman.ko*", tmp_path / "m" / "mac-roman.ko")
    before = json.loads(invoke("scan", "--format", "json", ko).stdout)["images"][0]
    _with_section_renamed(ko, ".exit.data", "__mcount_loc")
    doc = json.loads(invoke("scan", "--format", "json", ko).stdout)["images"][0]
    assert doc["generation"] == before["generation"] == "ool"
    assert doc["records"]["count"] == before["records"]["count"] and doc["records"]["unread"] == [".exit.text+0x8"]
    assert doc["summary"]["ftrace_off"] is None and doc["summary"]["traceable"] == before["summary"]["traceable"]
    audit = json.loads(invoke("audit", "--format", "json", ko).stdout)["images"][0]["anomalies"]
    (note,) = [a["message"] for a in audit if a["kind"] == "unread-records"]
    assert "1 entry in __mcount_loc, which the module's kernel never reads" in note
    script = module_load_script(["mac-roman"], aff_grep="[mac_roman]")
    booted = boot(files.vmlinux, STANDARD_APPEND, make_initramfs(tmp_path / "i.cpio", files.busybox, [ko], script))
    assert booted.done and booted.insmod == {"mac-roman": 0} and not booted.ftrace_bug, booted.console[-3000:]
    assert booted.available_filter_functions, booted.console[-3000:]


@pytest.mark.parametrize("kernel", ["6.1", "6.12", "7.2"])
def test_sites_in_a_module_section_without_shf_alloc_are_never_traced(tmp_path: Path, kernel: str) -> None:
    """A module whose ``.text`` lost SHF_ALLOC loads (the loader places only allocated sections,
    and skips ``.rela.text``), but its ``.text`` records name the temporary copy of the file.
    6.1 (mprofile): the unrelocated ``bl`` there has no module stub as its target, ftrace_make_nop()
    fails, ftrace bug, ftrace off. 6.12 and 7.2: the records are never enabled, and only the init
    function is listed. scan called all three sites traceable."""
    require_tool(QEMU)
    files = require_kernel(kernel)
    (tmp_path / "m").mkdir()
    ko = unsigned_module(kernel, "fs/nls/mac-roman.ko*", tmp_path / "m" / "mac-roman.ko")
    clear_alloc(ko, ".text")
    summary = json.loads(invoke("scan", "--format", "json", ko).stdout)["images"][0]["summary"]
    assert summary["not_loaded"] is None and summary["sites"] == 3
    if kernel == "6.1":
        assert summary["ftrace_off"] is not None and summary["untraceable"]["refused"] == 2
        assert summary["traceable"] == 0
    else:
        assert summary["ftrace_off"] is None and summary["untraceable"]["unallocated"] == 2
        assert summary["traceable"] == 1
    script = module_load_script(["mac-roman"], aff_grep="[mac_roman]")
    booted = boot(files.vmlinux, STANDARD_APPEND, make_initramfs(tmp_path / "i.cpio", files.busybox, [ko], script))
    assert booted.done and booted.insmod == {"mac-roman": 0}, booted.console[-3000:]
    if kernel == "6.1":
        assert booted.ftrace_bug and "Failed to get trampoline target" in booted.console, booted.console[-3000:]
    else:
        assert not booted.ftrace_bug and booted.available_filter_functions == ["init_nls_macroman [mac_roman]"]
