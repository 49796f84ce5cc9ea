"""Compare the sites of two images (two kernel builds, or one image before and after a rewrite).

Sites are matched by function name, not by address: between two builds nearly every address
moves. Within a function, sites pair up in address order (a function has one site, but names
repeat: vmlinux holds dozens of static functions called ``init_once``, so the n-th site of a name
in A pairs with the n-th in B; a site in no function, a weak body, by the symbol before it:
:func:`_keyed`). A site whose offset from its function's start changed has *moved*;
one whose function merely sits elsewhere is only counted as *relocated*. Two trees are compared
file by file, paired by their path below the tree's root (less a compression suffix: ``ext4.ko``
pairs with ``ext4.ko.xz``).

Functions are compared too, by name, each by all its names (an alias, one of several names of
one start, is a name of the function: :func:`_profiles`): those with sites only in B (*added*) or
only in A (*removed*), those whose sites changed generation (6.1's ``mflr; bl _mcount`` to 6.12's
``nop; nop``: the whole image, when the two builds are of different generations), and those that
moved from one section to another (``.text`` <-> ``.init.text``: a function that became, or
stopped being, ``__init``). A name held by functions in two sections (two static functions) has
no one section, and is never counted as moved.

Across generations a site's words, its variant and its offset from the function's start all
change by construction (the layout is another), so sites paired across generations are compared
by what the kernel's boot-time init makes of them (``boot_state``) and by their record, never by
their words.

When a side has sites but no function symbols (a stripped vmlinux), nothing pairs by name: a
vmlinux and its stripped copy would read as every site removed and added again, and every
function removed. Then both sides' sites pair by place (:class:`Pairing`), which is all an
unnamed site has, and functions are not compared. What is asked of such a diff is nearly always
"is this the same kernel, rewritten or not" (a stripped copy, a distribution's stripped image
against a build's vmlinux): there places agree, so identical images compare as unchanged and a
rewrite shows as state and record changes of exactly its sites. Across builds places move, so the
same pairing lists the sites as added and removed; the report says on every pair which pairing it
used and which side has no names, so that this is never read as sites the build gained or lost.
Refusing instead (exit 2) would lose the same-build case, and naming B's sites by A's symbols
would claim a match the images do not show.
"""

from __future__ import annotations

import enum
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import NamedTuple

import numpy as np

from rewriter.batch import map_chunks
from rewriter.boot import boot_of
from rewriter.elf import structs as S
from rewriter.elf.compress import uncompressed
from rewriter.elf.image import Image, Kind
from rewriter.elf.symbols import aliases as symbol_aliases
from rewriter.errors import ArgumentError, ImageError, RewriteError
from rewriter.generations import LAYOUTS, Generation
from rewriter.log import logged
from rewriter.prose import printable
from rewriter.sites import Scan, Site, kallsyms_name, lookup_from, scan
from rewriter.states import SiteState

Generations = tuple[Generation | None, Generation | None]  # overrides for A and B (None: detect)
McountAddrs = tuple[int | None, int | None]  # _mcount of a stripped A and B (None: from the image)


class Change(enum.Enum):
    ADDED = "added"
    REMOVED = "removed"
    MOVED = "moved"
    STATE = "state"
    VARIANT = "variant"
    RECORD_ADDED = "record-added"
    RECORD_REMOVED = "record-removed"


class Pairing(enum.Enum):
    """How the sites of two images were paired (the module docstring argues when each is used)."""

    NAME = "name"  # by function name, the n-th site of a name with the n-th
    PLACE = "place"  # by place (address; section + offset in a relocatable file): a side has no names


class SiteChange(NamedTuple):
    change: Change
    function: str | None
    before: Site | None
    after: Site | None
    detail: str
    # a site in no function (a weak body): the symbol it follows, kallsyms' name for it, which
    # paired it (a paired site's two sides follow the same one); None for a site in a function
    follows: str | None = None


