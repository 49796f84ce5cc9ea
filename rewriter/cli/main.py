"""The `mcountrw` app, assembled in one place from the command modules, and its entry point.

The command modules define plain functions and know nothing of the app; this module registers
each under its name, so no module imports the one that imports it. The table :data:`COMMANDS` says
where each command lives, and the entry point imports a command's module only when that command
runs or its own ``--help`` is asked for: ``mcountrw --version`` and ``mcountrw --help`` import
neither the command modules nor numpy (a third of a second of start-up on the build machines),
and ``mcountrw undo`` imports only what undo needs. :func:`full_app` registers every command at
once: the same app, for typer's test runner and for what inspects the app (the docs' command
lines are parsed against it)."""

from __future__ import annotations

import functools
import importlib
import inspect
import os
import signal
import sys
from collections.abc import Iterable
from typing import Annotated, Any, Final, NamedTuple

import click
import typer

from rewriter import __version__
from rewriter.cli.exits import Commands, Interrupted, interrupt, report
from rewriter.heap import freeze_after_pauses


class Entry(NamedTuple):
    """Where a command's function lives, and what ``mcountrw --help`` lists for it: the first
    paragraph of its docstring (tests hold the two equal), so that the list needs no import."""

    module: str
    function: str
    summary: str

    @property
    def listed(self) -> str:
        """The summary as one line, as the command list shows it (see :func:`unwrapped`)."""
        return unwrapped(self.summary)


COMMANDS: Final[dict[str, Entry]] = {
    "scan": Entry(
        "rewriter.cli.scan",
        "scan",
        "Find every ftrace call site: its function, state in the file and after boot, and its record.",
    ),
    "audit": Entry(
        "rewriter.cli.audit",
        "audit",
        "Counts, anomalies and the mflr-nop safety of every site, per image and by subsystem (with\n"
        "the sites only an image's patch log knows).",
    ),
    "diff": Entry(
        "rewriter.cli.audit",
        "diff",
        "Functions added, removed, moved between sections or changed in generation, and sites added,\n"
        "removed, moved, or changed in state, variant or record, matched by function name. Sites only\n"
        "an image's patch log knows take part, so a site a rewrite nopped and unrecorded reads as\n"
        "changed, not removed.",
    ),
    "plan": Entry(
        "rewriter.cli.plans",
        "plan",
        "Plan the writes (stages and barriers) that move a site, or a vmlinux's sites (--image), to a state.",
    ),
    "check-plan": Entry(
        "rewriter.cli.plans",
        "check_plan",
        "Model-check a plan: every interleaving of tasks and writes. Exit 0 SAFE, 1 UNSAFE (trace printed).",
    ),
    "apply": Entry(
        "rewriter.cli.rewrite",
        "apply",
        "Move the selected sites to a state with a safe plan; compare-and-swap on every word.",
    ),
    "nop": Entry(
        "rewriter.cli.rewrite",
        "nop",
        "Offline pre-nopping: `apply --to nopped`. 6.1 (mprofile): mflr and bl both become nop;\n"
        "6.12 (patchable) and 7.2 (ool): the sites already are nop as built, so --drop-records drops\n"
        "their records and writes no word.",
    ),
    "undo": Entry(
        "rewriter.cli.rewrite",
        "undo",
        "Restore the exact original bytes (relocations, records and signature included).",
    ),
    "verify": Entry(
        "rewriter.cli.rewrite",
        "verify",
        "Exit 0 iff the byte difference is exactly what the log says; 1 otherwise.",
    ),
    "prenop": Entry(
        "rewriter.cli.prenop",
        "prenop",
        "Apply a keep/nop policy to vmlinux and whole module trees, with one patch log per file.",
    ),
}
"""Every command, in the order ``--help`` lists them."""


class Group(NamedTuple):
    """A group of commands (``mcountrw policy check``)."""

    summary: str  # its help, all of it
    commands: dict[str, Entry]


GROUPS: Final[dict[str, Group]] = {
    "policy": Group(
        "Pre-nop policy files: check what each rule matches.",
        {
            "check": Entry(
                "rewriter.cli.prenop",
                "policy_check",
                "Show what each rule matches (sites, the sites it decides, a few names), and what keeping and\n"
                "nopping mean for the kernel's generation; warn about rules that match nothing or are always\n"
                "overridden (exit 1 if there are any). Sites only an image's patch log knows count too.",
            )
        },
    ),
}
"""Every group, listed after the commands."""


def _version(value: bool) -> None:
    if value:
        typer.echo(f"mcountrw {__version__}")
        raise typer.Exit()


