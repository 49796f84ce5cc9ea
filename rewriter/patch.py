"""Apply a plan to an image: plan writes become words, plus the relocation and record edits that
keep a rewritten file loadable.

Strategy: select sites, ask the planner for one plan that takes them to the target state, then
walk the plan stage by stage on a copy of the file:

* every slot write is a compare-and-swap against the word the scan found (``edits.WordWrite``);
* in a relocatable file (.o/.ko) a call slot that becomes ``nop`` loses its ``R_PPC64_REL24``:
  the loader would otherwise patch a branch offset into the nop. The entry is taken out of its
  ``.rela`` table (not turned into ``R_PPC64_NONE``, which the ppc64 module loader refuses:
  ``Unknown ADD relocation: 0``) in the same stage as the write, so every stage image loads;
* with ``drop_records``, sites whose call slot ends up ``nop`` lose their records, because the
  kernel checks every recorded site at boot and stops ftrace at the first that is not
  ``bl _mcount``: in a linked image the ``__mcount_loc`` entry is zeroed (ftrace_process_locs
  skips zeros) and its ``R_PPC64_RELATIVE`` moves past the ``DT_RELACOUNT`` entries that
  ``arch/powerpc/kernel/reloc_64.S`` rewrites unconditionally at boot; in a relocatable file the
  ``.rela__mcount_loc`` entry goes, so the record stays 0;
* a signed module loses its signature only when asked (``strip_signature``).

The result is in memory; ``rewriter.rewrite`` writes files. No printing, no file I/O here.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from rewriter import ppc
from rewriter.edits import BytesEdit, Edit, RelaEdit, Truncate, WordWrite, apply_edits
from rewriter.elf import structs as S
from rewriter.elf.image import Image, Section
from rewriter.elf.symbols import reloc_target_places
from rewriter.errors import ImageError, PlanRejected
from rewriter.generations import LAYOUTS, TWO_SLOT_STATES, Variant
from rewriter.plan import Cmodx, Plan, Route, SiteRequest, Write, plan
from rewriter.sites import Scan, Site
from rewriter.states import Insn, SiteState, Slot, word_for


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
        chosen = chosen or (site.section_index, site.offset) in self.places
        return chosen and not any(fnmatch.fnmatchcase(name, g) for g in self.exclude)


@dataclass(frozen=True)
class Options:
    target: SiteState
    route: Route | None = None
    cmodx: Cmodx = Cmodx.V3_1
    drop_records: bool = False
    strip_signature: bool = False


@dataclass(frozen=True)
class Rewrite:
    """What a rewrite did. ``content`` is the whole new file (decompressed); ``stages`` the file
    after each stage of the plan (relocation edits included, record and signature edits not)."""

    content: bytes | bytearray  # the bytearray the edits were applied to: a 46 MB copy saved
    stages: tuple[bytes, ...]
    edits: tuple[Edit, ...]
    plan: Plan | None
    barriers: tuple[tuple[int, str], ...]
    sites: tuple[Site, ...]  # the sites changed, as they were before
    unchanged: int  # selected sites already at the target


def rewrite(image: Image, scan: Scan, selection: Selection, options: Options, keep_stages: bool = False) -> Rewrite:
    """Plan and apply; ``keep_stages`` keeps a copy of the file after each stage (``--stage-images``)."""
    selected = list(scan.sites) if selection.everything else [s for s in scan.sites if selection.matches(s)]
    todo = [s for s in selected if s.state is not options.target]
    # Records go for every selected site whose call slot ends up nop, including sites already
    # there: on a 6.6+ patchable-entry kernel the compiler's two nops *are* the nopped state.
    call_gone = TWO_SLOT_STATES[options.target][1] is not Insn.CALL
    gone = [s for s in selected if s.recorded] if options.drop_records and call_gone else []
    if image.signature is not None and (todo or gone) and not options.strip_signature:
        raise ImageError(
            f"{image.path}: signed module: any edit invalidates its signature and the kernel would refuse it "
            "(pass --strip-signature to drop it; undo restores it)"
        )
    for s in todo:
        if s.state is SiteState.UNKNOWN:
            raise ImageError(
                f"{image.path}: {s.place_text} ({s.function or '?'}): slots hold unknown words; not touching it"
            )
    groups = _groups(todo)
    the_plan = _make_plan(image, groups, options) if todo else None
    buf = bytearray(image.data)
    edits: list[Edit] = []
    stages: list[bytes] = []
    tables = _RelaTables(image)
    if the_plan is not None:
        for stage_writes in _resolve(image, scan, groups, the_plan):
            stage_edits: list[Edit] = list(stage_writes)
            if image.type == S.ET_REL:
                stage_edits += tables.drop_call_relocations(image, todo, stage_writes)
            buf = apply_edits(buf, stage_edits, image.byteorder)
            edits += stage_edits
            if keep_stages:
                stages.append(bytes(buf))
    final: list[Edit] = _drop_records(image, tables, gone)
    if options.strip_signature and image.signature is not None and (todo or gone):
        tail = bytes(image.data[image.elf_end :])
        final.append(Truncate(image.elf_end, tail, "module signature"))
    buf = apply_edits(buf, final, image.byteorder)
    edits += final
    barriers = () if the_plan is None else tuple((i, b.value) for i, b in enumerate(the_plan.barriers))
    return Rewrite(buf, tuple(stages), tuple(edits), the_plan, barriers, tuple(todo), len(selected) - len(todo))


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


def _make_plan(image: Image, groups: Sequence[Sequence[Site]], options: Options) -> Plan:
    """One plan whose ``sites`` are the groups: a plan's stages and barriers depend only on which
    requests occur, not on how many sites make each one."""
    requests = [SiteRequest(g[0].variant, g[0].state, options.target) for g in groups]
    try:
        return plan(requests, options.route, options.cmodx, runtime=True)
    except PlanRejected:
        # No legal *runtime* route (e.g. under CMODX 3.0); a file is not executing, so the
        # offline plan, which only avoids `broken`, is still correct for it.
        try:
            return plan(requests, options.route, options.cmodx, runtime=False)
        except PlanRejected as e:
            raise PlanRejected(f"{image.path}: {e}") from None


# -- plan writes -> words -------------------------------------------------------------------


class _Step(NamedTuple):
    """One write of a group's path, with everything that does not depend on the site's address."""

    slot: str
    delta: int
    before: str
    after: str
    old_word: int | None  # None: a call, encoded per address
    new_word: int | None


def _resolve(image: Image, scan: Scan, groups: Sequence[Sequence[Site]], the_plan: Plan) -> list[list[WordWrite]]:
    """Turn the plan's symbolic writes (one per group) into words at file offsets, site by site."""
    entries = sorted(scan.mcount_entries)
    states = [TWO_SLOT_STATES[g[0].state] for g in groups]  # (A, B) of each group as the plan goes
    out: list[list[WordWrite]] = []
    for stage_no, stage in enumerate(the_plan.stages):
        writes: list[WordWrite] = []
        for w in stage:
            group = groups[w.site]
            st, states[w.site] = _step(group[0], w, states[w.site])
            for site in group:
                offset = site.file_offset + st.delta
                addr = None if site.addr is None else site.addr + st.delta
                here = addr if addr is not None else site.offset + st.delta
                old = st.old_word if st.old_word is not None else _call(image, here, site, entries)
                new = st.new_word if st.new_word is not None else _call(image, here, site, entries)
                writes.append(
                    WordWrite(stage_no, offset, addr, site.section, site.offset + st.delta, site.function, st.slot,
                              old, new, st.before, st.after)
                )  # fmt: skip
        out.append(writes)
    return out


