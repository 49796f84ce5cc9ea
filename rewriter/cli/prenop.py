"""`mcountrw prenop` (a policy over whole trees, undo, verify) and `mcountrw policy check`."""

from __future__ import annotations

import contextlib
import enum
import json
import os
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Annotated, Any, Final, NamedTuple, NoReturn

import click
import typer

from rewriter.cli.common import (
    GenerationOption,
    Jobs,
    LogFile,
    McountAddr,
    ReadLogDir,
    check_mcount_addr,
    check_mcount_addr_used,
    check_report_output,
    emit,
    log_dir_path,
    logs_for,
    output_file,
    print_errors,
    progress,
    workers,
)
from rewriter.cli.exits import ExitCode, Interrupted, bad_input_if, findings_if
from rewriter.cli.rewrite import CheckR0, say_waiting
from rewriter.errors import ArgumentError, NothingToDo, OutputError
from rewriter.files import zeroed_records
from rewriter.lock import Gone, above, hold
from rewriter.output import Place, Places
from rewriter.prose import WIDTH, agreeing, and_more, counted, printable, wrapped
from rewriter.sign import HASHES

if TYPE_CHECKING:
    from rewriter.generations import Generation
    from rewriter.policy import Policy, Tally
    from rewriter.prenop import Copied, FileReport, Inputs, Settings, Target


class Mode(enum.Enum):
    """What one `prenop` run does. --undo, --verify and --dry-run choose it in :func:`_mode`, and
    :func:`_check_options` is the one place that says which other options go with it."""

    PRENOP = "prenop"
    DRY_RUN = "prenop --dry-run"
    UNDO = "undo"
    UNDO_DRY_RUN = "undo --dry-run"
    VERIFY = "verify"


DRY_RUN_BANNER: Final = " (dry run: nothing written)"

# A dry run writes nothing, so the table does not say a file was nopped, restored or undone: it says
# what the run it previews would do. The JSON report keeps the statuses themselves (the words of that
# run, so that a preview and the run compare file by file) and says so once, with "dry_run": true.
WOULD: Final[Mapping[str, str]] = MappingProxyType(
    {"nopped": "would nop", "restored": "would restore", "undone": "would undo"}
)


class Output(enum.Enum):
    """Whether a mode needs --in-place or -o."""

    REQUIRED = "required"
    OPTIONAL = "optional"  # a dry run may name where it would write
    REFUSED = "refused"  # --verify writes nothing


class _Takes(NamedTuple):
    """What a mode takes and does."""

    policy: bool  # --policy required, signing options allowed; False: all three refused (the logs decide)
    output: Output  # --in-place or -o
    against: bool  # --against allowed
    dry_run: bool  # decide everything, write nothing
    doing: str  # the progress bar's label


MODES: Final[Mapping[Mode, _Takes]] = MappingProxyType(
    {
        Mode.PRENOP: _Takes(policy=True, output=Output.REQUIRED, against=False, dry_run=False, doing="pre-nopping"),
        Mode.DRY_RUN: _Takes(policy=True, output=Output.OPTIONAL, against=False, dry_run=True, doing="pre-nopping"),
        Mode.UNDO: _Takes(policy=False, output=Output.REQUIRED, against=False, dry_run=False, doing="undoing"),
        Mode.UNDO_DRY_RUN: _Takes(policy=False, output=Output.OPTIONAL, against=False, dry_run=True, doing="undoing"),
        Mode.VERIFY: _Takes(policy=False, output=Output.REFUSED, against=True, dry_run=False, doing="verifying"),
    }
)


@dataclass(frozen=True)
class _Args:
    """The options of one `prenop` run, but for the mode flags and --jobs."""

    paths: Sequence[Path]
    policy: Path | None
    in_place: bool
    output: Path | None
    log_dir: Path | None
    strip_signature: bool
    sign_key: Path | None
    sign_cert: Path | None
    hash_name: str
    against: Path | None
    replace_stale_logs: bool
    mcount_addr: int | None = None
    generation: Generation | None = None
    wait: bool = False
    check_r0: bool = False
    hash_given: bool = False  # --hash on the command line, not its default


Paths = Annotated[
    list[Path],
    typer.Argument(help="vmlinux, modules (.ko[.xz|.gz|.zst]), or directories (every module below them)"),
]
PolicyFile = Annotated[Path | None, typer.Option("--policy", help="the policy file (see docs/prenop.md)")]
InPlace = Annotated[bool, typer.Option("--in-place", help="replace each file (atomically, once complete)")]
OutputTree = Annotated[
    str | None,  # as typed: a trailing slash, which a Path drops, names a directory (_check_outputs)
    typer.Option(
        "-o", "--output", metavar="PATH", help="output directory mirroring the inputs (or, for one file, the file)"
    ),
]
LogDir = Annotated[
    Path | None,
    typer.Option(
        "--log-dir",
        parser=log_dir_path,
        metavar="DIR",
        help="patch logs go here, mirroring the tree (default: beside each file)",
    ),
]
StripSignature = Annotated[
    bool, typer.Option("--strip-signature", help="drop the signature of rewritten signed modules")
]
SignKey = Annotated[Path | None, typer.Option("--sign-key", help="re-sign rewritten modules with this key")]
SignCert = Annotated[Path | None, typer.Option("--sign-cert", help="...and this X.509 certificate")]
Hash = Annotated[
    str, typer.Option("--hash", click_type=click.Choice(HASHES), help="with --sign-key: the signature digest")
]
Undo = Annotated[bool, typer.Option("--undo", help="restore every file from its patch log")]
Verify = Annotated[bool, typer.Option("--verify", help="check every file against its patch log; writes nothing")]
Against = Annotated[
    Path | None, typer.Option("--against", help="--verify: the pristine tree (or file) to compare with")
]
DryRun = Annotated[bool, typer.Option("--dry-run", help="decide and plan every file; write nothing")]
ReplaceStaleLogs = Annotated[
    bool, typer.Option("--replace-stale-logs", help="a file that fits neither side of its old log is a new input")
]
# Not rewrite.py's Wait: prenop locks the output tree and the log directory too, not only what it
# rewrites in place (_locked_paths).
Wait = Annotated[
    bool,
    typer.Option(
        "--wait",
        help="wait for another run that holds the lock on a file or tree this run writes (default: exit 2)",
    ),
]
Report = Annotated[
    Path | None, typer.Option("--report", parser=output_file, help="also write a JSON report of every file")
]
Reproducible = Annotated[
    bool,
    typer.Option(
        "--reproducible",
        help="accepted for build scripts: outputs and logs carry no timestamps, so every run is reproducible",
    ),
]


def prenop(
    paths: Paths,
    *,
    policy: PolicyFile = None,
    in_place: InPlace = False,
    output: OutputTree = None,
    log_dir: LogDir = None,
    jobs: Jobs = 0,
    strip_signature: StripSignature = False,
    sign_key: SignKey = None,
    sign_cert: SignCert = None,
    hash_name: Hash = HASHES[0],
    undo: Undo = False,
    verify: Verify = False,
    against: Against = None,
    dry_run: DryRun = False,
    replace_stale_logs: ReplaceStaleLogs = False,
    report: Report = None,
    reproducible: Reproducible = False,
    mcount_addr: McountAddr = None,
    generation: GenerationOption = None,
    wait: Wait = False,
    check_r0: CheckR0 = False,
) -> None:
    """Apply a keep/nop policy to vmlinux and whole module trees, with one patch log per file.

    Sites the policy nops lose their kernel records, so the kernel boots without an ftrace bug and
    never traces them: on mprofile kernels (up to 6.5, or an older compiler's) their
    `mflr r0; bl _mcount` also become `nop; nop`; on patchable and ool kernels (6.6 and later) their
    words already are the compiler's nops and stay so. Idempotent, reproducible, exactly undoable
    (--undo).
    """
    mode = _mode(undo, verify, dry_run)
    out = None if output is None else Path(output)
    args = _Args(paths, policy, in_place, out, log_dir, strip_signature, sign_key, sign_cert, hash_name, against,
                 replace_stale_logs, mcount_addr, generation, wait, check_r0, _given("hash_name"))  # fmt: skip
    _check_options(mode, args)
    _check_outputs(paths, output, report)
    # Refused inputs and outputs exit 2 before _locked makes the output tree (none is left behind); the
    # lock is still taken before any input file or log is read: only names listed, policy and key read.
    inputs = _inputs(mode, args)
    ts = inputs.targets
    settings = _settings(mode, args)
    _check_written(mode, args, inputs, report)
    _check_some_log(mode, ts)
    with _told_if_interrupted(mode, args), _locked(mode, args, wait):
        n = workers(jobs)
        start = time.monotonic()
        reports = _execute(mode, ts, settings, n)
        copied = _copy_others(mode, inputs, reports)
        seconds = time.monotonic() - start
    _finish(mode, args, settings, inputs, reports, copied, report)
    _print_time(seconds, n)
    _exit(mode, reports, copied)


