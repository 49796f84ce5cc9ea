"""The scanner on the project's own fixtures: every site of fixtures/manifest.json (written from
the sources and objdump, not by mcountrw), on both endians and every variant."""

from __future__ import annotations

import struct
import subprocess
from pathlib import Path
from typing import Any

import pytest
from boot import require_tool
from conftest import FIXTURES, assert_one_line, invoke, unwrapped

from rewriter.elf.image import Abi, Image
from rewriter.generations import LAYOUTS, Generation
from rewriter.ppc.words import NOP, STD_R0_16_R1
from rewriter.records import nonzero_records, read_records
from rewriter.sites import NOT_BUILT_FOR_FTRACE, Scan, place_text, scan
from rewriter.states import SiteState, Slot

Row = tuple[Any, ...]

BINARIES = sorted(p.name for p in (FIXTURES / "bin").iterdir())


def _expected(entry: dict[str, Any], linked: bool) -> set[Row]:
    return {
        (int(s["slot_addr"], 16), s["function"], s["generation"], s["variant"], s["state"], s["recorded"], s["record"])
        for s in entry["sites"]
    }


def _found(path: Path) -> tuple[set[Row], Scan]:
    image = Image.load(path)
    result = scan(image)
    linked = result.kind.value in ("executable", "vmlinux")
    got = {
        (
            s.addr if linked else s.offset,
            s.function,
            LAYOUTS[s.variant].generation.value,  # the generation whose layout the site was read with
            s.variant.value,
            s.state.value,
            s.recorded,
            None if s.record is None else place_text(image, s.record),
        )
        for s in result.sites
    }
    return got, result


@pytest.mark.parametrize("name", BINARIES)
def test_fixture_sites_match_manifest(name: str, manifest: dict[str, Any]) -> None:
    entry = manifest["binaries"][f"bin/{name}"]
    got, result = _found(FIXTURES / "bin" / name)
    assert got == _expected(entry, result.kind.value == "executable")
    assert result.kind.value == entry["kind"]
    assert result.generation is not None and result.generation.value == entry["generation"]
    assert result.endian == entry["endian"] and result.abi.value == entry["abi"]
    assert result.records.count == entry["num_records"]
    assert len(result.records.unmatched) == len(entry["extra_records"])


def test_big_endian_elfv1_functions_resolve_through_descriptors(manifest: dict[str, Any]) -> None:
    got, result = _found(FIXTURES / "bin" / "prof-be")
    assert result.abi.value == "elfv1" and result.endian == "big"
    assert {f for _, f, *_ in got} == {
        "static_helper",
        "leaf_add",
        "nonleaf_calls",
        "sum8",
        "fp_mix",
        "touch_global",
    }


def test_every_variant_and_generation_is_represented() -> None:
    variants, generations = set(), set()
    for name in BINARIES:
        result = scan(Image.load(FIXTURES / "bin" / name))
        variants |= {s.variant.value for s in result.sites}
        generations.add(result.generation.value if result.generation else None)
    assert variants == {"mprofile", "mprofile-std", "patchable", "ool"}
    assert generations == {"mprofile", "patchable", "ool"}


@pytest.mark.parametrize("name", ["ool-le.o", "ool-be.o"])
def test_ool_object_has_one_recorded_nop_at_each_local_entry(name: str, manifest: dict[str, Any]) -> None:
    """The -fpatchable-function-entry=1 shape: the record, the call slot and the one nop are the
    same word, at the local entry (ELFv2: after the global entry; ELFv1: the code entry). At load
    the kernel leaves it a nop and carves its stub out of the module's .stubs."""
    local_entries = {
        s["function"]: int(s["local_entry_addr"], 16) for s in manifest["binaries"][f"bin/{name}"]["sites"]
    }
    result = scan(Image.load(FIXTURES / "bin" / name))
    assert {s.function: s.offset for s in result.sites} == local_entries
    for s in result.sites:
        assert s.record == s.place
        assert s.boot_state is not None and s.boot_state.value == "disabled"
        assert s.stub == ".stubs" and s.traceable


GENERATION_OF_VARIANT = {"mprofile": "mprofile", "mprofile-std": "mprofile", "patchable": "patchable", "ool": "ool"}


