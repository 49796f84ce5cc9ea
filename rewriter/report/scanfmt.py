"""`mcountrw scan` output: the JSON contract, CSV and a plain table.

JSON (other tools depend on it: fields are added, never renamed or dropped)::

    {"images": [{"path", "kind", "endian", "abi", "generation", "log", "generation_override", "process_locs",
                 "sites": [{"address", "section", "offset", "function", "variant", "state", "recorded",
                            "record", "boot_state", "traceable", "stub", "source", "listed_as"}],
                 "records": {"count", "zeroed", "skipped", "unmatched", "duplicates", "unread"},
                 "stubs": [{"name", "address", "count", "stub_size", "used", "need", "covers"}],
                 "summary": {"sites", "by_section", "by_variant", "by_state", "recorded",
                             "by_boot_state", "traceable", "untraceable", "ftrace_off", "not_loaded",
                             "by_source"}}],
     "errors": ["<path>: <problem>", ...]}

* ``generation``: ``mprofile`` (<= 6.5, or any version built by a compiler without working
  ``-fpatchable-function-entry``), ``patchable`` (6.6-6.12) or ``ool`` (6.13+), detected from
  the image's contents or given with ``--generation``; null for an image with no sites and no records.
* ``generation_override``: null, or ``{"detected", "reason"}`` when ``--generation`` gave another
  generation than the image's contents say (the scan obeys the option; this says what it overrode).
* ``process_locs``: which records the kernel's ``ftrace_process_locs()`` skips, read from a vmlinux's
  code (``rewriter.locs``): ``checks-text`` (the 2025 loop: zero records and, in the core kernel,
  records outside kernel text), ``adjusts-first`` (the older loop: only what ``ftrace_call_adjust()``
  makes zero; on patchable a zeroed record is fatal), ``unknown`` (a module, an object, no symbols).
* ``address`` / ``section`` + ``offset``: the *call slot*, the word that becomes the branch to the
  tracer (``address`` is null in relocatable files). ``state``: what the file's words are now.
* ``record``: the place the kernel's record names: the call slot itself (mprofile, ool) or the
  first nop, 4 bytes before it (patchable). An int in linked images, ``"section+0xoff"`` in
  relocatable ones; null when no record names the site.
* ``boot_state``: what the kernel's boot-time ``ftrace_init_nop()`` leaves (``disabled`` for every
  site built as the compiler left it; an unrecorded site is untouched); null when init would refuse
  the words, or (ool) fails the site for want of a stub: ``ftrace bug``, and ftrace is off for the
  whole boot.
* ``summary``: ``by_*`` map each value to its count of sites; ``recorded`` is ``{"yes": N, "no": M}``
  (audit's ``counts`` has ``recorded`` and ``unrecorded`` as two integers); ``traceable`` and
  ``untraceable`` (by reason) count the sites as ``traceable`` below says.
* ``traceable``: ftrace can trace the function after boot. False for every site of a module the
  kernel refuses to load (``not-loaded``; ``summary.not_loaded`` says why: two allocated sections
  of one name, ``rewriter.modload``, or an R_PPC64_NONE record row, ``records.loader_refusal``),
  for an unrecorded site, for one init refuses (``refused``) or gives no stub (``no-stub``), for
  a place recorded more than once (``duplicate``), for a weak-function body the kernel disables
  (``weak-body``), for every site when ``ftrace_off`` names why ftrace is off for the boot, and
  for an ool vmlinux's site whose stub the scan cannot know, its area or count word missing from
  the symbol table (``stub-unknown``: not known to be traceable; ``boot.stub_unknown``), and for
  a module's site in a section without SHF_ALLOC, which the loader never places (``unallocated``)
  (``summary.untraceable`` counts each reason, the first that applies in that order).
* ``stub``: ool only, the stub area that serves the site (``ftrace_ool_stub_text``,
  ``ftrace_ool_stub_text_end``, ``ftrace_ool_stub_inittext``; ``.stubs`` in a module, carved out at
  load); null when none does (the area is short: its ``need`` counts the site; or no area was
  found). The image's ``stubs`` list the areas; a module's one entry has a null ``address`` and
  ``stub_size`` (set at load by the kernel's config), one stub per table entry.
* ``source``: ``"image"``, read from the file's words and records, or ``"log"``: known only from
  the image's patch log (``log``, the path of the log read; null when none was), a site an earlier
  rewrite nopped and unrecorded, which no scan of the file can find (``rewriter.known``). Its
  ``state`` is the one the log says the rewrite left (the log's output is this very file).
* ``listed_as``: for a site in no sized function (``function`` null: the body of an overridden weak
  function, code after a NOTYPE label), the name ftrace lists it under in available_filter_functions
  and set_ftrace_filter matches: kallsyms' nearest symbol before it (the table's
  ``? (listed as NAME)``; ``Scan.listed``). Null for a site in a function (``function`` names it),
  for one ftrace has no record of (unrecorded, refused by init), and for a weak body more than
  FTRACE_MCOUNT_MAX_OFFSET past that symbol (``weak-body``): the kernel disables its record, lists
  it as ``__ftrace_invalid_address___<offset>`` (print_rec()) and matches no filter to it. CSV: empty.
* ``records``: ``count`` and ``zeroed`` are numbers; ``skipped`` (records outside kernel text),
  ``unmatched`` (records that name no site) and ``duplicates`` are lists of the places they name,
  as strings: ``"0xc000..."`` in linked images, ``"section+0xoff"`` in relocatable ones
  (``audit``'s JSON has the same names as counts). ``unread``: a module's entries its loader never
  reads (not records: audit's ``unread-records``, and the table's ``never read`` note says why): in
  record sections after the first of their name, before 6.12 (``rewriter.modload``), in the record
  section its kernel does not read, or in one without SHF_ALLOC; empty in every other file.
* ``summary.by_boot_state`` counts null as ``"refused"``, or as ``"no-stub"`` for an ool site that
  init fails for want of a stub.
"""

