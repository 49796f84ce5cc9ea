"""Instruction words and fields: every constant, encoder and extractor agrees with keystone (assemble) and capstone."""

from __future__ import annotations

import capstone
import keystone
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from rewriter import ppc

ENDIANS = [("little", keystone.KS_MODE_LITTLE_ENDIAN), ("big", keystone.KS_MODE_BIG_ENDIAN)]


def assemble(text: str, addr: int, order: str) -> int:
    mode = keystone.KS_MODE_PPC64 | (keystone.KS_MODE_BIG_ENDIAN if order == "big" else keystone.KS_MODE_LITTLE_ENDIAN)
    encoding, _ = keystone.Ks(keystone.KS_ARCH_PPC, mode).asm(text, addr)
    return int.from_bytes(bytes(encoding), order)


def disassemble(word: int, addr: int, order: str) -> str:
    mode = capstone.CS_MODE_64 | (capstone.CS_MODE_BIG_ENDIAN if order == "big" else capstone.CS_MODE_LITTLE_ENDIAN)
    insn = next(capstone.Cs(capstone.CS_ARCH_PPC, mode).disasm(word.to_bytes(4, order), addr, 1))
    return f"{insn.mnemonic} {insn.op_str}".strip()


# Keystone's PPC parser wants plain register numbers; capstone prints r-names.
@pytest.mark.parametrize("order", ["little", "big"])
@pytest.mark.parametrize(
    ("word", "asm", "printed"),
    [
        (ppc.NOP, "nop", "nop"),
        (ppc.MFLR_R0, "mflr 0", "mflr r0"),
        (ppc.STD_R0_16_R1, "std 0, 16(1)", "std r0, 0x10(r1)"),
    ],
)
def test_constants_match_keystone_and_capstone(word: int, asm: str, printed: str, order: str) -> None:
    assert assemble(asm, 0x1000, order) == word
    assert disassemble(word, 0x1000, order) == printed


@pytest.mark.parametrize("order", ["little", "big"])
def test_b_plus_8_is_a_branch_two_words_ahead(order: str) -> None:
    assert assemble("b 0x1008", 0x1000, order) == ppc.B_PLUS_8
    assert disassemble(ppc.B_PLUS_8, 0x1000, order) == "b 0x1008"


in_range = st.integers(min_value=-(1 << 23), max_value=(1 << 23) - 1).map(lambda w: w * 4)
# Sources at least 64 MiB up, so every target in range is a positive address keystone accepts.
src_addr = st.integers(min_value=1 << 24, max_value=(1 << 40)).map(lambda a: a * 4)


@given(src=src_addr, delta=in_range)
def test_bl_agrees_with_keystone_and_capstone(src: int, delta: int) -> None:
    dst = src + delta
    word = ppc.bl(src, dst)
    assert word == assemble(f"bl {dst:#x}", src, "little")
    mnemonic, operand = disassemble(word, src, "big").split()
    assert (mnemonic, int(operand, 0)) == ("bl", dst)
    assert ppc.is_bl(word) and not ppc.is_b(word)
    assert ppc.branch_target(src, word) == dst


@given(src=src_addr, delta=in_range)
def test_b_agrees_with_keystone_and_round_trips(src: int, delta: int) -> None:
    dst = src + delta
    word = ppc.b(src, dst)
    assert word == assemble(f"b {dst:#x}", src, "big")
    assert ppc.is_b(word) and not ppc.is_bl(word)
    assert ppc.branch_target(src, word) == dst


@given(src=src_addr, delta=st.one_of(st.integers(min_value=1 << 25), st.integers(max_value=-(1 << 25) - 1)))
def test_bl_refuses_targets_out_of_range(src: int, delta: int) -> None:
    with pytest.raises(ppc.EncodingError, match="out of range"):
        ppc.bl(src, src + (delta & ~3))


def test_bl_refuses_misaligned_target() -> None:
    with pytest.raises(ppc.EncodingError):
        ppc.bl(0x1000, 0x1002)


def test_vectorised_branch_targets_match_scalar() -> None:
    import numpy as np

    addrs = np.array([0x1000, 0xC000_0000_0200_0000, 0x10], dtype=np.uint64)
    words = np.array(
        [ppc.bl(0x1000, 0x800), ppc.bl(0xC000_0000_0200_0000, 0xC000_0000_0006_CA9C), ppc.bl(0x10, 0)],
        dtype=np.uint32,
    )
    got = ppc.branch_targets(addrs, words).tolist()
    assert got == [ppc.branch_target(int(a), int(w)) for a, w in zip(addrs, words, strict=True)]
    assert ppc.bl_mask(words).all()


def test_describe_names_site_words() -> None:
    words = (ppc.NOP, ppc.MFLR_R0, ppc.B_PLUS_8, ppc.bl(0, 64), ppc.MTLR_R0, 0x3860_0000)
    assert [ppc.describe(w) for w in words] == ["nop", "mflr", "b+8", "bl", "mtlr", "other"]


def test_disassembler_prints_both_endians() -> None:
    assert ppc.Disassembler(big_endian=False).text(ppc.bl(0x100, 0x80), 0x100) == "bl 0x80"
    assert ppc.Disassembler(big_endian=True).text(ppc.MFLR_R0) == "mflr r0"