@pytest.mark.parametrize("name", BINARIES)
def test_fixture_records_and_generation_match_manifest(name: str, manifest: dict) -> None:
    """``record`` (the place the kernel's record names, as JSON says it) is the manifest's
    ``record_addr``, and the generation follows from the variants the manifest lists."""
    from rewriter.report.scanfmt import image_json

    entry = manifest["binaries"][f"bin/{name}"]
    image = image_json(scan(Image.load(FIXTURES / "bin" / name)))
    linked = image["kind"] == "executable"
    expected = {
        (int(s["slot_addr"], 16), int(s["record_addr"], 16) if "record_addr" in s else None) for s in entry["sites"]
    }
    got = set()
    for s in image["sites"]:
        record = s["record"]
        if record is not None and not linked:
            section, off = record.split("+")
            assert section == s["section"]
            record = int(off, 16)
        got.add((s["address"] if linked else s["offset"], record))
    assert got == expected
    generations = {GENERATION_OF_VARIANT[s["variant"]] for s in entry["sites"]}
    assert len(generations) == 1 and image["generation"] == generations.pop()


TWIN_OBJECTS = sorted(n for n in BINARIES if n.endswith(".o") and n.startswith(("patchable", "ool")))


@pytest.mark.parametrize("name", ["std-le", "std-le.o"])
def test_gcc5_site_whose_std_a_kernel_nopped_is_still_mprofile_std(tmp_path: Path, name: str) -> None:
    """A 6.13+ kernel's ftrace_init_nop writes a nop over gcc 5's ``std r0,16(r1)`` (slot S, between
    ``mflr r0`` and ``bl _mcount``). The site is still the gcc-5 layout with A two words before the
    call slot: read as plain mprofile, A would be that nop and the site ``nop; bl``, the race state."""
    original = FIXTURES / "bin" / name
    before = scan(Image.load(original))
    site = before.sites[0]
    assert site.variant.value == "mprofile-std" and site.slot_delta(Slot.S) == -4
    order = "<" if before.endian == "little" else ">"
    data = bytearray(original.read_bytes())
    s_at = site.file_offset + site.slot_delta(Slot.S)
    assert struct.unpack_from(order + "I", data, s_at)[0] == STD_R0_16_R1
    struct.pack_into(order + "I", data, s_at, NOP)
    copy = tmp_path / name
    copy.write_bytes(bytes(data))
    after = scan(Image.load(copy))
    got = {s.place: s for s in after.sites}[site.place]
    # mflr; nop; bl: still the gcc-5 layout, enabled. What a kernel's init makes of it is not asserted:
    # 6.1's nops the bl alone, v6.6's validates the std and the newer one swaps it (docs/state-machine.md)
    expected = ("mprofile-std", SiteState.ENABLED, site.function)
    assert (got.variant.value, got.state, got.function) == expected, got
    assert after.sites[1:] == before.sites[1:]  # the other sites keep their std and read as before


def _twin_sites(image: Image, generation: Generation | None = None) -> tuple[Any, Any]:
    """A module's sites from the scan (its plain-Python path) and from the numpy path it twins."""
    from rewriter import sites as S
    from rewriter.code import code_view
    from rewriter.elf.symbols import functions
    from rewriter.mcount import rel_call_places

    # before _stopped_at_first_failure, which both paths share (a broken copy keeps its later sites' words)
    result = S._scan_relocatable(image, generation, None)
    records = nonzero_records(read_records(image))
    assert result.generation is not None and S._plain_module(image, result.generation, records)
    numpy = S._classify(
        image, code_view(image), functions(image), result.generation, rel_call_places(image), records, 16
    )
    return (result.sites, [r.place for r in result.records.unmatched]), (numpy[0], numpy[1].tolist())


@pytest.mark.parametrize("name", TWIN_OBJECTS)
def test_module_path_gives_the_numpy_paths_sites(name: str) -> None:
    """``sites._module_sites`` (plain Python, for modules) against ``_entry_columns`` and
    ``_build_sites`` (numpy): the same sites and unmatched records, on the fixture and on copies
    whose recorded words were overwritten (no longer a state: unmatched) or shifted."""
    from rewriter.generations import OOL_AREAS
    from rewriter.sites import TRACER_NAMES

    assert all("ftrace_" in n for n in TRACER_NAMES + OOL_AREAS)  # _plain_module's one search
    path = FIXTURES / "bin" / name
    image = Image.load(path)
    python, numpy = _twin_sites(image)
    assert python == numpy and python[0]
    data = bytearray(image.data)
    order = "big" if image.big_endian else "little"
    # nop, mflr r0, b .+8, trap, bl .+0: states, non-states, a call that reaches no tracer
    words = (0x60000000, 0x7C0802A6, 0x48000008, 0x7FE00008, 0x48000001)
    for n, site in enumerate(image_sites := scan(image).sites):
        delta = 4 * (n % 2 - 1)  # the word before the call slot (slot A if patchable), the call slot
        if 0 <= site.offset + delta < image.sections[site.section_index].size - 3:
            at = site.file_offset + delta
            data[at : at + 4] = words[n % len(words)].to_bytes(4, order)
    changed = Image.from_bytes(path, bytes(data))
    for generation in (None, scan(image).generation):  # detected (the changes may change it), and given
        python, numpy = _twin_sites(changed, generation)
        assert python == numpy
        assert python[0] != image_sites and python[1]


