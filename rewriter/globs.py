"""ftrace's globs: what a name written to set_ftrace_filter selects, as the kernel's glob_match()
(lib/glob.c) matches it. Policies (``rewriter.policy``) and the rewrite commands' ``--only`` and
``--exclude`` (``rewriter.rewrite``) both select functions by them, so that one pattern means one set
of functions whichever command reads it, and the set the kernel's filter would take."""

from __future__ import annotations

import re


def ftrace_glob(glob: str) -> re.Pattern[str]:
    """The kernel's glob_match() (lib/glob.c) as a regex for ``fullmatch``: ``*``, ``?``,
    ``[...]`` (``!`` complements; a range ``a-b``; a ``]`` first is a member; unclosed, the ``[``
    is itself), and ``\\`` escaping the next character (one at the end escapes the string's end).
    Python's fnmatch differs on ``\\``: it is a literal there."""
    out = []
    i = 0
    while i < len(glob):
        ch = glob[i]
        i += 1
        if ch == "*":
            out.append(".*")
        elif ch == "?":
            out.append(".")
        elif ch == "\\":
            out.append(re.escape(glob[i : i + 1]))
            i += 1
        elif ch == "[" and (cls := _glob_class(glob, i)) is not None:
            out.append(cls[0])
            i = cls[1]
        else:
            out.append(re.escape(ch))
    return re.compile("".join(out), re.DOTALL)


def _glob_class(glob: str, start: int) -> tuple[str, int] | None:
    """The class opened by the ``[`` before ``start``, as a regex, and where the glob goes on;
    None when glob_match() finds it malformed (unclosed) and takes the ``[`` literally."""
    inverted = glob[start : start + 1] == "!"
    i = start + inverted
    spans = []
    while True:  # the first span may begin with ']'
        if i >= len(glob):
            return None
        low = high = glob[i]
        i += 1
        if glob[i : i + 1] == "-" and glob[i + 1 : i + 2] != "]":
            if i + 1 >= len(glob):
                return None
            high = glob[i + 1]
            i += 2
        if low <= high:  # glob_match() tests low <= c <= high: a reversed range holds nothing
            spans.append(re.escape(low) if low == high else f"{re.escape(low)}-{re.escape(high)}")
        if i >= len(glob):
            return None
        if glob[i] == "]":
            break
    if not spans:
        return ("." if inverted else "(?!)"), i + 1
    return f"[{'^' if inverted else ''}{''.join(spans)}]", i + 1
