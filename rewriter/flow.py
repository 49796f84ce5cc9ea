"""The mflr-nop safety walk: may the ``mflr r0`` of a site be nopped without changing its function?

The question, per generation
----------------------------
* **mprofile** (``mflr r0; bl _mcount``; gcc 5: ``mflr r0; std r0,16(r1); bl _mcount``). Nopping
  the ``mflr`` (states ``nopped`` and ``guarded``) is only harmless if the function never uses the
  value that ``mflr`` put in r0.
* **patchable** (``nop; nop``; the kernel's ``ftrace_init_nop`` makes the first ``mflr r0`` for
  good). Could the first nop stay a nop? Only if the body never reads r0 as LR before writing it:
  the same question, asked of the same words (slot A is the first nop, B the second).
* **ool** (one ``nop``; ``b stub`` when traced): not applicable. The ``mflr r0`` runs in the
  out-of-line stub right before its ``bl`` and ``mtlr r0`` restores LR there; the function's own
  entry has no ``mflr`` to nop (``N_A``, not walked).

Execution after the call slot sees r0 = LR in both legal states of the slot:

* slot B is a ``nop``: r0 still holds what ``mflr`` loaded;
* slot B calls ``ftrace_caller``: it returns through ``ld r0,_LINK(r1); mtlr r0`` (or, for the graph
  tracer, ``mflr r0; std r0,LRSAVE(r1)``), so r0 = LR on return again
  (arch/powerpc/kernel/trace/ftrace_64_mprofile.S in 6.1 and ftrace_entry.S ``ftrace_regs_exit``
  in 6.12: "Restore possibly modified LR").

So slot B is transparent for the question and the walk treats both slots as no-ops. What remains
is a data-flow question: from the word after slot A, does some path *read* the value r0 holds
before an instruction *defines* it? The walk carries the bits of r0 still unknown (64 at first),
and the registers an instruction copied some of them into. The answer per site is a
:class:`Verdict`:

* ``SAFE``: every path defines r0 (and its copies), returns, or leaves through a call, before any
  read;
* ``LIVE``: some path reads r0 or a copy (the evidence is that instruction): nopping ``mflr``
  changes what the function does (gcc 5's own ``std r0,16(r1)`` in slot S is such a read, on
  purpose);
* ``UNKNOWN``: no read was found but some path could not be followed (the reason says which);
* ``N_A``: the question does not arise (ool).

The walk is a depth-first search over the control-flow graph, one visit per instruction and state
(the unknown bits, the gcc-5 save slot, the copies). It follows branches wherever they go in the
image's code; a function's symbol bounds matter only to notice falling off its end.

ABI rules the walk relies on (64-Bit ELF V2 ABI Specification, OpenPOWER, 2.2.1.1 "Register
Roles", Table 2.19: r0 is "volatile register used in function prologs"; r3-r10 carry arguments):

* a call (``bl`` to a function, ``bctrl``, ``blrl``) ends the path: r0 is not an argument, so a
  conforming callee does not read it, and it is volatile, so the caller cannot rely on it after
  the call: whatever the caller reads there was defined by the callee. The one function that does
  take r0 as an argument is ``_mcount`` itself (the -mprofile-kernel convention), so a call or
  branch to an mcount entry *is* a read;
* a branch to another function's entry is a tail call, and ends the path for the same reason;
* a return (``blr``) ends the path: r0 is volatile, so the caller cannot rely on it either;
* a copy of r0's bits in r3-r10 ("parameter and return values") at a call, a return or a tail call
  is a read; so is one in a non-volatile register (r14-r31, and r1, r2, r13) at a return, which the
  caller expects kept; a call keeps copies in r14-r31 and clobbers r11 and r12.

Other rules:

* a trap with TO = 31 (``trap``, BUG/WARN's ``twi 31,0,0``) does not read its operands; WARN resumes
  at the next word, BUG never returns, so a trap that is the last word of a function ends the path;
* an ``__ex_table`` entry adds an edge from the faulting instruction to its fixup;
* r0 named in the RA field of ``addi``, ``addis``, ``isel`` and non-update loads and stores (D, DS,
  DQ and X forms) is the value 0, not a read of r0 (Power ISA v3.1 Book I, 1.6.2: "(RA|0)");
  update forms with RA = 0 are invalid forms and stop the walk;
* ``nop`` (``ori 0,0,0``) and ``xnop`` do nothing, though formally they name r0;
* indirect jumps (``bctr`` that is not a call), ``rfid``, ``sc``, absolute branches and words the
  table does not know make the path UNKNOWN, as does falling off the end of a function.

Speed
-----
Capstone decodes about 0.4 M words/s, and the vmlinux has 3.7 M words of text. Instead every word
is classified once with numpy from the opcode fields (the :data:`ROWS` table), and the walk in
Python only stops at the few words that matter (branches, r0 uses, function starts): the rest are
skipped with a precomputed "next word of interest" array.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Final, NamedTuple

import numpy as np

from rewriter import ppc
from rewriter.elf import structs as S
from rewriter.elf.image import Image
from rewriter.elf.symbols import Functions, rel_place, reloc_target_places
from rewriter.generations import LAYOUTS, Variant
from rewriter.sites import MCOUNT_NAMES, Scan, Site
from rewriter.states import Slot

# -- the instruction table ------------------------------------------------------------------


class Gpr(enum.Flag):
    """Instruction fields that name a general-purpose register."""

    NONE = 0
    RT = enum.auto()  # bits 6-10: RT or RS
    RA = enum.auto()  # bits 11-15
    RB = enum.auto()  # bits 16-20
    RC = enum.auto()  # bits 21-25: the third source of the VA-form maddld family


class Flow(enum.IntEnum):
    """Where execution goes after a word."""

    NEXT = 0  # the next word
    JUMP = 1  # relative branch, always taken
    COND = 2  # relative branch, taken or not
    CALL = 3  # relative branch and link, always
    COND_CALL = 4  # relative branch and link, or the next word
    RETURN = 5  # blr
    COND_RETURN = 6  # blr, or the next word
    INDIRECT = 7  # bctr: a computed jump
    COND_INDIRECT = 8  # bcctr with a condition
    INDIRECT_CALL = 9  # bctrl, blrl
    COND_INDIRECT_CALL = 10  # the same with a condition
    TRAP = 11  # trap always (TO = 31): BUG() or WARN()
    STOP = 12  # rfid, sc, absolute and bctar branches: the walk cannot follow
    INVALID = 13  # not an instruction the table knows, or an invalid form


class Row(NamedTuple):
    """One instruction (or family) of the table.

    ``xo`` lists the values of the primary opcode's extended-opcode key (:data:`XO_KEY`) that the
    row claims; ``None`` claims every key of the primary not claimed by another row. ``reads``
    and ``writes`` name the GPR fields; a field used as ``(RA|0)`` is not a read. ``update``: RA
    is also written, and RA = 0 is an invalid form.
    """

    mnemonic: str
    primary: int
    xo: tuple[int, ...] | None
    reads: Gpr
    writes: Gpr
    flow: Flow = Flow.NEXT
    update: bool = False


XO_KEY: Final[Mapping[int, tuple[int, int]]] = {
    # primary: (shift, bits) of the key that tells its instructions apart
    4: (0, 11),  # VX-form xo in bits 21-31 (VA-form xo is its low 6 bits)
    16: (0, 2),  # bc: AA, LK
    18: (0, 2),  # b: AA, LK
    19: (0, 11),  # XL-form xo in bits 21-30, and LK (bit 31)
    30: (1, 4),  # MD-form xo in bits 27-29 (bit 30 is sh5), MDS-form xo in bits 27-30
    31: (1, 10),  # X-form xo in bits 21-30 (bit 31 is Rc, which only sets CR0)
    56: (0, 0),
    57: (0, 2),  # DS-form xo
    58: (0, 2),
    62: (0, 2),
}
"""Primaries not listed have one row for every word."""

NO: Final = Gpr.NONE
RT, RA, RB, RC = Gpr.RT, Gpr.RA, Gpr.RB, Gpr.RC


def _oe(xo: int) -> tuple[int, ...]:
    """XO-form: a 9-bit xo whose bit 21 (OE) is part of the 10-bit key."""
    return (xo, xo | 0x200)


def _md(xo: int) -> tuple[int, ...]:
    """MD-form: a 3-bit xo above the sh5 bit."""
    return (xo << 1, xo << 1 | 1)


def _xs(xo: int) -> tuple[int, ...]:
    """XS-form (sradi, extswsli): a 9-bit xo above the sh5 bit."""
    return (xo << 1, xo << 1 | 1)


def _isel() -> tuple[int, ...]:
    """A-form isel: 5-bit xo 15 under a BC field that fills the rest of the 10-bit key."""
    return tuple(bc << 5 | 15 for bc in range(32))


def _va(xo: int) -> tuple[int, ...]:
    """VA-form (primary 4): a 6-bit xo under an RC field that fills the rest of the 11-bit key."""
    return tuple(rc << 6 | xo for rc in range(32))


def _xl(xo: int, lk: int = 0) -> tuple[int, ...]:
    """XL-form (primary 19): xo and LK."""
    return (xo << 1 | lk,)


def _addpcis() -> tuple[int, ...]:
    """DX-form addpcis: 5-bit xo 2 in bits 26-30; bits 16-25 and 31 hold the immediate."""
    return tuple(k for k in range(1 << 11) if (k >> 1) & 0x1F == 2)


def _x31(reads: Gpr, writes: Gpr, pairs: Iterable[tuple[str, int]], update: bool = False) -> list[Row]:
    return [Row(m, 31, (xo,), reads, writes, update=update) for m, xo in pairs]


_LOADS_X: Final = (
    ("lbzx", 87), ("lhzx", 279), ("lhax", 343), ("lwzx", 23), ("lwax", 341), ("ldx", 21),
    ("lhbrx", 790), ("lwbrx", 534), ("ldbrx", 532), ("lbarx", 52), ("lharx", 116), ("lwarx", 20),
    ("ldarx", 84), ("lqarx", 276), ("lwzcix", 789), ("lhzcix", 821), ("lbzcix", 853), ("ldcix", 885),
)  # fmt: skip
_LOADS_UX: Final = (("lbzux", 119), ("lhzux", 311), ("lhaux", 375), ("lwzux", 55), ("lwaux", 373), ("ldux", 53))
_STORES_X: Final = (
    ("stbx", 215), ("sthx", 407), ("stwx", 151), ("stdx", 149), ("sthbrx", 918), ("stwbrx", 662),
    ("stdbrx", 660), ("stbcx.", 694), ("sthcx.", 726), ("stwcx.", 150), ("stdcx.", 214), ("stqcx.", 182),
    ("stbcix", 981), ("sthcix", 949), ("stwcix", 917), ("stdcix", 1013),
)  # fmt: skip
_STORES_UX: Final = (("stbux", 247), ("sthux", 439), ("stwux", 183), ("stdux", 181))
# FP, VMX and VSX indexed loads and stores, and cache and message instructions: (RA|0) + RB.
_RB_ONLY_X: Final = (
    ("lfsx", 535), ("lfdx", 599), ("lfiwax", 855), ("lfiwzx", 887), ("stfsx", 663), ("stfdx", 727),
    ("stfiwx", 983), ("lvx", 103), ("lvxl", 359), ("stvx", 231), ("stvxl", 487), ("lvebx", 7),
    ("lvehx", 39), ("lvewx", 71), ("stvebx", 135), ("stvehx", 167), ("stvewx", 199), ("lvsl", 6),
    ("lvsr", 38), ("lxvd2x", 844), ("lxvw4x", 780), ("stxvd2x", 972), ("stxvw4x", 908), ("lxsdx", 588),
    ("stxsdx", 716), ("lxsiwzx", 12), ("lxsiwax", 76), ("stxsiwx", 140), ("lxsspx", 524),
    ("stxsspx", 652), ("lxvdsx", 332), ("lxvx", 268), ("stxvx", 396), ("lxvb16x", 876), ("lxvh8x", 812),
    ("stxvb16x", 1004), ("stxvh8x", 940), ("lxsibzx", 781), ("lxsihzx", 813), ("stxsibx", 909),
    ("stxsihx", 941), ("lxvwsx", 364), ("lxvl", 269), ("lxvll", 301), ("stxvl", 397), ("stxvll", 429),
    ("dcbf", 86), ("dcbst", 54), ("dcbt", 278), ("dcbtst", 246), ("dcbz", 1014), ("icbi", 982),
    ("dcbi", 470), ("icbt", 22), ("copy", 774), ("paste.", 902), ("slbie", 434), ("msgsndp", 142),
    ("msgclrp", 174), ("msgsnd", 206), ("msgclr", 238), ("mtvsrdd", 435),
)  # fmt: skip
_FP_UX: Final = (("lfsux", 567), ("lfdux", 631), ("stfsux", 695), ("stfdux", 759))
_ARITH_XO: Final = (
    ("add", 266), ("addc", 10), ("adde", 138), ("subf", 40), ("subfc", 8), ("subfe", 136), ("mullw", 235),
    ("mulld", 233), ("divw", 491), ("divwu", 459), ("divd", 489), ("divdu", 457), ("divwe", 427),
    ("divweu", 395), ("divde", 425), ("divdeu", 393),
)  # fmt: skip
_UNARY_XO: Final = (("addme", 234), ("addze", 202), ("subfme", 232), ("subfze", 200), ("neg", 104))
_ARITH_X: Final = (
    ("mulhw", 75), ("mulhwu", 11), ("mulhd", 73), ("mulhdu", 9), ("modsw", 779), ("moduw", 267),
    ("modsd", 777), ("modud", 265),
)  # fmt: skip
# Logical and shift instructions: RS (the RT field) and RB in, RA out.
_LOGICAL_X: Final = (
    ("and", 28), ("andc", 60), ("or", 444), ("orc", 412), ("xor", 316), ("nand", 476), ("nor", 124),
    ("eqv", 284), ("slw", 24), ("srw", 536), ("sraw", 792), ("sld", 27), ("srd", 539), ("srad", 794),
    ("cmpb", 508), ("bpermd", 252),
)  # fmt: skip
_UNARY_X: Final = (
    ("srawi", 824), ("cntlzw", 26), ("cntlzd", 58), ("cnttzw", 538), ("cnttzd", 570), ("popcntb", 122),
    ("popcntw", 378), ("popcntd", 506), ("prtyw", 154), ("prtyd", 186), ("extsb", 954), ("extsh", 922),
    ("extsw", 986), ("brh", 219), ("brw", 155), ("brd", 187),
)  # fmt: skip
_NO_GPR_X: Final = (
    ("sync", 598), ("eieio", 854), ("msgsync", 886), ("tlbsync", 566), ("slbia", 498), ("slbsync", 338),
    ("wait", 30), ("dss", 822), ("clrbhrb", 430), ("cp_abort", 838), ("mcrxrx", 576), ("mcrxr", 512),
)  # fmt: skip

ROWS: Final[tuple[Row, ...]] = (
    Row("attn", 0, None, NO, NO, Flow.INVALID),
    Row("prefix", 1, None, NO, NO, Flow.INVALID),  # ISA 3.1 prefixed instructions: not modelled
    Row("tdi", 2, None, RA, NO, Flow.TRAP),
    Row("twi", 3, None, RA, NO, Flow.TRAP),
    Row("vector", 4, None, NO, NO),  # VMX/VSX arithmetic: vector registers only, except these:
    Row("maddhd", 4, _va(48), RA | RB | RC, RT),
    Row("maddhdu", 4, _va(49), RA | RB | RC, RT),
    Row("maddld", 4, _va(51), RA | RB | RC, RT),
    Row("vextublx", 4, (1549,), RA, RT),
    Row("vextuhlx", 4, (1613,), RA, RT),
    Row("vextuwlx", 4, (1677,), RA, RT),
    Row("vextubrx", 4, (1805,), RA, RT),
    Row("vextuhrx", 4, (1869,), RA, RT),
    Row("vextuwrx", 4, (1933,), RA, RT),
    Row("vclzlsbb", 4, (1538,), NO, RT),  # and vctzlsbb: the RA field is a sub-opcode
    # ISA 3.1 vector instructions with GPR operands (mask moves, inserts): not modelled.
    Row("vmask", 4, (1602,), NO, NO, Flow.INVALID),
    Row(
        "vins", 4, (15, 79, 143, 207, 271, 335, 399, 463, 527, 591, 655, 719, 783, 847, 911, 975), NO, NO, Flow.INVALID
    ),
    Row("vextdvlx", 4, sum((_va(x) for x in range(24, 30)), ()), NO, NO, Flow.INVALID),
    Row("unassigned", 5, None, NO, NO, Flow.INVALID),
    Row("lxvp", 6, None, NO, NO),
    Row("mulli", 7, None, RA, RT),
    Row("subfic", 8, None, RA, RT),
    Row("unassigned", 9, None, NO, NO, Flow.INVALID),
    Row("cmpli", 10, None, RA, NO),
    Row("cmpi", 11, None, RA, NO),
    Row("addic", 12, None, RA, RT),
    Row("addic.", 13, None, RA, RT),
    Row("addi", 14, None, NO, RT),  # (RA|0): li
    Row("addis", 15, None, NO, RT),  # (RA|0): lis
    Row("bc", 16, (0,), NO, NO, Flow.COND),
    Row("bcl", 16, (1,), NO, NO, Flow.COND_CALL),
    Row("bca", 16, (2, 3), NO, NO, Flow.STOP),
    Row("sc", 17, None, NO, NO, Flow.STOP),
    Row("b", 18, (0,), NO, NO, Flow.JUMP),
    Row("bl", 18, (1,), NO, NO, Flow.CALL),
    Row("ba", 18, (2, 3), NO, NO, Flow.STOP),
    Row("unassigned", 19, None, NO, NO, Flow.INVALID),
    Row("mcrf", 19, _xl(0), NO, NO),
    Row("bclr", 19, _xl(16), NO, NO, Flow.COND_RETURN),
    Row("bclrl", 19, _xl(16, 1), NO, NO, Flow.COND_INDIRECT_CALL),
    Row("bcctr", 19, _xl(528), NO, NO, Flow.COND_INDIRECT),
    Row("bcctrl", 19, _xl(528, 1), NO, NO, Flow.COND_INDIRECT_CALL),
    Row("bctar", 19, _xl(560) + _xl(560, 1), NO, NO, Flow.STOP),
    Row("isync", 19, _xl(150), NO, NO),
    Row("cr", 19, sum((_xl(x) for x in (33, 129, 193, 225, 257, 289, 417, 449)), ()), NO, NO),
    Row("rfid", 19, sum((_xl(x) for x in (18, 82, 274, 306)), ()), NO, NO, Flow.STOP),  # hrfid rfscv urfid
    Row("stop", 19, sum((_xl(x) for x in (370, 396, 434, 466, 498)), ()), NO, NO, Flow.STOP),  # nap doze
    Row("addpcis", 19, _addpcis(), NO, RT),
    Row("rlwimi", 20, None, RT | RA, RA),
    Row("rlwinm", 21, None, RT, RA),
    Row("unassigned", 22, None, NO, NO, Flow.INVALID),
    Row("rlwnm", 23, None, RT | RB, RA),
    Row("ori", 24, None, RT, RA),
    Row("oris", 25, None, RT, RA),
    Row("xori", 26, None, RT, RA),
    Row("xoris", 27, None, RT, RA),
    Row("andi.", 28, None, RT, RA),
    Row("andis.", 29, None, RT, RA),
    Row("unassigned", 30, None, NO, NO, Flow.INVALID),
    Row("rldicl", 30, _md(0), RT, RA),
    Row("rldicr", 30, _md(1), RT, RA),
    Row("rldic", 30, _md(2), RT, RA),
    Row("rldimi", 30, _md(3), RT | RA, RA),
    Row("rldcl", 30, (8,), RT | RB, RA),
    Row("rldcr", 30, (9,), RT | RB, RA),
    Row("unassigned", 31, None, NO, NO, Flow.INVALID),
    *_x31(RB, RT, _LOADS_X),
    *_x31(RA | RB, RT | RA, _LOADS_UX, update=True),
    *_x31(RT | RB, NO, _STORES_X),
    *_x31(RT | RA | RB, RA, _STORES_UX, update=True),
    *_x31(RB, NO, _RB_ONLY_X),
    *_x31(RA | RB, RA, _FP_UX, update=True),
    *[Row(m, 31, _oe(xo), RA | RB, RT) for m, xo in _ARITH_XO],
    *[Row(m, 31, _oe(xo), RA, RT) for m, xo in _UNARY_XO],
    *_x31(RA | RB, RT, _ARITH_X),
    *_x31(RT | RB, RA, _LOGICAL_X),
    *_x31(RT, RA, _UNARY_X),
    Row("sradi", 31, _xs(413), RT, RA),
    Row("extswsli", 31, _xs(445), RT, RA),
    *_x31(NO, NO, _NO_GPR_X),
    Row("cmp", 31, (0,), RA | RB, NO),
    Row("cmpl", 31, (32,), RA | RB, NO),
    Row("cmprb", 31, (192,), RA | RB, NO),
    Row("cmpeqb", 31, (224,), RA | RB, NO),
    Row("tw", 31, (4,), RA | RB, NO, Flow.TRAP),
    Row("td", 31, (68,), RA | RB, NO, Flow.TRAP),
    Row("isel", 31, _isel(), RB, RT),  # RT = CR[BC] ? (RA|0) : RB
    Row("mfspr", 31, (339,), NO, RT),
    Row("mftb", 31, (371,), NO, RT),
    Row("mtspr", 31, (467,), RT, NO),
    Row("mfcr", 31, (19,), NO, RT),
    Row("mtcrf", 31, (144,), RT, NO),
    Row("mfmsr", 31, (83,), NO, RT),
    Row("mtmsr", 31, (146,), RT, NO),
    Row("mtmsrd", 31, (178,), RT, NO),
    Row("setb", 31, (128,), NO, RT),
    Row("setbc", 31, (384, 416, 448, 480), NO, RT),
    Row("darn", 31, (755,), NO, RT),
    Row("mfbhrbe", 31, (302,), NO, RT),
    # tlbie, tlbiel: ISA 3.0 put RS in the RT field, which ISA 2.07 (POWER8) reserved; the kernel
    # emits the old one-operand form for POWER7/8 with that field 0, and the new form with an "r"
    # operand gcc must load first. So RS = 0 is the reserved field, not a read of r0.
    Row("tlbie", 31, (306, 274), RB, NO),
    Row("slbmte", 31, (402,), RT | RB, NO),
    Row("slbmfee", 31, (915, 851, 979), RB, RT),  # slbmfev, slbfee.
    Row("mfvsrd", 31, (51, 115, 307), NO, RA),  # mfvsrwz, mfvsrld
    Row("mtvsrd", 31, (179, 211, 243, 403), RA, NO),  # mtvsrwa, mtvsrwz, mtvsrws
    Row("lq", 56, None, NO, RT),
    Row("lfdp", 57, (0, 2, 3), NO, NO),  # lxsd, lxssp
    Row("unassigned", 57, (1,), NO, NO, Flow.INVALID),
    Row("ld", 58, (0,), NO, RT),
    Row("ldu", 58, (1,), RA, RT | RA, update=True),
    Row("lwa", 58, (2,), NO, RT),
    Row("unassigned", 58, (3,), NO, NO, Flow.INVALID),
    Row("fp", 59, None, NO, NO),
    Row("vsx", 60, None, NO, NO),
    Row("stxsd", 61, None, NO, NO),  # stfdp, stxsd, stxssp, lxv, stxv: (RA|0), no GPR
    Row("std", 62, (0,), RT, NO),
    Row("stdu", 62, (1,), RT | RA, RA, update=True),
    Row("stq", 62, (2,), RT, NO),
    Row("unassigned", 62, (3,), NO, NO, Flow.INVALID),
    Row("fp", 63, None, NO, NO),
    # D-form loads and stores: (RA|0) + D, and the update forms RA + D with RA written back.
    *[Row(m, p, None, NO, RT) for m, p in (("lwz", 32), ("lbz", 34), ("lhz", 40), ("lha", 42))],
    *[Row(m, p, None, RA, RT | RA, update=True) for m, p in (("lwzu", 33), ("lbzu", 35), ("lhzu", 41), ("lhau", 43))],
    *[Row(m, p, None, RT, NO) for m, p in (("stw", 36), ("stb", 38), ("sth", 44))],
    *[Row(m, p, None, RT | RA, RA, update=True) for m, p in (("stwu", 37), ("stbu", 39), ("sthu", 45))],
    Row("lmw", 46, None, NO, NO, Flow.INVALID),  # loads RT..r31: not modelled (never in ppc64 code)
    Row("stmw", 47, None, NO, NO, Flow.INVALID),
    *[Row(m, p, None, NO, NO) for m, p in (("lfs", 48), ("lfd", 50), ("stfs", 52), ("stfd", 54))],
    *[Row(m, p, None, RA, RA, update=True) for m, p in (("lfsu", 49), ("lfdu", 51), ("stfsu", 53), ("stfdu", 55))],
)
"""Every instruction the walk knows, with its GPR reads and writes and its control flow.

