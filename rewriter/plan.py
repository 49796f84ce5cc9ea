"""Plan the writes that move many ftrace call sites from their current states to their targets.

Strategy: each site is planned on its own, as the cheapest path through its layout's transitions
(``generations.steps_from``: :data:`states.TRANSITIONS`, or :data:`states.OOL_TRANSITIONS`), fewest
barriers, then fewest writes, that the route, the CMODX policy and the mode allow.  A path splits
into *segments* wherever a write needs a barrier before it.  The global plan then lines the sites
up segment by segment: segment ``j`` of every site lands between barrier ``j-1`` and barrier
``j``, its writes in program order inside the segment.  So the plan needs exactly as many barriers as
the most demanding single site: enabling 40,000 ``nopped`` sites costs one ``synchronize_rcu_tasks``,
not 40,000.

Plans are symbolic: a :class:`Write` names a site by its index in the caller's request list and a
slot by name; the patch layer turns them into words (``states.word_for``) and file offsets.

The barrier rule, and the precondition every runtime plan assumes and re-establishes
----------------------------------------------------------------------------------------
A task that executed slot A while it read ``nop`` has r0 not holding LR until it passes slot B.
Writing ``bl`` into B is safe only once every such task has left, which ``synchronize_rcu_tasks``
guarantees (it waits for every task to pass a voluntary context switch, and none happens between A
and B).  A plan assumes, at its start, that no task is between A and B with a stale r0 unless A
reads ``nop``; that holds after boot and after any plan from here, because a plan whose last writes
leave such a task behind while A no longer reads ``nop`` (e.g. ``nopped -> disabled``) ends with a
*settle* barrier.  Without it, a later ``disabled -> enabled`` plan (one write, no barrier) would
race exactly like the 2019 report, only split over two commands.

Stale instruction fetch
-----------------------
With ``stale_fetch=True`` a CPU may keep executing the previous contents of a slot until it passes a
context-synchronising event; ``synchronize_rcu_tasks`` alone does not provide one.  Plans then use
:attr:`Barrier.ISYNC_RCU_TASKS` (an IPI making every CPU run ``isync``, *then* the RCU-tasks wait)
between every two writes to a site, and after the last one when the word it replaced is one a
CPU could still run to harm (:func:`stale_word_harmless`): a ``nop`` in A, or the site's ``bl``.
A CPU still fetching a replaced ``nop`` in B, ``mflr`` or ``b .+8`` (past B) in A, or ool's
``b stub``, runs one call traced more or less, whatever is written later: the kernel's own
one-write enable (``disabled -> enabled``) needs no isync after it.

Per generation (the layouts of ``rewriter.generations``)
-------------------------------------------------------
* **mprofile** (6.1) and **patchable** (6.12) sites have an ``mflr`` slot A before the call slot B,
  so both routes and every rule above apply. A patchable site boots ``disabled`` (the kernel writes
  ``mflr`` into A once, at init); ``nopped`` is what the file holds, and getting out of it at run
  time is the 2019 problem again (``check`` built-ins ``patchable-naive-enable`` and
  ``patchable-b8-enable``).
* **ool** (6.13+, 7.2) sites are one word, ``nop`` (disabled) or ``b stub`` (enabled). Enabling and
  disabling are one write with no barrier and no settle: the ``mflr r0`` runs inside the stub right
  before the stub's ``bl``, and the stub is written once at boot, so no write can leave a task
  about to call the tracer with a stale r0. With stale fetch too: a CPU that still runs the old
  entry word skips the stub (untraced once more) or runs the intact stub (traced once more). Both
  routes plan the same single write.
* CMODX: under ``--cmodx 3.0`` the rows that write ``mflr`` are refused at run time in every
  generation. An ool plan never writes ``mflr`` (``nop <-> b`` are both in the ISA's patch class),
  so no ool plan is ever refused, or flagged by the checker, for CMODX.
"""

from __future__ import annotations

import enum
import json
import string
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Final, NamedTuple, TypeVar

from rewriter import ppc
from rewriter.errors import ArgumentError, NoRoute, PlanFormatError, PlanRejected
from rewriter.generations import LAYOUTS, TRAMPOLINE_CALL, Caller, Variant, state_rejection, steps_from
from rewriter.prose import agreeing, counted, json_problem, printable
from rewriter.siteplaces import Place, PlacedWrite, hex_text, placed, slot_addr
from rewriter.states import S_WRITES, Insn, SiteState, Slot, Step, words_text


class Route(enum.Enum):
    """How ``mflr`` goes back into a ``nop``'ed slot A (linuxppc-dev, May 2019)."""

    MFLR_FIRST = "mflr-first"  # Piggin: nop -> mflr, barrier, nop -> bl
    B8 = "b8"  # Rao: nop -> b+8, barrier, nop -> bl, b+8 -> mflr


class Cmodx(enum.Enum):
    """Which Power ISA's concurrent-modification rules the runtime patcher must obey."""

    V3_0 = "3.0"  # mflr may not be patched while another thread may execute it
    V3_1 = "3.1"  # relaxed: mflr <-> nop may be patched live


PATCH_CLASS: Final = (Insn.NOP, Insn.B8, Insn.CALL, Insn.STUB)
"""The words of ISA 3.0's CMODX "patch class" a site may hold: I-form branches (``b .+8``, ``bl``,
``b stub``) and the preferred no-op. ``mflr r0`` and gcc 5's ``std r0,16(r1)`` are not in it."""


def cmodx_3_0_allows(old: Insn, new: Insn) -> bool:
    """Whether ISA 3.0 lets a word be replaced while another thread may execute it: only when both
    the old and the new word are patch class (Book II, "Concurrent Modification and Execution of
    Instructions"); ISA 3.1 relaxed this. The planner and the checker both ask here."""
    return old in PATCH_CLASS and new in PATCH_CLASS


def stale_word_harmless(variant: Variant, slot: Slot, word: Insn) -> bool:
    """Whether a CPU that may still fetch ``word``, replaced in ``slot`` with no isync since, can
    never be led by running it to a tracer ``bl`` with r0 not holding LR, whatever the site's
    other words are now or become in later plans. Harmful: the site's ``bl`` itself, a ``nop`` in
    A (r0 stays unset on the way to B), and a ``b .+8`` in A that lands on B (gcc 5's layout).
    Harmless: ``mflr`` (sets r0), ``b .+8`` past B, a ``nop`` in B, gcc 5's ``std`` or ``nop`` in
    S (neither changes r0 nor branches), and ool's entry words (``b stub`` enters a stub that runs
    ``mflr`` first). The end of a plan needs an isync only for a harmful one: the planner and the
    checker (``stale-after-plan``) both ask here."""
    if word is Insn.CALL:
        return False
    if slot is not Slot.A:
        return True
    if word is Insn.NOP:
        return False
    a = LAYOUTS[variant].offset(Slot.A)
    assert a is not None  # a slot the write names is one the layout has (Plan validates it)
    return word is not Insn.B8 or a + ppc.branch_offset(ppc.B_PLUS_8) > 0  # B is at offset 0