class FunctionChangeKind(enum.Enum):
    ADDED = "added"  # sites in B only
    REMOVED = "removed"  # sites in A only
    GENERATION = "generation"  # its sites' generation differs
    SECTION = "section"  # in one section in A, another in B


class FunctionChange(NamedTuple):
    """``before``/``after``: the generations (``generation``) or the sections (the others; None on
    the side that has no such function; sections joined by ``,`` for a name held in several)."""

    change: FunctionChangeKind
    function: str
    before: str | None
    after: str | None


@dataclass(frozen=True, slots=True)
class ImageDiff:
    a: Path
    b: Path
    changes: tuple[SiteChange, ...]
    unchanged: int  # sites paired with no change
    relocated: int  # of those, sites whose function moved as a whole
    records: tuple[int, int]  # record count in A and in B
    generations: Generations = (None, None)
    functions: tuple[FunctionChange, ...] = ()
    common_functions: int = 0  # names with sites in both
    pairing: Pairing = Pairing.NAME
    unnamed: tuple[bool, bool] = (False, False)  # A, B: sites but no function symbols
    builds: tuple[str, str] = ("", "")  # A, B: byte order and ABI, "little-endian elfv2"
    # A, B: why ftrace is off after boot (or the module is not loaded), None when it is on: a
    # record made twice or an ool area one stub short changes no site's words, and all of them
    boot: tuple[str | None, str | None] = (None, None)
    # A, B: zeroed record slots, and the patch log read for the side (None: none). Zeroed slots with
    # no log are most likely a rewrite's dropped records: the sites it nopped call nothing and no
    # scan finds them, so here they read as removed sites (and removed functions) unless told.
    zeroed: tuple[int, int] = (0, 0)
    logs: tuple[Path | None, Path | None] = (None, None)

    @property
    def unlogged_zeroed(self) -> tuple[int, int]:
        """A, B: the zeroed record slots of a side read without a patch log (0 on a side with one)."""
        a, b = (n if log is None else 0 for n, log in zip(self.zeroed, self.logs, strict=True))
        return a, b

    @property
    def rebuilt(self) -> bool:
        """Whether A and B differ in byte order or ABI: two builds, whatever their sites say."""
        return self.builds[0] != self.builds[1]

    @property
    def boot_changed(self) -> bool:
        """Whether ftrace after boot (or the module's load) is on in one and off in the other, or
        off for other reasons."""
        return self.boot[0] != self.boot[1]

    def function_counts(self) -> dict[str, int]:
        """How many functions of each kind of change, every kind present (0 when none)."""
        counts = {k.value: 0 for k in FunctionChangeKind}
        for f in self.functions:
            counts[f.change.value] += 1
        return counts


@dataclass(frozen=True, slots=True)
class Unpaired:
    """A tree's file with no counterpart in the other tree, read as any other: a module only one
    kernel ships is sites and functions that kernel gains or lacks, and a file that cannot be read
    is bad input there as in a pair, not a name to list."""

    path: Path
    generation: Generation | None
    sites: int
    functions: int  # names with at least one site


@dataclass(frozen=True, slots=True)
class Diff:
    images: tuple[ImageDiff, ...]
    only_a: tuple[Unpaired, ...]  # trees: files with no counterpart
    only_b: tuple[Unpaired, ...]
    errors: tuple[str, ...]

    @property
    def changed(self) -> bool:
        return bool(
            self.only_a
            or self.only_b
            or any(d.changes or d.functions or d.rebuilt or d.boot_changed for d in self.images)
        )


class _Keyed(NamedTuple):
    site: Site
    delta: int  # offset of the call slot from its function's start (-1: no function)
    follows: str | None = None  # in no function: the symbol before it, which keys it (``_keyed``)


def _by_place(result: Scan) -> dict[tuple[str, int], _Keyed]:
    """Sites keyed by place alone; no offset from a function (the other side may have none), so
    a paired site never reads as moved."""
    return {(f"@{s.place_text}", 0): _Keyed(s, -1) for s in result.sites}


