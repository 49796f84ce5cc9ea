"""Review h16: reading (scan, audit, diff) as a kernel developer would, checked against the kernel's
own tables and against pyelftools, never against mcountrw's own readers."""

from __future__ import annotations

import bisect
import csv
import io
import json
import subprocess
from collections import Counter
from collections.abc import Mapping
from pathlib import Path

import pytest
from boot import require_kernel, unsigned_module
from conftest import invoke, unwrapped
from elftools.elf.constants import SH_FLAGS
from elftools.elf.elffile import ELFFile
from test_module_kallsyms import _edit_symbol

# kernel/trace/ftrace.c test_for_valid_rec() with arch/powerpc/include/asm/ftrace.h (6.12, 7.2):
# a record more than this past its kallsyms symbol is disabled, never listed.
FTRACE_MCOUNT_MAX_OFFSET = 16

# -- listed_as: the name ftrace lists a site in no function under ------------------------------


def _text_symbols(path: Path) -> dict[tuple[str, int], set[str]]:
    """By (section, value), the names kallsyms_lookup() chooses among for a place in code, read with
    pyelftools: every named symbol of an executable section. A vmlinux's kallsyms holds nm's text
    symbols (scripts/kallsyms); a module's loader keeps every named symbol (find_kallsyms_symbol())."""
    out: dict[tuple[str, int], set[str]] = {}
    with path.open("rb") as f:
        elf = ELFFile(f)
        code = {n: s.name for n, s in enumerate(elf.iter_sections()) if s["sh_flags"] & SH_FLAGS.SHF_EXECINSTR}
        linked = elf["e_type"] != "ET_REL"
        symtab = elf.get_section_by_name(".symtab")
        for sym in symtab.iter_symbols():
            shndx = sym["st_shndx"]
            if not sym.name or not isinstance(shndx, int) or shndx not in code:
                continue
            out.setdefault(("" if linked else code[shndx], sym["st_value"]), set()).add(sym.name)
    return out


def _nearest(symbols: Mapping[tuple[str, int], set[str]], site: dict) -> tuple[int, set[str]]:
    """How far ``site``'s call slot (rec->ip, in all three generations) lies past the nearest text
    symbol at or before it, and that symbol's names."""
    linked = site["address"] is not None
    section, place = ("", site["address"]) if linked else (site["section"], site["offset"])
    starts = sorted(v for s, v in symbols if s == section)
    at = starts[bisect.bisect_right(starts, place) - 1]
    return place - at, symbols[(section, at)]


def _sites(path: Path, fmt: str) -> list[dict]:
    result = invoke("scan", "--format", fmt, path)
    assert result.exit_code == 0, result.output
    if fmt == "csv":
        return list(csv.DictReader(io.StringIO(result.stdout)))
    (image,) = json.loads(result.stdout)["images"]
    return list(image["sites"])


def _check_listed_as(path: Path, weak_check: bool) -> int:
    """Every site in no function that the kernel lists carries, in JSON and CSV, the name of the
    nearest text symbol before it; no other site carries one. Returns how many carry one."""
    symbols = _text_symbols(path)
    sites = _sites(path, "json")
    listed = 0
    for site in sites:
        if site["function"] is not None:
            assert site["listed_as"] is None, site
            continue
        distance, names = _nearest(symbols, site)
        lists = not weak_check or distance <= FTRACE_MCOUNT_MAX_OFFSET
        assert site["traceable"] == lists, (site, distance)
        if lists:
            assert site["listed_as"] in names, (site, names)
            listed += 1
        else:
            assert site["listed_as"] is None, site
    rows = _sites(path, "csv")
    assert [r["listed_as"] for r in rows] == [s["listed_as"] or "" for s in sites]
    return listed


@pytest.mark.corpus
@pytest.mark.parametrize(("name", "weak_check"), [("7.2", True), ("6.1", False)])
def test_a_site_in_no_function_carries_the_name_ftrace_lists_it_under(name: str, weak_check: bool) -> None:
    """JSON and CSV said ``function: null`` and nothing else for an overridden weak function's body
    that ftrace still lists (7.2: 26 of 285, 6.1: all 243, which has no test_for_valid_rec()); only
    the table named it. ``listed_as`` is kallsyms' nearest symbol before it (pyelftools here)."""
    assert _check_listed_as(require_kernel(name).vmlinux, weak_check) > 0