from __future__ import annotations

import csv
import io
import json
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from json.encoder import encode_basestring_ascii
from operator import attrgetter
from typing import Any, Final, NamedTuple

import numpy as np

from rewriter import arrays
from rewriter.boot import Boot, Untraceable, boot_of, init_only, said_text, untraceable, why_counts
from rewriter.elf.image import Kind, index_name
from rewriter.elf.symbols import split_place
from rewriter.generations import LAYOUTS, Generation, Variant
from rewriter.prose import Said, agreeing, counted, packed, printable, wrapped
from rewriter.records import nonzero_records
from rewriter.sites import Scan, Site, Source, lacks_stub, no_site_guess, override_text, summary

REFUSED: Final = "refused"  # boot_state null, in counts and in the table
NO_STUB: Final = "no-stub"  # boot_state null for want of an ool stub (sites.lacks_stub)

CSV_FIELDS = (
    "path", "address", "section", "offset", "function", "variant", "state", "recorded",
    "generation", "record", "boot_state", "traceable", "stub", "source", "listed_as",
)  # fmt: skip


def generation_of(result: Scan) -> Generation | None:
    """The image's generation as reported: none for an image with no sites and no records."""
    if not result.sites and not result.records.count and not result.records.zeroed:
        return None
    return result.generation


def record_text(site: Site) -> str | None:
    """``record`` as the table and CSV show it: ``0x...`` or ``section+0xoff``."""
    if site.record is None:
        return None
    if site.addr is not None:
        return f"{site.record:#x}"
    return _rel_record(site)


def _rel_record(site: Site) -> str:
    name, off = _rel_parts(site)
    return f"{name}+{off:#x}"


def _rel_parts(site: Site) -> tuple[str, int]:
    """(section name, offset) of a relocatable site's record."""
    assert site.record is not None
    shndx, off = split_place(site.record)
    # A record names a place in its own site's section (sites.py locates the call slot from it).
    return (site.section if shndx == site.section_index else index_name(shndx)), off


def _record_json(site: Site) -> int | str | None:
    return site.record if site.record is None or site.addr is not None else _rel_record(site)


def site_json(site: Site, boot: Boot | None = None, listed: str | None = None) -> dict[str, Any]:
    """One site; ``listed``: the name ftrace lists a site in no function under (``Scan.listed``)."""
    boot = boot or Boot(0, 0, 0, frozenset(), None)
    return {
        "address": site.addr,
        "section": site.section,
        "offset": site.offset,
        "function": site.function,
        "variant": site.variant.value,
        "state": site.state.value,
        "recorded": site.recorded,
        "record": _record_json(site),
        "boot_state": None if site.boot_state is None else site.boot_state.value,
        "traceable": untraceable(site, boot) is None,
        "stub": site.stub,
        "source": site.source.value,
        "listed_as": None if site.function is not None else listed,
    }


def stubs_json(result: Scan) -> list[dict[str, Any]]:
    """The ool stub areas: a vmlinux's, as the kernel's ``*_count`` words size them; a module's
    ``.stubs``, which the loader sizes for one stub per ``__patchable_function_entries`` entry."""
    out = [
        {"name": a.name, "address": a.addr, "count": a.stub_count, "stub_size": a.stub_size,
         "used": a.used, "need": a.need, "covers": a.covers}
        for a in result.stubs
    ]  # fmt: skip
    if not out and result.kind in (Kind.MODULE, Kind.OBJECT) and result.generation is Generation.OOL:
        # one stub per record that reaches ftrace_init_ool_stub(): a place recorded twice takes two
        served = np.array(sorted(s.record for s in result.sites if s.stub is not None and s.record), np.uint64)
        records = nonzero_records(result.records.tables)
        used = int(np.count_nonzero(arrays.member(records, served)))
        count = result.records.count + result.records.zeroed
        out.append({"name": ".stubs", "address": None, "count": count, "stub_size": None,
                    "used": used, "need": 0, "covers": True})  # fmt: skip
    return out


def image_json(result: Scan, with_sites: bool = True) -> dict[str, Any]:
    return _image_json(result, boot_of(result), with_sites)


def _image_json(result: Scan, boot: Boot, with_sites: bool) -> dict[str, Any]:
    s = summary(result.sites)
    why = why_counts(result.sites, boot)
    generation = generation_of(result)
    return {
        "path": str(result.path),
        "kind": result.kind.value,
        "endian": result.endian,
        "abi": result.abi.value,
        "generation": None if generation is None else generation.value,
        "log": None if result.log is None else str(result.log),
        "generation_override": _override_json(result),
        "process_locs": result.locs._value_,
        "sites": [site_json(site, boot, result.listed.get(site.place)) for site in result.sites] if with_sites else [],
        "records": {
            "count": result.records.count,
            "zeroed": result.records.zeroed,
            "skipped": [p.text for p in result.records.skipped],
            "unmatched": [p.text for p in result.records.unmatched],
            "duplicates": [p.text for p in result.records.duplicates],
            "unread": [p.text for p in result.records.unread],
        },
        "stubs": stubs_json(result),
        "summary": {
            "sites": len(result.sites),
            **s,
            "by_boot_state": dict(sorted(_boot_counts(result.sites).items())),
            "traceable": why[None],
            "untraceable": {u.value: why[u] for u in Untraceable},
            "ftrace_off": boot.ftrace_off,
            "not_loaded": boot.not_loaded,
            "by_source": {src.value: n for src, n in _by_source(result.sites).items()},
        },
    }


