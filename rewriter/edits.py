"""Edits: every change mcountrw makes to a file, each one exactly reversible.

An edit carries what it expects to find as well as what it writes, so that applying it is a
compare-and-swap (like the kernel's ``ftrace_modify_code``: read, validate, then patch) and
undoing it is the same operation with old and new exchanged. Four kinds cover everything:

* :class:`WordWrite`  one instruction slot of a site (the plan's writes, resolved to words);
* :class:`BytesEdit`  a few raw bytes: a zeroed ``__mcount_loc`` entry, ``sh_size``, ``DT_RELACOUNT``;
* :class:`RelaEdit`   entries taken out of a relocation table, either dropped (the table shrinks,
  the freed tail is zero) or moved to sit after the first ``keep`` remaining entries;
* :class:`Truncate`   the module signature trailer cut off the end of the file.

Edits apply to a ``bytearray`` of the whole (decompressed) file. Pure: no file I/O.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

from rewriter.errors import WordMismatch
from rewriter.ppc import describe


class WordWrite(NamedTuple):
    stage: int
    offset: int  # file offset of the 4-byte slot
    addr: int | None  # its virtual address (None in relocatable files)
    section: str
    section_offset: int
    function: str | None
    slot: str  # "A", "S" or "B"
    old: int
    new: int
    state_before: str
    state_after: str


class BytesEdit(NamedTuple):
    offset: int
    old: bytes
    new: bytes
    why: str


class RelaEdit(NamedTuple):
    section: str
    offset: int  # file offset of the relocation table
    size: int  # the table's size in bytes before the edit
    entsize: int
    removed: tuple[int, ...]  # original entry indexes, ascending
    entries: tuple[bytes, ...]  # their original bytes
    keep: int | None  # None: dropped; else: placed after the first `keep` remaining entries
    why: str


class Truncate(NamedTuple):
    size: int  # the file's size after the edit
    tail: bytes  # what was cut off
    why: str


Edit = WordWrite | BytesEdit | RelaEdit | Truncate


def _where(offset: int, addr: int | None) -> str:
    return f"{addr:#x}" if addr is not None else f"offset {offset:#x}"


def _cas(buf: bytearray, offset: int, old: bytes, new: bytes, what: str) -> None:
    found = bytes(buf[offset : offset + len(old)])
    if found != old:
        raise WordMismatch(f"{what}: expected {old.hex()} != found {found.hex()}")
    buf[offset : offset + len(new)] = new


def _word_cas(buf: bytearray, w: WordWrite, old: int, new: int, order: str) -> None:
    found = int.from_bytes(buf[w.offset : w.offset + 4], order)  # type: ignore[arg-type]
    if found != old:
        raise WordMismatch(
            f"{_where(w.offset, w.addr)}: expected {old:08x} ({describe(old)}) != found {found:08x} ({describe(found)})"
        )
    buf[w.offset : w.offset + 4] = new.to_bytes(4, order)  # type: ignore[arg-type]


def _rela_apply(buf: bytearray, e: RelaEdit) -> None:
    table = bytes(buf[e.offset : e.offset + e.size])
    rows = [table[i : i + e.entsize] for i in range(0, e.size, e.entsize)]
    removed = set(e.removed)
    for index, entry in zip(e.removed, e.entries, strict=True):
        if index >= len(rows) or rows[index] != entry:
            found = rows[index].hex() if index < len(rows) else "nothing"
            raise WordMismatch(f"{e.section}[{index}]: expected {entry.hex()} != found {found}")
    kept = [row for i, row in enumerate(rows) if i not in removed]
    if e.keep is None:
        new = b"".join(kept) + bytes(len(e.entries) * e.entsize)
    else:
        new = b"".join(kept[: e.keep]) + b"".join(e.entries) + b"".join(kept[e.keep :])
    buf[e.offset : e.offset + e.size] = new


def _rela_invert(buf: bytearray, e: RelaEdit) -> None:
    table = bytes(buf[e.offset : e.offset + e.size])
    rows = [table[i : i + e.entsize] for i in range(0, e.size, e.entsize)]
    n = len(e.entries)
    if e.keep is None:
        kept, moved = rows[: len(rows) - n], rows[len(rows) - n :]
        if any(row != bytes(e.entsize) for row in moved):
            raise WordMismatch(f"{e.section}: expected {n} zeroed entries at the end of the table")
    else:
        moved = rows[e.keep : e.keep + n]
        kept = rows[: e.keep] + rows[e.keep + n :]
        if tuple(moved) != e.entries:
            raise WordMismatch(f"{e.section}: the moved entries are not where the log puts them")
    original: list[bytes] = []
    it = iter(kept)
    removed = dict(zip(e.removed, e.entries, strict=True))
    for i in range(len(rows)):
        original.append(removed[i] if i in removed else next(it))
    buf[e.offset : e.offset + e.size] = b"".join(original)


def _word_runs(edits: Sequence[Edit]) -> list[Edit | list[WordWrite]]:
    """Edits with each run of word writes of one stage gathered into a list. The writes of one
    stage touch distinct slots (they may land in any order), so a run is one vectorised
    compare-and-swap; across stages a slot can be written again, so stages stay in order."""
    out: list[Edit | list[WordWrite]] = []
    for e in edits:
        if type(e) is WordWrite:
            last = out[-1] if out else None
            if isinstance(last, list) and last[0].stage == e.stage:
                last.append(e)
            else:
                out.append([e])
        else:
            out.append(e)
    return out


def _one_cas(buf: bytearray, w: WordWrite, order: str, forward: bool) -> None:
    if forward:
        _word_cas(buf, w, w.old, w.new, order)
    else:
        _word_cas(buf, w, w.new, w.old, order)


def _run_cas(buf: bytearray, run: Sequence[WordWrite], order: str, forward: bool) -> None:
    """All of ``run`` as one compare-and-swap: every slot is checked before any is written."""
    offsets = np.fromiter((w.offset for w in run), np.int64, len(run))
    if len(run) < 64 or len(np.unique(offsets)) != len(run) or int(offsets.max()) + 4 > len(buf):
        for w in run:  # small, or a slot written twice in one stage (hand-made log): one by one
            _one_cas(buf, w, order, forward)
        return
    old = np.fromiter((w.old for w in run), np.uint32, len(run))
    new = np.fromiter((w.new for w in run), np.uint32, len(run))
    expected, wanted = (old, new) if forward else (new, old)
    dt = np.dtype("<u4" if order == "little" else ">u4")
    view = np.frombuffer(buf, np.uint8)
    where = offsets[:, None] + np.arange(4)
    found = view[where].copy().view(dt).ravel()
    bad = np.flatnonzero(found != expected)
    if len(bad):
        _one_cas(buf, run[int(bad[0])], order, forward)  # raises, with the usual message
    view[where] = wanted.astype(dt).view(np.uint8).reshape(-1, 4)
    del view  # a live export would stop the bytearray from ever being resized


def apply_edits(buf: bytearray, edits: Sequence[Edit], order: str) -> bytearray:
    """Apply ``edits`` in order; raises :class:`WordMismatch` on the first unexpected content.
    A :class:`Truncate` returns a new, shorter buffer, so always use the return value."""
    for e in _word_runs(edits):
        if isinstance(e, list):
            _run_cas(buf, e, order, forward=True)
        elif isinstance(e, BytesEdit):
            _cas(buf, e.offset, e.old, e.new, f"offset {e.offset:#x} ({e.why})")
        elif isinstance(e, RelaEdit):
            _rela_apply(buf, e)
        elif isinstance(e, Truncate):
            _check_tail(buf, e)
            buf = buf[: e.size]
        else:  # a lone WordWrite is always gathered into a run by _word_runs
            raise TypeError(f"unexpected edit {e!r}")
    return buf


def invert_edits(buf: bytearray, edits: Sequence[Edit], order: str) -> bytearray:
    """Undo ``edits`` (given in the order they were applied), last first."""
    for e in reversed(_word_runs(edits)):
        if isinstance(e, list):
            _run_cas(buf, e, order, forward=False)
        elif isinstance(e, BytesEdit):
            _cas(buf, e.offset, e.new, e.old, f"offset {e.offset:#x} ({e.why})")
        elif isinstance(e, RelaEdit):
            _rela_invert(buf, e)
        elif not isinstance(e, Truncate):
            raise TypeError(f"unexpected edit {e!r}")
        else:
            if len(buf) != e.size:
                raise WordMismatch(f"file size: expected {e.size} != found {len(buf)} ({e.why})")
            buf = buf + e.tail
    return buf


def _check_tail(buf: bytearray, e: Truncate) -> None:
    if bytes(buf[e.size :]) != e.tail:
        raise WordMismatch(f"offset {e.size:#x}: the bytes to cut are not the expected {e.why}")
