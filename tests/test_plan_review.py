"""plan and check-plan, from a black-box review: each test is one defect it found, and fails without its fix."""

from __future__ import annotations

import itertools
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import assert_one_line, invoke, time_bound

from rewriter import check as checker
from rewriter.check import BUILTINS, Violation, check, check_all, render_trace
from rewriter.errors import ArgumentError, PlanFormatError, PlanRejected
from rewriter.generations import LAYOUTS, Variant
from rewriter.plan import STOCK_KERNEL_NOTE, Barrier, Cmodx, Plan, Route, SiteRequest, Write, plan
from rewriter.states import Insn, SiteState, Slot

DOCS = Path(__file__).resolve().parent.parent / "docs" / "state-machine.md"
M, STD, PATCH, OOL = Variant.MPROFILE, Variant.MPROFILE_STD, Variant.PATCHABLE, Variant.OOL


def _doc(**edits: Any) -> dict[str, Any]:
    """A one-site runtime plan file (mprofile enabled -> disabled), with ``edits`` to its top level."""
    doc: dict[str, Any] = {
        "format": "mcountrw-plan", "version": 1, "route": "mflr-first", "cmodx": "3.1", "mode": "runtime",
        "stale_fetch": False, "sites": [{"variant": "mprofile", "current": "enabled", "target": "disabled"}],
        "stages": [[{"site": 0, "slot": "B", "old": "bl", "new": "nop"}]], "barriers": [], "settle": None,
    }  # fmt: skip
    doc.update(edits)
    return doc


def _mcountrw(*args: str, stdin: str | None = None, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "rewriter", *args],
        input=stdin,
        capture_output=True,
        text=True,
        env={**os.environ, **env},
    )


# ---------------------------------------------------------------- 1: linear in the stages


def _one_write_stages(n: int, barriers: tuple[Barrier, ...] | None = None) -> Plan:
    """The review's reproduction: ``n`` sites, one write each, one stage each, "order" between."""
    return Plan(
        sites=(SiteRequest(M, SiteState.ENABLED, SiteState.DISABLED),) * n,
        stages=tuple((Write(i, Slot.B, Insn.CALL, Insn.NOP),) for i in range(n)),
        barriers=barriers if barriers is not None else (Barrier.ORDER,) * (n - 1),
        settle=None,
        route=Route.MFLR_FIRST,
        cmodx=Cmodx.V3_1,
        runtime=True,
    )


class _Counted(tuple):  # type: ignore[type-arg]
    """Barriers that count how many of them the checker reads (slices and iteration)."""

    read = 0

    def __getitem__(self, index: Any) -> Any:
        got = super().__getitem__(index)
        _Counted.read += len(got) if isinstance(index, slice) else 1
        return got

    def __iter__(self) -> Any:
        _Counted.read += len(self)
        return super().__iter__()


def test_check_plan_reads_each_barrier_a_bounded_number_of_times() -> None:
    """Each site sliced the barriers after its stage for its settle: N(N-1)/2 reads, 159 s at 60,000."""
    n = 3000
    _Counted.read = 0
    result = check_all(_one_write_stages(n, _Counted([Barrier.ORDER] * (n - 1))))
    assert result.safe
    assert _Counted.read <= 4 * n, _Counted.read
    # read once, the barriers still protect: a synchronize_rcu_tasks anywhere between a site's A and
    # B writes is its barrier, and with none there it is the 2019 race
    a, b = Write(0, Slot.A, Insn.NOP, Insn.MFLR), Write(0, Slot.B, Insn.NOP, Insn.CALL)
    other = Write(1, Slot.B, Insn.CALL, Insn.NOP)
    sites = (SiteRequest(M, SiteState.NOPPED, SiteState.ENABLED), SiteRequest(M, SiteState.ENABLED, SiteState.DISABLED))
    for barriers, safe in (((Barrier.ORDER, Barrier.RCU_TASKS), True), ((Barrier.ORDER, Barrier.ORDER), False)):
        p = Plan(sites, ((a,), (other,), (b,)), barriers, None, Route.MFLR_FIRST, Cmodx.V3_1, True)
        assert check_all(p, tasks=2).safe is safe


def test_a_plan_of_60000_one_write_stages_checks_in_seconds() -> None:
    p = _one_write_stages(60_000)
    started = time.monotonic()
    with time_bound(20):
        result = check_all(p)
    assert result.safe and result.sites_checked == 1
    assert time.monotonic() - started < 20


# ---------------------------------------------------------------- 2: a bound on the whole plan


