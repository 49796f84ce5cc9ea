"""What the command modules share: option types, writing the output, the progress bar."""

from __future__ import annotations

import contextlib
import hashlib
import os
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Final, NamedTuple

import click
import typer

from rewriter.errors import ArgumentError, OutputError
from rewriter.generations import Generation
from rewriter.prose import counted, printable
from rewriter.reading import IS_DIRECTORY, NOT_A_DIRECTORY

if TYPE_CHECKING:
    from rewriter.batch import Found


def address(text: str) -> int:
    """``--mcount-addr``: an address as C writes it (``0xc000000000001234``, ``4096``)."""
    try:
        value = int(text, 0)
    except ValueError:
        raise typer.BadParameter(f"{text!r} is not a number (use 0x... for hex)") from None
    if not 0 <= value < 1 << 64:
        raise typer.BadParameter(f"{text!r} is not a 64-bit address (0 to 0xffffffffffffffff)")
    return value


class CallSlot(NamedTuple):
    """An ``--addr``: a call slot as scan shows it, an address (``section`` None: a linked image)
    or an offset in the section named ``section`` (``.text+0x14``: a module's or object's site,
    which has no address as it is not linked; ``rewriter.sites.section_place_text``)."""

    section: str | None
    at: int


def call_slot(text: str) -> CallSlot:
    """``--addr``: an address as :func:`address` reads it, or ``SECTION+OFF`` as scan shows a place.
    The section name is what precedes the last ``+`` (a name may hold one; an offset never does).
    A ``+`` always means a place: ``+0x4`` (which ``int`` reads as 4) lacks its section name, and a
    number before it is a mistyped address (``0x10+4``), not a section."""
    section, plus, offset = text.rpartition("+")
    if not plus or section[:1].isdigit():
        try:
            return CallSlot(None, _not_negative(text, int(text, 0)))
        except ValueError:
            raise typer.BadParameter(f"{text!r} is not a number (use 0x... for hex), nor SECTION+0xOFF") from None
    if not section.strip():
        raise typer.BadParameter(f"{text!r}: no section name before + (SECTION+0xOFF, as scan shows it)")
    if not offset.strip():
        raise typer.BadParameter(f"{text!r}: no offset after {section}+ (SECTION+0xOFF, as scan shows it)")
    try:
        at = int(offset, 0)
    except ValueError:
        raise typer.BadParameter(f"{text!r}: the offset {offset!r} after {section}+ is not a number (0x...)") from None
    if at >= 10 and not offset.strip().lower().startswith(("0x", "0o", "0b")):
        # scan shows offsets in hex: `.text+20` typed from it meant 0x20, and read as 20 it selects
        # another place (or none). Below 10 both read alike; a base prefix says which is meant.
        raise typer.BadParameter(
            f"{text!r}: give the offset in hex, as scan shows it ({section}+{offset.strip()} is {section}+{at:#x}; "
            f"did you mean {section}+0x{offset.strip()}?)"
        )
    return CallSlot(section, _not_negative(text, at))


def _not_negative(text: str, value: int) -> int:
    if value < 0:
        raise typer.BadParameter(f"{text!r} is negative: a call slot is at an address or offset >= 0")
    if value >= 1 << 64:
        raise typer.BadParameter(f"{text!r} is past 64 bits: a call slot is at an address or offset < 2**64")
    return value


GENERATION_HELP: Final = "override the generation detected from the image (stripped images)"

Jobs = Annotated[
    int,
    typer.Option(
        "--jobs",
        "-j",
        min=0,
        show_default=False,
        help="worker processes (default 0: one per core; never more than the cores)",
    ),
]


EMPTY_PATH: Final = "an empty path (an unset variable?); for the current directory, write ."


def output_file(text: str) -> Path:
    """``-o``, ``--report``: a file to write. A trailing slash names a directory, as the shell and
    cp read it, and ``Path`` drops it (``Path("x/")`` is ``x``): ``-o x/`` wrote a file ``x``. An
    existing directory goes on, to be refused as one (:func:`check_report_output`,
    ``rewriter.files.check_output_path``)."""
    if text == "-":  # stdout, in every other tool; never a file called "-" by surprise
        raise OutputError("-: this output is a file, not stdout (for a file named -, write ./-)")
    if not text:
        raise OutputError(f"-o: {EMPTY_PATH}")
    path = Path(text)
    if text.endswith("/") and not path.is_dir():
        problem = NOT_A_DIRECTORY if path.exists() else f"directory {path} does not exist"
        raise OutputError(f"{text}: {problem}")
    return path


