"""The planner: routes, barriers, CMODX policy, offline mode, JSON and text.

The property tests compare the planner's barrier count with an oracle that knows nothing of the
planner: for each single-site request it tries every path through the transition table with every
placement of barriers and asks the model checker which are safe.
"""

from __future__ import annotations

import itertools
import json
import subprocess
import sys

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from rewriter.check import check
from rewriter.errors import PlanFormatError, PlanRejected
from rewriter.generations import LAYOUTS, Variant, steps_from
from rewriter.plan import Barrier, Cmodx, Plan, Route, SiteRequest, Write, plan, render_text
from rewriter.states import Insn, SiteState, Slot

M, STD, PATCH, OOL = Variant.MPROFILE, Variant.MPROFILE_STD, Variant.PATCHABLE, Variant.OOL
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


def _state(variant: Variant, slots: dict[Slot, Insn]) -> SiteState:
    lay = LAYOUTS[variant]
    return lay.state_of(tuple(slots[s] for s in lay.state_slots))


def _walk(p: Plan) -> list[SiteState]:
    """Apply the plan stage by stage (each site has at most one write per stage, checked here),
    compare-and-swapping, and return each site's final state; fail on any broken state on the way."""
    lays = [LAYOUTS[r.variant] for r in p.sites]
    slots = [
        dict(zip(lay.state_slots, lay.words(r.current), strict=True)) for lay, r in zip(lays, p.sites, strict=True)
    ]
    for stage in p.stages:
        assert len({w.site for w in stage}) == len(stage), "two writes to one site in one stage"
        for w in stage:
            if w.slot is Slot.S:
                continue
            assert slots[w.site][w.slot] is w.old, f"CAS would fail: {w}"
            slots[w.site][w.slot] = w.new
            assert _state(p.sites[w.site].variant, slots[w.site]) is not X, f"broken after {w}"
    return [_state(r.variant, s) for r, s in zip(p.sites, slots, strict=True)]


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
    with pytest.raises(PlanRejected, match=r"--cmodx 3\.0.*reboot into a file whose site holds the words it was built"):
        plan([SiteRequest(M, N, E)], cmodx=Cmodx.V3_0)


def test_cmodx_30_still_allows_enabling_a_disabled_site():
    p = plan([SiteRequest(M, D, E)], cmodx=Cmodx.V3_0)
    assert _writes(p) == [[(Slot.B, Insn.NOP, Insn.CALL)]]


def test_cmodx_30_allows_guarding_with_b8_which_is_a_branch():
    p = plan([SiteRequest(M, N, ARMED)], cmodx=Cmodx.V3_0)
    assert _walk(p) == [ARMED]


def test_cmodx_30_names_the_route_that_does_without_mflr():
    """mflr-first under 3.0 said "every route writes mflr ... rewrite the file offline, or plan for
    --cmodx 3.1" where route b8 arms and disarms the site without writing mflr at run time."""
    for current, target in ((N, ARMED), (ARMED, N)):
        with pytest.raises(PlanRejected, match=r"route mflr-first writes mflr .*--cmodx 3\.0\); use --route b8$"):
            plan([SiteRequest(M, current, target)], route=Route.MFLR_FIRST, cmodx=Cmodx.V3_0)
        assert _walk(plan([SiteRequest(M, current, target)], route=Route.B8, cmodx=Cmodx.V3_0))[-1] is target


def test_b8_on_a_gcc5_site_under_cmodx_30_says_both_what_b8_lacks_and_what_mflr_first_needs():
    """It said "no sequence of legal single-word writes leads there"; one does (mflr-first, under
    ISA 3.1 or offline)."""
    with pytest.raises(PlanRejected, match=r"lands on the bl.*use --route mflr-first, which writes mflr: .*3\.1$"):
        plan([SiteRequest(STD, N, E)], route=Route.B8, cmodx=Cmodx.V3_0)
    assert _walk(plan([SiteRequest(STD, N, E)], route=Route.MFLR_FIRST))[-1] is E


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


