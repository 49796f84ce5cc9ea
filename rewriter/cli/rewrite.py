"""`mcountrw apply`, `nop`, `undo`, `verify`: rewrite files, with a patch log, exact undo and verify."""

from __future__ import annotations

import enum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, NamedTuple

import typer

from rewriter.cli.common import CallSlot, GenerationOption, McountAddr, call_slot, check_mcount_addr, output_file
from rewriter.cli.exits import findings_if
from rewriter.errors import ArgumentError, LogError, NothingToDo
from rewriter.generations import Generation
from rewriter.lock import above, hold
from rewriter.plan import Route
from rewriter.prose import agreeing, counted, printable

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from rewriter.files import ApplyResult, ScanHints, Undone
    from rewriter.log import Base
    from rewriter.rewrite import Options, Rewrite, Selection, StubCount
    from rewriter.sites import Scan, Site


def _say(line: str, err: bool = True) -> None:
    """Print one line of a rewrite's account, its paths escaped (``prose.printable``): a newline
    in a file's name must not split the line."""
    typer.echo(printable(line), err=err)


class Target(enum.Enum):
    """The states a file rewrite moves sites to (the others are run-time states, or never a goal)."""

    ENABLED = "enabled"
    DISABLED = "disabled"
    NOPPED = "nopped"


Image_ = Annotated[
    Path, typer.Argument(dir_okay=False, help="vmlinux, module (.ko[.xz|.gz|.zst]), object or executable")
]
Output = Annotated[
    Path | None, typer.Option("-o", "--output", parser=output_file, help="where to write the rewritten file")
]
UndoOutput = Annotated[
    Path | None,
    typer.Option("-o", "--output", parser=output_file, help="where to write the file as it was before the rewrite"),
]
# The selection options combine as rewriter.rewrite.Selection does: --only, --section and --addr
# add up (a site any one of them matches is selected; none of them given: every site), and
# --exclude takes sites out of that. Each help says so, since `--section S --only F` reads as "F in S".
Only = Annotated[
    list[str] | None,
    typer.Option(
        "--only",
        help="function name glob to select (repeatable; any of a function's names, its aliases too; a site in "
        "no function: the name ftrace lists it under); --only, "
        "--section and --addr add up: a site any one of them matches is selected",
    ),
]
Exclude = Annotated[
    list[str] | None,
    typer.Option(
        "--exclude",
        help="function name glob to leave alone (repeatable; any of a function's names): taken out of what "
        "--only, --section and --addr select (or of every site)",
    ),
]
Section = Annotated[
    list[str] | None,
    typer.Option(
        "--section", help="select the sites of this section (repeatable); adds to --only and --addr, never narrows them"
    ),
]
Addr = Annotated[
    list[CallSlot] | None,
    typer.Option(
        "--addr",
        parser=call_slot,
        metavar="ADDRESS|SECTION+0xOFF",
        help="select the site whose call slot is here, as scan shows it: an address, or SECTION+0xOFF in a module "
        "or object (repeatable); adds to --only and --section",
    ),
]
Route_ = Annotated[Route | None, typer.Option("--route", help="default: the route with fewer writes")]
Log_ = Annotated[Path | None, typer.Option("--log", help="patch log (default OUT.mcountrw.jsonl)")]
InputLog = Annotated[
    Path | None,
    typer.Option(
        "--input-log",
        help="IMAGE's own patch log: its sites, nopped and unrecorded by an earlier rewrite, can be selected and "
        "brought back (default: IMAGE.mcountrw.jsonl beside it, when its output is IMAGE)",
    ),
]
Stages = Annotated[Path | None, typer.Option("--stage-images", help="write one complete ELF per plan stage here")]
Drop = Annotated[bool, typer.Option("--drop-records", help="drop the records of sites whose call slot ends up nop")]
Keep = Annotated[
    bool,
    typer.Option(
        "--keep-records",
        help="allow a recorded place to hold words the kernel refuses at boot (ftrace bug): negative controls only",
    ),
]
Strip = Annotated[bool, typer.Option("--strip-signature", help="allow rewriting a signed module (drops the signature)")]
KernelOption = Annotated[
    Path | None,
    typer.Option(
        "--kernel",
        metavar="VMLINUX",
        help="the vmlinux that will load this module: its records are dropped only if that kernel skips a zeroed "
        "record (6.6-6.12: docs/rewrite.md)",
    ),
]
CheckR0 = Annotated[
    bool,
    typer.Option(
        "--check-r0",
        help="walk r0 first and refuse to nop the mflr r0 of a function that reads r0 after its site "
        "(audit: r0live; ~0.6 s on a whole vmlinux)",
    ),
]
Dry = Annotated[bool, typer.Option("--dry-run", help="plan, check and report; write nothing")]
InPlace = Annotated[bool, typer.Option("--in-place", help="replace the input (atomically, once complete)")]
Backup = Annotated[bool, typer.Option("--backup", help="with --in-place: keep the original as IMAGE.orig")]
Wait = Annotated[
    bool,
    typer.Option(
        "--wait",
        help="with --in-place: wait for another run that locks the file or a tree above it (default: exit 2)",
    ),
]