def test_a_file_with_no_sites_says_the_likely_cause(tmp_path: Path) -> None:
    """An object built without ftrace instrumentation read "0 sites (no sites)" and nothing more:
    the line names the likely cause, as nop and prenop do."""
    cc = require_tool("powerpc64le-linux-gnu-gcc")
    src, plain = tmp_path / "plain.c", tmp_path / "plain.o"
    src.write_text("int f(int x) { return x + 1; }\n")
    subprocess.run([cc, "-O2", "-c", str(src), "-o", str(plain)], check=True)
    lines = unwrapped(invoke("scan", plain).stdout).splitlines()
    assert lines[0].endswith(": no sites and no records") and lines[1] == f"  no sites: {NOT_BUILT_FOR_FTRACE}", lines


def test_the_no_sites_note_is_not_said_of_a_file_with_records() -> None:
    """Read as patchable, an ool object has 6 records and no site: "no records" was false there
    (its summary and FTRACE OFF line say what the records are)."""
    lines = unwrapped(invoke("scan", "--generation", "patchable", FIXTURES / "bin" / "ool-le.o").stdout).splitlines()
    assert "6 records (0 skipped, 6 unmatched)" in lines[0] and not any("no sites:" in x for x in lines), lines


_MCOUNT_WITH_TOC = """\
	.abiversion 2
	.text
	.globl _mcount
	.type _mcount,@function
_mcount:
0:	addis 2,12,.TOC.-0b@ha
	addi 2,2,.TOC.-0b@l
	.localentry _mcount,.-_mcount
	mflr 12
	mtctr 12
	mtlr 0
	bctr
	.size _mcount,.-_mcount
	.section .note.GNU-stack,"",@progbits
"""


def test_calls_to_an_mcount_with_a_toc_land_on_its_local_entry_and_are_sites(tmp_path: Path) -> None:
    """An _mcount that sets up r2 (glibc's, a user's own) has a global entry; a direct call from
    code sharing its TOC is ``bl _mcount+0x8``, its local entry. Those calls were no sites, so
    their records read as naming nothing ("FTRACE OFF") and nop said they were nopped already."""
    cc = require_tool("powerpc64le-linux-gnu-gcc")
    src, asm = tmp_path / "f.c", tmp_path / "m.S"
    funcs = "".join(f"__attribute__((noinline)) int f{i}(int x) {{ return g + x * {i}; }}\n" for i in range(3))
    src.write_text("int g;\n" + funcs + "int main(void) { return f0(1) + f1(2) + f2(3); }\n")
    asm.write_text(_MCOUNT_WITH_TOC)
    exe = tmp_path / "prog"
    build = [cc, "-O2", "-fno-pie", "-pg", "-mprofile-kernel", "-static", "-no-pie", str(src), str(asm), "-o", str(exe)]
    subprocess.run(build, check=True)
    calls = subprocess.run([cc.with_name("powerpc64le-linux-gnu-objdump"), "-d", str(exe)], check=True,
                           capture_output=True, text=True).stdout.count("<_mcount+0x8>")  # fmt: skip
    result = scan(Image.load(exe))
    assert calls >= 4 and len(result.sites) == calls, (calls, len(result.sites))
    assert {s.function for s in result.sites} >= {"f0", "f1", "f2", "main"}


