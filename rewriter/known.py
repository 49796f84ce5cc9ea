"""Sites known from a patch log: what a rewrite touched, and what bringing each site back needs.

A site that a rewrite nops *and* unrecords is no longer findable in the image: ``rewriter.sites``
finds sites by their calls and their records, and code that starts with ``nop; nop`` is too common
to guess at. So every rewrite writes into its patch log, for each site it touched (its words or
its record): where the site is, its state and whether it is recorded (originally, before this step
and after it), and its *origin*, what the original file had that a restore puts back: the call
target of its ``bl``, its ``R_PPC64_REL24`` (relocatable files), its record table slot and value,
and the record's relocation (``R_PPC64_RELATIVE`` in ``.rela.dyn``, or the ``R_PPC64_ADDR64`` of
``.rela__mcount_loc`` / ``.rela__patchable_function_entries``).

A log names the log it builds on (the header's ``base``) and carries forward the sites still not
back to their original state, so the newest log alone describes every site that the chain of
rewrites changed. Site information is not an edit: undo and verify skip it.

How a log holds it (format version 3; :func:`group_lines`, :func:`read_groups`): a few ``sites``
lines, one per group of sites that share their section, layout and moments, each a set of columns
(one entry per site). What the log's edits already hold is referenced by edit number, not
repeated: the original ``bl`` (the write that replaced it: its address and old word give the
target), a relocation entry a :class:`~rewriter.edits.RelaEdit` took out (``[edit, entry]``), a
record slot's old value (the bytes edit that zeroed it); a fact no edit of this log holds (a line
carried forward, a restore) is written out. Version 2 wrote one JSON ``site`` line per site
(``SiteLine.from_json``, :func:`site_lines_in`: still read); a vmlinux's 33,689 of them were half
of its log and a third of a pre-nop's time.

:func:`with_log` adds the sites that only the log knows to a scan (``Site.source`` is
``Source.LOG``); :func:`lines_after` makes the lines of the next log. Pure: no file I/O.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Final, NamedTuple, cast

import numpy as np

from rewriter import ppc
from rewriter.edits import JSON_STRING, STATE_NAME, BytesEdit, Edit, RelaEdit, WordWrite
from rewriter.elf.symbols import join_place
from rewriter.generations import LAYOUTS, Generation, Variant
from rewriter.sites import Scan, Site, Source, boot_state
from rewriter.states import SiteState, Slot

LINE_TYPE: Final = "site"
"""The type of a version-2 site line (one per site)."""
GROUP_TYPE: Final = "sites"
"""The type of a version-3 sites line (a group of sites, column by column)."""


class RelaEntry(NamedTuple):
    """One relocation entry as the original file had it, and the ``.rela`` section that held it:
    its name, and its file offset (``table``; None in logs from before it was written). A name
    can repeat: gcc 13 and later make one ``__patchable_function_entries``, with its ``.rela``
    table, per function."""

    section: str
    entry: bytes
    table: int | None = None

    @classmethod
    def from_json(cls, d: Mapping[str, Any] | None) -> RelaEntry | None:
        if d is None:
            return None
        return cls.of(d["section"], d["entry"], d.get("table"))

    @classmethod
    def of(cls, section: Any, entry: Any, table: Any = None) -> RelaEntry:
        """From a section name, the entry's hex and the table's offset (as a log writes them);
        ``ValueError`` if malformed."""
        raw = bytes.fromhex(entry)
        if len(raw) not in (16, 24):  # Elf64_Rel, Elf64_Rela
            raise ValueError(f"a relocation entry of {len(raw)} bytes")
        if table is not None and (type(table) is not int or table < 0):
            raise ValueError(f"{table!r} is no table offset")
        return cls(_text(section), raw, table)


class RecordSlot(NamedTuple):
    """Linked images: the record table slot that named the site (``offset`` in the file, ``addr``
    its address, which its ``R_PPC64_RELATIVE`` names) and the 8 bytes it held."""

    table: str
    offset: int
    addr: int
    value: bytes

    @classmethod
    def from_json(cls, d: Mapping[str, Any] | None) -> RecordSlot | None:
        if d is None:
            return None
        value = bytes.fromhex(d["value"])
        if len(value) != 8:
            raise ValueError(f"a record slot of {len(value)} bytes")
        return cls(str(d["table"]), _hex(d["offset"]), _hex(d["address"]), value)


class Origin(NamedTuple):
    """What bringing a site back needs, as the original file had it (None: nothing to put back,
    or not known)."""

    call_target: int | None = None  # linked mprofile: where its `bl` went (an mcount entry or stub)
    call_relocation: RelaEntry | None = None  # relocatable: the call slot's R_PPC64_REL24
    record_slot: RecordSlot | None = None  # linked: the table slot
    record_relocation: RelaEntry | None = None  # linked: RELATIVE; relocatable: the record's ADDR64

    def filled(self, other: Origin) -> Origin:
        """These facts, with any that are unknown here taken from ``other``."""
        return Origin(
            self.call_target if self.call_target is not None else other.call_target,
            self.call_relocation or other.call_relocation,
            self.record_slot or other.record_slot,
            self.record_relocation or other.record_relocation,
        )

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> Origin:
        target = d["call_target"]
        return cls(
            None if target is None else _hex(target),
            RelaEntry.from_json(d["call_relocation"]),
            RecordSlot.from_json(d["record_slot"]),
            RelaEntry.from_json(d["record_relocation"]),
        )

    @property
    def record(self) -> bool:
        """Whether the original record can be put back."""
        return self.record_slot is not None or self.record_relocation is not None


class Moment(NamedTuple):
    """A site's state and whether it is recorded, at one moment of a chain of rewrites."""

    state: SiteState
    recorded: bool


