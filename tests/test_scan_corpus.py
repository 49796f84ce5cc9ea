"""`scan` on the real Debian kernels of all three generations (6.1 mprofile, 6.12 patchable, 7.2
ool): every site set-equal to the kernel's records through `record`, each record table read here
independently with pyelftools, never with rewriter code.

A vmlinux's table is ``__start_mcount_loc..__stop_mcount_loc``; each slot's run-time value is the
addend of its ``R_PPC64_RELATIVE`` in the first DT_RELASZ bytes of ``.rela.dyn`` (the kernel's
``relocate()`` stores ``addend + delta`` over the slot), not the file word. A module's records are
the relocations of its ``.rela__mcount_loc`` / ``.rela__patchable_function_entries``.
"""

from __future__ import annotations

import bisect
import io
import json
import lzma
import subprocess
import sys
from collections import Counter
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import NamedTuple

import pytest
from boot import KERNELS, counts, require_kernel
from conftest import unwrapped
from elftools.elf.elffile import ELFFile
from typer.testing import CliRunner

from rewriter.batch import expand, map_chunks, scan_one
from rewriter.cli import app
from rewriter.elf.image import Image
from rewriter.generations import Generation
from rewriter.report.scanfmt import generation_of, image_json
from rewriter.sites import Scan, scan
from rewriter.states import SiteState

pytestmark = pytest.mark.corpus

R_PPC64_RELATIVE = 22
NOP = 0x6000_0000
MFLR_R0 = 0x7C08_02A6
OOL_AREAS = ("ftrace_ool_stub_text", "ftrace_ool_stub_text_end", "ftrace_ool_stub_inittext")

EVERY = list(KERNELS)  # every corpus kernel; their counts are tests/boot.py's
# ftrace_call_adjust(): the kernel patches the record (mprofile, ool) or the word after it (patchable).
CALL_SLOT_MINUS_RECORD = {"mprofile": 0, "patchable": 4, "ool": 0}
BUILT = {"mprofile": SiteState.ENABLED, "patchable": SiteState.NOPPED, "ool": SiteState.DISABLED}


# -- independent readings (pyelftools) ------------------------------------------------------


class VmlinuxFacts(NamedTuple):
    records: list[int]  # run-time value of every table slot, in table order
    text: dict[str, tuple[int, bytes]]  # .text / .init.text: address and contents
    spans: list[tuple[int, int, str]]  # sized STT_FUNC (start, end, name), sorted
    starts: list[int]  # of spans
    reach: list[int]  # reach[i]: the largest end among spans[: i + 1]
    areas: dict[str, tuple[int, int, int]]  # ool stub area: address, size, count word
    func_starts: list[int]  # every STT_FUNC's address, sized or not, sorted: what kallsyms_lookup() finds
    weak_check: bool  # the kernel runs test_for_valid_rec() (its initcall is linked in)