def check_wait(image: Path, wait: bool, in_place: bool) -> None:
    """``--wait`` waits for the lock an ``--in-place`` run takes on its file. A run writing ``-o OUT``
    takes none (OUT is a new file, renamed into place whole), so ``--wait`` there would be accepted
    and do nothing, as if it guarded the run. With ``--dry-run`` it is accepted: a dry run is the
    same command line as the run it previews, and takes no lock only because it writes nothing."""
    if wait and not in_place:
        raise ArgumentError(f"{image}: --wait goes with --in-place (only an in-place run takes the file's lock)")


def say_waiting(path: Path, pid: int | None) -> None:
    """``rewriter.lock``'s ``waiting``: one line saying what this run waits for."""
    who = f"pid {pid}" if pid is not None else "another process"
    _say(f"mcountrw: waiting for {who}, which holds the lock on {path}", err=True)


def _selection(
    only: list[str] | None, exclude: list[str] | None, section: list[str] | None, addr: list[CallSlot] | None
) -> Selection:
    from rewriter.rewrite import Selection

    addrs = frozenset(a.at for a in addr or () if a.section is None)
    section_places = frozenset((a.section, a.at) for a in addr or () if a.section is not None)
    return Selection(
        tuple(only or ()), tuple(exclude or ()), tuple(section or ()), addrs, section_places=section_places
    )


class _Writing(NamedTuple):
    """Where and how ``apply`` and ``nop`` write (``apply_file``'s keyword arguments)."""

    log_path: Path | None
    stage_dir: Path | None
    dry_run: bool
    in_place: bool
    backup: bool
    input_log: Path | None


class _Run(NamedTuple):
    """How ``apply`` and ``nop`` scan a stripped image, and wait for a lock."""

    mcount_addr: int | None
    generation: Generation | None
    wait: bool

    def hints(self) -> ScanHints:
        from rewriter.files import ScanHints

        check_mcount_addr(self.generation, self.mcount_addr)
        return ScanHints(self.mcount_addr, self.generation)


def _options(target: Target, route: Route | None, drop: bool, keep: bool, strip: bool, check_r0: bool) -> Options:
    from rewriter.rewrite import Options
    from rewriter.states import SiteState

    if drop and keep:
        raise ArgumentError("give --drop-records or --keep-records, not both")
    if drop and target is Target.ENABLED:  # every generation's enabled call slot is a branch
        raise ArgumentError(
            "--drop-records drops the records of sites whose call slot ends up nop: --to enabled leaves none"
        )
    return Options(
        SiteState(target.value), route, drop_records=drop, strip_signature=strip, keep_records=keep, check_r0=check_r0
    )


def _run_apply(
    image: Path,
    output: Path | None,
    options: Options,
    selection: Selection,
    writing: _Writing,
    run: _Run,
    kernel: Path | None,
) -> None:
    check_wait(image, run.wait, writing.in_place)
    # The lock is taken before anything is read (or numpy loaded): it covers the whole run.
    locked = [image] if writing.in_place and not writing.dry_run else []
    with hold(locked, run.wait, say_waiting, above(locked)):
        from rewriter.files import apply_file

        try:
            result = apply_file(
                image, output, selection, options, **writing._asdict(), hints=run.hints(), kernel=kernel
            )  # NoRoute: 1
        except NothingToDo as e:
            raise _with_addr_note(e, image, selection) from None
    for warning in result.warnings:
        _say(f"mcountrw: warning: {warning}", err=True)
    _print_applied(image, options, result, writing)