class SiteLine(NamedTuple):
    """One site as a patch log describes it. ``section_offset`` is the call slot's offset in its
    section, ``file_offset`` in the file, ``addr`` its address (None in relocatable files), as
    ``Site`` has them; ``original``: the site in the first file of the chain; ``before`` and
    ``after``: around the rewrite that last touched it (a line carried forward unchanged keeps
    them). A NamedTuple: a vmlinux log has 33,689 of them, and a frozen dataclass costs four times
    as much to make."""

    section: str
    section_index: int
    section_offset: int
    addr: int | None
    file_offset: int
    function: str | None
    variant: Variant
    original: Moment
    before: Moment
    after: Moment
    origin: Origin

    @property
    def place(self) -> int:
        """The call slot as a place (``rewriter.elf.symbols``), as ``Site.place``."""
        if self.addr is not None:
            return self.addr
        return join_place(self.section_index, self.section_offset)

    @property
    def changed(self) -> bool:
        """Not back to its original state (the next log carries the line forward)."""
        return self.after != self.original

    def site(self) -> Site:
        """The site as a scan would show it if it could find it: ``Source.LOG``, and for an
        unrecorded site untouched by the kernel's init."""
        lay = LAYOUTS[self.variant]
        state, recorded = self.after
        record = self.place + lay.record_offset if recorded else None
        return Site(
            self.section, self.section_index, self.section_offset, self.addr, self.function, self.variant, state,
            recorded, self.origin.call_target, self.file_offset, self.place, record,
            boot_state(self.variant, state, recorded), False, None, Source.LOG,
        )  # fmt: skip

    @classmethod
    def from_json(cls, rec: Mapping[str, Any]) -> SiteLine:
        """From a version-2 ``site`` line."""
        at, state, recorded = rec["at"], rec["state"], rec["recorded"]
        original, before, after = (
            Moment(SiteState(state[k]), _bool(recorded[k])) for k in ("original", "before", "after")
        )
        variant = Variant(rec["variant"])
        if LAYOUTS[variant].generation.value != rec["generation"]:
            raise ValueError(f"variant {variant.value} is not of generation {rec['generation']!r}")
        addr = at["address"]
        return cls(
            str(at["section"]), _count(at["section_index"]), _hex(at["section_offset"]),
            None if addr is None else _hex(addr), _hex(at["offset"]),
            None if rec["function"] is None else str(rec["function"]), variant, original, before, after,
            Origin.from_json(rec["restore"]),
        )  # fmt: skip


