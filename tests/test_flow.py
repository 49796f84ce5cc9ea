"""The mflr-nop safety walk: the instruction table against capstone, the walk on small functions
assembled with keystone (one per rule of rewriter/flow.py), the fixtures, and the corpus figures."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import capstone
import keystone
import numpy as np
import pytest
from conftest import FIXTURES

from rewriter import flow
from rewriter.code import CodeView
from rewriter.elf.image import Image
from rewriter.elf.symbols import Functions
from rewriter.generations import Variant
from rewriter.ppc import fields, table
from rewriter.sites import Site, scan
from rewriter.states import SiteState

TABLE = table.build_table()

# -- the table against capstone ---------------------------------------------------------------

# capstone prints extended mnemonics; these name the table row they come from.
ALIAS = {
    "li": "addi", "la": "addi", "subi": "addi", "lis": "addis", "subis": "addis", "mr": "or", "nop": "ori",
    "xnop": "xori", "not": "nor", "sub": "subf", "subc": "subfc", "cmpdi": "cmpi", "cmpwi": "cmpi",
    "cmpldi": "cmpli", "cmplwi": "cmpli", "cmpd": "cmp", "cmpw": "cmp", "cmpld": "cmpl", "cmplw": "cmpl",
    "clrldi": "rldicl", "srdi": "rldicl", "rotldi": "rldicl", "extrdi": "rldicl", "sldi": "rldicr",
    "clrrdi": "rldicr", "extldi": "rldicr", "clrlsldi": "rldic", "insrdi": "rldimi", "rotld": "rldcl",
    "clrlwi": "rlwinm", "slwi": "rlwinm", "srwi": "rlwinm", "rotlwi": "rlwinm", "clrrwi": "rlwinm",
    "extlwi": "rlwinm", "extrwi": "rlwinm", "clrlslwi": "rlwinm", "rotrwi": "rlwinm", "inslwi": "rlwimi",
    "insrwi": "rlwimi", "rotlw": "rlwnm", "mfocrf": "mfcr", "mtocrf": "mtcrf", "mtcr": "mtcrf",
    "lwsync": "sync", "ptesync": "sync", "hwsync": "sync", "mbar": "eieio", "waitimpl": "wait",
    "hrfid": "rfid", "urfid": "rfid", "rfscv": "rfid", "nap": "stop", "doze": "stop", "sleep": "stop",
    "rvwinkle": "stop", "dcbfl": "dcbf", "dcbflp": "dcbf", "dcbtct": "dcbt", "dcbtds": "dcbt", "dcbtt": "dcbt",
    "dcbtstt": "dcbtst", "tlbiel": "tlbie", "slbmfev": "slbmfee", "slbfee": "slbmfee", "mfvsrwz": "mfvsrd",
    "mfvsrld": "mfvsrd", "mffprd": "mfvsrd", "mtvsrwa": "mtvsrd", "mtvsrwz": "mtvsrd", "mtvsrws": "mtvsrd",
    "mtfprd": "mtvsrd", "vctzlsbb": "vclzlsbb", "lxsd": "lfdp", "lxssp": "lfdp", "mftbu": "mftb",
    "scv": "sc", "lnia": "addpcis", "subpcis": "addpcis", "dssall": "dss", "hrfid.": "rfid",
}  # fmt: skip
WHOLE_PRIMARY = {"vector", "vsx", "fp", "stxsd", "lxvp"}  # rows that stand for a whole opcode space
BRANCH_ROWS = {"b", "bl", "ba", "bc", "bcl", "bca", "bclr", "bclrl", "bcctr", "bcctrl", "bctar"}
# The caching-inhibited loads and stores compute EA = (RA|0) + RB (Power ISA Book III, 4.4.x
# "Cache Management"); capstone prints RA = 0 as r0 for them, unlike every other (RA|0) form.
CAPSTONE_SHOWS_RA0 = {"lwzcix", "lhzcix", "lbzcix", "ldcix", "stwcix", "sthcix", "stbcix", "stdcix"}
R0 = re.compile(r"(?<![\w.])r0(?![\w])")


def _same_instruction(row: table.Row, mnemonic: str) -> bool:
    raw = mnemonic.rstrip("+-")
    base = ALIAS.get(raw.rstrip("."), raw.rstrip("."))
    if row.mnemonic in WHOLE_PRIMARY:
        return True
    if row.mnemonic in BRANCH_ROWS:
        return raw.startswith("b")
    if row.mnemonic == "cr":
        return raw.startswith("cr")
    if row.mnemonic in ("tw", "td", "twi", "tdi"):
        return raw.startswith(row.mnemonic[:2]) or raw == "trap"
    if row.mnemonic == "mfspr":
        return raw.startswith("mf")
    if row.mnemonic == "mtspr":
        return raw.startswith("mt")
    return base == row.mnemonic.rstrip(".")


def _names_r0(row: table.Row, word: int) -> bool:
    named = row.reads | row.writes
    gpr = table.Gpr
    values = ((gpr.RT, word >> 21), (gpr.RA, word >> 16), (gpr.RB, word >> 11), (gpr.RC, word >> 6))
    return any(f in named and v & 31 == 0 for f, v in values)


def disagreements(words: np.ndarray, order: str) -> Counter:
    """Words where the table and capstone name a different instruction, or disagree on whether r0
    is a GPR operand ((RA|0) fields are printed "0" by capstone and are not operands here)."""
    mode = capstone.CS_MODE_64 | (capstone.CS_MODE_BIG_ENDIAN if order == "big" else capstone.CS_MODE_LITTLE_ENDIAN)
    cs = capstone.Cs(capstone.CS_ARCH_PPC, mode)
    cs.skipdata = True
    data = words.astype(np.dtype((">" if order == "big" else "<") + "u4")).tobytes()
    bad: Counter = Counter()
    for offset, _size, mnemonic, op_str in cs.disasm_lite(data, 0):
        word = int(words[offset // 4])
        row = table.row_of(TABLE, word)
        if mnemonic == ".byte" or row.flow is table.Flow.INVALID or (row.update and (word >> 16) & 31 == 0):
            continue  # not an instruction, or an invalid form
        if not _same_instruction(row, mnemonic):
            bad["mnemonic", row.mnemonic, mnemonic] += 1
        shown = R0.search(op_str) is not None and mnemonic not in CAPSTONE_SHOWS_RA0
        # nop (ori 0,0,0) and trap (tw 31,0,0) have r0 fields that capstone does not print
        if shown != _names_r0(row, word) and word not in (0x6000_0000, 0x7FE0_0008):
            bad["r0 operand", row.mnemonic, mnemonic] += 1
    return bad


def test_table_rows_claim_disjoint_words() -> None:
    built = table.build_table()
    assert len(built.rows) == len(table.ROWS)
    with pytest.raises(ValueError, match="taken"):
        table.build_table((*table.ROWS, table.Row("again", 31, (266,), table.Gpr.NONE, table.Gpr.NONE)))


@pytest.mark.parametrize("name", ["prof-le", "prof-be", "std-le", "anom-r0live.o", "patchable-le.o"])
def test_table_agrees_with_capstone_on_fixtures(name: str) -> None:
    """The glibc static executables hold ~200 k words of real compiler output, both endians."""
    image = Image.load(FIXTURES / "bin" / name)
    bad: Counter = Counter()
    for sec in image.exec_sections():
        bad.update(disagreements(image.words(sec), image.byteorder))
    assert not bad


@pytest.mark.corpus
@pytest.mark.slow
def test_table_agrees_with_capstone_on_vmlinux(corpus) -> None:
    """Every word of the first 4 MiB of vmlinux text (~1 M words, ~10,000 functions)."""
    image = Image.load(corpus.vmlinux)
    text = image.section(".text")
    words = image.words(text)[: (4 << 20) // 4]
    assert not disagreements(words, image.byteorder)


@pytest.mark.corpus
def test_table_agrees_with_capstone_on_vector_crypto_modules(corpus) -> None:
    """VMX/VSX-heavy modules (AES, GHASH, CRC with vpmsum, RAID6 altivec)."""
    names = ("aes-gcm-p10-crypto", "vmx-crypto", "crc32c-vpmsum", "crct10dif-vpmsum", "raid6_pq", "chcr")
    paths = [p for p in corpus.modules_dir.rglob("*.ko") if p.name.removesuffix(".ko") in names]
    assert len(paths) >= 3
    bad: Counter = Counter()
    for path in paths:
        image = Image.load(path)
        for sec in image.exec_sections():
            bad.update(disagreements(image.words(sec), image.byteorder))
    assert not bad


# -- the walk on hand-made functions ----------------------------------------------------------

BASE = 0x1000
MCOUNT = 0x8000


def _assemble(lines: Sequence[str], base: int = BASE) -> tuple[np.ndarray, dict[str, int]]:
    """One instruction per line (keystone syntax, plain register numbers); ``name:`` lines are
    labels, usable as ``{name}`` in later or earlier lines; ``.long N`` is a data word."""
    labels: dict[str, int] = {}
    body: list[str] = []
    for line in lines:
        if line.endswith(":"):
            labels[line[:-1]] = base + 4 * len(body)
        else:
            body.append(line)
    labels["mcount"] = MCOUNT
    ks = keystone.Ks(keystone.KS_ARCH_PPC, keystone.KS_MODE_PPC64 | keystone.KS_MODE_LITTLE_ENDIAN)
    words = []
    for n, line in enumerate(body):
        text = line.format(**labels)
        if text.startswith(".long"):
            a, _, b = text.split()[1].partition("-")
            words.append((int(a, 0) - int(b or "0", 0)) & 0xFFFF_FFFF)
            continue
        encoding, _ = ks.asm(text, base + 4 * n)
        words.append(int.from_bytes(bytes(encoding), "little"))
    return np.array(words, np.uint32), labels


def _verdict(
    lines: Sequence[str],
    functions: Sequence[tuple[str, str, int]] = (("f", "f_end", 0),),
    fixups: dict[str, str] | None = None,
    variant: Variant = Variant.MPROFILE,
) -> flow.Safety:
    """Walk the site of the first function. ``functions``: (start label, end label, local entry
    offset); the site's call slot is labelled ``site``. An ``mcount`` function sits at MCOUNT."""
    words, labels = _assemble(lines)
    mwords, _ = _assemble(["blr"], MCOUNT)
    view = CodeView.of_words([BASE, MCOUNT], [words, mwords])
    spans = sorted([(labels[s], labels[e], lep) for s, e, lep in functions] + [(MCOUNT, MCOUNT + 4, 0)])
    funcs = Functions(
        np.array([s for s, _, _ in spans], np.uint64),
        np.array([s + lep for s, _, lep in spans], np.uint64),
        np.array([e for _, e, _ in spans], np.uint64),
        np.zeros(len(spans), np.uint32),
    )
    fix = {}
    for insn, handler in (fixups or {}).items():
        i, f = view.index(np.array([labels[insn], labels[handler]], np.uint64))
        fix[int(i)] = int(f)
    code = flow.build_code(TABLE, view, funcs, [MCOUNT], fix)
    slot = labels["site"]
    site = Site(
        ".text", 1, slot - BASE, slot, "f", variant, SiteState.ENABLED, True, MCOUNT, slot - BASE,
        slot, slot, SiteState.DISABLED, True, None,
    )  # fmt: skip
    return flow.safety(code, [site])[0]


