"""Findings of the black-box fuzz pass in the r0 walk and the relocation places it reads.

Each input is real: an object assembled here by the cross toolchain, or ``fixtures/bin/prof-le.o``
with a few header or table bytes changed. The walk's bound (FINDINGS §1), a relocation section
linked to a SHT_DYNSYM larger than ``.symtab`` (§6b), an S + A that no place can hold (§9) and the
evidence lines' relocation look-up (§10).
"""

from __future__ import annotations

import io
import json
import struct
import subprocess
from collections import Counter
from pathlib import Path

import pytest
from boot import require_tool
from conftest import FIXTURES, assert_one_line, invoke, time_bound
from elftools.elf.elffile import ELFFile

from rewriter import audit, flow
from rewriter.elf import structs as S
from rewriter.elf.image import Image, Section
from rewriter.elf.symbols import PLACE_SHIFT, join_place, rel_place, split_place
from rewriter.ppc.table import build_table
from rewriter.ppc.words import MFLR_R0, NOP

PROF = FIXTURES / "bin" / "prof-le.o"  # little-endian, 6 mprofile sites, `.symtab` of 20 symbols


# -- §1: the walk's bound ------------------------------------------------------------------------


def _forks(tmp_path: Path, n: int) -> Path:
    """One mprofile site, then ``n`` forks that each set one more bit of r0 on one side
    (``beq 1f; ori 0,0,1<<k; 1:``; ``oris`` and ``rldimi`` for the higher bits), then ``li 0,0``:
    r0 is written before any read, so every path is safe, but 2^n of them reach the end each with
    other bits of r0 known, and the walk tells them apart."""
    gcc = require_tool("powerpc64le-linux-gnu-gcc")
    lines = ["\t.abiversion 2", "\t.text", "\t.globl f", "\t.type f,@function", "\t.p2align 4", "f:"]
    lines += ["\tmflr 0", ".Lsite:", "\tbl _mcount", "\tnop"]
    for k in range(n):
        if k < 16:
            sets = f"ori 0,0,{1 << k}"
        elif k < 32:
            sets = f"oris 0,0,{1 << (k - 16)}"
        else:  # rldimi 0,5,SH,MB with MB = 63 - SH: one bit of the high word from r5
            sets = f"rldimi 0,5,{63 - (k - 32)},{k - 32}"
        lines += [f"\tbeq 0,.L{k}", f"\t{sets}", f".L{k}:"]
    lines += ["\tli 0,0", "\tblr", "\t.size f,.-f"]
    lines += ['\t.section __mcount_loc,"a",@progbits', "\t.p2align 3", "\t.quad .Lsite"]
    src, obj = tmp_path / f"forks{n}.s", tmp_path / f"forks{n}.o"
    src.write_text("\n".join(lines) + "\n")
    subprocess.run([gcc, "-c", str(src), "-o", str(obj)], check=True)
    return obj


def test_a_walk_through_forty_forks_that_set_bits_of_r0_gives_up_unknown(tmp_path: Path) -> None:
    """2^40 states unbounded (21 forks took 16 s and 900 MB): the walk stops at its bound and says
    so, ``unknown`` with the reason, never ``safe``; a read it reaches first is still ``live``."""
    obj, report = _forks(tmp_path, 40), tmp_path / "audit.json"
    with time_bound(15):
        result = invoke("audit", "--format", "json", "-o", report, obj)
    assert result.exit_code == 0, result.output
    safety = json.loads(report.read_text())["images"][0]["mflr_nop_safety"]
    assert (safety["safe"], safety["live"], safety["unknown"]) == (0, 0, 1)
    (site,) = safety["sites"]
    assert site["verdict"] == "unknown" and site["reason"] == flow.Why.TOO_MANY_STATES.value
    assert f"gave up after {flow.MAX_STATES} states" in site["reason"]
    assert site["evidence"][-1].endswith(f"<- {flow.Why.TOO_MANY_STATES.value}")
    # below the bound nothing changes: a few forks, then a store of r0, is live at the store
    src, obj = tmp_path / "read.s", tmp_path / "read.o"
    src.write_text(_forks(tmp_path, 4).with_suffix(".s").read_text().replace("\tli 0,0\n", "\tstd 0,16(1)\n"))
    subprocess.run([require_tool("powerpc64le-linux-gnu-gcc"), "-c", str(src), "-o", str(obj)], check=True)
    got = audit.audit_one(obj, "", build_table())
    assert got.audit is not None, got.error
    (read,) = got.audit.sites
    assert (read.safety.verdict, read.safety.why) == (flow.Verdict.LIVE, flow.Why.READS_R0)
    assert read.evidence[-1].endswith("std r0, 0x10(r1)  <- " + flow.Why.READS_R0.value)


