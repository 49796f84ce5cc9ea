"""An explicit-state model checker for patch plans: every interleaving of tasks and patcher, exhaustively.

The model (one site; the plan's writes to other sites cannot affect it)
----------------------------------------------------------------------
* The site is a row of the generation table (``rewriter.generations.LAYOUTS``): its slots, at the
  offsets the table gives, and for ool the out-of-line stub its entry branches to. Tasks execute
  the words, and every branch lands where the offsets say:

  - ``mflr r0`` makes r0 hold LR; ``nop`` and gcc 5's ``std r0,16(r1)`` leave r0 alone;
  - ``b .+8`` jumps 8 bytes on: past B when A is the word before B (mprofile, patchable), *onto* B
    when A is two words before it (gcc 5's ``mflr; std; bl``);
  - a ``bl`` to the tracer with r0 not holding LR is **the violation** (the tracer would return
    through r0 to garbage); with r0 = LR it is traced;
  - ool: the entry word B is ``nop`` (falls through, untraced) or ``b stub``. The stub is fixed
    code written once at boot: ``mflr r0; bl ftrace_caller; mtlr r0; b ip+4``. Its ``bl`` is
    traced iff r0 = LR, like any other.

  Past the site comes the body (a quiescent point) and the return, folded into the step that
  leaves the site. ``tasks`` tasks each enter the function up to ``entries`` times, and any actor
  may move at any step, so a task may be preempted at every instruction boundary, inside the stub
  too. That is what the corpus kernels do, not a bound on them: powerpc's arch_ftrace_update_code()
  (6.1, 6.12, 7.2) calls ftrace_modify_all_code() without stop_machine(), so every other CPU runs
  while the sites are written (docs/state-machine.md, "Other CPUs keep running").
* The patcher performs the plan: each write is a compare-and-swap (a mismatch is reported); the
  writes of a stage land in every order; ``synchronize_rcu_tasks`` completes only when no task is
  inside the site or its stub; ``isync+synchronize_rcu_tasks`` first makes every CPU
  context-synchronise.
* ``stale_fetch``: a task may execute any word a slot has held since the task's last
  context-synchronising event (an interrupt, i.e. a preemption, or the isync IPI).  This models why
  the 2019 v2 series added an isync IPI: ``synchronize_rcu_tasks`` alone lets a CPU run the old
  ``nop`` in A after the barrier, and then the new ``bl``. Stub words are never written, so a
  task always fetches them as they are.
* ``cmodx=3.0``: a write whose old or new word is not patch class (``mflr``, gcc 5's ``std``;
  :func:`rewriter.plan.cmodx_3_0_allows`), while a task may still fetch that slot, is itself a
  violation (ISA 3.0's concurrent-modification rules cover only I-form branches and the preferred
  no-op). An ool plan writes only ``nop <-> b stub`` (the stub's ``mflr`` is written once, at boot,
  before the code runs), so it cannot break this rule.

When the patcher is done the checker also requires: the site reads its target; no task is left
inside the site with a stale r0 unless A reads ``nop`` (the precondition of the next plan, see
``rewriter.plan``); and, with ``stale_fetch``, that no task may still fetch a replaced word the
next plan's writes could turn into a tracer ``bl`` with a stale r0 (a ``nop`` in A, a ``bl``, gcc
5's ``b .+8``: :func:`rewriter.plan.stale_word_harmless`). A task that still fetches an old ``nop``
in B, ``mflr`` or ``b .+8`` past B in A, or an ool entry word (``nop``, or ``b stub`` into the
intact stub) is untraced or traced once more: neither can call with a stale r0, so such a last
write needs no settle (the kernel's own one-write enable among them).

Search: breadth-first over hashable tuples with a visited set, so each violation found is one with
the fewest steps.  The whole space is explored (it is small: thousands of states for T=3, K=2), and
the most serious violation found is reported.
"""

from __future__ import annotations

import enum
import itertools
import re
from collections import deque
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Final, NamedTuple

from rewriter import ppc
from rewriter.errors import ArgumentError
from rewriter.generations import LAYOUTS, Layout, Variant
from rewriter.plan import (
    PATCH_CLASS,
    Barrier,
    Cmodx,
    Plan,
    Route,
    SiteRequest,
    Write,
    cmodx_3_0_allows,
    plan,
    stale_word_harmless,
)
from rewriter.prose import counted
from rewriter.states import PLAIN, Insn, SiteState, Slot, words_text

MAX_TASKS: Final = 3
MAX_ENTRIES: Final = 4
# The most states the check of one site may explore: the plans `plan` makes take at most 78,182
# (ool, 3 tasks x 4 entries, stale fetch; 80 MB). The space grows with the writes a site gets, and
# a hand-made plan with 20 writes to one ool site took 1.4 million states, 1 GB and a minute, 200
# writes more than 2 GB before it was stopped: past this bound the check stops and says so.
MAX_STATES: Final = 500_000
# The most states the check of a whole plan may explore, over all its distinct sites: a plan of
# every request the planner can make at once (63 distinct sites, each state pair of every variant)
# takes 1,122,301 at 3 tasks x 4 entries with stale fetch (14 s; bench/run.py), and a whole kernel's plan has a
# handful of distinct sites. A hand-made file of 100 distinct ool sites took 10.8 million states
# and 274 s before there was this bound.
MAX_TOTAL_STATES: Final = 2_000_000
# The most moves (a task's step or a write tried, a few microseconds each) the check of one site may try.
# A stage's writes land in any order, so each state tries every write its stage has left: a
# hand-made stage of a thousand writes to one slot took minutes in a few thousand states, under
# MAX_STATES. The built-in plans try at most 358,473 (ool-disable, 3 tasks x 4 entries, stale
# fetch); MAX_STATES at their branching is about 2.5 million.
MAX_MOVES: Final = 3_000_000


