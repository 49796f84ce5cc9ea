"""`mcountrw prenop` (a policy over whole trees, undo, verify) and `mcountrw policy check`."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from rewriter.cli import BAD_INPUT, FINDINGS, GENERATION_HELP, app, emit, fail, parse_generation, progress
from rewriter.errors import RewriteError

if TYPE_CHECKING:
    from rewriter.generations import Generation
    from rewriter.policy import Policy, Tally
    from rewriter.prenop import Settings

policy_app = typer.Typer(no_args_is_help=True, help="Pre-nop policy files: check what each rule matches.")
app.add_typer(policy_app, name="policy")

Paths = Annotated[
    list[Path],
    typer.Argument(help="vmlinux, modules (.ko[.xz|.gz|.zst]), or directories (every module below them)"),
]


@app.command()
def prenop(
    paths: Paths,
    *,
    policy: Annotated[Path | None, typer.Option("--policy", help="the policy file (see docs/prenop.md)")] = None,
    in_place: Annotated[bool, typer.Option("--in-place", help="replace each file (atomically, once complete)")] = False,
    output: Annotated[
        Path | None,
        typer.Option("-o", "--output", help="output directory mirroring the inputs (or, for one file, the file)"),
    ] = None,
    log_dir: Annotated[
        Path | None,
        typer.Option("--log-dir", help="patch logs go here, mirroring the tree (default: beside each file)"),
    ] = None,
    jobs: Annotated[int, typer.Option("--jobs", "-j", help="worker processes (default: all cores)")] = 0,
    strip_signature: Annotated[
        bool, typer.Option("--strip-signature", help="drop the signature of rewritten signed modules")
    ] = False,
    sign_key: Annotated[Path | None, typer.Option("--sign-key", help="re-sign rewritten modules with this key")] = None,
    sign_cert: Annotated[Path | None, typer.Option("--sign-cert", help="...and this X.509 certificate")] = None,
    hash_name: Annotated[
        str, typer.Option("--hash", help="signature digest: sha256, sha384, sha512, sha224")
    ] = "sha256",
    undo: Annotated[bool, typer.Option("--undo", help="restore every file from its patch log")] = False,
    verify: Annotated[
        bool, typer.Option("--verify", help="check every file against its patch log; writes nothing")
    ] = False,
    against: Annotated[
        Path | None, typer.Option("--against", help="--verify: the pristine tree (or file) to compare with")
    ] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="decide and plan every file; write nothing")] = False,
    replace_stale_logs: Annotated[
        bool,
        typer.Option("--replace-stale-logs", help="a file that fits neither side of its old log is a new input"),
    ] = False,
    report: Annotated[Path | None, typer.Option("--report", help="also write a JSON report of every file")] = None,
    reproducible: Annotated[
        bool,
        typer.Option(
            "--reproducible",
            help="accepted for build scripts: outputs and logs carry no timestamps, so every run is reproducible",
        ),
    ] = False,
) -> None:
    """Apply a keep/nop policy to vmlinux and whole module trees, with one patch log per file.

    Sites the policy nops become `nop; nop` and lose their kernel records (--drop-records), so the
    kernel boots without an ftrace bug. Idempotent, reproducible, exactly undoable (--undo).
    """
    from rewriter import prenop as P
    from rewriter.batch import default_jobs

    if undo and verify:
        fail("give --undo or --verify, not both")
    if against is not None and not verify:
        fail("--against goes with --verify")
    if (sign_key is None) != (sign_cert is None):
        fail("--sign-key and --sign-cert go together")
    if sign_key is not None and strip_signature:
        fail("give --sign-key/--sign-cert (re-sign) or --strip-signature, not both")
    if not (undo or verify) and policy is None:
        fail("--policy FILE is required (or --undo / --verify)")
    if (undo or verify) and (policy is not None or sign_key is not None or strip_signature):
        fail("--undo and --verify take no --policy or signing options: the logs say what was done")
    if not (verify or dry_run) and not in_place and output is None:
        fail("no output: give --in-place or -o OUT (or --dry-run)")
    if verify and (in_place or output is not None):
        fail("--verify writes nothing: drop --in-place / -o")
    try:
        ts = P.targets(
            paths, output=output, in_place=in_place, log_dir=log_dir, against=against, logs_beside_source=undo or verify
        )
    except RewriteError as e:
        fail(str(e))
    if not ts:
        fail(f"no vmlinux or module found in {', '.join(map(str, paths))}")
    workers = jobs or default_jobs()
    start = time.monotonic()
    if undo:
        with progress(len(ts), "undoing") as tick:
            reports = P.undo(ts, workers, tick, dry_run)
        header = f"mcountrw prenop --undo: {len(ts)} files"
    elif verify:
        with progress(len(ts), "verifying") as tick:
            reports = P.verify(ts, workers, tick)
        header = f"mcountrw prenop --verify: {len(ts)} files"
    else:
        assert policy is not None  # checked above
        settings = _settings(policy, strip_signature, sign_key, sign_cert, hash_name, dry_run, replace_stale_logs)
        with progress(len(ts), "pre-nopping") as tick:
            reports = P.run(ts, settings, workers, tick)
        header = f"mcountrw prenop: policy {policy} (sha256 {settings.policy.sha256[:12]}), {len(ts)} files" + (
            " (dry run: nothing written)" if dry_run else ""
        )
    seconds = time.monotonic() - start
    for r in reports:
        if r.status is P.Status.FAILED:
            typer.echo(f"mcountrw: error: {r.message}", err=True)
        elif r.status is P.Status.MISMATCH:
            typer.echo(f"MISMATCH: {r.rel}: {r.message}", err=True)
    typer.echo("\n".join([header, *_summary(reports, undo or verify)]))
    for line in _notes(reports, undo, verify):
        typer.echo(line)
    sys.stdout.flush()
    typer.echo(f"done in {seconds:.1f} s with {workers} worker(s)", err=True)
    if report is not None:
        emit(json.dumps(_report_json(reports, policy, header), indent=1, sort_keys=True) + "\n", report)
    if any(r.status is P.Status.FAILED for r in reports):
        raise typer.Exit(BAD_INPUT)
    if any(r.status is P.Status.MISMATCH for r in reports) or any(r.left_recorded for r in reports):
        raise typer.Exit(FINDINGS)


def _settings(
    policy: Path, strip: bool, key: Path | None, cert: Path | None, hash_name: str, dry_run: bool, replace_stale: bool
) -> Settings:
    from rewriter import policy as pol
    from rewriter.prenop import Settings
    from rewriter.sign import SigningKey

    assert (key is None) == (cert is None)
    signing = None
    try:
        rules = pol.load(policy)
        if key is not None and cert is not None:
            signing = SigningKey(key, cert, hash_name)
            signing.load()  # refuse a bad key or certificate before any file is touched
    except RewriteError as e:
        fail(str(e))
    return Settings(rules, strip, signing, dry_run, replace_stale)


def _summary(reports: Sequence[Any], logs_only: bool) -> list[str]:
    from rewriter.prenop import Status

    rows: list[tuple[str, ...]] = [("status", "files", "sites nopped", "sites kept")]
    for status in Status:
        rs = [r for r in reports if r.status is status]
        if rs:
            nopped, kept = sum(r.nopped for r in rs), sum(r.kept for r in rs)
            rows.append((status.value, f"{len(rs):,}", f"{nopped:,}", f"{kept:,}"))
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


def _notes(reports: Sequence[Any], undo: bool, verify: bool) -> list[str]:
    from rewriter.prenop import Status

    out = []
    signatures: dict[str, int] = {}
    for r in reports:
        if r.signature:
            signatures[r.signature] = signatures.get(r.signature, 0) + 1
    if signatures:
        out.append("module signatures: " + ", ".join(f"{n:,} {what}" for what, n in sorted(signatures.items())))
    left = [r for r in reports if r.left_recorded]
    if left:
        out.append(
            f"warning: {sum(r.left_recorded for r in left):,} sites in {len(left)} files that the policy nops kept "
            "their records: the kernel will still patch them (docs/prenop.md). First: " + left[0].rel
        )
    unplaced = [r for r in reports if r.unplaced_records]
    if unplaced:
        out.append(
            f"warning: {sum(r.unplaced_records for r in unplaced):,} records in {len(unplaced)} files point at no "
            "site mcountrw recognises, and were left alone. First: " + unplaced[0].rel
        )
    done = [r for r in reports if r.status is not Status.FAILED]
    if not undo and not verify and done and all(r.status in (Status.UNCHANGED, Status.NOTHING) for r in done):
        out.append(f"nothing changed: all {len(done):,} files already match the policy")
    if undo and done and all(r.status in (Status.ORIGINAL, Status.NO_LOG) for r in done):
        out.append("nothing changed: every file is already its original")
    return out


def _report_json(reports: Sequence[Any], policy: Path | None, header: str) -> dict[str, Any]:
    return {
        "format": "mcountrw-prenop-report",
        "version": 1,
        "summary": header,
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


@policy_app.command("check")
def policy_check(
    policy_file: Annotated[Path, typer.Argument(metavar="POLICY", help="the policy file")],
    images: Annotated[list[Path], typer.Argument(metavar="IMAGE...", help="vmlinux, modules or directories")],
    *,
    jobs: Annotated[int, typer.Option("--jobs", "-j", help="worker processes (default: all cores)")] = 0,
    generation: Annotated[str | None, typer.Option("--generation", help=GENERATION_HELP)] = None,
) -> None:
    """Show what each rule matches (sites, the sites it decides, a few names), and what keeping and
    nopping mean for the kernel's generation; warn about rules that match nothing or are always
    overridden (exit 1 if there are any)."""
    from rewriter import policy as pol
    from rewriter.batch import default_jobs, scan_many
    from rewriter.elf.image import Kind
    from rewriter.prenop import targets
    from rewriter.report.scanfmt import boot_of, generation_of, untraceable

    gen = parse_generation(generation)
    try:
        rules = pol.load(policy_file)
        files = [t.source for t in targets(images, output=None, in_place=False, log_dir=None)]
    except RewriteError as e:
        fail(str(e))
    tally = pol.Tally(rules)
    errors = []
    with progress(len(files), "scanning") as tick:
        for outcome in scan_many(files, jobs or default_jobs(), None, tick, gen):
            if outcome.scan is None:
                errors.append(outcome.error or f"{outcome.path}: failed")
                continue
            sc = outcome.scan
            module = pol.module_name(outcome.path) if sc.kind is Kind.MODULE else None
            boot = boot_of(sc)
            facts = []
            for s in sc.sites:
                why = untraceable(s, boot)
                facts.append(pol.SiteFacts(s.function, s.section, None if why is None else why.value))
            tally.add_file(module, facts, generation_of(sc))
    for line in errors:
        typer.echo(f"mcountrw: error: {line}", err=True)
    typer.echo("\n".join(_check_lines(policy_file, rules, tally)))
    warnings = tally.warnings()
    for w in warnings:
        typer.echo(f"warning: {w}")
    if errors:
        raise typer.Exit(BAD_INPUT)
    if warnings:
        raise typer.Exit(FINDINGS)


def _check_lines(policy_file: Path, rules: Policy, tally: Tally) -> list[str]:
    """The header (files per generation), one row per rule, and what the verdicts mean."""
    from rewriter import policy as pol

    total = sum(tally.verdicts.values())
    gens = [f"{g.value} {n:,}" for g, n in sorted(tally.generations.items(), key=_gen_key) if g is not None]
    if tally.generations[None]:
        gens.append(f"{tally.generations[None]:,} with no sites")
    lines = [
        f"policy {policy_file}: default {rules.default.value}, {len(rules.rules)} rules; "
        f"{tally.files:,} files ({', '.join(gens)}), {total:,} sites"
    ]
    rows: list[tuple[str, ...]] = [("line", "rule", "matches", "decides", "examples")]
    for use in tally.uses():
        line = str(use.rule.line) if use.rule else ""
        text = str(use.rule) if use.rule else f"default {rules.default.value}"
        rows.append((line, text, f"{use.matched:,}", f"{use.decided:,}", ", ".join(use.examples)))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    for r in rows:
        cells = (r[0].rjust(widths[0]), r[1].ljust(widths[1]), r[2].rjust(widths[2]), r[3].rjust(widths[3]), r[4])
        lines.append("  " + "  ".join(cells).rstrip())
    keep, nop = tally.verdicts[pol.Verb.KEEP], tally.verdicts[pol.Verb.NOP]
    not_traceable = ", ".join(f"{n:,} {why}" for why, n in sorted(tally.kept_untraceable.items()))
    lines.append(
        f"result: keep {keep:,} sites ({tally.kept_traceable:,} traceable after boot"
        + (f"; not traceable anyway: {not_traceable}" if not_traceable else "")
        + f"), nop {nop:,} (untraceable: records dropped)"
    )
    for g, n in sorted(tally.nopped.items(), key=_gen_key):
        meaning = "the records are dropped" if g is None else pol.NOP_MEANS[g]
        lines.append(f"  nop on {'unknown' if g is None else g.value} ({n:,} sites): {meaning}")
    return lines


def _gen_key(item: tuple[Generation | None, int]) -> str:
    return "" if item[0] is None else str(item[0].value)
