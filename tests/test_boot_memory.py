"""Ground truth for `scan`'s boot-time claims: the memory of each unmodified Debian kernel, booted.

Each kernel (6.1 mprofile, 6.12 patchable, 7.2 ool) boots under qemu exactly as tests/boot.py
boots it, but with no ``ftrace=`` on the command line, so nothing enables a site and every
recorded one stays as the kernel's boot-time ftrace init left it. The init script loads two
modules (nls_utf8, ufs), prints where their sections are, and sleeps; the host then stops the VM
through QMP and saves the vmlinux's ``.text`` (``pmemsave``: the kernel runs at physical 0 and its
linear map is VA = 0xc000000000000000 + physical, which :func:`test_linear_map_holds_the_vmlinux_text`
confirms against the file) and each module's code (``memsave``: vmalloc space, through the MMU).

Compared, with the expected words taken from the tool's own layout table
(``rewriter.generations.LAYOUTS``: a site's ``boot_state`` spelled out through ``Layout.words``
and ``rewriter.states.word_for``):

* every recorded ``.text`` site of the vmlinux (weak-function bodies included: the kernel inits
  them like any other, and only later marks the record disabled, which the words cannot show)
  holds its ``boot_state`` words, and every unrecorded one its file words (init leaves it alone);
* 7.2: every filled stub of ``ftrace_ool_stub_text`` and ``ftrace_ool_stub_text_end``, decoded
  (``mflr r0; bl <tracer>; mtlr r0; b ip+4`` after an 8-byte ops pointer, &ftrace_nop_ops), serves exactly the
  record the tool's ``Site.stub`` / ``Site.call_target`` say, and the stubs the tool counts
  unused are all zero;
* every recorded site of the modules' code sections, the same way (offsets section-relative,
  placed at the addresses /sys/module/<name>/sections gives); 7.2: the ool stubs found in the
  module's ``.stubs`` serve exactly the module's records, which the tool says ``.stubs`` serves
  (it names no stub address for a module).

``.init.text`` is freed once init runs, so only what stays is compared: the vmlinux's ``.text``
and the modules' non-init code (the stubs of module .init.text records live on in ``.stubs``).
"""

from __future__ import annotations

import lzma
import struct
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Final, NamedTuple

import numpy as np
import pytest
from boot import (
    LINEAR_MAP,
    QEMU,
    DumpResult,
    KernelFiles,
    MemRange,
    boot_and_dump,
    make_initramfs,
    module_sections,
    ready_script,
    require_kernel,
    require_tool,
)

from rewriter import ppc
from rewriter.elf.image import Image, Section
from rewriter.elf.symbols import code_addrs
from rewriter.generations import LAYOUTS, OOL_TEXT, OOL_TEXT_END, Variant
from rewriter.sites import TRACER_NAMES, Scan, Site, scan
from rewriter.states import Insn, word_for
from rewriter.stubs import StubArea

pytestmark = [pytest.mark.boot, pytest.mark.corpus]

APPEND: Final = "console=hvc0 panic=-1"  # STANDARD_APPEND minus ftrace=: no site is enabled
MODULES: Final = ("fs/nls/nls_utf8", "fs/ufs/ufs")  # no dependencies in any of the three trees
FREED: Final = ".init.text"
MODULE_STUBS: Final = ".stubs"  # what scan names as a module's ool stub area
OOL: Final = LAYOUTS[Variant.OOL]
# A wrong linear map would make nearly every word differ; alternatives, feature fixups and jump
# labels make ~0.06% differ on 7.2 (3016 of 5.3M words outside the sites and stub areas).
MAX_OTHER_CHANGED: Final = 0.01


class Memory(NamedTuple):
    """Saved guest memory: ``data`` from virtual address ``base``, little-endian words."""

    base: int
    data: bytes

    def word(self, addr: int) -> int | None:
        off = addr - self.base
        if off < 0 or off + 4 > len(self.data):
            return None
        value: int = struct.unpack_from("<I", self.data, off)[0]
        return value


class Module(NamedTuple):
    name: str  # as /sys/module names it
    ko: Path  # decompressed, as insmod gets it
    image: Image
    scan: Scan


