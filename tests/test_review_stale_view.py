"""check-plan's trace under --stale-fetch shows each CPU's stale view: the replaced words it may
still fetch. Before, a row such as ``enters; A: nop (stale fetch)`` stood next to a site reading
``mflr`` with nothing to say which words the CPU could still run, and a ``stale-after-plan``
verdict said "what a CPU fetches is no step of the trace"."""

from __future__ import annotations

import json
from pathlib import Path

from conftest import invoke

from rewriter.check import BUILTINS, Violation, check, render_trace


def _table(text: str) -> tuple[list[str], list[list[str]]]:
    header, _rule, *rows = text.splitlines()[2:]
    return [c.strip() for c in header.split("|")], [[c.strip() for c in r.split("|")] for r in rows]


def test_the_stale_fetch_row_shows_the_word_the_cpu_still_fetches() -> None:
    result = check(BUILTINS["mflr-first-enable"].plan, stale_fetch=True)
    assert result.violation is Violation.STALE_R0_CALL
    header, rows = _table(render_trace(result))
    assert header[-1] == "CPU0 may fetch"
    a, fetch = header.index("A"), header.index("CPU0 may fetch")
    stale_row = next(r for r in rows if "(stale fetch)" in r[header.index("CPU0")])
    # the site holds mflr, and the column says why CPU0 could still run the nop it replaced
    assert stale_row[a] == "mflr"
    assert stale_row[fetch] == "A: nop"
    assert rows[-1][fetch] == "A: nop, B: nop"  # the bl write is stale to it too, until it syncs
    assert [s.fetch[0] for s in result.trace] == [r[fetch] for r in rows]


def test_a_coherent_fetch_check_has_no_such_column() -> None:
    coherent = render_trace(check(BUILTINS["naive-enable"].plan))
    assert "may fetch" not in coherent.splitlines()[2]
    assert all(s.fetch == ("", "") for s in check(BUILTINS["naive-enable"].plan).trace)


def test_stale_after_plan_names_the_column_and_it_holds_the_old_word(tmp_path: Path) -> None:
    """An isync between the stages but none after the last write, which replaced the bl: the plan
    ends with a CPU that may still fetch the old bl in B (the IPI clears the view of A), which a
    later nop written into A would have it run with r0 stale. No CPU acts in that trace, so the
    column comes from the reason. (A plan that ends replacing B's nop by the bl leaves a stale nop
    in B, which is harmless: tests/test_review_h16_plans.py.)"""
    made = invoke("plan", "--from", "enabled", "--to", "guarded", "--format", "json")
    assert made.exit_code == 0, made.output
    plan = json.loads(made.output)
    plan["stages"].reverse()  # through armed: mflr -> b+8 first, then bl -> nop, with an isync between
    plan["barriers"], plan["stale_fetch"] = ["isync+synchronize_rcu_tasks"], True
    plan["route"] = "b8"  # through armed is Rao's order: a file saying mflr-first is refused (64a0efe)
    f = tmp_path / "p.json"
    f.write_text(json.dumps(plan))
    out = invoke("check-plan", str(f))
    assert out.exit_code == 1
    assert 'may still fetch the old word in slot B (the trace\'s "CPU0 may fetch" column)' in out.output
    header, rows = _table(out.output.split(": ", 1)[1])
    fetch = header.index("CPU0 may fetch")
    assert "CPU0" not in header[:fetch]  # no CPU acts: the column is there for the reason's CPU
    assert [r[fetch] for r in rows] == ["A: mflr", "", "", "B: bl", "B: bl"]
