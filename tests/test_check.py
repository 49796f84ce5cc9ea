"""The model checker: the upstream race as a trace, the proposals' verdicts, and every planned plan safe."""

from __future__ import annotations

import pytest

from rewriter.check import BUILTINS, Violation, check, check_all, hand_plan, render_trace
from rewriter.errors import PlanRejected
from rewriter.plan import Barrier, Cmodx, Plan, Route, SiteRequest, Write, plan
from tests_compat import VARIANT_STATES, Variant
from rewriter.states import Insn, SiteState, Slot

M, STD, PATCH = Variant.MPROFILE, Variant.MPROFILE_STD, Variant.PATCHABLE
E, D, N = SiteState.ENABLED, SiteState.DISABLED, SiteState.NOPPED

VERDICTS = {
    "naive-enable": False,
    "b8-enable": True,
    "mflr-first-enable": True,
    "disable": True,
    "reverse-disable": False,
    "mflr-first-enable-isync": True,
    "b8-enable-gcc5": False,
    "mflr-first-enable-gcc5": True,
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
    assert steps[3][0] == "CPU0" and "bl _mcount" in steps[3][1] and "NOT = LR" in steps[3][1]  # ... bl
    assert result.trace[1].r0[0] == result.trace[2].r0[0] == "stale"


def test_naive_enable_renders_as_a_cpu_table():
    text = render_trace(check(BUILTINS["naive-enable"].plan))
    assert text.startswith("UNSAFE (bl-with-stale-r0)")
    header = text.splitlines()[2]
    assert "CPU0" in header and "patcher" in header
    assert "between A and B, r0 stale" in text


def test_reverse_disable_runs_nop_then_live_bl():
    result = check(BUILTINS["reverse-disable"].plan)
    actions = [s.action for s in result.trace]
    assert actions[0] == "A: mflr -> nop"
    assert "enters; A: nop" in actions[1]
    assert "bl _mcount" in actions[2]


def test_b8_on_a_gcc5_site_jumps_onto_the_bl():
    result = check(BUILTINS["b8-enable-gcc5"].plan)
    assert any("b .+8 lands on B" in s.action for s in result.trace)


@pytest.mark.parametrize("name", ["mflr-first-enable-gcc5", "b8-enable-gcc5"])
def test_the_gcc5_std_slot_never_changes_a_verdict(name):
    p = BUILTINS[name].plan
    assert check(p, std_slot=Insn.STD).safe == check(p, std_slot=Insn.NOP).safe


def test_check_t3_k2_is_fast_enough_to_run_everywhere():
    result = check(BUILTINS["mflr-first-enable-isync"].plan, tasks=3, entries=2)
    assert result.safe and result.states < 100_000


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
    p = plan([SiteRequest(M, N, E)] * 100 + [SiteRequest(STD, E, N), SiteRequest(PATCH, N, E)])
    result = check_all(p, tasks=2)
    assert result.safe and result.sites_checked == 3
    assert "3 distinct sites" in render_trace(result)


def test_check_rejects_out_of_range_parameters():
    p = BUILTINS["disable"].plan
    with pytest.raises(ValueError, match="tasks"):
        check(p, tasks=4)
    with pytest.raises(ValueError, match="site"):
        check(p, site=1)


def test_safe_result_reports_states_explored():
    text = render_trace(check(BUILTINS["b8-enable"].plan, tasks=3))
    assert text.startswith("SAFE:") and "states explored" in text


# ---------------------------------------------------------------- every plan the planner emits


def _pairs():
    for variant, states in VARIANT_STATES.items():
        for current in [*sorted(states, key=lambda s: s.value), SiteState.BROKEN]:
            for target in sorted(states, key=lambda s: s.value):
                yield variant, current, target


MODES = {
    "runtime-3.1": dict(cmodx=Cmodx.V3_1, runtime=True),
    "runtime-3.0": dict(cmodx=Cmodx.V3_0, runtime=True),
    "runtime-stale": dict(cmodx=Cmodx.V3_1, runtime=True, stale_fetch=True),
    "offline": dict(cmodx=Cmodx.V3_1, runtime=False),
}


@pytest.mark.parametrize("mode", sorted(MODES))
@pytest.mark.parametrize("route", list(Route), ids=lambda r: r.value)
def test_every_plan_the_planner_emits_is_safe(route, mode):
    planned = 0
    for variant, current, target in _pairs():
        try:
            p = plan([SiteRequest(variant, current, target)], route=route, **MODES[mode])
        except PlanRejected:
            continue
        planned += 1
        for tasks in (2, 3):
            result = check(p, tasks=tasks, entries=2)
            assert result.safe, render_trace(result)
    assert planned >= 8  # even under cmodx 3.0: the bl-only and b+8-only moves


def test_mflr_first_plans_every_pair_at_runtime_except_from_broken():
    for variant, current, target in _pairs():
        if current is not SiteState.BROKEN:
            plan([SiteRequest(variant, current, target)], route=Route.MFLR_FIRST)
