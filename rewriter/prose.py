"""Text for people: names from files and the command line made safe to print, and counts that read
as sentences. No imports, so that any layer (``rewriter.errors`` too) may use it."""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple


class Said(NamedTuple):
    """A text said of one thing, and of none or several: ``agreeing(n, *said)`` picks."""

    one: str
    many: str


def agreeing(n: int, one: str, many: str) -> str:
    """``one`` said of a single thing, ``many`` of none or several: the words of a sentence that
    change with the number of what it counts (``it``/``them``, ``is``/``are``, a whole clause).
    The one place that decides which; a caller never writes ``if n == 1``."""
    return one if n == 1 else many


def counted(n: int, noun: str, plural: str | None = None) -> str:
    """``1 site``, ``0 sites``, ``2 sites``; ``plural`` for a noun that takes more than an s
    (``1 entry``, ``2 entries``)."""
    return f"{n} {agreeing(n, noun, plural or noun + 's')}"


def and_more(n: int, noun: str) -> str:
    """`` (and 2 more files)``, said after the first of ``n + 1`` things a line names; ``""`` when
    it names them all."""
    return f" (and {counted(n, 'more ' + noun)})" if n else ""


def listed(items: Sequence[str]) -> str:
    """``a``, ``a and b``, ``a, b and c``: things a sentence names in a row."""
    return items[-1] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def with_article(word: str) -> str:
    """``an ool``, ``a patchable``: a word after its indefinite article."""
    return f"{'an' if word[:1] in 'aeiou' else 'a'} {word}"


def printable(text: str) -> str:
    """``text`` with each character that is not printable (a newline, a tab, the ESC of a terminal
    escape sequence) written as its Python escape, ``\\n`` or ``\\x1b``: what a message or a
    report quotes from a file (its section and symbol names) or from the command line (paths) must
    not break a line nor drive the terminal, and a corrupt or hostile string table can hold any
    byte. Printable text, ASCII or not, is left alone: escaping twice changes nothing."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def json_problem(error: ValueError | RecursionError) -> str:
    """Why text is not JSON mcountrw can read, in words: besides a syntax error (its own message),
    Python's json refuses nesting past the recursion limit and integers past its digit limit,
    both of which an edited log or plan may hold."""
    if isinstance(error, RecursionError):
        return "nested too deeply"
    if "integer string conversion" in str(error):
        return "a number with too many digits"
    return str(error)


WIDTH = 80  # the terminal that text for people is laid out for
HANGING = "    "  # what a wrapped line's continuations start with, past the first line's own indent


def packed(first: str, pieces: Sequence[str], indent: str, width: int = WIDTH) -> list[str]:
    """``first``, then ``pieces`` one space apart, packed into lines of at most ``width`` columns,
    each after the first starting with ``indent``. A piece is never split (a line holds at least
    one, and one longer than a line runs past it): a path, a symbol name or a table's phrase stays
    whole, and grep finds it. A line's first piece that ends in a colon (a label) takes the next
    piece with it. A line of spaces alone (an indent) takes its first piece with no
    space between. The one place that wraps text for people (:func:`wrapped` too)."""
    lines = [first]
    bare = True  # the last line holds no piece yet, or a label alone: the next goes on it, whatever its length
    for piece in pieces:
        if not bare and len(lines[-1]) + 1 + len(piece) > width:
            lines.append(indent)
        lines[-1] += f" {piece}" if lines[-1].strip() else piece
        # a label ("warning:") left alone at a line's end, its path on the next, reads as two things
        bare = not lines[-1].strip() or (lines[-1].strip() == piece and piece.endswith(":"))
    return lines


def wrapped(text: str, keep: int = 0, hanging: str = HANGING, width: int = WIDTH) -> list[str]:
    """A line of prose as lines of at most ``width`` columns, broken at spaces, its continuations
    indented by ``hanging`` past the line's own indent. The first ``keep`` characters (a path and
    its colon, so that grep by file name finds the line) are never broken."""
    lead = len(text) - len(text.lstrip(" "))
    start = max(keep, lead)
    rest = text[start:]
    words = (rest[1:] if start > lead and rest.startswith(" ") else rest).split(" ")
    return packed(text[:start], words, " " * lead + hanging, width)
