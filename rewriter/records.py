"""The kernel's own record tables, read from an image: the ``__start_mcount_loc..__stop_mcount_loc``
table of a vmlinux (each slot's value the one ``relocate()`` leaves, :mod:`rewriter.elf.dynamic`), an
``__mcount_loc`` or ``__patchable_function_entries`` section, and a relocatable file's
``.rela__mcount_loc`` / ``.rela__patchable_function_entries``. The scan matches sites to them; the
rewriter drops and restores their entries.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final, NamedTuple

import numpy as np

from rewriter import modload
from rewriter.elf import structs as S
from rewriter.elf.dynamic import relocated_slots
from rewriter.elf.image import Image, Kind, Section
from rewriter.elf.release import vermagic_callsite
from rewriter.elf.symbols import reloc_target_places
from rewriter.errors import ImageError

RECORD_SIZE: Final = S.addr_dtype("<").itemsize  # one record: an 8-byte address


class RecordTable(NamedTuple):
    """One table of records, as the rewriter edits it.

    Linked: ``addr``/``file_offset`` of entry 0 and ``values``, the run-time value of each entry
    (0 for a dropped one). Relocatable: ``section`` is the relocation section
    (``.rela__mcount_loc``), ``shndx`` its index (a file can have several of that name), ``values``
    the place each of its rows names."""

    section: str
    addr: int | None
    file_offset: int | None
    values: np.ndarray
    shndx: int | None = None
    none_row: int | None = None  # relocatable: its first R_PPC64_NONE row, for which the loader refuses the module


REL_RECORD_SECTIONS: Final = ("__mcount_loc", "__patchable_function_entries")
"""The record sections of a relocatable file: recordmcount's (mprofile) and the compiler's."""


def read_records(image: Image) -> tuple[RecordTable, ...]:
    """The record tables of ``image`` the kernel reads (none in a file without records)."""
    if image.type == S.ET_REL:
        return rel_records(image)[0]
    return tuple(t for t in (_linked_table(image), _linked_patchable_section(image)) if t is not None)


def rel_records(image: Image) -> tuple[tuple[RecordTable, ...], tuple[RecordTable, ...]]:
    """A relocatable file's record tables: those the kernel reads, and those it never reads: a
    module's after the first of their name, when its loader takes the module all the same (before
    6.12, :mod:`rewriter.modload`), a module's tables of the record section its kernel does
    not read (:func:`callsite_section`), and a module's record sections without SHF_ALLOC
    (:func:`unallocated_record_sections`). An object's all go into the link."""
    tables = _rel_tables(image)
    never = _unallocated_tables(image)
    if len(tables) < 2:
        return tables, never
    read = [_read_by_loader(image, t) for t in tables] if _split_by_name(image) else [True] * len(tables)
    callsite = callsite_section(image, tables)
    if callsite is not None:
        read = [r and _fills(image, t, callsite) for t, r in zip(tables, read, strict=True)]
    return (
        tuple(t for t, r in zip(tables, read, strict=True) if r),
        tuple(t for t, r in zip(tables, read, strict=True) if not r) + never,
    )


def unallocated_record_sections(image: Image) -> tuple[str, ...]:
    """A module's record sections without SHF_ALLOC (their names, each once): the loader never
    finds one (find_sec() takes allocated sections only), and ftrace never sees its records."""
    if image.kind is not Kind.MODULE:
        return ()
    names = (image.target_of(r) for r in image.relocation_sections())
    return tuple(sorted({t.name for t in names if t is not None and _unallocated_record_section(t)}))


def unread_why(image: Image) -> str:
    """Why a module's loader never reads the entries :func:`rel_records` calls unread: the words
    after their count, ``N entries <why>``."""
    unallocated = unallocated_record_sections(image)
    if unallocated:
        return (
            f"in {' and '.join(unallocated)}, a section without SHF_ALLOC: the module loader never finds it "
            "(find_sec() takes allocated sections only), and never traces these"
        )
    ignored = ignored_section(image)
    if ignored is not None:
        return (
            f"in {ignored[1]}, which the module's kernel never reads: "
            f"find_module_sections() reads only its FTRACE_CALLSITE_SECTION, {ignored[0]} (the module's vermagic)"
        )
    return (
        "in record sections after the first of their name: the module loader reads only the first (find_sec()), "
        "and never traces these"
    )


def _unallocated_record_section(sec: Section) -> bool:
    return sec.name in REL_RECORD_SECTIONS and not sec.flags & S.SHF_ALLOC