def _site(*, gcc5: bool = False) -> list[str]:
    if gcc5:
        return ["f:", "mflr 0", "std 0, 16(1)", "site:", "bl {mcount}"]
    return ["f:", "mflr 0", "site:", "bl {mcount}"]


def test_returns_without_touching_r0_is_safe() -> None:
    assert _verdict([*_site(), "addi 3, 3, 1", "blr", "f_end:"]).verdict is flow.Verdict.SAFE


def test_std_of_r0_after_the_site_is_live_with_its_place() -> None:
    got = _verdict([*_site(), "addi 3, 3, 1", "read:", "std 0, 16(1)", "blr", "f_end:"])
    assert got.verdict is flow.Verdict.LIVE and got.evidence == BASE + 12 and got.why is flow.Why.READS_R0


def test_mtlr_r0_is_a_read() -> None:
    assert _verdict([*_site(), "mtlr 0", "blr", "f_end:"]).verdict is flow.Verdict.LIVE


def test_read_on_one_branch_only_is_live() -> None:
    lines = [*_site(), "cmpdi 3, 0", "beq {other}", "mflr 0", "other:", "std 0, 16(1)", "blr", "f_end:"]
    assert _verdict(lines).verdict is flow.Verdict.LIVE


def test_redefined_on_every_branch_is_safe() -> None:
    lines = [*_site(), "cmpdi 3, 0", "beq {other}", "li 0, 1", "b {join}", "other:", "li 0, 7", "join:",
             "mr 3, 0", "blr", "f_end:"]  # fmt: skip
    assert _verdict(lines).verdict is flow.Verdict.SAFE


