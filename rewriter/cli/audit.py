"""`mcountrw audit` and `mcountrw diff`: thin commands over rewriter.audit, rewriter.diff and the
report formats. Exit codes: 0 clean, 1 findings (anomalies at --fail-on level; for diff, any
difference, as diff(1) does), 2 bad input."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from rewriter.cli import BAD_INPUT, FINDINGS, app, emit, fail, parse_int, progress

if TYPE_CHECKING:
    from rewriter.audit import Audit
    from rewriter.diff import Generations

AUDIT_FORMATS = ("md", "json", "html", "sarif")
DIFF_FORMATS = ("md", "json")
FAIL_LEVELS = ("error", "warning", "note", "never")


@app.command()
def audit(
    paths: Annotated[list[Path], typer.Argument(help="vmlinux, modules, objects, or directories of them")],
    *,
    fmt: Annotated[str, typer.Option("--format", help="md, json, html or sarif")] = "md",
    output: Annotated[Path | None, typer.Option("-o", "--output", help="write here instead of stdout")] = None,
    fail_on: Annotated[
        str, typer.Option("--fail-on", help="exit 1 if anomalies at or above: error, warning, note, never")
    ] = "error",
    jobs: Annotated[int, typer.Option("--jobs", "-j", help="worker processes (default: all cores)")] = 0,
    mcount_addr: Annotated[
        str | None, typer.Option("--mcount-addr", help="address of _mcount, for a stripped image")
    ] = None,
) -> None:
    """Counts, anomalies and the mflr-nop safety of every site, per image and by subsystem."""
    from rewriter.audit import Severity, audit_files, default_jobs, fails
    from rewriter.batch import expand

    if fmt not in AUDIT_FORMATS:
        fail(f"--format: {fmt!r} is not one of {', '.join(AUDIT_FORMATS)}")
    if fail_on not in FAIL_LEVELS:
        fail(f"--fail-on: {fail_on!r} is not one of {', '.join(FAIL_LEVELS)}")
    addr = parse_int(mcount_addr, "--mcount-addr")
    files, errors = expand(paths)
    roots = [p for p in paths if p.is_dir()]
    with progress(len(files), "auditing") as tick:
        result = audit_files(files, roots, jobs or default_jobs(), addr, tick)
    errors += result.errors
    for line in errors:
        typer.echo(f"mcountrw: error: {line}", err=True)
    if not result.images:
        raise typer.Exit(BAD_INPUT)
    emit(_render_audit(result, fmt), output)
    if errors:
        raise typer.Exit(BAD_INPUT)
    level = None if fail_on == "never" else Severity(fail_on)
    if fails(result, level):
        raise typer.Exit(FINDINGS)


def _render_audit(result: Audit, fmt: str) -> str:
    from rewriter.report import html, jsonfmt, md, sarif

    if fmt == "json":
        return json.dumps(jsonfmt.audit_json(result), separators=(",", ":")) + "\n"
    if fmt == "sarif":
        return json.dumps(sarif.audit_sarif(result), indent=1) + "\n"
    if fmt == "html":
        return html.audit_html(result)
    return md.audit_markdown(result)


@app.command()
def diff(
    a: Annotated[Path, typer.Argument(help="the first image, or a tree of modules")],
    b: Annotated[Path, typer.Argument(help="the second image, or a tree of modules")],
    *,
    fmt: Annotated[str, typer.Option("--format", help="md or json")] = "md",
    output: Annotated[Path | None, typer.Option("-o", "--output", help="write here instead of stdout")] = None,
    show_all: Annotated[bool, typer.Option("--all", help="md: list every change, not the first 200")] = False,
    generation: Annotated[
        list[str] | None,
        typer.Option(
            "--generation",
            help="mprofile, patchable or ool, for stripped images: once for both, or twice (A's, then B's)",
        ),
    ] = None,
) -> None:
    """Functions added, removed, moved between sections or changed in generation, and sites added,
    removed, moved, or changed in state, variant or record, matched by function name."""
    from rewriter.batch import expand
    from rewriter.diff import diff_paths
    from rewriter.errors import RewriteError
    from rewriter.report import jsonfmt, md

    if fmt not in DIFF_FORMATS:
        fail(f"--format: {fmt!r} is not one of {', '.join(DIFF_FORMATS)}")
    generations = _diff_generations(generation or [])
    for path in (a, b):
        if not path.exists():
            fail(f"{path}: no such file or directory")
    if a.is_dir() != b.is_dir():
        fail(f"{a} and {b}: compare two files or two directories, not one of each")
    files_a, errors_a = expand([a]) if a.is_dir() else ([a], [])
    files_b, errors_b = expand([b]) if b.is_dir() else ([b], [])
    try:
        result = diff_paths(a, b, files_a, files_b, generations)
    except RewriteError as e:
        fail(str(e))
    errors = [*errors_a, *errors_b, *result.errors]
    for line in errors:
        typer.echo(f"mcountrw: error: {line}", err=True)
    if fmt == "json":
        text = json.dumps(jsonfmt.diff_json(result), separators=(",", ":")) + "\n"
    else:
        text = md.diff_markdown(result, None if show_all or output is not None else 200)
    emit(text, output)
    if errors:
        raise typer.Exit(BAD_INPUT)
    if result.changed:
        raise typer.Exit(FINDINGS)


def _diff_generations(given: list[str]) -> Generations:
    """``--generation`` given 0, 1 (both images) or 2 times (A's, then B's)."""
    from rewriter.generations import Generation

    names = [g.value for g in Generation]
    if len(given) > 2:
        fail("--generation: give it once (both images) or twice (A's, then B's)")
    for g in given:
        if g not in names:
            fail(f"--generation: {g!r} is not one of {', '.join(names)}")
    parsed = [Generation(g) for g in given]
    if not parsed:
        return (None, None)
    return (parsed[0], parsed[-1])
