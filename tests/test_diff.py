"""`mcountrw diff`: matched by function name; a rewritten copy of the corpus vmlinux differs in
exactly the sites that were rewritten; variants, moves and records on the fixtures; trees; and
across generations, the functions added, removed, moved between sections and changed in
generation, checked on the corpus kernels against names read with pyelftools."""

from __future__ import annotations

import bisect
import functools
import json
import shutil
import subprocess
from pathlib import Path
from typing import Literal

import pytest
from boot import KERNELS, Corpus, counts, require_kernel, require_tool
from conftest import FIXTURES, unwrapped
from elftools.elf.elffile import ELFFile
from elftools.elf.sections import SymbolTableSection
from typer.testing import CliRunner

from rewriter import ppc
from rewriter.cli import app
from rewriter.diff import Change, FunctionChangeKind, diff_files, diff_paths
from rewriter.elf.image import Image
from rewriter.generations import LAYOUTS, Variant
from rewriter.sites import scan
from rewriter.states import SiteState, Slot


def _order(image: Image) -> Literal["little", "big"]:
    return "big" if image.big_endian else "little"


def _nop_sites(src: Path, dst: Path, every: int) -> set[str | None]:
    """Copy ``src`` and nop both slots (mflr at call slot - 4, bl at the call slot) of every
    ``every``-th site, by writing the words directly; returns the functions changed."""
    shutil.copyfile(src, dst)
    image = Image.load(dst)
    sites = scan(image).sites[::every]
    with open(dst, "r+b") as fh:
        for site in sites:
            for offset in (site.file_offset - 4, site.file_offset):
                fh.seek(offset)
                fh.write(ppc.NOP.to_bytes(4, _order(image)))
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


def test_nops_moved_after_the_global_entry_show_as_moved_sites() -> None:
    # gcc 12 puts the patchable nops at the symbol, the kernel's compiler after the global entry:
    # only the two functions with a global entry have their call slot elsewhere (+4 -> +12).
    d = diff_files(FIXTURES / "bin" / "patchable-le.o", FIXTURES / "bin" / "patchable-lep-le.o")
    assert {(c.change, c.function, c.detail) for c in d.changes} == {
        (Change.MOVED, f, f"{f}+0x4 -> {f}+0xc") for f in ("nonleaf_calls", "touch_global")
    }
    assert d.functions == () and d.common_functions == 6


def test_gcc5_site_rewritten_to_two_words_is_a_variant_change(tmp_path: Path) -> None:
    """mflr; std; bl -> nop; mflr; bl: the call slot stays, the std form becomes the plain one."""
    src, dst = FIXTURES / "bin" / "std-le.o", tmp_path / "std-le.o"
    shutil.copyfile(src, dst)
    image = Image.load(dst)
    site = next(s for s in scan(image).sites if s.function == "std_leaf")
    lay = LAYOUTS[Variant.MPROFILE_STD]
    with open(dst, "r+b") as fh:
        for slot, word in ((Slot.A, ppc.NOP), (Slot.S, ppc.MFLR_R0)):
            fh.seek(site.file_offset + (lay.offset(slot) or 0))
            fh.write(word.to_bytes(4, _order(image)))
    d = diff_files(src, dst)
    assert [(c.change, c.function, c.detail) for c in d.changes] == [
        (Change.VARIANT, "std_leaf", "mprofile-std -> mprofile")
    ]


@pytest.mark.parametrize(("a", "b"), [("prof-le.o", "ool-le.o"), ("patchable-be.o", "ool-be.o")])
def test_across_generations_every_function_changes_generation_and_no_site_its_words(a: str, b: str) -> None:
    """The layouts differ, so words, variants and offsets are not compared; all boot disabled."""
    d = diff_files(FIXTURES / "bin" / a, FIXTURES / "bin" / b)
    ga, gb = (scan(Image.load(FIXTURES / "bin" / n)).generation for n in (a, b))
    assert ga is not None and gb is not None and ga is not gb
    assert d.generations == (ga, gb)
    assert d.changes == () and d.unchanged == 6
    assert {(f.change, f.function, f.before, f.after) for f in d.functions} == {
        (FunctionChangeKind.GENERATION, f, ga.value, gb.value)
        for f in ("static_helper", "leaf_add", "nonleaf_calls", "sum8", "fp_mix", "touch_global")
    }


