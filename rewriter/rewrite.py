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
  image the record table's slot is zeroed (ftrace_process_locs skips zeros; on patchable only
  its newer loop, ``rewriter.locs``, and the older one is refused) and its
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

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from itertools import repeat
from operator import attrgetter
from pathlib import Path
from typing import Final, NamedTuple

import numpy as np

from rewriter import ppc
from rewriter.edits import Edit, Truncate, WordWrite, apply_edits
from rewriter.elf import structs as S
from rewriter.elf.image import Image, Kind
from rewriter.elf.symbols import aliases as symbol_aliases
from rewriter.errors import (
    ArgumentError,
    ImageError,
    InternalError,
    LogError,
    NoRoute,
    PlanRejected,
    RewriteError,
    WordMismatch,
)
from rewriter.generations import LAYOUTS, TWO_SLOT_STATES, Generation, Variant
from rewriter.globs import ftrace_glob
from rewriter.heap import collector_paused
from rewriter.known import Moment, Origin, RelaEntry, SiteLine, Touched, lines_after
from rewriter.locs import ZERO_ADJUSTED, Locs, zero_records_fail
from rewriter.plan import Cmodx, Plan, Route, SiteRequest, Write, check_route, plan
from rewriter.prose import agreeing, and_more, counted
from rewriter.recordedits import RelaTables, Taken, drop_records, restore_records
from rewriter.records import RECORD_SIZE, record_section
from rewriter.sites import Scan, Site, Source, place_text, scan
from rewriter.sites import boot_state as sites_boot_state
from rewriter.states import Insn, SiteState, Slot, insn_kind, word_for, words_text

BOOTED_KINDS: Final = (Kind.VMLINUX, Kind.MODULE)
"""Files whose records a kernel checks at boot or at module load (the boot rule applies to them)."""
_BRANCHES: Final = (Insn.CALL, Insn.STUB)  # words encoded per address


@dataclass(frozen=True)
class Selection:
    """Which sites to change: all, or those matching any ``only`` glob (function names), any
    ``sections`` name, any ``addrs`` (call-slot addresses), any ``section_places`` ((section name,
    call-slot offset) pairs: ``--addr .text+0x14``, a site as scan shows it in a module or object,
    ``Site.place_text``) or any ``places`` ((section index, call-slot offset) pairs, exact: what a
    policy computes), minus ``exclude`` globs.

    ``section_places`` names sections as scan does, by name: a name that several sections share
    (scan shows each of their sites under it alike) selects the site at that offset in each, as
    ``--section`` selects all of them. In a linked image a section and offset is as well defined
    as the address (``sh_addr`` + offset), and scan's JSON shows it too, so it selects there
    as well: refusing it would be a rule with no reason behind it.

    A glob matches a function by any of its names (``aliases``, the image's: :meth:`named_in`): a
    site carries one name of its start (the one kallsyms gives: ``sys_ni_syscall``, one of 46 names
    on 6.1), and ``--exclude 'compat_sys_*'`` means those functions whichever name the site has."""

    only: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    sections: tuple[str, ...] = ()
    addrs: frozenset[int] = frozenset()
    places: frozenset[tuple[int, int]] = frozenset()
    section_places: frozenset[tuple[str, int]] = frozenset()
    aliases: Mapping[str, tuple[str, ...]] = field(default_factory=dict, compare=False)
    listed: Mapping[int, str] = field(default_factory=dict, compare=False)  # Scan.listed: sites in no function

    def __post_init__(self) -> None:
        # An empty glob matched the one name a site in no function that ftrace does not list has,
        # the empty one: `nop --only ''` dropped 6.12's 261 weak-body records, `plan --image` selected them.
        for option, globs in (("--only", self.only), ("--exclude", self.exclude)):
            if "" in globs:
                raise ArgumentError(f"{option} '': an empty glob names no function (give a name or a glob)")

    def named_in(self, image: Image, listed: Mapping[int, str]) -> Selection:
        """This selection with ``image``'s aliases, which its globs then match as well, and the
        names ftrace lists its sites in no function under (``Scan.listed``: a weak body's record is
        listed, and set_ftrace_filter matches it, by the nearest symbol before it)."""
        if not (self.only or self.exclude):
            return self
        return replace(self, aliases=symbol_aliases(image), listed=listed)

    @property
    def chooses(self) -> bool:
        """Whether any part picks sites (else every site is a candidate, before ``exclude``)."""
        return bool(self.only or self.sections or self.addrs or self.places or self.section_places)

    @property
    def everything(self) -> bool:
        return not (self.chooses or self.exclude)

    def matches(self, site: Site) -> bool:
        return bool(self.select((site,)))

    def select(self, sites: Iterable[Site]) -> list[Site]:
        """The sites this selection matches, in order (the globs compiled once, not per site)."""
        if self.everything:
            return list(sites)
        only, exclude = _globs(self.only), _globs(self.exclude)
        anything = not self.chooses
        sections, addrs, places, named = self.sections, self.addrs, self.places, self.section_places
        aliases, listed = self.aliases, self.listed
        out = []
        for site in sites:
            name = site.function or listed.get(site.place, "")
            others = aliases.get(name, ()) if aliases else ()
            chosen = (
                anything or (only is not None and _named(only, name, others)) or site.section in sections
                or site.addr in addrs or (site.section_index, site.offset) in places  # offset: in its section
                or (site.section, site.offset) in named
            )  # fmt: skip
            if chosen and (exclude is None or not _named(exclude, name, others)):
                out.append(site)
        return out


