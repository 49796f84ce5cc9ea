"""The record and relocation edits of a rewrite: dropping a site's record (a linked image's table
slot zeroed and its ``R_PPC64_RELATIVE`` moved past ``DT_RELASZ``; a relocatable file's
``R_PPC64_ADDR64`` taken out of its table) and restoring one from the patch log, each as
compare-and-swap edits (:mod:`rewriter.edits`) that :mod:`rewriter.rewrite` puts in its stages.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import cached_property
from itertools import repeat
from typing import Final, NamedTuple, cast

import numpy as np

from rewriter import arrays, ppc
from rewriter.edits import BytesEdit, Edit, RelaEdit, RelaPut, WordWrite
from rewriter.elf import structs as S
from rewriter.elf.dynamic import RELA_ROW, check_applied_table, dynamic_field, dynamic_value
from rewriter.elf.image import Image, Kind, Section
from rewriter.elf.symbols import join_place
from rewriter.errors import ImageError
from rewriter.known import RecordSlot, RelaEntry, SiteLine
from rewriter.records import RecordTable
from rewriter.sites import Scan, Site
from rewriter.states import Insn, Slot

BOOTED_KINDS: Final = (Kind.VMLINUX, Kind.MODULE)
"""Files whose records a kernel checks at boot or at module load (the boot rule applies to them)."""
_BRANCHES: Final = (Insn.CALL, Insn.STUB)  # words encoded per address


class Taken(NamedTuple):
    """What dropping records took out, by record place: linked images' table slots, and the
    records' relocations (RELATIVE, or a relocatable file's ADDR64)."""

    slots: dict[int, RecordSlot]
    relocations: dict[int, RelaEntry]


# -- relocation tables ----------------------------------------------------------------------


class _FileSpans(NamedTuple):
    """The file bytes of an image's sections with data, ascending (they never overlap:
    :class:`~rewriter.elf.image.Image` refuses a file whose sections do), for :func:`_check_room`."""

    starts: np.ndarray
    ends: np.ndarray
    shndx: np.ndarray


class RelaTables:
    """The current rows of the relocation tables this rewrite edits, so that each RelaEdit is
    computed against the table as the previous edits left it.

    It also indexes the image's relocation tables, once per rewrite: a module built with
    ``-ffunction-sections`` has one for each function, and every site asks for its own."""

    def __init__(self, image: Image) -> None:
        self.image = image
        self.rows: dict[int, np.ndarray] = {}
        self.size: dict[int, int] = {}
        self.taken: dict[int, RelaEntry] = {}  # the REL24s of call slots nopped, by site place
        self.put_calls: set[int] = set()  # sites whose REL24 came back from the patch log

    @cached_property
    def _applying_to(self) -> dict[int, list[Section]]:
        """The relocation tables by the index of the section they apply to (``sh_info``)."""
        out: dict[int, list[Section]] = {}
        for rsec in self.image.relocation_sections():
            out.setdefault(rsec.info, []).append(rsec)
        return out

    @cached_property
    def _placed(self) -> dict[tuple[str, int | None], Section]:
        """The relocation tables by name and file offset, and by name alone (offset None), each
        the first such in section order."""
        out: dict[tuple[str, int | None], Section] = {}
        for rsec in self.image.relocation_sections():
            out.setdefault((rsec.name, rsec.offset), rsec)
            out.setdefault((rsec.name, None), rsec)
        return out

    @cached_property
    def _spans(self) -> _FileSpans:
        """The sections that hold file bytes (not SHT_NOBITS, SHT_NULL: a null header names no
        section, whatever its fields say), by offset."""
        held = sorted(
            (s.offset, s.offset + s.size, s.shndx)
            for s in self.image.sections
            if s.type not in (S.SHT_NOBITS, S.SHT_NULL) and s.size
        )
        columns = np.array(held, np.int64).reshape(-1, 3)
        return _FileSpans(columns[:, 0], columns[:, 1], columns[:, 2])

    def rela_section(self, rela: RelaEntry) -> Section:
        """The RELA table the patch log puts ``rela`` back into: the one of its name at its offset.
        A name can repeat: gcc 13 and later make one ``__patchable_function_entries`` (and its
        RELA table) per function. A log from before the offset was written means the first of the
        name: the rewrite that wrote it read no other. Looked up in an index of the tables, made
        once: every table of a module can have one name, and a search of them per entry put back
        was quadratic."""
        found = self._placed.get((rela.section, rela.table))
        if found is None:
            raise _no_rela_table(self.image, rela)
        return found

    def current(self, sec: Section) -> np.ndarray:
        if sec.shndx not in self.rows:
            self.rows[sec.shndx] = self.image.relocations(sec).copy()
            self.size[sec.shndx] = sec.size
        return self.rows[sec.shndx]

    def remove(self, sec: Section, indexes: np.ndarray, why: str, keep_tail: bool = False) -> list[Edit]:
        """Take rows out of ``sec`` (indexes into its current rows) and lower its ``sh_size``.

        The freed tail of the table is zeroed, or with ``keep_tail`` holds the removed entries
        (still in the file, past the end of the table)."""
        rows = self.current(sec)
        indexes = arrays.distinct(indexes)
        if not len(indexes):
            return []
        entsize = sec.entsize or rows.dtype.itemsize
        size = rows.dtype.itemsize
        taken = rows[indexes].tobytes()  # one copy, cut into entries (not a numpy slice per entry)
        entries = tuple(taken[i : i + size] for i in range(0, len(taken), size))
        left = arrays.without(rows, indexes)
        keep = len(left) if keep_tail else None
        edit = RelaEdit(
            sec.name, sec.offset, self.size[sec.shndx], entsize, tuple(indexes.tolist()), entries, keep, why
        )
        self.rows[sec.shndx] = left
        new_size = self.size[sec.shndx] - len(indexes) * entsize
        edits: list[Edit] = [edit, self.sh_size_edit(sec, self.size[sec.shndx], new_size)]
        self.size[sec.shndx] = new_size
        return edits

    def sh_size_edit(self, sec: Section, old: int, new: int) -> BytesEdit:
        dt = S.shdr_dtype(self.image.endian)
        assert dt.fields is not None
        field = int(self.image.ehdr["e_shoff"]) + sec.shndx * dt.itemsize + dt.fields["sh_size"][1]
        order = self.image.byteorder
        return BytesEdit(field, old.to_bytes(8, order), new.to_bytes(8, order), f"{sec.name} sh_size")

    def drop_call_relocations(self, image: Image, sites: Sequence[Site], writes: Sequence[WordWrite]) -> list[Edit]:
        """REL24 relocations of call slots this stage turns into ``nop``."""
        nopped = {(w.section, w.section_offset) for w in writes if w.slot is Slot.B and w.new == ppc.NOP}
        if not nopped:
            return []
        by_target: dict[int, list[int]] = {}
        for s in sites:
            section_offset = s.offset  # the call slot's, in its section (= the REL24's r_offset)
            if (s.section, section_offset) in nopped:
                by_target.setdefault(s.section_index, []).append(section_offset)
        edits: list[Edit] = []
        for rsec in image.relocation_sections():
            offsets = by_target.get(rsec.info)
            if not offsets:
                continue
            rows = self.current(rsec)
            hit = (S.r_type(rows["r_info"]) == S.R_PPC64_REL24) & arrays.member(rows["r_offset"], offsets)
            found = np.flatnonzero(hit)
            if len(found) != len(offsets):
                raise ImageError(
                    f"{image.path}: {rsec.name}: expected {len(offsets)} R_PPC64_REL24 for the nopped call slots, "
                    f"found {len(found)}"
                )
            # Each entry's bytes and place in one pass of plain ints: numpy per entry (a scalar
            # rel_place, a one-row slice) cost 2-4 us against 0.3, and a 6.1 tree's prenop takes
            # out some 150,000 of them.
            raw, size = rows[found].tobytes(), rows.dtype.itemsize
            for k, r_offset in enumerate(rows["r_offset"][found].tolist()):
                entry = RelaEntry(rsec.name, raw[k * size : (k + 1) * size], rsec.offset)
                self.taken[join_place(rsec.info, r_offset)] = entry
            edits += self.remove(rsec, found, "R_PPC64_REL24 of a nopped call slot")
        return edits

    def put(self, sec: Section, entries: Sequence[bytes], why: str) -> list[Edit]:
        """Put ``entries`` back into ``sec`` where their ``r_offset`` sorts them (the order the
        assembler left, so that putting back every entry a drop took out gives the original
        bytes), growing the table into its zeroed tail, and raise its ``sh_size``."""
        rows = self.current(sec)
        entsize = sec.entsize or rows.dtype.itemsize
        size = self.size[sec.shndx]
        new_size = size + len(entries) * entsize
        _check_room(self.image, self._spans, sec, sec.offset + size, sec.offset + new_size)
        new = np.frombuffer(b"".join(entries), rows.dtype)
        order = np.argsort(new["r_offset"], kind="stable")
        at = _sorted_positions(rows["r_offset"], new["r_offset"][order])
        put = tuple(entries[i] for i in order.tolist())
        edit = RelaPut(sec.name, sec.offset, new_size, entsize, at, put, None, why)
        self.rows[sec.shndx] = np.insert(rows, np.array(at) - np.arange(len(at)), new[order])
        self.size[sec.shndx] = new_size
        return [edit, self.sh_size_edit(sec, size, new_size)]

    def put_call_relocations(
        self, image: Image, sites: Sequence[Site], writes: Sequence[WordWrite], history: Mapping[int, SiteLine]
    ) -> list[Edit]:
        """The REL24 of each call slot this stage turns into a ``bl`` and whose table lacks one
        (a nop took it out), put back from the patch log: without it the loader leaves ``bl .``,
        a branch to itself."""
        called = {(w.section, w.section_offset) for w in writes if w.slot is Slot.B and ppc.is_bl(w.new)}
        calls = [s for s in sites if (s.section, s.offset) in called]
        relocated = self._call_relocated(calls)
        wanted: dict[Section, list[bytes]] = {}
        for s in calls:
            if (s.section_index, s.offset) in relocated:
                continue
            line = history.get(s.place)
            if line is None or line.origin.call_relocation is None:
                raise ImageError(
                    f"{image.path}: {s.place_text} ({s.function or '?'}): a call here needs its R_PPC64_REL24, "
                    "which the rewrite that nopped it took out and no patch log read here names "
                    "(give the log of this file with --input-log)"
                )
            wanted.setdefault(self.rela_section(line.origin.call_relocation), []).append(
                line.origin.call_relocation.entry
            )
            self.put_calls.add(s.place)
        edits: list[Edit] = []
        for sec, entries in wanted.items():
            edits += self.put(sec, entries, "R_PPC64_REL24 of a restored call")
        return edits

    def _call_relocated(self, sites: Sequence[Site]) -> set[tuple[int, int]]:
        """(section index, offset) of each of ``sites``' call slots that an ``R_PPC64_REL24`` of
        its section's tables names: one look-up per table, not per site."""
        by_target: dict[int, list[int]] = {}
        for s in sites:
            by_target.setdefault(s.section_index, []).append(s.offset)
        out: set[tuple[int, int]] = set()
        for index, offsets in by_target.items():
            for rsec in self._applying_to.get(index, []):
                rows = self.current(rsec)
                calls = rows["r_offset"][S.r_type(rows["r_info"]) == S.R_PPC64_REL24]
                out.update((index, offset) for offset in calls[arrays.member(calls, offsets)].tolist())
        return out