def _unallocated_tables(image: Image) -> tuple[RecordTable, ...]:
    """The tables of a module's record sections without SHF_ALLOC: never read by its loader, whose
    apply_relocations() also passes over them (so no row of theirs refuses the module)."""
    if image.kind is not Kind.MODULE or image.symbols is None:
        return ()
    out = []
    for r in image.relocation_sections():
        target = image.target_of(r)
        if target is None or not _unallocated_record_section(target):
            continue
        try:
            places = reloc_target_places(image, image.relocations(r))
        except ImageError:  # a table the loader never reads refuses nothing: said as no entries
            continue
        out.append(RecordTable(r.name, None, None, places, r.shndx))
    return tuple(out)


def _split_by_name(image: Image) -> bool:
    return bool(modload.shared_names(image)) and modload.refusal(image) is None


def callsite_section(image: Image, tables: Sequence[RecordTable]) -> str | None:
    """The one record section a module's loader reads where the module has both: find_module_sections()
    (kernel/module/main.c) reads FTRACE_CALLSITE_SECTION alone, and ftrace never sees the other's
    records. None when the module has only one of them, or its vermagic says neither."""
    names = {sec.name for sec in (record_section(image, t) for t in tables) if sec is not None}
    if len(names) < len(REL_RECORD_SECTIONS) or image.kind is not Kind.MODULE:
        return None
    return vermagic_callsite(image)


def ignored_section(image: Image) -> tuple[str, str] | None:
    """(the record section a module's loader reads, the one it has besides and never reads), or None
    when it has only one (:func:`callsite_section`)."""
    callsite = callsite_section(image, _rel_tables(image))
    return None if callsite is None else (callsite, next(n for n in REL_RECORD_SECTIONS if n != callsite))


def _fills(image: Image, table: RecordTable, name: str) -> bool:
    sec = record_section(image, table)
    return sec is None or sec.name == name


def _read_by_loader(image: Image, table: RecordTable) -> bool:
    sec = record_section(image, table)
    return sec is None or modload.reads_section(image, sec)


def record_section(image: Image, table: RecordTable) -> Section | None:
    """The section a relocatable file's record table fills (its relocation section's ``sh_info``)."""
    if table.shndx is None:
        return None
    return image.target_of(image.section_at(table.shndx))