def _named(match: Callable[[str], re.Match[str] | None], name: str, others: tuple[str, ...]) -> bool:
    """Whether ``match`` takes a function's name or any of its ``others`` (most functions have
    none: no generator is started for them, a third of an ``--exclude`` over a vmlinux's sites)."""
    return match(name) is not None or (bool(others) and any(match(n) is not None for n in others))


def _globs(patterns: Sequence[str]) -> Callable[[str], re.Match[str] | None] | None:
    """One matcher for any of the globs ``patterns`` (case-sensitive), or None: ftrace's globs, as a
    policy's (:func:`rewriter.globs.ftrace_glob`; fnmatch took ``\\`` for itself, the kernel for an escape)."""
    if not patterns:
        return None
    return re.compile("|".join(f"(?:{ftrace_glob(g).pattern})" for g in patterns), re.DOTALL).fullmatch


@dataclass(frozen=True)
class Options:
    """``target`` is a state name (``nopped`` means every word of the site a nop: on ool, whose
    one word has no ``nopped`` state, that is ``disabled``). ``drop_records`` drops the records of
    sites whose call slot ends up nop; ``keep_records`` allows leaving a recorded place holding
    words the kernel refuses at boot (for negative controls only). ``check_r0`` walks r0 first
    and refuses to take the ``mflr r0`` from a function that reads r0 after its site
    (:func:`_check_r0_dead`)."""

    target: SiteState
    route: Route | None = None
    cmodx: Cmodx = Cmodx.V3_1
    drop_records: bool = False
    strip_signature: bool = False
    keep_records: bool = False
    check_r0: bool = False  # refuse to take the mflr r0 from a function that reads r0 after its site
    # The loop of the kernel that will load a module (rewriter.locs): prenop reads it from the
    # vmlinux of its run, apply and nop from --kernel. A module does not say which kernel loads it
    # (unknown: not checked).
    kernel_locs: Locs = Locs.UNKNOWN


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
    after each stage of the plan (relocation edits included, record edits not; a signature the
    rewrite strips is gone from every stage, which it no longer matches).
    ``dropped``: the sites whose records go, ``restored`` those whose records come back; ``stubs``
    (ool): the stub counts before and after."""

    content: bytes | bytearray  # the bytearray the edits were applied to: a 46 MB copy saved
    stages: tuple[bytes, ...]
    edits: tuple[Edit, ...]
    plan: Plan | None
    barriers: tuple[tuple[int, str], ...]
    sites: tuple[Site, ...]  # the sites whose words changed, as they were before
    unchanged: int  # selected sites already at the target
    dropped: tuple[Site, ...] = ()
    stubs: tuple[tuple[StubCount, ...], tuple[StubCount, ...]] | None = None
    restored: tuple[Site, ...] = ()  # sites whose records came back (from the patch log)
    site_lines: tuple[SiteLine, ...] = ()  # the log's `site` lines (rewriter.known)
    refused_at_boot: int = 0  # --keep-records: recorded sites left with words boot-time init refuses
    # The state each variant was taken to: the target, except where the file cannot hold it (a
    # patchable or ool site brought back for --to enabled is given its words as built, recorded).
    goals: tuple[SiteState, ...] = ()
    # Of ``restored``, the sites a scan of the new file finds recorded but not traceable (the
    # bodies of overridden weak functions: the kernel disables their records), as that scan reads them.
    restored_untraceable: tuple[Site, ...] = ()
    # --check-r0: how many sites' mflr r0 the rewrite takes, by the walk's verdict (``safe``,
    # ``unknown``; a ``live`` one refuses the rewrite); None when not asked. Empty: none is taken.
    r0_walk: Mapping[str, int] | None = None

    @property
    def signature_stripped(self) -> bool:
        """Whether the rewrite cut a module signature off (``--strip-signature`` on a signed file
        whose words changed; the option alone strips nothing)."""
        return Truncate in map(type, self.edits)  # one C loop over a vmlinux's 101,072 edits

    @property
    def word_writes(self) -> int:
        """How many of ``edits`` are the plan's word writes (the others have no stage)."""
        return list(map(type, self.edits)).count(WordWrite)  # the only kind with a stage; one C loop


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
    return words_text(words_of(variant, state))


