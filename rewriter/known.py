"""Sites known from a patch log: what a rewrite touched, and what bringing each site back needs.

A site that a rewrite nops *and* unrecords is no longer findable in the image: ``rewriter.sites``
finds sites by their calls and their records, and code that starts with ``nop; nop`` is too common
to guess at. So every rewrite writes one ``site`` line per site it touched (its words or its
record) into its patch log: where the site is, its state and whether it is recorded (originally,
before this step and after it), and its *origin*, what the original file had that a restore puts
back: the call target of its ``bl``, its ``R_PPC64_REL24`` (relocatable files), its record table
slot and value, and the record's relocation (``R_PPC64_RELATIVE`` in ``.rela.dyn``, or the
``R_PPC64_ADDR64`` of ``.rela__mcount_loc`` / ``.rela__patchable_function_entries``).

A log names the log it builds on (the header's ``base``) and carries forward the lines of the
sites still not back to their original state, so the newest log alone describes every site that
the chain of rewrites changed. Site lines are information, not edits: undo and verify ignore them.

:func:`with_log` adds the sites that only the log knows to a scan (``Site.source`` is
``Source.LOG``); :func:`lines_after` makes the lines of the next log. Pure: no file I/O.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Final, NamedTuple

from rewriter.elf.symbols import PLACE_SHIFT
from rewriter.generations import LAYOUTS, Variant
from rewriter.sites import Scan, Site, Source, boot_state
from rewriter.states import SiteState

LINE_TYPE = "site"


class RelaEntry(NamedTuple):
    """One relocation entry as the original file had it, and the ``.rela`` section that held it."""

    section: str
    entry: bytes

    def to_json(self) -> dict[str, str]:
        return {"entry": self.entry.hex(), "section": self.section}

    @classmethod
    def from_json(cls, d: Mapping[str, Any] | None) -> RelaEntry | None:
        if d is None:
            return None
        entry = bytes.fromhex(d["entry"])
        if len(entry) not in (16, 24):  # Elf64_Rel, Elf64_Rela
            raise ValueError(f"a relocation entry of {len(entry)} bytes")
        return cls(str(d["section"]), entry)


class RecordSlot(NamedTuple):
    """Linked images: the record table slot that named the site (``offset`` in the file, ``addr``
    its address, which its ``R_PPC64_RELATIVE`` names) and the 8 bytes it held."""

    table: str
    offset: int
    addr: int
    value: bytes

    def to_json(self) -> dict[str, str]:
        return {
            "address": f"{self.addr:#x}",
            "offset": f"{self.offset:#x}",
            "table": self.table,
            "value": self.value.hex(),
        }

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

    def to_json(self) -> dict[str, Any]:
        return {
            "call_relocation": None if self.call_relocation is None else self.call_relocation.to_json(),
            "call_target": None if self.call_target is None else f"{self.call_target:#x}",
            "record_relocation": None if self.record_relocation is None else self.record_relocation.to_json(),
            "record_slot": None if self.record_slot is None else self.record_slot.to_json(),
        }

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
    """One ``site`` line of a patch log. ``section_offset`` is the call slot's offset in its
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
        return self.section_index << PLACE_SHIFT | self.section_offset

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

    def to_json(self) -> dict[str, Any]:
        return {
            "type": LINE_TYPE,
            "at": {
                "address": None if self.addr is None else f"{self.addr:#x}",
                "offset": f"{self.file_offset:#x}",
                "section": self.section,
                "section_index": self.section_index,
                "section_offset": f"{self.section_offset:#x}",
            },
            "function": self.function,
            "generation": LAYOUTS[self.variant].generation.value,
            "variant": self.variant.value,
            "state": {k: m.state.value for k, m in self._moments()},
            "recorded": {k: m.recorded for k, m in self._moments()},
            "restore": self.origin.to_json(),
        }

    def _moments(self) -> tuple[tuple[str, Moment], ...]:
        return (("after", self.after), ("before", self.before), ("original", self.original))

    def to_line(self, quoted: dict[str | None, str] | None = None) -> str:
        """``json.dumps(self.to_json(), sort_keys=True)``, formatted directly: a vmlinux log has
        33,689 of these lines, and json's encoder would double the time a pre-nop takes (tested
        equal). ``quoted``: the JSON literals of names made so far, shared between lines."""
        q = {} if quoted is None else quoted
        a = "null" if self.addr is None else f'"{self.addr:#x}"'
        o = self.origin
        target = "null" if o.call_target is None else f'"{o.call_target:#x}"'
        slot = o.record_slot
        slot_text = (
            "null"
            if slot is None
            else f'{{"address": "{slot.addr:#x}", "offset": "{slot.offset:#x}", "table": {_quote(q, slot.table)}, '
            f'"value": "{slot.value.hex()}"}}'
        )
        moments = self.after, self.before, self.original
        after, before, original = (m.state._value_ for m in moments)
        rec_after, rec_before, rec_original = ("true" if m.recorded else "false" for m in moments)
        return (
            f'{{"at": {{"address": {a}, "offset": "{self.file_offset:#x}", "section": {_quote(q, self.section)}, '
            f'"section_index": {self.section_index}, "section_offset": "{self.section_offset:#x}"}}, '
            f'"function": {_quote(q, self.function)}, "generation": "{LAYOUTS[self.variant].generation._value_}", '
            f'"recorded": {{"after": {rec_after}, "before": {rec_before}, "original": {rec_original}}}, '
            f'"restore": {{"call_relocation": {_rela_text(q, o.call_relocation)}, "call_target": {target}, '
            f'"record_relocation": {_rela_text(q, o.record_relocation)}, "record_slot": {slot_text}}}, '
            f'"state": {{"after": "{after}", "before": "{before}", "original": "{original}"}}, '
            f'"type": "{LINE_TYPE}", "variant": "{self.variant._value_}"}}'
        )

    @classmethod
    def from_json(cls, rec: Mapping[str, Any]) -> SiteLine:
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