# A version-2 site line exactly as mcountrw wrote it (keys sorted, ", " and ": " between items). A
# vmlinux log's 33,689 site lines are read with this pattern, four times as fast as json and
# from_json; any other line goes through json.
_STR = JSON_STRING
_HEX = r'"0x([0-9a-f]+)"'
_RELA = r'null|\{"entry": "([0-9a-f]+)", "section": (' + _STR + r")\}"
_BOOL = "(true|false)"
_STATE = '"' + STATE_NAME + '"'
_SITE_LINES: Final = re.compile(
    r'^\{"at": \{"address": (null|"0x[0-9a-f]+"), "offset": ' + _HEX + r', "section": (' + _STR + r"), "
    r'"section_index": ([0-9]{1,9}), "section_offset": ' + _HEX + r'\}, "function": (null|' + _STR + r"), "
    r'"generation": "[a-z]+", "recorded": \{"after": '
    + _BOOL
    + ', "before": '
    + _BOOL
    + ', "original": '
    + _BOOL
    + r'\}, "restore": \{"call_relocation": ('
    + _RELA
    + r'), "call_target": (null|"0x[0-9a-f]+"), '
    r'"record_relocation": ('
    + _RELA
    + r'), "record_slot": (null|\{"address": '
    + _HEX
    + ', "offset": '
    + _HEX
    + r', "table": ('
    + _STR
    + r'), "value": "([0-9a-f]{16})"\})\}, "state": \{"after": '
    + _STATE
    + ', "before": '
    + _STATE
    + ', "original": '
    + _STATE
    + r'\}, "type": "site", "variant": "([a-z-]+)"\}$',
    re.MULTILINE,
)
_VARIANTS: Final = {v.value: v for v in Variant}
_MOMENTS: Final = {(s.value, r): Moment(s, r == "true") for s in SiteState for r in ("true", "false")}


def site_lines_in(text: str) -> list[SiteLine]:
    """Every version-2 site line of ``text`` that is exactly as mcountrw wrote it, in order, read
    in one pass. The caller checks that they line up with the lines that start like
    one; a line this pattern does not match is read by json (and refused there if malformed)."""
    strings: dict[str, str | None] = {"null": None}
    out = []
    for m in _SITE_LINES.finditer(text):
        (addr, offset, section, index, section_offset, function, rec_after, rec_before, rec_original,
         _call, call_entry, call_section, target, _record, rel_entry, rel_section, slot, slot_addr,
         slot_offset, table, value, after, before, original, variant) = m.groups()  # fmt: skip
        s = [strings[t] if t in strings else strings.setdefault(t, _unquote(t)) for t in (section, function)]
        call = None if call_entry is None else _rela(call_entry, call_section, strings)
        relocation = None if rel_entry is None else _rela(rel_entry, rel_section, strings)
        record_slot = None
        if slot != "null":
            table_name = strings[table] if table in strings else strings.setdefault(table, _unquote(table))
            record_slot = RecordSlot(str(table_name), int(slot_offset, 16), int(slot_addr, 16), bytes.fromhex(value))
        out.append(SiteLine(
            str(s[0]), int(index), int(section_offset, 16), None if addr == "null" else int(addr[3:-1], 16),
            int(offset, 16), s[1], _VARIANTS[variant],
            _MOMENTS[original, rec_original], _MOMENTS[before, rec_before], _MOMENTS[after, rec_after],
            Origin(None if target == "null" else int(target[3:-1], 16), call, record_slot, relocation),
        ))  # fmt: skip
    return out


