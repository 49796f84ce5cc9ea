"""Edits: every change mcountrw makes to a file, each one exactly reversible and its own log line.

An edit carries what it expects to find as well as what it writes, so that applying it is a
compare-and-swap (like the kernel's ``ftrace_modify_code``: read, validate, then patch) and
undoing it is the same operation with old and new exchanged. Six kinds cover everything:

* :class:`WordWrite`  one instruction slot of a site (the plan's writes, resolved to words);
* :class:`BytesEdit`  a few raw bytes: a zeroed ``__mcount_loc`` entry, ``sh_size``, ``DT_RELACOUNT``;
* :class:`RelaEdit`   entries taken out of a relocation table, either dropped (the table shrinks,
  the freed tail is zero) or moved to sit after the first ``keep`` remaining entries;
* :class:`RelaPut`    entries put back at given indexes, from the zeroed tail or from elsewhere in
  the table (a restore: what a ``RelaEdit`` took out comes back);
* :class:`Truncate`   the module signature trailer cut off the end of the file;
* :class:`Append`     a new signature trailer appended (``prenop --sign-key`` re-signs a module).

Each kind applies and reverts itself (``apply``/``revert``), says how far into the file it reaches
(``reach``) and how it changes the file's size (``growth``: an edit that does works at the end of
the file), and writes and reads its own patch-log line (``to_line``, ``from_json``; :data:`KINDS`
maps a line's ``type`` to its reader). Only word writes have a ``stage``: the writes of one stage
touch distinct slots, so they go together as one vectorised compare-and-swap. The log around
those lines (header, barriers, footer) is ``rewriter.log``'s.

Edits apply to a ``bytearray`` of the whole (decompressed) file. Pure: no file I/O.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from itertools import groupby
from json.encoder import encode_basestring_ascii
from operator import attrgetter
from typing import Any, Final, NamedTuple, TypeAlias, cast

import numpy as np

from rewriter import arrays, ppc
from rewriter.elf import structs as S
from rewriter.elf.structs import ByteOrder
from rewriter.errors import WordMismatch
from rewriter.states import SiteState, Slot


def byteorder(value: object) -> ByteOrder:
    """``value`` as a :data:`ByteOrder`; raises ``ValueError`` for anything else."""
    if value == "little":
        return "little"
    if value == "big":
        return "big"
    raise ValueError(f"byteorder {value!r}")


class LineText:
    """What the log lines of edits need besides the edits, each piece made once: capstone's text
    for each word, the JSON literals of the few distinct strings (functions, sections), and the
    parts of a write line that repeat from line to line.

    The fixed words and the branches come from ``ppc`` (checked against capstone in tests): a
    capstone call per ``bl`` would cost more than the rest of a vmlinux rewrite. Anything else
    (never written by mcountrw, but logged if found) asks capstone, once per word."""

    def __init__(self, order: ByteOrder) -> None:
        self.order = order
        self.fixed: dict[int, str] = dict(ppc.TEXT)  # words whose text does not depend on the address
        self.quoted: dict[str | None, str] = {}
        # "new" or "old" -> a fixed word -> its two fields (a dict each: no key tuple per line)
        self.words: dict[str, dict[int, str]] = {k: {w: _fields(k, w, t) for w, t in self.fixed.items()} for k in _KEYS}
        self.sections: dict[str, str] = {}  # a section -> the fields up to its section offset's digits
        # (target, whether a call) -> a branch's text: a vmlinux's 33,688 `bl _mcount` share one
        self.branches: dict[tuple[int, bool], str] = {}
        self._capstone: ppc.Disassembler | None = None

    def asm(self, word: int, addr: int | None) -> str:
        text = self.fixed.get(word)
        if text is not None:
            return text
        if ppc.is_bl(word) or ppc.is_b(word):
            # A relocatable file's words have no address: its branch is its displacement (an
            # unrelocated call reads "bl .+0", and the line's call_relocation names its target).
            return ppc.relative_text(word) if addr is None else ppc.branch_text(addr, word)
        if self._capstone is None:
            self._capstone = ppc.Disassembler(self.order == "big")
        text = self.fixed[word] = self._capstone.text(word)
        return text

    def quote(self, text: str | None) -> str:
        """``json.dumps(text)``. A string goes straight to the C function json.dumps ends in
        (``ensure_ascii``, its default): a vmlinux log quotes 33,689 function names, nearly all
        distinct, and json.dumps's Python layers were 45 ms of a ``nop``."""
        q = self.quoted.get(text)
        if q is None:
            q = self.quoted[text] = "null" if text is None else encode_basestring_ascii(text)
        return q

    def fields(self, key: str, words: Sequence[int], addrs: Sequence[int | None]) -> list[str]:
        """``"new": "60000000", "new_asm": "nop"`` (``key`` "new" or "old") for each of ``words``
        at ``addrs``, a fixed word's kept; the branches' targets computed together: a vmlinux's
        33,688 ``bl _mcount`` each took a chain of Python calls, a third of its write lines' time."""
        known = self.words[key]
        out = [known.get(w) for w in words]
        todo = [i for i, part in enumerate(out) if part is None]
        texts = self._texts([words[i] for i in todo], [addrs[i] for i in todo])
        for i, asm in zip(todo, texts, strict=True):
            part = out[i] = _fields(key, words[i], asm)
            if words[i] in self.fixed:  # decoded by capstone: the same text at any address
                known[words[i]] = part
        return cast("list[str]", out)

    def _texts(self, words: Sequence[int], addrs: Sequence[int | None]) -> list[str]:
        """:meth:`asm` of each word; a branch's text made once per target and mnemonic (the only
        parts of it that show: every ``bl _mcount`` of a vmlinux reads the same)."""
        array = np.array(words, np.uint32)
        targets = ppc.branch_targets(np.array([a or 0 for a in addrs], np.uint64), array).tolist()
        calls, jumps = ppc.bl_mask(array).tolist(), ppc.b_mask(array).tolist()
        out = []
        for word, addr, target, call, jump in zip(words, addrs, targets, calls, jumps, strict=True):
            if addr is None or not (call or jump):
                out.append(self.asm(word, addr))
                continue
            text = self.branches.get((target, call))
            if text is None:
                text = self.branches[target, call] = ppc.branch_text(addr, word)
            out.append(text)
        return out

    def section(self, name: str) -> str:
        part = self.sections[name] = f'"section": {self.quote(name)}, "section_offset": "'
        return part


