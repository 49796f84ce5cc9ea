"""plan and check-plan, reviewed again (h17, helper W): each test is one defect the review found,
and fails without its fix."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import assert_one_line, invoke

# ---------------------------------------------------------------- plan files that claim what no plan does


def _made(tmp_path: Path, *args: str) -> dict[str, Any]:
    """The JSON of ``mcountrw plan ARGS --format json``, as a dict to edit."""
    made = invoke("plan", *args, "--format", "json")
    assert made.exit_code == 0, made.output
    doc: dict[str, Any] = json.loads(made.stdout)
    return doc


def _set(key: str, value: object) -> Callable[[dict[str, Any]], None]:
    return lambda doc: doc.update({key: value})


@pytest.mark.parametrize(
    ("args", "edit", "words"),
    [
        # an ool site is one word: b8 (gcc 5's two-slot `b .+8` route) and mflr-first mean nothing there
        (("--generation", "ool", "--from", "disabled", "--to", "enabled"), _set("route", "b8"),
         ('route: "b8"', "ool sites are one word", "route null")),
        (("--generation", "ool", "--from", "enabled", "--to", "disabled"), _set("route", "mflr-first"),
         ('route: "mflr-first"', "ool sites are one word")),
        # gcc 5's b .+8 lands on the bl: `plan --route b8` refuses it, a file claimed it
        (("--variant", "mprofile-std", "--from", "disabled", "--to", "enabled"), _set("route", "b8"),
         ('route: "b8"', "mprofile-std sites have no b8 route", "lands on the bl")),
        # `plan --offline` refuses --cmodx and separates stages by order alone; a file claimed a
        # barrier or ISA 3.0, which the offline check (no task runs) ignores
        (("--generation", "patchable", "--from", "nopped", "--to", "disabled", "--offline"), _set("cmodx", "3.0"),
         ('cmodx: "3.0"', "an offline plan has none")),
        (("--from", "nopped", "--to", "enabled", "--offline"), _set("barriers", ["synchronize_rcu_tasks"]),
         ("barriers[0]: a barrier waits for CPUs", "an offline plan has none")),
        (("--generation", "patchable", "--from", "nopped", "--to", "disabled", "--offline"),
         _set("settle", "synchronize_rcu_tasks"), ("settle: a barrier waits for CPUs", "an offline plan has none")),
        # the route a file names is the one its writes take: Rao's writes called mflr-first, and back
        (("--generation", "patchable", "--from", "nopped", "--to", "enabled", "--route", "b8"),
         _set("route", "mflr-first"), ('route: "mflr-first"', "A: nop -> b+8", "which route mflr-first never does")),
        (("--generation", "patchable", "--from", "nopped", "--to", "enabled", "--route", "mflr-first"),
         _set("route", "b8"), ('route: "b8"', "A: nop -> mflr", "which route b8 never does")),
    ],
    ids=["ool-b8", "ool-mflr-first", "gcc5-b8", "offline-cmodx-3.0", "offline-barrier", "offline-settle",
         "b8-writes-called-mflr-first", "mflr-first-writes-called-b8"],
)  # fmt: skip
def test_check_plan_refuses_a_plan_file_claiming_what_no_plan_does(
    tmp_path: Path, args: tuple[str, ...], edit: Callable[[dict[str, Any]], None], words: tuple[str, ...]
) -> None:
    """An ool plan file saying `"route": "b8"` was certified SAFE, as were the others: the label
    the verdict went with said what the writes never were."""
    doc = _made(tmp_path, *args)
    good = tmp_path / "good.json"
    good.write_text(json.dumps(doc))
    assert invoke("check-plan", good).exit_code == 0  # the plan as made passes
    edit(doc)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(doc))
    assert_one_line(invoke("check-plan", bad), 2, "error", str(bad), *words)


def test_every_plan_plan_makes_reads_back_as_itself() -> None:
    """The refusals above refuse no plan `plan` writes: every request, route and mode it accepts."""
    import itertools

    from rewriter.errors import ArgumentError, PlanRejected
    from rewriter.generations import LAYOUTS
    from rewriter.plan import Cmodx, Plan, Route, SiteRequest, check_route_decides, plan
    from rewriter.states import SiteState

    modes = [(Cmodx.V3_1, True, False), (Cmodx.V3_0, True, False), (Cmodx.V3_1, True, True), (Cmodx.V3_1, False, False)]
    made = 0
    for variant, lay in LAYOUTS.items():
        states = [*lay.states, *([SiteState.BROKEN] if len(lay.state_slots) == 2 else [])]
        for current, target in itertools.product(states, repeat=2):
            for route, (cmodx, runtime, stale) in itertools.product([None, *Route], modes):
                req = SiteRequest(variant, current, target)
                try:
                    check_route_decides(req, route, cmodx, runtime, stale)
                    p = plan([req], route, cmodx, runtime=runtime, stale_fetch=stale)
                except (ArgumentError, PlanRejected):
                    continue
                back = Plan.from_json(p.to_json())
                assert back == p or not p.routed, back  # an ool plan reads back as route none
                made += 1
    assert made > 300


def test_a_mixed_plan_keeps_its_route() -> None:
    """The route of a plan with a two-slot site that has it stays readable (the planner makes
    these: mprofile and ool together, b8)."""
    from rewriter.generations import Variant
    from rewriter.plan import Plan, Route, SiteRequest, plan
    from rewriter.states import SiteState

    mixed = plan(
        [SiteRequest(Variant.OOL, SiteState.DISABLED, SiteState.ENABLED),
         SiteRequest(Variant.MPROFILE, SiteState.NOPPED, SiteState.ENABLED)],
        route=Route.B8,
    )  # fmt: skip
    assert Plan.from_json(mixed.to_json()) == mixed


# ---------------------------------------------------------------- the 6.12 kernel's own writes, built in


@pytest.mark.parametrize(
    ("name", "current", "target", "old", "new"),
    [
        ("patchable-enable", "disabled", "enabled", "nop", "bl"),
        ("patchable-disable", "enabled", "disabled", "bl", "nop"),
    ],
)
@pytest.mark.parametrize("tasks", ["2", "3"])
def test_the_612_kernels_own_enable_and_disable_are_built_in_and_safe(
    name: str, current: str, target: str, old: str, new: str, tasks: str
) -> None:
    """check-plan had the 2019 race and Rao's fix on a 6.12 site, but not what 6.12 itself does
    after boot init wrote mflr into A: B alone, nop -> bl (ftrace_make_call, ftrace_replace_code's
    MAKE_CALL) and bl -> nop (MAKE_NOP), no barrier."""
    from rewriter.check import BUILTINS
    from rewriter.generations import Variant
    from rewriter.plan import Write
    from rewriter.states import Insn, SiteState, Slot

    listed = invoke("check-plan", "--list")
    assert any(line.split()[:3] == [name, "patchable", "from"] for line in listed.stdout.splitlines()), listed.stdout
    p = BUILTINS[name].plan
    assert p.sites[0].variant is Variant.PATCHABLE
    assert (p.sites[0].current, p.sites[0].target) == (SiteState(current), SiteState(target))
    assert p.stages == ((Write(0, Slot.B, Insn(old), Insn(new)),),) and p.barriers == () and p.settle is None
    checked = invoke("check-plan", "--builtin", name, "--tasks", tasks)
    assert checked.exit_code == 0 and checked.stdout.startswith(f"{name}: SAFE ("), checked.output
    assert f"{tasks} tasks x 2 entries" in checked.stdout


# ---------------------------------------------------------------- the largest check, timed in bench/


def test_the_bench_plan_is_the_plan_of_every_request() -> None:
    """bench/run.py times `check-plan` on the largest plan `plan` or `apply` makes (its time is a
    claim in docs/state-machine.md): the file must stay that plan as the planner changes."""
    from test_plan_review import every_request_plan

    bench = Path(__file__).resolve().parent.parent / "bench" / "every-request.plan.json"
    assert bench.read_text() == every_request_plan().to_json()


# ---------------------------------------------------------------- what plan says to do instead


@pytest.mark.parametrize("generation", ["mprofile", "patchable"])
def test_cmodx_3_0_refusal_of_a_nop_says_the_record_must_go(generation: str) -> None:
    """`plan --generation patchable --from disabled --to nopped --cmodx 3.0` said "rewrite the file
    offline": a 6.12 file already holds nop; nop there, and boot init writes mflr r0 into it while
    the record stays (6.1's refuses it): the offline way to nopped is dropping the record."""
    refused = invoke("plan", "--generation", generation, "--from", "disabled", "--to", "nopped", "--cmodx", "3.0")
    assert_one_line(refused, 1, "no legal route", "rewrite the file offline with the site's record dropped",
                    "nop --drop-records", "or plan for --cmodx 3.1")  # fmt: skip


def test_an_empty_plan_is_said_to_be_empty(tmp_path: Path) -> None:
    """`plan ... --format json | check-plan -` where plan found no route (exit 1, nothing on
    stdout) said `<stdin>: not JSON: Expecting value: line 1 column 1 (char 0)`."""
    empty = tmp_path / "empty.json"
    empty.write_text("\n")
    assert_one_line(invoke("check-plan", empty), 2, "error", f"{empty}: empty: no plan in it")
    piped = subprocess.run(
        [sys.executable, "-m", "rewriter", "check-plan", "-"], input="", capture_output=True, text=True, check=False
    )
    assert piped.returncode == 2 and piped.stdout == "", piped.stderr
    assert piped.stderr.splitlines() == [
        "mcountrw: error: <stdin>: empty: no plan in it (check-plan reads `plan --format json`)"
    ]


def test_a_safe_plan_of_many_sites_says_how_many_it_proved(tmp_path: Path) -> None:
    """A 42,000-site plan was `SAFE (450 states explored, 2 tasks x 2 entries, cmodx 3.1)`: nothing
    said that every site had been proven, as 3 distinct checks."""
    from rewriter.generations import Variant
    from rewriter.plan import SiteRequest, plan
    from rewriter.states import SiteState

    p = plan(
        [SiteRequest(Variant.PATCHABLE, SiteState.DISABLED, SiteState.ENABLED)] * 300
        + [SiteRequest(Variant.OOL, SiteState.ENABLED, SiteState.DISABLED)] * 200
    )
    path = tmp_path / "many.json"
    path.write_text(p.to_json())
    checked = invoke("check-plan", path)
    assert checked.exit_code == 0, checked.output
    assert re.fullmatch(rf"{re.escape(str(path))}: SAFE \(\d+ states explored for 500 sites, 2 distinct, "
                        r"2 tasks x 2 entries, cmodx 3\.1\)\n", checked.stdout), checked.stdout  # fmt: skip


def test_the_route_plan_advises_is_one_it_accepts() -> None:
    """`plan --variant mprofile-std --from disabled --to enabled --route b8` said "use --route
    mflr-first", which plan then refused ("takes the same writes on both routes"): every
    advice of another route must name one that is accepted."""
    import itertools

    from rewriter.errors import ArgumentError
    from rewriter.generations import LAYOUTS
    from rewriter.plan import Cmodx, Route, SiteRequest, check_route_decides

    modes = [(Cmodx.V3_1, True, False), (Cmodx.V3_0, True, False), (Cmodx.V3_1, True, True), (Cmodx.V3_1, False, False)]
    advised = 0
    for variant, lay in LAYOUTS.items():
        for (current, target), (cmodx, runtime, stale) in itertools.product(
            itertools.permutations(lay.states, 2), modes
        ):
            req = SiteRequest(variant, current, target)
            for route in Route:
                try:
                    check_route_decides(req, route, cmodx, runtime, stale)
                except ArgumentError as e:
                    if "use --route " not in str(e):
                        continue
                    advised += 1
                    other = Route(str(e).rsplit("use --route ", 1)[1].split()[0].rstrip(";,"))
                    check_route_decides(req, other, cmodx, runtime, stale)  # raises if it is refused too
    assert advised > 0


def test_generation_help_does_not_send_a_debian_12_kernel_to_patchable() -> None:
    """`plan --generation` said `patchable (6.12)`; Debian 12's 6.12 (gcc 12 fails the kernel's
    patchable-entry check) is mprofile, as scan says, and plans for it are mprofile's."""
    import typer

    from rewriter.cli import app

    command = typer.main.get_command(app).commands["plan"]  # type: ignore[attr-defined]
    help_text = next(p.help for p in command.params if p.name == "generation")
    assert "patchable (6.12)" not in help_text and "Debian 12" in help_text and "as scan names it" in help_text


def test_the_docs_verdict_table_is_what_the_checker_says() -> None:
    """docs/state-machine.md's table of built-in verdicts, coherent fetch and `--stale-fetch`, at 3
    tasks x 2 entries: nothing checked its stale-fetch column, nor that it lists every built-in."""
    from rewriter.check import BUILTINS, check

    doc = (Path(__file__).resolve().parent.parent / "docs" / "state-machine.md").read_text()
    table = doc[doc.index("Verdicts (T=3, K=2") :]
    rows = re.findall(r"^\| `([\w-]+)` +\| (SAFE|UNSAFE) +\| (SAFE|UNSAFE) +\|$", table, re.MULTILINE)
    assert sorted(name for name, _, _ in rows) == sorted(BUILTINS)
    for name, coherent, stale in rows:
        for stale_fetch, claimed in ((False, coherent), (True, stale)):
            result = check(BUILTINS[name].plan, tasks=3, entries=2, stale_fetch=stale_fetch)
            assert ("SAFE" if result.safe else "UNSAFE") == claimed, (name, stale_fetch)


def test_dot_slash_dash_is_the_file_named_dash_not_stdin(tmp_path: Path) -> None:
    """docs/state-machine.md: `check-plan -` reads stdin, and `a file named - is ./-`; but the
    argument was a Path, and Path("./-") is Path("-"): `check-plan ./-` read stdin."""
    made = invoke("plan", "--generation", "ool", "--from", "disabled", "--to", "enabled", "--format", "json")
    (tmp_path / "-").write_text(made.stdout)
    run = subprocess.run(
        [sys.executable, "-m", "rewriter", "check-plan", "./-"],
        cwd=tmp_path, input="", capture_output=True, text=True, check=False,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)},
    )  # fmt: skip
    assert run.returncode == 0 and run.stdout.startswith("./-: SAFE ("), run.stdout + run.stderr


def test_a_plan_given_as_a_pipe_says_to_pipe_it_to_dash(tmp_path: Path) -> None:
    """`check-plan <(mcountrw plan ... --format json)` (a shell's process substitution, a pipe)
    said only `/dev/fd/63: not a regular file (a FIFO, socket or device)`."""
    fifo = tmp_path / "plan.fifo"
    os.mkfifo(fifo)
    assert_one_line(invoke("check-plan", fifo), 2, "error", f"{fifo}: not a regular file", "read by `check-plan -`")