class _Choice(NamedTuple):
    """Which sites a rewrite touches: ``todo`` change words, ``gone`` lose their records, ``back``
    get their records back (from the patch log); ``goals`` is each variant's target state."""

    selected: list[Site]
    goals: Mapping[Variant, SiteState]
    todo: list[Site]
    gone: list[Site]
    back: list[Site]


@collector_paused()
def rewrite(
    image: Image,
    scan: Scan,
    selection: Selection,
    options: Options,
    keep_stages: bool = False,
    history: Mapping[int, SiteLine] | None = None,
) -> Rewrite:
    """Plan and apply; ``keep_stages`` keeps a copy of the file after each stage (``--stage-images``).
    ``history``: the site lines of the input's patch log by place (``rewriter.known``), which say
    how to bring back what an earlier rewrite took out: a call's target and relocation, a record."""
    history = history or {}
    c = _choose(image, scan, selection, options, history)
    walked = _check_r0_dead(image, scan, _mflr_taken(image, c)) if options.check_r0 else None  # LIVE: refused
    try:
        check_route((s.variant for s in c.selected), options.route)
    except ArgumentError as e:  # a request refused for these sites, as a state they cannot take is
        raise PlanRejected(f"{image.path}: {e}") from None
    groups = _groups(c.todo)
    the_plan = _make_plan(image, groups, c.goals, options) if c.todo else None
    buf = bytearray(image.data)
    edits: list[Edit] = []
    stages: list[bytes] = []
    tables = RelaTables(image)
    stripping = options.strip_signature and image.signature is not None and bool(c.todo or c.gone or c.back)
    # A stage image is only loadable without the old signature: the words it signed have changed.
    stage_end = image.elf_end if stripping else len(buf)
    if the_plan is not None:
        for stage_writes in _resolve(image, scan, groups, the_plan):
            stage_edits: list[Edit] = list(stage_writes)
            if image.type == S.ET_REL:
                stage_edits += tables.drop_call_relocations(image, c.todo, stage_writes)
                stage_edits += tables.put_call_relocations(image, c.todo, stage_writes, history)
            buf = _apply_own(image, buf, stage_edits)
            edits += stage_edits
            if keep_stages:
                stages.append(bytes(buf[:stage_end]))
    records, rows, facts = drop_records(image, scan, tables, c.gone)
    records += restore_records(image, tables, c.back, history)
    final = list(records)
    if stripping:
        tail = bytes(image.data[image.elf_end :])
        final.append(Truncate(image.elf_end, tail, "module signature"))
    buf = _apply_own(image, buf, final)
    edits += final
    barriers = () if the_plan is None else tuple((i, b.value) for i, b in enumerate(the_plan.barriers))
    stubs = _stub_counts(image, scan, rows - len(c.back), bool(records), buf)
    _read_back(buf, image, c.todo, c.goals)
    back_untraceable = _read_back_restored(buf, image, scan, c, tables.put_calls)
    lines = lines_after(_touched(c, tables.taken, facts), history)  # what bringing each back needs
    return Rewrite(
        buf, tuple(stages), tuple(edits), the_plan, barriers, tuple(c.todo), len(c.selected) - len(c.todo),
        tuple(c.gone), stubs, tuple(c.back), lines,
        len(refused_at_boot(image, c.todo, c.gone, c.goals)) if options.keep_records else 0,
        tuple(dict.fromkeys(c.goals[v] for v in sorted(c.goals, key=attrgetter("value")))), back_untraceable,
        walked,
    )  # fmt: skip