def main(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """mcountrw: scan, plan, check, rewrite and audit ftrace call sites."""


def _app(cls: type[Commands]) -> typer.Typer:
    """The app with no command yet: its options (``--version``), help and click group class."""
    app = typer.Typer(
        name="mcountrw",  # CliRunner's program name too, so its messages read as the command's
        cls=cls,
        no_args_is_help=True,
        pretty_exceptions_enable=False,
        help="See, change and prove the ftrace call sites of PowerPC64 kernels: mprofile (mflr r0; bl _mcount), "
        "patchable (nop; nop) and ool (nop, with a stub out of line).",
    )
    app.callback()(main)
    return app


def _function(entry: Entry) -> Any:
    return getattr(importlib.import_module(entry.module), entry.function)


def unwrapped(text: str) -> str:
    """``text``'s paragraphs, each on one line. Docstrings are wrapped at 100 columns, and rich
    prints a help text's line breaks as they are: at 80 columns each line then ended early and the
    next began mid-sentence. Rich wraps a one-line paragraph to the terminal itself."""
    return "\n\n".join(" ".join(p.split()) for p in inspect.cleandoc(text).split("\n\n"))


def _command(app: typer.Typer, name: str, entry: Entry) -> None:
    function = _function(entry)
    app.command(name, help=unwrapped(inspect.getdoc(function) or ""), short_help=entry.listed)(function)


def _register(app: typer.Typer, names: Iterable[str]) -> typer.Typer:
    """``app`` with the commands and groups ``names`` registered (their modules imported)."""
    for name in names:
        if name in COMMANDS:
            _command(app, name, COMMANDS[name])
            continue
        group = GROUPS[name]
        sub = typer.Typer(no_args_is_help=True, help=group.summary)
        for command, entry in group.commands.items():
            _command(sub, command, entry)
        app.add_typer(sub, name=name)
    return app


@functools.cache  # one app per process, as a module-level app would be; built on first use
def full_app() -> typer.Typer:
    """Every command registered: what typer's ``CliRunner`` runs and what tests inspect."""
    return _register(_app(App), [*COMMANDS, *GROUPS])


class App(Commands):
    """The app's click group: :class:`Commands`, whose commands read paths as mcountrw does
    (:func:`rewriter.cli.common.own_path_types`), set when a command is looked up to run."""

    def resolve_command(
        self, ctx: click.Context, args: list[str]
    ) -> tuple[str | None, click.Command | None, list[str]]:
        name, command, rest = super().resolve_command(ctx, args)
        if command is not None:
            from rewriter.cli.common import own_path_types

            own_path_types(command)
        return name, command, rest


class LazyCommands(App):
    """The entry point's click group: a command is built (its module imported) when it is looked
    up to be run; listed (``--help``, shell completion), it is a stand-in carrying the summary
    from :data:`COMMANDS`, so that the list imports nothing."""

    listing = False

    def list_commands(self, ctx: click.Context) -> list[str]:
        return [*COMMANDS, *GROUPS]

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in self.commands:
            return self.commands[cmd_name]
        if cmd_name not in COMMANDS and cmd_name not in GROUPS:
            return None
        if self.listing:
            entry = COMMANDS.get(cmd_name)
            if entry is None:
                return click.Command(cmd_name, help=GROUPS[cmd_name].summary)
            return click.Command(cmd_name, help=entry.summary, short_help=entry.listed)
        # Built exactly as the full app builds it: a group of its own, with the one command in it.
        command = typer.main.get_group(_register(typer.Typer(), [cmd_name])).commands[cmd_name]
        self.commands[cmd_name] = command
        return command

    def format_help(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        self.listing = True
        try:
            super().format_help(ctx, formatter)
        finally:
            self.listing = False

    def shell_complete(self, ctx: click.Context, incomplete: str) -> list[Any]:
        self.listing = True
        try:
            return super().shell_complete(ctx, incomplete)
        finally:
            self.listing = False


def entry_app() -> typer.Typer:
    """The app the entry point runs: commands built as they are looked up (:class:`LazyCommands`)."""
    return _app(LazyCommands)


def run() -> None:
    """Console-script entry point (``mcountrw``, ``python3 -m rewriter``): exit codes as the table
    in :mod:`rewriter.cli.exits` says, and no traceback ever reaches the user.

    SIGTERM and Ctrl-C unwind like an exception, so the temporary files of an unfinished write are
    removed and no output is left half-written."""
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, interrupt)
    freeze_after_pauses()  # the process ends with the command
    try:
        entry_app()(prog_name="mcountrw")
    except SystemExit:
        # The command is over (click ends every run with SystemExit). From here a late signal
        # finds nothing to protect; left to Python's shutdown, which puts back the default
        # handlers, it would kill a finished run with -SIGTERM instead of its exit code.
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, signal.SIG_IGN)
        raise
    except Interrupted as e:  # a signal while click starts or ends the run, outside Commands' guard
        raise SystemExit(report(e)) from None


def run_process() -> None:
    """The process's entry point (the ``mcountrw`` script, ``python3 -m rewriter``): :func:`run`,
    then the process ends with the command (:func:`end_now`). :func:`run` alone is for callers that
    go on after it (the tests that look at what a run imported)."""
    try:
        run()
    except SystemExit as done:
        end_now(done)
        raise


def end_now(done: SystemExit) -> None:
    """End the process now with ``done``'s exit code, once what it printed is flushed.

    Python's own shutdown first frees every object and module one at a time: 40 to 60 ms of every
    run on the build machines, a tenth of a vmlinux scan, for memory the kernel takes back at once.
    It has nothing else to do here: a command has written, checked and renamed every output before
    it returns, joined its process and thread pools (``with`` blocks), and mcountrw registers no
    atexit hook. A code that is not a number (a message to print), or output that cannot be
    flushed (its reader gone), is left to Python's shutdown as before."""
    code = 0 if done.code is None else done.code
    if not isinstance(code, int):
        return
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except (OSError, ValueError):  # ValueError: a closed stream
        return
    os._exit(code)