Sources: Power ISA v3.1 (Book I chapters 2-3, 4 "Floating-Point", 6-7 VMX/VSX; Book III for the
privileged ones), and the instruction histogram of the Debian 6.1 vmlinux and modules; the test
suite checks the decoder against capstone on real code. Unknown words stop the walk (UNKNOWN).
"""

_RA_BASE: Final = frozenset(
    [m for m, _ in (*_LOADS_X, *_STORES_X, *_RB_ONLY_X)]
    + ["addi", "addis", "isel", "lxvp", "lq", "lfdp", "ld", "lwa", "stxsd", "std", "stq"]
    + ["lwz", "lbz", "lhz", "lha", "stw", "stb", "sth", "lfs", "lfd", "stfs", "stfd"]
)
"""Rows whose RA field is ``(RA|0)``: the value 0 when it names r0 (so not in ``reads``), but a
read of any other register it names (a base address, or isel's first choice)."""

XNOP: Final = 0x6800_0000  # xori 0,0,0
_OR_R0_R0_R0: Final = 0x7C00_0378  # mr r0,r0


class Table(NamedTuple):
    """:data:`ROWS` as dense numpy look-ups: ``slot[offset[primary] + key]`` is a row number."""

    rows: tuple[Row, ...]
    offset: np.ndarray  # per primary
    shift: np.ndarray
    mask: np.ndarray
    slot: np.ndarray
    reads: np.ndarray  # per row: Gpr bits
    writes: np.ndarray
    flow: np.ndarray
    update: np.ndarray


def build_table(rows: Sequence[Row] = ROWS) -> Table:
    """Lay the rows out densely; raises ValueError if two rows claim the same word."""
    shift = np.zeros(64, np.uint32)
    mask = np.zeros(64, np.uint32)
    offset = np.zeros(64, np.int64)
    total = 0
    for p in range(64):
        sh, bits = XO_KEY.get(p, (0, 0))
        shift[p], mask[p], offset[p] = sh, (1 << bits) - 1, total
        total += 1 << bits
    slot = np.full(total, -1, np.int16)
    for n, row in enumerate(rows):
        if row.xo is None:
            span = slice(int(offset[row.primary]), int(offset[row.primary]) + int(mask[row.primary]) + 1)
            if (slot[span] >= 0).any():
                raise ValueError(f"{row.mnemonic}: default row of primary {row.primary} must come first")
            slot[span] = n
    defaults = slot.copy()
    for n, row in enumerate(rows):
        for key in row.xo or ():
            at = int(offset[row.primary]) + key
            if key > mask[row.primary] or slot[at] != defaults[at]:
                raise ValueError(f"{row.mnemonic}: primary {row.primary} key {key} is taken or out of range")
            slot[at] = n
    if (slot < 0).any():
        missing = sorted({p for p in range(64) if (slot[offset[p] : offset[p] + mask[p] + 1] < 0).any()})
        raise ValueError(f"primaries without a default row: {missing}")
    return Table(
        tuple(rows),
        offset,
        shift,
        mask,
        slot,
        np.array([r.reads.value for r in rows], np.uint8),
        np.array([r.writes.value for r in rows], np.uint8),
        np.array([int(r.flow) for r in rows], np.uint8),
        np.array([r.update for r in rows], bool),
    )


class Effect(enum.IntFlag):
    """What a word does to r0 (after the ``(RA|0)`` and nop rules)."""

    NONE = 0
    READ = 1
    WRITE = 2
    INVALID = 4


class Decoded(NamedTuple):
    row: np.ndarray  # int16: index into Table.rows
    effect: np.ndarray  # uint8: Effect bits
    flow: np.ndarray  # uint8: Flow


def decode(table: Table, words: np.ndarray) -> Decoded:
    """Classify every word at once (uint32 in native order). Written for speed: 3.7 M words of
    vmlinux text take about 0.2 s."""
    w = words.astype(np.uint32, copy=False)
    primary = w >> np.uint32(26)
    key = (w >> table.shift[primary]) & table.mask[primary]
    row = table.slot[table.offset[primary] + key]
    f5 = np.uint32(31)
    # Which of RT, RA, RB, RC hold 0, as Gpr bits, so that one AND per word says "names r0".
    zero = (
        ((w >> np.uint32(21)) & f5 == 0).view(np.uint8)
        | ((w >> np.uint32(16)) & f5 == 0).view(np.uint8) << 1
        | ((w >> np.uint32(11)) & f5 == 0).view(np.uint8) << 2
        | ((w >> np.uint32(6)) & f5 == 0).view(np.uint8) << 3
    )
    flow = table.flow[row]
    trap = flow == Flow.TRAP
    trap_always = trap & ((w >> np.uint32(21)) & f5 == 31)  # TO = 31 traps whatever the operands hold
    flow[trap & ~trap_always] = Flow.NEXT
    quiet = (w == ppc.NOP) | (w == XNOP) | (w == _OR_R0_R0_R0)
    read = ((table.reads[row] & zero) != 0) & ~trap_always & ~quiet
    write = ((table.writes[row] & zero) != 0) & ~read & ~quiet
    invalid = (flow == Flow.INVALID) | (table.update[row] & (zero & 2 != 0))
    effect = read.view(np.uint8) | write.view(np.uint8) << 1 | invalid.view(np.uint8) << 2
    flow[invalid] = Flow.INVALID
    _refine_branches(w, flow)
    return Decoded(row, effect, flow)


_UNCONDITIONAL: Final[Mapping[Flow, Flow]] = {
    Flow.COND: Flow.JUMP,
    Flow.COND_CALL: Flow.CALL,
    Flow.COND_RETURN: Flow.RETURN,
    Flow.COND_INDIRECT: Flow.INDIRECT,
    Flow.COND_INDIRECT_CALL: Flow.INDIRECT_CALL,
}


def _refine_branches(w: np.ndarray, flow: np.ndarray) -> None:
    """A BO with both "ignore CR" and "ignore CTR" bits (0b1z1zz) branches always."""
    idx = np.flatnonzero(np.isin(flow, np.array([int(f) for f in _UNCONDITIONAL], np.uint8)))
    always = ((w[idx] >> np.uint32(21)) & 0x14) == 0x14
    for cond, uncond in _UNCONDITIONAL.items():
        flow[idx[always & (flow[idx] == cond)]] = uncond


def branch_offsets(w: np.ndarray) -> np.ndarray:
    """Signed byte offsets of I-form (primary 18) and B-form (primary 16) branch words."""
    w = w.astype(np.uint32, copy=False)
    iform = (w >> np.uint32(26)) == 18
    off = np.where(iform, w & np.uint32(0x03FF_FFFC), w & np.uint32(0xFFFC)).astype(np.int64)
    sign = np.where(iform, 1 << 25, 1 << 15)
    return np.where(off & sign, off - 2 * sign, off)


# -- the image's code -----------------------------------------------------------------------

# Targets that are not a word of the code:
TARGET_NONE: Final = -1
TARGET_EXTERNAL: Final = -2  # ET_REL: a branch to an undefined symbol (a function elsewhere)
TARGET_MCOUNT: Final = -3  # ET_REL: a branch to _mcount
TARGET_OUTSIDE: Final = -4  # lands in no executable section

# ELFv2 ABI 3.5.3 "Relocation Types": the branch relocations.
_BRANCH_RELOCS: Final = np.array([10, 11, 12, 13, 116], np.uint64)  # REL24 REL14 REL14_BRTAKEN/NTAKEN REL24_NOTOC
_REL32: Final = 26


@dataclass(frozen=True, slots=True)
class Layout:
    """Where the executable sections' words sit: section k starts at place ``base[k]`` and is word
    ``first[k]`` of the flat arrays, ``sizes[k]`` words long (sorted by place)."""

    base: np.ndarray  # uint64
    first: np.ndarray  # int64
    sizes: np.ndarray  # int64

    def index(self, places: np.ndarray) -> np.ndarray:
        """Word number of each place, or TARGET_OUTSIDE."""
        places = np.asarray(places, np.uint64)
        if not len(self.base):
            return np.full(len(places), TARGET_OUTSIDE, np.int64)
        k = np.searchsorted(self.base, places, side="right").astype(np.int64) - 1
        kk = np.maximum(k, 0)
        rel = places.astype(np.int64) - self.base[kk].astype(np.int64)  # wraps: addresses are unsigned
        ok = (k >= 0) & (rel >= 0) & (rel % 4 == 0) & (rel // 4 < self.sizes[kk])
        return np.where(ok, self.first[kk] + rel // 4, TARGET_OUTSIDE)

    def place(self, i: int) -> int:
        k = int(np.searchsorted(self.first, i, side="right")) - 1
        return int(self.base[k]) + 4 * (i - int(self.first[k]))

    def places(self, idx: np.ndarray) -> np.ndarray:
        k = np.searchsorted(self.first, idx, side="right") - 1
        return np.asarray(self.base[k] + (idx - self.first[k]).astype(np.uint64) * np.uint64(4), np.uint64)


@dataclass(frozen=True)
class Code:
    """Every executable word of an image, decoded, as flat arrays indexed by word number.

    ``stop[i]`` is the first word at or after ``i`` the walk must look at (an r0 effect, a branch,
    a function's first or past-the-end word, an exception-table entry); ``edge_mark`` marks the
    function edges. ``entries`` are the word numbers of every function's global and local entry,
    ``fixups`` maps a faulting word to its exception fixup, ``mcount`` the mcount entries.
    """

    layout: Layout
    words: np.ndarray
    row: np.ndarray
    effect: np.ndarray
    flow: np.ndarray
    target: np.ndarray
    stop: np.ndarray
    edge_mark: np.ndarray
    entries: frozenset[int]
    fixups: Mapping[int, int]
    mcount: frozenset[int]
    funcs: Functions
    table: Table

    def index(self, places: np.ndarray) -> np.ndarray:
        return self.layout.index(places)

    def place(self, i: int) -> int:
        return self.layout.place(i)


class Relocated(NamedTuple):
    """ET_REL: word numbers of branches whose relocation names the target, and the target (a word
    number or TARGET_EXTERNAL / TARGET_MCOUNT / TARGET_OUTSIDE)."""

    at: np.ndarray
    target: np.ndarray


def build_code(
    table: Table,
    layout: Layout,
    words: np.ndarray,
    funcs: Functions,
    mcount_places: Sequence[int] = (),
    fixups: Mapping[int, int] | None = None,
    relocated: Relocated | None = None,
) -> Code:
    """Decode ``words`` (every executable section, in ``layout`` order) and resolve branches.

    Places are virtual addresses in linked images and ``rel_place`` numbers in ET_REL files;
    ``funcs`` uses the same kind of place. Tests build small synthetic images through here.
    """
    words = np.concatenate([np.asarray(words, np.uint32), np.zeros(1, np.uint32)])
    n = len(words)
    dec = decode(table, words)
    flow, effect = dec.flow, dec.effect
    flow[-1] = Flow.INVALID  # a sentinel past the last section
    target = np.full(n, TARGET_NONE, np.int64)
    idx = np.flatnonzero(np.isin(flow[:-1], np.array([Flow.JUMP, Flow.COND, Flow.CALL, Flow.COND_CALL], np.uint8)))
    target[idx] = layout.index(layout.places(idx) + branch_offsets(words[idx]).astype(np.uint64))
    if relocated is not None:
        target[relocated.at] = relocated.target
    starts = layout.index(funcs.start)
    sized = funcs.end > funcs.start
    ends = layout.index(funcs.end[sized] - np.uint64(4)) + 1
    edge_mark = np.zeros(n, bool)
    edge_mark[starts[starts >= 0]] = True
    edge_mark[ends[ends > 0]] = True
    edge_mark[layout.first] = True
    edge_mark[-1] = True
    fixups = dict(fixups or {})
    interesting = (effect != 0) | (flow != Flow.NEXT) | edge_mark
    interesting[np.fromiter(fixups, np.int64, len(fixups))] = True
    pos = np.where(interesting, np.arange(n), n - 1)
    stop = np.minimum.accumulate(pos[::-1])[::-1].astype(np.int64)
    entries = np.concatenate([starts, layout.index(funcs.lep)])
    mcount = layout.index(np.array(mcount_places, np.uint64))
    return Code(
        layout, words, dec.row, effect, flow, target, stop, edge_mark,
        frozenset(int(e) for e in entries if e >= 0), fixups, frozenset(int(m) for m in mcount if m >= 0),
        funcs, table,
    )  # fmt: skip


def load_code(image: Image, result: Scan, table: Table) -> Code:
    """Decode the executable sections of ``image`` and resolve branch targets."""
    linked = image.type != S.ET_REL
    secs = sorted(
        (s for s in image.exec_sections() if s.type == S.SHT_PROGBITS),
        key=lambda s: s.addr if linked else s.index,
    )
    base = np.array([s.addr if linked else int(rel_place(s.index, 0)) for s in secs], np.uint64)
    sizes = np.array([s.size // 4 for s in secs], np.int64)
    first = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
    layout = Layout(base, first, sizes)
    words = np.concatenate([image.words(s) for s in secs]) if secs else np.zeros(0, np.uint32)
    return build_code(
        table,
        layout,
        words,
        result.functions,
        result.mcount_entries if linked else (),
        _extable(image, layout),
        None if linked else _branch_relocs(image, layout),
    )


def _branch_relocs(image: Image, layout: Layout) -> Relocated:
    """ET_REL: a branch's own offset means nothing where a relocation names its target."""
    syms = image.symbols
    ats, dests = [np.zeros(0, np.int64)], [np.zeros(0, np.int64)]
    if syms is None:
        return Relocated(ats[0], dests[0])
    mcount_syms = np.concatenate([syms.find(name) for name in MCOUNT_NAMES])
    for rsec in image.relocation_sections():
        sec = image.section_at(rsec.info) if rsec.info else None
        if sec is None or not sec.is_exec:
            continue
        rela = image.relocations(rsec)
        rela = rela[np.isin(S.r_type(rela["r_info"]), _BRANCH_RELOCS)]
        if not len(rela):
            continue
        at = layout.index(rel_place(sec.index, rela["r_offset"]))
        symi = S.r_sym(rela["r_info"]).astype(np.int64)
        undefined = syms.table["st_shndx"][symi] == S.SHN_UNDEF
        dest = layout.index(reloc_target_places(image, rela))
        dest = np.where(undefined, np.where(np.isin(symi, mcount_syms), TARGET_MCOUNT, TARGET_EXTERNAL), dest)
        ats.append(at[at >= 0])
        dests.append(dest[at >= 0])
    return Relocated(np.concatenate(ats), np.concatenate(dests))


def _extable(image: Image, layout: Layout) -> dict[int, int]:
    """``__ex_table``: pairs of 32-bit self-relative offsets (insn, fixup), as the kernel's
    ARCH_HAS_RELATIVE_EXTABLE lays them out (arch/powerpc/include/asm/extable.h)."""
    sec = image.section("__ex_table")
    if sec is None or sec.type == S.SHT_NOBITS or sec.size % 8:
        return {}
    if image.type != S.ET_REL:
        raw = image.table(sec, np.dtype(image.endian + "i4"), "__ex_table").astype(np.int64)
        field = np.uint64(sec.addr) + np.uint64(4) * np.arange(len(raw), dtype=np.uint64)
        dest = layout.index(field + raw.astype(np.uint64))  # wraps like the hardware
        return {int(i): int(f) for i, f in zip(dest[0::2], dest[1::2], strict=True) if i >= 0 and f >= 0}
    rsec = image.section(".rela__ex_table")
    if rsec is None or image.symbols is None:
        return {}
    rela = image.relocations(rsec)
    rela = rela[S.r_type(rela["r_info"]) == _REL32]
    dest = layout.index(reloc_target_places(image, rela))
    by_field = dict(zip(rela["r_offset"].tolist(), dest.tolist(), strict=True))
    out = {}
    for off in range(0, sec.size, 8):
        insn, fix = by_field.get(off, -1), by_field.get(off + 4, -1)
        if insn >= 0 and fix >= 0:
            out[insn] = fix
    return out


# -- the walk -------------------------------------------------------------------------------


class Verdict(enum.Enum):
    SAFE = "safe"
    LIVE = "live"
    UNKNOWN = "unknown"
    N_A = "n/a"  # ool: the site has no mflr of its own (the stub's mflr runs right before its bl)


class Why(enum.Enum):
    """Why a walk ended LIVE or UNKNOWN."""

    READS_R0 = "reads r0 before anything redefines it"
    READS_COPY = "uses bits of r0's value that an earlier instruction copied to another register"
    PASSES_COPY = "hands bits of r0's value to a callee or the caller in a register"
    CALLS_MCOUNT = "passes r0 to _mcount (its argument in the -mprofile-kernel ABI)"
    INDIRECT_JUMP = "indirect jump (bctr): targets not known"
    FALLS_OFF = "runs past the end of the function"
    OUTSIDE = "branches outside the executable sections"
    LOCAL_CALL = "calls into the middle of its own function"
    RELOADS_LR_SAVE = "reloads the LR save doubleword that gcc 5's std filled from r0"
    CANNOT_FOLLOW = "instruction the walk cannot follow (rfid, sc, absolute or bctar branch)"
    STACK_POINTER = "changes r1 while the LR save doubleword holds r0's copy"
    UNDECODED = "word not in the instruction table (or an invalid form)"
    NO_FUNCTION = "site outside any function symbol and its code"
    OUT_OF_LINE = "ool: the mflr r0 is in the out-of-line stub, right before its bl; the entry has none to nop"


class Safety(NamedTuple):
    """The verdict for one site; ``evidence`` is the place of the word that decided LIVE or UNKNOWN."""

    verdict: Verdict
    why: Why | None
    evidence: int | None


class _SiteWords(NamedTuple):
    a: int  # word number of slot A
    b: int  # word number of slot B (the call slot)
    lr_slot: int | None  # gcc 5: LR_SAVE, the doubleword slot S stored r0 to


class _Fn(NamedTuple):
    start: int
    lep: int
    end: int  # word number past the function (-1 if unknown)


# Plain ints for the hot loop: IntFlag and IntEnum arithmetic costs a Python call each.
_READ, _WRITE, _INVALID = int(Effect.READ), int(Effect.WRITE), int(Effect.INVALID)
_NEXT, _JUMP, _COND, _CALL, _COND_CALL = (int(Flow.NEXT), int(Flow.JUMP), int(Flow.COND), int(Flow.CALL),
                                          int(Flow.COND_CALL))  # fmt: skip
_RETURN, _INDIRECT_CALL = int(Flow.RETURN), int(Flow.INDIRECT_CALL)
_COND_RETURN, _COND_INDIRECT_CALL = int(Flow.COND_RETURN), int(Flow.COND_INDIRECT_CALL)
_INDIRECT, _COND_INDIRECT = int(Flow.INDIRECT), int(Flow.COND_INDIRECT)
_TRAP, _STOP = int(Flow.TRAP), int(Flow.STOP)
ALL_BITS: Final = (1 << 64) - 1


class _Views(NamedTuple):
    """memoryviews of the Code arrays: indexing one yields a Python int, several times faster
    than indexing the numpy array."""

    words: memoryview
    effect: memoryview
    flow: memoryview
    target: memoryview
    stop: memoryview
    mark: memoryview


def _views(code: Code) -> _Views:
    arrays = (code.words, code.effect, code.flow, code.target, code.stop, code.edge_mark.view(np.uint8))
    return _Views(*(a.data for a in arrays))


Copies = tuple[tuple[int, int], ...]
"""Registers other than r0 that hold unknown bits of r0's ``mflr`` value, as (register, bits),
sorted: a word that reads r0 and writes another register passes the bits on instead of deciding
LIVE at once. amdgpu.ko ``link_enc_cfg_is_link_enc_avail`` (6.12) builds a struct in r0 with
``rldimi`` and compares one byte of it: ``xor r10,r10,r0; andi. r10,r10,0xff00``; the xor
copies r0's unknown high half into r10 and the andi. masks it away."""


def walk(code: Code, v: _Views, site: _SiteWords, fn: _Fn) -> tuple[Verdict, Why | None, int | None]:
    """Depth-first walk from the word after the site's last slot; the slots themselves are part of
    the site (A nopped, B transparent, S executed before the walk starts).

    The state of a path is (taint, slot, copies). ``taint`` has a bit set for every bit of r0 that
    still holds the ``mflr`` value (all 64 at first; see :func:`transfer`). ``slot`` is, for gcc-5
    sites only, the offset from r1 of the LR save doubleword that slot S filled from r0 (None when
    no memory holds the value; see :func:`frame_step`). ``copies``: other registers holding some
    of those bits (:data:`Copies`). A (word, state) pair is looked at once.
    """
    walker = _Walker(code, v, site, fn)
    try:
        return walker.run()
    except _Live as found:
        return Verdict.LIVE, found.why, found.at


class _Live(Exception):
    """A read of the value: it decides the whole walk, from however deep in a path it is found."""

    def __init__(self, why: Why, at: int) -> None:
        super().__init__(why.value)
        self.why, self.at = why, at


_State = tuple[int, int | None, Copies]  # taint, slot, copies
_Path = tuple[int, int, int, int | None, Copies]  # word, reached, taint, slot, copies
# reached: 0 sequentially, 1 by a branch (a function start is fine), 2 just after an always-trap


class _Walker:
    """One site's walk: the paths still to follow, the (word, state) pairs seen, and the first
    reason a path could not be followed (which makes the verdict UNKNOWN unless a read is found)."""

    def __init__(self, code: Code, v: _Views, site: _SiteWords, fn: _Fn) -> None:
        self.code, self.v, self.site, self.fn = code, v, site, fn
        self.own = (fn.start, fn.lep)
        self.seen: set[int | tuple[int, int, int | None, Copies]] = set()
        self.unknown: tuple[Why, int] | None = None
        self.stack: list[_Path] = [(site.b + 1, 0, ALL_BITS, site.lr_slot, ())]

    def run(self) -> tuple[Verdict, Why | None, int | None]:
        while self.stack:
            self._follow(*self.stack.pop())
        if self.unknown is not None:
            return Verdict.UNKNOWN, self.unknown[0], self.unknown[1]
        return Verdict.SAFE, None, None

    def _stuck(self, why: Why, j: int) -> None:
        self.unknown = self.unknown or (why, j)

    def _follow(self, i: int, reached: int, taint: int, slot: int | None, copies: Copies) -> None:
        """One path, word by word, until it ends, meets a state already seen, or forks (the
        other branch goes on the stack). Words that neither touch r0 nor branch are skipped,
        unless memory or another register holds the value."""
        stop, mark, effect, flow = self.v.stop, self.v.mark, self.v.effect, self.v.flow
        site, seen, fixups = self.site, self.seen, self.code.fixups
        while True:
            plain = slot is None and not copies
            j = stop[i] if plain else i
            key = j if taint == ALL_BITS and plain else (j, taint, slot, copies)
            if key in seen:
                return
            seen.add(key)
            if site.a <= j <= site.b:
                i, reached = j + 1, 0
                continue
            if mark[j] and not (reached == 1 and j == i):
                if reached != 2:  # BUG()'s trap as a function's last word never returns
                    self._stuck(Why.FALLS_OFF, j)
                return
            if j in fixups:
                self.stack.append((fixups[j], 1, taint, slot, copies))
            e = effect[j]
            if e & _INVALID:
                self._stuck(Why.UNDECODED, j)
                return
            state = self._data(j, e, taint, slot, copies)
            if state is None:
                return
            taint, slot, copies = state
            f = flow[j]
            if f == _NEXT:
                i, reached = j + 1, 0
                continue
            if f == _TRAP:
                i, reached = j + 1, 2
                continue
            state = self._branch(j, f, state)
            if state is None:
                return
            i, reached = j + 1, 0
            taint, slot, copies = state

    def _data(self, j: int, e: int, taint: int, slot: int | None, copies: Copies) -> _State | None:
        """The state after word ``j``'s data effect; None when the path ends (nothing left to
        follow, or r1 moved in a way not modelled)."""
        word = self.v.words[j]
        if slot is not None:
            slot = frame_step(self.code, word, slot)
            if slot is _RELOADS:
                raise _Live(Why.RELOADS_LR_SAVE, j)
            if slot is _LOST:
                self._stuck(Why.STACK_POINTER, j)
                return None
        if copies or (e & _READ and taint):
            moved = data_step(self.code.table, word, e, taint, copies)
            if isinstance(moved, Why):
                raise _Live(moved, j)
            taint, copies = moved
        elif e & _WRITE:
            taint = 0
        if not taint and slot is None and not copies:
            return None
        return taint, slot, copies

    def _branch(self, j: int, f: int, state: _State) -> _State | None:
        """Control flow out of word ``j``: targets go on the stack; returns the state to go on with
        at ``j + 1``, or None when the path ends here."""
        if f in (_RETURN, _COND_RETURN):
            self._hand_on(state[2], j, call=False)
            return state if f == _COND_RETURN else None
        if f in (_INDIRECT_CALL, _COND_INDIRECT_CALL):
            self._hand_on(state[2], j, call=True)
            return state if f == _COND_INDIRECT_CALL else _after_call(state)
        if f in (_INDIRECT, _COND_INDIRECT):
            jumps = jump_table(self.v, j, self.fn) if f == _INDIRECT else None
            if jumps is not None:
                self.stack.extend((t, 1, *state) for t in jumps)
                return None
            self._stuck(Why.INDIRECT_JUMP, j)
            return state if f == _COND_INDIRECT else None
        if f == _STOP:
            self._stuck(Why.CANNOT_FOLLOW, j)
            return None
        t = self.v.target[j]
        if state[0] and (t == TARGET_MCOUNT or t in self.code.mcount):
            raise _Live(Why.CALLS_MCOUNT, j)
        if f in (_CALL, _COND_CALL):
            return self._call(j, f, t, state)
        return self._jump(j, f, t, state)

    def _call(self, j: int, f: int, t: int, state: _State) -> _State | None:
        """A relative ``bl`` (or ``bcl``) to ``t``."""
        if t == j + 1:  # bl .+4 / bcl 20,31,.+4: reads the PC, not a call
            return state
        fn = self.fn
        if fn.start <= t < fn.end and t not in self.own:
            self._stuck(Why.LOCAL_CALL, j)
            return None
        self._hand_on(state[2], j, call=True)
        return state if f == _COND_CALL else _after_call(state)

    def _jump(self, j: int, f: int, t: int, state: _State) -> _State | None:
        """A relative branch to ``t``, always or on a condition. A branch to another function's
        entry (or, in ET_REL, to an undefined symbol) is a tail call."""
        if t == TARGET_OUTSIDE:
            self._stuck(Why.OUTSIDE, j)
        elif t >= 0 and (t not in self.code.entries or t in self.own):
            self.stack.append((t, 1, *state))
        else:
            self._hand_on(state[2], j, call=False)
        return state if f == _COND else None

    @staticmethod
    def _hand_on(copies: Copies, j: int, call: bool) -> None:
        if copies and copies_escape(copies, call):
            raise _Live(Why.PASSES_COPY, j)


def _after_call(state: _State) -> _State | None:
    """What survives a call: r0 is clobbered; a copy in memory or a non-volatile register lives on."""
    _, slot, copies = state
    copies = after_call(copies)
    if slot is None and not copies:
        return None
    return 0, slot, copies


# -- gcc 5: the copy of r0 in the LR save doubleword ----------------------------------------

LR_SAVE: Final = 16  # ELFv2 ABI 2.2.2.1 "Stack Frame Organization": LR save doubleword at 16(r1)
_RELOADS: Final = -1  # sentinels for frame_step
_LOST: Final = -2


def frame_step(code: Code, word: int, slot: int) -> int | None:
    """Follow the LR save doubleword that gcc 5's ``std r0,16(r1)`` (slot S) filled from r0.

    ``slot`` is its offset from the current r1. Returns the new offset, None once a store
    overwrites it, ``_RELOADS`` when a load reads it back (the function restores LR from it:
    nopping ``mflr`` then returns to garbage), or ``_LOST`` when r1 changes in a way not modelled.
    ``stdu r1,-N(r1)`` and ``addi r1,r1,N`` move r1; nothing else may write it.

    Not counted: stack unwinders (backtraces, ``__builtin_return_address(1)``) that read the
    doubleword from a callee; they print or record it, they do not return through it.
    """
    p, rt, ra = word >> 26, (word >> 21) & 31, (word >> 16) & 31
    d = word & 0xFFFF
    d = d - 0x10000 if d & 0x8000 else d
    if p == 62 and ra == 1 and word & 3 == 1 and rt == 1:  # stdu r1,d(r1)
        return slot - (d & ~3)
    if p == 14 and rt == 1 and ra == 1:  # addi r1,r1,d
        return slot - d
    if p == 58 and ra == 1 and word & 3 == 0 and d == slot:  # ld rX,slot(r1)
        return _RELOADS
    if p == 62 and ra == 1 and word & 3 == 0 and d == slot:  # std rX,slot(r1)
        return None
    return _LOST if 1 in written_gprs(code.table, word) else slot


def row_of(table: Table, word: int) -> Row:
    """The table row of one word (the scalar form of :func:`decode`)."""
    p = word >> 26
    return table.rows[int(table.slot[int(table.offset[p]) + ((word >> int(table.shift[p])) & int(table.mask[p]))])]


def written_gprs(table: Table, word: int) -> set[int]:
    """The GPR numbers a word writes, by the table."""
    row = row_of(table, word)
    fields = {Gpr.RT: (word >> 21) & 31, Gpr.RA: (word >> 16) & 31, Gpr.RB: (word >> 11) & 31}
    return {reg for field, reg in fields.items() if field in row.writes}


# -- partial definitions of r0 --------------------------------------------------------------


def _mask(mb: int, me: int) -> int:
    """MASK(mb, me) of the Power ISA: ones from bit mb to bit me (bit 0 is the MSB), wrapping."""
    if mb <= me:
        return ((1 << (64 - mb)) - 1) ^ ((1 << (63 - me)) - 1)
    return _mask(0, me) | _mask(mb, 63)


def _rotl64(x: int, n: int) -> int:
    n &= 63
    return ((x << n) | (x >> (64 - n))) & ALL_BITS if n else x


def _rotl32(x: int, n: int) -> int:
    """ROTL32: the low word, doubled into both halves, rotated as 64 bits."""
    lo = x & 0xFFFF_FFFF
    return _rotl64(lo | lo << 32, n)


def _carry_up(taint: int) -> int:
    """Bits an add can disturb: everything from the lowest unknown bit up."""
    return (ALL_BITS ^ ((taint & -taint) - 1)) if taint else 0


_STORE_BYTES: Final[Mapping[int, int]] = {38: 0xFF, 44: 0xFFFF, 36: 0xFFFF_FFFF}  # stb, sth, stw
_STORE_X_BYTES: Final[Mapping[int, int]] = {215: 0xFF, 407: 0xFFFF, 151: 0xFFFF_FFFF}  # stbx sthx stwx
_LOGICAL: Final = frozenset({28, 60, 444, 412, 316, 476, 124, 284})  # and andc or orc xor nand nor eqv
_ZERO_SELF: Final = frozenset({316, 60})  # xor r,rA,rA and andc r,rA,rA are 0 whatever rA holds
_SELF_CANCEL: Final = frozenset({40, 8, 136})  # subf, subfc, subfe


def transfer(word: int, taints: Mapping[int, int]) -> tuple[int | None, int] | None:
    """How a word that reads unknown bits moves them.

    ``taints`` maps a register to its bits that still hold (a function of) the ``mflr`` value:
    r0 and the copies made from it. Returns (the register written, or None for a store; the
    unknown bits of the value written), or None when the result may depend on the unknown bits in
    a way not modelled here: a real read. gcc builds bit-fields in a register it never
    initialised and overwrites every bit it keeps (chcr.ko ``get_aes_decrypt_key``:
    ``clrrwi r0,r0,16; or r0,r0,r4; ...; rlwimi r0,r5,16,0,15``): that names r0 as a source
    without depending on it. Record forms (Rc = 1, ``andi.``) and OE set CR0/XER from the
    result, so they only pass if none of its bits is unknown.
    """
    p = word >> 26
    rs, ra, rb = (word >> 21) & 31, (word >> 16) & 31, (word >> 11) & 31
    t_rs, t_ra, t_rb = taints.get(rs, 0), taints.get(ra, 0), taints.get(rb, 0)
    base = t_ra if ra else 0  # (RA|0): r0 as a base register is the value 0
    xo10 = (word >> 1) & 0x3FF
    record = bool(word & 1)
    out: int | None = None
    dest: int | None = ra
    if p in (20, 21):  # rlwimi, rlwinm
        m = _mask(((word >> 6) & 31) + 32, ((word >> 1) & 31) + 32)
        out = (_rotl32(t_rs, rb) & m) | (t_ra & ~m if p == 20 else 0)
    elif p == 30 and (word >> 2) & 7 <= 3:  # rldicl, rldicr, rldic, rldimi
        sh = rb | ((word >> 1) & 1) << 5
        mb6 = (word >> 5) & 0x3F
        mbe = (mb6 & 1) << 5 | mb6 >> 1
        xo = (word >> 2) & 7
        m = (_mask(mbe, 63), _mask(0, mbe), _mask(mbe, 63 - sh), _mask(mbe, 63 - sh))[xo]
        out = (_rotl64(t_rs, sh) & m) | (t_ra & ~m & ALL_BITS if xo == 3 else 0)
    elif 24 <= p <= 29:  # ori oris xori xoris andi. andis.
        imm = (word & 0xFFFF) << (16 if p & 1 else 0)
        out = t_rs & ~imm if p <= 25 else (t_rs & imm if p >= 28 else t_rs)
        record = p >= 28
    elif p in (14, 15):  # addi, addis: rT = (RA|0) + imm
        dest, out, record = rs, _carry_up(base), False
    elif p == 31 and xo10 in _LOGICAL:
        out = 0 if rs == rb and xo10 in _ZERO_SELF else t_rs | t_rb
    elif p == 31 and xo10 & 0x1FF in _SELF_CANCEL and ra == rb:
        # subf rT,rA,rA is 0; subfc gives 0 with CA = 1; subfe gives CA - 1 (gcc's carry-to-mask
        # idiom, lpfc.ko lpfc_check_clean_addr_bit: `subfe r0,r0,r0`): none depends on rA.
        dest, out = rs, 0
    elif p == 31 and xo10 & 0x1FF in (266, 40):  # add, subf
        dest = rs
        out = _carry_up(t_ra | t_rb)
        record = record or bool(xo10 & 0x200)
    elif p in _STORE_BYTES and not base:
        dest, out, record = None, t_rs & _STORE_BYTES[p], False
    elif p == 31 and xo10 in _STORE_X_BYTES and not base and not t_rb:
        dest, out, record = None, t_rs & _STORE_X_BYTES[xo10], False
    if out is None or (record and out):
        return None
    return dest, out


_FIELDS: Final = ((Gpr.RT, 21), (Gpr.RA, 16), (Gpr.RB, 11), (Gpr.RC, 6))
_SCRATCH: Final = frozenset({11, 12})  # volatile, neither argument nor result (ELFv2 ABI Table 2.19)
_NON_VOLATILE: Final = 14  # r14-r31 survive a call (the callee saves them)


def copy_fields(table: Table, word: int, copies: Mapping[int, int]) -> tuple[list[int], list[int]]:
    """The copy registers a word reads and those it only writes, by the table (a ``(RA|0)``
    field naming a register other than r0 is a read of it)."""
    row = row_of(table, word)
    ra_base = row.mnemonic in _RA_BASE
    read, written = [], []
    for field, shift in _FIELDS:
        reg = (word >> shift) & 31
        if reg not in copies:
            continue
        if field in row.reads or (field is Gpr.RA and ra_base):
            read.append(reg)
        elif field in row.writes:
            written.append(reg)
    return read, written


def data_step(table: Table, word: int, effect: int, taint: int, copies: Copies) -> tuple[int, Copies] | Why:
    """The unknown bits of r0 and of its copies after ``word``; a :class:`Why` when the word uses
    them (LIVE)."""
    regs = dict(copies)
    read, written = copy_fields(table, word, regs) if regs else ([], [])
    reads_r0 = bool(effect & _READ and taint)
    if not (reads_r0 or read):
        if effect & _WRITE:
            taint = 0
        for reg in written:
            del regs[reg]
        return taint, tuple(sorted(regs.items()))
    moved = transfer(word, {**regs, 0: taint})
    why = Why.READS_COPY if read else Why.READS_R0
    if moved is None:
        return why
    dest, out = moved
    if dest is None:
        if out:
            return why
    elif dest == 0:
        taint = out
    elif out:
        regs[dest] = out
    else:
        regs.pop(dest, None)
    return taint, tuple(sorted(regs.items()))


def copies_escape(copies: Copies, call: bool) -> bool:
    """Whether a call (``call``) or a return or tail call hands a copy on: in an argument register
    (r3-r10: "parameter and return values", ELFv2 ABI 2.2.1.1), or, at a return, in a register the caller expects kept
    (r1, r2, r13-r31); a call passes r1, r2 and r13 to the callee as well."""
    return any(reg not in _SCRATCH and (not call or reg < _NON_VOLATILE) for reg, _ in copies)


def after_call(copies: Copies) -> Copies:
    """The copies a call leaves: those in non-volatile registers."""
    return tuple(c for c in copies if c[0] >= _NON_VOLATILE)


def jump_table(v: _Views, j: int, fn: _Fn) -> list[int] | None:
    """Targets of the ``bctr`` at word ``j`` if it ends gcc's switch sequence, else None.

    gcc 12 for ppc64le (the Debian 6.1 kernel and its modules) emits, for a dense switch::

        cmplwi rI,N ; bgt default ; addis rT,r2,.L4@toc@ha ; addi rT,rT,.L4@toc@l ;
        sldi rI,rI,2 ; lwax rX,rT,rI ; add rX,rX,rT ; mtctr rX ; bctr ; .L4: .long .Lcase0-.L4 ...

    so the table is the words right after the ``bctr``, each the signed distance from the table
    to a case. Two independent counts must agree before the targets are trusted: the words that
    read as distances to instructions of the function (an instruction word never does: its opcode
    bits make it a distance of at least 64 MiB), and the number of cases the code allows: N + 1
    for some ``cmpli rI,N`` earlier in the function (gcc may share one compare between several
    switches, or keep its CR field for a while), or 2^k when the index is cut to k bits by an
    ``rlwinm rI,rJ,2,MB,29``, ``rldicl``/``srdi`` or ``rldic rI,rJ,2,MB`` (6.12 ``is_reg64``, 6.1
    ``get_clock_source``) just before.
    """
    words = v.words
    if fn.end < 0:
        return None
    base, k, targets = j + 1, j + 1, []
    while k < fn.end:
        off = words[k] - (1 << 32) if words[k] & 0x8000_0000 else words[k]
        t = base + (off >> 2)
        if off & 3 or not fn.start <= t < fn.end or base <= t <= k:
            break
        targets.append(t)
        k += 1
    return targets if targets and len(targets) in _case_counts(words, j, fn) else None


def _case_counts(words: memoryview, j: int, fn: _Fn) -> set[int]:
    counts = set()
    for back in range(j - 1, max(fn.start, 0) - 1, -1):
        w = words[back]
        if w >> 26 == 10:  # cmpli
            counts.add((w & 0xFFFF) + 1)
        elif back > j - 12 and w >> 26 == 21 and (w >> 1) & 31 == 29:  # rlwinm rI,rJ,SH,MB,29
            counts.add(1 << (30 - ((w >> 6) & 31)))
        elif back > j - 12 and w >> 26 == 30 and (w >> 2) & 7 in (0, 2):
            mb6 = (w >> 5) & 0x3F
            mb = (mb6 & 1) << 5 | mb6 >> 1
            if (w >> 2) & 7 == 0:  # rldicl rI,rJ,SH,MB (srdi): 64 - MB bits
                counts.add(1 << (64 - mb))
            else:  # rldic rI,rJ,SH,MB: the index cut and scaled at once, 64 - SH - MB bits
                sh = (w >> 11) & 31 | ((w >> 1) & 1) << 5
                counts.add(1 << max(64 - sh - mb, 0))
    return counts


# -- per site -------------------------------------------------------------------------------


def safety(code: Code, sites: Sequence[Site]) -> tuple[Safety, ...]:
    """One :class:`Safety` per site, in order. A layout without an mflr slot (ool) is ``N_A``."""
    asked = [n for n, s in enumerate(sites) if LAYOUTS[s.variant].offset(Slot.A) is not None]
    out = [_NOT_ASKED] * len(sites)
    for n, verdict in zip(asked, _walk_sites(code, [sites[n] for n in asked]), strict=True):
        out[n] = verdict
    return tuple(out)


_NOT_ASKED: Final = Safety(Verdict.N_A, Why.OUT_OF_LINE, None)


def _walk_sites(code: Code, sites: Sequence[Site]) -> list[Safety]:
    places = np.array([s.place for s in sites], np.uint64)
    b_idx = code.index(places).tolist()
    deltas = np.array([LAYOUTS[s.variant].first_offset for s in sites], np.int64)
    a_idx = code.index(places + deltas.astype(np.uint64)).tolist()
    fns = _function_words(code, places)
    v = _views(code)
    out = []
    for n in range(len(sites)):
        a, b = a_idx[n], b_idx[n]
        if a < 0 or b < 0:
            out.append(Safety(Verdict.UNKNOWN, Why.NO_FUNCTION, None))
            continue
        fn = fns[n] if fns[n].start >= 0 else _Fn(a, a, -1)
        # gcc 5: slot S (std r0,16(r1)) ran, so the value also sits in the LR save doubleword.
        s_word = v.words[b - 1] if sites[n].variant is Variant.MPROFILE_STD else None
        lr_slot = LR_SAVE if s_word == ppc.STD_R0_16_R1 else None
        verdict, why, at = walk(code, v, _SiteWords(a, b, lr_slot), fn)
        out.append(Safety(verdict, why, None if at is None else code.place(at)))
    return out


def _function_words(code: Code, places: np.ndarray) -> list[_Fn]:
    """Word numbers of the start, local entry and end of the function around each place."""
    funcs = code.funcs
    if not len(funcs) or not len(places):
        return [_Fn(-1, -1, -1)] * len(places)
    fi = funcs.containing(places)
    f = np.maximum(fi, 0)
    start = code.index(funcs.start[f])
    lep = code.index(funcs.lep[f])
    sized = funcs.end[f] > funcs.start[f]
    last = code.index(np.where(sized, funcs.end[f] - np.uint64(4), funcs.start[f]))
    end = np.where(sized & (last >= 0), last + 1, -1)
    start = np.where(fi >= 0, start, -1)
    return [_Fn(*t) for t in zip(start.tolist(), lep.tolist(), end.tolist(), strict=True)]
