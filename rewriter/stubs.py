"""The ool generation's stub areas in a vmlinux, and which stub the kernel gives each record.

A 6.13+ vmlinux reserves ``ftrace_ool_stub_text``, ``ftrace_ool_stub_text_end`` and
``ftrace_ool_stub_inittext`` (zero bytes in the file, each with a ``*_count`` word), and
ftrace_init_ool_stub() fills one stub per record at boot. A record it cannot give a stub, past an
area's count or out of branch range, makes ftrace_bug() turn ftrace off: :func:`assign_stubs`
replays that assignment so that scan and audit can say so before a boot does.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from typing import Final, NamedTuple

from rewriter import ppc
from rewriter.elf.image import Image
from rewriter.generations import LAYOUTS, OOL_AREAS, OOL_INITTEXT, OOL_TEXT, OOL_TEXT_END, Variant
from rewriter.locs import Bounds
from rewriter.states import Insn

Stub = tuple[str, int | None]
"""The area that serves a record, and its stub's code address (None: the area has none left for it)."""


class StubArea(NamedTuple):
    """An ool stub area of a vmlinux: ``stub_count`` stubs of ``stub_size`` bytes (the ``*_count``
    word the kernel reads), and ``used``, how many records ftrace_init_ool_stub() will give a stub
    here (``need`` counts those it wants to but cannot: past ``stub_count``, or out of branch range)."""

    name: str
    addr: int
    stub_count: int
    stub_size: int
    used: int
    need: int
    size: int  # the area's bytes (its symbol's size)

    @property
    def covers(self) -> bool:
        return self.need == 0

    @property
    def overflows(self) -> bool:
        """The stubs the kernel writes here run past the area: it indexes the area by its count
        word alone, in stubs of one size, and never reads the area's own size."""
        return self.used * self.stub_size > self.size


# sizeof(struct ftrace_ool_stub) (arch/powerpc/include/asm/ftrace.h, 7.2): four instructions, after
# an ftrace_ops pointer with CONFIG_DYNAMIC_FTRACE_WITH_CALL_OPS (Debian's 7.2: 24 bytes).
STUB_SIZES: Final = (24, 16)


