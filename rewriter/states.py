"""Per-site states of an ftrace call site, and the word kinds its slots hold.

A site is the short instruction sequence at a function's entry that ftrace patches:

* ``mprofile``      (gcc >= 6, ``-pg -mprofile-kernel``):   A: ``mflr r0``; B: ``bl _mcount``
* ``mprofile-std``  (gcc 5):  A: ``mflr r0``; S: ``std r0,16(r1)``; B: ``bl _mcount``
* ``patchable``     (``-fpatchable-function-entry=2``, kernel 6.6+): A: ``nop``; B: ``nop`` as
  compiled; the kernel's ``ftrace_init_nop`` turns A into ``mflr r0`` and enabling puts ``bl`` in B.

The state of a site is a function of what its A (mflr) and B (call) slots hold; see
:data:`STATE_SLOTS`.  :data:`TRANSITIONS` lists every legal single-word write between states and
:data:`VARIANT_STATES` which states each variant may take.  Pure logic: no file I/O.

Why ``b +8`` only guards the two-slot ``mprofile`` layout
-----------------------------------------------------------
``b .+8`` in slot A jumps 8 bytes forward.  In ``mprofile`` (A at ``ip-4``, B at ``ip``) that lands
past B, so a site reading ``b+8; bl`` (``armed``) never calls with a stale r0.  In ``mprofile-std``
A is at ``ip-8`` and S at ``ip-4``: the jump lands *on* B.  ``b+8; std; bl`` would run ``bl _mcount``
with r0 not holding LR, i.e. ``broken`` in disguise, so ``guarded``/``armed`` are not states of a
gcc-5 site and the ``b8`` route does not exist for it (``rewriter.check`` confirms this: the built-in
``b8-enable-gcc5`` is UNSAFE).

The gcc-5 ``std`` slot (S)
--------------------------
gcc 5 emits ``mflr r0; std r0,16(r1); bl _mcount``.  The ``std`` only copies r0 to the LR save
doubleword: it neither reads LR nor changes r0 or the control flow, so it cannot create or prevent
the stale-r0 race, and a site's state is read from A and B alone.  What the kernel does with S:

* v6.6 ``ftrace_init_nop`` (arch/powerpc/kernel/trace/ftrace.c, ``CONFIG_MPROFILE_KERNEL``):
  ``ftrace_read_inst(ip - 4)``; if that is not ``mflr r0`` it *validates* ``mflr r0`` at ``ip-8``
  and ``std r0,16(r1)`` at ``ip-4`` and nops only the ``bl``.  S stays ``std``.
* Naveen Rao, "powerpc64/ftrace: Nop out additional 'std' instruction emitted by gcc v5.x"
  (posted Oct 2024 with the out-of-line ftrace series, after v6.6): the same branch instead
  compare-and-swaps ``std -> nop`` at ``ip-4``, and ``ftrace_regs_entry`` stores r0 to the LR save
  slot itself, so gcc-5 and gcc-6 sites share the two-instruction sequence.  ``mflr`` stays.

Either kernel's ``ftrace_init_nop`` expects ``std`` at ``ip-4`` when it first sees a gcc-5 site, so
mcountrw plans never write S; a plan read from JSON may (``std <-> nop``, see :data:`S_WRITES`), and
the model checker executes whatever S holds.  Legal orders for gcc-5 sites are therefore those of
``mprofile`` restricted to ``enabled``/``disabled``/``nopped``, with one more preemption point (at
S) between A and B, which the checker explores.

``patchable`` follows the kernel's 6.6+ scheme: compiled ``nop; nop``, ``ftrace_init_nop`` writes
``mflr`` into A (``nopped -> disabled``) before the code can run, and enabling writes only B.
The kernel has no ``b +8`` state for it, so neither does mcountrw.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from types import MappingProxyType
from typing import Final, NamedTuple

from rewriter import ppc
from rewriter.errors import PlanRejected


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


SLOTS: Final[Mapping[Variant, tuple[Slot, ...]]] = MappingProxyType(
    {
        Variant.MPROFILE: (Slot.A, Slot.B),  # A at ip-4, B at ip
        Variant.MPROFILE_STD: (Slot.A, Slot.S, Slot.B),  # A at ip-8, S at ip-4, B at ip
        Variant.PATCHABLE: (Slot.A, Slot.B),  # A at ip-4, B at ip
    }
)
"""The slots of a site in address order, 4 bytes apart.  ``b .+8`` in A lands two slots on."""

VARIANT_STATES: Final[Mapping[Variant, frozenset[SiteState]]] = MappingProxyType(
    {
        Variant.MPROFILE: frozenset(
            {SiteState.ENABLED, SiteState.DISABLED, SiteState.NOPPED, SiteState.GUARDED, SiteState.ARMED}
        ),
        # b+8 at ip-8 lands on the bl: see the module docstring.
        Variant.MPROFILE_STD: frozenset({SiteState.ENABLED, SiteState.DISABLED, SiteState.NOPPED}),
        # the kernel's 6.6+ patchable-entry scheme: nops -> mflr+nop -> mflr+bl.
        Variant.PATCHABLE: frozenset({SiteState.ENABLED, SiteState.DISABLED, SiteState.NOPPED}),
    }
)
"""The states a site of each variant may be planned into.  ``broken`` is never one of them."""


class Step(NamedTuple):
    """One aligned 4-byte write that moves a site from one state to another.

    ``needs_barrier_before``: a barrier (``synchronize_rcu_tasks``) must complete between the last
    moment slot A read ``nop`` (during the plan, or at its start) and this write.  A task that ran
    that ``nop`` may still be between A and B with r0 not holding LR; making B a live ``bl`` before
    it has left is the 2019 race.  True exactly for the writes that make B a ``bl``.

    ``mflr_write``: the write puts ``mflr r0`` into A or takes it out.  Power ISA 3.0's rules for
    concurrent modification and execution (Book II, "Concurrent Modification and Execution of
    Instructions") do not list ``mflr`` among the instructions that may be patched while another
    thread executes them; ISA 3.1 relaxed this.  So under ``--cmodx 3.0`` these rows are offline-only.
    """

    slot: Slot
    old: Insn
    new: Insn
    needs_barrier_before: bool
    mflr_write: bool


TRANSITIONS: Final[Mapping[tuple[SiteState, SiteState], Step]] = MappingProxyType(
    {
        # (from, to): Step(slot, old, new, needs_barrier_before, mflr_write)
        (SiteState.NOPPED, SiteState.DISABLED): Step(Slot.A, Insn.NOP, Insn.MFLR, False, True),
        (SiteState.NOPPED, SiteState.GUARDED): Step(Slot.A, Insn.NOP, Insn.B8, False, False),
        (SiteState.DISABLED, SiteState.NOPPED): Step(Slot.A, Insn.MFLR, Insn.NOP, False, True),
        (SiteState.DISABLED, SiteState.GUARDED): Step(Slot.A, Insn.MFLR, Insn.B8, False, True),
        (SiteState.GUARDED, SiteState.NOPPED): Step(Slot.A, Insn.B8, Insn.NOP, False, False),
        (SiteState.GUARDED, SiteState.DISABLED): Step(Slot.A, Insn.B8, Insn.MFLR, False, True),
        (SiteState.ENABLED, SiteState.ARMED): Step(Slot.A, Insn.MFLR, Insn.B8, False, True),
        (SiteState.ARMED, SiteState.ENABLED): Step(Slot.A, Insn.B8, Insn.MFLR, False, True),
        (SiteState.DISABLED, SiteState.ENABLED): Step(Slot.B, Insn.NOP, Insn.CALL, True, False),
        (SiteState.ENABLED, SiteState.DISABLED): Step(Slot.B, Insn.CALL, Insn.NOP, False, False),
        (SiteState.GUARDED, SiteState.ARMED): Step(Slot.B, Insn.NOP, Insn.CALL, True, False),
        (SiteState.ARMED, SiteState.GUARDED): Step(Slot.B, Insn.CALL, Insn.NOP, False, False),
        (SiteState.BROKEN, SiteState.ENABLED): Step(Slot.A, Insn.NOP, Insn.MFLR, False, True),
        (SiteState.BROKEN, SiteState.ARMED): Step(Slot.A, Insn.NOP, Insn.B8, False, False),
        (SiteState.BROKEN, SiteState.NOPPED): Step(Slot.B, Insn.CALL, Insn.NOP, False, False),
    }
)
"""``(from, to) -> Step`` for the two-slot layout; one row per legal single-word write.

"barrier" is ``needs_barrier_before`` and "mflr" is ``mflr_write``.

Missing on purpose: any write *into* ``broken`` (``nopped -> broken``, ``enabled -> broken``,
``armed -> broken``), and two-word changes.  Rows out of ``broken`` exist for offline repair only:
at run time a broken site may already be crashing a CPU, and no plan can undo that.
Restrict to a variant with :func:`step_for` / :func:`steps_from`.
"""

S_WRITES: Final[frozenset[tuple[Insn, Insn]]] = frozenset({(Insn.STD, Insn.NOP), (Insn.NOP, Insn.STD)})
"""The writes a plan may make to the gcc-5 S slot; neither changes r0 or the control flow."""


_WHY_NOT_A_STATE: Final[Mapping[Variant, str]] = MappingProxyType(
    {
        Variant.MPROFILE: "",
        Variant.MPROFILE_STD: "`b +8` in slot A (ip-8) lands on the bl at ip, so it guards nothing",
        Variant.PATCHABLE: "the kernel's patchable-entry scheme has no `b +8` state",
    }
)


def state_rejection(variant: Variant, state: SiteState) -> str | None:
    """Why ``state`` cannot be planned for a ``variant`` site, or None if it can.

    ``broken`` passes here (a site may be found broken and repaired offline); refusing it as a
    target, or as a starting point at run time, is the planner's job.
    """
    if state is SiteState.UNKNOWN:
        return f"{variant.value}: a site in state unknown (its slots hold other words) cannot be planned"
    if state in VARIANT_STATES[variant] or state is SiteState.BROKEN:
        return None
    return f"{variant.value}: {state.value} is not a state of this variant: {_WHY_NOT_A_STATE[variant]}"


def step_for(variant: Variant, src: SiteState, dst: SiteState) -> Step:
    """The single write from ``src`` to ``dst`` for ``variant``; raises :class:`PlanRejected` with why not."""
    for state in (src, dst):
        reason = state_rejection(variant, state)
        if reason is not None:
            raise PlanRejected(reason)
    if dst is SiteState.BROKEN:
        raise PlanRejected(f"{variant.value}: {src.value} -> broken would run bl with r0 not holding LR")
    step = TRANSITIONS.get((src, dst))
    if step is None:
        raise PlanRejected(f"{variant.value}: {src.value} -> {dst.value} is not one aligned 4-byte write")
    return step


def steps_from(variant: Variant, src: SiteState) -> dict[SiteState, Step]:
    """The legal single writes out of ``src`` for ``variant``, keyed by the state they lead to."""
    return {
        dst: step
        for (frm, dst), step in TRANSITIONS.items()
        if frm is src and state_rejection(variant, frm) is None and dst in VARIANT_STATES[variant]
    }