_KEYS: Final = ("new", "old")


def _fields(key: str, word: int, asm: str) -> str:
    """A write line's two fields of a word: ``"new": "60000000", "new_asm": "nop"``."""
    return f'"{key}": "{word:08x}", "{key}_asm": "{asm}"'


# -- word writes ----------------------------------------------------------------------------


class WordWrite(NamedTuple):
    """One slot of one site: ``old`` must be there, ``new`` replaces it. ``stage``: the plan's
    stage (barriers separate stages). ``section_offset``: the slot's offset within ``section``."""

    stage: int
    offset: int  # file offset of the 4-byte slot
    addr: int | None  # its virtual address (None in relocatable files)
    section: str
    section_offset: int
    function: str | None
    slot: Slot
    old: int
    new: int
    state_before: SiteState
    state_after: SiteState

    def apply(self, buf: bytearray, order: ByteOrder) -> bytearray:
        _word_cas(buf, self, self.old, self.new, order)
        return buf

    def revert(self, buf: bytearray, order: ByteOrder) -> bytearray:
        _word_cas(buf, self, self.new, self.old, order)
        return buf

    def reach(self) -> int:
        return self.offset + 4

    @property
    def growth(self) -> int:
        """How many bytes the edit adds to the file (negative: takes off its end)."""
        return 0

    def to_line(self, text: LineText) -> str:
        return write_lines((self,), text)[0]

    @classmethod
    def from_json(cls, rec: Mapping[str, Any]) -> WordWrite:
        fast = _write_from_hex(rec)
        if fast is not None:
            return fast
        return cls(
            stage=_count(rec["stage"], "stage"),
            offset=_count(rec["offset"], "offset"),
            addr=None if rec["address"] is None else _count(rec["address"], "address"),
            section=str(rec["section"]),
            section_offset=_count(rec["section_offset"], "section_offset"),
            function=None if rec["function"] is None else str(rec["function"]),
            slot=Slot(rec["slot"]),
            old=_count(int(rec["old"], 16), "old", 1 << 32),
            new=_count(int(rec["new"], 16), "new", 1 << 32),
            state_before=SiteState(rec["state_before"]),
            state_after=SiteState(rec["state_after"]),
        )


def write_lines(writes: Iterable[WordWrite], text: LineText) -> list[str]:
    """The log line of each of ``writes`` (sorted keys; what :func:`write_lines_in` reads).

    The hot loop of a vmlinux log (67,380 writes): a line is its address, function, offsets and
    words in a frame that repeats, so the words' fields come first, all at once
    (:meth:`LineText.fields`: a fixed word's from a table, a branch's text once per target), and
    the tail (slot, stage, states) is made once per run of writes that share it. Four times as
    fast as formatting every field of every line."""
    quoted, sections = text.quoted, text.sections
    writes = writes if isinstance(writes, Sequence) else list(writes)
    addrs = [w.addr for w in writes]
    news = text.fields("new", [w.new for w in writes], addrs)
    olds = text.fields("old", [w.old for w in writes], addrs)
    shape: tuple[int, Slot, SiteState, SiteState] | None = None
    tail = ""
    out = []
    for (n, offset, addr, section, section_offset, function, slot, _, _, before, after), new_part, old_part in zip(
        writes, news, olds, strict=True
    ):
        if shape != (n, slot, after, before):
            shape = (n, slot, after, before)
            tail = (
                f'", "slot": "{slot._value_}", "stage": {n}, "state_after": "{after._value_}", '
                f'"state_before": "{before._value_}", "type": "write"}}'
            )
        qf = quoted.get(function) or text.quote(function)
        where = sections.get(section) or text.section(section)
        a = "null" if addr is None else f'"{hex(addr)}"'
        out.append(
            f'{{"address": {a}, "function": {qf}, {new_part}, "offset": "{hex(offset)}", {old_part}, '
            f"{where}{hex(section_offset)}{tail}"
        )
    return out


