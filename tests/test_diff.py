"""`mcountrw diff`: matched by function name; a rewritten copy of the corpus vmlinux differs in
exactly the sites that were rewritten; variants, moves and records on the fixtures; trees."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from conftest import FIXTURES
from typer.testing import CliRunner

from rewriter import ppc
from rewriter.cli import app
from rewriter.diff import Change, diff_files, diff_paths
from rewriter.elf.image import Image
from rewriter.sites import scan
from rewriter.states import SiteState


def _nop_sites(src: Path, dst: Path, every: int) -> set[str]:
    """Copy ``src`` and nop both slots (mflr at call slot - 4, bl at the call slot) of every
    ``every``-th site, by writing the words directly; returns the functions changed."""
    shutil.copyfile(src, dst)
    image = Image.load(dst)
    sites = scan(image).sites[::every]
    with open(dst, "r+b") as fh:
        for site in sites:
            for offset in (site.file_offset - 4, site.file_offset):
                fh.seek(offset)
                fh.write(ppc.NOP.to_bytes(4, image.byteorder))
    return {s.function for s in sites}


def test_an_image_against_itself_has_no_changes() -> None:
    d = diff_files(FIXTURES / "bin" / "prof-le", FIXTURES / "bin" / "prof-le")
    assert d.changes == () and d.unchanged == 6 and d.relocated == 0


def test_rewritten_fixture_sites_change_state_only(tmp_path: Path) -> None:
    changed = _nop_sites(FIXTURES / "bin" / "clean", tmp_path / "clean", 2)
    d = diff_files(FIXTURES / "bin" / "clean", tmp_path / "clean")
    assert {(c.change, c.function, c.detail) for c in d.changes} == {
        (Change.STATE, f, "enabled -> nopped") for f in changed
    }


def test_other_compiler_options_show_variant_state_and_moves() -> None:
    d = diff_files(FIXTURES / "bin" / "prof-le.o", FIXTURES / "bin" / "patchable-le.o")
    kinds = {(c.change, c.function) for c in d.changes}
    assert (Change.VARIANT, "leaf_add") in kinds and (Change.STATE, "leaf_add") in kinds
    # touch_global: mprofile slot at LEP+4 = start+12; patchable nops at the symbol, slot start+4
    assert (Change.MOVED, "touch_global") in kinds


def test_dropped_record_is_reported(tmp_path: Path) -> None:
    image = Image.load(FIXTURES / "bin" / "clean")
    sec = image.section("__mcount_loc")
    data = bytearray(image.data)
    data[sec.offset : sec.offset + 8] = bytes(8)  # zero the first record, as dropping does
    (tmp_path / "clean").write_bytes(bytes(data))
    d = diff_files(FIXTURES / "bin" / "clean", tmp_path / "clean")
    assert [(c.change, c.function) for c in d.changes] == [(Change.RECORD_REMOVED, "clean_leaf")]
    assert d.records == (3, 2)


def test_trees_pair_files_by_relative_path(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    for root in (a, b):
        (root / "fs").mkdir(parents=True)
        shutil.copyfile(FIXTURES / "bin" / "clean.o", root / "fs" / "clean.o")
    shutil.copyfile(FIXTURES / "bin" / "prof-le.o", a / "only-a.o")
    _nop_sites(FIXTURES / "bin" / "clean.o", b / "fs" / "clean.o", 3)
    result = CliRunner().invoke(app, ["diff", str(a), str(b), "--format", "json"])
    assert result.exit_code == 1, result.output
    doc = json.loads(result.output)
    assert [Path(p).name for p in doc["only_a"]] == ["only-a.o"] and doc["only_b"] == []
    (pair,) = doc["images"]
    assert {c["change"] for c in pair["changes"]} == {"state"}


def test_identical_files_exit_0_and_mixed_arguments_exit_2(tmp_path: Path) -> None:
    clean = str(FIXTURES / "bin" / "clean")
    assert CliRunner().invoke(app, ["diff", clean, clean]).exit_code == 0
    assert CliRunner().invoke(app, ["diff", clean, str(tmp_path)]).exit_code == 2


@pytest.mark.corpus
@pytest.mark.slow
def test_vmlinux_diff_reports_exactly_the_rewritten_sites(corpus, tmp_path: Path) -> None:
    copy = tmp_path / "vmlinux"
    changed = _nop_sites(corpus.vmlinux, copy, 997)
    result = CliRunner().invoke(app, ["diff", str(corpus.vmlinux), str(copy), "--format", "json"])
    assert result.exit_code == 1
    (pair,) = json.loads(result.output)["images"]
    rewritten = scan(Image.load(copy)).sites
    nopped = {s.addr for s in rewritten if s.state is SiteState.NOPPED}
    assert len(pair["changes"]) == len(nopped) == len(scan(Image.load(corpus.vmlinux)).sites[::997])
    assert {c["after"]["address"] for c in pair["changes"]} == nopped
    assert {(c["change"], c["detail"]) for c in pair["changes"]} == {("state", "enabled -> nopped")}
    assert {c["function"] for c in pair["changes"]} == changed
    assert pair["unchanged"] == 33_690 - len(nopped) and pair["relocated"] == 0


def test_diff_paths_of_two_files_is_one_pair() -> None:
    clean = FIXTURES / "bin" / "clean"
    d = diff_paths(clean, clean, [clean], [clean])
    assert len(d.images) == 1 and not d.changed