def _override_json(result: Scan) -> dict[str, str] | None:
    over = result.overridden
    return (
        None if over is None or over.generation is None else {"detected": over.generation.value, "reason": over.reason}
    )


def _by_source(sites: Sequence[Site]) -> dict[Source, int]:
    logged = sum(1 for s in sites if s.source is Source.LOG)
    return {Source.IMAGE: len(sites) - logged, Source.LOG: logged}


def _boot_text(site: Site) -> str:
    if site.boot_state is not None:
        return site.boot_state.value
    return NO_STUB if lacks_stub(site) else REFUSED


def _boot_counts(sites: Sequence[Site]) -> Counter[str]:
    """``Counter(_boot_text(site) for site in sites)``; ``_value_`` as in ``sites.summary``."""
    counts = Counter(REFUSED if b is None else b._value_ for b in map(attrgetter("boot_state"), sites))
    if counts[REFUSED]:  # a broken image: tell the sites init fails for want of a stub apart
        counts[NO_STUB] = sum(1 for s in sites if s.boot_state is None and lacks_stub(s))
        counts[REFUSED] -= counts[NO_STUB]
    return +counts


def scans_json(results: Iterable[Scan], errors: Sequence[str]) -> dict[str, Any]:
    return {"images": [image_json(r) for r in results], "errors": list(errors)}


def scans_json_text(results: Sequence[Scan], errors: Sequence[str]) -> str:
    """``json.dumps(scans_json(...), separators=(",", ":"))``, with the site lists formatted
    directly: 157,277 dicts for a module tree would cost more than scanning it (tested equal)."""
    return join_images_json([image_json_text(r) for r in results], errors)


def image_json_text(result: Scan) -> str:
    """One image of :func:`scans_json_text`. A batch scan makes it in the worker that scanned the
    file: a text pickles back to the parent far faster than a :class:`Scan`."""
    boot = boot_of(result)
    text = _COMPACT.encode(_image_json(result, boot, with_sites=False))
    return text.replace('"sites":[]', '"sites":[' + _sites_text(result.sites, boot, result.listed) + "]", 1)


def join_images_json(images: Sequence[str], errors: Sequence[str], end: str = "") -> str:
    """The whole document from the texts of :func:`image_json_text`, then ``end``. One join:
    a module tree's document is 26 MB, and each concatenation copied all of it (0.1 s serial,
    in the parent, after every worker has finished)."""
    parts = ['{"images":[']
    for n, image in enumerate(images):
        parts += (",", image) if n else (image,)
    parts += ('],"errors":', _COMPACT.encode(list(errors)), "}", end)
    return "".join(parts)


def _sites_text(sites: Sequence[Site], boot: Boot, listed: Mapping[int, str]) -> str:
    """The sites of :func:`site_json`, as JSON text. One f-string per site over the unpacked
    tuple: a module tree has 176,000 sites, and a call, an ``Enum.value`` (a Python-level
    property in 3.11) or a dict keyed by an enum (Python-level ``__hash__``) per field cost three
    times as much (``_value_`` is the attribute behind ``.value``)."""
    quoted: dict[str | None, str] = {None: "null"}
    on = boot.ftrace_off is None and boot.not_loaded is None
    duplicated = boot.duplicated  # empty but in a broken image: a set look-up per site costs little
    unknown = boot.stub_unknown > 0  # boot.stub_unknown(): an ool site left without a stub it cannot know
    parts = []
    for site in sites:
        # all 16 fields in one unpack (call_target and file_offset unused): cheaper than two slices
        (section, shndx, offset, addr, function, variant, state, recorded, _, _, place, record,
         booted, traceable, stub, source) = site  # fmt: skip
        sec = quoted.get(section) or quoted.setdefault(section, _quote(section))
        if function is None:  # a few hundred sites of a vmlinux: the look-up is theirs alone
            func, named = "null", _quote(listed[place]) if place in listed else "null"
        else:
            func, named = _quote(function), "null"  # names rarely repeat: no look-up
        if record is None:
            rec = "null"
        elif addr is not None:
            rec = str(record)
        else:  # "section+0xoff": the quoted section name, then a tail that needs no escaping
            at, off = split_place(record)
            name = sec if at == shndx else _quote(index_name(at))  # see _rel_parts
            rec = f'{name[:-1]}+{off:#x}"'
        # untraceable(s, boot) is None, inlined
        blind = unknown and stub is None and variant is _OOL
        parts.append(
            f'{{"address":{"null" if addr is None else addr},"section":{sec},"offset":{offset},"function":{func},'
            f'"variant":"{variant._value_}","state":"{state._value_}","recorded":{"true" if recorded else "false"},'
            f'"record":{rec},"boot_state":{"null" if booted is None else _QUOTE + booted._value_ + _QUOTE},'
            f'"traceable":{"true" if traceable and on and record not in duplicated and not blind else "false"},'
            f'"stub":{quoted.get(stub) or quoted.setdefault(stub, _quote(stub))},"source":"{source._value_}",'
            f'"listed_as":{named}}}'
        )
    return ",".join(parts)


_QUOTE: Final = '"'
_OOL: Final = Variant.OOL
# json.dumps(x, separators=(",", ":")) builds its encoder anew on every call; this is the same one.
_COMPACT: Final = json.JSONEncoder(separators=(",", ":"))
# What json.dumps(str) returns (with ensure_ascii, its default), without its two Python-level calls.
# Typed for Any: _sites_text's look-ups hold None ("null") from the start, so None never reaches it.
_quote: Final[Callable[[Any], str]] = encode_basestring_ascii


def csv_text(results: Iterable[Scan]) -> str:
    """One row per site; the image's ``generation`` is repeated on each of its rows."""
    return CSV_HEADER + "".join(csv_rows_text(r) for r in results)


