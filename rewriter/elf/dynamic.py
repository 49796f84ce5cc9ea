"""What a linked kernel's ``relocate()`` (arch/powerpc/kernel/reloc_64.S) does to it at boot: the
``.dynamic`` values it reads, the ``R_PPC64_RELATIVE`` rows of ``.rela.dyn`` it applies, and the
value each 8-byte slot then holds. A vmlinux's record tables and TOC slots are read through it.

From 6.0 (6.1, 6.12 and 7.2 alike: 7.2's source, and 6.1's binary disassembled) relocate() takes
``DT_RELA``, ``DT_RELASZ`` and ``DT_RELAENT`` from ``.dynamic``, does nothing if any of them is 0,
and applies ``DT_RELASZ / DT_RELAENT`` rows, ``DT_RELAENT`` bytes apart. Before 6.0 it applied
``DT_RELACOUNT`` rows, 24 bytes apart. mcountrw reads the rows :data:`RELA_ROW` bytes apart, the
size of an ``Elf64_Rela`` (``.rela.dyn``'s ``sh_entsize`` is checked against it), so a rewrite that
moves rows in or out of what relocate() applies first checks that ``.dynamic`` agrees
(:func:`check_applied_table`).
"""

from __future__ import annotations

from typing import Final

import numpy as np

from rewriter.elf import structs as S
from rewriter.elf.image import Image, Section

_SLOT: Final = S.addr_dtype("<").itemsize  # a doubleword: what an R_PPC64_RELATIVE writes
RELA_ROW: Final = S.rela_dtype("<").itemsize
"""The bytes of one ``.rela.dyn`` row (``Elf64_Rela``): the step of every walk mcountrw models,
and what a drop or a restore moves ``DT_RELASZ`` by, a row at a time."""


def _field_offset(field: str) -> int:
    """Byte offset of ``field`` (``d_tag``, ``d_val``) inside an ``Elf64_Dyn`` entry."""
    fields = S.dyn_dtype("<").fields
    assert fields is not None
    return int(fields[field][1])


def relocated_slots(image: Image, addr: int, values: np.ndarray) -> np.ndarray:
    """Each slot's value after ``relocate()`` (arch/powerpc/kernel/reloc_64.S): it walks the
    ``DT_RELASZ`` bytes of ``DT_RELA`` and stores ``r_addend + delta`` over every
    ``R_PPC64_RELATIVE`` target, so the addend, not the file word, is what the kernel reads
    (at the link address, delta 0). Entries moved past ``DT_RELASZ`` are never applied."""
    rela = processed_relative(image)
    if rela is None or not len(values):
        return values
    slots = (rela["r_offset"].astype(np.uint64) - np.uint64(addr)) // np.uint64(_SLOT)
    inside = (
        (rela["r_offset"] >= addr)
        & (rela["r_offset"] < addr + _SLOT * len(values))
        & (rela["r_offset"] % _SLOT == addr % _SLOT)
    )
    out = values.copy()
    out[slots[inside].astype(np.int64)] = rela["r_addend"][inside].astype(np.uint64)
    return out


