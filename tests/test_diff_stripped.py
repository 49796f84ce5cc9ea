"""`mcountrw diff` where a side has sites but no function symbols (a stripped image): nothing pairs
by name, so sites pair by place, functions are not compared, and the report says so on the pair.

A stripped copy compares as unchanged (it read as every site removed and added again, and every
function removed); a rewrite of one side shows as exactly its sites' changes, named from the side
that has names. Fixtures are stripped with ``objcopy --strip-all``; the corpus test strips the
6.12 vmlinux with ``strip``, as the user report did."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
from boot import counts, require_kernel, require_tool
from conftest import unwrapped
from test_diff import _nop_sites
from test_stripped import BIN, strip
from typer.testing import CliRunner

from rewriter.cli import app
from rewriter.diff import Change, Pairing, diff_files
from rewriter.elf.image import Image
from rewriter.sites import scan


def _diff_json(a: Path, b: Path) -> tuple[int, dict]:  # type: ignore[type-arg]
    result = CliRunner().invoke(app, ["diff", str(a), str(b), "--format", "json"])
    assert result.exit_code in (0, 1), result.output
    (pair,) = json.loads(result.output)["images"]
    return result.exit_code, pair


@pytest.mark.parametrize("name", ["clean", "prof-le"])
def test_a_stripped_copy_compares_unchanged_site_for_site(tmp_path: Path, name: str) -> None:
    bare = strip(BIN / name, tmp_path / name)
    sites = len(scan(Image.load(BIN / name)).sites)
    for a, b, unnamed in ((BIN / name, bare, (False, True)), (bare, BIN / name, (True, False))):
        d = diff_files(a, b)
        assert d.pairing is Pairing.PLACE and d.unnamed == unnamed
        assert d.changes == () and d.functions == () and d.unchanged == sites and d.relocated == 0
    code, pair = _diff_json(BIN / name, bare)
    assert code == 0 and pair["pairing"] == "place" and pair["unnamed"] == [False, True]
    assert pair["unchanged"] == sites and pair["changes"] == [] and pair["functions"]["changes"] == []


def test_a_rewrite_against_a_stripped_original_shows_its_sites_by_name(tmp_path: Path) -> None:
    """A: ``clean`` with every second site nopped, symbols kept; B: ``clean`` stripped."""
    changed = _nop_sites(BIN / "clean", tmp_path / "clean.nop", 2)
    bare = strip(BIN / "clean", tmp_path / "clean")
    d = diff_files(tmp_path / "clean.nop", bare)
    assert d.pairing is Pairing.PLACE
    assert {(c.change, c.function, c.detail) for c in d.changes} == {
        (Change.STATE, f, "nopped -> enabled") for f in changed
    }
    assert d.unchanged == len(scan(Image.load(bare)).sites) - len(changed)


def test_markdown_says_the_pair_was_matched_by_place_and_why(tmp_path: Path) -> None:
    bare = strip(BIN / "clean", tmp_path / "clean")
    result = CliRunner().invoke(app, ["diff", str(BIN / "clean"), str(bare)])
    assert result.exit_code == 0, result.output
    lines = unwrapped(result.output).splitlines()  # prose wraps at 80 columns
    assert lines[2] == "**1 image pair, 0 site changes, 0 function changes**; 0 files only in A, 0 files only in B."
    assert "**Paired by place: B has sites but no function symbols (stripped).**" in lines[8]
    assert "functions are not compared" in lines[8]
    assert lines[10] == "Sites: no changes; 3 unchanged (0 relocated with their function); records 3 -> 3."


def test_trees_show_a_pair_matched_by_place_even_when_unchanged(tmp_path: Path) -> None:
    """In a tree, unchanged pairs are left out; one paired by place is not: its 'unchanged' is by
    place, and the reader must see that."""
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    for name in ("clean", "prof-le"):
        shutil.copyfile(BIN / name, a / name)
    shutil.copyfile(BIN / "prof-le", b / "prof-le")
    strip(BIN / "clean", b / "clean")
    result = CliRunner().invoke(app, ["diff", str(a), str(b)])
    assert result.exit_code == 0, result.output
    headers = [line for line in result.output.splitlines() if line.startswith("## ")]
    assert headers == [f"## `{a / 'clean'}` -> `{b / 'clean'}`"]


def test_two_named_images_pair_by_name() -> None:
    d = diff_files(BIN / "prof-le", BIN / "prof-le")
    assert d.pairing is Pairing.NAME and d.unnamed == (False, False) and d.unchanged == 6


@pytest.mark.corpus
def test_the_612_vmlinux_and_its_stripped_copy_compare_unchanged(tmp_path: Path) -> None:
    """The user report: 38,529 sites added and removed and 38,262 functions removed, exit 1."""
    vmlinux = require_kernel("6.12").vmlinux
    bare = tmp_path / "k12.strip"
    subprocess.run([str(require_tool("powerpc64le-linux-gnu-strip")), "-o", str(bare), str(vmlinux)], check=True)
    code, pair = _diff_json(vmlinux, bare)
    assert code == 0 and pair["pairing"] == "place" and pair["unnamed"] == [False, True]
    n = counts("6.12").records
    assert pair["changes"] == [] and pair["unchanged"] == n and pair["records"] == [n, n]