def _keyed(result: Scan, nearest: Nearest) -> dict[tuple[str, int], _Keyed]:
    """Sites keyed by (function name, n-th site of that name in address order); a site in no
    function (an overridden weak function's body) by the symbol kallsyms names it by, the nearest
    before it (``nearest``), as ``@after NAME``, n-th in address order: the same weak body in two
    builds pairs, where its place moves with any change before it. One with no symbol before it by
    its place, which is all that identifies it."""
    funcs = result.functions
    places = np.array([s.place for s in result.sites], np.uint64)
    fi = funcs.containing(places) if len(places) and len(funcs) else np.full(len(places), -1, np.int64)
    seen: dict[str, int] = {}
    out = {}
    for site, place, f in sorted(zip(result.sites, places.tolist(), fi.tolist(), strict=True), key=lambda t: t[1]):
        delta = place - int(funcs.start[f]) if f >= 0 else -1
        near = nearest.get(place) if site.function is None else None
        if site.function is None and near is None:
            out[(f"@{site.place_text}", 0)] = _Keyed(site, delta)
            continue
        name = site.function or f"@after {near}"
        n = seen.get(name, 0)
        seen[name] = n + 1
        out[(name, n)] = _Keyed(site, delta, near)
    return out


Nearest = Mapping[int, str]  # by place, the symbol kallsyms names a site in no function by


def nearest_names(image: Image, result: Scan) -> dict[int, str]:
    """:data:`Nearest` of ``image``'s sites in no function (``sites.kallsyms_name``)."""
    unnamed = [s.place for s in result.sites if s.function is None]
    lookup = lookup_from(image, result.functions) if unnamed else None
    if lookup is None or not len(lookup[0]):
        return {}
    named = ((p, kallsyms_name(image, lookup, p)) for p in unnamed)
    return {p: n for p, n in named if n}


def _generation(site: Site) -> Generation:
    return LAYOUTS[site.variant].generation


def _boot(state: SiteState | None) -> str:
    return "refused (ftrace bug)" if state is None else state.value


def _same_layout(before: _Keyed, after: _Keyed) -> list[SiteChange]:
    """Two sites of one generation: their words, variant and offset compare directly."""
    a, b = before.site, after.site
    fn = a.function or b.function
    out = []
    if before.delta != after.delta:
        out.append(SiteChange(Change.MOVED, fn, a, b, f"{fn}+{before.delta:#x} -> {fn}+{after.delta:#x}"))
    if a.state is not b.state:
        out.append(SiteChange(Change.STATE, fn, a, b, f"{a.state.value} -> {b.state.value}"))
    if a.variant is not b.variant:
        out.append(SiteChange(Change.VARIANT, fn, a, b, f"{a.variant.value} -> {b.variant.value}"))
    return out


def _pair(before: _Keyed, after: _Keyed) -> list[SiteChange]:
    a, b = before.site, after.site
    fn = a.function or b.function
    if _generation(a) is _generation(b):
        out = _same_layout(before, after)
    elif a.boot_state is not b.boot_state:  # across generations only what boot makes of it compares
        out = [SiteChange(Change.STATE, fn, a, b, f"at boot {_boot(a.boot_state)} -> {_boot(b.boot_state)}")]
    else:
        out = []
    if a.recorded != b.recorded:
        change = Change.RECORD_ADDED if b.recorded else Change.RECORD_REMOVED
        out.append(SiteChange(change, fn, a, b, "recorded" if b.recorded else "no longer recorded"))
    return out


Aliases = Mapping[str, Sequence[str]]  # a function's other names, by the one it is known by (symbols.aliases)


