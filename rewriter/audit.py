"""Audit images: counts, anomalies with a severity each, and the mflr-nop safety of every site.

Strategy: scan the image (``rewriter.sites``), decode its code once and walk every site
(``rewriter.flow``), then compare what the sites, the records and the symbols say. Each finding is
an :class:`Anomaly` with a severity from :data:`RULES` (argued there), a place and one line of
explanation. Many files are audited in worker processes, a chunk of files per task, and rolled up
by subsystem (the module's directory under ``kernel/``).

Pure data: nothing here prints or writes; ``rewriter.report`` renders an :class:`Audit`.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from types import MappingProxyType
from typing import Final, NamedTuple

import numpy as np

from rewriter import flow, ppc
from rewriter.anomalies import RANK, RULES, Anomaly, AnomalyKind, Severity
from rewriter.batch import map_chunks
from rewriter.boot import boot_of, refused_at_init, untraceable
from rewriter.code import code_view
from rewriter.elf import structs as S
from rewriter.elf.compress import Compression, HeaderRefusal
from rewriter.elf.image import Abi, Image, Kind
from rewriter.elf.release import kernel_version
from rewriter.elf.symbols import Functions, RelocationNames, split_place
from rewriter.errors import RewriteError
from rewriter.generations import LAYOUTS, OOL_AREAS, Generation, Variant, default_variant
from rewriter.kernels import Kernel, Kernels
from rewriter.locs import ZERO_ADJUSTED, Locs, loop_for_modules, zero_records_fail
from rewriter.log import logged
from rewriter.ppc.table import Table, build_table
from rewriter.prose import agreeing, counted
from rewriter.records import unread_why
from rewriter.rewrite import target_state
from rewriter.sites import (
    RecordPlace,
    Scan,
    Site,
    Source,
    init_makes_nop,
    kallsyms_name,
    lacks_stub,
    lookup_from,
    override_text,
    scan,
    weak_offsets,
)
from rewriter.states import Insn, SiteState, word_for
from rewriter.stubs import StubArea

# -- per image ------------------------------------------------------------------------------


class SiteAudit(NamedTuple):
    """A site with its mflr-nop safety verdict and, for LIVE and UNKNOWN, disassembly lines."""

    site: Site
    safety: flow.Safety
    evidence: tuple[str, ...]
    traceable: bool = True  # after boot, the image's ftrace-off and not-loaded verdicts included (boot.untraceable)


class Counts(NamedTuple):
    sites: int
    by_section: dict[str, int]
    by_variant: dict[str, int]
    by_state: dict[str, int]
    recorded: int
    unrecorded: int
    functions: int  # function symbols (aliases counted once)
    functions_with_sites: int
    sites_outside_functions: int
    init_sites: int  # in .init.text
    exit_sites: int  # in .exit.text
    records: int
    zeroed_records: int
    unmatched_records: int
    duplicate_records: int
    skipped_records: int  # outside kernel text: ftrace_process_locs skips them
    weak_bodies: int  # recorded sites in no function symbol: bodies of overridden weak functions
    from_log: int = 0  # sites only the image's patch log knows (rewriter.known)

    @property
    def functions_without_sites(self) -> int:
        return self.functions - self.functions_with_sites


QUESTIONS: Final[Mapping[Generation | None, str]] = {
    Generation.MPROFILE: "may the mflr r0 before bl _mcount be nopped: is r0 dead after the site?",
    Generation.PATCHABLE: "may the first nop stay a nop (the kernel makes it mflr r0 at boot or module load): "
    "does the body never read r0 as LR before writing it?",
    Generation.OOL: "n/a: the mflr r0 lives in the out-of-line stub, right before its bl; the entry has none",
    None: "may the site's mflr r0 be nopped: is r0 dead after the site?",
}
"""What the mflr-nop safety verdict answers, per generation (``rewriter.flow`` argues each)."""


class StubGap(NamedTuple):
    """Records of an ool vmlinux whose stub area was not found (``reason``: why not): whether
    they get a stub at boot is unchecked."""

    records: int
    reason: str


@dataclass(frozen=True, slots=True)
class ImageAudit:
    """``generation`` as the scan decided it; ``stubs`` the ool stub areas of a vmlinux (what
    ftrace_init_ool_stub() will hand out; empty otherwise: a module's are carved from ``.stubs`` at
    load, one per record); ``stub_gap`` the records of an ool vmlinux whose area was not found.
    ``compressed``: the file on disk is compressed (.ko.xz, .ko.gz, .ko.zst), so the anomalies'
    ``file_offset`` is into the decompressed ELF and says nothing about the file's own bytes."""

    path: Path
    group: str
    kind: Kind
    endian: S.ByteOrder
    abi: Abi
    counts: Counts
    anomalies: tuple[Anomaly, ...]
    sites: tuple[SiteAudit, ...]
    generation: Generation | None = None
    stubs: tuple[StubArea, ...] = ()
    stub_gap: StubGap | None = None
    compressed: bool = False
    locs: Locs = Locs.UNKNOWN  # a vmlinux's ftrace_process_locs() loop, which its modules meet too
    release: str | None = None  # the kernel release it names (a module's vermagic, a vmlinux's banner)

    def safety_counts(self) -> dict[flow.Verdict, int]:
        found = Counter(s.safety.verdict for s in self.sites)
        return {v: found[v] for v in flow.Verdict}

    @property
    def question(self) -> str:
        return QUESTIONS[self.generation]

    @property
    def unnamed(self) -> bool:
        """Sites but no function symbols: the counts that need them (weak bodies) are unknown."""
        return self.counts.sites > 0 and not self.counts.functions