def _step(site: Site, w: Write, ab: tuple[Insn, Insn]) -> tuple[_Step, tuple[Insn, Insn]]:
    delta = site.slot_delta(w.slot)
    if delta is None:
        raise PlanRejected(
            f"{site.place_text}: plan writes slot {w.slot.value}, which a {site.variant.value} site lacks"
        )
    a, b = ab
    state_of = LAYOUTS[site.variant].state_of
    before = state_of((a, b)).value
    if w.slot is Slot.A:
        a = w.new
    elif w.slot is Slot.B:
        b = w.new
    old_word = None if w.old is Insn.CALL else word_for(w.old, 0, 0)
    new_word = None if w.new is Insn.CALL else word_for(w.new, 0, 0)
    return _Step(w.slot.value, delta, before, state_of((a, b)).value, old_word, new_word), (a, b)


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
        field = int(self.image.ehdr["e_shoff"]) + sec.index * dt.itemsize + dt.fields["sh_size"][1]
        order = self.image.byteorder
        return BytesEdit(field, old.to_bytes(8, order), new.to_bytes(8, order), f"{sec.name} sh_size")  # type: ignore[arg-type]

    def drop_call_relocations(self, image: Image, sites: Sequence[Site], writes: Sequence[WordWrite]) -> list[Edit]:
        """REL24 relocations of call slots this stage turns into ``nop``."""
        nopped = {(w.section, w.section_offset) for w in writes if w.slot == "B" and w.new == ppc.NOP}
        if not nopped:
            return []
        by_target: dict[int, list[int]] = {}
        for s in sites:
            if (s.section, s.offset) in nopped:
                by_target.setdefault(s.section_index, []).append(s.offset)
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


