"""The running kernel rules on where init stops (tests/test_review_crosscheck.py gives the scan's
side): a vmlinux whose 101st record names the 51st place again boots with an ftrace bug at that
second record (6.1: it finds the `nop` the first wrote where it checks for `bl _mcount`; 6.12: the
`mflr r0` where it checks for a `nop`), and its saved memory shows every .text site init reached
holding ``mflr r0; nop`` and every site after it its file words (6.1 ``mflr r0; bl _mcount``,
6.12 ``nop; nop``), as scan's ``boot_state`` says."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from boot import LINEAR_MAP, MemRange, boot_and_dump, make_initramfs, ready_script
from test_boot_memory import APPEND, Memory, compare_sites, load_kernel
from test_review_crosscheck import _set_record

from rewriter.elf.image import Image
from rewriter.sites import Site, scan
from rewriter.states import SiteState

pytestmark = [pytest.mark.boot, pytest.mark.corpus]


@pytest.mark.parametrize(("name", "after"), [("6.1", SiteState.ENABLED), ("6.12", SiteState.NOPPED)])
def test_the_sites_after_the_record_init_stops_at_keep_their_file_words(
    name: str, after: SiteState, tmp_path: Path
) -> None:
    files, image, text, _ = load_kernel(name)
    vmlinux = tmp_path / "vmlinux"
    shutil.copyfile(files.vmlinux, vmlinux)
    twice = sorted(s.record for s in scan(image).sites if s.record is not None)[50]
    _set_record(vmlinux, 100, twice)
    broken = scan(Image.load(vmlinux))
    in_text = [s for s in broken.sites if s.section == ".text" and s.addr is not None]
    states = {s.boot_state for s in in_text if s.recorded}
    assert states == {SiteState.DISABLED, after}  # init stopped part way through .text

    initrd = make_initramfs(tmp_path / "initrd.cpio", files.busybox, [], ready_script([]))
    whole = MemRange(text.addr - LINEAR_MAP, text.size, True)
    dump = boot_and_dump(vmlinux, APPEND, initrd, lambda _console: [whole], timeout=90)
    assert dump.ready, dump.boot.console[-3000:]
    assert "ftrace failed to modify" in dump.boot.console or "ftrace bug" in dump.boot.console.lower()
    memory = Memory(text.addr, dump.memory[whole])

    def addr(site: Site) -> int:
        assert site.addr is not None
        return site.addr

    compared, bad = compare_sites(in_text, addr, memory.word, broken_image := Image.load(vmlinux))
    assert broken_image is not None and compared == len(in_text) > 30_000
    assert not bad, f"{len(bad)} of {compared} .text sites:\n" + "\n".join(bad[:30])
