"""Instruction words: the fixed words and branches that ftrace sites hold, their encoders, their
names and their text.

It deals in 32-bit ``int`` words (or numpy ``uint32`` arrays of them); byte order belongs to
``rewriter.elf``. Each function has a vectorised twin where the scan needs one (``is_bl`` and
``bl_mask``, ``kind`` and ``kinds``, ``branch_offset`` and ``branch_offsets``).

References: Power ISA v3.1, Book I, 2.4 "Branch Instructions" (I-form: opcode 18, LI (24 bits,
word offset), AA, LK; B-form: opcode 16, BO, BI, BD (14 bits), AA, LK) and 3.3.13 "Move To/From
System Register" (mfspr).
"""

from __future__ import annotations

import enum
from typing import Any, Final, Literal, NewType

import numpy as np

from rewriter.errors import RewriteError
from rewriter.ppc.fields import AA, BD_MASK, LI_MASK, LK, OP_B, OP_BC, bd, li, primary

Addr = NewType("Addr", int)
"""A virtual address (or, in a relocatable file, an offset within one section)."""

Offset = NewType("Offset", int)
"""A file offset."""

INSN_SIZE: Final = 4

NOP: Final = 0x6000_0000  # ori r0,r0,0
XNOP: Final = 0x6800_0000  # xori r0,r0,0: the ISA's "executed no-op"
MR_R0_R0: Final = 0x7C00_0378  # or r0,r0,r0: moves r0 onto itself
MFLR_R0: Final = 0x7C08_02A6  # mfspr r0,LR
STD_R0_16_R1: Final = 0xF801_0010  # std r0,16(r1): gcc < 6 saved LR before calling _mcount
MTLR_R0: Final = 0x7C08_03A6  # mtspr LR,r0: the third word of an ool stub
B_PLUS_8: Final = 0x4800_0008  # b .+8: skips the call slot (the "guarded" mflr slot)
LD_R2_40_R1: Final = 0xE841_0028  # ld r2,40(r1): ELFv1's TOC restore after a call through a stub
LD_R2_24_R1: Final = 0xE841_0018  # ld r2,24(r1): ELFv2's

# I-form branch: primary opcode 18 in bits 0-5, LI in bits 6-29, AA bit 30, LK bit 31.
_IFORM_OPCODE: Final = OP_B << 26
_IFORM_MASK: Final = 0xFC00_0000 | AA | LK  # opcode + AA + LK
BRANCH_RANGE: Final = 1 << 25  # LI is a signed 26-bit byte offset: [-32 MiB, +32 MiB)


class EncodingError(RewriteError):
    """A branch cannot be encoded (target out of range or misaligned). A project error like every
    other, so that no caller needs to know ppc's own exceptions; the one import from the rest of
    ``rewriter`` (errors.py needs only ``prose``, so no cycle comes back here)."""


def _iform(src: int, dst: int, link: bool) -> int:
    delta = dst - src
    if delta % INSN_SIZE or not -BRANCH_RANGE <= delta < BRANCH_RANGE:
        mnemonic = "bl" if link else "b"
        raise EncodingError(f"{src:#x}: {mnemonic} to {dst:#x} out of range")
    return _IFORM_OPCODE | (delta & LI_MASK) | (LK if link else 0)


def bl(src: int, dst: int) -> int:
    """Encode ``bl dst`` placed at ``src`` (relative, AA=0, LK=1)."""
    return _iform(src, dst, link=True)


def b(src: int, dst: int) -> int:
    """Encode ``b dst`` placed at ``src`` (relative, AA=0, LK=0)."""
    return _iform(src, dst, link=False)


def is_bl(word: int) -> bool:
    """True for a relative ``bl`` (I-form, AA=0, LK=1)."""
    return (word & _IFORM_MASK) == (_IFORM_OPCODE | LK)


def is_b(word: int) -> bool:
    """True for a relative ``b`` (I-form, AA=0, LK=0)."""
    return (word & _IFORM_MASK) == _IFORM_OPCODE


