"""The exception hierarchy. Library code raises these; only ``rewriter.cli.exits`` turns them into
exit codes (its ``EXIT_CODES`` table; the README's "Exit codes" lists it).

Messages name the file (or address) and say what was expected and what was found, ftrace-style:
``0xc000000000123450: expected 4bffa1d1 (bl) != found 60000000 (nop)``.
"""

from __future__ import annotations

from rewriter.prose import printable


class RewriteError(Exception):
    """Base of every error mcountrw reports to the user: the input is bad (exit 2), unless a
    subclass says otherwise (:class:`NoRoute`). Its message is one line (:func:`printable`)."""

    def __init__(self, *args: object) -> None:
        super().__init__(*(printable(a) if isinstance(a, str) else a for a in args))


class ImageError(RewriteError):
    """The input is not an ELF file mcountrw handles, or it is corrupt."""


class UnmappedAddress(ImageError):
    """An address or offset that no section or segment covers."""


class WordMismatch(RewriteError):
    """A compare-and-swap found a word other than the one the plan expects."""


class PlanRejected(RewriteError):
    """A request mcountrw refuses: a state a site cannot take, words the kernel would refuse at a
    recorded place, a plan write a site lacks the slot for."""


class NoRoute(PlanRejected):
    """The planner found no legal route for the sites: a finding (exit 1, in ``plan`` and ``apply``
    alike), not bad input."""


class NothingToDo(RewriteError):
    """A rewriting command that finds nothing to do for a reason other than "already done": no
    site at all in the file, or a selection that matches no site. A finding (exit 1), not bad
    input: the file is fine, but the change asked for cannot happen, and a run that reported
    success at changing nothing would hide that."""


class PlanFormatError(RewriteError):
    """A plan file that cannot be read, or is not a well-formed plan (JSON, fields, writes)."""


class ArgumentError(RewriteError):
    """An argument out of its range, or options that do not go together: in a call into the
    library (``check``'s ``tasks``) or on the command line (``--undo`` with ``--verify``)."""


class OtherRelease(ArgumentError):
    """A module built for another release than the vmlinux it is given with: not the kernel that
    loads it. Carries the module's release, by which a run of many such modules is told in one line."""

    def __init__(self, message: str, release: str) -> None:
        super().__init__(message)
        self.release = release


class Contradicted(ArgumentError):
    """A ``--generation`` that an image's own contents contradict (``files.refuse_contradicted_generation``)."""


class LogError(RewriteError):
    """A patch log that is truncated, edited, or for another file."""


class OutputError(RewriteError):
    """The output cannot be written (unwritable, same as input without --in-place, disk full)."""


class InternalError(Exception):
    """Something mcountrw itself got wrong ("this cannot happen"): a rewrite whose result does not
    read back as planned. Not a :class:`RewriteError` (those are the user's input, exit 2): the CLI
    exits 3 and asks for a report."""