def _finish(
    mode: Mode,
    args: _Args,
    settings: Settings | None,
    inputs: Inputs,
    reports: Sequence[FileReport],
    copied: Copied,
    report: Path | None,
) -> None:
    """What the run did: the table (or a one-file run's one error line, exit 2), the copies, the
    closing lines, and ``--report``."""
    header = _header(mode, args, settings, len(inputs.targets))
    if _one_file_failed(args, reports):
        _print_failure_alone(reports[0], report, header, mode)
    _print_reports(mode, reports, header)
    _print_copies(mode, args, inputs, copied)
    _print_closing(mode, args, settings, reports)
    _write_report(report, reports, header, mode)


def _exit(mode: Mode, reports: Sequence[FileReport], copied: Copied) -> None:
    """Exit 2 for files that failed or copies not made, 1 for nothing to do or findings, else 0."""
    from rewriter.prenop import Status

    bad_input_if([r.message for r in reports if r.status is Status.FAILED] + list(copied.errors))
    _nothing_to_do(mode, reports)
    findings_if(any(_finding(mode, r) for r in reports))


def _copy_others(mode: Mode, inputs: Inputs, reports: Sequence[FileReport]) -> Copied:
    """-o of a tree: the entries that are no module copied as they are (``rewriter.prenop.copy_others``),
    so that OUT is the whole tree; not by a dry run, nor by a run that found nothing to do (it
    writes nothing, :func:`_nothing_to_do_text`), nor by one whose every file failed (OUT would
    hold the tree's other entries and none of its modules; :func:`_locked` then removes the OUT it
    made)."""
    from rewriter.prenop import Copied, copy_others

    if MODES[mode].dry_run or not inputs.copies or _nothing_to_do_text(mode, reports) is not None:
        return Copied(0, 0, ())
    if _all_failed(reports):
        return Copied(0, 0, ())
    return copy_others(inputs.copies)


def _all_failed(reports: Sequence[FileReport]) -> bool:
    """Every file of the run failed: it wrote none."""
    from rewriter.prenop import Status

    return bool(reports) and all(r.status is Status.FAILED for r in reports)


def _print_copies(mode: Mode, args: _Args, inputs: Inputs, copied: Copied) -> None:
    """What -o's copy of the trees holds besides the modules (stdout, under the table), what it
    could not copy (stderr, one line each), and one line for the FIFOs, sockets and devices it
    leaves out; then a line for each vmlinux the trees hold, which the run leaves out."""
    from rewriter.batch import EntryKind

    if args.output is not None and not args.in_place:
        files = sum(1 for c in inputs.copies if c.kind in (EntryKind.FILE, EntryKind.KERNEL))
        links = sum(1 for c in inputs.copies if c.kind is EntryKind.LINK)
        if MODES[mode].dry_run and files + links:
            typer.echo(f"would copy to {printable(str(args.output))}: {_others(files, links)}, as they are")
        elif copied.files + copied.links:
            typer.echo(f"copied to {printable(str(args.output))}: {_others(copied.files, copied.links)}, as they are")
        print_errors(copied.errors)
        if inputs.specials:
            specials = counted(len(inputs.specials), "FIFO, socket or device", "FIFOs, sockets or devices")
            line = f"{specials} not copied to {args.output}; first: {inputs.specials[0]}"
            typer.echo(f"mcountrw: warning: {printable(line)}", err=True)
    for line in _kernel_warnings(mode, inputs):
        typer.echo(f"mcountrw: warning: {printable(line)}", err=True)


def _others(files: int, links: int) -> str:
    """The entries of a tree that are no module, as -o copies them."""
    text = counted(files, "other file")
    return f"{text} and {counted(links, 'symlink')}" if links else text


def _given(param: str) -> bool:
    """Whether the option ``param`` was given (on the command line or from the environment), not
    left at its default: the default of --hash is a value, and the option alone still does nothing."""
    from click.core import ParameterSource

    ctx = click.get_current_context(silent=True)
    source = None if ctx is None else ctx.get_parameter_source(param)
    return source is not None and source not in (ParameterSource.DEFAULT, ParameterSource.DEFAULT_MAP)


def _one_file_failed(args: _Args, reports: Sequence[FileReport]) -> bool:
    """The run named one file, and it failed: its error line says all there is (a table of one
    failed file, an `OUT was not written` line and the rules that decided nothing only repeated
    it, on three lines and six rows)."""
    from rewriter.prenop import Status

    return _one_file(args) and len(reports) == 1 and reports[0].status is Status.FAILED


def _print_failure_alone(failed: FileReport, report: Path | None, header: str, mode: Mode) -> NoReturn:
    """The one error line of a one-file run that failed (:func:`_one_file_failed`), exit 2; a
    ``--report`` asked for is still written."""
    typer.echo(f"mcountrw: error: {printable(failed.message)}", err=True)
    _write_report(report, [failed], header, mode)
    raise typer.Exit(ExitCode.BAD_INPUT)


def _print_time(seconds: float, jobs: int) -> None:
    """How long the run took, on a terminal only: a build's log, or a test, keeps stderr for
    what went wrong (every run said it there, a failed one-file run under its error line)."""
    if sys.stderr.isatty():
        typer.echo(f"done in {seconds:.1f} s with {counted(jobs, 'worker')}", err=True)


def _write_report(report: Path | None, reports: Sequence[FileReport], header: str, mode: Mode) -> None:
    """``--report FILE``: the run as JSON (its header and every file's line)."""
    if report is not None:
        text = json.dumps(_report_json(reports, header, MODES[mode].dry_run), indent=1, sort_keys=True)
        emit(text + "\n", report)


def _finding(mode: Mode, report: FileReport) -> bool:
    """A file that exits 1: a mismatch, a site the policy nops left recorded, or under --verify a
    file that already is its log's input (undone since: not what the log says the tree holds, but
    no broken file either; --undo takes the same file as a rerun)."""
    from rewriter.prenop import Status

    undone = mode is Mode.VERIFY and report.status is Status.ORIGINAL
    return report.status is Status.MISMATCH or bool(report.left_recorded) or undone


# A tree removed under a waiting run this many times in a row is a bug, not a race.
_REMAKES: Final = 10


@contextlib.contextmanager
def _locked(mode: Mode, args: _Args, wait: bool) -> Iterator[None]:
    """Make the output tree (:func:`_output_tree`) and hold the locks of the run
    (:func:`_locked_paths`) for the ``with`` block; then remove the directories made that are
    still empty (:func:`_remove_empty`): a command that wrote nothing leaves nothing behind,
    however it ended (nothing to do, every file failed, refused before its first write,
    interrupted). It left an empty OUT, "by design", when every file failed. A run that does not
    get the locks (another run holds one and there is no ``--wait``, or it is interrupted while it
    waits) removes them too, so that a run refused for a lock leaves no directory behind either. The
    tree is made before the locks are taken, not after: every path is then locked in the one
    order of ``rewriter.lock``, and two runs that would both create the tree meet at its lock.
    A run that waited on a tree another run made, and then removed when it was refused
    (:func:`_remove_empty`), makes the tree again and locks that one."""
    tree = _output_tree(mode, args)
    with contextlib.ExitStack() as stack:
        for _ in range(_REMAKES):
            made = _make_tree(tree)
            try:
                locked = _locked_paths(mode, args)
                stack.enter_context(hold(locked, wait, say_waiting, above(locked)))
                break
            except Gone as e:
                if tree is None or e.path != tree:
                    raise
            except BaseException:
                _remove_empty(made)
                raise
        else:
            raise ArgumentError(f"{tree}: removed {_REMAKES} times while this run waited to lock it")
        try:
            yield
        finally:
            _remove_empty(made)


