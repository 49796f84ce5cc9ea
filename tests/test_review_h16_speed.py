"""The patch log, byte for byte: work on the speed of ``nop`` (issue 9: a vmlinux in 1.0 s, the log
about half of it) must not change a byte of what a rewrite writes.

The expected logs in tests/data/h16-speed/ were written once by the OLD code (commit 0d61678,
before any of that work; the commands are in each test's parameters, run from the directory that
holds the fixture copied as ``in``), not by the code under test: they are the reference any faster
code must reproduce. They cover each kind of line a rewrite writes: word writes with a branch's
text at an address (``bl 0x...``, old and new) and without one (relocatable: ``bl .+0``), bytes
lines, relocation lines, barriers, and sites lines whose columns refer to edits or write the facts
out (a round trip back from the log). The header also pins the output (its sha256). Regenerate
them only for a deliberate change of the log format, from the code before it.

The tool's version is the one field not compared as it stands (a release changes it and nothing
else); the footer is checked by its own rule (line count and sha256 of all before it), computed here."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
from conftest import FIXTURES, invoke

EXPECTED = Path(__file__).parent / "data" / "h16-speed"

CASES = {
    "prof-le-nop": ("prof-le", [["nop", "in", "-o", "out", "--drop-records"]]),
    "prof-be-nop": ("prof-be", [["nop", "in", "-o", "out", "--drop-records"]]),
    "std-le-nop": ("std-le", [["nop", "in", "-o", "out", "--drop-records"]]),
    "prof-le-o-nop": ("prof-le.o", [["nop", "in", "-o", "out", "--drop-records"]]),
    "patchable-le-o-nop": ("patchable-le.o", [["nop", "in", "-o", "out", "--drop-records"]]),
    "ool-le-o-nop": ("ool-le.o", [["nop", "in", "-o", "out", "--drop-records"]]),
    "prof-le-disabled": ("prof-le", [["apply", "in", "--to", "disabled", "--drop-records", "-o", "out"]]),
    "prof-le-back": (
        "prof-le",
        [["nop", "in", "-o", "mid", "--drop-records"], ["apply", "mid", "--to", "enabled", "-o", "out"]],
    ),
    "prof-le-o-back": (
        "prof-le.o",
        [["nop", "in", "-o", "mid", "--drop-records"], ["apply", "mid", "--to", "enabled", "-o", "out"]],
    ),
}


def _without_tool(header_line: str) -> dict[str, object]:
    header = json.loads(header_line)
    assert isinstance(header, dict) and header["tool"].startswith("mcountrw ")
    return {k: v for k, v in header.items() if k != "tool"}


@pytest.mark.parametrize("name", sorted(CASES))
def test_the_log_is_what_the_old_code_wrote(name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fixture, commands = CASES[name]
    shutil.copyfile(FIXTURES / "bin" / fixture, tmp_path / "in")
    monkeypatch.chdir(tmp_path)  # the paths in the header as the expected log has them: "in", "out"
    for args in commands:
        result = invoke(*args)
        assert result.exit_code == 0, result.output
    data = (tmp_path / "out.mcountrw.jsonl").read_bytes()
    expected = (EXPECTED / f"{name}.jsonl").read_text().splitlines()
    lines = data.decode().splitlines()
    assert len(lines) == len(expected)
    assert _without_tool(lines[0]) == _without_tool(expected[0])  # the output's sha256 among the rest
    assert lines[1:-1] == expected[1:-1]  # every edit and sites line, character for character
    body = data[: len(data) - len(lines[-1]) - 1]
    footer = {"lines": len(lines) - 1, "sha256": hashlib.sha256(body).hexdigest(), "type": "footer"}
    assert data == body + json.dumps(footer, sort_keys=True).encode() + b"\n"