def _apply_own(image: Image, buf: bytearray, edits: Sequence[Edit]) -> bytearray:
    """:func:`apply_edits` of edits this rewrite made from ``image`` itself. Each compares the
    bytes it replaces with what it read from the image, so they can only disagree where two of
    them touch the same bytes, which a well-formed file never makes them do: a record table whose
    bounds run into ``.rela.dyn`` (a corrupt ``__stop_mcount_loc``) had the table's slots and the
    moved relocations overwrite each other. Bad input, then, and said of the file."""
    try:
        return apply_edits(buf, edits, image.byteorder)
    except WordMismatch as e:
        raise ImageError(
            f"{image.path}: two of the rewrite's edits touch the same bytes ({e}): a table of the file "
            "overlaps another (corrupt bounds?)"
        ) from None


def _choose(
    image: Image, scan: Scan, selection: Selection, options: Options, history: Mapping[int, SiteLine]
) -> _Choice:
    if options.drop_records and options.keep_records:
        raise RewriteError(f"{image.path}: --drop-records and --keep-records contradict each other")
    selected = selection.select(scan.sites)
    if history:
        selected = [_with_target(s, history) for s in selected]
    restorable = _restorable(selected, history, options)
    goals = _goals(image, selected, options.target, restoring=bool(restorable), log=scan.log)
    if len(goals) == 1:  # the usual case: one layout, and no enum hashed per site
        (goal,) = goals.values()
        todo = [s for s in selected if s.state is not goal]
    else:
        todo = [s for s in selected if s.state is not goals[s.variant]]
    gone = _records_to_drop(selected, goals) if options.drop_records else []
    back = [s for s in restorable if goals[s.variant] is LAYOUTS[s.variant].built]
    if image.signature is not None and (todo or gone or back) and not options.strip_signature:
        raise ImageError(
            f"{image.path}: signed module: any edit invalidates its signature and the kernel would refuse it "
            "(pass --strip-signature to drop it; undo restores it)"
        )
    _check_nop_keeps_records(image, selected, todo, options)
    _check_boot_rule(image, selected, todo, gone, goals, options)
    _check_zero_records(image, scan, gone, options.kernel_locs)
    for s in todo:
        if s.state is SiteState.UNKNOWN:
            raise ImageError(
                f"{image.path}: {s.place_text} ({s.function or '?'}): slots hold unknown words; not touching it"
            )
    return _Choice(selected, goals, todo, gone, back)


def _with_target(site: Site, history: Mapping[int, SiteLine]) -> Site:
    """A linked site with no call now (nopped) calls again where it called in the original file."""
    if site.call_target is not None or site.addr is None:
        return site
    line = history.get(site.place)
    if line is None or line.origin.call_target is None:
        return site
    return site._replace(call_target=line.origin.call_target)


def _restorable(selected: Sequence[Site], history: Mapping[int, SiteLine], options: Options) -> list[Site]:
    """Selected sites that an earlier rewrite unrecorded and whose records the log can put back,
    when the target brings sites back (not ``nopped``, not with ``--drop-records``)."""
    if not history or options.target is SiteState.NOPPED or options.drop_records:
        return []
    out = []
    for s in selected:
        line = None if s.recorded else history.get(s.place)
        if line is not None and line.original.recorded and line.origin.record:
            out.append(s)
    return out


