"""An explicit-state model checker for patch plans: every interleaving of tasks and patcher, exhaustively.

The model (one site; the plan's writes to other sites cannot affect it)
----------------------------------------------------------------------
* ``tasks`` tasks each enter the function up to ``entries`` times.  Entering executes slot A as it
  reads: ``mflr r0`` makes r0 hold LR, ``nop`` leaves r0 stale, ``b +8`` jumps two slots on (past B
  in the two-slot layouts, *onto* B in gcc-5's ``mflr; std; bl``).  Then S (gcc-5 only: ``std`` or
  ``nop``, neither touches r0), then B: a ``bl`` with a stale r0 is **the violation** (``_mcount``
  would return through r0 to garbage); a ``bl`` with r0 = LR is traced; a ``nop`` falls through.
  Then the body (a quiescent point) and the return, folded into the step that leaves B.  A task may
  be preempted at every instruction boundary: any actor may move at any step.
* The patcher performs the plan: each write is a compare-and-swap (a mismatch is reported); the
  writes of a stage land in every order; ``synchronize_rcu_tasks`` completes only when no task is
  between A and B; ``isync+synchronize_rcu_tasks`` first makes every CPU context-synchronise.
* ``stale_fetch``: a task may execute any word a slot has held since the task's last
  context-synchronising event (an interrupt, i.e. a preemption, or the isync IPI).  This models why
  the 2019 v2 series added an isync IPI: ``synchronize_rcu_tasks`` alone lets a CPU run the old
  ``nop`` in A after the barrier, and then the new ``bl``.
* ``cmodx=3.0``: a write that puts ``mflr`` into A or takes it out, while a task may still fetch A,
  is itself a violation (ISA 3.0's concurrent-modification rules do not cover ``mflr``).

When the patcher is done the checker also requires: the site reads its target; no task is left
between A and B with a stale r0 unless A reads ``nop`` (the precondition of the next plan, see
``rewriter.plan``); and, with ``stale_fetch``, that every task fetches only the final words, so a
task entering after the plan sees the target's behaviour.

Search: breadth-first over hashable tuples with a visited set, so each violation found is one with
the fewest steps.  The whole space is explored (it is small: thousands of states for T=3, K=2), and
the most serious violation found is reported.
"""

from __future__ import annotations

import enum
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from types import MappingProxyType
from typing import Final, NamedTuple

from rewriter.generations import LAYOUTS, TWO_SLOT_STATES, Variant
from rewriter.plan import Barrier, Cmodx, Plan, Route, SiteRequest, Write, plan
from rewriter.states import Insn, SiteState, Slot

MAX_TASKS: Final = 3
MAX_ENTRIES: Final = 4


class Violation(enum.Enum):
    """What went wrong, most serious first (the order in which they are reported)."""

    STALE_R0_CALL = "bl-with-stale-r0"  # the 2019 race: _mcount returns to garbage
    CMODX = "cmodx"  # mflr patched while it may be executing, under ISA 3.0
    CAS_MISMATCH = "cas-mismatch"  # a write found a word other than its ``old``
    BROKEN = "broken"  # the site read nop; bl (even if no task ran it)
    WRONG_FINAL = "wrong-final-state"
    UNSETTLED = "unsettled"  # the next plan's precondition does not hold
    STALE_AFTER = "stale-after-plan"  # a task may still fetch a replaced word


class TraceStep(NamedTuple):
    actor: str  # "CPU0", "CPU1", ... (tasks) or "patcher"
    action: str
    slots: tuple[tuple[Slot, Insn], ...]  # the site after this step
    r0: tuple[str, ...]  # each task's r0 after this step: "LR", "stale" or "" (not between A and B)


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


# ---------------------------------------------------------------- compiling a plan for one site

_OpWrite = tuple[tuple[int, Insn, Insn, Slot], ...]  # (slot index, old, new, slot)
_ISYNC: Final = "isync"
_RCU: Final = "rcu"
_Op = _OpWrite | str


def _barrier_ops(separators: Sequence[Barrier]) -> list[_Op]:
    """Several separators between two writes of a site act as their strongest one."""
    if Barrier.ISYNC_RCU_TASKS in separators:
        return [_ISYNC, _RCU]
    if Barrier.RCU_TASKS in separators:
        return [_RCU]
    return []


