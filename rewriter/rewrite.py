"""A rewrite in memory: select sites, plan, and turn the plan's writes into compare-and-swap edits,
plus the relocation and record edits that keep a rewritten file loadable.

Strategy: select sites, ask the planner for one plan that takes them to the target state, then
walk the plan stage by stage on a copy of the file:

* every slot write is a compare-and-swap against the word the scan found (``edits.WordWrite``);
* in a relocatable file (.o/.ko) a call slot that becomes ``nop`` loses its ``R_PPC64_REL24``:
  the loader would otherwise patch a branch offset into the nop. The entry is taken out of its
  ``.rela`` table (not turned into ``R_PPC64_NONE``, which the ppc64 module loader refuses:
  ``Unknown ADD relocation: 0``) in the same stage as the write, so every stage image loads;
* with ``drop_records``, sites whose call slot ends up ``nop`` lose their records: in a linked
  image the record table's slot is zeroed (ftrace_process_locs skips zeros) and its
  ``R_PPC64_RELATIVE`` moves past the ``DT_RELASZ`` bytes that ``arch/powerpc/kernel/reloc_64.S``
  applies at boot (it would write the slot back from the addend); in a relocatable file the
  record's ``R_PPC64_ADDR64`` leaves ``.rela__mcount_loc`` / ``.rela__patchable_function_entries``,
  so the record stays 0;
* a signed module loses its signature only when asked (``strip_signature``).

The boot rule (checked by booting the three corpus kernels): the kernel's boot-time
``ftrace_init_nop`` accepts at a recorded place only the words the compiler built there
(``LAYOUTS[v].built``: 6.1 ``mflr r0; bl _mcount``, 6.12 ``nop; nop``, 7.2 ``nop``); anything else
is ``expected (...) != found (...)``, ``ftrace bug``, and ftrace is off for the boot. So a rewrite
of a vmlinux or module that would leave a recorded place holding other words is refused, unless
the same rewrite drops that record (``drop_records``) or the caller builds such an image on
purpose (``keep_records``: the negative control of the boot tests). On patchable and ool kernels
the sites are built as nops: pre-nopping them is dropping their records, and no word is written.

The new file is then read back in memory: every changed site must hold the target state's words
(:class:`InternalError` if not: that is mcountrw's mistake, not the input's). The result is in
memory; ``rewriter.files`` writes files. No printing, no file I/O here.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Final, NamedTuple

import numpy as np

from rewriter import ppc
from rewriter.edits import BytesEdit, Edit, RelaEdit, Truncate, WordWrite, apply_edits, byteorder
from rewriter.elf import structs as S
from rewriter.elf.image import Image, Kind, Section
from rewriter.errors import ImageError, InternalError, NoRoute, PlanRejected, RewriteError
from rewriter.generations import LAYOUTS, TWO_SLOT_STATES, Generation, Variant
from rewriter.plan import Cmodx, Plan, Route, SiteRequest, Write, plan
from rewriter.sites import Scan, Site, dynamic_value, scan
from rewriter.states import Insn, SiteState, Slot, insn_kind, word_for

BOOTED_KINDS: Final = (Kind.VMLINUX, Kind.MODULE)
"""Files whose records a kernel checks at boot or at module load (the boot rule applies to them)."""
_BRANCHES: Final = (Insn.CALL, Insn.STUB)  # words encoded per address


@dataclass(frozen=True)
class Selection:
    """Which sites to change: all, or those matching any ``only`` glob (function names), any
    ``sections`` name, any ``addrs`` (call-slot addresses) or any ``places`` ((section index,
    call-slot offset) pairs, exact: what a policy computes), minus ``exclude`` globs."""

    only: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    sections: tuple[str, ...] = ()
    addrs: frozenset[int] = frozenset()
    places: frozenset[tuple[int, int]] = frozenset()

    @property
    def everything(self) -> bool:
        return not (self.only or self.exclude or self.sections or self.addrs or self.places)

    def matches(self, site: Site) -> bool:
        name = site.function or ""
        chosen = not (self.only or self.sections or self.addrs or self.places)
        chosen = chosen or any(fnmatch.fnmatchcase(name, g) for g in self.only)
        chosen = chosen or site.section in self.sections or (site.addr in self.addrs)
        section_offset = site.offset  # Site.offset is the call slot's offset in its section
        chosen = chosen or (site.section_index, section_offset) in self.places
        return chosen and not any(fnmatch.fnmatchcase(name, g) for g in self.exclude)


@dataclass(frozen=True)
class Options:
    """``target`` is a state name (``nopped`` means every word of the site a nop: on ool, whose
    one word has no ``nopped`` state, that is ``disabled``). ``drop_records`` drops the records of
    sites whose call slot ends up nop; ``keep_records`` allows leaving a recorded place holding
    words the kernel refuses at boot (for negative controls only)."""

    target: SiteState
    route: Route | None = None
    cmodx: Cmodx = Cmodx.V3_1
    drop_records: bool = False
    strip_signature: bool = False
    keep_records: bool = False


class StubCount(NamedTuple):
    """ool: an area of stubs, how many it has (``stubs``) and how many records it serves (``used``).
    A module's stubs are carved out of ``.stubs`` at load, one per ``__patchable_function_entries``
    slot (module_64.c: sh_size / 8), zeroed slots included. (``stubs``, not ``count``: a tuple has
    a ``count`` method.)"""

    area: str
    stubs: int
    used: int


@dataclass(frozen=True)
class Rewrite:
    """What a rewrite did. ``content`` is the whole new file (decompressed); ``stages`` the file
    after each stage of the plan (relocation edits included, record and signature edits not).
    ``dropped``: the sites whose records go; ``stubs`` (ool): the stub counts before and after."""

    content: bytes | bytearray  # the bytearray the edits were applied to: a 46 MB copy saved
    stages: tuple[bytes, ...]
    edits: tuple[Edit, ...]
    plan: Plan | None
    barriers: tuple[tuple[int, str], ...]
    sites: tuple[Site, ...]  # the sites whose words changed, as they were before
    unchanged: int  # selected sites already at the target
    dropped: tuple[Site, ...] = ()
    stubs: tuple[tuple[StubCount, ...], tuple[StubCount, ...]] | None = None

    @property
    def word_writes(self) -> int:
        """How many of ``edits`` are the plan's word writes (the others have no stage)."""
        return sum(1 for e in self.edits if e.stage is not None)