def _touched(c: _Choice, calls: Mapping[int, RelaEntry], records: Taken) -> list[Touched]:
    """Every site the rewrite changed (words, record gone or back), as :func:`lines_after` takes
    them; ``calls`` and ``records``: the call relocations and the records it took out."""
    slots, relocations = records
    gone = {s.place: -1 if s.record is None else s.record for s in c.gone}  # -1: no place
    back = {s.place for s in c.back}
    words = {s.place for s in c.todo}
    single = next(iter(c.goals.values())) if len(c.goals) == 1 else None  # no enum hashed per site
    afters = {} if single is None else {True: Moment(single, True), False: Moment(single, False)}
    out = []
    for s in c.todo:  # a site at a time, one tuple each: a vmlinux pre-nop changes 33,689 sites
        place = s.place
        record = gone.get(place)
        recorded = (s.recorded and record is None) or place in back
        record = -1 if record is None else record
        after = afters[recorded] if single is not None else Moment(c.goals[s.variant], recorded)
        origin = Origin(s.call_target, calls.get(place), slots.get(record), relocations.get(record))
        out.append(Touched(s, after, origin))
    for s in c.gone:  # records dropped of sites already at the target
        if s.place not in words:
            record = -1 if s.record is None else s.record
            origin = Origin(s.call_target, calls.get(s.place), slots.get(record), relocations.get(record))
            out.append(Touched(s, Moment(s.state, False), origin))
    for s in c.back:  # records back of sites already at the target
        if s.place not in words:
            out.append(Touched(s, Moment(s.state, True), Origin(s.call_target, calls.get(s.place))))
    return out


def _goals(
    image: Image, sites: Sequence[Site], target: SiteState, restoring: bool = False, log: Path | None = None
) -> Mapping[Variant, SiteState]:
    """The target state of each variant present. A patchable or ool site is never made to call the
    tracer offline: the kernel's boot-time init accepts only nops at a recorded place, a call left
    unrecorded would never be managed by ftrace, and an ool ``b stub`` would enter a stub that only
    the boot fills (the file's stubs are zero). The running kernel enables sites itself, so there
    ``enabled`` can only mean bringing back sites an earlier rewrite unrecorded (``restoring``):
    their words as built, and their records back. ``log``: the patch log read for the image
    (``Scan.log``), if any, which the refusal names: it knew no such site among those selected."""
    goals = {}
    for variant in _variants(sites):
        goal = target_state(variant, target)
        lay = LAYOUTS[variant]
        if lay.kernel_only(goal):
            if not restoring:
                raise PlanRejected(
                    f"{image.path}: {variant.value}: {goal.value} ({_words_text(variant, goal)}) is not written "
                    f"offline: the kernel's boot-time ftrace_init_nop accepts only {_words_text(variant, lay.built)} "
                    "at a recorded place (ftrace bug otherwise) and enables sites itself at run time "
                    f"(echo function > current_tracer); {_nothing_to_bring_back(log)}"
                )
            goal = lay.built
        goals[variant] = goal
    return goals


def _variants(sites: Iterable[Site]) -> list[Variant]:
    """The variants of ``sites``, each once, first seen first, told apart by identity: an Enum
    member's hash is Python code, and a set of a vmlinux's 33,689 variants hashed each of them."""
    return list({id(v): v for v in map(_VARIANT, sites)}.values())


_VARIANT: Final = attrgetter("variant")


def _nothing_to_bring_back(log: Path | None) -> str:
    """The end of ``--to enabled``'s refusal on a patchable or ool image: how sites come back, or,
    when the image's patch log was read, that it knows none among those selected (a second
    ``apply --to enabled`` after one that brought them all back said to read the log it had read)."""
    if log is None:
        return "sites an earlier rewrite unrecorded come back this way when their patch log is read"
    return (
        f"its patch log {log} was read, and no selected site is one an earlier rewrite unrecorded: "
        "each has its record (brought back already?)"
    )


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