def report_file(text: str) -> Path | None:
    """A report's ``-o``: :func:`output_file`, or None (stdout) for ``-``, as other tools read it."""
    return None if text == "-" else output_file(text)


OutputFile = Annotated[
    Path | None,
    typer.Option("-o", "--output", parser=report_file, help="write here instead of stdout (- is stdout)"),
]
McountAddr = Annotated[
    int | None, typer.Option("--mcount-addr", parser=address, help="address of _mcount, for a stripped image")
]
GenerationOption = Annotated[Generation | None, typer.Option("--generation", help=GENERATION_HELP)]
LOG_HELP: Final = (
    "the image's patch log, a source of the sites an earlier rewrite hid (default: IMAGE.mcountrw.jsonl "
    "beside it, when its output is the image)"
)
LogFile = Annotated[Path | None, typer.Option("--log", help=LOG_HELP)]
LOG_DIR_HELP: Final = (
    "the patch logs where `prenop --log-dir DIR` wrote them: each file's log is DIR/<its path below the "
    "directory argument, or its name>.mcountrw.jsonl, instead of beside it"
)


def log_dir_path(text: str) -> Path:
    """``--log-dir``: a directory. An empty one is refused rather than read as ``.``: it is what
    ``--log-dir "$UNSET"`` passes, and a run would then look for (or write) its logs in the wrong
    place and report success."""
    if not text:
        raise ArgumentError(f"--log-dir: {EMPTY_PATH}")
    return Path(text)


ReadLogDir = Annotated[Path | None, typer.Option("--log-dir", parser=log_dir_path, metavar="DIR", help=LOG_DIR_HELP)]


def logs_for(found: Sequence[Found], explicit: Path | None, log_dir: Path | None = None) -> dict[Path, Path]:
    """The patch log of each file that has one: ``--log`` (for one file; refused, exit 2, if its
    output is not that file), else each file's log under ``--log-dir`` or beside it, when its
    output is that file (``rewriter.log.logs_at``). A log that describes no file looking for it is
    ignored, with one warning line; so is a ``--log-dir`` that holds no log of any file."""
    from rewriter.log import default_log_path, log_of, log_path_in, logs_at
    from rewriter.reading import read_regular

    check_log_options(explicit, log_dir)
    if explicit is not None:
        if len(found) != 1:
            raise ArgumentError(f"--log {explicit}: names the log of one image, and {len(found)} were given")
        path = found[0].path
        try:
            sha = hashlib.sha256(read_regular(path)).hexdigest()
        except OSError:
            return {}  # the scan says what is wrong with the file
        log = log_of(path, sha, explicit)[0]  # raises unless it describes the file
        return {} if log is None else {path: log}
    if log_dir is None:
        result = logs_at([(f.path, default_log_path(f.path)) for f in found])
    else:
        result = logs_at([(f.path, log_path_in(log_dir, f.name)) for f in found])
    _print_ignored_logs(result.warnings)
    if log_dir is not None:
        _print_logs_by_own_name(log_dir, [f for f in found if f.path not in result.logs])
    if log_dir is not None and found and not result.present:
        typer.echo(f"mcountrw: warning: {printable(no_log_there(log_dir, found))}", err=True)
    return result.logs


def _print_logs_by_own_name(log_dir: Path, unlogged: Sequence[Found]) -> None:
    """One warning for each file with no log at its name under ``--log-dir`` whose log is there by
    its own name (``rewriter.log.own_name_place``: a tree rewritten in place before b7d1dda, or the
    file named by itself): scan and audit read it as never rewritten, its sites nopped unseen. The
    log is named, not read."""
    from rewriter.log import log_of, log_path_in, own_name_place
    from rewriter.reading import file_at, read_regular

    for f in unlogged:
        place = own_name_place(log_dir, f.name)
        if place is None or not file_at(place):
            continue
        try:
            sha = hashlib.sha256(read_regular(f.path)).hexdigest()
        except OSError:
            continue  # the scan says what is wrong with the file
        if log_of(f.path, sha, at=place)[0] is not None:
            where = log_path_in(log_dir, f.name)
            line = (
                f"{place}: the log of {f.path} by its own name, not read: it is looked for at {where} (move it there)"
            )
            typer.echo(f"mcountrw: warning: {printable(line)}", err=True)


