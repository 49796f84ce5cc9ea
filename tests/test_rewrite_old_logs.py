"""Patch logs written by an earlier mcountrw still undo and verify exactly (tests/data/old-logs).

The logs there were written by the code at commit 78bbe7c (how: tests/data/README.md). They hold
every kind of line: word writes with and without addresses, raw bytes, relocation tables, a cut
signature, a compressed input rebuilt by a recipe (`recompress`) and one kept whole (`original`).
A newer mcountrw may write more fields, but must read these and give back the original bytes."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import FIXTURES

from rewriter.log import load

OLD = Path(__file__).resolve().parent / "data" / "old-logs"

# (original, patched, log): the patched files are those the old code wrote.
CASES = {
    "relocatable, big-endian": (FIXTURES / "bin" / "prof-be.o", OLD / "prof-be.o.nop"),
    "signed and xz-compressed": (OLD / "signed-prof-le.o.xz", OLD / "signed-prof-le.o.xz.nop"),
    "gzip -9, kept whole": (OLD / "prof-be.o.gz", OLD / "prof-be.o.gz.nop"),
}


def _log(patched: Path) -> Path:
    return patched.with_name(patched.name + ".mcountrw.jsonl")


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def mcountrw(*args: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "rewriter", *map(str, args)], capture_output=True, text=True)


@pytest.mark.parametrize("case", sorted(CASES))
def test_an_old_log_undoes_to_the_exact_original_and_verifies(case: str, tmp_path: Path) -> None:
    original, patched = CASES[case]
    back = tmp_path / "back"
    undo = mcountrw("undo", patched, "--log", _log(patched), "-o", back)
    assert undo.returncode == 0, undo.stderr
    assert back.read_bytes() == original.read_bytes()
    verify = mcountrw("verify", original, patched, "--log", _log(patched))
    assert verify.returncode == 0 and verify.stdout.startswith("ok: "), verify.stdout + verify.stderr


def test_an_old_log_of_a_linked_file_replays_to_its_output_and_undoes(tmp_path: Path) -> None:
    """The executable's output is not committed (937 kB): replaying the old log on the fixture must
    give the very bytes the old code wrote (their sha256 is in the log), and undo must reverse it."""
    original = FIXTURES / "bin" / "prof-le"
    log_path = OLD / "prof-le.nop.mcountrw.jsonl"
    log = load(log_path)
    patched = bytes(log.replay(original.read_bytes()))
    assert _sha(patched) == log.header.output.sha256
    (tmp_path / "prof-le.nop").write_bytes(patched)
    undo = mcountrw("undo", tmp_path / "prof-le.nop", "--log", log_path, "-o", tmp_path / "back")
    assert undo.returncode == 0, undo.stderr
    assert (tmp_path / "back").read_bytes() == original.read_bytes()


def _lines(path: Path) -> list[dict[str, object]]:
    """The log's lines without what names where the files were (paths) or hashes the whole text."""
    out = []
    for line in path.read_text().splitlines():
        rec = json.loads(line)
        for side in ("input", "output"):
            if isinstance(rec.get(side), dict):
                rec[side].pop("path")
        if rec["type"] != "footer":
            out.append(rec)
    return out


@pytest.mark.parametrize("case", sorted(CASES))
def test_the_same_rewrite_today_writes_the_same_lines(case: str, tmp_path: Path) -> None:
    """Today's mcountrw, given the same input and options, writes the old log's every line (paths
    aside): the format has not drifted. A deliberate new field belongs in this test's expectations."""
    original, patched = CASES[case]
    out = tmp_path / patched.name
    args = ["--strip-signature"] if "signed" in case else []
    done = mcountrw("nop", original, "-o", out, "--drop-records", *args)
    assert done.returncode == 0, done.stderr
    assert out.read_bytes() == patched.read_bytes()
    old, new = _lines(_log(patched)), _lines(_log(out))
    # New since these logs: version 2, the header's `base` (null: the input had no log) and one
    # `site` line per site touched (rewriter.known), after the edits.
    sites = [rec for rec in new if rec["type"] == "site"]
    assert (new[0].pop("version"), new[0].pop("base"), old[0].pop("version")) == (2, None, 1)
    assert [rec for rec in new if rec["type"] != "site"] == old
    types = [rec["type"] for rec in new]
    first = types.index("site")
    assert len(sites) == old[0]["summary"]["sites_changed"] and types[first : first + len(sites)] == ["site"] * len(
        sites
    )
    assert set(types[first + len(sites) :]) <= {"original"}  # after the edits, before the original bytes