def test_loop_back_edge_terminates() -> None:
    lines = [*_site(), "li 9, 10", "mtctr 9", "loop:", "addi 3, 3, 1", "bdnz {loop}", "blr", "f_end:"]
    assert _verdict(lines).verdict is flow.Verdict.SAFE


@pytest.mark.parametrize(
    "insn", ["addi 4, 0, 12", "addis 5, 0, 1", "ld 6, 8(0)", "ldx 7, 0, 4", "stdx 3, 0, 4", "isel 9, 0, 4, 2"]
)
def test_r0_as_base_register_means_zero_not_a_read(insn: str) -> None:
    assert _verdict([*_site(), insn, "blr", "f_end:"]).verdict is flow.Verdict.SAFE


@pytest.mark.parametrize("insn", ["addic 4, 0, 1", "ldx 7, 4, 0", "isel 9, 4, 0, 2", "cmpdi 0, 0", "mr 3, 0"])
def test_r0_as_a_real_operand_is_a_read(insn: str) -> None:
    assert _verdict([*_site(), insn, "blr", "f_end:"]).verdict is flow.Verdict.LIVE


def test_call_clobbers_r0_per_abi() -> None:
    lines = [*_site(), "bl {g}", "std 0, 16(1)", "blr", "f_end:", "g:", "blr", "g_end:"]
    got = _verdict(lines, functions=[("f", "f_end", 0), ("g", "g_end", 0)])
    assert got.verdict is flow.Verdict.SAFE