IGNORED_LOGS_SHOWN: Final = 5
"""Ignored logs named one per line; past that, one line counts the rest: a tree whose files were
all undone since (3,102 logs) gave a screen of warnings that said the same thing."""


def _print_ignored_logs(warnings: Sequence[str]) -> None:
    for warning in warnings[:IGNORED_LOGS_SHOWN]:
        typer.echo(f"mcountrw: warning: {printable(warning)}", err=True)
    rest = len(warnings) - IGNORED_LOGS_SHOWN
    if rest > 0:
        logs = counted(rest, "more patch log")
        typer.echo(f"mcountrw: warning: and {logs} ignored", err=True)


def check_log_options(explicit: Path | None, log_dir: Path | None) -> None:
    """``--log`` names one file's log and ``--log-dir`` where every file's log is: one or the other.
    A ``--log-dir`` that is a file is refused (exit 2); one that does not exist is warned about
    once no log is found there (:func:`no_log_there`)."""
    if explicit is not None and log_dir is not None:
        raise ArgumentError(f"--log {explicit} and --log-dir {log_dir}: give one or the other, not both")
    if log_dir is not None and log_dir.exists() and not log_dir.is_dir():
        raise ArgumentError(f"--log-dir {log_dir}: not a directory")


def no_log_there(log_dir: Path, found: Sequence[Found]) -> str:
    """The warning for a ``--log-dir`` that holds no log of any file given: a mistyped directory
    would otherwise read as a run with nothing nopped."""
    from rewriter.log import log_path_in

    if not log_dir.exists():
        return f"--log-dir {log_dir}: no such directory: no patch log read"
    looked = f"{log_path_in(log_dir, found[0].name)}{', ...' if len(found) > 1 else ''}"
    return (
        f"--log-dir {log_dir}: holds no patch log of the {counted(len(found), 'file')} given "
        f"(looked for {looked}): no patch log read"
    )


def workers(jobs: int) -> int:
    """``--jobs``: 0 means every core this process may run on, and so does any larger number: the
    work is all CPU, so a worker beyond the cores only costs memory (``-j 100000`` once forked
    thousands of processes and ran a 24 GB machine out of memory)."""
    from rewriter.batch import default_jobs

    cores = default_jobs()
    return min(jobs, cores) if jobs else cores


def check_mcount_addr(generation: Generation | None, mcount_addr: int | None) -> None:
    """``--mcount-addr`` with an explicit ``--generation`` other than mprofile: refused before any
    file is read (``rewriter.mcount.check_mcount_addr``, which the scan asks again about the
    generation it detects)."""
    from rewriter.mcount import check_mcount_addr as check

    check(generation, mcount_addr)


def check_mcount_addr_used(files: Sequence[Path], mcount_addr: int | None) -> None:
    """``--mcount-addr`` over modules and objects alone, which it cannot apply to: refused once the
    files are found, before any is read (``rewriter.mcount.check_mcount_addr_used``)."""
    from rewriter.mcount import check_mcount_addr_used as check

    check(files, mcount_addr)


def check_report_output(output: Path | None, reads: Iterable[Path] = ()) -> None:
    """A report's ``-o``, refused (exit 2) before any image is read, not by the rename that ends the
    run (``-o .`` failed there after the whole scan, EBUSY): it must be a place a file can be put
    (``rewriter.output.check_replaceable``), and no file the command reads: an input, or a
    patch log (given, or the one beside each image, read or not). The report would replace it,
    exit 0; a log lost is an undo lost. Compared as ``rewriter.output.Places`` compares (by inode,
    so that a second name of the file, a link or ``./``, is caught too); an ``output`` that does
    not exist reads as nothing."""
    from rewriter.log import default_log_path
    from rewriter.output import Place, Places, check_replaceable

    if output is None:
        return
    check_replaceable(output)
    if not output.exists():
        return
    places = Places()
    for path in reads:
        for read, what in ((path, "an input"), (default_log_path(path), "a patch log")):
            places.add_read(Place(read, f"{what} this command reads", read))
    other = places.claim(Place(output, "the report", "report"))
    if other is not None:
        raise ArgumentError(f"-o {output}: is {other.path}, {other.what}: the report would replace it")


