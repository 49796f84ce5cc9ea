"""Record sections that share a name: gcc 13 and later link each function's
``__patchable_function_entries`` block to a label of the function (SHF_LINK_ORDER; gcc 11 and 12
link them all to the first function, GCC PR 110729), so the assembler makes one record section
per function (tests/test_gcc14.py: gcc 14.2 itself). The link gathers an object's all (the vmlinux
and module linker scripts), and so does the scan. A module that keeps two is refused by the
kernel's loader from 6.12, and read up to its first before: qemu shows both here.

``fixtures/bin/{patchable,ool}-fs-le.o`` are gcc 13's shape with ``-ffunction-sections``, six record sections each
(fixtures/build.sh, ``own_record_sections``). The records are read here independently, with
pyelftools."""

from __future__ import annotations

import json
import shutil
import struct
import subprocess
from pathlib import Path

import pytest
from boot import QEMU, STANDARD_APPEND, boot, make_initramfs, module_load_script, require_kernel, require_tool
from conftest import FIXTURES, invoke, unwrapped
from elftools.elf.elffile import ELFFile
from elftools.elf.relocation import RelocationSection

from rewriter import modload
from rewriter.elf.compress import Compression, decompress
from rewriter.elf.image import Image
from rewriter.errors import ImageError
from rewriter.known import RelaEntry
from rewriter.recordedits import RelaTables
from rewriter.sites import place_text, scan

GCC13_SHAPES = ("patchable-fs-le.o", "ool-fs-le.o")
RECORDS = ".rela__patchable_function_entries"


def _record_tables(path: Path) -> list[list[str]]:
    """Each ``.rela__patchable_function_entries``'s places, as ``section+0xoff``, by pyelftools."""
    with path.open("rb") as f:
        elf = ELFFile(f)
        symtab = elf.get_section_by_name(".symtab")
        out = []
        for sec in elf.iter_sections():
            if not isinstance(sec, RelocationSection) or sec.name != RECORDS:
                continue
            places = []
            for rel in sec.iter_relocations():
                sym = symtab.get_symbol(rel["r_info_sym"])
                text = elf.get_section(sym["st_shndx"]).name
                places.append(f"{text}+{sym['st_value'] + rel['r_addend']:#x}")
            out.append(places)
        return out


def _as_module(src: Path, out: Path, vermagic: str | None = None) -> Path:
    """``src`` with a ``.modinfo`` section: a module, as the tool and the kernel's loader tell one
    (``vermagic``: the kernel it says it was built for; none: a current one)."""
    objcopy = require_tool("powerpc64le-linux-gnu-objcopy")
    info = out.with_suffix(".modinfo")
    info.write_bytes(b"license=GPL\0" + (b"" if vermagic is None else f"vermagic={vermagic} SMP\0".encode()))
    empty = out.with_suffix(".empty")  # the sections every module has, which its loader looks for
    empty.write_bytes(b"")
    subprocess.run(
        [objcopy, f"--add-section=.modinfo={info}", "--set-section-flags=.modinfo=alloc,readonly",
         f"--add-section=.stubs={empty}", "--set-section-flags=.stubs=alloc,code",
         f"--add-section=.gnu.linkonce.this_module={empty}", "--set-section-flags=.gnu.linkonce.this_module=alloc",
         src, out],
        check=True,
    )  # fmt: skip
    return out


@pytest.mark.parametrize("name", GCC13_SHAPES)
def test_an_object_has_every_record_section_read(name: str) -> None:
    path = FIXTURES / "bin" / name
    tables = _record_tables(path)
    assert len(tables) == 6 and all(len(t) == 1 for t in tables)  # one per function
    result = scan(Image.load(path))
    image = Image.load(path)
    recorded = sorted(place_text(image, s.record) for s in result.sites if s.record is not None)
    assert recorded == sorted(p for t in tables for p in t)
    assert result.records.count == 6 and not result.records.unmatched and not result.records.unread
    assert {s.section for s in result.sites} == {p.split("+")[0] for t in tables for p in t}


