"""The Power ISA as mcountrw knows it: the one home of instruction knowledge.

* :mod:`rewriter.ppc.words`: the fixed words and branches of ftrace sites, their encoders, names
  and text; re-exported here, so ``from rewriter import ppc`` gives ``ppc.NOP``, ``ppc.bl``...;
* :mod:`rewriter.ppc.fields`: named extractors for instruction fields, the primary opcodes, and
  the ISA's MASK and ROTL;
* :mod:`rewriter.ppc.table`: the decoder table of every instruction the mflr-nop walk knows;
* :mod:`rewriter.ppc.toc`: the addresses code forms from the TOC pointer (which symbols it refers to).

Nothing here imports the rest of ``rewriter`` but :mod:`rewriter.errors` (for
:class:`EncodingError`'s base), and no other module shifts or masks an instruction
word itself (tests/test_isa_home.py holds them to it).
"""

from rewriter.ppc.toc import TocReferences, global_entry_toc, toc_references
from rewriter.ppc.words import (
    B_PLUS_8,
    BRANCH_RANGE,
    FIXED,
    INSN_SIZE,
    KINDS,
    LD_R2_24_R1,
    LD_R2_40_R1,
    MFLR_R0,
    MR_R0_R0,
    MTLR_R0,
    NOP,
    STD_R0_16_R1,
    TEXT,
    XNOP,
    Addr,
    Disassembler,
    EncodingError,
    Offset,
    WordKind,
    b,
    b_mask,
    bl,
    bl_mask,
    branch_offset,
    branch_offsets,
    branch_target,
    branch_targets,
    branch_text,
    describe,
    in_branch_range,
    is_b,
    is_bl,
    is_relative_branch,
    kind,
    kinds,
    relative_text,
)

__all__ = [
    "BRANCH_RANGE",
    "B_PLUS_8",
    "FIXED",
    "INSN_SIZE",
    "KINDS",
    "LD_R2_24_R1",
    "LD_R2_40_R1",
    "MFLR_R0",
    "MR_R0_R0",
    "MTLR_R0",
    "NOP",
    "STD_R0_16_R1",
    "TEXT",
    "XNOP",
    "Addr",
    "Disassembler",
    "EncodingError",
    "Offset",
    "TocReferences",
    "WordKind",
    "b",
    "b_mask",
    "bl",
    "bl_mask",
    "branch_offset",
    "branch_offsets",
    "branch_target",
    "branch_targets",
    "branch_text",
    "describe",
    "global_entry_toc",
    "in_branch_range",
    "is_b",
    "is_bl",
    "is_relative_branch",
    "kind",
    "kinds",
    "relative_text",
    "toc_references",
]
