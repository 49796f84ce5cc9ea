"""Find and classify every ftrace call site of an image, and match it to the kernel's records.

Strategy:

1. Work out the *mcount entries*: ``_mcount`` (``._mcount`` and ELFv1 descriptors too), any
   linker stub that is one ``b`` away from it, and ``--mcount-addr`` for stripped files.
2. Find *call slots*. Linked images: every ``bl`` word in an executable section whose target is
   an mcount entry, found with numpy over the whole section at once. Relocatable files: every
   ``R_PPC64_REL24`` against ``_mcount``, since the ``bl`` itself still reads ``bl .``.
3. Read the *records* the kernel will patch from: ``__start_mcount_loc..__stop_mcount_loc`` or
   ``__mcount_loc`` (linked), ``.rela__mcount_loc`` (relocatable), and
   ``__patchable_function_entries`` (both; it points at the first nop, the call slot is next).
4. A site is a call slot, or a recorded place whose slots hold a known state. A site that was
   pre-nopped *and* lost its record is not findable from the file alone, and is not guessed at:
   real code starts with ``nop; nop`` often enough (linker-relaxed TOC loads in every static
   glibc function, ``do_uaccess_flush`` in vmlinux). Its patch log still names it.
5. Classify each site by the words in its slots (``states.state_of``) and by where it sits
   relative to its function's local entry point (gcc 5's ``mflr; std; bl`` has the call slot at
   LEP + 8, gcc >= 6's at LEP + 4).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np

from rewriter import ppc
from rewriter.elf import structs as S
from rewriter.elf.image import Abi, Image, Kind, Section
from rewriter.elf.symbols import Functions, functions, rel_place, reloc_target_places, split_place
from rewriter.states import Insn, SiteState, Slot, Variant, state_of

MCOUNT_NAMES = ("_mcount", "._mcount")


class Site(NamedTuple):
    """One ftrace call site. ``offset`` is the call slot's offset within ``section``; ``addr``
    its virtual address (None in relocatable files). A NamedTuple rather than a dataclass:
    a vmlinux has 33,690 of them and a frozen dataclass costs four times as much to build."""

    section: str
    section_index: int
    offset: int
    addr: int | None
    function: str | None
    variant: Variant
    state: SiteState
    recorded: bool
    call_target: int | None  # linked images: the mcount entry a restored `bl` must reach
    file_offset: int  # of the call slot

    def slot_delta(self, slot: Slot) -> int | None:
        """Byte distance from the call slot to ``slot`` (None if the variant has no such slot)."""
        if slot is Slot.B:
            return 0
        if self.variant is Variant.MPROFILE_STD:
            return -8 if slot is Slot.A else -4
        return -4 if slot is Slot.A else None

    @property
    def place(self) -> str:
        return f"{self.addr:#x}" if self.addr is not None else f"{self.section}+{self.offset:#x}"


class RecordPlace(NamedTuple):
    """Where a record points: a virtual address in a linked image (``section``/``offset`` when a
    section holds it), a section and offset in a relocatable file (``addr`` None)."""

    section: str | None
    offset: int | None
    addr: int | None

    @property
    def text(self) -> str:
        return f"{self.addr:#x}" if self.addr is not None else f"{self.section}+{self.offset:#x}"


@dataclass(frozen=True, slots=True)
class Records:
    """What the kernel's tables say. ``count`` counts non-zero records; ``zeroed`` the zero entries
    (dropped records, skipped by ftrace_process_locs); ``unmatched`` the places of records that
    point at no site; ``duplicates`` the places recorded more than once."""

    count: int
    zeroed: int
    unmatched: tuple[RecordPlace, ...]
    duplicates: tuple[RecordPlace, ...]


@dataclass(frozen=True, slots=True)
class Scan:
    path: Path
    kind: Kind
    endian: str
    abi: Abi
    sites: tuple[Site, ...]
    records: Records
    mcount_entries: tuple[int, ...]
    functions: Functions  # the function table the sites were attributed with, for later stages


def scan(image: Image, mcount_addr: int | None = None) -> Scan:
    text = _Text(image)
    funcs = functions(image)
    if image.type == S.ET_REL:
        call_places = _rel_call_places(image)
        entries = np.zeros(0, np.uint64)
    else:
        entries = _mcount_entries(image, text, mcount_addr)
        call_places = text.bl_places[np.isin(text.bl_targets, entries)]
    mcount_recs, patch_recs, zeroed = _record_places(image)
    if image.type != S.ET_REL and not len(entries):
        if len(mcount_recs):
            entries = _entries_from_records(text, mcount_recs)
            call_places = text.bl_places[np.isin(text.bl_targets, entries)]
        elif image.symbols is None:
            raise image.error(
                "stripped image: no .symtab to find _mcount, and no __mcount_loc section to find the records "
                "(a vmlinux keeps them in .init.data between the stripped __start/__stop_mcount_loc symbols): "
                "pass --mcount-addr with _mcount's address from System.map"
            )
    if image.symbols is None and image.type != S.ET_REL and image.section("__mcount_loc") is None:
        if mcount_addr is not None and not len(call_places):
            raise image.error(f"--mcount-addr {mcount_addr:#x}: no bl in this stripped image calls it")
        mcount_recs, zeroed = _search_record_table(image, text, call_places)
    sites, unmatched = _classify(image, text, funcs, call_places, mcount_recs, patch_recs, zeroed)
    all_recs = np.concatenate([mcount_recs, patch_recs])
    uniq, counts = np.unique(all_recs, return_counts=True)
    dup = tuple(_record_place(image, int(p)) for p in uniq[counts > 1])
    unmatched_text = tuple(_record_place(image, int(p)) for p in unmatched)
    records = Records(len(all_recs), zeroed, unmatched_text, dup)
    endian = "big" if image.big_endian else "little"
    entries_list = tuple(int(e) for e in entries)
    return Scan(image.path, image.kind, endian, image.abi, sites, records, entries_list, funcs)


class _Text:
    """The executable sections as word arrays indexed by place, and every ``bl`` in them."""

    def __init__(self, image: Image) -> None:
        self.sections = [s for s in image.exec_sections() if s.type == S.SHT_PROGBITS]
        base = [_section_base(image, s) for s in self.sections]
        order = np.argsort(np.array(base, dtype=np.uint64), kind="stable")
        self.sections = [self.sections[i] for i in order]
        self.base = np.array([base[i] for i in order], dtype=np.uint64)
        self.words = [image.words(s) for s in self.sections]
        places, targets = [], []
        for b, words in zip(self.base.tolist(), self.words, strict=True):
            idx = np.flatnonzero(ppc.bl_mask(words)).astype(np.uint64)
            p = np.uint64(b) + idx * np.uint64(4)
            places.append(p)
            # In ET_REL the target of `bl .` means nothing; relocations say where it goes.
            targets.append(ppc.branch_targets(p, words[idx.astype(np.int64)]))
        self.bl_places = np.concatenate(places) if places else np.zeros(0, np.uint64)
        self.bl_targets = np.concatenate(targets) if targets else np.zeros(0, np.uint64)

    def locate(self, places: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(section slot in ``self.sections`` or -1, word index within it) for each place."""
        k = np.searchsorted(self.base, places, side="right").astype(np.int64) - 1
        sizes = np.array([len(w) for w in self.words], dtype=np.int64)
        kk = np.where(k >= 0, k, 0)
        if not len(self.base):
            return np.full(len(places), -1), np.zeros(len(places), np.int64)
        rel = places.astype(np.int64) - self.base[kk].astype(np.int64)
        ok = (k >= 0) & (rel >= 0) & (rel % 4 == 0) & (rel // 4 < sizes[kk])
        return np.where(ok, k, -1), np.where(ok, rel // 4, 0)

    def words_at(self, k: np.ndarray, i: np.ndarray) -> np.ndarray:
        """Word ``i`` of section slot ``k`` (0 where out of range)."""
        out = np.zeros(len(k), dtype=np.uint32)
        for slot, words in enumerate(self.words):
            m = (k == slot) & (i >= 0) & (i < len(words))
            out[m] = words[i[m]]
        return out


# -- mcount entries and call slots ----------------------------------------------------------


def _mcount_entries(image: Image, text: _Text, mcount_addr: int | None) -> np.ndarray:
    found: list[int] = [] if mcount_addr is None else [mcount_addr]
    syms = image.symbols
    if syms is not None:
        opd = image.section(".opd")
        for i in np.concatenate([syms.find(n) for n in MCOUNT_NAMES]).tolist():
            row = syms.table[i]
            if int(row["st_shndx"]) == S.SHN_UNDEF:
                continue
            value = int(row["st_value"])
            if image.abi is Abi.ELFV1 and opd is not None and int(row["st_shndx"]) == opd.index:
                off = image.offset_of(value)
                value = int.from_bytes(image.data[off : off + 8], image.byteorder)
            found.append(value)
        found.extend(_stub_symbols(image))
    entries = np.unique(np.array(found, dtype=np.uint64))
    return np.union1d(entries, _branch_stubs(text, entries))


def _stub_symbols(image: Image) -> list[int]:
    """Linker stubs named ``<id>.long_branch._mcount`` / ``<id>.plt_branch._mcount``."""
    syms = image.symbols
    assert syms is not None
    out = []
    for suffix in (b".long_branch._mcount\0", b".plt_branch._mcount\0"):
        pos = syms.strtab.find(suffix)
        while pos >= 0:
            start = syms.strtab.rfind(b"\0", 0, pos) + 1
            out.extend(syms.table["st_value"][syms.table["st_name"] == start].tolist())
            pos = syms.strtab.find(suffix, pos + 1)
    return out


def _branch_stubs(text: _Text, entries: np.ndarray) -> np.ndarray:
    """``bl`` targets that are a plain ``b`` to an mcount entry: linker long-branch stubs,
    found even in a stripped file."""
    if not len(entries):
        return entries
    targets = np.unique(text.bl_targets)
    k, i = text.locate(targets)
    words = text.words_at(k, i)
    is_b = (k >= 0) & ((words & np.uint32(0xFC000003)) == np.uint32(0x48000000))
    hop = ppc.branch_targets(targets[is_b], words[is_b])
    return targets[is_b][np.isin(hop, entries)]


def _rel_call_places(image: Image) -> np.ndarray:
    syms = image.symbols
    if syms is None:
        return np.zeros(0, np.uint64)
    mcount_syms = np.concatenate([syms.find(n) for n in MCOUNT_NAMES]).astype(np.uint64)
    out = []
    for rsec in image.relocation_sections():
        target = image.section_at(rsec.info) if rsec.info else None
        if target is None or not target.is_exec:
            continue
        rela = image.relocations(rsec)
        hit = (S.r_type(rela["r_info"]) == S.R_PPC64_REL24) & np.isin(S.r_sym(rela["r_info"]), mcount_syms)
        out.append(rel_place(target.index, rela["r_offset"][hit]))
    return np.concatenate(out) if out else np.zeros(0, np.uint64)


def _entries_from_records(text: _Text, records: np.ndarray) -> np.ndarray:
    """Stripped image: the mcount entry is whatever the recorded ``bl`` words call most."""
    hit = np.isin(text.bl_places, records)
    if not hit.any():
        return np.zeros(0, np.uint64)
    values, counts = np.unique(text.bl_targets[hit], return_counts=True)
    return values[np.argmax(counts) : np.argmax(counts) + 1]


# -- records --------------------------------------------------------------------------------


def _record_places(image: Image) -> tuple[np.ndarray, np.ndarray, int]:
    """(mcount record places, patchable-entry call-slot places, zeroed entries)."""
    if image.type == S.ET_REL:
        mc = _rel_records(image, "__mcount_loc")
        pfe = _rel_records(image, "__patchable_function_entries") + np.uint64(4)
        sec = image.section("__mcount_loc")
        total = sec.size // 8 if sec is not None else 0
        return mc, pfe, max(total - len(mc), 0)
    raw = _linked_mcount_table(image)
    pfe_sec = image.section("__patchable_function_entries")
    pfe = np.zeros(0, np.uint64)
    if pfe_sec is not None and pfe_sec.type != S.SHT_NOBITS:
        pfe = image.table(pfe_sec, S.addr_dtype(image.endian), "__patchable_function_entries").astype(np.uint64)
        pfe = pfe[pfe != 0] + np.uint64(4)
    zeroed = int(np.count_nonzero(raw == 0))
    return raw[raw != 0], pfe, zeroed


def _linked_mcount_table(image: Image) -> np.ndarray:
    syms = image.symbols
    dt = S.addr_dtype(image.endian)
    if syms is not None:
        start, stop = syms.find("__start_mcount_loc"), syms.find("__stop_mcount_loc")
        if len(start) and len(stop):
            lo, hi = int(syms.table["st_value"][start[0]]), int(syms.table["st_value"][stop[0]])
            if hi < lo or (hi - lo) % 8:
                raise image.error(f"__mcount_loc bounds {lo:#x}..{hi:#x} are not a table of 8-byte entries")
            if hi == lo:
                return np.zeros(0, np.uint64)
            off = image.offset_of(lo)
            if off + (hi - lo) > image.elf_end:
                raise image.error("__mcount_loc runs past the end of the file")
            return np.frombuffer(image.data, dt, count=(hi - lo) // 8, offset=off).astype(np.uint64)
    sec = image.section("__mcount_loc")
    if sec is None or sec.type == S.SHT_NOBITS:
        return np.zeros(0, np.uint64)
    return image.table(sec, dt, "__mcount_loc").astype(np.uint64)


def _search_record_table(image: Image, text: _Text, calls: np.ndarray) -> tuple[np.ndarray, int]:
    """Stripped vmlinux: the records sit inside ``.init.data`` and the symbols that bound them are
    gone, so find them: the table is the run of 8-byte words, each 0 (a dropped record) or an
    address in the code, that names the most call slots. Function-pointer tables also point into
    the code, but at function entries, never at a call slot (entry + 4 or + 8)."""
    best = (0, np.zeros(0, np.uint64))
    if not len(calls):
        return best[1], 0
    slots = np.sort(calls)
    dt = S.addr_dtype(image.endian)
    for sec in image.sections:
        if sec.type != S.SHT_PROGBITS or sec.is_exec or not sec.flags & S.SHF_ALLOC or sec.size < 8:
            continue
        skip = -sec.addr % 8
        values = np.frombuffer(image.data, dt, count=(sec.size - skip) // 8, offset=sec.offset + skip)
        values = values.astype(np.uint64)
        k, _ = text.locate(values)
        code = np.flatnonzero(k >= 0)
        pos = np.minimum(np.searchsorted(slots, values[code]), len(slots) - 1)
        hit = code[slots[pos] == values[code]]
        if not len(hit):
            continue
        run = np.cumsum((values != 0) & (k < 0))  # words of one run of `0 or code` share a number
        score = np.bincount(run[hit])
        best_run = int(np.argmax(score))
        if score[best_run] > best[0]:
            named = hit[run[hit] == best_run]
            best = (int(score[best_run]), values[int(named[0]) : int(named[-1]) + 1])
    table = best[1]
    return table[table != 0], int(np.count_nonzero(table == 0))


def _rel_records(image: Image, name: str) -> np.ndarray:
    rsec = image.section(".rela" + name)
    if rsec is None or image.symbols is None:
        return np.zeros(0, np.uint64)
    return reloc_target_places(image, image.relocations(rsec))


# -- classification -------------------------------------------------------------------------

# Word kinds as small integers, so that a whole image is classified with one table look-up.
_KINDS = list(Insn)
_KIND = {k: n for n, k in enumerate(_KINDS)}
_STATE_TABLE = np.array([[list(SiteState).index(state_of(a, b)) for b in _KINDS] for a in _KINDS])
_STATES = list(SiteState)
_UNKNOWN = _STATES.index(SiteState.UNKNOWN)


def _kinds(words: np.ndarray, calls: np.ndarray) -> np.ndarray:
    """Vectorised ``states.insn_kind``."""
    is_bl = ppc.bl_mask(words)
    return np.select(
        [
            words == ppc.MFLR_R0,
            words == ppc.NOP,
            words == ppc.B_PLUS_8,
            words == ppc.STD_R0_16_R1,
            is_bl & calls,
        ],
        [_KIND[Insn.MFLR], _KIND[Insn.NOP], _KIND[Insn.B8], _KIND[Insn.STD], _KIND[Insn.CALL]],
        _KIND[Insn.OTHER],
    )


def _classify(
    image: Image,
    text: _Text,
    funcs: Functions,
    calls: np.ndarray,
    mcount_recs: np.ndarray,
    patch_recs: np.ndarray,
    zeroed: int,
) -> tuple[tuple[Site, ...], np.ndarray]:
    """Sites, and the record places that turned out to be no site."""
    recorded = np.union1d(mcount_recs, patch_recs)
    cand = np.union1d(calls, recorded)
    k, i = text.locate(cand)
    is_call = np.isin(cand, calls)
    is_rec = np.isin(cand, recorded)
    is_patch = np.isin(cand, patch_recs)
    b_word = text.words_at(k, i)
    mid = text.words_at(k, i - 1)
    a2 = text.words_at(k, i - 2)
    fi = funcs.containing(cand)
    lep = funcs.lep_of(fi)
    # gcc 5 puts the call slot at LEP + 8 with `std r0,16(r1)` (or the nop ftrace_init_nop
    # leaves) between; without a function to anchor it, the std word itself decides.
    mid_std = (mid == ppc.STD_R0_16_R1) | (mid == ppc.NOP)
    std_variant = np.where(fi >= 0, (cand - lep == 8) & mid_std, mid == ppc.STD_R0_16_R1) & ~is_patch
    a_word = np.where(std_variant, a2, mid)
    inside = (k >= 0) & (i >= np.where(std_variant, 2, 1))
    state = _STATE_TABLE[_kinds(a_word, np.zeros(len(cand), bool)), _kinds(b_word, is_call)]
    keep = inside & (is_call | (state != _UNKNOWN))
    unmatched = cand[is_rec & ~keep]
    variants = np.where(is_patch, 2, np.where(std_variant, 1, 0))
    return _build_sites(image, text, funcs, cand, k, i, keep, is_call, is_rec, state, variants, fi, b_word), unmatched


_VARIANTS = (Variant.MPROFILE, Variant.MPROFILE_STD, Variant.PATCHABLE)


def _build_sites(
    image: Image,
    text: _Text,
    funcs: Functions,
    cand: np.ndarray,
    k: np.ndarray,
    i: np.ndarray,
    keep: np.ndarray,
    is_call: np.ndarray,
    is_rec: np.ndarray,
    state: np.ndarray,
    variants: np.ndarray,
    fi: np.ndarray,
    b_word: np.ndarray,
) -> tuple[Site, ...]:
    syms = image.symbols
    linked = image.type != S.ET_REL
    sel = np.flatnonzero(keep)
    # Everything per site is computed as whole columns first: indexing numpy scalars one at a
    # time in the loop below would cost more than the rest of the scan.
    ks, offs, places, fis = k[sel].tolist(), (i[sel] * 4).tolist(), cand[sel].tolist(), fi[sel].tolist()
    calls, recs = is_call[sel].tolist(), is_rec[sel].tolist()
    states, vars_ = state[sel].tolist(), variants[sel].tolist()
    targets = ppc.branch_targets(cand[sel], b_word[sel]).tolist()
    name_index = funcs.name_index.tolist()
    names: dict[int, str | None] = {}
    sites = []
    for n in range(len(sel)):
        sec = text.sections[ks[n]]
        f = fis[n]
        name = None
        if f >= 0 and syms is not None:
            ni = name_index[f]
            name = names.get(ni)
            if name is None:
                name = names[ni] = syms.name_at(ni)
        place = places[n]
        target = targets[n] if calls[n] and linked else None
        sites.append(
            Site(
                sec.name,
                sec.index,
                offs[n],
                place if linked else None,
                name,
                _VARIANTS[vars_[n]],
                _STATES[states[n]],
                recs[n],
                target,
                sec.offset + offs[n],
            )
        )
    return tuple(sites)


def _section_base(image: Image, sec: Section) -> int:
    return int(rel_place(sec.index, 0)) if image.type == S.ET_REL else sec.addr


def _record_place(image: Image, place: int) -> RecordPlace:
    if image.type != S.ET_REL:
        sec = image.section_of_addr(place)
        return RecordPlace(sec.name, place - sec.addr, place) if sec is not None else RecordPlace(None, None, place)
    shndx, off = split_place(place)
    name = image.sections[shndx].name if 0 <= shndx < len(image.sections) else f"section{shndx}"
    return RecordPlace(name, off, None)


# -- summaries ------------------------------------------------------------------------------


def summary(sites: Sequence[Site]) -> dict[str, dict[str, int]]:
    """Counts by section, variant and state, and how many are recorded."""
    return {
        "by_section": dict(sorted(Counter(s.section for s in sites).items())),
        "by_variant": dict(sorted(Counter(s.variant.value for s in sites).items())),
        "by_state": dict(sorted(Counter(s.state.value for s in sites).items())),
        "recorded": {"yes": sum(s.recorded for s in sites), "no": sum(not s.recorded for s in sites)},
    }
