"""Addresses code forms from the TOC pointer (r2): which symbols a function refers to.

The kernel's code reaches its data through r2 (ELFv2 ABI 2.3.2, "TOC pointer"). A function sets
r2 at its global entry, ``addis r2,r12,HI; addi r2,r2,LO`` with r12 holding the entry's own
address, and then forms an address as ``addis rT,r2,HI; addi rX,rT,LO`` (or, within 32 KiB of
r2, a single ``addi rX,r2,D``, which the linker also leaves after a ``nop`` it made of the
``addis``), or loads one from a TOC slot with ``ld rX,D(r2)`` / ``addis rT,r2,HI; ld rX,LO(rT)``.
Power ISA 3.1 prefixed instructions (``paddi``, ``pld``: primary opcode 1, then a suffix word)
form addresses without r2; code that holds one is not read here.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final, NamedTuple

from rewriter.ppc.fields import ALL_BITS, OP_ADDI, OP_ADDIS, OP_LD, d16, ds, ds_xo, primary, ra, rt

R2: Final = 2  # the TOC pointer
R12: Final = 12  # an ELFv2 global entry's own address, from which it computes r2
OP_PREFIX: Final = 1  # Power ISA 3.1: a prefix; the next word is its suffix
DS_LD: Final = 0  # the DS-form extended opcode of OP_LD that is ld (1: ldu, 2: lwa)


class TocReferences(NamedTuple):
    """What a run of code forms from r2: ``addresses`` computed outright, and ``slots``, the
    addresses of the doublewords it loads (their values are the caller's to read)."""

    addresses: frozenset[int]
    slots: frozenset[int]


def global_entry_toc(entry: int, first: int, second: int) -> int | None:
    """r2 as the ELFv2 global entry at ``entry`` sets it from its first two words, or None when
    they are not ``addis r2,r12,HI; addi r2,r2,LO``."""
    if (primary(first), rt(first), ra(first)) != (OP_ADDIS, R2, R12):
        return None
    if (primary(second), rt(second), ra(second)) != (OP_ADDI, R2, R2):
        return None
    return (entry + (d16(first) << 16) + d16(second)) & ALL_BITS


def toc_references(words: Sequence[int], toc: int) -> TocReferences | None:
    """The addresses ``words`` form from r2 = ``toc``, or None when they hold a prefixed
    instruction. A flow-blind pass (an ``addis`` result is taken to stay in its register): enough
    to tell which symbols a function refers to. RA = 0 in ``addi``/``ld`` means the value 0, not
    r0, so it never extends an ``addis``."""
    high: dict[int, int] = {}  # register -> the value an `addis rT,r2,HI` left in it
    addresses: set[int] = set()
    slots: set[int] = set()
    for word in words:
        op, target, base = primary(word), rt(word), ra(word)
        if op == OP_PREFIX:
            return None
        if op == OP_ADDIS and base == R2:
            high[target] = toc + (d16(word) << 16)
            continue
        origin = toc if base == R2 else high.get(base) if base != 0 else None
        if origin is not None and op == OP_ADDI:
            addresses.add((origin + d16(word)) & ALL_BITS)
        elif origin is not None and op == OP_LD and ds_xo(word) == DS_LD:
            slots.add((origin + ds(word)) & ALL_BITS)
    return TocReferences(frozenset(addresses), frozenset(slots))
