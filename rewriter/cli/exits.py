"""The exit-code contract: one table, used on every path.

The console script, ``python3 -m rewriter`` and typer's ``CliRunner`` all run the commands through
:class:`Commands`, the app's click group, and every error that leaves a command goes through
:func:`report`. No command catches an error to choose a code; a command that finds something says
so with ``typer.Exit(ExitCode.FINDINGS)``.

What each code means to a user (0 success, 1 findings, 2 bad input, 3 internal error, 128+N a
signal) is the README's "Exit codes" table, the one statement of the contract; :data:`EXIT_CODES`
below is how errors reach the codes, and :class:`ExitCode` names them.
"""

from __future__ import annotations

import contextlib
import enum
import errno
import os
import signal
from collections.abc import Iterator, Sequence
from typing import Any, Final, NamedTuple, NoReturn

import click
import typer
from typer.core import TyperGroup

from rewriter.errors import InternalError, NoRoute, NothingToDo, RewriteError
from rewriter.prose import printable


class ExitCode(enum.IntEnum):
    OK = 0
    FINDINGS = 1
    BAD_INPUT = 2
    INTERNAL = 3


class ErrorKind(NamedTuple):
    error: type[BaseException]
    code: ExitCode
    label: str  # the line reads "mcountrw: <label>: <message>"


EXIT_CODES: Final[tuple[ErrorKind, ...]] = (
    # First match wins: a subclass comes before its base.
    ErrorKind(NoRoute, ExitCode.FINDINGS, "no legal route"),  # in `plan` and `apply` alike
    ErrorKind(NothingToDo, ExitCode.FINDINGS, "nothing to do"),  # no site at all, or a selection matching none
    ErrorKind(RewriteError, ExitCode.BAD_INPUT, "error"),  # the input: a file, a log, an option
    ErrorKind(click.ClickException, ExitCode.BAD_INPUT, "error"),  # the command line: a choice, a missing option
    ErrorKind(InternalError, ExitCode.INTERNAL, "internal error"),  # "this cannot happen"
    ErrorKind(Exception, ExitCode.INTERNAL, "internal error"),  # a bug all the same
)

REPORT_REQUEST: Final = (
    "this is a bug in mcountrw, not a problem with your input: please report it with the command line, "
    "the output of `mcountrw --version`, and the input files or where to get them "
    "(MCOUNTRW_DEBUG=1 shows the traceback)"
)


class Interrupted(BaseException):
    """SIGINT or SIGTERM (the handlers ``run`` installs). Not a KeyboardInterrupt, which click turns
    into a silent exit; a BaseException so that no ``except Exception`` stops it on its way out, and
    the ``with`` blocks of an unfinished write remove its temporary files as it passes."""

    def __init__(self, signum: int, left: str = "no output was left half-written") -> None:
        super().__init__(signum)
        self.signum = signum
        self.name = signal.Signals(signum).name
        self.left = left  # what the run leaves, as its line says it (a command may say more: prenop's trees)


def kind_of(error: Exception) -> ErrorKind:
    """The first row of :data:`EXIT_CODES` that ``error`` is an instance of (the last row takes any)."""
    return next(row for row in EXIT_CODES if isinstance(error, row.error))


def message_of(error: Exception, kind: ErrorKind) -> str:
    if kind.code is ExitCode.INTERNAL:
        what = str(error) if isinstance(error, InternalError) else f"{type(error).__name__}: {error}"
        return f"{what}; {REPORT_REQUEST}"
    if isinstance(error, click.ClickException):
        ctx = getattr(error, "ctx", None)
        hint = f" (see `{ctx.command_path} --help`)" if isinstance(ctx, click.Context) else ""
        return " ".join(error.format_message().split()) + hint  # click lists some choices one per line
    return str(error)