@pytest.mark.corpus
@pytest.mark.parametrize("name", ["6.12", "7.2"])
def test_a_module_site_after_a_notype_label_is_listed_under_the_label(name: str, tmp_path: Path) -> None:
    """nls_utf8's ``uni2char`` made a NOTYPE label: its site is in no function, and the module's
    kallsyms (which keeps labels) lists it as ``uni2char`` (test_module_kallsyms boots it)."""
    ko = unsigned_module(name, "fs/nls/nls_utf8.ko*", tmp_path / "nls_utf8.ko")
    _edit_symbol(ko, "uni2char", "notype")
    assert _check_listed_as(ko, weak_check=True) == 1
    (site,) = [s for s in _sites(ko, "json") if s["function"] is None]
    assert site["listed_as"] == "uni2char"


@pytest.mark.corpus
def test_the_fast_json_writer_writes_listed_as_as_json_does() -> None:
    from rewriter.batch import scan_one
    from rewriter.report import scanfmt

    result = scan_one(require_kernel("7.2").vmlinux).scan
    assert result.listed
    fast = scanfmt.scans_json_text([result], [])
    assert fast == json.dumps(scanfmt.scans_json([result], []), separators=(",", ":"))


# -- unallocated: recorded sites in a module section the loader never places ---------------------


def _recorded_in(path: Path, section: str) -> tuple[bool, int]:
    """pyelftools: whether ``section`` is allocated, and how many record rows (the ADDR64 rows of
    ``.rela__mcount_loc`` / ``.rela__patchable_function_entries``) name a place in it."""
    with path.open("rb") as f:
        elf = ELFFile(f)
        target = elf.get_section_by_name(section)
        index = next(n for n, s in enumerate(elf.iter_sections()) if s.name == section)
        symtab = elf.get_section_by_name(".symtab")
        rows = 0
        for name in (".rela__mcount_loc", ".rela__patchable_function_entries"):
            table = elf.get_section_by_name(name)
            for rel in table.iter_relocations() if table is not None else ():
                rows += symtab.get_symbol(rel["r_info_sym"])["st_shndx"] == index
        return bool(target["sh_flags"] & SH_FLAGS.SHF_ALLOC), rows


def _audit(path: Path, fmt: str, *more: object) -> tuple[int, str]:
    result = invoke("audit", "--format", fmt, *more, path)
    return result.exit_code, result.stdout


@pytest.mark.corpus
@pytest.mark.parametrize("name", ["6.1", "6.12", "7.2"])
def test_audit_says_recorded_sites_in_an_unallocated_section_are_never_placed(name: str, tmp_path: Path) -> None:
    """mac-roman's ``.text`` without SHF_ALLOC: the loader never places it, and its two records
    name the temporary copy (test_review_load2 boots it: 6.1 ftrace bug, 6.12/7.2 never listed).
    scan said ``unallocated`` (6.12, 7.2) or ``refused`` (6.1); audit had no finding on 6.12 and
    7.2 and a clean exit, and on 6.1 two boot-refused errors whose advice (a rewritten site must
    lose its record) does not apply. Now one ``unallocated`` in every format: an error where it
    turns ftrace off (6.1), a warning where the functions are only never traced (6.12, 7.2;
    test_review_h17_Y checks the exit codes)."""
    from mutate import clear_alloc

    ko = unsigned_module(name, "fs/nls/mac-roman.ko*", tmp_path / "mac-roman.ko")
    before = json.loads(_audit(ko, "json")[1])["images"][0]["anomalies"]
    assert not [a for a in before if a["kind"] == "unallocated"]
    clear_alloc(ko, ".text")
    allocated, rows = _recorded_in(ko, ".text")
    assert not allocated and rows == 2
    severity = "error" if name == "6.1" else "warning"
    code, text = _audit(ko, "json", "--fail-on", severity)
    assert code == 1
    found = json.loads(text)["images"][0]["anomalies"]
    (anomaly,) = [a for a in found if a["kind"] == "unallocated"]
    assert anomaly["severity"] == severity and anomaly["section"] == ".text", anomaly
    assert anomaly["message"].startswith(f"{rows} recorded sites") and "SHF_ALLOC" in anomaly["message"]
    assert not [a for a in found if a["kind"] == "boot-refused"], found
    md = _audit(ko, "md")[1]
    assert f"**{severity}** `unallocated` .text+0x" in md
    sarif = json.loads(_audit(ko, "sarif")[1])["runs"][0]
    assert [(r["ruleId"], r["level"]) for r in sarif["results"]] == [("unallocated", severity)]
    assert f"<td>{severity}</td><td>unallocated</td>" in _audit(ko, "html")[1]
    # scan's table: on mprofile the sites are `refused`, whose reason line blames their words
    # (the compiler's); a line says what refuses them (test_review_load2 boots it: that message)
    table = unwrapped(invoke("scan", ko).stdout)
    placed = "NOT PLACED: .text without SHF_ALLOC" in table and "(Failed to get trampoline target)" in table
    assert placed == (name == "6.1"), table[:1500]


