"""`mcountrw audit` and `mcountrw diff`: thin commands over rewriter.audit, rewriter.diff and the
report formats. Exit codes: 0 clean, 1 findings (anomalies at --fail-on level; for diff, any
difference, as diff(1) does), 2 bad input."""

from __future__ import annotations

import enum
import hashlib
import json
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, TypeVar

import typer

from rewriter.cli.common import (
    GenerationOption,
    Jobs,
    LogFile,
    McountAddr,
    OutputFile,
    ReadLogDir,
    address,
    check_log_options,
    check_mcount_addr,
    check_mcount_addr_used,
    check_report_output,
    emit,
    log_dir_path,
    logs_for,
    print_errors,
    print_warnings,
    progress,
    workers,
)
from rewriter.cli.exits import ExitCode, bad_input_if, findings_if
from rewriter.errors import ArgumentError, ImageError, LogError
from rewriter.generations import Generation
from rewriter.prose import printable
from rewriter.reading import NO_SUCH_FILE, not_a_file

if TYPE_CHECKING:
    from rewriter.anomalies import Severity
    from rewriter.audit import Audit
    from rewriter.batch import Found
    from rewriter.diff import Generations

T = TypeVar("T")


class AuditFormat(enum.Enum):
    MD = "md"
    JSON = "json"
    HTML = "html"
    SARIF = "sarif"


class DiffFormat(enum.Enum):
    MD = "md"
    JSON = "json"


class FailOn(enum.Enum):
    """``--fail-on``: the least severe anomaly that makes ``audit`` exit 1, or never."""

    ERROR = "error"
    WARNING = "warning"
    NOTE = "note"
    NEVER = "never"

    @property
    def severity(self) -> Severity | None:
        from rewriter.anomalies import Severity

        return None if self is FailOn.NEVER else Severity(self.value)


DIFF_ROWS = 200  # md on a terminal lists the first changes only (--all: every one)
AllChanges = Annotated[
    bool, typer.Option("--all", help=f"md: list every change, not the first {DIFF_ROWS} (-o always lists every one)")
]


def audit(
    paths: Annotated[
        list[Path], typer.Argument(help="vmlinux, modules, objects, or directories (their PowerPC64 ELF files)")
    ],
    *,
    fmt: Annotated[AuditFormat, typer.Option("--format", help="the report's format")] = AuditFormat.MD,
    output: OutputFile = None,
    fail_on: Annotated[
        FailOn, typer.Option("--fail-on", help="exit 1 if there are anomalies at or above this severity")
    ] = FailOn.ERROR,
    jobs: Jobs = 0,
    mcount_addr: McountAddr = None,
    generation: GenerationOption = None,
    log: LogFile = None,
    log_dir: ReadLogDir = None,
) -> None:
    """Counts, anomalies and the mflr-nop safety of every site, per image and by subsystem (with
    the sites only an image's patch log knows).

    Each image's patch log is read from beside it, or from under --log-dir where `prenop
    --log-dir` wrote it."""
    from rewriter.audit import audit_files, fails
    from rewriter.batch import expand_noting

    check_mcount_addr(generation, mcount_addr)
    found, errors, warnings = expand_noting(paths)
    print_warnings(warnings)
    files = [f.path for f in found]
    check_mcount_addr_used(files, mcount_addr)
    roots = [p for p in paths if p.is_dir()]
    logs = logs_for(found, log, log_dir)
    check_report_output(output, [*files, *logs.values()])
    with progress(len(files), "auditing") as tick:
        result = audit_files(files, roots, workers(jobs), mcount_addr, tick, logs, generation)
    # Every report names the files that could not be read, found or not by the walk of a tree.
    result = replace(result, errors=(*errors, *result.errors))
    print_errors(result.errors)
    if not result.images:
        raise typer.Exit(ExitCode.BAD_INPUT)
    emit(_render_audit(result, fmt), output)
    bad_input_if(result.errors)
    failing = fails(result, fail_on.severity)
    if failing and output is not None:  # the report is in a file: exit 1 alone would say nothing
        typer.echo(f"mcountrw: {_failing_text(result, fail_on)}: see {printable(str(output))}", err=True)
    findings_if(failing)


