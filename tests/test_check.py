"""The model checker: the upstream race as a trace, the proposals' verdicts, and every planned plan safe."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from types import MappingProxyType

import pytest
from conftest import assert_one_line, invoke

from rewriter import check as checker
from rewriter.check import BUILTINS, Violation, check, check_all, hand_plan, render_trace
from rewriter.errors import ArgumentError, PlanRejected
from rewriter.generations import LAYOUTS, Variant
from rewriter.plan import Barrier, Cmodx, Plan, Route, SiteRequest, Write, plan
from rewriter.states import Insn, SiteState, Slot

M, STD, PATCH, OOL = Variant.MPROFILE, Variant.MPROFILE_STD, Variant.PATCHABLE, Variant.OOL
E, D, N = SiteState.ENABLED, SiteState.DISABLED, SiteState.NOPPED
G, ARMED = SiteState.GUARDED, SiteState.ARMED

VERDICTS = {
    "naive-enable": False,
    "b8-enable": True,
    "mflr-first-enable": True,
    "disable": True,
    "reverse-disable": False,
    "mflr-first-enable-isync": True,
    "b8-enable-gcc5": False,
    "mflr-first-enable-gcc5": True,
    "patchable-naive-enable": False,
    "patchable-b8-enable": True,
    "patchable-enable": True,
    "patchable-disable": True,
    "ool-enable": True,
    "ool-disable": True,
}


def _one(variant: Variant, current: SiteState, target: SiteState, stages, barriers, settle=None) -> Plan:
    return hand_plan(variant, current, target, stages, barriers, settle)


# ---------------------------------------------------------------- the built-ins


def test_every_builtin_has_an_expected_verdict():
    assert set(BUILTINS) == set(VERDICTS)


@pytest.mark.parametrize("tasks", [2, 3])
@pytest.mark.parametrize("name", sorted(VERDICTS))
def test_builtin_verdicts_for_two_and_three_tasks(name, tasks):
    builtin = BUILTINS[name]
    assert builtin.plan.sites[0].variant is builtin.variant
    assert builtin.plan.sites[0].current is builtin.start
    result = check(builtin.plan, tasks=tasks, entries=2)
    assert result.safe is VERDICTS[name], render_trace(result)
    assert result.states > 0


def test_naive_enable_trace_is_the_2019_race():
    result = check(BUILTINS["naive-enable"].plan)
    assert result.violation is Violation.STALE_R0_CALL
    steps = [(s.actor, s.action) for s in result.trace]
    assert steps[0] == ("CPU0", "enters; A: nop (r0 not set)")  # the nop'ed mflr slot runs ...
    assert steps[1] == ("patcher", "A: nop -> mflr")  # ... CPU0 is preempted, both words are patched ...
    assert steps[2] == ("patcher", "B: nop -> bl")
    assert steps[3][0] == "CPU0" and "bl ftrace_caller" in steps[3][1] and "NOT = LR" in steps[3][1]  # ... bl
    assert result.trace[1].r0[0] == result.trace[2].r0[0] == "stale"


def test_naive_enable_renders_as_a_cpu_table():
    text = render_trace(check(BUILTINS["naive-enable"].plan))
    assert text.startswith("UNSAFE (bl-with-stale-r0)")
    header = text.splitlines()[2]
    assert "CPU0" in header and "patcher" in header
    assert "(before B, r0 stale)" in text


# ---------------------------------------------------------------- 6.12 (patchable) and 7.2 (ool)


def test_patchable_naive_enable_is_the_2019_race_unchanged():
    """A 6.12 site whose A was left nop, enabled the 2019 way: the same trace as on mprofile."""
    result = check(BUILTINS["patchable-naive-enable"].plan, tasks=3, entries=2)
    assert result.violation is Violation.STALE_R0_CALL
    mprofile = check(BUILTINS["naive-enable"].plan, tasks=3, entries=2)
    assert [(s.actor, s.r0) for s in result.trace] == [(s.actor, s.r0) for s in mprofile.trace]
    assert [s.action for s in result.trace[:3]] == ["enters; A: nop (r0 not set)", "A: nop -> mflr", "B: nop -> bl"]
    assert result.trace[-1].action == "B: bl ftrace_caller with r0 NOT = LR  <-- VIOLATION"


def test_a_bl_written_while_a_stays_nop_is_unsafe_even_for_one_task():
    p = _one(PATCH, N, E, [[(Slot.B, Insn.NOP, Insn.CALL)]], [])
    result = check(p, tasks=1, entries=1)
    assert result.violation is Violation.STALE_R0_CALL
    assert check(p, tasks=3).violation is Violation.STALE_R0_CALL


def test_patchable_b8_enable_is_raos_order_and_waits_for_the_tasks():
    p = BUILTINS["patchable-b8-enable"].plan
    assert [[(w.slot, w.old, w.new) for w in stage] for stage in p.stages] == [
        [(Slot.A, Insn.NOP, Insn.B8)],
        [(Slot.B, Insn.NOP, Insn.CALL)],
        [(Slot.A, Insn.B8, Insn.MFLR)],
    ]
    assert p.barriers == (Barrier.RCU_TASKS, Barrier.ORDER)
    # The barrier is for the tasks that ran A's nop before the b+8 landed: without it they race.
    no_wait = dataclasses.replace(p, barriers=(Barrier.ORDER, Barrier.ORDER))
    assert check(no_wait, tasks=3).violation is Violation.STALE_R0_CALL
    from_nop = _one(PATCH, N, E, [[(Slot.B, Insn.NOP, Insn.CALL)], [(Slot.A, Insn.NOP, Insn.B8)]], [Barrier.ORDER])
    assert check(from_nop).violation is Violation.STALE_R0_CALL


@pytest.mark.parametrize("name", ["ool-enable", "ool-disable"])
def test_ool_builtins_are_one_write_and_safe_under_every_model(name):
    p = BUILTINS[name].plan
    assert len(p.stages) == 1 and p.num_writes == 1 and p.num_barriers == 0
    for stale in (False, True):
        for cmodx in Cmodx:
            result = check(p, tasks=3, entries=2, stale_fetch=stale, cmodx=cmodx)
            assert result.safe, render_trace(result)


def test_ool_enable_then_disable_without_any_barrier_is_safe():
    p = _one(OOL, D, D, [[(Slot.B, Insn.NOP, Insn.STUB)], [(Slot.B, Insn.STUB, Insn.NOP)]], [Barrier.ORDER])
    assert check(p, tasks=3, entries=2, stale_fetch=True).safe


def _with_stub(monkeypatch: pytest.MonkeyPatch, stub: tuple[Insn, ...]) -> None:
    """Model a 7.2 kernel whose boot-time stub were different (the checker must notice)."""
    lay = dataclasses.replace(LAYOUTS[OOL], stub=stub)
    geometry = {**checker._GEOMETRY, OOL: checker._Geometry.of(lay)}
    monkeypatch.setattr(checker, "_GEOMETRY", MappingProxyType(geometry))


def test_the_stub_is_executed_word_by_word_and_its_mflr_is_what_makes_ool_safe(monkeypatch):
    _with_stub(monkeypatch, (Insn.NOP, Insn.CALL, Insn.MTLR, Insn.BACK))
    result = check(BUILTINS["ool-disable"].plan, tasks=1, entries=1)
    assert result.violation is Violation.STALE_R0_CALL
    assert [s.action for s in result.trace] == [
        "enters; B: b stub",
        "stub[0]: nop",
        "stub[1]: bl ftrace_caller with r0 NOT = LR  <-- VIOLATION",
    ]
    assert result.trace[1].at == ("stub[1]",) and result.trace[1].r0 == ("stale",)


def test_a_task_inside_the_stub_holds_up_synchronize_rcu_tasks():
    """RCU tasks waits for tasks in trampolines: the patcher passes the barrier only when no task is
    in the site or its stub."""
    geo = checker._GEOMETRY[OOL]
    model = checker._Model(geo, (checker._RCU,), (Insn.NOP,), False, Cmodx.V3_1)
    for pc in range(geo.n, geo.n + len(geo.layout.stub)):
        inside = ((Insn.STUB,), 0, 0, ((0, False, 1, None), (pc, pc > geo.n, 1, None)))
        assert list(checker._patcher_moves(model, inside)) == [], geo.name(pc)
    outside = ((Insn.STUB,), 0, 0, ((0, False, 1, None), (0, False, 0, None)))
    assert [m.action for m in checker._patcher_moves(model, outside)] == ["synchronize_rcu_tasks() returns"]


# ---------------------------------------------------------------- the other models


def test_synchronize_rcu_tasks_alone_is_unsafe_with_stale_fetch():
    result = check(BUILTINS["mflr-first-enable"].plan, stale_fetch=True)
    assert result.violation is Violation.STALE_R0_CALL
    assert any("stale fetch" in s.action for s in result.trace)


def test_disable_without_a_barrier_is_unsafe_with_stale_fetch():
    assert not check(BUILTINS["disable"].plan, stale_fetch=True).safe
    assert check(plan([SiteRequest(M, E, N)], stale_fetch=True), tasks=3).safe


def test_isync_must_come_before_the_bl_write_not_only_at_the_end():
    p = _one(
        M,
        N,
        E,
        [[(Slot.A, Insn.NOP, Insn.MFLR)], [(Slot.B, Insn.NOP, Insn.CALL)]],
        [Barrier.RCU_TASKS],
        settle=Barrier.ISYNC_RCU_TASKS,
    )
    assert check(p, stale_fetch=True).violation is Violation.STALE_R0_CALL


def test_without_stale_fetch_tasks_see_writes_made_after_an_isync_barrier():
    p = _one(
        M,
        E,
        N,
        [[(Slot.A, Insn.MFLR, Insn.B8)], [(Slot.A, Insn.B8, Insn.NOP)], [(Slot.B, Insn.CALL, Insn.NOP)]],
        [Barrier.ISYNC_RCU_TASKS, Barrier.ORDER],
    )
    assert check(p, stale_fetch=False).violation is Violation.STALE_R0_CALL  # runs the new nop, then bl


def test_an_isync_barrier_does_not_give_coherent_tasks_stale_fetches():
    p = _one(M, N, E, [[(Slot.A, Insn.NOP, Insn.MFLR)], [(Slot.B, Insn.NOP, Insn.CALL)]], [Barrier.ISYNC_RCU_TASKS])
    assert check(p, stale_fetch=False, tasks=3).safe


def test_cmodx_30_flags_patching_mflr():
    result = check(BUILTINS["mflr-first-enable"].plan, cmodx=Cmodx.V3_0)
    assert result.violation is Violation.CMODX
    assert check(BUILTINS["disable"].plan, cmodx=Cmodx.V3_0).violation is Violation.CMODX


def test_a_plan_that_leaves_a_stale_r0_task_behind_is_unsettled():
    bare = _one(M, N, D, [[(Slot.A, Insn.NOP, Insn.MFLR)]], [])
    assert check(bare).violation is Violation.UNSETTLED
    settled = _one(M, N, D, [[(Slot.A, Insn.NOP, Insn.MFLR)]], [], settle=Barrier.RCU_TASKS)
    assert check(settled).safe


def test_cas_mismatch_is_reported():
    p = _one(M, N, E, [[(Slot.A, Insn.NOP, Insn.MFLR), (Slot.A, Insn.MFLR, Insn.B8)]], [])
    assert check(p).violation is Violation.CAS_MISMATCH


def test_wrong_final_state_is_reported():
    p = _one(M, N, E, [[(Slot.A, Insn.NOP, Insn.MFLR)]], [])
    assert check(p).violation in (Violation.WRONG_FINAL, Violation.UNSETTLED)
    assert check(p, tasks=1, entries=1).violation is not None


def test_offline_plans_are_checked_without_tasks_but_still_may_not_break():
    p = Plan(
        sites=(SiteRequest(M, E, N),),
        stages=((Write(0, Slot.A, Insn.MFLR, Insn.NOP),), (Write(0, Slot.B, Insn.CALL, Insn.NOP),)),
        barriers=(Barrier.ORDER,),
        settle=None,
        route=Route.MFLR_FIRST,
        cmodx=Cmodx.V3_1,
        runtime=False,
    )
    result = check(p)
    assert result.tasks == 0
    assert result.violation is Violation.BROKEN


def test_check_all_covers_every_site():
    requests = [SiteRequest(M, N, E)] * 100 + [SiteRequest(STD, E, N), SiteRequest(PATCH, N, E), SiteRequest(OOL, D, E)]
    result = check_all(plan(requests), tasks=2)
    assert result.safe and result.sites_checked == 4
    assert "4 distinct sites" in render_trace(result)


def test_check_rejects_out_of_range_parameters():
    p = BUILTINS["disable"].plan
    with pytest.raises(ArgumentError, match="tasks"):
        check(p, tasks=4)
    with pytest.raises(ArgumentError, match="site"):
        check(p, site=1)


def test_safe_result_reports_states_explored():
    text = render_trace(check(BUILTINS["b8-enable"].plan, tasks=3))
    assert text.startswith("SAFE:") and "states explored" in text


# ---------------------------------------------------------------- every plan the planner emits


def _pairs(variant: Variant):
    states = sorted(LAYOUTS[variant].states, key=lambda s: s.value)
    for current in [*states, SiteState.BROKEN]:
        for target in states:
            yield current, target


MODES = {
    "runtime-3.1": dict(cmodx=Cmodx.V3_1, runtime=True),
    "runtime-3.0": dict(cmodx=Cmodx.V3_0, runtime=True),
    "runtime-stale": dict(cmodx=Cmodx.V3_1, runtime=True, stale_fetch=True),
    "offline": dict(cmodx=Cmodx.V3_1, runtime=False),
}


@pytest.mark.parametrize("mode", sorted(MODES))
@pytest.mark.parametrize("route", list(Route), ids=lambda r: r.value)
@pytest.mark.parametrize("variant", list(Variant), ids=lambda v: v.value)
def test_every_plan_the_planner_emits_is_safe(variant, route, mode):
    planned = 0
    for current, target in _pairs(variant):
        try:
            p = plan([SiteRequest(variant, current, target)], route=route, **MODES[mode])
        except PlanRejected:
            continue
        planned += 1
        for tasks in (2, 3):
            result = check(p, tasks=tasks, entries=2)
            assert result.safe, render_trace(result)
    if variant is OOL:
        # disabled/enabled to disabled/enabled at run time, on both routes; offline only to disabled:
        # `b stub` is written by the running kernel alone
        assert planned == (2 if mode == "offline" else 4)
    else:
        assert planned >= 5  # even under cmodx 3.0: the bl-only (and b+8-only) moves, and staying put


def test_mflr_first_plans_every_pair_at_runtime_except_from_broken():
    """That plan() returns is not enough: a plan that stops short of its target, or gets there
    through a broken state or over a CAS that would fail, must fail here. Each plan is walked write
    by write to its target (test_plan's walk) and model-checked (which also rejects a wrong final state)."""
    from test_plan import _walk

    planned = 0
    for variant in Variant:
        for current, target in _pairs(variant):
            if current is SiteState.BROKEN:
                continue
            p = plan([SiteRequest(variant, current, target)], route=Route.MFLR_FIRST)
            assert p.route is Route.MFLR_FIRST and p.runtime, p
            assert _walk(p) == [target], (variant, current, target, p.stages)
            result = check(p, tasks=2, entries=2)
            assert result.safe, render_trace(result)
            planned += 1
    assert planned == sum(len(LAYOUTS[v].states) ** 2 for v in Variant)


# ---------------------------------------------------------------- the command line


def _mcountrw(command: str) -> subprocess.CompletedProcess[str]:
    """Run ``mcountrw COMMAND`` (arguments split on spaces)."""
    args = [sys.executable, "-m", "rewriter", *command.split()]
    return subprocess.run(args, capture_output=True, text=True, check=False)


@pytest.mark.parametrize(
    "name",
    [
        "patchable-naive-enable",
        "patchable-b8-enable",
        "patchable-enable",
        "patchable-disable",
        "ool-enable",
        "ool-disable",
    ],
)
def test_cli_check_plan_runs_the_new_builtins_for_three_tasks(name):
    proc = _mcountrw(f"check-plan --builtin {name} --tasks 3 --entries 2")
    assert proc.returncode == (0 if VERDICTS[name] else 1), proc.stderr
    if VERDICTS[name]:
        assert proc.stdout.startswith(f"{name}: SAFE (") and "3 tasks x 2 entries" in proc.stdout
    else:
        assert proc.stdout.startswith(f"{name}: UNSAFE (bl-with-stale-r0): CPU0 executes bl ftrace_caller with r0 ")
        assert proc.stdout.count("UNSAFE") == 1  # the verdict once (it was printed twice)
        assert "(before B, r0 stale)" in proc.stdout and "r0 NOT = LR  <-- VIOLATION" in proc.stdout


def test_cli_check_plan_of_an_ool_plan_file(tmp_path):
    path = tmp_path / "ool.json"
    path.write_text(_mcountrw("plan --generation ool --from disabled --to enabled --format json").stdout)
    proc = _mcountrw(f"check-plan {path} --tasks 3 --stale-fetch --cmodx 3.0")
    assert proc.returncode == 0 and "SAFE" in proc.stdout


@pytest.mark.parametrize(
    ("variant", "current", "target", "writes", "why"),
    [
        (OOL, D, E, [Write(0, Slot.B, Insn.NOP, Insn.STUB)], "stub that only the boot fills"),
        (PATCH, N, E, [Write(0, Slot.A, Insn.NOP, Insn.MFLR), Write(0, Slot.B, Insn.NOP, Insn.CALL)], "nop; nop"),
        (PATCH, G, ARMED, [Write(0, Slot.B, Insn.NOP, Insn.CALL)], "ftrace_init_nop accepts only nop; nop"),
    ],
)
def test_an_offline_plan_that_leaves_words_only_the_running_kernel_writes_is_unsafe(
    variant, current, target, writes, why
):
    """plan --offline and apply refuse these targets (boot init accepts only the nops at a recorded
    place; an ool b stub enters a zeroed stub): check-plan called a hand-written such plan SAFE."""
    stages = tuple((w,) for w in writes)
    p = Plan((SiteRequest(variant, current, target),), stages, (Barrier.ORDER,) * (len(stages) - 1), None,
             Route.MFLR_FIRST, Cmodx.V3_1, runtime=False)  # fmt: skip
    result = check(p)
    assert result.violation is Violation.KERNEL_ONLY and why in result.reason
    assert "(site 0), offline: " in render_trace(result)  # not "0 tasks x 2 entries, cmodx 3.1"
    with pytest.raises(PlanRejected, match="no offline route"):
        plan([SiteRequest(variant, current, target)], runtime=False)  # nor does the planner offer one


def test_an_offline_plan_to_a_state_a_file_may_hold_stays_safe():
    for variant, current, target in ((M, N, E), (PATCH, E, N), (OOL, E, D)):
        assert check(plan([SiteRequest(variant, current, target)], runtime=False)).safe


def test_a_trace_names_the_state_each_row_leaves_the_site_in():
    """reverse-disable's race is the site reading `nop; bl` (broken), which its trace showed only
    as words: each row now says the state they make."""
    result = check(BUILTINS["reverse-disable"].plan)
    assert [s.state for s in result.trace] == ["broken"] * len(result.trace)
    header, _rule, *rows = render_trace(result).splitlines()[2:]
    assert header.endswith("| state") and all(r.endswith("| broken") for r in rows)
    naive = check(BUILTINS["patchable-naive-enable"].plan)
    assert [s.state for s in naive.trace] == ["nopped", "disabled", "enabled", "enabled"]


def test_a_check_past_its_state_bound_stops_and_says_which_site(monkeypatch: pytest.MonkeyPatch) -> None:
    """A hand-made plan with many writes to one site grew the search without end (20 writes to an
    ool site: 1.4 million states, 1 GB). Past ``MAX_STATES`` the check stops with one line; here
    the bound is lowered so that a built-in plan passes it."""
    monkeypatch.setattr(checker, "MAX_STATES", 1000)
    with pytest.raises(ArgumentError, match=r"site 0 \(1 write\) takes more than 1,000 states .* 3 tasks x 4 entries"):
        check_all(BUILTINS["ool-enable"].plan, tasks=3, entries=4, stale_fetch=True)
    refused = invoke("check-plan", "--builtin", "ool-enable", "--tasks", "3", "--entries", "4", "--stale-fetch")
    assert_one_line(refused, 2, "error", "ool-enable: site 0 (1 write) takes more than 1,000 states")


def test_the_largest_built_in_plans_check_well_within_the_state_bound() -> None:
    """The bound refuses no plan `plan` makes: the largest, ool's, at the most tasks and entries."""
    for name in ("ool-enable", "ool-disable"):
        result = check_all(BUILTINS[name].plan, tasks=checker.MAX_TASKS, entries=checker.MAX_ENTRIES, stale_fetch=True)
        assert result.safe and result.states < checker.MAX_STATES // 5, (name, result.states)