def target_state(variant: Variant, target: SiteState) -> SiteState:
    """The state ``target`` names for a ``variant`` site: itself, except ``nopped`` on a layout
    without it (ool), where it is the state whose words are all ``nop``."""
    lay = LAYOUTS[variant]
    if target is SiteState.NOPPED and target not in lay.states:
        for state, words in lay.states.items():
            if all(w is Insn.NOP for w in words):
                return state
    return target


def words_of(variant: Variant, state: SiteState) -> tuple[Insn, ...]:
    """The words of ``state_slots`` for ``state`` (``broken`` too, for the two-slot layouts)."""
    lay = LAYOUTS[variant]
    return lay.states[state] if state in lay.states else TWO_SLOT_STATES[state]


def _words_text(variant: Variant, state: SiteState) -> str:
    return "; ".join("mflr r0" if w is Insn.MFLR else w.value for w in words_of(variant, state))


def rewrite(image: Image, scan: Scan, selection: Selection, options: Options, keep_stages: bool = False) -> Rewrite:
    """Plan and apply; ``keep_stages`` keeps a copy of the file after each stage (``--stage-images``)."""
    if options.drop_records and options.keep_records:
        raise RewriteError(f"{image.path}: --drop-records and --keep-records contradict each other")
    selected = list(scan.sites) if selection.everything else [s for s in scan.sites if selection.matches(s)]
    goals = _goals(image, selected, options.target)
    if len(goals) == 1:  # the usual case: one layout, and no enum hashed per site
        (goal,) = goals.values()
        todo = [s for s in selected if s.state is not goal]
    else:
        todo = [s for s in selected if s.state is not goals[s.variant]]
    gone = _records_to_drop(selected, goals) if options.drop_records else []
    if image.signature is not None and (todo or gone) and not options.strip_signature:
        raise ImageError(
            f"{image.path}: signed module: any edit invalidates its signature and the kernel would refuse it "
            "(pass --strip-signature to drop it; undo restores it)"
        )
    _check_boot_rule(image, selected, todo, gone, goals, options)
    for s in todo:
        if s.state is SiteState.UNKNOWN:
            raise ImageError(
                f"{image.path}: {s.place_text} ({s.function or '?'}): slots hold unknown words; not touching it"
            )
    groups = _groups(todo)
    the_plan = _make_plan(image, groups, goals, options) if todo else None
    order = byteorder(image.byteorder)
    buf = bytearray(image.data)
    edits: list[Edit] = []
    stages: list[bytes] = []
    tables = _RelaTables(image)
    if the_plan is not None:
        for stage_writes in _resolve(image, scan, groups, the_plan):
            stage_edits: list[Edit] = list(stage_writes)
            if image.type == S.ET_REL:
                stage_edits += tables.drop_call_relocations(image, todo, stage_writes)
            buf = apply_edits(buf, stage_edits, order)
            edits += stage_edits
            if keep_stages:
                stages.append(bytes(buf))
    records, rows = _drop_records(image, scan, tables, gone)
    final = list(records)
    if options.strip_signature and image.signature is not None and (todo or gone):
        tail = bytes(image.data[image.elf_end :])
        final.append(Truncate(image.elf_end, tail, "module signature"))
    buf = apply_edits(buf, final, order)
    edits += final
    barriers = () if the_plan is None else tuple((i, b.value) for i, b in enumerate(the_plan.barriers))
    stubs = _stub_counts(image, scan, rows, bool(records), buf)
    _read_back(buf, image, todo, goals)
    return Rewrite(
        buf, tuple(stages), tuple(edits), the_plan, barriers, tuple(todo), len(selected) - len(todo), tuple(gone), stubs
    )