@pytest.mark.parametrize("name", GCC13_SHAPES)
def test_a_module_with_two_record_sections_is_one_the_kernel_refuses(name: str, tmp_path: Path) -> None:
    ko = _as_module(FIXTURES / "bin" / name, tmp_path / name.replace(".o", ".ko"))
    image = Image.load(ko)
    result = scan(image)
    assert result.kind.value == "module" and modload.shared_names(image) == ("__patchable_function_entries",)
    assert result.records.count == 6 and not result.records.unread  # what the file says: it never loads
    doc = json.loads(invoke("scan", "--format", "json", ko).stdout)["images"][0]
    assert "refuses the module (insmod: File exists)" in doc["summary"]["not_loaded"]
    assert doc["summary"]["traceable"] == 0 and doc["summary"]["untraceable"]["not-loaded"] == 6
    assert not any(s["traceable"] for s in doc["sites"])
    shown = unwrapped(invoke("scan", ko).stdout)
    assert "  NOT LOADED: more than one allocated section named __patchable_function_entries" in shown
    audit = json.loads(invoke("audit", "--format", "json", ko).stdout)
    kinds = [(a["kind"], a["severity"]) for a in audit["images"][0]["anomalies"]]
    assert kinds == [("module-refused", "error")]
    assert invoke("audit", ko).exit_code == 1


@pytest.mark.parametrize("name", GCC13_SHAPES)
def test_an_older_kernels_module_loads_with_its_first_record_section(name: str, tmp_path: Path) -> None:
    """Before 6.12 the loader only warns, and ftrace reads the first section of the name."""
    ko = _as_module(FIXTURES / "bin" / name, tmp_path / name.replace(".o", ".ko"), "6.11.0")
    first, *others = _record_tables(ko)
    image = Image.load(ko)
    result = scan(image)
    assert result.not_loaded is None
    assert [place_text(image, s.record) for s in result.sites if s.record is not None] == first
    assert [p.text for p in result.records.unread] == [p for t in others for p in t]
    doc = json.loads(invoke("scan", "--format", "json", ko).stdout)["images"][0]
    assert doc["records"]["unread"] == [p for t in others for p in t] and doc["summary"]["traceable"] == 1
    if name.startswith("ool"):  # .stubs: one per entry of the first section (module_64.c)
        assert [(a["name"], a["count"], a["covers"]) for a in doc["stubs"]] == [(".stubs", 1, True)]
    shown = unwrapped(invoke("scan", ko).stdout).splitlines()[0]
    assert shown.endswith("; 5 in record sections the module loader never reads")
    audit = json.loads(invoke("audit", "--format", "json", ko).stdout)
    (finding,) = [a for a in audit["images"][0]["anomalies"] if a["severity"] != "note"]
    assert finding["kind"] == "unread-records" and finding["message"].startswith("5 entries in record sections")
    assert (finding["section"], finding["offset"], finding["function"]) == (".text.leaf_add", 0, "leaf_add")
    ko12 = _as_module(FIXTURES / "bin" / name, tmp_path / "k12.ko", "6.12.0")
    assert scan(Image.load(ko12)).not_loaded is not None


def test_a_module_with_one_record_section_loads(tmp_path: Path) -> None:
    ko = _as_module(FIXTURES / "bin" / "ool-le.o", tmp_path / "ool-le.ko")
    image = Image.load(ko)
    result = scan(image)
    assert result.kind.value == "module" and modload.shared_names(image) == () and result.records.count == 6
    doc = json.loads(invoke("scan", "--format", "json", ko).stdout)["images"][0]
    assert doc["summary"]["not_loaded"] is None and doc["summary"]["traceable"] == 6