CSV_HEADER = ",".join(CSV_FIELDS) + "\n"


def csv_rows_text(result: Scan) -> str:
    """One image's rows of :func:`csv_text`, without the header."""
    out = io.StringIO()
    w = csv.writer(out, lineterminator="\n")
    boot = boot_of(result)
    generation = generation_of(result)
    gen = "" if generation is None else generation.value
    for s in result.sites:
        w.writerow(
            [
                result.path,
                f"{s.addr:#x}" if s.addr is not None else "",
                s.section,
                f"{s.offset:#x}",
                s.function or "",
                s.variant.value,
                s.state.value,
                int(s.recorded),
                gen,
                record_text(s) or "",
                "" if s.boot_state is None else s.boot_state.value,
                int(untraceable(s, boot) is None),
                s.stub or "",
                s.source.value,
                "" if s.function is not None else result.listed.get(s.place, ""),
            ]
        )
    return out.getvalue()


def table_text(result: Scan, limit: int | None) -> str:
    return "".join(line + "\n" for line in table_lines(result, limit))


def table_text_totals(result: Scan, limit: int | None) -> tuple[str, Totals]:
    """:func:`table_text`, and the counts its summary line states, for a batch's closing
    :func:`total_line`. A worker sends both back: the parent adds the counts up without the
    :class:`Scan` (which costs more to pickle than to format, ``rewriter.batch.render_many``)."""
    lines, totals = _table(result, limit)
    return "".join(line + "\n" for line in lines), totals


# A note that a table of several images says once, before its total line, and not under each
# image: which one (a key of :func:`_shared_text`) and how many sites it counts in the image. Over
# a module tree the same words under each of 3,000 modules buried what differs between them.
SharedNote = tuple[str, int]


def table_text_shared(result: Scan, limit: int | None) -> tuple[str, Totals, tuple[SharedNote, ...]]:
    """:func:`table_text_totals` for one image of several: the notes that say the same of every
    image (how records name a patchable site, why init-text sites drop out, why no scan finds LOG
    sites, unrecorded and weak-body sites) are left out of its text and handed back, for
    :func:`shared_lines` to say once."""
    shared: list[SharedNote] = []
    lines, totals = _table(result, limit, shared)
    return "".join(line + "\n" for line in lines), totals, tuple(shared)


def shared_lines(notes: Iterable[Sequence[SharedNote]]) -> list[str]:
    """The notes each image handed back, said once: how many images each is true of, and the
    sites it counts summed over them; none when no image had one."""
    images: Counter[str] = Counter()
    sites: Counter[str] = Counter()
    for image in notes:
        for key, n in image:
            images[key] += 1
            sites[key] += n
    if not images:
        return []
    # unindented, so that it is not read as a row of the table above it
    said = (wrapped(_shared_text(key, images[key], sites[key])) for key in sorted(images))
    return ["notes on the images above:", *(part for note in said for part in note)]


def _shared_text(key: str, images: int, sites: int) -> str:
    what, _, arg = key.partition(" ")
    if what == _STUBS_KEY:  # by kind: an object's .stubs is its module's to be (ool-le.o is no module)
        return (
            f"  ool stubs: .stubs, carved out at load, one per table entry: serve all {counted(sites, 'record')} "
            f"of {counted(images, arg)}"
        )
    if what == _UNTRACEABLE_KEY:
        reason, kind = arg.split(" ")
        return f"  not traceable: {said_text(Untraceable(reason), sites, f', in {_images(images, kind)},')}"
    if what == _LOG_KEY:
        known = (
            f"{agreeing(sites, 'is', 'are')} known only from {agreeing(images, 'its patch log', 'their patch logs')}"
        )
        return f"  LOG: {counted(sites, 'site')}, in {_images(images, arg)}, {known} {agreeing(sites, *_UNFOUND)}"
    if what == _OFFSET_KEY:  # by variant: a run of mixed generations says which images it is true of
        offset, variant = arg.split(" ")
        return _offset_note(int(offset), f" of the {counted(images, variant + ' image')}")
    module = arg == "module"
    where = counted(images, "module" if module else "image")
    return f"  init text: {sites} of the traceable sites, in {where}, {agreeing(sites, *_INIT_ONLY[module])}"


def _images(n: int, kind: str) -> str:
    """``2 modules``, ``1 object``: ``n`` images of one kind (a ``Kind`` value); ``2 vmlinux images``."""
    return counted(n, "vmlinux image") if kind == Kind.VMLINUX.value else counted(n, kind)


_OFFSET_KEY: Final = "record-offset"
_UNTRACEABLE_KEY: Final = "untraceable"  # sites not traceable for one of _SHARED_REASONS
_LOG_KEY: Final = "log"  # sites known only from the image's patch log
_STUBS_KEY: Final = "ool-stubs"  # a module's (or object's) .stubs that serve every record it has


def _serves_every_record(stubs: Sequence[dict[str, Any]], result: Scan) -> bool:
    """A module's own ``.stubs`` (one area, sized at load) that serve each of its records: the
    ``ool stubs`` line of nearly every ool module, which a run of several says once. A module
    the loader refuses, or whose stubs fall short, keeps its line."""
    (area, *more) = stubs
    return not more and area["address"] is None and result.not_loaded is None and area["used"] == result.records.count


_INIT_KEY: Final = "init"


def _offset_note(offset: int, where: str = "") -> str:
    return (
        f"  records name the word {abs(offset)} bytes {'before' if offset < 0 else 'after'} each call slot{where} "
        "(the kernel's ftrace_call_adjust() moves them onto it): `record` in --format json/csv"
    )


# -- the table ------------------------------------------------------------------------------