def _goals(image: Image, sites: Sequence[Site], target: SiteState) -> Mapping[Variant, SiteState]:
    """The target state of each variant present. A patchable or ool site is never made to call the
    tracer offline: the kernel's boot-time init accepts only nops at a recorded place, a call left
    unrecorded would never be managed by ftrace, and an ool ``b stub`` would enter a stub that only
    the boot fills (the file's stubs are zero). The running kernel enables sites itself."""
    goals = {}
    for variant in {s.variant for s in sites}:
        goal = target_state(variant, target)
        lay = LAYOUTS[variant]
        if lay.generation is not Generation.MPROFILE and any(w in _BRANCHES for w in words_of(variant, goal)):
            raise PlanRejected(
                f"{image.path}: {variant.value}: {goal.value} ({_words_text(variant, goal)}) is not written offline: "
                f"the kernel's boot-time ftrace_init_nop accepts only {_words_text(variant, lay.built)} at a recorded "
                "place (ftrace bug otherwise) and enables sites itself at run time (echo function > current_tracer)"
            )
        goals[variant] = goal
    return goals


def _call_slot_nop(variant: Variant, state: SiteState) -> bool:
    lay = LAYOUTS[variant]
    return words_of(variant, state)[lay.state_slots.index(Slot.B)] is Insn.NOP


def _records_to_drop(selected: Sequence[Site], goals: Mapping[Variant, SiteState]) -> list[Site]:
    """Every selected recorded site whose call slot ends up nop, including sites already there:
    on a patchable or ool kernel the compiler's nops *are* the nopped state."""
    nop_at_end = {v for v, g in goals.items() if _call_slot_nop(v, g)}
    if len(goals) == 1:
        return [s for s in selected if s.recorded] if nop_at_end else []
    return [s for s in selected if s.recorded and s.variant in nop_at_end]


def _check_boot_rule(
    image: Image,
    selected: Sequence[Site],
    todo: Sequence[Site],
    gone: Sequence[Site],
    goals: Mapping[Variant, SiteState],
    options: Options,
) -> None:
    """Refuse a vmlinux or module that the kernel would refuse at boot (see the module docstring)."""
    if image.kind not in BOOTED_KINDS or options.keep_records:
        return
    dropped = {s.place for s in gone}
    bad = [
        s for s in todo if s.recorded and s.place not in dropped and goals[s.variant] is not LAYOUTS[s.variant].built
    ]
    if bad:
        s, goal = bad[0], goals[bad[0].variant]
        more = f" (and {len(bad) - 1} more sites)" if len(bad) > 1 else ""
        raise PlanRejected(
            f"{image.path}: {s.place_text} ({s.function or '?'}){more}: would hold {goal.value} "
            f"({_words_text(s.variant, goal)}) at a recorded place, but the kernel's boot-time ftrace_init_nop "
            f"accepts only {_words_text(s.variant, LAYOUTS[s.variant].built)} there (expected != found, ftrace bug, "
            "ftrace off for the boot): add --drop-records (or --keep-records to build that image on purpose)"
        )
    if options.target is SiteState.NOPPED and not options.drop_records and not todo:
        kept = [s for s in selected if s.recorded and LAYOUTS[s.variant].generation is not Generation.MPROFILE]
        if kept:
            gen = LAYOUTS[kept[0].variant].generation.value
            raise PlanRejected(
                f"{image.path}: {gen}: the {len(kept)} selected sites already are nop as built, and their records "
                "keep them traceable (the kernel patches them at boot): pre-nopping them means dropping their "
                "records: add --drop-records"
            )