@pytest.mark.parametrize("route", list(Route), ids=lambda r: r.value)
def test_patchable_sites_plan_like_mprofile_on_both_routes(route):
    """A at ip-4, B at ip in both layouts: the same writes, barriers and settles."""
    for current, target in itertools.product(LAYOUTS[PATCH].states, repeat=2):
        for runtime in (True, False):
            if not runtime and LAYOUTS[PATCH].kernel_only(target):  # a call: the running kernel's to write
                with pytest.raises(PlanRejected, match="no offline route"):
                    plan([SiteRequest(PATCH, current, target)], route=route, runtime=runtime)
                continue
            mine = plan([SiteRequest(PATCH, current, target)], route=route, runtime=runtime)
            theirs = plan([SiteRequest(M, current, target)], route=route, runtime=runtime)
            assert (mine.stages, mine.barriers, mine.settle) == (theirs.stages, theirs.barriers, theirs.settle)
    assert _walk(plan([SiteRequest(PATCH, N, G)])) == [G]


def test_patchable_enable_from_nopped_is_refused_under_cmodx_30_like_mprofile():
    with pytest.raises(PlanRejected, match=r"--cmodx 3\.0"):
        plan([SiteRequest(PATCH, N, E)], cmodx=Cmodx.V3_0)
    assert _writes(plan([SiteRequest(PATCH, D, E)], cmodx=Cmodx.V3_0)) == [[(Slot.B, Insn.NOP, Insn.CALL)]]


OOL_MODES = {
    "runtime-3.1": dict(cmodx=Cmodx.V3_1),
    "runtime-3.0": dict(cmodx=Cmodx.V3_0),
    "runtime-stale": dict(stale_fetch=True),
    "offline": dict(runtime=False),
}


@pytest.mark.parametrize("mode", sorted(OOL_MODES))
@pytest.mark.parametrize("route", [None, *Route], ids=lambda r: getattr(r, "value", "default"))
def test_ool_enable_and_disable_are_one_write_with_no_barrier_and_no_settle(route, mode):
    for current, target, old, new in ((D, E, Insn.NOP, Insn.STUB), (E, D, Insn.STUB, Insn.NOP)):
        if mode == "offline" and target is E:  # only the running kernel writes b stub
            with pytest.raises(PlanRejected, match="no offline route"):
                plan([SiteRequest(OOL, current, target)], route=route, **OOL_MODES[mode])
            continue
        p = plan([SiteRequest(OOL, current, target)], route=route, **OOL_MODES[mode])
        assert _writes(p) == [[(Slot.B, old, new)]]
        assert p.barriers == () and p.settle is None and p.num_barriers == 0
        assert check(p, tasks=3).safe


@pytest.mark.parametrize("state", [N, G, ARMED, X])
def test_ool_sites_have_no_nopped_guarded_armed_or_broken_state(state):
    with pytest.raises(PlanRejected, match="not a state of an ool site"):
        plan([SiteRequest(OOL, state, E)], runtime=False)
    with pytest.raises(PlanRejected, match="not a state of an ool site"):
        plan([SiteRequest(OOL, D, state)], runtime=False)


def test_ool_disable_rides_along_a_whole_kernel_mprofile_enable():
    p = plan([SiteRequest(M, N, E), SiteRequest(OOL, E, D), SiteRequest(PATCH, D, E)])
    assert p.num_barriers == 1 and _walk(p) == [E, D, E]


def test_offline_enable_still_orders_the_writes_so_the_file_is_never_broken():
    p = plan([SiteRequest(M, N, E)], runtime=False)
    assert p.barriers == (Barrier.ORDER,)
    assert _writes(p) == [[(Slot.A, Insn.NOP, Insn.MFLR)], [(Slot.B, Insn.NOP, Insn.CALL)]]


def test_stale_fetch_plans_isync_before_each_barrier_and_settle():
    p = plan([SiteRequest(M, E, N)], stale_fetch=True)
    assert p.barriers == (Barrier.ISYNC_RCU_TASKS,)
    assert p.settle is None  # a CPU that still runs the old mflr in A sets r0 (stale_word_harmless)
    assert plan([SiteRequest(M, E, D)], stale_fetch=True).settle is Barrier.ISYNC_RCU_TASKS  # the old bl


# ---------------------------------------------------------------- JSON and text


def test_json_round_trips():
    p = plan([SiteRequest(M, N, E), SiteRequest(STD, E, N), SiteRequest(PATCH, N, D)], stale_fetch=True)
    assert Plan.from_json(p.to_json()) == p


