"""Per-site states of an ftrace call site, and the word kinds its slots hold.

A site is the short instruction sequence at a function's entry that ftrace patches:

* ``mprofile``      (gcc >= 6, ``-pg -mprofile-kernel``):   A: ``mflr r0``; B: ``bl _mcount``
* ``mprofile-std``  (gcc 5):  A: ``mflr r0``; S: ``std r0,16(r1)``; B: ``bl _mcount``
* ``patchable``     (``-fpatchable-function-entry=2``, kernel 6.6+): A: ``nop``; B: ``nop`` as
  compiled; the kernel's ``ftrace_init_nop`` turns A into ``mflr r0`` and enabling puts ``bl`` in B.

The state of a site is a function of what its A (mflr) and B (call) slots hold; see
:data:`STATE_SLOTS`.  Pure logic: no file I/O.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from typing import Final

from rewriter import ppc


class Variant(enum.Enum):
    MPROFILE = "mprofile"
    MPROFILE_STD = "mprofile-std"
    PATCHABLE = "patchable"


class Slot(enum.Enum):
    A = "A"  # the mflr slot
    S = "S"  # the std r0,16(r1) slot (mprofile-std only)
    B = "B"  # the call slot: what the kernel records


class Insn(enum.Enum):
    """What a slot holds, as far as ftrace is concerned."""

    MFLR = "mflr"  # mflr r0
    NOP = "nop"
    B8 = "b+8"  # b .+8: jump over the call slot
    STD = "std"  # std r0,16(r1)
    CALL = "bl"  # bl to the mcount entry (or a stub that leads to it)
    OTHER = "other"


class SiteState(enum.Enum):
    ENABLED = "enabled"  # mflr r0; bl _mcount
    DISABLED = "disabled"  # mflr r0; nop
    NOPPED = "nopped"  # nop;     nop
    GUARDED = "guarded"  # b +8;    nop
    ARMED = "armed"  # b +8;    bl _mcount
    BROKEN = "broken"  # nop;     bl _mcount  -- the race state: report it, never produce it
    UNKNOWN = "unknown"  # the slots hold something else


STATE_SLOTS: Final[Mapping[SiteState, tuple[Insn, Insn]]] = {
    SiteState.ENABLED: (Insn.MFLR, Insn.CALL),
    SiteState.DISABLED: (Insn.MFLR, Insn.NOP),
    SiteState.NOPPED: (Insn.NOP, Insn.NOP),
    SiteState.GUARDED: (Insn.B8, Insn.NOP),
    SiteState.ARMED: (Insn.B8, Insn.CALL),
    SiteState.BROKEN: (Insn.NOP, Insn.CALL),
}
"""(A, B) per state. The std slot of ``mprofile-std`` sites does not enter the state."""

_STATE_OF: Final[Mapping[tuple[Insn, Insn], SiteState]] = {v: k for k, v in STATE_SLOTS.items()}


def insn_kind(word: int, calls_mcount: bool) -> Insn:
    """Classify one slot word. ``calls_mcount`` says whether a ``bl`` here reaches the mcount entry
    (decided by the caller: by target address in linked images, by relocation in ET_REL)."""
    if word == ppc.MFLR_R0:
        return Insn.MFLR
    if word == ppc.NOP:
        return Insn.NOP
    if word == ppc.B_PLUS_8:
        return Insn.B8
    if word == ppc.STD_R0_16_R1:
        return Insn.STD
    if ppc.is_bl(word) and calls_mcount:
        return Insn.CALL
    return Insn.OTHER


def state_of(a: Insn, b: Insn) -> SiteState:
    """The state named by the A and B slots, or ``UNKNOWN``."""
    return _STATE_OF.get((a, b), SiteState.UNKNOWN)


def word_for(insn: Insn, addr: int, call_target: int) -> int:
    """The word to write for ``insn`` at ``addr``; a call is re-encoded for this address."""
    if insn is Insn.CALL:
        return ppc.bl(addr, call_target)
    words = {Insn.MFLR: ppc.MFLR_R0, Insn.NOP: ppc.NOP, Insn.B8: ppc.B_PLUS_8, Insn.STD: ppc.STD_R0_16_R1}
    if insn not in words:
        raise ValueError(f"no word encodes {insn.value}")
    return words[insn]