class Violation(enum.Enum):
    """What went wrong, most serious first (the order in which they are reported)."""

    STALE_R0_CALL = "bl-with-stale-r0"  # the 2019 race: the tracer returns to garbage
    CMODX = "cmodx"  # mflr patched while it may be executing, under ISA 3.0
    CAS_MISMATCH = "cas-mismatch"  # a write found a word other than its ``old``
    BROKEN = "broken"  # the site read nop; bl (even if no task ran it)
    KERNEL_ONLY = "kernel-only"  # an offline plan leaves words only the running kernel may write
    WRONG_FINAL = "wrong-final-state"
    UNSETTLED = "unsettled"  # the next plan's precondition does not hold
    STALE_AFTER = "stale-after-plan"  # a task may still fetch a replaced word


class TraceStep(NamedTuple):
    actor: str  # "CPU0", "CPU1", ... (tasks) or "patcher"
    action: str
    slots: tuple[tuple[Slot, Insn], ...]  # the site after this step
    r0: tuple[str, ...]  # each task's r0 after this step: "LR", "stale" or "" (outside the site)
    at: tuple[str, ...] = ()  # each task's next word inside the site ("B", "stub[1]"), or ""
    state: str = ""  # the state its words name ("broken", "armed"; "unknown" for words no state has)
    # with stale fetch, each task's slots that may still run a replaced word: "A: nop" (or "")
    fetch: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class CheckResult:
    safe: bool
    states: int  # distinct states explored
    violation: Violation | None
    reason: str  # one line; empty when safe
    trace: tuple[TraceStep, ...]  # empty when safe
    site: int
    request: SiteRequest
    tasks: int
    entries: int
    stale_fetch: bool
    cmodx: Cmodx
    sites_checked: int = 1  # check_all: how many distinct (request, writes) sites were explored


# ---------------------------------------------------------------- the site as code

_ASM: Final[Mapping[Insn, str]] = MappingProxyType(
    {PLAIN[k]: ppc.relative_text(w) for w, k in ppc.FIXED.items() if k in PLAIN}
    | {Insn.MTLR: ppc.relative_text(ppc.MTLR_R0)}
)
"""How a trace prints the fixed words: ppc's text (a site has no address here: ``b .+8``)."""


@dataclass(frozen=True)
class _Geometry:
    """One layout as code: pc 0 is outside the function (entering executes the site's first word),
    pc 1..n-1 the site's other slots in address order, pc n.. the words of the ool stub."""

    layout: Layout
    by_offset: Mapping[int, int]  # offset from the call slot -> pc of the slot there
    callee: str  # what a tracer `bl` calls at run time: the layout's ``tracer``
    n: int  # the site's slots (pc n.. is the stub): a field, as the search asks it millions of times
    # (pc, word, r0 holds LR) -> what executing it does, for every word that can run there: the
    # search executes the same few words millions of times, and _execute formats text each time
    execs: Mapping[tuple[int, Insn, bool], _Exec] = field(default_factory=lambda: MappingProxyType({}))

    @classmethod
    def of(cls, lay: Layout) -> _Geometry:
        if list(lay.offsets) != sorted(lay.offsets):
            raise ValueError(f"{lay.variant.value}: slots must be listed in address order")
        by_offset = MappingProxyType({off: pc for pc, off in enumerate(lay.offsets)})
        geo = cls(lay, by_offset, lay.tracer, len(lay.slots))
        execs = {}
        for pc in range(geo.n + len(lay.stub)):
            for word in (lay.stub[pc - geo.n],) if pc >= geo.n else list(Insn):
                for fresh in (False, True):
                    try:
                        execs[(pc, word, fresh)] = _execute(geo, pc, word, fresh)
                    except ValueError:  # no such word there: _execute says so when a plan puts it there
                        continue
        return replace(geo, execs=MappingProxyType(execs))

    def name(self, pc: int) -> str:
        return self.layout.slots[pc].value if pc < self.n else f"stub[{pc - self.n}]"

    def land(self, offset: int) -> int:
        """The pc of the site word at ``offset`` from the call slot; 0 past the site (the body)."""
        if offset in self.by_offset:
            return self.by_offset[offset]
        if offset <= self.layout.offsets[-1]:
            raise ValueError(f"{self.layout.variant.value}: a branch lands at {offset:+d}, inside no slot")
        return 0

    def fallthrough(self, pc: int) -> int:
        if pc < self.n:
            return self.land(self.layout.offsets[pc] + ppc.INSN_SIZE)
        return pc + 1  # stub words are consecutive; its last word branches back

    def branch(self, pc: int, word: Insn) -> int:
        """Where the branch ``word`` at ``pc`` goes."""
        if word is Insn.B8:
            return self.land(self.layout.offsets[pc] + ppc.branch_offset(ppc.B_PLUS_8))
        if word is Insn.STUB:
            return self.n
        call_slot = self.layout.offset(Slot.B)
        assert call_slot is not None
        return self.land(call_slot + ppc.INSN_SIZE)  # the stub's `b ip+4`: the word after the entry

    def state_words(self, code: tuple[Insn, ...]) -> tuple[Insn, ...]:
        return tuple(code[self.layout.slots.index(s)] for s in self.layout.state_slots)


class _Exec(NamedTuple):
    pc: int  # where the task goes next; 0: it has left the function
    fresh: bool  # r0 holds LR
    text: str
    crash: bool  # a bl with r0 not holding LR: the task does not go on


