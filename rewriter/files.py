"""Rewriting files: apply, undo and verify on files, with the patch log, stage images and atomic output.

The rewrite itself is computed in memory (``rewriter.rewrite``, which also reads the result back:
every changed site must hold the planned words); this module reads the input, writes the log and
the output, and undoes and verifies them. Order of writes, so that a run killed at any moment
leaves nothing half-done: the log, the optional backup and the output are each written to a
temporary file beside their target, fsynced and read back (``rewriter.output``), and only
then renamed into place, log first. The input is never opened for writing; ``--in-place``
replaces it by that final rename. (One writer at a time: the caller holds ``rewriter.lock`` on a
file it rewrites in place; the CLI takes it before it reads anything.)

No silent no-ops: a rewrite that finds no site at all in the file, or whose selection matches no
site, raises :class:`NothingToDo` (exit 1) naming the likely cause (:func:`check_something_to_do`)
instead of reporting success at changing nothing. A rewrite whose sites are all at the target
already is a rerun, a no-op by design: it succeeds, and in place it writes nothing (rewriting
the file and its log would replace the log that leads back to the original with one that leads
nowhere).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Final, NamedTuple, TypeVar

import numpy as np

from rewriter.elf import structs as S
from rewriter.elf.compress import SUFFIX, Compression, Restore, compression_named, decompress, detect_compression
from rewriter.elf.image import Image, Kind
from rewriter.elf.release import kernel_release, releases_differ
from rewriter.errors import (
    ArgumentError,
    Contradicted,
    ImageError,
    LogError,
    NothingToDo,
    OutputError,
    RewriteError,
    WordMismatch,
)
from rewriter.generations import LAYOUTS, Generation
from rewriter.heap import collector_paused
from rewriter.known import by_place, with_log
from rewriter.locs import UNCHECKED_RISK, loop_for_modules, unchecked_drops
from rewriter.log import (
    Base,
    Data,
    FileFacts,
    Header,
    Known,
    Log,
    check_extent,
    default_log_path,
    find_base,
    for_file,
    load,
    log_of,
    read_header,
    render,
)
from rewriter.mcount import MCOUNT_NAMES, check_mcount_addr_alone
from rewriter.output import (
    Pending,
    atomic_write,
    check_landed,
    check_not_immutable,
    check_replaceable,
    commit_all,
    directory_problem,
    same_place,
    write_temp,
)
from rewriter.prose import agreeing, counted, with_article
from rewriter.reading import file_at, read_regular, read_regular_mutable
from rewriter.rewrite import Options, Rewrite, Selection, rewrite
from rewriter.sites import (
    Scan,
    Site,
    Source,
    no_site_guess,
    override_text,
    scan,
    section_place_text,
)


@dataclass(frozen=True)
class ScanHints:
    """What a stripped image may need to be scanned: ``--mcount-addr`` (``_mcount``'s address,
    from System.map) and ``--generation`` (see ``rewriter.sites.scan``)."""

    mcount_addr: int | None = None
    generation: Generation | None = None

    @property
    def given(self) -> bool:
        return self.mcount_addr is not None or self.generation is not None


@dataclass(frozen=True)
class ApplyResult:
    input: Path
    output: Path | None
    log: Path | None
    rewrite: Rewrite
    scan: Scan  # with the sites only the input's log knows
    stage_images: tuple[Path, ...]
    base: Base | None = None  # the input's log, which the new log names
    warnings: tuple[str, ...] = ()  # one line each: a log beside the input that was not its log
    backup: Path | None = None  # --in-place --backup: where the original was kept


def _sha256(data: Data) -> str:
    return hashlib.sha256(data).hexdigest()


def _on_disk(path: Path) -> bytes:
    try:
        return read_regular(path)
    except OSError as e:
        raise RewriteError(f"{path}: {e.strerror}") from None


def check_output_name(output: Path, compression: Compression) -> None:
    """The output is compressed as its input was (so that undo gives those bytes back): a name that
    says otherwise (``-o m.ko`` from an ``.ko.xz``, ``-o x.ko.xz`` from an ``.ko``) would make a
    file that modprobe, or the next tool, reads wrongly. A name that says nothing is accepted."""
    named = compression_named(output)
    if named is None or named is compression:
        return
    said, data = ("uncompressed" if c is Compression.NONE else f"{c.value}-compressed" for c in (named, compression))
    want = f"end it in {SUFFIX[compression]}" if compression is not Compression.NONE else "drop its suffix"
    raise OutputError(f"{output}: its name says {said}, but the output is {data} like its input: {want}")


def check_output_path(
    input_path: Path, output: Path | None, in_place: bool, dry_run_option: bool = True, stage_dir: Path | None = None
) -> Path:
    """Where the output goes. ``dry_run_option``: the command has ``--dry-run`` (apply, nop; undo
    has not), so the line for no output offers it. ``stage_dir``: ``--stage-images``, which the
    run makes, so an output in it needs no directory there yet (:func:`in_stage_dir`)."""
    if in_place:
        if output is not None and output.resolve() != input_path.resolve():
            raise OutputError(f"{output}: --in-place writes the input; do not also give -o")
        if input_path.is_symlink():  # the rename that replaces the file would replace the link instead
            raise OutputError(
                f"{input_path}: is a symlink; --in-place would replace the link, not {input_path.resolve()}: "
                "name the file itself"
            )
        output = input_path
    elif output is None:
        offers = "-o OUT, --in-place or --dry-run" if dry_run_option else "-o OUT or --in-place"
        raise OutputError(f"{input_path}: no output: give {offers}")
    elif output.exists() and output.resolve() == input_path.resolve():
        raise OutputError(f"{output}: output is the input; use --in-place to rewrite it")
    if output.exists() and not output.is_file() and not output.is_dir():
        raise OutputError(f"{output}: not a regular file (a device or FIFO): the output replaces it by a rename")
    # the file is replaced by a rename: the directory must be writable
    check_replaceable(output, parent_made=in_stage_dir(output, stage_dir))
    check_not_immutable(output)
    return output


def in_stage_dir(path: Path, stage_dir: Path | None) -> bool:
    """``path`` is a file of the ``--stage-images`` directory, which the run makes (mkdir -p) before
    it writes anything there (:func:`_stage_images`): ``--log st/x --stage-images st`` was refused,
    "directory st does not exist", where ``--stage-images st`` alone makes st."""
    return stage_dir is not None and os.path.abspath(path.parent) == os.path.abspath(stage_dir)


def check_side_paths(
    input_path: Path,
    out: Path,
    log: Path,
    in_place: bool,
    backup: bool,
    stage_dir: Path | None = None,
    input_log: Path | None = None,
    kernel: Path | None = None,
) -> None:
    """Before any work: no two files the run writes or reads share a place. The patch log must not
    land on the input, the output or the backup (a log written over the input would destroy it;
    over the backup, the log is lost), the output not on the input's own patch log (its undo), and
    neither on a stage image (:func:`stage_image_path`) nor on the ``--kernel`` vmlinux the run
    reads (``nop M -o VMLINUX --kernel VMLINUX`` replaced the 47 MB kernel with the module, exit
    0); an ``--in-place --backup`` copy must not replace an earlier one (a second run would
    otherwise overwrite the true original with a rewritten file)."""
    saved = input_path.with_name(input_path.name + ".orig")
    for other, what in ((input_path, "the input"), (out, "the output"), (saved if backup else None, "the backup")):
        if other is not None and same_place(log, other):
            raise OutputError(f"{log}: the patch log would overwrite {what}")
    _check_chain_kept(input_path, out, log, in_place, input_log)
    for written, what in ((out, "-o"), (log, "the patch log")):
        if kernel is not None and same_place(written, kernel):
            raise OutputError(f"{written}: {what} would overwrite the --kernel vmlinux, which this run reads")
    if stage_dir is not None:
        places = [(out, "-o"), (log, "the patch log"), *([(saved, "the backup")] if backup else [])]
        _check_not_a_stage_image(input_path, stage_dir, places)
    check_replaceable(log, parent_made=in_stage_dir(log, stage_dir))  # a directory, a name too long, ...
    check_not_immutable(log)
    if backup and (saved.exists() or saved.is_symlink()):
        raise OutputError(f"{saved}: exists (a backup from an earlier run?); move it away or drop --backup")


def _check_chain_kept(input_path: Path, out: Path, log: Path, in_place: bool, input_log: Path | None) -> None:
    """Neither the output nor the new log may replace a log the input's undo needs: its own (beside
    it, or ``--input-log``), or any log that one builds on, step by step back to the original. Only
    ``--in-place`` with the log beside the input takes that log's name, and it moves it aside first
    (:func:`archived_log`). ``undo -o`` over an earlier step's log destroyed the one way back past
    that step; ``--log INPUT's log -o OTHER`` moved the input's log to a name no command looks at."""
    beside = default_log_path(input_path)
    for own in dict.fromkeys(p for p in (beside, input_log) if p is not None):
        if not in_place and same_place(out, own):
            raise OutputError(f"-o {out}: is the patch log of the input {input_path}, which its undo needs")
        if same_place(log, own) and not (in_place and same_place(own, beside)):  # --input-log $PWD/F.mcountrw.jsonl
            raise OutputError(
                f"{log}: the patch log would replace the patch log of the input {input_path}, which its undo needs "
                "(only --in-place, whose log takes that name, moves it aside first)"
            )
        leads = ((out, f"-o {out}: is"), (log, f"{log}: the patch log would replace"))
        _check_not_a_step_before(_base_of(own), own, leads)


def _base_of(log: Path) -> Base | None:
    """The base the log at ``log`` names; None if there is no log there (or none mcountrw can read)."""
    try:
        header = read_header(log)
    except LogError:
        return None
    return None if header is None else header.base


def _check_not_a_step_before(base: Base | None, log: Path, written: Sequence[tuple[Path, str]]) -> None:
    """Refuse any of ``written`` (a path, and how its error line starts) that is a log of the chain
    ``log`` builds on (``base``, its base, and so on, as far as they are found): undo needs each to
    go back past its step."""
    seen: list[Path] = []
    while base is not None and len(seen) < _CHAIN_LIMIT:
        found = find_base(base, log)
        if found is None or any(same_place(found, s) for s in seen):
            return
        for path, lead in written:
            if same_place(path, found):
                raise OutputError(
                    f"{lead} the patch log of an earlier step ({log} builds on it), which undo needs to go back "
                    "past that step"
                )
        seen.append(found)
        base, log = _base_of(found), found


_CHAIN_LIMIT: Final = 1000
"""Steps of a chain followed back at most: a bound on a chain of logs edited into a loop."""


@collector_paused()
def apply_file(
    path: Path,
    output: Path | None,
    selection: Selection,
    options: Options,
    *,
    log_path: Path | None = None,
    stage_dir: Path | None = None,
    dry_run: bool = False,
    in_place: bool = False,
    backup: bool = False,
    hints: ScanHints = ScanHints(),
    input_log: Path | None = None,
    kernel: Path | None = None,
) -> ApplyResult:
    """``input_log``: the patch log of ``path`` (default: the one beside it, if it is its log):
    the sites only it knows are selected and restored like the others, and the new log names it
    as its base. ``kernel``: the vmlinux that will load the module ``path`` (:func:`_held_to_kernel`)."""
    if backup and not in_place:  # a dry run too: it previews a run that would refuse this
        raise OutputError(f"{path}: --backup goes with --in-place (with -o the input is left as it is)")
    # A dry run with -o or --in-place checks them as the run it previews would: only a dry run
    # given neither has no output to check.
    no_output = dry_run and output is None and not in_place
    out = None if no_output else check_output_path(path, output, in_place, stage_dir=stage_dir)
    if stage_dir is not None:
        check_stage_dir(stage_dir)
    if out is not None:
        log = log_path or default_log_path(out)
        check_side_paths(path, out, log, in_place, backup, stage_dir, input_log, kernel)
    image = Image.load(path)
    if out is not None and not in_place:
        check_output_name(out, image.compression)
    check_mcount_addr_alone(image, hints.mcount_addr)
    before = scan(image, hints.mcount_addr, hints.generation)
    selection = selection.named_in(image, before.listed)
    refuse_contradicted_generation(image, before)
    options = _held_to_kernel(image, before, options, kernel)
    known, aside = _input_log(image, input_log)
    if out is not None and in_place and log_path is None:
        check_no_foreign_log(path, known, aside)
        _check_archivable(path, known)
    history = {}
    if known is not None:
        # every site there is: the image's and those only its log knows (`before.log` says which log)
        before = with_log(before, known.sites, known.path)
        history = by_place(known.sites)
    check_something_to_do(image, before, selection, hints, aside)
    result = rewrite(image, before, selection, options, stage_dir is not None and not dry_run, history)
    if stage_dir is not None:  # a dry run too, as -o and --stage-images DIR are checked
        check_stage_images(stage_dir, path, len(result.plan.stages) if result.plan is not None else 0)
    said = (None if aside is None else aside.warning, _unchecked_kernel(image, before, result, options, kernel))
    warnings = tuple(w for w in said if w is not None)
    base = None if known is None else known.base
    if dry_run or out is None or (in_place and not result.edits):  # in place and already done: nothing to write
        return ApplyResult(path, None, None, result, before, (), base, warnings)
    log = log_path or default_log_path(out)
    backup_path = path.with_name(path.name + ".orig") if in_place and backup else None
    with _stage_images(stage_dir, path, result, any(in_stage_dir(p, stage_dir) for p in (out, log))) as staged:
        base = _write_outputs(image, result, options, out, log, backup_path, known, staged)
    return ApplyResult(path, out, log, result, before, tuple(p.path for p in staged), base, warnings, backup_path)


def loader(kernel: Path) -> Scan:
    """The scan of ``kernel``, named as the vmlinux that will load a module (``--kernel``): its
    generation, and its ftrace_process_locs() loop (``rewriter.locs``)."""
    return scan(_loader_image(kernel))


def _loader_image(kernel: Path) -> Image:
    try:
        image = Image.load(kernel)
    except RewriteError as e:  # "K: No such file or directory" says nothing of which option named K
        raise ArgumentError(f"--kernel {e}") from None
    if image.kind is not Kind.VMLINUX:
        raise ArgumentError(f"--kernel {kernel}: not a vmlinux (its kind: {image.kind.value})")
    return image


def _held_to_kernel(image: Image, before: Scan, options: Options, kernel: Path | None) -> Options:
    """``options`` with the loop of ``kernel``, the vmlinux that will load the module ``image``:
    under the older loop a patchable module's dropped records turn ftrace off once it loads, and
    the rewrite refuses them (``rewriter.rewrite``). A module does not say which kernel loads it,
    but a kernel of another byte order, generation or release does not load it (:func:`_not_its_kernel`)."""
    if kernel is None:
        return options
    if image.kind is not Kind.MODULE:
        kind = image.kind.value
        raise ArgumentError(
            f"{image.path}: --kernel VMLINUX is for a module, the kernel that will load it (this: {kind})"
        )
    vmlinux = _loader_image(kernel)
    if vmlinux.byteorder != image.byteorder:
        why = f"a {vmlinux.byteorder}-endian vmlinux, and {image.path} is a {image.byteorder}-endian module"
        raise _not_its_kernel(kernel, why)
    k = scan(vmlinux)
    if k.generation is not before.generation and before.generation is not None:
        theirs = k.generation.value if k.generation else "no"
        ours = with_article(before.generation.value)
        raise _not_its_kernel(kernel, f"a kernel of {theirs} generation, and {image.path} is {ours} module")
    _check_release(kernel, vmlinux, image)
    return replace(options, kernel_locs=loop_for_modules(k.generation, k.locs))


def _check_release(kernel: Path, vmlinux: Image, module: Image) -> None:
    """The module's ``vermagic`` names the release of ``vmlinux`` (its ``linux_banner``), when both
    say one. The loader compares vermagic whole (``same_magic()``), or with CONFIG_MODVERSIONS all
    but the release and then every imported symbol's CRC: a module is built for one release, and a
    vmlinux of another says nothing sure of the ftrace_process_locs() loop that loads it (stable
    kernels took the 2025 loop: ``rewriter.locs``)."""
    theirs, ours = kernel_release(vmlinux), kernel_release(module)
    if releases_differ(ours, theirs):
        raise _not_its_kernel(kernel, f"Linux {theirs}, and {module.path} was built for {ours} (its vermagic)")


def _not_its_kernel(kernel: Path, why: str) -> ArgumentError:
    return ArgumentError(f"--kernel {kernel}: {why}: not the kernel that loads it")


def _unchecked_kernel(image: Image, before: Scan, result: Rewrite, options: Options, kernel: Path | None) -> str | None:
    """A warning when records were dropped from a patchable module whose kernel's loop is not
    known (no ``--kernel``, or one whose loop could not be read): whether that kernel turns ftrace
    off when it loads the module was not checked."""
    unchecked = unchecked_drops(before.generation, options.kernel_locs, len(result.dropped))
    if image.kind is not Kind.MODULE or not unchecked:
        return None
    if kernel is not None:
        why = f"the loop of --kernel {kernel} could not be read (stripped, or code mcountrw cannot follow)"
    else:
        why = "--kernel VMLINUX checks"
    return (
        f"{image.path}: {counted(unchecked, 'record')} dropped from a patchable module without checking "
        f"its kernel: {UNCHECKED_RISK}; {why}"
    )


def check_no_foreign_log(path: Path, known: Known | None, aside: LogAside | None = None) -> None:
    """An in-place rewrite writes its log beside the file, where a log of the file's own chain is
    archived first (``archived_log``). A log there that is not the file's, or that cannot be read
    (``aside``: ignored, with a warning; a damaged one may be the file's own), would be replaced
    with no copy kept: refused, before anything is written."""
    beside = default_log_path(path)
    if not file_at(beside) or (known is not None and same_place(known.path, beside)):
        return
    what = f"{beside}: not the log of {path}"
    if aside is not None and aside.damaged:
        what = f"{aside.reason}: the patch log beside {path} cannot be read"
    elif known is not None:  # --input-log named a log elsewhere: the one beside may be the file's too
        whose = _beside_an_input_log(path, beside, known)
        if whose is None:
            return
        what = whose
    raise OutputError(
        f"{what}, and an in-place rewrite would replace it: move it away, or give the new log another name with --log"
    )


def _beside_an_input_log(path: Path, beside: Path, known: Known) -> str | None:
    """What the log ``beside`` the file is, when ``--input-log`` named another (``known``): None if it
    is a copy of that log (byte for byte: replacing it loses nothing, and the new log names the
    one given), else the start of the refusal's line. Said "not the log of F" of every log there,
    its own log copied elsewhere and named with ``--input-log`` included."""
    try:
        if _sha256(read_regular(beside)) == known.sha256:
            return None
        header = read_header(beside)
    except OSError as e:
        return f"{beside}: {e.strerror}: the patch log beside {path} cannot be read"
    except LogError as e:
        return f"{e}: the patch log beside {path} cannot be read"
    if header is not None and header.output.content_sha256 == known.header.output.content_sha256:
        return f"{beside}: a patch log of {path} too, not the --input-log {known.path}"
    return f"{beside}: not the log of {path}"


def refuse_contradicted_generation(image: Image, found: Scan) -> None:
    """A rewrite does not obey a ``--generation`` the image's contents contradict, as scan and
    audit do (they only read): the layout decides which words and which table entries it writes,
    and in a stripped image the records themselves are found by what that layout expects (a 6.1
    vmlinux read as ool takes a pointer of some other table for a record, and dropping it zeroes
    that pointer). The option is for images whose contents cannot tell."""
    contradiction = override_text(found, "contradicts")
    over = found.overridden
    if over is not None and over.also is not None and over.also is found.generation:
        return  # the words fit the given generation too (detect.Detect.also): what the option is for
    if contradiction is not None and found.generation is not None:
        raise Contradicted(
            f"{image.path}: {contradiction}; a rewrite goes by the image's own layout (scan and audit can read it "
            f"as {found.generation.value})"
        )


class LogAside(NamedTuple):
    """Why the patch log beside an input was set aside: it cannot be read (``damaged``: cut short,
    not JSON, its footer checksum wrong, unreadable; ``warning`` gives the reader's reason), or it
    reads well but its output is another file (``warning`` gives both hashes)."""

    warning: str  # one line, as printed: the log's name, what is wrong, ": ignored"
    damaged: bool

    @property
    def reason(self) -> str:
        """The warning without its ": ignored" (``log.for_file``'s words): what is wrong."""
        return self.warning.removesuffix(": ignored")


def _input_log(image: Image, explicit: Path | None) -> tuple[Known | None, LogAside | None]:
    """The input's own patch log, and why the one beside it was set aside if it was
    (``log.for_file``). The file is hashed only if there is a log to compare it with."""
    beside = default_log_path(image.path)
    if explicit is None and not file_at(beside):
        return None, None
    raw = image.data if image.compression is Compression.NONE else _on_disk(image.path)
    sha, content_sha = _sha256(raw), None if image.compression is Compression.NONE else _sha256(image.data)
    known, warning = for_file(image.path, sha, explicit, content_sha)
    if warning is None:
        return known, None
    try:
        header = read_header(beside)  # the header alone tells whose log it is, and reads if the log is whole
    except LogError:
        return None, LogAside(warning, damaged=True)
    if header is not None and header.describes(sha, content_sha):
        return None, LogAside(warning, damaged=True)  # its log, whole, but a line in it does not read
    _, foreign = log_of(image.path, sha, None, content_sha)  # another file's: the hashes, not a read error
    return None, LogAside(foreign or warning, damaged=False)


def log_set_aside(image: Image) -> LogAside | None:
    """Why the patch log beside ``image`` is not read, as a rewrite of it would judge it (None:
    read, or none there)."""
    return _input_log(image, None)[1]


def _check_archivable(path: Path, known: Known | None) -> None:
    """Before the work: the log beside the file, which an in-place rewrite with the default log
    moves aside (:func:`archived_log`), can take its archived name, 13 characters longer. A file
    whose log's name fit the file system and the archived one not was refused at the end, in
    the words "F.mcountrw.jsonl: File name too long" of a log that was there."""
    if known is None or not same_place(known.path, default_log_path(path)):
        return
    archived = archived_log(known)
    try:
        check_replaceable(archived)
    except OutputError as e:
        raise OutputError(
            f"{e}: where the in-place rewrite would keep {known.path}, the log it builds on: "
            "give the new log another name with --log"
        ) from None


def archived_log(base: Known) -> Path:
    """Where a base log goes when the new log takes its name (``--in-place`` with the default log):
    beside it, its sha256 in its name, so that the chain stays whole and each step undoable."""
    name = base.path.name.removesuffix(".jsonl")
    return base.path.with_name(f"{name}.{base.sha256[:12]}.jsonl")


def _write_outputs(
    image: Image,
    result: Rewrite,
    options: Options,
    out: Path,
    log: Path,
    backup: Path | None,
    known: Known | None,
    staged: Sequence[Pending] = (),
) -> Base | None:
    """The output, its log and the backup (if any), published only once all three are complete,
    with the stage images ``staged`` (written, not yet renamed into place: :func:`_stage_images`).
    Returns the base the new log names (moved aside first if the new log takes its place)."""
    path = image.path
    # An uncompressed input is already mapped: hash and back it up from the mapping, not a re-read.
    raw = image.data if image.compression is Compression.NONE else _on_disk(path)
    restore = Restore.of(raw, image.data, image.compression)
    moved = known is not None and same_place(known.path, log)
    base = None if known is None else Base(str(archived_log(known)), known.sha256) if moved else known.base
    # Nothing changed (a module without records): its bytes as they are, not compressed again.
    new_raw = restore.compressed(result.content, image.compression) if result.edits else bytes(raw)
    mode = path.stat().st_mode & 0o7777
    # The two files are hashed and the output's 46 MB written, fsynced and read back in a thread
    # while the log's 67,000 lines are formatted (hashlib and file I/O let go of the GIL); nothing
    # is published until the output, the log and the backup are all complete.
    pending: list[Pending] = []
    # Everything staged is discarded if the run stops before it is published, an interruption
    # included: while the writer thread is joined at the end of the `with`, or between renames.
    try:
        with ThreadPoolExecutor(max_workers=1) as pool:
            facts = pool.submit(_file_facts, image, raw, out, new_raw, result.content)
            out_future = pool.submit(write_temp, out, new_raw, mode)
            try:
                order = image.byteorder
                named = None if base is None else base.written_for(log)
                text = render(image.kind, order, result, options, facts.result, restore, named)
                pending.append(write_temp(log, text, 0o644))
                if backup is not None:
                    pending.append(write_temp(backup, raw, mode))
                pending.append(out_future.result())
            except BaseException:
                if out_future.exception() is None:  # waits for the writer thread: its file must go too
                    out_future.result().discard()
                raise
        if moved and known is not None:  # a write beside the input: under the same lock as the output
            os.replace(known.path, archived_log(known))
        # The log is published first: an output never exists without the log that can undo it.
        # The stage images go before it, with it: all of them or none (one a run could not
        # publish left the others behind, 47 MB each, from a run refused with exit 2).
        commit_all([*staged, *pending])
    except BaseException:
        for p in pending:
            p.discard()
        raise
    check_landed([*staged, *pending])  # another run's log beside this output, or the other way round
    return base


def stage_image_path(directory: Path, path: Path, stage: int) -> Path:
    """Where ``--stage-images`` puts stage ``stage`` (from 1) of rewriting ``path``: the
    decompressed ELF, named without the input's compression suffix."""
    named = compression_named(path)
    name = path.name if named is None else path.name.removesuffix(SUFFIX[named])
    return directory / f"{name}.stage{stage}"


def _check_not_a_stage_image(path: Path, directory: Path, targets: Sequence[tuple[Path, str]]) -> None:
    """Refuse a ``targets`` path that a stage image of this run may take (the number of stages is
    known only once the plan is made, so any stage number is refused), or that is the stage
    images' directory or one above it, which the run makes (``-o st --stage-images st`` wrote the
    stage images, then failed to rename the output over the directory, "st: Is a directory")."""
    stages = Path(os.path.realpath(directory))
    for target, what in targets:
        if stages.is_relative_to(os.path.realpath(target)):
            where = "is" if stages == Path(os.path.realpath(target)) else "would hold"
            raise OutputError(f"{target}: {what} {where} the --stage-images directory {directory}")
        try:
            same_dir = target.parent.resolve() == directory.resolve()
        except OSError:
            continue
        name = stage_image_path(directory, path, 0).name.removesuffix("0")
        rest = target.name[len(name) :]
        if same_dir and target.name.startswith(name) and rest.isascii() and rest.isdigit():
            raise OutputError(f"{target}: {what} would be a stage image of this run (--stage-images {directory})")


def check_stage_dir(directory: Path) -> None:
    """Before any work, as ``-o`` is checked (``output.check_replaceable``): ``--stage-images DIR``
    is a directory the stage images can be written in, or one ``mkdir -p`` can make
    (``output.directory_problem``). A read-only place, or a path under a regular file, was found
    by the writes at the end, after the scan and rewrite."""
    problem = directory_problem(directory)
    if problem is not None:
        raise OutputError(f"--stage-images {directory}: {problem}")


def check_stage_images(directory: Path, path: Path, stages: int) -> None:
    """Before anything is written: each of the ``stages`` stage images has a place it can take
    (:func:`output.check_replaceable`; ``directory`` may be made by the run). Their number is
    known only from the plan; a ``D/F.stage2`` that is a directory was found by the rename at
    the end, after the output, its log and the other stage images were written (then removed)."""
    for stage in range(1, stages + 1):
        place = stage_image_path(directory, path, stage)
        try:
            check_replaceable(place, parent_made=True)
            check_not_immutable(place)
        except OutputError as e:
            raise OutputError(f"--stage-images {directory}: the image of stage {stage}, {e}") from None


@contextmanager
def _stage_images(
    directory: Path | None, path: Path, result: Rewrite, holds_outputs: bool = False
) -> Iterator[list[Pending]]:
    """The stage images of ``result`` written beside their places in ``directory`` (made if need
    be, first: ``holds_outputs``, the output or the log goes there too), complete and read back but
    not renamed into place: the caller publishes them with its output (:func:`_write_outputs`). If
    it does not (a failure, an interruption), every one is removed, and so is the directory if this
    made it: a refused run leaves nothing behind."""
    staged: list[Pending] = []
    if directory is None or not (result.stages or holds_outputs):  # records only: no directory made for nothing
        yield staged
        return
    made = not directory.exists()
    try:
        try:
            directory.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise OutputError(f"--stage-images {directory}: {e.strerror}") from None
        mode = path.stat().st_mode & 0o7777
        for i, content in enumerate(result.stages, start=1):
            staged.append(write_temp(stage_image_path(directory, path, i), content, mode))
        yield staged
    except BaseException:
        for p in staged:
            p.discard()
        if made:  # commit_all put back any it had renamed into place
            with contextlib.suppress(OSError):
                directory.rmdir()  # only if empty: mkdir -p's parents stay
        raise


def _file_facts(image: Image, raw: Data, out: Path, new_raw: Data, content: Data) -> tuple[FileFacts, FileFacts]:
    return (
        FileFacts.of(image.path, raw, image.data, image.compression),
        FileFacts.of(out, new_raw, content, image.compression),
    )


# -- no silent no-ops -----------------------------------------------------------------------


def known_sites(image: Image, found: Scan) -> tuple[Site, ...]:
    """Every site known for this file: the one question the no-op checks ask. ``found`` already
    holds the sites only the file's patch log remembers (a pre-nopped site whose record was
    dropped is invisible in the image), added by ``known.with_log`` when the log was read."""
    return found.sites


def _defines_mcount(image: Image, found: Scan) -> bool:
    if found.mcount_entries:
        return True
    syms = image.symbols
    return syms is not None and any(len(syms.find(n)) for n in MCOUNT_NAMES)


INPUT_LOG_HINT: Final = "(give it with --input-log)"
"""How a command that takes ``--input-log`` (apply, nop) is told to give an earlier rewrite's log."""


def no_site_cause(
    image: Image, found: Scan, hints: ScanHints, log_aside: LogAside | None = None, log_hint: str = INPUT_LOG_HINT
) -> str:
    """Why a file shows no ftrace site at all, the likeliest cause first, as the end of one line.
    ``log_aside``: why the log beside the file was not read (damaged, or another file's);
    ``log_hint``: how the command is given an earlier rewrite's log (:data:`INPUT_LOG_HINT`)."""
    earlier = _earlier_rewrite(image, log_aside, log_hint)
    zeroed = found.records.zeroed
    if zeroed and not found.records.count:
        records = agreeing(zeroed, "its 1 record is zeroed", f"its {zeroed} records are all zeroed")
        return f"{records} (--drop-records) and its words show no site of their own: {earlier}"
    if image.symbols is None and image.type != S.ET_REL and not hints.given:
        return (
            "a stripped image (no .symtab): pass --mcount-addr with _mcount's address from System.map (mprofile), "
            "or --generation patchable|ool"
        )
    if hints.mcount_addr is not None:
        return f"no bl calls --mcount-addr {hints.mcount_addr:#x} and no record names a site: is it _mcount's address?"
    unmatched = found.records.unmatched
    if unmatched:
        return (
            f"{counted(len(unmatched), 'record')} there, but none names a site: the words at "
            f"{unmatched[0].text}{' and the others' if len(unmatched) > 1 else ''} are no call slot mcountrw knows "
            "(`mcountrw audit` shows them)"
        )
    if _defines_mcount(image, found):
        return f"_mcount is there but nothing calls it and there are no records: {earlier}"
    return no_site_guess(found)


def _earlier_rewrite(image: Image, log_aside: LogAside | None, log_hint: str = INPUT_LOG_HINT) -> str:
    """What to say of the sites an earlier rewrite nopped and unrecorded: only its patch log knows
    them, and whether that log is here, and read (a damaged log is not known to be another file's)."""
    log = default_log_path(image.path)
    if file_at(log) and log_aside is not None:
        whose = f"cannot be read ({log_aside.reason})" if log_aside.damaged else f"is not its log ({log_aside.warning})"
        return f"its sites were nopped by an earlier rewrite, but the patch log beside it {whose}"
    if file_at(log):
        return (
            f"its sites were nopped by an earlier rewrite: its patch log {log.name} is here "
            f"(`mcountrw undo {image.path} --log {log}` gives the original back)"
        )
    return f"its sites were nopped by an earlier rewrite whose patch log is not here {log_hint}"


def unrecorded_hint(
    image: Image, found: Scan, sites: Sequence[Site], log_aside: LogAside | None, log_hint: str = INPUT_LOG_HINT
) -> list[str]:
    """For a selection that matches nothing in a file with zeroed records and no log read: the
    functions asked for may be among the sites only that log knows (``v61.nop`` copied without its
    log: 33,689 records zeroed, 1 site left to match)."""
    zeroed = found.records.zeroed
    if not zeroed or any(s.source is Source.LOG for s in sites):
        return []
    return [f"{zeroed_records(zeroed)}: {_earlier_rewrite(image, log_aside, log_hint)}"]


def zeroed_records(zeroed: int) -> str:
    """``N of its records are zeroed``, in agreement with N (a rewrite that dropped one record
    left "1 of its records are zeroed"): the one wording of a file's zeroed record slots."""
    return f"{zeroed} of its records {agreeing(zeroed, 'is', 'are')} zeroed"


def unmatched_selection(sites: Sequence[Site], selection: Selection) -> list[str]:
    """Each part of ``selection`` (``--only``, ``--exclude``, ``--section``, ``--addr``) that
    matches none of ``sites``, as the option that names it."""
    aliases, listed = selection.aliases, selection.listed
    parts = [(f"--only {g}", Selection(only=(g,), aliases=aliases, listed=listed)) for g in selection.only]
    parts += [(f"--exclude {g}", Selection(only=(g,), aliases=aliases, listed=listed)) for g in selection.exclude]
    parts += [(f"--section {name}", Selection(sections=(name,))) for name in selection.sections]
    parts += [(f"--addr {a:#x}", Selection(addrs=frozenset({a}))) for a in sorted(selection.addrs)]
    parts += [
        (f"--addr {section_place_text(*p)}", Selection(section_places=frozenset({p})))
        for p in sorted(selection.section_places)
    ]
    return [text for text, part in parts if not any(part.matches(s) for s in sites)]


def check_something_to_do(
    image: Image,
    found: Scan,
    selection: Selection,
    hints: ScanHints,
    log_aside: LogAside | None = None,
    log_hint: str = INPUT_LOG_HINT,
) -> None:
    """Raise :class:`NothingToDo` if the file has no site at all, or ``selection`` matches none
    (or one of its parts matches none: a mistyped ``--exclude`` would otherwise change the very
    function it meant to spare). ``log_hint``: how the command is given an earlier rewrite's log."""
    sites = known_sites(image, found)
    if not sites:
        cause = no_site_cause(image, found, hints, log_aside, log_hint)
        raise NothingToDo(f"{image.path}: no ftrace call site found: {cause}")
    if selection.everything:
        return
    missing = unmatched_selection(sites, selection)
    if missing:
        verb = agreeing(len(missing), "matches", "match")
        extra = [*record_not_slot(sites, selection), *unrecorded_hint(image, found, sites, log_aside, log_hint)]
        said = "".join(f"; {h}" for h in extra)
        raise NothingToDo(f"{image.path}: {', '.join(missing)}: {verb} none of its {counted(len(sites), 'site')}{said}")
    if not any(selection.matches(s) for s in sites):
        raise NothingToDo(
            f"{image.path}: {selection_text(selection)}: leaves none of its {counted(len(sites), 'site')}"
        )


def record_not_slot(sites: Sequence[Site], selection: Selection) -> list[str]:
    """For each ``--addr`` that names no call slot but a site's record (patchable: the first nop,
    4 bytes before; the ``record`` scan's JSON and CSV print), which site it meant."""
    out = []
    for s in sites:
        delta = LAYOUTS[s.variant].record_offset
        if not delta:
            continue
        if s.addr is not None and s.addr + delta in selection.addrs:
            out.append(f"{s.addr + delta:#x} is the record of the site at {s.addr:#x} (--addr names the call slot)")
        elif (s.section, s.offset + delta) in selection.section_places:
            record = section_place_text(s.section, s.offset + delta)
            slot = section_place_text(s.section, s.offset)
            out.append(f"{record} is the record of the site at {slot} (--addr names the call slot)")
    return out


def selection_text(selection: Selection) -> str:
    """``selection`` as the options that make it."""
    parts = [f"--only {g}" for g in selection.only] + [f"--exclude {g}" for g in selection.exclude]
    parts += [f"--section {name}" for name in selection.sections] + [f"--addr {a:#x}" for a in sorted(selection.addrs)]
    parts += [f"--addr {section_place_text(*p)}" for p in sorted(selection.section_places)]
    return " ".join(parts) or "every site"


# -- undo and verify ------------------------------------------------------------------------


_Raw = TypeVar("_Raw", bytes, bytearray)


def _content(path: Path, raw: _Raw) -> tuple[_Raw | bytes, Compression]:
    kind = detect_compression(bytes(raw[:8]))
    return (decompress(path, bytes(raw), kind) if kind is not Compression.NONE else raw), kind


def read_file(path: Path) -> tuple[bytes, bytes, Compression]:
    """(bytes on disk, content after decompression, compression): a file as undo, verify and
    prenop read it (compression recognised by magic, not by name)."""
    raw = _on_disk(path)
    content, kind = _content(path, raw)
    return raw, content, kind


def _read_and_hash(path: Path) -> tuple[bytearray, str]:
    """The file's bytes, in a buffer undo restores them in (:meth:`Log.revert`), and their sha256."""
    try:
        raw = read_regular_mutable(path)
    except OSError as e:
        raise RewriteError(f"{path}: {e.strerror}") from None
    return raw, _sha256(raw)


class Settled(NamedTuple):
    """The logs beside a file undone in place: ``beside`` now describes it (None: no log does)."""

    log: Path  # the log of the step undone that was beside the file: removed, or replaced by its base
    beside: Path | None
    came_from: Path | None  # the archived name the base log was moved back from


class Undone(NamedTuple):
    """What ``undo`` did: the file written, the log it undid, and (``--in-place`` with the file's own
    log beside it) the log now beside the file: its base's, put back under the default name, or
    None when the file is the original again and the undone step's log was removed."""

    output: Path
    log: Log
    settled: Settled | None
    # The file already was the log's input (undone before): nothing undone; with -o the output is
    # a copy of it, in place no file was written, and the log beside it settled (``settled``).
    already_input: bool = False
    # The sha256 of the bytes written: the log's input's, unless the file undone was stored otherwise
    # than the log's output (decompressed since): then the original content, stored as that file.
    sha256: str = ""


def _size_note(patched: Path, size: int, output: int) -> str:
    """What the size of a file that is not its log's output suggests: cut short, or (as long as the
    output) changed since the rewrite, which verify shows byte by byte; "for another file" alone
    read as the wrong log for a file edited after its rewrite."""
    if size < output:
        return f"; {patched} is {size} bytes, its output {output}: truncated?"
    if size == output:
        return (
            f"; {patched} is as long as its output: changed since the rewrite? `mcountrw verify ORIGINAL {patched}` "
            "counts the bytes that differ"
        )
    return ""


@collector_paused()
def undo_file(patched: Path, log_path: Path, output: Path | None, in_place: bool = False) -> Undone:
    """Restore the input bytes of the step ``log_path`` describes. Refuses a log made for another
    file. In place, the log beside the file is settled too (:func:`_settle_beside`), so that it
    describes what the file now is."""
    out = check_output_path(patched, output, in_place, dry_run_option=False)
    # The patched file is read and hashed in a thread (hashlib lets go of the GIL) while the log,
    # 67,000 lines for a vmlinux, is parsed.
    with ThreadPoolExecutor(max_workers=1) as pool:
        read = pool.submit(_read_and_hash, patched)
        log = load(log_path, sites=False)
        raw, raw_sha = read.result()
    content, kind = _content(patched, raw)
    if not in_place:
        check_output_name(out, kind)
    facts = log.header
    # An uncompressed file is its own content: its hash is the one the reader thread made.
    content_sha = raw_sha if content is raw else _sha256(content)
    already = facts.made_from(raw_sha, content_sha) and not facts.describes(raw_sha, content_sha)
    if not already and not facts.describes(raw_sha, content_sha):
        raise LogError(
            f"{log_path}: this log is for another file (sha256 of {patched} does not match its output"
            f"{_size_note(patched, len(raw), facts.output.size)})"
        )
    if out == log_path or (out.exists() and out.resolve() == log_path.resolve()):
        raise OutputError(f"{out}: the output would overwrite the patch log")
    _check_not_a_step_before(facts.base, log_path, ((out, f"-o {out}: is"),))
    if already:
        return _undone_before(patched, out, raw, log_path, log, in_place)
    check_extent(log, str(log_path), log.input_size(len(content)))
    try:
        original = log.revert(content, in_place=True)  # the file's bytes, read for this: not used again
    except WordMismatch as e:
        raise LogError(f"{log_path}: undoing it on {patched} fails: {e} (the log and the file disagree)") from None
    new_raw, raw_want = log.original_file(original, kind)
    # Written to its temporary file while the result is hashed; published only if the hash is right.
    mode = patched.stat().st_mode & 0o7777
    written: Future[Pending] | None = None
    try:
        with ThreadPoolExecutor(max_workers=1) as pool:
            written = pool.submit(write_temp, out, new_raw, mode)
            # Each 46 MB hash once (40 ms): an uncompressed original is the file written.
            original_sha = _sha256(original)
            new_sha = original_sha if new_raw is original else _sha256(new_raw)
        right = original_sha == facts.input.content_sha256
        exact = raw_want is None or new_sha == raw_want
        if not right:
            raise LogError(f"{log_path}: undo does not give back the original (sha256 mismatch); log and file disagree")
        if not exact:
            raise LogError(
                f"{log_path}: undo gives back the original content, but compressing it again does not give the "
                f"original {kind.value} bytes (sha256 differs: made with other xz settings, or by another liblzma?)"
            )
        commit_all([written.result()])
    except BaseException:  # a mismatch, Ctrl-C or SIGTERM (even while the pool is joined): no file stays behind
        if written is not None and written.exception() is None:  # waits for the writer thread
            written.result().discard()
        raise
    return Undone(out, log, _settle_beside(patched, log_path, log.header) if in_place else None, sha256=new_sha)


def _undone_before(
    patched: Path, out: Path, raw: bytes | bytearray, log_path: Path, log: Log, in_place: bool
) -> Undone:
    """An undo rerun (the file already is the log's input): with -o the copy it asks for; in
    place no file is written, and the log beside the file is settled as the undo would have
    (:func:`_settle_beside`): an undo interrupted between the two (or one with ``--log``
    elsewhere, before it settled that log) left it there contradicting the file, and the rerun
    said there was nothing to undo and left it too."""
    if not in_place:
        atomic_write(out, raw, patched.stat().st_mode & 0o7777)
    return Undone(out, log, _settle_beside(patched, log_path, log.header) if in_place else None, already_input=True)


def _settle_beside(patched: Path, log_path: Path, undone: Header) -> Settled | None:
    """After an in-place undo, the log beside the file (:func:`_settle_logs`): the file's own log,
    when it is the log undone, or, with ``--log L`` elsewhere, when it describes the step undone
    (L's input and output: a copy of L, or the log the rewrite wrote there). It was left there,
    describing the file as it no longer is: every later scan warned that it was ignored (changed
    since, or undone), and an in-place rewrite refused the file for it. A log there of another
    step (or a damaged one) is not this undo's to judge: it stays."""
    beside = default_log_path(patched)
    if same_place(log_path, beside):
        return _settle_logs(log_path, undone)
    try:
        header = read_header(beside)
    except LogError:
        return None
    if header is None or not _same_step(header, undone):
        return None
    return _settle_logs(beside, header)


def _same_step(a: Header, b: Header) -> bool:
    """Two logs of one rewrite: the same input and the same output, byte for byte."""
    return a.input.sha256 == b.input.sha256 and a.output.sha256 == b.output.sha256


def _settle_logs(log_path: Path, header: Header) -> Settled:
    """After an in-place undo with the file's own log: an in-place rewrite had moved the log it
    built on aside (:func:`archived_log`); it describes the file again and takes its name back,
    replacing the undone step's log. Otherwise (no base: the file is the original; a base kept
    elsewhere, ``--input-log``; or one deleted since) the undone step's log, which describes a file
    that no longer exists, is removed: left beside the file, every later scan warned of it and an
    in-place rewrite refused the file for it."""
    base = header.base
    if base is not None:
        # Looked for beside the log, whatever directory the rewrite was run from.
        archived = log_path.with_name(Path(base.path).name)
        try:
            right = archived != log_path and _sha256(archived.read_bytes()) == base.sha256
        except OSError:
            right = False
        if right:
            os.replace(archived, log_path)
            return Settled(log_path, log_path, archived)
    log_path.unlink(missing_ok=True)
    return Settled(log_path, None, None)


@dataclass(frozen=True)
class VerifyResult:
    """What ``verify`` found: ``ok`` iff the two files differ exactly as the log says; ``reason`` says how."""

    ok: bool
    reason: str
    already_input: bool = False
    # The sha256 of the bytes written: the log's input's, unless the file undone was stored otherwise
    # than the log's output (decompressed since): then the original content, stored as that file.
    sha256: str = ""  # not ok: the patched file is the log's input (undone since)


def _chain_note(log: Log, log_path: Path) -> str:
    """Where a chain's log was made from: a log that builds on another (``base``) describes one step,
    from the previous step's output (its ``input``), not from the chain's first original."""
    base = log.header.base
    if base is None:
        return ""
    found = find_base(base, log_path)
    return (
        f"; this log is one step of a chain: it was made from {log.header.input.path}, the output of its base "
        f"log {base.path if found is None else found} (verify each step against its own input)"
    )


def _swapped_note(orig: Data, got: Data, patched: Path, log: Log) -> str:
    """When ORIGINAL is the log's output and PATCHED its input: the two given the other way round
    (``verify v.nop v``), which said only that ORIGINAL was not the log's input."""
    facts = log.header
    if _sha256(orig) != facts.output.content_sha256 or _sha256(got) != facts.input.content_sha256:
        return ""
    return f"; it is the log's output, and {patched} its input: ORIGINAL and PATCHED given the other way round?"


@collector_paused()
def not_the_output_file(patched: Path, raw: bytes, compression: Compression, out: FileFacts) -> str | None:
    """Why a file whose content is the log's output is still not that file, byte for byte: it was
    compressed again (another level, check or tool) or stored otherwise (decompressed). Its ELF is
    right, and undo still gives the original back; but verify promises the bytes, and the log's
    hash no longer names this file (scan --log refuses it). ``out``: the log's output. None when
    the bytes are the log's."""
    return _not_the_file(patched, raw, compression, out, "output")


def _not_the_file(path: Path, raw: bytes, compression: Compression, facts: FileFacts, role: str) -> str | None:
    """Why a file whose content is the log's ``role`` file (input or output) is not that file."""
    if _sha256(raw) == facts.sha256:
        return None
    return (
        f"{path}: its content is exactly the log's {role}, but the file is not: {_stored(compression)}, sha256 "
        f"{_sha256(raw)[:16]}...; the log's {role}: {_stored(facts.compression)}, sha256 {facts.sha256[:16]}... "
        "(compressed again since?)"
    )


def _stored(compression: Compression) -> str:
    return "uncompressed" if compression is Compression.NONE else f"{compression.value}-compressed"


def verify_files(original: Path, patched: Path, log_path: Path) -> VerifyResult:
    """Exit 0 iff the byte difference between the two files is exactly what the log says."""
    log = load(log_path, sites=False)
    orig_raw, orig, orig_compression = read_file(original)
    try:
        raw, got, compression = read_file(patched)
    except ImageError as e:  # e.g. one flipped byte in a .ko.xz: its check fails
        return VerifyResult(False, unreadable_output(e, log_path))
    if _sha256(orig) != log.header.input.content_sha256:
        swapped = _swapped_note(orig, got, patched, log)
        why = f"{original} is not the file this log was made from (sha256 differs){swapped}"
        return VerifyResult(False, why + _chain_note(log, log_path))
    # The difference verify vouches for is between the files: an ORIGINAL decompressed or
    # compressed again since has the log's content but not its bytes (before, it passed).
    not_input = _not_the_file(original, orig_raw, orig_compression, log.header.input, "input")
    if not_input is not None:
        return VerifyResult(False, not_input)
    check_extent(log, str(log_path), len(orig))
    try:
        expected = bytes(log.replay(orig))
    except RewriteError as e:
        return VerifyResult(False, f"replaying the log on {original} fails: {e}")
    if expected == got:
        container = not_the_output_file(patched, raw, compression, log.header.output)
        if container is not None:
            return VerifyResult(False, container)
        return VerifyResult(
            True, f"{patched} differs from {original} exactly as {log_path} says ({counted(len(log.edits), 'edit')})"
        )
    if _sha256(got) == log.header.input.content_sha256:
        what = "the original" if log.header.base is None else "the input of the step it describes"
        return VerifyResult(
            False,
            f"{patched} already is {what} (the input of {log_path}, sha256 {log.header.input.sha256[:16]}...), "
            "not its output: undone since, or never rewritten",
            already_input=True,
        )
    return VerifyResult(False, replay_mismatch(original, patched, orig, got, expected))


def unreadable_output(error: ImageError, log_path: Path) -> str:
    """What verify and ``prenop --verify`` say of a file a patch log describes that cannot be read
    (its xz check fails, it is cut short): a finding, MISMATCH and exit 1, not bad input, since the
    log says what the file should be and the log's output reads whole. ORIGINAL, or the pristine
    file of ``--against``, that cannot be read is bad input (exit 2): nothing can be checked."""
    return f"{error}: not the output of {log_path}, which reads whole (damaged since it was written?)"


def replay_mismatch(original: Path, patched: Path, orig: bytes, got: bytes, expected: bytes) -> str:
    """How ``got`` (PATCHED's ELF) differs from ``expected`` (the log replayed on ORIGINAL): its
    size, or how many bytes and the first, with what the log does there. "offset 0x100000 holds
    69, the log says 68" read as a write the log made, of a byte the log never touches; and one
    byte named hid thousands more. Also ``prenop --verify --against``'s."""
    if len(expected) != len(got):
        return (
            f"{patched}: its ELF is {counted(len(got), 'byte')}, where the log replayed on {original} makes "
            f"{counted(len(expected), 'byte')}: not the file the log made (another file, or one changed since)"
        )
    differ = np.flatnonzero(np.frombuffer(got, np.uint8) != np.frombuffer(expected, np.uint8))
    first, n = int(differ[0]), len(differ)
    if orig[first] == expected[first]:
        there = "as the original does (the log leaves that byte as it was)"
    else:
        there = f"a byte the log writes (the original holds {orig[first]:02x})"
    return (
        f"{patched}: {counted(n, 'byte')} {agreeing(n, 'differs', 'differ')} from what the log makes of "
        f"{original}; {agreeing(n, 'it is', 'the first is')} at offset {first:#x}: {got[first]:02x} where the "
        f"log's output holds {expected[first]:02x}, {there}"
    )