def test_json_of_an_ool_plan_names_the_variant_and_the_stub_branch():
    p = plan([SiteRequest(OOL, D, E)])
    doc = json.loads(p.to_json())
    assert doc["version"] == 1
    assert doc["sites"] == [{"variant": "ool", "current": "disabled", "target": "enabled"}]
    assert doc["stages"] == [[{"site": 0, "slot": "B", "old": "nop", "new": "b stub"}]]
    assert Plan.from_json(p.to_json()) == p


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda d: d["sites"][0].update(current="nopped"), "nopped is not a state of an ool site"),
        (lambda d: d["stages"][0][0].update(slot="A"), "ool sites have no slot A"),
        (lambda d: d["stages"][0][0].update(new="bl"), "not a write to slot B"),
    ],
)
def test_from_json_rejects_what_an_ool_site_cannot_hold(edit, message):
    doc = json.loads(plan([SiteRequest(OOL, D, E)]).to_json())
    edit(doc)
    with pytest.raises(PlanFormatError, match=message):
        Plan.from_json(json.dumps(doc))


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
        # read as 1 by ==, and by check-plan before: a version is an integer
        (lambda d: d.update(version=True), "expected version 1, found True"),
        (lambda d: d.update(version=1.0), "expected version 1, found 1.0"),
        # read as mflr-first: null is for a plan whose sites have no route (ool)
        (lambda d: d.update(route=None), "route: null is for a plan of ool sites only"),
        # `plan --offline --stale-fetch` is refused; the file was checked offline, the flag ignored
        (lambda d: d.update(mode="offline", stale_fetch=True), "an offline plan has none"),
    ],
)
def test_from_json_rejects_bad_input_with_a_clear_message(edit, message):
    doc = _doc()
    edit(doc)
    with pytest.raises(PlanFormatError, match=message):
        Plan.from_json(json.dumps(doc))


def test_from_json_rejects_non_json():
    with pytest.raises(PlanFormatError, match="not JSON"):
        Plan.from_json("{")


def test_a_plan_that_gives_a_key_twice_is_refused():
    """A plan with two "stages", the 2019 race (``bl`` into a ``nop; nop`` site first) and then
    the safe order, was certified SAFE: Python's json keeps the last key, and a reader or another
    tool the first. A plan file is there to be certified: no key may be given twice."""
    safe = plan([SiteRequest(M, N, E)]).to_json()
    race = '[[{"site":0,"slot":"B","old":"nop","new":"bl"}],[{"site":0,"slot":"A","old":"nop","new":"mflr"}]]'
    doubled = safe.replace('"stages":', f'"stages":{race},"stages":', 1)
    assert json.loads(doubled) == json.loads(safe)  # what check-plan read
    with pytest.raises(PlanFormatError, match=r"p\.json: the key 'stages' is given twice"):
        Plan.from_json(doubled, source="p.json")
    inner = safe.replace('"slot":"A"', '"slot":"B","slot":"A"', 1)
    with pytest.raises(PlanFormatError, match="the key 'slot' is given twice"):
        Plan.from_json(inner)


def test_the_text_of_a_plan_is_refused_with_the_format_check_plan_reads():
    with pytest.raises(PlanFormatError, match=r"not JSON \(check-plan reads `plan --format json`\)"):
        Plan.from_json(render_text(plan([SiteRequest(M, N, E)])))


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
    assert "sites 0-2" in text
    assert "synchronize_rcu_tasks()" in text
    assert "in 2 stages, 1 barrier\n" in text and "site 3" in text


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
    lay = LAYOUTS[variant]
    for path in _paths(variant, src, dst):
        writes = []
        for a, b in itertools.pairwise(path):
            (write,) = [
                Write(0, s, x, y) for s, x, y in zip(lay.state_slots, lay.words(a), lay.words(b), strict=True) if x != y
            ]
            writes.append(write)
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
        for v, lay in LAYOUTS.items()
        for a in lay.states
        for b in lay.states
        if a is not b
    }


_REQUESTS = st.sampled_from(Variant).flatmap(
    lambda v: st.builds(
        SiteRequest,
        st.just(v),
        st.sampled_from(sorted(LAYOUTS[v].states, key=lambda s: s.value)),
        st.sampled_from(sorted(LAYOUTS[v].states, key=lambda s: s.value)),
    )
)