# -- a stripped vmlinux's release: its banner, read without the symbol -------------------------


def _symbol_value(path: Path, name: str) -> int | None:
    with path.open("rb") as f:
        found = ELFFile(f).get_section_by_name(".symtab").get_symbol_by_name(name)
    return None if not found else int(found[0]["st_value"])


def _stripped(src: Path, out: Path) -> Path:
    from boot import require_tool

    strip = require_tool("powerpc64le-linux-gnu-strip")
    subprocess.run([strip, "-o", out, src], check=True)
    return out


@pytest.mark.corpus
@pytest.mark.parametrize("name", ["6.12-gcc12", "6.1"])
def test_a_stripped_mprofile_vmlinux_names_its_release_and_whether_it_disables_weak_bodies(
    name: str, tmp_path: Path
) -> None:
    """Stripped, a vmlinux has no ``linux_banner`` symbol, and scan took every mprofile one for a
    6.1: Debian 12's 6.12 (gcc 12, mprofile sites; its unstripped symbols have the weak check's
    initcall, ftrace_check_for_weak_functions) said ``38891 traceable`` with no word of the weak
    bodies it disables. Its banner is still in .rodata."""
    from rewriter.elf.image import Image
    from rewriter.elf.release import kernel_release

    kernel = require_kernel(name)
    stripped = _stripped(kernel.vmlinux, tmp_path / "vmlinux")
    assert kernel_release(Image.load(stripped)) == kernel.kernel.release
    mcount = _symbol_value(kernel.vmlinux, "_mcount")
    assert mcount is not None
    checks = _symbol_value(kernel.vmlinux, "ftrace_check_for_weak_functions") is not None
    assert checks == (name != "6.1")
    table = unwrapped(invoke("scan", "--mcount-addr", hex(mcount), stripped).stdout)
    assert ("weak-function bodies (which the kernel disables) cannot be told" in table) == checks, table[:600]
    doc = json.loads(invoke("audit", "--format", "json", "--mcount-addr", hex(mcount), stripped).stdout)
    (note,) = [a["message"] for a in doc["images"][0]["anomalies"] if a["kind"] == "no-symbols"]
    assert ("the kernel disables records in weak-function bodies" in note) == checks, note


@pytest.mark.boot
@pytest.mark.corpus
def test_a_stripped_gcc12_612_with_an_mflr_nopped_is_said_to_turn_ftrace_off_as_it_does(tmp_path: Path) -> None:
    """6.12's ftrace_init_nop() checks the mflr of an mprofile site (test_rewrite_generations
    boots the unstripped kernel so); the stripped copy, taken for a 6.1 (which checks only the
    bl), was said to boot ``broken->nopped`` with ftrace on. qemu boots it: ftrace bug."""
    from boot import QEMU, STANDARD_APPEND, boot, require_tool

    require_tool(QEMU)
    kernel = require_kernel("6.12-gcc12")
    mcount, target = (_symbol_value(kernel.vmlinux, n) for n in ("_mcount", "do_one_initcall"))
    assert mcount is not None and target is not None
    sites = {s["address"]: s for s in _sites(kernel.vmlinux, "json")}
    (site,) = [s for a, s in sites.items() if target <= a < target + 16 and s["function"] == "do_one_initcall"]
    edited = tmp_path / "edited"
    data = bytearray(kernel.vmlinux.read_bytes())
    with kernel.vmlinux.open("rb") as f:  # the file offset of the mflr r0 before the bl, by pyelftools
        text = ELFFile(f).get_section_by_name(".text")
        at = text["sh_offset"] + site["address"] - 4 - text["sh_addr"]
    assert data[at : at + 4] == (0x7C0802A6).to_bytes(4, "little")
    data[at : at + 4] = (0x60000000).to_bytes(4, "little")
    edited.write_bytes(data)
    stripped = _stripped(edited, tmp_path / "vmlinux")
    doc = json.loads(invoke("scan", "--format", "json", "--mcount-addr", hex(mcount), stripped).stdout)["images"][0]
    (mine,) = [s for s in doc["sites"] if s["address"] == site["address"]]
    assert mine["state"] == "broken" and mine["boot_state"] is None, mine
    assert doc["summary"]["ftrace_off"] is not None and doc["summary"]["traceable"] == 0
    booted = boot(stripped, STANDARD_APPEND, timeout=20)
    assert booted.ftrace_bug, booted.console[-3000:]


