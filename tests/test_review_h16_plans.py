"""plan and check-plan, reviewed as a kernel developer would use them (h16): each test is one
defect the review found, and fails without its fix."""

from __future__ import annotations

import itertools
from dataclasses import replace
from pathlib import Path

import pytest
from conftest import invoke

from rewriter.check import Violation, check
from rewriter.errors import PlanRejected
from rewriter.generations import LAYOUTS, Generation, Variant
from rewriter.plan import Barrier, Plan, SiteRequest, plan, render_text
from rewriter.states import SiteState

# ---------------------------------------------------------------- stale fetch: what must settle


@pytest.mark.parametrize("generation", [Generation.MPROFILE, Generation.PATCHABLE])
def test_the_kernels_one_write_enable_is_safe_under_stale_fetch(generation: Generation, tmp_path: Path) -> None:
    """6.1's ftrace_make_call() and 6.12's ftrace_replace_code() enable a site by writing B alone,
    nop -> bl, with no isync IPI after it. A CPU that still fetches the old nop in B runs one call
    untraced, and no later write can make that nop a bl with a stale r0; check-plan called it
    UNSAFE (stale-after-plan), while it found the same for ool's entry nop SAFE."""
    on, off = tmp_path / "enable.json", tmp_path / "disable.json"
    for path, (current, target) in ((on, ("disabled", "enabled")), (off, ("enabled", "disabled"))):
        made = invoke("plan", "--generation", generation.value, "--from", current, "--to", target, "--format", "json")
        assert made.exit_code == 0, made.output
        path.write_text(made.stdout)
    enable = invoke("check-plan", on, "--stale-fetch", "--tasks", "3")
    assert enable.exit_code == 0 and "SAFE" in enable.stdout, enable.output
    disable = invoke("check-plan", off, "--stale-fetch", "--tasks", "3")
    # the old bl is another matter: nop written into A by a later plan would run it with r0 stale
    assert disable.exit_code == 1 and "UNSAFE (stale-after-plan)" in disable.stdout, disable.output
    assert "slot B" in disable.stdout and ", bl:" in disable.stdout
    text = invoke("plan", "--generation", generation.value, "--from", "disabled", "--to", "enabled", "--stale-fetch")
    assert "0 barriers" in text.stdout and "settle" not in text.stdout, text.output


def _stale_plans() -> list[tuple[Variant, SiteState, SiteState, Plan]]:
    out = []
    for variant, lay in LAYOUTS.items():
        for current, target in itertools.permutations(lay.states, 2):
            try:
                out.append((variant, current, target, plan([SiteRequest(variant, current, target)], stale_fetch=True)))
            except PlanRejected:
                continue
    return out


def _then(first: Plan, second: Plan) -> Plan:
    """``first`` without its settle, then ``second`` at once: as the next plan starts, with no
    barrier before its first write."""
    request = SiteRequest(first.sites[0].variant, first.sites[0].current, second.sites[0].target)
    return replace(
        first,
        sites=(request,),
        stages=first.stages + second.stages,
        barriers=(*first.barriers, Barrier.ORDER, *second.barriers),
        settle=second.settle,
    )


def test_a_stale_fetch_plan_settles_exactly_when_the_next_plan_could_race_without_it() -> None:
    """The planner ended every stale-fetch plan of a site with an mflr slot with an isync IPI and
    synchronize_rcu_tasks (an RCU-tasks grace period per enable), and the checker required it.
    Derived here from execution alone: run each plan without its settle, then at once every plan
    the planner makes from where it ends, and see whether a CPU reaches a bl with r0 stale. The
    settle must be there exactly when some such pair races."""
    plans = _stale_plans()
    assert len(plans) > 40
    by_start: dict[tuple[Variant, SiteState], list[Plan]] = {}
    for variant, current, _, p in plans:
        by_start.setdefault((variant, current), []).append(p)
    settled_without_need, races_unsettled = [], []
    for variant, current, target, first in plans:
        races = any(
            check(_then(first, second), stale_fetch=True).violation is Violation.STALE_R0_CALL
            for second in by_start.get((variant, target), [])
        )
        if races and first.settle is None:
            races_unsettled.append((variant.value, current.value, target.value))
        if not races and first.settle is not None:
            settled_without_need.append((variant.value, current.value, target.value))
    assert not races_unsettled, races_unsettled
    assert not settled_without_need, settled_without_need
    # and the derivation is not empty: some plans need it, the kernel's own enable does not
    nopped, disabled, enabled = SiteState.NOPPED, SiteState.DISABLED, SiteState.ENABLED
    assert plan([SiteRequest(Variant.MPROFILE, nopped, disabled)], stale_fetch=True).settle
    assert plan([SiteRequest(Variant.PATCHABLE, disabled, enabled)], stale_fetch=True).settle is None


# ---------------------------------------------------------------- the docs, as they run

DOCS = Path(__file__).resolve().parent.parent / "docs" / "state-machine.md"


def test_the_docs_text_of_a_plan_is_what_plan_prints() -> None:
    """docs/state-machine.md shows "the text of a plan" (three sites enabled from nopped, one
    taken to nopped) without the note the text ends with for a site left nopped at run time."""
    doc = DOCS.read_text()
    block = doc.split("The text of a plan:\n\n```\n", 1)[1].split("```", 1)[0]
    nopped, enabled = SiteState.NOPPED, SiteState.ENABLED
    requests = [SiteRequest(Variant.MPROFILE, nopped, enabled)] * 3 + [SiteRequest(Variant.MPROFILE, enabled, nopped)]
    assert block == render_text(plan(requests))