_STAGE: Final = attrgetter("stage")
_OFFSET, _OLD, _NEW = attrgetter("offset"), attrgetter("old"), attrgetter("new")
# An enum member's `.value` and its hash run Python code; a vmlinux log has 200,000 of them to
# write and read, so lines are written from `_value_` (the plain attribute `.value` returns)
# and read through these dicts keyed by str (a 30 ms difference on the 6.1 vmlinux, each way).
_SLOTS: Final[Mapping[str, Slot]] = {s.value: s for s in Slot}
_STATES: Final[Mapping[str, SiteState]] = {s.value: s for s in SiteState}


def _writes(run: Sequence[Edit]) -> Sequence[WordWrite]:
    """Edits with a stage: the plan's word writes (every other kind's ``stage`` is None)."""
    return cast("Sequence[WordWrite]", run)


def _where(offset: int, addr: int | None) -> str:
    return f"{addr:#x}" if addr is not None else f"offset {offset:#x}"


def _word_cas(buf: bytearray, w: WordWrite, old: int, new: int, order: ByteOrder) -> None:
    found = int.from_bytes(buf[w.offset : w.offset + 4], order)
    if found != old:
        raise WordMismatch(
            f"{_where(w.offset, w.addr)}: expected {old:08x} ({ppc.describe(old)}) != found {found:08x} "
            f"({ppc.describe(found)})"
        )
    buf[w.offset : w.offset + 4] = new.to_bytes(4, order)


def _stage_cas(buf: bytearray, run: Sequence[WordWrite], order: ByteOrder, forward: bool) -> None:
    """All of ``run`` (writes of one stage, which touch distinct slots and may land in any order)
    as one compare-and-swap: every slot is checked before any is written."""
    offsets = np.fromiter(map(_OFFSET, run), np.int64, len(run))  # map: no Python frame per write
    if len(run) < 64 or len(arrays.distinct(offsets)) != len(run) or int(offsets.max()) + 4 > len(buf):
        _one_by_one(buf, run, order, forward)  # small, or a slot written twice in one stage (hand-made log)
        return
    old = np.fromiter(map(_OLD, run), np.uint32, len(run))
    new = np.fromiter(map(_NEW, run), np.uint32, len(run))
    expected, wanted = (old, new) if forward else (new, old)
    dt = S.word_dtype("<" if order == "little" else ">")
    view = np.frombuffer(buf, np.uint8)
    where = offsets[:, None] + np.arange(4)
    found = view[where].copy().view(dt).ravel()
    bad = np.flatnonzero(found != expected)
    if len(bad):
        _one_by_one(buf, [run[int(bad[0])]], order, forward)  # raises, with the usual message
    view[where] = wanted.astype(dt).view(np.uint8).reshape(-1, 4)
    del view  # a live export would stop the bytearray from ever being resized


# The write line exactly as WordWrite.to_line formats it. Such lines (67,380 for a vmlinux) are read
# with this pattern, twice as fast as json; anything else, hand-edited or not, goes through json.
JSON_STRING: Final = r'"[^"\\\n]*"|"(?:[^"\\\n]|\\.)*"'  # the plain case first: no escapes to step through
"""A JSON string as a log line holds it, for the fast line patterns here and in ``known``."""
STATE_NAME: Final = "(" + "|".join(s.value for s in SiteState) + ")"
"""A state's name, captured (unquoted: the log lines quote it); any other text goes through json,
and fails there."""
_STR = JSON_STRING
_SLOT = "(" + "|".join(s.value for s in Slot) + ")"
_WRITE_LINES: Final = re.compile(
    r'^\{"address": (null|"0x[0-9a-f]+"), "function": (null|' + _STR + r'), "new": "([0-9a-f]{8})", '
    r'"new_asm": "[^"\\\n]*", "offset": "0x([0-9a-f]+)", "old": "([0-9a-f]{8})", "old_asm": "[^"\\\n]*", '
    r'"section": (' + _STR + r'), "section_offset": "0x([0-9a-f]+)", "slot": "' + _SLOT + r'", "stage": ([0-9]{1,9}), '
    r'"state_after": "' + STATE_NAME + '", "state_before": "' + STATE_NAME + r'", "type": "write"\}$',
    re.MULTILINE,
)
WRITE_LINE_START: Final = '{"address": '
"""How every line :meth:`WordWrite.to_line` writes begins (and no other kind's line)."""