def _distinct_ool_sites(n: int) -> Plan:
    """``n`` ool sites, each given a different number of writes: n distinct checks."""
    stages = []
    for site in range(n):
        for k in range(site + 1):
            old, new = (Insn.NOP, Insn.STUB) if k % 2 == 0 else (Insn.STUB, Insn.NOP)
            stages.append((Write(site, Slot.B, old, new),))
    sites = tuple(SiteRequest(OOL, SiteState.DISABLED, SiteState.ENABLED if k % 2 == 0 else SiteState.DISABLED)
                  for k in range(n))  # fmt: skip
    return Plan(sites, tuple(stages), (Barrier.ORDER,) * (len(stages) - 1), None, Route.MFLR_FIRST, Cmodx.V3_1, True)


def test_a_whole_plan_check_stops_past_its_total_state_bound(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """MAX_STATES bounded one site; 100 distinct ool sites took 10.8 million states and 274 s."""
    p = _distinct_ool_sites(6)
    free = check_all(p, tasks=2, entries=2)
    assert free.safe and free.sites_checked == 6
    monkeypatch.setattr(checker, "MAX_TOTAL_STATES", free.states // 2)
    with pytest.raises(ArgumentError, match=r"the plan's 6 distinct sites take more than [\d,]+ states in all"):
        check_all(p, tasks=2, entries=2)
    path = tmp_path / "many.json"
    path.write_text(p.to_json())
    line = assert_one_line(invoke("check-plan", path), 2, "error", str(path), "6 distinct sites", "fewer --tasks")
    assert "2 tasks x 2 entries" in line


def every_request_plan() -> Plan:
    """One plan holding every request the planner can make with stale fetch (63 distinct sites),
    in a fixed order: the largest check of a plan `plan` or `apply` makes (and the plan that
    bench/every-request.plan.json holds, to time that check)."""
    requests = []
    for variant in Variant:
        lay = LAYOUTS[variant]
        states = [*lay.states, *([SiteState.BROKEN] if len(lay.state_slots) == 2 else [])]
        states.sort(key=lambda s: s.value)  # the table's order follows a set's: per process
        for current, target in itertools.product(states, repeat=2):
            try:
                plan([SiteRequest(variant, current, target)], stale_fetch=True)
            except PlanRejected:
                continue
            requests.append(SiteRequest(variant, current, target))
    return plan(requests, stale_fetch=True)


def test_every_request_the_planner_makes_at_once_checks_within_the_total_bound() -> None:
    """The bound refuses no plan `plan` or `apply` makes: one holding every request the planner
    can make, at the most tasks and entries, with stale fetch (the largest spaces)."""
    p = every_request_plan()
    requests = p.sites
    result = check_all(p, tasks=checker.MAX_TASKS, entries=checker.MAX_ENTRIES)
    assert result.safe and result.sites_checked == len(requests) > 50
    assert result.states < checker.MAX_TOTAL_STATES * 2 // 3, result.states


# ---------------------------------------------------------------- 3: CMODX under ISA 3.0 is patch class


def _std_write(old: Insn, new: Insn, cmodx: str) -> Plan:
    doc = _doc(
        cmodx=cmodx,
        sites=[{"variant": "mprofile-std", "current": "disabled", "target": "disabled"}],
        stages=[[{"site": 0, "slot": "S", "old": old.value, "new": new.value}]],
    )
    return Plan.from_json(json.dumps(doc))


@pytest.mark.parametrize(("old", "new"), [(Insn.STD, Insn.NOP), (Insn.NOP, Insn.STD)])
def test_a_live_std_write_is_a_cmodx_violation_under_isa_3_0(old: Insn, new: Insn) -> None:
    """std is not patch class (I-form branches and the preferred no-op): ISA 3.0 does not let it be
    patched live, as it does not mflr. It was called SAFE."""
    result = check(_std_write(old, new, "3.0"), std_slot=old)
    assert result.violation is Violation.CMODX
    assert "patch-class" in result.reason and "not std" in result.reason
    assert check(_std_write(old, new, "3.1"), std_slot=old).safe  # ISA 3.1 relaxed it


def test_the_planner_and_the_checker_share_one_patch_class_rule() -> None:
    from rewriter.plan import cmodx_3_0_allows

    for variant in Variant:
        for step in LAYOUTS[variant].transitions.values():
            assert cmodx_3_0_allows(step.old, step.new) is not step.mflr_write, step
    assert not cmodx_3_0_allows(Insn.STD, Insn.NOP) and not cmodx_3_0_allows(Insn.NOP, Insn.STD)
    result = check(BUILTINS["mflr-first-enable"].plan, cmodx=Cmodx.V3_0)
    assert result.violation is Violation.CMODX and result.reason.endswith("not mflr")


@pytest.mark.parametrize("variant", list(Variant))
def test_what_plan_makes_under_isa_3_0_is_still_safe_under_the_patch_class_rule(variant: Variant) -> None:
    from rewriter.plan import PATCH_CLASS

    lay = LAYOUTS[variant]
    for current, target in itertools.product(lay.states, repeat=2):
        try:
            p = plan([SiteRequest(variant, current, target)], cmodx=Cmodx.V3_0)
        except PlanRejected:
            continue
        assert all(w.old in PATCH_CLASS and w.new in PATCH_CLASS for stage in p.stages for w in stage)
        assert check(p, tasks=3).safe, render_trace(check(p, tasks=3))


# ---------------------------------------------------------------- 4: an offline trace ends where it broke


def test_an_offline_plan_broken_mid_plan_ends_its_trace_at_the_breaking_write() -> None:
    p = Plan(
        sites=(SiteRequest(M, SiteState.NOPPED, SiteState.ENABLED),),
        stages=((Write(0, Slot.B, Insn.NOP, Insn.CALL),), (Write(0, Slot.A, Insn.NOP, Insn.MFLR),)),
        barriers=(Barrier.ORDER,),
        settle=None,
        route=Route.MFLR_FIRST,
        cmodx=Cmodx.V3_1,
        runtime=False,
    )
    result = check(p)
    assert result.violation is Violation.BROKEN
    assert [(s.actor, s.action, s.state) for s in result.trace] == [
        ("patcher", "B: nop -> bl  <-- VIOLATION", "broken")
    ]
    assert "plan done" not in render_trace(result)
    # a plan that ends in the wrong state still ends its trace with the words it ends in
    wrong = Plan.from_json(json.dumps(_doc(sites=[{"variant": "mprofile", "current": "enabled", "target": "nopped"}])))
    result = check(wrong)
    assert result.violation is Violation.WRONG_FINAL
    assert result.trace[-1].action.startswith("plan done") and result.trace[-1].state == "disabled"


# ---------------------------------------------------------------- 5: plan files are read strictly


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda d: d.update(setle=None), "plan: unknown key 'setle'"),
        (lambda d: d["sites"][0].update(state="x"), "sites[0]: unknown key 'state'"),
        (lambda d: d["stages"][0][0].update(barrier="rcu"), "stages[0][0]: unknown key 'barrier'"),
        (lambda d: d.pop("settle"), "plan: missing 'settle'"),
        (lambda d: d.update(notes="note"), "notes: expected a list"),
    ],
)
def test_a_plan_file_with_an_unknown_or_missing_key_is_refused(edit: Any, message: str, tmp_path: Path) -> None:
    doc = _doc()
    edit(doc)
    with pytest.raises(PlanFormatError, match=re.escape(f"p.json: {message}")):
        Plan.from_json(json.dumps(doc), source="p.json")
    path = tmp_path / "p.json"
    path.write_text(json.dumps(doc))
    assert_one_line(invoke("check-plan", path), 2, "error", f"{path}: {message}")


