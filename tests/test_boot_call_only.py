"""A kernel before 6.6 checks only the call of a recorded mprofile site in its vmlinux: the
generic ftrace_init_nop() calls ftrace_make_nop(), which swaps the `bl _mcount` at rec->ip for a
nop and never reads the `mflr r0` before it (generations.CALL_ONLY_BOOT). So a 6.1 site whose
mflr another tool nopped, `nop; bl _mcount` (the seed thread's naive nopping), boots as
`nop; nop`; scan said init refuses it and turns ftrace off. qemu's saved memory shows what scan
says now, for those sites and every other .text site."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from boot import LINEAR_MAP, MemRange, boot_and_dump, make_initramfs, ready_script
from conftest import invoke
from test_boot_memory import APPEND, Memory, compare_sites, load_kernel

from rewriter import ppc
from rewriter.elf.image import Image
from rewriter.sites import Site, scan
from rewriter.states import SiteState

pytestmark = [pytest.mark.boot, pytest.mark.corpus]

NAMES = ("do_one_initcall", "vfs_read", "schedule_timeout")


def test_a_61_site_with_its_mflr_nopped_boots_nopped_not_as_an_ftrace_bug(tmp_path: Path) -> None:
    files, image, text, _ = load_kernel("6.1")
    vmlinux = tmp_path / "vmlinux"
    shutil.copyfile(files.vmlinux, vmlinux)
    data = bytearray(vmlinux.read_bytes())
    chosen = [s for s in scan(image).sites if s.function in NAMES]
    assert len(chosen) == len(NAMES)
    for site in chosen:
        assert site.addr is not None
        at = image.offset_of(site.addr - ppc.INSN_SIZE)  # slot A, the mflr r0
        data[at : at + 4] = ppc.NOP.to_bytes(4, "little")
    vmlinux.write_bytes(data)

    edited = scan(Image.load(vmlinux))
    mine = [s for s in edited.sites if s.function in NAMES]
    assert {(s.state, s.boot_state) for s in mine} == {(SiteState.BROKEN, SiteState.NOPPED)}
    doc = invoke("scan", "--format", "json", vmlinux)
    assert doc.exit_code == 0 and '"ftrace_off":null' in doc.stdout.replace(" ", "")
    audit = invoke("audit", "--format", "json", "--fail-on", "never", vmlinux).stdout
    assert audit.count('"kind":"broken"') == len(NAMES) and '"boot-refused"' not in audit

    initrd = make_initramfs(tmp_path / "initrd.cpio", files.busybox, [], ready_script([]))
    whole = MemRange(text.addr - LINEAR_MAP, text.size, True)
    dump = boot_and_dump(vmlinux, APPEND, initrd, lambda _console: [whole], timeout=90)
    assert dump.ready, dump.boot.console[-3000:]
    assert "ftrace bug" not in dump.boot.console.lower() and "ftrace failed" not in dump.boot.console
    memory = Memory(text.addr, dump.memory[whole])

    def addr(site: Site) -> int:
        assert site.addr is not None
        return site.addr

    in_text = [s for s in edited.sites if s.section == ".text" and s.addr is not None]
    compared, bad = compare_sites(in_text, addr, memory.word, Image.load(vmlinux))
    assert compared == len(in_text) > 30_000
    assert not bad, f"{len(bad)} of {compared} .text sites:\n" + "\n".join(bad[:30])
    for site in mine:
        assert (memory.word(addr(site) - 4), memory.word(addr(site))) == (ppc.NOP, ppc.NOP)