def test_generation_override_is_used_and_checked() -> None:
    ool = str(FIXTURES / "bin" / "ool-le.o")
    result = CliRunner().invoke(app, ["diff", ool, ool, "--format", "json", "--generation", "patchable"])
    assert json.loads(result.output)["images"][0]["generations"] == ["patchable", "patchable"]
    result = CliRunner().invoke(app, ["diff", ool, ool, "--format", "json"])
    assert json.loads(result.output)["images"][0]["generations"] == ["ool", "ool"]
    for bad in (["--generation", "pg"], ["--generation", "ool"] * 3):
        result = CliRunner().invoke(app, ["diff", ool, ool, *bad])
        assert result.exit_code == 2 and result.output.count("\n") == 1, result.output


def test_dropped_record_is_reported(tmp_path: Path) -> None:
    image = Image.load(FIXTURES / "bin" / "clean")
    sec = image.section("__mcount_loc")
    assert sec is not None
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
    assert len(pair["changes"]) == 1  # every third site of clean.o's three
    md = CliRunner().invoke(app, ["diff", str(a), str(b)]).output
    # the file alone is read: prof-le.o's six sites, each in a function of its own (fixtures/manifest.json)
    assert "**1 image pair, 1 site change, 0 function changes**; 1 file (6 sites) only in A, 0 files only in B." in md


def test_identical_files_exit_0_and_mixed_arguments_exit_2(tmp_path: Path) -> None:
    clean = str(FIXTURES / "bin" / "clean")
    assert CliRunner().invoke(app, ["diff", clean, clean]).exit_code == 0
    assert CliRunner().invoke(app, ["diff", clean, str(tmp_path)]).exit_code == 2


@pytest.mark.corpus
@pytest.mark.slow
def test_vmlinux_diff_reports_exactly_the_rewritten_sites(corpus: Corpus, tmp_path: Path) -> None:
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
    assert pair["unchanged"] == counts("6.1").records - len(nopped) and pair["relocated"] == 0


def test_diff_paths_of_two_files_is_one_pair() -> None:
    clean = FIXTURES / "bin" / "clean"
    d = diff_paths(clean, clean, [clean], [clean])
    assert len(d.images) == 1 and not d.changed


# -- across generations, on the corpus -------------------------------------------------------


@functools.cache
def _recorded_functions(path: Path) -> dict[str, frozenset[str]]:
    """Name -> sections of the sized FUNC symbols that contain a record of the image's table
    (``__start_mcount_loc``..``__stop_mcount_loc``), read with pyelftools alone, each by every name
    of its start: aliases (sys_ni_syscall and the syscalls that fall back to it) are names of the
    function too. The slots are read from the file: in the Debian images each equals its
    R_PPC64_RELATIVE addend."""
    with open(path, "rb") as fh:
        elf = ELFFile(fh)
        sections = [(x.name, x["sh_addr"], x["sh_size"], x["sh_offset"]) for x in elf.iter_sections()]
        symtab = elf.get_section_by_name(".symtab")
        assert isinstance(symtab, SymbolTableSection)
        bounds: dict[str, int] = {}
        by_start: dict[int, tuple[int, int, str, str]] = {}
        names: dict[int, set[str]] = {}
        for sym in symtab.iter_symbols():
            if sym.name in ("__start_mcount_loc", "__stop_mcount_loc"):
                bounds[sym.name] = sym["st_value"]
            shndx = sym["st_shndx"]
            if sym["st_info"]["type"] != "STT_FUNC" or not isinstance(shndx, int):
                continue
            names.setdefault(sym["st_value"], set()).add(sym.name)
            if sym["st_size"] == 0:
                continue
            key = (sym["st_name"], sym["st_size"], sym.name, sections[shndx][0])
            by_start[sym["st_value"]] = min(key, by_start.get(sym["st_value"], key))
        start, stop = bounds["__start_mcount_loc"], bounds["__stop_mcount_loc"]
        _, addr, _, offset = next(x for x in sections if x[1] <= start < x[1] + x[2])
        fh.seek(offset + start - addr)
        table = fh.read(stop - start)
        order: Literal["little", "big"] = "little" if elf.little_endian else "big"
    starts = sorted(by_start)
    out: dict[str, set[str]] = {}
    for i in range(0, len(table), 8):
        record = int.from_bytes(table[i : i + 8], order)
        k = bisect.bisect_right(starts, record) - 1
        if not record or k < 0:
            continue
        _, size, _, section = by_start[starts[k]]
        if record < starts[k] + size:
            for name in names[starts[k]]:
                out.setdefault(name, set()).add(section)
    return {name: frozenset(secs) for name, secs in out.items()}