def write_lines_in(text: str) -> list[WordWrite]:
    """Every write line of ``text`` that is exactly as :meth:`WordWrite.to_line` writes it, in
    order, read in one pass (one C call instead of 67,380) over the part of the text between the
    first and the last line that starts like one (:data:`WRITE_LINE_START`): the pattern never
    steps through the log's other lines. The caller checks that they line up with the lines that
    start like one."""
    first = text.find("\n" + WRITE_LINE_START)
    if first < 0:
        return []
    last = text.rfind("\n" + WRITE_LINE_START)
    end = text.find("\n", last + 1)
    strings: dict[str, str | None] = {"null": None}
    out = []
    for addr, function, new, offset, old, section, section_offset, slot, stage, after, before in _WRITE_LINES.findall(
        text, first + 1, len(text) if end < 0 else end
    ):
        fn = strings[function] if function in strings else strings.setdefault(function, _unquote(function))
        sec = strings[section] if section in strings else strings.setdefault(section, _unquote(section))
        out.append(WordWrite(
            int(stage), int(offset, 16), None if addr == "null" else int(addr[1:-1], 16), str(sec),
            int(section_offset, 16), fn, _SLOTS[slot], int(old, 16), int(new, 16), _STATES[before], _STATES[after],
        ))  # fmt: skip
    return out


def _unquote(literal: str) -> str:
    """A JSON string literal's value; json only when it holds an escape."""
    return str(json.loads(literal)) if "\\" in literal else literal[1:-1]


def _write_from_hex(rec: Mapping[str, Any]) -> WordWrite | None:
    """The common case, as :meth:`WordWrite.to_line` writes it, converted without a call per field;
    None sends an unusual but maybe valid record (ints instead of hex strings) to the careful path."""
    offset, addr, section_offset = rec["offset"], rec["address"], rec["section_offset"]
    stage, old, new = rec["stage"], rec["old"], rec["new"]
    if not (type(offset) is type(section_offset) is type(old) is type(new) is str and type(stage) is int):
        return None
    if addr is not None and type(addr) is not str:
        return None
    w = WordWrite(
        stage, int(offset, 16), None if addr is None else int(addr, 16), str(rec["section"]), int(section_offset, 16),
        None if rec["function"] is None else str(rec["function"]), Slot(rec["slot"]), int(old, 16), int(new, 16),
        SiteState(rec["state_before"]), SiteState(rec["state_after"]),
    )  # fmt: skip
    limit = 1 << 64
    if not (0 <= w.stage < limit and 0 <= w.offset < limit and 0 <= w.section_offset < limit):
        raise ValueError("stage or offset out of range")
    if not (0 <= w.old < 1 << 32 and 0 <= w.new < 1 << 32) or (w.addr is not None and not 0 <= w.addr < limit):
        raise ValueError("word or address out of range")
    return w


# -- raw bytes ------------------------------------------------------------------------------


class BytesEdit(NamedTuple):
    """A few raw bytes at a file offset; ``why`` names the field (``DT_RELASZ``, ...)."""

    offset: int
    old: bytes
    new: bytes
    why: str

    @property
    def stage(self) -> None:
        """Not one of the plan's word writes."""
        return None

    def apply(self, buf: bytearray, order: ByteOrder) -> bytearray:
        _cas(buf, self.offset, self.old, self.new, f"offset {self.offset:#x} ({self.why})")
        return buf

    def revert(self, buf: bytearray, order: ByteOrder) -> bytearray:
        _cas(buf, self.offset, self.new, self.old, f"offset {self.offset:#x} ({self.why})")
        return buf

    def reach(self) -> int:
        return self.offset + len(self.old)

    @property
    def growth(self) -> int:
        """How many bytes the edit adds to the file (negative: takes off its end)."""
        return 0

    def to_line(self, text: LineText) -> str:
        return bytes_lines((self,), text)[0]

    @classmethod
    def from_json(cls, rec: Mapping[str, Any]) -> BytesEdit:
        old, new = bytes.fromhex(rec["old"]), bytes.fromhex(rec["new"])
        if not old or len(old) != len(new):
            raise ValueError("old and new bytes differ in length")
        return cls(_count(rec["offset"], "offset"), old, new, str(rec["why"]))


def bytes_lines(edits: Iterable[BytesEdit], text: LineText) -> list[str]:
    """The log line of each of ``edits`` (what :func:`bytes_lines_in` reads), in one loop: a
    vmlinux pre-nop zeroes 33,689 record slots, and a method call per line was a third of their time."""
    quoted = text.quoted
    return [
        f'{{"new": "{new.hex()}", "offset": "{offset:#x}", "old": "{old.hex()}", '
        f'"type": "bytes", "why": {quoted.get(why) or text.quote(why)}}}'
        for offset, old, new, why in edits
    ]


