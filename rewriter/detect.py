"""An image's ftrace generation, read from what it contains, never from its name: the symbols
(ool stub areas, ``_mcount``), an ``__mcount_loc`` table, and the words its records point at.
:func:`rewriter.sites.scan` asks it before it classifies a site, and ``--generation`` is checked
against it (:class:`Detect`: what it found, and why).
"""

from __future__ import annotations

from typing import Final, NamedTuple

import numpy as np

from rewriter import ppc
from rewriter.arrays import shift
from rewriter.code import CodeView
from rewriter.elf import structs as S
from rewriter.elf.image import Image, Kind
from rewriter.elf.release import vermagic_callsite
from rewriter.generations import OOL_AREAS, Generation
from rewriter.prose import counted

STRIPPED_MIN_RECORDS = 1000  # a stripped vmlinux's table, found by search; kernels have tens of thousands


class Detect(NamedTuple):
    """How :func:`detect_generation` decided (the audit and ``--generation`` errors print it)."""

    generation: Generation | None
    reason: str
    also: Generation | None = None  # another generation the contents fit as well: ``--generation`` may choose it


def detect_generation(image: Image, text: CodeView, calls: np.ndarray, records: np.ndarray) -> Detect:
    """The image's generation, from what it contains (never from its name).

    1. ool stub areas (``ftrace_ool_stub_text``...): only a 6.13+ out-of-line vmlinux has them.
    2. calls to an mcount entry, or an ``__mcount_loc`` table: mprofile.
    3. records that point at ``nop`` words: patchable or ool. ``-fpatchable-function-entry=2``
       always emits two nops and ``=1`` one: the image is ool when most recorded nops are followed
       by something else (a 7.2 vmlinux: 17,641 of 42,648 by ``mflr r0``, few by a nop), else
       patchable, and the sites that do not fit are the anomalies the scan and audit report (one
       edited site must not turn 38,790 patchable sites into ool ones). A vmlinux with symbols but
       no stub area (step 1) is never ool: every ool kernel links the areas in.
    """
    found = detect_by_symbols(image, calls, records)
    if found is not None:
        return found
    if image.symbols is None and image.type != S.ET_REL:
        guessed = mcount_by_words(text)
        if guessed is not None:
            return Detect(Generation.MPROFILE, guessed.reason)
    # the words at each record and after it, in one look-up (each is a fixed cost in a module)
    words = text.words_of(np.concatenate([records, shift(records, ppc.INSN_SIZE)]))
    relaxed = image.type != S.ET_REL and image.kind is not Kind.VMLINUX
    found = detect_by_words(words[: len(records)], words[len(records) :], relaxed=relaxed)
    if found.generation is Generation.OOL and _kernel_without_areas(image):
        return Detect(Generation.PATCHABLE, f"{found.reason}, but a vmlinux with symbols and no ool stub area")
    return found


def _kernel_without_areas(image: Image) -> bool:
    """A vmlinux whose symbols would name its ool stub areas if it had any (step 1 found none)."""
    return image.kind is Kind.VMLINUX and image.symbols is not None and len(image.symbols.table) > 0


class McountGuess(NamedTuple):
    """The likely ``_mcount`` of a stripped mprofile image: the one target of its prologue calls."""

    addr: int
    calls: int

    @property
    def reason(self) -> str:
        return f"{self.calls} `mflr r0; bl {self.addr:#x}` prologues: calls to _mcount"


def mcount_by_words(text: CodeView) -> McountGuess | None:
    """In a linked image without symbols: the target of (nearly) every ``bl`` right after an
    ``mflr r0``, if a kernel's worth of them call it (an mprofile site; nothing else puts a call
    there). A guess for messages and for the generation, never an address the scan uses unasked:
    ``--mcount-addr`` stays the user's word."""
    if not len(text.bl_places):
        return None
    after_mflr = text.words_of(shift(text.bl_places, -ppc.INSN_SIZE)) == ppc.MFLR_R0
    targets, counts = np.unique(text.bl_targets[after_mflr], return_counts=True)
    if not len(counts):
        return None
    top = int(np.argmax(counts))
    n = int(counts[top])
    # a kernel's worth, and the one target of 9 in 10 of them (mprofile: all but a handful)
    if n < STRIPPED_MIN_RECORDS or n * 10 < int(counts.sum()) * 9:
        return None
    return McountGuess(int(targets[top]), n)