def _rela(entry: str, section: str, strings: dict[str, str | None]) -> RelaEntry:
    name = strings[section] if section in strings else strings.setdefault(section, _unquote(section))
    if len(entry) not in (32, 48):
        raise ValueError(f"a relocation entry of {len(entry) // 2} bytes")
    return RelaEntry(str(name), bytes.fromhex(entry))


def _unquote(literal: str) -> str | None:
    """A JSON string literal's value (or null); json only when it holds an escape."""
    if literal == "null":
        return None
    return str(json.loads(literal)) if "\\" in literal else literal[1:-1]


def _hex(value: Any) -> int:
    if not isinstance(value, str) or not value.startswith("0x"):
        raise ValueError(f"{value!r} is not a hex number")
    return _count(int(value, 16))


def _text(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(f"{value!r} is not a string")
    return value


def _count(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 1 << 64:
        raise ValueError(f"{value!r} is out of range")
    return value


def _bool(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{value!r} is not true or false")
    return value


# -- version 3: sites lines, a group of sites each, column by column ------------------------

GROUP_LINE_START: Final = '{"columns": '
"""How every sites line begins (keys sorted: ``columns`` first), and no other line of a log."""
_COLUMNS: Final = ("call_relocation", "call_target", "record_relocation", "record_slot")
"""The origin's columns, left out of a group whose sites have none of that fact."""


class _Refs:
    """Where the edits of a log hold the facts a site's origin repeats: the first write that
    replaced a branch at each call slot, the first 8-byte bytes edit at each offset (a record
    slot zeroed) and each entry a RelaEdit took out. A fact is referenced only if the edit holds
    exactly it; anything else is written out."""

    def __init__(self, edits: Sequence[Edit]) -> None:
        self.edits = edits
        self.calls: dict[int, tuple[int, int | None]] = {}  # a call slot -> (edit, its branch's target)
        self.slots: dict[int, int] = {}
        self.relas: dict[tuple[str, bytes], list[int]] = {}
        slots = self.slots
        call_slot = Slot.B
        calls: list[tuple[int, WordWrite]] = []
        for n, e in enumerate(edits):
            if type(e) is WordWrite:
                if e.slot is call_slot:
                    calls.append((n, e))
            elif type(e) is BytesEdit:
                if len(e.old) == 8 and e.offset not in slots:
                    slots[e.offset] = n
            elif type(e) is RelaEdit:
                for k, entry in enumerate(e.entries):
                    self.relas.setdefault((e.section, entry), [n, k])
        self._first_calls(calls)

    def _first_calls(self, writes: Sequence[tuple[int, WordWrite]]) -> None:
        """The first write that replaced a branch at each call slot, with the branch's target
        (None without an address), the targets computed together: a vmlinux has 33,688."""
        olds = np.array([w.old for _, w in writes], np.uint32)
        addrs = np.array([w.addr or 0 for _, w in writes], np.uint64)
        branch = (ppc.bl_mask(olds) | ppc.b_mask(olds)).tolist()
        targets = ppc.branch_targets(addrs, olds).tolist()
        # The first write last, so that its entry is the one that stays.
        found = zip(reversed(writes), reversed(branch), reversed(targets), strict=True)
        self.calls = {w.offset: (n, None if w.addr is None else t) for (n, w), is_branch, t in found if is_branch}

    # Each of these makes a column of a sites line, a loop each: a method call per site was a
    # fifth of the sites lines of a vmlinux.

    def calls_of(self, lines: Iterable[SiteLine]) -> list[int | str | None]:
        """The call targets of ``lines``: the write that replaced the branch to it, else its hex."""
        calls = self.calls
        out: list[int | str | None] = []
        for line in lines:
            target = line.origin.call_target
            if target is None:
                out.append(None)
                continue
            n, replaced = calls.get(line.file_offset, _NO_CALL)
            out.append(n if replaced == target else hex(target))
        return out

    def slots_of(self, slots: Iterable[RecordSlot | None]) -> list[int | list[str] | None]:
        """Record slots: the bytes edit that zeroed one, else [offset hex, old value hex]."""
        edits, found = self.edits, self.slots
        out: list[int | list[str] | None] = []
        for slot in slots:
            n = None if slot is None else found.get(slot.offset)
            if n is not None and cast(BytesEdit, edits[n]).old == cast(RecordSlot, slot).value:
                out.append(n)
            else:
                out.append(None if slot is None else [hex(slot.offset), slot.value.hex()])
        return out

    def relas_of(self, relas: Iterable[RelaEntry | None]) -> list[list[int] | list[str] | None]:
        """Relocation entries: an edit's entry as [edit, index], else [section, entry hex(, table
        offset hex)]."""
        found = self.relas
        out: list[list[int] | list[str] | None] = []
        for rela in relas:
            ref = None if rela is None else found.get((rela.section, rela.entry))
            if ref is not None or rela is None:
                out.append(ref)
            else:
                out.append([rela.section, rela.entry.hex()] + ([] if rela.table is None else [hex(rela.table)]))
        return out


_NO_CALL: Final = (-1, None)
"""No write replaced a branch at the slot (a target is never None)."""


def _group_key(line: SiteLine) -> tuple[Any, ...]:
    """What the sites of one sites line share: section, the bases their offsets are added to,
    layout, moments, and the record table their slots are in."""
    slot = line.origin.record_slot
    offset = line.section_offset
    return (
        line.section, line.section_index, None if line.addr is None else line.addr - offset,
        line.file_offset - offset, line.variant, line.original, line.before, line.after,
        None if slot is None else slot.table, None if slot is None else slot.addr - slot.offset,
    )  # fmt: skip


def group_lines(lines: Sequence[SiteLine], edits: Sequence[Edit]) -> list[str]:
    """The sites lines of a log whose edits are ``edits``: one per group of ``lines`` (see the
    module docstring), in the order each group first appears."""
    refs = _Refs(edits)
    groups: dict[tuple[Any, ...], list[SiteLine]] = {}
    group: list[SiteLine] = []
    last: SiteLine | None = None
    for line in lines:
        # Neighbours (place order) mostly share a group: the key is hashed only where they do not.
        if last is None or not _same_group(line, last):
            group = groups.setdefault(_group_key(line), [])
        group.append(line)
        last = line
    return [json.dumps(_group_json(key, group, refs), sort_keys=True) for key, group in groups.items()]


def _same_group(a: SiteLine, b: SiteLine) -> bool:
    sa, sb = a.origin.record_slot, b.origin.record_slot
    return (
        a.section_index == b.section_index and a.section == b.section and a.variant is b.variant
        and a.after == b.after and a.before == b.before and a.original == b.original
        and (a.addr is None) == (b.addr is None)
        and (a.addr is None or b.addr is None or a.addr - a.section_offset == b.addr - b.section_offset)
        and a.file_offset - a.section_offset == b.file_offset - b.section_offset
        and (sa is None) == (sb is None)
        and (sa is None or sb is None or (sa.table == sb.table and sa.addr - sa.offset == sb.addr - sb.offset))
    )  # fmt: skip


def _group_json(key: tuple[Any, ...], group: Sequence[SiteLine], refs: _Refs) -> dict[str, Any]:
    section, index, addr_base, offset_base, variant, original, before, after, table, table_delta = key
    origins = [line.origin for line in group]
    columns: dict[str, list[Any]] = {
        "section_offset": [hex(line.section_offset) for line in group],
        "function": [line.function for line in group],
        "call_target": refs.calls_of(group),
        "call_relocation": refs.relas_of([o.call_relocation for o in origins]),
        "record_slot": refs.slots_of([o.record_slot for o in origins]),
        "record_relocation": refs.relas_of([o.record_relocation for o in origins]),
    }
    for name in _COLUMNS:
        if not any(v is not None for v in columns[name]):
            del columns[name]
    moments = (("after", after), ("before", before), ("original", original))
    return {
        "type": GROUP_TYPE,
        "section": {
            "name": section,
            "index": index,
            "address": None if addr_base is None else hex(addr_base),
            "offset": hex(offset_base),
        },
        "variant": variant.value,
        "generation": LAYOUTS[variant].generation.value,
        "state": {k: m.state.value for k, m in moments},
        "recorded": {k: m.recorded for k, m in moments},
        "record_table": None if table is None else {"name": table, "address_minus_offset": hex(table_delta)},
        "sites": len(group),
        "columns": columns,
    }


def read_groups(records: Sequence[Mapping[str, Any]], edits: Sequence[Edit]) -> list[SiteLine]:
    """The sites of a log's sites lines (parsed JSON), the references resolved against the log's
    ``edits``, in place order; ``ValueError`` (or ``KeyError``, ``TypeError``, ``IndexError``) if
    one is malformed."""
    out: list[SiteLine] = []
    for rec in records:
        out += _read_group(rec, edits)
    out.sort(key=_line_place)
    return out


def _line_place(line: SiteLine) -> int:
    return line.place


class _Head(NamedTuple):
    """What the sites of a group share, read from its sites line."""

    section: str
    section_index: int
    addr_base: int | None
    offset_base: int
    variant: Variant
    moments: tuple[Moment, Moment, Moment]  # original, before, after
    table: str | None
    table_delta: int


def _head(rec: Mapping[str, Any]) -> _Head:
    if rec["type"] != GROUP_TYPE:
        raise ValueError(f"a {rec['type']!r} line among the sites lines")
    at, state, recorded, table = rec["section"], rec["state"], rec["recorded"], rec["record_table"]
    variant = Variant(rec["variant"])
    if LAYOUTS[variant].generation.value != rec["generation"]:
        raise ValueError(f"variant {variant.value} is not of generation {rec['generation']!r}")
    original, before, after = (Moment(SiteState(state[k]), _bool(recorded[k])) for k in ("original", "before", "after"))
    return _Head(
        _text(at["name"]), _count(at["index"]), None if at["address"] is None else _hex(at["address"]),
        _hex(at["offset"]), variant, (original, before, after), None if table is None else _text(table["name"]),
        0 if table is None else int(_text(table["address_minus_offset"]), 16),
    )  # fmt: skip


def _read_group(rec: Mapping[str, Any], edits: Sequence[Edit]) -> list[SiteLine]:
    head = _head(rec)
    n = _count(rec["sites"])
    columns = rec["columns"]
    offsets = [_hex(x) for x in columns["section_offset"]]
    functions = [None if f is None else _text(f) for f in columns["function"]]
    origins = [columns.get(name) or [None] * n for name in _COLUMNS]
    if any(len(c) != n for c in (offsets, functions, *origins)):
        raise ValueError(f"a sites line of {n} sites has columns of other lengths")
    original, before, after = head.moments
    a, o = head.addr_base, head.offset_base
    out = []
    for offset, function, call_rela, call, record_rela, slot in zip(offsets, functions, *origins, strict=True):
        file_offset = o + offset
        origin = Origin(
            _call_target(call, file_offset, edits), _rela_of(call_rela, edits), _slot_of(slot, head, edits),
            _rela_of(record_rela, edits),
        )  # fmt: skip
        addr = None if a is None else a + offset
        out.append(SiteLine(
            head.section, head.section_index, offset, addr, file_offset, function, head.variant, original, before,
            after, origin,
        ))  # fmt: skip
    return out


def _edit(edits: Sequence[Edit], n: Any, kind: type[Any]) -> Any:
    if type(n) is not int or not 0 <= n < len(edits) or type(edits[n]) is not kind:
        raise ValueError(f"{n!r} names no {kind.__name__} of this log")
    return edits[n]


def _call_target(value: Any, file_offset: int, edits: Sequence[Edit]) -> int | None:
    if value is None:
        return None
    if type(value) is str:
        return _hex(value)
    w: WordWrite = _edit(edits, value, WordWrite)
    if w.offset != file_offset or w.addr is None or not (ppc.is_bl(w.old) or ppc.is_b(w.old)):
        raise ValueError(f"edit {value} replaces no branch at the site's call slot")
    return ppc.branch_target(w.addr, w.old)


def _slot_of(value: Any, head: _Head, edits: Sequence[Edit]) -> RecordSlot | None:
    if value is None:
        return None
    if head.table is None:
        raise ValueError("a record slot in a sites line without a record table")
    if type(value) is int:
        e: BytesEdit = _edit(edits, value, BytesEdit)
        offset, old = e.offset, e.old
    else:
        offset, old = _hex(value[0]), bytes.fromhex(value[1])
    if len(old) != 8:
        raise ValueError(f"a record slot of {len(old)} bytes")
    return RecordSlot(head.table, offset, offset + head.table_delta, old)


def _rela_of(value: Any, edits: Sequence[Edit]) -> RelaEntry | None:
    if value is None:
        return None
    if len(value) != 2 and not (len(value) == 3 and type(value[0]) is str):
        raise ValueError(f"{value!r} is no relocation entry")
    if type(value[0]) is str:
        return RelaEntry.of(value[0], value[1], _hex(value[2]) if len(value) == 3 else None)
    r: RelaEdit = _edit(edits, value[0], RelaEdit)
    k = value[1]
    if type(k) is not int or not 0 <= k < len(r.entries):
        raise ValueError(f"edit {value[0]} took out no entry {k!r}")
    return RelaEntry(r.section, r.entries[k], r.offset)


# -- a scan with the log's sites ------------------------------------------------------------


def with_log(result: Scan, lines: Iterable[SiteLine], log: Path) -> Scan:
    """``result`` plus the sites only the log knows (those the image scan did not find), in
    place order, and the log named as where they come from."""
    found = {s.place for s in result.sites}
    extra = [line.site() for line in lines if line.place not in found]
    sites = tuple(sorted((*result.sites, *extra), key=_by_place)) if extra else result.sites
    return dataclasses.replace(result, sites=sites, log=log, generation=_generation_with(result, extra))


def _generation_with(result: Scan, extra: Sequence[Site]) -> Generation | None:
    """The image's generation, or where its contents could not tell (every record dropped, so a
    patchable or ool file shows only compiler nops) the one its log's sites have."""
    if result.generation is not None:
        return result.generation
    generations = {LAYOUTS[s.variant].generation for s in extra}
    return generations.pop() if len(generations) == 1 else None


def _by_place(site: Site) -> int:
    return site.place


def by_place(lines: Iterable[SiteLine]) -> dict[int, SiteLine]:
    return {line.place: line for line in lines}


# -- the next log's lines -------------------------------------------------------------------


class Touched(NamedTuple):
    """A site a rewrite touched: as it was (``site``), as it is after (``after``), and what this
    rewrite learned of its origin from the file (its call target, a relocation or record it took
    out)."""

    site: Site
    after: Moment
    origin: Origin


def lines_after(touched: Sequence[Touched], base: Mapping[int, SiteLine]) -> tuple[SiteLine, ...]:
    """The site lines of a rewrite's log: one per touched site (its origin and original state
    taken from the base log's line where there is one), and the base log's lines of the sites it
    did not touch that are not back to their original state; in place order."""
    out: dict[int, SiteLine] = {}
    for s, after, own in touched:
        before = Moment(s.state, s.recorded)
        earlier = base.get(s.place) if base else None
        origin, original = (own, before) if earlier is None else (earlier.origin.filled(own), earlier.original)
        out[s.place] = SiteLine(
            s.section, s.section_index, s.offset, s.addr, s.file_offset, s.function, s.variant,
            original, before, after, origin,
        )  # fmt: skip
    for place, line in base.items():
        if place not in out and line.after != line.original:
            out[place] = line
    return tuple(out[p] for p in sorted(out))