def diff_scans(
    scan_a: Scan,
    scan_b: Scan,
    aliases: tuple[Aliases, Aliases] = ({}, {}),
    strtabs: tuple[bytes, bytes] = (b"", b""),
    nearest: tuple[Nearest, Nearest] = ({}, {}),
) -> ImageDiff:
    """``aliases``: A's and B's (:func:`rewriter.elf.symbols.aliases`); functions compare by all
    their names. ``strtabs``: A's and B's string tables, which tell apart names that print the
    same (:func:`_distinct_names`). ``nearest``: A's and B's :func:`nearest_names`."""
    scan_a, scan_b = _distinct_names((scan_a, scan_b), strtabs)
    sides = (scan_a.unnamed, scan_b.unnamed)
    pairing = Pairing.PLACE if any(sides) else Pairing.NAME
    if pairing is Pairing.PLACE:
        ka, kb = _by_place(scan_a), _by_place(scan_b)
    else:
        ka, kb = _keyed(scan_a, nearest[0]), _keyed(scan_b, nearest[1])
    changes: list[SiteChange] = []
    unchanged = relocated = 0
    for key in sorted(ka.keys() | kb.keys()):
        before, after = ka.get(key), kb.get(key)
        if after is None and before is not None:
            s, near = before.site, before.follows
            text = f"{s.state.value} site at {s.place_text}"
            changes.append(SiteChange(Change.REMOVED, s.function, s, None, text, near))
        elif before is None and after is not None:
            s, near = after.site, after.follows
            text = f"{s.state.value} site at {s.place_text}"
            changes.append(SiteChange(Change.ADDED, s.function, None, s, text, near))
        elif before is not None and after is not None:
            found = _pair(before, after)
            if before.follows is not None:  # paired by it: B's follows the same symbol
                found = [c._replace(follows=before.follows) for c in found]
            changes += found
            if not found:
                unchanged += 1
                # the function's start, not the site's place: across generations the layouts differ
                relocated += before.site.place - before.delta != after.site.place - after.delta
    functions, common = diff_functions(scan_a, scan_b, aliases) if pairing is Pairing.NAME else ((), 0)
    return ImageDiff(
        scan_a.path,
        scan_b.path,
        tuple(changes),
        unchanged,
        relocated,
        (scan_a.records.count, scan_b.records.count),
        (scan_a.generation, scan_b.generation),
        functions,
        common,
        pairing,
        sides,
        (_build(scan_a), _build(scan_b)),
        (_boot_off(scan_a), _boot_off(scan_b)),
        (scan_a.records.zeroed, scan_b.records.zeroed),
        (scan_a.log, scan_b.log),
    )


def _distinct_names(scans: tuple[Scan, Scan], strtabs: tuple[bytes, bytes]) -> tuple[Scan, Scan]:
    """The two scans with each function name that several different names in the string tables
    print as (``printable``: an invalid UTF-8 byte prints as U+FFFD, a control character as its
    escape, which a name may also hold as text) spelled as its bytes instead, ``b'f\\xff'``:
    a diff pairs sites and compares functions by name, and two functions that print alike are
    still two (one renamed to the other is a change). Other names are left as they print."""
    raws = [_raw_names(result, strtab) for result, strtab in zip(scans, strtabs, strict=True)]
    shown = _shown_names({raw for side in raws for raw in side.values()})
    renamed = [
        replace(result, sites=tuple(_named(site, raw.get(n), shown) for n, site in enumerate(result.sites)))
        if any(_spelled(r) == shown[r] for r in raw.values())
        else result
        for result, raw in zip(scans, raws, strict=True)
    ]
    return renamed[0], renamed[1]


def _named(site: Site, raw: bytes | None, shown: Mapping[bytes, str]) -> Site:
    return site if raw is None else site._replace(function=shown[raw])


def _ambiguous(name: str | None) -> bool:
    """Whether a printed name may stand for more than one name: only ``printable``'s escapes and
    the replacement character make a printed name differ from the name's own text."""
    return name is not None and ("\\" in name or "\ufffd" in name)


