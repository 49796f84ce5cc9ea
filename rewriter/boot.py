"""What the kernel makes of a scanned image at boot (or module load): which sites ftrace can trace
afterwards, why the others cannot, and why ftrace may be off for the whole boot. The scan
(:mod:`rewriter.sites`) gives each site's ``boot_state`` and ``traceable``; this adds the
image-wide verdict that ftrace_bug() makes of them. Scan reports, audits and prenop's summaries
ask it; none of them decides it again.
"""

from __future__ import annotations

import enum
from collections import Counter
from collections.abc import Mapping, Sequence
from operator import attrgetter
from typing import Final, NamedTuple

from rewriter.elf.image import Kind
from rewriter.generations import Generation, Variant
from rewriter.locs import ZERO_ADJUSTED
from rewriter.prose import Said, agreeing, counted
from rewriter.sites import Scan, Site, changed_at_init, lacks_stub


def init_only(section: str) -> bool:
    """Whether sites in ``section`` are traced only until the kernel frees init memory and drops
    their records with it: a vmlinux's at the end of boot (``ftrace_free_init_mem()``), a module's
    once its init has run (``ftrace_free_mem()`` in ``do_init_module()``)."""
    return section.startswith(".init")


def refused_at_init(site: Site) -> bool:
    """Whether the kernel's init refuses a recorded site's words (ftrace_bug()): a record whose
    words are not what ftrace_init_nop() expects, as against one that only lacks an ool stub."""
    return site.record is not None and site.boot_state is None and not lacks_stub(site)


class Untraceable(enum.Enum):
    """Why ftrace cannot trace a site after boot; the first that applies."""

    NOT_LOADED = "not-loaded"
    UNRECORDED = "unrecorded"
    REFUSED = "refused"
    NO_STUB = "no-stub"
    DUPLICATE = "duplicate"
    WEAK_BODY = "weak-body"
    FTRACE_OFF = "ftrace-off"
    STUB_UNKNOWN = "stub-unknown"
    UNALLOCATED = "unallocated"


_UNNAMED_SAID: Final = (
    "the symbol table lacks the stub area the kernel would take it from, or its *_count word (the kernel, linked "
    "with the names, gives one or fails, and ftrace is off for the boot)"
)
_STOPS_SAID: Final = (
    "(it stops at the first such record of a page, and the module's records that sort after it there stay disabled too)"
)
# Each reason as the rest of one sentence, "N sites (KEY) ARE ..., so ...": scan's "not traceable:" notes
# and plan --image's left-out lines ("... left out: they are ..."); a "FACT: CONSEQUENCE" form after
# "not traceable: N KEY:" read as three labels in a row.
SAID: Final[Mapping[Untraceable, Said]] = {
    Untraceable.NOT_LOADED: Said(
        "is in a module the kernel refuses to load (see above)",
        "are in a module the kernel refuses to load (see above)",
    ),
    Untraceable.UNRECORDED: Said(
        "has no kernel record, so ftrace never patches it", "have no kernel record, so ftrace never patches them"
    ),
    Untraceable.REFUSED: Said(
        "holds words ftrace_init_nop() does not expect, so init fails it (ftrace bug) and ftrace is off for the boot",
        "hold words ftrace_init_nop() does not expect, so init fails them (ftrace bug) and ftrace is off for the boot",
    ),
    Untraceable.NO_STUB: Said(
        "gets no ool stub (past its area's count, or out of branch range), so ftrace_init_ool_stub() fails "
        "(ftrace bug) and ftrace is off for the boot",
        "get no ool stub (past their area's count, or out of branch range), so ftrace_init_ool_stub() fails "
        "(ftrace bug) and ftrace is off for the boot",
    ),
    Untraceable.DUPLICATE: Said(
        "is recorded more than once, and the second record finds the words the first changed, so ftrace fails "
        "it (ftrace bug) and is off from then on (at boot, or on ool when first traced)",
        "are recorded more than once, and the second record finds the words the first changed, so ftrace fails "
        "them (ftrace bug) and is off from then on (at boot, or on ool when first traced)",
    ),
    Untraceable.WEAK_BODY: Said(
        "is a weak-function body the kernel disables, in no sized function and more than "
        "FTRACE_MCOUNT_MAX_OFFSET past a symbol, so the kernel marks its record FTRACE_FL_DISABLED",
        "are weak-function bodies the kernel disables, in no sized function and more than "
        "FTRACE_MCOUNT_MAX_OFFSET past a symbol, so the kernel marks their records FTRACE_FL_DISABLED",
    ),
    Untraceable.FTRACE_OFF: Said(
        "cannot be traced, as ftrace is off for the whole boot (see above)",
        "cannot be traced, as ftrace is off for the whole boot (see above)",
    ),
    Untraceable.STUB_UNKNOWN: Said(
        "may get no stub from ftrace_init_ool_stub(), which cannot be known, as " + _UNNAMED_SAID,
        "may get no stub from ftrace_init_ool_stub(), which cannot be known, as " + _UNNAMED_SAID,
    ),
    Untraceable.UNALLOCATED: Said(
        "is in a module section without SHF_ALLOC, which the loader never places, so its record names that "
        "section's temporary copy, outside the module, and ftrace_module_enable() never enables it " + _STOPS_SAID,
        "are in a module section without SHF_ALLOC, which the loader never places, so their records name that "
        "section's temporary copy, outside the module, and ftrace_module_enable() never enables them " + _STOPS_SAID,
    ),
}