def _execute(geo: _Geometry, pc: int, word: Insn, fresh: bool) -> _Exec:
    """One instruction: ``word`` executed at ``pc`` by a task whose r0 holds LR iff ``fresh``."""
    what = _ASM.get(word, word.value)
    if word is Insn.CALL:
        what = f"bl {geo.callee}"
        if not fresh:
            return _Exec(pc, fresh, f"{'enters; ' * (pc == 0)}{geo.name(pc)}: {what}", True)
        what += " (r0 = LR): traced"
    if word in (Insn.B8, Insn.STUB, Insn.BACK):
        nxt = geo.branch(pc, word)
    elif word in _ASM or word is Insn.CALL:
        nxt = geo.fallthrough(pc)
    else:
        raise ValueError(f"{geo.name(pc)}: {word.value} is not a word of an ftrace site")
    if word is Insn.MFLR:
        fresh, what = True, what + " (r0 = LR)"
    elif pc == 0 and nxt != 0 and word in (Insn.NOP, Insn.STD):
        what += " (r0 not set)"
    if word is Insn.B8:
        what += f" lands on {geo.name(nxt)}" if nxt else " skips " + _skipped(geo, pc)
    if nxt == 0:
        fresh, what = False, what + "; body; returns"
    return _Exec(nxt, fresh, f"{'enters; ' * (pc == 0)}{geo.name(pc)}: {what}", False)


def _skipped(geo: _Geometry, pc: int) -> str:
    start = geo.layout.offsets[pc]
    end = start + ppc.branch_offset(ppc.B_PLUS_8)
    return ", ".join(s.value for s, off in zip(geo.layout.slots, geo.layout.offsets, strict=True) if start < off < end)


_GEOMETRY: Final[Mapping[Variant, _Geometry]] = MappingProxyType({v: _Geometry.of(lay) for v, lay in LAYOUTS.items()})


# ---------------------------------------------------------------- compiling a plan for one site

_OpWrite = tuple[tuple[int, Insn, Insn, Slot], ...]  # (slot index, old, new, slot)
_ISYNC: Final = "isync"
_RCU: Final = "rcu"
_Op = _OpWrite | str


class _Separators(NamedTuple):
    """The separators between stages, then the settle, as running counts of each barrier kind, so
    that the strongest of any run of them is two look-ups (a plan of 60,000 one-write stages asked
    each site for the slice after it, and took minutes)."""

    isync: tuple[int, ...]  # isync[i]: isync+synchronize_rcu_tasks among separators 0..i-1
    rcu: tuple[int, ...]  # rcu[i]: synchronize_rcu_tasks among separators 0..i-1

    @classmethod
    def of(cls, p: Plan) -> _Separators:
        isync, rcu = [0], [0]
        for b in (*p.barriers, *([] if p.settle is None else [p.settle])):
            isync.append(isync[-1] + (b is Barrier.ISYNC_RCU_TASKS))
            rcu.append(rcu[-1] + (b is Barrier.RCU_TASKS))
        return cls(tuple(isync), tuple(rcu))

    @property
    def end(self) -> int:
        return len(self.isync) - 1

    def strongest(self, start: int, stop: int) -> list[_Op]:
        """Separators ``start..stop-1`` (the settle is the last) act as their strongest one."""
        if self.isync[stop] > self.isync[start]:
            return [_ISYNC, _RCU]
        if self.rcu[stop] > self.rcu[start]:
            return [_RCU]
        return []


def _ops_by_site(p: Plan) -> list[tuple[_Op, ...]]:
    """Each site's own writes and the barriers between them, in one pass over the plan.

    Separators before a site's first write do not concern it; those after its last write (and the
    settle barrier) are its settle."""
    slots = [LAYOUTS[r.variant].slots for r in p.sites]
    separators = _Separators.of(p)
    ops: list[list[_Op]] = [[] for _ in p.sites]
    last = [-1] * len(p.sites)  # the stage of each site's latest write
    for j, stage in enumerate(p.stages):
        by_site: dict[int, list[tuple[int, Insn, Insn, Slot]]] = {}
        for w in stage:
            by_site.setdefault(w.site, []).append((slots[w.site].index(w.slot), w.old, w.new, w.slot))
        for site, writes in by_site.items():
            if last[site] >= 0:
                ops[site].extend(separators.strongest(last[site], j))
            ops[site].append(tuple(writes))
            last[site] = j
    for site, stage_index in enumerate(last):
        if stage_index >= 0:
            ops[site].extend(separators.strongest(stage_index, separators.end))
    return [tuple(o) for o in ops]


# ---------------------------------------------------------------- the search

# A task: (pc, r0 holds LR, entries left, views).  pc 0 = outside (about to enter, i.e. execute the
# site's first word); pc > 0 = inside the site or its stub, about to execute that word.  views is
# None without stale fetch, else per site slot the frozenset of words the task may still fetch.
_Task = tuple[int, bool, int, tuple[frozenset[Insn], ...] | None]
_State = tuple[tuple[Insn, ...], int, int, tuple[_Task, ...]]  # code, op index, done mask, tasks
_Parents = dict[_State, tuple[_State, str, str] | None]


@dataclass(frozen=True)
class _Model:
    geo: _Geometry
    ops: tuple[_Op, ...]
    target: tuple[Insn, ...]  # the target's words in the state slots
    stale: bool
    cmodx: Cmodx
    offline: bool = False
    # code -> what a task that just context-synchronised may fetch: one search builds the same
    # few (one per distinct code) millions of times otherwise. Per check, so nothing outlives it.
    synced_views: dict[tuple[Insn, ...], tuple[frozenset[Insn], ...]] = field(default_factory=dict, compare=False)

    def synced(self, code: tuple[Insn, ...]) -> tuple[frozenset[Insn], ...]:
        views = self.synced_views.get(code)
        if views is None:
            views = self.synced_views[code] = _synced(code)
        return views


