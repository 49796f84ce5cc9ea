"""The planner: routes, barriers, CMODX policy, offline mode, JSON and text.

The property tests compare the planner's barrier count with an oracle that knows nothing of the
planner: for each single-site request it tries every path through the transition table with every
placement of barriers and asks the model checker which are safe.
"""

from __future__ import annotations

import itertools
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rewriter.check import check
from rewriter.errors import PlanRejected
from rewriter.plan import Barrier, Cmodx, Plan, Route, SiteRequest, Write, plan, render_text
from tests_compat import STATE_SLOTS, VARIANT_STATES, Variant, state_of, steps_from
from rewriter.states import Insn, SiteState, Slot

M, STD, PATCH = Variant.MPROFILE, Variant.MPROFILE_STD, Variant.PATCHABLE
E, D, N, G, ARMED, X = (
    SiteState.ENABLED,
    SiteState.DISABLED,
    SiteState.NOPPED,
    SiteState.GUARDED,
    SiteState.ARMED,
    SiteState.BROKEN,
)


def _writes(p: Plan) -> list[list[tuple[Slot, Insn, Insn]]]:
    return [[(w.slot, w.old, w.new) for w in stage] for stage in p.stages]


def _walk(p: Plan) -> list[SiteState]:
    """Apply the plan stage by stage (each site has at most one write per stage, checked here),
    compare-and-swapping, and return each site's final state; fail on any broken state on the way."""
    slots = [dict(zip((Slot.A, Slot.B), STATE_SLOTS[r.current], strict=True)) for r in p.sites]
    for stage in p.stages:
        assert len({w.site for w in stage}) == len(stage), "two writes to one site in one stage"
        for w in stage:
            if w.slot is Slot.S:
                continue
            assert slots[w.site][w.slot] is w.old, f"CAS would fail: {w}"
            slots[w.site][w.slot] = w.new
            assert state_of(slots[w.site][Slot.A], slots[w.site][Slot.B]) is not X, f"broken after {w}"
    return [state_of(s[Slot.A], s[Slot.B]) for s in slots]


# ---------------------------------------------------------------- routes and barriers


def test_whole_kernel_enable_from_nopped_needs_one_barrier_not_one_per_site():
    p = plan([SiteRequest(M, N, E)] * 5000)
    assert p.num_barriers == 1
    assert p.barriers == (Barrier.RCU_TASKS,)
    assert p.settle is None
    assert _writes(p) == [[(Slot.A, Insn.NOP, Insn.MFLR)] * 5000, [(Slot.B, Insn.NOP, Insn.CALL)] * 5000]


def test_default_route_is_mflr_first_because_it_writes_less():
    p = plan([SiteRequest(M, N, E)])
    assert p.route is Route.MFLR_FIRST
    assert p.num_writes == 2


def test_b8_route_follows_raos_order():
    p = plan([SiteRequest(M, N, E)], route=Route.B8)
    assert _writes(p) == [
        [(Slot.A, Insn.NOP, Insn.B8)],
        [(Slot.B, Insn.NOP, Insn.CALL)],
        [(Slot.A, Insn.B8, Insn.MFLR)],
    ]
    assert p.barriers == (Barrier.RCU_TASKS, Barrier.ORDER)


def test_disable_nops_the_bl_before_the_mflr_without_a_barrier():
    p = plan([SiteRequest(M, E, N)])
    assert _writes(p) == [[(Slot.B, Insn.CALL, Insn.NOP)], [(Slot.A, Insn.MFLR, Insn.NOP)]]
    assert p.num_barriers == 0


def test_disable_rides_on_the_barrier_an_enable_needs_anyway():
    p = plan([SiteRequest(M, N, E), SiteRequest(M, E, N)])
    assert len(p.stages) == 2 and p.num_barriers == 1
    assert _walk(p) == [E, N]


def test_nopped_to_disabled_ends_with_a_settle_barrier():
    p = plan([SiteRequest(M, N, D)])
    assert p.settle is Barrier.RCU_TASKS
    assert check(p).safe


def test_settle_is_not_added_when_a_later_barrier_already_follows():
    p = plan([SiteRequest(M, N, D), SiteRequest(M, N, E)])
    assert p.num_barriers == 1 and p.settle is None


def test_plain_bl_enable_from_disabled_needs_no_barrier():
    p = plan([SiteRequest(M, D, E)])
    assert _writes(p) == [[(Slot.B, Insn.NOP, Insn.CALL)]]
    assert p.num_barriers == 0