@pytest.mark.corpus
@pytest.mark.slow
@pytest.mark.parametrize(("a", "b"), [("6.1", "6.12"), ("6.12", "7.2")])
def test_vmlinux_diff_across_generations_matches_pyelftools(a: str, b: str) -> None:
    va, vb = require_kernel(a).vmlinux, require_kernel(b).vmlinux
    result = CliRunner().invoke(app, ["diff", str(va), str(vb), "--format", "json"])
    assert result.exit_code == 1, result.output
    (pair,) = json.loads(result.output)["images"]
    assert pair["generations"] == [KERNELS[a].generation, KERNELS[b].generation]
    got: dict[str, set[tuple[str, str | None, str | None]]] = {k.value: set() for k in FunctionChangeKind}
    for f in pair["functions"]["changes"]:
        got[f["change"]].add((f["function"], f["before"], f["after"]))

    fa, fb = _recorded_functions(va), _recorded_functions(vb)
    both = fa.keys() & fb.keys()
    one = {n for n in both if len(fa[n]) == 1 == len(fb[n]) and fa[n] != fb[n]}
    assert got == {
        "added": {(n, None, ",".join(sorted(fb[n]))) for n in fb.keys() - fa.keys()},
        "removed": {(n, ",".join(sorted(fa[n])), None) for n in fa.keys() - fb.keys()},
        "generation": {(n, KERNELS[a].generation, KERNELS[b].generation) for n in both},
        "section": {(n, *fa[n], *fb[n]) for n in one},
    }
    assert pair["functions"]["common"] == len(both)
    assert {(before, after) for _, before, after in got["section"]} <= {
        (".text", ".init.text"),
        (".init.text", ".text"),
    }
    assert all(len(v) > 0 for v in got.values())  # every kind occurs between these kernels


@pytest.mark.corpus
def test_sites_paired_across_generations_are_the_same_at_boot_not_unchanged() -> None:
    """6.1's nls_utf8 (`mflr; bl _mcount`) against 6.12's (`nop; nop`): every word differs, so
    "3 unchanged" read as false; they compare by what boot makes of them."""
    a = require_kernel("6.1").modules_dir / "fs/nls/nls_utf8.ko"
    b = require_kernel("6.12").modules_dir / "fs/nls/nls_utf8.ko.xz"
    result = CliRunner().invoke(app, ["diff", str(a), str(b)])
    assert result.exit_code == 1, result.output
    assert (
        "Sites: no changes; 3 the same at boot (0 relocated with their function; the words each generation's own); "
        "records 3 -> 3." in unwrapped(result.output).splitlines()
    ), result.output


def test_the_headline_says_how_many_sites_changed_when_a_site_changed_twice(tmp_path: Path) -> None:
    """Nopped with its record dropped, a site is two changes (state, record-removed): "6 site
    changes" for 3 sites read as 6 sites; one change a site says no more."""
    src = FIXTURES / "bin" / "clean"
    lines = []
    for extra in (("--drop-records",), ()):
        out = tmp_path / f"n{len(extra)}"
        assert CliRunner().invoke(app, ["nop", str(src), "-o", str(out), *extra]).exit_code == 0
        lines.append(CliRunner().invoke(app, ["diff", str(src), str(out)]).output.splitlines()[2])
    assert lines[0].startswith("**1 image pair, 6 site changes at 3 sites, 0 function changes**"), lines
    assert lines[1].startswith("**1 image pair, 3 site changes, 0 function changes**"), lines