@pytest.mark.parametrize("name", GCC13_SHAPES)
def test_records_dropped_from_several_sections_come_back_where_they_were(name: str, tmp_path: Path) -> None:
    src = tmp_path / name
    shutil.copyfile(FIXTURES / "bin" / name, src)
    nopped, back, undone = tmp_path / "nopped.o", tmp_path / "back.o", tmp_path / "undone.o"
    done = invoke("nop", src, "-o", nopped, "--drop-records", "--exclude", "sum8")
    assert done.exit_code == 0, done.output
    if name.startswith("ool"):  # one stub per entry of every record section the link gathers
        assert "ool stubs used/available: before .stubs 6/6; after .stubs 1/6" in done.output
    assert [len(t) for t in _record_tables(nopped)] == [0, 0, 0, 1, 0, 0]
    assert invoke("verify", src, nopped).exit_code == 0
    done = invoke("apply", nopped, "--to", "enabled", "-o", back)  # each record into its own table
    assert done.exit_code == 0, done.output
    assert back.read_bytes() == src.read_bytes()
    assert invoke("undo", nopped, "-o", undone).exit_code == 0
    assert undone.read_bytes() == src.read_bytes()


def test_a_logged_relocation_goes_back_into_the_table_at_its_offset() -> None:
    """Six tables share the name: the log's table offset picks one; a log without offsets (older
    than them) means the first, the only one its rewrite read; an offset or a name that no RELA
    table here has is refused."""
    image = Image.load(FIXTURES / "bin" / "ool-fs-le.o")
    tables = [s for s in image.relocation_sections() if s.name == RECORDS]
    assert len(tables) == 6
    for t in tables:
        assert RelaTables(image).rela_section(RelaEntry(RECORDS, bytes(24), t.offset)) == t
    assert RelaTables(image).rela_section(RelaEntry(RECORDS, bytes(24))) == tables[0]
    with pytest.raises(ImageError, match="at offset 0x1, which is no RELA table of that name here"):
        RelaTables(image).rela_section(RelaEntry(RECORDS, bytes(24), 1))
    with pytest.raises(ImageError, match=r"into \.rela\.nothing, which is no RELA table of that name here"):
        RelaTables(image).rela_section(RelaEntry(".rela.nothing", bytes(24)))
    one = Image.load(FIXTURES / "bin" / "ool-le.o")
    assert RelaTables(one).rela_section(RelaEntry(RECORDS, bytes(24))).name == RECORDS  # one of the name: that one


# -- the kernel's word: a real module split into two record sections, loaded under qemu ------------


