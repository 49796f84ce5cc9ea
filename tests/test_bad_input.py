"""Bad input: every class of broken file gives one line naming the file and the problem, exit 2,
no traceback and no output file; truncating a file at any structure boundary does the same.

Each case of :data:`CASES` is one row of the table in docs/bad-input.md: it takes a committed
fixture, breaks one thing in it, and says which words the user must see. The library is checked
for every case (scan, and apply --dry-run) and the real CLI for every case through ``scan`` and
for a sample through ``nop -o``. The truncation sweep cuts every fixture at the start, the second
byte, the middle and the last byte of every structure (ELF header, program and section header
tables, every section's data, the first and last entry of every symbol, relocation and
``__mcount_loc`` table) and runs the library on each cut.

The helpers at the top (:class:`Elf`, :func:`regions`) are shared with tests/test_fuzz.py.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import lzma
import os
import pickle
import resource
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pytest
import zstandard
from boot import require_tool
from click.testing import Result
from conftest import FIXTURES, ROOT, invoke, mini_vmlinux, scan_table, unwrapped
from conftest import assert_one_line as one_error_line
from elftools.elf.elffile import ELFFile
from elftools.elf.sections import SymbolTableSection

from rewriter.elf import structs as S
from rewriter.elf.image import Image
from rewriter.errors import ImageError, RewriteError
from rewriter.files import apply_file
from rewriter.rewrite import Options, Selection
from rewriter.sites import scan
from rewriter.states import SiteState

BIN = FIXTURES / "bin"
SMALL = sorted(p for p in BIN.iterdir() if p.stat().st_size < 16_384)  # the objects and anom-* executables
NOP_ALL = Options(SiteState.NOPPED, drop_records=True, strip_signature=True)


# -- editing ELF fields by name (shared with test_fuzz.py) ------------------------------------------


class Field(NamedTuple):
    """One numeric field of one structure: where it is and how wide."""

    where: str  # e.g. "ehdr.e_shoff", "shdr[5].sh_size", ".symtab[3].st_name"
    offset: int
    size: int


class Region(NamedTuple):
    """One structure's bytes: the ELF header, a header table, a section's data, or one entry."""

    what: str
    offset: int
    size: int


class Elf:
    """A mutable copy of a valid ELF64 file with its structures located once (via our own reader,
    which the valid seeds pass), so that tests can break exactly one field."""

    def __init__(self, data: bytes) -> None:
        self.data = bytearray(data)
        self.image = Image.from_bytes(Path("seed"), bytes(data))
        self.e: S.Endian = self.image.endian
        self.order = self.image.byteorder

    def field(self, dtype: np.dtype, base: int, name: str, where: str) -> Field:
        sub, off = dtype.fields[name][:2]
        return Field(where, base + off, sub.itemsize)

    def ehdr(self, name: str) -> Field:
        return self.field(S.ehdr_dtype(self.e), 0, name, f"ehdr.{name}")

    def shdr(self, section: str | int, name: str) -> Field:
        sec = self.image.section(section) if isinstance(section, str) else self.image.sections[section]
        assert sec is not None, section
        dt = S.shdr_dtype(self.e)
        base = int(self.image.ehdr["e_shoff"]) + sec.shndx * dt.itemsize
        return self.field(dt, base, name, f"shdr[{sec.shndx}].{name}")

    def entry(self, section: str, index: int, name: str) -> Field:
        sec = self.image.section(section)
        assert sec is not None, section
        dt = {S.SHT_SYMTAB: S.sym_dtype, S.SHT_RELA: S.rela_dtype, S.SHT_DYNAMIC: S.dyn_dtype}.get(sec.type)
        dtype = dt(self.e) if dt else S.addr_dtype(self.e)
        if name == "value":  # a plain table of 8-byte words (__mcount_loc)
            return Field(f"{section}[{index}]", sec.offset + index * 8, 8)
        return self.field(dtype, sec.offset + index * dtype.itemsize, name, f"{section}[{index}].{name}")

    def get(self, f: Field) -> int:
        return int.from_bytes(self.data[f.offset : f.offset + f.size], self.order)

    def set(self, f: Field, value: int) -> Elf:
        self.data[f.offset : f.offset + f.size] = (value % (1 << (8 * f.size))).to_bytes(f.size, self.order)
        return self

    def fields(self) -> list[Field]:
        """Every numeric field of every header and of every entry of every table (symbols,
        relocations, dynamic, ``__mcount_loc``); tables of more than 64 entries give their first and
        last two."""
        out = [self.ehdr(n) for n in S.ehdr_dtype(self.e).names if n != "e_ident"]
        phdr = S.phdr_dtype(self.e)
        for i in range(int(self.image.ehdr["e_phnum"])):
            base = int(self.image.ehdr["e_phoff"]) + i * phdr.itemsize
            out += [self.field(phdr, base, n, f"phdr[{i}].{n}") for n in phdr.names]
        for sec in self.image.sections:
            out += [self.shdr(sec.shndx, n) for n in S.shdr_dtype(self.e).names]
        for sec in self.image.sections:
            dt = {S.SHT_SYMTAB: S.sym_dtype, S.SHT_RELA: S.rela_dtype, S.SHT_DYNAMIC: S.dyn_dtype}.get(sec.type)
            if sec.name == "__mcount_loc" and sec.type == S.SHT_PROGBITS:
                out += [self.entry(sec.name, i, "value") for i in _some(sec.size // 8)]
            elif dt is not None and self.image.section(sec.name) is sec:
                dtype = dt(self.e)
                for i in _some(sec.size // dtype.itemsize):
                    out += [self.entry(sec.name, i, name) for name in dtype.names]
        return out

    def bytes(self) -> bytes:
        return bytes(self.data)


def _some(n: int) -> list[int]:
    return list(range(n)) if n <= 64 else [0, 1, n - 2, n - 1]


def regions(data: bytes) -> list[Region]:
    """The structures of a valid ELF file, for truncation and byte flips."""
    image = Image.from_bytes(Path("seed"), data)
    e = image.ehdr
    out = [Region("ELF header", 0, 64)]
    phnum = int(e["e_phnum"])
    if phnum:
        out.append(Region("program header table", int(e["e_phoff"]), phnum * int(e["e_phentsize"])))
    out.append(Region("section header table", int(e["e_shoff"]), len(image.sections) * 64))
    for sec in image.sections:
        if sec.type in (S.SHT_NULL, S.SHT_NOBITS) or not sec.size:
            continue
        out.append(Region(f"section {sec.name}", sec.offset, sec.size))
        entsize = {S.SHT_SYMTAB: 24, S.SHT_RELA: 24, S.SHT_DYNAMIC: 16}.get(sec.type, 8 if "mcount" in sec.name else 0)
        if entsize and sec.size >= 2 * entsize:
            out.append(Region(f"{sec.name} first entry", sec.offset, entsize))
            out.append(Region(f"{sec.name} last entry", sec.offset + sec.size - entsize, entsize))
    return out


def cut_points(data: bytes) -> list[tuple[int, str]]:
    """Where to truncate: the start, second byte, middle and last byte of every structure."""
    cuts: dict[int, str] = {}
    for r in regions(data):
        for at, how in ((r.offset, "start"), (r.offset + 1, "+1"), (r.offset + r.size // 2, "middle"),
                        (r.offset + r.size - 1, "last byte")):  # fmt: skip
            if 0 <= at < len(data):
                cuts.setdefault(at, f"{r.what} {how}")
    return sorted(cuts.items())


# -- running the library and the CLI --------------------------------------------------------------


def library_error(path: Path) -> str | None:
    """The one-line error the library gives for ``path`` (scan, then apply --dry-run), or None if
    both accept it. Anything but a RewriteError propagates and fails the test."""
    try:
        scan(Image.load(path))
        apply_file(path, None, Selection(), NOP_ALL, dry_run=True)
    except RewriteError as e:
        return str(e)
    return None


def mcountrw(*args: str, **kw) -> subprocess.CompletedProcess[str]:  # type: ignore[no-untyped-def]
    return subprocess.run([sys.executable, "-m", "rewriter", *args], capture_output=True, text=True, **kw)


def assert_one_line(message: str, path: Path, words: tuple[str, ...]) -> None:
    assert "\n" not in message.strip(), message
    assert message.startswith(f"{path}: "), message
    assert "Traceback" not in message
    for w in words:
        assert w in message, f"{w!r} not in {message!r}"


def assert_cli_error(proc: subprocess.CompletedProcess[str], *words: str) -> str:
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("mcountrw: error: "), proc.stderr
    assert "Traceback" not in proc.stderr
    for w in words:
        assert w in lines[0], f"{w!r} not in {lines[0]!r}"
    return lines[0]


# -- the cases: one per row of docs/bad-input.md --------------------------------------------------


class Case(NamedTuple):
    id: str
    seed: str  # fixture under fixtures/bin
    make: Callable[[bytes], bytes]
    words: tuple[str, ...]  # the message must contain each


def _ehdr(name: str, value: int) -> Callable[[bytes], bytes]:
    return lambda d: Elf(d).set(Elf(d).ehdr(name), value).bytes()


def _shdr(section: str | int, name: str, value: int | Callable[[Elf], int]) -> Callable[[bytes], bytes]:
    def make(d: bytes) -> bytes:
        elf = Elf(d)
        return elf.set(elf.shdr(section, name), value(elf) if callable(value) else value).bytes()

    return make


def _entry(section: str, index: int, name: str, value: int | Callable[[Elf], int]) -> Callable[[bytes], bytes]:
    def make(d: bytes) -> bytes:
        elf = Elf(d)
        return elf.set(elf.entry(section, index, name), value(elf) if callable(value) else value).bytes()

    return make


def _ident(index: int, value: int) -> Callable[[bytes], bytes]:
    return lambda d: d[:index] + bytes([value]) + d[index + 1 :]


def _offset_of(section: str) -> Callable[[Elf], int]:
    return lambda elf: elf.get(elf.shdr(section, "sh_offset"))


def _compressed(kind: str, damage: Callable[[bytes], bytes]) -> Callable[[bytes], bytes]:
    def make(d: bytes) -> bytes:
        zstd = zstandard.ZstdCompressor(write_checksum=True)  # as the zstd CLI writes them
        packed = {"xz": lzma.compress, "gz": gzip.compress, "zst": zstd.compress}[kind](d)
        return damage(packed)

    return make


def _flip_middle(d: bytes) -> bytes:
    mid = len(d) // 2
    return d[:mid] + bytes([d[mid] ^ 0xFF, d[mid + 1] ^ 0x55]) + d[mid + 2 :]


def _zstd_claims_a_terabyte(_: bytes) -> bytes:
    # Frame header: magic, descriptor 0xE0 (single segment, 8-byte content size), content size 2**40,
    # then a last raw block of 0 bytes. The library would allocate what the header claims.
    return b"\x28\xb5\x2f\xfd\xe0" + (1 << 40).to_bytes(8, "little") + b"\x01\x00\x00"


def _shrink(section: str, by: int) -> Callable[[bytes], bytes]:
    return _shdr(section, "sh_size", lambda e: e.get(e.shdr(section, "sh_size")) - by)


# fmt: off
CASES = [
    Case("not-elf", "clean.o", lambda d: b"#!/bin/sh\necho this is a shell script\n", ("not an ELF file",)),
    Case("empty", "clean.o", lambda d: b"", ("empty file",)),
    Case("too-short", "clean.o", lambda d: d[:10], ("not an ELF file (too short)",)),
    Case("truncated-elf-header", "clean.o", lambda d: d[:40], ("truncated ELF header",)),
    Case("truncated-program-headers", "clean", lambda d: d[: 64 + 20], ("program header table", "runs past")),
    Case("truncated-section-headers", "clean.o", lambda d: d[:-10], ("section header table", "runs past the end")),
    Case("truncated-section-data", "clean.o", _shdr(".text", "sh_size", 1 << 20), ("section 1 data", "runs past")),
    Case("elf32", "clean.o", _ident(4, 1), ("ELF class 1 is not ELF64",)),
    Case("x86-64", "clean.o", _ehdr("e_machine", 62), ("machine 62 is not PowerPC64",)),
    Case("ppc32-machine", "clean.o", _ehdr("e_machine", S.EM_PPC), ("machine 20 is not PowerPC64",)),
    Case("bad-endian-marker", "clean.o", _ident(5, 3), ("bad ELF data encoding 3",)),
    Case("swapped-endian-marker", "clean.o", _ident(5, 2), ("is not PowerPC64",)),
    Case("not-rel-exec-dyn", "clean.o", _ehdr("e_type", 4), ("ELF type 4",)),
    Case("no-section-headers", "clean.o", _ehdr("e_shoff", 0), ("no section header table",)),
    Case("section-header-size", "clean.o", _ehdr("e_shentsize", 40), ("section header size 40",)),
    Case("program-header-size", "clean", _ehdr("e_phentsize", 32), ("program header size 32",)),
    Case("program-headers-outside", "clean", _ehdr("e_phoff", 1 << 40), ("program header table", "runs past")),
    Case("section-outside-file", "clean.o", _shdr(".text", "sh_offset", 1 << 40), ("section 1 data", "runs past")),
    Case("section-absurd-size", "clean.o", _shdr(".symtab", "sh_size", (1 << 63) + 24), ("runs past the end",)),
    Case("section-count-absurd", "clean.o", lambda d: _ehdr("e_shnum", 0)(_shdr(0, "sh_size", 1 << 40)(d)),
         ("section header table", "runs past")),
    Case("section-count-zero", "clean.o", _ehdr("e_shnum", 0), ("no sections",)),
    Case("sections-overlap", "clean.o", _shdr(".rela.text", "sh_offset", _offset_of(".symtab")), ("overlaps",)),
    Case("section-over-elf-header", "clean.o", _shdr(".text", "sh_offset", 0), ("overlaps the ELF header",)),
    Case("shstrndx-out-of-range", "clean.o", _ehdr("e_shstrndx", 99), ("string table index 99 out of range",)),
    Case("section-name-out-of-range", "clean.o", _shdr(".text", "sh_name", 1 << 30), ("name index", "out of range")),
    Case("symbol-name-out-of-range", "clean.o", _entry(".symtab", 1, "st_name", 1 << 30),
         ("symbol name index out of range",)),
    Case("symtab-odd-size", "clean.o", _shrink(".symtab", 5), ("not a multiple of 24",)),
    Case("symtab-entry-size", "clean.o", _shdr(".symtab", "sh_entsize", 16), ("entry size 16, expected 24",)),
    Case("symtab-links-nowhere", "clean.o", _shdr(".symtab", "sh_link", 99), ("sh_link 99 names no section",)),
    Case("symtab-links-to-code", "clean.o", _shdr(".symtab", "sh_link", 1), ("not a string table",)),
    Case("rela-odd-size", "clean.o", _shrink(".rela.text", 1), ("not a multiple of 24",)),
    Case("rela-entry-size", "clean.o", _shdr(".rela.text", "sh_entsize", 0xFFFF), ("entry size 65535",)),
    Case("rela-names-missing-symbol", "clean.o", _entry(".rela__mcount_loc", 0, "r_info", (9999 << 32) | 38),
         ("relocation section .rela__mcount_loc names symbol 9999, past the 12",)),
    Case("rela-for-missing-section", "clean.o", _shdr(".rela.text", "sh_info", 99), ("sh_info 99 names no section",)),
    Case("mcount-loc-odd-size", "clean", _shrink("__mcount_loc", 4), ("__mcount_loc", "not a multiple of 8")),
    Case("rela-mcount-loc-odd-size", "clean.o", _shdr(".rela__mcount_loc", "sh_size", 0x40), ("not a multiple of 24",)),
    Case("xz-corrupt", "clean.o", _compressed("xz", _flip_middle), ("xz",)),
    Case("xz-truncated", "clean.o", _compressed("xz", lambda z: z[: len(z) // 2]), ("truncated xz data",)),
    Case("gz-corrupt", "clean.o", _compressed("gz", _flip_middle), ("gzip",)),
    Case("gz-truncated", "clean.o", _compressed("gz", lambda z: z[: len(z) // 2]), ("truncated gzip data",)),
    Case("zst-corrupt", "clean.o", _compressed("zst", _flip_middle), ("zstd",)),
    Case("zst-truncated", "clean.o", _compressed("zst", lambda z: z[: len(z) // 2]), ("truncated zstd data",)),
    Case("zst-claims-a-terabyte", "clean.o", _zstd_claims_a_terabyte, ("corrupt zstd data",)),
    Case("compressed-not-elf", "clean.o", lambda d: lzma.compress(b"hello"), ("not an ELF file",)),
    Case("stripped-no-records", "clean", lambda d: _strip_symtab_and_records(d), ("stripped image", "--mcount-addr")),
]
# fmt: on


def _strip_symtab_and_records(d: bytes) -> bytes:
    """A stripped image that keeps neither symbols nor a __mcount_loc section (a stripped vmlinux,
    in miniature): .symtab becomes an unused PROGBITS section, __mcount_loc is renamed away."""
    elf = Elf(d)
    elf.set(elf.shdr(".symtab", "sh_type"), S.SHT_PROGBITS)
    names = elf.image.section_bytes(elf.image.sections[int(elf.image.ehdr["e_shstrndx"])])
    at = elf.get(elf.shdr(".shstrtab", "sh_offset")) + names.index(b"__mcount_loc\0")
    elf.data[at : at + 2] = b"XX"
    return elf.bytes()


def _write(tmp_path: Path, case: Case) -> Path:
    path = tmp_path / f"{case.id}.ko" if case.id.startswith(("xz", "gz", "zst", "compressed")) else tmp_path / case.id
    path.write_bytes(case.make((BIN / case.seed).read_bytes()))
    return path


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_library_rejects_bad_input_in_one_line(case: Case, tmp_path: Path) -> None:
    path = _write(tmp_path, case)
    message = library_error(path)
    assert message is not None, f"{case.id} was accepted"
    assert_one_line(message, path, case.words)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_cli_scan_rejects_bad_input_in_one_line(case: Case, tmp_path: Path) -> None:
    path = _write(tmp_path, case)
    assert_cli_error(mcountrw("scan", str(path)), str(path), *case.words)


@pytest.mark.parametrize("case_id", ["not-elf", "truncated-section-headers", "x86-64", "sections-overlap",
                                     "rela-names-missing-symbol", "xz-corrupt", "stripped-no-records"])  # fmt: skip
def test_cli_nop_of_bad_input_writes_nothing(case_id: str, tmp_path: Path) -> None:
    case = next(c for c in CASES if c.id == case_id)
    path = _write(tmp_path, case)
    before = sorted(p.name for p in tmp_path.iterdir())
    assert_cli_error(mcountrw("nop", str(path), "-o", str(tmp_path / "out")), str(path), *case.words)
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no output, no log, no temporary file


def test_absurd_sizes_do_not_allocate_gigabytes(tmp_path: Path) -> None:
    """Under a 1 GiB address-space limit (the interpreter, numpy, capstone and keystone take about
    half), absurd counts and sizes are still refused in one line, not with a MemoryError."""
    limit = 1 << 30

    def cap() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    for case_id in ("section-absurd-size", "section-count-absurd", "zst-claims-a-terabyte", "symtab-odd-size"):
        path = _write(tmp_path, next(c for c in CASES if c.id == case_id))
        assert_cli_error(mcountrw("nop", str(path), "--dry-run", preexec_fn=cap), str(path))
    bomb = tmp_path / "bomb.ko.zst"  # 300 MiB of zeros behind an ELF header, no content size in the frame
    with open(bomb, "wb") as fh, zstandard.ZstdCompressor(write_content_size=False).stream_writer(fh) as w:
        w.write((BIN / "clean.o").read_bytes())
        for _ in range(300):
            w.write(bytes(1 << 20))
    assert_cli_error(mcountrw("scan", str(bomb), preexec_fn=cap), str(bomb), "more than 256 MiB")


# -- truncation at every structure ----------------------------------------------------------------


@pytest.mark.parametrize("name", [p.name for p in SMALL] + ["prof-le", "prof-be"])
def test_truncation_at_every_structure_is_one_line(name: str, tmp_path: Path) -> None:
    data = (BIN / name).read_bytes()
    elf_end = Image.from_bytes(Path(name), data).elf_end
    path = tmp_path / name
    for at, what in cut_points(data):
        path.write_bytes(data[:at])
        message = library_error(path)
        if at < elf_end:
            assert message is not None, f"cut at {at:#x} ({what}) accepted"
            assert_one_line(message, path, ())


def test_truncated_signed_module_is_one_line(corpus, tmp_path: Path) -> None:
    """A signed module: cuts inside the ELF are errors; cuts inside the signature leave an unsigned
    ELF with trailing bytes, which is fine to scan."""
    data = (corpus.modules_dir / "fs/nls/nls_utf8.ko").read_bytes()
    elf_end = Image.from_bytes(Path("m"), data).elf_end
    path = tmp_path / "nls_utf8.ko"
    for at, what in [*cut_points(data), (elf_end + 5, "signature"), (len(data) - 3, "signature marker")]:
        path.write_bytes(data[:at])
        message = library_error(path)
        if at < elf_end:
            assert message is not None, f"cut at {at:#x} ({what}) accepted"
            assert_one_line(message, path, ())


@pytest.mark.parametrize("kind", ["xz", "gz", "zst"])
def test_truncated_compressed_module_is_one_line(kind: str, tmp_path: Path) -> None:
    packed = _compressed(kind, lambda z: z)((BIN / "prof-le.o").read_bytes())
    path = tmp_path / f"m.ko.{kind}"
    for at in sorted({1, 2, 5, 10, len(packed) // 4, len(packed) // 2, len(packed) - 8, len(packed) - 1}):
        path.write_bytes(packed[:at])
        message = library_error(path)
        assert message is not None, f"cut at {at} accepted"
        assert_one_line(message, path, ())


# -- inputs that are findings, not errors -----------------------------------------------------------


def test_mcount_loc_entry_outside_any_section_is_reported_unmatched(tmp_path: Path) -> None:
    """A record that points nowhere is what scan is for: it is reported (and counted by audit), and a
    rewrite leaves it alone; the kernel would stop ftrace at boot on it, as it would on the input."""
    elf = Elf((BIN / "clean").read_bytes())
    path = tmp_path / "rec-nowhere"
    path.write_bytes(elf.set(elf.entry("__mcount_loc", 1, "value"), 0xDEAD_BEE0).bytes())
    result = scan(Image.load(path))
    assert [p.text for p in result.records.unmatched] == ["0xdeadbee0"]
    assert len(result.sites) == 3 and sum(s.recorded for s in result.sites) == 2
    apply_file(path, None, Selection(), NOP_ALL, dry_run=True)


def test_symbols_that_lie_do_not_crash(tmp_path: Path) -> None:
    """Function symbols in sections that do not exist, or at absurd values: the sites are still found
    by their words and relocations; functions just lose their names."""
    elf = Elf((BIN / "clean.o").read_bytes())
    syms = elf.image.symbols
    assert syms is not None
    for i in range(1, len(syms.table)):
        elf.set(elf.entry(".symtab", i, "st_shndx"), 0xFFF0 - i if i % 2 else 60 + i)
        elf.set(elf.entry(".symtab", i, "st_value"), (1 << 64) - 8 * i)
    path = tmp_path / "lying.o"
    path.write_bytes(elf.bytes())
    message = library_error(path)
    assert message is None or message.startswith(f"{path}: ")


# -- stripped images ---------------------------------------------------------------------------------


def test_stripped_executable_falls_back_to_its_records(tmp_path: Path) -> None:
    objcopy = require_tool("powerpc64le-linux-gnu-objcopy")
    for name in ("clean", "anom-unrecorded", "prof-le"):
        stripped = tmp_path / name
        subprocess.run([str(objcopy), "--strip-all", str(BIN / name), str(stripped)], check=True)
        assert Image.load(stripped).symbols is None
        full, bare = scan(Image.load(BIN / name)), scan(Image.load(stripped))
        # _mcount is found as the target the recorded `bl`s share, so unrecorded sites are found too.
        key = [(s.addr, s.state, s.variant, s.recorded) for s in full.sites]
        assert [(s.addr, s.state, s.variant, s.recorded) for s in bare.sites] == key
        assert {s.function for s in bare.sites} == {None}


@pytest.mark.corpus
def test_stripped_vmlinux_says_what_is_missing_and_works_with_mcount_addr(corpus, tmp_path: Path) -> None:
    objcopy = require_tool("powerpc64le-linux-gnu-objcopy")
    stripped = tmp_path / "vmlinux"
    subprocess.run([str(objcopy), "--strip-all", str(corpus.vmlinux), str(stripped)], check=True)
    words = ("no .symtab", "__mcount_loc", "--mcount-addr", "System.map")
    assert_cli_error(mcountrw("scan", str(stripped)), str(stripped), *words)
    full = Image.load(corpus.vmlinux)
    syms = full.symbols
    assert syms is not None
    mcount = int(syms.table["st_value"][syms.find("_mcount")[0]])
    wrong = mcountrw("scan", "--mcount-addr", hex(mcount + 4), str(stripped))
    assert_cli_error(wrong, "--mcount-addr", "no bl")
    before, after = scan(full), scan(Image.load(stripped), mcount)
    # Same sites, states and records (found by their contents), without function names.
    assert [(s.addr, s.state, s.recorded) for s in after.sites] == [(s.addr, s.state, s.recorded) for s in before.sites]
    assert after.records == before.records


# -- directories, files that are not files, output paths ------------------------------------------


def _drop_capabilities() -> None:
    """Root reads and writes everything: with an empty capability bounding set, the root that
    ``exec`` starts has no CAP_DAC_OVERRIDE, so file permissions apply to it as to anyone."""
    import ctypes

    prctl = ctypes.CDLL(None, use_errno=True).prctl
    pr_capbset_drop = 24
    for cap in range(64):
        prctl(pr_capbset_drop, cap, 0, 0, 0)


def _as_unprivileged() -> dict:  # type: ignore[type-arg]
    return {"preexec_fn": _drop_capabilities} if os.geteuid() == 0 else {}


def test_directory_with_unreadable_files_reports_them_and_scans_the_rest() -> None:
    with tempfile.TemporaryDirectory(prefix="mcountrw-") as top:
        root = Path(top)
        root.chmod(0o755)
        (root / "good.o").write_bytes((BIN / "clean.o").read_bytes())
        secret = root / "secret.ko"
        secret.write_bytes((BIN / "clean.o").read_bytes())
        secret.chmod(0o000)
        hidden = root / "private"
        hidden.mkdir()
        (hidden / "x.o").write_bytes((BIN / "clean.o").read_bytes())
        hidden.chmod(0o000)
        os.mkfifo(root / "fifo.ko")  # named like a module: skipped, must not block the scan
        os.mkfifo(root / "pipe")  # must not block the ELF sniffing either
        (root / "nested").mkdir()
        (root / "nested" / "good2.o").write_bytes((BIN / "prof-le.o").read_bytes())
        for p in (root / "good.o", root / "nested", root / "nested" / "good2.o"):
            p.chmod(0o755)
        proc = mcountrw("scan", "--format", "json", str(root), timeout=60, **_as_unprivileged())
        assert proc.returncode == 2, proc.stderr
        errors = proc.stderr.strip().splitlines()
        assert all(line.startswith("mcountrw: error: ") for line in errors) and "Traceback" not in proc.stderr
        assert any("secret.ko" in line and "Permission denied" in line for line in errors), errors
        assert any("private" in line and "Permission denied" in line for line in errors), errors
        assert not any("fifo" in line or "pipe" in line for line in errors), errors  # special files: skipped
        import json

        scanned = sorted(Path(i["path"]).name for i in json.loads(proc.stdout)["images"])
        assert scanned == ["good.o", "good2.o"]


def test_output_paths_that_cannot_be_written(tmp_path: Path) -> None:
    src = tmp_path / "prog"
    shutil.copy(BIN / "clean", src)
    nowhere = tmp_path / "no" / "such" / "dir" / "out"
    assert_cli_error(mcountrw("nop", str(src), "-o", str(nowhere)), str(nowhere), "does not exist")
    assert_cli_error(mcountrw("nop", str(src), "-o", str(src)), "output is the input", "--in-place")
    assert_cli_error(mcountrw("nop", str(src), "-o", str(tmp_path)), "Is a directory")
    out = tmp_path / "out"
    assert_cli_error(mcountrw("nop", str(src), "-o", str(out), "--log", str(src)), "would overwrite the input")
    assert_cli_error(mcountrw("nop", str(src), "-o", str(out), "--log", str(out)), "would overwrite the output")
    assert_cli_error(mcountrw("nop", str(src), "-o", str(out), "--backup"), "--backup goes with --in-place")
    (tmp_path / "prog.orig").write_bytes(b"the true original")
    assert_cli_error(mcountrw("nop", str(src), "--in-place", "--backup"), "prog.orig", "exists")
    assert (tmp_path / "prog.orig").read_bytes() == b"the true original"
    assert src.read_bytes() == (BIN / "clean").read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["prog", "prog.orig"]


def _refused(result: Result, line: str) -> None:
    """``result`` (of :func:`invoke`) is exactly the one error ``line``, exit 2, with no report."""
    assert result.exit_code == 2, result.output
    assert result.stderr == f"mcountrw: error: {line}\n" and not result.stdout, result.output


def _every_output_option(tmp_path: Path) -> tuple[Path, dict[str, tuple[str, ...]]]:
    """A copy of `clean` in ``tmp_path``, and for each command that writes a file it is told, its
    command line up to that option (the file follows)."""
    src = tmp_path / "prog"
    shutil.copy(BIN / "clean", src)
    patched = tmp_path / "patched"
    assert invoke("nop", src, "-o", patched).exit_code == 0
    policy = str(ROOT / "examples" / "keep-core.policy")
    return src, {
        "scan": ("scan", str(src), "-o"),
        "audit": ("audit", str(src), "-o"),
        "diff": ("diff", str(src), str(patched), "-o"),
        "plan": ("plan", "--from", "enabled", "--to", "nopped", "-o"),
        "apply": ("apply", str(src), "--to", "nopped", "-o"),
        "nop": ("nop", str(src), "-o"),
        "undo": ("undo", str(patched), "-o"),
        "prenop --report": ("prenop", "--policy", policy, "--dry-run", str(src), "--report"),
    }


def test_an_output_with_a_trailing_slash_names_a_directory(tmp_path: Path) -> None:
    """``-o x/`` wrote a plain file ``x`` (``Path`` drops the slash), exit 0, with every command.
    prenop's ``-o`` for one file too; for one file it may name a directory that exists (the file
    goes in it), and for a tree one it makes."""
    src, commands = _every_output_option(tmp_path)
    prenop_one_file = ("prenop", "--policy", str(ROOT / "examples" / "keep-core.policy"), str(src), "-o")
    before = sorted(tmp_path.iterdir())
    for command in [*commands.values(), prenop_one_file]:
        _refused(invoke(*command, f"{tmp_path}/out/"), f"{tmp_path}/out/: directory {tmp_path}/out does not exist")
        _refused(invoke(*command, f"{src}/"), f"{src}/: Not a directory")
    for command in commands.values():
        _refused(invoke(*command, f"{tmp_path}/"), f"{tmp_path}: Is a directory")
    assert sorted(tmp_path.iterdir()) == before
    assert src.read_bytes() == (BIN / "clean").read_bytes()


def test_an_output_that_is_the_current_directory_or_root_is_a_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A report to ``-o .``, ``..`` or ``/`` was refused by the rename that ended the run, in its
    words: `.: Device or resource busy`. Every command that writes a file says it is a directory."""
    _, commands = _every_output_option(tmp_path)
    monkeypatch.chdir(tmp_path)
    before = sorted(tmp_path.iterdir())
    for command in commands.values():
        for directory in (".", "..", "/"):
            _refused(invoke(*command, directory), f"{directory}: Is a directory")
    assert sorted(tmp_path.iterdir()) == before


