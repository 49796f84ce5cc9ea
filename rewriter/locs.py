"""What a vmlinux's ftrace_process_locs() checks before it makes a record, read from its own code.

Which records the kernel skips at boot changed in 2025 (kernel/trace/ftrace.c, upstream 6.14/6.15,
and backported to stable kernels: Debian's 6.12.107 has it, its 6.1.0-50 not). The newer loop reads
the raw record and skips it when it is zero, then, for the core kernel, when it is outside
``_stext.._etext`` and ``_sinittext.._einittext`` ("ftrace: Check against is_kernel_text() instead
of kaslr_offset()"), and only then calls ftrace_call_adjust(). The older loop calls
ftrace_call_adjust() first and tests what it returns for zero, and nothing else:

* a record outside kernel text is not skipped: init reads the words there, refuses them, and
  ftrace_bug() turns ftrace off for the boot;
* on patchable kernels ftrace_call_adjust() adds 4 (the record names the first nop, the kernel
  works on the second), so a zeroed record becomes 4, is not skipped either, and fails the same way.
  A rewrite that drops a record by zeroing it therefore needs the newer loop.

No symbol marks the change, but its code does: the newer loop compares every record with the four
text bounds, so its instructions form their addresses (``addis``/``addi`` from the TOC pointer, or a
TOC load). The older one refers to none of them. Checked on the three Debian kernels: 6.1.0-50 refers
to none, 6.12.107 and 7.2.13 to all four.
"""

from __future__ import annotations

import enum
from typing import Final

import numpy as np

from rewriter import ppc
from rewriter.elf.image import Image, Kind
from rewriter.errors import UnmappedAddress
from rewriter.ppc import fields as F

PROCESS_LOCS = "ftrace_process_locs"
TEXT_BOUNDS = ("_stext", "_etext", "_sinittext", "_einittext")
TOC = 2  # r2
ENTRY = 12  # r12: an ELFv2 global entry's own address, from which it computes r2


ZERO_ADJUSTED: Final = (
    "this kernel's ftrace_process_locs() adds 4 (ftrace_call_adjust) before it tests a record for zero, "
    "and init refuses address 4"
)
"""Why a zeroed record turns ftrace off on a patchable kernel with the older loop, in every report."""


class Locs(enum.Enum):
    """How the kernel's ftrace_process_locs() treats a record (see the module's docstring)."""

    CHECKS_TEXT = "checks-text"  # zero and outside-text records skipped, before ftrace_call_adjust()
    ADJUSTS_FIRST = "adjusts-first"  # only a record ftrace_call_adjust() makes zero is skipped
    UNKNOWN = "unknown"  # not a vmlinux, no symbols, or code this reading does not follow


def process_locs(image: Image) -> Locs:
    """:class:`Locs` of a vmlinux, from the text bounds its ftrace_process_locs() refers to."""
    syms = image.symbols
    if image.kind is not Kind.VMLINUX or syms is None:
        return Locs.UNKNOWN
    bounds = [_defined(image, name) for name in TEXT_BOUNDS]
    words = _function_words(image, PROCESS_LOCS)
    if words is None or any(b is None for b in bounds):
        return Locs.UNKNOWN
    entry, code = words
    toc = _toc_pointer(entry, code)
    if toc is None:
        return Locs.UNKNOWN
    formed = _addresses_formed(image, toc, code)
    return Locs.CHECKS_TEXT if all(b in formed for b in bounds) else Locs.ADJUSTS_FIRST


def _defined(image: Image, name: str) -> int | None:
    syms = image.symbols
    if syms is None:
        return None
    hit = syms.find(name)
    return int(syms.table["st_value"][hit[0]]) if len(hit) else None


def _function_words(image: Image, name: str) -> tuple[int, list[int]] | None:
    """The address and words of the function symbol ``name`` (ELFv2: its code is at its value)."""
    syms = image.symbols
    if syms is None:
        return None
    hit = syms.find(name)
    if not len(hit):
        return None
    addr, size = int(syms.table["st_value"][hit[0]]), int(syms.table["st_size"][hit[0]])
    try:
        offset = image.offset_of(addr)
    except UnmappedAddress:
        return None
    count = min(size, len(image.data) - offset) // ppc.INSN_SIZE
    words = np.frombuffer(image.data, image.endian + "u4", count, offset)
    return addr, words.tolist()


def _toc_pointer(entry: int, code: list[int]) -> int | None:
    """r2 as an ELFv2 global entry sets it: ``addis r2,r12,HI; addi r2,r2,LO`` with r12 = the
    entry. None for any other start (ELFv1 takes r2 from the descriptor: not read here)."""
    if len(code) < 2:
        return None
    first, second = code[0], code[1]
    if (F.primary(first), F.rt(first), F.ra(first)) != (F.OP_ADDIS, TOC, ENTRY):
        return None
    if (F.primary(second), F.rt(second), F.ra(second)) != (F.OP_ADDI, TOC, TOC):
        return None
    return (entry + (F.d16(first) << 16) + F.d16(second)) & F.ALL_BITS


def _addresses_formed(image: Image, toc: int, code: list[int]) -> set[int]:
    """Addresses the code forms from the TOC pointer: ``addis rT,r2,HI`` then ``addi rX,rT,LO``,
    and the doublewords it loads from the TOC (``ld rX,D(r2)`` or ``ld rX,LO(rT)``), read from the
    file. A flow-blind pass: enough to see which symbols a function refers to."""
    high: dict[int, int] = {}
    out: set[int] = set()
    for word in code:
        op, rt, ra = F.primary(word), F.rt(word), F.ra(word)
        if op == F.OP_ADDIS and ra == TOC:
            high[rt] = toc + (F.d16(word) << 16)
        elif op == F.OP_ADDI and ra in high:
            out.add((high[ra] + F.d16(word)) & F.ALL_BITS)
        elif op == F.OP_LD and F.ds_xo(word) == 0 and (ra == TOC or ra in high):
            base = toc if ra == TOC else high[ra]
            loaded = _doubleword(image, (base + F.ds(word)) & F.ALL_BITS)
            if loaded is not None:
                out.add(loaded)
    return out


def _doubleword(image: Image, addr: int) -> int | None:
    try:
        offset = image.offset_of(addr)
    except UnmappedAddress:
        return None
    if offset + 8 > len(image.data):
        return None
    return int.from_bytes(image.data[offset : offset + 8], image.byteorder)