def _split_records(data: bytes, name: str, keep: int) -> bytes:
    """A little-endian ELF64 module whose record section ``name`` keeps its first ``keep`` entries,
    the rest moved into a second section of that name (and a second ``.rela`` table, its
    ``r_offset`` made relative to it), as a module linked from gcc 13 objects without
    scripts/module.lds has them. The new section headers go after the old ones, at the end of
    the file (a module signature, if any, dropped)."""
    (shoff,) = struct.unpack_from("<Q", data, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", data, 0x3A)
    fields = "<IIQQQQIIQQ"  # name type flags addr offset size link info addralign entsize
    headers = [list(struct.unpack_from(fields, data, shoff + i * shentsize)) for i in range(shnum)]
    strtab = headers[shstrndx]
    names = [data[strtab[4] + h[0] : data.index(b"\0", strtab[4] + h[0])].decode() for h in headers]
    table = names.index(name)
    (rela,) = [i for i, n in enumerate(names) if n == ".rela" + name and headers[i][7] == table]
    end = max([shoff + shnum * shentsize] + [h[4] + h[5] for h in headers if h[1] != 8])  # SHT_NOBITS: 8
    out = bytearray(data[:end])
    entries = headers[rela][5] // 24
    offsets = [struct.unpack_from("<Q", out, headers[rela][4] + 24 * k)[0] for k in range(entries)]
    assert offsets == [8 * k for k in range(entries)] and keep < entries
    for k in range(keep, entries):  # r_offset into the new section
        struct.pack_into("<Q", out, headers[rela][4] + 24 * k, offsets[k] - 8 * keep)
    new_table, new_rela = list(headers[table]), list(headers[rela])
    new_table[4], new_table[5] = headers[table][4] + 8 * keep, 8 * (entries - keep)
    new_rela[4], new_rela[5], new_rela[7] = headers[rela][4] + 24 * keep, 24 * (entries - keep), shnum
    headers[table][5], headers[rela][5] = 8 * keep, 24 * keep
    out += bytes(-len(out) % 8)
    struct.pack_into("<Q", out, 0x28, len(out))  # e_shoff
    struct.pack_into("<HHH", out, 0x3A, shentsize, shnum + 2, shstrndx)
    for h in [*headers, new_table, new_rela]:
        out += struct.pack(fields, *h)
    return bytes(out)


@pytest.mark.parametrize(("name", "table"), [("6.1", "__mcount_loc"), *((k, RECORDS[5:]) for k in ("6.12", "7.2"))])
def test_the_kernel_makes_of_a_module_with_two_record_sections_what_scan_says(
    name: str, table: str, tmp_path: Path
) -> None:
    """kvm.ko with its records split in two sections of one name. 6.12 and 7.2 refuse it: the
    loader's sysfs cannot make /sys/module/kvm/sections/<table> twice. 6.1 warns, loads it, and
    ftrace reads the first section only. scan and audit say each."""
    require_tool(QEMU)
    kernel = require_kernel(name)
    src = next(kernel.modules_dir.glob("arch/powerpc/kvm/kvm.ko*"))
    whole = tmp_path / "whole.ko"
    whole.write_bytes(decompress(src, src.read_bytes(), Compression.XZ) if src.suffix == ".xz" else src.read_bytes())
    ko = tmp_path / "kvm.ko"
    ko.write_bytes(_split_records(whole.read_bytes(), table, 100))
    split_image, whole_image = Image.load(ko), Image.load(whole)
    split, unsplit = scan(split_image), scan(whole_image)
    assert modload.shared_names(split_image) == (table,) and modload.shared_names(whole_image) == ()
    loads = name == "6.1"
    doc = json.loads(invoke("scan", "--format", "json", ko).stdout)["images"][0]
    audit = json.loads(invoke("audit", "--format", "json", ko).stdout)
    found = [a["kind"] for a in audit["images"][0]["anomalies"] if a["severity"] != "note"]
    if loads:
        assert split.not_loaded is None and split.records.count == 100
        assert len(split.records.unread) == unsplit.records.count - 100 > 100
        # mprofile: the unread records' `bl _mcount` stay live: unrecorded sites, each a warning
        assert found.count("unread-records") == 1 and set(found) == {"unread-records", "unrecorded"}
        assert found.count("unrecorded") == sum(not s.recorded for s in split.sites) == len(split.records.unread)
    else:
        assert split.not_loaded is not None and split.records.count == unsplit.records.count
        assert [(s.function, s.record) for s in split.sites] == [(s.function, s.record) for s in unsplit.sites]
        assert doc["summary"]["traceable"] == 0 and found == ["module-refused"]

    script = module_load_script(["kvm"], aff_grep="[kvm]")
    booted = boot(kernel.vmlinux, STANDARD_APPEND, make_initramfs(tmp_path / "i.cpio", kernel.busybox, [ko], script))

    assert booted.done and not booted.ftrace_bug and not booted.panicked, booted.console[-3000:]
    assert f"sysfs: cannot create duplicate filename '/module/kvm/sections/{table}'" in booted.console
    listed = [line.removesuffix(" [kvm]") for line in booted.available_filter_functions or [] if line.endswith("[kvm]")]
    if loads:
        assert booted.insmod == {"kvm": 0} and booted.tracer_rc == 0
        assert len(listed) == sum(s.recorded for s in split.sites) == 100
        named = {s.function for s in split.sites if s.function is not None and s.traceable}
        assert named <= set(listed)
        unread = {p.text for p in split.records.unread}
        of_unread = {s.function for s in unsplit.sites if s.record and place_text(whole_image, s.record) in unread}
        assert not set(listed) & (of_unread - {s.function for s in split.sites})
    else:
        assert booted.insmod == {"kvm": 17}  # EEXIST
        assert "insmod: can't insert '/modules/kvm.ko': File exists" in booted.console
        assert listed == []