class Barrier(enum.Enum):
    """What separates two stages of a plan."""

    ORDER = "order"  # no barrier: the earlier stage's writes land first (one patcher, program order)
    RCU_TASKS = "synchronize_rcu_tasks"  # every task has left A..B since the earlier stage
    ISYNC_RCU_TASKS = "isync+synchronize_rcu_tasks"  # IPI isync on every CPU, then synchronize_rcu_tasks


class SiteRequest(NamedTuple):
    variant: Variant
    current: SiteState
    target: SiteState


class Write(NamedTuple):
    """One compare-and-swap of a 4-byte slot: ``site`` indexes the plan's ``sites``."""

    site: int
    slot: Slot
    old: Insn
    new: Insn


_E = TypeVar("_E", bound=enum.Enum)

FORMAT: Final = "mcountrw-plan"
VERSION: Final = 1

# Tuples, not sets: membership by identity, so validating 67,000 writes hashes no enum members
# (Enum.__hash__ is a Python-level call).
_A_WORDS: Final = (Insn.MFLR, Insn.NOP, Insn.B8)
_B_WORDS: Final = (Insn.NOP, Insn.CALL)
_OOL_WORDS: Final = (Insn.NOP, Insn.STUB)
_S_WORDS: Final = (Insn.STD, Insn.NOP)


def _slot_words(variant: Variant, slot: Slot) -> tuple[Insn, ...]:
    if slot is Slot.A:
        return _A_WORDS
    if slot is Slot.B:
        return _OOL_WORDS if LAYOUTS[variant].stub else _B_WORDS
    return _S_WORDS


@dataclass(frozen=True, slots=True)
class Plan:
    """Stages of writes; the writes of one stage may land in any order.

    ``barriers[i]`` separates ``stages[i]`` from ``stages[i + 1]``; ``settle`` (if not None) runs
    after the last stage so that the next plan's precondition holds (see the module docstring).
    ``route``/``cmodx``/``stale_fetch`` record what the plan was made for; ``cmodx`` and
    ``stale_fetch`` mean nothing when ``runtime`` is False (an offline file rewrite).
    """

    sites: tuple[SiteRequest, ...]
    stages: tuple[tuple[Write, ...], ...]
    barriers: tuple[Barrier, ...]
    settle: Barrier | None
    route: Route
    cmodx: Cmodx
    runtime: bool
    stale_fetch: bool = False
    # A plan for the sites of one image (`plan --image`): each site's Place, the image's name, and
    # the tracer entry its bl words call (--caller; check-plan holds every site's bl to it), which,
    # as cmodx offline, means nothing without places.
    places: tuple[Place, ...] | None = None
    image: str | None = None
    caller: Caller = Caller.FTRACE_CALLER

    def __post_init__(self) -> None:
        _validate(self)

    @property
    def num_writes(self) -> int:
        return sum(len(stage) for stage in self.stages)

    @property
    def num_barriers(self) -> int:
        """Barriers that wait for other CPUs (``order`` separators cost nothing and are not counted)."""
        return sum(b is not Barrier.ORDER for b in self.barriers) + (self.settle is not None)

    @property
    def routed(self) -> bool:
        """Whether the route means anything: it says how mflr goes back into slot A, and one-word
        (ool) sites have no A (their plans say route none, in JSON null)."""
        return any(LAYOUTS[r.variant].mflr_in_site for r in self.sites) or not self.sites

    def to_json(self) -> str:
        doc = {
            "format": FORMAT,
            "version": VERSION,
            "route": self.route.value if self.routed else None,
            "cmodx": self.cmodx.value,
            "mode": "runtime" if self.runtime else "offline",
            "stale_fetch": self.stale_fetch,
            "sites": [
                {"variant": r.variant.value, "current": r.current.value, "target": r.target.value} for r in self.sites
            ],
            "stages": [
                [{"site": w.site, "slot": w.slot.value, "old": w.old.value, "new": w.new.value} for w in stage]
                for stage in self.stages
            ],
            "barriers": [b.value for b in self.barriers],
            "settle": None if self.settle is None else self.settle.value,
            "notes": list(notes(self)),
        }
        if self.places is not None:
            _place_doc(self, doc)
        return json.dumps(doc, sort_keys=True, separators=(",", ":")) + "\n"  # compact: 158k sites is 25 MB, not 48

    def placed(self, w: Write) -> PlacedWrite:
        """``w`` as an address and two words (a plan with places only)."""
        assert self.places is not None
        return placed(self.places[w.site], self.sites[w.site].variant, w.slot, w.old, w.new)

    @classmethod
    def from_json(cls, text: str, source: str = "plan") -> Plan:
        """Parse and validate a plan file (a plan names at least one site); raises
        :class:`PlanFormatError` starting ``source:`` and saying what is wrong and where."""
        if not text.strip():  # e.g. `plan ... --format json | check-plan -` where plan found no route
            raise PlanFormatError(f"{source}: empty: no plan in it (check-plan reads `plan --format json`)")
        try:
            doc = json.loads(text, object_pairs_hook=_once_each)
        except (ValueError, RecursionError) as e:
            # plan's text output, which reads as a plan to a person but is not the format
            what = "not JSON (check-plan reads `plan --format json`)" if text.startswith("plan:") else "not JSON"
            raise PlanFormatError(f"{source}: {what}: {json_problem(e)}") from None
        except PlanFormatError as e:
            raise PlanFormatError(f"{source}: {e}") from None
        try:
            return cls._from_doc(doc)
        except PlanFormatError as e:
            raise PlanFormatError(f"{source}: {e}") from None

    @classmethod
    def _from_doc(cls, doc: Any) -> Plan:
        if not isinstance(doc, dict) or doc.get("format") != FORMAT:
            raise PlanFormatError(f'expected an object with "format": "{FORMAT}"')
        _known_keys(doc, _PLAN_KEYS, "plan")
        version = doc.get("version")
        if type(version) is not int or version != VERSION:  # not True, nor 1.0
            raise PlanFormatError(f"expected version {VERSION}, found {_quoted(version)}")
        mode = _field(doc, "mode", str, "plan")
        if mode not in ("runtime", "offline"):
            raise PlanFormatError(f'mode: expected "runtime" or "offline", found {_quoted(mode)}')
        image = _image(doc)
        caller = _caller(doc, image is not None)
        site_docs = _field(doc, "sites", list, "plan")
        sites = tuple(_site_request(s, f"sites[{i}]", image is not None) for i, s in enumerate(site_docs))
        if not sites:
            raise PlanFormatError("sites: empty (a plan names at least one site)")
        stale_fetch = _field(doc, "stale_fetch", bool, "plan")
        if stale_fetch and mode == "offline":  # as `plan --offline --stale-fetch` is refused
            raise PlanFormatError("stale_fetch: true is about CPUs running the code; an offline plan has none")
        if image is not None and mode == "offline":  # as `plan --image --offline` is refused
            raise PlanFormatError('mode: "offline" with an image: the plan of a vmlinux\'s sites is a runtime plan')
        stage_docs = [_list(stage, f"stages[{j}]") for j, stage in enumerate(_field(doc, "stages", list, "plan"))]
        stages = tuple(
            tuple(_write(w, f"stages[{j}][{k}]", image is not None) for k, w in enumerate(stage))
            for j, stage in enumerate(stage_docs)
        )
        if "settle" not in doc:  # null says there is none: a file to certify does not leave it unsaid
            raise PlanFormatError("plan: missing 'settle' (null when the plan has none)")
        settle = doc["settle"]
        _notes(doc)
        barriers = tuple(
            _enum(Barrier, b, f"barriers[{i}]") for i, b in enumerate(_field(doc, "barriers", list, "plan"))
        )
        cmodx = _enum(Cmodx, _field(doc, "cmodx", str, "plan"), "cmodx")
        if mode == "offline":
            _offline_waits_for_no_cpu(barriers, None if settle is None else _enum(Barrier, settle, "settle"), cmodx)
        p = cls(
            sites=sites,
            stages=stages,
            barriers=barriers,
            settle=None if settle is None else _enum(Barrier, settle, "settle"),
            route=_route(doc, sites),
            cmodx=cmodx,
            runtime=mode == "runtime",
            stale_fetch=stale_fetch,
            places=None if image is None else tuple(_place(s, f"sites[{i}]") for i, s in enumerate(site_docs)),
            image=image,
            caller=caller,
        )
        if p.routed:
            _route_followed(p)
        if p.places is not None:
            _places_apart(p)
            _calls_its_caller(p, "caller" in doc)
            _check_words(p, stage_docs)
        return p