def _raw_names(result: Scan, strtab: bytes) -> dict[int, bytes]:
    """By site index, the string-table bytes of each site's function whose printed name is
    :func:`_ambiguous`: those of the function symbol it lies in, which named it; a name those do
    not print as (a patch log's, a name with no table to read) is its printed text."""
    funcs = result.functions
    out = {}
    for n, site in enumerate(result.sites):
        if site.function is None or not _ambiguous(site.function):
            continue
        fi = int(funcs.containing(np.array([site.place], np.uint64))[0]) if len(funcs) and strtab else -1
        raw = _string_at(strtab, int(funcs.name_index[fi])) if fi >= 0 else b""
        out[n] = raw if _printed(raw) == site.function else site.function.encode()
    return out


def _printed(raw: bytes) -> str:
    """A name as every report prints it (``rewriter.elf.image.Symbols.name_at``)."""
    return printable(raw.decode("utf-8", "replace"))


def _string_at(strtab: bytes, at: int) -> bytes:
    end = strtab.find(b"\0", at)
    return strtab[at : end if end >= 0 else len(strtab)]


def _shown_names(raws: set[bytes]) -> dict[bytes, str]:
    """Each name as it prints, unless another prints the same: then as its bytes
    (:func:`_spelled`, distinct for distinct names), until no two names show alike."""
    shown = {raw: _printed(raw) for raw in raws}
    while True:
        uses = Counter(shown.values())
        alike = [raw for raw, name in shown.items() if uses[name] > 1]
        if not alike:
            return shown
        shown.update((raw, _spelled(raw)) for raw in alike)


def _spelled(raw: bytes) -> str:
    """A name as its bytes, ``b'f\\xff'``: printable, and one spelling per name."""
    return repr(raw)


def _boot_off(result: Scan) -> str | None:
    boot = boot_of(result)
    if boot.not_loaded is not None:
        return f"the module is not loaded: {boot.not_loaded}"
    return None if boot.ftrace_off is None else f"ftrace off: {boot.ftrace_off}"


def _build(result: Scan) -> str:
    return f"{result.endian}-endian {result.abi.value}"


class _Profile(NamedTuple):
    generations: frozenset[str]
    sections: frozenset[str]


def _profiles(result: Scan, aliases: Aliases) -> dict[str, _Profile]:
    """Per function name: the generations of its sites' layouts and the sections holding them.
    A function's aliases are names of it too: ``cpu_show_gds``, its own function in 6.1, is one of
    ``cpu_show_not_affected``'s names in 6.12, not a function the kernel lost (unless a function
    of its own holds the name). Unnamed sites (weak-function bodies, stripped images) belong to no
    function."""
    gens: dict[str, set[str]] = {}
    secs: dict[str, set[str]] = {}
    for site in result.sites:
        if site.function is not None:
            gens.setdefault(site.function, set()).add(_generation(site).value)
            secs.setdefault(site.function, set()).add(site.section)
    out = {name: _Profile(frozenset(gens[name]), frozenset(secs[name])) for name in gens}
    for name in gens:
        for alias in aliases.get(name, ()):
            out.setdefault(alias, out[name])
    return out


def _joined(values: frozenset[str]) -> str:
    return ",".join(sorted(values))


def diff_functions(
    scan_a: Scan, scan_b: Scan, aliases: tuple[Aliases, Aliases] = ({}, {})
) -> tuple[tuple[FunctionChange, ...], int]:
    """Function-level changes (moved, removed, added, generation; by name within each), and how
    many names have sites in both images (an alias is a name: :func:`_profiles`)."""
    pa, pb = _profiles(scan_a, aliases[0]), _profiles(scan_b, aliases[1])
    common = sorted(pa.keys() & pb.keys())
    moved = [
        FunctionChange(FunctionChangeKind.SECTION, n, _joined(pa[n].sections), _joined(pb[n].sections))
        for n in common
        if len(pa[n].sections) == 1 == len(pb[n].sections) and pa[n].sections != pb[n].sections
    ]
    removed = [
        FunctionChange(FunctionChangeKind.REMOVED, n, _joined(pa[n].sections), None)
        for n in sorted(pa.keys() - pb.keys())
    ]
    added = [
        FunctionChange(FunctionChangeKind.ADDED, n, None, _joined(pb[n].sections))
        for n in sorted(pb.keys() - pa.keys())
    ]
    generation = [
        FunctionChange(FunctionChangeKind.GENERATION, n, _joined(pa[n].generations), _joined(pb[n].generations))
        for n in common
        if pa[n].generations != pb[n].generations
    ]
    return (*moved, *removed, *added, *generation), len(common)