def audit_image(
    image: Image,
    group: str,
    table: Table,
    mcount_addr: int | None = None,
    logs: Mapping[Path, Path] | None = None,
    generation: Generation | None = None,
) -> ImageAudit:
    """``logs``: the patch logs found to describe files (``log.log_of``): their sites count too.
    ``generation``: the scan's, when the caller overrides what it would detect (``--generation``)."""
    view = code_view(image)  # laid out once, for the scan and the walk
    result = logged(scan(image, mcount_addr, generation, text=view), logs or {})
    code = flow.load_code(image, result, table, view)
    verdicts = flow.safety(code, result.sites)
    printer = Printer(image, code, ppc.Disassembler(image.big_endian), RelocationNames(image, S.BRANCH_RELOCS))
    boot = boot_of(result)
    sites = tuple(
        SiteAudit(s, v, printer.safety(s, v) if v.verdict in _SHOWN else (), untraceable(s, boot) is None)
        for s, v in zip(result.sites, verdicts, strict=True)
    )
    gap = stub_gap(image, result)
    anomalies = _anomalies(image, result, printer, sites) + _blind_spots(result, gap)
    order = _ordered(anomalies)
    counts = _counts(result, code.funcs)
    return ImageAudit(
        image.path, group, result.kind, result.endian, result.abi, counts, tuple(order), sites, result.generation,
        result.stubs, gap, image.compression is not Compression.NONE, result.locs, result.release,
    )  # fmt: skip


_SHOWN: Final = frozenset({flow.Verdict.LIVE, flow.Verdict.UNKNOWN})  # verdicts that carry evidence


def _counts(result: Scan, funcs: Functions) -> Counts:
    sites = result.sites
    places = np.array([s.place for s in sites], np.uint64)
    fi = funcs.containing(places) if len(sites) and len(funcs) else np.full(len(sites), -1, np.int64)
    by_section = Counter(s.section for s in sites)
    return Counts(
        len(sites),
        dict(sorted(by_section.items())),
        dict(sorted(Counter(s.variant.value for s in sites).items())),
        dict(sorted(Counter(s.state.value for s in sites).items())),
        sum(s.recorded for s in sites),
        sum(not s.recorded for s in sites),
        len(funcs),
        len(np.unique(fi[fi >= 0])),
        int(np.count_nonzero(fi < 0)),
        by_section.get(".init.text", 0),
        by_section.get(".exit.text", 0),
        result.records.count,
        result.records.zeroed,
        len(result.records.unmatched),
        len(result.records.duplicates),
        len(result.records.skipped),
        len(_weak_bodies(sites, funcs)),
        sum(1 for s in sites if s.source is Source.LOG),
    )


def _weak_bodies(sites: Sequence[Site], funcs: Functions) -> list[Site]:
    """Recorded sites that no sized function symbol contains, in an image that has function
    symbols (without any, every site would be one)."""
    if not len(funcs):
        return []
    return [s for s in sites if s.recorded and s.function is None]


# -- evidence -------------------------------------------------------------------------------


class Printer(NamedTuple):
    """Disassembly lines for evidence: ``place: word  mnemonic operands``."""

    image: Image
    code: flow.Code
    dis: ppc.Disassembler
    names: RelocationNames  # ET_REL: what a branch's relocation names, indexed once per image

    def where(self, place: int) -> str:
        if self.image.type != S.ET_REL:
            return f"{place:#x}"
        shndx, off = split_place(place)
        return f"{self.image.section_at(shndx).name}+{off:#x}"

    def text(self, i: int) -> str:
        """Word ``i`` disassembled where it lies: a branch with its target's address, or in a
        relocatable file the symbol its relocation names (its own offset is 0 until the module
        loader fills it in: ``bl _mcount``, not a branch to itself)."""
        place = self.code.place(i)
        word = int(self.code.words[i])
        if self.image.type != S.ET_REL:
            return self.dis.text(word, place)
        shndx, offset = split_place(place)  # branch targets in-section
        named = None
        if ppc.is_relative_branch(word):  # only these read relocations, and only when printed
            named = self.names.text(shndx, offset)
        return self.dis.text(word, offset, named)

    def line(self, i: int, note: str = "") -> str:
        text = f"{self.where(self.code.place(i))}: {int(self.code.words[i]):08x}  {self.text(i)}"
        return f"{text}  <- {note}" if note else text

    def word_index(self, place: int) -> int:
        return int(self.code.index(np.array([place], np.uint64))[0])

    def slots(self, site: Site) -> list[str]:
        b = self.word_index(site.place)
        first = b + LAYOUTS[site.variant].first_offset // ppc.INSN_SIZE
        return [self.line(i) for i in range(max(first, 0), b + 1)] if b >= 0 else []

    def safety(self, site: Site, safety: flow.Safety) -> tuple[str, ...]:
        """The site's words, then the word that decided (the read of r0, or what stopped the walk)."""
        lines = self.slots(site)
        if safety.evidence is not None and self.word_index(safety.evidence) >= 0:
            lines.append(self.line(self.word_index(safety.evidence), safety.why.value if safety.why else ""))
        return tuple(lines)


# -- anomalies ------------------------------------------------------------------------------

_MFLR_PRESENT: Final = frozenset({SiteState.ENABLED, SiteState.DISABLED})
_LIVE_CALL: Final = frozenset({SiteState.ENABLED, SiteState.ARMED, SiteState.BROKEN})


def _at_site(
    kind: AnomalyKind,
    site: Site,
    message: str,
    evidence: Sequence[str] = (),
    severity: Severity | None = None,
) -> Anomaly:
    return Anomaly(
        kind,
        severity or RULES[kind].severity,
        message,
        site.addr,
        site.section,
        site.offset,
        site.file_offset,
        site.function,
        tuple(evidence),
    )


