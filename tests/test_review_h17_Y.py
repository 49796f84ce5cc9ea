"""Review h17 (helper Y): audit, diff and their reports, and the release a stripped vmlinux names."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from boot import require_kernel
from elftools.elf.elffile import ELFFile
from test_review_h16_scan import _stripped

# -- a stripped vmlinux's release: the banner itself, not the first string that starts like it ------

# Strings of .rodata that begin as linux_banner does: a format (linux_proc_banner's own is
# "%s version %s", but a driver's message may spell it out) and a sentence naming an old release.
_DECOYS = (b"Linux version %s\0", b"Linux version 2.6.16 or later is needed (see the notes) #1\0")


def _with_decoy(stripped: Path, decoy: bytes, out: Path) -> Path:
    """A copy of ``stripped`` with ``decoy`` written at the start of its .rodata, before the
    banners (pyelftools finds the section; the banner's place is checked to lie after the decoy)."""
    data = bytearray(stripped.read_bytes())
    with stripped.open("rb") as f:
        start = ELFFile(f).get_section_by_name(".rodata")["sh_offset"]
    assert data.find(b"Linux version ", start) > start + len(decoy)
    data[start : start + len(decoy)] = decoy
    out.write_bytes(data)
    return out


@pytest.mark.corpus
@pytest.mark.parametrize("name", ["6.1", "6.12", "7.2", "6.12-gcc12"])
def test_a_stripped_vmlinux_names_the_release_of_its_banner_not_of_a_string_before_it(
    name: str, tmp_path: Path
) -> None:
    """The first "Linux version " of .rodata named the release: a "%s" after it gave none, a "2.6.16"
    gave 2.6.16 (a stripped 6.12 built by gcc 12 then read as a kernel without the weak-body check)."""
    from rewriter.elf.image import Image
    from rewriter.elf.release import kernel_release

    kernel = require_kernel(name)
    stripped = _stripped(kernel.vmlinux, tmp_path / "vmlinux")
    assert kernel_release(Image.load(stripped)) == kernel.kernel.release
    for n, decoy in enumerate(_DECOYS):
        edited = _with_decoy(stripped, decoy, tmp_path / f"decoy{n}")
        assert kernel_release(Image.load(edited)) == kernel.kernel.release, decoy


# -- unallocated: an error where it turns ftrace off, a warning where it only hides functions -------


@pytest.mark.corpus
@pytest.mark.parametrize(("name", "fails"), [("6.1", True), ("6.12", False), ("7.2", False)])
def test_sites_in_an_unallocated_module_section_fail_the_audit_only_where_ftrace_goes_off(
    name: str, fails: bool, tmp_path: Path
) -> None:
    """mac-roman's ``.text`` without SHF_ALLOC (test_review_load2 boots it: 6.1 hits ftrace bug at
    load and turns ftrace off; 6.12 and 7.2 load it with ftrace on and only never list its
    functions). The audit called it an error on every generation: ``audit`` (``--fail-on error``)
    failed a 6.12 or 7.2 module whose only effect is unread-records' (a warning)."""
    from conftest import invoke
    from mutate import clear_alloc
    from test_review_h16_scan import unsigned_module

    ko = unsigned_module(name, "fs/nls/mac-roman.ko*", tmp_path / "mac-roman.ko")
    clear_alloc(ko, ".text")
    plain = invoke("audit", "--format", "json", ko)
    assert plain.exit_code == (1 if fails else 0), plain.output[-400:]
    (found,) = [a for a in json.loads(plain.stdout)["images"][0]["anomalies"] if a["kind"] == "unallocated"]
    assert found["severity"] == ("error" if fails else "warning"), found
    assert ("ftrace_bug() turns function tracing off" in found["message"]) == fails, found["message"]
    assert invoke("audit", "--fail-on", "warning", ko).exit_code == 1


# -- SARIF: a kernel address where every SARIF reader can hold it ------------------------------------


@pytest.mark.corpus
def test_sarif_gives_a_kernel_address_as_text_not_as_an_integer_no_reader_holds(tmp_path: Path) -> None:
    """SARIF's reference SDK (Microsoft.CodeAnalysis.Sarif, Address.AbsoluteAddress: int) reads
    absoluteAddress as 32 bits: 6.12's 262 weak-body notes each had 0xc000... there, which fails
    the whole log in it (and rounds in a JavaScript reader). The address is now the location's
    name, the one the JSON report gives the anomaly, in hex."""
    from conftest import invoke

    vmlinux = require_kernel("6.12").vmlinux
    anomalies = json.loads(invoke("audit", "--format", "json", vmlinux).stdout)["images"][0]["anomalies"]
    results = json.loads(invoke("audit", "--format", "sarif", vmlinux).stdout)["runs"][0]["results"]
    assert len(results) == len(anomalies) == 262
    for result, anomaly in zip(results, anomalies, strict=True):
        (location,) = result["locations"]
        address = location["physicalLocation"]["address"]
        assert address["name"] == hex(anomaly["address"]) and "absoluteAddress" not in address, address
        assert all(v < 2**31 for v in _integers(result)), result
        assert result["message"]["text"].endswith(f"({hex(anomaly['address'])})")


def _integers(value: object) -> list[int]:
    """Every integer in a JSON value, however deep."""
    if isinstance(value, bool):
        return []
    if isinstance(value, int):
        return [value]
    items = value.values() if isinstance(value, dict) else value if isinstance(value, list) else ()
    return [n for item in items for n in _integers(item)]


# -- boot-refused on a kernel before 6.6: the words its ftrace_make_nop() prints -------------------


def _symbol(path: Path, name: str) -> int:
    with path.open("rb") as f:
        (sym,) = ELFFile(f).get_section_by_name(".symtab").get_symbol_by_name(name)
    return int(sym["st_value"])


@pytest.mark.boot
@pytest.mark.corpus
def test_a_61_site_nopped_with_its_record_is_quoted_as_the_61_kernel_complains(tmp_path: Path) -> None:
    """6.1 has only the generic ftrace_init_nop(): the ftrace_make_nop() it calls prints ``replaced (60000000) !=
    old (<the bl _mcount>)``. The audit quoted 6.6's ``expected (bl) != found (60000000)``, which
    no 6.1 console holds. The bl is encoded here from pyelftools' _mcount; qemu prints the line."""
    from boot import QEMU, STANDARD_APPEND, boot, require_tool
    from conftest import invoke

    require_tool(QEMU)
    vmlinux = require_kernel("6.1").vmlinux
    out = tmp_path / "vmlinux"
    done = invoke("nop", vmlinux, "-o", out, "--only", "do_one_initcall", "--keep-records")
    assert done.exit_code == 0, done.output
    anomalies = json.loads(invoke("audit", "--format", "json", out).stdout)["images"][0]["anomalies"]
    (refused,) = [a for a in anomalies if a["kind"] == "boot-refused" and a["function"] == "do_one_initcall"]
    ip, mcount = refused["address"], _symbol(vmlinux, "_mcount")
    old = 0x48000001 | ((mcount - ip) & 0x03FFFFFC)  # bl _mcount from ip (I-form, LK=1)
    quoted = f"replaced (60000000) != old ({old:08x})"
    assert refused["message"].startswith(f"{ip:#x}: {quoted}: "), refused["message"]
    booted = boot(out, STANDARD_APPEND, timeout=40)
    assert booted.ftrace_bug and f"ftrace-powerpc: (____ptrval____): {quoted}" in booted.console


@pytest.mark.boot
@pytest.mark.corpus
def test_a_61_module_site_nopped_with_its_record_is_quoted_as_its_loader_complains(tmp_path: Path) -> None:
    """At a 6.1 module's load ftrace_make_nop() reads the bl first: ``Not expected bl: opcode is
    60000000``. The audit said ``.text+0x10: expected (7c0802a6) != found (60000000)`` (6.6's
    words, at the mflr, which 6.1 checks second) and blamed ftrace_init_nop(), which 6.1 lacks."""
    from boot import QEMU, STANDARD_APPEND, boot, make_initramfs, module_load_script, require_tool, unsigned_module
    from conftest import invoke

    require_tool(QEMU)
    files = require_kernel("6.1")
    src = unsigned_module("6.1", "fs/nls/nls_utf8.ko*", tmp_path / "src.ko")
    (tmp_path / "m").mkdir()
    ko = tmp_path / "m" / "nls_utf8.ko"
    done = invoke("nop", src, "-o", ko, "--only", "char2uni", "--keep-records")
    assert done.exit_code == 0, done.output
    anomalies = json.loads(invoke("audit", "--format", "json", ko).stdout)["images"][0]["anomalies"]
    (refused,) = [a for a in anomalies if a["kind"] == "boot-refused"]
    quoted = "Not expected bl: opcode is 60000000"
    assert refused["function"] == "char2uni", refused
    assert refused["message"].startswith(f"{refused['section']}+{refused['offset']:#x}: {quoted}: "), refused
    assert "ftrace_init_nop" not in refused["message"]
    script = module_load_script(["nls_utf8"])
    booted = boot(files.vmlinux, STANDARD_APPEND, make_initramfs(tmp_path / "i.cpio", files.busybox, [ko], script))
    assert booted.insmod == {"nls_utf8": 0} and booted.ftrace_bug, booted.console[-3000:]
    assert f"ftrace-powerpc: {quoted}" in booted.console