def stub_size_of(areas: Iterable[tuple[str, int, int, int | None]]) -> int:
    """The one stub size of an image's areas: the size over the count that most areas agree on,
    among the sizes the struct can have (each area's own quotient is only as good as its symbol
    size and count word; the kernel uses one constant for all). 24 when none divides evenly."""
    fits = [size // count for _, _, size, count in areas if count and size % count == 0 and size // count in STUB_SIZES]
    return Counter(fits).most_common(1)[0][0] if fits else STUB_SIZES[0]


def area_symbols(image: Image) -> list[tuple[str, int, int, int | None]]:
    """(name, address, size, count word) of each ool stub area the image defines."""
    syms = image.symbols
    if syms is None:
        return []
    out = []
    for name in OOL_AREAS:
        hit = syms.find(name)
        if not len(hit):
            continue
        row = syms.table[hit[0]]
        count_hit = syms.find(name + "_count")
        count = None
        if len(count_hit):
            off = image.offset_of_named(name + "_count", int(syms.table["st_value"][count_hit[0]]))
            count = int.from_bytes(image.data[off : off + 4], image.byteorder)
        out.append((name, int(row["st_value"]), int(row["st_size"]), count))
    return out


def assign_stubs(
    image: Image, ips: Iterable[int], bounds: Bounds | None
) -> tuple[tuple[StubArea, ...], dict[int, Stub]]:
    """Simulate ftrace_init_ool_stub() (arch/powerpc/kernel/trace/ftrace.c, 7.2) over the records
    at ``ips`` in the order the kernel sorts them: .init.text records take ``ftrace_ool_stub_inittext``
    in turn; .text records take ``ftrace_ool_stub_text`` while it has stubs left and the next one is
    in branch range, then ``ftrace_ool_stub_text_end``. A record past an area's count (WARN_ON,
    -EINVAL) or out of range of its stub makes ftrace_bug() turn ftrace off. ``ips``: one per
    record, a place recorded twice twice (each takes a stub). ``bounds``: the kernel's text
    (:func:`rewriter.locs.kernel_text`), which tells .init.text records apart.
    Returns the areas and the stub of each record an area serves. A record whose area the image
    does not say (its symbol, or its ``*_count`` word's, is not in the symbol table, or the
    ``ftrace_ool_stub_text`` it would be measured against) is in neither: the kernel, linked with
    the names, gives it a stub or fails it, and the scan cannot know which (``boot.stub_unknown``)."""
    found = area_symbols(image)
    areas = {name: (addr, size, count) for name, addr, size, count in found}
    stub_size = stub_size_of(found)
    init = bounds[1] if bounds is not None and len(bounds) > 1 else (0, 0)
    used = dict.fromkeys(areas, 0)
    need = dict.fromkeys(areas, 0)
    stub_of: dict[int, Stub] = {}
    for ip in sorted(ips):
        name = _area_for(ip, init, areas, used, stub_size)
        if name is None or areas[name][2] is None:  # its stub cannot be known (stub_of leaves it out)
            continue
        addr, _, count = areas[name]
        index = used[name]
        used[name] += 1
        stub = addr + index * stub_size
        ok = count is not None and index < kernel_count(count) and _stub_in_range(ip, stub, stub_size)
        need[name] += not ok
        # a place recorded twice takes two stubs; its site is named with the first
        stub_of.setdefault(ip, (name, LAYOUTS[Variant.OOL].stub_code(stub, stub_size) if ok else None))
    out = tuple(
        StubArea(n, a, c, stub_size, min(used[n], max(kernel_count(c), 0)), need[n], s)
        for n, (a, s, c) in areas.items()
        if c is not None  # an area without its count word says nothing of the stubs it has
    )
    return out, stub_of


def kernel_count(word: int) -> int:
    """A ``*_count`` word as ftrace_init_ool_stub() compares it with the stubs it gave: it copies
    the ``unsigned int`` into ``int ool_stub_count``, so a word of 2^31 or more is negative there and
    ``WARN_ON(*ool_stub_index > ool_stub_count)`` fails every record of its area (ftrace bug). Its
    choice between the two .text areas compares the word unsigned (:func:`_area_for`)."""
    return word - (1 << 32) if word >= 1 << 31 else word


def _area_for(
    ip: int, init: tuple[int, int], areas: dict[str, tuple[int, int, int | None]], used: dict[str, int], stub_size: int
) -> str | None:
    """The area whose next stub the kernel gives the record at ``ip`` (None: the image does not
    say). As ftrace_init_ool_stub()
    does, the reserved area in .text is measured to its next stub's start, not to that stub's code
    (:func:`_stub_in_range` then checks the branches themselves)."""
    if init[0] <= ip < init[1]:
        return OOL_INITTEXT if OOL_INITTEXT in areas else None
    text = areas.get(OOL_TEXT)
    if text is None or text[2] is None:  # the kernel tries this area first: which one it takes is unknown
        return None
    addr, _, count = text
    index = used[OOL_TEXT]
    if count and index < count and ppc.in_branch_range(ip - (addr + index * stub_size)):
        return OOL_TEXT
    return OOL_TEXT_END if OOL_TEXT_END in areas else None


def _stub_in_range(ip: int, stub: int, stub_size: int) -> bool:
    """rec->ip reaches the stub's first instruction with ``b``, and the stub's ``b`` back reaches
    the word after rec->ip."""
    layout = LAYOUTS[Variant.OOL]
    code = layout.stub_code(stub, stub_size)
    back = code + layout.stub_word(Insn.BACK)
    return ppc.in_branch_range(ip - code) and ppc.in_branch_range(ip + ppc.INSN_SIZE - back)