def is_relative_branch(word: int) -> bool:
    """An I-form or B-form branch to its own address plus an offset (AA clear): the words a
    ``R_PPC64_REL24`` or ``REL14`` relocation fills in."""
    return primary(word) in (OP_B, OP_BC) and not word & AA


def branch_offset(word: int) -> int:
    """The signed byte offset of a relative branch word: B-form (primary 16) or I-form (any other)."""
    return bd(word) if primary(word) == OP_BC else li(word)


def branch_target(src: int, word: int) -> int:
    """Where the relative branch ``word`` at ``src`` goes."""
    return src + branch_offset(word)


def in_branch_range(delta: int) -> bool:
    """The kernel's ``is_offset_in_branch_range``: a word-aligned I-form offset in [-32 MiB, +32 MiB)."""
    return -BRANCH_RANGE <= delta < BRANCH_RANGE and not delta % INSN_SIZE


def b_mask(words: np.ndarray) -> np.ndarray:
    """Vectorised :func:`is_b` over a ``uint32`` array."""
    return np.asarray((words & np.uint32(_IFORM_MASK)) == np.uint32(_IFORM_OPCODE), bool)


def bl_mask(words: np.ndarray) -> np.ndarray:
    """Vectorised :func:`is_bl` over a ``uint32`` array."""
    return np.asarray((words & np.uint32(_IFORM_MASK)) == np.uint32(_IFORM_OPCODE | LK), bool)


def branch_offsets(words: np.ndarray) -> np.ndarray:
    """Vectorised :func:`branch_offset` (``int64``)."""
    w = words.astype(np.int64)
    off = ((w & LI_MASK) ^ (1 << 25)) - (1 << 25)  # sign-extended
    bform = primary(w) == OP_BC
    if bform.any():  # the scan asks about bl words only: skip this pass for them
        off[bform] = ((w[bform] & BD_MASK) ^ (1 << 15)) - (1 << 15)
    return np.asarray(off, np.int64)


def branch_targets(addrs: np.ndarray, words: np.ndarray) -> np.ndarray:
    """Vectorised :func:`branch_target` (``uint64`` addresses, wrap-around like the hardware)."""
    return addrs.astype(np.uint64) + branch_offsets(words).astype(np.uint64)


# -- what a site slot holds, by its bits alone ---------------------------------------------------


class WordKind(enum.Enum):
    """The words a site slot may hold. Whether a ``bl`` reaches the tracer, or a ``b`` the site's
    stub, depends on where they go: ``rewriter.states.insn_kind`` decides that."""

    NOP = "nop"
    MFLR = "mflr"
    STD = "std"
    MTLR = "mtlr"
    B8 = "b+8"
    BL = "bl"
    B = "b"
    OTHER = "other"


FIXED: Final = {
    NOP: WordKind.NOP,
    MFLR_R0: WordKind.MFLR,
    STD_R0_16_R1: WordKind.STD,
    MTLR_R0: WordKind.MTLR,
    B_PLUS_8: WordKind.B8,
}
"""The one word of each fixed kind."""

KINDS: Final = tuple(WordKind)
""":class:`WordKind` by the small integers :func:`kinds` returns."""


def kind(word: int) -> WordKind:
    """What a slot word is; ``b .+8`` is B8, not B."""
    fixed = FIXED.get(word)
    if fixed is not None:
        return fixed
    if is_bl(word):
        return WordKind.BL
    return WordKind.B if is_b(word) else WordKind.OTHER


_FIXED_WORDS: Final = np.array(sorted(FIXED), np.uint32)
_FIXED_KINDS: Final = np.array([KINDS.index(FIXED[w]) for w in sorted(FIXED)], np.intp)