def _with_addr_note(error: NothingToDo, image: Path, selection: Selection) -> NothingToDo:
    """``error``, with a note when an address was given to ``--addr`` for a module or object: a
    relocatable file is not linked, so its sites have no address and no address can select one,
    which "matches none of its sites" alone does not say; scan shows them as SECTION+0xOFF, which
    ``--addr`` takes. The image is loaded again on this path only (``apply_file`` loaded it)."""
    if not selection.addrs:
        return error
    from rewriter.elf import structs as S
    from rewriter.elf.image import Image

    if Image.load(image).type != S.ET_REL:
        return error
    return NothingToDo(
        f"{error} (a module's or object's sites have no address: give --addr as scan shows them, SECTION+0xOFF, "
        "e.g. --addr .text+0x14)"
    )


def _print_applied(image: Path, options: Options, result: ApplyResult, writing: _Writing) -> None:
    r = result.rewrite
    target = " / ".join(g.value for g in r.goals) or options.target.value  # what the words became
    if not r.edits:
        _print_already(image, _target_text(options, result), result, writing, options.drop_records)
        return
    stages = len(r.plan.stages) if r.plan else 0
    names = [name for _, name in r.barriers]
    if r.plan is not None and r.plan.settle is not None:  # the barrier after the last stage
        names.append(f"{r.plan.settle.value} (settle, after the last stage)")
    barriers = ", ".join(names) or "none"
    writes = r.word_writes
    others = counted(len(r.edits) - writes, "other edit")
    if not writes and bool(r.dropped) != bool(r.restored):
        from rewriter.report.scanfmt import when_traced

        line = _records_only(r, result.scan, result.output is None, when_traced(result.scan))
        _say(f"{image}: {line}; 0 word writes; {others}", err=True)
    else:
        verb = "would change" if result.output is None else "changed"
        dropped = f"; {counted(len(r.dropped), 'record')} dropped" if r.dropped else ""
        dropped += f"; {counted(len(r.restored), 'record')} restored" if r.restored else ""
        _say(
            f"{image}: {verb} {counted(len(r.sites), 'site')} to {target} ({r.unchanged} already {target}){dropped}; "
            f"{counted(writes, 'word write')} in {counted(stages, 'stage')}, barriers: {barriers}; {others}",
            err=True,
        )
        if target != options.target.value:
            _say(f"--to {options.target.value}: {_why_not_target(r, target)}", err=True)
    from rewriter.sites import Source

    logged = [s for s in result.scan.sites if s.source is Source.LOG]
    if result.scan.log is not None and logged:  # a log read that knows no site of its own: nothing to say
        chosen = {s.place for s in (*r.sites, *r.restored)}
        _say(
            f"{counted(len(logged), 'site')} known only from {result.scan.log}; "
            f"{sum(s.place in chosen for s in logged)} of them selected and changed",
            err=True,
        )
    if r.stubs is not None:
        _say(_stub_counts(r.stubs), err=True)
    if r.signature_stripped:
        _say(_signature_text(r, result.output is None), err=True)
    if r.r0_walk is not None:
        _say(_r0_walk_text(r.r0_walk), err=True)
    refused = r.refused_at_boot
    if refused:
        _say(
            f"mcountrw: warning: {image}: {counted(refused, 'recorded site')} "
            f"now {agreeing(refused, 'holds', 'hold')} {options.target.value} words, which the kernel's "
            "ftrace_init_nop() refuses: ftrace bug at boot or load, ftrace off (--keep-records: a negative control)",
            err=True,
        )
    _print_written(result)
    for p in result.stage_images:
        _say(f"stage image {p}", err=True)
    if writing.stage_dir is not None and not writing.dry_run and not result.stage_images:
        _say(f"no stage image written to {writing.stage_dir}: this rewrite writes no word (records only)", err=True)


def _print_written(result: ApplyResult) -> None:
    """The files written, the backup kept (the pristine original only if no earlier step rewrote
    the file), and the log the new one builds on."""
    if result.output is None:
        return
    before = "the original" if result.base is None else "the file as it was before this step"
    kept = "" if result.backup is None else f", {before} kept as {result.backup}"
    _say(f"wrote {result.output} and {result.log}{kept}", err=True)
    if result.base is not None:
        _say(f"the log builds on {result.base.path} (the input's log)", err=True)