@contextlib.contextmanager
def _told_if_interrupted(mode: Mode, args: _Args) -> Iterator[None]:
    """An interrupted run over several files says what it leaves (:func:`_left_by_interrupt`) in its
    interrupt line. It said "no output was left half-written", true of each file (it is as it was,
    or new and whole with its log), not of the tree: an ``-o OUT`` cut short was an OUT lacking
    files, with nothing to tell it from a finished one."""
    try:
        yield
    except Interrupted as e:
        left = _left_by_interrupt(mode, args)
        if left is None:
            raise
        raise Interrupted(e.signum, left) from None


def _left_by_interrupt(mode: Mode, args: _Args) -> str | None:
    """What an interrupted run that writes leaves, None where the usual line is true of it: a run
    that writes nothing, or one file (written whole, or not at all), or an OUT the run made and
    removed (still empty). Left, not removed: each file in it is its old self or new with its log,
    and a rerun of the same command takes those as done (``unchanged``) and writes the rest."""
    takes = MODES[mode]
    if takes.dry_run or takes.output is Output.REFUSED or _one_file(args):
        return None
    again = "run the same command again to finish it (what is written is kept)"
    if args.in_place:
        trees = ", ".join(str(p) for p in args.paths)
        if mode is Mode.UNDO:  # "as it was or rewritten whole with its log" said of files being put back
            return f"{trees} may be half undone: each file is still rewritten, with its log, or its original; {again}"
        return f"{trees} may be half done: each file is as it was or rewritten whole with its log; {again}"
    tree = _output_tree(mode, args)
    if tree is None or not tree.is_dir():
        return None
    return f"{tree} is incomplete: some files of the tree are not written or copied there yet; {again}"


def _output_tree(mode: Mode, args: _Args) -> Path | None:
    """The output directory of a run that writes one (``-o`` for a tree or for several files)."""
    takes = MODES[mode]
    if takes.dry_run or takes.output is Output.REFUSED:
        return None
    return _tree_named(args)


def _tree_named(args: _Args) -> Path | None:
    """``-o`` when it names a directory: for a tree or several files (made if missing), or one that
    exists for the one file named to go in."""
    if args.output is None:
        return None
    if not _one_file(args) or args.output.is_dir():
        return args.output
    return None


def _one_file(args: _Args) -> bool:
    """The run names one file, no directory (:func:`_names_one_file`)."""
    return _names_one_file(args.paths)


def _names_one_file(paths: Sequence[Path]) -> bool:
    """``paths`` name one file, no directory: ``-o`` names its output file (or a directory to put it
    in). A file named twice is one file, read once (``rewriter.prenop.gather``): ``prenop F F -o
    OUT`` writes the file OUT, and was refused as if OUT were a tree."""
    return len({os.path.realpath(p) for p in paths}) == 1 and not paths[0].is_dir()


def _make_tree(tree: Path | None) -> list[Path]:
    """Make ``tree`` and its missing parents; the directories this made, outermost first."""
    if tree is None:
        return []
    missing = [d for d in (tree, *tree.parents) if not d.exists()][::-1]
    try:
        tree.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        _remove_empty(missing)
        raise ArgumentError(f"{tree}: {e.strerror}") from None
    return missing


def _remove_empty(made: Sequence[Path]) -> None:
    """Remove the directories ``made`` (outermost first) that are still empty, innermost first.
    Only empty ones: another run that found the tree just made and took it over (it holds its
    lock) may have written into it. A run that waited (``--wait``) on the lock of a tree removed
    here finds, once it has the lock, that the path names nothing (``rewriter.lock``'s check of
    the locked inode): it makes the tree again and locks the new one (:func:`_locked`)."""
    for d in reversed(made):
        try:
            d.rmdir()
        except OSError:
            return  # not empty, or gone: its parents are not ours to judge either


def _locked_paths(mode: Mode, args: _Args) -> list[Path]:
    """What a run that writes holds the lock on (``rewriter.lock``): the files and trees it
    rewrites in place, the output tree (made by :func:`_locked` before, so that two runs that
    would both create it still meet at one lock) and the log directory, if it exists (one that
    does not is made only when a log is written; the locks on the tree cover the run meanwhile).
    Runs that write nothing lock nothing."""
    takes = MODES[mode]
    if takes.dry_run or takes.output is Output.REFUSED:
        return []
    out = list(args.paths) if args.in_place else []
    tree = _output_tree(mode, args)
    if tree is not None:
        out.append(tree)
    if args.log_dir is not None and args.log_dir.is_dir():
        out.append(args.log_dir)
    return out


def _check_some_log(mode: Mode, ts: Sequence[Target]) -> None:
    """--undo and --verify go by the logs: when not one file has its log where the run looks, stop
    before anything is read or written. Undoing to -o would otherwise copy each file as if it were
    its own original (what a file with no log is taken to be), under a wrong --log-dir too."""
    if not MODES[mode].policy and ts and not any(t.log.is_file() for t in ts):
        from rewriter.prenop import log_by_name

        # a file's log named by its own name under the same --log-dir: the line names it
        named = next((f"{t.source}: {line}" for t in ts if (line := log_by_name(t)) is not None), None)
        raise NothingToDo(_no_log_text(mode, len(ts), ts[0].rel, named))


def _no_log_text(mode: Mode, files: int, first: str, named: str | None = None) -> str:
    verb = "undo" if mode in (Mode.UNDO, Mode.UNDO_DRY_RUN) else "verify"
    which = agreeing(files, f"for {first}", f"for any of the {files} files (first: {first})")
    if named is not None:
        return f"no patch log found {which} where the run looks: nothing to {verb}; {named}"
    return (
        f"no patch log found {which} where the run looks: nothing to {verb} (a wrong --log-dir, a tree named "
        "otherwise than to the run that wrote the logs, which names them by the path below it, or never rewritten?)"
    )


def _nothing_to_do(mode: Mode, reports: Sequence[FileReport]) -> None:
    """Say that the run did nothing (:func:`_nothing_to_do_text`), exit 1."""
    text = _nothing_to_do_text(mode, reports)
    if text is not None:
        raise NothingToDo(text)


def _nothing_to_do_text(mode: Mode, reports: Sequence[FileReport]) -> str | None:
    """The line of a run that did nothing, None if it did something or a file failed (exit 2): a
    policy run in which no file has any ftrace site at all (``rewriter.prenop.no_site_anywhere``:
    it writes nothing, -o included), and an --undo or --verify that found no log for any file."""
    from rewriter.prenop import Status, no_site_anywhere

    if MODES[mode].policy:
        if not no_site_anywhere(reports):
            return None
        return f"no ftrace call site in {_any_of(len(reports))}; {reports[0].rel}: {reports[0].message}"
    if reports and all(r.status is Status.NO_LOG for r in reports):
        # --undo and --verify go by the logs: with none found there was nothing to check or give back
        # (a file never rewritten has no log, but a whole run of them is a wrong --log-dir or path)
        return _no_log_text(mode, len(reports), reports[0].rel)
    return None


def _print_closing(mode: Mode, args: _Args, settings: Settings | None, reports: Sequence[FileReport]) -> None:
    """After the summary: the rules that decided nothing (stdout), and whether -o OUT lacks files (stderr)."""
    for line in _rule_warnings(settings, reports):
        typer.echo(line)
    incomplete = _incomplete_output(mode, args, reports)
    if incomplete:
        typer.echo(f"mcountrw: error: {incomplete}", err=True)