def said_text(reason: Untraceable, sites: int, where: str = "") -> str:
    """scan's sentence for ``sites`` sites not traceable for ``reason``: ``N sites (KEY) are ..., so ...``,
    KEY the JSON's ``summary.untraceable`` key; ``where`` (``, in 51 modules,``) follows the key."""
    return f"{counted(sites, 'site')} ({reason.value}){where} {agreeing(sites, *SAID[reason])}"


def they_text(reason: Untraceable, sites: int) -> str:
    """``sites`` sites not traceable for ``reason``, as a clause after a colon: ``they are ...``
    (``it has ...``), the words of :func:`said_text` with a pronoun for the count."""
    return f"{agreeing(sites, 'it', 'they')} {agreeing(sites, *SAID[reason])}"


class Boot(NamedTuple):
    """What the kernel makes of one image at boot (or module load), as far as the report says:
    ``refused`` recorded sites whose words ftrace_init_nop() refuses, ``unmatched`` records that
    name no site (init refuses those words too), ``no_stub`` ool records that get no stub (past
    an area's count, or out of branch range), ``duplicated`` the places recorded more than once
    (ftrace_process_locs() makes a record of each, and the second fails where the first changed
    the words: at boot on mprofile and patchable, when first traced on ool, whose init leaves the
    nop), and ``ftrace_off``, why ftrace_bug() then turns ftrace off for the boot (None if it does
    not). Any of these stops ftrace_update_code() and kills ftrace for everything, not just the
    one site. (Records outside kernel text are skipped by the newer ftrace_process_locs(), and harm
    nothing there; the older one has no text check: they are ``unmatched``, ``rewriter.locs``.)
    ``not_loaded``: why the kernel refuses to load the module at all (None if it loads it:
    :mod:`rewriter.modload`). ``stub_unknown``: how many sites' ool stubs the scan cannot know (a
    stub area's symbols renamed or gone: :func:`stub_unknown`). ``unallocated``: a module's sections
    with sites that the loader never places (``sites._unallocated``)."""

    refused: int
    unmatched: int
    no_stub: int
    duplicated: frozenset[int]
    ftrace_off: str | None
    not_loaded: str | None = None
    stub_unknown: int = 0
    unallocated: tuple[str, ...] = ()


def stub_unknown(site: Site) -> bool:
    """Whether a site of an ool vmlinux is one whose stub the scan cannot know (the site of a
    record that init passes, yet no stub is assigned: ``rewriter.stubs.assign_stubs``)."""
    return site.stub is None and site.record is not None and site.boot_state is not None and site.variant is Variant.OOL