# The helpers below raise PlanFormatError without the file's name; from_json puts it in front.


_PLAN_KEYS: Final = frozenset(
    (
        "format", "version", "route", "cmodx", "mode", "stale_fetch", "sites", "stages", "barriers", "settle",
        "notes", "image", "caller",
    )
)  # fmt: skip
_SITE_KEYS: Final = frozenset(("variant", "current", "target"))
_WRITE_KEYS: Final = frozenset(("site", "slot", "old", "new"))
# A plan with an "image" (`plan --image`): every site has its place, every write its words.
_PLACE_KEYS: Final = frozenset(("addr", "function", "call", "call_to"))
_WORD_KEYS: Final = frozenset(("addr", "old_word", "new_word"))
_QUOTED_MAX: Final = 60  # characters of a value an error line quotes (a 5 MB "slot" made a 5 MB line)


def _quoted(value: Any) -> str:
    """``value`` as an error line quotes it: its repr, cut short."""
    text = repr(value)
    return text if len(text) <= _QUOTED_MAX else f"{text[: _QUOTED_MAX - 5]}...{text[-2:]}"


def _known_keys(obj: Any, allowed: frozenset[str], where: str) -> None:
    """A plan is a file to be certified: a key check-plan does not know would be read by no one,
    so a misspelt one (``"setle"``) would pass for a plan that says what it does not."""
    if isinstance(obj, dict) and not obj.keys() <= allowed:
        key = next(k for k in obj if k not in allowed)
        raise PlanFormatError(f"{where}: unknown key {_quoted(key)} (known: {', '.join(sorted(allowed))})")


def _site_request(obj: Any, where: str, placed: bool = False) -> SiteRequest:
    _known_keys(obj, _SITE_KEYS | _PLACE_KEYS if placed else _SITE_KEYS, where)
    return SiteRequest(
        _enum(Variant, _field(obj, "variant", str, where), f"{where}.variant"),
        _enum(SiteState, _field(obj, "current", str, where), f"{where}.current"),
        _enum(SiteState, _field(obj, "target", str, where), f"{where}.target"),
    )


def _write(obj: Any, where: str, placed: bool = False) -> Write:
    _known_keys(obj, _WRITE_KEYS | _WORD_KEYS if placed else _WRITE_KEYS, where)
    return Write(
        _field(obj, "site", int, where),
        _enum(Slot, _field(obj, "slot", str, where), f"{where}.slot"),
        _enum(Insn, _field(obj, "old", str, where), f"{where}.old"),
        _enum(Insn, _field(obj, "new", str, where), f"{where}.new"),
    )


def _notes(doc: dict[str, Any]) -> None:
    """``notes`` (what ``plan`` says of the plan in words, :func:`notes`) is for people and may be
    left out, as files made before it are; given, it is a list of strings."""
    if "notes" in doc and not all(isinstance(n, str) for n in _list(doc["notes"], "notes")):
        raise PlanFormatError("notes: expected a list of strings")


def _image(doc: dict[str, Any]) -> str | None:
    """The image a plan's sites are in (``plan --image``), or None for a plan of abstract sites."""
    if "image" not in doc:
        return None
    image = _field(doc, "image", str, "plan")
    if not image:
        raise PlanFormatError("image: empty (a plan of an image's sites names the image)")
    return str(image)


def _caller(doc: dict[str, Any], placed: bool) -> Caller:
    """The tracer entry a plan of an image's sites calls from each ``bl`` (``plan --image
    --caller``); a file made before plans said it (no ``caller``) is an ``ftrace_caller`` plan, as
    plan --image then always made. A plan of abstract sites names none: its ``bl`` is a kind."""
    if "caller" not in doc:
        return Caller.FTRACE_CALLER
    if not placed:  # as `plan --caller` without --image is refused
        raise PlanFormatError("caller: a plan of abstract sites has no caller (it names an image's bl targets)")
    return _enum(Caller, _field(doc, "caller", str, "plan"), "caller")


def _place_doc(p: Plan, doc: dict[str, Any]) -> None:
    """Add ``p``'s places to its file's ``doc``: the image, its caller, each site's place, each write's words."""
    assert p.places is not None
    doc["image"] = p.image
    doc["caller"] = p.caller.value
    for site, place in zip(doc["sites"], p.places, strict=True):
        site.update(
            addr=hex_text(place.addr), function=place.function, call=hex_text(place.call), call_to=place.call_to
        )
    for stage_doc, stage in zip(doc["stages"], p.stages, strict=True):
        for write_doc, w in zip(stage_doc, stage, strict=True):
            at, old, new = p.placed(w)
            write_doc.update(addr=hex_text(at), old_word=hex_text(old), new_word=hex_text(new))


def _hex(obj: dict[str, Any], key: str, where: str, nullable: bool = False, bits: int = 64) -> int | None:
    """``obj[key]``: hex text of at most ``bits`` bits (``"0x60000000"``; JSON numbers lose bits
    past 2**53) or, where ``nullable``, null. At most ``bits // 4`` digits, as plan writes them: a
    word is 8 (``0x060000000`` is no word, though its value fits in one)."""
    if key not in obj:
        raise PlanFormatError(f"{where}: missing {key!r}")
    value = obj[key]
    if value is None and nullable:
        return None
    digits = value[2:] if isinstance(value, str) and value[:2] == "0x" else ""
    if 0 < len(digits) <= bits // 4 and all(c in string.hexdigits for c in digits):
        return int(digits, 16)
    kind = f"hex text (0x...) of at most {bits} bits ({bits // 4} digits)" + (" or null" if nullable else "")
    raise PlanFormatError(f"{where}.{key}: expected {kind}, found {_quoted(value)}")


