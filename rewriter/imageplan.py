"""A runtime plan for the selected functions of one vmlinux: ``mcountrw plan --image``.

The planner (:mod:`rewriter.plan`) moves abstract sites between states. A kernel developer asks a
concrete question: for these functions of this vmlinux, which words at which addresses, in which
stages, and is it safe? This module answers it from the scan: each selected site starts in the
state boot init leaves it in (``Site.boot_state``, the scan's ``file->boot``), the sites are
grouped by (variant, current, target), planned as the abstract requests they are, and the plan
carries each site's :class:`~rewriter.siteplaces.Place`, from which every write is an address and
two words. ``check-plan`` checks such a plan as its abstract requests (the words are only their
kinds at those places, and it re-derives them) and, when the image is there, holds each site's
place, variant and boot state to it (:func:`hold_to_image`, with the code that made them).

What the image decides, and what it does not:

* an mprofile or patchable site's ``bl``: the kernel's enable writes ``bl ftrace_caller``
  (``Layout.tracer``) when that is in branch range of the call slot, else a ``bl`` to the first
  trampoline in range (``find_ftrace_tramp()``: ``ftrace_tramp_text`` once init text is freed);
  an ops that saves regs (kprobes, livepatch) makes it ``ftrace_regs_caller`` instead, the same
  state with another target, which the image does not decide: ``caller`` says (6.1's
  ftrace_make_call(), 6.12's and 7.2's ftrace_get_call_inst(): in range, else the same trampoline);
* on ool the entry is ``b stub`` for either caller; the kernel repoints the stub's own ``bl`` for
  an ops that saves regs, a word the plan does not write, and says so (:func:`_stub_calls`);
* an ool site's ``b stub``: the stub ``ftrace_init_ool_stub()`` gives its record (``Site.call_target``);
  the stub's own words are boot init's, never the plan's;
* a module's addresses, and the trampoline its ``bl`` reaches, exist only once it is loaded: not
  decided by the file, so ``--image`` reads a vmlinux;
* ``.init.text`` is gone at run time: ``ftrace_free_init_mem()`` (init/main.c, after the initcalls)
  drops its records when the kernel frees it, so its sites are left out, as are sites ftrace cannot
  trace after boot (the scan says why, :mod:`rewriter.boot`: ftrace off for the whole boot too);
* a rewritten vmlinux is read with the patch log beside it, as ``scan`` reads it: a site whose
  record a rewrite dropped is known only to the log, and is left out by name (no record), not lost.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Final, NamedTuple

from rewriter import ppc
from rewriter.boot import Boot, Untraceable, boot_of, they_text, untraceable
from rewriter.elf.image import Image, Kind
from rewriter.elf.symbols import code_addrs
from rewriter.errors import ArgumentError, NothingToDo, PlanFormatError
from rewriter.files import LogAside, ScanHints, check_something_to_do, log_set_aside, selection_text, unrecorded_hint
from rewriter.generations import LAYOUTS, TRAMPOLINE, TRAMPOLINE_CALL, Caller, Generation
from rewriter.log import default_log_path, logged, logs_at
from rewriter.plan import Cmodx, Plan, Route, SiteRequest, plan
from rewriter.prose import and_more, counted, printable, with_article
from rewriter.rewrite import Selection
from rewriter.siteplaces import Place
from rewriter.sites import Scan, Site, scan
from rewriter.states import Insn, SiteState

# The section whose code the kernel frees after the initcalls, and ftrace's records with it.
FREED_AFTER_BOOT: Final = ".init.text"
NO_SLOT: Final = "has no ftrace call slot there"


class ImagePlan(NamedTuple):
    plan: Plan
    left_out: tuple[str, ...]  # what of the selection the plan leaves out, and why, one line each
    unwritten: tuple[str, ...] = ()  # words the kernel writes besides the plan's, one line each


def plan_image(
    path: Path,
    selection: Selection,
    target: SiteState,
    route: Route | None = None,
    cmodx: Cmodx = Cmodx.V3_1,
    stale_fetch: bool = False,
    caller: Caller | None = None,
) -> ImagePlan:
    """The runtime plan that moves the sites ``selection`` takes in the vmlinux at ``path`` from
    their state after boot to ``target``. Raises :class:`ArgumentError` for a file that is no
    vmlinux, :class:`NothingToDo` when the selection takes no site a runtime plan writes, and
    :class:`~rewriter.errors.NoRoute` when a site has no legal route. ``caller``: the tracer entry
    each enabled ``bl`` calls (:class:`~rewriter.generations.Caller`; None: not given,
    ``ftrace_caller``); given for a plan that writes no branch to the tracer, it is refused
    (:func:`_check_caller_used`)."""
    _check_caller_used(target, caller)  # before the image is read: a bad pair of options, whatever the image
    image, found, boot, ignored = _scan_vmlinux(path)
    selection = selection.named_in(image, found.listed)
    unread = _check_selection(image, found, selection, ignored)
    kept, left_out = _plannable(selection.select(found.sites), boot)
    if unread is not None:  # the sites only that log knows are not among those selected: say so first
        left_out.insert(0, unread)
    if not kept:
        raise NothingToDo(
            f"{path}: {selection_text(selection)}: none of the sites it selects is one the running kernel "
            f"has: {'; '.join(left_out)}"
        )
    kept.sort(key=lambda s: (s.variant.value, _boot(s).value, s.addr or 0))
    requests = [SiteRequest(s.variant, _boot(s), target) for s in kept]
    p = plan(requests, route, cmodx, runtime=True, stale_fetch=stale_fetch)  # NoRoute: 1
    caller = caller or Caller.FTRACE_CALLER
    targets = _targets(image)
    places = tuple(_place(found, s, targets, caller) for s in kept)
    placed = replace(p, places=places, image=str(path), caller=caller)
    return ImagePlan(placed, tuple(left_out), _stub_calls(kept, caller))


def _check_caller_used(target: SiteState, caller: Caller | None) -> None:
    """``--caller`` names the target of the branches to the tracer a plan writes: of a plan with
    none it would be recorded, and read, as if it had chosen words. A ``--to`` whose words hold no
    branch to the tracer in any layout (nopped, guarded, disabled) never writes one, and boot
    leaves no site it keeps calling the tracer, so no such plan finds one to take away either:
    refused before the image is read (a selection that matches nothing said "nothing to do",
    exit 1, first), as the option pairs that never change a plan are (``--offline --cmodx``,
    ``--route`` over one-word sites), where a ``--route`` that leaves some selected sites' writes
    as they were is kept (``apply`` keeps it)."""
    branches = (Insn.CALL, Insn.STUB)
    if caller is None or any(w in branches for lay in LAYOUTS.values() for w in lay.states.get(target, ())):
        return
    raise ArgumentError(
        f"--caller {caller.value}: --to {target.value} writes no branch to the tracer; there is no caller to choose "
        "(leave --caller out)"
    )


def _check_selection(image: Image, found: Scan, selection: Selection, ignored: str | None) -> str | None:
    """Raise :class:`NothingToDo` for a selection that matches no site of the vmlinux; return
    what to say first of a rewritten one whose patch log is not read (``ignored``: the warning for
    one beside it that does not describe it; else a zeroed record says a rewrite dropped sites
    whose log is not there): the sites only that log knows are not selected. A selection that
    matches nothing says it too, in plan's words: plan names no log (no --input-log), and a log
    there but not read is none to undo with."""
    check_something_to_do(image, found, selection, ScanHints(), *_log_hint(image, ignored))
    if ignored is not None:
        return f"{ignored} (the sites it names whose records a rewrite dropped are not selected)"
    unrecorded = unrecorded_hint(image, found, found.sites, *_log_hint(image, None))
    return f"{image.path}: {unrecorded[0]}: the sites only it names are not selected" if unrecorded else None


def _log_hint(image: Image, ignored: str | None) -> tuple[LogAside | None, str]:
    """Why the log beside a rewritten vmlinux is not read (``ignored``: there, but it does not
    describe the file), and where plan --image and check-plan look for it (they name no log)."""
    aside = log_set_aside(image) if ignored is not None else None
    return aside, f"(plan --image and check-plan look for it beside the file: {default_log_path(image.path).name})"


def _stub_calls(sites: Sequence[Site], caller: Caller) -> tuple[str, ...]:
    """What the kernel writes for ``caller`` besides the plan's words: an ool site's entry is ``b
    stub`` for either caller, and the stub's own ``bl`` (its second word, boot init's
    ``bl ftrace_caller``) is what ftrace_replace_code() repoints first (7.2: MAKE_CALL writes the
    stub's word, then the entry's; ftrace_rec_update_ops() writes the stub's ops slot too, for
    either caller, under DYNAMIC_FTRACE_WITH_CALL_OPS)."""
    ool = [s for s in sites if LAYOUTS[s.variant].generation is Generation.OOL]
    if caller is Caller.FTRACE_CALLER or not ool:
        return ()
    return (
        f"--caller {caller.value}: the entry word of {counted(len(ool), 'ool site')} is the same b to its stub as "
        f"for ftrace_caller; the kernel also rewrites each stub's bl (its second word) to {caller.value}, a word "
        "of the stub this plan does not write",
    )


def _scan_vmlinux(path: Path) -> tuple[Image, Scan, Boot, str | None]:
    """The vmlinux at ``path``, read and scanned once, with the sites only its patch log knows
    (:func:`_with_its_log`), what its boot makes of them, and why the log beside it was not read
    (None: read, or none there); raises :class:`ArgumentError` for a file that is no vmlinux, or
    one without the symbols a plan of its sites names."""
    image = Image.load(path)
    if image.kind is not Kind.VMLINUX:
        raise ArgumentError(
            f"{path}: {with_article(image.kind.value)}, not a vmlinux: plan --image plans the sites of a running "
            "kernel's vmlinux (a module's addresses, and where its enabled branch goes, a trampoline or an ool "
            "stub, are decided when it is loaded)"
        )
    if image.symbols is None:  # the scan would ask for --mcount-addr or --generation, which plan has not
        raise ArgumentError(
            f"{path}: stripped (no .symtab): plan --image needs the vmlinux's symbols, the function names --only "
            "selects and the ftrace_caller each bl is encoded to (Debian ships them in its -dbg package's vmlinux)"
        )
    found, ignored = _with_its_log(image, scan(image))
    return image, found, boot_of(found), ignored


def _with_its_log(image: Image, found: Scan) -> tuple[Scan, str | None]:
    """``found`` with the sites the patch log beside the file knows (a rewrite that dropped a
    site's record left nothing in the image to find it by): so that a rewritten vmlinux's
    dropped sites are selected and said to be left out, not silently missing. A log beside it
    that does not describe the file (another file's, edited, truncated) is not read: the
    warning ``scan`` gives for it is returned (:func:`rewriter.log.logs_at`, as scan finds it)."""
    found_logs = logs_at([(image.path, default_log_path(image.path))])  # scan's own way to the log beside a file
    return logged(found, found_logs.logs), next(iter(found_logs.warnings), None)


def _boot(site: Site) -> SiteState:
    assert site.boot_state is not None  # _plannable kept only sites boot init accepts
    return site.boot_state


def _plannable(sites: Sequence[Site], boot: Boot) -> tuple[list[Site], list[str]]:
    """The sites a runtime plan writes (in the running kernel's text, traceable after boot: what
    ``mcountrw scan`` says of the image, its patch log's sites and ftrace off for the boot too),
    and one line per kind of site it leaves out."""
    freed = [s for s in sites if s.section == FREED_AFTER_BOOT]
    why: dict[Untraceable, list[Site]] = {}
    kept = []
    for s in sites:
        reason = None if s.section == FREED_AFTER_BOOT else untraceable(s, boot)
        if reason is not None:
            why.setdefault(reason, []).append(s)
        elif s.section != FREED_AFTER_BOOT:
            kept.append(s)
    left_out = []
    if freed:
        left_out.append(
            f"{counted(len(freed), 'selected site')} in {FREED_AFTER_BOOT} left out: the kernel frees it after the "
            f"initcalls, and ftrace_free_init_mem() drops its records ({_names(freed)})"
        )
    for reason, out in why.items():
        # scan's words, as its notes say them (boot.SAID); for ftrace off they point "above", at its
        # report's verdict line: say the verdict here
        said = f"ftrace is off for the whole boot: {boot.ftrace_off}" if reason is Untraceable.FTRACE_OFF else ""
        left_out.append(
            f"{counted(len(out), 'selected site')} left out ({reason.value}): {said or they_text(reason, len(out))} "
            f"({_names(out)})"
        )
    return kept, left_out


def _names(sites: Sequence[Site]) -> str:
    """Up to three of the sites' functions, and how many more; the sites in no function (weak
    bodies, listed by address) are counted as sites, not as functions."""
    named = sorted({s.function for s in sites if s.function})
    unnamed = len({s.addr for s in sites if not s.function})
    text = ", ".join(named[:3]) + and_more(max(len(named) - 3, 0), "function")
    nowhere = f"{counted(unnamed, 'site')} in no function" if unnamed else ""
    return "; ".join(part for part in (text, nowhere) if part)


class _Targets(NamedTuple):
    """Where an image's enabled branches may go: each tracer entry's addresses, by name, and the
    trampoline's."""

    entries: Mapping[str, Sequence[int]]
    trampolines: Sequence[int]


def _targets(image: Image) -> _Targets:
    entries = {c.value: code_addrs(image, [c.value], local_entries=True) for c in Caller}
    return _Targets(entries, code_addrs(image, [TRAMPOLINE], local_entries=True))


def _place(found: Scan, site: Site, targets: _Targets, caller: Caller) -> Place:
    """``site``'s place, as plan --image writes it and check-plan holds a plan to it: its address,
    its name, and where its enabled branch goes for ``caller``."""
    assert site.addr is not None  # a vmlinux's sites have addresses
    name = found.name_of(site) or f"{site.addr:#x}"
    tracer = LAYOUTS[site.variant].tracer if caller is Caller.FTRACE_CALLER else caller.value
    if LAYOUTS[site.variant].generation is Generation.OOL:
        stub = f"its ool stub, in {site.stub}" if site.call_target is not None else "no ool stub"
        return Place(site.addr, name, site.call_target, stub)
    return Place(site.addr, name, *_tracer_call(site.addr, tracer, targets.entries[tracer], targets.trampolines))


def _tracer_call(addr: int, tracer: str, entry: Sequence[int], trampolines: Sequence[int]) -> tuple[int | None, str]:
    """Where the kernel's enable points the ``bl`` at ``addr``: the tracer entry in range, else
    the first trampoline in range (ftrace_get_call_inst(), 6.1's ftrace_make_call())."""
    if len(entry) != 1:
        return None, f"{tracer} is not one symbol of the image (stripped?)"
    if ppc.in_branch_range(entry[0] - addr):
        return entry[0], tracer
    for tramp in trampolines:
        if ppc.in_branch_range(tramp - addr):
            return tramp, TRAMPOLINE_CALL
    return None, f"neither {tracer} nor {TRAMPOLINE} is within branch range"


def hold_to_image(p: Plan, path: Path) -> None:
    """Hold a plan of an image's sites (``plan --image``) to the vmlinux at ``path``: each site is
    a call slot of it that plan --image would plan, of the site's variant, in the state boot init
    leaves it in, with the place plan --image gives it (function, call, call_to) for the plan's
    :class:`~rewriter.generations.Caller` (``caller``: a plan made for one caller is not the other's,
    though an image's sites may be traced by both kinds of ops at once). The words the plan file
    gives are re-derived from the places when it is read (``rewriter.plan``); this checks the
    places themselves. A plan of an image's sites starts from boot's states, as plan
    --image writes it: a state a plan-following step left since is a plan from that state, which
    the checker proves as an abstract one. Raises :class:`PlanFormatError` naming the first site
    the image disagrees with, and what the image says."""
    assert p.places is not None  # a plan that names an image gives every site its place
    image, found, boot, ignored = _scan_vmlinux(path)  # a site only an unread log knows: "no call slot there"
    slots = {s.addr: s for s in found.sites if s.addr is not None}
    targets = _targets(image)
    for i, (req, place) in enumerate(zip(p.sites, p.places, strict=True)):
        mismatch = _mismatch(req, place, slots.get(place.addr), (found, boot), (targets, p.caller))
        if mismatch == NO_SLOT:  # a rewritten file whose log is not read: its dropped sites are in no table
            hints = unrecorded_hint(image, found, found.sites, *_log_hint(image, ignored))
            mismatch += "".join(f" ({h})" for h in hints)
        if mismatch is not None:
            raise PlanFormatError(f"sites[{i}] ({printable(place.function)} at {place.addr:#x}): {path} {mismatch}")


def _mismatch(
    req: SiteRequest, place: Place, site: Site | None, scanned: tuple[Scan, Boot], calls: tuple[_Targets, Caller]
) -> str | None:
    """What the image says of a plan's site, where that is not what the plan says; None if it agrees."""
    found, boot = scanned
    targets, caller = calls
    if site is None:
        return NO_SLOT
    kept, left_out = _plannable([site], boot)
    if not kept:
        return f"says plan --image leaves it out: {left_out[0]}"
    if site.variant is not req.variant:
        return f"says its variant is {site.variant.value}, not {req.variant.value}"
    if _boot(site) is not req.current:
        return (
            f"says boot leaves it {_boot(site).value}, not {req.current.value} (a plan of an image's sites starts "
            "from the states boot leaves, as plan --image writes it)"
        )
    # the plan's caller decides every site's bl (a trampoline is both callers'; an ool b stub too)
    want = _place(found, site, targets, caller)
    for key, got, expected in zip(Place._fields, place, want, strict=True):
        if got != expected:
            branch = f" (for the plan's caller, {caller.value})" if key in ("call", "call_to") else ""
            return f"says its {key} is {_shown(expected)}, not {_shown(got)}{branch}"
    return None


def _shown(value: int | str | None) -> str:
    """A place's field as a refusal quotes it: an address as hex text, a name as printable text."""
    if value is None:
        return "null (not decided by the image)"
    return f"{value:#x}" if isinstance(value, int) else printable(value)