_HEADER_REFUSALS: Final = MappingProxyType(
    {
        Compression.XZ: (
            AnomalyKind.XZ_CHECK,
            "the kernel's own decompressor takes CRC32 or none, so where kmod hands it the module "
            "(/sys/module/compression: xz) the module does not load (finit_module: EINVAL); recompress with "
            "xz --check=crc32, as Kbuild does",
        ),
        Compression.GZIP: (
            AnomalyKind.GZIP_HEADER,
            "the kernel's own decompressor skips the fixed header and a file name only, and inflates from where "
            "these fields begin, so where kmod hands it the module (/sys/module/compression: gzip) the module "
            "does not load (finit_module: EINVAL); recompress with gzip -n, as Kbuild does",
        ),
        Compression.ZSTD: (
            AnomalyKind.ZSTD_SIZE,
            "kmod 34 and later, which decompresses a module itself unless /sys/module/compression says zstd, "
            "refuses it (zstd: Failed to determine decompression size); recompress from the file, not a pipe "
            "(zstd writes the size it knows), as Kbuild does",
        ),
    }
)


def _header_refused(refusal: HeaderRefusal) -> Anomaly:
    """A compressed module one of its loaders refuses (``compress.header_refusal``): a warning,
    since the other takes it, and which one decompresses it depends on the system."""
    kind, why = _HEADER_REFUSALS[refusal.compression]
    return Anomaly(kind, Severity.WARNING, f"{refusal.what}: {why}")


def _anomalies(image: Image, result: Scan, printer: Printer, sites: Sequence[SiteAudit]) -> list[Anomaly]:
    found = _abi_anomalies(image)
    if result.not_loaded is not None:
        found.append(Anomaly(AnomalyKind.MODULE_REFUSED, Severity.ERROR, result.not_loaded))
    if image.header_refusal is not None and image.kind is Kind.MODULE:
        found.append(_header_refused(image.header_refusal))
    found += _record_anomalies(image, result, printer)
    found += _stub_anomalies(result.stubs)
    found += _mixed_states(result.sites)
    found += _unallocated_anomalies(result)
    entries = _entries(printer.code, result.sites)
    make_nop = _make_nop_init(image, result)
    for sa in sites:
        placed = sa.site.section not in result.unallocated  # unallocated says why init fails there
        found += _site_anomalies(printer, sa, entries.get(sa.site.place), make_nop, placed)
    weak = _weak_bodies(result.sites, printer.code.funcs)
    if weak:
        unchecked = _why_no_weak_check(image) if result.weak_max_offset is None else ""
        lookup = lookup_from(image, printer.code.funcs)  # once: a module's is made from its whole symbol table
        found += [_weak_body(image, lookup, result.weak_max_offset, unchecked, s) for s in weak]
    return found


def _site_anomalies(
    printer: Printer, sa: SiteAudit, entry: _Entry | None, make_nop: _MakeNop | None = None, placed: bool = True
) -> list[Anomaly]:
    """``make_nop``: the image's kernel has only the generic ftrace_init_nop() (:func:`_make_nop_init`); ``placed``:
    the site's section is one the module loader places (:func:`_unallocated_anomalies`)."""
    site, out = sa.site, []
    if site.state is SiteState.BROKEN:
        msg = "nop; bl to the tracer: reaches it with r0 != LR"
        out.append(_at_site(AnomalyKind.BROKEN, site, msg, printer.slots(site)))
    elif site.state is SiteState.UNKNOWN:
        msg = "slots hold neither a site state nor gcc 5's form"
        out.append(_at_site(AnomalyKind.UNEXPECTED_WORDS, site, msg, printer.slots(site)))
    elif refused_at_init(site) and placed:  # ool-stubs says a missing stub, once
        said = _refusal(printer, site, make_nop)
        out.append(_at_site(AnomalyKind.BOOT_REFUSED, site, said, printer.slots(site)))
    if not site.recorded and site.state not in (target_state(site.variant, SiteState.NOPPED), SiteState.GUARDED):
        if site.state in _LIVE_CALL:
            msg, sev = "calls _mcount on every entry; ftrace has no record to patch it", Severity.WARNING
        else:
            msg, sev = "no record: ftrace cannot enable this site", Severity.NOTE
        out.append(_at_site(AnomalyKind.UNRECORDED, site, msg, severity=sev))
    if sa.safety.verdict is flow.Verdict.LIVE:
        out.append(_r0live(site, sa))
    if entry is not None:
        out += _entry_anomalies(site, entry)
    return out


def _unallocated_anomalies(result: Scan) -> list[Anomaly]:
    """One anomaly per section of a module that the loader never places (no SHF_ALLOC) and that
    holds recorded sites (``Scan.unallocated``), at its first; RULES argues the severity: an error
    where it turns ftrace off (mprofile), a warning where its functions are only never traced."""
    if result.not_loaded is not None:  # module-refused: nothing of it is loaded
        return []
    out = []
    for section in result.unallocated:
        held = sorted((s for s in result.sites if s.section == section and s.record is not None), key=_by_offset)
        if not held:
            continue
        names = sorted({s.function for s in held if s.function})
        shown = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
        what = f" ({shown})" if shown else ""
        if result.generation is Generation.MPROFILE:
            then = (
                "their bl _mcount is never relocated and ftrace_make_nop() finds no module stub at its target "
                "(Failed to get trampoline target): ftrace_bug() turns function tracing off at load"
            )
            severity = Severity.ERROR
        else:
            then = "ftrace_module_enable() never enables a record outside the module: never traced"
            severity = Severity.WARNING
        msg = (
            f"{counted(len(held), 'recorded site')}{what} in {section}, a section without SHF_ALLOC: the module "
            f"loader never places it, so its code is not in the loaded module and the records name the loader's "
            f"temporary copy; {then}"
        )
        out.append(_at_site(AnomalyKind.UNALLOCATED, held[0], msg, severity=severity))
    return out