def test_nothing_to_do_gives_an_empty_plan():
    p = plan([SiteRequest(M, E, E)])
    assert p.stages == () and p.num_barriers == 0
    assert "nothing to write" in render_text(p)


# ---------------------------------------------------------------- refusals


def test_cmodx_30_refuses_runtime_enable_of_a_nopped_mflr_and_says_why():
    with pytest.raises(PlanRejected, match=r"--cmodx 3\.0.*offline"):
        plan([SiteRequest(M, N, E)], cmodx=Cmodx.V3_0)


def test_cmodx_30_still_allows_enabling_a_disabled_site():
    p = plan([SiteRequest(M, D, E)], cmodx=Cmodx.V3_0)
    assert _writes(p) == [[(Slot.B, Insn.NOP, Insn.CALL)]]


def test_cmodx_30_allows_guarding_with_b8_which_is_a_branch():
    p = plan([SiteRequest(M, N, ARMED)], cmodx=Cmodx.V3_0)
    assert _walk(p) == [ARMED]


def test_cmodx_does_not_apply_offline():
    p = plan([SiteRequest(M, N, E)], cmodx=Cmodx.V3_0, runtime=False)
    assert p.num_barriers == 0 and _walk(p) == [E]


def test_b8_route_is_refused_for_gcc5_sites_because_b8_lands_on_the_bl():
    with pytest.raises(PlanRejected, match="lands on the bl"):
        plan([SiteRequest(STD, N, E)], route=Route.B8)


def test_default_route_falls_back_to_mflr_first_for_gcc5_sites():
    assert plan([SiteRequest(STD, N, E)]).route is Route.MFLR_FIRST


def test_broken_target_is_refused():
    with pytest.raises(PlanRejected, match="never a target"):
        plan([SiteRequest(M, E, X)])


def test_runtime_plan_refuses_a_site_that_is_already_broken():
    with pytest.raises(PlanRejected, match=r"already broken.*offline"):
        plan([SiteRequest(M, X, N)])


def test_offline_plan_repairs_a_broken_site():
    p = plan([SiteRequest(M, X, E)], runtime=False)
    assert _writes(p) == [[(Slot.A, Insn.NOP, Insn.MFLR)]]


def test_unknown_sites_are_refused_naming_the_site():
    with pytest.raises(PlanRejected, match=r"site 1: .*unknown"):
        plan([SiteRequest(M, E, N), SiteRequest(M, SiteState.UNKNOWN, N)])


def test_guarded_is_not_a_patchable_state():
    with pytest.raises(PlanRejected, match="patchable-entry scheme"):
        plan([SiteRequest(PATCH, N, G)])


def test_offline_enable_still_orders_the_writes_so_the_file_is_never_broken():
    p = plan([SiteRequest(M, N, E)], runtime=False)
    assert p.barriers == (Barrier.ORDER,)
    assert _writes(p) == [[(Slot.A, Insn.NOP, Insn.MFLR)], [(Slot.B, Insn.NOP, Insn.CALL)]]


def test_stale_fetch_plans_isync_before_each_barrier_and_settle():
    p = plan([SiteRequest(M, E, N)], stale_fetch=True)
    assert p.barriers == (Barrier.ISYNC_RCU_TASKS,)
    assert p.settle is Barrier.ISYNC_RCU_TASKS


# ---------------------------------------------------------------- JSON and text


def test_json_round_trips():
    p = plan([SiteRequest(M, N, E), SiteRequest(STD, E, N), SiteRequest(PATCH, N, D)], stale_fetch=True)
    assert Plan.from_json(p.to_json()) == p


def _doc() -> dict:
    return json.loads(plan([SiteRequest(M, N, E)]).to_json())


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda d: d.pop("stages"), "missing 'stages'"),
        (lambda d: d.update(format="other"), "format"),
        (lambda d: d.update(route="b16"), "route: expected one of"),
        (lambda d: d.update(barriers=[]), "need 1 barriers"),
        (lambda d: d["stages"][0][0].update(site=7), "site 7 is not in sites"),
        (lambda d: d["stages"][0][0].update(slot="S"), "mprofile sites have no slot S"),
        (lambda d: d["stages"][0][0].update(new="std"), "not a write to slot A"),
        (lambda d: d.update(settle="order"), "not a barrier"),
        (lambda d: d["sites"][0].update(target="broken"), "cannot plan"),
        (lambda d: d["stages"].append([]), "empty|need"),
    ],
)
def test_from_json_rejects_bad_input_with_a_clear_message(edit, message):
    doc = _doc()
    edit(doc)
    with pytest.raises(ValueError, match=message):
        Plan.from_json(json.dumps(doc))