def _groups(sites: Sequence[Site]) -> list[list[Site]]:
    """Sites grouped by (variant, state), in order of first appearance: every site of a group takes
    the same path, so the planner plans each group once (a kernel has ~34,000 sites, ~1 group)."""
    index: dict[tuple[Variant, SiteState], int] = {}
    groups: list[list[Site]] = []
    last: tuple[Variant, SiteState] | None = None
    n = -1
    for s in sites:
        key = (s.variant, s.state)
        if key != last:  # compare, don't hash enum members, on runs of equal keys
            n = index.setdefault(key, len(groups))
            if n == len(groups):
                groups.append([])
            last = key
        groups[n].append(s)
    return groups


def _make_plan(
    image: Image, groups: Sequence[Sequence[Site]], goals: Mapping[Variant, SiteState], options: Options
) -> Plan:
    """One plan whose ``sites`` are the groups: a plan's stages and barriers depend only on which
    requests occur, not on how many sites make each one."""
    requests = [SiteRequest(g[0].variant, g[0].state, goals[g[0].variant]) for g in groups]
    try:
        return plan(requests, options.route, options.cmodx, runtime=True)
    except PlanRejected:
        # No legal *runtime* route (e.g. under CMODX 3.0); a file is not executing, so the
        # offline plan, which only avoids `broken`, is still correct for it.
        try:
            return plan(requests, options.route, options.cmodx, runtime=False)
        except PlanRejected as e:
            raise NoRoute(f"{image.path}: {e}") from None


# -- plan writes -> words -------------------------------------------------------------------


class _Step(NamedTuple):
    """One write of a group's path, with everything that does not depend on the site's address."""

    slot: Slot
    delta: int
    before: SiteState
    after: SiteState
    old_word: int | None  # None: a branch (bl or b stub), encoded per address
    new_word: int | None
    old: Insn
    new: Insn


def _resolve(image: Image, scan: Scan, groups: Sequence[Sequence[Site]], the_plan: Plan) -> list[list[WordWrite]]:
    """Turn the plan's symbolic writes (one per group) into words at file offsets, site by site."""
    entries = sorted(scan.mcount_entries)
    words = [words_of(g[0].variant, g[0].state) for g in groups]  # each group's words as the plan goes
    out: list[list[WordWrite]] = []
    for stage_no, stage in enumerate(the_plan.stages):
        writes: list[WordWrite] = []
        for w in stage:
            group = groups[w.site]
            st, words[w.site] = _step(group[0], w, words[w.site])
            for site in group:
                offset = site.file_offset + st.delta
                section_offset = site.offset + st.delta  # Site.offset: the call slot's, in its section
                addr = None if site.addr is None else site.addr + st.delta
                here = addr if addr is not None else section_offset
                old = st.old_word if st.old_word is not None else _branch(image, here, offset, site, entries, st.old)
                new = st.new_word if st.new_word is not None else _branch(image, here, None, site, entries, st.new)
                writes.append(
                    WordWrite(stage_no, offset, addr, site.section, section_offset, site.function, st.slot,
                              old, new, st.before, st.after)
                )  # fmt: skip
        out.append(writes)
    return out


