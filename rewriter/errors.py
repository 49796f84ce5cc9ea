"""The exception hierarchy. Library code raises these; only ``cli.py`` turns them into exit codes.

Messages name the file (or address) and say what was expected and what was found, ftrace-style:
``0xc000000000123450: expected 4bffa1d1 (bl), found 60000000 (nop)``.
"""

from __future__ import annotations


class RewriteError(Exception):
    """Base of every error mcountrw reports to the user."""


class ImageError(RewriteError):
    """The input is not an ELF file mcountrw handles, or it is corrupt."""


class UnmappedAddress(ImageError):
    """An address or offset that no section or segment covers."""


class WordMismatch(RewriteError):
    """A compare-and-swap found a word other than the one the plan expects."""


class PlanRejected(RewriteError):
    """No legal route exists, or the model checker found a bad interleaving."""


class NoRoute(PlanRejected):
    """The planner found no legal route for a rewrite's sites: a finding (exit 1, as ``plan`` says
    it), not bad input."""


class LogError(RewriteError):
    """A patch log that is truncated, edited, or for another file."""


class OutputError(RewriteError):
    """The output cannot be written (unwritable, same as input without --in-place, disk full)."""


class InternalError(Exception):
    """Something mcountrw itself got wrong: a rewrite whose result does not read back as planned.
    Not a :class:`RewriteError` (those are the user's input, exit 2): the CLI asks for a report."""