def refused_at_boot(
    image: Image, todo: Sequence[Site], gone: Sequence[Site], goals: Mapping[Variant, SiteState]
) -> list[Site]:
    """The sites of a vmlinux or module that would keep their record over words other than the
    ones the compiler left, which the kernel's boot-time init refuses (an executable or object is
    never booted). Refused unless ``--keep-records`` asks for that image on purpose."""
    if image.kind not in BOOTED_KINDS:
        return []
    dropped = {s.place for s in gone}
    return [
        s for s in todo if s.recorded and s.place not in dropped and goals[s.variant] is not LAYOUTS[s.variant].built
    ]


def _check_zero_records(image: Image, scan: Scan, gone: Sequence[Site], kernel: Locs) -> None:
    """Refuse to drop records from a patchable vmlinux whose ftrace_process_locs() adds 4 before
    it tests a record for zero (``Scan.zero_records_fail``, ``rewriter.locs``), or from a patchable
    module that such a kernel (``kernel``, its vmlinux's) will load: a dropped record is a zeroed
    slot, and that kernel would take it for address 4 and turn ftrace off."""
    module = image.kind is Kind.MODULE and zero_records_fail(scan.generation, kernel)
    if gone and (scan.zero_records_fail or module):
        s = gone[0]
        where, when = ("; read in the vmlinux named with it", "once it loads") if module else ("", "at boot")
        raise PlanRejected(
            f"{image.path}: {s.place_text} ({s.function or '?'}): dropping a record zeroes its slot, "
            f"but {ZERO_ADJUSTED} (the loop before the 2025 change{where}): ftrace would be off {when}; "
            "this kernel's records cannot be dropped offline"
        )


_PATCHED_WHEN: Final = {Kind.VMLINUX: "at boot", Kind.MODULE: "when it loads", Kind.OBJECT: "once linked in"}
"""When the kernel patches a recorded site of each kind of file (an executable's records are only
link-time addresses: no kernel reads them)."""


def _check_nop_keeps_records(image: Image, selected: Sequence[Site], todo: Sequence[Site], options: Options) -> None:
    """Refuse `nop` of patchable or ool sites without --drop-records where a kernel reads the
    records: the sites already are nop as built, and their records keep them traceable, so
    "nothing to change, already nopped" would read as pre-nopped when nothing was."""
    when = _PATCHED_WHEN.get(image.kind)
    if when is None or options.keep_records or options.drop_records or todo or options.target is not SiteState.NOPPED:
        return
    kept = [s for s in selected if s.recorded and LAYOUTS[s.variant].generation is not Generation.MPROFILE]
    if kept:
        gen = LAYOUTS[kept[0].variant].generation.value
        one = len(kept) == 1
        are = "the 1 selected site already is" if one else f"the {len(kept)} selected sites already are"
        keep, it, its = (
            ("its record keeps it", "it", "its record") if one else ("their records keep them", "them", "their records")
        )
        raise PlanRejected(
            f"{image.path}: {gen}: {are} nop as built, and {keep} traceable (the kernel patches {it} {when}): "
            f"pre-nopping {it} means dropping {its}: add --drop-records"
        )


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
    bad = refused_at_boot(image, todo, gone, goals)
    if bad:
        s, goal = bad[0], goals[bad[0].variant]
        more = and_more(len(bad) - 1, "site")
        raise PlanRejected(
            f"{image.path}: {s.place_text} ({s.function or '?'}){more}: would hold {goal.value} "
            f"({_words_text(s.variant, goal)}) at a recorded place, but the kernel's boot-time ftrace_init_nop "
            f"accepts only {_words_text(s.variant, LAYOUTS[s.variant].built)} there (expected != found, ftrace bug, "
            "ftrace off for the boot): add --drop-records (or --keep-records to build that image on purpose)"
        )
    if options.target is SiteState.NOPPED and not options.drop_records and not todo:
        # mprofile: sites an earlier --keep-records left nopped and recorded, which boot refuses;
        # "nothing to change" would write a copy as broken as its input, and say it succeeded.
        broken = [s for s in selected if s.recorded and s.state is not LAYOUTS[s.variant].built]
        if broken:
            s, more = broken[0], and_more(len(broken) - 1, "site")
            raise PlanRejected(
                f"{image.path}: {s.place_text} ({s.function or '?'}){more}: already holds {s.state.value} "
                f"({_words_text(s.variant, s.state)}) at a recorded place, which the kernel's boot-time "
                f"ftrace_init_nop refuses (an earlier --keep-records?): add --drop-records (or --keep-records "
                "to keep that image as it is)"
            )


