"""Which records a module's test_for_valid_rec() disables. At module load ftrace asks
kallsyms_lookup() for each record's symbol (kernel/trace/ftrace.c ``ftrace_module_enable()``), and
a module's lookup (kernel/module/kallsyms.c ``find_kallsyms_symbol()``) takes the nearest defined
symbol before the address that has a name and is not a mapping symbol, of any type. A record more
than FTRACE_MCOUNT_MAX_OFFSET past it is disabled: never listed, never traced.

So an unnamed FUNC does not cover its own site (scan took it as the site's function: traceable),
and a named NOTYPE label at a function's start does (scan found no function: a weak body). Both
are what a tool, not a kernel build, makes; qemu shows what the kernel makes of each here."""

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

from rewriter.elf import structs as S
from rewriter.elf.image import Image


def _module(name: str, out: Path) -> Path:
    return unsigned_module(name, "fs/nls/nls_utf8.ko*", out)


def _edit_symbol(path: Path, name: str, how: str) -> None:
    """``unnamed``: the symbol's st_name becomes 0; ``notype``: its type becomes STT_NOTYPE."""
    image = Image.load(path)
    syms = image.symbols
    assert syms is not None
    (index,) = syms.find(name)
    symtab = image.section(".symtab")
    assert symtab is not None
    at = symtab.offset + int(index) * S.sym_dtype("<").itemsize
    data = bytearray(path.read_bytes())
    if how == "unnamed":
        data[at : at + 4] = bytes(4)
    else:
        data[at + 4] = data[at + 4] & 0xF0  # st_info: keep the binding, type 0
    path.write_bytes(data)


def _traceable(path: Path) -> dict[str, bool]:
    doc = json.loads(invoke("scan", "--format", "json", path).stdout)["images"][0]
    return {s["address"] if s["function"] is None else s["function"]: s["traceable"] for s in doc["sites"]}


@pytest.mark.parametrize("name", ["6.12", "7.2"])
@pytest.mark.parametrize("how", ["unnamed", "notype"])
def test_a_module_records_symbol_is_the_one_kallsyms_finds(name: str, how: str, tmp_path: Path) -> None:
    require_tool(QEMU)
    ko = _module(name, tmp_path / "nls_utf8.ko")
    assert _traceable(ko) == {"char2uni": True, "uni2char": True, "init_nls_utf8": True}
    _edit_symbol(ko, "uni2char", how)
    scanned = json.loads(invoke("scan", "--format", "json", ko).stdout)["images"][0]
    (site,) = [s for s in scanned["sites"] if s["section"] == ".text" and s["function"] != "char2uni"]
    notes = json.loads(invoke("audit", "--format", "json", ko).stdout)["images"][0]["anomalies"]
    weak = [a for a in notes if a["kind"] == "weak-body"]
    assert (len(weak), weak[0]["severity"] if weak else None) == (1, "note")
    if how == "unnamed":
        # the nearest named symbol is char2uni, 0xbc or 0xb8 before the site (6.12, 7.2): disabled
        assert site["function"] is None and site["traceable"] is False
        assert f"char2uni+{site['offset'] - 8:#x}" in weak[0]["message"] and "FTRACE_FL_DISABLED" in weak[0]["message"]
    else:
        # the NOTYPE label uni2char is 8 or 12 bytes before it (7.2, 6.12): kept, traceable, listed
        assert site["function"] is None and site["traceable"] is True
        assert f"uni2char+{site['offset'] - 0xB8:#x}" in weak[0]["message"] and "keeps it" in weak[0]["message"]

    kernel = require_kernel(name)
    script = module_load_script(["nls_utf8"], aff_grep="[nls_utf8]")
    booted = boot(kernel.vmlinux, STANDARD_APPEND, make_initramfs(tmp_path / "i.cpio", kernel.busybox, [ko], script))
    assert booted.done and not booted.ftrace_bug and booted.insmod == {"nls_utf8": 0}, booted.console[-3000:]
    # print_rec() lists a disabled record as __ftrace_invalid_address___<its offset>
    listed = sorted(line.removesuffix(" [nls_utf8]") for line in booted.available_filter_functions or [])
    traced = [f for f in listed if not f.startswith("__ftrace_invalid_address___")]
    assert len(traced) == sum(s["traceable"] for s in scanned["sites"])
    assert traced == ["char2uni", "init_nls_utf8", *([] if how == "unnamed" else ["uni2char"])]
    disabled = [f"__ftrace_invalid_address___{site['offset'] - 8}"] if how == "unnamed" else []
    assert sorted(set(listed) - set(traced)) == disabled
