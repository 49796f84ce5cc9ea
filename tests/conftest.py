"""Shared fixtures: the corpus and the committed fixture binaries.

Tests that need the corpus, the cross toolchain or qemu skip with a reason on a user's machine;
with MCOUNTRW_REQUIRE_TOOLS=1 (CI) the same condition fails the test instead.
"""

from __future__ import annotations

import json
import signal
import subprocess
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import pytest
from boot import Corpus, require_corpus
from click.testing import Result
from typer.testing import CliRunner

from rewriter.cli import app
from rewriter.prenop import Target

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "fixtures"


@pytest.fixture(scope="session")
def corpus() -> Corpus:
    return require_corpus()


@pytest.fixture(scope="session")
def manifest() -> dict:
    path = FIXTURES / "manifest.json"
    if not path.exists():
        pytest.fail("fixtures/manifest.json is missing: run fixtures/build.sh")
    return json.loads(path.read_text())


# -- the CLI in process, for the tests of its options and messages ----------------------------------


def invoke(*args: object) -> Result:
    """``mcountrw ARGS...`` in this process (paths and numbers given as they are)."""
    return CliRunner().invoke(app, [str(a) for a in args])


def assert_one_line(result: Result, code: int, label: str, *words: str) -> str:
    """``result`` exited ``code`` with one ``mcountrw: LABEL: ...`` line holding ``words``."""
    line = result.stderr.strip()
    assert result.exit_code == code and "\n" not in line, result.output
    assert line.startswith(f"mcountrw: {label}: ") and "Traceback" not in result.output, line
    for w in words:
        assert w in line, line
    return line


# -- names a file may hold, for the reports that quote them ------------------------------------------

# Function names that are markup in Markdown or HTML (gas takes any bytes in a quoted symbol).
HOSTILE_FUNCTIONS = (
    "</script><script>alert(1)</script>",
    "<!--<script>",
    "x`y``z*_[l](http://e)",
    "q'uote & <b>bold</b> &amp;",
    "a|b|c",
    "__strong__",
)
HOSTILE_SECTION = ".text.<sec>|`s`"


def hostile_object(tmp_path: Path) -> Path:
    """A little-endian mprofile object whose recorded functions have :data:`HOSTILE_FUNCTIONS`'
    names, the last of them in section :data:`HOSTILE_SECTION`. Each stores r0 after its site:
    an ``r0live`` warning, so that an audit names every function."""
    from boot import require_tool

    gcc = require_tool("powerpc64le-linux-gnu-gcc")
    lines = ["\t.abiversion 2", "\t.text"]
    for n, name in enumerate(HOSTILE_FUNCTIONS):
        if n == len(HOSTILE_FUNCTIONS) - 1:
            lines.append(f'\t.section "{HOSTILE_SECTION}","ax",@progbits')
        q = '"' + name + '"'
        lines += [
            "\t.p2align 4", f"\t.globl {q}", f"\t.type {q}, @function", f"{q}:",
            "\tmflr 0", "1:\tbl _mcount", '\t.pushsection __mcount_loc,"a",@progbits',
            "\t.p2align 3", "\t.8byte 1b", "\t.popsection", "\tstd 0, 16(1)", "\tblr", f"\t.size {q}, .-{q}",
        ]  # fmt: skip
    src, obj = tmp_path / "hostile.S", tmp_path / "hostile.o"
    src.write_text("\n".join(lines) + "\n")
    subprocess.run([gcc, "-c", str(src), "-o", str(obj)], check=True)
    return obj


# -- a vmlinux in miniature ---------------------------------------------------------------------------

# What mcountrw reads of a vmlinux, around one fixture object: kernel text bounds, the record table
# between __start_mcount_loc and __stop_mcount_loc in .init.data, a banner naming 7.2, and (linked
# -pie, as a relocatable kernel is) the table's slots in .rela.dyn's R_PPC64_RELATIVE rows.
_MINI_LDS = """ENTRY(leaf_add)
SECTIONS {
  . = 0xc000000000000000;
  _stext = .;
  .text : { *(.text) }
  _etext = .;
  . = ALIGN(0x1000);
  .init.text : {
    _sinittext = .;
    ftrace_check_for_weak_functions = .; LONG(0x4e800020); _mcount = .; LONG(0x4e800020);
    _einittext = .;
  }
  .rodata : { linux_banner = .; BYTE(0x4c) BYTE(0x69) BYTE(0x6e) BYTE(0x75) BYTE(0x78) BYTE(0x20)
              BYTE(0x76) BYTE(0x65) BYTE(0x72) BYTE(0x73) BYTE(0x69) BYTE(0x6f) BYTE(0x6e) BYTE(0x20)
              BYTE(0x37) BYTE(0x2e) BYTE(0x32) BYTE(0x2e) BYTE(0x31) BYTE(0x20) BYTE(0) *(.rodata*) }
  .data : { *(.data) *(.bss) }
  . = ALIGN(0x1000);
  .init.data : { __start_mcount_loc = .; *(__mcount_loc) __stop_mcount_loc = .; }
  /DISCARD/ : { *(.eh_frame) *(.note.GNU-stack) *(.comment) }
}
"""


def mini_vmlinux(tmp_path: Path, name: str = "vmlinux") -> Path:
    """fixtures/bin/prof-le.o (6 mprofile sites) linked as a little vmlinux (:data:`_MINI_LDS`)."""
    from boot import require_tool

    ld = require_tool("powerpc64le-linux-gnu-ld")
    script, out = tmp_path / "mini.lds", tmp_path / name
    script.write_text(_MINI_LDS)
    link = [ld, "-pie", "--no-dynamic-linker", "--no-warn-rwx-segments", "-T", str(script)]
    subprocess.run([*link, str(FIXTURES / "bin" / "prof-le.o"), "-o", str(out)], check=True)
    return out


