"""Find and classify every ftrace call site of an image, and match it to the kernel's records.

Strategy:

1. Read the *records* the kernel will patch from (:func:`read_records`):
   ``__start_mcount_loc..__stop_mcount_loc`` in a vmlinux (which holds ``__mcount_loc`` or, since
   6.6, the compiler's ``__patchable_function_entries``), the ``__mcount_loc`` /
   ``__patchable_function_entries`` sections of other linked files, and ``.rela__mcount_loc`` /
   ``.rela__patchable_function_entries`` in relocatable ones. A linked slot's value at run time is
   the addend of its ``R_PPC64_RELATIVE`` when ``relocate()`` will process one (the file word
   otherwise): a kernel rewrites every such slot at boot, whatever the file holds. A stripped
   vmlinux's table is searched for (:mod:`rewriter.stripped`).
2. Work out the *mcount entries* (the mprofile generation only): ``_mcount`` (``._mcount`` and
   ELFv1 descriptors too), any linker stub that is one ``b`` away from it, and ``--mcount-addr``
   for stripped files; and the *calls*: every ``bl`` to one of them (linked images, numpy over the
   whole text at once) or every ``R_PPC64_REL24`` against ``_mcount`` (relocatable files):
   :mod:`rewriter.mcount`.
3. Decide the image's :class:`~rewriter.generations.Generation` from its contents
   (:func:`rewriter.detect.detect_generation`), unless the caller says.
4. Candidate call slots: the calls and the records (mprofile: the record *is* the call slot);
   each record minus the layout's ``record_offset`` (patchable, ool). A site that was pre-nopped
   *and* lost its record is not findable from the file alone, and is not guessed at: real code
   starts with ``nop; nop`` often enough. Its patch log still names it.
5. Classify each by the words in its slots, through the generation table; say what the kernel's
   boot-time init will make of it, and (ool) which stub area serves it (:func:`_with_stubs`).
"""

from __future__ import annotations

import enum
import struct
from bisect import bisect_right
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from operator import attrgetter
from pathlib import Path
from typing import Final, NamedTuple

import numpy as np

from rewriter import arrays, modload, ppc
from rewriter.arrays import shift
from rewriter.code import CodeView, code_view
from rewriter.detect import (
    Detect,
    detect_by_symbols,
    detect_by_words,
    detect_generation,
    is_classic_pg,
)
from rewriter.elf import structs as S
from rewriter.elf.image import Abi, Image, Kind, Section, index_name
from rewriter.elf.modname import module_name
from rewriter.elf.release import kernel_release, kernel_version
from rewriter.elf.symbols import PLACE_SHIFT, Functions, code_addrs, functions, lookup_symbols, plain_name, split_place
from rewriter.generations import (
    CALL_ONLY_BOOT,
    LAYOUTS,
    SLOT_A_CHECKED_SINCE,
    TWO_SLOT_STATES,
    Generation,
    Variant,
    default_variant,
)
from rewriter.locs import Bounds, Locs, kernel_locs, kernel_text, split_skipped, zero_records_fail
from rewriter.mcount import (
    check_mcount_addr,
    check_mcount_addr_recorded,
    entries_from_records,
    mprofile_calls,
    rel_call_places,
)
from rewriter.prose import counted
from rewriter.records import (
    RecordTable,
    loader_refusal,
    nonzero_records,
    read_records,
    rel_records,
    unread_why,
    zeroed_records,
)
from rewriter.states import PLAIN, Insn, SiteState
from rewriter.stripped import stripped_records
from rewriter.stubs import StubArea, area_symbols, assign_stubs

# What a `bl` in a patchable call slot may reach once enabled (ftrace_get_call_inst): the callers,
# or the trampolines for out-of-range text.
TRACER_NAMES = ("ftrace_caller", "ftrace_regs_caller", "ftrace_tramp_text", "ftrace_tramp_init")
# arch/powerpc/include/asm/ftrace.h (6.12, 7.2): 16 with MPROFILE_KERNEL or
# ARCH_USING_PATCHABLE_FUNCTION_ENTRY; 6.1 defines none. kernel/trace/ftrace.c test_for_valid_rec()
# marks a record FTRACE_FL_DISABLED when kallsyms puts rec->ip more than this past its symbol: the
# body of an overridden weak function, whose own symbol the linker dropped. Its history on ppc64:
# 7af82ff90a2b ("powerpc/ftrace: Ignore weak functions", v6.2) defined it for -mprofile-kernel as
# 12; f6834c8c59a8 (v6.6, and the later 6.4.y and 6.5.y stable releases) made it 16 for gcc 5's
# three-instruction sequence. The patchable and ool generations exist only from v6.6: always 16.
FTRACE_MCOUNT_MAX_OFFSET = 16
FIRST_MCOUNT_MAX_OFFSET = 12  # v6.2 to v6.5 (the two differ only for gcc 5's sites, at +16)
WEAK_CHECK_SINCE = (6, 2)
MAX_OFFSET_16_SINCE = (6, 6)
WEAK_CHECK_SYMBOL = "ftrace_check_for_weak_functions"  # the initcall that runs test_for_valid_rec()


class Source(enum.Enum):
    """Where a site is known from: the image's words and records, or only a patch log (a site an
    earlier rewrite nopped and unrecorded is not findable in the image; ``rewriter.known``)."""

    IMAGE = "image"
    LOG = "log"


class Site(NamedTuple):
    """One ftrace call site. ``offset`` is the call slot's offset within ``section``; ``addr``
    its virtual address (None in relocatable files); ``place`` the call slot as a place (see
    ``rewriter.elf.symbols``). ``record`` is the place the kernel's record names (None when
    unrecorded). ``boot_state`` is what the kernel's boot-time init leaves (None: init would refuse
    the site's words, ``ftrace bug``). ``call_target``: linked images, the tracer entry a restored
    ``bl`` reaches (mprofile), or the ool stub that ``b stub`` reaches. A NamedTuple rather than a
    dataclass: a vmlinux has 40,000 of them and a frozen dataclass costs four times as much."""

    section: str
    section_index: int
    offset: int
    addr: int | None
    function: str | None
    variant: Variant
    state: SiteState
    recorded: bool
    call_target: int | None
    file_offset: int  # of the call slot
    place: int
    record: int | None
    boot_state: SiteState | None
    traceable: bool  # after boot, ftrace can trace it (recorded, accepted, not skipped or disabled)
    stub: str | None  # ool: the stub area that serves it at boot (modules: `.stubs`, carved at load)
    source: Source = Source.IMAGE

    def slot_delta(self, slot: object) -> int | None:
        """Byte distance from the call slot to ``slot`` (None if the variant has no such slot)."""
        return LAYOUTS[self.variant].offset(slot)  # type: ignore[arg-type]

    @property
    def place_text(self) -> str:
        return f"{self.addr:#x}" if self.addr is not None else section_place_text(self.section, self.offset)


def section_place_text(section: str, offset: int) -> str:
    """A place in a section as users read it and give it back (``--addr .text+0x14``)."""
    return f"{section}+{offset:#x}"