def _by_offset(site: Site) -> int:
    return site.offset


def _r0live(site: Site, sa: SiteAudit) -> Anomaly:
    """The severity argued in RULES: patchable is always a warning (the kernel writes the mflr)."""
    why = (sa.safety.why or flow.Why.READS_R0).value
    if site.variant is Variant.PATCHABLE:
        msg, sev = f"the first nop must become mflr r0 (as ftrace_init_nop makes it): the body {why}", Severity.WARNING
    elif site.state in _MFLR_PRESENT:
        msg, sev = f"nopping mflr r0 would change the function: it {why}", Severity.WARNING
    else:
        msg, sev = f"mflr r0 is gone ({site.state.value}) and the function {why}", Severity.ERROR
    return _at_site(AnomalyKind.R0_LIVE, site, msg, sa.evidence, sev)


def _expected_text(insn: Insn) -> str:
    """What the kernel prints for the word it expected: a fixed word in hex, a call as ``bl``."""
    if insn is Insn.CALL:
        return "bl"
    return f"{word_for(insn, 0, 0):08x}"


def kernel_complaint(printer: Printer, variant: Variant, call_place: int) -> str | None:
    """``<place>: expected (...) != found (...)`` for the first slot, in the order ftrace_init_nop
    checks them, whose word is not what the compiler leaves there (6.12/7.2 ftrace_validate_inst;
    a call only needs to be a ``bl``); None if every slot holds it. A kernel before 6.6 has no
    ftrace_init_nop(): :func:`_make_nop_complaint`."""
    lay = LAYOUTS[variant]
    for slot, want in zip(lay.state_slots, lay.states[lay.built], strict=True):
        place = call_place + (lay.offset(slot) or 0)
        i = printer.word_index(place)
        if i < 0:
            return f"{printer.where(place)}: expected ({_expected_text(want)}) != found (no code)"
        word = int(printer.code.words[i])
        if ppc.is_bl(word) if want is Insn.CALL else word == word_for(want, 0, 0):
            continue
        return f"{printer.where(place)}: expected ({_expected_text(want)}) != found ({word:08x})"
    return None


def _refusal(printer: Printer, site: Site, make_nop: _MakeNop | None) -> str:
    """The kernel's complaint about a recorded site whose words its init refuses."""
    if make_nop is not None:
        said = _make_nop_complaint(printer, site.place, make_nop)
    else:
        said = kernel_complaint(printer, site.variant, site.place)
    checker = "ftrace_make_nop()" if make_nop is not None else "ftrace_init_nop()"
    why = (
        f"{_article(site.state.value)} {site.state.value} {site.variant.value} site keeps its record; {checker} "
        "refuses it and ftrace_bug() turns function tracing off"
    )
    return f"{said}: {why}" if said else why


class _MakeNop(NamedTuple):
    """A kernel before 6.6, whose ftrace_init_nop() is the generic one (include/linux/ftrace.h): its
    init (a module's at load) nops each mprofile record with ftrace_make_nop(), whose complaints
    :func:`_make_nop_complaint` quotes."""

    vmlinux: bool  # the image is its vmlinux, whose own calls reach _mcount directly
    mcount: int | None  # _mcount's address (the kernel's MCOUNT_ADDR), None when stripped


def _make_nop_init(image: Image, result: Scan) -> _MakeNop | None:
    """What ftrace_make_nop() needs to say what it prints, where it is the image's kernel's init (a
    vmlinux's or a module's: a test program or an object is held to 6.6's words, as the scan holds it).
    _mcount's address is the scan's mcount entry (``Scan.mcount_entries``: by its symbol, by
    ``--mcount-addr``, or in a stripped image by what the recorded ``bl`` words call), when it found one."""
    if image.kind not in (Kind.VMLINUX, Kind.MODULE) or not init_makes_nop(image, result.generation):
        return None
    found = result.mcount_entries if image.kind is Kind.VMLINUX else ()
    return _MakeNop(image.kind is Kind.VMLINUX, found[0] if len(found) == 1 else None)


def _make_nop_complaint(printer: Printer, call_place: int, make_nop: _MakeNop) -> str | None:
    """What ftrace_make_nop() prints for a recorded mprofile site it refuses (arch/powerpc/kernel/
    trace/ftrace.c, 6.1): in the vmlinux within branch range of _mcount, ftrace_modify_code()'s
    ``replaced (found) != old (the bl it would nop)``; beyond it, and in a module (whose calls go
    through a stub), ``Not expected bl: opcode is (found)``; a module's bl without ``mflr r0`` or
    ``std r0,16(r1)`` before it, ``Unexpected instruction (found) around bl _mcount``. qemu, 6.1:
    the vmlinux with do_one_initcall nopped prints ``replaced (60000000) != old (4805a961)``,
    nls_utf8.ko with char2uni nopped ``Not expected bl: opcode is 60000000``, not 6.6's ``expected
    (...) != found (...)``. None where the words are not known (stripped) or pass."""
    i = printer.word_index(call_place)
    word = int(printer.code.words[i]) if i >= 0 else None
    if word is None or (make_nop.vmlinux and make_nop.mcount is None):
        return None
    where = printer.where(call_place)
    if not ppc.is_bl(word):
        if make_nop.mcount is not None and ppc.in_branch_range(make_nop.mcount - call_place):
            return f"{where}: replaced ({word:08x}) != old ({ppc.bl(call_place, make_nop.mcount):08x})"
        return f"{where}: Not expected bl: opcode is {word:08x}"
    j = printer.word_index(call_place - ppc.INSN_SIZE)
    before = int(printer.code.words[j]) if j >= 0 else None
    if make_nop.vmlinux or before is None or before in (ppc.MFLR_R0, ppc.STD_R0_16_R1):
        return None
    return f"{printer.where(call_place - ppc.INSN_SIZE)}: Unexpected instruction {before:08x} around bl _mcount"