class _Problem(NamedTuple):
    violation: Violation
    reason: str
    crash: str | None  # the violating move's text, when it is reported at the state it leaves


class _Move(NamedTuple):
    next: _State | None  # None: the move leads nowhere (a crash, a failed CAS)
    actor: str
    action: str
    problems: tuple[_Problem, ...] = ()


class _Found(NamedTuple):
    violation: Violation
    reason: str
    state: _State
    last: tuple[str, str] | None  # the violating move, when it leads nowhere (a crash, a failed CAS)
    at_end: bool = False  # found by the end-of-plan requirements, not by the move into ``state``


def _kernel_only_reason(lay: Layout, words: tuple[Insn, ...]) -> str:
    """Why an offline plan may not end in ``words`` (``Layout.kernel_only``), as ``plan --offline``
    and ``apply`` refuse it: the kernel reads the file at boot, before any of its code runs."""
    if Insn.STUB in words:
        why = "b stub would enter a stub that only the boot fills (the file's stubs are zero)"
    else:
        why = (
            f"boot-time ftrace_init_nop accepts only {words_text(lay.words(lay.built))} at a recorded place, "
            "and ftrace never manages an unrecorded call"
        )
    return f"the plan leaves {words_text(words)} in the file, which only the running kernel writes: {why}"


def _state_name(lay: Layout, words: tuple[Insn, ...]) -> str:
    """The state ``words`` name on this layout, or ``unknown``: on a gcc-5 site ``b+8`` words name
    no state (its ``b .+8`` lands on the bl, so it has no ``guarded`` or ``armed``), though the
    same words do on the two-slot layouts."""
    state = lay.state_of(words)
    if state in lay.states or state is SiteState.BROKEN:
        return state.value
    return SiteState.UNKNOWN.value


def _synced(code: tuple[Insn, ...]) -> tuple[frozenset[Insn], ...]:
    return tuple(frozenset((w,)) for w in code)


def _exposed(geo: _Geometry, task: _Task) -> bool:
    """Inside the site with r0 not holding LR. Never so inside an ool stub: it starts with
    ``mflr r0`` and is never written, so only its first word is ever reached with a stale r0."""
    pc, fresh = task[0], task[1]
    return 0 < pc < geo.n and not fresh


def _search(m: _Model, start: _State, limit: int) -> tuple[list[_Found], int, _Parents]:
    parents: _Parents = {start: None}
    found: dict[Violation, _Found] = {}
    queue: deque[_State] = deque([start])
    moves = 0
    while queue and Violation.STALE_R0_CALL not in found:  # nothing is worse: the first is the shortest
        state = queue.popleft()
        if state[1] == len(m.ops):  # the patcher is done: the end-of-plan requirements
            for problem in _end_problems(m, state):
                found.setdefault(problem.violation, _Found(problem.violation, problem.reason, state, None, True))
        for move in itertools.chain(_task_moves(m, state), _patcher_moves(m, state)):
            moves += 1
            if moves > MAX_MOVES:
                raise _TooManyMoves
            for problem in move.problems:
                if problem.crash is not None:
                    at, last = state, (move.actor, problem.crash)
                else:
                    assert move.next is not None
                    at, last = move.next, None
                found.setdefault(problem.violation, _Found(problem.violation, problem.reason, at, last))
            if move.next is not None and move.next not in parents:
                parents[move.next] = (state, move.actor, move.action)
                queue.append(move.next)
        if len(parents) > limit:
            raise _TooLarge
    return list(found.values()), len(parents), parents


class _TooLarge(Exception):
    """:func:`_search` passed its bound: :func:`check` says of which site (:data:`MAX_STATES`), or
    :func:`check_all` of the whole plan (:data:`MAX_TOTAL_STATES`)."""


class _TooManyMoves(Exception):
    """:func:`_search` tried more than :data:`MAX_MOVES` moves for one site."""


def _end_problems(m: _Model, state: _State) -> Iterator[_Problem]:
    code, _, _, tasks = state
    words = m.geo.state_words(code)
    if words != m.target:
        got = _state_name(m.geo.layout, words)
        want = _state_name(m.geo.layout, m.target)
        yield _Problem(Violation.WRONG_FINAL, f"the plan ends in {got}, not {want}", None)
    if m.offline and m.geo.layout.kernel_only(m.geo.layout.state_of(words)):
        yield _Problem(Violation.KERNEL_ONLY, _kernel_only_reason(m.geo.layout, words), None)
    a = m.geo.layout.slots.index(Slot.A) if Slot.A in m.geo.layout.slots else None
    for i, t in enumerate(tasks):
        if _exposed(m.geo, t) and (a is None or code[a] is not Insn.NOP):
            held = "no mflr slot" if a is None else f"A reading {code[a].value}"
            yield _Problem(
                Violation.UNSETTLED,
                f"the plan ends with CPU{i} inside the site (before {m.geo.name(t[0])}) with a stale r0 "
                f"and {held}: a later plan writing bl without a barrier would race",
                None,
            )
        harmful = _harmful_stale(m.geo.layout, code, t[3])
        if harmful is not None:
            yield _Problem(
                Violation.STALE_AFTER,
                f"the plan ends with no isync after its last write: CPU{i} may still fetch the old word in "
                f'slot {harmful[0].value} (the trace\'s "CPU{i} may fetch" column), {harmful[1].value}: the next '
                "plan's first write, with no barrier before it, could have it run a bl with r0 not holding LR",
                None,
            )