class RecordPlace(NamedTuple):
    """Where a record points: a virtual address in a linked image (``section``/``offset`` when a
    section holds it), a section and offset in a relocatable file (``addr`` None); ``place``, the
    same as a place (see ``rewriter.elf.symbols``), so that no later stage rebuilds it."""

    section: str | None
    offset: int | None
    addr: int | None
    place: int

    @property
    def text(self) -> str:
        return f"{self.addr:#x}" if self.addr is not None else f"{self.section}+{self.offset:#x}"


@dataclass(frozen=True, slots=True)
class Records:
    """What the kernel's tables say. ``count`` counts non-zero records; ``zeroed`` the zero entries
    (dropped records, skipped by ftrace_process_locs); ``skipped`` the places outside kernel text,
    which ftrace_process_locs skips too; ``unmatched`` the places of records that point at no site;
    ``duplicates`` the places recorded more than once; ``unread`` the places a module's loader never
    reads: in a record section after the first of its name, in the record section its kernel does
    not read, or in one without SHF_ALLOC (``records.rel_records``)."""

    count: int
    zeroed: int
    unmatched: tuple[RecordPlace, ...]
    duplicates: tuple[RecordPlace, ...]
    skipped: tuple[RecordPlace, ...] = ()
    tables: tuple[RecordTable, ...] = field(default=(), compare=False)  # where they are, for the rewriter
    unread: tuple[RecordPlace, ...] = ()
    unread_why: str | None = None  # why the loader never reads them (``records.unread_why``), after their count


@dataclass(frozen=True, slots=True)
class Scan:
    path: Path
    kind: Kind
    endian: S.ByteOrder  # "little" or "big", as the JSON says it (Image.endian is numpy's "<" or ">")
    abi: Abi
    sites: tuple[Site, ...]
    records: Records
    mcount_entries: tuple[int, ...]
    functions: Functions  # the function table the sites were attributed with, for later stages
    generation: Generation | None = None
    stubs: tuple[StubArea, ...] = ()
    weak_max_offset: int | None = None  # FTRACE_MCOUNT_MAX_OFFSET, or None: no test_for_valid_rec()
    log: Path | None = None  # the patch log its `Source.LOG` sites come from (rewriter.known)
    # What the image's contents say, when --generation gave another generation: obeyed, and said.
    overridden: Detect | None = None
    locs: Locs = Locs.UNKNOWN  # what the kernel's ftrace_process_locs() skips (rewriter.locs)
    not_loaded: str | None = None  # why the kernel refuses to load this module (rewriter.modload)
    module: str | None = None  # a module's name, as the kernel and its ftrace know it (rewriter.elf.modname)
    release: str | None = None  # the kernel release a module or vmlinux names (rewriter.elf.release)
    # by place, the name ftrace lists each site in no function under (listed_names: weak bodies)
    listed: Mapping[int, str] = field(default_factory=dict, compare=False)
    init_call_only: bool = False  # the kernel's init checks only an mprofile call (init_checks_call_only)
    unallocated: tuple[str, ...] = ()  # a module's sections with sites that the loader never places

    def name_of(self, site: Site) -> str | None:
        """The name ftrace lists ``site`` under, which its filters and a policy match: its
        function's, or for a site in no function the kernel lists, its nearest symbol's."""
        return site.function or self.listed.get(site.place)

    @property
    def zero_records_fail(self) -> bool:
        """A zeroed record turns ftrace off at boot: on patchable, a kernel whose
        ftrace_process_locs() adds 4 before it tests a record for zero (rewriter.locs)."""
        return zero_records_fail(self.generation, self.locs)

    @property
    def unnamed(self) -> bool:
        """Sites but no function symbols (a stripped image): they cannot be named, nor paired by name."""
        return bool(self.sites) and not len(self.functions)


class _Read(NamedTuple):
    """What every scan of a linked image reads before it classifies a site."""

    text: CodeView
    funcs: Functions
    tables: tuple[RecordTable, ...]
    entries: np.ndarray
    calls: np.ndarray
    records: np.ndarray
    generation: Generation | None
    overridden: Detect | None


def scan(
    image: Image, mcount_addr: int | None = None, generation: Generation | None = None, text: CodeView | None = None
) -> Scan:
    """The sites and records of ``image``. ``text``: its code view, when the caller has one (an
    audit lays the text out once for the scan and the walk)."""
    if image.type == S.ET_REL:
        result = _stopped_at_first_failure(_scan_relocatable(image, generation, text))
    else:
        result = _stopped_at_first_failure(_scan_linked(image, mcount_addr, generation, text))
    listed = listed_names(image, result.functions, result.sites)
    return replace(result, listed=listed) if listed else result


def _scan_linked(image: Image, mcount_addr: int | None, generation: Generation | None, text: CodeView | None) -> Scan:
    """:func:`scan` of a linked image (a vmlinux, a test executable)."""
    read = _read_linked(image, mcount_addr, generation, text)
    text, funcs, generation = read.text, read.funcs, read.generation
    _check_not_classic_pg(image, text, generation, read.calls, read.records, read.overridden)
    bounds = kernel_text(image)  # read once: the loop, the skipped records and the stubs need it
    locs = kernel_locs(image, funcs, bounds)
    places, skipped = split_skipped(read.records, locs, bounds)
    weak = weak_max_offset(image, generation)
    call_only = init_checks_call_only(image, generation)
    sites, unmatched = _classify(image, text, funcs, generation, read.calls, places, weak, call_only)
    _check_no_nops_before_entries(image, funcs, generation, places, read.overridden)
    stubs: tuple[StubArea, ...] = ()
    if generation is Generation.OOL:
        stubs, sites = _with_stubs(image, sites, bounds, places)
    recs = _records(image, read.tables, read.records, unmatched, skipped)
    mcount = tuple(int(e) for e in read.entries)
    return Scan(
        image.path, image.kind, image.byteorder, image.abi, sites, recs, mcount, funcs, generation, stubs, weak,
        overridden=read.overridden, locs=locs, init_call_only=call_only,
        release=kernel_release(image) if image.kind is Kind.VMLINUX else None,
    )  # fmt: skip


def _stopped_at_first_failure(result: Scan) -> Scan:
    """``result`` with the sites init never reaches: ftrace_process_locs() sorts the records (a
    vmlinux's too: Debian's kernels have no CONFIG_BUILDTIME_MCOUNT_SORT), and ftrace_update_code()
    initializes them in that order until one fails (``if (unlikely(ftrace_disabled)) return -1``,
    kernel/trace/ftrace.c: ftrace_bug() set it). The sites whose records come after it keep the
    words they have in the file: a 6.1 site stays ``mflr r0; bl _mcount`` (enabled), a 6.12 site
    ``nop; nop`` (nopped); they were said to be disabled. A record fails that names no site, that
    names a site whose words init refuses or that gets no ool stub, that names a place a record
    before it named whose words init changed (:func:`changed_at_init`), or a zeroed record under the
    older loop (:attr:`Scan.zero_records_fail`: zeros sort first, so init reaches no site). The
    sites themselves and the image-wide verdict (``rewriter.boot``) are as they were; only
    ``boot_state`` says what the words are after boot. A module's places are sorted by section
    index and offset, the order of the loader's layout only as far as it keeps that order."""
    recs = result.records
    halts = any(s.record is not None and s.boot_state is None for s in result.sites)
    twice = {p.place for p in recs.duplicates}
    twice_fails = bool(twice) and any(s.record in twice and changed_at_init(s) for s in result.sites)
    zero_fails = bool(recs.zeroed) and result.zero_records_fail
    if not (halts or recs.unmatched or twice_fails or zero_fails):
        return result  # init reaches every record: the Debian kernels and their modules
    reached = set() if zero_fails else _reached(result)
    sites = tuple(
        s._replace(boot_state=s.state)
        if s.record is not None and s.boot_state is not None and s.record not in reached
        else s
        for s in result.sites
    )
    return replace(result, sites=sites)