def _no_rela_table(image: Image, rela: RelaEntry) -> ImageError:
    offset = "" if rela.table is None else f" at offset {rela.table:#x}"
    return ImageError(
        f"{image.path}: the patch log puts a relocation back into {rela.section}{offset}, "
        "which is no RELA table of that name here"
    )


def _sorted_positions(rows: np.ndarray, new: np.ndarray) -> tuple[int, ...]:
    """Where each of ``new`` (ascending) lands among ``rows`` once all are inserted: after the
    equal or smaller values if ``rows`` ascend, else at the end."""
    if len(rows) > 1 and not bool(np.all(rows[1:] >= rows[:-1])):
        k = np.full(len(new), len(rows))
    else:
        k = np.searchsorted(rows, new, side="right")
    return tuple((k + np.arange(len(new))).tolist())


def _check_room(image: Image, spans: _FileSpans, sec: Section, start: int, end: int) -> None:
    """A table grows only into bytes that are zero and no other section's: the tail a drop freed.
    ``spans``: the image's sections by file offset, searched rather than walked (a table is
    checked each time it grows, and a module can have thousands of them)."""
    start = max(start, sec.offset + sec.size)  # the table's own bytes are zeroed by a drop in this rewrite
    no_room = f"{image.path}: {sec.name}: no room to put relocations back"
    # The sections that start before `end` and end after `start`: a run of the sorted spans.
    first = int(np.searchsorted(spans.ends, start, side="right"))
    past = int(np.searchsorted(spans.starts, end, side="left"))
    reached = [int(i) for i in spans.shndx[first:past].tolist() if i != sec.shndx] if start < end else []
    if reached:
        raise ImageError(f"{no_room} (it would reach {image.sections[min(reached)].name})")
    if end > image.elf_end or (start < end and any(image.data[start:end])):
        raise ImageError(f"{no_room} (the bytes after it are not free)")


