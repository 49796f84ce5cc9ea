"""`mcountrw plan` and `mcountrw check-plan`: the state machine, the planner and the model checker."""

from __future__ import annotations

import enum
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Final

import click
import typer

from rewriter.check import BUILTINS, MAX_ENTRIES, MAX_TASKS, assumptions
from rewriter.cli.common import InputPath, OutputFile, check_report_output, emit, print_warnings
from rewriter.cli.exits import findings_if
from rewriter.errors import ArgumentError, PlanFormatError
from rewriter.generations import Caller, Generation, Variant
from rewriter.plan import Cmodx, Route, notes
from rewriter.prose import agreeing, counted, printable
from rewriter.states import SiteState

if TYPE_CHECKING:
    from rewriter.check import CheckResult
    from rewriter.plan import Plan


DEFAULT_TASKS: Final = 2  # --tasks and --entries default to None, so that an offline plan can refuse them
DEFAULT_ENTRIES: Final = 2


def _default(value: object) -> str:
    """``[default: 2]`` for the help of an option whose default is None (so that a command can tell
    it was not given): escaped, since the help is rich markup, where ``[default: 2]`` is a tag and
    vanishes (click's ``show_default`` text would read ``[default: (2)]``)."""
    return f"\\[default: {value}]"


class PlanFormat(enum.Enum):
    TEXT = "text"
    JSON = "json"


FromState = Annotated[
    SiteState | None,
    typer.Option(
        "--from",
        help="current state: enabled or disabled (traced or not, at run time, in every generation); "
        "mprofile and patchable also nopped, guarded, armed (and broken, offline); or give --image",
    ),
]


def _vmlinux_option(help_text: str) -> Any:
    """``--image VMLINUX``: plan's (the vmlinux to plan for) and check-plan's (the one to hold to)."""
    return typer.Option("--image", click_type=InputPath(dir_okay=False), metavar="VMLINUX", help=help_text)


ImageOption = Annotated[
    Path | None,
    _vmlinux_option(
        "plan for the sites of this vmlinux (--only/--exclude pick them), each from its state after boot: "
        "addresses and exact words"
    ),
]
PlanGeneration = Annotated[
    Generation | None,
    typer.Option(
        help="mprofile (6.1, and a 6.12 gcc 12 built: Debian 12's), patchable (6.6-6.12) or ool (6.13+, 7.2), "
        "as scan names it; picks its default variant"
    ),
]
ImageOnly = Annotated[
    list[str] | None,
    typer.Option(
        "--only",
        help="with --image: function name glob to select (repeatable; ftrace's globs, any of a function's names; "
        "default: every site)",
    ),
]
ImageExclude = Annotated[
    list[str] | None,
    typer.Option("--exclude", help="with --image: function name glob to leave out of what --only selects (repeatable)"),
]
ImageCaller = Annotated[
    Caller | None,
    typer.Option(
        "--caller",
        help="with --image: the tracer entry each enabled bl calls: ftrace_regs_caller is what the kernel writes "
        f"for an ops with FTRACE_OPS_FL_SAVE_REGS (kprobes, livepatch) {_default('ftrace_caller')}",
    ),
]
StaleFetch = Annotated[
    bool,
    typer.Option("--stale-fetch", help="a CPU may run a replaced word until isync: an isync IPI before each barrier"),
]


