"""A stripped vmlinux's records: the table found by what its entries point at.

A vmlinux keeps its records inside ``.init.data`` between ``__start_mcount_loc`` and
``__stop_mcount_loc``; with its symbols stripped, the bounds are gone. The table is the run of
8-byte words (each 0 or an address in the code) that names the most call slots: ``bl``s to
``_mcount`` (mprofile, with ``--mcount-addr``) or ``nop`` words (patchable, ool).
"""

from __future__ import annotations

import numpy as np

from rewriter import ppc
from rewriter.code import CodeView
from rewriter.detect import STRIPPED_MIN_RECORDS, mcount_by_words
from rewriter.elf import structs as S
from rewriter.elf.image import Image
from rewriter.generations import Generation
from rewriter.records import RecordTable, table_at


def stripped_records(
    image: Image,
    text: CodeView,
    entries: np.ndarray,
    calls: np.ndarray,
    mcount_addr: int | None,
    generation: Generation | None,
) -> tuple[tuple[RecordTable, ...], np.ndarray, np.ndarray, Generation | None]:
    """A stripped vmlinux keeps its records inside ``.init.data`` with the symbols that bound them
    gone: find the table (:func:`_search_record_table`) by what its entries point at, calls to
    ``_mcount`` (mprofile) or ``nop`` words (patchable, ool)."""
    if mcount_addr is not None:
        if not len(calls):
            raise image.error(f"--mcount-addr {mcount_addr:#x}: no bl in this stripped image calls it")
        return _found(_search_record_table(image, text, np.sort(calls))), entries, calls, Generation.MPROFILE
    table = None
    if generation is not Generation.MPROFILE:
        table = _search_record_table(image, text, _nop_places(text))
        # Without --generation, only a table of kernel size is believed: a few function pointers
        # at nop words are no evidence of patchable entries.
        if table is not None and generation is None and len(table.values) < STRIPPED_MIN_RECORDS:
            table = None
    if table is None:
        raise image.error(
            "stripped image: no .symtab to find _mcount, and no __mcount_loc section to find the records "
            "(a vmlinux keeps them in .init.data between the stripped __start/__stop_mcount_loc symbols): "
            "pass --mcount-addr with _mcount's address from System.map (mprofile), or --generation patchable|ool"
            + _mcount_hint(text)
        )
    return _found(table), entries, calls, generation


def _mcount_hint(text: CodeView) -> str:
    """The likely ``--mcount-addr``, when the words make one plain (:func:`mcount_by_words`)."""
    guess = mcount_by_words(text)
    if guess is None:
        return ""
    return f"; the words look mprofile: {guess.reason}, so likely --mcount-addr {guess.addr:#x} (check System.map)"


def _found(table: RecordTable | None) -> tuple[RecordTable, ...]:
    return () if table is None else (table,)


def _nop_places(text: CodeView) -> np.ndarray:
    return np.sort(text.places(np.flatnonzero(text.words == ppc.NOP)))


def _search_record_table(image: Image, text: CodeView, slots: np.ndarray) -> RecordTable | None:
    """The run of 8-byte words, each 0 (a dropped record) or an address in the code, that names the
    most of ``slots`` (sorted). Function-pointer tables also point into the code, but at function
    entries: never at a call slot (entry + 4 or + 8), and at a nop only for the few functions
    without a TOC prologue, where the table names tens of thousands."""
    best: tuple[int, RecordTable | None] = (0, None)
    if not len(slots):
        return None
    dt = S.addr_dtype(image.endian)
    for sec in image.sections:
        if sec.type != S.SHT_PROGBITS or sec.is_exec or not sec.flags & S.SHF_ALLOC or sec.size < 8:
            continue
        skip = -sec.addr % 8
        values = np.frombuffer(image.data, dt, count=(sec.size - skip) // 8, offset=sec.offset + skip)
        values = values.astype(np.uint64)
        k, _ = text.locate(values)
        code = np.flatnonzero(k >= 0)
        pos = np.minimum(np.searchsorted(slots, values[code]), len(slots) - 1)
        hit = code[slots[pos] == values[code]]
        if not len(hit):
            continue
        run = np.cumsum((values != 0) & (k < 0))  # words of one run of `0 or code` share a number
        score = np.bincount(run[hit])
        best_run = int(np.argmax(score))
        if score[best_run] > best[0]:
            named = hit[run[hit] == best_run]
            first, last = int(named[0]), int(named[-1])
            if not _mostly_slots(int(score[best_run]), values[first : last + 1]):
                continue
            addr = sec.addr + skip + 8 * first
            table = table_at(image, f"{sec.name} (searched)", addr, last - first + 1)
            best = (int(score[best_run]), table)
    return best[1]


def _mostly_slots(named: int, run: np.ndarray) -> bool:
    """A record table names call slots with (nearly) every entry that is not a dropped 0: a real
    one names them all (weak-function bodies included). Other tables of code pointers (6.1's
    ``__soft_mask_table``: 4 of its 11 entries fall on patchable-looking nops) must not pass for
    one, or a rewrite would zero their entries; 90% leaves room for a few odd records."""
    return named * 10 >= int(np.count_nonzero(run)) * 9