def _step(site: Site, w: Write, words: tuple[Insn, ...]) -> tuple[_Step, tuple[Insn, ...]]:
    delta = site.slot_delta(w.slot)
    if delta is None:
        raise PlanRejected(
            f"{site.place_text}: plan writes slot {w.slot.value}, which a {site.variant.value} site lacks"
        )
    lay = LAYOUTS[site.variant]
    before = lay.state_of(words)
    if w.slot in lay.state_slots:
        i = lay.state_slots.index(w.slot)
        words = (*words[:i], w.new, *words[i + 1 :])
    old_word = None if w.old in _BRANCHES else word_for(w.old, 0, 0)
    new_word = None if w.new in _BRANCHES else word_for(w.new, 0, 0)
    return _Step(w.slot, delta, before, lay.state_of(words), old_word, new_word, w.old, w.new), words


def _branch(image: Image, here: int, offset: int | None, site: Site, entries: Sequence[int], insn: Insn) -> int:
    """A branch word of a write: a ``bl`` to the tracer encoded for ``here``, or the ``b stub`` an
    ool site holds (read at ``offset``: only ever the old word, since offline writes never make one)."""
    if insn is Insn.CALL:
        return _call(image, here, site, entries)
    if offset is None:
        raise PlanRejected(f"{site.place_text}: `b stub` is written only by the running kernel")
    return image.word_at(offset)


def _call(image: Image, here: int, site: Site, entries: Sequence[int]) -> int:
    if image.type == S.ET_REL:
        # `bl .`: the REL24 relocation supplies the offset; the loader masks it in.
        return ppc.bl(0, 0)
    target = site.call_target if site.call_target is not None else _reachable(here, entries)
    try:
        return ppc.bl(here, target)
    except ppc.EncodingError as e:
        raise ImageError(f"{image.path}: {e}") from None


def _reachable(addr: int, entries: Sequence[int]) -> int:
    for e in sorted(entries, key=lambda e: abs(e - addr)):
        if -ppc.BRANCH_RANGE <= e - addr < ppc.BRANCH_RANGE:
            return e
    raise ImageError(f"{addr:#x}: no mcount entry within branch range")


# -- relocation tables ----------------------------------------------------------------------


class _RelaTables:
    """The current rows of the relocation tables this rewrite edits, so that each RelaEdit is
    computed against the table as the previous edits left it."""

    def __init__(self, image: Image) -> None:
        self.image = image
        self.rows: dict[int, np.ndarray] = {}
        self.size: dict[int, int] = {}

    def current(self, sec: Section) -> np.ndarray:
        if sec.index not in self.rows:
            self.rows[sec.index] = self.image.relocations(sec).copy()
            self.size[sec.index] = sec.size
        return self.rows[sec.index]

    def remove(self, sec: Section, indexes: np.ndarray, why: str, keep_tail: bool = False) -> list[Edit]:
        """Take rows out of ``sec`` (indexes into its current rows) and lower its ``sh_size``.

        The freed tail of the table is zeroed, or with ``keep_tail`` holds the removed entries
        (still in the file, past the end of the table)."""
        rows = self.current(sec)
        indexes = np.unique(indexes)
        if not len(indexes):
            return []
        entries = tuple(rows[i : i + 1].tobytes() for i in indexes.tolist())
        left = np.delete(rows, indexes)
        keep = len(left) if keep_tail else None
        entsize = sec.entsize or rows.dtype.itemsize
        edit = RelaEdit(
            sec.name, sec.offset, self.size[sec.index], entsize, tuple(indexes.tolist()), entries, keep, why
        )
        self.rows[sec.index] = left
        new_size = self.size[sec.index] - len(indexes) * entsize
        edits: list[Edit] = [edit, self._sh_size_edit(sec, self.size[sec.index], new_size)]
        self.size[sec.index] = new_size
        return edits

    def _sh_size_edit(self, sec: Section, old: int, new: int) -> BytesEdit:
        dt = S.shdr_dtype(self.image.endian)
        assert dt.fields is not None
        field = int(self.image.ehdr["e_shoff"]) + sec.index * dt.itemsize + dt.fields["sh_size"][1]
        order = byteorder(self.image.byteorder)
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
            hit = (S.r_type(rows["r_info"]) == S.R_PPC64_REL24) & np.isin(rows["r_offset"], offsets)
            found = np.flatnonzero(hit)
            if len(found) != len(offsets):
                raise ImageError(
                    f"{image.path}: {rsec.name}: expected {len(offsets)} R_PPC64_REL24 for the nopped call slots, "
                    f"found {len(found)}"
                )
            edits += self.remove(rsec, found, "R_PPC64_REL24 of a nopped call slot")
        return edits