def zeroed_records(image: Image, tables: Sequence[RecordTable]) -> int:
    """Zero entries: a linked table's zero slots; in a relocatable file, the slots of a record
    section that no relocation fills (a dropped record)."""
    if image.type != S.ET_REL:
        return sum(int(np.count_nonzero(t.values == 0)) for t in tables)
    out = 0
    for t in tables:
        sec = record_section(image, t)
        if sec is not None:
            out += max(sec.size // RECORD_SIZE - len(t.values), 0)
    return out


def _rel_tables(image: Image) -> tuple[RecordTable, ...]:
    """Every record table of a relocatable file, in section order. A name can repeat: gcc 13 and
    later link each function's ``__patchable_function_entries`` block to a label of the function
    (SHF_LINK_ORDER), and the assembler makes a section for each: one record section per function
    (gcc 11 and 12 link them all to the first function: one section).
    The link gathers them all (a vmlinux's KEEP_PATCHABLE, a module's scripts/module.lds); what a
    module's loader makes of a module that still has two is :mod:`rewriter.modload`'s."""
    out = []
    for r in _record_relocation_sections(image):
        rela = image.relocations(r)  # refuses a table whose sh_link names no symbol table
        if image.symbols is None:
            raise image.error(f"relocation section {r.name}: no .symtab to resolve its records")
        none_row = _check_record_types(image, r, rela)
        out.append(RecordTable(r.name, None, None, reloc_target_places(image, rela), r.shndx, none_row))
    return tuple(out)


def _record_relocation_sections(image: Image) -> list[Section]:
    """The RELA tables that fill a record section: those whose sh_info names an allocated section
    called ``__mcount_loc`` or ``__patchable_function_entries``, whatever their own name. The
    loader applies every table to the section its sh_info names and passes over one whose target
    is not allocated (kernel/module/main.c ``apply_relocations()``), and reads the records from
    the allocated section of that name (``find_sec()``): a ``.rela__mcount_loc`` whose sh_info
    names ``.text`` fills no record (it writes addresses over code), and one named otherwise that
    names ``__mcount_loc`` fills them all."""
    out = []
    for r in image.relocation_sections():
        target = image.target_of(r)
        if target is not None and target.name in REL_RECORD_SECTIONS and target.flags & S.SHF_ALLOC:
            out.append(r)
    return out


def _check_record_types(image: Image, rsec: Section, rela: np.ndarray) -> int | None:
    """A record is an R_PPC64_ADDR64: the loader stores S + A, the site's address, in its slot.
    Any other type the loader applies leaves something else there (REL64 a distance, ADDR32 half
    an address), so no place can be said for it; R_PPC64_NONE it does not apply at all, and
    refuses the module for it (:func:`loader_refusal`): the first such row, or None."""
    types = S.r_type(rela["r_info"])
    odd = (types != S.R_PPC64_ADDR64) & (types != S.R_PPC64_NONE)
    if odd.any():
        k = int(np.argmax(odd))
        raise image.error(
            f"relocation section {rsec.name} entry {k} is of type {int(types[k])}, not R_PPC64_ADDR64: "
            "it leaves no site's address in its record"
        )
    none = types == S.R_PPC64_NONE
    return int(np.argmax(none)) if none.any() else None


def loader_refusal(image: Image, tables: Sequence[RecordTable]) -> str | None:
    """Why the module loader refuses a module over its record ``tables``: an R_PPC64_NONE row,
    a type the ppc64 apply_relocate_add() has no case for ("Unknown ADD relocation: 0", -ENOEXEC:
    every version through 7.2). A tool that "drops" a record by turning its relocation into NONE
    makes such a module; mcountrw takes the row out instead (:mod:`rewriter.rewrite`)."""
    if image.kind is not Kind.MODULE:
        return None
    for t in tables:
        if t.none_row is not None:
            return (
                f"relocation section {t.section} entry {t.none_row} is R_PPC64_NONE, a type the ppc64 module "
                "loader does not know: it refuses the module (Unknown ADD relocation: 0)"
            )
    return None


def _linked_table(image: Image) -> RecordTable | None:
    """``__start_mcount_loc..__stop_mcount_loc`` (a vmlinux), else an ``__mcount_loc`` section."""
    syms = image.symbols
    if syms is not None:
        start, stop = syms.find("__start_mcount_loc"), syms.find("__stop_mcount_loc")
        if len(start) and len(stop):
            lo, hi = int(syms.table["st_value"][start[0]]), int(syms.table["st_value"][stop[0]])
            if hi < lo or (hi - lo) % RECORD_SIZE:
                raise image.error(f"__mcount_loc bounds {lo:#x}..{hi:#x} are not a table of 8-byte entries")
            return table_at(image, "__mcount_loc", lo, (hi - lo) // RECORD_SIZE)
    sec = image.section("__mcount_loc")
    if sec is None or sec.type == S.SHT_NOBITS:
        return None
    if sec.size % RECORD_SIZE:
        raise image.error(f"__mcount_loc section size {sec.size} is not a multiple of 8")
    return table_at(image, sec.name, sec.addr, sec.size // RECORD_SIZE)


def _linked_patchable_section(image: Image) -> RecordTable | None:
    """A linked file that kept the compiler's ``__patchable_function_entries`` as a section (a
    vmlinux folds it into the mcount table instead)."""
    sec = image.section("__patchable_function_entries")
    if sec is None or sec.type == S.SHT_NOBITS or image.kind is Kind.VMLINUX:
        return None
    if sec.size % RECORD_SIZE:
        raise image.error(f"__patchable_function_entries section size {sec.size} is not a multiple of 8")
    return table_at(image, sec.name, sec.addr, sec.size // RECORD_SIZE)


def table_at(image: Image, name: str, addr: int, count: int) -> RecordTable:
    """``count`` 8-byte records at ``addr`` of a linked image, valued as relocate() leaves them
    (also where a stripped image's search found a table that no symbol bounds)."""
    if not count:
        return RecordTable(name, addr, None, np.zeros(0, np.uint64))
    off = image.offset_of_named(name, addr)  # its bounds or section may lie: say which table
    if off + count * RECORD_SIZE > image.elf_end:
        raise image.error(f"{name} runs past the end of the file")
    values = np.frombuffer(image.data, S.addr_dtype(image.endian), count=count, offset=off).astype(np.uint64)
    return RecordTable(name, addr, off, relocated_slots(image, addr, values))


def nonzero_records(tables: Sequence[RecordTable]) -> np.ndarray:
    if not tables:
        return np.zeros(0, np.uint64)
    values = np.concatenate([t.values for t in tables])
    nonzero: np.ndarray = values[values != 0]
    return nonzero