REPORTS = ("scan", "audit", "diff", "plan")


def test_a_dash_output_is_stdout_for_a_report_and_refused_for_a_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``-o -`` wrote a file called ``-`` in the current directory. A report now goes to stdout,
    exactly as with no ``-o``; an ELF, a log's directory tree or prenop's JSON report needs a file,
    and ``-`` is refused in one line that says how to name a file ``-``."""
    src, commands = _every_output_option(tmp_path)
    prenop_out = ("prenop", "--policy", str(ROOT / "examples" / "keep-core.policy"), str(src), "-o")
    monkeypatch.chdir(tmp_path)
    before = sorted(tmp_path.iterdir())
    for name, command in commands.items():
        if name in REPORTS:
            to_stdout, plain = invoke(*command, "-"), invoke(*command[:-1])
            assert to_stdout.exit_code == plain.exit_code in (0, 1), to_stdout.output  # diff: 1, it differs
            assert to_stdout.stdout == plain.stdout and to_stdout.stdout
        else:
            _refused(invoke(*command, "-"), "-: this output is a file, not stdout (for a file named -, write ./-)")
    _refused(invoke(*prenop_out, "-"), "-: this output is a file, not stdout (for a file named -, write ./-)")
    tree = ("prenop", "--policy", str(ROOT / "examples" / "keep-core.policy"), str(tmp_path), "-o", "-")
    _refused(invoke(*tree), "-: this output is a file, not stdout (for a file named -, write ./-)")  # made ./-/
    assert sorted(tmp_path.iterdir()) == before


def test_reports_go_into_a_fifo_and_rewrites_refuse_one(tmp_path: Path) -> None:
    """A report to a FIFO or device (`-o /dev/null`) is written into it; renaming a temporary file
    over it would replace the node itself. A rewritten ELF is never sent there: refused, the FIFO kept."""
    import stat
    import threading

    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    got: list[bytes] = []
    reader = threading.Thread(target=lambda: got.append(fifo.read_bytes()))
    reader.start()
    proc = mcountrw("scan", str(BIN / "clean"), "-o", str(fifo))
    reader.join(timeout=30)
    assert proc.returncode == 0, proc.stderr
    assert "generation mprofile" in unwrapped(got[0].decode())
    assert stat.S_ISFIFO(os.stat(fifo).st_mode)
    assert_cli_error(mcountrw("nop", str(BIN / "clean"), "-o", str(fifo)), str(fifo), "not a regular file")
    assert stat.S_ISFIFO(os.stat(fifo).st_mode)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pipe"]


def test_output_in_a_read_only_directory() -> None:
    with tempfile.TemporaryDirectory(prefix="mcountrw-") as top:
        root = Path(top)
        root.chmod(0o755)
        locked = root / "locked"
        locked.mkdir()
        src = locked / "prog"
        shutil.copy(BIN / "clean", src)
        locked.chmod(0o555)
        try:
            proc = mcountrw("nop", str(src), "-o", str(locked / "out"), **_as_unprivileged())
            assert_cli_error(proc, str(locked / "out"), "cannot write in")
            inplace = mcountrw("nop", str(src), "--in-place", **_as_unprivileged())
            assert_cli_error(inplace, str(src), "cannot write in")
            assert src.read_bytes() == (BIN / "clean").read_bytes()
            assert [p.name for p in locked.iterdir()] == ["prog"]
        finally:
            locked.chmod(0o755)


def test_input_that_is_not_a_regular_file(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    assert_cli_error(mcountrw("scan", str(fifo), timeout=30), str(fifo), "not a regular file")
    assert_cli_error(mcountrw("nop", str(tmp_path), "--dry-run"), str(tmp_path), "Is a directory")
    assert_cli_error(mcountrw("scan", "/dev/null"), "/dev/null", "not a regular file")
    assert_cli_error(mcountrw("nop", str(tmp_path / "missing"), "--dry-run"), "missing", "No such file")


def test_policy_check_and_prenop_name_a_fifo_or_device_for_what_it_is(tmp_path: Path) -> None:
    """``policy check P GOOD /dev/null FIFO`` said ``/dev/null: No such file or directory`` and
    ended the run: GOOD got no table. Now each is one line saying what it is, GOOD is checked, and
    prenop, which refuses the run, gives the same words."""
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    policy = ROOT / "examples" / "keep-core.policy"
    check = mcountrw("policy", "check", str(policy), str(BIN / "prof-le"), "/dev/null", str(fifo), timeout=60)
    assert check.returncode == 2 and "keep do_one_initcall" in check.stdout, check
    assert check.stderr.splitlines() == [
        f"mcountrw: error: {name}: not a regular file (a FIFO, socket or device)" for name in ("/dev/null", fifo)
    ]
    out = tmp_path / "out"
    prenop = mcountrw("prenop", "--policy", str(policy), "/dev/null", "-o", str(out))
    assert_cli_error(prenop, "/dev/null", "not a regular file")
    assert not out.exists()


# -- patch logs ---------------------------------------------------------------------------------------


@pytest.fixture
def patched(tmp_path: Path) -> tuple[Path, Path, Path]:
    out = tmp_path / "out"
    assert mcountrw("nop", str(BIN / "prof-le.o"), "-o", str(out), "--drop-records").returncode == 0
    return BIN / "prof-le.o", out, tmp_path / "out.mcountrw.jsonl"


def test_truncated_log_is_refused(patched: tuple[Path, Path, Path], tmp_path: Path) -> None:
    original, out, log = patched
    text = log.read_text()
    bad = tmp_path / "bad.jsonl"
    for cut, words in ((len(text) // 2, ("not JSON",)), (text.rstrip("\n").rindex("\n") + 1, ("no footer",)),
                       (0, ("empty patch log",))):  # fmt: skip
        bad.write_text(text[:cut])
        assert_cli_error(mcountrw("undo", str(out), "--log", str(bad), "-o", str(tmp_path / "back")), str(bad), *words)
        assert_cli_error(mcountrw("verify", str(original), str(out), "--log", str(bad)), str(bad), *words)
        assert not (tmp_path / "back").exists()


def test_edited_log_is_refused(patched: tuple[Path, Path, Path], tmp_path: Path) -> None:
    original, out, log = patched
    bad = tmp_path / "bad.jsonl"
    bad.write_text(log.read_text().replace('"new": "60000000"', '"new": "60000001"', 1))
    for args in (("undo", str(out), "--log", str(bad), "-o", str(tmp_path / "back")),
                 ("verify", str(original), str(out), "--log", str(bad))):  # fmt: skip
        assert_cli_error(mcountrw(*args), str(bad), "edited or truncated", "checksum")
    assert not (tmp_path / "back").exists()


def test_log_edited_on_purpose_with_a_new_footer_is_refused(patched: tuple[Path, Path, Path], tmp_path: Path) -> None:
    import hashlib
    import json

    original, out, log = patched
    lines = log.read_text().splitlines()[:-1]
    for field, value, words in (("offset", "-0x10", ("out of range",)), ("offset", "0x7fffffff", ("reaches offset",)),
                                ("entsize", 0, ("not a multiple",))):  # fmt: skip
        records = [json.loads(x) for x in lines]
        target = next(r for r in records if field in r)
        target[field] = value
        body = "".join(json.dumps(r, sort_keys=True) + "\n" for r in records)
        footer = {"type": "footer", "lines": len(records), "sha256": hashlib.sha256(body.encode()).hexdigest()}
        bad = tmp_path / "bad.jsonl"
        bad.write_text(body + json.dumps(footer) + "\n")
        assert_cli_error(mcountrw("undo", str(out), "--log", str(bad), "-o", str(tmp_path / "back")), str(bad), *words)
        assert_cli_error(mcountrw("verify", str(original), str(out), "--log", str(bad)), str(bad), *words)


def test_log_for_another_file_is_refused(patched: tuple[Path, Path, Path], tmp_path: Path) -> None:
    _, out, log = patched
    other = BIN / "prof-be.o"
    assert_cli_error(mcountrw("undo", str(other), "--log", str(log), "-o", str(tmp_path / "back")), "another file")
    verdict = mcountrw("verify", str(other), str(out), "--log", str(log))
    assert verdict.returncode == 1 and "is not the file this log was made from" in verdict.stdout  # a finding
    assert_cli_error(mcountrw("undo", str(out), "--log", str(BIN / "clean.o"), "-o", str(tmp_path / "b")), "not text")
    assert_cli_error(mcountrw("undo", str(out), "--log", str(log), "-o", str(log)), "would overwrite the patch log")
    assert not (tmp_path / "back").exists()


def test_repo_layout_is_what_the_docs_table_names() -> None:
    """docs/bad-input.md names every case id; keep the table and the tests in step."""
    table = (ROOT / "docs" / "bad-input.md").read_text()
    missing = [c.id for c in CASES if f"`{c.id}`" not in table]
    assert not missing, f"docs/bad-input.md lacks {missing}"


# -- names that would break a line or drive a terminal ---------------------------------------------

HOSTILE = "le\x1b[2J\nd"  # the length of "leaf_add": ESC, "clear the screen", a newline


def _hostile_names(tmp_path: Path) -> Path:
    """patchable-le.o with the function ``leaf_add`` renamed to :data:`HOSTILE` and ``.text``'s
    name's last but one letter made a tab (``.te\\tt``), byte for byte in their string tables
    (``.text`` is the tail of ``.rela.text`` there, which the tab renames too)."""
    data = (BIN / "patchable-le.o").read_bytes()
    assert data.count(b"\0leaf_add\0") == 1 and data.count(b"\0.rela.text\0") == 1
    data = data.replace(b"\0leaf_add\0", b"\0" + HOSTILE.encode() + b"\0")
    data = data.replace(b"\0.rela.text\0", b"\0.rela.te\tt\0")
    path = tmp_path / "hostile.o"
    path.write_bytes(data)
    return path


def test_names_from_the_file_are_printed_escaped(tmp_path: Path) -> None:
    """A string table can hold any byte: every report shows a name's unprintable characters as
    Python escapes (``\\x1b``, ``\\n``, ``\\t``), so that no name breaks a line of the table or a
    message, nor sends the terminal an escape sequence. Printable names are left alone."""
    path = _hostile_names(tmp_path)
    shown = "le\\x1b[2J\\nd"
    table = mcountrw("scan", str(path))
    assert table.returncode == 0, table.stderr
    assert not any(c in table.stdout for c in "\x1b\t"), table.stdout
    rows = scan_table(table.stdout)
    assert [row["function"] for row in rows].count(shown) == 1, table.stdout
    assert rows and all(row["call slot"].startswith(".te\\tt+0x") for row in rows), table.stdout
    sites = json.loads(mcountrw("scan", "--format", "json", str(path)).stdout)["images"][0]["sites"]
    assert shown in [s["function"] for s in sites] and "static_helper" in [s["function"] for s in sites]
    assert {s["section"] for s in sites} == {".te\\tt"}
    audit = mcountrw("audit", "--format", "md", str(path))
    assert not any(c in audit.stdout for c in "\x1b\t") and ".te\\tt+0x" in audit.stdout, audit.stdout


def test_a_nameless_section_is_named_by_its_index(tmp_path: Path) -> None:
    """clean.o with ``.text``'s name emptied (its sh_name pointing at the names table's first,
    empty, string): its sites read ``[N]+0x4`` as readelf numbers sections, not ``+0x4``, which
    ``--addr`` refuses for naming no section; so a site there is selected, nopped and undone."""
    elf = Elf((BIN / "clean.o").read_bytes())
    text = elf.image.section(".text")
    assert text is not None
    path = tmp_path / "nameless.o"
    path.write_bytes(elf.set(elf.shdr(".text", "sh_name"), 0).bytes())
    name = f"[{text.shndx}]"

    table = mcountrw("scan", str(path))
    assert table.returncode == 0, table.stderr
    slots = [line.split()[0] for line in table.stdout.splitlines()[1:] if "+0x" in line]
    assert slots == [f"{name}+0x4", f"{name}+0x2c", f"{name}+0x5c"], table.stdout
    sites = json.loads(mcountrw("scan", "--format", "json", str(path)).stdout)["images"][0]["sites"]
    assert {s["section"] for s in sites} == {name} and sites[0]["record"] == f"{name}+0x4"

    out = tmp_path / "nopped.o"
    nop = mcountrw("nop", str(path), "--addr", f"{name}+0x4", "-o", str(out))
    assert nop.returncode == 0 and "changed 1 site to nopped" in nop.stderr, nop.stderr
    back = tmp_path / "back.o"
    undo = mcountrw("undo", str(out), "--log", f"{out}.mcountrw.jsonl", "-o", str(back))
    assert undo.returncode == 0, undo.stderr
    assert back.read_bytes() == path.read_bytes()


def test_error_messages_stay_one_line_whatever_the_names() -> None:
    """A RewriteError's message is one line however it was built (here, from a section name read
    out of a note when a corrupt header moved the names): printable text is kept as it is, and
    escaping twice (a message pickled back from a worker) changes nothing."""
    e = ImageError("m.ko: section 32 (\x1b[31m\nname\u2028) overlaps section 2 (é)")
    assert str(e) == "m.ko: section 32 (\\x1b[31m\\nname\\u2028) overlaps section 2 (é)"
    assert str(pickle.loads(pickle.dumps(e))) == str(e)


def test_paths_are_printed_escaped(tmp_path: Path) -> None:
    """A file's own path can hold a newline or an ESC too (a tree unpacked from anywhere): the
    table's and the Markdown audit's headings and every error line show it escaped."""
    evil = tmp_path / "a\x1b[31m\nb.o"
    shutil.copy(BIN / "prof-le.o", evil)
    shown = str(tmp_path / "a\\x1b[31m\\nb.o")
    table = mcountrw("scan", str(tmp_path))
    assert table.returncode == 0 and table.stdout.startswith(f"{shown}: object,"), table
    audit = mcountrw("audit", "--format", "md", str(evil))
    assert f"### `{shown}`" in audit.stdout and "\x1b" not in audit.stdout, audit.stdout
    missing = mcountrw("scan", str(evil) + "\n.gone")
    assert_cli_error(missing, f"{shown}\\n.gone: No such file or directory")


def test_kernel_is_refused_for_anything_but_a_module_and_must_name_a_vmlinux(tmp_path: Path) -> None:
    """``--kernel VMLINUX`` names the kernel that will load a module (whether it skips a zeroed
    record): for any other file it means nothing, and a --kernel that is not a vmlinux (or not
    there) is refused naming the option; nothing is written either way."""
    src = tmp_path / "prog.o"
    shutil.copy(BIN / "clean.o", src)
    out = tmp_path / "out.o"
    _refused(
        invoke("nop", src, "-o", out, "--kernel", BIN / "clean"),
        f"{src}: --kernel VMLINUX is for a module, the kernel that will load it (this: object)",
    )
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["prog.o"]
    from rewriter.files import loader

    for kernel, why in ((BIN / "clean.o", "not a vmlinux (its kind: object)"),
                        (tmp_path / "nothing", "No such file or directory")):  # fmt: skip
        with pytest.raises(RewriteError) as e:
            loader(kernel)
        assert str(e.value) == f"--kernel {kernel}: {why}"


@pytest.mark.parametrize(("name", "kind"), [("m.ko.xz", "xz"), ("m.ko.gz", "gzip"), ("m.ko.zst", "zstd")])
def test_a_module_named_compressed_that_is_not_says_so(name: str, kind: str, tmp_path: Path) -> None:
    """`m.ko.xz` holding neither xz data nor ELF said only "not an ELF file (too short)": its name
    is why it was read as a compressed module, and the line says it is not."""
    for data, what in ((b"garbage", "not an ELF file (too short)"), (b"\x00" * 64, "not an ELF file")):
        path = tmp_path / name
        path.write_bytes(data)
        with pytest.raises(ImageError) as e:
            Image.load(path)
        assert str(e.value) == f"{path}: {what}; nor {kind} data, as its name says"
    plain = tmp_path / "plain.o"
    plain.write_bytes(b"\x00" * 64)
    with pytest.raises(ImageError) as e:
        Image.load(plain)
    assert str(e.value) == f"{plain}: not an ELF file"


def test_prenop_refuses_a_tree_it_cannot_read_whole_and_skips_fifos() -> None:
    """prenop walked its trees with os.walk, which passes over a directory it cannot read: the run
    rewrote the rest and reported success. It now walks as scan does (batch.tree_entries) and
    refuses the tree before any work; a FIFO named like a module is skipped, as scan skips it (it
    failed the run)."""
    with tempfile.TemporaryDirectory(prefix="mcountrw-") as top:
        root = Path(top)
        root.chmod(0o755)
        tree = root / "tree"
        (tree / "fs").mkdir(parents=True)
        (tree / "fs" / "a.ko").write_bytes((BIN / "prof-le.o").read_bytes())
        os.mkfifo(tree / "fifo.ko")
        for p in (root, tree, tree / "fs", tree / "fs" / "a.ko"):
            p.chmod(0o755)
        policy = str(ROOT / "examples" / "keep-core.policy")
        out = root / "out"
        proc = mcountrw("prenop", "--policy", policy, "-o", str(out), str(tree), timeout=60, **_as_unprivileged())
        assert proc.returncode == 0, proc.stderr
        assert sorted(p.name for p in out.rglob("*.ko")) == ["a.ko"]
        hidden = tree / "private"
        hidden.mkdir()
        (hidden / "b.ko").write_bytes((BIN / "prof-le.o").read_bytes())
        hidden.chmod(0o000)
        again = root / "again"
        proc = mcountrw("prenop", "--policy", policy, "-o", str(again), str(tree), timeout=60, **_as_unprivileged())
        assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
        assert "private: Permission denied" in proc.stderr and "must be readable" in proc.stderr, proc.stderr
        assert not again.exists()
        hidden.chmod(0o755)  # so the directory can be removed


# -- paths as the command line gives them ---------------------------------------------------------


def test_an_unreadable_file_named_among_others_is_its_own_line_and_the_others_are_done(tmp_path: Path) -> None:
    """click checked that every path argument was readable while it parsed the command line: one
    unreadable file of ``scan A B`` ended the whole run in click's words (``Invalid value for
    'PATHS...': Path 'B' is not readable``) and A went unscanned. The reader says it on B's line."""
    tmp_path.chmod(0o755)
    good, secret = tmp_path / "good.o", tmp_path / "secret.o"
    shutil.copy(BIN / "clean.o", good)
    shutil.copy(BIN / "prof-le.o", secret)
    good.chmod(0o644)
    secret.chmod(0o000)
    for command in ("scan", "audit"):
        proc = mcountrw(command, "--format", "json", str(good), str(secret), **_as_unprivileged())
        line = assert_cli_error(proc, str(secret), "Permission denied")
        assert "Invalid value" not in line
        assert [Path(i["path"]).name for i in json.loads(proc.stdout)["images"]] == ["good.o"]
    policy = tmp_path / "keep.policy"
    policy.write_text("default keep\n")
    policy.chmod(0o000)
    line = assert_cli_error(mcountrw("policy", "check", str(policy), str(good), **_as_unprivileged()), str(policy))
    assert "Permission denied" in line and "Invalid value" not in line