def test_call_to_mcount_passes_r0() -> None:
    got = _verdict([*_site(), "bl {mcount}", "blr", "f_end:"])
    assert got.verdict is flow.Verdict.LIVE and got.why is flow.Why.CALLS_MCOUNT


def test_conditional_return_may_fall_through_to_a_read() -> None:
    """``beqlr`` returns only when cr0.eq is set; otherwise the next word runs with r0 still the
    mflr'd LR, so the ``std`` after it is a read. Ending the path at a conditional return (as if
    it were ``blr``) would call this site safe and let the nop store garbage as the return address."""
    got = _verdict([*_site(), "cmpdi 3, 0", "beqlr", "read:", "std 0, 16(1)", "blr", "f_end:"])
    assert (got.verdict, got.why, got.evidence) == (flow.Verdict.LIVE, flow.Why.READS_R0, BASE + 16), got


def test_conditional_call_not_taken_keeps_r0() -> None:
    """``beql g`` calls g only when cr0.eq is set; the not-taken path keeps r0 intact, so the
    ``std`` after it reads the mflr'd LR. Only an unconditional call clobbers r0 on every path
    (test_call_clobbers_r0_per_abi)."""
    lines = [*_site(), "cmpdi 3, 0", "beql {g}", "read:", "std 0, 16(1)", "blr", "f_end:", "g:", "blr", "g_end:"]
    got = _verdict(lines, functions=[("f", "f_end", 0), ("g", "g_end", 0)])
    assert (got.verdict, got.why, got.evidence) == (flow.Verdict.LIVE, flow.Why.READS_R0, BASE + 16), got