def plan(
    from_: FromState = None,
    to: Annotated[SiteState | None, typer.Option("--to", help="target state (required)")] = None,
    *,
    image: ImageOption = None,
    only: ImageOnly = None,
    exclude: ImageExclude = None,
    caller: ImageCaller = None,
    generation: PlanGeneration = None,
    variant: Annotated[
        Variant | None, typer.Option(help="the site's variant (default: --generation's, else mprofile)")
    ] = None,
    route: Annotated[
        Route | None, typer.Option(help="two-word sites: default, the route with fewer writes (ool has none)")
    ] = None,
    cmodx: Annotated[
        Cmodx | None, typer.Option(help=f"ISA rules for live patching {_default(Cmodx.V3_1.value)}")
    ] = None,
    offline: Annotated[bool, typer.Option(help="plan a file rewrite (nothing executes concurrently)")] = False,
    stale_fetch: StaleFetch = False,
    fmt: Annotated[PlanFormat, typer.Option("--format", help="the plan's format")] = PlanFormat.TEXT,
    output: OutputFile = None,
) -> None:
    """Plan the writes (stages and barriers) that move a site, or a vmlinux's sites (--image), to a state.

    An abstract site (--from, --generation or --variant), or the sites of a vmlinux that --only and
    --exclude select, each from its state after boot: with their addresses and exact words.

    Exit 1 with the reason when no legal route exists: e.g. a runtime enable of a nopped mflr
    under --cmodx 3.0, or a state the generation's sites do not have (--from nopped on ool)."""
    from rewriter.plan import render_text

    if to is None:
        raise ArgumentError("missing option '--to' (the target state)")
    for option, state in (("--from", from_), ("--to", to)):
        if state is SiteState.UNKNOWN:  # a scan's word for a site it cannot read, never a plan's (--image's too)
            raise ArgumentError(f"{option} unknown: a site whose words are none of its states cannot be planned")
    check_report_output(output, [image] if image is not None else [])
    if image is not None:
        _refuse_with_image((("--from", from_), ("--generation", generation), ("--variant", variant)), offline)
        globs = (tuple(only or ()), tuple(exclude or ()))
        p = _plan_image(image, to, globs, route, cmodx, stale_fetch, caller)
    else:
        if only or exclude:
            option = "--only" if only else "--exclude"
            raise ArgumentError(f"{option} selects the sites of --image VMLINUX; give --image")
        if caller is not None:  # an abstract plan's words are kinds: `bl` calls the tracer, whichever it is
            raise ArgumentError("--caller names the target of the bl words of --image VMLINUX's sites; give --image")
        if from_ is None:
            raise ArgumentError("give --from STATE (an abstract site) or --image VMLINUX (the sites of a kernel)")
        p = _plan_abstract(_variant(generation, variant), from_, to, route, cmodx, offline, stale_fetch)
    emit(p.to_json() if fmt is PlanFormat.JSON else render_text(p), output)


def _plan_abstract(
    variant: Variant,
    from_: SiteState,
    to: SiteState,
    route: Route | None,
    cmodx: Cmodx | None,
    offline: bool,
    stale_fetch: bool,
) -> Plan:
    """The plan for one abstract site (--from, --to and its variant)."""
    from rewriter.plan import SiteRequest, check_route_decides
    from rewriter.plan import plan as make_plan

    request = SiteRequest(variant, from_, to)
    if offline and stale_fetch:
        raise ArgumentError("--stale-fetch is about CPUs running the code: an --offline plan has none")
    if offline and cmodx is not None:  # check-plan refuses it for an offline plan too
        raise ArgumentError("--cmodx is about CPUs running the code: an --offline plan has none")
    check_route_decides(request, route, cmodx or Cmodx.V3_1, runtime=not offline, stale_fetch=stale_fetch)
    # NoRoute (exit 1): no legal route, or (offline) a target only the running kernel writes
    return make_plan([request], route, cmodx or Cmodx.V3_1, runtime=not offline, stale_fetch=stale_fetch)


def _refuse_with_image(given: Sequence[tuple[str, object]], offline: bool) -> None:
    """Options that describe an abstract site, which --image reads from the scan instead; and
    --offline, since --image plans for the running kernel."""
    options = [option for option, value in given if value is not None] + ["--offline"] * offline
    if options:
        raise ArgumentError(
            f"{options[0]}: --image takes each site's variant and state after boot from the scan, and plans for the "
            "running kernel (an offline rewrite of the file is `mcountrw apply`)"
        )


def _plan_image(
    image: Path,
    to: SiteState,
    globs: tuple[tuple[str, ...], tuple[str, ...]],
    route: Route | None,
    cmodx: Cmodx | None,
    stale_fetch: bool,
    caller: Caller | None,
) -> Plan:
    """The plan for the sites of ``image`` that ``globs`` (--only, --exclude) select; what the
    selection takes that a runtime plan does not write, and what the kernel writes besides the
    plan's words, is said on stderr."""
    from rewriter.imageplan import plan_image
    from rewriter.plan import check_route
    from rewriter.rewrite import Selection

    result = plan_image(image, Selection(*globs), to, route, cmodx or Cmodx.V3_1, stale_fetch, caller)  # NoRoute: 1
    check_route([s.variant for s in result.plan.sites], route)
    print_warnings((*result.left_out, *result.unwritten))
    return result.plan


def _variant(generation: Generation | None, variant: Variant | None) -> Variant:
    """--variant as given, else the default variant of --generation, else mprofile; both must agree."""
    from rewriter.generations import GENERATION_VARIANTS, default_variant

    if variant is None:
        return default_variant(generation) if generation is not None else Variant.MPROFILE
    if generation is not None and variant not in GENERATION_VARIANTS[generation]:
        names = ", ".join(v.value for v in GENERATION_VARIANTS[generation])
        raise ArgumentError(f"--variant {variant.value} is not a variant of --generation {generation.value} ({names})")
    return variant