class PairUnreadable(ImageError):
    """Files of a pair that could not be read, one line each (the first is the message): a pair of
    two bad files named only the first."""

    def __init__(self, lines: Sequence[str]) -> None:
        super().__init__(lines[0])
        self.lines = tuple(lines)


def _load_pair(a: Path, b: Path) -> tuple[Image, Image]:
    images, lines = [], []
    for path in (a, b):
        try:
            images.append(Image.load(path))
        except RewriteError as e:
            lines.append(str(e))
    if lines:
        raise PairUnreadable(lines)
    return images[0], images[1]


def diff_files(
    a: Path,
    b: Path,
    generations: Generations = (None, None),
    logs: Mapping[Path, Path] | None = None,
    mcount_addrs: McountAddrs = (None, None),
) -> ImageDiff:
    """``generations`` overrides the detected generation of A and of B, ``mcount_addrs`` names
    their ``_mcount`` (stripped images); ``logs`` names the patch logs that describe the files
    (``log.log_of``): their sites take part."""
    image_a, image_b = _load_pair(a, b)
    check_comparable(image_a, image_b)
    scan_a = logged(scan(image_a, mcount_addrs[0], generations[0]), logs or {})
    scan_b = logged(scan(image_b, mcount_addrs[1], generations[1]), logs or {})
    strtabs = (_strtab(image_a), _strtab(image_b))
    nearest = (nearest_names(image_a, scan_a), nearest_names(image_b, scan_b))
    return diff_scans(scan_a, scan_b, (symbol_aliases(image_a), symbol_aliases(image_b)), strtabs, nearest)


def _strtab(image: Image) -> bytes:
    return b"" if image.symbols is None else image.symbols.strtab


def check_comparable(image_a: Image, image_b: Image) -> None:
    """Refuse a module paired with a linked image (a vmlinux, an executable): the module's functions
    are not in the vmlinux, so every one would read as removed and every function of the other as
    added, a report that looks like a result and says nothing. Two vmlinux, two modules, a module
    and the object it was built from, vmlinux.o and vmlinux (sites before and after the link) all
    compare: sites are matched by function name."""
    module = next((i for i in (image_a, image_b) if i.kind is Kind.MODULE), None)
    linked = next((i for i in (image_a, image_b) if i.type != S.ET_REL), None)
    if module is None or linked is None:
        return
    raise ArgumentError(
        f"{image_a.path} ({image_a.kind.value}) and {image_b.path} ({image_b.kind.value}): a module compares "
        f"with a module or the object it was built from, not with a linked {linked.kind.value}: "
        "diff two vmlinux, two modules or two trees"
    )


def _relative(files: Sequence[Path], root: Path) -> dict[Path, Path]:
    """Each file by its path below ``root``, less a compression suffix: ``ext4.ko`` in one tree
    and ``ext4.ko.xz`` in the other (Debian 6.1 against 6.12) are one module. A tree that holds
    both names keeps them apart, each under its own full name."""
    rels = [p.relative_to(root) for p in files]
    keys = [uncompressed(r) for r in rels]
    seen = Counter(keys)
    return {(k if seen[k] == 1 else r): p for k, r, p in zip(keys, rels, files, strict=True)}


def check_pairable(a: Path, b: Path) -> None:
    """Two files or two trees: a tree's files have no one counterpart in a file. The CLI asks
    before it searches the trees, :func:`diff_paths` again for its other callers."""
    if a.is_dir() != b.is_dir():
        raise ArgumentError(f"{a} and {b}: compare two files or two directories, not one of each")