def _harmful_stale(
    lay: Layout, code: tuple[Insn, ...], views: tuple[frozenset[Insn], ...] | None
) -> tuple[Slot, Insn] | None:
    """A replaced word a task may still fetch that could ever lead it to a tracer ``bl`` with a
    stale r0 (:func:`rewriter.plan.stale_word_harmless`), as (slot, word); None when every word it
    may still run is harmless (a ``nop`` in B after an enable: one call untraced, as ool's)."""
    if not views:  # coherent fetch, or a task done for good
        return None
    for slot, view, word in zip(lay.slots, views, code, strict=True):
        for old in sorted(view - {word}, key=lambda w: w.value):
            if not stale_word_harmless(lay.variant, slot, old):
                return slot, old
    return None


def _task_moves(m: _Model, state: _State) -> Iterator[_Move]:
    code, op, mask, tasks = state
    for i, (pc, fresh, left, views) in enumerate(tasks):
        if pc == 0 and left == 0:
            continue
        if pc >= m.geo.n:
            options = [m.geo.layout.stub[pc - m.geo.n]]  # written once at boot: never stale
        elif views is not None:  # in a fixed order (by text) when there is a choice, as traces show it
            options = sorted(views[pc], key=lambda w: w.value) if len(views[pc]) > 1 else list(views[pc])
        else:
            options = [code[pc]]
        for word in options:
            yield _task_move(m, state, i, word)
        if views and views != (synced := m.synced(code)):
            resynced = (pc, fresh, left, synced)
            yield _Move(
                (code, op, mask, (*tasks[:i], resynced, *tasks[i + 1 :])),
                f"CPU{i}",
                "interrupted (context synchronising): now fetches the current words",
            )


def _task_move(m: _Model, state: _State, i: int, word: Insn) -> _Move:
    code, op, mask, tasks = state
    pc, fresh, left, views = tasks[i]
    name = f"CPU{i}"
    note = " (stale fetch)" if pc < m.geo.n and word is not code[pc] else ""
    ex = m.geo.execs.get((pc, word, fresh)) or _execute(m.geo, pc, word, fresh)
    if ex.crash:
        reason = f"{name} executes bl {m.geo.callee} with r0 not holding LR{note}"
        crash = f"{ex.text}{note} with r0 NOT = LR  <-- VIOLATION"
        return _Move(None, name, ex.text, (_Problem(Violation.STALE_R0_CALL, reason, crash),))
    nxt: _Task = (ex.pc, ex.fresh, left - (pc == 0), views)
    if nxt[0] == 0 and nxt[2] == 0 and views is not None:
        nxt = (0, False, 0, ())  # done for good: what it could fetch no longer matters
    return _Move((code, op, mask, (*tasks[:i], nxt, *tasks[i + 1 :])), name, ex.text + note)


def _patcher_moves(m: _Model, state: _State) -> Iterator[_Move]:
    code, op, mask, tasks = state
    if op == len(m.ops):
        return
    current = m.ops[op]
    if current == _RCU:
        if not any(t[0] > 0 for t in tasks):  # inside the site or its stub: no voluntary switch there
            yield _Move((code, op + 1, 0, tasks), "patcher", "synchronize_rcu_tasks() returns")
        return
    if current == _ISYNC:
        synced = tuple((t[0], t[1], t[2], m.synced(code) if t[3] else t[3]) for t in tasks)
        yield _Move((code, op + 1, 0, synced), "patcher", "IPI: every CPU runs isync")
        return
    assert not isinstance(current, str)
    for j, write in enumerate(current):
        if not mask & (1 << j):
            yield _write_move(m, state, j, write)


def _may_fetch(tasks: tuple[_Task, ...], idx: int) -> bool:
    """Some task may still fetch slot ``idx``: it can still enter, or it is inside before it."""
    return any(t[2] > 0 or 0 < t[0] <= idx for t in tasks)


def _write_move(m: _Model, state: _State, j: int, write: tuple[int, Insn, Insn, Slot]) -> _Move:
    code, op, mask, tasks = state
    idx, old, new, slot = write
    text = f"{slot.value}: {old.value} -> {new.value}"
    if code[idx] is not old:
        reason = f"the write {text} expects {old.value} but slot {slot.value} reads {code[idx].value}"
        crash = f"{text}: CAS finds {code[idx].value}  <-- VIOLATION"
        return _Move(None, "patcher", text, (_Problem(Violation.CAS_MISMATCH, reason, crash),))
    problems: list[_Problem] = []
    if m.cmodx is Cmodx.V3_0 and not cmodx_3_0_allows(old, new) and _may_fetch(tasks, idx):
        outside = " nor ".join(w.value for w in (old, new) if w not in PATCH_CLASS)
        reason = (
            f"{text} is patched while a CPU may be executing slot {slot.value} (a task may enter the "
            "function as the word changes: no step of one is needed); ISA 3.0's concurrent modification "
            f"rules cover only patch-class words (I-form branches and the preferred no-op), not {outside}"
        )
        problems.append(_Problem(Violation.CMODX, reason, f"{text}  <-- VIOLATION under --cmodx 3.0"))
    new_code = (*code[:idx], new, *code[idx + 1 :])
    new_tasks = tasks
    if m.stale:  # every task may now fetch the new word too, until it context-synchronises
        new_tasks = tuple(
            (t[0], t[1], t[2], tuple(v | {new} if k == idx else v for k, v in enumerate(t[3] or ()))) for t in tasks
        )
    done = mask | (1 << j)
    stage_done = done == (1 << len(m.ops[op])) - 1
    nxt = (new_code, op + 1, 0, new_tasks) if stage_done else (new_code, op, done, new_tasks)
    if m.geo.layout.state_of(m.geo.state_words(new_code)) is SiteState.BROKEN:
        problems.append(_Problem(Violation.BROKEN, f"after {text} the site reads nop; bl (broken)", None))
    return _Move(nxt, "patcher", text, tuple(problems))