# -- a bound on time -----------------------------------------------------------------------------------


class Hang(BaseException):
    """Raised by SIGALRM (:func:`time_bound`); a BaseException so that no ``except Exception`` in the
    code under test can swallow it."""


@contextmanager
def time_bound(seconds: float) -> Iterator[None]:
    """Raise :class:`Hang` in the block after ``seconds``: a run that does not end fails its test
    instead of stalling the suite."""

    def expire(signum: int, frame: object) -> None:
        raise Hang

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def prenop_targets(paths: Sequence[Path], **where: Any) -> list[Target]:
    """The targets prenop makes of ``paths`` (``rewriter.prenop.gather``), every input readable."""
    from rewriter.prenop import gather

    found = gather(paths, **where)
    assert not found.errors, found.errors
    return list(found.targets)


def policy_file(directory: Path, text: str) -> Path:
    """A policy file ``p.policy`` in ``directory`` holding ``text``."""
    path = directory / "p.policy"
    path.write_text(text)
    return path


SCAN_COLUMNS = ("call slot", "section", "variant", "file->boot", "file->load", "rec", "traceable", "function")


def unwrapped(text: str) -> str:
    """scan's or policy check's text with each line of prose that wrapped at 80 columns
    (``prose.wrapped``: continuations indented 4 columns or more past the line they continue)
    joined back into one line, as it was before wrapping; a table's rows are left as they are."""
    out: list[str] = []
    table = False
    for line in text.splitlines():
        if table and line.startswith("  ") and not line.startswith("  ... "):
            out.append(line)
            continue
        table = line.lstrip().startswith("call slot")
        lead = len(line) - len(line.lstrip(" "))
        if out and not table and line.strip() and lead >= len(out[-1]) - len(out[-1].lstrip(" ")) + 4:
            out[-1] += " " + line.strip()
        else:
            out.append(line)
    return "".join(line + "\n" for line in out)


def _said_above(above: list[str]) -> tuple[str, dict[str, tuple[str, str]]]:
    """The ``every site:`` line (its continuations indented under its first phrase) that ends right
    above a table's header, as one text (``""`` when there is none), and the ``every site with
    traceable A or B: file->boot X`` lines after it, as {traceable cell: (state column, X)}."""
    n = len(above)
    while n and (above[n - 1].startswith(" " * len("  every site: ")) or above[n - 1].startswith("  every site")):
        n -= 1
    logical: list[str] = []
    for line in above[n:]:
        if line.startswith("  every site"):
            logical.append(line.strip())
        else:
            logical[-1] += " " + line.strip()
    every, by_reason = "", {}
    for line in logical:
        if line.startswith("every site: "):
            every = line.removeprefix("every site: ")
        else:  # every site with traceable yes or NO weak-body: file->boot nopped->disabled
            cells, _, said = line.removeprefix("every site with traceable ").rpartition(": ")
            column, state = said.split(" ")
            by_reason.update({cell: (column, state) for cell in cells.split(" or ")})
    return every, by_reason


def scan_table(text: str) -> list[dict[str, str]]:
    """The site rows of every table in scan's text output, each as {column header: cell}, read
    by where the header line puts each column (the call slot is right-aligned; the function runs
    to the end of the row, less a ``  [stub area]`` after it, which is ``"[stub area]"``). A row
    has the columns its table shows, and ``"every site"``: the text of the lines above the table
    that say the columns it drops (the same for every site), or ``""``; a state said for its
    traceable cell (``every site with traceable NO unrecorded: file->boot nopped->nopped``) is
    in its column, as if the table showed it."""
    rows: list[dict[str, str]] = []
    lines = text.splitlines()
    for n, header in enumerate(lines):
        if not header.lstrip().startswith("call slot"):
            continue
        every, by_reason = _said_above(lines[:n])
        names = [c for c in SCAN_COLUMNS if f"  {c}" in header or header.lstrip().startswith(c)]
        starts = [header.index(c) for c in names]
        slot_end = header.index("call slot") + len("call slot")
        for line in lines[n + 1 :]:
            if not line.startswith("  ") or line.startswith("  ... "):
                break
            row = {"every site": every, "call slot": line[:slot_end].strip()}
            for c, start, end in zip(names[1:], starts[1:], [*starts[2:], None], strict=True):
                row[c] = line[start:end].strip() if end is not None else line[start:]
            if row.get("traceable") in by_reason:  # the state its traceable cell's line says
                column, state = by_reason[row["traceable"]]
                row[column] = state
            if "[stub area]" in header and "  [" in row["function"]:
                row["function"], stub = row["function"].rsplit("  [", 1)
                row["[stub area]"] = "[" + stub
            rows.append(row)
    return rows


def interrupted_when(args: Sequence[str], ready: Callable[[], bool], seconds: float = 60) -> tuple[int, str]:
    """Run ``mcountrw ARGS`` from this checkout as a user would (its own process group), send
    the group SIGINT once ``ready()`` holds (or the run ends, or ``seconds`` pass, whichever is
    first), and return its exit code and stderr. A Ctrl-C at a terminal reaches the whole group."""
    import os
    import sys
    import time

    root = Path(__file__).resolve().parent.parent
    proc = subprocess.Popen([sys.executable, "-m", "rewriter", *args], env=dict(os.environ, PYTHONPATH=str(root)),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)  # fmt: skip
    try:
        deadline = time.monotonic() + seconds
        while proc.poll() is None and time.monotonic() < deadline and not ready():
            time.sleep(0.02)
        os.killpg(proc.pid, signal.SIGINT)
        _, err = proc.communicate(timeout=seconds)
    finally:
        with suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    return proc.returncode, err
