"""Functions and places: where each function's code starts, in any ABI and file type.

A *place* is one number that names a spot in the image, so that numpy can sort and search
sites, records and functions together:

* linked images (ET_EXEC/ET_DYN): the virtual address;
* relocatable files (ET_REL): ``section_index << PLACE_SHIFT | offset_in_section``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final, NamedTuple

import numpy as np

from rewriter import arrays
from rewriter.elf import structs as S
from rewriter.elf.image import Abi, Image, Section, Symbols, index_name
from rewriter.errors import ImageError

PLACE_SHIFT = 40  # sections are far smaller than 1 TiB
LAST_OFFSET: Final = (1 << PLACE_SHIFT) - 1
"""The largest offset a place holds. A larger one (a symbol value or ``r_offset`` that lies, or a
negative one wrapped to uint64) is held at it: past the end of any section a file can hold, so it
names nothing, where an OR of its high bits into the section index named another section's word
(``.text+0x10000000014`` read as ``.rela.text+0x14``)."""


def rel_place(shndx: np.ndarray | int, offset: np.ndarray | int) -> np.ndarray:
    held = np.minimum(np.asarray(offset, dtype=np.uint64), np.uint64(LAST_OFFSET))
    return (np.asarray(shndx, dtype=np.uint64) << np.uint64(PLACE_SHIFT)) | held


def join_place(shndx: int, offset: int) -> int:
    """:func:`rel_place` of one place, as a Python int (no numpy scalar in a per-entry loop)."""
    return shndx << PLACE_SHIFT | (offset if 0 <= offset <= LAST_OFFSET else LAST_OFFSET)


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
    start, size, name, lep, _ = rows
    # Aliases share a start: keep the name the kernel gives their sites (_kallsyms_order).
    order = _kallsyms_order(image, rows)
    keep = order[_first_of_each_start(start[order])]
    start, size, name, lep = start[keep], size[keep], name[keep], lep[keep]
    return Functions(start, lep, start + size, name.astype(np.uint32))


def plain_name(strtab: bytes, st_name: int) -> bool:
    """Whether the name at ``st_name`` is one :func:`lookup_symbols` surely keeps: it starts with
    none of the bytes that can begin an empty name or a mapping symbol (NUL, ``$``, ``.``, ``L``). A
    quick test for the common case; a name it fails may still be kept."""
    return st_name < len(strtab) and strtab[st_name] not in b"\0$.L"


def _name_bytes(syms: Symbols, at: int) -> np.ndarray:
    """Byte ``at`` of each symbol's name (0 past the string table's end). Image.symbols bounds
    st_name by the table, so only ``at`` can reach past it."""
    chars = np.frombuffer(syms.strtab, np.uint8)
    index = syms.table["st_name"].astype(np.int64) + at
    inside = index < len(chars)
    out: np.ndarray = np.where(inside, chars[np.where(inside, index, 0)] if len(chars) else 0, 0)
    return out


def _named(syms: Symbols) -> np.ndarray:
    """Which symbols have a name (a string-table index to a non-empty string)."""
    named: np.ndarray = _name_bytes(syms, 0) != 0
    return named


def lookup_symbols(image: Image) -> tuple[np.ndarray, np.ndarray]:
    """The places a loaded module's ``kallsyms_lookup()`` measures an address from, sorted (those
    of one place in symbol-table order: the first is the name it gives), and each one's string-table
    index (kernel/module/kallsyms.c ``find_kallsyms_symbol()``, which
    ftrace's test_for_valid_rec() asks at module load): every defined symbol of any type with a
    name, but for the mapping symbols ``$...``, ``.L...`` and ``L0...`` (``is_mapping_symbol()``).
    An unnamed symbol is passed over, a FUNC a tool left without a name among them; a named NOTYPE
    label counts. ELFv2 only (an ELFv1 symbol names a descriptor): elsewhere, the functions."""
    syms = image.symbols
    if syms is None or image.abi is Abi.ELFV1:
        funcs = functions(image)
        return funcs.start, funcs.name_index
    t = syms.table
    name = t["st_name"].astype(np.int64)
    first, second = _name_bytes(syms, 0), _name_bytes(syms, 1)
    mapping = (
        (first == ord("$"))
        | ((first == ord(".")) & (second == ord("L")))
        | ((first == ord("L")) & (second == ord("0")))
    )
    shndx = t["st_shndx"].astype(np.int64)
    keep = (shndx > 0) & (shndx < S.SHN_LORESERVE) & (first != 0) & ~mapping  # named, not mapping
    starts = _places(image, t["st_shndx"][keep], t["st_value"][keep])
    # Of symbols at one place, the loader's lookup keeps the first in the symbol table (it moves
    # on only to a greater value): they stay in table order, and the first of a run is its name.
    order = np.lexsort((np.flatnonzero(keep), starts))
    return starts[order], name[keep][order].astype(np.uint32)


def aliases(image: Image) -> dict[str, tuple[str, ...]]:
    """The other names of each function that has several (one start: ``sys_ni_syscall`` and the
    syscalls that fall back to it), keyed by the name :func:`functions` keeps for it."""
    rows, syms = _function_symbols(image), image.symbols
    if rows is None or syms is None:
        return {}
    start, _, name, _, _ = rows
    order = _kallsyms_order(image, rows)
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


def _kallsyms_order(image: Image, rows: _FunctionRows) -> np.ndarray:
    """The rows sorted by start, each start's names (aliases) in the order the kernel's kallsyms
    prefers them, first the name ftrace gives their sites (available_filter_functions, and what
    set_ftrace_filter matches). A module's lookup keeps the first symbol of equal value in table
    order (kernel/module/kallsyms.c ``find_kallsyms_symbol()``); a vmlinux's returns the first of
    scripts/kallsyms.c's ``compare_symbols()`` order: strong before weak, fewer leading
    underscores first, then ``nm -n``'s order, by name (6.1's ``sys_ni_syscall``, not the weak
    ``compat_sys_*`` that share its start)."""
    order: np.ndarray = np.lexsort((np.arange(len(rows.start)), rows.start))
    if image.type == S.ET_REL or image.symbols is None:
        return order
    first = np.flatnonzero(_first_of_each_start(rows.start[order]))
    ends = np.append(first[1:], len(order))
    for lo, hi in zip(first[ends - first > 1].tolist(), ends[ends - first > 1].tolist(), strict=True):
        group = order[lo:hi].tolist()
        names = image.symbols.names_at([int(rows.name[i]) for i in group])
        ranked = sorted(zip(group, names, strict=True), key=lambda row: _kallsyms_rank(rows, *row))
        order[lo:hi] = [i for i, _ in ranked]
    return order


def _kallsyms_rank(rows: _FunctionRows, i: int, name: str) -> tuple[bool, int, bytes]:
    """Where scripts/kallsyms.c sorts a vmlinux symbol among those of its address."""
    return bool(rows.weak[i]), len(name) - len(name.lstrip("_")), name.encode()


def _first_of_each_start(starts: np.ndarray) -> np.ndarray:
    """Of sorted ``starts``, whether each is the first of its value."""
    first = np.ones(len(starts), dtype=bool)
    first[1:] = starts[1:] != starts[:-1]
    return first


class _FunctionRows(NamedTuple):
    """Every function symbol, in symbol-table order (ELFv1: the descriptors first)."""

    start: np.ndarray  # its code start, a place
    size: np.ndarray
    name: np.ndarray  # string-table index
    lep: np.ndarray  # local entry point
    weak: np.ndarray  # STB_WEAK


def _function_symbols(image: Image) -> _FunctionRows | None:
    """Every function symbol's code start (a place), size, string-table index, local entry
    point and weakness, aliases included; None for an image with no symbol table."""
    syms = image.symbols
    if syms is None:
        return None
    t = syms.table
    shndx = t["st_shndx"].astype(np.int64)
    # An unnamed FUNC (a tool's, never a compiler's) names nothing and is no kallsyms symbol: the
    # kernel measures its record from the named symbol before it (lookup_symbols).
    is_func = (S.st_type(t["st_info"]) == S.STT_FUNC) & (shndx > 0) & (shndx < S.SHN_LORESERVE) & _named(syms)
    opd = image.section(".opd")
    if image.abi is Abi.ELFV1 and opd is not None:
        in_opd = is_func & (shndx == opd.shndx)
        code = _opd_code_places(image, opd, t["st_value"][in_opd])
        starts = [code, _places(image, shndx[is_func & ~in_opd], t["st_value"][is_func & ~in_opd])]
        sizes = [t["st_size"][in_opd], t["st_size"][is_func & ~in_opd]]
        names = [t["st_name"][in_opd], t["st_name"][is_func & ~in_opd]]
        weak = _weak(np.concatenate([t["st_info"][in_opd], t["st_info"][is_func & ~in_opd]]))
        start = np.concatenate(starts)
        size = np.concatenate(sizes).astype(np.uint64)
        name = np.concatenate(names)
        keep = start != np.uint64(0xFFFF_FFFF_FFFF_FFFF)
        return _FunctionRows(start[keep], size[keep], name[keep], start[keep], weak[keep])
    f = t[is_func]  # the rows once, then their fields: each numpy call is a fixed cost in a module
    start = _places(image, f["st_shndx"], f["st_value"])
    lep = start + S.ppc64_local_entry_offset(f["st_other"]).astype(np.uint64)
    return _FunctionRows(start, f["st_size"].astype(np.uint64), f["st_name"], lep, _weak(f["st_info"]))


STB_WEAK: Final = 2


def _weak(info: np.ndarray) -> np.ndarray:
    """Which symbols ``st_info`` binds weak."""
    weak: np.ndarray = (info >> np.uint8(4)) == STB_WEAK
    return weak


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


def relocation_symbols(image: Image, rela: np.ndarray) -> np.ndarray:
    """The ``.symtab`` row each relocation names. :meth:`Image.relocations` bounds a symbol index
    by the table its section links to, which need not be ``.symtab`` (a crafted file links
    ``.rela.text`` to a larger SHT_DYNSYM); every caller here reads ``.symtab``
    (:attr:`Image.symbols`), so the index is bounded again, against it, before it is used."""
    syms = image.symbols
    assert syms is not None
    symi = S.r_sym(rela["r_info"]).astype(np.int64)
    past = symi >= len(syms.table)
    if past.any():
        k = int(np.argmax(past))
        raise image.error(
            f"{_entry_text(image, rela[k])} names symbol {symi[k]}, past the {len(syms.table)} of {_symtab_name(image)}"
        )
    return syms.table[symi]


def reloc_target_places(image: Image, rela: np.ndarray) -> np.ndarray:
    """Place named by S + A of each relocation (symbol's section and value plus addend).

    S + A is summed in 64 bits, wrapping as the module loader's sum does. Where the symbol lies in
    a section, the sum is an offset into it, and a place holds 0 to :data:`LAST_OFFSET`: a
    negative one or one of 1 TiB or more names no byte of any section, and no place can say
    where it points, so the relocation is refused, naming its entry (a record at
    ``.text+0x10000000014`` was reported at ``.rela.text+0x14``, one at ``.text-0x100000`` in a
    section 16777215). An undefined or absolute symbol's place names no section of the file
    whatever its offset, and each module's ``.TOC.-.`` (R_PPC64_REL64) has a negative A."""
    st = relocation_symbols(image, rela)
    value = st["st_value"].astype(np.int64) + rela["r_addend"]
    shndx = st["st_shndx"]
    in_section = (shndx != S.SHN_UNDEF) & (shndx < S.SHN_LORESERVE)
    outside = in_section & ((value < 0) | (value > LAST_OFFSET))
    if outside.any():
        k = int(np.argmax(outside))
        named = f"{_section_name(image, int(shndx[k]))}{int(value[k]):+#x}"
        raise image.error(
            f"{_entry_text(image, rela[k])} names {named}: S + A is an offset no section has "
            "(negative, or 1 TiB or more)"
        )
    return rel_place(shndx, value.astype(np.uint64))


def _entry_text(image: Image, row: np.void) -> str:
    """``relocation section .rela.text entry 3``: the first entry equal to ``row`` (its caller may
    hold a filtered copy of the table). A search, made only on the way to an error."""
    for rsec in image.relocation_sections():
        try:
            rows = image.table(rsec, row.dtype, "relocation")
        except ImageError:  # another broken table: not the one this message is about
            continue
        hit = np.flatnonzero(rows == row)
        if len(hit):
            return f"relocation section {rsec.name} entry {int(hit[0])}"
    return "a relocation"


def _symtab_name(image: Image) -> str:
    """The name of the symbol table :attr:`Image.symbols` reads (the first SHT_SYMTAB)."""
    return next((s.name for s in image.sections if s.type == S.SHT_SYMTAB), ".symtab")


def _section_name(image: Image, shndx: int) -> str:
    """A section by name, or ``[N]`` (readelf's number) for one with no name or no header."""
    section = image.sections[shndx].name if 0 < shndx < len(image.sections) else ""
    return section or index_name(shndx)


class RelocationNames:
    """ET_REL: what the relocation of one of ``types`` at an offset of a section points to, as
    people read it: the symbol's name (S), with the addend (A) when it is not 0 (``_mcount``,
    ``memcpy+0x8``); for a symbol with no name of its own, a section symbol (gABI: STT_SECTION),
    the place S + A (``.text.unlikely+0x40``).

    For report lines, one per evidence word. A section's relocations are indexed the first time
    one of its offsets is asked for (its rows of ``types``, sorted by ``r_offset``), then each
    offset is a binary search: a broken amdgpu.ko's 10,398 sites scanned every relocation table
    for each of their 18,956 evidence words, 8.6 s of a 10 s audit. A section no line asks about
    is never read."""

    def __init__(self, image: Image, types: np.ndarray) -> None:
        self.image, self.types = image, types
        self._rows: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def text(self, shndx: int, offset: int) -> str | None:
        """None: no relocation of ``types`` at ``offset`` in section ``shndx`` (or not ET_REL)."""
        syms = self.image.symbols
        if self.image.type != S.ET_REL or syms is None:
            return None
        if shndx not in self._rows:
            self._rows[shndx] = self._sorted(shndx)
        offsets, rows = self._rows[shndx]
        k = int(np.searchsorted(offsets, np.uint64(offset)))
        if k == len(offsets) or int(offsets[k]) != offset:
            return None
        row = rows[k]
        symi = int(S.r_sym(row["r_info"]))
        addend = int(row["r_addend"])
        name = syms.name(symi)
        if name and int(S.st_type(syms.table["st_info"][symi])) != S.STT_SECTION:
            return name + (f"{addend:+#x}" if addend else "")
        where = int(syms.table["st_shndx"][symi])
        return f"{_section_name(self.image, where)}{int(syms.table['st_value'][symi]) + addend:+#x}"

    def _sorted(self, shndx: int) -> tuple[np.ndarray, np.ndarray]:
        """The relocations of ``types`` against section ``shndx`` from every table read against
        ``.symtab``, sorted by offset; at one offset, the first table's first row first."""
        image = self.image
        found = [np.zeros(0, S.rela_dtype(image.endian))]
        for rsec in image.relocation_sections():
            if rsec.info != shndx or rsec.link >= len(image.sections) or image.sections[rsec.link].type != S.SHT_SYMTAB:
                continue
            rela = image.relocations(rsec)
            found.append(rela[arrays.member(S.r_type(rela["r_info"]), self.types)])
        rows = np.concatenate(found)
        order = np.argsort(rows["r_offset"], kind="stable")
        return rows["r_offset"][order], rows[order]


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