def kinds(words: np.ndarray) -> np.ndarray:
    """Vectorised :func:`kind`: indexes into :data:`KINDS` (``intp``).

    A fixed word wins over the branch it may also be (``b .+8`` is B8), as in :func:`kind`. One
    search of the sorted fixed words, not a comparison per fixed word: ``np.select`` over seven
    conditions cost 0.1 ms a call, a third of a module's whole scan."""
    iform = np.asarray(words, np.uint32) & np.uint32(_IFORM_MASK)
    branch = np.where(iform == _IFORM_OPCODE | LK, KINDS.index(WordKind.BL), KINDS.index(WordKind.OTHER))
    branch = np.where(iform == _IFORM_OPCODE, KINDS.index(WordKind.B), branch)
    at = np.minimum(np.searchsorted(_FIXED_WORDS, words), len(_FIXED_WORDS) - 1)
    return np.where(_FIXED_WORDS[at] == words, _FIXED_KINDS[at], branch).astype(np.intp)


def describe(word: int) -> str:
    """A short name for the words a site slot may hold; ``other`` for anything else."""
    return kind(word).value


# -- text --------------------------------------------------------------------------------------

# capstone 5's text for the fixed words (checked against capstone in tests/test_ppc.py), so that a
# patch log of 67,000 writes needs no capstone call for them; branches are formatted by
# branch_text, also checked against capstone.
TEXT: Final = {NOP: "nop", MFLR_R0: "mflr r0", MTLR_R0: "mtlr r0", STD_R0_16_R1: "std r0, 0x10(r1)"}


def branch_text(src: int, word: int) -> str:
    """``b``/``bl`` with its absolute target, printed as capstone prints it (hex above 9)."""
    target = branch_target(src, word) & 0xFFFF_FFFF_FFFF_FFFF
    mnemonic = "bl" if word & LK else "b"
    return f"{mnemonic} {target:#x}" if target > 9 else f"{mnemonic} {target}"


def relative_text(word: int) -> str:
    """A site word without an address: :data:`TEXT`, or an I-form branch as ``b .+8``."""
    if word in TEXT:
        return TEXT[word]
    if is_b(word) or is_bl(word):
        return f"{'bl' if word & LK else 'b'} .{branch_offset(word):+d}"
    return f".long {word:#010x}"


class Disassembler:
    """Capstone, for printing words: ``0x...: expected 4bffa1d1 (bl 0x...)``.

    One instance per endianness; pass it in rather than keeping a module-level handle.
    """

    def __init__(self, big_endian: bool) -> None:
        self._big = big_endian
        self._cs: Any = None  # made on first use: most audits print no word, and capstone's import costs 16 ms
        self._order: Literal["little", "big"] = "big" if big_endian else "little"

    def text(self, word: int, addr: int = 0, target: str | None = None) -> str:
        """``mnemonic operands`` of one word at ``addr``, or ``.long 0x...`` if capstone cannot
        decode it. ``target``: what a relative branch goes to, printed in place of the address
        its offset gives (in a relocatable file the relocation supplies the offset, so the word's
        own reads as a branch to itself: ``bl _mcount``, not ``bl 0x14``)."""
        if self._cs is None:
            import capstone  # type: ignore[import-untyped]

            endian = capstone.CS_MODE_BIG_ENDIAN if self._big else capstone.CS_MODE_LITTLE_ENDIAN
            self._cs = capstone.Cs(capstone.CS_ARCH_PPC, capstone.CS_MODE_64 | endian)
        for insn in self._cs.disasm(word.to_bytes(4, self._order), addr, 1):
            operands = insn.op_str
            if target is not None and is_relative_branch(word):
                operands = _named_target(operands, branch_target(addr, word), target)
            return f"{insn.mnemonic} {operands}".strip()
        return f".long {word:#010x}"


def _named_target(operands: str, target: int, name: str) -> str:
    """capstone's operands of a relative branch with ``name`` for its ``target``. capstone prints
    the target last, as :func:`branch_text` does, but leaves it out of a conditional branch whose
    offset is 0 (``bne cr7``, as an unrelocated REL14 branch reads): then it is added."""
    target &= 0xFFFF_FFFF_FFFF_FFFF
    shown = f"{target:#x}" if target > 9 else str(target)
    if operands == shown or operands.endswith(", " + shown):
        return operands.removesuffix(shown) + name
    return f"{operands}, {name}" if operands else name