def test_conditional_indirect_call_not_taken_keeps_r0() -> None:
    """``beqctrl`` is the indirect form of the conditional call: on the not-taken path r0 still
    holds the LR, so the ``std`` after it is a read."""
    lines = [*_site(), "mtctr 12", "cmpdi 3, 0", "beqctrl", "read:", "std 0, 16(1)", "blr", "f_end:"]
    got = _verdict(lines)
    assert (got.verdict, got.why, got.evidence) == (flow.Verdict.LIVE, flow.Why.READS_R0, BASE + 20), got


def test_tail_call_to_another_function_ends_the_path() -> None:
    lines = [*_site(), "b {g}", "f_end:", "g:", "std 0, 16(1)", "blr", "g_end:"]
    assert _verdict(lines, functions=[("f", "f_end", 0), ("g", "g_end", 0)]).verdict is flow.Verdict.SAFE


def test_branch_into_the_middle_of_other_code_is_followed() -> None:
    lines = [*_site(), "b {inside}", "f_end:", "g:", "nop", "inside:", "std 0, 16(1)", "blr", "g_end:"]
    assert _verdict(lines, functions=[("f", "f_end", 0), ("g", "g_end", 0)]).verdict is flow.Verdict.LIVE


def test_branch_back_to_own_entry_is_followed_not_a_tail_call() -> None:
    lines = [*_site(), "cmpdi 3, 0", "bne {f}", "blr", "f_end:"]
    assert _verdict(lines).verdict is flow.Verdict.SAFE


def test_falling_off_the_end_is_unknown() -> None:
    got = _verdict([*_site(), "addi 3, 3, 1", "f_end:", "g:", "blr", "g_end:"])
    assert got.verdict is flow.Verdict.UNKNOWN and got.why is flow.Why.FALLS_OFF


def test_trap_as_the_last_word_never_returns() -> None:
    lines = [*_site(), "cmpdi 3, 0", "beq {bug}", "blr", "bug:", "twi 31, 0, 0", "f_end:", "nop", "g:", "blr", "g_end:"]
    assert _verdict(lines, functions=[("f", "f_end", 0), ("g", "g_end", 0)]).verdict is flow.Verdict.SAFE


def test_trap_always_does_not_read_but_a_conditional_trap_on_r0_does() -> None:
    assert _verdict([*_site(), "twi 31, 0, 0", "blr", "f_end:"]).verdict is flow.Verdict.SAFE
    assert _verdict([*_site(), "tdnei 0, 0", "blr", "f_end:"]).verdict is flow.Verdict.LIVE


def test_bctr_without_a_known_table_is_unknown() -> None:
    got = _verdict([*_site(), "mtctr 3", "bctr", "f_end:"])
    assert got.verdict is flow.Verdict.UNKNOWN and got.why is flow.Why.INDIRECT_JUMP


def _switch(case1: str) -> list[str]:
    """gcc's dense switch: bound check, table of offsets from the table after the bctr."""
    return [*_site(), "cmplwi 3, 1", "bgt {dflt}", "sldi 3, 3, 2", "lwax 9, 10, 3", "add 9, 9, 10", "mtctr 9",
            "bctr", "table:", ".long {c0}-{table}", ".long {c1}-{table}", "c0:", "li 3, 5", "blr",
            "c1:", case1, "blr", "dflt:", "li 3, 0", "blr", "f_end:"]  # fmt: skip