def test_from_json_rejects_non_json():
    with pytest.raises(ValueError, match="not JSON"):
        Plan.from_json("{")


def test_plans_may_swap_the_gcc5_std_slot_when_read_from_json():
    p = Plan(
        sites=(SiteRequest(STD, E, E),),
        stages=((Write(0, Slot.S, Insn.STD, Insn.NOP),),),
        barriers=(),
        settle=None,
        route=Route.MFLR_FIRST,
        cmodx=Cmodx.V3_1,
        runtime=True,
    )
    assert Plan.from_json(p.to_json()) == p
    assert check(p, tasks=3).safe


def test_text_groups_sites_and_names_the_barrier():
    text = render_text(plan([SiteRequest(M, N, E)] * 3 + [SiteRequest(M, E, N)]))
    assert "site(s) 0-2" in text
    assert "synchronize_rcu_tasks()" in text
    assert "1 barrier(s)" in text


# ---------------------------------------------------------------- properties


def _paths(variant: Variant, src: SiteState, dst: SiteState) -> list[list[SiteState]]:
    out = []

    def walk(path: list[SiteState]) -> None:
        if path[-1] is dst:
            out.append(path)
            return
        for nxt in steps_from(variant, path[-1]):
            if nxt not in path:
                walk([*path, nxt])

    walk([src])
    return out


def _min_barriers(variant: Variant, src: SiteState, dst: SiteState) -> int:
    """Fewest barriers of any single-site plan the model checker accepts (the planner is not used)."""
    best = None
    for path in _paths(variant, src, dst):
        writes = []
        for a, b in itertools.pairwise(path):
            (slot,) = [s for s, x, y in zip((Slot.A, Slot.B), STATE_SLOTS[a], STATE_SLOTS[b], strict=True) if x != y]
            writes.append(Write(0, slot, STATE_SLOTS[a][slot is Slot.B], STATE_SLOTS[b][slot is Slot.B]))
        for seps in itertools.product((Barrier.ORDER, Barrier.RCU_TASKS), repeat=len(writes) - 1):
            for settle in (None, Barrier.RCU_TASKS):
                cost = sum(s is Barrier.RCU_TASKS for s in seps) + (settle is not None)
                if best is not None and cost >= best:
                    continue
                p = Plan(
                    sites=(SiteRequest(variant, src, dst),),
                    stages=tuple((w,) for w in writes),
                    barriers=seps,
                    settle=settle,
                    route=Route.MFLR_FIRST,
                    cmodx=Cmodx.V3_1,
                    runtime=True,
                )
                if check(p, tasks=2, entries=1).safe:
                    best = cost
    assert best is not None, (variant, src, dst)
    return best


@pytest.fixture(scope="module")
def min_barriers() -> dict[tuple[Variant, SiteState, SiteState], int]:
    return {
        (v, a, b): _min_barriers(v, a, b)
        for v, states in VARIANT_STATES.items()
        for a in states
        for b in states
        if a is not b
    }


_REQUESTS = st.sampled_from(Variant).flatmap(
    lambda v: st.builds(
        SiteRequest,
        st.just(v),
        st.sampled_from(sorted(VARIANT_STATES[v], key=lambda s: s.value)),
        st.sampled_from(sorted(VARIANT_STATES[v], key=lambda s: s.value)),
    )
)


@settings(max_examples=300, deadline=None)
@given(requests=st.lists(_REQUESTS, min_size=1, max_size=12), runtime=st.booleans())
def test_plans_reach_their_targets_never_break_and_use_the_fewest_barriers(min_barriers, requests, runtime):
    p = plan(requests, runtime=runtime)
    assert _walk(p) == [r.target for r in requests]
    expected = max((min_barriers.get(tuple(r), 0) for r in requests), default=0) if runtime else 0
    assert p.num_barriers == expected


@settings(max_examples=100, deadline=None)
@given(requests=st.lists(_REQUESTS, min_size=1, max_size=8), route=st.sampled_from(Route))
def test_every_route_either_plans_safely_or_refuses(requests, route):
    try:
        p = plan(requests, route=route)
    except PlanRejected as e:
        assert route is Route.B8 and "route b8" in str(e)
        return
    assert _walk(p) == [r.target for r in requests]