def processed_relative(image: Image) -> np.ndarray | None:
    """The ``R_PPC64_RELATIVE`` rows of ``.rela.dyn`` that ``relocate()`` applies (the first
    ``DT_RELASZ`` bytes), or None without a ``.rela.dyn``. ``.dynamic`` is read by section: these
    kernels have no PT_DYNAMIC segment. A ``.dynamic`` that lacks ``DT_RELA``, ``DT_RELASZ`` or
    ``DT_RELAENT`` (or holds 0 in one) makes relocate() apply no row: the slots keep their file
    words. Without any ``.dynamic`` nothing narrows the table, and every row is read."""
    sec = image.section(".rela.dyn")
    if sec is None or sec.type != S.SHT_RELA:
        return None
    rela = image.relocations(sec)
    if image.section(".dynamic") is not None:
        rela = rela[: applied_bytes(image) // RELA_ROW]
    relative: np.ndarray = rela[S.r_type(rela["r_info"]) == S.R_PPC64_RELATIVE]
    return relative


def applied_bytes(image: Image) -> int:
    """How many bytes of ``.rela.dyn`` relocate() applies: ``DT_RELASZ``, or 0 when ``.dynamic``
    lacks one of the three values it checks, or holds 0 in it (its ``beq .Lout``)."""
    rela, relasz, relaent = (dynamic_value(image, tag) for tag, _ in RELOCATE_NEEDS)
    return relasz if rela and relasz and relaent else 0


RELOCATE_NEEDS: Final = ((S.DT_RELA, "DT_RELA"), (S.DT_RELASZ, "DT_RELASZ"), (S.DT_RELAENT, "DT_RELAENT"))
"""The ``.dynamic`` values relocate() reads, in that order; without any of them it applies no row."""


def dynamic_value(image: Image, tag: int) -> int | None:
    """The value of ``tag`` in ``.dynamic`` as relocate() reads it, or None."""
    found = dynamic_field(image, tag)
    return None if found is None else found[1]


def dynamic_field(image: Image, tag: int) -> tuple[int, int] | None:
    """The file offset of ``tag``'s ``d_val`` in ``.dynamic`` and its value, or None. This is the
    entry relocate() reads: it walks the entries up to the first ``DT_NULL`` and keeps the last
    value of each tag it meets, so that is the one a rewrite must change."""
    dyn = image.section(".dynamic")
    if dyn is None or dyn.type == S.SHT_NOBITS:
        return None
    table = image.table(dyn, S.dyn_dtype(image.endian), ".dynamic")
    tags = table["d_tag"]
    ends = np.flatnonzero(tags == S.DT_NULL)
    hit = np.flatnonzero(tags[: int(ends[0]) if len(ends) else len(tags)] == tag)
    if not len(hit):
        return None
    i = int(hit[-1])
    return dyn.offset + i * table.dtype.itemsize + _field_offset("d_val"), int(table["d_val"][i])


def check_applied_table(image: Image, rela: Section) -> None:
    """Refuse a ``.dynamic`` that does not describe ``rela`` (``.rela.dyn``) as the table relocate()
    walks, row by row, before a rewrite moves rows out of it or back and changes ``DT_RELASZ`` and
    ``DT_RELACOUNT`` by the rows it moves (the linker writes them so, and every rewrite keeps them
    so). Otherwise the rewrite would be wrong at boot, or its arithmetic would be:

    * ``DT_RELAENT`` other than :data:`RELA_ROW`: from 6.0 relocate() steps through the table
      ``DT_RELAENT`` bytes at a time, across the rows (or, at 0, applies nothing), so what it
      applies is not the rows mcountrw reads, and ``DT_RELASZ`` changed by rows of that size
      would leave the moved rows inside its walk (at 1: lowered by a byte a row). Refused rather
      than followed: rows that are not ``Elf64_Rela`` apart have no meaning to model, and one row
      size serves the scan (:func:`processed_relative`) and the rewrite alike.
    * ``DT_RELASZ`` other than ``sh_size``: relocate() would apply rows past the table (the rows a
      drop moves there), or a drop would lower it below what it covers (or below zero).
    * ``DT_RELACOUNT`` past the table's rows: relocate() before 6.0 would walk into the moved rows.
    * no ``DT_RELA``, ``DT_RELASZ`` or ``DT_RELAENT`` (or ``DT_RELA`` 0): relocate() applies no row,
      so the table is not what the kernel reads, and a drop would have no bound to lower.
    """
    for tag, name in RELOCATE_NEEDS:
        if dynamic_value(image, tag) is None:
            raise image.error(f".dynamic has no {name}: relocate() applies no row of {rela.name}")
    if dynamic_value(image, S.DT_RELA) == 0:
        raise image.error(f".dynamic DT_RELA is 0: relocate() applies no row of {rela.name}")
    entsize = dynamic_value(image, S.DT_RELAENT)
    if entsize != RELA_ROW:
        raise image.error(
            f".dynamic DT_RELAENT {entsize} does not agree with {rela.name}, whose rows are {RELA_ROW} bytes "
            "(relocate() steps DT_RELAENT bytes a row)"
        )
    relasz = dynamic_value(image, S.DT_RELASZ)
    if relasz is not None and relasz != rela.size:
        raise image.error(
            f".dynamic DT_RELASZ {relasz:#x} does not agree with {rela.name}, whose size is {rela.size:#x} "
            "(relocate() applies DT_RELASZ bytes of it)"
        )
    count = dynamic_value(image, S.DT_RELACOUNT)
    rows = rela.size // RELA_ROW
    if count is not None and count > rows:
        raise image.error(
            f".dynamic DT_RELACOUNT {count} does not agree with {rela.name}, which has {rows} rows "
            "(relocate() before 6.0 applies DT_RELACOUNT rows)"
        )