def test_gcc_jump_table_is_followed_to_every_case() -> None:
    assert _verdict(_switch("li 3, 7")).verdict is flow.Verdict.SAFE
    assert _verdict(_switch("mr 3, 0")).verdict is flow.Verdict.LIVE


def test_gcc14_jump_table_bounded_by_rldic_is_followed() -> None:
    """6.12 vmlinux is_reg64.isra.0: the index is cut to 3 bits and scaled by one `rldic r,r,2,59`."""

    def lines(case1: str) -> list[str]:
        return [*_site(), "rldic 3, 3, 2, 61", "lwax 9, 10, 3", "add 9, 9, 10", "mtctr 9", "bctr", "table:",
                ".long {c0}-{table}", ".long {c1}-{table}", "c0:", "li 3, 5", "blr", "c1:", case1, "blr",
                "f_end:"]  # fmt: skip

    assert _verdict(lines("li 3, 7")).verdict is flow.Verdict.SAFE
    assert _verdict(lines("mr 3, 0")).verdict is flow.Verdict.LIVE


def test_jump_table_whose_bound_disagrees_is_unknown() -> None:
    lines = [line.replace("cmplwi 3, 1", "cmplwi 3, 5") for line in _switch("li 3, 7")]
    assert _verdict(lines).verdict is flow.Verdict.UNKNOWN


def test_exception_fixup_is_an_edge() -> None:
    lines = [*_site(), "load:", "ld 9, 0(3)", "blr", "fix:", "mr 3, 0", "blr", "f_end:"]
    assert _verdict(lines).verdict is flow.Verdict.SAFE  # no edge: the fixup is dead code
    assert _verdict(lines, fixups={"load": "fix"}).verdict is flow.Verdict.LIVE


def test_bitfield_built_in_r0_without_depending_on_it_is_safe() -> None:
    """chcr.ko get_aes_decrypt_key: clrrwi keeps bits 0-15 of the word, rlwimi replaces them."""
    lines = [*_site(), "clrrwi 0, 0, 16", "or 0, 0, 4", "rlwimi 0, 5, 16, 0, 15", "mr 9, 0", "blr", "f_end:"]
    assert _verdict(lines).verdict is flow.Verdict.SAFE


def test_partly_defined_r0_read_whole_is_live() -> None:
    lines = [*_site(), "clrrwi 0, 0, 16", "or 0, 0, 4", "mr 9, 0", "blr", "f_end:"]
    assert _verdict(lines).verdict is flow.Verdict.LIVE


def test_store_of_only_the_defined_bytes_is_safe() -> None:
    lines = [*_site(), "rlwimi 0, 5, 0, 24, 31", "stb 0, 8(3)", "blr", "f_end:"]
    assert _verdict(lines).verdict is flow.Verdict.SAFE


def test_xor_of_r0_with_itself_is_a_definition() -> None:
    assert _verdict([*_site(), "xor 0, 0, 0", "mr 3, 0", "blr", "f_end:"]).verdict is flow.Verdict.SAFE


def test_carry_to_mask_of_r0_with_itself_is_a_definition() -> None:
    """lpfc.ko lpfc_check_clean_addr_bit (6.12): `subfe r0,r0,r0` is CA - 1 whatever r0 holds."""
    assert _verdict([*_site(), "subfe 0, 0, 0", "mr 3, 0", "blr", "f_end:"]).verdict is flow.Verdict.SAFE
    assert _verdict([*_site(), "subfc 0, 0, 0", "mr 3, 0", "blr", "f_end:"]).verdict is flow.Verdict.SAFE
    assert _verdict([*_site(), "subfe 0, 4, 0", "mr 3, 0", "blr", "f_end:"]).verdict is flow.Verdict.LIVE


def _amdgpu(use: str) -> list[str]:
    """amdgpu.ko link_enc_cfg_is_link_enc_avail (6.12): r0's low word is defined, the xor copies its
    unknown high word into r10, and ``use`` decides whether that matters."""
    return [*_site(), "rldimi 0, 12, 0, 32", "rldimi 0, 31, 0, 56", "xor 10, 10, 0", use, "li 3, 0", "blr", "f_end:"]


