"""The three generations of ppc64 ftrace call sites, and the one table of their layouts.

Every fact about where a site's words lie, what the compiler leaves there, what the kernel's
boot-time ``ftrace_init_nop()`` checks and writes, and which words tracing toggles, is a row of
:data:`LAYOUTS`. Every other module asks this table (the ool stub's geometry too:
:meth:`Layout.stub_code`); none spells out an offset of its own.

==========  =========================  ====================  ==================  ==================
variant     slots (from the call slot)  record points at      built (in a file)   after boot init
==========  =========================  ====================  ==================  ==================
mprofile    A -4, B 0                   B (the ``bl``)        mflr; bl _mcount    mflr; nop
mprof-std   A -8, S -4, B 0             B (the ``bl``)        mflr; std; bl       mflr; std; nop
patchable   A -4, B 0                   A (the first nop)     nop; nop            mflr; nop
ool         B 0                         B (the one nop)       nop                 nop (+ its stub)
==========  =========================  ====================  ==================  ==================

Sources (Debian's linux-source of each corpus kernel):

* **mprofile** (<= 6.5, ``-pg -mprofile-kernel``): recordmcount records the ``bl _mcount``;
  ``ftrace_call_adjust()`` returns the address unchanged; the generic ``ftrace_init_nop`` calls
  ``ftrace_make_nop``, which compares the exact ``bl _mcount`` and writes ``nop`` (from 6.6, on a
  kernel still built this way, ``ftrace_init_nop`` first checks the ``mflr r0`` before it, or gcc
  5's ``mflr; std``: tests/test_rewrite_generations.py boots one that finds neither). Enabling writes
  ``bl ftrace_caller`` (or a trampoline) into B; ``mflr r0`` in A is never patched.
* **patchable** (6.6-6.12, ``-fpatchable-function-entry=2``): the compiler's
  ``__patchable_function_entries`` name the *first* nop; ``ftrace_call_adjust()`` adds 4, so the
  kernel's ``rec->ip`` is B. ``ftrace_init_nop`` checks that A and B are both ``nop`` and writes
  ``mflr r0`` into A for good; enabling writes only B.
* **ool** (6.13+, ``CONFIG_PPC_FTRACE_OUT_OF_LINE``, ``-fpatchable-function-entry=1``): one nop
  at the local entry, recorded as is. ``ftrace_init_nop`` checks only that it is ``nop`` and fills
  an out-of-line stub ``mflr r0; bl ftrace_caller; mtlr r0; b ip+4`` (``ftrace_init_ool_stub``,
  no check of the stub's old words); enabling turns the entry into ``b stub``.

The version ranges assume a compiler that passes the kernel's
``arch/powerpc/tools/gcc-check-fpatchable-function-entry.sh``: built by one that fails it (Debian
12's 6.12, by gcc 12: ``CONFIG_MPROFILE_KERNEL`` without ``ARCH_USING_PATCHABLE_FUNCTION_ENTRY``),
a 6.6+ kernel keeps mprofile sites. So the generation is read from an image, never from its version.

A fourth layout, classic ``-pg`` (a ppc64 ELFv1 kernel's, or a clang-built one's on either ABI:
``bl _mcount`` after the prologue, no ``mflr r0`` in the site), is no row here: every command refuses it by name
(:func:`rewriter.detect.is_classic_pg`).

In all three the kernel's boot-time check accepts exactly the *built* words at a recorded place
(anything else: ``expected (...) != found (...)``, ``ftrace bug``, ftrace off for the boot), and
every recorded site that passes leaves init *disabled*: traceable, not traced. One exception: the
vmlinux of a kernel before 6.6 checks only an mprofile site's ``bl`` (:data:`CALL_ONLY_BOOT`), so
a ``nop; bl _mcount`` there boots as ``nop; nop``.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Final

from rewriter.errors import PlanRejected
from rewriter.ppc import INSN_SIZE
from rewriter.states import OOL_TRANSITIONS, TRANSITIONS, Insn, SiteState, Slot, Step


class Generation(enum.Enum):
    """How a kernel build lays out its ftrace sites; one per image."""

    MPROFILE = "mprofile"  # <= 6.5: mflr r0; bl _mcount
    PATCHABLE = "patchable"  # 6.6-6.12: nop; nop
    OOL = "ool"  # 6.13+: nop, and an out-of-line stub


class Variant(enum.Enum):
    """A site's layout: the generation, refined by the compiler's sequence (gcc 5's ``std``)."""

    MPROFILE = "mprofile"
    MPROFILE_STD = "mprofile-std"
    PATCHABLE = "patchable"
    OOL = "ool"


# The ool stub areas of a 6.13+ vmlinux (arch/powerpc/kernel/trace/ftrace_entry.S and
# arch/powerpc/tools/ftrace-gen-ool-stubs.sh), each with a ``<name>_count`` symbol beside it.
OOL_TEXT: Final = "ftrace_ool_stub_text"  # reserved inside .text (CONFIG_PPC_FTRACE_OUT_OF_LINE_NUM_RESERVE)
OOL_TEXT_END: Final = "ftrace_ool_stub_text_end"  # the rest of .text's, after it
OOL_INITTEXT: Final = "ftrace_ool_stub_inittext"  # .init.text's
OOL_AREAS = (OOL_TEXT, OOL_TEXT_END, OOL_INITTEXT)


@dataclass(frozen=True)
class Layout:
    """One row of the generation table.

    ``offsets`` gives each of ``slots`` as a byte distance from the call slot B (the word that
    becomes the branch to the tracer; the site's address). ``record_offset`` is where the kernel's
    record points, from B. ``state_slots`` are the slots whose words name the state
    (``states``: words of ``state_slots`` per state); ``S`` never does. ``built`` is what the
    compiler leaves and the only state ftrace_init_nop accepts at a recorded site; ``booted`` what
    it leaves there. ``tracer`` is what the running kernel's enabled ``bl`` calls (the site's, or
    the ool stub's): :data:`TRACER_ENTRY` in every generation (never the file's ``_mcount``, which
    boot init nops). ``stub`` is the out-of-line stub that ``b stub`` enters (ool only), written
    once at boot and never patched again.
    """

    variant: Variant
    generation: Generation
    slots: tuple[Slot, ...]
    offsets: tuple[int, ...]
    record_offset: int
    state_slots: tuple[Slot, ...]
    states: Mapping[SiteState, tuple[Insn, ...]]
    transitions: Mapping[tuple[SiteState, SiteState], Step]
    built: SiteState
    booted: SiteState
    tracer: str
    stub: tuple[Insn, ...] = ()
    no_b8: str = ""  # why `guarded`/`armed` are not states of this variant ("" if they are)

    def offset(self, slot: Slot) -> int | None:
        """Byte distance from the call slot to ``slot``; None if this layout has no such slot."""
        return self.offsets[self.slots.index(slot)] if slot in self.slots else None

    @property
    def first_offset(self) -> int:
        """Distance from the call slot back to the site's first word."""
        return self.offsets[0]

    def state_of(self, words: tuple[Insn, ...]) -> SiteState:
        """The state named by the words of ``state_slots``, or ``UNKNOWN``."""
        return _STATE_OF[self.variant].get(words, SiteState.UNKNOWN)

    def words(self, state: SiteState) -> tuple[Insn, ...]:
        """The words of ``state_slots`` in ``state``; ``broken`` included where it can be read (two
        slots: ``nop; bl``). Raises ``KeyError`` for a state this layout cannot hold."""
        if state is SiteState.BROKEN and len(self.state_slots) == 2:
            return TWO_SLOT_STATES[state]
        return self.states[state]

    def kernel_only(self, state: SiteState) -> bool:
        """Whether only the running kernel may put a site in ``state``: one that calls the tracer,
        on a layout built as nops (patchable, ool). Its boot-time init accepts only those nops at a
        recorded place, an unrecorded call is never managed, and an ool ``b stub`` would enter a
        stub only the boot fills: an offline rewrite never writes it."""
        if self.generation is Generation.MPROFILE:
            return False
        try:
            words = self.words(state)  # broken (nop; bl) included: it holds a call
        except KeyError:
            return False  # a state the layout lacks is refused as such (state_rejection), not here
        return any(w in (Insn.CALL, Insn.STUB) for w in words)

    def stub_code(self, stub: int, stub_size: int) -> int:
        """Where the instructions of a ``stub_size``-byte stub at ``stub`` begin: at its end, after
        the ops pointer a kernel with CALL_OPS puts first (``struct ftrace_ool_stub``)."""
        return stub + stub_size - INSN_SIZE * len(self.stub)

    def stub_word(self, insn: Insn) -> int:
        """Byte distance of the stub's ``insn`` (``BACK``: its ``b`` back) from its first instruction."""
        return INSN_SIZE * self.stub.index(insn)

    @property
    def mflr_in_site(self) -> bool:
        """Some state puts ``mflr r0`` in the site itself, so a task may be inside the site with r0
        not yet holding LR (the 2019 race). False for ool: its ``mflr r0`` is the stub's first word,
        right before the stub's ``bl``, and the stub is never written after boot."""
        return any(Insn.MFLR in words for words in self.states.values())


# What an enabled site's `bl` calls at run time, in every generation: the kernel's enable computes it
# from ftrace_get_addr_new(), FTRACE_ADDR (ftrace_caller) for the function tracer, FTRACE_REGS_ADDR
# (ftrace_regs_caller) for an ops that saves regs (kprobes, livepatch); a site out of branch range
# reaches either through a trampoline (ftrace_tramp_text/_init in the vmlinux, a module's ftrace
# stub). 6.1: ftrace_make_call() (arch/powerpc/kernel/trace/ftrace.c), `bl addr` in range, else
# __ftrace_make_call_kernel()/__ftrace_make_call() via the trampoline; 6.12 (patchable, and Debian
# 12's gcc-12 mprofile build, the same file) and 7.2: ftrace_replace_code() and ftrace_make_call()
# through ftrace_get_call_inst(), which on ool writes the `bl` into the stub's second word. `_mcount`
# is only the call an mprofile *file* holds: boot init nops it, and nothing writes it back at run
# time. Traces name the function tracer's entry; the others differ only in what the tracer saves.
TRACER_ENTRY: Final = "ftrace_caller"


class Caller(enum.Enum):
    """The tracer entry the kernel's enable points a site's ``bl`` at (``plan --image --caller``):
    ``FTRACE_ADDR`` (``ftrace_caller``, :data:`TRACER_ENTRY`), or ``FTRACE_REGS_ADDR``
    (``ftrace_regs_caller``) for a site an ops with FTRACE_OPS_FL_SAVE_REGS traces (kprobes on
    ftrace, livepatch): ftrace_get_addr_new() gives it for a record with FTRACE_FL_REGS. Out of
    branch range both reach the same trampoline, which branches to ftrace_regs_caller."""

    FTRACE_CALLER = TRACER_ENTRY
    FTRACE_REGS_CALLER = "ftrace_regs_caller"


# find_ftrace_tramp()'s trampoline for core text beyond branch range of the tracer entry; its
# twin, ftrace_tramp_init, is dropped with init text (ftrace_free_init_tramp()). A bl to it is
# either caller's: it branches to ftrace_regs_caller.
TRAMPOLINE: Final = "ftrace_tramp_text"
TRAMPOLINE_CALL: Final = f"{TRAMPOLINE}, which branches to ftrace_regs_caller"


TWO_SLOT_STATES: Final[Mapping[SiteState, tuple[Insn, ...]]] = MappingProxyType(
    {
        SiteState.ENABLED: (Insn.MFLR, Insn.CALL),
        SiteState.DISABLED: (Insn.MFLR, Insn.NOP),
        SiteState.NOPPED: (Insn.NOP, Insn.NOP),
        SiteState.GUARDED: (Insn.B8, Insn.NOP),
        SiteState.ARMED: (Insn.B8, Insn.CALL),
        SiteState.BROKEN: (Insn.NOP, Insn.CALL),
    }
)
"""(A, B) per state, for the mflr-in-line layouts (mprofile, gcc 5's, patchable)."""

OOL_STATES: Final[Mapping[SiteState, tuple[Insn, ...]]] = MappingProxyType(
    {SiteState.DISABLED: (Insn.NOP,), SiteState.ENABLED: (Insn.STUB,)}
)
"""(B,) per state: the entry word alone; the stub's ``mflr`` runs just before its ``bl``."""

_ALL_TWO_SLOT: Final = frozenset(TWO_SLOT_STATES) - {SiteState.BROKEN}
_NO_B8: Final = _ALL_TWO_SLOT - {SiteState.GUARDED, SiteState.ARMED}
_AB: Final = (Slot.A, Slot.B)

LAYOUTS: Final[Mapping[Variant, Layout]] = MappingProxyType(
    {
        Variant.MPROFILE: Layout(
            Variant.MPROFILE, Generation.MPROFILE, _AB, (-4, 0), 0, _AB,
            MappingProxyType({s: TWO_SLOT_STATES[s] for s in _ALL_TWO_SLOT}), TRANSITIONS,
            built=SiteState.ENABLED, booted=SiteState.DISABLED, tracer=TRACER_ENTRY,
        ),
        Variant.MPROFILE_STD: Layout(
            Variant.MPROFILE_STD, Generation.MPROFILE, (Slot.A, Slot.S, Slot.B), (-8, -4, 0), 0, _AB,
            MappingProxyType({s: TWO_SLOT_STATES[s] for s in _NO_B8}), TRANSITIONS,
            built=SiteState.ENABLED, booted=SiteState.DISABLED, tracer=TRACER_ENTRY,
            no_b8="`b +8` in slot A (ip-8) lands on the bl at ip, so it guards nothing",
        ),
        Variant.PATCHABLE: Layout(
            Variant.PATCHABLE, Generation.PATCHABLE, _AB, (-4, 0), -4, _AB,
            MappingProxyType({s: TWO_SLOT_STATES[s] for s in _ALL_TWO_SLOT}), TRANSITIONS,
            built=SiteState.NOPPED, booted=SiteState.DISABLED, tracer=TRACER_ENTRY,
        ),
        Variant.OOL: Layout(
            Variant.OOL, Generation.OOL, (Slot.B,), (0,), 0, (Slot.B,),
            OOL_STATES, OOL_TRANSITIONS,
            built=SiteState.DISABLED, booted=SiteState.DISABLED, tracer=TRACER_ENTRY,
            stub=(Insn.MFLR, Insn.CALL, Insn.MTLR, Insn.BACK),
            no_b8="the ool entry is one word: there is no mflr slot to guard",
        ),
    }
)  # fmt: skip
"""The generation table: one row per site layout."""

# What a kernel before 6.6 makes of a recorded mprofile site in its vmlinux: its ftrace_init_nop() is
# the generic one, which calls ftrace_make_nop(), and that swaps the `bl _mcount` at rec->ip for a
# nop (ftrace_modify_code(): the one word it compares) and never reads slot A. So `nop; bl _mcount`,
# the seed thread's naive nopping of the mflr, boots as `nop; nop`, not as an ftrace bug. A module's
# call is out of branch range and goes through __ftrace_make_nop(), which also wants `mflr r0` or
# `std r0,16(r1)` before it; from 6.6 the powerpc ftrace_init_nop() checks A in the vmlinux too.
CALL_ONLY_BOOT: Final[Mapping[SiteState, SiteState]] = MappingProxyType(
    {SiteState.ENABLED: SiteState.DISABLED, SiteState.BROKEN: SiteState.NOPPED, SiteState.ARMED: SiteState.GUARDED}
)
SLOT_A_CHECKED_SINCE: Final = (6, 6)

_STATE_OF: Final[Mapping[Variant, Mapping[tuple[Insn, ...], SiteState]]] = MappingProxyType(
    {
        v: {**{w: s for s, w in (TWO_SLOT_STATES if len(lay.state_slots) == 2 else OOL_STATES).items()}}
        for v, lay in LAYOUTS.items()
    }
)

GENERATION_VARIANTS: Final[Mapping[Generation, tuple[Variant, ...]]] = MappingProxyType(
    {
        Generation.MPROFILE: (Variant.MPROFILE, Variant.MPROFILE_STD),
        Generation.PATCHABLE: (Variant.PATCHABLE,),
        Generation.OOL: (Variant.OOL,),
    }
)


def default_variant(generation: Generation) -> Variant:
    """The variant a generation's sites have unless the compiler says otherwise (gcc 5's std)."""
    return GENERATION_VARIANTS[generation][0]


# -- what may be planned ----------------------------------------------------------------------


def state_rejection(variant: Variant, state: SiteState) -> str | None:
    """Why ``state`` cannot be planned for a ``variant`` site, or None if it can.

    ``broken`` passes here for the two-slot layouts (a site may be found broken and repaired
    offline); refusing it as a target, or as a starting point at run time, is the planner's job.
    """
    lay = LAYOUTS[variant]
    if state is SiteState.UNKNOWN:
        return f"{variant.value}: a site in state unknown (its slots hold other words) cannot be planned"
    if state in lay.states or (state is SiteState.BROKEN and len(lay.state_slots) == 2):
        return None
    if variant is Variant.OOL:
        return f"ool: {state.value} is not a state of an ool site (nop is disabled, `b stub` enabled)"
    return f"{variant.value}: {state.value} is not a state of this variant: {lay.no_b8}"


def step_for(variant: Variant, src: SiteState, dst: SiteState) -> Step:
    """The single write from ``src`` to ``dst`` for ``variant``; raises ``PlanRejected`` with why not."""
    for state in (src, dst):
        reason = state_rejection(variant, state)
        if reason is not None:
            raise PlanRejected(reason)
    if dst is SiteState.BROKEN:
        raise PlanRejected(f"{variant.value}: {src.value} -> broken would run bl with r0 not holding LR")
    step = LAYOUTS[variant].transitions.get((src, dst))
    if step is None:
        raise PlanRejected(f"{variant.value}: {src.value} -> {dst.value} is not one aligned 4-byte write")
    return step


def steps_from(variant: Variant, src: SiteState) -> dict[SiteState, Step]:
    """The legal single writes out of ``src`` for ``variant``, keyed by the state they lead to."""
    lay = LAYOUTS[variant]
    if state_rejection(variant, src) is not None:
        return {}
    return {dst: step for (frm, dst), step in lay.transitions.items() if frm is src and dst in lay.states}
