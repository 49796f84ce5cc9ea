"""What a linked kernel's ``relocate()`` (arch/powerpc/kernel/reloc_64.S) does to it at boot: the
``.dynamic`` values it reads, the ``R_PPC64_RELATIVE`` rows of ``.rela.dyn`` it applies, and the
value each 8-byte slot then holds. A vmlinux's record tables and TOC slots are read through it.
"""

from __future__ import annotations

from typing import Final

import numpy as np

from rewriter.elf import structs as S
from rewriter.elf.image import Image

_SLOT: Final = S.addr_dtype("<").itemsize  # a doubleword: what an R_PPC64_RELATIVE writes


def dynamic_field_offset(field: str) -> int:
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
    kernels have no PT_DYNAMIC segment."""
    sec = image.section(".rela.dyn")
    if sec is None or sec.type != S.SHT_RELA:
        return None
    rela = image.relocations(sec)
    relasz = dynamic_value(image, S.DT_RELASZ)
    if relasz is not None:
        rela = rela[: relasz // rela.dtype.itemsize]
    relative: np.ndarray = rela[S.r_type(rela["r_info"]) == S.R_PPC64_RELATIVE]
    return relative


def dynamic_value(image: Image, tag: int) -> int | None:
    """The value of ``tag`` in ``.dynamic``, or None."""
    dyn = image.section(".dynamic")
    if dyn is None or dyn.type == S.SHT_NOBITS:
        return None
    table = image.table(dyn, S.dyn_dtype(image.endian), ".dynamic")
    hit = np.flatnonzero(table["d_tag"] == tag)
    return int(table["d_val"][hit[0]]) if len(hit) else None