class Totals(NamedTuple):
    """What the summary lines of a table count, summed over images by :func:`add_totals`."""

    images: int
    modules: int  # of the images; their sites are traceable "once loaded", the others' "after boot"
    sites: int
    traceable: int
    records: int
    unrecorded: int


NO_TOTALS: Final = Totals(0, 0, 0, 0, 0, 0)


def image_totals(result: Scan, traceable: int) -> Totals:
    """One image's :class:`Totals`; ``traceable`` as :func:`untraceable` counts them (it needs the
    image's :class:`Boot`)."""
    unrecorded = sum(1 for s in result.sites if not s.recorded)
    module = 1 if result.kind is Kind.MODULE else 0
    return Totals(1, module, len(result.sites), traceable, result.records.count, unrecorded)


def add_totals(parts: Iterable[Totals]) -> Totals:
    """Field by field."""
    total = NO_TOTALS
    for part in parts:
        total = Totals(*(mine + theirs for mine, theirs in zip(total, part, strict=True)))
    return total


def total_line(totals: Totals, errors: int) -> str:
    """The line that closes a table of several images: the sums of what their summary lines say,
    and how many errors (files that could not be scanned; on stderr) the counts leave out."""
    line = (
        f"total: {counted(totals.images, 'image')}, {counted(totals.sites, 'site')}, "
        f"{totals.traceable} traceable {_after_all(totals)}; {counted(totals.records, 'record')}, "
        f"{counted(totals.unrecorded, 'site')} unrecorded"
    )
    return line + (f"; {counted(errors, 'error')} (on stderr)" if errors else "")


def _after_all(totals: Totals) -> str:
    """:func:`when_traced` of every image: modules count once loaded, the others after boot."""
    if totals.modules == totals.images:
        return "once loaded"
    return "after boot" if not totals.modules else "after boot or once loaded"


def table_lines(result: Scan, limit: int | None) -> list[str]:
    """A summary line, notes (why sites are untraceable, ool stubs), then one aligned line per
    site (``limit`` lines at most), the function last; a column the same for every site is said
    once, in an ``every site:`` line above the table (:func:`_site_rows`). The state column is
    ``file->boot`` (a module's ``file->load``): a patchable site's ``nopped->disabled`` is
    traceable, although its file words are two nops."""
    return _table(result, limit)[0]


def _table(result: Scan, limit: int | None, shared: list[SharedNote] | None = None) -> tuple[list[str], Totals]:
    """:func:`table_lines`, and the counts of its summary line (made from them: the total line
    adds up exactly what each image's summary said); the notes said once for several images go
    to ``shared`` when one is given (:func:`table_text_shared`)."""
    boot = boot_of(result)
    why = Counter(untraceable(site, boot) for site in result.sites)
    totals = image_totals(result, why[None])
    # prose wrapped at 80 columns, the head line's path kept whole on its first line (grep by file name)
    lines = wrapped(_head(result, totals), keep=len(printable(str(result.path))) + 1)
    lines += [part for note in _notes(result, boot, why, shared) for part in wrapped(note)]
    shown = result.sites if limit is None else result.sites[:limit]
    if shown:
        lines += _site_rows(result, boot, why, shown)
    if len(shown) < len(result.sites):
        lines.append(f"  ... {len(result.sites) - len(shown)} more (use --all, --format json or csv)")
    return lines, totals


Row = tuple[str, str, str, str, str, str, str, str]
"""One site's cells: call slot, section, variant, file->boot state, rec, traceable, function, stub."""

_HEADERS: Final[Row] = ("call slot", "section", "variant", "file->boot", "rec", "traceable", "function", "[stub area]")
_LOAD_HEADERS: Final[Row] = (
    "call slot",
    "section",
    "variant",
    "file->load",
    "rec",
    "traceable",
    "function",
    "[stub area]",
)
_SLOT, _SECTION, _VARIANT, _STATE, _REC, _TRACEABLE, _FUNCTION, _STUB = range(len(_HEADERS))
_REC_SAID: Final = {"rec": "recorded", "UNREC": "unrecorded (UNREC)", "LOG": "known only from the patch log (LOG)"}


def _site_rows(result: Scan, boot: Boot, why: Counter[Untraceable | None], shown: Sequence[Site]) -> list[str]:
    """The ``every site:`` line, then the column headers and one row per shown site.

    A table must read on an 80-column terminal, where the function (what a developer looks for)
    comes last, as in ``objdump -t``, ``readelf -s`` and ``perf report``. So a column whose cell
    is the same for every site of the image (not only the rows shown: a pristine kernel's
    variant, state and record) is dropped and said once, in the ``every site:`` line; and a
    module's or object's section is in its call slot (``.text+0x14``). A state column that is the
    same for every site of one ``traceable`` cell (a rewritten kernel's: ``nopped->nopped`` for
    each ``NO unrecorded`` site, ``nopped->disabled`` for the others) is said once per cell, in an
    ``every site with traceable ...:`` line (:func:`_state_by_reason`)."""
    header = _LOAD_HEADERS if result.kind is Kind.MODULE else _HEADERS  # a module's init runs as it loads
    same = _same_for_every_site(result, why)
    said = [_every_site_text(i, value, header[_STATE]) for i, value in sorted(same.items()) if value]
    by_reason = {} if _STATE in same or _TRACEABLE in same else _state_by_reason(result, boot)
    kept = [i for i in range(_FUNCTION) if i not in same and not (i == _STATE and by_reason)]
    rows = [_cells(site, untraceable(site, boot), result.listed.get(site.place)) for site in shown]
    lines = _every_site_lines(said) + _by_reason_lines(by_reason, rows, header[_STATE])
    return lines + _aligned([header, *rows], kept, with_stub=_STUB not in same)