HeldTo = Annotated[
    Path | None,
    _vmlinux_option(
        "a plan --image plan: hold it to this vmlinux, not to the one the plan names (default: that one, "
        "if it is there)"
    ),
]


def check_plan(
    plan_file: Annotated[
        str | None,
        typer.Argument(
            # the text as given: Path("./-") is Path("-"), and `./-` (the file named -) read stdin
            click_type=InputPath(allow_dash=True, path_type=str),
            help="a plan in JSON (from `mcountrw plan --format json`); - reads stdin",
        ),
    ] = None,
    *,
    builtin: Annotated[
        str | None, typer.Option(click_type=click.Choice(list(BUILTINS)), help="check a built-in plan (see --list)")
    ] = None,
    list_builtins: Annotated[bool, typer.Option("--list", help="list the built-in plans")] = False,
    tasks: Annotated[
        int | None, typer.Option(min=1, max=MAX_TASKS, help=f"concurrent tasks {_default(DEFAULT_TASKS)}")
    ] = None,
    entries: Annotated[
        int | None,
        typer.Option(min=1, max=MAX_ENTRIES, help=f"times each task enters the function {_default(DEFAULT_ENTRIES)}"),
    ] = None,
    cmodx: Annotated[Cmodx | None, typer.Option(help="default: what the plan was made for")] = None,
    stale_fetch: Annotated[
        bool | None, typer.Option("--stale-fetch/--no-stale-fetch", help="a CPU may run a replaced word until isync")
    ] = None,
    image: HeldTo = None,
) -> None:
    """Model-check a plan: every interleaving of tasks and writes. Exit 0 SAFE, 1 UNSAFE (trace printed)."""
    from rewriter.check import check_all, render_trace

    if list_builtins:
        checking: list[tuple[str, object]] = [("PLAN.json", plan_file), ("--builtin", builtin), ("--tasks", tasks)]
        checking += [("--entries", entries), ("--cmodx", cmodx), ("--stale-fetch/--no-stale-fetch", stale_fetch)]
        _list_builtins([option for option, value in [*checking, ("--image", image)] if value is not None])
        return
    if (plan_file is None) == (builtin is None):
        raise ArgumentError("give exactly one of PLAN.json or --builtin NAME (--list lists the built-in plans)")
    if builtin is not None:
        name, p = builtin, BUILTINS[builtin].plan
    else:
        assert plan_file is not None  # exactly one of the two, checked above
        name, p = _read_plan(plan_file)
    if not p.runtime:
        _check_offline_options(name, tasks, entries, stale_fetch, cmodx)
    held = _hold_to_image(name, p, image)
    try:
        result = check_all(
            p, tasks=tasks or DEFAULT_TASKS, entries=entries or DEFAULT_ENTRIES, stale_fetch=stale_fetch, cmodx=cmodx
        )
    except ArgumentError as e:  # what about the plan could not be checked: name it
        raise ArgumentError(f"{name}: {e}") from None
    if result.safe:
        _say_safe(name, p, result, held)
    else:
        typer.echo(f"{name}: {render_trace(result)}", nl=False)  # "UNSAFE (kind): why", then the trace
    findings_if(not result.safe)


OFFLINE: Final = "offline: no task runs while the image is edited"


def _say_safe(name: str, p: Plan, result: CheckResult, held: Path | None) -> None:
    """The SAFE line, and the plan's notes under it."""
    # of a plan of many sites, how many were proven: equal ones (request and writes) are one
    # check; numbers written as the states are, without commas
    sites = f" for {len(p.sites)} sites, {result.sites_checked} distinct" if len(p.sites) > 1 else ""
    proven = assumptions(result) if p.runtime else OFFLINE
    typer.echo(f"{name}: SAFE ({result.states} states explored{sites}, {proven}{_placed(p, held)})")
    for note in notes(p):
        typer.echo(note)


def _placed(p: Plan, held: Path | None) -> str:
    """What a SAFE line adds for a plan of an image's sites (``plan --image``): the words at their
    addresses were proven as the abstract writes they are (check-plan re-derived each from its
    site's place before checking), and whether the places were held to the image itself
    (``held``: the file read, None if none was)."""
    if p.image is None:
        return ""
    where = agreeing(len(p.sites), "at its address", "at their addresses")
    image = ", not held to the image (not read)" if held is None else ", held to the image"
    if held is not None and str(held) != p.image:  # --image named it
        image = f", held to {printable(str(held))}"
    # the caller each bl was held to, where it is not the default (an ool plan's words do not show it)
    caller = f" for {p.caller.value}" if p.caller is not Caller.FTRACE_CALLER else ""
    return (
        f"; {counted(len(p.sites), 'site')} of {printable(p.image)} {where}{caller}{image}: each write's words are "
        "its kinds there, checked as its abstract request"
    )


