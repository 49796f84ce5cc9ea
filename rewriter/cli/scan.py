"""`mcountrw scan`: every ftrace call site of vmlinux, modules and objects, as a table, JSON or CSV."""

from __future__ import annotations

import enum
from collections.abc import Callable, Sequence
from functools import partial
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
    check_mcount_addr,
    check_mcount_addr_used,
    check_report_output,
    emit,
    logs_for,
    print_errors,
    print_warnings,
    progress,
    workers,
)
from rewriter.cli.exits import ExitCode, bad_input_if

if TYPE_CHECKING:
    from rewriter.report.scanfmt import SharedNote, Totals
    from rewriter.sites import Scan

T = TypeVar("T")

# What a worker sends back for one image: its text, for the table the counts of its summary line
# (None in JSON and CSV, which carry their own and must not change), and for the table of several
# images the notes it left for the end to say once (scanfmt.table_text_shared).
Piece = tuple[str, "Totals | None", "tuple[SharedNote, ...]"]


class ScanFormat(enum.Enum):
    TABLE = "table"
    JSON = "json"
    CSV = "csv"


TABLE_ROWS = 20  # the table on a terminal lists the first sites only (--all: every one)
AllSites = Annotated[
    bool, typer.Option("--all", help=f"table: list every site, not the first {TABLE_ROWS} (-o always lists every one)")
]


def scan(
    paths: Annotated[
        list[Path],
        typer.Argument(
            help="vmlinux, modules (.ko, .ko.xz/.gz/.zst), objects, or directories (their PowerPC64 ELF files)"
        ),
    ],
    *,
    fmt: Annotated[ScanFormat, typer.Option("--format", help="the report's format")] = ScanFormat.TABLE,
    output: OutputFile = None,
    jobs: Jobs = 0,
    mcount_addr: McountAddr = None,
    show_all: AllSites = False,
    generation: GenerationOption = None,
    log: LogFile = None,
    log_dir: ReadLogDir = None,
) -> None:
    """Find every ftrace call site: its function, state in the file and after boot, and its record.

    Each image says its generation (mprofile <= 6.5 or an older compiler's, patchable 6.6-6.12,
    ool 6.13+), how many sites ftrace can trace after boot, and (ool) whether its stubs cover its
    records. Sites that only the image's patch log knows (their records dropped by an earlier
    rewrite) are listed too, marked LOG (`"source": "log"` in JSON and CSV); the logs are looked
    for beside each image, or under --log-dir where `prenop --log-dir` wrote them. The table of
    several files closes with the notes that say the same of many of them, said once, and a `total:`
    line: images, sites, traceable sites, records, and errors if any file failed."""
    from rewriter.batch import expand_noting, render_many

    check_mcount_addr(generation, mcount_addr)
    found, errors, warnings = expand_noting(paths)
    print_warnings(warnings)
    files = [f.path for f in found]
    check_mcount_addr_used(files, mcount_addr)
    render = _renderer(fmt, show_all or output is not None, _closes_with_total(fmt, len(files)))
    logs = logs_for(found, log, log_dir)
    check_report_output(output, [*files, *logs.values()])
    if logs:
        render = partial(_render_logged, render=render, logs=logs)
    texts = []
    totals = []
    shared = []
    with progress(len(files), "scanning") as tick:
        # Each worker formats what it scanned: only text and counts come back (rewriter.batch.render_many).
        for rendered in render_many(files, workers(jobs), render, mcount_addr, tick, generation):
            if rendered.report is not None:
                texts.append(rendered.report[0])
                totals.append(rendered.report[1])
                shared.append(rendered.report[2])
            else:
                errors.append(rendered.error or f"{rendered.path}: failed")
    print_errors(errors)
    if not texts:
        raise typer.Exit(ExitCode.BAD_INPUT)
    _warn_if_no_rows(fmt, texts)
    emit(_report_text(fmt, texts, (totals, shared), errors, len(files)), output)
    bad_input_if(errors)


def _report_text(
    fmt: ScanFormat,
    texts: list[str],
    counts: tuple[list[Totals | None], list[tuple[SharedNote, ...]]],
    errors: list[str],
    files: int,
) -> str:
    """The whole report from each image's text: JSON's one object, CSV's header and rows, or the
    tables and, of several files, the notes said once for them all and their total line."""
    from rewriter.report import scanfmt

    if fmt is ScanFormat.JSON:
        return scanfmt.join_images_json(texts, errors, end="\n")
    text = (scanfmt.CSV_HEADER if fmt is ScanFormat.CSV else "") + "".join(texts)
    if _closes_with_total(fmt, files):
        text += "".join(line + "\n" for line in scanfmt.shared_lines(counts[1]))
        text += _total_line(counts[0], len(errors))
    return text


def _warn_if_no_rows(fmt: ScanFormat, texts: Sequence[str]) -> None:
    """Say why a CSV holds its header only: no site in any file read (the table gives each one's
    reason: built without ftrace, or nopped, its records dropped, and read without its patch log)."""
    from rewriter.prose import counted

    if fmt is ScanFormat.CSV and not any(texts):  # one row per site: the header alone said nothing
        files = counted(len(texts), "file")
        typer.echo(
            f"mcountrw: warning: no ftrace call site in the {files} read: the CSV has its header only "
            "(--format table says why)",
            err=True,
        )


def _closes_with_total(fmt: ScanFormat, files: int) -> bool:
    """Only a table, and only of several files: one image's summary line is its own total, and
    JSON and CSV stay as they were (other tools parse them and add up what they need)."""
    return fmt is ScanFormat.TABLE and files > 1


def _total_line(totals: list[Totals | None], errors: int) -> str:
    """The table's closing line over several files, added up from the counts each worker sent
    back with its text (not parsed out of the text). Also when only one of them could be read:
    the line then says how many errors the counts leave out."""
    from rewriter.prose import wrapped
    from rewriter.report import scanfmt

    line = scanfmt.total_line(scanfmt.add_totals(t for t in totals if t is not None), errors)
    return "".join(part + "\n" for part in wrapped(line))


def _render_logged(result: Scan, render: Callable[[Scan], T], logs: dict[Path, Path]) -> T:
    """``render`` of the scan with its log's sites, in the worker that scanned it."""
    from rewriter.log import logged

    return render(logged(result, logs))


def _renderer(fmt: ScanFormat, every_row: bool, several: bool) -> Callable[[Scan], Piece]:
    """What each worker makes of an image; ``several``: the table of several images, whose
    notes that say the same of each are said once at its end."""
    from rewriter.report import scanfmt

    if fmt is ScanFormat.JSON:
        return partial(_uncounted, render=scanfmt.image_json_text)
    if fmt is ScanFormat.CSV:
        return partial(_uncounted, render=scanfmt.csv_rows_text)
    limit = None if every_row else TABLE_ROWS
    if several:
        return partial(scanfmt.table_text_shared, limit=limit)
    return partial(_unshared, limit=limit)


def _unshared(result: Scan, limit: int | None) -> Piece:
    """One image's table: every note under it."""
    from rewriter.report import scanfmt

    return (*scanfmt.table_text_totals(result, limit), ())


def _uncounted(result: Scan, render: Callable[[Scan], str]) -> Piece:
    """``render``'s text, with no counts: only the table closes with a total line."""
    return render(result), None, ()
