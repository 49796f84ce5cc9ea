"""diff over two trees reads the files that have no counterpart, as it reads a pair.

A file only in one tree had been listed by name and never opened: a module cut short in B read as
a module B gained (exit 1, no error), where scan of the same tree refuses it (exit 2). And a module
only one kernel ships is sites and functions that kernel alone has, which the report now counts.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from conftest import FIXTURES
from test_cli import assert_one_line_error, mcountrw

BIN = FIXTURES / "bin"


def _trees(tmp_path: Path) -> tuple[Path, Path]:
    a, b = tmp_path / "a", tmp_path / "b"
    for root in (a, b):
        root.mkdir()
        shutil.copyfile(BIN / "clean.o", root / "clean.o")
    return a, b


def test_a_file_only_in_one_tree_that_cannot_be_read_is_bad_input(tmp_path: Path) -> None:
    a, b = _trees(tmp_path)
    (b / "cut.o").write_bytes((BIN / "prof-le.o").read_bytes()[:200])  # its section headers gone
    proc = mcountrw("diff", str(a), str(b))
    assert_one_line_error(proc, str(b / "cut.o"), "past the end of the file")
    assert "clean.o` -> `" in proc.stdout  # the pair is still compared
    assert "cut.o" not in proc.stdout.split("## Errors")[0]  # not listed as a file B gained


def _scanned(path: Path) -> tuple[str, int, int]:
    proc = mcountrw("scan", "--format", "json", str(path))
    assert proc.returncode == 0, proc.stderr
    (image,) = json.loads(proc.stdout)["images"]
    functions = {s["function"] for s in image["sites"] if s["function"]}
    return image["generation"], len(image["sites"]), len(functions)


def test_a_file_alone_is_counted_as_scan_reads_it(tmp_path: Path) -> None:
    a, b = _trees(tmp_path)
    shutil.copyfile(BIN / "prof-le.o", a / "gone.o")  # mprofile
    shutil.copyfile(BIN / "patchable-le.o", b / "new.o")  # patchable
    shutil.copyfile(BIN / "ool-be.o", b / "new-be.o")  # ool, big-endian
    proc = mcountrw("diff", "--format", "json", str(a), str(b))
    assert proc.returncode == 1, proc.stderr  # files on one side only are a difference
    doc = json.loads(proc.stdout)
    assert [Path(p).name for p in doc["only_a"]] == ["gone.o"]
    assert sorted(Path(p).name for p in doc["only_b"]) == ["new-be.o", "new.o"]
    got = {(u["side"], Path(u["path"]).name): (u["generation"], u["sites"], u["functions"]) for u in doc["unpaired"]}
    want = {("a", "gone.o"): _scanned(a / "gone.o")}
    want |= {("b", n): _scanned(b / n) for n in ("new.o", "new-be.o")}
    assert got == want
    assert all(sites > 0 for _, sites, _ in got.values())
    md = mcountrw("diff", str(a), str(b)).stdout
    generation, sites, functions = want["a", "gone.o"]
    assert f"- `{a / 'gone.o'}`: {generation}, {sites} sites in {functions} functions" in md
    total_b = want["b", "new.o"][1] + want["b", "new-be.o"][1]
    assert f"; 1 file ({sites} sites) only in A, 2 files ({total_b} sites) only in B." in md