def _mflr_taken(image: Image, c: _Choice) -> list[Site]:
    """The selected sites whose function ran ``mflr r0`` in slot A before the rewrite and will not
    after it: an mprofile site whose A the rewrite nops (or makes ``b +8``), a patchable site whose
    record it drops (the kernel's init wrote that ``mflr r0``; unrecorded, the first nop stays)."""
    booted = image.kind in (*BOOTED_KINDS, Kind.OBJECT)  # an object's records reach a kernel once linked
    changed, dropped = {s.place for s in c.todo}, {s.place for s in c.gone}
    back = {s.place for s in c.back}
    out = []
    for s in c.selected:
        lay = LAYOUTS[s.variant]
        if Slot.A not in lay.state_slots or (s.place not in changed and s.place not in dropped):
            continue
        after = c.goals[s.variant] if s.place in changed else s.state
        recorded = (s.recorded and s.place not in dropped) or s.place in back
        if _runs_mflr(s.variant, s.state, s.recorded, booted) and not _runs_mflr(s.variant, after, recorded, booted):
            out.append(s)
    return out


def _runs_mflr(variant: Variant, state: SiteState, recorded: bool, booted: bool) -> bool:
    """Whether slot A runs ``mflr r0``: in a kernel image or object, once the kernel's init has run
    (a recorded patchable site gets it then); in an executable, as its words are."""
    lay = LAYOUTS[variant]
    running = (sites_boot_state(variant, state, recorded) or state) if booted else state
    return words_of(variant, running)[lay.state_slots.index(Slot.A)] is Insn.MFLR