def _reached(result: Scan) -> set[int]:
    """The records init takes before the first that fails (:func:`_stopped_at_first_failure`)."""
    skipped = {p.place for p in result.records.skipped}
    site_of: dict[int, Site] = {}
    for site in result.sites:
        if site.record is not None:
            site_of.setdefault(site.record, site)
    reached: set[int] = set()
    for record in sorted(nonzero_records(result.records.tables).tolist()):
        if record in skipped:
            continue
        named = site_of.get(record)
        if named is None or named.boot_state is None or (record in reached and changed_at_init(named)):
            break
        reached.add(record)
    return reached


def changed_at_init(site: Site) -> bool:
    """Whether boot init writes a recorded site's words (``mflr r0`` into a 6.12 site, the ``nop``
    over a 6.1 ``bl``), so that a second record of the place finds them changed and fails: not an
    ool site, whose init checks the entry ``nop`` and leaves it."""
    return site.boot_state is not None and site.boot_state is not site.state


def kernel_loop(
    image: Image, mcount_addr: int | None = None, generation: Generation | None = None
) -> tuple[Generation | None, Locs]:
    """A linked image's generation and its ftrace_process_locs() loop, without classifying its
    sites: what a prenop run needs of the vmlinux that will load its modules."""
    read = _read_linked(image, mcount_addr, generation, None)
    return read.generation, kernel_locs(image, read.funcs)


def _read_linked(image: Image, mcount_addr: int | None, generation: Generation | None, text: CodeView | None) -> _Read:
    """A linked image's code, functions, record tables, mcount calls and generation (``generation``
    given: the override, with what the image itself says when that contradicts it)."""
    if text is None:
        text = code_view(image)
    funcs = functions(image)
    tables = read_records(image)
    entries, calls = mprofile_calls(image, text, mcount_addr)
    if image.symbols is None:
        if not tables:
            tables, entries, calls, generation = stripped_records(image, text, entries, calls, mcount_addr, generation)
        elif not len(entries):  # the entry is whatever the recorded `bl` words call most
            entries = entries_from_records(text, nonzero_records(tables))
            calls = text.bl_places[arrays.member(text.bl_targets, entries)]
        else:
            check_mcount_addr_recorded(image, text, mcount_addr, calls, nonzero_records(tables))
    records = nonzero_records(tables)
    overridden = None
    if generation is None:
        generation = detect_generation(image, text, calls, records).generation
    else:
        overridden = _contradicted(generation, detect_generation(image, text, calls, records))
    check_mcount_addr(generation, mcount_addr, image.path)
    return _Read(text, funcs, tuple(tables), entries, calls, records, generation, overridden)


_NOP_BUILT: Final = (Generation.PATCHABLE, Generation.OOL)


def _check_no_nops_before_entries(
    image: Image, funcs: Functions, generation: Generation | None, records: np.ndarray, overridden: Detect | None
) -> None:
    """Refuse ``-fpatchable-function-entry=M,N`` with N > 0: a record in no function whose site's
    words (from the record: two nops patchable, one ool) reach the next function's entry, its
    first N nops before its symbol. No ppc64 kernel builds so (patchable is ``=2``, ool ``=1``);
    read as one of them, such sites got another layout's words and a weak-body reason. A weak body
    the kernel disables is in no function too, but it is a whole function, longer than the site
    (at least a `blr` more): the next one starts later. The words are read in the layout the image
    shows (:func:`_layout_shown`), whatever ``--generation`` says."""
    shown = _layout_shown(overridden, generation)
    if shown not in _NOP_BUILT or not len(funcs) or not len(records):
        return
    outside = records[funcs.containing(records) < 0]
    if not len(outside):
        return  # the usual case, in one look-up: every record is inside a function
    span = ppc.INSN_SIZE * len(LAYOUTS[default_variant(shown)].slots)
    nxt = funcs.start[np.minimum(np.searchsorted(funcs.start, outside, side="right"), len(funcs.start) - 1)]
    hit = outside[(nxt > outside) & (nxt <= outside + np.uint64(span))]
    if len(hit):
        raise image.error(
            f"{counted(len(hit), 'record')} at nops just before a function's entry ({place_text(image, int(hit[0]))}): "
            "built with -fpatchable-function-entry=M,N, N > 0, a layout of no ppc64 kernel generation "
            "(mprofile; patchable =2; ool =1)" + _not_given_either(overridden, generation)
        )


def _check_not_classic_pg(
    image: Image,
    text: CodeView,
    generation: Generation | None,
    calls: np.ndarray,
    records: np.ndarray,
    overridden: Detect | None,
) -> None:
    """Refuse an image whose mprofile sites are all classic ``-pg`` calls
    (:func:`rewriter.detect.is_classic_pg`): a fourth layout, which mcountrw does not read.
    Read as mprofile they were all ``unknown``, and a kernel that boots and traces every one of
    them was said to turn ftrace off (a big-endian ELFv1 7.2 built here: 15,731 records). ELFv2
    has it too: ``MPROFILE_KERNEL`` needs a compiler that passes gcc-check-mprofile-kernel.sh, and
    clang has no ``-mprofile-kernel`` (nor, in clang 14, ``-fpatchable-function-entry`` on ppc64),
    so a clang-built ppc64le kernel calls _mcount after the prologue. Not under a ``--generation``
    the image shows another layout for (:func:`_layout_shown`)."""
    if _layout_shown(overridden, generation) is not Generation.MPROFILE:
        return
    places = arrays.distinct(np.concatenate([calls, records]).astype(np.uint64))
    if is_classic_pg(text, places):
        raise image.error(
            f"{counted(len(places), 'call')} to _mcount after the prologue, no `mflr r0` before them: classic -pg "
            "(a ppc64 kernel's built ELFv1, or by a compiler without -mprofile-kernel such as clang; patched by "
            "arch/powerpc/kernel/trace/ftrace_64_pg.c), a layout mcountrw does not read (it reads -mprofile-kernel, "
            "patchable and ool sites)" + _not_given_either(overridden, generation)
        )


def _layout_shown(overridden: Detect | None, given: Generation | None) -> Generation | None:
    """The generation whose layout the refusals of layouts no kernel builds (classic ``-pg``,
    ``-fpatchable-function-entry=M,N``) read the words in: the one the image's contents say,
    when ``--generation`` gave another (``overridden``), else ``given``. Read in the forced
    generation's layout they named a build the file never had (6.1's vmlinux read as patchable:
    "built with -fpatchable-function-entry=M,N, N > 0"; a patchable object read as mprofile:
    "classic -pg"), and missed one it had: a ``=2,2`` build's two nops before each entry, read in
    ool's one-word layout, reach no entry, so ``--generation ool`` read its records as weak bodies.
    A layout is the build's, and the option cannot change it: the file is refused, or not, as it
    is without the option."""
    return overridden.generation if overridden is not None else given