# -- records --------------------------------------------------------------------------------


def _drop_records(image: Image, scan: Scan, tables: _RelaTables, sites: Sequence[Site]) -> tuple[list[Edit], int]:
    """Edits that drop the records of ``sites``, found where the scan read them
    (``Scan.records.tables``), and how many table entries they take out."""
    if not sites:
        return [], 0
    want = np.unique(np.array([s.record for s in sites], dtype=np.uint64))
    if image.type == S.ET_REL:
        edits, found, rows = _drop_rel_records(image, scan, tables, want)
    else:
        edits, found, rows = _drop_linked_records(image, scan, tables, want)
    if len(found) != len(want):
        missing = int(np.setdiff1d(want, found)[0])
        raise ImageError(f"{image.path}: --drop-records: no record table entry names {missing:#x}")
    return edits, rows


def _drop_rel_records(
    image: Image, scan: Scan, tables: _RelaTables, want: np.ndarray
) -> tuple[list[Edit], np.ndarray, int]:
    """Relocatable: the record's R_PPC64_ADDR64 leaves its ``.rela`` section, the slot stays 0."""
    edits: list[Edit] = []
    found = []
    for t in scan.records.tables:
        rsec = image.section(t.section)
        hit = np.flatnonzero(np.isin(t.values, want))
        if rsec is None or not len(hit):
            continue
        edits += tables.remove(rsec, hit, "record of a nopped site")
        found.append(t.values[hit])
    rows = sum(len(f) for f in found)
    return edits, np.unique(np.concatenate(found)) if found else np.zeros(0, np.uint64), rows


def _drop_linked_records(
    image: Image, scan: Scan, tables: _RelaTables, want: np.ndarray
) -> tuple[list[Edit], np.ndarray, int]:
    """Linked: zero the table slots; move their RELATIVE relocations out of what relocate() applies."""
    edits: list[Edit] = []
    found = []
    slot_addrs = []
    for t in scan.records.tables:
        hit = np.flatnonzero(np.isin(t.values, want))
        if t.addr is None or t.file_offset is None or not len(hit):
            continue
        found.append(t.values[hit])
        slot_addrs.append(np.uint64(t.addr) + hit.astype(np.uint64) * np.uint64(8))
        for i in hit.tolist():
            off = t.file_offset + 8 * i
            old = bytes(image.data[off : off + 8])
            if old != bytes(8):
                edits.append(BytesEdit(off, old, bytes(8), f"{t.section} entry"))
    if not found:
        return edits, np.zeros(0, np.uint64), 0
    edits += _move_relatives(image, tables, np.concatenate(slot_addrs))
    return edits, np.unique(np.concatenate(found)), sum(len(f) for f in found)


def _move_relatives(image: Image, tables: _RelaTables, slot_addrs: np.ndarray) -> list[Edit]:
    """reloc_64.S walks DT_RELACOUNT entries (before 6.0) or all DT_RELASZ bytes (6.0 and later,
    RELATIVE and UADDR64), storing each addend over its target whatever the target holds. Moving
    the entries past the end of the table and lowering both keeps either walk away from them."""
    rela = image.section(".rela.dyn")
    if rela is None:
        return []  # a static executable: its table holds link-time addresses, no relocation
    rows = tables.current(rela)
    relative = S.r_type(rows["r_info"]) == S.R_PPC64_RELATIVE
    moved = np.flatnonzero(relative & np.isin(rows["r_offset"], slot_addrs))
    if not len(moved):
        return []
    counted = int(np.count_nonzero(moved < (dynamic_value(image, S.DT_RELACOUNT) or 0)))
    edits = tables.remove(rela, moved, "RELATIVE of a dropped record", keep_tail=True)
    return edits + _dynamic_edits(image, len(moved), counted)