def _state_by_reason(result: Scan, boot: Boot) -> dict[str, str]:
    """{traceable cell: state cell} when each traceable cell's sites hold one state, else {}. A
    rewritten kernel's table ran its function to column 72 (``nopped->nopped  LOG  NO unrecorded``
    beside ``nopped->disabled  rec  yes``): its states follow from why a site is not traceable."""
    states: dict[str, str] = {}
    for site in result.sites:
        state = _state_cell(site)
        if states.setdefault(_traceable_cell(untraceable(site, boot)), state) != state:
            return {}
    return states


def _by_reason_lines(by_reason: Mapping[str, str], rows: Sequence[Row], header: str) -> list[str]:
    """``every site with traceable yes or NO weak-body: file->boot nopped->disabled``: the state of
    each traceable cell of the rows shown (``header``: the state column's), the cells of one state
    said together, in the order the rows first show them; packed as the ``every site:`` line is."""
    said: dict[str, list[str]] = {}
    for cell in dict.fromkeys(row[_TRACEABLE] for row in rows) if by_reason else ():
        said.setdefault(by_reason[cell], []).append(cell)
    intro = _EVERY.rstrip(": ") + " with traceable"
    return [
        line
        for state, cells in said.items()
        for line in packed(f"{intro} {' or '.join(cells)}:", [header, state], " " * len(_EVERY))
    ]


def _same_for_every_site(result: Scan, why: Counter[Untraceable | None]) -> dict[int, str]:
    """The optional columns whose cell is one value for every site of the image, by column; ``""``
    for one the ``every site:`` line need not name: a relocatable file's section (its call slots
    name it), and the stub of an image whose sites have none (not ool; an ool site without one
    says so in its state, ``NO-STUB``)."""
    sites = result.sites
    values = {
        _SECTION: {s.section for s in sites} if result.kind in _LINKED else {""},
        _VARIANT: {s.variant.value for s in sites},
        _STATE: {_state_cell(s) for s in sites},
        _REC: {_rec_cell(s) for s in sites},
        _TRACEABLE: {_traceable_cell(reason) for reason in why},
        _STUB: {f"[{s.stub}]" if s.stub else "" for s in sites},
    }
    return {i: cells.pop() for i, cells in values.items() if len(cells) == 1}


_EVERY: Final = "  every site: "


def _every_site_lines(said: Sequence[str]) -> list[str]:
    """The ``every site:`` line, its phrases packed into lines of at most 80 columns (a phrase
    is never split; a continuation starts under the first phrase); none when nothing is said."""
    if not said:
        return []
    return packed(_EVERY.rstrip(), [f"{phrase}," for phrase in said[:-1]] + [said[-1]], " " * len(_EVERY))


def _every_site_text(column: int, value: str, state: str) -> str:
    """How the ``every site:`` line says a column's one value (``state``: the state column's header)."""
    return _EVERY_SITE[column](value, state)


_EVERY_SITE: Final[Mapping[int, Callable[[str, str], str]]] = {
    _SECTION: lambda value, _: f"in {value}",
    _VARIANT: lambda value, _: f"variant {value}",
    _STATE: lambda value, state: f"{state} {value}",
    _REC: lambda value, _: _REC_SAID[value],
    _TRACEABLE: lambda value, _: "traceable" if value == "yes" else f"not traceable ({value.removeprefix('NO ')})",
    _STUB: lambda value, _: f"ool stub in {value.strip('[]')}",
}


def _cells(site: Site, reason: Untraceable | None, listed: str | None = None) -> Row:
    """One site's row: call slot, section, variant, file->boot state, record, traceable, function,
    stub. ``listed``: for a site in no function, the name ftrace lists it under (``Scan.listed``:
    a weak body within reach of the symbol before it), which set_ftrace_filter and policies match."""
    function = site.function or ("?" if listed is None else f"? (listed as {listed})")
    return (
        site.place_text,
        site.section,
        site.variant.value,
        _state_cell(site),
        _rec_cell(site),
        _traceable_cell(reason),
        function,
        f"[{site.stub}]" if site.stub else "",
    )


def _state_cell(site: Site) -> str:
    """``file->boot``: the state in the file, and after boot init (in capitals when init fails it)."""
    return f"{site.state.value}->{_boot_text(site) if site.boot_state else _boot_text(site).upper()}"


def _rec_cell(site: Site) -> str:
    return "LOG" if site.source is Source.LOG else "rec" if site.recorded else "UNREC"


def _traceable_cell(reason: Untraceable | None) -> str:
    return "yes" if reason is None else f"NO {reason.value}"


def _aligned(rows: Sequence[Row], kept: Sequence[int], with_stub: bool) -> list[str]:
    """The ``kept`` columns of the rows, then the function (last and unpadded, so that a long
    name runs past), then the stub area when it differs between sites; each column as wide as
    its widest cell, the call slot right-aligned, the rest left-aligned."""
    widths = {i: max(len(row[i]) for row in rows) for i in kept}
    lines = []
    for row in rows:
        cells = [f"{row[i]:>{widths[i]}}" if i == _SLOT else f"{row[i]:<{widths[i]}}" for i in kept]
        tail = f"{row[_FUNCTION]}  {row[_STUB]}" if with_stub and row[_STUB] else row[_FUNCTION]
        lines.append("  " + "  ".join([*cells, tail]).rstrip())
    return lines


