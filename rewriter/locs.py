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
  A rewrite that drops a record by zeroing it therefore needs the newer loop. The loop runs for
  modules too, but a module does not say which kernel will load it: only a vmlinux is read.

No symbol marks the change, but its code does: the newer loop compares every record with the four
text bounds, so its instructions form their addresses from the TOC pointer
(:func:`rewriter.ppc.toc_references`). The older one refers to none of them. Checked on the three
Debian kernels: 6.1.0-50 refers to none, 6.12.107 and 7.2.13 to all four. Anything in between
(some of the four), or code this reading cannot follow, is :attr:`Locs.UNKNOWN`, and the
commands then keep to what they did before they read the loop (the newer loop's rules).

The image is read by :func:`kernel_locs`, and the loop's rules decided by :func:`loop_of` from what
it read; the rest of the tool asks this module which records a kernel skips.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Collection, Sequence
from functools import partial
from typing import Final

import numpy as np

from rewriter import ppc
from rewriter.elf import structs as S
from rewriter.elf.dynamic import relocated_slots
from rewriter.elf.image import Abi, Image, Kind
from rewriter.elf.symbols import Functions, code_addrs
from rewriter.errors import UnmappedAddress
from rewriter.generations import Generation

PROCESS_LOCS: Final = "ftrace_process_locs"
TEXT_BOUNDS: Final = ("_stext", "_etext", "_sinittext", "_einittext")

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


def zero_records_fail(generation: Generation | None, loop: Locs) -> bool:
    """Whether a zeroed record of a ``generation`` image turns ftrace off under a kernel whose loop
    is ``loop``: only on patchable (ftrace_call_adjust() adds 4) with the older loop."""
    return generation is Generation.PATCHABLE and loop is Locs.ADJUSTS_FIRST


UNCHECKED_RISK: Final = (
    "a kernel whose ftrace_process_locs() adds 4 before it tests a record for zero (before the 2025 change) "
    "turns ftrace off when the module loads"
)
"""Why records dropped from a patchable module with no kernel's loop to hold them to are a risk
(:func:`unchecked_drops`): said by ``nop`` of one module and by a ``prenop`` run."""


def loop_for_modules(generation: Generation | None, loop: Locs) -> Locs:
    """The loop a vmlinux of ``generation`` holds its modules' records to, as far as it matters
    here: only a patchable kernel loads patchable modules, the only ones whose zeroed records the
    older loop refuses (an mprofile 6.1 vmlinux has the older loop, but cannot load them at all)."""
    return loop if generation is Generation.PATCHABLE else Locs.UNKNOWN


def unchecked_drops(generation: Generation | None, loop: Locs, dropped: int) -> int:
    """How many of a module's ``dropped`` records were dropped unchecked: on patchable, where the
    older loop would turn ftrace off, when the loop of the kernel that loads it (``loop``) is not
    known (no vmlinux named, or one this reading does not follow)."""
    return dropped if generation is Generation.PATCHABLE and loop is Locs.UNKNOWN else 0


def loop_of(
    bounds: Collection[int], entry: int, words: Sequence[int], toc: int | None, slot_value: Callable[[int], int | None]
) -> Locs:
    """:class:`Locs` from ftrace_process_locs()'s ``words`` at ``entry``: ``bounds`` the addresses
    of the four text bounds, ``toc`` its r2 (None: the ELFv2 global entry's, read from its first
    words), ``slot_value`` the value the kernel finds in a TOC slot (after relocate())."""
    if toc is None and len(words) >= 2:
        toc = ppc.global_entry_toc(entry, words[0], words[1])
    refs = None if toc is None else ppc.toc_references(words, toc)
    if refs is None:
        return Locs.UNKNOWN
    formed = set(refs.addresses)
    formed.update(v for v in map(slot_value, refs.slots) if v is not None)
    found = sum(1 for b in bounds if b in formed)
    if found == len(bounds):
        return Locs.CHECKS_TEXT
    return Locs.ADJUSTS_FIRST if found == 0 else Locs.UNKNOWN


Bounds = list[tuple[int, int]]
"""The kernel text ranges ftrace_process_locs() holds records to (:func:`kernel_text`)."""


def kernel_locs(image: Image, funcs: Functions, bounds: Bounds | None = None) -> Locs:
    """Which loop a vmlinux's ftrace_process_locs() has (:mod:`rewriter.locs`), read from its code:
    its words (the function table gives their end), its r2 (ELFv1: the descriptor's; ELFv2: its
    global entry's), the four text bounds, and TOC slots as relocate() leaves them. ``bounds``:
    :func:`kernel_text`, when the caller has read it (a scan needs it three times)."""
    text = kernel_text(image) if bounds is None else bounds  # None unless a vmlinux with symbols
    code = None if text is None or len(text) != 2 else _function_code(image, funcs)
    if text is None or code is None:
        return Locs.UNKNOWN
    entry, words, toc = code
    return loop_of([b for pair in text for b in pair], entry, words, toc, partial(_toc_slot_value, image))


def _function_code(image: Image, funcs: Functions) -> tuple[int, list[int], int | None] | None:
    """ftrace_process_locs()'s entry, words and, for ELFv1, the r2 of its descriptor."""
    entries = code_addrs(image, [PROCESS_LOCS])
    if len(entries) != 1 or not len(funcs):
        return None  # absent (inlined, or a clone under another name), or two of that name
    entry = entries[0]
    i = int(np.searchsorted(funcs.start, entry, side="right")) - 1
    if i < 0 or int(funcs.start[i]) != entry or int(funcs.end[i]) <= entry:
        return None
    try:
        offset = image.offset_of(entry)
    except UnmappedAddress:
        return None
    count = min(int(funcs.end[i]) - entry, len(image.data) - offset) // ppc.INSN_SIZE
    words = np.frombuffer(image.data, image.endian + "u4", count, offset).tolist()
    return entry, words, _descriptor_toc(image, PROCESS_LOCS)


def _descriptor_toc(image: Image, name: str) -> int | None:
    """ELFv1: the r2 in the .opd descriptor of the function ``name`` (its second doubleword)."""
    opd, syms = image.section(".opd"), image.symbols
    if image.abi is not Abi.ELFV1 or opd is None or syms is None:
        return None
    hit = syms.find(name)
    if not len(hit) or int(syms.table["st_shndx"][hit[0]]) != opd.shndx:
        return None
    return _toc_slot_value(image, int(syms.table["st_value"][hit[0]]) + S.OPD_TOC)


def _toc_slot_value(image: Image, addr: int) -> int | None:
    """The doubleword at ``addr`` as the kernel reads it: its R_PPC64_RELATIVE addend, if one
    targets it (:func:`~rewriter.elf.dynamic.relocated_slots`), else the file's bytes."""
    try:
        offset = image.offset_of(addr)
    except UnmappedAddress:
        return None
    if offset + 8 > len(image.data):
        return None
    word = np.array([int.from_bytes(image.data[offset : offset + 8], image.byteorder)], np.uint64)
    return int(relocated_slots(image, addr, word)[0])


def split_skipped(records: np.ndarray, locs: Locs, bounds: Bounds | None) -> tuple[np.ndarray, np.ndarray]:
    """(records the kernel processes, records ftrace_process_locs skips: in a vmlinux, those
    outside ``bounds``, ``_stext.._etext`` and ``_sinittext.._einittext`` (:func:`kernel_text`),
    unless its code shows it checks no such thing (:class:`Locs.ADJUSTS_FIRST`, as 6.1's: init
    then refuses what they name))."""
    if bounds is None or locs is Locs.ADJUSTS_FIRST:
        return records, np.zeros(0, np.uint64)
    inside = np.zeros(len(records), bool)
    for lo, hi in bounds:
        inside |= (records >= lo) & (records < hi)
    return records[inside], records[~inside]


def kernel_text(image: Image) -> Bounds | None:
    """The text bounds the newer loop holds records to, ``[(_stext, _etext), (_sinittext,
    _einittext)]`` as far as the symbols name them; None unless a vmlinux with symbols."""
    syms = image.symbols
    if image.kind is not Kind.VMLINUX or syms is None:
        return None
    out = []
    for lo_name, hi_name in zip(TEXT_BOUNDS[::2], TEXT_BOUNDS[1::2], strict=True):  # _stext.._etext, init
        lo, hi = syms.find(lo_name), syms.find(hi_name)
        if len(lo) and len(hi):
            out.append((int(syms.table["st_value"][lo[0]]), int(syms.table["st_value"][hi[0]])))
    return out or None
