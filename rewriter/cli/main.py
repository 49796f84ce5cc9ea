"""The `mcountrw` app, assembled in one place from the command modules, and its entry point.

The command modules define plain functions and know nothing of the app; this module imports them
and registers each under its name, so no module imports the one that imports it."""

from __future__ import annotations

import signal
from typing import Annotated

import typer

from rewriter import __version__
from rewriter.cli import audit, plans, prenop, rewrite, scan
from rewriter.cli.exits import Commands, Interrupted, interrupt, report

app = typer.Typer(
    name="mcountrw",  # CliRunner's program name too, so its messages read as the command's
    cls=Commands,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="See, change and prove the ftrace call sites (mflr r0; bl _mcount) of PowerPC64 kernels.",
)
policy_app = typer.Typer(no_args_is_help=True, help="Pre-nop policy files: check what each rule matches.")


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


app.command("scan")(scan.scan)
app.command("audit")(audit.audit)
app.command("diff")(audit.diff)
app.command("plan")(plans.plan)
app.command("check-plan")(plans.check_plan)
app.command("apply")(rewrite.apply)
app.command("nop")(rewrite.nop)
app.command("undo")(rewrite.undo)
app.command("verify")(rewrite.verify)
app.command("prenop")(prenop.prenop)
policy_app.command("check")(prenop.policy_check)
app.add_typer(policy_app, name="policy")


def run() -> None:
    """Console-script entry point (``mcountrw``, ``python3 -m rewriter``): exit codes as the table
    in :mod:`rewriter.cli.exits` says, and no traceback ever reaches the user.

    SIGTERM and Ctrl-C unwind like an exception, so the temporary files of an unfinished write are
    removed and no output is left half-written."""
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, interrupt)
    try:
        app(prog_name="mcountrw")
    except SystemExit:
        # The command is over (click ends every run with SystemExit). From here a late signal
        # finds nothing to protect; left to Python's shutdown, which puts back the default
        # handlers, it would kill a finished run with -SIGTERM instead of its exit code.
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, signal.SIG_IGN)
        raise
    except Interrupted as e:  # a signal while click starts or ends the run, outside Commands' guard
        raise SystemExit(report(e)) from None