def _article(word: str) -> str:
    """``an`` before ``enabled``, ``armed``, ``unknown``; ``a`` before the other states."""
    return "an" if word[:1] in "aeiou" else "a"


def _why_no_weak_check(image: Image) -> str:
    """Why an image's kernel is taken to have no test_for_valid_rec() (read once per image)."""
    assumed = "" if kernel_version(image) else "; this image names no kernel version: taken to be 6.1"
    return f"powerpc defines no FTRACE_MCOUNT_MAX_OFFSET before 6.2{assumed}"


def _weak_body(
    image: Image, lookup: tuple[np.ndarray, np.ndarray], max_offset: int | None, unchecked: str, site: Site
) -> Anomaly:
    """Say what the kernel does with the record (kernel/trace/ftrace.c test_for_valid_rec());
    ``lookup``: the symbols kallsyms_lookup() measures from (``sites.lookup_from``); ``unchecked``:
    why the kernel has no such check, when ``max_offset`` is None."""
    offset = int(weak_offsets(lookup[0], np.array([site.place], np.uint64))[0])
    name = kallsyms_name(image, lookup, site.place)
    near = f"{name}+{offset:#x}" if name else "no symbol before it"
    if max_offset is None:
        msg = (
            f"no function symbol; nearest is {near}. This kernel has no test_for_valid_rec() ({unchecked}): "
            f"the record stays traceable, listed as {name or 'its address'}"
        )
    elif offset < 0 or offset > max_offset:
        msg = (
            f"no function symbol; nearest is {near}, past FTRACE_MCOUNT_MAX_OFFSET ({max_offset}): "
            "test_for_valid_rec() marks it FTRACE_FL_DISABLED (never traced; the boot checks still apply)"
        )
    else:
        msg = (
            f"no function symbol; nearest is {near}, within FTRACE_MCOUNT_MAX_OFFSET ({max_offset}): "
            f"test_for_valid_rec() keeps it, traceable as a second record of {name}"
        )
    return replace(_at_site(AnomalyKind.WEAK_BODY, site, msg), near=name)


def stub_gap(image: Image, result: Scan) -> StubGap | None:
    """The recorded sites of an ool vmlinux that no stub area was found for (the scan leaves
    their ``stub`` None, as it does for a site whose area is short, which :func:`lacks_stub`
    tells apart), or None if there are none. Only a vmlinux: a module's stubs are carved at load,
    and other executables are no kernel."""
    if result.kind is not Kind.VMLINUX or result.generation is not Generation.OOL:
        return None
    records = sum(1 for s in result.sites if s.recorded and s.stub is None and not lacks_stub(s))
    if not records:
        return None
    syms = image.symbols
    if syms is None or not len(syms.table):
        return StubGap(records, "no symbols")
    # an area's count word is named only where the area is found
    found = [name for name in OOL_AREAS if len(syms.find(name))]
    missing = [name for name in OOL_AREAS if name not in found]
    missing += [name + "_count" for name in found if not len(syms.find(name + "_count"))]
    return StubGap(records, f"no {' or '.join(missing) or 'stub area'} symbol")


def _blind_spots(result: Scan, gap: StubGap | None) -> list[Anomaly]:
    """What the audit could not check, said as findings so that no report reads as clean for it."""
    out = []
    if gap is not None:
        # Without symbols the areas are there but cannot be found; with them, the image has none,
        # which no ool kernel lacks: the advice differs.
        advice = (
            "audit the unstripped vmlinux to check it"
            if gap.reason == "no symbols"
            else "every ool (6.13+) vmlinux defines them: is it one?"
        )
        msg = (
            f"ool stub areas not found ({gap.reason}): whether {counted(gap.records, 'record')} get a stub at "
            "boot is unchecked (where an area is short, ftrace_init_ool_stub() fails and ftrace_bug() turns "
            f"function tracing off: ool-stubs); {advice}"
        )
        out.append(Anomaly(AnomalyKind.OOL_STUBS_UNCHECKED, Severity.WARNING, msg))
    if result.unnamed:
        msg = _unchecked_without_symbols(result.generation, result.weak_max_offset is not None)
        out.append(Anomaly(AnomalyKind.NO_SYMBOLS, Severity.NOTE, msg))
    overrode = override_text(result)
    if overrode is not None and result.generation is not None:
        msg = f"{overrode}; every finding here reads the image as {result.generation.value}"
        out.append(Anomaly(AnomalyKind.GENERATION_OVERRIDE, Severity.WARNING, msg))
    return out


def _unchecked_without_symbols(generation: Generation | None, weak_check: bool) -> str:
    """The checks an image without function symbols does not get, per generation (RULES argues
    why none of them turns ftrace off). ``weak_check``: the kernel has test_for_valid_rec()
    (every patchable and ool one, an mprofile one from 6.2: ``Scan.weak_max_offset``)."""
    checks = ["weak-body", "not-at-entry"] + (["patchable-before-gep"] if generation is Generation.PATCHABLE else [])
    msg = f"no function symbols: sites are unnamed, and these checks did not run: {', '.join(checks)}"
    if weak_check:
        msg += (
            "; the kernel disables records in weak-function bodies, so a few sites called traceable"
            " (scan, the html report) may not be"
        )
    if generation is not Generation.OOL:
        msg += "; the mflr-nop walk has no function edges, so more sites stay unknown"
    return msg