# ---------------------------------------------------------------- the entry points


def check(
    p: Plan,
    *,
    site: int = 0,
    tasks: int = 2,
    entries: int = 2,
    stale_fetch: bool | None = None,
    cmodx: Cmodx | None = None,
    std_slot: Insn = Insn.STD,
    _ops: tuple[_Op, ...] | None = None,
    _budget: int | None = None,
) -> CheckResult:
    """Explore every interleaving of ``p``'s writes to ``site`` with ``tasks`` tasks.

    ``stale_fetch`` and ``cmodx`` default to what the plan was made for.  An offline plan
    (``p.runtime`` False) is checked with no concurrent task: only the states it passes through.
    ``std_slot`` is what a gcc-5 site's S slot holds at the start (``std`` as compiled, ``nop`` after
    a 6.13+ kernel's ``ftrace_init_nop``); it never changes a verdict, and the tests show that.
    ``_ops`` is the site's share of the plan when the caller (``check_all``) has it already, and
    ``_budget`` what is left of its :data:`MAX_TOTAL_STATES` (passing it raises ``_TooLarge`` for it).
    Raises :class:`~rewriter.errors.ArgumentError` for a site, task or entry count out of range,
    and for a site whose check would pass :data:`MAX_STATES`.
    """
    if not 0 <= site < len(p.sites):
        raise ArgumentError(f"site {site} is not in the plan (0..{len(p.sites) - 1})")
    if not 1 <= tasks <= MAX_TASKS:
        raise ArgumentError(f"tasks must be 1..{MAX_TASKS}, not {tasks}")
    if not 1 <= entries <= MAX_ENTRIES:
        raise ArgumentError(f"entries must be 1..{MAX_ENTRIES}, not {entries}")
    if std_slot not in (Insn.STD, Insn.NOP):
        raise ArgumentError("std_slot must be std or nop")
    stale = p.stale_fetch if stale_fetch is None else stale_fetch
    policy = p.cmodx if cmodx is None else cmodx
    if not p.runtime:
        tasks, stale = 0, False
    req = p.sites[site]
    geo = _GEOMETRY[req.variant]
    ops = _ops_by_site(p)[site] if _ops is None else _ops
    model = _Model(geo, ops, geo.layout.words(req.target), stale, policy, offline=not p.runtime)
    limit = MAX_STATES if _budget is None else min(MAX_STATES, _budget)
    try:
        found, states, parents = _search(model, _start(geo, req.current, std_slot, tasks, entries, stale), limit)
    except _TooLarge:
        if limit < MAX_STATES:
            raise  # the whole plan's bound: check_all names it
        raise ArgumentError(
            f"site {site} ({counted(len(ops), 'write')}) takes more than {MAX_STATES:,} states to check at "
            f"{tasks} tasks x {entries} entries: check it with fewer --tasks or --entries, or give one site "
            "fewer writes"
        ) from None
    except _TooManyMoves:
        raise _too_many_moves(site, ops, tasks, entries) from None
    if not found:
        return CheckResult(True, states, None, "", (), site, req, tasks, entries, stale, policy)
    worst = min(found, key=lambda f: list(Violation).index(f.violation))
    trace = _trace(worst, parents, geo)
    return CheckResult(False, states, worst.violation, worst.reason, trace, site, req, tasks, entries, stale, policy)


def _too_many_moves(site: int, ops: tuple[_Op, ...], tasks: int, entries: int) -> ArgumentError:
    writes = max((len(op) for op in ops if isinstance(op, tuple)), default=0)
    return ArgumentError(
        f"site {site} (up to {writes} writes in one stage) takes more than {MAX_MOVES:,} moves to check at "
        f"{tasks} tasks x {entries} entries: a stage's writes land in any order, and each order is tried; "
        "give one site fewer writes a stage"
    )


def _start(geo: _Geometry, current: SiteState, std_slot: Insn, ntasks: int, entries: int, stale: bool) -> _State:
    lay = geo.layout
    words = dict(zip(lay.state_slots, lay.words(current), strict=True))
    code = tuple(words.get(s, std_slot) for s in lay.slots)  # S, the one slot no state names
    task: _Task = (0, False, entries, _synced(code) if stale else None)
    return (code, 0, 0, (task,) * ntasks)


def check_all(
    p: Plan,
    *,
    tasks: int = 2,
    entries: int = 2,
    stale_fetch: bool | None = None,
    cmodx: Cmodx | None = None,
) -> CheckResult:
    """Check every site of ``p``; sites with the same request and the same writes are checked once.

    Returns the first UNSAFE result, else a SAFE one whose ``states`` is the total explored.
    Raises :class:`~rewriter.errors.ArgumentError` past :data:`MAX_STATES` for one site, or past
    :data:`MAX_TOTAL_STATES` over all of them.
    """
    if not p.sites:
        raise ArgumentError("the plan has no sites")
    distinct: dict[tuple[SiteRequest, tuple[_Op, ...]], int] = {}  # -> its first site
    for site, ops in enumerate(_ops_by_site(p)):
        distinct.setdefault((p.sites[site], ops), site)
    results: list[CheckResult] = []
    spent = 0
    for (_, ops), site in distinct.items():
        try:
            result = check(
                p, site=site, tasks=tasks, entries=entries, stale_fetch=stale_fetch, cmodx=cmodx, _ops=ops,
                _budget=MAX_TOTAL_STATES - spent,
            )  # fmt: skip
        except _TooLarge:
            raise ArgumentError(
                f"the plan's {len(distinct):,} distinct sites take more than {MAX_TOTAL_STATES:,} states in all to "
                f"check at {workload(tasks, entries)} (passed at distinct site {len(results) + 1:,}): check it with "
                "fewer --tasks or --entries, or split it into plans of fewer distinct sites"
            ) from None
        if not result.safe:
            return result
        spent += result.states
        results.append(result)
    return replace(results[0], states=spent, sites_checked=len(results))