def test_a_bad_value_is_quoted_short() -> None:
    """A 5 MB "slot" string gave a 5 MB error line."""
    doc = _doc()
    doc["stages"][0][0]["slot"] = "A" * 5_000_000
    with pytest.raises(PlanFormatError) as refused:
        Plan.from_json(json.dumps(doc), source="p.json")
    assert str(refused.value).startswith("p.json: stages[0][0].slot: expected one of 'A', 'S', 'B', found 'AAA")
    assert len(str(refused.value)) < 200


# ---------------------------------------------------------------- 6: --help shows the defaults


@pytest.mark.parametrize(
    ("command", "option", "default"),
    [("check-plan", "--tasks", "2"), ("check-plan", "--entries", "2"), ("plan", "--cmodx", "3.1")],
)
def test_help_shows_the_defaults_rich_took_for_markup(command: str, option: str, default: str) -> None:
    text = _mcountrw(command, "--help", COLUMNS="200").stdout
    line = next(x for x in text.splitlines() if x.lstrip("│ ").startswith(f"{option} "))
    assert f"[default: {default}]" in line, line


# ---------------------------------------------------------------- 7: the routes table


def test_the_routes_table_says_patchable_nopped_to_enabled_has_no_offline_route() -> None:
    row = next(x for x in DOCS.read_text().splitlines() if x.startswith("| `patchable` | one write to B"))
    cmodx_3_0 = row.split(" | ")[3]
    assert "not offline" in cmodx_3_0 and cmodx_3_0 != "the same |", row
    refused = invoke("plan", "--generation", "patchable", "--from", "nopped", "--to", "enabled", "--offline")
    assert_one_line(refused, 1, "no legal route", "no offline route")