def _stub_anomalies(stubs: Sequence[StubArea]) -> list[Anomaly]:
    out = []
    for area in stubs:
        if area.overflows:
            msg = (
                f"{area.name}: {area.size} bytes, but ftrace_init_ool_stub() writes {counted(area.used, 'stub')} of "
                f"{area.stub_size} bytes there ({area.used * area.stub_size}; it reads the count word, never the "
                "area's size): the last run past the area, over whatever follows it"
            )
            out.append(Anomaly(AnomalyKind.OOL_STUBS, Severity.ERROR, msg, area.addr, function=area.name))
        if area.covers:
            continue
        msg = (
            f"{area.name}: {counted(area.stub_count, 'stub')}, {counted(area.used + area.need, 'record')} "
            f"{agreeing(area.used + area.need, 'wants', 'want')} one here, "
            f"none for {counted(area.need, 'record')} (past ftrace_ool_stub_*_count or out of branch range): "
            "ftrace_init_ool_stub() returns -EINVAL and ftrace_bug() turns function tracing off"
        )
        out.append(Anomaly(AnomalyKind.OOL_STUBS, Severity.ERROR, msg, area.addr, function=area.name))
    return out


class _Entry(NamedTuple):
    function: str | None
    start: int
    lep: int


def _entries(code: flow.Code, sites: Sequence[Site]) -> dict[int, _Entry]:
    """The function (start and local entry place) around each site place, for sites inside one."""
    funcs = code.funcs
    if not sites or not len(funcs):
        return {}
    places = np.array([s.place for s in sites], np.uint64)
    fi = funcs.containing(places)
    out = {}
    for site, place, f in zip(sites, places.tolist(), fi.tolist(), strict=True):
        if f >= 0:
            out[place] = _Entry(site.function, int(funcs.start[f]), int(funcs.lep[f]))
    return out


def _entry_anomalies(site: Site, entry: _Entry) -> list[Anomaly]:
    """Where the call slot sits relative to its function's entries (ELFv2 ABI 3.4.1: the local
    entry is the global entry plus the st_other offset)."""
    place = site.place
    first = place + LAYOUTS[site.variant].first_offset  # the site's first word
    if site.variant is Variant.PATCHABLE and entry.lep != entry.start and first == entry.start:
        gap = entry.lep - entry.start
        msg = f"nops at the global entry, {gap} bytes before the local entry: local calls skip them"
        return [_at_site(AnomalyKind.PATCHABLE_BEFORE_GEP, site, msg)]
    if first == entry.lep:
        return []
    where = f"{site.function or 'function'}+{place - entry.start:#x}"
    return [_at_site(AnomalyKind.NOT_AT_ENTRY, site, f"call slot at {where}, not right after the local entry")]


def _record_anomalies(image: Image, result: Scan, printer: Printer) -> list[Anomaly]:
    out = []
    for place in result.records.unmatched:
        out.append(_dangling(image, printer, place, result.generation))
    function_of = {s.record: s.function for s in result.sites if s.record is not None}
    for place in result.records.duplicates:
        section, offset, addr, at = place
        out.append(
            Anomaly(
                AnomalyKind.DUPLICATE_RECORD, Severity.ERROR, "recorded more than once", addr, section, offset,
                function=function_of.get(at),
            )
        )  # fmt: skip
    if result.records.zeroed:
        msg = f"{counted(result.records.zeroed, 'zeroed slot')} in {_table_names(result)}"  # as scan says
        if result.zero_records_fail:  # a patchable kernel older than the 2025 loop (rewriter.locs)
            out.append(Anomaly(AnomalyKind.ZEROED_RECORDS, Severity.ERROR, f"{msg}: {ZERO_ADJUSTED}: FTRACE OFF"))
        else:
            out.append(Anomaly(AnomalyKind.ZEROED_RECORDS, Severity.NOTE, msg))
    unread = result.records.unread
    if unread:
        first = unread[0]
        msg = f"{counted(len(unread), 'entry', 'entries')} {result.records.unread_why or unread_why(image)}"
        function = _function_name(image, printer.code.funcs, first.place)
        kind, severity = AnomalyKind.UNREAD_RECORDS, Severity.WARNING
        out.append(Anomaly(kind, severity, msg, first.addr, first.section, first.offset, function=function))
    skipped = result.records.skipped
    if skipped:
        first = skipped[0]
        msg = (
            f"{counted(len(skipped), 'record')} outside kernel text (the first at {first.text}): "
            "ftrace_process_locs() skips them"
        )
        out.append(Anomaly(AnomalyKind.SKIPPED_RECORDS, Severity.NOTE, msg, first.addr, first.section, first.offset))
    return out


def _table_names(result: Scan) -> str:
    """The record tables as the kernel knows them: a relocatable file's by the section its
    relocations fill (``.rela__patchable_function_entries`` fills ``__patchable_function_entries``)."""
    names = sorted({t.section.removeprefix(".rela") for t in result.records.tables})
    return " and ".join(names) or "the record table"


_RECORD_WANTS: Final[Mapping[Generation | None, str]] = {
    Generation.MPROFILE: "a call to _mcount",
    Generation.PATCHABLE: "the first of two nops",
    Generation.OOL: "a nop",
    None: "a call site",
}


def _dangling(image: Image, printer: Printer, record: RecordPlace, generation: Generation | None) -> Anomaly:
    section, offset, addr, place = record
    sec = image.section(section) if section is not None else None
    i = printer.word_index(place)
    if i < 0 and place % ppc.INSN_SIZE and printer.word_index(place - place % ppc.INSN_SIZE) >= 0:
        msg = f"record points inside the word at {printer.where(place - place % ppc.INSN_SIZE)}, not at a word"
        return Anomaly(AnomalyKind.DANGLING, Severity.ERROR, msg, addr, section, offset)
    if i < 0:
        return Anomaly(AnomalyKind.DANGLING, Severity.ERROR, "record points outside the code", addr, section, offset)
    function = _function_name(image, printer.code.funcs, place)
    file_offset = sec.offset + offset if sec is not None and offset is not None else None
    msg = f"record points at {printer.text(i)!r}, not {_RECORD_WANTS[generation]}"
    if generation in (Generation.PATCHABLE, Generation.OOL):
        variant = default_variant(generation)
        said = kernel_complaint(printer, variant, place - LAYOUTS[variant].record_offset)
        msg = f"{said}: {msg}" if said else msg
    evidence = (printer.line(i),)
    return Anomaly(AnomalyKind.DANGLING, Severity.ERROR, msg, addr, section, offset, file_offset, function, evidence)