def _stubs_unknown(result: Scan) -> int:
    """How many sites of an ool vmlinux with symbols have a stub the scan cannot know (a stripped
    one says what it cannot tell in its no-symbols note; a module's stubs are carved at load)."""
    if result.kind is not Kind.VMLINUX or result.generation is not Generation.OOL or result.unnamed:
        return 0
    return sum(1 for s in result.sites if stub_unknown(s))


def boot_of(result: Scan) -> Boot:
    refused = sum(1 for s in result.sites if refused_at_init(s))
    unmatched = len(result.records.unmatched)
    no_stub = sum(a.need for a in result.stubs)
    duplicated = frozenset(p.place for p in result.records.duplicates)
    why = []
    if refused:
        why.append(f"{counted(refused, 'recorded site')} with words ftrace_init_nop() refuses")
    if unmatched:
        why.append(f"{counted(unmatched, 'record')} naming no site: init refuses the words there")
    if no_stub:
        why.append(f"{counted(no_stub, 'record')} without an ool stub")
    if duplicated and any(s.record in duplicated and changed_at_init(s) for s in result.sites):
        places = counted(len(duplicated), "place")
        why.append(f"{places} recorded more than once: init finds the words the first record changed")
    if result.records.zeroed and result.zero_records_fail:
        why.append(f"{counted(result.records.zeroed, 'zeroed record')}: {ZERO_ADJUSTED}")
    when = "when it loads (ftrace off from then on)" if result.kind is Kind.MODULE else "at boot"
    off = "; ".join(why) + f": ftrace bug {when}" if why else None
    return Boot(
        refused, unmatched, no_stub, duplicated, off, result.not_loaded, _stubs_unknown(result), result.unallocated
    )


def untraceable(site: Site, boot: Boot) -> Untraceable | None:
    """Why ``site`` is not traceable after boot, or None if it is. ``Site.traceable`` is the
    per-site verdict; the image-wide ``ftrace_off`` overrides it, and ``not_loaded`` everything."""
    if boot.not_loaded is not None:
        return Untraceable.NOT_LOADED
    if site.record is None:
        return Untraceable.UNRECORDED
    if site.boot_state is None:
        return Untraceable.REFUSED if refused_at_init(site) else Untraceable.NO_STUB
    if site.record in boot.duplicated:
        return Untraceable.DUPLICATE
    if site.section in boot.unallocated:
        return Untraceable.UNALLOCATED
    if not site.traceable:
        return Untraceable.WEAK_BODY
    if boot.ftrace_off is not None:
        return Untraceable.FTRACE_OFF
    if boot.stub_unknown and stub_unknown(site):
        return Untraceable.STUB_UNKNOWN
    return None


def why_counts(sites: Sequence[Site], boot: Boot) -> Counter[Untraceable | None]:
    """``Counter(untraceable(site, boot) for site in sites)`` (None: traceable), without a call
    per site; only reasons that occur are keys."""
    if boot.not_loaded is not None:
        return Counter({Untraceable.NOT_LOADED: len(sites)} if sites else {})
    unrecorded = refused = weak = ok = 0
    for record, booted, traceable in map(attrgetter("record", "boot_state", "traceable"), sites):
        if record is None:
            unrecorded += 1
        elif booted is None:
            refused += 1
        elif not traceable:
            weak += 1
        else:
            ok += 1
        # the same ladder as untraceable(): ftrace_off applies to what is left
    if refused or boot.duplicated or boot.stub_unknown or boot.unallocated:  # reasons that need more than three fields
        return Counter(untraceable(site, boot) for site in sites)
    last = Untraceable.FTRACE_OFF if boot.ftrace_off is not None else None
    counts = ((Untraceable.UNRECORDED, unrecorded), (Untraceable.REFUSED, refused), (Untraceable.WEAK_BODY, weak))
    return Counter({reason: n for reason, n in (*counts, (last, ok)) if n})
