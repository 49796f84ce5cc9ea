"""The numpy image model agrees with pyelftools (used here, never on the hot path)."""

from __future__ import annotations

import gzip
import lzma
from pathlib import Path

import numpy as np
import pytest
import zstandard
from conftest import FIXTURES
from elftools.elf.elffile import ELFFile

from rewriter.elf import structs as S
from rewriter.elf.image import Abi, Image, Kind
from rewriter.elf.symbols import RelocationNames, functions
from rewriter.errors import ImageError


def _compare_with_pyelftools(path: Path) -> None:
    img = Image.load(path)
    with open(path, "rb") as fh:
        ref = ELFFile(fh)
        assert len(img.sections) == ref.num_sections()
        for ours, theirs in zip(img.sections, ref.iter_sections(), strict=True):
            assert ours.name == theirs.name
            assert ours.offset == theirs["sh_offset"] and ours.size == theirs["sh_size"]
            assert ours.addr == theirs["sh_addr"] and ours.flags == theirs["sh_flags"]
        symtab = ref.get_section_by_name(".symtab")
        syms = img.symbols
        assert syms is not None
        for i in np.linspace(0, len(syms.table) - 1, 200).astype(int).tolist():
            ref_sym = symtab.get_symbol(i)
            assert syms.name(i) == ref_sym.name
            assert int(syms.table["st_value"][i]) == ref_sym["st_value"]
        rela = img.section(".rela.text") or img.section(".rela.dyn")
        if rela is not None:
            ref_rela = ref.get_section_by_name(rela.name)
            ours = img.relocations(rela)
            for i in np.linspace(0, len(ours) - 1, 50).astype(int).tolist():
                r = ref_rela.get_relocation(i)
                assert int(ours["r_offset"][i]) == r["r_offset"]
                assert int(ours["r_addend"][i]) == r["r_addend"]
                assert int(S.r_type(ours["r_info"][i])) == r["r_info_type"]


def test_vmlinux_tables_match_pyelftools(corpus) -> None:
    _compare_with_pyelftools(corpus.vmlinux)


def test_module_tables_match_pyelftools(corpus) -> None:
    _compare_with_pyelftools(corpus.modules_dir / "fs/nls/nls_utf8.ko")


def test_vmlinux_is_little_endian_elfv2_vmlinux(corpus) -> None:
    img = Image.load(corpus.vmlinux)
    assert (img.kind, img.abi, img.big_endian, img.signature) == (Kind.VMLINUX, Abi.ELFV2, False, None)


def test_module_signature_trailer_is_found(corpus) -> None:
    path = corpus.modules_dir / "fs/nls/nls_utf8.ko"
    img = Image.load(path)
    assert img.kind is Kind.MODULE and img.signature is not None
    data = path.read_bytes()
    assert data[: img.elf_end][-4:] != b"~Mod"
    # The ELF data ends where the section header table ends (it is last in a module).
    shoff = int(img.ehdr["e_shoff"])
    assert img.elf_end >= shoff + len(img.sections) * 64


@pytest.mark.parametrize(
    ("suffix", "compress"),
    [(".xz", lzma.compress), (".gz", gzip.compress), (".zst", zstandard.ZstdCompressor().compress)],
)
def test_compressed_modules_load_like_plain_ones(corpus, tmp_path: Path, suffix: str, compress) -> None:
    src = corpus.modules_dir / "fs/nls/nls_utf8.ko"
    packed = tmp_path / ("nls_utf8.ko" + suffix)
    packed.write_bytes(compress(src.read_bytes()))
    img = Image.load(packed)
    assert bytes(img.data) == src.read_bytes()
    assert img.kind is Kind.MODULE


def test_local_entry_points_follow_st_other(corpus) -> None:
    """nls_utf8's char2uni has a two-instruction TOC prologue (st_other localentry 8)."""
    img = Image.load(corpus.modules_dir / "fs/nls/nls_utf8.ko")
    funcs = functions(img)
    syms = img.symbols
    assert syms is not None
    by_name = {
        syms.name_at(int(n)): (int(s), int(lep))
        for s, lep, n in zip(funcs.start, funcs.lep, funcs.name_index, strict=True)
    }
    start, lep = by_name["char2uni"]
    assert lep - start == 8


def test_offset_of_maps_text_addresses(corpus) -> None:
    img = Image.load(corpus.vmlinux)
    text = img.section(".text")
    assert text is not None
    assert img.offset_of(text.addr + 0x100) == text.offset + 0x100
    assert img.addr_of(text.offset + 0x100) == text.addr + 0x100
    with pytest.raises(ImageError, match="in no section"):
        img.offset_of(0x10)


def test_a_relocation_is_named_by_its_symbol_or_its_section_place() -> None:
    """ool-be.o (ELFv1) calls leaf_add by name and two functions through the section symbol of
    .opd, which has no name of its own: those read as the place, .opd+0x0. No relocation: None."""
    img = Image.load(FIXTURES / "bin" / "ool-be.o")
    text = img.section(".text")
    assert text is not None
    rela = img.relocations(next(r for r in img.relocation_sections() if r.info == text.shndx))
    names = RelocationNames(img, S.BRANCH_RELOCS)
    named = {
        int(r["r_offset"]): names.text(text.shndx, int(r["r_offset"]))
        for r in rela
        if int(S.r_type(r["r_info"])) == S.R_PPC64_REL24
    }
    assert sorted(named.values()) == [".opd+0x0", ".opd+0x0", "leaf_add"]
    assert names.text(text.shndx, 0) is None
    linked = Image.load(FIXTURES / "bin" / "clean")
    assert RelocationNames(linked, S.BRANCH_RELOCS).text(1, 0) is None