# -- a module's record section without SHF_ALLOC: never read ----------------------------------

_RECORD_SECTION = {"6.1": "__mcount_loc", "6.12": "__patchable_function_entries", "7.2": "__patchable_function_entries"}


@pytest.mark.boot
@pytest.mark.corpus
@pytest.mark.parametrize("name", ["6.1", "6.12", "7.2"])
def test_a_module_record_section_without_shf_alloc_is_said_never_read(name: str, tmp_path: Path) -> None:
    """mac-roman's record section made unallocated: the loader's find_sec() never finds it, the
    module loads and none of its functions is listed (qemu). scan said ``generation none: 0 sites``
    and ``not built with -pg -mprofile-kernel or -fpatchable-function-entry?`` (6.12, 7.2: it was),
    and audit found nothing; now both name the section and why, audit as ``unread-records``."""
    from boot import QEMU, STANDARD_APPEND, boot, make_initramfs, module_load_script, require_tool
    from mutate import clear_alloc

    require_tool(QEMU)
    files = require_kernel(name)
    (tmp_path / "m").mkdir()
    ko = unsigned_module(name, "fs/nls/mac-roman.ko*", tmp_path / "m" / "mac-roman.ko")
    section = _RECORD_SECTION[name]
    clear_alloc(ko, section)
    with ko.open("rb") as f:  # the entries the table has, by pyelftools
        elf = ELFFile(f)
        assert not elf.get_section_by_name(section)["sh_flags"] & SH_FLAGS.SHF_ALLOC
        entries = elf.get_section_by_name(".rela" + section).num_relocations()
    assert entries == 3
    table = unwrapped(invoke("scan", ko).stdout)
    assert f"never read: {entries} entries in {section}, a section without SHF_ALLOC" in table, table
    assert "not built with" not in table
    doc = json.loads(invoke("scan", "--format", "json", ko).stdout)["images"][0]
    assert len(doc["records"]["unread"]) == entries and doc["summary"]["traceable"] == 0
    found = json.loads(invoke("audit", "--format", "json", ko).stdout)["images"][0]["anomalies"]
    (unread,) = [a for a in found if a["kind"] == "unread-records"]
    assert unread["severity"] == "warning" and section in unread["message"], unread
    script = module_load_script(["mac-roman"], aff_grep="[mac_roman]")
    booted = boot(files.vmlinux, STANDARD_APPEND, make_initramfs(tmp_path / "i.cpio", files.busybox, [ko], script))
    assert booted.done and booted.insmod == {"mac-roman": 0} and not booted.ftrace_bug, booted.console[-3000:]
    assert booted.available_filter_functions == [], booted.console[-3000:]


# -- odd inputs: one line naming the file and what it is ------------------------------------------


def _core(path: Path) -> Path:
    """An ELF64 little-endian PowerPC64 header of type ET_CORE (4), as a core dump starts."""
    import struct

    header = bytearray(64)
    header[:7] = b"\x7fELF\x02\x01\x01"
    struct.pack_into("<HHIQQQIHHHHHH", header, 16, 4, 21, 1, 0, 64, 0, 0, 64, 56, 0, 64, 0, 0)
    path.write_bytes(header)
    return path


def _archive(path: Path, magic: bytes, member: Path) -> Path:
    """An ar(1) archive of ``member`` (the format by its spec: a 60-byte header per member); a
    thin one keeps only the header, the member's path and size naming the file."""
    data = member.read_bytes()
    header = f"{'/':<16}{0:<12}{0:<6}{0:<6}{644:<8}{len(data):<10}`\n".encode()
    path.write_bytes(magic + header + (b"" if magic == b"!<thin>\n" else data))
    return path


