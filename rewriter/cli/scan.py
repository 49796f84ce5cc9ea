"""`mcountrw scan`: every ftrace call site of vmlinux, modules and objects, as a table, JSON or CSV."""

from __future__ import annotations

import enum
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from rewriter.cli.common import (
    GenerationOption,
    Jobs,
    LogFile,
    McountAddr,
    OutputFile,
    check_mcount_addr,
    emit,
    logs_for,
    print_errors,
    progress,
    workers,
)
from rewriter.cli.exits import ExitCode, bad_input_if

if TYPE_CHECKING:
    from rewriter.sites import Scan


class ScanFormat(enum.Enum):
    TABLE = "table"
    JSON = "json"
    CSV = "csv"


TABLE_ROWS = 20  # the table on a terminal lists the first sites only (--all: every one)


def scan(
    paths: Annotated[
        list[Path], typer.Argument(help="vmlinux, modules (.ko, .ko.xz/.gz/.zst), objects, or directories")
    ],
    *,
    fmt: Annotated[ScanFormat, typer.Option("--format", help="the report's format")] = ScanFormat.TABLE,
    output: OutputFile = None,
    jobs: Jobs = 0,
    mcount_addr: McountAddr = None,
    show_all: Annotated[bool, typer.Option("--all", help="table: list every site, not the first 20")] = False,
    generation: GenerationOption = None,
    log: LogFile = None,
) -> None:
    """Find every ftrace call site: its function, state in the file and after boot, and its record.

    Each image says its generation (mprofile <= 6.5, patchable 6.6-6.12, ool 6.13+), how many
    sites ftrace can trace after boot, and (ool) whether its stubs cover its records. Sites that
    only the image's patch log knows (nopped and unrecorded by an earlier rewrite) are listed too,
    marked LOG (`"source": "log"` in JSON and CSV)."""
    from rewriter.batch import expand, render_many
    from rewriter.report import scanfmt

    check_mcount_addr(generation, mcount_addr)
    files, errors = expand(paths)
    render = _renderer(fmt, show_all or output is not None)
    logs = logs_for(files, log)
    if logs:
        render = partial(_render_logged, render=render, logs=logs)
    texts = []
    with progress(len(files), "scanning") as tick:
        # Each worker formats what it scanned: only text comes back (see rewriter.batch.render_many).
        for rendered in render_many(files, workers(jobs), render, mcount_addr, tick, generation):
            if rendered.text is not None:
                texts.append(rendered.text)
            else:
                errors.append(rendered.error or f"{rendered.path}: failed")
    print_errors(errors)
    if not texts:
        raise typer.Exit(ExitCode.BAD_INPUT)
    if fmt is ScanFormat.JSON:
        text = scanfmt.join_images_json(texts, errors, end="\n")
    else:
        text = (scanfmt.CSV_HEADER if fmt is ScanFormat.CSV else "") + "".join(texts)
    emit(text, output)
    bad_input_if(errors)


def _render_logged(result: Scan, render: Callable[[Scan], str], logs: dict[Path, Path]) -> str:
    """``render`` of the scan with its log's sites, in the worker that scanned it."""
    from rewriter.log import logged

    return render(logged(result, logs))


def _renderer(fmt: ScanFormat, every_row: bool) -> Callable[[Scan], str]:
    from rewriter.report import scanfmt

    if fmt is ScanFormat.JSON:
        return scanfmt.image_json_text
    if fmt is ScanFormat.CSV:
        return scanfmt.csv_rows_text
    return partial(scanfmt.table_text, limit=None if every_row else TABLE_ROWS)