def _records_only(r: Rewrite, scan: Scan, dry_run: bool, when: str) -> str:
    """A rewrite that only drops or only restores records (patchable and ool sites already are nop
    as built): said as what the kernel will make of the sites, and the words they keep, rather than
    as a move to a state they were in already (ool has no `nopped` state at all). Only the sites
    the kernel traces (or, restored, will trace) are counted as made untraceable (or traceable):
    the bodies of overridden weak functions are recorded but never traced (scan: weak-body), and
    their records are counted apart, so that the count is the difference the scan of the result shows."""
    from rewriter.generations import LAYOUTS
    from rewriter.states import words_text

    sites = r.dropped or r.restored
    words = sorted({words_text(LAYOUTS[s.variant].words(s.state)) for s in sites})
    idle = [s for s in r.dropped if not s.traceable] if r.dropped else list(r.restored_untraceable)
    n = counted(len(sites) - len(idle), "site")
    verb = "would make" if dry_run else "made"
    if r.dropped:
        line = f"{verb} {n} untraceable {when}: records dropped, words unchanged ({', '.join(words)})"
    else:
        line = f"{verb} {n} traceable {when} again: records restored, words unchanged ({', '.join(words)})"
    if not idle:
        return line
    done = ("would be " if dry_run else "") + ("dropped" if r.dropped else "restored")
    tense = "the kernel does not trace" if r.dropped else "the kernel will not trace"
    more = "more record" if len(idle) < len(sites) else "record"  # "made 0 sites ...; 1 more record" read oddly
    return f"{line}; {counted(len(idle), more)} {done}, of sites {tense} ({_why_idle(idle, scan)})"


def _why_idle(sites: Sequence[Site], scan: Scan) -> str:
    """Why the kernel does not trace ``sites`` though they are recorded, in scan's words (weak-body)."""
    from collections import Counter

    from rewriter.boot import boot_of, untraceable

    boot = boot_of(scan)
    why = Counter(untraceable(s, boot) for s in sites)
    return ", ".join(f"{k} {'traceable' if reason is None else reason.value}" for reason, k in why.most_common())


def _r0_walk_text(walk: Mapping[str, int]) -> str:
    """What ``--check-r0`` found: a rewrite it lets through took the ``mflr r0`` of sites whose
    functions never read r0 after it (``safe``) or that the walk cannot follow (``unknown``, passed
    as the audit lists them); none taken (7.2's entries have none, a restore, ``--to disabled``) is
    said too, or the option read as if it had checked something."""
    if not walk:
        return (
            "--check-r0: this rewrite takes no site's mflr r0 (ool entries have none; --to disabled and restores "
            "take none): nothing walked"
        )
    counts = ", ".join(f"{n} {verdict}" for verdict, n in sorted(walk.items()))
    unknown = walk.get("unknown", 0)
    passed = " (unknown ones pass: the audit lists them)" if unknown else ""
    return f"--check-r0: walked the {counted(sum(walk.values()), 'site')} whose mflr r0 goes: {counts}{passed}"


def _signature_text(r: Rewrite, dry_run: bool) -> str:
    """What became of a signed module's signature: cut off (``--strip-signature``), which the
    account must say, as prenop's does: the module then loads only where the kernel does not
    enforce signatures, and taints it (TAINT_UNSIGNED_MODULE, checked under qemu on 6.12 and 7.2)."""
    from rewriter.edits import Truncate

    cut = sum(len(e.tail) for e in r.edits if isinstance(e, Truncate))
    done = "would be stripped" if dry_run else "stripped"
    return (
        f"module signature {done} ({cut} bytes): the module loads unsigned, which taints a kernel that checks "
        "signatures and is refused where they are enforced (module.sig_enforce, MODULE_SIG_FORCE); undo puts it back"
    )


def _stub_counts(stubs: tuple[tuple[StubCount, ...], tuple[StubCount, ...]]) -> str:
    if not stubs[0] and not stubs[1]:
        return "ool stubs: no stub area found (a stripped image, or --generation ool on an image without stubs?)"
    before, after = (", ".join(f"{c.area} {c.used}/{c.stubs}" for c in side) for side in stubs)
    return f"ool stubs used/available: before {before}; after {after}"


def _why_not_target(r: Rewrite, became: str) -> str:
    """Why a rewrite took its sites to another state than ``--to`` named (``Rewrite.goals``)."""
    if r.restored:
        return "the kernel enables these sites itself at run time; they got their words as built and their records back"
    return f"no site here has that state; {became} is the one with its words"


def _target_text(options: Options, result: ApplyResult) -> str:
    """The state the target names for the image's sites, with its words: ``nopped`` is no state of
    an ool site (its one nop is ``disabled``), so "already nopped" would contradict scan and plan."""
    from rewriter.rewrite import target_state, words_of
    from rewriter.states import words_text

    variants = sorted({s.variant for s in result.scan.sites}, key=lambda v: v.value)
    named = dict.fromkeys(
        f"{state.value} ({words_text(words_of(v, state))})"
        for v in variants
        for state in (target_state(v, options.target),)
    )
    return " / ".join(named) or options.target.value