def _rule_warnings(settings: Settings | None, reports: Sequence[FileReport]) -> list[str]:
    """The policy's rules that decide no site in any of these files (a mistyped pattern, or a
    policy for more of the kernel than this tree): one line each. Not an error: a policy written
    for a whole kernel is often applied to part of it.

    Only the files decided count: a file that failed (a signed module with no signature option, a
    corrupt file) had no site decided, and a rule that would decide its sites is not unused for
    that (`policy check` counts them). With no file decided there is nothing to warn about."""
    from rewriter.prenop import Status

    if settings is None:
        return []
    decided = [r for r in reports if r.status is not Status.FAILED]
    if not decided:
        return []
    used = frozenset().union(*(r.rules for r in decided))
    failed = len(reports) - len(decided)
    where = agreeing(len(decided), "this file", f"these {len(decided)} files")
    if failed:
        where = f"the {counted(len(decided), 'file')} decided ({failed:,} failed: their sites were not decided)"
    p = settings.policy
    return [
        f"warning: {p.name}:{rule.line}: `{rule}` decides no site in {where}"
        for i, rule in enumerate(p.rules)
        if i not in used
    ]


def _incomplete_output(mode: Mode, args: _Args, reports: Sequence[FileReport]) -> str:
    """With -o, the error line (stderr, where a build that keeps the summary in a file still shows
    it) that says the output lacks the files that failed (the run exits 2). A failed
    file is not written: copying it unchanged would make OUT look complete while it holds a file
    the policy never decided (and with no log, --verify would pass it as never changed). A run of
    one file that failed says only its error (:func:`_one_file_failed`)."""
    from rewriter.prenop import Status

    takes = MODES[mode]
    failed = [r for r in reports if r.status is Status.FAILED]
    if takes.dry_run or args.output is None or not failed:
        return ""
    if _all_failed(reports):
        every = agreeing(len(failed), "the one file", f"all {len(failed):,} files")
        return f"nothing written to {args.output}: {every} failed (the lines above); an OUT this run made is removed"
    return (
        f"{args.output} is incomplete: {counted(len(failed), 'file')} failed and "
        f"{agreeing(len(failed), 'is', 'are')} not written there (the lines above; a copy an earlier run "
        f"wrote is left as it was); first: {failed[0].rel}"
    )


def _mode(undo: bool, verify: bool, dry_run: bool) -> Mode:
    if undo and verify:
        raise ArgumentError("give --undo or --verify, not both")
    if verify and dry_run:  # accepted, exit 0, and it changed nothing: the option did nothing
        raise ArgumentError("--verify writes nothing anyway: drop --dry-run")
    if verify:
        return Mode.VERIFY
    if undo:
        return Mode.UNDO_DRY_RUN if dry_run else Mode.UNDO
    return Mode.DRY_RUN if dry_run else Mode.PRENOP


def _check_options(mode: Mode, args: _Args) -> None:
    """Refuse options that do not go with ``mode`` or with each other, before anything is read."""
    takes = MODES[mode]
    if args.against is not None and not takes.against:
        raise ArgumentError("--against goes with --verify")
    if args.against is not None and not args.against.exists():  # else one line per file, each a miss
        from rewriter.reading import NO_SUCH_FILE

        raise ArgumentError(f"--against {args.against}: {NO_SUCH_FILE}")
    if (args.sign_key is None) != (args.sign_cert is None):
        raise ArgumentError("--sign-key and --sign-cert go together")
    if args.sign_key is not None and args.strip_signature:
        raise ArgumentError("give --sign-key/--sign-cert (re-sign) or --strip-signature, not both")
    if takes.policy and args.policy is None:
        raise ArgumentError("--policy FILE is required (or --undo / --verify)")
    if not takes.policy and (args.policy is not None or args.sign_key is not None or args.strip_signature):
        raise ArgumentError("--undo and --verify take no --policy or signing options: the logs say what was done")
    if not takes.policy and args.check_r0:
        raise ArgumentError("--check-r0 goes with pre-nopping: --undo and --verify take no mflr away")
    _check_unused(takes, args)
    check_mcount_addr(args.generation, args.mcount_addr)  # before the files: an option against an option
    if args.in_place and args.output is not None:
        raise ArgumentError("give either --in-place or -o OUT, not both")
    writes = args.in_place or args.output is not None
    _check_log_dir(args.log_dir, writes and takes.policy)
    if takes.output is Output.REQUIRED and not writes:
        raise ArgumentError("no output: give --in-place or -o OUT (or --dry-run)")
    if takes.output is Output.REFUSED and writes:
        raise ArgumentError("--verify writes nothing: drop --in-place / -o")
    # A dry run keeps --wait (the command line of the run it previews); --verify never writes.
    if takes.output is Output.REFUSED and args.wait:
        raise ArgumentError("--verify writes nothing and takes no lock: drop --wait")


def _check_log_dir(log_dir: Path | None, written: bool) -> None:
    """``--log-dir`` is a directory, or a path a run that writes logs can make one at (a file there,
    or a symlink to nothing, failed file by file: "D: File exists" once per module)."""
    from rewriter.output import directory_problem

    if log_dir is not None and log_dir.exists() and not log_dir.is_dir():
        raise ArgumentError(f"--log-dir {log_dir}: not a directory")
    problem = directory_problem(log_dir, writable=False) if log_dir is not None and written else None
    if problem is not None:
        raise ArgumentError(f"--log-dir {log_dir}: {problem}")


def _check_unused(takes: _Takes, args: _Args) -> None:
    """Refuse an option that would do nothing in this run (each was accepted, exit 0, as if it had
    mattered): a digest with no key to sign with, and what only a policy's scan reads (--mcount-addr,
    --generation) or only its decision takes (--replace-stale-logs) in a run the logs decide.
    --mcount-addr over modules alone is refused once the files are known (:func:`_inputs`)."""
    if args.hash_given and args.sign_key is None:
        raise ArgumentError("--hash goes with --sign-key/--sign-cert: it is the digest of the new signatures")
    if takes.policy:
        return
    unused = [
        name
        for name, given in (
            ("--mcount-addr", args.mcount_addr is not None),
            ("--generation", args.generation is not None),
            ("--replace-stale-logs", args.replace_stale_logs),
        )
        if given
    ]
    if unused:
        raise ArgumentError(
            f"--undo and --verify take no {unused[0]}: they go by the logs, which say what each file was"
        )


def _check_outputs(paths: Sequence[Path], output: str | None, report: Path | None) -> None:
    """Before any file is read. For one file, ``-o`` names the output file, or a directory that
    exists to put it in; a trailing slash names a directory, so ``-o x/`` where ``x`` is none is
    refused as the other commands refuse it (a Path drops the slash: it wrote a file ``x``). For a
    tree, or several files, ``-o`` is a directory, made if missing (that it can be:
    :func:`_check_writable`, once the files are known). ``--report`` is a report's ``-o``."""
    if output == "-" or (output is not None and _names_one_file(paths)):
        output_file(output)  # "-" refused for a tree as for a file: it is no stdout here either
    elif output is not None:
        _check_output_tree(Path(output))
    check_report_output(report)


def _check_output_tree(tree: Path) -> None:
    """``-o`` of a tree is a directory, or a path one can be made at: a file there, or a symlink to
    nothing, was found by the mkdir before the locks ("OUT: File exists"), a file above it by the
    first write ("OUT/x: Not a directory")."""
    from rewriter.output import directory_problem

    if tree.exists() and not tree.is_dir():
        raise ArgumentError(
            f"-o {tree}: not a directory (a tree is written into one: name a directory, or a path not there)"
        )
    problem = directory_problem(tree, writable=False)
    if problem is not None:
        raise ArgumentError(f"-o {tree}: {problem}")


