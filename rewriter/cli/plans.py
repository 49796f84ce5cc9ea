"""`mcountrw plan` and `mcountrw check-plan`: the state machine, the planner and the model checker."""

from __future__ import annotations

import enum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, TypeVar

import typer

from rewriter.cli import BAD_INPUT, FINDINGS, app, emit, fail

if TYPE_CHECKING:
    from rewriter.generations import Variant


_E = TypeVar("_E", bound=enum.Enum)


def _enum(kind: type[_E], value: str, option: str) -> _E:
    try:
        return kind(value)
    except ValueError:
        choices = ", ".join(m.value for m in kind)
        fail(f"{option}: {value!r} is not one of {choices}")


@app.command("plan")
def plan_cmd(
    from_: Annotated[
        str,
        typer.Option(
            "--from",
            help="current state: enabled or disabled (traced or not, at run time, in every generation); "
            "mprofile and patchable also nopped, guarded, armed (and broken, offline)",
        ),
    ],
    to: Annotated[str, typer.Option("--to", help="target state")],
    *,
    generation: Annotated[
        str | None, typer.Option(help="mprofile (6.1), patchable (6.12) or ool (7.2); picks its default variant")
    ] = None,
    variant: Annotated[
        str | None, typer.Option(help="mprofile, mprofile-std, patchable or ool (default: mprofile)")
    ] = None,
    route: Annotated[str | None, typer.Option(help="mflr-first or b8 (default: fewer writes)")] = None,
    cmodx: Annotated[str, typer.Option(help="ISA rules for live patching: 3.0 or 3.1")] = "3.1",
    offline: Annotated[bool, typer.Option(help="plan a file rewrite (nothing executes concurrently)")] = False,
    fmt: Annotated[str, typer.Option("--format", help="text or json")] = "text",
    output: Annotated[Path | None, typer.Option("-o", "--output", help="write here instead of stdout")] = None,
) -> None:
    """Plan the writes (stages and barriers) that move a site from one state to another.

    Exit 1 with the reason when no legal route exists: e.g. a runtime enable of a nopped mflr
    under --cmodx 3.0, or a state the generation's sites do not have (--from nopped on ool)."""
    from rewriter.errors import PlanRejected
    from rewriter.plan import Cmodx, Route, SiteRequest, plan, render_text
    from rewriter.states import SiteState

    if fmt not in ("text", "json"):
        fail(f"--format: {fmt!r} is not text or json")
    request = SiteRequest(_variant(generation, variant), _enum(SiteState, from_, "--from"),
                          _enum(SiteState, to, "--to"))  # fmt: skip
    the_route = _enum(Route, route, "--route") if route else None
    try:
        p = plan([request], the_route, _enum(Cmodx, cmodx, "--cmodx"), runtime=not offline)
    except PlanRejected as e:
        typer.echo(f"mcountrw: no legal route: {e}", err=True)
        raise typer.Exit(FINDINGS) from None
    emit(p.to_json() if fmt == "json" else render_text(p) + "\n", output)


def _variant(generation: str | None, variant: str | None) -> Variant:
    """--variant as given, else the default variant of --generation, else mprofile; both must agree."""
    from rewriter.generations import GENERATION_VARIANTS, Generation, Variant, default_variant

    gen = _enum(Generation, generation, "--generation") if generation else None
    if variant is None:
        return default_variant(gen) if gen is not None else Variant.MPROFILE
    var = _enum(Variant, variant, "--variant")
    if gen is not None and var not in GENERATION_VARIANTS[gen]:
        names = ", ".join(v.value for v in GENERATION_VARIANTS[gen])
        fail(f"--variant {var.value} is not a variant of --generation {gen.value} ({names})")
    return var


@app.command("check-plan")
def check_plan(
    plan_file: Annotated[
        Path | None, typer.Argument(help="a plan in JSON (from `mcountrw plan --format json`)")
    ] = None,
    *,
    builtin: Annotated[str | None, typer.Option(help="check a built-in plan instead (see --list)")] = None,
    list_builtins: Annotated[bool, typer.Option("--list", help="list the built-in plans")] = False,
    tasks: Annotated[int, typer.Option(help="concurrent tasks (1-3)")] = 2,
    entries: Annotated[int, typer.Option(help="times each task enters the function (1-4)")] = 2,
    cmodx: Annotated[str | None, typer.Option(help="3.0 or 3.1 (default: what the plan was made for)")] = None,
    stale_fetch: Annotated[
        bool | None, typer.Option("--stale-fetch/--no-stale-fetch", help="a CPU may run a replaced word until isync")
    ] = None,
) -> None:
    """Model-check a plan: every interleaving of tasks and writes. Exit 0 SAFE, 1 UNSAFE (trace printed)."""
    from rewriter.check import BUILTINS, MAX_ENTRIES, MAX_TASKS, check_all, render_trace
    from rewriter.plan import Cmodx, Plan

    if list_builtins:
        for name, b in BUILTINS.items():
            typer.echo(f"{name:<24} {b.variant.value} from {b.start.value}: {b.summary}")
        return
    if (plan_file is None) == (builtin is None):
        fail("give exactly one of PLAN.json or --builtin NAME")
    if not 1 <= tasks <= MAX_TASKS or not 1 <= entries <= MAX_ENTRIES:
        fail(f"--tasks must be 1..{MAX_TASKS} and --entries 1..{MAX_ENTRIES}")
    if builtin is not None:
        if builtin not in BUILTINS:
            fail(f"--builtin: {builtin!r} is not one of {', '.join(BUILTINS)}")
        p = BUILTINS[builtin].plan
        name = builtin
    else:
        assert plan_file is not None
        try:
            p = Plan.from_json(plan_file.read_text())
        except OSError as e:
            fail(f"{plan_file}: {e.strerror}")
        except (ValueError, UnicodeDecodeError) as e:
            fail(f"{plan_file}: {e}")
        name = str(plan_file)
    the_cmodx = _enum(Cmodx, cmodx, "--cmodx") if cmodx else None
    try:
        result = check_all(p, tasks=tasks, entries=entries, stale_fetch=stale_fetch, cmodx=the_cmodx)
    except ValueError as e:
        fail(f"{name}: {e}")
    if result.safe:
        typer.echo(f"{name}: SAFE ({result.states} states explored, {tasks} tasks x {entries} entries)")
        return
    typer.echo(f"{name}: UNSAFE: {result.reason}")
    typer.echo(render_trace(result))
    raise typer.Exit(FINDINGS)


__all__ = ["BAD_INPUT"]