# ---------------------------------------------------------------- traces


def _trace_step(actor: str, action: str, state: _State, geo: _Geometry) -> TraceStep:
    slots = tuple(zip(geo.layout.slots, state[0], strict=True))
    r0 = tuple("" if t[0] == 0 else "LR" if t[1] else "stale" for t in state[3])
    at = tuple("" if t[0] == 0 else geo.name(t[0]) for t in state[3])
    fetch = tuple(_stale_words(geo, state[0], t[3]) for t in state[3])
    return TraceStep(actor, action, slots, r0, at, _state_name(geo.layout, geo.state_words(state[0])), fetch)


def _stale_words(geo: _Geometry, code: tuple[Insn, ...], views: tuple[frozenset[Insn], ...] | None) -> str:
    """The replaced words a task may still fetch, by slot (``A: nop``): what makes a stale-fetch
    trace's next step possible, which the site's words alone do not show."""
    if not views:
        return ""
    stale = [
        f"{slot.value}: {'/'.join(sorted(w.value for w in view - {word}))}"
        for slot, word, view in zip(geo.layout.slots, code, views, strict=True)
        if view - {word}
    ]
    return ", ".join(stale)


def _trace(
    f: _Found, parents: Mapping[_State, tuple[_State, str, str] | None], geo: _Geometry
) -> tuple[TraceStep, ...]:
    steps: list[TraceStep] = []
    state = f.state
    if f.last is not None:  # the move that crashed (or failed) leads to no state of its own
        steps.append(_trace_step(f.last[0], f.last[1], state, geo))
    link = parents[state]
    while link is not None:
        parent, actor, action = link
        steps.append(_trace_step(actor, action, state, geo))
        state = parent
        link = parents[state]
    steps.reverse()
    if f.at_end:
        # the words the plan ends with, also when it wrote none (a hand-made plan that starts there)
        done = _trace_step("checker", "plan done  <-- VIOLATION (see above)", f.state, geo)
        steps.append(done._replace(r0=(), at=()))
    elif f.last is None and steps:  # the write into f.state made the site broken: the trace ends at
        steps[-1] = steps[-1]._replace(action=steps[-1].action + "  <-- VIOLATION")  # it, writes pending
    return tuple(steps)


def _cell(step: TraceStep, col: str) -> str:
    if step.actor == col or (col == "patcher" and step.actor == "checker"):
        return step.action
    if col.startswith("CPU") and step.r0 and step.r0[int(col[3:])]:
        k = int(col[3:])
        return f"  : (before {step.at[k]}, r0 {step.r0[k]})" if step.at else f"  : (r0 {step.r0[k]})"
    return ""


def workload(tasks: int, entries: int) -> str:
    """What a check explored: ``2 tasks x 2 entries``."""
    return f"{counted(tasks, 'task')} x {counted(entries, 'entry', 'entries')}"


def assumptions(result: CheckResult) -> str:
    """What a verdict was reached under: ``2 tasks x 2 entries, cmodx 3.1, stale fetch``, or
    ``offline`` (no CPU runs the code, so its rules were not part of the check)."""
    if not result.tasks:
        return "offline"
    stale = ", stale fetch" if result.stale_fetch else ""
    return f"{workload(result.tasks, result.entries)}, cmodx {result.cmodx.value}{stale}"