# A site line exactly as SiteLine.to_line formats it. A vmlinux log's 33,689 site lines are read
# with this pattern, four times as fast as json and from_json; any other line goes through json.
_STR = r'"[^"\\\n]*"|"(?:[^"\\\n]|\\.)*"'  # the plain case first: no escapes to step through
_HEX = r'"0x([0-9a-f]+)"'
_RELA = r'null|\{"entry": "([0-9a-f]+)", "section": (' + _STR + r")\}"
_BOOL = "(true|false)"
_STATE = '"(' + "|".join(s.value for s in SiteState) + ')"'
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
    """Every site line of ``text`` that is exactly as :meth:`SiteLine.to_line` writes it, in
    order, read in one pass. The caller checks that they line up with the lines that start like
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


def _quote(quoted: dict[str | None, str], text: str | None) -> str:
    q = quoted.get(text)
    if q is None:
        q = quoted[text] = json.dumps(text)
    return q


def _rela_text(quoted: dict[str | None, str], rela: RelaEntry | None) -> str:
    if rela is None:
        return "null"
    return f'{{"entry": "{rela.entry.hex()}", "section": {_quote(quoted, rela.section)}}}'


def _hex(value: Any) -> int:
    if not isinstance(value, str) or not value.startswith("0x"):
        raise ValueError(f"{value!r} is not a hex number")
    return _count(int(value, 16))


def _count(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 1 << 64:
        raise ValueError(f"{value!r} is out of range")
    return value


def _bool(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{value!r} is not true or false")
    return value


# -- a scan with the log's sites ------------------------------------------------------------


def with_log(result: Scan, lines: Iterable[SiteLine], log: Path) -> Scan:
    """``result`` plus the sites only the log knows (those the image scan did not find), in
    place order, and the log named as where they come from."""
    found = {s.place for s in result.sites}
    extra = [line.site() for line in lines if line.place not in found]
    sites = tuple(sorted((*result.sites, *extra), key=_by_place)) if extra else result.sites
    return dataclasses.replace(result, sites=sites, log=log)


def _by_place(site: Site) -> int:
    return site.place


def by_place(lines: Iterable[SiteLine]) -> dict[int, SiteLine]:
    return {line.place: line for line in lines}


# -- the next log's lines -------------------------------------------------------------------


class Touched(NamedTuple):
    """A site a rewrite touched: as it was (``site``), as it is after (``after``), and what this
    rewrite learned of its origin from the file (a relocation or record it took out)."""

    site: Site
    after: Moment
    origin: Origin


def lines_after(touched: Sequence[Touched], base: Mapping[int, SiteLine]) -> tuple[SiteLine, ...]:
    """The site lines of a rewrite's log: one per touched site (its origin and original state
    taken from the base log's line where there is one), and the base log's lines of the sites it
    did not touch that are not back to their original state; in place order."""
    out = {}
    for t in touched:
        s = t.site
        before = Moment(s.state, s.recorded)
        earlier = base.get(s.place)
        own = t.origin if s.call_target is None else t.origin._replace(call_target=s.call_target)
        origin = own if earlier is None else earlier.origin.filled(own)
        original = before if earlier is None else earlier.original
        out[s.place] = SiteLine(
            s.section, s.section_index, s.offset, s.addr, s.file_offset, s.function, s.variant,
            original, before, t.after, origin,
        )  # fmt: skip
    for place, line in base.items():
        if place not in out and line.changed:
            out[place] = line
    return tuple(out[p] for p in sorted(out))