def test_generation_ool_may_read_an_image_whose_recorded_nops_are_all_followed_by_a_nop(tmp_path: Path) -> None:
    """``-fpatchable-function-entry=1`` and a body whose first word ld relaxed to a nop (its
    ``addis r9,r2,g@toc@ha``): ``nop; nop`` at the one record, as patchable would be. The words
    cannot tell, so ``--generation ool`` is obeyed, by a rewrite too (it was refused as
    contradicting the image)."""
    cc = require_tool("powerpc64-linux-gnu-gcc")
    src, exe = tmp_path / "p.c", tmp_path / "p"
    src.write_text(
        "int g = 5;\n__attribute__((noinline)) int f(int x) { return g + x; }\n"
        "__attribute__((patchable_function_entry(0, 0))) int main(int argc, char **argv) { return g + f(argc); }\n"
    )
    build = [cc, "-O2", "-fno-pie", "-fpatchable-function-entry=1", "-static", "-no-pie", str(src), "-o", str(exe)]
    subprocess.run(build, check=True)
    guessed = scan(Image.load(exe))
    assert guessed.generation is Generation.PATCHABLE and len(guessed.sites) == 1
    told = scan(Image.load(exe), generation=Generation.OOL)
    assert told.generation is Generation.OOL  # obeyed, and said: what the words fit first
    assert told.overridden is not None and told.overridden.generation is Generation.PATCHABLE
    (site,) = told.sites
    assert site.function == "f" and site.record == site.addr == guessed.sites[0].record
    out = tmp_path / "p.nop"
    result = invoke("nop", exe, "-o", out, "--drop-records", "--generation", "ool")
    assert result.exit_code == 0, result.output
    assert invoke("undo", out, "-o", tmp_path / "back").exit_code == 0
    assert (tmp_path / "back").read_bytes() == exe.read_bytes()


@pytest.mark.parametrize("entry", ["2,2", "2,1", "1,1"])
def test_nops_before_the_function_entry_are_a_layout_refused_by_name(tmp_path: Path, entry: str) -> None:
    """``-fpatchable-function-entry=M,N`` with N > 0 puts N nops before the symbol: no kernel
    generation. Read as patchable or ool, its sites got a weak-body reason and the function `?`."""
    cc = require_tool("powerpc64-linux-gnu-gcc")
    src, obj = tmp_path / "f.c", tmp_path / "f.o"
    src.write_text("int g;\nint f(int x) { return g + x; }\nint h(int y) { return y * 3; }\n")
    subprocess.run([cc, "-O2", f"-fpatchable-function-entry={entry}", "-c", str(src), "-o", str(obj)], check=True)
    assert_one_line(invoke("scan", obj), 2, "error", "2 records at nops just before a function's entry",
                    "-fpatchable-function-entry=M,N, N > 0")  # fmt: skip


@pytest.mark.parametrize("entry", ["2", "1"])
def test_the_kernels_entry_nops_are_read_as_their_generation(tmp_path: Path, entry: str) -> None:
    cc = require_tool("powerpc64-linux-gnu-gcc")
    src, obj = tmp_path / "f.c", tmp_path / "f.o"
    src.write_text("int g;\nint f(int x) { return g + x; }\nint h(int y) { return y * 3; }\n")
    subprocess.run([cc, "-O2", f"-fpatchable-function-entry={entry}", "-c", str(src), "-o", str(obj)], check=True)
    found = scan(Image.load(obj))
    assert found.generation is (Generation.PATCHABLE if entry == "2" else Generation.OOL)
    assert sorted(s.function or "?" for s in found.sites) == ["f", "h"] and all(s.traceable for s in found.sites)


def test_a_single_function_ool_object_is_read_as_ool(tmp_path: Path) -> None:
    """One function at ``-fpatchable-function-entry=1`` gives one record at one nop followed by its
    body: one recorded nop not followed by a nop is already the ool shape. Asking for more than
    one such nop read a one-function module as patchable, and its site's layout wrong."""
    cc = require_tool("powerpc64-linux-gnu-gcc")
    src, obj = tmp_path / "f.c", tmp_path / "f.o"
    src.write_text("int h(int y) { return y * 3; }\n")
    subprocess.run([cc, "-O2", "-fpatchable-function-entry=1", "-c", str(src), "-o", str(obj)], check=True)
    found = scan(Image.load(obj))
    assert found.generation is Generation.OOL, found.generation
    (site,) = found.sites
    assert site.function == "h" and site.variant.value == "ool" and site.traceable


_BE_FUNCS = "int g;\n__attribute__((noinline)) int f(int x) { return g + x; }\nint h(int y) { return y * 3 + f(y); }\n"
# An _mcount to link against, and an entry; built without -pg.
_BE_MCOUNT = "void _mcount(void) {}\nint _start(void) { return 0; }\n"
_GCC = {"be": "powerpc64-linux-gnu-gcc", "le": "powerpc64le-linux-gnu-gcc"}
_CLANG_TARGET = {"be": "--target=powerpc64-linux-gnu", "le": "--target=powerpc64le-linux-gnu"}