def _place(obj: dict[str, Any], where: str) -> Place:
    """A site's place in a plan of an image's sites: a word-aligned call slot, and a branch target
    a branch there reaches (an I-form branch spans +-32 MiB), so that every word is one."""
    addr = _hex(obj, "addr", where)
    call = _hex(obj, "call", where, True)
    assert addr is not None
    if addr % ppc.INSN_SIZE or addr < ppc.INSN_SIZE * 2:
        raise PlanFormatError(f"{where}.addr: {addr:#x} is no call slot (a word-aligned address past a site's words)")
    if call is not None and not ppc.in_branch_range(call - addr):
        raise PlanFormatError(f"{where}.call: {call:#x} is beyond branch range of the call slot at {addr:#x}")
    return Place(addr, _field(obj, "function", str, where), call, _field(obj, "call_to", str, where))


def _places_apart(p: Plan) -> None:
    """No word is two sites': the checker proves each site alone (another's writes cannot
    affect it), which holds only of sites whose words are apart; two sites at one address would
    be two proofs of one word's writes, certified SAFE however they clash. Nor is an ool stub two
    sites': its last word branches back to the one site it serves (one stub per record,
    ``ftrace_init_ool_stub()``), so a second site's ``b stub`` would return into the first's function."""
    assert p.places is not None
    owner: dict[int, int] = {}
    stubs: dict[int, int] = {}
    for i, (req, place) in enumerate(zip(p.sites, p.places, strict=True)):
        if LAYOUTS[req.variant].stub and place.call is not None and stubs.setdefault(place.call, i) != i:
            raise PlanFormatError(
                f"sites[{i}].call: {place.call:#x} is the ool stub of site {stubs[place.call]}: a stub returns to "
                "the one site it serves"
            )
        for slot in LAYOUTS[req.variant].slots:
            at = slot_addr(place, req.variant, slot)
            if owner.setdefault(at, i) != i:
                raise PlanFormatError(
                    f"sites[{i}].addr: {place.addr:#x} puts its {slot.value} at {at:#x}, a word of site {owner[at]}: "
                    "check-plan proves each site alone, so no word may be two sites'"
                )


def _calls_its_caller(p: Plan, said: bool) -> None:
    """Every bl of a plan of an image's sites calls the plan's caller (``plan --image --caller``),
    in range, or the trampoline either reaches: a site whose ``call_to`` names the other tracer
    entry is another plan's (its ``call``, checked against the image only where that is there).
    ``said``: the file names its caller (one without is an ftrace_caller plan)."""
    assert p.places is not None
    for i, (req, place) in enumerate(zip(p.sites, p.places, strict=True)):
        if LAYOUTS[req.variant].stub or place.call is None or place.call_to in (p.caller.value, TRAMPOLINE_CALL):
            continue
        unsaid = "" if said else '; a file without "caller" is an ftrace_caller plan'
        raise PlanFormatError(
            f"sites[{i}].call_to: {_quoted(place.call_to)} is not the plan's caller, {p.caller.value} (each bl of a "
            f"plan --image plan calls its caller{unsaid})"
        )


def _check_words(p: Plan, stage_docs: list[list[Any]]) -> None:
    """Each write's words are exactly its kinds at its site's place: check-plan proves the
    symbolic writes, so a word that said anything else would be certified unread."""
    for j, (stage, docs) in enumerate(zip(p.stages, stage_docs, strict=True)):
        for k, (w, obj) in enumerate(zip(stage, docs, strict=True)):
            where = f"stages[{j}][{k}]"
            words = (_hex(obj, key, where, True, 32) for key in ("old_word", "new_word"))
            given = (_hex(obj, "addr", where), *words)
            for key, got, want in zip(("addr", "old_word", "new_word"), given, p.placed(w), strict=True):
                if got != want:
                    raise PlanFormatError(
                        f"{where}.{key}: {hex_text(got) or 'null'} is not the write's ({w.slot.value}: {w.old.value} "
                        f"-> {w.new.value} on site {w.site}: {hex_text(want) or 'null'}); check-plan proves the write"
                    )


