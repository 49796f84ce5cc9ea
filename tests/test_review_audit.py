"""Findings of the 2026-12-05 black-box pass over audit and diff, on copies of Debian's kernels
edited the way a bad tool or a bad build could."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
from boot import require_kernel, require_tool
from conftest import invoke

from rewriter import ppc
from rewriter.elf.image import Image
from rewriter.records import read_records

MFLR_R0 = 0x7C0802A6


def _scan(path: Path, *more: str) -> dict:
    done = invoke("scan", "--format", "json", *more, path)
    assert done.exit_code == 0, done.output
    image: dict = json.loads(done.output)["images"][0]
    return image


def _audit(path: Path) -> dict:
    done = invoke("audit", "--format", "json", path)
    image: dict = json.loads(done.stdout)["images"][0]
    return image


def _put_word(path: Path, address: int, word: int) -> None:
    image = Image.load(path)
    at = image.offset_of(address)
    data = bytearray(path.read_bytes())
    data[at : at + 4] = word.to_bytes(4, "little")
    path.write_bytes(data)


def test_one_edited_patchable_site_leaves_the_image_patchable_and_is_an_error(tmp_path: Path) -> None:
    """A `nop; nop` site whose second nop another tool overwrote was read as ool's one nop, and
    that one record made all 38,791 sites ool: disabled, safety n/a, 0 errors, for a kernel whose
    ftrace_init_nop() fails that site (both words must be nops) and turns ftrace off."""
    vmlinux = tmp_path / "vmlinux"
    shutil.copyfile(require_kernel("6.12").vmlinux, vmlinux)
    site = next(s for s in _scan(vmlinux)["sites"] if s["function"] == "do_one_initcall")
    _put_word(vmlinux, site["address"], MFLR_R0)
    after = _scan(vmlinux)
    assert after["generation"] == "patchable" and "ftrace bug at boot" in after["summary"]["ftrace_off"]
    states = {s["state"] for s in after["sites"] if s["function"] != "do_one_initcall"}
    assert states == {"nopped"}
    audit = _audit(vmlinux)
    errors = [a for a in audit["anomalies"] if a["severity"] == "error"]
    assert errors and all(a["address"] in (site["address"], site["record"]) for a in errors if a["address"])


def test_a_patchable_vmlinux_with_symbols_and_no_stub_area_is_never_ool(tmp_path: Path) -> None:
    """Even when most of its sites were edited: a vmlinux built for ool links its stub areas in."""
    vmlinux = tmp_path / "vmlinux"
    shutil.copyfile(require_kernel("6.12").vmlinux, vmlinux)
    sites = _scan(vmlinux)["sites"]
    image = Image.load(vmlinux)
    data = bytearray(vmlinux.read_bytes())
    for s in sites[: len(sites) * 2 // 3]:
        at = image.offset_of(s["address"])
        data[at : at + 4] = MFLR_R0.to_bytes(4, "little")
    vmlinux.write_bytes(data)
    assert _scan(vmlinux)["generation"] == "patchable"


def _set_symbol_size(path: Path, name: str, size: int) -> None:
    image = Image.load(path)
    assert image.symbols is not None
    (index,) = image.symbols.find(name)[:1]
    symtab = image.section(".symtab")
    assert symtab is not None
    at = symtab.offset + int(index) * 24 + 16  # Elf64_Sym.st_size
    data = bytearray(path.read_bytes())
    data[at : at + 8] = size.to_bytes(8, "little")
    path.write_bytes(data)


def _set_count(path: Path, area: str, count: int) -> None:
    image = Image.load(path)
    assert image.symbols is not None
    (index,) = image.symbols.find(area + "_count")[:1]
    _put_word(path, int(image.symbols.table["st_value"][index]), count)


def _stubs(image: dict) -> dict[str, dict]:
    return {a["name"]: a for a in image["stubs"]}


def test_a_stub_area_count_one_above_its_records_is_no_error(tmp_path: Path) -> None:
    """The kernel indexes every area in stubs of one size (sizeof(struct ftrace_ool_stub)) and
    reads only the count word. A count of 8,122 over 8,121 records was read as 23-byte stubs (the
    area's size over its count): 6,091 records without a stub, and ftrace off."""
    vmlinux = tmp_path / "vmlinux"
    shutil.copyfile(require_kernel("7.2").vmlinux, vmlinux)
    _set_count(vmlinux, "ftrace_ool_stub_text_end", 8122)
    image = _scan(vmlinux)
    area = _stubs(image)["ftrace_ool_stub_text_end"]
    assert (area["count"], area["stub_size"], area["need"], area["covers"]) == (8122, 24, 0, True)
    assert image["summary"]["ftrace_off"] is None
    assert not [a for a in _audit(vmlinux)["anomalies"] if a["severity"] != "note"]


def test_a_stub_area_smaller_than_its_stubs_is_an_error(tmp_path: Path) -> None:
    """An area whose symbol is one stub short of its count, or sized for 16-byte stubs: the kernel
    still writes 8,121 stubs of 24 bytes from its start, past its end."""
    for size in (8120 * 24, 8121 * 16):
        vmlinux = tmp_path / f"vmlinux-{size}"
        shutil.copyfile(require_kernel("7.2").vmlinux, vmlinux)
        _set_symbol_size(vmlinux, "ftrace_ool_stub_text_end", size)
        image = _scan(vmlinux)
        assert {a["stub_size"] for a in image["stubs"]} == {24} and all(a["covers"] for a in image["stubs"])
        errors = [a for a in _audit(vmlinux)["anomalies"] if a["severity"] == "error"]
        assert [a["kind"] for a in errors] == ["ool-stubs"]
        assert (
            f"ftrace_ool_stub_text_end: {size} bytes" in errors[0]["message"]
            and "8121 stubs of 24" in errors[0]["message"]
        )
    sarif = json.loads(invoke("audit", "--format", "sarif", "--fail-on", "never", vmlinux).stdout)
    (result,) = [r for r in sarif["runs"][0]["results"] if r["ruleId"] == "ool-stubs"]
    # the stub area is a data object the kernel fills, not a function
    assert result["locations"][0]["logicalLocations"] == [{"name": "ftrace_ool_stub_text_end", "kind": "object"}]


def _zero_record_of(path: Path, place: int) -> None:
    """Zero the vmlinux record of ``place`` (its table slot and the RELATIVE addend relocate()
    stores there), as a tool that drops records does."""
    from test_review_crosscheck import _set_record

    image = Image.load(path)
    (table,) = read_records(image)
    (slot,) = np.flatnonzero(table.values == place)
    _set_record(path, int(slot), 0)


def _tracer_entry(path: Path) -> int:
    image = Image.load(path)
    assert image.symbols is not None
    return int(image.symbols.table["st_value"][image.symbols.find("ftrace_caller")[0]])


def test_a_call_to_the_tracer_that_no_record_names_is_a_site(tmp_path: Path) -> None:
    """6.12: `nop; bl ftrace_caller` with its record zeroed reaches the tracer with r0 not holding
    LR on every call, and ftrace can never patch it back: the audit said only 'zeroed record'.
    6.1: `mflr r0; bl ftrace_caller` with its record zeroed traces for good: no warning at all."""
    for name, kind in (("6.12", "broken"), ("6.1", "unrecorded")):
        vmlinux = tmp_path / f"vmlinux-{name}"
        shutil.copyfile(require_kernel(name).vmlinux, vmlinux)
        site = next(s for s in _scan(vmlinux)["sites"] if s["function"] == "do_one_initcall")
        _put_word(vmlinux, site["address"], ppc.bl(site["address"], _tracer_entry(vmlinux)))
        _zero_record_of(vmlinux, site["record"])
        after = next(s for s in _scan(vmlinux)["sites"] if s["function"] == "do_one_initcall")
        assert (after["address"], after["recorded"], after["record"]) == (site["address"], False, None)
        found = [a for a in _audit(vmlinux)["anomalies"] if a["address"] == site["address"]]
        assert kind in [a["kind"] for a in found], found
        assert any(a["severity"] in ("error", "warning") for a in found)


def test_the_html_site_table_says_untraceable_when_ftrace_is_off(tmp_path: Path) -> None:
    """A 6.1 kernel with one record made twice: init fails the second, ftrace is off for the boot,
    and scan says no site is traceable; the HTML's `traceable` column said yes for all 33,689."""
    from test_review_crosscheck import _set_record

    vmlinux = tmp_path / "vmlinux"
    shutil.copyfile(require_kernel("6.1").vmlinux, vmlinux)
    sites = _scan(vmlinux)["sites"]
    _set_record(vmlinux, 100, sorted(s["record"] for s in sites)[50])
    scanned = _scan(vmlinux)
    assert scanned["summary"]["ftrace_off"] and scanned["summary"]["traceable"] == 0
    page = tmp_path / "audit.html"
    assert invoke("audit", "--format", "html", "-o", page, "--fail-on", "never", vmlinux).exit_code == 0
    found = re.search(r'<script type="application/json" id="site-data">(.*?)</script>', page.read_text(), re.S)
    assert found is not None
    rows = json.loads(found.group(1))
    column = ["image", "place", "section", "function", "variant", "state", "recorded", "traceable"].index("traceable")
    assert len(rows) == len(scanned["sites"]) and {r[column] for r in rows} == {"no"}


def test_a_duplicate_record_names_its_function(tmp_path: Path) -> None:
    """`duplicate-record` carried `function: null` inside a sized function, so its SARIF
    fingerprint fell back to the raw address, which changes with every build."""
    from test_review_crosscheck import _set_record

    vmlinux = tmp_path / "vmlinux"
    shutil.copyfile(require_kernel("6.12").vmlinux, vmlinux)
    twice = next(s for s in _scan(vmlinux)["sites"] if s["function"] == "do_one_initcall")
    _set_record(vmlinux, 100, twice["record"])
    (found,) = [a for a in _audit(vmlinux)["anomalies"] if a["kind"] == "duplicate-record"]
    assert (found["function"], found["address"]) == ("do_one_initcall", twice["record"])
    sarif = json.loads(invoke("audit", "--format", "sarif", "--fail-on", "never", vmlinux).stdout)
    (result,) = [r for r in sarif["runs"][0]["results"] if r["ruleId"] == "duplicate-record"]
    assert list(result["partialFingerprints"].values()) == ["duplicate-record:vmlinux:do_one_initcall"]


def test_diff_reads_a_stripped_mprofile_vmlinux_with_mcount_addr(tmp_path: Path) -> None:
    """diff's error told a stripped 6.1 vmlinux's user to pass --mcount-addr, which diff lacked."""
    objcopy = require_tool("powerpc64le-linux-gnu-objcopy")
    full, stripped = require_kernel("6.1").vmlinux, tmp_path / "vmlinux.stripped"
    subprocess.run([objcopy, "--strip-all", full, stripped], check=True)
    image = Image.load(full)
    assert image.symbols is not None
    mcount = f"{int(image.symbols.table['st_value'][image.symbols.find('_mcount')[0]]):#x}"
    refused = invoke("diff", stripped, full)
    assert refused.exit_code == 2 and "--mcount-addr" in refused.output
    done = invoke("diff", "--format", "json", "--mcount-addr", mcount, stripped, full)
    assert done.exit_code == 0, done.output
    (pair,) = json.loads(done.stdout)["images"]
    assert pair["changes"] == [] and pair["unchanged"] == 33690
    thrice = invoke("diff", "--mcount-addr", mcount, "--mcount-addr", mcount, "--mcount-addr", mcount, stripped, full)
    assert thrice.exit_code == 2 and "give it once (both images) or twice" in thrice.output


def test_diff_says_when_one_side_boots_with_ftrace_off(tmp_path: Path) -> None:
    """A record made twice (6.1), or an ool area one stub short (7.2), changes no site's words and
    turns ftrace off for the whole boot: diff said 'no changes', exit 0, or only record-removed."""
    from test_review_crosscheck import _set_record

    old61, new61 = tmp_path / "a61", tmp_path / "b61"
    shutil.copyfile(require_kernel("6.1").vmlinux, old61)
    shutil.copyfile(old61, new61)
    _set_record(new61, 100, sorted(s["record"] for s in _scan(old61)["sites"])[50])
    old72, new72 = tmp_path / "a72", tmp_path / "b72"
    shutil.copyfile(require_kernel("7.2").vmlinux, old72)
    shutil.copyfile(old72, new72)
    _set_count(new72, "ftrace_ool_stub_text_end", 8120)
    for a, b in ((old61, new61), (old72, new72)):
        done = invoke("diff", "--format", "json", a, b)
        assert done.exit_code == 1, done.output
        (pair,) = json.loads(done.stdout)["images"]
        assert pair["boot"][0] is None and pair["boot"][1].startswith("ftrace off: ")
        text = invoke("diff", a, b).stdout
        assert "**After boot:** A: ftrace on; B: ftrace off: " in text
    same = invoke("diff", "--format", "json", old72, old72)
    assert same.exit_code == 0 and json.loads(same.stdout)["images"][0]["boot"] == [None, None]


def test_a_stripped_kernel_keeps_every_record_traceable(tmp_path: Path) -> None:
    """Without symbols nothing says which records test_for_valid_rec() disables: scan counts them
    all traceable, as the audit's no-symbols note says. The module kallsyms fix read 'no symbol
    before it' as 'disabled' and made all 38,791 sites of a stripped 6.12 untraceable."""
    objcopy = require_tool("powerpc64le-linux-gnu-objcopy")
    stripped = tmp_path / "vmlinux"
    subprocess.run([objcopy, "--strip-all", require_kernel("6.12").vmlinux, stripped], check=True)
    image = _scan(stripped)
    assert image["summary"]["traceable"] == len(image["sites"]) == 38791


def test_a_record_inside_a_word_is_said_to_be_so(tmp_path: Path) -> None:
    """A record two bytes into a site's first nop was 'record points outside the code'."""
    from test_review_crosscheck import _set_record

    vmlinux = tmp_path / "vmlinux"
    shutil.copyfile(require_kernel("6.12").vmlinux, vmlinux)
    site = next(s for s in _scan(vmlinux)["sites"] if s["function"] == "do_one_initcall")
    image = Image.load(vmlinux)
    (table,) = read_records(image)
    (slot,) = np.flatnonzero(table.values == site["record"])
    _set_record(vmlinux, int(slot), site["record"] + 2)
    (found,) = [a for a in _audit(vmlinux)["anomalies"] if a["kind"] == "dangling"]
    assert found["message"] == f"record points inside the word at {site['record']:#x}, not at a word"


def test_diff_names_a_symlink_loop_as_one(tmp_path: Path) -> None:
    """diff said 'No such file or directory' of a link loop, where audit says what the system says."""
    loop_a, loop_b = tmp_path / "a", tmp_path / "b"
    loop_a.symlink_to(loop_b)
    loop_b.symlink_to(loop_a)
    done = invoke("diff", loop_a, loop_a)
    assert done.exit_code == 2
    assert done.output.strip().splitlines()[0].endswith(f"{loop_a}: Too many levels of symbolic links")