def test_disassembler_names_a_branch_target_where_capstone_prints_its_address() -> None:
    """A relocatable file's branch has offset 0 until relocated; capstone then prints ``bl 0x40``
    at 0x40, and no target at all for a conditional one (``bne cr7``): the name goes in its place."""
    dis = ppc.Disassembler(big_endian=False)
    assert dis.text(ppc.bl(0x40, 0x40), 0x40, "_mcount") == "bl _mcount"
    assert dis.text(ppc.bl(0x40, 0x8), 0x40, "memcpy+0x8") == "bl memcpy+0x8"
    bne_cr7 = 0x409E_0000  # bne cr7, . (BD 0)
    assert dis.text(bne_cr7, 0x40) == "bne cr7"
    assert dis.text(bne_cr7, 0x40, ".text.unlikely+0x10") == "bne cr7, .text.unlikely+0x10"
    assert dis.text(bne_cr7 | 0x8, 0x40, "out") == "bne cr7, out"
    assert dis.text(0x4200_0000, 0x40, "loop") == "bdnz loop"
    assert dis.text(ppc.MFLR_R0, 0x40, "ignored") == "mflr r0"  # not a branch


@pytest.mark.parametrize("order", ["little", "big"])
def test_fixed_word_texts_are_capstones(order: str) -> None:
    for word, text in ppc.TEXT.items():
        assert disassemble(word, 0x1000, order) == text


@given(src=st.integers(min_value=0, max_value=1 << 40).map(lambda a: a * 4), delta=in_range, link=st.booleans())
def test_branch_text_is_capstones(src: int, delta: int, link: bool) -> None:
    dst = src + delta
    assume(dst >= 0)  # keystone-free, but capstone prints negative targets as huge unsigned ones
    word = ppc.bl(src, dst) if link else ppc.b(src, dst)
    assert ppc.branch_text(src, word) == disassemble(word, src, "little")


@pytest.mark.parametrize("order", ["little", "big"])
@pytest.mark.parametrize(("word", "asm"), [(ppc.XNOP, "xori 0, 0, 0"), (ppc.MR_R0_R0, "or 0, 0, 0")])
def test_quiet_words_match_keystone(word: int, asm: str, order: str) -> None:
    assert assemble(asm, 0x1000, order) == word


bc_delta = st.integers(min_value=-(1 << 13), max_value=(1 << 13) - 1).map(lambda w: w * 4)


@given(src=src_addr, delta=bc_delta, link=st.booleans())
def test_conditional_branch_offset_agrees_with_keystone(src: int, delta: int, link: bool) -> None:
    """B-form (bc, bcl): the same branch_offset, scalar and vectorised, as for I-form words."""
    import numpy as np

    word = assemble(f"{'bnel' if link else 'bne'} 0, {src + delta:#x}", src, "little")
    assert ppc.branch_offset(word) == delta
    assert ppc.branch_target(src, word) == src + delta
    assert ppc.branch_offsets(np.array([word], np.uint32)).tolist() == [delta]


@given(words=st.lists(st.integers(min_value=0, max_value=(1 << 32) - 1), max_size=50), src=src_addr)
def test_vectorised_kinds_and_offsets_match_scalar(words: list[int], src: int) -> None:
    import numpy as np

    words += [*ppc.FIXED, ppc.bl(src, src + 8), ppc.b(src, src - 8), 0x4182_FFF8]
    arr = np.array(words, np.uint32)
    assert [ppc.KINDS[k] for k in ppc.kinds(arr).tolist()] == [ppc.kind(w) for w in words]
    assert ppc.branch_offsets(arr).tolist() == [ppc.branch_offset(w) for w in words]


def test_relative_text_prints_site_words_without_an_address() -> None:
    assert ppc.relative_text(ppc.B_PLUS_8) == "b .+8"
    assert ppc.relative_text(ppc.bl(0x100, 0x80)) == "bl .-128"
    assert ppc.relative_text(ppc.STD_R0_16_R1) == ppc.TEXT[ppc.STD_R0_16_R1]
    assert ppc.relative_text(0x3860_0000) == ".long 0x38600000"


@pytest.mark.parametrize(
    ("asm", "fields"),
    [
        ("std 0, -16(1)", {"primary": 62, "rt": 0, "ra": 1, "ds": -16, "ds_xo": 0}),
        ("stdu 1, -112(1)", {"primary": 62, "rt": 1, "ra": 1, "ds": -112, "ds_xo": 1}),
        ("addi 3, 4, -1", {"primary": 14, "rt": 3, "ra": 4, "d16": -1}),
        ("rlwinm 3, 4, 2, 5, 29", {"primary": 21, "rt": 4, "ra": 3, "rb": 2, "mb": 5, "me": 29}),
        ("rldicl 3, 4, 62, 40", {"primary": 30, "md_xo": 0, "md_sh": 62, "md_mb": 40}),
        ("rldic 3, 4, 2, 33", {"primary": 30, "md_xo": 2, "md_sh": 2, "md_mb": 33}),
        ("add. 3, 4, 5", {"primary": 31, "xo9": 266, "oe": 0, "record": 1, "rb": 5}),
        ("cmplwi 3, 7", {"primary": 10, "ra": 3, "ui16": 7}),
    ],
)
def test_field_extractors_read_what_keystone_wrote(asm: str, fields: dict[str, int]) -> None:
    from rewriter.ppc import fields as f

    word = assemble(asm, 0x1000, "little")
    assert {name: getattr(f, name)(word) for name in fields} == fields


def test_isa_mask_and_rotate() -> None:
    from rewriter.ppc import fields as f

    assert f.mask(32, 47) == 0xFFFF_0000 and f.mask(62, 1) == 0xC000_0000_0000_0003
    assert f.rotl64(1 << 63, 1) == 1 and f.rotl32(0x8000_0001, 1) == 0x0000_0003_0000_0003