# -- records --------------------------------------------------------------------------------


def drop_records(image: Image, scan: Scan, tables: RelaTables, sites: Sequence[Site]) -> tuple[list[Edit], int, Taken]:
    """Edits that drop the records of ``sites``, found where the scan read them
    (``Scan.records.tables``), how many table entries they take out, and what each record
    place had (its slot, its relocation) for the log's site lines."""
    facts = Taken({}, {})
    if not sites:
        return [], 0, facts
    want = arrays.distinct(np.array([s.record for s in sites], dtype=np.uint64))
    if image.type == S.ET_REL:
        edits, found, rows = _drop_rel_records(image, scan, tables, want, facts)
    else:
        edits, found, rows = _drop_linked_records(image, scan, tables, want, facts)
    if len(found) != len(want):
        missing = int(np.setdiff1d(want, found)[0])
        raise ImageError(f"{image.path}: --drop-records: no record table entry names {missing:#x}")
    return edits, rows, facts


def _drop_rel_records(
    image: Image, scan: Scan, tables: RelaTables, want: np.ndarray, facts: Taken
) -> tuple[list[Edit], np.ndarray, int]:
    """Relocatable: the record's R_PPC64_ADDR64 leaves its ``.rela`` section, the slot stays 0."""
    edits: list[Edit] = []
    found = []
    for t, hit in zip(scan.records.tables, _hits(scan.records.tables, want), strict=True):
        if t.shndx is None or not len(hit):
            continue
        rsec = image.section_at(t.shndx)
        rows = tables.current(rsec)
        for i in hit.tolist():
            facts.relocations[int(t.values[i])] = RelaEntry(rsec.name, rows[i : i + 1].tobytes(), rsec.offset)
        edits += tables.remove(rsec, hit, "record of a nopped site")
        found.append(t.values[hit])
    rows_out = sum(len(f) for f in found)
    return edits, arrays.distinct(np.concatenate(found)) if found else np.zeros(0, np.uint64), rows_out