def test_an_archive_or_a_core_is_refused_by_what_it_is(tmp_path: Path) -> None:
    """A kernel build's ``built-in.a`` or ``vmlinux.a`` (thin) given by mistake was ``not an ELF
    file``, and a core ``ELF type 4``: now each says what it is, in one line, exit 2, no report."""
    from conftest import FIXTURES, assert_one_line

    obj = FIXTURES / "bin" / "prof-le.o"
    cases = [
        (_archive(tmp_path / "built-in.a", b"!<arch>\n", obj), "an ar archive; give its members (ar x)"),
        (_archive(tmp_path / "vmlinux.a", b"!<thin>\n", obj), "a thin ar archive; give the object files it names"),
        (_core(tmp_path / "core"), "ELF type 4 (a core dump) is not"),
    ]
    report = tmp_path / "report"
    for path, words in cases:
        for command in (("scan", "--format", "json"), ("audit", "--format", "sarif"), ("diff", obj)):
            assert_one_line(invoke(*command, "-o", report, path), 2, "error", f"{path}: ", words)
            assert not report.exists()


# -- diff: a weak body pairs with itself across builds --------------------------------------------


def _unnamed_keys(path: Path) -> Counter[frozenset[str]]:
    """How many sites in no function follow each text symbol (its names), by pyelftools."""
    symbols = _text_symbols(path)
    return Counter(frozenset(_nearest(symbols, s)[1]) for s in _sites(path, "json") if s["function"] is None)


@pytest.mark.corpus
def test_diff_pairs_a_weak_body_by_the_symbol_before_it() -> None:
    """6.12 and its 64k-page build: the 261 weak bodies (sites in no function) were keyed by their
    address, which moves with any change before them, so diff listed each as removed and added
    again: 522 of the 699 changes. They now pair by the symbol kallsyms names them by (the
    nearest before, n-th after it); what is left unpaired is what pyelftools says differs."""
    a, b = require_kernel("6.12").vmlinux, require_kernel("6.12-64k").vmlinux
    keys_a, keys_b = _unnamed_keys(a), _unnamed_keys(b)
    result = invoke("diff", "--format", "json", a, b)
    assert result.exit_code == 1, result.output
    (image,) = json.loads(result.stdout)["images"]
    unnamed = Counter(c["change"] for c in image["changes"] if c["function"] is None)
    assert unnamed["removed"] == sum((keys_a - keys_b).values())
    assert unnamed["added"] == sum((keys_b - keys_a).values())
    assert sum((keys_a & keys_b).values()) > 250


@pytest.mark.boot
@pytest.mark.corpus
def test_a_module_stripped_of_its_symbol_table_is_said_not_loaded(tmp_path: Path) -> None:
    """``strip`` without ``--strip-debug`` takes a module's .symtab and relocation tables: the
    loader refuses it first thing ("module has no symbols (stripped?)", qemu on 7.2). scan said
    ``no sites: ... not built with -pg -mprofile-kernel or -fpatchable-function-entry?``, and audit
    found nothing; now both say the kernel refuses it (module-refused)."""
    from boot import QEMU, STANDARD_APPEND, boot, make_initramfs, module_load_script, require_tool

    require_tool(QEMU)
    files = require_kernel("7.2")
    (tmp_path / "m").mkdir()
    ko = unsigned_module("7.2", "fs/nls/mac-roman.ko*", tmp_path / "mac-roman.ko")
    stripped = _stripped(ko, tmp_path / "m" / "mac-roman.ko")
    with stripped.open("rb") as f:
        assert ELFFile(f).get_section_by_name(".symtab") is None
    table = invoke("scan", stripped).stdout
    assert "NOT LOADED: no symbol table" in table and "not built with" not in table, table
    found = json.loads(invoke("audit", "--format", "json", stripped).stdout)["images"][0]["anomalies"]
    assert [(a["kind"], a["severity"]) for a in found] == [("module-refused", "error")], found
    script = module_load_script(["mac-roman"], aff_grep="[mac_roman]")
    initrd = make_initramfs(tmp_path / "i.cpio", files.busybox, [stripped], script)
    booted = boot(files.vmlinux, STANDARD_APPEND, initrd)
    assert booted.done and booted.insmod["mac-roman"] != 0, booted.console[-3000:]
    assert "module has no symbols (stripped?)" in booted.console, booted.console[-3000:]
