"""The fixtures' emulations of gcc 14 against gcc 14 itself.

The fixtures are built by bookworm's gcc 12 (fixtures/build.sh), which a 6.6+ kernel's build
rejects, and build.sh reshapes its output into what the kernel's compiler emits: the nops after
``.localentry`` (``nops_after_localentry``) and one ``__patchable_function_entries`` per text
section (``own_record_sections``, gcc 13 and later). Debian 13's cross gcc 14.2, the compiler that
built the trixie 6.12 (fetched by corpus/fetch.sh), compiles the same source here: the code and
the records must be the same, read by binutils and pyelftools, and so must mcountrw's sites. And a
kernel object with ``__init`` code has a record section for each of its text sections."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from boot import require_gcc14, require_tool
from conftest import FIXTURES, invoke
from test_record_sections import _record_tables

from rewriter.elf.image import Image
from rewriter.sites import place_text, scan

# build.sh's CFLAGS for the fixtures (its paths made relative by -ffile-prefix-map, as there)
CFLAGS = ["-O2", "-fno-pie", f"-ffile-prefix-map={FIXTURES}=.", "-DNOTRACE_PATCHABLE"]

SHAPES = {
    "patchable-lep-le.o": ["-fpatchable-function-entry=2"],
    "ool-le.o": ["-fpatchable-function-entry=1"],
    "patchable-fs-le.o": ["-ffunction-sections", "-fpatchable-function-entry=2"],
    "ool-fs-le.o": ["-ffunction-sections", "-fpatchable-function-entry=1"],
}

KERNEL_OBJECT = """
int counter;
__attribute__((section(".init.text"))) int init_thing(int x) { return x + counter; }
int hot_path(int x) { return 3 * x + counter; }
"""


def _gcc14(source: Path, out: Path, flags: list[str]) -> Path:
    """``source`` compiled by gcc 14 (``-S``) and assembled by this machine's binutils."""
    asm = out.with_suffix(".s")
    subprocess.run([*require_gcc14(), *CFLAGS, *flags, "-S", source, "-o", asm], check=True, cwd=FIXTURES)
    subprocess.run([require_tool("powerpc64le-linux-gnu-as"), "-o", out, asm], check=True)
    return out


def _code(path: Path) -> list[str]:
    """The disassembly of every section of code, without the file name line."""
    objdump = require_tool("powerpc64le-linux-gnu-objdump")
    return subprocess.run([objdump, "-d", path], check=True, capture_output=True, text=True).stdout.splitlines()[2:]


def _sites(path: Path) -> list[tuple[object, ...]]:
    doc = json.loads(invoke("scan", "--format", "json", path).stdout)["images"][0]
    return sorted((s["section"], s["offset"], s["function"], s["state"], s["record"]) for s in doc["sites"])


@pytest.mark.parametrize("name", list(SHAPES))
def test_build_sh_makes_what_gcc_14_makes(name: str, tmp_path: Path) -> None:
    """The same code and records. gcc 14 puts each function's record in a section of its own
    (six); the -fs fixtures were built so, the others keep gcc 12's one section."""
    built = _gcc14(FIXTURES / "src/funcs.c", tmp_path / name, SHAPES[name])
    fixture = FIXTURES / "bin" / name
    assert _code(built) == _code(fixture)
    assert [len(t) for t in _record_tables(built)] == [1] * 6
    if "-fs-" in name:
        assert _record_tables(built) == _record_tables(fixture)
    else:
        assert [len(t) for t in _record_tables(fixture)] == [6]
        assert sorted(p for t in _record_tables(built) for p in t) == sorted(_record_tables(fixture)[0])
    assert _sites(built) == _sites(fixture) and len(_sites(built)) == 6


@pytest.mark.parametrize("entries", [1, 2])
def test_records_dropped_from_gcc_14s_tables_come_back_each_into_its_own(entries: int, tmp_path: Path) -> None:
    """Six tables of one name, each linked to .text: only the log's table offsets tell them apart.
    A drop, a restore in two steps (the second from a log that carries the first's entries
    written out), and an undo of each: byte for byte."""
    src = _gcc14(FIXTURES / "src/funcs.c", tmp_path / "funcs.o", [f"-fpatchable-function-entry={entries}"])
    nopped, one, back = tmp_path / "nopped.o", tmp_path / "one.o", tmp_path / "back.o"
    assert invoke("nop", src, "-o", nopped, "--drop-records", "--exclude", "sum8").exit_code == 0
    assert [len(t) for t in _record_tables(nopped)] == [0, 0, 0, 1, 0, 0]
    assert invoke("apply", nopped, "--to", "enabled", "--only", "leaf_add", "-o", one).exit_code == 0
    assert invoke("apply", one, "--to", "enabled", "-o", back).exit_code == 0
    assert back.read_bytes() == src.read_bytes()
    carried = [line for line in (tmp_path / "one.o.mcountrw.jsonl").read_text().splitlines() if '"sites"' in line]
    assert any('"0x' in line and "record_relocation" in line for line in carried)  # the table offset
    for step, before in ((back, one), (one, nopped), (nopped, src)):
        undone = tmp_path / "undone.o"
        assert invoke("undo", step, "-o", undone).exit_code == 0
        assert undone.read_bytes() == before.read_bytes()


@pytest.mark.parametrize("entries", [1, 2])
def test_a_kernel_object_with_init_code_has_both_its_record_sections_read(entries: int, tmp_path: Path) -> None:
    source = tmp_path / "object.c"
    source.write_text(KERNEL_OBJECT)
    built = _gcc14(source, tmp_path / "object.o", [f"-fpatchable-function-entry={entries}"])
    tables = _record_tables(built)
    assert sorted(len(t) for t in tables) == [1, 1]  # one for .text, one for .init.text
    image = Image.load(built)
    result = scan(image)
    assert sorted(place_text(image, s.record) for s in result.sites if s.record is not None) == sorted(
        p for t in tables for p in t
    )
    assert {s.function for s in result.sites} == {"init_thing", "hot_path"}
    audit = json.loads(invoke("audit", "--format", "json", built).stdout)
    assert audit["images"][0]["anomalies"] == []