def _hits(tables: Sequence[RecordTable], want: np.ndarray) -> list[np.ndarray]:
    """The indexes of each table's entries that are in ``want``, from one membership test of all
    the tables' entries: a relocatable file can have a table per function (gcc 13 and later), and
    a test per table would sort ``want`` once for each."""
    if not tables:
        return []
    hit = arrays.member(np.concatenate([t.values for t in tables]), want)
    ends = np.cumsum([len(t.values) for t in tables])[:-1]
    return [np.flatnonzero(part) for part in np.split(hit, ends)]


def _drop_linked_records(
    image: Image, scan: Scan, tables: RelaTables, want: np.ndarray, facts: Taken
) -> tuple[list[Edit], np.ndarray, int]:
    """Linked: zero the table slots; move their RELATIVE relocations out of what relocate() applies."""
    edits: list[Edit] = []
    found = []
    slot_addrs = []
    for t in scan.records.tables:
        hit = np.flatnonzero(arrays.member(t.values, want))
        if t.addr is None or t.file_offset is None or not len(hit):
            continue
        found.append(t.values[hit])
        slot_addrs.append(np.uint64(t.addr) + hit.astype(np.uint64) * np.uint64(8))
        table = bytes(image.data[t.file_offset : t.file_offset + 8 * len(t.values)])
        zero = bytes(8)
        # Column by column: a vmlinux drops 33,689 records.
        starts = (8 * hit).tolist()
        olds = [table[i : i + 8] for i in starts]
        offsets = [t.file_offset + i for i in starts]
        slots = map(RecordSlot, repeat(t.section), offsets, [t.addr + i for i in starts], olds)
        for value, slot in zip(t.values[hit].tolist(), slots, strict=True):
            if value not in facts.slots:  # a place in two tables: the first one names it
                facts.slots[value] = slot
        why = f"{t.section} entry"
        edits += [BytesEdit(off, old, zero, why) for off, old in zip(offsets, olds, strict=True) if old != zero]
    if not found:
        return edits, np.zeros(0, np.uint64), 0
    edits += _move_relatives(image, tables, np.concatenate(slot_addrs), facts)
    return edits, arrays.distinct(np.concatenate(found)), sum(len(f) for f in found)