def _check_written(mode: Mode, args: _Args, inputs: Inputs, report: Path | None) -> None:
    """Before any work, each file the run writes (a dry run: those of the run it previews, and its
    report), as `nop` checks its own: it can be put in its place (:func:`_check_writable`), and it
    is no file the run reads nor another file it writes (:func:`_check_apart`). -o's copies of the
    files that are no module are outputs too."""
    from rewriter.batch import EntryKind

    _check_writable(mode, args, inputs.targets)
    checked: set[Path] = set()
    for c in inputs.copies:
        if c.kind is not EntryKind.DIRECTORY:  # a directory is made (or there), not replaced
            _check_makeable(c.dest, checked)
    _check_apart(mode, args, inputs, report)


def _check_writable(mode: Mode, args: _Args, ts: Sequence[Target]) -> None:
    """Every output can be written where it goes. The run used to fail file by file at its end
    instead, the input blamed (`OUT was not written: its input failed`, after a line about the
    log). One file named is checked as nop checks its output (``rewriter.files.check_output_path``:
    the directory of -o must exist and take a new file); a tree's -o is made with its missing
    parents (docs/prenop.md), so for a tree each directory files go in (or the first of those that
    is missing, made as they are written) is checked once: a tree has thousands of files."""
    from rewriter.files import check_output_path

    if not args.in_place and args.output is None:
        return  # a dry run with neither, or --verify: no output
    checked: set[Path] = set()
    for t in ts:
        if _one_file(args):
            check_output_path(t.source, None if args.in_place else t.dest, args.in_place)
        else:
            _check_makeable(t.dest, checked)
        if MODES[mode].policy:
            _check_makeable(t.log, checked)


def _check_makeable(path: Path, checked: set[Path]) -> None:
    """The directory of ``path`` takes a new file, or the first directory on its way that is
    missing can be made (``rewriter.output.check_replaceable``, checked for the first file that
    goes there: ``checked`` holds the directories done)."""
    from rewriter.output import check_own_place, check_replaceable

    if path.parent in checked:
        check_own_place(path)  # every file's own place, not only the first of its directory's
        return
    checked.add(path.parent)
    while not path.parent.is_dir() and path.parent != path.parent.parent:
        path = path.parent
    check_replaceable(path)


class _Written(NamedTuple):
    """A file the run writes: the option that names it ("" for a patch log, named for its file),
    and what is written there."""

    option: str
    place: Place
    thing: str


def _check_apart(mode: Mode, args: _Args, inputs: Inputs, report: Path | None) -> None:
    """No output is a file the run reads or another output: `--report` or `-o` over the input, its
    patch log, the policy or the signing key, -o equal to --report, a patch log the run writes
    over the policy. Each was replaced, exit 0 (a --verify's report replaced its input, then the
    run failed); a patch log lost is an undo lost. The one line names the output as it was given
    and the file it would replace."""
    places = Places()
    for place in _read(args, inputs):
        places.add_read(place)
    for w in _written(mode, args, inputs, report):
        other = places.claim(w.place)
        if other is not None:
            named = f"{w.option} {w.place.path}" if w.option else str(w.place.path)
            raise OutputError(f"{named}: is {other.path}, {other.what}: {w.thing} would replace it")


def _read(args: _Args, inputs: Inputs) -> list[Place]:
    """The files the run reads: the policy, the signing key and certificate, and each target's
    input, pristine file (--against) and patch log, and the log beside its input, which its undo
    needs (the same log in place, where the run rewrites it); and each file -o copies."""
    from rewriter.batch import EntryKind

    ts = inputs.targets
    from rewriter.log import default_log_path

    named = [
        (args.policy, "the policy"),
        (args.sign_key, "the signing key"),
        (args.sign_cert, "the signing certificate"),
    ]
    out = [Place(path, f"{what} this command reads", what) for path, what in named if path is not None]
    for i, t in enumerate(ts):
        out.append(Place(t.source, "an input this command reads", ("input", i)))
        if t.original is not None:
            out.append(Place(t.original, "a pristine file this command reads (--against)", ("against", i)))
        out.append(Place(t.log, "a patch log this command reads", ("log", i)))
        beside = default_log_path(t.source)
        if beside != t.log:
            what = f"the patch log of the input {t.source}, which its undo needs"
            out.append(Place(beside, what, ("log", i) if args.in_place else ("beside", i)))
    for i, c in enumerate(inputs.copies):
        if c.kind is not EntryKind.DIRECTORY:
            out.append(Place(c.source, "a file this command copies (-o)", ("copied", i)))
    return out


def _written(mode: Mode, args: _Args, inputs: Inputs, report: Path | None) -> list[_Written]:
    """The files the run writes, in the order they are checked (each against those before it too):
    the output tree, each file's output and patch log (not the inputs an in-place run rewrites),
    -o's copies, and the report. A dry run is checked as the run it previews, as `nop --dry-run` is."""
    from rewriter.batch import EntryKind

    ts = inputs.targets
    out = []
    tree = _tree_named(args)
    if tree is not None:
        out.append(_Written("-o", Place(tree, "the output tree this command writes (-o)", "tree"), "the output tree"))
    if args.output is not None:
        what = "an output this command writes (-o)"
        out += [_Written("-o", Place(t.dest, what, ("output", i)), "the output") for i, t in enumerate(ts)]
    if MODES[mode].policy and (args.in_place or args.output is not None):
        what = "a patch log this command writes"
        out += [_Written("", Place(t.log, what, ("log", i)), f"the patch log of {t.dest}") for i, t in enumerate(ts)]
    what = "a copy this command writes (-o)"
    for i, c in enumerate(inputs.copies):
        if c.kind is not EntryKind.DIRECTORY:
            out.append(_Written("-o", Place(c.dest, what, ("copy", i)), f"the copy of {c.source}"))
    if report is not None:
        out.append(_Written("--report", Place(report, "the report", "report"), "the report"))
    return out


def _inputs(mode: Mode, args: _Args) -> Inputs:
    """The files of the run and, for -o of a tree, what it copies (``rewriter.prenop.gather``);
    refused before any work (exit 2) for a file or directory that cannot be read (one line each),
    a named directory with no module below it, or ``--mcount-addr`` with no file it applies to."""
    from rewriter.prenop import gather

    inputs = gather(
        args.paths,
        output=args.output,
        in_place=args.in_place,
        log_dir=args.log_dir,
        against=args.against,
        logs_beside_source=not MODES[mode].policy,  # undo and verify find each log beside its file
    )
    if inputs.errors:
        print_errors(inputs.errors)
        raise typer.Exit(ExitCode.BAD_INPUT)
    ts = inputs.targets
    # A named directory with nothing in it beside others that have files is refused like a
    # missing path, before anything is written: a build that names a wrong directory is told.
    empty = _empty_directories(args.paths, [t.source for t in ts])
    if empty:
        raise ArgumentError(nothing_below(empty[0], inputs.kernels))
    if MODES[mode].policy:
        check_mcount_addr_used([t.source for t in ts], args.mcount_addr)
    return inputs


def nothing_below(directory: Path, kernels: Sequence[Path]) -> str:
    """The line for a directory named with no module below it: what a directory contributes, and
    how a vmlinux is given (it said "no vmlinux or module found", and a vmlinux below it is never
    taken). Also `policy check`'s, which takes its files as prenop does."""
    from rewriter.elf.compress import MODULE_SUFFIXES

    held = [k for k in kernels if k.is_relative_to(directory)]
    there = f" ({held[0]} is one)" if held else ""
    return (
        f"{directory}: no module below it: a directory contributes its modules ({', '.join(MODULE_SUFFIXES)}); "
        f"name a vmlinux as a file{there}"
    )


# What a run that leaves a vmlinux below a directory out does not do to it, and what naming it does.
LEFT_OUT: Final[Mapping[Mode, tuple[str, str]]] = MappingProxyType(
    {
        Mode.PRENOP: ("not rewritten", "apply the policy to it"),
        Mode.DRY_RUN: ("not decided", "apply the policy to it"),
        Mode.UNDO: ("not undone", "undo it"),
        Mode.UNDO_DRY_RUN: ("not undone", "undo it"),
        Mode.VERIFY: ("not verified", "verify it"),
    }
)