def _not_given_either(overridden: Detect | None, given: Generation | None) -> str:
    """What a refusal of a layout adds under a ``--generation`` the contents contradict."""
    if overridden is None or given is None:
        return ""
    return f"; --generation {given.value} reads the {given.value} layout, not this one"


def override_text(result: Scan, verb: str = "overrides") -> str | None:
    """What ``--generation`` overrode, in words every command uses (a rewrite, which refuses, says
    it ``contradicts``), or None if it overrode nothing."""
    over, given = result.overridden, result.generation
    if over is None or over.generation is None or given is None:
        return None
    return f"--generation {given.value} {verb} what the image says: {over.generation.value} ({over.reason})"


def _contradicted(given: Generation, detected: Detect) -> Detect | None:
    """``detected`` when it names another generation than ``--generation`` gave (None when the
    contents cannot tell, as in a stripped image with no records: what the option is for). One
    that fits ``given`` as well (:attr:`Detect.also`) is still named: scan and audit say what the
    option overrode; a rewrite obeys it (``files.refuse_contradicted_generation``)."""
    return detected if detected.generation not in (None, given) else None


NOT_BUILT_FOR_FTRACE: Final = (
    "no records (__mcount_loc, __patchable_function_entries) and no bl to an mcount entry: "
    "not built with -pg -mprofile-kernel or -fpatchable-function-entry?"
)
"""Why a file shows no site, when nothing says otherwise (``files.no_site_cause``, scan's note)."""

NO_FUNCTION_SYMBOL: Final = "the file has no function symbol (data alone, or stripped), so nothing for ftrace to trace"
"""Why a file with no function symbol shows no site: 6.12's cast_common.ko and tuner-types.ko hold
tables alone, which :data:`NOT_BUILT_FOR_FTRACE`'s "not built with -pg ...?" wrongly blamed on the build."""


def no_site_guess(found: Scan) -> str:
    """The likeliest reason a file with nothing else to say for it shows no site: no function
    to trace, or else a build without ftrace's flags (scan's note and nop's "nothing to do" agree)."""
    return NOT_BUILT_FOR_FTRACE if len(found.functions) else NO_FUNCTION_SYMBOL


def _scan_relocatable(image: Image, generation: Generation | None, text: CodeView | None) -> Scan:
    """:func:`scan` of a relocatable file: its calls come from relocations, its records name
    places by section (no stripped-table search, no stub areas: the loader makes a module's)."""
    funcs = functions(image)
    tables, unread = rel_records(image)
    calls = rel_call_places(image)
    records = nonzero_records(tables)
    distinct = sorted(set(records.tolist()))
    # the words at each distinct record, read once for the detection and the sites
    found: list[tuple[Section, int, int, int | None] | None] | None = None
    detect = detect_by_symbols(image, calls, records)
    if detect is None:
        found = ModuleCode(image).at_records(distinct)
        detect = detect_by_words(*_record_words(found, distinct, records), relaxed=False)
    overridden = None if generation is None else _contradicted(generation, detect)
    if generation is None:
        generation = detect.generation
    weak = weak_max_offset(image, generation)
    if generation is not None and _plain_module(image, generation, records):
        words = ModuleCode(image).at_records(distinct) if found is None else found
        sites, unmatched = _module_sites(image, words, distinct, funcs, generation, weak)
    else:  # mprofile (never plain), or no generation
        text = code_view(image) if text is None else text
        _check_not_classic_pg(image, text, generation, calls, records, overridden)
        sites, unmatched = _classify(image, text, funcs, generation, calls, records, weak)
    _check_no_nops_before_entries(image, funcs, generation, records, overridden)
    recs = _records(image, tables, records, unmatched, np.zeros(0, np.uint64), len(distinct))
    if unread:
        places = tuple(_record_place(image, int(p)) for p in nonzero_records(unread))
        recs = replace(recs, unread=places, unread_why=unread_why(image))
    not_loaded = modload.refusal(image) or loader_refusal(image, (*tables, *unread))
    if not_loaded is not None:
        sites = _unserved(sites)
    unallocated = _unallocated(image, sites)
    if unallocated:
        sites = tuple(_never_placed(s, generation) if s.section in unallocated else s for s in sites)
    return Scan(
        image.path, image.kind, image.byteorder, image.abi, sites, recs, (), funcs, generation, (), weak,
        overridden=overridden, not_loaded=not_loaded, unallocated=unallocated, module=module_name(image),
        release=kernel_release(image) if image.kind is Kind.MODULE else None,
    )  # fmt: skip


def _unallocated(image: Image, sites: tuple[Site, ...]) -> tuple[str, ...]:
    """The sections without SHF_ALLOC that hold a module's sites: the loader lays out only
    allocated sections (kernel/module/main.c), and skips the relocation tables aimed at the others
    (``apply_relocations()``), so the records of their sites name the module's temporary copy."""
    if image.kind is not Kind.MODULE:
        return ()
    held = {s.section_index for s in sites}
    return tuple(image.sections[k].name for k in sorted(held) if not image.sections[k].flags & S.SHF_ALLOC)


def _never_placed(site: Site, generation: Generation | None) -> Site:
    """A recorded site in an unallocated section of a module the kernel loads. mprofile: its
    ``bl _mcount`` was never relocated (``bl .``), and ftrace_make_nop() finds no module stub at
    its target ("Failed to get trampoline target"): ftrace bug at load, ftrace off (qemu, 6.1).
    patchable and ool: init passes the words of the temporary copy, but ftrace_module_enable()
    never enables a record outside the module (``within_module()``): never listed (qemu, 6.12, 7.2)."""
    if site.record is None:
        return site
    if generation is Generation.MPROFILE:
        return site._replace(boot_state=None, traceable=False)
    return site._replace(traceable=False)