def detect_by_symbols(image: Image, calls: np.ndarray, records: np.ndarray) -> Detect | None:
    """Steps 1 and 2 of :func:`detect_generation`, and no records: None when the words decide."""
    syms = image.symbols
    if syms is not None and any(len(syms.find(n)) for n in OOL_AREAS):
        return Detect(Generation.OOL, "ool stub areas (ftrace_ool_stub_text...)")
    if len(calls) or _has_mcount_table(image):
        return Detect(Generation.MPROFILE, "calls to _mcount" if len(calls) else "an __mcount_loc table")
    if not len(records):
        return Detect(None, "no records and no call to _mcount")
    return None


def detect_by_words(first: np.ndarray, after: np.ndarray, *, relaxed: bool) -> Detect:
    """Step 3 of :func:`detect_generation`, from the word at each record and the word after it.
    ``relaxed``: a linked program, whose first body words ld may have relaxed to nops (not a
    vmlinux: an ool kernel names its stub areas, and is told by them first)."""
    nop = first == ppc.NOP
    if not nop.any():
        # What only an offline rewrite leaves at a patchable record (the compiler's first nop made
        # `mflr r0` or `b +8`): an ool record is its one nop, or `b stub` once the kernel runs.
        rewritten = int(np.count_nonzero((first == ppc.MFLR_R0) | (first == ppc.B_PLUS_8)))
        if rewritten:
            return Detect(
                Generation.PATCHABLE,
                f"{counted(rewritten, 'record')} at `mflr r0` or `b +8`: patchable sites rewritten offline",
            )
        return Detect(None, "no record points at a nop or a call to _mcount")
    alone = int(np.count_nonzero(nop & (after != ppc.NOP)))
    of = f"{alone} of {counted(int(np.count_nonzero(nop)), 'recorded nop')} not followed by a nop"
    if alone * 2 > int(np.count_nonzero(nop)):
        return Detect(Generation.OOL, f"{of}: one patchable nop")
    if alone:
        return Detect(
            Generation.PATCHABLE, f"{of}: most are two patchable nops", also=Generation.OOL if relaxed else None
        )
    # In a linked program an ool function whose body starts with a nop (ld relaxes `addis rX,r2,x@toc@ha`
    # to one) reads the same: the words cannot rule out ool there, and --generation may. A compiler
    # starts no body with a nop: in an object, two nops are patchable.
    reason = "every recorded nop is followed by a nop: two patchable nops"
    return Detect(Generation.PATCHABLE, reason, also=Generation.OOL if relaxed else None)


def _has_mcount_table(image: Image) -> bool:
    """recordmcount's section (in a relocatable file, its relocations fill it), unless a module
    has the compiler's besides and is for a kernel that reads that one alone (its vermagic:
    ``records.callsite_section``)."""
    if image.section("__mcount_loc") is None:
        return False
    both = image.section("__patchable_function_entries") is not None
    return not (both and vermagic_callsite(image) == "__patchable_function_entries")


# The word before an mprofile call slot, in every state a site of that layout can hold: `mflr r0`
# (or gcc 5's `std r0,16(r1)` after it), a nopped or broken site's `nop`, a guarded one's `b +8`.
_MPROFILE_BEFORE: Final = np.array([ppc.MFLR_R0, ppc.STD_R0_16_R1, ppc.NOP, ppc.B_PLUS_8], np.uint32)
# The word after a classic -pg call: the TOC restore of a call that may leave the TOC, or the
# nop the linker or the module loader (``ld r2,40(r1)``) turns into one.
_PG_AFTER: Final = np.array([ppc.NOP, ppc.LD_R2_40_R1, ppc.LD_R2_24_R1], np.uint32)


def is_classic_pg(text: CodeView, places: np.ndarray) -> bool:
    """Whether ``places`` (an mprofile image's calls to _mcount and its records) are all classic
    ``-pg`` calls.

    Plain ``-pg`` (a ppc64 ELFv1 kernel's: ``CONFIG_MPROFILE_KERNEL`` needs ELFv2 in 7.2, and
    little-endian in 6.1) calls _mcount after the prologue has saved LR and built the
    frame, followed by a TOC restore: ``stdu r1,-N(r1); bl _mcount; nop``. The kernel patches that
    ``bl`` alone, to ``nop`` in the vmlinux and ``b +8`` over the module loader's ``ld r2,40(r1)``
    (arch/powerpc/kernel/trace/ftrace_64_pg.c). Read as mprofile, with no ``mflr r0`` in its slot
    A, every such site was ``unknown`` and every record a boot-time ftrace bug, on a kernel that
    boots and traces them all."""
    if not len(places):
        return False
    before = text.words_of(shift(places, -ppc.INSN_SIZE))
    after = text.words_of(shift(places, ppc.INSN_SIZE))
    return not np.isin(before, _MPROFILE_BEFORE).any() and bool(np.isin(after, _PG_AFTER).all())