def _failing_text(result: Audit, fail_on: FailOn) -> str:
    """``2 errors, 243 notes at or above --fail-on note``: the anomalies that make audit exit 1."""
    from rewriter.anomalies import Severity
    from rewriter.audit import failing
    from rewriter.prose import counted

    counts = failing(result, fail_on.severity)
    said = [counted(counts[s], s.value) for s in (Severity.ERROR, Severity.WARNING, Severity.NOTE) if counts[s]]
    return f"{', '.join(said)} at or above --fail-on {fail_on.value}"


def _render_audit(result: Audit, fmt: AuditFormat) -> str:
    from rewriter.report import html, jsonfmt, md, sarif

    if fmt is AuditFormat.JSON:
        return json.dumps(jsonfmt.audit_json(result), separators=(",", ":")) + "\n"
    if fmt is AuditFormat.SARIF:
        return json.dumps(sarif.audit_sarif(result), indent=1) + "\n"
    if fmt is AuditFormat.HTML:
        return html.audit_html(result)
    return md.audit_markdown(result)


DiffGenerations = Annotated[
    list[Generation] | None,
    typer.Option("--generation", help="for stripped images: once for both, or twice (A's, then B's)"),
]
DiffMcountAddrs = Annotated[
    list[int] | None,
    typer.Option(
        "--mcount-addr",
        parser=address,
        help="address of _mcount, for a stripped mprofile vmlinux: once for both, or twice (A's, then B's)",
    ),
]


def diff(
    a: Annotated[Path, typer.Argument(help="the first image, or a tree of modules")],
    b: Annotated[Path, typer.Argument(help="the second image, or a tree of modules")],
    *,
    fmt: Annotated[DiffFormat, typer.Option("--format", help="the report's format")] = DiffFormat.MD,
    output: OutputFile = None,
    show_all: AllChanges = False,
    jobs: Jobs = 0,
    generation: DiffGenerations = None,
    mcount_addr: DiffMcountAddrs = None,
    log: Annotated[
        list[Path] | None,
        typer.Option(
            "--log",
            help="a patch log of A or B (which one: the one whose output it is); default: each file's log "
            "beside it, when its output is that file",
        ),
    ] = None,
    log_dir: Annotated[
        list[Path] | None,
        typer.Option(
            "--log-dir",
            parser=log_dir_path,
            metavar="DIR",
            help="where `prenop --log-dir` wrote the patch logs (DIR/<path in the tree>.mcountrw.jsonl): once for "
            "both (each log given to the file whose output it is), or twice (A's, then B's)",
        ),
    ] = None,
) -> None:
    """Functions added, removed, moved between sections or changed in generation, and sites added,
    removed, moved, or changed in state, variant or record, matched by function name. Sites only
    an image's patch log knows take part, so a site a rewrite nopped and unrecorded reads as
    changed, not removed."""
    from rewriter.diff import diff_paths
    from rewriter.report import jsonfmt, md

    generations = _diff_generations(generation or [])
    addrs = _each_side("--mcount-addr", mcount_addr or [])
    for gen, addr in zip(generations, addrs, strict=True):
        check_mcount_addr(gen, addr)
    (found_a, errors_a), (found_b, errors_b) = _diff_sides(a, b)
    logs = _diff_logs(a, b, found_a, found_b, log or [], log_dir or [])
    files_a, files_b = [f.path for f in found_a], [f.path for f in found_b]
    check_mcount_addr_used(files_a, addrs[0])
    check_mcount_addr_used(files_b, addrs[1])
    check_report_output(output, [*files_a, *files_b, *logs.values()])
    result = diff_paths(a, b, files_a, files_b, generations, logs, workers(jobs), addrs)
    errors = list(dict.fromkeys([*errors_a, *errors_b, *result.errors]))  # a file on both sides: its line once
    print_errors(errors)
    if errors and not (result.images or result.only_a or result.only_b):  # nothing compared: no report
        raise typer.Exit(ExitCode.BAD_INPUT)
    if fmt is DiffFormat.JSON:
        text = json.dumps(jsonfmt.diff_json(result), separators=(",", ":")) + "\n"
    else:
        text = md.diff_markdown(result, None if show_all or output is not None else DIFF_ROWS)
    emit(text, output)
    bad_input_if(errors)
    findings_if(result.changed)