def _head(result: Scan, totals: Totals) -> str:
    generation = generation_of(result)
    if generation is None and not result.records.unread:
        # nothing to count: "0 sites (no sites), 0 traceable ...; 0 records (0 skipped, 0 unmatched), 0 zeroed
        # slots, 0 sites unrecorded" said it seven times, four lines under each of a tree's 21 such modules
        kind = f"{result.kind.value}, {result.endian}-endian {result.abi.value}"
        return f"{printable(str(result.path))}: {kind}: no sites and no records"
    pairs = Counter(f"{s.state.value}->{_boot_text(s)}" for s in result.sites)
    states = ", ".join(f"{n} {k}" for k, n in sorted(pairs.items())) or "no sites"
    rec = result.records
    logged = _by_source(result.sites)[Source.LOG]
    from_log = f", {logged} of them from the patch log" if logged else ""
    return (
        f"{printable(str(result.path))}: {result.kind.value}, {result.endian}-endian {result.abi.value}, "
        f"generation {'none' if generation is None else generation.value}: "
        f"{counted(totals.sites, 'site')} ({states}{from_log}), {totals.traceable} traceable {when_traced(result)}; "
        f"{counted(totals.records, 'record')} ({len(rec.skipped)} skipped, {len(rec.unmatched)} unmatched), "
        f"{counted(rec.zeroed, 'zeroed slot')}, {counted(totals.unrecorded, 'site')} unrecorded"
        + (f"; {len(rec.unread)} in record sections the module loader never reads" if rec.unread else "")
    )


def when_traced(result: Scan) -> str:
    """When a site of this image can first be traced: "after boot", or "once loaded" (a module)."""
    return "once loaded" if result.kind is Kind.MODULE else "after boot"


def _notes(
    result: Scan, boot: Boot, why: Counter[Untraceable | None], shared: list[SharedNote] | None = None
) -> list[str]:
    """The image's notes; those said once for several images go to ``shared`` when one is given."""
    out = []
    overrode = override_text(result)
    if overrode is not None and result.generation is not None:
        out.append(f"  {overrode}; what follows is the image read as {result.generation.value}")
    out += _load_lines(result, boot)
    out += _log_notes(result, shared)
    # else a nopped file read without its log was just "0 sites (no sites)"
    if result.log is None and result.records.zeroed:
        out.append(f"  zeroed: {_zeroed_text(result.records.zeroed, result.kind in _LINKED)}")
    out += _offset_notes(result, shared)
    rec = result.records
    if rec.unread and rec.unread_why:
        out.append(f"  never read: {counted(len(rec.unread), 'entry', 'entries')} {rec.unread_why}")
    elif not result.sites and not rec.count and not rec.zeroed and boot.not_loaded is None:  # else said above
        out.append(f"  no sites: {no_site_guess(result)}")
    if result.unnamed:
        out.append("  no function symbols: sites are unnamed" + _blind(result.generation, result.weak_max_offset))
    out += _untraceable_notes(result, why, shared)
    out += _init_notes(result, boot, why, shared)
    stubs = stubs_json(result)
    if stubs and shared is not None and _serves_every_record(stubs, result):
        shared.append((f"{_STUBS_KEY} {result.kind.value}", result.records.count))
    elif stubs:
        out.append("  " + _stubs_line(stubs, result.records.count, boot.stub_unknown, result.not_loaded is not None))
    elif _stub_areas_missing(result):
        out.append(
            "  ool stubs: this vmlinux defines no stub area (ftrace_ool_stub_text...), which every ool kernel has: "
            "whether its records get a stub at boot is unchecked"
        )
    return out


_LINKED: Final = (Kind.VMLINUX, Kind.EXECUTABLE)


def _log_notes(result: Scan, shared: list[SharedNote] | None) -> list[str]:
    """The patch log read, and how many sites only it knows; why no scan finds them goes to
    ``shared`` when given (it was said under each of a prenopped tree's modules)."""
    if result.log is None:
        return []
    log = printable(str(result.log))
    logged = _by_source(result.sites)[Source.LOG]
    if not logged:
        return [f"  LOG: the patch log {log} was read; the file itself shows every site it names"]
    if shared is not None:
        shared.append((f"{_LOG_KEY} {result.kind.value}", logged))
        return [f"  LOG: {counted(logged, 'site')} known only from the patch log {log}"]
    return [f"  LOG: {counted(logged, 'site')} known only from the patch log {log} {agreeing(logged, *_UNFOUND)}"]


# The reasons a tree's images share (a prenopped tree's unrecorded sites, kvm.ko's weak bodies): the
# others name the image's own NOT LOADED or FTRACE OFF line ("see above"), and stay under it.
_SHARED_REASONS: Final = (Untraceable.UNRECORDED, Untraceable.WEAK_BODY)


def _untraceable_notes(result: Scan, why: Counter[Untraceable | None], shared: list[SharedNote] | None) -> list[str]:
    """Why sites are not traceable, a sentence for each reason; to ``shared`` if given, for the
    reasons that need nothing of the image."""
    out = []
    for reason in (r for r in Untraceable if why[r]):
        if shared is not None and reason in _SHARED_REASONS:
            shared.append((f"{_UNTRACEABLE_KEY} {reason.value} {result.kind.value}", why[reason]))
        else:
            out.append(f"  not traceable: {said_text(reason, why[reason])}")
    return out


def _offset_notes(result: Scan, shared: list[SharedNote] | None) -> list[str]:
    """Where records name the sites, when not on the call slot (patchable); to ``shared`` if given."""
    out = []
    offsets = {(LAYOUTS[s.variant].record_offset, s.variant.value) for s in result.sites if s.record is not None}
    for offset, variant in sorted(o for o in offsets if o[0]):
        if shared is None:
            out.append(_offset_note(offset))
        else:
            shared.append((f"{_OFFSET_KEY} {offset} {variant}", 0))
    return out