def test_nop_check_r0_through_forty_forks_ends_and_passes_the_unknown_site(tmp_path: Path) -> None:
    """``--check-r0`` walks the same way; an unknown verdict passes (docs/rewrite.md, the r0 rule)."""
    obj, out = _forks(tmp_path, 40), tmp_path / "out.o"
    with time_bound(15):
        result = invoke("nop", obj, "-o", out, "--check-r0")
    assert result.exit_code == 0, result.output
    assert out.exists()


# -- prof-le.o with bytes changed ----------------------------------------------------------------


def _section(data: bytes, name: str) -> tuple[int, int]:
    """(index, file offset of the section header) of section ``name``."""
    elf = ELFFile(io.BytesIO(data))
    index = next(i for i, s in enumerate(elf.iter_sections()) if s.name == name)
    return index, elf["e_shoff"] + index * elf["e_shentsize"]


def _rela_row(data: bytes, name: str, entry: int) -> int:
    """The file offset of entry ``entry`` of relocation section ``name``."""
    elf = ELFFile(io.BytesIO(data))
    return int(elf.get_section_by_name(name)["sh_offset"]) + entry * 24


_SH = {"type": (4, "<I"), "offset": (24, "<Q"), "size": (32, "<Q"), "link": (40, "<I"), "entsize": (56, "<Q")}


def _set_header(data: bytearray, header: int, **fields: int) -> None:
    for field, value in fields.items():
        at, fmt = _SH[field]
        struct.pack_into(fmt, data, header + at, value)


def _with_dynsym_link(tmp_path: Path) -> Path:
    """prof-le.o whose ``.rela.text`` links to a SHT_DYNSYM of 40 entries (the empty
    ``.note.GNU-stack`` made one, its data appended) and whose first R_PPC64_REL24 (``bl _mcount``
    at .text+0x4) names symbol 30: in range of the table it links to, past the 20 of ``.symtab``."""
    data = bytearray(PROF.read_bytes())
    data += bytes(-len(data) % 8)
    dynsym_at = len(data)
    data += bytes(24 * 40)
    note, note_header = _section(data, ".note.GNU-stack")
    strtab, _ = _section(data, ".strtab")
    _set_header(data, note_header, type=S.SHT_DYNSYM, offset=dynsym_at, size=24 * 40, entsize=24, link=strtab)
    _set_header(data, _section(data, ".rela.text")[1], link=note)
    row = _rela_row(data, ".rela.text", 0)
    (info,) = struct.unpack_from("<Q", data, row + 8)
    assert info & 0xFFFF_FFFF == S.R_PPC64_REL24
    struct.pack_into("<Q", data, row + 8, 30 << 32 | S.R_PPC64_REL24)
    out = tmp_path / "dynsym.o"
    out.write_bytes(data)
    return out


def test_a_branch_relocation_past_symtab_through_a_dynsym_link_is_bad_input(tmp_path: Path) -> None:
    """The walk read ``.symtab`` at the relocation's symbol index before anything bounded it
    there (exit 3 from ``nop --check-r0``, IndexError; the audit's safety net said 'corrupt ELF
    data')."""
    bad, out = _with_dynsym_link(tmp_path), tmp_path / "out" / "y.o"
    out.parent.mkdir()
    words = (str(bad), "relocation section .rela.text entry 0 names symbol 30, past the 20 of .symtab")
    assert_one_line(invoke("nop", bad, "-o", out, "--check-r0"), 2, "error", *words)
    assert not any(out.parent.iterdir())
    assert_one_line(invoke("audit", bad), 2, "error", *words)