# The bytes line exactly as BytesEdit.to_line formats it. A vmlinux pre-nop's log has 33,692 (a
# zeroed record slot each); read with this pattern they cost a third of what json and from_json
# did. Anything else, hand-edited or not, goes through json, which says what is wrong with it.
_WHY: Final = r'"[^"\\\x00-\x1f]*"|"(?:[^"\\\x00-\x1f]|\\.)*"'  # JSON_STRING, less a control character json refuses
_BYTES_LINES: Final = re.compile(
    r'^\{"new": "([0-9a-f]+)", "offset": "0x([0-9a-f]+)", "old": "([0-9a-f]+)", '
    r'"type": "bytes", "why": (' + _WHY + r")\}$",
    re.MULTILINE,
)
BYTES_LINE_START: Final = '{"new": '
"""How every line :meth:`BytesEdit.to_line` writes begins (and no other kind's line)."""


def bytes_lines_in(text: str) -> list[BytesEdit]:
    """Every bytes line of ``text`` that is exactly as :meth:`BytesEdit.to_line` writes it and
    valid as :meth:`BytesEdit.from_json` reads it, in order, read in one pass as
    :func:`write_lines_in` reads write lines; a line left out (old and new of different lengths,
    an odd number of digits, an offset of more than 16 digits) makes the caller read them all by
    json, which accepts or refuses it in its own words."""
    first = text.find("\n" + BYTES_LINE_START)
    if first < 0:
        return []
    last = text.rfind("\n" + BYTES_LINE_START)
    end = text.find("\n", last + 1)
    whys: dict[str, str] = {}
    out = []
    for new, offset, old, why in _BYTES_LINES.findall(text, first + 1, len(text) if end < 0 else end):
        # (Hex digits in pairs are checked here: a repeated group costs the pattern twice the time.)
        if len(old) != len(new) or len(old) % 2 or len(offset) > 16:  # 16 digits: below _count's 2**64
            continue
        try:
            reason = whys[why] if why in whys else whys.setdefault(why, _unquote(why))
        except ValueError:  # an escape json does not know
            continue
        out.append(BytesEdit(int(offset, 16), bytes.fromhex(old), bytes.fromhex(new), reason))
    return out


def _cas(buf: bytearray, offset: int, old: bytes, new: bytes, what: str) -> None:
    found = bytes(buf[offset : offset + len(old)])
    if found != old:
        raise WordMismatch(f"{what}: expected {old.hex()} != found {found.hex()}")
    buf[offset : offset + len(new)] = new


def _one_by_one(buf: bytearray, run: Sequence[Edit], order: ByteOrder, forward: bool) -> bytearray:
    """A run of edits that gain nothing from being applied together (``run`` last first to revert)."""
    for e in run:
        buf = e.apply(buf, order) if forward else e.revert(buf, order)
    return buf


def _others(buf: bytearray, run: Sequence[Edit], order: ByteOrder, forward: bool) -> bytearray:
    """The edits without a stage, in order: each stretch of many same-sized bytes edits (a
    vmlinux's 33,689 zeroed record slots) as one compare-and-swap, the rest one by one."""
    for same, part in groupby(run, _bytes_width):
        edits = list(part)
        if same is None or len(edits) < 64 or not _bytes_cas(buf, cast("list[BytesEdit]", edits), forward):
            buf = _one_by_one(buf, edits, order, forward)
    return buf


def _bytes_width(e: Edit) -> int | None:
    return len(e.old) if type(e) is BytesEdit else None


def _bytes_cas(buf: bytearray, run: Sequence[BytesEdit], forward: bool) -> bool:
    """All of ``run`` (bytes edits of one width) checked, then all written; False (nothing done)
    if two of them touch the same bytes, which only one by one can say what means."""
    width = len(run[0].old)
    offsets = np.fromiter(map(_OFFSET, run), np.int64, len(run))
    ordered = np.sort(offsets)
    if bool((np.diff(ordered) < width).any()) or int(ordered[-1]) + width > len(buf):
        return False
    old = np.frombuffer(b"".join(e.old for e in run), np.uint8).reshape(-1, width)
    new = np.frombuffer(b"".join(e.new for e in run), np.uint8).reshape(-1, width)
    expected, wanted = (old, new) if forward else (new, old)
    view = np.frombuffer(buf, np.uint8)
    where = offsets[:, None] + np.arange(width)
    bad = np.flatnonzero((view[where] != expected).any(axis=1))
    if len(bad):
        _one_by_one(buf, [run[int(bad[0])]], "little", forward)  # raises, with the usual message
    view[where] = wanted
    del view  # a live export would stop the bytearray from ever being resized
    return True