def test_a_pair_of_two_bad_files_names_both(tmp_path: Path) -> None:
    """Both files of a pair unreadable: only A's was named (B's never, on stderr either), in a tree
    as for two files; two files that cannot be compared write no report."""
    for side in ("a", "b"):
        (tmp_path / side).mkdir()
        (tmp_path / side / "y.ko").write_bytes(b"junk " + side.encode())
        shutil.copy(FIXTURES / "bin" / "prof-le.o", tmp_path / side / "p.o")
    bad = [f"mcountrw: error: {tmp_path / s / 'y.ko'}: not an ELF file (too short)" for s in ("a", "b")]
    tree = CliRunner().invoke(app, ["diff", str(tmp_path / "a"), str(tmp_path / "b")])
    assert tree.exit_code == 2 and tree.stderr.splitlines() == bad and "1 image pair" in tree.stdout, tree.output
    files = CliRunner().invoke(app, ["diff", str(tmp_path / "a" / "y.ko"), str(tmp_path / "b" / "y.ko")])
    assert files.exit_code == 2 and files.stderr.splitlines() == bad and not files.stdout, files.output


def test_two_missing_paths_are_both_named(tmp_path: Path) -> None:
    """diff of two paths that are not there named only the first."""
    a, b = tmp_path / "a", tmp_path / "b"
    result = CliRunner().invoke(app, ["diff", str(a), str(b)])
    assert result.exit_code == 2 and not result.stdout, result.output
    assert result.stderr.splitlines() == [f"mcountrw: error: {p}: No such file or directory" for p in (a, b)]


def _mprofile_object(tmp_path: Path, name: str, functions: dict[str, tuple[str, ...]]) -> Path:
    """An object of mprofile functions, each given as its name and its aliases."""
    gcc = require_tool("powerpc64le-linux-gnu-gcc")
    lines = ["\t.abiversion 2", "\t.text"]
    for fn, more in functions.items():
        lines += ["\t.p2align 4", *(f"\t.globl {n}\n\t.type {n}, @function" for n in (fn, *more)), f"{fn}:"]
        lines += [f"{n} = {fn}" for n in more]
        lines += ["\tmflr 0", "1:\tbl _mcount", '\t.pushsection __mcount_loc,"a",@progbits', "\t.8byte 1b",
                  "\t.popsection", "\tblr", f"\t.size {fn}, .-{fn}"]  # fmt: skip
    src, obj = tmp_path / f"{name}.S", tmp_path / f"{name}.o"
    src.write_text("\n".join(lines) + "\n")
    subprocess.run([gcc, "-c", str(src), "-o", str(obj)], check=True)
    return obj


def test_a_function_that_became_an_alias_of_another_is_not_removed(tmp_path: Path) -> None:
    """6.1's cpu_show_gds (and eleven more) are their own functions; in 6.12 they are aliases of
    cpu_show_not_affected, whose site stands for them all. Their names were listed as removed
    functions, though a kernel developer finds each in 6.12; their sites are gone, as listed."""
    a = _mprofile_object(tmp_path, "a", {"cpu_show_gds": (), "cpu_show_mds": ()})
    b = _mprofile_object(tmp_path, "b", {"cpu_show_not_affected": ("cpu_show_gds", "cpu_show_mds")})
    d = diff_files(a, b)
    assert {(f.change, f.function) for f in d.functions} == {(FunctionChangeKind.ADDED, "cpu_show_not_affected")}
    assert d.common_functions == 2
    assert {(c.change, c.function) for c in d.changes} == {
        (Change.ADDED, "cpu_show_not_affected"), (Change.REMOVED, "cpu_show_gds"), (Change.REMOVED, "cpu_show_mds")
    }  # fmt: skip


def test_a_pair_of_two_byte_orders_or_abis_says_so_and_has_changed() -> None:
    """prof-le.o (little-endian ELFv2) against prof-be.o (big-endian ELFv1), the same source: the
    diff said two sites moved and never that the two are other builds."""
    le, be = FIXTURES / "bin" / "prof-le.o", FIXTURES / "bin" / "prof-be.o"
    shown = CliRunner().invoke(app, ["diff", str(le), str(be)])
    assert shown.exit_code == 1 and "Built little-endian elfv2 -> big-endian elfv1." in shown.output, shown.output
    (pair,) = json.loads(CliRunner().invoke(app, ["diff", str(le), str(be), "--format", "json"]).output)["images"]
    assert pair["builds"] == ["little-endian elfv2", "big-endian elfv1"]
    same = diff_files(le, le)
    assert same.builds == ("little-endian elfv2",) * 2 and not same.rebuilt
