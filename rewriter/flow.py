"""The mflr-nop safety walk: may the ``mflr r0`` of a site be nopped without changing its function?

The question, per generation
----------------------------
* **mprofile** (``mflr r0; bl _mcount``; gcc 5: ``mflr r0; std r0,16(r1); bl _mcount``). Nopping
  the ``mflr`` (states ``nopped`` and ``guarded``) is only harmless if the function never uses the
  value that ``mflr`` put in r0.
* **patchable** (``nop; nop``; the kernel's ``ftrace_init_nop`` makes the first ``mflr r0`` for
  good). Could the first nop stay a nop? Only if the body never reads r0 as LR before writing it:
  the same question, asked of the same words (slot A is the first nop, B the second).
* **ool** (one ``nop``; ``b stub`` when traced): not applicable. The ``mflr r0`` runs in the
  out-of-line stub right before its ``bl`` and ``mtlr r0`` restores LR there; the function's own
  entry has no ``mflr`` to nop (``N_A``, not walked).

Execution after the call slot sees r0 = LR in both legal states of the slot:

* slot B is a ``nop``: r0 still holds what ``mflr`` loaded;
* slot B calls ``ftrace_caller``: it returns through ``ld r0,_LINK(r1); mtlr r0`` (or, for the graph
  tracer, ``mflr r0; std r0,LRSAVE(r1)``), so r0 = LR on return again
  (arch/powerpc/kernel/trace/ftrace_64_mprofile.S in 6.1 and ftrace_entry.S ``ftrace_regs_exit``
  in 6.12: "Restore possibly modified LR").

So slot B is transparent for the question and the walk treats both slots as no-ops. What remains
is a data-flow question: from the word after slot A, does some path *read* the value r0 holds
before an instruction *defines* it? The walk carries the bits of r0 still unknown (64 at first),
and the registers an instruction copied some of them into. The answer per site is a
:class:`Verdict`:

* ``SAFE``: every path defines r0 (and its copies), returns, or leaves through a call, before any
  read;
* ``LIVE``: some path reads r0 or a copy (the evidence is that instruction): nopping ``mflr``
  changes what the function does (gcc 5's own ``std r0,16(r1)`` in slot S is such a read, on
  purpose);
* ``UNKNOWN``: no read was found but some path could not be followed (the reason says which), or
  the walk gave up at its bound (below);
* ``N_A``: the question does not arise (ool).

The walk is a depth-first search over the control-flow graph, one visit per instruction and state
(the unknown bits, the gcc-5 save slot, the copies). It follows branches wherever they go in the
image's code; a function's symbol bounds matter only to notice falling off its end. A site's walk
looks at :data:`MAX_STATES` (word, state) pairs at most, then gives up, ``UNKNOWN``: the states
are not bounded by the code's size, since each ``ori``/``oris`` of r0 on one side of a fork
splits the unknown bits that reach every later word in two (n such forks, 2^n states).

ABI rules the walk relies on (64-Bit ELF V2 ABI Specification, OpenPOWER, 2.2.1.1 "Register
Roles", Table 2.19: r0 is "volatile register used in function prologs"; r3-r10 carry arguments):

* a call (``bl`` to a function, ``bctrl``, ``blrl``) ends the path: r0 is not an argument, so a
  conforming callee does not read it, and it is volatile, so the caller cannot rely on it after
  the call: whatever the caller reads there was defined by the callee. The one function that does
  take r0 as an argument is ``_mcount`` itself (the -mprofile-kernel convention), so a call or
  branch to an mcount entry *is* a read;
* a branch to another function's entry is a tail call, and ends the path for the same reason;
* a return (``blr``) ends the path: r0 is volatile, so the caller cannot rely on it either;
* a copy of r0's bits in r3-r10 ("parameter and return values") at a call, a return or a tail call
  is a read; so is one in a non-volatile register (r14-r31, and r1, r2, r13) at a return, which the
  caller expects kept; a call keeps copies in r14-r31 and clobbers r11 and r12.

Other rules:

* a trap with TO = 31 (``trap``, BUG/WARN's ``twi 31,0,0``) does not read its operands; WARN resumes
  at the next word, BUG never returns, so a trap that is the last word of a function ends the path;
* an ``__ex_table`` entry adds an edge from the faulting instruction to its fixup;
* r0 named in the RA field of ``addi``, ``addis``, ``isel`` and non-update loads and stores (D, DS,
  DQ and X forms) is the value 0, not a read of r0 (Power ISA v3.1 Book I, 1.6.2: "(RA|0)");
  update forms with RA = 0 are invalid forms and stop the walk;
* ``nop`` (``ori 0,0,0``) and ``xnop`` do nothing, though formally they name r0;
* indirect jumps (``bctr`` that is not a call), ``rfid``, ``sc``, absolute branches and words the
  table does not know make the path UNKNOWN, as does falling off the end of a function.

Speed
-----
Capstone decodes about 0.4 M words/s, and the vmlinux has 3.7 M words of text. Instead every word
of the image's code view (``rewriter.code``: the one the scan laid out) is classified once with
numpy from the opcode fields (``rewriter.ppc.table``), and the walk in
Python only stops at the few words that matter (branches, r0 uses, function starts): the rest are
skipped with a precomputed "next word of interest" array.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Final, NamedTuple

import numpy as np

from rewriter import arrays, ppc
from rewriter.code import OUTSIDE, CodeView, code_view
from rewriter.elf import structs as S
from rewriter.elf.image import Image
from rewriter.elf.symbols import Functions, rel_place, reloc_target_places, relocation_symbols
from rewriter.generations import LAYOUTS
from rewriter.mcount import MCOUNT_NAMES
from rewriter.ppc.fields import (
    ALL_BITS,
    MD_RLDIC,
    MD_RLDICL,
    OP_CMPLI,
    OP_RLD,
    OP_RLWINM,
    R1,
    d16,
    ds,
    mask,
    mb,
    md_mb,
    md_sh,
    md_xo,
    me,
    oe,
    primary,
    ra,
    rb,
    record,
    rotl32,
    rotl64,
    rt,
    ui16,
)
from rewriter.ppc.table import Effect, Flow, Table, decode, flow_in, gpr_fields, row_of, written_gprs
from rewriter.sites import Scan, Site
from rewriter.states import Slot

# -- the image's code -----------------------------------------------------------------------

# Targets that are not a word of the code:
TARGET_OUTSIDE: Final = OUTSIDE  # lands in no executable section
TARGET_EXTERNAL: Final = -2  # ET_REL: a branch to an undefined symbol (a function elsewhere)
TARGET_MCOUNT: Final = -3  # ET_REL: a branch to _mcount
TARGET_NONE: Final = -4  # not a relative branch


@dataclass(frozen=True)
class Code:
    """Every executable word of an image, decoded, as flat arrays indexed by word number.

    ``stop[i]`` is the first word at or after ``i`` the walk must look at (an r0 effect, a branch,
    a function's first or past-the-end word, an exception-table entry); ``edge_mark`` marks the
    function edges. ``entries`` are the word numbers of every function's global and local entry,
    ``fixups`` maps a faulting word to its exception fixup, ``mcount`` the mcount entries.
    """

    view: CodeView
    words: np.ndarray  # the view's words and a sentinel past the last section
    row: np.ndarray
    effect: np.ndarray
    flow: np.ndarray
    target: np.ndarray
    stop: np.ndarray
    edge_mark: np.ndarray
    entries: frozenset[int]
    fixups: Mapping[int, int]
    mcount: frozenset[int]
    funcs: Functions
    table: Table

    def index(self, places: np.ndarray) -> np.ndarray:
        return self.view.index(places)

    def place(self, i: int) -> int:
        return self.view.place(i)


class Relocated(NamedTuple):
    """ET_REL: word numbers of branches whose relocation names the target, and the target (a word
    number or TARGET_EXTERNAL / TARGET_MCOUNT / TARGET_OUTSIDE)."""

    at: np.ndarray
    target: np.ndarray


def build_code(
    table: Table,
    view: CodeView,
    funcs: Functions,
    mcount_places: Sequence[int] = (),
    fixups: Mapping[int, int] | None = None,
    relocated: Relocated | None = None,
) -> Code:
    """Decode the words of ``view`` and resolve branches.

    Places are virtual addresses in linked images and ``rel_place`` numbers in ET_REL files;
    ``funcs`` uses the same kind of place. Tests build small synthetic images through here.
    """
    words = np.concatenate([view.words, np.zeros(1, np.uint32)])
    n = len(words)
    dec = decode(table, words)
    flow, effect = dec.flow, dec.effect
    flow[-1] = Flow.INVALID  # a sentinel past the last section
    target = np.full(n, TARGET_NONE, np.int64)
    idx = np.flatnonzero(flow_in(flow[:-1], (Flow.JUMP, Flow.COND, Flow.CALL, Flow.COND_CALL)))
    target[idx] = view.index(ppc.branch_targets(view.places(idx), words[idx]))
    if relocated is not None:
        target[relocated.at] = relocated.target
    starts = view.index(funcs.start)
    sized = funcs.end > funcs.start
    ends = view.index(funcs.end[sized] - np.uint64(ppc.INSN_SIZE)) + 1
    edge_mark = np.zeros(n, bool)
    edge_mark[starts[starts >= 0]] = True
    edge_mark[ends[ends > 0]] = True
    edge_mark[view.first] = True
    edge_mark[-1] = True
    fixups = dict(fixups or {})
    interesting = (effect != 0) | (flow != Flow.NEXT) | edge_mark
    interesting[np.fromiter(fixups, np.int64, len(fixups))] = True
    stop = _next_true(interesting)
    entries = np.concatenate([starts, view.index(funcs.lep)])
    mcount = view.index(np.array(mcount_places, np.uint64))
    return Code(
        view, words, dec.row, effect, flow, target, stop, edge_mark,
        frozenset(int(e) for e in entries if e >= 0), fixups, frozenset(int(m) for m in mcount if m >= 0),
        funcs, table,
    )  # fmt: skip


def _next_true(mark: np.ndarray) -> np.ndarray:
    """For each index, the first index at or after it where ``mark`` is set (the last one must
    be). Each marked index repeated over the run of words that ends at it: half the time of a
    reversed ``minimum.accumulate`` over 3.7 M words."""
    at = np.flatnonzero(mark)
    return np.repeat(at, np.diff(at, prepend=-1)).astype(np.int64, copy=False)


def load_code(image: Image, result: Scan, table: Table, view: CodeView | None = None) -> Code:
    """Decode the executable sections of ``image`` and resolve branch targets. ``view``: the code
    view the scan used, so that an audit lays the text out once (built here when not given)."""
    if view is None:
        view = code_view(image)
    linked = image.type != S.ET_REL
    return build_code(
        table,
        view,
        result.functions,
        result.mcount_entries if linked else (),
        _extable(image, view),
        None if linked else _branch_relocs(image, view),
    )


def _branch_relocs(image: Image, view: CodeView) -> Relocated:
    """ET_REL: a branch's own offset means nothing where a relocation names its target."""
    syms = image.symbols
    ats, dests = [np.zeros(0, np.int64)], [np.zeros(0, np.int64)]
    if syms is None:
        return Relocated(ats[0], dests[0])
    mcount_syms = np.concatenate([syms.find(name) for name in MCOUNT_NAMES])
    for rsec in image.relocation_sections():
        sec = image.section_at(rsec.info) if rsec.info else None
        if sec is None or not sec.is_exec:
            continue
        rela = image.relocations(rsec)
        rela = rela[arrays.member(S.r_type(rela["r_info"]), S.BRANCH_RELOCS)]
        if not len(rela):
            continue
        at = view.index(rel_place(sec.shndx, rela["r_offset"]))
        symi = S.r_sym(rela["r_info"]).astype(np.int64)
        # the rows through relocation_symbols: it bounds each index by .symtab, which the section
        # need not link to (Image.relocations bounds it by the table it does link to)
        undefined = relocation_symbols(image, rela)["st_shndx"] == S.SHN_UNDEF
        dest = view.index(reloc_target_places(image, rela))
        dest = np.where(undefined, np.where(arrays.member(symi, mcount_syms), TARGET_MCOUNT, TARGET_EXTERNAL), dest)
        ats.append(at[at >= 0])
        dests.append(dest[at >= 0])
    return Relocated(np.concatenate(ats), np.concatenate(dests))


def _extable(image: Image, view: CodeView) -> dict[int, int]:
    """``__ex_table``: pairs of 32-bit self-relative offsets (insn, fixup), as the kernel's
    ARCH_HAS_RELATIVE_EXTABLE lays them out (arch/powerpc/include/asm/extable.h)."""
    sec = image.section("__ex_table")
    if sec is None or sec.type == S.SHT_NOBITS or sec.size % 8:
        return {}
    if image.type != S.ET_REL:
        raw = image.table(sec, np.dtype(image.endian + "i4"), "__ex_table").astype(np.int64)
        field = np.uint64(sec.addr) + np.uint64(4) * np.arange(len(raw), dtype=np.uint64)
        dest = view.index(field + raw.astype(np.uint64))  # wraps like the hardware
        return {int(i): int(f) for i, f in zip(dest[0::2], dest[1::2], strict=True) if i >= 0 and f >= 0}
    rsec = image.section(".rela__ex_table")
    if rsec is None or image.symbols is None:
        return {}
    rela = image.relocations(rsec)
    rela = rela[S.r_type(rela["r_info"]) == S.R_PPC64_REL32]
    dest = view.index(reloc_target_places(image, rela))
    by_field = dict(zip(rela["r_offset"].tolist(), dest.tolist(), strict=True))
    out = {}
    for off in range(0, sec.size, 8):
        insn, fix = by_field.get(off, -1), by_field.get(off + 4, -1)
        if insn >= 0 and fix >= 0:
            out[insn] = fix
    return out


# -- the walk -------------------------------------------------------------------------------


MAX_STATES: Final = 16_384
"""The (word, state) pairs one site's walk may look at. The Debian kernels' largest walk looks at
807 (of 250,000 walks: the 6.1, 6.12 and Debian 12's 6.12 vmlinux and modules), 15 of them with
bits of r0 known. Reaching the bound takes a walk ~40 ms; unbounded, a function of 21 forks that
each ``ori`` r0 on one side took 16 s and 900 MB, and each fork more doubled both."""


class Verdict(enum.Enum):
    SAFE = "safe"
    LIVE = "live"
    UNKNOWN = "unknown"
    N_A = "n/a"  # ool: the site has no mflr of its own (the stub's mflr runs right before its bl)


class Why(enum.Enum):
    """Why a walk ended LIVE or UNKNOWN."""

    READS_R0 = "reads r0 before anything redefines it"
    READS_COPY = "uses bits of r0's value that an earlier instruction copied to another register"
    PASSES_COPY = "hands bits of r0's value to a callee or the caller in a register"
    CALLS_MCOUNT = "passes r0 to _mcount (its argument in the -mprofile-kernel ABI)"
    INDIRECT_JUMP = "indirect jump (bctr): targets not known"
    FALLS_OFF = "runs past the end of the function"
    OUTSIDE = "branches outside the executable sections"
    LOCAL_CALL = "calls into the middle of its own function"
    RELOADS_LR_SAVE = "reloads the LR save doubleword that gcc 5's std filled from r0"
    CANNOT_FOLLOW = "instruction the walk cannot follow (rfid, sc, absolute or bctar branch)"
    STACK_POINTER = "changes r1 while the LR save doubleword holds r0's copy"
    UNDECODED = "word not in the instruction table (or an invalid form)"
    NO_FUNCTION = "site outside any function symbol and its code"
    OUT_OF_LINE = "ool: the mflr r0 is in the out-of-line stub, right before its bl; the entry has none to nop"
    TOO_MANY_STATES = (
        f"the walk gave up after {MAX_STATES} states: too many paths leave different bits of r0 (or of its "
        "copies) unknown"
    )


class Safety(NamedTuple):
    """The verdict for one site; ``evidence`` is the place of the word that decided LIVE or UNKNOWN."""

    verdict: Verdict
    why: Why | None
    evidence: int | None


class _SiteWords(NamedTuple):
    a: int  # word number of slot A
    b: int  # word number of slot B (the call slot)
    lr_slot: int | None  # gcc 5: LR_SAVE, the doubleword slot S stored r0 to


class _Fn(NamedTuple):
    start: int
    lep: int
    end: int  # word number past the function (-1 if unknown)


# Plain ints for the hot loop: IntFlag and IntEnum arithmetic costs a Python call each.
_READ, _WRITE, _INVALID = int(Effect.READ), int(Effect.WRITE), int(Effect.INVALID)
_NEXT, _JUMP, _COND, _CALL, _COND_CALL = (int(Flow.NEXT), int(Flow.JUMP), int(Flow.COND), int(Flow.CALL),
                                          int(Flow.COND_CALL))  # fmt: skip
_RETURN, _INDIRECT_CALL = int(Flow.RETURN), int(Flow.INDIRECT_CALL)
_COND_RETURN, _COND_INDIRECT_CALL = int(Flow.COND_RETURN), int(Flow.COND_INDIRECT_CALL)
_INDIRECT, _COND_INDIRECT = int(Flow.INDIRECT), int(Flow.COND_INDIRECT)
_TRAP, _STOP = int(Flow.TRAP), int(Flow.STOP)


class _Views(NamedTuple):
    """memoryviews of the Code arrays: indexing one yields a Python int, several times faster
    than indexing the numpy array."""

    words: memoryview
    effect: memoryview
    flow: memoryview
    target: memoryview
    stop: memoryview
    mark: memoryview


def _views(code: Code) -> _Views:
    arrays = (code.words, code.effect, code.flow, code.target, code.stop, code.edge_mark.view(np.uint8))
    return _Views(*(a.data for a in arrays))


Copies = tuple[tuple[int, int], ...]
"""Registers other than r0 that hold unknown bits of r0's ``mflr`` value, as (register, bits),
sorted: a word that reads r0 and writes another register passes the bits on instead of deciding
LIVE at once. amdgpu.ko ``link_enc_cfg_is_link_enc_avail`` (6.12) builds a struct in r0 with
``rldimi`` and compares one byte of it: ``xor r10,r10,r0; andi. r10,r10,0xff00``; the xor
copies r0's unknown high half into r10 and the andi. masks it away."""


def walk(code: Code, v: _Views, site: _SiteWords, fn: _Fn) -> tuple[Verdict, Why | None, int | None]:
    """Depth-first walk from the word after the site's last slot; the slots themselves are part of
    the site (A nopped, B transparent, S executed before the walk starts).

    The state of a path is (taint, slot, copies). ``taint`` has a bit set for every bit of r0 that
    still holds the ``mflr`` value (all 64 at first; see :func:`transfer`). ``slot`` is, for gcc-5
    sites only, the offset from r1 of the LR save doubleword that slot S filled from r0 (None when
    no memory holds the value; see :func:`frame_step`). ``copies``: other registers holding some
    of those bits (:data:`Copies`). A (word, state) pair is looked at once, and at most
    :data:`MAX_STATES` of them (then the verdict is UNKNOWN, :attr:`Why.TOO_MANY_STATES`).
    """
    walker = _Walker(code, v, site, fn)
    try:
        return walker.run()
    except _Live as found:
        return Verdict.LIVE, found.why, found.at


class _Live(Exception):
    """A read of the value: it decides the whole walk, from however deep in a path it is found."""

    def __init__(self, why: Why, at: int) -> None:
        super().__init__(why.value)
        self.why, self.at = why, at


_State = tuple[int, int | None, Copies]  # taint, slot, copies
_Path = tuple[int, int, int, int | None, Copies]  # word, reached, taint, slot, copies
# reached: 0 sequentially, 1 by a branch (a function start is fine), 2 just after an always-trap


class _Walker:
    """One site's walk: the paths still to follow, the (word, state) pairs seen, and the first
    reason a path could not be followed (which makes the verdict UNKNOWN unless a read is found)."""

    def __init__(self, code: Code, v: _Views, site: _SiteWords, fn: _Fn) -> None:
        self.code, self.v, self.site, self.fn = code, v, site, fn
        self.own = (fn.start, fn.lep)
        self.seen: set[int | tuple[int, int, int | None, Copies]] = set()
        self.unknown: tuple[Why, int] | None = None
        self.stack: list[_Path] = [(site.b + 1, 0, ALL_BITS, site.lr_slot, ())]

    def run(self) -> tuple[Verdict, Why | None, int | None]:
        while self.stack:
            path = self.stack.pop()
            if len(self.seen) >= MAX_STATES:  # checked per path, not per word: off the hot loop
                return Verdict.UNKNOWN, Why.TOO_MANY_STATES, path[0]
            self._follow(*path)
        if self.unknown is not None:
            return Verdict.UNKNOWN, self.unknown[0], self.unknown[1]
        return Verdict.SAFE, None, None

    def _stuck(self, why: Why, j: int) -> None:
        self.unknown = self.unknown or (why, j)

    def _follow(self, i: int, reached: int, taint: int, slot: int | None, copies: Copies) -> None:
        """One path, word by word, until it ends, meets a state already seen, or forks (the
        other branch goes on the stack). Words that neither touch r0 nor branch are skipped,
        unless memory or another register holds the value."""
        stop, mark, effect, flow = self.v.stop, self.v.mark, self.v.effect, self.v.flow
        site, seen, fixups = self.site, self.seen, self.code.fixups
        while True:
            plain = slot is None and not copies
            j = stop[i] if plain else i
            key = j if taint == ALL_BITS and plain else (j, taint, slot, copies)
            if key in seen:
                return
            seen.add(key)
            if site.a <= j <= site.b:
                i, reached = j + 1, 0
                continue
            if mark[j] and not (reached == 1 and j == i):
                if reached != 2:  # BUG()'s trap as a function's last word never returns
                    self._stuck(Why.FALLS_OFF, j)
                return
            if j in fixups:
                self.stack.append((fixups[j], 1, taint, slot, copies))
            e = effect[j]
            if e & _INVALID:
                self._stuck(Why.UNDECODED, j)
                return
            state = self._data(j, e, taint, slot, copies)
            if state is None:
                return
            taint, slot, copies = state
            f = flow[j]
            if f == _NEXT:
                i, reached = j + 1, 0
                continue
            if f == _TRAP:
                i, reached = j + 1, 2
                continue
            state = self._branch(j, f, state)
            if state is None:
                return
            i, reached = j + 1, 0
            taint, slot, copies = state

    def _data(self, j: int, e: int, taint: int, slot: int | None, copies: Copies) -> _State | None:
        """The state after word ``j``'s data effect; None when the path ends (nothing left to
        follow, or r1 moved in a way not modelled)."""
        word = self.v.words[j]
        if slot is not None:
            slot = frame_step(self.code, word, slot)
            if slot is _RELOADS:
                raise _Live(Why.RELOADS_LR_SAVE, j)
            if slot is _LOST:
                self._stuck(Why.STACK_POINTER, j)
                return None
        if copies or (e & _READ and taint):
            moved = data_step(self.code.table, word, e, taint, copies)
            if isinstance(moved, Why):
                raise _Live(moved, j)
            taint, copies = moved
        elif e & _WRITE:
            taint = 0
        if not taint and slot is None and not copies:
            return None
        return taint, slot, copies

    def _branch(self, j: int, f: int, state: _State) -> _State | None:
        """Control flow out of word ``j``: targets go on the stack; returns the state to go on with
        at ``j + 1``, or None when the path ends here."""
        if f in (_RETURN, _COND_RETURN):
            self._hand_on(state[2], j, call=False)
            return state if f == _COND_RETURN else None
        if f in (_INDIRECT_CALL, _COND_INDIRECT_CALL):
            self._hand_on(state[2], j, call=True)
            return state if f == _COND_INDIRECT_CALL else _after_call(state)
        if f in (_INDIRECT, _COND_INDIRECT):
            jumps = jump_table(self.v, j, self.fn) if f == _INDIRECT else None
            if jumps is not None:
                self.stack.extend((t, 1, *state) for t in jumps)
                return None
            self._stuck(Why.INDIRECT_JUMP, j)
            return state if f == _COND_INDIRECT else None
        if f == _STOP:
            self._stuck(Why.CANNOT_FOLLOW, j)
            return None
        t = self.v.target[j]
        if state[0] and (t == TARGET_MCOUNT or t in self.code.mcount):
            raise _Live(Why.CALLS_MCOUNT, j)
        if f in (_CALL, _COND_CALL):
            return self._call(j, f, t, state)
        return self._jump(j, f, t, state)

    def _call(self, j: int, f: int, t: int, state: _State) -> _State | None:
        """A relative ``bl`` (or ``bcl``) to ``t``."""
        if t == j + 1:  # bl .+4 / bcl 20,31,.+4: reads the PC, not a call
            return state
        fn = self.fn
        if fn.start <= t < fn.end and t not in self.own:
            self._stuck(Why.LOCAL_CALL, j)
            return None
        self._hand_on(state[2], j, call=True)
        return state if f == _COND_CALL else _after_call(state)

    def _jump(self, j: int, f: int, t: int, state: _State) -> _State | None:
        """A relative branch to ``t``, always or on a condition. A branch to another function's
        entry (or, in ET_REL, to an undefined symbol) is a tail call."""
        if t == TARGET_OUTSIDE:
            self._stuck(Why.OUTSIDE, j)
        elif t >= 0 and (t not in self.code.entries or t in self.own):
            self.stack.append((t, 1, *state))
        else:
            self._hand_on(state[2], j, call=False)
        return state if f == _COND else None

    @staticmethod
    def _hand_on(copies: Copies, j: int, call: bool) -> None:
        if copies and copies_escape(copies, call):
            raise _Live(Why.PASSES_COPY, j)


def _after_call(state: _State) -> _State | None:
    """What survives a call: r0 is clobbered; a copy in memory or a non-volatile register lives on."""
    _, slot, copies = state
    copies = after_call(copies)
    if slot is None and not copies:
        return None
    return 0, slot, copies


# -- gcc 5: the copy of r0 in the LR save doubleword ----------------------------------------

LR_SAVE: Final = 16  # ELFv2 ABI 2.2.2.1 "Stack Frame Organization": LR save doubleword at 16(r1)
_RELOADS: Final = -1  # sentinels for frame_step
_LOST: Final = -2


def frame_step(code: Code, word: int, slot: int) -> int | None:
    """Follow the LR save doubleword that gcc 5's ``std r0,16(r1)`` (slot S) filled from r0.

    ``slot`` is its offset from the current r1. Returns the new offset, None once a store
    overwrites it, ``_RELOADS`` when a load reads it back (the function restores LR from it:
    nopping ``mflr`` then returns to garbage), or ``_LOST`` when r1 changes in a way not modelled.
    ``stdu r1,-N(r1)`` and ``addi r1,r1,N`` move r1; nothing else may write it.

    Not counted: stack unwinders (backtraces, ``__builtin_return_address(1)``) that read the
    doubleword from a callee; they print or record it, they do not return through it.
    """
    mnemonic = row_of(code.table, word).mnemonic
    if ra(word) == R1:
        if mnemonic == "stdu" and rt(word) == R1:  # stdu r1,d(r1)
            return slot - ds(word)
        if mnemonic == "addi" and rt(word) == R1:  # addi r1,r1,d
            return slot - d16(word)
        if mnemonic == "ld" and ds(word) == slot:  # ld rX,slot(r1)
            return _RELOADS
        if mnemonic == "std" and ds(word) == slot:  # std rX,slot(r1)
            return None
    return _LOST if R1 in written_gprs(code.table, word) else slot


# -- partial definitions of r0 --------------------------------------------------------------


def _carry_up(taint: int) -> int:
    """Bits an add can disturb: everything from the lowest unknown bit up."""
    return (ALL_BITS ^ ((taint & -taint) - 1)) if taint else 0


_STORE_BYTES: Final[Mapping[str, int]] = {
    "stb": 0xFF, "sth": 0xFFFF, "stw": 0xFFFF_FFFF, "stbx": 0xFF, "sthx": 0xFFFF, "stwx": 0xFFFF_FFFF
}  # fmt: skip
_LOGICAL: Final = frozenset({"and", "andc", "or", "orc", "xor", "nand", "nor", "eqv"})
_ZERO_SELF: Final = frozenset({"xor", "andc"})  # xor r,rA,rA and andc r,rA,rA are 0 whatever rA holds
_SELF_CANCEL: Final = frozenset({"subf", "subfc", "subfe"})
_IMMEDIATE_LOGICAL: Final = frozenset({"ori", "oris", "xori", "xoris", "andi.", "andis."})
_ROTATE_64: Final = ("rldicl", "rldicr", "rldic", "rldimi")  # by MD-form xo


def transfer(table: Table, word: int, taints: Mapping[int, int]) -> tuple[int | None, int] | None:
    """How a word that reads unknown bits moves them.

    ``taints`` maps a register to its bits that still hold (a function of) the ``mflr`` value:
    r0 and the copies made from it. Returns (the register written, or None for a store; the
    unknown bits of the value written), or None when the result may depend on the unknown bits in
    a way not modelled here: a real read. gcc builds bit-fields in a register it never
    initialised and overwrites every bit it keeps (chcr.ko ``get_aes_decrypt_key``:
    ``clrrwi r0,r0,16; or r0,r0,r4; ...; rlwimi r0,r5,16,0,15``): that names r0 as a source
    without depending on it. Record forms (Rc = 1, ``andi.``) and OE set CR0/XER from the
    result, so they only pass if none of its bits is unknown.
    """
    m = row_of(table, word).mnemonic
    rs, t_rs, t_ra, t_rb = rt(word), taints.get(rt(word), 0), taints.get(ra(word), 0), taints.get(rb(word), 0)
    base = t_ra if ra(word) else 0  # (RA|0): r0 as a base register is the value 0
    dest: int | None = ra(word)
    out: int | None = None
    rec = bool(record(word))
    if m in ("rlwimi", "rlwinm"):
        bits = mask(mb(word) + 32, me(word) + 32)
        out = (rotl32(t_rs, rb(word)) & bits) | (t_ra & ~bits if m == "rlwimi" else 0)
    elif m in _ROTATE_64:
        out = _rotate64(m, word, t_rs, t_ra)
    elif m in _IMMEDIATE_LOGICAL:
        out, rec = _immediate_logical(m, word, t_rs), m.endswith(".")
    elif m in ("addi", "addis"):  # rT = (RA|0) + imm
        dest, out, rec = rs, _carry_up(base), False
    elif m in _LOGICAL:
        out = 0 if rs == rb(word) and m in _ZERO_SELF else t_rs | t_rb
    elif m in _SELF_CANCEL and ra(word) == rb(word):
        # subf rT,rA,rA is 0; subfc gives 0 with CA = 1; subfe gives CA - 1 (gcc's carry-to-mask
        # idiom, lpfc.ko lpfc_check_clean_addr_bit: `subfe r0,r0,r0`): none depends on rA.
        dest, out = rs, 0
    elif m in ("add", "subf"):
        dest, out, rec = rs, _carry_up(t_ra | t_rb), rec or bool(oe(word))
    elif m in _STORE_BYTES and not base and not (m.endswith("x") and t_rb):
        dest, out, rec = None, t_rs & _STORE_BYTES[m], False
    if out is None or (rec and out):
        return None
    return dest, out


def _rotate64(m: str, word: int, t_rs: int, t_ra: int) -> int:
    """rldicl, rldicr, rldic, rldimi: rotate left by SH, then MASK(MB, 63), MASK(0, ME) (rldicr's
    field is ME), or MASK(MB, 63 - SH)."""
    sh, mbe = md_sh(word), md_mb(word)
    if m == "rldicl":
        bits = mask(mbe, 63)
    elif m == "rldicr":
        bits = mask(0, mbe)
    else:
        bits = mask(mbe, 63 - sh)
    return (rotl64(t_rs, sh) & bits) | (t_ra & ~bits & ALL_BITS if m == "rldimi" else 0)


def _immediate_logical(m: str, word: int, t_rs: int) -> int:
    """ori and xori keep the unknown bits the immediate leaves alone; andi. keeps those it selects."""
    imm = ui16(word) << (16 if m.startswith(("oris", "xoris", "andis")) else 0)
    if m.startswith("and"):
        return t_rs & imm
    return t_rs & ~imm if m.startswith("or") else t_rs


_SCRATCH: Final = frozenset({11, 12})  # volatile, neither argument nor result (ELFv2 ABI Table 2.19)
_NON_VOLATILE: Final = 14  # r14-r31 survive a call (the callee saves them)


def copy_fields(table: Table, word: int, copies: Mapping[int, int]) -> tuple[list[int], list[int]]:
    """The copy registers a word reads and those it only writes, by the table (a ``(RA|0)``
    field naming a register other than r0 is a read of it)."""
    read, written = [], []
    for reg, is_read, is_written in gpr_fields(table, word):
        if reg not in copies:
            continue
        if is_read:
            read.append(reg)
        elif is_written:
            written.append(reg)
    return read, written


def data_step(table: Table, word: int, effect: int, taint: int, copies: Copies) -> tuple[int, Copies] | Why:
    """The unknown bits of r0 and of its copies after ``word``; a :class:`Why` when the word uses
    them (LIVE)."""
    regs = dict(copies)
    read, written = copy_fields(table, word, regs) if regs else ([], [])
    reads_r0 = bool(effect & _READ and taint)
    if not (reads_r0 or read):
        if effect & _WRITE:
            taint = 0
        for reg in written:
            del regs[reg]
        return taint, tuple(sorted(regs.items()))
    moved = transfer(table, word, {**regs, 0: taint})
    why = Why.READS_COPY if read else Why.READS_R0
    if moved is None:
        return why
    dest, out = moved
    if dest is None:
        if out:
            return why
    elif dest == 0:
        taint = out
    elif out:
        regs[dest] = out
    else:
        regs.pop(dest, None)
    return taint, tuple(sorted(regs.items()))


def copies_escape(copies: Copies, call: bool) -> bool:
    """Whether a call (``call``) or a return or tail call hands a copy on: in an argument register
    (r3-r10: "parameter and return values", ELFv2 ABI 2.2.1.1), or, at a return, in a register the caller expects kept
    (r1, r2, r13-r31); a call passes r1, r2 and r13 to the callee as well."""
    return any(reg not in _SCRATCH and (not call or reg < _NON_VOLATILE) for reg, _ in copies)


def after_call(copies: Copies) -> Copies:
    """The copies a call leaves: those in non-volatile registers."""
    return tuple(c for c in copies if c[0] >= _NON_VOLATILE)


def jump_table(v: _Views, j: int, fn: _Fn) -> list[int] | None:
    """Targets of the ``bctr`` at word ``j`` if it ends gcc's switch sequence, else None.

    gcc 12 for ppc64le (the Debian 6.1 kernel and its modules) emits, for a dense switch::

        cmplwi rI,N ; bgt default ; addis rT,r2,.L4@toc@ha ; addi rT,rT,.L4@toc@l ;
        sldi rI,rI,2 ; lwax rX,rT,rI ; add rX,rX,rT ; mtctr rX ; bctr ; .L4: .long .Lcase0-.L4 ...

    so the table is the words right after the ``bctr``, each the signed distance from the table
    to a case. Two independent counts must agree before the targets are trusted: the words that
    read as distances to instructions of the function (an instruction word never does: its opcode
    bits make it a distance of at least 64 MiB), and the number of cases the code allows: N + 1
    for some ``cmpli rI,N`` earlier in the function (gcc may share one compare between several
    switches, or keep its CR field for a while), or 2^k when the index is cut to k bits by an
    ``rlwinm rI,rJ,2,MB,29``, ``rldicl``/``srdi`` or ``rldic rI,rJ,2,MB`` (6.12 ``is_reg64``, 6.1
    ``get_clock_source``) just before.
    """
    words = v.words
    if fn.end < 0:
        return None
    base, k, targets = j + 1, j + 1, []
    while k < fn.end:
        off = _signed32(words[k])
        t = base + off // ppc.INSN_SIZE
        if off % ppc.INSN_SIZE or not fn.start <= t < fn.end or base <= t <= k:
            break
        targets.append(t)
        k += 1
    return targets if targets and len(targets) in _case_counts(words, j, fn) else None


def _signed32(data: int) -> int:
    """A 32-bit data word as the signed distance it holds."""
    return data - (1 << 32) if data >= 1 << 31 else data


def _case_counts(words: memoryview, j: int, fn: _Fn) -> set[int]:
    counts = set()
    for back in range(j - 1, max(fn.start, 0) - 1, -1):
        w = words[back]
        op = primary(w)
        if op == OP_CMPLI:
            counts.add(ui16(w) + 1)
        elif back > j - 12 and op == OP_RLWINM and me(w) == 29:  # rlwinm rI,rJ,SH,MB,29
            counts.add(1 << (30 - mb(w)))
        elif back > j - 12 and op == OP_RLD and md_xo(w) in (MD_RLDICL, MD_RLDIC):
            if md_xo(w) == MD_RLDICL:  # rldicl rI,rJ,SH,MB (srdi): 64 - MB bits
                counts.add(1 << (64 - md_mb(w)))
            else:  # rldic rI,rJ,SH,MB: the index cut and scaled at once, 64 - SH - MB bits
                counts.add(1 << max(64 - md_sh(w) - md_mb(w), 0))
    return counts


# -- per site -------------------------------------------------------------------------------


def safety(code: Code, sites: Sequence[Site]) -> tuple[Safety, ...]:
    """One :class:`Safety` per site, in order. A layout without an mflr slot (ool) is ``N_A``."""
    asked = [n for n, s in enumerate(sites) if LAYOUTS[s.variant].offset(Slot.A) is not None]
    out = [_NOT_ASKED] * len(sites)
    for n, verdict in zip(asked, _walk_sites(code, [sites[n] for n in asked]), strict=True):
        out[n] = verdict
    return tuple(out)


_NOT_ASKED: Final = Safety(Verdict.N_A, Why.OUT_OF_LINE, None)


def _walk_sites(code: Code, sites: Sequence[Site]) -> list[Safety]:
    places = np.array([s.place for s in sites], np.uint64)
    b_idx = code.index(places).tolist()
    deltas = np.array([LAYOUTS[s.variant].first_offset for s in sites], np.int64)
    a_idx = code.index(places + deltas.astype(np.uint64)).tolist()
    quick = _overwritten_at_once(code, np.array(a_idx, np.int64), np.array(b_idx, np.int64)).tolist()
    s_offsets = {variant: LAYOUTS[variant].offset(Slot.S) for variant in {s.variant for s in sites}}
    v = _views(code)
    out: list[Safety] = []
    walks: list[tuple[int, _SiteWords]] = []  # the sites settled by a walk, and where it starts
    for n in range(len(sites)):
        a, b = a_idx[n], b_idx[n]
        if a < 0 or b < 0:
            out.append(_NO_FUNCTION)
            continue
        # gcc 5: slot S (std r0,16(r1)) ran, so the value also sits in the LR save doubleword.
        s_offset = s_offsets[sites[n].variant]
        s_word = None if s_offset is None else v.words[b + s_offset // ppc.INSN_SIZE]
        lr_slot = LR_SAVE if s_word == ppc.STD_R0_16_R1 else None
        out.append(_SAFE_AT_ONCE)  # unless a walk below decides otherwise
        if not quick[n] or lr_slot is not None:
            walks.append((n, _SiteWords(a, b, lr_slot)))
    # The functions around the walked sites only: a quick verdict needs none (18,108 of 6.1's).
    fns = _function_words(code, places[np.array([n for n, _ in walks], np.int64)])
    for (n, words), fn in zip(walks, fns, strict=True):
        verdict, why, at = walk(code, v, words, fn if fn.start >= 0 else _Fn(words.a, words.a, -1))
        out[n] = Safety(verdict, why, None if at is None else code.place(at))
    return out


_NO_FUNCTION: Final = Safety(Verdict.UNKNOWN, Why.NO_FUNCTION, None)
_SAFE_AT_ONCE: Final = Safety(Verdict.SAFE, None, None)


def _overwritten_at_once(code: Code, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per site, whether the first word after its slots that the walk looks at (``stop``) writes
    r0 without reading it, and is neither a function edge nor an exception fixup: the walk would
    end there, SAFE, with nothing on its stack. More than half the sites of a vmlinux end so
    (18,108 of 6.1's 33,690: mostly the function's own ``mflr r0``); one vectorised test for all
    of them takes a quarter off the safety pass (0.40 s -> 0.30 s on 6.1), same verdicts."""
    known = (a >= 0) & (b >= 0)
    first = code.stop[np.where(known, b + 1, 0)]
    effect = code.effect[first]
    quick: np.ndarray = known & ~code.edge_mark[first] & ((effect & (_READ | _INVALID)) == 0) & ((effect & _WRITE) != 0)
    if code.fixups:
        quick &= ~arrays.member(first, np.fromiter(code.fixups, np.int64, len(code.fixups)))
    return quick


def _function_words(code: Code, places: np.ndarray) -> list[_Fn]:
    """Word numbers of the start, local entry and end of the function around each place."""
    funcs = code.funcs
    if not len(funcs) or not len(places):
        return [_Fn(-1, -1, -1)] * len(places)
    fi = funcs.containing(places)
    f = np.maximum(fi, 0)
    start = code.index(funcs.start[f])
    lep = code.index(funcs.lep[f])
    sized = funcs.end[f] > funcs.start[f]
    last = code.index(np.where(sized, funcs.end[f] - np.uint64(4), funcs.start[f]))
    end = np.where(sized & (last >= 0), last + 1, -1)
    start = np.where(fi >= 0, start, -1)
    return [_Fn(*t) for t in zip(start.tolist(), lep.tolist(), end.tolist(), strict=True)]