# ---------------------------------------------------------------- 8, 9: the note in JSON, and stdin


def test_plan_json_carries_the_note_its_text_prints_and_check_plan_reads_it() -> None:
    nopped = _mcountrw("plan", "--from", "enabled", "--to", "nopped", "--format", "json")
    assert json.loads(nopped.stdout)["notes"] == [STOCK_KERNEL_NOTE]
    assert STOCK_KERNEL_NOTE in _mcountrw("plan", "--from", "enabled", "--to", "nopped").stdout
    disabled = _mcountrw("plan", "--from", "nopped", "--to", "disabled", "--format", "json")
    assert json.loads(disabled.stdout)["notes"] == []
    for made in (nopped, disabled):
        checked = _mcountrw("check-plan", "-", stdin=made.stdout)
        assert checked.returncode == 0 and checked.stdout.startswith("<stdin>: SAFE ("), checked


def test_check_plan_reads_a_pipe_from_plan() -> None:
    shell = f"{sys.executable} -m rewriter plan --from nopped --to enabled --format json -o - "
    shell += f"| {sys.executable} -m rewriter check-plan - --tasks 3"
    proc = subprocess.run(shell, shell=True, capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stdout.startswith("<stdin>: SAFE ("), proc.stderr
    assert proc.stderr == ""


@pytest.mark.parametrize(
    ("stdin", "message"),
    [
        ('{"format": "mcountrw-plan", "version": 1}', "mcountrw: error: <stdin>: plan: missing 'mode'"),
        ("plan: 1 site", "mcountrw: error: <stdin>: not JSON (check-plan reads `plan --format json`)"),
    ],
)
def test_a_bad_plan_on_stdin_is_one_line_naming_stdin(stdin: str, message: str) -> None:
    proc = _mcountrw("check-plan", "-", stdin=stdin)
    assert proc.returncode == 2 and proc.stdout == ""
    assert len(proc.stderr.splitlines()) == 1 and proc.stderr.startswith(message), proc.stderr


# ---------------------------------------------------------------- 10: gcc 5 traces name no guarded or armed


def test_a_gcc5_trace_does_not_name_states_a_gcc5_site_lacks() -> None:
    result = check(BUILTINS["b8-enable-gcc5"].plan)
    names = {s.state for s in result.trace}
    assert names == {"unknown"}, names
    assert not {"guarded", "armed"} & {s.value for s in LAYOUTS[STD].states}
    # and the docs show the trace as check-plan prints it
    text = DOCS.read_text()
    block = text.split("Rao's order on a gcc-5 site, where", 1)[1].split("```\n", 2)[1]
    printed = _mcountrw("check-plan", "--builtin", "b8-enable-gcc5").stdout
    assert block == printed.removeprefix("b8-enable-gcc5: ")


# ---------------------------------------------------------------- 11: --route only where it decides


def test_plan_takes_a_route_only_where_it_decides() -> None:
    """b8 for gcc-5 sites, and any route where both write the same, printed "route b8" of writes no
    route chose; ool refused it already (exit 2)."""
    refused = [
        (("--variant", "mprofile-std", "--from", "disabled", "--to", "enabled", "--route", "b8"),
         ("--route b8: mprofile-std sites have no b8 route", "lands on the bl")),
        (("--from", "enabled", "--to", "disabled", "--route", "b8"),
         ("--route b8: mprofile enabled -> disabled takes the same writes on both routes",)),
        (("--from", "enabled", "--to", "disabled", "--route", "mflr-first"),
         ("--route mflr-first: mprofile enabled -> disabled takes the same writes",)),
        (("--generation", "patchable", "--from", "enabled", "--to", "nopped", "--offline", "--route", "b8"),
         ("patchable enabled -> nopped takes the same writes on both routes",)),
    ]  # fmt: skip
    for args, words in refused:
        assert_one_line(invoke("plan", *args), 2, "error", *words)
    for route, writes in (("b8", "3 writes"), ("mflr-first", "2 writes")):
        made = invoke("plan", "--from", "nopped", "--to", "enabled", "--route", route)
        assert made.exit_code == 0 and made.stdout.startswith(f"plan: 1 site, route {route},"), made.output
        assert writes in made.stdout
    gcc5 = invoke("plan", "--variant", "mprofile-std", "--from", "nopped", "--to", "enabled", "--route", "mflr-first")
    assert gcc5.exit_code == 0 and "route mflr-first" in gcc5.stdout