class Booted(NamedTuple):
    name: str
    image: Image
    scan: Scan
    text: Section
    memory: Memory  # the vmlinux's .text
    modules: tuple[Module, ...]
    sections: dict[tuple[str, str], int]  # (module, section) -> load address
    module_memory: dict[tuple[str, str], Memory]  # code sections with sites, and .stubs
    dump: DumpResult


# ---------------------------------------------------------------- booting once per kernel


def _prepare_modules(kernel_modules: Path, out: Path) -> tuple[Module, ...]:
    """Each of MODULES, decompressed if the tree ships it as .ko.xz (busybox insmod takes no xz)."""
    mods = []
    for rel in MODULES:
        plain, packed = kernel_modules / f"{rel}.ko", kernel_modules / f"{rel}.ko.xz"
        data = plain.read_bytes() if plain.exists() else lzma.decompress(packed.read_bytes())
        ko = out / f"{Path(rel).name}.ko"
        ko.write_bytes(data)
        image = Image.load(ko)
        mods.append(Module(ko.stem.replace("-", "_"), ko, image, scan(image)))
    return tuple(mods)


def _module_ranges(mods: Sequence[Module], sections: dict[tuple[str, str], int]) -> dict[tuple[str, str], MemRange]:
    """The non-init code sections that hold a site, and (ool) ``.stubs`` up to the next section."""
    out = {}
    for mod in mods:
        for sec in {s.section for s in mod.scan.sites if s.section != FREED}:
            found = mod.image.section(sec)
            assert found is not None and (mod.name, sec) in sections, (mod.name, sec)
            out[mod.name, sec] = MemRange(sections[mod.name, sec], found.size, False)
        start = sections.get((mod.name, MODULE_STUBS))
        if start is not None and mod.scan.sites and mod.scan.sites[0].variant is Variant.OOL:
            after = [a for (m, _), a in sections.items() if m == mod.name and a > start]
            assert after, f"{mod.name}: no section after .stubs bounds it"
            out[mod.name, MODULE_STUBS] = MemRange(start, min(after) - start, False)
    return out


class LoadedKernel(NamedTuple):
    """A corpus kernel (its files), its vmlinux loaded, and the range of its .text to save."""

    files: KernelFiles
    image: Image
    text: Section
    whole: MemRange  # its .text, by physical address (the guest's real mode view)


def load_kernel(name: str) -> LoadedKernel:
    """Corpus kernel ``name``, loaded; skips (fails in CI) without qemu or the corpus."""
    require_tool(QEMU)
    files = require_kernel(name)
    image = Image.load(files.vmlinux)
    text = image.section(".text")
    assert text is not None
    return LoadedKernel(files, image, text, MemRange(text.addr - LINEAR_MAP, text.size, True))


def _boot(name: str, tmp: Path) -> Booted:
    files, image, text, whole = load_kernel(name)
    mods = _prepare_modules(files.modules_dir, tmp)
    initrd = make_initramfs(
        tmp / "initrd.cpio", files.busybox, [m.ko for m in mods], ready_script([m.name for m in mods])
    )
    wanted: dict[tuple[str, str], MemRange] = {}

    def ranges(console: str) -> list[MemRange]:
        wanted.update(_module_ranges(mods, module_sections(console)))
        return [whole, *wanted.values()]

    dump = boot_and_dump(files.vmlinux, APPEND, initrd, ranges, timeout=90)
    if not dump.ready:
        pytest.fail(f"{name}: the guest never printed its ready marker\n{dump.boot.console[-3000:]}")
    memory = Memory(text.addr, dump.memory[whole])
    module_memory = {key: Memory(r.address, dump.memory[r]) for key, r in wanted.items()}
    sections = module_sections(dump.boot.console)
    return Booted(name, image, scan(image), text, memory, mods, sections, module_memory, dump)