def _check_r0_dead(image: Image, scan: Scan, taken: Sequence[Site]) -> Mapping[str, int]:
    """Refuse to take the ``mflr r0`` from a function that reads r0 after its site: the audit's
    ``r0live`` (rewriter.flow), where nopping it changes what the function does. Asked for
    (``--check-r0``), not by default: the walk decodes the whole image, 0.6 s on a 6.1 vmlinux
    (+50% of a ``nop``) and +32% of a 6.1 tree's prenop (+65% in a noisier run), and no site of the Debian kernels is
    live. UNKNOWN verdicts pass, as the audit lists them without calling them wrong. Returns how many
    sites had each verdict (empty: no ``mflr r0`` is taken, nothing walked), for the account."""
    if not taken:
        return {}
    from collections import Counter

    from rewriter import flow
    from rewriter.ppc.table import build_table

    code = flow.load_code(image, scan, build_table())
    verdicts = flow.safety(code, taken)
    live = [(s, v) for s, v in zip(taken, verdicts, strict=True) if v.verdict is flow.Verdict.LIVE]
    if not live:
        return dict(Counter(v.verdict.value for v in verdicts))
    (s, v), more = live[0], and_more(len(live) - 1, "site")
    why = "" if v.why is None else v.why.value
    at = "" if v.evidence is None else f" (at {place_text(image, v.evidence)})"
    raise PlanRejected(
        f"{image.path}: {s.place_text} ({s.function or '?'}){more}: the function {why}{at}: taking its mflr r0 "
        "changes what it does (audit: r0live): leave the function out (--exclude; prenop: a keep rule)"
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
            d = st.delta
            # Column by column: a vmlinux stage writes one slot of 33,689 sites.
            offsets = [s.file_offset + d for s in group]
            addrs = [None if s.addr is None else s.addr + d for s in group]
            section_offsets = [s.offset + d for s in group]  # Site.offset: the call slot's, in its section
            old = _words(image, group, st.old, st.old_word, addrs, section_offsets, offsets, entries)
            new = _words(image, group, st.new, st.new_word, addrs, section_offsets, None, entries)
            writes += map(
                WordWrite, repeat(stage_no), offsets, addrs, (s.section for s in group), section_offsets,
                (s.function for s in group), repeat(st.slot), old, new, repeat(st.before), repeat(st.after),
            )  # fmt: skip
        out.append(writes)
    return out


def _words(
    image: Image,
    group: Sequence[Site],
    insn: Insn,
    word: int | None,
    addrs: Sequence[int | None],
    section_offsets: Sequence[int],
    offsets: Sequence[int] | None,
    entries: Sequence[int],
) -> Iterable[int]:
    """The word ``insn`` is at each site of ``group``: ``word`` for all if it does not depend on the
    address, else a branch for each (``offsets``: where to read the old ``b stub`` of an ool site)."""
    if word is not None:
        return repeat(word, len(group))
    if insn is Insn.CALL and image.type == S.ET_REL:
        return repeat(ppc.bl(0, 0), len(group))  # `bl .`: the REL24 relocation supplies the offset
    out = []
    for n, site in enumerate(group):
        addr = addrs[n]
        here = addr if addr is not None else section_offsets[n]
        out.append(_branch(image, here, None if offsets is None else offsets[n], site, entries, insn))
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
        secs = (record_section(image, t) for t in before.records.tables)
        count = sum(sec.size // RECORD_SIZE for sec in secs if sec is not None)
        return (StubCount(".stubs", count, before.records.count),), (
            StubCount(".stubs", count, before.records.count - removed),
        )
    areas = before.stubs
    if changed:
        areas = scan(Image.from_bytes(image.path, bytes(content)), generation=Generation.OOL).stubs
    short = [a for a in areas if not a.covers]
    if short:
        want = short[0].used + short[0].need
        raise ImageError(
            f"{image.path}: {short[0].name}: {counted(short[0].stub_count, 'stub')}, "
            f"{counted(want, 'record')} {agreeing(want, 'wants', 'want')} one: ftrace_init_ool_stub would fail "
            "(ftrace bug)"
        )
    counts = [tuple(StubCount(a.name, a.stub_count, a.used) for a in s) for s in (before.stubs, areas)]
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
    order = image.byteorder
    dt = S.word_dtype("<" if order == "little" else ">")
    raw = np.frombuffer(content, np.uint8)
    b_off = np.array([s.file_offset for s in sites], dtype=np.int64)
    ok = np.ones(len(sites), bool)
    variants = _variants(sites)
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
            f"planned {goals[site.variant].value} "
            f"({counted(len(bad), 'site')} {agreeing(len(bad), 'differs', 'differ')})"
        )


def _read_back_restored(
    content: bytes | bytearray, image: Image, before: Scan, c: _Choice, calls: set[int]
) -> tuple[Site, ...]:
    """A scan of the new file finds every site whose record came back, recorded, and every site
    whose call relocation came back, calling (relocatable files find calls by their REL24). A
    site that does not is mcountrw's own mistake: :class:`InternalError`. Returns the sites
    whose record came back that the scan finds untraceable all the same (``Site.traceable``:
    a weak function's overridden body, whose record the kernel disables)."""
    if not c.back and not calls:
        return ()
    after = scan(Image.from_bytes(image.path, bytes(content)), generation=before.generation)
    found = {s.place: s for s in after.sites}
    for s in c.back:
        again = found.get(s.place)
        if again is None or not again.recorded:
            what = f"{s.place_text} ({s.function or '?'}): record put back, but a scan does not find it"
            if s.source is Source.LOG:  # the log's word on the site, not mcountrw's reading of the file
                raise LogError(f"{before.log or image.path}: {what}: the log's site lines do not match the file")
            raise InternalError(what)
    for place in calls:
        again = found.get(place)
        if again is None or again.state is not c.goals[again.variant]:
            raise InternalError(f"{place:#x}: call relocation put back, but a scan does not find the call")
    return tuple(again for s in c.back if not (again := found[s.place]).traceable)


def _holds(words: np.ndarray, want: Insn) -> np.ndarray:
    if want is Insn.CALL:
        return ppc.bl_mask(words)
    if want is Insn.STUB:
        return ppc.b_mask(words)
    same: np.ndarray = words == word_for(want, 0, 0)
    return same