def test_copy_of_unknown_bits_masked_away_is_safe() -> None:
    assert _verdict(_amdgpu("andi. 10, 10, 0xff00")).verdict is flow.Verdict.SAFE


def test_copy_of_unknown_bits_used_is_live_at_the_use() -> None:
    lines = _amdgpu("std 10, 0(3)")
    got = _verdict(lines)
    assert got.verdict is flow.Verdict.LIVE and got.why is flow.Why.READS_COPY
    assert got.evidence == BASE + 4 * 5  # f: mflr, bl, rldimi, rldimi, xor, std
    assert _verdict(_amdgpu("andis. 10, 10, 0xff00")).verdict is flow.Verdict.SAFE  # bits 24-31: r12's
    assert _verdict(_amdgpu("rldicl. 10, 10, 32, 32")).verdict is flow.Verdict.LIVE  # the high word


@pytest.mark.parametrize(
    ("lines", "verdict"),
    [
        (["mr 9, 0", "blr"], flow.Verdict.LIVE),  # r3-r10 carry return values
        (["mr 11, 0", "blr"], flow.Verdict.SAFE),  # volatile, not a result
        (["mr 31, 0", "blr"], flow.Verdict.LIVE),  # non-volatile: the caller expects it kept
        (["mr 4, 0", "bl {g}", "li 3, 0", "blr"], flow.Verdict.LIVE),  # an argument
        (["mr 12, 0", "bl {g}", "li 3, 0", "blr"], flow.Verdict.SAFE),  # clobbered by the call
        (["mr 31, 0", "bl {g}", "mr 3, 31", "blr"], flow.Verdict.LIVE),  # kept across the call
        (["mr 31, 0", "li 31, 1", "blr"], flow.Verdict.SAFE),  # overwritten first
        (["mr 10, 0", "ld 3, 8(10)", "blr"], flow.Verdict.LIVE),  # a base register is a read
    ],
)
def test_copies_in_other_registers_follow_the_abi(lines: list[str], verdict: flow.Verdict) -> None:
    got = _verdict(
        [*_site(), *lines, "f_end:", "g:", "blr", "g_end:"], functions=[("f", "f_end", 0), ("g", "g_end", 0)]
    )
    assert got.verdict is verdict


def test_gcc5_lr_save_copy_reloaded_is_live() -> None:
    """gcc 5 non-leaf code may restore LR from the doubleword slot S filled: nopping mflr then
    returns to garbage, though r0 itself is redefined first."""
    lines = [*_site(gcc5=True), "stdu 1, -32(1)", "bl {g}", "addi 1, 1, 32", "ld 0, 16(1)", "mtlr 0", "blr",
             "f_end:", "g:", "blr", "g_end:"]  # fmt: skip
    got = _verdict(lines, functions=[("f", "f_end", 0), ("g", "g_end", 0)], variant=Variant.MPROFILE_STD)
    assert got.verdict is flow.Verdict.LIVE and got.why is flow.Why.RELOADS_LR_SAVE


def test_gcc5_lr_save_copy_overwritten_first_is_safe() -> None:
    lines = [*_site(gcc5=True), "mflr 0", "std 0, 16(1)", "stdu 1, -32(1)", "bl {g}", "ld 0, 48(1)", "mtlr 0",
             "addi 1, 1, 32", "blr", "f_end:", "g:", "blr", "g_end:"]  # fmt: skip
    got = _verdict(lines, functions=[("f", "f_end", 0), ("g", "g_end", 0)], variant=Variant.MPROFILE_STD)
    assert got.verdict is flow.Verdict.SAFE


