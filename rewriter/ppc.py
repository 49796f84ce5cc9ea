"""Instruction words: the handful of PowerPC encodings mcountrw reads and writes.

This module is the single home of every opcode constant and branch encoder in the project.
It deals in 32-bit ``int`` words; byte order belongs to ``rewriter.elf``.

References: Power ISA v3.1, Book I, 2.4 "Branch Instructions" (I-form: opcode 18,
LI (24 bits, word offset), AA, LK) and 3.3.13 "Move To/From System Register" (mfspr).
"""

from __future__ import annotations

from typing import Final, NewType

import numpy as np

Addr = NewType("Addr", int)
"""A virtual address (or, in a relocatable file, an offset within one section)."""

Offset = NewType("Offset", int)
"""A file offset."""

INSN_SIZE: Final = 4

NOP: Final = 0x6000_0000  # ori r0,r0,0
MFLR_R0: Final = 0x7C08_02A6  # mfspr r0,LR
STD_R0_16_R1: Final = 0xF801_0010  # std r0,16(r1): gcc < 6 saved LR before calling _mcount
MTLR_R0: Final = 0x7C08_03A6  # mtspr LR,r0: the third word of an ool stub
B_PLUS_8: Final = 0x4800_0008  # b .+8: skips the call slot (the "guarded" mflr slot)

# I-form branch: primary opcode 18 in bits 0-5, LI in bits 6-29, AA bit 30, LK bit 31.
_IFORM_OPCODE: Final = 0x4800_0000
_IFORM_MASK: Final = 0xFC00_0003  # opcode + AA + LK
_LI_MASK: Final = 0x03FF_FFFC
_LK: Final = 0x1
BRANCH_RANGE: Final = 1 << 25  # LI is a signed 26-bit byte offset: [-32 MiB, +32 MiB)


class EncodingError(ValueError):
    """A branch cannot be encoded (target out of range or misaligned)."""


def _iform(src: int, dst: int, link: bool) -> int:
    delta = dst - src
    if delta % INSN_SIZE or not -BRANCH_RANGE <= delta < BRANCH_RANGE:
        mnemonic = "bl" if link else "b"
        raise EncodingError(f"{src:#x}: {mnemonic} to {dst:#x} out of range")
    return _IFORM_OPCODE | (delta & _LI_MASK) | (_LK if link else 0)


def bl(src: int, dst: int) -> int:
    """Encode ``bl dst`` placed at ``src`` (relative, AA=0, LK=1)."""
    return _iform(src, dst, link=True)


def b(src: int, dst: int) -> int:
    """Encode ``b dst`` placed at ``src`` (relative, AA=0, LK=0)."""
    return _iform(src, dst, link=False)


def is_bl(word: int) -> bool:
    """True for a relative ``bl`` (I-form, AA=0, LK=1)."""
    return (word & _IFORM_MASK) == (_IFORM_OPCODE | _LK)


def is_b(word: int) -> bool:
    """True for a relative ``b`` (I-form, AA=0, LK=0)."""
    return (word & _IFORM_MASK) == _IFORM_OPCODE


def branch_offset(word: int) -> int:
    """The signed byte offset of an I-form branch word."""
    li = word & _LI_MASK
    return li - (1 << 26) if li & (1 << 25) else li


def branch_target(src: int, word: int) -> int:
    """Where the relative I-form branch ``word`` at ``src`` goes."""
    return src + branch_offset(word)


def in_branch_range(delta: int) -> bool:
    """The kernel's ``is_offset_in_branch_range``: a word-aligned I-form offset in [-32 MiB, +32 MiB)."""
    return -BRANCH_RANGE <= delta < BRANCH_RANGE and not delta % INSN_SIZE


def b_mask(words: np.ndarray) -> np.ndarray:
    """Vectorised :func:`is_b` over a ``uint32`` array."""
    return (words & np.uint32(_IFORM_MASK)) == np.uint32(_IFORM_OPCODE)


def bl_mask(words: np.ndarray) -> np.ndarray:
    """Vectorised :func:`is_bl` over a ``uint32`` array."""
    return (words & np.uint32(_IFORM_MASK)) == np.uint32(_IFORM_OPCODE | _LK)


def branch_targets(addrs: np.ndarray, words: np.ndarray) -> np.ndarray:
    """Vectorised :func:`branch_target` (``uint64`` addresses, wrap-around like the hardware)."""
    li = (words & np.uint32(_LI_MASK)).astype(np.int64)
    li = np.where(li & (1 << 25), li - (1 << 26), li)
    return addrs.astype(np.uint64) + li.astype(np.uint64)


# capstone 5's text for the fixed words (checked against capstone in tests/test_ppc.py), so that a
# patch log of 67,000 writes needs no capstone call for them; branches are formatted by
# branch_text, also checked against capstone.
TEXT: Final = {NOP: "nop", MFLR_R0: "mflr r0", MTLR_R0: "mtlr r0", STD_R0_16_R1: "std r0, 0x10(r1)"}


def branch_text(src: int, word: int) -> str:
    """``b``/``bl`` with its absolute target, printed as capstone prints it (hex above 9)."""
    target = branch_target(src, word) & 0xFFFF_FFFF_FFFF_FFFF
    return f"{'bl' if word & _LK else 'b'} {target:#x}" if target > 9 else f"{'bl' if word & _LK else 'b'} {target}"


def describe(word: int) -> str:
    """A short name for the words a site slot may hold; ``other`` for anything else."""
    if word == NOP:
        return "nop"
    if word == MFLR_R0:
        return "mflr"
    if word == STD_R0_16_R1:
        return "std"
    if word == MTLR_R0:
        return "mtlr"
    if word == B_PLUS_8:
        return "b+8"
    if is_bl(word):
        return "bl"
    if is_b(word):
        return "b"
    return "other"


class Disassembler:
    """Capstone, for printing words: ``0x...: expected 4bffa1d1 (bl 0x...)``.

    One instance per endianness; pass it in rather than keeping a module-level handle.
    """

    def __init__(self, big_endian: bool) -> None:
        import capstone

        mode = capstone.CS_MODE_64 | (capstone.CS_MODE_BIG_ENDIAN if big_endian else capstone.CS_MODE_LITTLE_ENDIAN)
        self._cs = capstone.Cs(capstone.CS_ARCH_PPC, mode)
        self._order = "big" if big_endian else "little"

    def text(self, word: int, addr: int = 0) -> str:
        """``mnemonic operands`` of one word, or ``.long 0x...`` if capstone cannot decode it."""
        for insn in self._cs.disasm(word.to_bytes(4, self._order), addr, 1):
            return f"{insn.mnemonic} {insn.op_str}".strip()
        return f".long {word:#010x}"