def _move_relatives(image: Image, tables: RelaTables, slot_addrs: np.ndarray, facts: Taken) -> list[Edit]:
    """reloc_64.S walks DT_RELACOUNT entries (before 6.0) or all DT_RELASZ bytes, DT_RELAENT a
    row (6.0 and later, RELATIVE and UADDR64), storing each addend over its target whatever the
    target holds. Moving the entries past the end of the table and lowering both keeps either walk
    away from them, when ``.dynamic`` agrees with the table (refused otherwise)."""
    rela = image.section(".rela.dyn")
    if rela is None:
        return []  # a static executable: its table holds link-time addresses, no relocation
    rows = tables.current(rela)
    relative = S.r_type(rows["r_info"]) == S.R_PPC64_RELATIVE
    moved = np.flatnonzero(relative & arrays.member(rows["r_offset"], slot_addrs))
    if not len(moved):
        return []
    check_applied_table(image, rela)
    by_slot = {slot.addr: value for value, slot in facts.slots.items()}
    counted = int(np.count_nonzero(moved < (dynamic_value(image, S.DT_RELACOUNT) or 0)))
    edits = tables.remove(rela, moved, "RELATIVE of a dropped record", keep_tail=True)
    removed = cast(RelaEdit, edits[0])  # the entries, in the order of `moved`
    for r_offset, entry in zip(rows["r_offset"][moved].tolist(), removed.entries, strict=True):
        value = by_slot.get(r_offset)
        if value is not None:
            facts.relocations[value] = RelaEntry(rela.name, entry, rela.offset)
    return edits + _dynamic_edits(image, -len(moved), -counted)


# -- restoring records ----------------------------------------------------------------------


def restore_records(
    image: Image, tables: RelaTables, sites: Sequence[Site], history: Mapping[int, SiteLine]
) -> list[Edit]:
    """Edits that put back the records of ``sites`` as the patch log says the original had them."""
    if not sites:
        return []
    origins = [history[s.place].origin for s in sites]
    if image.type == S.ET_REL:
        wanted: dict[Section, list[bytes]] = {}
        for o in origins:
            if o.record_relocation is not None:
                wanted.setdefault(tables.rela_section(o.record_relocation), []).append(o.record_relocation.entry)
        edits: list[Edit] = []
        for sec, entries in wanted.items():
            edits += tables.put(sec, entries, "record of a restored site")
        return edits
    slots = [_slot_back(image, o.record_slot) for o in origins if o.record_slot is not None]
    entries = [o.record_relocation.entry for o in origins if o.record_relocation is not None]
    return [e for e in slots if e is not None] + _return_relatives(image, tables, entries)


def _slot_back(image: Image, slot: RecordSlot) -> BytesEdit | None:
    """The table slot's original value, over the zero a drop left (None: it holds it already)."""
    now = bytes(image.data[slot.offset : slot.offset + 8])
    if now == slot.value:
        return None
    if now != bytes(8):
        raise ImageError(
            f"{image.path}: {slot.table} slot at offset {slot.offset:#x}: expected 0 (a dropped record) "
            f"!= found {now.hex()}"
        )
    return BytesEdit(slot.offset, now, slot.value, f"{slot.table} entry")


