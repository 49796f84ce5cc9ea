"""Review h16: reading (scan, audit, diff) as a kernel developer would, checked against the kernel's
own tables and against pyelftools, never against mcountrw's own readers."""

from __future__ import annotations

import bisect
import csv
import io
import json
from collections.abc import Mapping
from pathlib import Path

import pytest
from boot import require_kernel, unsigned_module
from conftest import invoke
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
    lose its record) does not apply. Now one ``unallocated`` error in every format."""
    from mutate import clear_alloc

    ko = unsigned_module(name, "fs/nls/mac-roman.ko*", tmp_path / "mac-roman.ko")
    before = json.loads(_audit(ko, "json")[1])["images"][0]["anomalies"]
    assert not [a for a in before if a["kind"] == "unallocated"]
    clear_alloc(ko, ".text")
    allocated, rows = _recorded_in(ko, ".text")
    assert not allocated and rows == 2
    code, text = _audit(ko, "json", "--fail-on", "error")
    assert code == 1
    found = json.loads(text)["images"][0]["anomalies"]
    (anomaly,) = [a for a in found if a["kind"] == "unallocated"]
    assert anomaly["severity"] == "error" and anomaly["section"] == ".text", anomaly
    assert anomaly["message"].startswith(f"{rows} recorded sites") and "SHF_ALLOC" in anomaly["message"]
    assert not [a for a in found if a["kind"] == "boot-refused"], found
    md = _audit(ko, "md")[1]
    assert "**error** `unallocated` .text+0x" in md
    sarif = json.loads(_audit(ko, "sarif")[1])["runs"][0]
    assert [(r["ruleId"], r["level"]) for r in sarif["results"]] == [("unallocated", "error")]
    assert "<td>error</td><td>unallocated</td>" in _audit(ko, "html")[1]
