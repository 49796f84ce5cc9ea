"""Per-site states of an ftrace call site, the word kinds its slots hold, and the legal writes.

A site is the short instruction sequence at a function's entry that ftrace patches. Where its
slots lie in each generation, and which states each layout has, is the generation table in
``rewriter.generations``; this module is the state machine those layouts share:

* the mflr-in-line layouts (mprofile, gcc 5's mprofile-std, patchable): slot A holds ``mflr r0``
  or a stand-in, slot B the call; the state is read from (A, B) and :data:`TRANSITIONS` lists every
  legal single-word write;
* the out-of-line layout (ool, 6.13+): one slot B at the function entry, ``nop`` or ``b stub``;
  :data:`OOL_TRANSITIONS`. The stub's ``mflr r0; bl ftrace_caller`` is written once at boot, so no
  write ever leaves a task with r0 not holding LR before a ``bl``: no barrier is needed.

Pure logic: no file I/O.

Why ``b +8`` only guards the two-slot layouts
---------------------------------------------
``b .+8`` in slot A jumps 8 bytes forward.  With A at ``ip-4`` and B at ``ip`` (mprofile,
patchable) that lands past B, so a site reading ``b+8; bl`` (``armed``) never calls with a stale r0.
In ``mprofile-std`` A is at ``ip-8`` and S at ``ip-4``: the jump lands *on* B.  ``b+8; std; bl``
would run ``bl _mcount`` with r0 not holding LR, i.e. ``broken`` in disguise, so ``guarded``/``armed``
are not states of a gcc-5 site and the ``b8`` route does not exist for it (``rewriter.check``
confirms this: the built-in ``b8-enable-gcc5`` is UNSAFE).

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
the model checker executes whatever S holds.

``patchable`` is compiled ``nop; nop``; the kernel's ``ftrace_init_nop`` writes ``mflr`` into A
(``nopped -> disabled``) before the code can run, and enables by writing only B.  Leaving A a nop
and writing ``bl`` into B is the 2019 race unchanged, so the same routes apply (``rewriter.check``
built-ins ``patchable-naive-enable``, UNSAFE, and ``patchable-b8-enable``, SAFE; ``ool-enable`` and
``ool-disable`` prove the one-word ool writes SAFE with no barrier).
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from types import MappingProxyType
from typing import Final, NamedTuple

from rewriter import ppc


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
    CALL = "bl"  # bl to the tracer: _mcount, ftrace_caller, or a stub or trampoline that leads there
    STUB = "b stub"  # ool: b to this site's out-of-line stub
    MTLR = "mtlr"  # mtlr r0 (ool stub only)
    BACK = "b ip+4"  # the ool stub's branch back to the function (ool stub only)
    OTHER = "other"

    # Members are singletons, equal only to themselves: hash them by identity, in C. Enum's own
    # __hash__ is a Python call, and the model checker hashes words some 40 million times in one
    # large check (its states and fetch sets hold them): a fifth of its time.
    __hash__ = object.__hash__


def words_text(words: tuple[Insn, ...]) -> str:
    """Slot words as people write them: ``mflr r0; nop``."""
    return "; ".join("mflr r0" if w is Insn.MFLR else w.value for w in words)


class SiteState(enum.Enum):
    ENABLED = "enabled"  # mflr r0; bl _mcount
    DISABLED = "disabled"  # mflr r0; nop
    NOPPED = "nopped"  # nop;     nop
    GUARDED = "guarded"  # b +8;    nop
    ARMED = "armed"  # b +8;    bl _mcount
    BROKEN = "broken"  # nop;     bl _mcount  -- the race state: report it, never produce it
    UNKNOWN = "unknown"  # the slots hold something else


PLAIN: Final[Mapping[ppc.WordKind, Insn]] = MappingProxyType(
    {ppc.WordKind.MFLR: Insn.MFLR, ppc.WordKind.NOP: Insn.NOP, ppc.WordKind.B8: Insn.B8, ppc.WordKind.STD: Insn.STD}
)
"""The word kinds that mean the same in every slot. A ``bl`` is a CALL and a ``b`` a STUB only
where they go (:func:`insn_kind`); ``mtlr r0`` belongs to the ool stub, and in a slot is OTHER."""


def insn_kind(word: int, calls_tracer: bool, to_stub: bool = False) -> Insn:
    """Classify one slot word. ``calls_tracer`` says whether a ``bl`` here reaches the tracer
    entry, ``to_stub`` whether a ``b`` here reaches the site's ool stub (decided by the caller: by
    target address in linked images, by relocation in ET_REL)."""
    kind = ppc.kind(word)
    if kind is ppc.WordKind.BL:
        return Insn.CALL if calls_tracer else Insn.OTHER
    if kind is ppc.WordKind.B:
        return Insn.STUB if to_stub else Insn.OTHER
    return PLAIN.get(kind, Insn.OTHER)


def word_for(insn: Insn, addr: int, call_target: int) -> int:
    """The word to write for ``insn`` at ``addr``; a call (``bl``) or ``b stub`` is re-encoded for
    this address and ``call_target`` (the tracer entry, or the site's stub)."""
    if insn is Insn.CALL:
        return ppc.bl(addr, call_target)
    if insn is Insn.STUB:
        return ppc.b(addr, call_target)
    if insn not in _PLAIN_WORDS:
        raise ValueError(f"no word encodes {insn.value}")
    return _PLAIN_WORDS[insn]


_PLAIN_WORDS: Final[Mapping[Insn, int]] = MappingProxyType({PLAIN[k]: w for w, k in ppc.FIXED.items() if k in PLAIN})
"""The one word of each insn in :data:`PLAIN`."""


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
Restrict to a variant with ``generations.steps_from`` (a layout's ``transitions``).
"""

OOL_TRANSITIONS: Final[Mapping[tuple[SiteState, SiteState], Step]] = MappingProxyType(
    {
        # The entry word alone: nop <-> b stub. The stub (mflr r0; bl ftrace_caller; mtlr r0;
        # b ip+4) is never written by a plan, so a task that took the old `b stub` still runs
        # mflr before its bl, and one that ran the old nop never reaches a bl: no barrier.
        (SiteState.DISABLED, SiteState.ENABLED): Step(Slot.B, Insn.NOP, Insn.STUB, False, False),
        (SiteState.ENABLED, SiteState.DISABLED): Step(Slot.B, Insn.STUB, Insn.NOP, False, False),
    }
)
"""``(from, to) -> Step`` for the ool layout."""

S_WRITES: Final[frozenset[tuple[Insn, Insn]]] = frozenset({(Insn.STD, Insn.NOP), (Insn.NOP, Insn.STD)})
"""The writes a plan may make to the gcc-5 S slot; neither changes r0 or the control flow."""