def _print_already(image: Path, target: str, result: ApplyResult, writing: _Writing, dropped: bool) -> None:
    """A rerun: every selected site is at the target already (exit 0, by design). ``dropped``
    (``--drop-records``): none of them has a record either, or the rewrite would have dropped it;
    said, since on 6.12 and 7.2 the words alone are also the untouched file's, which `nop` without
    it refuses to call done."""
    zeroed = result.scan.records.zeroed
    hidden = (
        f" ({zeroed} zeroed records: sites an earlier rewrite nopped are not seen without its patch log)"
        if zeroed and result.scan.log is None  # with the log read, those sites are among the selected
        else ""
    )
    if result.output is not None:
        written = f"; wrote {result.output} (a copy) and {result.log}"
    elif writing.in_place and not writing.dry_run:
        written = "; nothing written (the file and its patch log stay as they are)"
    else:
        written = ""
    stage = f"; no stage image written to {writing.stage_dir}" if writing.stage_dir is not None else ""
    n = result.rewrite.unchanged
    already = agreeing(n, f"the 1 selected site is already {target}", f"all {n} selected sites are already {target}")
    if dropped:
        already += agreeing(n, ", its record dropped", ", their records dropped")
    _say(
        f"{image}: nothing to change: {already}{hidden}{written}{stage}",
        err=True,
    )


def apply(
    image: Image_,
    to: Annotated[Target, typer.Option("--to", help="the state to move the selected sites to")],
    output: Output = None,
    *,
    only: Only = None,
    exclude: Exclude = None,
    section: Section = None,
    addr: Addr = None,
    route: Route_ = None,
    log: Log_ = None,
    stage_images: Stages = None,
    drop_records: Drop = False,
    keep_records: Keep = False,
    strip_signature: Strip = False,
    check_r0: CheckR0 = False,
    dry_run: Dry = False,
    in_place: InPlace = False,
    backup: Backup = False,
    mcount_addr: McountAddr = None,
    generation: GenerationOption = None,
    wait: Wait = False,
    input_log: InputLog = None,
    kernel: KernelOption = None,
) -> None:
    """Move the selected sites to a state with a safe plan; compare-and-swap on every word.

    A vmlinux or module is refused if a recorded place would hold words the kernel's boot-time
    ftrace init refuses (docs/rewrite.md: per generation); patchable and ool sites are never made
    `enabled` offline (the running kernel enables them). Sites an earlier rewrite nopped and
    unrecorded come back from IMAGE's patch log with `--to enabled`: words, call relocations and
    records (on patchable and ool, the records alone)."""
    options = _options(to, route, drop_records, keep_records, strip_signature, check_r0)
    selection = _selection(only, exclude, section, addr)
    writing = _Writing(log, stage_images, dry_run, in_place, backup, input_log)
    _run_apply(image, output, options, selection, writing, _Run(mcount_addr, generation, wait), kernel)


def nop(
    image: Image_,
    output: Output = None,
    *,
    only: Only = None,
    exclude: Exclude = None,
    section: Section = None,
    addr: Addr = None,
    log: Log_ = None,
    stage_images: Stages = None,
    drop_records: Drop = False,
    keep_records: Keep = False,
    strip_signature: Strip = False,
    check_r0: CheckR0 = False,
    dry_run: Dry = False,
    in_place: InPlace = False,
    backup: Backup = False,
    mcount_addr: McountAddr = None,
    generation: GenerationOption = None,
    wait: Wait = False,
    input_log: InputLog = None,
    kernel: KernelOption = None,
) -> None:
    """Offline pre-nopping: `apply --to nopped`. 6.1 (mprofile): mflr and bl both become nop;
    6.12 (patchable) and 7.2 (ool): the sites already are nop as built, so --drop-records drops
    their records and writes no word."""
    options = _options(Target.NOPPED, None, drop_records, keep_records, strip_signature, check_r0)
    selection = _selection(only, exclude, section, addr)
    writing = _Writing(log, stage_images, dry_run, in_place, backup, input_log)
    _run_apply(image, output, options, selection, writing, _Run(mcount_addr, generation, wait), kernel)