def _init_notes(
    result: Scan, boot: Boot, why: Counter[Untraceable | None], shared: list[SharedNote] | None
) -> list[str]:
    """How many traceable sites are in init text, and why that matters; to ``shared`` if given."""
    init = _traceable_in_init(result, boot) if why[None] else 0
    module = result.kind is Kind.MODULE
    if init and shared is not None:
        shared.append((f"{_INIT_KEY} {'module' if module else 'kernel'}", init))
    elif init:
        return [f"  init text: {init} of the traceable sites {agreeing(init, *_INIT_ONLY[module])}"]
    return []


def _zeroed_text(zeroed: int, linked: bool) -> str:
    """Where zeroed record slots come from, when no patch log was read: a rewrite that dropped
    records (the sites behind them, nopped, call nothing and only its log names them), or, in a
    linked image, the linker's padding between the objects' record tables (why the kernel's
    ftrace_process_locs() skips a zero: "Some architecture linkers will pad between ...")."""
    return (
        f"{counted(zeroed, 'record slot')} {agreeing(zeroed, 'holds', 'hold')} 0: what a rewrite that drops "
        "records leaves (mcountrw nop --drop-records, prenop), whose patch log names the sites it nopped "
        "(none was read: --log, --log-dir)" + (", or the linker's padding between record tables" if linked else "")
    )


def _load_lines(result: Scan, boot: Boot) -> list[str]:
    """Why the kernel loads nothing of the image, or turns ftrace off; and, on mprofile, why the
    sites of a module's unallocated sections are refused (their words are the compiler's: the
    ``refused`` reason line alone would say otherwise; audit: ``unallocated``)."""
    out = []
    if boot.not_loaded is not None:
        out.append(f"  NOT LOADED: {boot.not_loaded}")
    if boot.ftrace_off is not None:
        out.append(f"  FTRACE OFF {when_traced(result)}: {boot.ftrace_off}")
    if result.unallocated and boot.not_loaded is None and result.generation is Generation.MPROFILE:
        out.append(
            f"  NOT PLACED: {' and '.join(result.unallocated)} without SHF_ALLOC: the module loader never places it, "
            "so its bl _mcount are never relocated, and ftrace_make_nop() finds no module stub at their target "
            "(Failed to get trampoline target): the refused sites below"
        )
    return out


_UNFOUND: Final = Said(
    "(an earlier rewrite dropped its record, and its words call nothing: no scan of the file finds it)",
    "(an earlier rewrite dropped their records, and their words call nothing: no scan of the file finds them)",
)

_INIT_ONLY: Final = {
    False: Said(
        "is in init sections: traced while the kernel boots, until it frees init memory and drops its record "
        "(ftrace_free_init_mem()); available_filter_functions never lists it",
        "are in init sections: traced while the kernel boots, until it frees init memory and drops their records "
        "(ftrace_free_init_mem()); available_filter_functions never lists them",
    ),
    True: Said(
        "is in init sections: traced while the module initialises, until the loader frees its init memory and "
        "drops its record (ftrace_free_mem() in do_init_module())",
        "are in init sections: traced while the module initialises, until the loader frees its init memory and "
        "drops their records (ftrace_free_mem() in do_init_module())",
    ),
}


def _traceable_in_init(result: Scan, boot: Boot) -> int:
    """Traceable sites in ``.init.*`` sections, whose records the kernel drops with the init memory."""
    return sum(1 for s in result.sites if init_only(s.section) and untraceable(s, boot) is None)


def _stub_areas_missing(result: Scan) -> bool:
    """An ool vmlinux with symbols and records, but no stub area among them (read as ool against
    what it says, or a broken build). A stripped one says it in its no-symbols line."""
    return (
        result.kind is Kind.VMLINUX
        and result.generation is Generation.OOL
        and not result.stubs
        and not result.unnamed
        and result.records.count > 0
    )


def _blind(generation: Generation | None, weak_max_offset: int | None) -> str:
    """What a scan without symbols cannot tell: the kernel's test_for_valid_rec() (every patchable
    and ool kernel, and an mprofile one from 6.2: ``weak_max_offset``) disables records in no
    function, and ool stub areas are found by their symbols."""
    if generation is not Generation.OOL and weak_max_offset is not None:
        return "; weak-function bodies (which the kernel disables) cannot be told: `traceable` may count a few too many"
    if generation is Generation.OOL:
        return (
            "; weak-function bodies (which the kernel disables) cannot be told, and ool stub areas cannot be "
            "found: `traceable` may count a few too many"
        )
    return ""


def _stubs_line(stubs: Sequence[dict[str, Any]], records: int, unknown: int = 0, refused: bool = False) -> str:
    if stubs[0]["address"] is None:
        # a module's .stubs is carved at load: one the loader refuses never has its stubs made
        carved = "never carved (the loader refuses the module)" if refused else "carved out at load"
        return (
            f"ool stubs: .stubs, {carved}, one per table entry ({stubs[0]['count']}): "
            f"serve {stubs[0]['used']} of {counted(records, 'record')}"
        )
    sizes = {a["stub_size"] for a in stubs}
    size = f" ({sizes.pop()} B each)" if len(sizes) == 1 else ""
    parts = [f"{a['name']} {a['used']} of {a['count']} used" + ("" if size else f" ({a['stub_size']} B each)")
             for a in stubs]  # fmt: skip
    need = sum(a["need"] for a in stubs)
    spare = sum(a["count"] - a["used"] for a in stubs)
    verdict = f"cover all {records} records, {spare} spare" if not need else f"no stub for {counted(need, 'record')}"
    if unknown and not need:  # the areas the image does not name serve the rest, or fail them
        known = sum(a["used"] for a in stubs)
        verdict = f"serve {known} of {records} records; the stubs of {counted(unknown, 'recorded site')} are unknown"
    return f"ool stubs{size}: " + ", ".join(parts) + f": {verdict}"
