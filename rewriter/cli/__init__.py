"""The `mcountrw` command. This package is the only code that prints; nothing outside it imports it.

* :mod:`~rewriter.cli.main` assembles the app from the command modules (each imported only when
  its command runs) and holds ``run_process``, the entry point (``run``: the same without ending the process);
* :mod:`~rewriter.cli.exits` is the exit-code table (0 success, 1 findings, 2 bad input, 3 internal
  error), applied to every command however the app is called;
* :mod:`~rewriter.cli.common` holds the option types and helpers the commands share;
* the commands: :mod:`~rewriter.cli.scan`, :mod:`~rewriter.cli.audit` (and ``diff``),
  :mod:`~rewriter.cli.plans` (``plan``, ``check-plan``), :mod:`~rewriter.cli.rewrite` (``apply``,
  ``nop``, ``undo``, ``verify``), :mod:`~rewriter.cli.prenop` (and ``policy check``).

``rewriter.cli.app`` is the whole app (every command registered, for typer's ``CliRunner``), built
when it is first asked for: the entry point never builds it.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

# mcountrw makes no BLAS call, and at numpy's import OpenBLAS starts a thread per core that spins a
# while: 60 ms of CPU, 50 ms of serial start-up before a module tree's workers fork. Set before any
# command module (and so numpy) is imported.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

from rewriter.cli.main import full_app, run, run_process

if TYPE_CHECKING:
    import typer

__all__ = ["app", "run", "run_process"]


def __getattr__(name: str) -> typer.Typer:
    if name == "app":
        return full_app()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