@settings(max_examples=300, deadline=None)
@given(requests=st.lists(_REQUESTS, min_size=1, max_size=12), runtime=st.booleans())
def test_plans_reach_their_targets_never_break_and_use_the_fewest_barriers(min_barriers, requests, runtime):
    if not runtime:  # a call on a layout built as nops: only the running kernel writes it (test_check)
        requests = [r for r in requests if not LAYOUTS[r.variant].kernel_only(r.target)]
        assume(requests)
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


# ---------------------------------------------------------------- the command line


def _mcountrw(command: str) -> subprocess.CompletedProcess[str]:
    """Run ``mcountrw COMMAND`` (arguments split on spaces)."""
    args = [sys.executable, "-m", "rewriter", *command.split()]
    return subprocess.run(args, capture_output=True, text=True, check=False)


@pytest.mark.parametrize(
    ("src", "dst", "write"), [("disabled", "enabled", "nop -> b stub"), ("enabled", "disabled", "b stub -> nop")]
)
def test_cli_ool_plan_is_one_stage_and_no_barrier(src, dst, write):
    proc = _mcountrw(f"plan --generation ool --from {src} --to {dst}")
    assert proc.returncode == 0, proc.stderr
    assert "1 write in 1 stage, 0 barriers" in proc.stdout
    assert f"ool {src} -> {dst}: site 0" in proc.stdout
    assert f"B: {write}" in " ".join(proc.stdout.split())
    assert "stage 2" not in proc.stdout and "synchronize_rcu_tasks" not in proc.stdout


def test_cli_ool_plan_from_nopped_is_refused_in_one_line_with_exit_1():
    """plan's convention: a request with no legal route (here: a state ool sites do not have) exits 1."""
    proc = _mcountrw("plan --generation ool --from nopped --to enabled")
    assert proc.returncode == 1 and proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "nopped is not a state of an ool site" in lines[0]


def test_cli_generation_picks_its_default_variant_and_variant_still_works():
    patch = _mcountrw("plan --generation patchable --from nopped --to enabled --route b8 --format json")
    doc = json.loads(patch.stdout)
    assert doc["sites"][0]["variant"] == "patchable" and len(doc["stages"]) == 3
    std = _mcountrw("plan --variant mprofile-std --from nopped --to enabled --format json")
    assert json.loads(std.stdout)["sites"][0]["variant"] == "mprofile-std"
    both = _mcountrw("plan --generation mprofile --variant mprofile-std --from enabled --to disabled")
    assert both.returncode == 0 and "mprofile-std enabled -> disabled" in both.stdout
    default = _mcountrw("plan --from enabled --to disabled")
    assert "mprofile enabled -> disabled" in default.stdout


def test_cli_generation_and_variant_must_agree():
    proc = _mcountrw("plan --generation ool --variant patchable --from disabled --to enabled")
    assert proc.returncode == 2 and "not a variant of --generation ool" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_a_plan_of_one_word_sites_has_no_route_in_json_either() -> None:
    """The text said `route none (one-word sites)` and the JSON `"route": "mflr-first"` for the
    same ool plan; it reads back as the same plan, SAFE."""
    p = plan([SiteRequest(Variant.OOL, SiteState.DISABLED, SiteState.ENABLED)])
    assert json.loads(p.to_json())["route"] is None and "route none (one-word sites)" in render_text(p)
    assert Plan.from_json(p.to_json()) == p
    mixed = plan([SiteRequest(Variant.OOL, SiteState.DISABLED, SiteState.ENABLED),
                  SiteRequest(Variant.MPROFILE, SiteState.NOPPED, SiteState.ENABLED)])  # fmt: skip
    assert json.loads(mixed.to_json())["route"] == mixed.route.value


def test_kernel_only_holds_for_a_broken_two_slot_site_and_not_for_states_a_layout_lacks():
    assert LAYOUTS[PATCH].kernel_only(SiteState.BROKEN)  # nop; bl holds a call
    assert not LAYOUTS[M].kernel_only(SiteState.BROKEN)  # mprofile: a file may hold any of its words
    assert not any(LAYOUTS[OOL].kernel_only(s) for s in (N, G, SiteState.ARMED, SiteState.BROKEN))  # refused elsewhere
