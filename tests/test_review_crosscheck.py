"""Findings of the 2026-12-05 independent cross-check of scan against the kernel's rules.

Init stops at the first record that fails: ftrace_update_code() checks ``ftrace_disabled`` before
each record (kernel/trace/ftrace.c), which ftrace_bug() sets, so every site after it in the sorted
order keeps its file words; they were said to be disabled.

An ool place recorded twice takes two stubs. ftrace_process_locs() makes a record of every table entry
(it sorts them, and removes no duplicate), and ool's ftrace_init_nop() passes the second record of
a place (it checks the entry nop, which init leaves as it is), so ftrace_init_ool_stub() gives it
the area's next stub: ``ool_stub += (*ool_stub_index)++`` (arch/powerpc/kernel/trace/ftrace.c,
7.2), and past the area's count ``WARN_ON(*ool_stub_index > ool_stub_count)`` fails it: ftrace
bug, ftrace off. mcountrw counted one stub per site."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
from boot import require_kernel
from conftest import FIXTURES, invoke

from rewriter.elf import structs as S
from rewriter.elf.image import Image
from rewriter.records import rel_records
from rewriter.stubs import OOL_INITTEXT


def _scan(path: Path) -> dict:
    done = invoke("scan", "--format", "json", path)
    assert done.exit_code == 0, done.output
    image: dict = json.loads(done.output)["images"][0]
    return image


def _set_record(path: Path, slot: int, value: int) -> None:
    """Make vmlinux table slot ``slot`` record ``value``: its file word and the addend of the
    R_PPC64_RELATIVE that relocate() stores over it at boot."""
    image = Image.load(path)
    start = int(image.symbols.table["st_value"][image.symbols.find("__start_mcount_loc")[0]])  # type: ignore[union-attr]
    addr = start + 8 * slot
    rela = image.section(".rela.dyn")
    assert rela is not None
    rows = image.relocations(rela)
    (row,) = np.flatnonzero(rows["r_offset"] == addr)
    data = bytearray(path.read_bytes())
    data[image.offset_of(addr) : image.offset_of(addr) + 8] = value.to_bytes(8, "little")
    at = rela.offset + int(row) * S.rela_dtype("<").itemsize + 16
    data[at : at + 8] = value.to_bytes(8, "little")
    path.write_bytes(data)


def test_an_init_place_recorded_twice_takes_a_stub_past_the_inittext_areas_count(tmp_path: Path) -> None:
    """7.2 has exactly as many init stubs as init records (1,759): a second record of one init
    place needs a 1,760th, and the kernel turns ftrace off. mcountrw said the stubs covered every
    record and 42,387 sites were traceable."""
    vmlinux = tmp_path / "vmlinux"
    shutil.copyfile(require_kernel("7.2").vmlinux, vmlinux)
    before = _scan(vmlinux)
    init = next(s for s in before["sites"] if s["stub"] == OOL_INITTEXT)
    area = next(a for a in before["stubs"] if a["name"] == OOL_INITTEXT)
    assert area["used"] == area["count"] == 1759 and area["covers"]
    _set_record(vmlinux, 100, init["record"])  # slot 100 recorded a .text place
    after = _scan(vmlinux)
    area = next(a for a in after["stubs"] if a["name"] == OOL_INITTEXT)
    assert (area["used"], area["need"], area["covers"]) == (1759, 1, False)
    assert after["summary"]["ftrace_off"] and "1 record without an ool stub" in after["summary"]["ftrace_off"]
    assert not any(s["traceable"] for s in after["sites"])


def test_a_modules_place_recorded_twice_takes_two_of_its_stubs(tmp_path: Path) -> None:
    """The loader carves one stub per __patchable_function_entries entry and init takes one per
    record: two records of one place use two. `.stubs used` counted the sites with a stub."""
    obj = tmp_path / "ool.o"
    shutil.copyfile(FIXTURES / "bin" / "ool-le.o", obj)
    image = Image.load(obj)
    ((table,), _) = rel_records(image)
    assert table.shndx is not None
    rela = image.sections[table.shndx]
    rows = image.relocations(rela)
    first = rows[0].tobytes()
    data = bytearray(obj.read_bytes())
    data[rela.offset + len(first) : rela.offset + 2 * len(first)] = first  # entry 1 records entry 0's place
    obj.write_bytes(data)
    scanned = _scan(obj)
    # an object's sites are the places its records name: five now, one of them twice
    assert len(scanned["sites"]) == 5 and all(s["record"] is not None for s in scanned["sites"])
    (stubs,) = scanned["stubs"]
    assert (stubs["name"], stubs["count"], stubs["used"]) == (".stubs", 6, 6)


def test_init_stops_at_the_second_record_of_a_place_and_later_sites_keep_their_nops(tmp_path: Path) -> None:
    """6.12: the second record of a place finds the `mflr r0` the first wrote, and init stops
    there. Every site recorded past that place stays `nop; nop` after boot."""
    vmlinux = tmp_path / "vmlinux"
    shutil.copyfile(require_kernel("6.12").vmlinux, vmlinux)
    before = _scan(vmlinux)
    assert {s["boot_state"] for s in before["sites"]} == {"disabled"}
    twice = sorted(s["record"] for s in before["sites"])[50]
    _set_record(vmlinux, 100, twice)  # the 101st record now names the 51st place again
    after = _scan(vmlinux)
    assert after["summary"]["ftrace_off"] and "recorded more than once" in after["summary"]["ftrace_off"]
    booted = {s["record"]: s["boot_state"] for s in after["sites"] if s["record"] is not None}
    assert booted and all(state == ("disabled" if record <= twice else "nopped") for record, state in booted.items())
    assert sum(1 for state in booted.values() if state == "disabled") == 51