def _function_name(image: Image, funcs: Functions, place: int) -> str | None:
    """The function containing ``place``."""
    if image.symbols is None or not len(funcs):
        return None
    f = int(funcs.containing(np.array([place], np.uint64))[0])
    return image.symbols.name_at(int(funcs.name_index[f])) if f >= 0 else None


def _mixed_states(sites: Sequence[Site]) -> list[Anomaly]:
    out = []
    for variant in Variant:
        states = Counter(
            s.state.value
            for s in sites
            if s.variant is variant and s.state not in (SiteState.BROKEN, SiteState.UNKNOWN)
        )
        if len(states) > 1:
            mix = ", ".join(f"{n} {k}" for k, n in sorted(states.items()))
            out.append(Anomaly(AnomalyKind.MIXED_STATES, Severity.NOTE, f"{variant.value} sites: {mix}"))
    return out


def _abi_anomalies(image: Image) -> list[Anomaly]:
    """e_flags against the file's own evidence: ``.opd`` descriptors exist only in ELFv1, local
    entry offsets in st_other only in ELFv2 (ELFv2 ABI 3.4.1)."""
    flag = int(image.ehdr["e_flags"]) & S.EF_PPC64_ABI
    out = []
    if flag == 2 and image.section(".opd") is not None:
        out.append(Anomaly(AnomalyKind.ABI_MISMATCH, Severity.ERROR, "e_flags say ELFv2 but the file has .opd (ELFv1)"))
    syms = image.symbols
    if flag == 1 and syms is not None:
        is_func = S.st_type(syms.table["st_info"]) == S.STT_FUNC
        if np.any(S.ppc64_local_entry_offset(syms.table["st_other"][is_func]) > 0):
            msg = "e_flags say ELFv1 but functions have ELFv2 local entry points"
            out.append(Anomaly(AnomalyKind.ABI_MISMATCH, Severity.ERROR, msg))
    return out


def cross_image_anomalies(audits: Sequence[ImageAudit]) -> list[ImageAudit]:
    """Modules whose ABI or byte order differs from the vmlinux that loads them, modules built for
    another release than any vmlinux audited with them, and patchable modules with zeroed records
    for a vmlinux whose ftrace_process_locs() adds 4 before it tests for zero (``rewriter.locs``):
    the loop runs at module load too, and turns ftrace off. With several vmlinux images (Debian's
    4k- and 64k-page builds), each module is held to the one of its release (``rewriter.kernels``)."""
    kernels = [a for a in audits if a.kind is Kind.VMLINUX]
    if not kernels:
        return list(audits)
    run = Kernels(tuple(Kernel(k.path, k.release, loop_for_modules(k.generation, k.locs)) for k in kernels))
    return [_against_kernel(a, run, kernels) if a.kind is Kind.MODULE else a for a in audits]


def _against_kernel(a: ImageAudit, run: Kernels, kernels: Sequence[ImageAudit]) -> ImageAudit:
    """One module's anomalies against the vmlinux that loads it; with one vmlinux audited, against
    that one whatever its release (and a release mismatch said)."""
    loader = run.loader(a.release)
    k = kernels[run.known.index(loader)] if loader is not None else kernels[0] if len(kernels) == 1 else None
    if k is not None and (a.abi is not k.abi or a.endian != k.endian):
        msg = f"{a.endian}-endian {a.abi.value} module for a {k.endian}-endian {k.abi.value} kernel"
        a = replace(a, anomalies=(Anomaly(AnomalyKind.ABI_MISMATCH, Severity.ERROR, msg), *a.anomalies))
    if loader is None:
        a = replace(a, anomalies=_ordered([*a.anomalies, _release_mismatch(a, run)]))
    if k is not None and zero_records_fail(a.generation, loop_for_modules(k.generation, k.locs)):
        a = replace(a, anomalies=_ordered([_fatal_zeroes(x, k.path) for x in a.anomalies]))
    return a


def _release_mismatch(module: ImageAudit, run: Kernels) -> Anomaly:
    if len(run.known) == 1:
        k = run.known[0]
        theirs = f"audited with {k.path}, Linux {k.release}: likely not the kernel that loads it"
    else:
        theirs = f"audited with vmlinux images of {run.releases()}: likely none loads it"
    msg = f"built for {module.release} (its vermagic), {theirs}"
    return Anomaly(AnomalyKind.RELEASE_MISMATCH, RULES[AnomalyKind.RELEASE_MISMATCH].severity, msg)


def _ordered(anomalies: Sequence[Anomaly]) -> tuple[Anomaly, ...]:
    """Errors first, then warnings and notes; by kind and place within each."""
    return tuple(sorted(anomalies, key=lambda a: (-RANK[a.severity], a.kind.value, a.section or "", a.offset or 0)))


def _fatal_zeroes(a: Anomaly, kernel: Path) -> Anomaly:
    """A module's zeroed-records note, made the error it is under ``kernel``'s older loop."""
    if a.kind is not AnomalyKind.ZEROED_RECORDS or a.severity is Severity.ERROR:
        return a
    msg = f"{a.message}: {ZERO_ADJUSTED} (read in {kernel}): FTRACE OFF once it loads"
    return replace(a, severity=Severity.ERROR, message=msg)