def _once_each(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object whose keys are each given once. A plan is a file to be certified: of a key
    given twice Python's json keeps the last value and other readers the first, so check-plan
    could prove one plan while a reader (or another tool) sees the other."""
    doc = dict(pairs)
    if len(doc) != len(pairs):
        seen: set[str] = set()
        key = next(k for k, _ in pairs if k in seen or seen.add(k))  # type: ignore[func-returns-value]
        raise PlanFormatError(f"the key {_quoted(key)} is given twice in one object")
    return doc


def _offline_waits_for_no_cpu(barriers: tuple[Barrier, ...], settle: Barrier | None, cmodx: Cmodx) -> None:
    """An offline plan edits a file no CPU runs: ``plan --offline`` separates its stages by
    ``order`` alone, settles nothing and refuses ``--cmodx``, so it says 3.1 (the default). A
    barrier or ISA 3.0 in such a file would be certified while the offline check ignores it, as
    ``stale_fetch: true`` would (refused above)."""
    waits = [f"barriers[{i}]" for i, b in enumerate(barriers) if b is not Barrier.ORDER]
    if settle is not None:
        waits.append("settle")
    if waits:
        raise PlanFormatError(
            f'{waits[0]}: a barrier waits for CPUs running the code; an offline plan has none (stages are "order", '
            "settle is null)"
        )
    if cmodx is not Cmodx.V3_1:
        raise PlanFormatError(
            f'cmodx: "{cmodx.value}" is about CPUs running the code; an offline plan has none (it says "3.1")'
        )


def _route(doc: dict[str, Any], sites: tuple[SiteRequest, ...]) -> Route:
    """The plan's route; null only for a plan of one-word (ool) sites, which have no route, and
    reads as the default, which means nothing there. A route no site of the plan has (any route of
    ool sites, ``b8`` of gcc 5's) is refused: the plan would say ``route b8`` of writes no route
    chose, which ``plan`` never writes (:func:`check_route_decides`)."""
    if doc.get("route", "") is None:
        if any(LAYOUTS[s.variant].mflr_in_site for s in sites):  # as Plan.routed says it
            raise PlanFormatError("route: null is for a plan of ool sites only; two-slot sites take a route")
        return Route.MFLR_FIRST
    route = _enum(Route, _field(doc, "route", str, "plan"), "route")
    reason = route_rejection([s.variant for s in sites], route)
    if reason is not None:
        null = "" if any(LAYOUTS[s.variant].mflr_in_site for s in sites) else "; a plan of them says route null"
        raise PlanFormatError(f'route: "{route.value}": {reason}{null}')
    return route


def _route_followed(p: Plan) -> None:
    """A plan file's route is the route its writes take: a write no plan of that route makes
    (``route: "mflr-first"`` over ``A: nop -> b+8`` on the way to enabled, ``route: "b8"`` over
    ``A: nop -> mflr``) is refused, as the planner's own rule (:func:`_route_allows`) says."""
    writes: list[list[tuple[int, int, Write]]] = [[] for _ in p.sites]
    for j, stage in enumerate(p.stages):
        for k, w in enumerate(stage):
            writes[w.site].append((j, k, w))
    seen: set[tuple[SiteRequest, tuple[tuple[Slot, Insn, Insn], ...], bool]] = set()
    last = None
    for i, (req, mine) in enumerate(zip(p.sites, writes, strict=True)):
        one_a_stage = len({j for j, _, _ in mine}) == len(mine)
        key = (req, tuple((w.slot, w.old, w.new) for _, _, w in mine), one_a_stage)
        if key == last:  # a plan's sites come in runs of alike ones: replay each kind once
            continue
        last = key
        if key not in seen:
            seen.add(key)
            _site_follows(p.route, i, req, mine)


def _site_follows(route: Route, site: int, req: SiteRequest, writes: list[tuple[int, int, Write]]) -> None:
    """Replay one site's writes while its words name a state and a stage lands one write on it;
    a write off that path (a CAS that would fail, a site made broken, two in one stage, landing in
    either order) is the checker's to report, with its trace."""
    if len({j for j, _, _ in writes}) != len(writes):
        return
    lay = LAYOUTS[req.variant]
    words = dict(zip(lay.state_slots, lay.words(req.current), strict=True))
    src = req.current
    for j, k, w in writes:
        if w.slot not in words:
            continue  # gcc 5's S: no state reads it
        if words[w.slot] is not w.old:
            return
        words[w.slot] = w.new
        dst = lay.state_of(tuple(words[s] for s in lay.state_slots))
        step = lay.transitions.get((src, dst))
        if step is None or src not in lay.states or dst not in lay.states:
            return
        if not _route_allows(route, req.variant, step, dst, req.target):
            raise PlanFormatError(
                f'route: "{route.value}": stages[{j}][{k}] writes {w.slot.value}: {w.old.value} -> {w.new.value} '
                f"on site {site} ({req.variant.value} {src.value} -> {dst.value} on the way to {req.target.value}), "
                f"which route {route.value} never does"
            )
        src = dst


def _field(obj: Any, key: str, kind: type, where: str) -> Any:
    """``obj[key]`` of type ``kind``; ``where`` names ``obj`` (``"plan"``: the top level, whose
    fields an error names alone, ``image: ...``, as every other error about them does)."""
    if not isinstance(obj, dict):
        raise PlanFormatError(f"{where}: expected an object, found {type(obj).__name__}")
    if key not in obj:
        raise PlanFormatError(f"{where}: missing {key!r}")
    value = obj[key]
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        name = key if where == "plan" else f"{where}.{key}"
        raise PlanFormatError(f"{name}: expected {kind.__name__}, found {_quoted(value)}")
    return value


def _list(value: Any, where: str) -> list[Any]:
    if not isinstance(value, list):
        raise PlanFormatError(f"{where}: expected a list, found {_quoted(value)}")
    return value


def _enum(kind: type[_E], value: Any, where: str) -> _E:
    try:
        return kind(value)
    except ValueError:
        allowed = ", ".join(repr(m.value) for m in kind)
        raise PlanFormatError(f"{where}: expected one of {allowed}, found {_quoted(value)}") from None


def _validate(p: Plan) -> None:
    """Structural checks only: whether the writes are safe, and whether each CAS will find its
    ``old`` word, is for :func:`rewriter.check.check` to say."""
    if len(p.barriers) != max(len(p.stages) - 1, 0):
        raise PlanFormatError(
            f"{len(p.stages)} stages need {max(len(p.stages) - 1, 0)} barriers, found {len(p.barriers)}"
        )
    if p.settle is Barrier.ORDER:
        raise PlanFormatError('settle: "order" is not a barrier; use null')
    if (p.places is None) != (p.image is None) or (p.places is not None and len(p.places) != len(p.sites)):
        raise PlanFormatError("a plan of an image's sites names the image and gives every site its place")
    for i, req in enumerate(p.sites):
        if i and req == p.sites[i - 1]:  # runs of equal requests: checked once
            continue
        if req.current is SiteState.UNKNOWN or req.target in (SiteState.UNKNOWN, SiteState.BROKEN):
            raise PlanFormatError(f"sites[{i}]: cannot plan {req.current.value} -> {req.target.value}")
        reason = state_rejection(req.variant, req.current) or state_rejection(req.variant, req.target)
        if reason is not None:
            raise PlanFormatError(f"sites[{i}]: {reason}")
    for j, stage in enumerate(p.stages):
        if not stage:
            raise PlanFormatError(f"stages[{j}] is empty")
        for k, w in enumerate(stage):
            _validate_write(p, w, f"stages[{j}][{k}]")


def _validate_write(p: Plan, w: Write, where: str) -> None:
    if not 0 <= w.site < len(p.sites):
        raise PlanFormatError(f"{where}: site {w.site} is not in sites (0..{len(p.sites) - 1})")
    variant = p.sites[w.site].variant
    if w.slot not in LAYOUTS[variant].slots:
        raise PlanFormatError(f"{where}: {variant.value} sites have no slot {w.slot.value}")
    if w.slot is Slot.S and (w.old, w.new) not in S_WRITES:
        raise PlanFormatError(f"{where}: slot S may only swap std <-> nop")
    words = _slot_words(variant, w.slot)
    if w.old is w.new or w.old not in words or w.new not in words:
        raise PlanFormatError(f"{where}: {w.old.value} -> {w.new.value} is not a write to slot {w.slot.value}")


# ---------------------------------------------------------------- planning one site


class _SitePath(NamedTuple):
    steps: tuple[Step, ...]
    barrier_before: tuple[bool, ...]  # one per step
    settle: bool

    @property
    def cost(self) -> tuple[int, int]:
        return (sum(self.barrier_before) + self.settle, len(self.steps))


def _stale_r0_possible(variant: Variant, state: SiteState) -> bool:
    """A task may be between A and B with r0 not holding LR: slot A reads ``nop``. Never in the ool
    layout, which has no slot A (its stub runs ``mflr r0`` right before its ``bl``)."""
    lay = LAYOUTS[variant]
    return lay.mflr_in_site and lay.words(state)[lay.state_slots.index(Slot.A)] is Insn.NOP


def _b(variant: Variant, state: SiteState) -> Insn:
    lay = LAYOUTS[variant]
    return lay.words(state)[lay.state_slots.index(Slot.B)]


def _route_allows(route: Route, variant: Variant, step: Step, dst: SiteState, target: SiteState) -> bool:
    if route is Route.MFLR_FIRST:
        # Piggin: no b+8 anywhere on the way (the start or the target may still be one).
        return dst is target or dst not in (SiteState.GUARDED, SiteState.ARMED)
    # Rao: never put mflr straight over a nop; go through b+8, and while the bl is still to come keep
    # the b+8 (guarded -> armed -> enabled) rather than turn it into mflr on the way.
    if step.slot is Slot.A and step.new is Insn.MFLR:
        return step.old is not Insn.NOP and (dst is target or _b(variant, dst) is Insn.CALL)
    return True


def _simple_paths(
    req: SiteRequest, route: Route, mflr_ok: bool
) -> Iterator[tuple[tuple[Step, ...], tuple[SiteState, ...]]]:
    """Every path of legal single writes from ``current`` to ``target`` visiting no state twice."""

    def walk(state: SiteState, steps: tuple[Step, ...], seen: tuple[SiteState, ...]) -> Iterator[Any]:
        if state is req.target:
            yield steps, seen
            return
        for dst, step in steps_from(req.variant, state).items():
            if dst in seen or not (mflr_ok or cmodx_3_0_allows(step.old, step.new)):
                continue
            if _route_allows(route, req.variant, step, dst, req.target):
                yield from walk(dst, (*steps, step), (*seen, dst))

    yield from walk(req.current, (), (req.current,))


def _cost_path(
    variant: Variant, steps: tuple[Step, ...], states: tuple[SiteState, ...], runtime: bool, stale_fetch: bool
) -> _SitePath:
    """Place the barriers a path needs (see :class:`states.Step` for the rule) and whether it must settle."""
    if not runtime:
        return _SitePath(steps, (False,) * len(steps), False)
    if stale_fetch:
        # Every write after the first waits for an isync; the last one too when a CPU could
        # still run the word it replaced to harm (a nop in A, the bl). Not after an enable (a CPU
        # still running the nop in B is untraced once more), nor any ool write.
        settle = bool(steps) and not stale_word_harmless(variant, steps[-1].slot, steps[-1].old)
        return _SitePath(steps, tuple(i > 0 for i in range(len(steps))), settle)
    dirty = _stale_r0_possible(variant, states[0])
    before = []
    for step, dst in zip(steps, states[1:], strict=True):
        needed = step.needs_barrier_before and dirty
        before.append(needed)
        if needed:
            dirty = False
        if _stale_r0_possible(variant, dst):
            dirty = True
    return _SitePath(steps, tuple(before), dirty and not _stale_r0_possible(variant, states[-1]))


def _plan_site(req: SiteRequest, route: Route, cmodx: Cmodx, runtime: bool, stale_fetch: bool) -> _SitePath:
    for state in (req.current, req.target):
        reason = state_rejection(req.variant, state)
        if reason is not None:
            raise PlanRejected(reason)
    if req.target is SiteState.BROKEN:
        raise PlanRejected(f"{req.variant.value}: broken (nop; bl) runs bl with r0 not holding LR; never a target")
    if not runtime:
        check_offline_target(req)
    if runtime and req.current is SiteState.BROKEN:
        raise PlanRejected(
            f"{req.variant.value}: the site is already broken (nop; bl): a CPU may be running bl with "
            f"a stale r0 right now and no runtime plan can undo that; {_repair_offline(req)}"
        )
    mflr_ok = not runtime or cmodx is Cmodx.V3_1
    paths = [
        _cost_path(req.variant, steps, states, runtime, stale_fetch)
        for steps, states in _simple_paths(req, route, mflr_ok)
    ]
    if paths:
        return min(paths, key=lambda p: p.cost)
    raise PlanRejected(_why_no_path(req, route, mflr_ok))


def _repair_offline(req: SiteRequest) -> str:
    """How to get a broken site to ``req.target``: offline, in one plan unless only the running
    kernel writes the target (then to the words it was built with, and the kernel takes it on)."""
    lay = LAYOUTS[req.variant]
    if lay.kernel_only(req.target):
        return f"repair the file offline to {lay.built.value}, and let the running kernel enable it"
    return "repair the file offline"


def _instead_of_cmodx_3_0(req: SiteRequest) -> str:
    """What to do instead, when --cmodx 3.0 leaves no runtime route: an offline rewrite, unless the
    target is one only the running kernel writes (:func:`check_offline_target`), or one with
    ``mflr r0`` in A: boot-time init writes that into the built words of a recorded site (a file
    that holds it there is refused by that init, so no file rewrite gets it), and a live enable
    leaves A alone."""
    lay = LAYOUTS[req.variant]
    if dict(zip(lay.state_slots, lay.words(req.target), strict=True)).get(Slot.A) is Insn.MFLR:
        return (
            f"reboot into a file whose site holds the words it was built with ({words_text(lay.words(lay.built))}): "
            f"the kernel's boot-time init makes a recorded site {lay.booted.value} (mflr r0 in A), and an enable "
            "at run time leaves A alone; or plan for --cmodx 3.1"
        )
    if lay.kernel_only(req.target):
        return f"plan for --cmodx 3.1 (no file rewrite writes {req.target.value} either: only the running kernel does)"
    if req.target is SiteState.NOPPED:
        # Only an unrecorded site stays nop; nop past boot: 6.1's init refuses it at a recorded
        # place, and 6.12's writes mflr r0 into it; so the offline way there drops the record.
        return (
            "rewrite the file offline with the site's record dropped (mcountrw nop --drop-records: a recorded "
            "site does not stay nop; nop past the kernel's boot-time init), or plan for --cmodx 3.1"
        )
    return "rewrite the file offline, or plan for --cmodx 3.1"


def _why_no_path(req: SiteRequest, route: Route, mflr_ok: bool) -> str:
    """Why ``route`` has no path for ``req``, and what would: the other route, ISA 3.1, or an
    offline rewrite. ``mflr_ok``: whether a write may put mflr into or take it out of slot A."""
    what = f"{req.variant.value} {req.current.value} -> {req.target.value}"
    other = Route.MFLR_FIRST if route is Route.B8 else Route.B8
    exists, other_exists = (any(_simple_paths(req, r, True)) for r in (route, other))
    other_legal = any(_simple_paths(req, other, mflr_ok))
    if route is Route.B8 and not exists and other_exists:
        why = state_rejection(req.variant, SiteState.GUARDED) or "the route would write mflr over a nop"
        fix = "use --route mflr-first" + ("" if other_legal else f", which writes mflr: {_instead_of_cmodx_3_0(req)}")
        return f"{what}: route b8 does not exist here: {why}; {fix}"
    if not mflr_ok and exists:
        if other_legal:
            return (
                f"{what}: route {route.value} writes mflr into or out of slot A while other CPUs may be "
                f"executing it, which ISA 3.0 does not allow (--cmodx 3.0); use --route {other.value}"
            )
        return (
            f"{what}: no legal runtime route under --cmodx 3.0: every route writes mflr into or out of "
            "slot A while other CPUs may be executing it, which ISA 3.0's rules for concurrent modification "
            f"and execution do not allow (ISA 3.1 does); {_instead_of_cmodx_3_0(req)}"
        )
    return f"{what}: no sequence of legal single-word writes leads there"


# ---------------------------------------------------------------- the global plan


def route_rejection(variants: Sequence[Variant], route: Route) -> str | None:
    """Why ``route`` is a route of none of these sites, or None: sites of one word only (ool)
    have no order to choose, and gcc 5's have no ``b8`` (their ``b .+8`` lands on the bl). A
    route that is none of the sites' would read as if it had been followed."""
    kinds = sorted(set(variants), key=lambda v: v.value)
    two_word = [v for v in kinds if LAYOUTS[v].mflr_in_site]
    if kinds and not two_word:
        return f"{kinds[0].value} sites are one word; there is no route to choose"
    if route is Route.B8 and two_word and all(SiteState.GUARDED not in LAYOUTS[v].states for v in two_word):
        return f"{two_word[0].value} sites have no b8 route: {LAYOUTS[two_word[0]].no_b8}"
    return None


def check_route(variants: Iterable[Variant], route: Route | None) -> None:
    """A route orders the writes of a two-word site (mflr slot and call slot); sites of one word
    only (ool) have no order to choose, and a ``--route`` that changed nothing would read as if it
    had been used: refused (``plan`` before planning, ``apply`` over the sites it selected). (``apply``
    keeps ``b8`` over gcc 5's sites, whose enable from nopped then says why it has no such route.)"""
    if route is None:
        return
    kinds = list(variants)
    if kinds and not any(LAYOUTS[v].mflr_in_site for v in kinds):
        raise ArgumentError(f"--route {route.value}: {route_rejection(kinds, route)}")


def check_route_decides(req: SiteRequest, route: Route | None, cmodx: Cmodx, runtime: bool, stale_fetch: bool) -> None:
    """``plan --route`` for one request: refused, as :func:`check_route` refuses it for ool, where
    it would not be the route the plan followed: ``b8`` for a site that has no such route (gcc 5's,
    where ``b .+8`` lands on the bl), and either route where both write the same (a disable, or
    ``disabled -> enabled``), since the plan would say ``route b8`` of writes no route chose. A
    request neither route can plan is left to the planner, which says why. (``apply`` selects many
    sites, and keeps a route that changes nothing for some of them.)"""
    if route is None:
        return
    check_route([req.variant], route)
    writes = []
    for candidate in Route:
        try:
            p = _plan_route([req], candidate, cmodx, runtime, stale_fetch)
        except PlanRejected:
            continue  # only one route gets there (it decides), or neither (the planner says why)
        writes.append((p.stages, p.barriers, p.settle))
    same = len(writes) == 2 and writes[0] == writes[1]
    what = f"{req.variant.value} {req.current.value} -> {req.target.value}"
    reason = route_rejection([req.variant], route)
    if reason is not None:  # b8 of a gcc-5 site (check_route refused one-word sites)
        # --route mflr-first would be refused too where the writes are the same: say what is accepted
        fix = f"leave --route out ({what} takes the same writes on every route)" if same else "use --route mflr-first"
        raise ArgumentError(f"--route b8: {reason}; {fix}")
    if same:
        raise ArgumentError(
            f"--route {route.value}: {what} takes the same writes on both routes; there is no route to choose"
        )


def plan(
    requests: Sequence[SiteRequest],
    route: Route | None = None,
    cmodx: Cmodx = Cmodx.V3_1,
    runtime: bool = True,
    stale_fetch: bool = False,
) -> Plan:
    """One plan for every site; raises :class:`NoRoute` naming the first site with no legal route.

    ``route=None`` picks the route with fewer writes (then fewer barriers; ``mflr-first`` on a tie).
    ``runtime=False`` plans an offline rewrite: nothing runs concurrently, so no barriers, no CMODX
    policy and no stale fetch, but writes are still ordered so that no site is ever ``broken``.
    """
    if route is None:
        route = _cheaper_route(requests, cmodx, runtime, stale_fetch)
    return _plan_route(requests, route, cmodx, runtime, stale_fetch)


def check_offline_target(req: SiteRequest) -> None:
    """Raise :class:`NoRoute` for an offline target that only the running kernel writes
    (``Layout.kernel_only``: a patchable or ool site calling the tracer). The state machine has a
    runtime route to it, but no file rewrite may write it (``rewrite`` refuses it), so the planner
    offers no offline plan to it, and check-plan finds such a plan unsafe (``kernel-only``)."""
    if LAYOUTS[req.variant].kernel_only(req.target):
        raise NoRoute(
            f"{req.variant.value} {req.current.value} -> {req.target.value}: no offline route: a site built as nops "
            "calls the tracer only when the running kernel enables it (its boot-time init accepts only the nops "
            "at a recorded place; docs/rewrite.md)"
        )


def _cheaper_route(requests: Sequence[SiteRequest], cmodx: Cmodx, runtime: bool, stale_fetch: bool) -> Route:
    """The route whose plan has fewer writes, then fewer barriers (``mflr-first`` on a tie).

    Costed on the distinct requests only: a plan's barriers depend on which requests occur, its
    writes on how often each does, so a whole kernel is priced without planning it twice."""
    counts: dict[SiteRequest, int] = {}
    run_start = 0
    for i in range(1, len(requests) + 1):  # count runs of equal requests: hash once per run
        if i == len(requests) or requests[i] != requests[run_start]:
            req = requests[run_start]
            counts[req] = counts.get(req, 0) + i - run_start
            run_start = i
    distinct = list(counts)
    costs: list[tuple[int, int, int, Route]] = []
    for order, candidate in enumerate((Route.MFLR_FIRST, Route.B8)):
        try:
            p = _plan_route(distinct, candidate, cmodx, runtime, stale_fetch)
        except PlanRejected:
            continue
        per_site = [0] * len(distinct)
        for stage in p.stages:
            for w in stage:
                per_site[w.site] += 1
        writes = sum(n * counts[req] for n, req in zip(per_site, distinct, strict=True))
        costs.append((writes, p.num_barriers, order, candidate))
    if not costs:
        # Neither route exists: plan the whole list so that the error names the real first site.
        _plan_route(requests, Route.MFLR_FIRST, cmodx, runtime, stale_fetch)
    return min(costs)[3]


def _plan_route(requests: Sequence[SiteRequest], route: Route, cmodx: Cmodx, runtime: bool, stale_fetch: bool) -> Plan:
    cache: dict[SiteRequest, _SitePath] = {}  # a kernel has ~40k sites but a handful of distinct requests
    paths: list[_SitePath] = []
    for i, req in enumerate(requests):
        if paths and req == requests[i - 1]:  # runs of equal requests: no hashing of enum members
            paths.append(paths[-1])
            continue
        if req not in cache:
            try:
                cache[req] = _plan_site(req, route, cmodx, runtime, stale_fetch)
            except PlanRejected as e:
                raise NoRoute(f"site {i}: {e}") from None
        paths.append(cache[req])

    # Segments are the stretches between barriers: the plan needs as many as the most demanding site.
    depth = max((sum(p.barrier_before) + 1 for p in paths if p.steps), default=0)
    placed: dict[tuple[int, int], list[Write]] = {}  # (segment, row within it) -> writes
    needs_settle = False
    for i, path in enumerate(paths):
        segment, row = 0, -1
        owed = sum(path.barrier_before)  # barriers this site still has to cross
        for step, before in zip(path.steps, path.barrier_before, strict=True):
            if before:
                segment, row, owed = segment + 1, 0, owed - 1
            elif row >= 0 and depth - 1 - segment > owed + path.settle:
                # A barrier the site does not need still orders its writes: ride on it instead of
                # adding an ordered row (e.g. a disable next to an enable finishes in two stages).
                segment, row = segment + 1, 0
            else:
                row += 1
            placed.setdefault((segment, row), []).append(Write(i, step.slot, step.old, step.new))
        # A site whose last write is not in the last segment is settled by the barrier after it.
        needs_settle = needs_settle or (path.settle and segment == depth - 1)

    barrier = Barrier.ISYNC_RCU_TASKS if stale_fetch else Barrier.RCU_TASKS
    stages: list[tuple[Write, ...]] = []
    barriers: list[Barrier] = []
    for segment, row in sorted(placed):
        if stages:
            barriers.append(barrier if row == 0 and runtime else Barrier.ORDER)
        stages.append(tuple(placed[(segment, row)]))
    return Plan(
        sites=tuple(requests),
        stages=tuple(stages),
        barriers=tuple(barriers),
        settle=barrier if needs_settle else None,
        route=route,
        cmodx=cmodx,
        runtime=runtime,
        stale_fetch=stale_fetch,
    )


# ---------------------------------------------------------------- text


def _ranges(indices: Sequence[int]) -> str:
    """``site 3`` or ``sites 0-2, 5``."""
    parts: list[str] = []
    start = prev = indices[0]
    for i in [*indices[1:], None]:
        if i is not None and i == prev + 1:
            prev = i
            continue
        parts.append(str(start) if start == prev else f"{start}-{prev}")
        if i is not None:
            start = prev = i
    return agreeing(len(indices), "site ", "sites ") + ", ".join(parts)


def _barrier_text(b: Barrier) -> str:
    if b is Barrier.ORDER:
        return "then, in order (no barrier):"
    if b is Barrier.RCU_TASKS:
        return "barrier: synchronize_rcu_tasks()"
    return "barrier: isync on every CPU (IPI), then synchronize_rcu_tasks()"


STOCK_KERNEL_NOTE: Final = (
    "note: proven for writers that all follow checked plans: a stock kernel's ftrace enables a site by "
    "writing B alone (6.1's ftrace_make_call(), 6.12's ftrace_replace_code(): each compares only B), which "
    "from nopped is the 2019 race; a runtime "
    "nopped site needs a kernel whose enable path follows such a plan (the 2019 fix), or no record"
)
"""Said by ``plan`` and ``check-plan`` of a runtime plan that leaves a site ``nopped``: the model
checks the plan's own writes, and the next ones only as far as they follow a plan too."""


def leaves_nopped(p: Plan) -> bool:
    """Whether a runtime plan leaves a site ``nopped``, where only a plan-following enable is safe
    (:data:`STOCK_KERNEL_NOTE`)."""
    return p.runtime and any(req.target is SiteState.NOPPED for req in p.sites)


def notes(p: Plan) -> tuple[str, ...]:
    """What a plan's text says under it, and its JSON in ``notes`` (``plan --format json`` lost it)."""
    return (STOCK_KERNEL_NOTE,) if leaves_nopped(p) else ()


def _placed_lines(p: Plan, writes: Sequence[Write]) -> list[str]:
    """Each of ``writes`` of a plan with places, as its address, words and function; a branch
    whose target the image does not decide says what decides it."""
    if p.places is None:
        return []
    lines = []
    for w in writes:
        at, old, new = p.placed(w)
        place = p.places[w.site]
        words = f"{_word_text(old, place)} -> {_word_text(new, place)}"
        to = f" (-> {place.call_to})" if new is not None and w.new in (Insn.CALL, Insn.STUB) else ""
        lines.append(f"    {at:#x}: {words}  site {w.site} {printable(place.function)}{to}")
    return lines


def _word_text(word: int | None, place: Place) -> str:
    return f"{word:08x}" if word is not None else f"(not decided by the image: {place.call_to})"


def render_text(p: Plan) -> str:
    """A readable plan: what each stage writes, grouped by (slot, old, new), and what separates them."""
    mode = "runtime" if p.runtime else "offline rewrite (nothing executes concurrently)"
    policy = f", cmodx {p.cmodx.value}{', stale fetch' if p.stale_fetch else ''}" if p.runtime else ""
    requests: dict[SiteRequest, list[int]] = {}
    for i, req in enumerate(p.sites):
        requests.setdefault(req, []).append(i)
    route = p.route.value if p.routed else "none (one-word sites)"
    lines = [
        f"plan: {counted(len(p.sites), 'site')}, route {route}{policy}, {mode}",
        f"  {counted(p.num_writes, 'write')} in {counted(len(p.stages), 'stage')}, "
        f"{counted(p.num_barriers, 'barrier')}",
    ]
    for req, idx in requests.items():
        lines.append(f"  {req.variant.value} {req.current.value} -> {req.target.value}: {_ranges(idx)}")
    if p.image is not None:
        lines.append(f"  the sites of {printable(p.image)}, each write as its address: old word -> new word")
        if p.caller is not Caller.FTRACE_CALLER:  # an ool plan's words are the same: say whose plan it is
            lines.append(f"  caller {p.caller.value}: the tracer entry each enabled bl calls (an ool stub's too)")
    if not p.stages:
        lines.append("nothing to write: every site is already in its target state")
    for j, stage in enumerate(p.stages):
        if j:
            lines.append(_barrier_text(p.barriers[j - 1]))
        lines.append(f"stage {j + 1}" + (" (writes land in any order):" if len(stage) > 1 else ":"))
        groups: dict[tuple[Slot, Insn, Insn], list[int]] = {}
        for w in stage:
            groups.setdefault((w.slot, w.old, w.new), []).append(w.site)
        for (slot, old, new), sites in groups.items():
            lines.append(f"  {slot.value}: {old.value:>4} -> {new.value:<4}  {_ranges(sorted(sites))}")
            lines.extend(_placed_lines(p, [w for w in stage if (w.slot, w.old, w.new) == (slot, old, new)]))
    if p.settle is not None:
        lines.append(_barrier_text(p.settle).replace("barrier:", "settle:", 1))
    lines.extend(notes(p))
    return "\n".join(lines) + "\n"