def _drop_records(image: Image, tables: _RelaTables, sites: Sequence[Site]) -> list[Edit]:
    if not sites:
        return []
    if image.type == S.ET_REL:
        return _drop_rel_records(image, tables, sites)
    return _drop_linked_records(image, tables, sites)


def _drop_rel_records(image: Image, tables: _RelaTables, sites: Sequence[Site]) -> list[Edit]:
    from rewriter.elf.symbols import rel_place

    edits: list[Edit] = []
    for name, adjust in ((".rela__mcount_loc", 0), (".rela__patchable_function_entries", 4)):
        rsec = image.section(name)
        if rsec is None:
            continue
        rows = tables.current(rsec)
        places = reloc_target_places(image, rows) + np.uint64(adjust)
        want = rel_place(np.array([s.section_index for s in sites]), np.array([s.offset for s in sites]))
        edits += tables.remove(rsec, np.flatnonzero(np.isin(places, want)), "record of a nopped site")
    return edits


def _drop_linked_records(image: Image, tables: _RelaTables, sites: Sequence[Site]) -> list[Edit]:
    """Zero the ``__mcount_loc`` entries; move their RELATIVE relocations out of DT_RELACOUNT."""
    table_addr, table = _linked_record_table(image)
    want = np.array([s.addr for s in sites], dtype=np.uint64)
    idx = np.flatnonzero(np.isin(table, want))
    order = image.byteorder
    edits: list[Edit] = []
    entry_addrs = np.uint64(table_addr) + idx.astype(np.uint64) * np.uint64(8)
    table_off = image.offset_of(table_addr)
    for i, value in zip(idx.tolist(), table[idx].tolist(), strict=True):
        edits.append(BytesEdit(table_off + 8 * i, value.to_bytes(8, order), bytes(8), "__mcount_loc entry"))  # type: ignore[arg-type]
    rela = image.section(".rela.dyn")
    if rela is None or not len(idx):
        return edits
    rows = tables.current(rela)
    relative = S.r_type(rows["r_info"]) == S.R_PPC64_RELATIVE
    moved = np.flatnonzero(relative & np.isin(rows["r_offset"], entry_addrs))
    if not len(moved):
        return edits  # a static executable: its __mcount_loc holds link-time addresses, no relocation
    # reloc_64.S walks DT_RELACOUNT entries (before 6.0) or all DT_RELASZ bytes (6.0 and later,
    # RELATIVE and UADDR64), rewriting each target whatever it holds. Moving the entries past the
    # end of the table and lowering both keeps either walk away from them.
    edits += tables.remove(rela, moved, "RELATIVE of a dropped __mcount_loc entry", keep_tail=True)
    edits += _dynamic_edits(image, len(moved), int(np.count_nonzero(moved < _dyn_value(image, S.DT_RELACOUNT))))
    return edits


def _dyn_value(image: Image, tag: int) -> int:
    dyn = image.section(".dynamic")
    if dyn is None:
        return 0
    table = image.table(dyn, S.dyn_dtype(image.endian), ".dynamic")
    hit = np.flatnonzero(table["d_tag"] == tag)
    return int(table["d_val"][hit[0]]) if len(hit) else 0


def _dynamic_edits(image: Image, removed: int, removed_counted: int) -> list[Edit]:
    """Lower DT_RELASZ by the removed entries and DT_RELACOUNT by those it counted."""
    dyn = image.section(".dynamic")
    if dyn is None:
        raise ImageError(f"{image.path}: --drop-records: .rela.dyn without .dynamic")
    table = image.table(dyn, S.dyn_dtype(image.endian), ".dynamic")
    entsize = _dyn_value(image, S.DT_RELAENT) or 24
    order = image.byteorder
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
        edits.append(BytesEdit(field, old.to_bytes(8, order), (old - less).to_bytes(8, order), name))  # type: ignore[arg-type]
    return edits


def _linked_record_table(image: Image) -> tuple[int, np.ndarray]:
    syms = image.symbols
    if syms is not None:
        lo, hi = syms.find("__start_mcount_loc"), syms.find("__stop_mcount_loc")
        if len(lo) and len(hi):
            start, stop = int(syms.table["st_value"][lo[0]]), int(syms.table["st_value"][hi[0]])
            off = image.offset_of(start)
            dt = S.addr_dtype(image.endian)
            return start, np.frombuffer(image.data, dt, count=(stop - start) // 8, offset=off).astype(np.uint64)
    sec = image.section("__mcount_loc")
    if sec is None:
        raise ImageError(f"{image.path}: --drop-records: no __mcount_loc table")
    return sec.addr, image.table(sec, S.addr_dtype(image.endian), "__mcount_loc").astype(np.uint64)