# -- many images ----------------------------------------------------------------------------


class AuditedFile(NamedTuple):
    """One file's audit, or the one line saying why it has none (a worker's answer)."""

    path: Path
    audit: ImageAudit | None
    error: str | None


def group_of(path: Path, roots: Sequence[Path] = ()) -> str:
    """The subsystem a file belongs to: its directory under an installed tree's
    ``modules/VERSION/kernel/`` wherever it was named from (``audit .`` inside it), or else under
    the first ``kernel/`` it was named with (``fs/ext4``); else under the directory it was found in
    (that directory's own name at its top, never the empty name of ``.``); else its own name. A
    ``kernel`` directory above what was named is not a tree's (a source tree under ``~/kernel``),
    and one below the tree's is a subsystem's (``arch/powerpc/kernel``)."""
    full = Path(os.path.abspath(path)).parts  # not resolved: links stay as named
    installed = [i for i in range(2, len(full) - 1) if full[i] == "kernel" and full[i - 2] == "modules"]
    if installed:
        return _below(full, installed[0])
    parts = path.parts
    if "kernel" in parts[:-1]:
        return _below(parts, parts.index("kernel"))
    for root in roots:
        try:
            rel = path.relative_to(root)
        except ValueError:
            continue
        return str(rel.parent) if str(rel.parent) != "." else Path(os.path.abspath(root)).name
    return path.name


def _below(parts: Sequence[str], kernel: int) -> str:
    """The directories between ``parts[kernel]`` (a ``kernel`` directory) and the file."""
    return "/".join(parts[kernel + 1 : -1]) or "kernel"


def audit_one(
    path: Path,
    group: str,
    table: Table,
    mcount_addr: int | None = None,
    logs: Mapping[Path, Path] | None = None,
    generation: Generation | None = None,
) -> AuditedFile:
    try:
        return AuditedFile(path, audit_image(Image.load(path), group, table, mcount_addr, logs, generation), None)
    except RewriteError as e:
        return AuditedFile(path, None, str(e))
    except (ValueError, IndexError, OverflowError, MemoryError) as e:
        # A corrupt file that slipped past the structural checks: one line, as rewriter.batch does.
        return AuditedFile(path, None, f"{path}: corrupt ELF data ({type(e).__name__}: {e})")


def audit_chunk(
    items: Sequence[tuple[Path, str]],
    mcount_addr: int | None = None,
    logs: Mapping[Path, Path] | None = None,
    generation: Generation | None = None,
) -> list[AuditedFile]:
    """A worker's task: several files, one instruction table."""
    table = build_table()
    return [audit_one(path, group, table, mcount_addr, logs, generation) for path, group in items]


@dataclass(frozen=True, slots=True)
class Audit:
    images: tuple[ImageAudit, ...]
    errors: tuple[str, ...]


def audit_files(
    files: Sequence[Path],
    roots: Sequence[Path] = (),
    jobs: int = 1,
    mcount_addr: int | None = None,
    progress: Callable[[], None] | None = None,
    logs: Mapping[Path, Path] | None = None,
    generation: Generation | None = None,
) -> Audit:
    """``generation``: every file's, overriding what each scan would detect (``--generation``)."""
    items = [(p, group_of(p, roots)) for p in files]
    audits, errors = [], []
    task = partial(audit_chunk, mcount_addr=mcount_addr, logs=logs, generation=generation)
    for outcome in map_chunks(task, items, jobs):
        if outcome.audit is not None:
            audits.append(outcome.audit)
        else:
            errors.append(outcome.error or f"{outcome.path}: failed")
        if progress is not None:
            progress()
    return Audit(tuple(cross_image_anomalies(audits)), tuple(errors))


# -- roll-up --------------------------------------------------------------------------------


class GroupSummary(NamedTuple):
    group: str
    images: int
    sites: int
    by_state: dict[str, int]
    safety: dict[str, int]  # safe, live, unknown
    anomalies: dict[str, int]  # by severity
    functions: int
    functions_with_sites: int


def summarise(images: Sequence[ImageAudit], group: str) -> GroupSummary:
    by_state: Counter[str] = Counter()
    safety: Counter[str] = Counter({v.value: 0 for v in flow.Verdict})
    anomalies: Counter[str] = Counter({s.value: 0 for s in Severity})
    functions = with_sites = sites = 0
    for img in images:
        by_state.update(img.counts.by_state)
        safety.update({v.value: n for v, n in img.safety_counts().items()})
        anomalies.update(a.severity.value for a in img.anomalies)
        functions += img.counts.functions
        with_sites += img.counts.functions_with_sites
        sites += img.counts.sites
    return GroupSummary(
        group, len(images), sites, dict(sorted(by_state.items())), dict(safety), dict(anomalies), functions, with_sites
    )


def roll_up(audit: Audit) -> tuple[GroupSummary, ...]:
    """One summary per group, largest first."""
    groups: dict[str, list[ImageAudit]] = {}
    for img in audit.images:
        groups.setdefault(img.group, []).append(img)
    out = [summarise(imgs, g) for g, imgs in groups.items()]
    return tuple(sorted(out, key=lambda s: (-s.sites, s.group)))


def failing(audit: Audit, level: Severity | None) -> Counter[Severity]:
    """The anomalies at or above ``level``, counted by severity (None: none ever fail)."""
    if level is None:
        return Counter()
    return Counter(a.severity for img in audit.images for a in img.anomalies if RANK[a.severity] >= RANK[level])


def fails(audit: Audit, level: Severity | None) -> bool:
    """True when an anomaly at or above ``level`` exists (None: never)."""
    return bool(failing(audit, level))
