"""Of two named symbols at one place, a module's kallsyms gives the first in its symbol table.

``find_kallsyms_symbol()`` (kernel/module/kallsyms.c) walks the table and moves on only to a
greater value, so the first symbol of a place names it; the audit's weak-body note named the one
with the greater string-table index. Here nls_utf8's label ``uni2char`` (made NOTYPE, so its site
is a weak body) gets a second name at its place, a .modinfo symbol moved there, later in the table
and later in the string table: the kernel still lists the site as ``uni2char``, and the audit names
it so.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from boot import QEMU, STANDARD_APPEND, boot, make_initramfs, module_load_script, require_kernel, require_tool
from conftest import invoke
from test_module_kallsyms import _edit_symbol, _module

from rewriter.elf import structs as S
from rewriter.elf.image import Image

pytestmark = [pytest.mark.boot, pytest.mark.corpus]


def _second_name_for(path: Path, label: str) -> str:
    """A .modinfo symbol after ``label`` in the table (one no relocation names) takes ``label``'s
    section and value, as a NOTYPE local; its name, returned."""
    image = Image.load(path)
    syms, symtab = image.symbols, image.section(".symtab")
    assert syms is not None and symtab is not None
    t = syms.table
    (target,) = syms.find(label)
    names = [syms.name_at(int(n)) for n in t["st_name"]]
    other = next(i for i, n in enumerate(names) if n.startswith("__UNIQUE_ID_modinfo"))
    assert other > int(target) and int(t["st_name"][other]) > int(t["st_name"][int(target)])
    dt = S.sym_dtype("<")
    row = t[int(target)].copy()
    row["st_name"] = t["st_name"][other]
    row["st_info"] = 0  # STB_LOCAL, STT_NOTYPE
    data = bytearray(path.read_bytes())
    at = symtab.offset + other * dt.itemsize
    data[at : at + dt.itemsize] = row.tobytes()
    path.write_bytes(data)
    return names[other]


@pytest.mark.parametrize("name", ["7.2"])
def test_the_first_symbol_of_a_place_names_a_weak_body(name: str, tmp_path: Path) -> None:
    ko = _module(name, tmp_path / "nls_utf8.ko")
    _edit_symbol(ko, "uni2char", "notype")
    second = _second_name_for(ko, "uni2char")
    notes = json.loads(invoke("audit", "--format", "json", ko).stdout)["images"][0]["anomalies"]
    (weak,) = [a for a in notes if a["kind"] == "weak-body"]
    assert "nearest is uni2char+0x" in weak["message"] and "keeps it" in weak["message"], weak
    assert second not in weak["message"]
    require_tool(QEMU)
    kernel = require_kernel(name)
    script = module_load_script(["nls_utf8"], aff_grep="[nls_utf8]")
    booted = boot(kernel.vmlinux, STANDARD_APPEND, make_initramfs(tmp_path / "i.cpio", kernel.busybox, [ko], script))
    assert booted.done and not booted.ftrace_bug and booted.insmod == {"nls_utf8": 0}, booted.console[-3000:]
    listed = sorted(line.removesuffix(" [nls_utf8]") for line in booted.available_filter_functions or [])
    assert listed == ["char2uni", "init_nls_utf8", "uni2char"]