def _return_relatives(image: Image, tables: RelaTables, entries: Sequence[bytes]) -> list[Edit]:
    """Move restored records' RELATIVE entries from past the end of ``.rela.dyn`` (where a drop put
    them) back among the ones relocate() applies, where their r_offset sorts them (the linker's
    order: putting every one back gives the original table), and raise DT_RELASZ, DT_RELACOUNT
    and ``sh_size``."""
    rela = image.section(".rela.dyn")
    if rela is None or not entries:
        return []
    check_applied_table(image, rela)
    rows = tables.current(rela)
    entsize = rela.entsize or rows.dtype.itemsize
    size = tables.size[rela.shndx]
    tail = _tail_rows(image, rela, rela.offset + size, entsize)
    where = {tail[i].tobytes(): i for i in range(len(tail))}
    missing = [e for e in entries if e not in where]
    if missing:
        applied = {rows[i : i + 1].tobytes() for i in range(len(rows))}
        lost = [e for e in missing if e not in applied]
        if lost:
            raise ImageError(
                f"{image.path}: .rela.dyn: the RELATIVE entry {lost[0].hex()} of a restored record is not past "
                "the end of the table, where the rewrite that dropped it moved it"
            )
        entries = [e for e in entries if e in where]  # the others are applied already
        if not entries:
            return []
    new = np.frombuffer(b"".join(entries), rows.dtype)
    order = np.argsort(new["r_offset"], kind="stable")
    put = [entries[i] for i in order.tolist()]
    source = tuple(len(rows) + where[e] for e in put)
    counted = dynamic_value(image, S.DT_RELACOUNT)
    prefix = rows["r_offset"][: counted if counted is not None else len(rows)]
    at = _sorted_positions(prefix, new["r_offset"][order])
    span = (max(source) + 1) * entsize
    edit = RelaPut(rela.name, rela.offset, span, entsize, at, tuple(put), source, "RELATIVE of a restored record")
    tables.rows[rela.shndx] = np.insert(rows, np.array(at) - np.arange(len(at)), new[order])
    tables.size[rela.shndx] = size + len(put) * entsize
    edits: list[Edit] = [edit, tables.sh_size_edit(rela, size, size + len(put) * entsize)]
    return edits + _dynamic_edits(image, len(put), len(put) if counted is not None else 0)


def _tail_rows(image: Image, rela: Section, start: int, entsize: int) -> np.ndarray:
    """The whole entries between the end of a table and the next section (or the end of the ELF
    data): where a drop keeps the RELATIVE entries it moves out."""
    end = image.elf_end
    for other in image.sections:
        if other.type != S.SHT_NOBITS and other.size and start <= other.offset < end and other.shndx != rela.shndx:
            end = other.offset
    shoff = int(image.ehdr["e_shoff"])
    if start <= shoff < end:
        end = shoff
    n = max(end - start, 0) // entsize
    return np.frombuffer(image.data, np.uint8, count=n * entsize, offset=start).reshape(n, entsize)


def _dynamic_edits(image: Image, entries: int, counted: int) -> list[Edit]:
    """Change DT_RELASZ by ``entries`` rows and DT_RELACOUNT by ``counted`` (negative: lower
    them, as a drop does; positive: raise them, as a restore does), once
    :func:`~rewriter.elf.dynamic.check_applied_table` has found them to agree with ``.rela.dyn``.
    ``.dynamic`` is read by section: these kernels have no PT_DYNAMIC segment."""
    if image.section(".dynamic") is None:
        raise ImageError(f"{image.path}: records: .rela.dyn without .dynamic")
    order = image.byteorder
    edits: list[Edit] = []
    for tag, name, change in (
        (S.DT_RELASZ, "DT_RELASZ", entries * RELA_ROW),
        (S.DT_RELACOUNT, "DT_RELACOUNT", counted),
    ):
        found = dynamic_field(image, tag)
        if found is None or not change:
            continue
        field, old = found
        edits.append(BytesEdit(field, old.to_bytes(8, order), (old + change).to_bytes(8, order), name))
    return edits