def report(error: Exception | Interrupted) -> int:
    """Print the one line for ``error`` on stderr; return its exit code."""
    if isinstance(error, Interrupted):
        typer.echo(f"mcountrw: interrupted by {error.name}: {printable(error.left)}", err=True)
        return 128 + error.signum
    error = _as_bad_input(error)
    kind = kind_of(error)
    typer.echo(f"mcountrw: {kind.label}: {printable(message_of(error, kind))}", err=True)
    return int(kind.code)


def _as_bad_input(error: Exception) -> Exception:
    """A name longer than the file system holds, met by whichever check looked at it first (in
    Python 3.11 pathlib's ``exists()`` raises for one, where it answers False for a missing file):
    the user's path, or one named after it (``F.mcountrw.jsonl``, ``F.orig``), so bad input."""
    if isinstance(error, OSError) and error.errno == errno.ENAMETOOLONG:
        return RewriteError(f"{error.filename or 'a path'}: {error.strerror}")
    return error


_PASS_THROUGH: Final = (
    click.exceptions.Exit,  # typer.Exit: a command's own code, --help, --version
    click.Abort,
    click.exceptions.NoArgsIsHelpError,  # `mcountrw policy`: click prints the help
    BrokenPipeError,  # `mcountrw scan ... | head`: click exits 1 quietly
)


@contextlib.contextmanager
def exit_codes() -> Iterator[None]:
    """Turn whatever a command raises into its line and exit code (:data:`EXIT_CODES`)."""
    try:
        yield
    except _PASS_THROUGH:
        raise
    except Interrupted as e:
        raise click.exceptions.Exit(report(e)) from None
    except Exception as e:
        if os.environ.get("MCOUNTRW_DEBUG") and kind_of(e).code is ExitCode.INTERNAL:
            raise
        raise click.exceptions.Exit(report(e)) from None


class Commands(TyperGroup):
    """The app's click group: parses (``make_context``) and runs (``invoke``, which also parses the
    subcommand's options) inside :func:`exit_codes`, whichever way the app was called."""

    def make_context(
        self, info_name: str | None, args: list[str], parent: click.Context | None = None, **extra: Any
    ) -> click.Context:
        with exit_codes():
            return super().make_context(info_name, args, parent, **extra)

    def invoke(self, ctx: click.Context) -> Any:
        with exit_codes():
            return super().invoke(ctx)

    def resolve_command(
        self, ctx: click.Context, args: list[str]
    ) -> tuple[str | None, click.Command | None, list[str]]:
        """As click's, which suggests the closest names for a mistyped command: typer adds the
        same suggestion again, and the entry point's group (commands built only as they are used)
        must suggest from :meth:`list_commands`, not from the commands built so far."""
        try:
            return super().resolve_command(ctx, args)
        except click.exceptions.NoSuchCommand as e:
            # A new error, not an edited one (click 8.5 makes the fields Final); click keeps the close
            # matches among the names it is given, as difflib.get_close_matches does.
            message = e.message.split(" Did you mean ", 1)[0]  # typer's copy of click's suggestion
            raise click.exceptions.NoSuchCommand(e.command_name, message, self.list_commands(ctx), e.ctx) from e


def findings_if(found: bool) -> None:
    """End a command that looked for something: exit 1 if it found it."""
    if found:
        raise typer.Exit(ExitCode.FINDINGS)


def bad_input_if(errors: Sequence[str]) -> None:
    """End a command that reported per-file errors (one line each, already printed): exit 2."""
    if errors:
        raise typer.Exit(ExitCode.BAD_INPUT)


def interrupt(signum: int, frame: object) -> NoReturn:
    """SIGINT and SIGTERM unwind the run as an exception; the later ones are spent (ignored) while
    it unwinds: its clean-up removes the temporary files of what it was writing, and a second
    Ctrl-C raised again in it and left them (`nop --in-place` of a vmlinux: ``.v.<random>.mcountrw-tmp``
    beside it). SIGKILL still ends a run at once, leaving them."""
    for each in (signal.SIGINT, signal.SIGTERM):
        signal.signal(each, signal.SIG_IGN)
    raise Interrupted(signum)