@pytest.fixture(scope="module", params=["6.1", "6.12", "7.2"])
def booted(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Booted:
    """One boot per kernel, shared by every test of the file (pytest caches a module fixture)."""
    name: str = request.param
    return _boot(name, tmp_path_factory.mktemp(f"mem-{name}"))


# ---------------------------------------------------------------- what the tool claims


def claimed_words(site: Site, addr: int, file_word: Callable[[int], int]) -> dict[int, int] | str:
    """Address -> word the tool says memory holds at each of the site's slots after boot init
    (the site's call slot at ``addr``), or why it claims no exact words. An unrecorded site is
    left as built (its file words); a recorded one holds its ``boot_state`` words in the layout's
    state slots, its file words in the others (gcc 5's ``std``)."""
    lay = LAYOUTS[site.variant]
    out = {addr + d: file_word(site.file_offset + d) for d in lay.offsets}
    if not site.recorded:
        return out
    if site.boot_state is None:
        return "scan says boot init refuses this site (ftrace bug)"
    if site.boot_state is site.state:  # init leaves the words as they are (or never reaches them)
        return out
    for slot, insn in zip(lay.state_slots, lay.words(site.boot_state), strict=True):
        if insn in (Insn.CALL, Insn.STUB):
            return f"boot state {site.boot_state.value} holds a branch the layout cannot spell out"
        delta = lay.offset(slot)
        assert delta is not None
        out[addr + delta] = word_for(insn, addr + delta, 0)
    return out


def _file_word(image: Image) -> Callable[[int], int]:
    def word(offset: int) -> int:
        value: int = struct.unpack_from(image.endian + "I", image.data, offset)[0]
        return value

    return word


def _text(words: Sequence[int | None]) -> str:
    return "; ".join("----" if w is None else ppc.describe(w) for w in words)


def compare_sites(
    sites: Sequence[Site], where: Callable[[Site], int], memory: Callable[[int], int | None], image: Image
) -> tuple[int, list[str]]:
    """(sites compared, one line per site whose memory differs from the tool's claimed words)."""
    bad = []
    file_word = _file_word(image)
    for site in sites:
        addr = where(site)
        claim = claimed_words(site, addr, file_word)
        found = {a: memory(a) for a in (claim if isinstance(claim, dict) else {addr: 0})}
        if isinstance(claim, str) or found != claim:
            want = claim if isinstance(claim, str) else _text(list(claim.values()))
            boot = site.boot_state and site.boot_state.value
            label = f"{site.place_text} {site.section}+{site.offset:#x} {site.function}"
            bad.append(f"{label}: scan {want} ({site.state.value} -> {boot}), memory {_text(list(found.values()))}")
    return len(sites), bad


# ---------------------------------------------------------------- ool stubs, decoded from memory


def decode_stub(code: int, memory: Callable[[int], int | None]) -> int | str | None:
    """The record ip a filled ool stub whose instructions start at ``code`` serves (from its
    final ``b ip+4``); None if its four words are all zero; otherwise why it is neither."""
    words = [memory(code + OOL.stub_word(insn)) for insn in OOL.stub]
    if all(w == 0 for w in words):
        return None
    w0, w1, w2, w3 = words
    if w0 != ppc.MFLR_R0 or w2 != ppc.MTLR_R0 or w1 is None or not ppc.is_bl(w1) or w3 is None or not ppc.is_b(w3):
        return f"{code:#x}: not a stub: {_text(words)}"
    return ppc.branch_target(code + OOL.stub_word(Insn.BACK), w3) - ppc.INSN_SIZE


def _tracer_call(code: int, memory: Callable[[int], int | None], tracers: set[int]) -> str | None:
    at = code + OOL.stub_word(Insn.CALL)
    w = memory(at)
    target = None if w is None else ppc.branch_target(at, w)
    return None if target in tracers else f"{code:#x}: bl to {target and hex(target)} is no tracer entry"


def stubs_in_areas(booted: Booted) -> Iterator[tuple[StubArea, int, int, int | str | None]]:
    """(area, index, stub code address, decode_stub) for every stub of the .text stub areas."""
    for area in booted.scan.stubs:
        if area.name not in (OOL_TEXT, OOL_TEXT_END):
            continue
        for i in range(area.stub_count):
            code = OOL.stub_code(area.addr + i * area.stub_size, area.stub_size)
            yield area, i, code, decode_stub(code, booted.memory.word)


def _ops_word(booted: Booted, area: StubArea, index: int) -> int:
    """The 8-byte ops pointer before a stub's code (``struct ftrace_ool_stub``, CALL_OPS)."""
    offset = area.addr + index * area.stub_size - booted.memory.base
    value: int = struct.unpack_from("<Q", booted.memory.data, offset)[0]
    return value


def symbol_value(image: Image, name: str) -> int:
    """The value of symbol ``name``, which must exist."""
    syms = image.symbols
    assert syms is not None
    hit = syms.find(name)
    assert len(hit), name
    return int(syms.table["st_value"][hit[0]])


# ---------------------------------------------------------------- the tests


def test_linear_map_holds_the_vmlinux_text(booted: Booted) -> None:
    """VA = LINEAR_MAP + physical: the saved .text is the file's .text but for a few words that the
    kernel patches at boot (sites, ool stubs, alternatives, jump labels). Every module loaded."""
    assert booted.dump.boot.insmod == {m.ko.stem: 0 for m in booted.modules}, booted.dump.boot.console[-3000:]
    assert not booted.dump.boot.ftrace_bug and not booted.dump.boot.oopsed, booted.dump.boot.console[-3000:]
    text, image = booted.text, booted.image
    file = np.frombuffer(image.data, "<u4", text.size // 4, text.offset)
    mem = np.frombuffer(booted.memory.data, "<u4", text.size // 4)
    skip = np.zeros(len(file), bool)
    for site in booted.scan.sites:
        if site.addr is not None and site.section == ".text":
            for d in LAYOUTS[site.variant].offsets:
                skip[(site.addr + d - text.addr) // 4] = True
    for area in booted.scan.stubs:
        if area.name in (OOL_TEXT, OOL_TEXT_END):
            first = (area.addr - text.addr) // 4
            skip[first : first + area.stub_count * area.stub_size // 4] = True
    other = int(np.count_nonzero((file != mem) & ~skip))
    assert other <= MAX_OTHER_CHANGED * np.count_nonzero(~skip), f"{other} of {np.count_nonzero(~skip)} differ"


def test_every_text_site_holds_the_words_scan_claims_after_boot(booted: Booted) -> None:
    """Recorded sites hold their boot_state words; weak-function bodies (recorded, not traceable)
    too; unrecorded sites (none in the three kernels) their file words."""
    sites = booted.scan.sites
    assert {s.section for s in sites} <= {".text", FREED}, "a site outside .text and .init.text is not compared"
    text = [s for s in sites if s.section == ".text"]
    recorded = [s for s in text if s.recorded]
    weak = [s for s in recorded if not s.traceable]
    unrecorded = [s for s in text if not s.recorded]
    word = booted.memory.word

    def place(s: Site) -> int:
        assert s.addr is not None
        return s.addr

    compared, bad = compare_sites(recorded, place, word, booted.image)
    _, weak_bad = compare_sites(weak, place, word, booted.image)
    _, unrecorded_bad = compare_sites(unrecorded, place, word, booted.image)

    assert compared == len(recorded) == booted.scan.records.count - _recorded_in(sites, FREED) > 0
    assert not weak_bad, f"{booted.name}: {len(weak_bad)} of {len(weak)} weak bodies:\n" + "\n".join(weak_bad[:50])
    assert not unrecorded_bad, "\n".join(unrecorded_bad[:50])
    assert not bad, f"{booted.name}: {len(bad)} of {compared} recorded .text sites:\n" + "\n".join(bad[:50])


def _recorded_in(sites: Sequence[Site], section: str) -> int:
    return sum(s.recorded for s in sites if s.section == section)


def test_every_text_record_gets_the_ool_stub_scan_claims(booted: Booted) -> None:
    if booted.name != "7.2":
        assert not booted.scan.stubs and all(s.stub is None for s in booted.scan.sites)
        assert not code_addrs(booted.image, (OOL_TEXT, OOL_TEXT_END))
        return
    served, area_of, unused, errors = stub_service(booted)
    text = [s for s in booted.scan.sites if s.section == ".text" and s.recorded]
    claims = {s.call_target: s.addr for s in text if s.call_target is not None}
    claimed_area = {s.call_target: s.stub for s in text if s.call_target is not None}

    assert not errors, "\n".join(errors[:50])
    assert len(claims) == len(text), "scan gives some .text record no stub, or two records one"
    assert served == claims, _stub_differences(served, claims)
    assert area_of == claimed_area
    for area in booted.scan.stubs:
        if area.name in (OOL_TEXT, OOL_TEXT_END):
            idle = unused.get(area.name, [])
            assert idle == list(range(area.used, area.stub_count)), (area, idle[:20])
    # Not a claim of scan's, but the geometry its Layout.stub_code assumes: the code is the stub's
    # last 16 bytes, after an ops pointer, which boot init sets to &ftrace_nop_ops in every stub.
    ops = {_ops_word(booted, a, i) for a, i, _, ip in stubs_in_areas(booted) if isinstance(ip, int)}
    assert ops == {symbol_value(booted.image, "ftrace_nop_ops")}, sorted(hex(w) for w in ops)[:10]


class StubService(NamedTuple):
    """What the booted kernel's .text stub areas say, read from memory."""

    served: dict[int, int]  # stub code -> record ip
    area_of: dict[int, str]  # stub code -> its area
    unused: dict[str, list[int]]  # area -> indices of the stubs that serve nothing
    errors: list[str]  # stubs that are neither filled nor zero, or call no tracer entry


def stub_service(booted: Booted) -> StubService:
    tracers = set(code_addrs(booted.image, TRACER_NAMES))
    out = StubService({}, {}, {}, [])
    for area, index, code, ip in stubs_in_areas(booted):
        if isinstance(ip, str):
            out.errors.append(ip)
        elif ip is None:
            out.unused.setdefault(area.name, []).append(index)
        else:
            out.served[code], out.area_of[code] = ip, area.name
            out.errors.extend(filter(None, [_tracer_call(code, booted.memory.word, tracers)]))
    return out


def _stub_differences(served: dict[int, int], claims: dict[int, int | None]) -> str:
    lines = [f"{len(served)} stubs filled in memory, scan claims {len(claims)}"]
    for code in sorted(set(served) | set(claims)):
        got, want = served.get(code), claims.get(code)
        if got != want:
            lines.append(f"stub {code:#x}: memory serves {got and hex(got)}, scan {want and hex(want)}")
    return "\n".join(lines[:60])


def _module_place(booted: Booted, mod: Module) -> Callable[[Site], int]:
    return lambda s: booted.sections[mod.name, s.section] + s.offset


def test_every_module_site_holds_the_words_scan_claims_after_load(booted: Booted) -> None:
    for mod in booted.modules:
        sites = [s for s in mod.scan.sites if s.section != FREED]
        assert sites and all(s.recorded for s in sites), mod.name
        memory = {sec: mem for (m, sec), mem in booted.module_memory.items() if m == mod.name}

        def word(addr: int, memory: dict[str, Memory] = memory) -> int | None:
            hits = [w for mem in memory.values() if (w := mem.word(addr)) is not None]
            return hits[0] if hits else None

        compared, bad = compare_sites(sites, _module_place(booted, mod), word, mod.image)

        assert compared == sum(s.recorded for s in mod.scan.sites if s.section != FREED)
        assert not bad, f"{booted.name} {mod.name}: {len(bad)} of {compared} sites:\n" + "\n".join(bad)


def test_every_module_record_is_served_by_a_stub_in_its_stubs(booted: Booted) -> None:
    for mod in booted.modules:
        recorded = [s for s in mod.scan.sites if s.recorded]
        if booted.name != "7.2":
            assert all(s.stub is None for s in recorded), mod.name
            continue
        assert all(s.stub == MODULE_STUBS and s.call_target is None for s in recorded), mod.name
        stubs = booted.module_memory[mod.name, MODULE_STUBS]
        found = [decode_stub(a, stubs.word) for a in range(stubs.base, stubs.base + len(stubs.data), 4)]
        served = sorted(ip for ip in found if isinstance(ip, int))
        place = _module_place(booted, mod)

        assert served == sorted(place(s) for s in recorded), (mod.name, [hex(ip) for ip in served])