def _kernel_like(tmp_path: Path, flags: list[str], linked: bool, endian: str = "be", clang: bool = False) -> Path:
    """``_BE_FUNCS`` built with ``flags`` by gcc (big-endian: ELFv1; little-endian: ELFv2) or by
    clang for the same target: the object, or an image linked at a ppc64 kernel's addresses
    (0xc000...), with an _mcount of its own (gcc links both)."""
    gcc = require_tool(_GCC[endian])
    cc = [str(require_tool("clang-14")), _CLANG_TARGET[endian]] if clang else [str(gcc)]
    src, obj = tmp_path / "k.c", tmp_path / "k.o"
    src.write_text(_BE_FUNCS)
    subprocess.run([*cc, "-O2", *flags, "-c", str(src), "-o", str(obj)], check=True)
    if not linked:
        return obj
    msrc, mobj, out = tmp_path / "m.c", tmp_path / "m.o", tmp_path / "k.elf"
    msrc.write_text(_BE_MCOUNT)
    subprocess.run([gcc, "-O2", "-c", str(msrc), "-o", str(mobj)], check=True)
    link = ["-nostdlib", "-static", "-no-pie", "-Wl,-Ttext=0xc000000000010000", "-Wl,-e,_start"]
    subprocess.run([gcc, *link, str(obj), str(mobj), "-o", str(out)], check=True)
    return out


def test_an_elfv1_image_at_kernel_addresses_names_its_functions(tmp_path: Path) -> None:
    """An ELFv1 function symbol names its descriptor in .opd. At a kernel's addresses (0xc000...)
    the descriptor's index was worked out in int64, and every linked ELFv1 kernel read as
    ``corrupt ELF data (OverflowError ...)``: no fixture lives that high."""
    image = _kernel_like(tmp_path, ["-pg", "-mprofile-kernel"], linked=True)
    found = scan(Image.load(image))
    assert found.generation is Generation.MPROFILE and {s.addr for s in found.sites} >= {0xC000000000010004}
    assert sorted(s.function or "?" for s in found.sites) == ["f", "h"]
    assert invoke("scan", image).exit_code == 0


# (endian, clang, its ABI): every build of classic -pg a ppc64 kernel can have. gcc uses it only
# for ELFv1 (MPROFILE_KERNEL needs ELFv2); clang has no -mprofile-kernel at all (nor, in clang 14,
# -fpatchable-function-entry on ppc64), so every site of a clang-built ppc64le kernel is one too.
# gcc's ELFv2 -pg is that layout from the other compiler.
_PG_BUILDS = {
    "gcc-be": ("be", False, Abi.ELFV1),
    "gcc-le": ("le", False, Abi.ELFV2),
    "clang-le": ("le", True, Abi.ELFV2),
    "clang-be": ("be", True, Abi.ELFV1),
}


@pytest.mark.parametrize("build", list(_PG_BUILDS))
@pytest.mark.parametrize("linked", [False, True], ids=["object", "linked"])
def test_classic_pg_is_a_layout_refused_by_name(tmp_path: Path, linked: bool, build: str) -> None:
    """Plain ``-pg`` (a big-endian ELFv1 kernel's, ftrace_64_pg.c; a clang-built ppc64le one's)
    calls _mcount after the prologue, then restores the TOC: gcc's ``stdu r1,-N(r1); bl _mcount;
    nop``, clang's ``mr r30,r3; bl _mcount; nop``, no ``mflr r0`` before the call. Read as
    mprofile its sites were all ``unknown`` and said to be a boot-time ftrace bug: a BE ELFv1 7.2
    built here boots under qemu with all 15,731 of its records traceable. ELFv2 was let through:
    two ``unknown`` unrecorded sites, exit 0. Every command now refuses it in one line, on both
    ABIs; gcc's -mprofile-kernel build of the same source still reads."""
    endian, clang, abi = _PG_BUILDS[build]
    image = _kernel_like(tmp_path, ["-pg"], linked=linked, endian=endian, clang=clang)
    assert Image.load(image).abi is abi
    words = ("2 calls to _mcount after the prologue", "classic -pg", "without -mprofile-kernel", "ftrace_64_pg.c")
    for command in (["scan"], ["audit"], ["nop", "-o", str(tmp_path / "out")]):
        assert_one_line(invoke(*command, image), 2, "error", str(image), *words)
    assert not (tmp_path / "out").exists()
    if clang:
        return
    other = tmp_path / "mprofile"
    other.mkdir()
    profiled = scan(Image.load(_kernel_like(other, ["-pg", "-mprofile-kernel"], linked=linked, endian=endian)))
    assert profiled.generation is Generation.MPROFILE
    assert sorted(s.function or "?" for s in profiled.sites) == ["f", "h"]