def diff_paths(
    a: Path,
    b: Path,
    files_a: Sequence[Path],
    files_b: Sequence[Path],
    generations: Generations = (None, None),
    logs: Mapping[Path, Path] | None = None,
    jobs: int = 1,
    mcount_addrs: McountAddrs = (None, None),
) -> Diff:
    """Two files, or two trees (``files_*`` found below ``a`` and ``b``) paired by relative path
    (:func:`_relative`), the pairs compared in ``jobs`` worker processes; a file and a tree are
    refused (a tree's files have no one counterpart in a file)."""
    check_pairable(a, b)
    if not a.is_dir():
        try:
            return Diff((diff_files(a, b, generations, logs, mcount_addrs),), (), (), ())
        except PairUnreadable as e:
            return Diff((), (), (), e.lines)
    ra, rb = _relative(files_a, a), _relative(files_b, b)
    # One task list: pairs, then the files of either side alone, so one pool reads them all.
    tasks: list[tuple[Path | None, Path | None]] = [(ra[rel], rb[rel]) for rel in sorted(ra.keys() & rb.keys())]
    tasks += [(ra[rel], None) for rel in sorted(ra.keys() - rb.keys())]
    tasks += [(None, rb[rel]) for rel in sorted(rb.keys() - ra.keys())]
    images: list[ImageDiff] = []
    alone: tuple[list[Unpaired], list[Unpaired]] = ([], [])
    errors: list[str] = []
    task = partial(_diff_pairs, generations=generations, logs=dict(logs or {}), mcount_addrs=mcount_addrs)
    for (left, _), (done, lines) in zip(tasks, map_chunks(task, tasks, jobs), strict=True):
        if isinstance(done, ImageDiff):
            images.append(done)
        elif done is not None:
            alone[left is None].append(done)
        errors.extend(lines)
    return Diff(tuple(images), tuple(alone[0]), tuple(alone[1]), tuple(errors))


_Done = tuple[ImageDiff | Unpaired | None, tuple[str, ...]]


def _diff_pairs(
    pairs: Sequence[tuple[Path | None, Path | None]],
    generations: Generations,
    logs: Mapping[Path, Path],
    mcount_addrs: McountAddrs = (None, None),
) -> list[_Done]:
    """:func:`diff_files` of each pair, in a worker: the diff, or the one-line errors of a pair
    that could not be compared (one per bad file; the tree's other pairs go on). A pair with one
    side only is that file read alone (:func:`_unpaired`)."""
    out: list[_Done] = []
    for a, b in pairs:
        try:
            out.append((_compared(a, b, generations, logs, mcount_addrs), ()))
        except PairUnreadable as e:
            out.append((None, e.lines))
        except RewriteError as e:
            out.append((None, (str(e),)))
    return out


def _compared(
    a: Path | None,
    b: Path | None,
    generations: Generations,
    logs: Mapping[Path, Path],
    mcount_addrs: McountAddrs = (None, None),
) -> ImageDiff | Unpaired:
    """One task of a tree diff; ``mcount_addrs`` reach each side's files as ``scan --mcount-addr``
    reaches a tree's (a stripped 6.1 vmlinux among them; they were dropped for trees)."""
    if b is None and a is not None:
        return _unpaired(a, generations[0], logs, mcount_addrs[0])
    if a is None and b is not None:
        return _unpaired(b, generations[1], logs, mcount_addrs[1])
    assert a is not None and b is not None  # a task names at least one file
    return diff_files(a, b, generations, logs, mcount_addrs)


def _unpaired(
    path: Path, generation: Generation | None, logs: Mapping[Path, Path], mcount_addr: int | None = None
) -> Unpaired:
    """A file of one tree alone: its generation, sites, and the functions they are in."""
    image = Image.load(path)
    # names that print alike are two names here too (the one side is both sides of the union)
    result, _ = _distinct_names((logged(scan(image, mcount_addr, generation), logs),) * 2, (_strtab(image),) * 2)
    functions = {s.function for s in result.sites if s.function}
    return Unpaired(path, result.generation, len(result.sites), len(functions))