def test_gcc5_reload_through_a_moved_stack_pointer_is_tracked() -> None:
    lines = [*_site(gcc5=True), "stdu 1, -32(1)", "ld 9, 48(1)", "addi 1, 1, 32", "blr", "f_end:"]
    got = _verdict(lines, variant=Variant.MPROFILE_STD)
    assert got.verdict is flow.Verdict.LIVE and got.evidence == BASE + 16


@pytest.mark.parametrize(
    ("mb", "me", "mask"), [(0, 63, (1 << 64) - 1), (63, 63, 1), (32, 47, 0xFFFF_0000), (62, 1, 0xC000_0000_0000_0003)]
)
def test_mask_follows_the_isa_bit_numbering(mb: int, me: int, mask: int) -> None:
    assert fields.mask(mb, me) == mask


# -- fixtures and corpus ----------------------------------------------------------------------


def _safety(path: Path) -> dict[str, flow.Safety]:
    image = Image.load(path)
    result = scan(image)
    verdicts = flow.safety(flow.load_code(image, result, TABLE), result.sites)
    return {s.function: v for s, v in zip(result.sites, verdicts, strict=True)}


@pytest.mark.parametrize("name", ["anom-r0live", "anom-r0live.o"])
def test_r0live_fixture_is_live_exactly_where_the_source_says(name: str, manifest: dict) -> None:
    got = _safety(FIXTURES / "bin" / name)
    entry = manifest["binaries"][f"bin/{name}"]
    (anomaly,) = entry["anomalies"]
    slot = int(anomaly["slot_addr"], 16)
    assert got["r0live_fn"].verdict is flow.Verdict.LIVE
    # r0live_fn: mflr; bl; cmpdi; beq 1f; mflr r0; 1: std r0,16(r1)  -> the std is 16 bytes past the slot
    assert got["r0live_fn"].evidence & 0xFFFF_FFFF == slot + 16
    assert got["r0safe_branches"].verdict is flow.Verdict.SAFE
    assert got["r0safe_base0"].verdict is flow.Verdict.SAFE


@pytest.mark.parametrize(
    "name", sorted(p.name for p in (FIXTURES / "bin").iterdir() if not p.name.startswith("anom-r0live"))
)
def test_other_fixtures_are_all_safe(name: str) -> None:
    """ool sites have no mflr of their own (it runs in the stub): the question does not arise."""
    expected = flow.Verdict.N_A if name.startswith("ool-") else flow.Verdict.SAFE
    assert {v.verdict for v in _safety(FIXTURES / "bin" / name).values()} == {expected}


@pytest.mark.corpus
def test_vmlinux_is_decided_at_every_site(corpus) -> None:
    """The linear scan left 13,155 of 33,690 undecided at branches; the walk decides them all."""
    image = Image.load(corpus.vmlinux)
    result = scan(image)
    verdicts = flow.safety(flow.load_code(image, result, TABLE), result.sites)
    counts = Counter(v.verdict for v in verdicts)
    assert counts[flow.Verdict.LIVE] == 0
    assert counts[flow.Verdict.SAFE] >= 0.999 * len(result.sites)


def test_ool_site_has_no_mflr_to_nop() -> None:
    """ool: the mflr r0 lives in the out-of-line stub; even a body that reads r0 is not walked."""
    got = _verdict(["f:", "site:", "nop", "mr 3, 0", "blr", "f_end:"], variant=Variant.OOL)
    assert got == flow.Safety(flow.Verdict.N_A, flow.Why.OUT_OF_LINE, None)


def test_patchable_site_asks_whether_the_first_nop_may_stay() -> None:
    """patchable: slot A is the first nop; a body that reads r0 before writing it is live."""
    lines = ["f:", "nop", "site:", "nop", "mr 3, 0", "blr", "f_end:"]
    assert _verdict(lines, variant=Variant.PATCHABLE).verdict is flow.Verdict.LIVE
    lines = ["f:", "nop", "site:", "nop", "mflr 0", "std 0, 16(1)", "blr", "f_end:"]
    assert _verdict(lines, variant=Variant.PATCHABLE).verdict is flow.Verdict.SAFE
