"""Small defects helper S found and left (outside its files): a file named on both sides of a diff
printed its error twice; scan's init note said "1 of the traceable sites are"; a module's ftrace bug "at boot"."""

from __future__ import annotations

import json
from pathlib import Path

from boot import require_kernel
from conftest import invoke
from elftools.elf.elffile import ELFFile


def test_diff_of_one_bad_file_on_both_sides_says_its_error_once(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    done = invoke("diff", empty, empty)
    assert done.exit_code == 2, done.output
    assert done.stderr.splitlines() == [f"mcountrw: error: {empty}: empty file"], done.stderr


def test_scan_init_note_counts_one_site_in_the_singular() -> None:
    module = require_kernel("6.12").modules_dir / "fs/nls/nls_utf8.ko.xz"  # init_nls_utf8 alone in .init.text
    done = invoke("scan", module)
    assert done.exit_code == 0, done.output
    notes = [line for line in done.stdout.splitlines() if line.startswith("  init text: ")]
    assert len(notes) == 1 and notes[0].startswith("  init text: 1 of the traceable sites is in init sections"), notes


def test_a_module_whose_words_init_refuses_says_the_ftrace_bug_comes_when_it_loads(tmp_path: Path) -> None:
    """ftrace_module_init() checks a module's sites as it loads, not at boot: its ftrace-off line
    said "ftrace bug at boot", as a vmlinux's does."""
    module = tmp_path / "nls_utf8.ko"
    module.write_bytes((require_kernel("6.1").modules_dir / "fs/nls/nls_utf8.ko").read_bytes())
    site = json.loads(invoke("scan", "--format", "json", module).stdout)["images"][0]["sites"][0]
    with module.open("rb") as f:
        at = ELFFile(f).get_section_by_name(site["section"])["sh_offset"] + site["offset"]  # a section offset in ET_REL
    data = bytearray(module.read_bytes())
    assert data[at + 3] == 0x48  # the bl _mcount (little-endian: opcode in the last byte)
    data[at : at + 4] = (0x38600000).to_bytes(4, "little")  # li r3,0 for the bl
    module.write_bytes(bytes(data))
    summary = json.loads(invoke("scan", "--format", "json", module).stdout)["images"][0]["summary"]
    assert summary["ftrace_off"].endswith(": ftrace bug when it loads (ftrace off from then on)"), summary