def kernel_left_out(kernel: Path, left: tuple[str, str], copied_to: Path | None = None) -> str:
    """The warning for a PowerPC64 executable (a vmlinux) that the walk of a directory passed and
    no file argument names: directories contribute modules only (a build tree also holds
    vmlinux.o and host tools), so the run leaves it out, and -o copies it as it is. Debian 7.2
    ships its vmlinuz inside /usr/lib/modules/<version>/, whose prenop and policy check left the
    kernel out in silence. ``left``: what is not done to it, and what naming it as a file does."""
    how = f" (copied unchanged to {copied_to})" if copied_to is not None else ""
    return (
        f"{kernel}: a PowerPC64 executable (a vmlinux?) below a directory, {left[0]}{how}: a directory "
        f"contributes its modules only; name it as a file to {left[1]}"
    )


def _kernel_warnings(mode: Mode, inputs: Inputs) -> list[str]:
    """:func:`kernel_left_out` for each vmlinux the run's directories hold; where -o copies it."""
    copied = {} if MODES[mode].dry_run else {c.source: c.dest for c in inputs.copies}
    return [kernel_left_out(k, LEFT_OUT[mode], copied.get(k)) for k in inputs.kernels]


def _settings(mode: Mode, args: _Args) -> Settings | None:
    """What pre-nopping needs (None for undo and verify): the policy, read and checked, and the
    signing key, loaded so that a bad key or certificate is refused before any file is touched."""
    from rewriter.prenop import Settings
    from rewriter.sign import SigningKey

    takes = MODES[mode]
    if not takes.policy:
        return None
    assert args.policy is not None  # _check_options: the modes that take a policy require it
    rules = load_policy(args.policy)
    signing = None
    if args.sign_key is not None and args.sign_cert is not None:
        signing = SigningKey(args.sign_key, args.sign_cert, args.hash_name)
        signing.load()
    from rewriter.files import ScanHints

    hints = ScanHints(args.mcount_addr, args.generation)
    return Settings(rules, args.strip_signature, signing, takes.dry_run, args.replace_stale_logs, hints, args.check_r0)


def _execute(mode: Mode, ts: Sequence[Target], settings: Settings | None, jobs: int) -> list[FileReport]:
    from rewriter import prenop as P

    takes = MODES[mode]
    with progress(len(ts), takes.doing) as tick:
        if settings is not None:
            return P.run(ts, settings, jobs, tick)
        if mode is Mode.VERIFY:
            return P.verify(ts, jobs, tick)
        return P.undo(ts, jobs, tick, takes.dry_run)


def _any_of(files: int) -> str:
    return agreeing(files, "the one file", f"any of the {files} files")


def _header(mode: Mode, args: _Args, settings: Settings | None, files: int) -> str:
    dry = DRY_RUN_BANNER if MODES[mode].dry_run else ""
    if mode is Mode.VERIFY:
        return f"mcountrw prenop --verify: {counted(files, 'file')}"
    if settings is None:
        return f"mcountrw prenop --undo: {counted(files, 'file')}{dry}"
    return (
        f"mcountrw prenop: policy {args.policy} (sha256 {settings.policy.sha256[:12]}), {counted(files, 'file')}{dry}"
    )


def _print_reports(mode: Mode, reports: Sequence[FileReport], header: str) -> None:
    """Failures and mismatches on stderr, one line each; the summary table and notes on stdout."""
    from rewriter.prenop import Status

    told = _other_release_told(reports)
    for r in reports:
        if r.status is Status.FAILED:
            if r.built_for not in told or told[r.built_for] is r:
                typer.echo(f"mcountrw: error: {r.message}", err=True)
        elif r.status is Status.MISMATCH:
            typer.echo(f"MISMATCH: {r.rel}: {r.message}", err=True)
        elif r.status is Status.ORIGINAL and r.message:  # --verify (--undo says it in the table)
            typer.echo(f"already original: {r.rel}: {r.message}", err=True)
    for line in _other_release_lines(reports, told):
        typer.echo(f"mcountrw: error: {line}", err=True)
    takes = MODES[mode]
    undoing = mode in (Mode.UNDO, Mode.UNDO_DRY_RUN)
    summary = _summary(reports, logs_only=not takes.policy, dry_run=takes.dry_run, undoing=undoing)
    typer.echo("\n".join([header, *summary]))
    for line in _notes(reports, mode):
        typer.echo(line)
    sys.stdout.flush()


def _other_release_told(reports: Sequence[FileReport]) -> dict[str, FileReport]:
    """The first module refused for each other release it was built for: its line is printed in
    full, the others of that release are counted (a whole tree given with the wrong vmlinux would
    print thousands of lines alike, where ``policy check`` prints one)."""
    told: dict[str, FileReport] = {}
    for r in reports:
        if r.built_for:
            told.setdefault(r.built_for, r)
    return told


def _other_release_lines(reports: Sequence[FileReport], told: dict[str, FileReport]) -> list[str]:
    """One line per release for the modules of it not printed in full (``--report`` lists each)."""
    lines = []
    for release, first in told.items():
        rest = [r for r in reports if r.built_for == release and r is not first]
        if rest:
            lines.append(
                f"{counted(len(rest), 'more module')} built for {release} refused the same way, not written "
                f"(first: {printable(rest[0].rel)})"
            )
    return lines


