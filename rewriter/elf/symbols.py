"""Functions and places: where each function's code starts, in any ABI and file type.

A *place* is one number that names a spot in the image, so that numpy can sort and search
sites, records and functions together:

* linked images (ET_EXEC/ET_DYN): the virtual address;
* relocatable files (ET_REL): ``section_index << PLACE_SHIFT | offset_in_section``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from rewriter import arrays
from rewriter.elf import structs as S
from rewriter.elf.image import Abi, Image, Section, index_name

PLACE_SHIFT = 40  # sections are far smaller than 1 TiB


def rel_place(shndx: np.ndarray | int, offset: np.ndarray | int) -> np.ndarray:
    return (np.asarray(shndx, dtype=np.uint64) << np.uint64(PLACE_SHIFT)) | np.asarray(offset, dtype=np.uint64)


def join_place(shndx: int, offset: int) -> int:
    """:func:`rel_place` of one place, as a Python int (no numpy scalar in a per-entry loop)."""
    return shndx << PLACE_SHIFT | offset


def split_place(place: int) -> tuple[int, int]:
    """The inverse of :func:`join_place`: (section index, offset in it)."""
    return place >> PLACE_SHIFT, place & ((1 << PLACE_SHIFT) - 1)


@dataclass(frozen=True)
class Functions:
    """Function symbols sorted by code start (a place). ``lep`` is the ELFv2 local entry point:
    the global entry plus the offset in st_other; for ELFv1 and ELFv2 functions without a TOC
    prologue it equals ``start``. ``name_index`` points into the image's string table."""

    start: np.ndarray
    lep: np.ndarray
    end: np.ndarray
    name_index: np.ndarray

    def __len__(self) -> int:
        return len(self.start)

    def containing(self, places: np.ndarray) -> np.ndarray:
        """Index of the function each place lies in, or -1. A place past a sized function's end
        belongs to no function; zero-sized symbols (assembly) extend to the next symbol."""
        if not len(self.start):  # a stripped file, or one whose symbols name no function
            return np.full(len(places), -1, dtype=np.int64)
        i = np.searchsorted(self.start, places, side="right") - 1
        ok = i >= 0
        j = np.where(ok, i, 0)
        inside = ok & ((self.end[j] > places) | (self.end[j] == self.start[j]))
        return np.where(inside, i, -1)

    def lep_of(self, index: np.ndarray) -> np.ndarray:
        """The local entry point of each function ``index`` (from :meth:`containing`); 0 for -1."""
        if not len(self.lep):
            return np.zeros(len(index), dtype=np.uint64)
        return np.where(index >= 0, self.lep[np.where(index >= 0, index, 0)], np.uint64(0))


def _empty() -> Functions:
    z = np.zeros(0, dtype=np.uint64)
    return Functions(z, z, z, np.zeros(0, dtype=np.uint32))


def functions(image: Image) -> Functions:
    rows = _function_symbols(image)
    if rows is None:
        return _empty()
    start, size, name, lep = rows
    order = np.lexsort((name, start))
    # Aliases share a start: keep the first name in string-table order for a stable answer.
    keep = order[_first_of_each_start(start[order])]
    start, size, name, lep = start[keep], size[keep], name[keep], lep[keep]
    return Functions(start, lep, start + size, name.astype(np.uint32))


def aliases(image: Image) -> dict[str, tuple[str, ...]]:
    """The other names of each function that has several (one start: ``sys_ni_syscall`` and the
    syscalls that fall back to it), keyed by the name :func:`functions` keeps for it."""
    rows, syms = _function_symbols(image), image.symbols
    if rows is None or syms is None:
        return {}
    start, _, name, _ = rows
    order = np.lexsort((name, start))
    first = _first_of_each_start(start[order])
    if first.all():
        return {}
    # each row's first row: the index of the last row at or before it that begins a start
    leader = np.maximum.accumulate(np.where(first, np.arange(len(first)), 0))
    others = np.flatnonzero(~first)
    kept = syms.names_at(name[order[leader[others]]].tolist())
    more = syms.names_at(name[order[others]].tolist())
    out: dict[str, list[str]] = {}
    for k, m in zip(kept, more, strict=True):
        if m != k:  # one symbol given twice
            out.setdefault(k, []).append(m)
    return {k: tuple(dict.fromkeys(v)) for k, v in out.items()}


def _first_of_each_start(starts: np.ndarray) -> np.ndarray:
    """Of sorted ``starts``, whether each is the first of its value."""
    first = np.ones(len(starts), dtype=bool)
    first[1:] = starts[1:] != starts[:-1]
    return first


def _function_symbols(image: Image) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None:
    """Every function symbol's code start (a place), size, string-table index and local entry
    point, aliases included; None for an image with no symbol table."""
    syms = image.symbols
    if syms is None:
        return None
    t = syms.table
    shndx = t["st_shndx"].astype(np.int64)
    is_func = (S.st_type(t["st_info"]) == S.STT_FUNC) & (shndx > 0) & (shndx < S.SHN_LORESERVE)
    opd = image.section(".opd")
    if image.abi is Abi.ELFV1 and opd is not None:
        in_opd = is_func & (shndx == opd.shndx)
        code = _opd_code_places(image, opd, t["st_value"][in_opd])
        starts = [code, _places(image, shndx[is_func & ~in_opd], t["st_value"][is_func & ~in_opd])]
        sizes = [t["st_size"][in_opd], t["st_size"][is_func & ~in_opd]]
        names = [t["st_name"][in_opd], t["st_name"][is_func & ~in_opd]]
        start = np.concatenate(starts)
        size = np.concatenate(sizes).astype(np.uint64)
        name = np.concatenate(names)
        keep = start != np.uint64(0xFFFF_FFFF_FFFF_FFFF)
        return start[keep], size[keep], name[keep], start[keep]
    f = t[is_func]  # the rows once, then their fields: each numpy call is a fixed cost in a module
    start = _places(image, f["st_shndx"], f["st_value"])
    lep = start + S.ppc64_local_entry_offset(f["st_other"]).astype(np.uint64)
    return start, f["st_size"].astype(np.uint64), f["st_name"], lep