def _ops_by_site(p: Plan) -> list[tuple[_Op, ...]]:
    """Each site's own writes and the barriers between them, in one pass over the plan.

    Separators before a site's first write do not concern it; those after its last write (and the
    settle barrier) are its settle."""
    slots = [LAYOUTS[r.variant].slots for r in p.sites]
    ops: list[list[_Op]] = [[] for _ in p.sites]
    last = [-1] * len(p.sites)  # the stage of each site's latest write
    for j, stage in enumerate(p.stages):
        by_site: dict[int, list[tuple[int, Insn, Insn, Slot]]] = {}
        for w in stage:
            by_site.setdefault(w.site, []).append((slots[w.site].index(w.slot), w.old, w.new, w.slot))
        for site, writes in by_site.items():
            if last[site] >= 0:
                ops[site].extend(_barrier_ops(p.barriers[last[site] : j]))
            ops[site].append(tuple(writes))
            last[site] = j
    settle = [] if p.settle is None else [p.settle]
    for site, stage_index in enumerate(last):
        if stage_index >= 0:
            ops[site].extend(_barrier_ops([*p.barriers[stage_index:], *settle]))
    return [tuple(o) for o in ops]


# ---------------------------------------------------------------- the search

# A task: (pc, r0 holds LR, entries left, views).  pc 0 = outside (about to enter, i.e. execute
# A); pc i > 0 = about to execute slot i, so "between A and B" is pc > 0.  views is None without
# stale fetch, else per slot the frozenset of words the task may still fetch.
_Task = tuple[int, bool, int, tuple[frozenset[Insn], ...] | None]
_State = tuple[tuple[Insn, ...], int, int, tuple[_Task, ...]]  # code, op index, done mask, tasks


class _Found(NamedTuple):
    violation: Violation
    reason: str
    state: _State
    last: tuple[str, str] | None  # the violating move, when it leads nowhere (a crash, a failed CAS)


def _words(word: Insn) -> str:
    return {Insn.MFLR: "mflr r0", Insn.NOP: "nop", Insn.B8: "b .+8", Insn.STD: "std r0,16(r1)"}.get(word, "bl _mcount")