def _hold_to_image(name: str, p: Plan, given: Path | None) -> Path | None:
    """Hold a plan of an image's sites to its image (``--image``, else the file the plan names),
    and return the file it was held to, None if none: a plan checked where its image is not
    (another machine) is checked as its places say, with one note line, since a plan file is
    often checked where it is sent."""
    from rewriter.errors import ImageError, PlanFormatError
    from rewriter.imageplan import hold_to_image

    if p.image is None:
        if given is not None:
            raise ArgumentError(f"--image: {name} is a plan of abstract sites; --image holds a plan --image plan")
        return None
    path = given or Path(p.image)
    if not _there(path):
        typer.echo(
            f"mcountrw: note: {name}: {printable(p.image)} is not here: the plan's places are not held to the image "
            "(--image VMLINUX names where it is)",
            err=True,
        )
        return None
    try:
        hold_to_image(p, path)
    except PlanFormatError as e:
        raise PlanFormatError(f"{name}: {e}") from None
    except (ArgumentError, ImageError) as e:  # the file there is no vmlinux of sites (a module, stripped, no ELF)
        raise ArgumentError(f"{name}: image {e}") from None
    return path


def _there(path: Path) -> bool:
    """Whether a file is at ``path`` (a dangling link is none); one there but unreadable is
    there, and reading it says why (Path.exists() raises for it on some Pythons)."""
    try:
        path.stat()
    except (FileNotFoundError, NotADirectoryError):
        return False
    except OSError:
        return True
    return True


def _list_builtins(ignored: list[str]) -> None:
    """``--list``; the options it would ignore (``ignored``) are refused: say so, do not list."""
    if ignored:
        raise ArgumentError(f"--list lists the built-in plans; give it alone, not with {', '.join(ignored)}")
    for name, b in BUILTINS.items():
        typer.echo(f"{name:<24} {b.variant.value} from {b.start.value}: {b.summary}")


def _check_offline_options(
    name: str, tasks: int | None, entries: int | None, stale_fetch: bool | None, cmodx: Cmodx | None
) -> None:
    """An offline plan is checked through the states it passes, with no task running: options
    about tasks, and about what a running CPU may execute (--cmodx), would be ignored while the
    verdict line seemed to answer them."""
    # --no-stale-fetch agrees with what an offline check does: only --stale-fetch asks for more
    options = (("--tasks", tasks), ("--entries", entries), ("--stale-fetch", stale_fetch or None), ("--cmodx", cmodx))
    given = [option for option, value in options if value is not None]
    if given:
        verb = agreeing(len(given), "does", "do")
        raise ArgumentError(
            f"{name}: an offline plan is checked with no task running: {', '.join(given)} {verb} not apply"
        )


STDIN: Final = "-"  # as `plan -o -` writes to stdout: `plan --format json | check-plan -`


def _read_plan(given: str) -> tuple[str, Plan]:
    """The plan file as its lines name it, and the plan; ``-`` is stdin, named ``<stdin>``, and read
    as strictly as a file (it is certified all the same); ``./-`` is the file named ``-``."""
    from rewriter.plan import Plan
    from rewriter.reading import NOT_REGULAR, read_regular_text

    path = Path(given)
    if given == STDIN:
        name = "<stdin>"
        if sys.stdin is None:  # started with stdin closed
            raise PlanFormatError(f"{name}: closed (no plan to read)")
        try:
            text = sys.stdin.buffer.read().decode("utf-8")
        except OSError as e:
            raise PlanFormatError(f"{name}: {e.strerror}") from None
        except UnicodeDecodeError:
            raise PlanFormatError(f"{name}: not a plan (not UTF-8 text)") from None
        return name, Plan.from_json(text, source=name)
    try:
        text = read_regular_text(path)
    except OSError as e:
        # `check-plan <(mcountrw plan ...)` is a pipe: files are never read from one (reading.py)
        pipe = "; a plan piped in is read by `check-plan -`" if e.strerror == NOT_REGULAR else ""
        raise PlanFormatError(f"{given}: {e.strerror}{pipe}") from None
    except UnicodeDecodeError:
        raise PlanFormatError(f"{given}: not a plan (not UTF-8 text)") from None
    return printable(given), Plan.from_json(text, source=given)  # as given: ./- is not stdin's -
