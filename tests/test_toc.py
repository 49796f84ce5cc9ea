"""Reading which symbols code refers to through the TOC pointer (rewriter.ppc.toc), and deciding
from it which ftrace_process_locs() loop a kernel has (rewriter.locs.loop_of), on words built
here: every form the reading takes, and the ones it must not."""

from __future__ import annotations

import pytest

from rewriter import ppc
from rewriter.locs import Locs, loop_of

ENTRY = 0xC000_0000_002E_16B0
TOC = 0xC000_0000_0193_0100
NOP = ppc.NOP


def _d(op: int, rt: int, ra: int, imm: int) -> int:
    """A D-form word: opcode, RT, RA and a 16-bit immediate (ld's DS keeps its low two bits 0)."""
    return (op << 26) | (rt << 21) | (ra << 16) | (imm & 0xFFFF)


def addis(rt: int, ra: int, imm: int) -> int:
    return _d(15, rt, ra, imm)


def addi(rt: int, ra: int, imm: int) -> int:
    return _d(14, rt, ra, imm)


def ld(rt: int, ra: int, ds: int) -> int:
    return _d(58, rt, ra, ds & ~3)


def _ha_lo(value: int) -> tuple[int, int]:
    """HI (adjusted for a negative LO, as @ha) and LO of ``value`` relative to nothing."""
    lo = value & 0xFFFF
    lo = lo - 0x10000 if lo & 0x8000 else lo
    return (value - lo) >> 16, lo


def _entry() -> list[int]:
    hi, lo = _ha_lo(TOC - ENTRY)
    return [addis(2, 12, hi), addi(2, 2, lo)]


def test_the_global_entry_sets_r2_from_r12() -> None:
    first, second = _entry()
    assert ppc.global_entry_toc(ENTRY, first, second) == TOC
    assert ppc.global_entry_toc(ENTRY, NOP, second) is None
    assert ppc.global_entry_toc(ENTRY, first, addi(3, 2, 0)) is None


def test_every_form_an_address_takes_from_r2() -> None:
    hi, lo = _ha_lo(0x1234_5678)
    words = [
        addis(9, 2, hi), addi(10, 9, lo),  # addis + addi
        NOP, addi(11, 2, -256),  # the linker's nop + addi, within 32 KiB of r2
        ld(3, 2, -32336),  # a TOC slot
        addis(8, 2, 1), ld(4, 8, 16),  # addis + ld
    ]  # fmt: skip
    refs = ppc.toc_references(words, TOC)
    assert refs is not None
    assert refs.addresses == {TOC + 0x1234_5678, TOC - 256}
    assert refs.slots == {TOC - 32336, TOC + 0x10000 + 16}


def test_ra_zero_is_the_value_zero_and_a_prefix_stops_the_reading() -> None:
    refs = ppc.toc_references([addis(0, 2, 5), addi(3, 0, 8), ld(4, 0, 16)], TOC)
    assert refs is not None and refs.addresses == set() and refs.slots == set()  # li 3,8; ld 4,16(0)
    assert ppc.toc_references([1 << 26, addi(3, 2, 8)], TOC) is None  # a Power10 prefix (paddi, pld)


BOUNDS = [TOC - 0x100, TOC + 0x200, TOC + 0x10000 + 8, TOC + 0x20000]


def _forming(bounds: list[int]) -> list[int]:
    """Words that form each of ``bounds`` (within 32 KiB of r2 by one addi, else addis + addi)."""
    out = _entry()
    for b in bounds:
        hi, lo = _ha_lo(b - TOC)
        out += [addi(9, 2, lo)] if hi == 0 else [addis(9, 2, hi), addi(9, 9, lo)]
    return out


def test_the_newer_loop_forms_all_four_bounds_the_older_none() -> None:
    def no_slot(_: int) -> int | None:
        return None

    assert loop_of(BOUNDS, ENTRY, _forming(BOUNDS), None, no_slot) is Locs.CHECKS_TEXT
    assert loop_of(BOUNDS, ENTRY, _forming([]) + [NOP] * 8, None, no_slot) is Locs.ADJUSTS_FIRST
    # some of the four: neither loop as known; the commands keep to the newer loop's rules
    assert loop_of(BOUNDS, ENTRY, _forming(BOUNDS[:3]), None, no_slot) is Locs.UNKNOWN


def test_bounds_loaded_from_toc_slots_count_by_the_slots_values() -> None:
    slots = {TOC - 8: BOUNDS[0], TOC - 16: BOUNDS[1]}
    words = [*_forming(BOUNDS[2:]), ld(9, 2, -8), ld(10, 2, -16)]
    assert loop_of(BOUNDS, ENTRY, words, None, slots.get) is Locs.CHECKS_TEXT
    assert loop_of(BOUNDS, ENTRY, words, None, lambda _: 0) is Locs.UNKNOWN  # slots not relocated


@pytest.mark.parametrize("start", [[NOP, NOP], [addi(2, 2, 0)]])
def test_code_whose_r2_is_unknown_says_nothing(start: list[int]) -> None:
    words = start + _forming(BOUNDS)[2:]
    assert loop_of(BOUNDS, ENTRY, words, None, lambda _: None) is Locs.UNKNOWN
    # an ELFv1 descriptor gives r2 itself
    assert loop_of(BOUNDS, ENTRY, words, TOC, lambda _: None) is Locs.CHECKS_TEXT