def _summary(reports: Sequence[FileReport], logs_only: bool, dry_run: bool, undoing: bool = False) -> list[str]:
    """The table of a run: files and sites by status (an undo's sites are the ones it brings back)."""
    from rewriter.prenop import Status

    rows: list[tuple[str, ...]] = [("status", "files", "sites restored" if undoing else "sites nopped", "sites kept")]
    for status in Status:
        rs = [r for r in reports if r.status is status]
        if rs:
            nopped, kept = sum(r.nopped for r in rs), sum(r.kept for r in rs)
            label = WOULD.get(status.value, status.value) if dry_run else status.value
            rows.append((label, f"{len(rs):,}", f"{nopped:,}", f"{kept:,}"))
    rows.append(
        ("total", f"{len(reports):,}", f"{sum(r.nopped for r in reports):,}", f"{sum(r.kept for r in reports):,}")
    )
    if logs_only:
        rows = [row[:3] for row in rows]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = []
    for n, row in enumerate(rows):
        cells = [row[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(row[1:], widths[1:], strict=True)]
        lines.append("  " + "  ".join(cells))
        if n == 0 or n == len(rows) - 2:
            lines.append("  " + "  ".join("-" * w for w in widths))
    return lines


def _unchecked_warning(reports: Sequence[FileReport], dry_run: bool) -> list[str]:
    """One line for the patchable modules whose records were dropped with no kernel's loop to hold
    them to (``rewriter.locs.unchecked_drops``): prenop checks them only against a vmlinux in its run."""
    unchecked = [r for r in reports if r.unchecked]
    if not unchecked:
        return []
    from rewriter.locs import UNCHECKED_RISK

    records = counted(sum(r.unchecked for r in unchecked), "record")
    modules = counted(len(unchecked), "patchable module")
    # in the tense of what the run did, as the signatures line is: a dry run drops nothing
    dropped = "would be dropped" if dry_run else "dropped"
    return [
        f"warning: {records} {dropped} from {modules} with no patchable vmlinux in the run whose loop was read: "
        f"{UNCHECKED_RISK}; name its vmlinux in the run to check (docs/prenop.md). "
        f"First: {unchecked[0].rel}"
    ]


def _notes(reports: Sequence[FileReport], mode: Mode) -> list[str]:
    from rewriter.prenop import Status

    out = []
    signatures = _signatures(reports, MODES[mode].dry_run)
    if signatures:
        out.append(signatures)
    left = [r for r in reports if r.left_recorded]
    if left:
        sites = sum(r.left_recorded for r in left)
        out.append(
            f"warning: {counted(sites, 'site')} in {counted(len(left), 'file')} that the policy nops kept "
            f"{agreeing(sites, 'its record', 'their records')}: the kernel will still patch "
            f"{agreeing(sites, 'it', 'them')} (docs/prenop.md). First: {left[0].rel}"
        )
    out += _unchecked_warning(reports, MODES[mode].dry_run)
    unplaced = [r for r in reports if r.unplaced_records]
    if unplaced:
        records = sum(r.unplaced_records for r in unplaced)
        out.append(
            f"warning: {counted(records, 'record')} in {counted(len(unplaced), 'file')} "
            f"{agreeing(records, 'points', 'point')} at no site mcountrw recognises, and "
            f"{agreeing(records, 'was', 'were')} left alone. First: {unplaced[0].rel}"
        )
    done = [r for r in reports if r.status is not Status.FAILED]
    bare = [r for r in done if r.no_sites]
    if MODES[mode].policy and bare and len(bare) < len(done):
        out.append(
            f"note: {counted(len(bare), 'file')} with no ftrace site at all; first: {bare[0].rel}: {bare[0].message}"
        )
    failed = len(reports) - len(done)
    if (
        MODES[mode].policy
        and len(bare) < len(done)
        and all(r.status in (Status.UNCHANGED, Status.NOTHING) for r in done)
    ):
        out.append(_nothing_to_nop(done, failed, MODES[mode].dry_run))
    undoing = mode in (Mode.UNDO, Mode.UNDO_DRY_RUN)
    # A file with no log is one prenop never changed (a run that found no log at all stopped
    # before: _check_some_log), so it counts as its own original.
    originals = sum(1 for r in done if r.status is Status.ORIGINAL)
    if undoing and originals and all(r.status in (Status.ORIGINAL, Status.NO_LOG) for r in done):
        never = sum(1 for r in done if r.status is Status.NO_LOG)
        why = f" ({never} of them with no log: never rewritten)" if never else ""
        out.append(
            _nothing_changed(len(done), failed, ("already is its original", "already are their originals" + why))
        )
    return out


def _signatures(reports: Sequence[FileReport], dry_run: bool) -> str:
    """What became of the module signatures, in the tense of what this run did to each file: a
    file found already done (``unchanged``) had its signature stripped or re-signed by an earlier
    run, and a dry run strips and signs nothing."""
    from rewriter.prenop import Status

    counts: dict[str, int] = {}
    for r in reports:
        if not r.signature:
            continue
        if r.status is Status.UNCHANGED:
            what = f"already {r.signature}"
        elif dry_run:
            what = f"would be {r.signature}"
        else:
            what = r.signature
        counts[what] = counts.get(what, 0) + 1
    if not counts:
        return ""
    return "module signatures: " + ", ".join(f"{n:,} {what}" for what, n in sorted(counts.items()))


def _nothing_to_nop(done: Sequence[FileReport], failed: int, dry_run: bool) -> str:
    """The closing line of a policy run that nopped nothing: ``nothing changed``, or, when -o's
    output was written as a copy of the files (a first run to a new OUT: a build step that names OUT
    finds it), how many were copied. It said `nothing changed` over an OUT it had just made."""
    state = ("already matches the policy", "already match the policy")
    copied = sum(r.copied for r in done)
    if not copied:
        return _nothing_changed(len(done), failed, state)
    line = "nothing to nop: " + _nothing_changed(len(done), failed, state).removeprefix("nothing changed: ")
    copy = "would be copied" if dry_run else "copied"
    if copied == len(done):
        return f"{line}; {copy} to the output as {agreeing(copied, 'it is', 'they are')}"
    return f"{line}; {copied:,} of them {copy} to the output as {agreeing(copied, 'it is', 'they are')}"


def _nothing_changed(done: int, failed: int, state: tuple[str, str]) -> str:
    """The closing line of a run that changed no file (``state``: what the files are, said of one
    file and of several): with files that failed, it must not read as if every file were fine."""
    said = agreeing(done, *state)
    if not failed:
        return f"nothing changed: {agreeing(done, 'the file', f'all {done:,} files')} {said}"
    files = agreeing(done, "file", "files")
    return f"nothing changed: the {done:,} {files} that did not fail {said}; {failed:,} failed (errors on stderr)"


def _report_json(reports: Sequence[FileReport], header: str, dry_run: bool) -> dict[str, Any]:
    """Every file's status and counts. A dry run's statuses are those of the run it previews
    (``nopped``, ``undone``: what each file would become) and ``dry_run`` says nothing was written."""
    return {
        "format": "mcountrw-prenop-report",
        "version": 1,
        "summary": header,
        "dry_run": dry_run,
        "files": [
            {
                "path": r.rel,
                "status": r.status.value,
                "kind": r.kind,
                "sites_nopped": r.nopped,
                "sites_kept": r.kept,
                "left_recorded": r.left_recorded,
                "unplaced_records": r.unplaced_records,
                "signature": r.signature,
                "message": r.message,
            }
            for r in reports
        ],
    }


# -- policy check ---------------------------------------------------------------------------


def policy_check(
    policy_file: Annotated[Path, typer.Argument(metavar="POLICY", help="the policy file")],
    images: Annotated[list[Path], typer.Argument(metavar="IMAGE...", help="vmlinux, modules or directories")],
    *,
    jobs: Jobs = 0,
    generation: GenerationOption = None,
    mcount_addr: McountAddr = None,
    log: LogFile = None,
    log_dir: ReadLogDir = None,
) -> None:
    """Show what each rule matches (sites, the sites it decides, a few names), and what keeping and
    nopping mean for the kernel's generation; warn about rules that match nothing or are always
    overridden (exit 1 if there are any). Sites only an image's patch log knows count too.

    Each image's patch log is read from beside it, or from under --log-dir where `prenop
    --log-dir` wrote it."""
    from rewriter import policy as pol
    from rewriter.batch import Found
    from rewriter.reading import not_a_file

    check_mcount_addr(generation, mcount_addr)
    rules = load_policy(policy_file)
    # The files prenop would take, each named in its tree as prenop names it (its log's place).
    # A path that is not there, or is a FIFO or a device, a file or directory that cannot be read,
    # is one line, the others still checked, exit 2, as scan and audit do (prenop refuses the run
    # instead: it writes).
    missing = [p for p in images if not (p.is_dir() or p.is_file())]
    present = [p for p in images if p not in missing]
    inputs = _policy_inputs(present, log_dir)
    found = [Found(t.source, t.rel) for t in inputs.targets]
    # One line per named directory with nothing to check (as prenop says it), likewise: a
    # directory dropped in silence read as checked.
    files = [f.path for f in found]
    check_mcount_addr_used(files, mcount_addr)
    errors = [f"{p}: {not_a_file(p)}" for p in missing] + list(inputs.errors)
    empty = _empty_directories(present, files)
    errors += [nothing_below(d, inputs.kernels) for d in empty]
    for kernel in inputs.kernels:  # as prenop leaves it out (the line of an empty directory names it)
        if not any(kernel.is_relative_to(d) for d in empty):
            left = kernel_left_out(kernel, ("not checked", "check the policy against it"))
            typer.echo(f"mcountrw: warning: {printable(left)}", err=True)
    tally = pol.Tally(rules)
    overridden: list[tuple[str, str]] = []
    unlogged: list[tuple[Path, int]] = []
    logs = logs_for(found, log, log_dir)
    errors += _tally_files(tally, files, workers(jobs), generation, mcount_addr, logs, (overridden, unlogged))
    print_errors(errors)
    if not tally.files:  # no image read: a table of rules matching nothing would be false warnings
        raise typer.Exit(ExitCode.BAD_INPUT)
    typer.echo("\n".join(_check_lines(policy_file, rules, tally)))
    if overridden:  # as scan and audit say it: the table is of the images read as --generation says
        more = and_more(len(overridden) - 1, "file")
        (path, said) = overridden[0]
        typer.echo("\n".join(wrapped(f"note: {path}: {said}{more}", keep=len(f"note: {path}:"))))
    _note_unchecked(tally)
    warnings = tally.warnings() + _unlogged_warning(unlogged)
    for w in warnings:  # prose, wrapped as the result: line is; a path in it stays whole
        typer.echo("\n".join(wrapped(f"warning: {w}")))
    bad_input_if(errors)
    findings_if(bool(warnings))


def load_policy(path: Path) -> Policy:
    """The policy file ``path``; refused (exit 2) with one line for each error in it."""
    from rewriter import policy as pol

    try:
        return pol.load(path)
    except pol.PolicyError as e:
        print_errors(e.lines)
        raise typer.Exit(ExitCode.BAD_INPUT) from None


def _note_unchecked(tally: Tally) -> None:
    """The note for what prenop warns of, records dropped from patchable modules with no vmlinux
    whose loop was read (:func:`_unchecked_warning`): policy check said nothing of it."""
    from rewriter.locs import UNCHECKED_RISK

    modules, sites = tally.unchecked()
    if modules:
        note = (
            f"note: nop on {counted(sites, 'site')} of {counted(modules, 'patchable module')} drops their records "
            f"with no patchable vmlinux named whose loop was read: {UNCHECKED_RISK}; name its vmlinux to check "
            "(prenop warns of it)"
        )
        typer.echo("\n".join(wrapped(note)))


def _policy_inputs(present: Sequence[Path], log_dir: Path | None) -> Inputs:
    """What policy check reads, as prenop gathers it. Two files of one name are refused only under
    ``--log-dir``, where their logs are looked up by it: the check writes nothing, so two trees
    with the same paths below them (Debian's 4k- and 64k-page module trees) are checked in one run."""
    from rewriter.prenop import gather

    where = f"under --log-dir {log_dir}, where their patch logs are looked up"
    return gather(
        present,
        output=None,
        in_place=False,
        log_dir=None,
        whole=False,
        check_names=log_dir is not None,
        names_for=where,
    )


def _unlogged_warning(unlogged: Sequence[tuple[Path, int]]) -> list[str]:
    """The files whose records are zeroed, as a rewrite leaves them, with no patch log read: the
    sites that rewrite nopped are invisible to a scan, so the table counted none of them (over a
    tree prenop nopped, run without its --log-dir: `nop 0` for a policy that nops 33,614 sites)."""
    if not unlogged:
        return []
    (first, zeroed), more = unlogged[0], len(unlogged) - 1
    others = and_more(more, "file")
    return [
        f"{first}: {zeroed_records(zeroed)}, as a rewrite leaves them, and no patch log describes "
        f"it{others}: the sites that rewrite nopped are not counted; give the --log-dir its run wrote the logs to"
    ]


def _empty_directories(images: Sequence[Path], found: Sequence[Path]) -> list[Path]:
    """The directories of ``images`` that none of ``found`` lies below (each file found below a
    directory is named from it, so the test is on the names, with no second walk). A directory
    named twice, by a link too, is read once, under its first name: the other has what it has."""
    dirs = [d for d in images if d.is_dir()]
    held = {os.path.realpath(d) for d in dirs if any(f.parts[: len(d.parts)] == d.parts for f in found)}
    return [d for d in dirs if os.path.realpath(d) not in held]


def _tally_files(
    tally: Tally,
    files: Sequence[Path],
    jobs: int,
    generation: Generation | None,
    mcount_addr: int | None,
    logs: Mapping[Path, Path],
    notes: tuple[list[tuple[str, str]], list[tuple[Path, int]]],
) -> list[str]:
    """Scan ``files`` and count what the policy decides for each site (with the sites of their
    patch logs, ``logs``); the lines of the files that could not be scanned. Adds to ``notes``
    what ``--generation`` overrode, per file, and each file with zeroed records that no log
    explains (:func:`_unlogged_warning`)."""
    from rewriter import policy as pol
    from rewriter.batch import scan_many
    from rewriter.boot import Untraceable, boot_of, untraceable
    from rewriter.elf.image import Kind
    from rewriter.log import logged
    from rewriter.report.scanfmt import generation_of
    from rewriter.sites import Source, override_text

    errors = []
    with progress(len(files), "scanning") as tick:
        for outcome in scan_many(files, jobs, mcount_addr, tick, generation):
            if outcome.scan is None:
                errors.append(outcome.error or f"{outcome.path}: failed")
                continue
            sc = logged(outcome.scan, logs)
            overrode = override_text(sc)
            if overrode is not None:
                notes[0].append((str(outcome.path), overrode))  # the path kept whole when wrapped
            if sc.records.zeroed and not any(s.source is Source.LOG for s in sc.sites):
                notes[1].append((outcome.path, sc.records.zeroed))
            boot = boot_of(sc)
            facts = []
            for s in sc.sites:
                why = untraceable(s, boot)
                if why is Untraceable.UNRECORDED and s.source is Source.LOG:
                    why = None  # prenop applies a policy to the original: a kept site gets its record back
                facts.append(pol.SiteFacts(sc.name_of(s), s.section, None if why is None else why.value))
            locs = sc.locs if sc.kind is Kind.VMLINUX else None
            tally.add_file(sc.module, facts, generation_of(sc), locs, sc.release)
    return errors


def _check_lines(policy_file: Path, rules: Policy, tally: Tally) -> list[str]:
    """The header (files per generation), one row per rule, and what the verdicts mean."""
    from rewriter import policy as pol

    total = sum(tally.verdicts.values())
    gens = [f"{g.value} {n}" for g, n in sorted(tally.generations.items(), key=_gen_key) if g is not None]
    if tally.generations[None]:
        gens.append(f"{tally.generations[None]} with no sites")
    head = f"policy {policy_file}:"  # kept whole on the first line, as scan keeps its PATH:, for grep
    lines = wrapped(
        f"{head} default {rules.default.value}, {counted(len(rules.rules), 'rule')}; "
        f"{counted(tally.files, 'file')} ({', '.join(gens)}), {counted(total, 'site')}",
        keep=len(head),
    )
    rows: list[tuple[str, ...]] = [("line", "rule", "matches", "decides", "examples")]
    for use in tally.uses():
        line = str(use.rule.line) if use.rule else ""
        text = str(use.rule) if use.rule else f"default {rules.default.value}"
        rows.append((line, text, str(use.matched), str(use.decided), *use.examples))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    room = WIDTH - 2 - sum(widths) - 2 * len(widths)
    for r in rows:
        cells = (r[0].rjust(widths[0]), r[1].ljust(widths[1]), r[2].rjust(widths[2]), r[3].rjust(widths[3]))
        lines.append("  " + "  ".join((*cells, _fitting(r[4:], room))).rstrip())
    keep, nop = tally.verdicts[pol.Verb.KEEP], tally.verdicts[pol.Verb.NOP]
    not_traceable = ", ".join(f"{n} {why}" for why, n in sorted(tally.kept_untraceable.items()))
    init = f", {tally.kept_init} of them in init sections, traced until the kernel frees them"
    init = init if tally.kept_init else ""
    lines += wrapped(  # prose, unlike the rows above: wrapped at 80 columns
        f"result: keep {counted(keep, 'site')} ({tally.kept_traceable} traceable {tally.when_traced}{init}"
        + (f"; not traceable anyway: {not_traceable}" if not_traceable else "")
        + f"), nop {nop} (untraceable: records dropped)"
    )
    for g, n in sorted(tally.nopped.items(), key=_gen_key):
        meaning = "the records are dropped" if g is None else pol.NOP_MEANS[g]
        lines += wrapped(f"  nop on {'unknown' if g is None else g.value} ({counted(n, 'site')}): {meaning}")
    return lines


def _fitting(examples: Sequence[str], room: int) -> str:
    """The first of ``examples`` (always), then as many more as fit in ``room`` columns, with
    ``...`` when some are left out: a rule's row read at an 80-column terminal, where the default
    rule's four examples ran to column 150 and wrapped."""
    said = list(examples[:1])
    for n, name in enumerate(examples[1:], start=2):
        more = ["..."] if n < len(examples) else []
        if len(", ".join([*said, name, *more])) > room:
            return ", ".join([*said, "..."])
        said.append(name)
    return ", ".join(said)


def _gen_key(item: tuple[Generation | None, int]) -> str:
    return "" if item[0] is None else str(item[0].value)