def _dynamic_edits(image: Image, removed: int, removed_counted: int) -> list[Edit]:
    """Lower DT_RELASZ by the removed entries and DT_RELACOUNT by those it counted. ``.dynamic`` is
    read by section: these kernels have no PT_DYNAMIC segment."""
    dyn = image.section(".dynamic")
    if dyn is None:
        raise ImageError(f"{image.path}: --drop-records: .rela.dyn without .dynamic")
    table = image.table(dyn, S.dyn_dtype(image.endian), ".dynamic")
    entsize = dynamic_value(image, S.DT_RELAENT) or 24
    order = byteorder(image.byteorder)
    edits: list[Edit] = []
    for tag, name, less in (
        (S.DT_RELASZ, "DT_RELASZ", removed * entsize),
        (S.DT_RELACOUNT, "DT_RELACOUNT", removed_counted),
    ):
        hit = np.flatnonzero(table["d_tag"] == tag)
        if not len(hit) or not less:
            continue
        i = int(hit[0])
        old = int(table["d_val"][i])
        field = dyn.offset + i * table.dtype.itemsize + 8
        edits.append(BytesEdit(field, old.to_bytes(8, order), (old - less).to_bytes(8, order), name))
    return edits


# -- ool stubs ------------------------------------------------------------------------------


def _stub_counts(
    image: Image, before: Scan, removed: int, changed: bool, content: bytes | bytearray
) -> tuple[tuple[StubCount, ...], tuple[StubCount, ...]] | None:
    """ool: the stub areas before and after ``removed`` records went (``changed``: the record
    tables were edited), read from the new file itself. Dropping records only leaves stubs spare;
    an image whose records exceed its stubs (ftrace_init_ool_stub's WARN_ON, then ftrace bug) is
    refused all the same, whoever made it so."""
    if before.generation is not Generation.OOL:
        return None
    if image.type == S.ET_REL:
        sec = image.section("__patchable_function_entries")
        count = sec.size // 8 if sec is not None else 0
        return (StubCount(".stubs", count, before.records.count),), (
            StubCount(".stubs", count, before.records.count - removed),
        )
    areas = before.stubs
    if changed:
        areas = scan(Image.from_bytes(image.path, bytes(content)), generation=Generation.OOL).stubs
    short = [a for a in areas if not a.covers]
    if short:
        raise ImageError(
            f"{image.path}: {short[0].name}: {short[0].count} stubs, {short[0].used + short[0].need} records want "
            "one: ftrace_init_ool_stub would fail (ftrace bug)"
        )
    counts = [tuple(StubCount(a.name, a.count, a.used) for a in s) for s in (before.stubs, areas)]
    return counts[0], counts[1]


# -- reading the result back ----------------------------------------------------------------


def _read_back(
    content: bytes | bytearray, image: Image, sites: Sequence[Site], goals: Mapping[Variant, SiteState]
) -> None:
    """Read every changed site back from ``content``: its slots must now hold its goal state.

    This reads the words themselves rather than re-running the scanner, because a pre-nopped site
    whose records were dropped, in a function with no symbol, is invisible to a scan. A site that
    does not read back is mcountrw's own mistake: :class:`InternalError`."""
    if not sites:
        return
    order = byteorder(image.byteorder)
    dt = np.dtype("<u4" if order == "little" else ">u4")
    raw = np.frombuffer(content, np.uint8)
    b_off = np.array([s.file_offset for s in sites], dtype=np.int64)
    ok = np.ones(len(sites), bool)
    variants = {s.variant for s in sites}
    for v in variants:
        idx = np.arange(len(sites)) if len(variants) == 1 else np.flatnonzero([s.variant is v for s in sites])
        lay = LAYOUTS[v]
        for slot, want in zip(lay.state_slots, words_of(v, goals[v]), strict=True):
            off = b_off[idx] + (lay.offset(slot) or 0)
            words = raw[off[:, None] + np.arange(4)].copy().view(dt).ravel().astype(np.uint32)
            ok[idx] &= _holds(words, want)
    bad = np.flatnonzero(~ok)
    if len(bad):
        site = sites[int(bad[0])]
        lay = LAYOUTS[site.variant]
        found = []
        for slot in lay.state_slots:
            at = site.file_offset + (lay.offset(slot) or 0)
            found.append(insn_kind(int.from_bytes(content[at : at + 4], order), True, True))
        raise InternalError(
            f"{site.place_text} ({site.function or '?'}): read back {lay.state_of(tuple(found)).value}, "
            f"planned {goals[site.variant].value} ({len(bad)} sites differ)"
        )


def _holds(words: np.ndarray, want: Insn) -> np.ndarray:
    if want is Insn.CALL:
        return ppc.bl_mask(words)
    if want is Insn.STUB:
        return ppc.b_mask(words)
    same: np.ndarray = words == word_for(want, 0, 0)
    return same