def render_trace(result: CheckResult) -> str:
    """SAFE with the number of states, or UNSAFE with the trace as a CPU0 | CPU1 | patcher table."""
    req = result.request
    if result.sites_checked == 1:
        subject = f"{req.variant.value} {req.current.value} -> {req.target.value} (site {result.site})"
    else:
        subject = f"{result.sites_checked} distinct sites"
    what = f"{subject}, {assumptions(result)}"
    if result.safe:
        return f"SAFE: {what}: {result.states} states explored\n"
    assert result.violation is not None
    head = f"UNSAFE ({result.violation.value}): {result.reason}\n  {what}: {result.states} states explored\n"
    cpus = sorted({s.actor for s in result.trace if s.actor.startswith("CPU")})
    columns = [*cpus, "patcher"]
    slot_names = [s.value for s, _ in result.trace[0].slots] if result.trace and result.trace[0].slots else []
    # Under stale fetch a CPU may run a word the site no longer holds: a column names them for each
    # CPU that acts or that the reason names (stale-after-plan: one that never had to act).
    named = {int(k) for k in re.findall(r"CPU(\d+)", result.reason)}
    fetching = sorted({int(c[3:]) for c in cpus} | named) if result.stale_fetch else []
    rows = [
        [str(n), *(_cell(step, col) for col in columns), *([w.value for _, w in step.slots] or [""] * len(slot_names)),
         step.state, *(step.fetch[k] if step.fetch else "" for k in fetching)]
        for n, step in enumerate(result.trace, 1)
    ]  # fmt: skip
    header = ["#", *columns, *slot_names, "state", *(f"CPU{k} may fetch" for k in fetching)]
    widths = [max(len(r[k]) for r in [header, *rows]) for k in range(len(header))]
    lines = [" | ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)).rstrip()]
    lines.append("-+-".join("-" * w for w in widths))
    for r in rows:
        lines.append(" | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
    return head + "\n".join(lines) + "\n"


# ---------------------------------------------------------------- built-in plans


class Builtin(NamedTuple):
    variant: Variant
    start: SiteState
    plan: Plan
    summary: str


def hand_plan(
    variant: Variant,
    start: SiteState,
    target: SiteState,
    stages: list[list[tuple[Slot, Insn, Insn]]],
    barriers: list[Barrier],
    settle: Barrier | None = None,
) -> Plan:
    """A one-site plan written by hand (the built-ins, and tests of plans the planner would not make)."""
    return Plan(
        sites=(SiteRequest(variant, start, target),),
        stages=tuple(tuple(Write(0, *w) for w in stage) for stage in stages),
        barriers=tuple(barriers),
        settle=settle,
        route=Route.MFLR_FIRST,
        cmodx=Cmodx.V3_1,
        runtime=True,
    )


def _naive_enable(variant: Variant) -> Plan:
    """The 2019 order: ``nop -> mflr`` in A, then ``nop -> bl`` in B, with no barrier between."""
    a, b = (Slot.A, Insn.NOP, Insn.MFLR), (Slot.B, Insn.NOP, Insn.CALL)
    return hand_plan(variant, SiteState.NOPPED, SiteState.ENABLED, [[a], [b]], [Barrier.ORDER])


def _mprofile_builtins() -> dict[str, Builtin]:
    m, std = Variant.MPROFILE, Variant.MPROFILE_STD
    nopped, enabled = SiteState.NOPPED, SiteState.ENABLED
    enable = [SiteRequest(m, nopped, enabled)]
    a, b = Slot.A, Slot.B
    gcc5_b8 = [[(a, Insn.NOP, Insn.B8)], [(b, Insn.NOP, Insn.CALL)], [(a, Insn.B8, Insn.MFLR)]]
    reverse = [[(a, Insn.MFLR, Insn.NOP)], [(b, Insn.CALL, Insn.NOP)]]
    return {
        "naive-enable": Builtin(m, nopped, _naive_enable(m), "the 2019 race: nop -> mflr, then nop -> bl, no barrier"),
        "b8-enable": Builtin(
            m, nopped, plan(enable, route=Route.B8), "Rao: nop -> b+8, synchronize_rcu_tasks, nop -> bl, b+8 -> mflr"
        ),
        "mflr-first-enable": Builtin(
            m, nopped, plan(enable, route=Route.MFLR_FIRST), "Piggin: nop -> mflr, synchronize_rcu_tasks, nop -> bl"
        ),
        "disable": Builtin(
            m, enabled, plan([SiteRequest(m, enabled, nopped)]), "bl -> nop, then mflr -> nop, no barrier"
        ),
        "reverse-disable": Builtin(
            m, enabled, hand_plan(m, enabled, nopped, reverse, [Barrier.ORDER]), "mflr -> nop first, then bl -> nop"
        ),
        "mflr-first-enable-isync": Builtin(
            m, nopped, plan(enable, stale_fetch=True), "mflr-first with an isync IPI before each synchronize_rcu_tasks"
        ),
        "b8-enable-gcc5": Builtin(
            std,
            nopped,
            hand_plan(std, nopped, enabled, gcc5_b8, [Barrier.RCU_TASKS, Barrier.ORDER]),
            "Rao's order on a gcc-5 mflr; std; bl site, where b .+8 lands on the bl",
        ),
        "mflr-first-enable-gcc5": Builtin(
            std, nopped, plan([SiteRequest(std, nopped, enabled)]), "Piggin's order on a gcc-5 mflr; std; bl site"
        ),
    }


def _current_builtins() -> dict[str, Builtin]:
    """The 6.12 (patchable) and 7.2 (ool) sites of issue 11."""
    patch, ool = Variant.PATCHABLE, Variant.OOL
    nopped, disabled, enabled = SiteState.NOPPED, SiteState.DISABLED, SiteState.ENABLED
    return {
        "patchable-naive-enable": Builtin(
            patch,
            nopped,
            _naive_enable(patch),
            "6.12 site whose A was left nop: nop -> mflr, then nop -> bl, no barrier (the 2019 race, unchanged)",
        ),
        "patchable-b8-enable": Builtin(
            patch,
            nopped,
            plan([SiteRequest(patch, nopped, enabled)], route=Route.B8),
            "6.12: nop -> b+8, synchronize_rcu_tasks, nop -> bl, b+8 -> mflr",
        ),
        # What 6.12 itself does after boot init wrote mflr into A for good: ftrace_make_call() and
        # ftrace_replace_code() write B alone (old nop), ftrace_make_nop() and a disable write it back
        # (old bl), with no barrier before or after either.
        "patchable-enable": Builtin(
            patch,
            disabled,
            plan([SiteRequest(patch, disabled, enabled)]),
            "6.12's own enable (A holds mflr since boot init): nop -> bl in B, no barrier",
        ),
        "patchable-disable": Builtin(
            patch,
            enabled,
            plan([SiteRequest(patch, enabled, disabled)]),
            "6.12's own disable: bl -> nop in B, no barrier (A keeps mflr)",
        ),
        "ool-enable": Builtin(
            ool, disabled, plan([SiteRequest(ool, disabled, enabled)]), "7.2: entry nop -> b stub, no barrier"
        ),
        "ool-disable": Builtin(
            ool, enabled, plan([SiteRequest(ool, enabled, disabled)]), "7.2: entry b stub -> nop, no barrier"
        ),
    }


BUILTINS: Final[Mapping[str, Builtin]] = MappingProxyType({**_mprofile_builtins(), **_current_builtins()})
"""Named plans for ``mcountrw check-plan --builtin NAME``; each is a one-site plan."""