def _record_words(
    found: list[tuple[Section, int, int, int | None] | None], distinct: list[int], records: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """The word at each record and after it (0 where none), as ``CodeView.words_of`` gives them,
    from the words read at the distinct records."""
    first = np.array([0 if w is None else w[2] for w in found], np.uint32)
    after = np.array([0 if w is None or w[3] is None else w[3] for w in found], np.uint32)
    at = np.searchsorted(np.array(distinct, np.uint64), records)  # each record's distinct one
    return first[at], after[at]


def _records(
    image: Image,
    tables: tuple[RecordTable, ...],
    records: np.ndarray,
    unmatched: np.ndarray,
    skipped: np.ndarray,
    distinct: int | None = None,
) -> Records:
    """``distinct``: how many distinct records, when the caller knows (none repeated if all)."""
    repeated = arrays.repeated(records) if distinct is None or distinct < len(records) else ()
    return Records(
        len(records),
        zeroed_records(image, tables),
        tuple(_record_place(image, int(p)) for p in unmatched),
        tuple(_record_place(image, int(p)) for p in repeated),
        tuple(_record_place(image, int(p)) for p in skipped),
        tables,
    )


def weak_max_offset(image: Image, generation: Generation | None) -> int | None:
    """How far past its kallsyms symbol test_for_valid_rec() still accepts a record, or None when
    the kernel has no such check. A vmlinux with symbols says whether it has the check: its
    ``ftrace_check_for_weak_functions`` initcall exists exactly when FTRACE_MCOUNT_MAX_OFFSET is
    defined (6.12 and 7.2 have it, 6.1 not). Otherwise the generation decides for patchable and
    ool (every such kernel defines it), and the kernel version the image names for mprofile
    (:func:`rewriter.elf.release.kernel_version`: a 6.12 built by gcc 12 is mprofile, and checks).
    An mprofile image that names no version is taken to be 6.1's (no check)."""
    syms = image.symbols
    if image.kind is Kind.VMLINUX and syms is not None and len(syms.table):
        if not len(syms.find(WEAK_CHECK_SYMBOL)):
            return None
        return (
            _mprofile_max_offset(kernel_version(image))
            if generation is Generation.MPROFILE
            else FTRACE_MCOUNT_MAX_OFFSET
        )
    if generation in (Generation.PATCHABLE, Generation.OOL):
        return FTRACE_MCOUNT_MAX_OFFSET
    if generation is Generation.MPROFILE:
        version = kernel_version(image)
        return None if version is None or version < WEAK_CHECK_SINCE else _mprofile_max_offset(version)
    return None


def _mprofile_max_offset(version: tuple[int, int] | None) -> int:
    """FTRACE_MCOUNT_MAX_OFFSET of an -mprofile-kernel build that has the check: 12 before v6.6
    (mainline), 16 from it; 16 when the version is unknown (every kernel since 2023)."""
    return (
        FIRST_MCOUNT_MAX_OFFSET if version is not None and version < MAX_OFFSET_16_SINCE else FTRACE_MCOUNT_MAX_OFFSET
    )


def weak_offsets(starts: np.ndarray, places: np.ndarray) -> np.ndarray:
    """Distance from the nearest of ``starts`` (sorted) at or before each place (what
    kallsyms_lookup() reports as the offset), or -1 where none precedes it."""
    if not len(starts) or not len(places):
        return np.full(len(places), -1, np.int64)
    i = np.searchsorted(starts, places, side="right") - 1
    start = starts[np.maximum(i, 0)]
    return np.where(i >= 0, places.astype(np.int64) - start.astype(np.int64), -1)


def lookup_from(image: Image, funcs: Functions) -> tuple[np.ndarray, np.ndarray]:
    """The symbols kallsyms_lookup() measures a record from: their starts, sorted, and their
    string-table indexes. A module's: every named symbol its loader keeps
    (:func:`rewriter.elf.symbols.lookup_symbols`: an unnamed FUNC is not one, a named NOTYPE label
    is). A vmlinux's: its function symbols, which agree with its kallsyms on every record of the
    three Debian kernels (scripts/kallsyms keeps the text symbols of ``nm``)."""
    return lookup_symbols(image) if image.kind is Kind.MODULE else (funcs.start, funcs.name_index)


def kallsyms_name(image: Image, lookup: tuple[np.ndarray, np.ndarray], place: int) -> str | None:
    """The symbol kallsyms_lookup() names ``place`` by (``lookup``: :func:`lookup_from`): the
    nearest at or before it, the first of its place in ``lookup``'s order; None if none precedes it."""
    starts, names = lookup
    at = int(np.searchsorted(starts, np.uint64(place), side="right")) - 1
    if at < 0 or image.symbols is None:
        return None
    first = int(np.searchsorted(starts, starts[at], side="left"))
    return image.symbols.name_at(int(names[first]))


def listed_names(image: Image, funcs: Functions, sites: Sequence[Site]) -> dict[int, str]:
    """By place, the name available_filter_functions lists each traceable site in no function
    under (an overridden weak function's body, a NOTYPE label's code): kernel/trace/ftrace.c
    names a record by ``kallsyms_lookup()``, the nearest symbol before it, and set_ftrace_filter
    matches it by that name (7.2 lists ``bpf_jit_compile`` twice: its own record and the weak body
    after it). A record test_for_valid_rec() disabled is not listed, nor selectable by any name."""
    unnamed = [s.place for s in sites if s.function is None and s.traceable]
    if not unnamed:
        return {}
    lookup = lookup_from(image, funcs)
    if not len(lookup[0]):
        return {}
    named = ((p, kallsyms_name(image, lookup, p)) for p in unnamed)
    return {p: n for p, n in named if n}


# -- classification -------------------------------------------------------------------------

# Word kinds as small integers, so that a whole image is classified with one table look-up.
_KINDS = list(Insn)
_KIND = {k: n for n, k in enumerate(_KINDS)}
_STATES = list(SiteState)
_UNKNOWN = _STATES.index(SiteState.UNKNOWN)
_TWO_SLOT_TABLE = np.full((len(_KINDS), len(_KINDS)), _UNKNOWN)
for _state, (_a, _b) in TWO_SLOT_STATES.items():
    _TWO_SLOT_TABLE[_KIND[_a], _KIND[_b]] = _STATES.index(_state)
_ONE_SLOT_TABLE = np.full(len(_KINDS), _UNKNOWN)
_ONE_SLOT_TABLE[_KIND[Insn.NOP]] = _STATES.index(SiteState.DISABLED)
_ONE_SLOT_TABLE[_KIND[Insn.STUB]] = _STATES.index(SiteState.ENABLED)


# ppc.kinds numbers -> _KINDS numbers, for the kinds that mean the same in every slot (states.PLAIN)
_PLAIN_KIND = np.array([_KIND[PLAIN.get(k, Insn.OTHER)] for k in ppc.KINDS])
_BL, _B = ppc.KINDS.index(ppc.WordKind.BL), ppc.KINDS.index(ppc.WordKind.B)


def _kinds(words: np.ndarray, calls: np.ndarray | None = None, to_stub: np.ndarray | None = None) -> np.ndarray:
    """Vectorised ``states.insn_kind`` (``calls``, ``to_stub``: None where no word can be one)."""
    kinds = ppc.kinds(words)
    out: np.ndarray = _PLAIN_KIND[kinds]
    if calls is not None:
        out[(kinds == _BL) & calls] = _KIND[Insn.CALL]
    if to_stub is not None:
        out[(kinds == _B) & to_stub] = _KIND[Insn.STUB]
    return out


class _Columns(NamedTuple):
    """Per-candidate columns, in the candidates' order."""

    cand: np.ndarray  # call-slot places
    k: np.ndarray
    i: np.ndarray
    b_word: np.ndarray
    is_call: np.ndarray
    record: np.ndarray  # the record place, or 0
    state: np.ndarray
    variant: np.ndarray  # index into _VARIANTS
    keep: np.ndarray
    fi: np.ndarray


_VARIANTS = (Variant.MPROFILE, Variant.MPROFILE_STD, Variant.PATCHABLE, Variant.OOL)


def _classify(
    image: Image,
    text: CodeView,
    funcs: Functions,
    generation: Generation | None,
    calls: np.ndarray,
    records: np.ndarray,
    weak: int | None = None,
    call_only: bool = False,
) -> tuple[tuple[Site, ...], np.ndarray]:
    """Sites, and the record places that turned out to be no site. ``call_only``: the kernel's
    init checks only an mprofile call (:func:`init_checks_call_only`)."""
    stray = _stray_tracer_calls(image, text)
    if generation is Generation.MPROFILE or generation is None:
        cols = _mprofile_columns(text, funcs, arrays.distinct(np.concatenate((calls, stray))), records)
    else:
        cols = _entry_columns(image, text, funcs, generation, records, stray)
    unmatched = cols.record[(cols.record != 0) & ~cols.keep]
    return _build_sites(image, text, funcs, weak, cols, call_only), unmatched


def _stray_tracer_calls(image: Image, text: CodeView) -> np.ndarray:
    """The ``bl`` words of a linked image that call the tracer itself (ftrace_caller and its
    trampolines). A file has none at a recorded site, whose words are the compiler's; one that no
    record names is a call ftrace never patches back and never stops: a site of its own, unrecorded
    (a 6.12 ``nop; bl ftrace_caller`` whose record was zeroed reached the tracer with a stale r0 on
    every call, and the audit saw only a zeroed record)."""
    if image.type == S.ET_REL:  # a module calls nothing of the kernel's but through its relocations
        return np.zeros(0, np.uint64)
    tracer = code_addrs(image, TRACER_NAMES)
    if not tracer:
        return np.zeros(0, np.uint64)
    found: np.ndarray = text.bl_places[arrays.member(text.bl_targets, np.array(tracer, np.uint64))]
    return found


def _mprofile_columns(text: CodeView, funcs: Functions, calls: np.ndarray, records: np.ndarray) -> _Columns:
    """mprofile: the record is the call slot; A is the word before it, or two before with gcc 5's
    ``std r0,16(r1)`` between (the call slot at LEP + 8)."""
    cand = arrays.distinct(np.concatenate((calls, records)))
    k, i = text.locate(cand)
    is_call = arrays.member(cand, calls)
    b_word = text.words_at(k, i)
    mid = text.words_at(k, i - 1)
    a2 = text.words_at(k, i - 2)
    fi = funcs.containing(cand)
    lep = funcs.lep_of(fi)
    # Without a function to anchor it, the std word itself decides; `nop` there is what a 6.13+
    # ftrace_init_nop leaves of gcc 5's std.
    mid_std = (mid == ppc.STD_R0_16_R1) | (mid == ppc.NOP)
    std_variant = np.where(fi >= 0, (cand - lep == 8) & mid_std, mid == ppc.STD_R0_16_R1)
    a_word = np.where(std_variant, a2, mid)
    inside = (k >= 0) & (i >= np.where(std_variant, 2, 1))
    state = _TWO_SLOT_TABLE[_kinds(a_word), _kinds(b_word, is_call)]
    keep = inside & (is_call | (state != _UNKNOWN))
    record = np.where(arrays.member(cand, records), cand, np.uint64(0))
    variant = np.where(std_variant, 1, 0)
    return _Columns(cand, k, i, b_word, is_call, record, state, variant, keep, fi)


def _entry_columns(
    image: Image, text: CodeView, funcs: Functions, generation: Generation, records: np.ndarray, stray: np.ndarray
) -> _Columns:
    """patchable and ool: the record names the site's first word; the call slot is where the
    layout says. A ``bl`` in a patchable call slot counts as a call when it reaches the tracer;
    a ``b`` in an ool one when it reaches a stub area. (A module defines neither: its columns
    take a dozen numpy calls, each a fixed cost that its few dozen records cannot amortise.)"""
    lay = LAYOUTS[Variant.PATCHABLE if generation is Generation.PATCHABLE else Variant.OOL]
    recorded = shift(arrays.distinct(records), -lay.record_offset)
    # ool: a stray `bl ftrace_caller` is no site of its layout (the stub makes the call)
    cand = arrays.distinct(np.concatenate((recorded, stray))) if generation is Generation.PATCHABLE else recorded
    record = np.where(arrays.member(cand, recorded), shift(cand, lay.record_offset), np.uint64(0))
    k, i = text.locate(cand)
    b_word = text.words_at(k, i)
    if generation is Generation.PATCHABLE:
        is_call = _reaching(cand, b_word, np.array(code_addrs(image, TRACER_NAMES), np.uint64), ppc.bl_mask)
        a_word = text.words_at(k, i - 1)
        state = _TWO_SLOT_TABLE[_kinds(a_word), _kinds(b_word, is_call)]
        inside = (k >= 0) & (i >= 1)
        variant = np.full(len(cand), _VARIANTS.index(Variant.PATCHABLE))
    else:
        is_call = np.zeros(len(cand), bool)
        state = _ONE_SLOT_TABLE[_kinds(b_word, None, _in_stub_areas(image, cand, b_word))]
        inside = k >= 0
        variant = np.full(len(cand), _VARIANTS.index(Variant.OOL))
    keep = inside & (state != _UNKNOWN)
    return _Columns(cand, k, i, b_word, is_call, record, state, variant, keep, funcs.containing(cand))


def _reaching(
    places: np.ndarray, words: np.ndarray, targets: np.ndarray, mask: Callable[[np.ndarray], np.ndarray]
) -> np.ndarray:
    """Which ``words`` (at ``places``) are branches of ``mask``'s kind that reach one of
    ``targets``; no branch is decoded when there is no target (a module defines no tracer)."""
    if not len(targets):
        return np.zeros(len(places), bool)
    out: np.ndarray = mask(words) & arrays.member(ppc.branch_targets(places, words), targets)
    return out


def _in_stub_areas(image: Image, places: np.ndarray, words: np.ndarray) -> np.ndarray | None:
    """Which ``b`` words at ``places`` reach an ool stub area (None: the image has no area)."""
    areas = area_symbols(image)
    if not areas:
        return None
    targets = ppc.branch_targets(places, words)
    out = np.zeros(len(targets), bool)
    for area in areas:
        out |= (targets >= area[1]) & (targets < area[1] + area[2])
    return out


def _passes_lookup(image: Image, funcs: Functions, places: np.ndarray, weak: int) -> np.ndarray:
    """test_for_valid_rec(): a record no symbol precedes (kallsyms_lookup() finds none), or one
    more than FTRACE_MCOUNT_MAX_OFFSET past it, is disabled. An image without symbols cannot say
    which: every record passes, as the audit's no-symbols note says."""
    starts = lookup_from(image, funcs)[0]
    if not len(starts):
        return np.ones(len(places), bool)
    offsets = weak_offsets(starts, places)
    passes: np.ndarray = (offsets >= 0) & (offsets <= weak)
    return passes


def _build_sites(
    image: Image, text: CodeView, funcs: Functions, weak: int | None, c: _Columns, call_only: bool = False
) -> tuple[Site, ...]:
    """The kept candidates as Sites. Each field is made as a whole column (numpy, or one list
    comprehension over a column) and the tuples by one ``map``: a loop body per site, with its
    calls and look-ups, cost as much as the rest of a module's scan (0.6 of 2 s on 6.12's tree)."""
    sel = np.flatnonzero(c.keep)
    linked = image.type != S.ET_REL
    ks, places, recs = c.k[sel], c.cand[sel], c.record[sel]
    variant, state, recorded = c.variant[sel], c.state[sel], recs != 0
    rec = recorded.astype(np.intp)  # an index into the tables below
    offs = c.i[sel] * ppc.INSN_SIZE
    secs = [text.sections[k] for k in ks.tolist()]
    # rec->ip is the call slot in every generation (6.12's ftrace_call_adjust adds 4 to the record)
    enabled = recorded if weak is None else recorded & _passes_lookup(image, funcs, places, weak)
    n = len(sel)
    nothing: list[None] = [None] * n
    stubs = nothing if linked else _STUB_NAME[(variant == _VARIANTS.index(Variant.OOL)) * rec].tolist()
    return tuple(
        map(
            Site,
            [sec.name for sec in secs],
            [sec.shndx for sec in secs],
            offs.tolist(),
            places.tolist() if linked else nothing,
            _function_names(image, funcs, c.fi[sel]),
            _VARIANT_OF[variant].tolist(),
            _STATE_OF[state].tolist(),
            recorded.tolist(),
            _call_targets(places, c.b_word[sel], c.is_call[sel]) if linked else nothing,
            [sec.offset + off for sec, off in zip(secs, offs.tolist(), strict=True)],
            places.tolist(),
            [r or None for r in recs.tolist()],
            _BOOT_STATE[variant, state, rec, int(call_only)].tolist(),
            (_BOOTS[variant, state, rec, int(call_only)] & enabled).tolist(),
            stubs,
        )
    )


def _function_names(image: Image, funcs: Functions, fi: np.ndarray) -> list[str | None]:
    """The name of function ``fi`` of each site (None for -1, or without symbols)."""
    syms = image.symbols
    if syms is None or not len(funcs):
        return [None] * len(fi)
    names = syms.names_at(funcs.name_index[np.maximum(fi, 0)].tolist())
    return [name if f >= 0 else None for name, f in zip(names, fi.tolist(), strict=True)]


def _call_targets(places: np.ndarray, words: np.ndarray, is_call: np.ndarray) -> list[int | None]:
    targets = ppc.branch_targets(places, words).tolist()
    return [t if call else None for t, call in zip(targets, is_call.tolist(), strict=True)]


def boot_state(variant: Variant, state: SiteState, recorded: bool, call_only: bool = False) -> SiteState | None:
    """What the kernel's boot-time init leaves: an unrecorded site untouched; a recorded one in its
    layout's ``booted`` state if it holds the ``built`` words, else None (ftrace_init_nop refuses
    it: ``expected (...) != found (...)``, ``ftrace bug``, ftrace off for the boot). ``call_only``:
    a vmlinux of a kernel before 6.6, whose init checks only the mprofile ``bl`` (CALL_ONLY_BOOT)."""
    if not recorded:
        return state
    lay = LAYOUTS[variant]
    if call_only and lay.generation is Generation.MPROFILE:
        return CALL_ONLY_BOOT.get(state)
    return lay.booted if state is lay.built else None


def init_checks_call_only(image: Image, generation: Generation | None) -> bool:
    """Whether the kernel's init checks only the call of an mprofile site (CALL_ONLY_BOOT): a
    vmlinux whose init is ftrace_make_nop() (:func:`init_makes_nop`)."""
    return image.kind is Kind.VMLINUX and init_makes_nop(image, generation)


def init_makes_nop(image: Image, generation: Generation | None) -> bool:
    """Whether the kernel that inits ``image``'s records has only the generic ftrace_init_nop(),
    which nops each with ftrace_make_nop() (a vmlinux at boot, a module at load): an mprofile image
    of a kernel before 6.6, or one that names no version (taken to be 6.1's, as elsewhere)."""
    if generation is not Generation.MPROFILE:
        return False
    version = kernel_version(image)
    return version is None or version < SLOT_A_CHECKED_SINCE


# boot_state() by (index in _VARIANTS, index in _STATES, recorded, call_only), made once from it: the sites
# of an image look it up all at once. _BOOTS: the kernel's init accepts the site (not None).
_BOOT_STATE = np.array(
    [[[[boot_state(v, st, bool(r), bool(c)) for c in (0, 1)] for r in (0, 1)] for st in _STATES] for v in _VARIANTS],
    dtype=object,
)
_BOOTS = _BOOT_STATE != None  # noqa: E711 (element-wise, on an object array)
_VARIANT_OF = np.array(_VARIANTS, dtype=object)
_STATE_OF = np.array(_STATES, dtype=object)
_STUB_NAME = np.array([None, ".stubs"], dtype=object)  # a module's ool sites: the .stubs the loader carves


# -- modules --------------------------------------------------------------------------------

_OFFSET_MASK: Final = (1 << PLACE_SHIFT) - 1
# A word's kind where no `bl` reaches a tracer and no `b` a stub (a module defines neither):
# the _KINDS number of each fixed word that means the same in every slot, OTHER for any other.
_PLAIN_KIND_OF_WORD: Final = {w: _KIND[PLAIN[k]] for w, k in ppc.FIXED.items() if k in PLAIN}
_OTHER: Final = _KIND[Insn.OTHER]
_TWO_SLOT_ROWS: Final = _TWO_SLOT_TABLE.tolist()
_ONE_SLOT_ROW: Final = _ONE_SLOT_TABLE.tolist()


class ModuleCode:
    """A relocatable file's code read a word at a time: the scalar twin of
    :class:`~rewriter.code.CodeView` for the few dozen places a module's scan reads. A place
    names its section by index (``rewriter.elf.symbols``), and no section reaches the 1 TiB its
    offset could, so the section of a place is a dict look-up, not a search."""

    def __init__(self, image: Image) -> None:
        self._sections = {s.shndx: s for s in image.exec_sections()}
        self._data = image.data
        self._one = struct.Struct(image.endian + "I")
        self._two = struct.Struct(image.endian + "II")

    def at_records(self, places: list[int]) -> list[tuple[Section, int, int, int | None] | None]:
        """For each place: its section, its offset there, the word at it and the word after it
        (None past the section's end); None where no executable section has a word at the place.
        One pass and one unpack a place: the words of every site of a module, and of its
        generation's detection (as ``CodeView.words_of`` at each place and 4 bytes on)."""
        sections, data, one, two = self._sections, self._data, self._one, self._two
        size = ppc.INSN_SIZE
        out: list[tuple[Section, int, int, int | None] | None] = []
        for place in places:
            sec = sections.get(place >> PLACE_SHIFT)
            offset = place & _OFFSET_MASK
            if sec is None or offset % size or offset + size > sec.size:
                out.append(None)
            elif offset + 2 * size <= sec.size:
                out.append((sec, offset, *two.unpack_from(data, sec.offset + offset)))
            else:
                out.append((sec, offset, one.unpack_from(data, sec.offset + offset)[0], None))
        return out


def _plain_module(image: Image, generation: Generation, records: np.ndarray) -> bool:
    """Whether :func:`_module_sites` can classify this relocatable file's sites: patchable or
    ool, no tracer entry nor stub area defined (no slot word can be a call or a stub), and
    places below 2**62 (no wrap-around, and the numpy twin's int64 weak offsets). Every module."""
    if generation not in (Generation.PATCHABLE, Generation.OOL):
        return False
    if len(records) and int(records.max()) >= 1 << 62:
        return False
    syms = image.symbols
    # Every name of TRACER_NAMES and OOL_AREAS has "ftrace_" in it: one search of the string table
    # instead of seven, for the modules that name nothing of ftrace's (most).
    if syms is not None and b"ftrace_" not in syms.strtab:
        return True
    return not code_addrs(image, TRACER_NAMES) and not area_symbols(image)


def _module_sites(
    image: Image,
    found: list[tuple[Section, int, int, int | None] | None],
    distinct: list[int],
    funcs: Functions,
    generation: Generation,
    weak: int | None,
) -> tuple[tuple[Site, ...], np.ndarray]:
    """The patchable or ool sites of a plain module (:func:`_plain_module`) from its distinct
    records (sorted) and the words there (``ModuleCode.at_records``), in plain Python: the scalar
    twin of :func:`_entry_columns` and :func:`_build_sites`, which give the same sites
    (tests/test_scan_fixtures.py), but whose numpy calls cost ~0.15 ms a file, each a fixed cost,
    against ~2 us a record here (a module has 56 on average, half of them 13 or fewer)."""
    variant = Variant.PATCHABLE if generation is Generation.PATCHABLE else Variant.OOL
    lay = LAYOUTS[variant]
    stub = ".stubs" if variant is Variant.OOL else None  # the loader carves one per record
    shift_b = -lay.record_offset  # from the record to the call slot: 4 (patchable) or 0 (ool)
    kind_of, other = _PLAIN_KIND_OF_WORD.get, _OTHER
    starts, ends, names = funcs.start.tolist(), funcs.end.tolist(), funcs.name_index.tolist()
    name_at = None if image.symbols is None else image.symbols.name_at
    strtab = b"" if image.symbols is None else image.symbols.strtab
    lookup: list[int] | None = None  # lookup_symbols(), made only for a site its function does not decide
    sites, unmatched = [], []
    for record, at in zip(distinct, found, strict=True):
        if at is None:
            unmatched.append(record)
            continue
        sec, offset, word, after = at
        # the ool call slot is the record's word; the patchable slots A and B, it and the next
        if variant is Variant.OOL:
            state = _ONE_SLOT_ROW[kind_of(word, other)]
        else:
            state = _UNKNOWN if after is None else _TWO_SLOT_ROWS[kind_of(word, other)][kind_of(after, other)]
        if state == _UNKNOWN:
            unmatched.append(record)
            continue
        place, offset = record + shift_b, offset + shift_b
        i = bisect_right(starts, place) - 1  # Functions.containing and weak_offsets, for one place
        name = name_at(names[i]) if i >= 0 and (ends[i] > place or ends[i] == starts[i]) and name_at else None
        enabled = weak is None or (i >= 0 and place - starts[i] <= weak and plain_name(strtab, names[i]))
        if not enabled and weak is not None:  # the function does not decide it: kallsyms_lookup()'s view
            lookup = lookup_symbols(image)[0].tolist() if lookup is None else lookup
            j = bisect_right(lookup, place) - 1
            enabled = not lookup or (j >= 0 and place - lookup[j] <= weak)  # no symbols: unknown, as above
        st = _STATES[state]
        boot = lay.booted if st is lay.built else None
        fields = (sec.name, sec.shndx, offset, None, name, variant, st, True, None, sec.offset + offset, place,
                  record, boot, boot is not None and enabled, stub, Source.IMAGE)  # fmt: skip
        sites.append(Site._make(fields))
    return tuple(sites), np.array(unmatched, np.uint64)


# -- ool stubs ------------------------------------------------------------------------------


def _with_stubs(
    image: Image, sites: tuple[Site, ...], bounds: Bounds | None, places: np.ndarray
) -> tuple[tuple[StubArea, ...], tuple[Site, ...]]:
    """The image's stub areas, and its sites with the stub each gets at boot
    (:func:`rewriter.stubs.assign_stubs`). Every record of a site takes a stub, ``places`` (the
    records the kernel keeps) as they are: ftrace_process_locs() makes a record of each entry, a
    place recorded twice included, and ool's init passes the second (it leaves the nop it checks),
    so it takes a second stub (an area one stub short of that turns ftrace off)."""
    recorded = np.array(sorted(s.addr for s in sites if s.recorded and s.addr is not None), np.uint64)
    ips = places[arrays.member(places, recorded)].tolist()
    areas, stub_of = assign_stubs(image, ips, bounds)
    return areas, tuple(_served(s, stub_of.get(s.addr)) if s.addr in stub_of else s for s in sites)


def _served(site: Site, stub: tuple[str, int | None] | None) -> Site:
    """The site with its stub; one that gets none (``stub`` None: its area is short, which the
    area's ``need`` counts) fails ftrace_init_ool_stub: ftrace_bug(), so the kernel's init fails
    it although its word passes the check (boot_state None, see :func:`lacks_stub`)."""
    assert stub is not None
    name, addr = stub
    if addr is None:
        return site._replace(stub=None, call_target=None, boot_state=None, traceable=False)
    return site._replace(stub=name, call_target=addr)


def _unserved(sites: tuple[Site, ...]) -> tuple[Site, ...]:
    """The sites of a module the kernel refuses to load: no ool stub serves them, as the loader
    never carves its ``.stubs`` (module_frob_arch_sections() sizes it as it loads the module)."""
    return tuple(s._replace(stub=None) if s.stub is not None else s for s in sites)


def lacks_stub(site: Site) -> bool:
    """Whether init fails a recorded ool site for want of a stub rather than for its word: the
    word is the nop ftrace_init_nop() checks for (it checks before it takes a stub), yet init
    fails the site (:func:`_served`)."""
    return (
        site.variant is Variant.OOL
        and site.record is not None
        and site.boot_state is None
        and site.state is LAYOUTS[Variant.OOL].built
    )


# -- places ---------------------------------------------------------------------------------


def _record_place(image: Image, place: int) -> RecordPlace:
    if image.type != S.ET_REL:
        sec = image.section_of_addr(place)
        if sec is None:
            return RecordPlace(None, None, place, place)
        return RecordPlace(sec.name, place - sec.addr, place, place)
    shndx, off = split_place(place)
    name = image.sections[shndx].name if 0 <= shndx < len(image.sections) else index_name(shndx)
    return RecordPlace(name, off, None, place)


def place_text(image: Image, place: int) -> str:
    """A place as users read it: ``0xc000...`` (linked) or ``.text+0x10`` (relocatable)."""
    return _record_place(image, place).text


# -- summaries ------------------------------------------------------------------------------


def summary(sites: Sequence[Site]) -> dict[str, dict[str, int]]:
    """Counts by section, variant and state, and how many are recorded."""
    recorded = sum(map(attrgetter("recorded"), sites))
    return {
        "by_section": dict(sorted(Counter(map(attrgetter("section"), sites)).items())),
        # `_value_`, the attribute behind Enum.value: in Python 3.11 `.value` is a Python-level
        # property and counting the members themselves calls the Python-level Enum.__hash__,
        # ~0.3 us a site each (a module tree has 176,000).
        "by_variant": dict(sorted(Counter(map(attrgetter("variant._value_"), sites)).items())),
        "by_state": dict(sorted(Counter(map(attrgetter("state._value_"), sites)).items())),
        "recorded": {"yes": recorded, "no": len(sites) - recorded},
    }