def _with_record_addend(tmp_path: Path, delta: int) -> tuple[Path, int]:
    """prof-le.o with the first ``.rela__mcount_loc`` addend moved by ``delta``; the new addend."""
    data = bytearray(PROF.read_bytes())
    row = _rela_row(data, ".rela__mcount_loc", 0)
    (addend,) = struct.unpack_from("<q", data, row + 16)
    struct.pack_into("<q", data, row + 16, addend + delta)
    out = tmp_path / f"addend{delta:+d}.o"
    out.write_bytes(data)
    return out, addend + delta


@pytest.mark.parametrize("delta", [1 << 40, -(1 << 20)], ids=["plus-1TiB", "minus-1MiB"])
def test_a_record_whose_offset_no_place_holds_is_bad_input_naming_the_entry(tmp_path: Path, delta: int) -> None:
    """S + A of 1 TiB or more spilled into the section bits of a place (``.text+2^40+0x4`` was a
    record at ``.rela.text+0x4``), a negative one named section 16777215: both scanned, exit 0."""
    bad, addend = _with_record_addend(tmp_path, delta)
    out = tmp_path / "out" / "y.o"
    out.parent.mkdir()
    named = f".text{addend:+#x}"  # the record's symbol is .text's section symbol (value 0)
    words = (str(bad), f"relocation section .rela__mcount_loc entry 0 names {named}", "no section has")
    assert_one_line(invoke("scan", bad), 2, "error", *words)
    assert_one_line(invoke("nop", bad, "-o", out, "--drop-records"), 2, "error", *words)
    assert not any(out.parent.iterdir())


def test_an_offset_past_what_a_place_holds_stays_in_its_own_section() -> None:
    """``rel_place`` ORed the offset into the section index: section 1 at 2^40 + 0x14 was
    section 2 at 0x14. Held at the last offset, it names nothing, in its own section."""
    last = (1 << PLACE_SHIFT) - 1  # symbols.LAST_OFFSET
    for offset in (1 << 40 | 0x14, (1 << 64) - 0x10):
        place = int(rel_place(1, offset))
        assert split_place(place) == (1, last)
        assert join_place(1, offset) == place
    assert split_place(int(rel_place(3, 0x14))) == (3, 0x14) == split_place(join_place(3, 0x14))


# -- §10: evidence lines read the relocations once per image --------------------------------------


def _broken(tmp_path: Path, sites: int) -> Path:
    """prof-le.o with the ``mflr r0`` of its first ``sites`` sites nopped: each a ``broken``
    site, whose anomaly prints its slots, ``bl _mcount`` named from its relocation."""
    data = bytearray(PROF.read_bytes())
    elf = ELFFile(io.BytesIO(data))
    text = elf.get_section_by_name(".text")
    start, size = int(text["sh_offset"]), int(text["sh_size"])
    mflr = [start + k for k in range(0, size, 4) if struct.unpack_from("<I", data, start + k)[0] == MFLR_R0]
    for at in mflr[:sites]:
        struct.pack_into("<I", data, at, NOP)
    out = tmp_path / f"broken{sites}.o"
    out.write_bytes(data)
    return out


def test_evidence_lines_read_the_relocations_once_however_many_they_are(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each evidence word that branches looked its relocation up by reading every relocation
    table again: 10,398 broken sites of amdgpu.ko took 10 s to audit, against 0.5 s."""
    reads: Counter[str] = Counter()
    relocations = Image.relocations

    def counted(image: Image, sec: Section) -> object:
        reads[sec.name] += 1
        return relocations(image, sec)

    monkeypatch.setattr(Image, "relocations", counted)
    table, lines, per_file = build_table(), [], []
    for sites in (1, 6):  # one broken site, then every mflr r0 nopped
        reads.clear()
        got = audit.audit_one(_broken(tmp_path, sites), "", table)
        assert got.audit is not None, got.error
        broken = [a for a in got.audit.anomalies if a.kind.value == "broken"]
        assert all(a.evidence[-1].endswith("bl _mcount") for a in broken), broken
        lines.append(len(broken))
        per_file.append(reads[".rela.text"])
    assert lines[0] == 1 and lines[1] >= 5, lines
    assert per_file[0] == per_file[1], per_file
