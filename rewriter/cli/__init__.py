"""The `mcountrw` command. This package is the only code that prints; nothing outside it imports it.

Each group of commands lives in its own module (``scan`` here; ``plans``, ``rewrite``, ``audit``,
``prenop``) and registers on :data:`app`; the modules are imported at the bottom of this file.

Exit codes (the contract): 0 success, 1 findings (verify mismatch, unsafe plan, no legal route,
anomalies at --fail-on level), 2 bad input (one line naming the file and the problem).
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, NoReturn

import typer

from rewriter import __version__
from rewriter.errors import RewriteError

if TYPE_CHECKING:
    from rewriter.generations import Generation

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="See, change and prove the ftrace call sites (mflr r0; bl _mcount) of PowerPC64 kernels.",
)

BAD_INPUT = 2
FINDINGS = 1


def fail(message: str, code: int = BAD_INPUT) -> NoReturn:
    typer.echo(f"mcountrw: error: {message}", err=True)
    raise typer.Exit(code)


def emit(text: str, output: Path | None) -> None:
    """Write ``text`` to ``output`` atomically, or to stdout."""
    if output is None:
        sys.stdout.write(text)
        sys.stdout.flush()
        return
    from rewriter.elf.writer import atomic_write

    try:
        atomic_write(output, text.encode())
    except RewriteError as e:
        fail(str(e))


def _version(value: bool) -> None:
    if value:
        typer.echo(f"mcountrw {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """mcountrw: scan, plan, check, rewrite and audit ftrace call sites."""


def parse_int(text: str | None, what: str) -> int | None:
    if text is None:
        return None
    try:
        return int(text, 0)
    except ValueError:
        fail(f"{what}: {text!r} is not a number (use 0x... for hex)")


def parse_generation(text: str | None, mcount_addr: int | None = None) -> Generation | None:
    """``--generation``: None (detect it from the image), or the generation named."""
    from rewriter.generations import Generation

    if text is None:
        return None
    names = [g.value for g in Generation]
    if text not in names:
        fail(f"--generation: {text!r} is not one of {', '.join(names)}")
    if mcount_addr is not None and text != Generation.MPROFILE.value:
        fail(f"--mcount-addr names _mcount, which only the mprofile generation calls (not {text})")
    return Generation(text)


GENERATION_HELP = "mprofile, patchable or ool: override the generation detected from the image (stripped images)"


# -- scan -----------------------------------------------------------------------------------


@app.command()
def scan(
    paths: Annotated[
        list[Path], typer.Argument(help="vmlinux, modules (.ko, .ko.xz/.gz/.zst), objects, or directories")
    ],
    *,
    fmt: Annotated[str, typer.Option("--format", help="table, json or csv")] = "table",
    output: Annotated[Path | None, typer.Option("-o", "--output", help="write here instead of stdout")] = None,
    jobs: Annotated[int, typer.Option("--jobs", "-j", help="worker processes (default: all cores)")] = 0,
    mcount_addr: Annotated[
        str | None, typer.Option("--mcount-addr", help="address of _mcount, for a stripped image")
    ] = None,
    show_all: Annotated[bool, typer.Option("--all", help="table: list every site, not the first 20")] = False,
    generation: Annotated[str | None, typer.Option("--generation", help=GENERATION_HELP)] = None,
) -> None:
    """Find every ftrace call site: its function, state in the file and after boot, and its record.

    Each image says its generation (mprofile <= 6.5, patchable 6.6-6.12, ool 6.13+), how many
    sites ftrace can trace after boot, and (ool) whether its stubs cover its records."""
    from functools import partial

    from rewriter.batch import default_jobs, expand, render_many
    from rewriter.report import scanfmt

    if fmt not in ("table", "json", "csv"):
        fail(f"--format: {fmt!r} is not one of table, json, csv")
    addr = parse_int(mcount_addr, "--mcount-addr")
    gen = parse_generation(generation, addr)
    files, errors = expand(paths)
    if fmt == "json":
        render = scanfmt.image_json_text
    elif fmt == "csv":
        render = scanfmt.csv_rows_text
    else:
        render = partial(scanfmt.table_text, limit=None if show_all or output is not None else 20)
    texts = []
    with progress(len(files), "scanning") as tick:
        # Each worker formats what it scanned: only text comes back (see rewriter.batch.render_many).
        for rendered in render_many(files, jobs or default_jobs(), render, addr, tick, gen):
            if rendered.text is not None:
                texts.append(rendered.text)
            else:
                errors.append(rendered.error or f"{rendered.path}: failed")
    for line in errors:
        typer.echo(f"mcountrw: error: {line}", err=True)
    if not texts:
        raise typer.Exit(BAD_INPUT)
    if fmt == "json":
        text = scanfmt.join_images_json(texts, errors, end="\n")
    else:
        text = (scanfmt.CSV_HEADER if fmt == "csv" else "") + "".join(texts)
    emit(text, output)
    if errors:
        raise typer.Exit(BAD_INPUT)


class progress:
    """A rich progress bar on stderr when it is a terminal and there is more than one file."""

    def __init__(self, total: int, what: str) -> None:
        self.total, self.what = total, what
        self.bar = None

    def __enter__(self):  # type: ignore[no-untyped-def]
        if self.total < 2 or not sys.stderr.isatty():
            return None
        from rich.console import Console
        from rich.progress import Progress

        self.bar = Progress(console=Console(stderr=True), transient=True)
        self.bar.start()
        task = self.bar.add_task(self.what, total=self.total)
        return lambda: self.bar.advance(task)  # type: ignore[union-attr]

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.stop()


def run() -> None:
    """Console-script entry point: no traceback ever reaches the user.

    A RewriteError is the user's input; anything else is a bug in mcountrw, still reported in one
    line (``MCOUNTRW_DEBUG=1`` shows the traceback). SIGTERM and Ctrl-C unwind like an exception,
    so the temporary files of an unfinished write are removed and no output is left half-written."""
    # mcountrw makes no BLAS call, and at numpy's import OpenBLAS starts a thread per core that
    # spins a while: 60 ms of CPU, 50 ms of serial start-up before a module tree's workers fork.
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, _interrupt)
    try:
        app()
    except SystemExit:
        # The command is over (click ends every run with SystemExit). From here a late signal
        # finds nothing to protect; left to Python's shutdown, which puts back the default
        # handlers, it would kill a finished run with -SIGTERM instead of its exit code.
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, signal.SIG_IGN)
        raise
    except RewriteError as e:
        typer.echo(f"mcountrw: error: {e}", err=True)
        sys.exit(BAD_INPUT)
    except Interrupted as e:
        typer.echo(f"mcountrw: interrupted by {e.name}: no output was left half-written", err=True)
        sys.exit(128 + e.signum)
    except Exception as e:  # the last line of defence: a bug, not the user's input
        if os.environ.get("MCOUNTRW_DEBUG"):
            raise
        typer.echo(f"mcountrw: error: internal error, please report: {type(e).__name__}: {e}", err=True)
        sys.exit(BAD_INPUT)


class Interrupted(BaseException):
    """SIGINT or SIGTERM. Not a KeyboardInterrupt, which click turns into a silent exit; a
    BaseException so that no ``except Exception`` stops it on its way out."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum
        self.name = signal.Signals(signum).name


def _interrupt(signum: int, frame: object) -> NoReturn:
    raise Interrupted(signum)


# Command modules register themselves on `app`; imported last because they import `app` from here.
from rewriter.cli import commands  # noqa: E402, F401