def _places(image: Image, shndx: np.ndarray, value: np.ndarray) -> np.ndarray:
    if image.type == S.ET_REL:
        return rel_place(shndx, value)
    return value.astype(np.uint64)


def _opd_code_places(image: Image, opd: Section, values: np.ndarray) -> np.ndarray:
    """ELFv1: a function symbol names its descriptor in .opd, whose code address (``S.OPD_ENTRY``,
    the first doubleword) is in the file (linked) or an R_PPC64_ADDR64 relocation's target
    (relocatable)."""
    missing = np.uint64(0xFFFF_FFFF_FFFF_FFFF)
    if image.type != S.ET_REL:
        d = image.table(opd, S.addr_dtype(image.endian), "descriptor")
        # In uint64, where a kernel's addresses live (0xc000...): past int64's range, and a value
        # below .opd wraps to a huge index that the bound refuses.
        place = values.astype(np.uint64) + np.uint64(S.OPD_ENTRY)
        idx = (place - np.uint64(opd.addr)) // np.uint64(d.dtype.itemsize)
        ok = idx < np.uint64(len(d))
        if not len(d):
            return np.full(len(values), missing, dtype=np.uint64)
        return np.where(ok, d[np.where(ok, idx, 0)].astype(np.uint64), missing)
    out = np.full(len(values), missing, dtype=np.uint64)
    syms = image.symbols
    assert syms is not None
    for rsec in image.relocation_sections():
        if rsec.info != opd.shndx:
            continue
        rela = image.relocations(rsec)
        rela = rela[S.r_type(rela["r_info"]) == S.R_PPC64_ADDR64]
        target = reloc_target_places(image, rela)
        pos = np.searchsorted(rela["r_offset"], values)
        hit = pos < len(rela)
        hit[hit] = rela["r_offset"][pos[hit]] == values[hit]
        out[hit] = target[pos[hit]]
    return out


def reloc_target_places(image: Image, rela: np.ndarray) -> np.ndarray:
    """Place named by S + A of each relocation (symbol's section and value plus addend)."""
    syms = image.symbols
    assert syms is not None
    symi = S.r_sym(rela["r_info"]).astype(np.int64)
    if len(symi) and int(symi.max()) >= len(syms.table):
        raise image.error("relocation names a symbol past the end of the symbol table")
    st = syms.table[symi]
    value = st["st_value"].astype(np.int64) + rela["r_addend"]
    return rel_place(st["st_shndx"], value.astype(np.uint64))


def relocation_target_text(image: Image, shndx: int, offset: int, types: np.ndarray) -> str | None:
    """ET_REL: what the relocation of one of ``types`` at ``offset`` in section ``shndx`` points
    to, as people read it: the symbol's name (S), with the addend (A) when it is not 0 (``_mcount``,
    ``memcpy+0x8``); for a symbol with no name of its own, a section symbol (gABI: STT_SECTION),
    the place S + A (``.text.unlikely+0x40``). None: no such relocation there.

    Each call reads the section's relocations: for the few words a report prints, not for a scan."""
    syms = image.symbols
    if image.type != S.ET_REL or syms is None:
        return None
    for rsec in image.relocation_sections():
        if rsec.info != shndx or rsec.link >= len(image.sections) or image.sections[rsec.link].type != S.SHT_SYMTAB:
            continue
        rela = image.relocations(rsec)
        hit = np.flatnonzero((rela["r_offset"] == offset) & arrays.member(S.r_type(rela["r_info"]), types))
        if not len(hit):
            continue
        row = rela[hit[0]]
        symi = int(S.r_sym(row["r_info"]))
        addend = int(row["r_addend"])
        name = syms.name(symi)
        if name and int(S.st_type(syms.table["st_info"][symi])) != S.STT_SECTION:
            return name + (f"{addend:+#x}" if addend else "")
        where = int(syms.table["st_shndx"][symi])
        section = image.sections[where].name if 0 < where < len(image.sections) else ""
        return f"{section or index_name(where)}{int(syms.table['st_value'][symi]) + addend:+#x}"
    return None


def code_addrs(image: Image, names: Sequence[str], local_entries: bool = False) -> list[int]:
    """Code addresses of the defined symbols called ``names`` (ELFv1 descriptors followed); with
    ``local_entries``, an ELFv2 function's local entry too, where a direct call from code that
    shares its TOC lands (``bl _mcount+0x8`` when _mcount sets up r2: glibc's, a user's own)."""
    syms = image.symbols
    if syms is None:
        return []
    found = [hit for hit in (syms.find(n) for n in names) if len(hit)]
    if not found:  # a module defines no tracer and no _mcount
        return []
    opd = image.section(".opd")
    out = []
    for i in np.concatenate(found).tolist():
        row = syms.table[i]
        if int(row["st_shndx"]) == S.SHN_UNDEF:
            continue
        value = int(row["st_value"])
        if image.abi is Abi.ELFV1 and opd is not None and int(row["st_shndx"]) == opd.shndx:
            off = image.offset_of(value + S.OPD_ENTRY)
            value = int.from_bytes(image.data[off : off + 8], image.byteorder)
        out.append(value)
        local = int(S.ppc64_local_entry_offset(np.array([row["st_other"]]))[0]) if local_entries else 0
        if local and image.abi is not Abi.ELFV1:
            out.append(value + local)
    return out