@lru_cache(maxsize=len(KERNELS))
def vmlinux_facts(path: Path) -> VmlinuxFacts:
    with open(path, "rb") as fh:
        elf = ELFFile(fh)
        wanted = {"__start_mcount_loc", "__stop_mcount_loc", *OOL_AREAS, *(a + "_count" for a in OOL_AREAS)}
        syms: dict[str, tuple[int, int]] = {}
        spans = []
        func_starts = set()
        weak_check = False
        for sym in elf.get_section_by_name(".symtab").iter_symbols():
            if sym.name in wanted:
                syms[sym.name] = (sym["st_value"], sym["st_size"])
            weak_check |= sym.name == "ftrace_check_for_weak_functions"
            if sym["st_info"]["type"] == "STT_FUNC":
                func_starts.add(sym["st_value"])
                if sym["st_size"]:
                    spans.append((sym["st_value"], sym["st_value"] + sym["st_size"], sym.name))
        spans.sort()
        lo, hi = syms["__start_mcount_loc"][0], syms["__stop_mcount_loc"][0]
        raw = _read_va(elf, fh, lo, hi - lo)
        records = [int.from_bytes(raw[i : i + 8], "little") for i in range(0, len(raw), 8)]
        relasz = next(
            t["d_val"] for t in elf.get_section_by_name(".dynamic").iter_tags() if t.entry.d_tag == "DT_RELASZ"
        )
        for n, rel in enumerate(elf.get_section_by_name(".rela.dyn").iter_relocations()):
            if n * 24 >= relasz:
                break  # relocate() walks DT_RELASZ bytes: anything past it is never applied
            if rel["r_info_type"] == R_PPC64_RELATIVE and lo <= rel["r_offset"] < hi:
                records[(rel["r_offset"] - lo) // 8] = rel["r_addend"] % (1 << 64)  # Sxword
        text = {
            n: (elf.get_section_by_name(n)["sh_addr"], elf.get_section_by_name(n).data())
            for n in (".text", ".init.text")
        }
        areas = {
            a: (*syms[a], int.from_bytes(_read_va(elf, fh, syms[a + "_count"][0], 4), "little"))
            for a in OOL_AREAS
            if a in syms
        }
    reach, top = [], 0
    for _, end, _ in spans:
        top = max(top, end)
        reach.append(top)
    starts = [s for s, _, _ in spans]
    return VmlinuxFacts(records, text, spans, starts, reach, areas, sorted(func_starts), weak_check)


def _read_va(elf: ELFFile, fh: io.BufferedReader, addr: int, size: int) -> bytes:
    for seg in elf.iter_segments():
        if seg["p_vaddr"] <= addr < seg["p_vaddr"] + seg["p_filesz"]:
            fh.seek(seg["p_offset"] + addr - seg["p_vaddr"])
            return fh.read(size)
    raise AssertionError(f"{addr:#x} is in no loaded segment")


def word_at(facts: VmlinuxFacts, addr: int) -> int:
    for base, data in facts.text.values():
        if base <= addr < base + len(data):
            return int.from_bytes(data[addr - base : addr - base + 4], "little")
    raise AssertionError(f"{addr:#x} is in neither .text nor .init.text")


def in_sized_function(facts: VmlinuxFacts, addr: int) -> bool:
    """Some sized function covers ``addr``: one starting at or before it reaches past it."""
    i = bisect.bisect_right(facts.starts, addr) - 1
    return i >= 0 and facts.reach[i] > addr


def kernel_disables(facts: VmlinuxFacts, ip: int) -> bool:
    """test_for_valid_rec() (6.6+): the record's ip (the call slot) lies more than
    FTRACE_MCOUNT_MAX_OFFSET = 16 bytes past the function symbol kallsyms_lookup() names for it.
    tests/test_boot_traceable.py shows the booted kernels agree."""
    i = bisect.bisect_right(facts.func_starts, ip) - 1
    return facts.weak_check and (i < 0 or ip - facts.func_starts[i] > 16)


def covering_names(facts: VmlinuxFacts, addr: int) -> set[str]:
    """Names of the sized functions covering ``addr`` (aliases share a span)."""
    out = set()
    j = bisect.bisect_right(facts.starts, addr) - 1
    while j >= 0 and facts.reach[j] > addr:
        _, end, name = facts.spans[j]
        if end > addr:
            out.add(name)
        j -= 1
    return out


def module_records(path: Path) -> list[str]:
    """``section+0xoff`` of every relocation of the module's record section."""
    data = path.read_bytes()
    if path.name.endswith(".xz"):
        data = lzma.decompress(data)
    elf = ELFFile(io.BytesIO(data))
    out = []
    for name in (".rela__mcount_loc", ".rela__patchable_function_entries"):
        rsec = elf.get_section_by_name(name)
        if rsec is None:
            continue
        symtab = elf.get_section(rsec["sh_link"])
        targets: dict[int, tuple[str, int]] = {}  # a few symbols (mostly section symbols) serve all
        for rel in rsec.iter_relocations():
            target = targets.get(rel["r_info_sym"])
            if target is None:
                sym = symtab.get_symbol(rel["r_info_sym"])
                target = targets[rel["r_info_sym"]] = (elf.get_section(sym["st_shndx"]).name, sym["st_value"])
            out.append(f"{target[0]}+{target[1] + rel['r_addend']:#x}")
    return out


# -- vmlinux --------------------------------------------------------------------------------


@lru_cache(maxsize=len(KERNELS))
def _scan(path: Path) -> Scan:
    return scan(Image.load(path))


@pytest.mark.slow
@pytest.mark.parametrize("name", EVERY)
def test_vmlinux_sites_equal_its_records_through_record(name: str) -> None:
    kernel = require_kernel(name)
    facts = vmlinux_facts(kernel.vmlinux)
    result = _scan(kernel.vmlinux)
    generation = kernel.kernel.generation
    assert result.generation is Generation(generation) and generation_of(result) is Generation(generation)
    assert 0 not in facts.records and len(set(facts.records)) == len(facts.records) == counts(name).records
    assert sorted(s.record for s in result.sites) == sorted(facts.records)
    assert result.records.count == len(facts.records)
    assert not result.records.unmatched and not result.records.zeroed and not result.records.skipped
    # `address` stays the call slot: the word the kernel patches.
    assert {s.addr - s.record for s in result.sites} == {CALL_SLOT_MINUS_RECORD[generation]}
    assert {(s.state, s.boot_state) for s in result.sites} == {(BUILT[generation], SiteState.DISABLED)}


@pytest.mark.slow
@pytest.mark.parametrize("name", EVERY)
def test_vmlinux_words_and_traceability_agree_with_the_file(name: str) -> None:
    kernel = require_kernel(name)
    facts = vmlinux_facts(kernel.vmlinux)
    result = _scan(kernel.vmlinux)
    generation = kernel.kernel.generation
    for site in result.sites:
        words = (word_at(facts, site.record - 4), word_at(facts, site.record), word_at(facts, site.record + 4))
        if generation == "mprofile":
            assert words[0] == MFLR_R0 and words[1] >> 26 == 18 and words[1] & 3 == 1  # mflr r0; bl
        elif generation == "patchable":
            assert words[1:] == (NOP, NOP)
        else:
            assert words[1] == NOP
    weak = [s for s in result.sites if not in_sized_function(facts, s.record)]
    assert len(weak) == counts(name).weak_bodies
    # test_for_valid_rec() (FTRACE_MCOUNT_MAX_OFFSET) exists on ppc since 6.2, whatever the sites
    # (6.12-gcc12 has it with mprofile sites); it spares the weak bodies within 16 bytes of a symbol.
    untraceable = {s.record for s in result.sites if not s.traceable}
    disabled = {s.record for s in weak if kernel_disables(facts, s.record + CALL_SLOT_MINUS_RECORD[generation])}
    assert untraceable == disabled
    assert facts.weak_check == bool(disabled) == (name != "6.1")
    assert image_json(result, with_sites=False)["summary"]["traceable"] == len(result.sites) - len(untraceable)


@pytest.mark.slow
@pytest.mark.parametrize("name", EVERY)
def test_vmlinux_sites_name_their_functions_and_sections(name: str) -> None:
    """Every site in a sized FUNC is named after it (or an alias); the few in code no symbol
    covers (weak-function bodies, static functions whose symbols the build drops) are unnamed."""
    kernel = require_kernel(name)
    facts = vmlinux_facts(kernel.vmlinux)
    result = _scan(kernel.vmlinux)
    for site in result.sites:
        names = covering_names(facts, site.addr)
        assert site.function in names if site.function is not None else not names, (hex(site.addr), names)
    named = {s.function: s for s in result.sites}
    assert "do_one_initcall" in named and "vfs_read" in named
    sections = Counter(
        n for r in facts.records for n, (base, data) in facts.text.items() if base <= r < base + len(data)
    )
    assert Counter(s.section for s in result.sites) == sections
    assert sections == {".text": counts(name).text, ".init.text": counts(name).init_text}


@pytest.mark.slow
def test_ool_stub_areas_cover_the_72_records_exactly() -> None:
    kernel = require_kernel("7.2")
    facts = vmlinux_facts(kernel.vmlinux)
    result = _scan(kernel.vmlinux)
    areas = {a.name: a for a in result.stubs}
    assert set(areas) == set(OOL_AREAS) == set(facts.areas)
    for name, (addr, size, count) in facts.areas.items():
        a = areas[name]
        assert a.covers
        assert (a.addr, a.stub_count, a.stub_size, a.used, a.need) == (addr, count, size // count, count, 0)
    assert tuple(facts.areas[a][2] for a in OOL_AREAS) == counts("7.2").stubs
    assert sum(a.used for a in result.stubs) == len(result.sites) == counts("7.2").records
    # ftrace_init_ool_stub(): init-text records take the inittext stubs; .text records take
    # ftrace_ool_stub_text in address order while it lasts (all in range here), then _text_end.
    init_base, init_data = facts.text[".init.text"]
    init = [s for s in result.sites if init_base <= s.record < init_base + len(init_data)]
    assert {s.stub for s in init} == {"ftrace_ool_stub_inittext"} and len(init) == facts.areas[OOL_AREAS[2]][2]
    init_records = {s.record for s in init}
    text = sorted((s for s in result.sites if s.record not in init_records), key=lambda s: s.record)
    first = facts.areas["ftrace_ool_stub_text"][2]
    assert {s.stub for s in text[:first]} == {"ftrace_ool_stub_text"}
    assert {s.stub for s in text[first:]} == {"ftrace_ool_stub_text_end"}
    stubs = image_json(result, with_sites=False)["stubs"]
    assert [(a["name"], a["count"], a["stub_size"], a["used"], a["covers"]) for a in stubs] == [
        (n, facts.areas[n][2], 24, facts.areas[n][2], True) for n in OOL_AREAS
    ]


@pytest.mark.slow
def test_one_stub_too_few_leaves_the_last_init_record_without_a_stub(tmp_path: Path) -> None:
    """ftrace_init_ool_stub(): WARN_ON(index > count) -> -EINVAL -> ftrace_bug(). Lower the inittext
    count word in a copy: the last .init.text record (in the kernel's sorted order) gets no stub,
    and it alone is refused at boot."""
    kernel = require_kernel("7.2")
    facts = vmlinux_facts(kernel.vmlinux)
    data = bytearray(kernel.vmlinux.read_bytes())
    with kernel.vmlinux.open("rb") as fh:
        elf = ELFFile(fh)
        count_sym = elf.get_section_by_name(".symtab").get_symbol_by_name("ftrace_ool_stub_inittext_count")[0]
        offset = next(elf.address_offsets(count_sym["st_value"]))
    count = int.from_bytes(data[offset : offset + 4], "little")
    assert count == facts.areas["ftrace_ool_stub_inittext"][2]
    data[offset : offset + 4] = (count - 1).to_bytes(4, "little")
    result = scan(Image.from_bytes(tmp_path / "vmlinux", bytes(data)))
    area = next(a for a in result.stubs if a.name == "ftrace_ool_stub_inittext")
    assert (area.stub_count, area.used, area.need, area.covers) == (count - 1, count - 1, 1, False)
    refused = [s for s in result.sites if s.boot_state is None]
    init_base, init_data = facts.text[".init.text"]
    last_init = max(s.record for s in result.sites if init_base <= s.record < init_base + len(init_data))
    assert [s.record for s in refused] == [last_init] and not refused[0].traceable


@pytest.mark.slow
def test_stripped_vmlinux_scans_with_generation_given(tmp_path: Path) -> None:
    from boot import require_tool

    strip = require_tool("powerpc64le-linux-gnu-strip")
    kernel = require_kernel("7.2")
    stripped = tmp_path / "vmlinux"
    subprocess.run([str(strip), "-o", str(stripped), str(kernel.vmlinux)], check=True)
    facts = vmlinux_facts(kernel.vmlinux)
    result = scan(Image.load(stripped), generation=Generation.OOL)
    assert result.generation is Generation.OOL
    assert sorted(s.record for s in result.sites) == sorted(facts.records)
    # The override is obeyed even when it is wrong: the records then point at no patchable site.
    wrong = scan(Image.load(stripped), generation=Generation.PATCHABLE)
    assert wrong.generation is Generation.PATCHABLE and len(wrong.records.unmatched) > len(facts.records) // 2


# -- module trees ---------------------------------------------------------------------------


class ModuleCheck(NamedTuple):
    path: str
    sites: int
    generation: str | None
    problem: str | None  # None: the module's sites equal its records


def _check_modules(paths: Sequence[Path]) -> list[ModuleCheck]:
    """In a worker: scan each module with rewriter, read its records with pyelftools, compare."""
    out = []
    for path in paths:
        outcome = scan_one(path)
        if outcome.scan is None:
            out.append(ModuleCheck(str(path), 0, None, outcome.error))
            continue
        r = outcome.scan
        mine = [s["record"] for s in image_json(r)["sites"]]
        theirs = module_records(path)
        problem = None
        if sorted(mine) != sorted(theirs) or len(set(theirs)) != len(theirs):
            problem = f"records {sorted(set(theirs) ^ set(mine))[:4]} differ"
        elif r.records.unmatched or not all(s.recorded and s.boot_state is SiteState.DISABLED for s in r.sites):
            problem = "unmatched records, or sites init would not accept"
        elif r.generation is Generation.OOL and {s.stub for s in r.sites} - {".stubs"}:
            problem = "an ool module site not served from .stubs"
        gen = generation_of(r)
        out.append(ModuleCheck(str(path), len(r.sites), None if gen is None else gen.value, problem))
    return out


@pytest.mark.slow
@pytest.mark.parametrize("name", EVERY)
def test_every_module_site_equals_its_own_records(name: str) -> None:
    kernel = require_kernel(name)
    files, errors = expand([kernel.modules_dir])
    assert not errors
    checks = list(map_chunks(_check_modules, files, jobs=2))
    assert [c for c in checks if c.problem is not None] == []
    assert (len(checks), sum(c.sites for c in checks)) == (counts(name).modules, counts(name).module_sites)
    gens = Counter(c.generation for c in checks)
    assert set(gens) <= {kernel.kernel.generation, None}
    # No generation only for a module with no site and no record (data-only modules, notrace ones).
    assert all(c.sites == 0 for c in checks if c.generation is None)
    assert gens[kernel.kernel.generation] > 0.99 * len(checks)


# -- the command line -----------------------------------------------------------------------


def mcountrw(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "rewriter", *args], capture_output=True, text=True, check=True)


@pytest.mark.slow
@pytest.mark.parametrize("name", EVERY)
def test_scan_table_says_generation_and_traceable_sites(name: str) -> None:
    kernel = require_kernel(name)
    facts = vmlinux_facts(kernel.vmlinux)
    generation = kernel.kernel.generation
    head, *notes = unwrapped(mcountrw("scan", str(kernel.vmlinux)).stdout).splitlines()
    n = len(facts.records)
    slot = CALL_SLOT_MINUS_RECORD[generation]
    traceable = sum(not kernel_disables(facts, r + slot) for r in facts.records)
    built = BUILT[generation].value
    assert f"generation {generation}: {n} sites ({n} {built}->disabled), {traceable} traceable after boot" in head
    assert f"{n} records (0 skipped, 0 unmatched), 0 zeroed slots, 0 sites unrecorded" in head
    weak = [line for line in notes if line.startswith("  not traceable: ")]
    assert [w.split(" are ")[0] for w in weak] == (
        [f"  not traceable: {n - traceable} sites (weak-body)"] if facts.weak_check else []
    )
    if generation == "ool":
        stubs = next(line for line in notes if line.startswith("  ool stubs"))
        assert "ftrace_ool_stub_text 32768 of 32768 used" in stubs and f"cover all {n} records, 0 spare" in stubs


@pytest.mark.parametrize(
    ("name", "generation", "slot_minus_record"), [("6.1", "mprofile", 0), ("6.12", "patchable", 4), ("7.2", "ool", 0)]
)
def test_scan_json_of_nls_utf8_on_each_generation(name: str, generation: str, slot_minus_record: int) -> None:
    kernel = require_kernel(name)
    path = next(kernel.modules_dir.glob("fs/nls/nls_utf8.ko*"))
    image = json.loads(mcountrw("scan", "--format", "json", str(path)).stdout)["images"][0]
    assert {k: image[k] for k in ("kind", "endian", "abi", "generation")} == {
        "kind": "module",
        "endian": "little",
        "abi": "elfv2",
        "generation": generation,
    }
    assert sorted(s["record"] for s in image["sites"]) == sorted(module_records(path))
    for s in image["sites"]:
        section, off = s["record"].split("+")
        assert s["address"] is None and (s["section"], s["offset"]) == (section, int(off, 16) + slot_minus_record)
        assert (s["recorded"], s["boot_state"], s["traceable"], s["source"]) == (True, "disabled", True, "image")
        assert s["stub"] == (".stubs" if generation == "ool" else None)
    assert {s["function"] for s in image["sites"]} == {"char2uni", "uni2char", "init_nls_utf8"}
    assert image["records"] == {"count": 3, "zeroed": 0, "skipped": [], "unmatched": [], "duplicates": [], "unread": []}
    stubs = [(a["name"], a["count"], a["used"], a["covers"]) for a in image["stubs"]]
    assert stubs == ([(".stubs", 3, 3, True)] if generation == "ool" else [])


def test_an_ool_record_without_a_stub_is_said_once_for_what_it_is(tmp_path: Path) -> None:
    """7.2 with ftrace_ool_stub_inittext_count one short: the last .init.text record gets no stub.
    Its word is the nop init checks for, so it is no "refused" site (the scan said both before),
    and no area serves it (its ``stub`` named the short area before)."""
    image = Image.load(require_kernel("7.2").vmlinux)
    syms = image.symbols
    assert syms is not None
    count_at = image.offset_of(int(syms.table["st_value"][syms.find("ftrace_ool_stub_inittext_count")[0]]))
    data = bytearray(image.data)
    init_stubs = counts("7.2").init_text
    assert int.from_bytes(data[count_at : count_at + 4], "little") == init_stubs
    data[count_at : count_at + 4] = (init_stubs - 1).to_bytes(4, "little")
    path = tmp_path / "vmlinuz"
    path.write_bytes(bytes(data))
    got = image_json(scan(Image.load(path)))
    summary = got["summary"]
    assert summary["ftrace_off"] == "1 record without an ool stub: ftrace bug at boot"
    assert (summary["untraceable"]["no-stub"], summary["untraceable"]["refused"]) == (1, 0)
    assert summary["by_boot_state"] == {"disabled": counts("7.2").records - 1, "no-stub": 1}
    (lacking,) = [s for s in got["sites"] if s["boot_state"] is None]
    last_init = max(s["address"] for s in got["sites"] if s["section"] == ".init.text")
    assert (lacking["address"], lacking["state"], lacking["stub"]) == (last_init, "disabled", None)
    assert all(s["stub"] for s in got["sites"] if s is not lacking)


@pytest.mark.corpus
def test_a_modules_table_says_file_to_load_and_the_audit_question_says_module_load() -> None:
    """A module's init runs as it loads: its state column said file->boot, and the patchable
    question "the kernel makes it mflr r0 at boot", beside a summary that says "once loaded"."""
    module = require_kernel("6.12").modules_dir / "fs/nls/nls_utf8.ko.xz"
    lines = CliRunner().invoke(app, ["scan", str(module), "--all"]).output.splitlines()
    # (every site's state is the same: said once, above the table)
    every = next(line for line in lines if line.startswith("  every site: "))
    assert "file->load nopped->disabled" in every and "file->boot" not in "\n".join(lines), lines[:6]
    vmlinux = unwrapped(CliRunner().invoke(app, ["scan", str(require_kernel("6.12").vmlinux)]).output).splitlines()
    assert any("file->boot nopped->disabled" in line for line in vmlinux[:8]), vmlinux[:8]
    audit = json.loads(CliRunner().invoke(app, ["audit", "--format", "json", str(module)]).output)
    assert "mflr r0 at boot or module load" in audit["images"][0]["mflr_nop_safety"]["question"]