# -- relocation tables ----------------------------------------------------------------------


class RelaEdit(NamedTuple):
    """Entries taken out of a relocation table: dropped (``keep`` None: the table shrinks and its
    freed tail is zero) or moved to follow the first ``keep`` remaining entries."""

    section: str
    offset: int  # file offset of the relocation table
    size: int  # the table's size in bytes before the edit
    entsize: int
    removed: tuple[int, ...]  # original entry indexes, ascending
    entries: tuple[bytes, ...]  # their original bytes
    keep: int | None  # None: dropped; else: placed after the first `keep` remaining entries
    why: str

    @property
    def stage(self) -> None:
        """Not one of the plan's word writes."""
        return None

    def _rows(self, buf: bytearray) -> np.ndarray:
        """The table as it is in ``buf``, one row per entry (a copy: ``buf`` may be resized later)."""
        table = bytes(buf[self.offset : self.offset + self.size])
        return np.frombuffer(table, np.uint8).reshape(-1, self.entsize)

    def _entries(self) -> np.ndarray:
        return np.frombuffer(b"".join(self.entries), np.uint8).reshape(-1, self.entsize)

    def apply(self, buf: bytearray, order: ByteOrder) -> bytearray:
        # Row arrays, not a bytes object per row: .rela.dyn of a vmlinux has 200,000 entries.
        rows, entries = self._rows(buf), self._entries()
        removed = np.array(self.removed, np.int64)
        inside = removed < len(rows)
        wrong = ~inside
        wrong[inside] = (rows[removed[inside]] != entries[inside]).any(axis=1)
        if wrong.any():
            i = int(np.flatnonzero(wrong)[0])
            index = self.removed[i]
            found = rows[index].tobytes().hex() if index < len(rows) else "nothing"
            raise WordMismatch(f"{self.section}[{index}]: expected {self.entries[i].hex()} != found {found}")
        kept = arrays.without(rows, removed)
        if self.keep is None:
            new = kept.tobytes() + bytes(len(self.entries) * self.entsize)
        else:
            new = kept[: self.keep].tobytes() + entries.tobytes() + kept[self.keep :].tobytes()
        buf[self.offset : self.offset + self.size] = new
        return buf

    def revert(self, buf: bytearray, order: ByteOrder) -> bytearray:
        rows = self._rows(buf)
        n = len(self.entries)
        if self.keep is None:
            kept, moved = rows[: len(rows) - n], rows[len(rows) - n :]
            if moved.any():
                raise WordMismatch(f"{self.section}: expected {n} zeroed entries at the end of the table")
        else:
            moved = rows[self.keep : self.keep + n]
            kept = np.concatenate((rows[: self.keep], rows[self.keep + n :]))
            if moved.tobytes() != b"".join(self.entries):
                raise WordMismatch(f"{self.section}: the moved entries are not where the log puts them")
        original = np.empty_like(rows)
        mine = np.zeros(len(rows), bool)
        mine[list(self.removed)] = True
        original[mine] = self._entries()
        original[~mine] = kept
        buf[self.offset : self.offset + self.size] = original.tobytes()
        return buf

    def reach(self) -> int:
        return self.offset + self.size

    @property
    def growth(self) -> int:
        """How many bytes the edit adds to the file (negative: takes off its end)."""
        return 0

    def to_line(self, text: LineText) -> str:
        return json.dumps(
            {
                "type": "rela",
                "section": self.section,
                "offset": f"{self.offset:#x}",
                "size": self.size,
                "entsize": self.entsize,
                "removed": list(self.removed),
                "entries": [x.hex() for x in self.entries],
                "keep": self.keep,
                "why": self.why,
            },
            sort_keys=True,
        )

    @classmethod
    def from_json(cls, rec: Mapping[str, Any]) -> RelaEdit:
        entsize = _count(rec["entsize"], "entsize")
        size = _count(rec["size"], "size")
        if not entsize or size % entsize:
            raise ValueError(f"table size {size} is not a multiple of entry size {entsize}")
        entries = tuple(bytes.fromhex(x) for x in rec["entries"])
        removed = tuple(_count(i, "removed index", size // entsize) for i in rec["removed"])
        if len(entries) != len(removed) or list(removed) != sorted(set(removed)):
            raise ValueError("removed indexes and entries do not pair up")
        if any(len(x) != entsize for x in entries):
            raise ValueError(f"an entry is not {entsize} bytes")
        keep = rec["keep"]
        return cls(
            str(rec["section"]), _count(rec["offset"], "offset"), size, entsize, removed, entries,
            None if keep is None else _count(keep, "keep", size // entsize - len(removed) + 1), str(rec["why"]),
        )  # fmt: skip


class RelaPut(NamedTuple):
    """Entries put (back) into a relocation table at the indexes ``to`` of the table after the edit,
    taken from its zeroed tail (``source`` None: the table grows into the bytes a drop freed) or
    moved from the indexes ``source`` of the table before it (e.g. from past ``DT_RELASZ`` back into
    what ``relocate()`` applies). What a restore does to what a :class:`RelaEdit` took out;
    ``entries[i]`` goes from ``source[i]`` to ``to[i]``, and ``to`` ascends."""

    section: str
    offset: int  # file offset of the relocation table
    size: int  # the bytes edited: the table after the edit (with ``source``, before it too)
    entsize: int
    to: tuple[int, ...]  # the entries' indexes in the table after the edit, ascending
    entries: tuple[bytes, ...]
    source: tuple[int, ...] | None  # None: from the zeroed tail; else their indexes before the edit
    why: str

    @property
    def stage(self) -> None:
        """Not one of the plan's word writes."""
        return None

    def _rows(self, buf: bytearray) -> np.ndarray:
        return np.frombuffer(bytes(buf[self.offset : self.offset + self.size]), np.uint8).reshape(-1, self.entsize)

    def _take(self, rows: np.ndarray, indexes: Sequence[int] | None) -> np.ndarray:
        """``rows`` without the entries: at ``indexes``, or (None) the zeroed rows at the end."""
        n = len(self.entries)
        if indexes is None:
            if rows[len(rows) - n :].any():
                raise WordMismatch(f"{self.section}: expected {n} zeroed entries at the end of the table")
            return rows[: len(rows) - n]
        for i, entry in zip(indexes, self.entries, strict=True):
            if i >= len(rows) or rows[i].tobytes() != entry:
                found = rows[i].tobytes().hex() if i < len(rows) else "nothing"
                raise WordMismatch(f"{self.section}[{i}]: expected {entry.hex()} != found {found}")
        return arrays.without(rows, list(indexes))

    def _put(self, rest: np.ndarray, indexes: Sequence[int] | None) -> bytes:
        """``rest`` with the entries at ``indexes`` (None: zeroed rows after it)."""
        entries = np.frombuffer(b"".join(self.entries), np.uint8).reshape(-1, self.entsize)
        if indexes is None:
            return rest.tobytes() + bytes(entries.size)
        out = np.empty((len(rest) + len(entries), self.entsize), np.uint8)
        mine = np.zeros(len(out), bool)
        mine[list(indexes)] = True
        out[np.flatnonzero(mine)] = entries[np.argsort(indexes, kind="stable")]
        out[~mine] = rest
        return out.tobytes()

    def apply(self, buf: bytearray, order: ByteOrder) -> bytearray:
        rest = self._take(self._rows(buf), self.source)
        buf[self.offset : self.offset + self.size] = self._put(rest, self.to)
        return buf

    def revert(self, buf: bytearray, order: ByteOrder) -> bytearray:
        rest = self._take(self._rows(buf), self.to)
        buf[self.offset : self.offset + self.size] = self._put(rest, self.source)
        return buf

    def reach(self) -> int:
        return self.offset + self.size

    @property
    def growth(self) -> int:
        """How many bytes the edit adds to the file (negative: takes off its end)."""
        return 0

    def to_line(self, text: LineText) -> str:
        return json.dumps(
            {
                "type": "rela-put",
                "section": self.section,
                "offset": f"{self.offset:#x}",
                "size": self.size,
                "entsize": self.entsize,
                "to": list(self.to),
                "entries": [x.hex() for x in self.entries],
                "source": None if self.source is None else list(self.source),
                "why": self.why,
            },
            sort_keys=True,
        )

    @classmethod
    def from_json(cls, rec: Mapping[str, Any]) -> RelaPut:
        entsize = _count(rec["entsize"], "entsize")
        size = _count(rec["size"], "size")
        if not entsize or size % entsize:
            raise ValueError(f"table size {size} is not a multiple of entry size {entsize}")
        rows = size // entsize
        entries = tuple(bytes.fromhex(x) for x in rec["entries"])
        to = tuple(_count(i, "index", rows) for i in rec["to"])
        source = None if rec["source"] is None else tuple(_count(i, "index", rows) for i in rec["source"])
        if len(to) != len(entries) or list(to) != sorted(set(to)) or any(len(x) != entsize for x in entries):
            raise ValueError("indexes and entries do not pair up")
        if source is not None and (len(source) != len(to) or len(set(source)) != len(source)):
            raise ValueError("source and destination indexes do not pair up")
        offset = _count(rec["offset"], "offset")
        return cls(str(rec["section"]), offset, size, entsize, to, entries, source, str(rec["why"]))


# -- the end of the file --------------------------------------------------------------------


class Truncate(NamedTuple):
    """The file cut to ``size`` bytes; ``tail`` is what goes (a module signature trailer)."""

    size: int  # the file's size after the edit
    tail: bytes  # what was cut off
    why: str

    @property
    def stage(self) -> None:
        """Not one of the plan's word writes."""
        return None

    def apply(self, buf: bytearray, order: ByteOrder) -> bytearray:
        if bytes(buf[self.size :]) != self.tail:
            raise WordMismatch(f"offset {self.size:#x}: the bytes to cut are not the expected {self.why}")
        return buf[: self.size]

    def revert(self, buf: bytearray, order: ByteOrder) -> bytearray:
        if len(buf) != self.size:
            raise WordMismatch(f"file size: expected {self.size} != found {len(buf)} ({self.why})")
        return buf + self.tail

    def reach(self) -> int:
        return self.size + len(self.tail)

    @property
    def growth(self) -> int:
        return -len(self.tail)

    def to_line(self, text: LineText) -> str:
        return json.dumps(
            {"type": "truncate", "size": self.size, "tail": self.tail.hex(), "why": self.why}, sort_keys=True
        )

    @classmethod
    def from_json(cls, rec: Mapping[str, Any]) -> Truncate:
        return cls(_count(rec["size"], "size"), bytes.fromhex(rec["tail"]), str(rec["why"]))


class Append(NamedTuple):
    """``tail`` appended to a file of ``size`` bytes: the signature trailer of a re-signed module
    (``prenop --sign-key``). In the log, so that the log's output is the signed file itself and
    ``undo``/``verify`` take it as they take any other output."""

    size: int  # the file's size before the edit
    tail: bytes  # what is appended
    why: str

    @property
    def stage(self) -> None:
        """Not one of the plan's word writes."""
        return None

    def apply(self, buf: bytearray, order: ByteOrder) -> bytearray:
        if len(buf) != self.size:
            raise WordMismatch(f"file size: expected {self.size} != found {len(buf)} (before appending the {self.why})")
        return buf + self.tail

    def revert(self, buf: bytearray, order: ByteOrder) -> bytearray:
        if len(buf) != self.size + len(self.tail) or bytes(buf[self.size :]) != self.tail:
            raise WordMismatch(f"offset {self.size:#x}: the file does not end with the appended {self.why}")
        return buf[: self.size]

    def reach(self) -> int:
        """Where it writes: at the end of the file as the edits before it leave it."""
        return self.size

    @property
    def growth(self) -> int:
        return len(self.tail)

    def to_line(self, text: LineText) -> str:
        return json.dumps(
            {"type": "append", "size": self.size, "tail": self.tail.hex(), "why": self.why}, sort_keys=True
        )

    @classmethod
    def from_json(cls, rec: Mapping[str, Any]) -> Append:
        tail = bytes.fromhex(rec["tail"])
        if not tail:
            raise ValueError("nothing to append")
        return cls(_count(rec["size"], "size"), tail, str(rec["why"]))


Edit: TypeAlias = WordWrite | BytesEdit | RelaEdit | RelaPut | Truncate | Append

KINDS: Final[Mapping[str, Callable[[Mapping[str, Any]], Edit]]] = {
    "write": WordWrite.from_json,
    "bytes": BytesEdit.from_json,
    "rela": RelaEdit.from_json,
    "rela-put": RelaPut.from_json,
    "truncate": Truncate.from_json,
    "append": Append.from_json,
}
"""A log line's ``type`` -> how to read that kind of edit back."""


def _count(value: Any, what: str, limit: int = 1 << 64) -> int:
    """A non-negative integer below ``limit`` (an int, or a hex string as the log writes offsets):
    a log whose footer was recomputed after an edit must still not make undo index backwards
    from the end of a file or loop on a zero stride."""
    n = -1 if isinstance(value, bool) else int(value, 16) if isinstance(value, str) else int(value)
    if not 0 <= n < limit:
        raise ValueError(f"{what} {value!r} out of range")
    return n


# -- sequences of edits ---------------------------------------------------------------------


def apply_edits(buf: bytearray, edits: Sequence[Edit], order: ByteOrder) -> bytearray:
    """Apply ``edits`` in order; raises :class:`WordMismatch` on the first unexpected content.
    The word writes of one stage go together, as one compare-and-swap, and so do runs of many
    bytes edits of one size; the other edits one by one. An edit may return a new buffer (a
    cut), so always use the return value."""
    for stage, run in groupby(edits, _STAGE):
        if stage is None:
            buf = _others(buf, list(run), order, forward=True)
        else:
            _stage_cas(buf, _writes(list(run)), order, forward=True)
    return buf


def invert_edits(buf: bytearray, edits: Sequence[Edit], order: ByteOrder) -> bytearray:
    """Undo ``edits`` (given in the order they were applied), last first."""
    for stage, run in groupby(reversed(edits), _STAGE):
        if stage is None:
            buf = _others(buf, list(run), order, forward=False)
        else:
            _stage_cas(buf, _writes(list(run)), order, forward=False)
    return buf
