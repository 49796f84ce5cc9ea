"""Patch logs written by an earlier mcountrw still undo and verify exactly (tests/data/old-logs).

The logs there were written by the code at commit 78bbe7c (how: tests/data/README.md). They hold
every kind of line: word writes with and without addresses, raw bytes, relocation tables, a cut
signature, a compressed input rebuilt by a recipe (`recompress`) and one kept whole (`original`).
A newer mcountrw may write more fields, but must read these and give back the original bytes.
Those in tests/data/v2-logs were written by 1d28d7f (format version 2: one JSON `site` line per
site, a chain of two): they must also still serve as a source of sites."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import FIXTURES

from rewriter import ppc
from rewriter.known import SiteLine, site_lines_in
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


def _relative_branches(rec: dict[str, object]) -> dict[str, object]:
    """The one deliberate change since these logs: a write without an address (ET_REL) quotes a
    branch by its displacement (`bl .+0`), where the old code printed it as if at address 0 (`bl 0`)."""
    if rec["type"] != "write" or rec["address"] is not None:
        return rec
    out = dict(rec)
    for key in ("old", "new"):
        word = int(str(rec[key]), 16)
        if ppc.is_b(word) or ppc.is_bl(word):
            out[f"{key}_asm"] = ppc.relative_text(word)
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
    # New since these logs: version 3, the header's `base` (null: the input had no log) and a few
    # `sites` lines describing the sites touched (rewriter.known), after the edits.
    sites = [rec for rec in new if rec["type"] == "sites"]
    assert (new[0].pop("version"), new[0].pop("base"), old[0].pop("version")) == (3, None, 1)
    # and whether a signature was cut off (summary.signature_stripped: the signed case's was)
    assert new[0]["summary"].pop("signature_stripped") is ("signed" in case)
    assert [rec for rec in new if rec["type"] != "sites"] == [_relative_branches(rec) for rec in old]
    types = [rec["type"] for rec in new]
    first = types.index("sites")
    assert sum(rec["sites"] for rec in sites) == old[0]["summary"]["sites_changed"]
    assert types[first : first + len(sites)] == ["sites"] * len(sites)
    assert set(types[first + len(sites) :]) <= {"original"}  # after the edits, before the original bytes


# -- version 2 (tests/data/v2-logs): one JSON site line per site ------------------------------

V2 = Path(__file__).resolve().parent / "data" / "v2-logs"
V2_CASES = {  # patched file: its original (the fixture, or the first step of a chain)
    "prof-be.o.nop": FIXTURES / "bin" / "prof-be.o",
    "prof-be.o.back": V2 / "prof-be.o.nop",
    "patchable-le.o.nop": FIXTURES / "bin" / "patchable-le.o",
    "ool-be.o.nop": FIXTURES / "bin" / "ool-be.o",
}


@pytest.mark.parametrize("patched", sorted(V2_CASES))
def test_a_version_2_log_undoes_and_verifies(patched: str, tmp_path: Path) -> None:
    original, patched_path = V2_CASES[patched], V2 / patched
    back = tmp_path / "back"
    undo = mcountrw("undo", patched_path, "--log", _log(patched_path), "-o", back)
    assert undo.returncode == 0, undo.stderr
    assert back.read_bytes() == original.read_bytes()
    verify = mcountrw("verify", original, patched_path, "--log", _log(patched_path))
    assert verify.returncode == 0 and verify.stdout.startswith("ok: "), verify.stdout + verify.stderr


def _v2_linked(tmp_path: Path) -> tuple[Path, Path]:
    """prof-le nopped, then leaf_add back, as the version-2 logs say (replayed on the fixture)."""
    nop, back = tmp_path / "prof-le.nop", tmp_path / "prof-le.back"
    for src, dst in ((FIXTURES / "bin" / "prof-le", nop), (nop, back)):
        log = load(V2 / f"{dst.name}.mcountrw.jsonl")
        dst.write_bytes(bytes(log.replay(src.read_bytes())))
        assert _sha(dst.read_bytes()) == log.header.output.sha256
        shutil.copy(V2 / f"{dst.name}.mcountrw.jsonl", _log(dst))
    return nop, back


def test_version_2_site_lines_read_as_json_reads_them(tmp_path: Path) -> None:
    """The pattern that reads version-2 site lines in one pass agrees with json, line by line."""
    for path in sorted(V2.glob("*.jsonl")):
        text = path.read_text()
        written = [line for line in text.splitlines() if line.startswith('{"at": ')]
        assert written, path
        assert site_lines_in(text) == [SiteLine.from_json(json.loads(w)) for w in written] == list(load(path).sites)


@pytest.mark.parametrize("linked", [False, True])
def test_a_version_2_log_is_a_source_of_sites_and_brings_them_back(linked: bool, tmp_path: Path) -> None:
    """A scan with a version-2 log sees the sites only it knows; restoring from it gives the very
    bytes the version-2 mcountrw wrote, and so does the same chain run today (version 3)."""
    if linked:
        nop, expected = _v2_linked(tmp_path)
        original, name = FIXTURES / "bin" / "prof-le", "prof-le"
    else:
        nop, expected = tmp_path / "prof-be.o.nop", V2 / "prof-be.o.back"
        shutil.copy(V2 / nop.name, nop)
        shutil.copy(_log(V2 / nop.name), _log(nop))
        original, name = FIXTURES / "bin" / "prof-be.o", "prof-be.o"
    seen = json.loads(mcountrw("scan", nop, "--format", "json").stdout)["images"][0]
    assert seen["summary"]["by_source"]["log"] == (5 if linked else 6)
    again = tmp_path / "again"
    done = mcountrw("apply", "--to", "enabled", "--only", "leaf_add", nop, "-o", again)
    assert done.returncode == 0, done.stderr
    assert again.read_bytes() == expected.read_bytes()
    today = tmp_path / "today"
    today.mkdir()
    args = ["--exclude", "sum8"] if linked else []
    assert mcountrw("nop", original, "-o", today / f"{name}.nop", "--drop-records", *args).returncode == 0
    restored = mcountrw("apply", "--to", "enabled", "--only", "leaf_add", today / f"{name}.nop", "-o", today / "back")
    assert restored.returncode == 0, restored.stderr
    assert (today / "back").read_bytes() == expected.read_bytes()
    assert load(_log(today / "back")).header.to_json()["version"] == 3