PatchedLog = Annotated[
    Path | None,
    typer.Option("--log", help="its patch log (default: PATCHED.mcountrw.jsonl, where apply and nop write it)"),
]


def _log_of(patched: Path, log: Path | None) -> Path:
    """``--log``, or the log beside ``patched`` where apply and nop write it by default; a file
    without one there is bad input that says where the log was looked for."""
    if log is not None:
        return log
    from rewriter.log import default_log_path
    from rewriter.reading import file_at

    _check_readable(patched)
    beside = default_log_path(patched)
    if not file_at(beside):
        raise LogError(f"{patched}: no patch log beside it ({beside}, where apply and nop write it): pass --log")
    return beside


def _check_readable(*paths: Path) -> None:
    """A file that is not there is that, not "no patch log beside it" (looked for before it)."""
    from rewriter.errors import ImageError
    from rewriter.reading import file_at, not_a_file

    for path in paths:
        if not file_at(path):
            raise ImageError(f"{path}: {not_a_file(path)}")


def undo(
    patched: Annotated[Path, typer.Argument(dir_okay=False, help="a file written by apply/nop")],
    log: PatchedLog = None,
    output: UndoOutput = None,
    *,
    in_place: InPlace = False,
    wait: Wait = False,
) -> None:
    """Restore the exact original bytes (relocations, records and signature included)."""
    check_wait(patched, wait, in_place)
    with hold([patched] if in_place else [], wait, say_waiting, above([patched] if in_place else [])):
        from rewriter.files import undo_file

        log = _log_of(patched, log)
        done = undo_file(patched, log, output, in_place)
    base = done.log.header.base
    if done.already_input:
        _print_already_undone(patched, log, done)
        if done.settled is not None:  # in place: the log beside it settled as the undo would have
            _print_settled(done, log)
        return
    what = "the original" if base is None else "the input of the step undone, not the original"
    if done.sha256 != done.log.header.input.sha256:  # the file undone was stored otherwise (decompressed)
        what = f"{what}'s content, stored as {patched} was, not the log's {done.log.header.input.sha256[:16]}..."
    _say(f"wrote {done.output} (sha256 {done.sha256[:16]}..., {what})", err=True)
    _print_settled(done, log)


def _print_settled(done: Undone, log: Path) -> None:
    """What became of the log beside the file undone in place, and where the step before's is."""
    base = done.log.header.base
    settled = done.settled
    if settled is not None and settled.beside is None:
        _say(f"removed {settled.log}: the step it describes is undone", err=True)
    elif settled is not None:
        back = f"its own log is back at {settled.beside} (from {settled.came_from})"
        _say(f"{back}: undo with it for the step before", err=True)
    if base is not None and (settled is None or settled.beside is None):
        _say(_step_before(base, log), err=True)


def _step_before(base: Base, log: Path) -> str:
    """Where the log of the step before is (:func:`~rewriter.log.find_base`), or that it is not
    found: then the step before cannot be undone."""
    from rewriter.log import find_base

    found = find_base(base, log)
    if found is not None:
        return f"its own log: {found} (undo with it for the step before)"
    return (
        f"the log of the step before, {base.path} (sha256 {base.sha256[:16]}...), is not found from {log}'s "
        "directory or from here: the step before cannot be undone without it"
    )


def _print_already_undone(patched: Path, log: Path, done: Undone) -> None:
    """An undo rerun: the file already is the log's input. Exit 0, as a rewrite's rerun (the file is
    what undo gives), but said plainly rather than as an undo done."""
    facts = done.log.header
    what = "the original" if facts.base is None else "the input of the step the log describes, not the original"
    written = "nothing written" if done.output == patched else f"wrote {done.output} (a copy of it)"
    _say(
        f"{patched}: nothing to undo: it already is {what} (the input of {log}, sha256 "
        f"{facts.input.sha256[:16]}...); {written}",
        err=True,
    )


def verify(
    original: Annotated[Path, typer.Argument(dir_okay=False, help="the file before the rewrite")],
    patched: Annotated[Path, typer.Argument(dir_okay=False, help="the file after it")],
    log: PatchedLog = None,
) -> None:
    """Exit 0 iff the byte difference is exactly what the log says; 1 otherwise."""
    from rewriter.files import verify_files

    _check_readable(original, patched)
    result = verify_files(original, patched, _log_of(patched, log))
    label = "ok: " if result.ok else "already original: " if result.already_input else "MISMATCH: "
    _say(label + result.reason, err=False)
    findings_if(not result.ok)
