"""Instruction fields: named extractors for the bit fields of a 32-bit word, the primary opcodes
mcountrw names, and the ISA's MASK and ROTL.

Power ISA v3.1, Book I, 1.6 "Instruction Formats" and 1.6.28 "Instruction Fields". The ISA numbers
bits from the most significant (bit 0) down to bit 31; each extractor says which bits it reads.
The unsigned extractors work on a Python ``int`` and on a numpy ``uint32`` array alike (the
decoder classifies a whole text at once through them); the signed ones take an ``int``.

Other modules name fields and opcodes through this module, the way the kernel writes
``PPC_RAW_STD(_R0, _R1, 16)``, and never shift or mask a word themselves (tests/test_isa_home.py).
"""

from __future__ import annotations

from typing import Final, TypeVar

import numpy as np

W = TypeVar("W", int, np.ndarray)
"""A word, or an array of words (``uint32``)."""

# -- primary opcodes (bits 0-5), named as in the kernel's asm/ppc-opcode.h where it names them ---
# (only those the code tests for by name; the decoder table, ``table.ROWS``, gives every row's
# primary opcode in its own column)

OP_CMPLI: Final = 10  # cmpli (cmplwi, cmpldi)
OP_ADDI: Final = 14  # addi (li)
OP_ADDIS: Final = 15  # addis (lis)
OP_BC: Final = 16  # B-form conditional branch
OP_B: Final = 18  # I-form branch
OP_RLWINM: Final = 21
OP_RLD: Final = 30  # MD- and MDS-form 64-bit rotates: rldicl, rldicr, rldic, rldimi, rldcl, rldcr
MD_RLDICL: Final = 0  # the MD-form extended opcodes of OP_RLD (bits 27-29)
MD_RLDIC: Final = 2
OP_LD: Final = 58  # DS-form: ld, ldu, lwa

LI_MASK: Final = 0x03FF_FFFC  # I-form: LI, bits 6-29
BD_MASK: Final = 0xFFFC  # B-form: BD, bits 16-29
AA: Final = 0x2  # bit 30: the target is absolute
LK: Final = 0x1  # bit 31: the branch also sets LR (a call)

# -- registers ---------------------------------------------------------------------------------

R0: Final = 0
R1: Final = 1  # the stack pointer (ELFv2 ABI 2.2.1.1)
TO_ALWAYS: Final = 31  # a trap's TO field with every condition set: traps whatever its operands hold


# -- unsigned fields -----------------------------------------------------------------------------


def primary(w: W) -> W:
    """PO, bits 0-5: the primary opcode."""
    return w >> 26


def rt(w: W) -> W:
    """Bits 6-10: RT, RS, TO or BO."""
    return (w >> 21) & 31


def ra(w: W) -> W:
    """Bits 11-15: RA or BI."""
    return (w >> 16) & 31


def rb(w: W) -> W:
    """Bits 16-20: RB, or the shift amount SH of the M-form rotates (sh[0:4] in MD-form)."""
    return (w >> 11) & 31


def rc(w: W) -> W:
    """Bits 21-25: RC of the VA-form, or MB of the M-form rotates."""
    return (w >> 6) & 31


def mb(w: W) -> W:
    """Bits 21-25: MB of the M-form rotates (the same bits as RC)."""
    return (w >> 6) & 31


def me(w: W) -> W:
    """Bits 26-30: ME of the M-form rotates."""
    return (w >> 1) & 31


def ui16(w: W) -> W:
    """Bits 16-31 as an unsigned immediate (UI, or a D field read without its sign)."""
    return w & 0xFFFF


def xo10(w: W) -> W:
    """Bits 21-30: the X-form extended opcode (the XO-form one is its low 9 bits, with OE above)."""
    return (w >> 1) & 0x3FF


def xo9(w: W) -> W:
    """Bits 22-30: the XO-form extended opcode, without OE."""
    return (w >> 1) & 0x1FF


def oe(w: W) -> W:
    """Bit 21: OE of the XO-form (the result also sets XER[OV])."""
    return (w >> 10) & 1


def record(w: W) -> W:
    """Bit 31: Rc (the result also sets CR0); LK in branches; part of the xo in DS-forms."""
    return w & 1


def ds_xo(w: W) -> W:
    """Bits 30-31: the DS-form extended opcode (ld 0, ldu 1, lwa 2; std 0, stdu 1)."""
    return w & 3


def md_xo(w: W) -> W:
    """Bits 27-29: the MD-form extended opcode (rldicl 0, rldicr 1, rldic 2, rldimi 3)."""
    return (w >> 2) & 7


def bo(w: W) -> W:
    """Bits 6-10 of a conditional branch: BO."""
    return (w >> 21) & 31


# -- signed and composite fields (int only) ----------------------------------------------------


def d16(w: int) -> int:
    """Bits 16-31 as a signed displacement (D-form D, or SI)."""
    d = w & 0xFFFF
    return d - 0x10000 if d & 0x8000 else d


def ds(w: int) -> int:
    """The DS-form displacement: bits 16-29 with two zero bits appended, signed."""
    return d16(w) & ~3


def md_sh(w: int) -> int:
    """The MD-form shift: sh[0:4] in bits 16-20 and sh[5] in bit 30."""
    return rb(w) | ((w >> 1) & 1) << 5


def md_mb(w: int) -> int:
    """The MD-form mask begin: bits 21-26 hold mb[5] || mb[0:4] (the ISA's ``mb5 || mb0:4``)."""
    mb6 = (w >> 5) & 0x3F
    return (mb6 & 1) << 5 | mb6 >> 1


def li(w: int) -> int:
    """The I-form branch offset: LI (bits 6-29) with two zero bits appended, signed."""
    off = w & LI_MASK
    return off - (1 << 26) if off & (1 << 25) else off


def bd(w: int) -> int:
    """The B-form branch offset: BD (bits 16-29) with two zero bits appended, signed."""
    off = w & BD_MASK
    return off - (1 << 16) if off & (1 << 15) else off


def bo_always(w: np.ndarray) -> np.ndarray:
    """Whether each branch's BO says "ignore CR" and "ignore CTR" (0b1z1zz): it branches always."""
    return np.asarray((bo(w) & 0x14) == 0x14, bool)


# -- the ISA's MASK and ROTL ---------------------------------------------------------------------

ALL_BITS: Final = (1 << 64) - 1


def mask(mb: int, me: int) -> int:
    """MASK(mb, me) of the Power ISA: ones from bit mb to bit me (bit 0 is the MSB), wrapping."""
    if mb <= me:
        return ((1 << (64 - mb)) - 1) ^ ((1 << (63 - me)) - 1)
    return mask(0, me) | mask(mb, 63)


def rotl64(x: int, n: int) -> int:
    """ROTL64(x, n)."""
    n &= 63
    return ((x << n) | (x >> (64 - n))) & ALL_BITS if n else x


def rotl32(x: int, n: int) -> int:
    """ROTL32(x, n): the low word, doubled into both halves, rotated as 64 bits."""
    lo = x & 0xFFFF_FFFF
    return rotl64(lo | lo << 32, n)