def emit(text: str, output: Path | None) -> None:
    """Write ``text`` to ``output`` atomically (a report: not forced to the disk, see
    ``rewriter.output``), or to stdout."""
    if output is None:
        sys.stdout.write(text)
        sys.stdout.flush()
        return
    from rewriter.output import atomic_write

    # surrogateescape: a file name that is not UTF-8 goes out as its own bytes, as on stdout
    atomic_write(output, text.encode(errors="surrogateescape"), durable=False)


def print_errors(errors: Sequence[str]) -> None:
    """One line per file that could not be read (the command goes on with the others)."""
    for line in errors:
        typer.echo(f"mcountrw: error: {printable(line)}", err=True)


def print_warnings(warnings: Sequence[str]) -> None:
    """One line per thing the command left out or doubts, that is not an error."""
    for line in warnings:
        typer.echo(f"mcountrw: warning: {printable(line)}", err=True)


@contextlib.contextmanager
def progress(total: int, what: str) -> Iterator[Callable[[], None] | None]:
    """A rich progress bar on stderr when it is a terminal and there is more than one file; the
    ``tick`` to call per file done, or None (no bar)."""
    if total < 2 or not sys.stderr.isatty():
        yield None
        return
    from rich.console import Console
    from rich.progress import Progress

    bar = Progress(console=Console(stderr=True), transient=True)
    task = bar.add_task(what, total=total)
    with bar:
        yield lambda: bar.advance(task)


class InputPath(click.Path):
    """Every path argument and option typer makes (a file or directory to read, ``--stage-images``
    DIR): click's own checks, less two, plus two of mcountrw's.

    - Not click's ``readable`` check. It ran while the command line was parsed, so one unreadable
      file of ``scan A B C`` ended the whole run in click's words (``Invalid value for 'PATHS...':
      Path 'B' is not readable``), and A and C went unscanned; the reader now says
      ``B: Permission denied`` on B's own line, and the others are done.
    - An empty path is refused: ``Path("")`` is ``.``, so ``scan "$UNSET"`` scanned every ELF file
      below the current directory, exit 0, and ``nop ""`` failed as a bug (``with_name`` on ``.``).
    - A trailing slash on a file is refused, as the shell refuses ``cat F/``: ``Path`` drops the
      slash, and ``nop F/ --in-place`` rewrote F.
    - A directory where one file is read (``dir_okay=False``: apply, nop, undo, verify) is refused
      in the system's words: ``nop .`` failed as a bug (``.`` has no name to put a log beside)."""

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, str):
            if not value:
                self.fail(EMPTY_PATH, param, ctx)
            if value.endswith("/") and os.path.lexists(value.rstrip("/") or "/") and not os.path.isdir(value):
                self.fail(f"{value}: {NOT_A_DIRECTORY}", param, ctx)
            if not self.dir_okay and os.path.isdir(value):  # in the system's words, as a reader says it
                self.fail(f"{value}: {IS_DIRECTORY}", param, ctx)
        return super().convert(value, param, ctx)


def own_path_types(command: click.Command) -> None:
    """Make every click ``Path`` parameter of ``command`` (and of its subcommands) an
    :class:`InputPath`, keeping its other settings: one place for what typer builds from the
    commands' ``Path`` annotations, whichever module declares them."""
    for param in command.params:
        kind = param.type
        if isinstance(kind, click.Path) and not isinstance(kind, InputPath):
            param.type = InputPath(
                exists=kind.exists,
                file_okay=kind.file_okay,
                dir_okay=kind.dir_okay,
                writable=kind.writable,
                readable=False,
                resolve_path=kind.resolve_path,
                allow_dash=kind.allow_dash,
                path_type=kind.type,
                executable=kind.executable,
            )
    if isinstance(command, click.Group):
        for sub in command.commands.values():
            own_path_types(sub)