def check(
    p: Plan,
    *,
    site: int = 0,
    tasks: int = 2,
    entries: int = 2,
    stale_fetch: bool | None = None,
    cmodx: Cmodx | None = None,
    std_slot: Insn = Insn.STD,
) -> CheckResult:
    """Explore every interleaving of ``p``'s writes to ``site`` with ``tasks`` tasks.

    ``stale_fetch`` and ``cmodx`` default to what the plan was made for.  An offline plan
    (``p.runtime`` False) is checked with no concurrent task: only the states it passes through.
    ``std_slot`` is what a gcc-5 site's S slot holds at the start (``std`` as compiled, ``nop`` after
    a 6.13+ kernel's ``ftrace_init_nop``); it never changes a verdict, and the tests show that.
    """
    if not 0 <= site < len(p.sites):
        raise ValueError(f"site {site} is not in the plan (0..{len(p.sites) - 1})")
    if not 1 <= tasks <= MAX_TASKS:
        raise ValueError(f"tasks must be 1..{MAX_TASKS}, not {tasks}")
    if not 1 <= entries <= MAX_ENTRIES:
        raise ValueError(f"entries must be 1..{MAX_ENTRIES}, not {entries}")
    if std_slot not in (Insn.STD, Insn.NOP):
        raise ValueError("std_slot must be std or nop")
    stale = p.stale_fetch if stale_fetch is None else stale_fetch
    policy = p.cmodx if cmodx is None else cmodx
    if not p.runtime:
        tasks, stale = 0, False
    req = p.sites[site]
    slots = LAYOUTS[req.variant].slots
    a, b = TWO_SLOT_STATES[req.current]
    code = tuple({Slot.A: a, Slot.S: std_slot, Slot.B: b}[s] for s in slots)
    ops = list(_ops_by_site(p)[site])
    found, states, parents = _search(req, slots, code, ops, tasks, entries, stale, policy)
    if not found:
        return CheckResult(True, states, None, "", (), site, req, tasks, entries, stale, policy)
    worst = min(found, key=lambda f: list(Violation).index(f.violation))
    trace = _trace(worst, parents, slots)
    return CheckResult(False, states, worst.violation, worst.reason, trace, site, req, tasks, entries, stale, policy)


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
    """
    if not p.sites:
        raise ValueError("the plan has no sites")
    seen: set[tuple[SiteRequest, tuple[_Op, ...]]] = set()
    results: list[CheckResult] = []
    for site, ops in enumerate(_ops_by_site(p)):
        key = (p.sites[site], ops)
        if key in seen:
            continue
        seen.add(key)
        result = check(p, site=site, tasks=tasks, entries=entries, stale_fetch=stale_fetch, cmodx=cmodx)
        if not result.safe:
            return result
        results.append(result)
    return replace(results[0], states=sum(r.states for r in results), sites_checked=len(results))


def _search(
    req: SiteRequest,
    slots: tuple[Slot, ...],
    code0: tuple[Insn, ...],
    ops: list[_Op],
    ntasks: int,
    entries: int,
    stale: bool,
    cmodx: Cmodx,
) -> tuple[list[_Found], int, dict[_State, tuple[_State, str, str] | None]]:
    last_slot = len(slots) - 1
    a_idx = 0
    b_idx = slots.index(Slot.B)
    target = TWO_SLOT_STATES[req.target]
    state_of = LAYOUTS[req.variant].state_of

    def synced(code: tuple[Insn, ...]) -> tuple[frozenset[Insn], ...]:
        return tuple(frozenset((w,)) for w in code)

    task0: _Task = (0, False, entries, synced(code0) if stale else None)
    start: _State = (code0, 0, 0, (task0,) * ntasks)
    parents: dict[_State, tuple[_State, str, str] | None] = {start: None}
    found: dict[Violation, _Found] = {}
    queue: deque[_State] = deque([start])

    def report(v: Violation, reason: str, state: _State, last: tuple[str, str] | None = None) -> None:
        if v not in found:
            found[v] = _Found(v, reason, state, last)

    def push(state: _State, parent: _State, actor: str, action: str) -> None:
        if state not in parents:
            parents[state] = (parent, actor, action)
            queue.append(state)

    while queue and Violation.STALE_R0_CALL not in found:  # nothing is worse: the first is the shortest
        state = queue.popleft()
        code, op, mask, tasks = state
        between = [i for i, t in enumerate(tasks) if t[0] > 0]

        if op == len(ops):  # the patcher is done: the end-of-plan requirements
            if (code[a_idx], code[b_idx]) != target:
                got = state_of((code[a_idx], code[b_idx])).value
                report(Violation.WRONG_FINAL, f"the plan ends in {got}, not {req.target.value}", state)
            for i, t in enumerate(tasks):
                if t[0] > 0 and not t[1] and code[a_idx] is not Insn.NOP:
                    report(
                        Violation.UNSETTLED,
                        f"the plan ends with CPU{i} between A and B with a stale r0 while A reads "
                        f"{code[a_idx].value}: a later plan writing bl without a barrier would race",
                        state,
                    )
                if t[3] and t[3] != synced(code):
                    stale_slot = next(s for s, v, w in zip(slots, t[3], code, strict=True) if v != {w})
                    report(
                        Violation.STALE_AFTER,
                        f"the plan ends while CPU{i} may still fetch the old word in slot {stale_slot.value}",
                        state,
                    )

        # ---- tasks
        for i, (pc, fresh, left, views) in enumerate(tasks):
            name = f"CPU{i}"
            if pc == 0 and left == 0:
                continue
            options = sorted(views[pc], key=lambda w: w.value) if views is not None else [code[pc]]
            for word in options:
                stale_note = " (stale fetch)" if word is not code[pc] else ""
                nxt: _Task | None = None
                if pc == 0:
                    if word is Insn.MFLR:
                        nxt, text = (1, True, left - 1, views), "enters; A: mflr r0 (r0 = LR)"
                    elif word is Insn.NOP:
                        nxt, text = (1, False, left - 1, views), "enters; A: nop (r0 not set)"
                    else:  # b .+8 lands two slots on
                        if a_idx + 2 <= last_slot:
                            nxt, text = (a_idx + 2, False, left - 1, views), "enters; A: b .+8 lands on B"
                        else:
                            nxt, text = (0, False, left - 1, views), "enters; A: b .+8 skips B; body; returns"

                elif pc < b_idx:  # the gcc-5 std slot: r0 untouched
                    nxt, text = (pc + 1, fresh, left, views), f"S: {_words(word)}"
                elif word is Insn.NOP:
                    nxt, text = (0, False, left, views), "B: nop; body; returns"
                elif fresh:
                    nxt, text = (0, False, left, views), "B: bl _mcount (r0 = LR): traced; body; returns"
                else:
                    report(
                        Violation.STALE_R0_CALL,
                        f"{name} executes bl _mcount with r0 not holding LR{stale_note}",
                        state,
                        (name, f"B: bl _mcount{stale_note} with r0 NOT = LR  <-- VIOLATION"),
                    )
                    continue
                if nxt[0] == 0 and nxt[2] == 0 and views is not None:
                    nxt = (0, False, 0, ())  # done for good: what it could fetch no longer matters
                new_tasks = (*tasks[:i], nxt, *tasks[i + 1 :])
                push((code, op, mask, new_tasks), state, name, text + stale_note)
            if views and views != synced(code):
                resynced = (pc, fresh, left, synced(code))
                push(
                    (code, op, mask, (*tasks[:i], resynced, *tasks[i + 1 :])),
                    state,
                    name,
                    "interrupted (context synchronising): now fetches the current words",
                )

        # ---- patcher
        if op == len(ops):
            continue
        current = ops[op]
        if current == _RCU:
            if not between:
                push((code, op + 1, 0, tasks), state, "patcher", "synchronize_rcu_tasks() returns")
            continue
        if current == _ISYNC:
            new_tasks = tuple((t[0], t[1], t[2], synced(code) if t[3] else t[3]) for t in tasks)
            push((code, op + 1, 0, new_tasks), state, "patcher", "IPI: every CPU runs isync")
            continue
        assert not isinstance(current, str)
        for j, (idx, old, new, slot) in enumerate(current):
            if mask & (1 << j):
                continue
            text = f"{slot.value}: {old.value} -> {new.value}"
            if code[idx] is not old:
                report(
                    Violation.CAS_MISMATCH,
                    f"the write {text} expects {old.value} but slot {slot.value} reads {code[idx].value}",
                    state,
                    ("patcher", f"{text}: CAS finds {code[idx].value}  <-- VIOLATION"),
                )
                continue
            new_code = (*code[:idx], new, *code[idx + 1 :])
            if (
                cmodx is Cmodx.V3_0
                and slot is Slot.A
                and Insn.MFLR in (old, new)
                and any(t[2] > 0 for t in tasks)  # a task that can still enter may be fetching A
            ):
                report(
                    Violation.CMODX,
                    f"{text} is patched while a CPU may be executing slot A; ISA 3.0's concurrent "
                    "modification rules do not cover mflr",
                    state,
                    ("patcher", f"{text}  <-- VIOLATION under --cmodx 3.0"),
                )
            new_tasks = tasks
            if stale:
                new_tasks = tuple(
                    (t[0], t[1], t[2], tuple(v | {new} if k == idx else v for k, v in enumerate(t[3] or ())))
                    for t in tasks
                )
            done = mask | (1 << j)
            nxt_state = (
                (new_code, op + 1, 0, new_tasks) if done == (1 << len(current)) - 1 else (new_code, op, done, new_tasks)
            )
            if state_of((new_code[a_idx], new_code[b_idx])) is SiteState.BROKEN:
                report(Violation.BROKEN, f"after {text} the site reads nop; bl (broken)", nxt_state)
            push(nxt_state, state, "patcher", text)
    return list(found.values()), len(parents), parents


def _r0(task: _Task) -> str:
    if task[0] == 0:
        return ""
    return "LR" if task[1] else "stale"


def _trace(
    f: _Found, parents: Mapping[_State, tuple[_State, str, str] | None], slots: tuple[Slot, ...]
) -> tuple[TraceStep, ...]:
    steps: list[TraceStep] = []
    state = f.state
    if f.last is not None:  # the move that crashed (or failed) leads to no state of its own
        steps.append(
            TraceStep(
                f.last[0],
                f.last[1],
                tuple(zip(slots, state[0], strict=True)),
                tuple(_r0(t) for t in state[3]),
            )
        )
    link = parents[state]
    while link is not None:
        parent, actor, action = link
        steps.append(
            TraceStep(actor, action, tuple(zip(slots, state[0], strict=True)), tuple(_r0(t) for t in state[3]))
        )
        state = parent
        link = parents[state]
    steps.reverse()
    if f.last is None:
        steps.append(TraceStep("checker", "plan done  <-- VIOLATION (see above)", steps[-1].slots if steps else (), ()))
    return tuple(steps)


def render_trace(result: CheckResult) -> str:
    """SAFE with the number of states, or UNSAFE with the trace as a CPU0 | CPU1 | patcher table."""
    req = result.request
    if result.sites_checked == 1:
        subject = f"{req.variant.value} {req.current.value} -> {req.target.value} (site {result.site})"
    else:
        subject = f"{result.sites_checked} distinct sites"
    stale = ", stale fetch" if result.stale_fetch else ""
    what = f"{subject}, {result.tasks} task(s) x {result.entries} entries, cmodx {result.cmodx.value}{stale}"
    if result.safe:
        return f"SAFE: {what}: {result.states} states explored\n"
    assert result.violation is not None
    head = f"UNSAFE ({result.violation.value}): {result.reason}\n  {what}: {result.states} states explored\n"
    actors = sorted({s.actor for s in result.trace if s.actor.startswith("CPU")})
    columns = [*actors, "patcher"]
    slot_names = [s.value for s, _ in result.trace[0].slots] if result.trace and result.trace[0].slots else []
    rows: list[list[str]] = []
    for n, step in enumerate(result.trace, 1):
        row = [str(n)]
        for col in columns:
            if step.actor == col or (col == "patcher" and step.actor == "checker"):
                row.append(step.action)
            elif col.startswith("CPU") and step.r0 and step.r0[int(col[3:])]:
                row.append(f"  : (between A and B, r0 {step.r0[int(col[3:])]})")
            else:
                row.append("")
        row += [w.value for _, w in step.slots] or [""] * len(slot_names)
        rows.append(row)
    header = ["#", *columns, *slot_names]
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


def _builtins() -> dict[str, Builtin]:
    m, std = Variant.MPROFILE, Variant.MPROFILE_STD
    nopped, enabled = SiteState.NOPPED, SiteState.ENABLED
    enable = [SiteRequest(m, nopped, enabled)]
    a, b = Slot.A, Slot.B
    return {
        "naive-enable": Builtin(
            m,
            nopped,
            hand_plan(m, nopped, enabled, [[(a, Insn.NOP, Insn.MFLR)], [(b, Insn.NOP, Insn.CALL)]], [Barrier.ORDER]),
            "the 2019 race: nop -> mflr, then nop -> bl, no barrier",
        ),
        "b8-enable": Builtin(
            m,
            nopped,
            plan(enable, route=Route.B8),
            "Rao: nop -> b+8, synchronize_rcu_tasks, nop -> bl, b+8 -> mflr",
        ),
        "mflr-first-enable": Builtin(
            m,
            nopped,
            plan(enable, route=Route.MFLR_FIRST),
            "Piggin: nop -> mflr, synchronize_rcu_tasks, nop -> bl",
        ),
        "disable": Builtin(
            m, enabled, plan([SiteRequest(m, enabled, nopped)]), "bl -> nop, then mflr -> nop, no barrier"
        ),
        "reverse-disable": Builtin(
            m,
            enabled,
            hand_plan(m, enabled, nopped, [[(a, Insn.MFLR, Insn.NOP)], [(b, Insn.CALL, Insn.NOP)]], [Barrier.ORDER]),
            "mflr -> nop first, then bl -> nop",
        ),
        "mflr-first-enable-isync": Builtin(
            m,
            nopped,
            plan(enable, stale_fetch=True),
            "mflr-first with an isync IPI before each synchronize_rcu_tasks",
        ),
        "b8-enable-gcc5": Builtin(
            std,
            nopped,
            hand_plan(
                std,
                nopped,
                enabled,
                [[(a, Insn.NOP, Insn.B8)], [(b, Insn.NOP, Insn.CALL)], [(a, Insn.B8, Insn.MFLR)]],
                [Barrier.RCU_TASKS, Barrier.ORDER],
            ),
            "Rao's order on a gcc-5 mflr; std; bl site, where b .+8 lands on the bl",
        ),
        "mflr-first-enable-gcc5": Builtin(
            std,
            nopped,
            plan([SiteRequest(std, nopped, enabled)]),
            "Piggin's order on a gcc-5 mflr; std; bl site",
        ),
    }


BUILTINS: Final[Mapping[str, Builtin]] = MappingProxyType(_builtins())
"""Named plans for ``mcountrw check-plan --builtin NAME``; each is a one-site plan."""