def _nothing_written(cwd: Path, before: list[str]) -> None:
    assert sorted(p.name for p in cwd.iterdir()) == before


def test_an_empty_path_is_refused_not_read_as_the_current_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``Path("")`` is ``.``: ``scan "$UNSET"`` scanned every ELF file below the current directory,
    exit 0, ``nop X --stage-images ""`` put its stage images there, and ``nop ""`` failed as a bug.
    Every path argument and option refuses an empty one, as ``--log-dir`` did."""
    monkeypatch.chdir(tmp_path)
    src = tmp_path / "a.o"
    shutil.copy(BIN / "prof-le.o", src)
    before = sorted(p.name for p in tmp_path.iterdir())
    for command in (
        ["scan", ""],
        ["audit", ""],
        ["diff", "", src],
        ["diff", src, ""],
        ["nop", "", "-o", "out.o"],
        ["nop", src, "-o", "out.o", "--stage-images", ""],
        ["nop", src, "-o", ""],
        ["nop", src, "-o", "out.o", "--log", ""],
        ["apply", "", "--to", "disabled", "-o", "out.o"],
        ["undo", "", "-o", "out.o"],
        ["verify", src, ""],
        ["policy", "check", "", src],
        ["prenop", "--policy", "", src, "--dry-run"],
        ["prenop", "--policy", src, "", "--dry-run"],
        ["check-plan", ""],
    ):
        one_error_line(invoke(*command), 2, "error", "an empty path (an unset variable?)")
    _nothing_written(tmp_path, before)


def test_a_directory_where_one_file_is_read_is_refused_in_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """apply, nop, undo and verify read one file. Given ``.`` or ``/`` (a path with no name, beside
    which no patch log can be named), they failed as a bug: ``ValueError: PosixPath('.') has an
    empty name``, exit 3."""
    monkeypatch.chdir(tmp_path)
    src = tmp_path / "a.o"
    shutil.copy(BIN / "prof-le.o", src)
    before = sorted(p.name for p in tmp_path.iterdir())
    for command, shown in (
        (["nop", ".", "-o", "out.o"], "."),
        (["apply", "/", "--to", "disabled", "-o", "out.o"], "/"),
        (["undo", ".", "-o", "out.o"], "."),
        (["undo", "/", "--in-place"], "/"),
        (["verify", src, "."], "."),
        (["verify", ".", src], "."),
        (["nop", tmp_path, "--dry-run"], str(tmp_path)),
    ):
        one_error_line(invoke(*command), 2, "error", f"{shown}: Is a directory")
    _nothing_written(tmp_path, before)


def test_a_trailing_slash_on_a_file_is_refused(tmp_path: Path) -> None:
    """``Path`` drops a trailing slash: ``scan F/`` read F, and ``nop F/ --in-place`` rewrote it,
    where the shell says ``cat: F/: Not a directory``."""
    src = tmp_path / "a.o"
    shutil.copy(BIN / "prof-le.o", src)
    link = tmp_path / "link.o"
    link.symlink_to(src)
    for command in (["scan", f"{src}/"], ["nop", f"{src}/", "--in-place"], ["scan", f"{link}/"]):
        one_error_line(invoke(*command), 2, "error", f"{command[1]}: Not a directory")
    assert src.read_bytes() == (BIN / "prof-le.o").read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.o", "link.o"]
    assert invoke("scan", f"{tmp_path}/").exit_code == 0  # a directory's slash is the shell's own


def test_outputs_never_land_on_the_kernel_the_run_reads(tmp_path: Path) -> None:
    """``--kernel VMLINUX`` is read; ``nop M -o VMLINUX --kernel VMLINUX`` replaced the 47 MB 6.12
    vmlinux with the module and said ``wrote``, exit 0. Refused before anything is read, like an
    output on the input or its log."""
    src, kernel = tmp_path / "m.o", tmp_path / "vmlinux"
    shutil.copy(BIN / "clean.o", src)
    shutil.copy(BIN / "clean", kernel)
    for extra, what in ((["-o", kernel], "-o"), (["-o", tmp_path / "out.o", "--log", kernel], "the patch log")):
        _refused(
            invoke("nop", src, *extra, "--kernel", kernel),
            f"{kernel}: {what} would overwrite the --kernel vmlinux, which this run reads",
        )
    assert kernel.read_bytes() == (BIN / "clean").read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.o", "vmlinux"]


def test_backup_without_in_place_is_refused_in_a_dry_run_too(tmp_path: Path) -> None:
    """A dry run previews a run, and the run it previews refuses ``--backup`` without
    ``--in-place``; the dry run let it through (``--wait`` was already refused there)."""
    src = tmp_path / "a.o"
    shutil.copy(BIN / "prof-le.o", src)
    for command in ("nop", "apply"):
        to = ["--to", "disabled"] if command == "apply" else []
        _refused(
            invoke(command, src, *to, "--dry-run", "--backup"),
            f"{src}: --backup goes with --in-place (with -o the input is left as it is)",
        )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.o"]


def test_a_second_name_of_the_input_is_no_place_for_its_log_or_report(tmp_path: Path) -> None:
    """Two paths name one file by inode as well as by resolved name: a hard link of the input given
    as --log was taken for another file, and the run went on to put its log in that name of the
    input (exit 0), where a symlink or ``./`` is refused."""
    src, hard = tmp_path / "a.o", tmp_path / "hard.o"
    shutil.copy(BIN / "prof-le.o", src)
    os.link(src, hard)
    _refused(
        invoke("nop", src, "-o", tmp_path / "out.o", "--log", hard), f"{hard}: the patch log would overwrite the input"
    )
    _refused(
        invoke("scan", src, "-o", hard),
        f"-o {hard}: is {src}, an input this command reads: the report would replace it",
    )
    assert src.read_bytes() == (BIN / "prof-le.o").read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.o", "hard.o"]


def test_a_symlink_loop_is_named_for_what_it_is(tmp_path: Path) -> None:
    """``scan LOOP`` said ``No such file or directory`` (``nop`` already said the system's words)."""
    loop = tmp_path / "a.ko"
    loop.symlink_to(tmp_path / "b.ko")
    (tmp_path / "b.ko").symlink_to(loop)
    policy = str(ROOT / "examples" / "keep-core.policy")
    for args in (("scan",), ("audit",), ("policy", "check", policy), ("prenop", "--policy", policy, "--dry-run")):
        assert_cli_error(mcountrw(*args, str(loop)), str(loop), "Too many levels of symbolic links")


def test_a_vermagic_whose_version_is_thousands_of_digits_long_names_no_kernel(tmp_path: Path) -> None:
    """``vermagic=<5,000 digits>.1``: int() of it passed Python's digit limit, an internal error
    in nop and diff, and `corrupt ELF data (ValueError ...)` in scan. A version that long names
    no kernel: the module is read as one that does not say its kernel."""
    gcc = require_tool("powerpc64le-linux-gnu-gcc")
    src, module = tmp_path / "m.c", tmp_path / "m.ko"
    src.write_text(
        f'__attribute__((section(".modinfo"), used)) static const char v[] = "vermagic={"9" * 5000}.1 SMP";\n'
        "int f(int x) { return x + 1; }\n"
    )
    subprocess.run([gcc, "-O2", "-pg", "-mprofile-kernel", "-c", str(src), "-o", str(module)], check=True)
    scanned = mcountrw("scan", str(module))
    assert scanned.returncode == 0 and "1 site" in scanned.stdout, scanned
    out = tmp_path / "out.ko"
    assert mcountrw("nop", str(module), "-o", str(out)).returncode == 0
    assert mcountrw("diff", str(module), str(out)).returncode == 1


def test_a_record_table_whose_bounds_run_into_rela_dyn_is_refused_naming_the_file(tmp_path: Path) -> None:
    """__stop_mcount_loc moved 0x400 bytes on: the "table" runs into .rela.dyn, whose rows a drop
    moves while it zeroes the table's slots, the two edits over the same bytes. The rewrite failed
    with ``.rela.dyn[0]: expected ... != found ...``, naming no file and no cause."""
    vmlinux = mini_vmlinux(tmp_path)
    with open(vmlinux, "rb") as fh:
        symtab = ELFFile(fh).get_section_by_name(".symtab")
        assert isinstance(symtab, SymbolTableSection)
        (index,) = [i for i, sym in enumerate(symtab.iter_symbols()) if sym.name == "__stop_mcount_loc"]
        at = symtab["sh_offset"] + index * symtab["sh_entsize"] + 8  # st_value
    data = bytearray(vmlinux.read_bytes())
    data[at : at + 8] = (int.from_bytes(data[at : at + 8], "little") + 0x400).to_bytes(8, "little")
    vmlinux.write_bytes(data)
    out = tmp_path / "out"
    nop = mcountrw("nop", str(vmlinux), "-o", str(out), "--drop-records")
    assert_cli_error(nop, str(vmlinux), "two of the rewrite's edits touch the same bytes", "overlaps another")
    assert not out.exists()


def test_a_sites_line_with_an_empty_string_for_a_pair_is_a_malformed_log(tmp_path: Path) -> None:
    """A patch log (footer made good after the edit) whose sites line has ``""`` where a column
    holds a pair: an IndexError, exit 3 from scan, which reads the log beside the image by itself,
    and ``scan DIR`` reported none of the other files. It is one malformed-log line, and the
    directory's other files are scanned."""
    (tmp_path / "tree").mkdir()
    vmlinux = mini_vmlinux(tmp_path / "tree")
    out = tmp_path / "tree" / "out"
    assert mcountrw("nop", str(vmlinux), "-o", str(out), "--drop-records").returncode == 0
    log = Path(f"{out}.mcountrw.jsonl")
    lines = log.read_text().splitlines()[:-1]
    (n,) = [i for i, line in enumerate(lines) if json.loads(line).get("type") == "sites"]
    group = json.loads(lines[n])
    group["columns"]["record_slot"][-1] = ""  # an edit's number, or [offset, the slot's bytes]
    lines[n] = json.dumps(group, sort_keys=True)
    body = "".join(line + "\n" for line in lines).encode()
    footer = {"type": "footer", "lines": len(lines), "sha256": hashlib.sha256(body).hexdigest()}
    log.write_bytes(body + json.dumps(footer, sort_keys=True).encode() + b"\n")
    malformed = f"mcountrw: error: {log}: malformed site line (string index out of range)"
    assert_cli_error(mcountrw("scan", str(out)), str(log), "malformed site line")
    for command in ("scan", "audit"):
        tree = mcountrw(command, str(tmp_path / "tree"))
        assert tree.returncode == 2 and str(vmlinux) in tree.stdout, tree
        assert tree.stderr.strip().splitlines() == [malformed], tree.stderr