def _diff_sides(a: Path, b: Path) -> tuple[tuple[list[Found], list[str]], tuple[list[Found], list[str]]]:
    """The files of each side, and the lines of those that cannot be read; a side with nothing to
    compare is refused in one line, and no report is made."""
    from rewriter.batch import expand_named
    from rewriter.diff import check_pairable

    # what the system says (a link loop is no missing file)
    missing = [f"{path}: {not_a_file(path)}" for path in (a, b) if not path.exists()]
    if missing:  # both named when both are missing, one line each
        print_errors(missing)
        raise typer.Exit(ExitCode.BAD_INPUT)
    check_pairable(a, b)
    sides = expand_named([a]), expand_named([b])
    for found, errs in sides:
        if not found and errs:
            raise ImageError(errs[0])
    return sides


def _diff_logs(
    a: Path, b: Path, found_a: list[Found], found_b: list[Found], given: list[Path], dirs: list[Path]
) -> dict[Path, Path]:
    """Each file's log: ``--log`` (at most one for each of the two files), given to the file whose
    output it is (one that describes neither is refused, exit 2, naming the three hashes), else
    the logs under ``--log-dir`` (once: both sides look there, as ``--generation`` once is both
    images; twice: A's, then B's), else the logs beside the files."""
    from rewriter.log import read_header
    from rewriter.reading import read_regular

    if given and dirs:
        check_log_options(given[0], dirs[0])
    if len(dirs) > 2:
        raise ArgumentError("--log-dir: give it once (both sides) or twice (A's, then B's)")
    if len(dirs) == 2:
        return {**logs_for(found_a, None, dirs[0]), **logs_for(found_b, None, dirs[1])}
    if not given:
        return logs_for([*found_a, *found_b], None, dirs[0] if dirs else None)
    if a.is_dir() or b.is_dir() or len(given) > 2:
        raise ArgumentError("--log: give the logs of the two files (at most two), not of trees")
    try:
        shas = {p: hashlib.sha256(read_regular(p)).hexdigest() for p in (a, b)}
    except OSError as e:
        raise ImageError(f"{e.filename}: {e.strerror}") from None
    out = {}
    for log in given:
        header = read_header(log)
        if header is None:
            raise LogError(f"{log}: {NO_SUCH_FILE}")
        owner = next((p for p in (a, b) if header.describes(shas[p])), None)
        if owner is None:
            raise LogError(
                f"{log}: the log of neither file: its output has sha256 {header.output.sha256}, "
                f"{a} has {shas[a]}, {b} has {shas[b]}"
            )
        out[owner] = log
    return out


def _diff_generations(given: list[Generation]) -> Generations:
    """``--generation`` given 0, 1 (both images) or 2 times (A's, then B's)."""
    return _each_side("--generation", given)


def _each_side(option: str, given: list[T]) -> tuple[T | None, T | None]:
    """An option of ``diff`` given 0, 1 (both images) or 2 times (A's, then B's)."""
    if len(given) > 2:
        raise ArgumentError(f"{option}: give it once (both images) or twice (A's, then B's)")
    if not given:
        return (None, None)
    return (given[0], given[-1])
