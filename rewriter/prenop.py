"""Offline pre-nopping of whole trees: a policy decides, per site, which functions stay traceable.

Strategy: every file is independent, so a tree is a list of :class:`Target` (what to read, where to
write, its name in the tree, its patch log), processed in worker processes in batches, biggest
file first (a vmlinux takes as long as several hundred modules). Each file goes through
:func:`prenop_target`:

1. Read it (decompressed). If its patch log exists and the file is that log's *output*, undo the
   log in memory: the policy is always applied to the **original** file, so one log always leads
   back to the pristine input, and a changed policy re-derives instead of stacking. This is also
   the only way to see sites this tool nopped before: a site that is ``nop; nop`` and has lost
   its record is invisible to :func:`rewriter.sites.scan` by design.
2. Scan the original and decide each site with the policy (:meth:`Policy.for_file`). The sites to
   nop are handed to ``rewrite`` as they are, never re-matched by name as globs.
3. :func:`rewriter.rewrite.rewrite` to ``nopped`` with dropped records (``--drop-records``: the
   kernel's boot-time init accepts at a recorded place only the words the compiler built there).
   On 6.1 (mprofile) that nops ``mflr`` and ``bl`` and drops the records; on 6.12 (patchable) and
   7.2 (ool) the sites already are nops as built, so only their records go. A signed module's
   signature is re-signed or stripped as asked.
4. If the destination already holds exactly that result and its log says so, nothing is written
   (``unchanged``): running twice changes nothing. A file with no site to nop is not written
   either, and gets no log (``nothing to nop``; a file with no site at all says why in its
   message: ``rewriter.files.no_site_cause``). With ``-o`` it is copied there, a file with no
   site at all only once the run is known to have found a site somewhere: a run that found none
   has nothing to do and writes nothing (:func:`no_site_anywhere`).
5. Otherwise write the log, then the file, each atomically (``rewriter.output``), and read the
   file back. A compressed file is compressed again the way its original was (its log's recipe,
   ``rewriter.elf.compress``), so that undo gives back the original's exact bytes.

Logs record the file's path *within the tree* (``kernel/fs/ext4/ext4.ko``), never where the tree
happens to be, and nothing carries a timestamp, so the same inputs give byte-identical outputs and
logs wherever they are built. Re-signing keeps that property for RSA keys (PKCS#1 v1.5 is
deterministic), not for ECDSA ones.

A re-signed module is its log's output: the module nopped, its old signature cut off (a
``truncate`` edit, exactly as ``--strip-signature`` logs it), and the new signature trailer
appended (an ``append`` edit), so that ``mcountrw undo`` and ``mcountrw verify`` take it like any
other output. (Logs written before the ``append`` edit existed describe the module without its
new trailer; ``prenop --undo`` and ``--verify`` still recognise "the log's output plus one
trailer" for them.)

Failures are per file: each failed file is reported with one line and left untouched; the others
are still done. A refusal the run's settings decide alike for many files is found before the first
write instead (:func:`refuse_signed_without_choice`): the tree is left as it was, not half done.
"""

from __future__ import annotations

import enum
import hashlib
import os
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Final, NamedTuple, NoReturn

from rewriter.batch import Entry, EntryKind, first_of_each, map_batches, name_named, tree_entries, tree_name
from rewriter.edits import Append
from rewriter.elf.compress import MODULE_SUFFIXES, Compression, Restore, detect_compression
from rewriter.elf.image import Image, Kind
from rewriter.elf.modname import module_name
from rewriter.elf.release import kernel_release
from rewriter.elf.signature import MODULE_SIG_MAGIC, TrailerError, parse_trailer
from rewriter.errors import Contradicted, ImageError, LogError, OtherRelease, RewriteError, WordMismatch
from rewriter.files import (
    ScanHints,
    known_sites,
    no_site_cause,
    not_the_output_file,
    read_file,
    refuse_contradicted_generation,
    replay_mismatch,
    unreadable_output,
    zeroed_records,
)
from rewriter.kernels import Kernel, Kernels
from rewriter.locs import Locs, loop_for_modules, unchecked_drops
from rewriter.log import (
    FileFacts,
    Header,
    Log,
    default_log_path,
    load,
    log_path_in,
    own_name_place,
    read_header,
    render,
)
from rewriter.output import TMP_SUFFIX, NewFile, Pending, atomic_symlink, land, publish, stage
from rewriter.policy import Policy, Verb
from rewriter.prose import counted
from rewriter.reading import not_a_file, open_regular, read_regular
from rewriter.rewrite import Options, Rewrite, Selection, rewrite, target_state
from rewriter.sign import Signer, SigningKey
from rewriter.sites import Scan, Site, kernel_loop, scan
from rewriter.states import SiteState


class PrenopError(RewriteError):
    """Bad arguments for a tree, or a file that does not fit its log."""


class RewrittenWithoutLog(PrenopError):
    """A file an earlier rewrite wrote (its records zeroed) with no patch log where the run looks
    (:func:`_refuse_nopped_without_log`); over a tree, most often a rerun not given its ``--log-dir``."""

    def __init__(self, message: str, zeroed: int, beside: Path | None = None) -> None:
        super().__init__(message)
        self.zeroed = zeroed
        self.beside = beside  # with --log-dir: a patch log beside the file (:func:`_log_beside`)


class Status(enum.Enum):
    NOPPED = "nopped"  # written now
    UNCHANGED = "unchanged"  # already what the policy gives, by its log: nothing written
    NOTHING = "nothing to nop"  # the policy keeps every site, or there are none (the message says why)
    RESTORED = "restored"  # nopped before; the policy now keeps every site: the original written back
    UNDONE = "undone"
    ORIGINAL = "already original"  # --undo, --verify: the file is its log's input (undone before)
    NO_LOG = "no log"  # --undo/--verify: the file was never changed
    VERIFIED = "verified"
    MISMATCH = "mismatch"  # --verify: the file is not what its log says
    FAILED = "failed"


class Target(NamedTuple):
    source: Path  # the file read
    dest: Path  # the file written (the source itself with --in-place)
    rel: str  # its path within the tree, as logs and reports name it
    log: Path
    original: Path | None = None  # --verify --against: the pristine file
    # --log-dir: where a log named by the file's own name is (the place of a file named by itself,
    # which a file named below a directory named with it had before its name was its path below
    # that directory); None where that is ``log`` itself (:func:`log_by_name`)
    by_name: Path | None = None


class FileReport(NamedTuple):
    rel: str
    status: Status
    kind: str = ""  # vmlinux, module, ...
    nopped: int = 0  # sites the log nops (relative to the original file)
    kept: int = 0  # sites the policy keeps
    left_recorded: int = 0  # sites to nop whose records stay (a record the rewriter could not drop)
    unplaced_records: int = 0  # records that point at no site the scanner knows
    signature: str = ""  # "", "stripped", "re-signed"
    message: str = ""  # the error, what --verify found, or why a file has no sites
    rules: frozenset[int] = frozenset()  # the policy rules (indexes) that decide at least one site
    unchecked: int = 0  # records dropped from a patchable module with no kernel's loop to check (rewriter.locs)
    copied: bool = False  # nothing to nop, and -o's output was written as a copy of it (a dry run: would be)
    built_for: str = ""  # failed as a module of another release than the run's vmlinux: the release it names

    @property
    def no_sites(self) -> bool:
        """The file has no ftrace site at all (``message`` says the likely cause)."""
        return self.status is Status.NOTHING and bool(self.message)


@dataclass(frozen=True)
class Settings:
    policy: Policy
    strip_signature: bool = False
    signing: SigningKey | None = None
    dry_run: bool = False
    replace_stale_logs: bool = False
    hints: ScanHints = field(default_factory=ScanHints)  # --mcount-addr, --generation: a stripped vmlinux
    check_r0: bool = False  # --check-r0: refuse a function that reads r0 after its site
    kernels: Kernels = field(default_factory=Kernels)  # the run's vmlinux images, which load its modules (run())


NOP = Options(SiteState.NOPPED, drop_records=True)


# -- targets --------------------------------------------------------------------------------


class Copy(NamedTuple):
    """An entry of a tree that ``-o`` copies as it is (:func:`copy_others`): a file that is no
    module (``modules.order``, a vmlinux the tree holds, ...), a symbolic link, or a directory."""

    source: Path
    dest: Path
    rel: str
    kind: EntryKind  # FILE or KERNEL (a copy of the bytes), LINK (a new link), DIRECTORY (made)


@dataclass(frozen=True)
class Inputs:
    """What a run reads and what its ``-o`` copies (:func:`gather`)."""

    targets: tuple[Target, ...]
    copies: tuple[Copy, ...] = ()  # -o of a tree: its entries that are no module (none without -o)
    kernels: tuple[Path, ...] = ()  # PowerPC64 executables below a directory that no file argument names
    specials: tuple[Path, ...] = ()  # FIFOs, sockets and devices below a directory: never opened nor copied
    errors: tuple[str, ...] = ()  # one line for each input, or directory, that cannot be read


def gather(
    paths: Sequence[Path],
    *,
    output: Path | None,
    in_place: bool,
    log_dir: Path | None,
    against: Path | None = None,
    logs_beside_source: bool = False,
    whole: bool = True,
    check_names: bool = True,
    names_for: str | None = None,
) -> Inputs:
    """One :class:`Target` per file: files named, and modules (``*.ko[.xz|.gz|.zst]``) found below
    directories named, sorted; with ``-o``, the trees' other entries to copy. Symlinks inside
    directories are not followed. Without ``log_dir`` a log sits beside the file it describes: the
    output (prenop), or with ``logs_beside_source`` the input (undo and verify read the logs of
    files prenop wrote).

    Each input is opened for reading here, before any work, and each -o copy of a file: one error
    line for each that cannot be (and for each directory that cannot be listed), in
    :attr:`Inputs.errors`, which a run that writes refuses whole. It rewrote the rest and left the
    unreadable module as it was, a tree that then passed for done; ``policy check``, which writes
    nothing, checks the others and reports these lines, as scan does (``whole`` False: the lines
    then say only what the system says, not that a tree must be read whole).

    Two files of one name in their trees are refused (not with ``check_names`` False: ``policy
    check`` with no ``--log-dir``, which writes nothing), saying where the name is used,
    ``names_for`` (None: where this run uses it, :func:`_where_named`)."""
    if in_place and output is not None:
        raise PrenopError("give either --in-place or -o OUT, not both")
    found, others, errors = _named(paths, in_place, whole)
    if output is not None:
        _check_output_apart(output, paths)
    # A file named twice is one file, by a link too (read through it: `prenop F LINK -o OUT` took
    # OUT for a tree of two copies, and was refused as `OUT/F: directory OUT does not exist`).
    found = first_of_each(found, lambda e: Path(os.path.realpath(e[0])) if e[2] else e[0])
    unreadable = _unreadable(f for f, _, _ in found)
    errors += [f"{f}: {why}{_read_whole(f, paths) if whole else ''}" for f, why in unreadable.items()]
    found = [entry for entry in found if entry[0] not in unreadable]
    others = _tree_content(first_of_each(others, lambda o: o[0].path), paths, [f for f, _, _ in found], log_dir)
    copies = _copies(others, output, in_place)
    unreadable = _unreadable(c.source for c in copies if c.kind in _BYTES)
    errors += [f"{f}: {why}: -o copies the whole tree, this file too" for f, why in unreadable.items()]
    files = [c for c in copies if c.kind is not EntryKind.DIRECTORY]
    if check_names:
        where = names_for or _where_named(output, log_dir, against)
        _refuse_shared_names([(f, rel) for f, rel, _ in found] + [(c.source, c.rel) for c in files], where)
    single_file = len(found) == 1 and found[0][2]
    place = partial(_target, single_file, output, in_place, log_dir, against, logs_beside_source)
    out = [place(f, rel) for f, rel, _ in found]
    kernels = tuple(e.path for e, _ in others if e.kind is EntryKind.KERNEL)
    specials = tuple(e.path for e, _ in others if e.kind is EntryKind.SPECIAL)
    return Inputs(tuple(out), tuple(copies), kernels, specials, tuple(errors))


def _named(
    paths: Sequence[Path], in_place: bool, whole: bool
) -> tuple[list[tuple[Path, str, bool]], list[tuple[Entry, str]], list[str]]:
    """What ``paths`` name: (file, name in its tree, named directly) for each file and each module
    below a directory; the trees' other entries, each with its name; one line for each directory
    that cannot be listed. A path that is neither, or (in place) a link to a file, is refused."""
    found: list[tuple[Path, str, bool]] = []
    others: list[tuple[Entry, str]] = []
    errors: list[str] = []
    trees: set[str] = set()
    for path in paths:
        if path.is_dir():
            if os.path.realpath(path) in trees:  # one tree named twice, by a link too: read once
                continue
            trees.add(os.path.realpath(path))
            modules, rest, errs = _tree_below(path)
            found += [(f, tree_name(f, path), False) for f in modules]
            others += [(e, tree_name(e.path, path)) for e in rest]
            errors += [line + (_read_whole(path, [path]) if whole else "") for line in errs]
        elif path.is_file():
            if in_place and path.is_symlink():
                raise PrenopError(f"{path}: is a symlink; --in-place would replace the link: name the file itself")
            found.append((path, name_named(path, paths), True))
        else:
            raise PrenopError(f"{path}: {not_a_file(path)}")
    return found, others, errors


def _target(
    single_file: bool,
    output: Path | None,
    in_place: bool,
    log_dir: Path | None,
    against: Path | None,
    logs_beside_source: bool,
    f: Path,
    rel: str,
) -> Target:
    """The :class:`Target` of the file ``f``, named ``rel`` in its tree (see :func:`gather`)."""
    if in_place or output is None:
        dest = f
    elif single_file and not output.is_dir():
        dest = output
    else:
        dest = output / rel
    beside = f if logs_beside_source else dest
    # A log is named for the file it describes, the output: one file written under a new name
    # (-o OUT) has its log under OUT's name, where --verify, --undo and scan of OUT look.
    described = dest.name if single_file and not logs_beside_source else rel
    log = log_path_in(log_dir, described) if log_dir is not None else default_log_path(beside)
    orig = None
    if against is not None:
        orig = against if (single_file and not against.is_dir()) else against / rel
    if output is not None and dest.exists() and dest.samefile(f):  # a hard link, a second name
        raise PrenopError(f"-o {output}: {dest} is {f}, an input: use --in-place to rewrite it")
    by_name = own_name_place(log_dir, described) if log_dir is not None else None
    return Target(f, dest, rel, log, orig, by_name)


def _tree_below(root: Path) -> tuple[list[Path], list[Entry], list[str]]:
    """The modules below ``root`` (in the order of their names in the tree), its other entries,
    and one line for each directory that cannot be listed (:func:`rewriter.batch.tree_entries`)."""
    entries, errors = tree_entries(root)
    modules = sorted((e.path for e in entries if e.kind is EntryKind.MODULE), key=lambda p: p.relative_to(root).parts)
    rest = [e for e in entries if e.kind is not EntryKind.MODULE]
    return modules, rest, errors


def _read_whole(path: Path, roots: Sequence[Path]) -> str:
    """The end of the line for an input that cannot be read below one of ``roots``: a tree is read
    whole, or not at all (a tree rewritten in part, its unreadable corner left as it was, would
    pass for done)."""
    for root in roots:
        if root.is_dir() and path.is_relative_to(root):
            return f": every module below {root} must be readable"
    return ""


_BYTES: Final = frozenset({EntryKind.FILE, EntryKind.KERNEL})
"""The entries a copy reads (a link is made anew from its target, a directory made)."""


def _tree_content(
    others: Sequence[tuple[Entry, str]], paths: Sequence[Path], inputs: Sequence[Path], log_dir: Path | None
) -> list[tuple[Entry, str]]:
    """``others`` but what is the run's, not the tree's: a file a file argument names too (by
    device and inode: by any path), an input whose output is its rewrite, not a copy of it; the
    patch log beside an input, which describes it and is read (an -o copy of an old log replaced
    the log the run had just written beside its output); ``--log-dir`` and what is below it, when
    it lies in a tree (a rerun of `-o OUT --log-dir TREE/logs TREE` was refused, each log a copy
    its own rewrite would replace, and `--undo -o` copied the logs into the tree it restored); a
    temporary file a killed run left."""
    named = _identities(p for p in paths if not p.is_dir())
    logs = {default_log_path(f) for f in inputs}
    runs = None if log_dir is None else os.path.abspath(log_dir)
    out = []
    for e, rel in others:
        if e.path in logs or e.path.name.endswith(TMP_SUFFIX):
            continue
        if runs is not None and Path(os.path.abspath(e.path)).is_relative_to(runs):
            continue
        if named and _identity(e.path) in named:
            continue
        out.append((e, rel))
    return out


def _unreadable(files: Iterable[Path]) -> dict[Path, str]:
    """The files of ``files`` that cannot be opened for reading (a regular file: a FIFO never is
    opened this way), each with what the system says."""
    out = {}
    for f in files:
        try:
            fd, _ = open_regular(f)
        except OSError as e:
            out[f] = e.strerror or str(e)
            continue
        os.close(fd)
    return out


def _identity(path: Path) -> tuple[int, int] | None:
    """``path``'s (device, inode) without following a last link; None if it cannot be stat'ed."""
    try:
        st = path.lstat()
    except OSError:
        return None
    return st.st_dev, st.st_ino


def _identities(paths: Iterable[Path]) -> set[tuple[int, int]]:
    """The files ``paths`` name (links followed: a file argument is read through them)."""
    out: set[tuple[int, int]] = set()
    for p in paths:
        try:
            st = p.stat()
        except OSError:
            continue
        out.add((st.st_dev, st.st_ino))
    return out


def _copies(others: Sequence[tuple[Entry, str]], output: Path | None, in_place: bool) -> list[Copy]:
    """What ``-o OUT`` copies of the trees: every entry that is no module, at its name in the tree
    (the output is a copy of the tree, untouched files included), but FIFOs, sockets and devices.
    A file that is also a file argument is not among ``others``: its output is its rewrite."""
    if output is None or in_place:
        return []
    return [Copy(e.path, output / rel, rel, e.kind) for e, rel in others if e.kind is not EntryKind.SPECIAL]


def _where_named(output: Path | None, log_dir: Path | None, against: Path | None) -> str:
    """Where a run names files by their names in their trees: the places ``-o``, ``--log-dir`` and
    ``--against`` give them, and in any run its report (each file's line, ``--report``'s ``path``).
    The refusal said "in the output and the logs" of every run, one with neither included."""
    places = [f"{option} {path}" for option, path in (("-o", output), ("--log-dir", log_dir), ("--against", against))]
    given = [p for p, path in zip(places, (output, log_dir, against), strict=True) if path is not None]
    return f"in {', '.join(given)} and the report" if given else "in the report (each file's line and --report)"


def _refuse_shared_names(files: Sequence[tuple[Path, str]], where: str) -> None:
    """Two files would have one name ``where``. No other name would do: two module trees named each
    are most often Debian's 4k- and 64k-page ones, both ``.../kernel``, so a name that took the
    tree's own name in would still be shared, and one that took the path given would change with
    how the trees are named (``--log-dir`` would then miss the logs of a run that named them
    otherwise); the directory above both gives each file its path below it, every run alike."""
    seen: dict[str, Path] = {}
    for f, rel in files:
        if rel in seen:
            raise PrenopError(
                f"{f} and {seen[rel]} would share the name {rel} {where}: name a directory above both "
                "(a file's name is its path below the directory named), or run once per tree"
            )
        seen[rel] = f


def _check_output_apart(output: Path, paths: Sequence[Path]) -> None:
    """``-o OUT`` is neither an input nor inside a tree named: OUT equal to the input rewrote it in
    place (with a log inside the tree), and OUT inside the tree made a second run take its own
    output for input (``OUT/OUT/...``). Refused before any file is read."""
    out = output.resolve()
    for path in paths:
        src = path.resolve()
        if out == src:
            raise PrenopError(f"-o {output}: is the input {path}: use --in-place to rewrite it")
        if path.is_dir() and out.is_relative_to(src):
            raise PrenopError(
                f"-o {output}: inside the tree {path}, which the run reads: a second run would take "
                "its output for input; write it outside the tree"
            )


# -- one file -------------------------------------------------------------------------------


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _unsigned(content: bytes) -> bytes | None:
    """``content`` without a trailing module signature; None if it has none."""
    try:
        trailer = parse_trailer(content)
    except TrailerError:
        return None
    return None if trailer is None else content[: trailer.elf_end]


def _as_output(content: bytes, facts: Header) -> bytes | None:
    """The log's output inside ``content``: all of it, or (a log written before re-signing was
    logged as an ``append`` edit) all but the signature trailer appended then; None if
    ``content`` is not the log's output."""
    if _sha(content) == facts.output.content_sha256:
        return content
    body = _unsigned(content)
    return body if body is not None and _sha(body) == facts.output.content_sha256 else None


class _Original(NamedTuple):
    """The pristine file behind what is on disk: its content, and how to get its file bytes
    (``raw`` as read, or compressed again by the old log's recipe: a whole xz compression, so only
    done when they are written or logged, never on a rerun that changes nothing)."""

    content: bytes
    raw: bytes | None  # None: rebuild from ``log``
    log: Log | None
    was_output: bool  # what is on disk is the old log's output

    def file_bytes(self, t: Target, compression: Compression) -> bytes:
        if self.raw is not None:
            return self.raw
        assert self.log is not None
        return _original_file(t, self.log, self.content, compression)


def _original(t: Target, raw: bytes, content: bytes, facts: Header | None, replace_stale: bool) -> _Original:
    if facts is None or _sha(content) == facts.input.content_sha256:
        return _Original(content, raw, None, False)
    output = _as_output(content, facts)
    if output is not None:
        original, log = _undo_with_log(t, output, facts)
        return _Original(original, None, log, True)
    if replace_stale:
        return _Original(content, raw, None, False)
    raise PrenopError(
        f"{t.source}: is neither the input nor the output of {t.log} (rebuilt since?); "
        "pass --replace-stale-logs to take it as a new input"
    )


def _undo_with_log(t: Target, output: bytes, facts: Header, log: Log | None = None) -> tuple[bytes, Log]:
    log = load(t.log) if log is None else log
    try:
        original = bytes(log.revert(output))
    except WordMismatch as e:
        raise LogError(f"{t.log}: undoing it on {t.source} fails: {e} (the log and the file disagree)") from None
    if _sha(original) != facts.input.content_sha256:
        raise LogError(f"{t.log}: undoing it on {t.source} does not give back its input (sha256 differs)")
    return original, log


def _original_file(t: Target, log: Log, original: bytes, compression: Compression) -> bytes:
    """The original file's bytes (compressed as it was), checked against the log's sha256."""
    raw, want = log.original_file(original, compression)
    if want is not None and _sha(bytes(raw)) != want:
        raise LogError(
            f"{t.log}: the original content of {t.source} is back, but compressing it again does not give the "
            f"original {compression.value} bytes (sha256 differs: made with other xz settings, or by another liblzma?)"
        )
    return bytes(raw)


class _Decided(NamedTuple):
    """One file read and decided (:func:`_decide`): what :func:`prenop_target` rewrites."""

    current: bytes  # the file's content as it is (decompressed)
    compression: Compression
    facts: Header | None  # its log's header, if it has a log
    orig: _Original
    image: Image  # the original
    sc: Scan
    chosen: list[Site]  # the sites the policy nops
    rules: frozenset[int]


def _decide(t: Target, settings: Settings) -> _Decided:
    """Read ``t``, go back to its original by its log, scan that and decide every site with the
    policy; raise what refuses the file."""
    raw, current, compression = read_file(t.source)
    facts = read_header(t.log)
    orig = _original_of(t, raw, current, facts, settings.replace_stale_logs)
    image = Image(t.source, orig.content, compression)
    sc = scan(image, settings.hints.mcount_addr, settings.hints.generation)
    refuse_contradicted_generation(image, sc)
    _refuse_other_release(sc, settings.kernels)
    if not orig.was_output and sc.records.zeroed:
        _refuse_nopped_without_log(t, facts, sc.records.zeroed)
    chosen, rules = _policy_choice(settings.policy, sc)
    return _Decided(current, compression, facts, orig, image, sc, chosen, rules)


def prenop_target(t: Target, settings: Settings, signer: Signer | None) -> tuple[FileReport, tuple[NewFile, ...]]:
    """Decide and rewrite one file in memory; return its report and what to write (see
    :func:`rewriter.output.publish`), in the order it must be published: the log before the
    file it undoes."""
    current, compression, facts, orig, image, sc, chosen, rules = _decide(t, settings)
    original, was_output = orig.content, orig.was_output
    kernel_locs = settings.kernels.locs_for(sc.release)
    sign = signer is not None and image.kind is Kind.MODULE
    _check_signed(t, image, chosen, settings.strip_signature or sign)
    options = replace(
        NOP,
        strip_signature=settings.strip_signature or sign,
        check_r0=settings.check_r0,
        kernel_locs=kernel_locs,
    )
    # rewrite() sees only the chosen sites, selected wholesale: the policy has decided already, and
    # function names may hold glob characters (`[`) that a Selection would reinterpret.
    result = rewrite(image, replace(sc, sites=tuple(chosen)), Selection(), options)
    nopped = len({s.place for s in result.sites} | {s.place for s in result.dropped})
    left = sum(1 for s in chosen if s.recorded) - len(result.dropped)
    unchecked = unchecked_drops(sc.generation, kernel_locs, len(result.dropped))
    report = FileReport(
        t.rel, Status.NOPPED, image.kind.value, nopped, len(sc.sites) - len(chosen), left, len(sc.records.unmatched),
        rules=rules, unchecked=unchecked if image.kind is Kind.MODULE else 0,
    )  # fmt: skip
    dest_content = current if t.dest == t.source else _read_optional(t.dest)
    mode = _mode(t.source)

    if not result.edits:
        report = report._replace(status=Status.RESTORED if was_output else Status.NOTHING)
        if not known_sites(image, sc):
            report = report._replace(message=no_site_cause(image, sc, settings.hints, log_hint=PRENOP_LOG_HINT))
        return _nothing_to_nop(t, orig, report, dest_content, compression, settings.dry_run)

    if image.signature is not None and options.strip_signature:
        report = report._replace(signature="stripped")
    if sign:
        assert signer is not None
        result = _signed(result, signer)
        report = report._replace(signature="re-signed")

    if _already_there(facts, original, dest_content, result.content, signer if sign else None):
        return report._replace(status=Status.UNCHANGED), ()
    if settings.dry_run:
        return report, ()
    return report, _log_and_file(t, orig, image, result, options, mode)


def _nothing_to_nop(
    t: Target, orig: _Original, report: FileReport, dest_content: bytes | None, compression: Compression, dry_run: bool
) -> tuple[FileReport, tuple[NewFile, ...]]:
    """A file with nothing to nop. If it was nopped before (the policy changed since), the original
    goes back; with -o the output tree still gets its copy of the file (``copied``), but one with
    no site at all only once the run has found a site somewhere (run(): _copy_bare)."""
    if dest_content == orig.content or report.no_sites:
        return report, ()
    report = report._replace(copied=report.status is Status.NOTHING)  # with -o: its output a copy
    if dry_run:
        return report, ()
    return report, (NewFile(t.dest, orig.file_bytes(t, compression), _mode(t.source)),)


PRENOP_LOG_HINT: Final = "(give the --log-dir DIR its run wrote the logs to)"
"""How prenop is given an earlier run's logs (it has no ``--input-log``; ``rewriter.files.no_site_cause``)."""


def _original_of(t: Target, raw: bytes, content: bytes, facts: Header | None, replace_stale: bool) -> _Original:
    """:func:`_original` of ``t.source`` by its log, or with ``-o`` by the log beside it
    (:func:`_log_beside_source`: a tree rewritten in place, whose original the policy applies to)."""
    beside = _log_beside_source(t, content)
    if beside is not None:
        return _original(t._replace(log=beside[0]), raw, content, beside[1], False)
    return _original(t, raw, content, facts, replace_stale)


def _log_beside_source(t: Target, content: bytes) -> tuple[Path, Header] | None:
    """With ``-o``, the log beside ``t.source`` and its header when ``content`` (the source's) is
    that log's output: a tree rewritten in place, the input of another tree. Its log leads back
    to the original, which the policy applies to (it was taken as it was: a policy keeping what
    the in-place run nopped left those sites nopped in OUT, with a log whose input was the
    rewritten file). The log is only read: it describes the source, not OUT."""
    if t.dest == t.source:
        return None
    path = default_log_path(t.source)
    if path == t.log:
        return None
    header = read_header(path)
    return None if header is None or _as_output(content, header) is None else (path, header)


def _refuse_nopped_without_log(t: Target, facts: Header | None, zeroed: int) -> NoReturn:
    """A file whose records are zeroed, as only a rewrite leaves them (a kernel's build leaves
    none), is an earlier rewrite's output; without the log that leads back to its original the
    policy would be applied to what that rewrite left: the sites it nopped are invisible, so a
    policy that keeps them could not give them back, and the run said the file already matched
    it (exit 0). Refused, as ``--undo`` refuses it (:func:`_rewritten_without_log`)."""
    whose = "no patch log at" if facts is None else "it is not the output of"
    named = log_by_name(t) if facts is None else None
    if named is not None:
        raise PrenopError(f"{t.source}: {zeroed_records(zeroed)}, and {whose} {t.log}; {named}")
    beside = _log_beside(t) if facts is None else None
    text = (
        f"{t.source}: {zeroed_records(zeroed)}, as a rewrite leaves them, and {whose} {t.log}: "
        "the sites that rewrite nopped cannot be seen to apply the policy to them; "
        + (
            "give the --log-dir its run wrote the logs to, naming the same tree (logs are named by the path below "
            "it), or start from the original file"
            if beside is None
            else _DROP_LOG_DIR.format(beside=beside, what="file")
        )
    )
    raise RewrittenWithoutLog(text, zeroed, beside) if facts is None else PrenopError(text)


_DROP_LOG_DIR: Final = (
    "its patch log is beside it ({beside}), where a run given no --log-dir writes it: drop --log-dir, or "
    "start from the original {what}"
)


def _log_beside(t: Target) -> Path | None:
    """With ``--log-dir``: the patch log beside ``t.source``, where a run given none writes it, if one
    is there. A rerun of ``--in-place`` that added a ``--log-dir`` the first run was not given was
    told to give the --log-dir that run wrote the logs to: it wrote them beside the files. Only a
    hint: a log that cannot be read there is left to the rest of the run."""
    path = default_log_path(t.source)
    if path == t.log:
        return None
    try:
        return None if read_header(path) is None else path
    except RewriteError:
        return None


def log_by_name(t: Target) -> str | None:
    """When ``t`` has no log at ``t.log``: the log named by the file's own name under the same
    ``--log-dir`` (``t.by_name``), if its header says the file is its output or its input, as the
    end of the line that says there is none. A file named below a directory named with it
    (Debian 7.2's ``<release>/vmlinuz`` with ``/usr/lib/modules``) was named by its own name
    before it was named by its path below that directory: a tree rewritten in place then has its
    log there, and could not be undone or rerun ("no patch log"). The log is named, not taken:
    the run writes each log where it reads it, so one read there would keep the tree's logs in
    two layouts, and scan, audit and diff look up the new one only."""
    if t.by_name is None:
        return None
    try:
        header = read_header(t.by_name)
        content = read_file(t.source)[1] if header is not None else b""
    except (RewriteError, OSError):
        return None  # the line says what is wrong with the file; a damaged log there is nobody's
    if header is None or (_sha(content) != header.input.content_sha256 and _as_output(content, header) is None):
        return None
    return (
        f"{t.by_name} is its log, named by the file's own name (as a run named the file by itself, or before "
        f"its name was its path below the directory named with it): move it to {t.log}"
    )


def _policy_choice(policy: Policy, sc: Scan) -> tuple[list[Site], frozenset[int]]:
    """The sites ``policy`` nops in one file (by its module name, None for a vmlinux, and each
    site's name as ftrace lists it: ``Scan.name_of``), and the rules that decided any of its sites."""
    decide = policy.for_file(sc.module).decide
    chosen = []
    rules = set()
    for s in sc.sites:
        verb, rule = decide(sc.name_of(s), s.section)
        if rule is not None:
            rules.add(rule)
        if verb is Verb.NOP:
            chosen.append(s)
    return chosen, frozenset(rules)


def _already_there(
    facts: Header | None, original: bytes, dest_content: bytes | None, content: bytes | bytearray, signer: Signer | None
) -> bool:
    """Whether the destination already holds ``content``, as the log beside it says. A module
    re-signed with ECDSA (``signer``) gets a new signature every time: it is compared without it."""
    if facts is None or dest_content is None or not _log_describes(facts, original, dest_content):
        return False
    if dest_content == content:
        return True
    return signer is not None and not signer.deterministic and _unsigned(dest_content) == _unsigned(bytes(content))


def _signed(result: Rewrite, signer: Signer) -> Rewrite:
    """``result`` with a new signature trailer appended, as one more edit of its log."""
    trailer = signer.trailer(bytes(result.content))
    append = Append(len(result.content), trailer, "module signature (re-signed)")
    return replace(result, content=result.content + trailer, edits=(*result.edits, append))


def _log_and_file(
    t: Target, orig: _Original, image: Image, result: Rewrite, options: Options, mode: int
) -> tuple[NewFile, NewFile]:
    """The log of ``result`` and the new file (the rewritten module, maybe re-signed: its trailer
    is the log's last edit), compressed as the original was."""
    compression = image.compression
    original_raw = orig.file_bytes(t, compression)
    restore = Restore.of(original_raw, orig.content, compression)
    new_raw = bytes(restore.compressed(result.content, compression))
    rel = Path(t.rel)  # logs name the file by its path in the tree, never where the tree is
    facts = (
        FileFacts.of(rel, original_raw, orig.content, compression),
        FileFacts.of(rel, new_raw, result.content, compression),
    )
    text = render(image.kind, image.byteorder, result, options, lambda: facts, restore)
    return NewFile(t.log, text, 0o644), NewFile(t.dest, new_raw, mode)


def _check_signed(t: Target, image: Image, chosen: Sequence[Site], resolved: bool) -> None:
    # On patchable and ool kernels the chosen sites already are nops: their records are the change.
    todo = any(s.recorded or s.state is not target_state(s.variant, SiteState.NOPPED) for s in chosen)
    if image.signature is not None and todo and not resolved:
        raise RewriteError(
            f"{t.source}: signed module: nopping invalidates its signature and the kernel would refuse it; "
            "pass --sign-key/--sign-cert to re-sign, or --strip-signature"
        )


def _log_describes(facts: Header, original: bytes, dest_content: bytes) -> bool:
    return facts.input.content_sha256 == _sha(original) and _as_output(dest_content, facts) is not None


def _read_optional(path: Path) -> bytes | None:
    """The content of ``path`` (decompressed), None if there is no such file."""
    return read_file(path)[1] if path.exists() else None


def _mode(path: Path) -> int:
    return path.stat().st_mode & 0o7777


# -- undo and verify ------------------------------------------------------------------------


def undo_target(t: Target, dry_run: bool = False) -> tuple[FileReport, tuple[NewFile, ...]]:
    """Give back the original of ``t.source`` (to ``t.dest``) from its log, byte for byte: a
    compressed file is compressed again by its log's recipe (or taken from the log), and checked.
    Returns what to write (a copy of an unchanged file is written at once)."""
    facts = read_header(t.log)
    if facts is None:
        rewritten = _rewritten_without_log(t)
        if rewritten is not None:
            raise PrenopError(f"{rewritten}: not undone")
        if t.dest != t.source and not dry_run:
            _copy_if_different(t.source, t.dest)
        return FileReport(t.rel, Status.NO_LOG), ()
    _, content, compression = read_file(t.source)
    if _sha(content) == facts.input.content_sha256:
        if t.dest != t.source and not dry_run:
            _copy_if_different(t.source, t.dest)
        return FileReport(t.rel, Status.ORIGINAL, facts.kind.value), ()
    output = _as_output(content, facts)
    if output is None:
        raise PrenopError(f"{t.source}: is neither the input nor the output of {t.log}; not undoing it")
    original, log = _undo_with_log(t, output, facts)
    report = FileReport(t.rel, Status.UNDONE, facts.kind.value, facts.sites_touched)
    if dry_run:
        return report, ()
    return report, (NewFile(t.dest, _original_file(t, log, original, compression), _mode(t.source)),)


def _rewritten_without_log(t: Target) -> str | None:
    """Why ``t.source``, which has no log, is not the original a file with no log is taken to be:
    its records are zeroed, as only a rewrite leaves them (a kernel's own build leaves none). Its
    log is then elsewhere, most often under another name: a run's logs are named by each file's
    path below the tree it was given (``fs/nls/x.ko`` for ``kernel/fs``, ``nls/x.ko`` for
    ``kernel/fs/nls``). None when nothing says so, or the file cannot be read this way."""
    try:
        zeroed = scan(Image.load(t.source)).records.zeroed
    except (RewriteError, ValueError, IndexError, OverflowError):
        return None
    if not zeroed:
        return None
    named = log_by_name(t)
    if named is not None:
        return f"{t.source}: no patch log at {t.log}, yet {zeroed_records(zeroed)}; {named}"
    return (
        f"{t.source}: no patch log at {t.log}, yet {zeroed_records(zeroed)}, as a rewrite leaves "
        "them (logs are named by the path below the tree the run was given: name the same tree)"
    )


def _how_it_differs(t: Target, content: bytes, facts: Header) -> str:
    """With ``--against``: how ``content`` (``t.source``'s) differs from what its log makes of the
    pristine file (:func:`rewriter.files.replay_mismatch`: the bytes that differ, the first and what
    the log does there), where "is not the output of LOG" was all it said. Empty without one, or
    when the pristine file is not the log's input (said in its turn) or the log cannot be replayed."""
    if t.original is None:
        return ""
    try:
        original = read_file(t.original)[1]
        if _sha(original) != facts.input.content_sha256:
            return ""
        expected = bytes(load(t.log).replay(original))
    except RewriteError:
        return ""
    return "; " + replay_mismatch(t.original, t.source, original, content, expected)


def verify_target(t: Target) -> FileReport:
    """With ``t.original``: the difference between it and the file is exactly the log's edits.
    Without: the file is exactly the log's output, and undoing the log gives exactly its input.
    A signature trailer appended by re-signing is accepted on top of the log's output (openssl
    checks the signature itself: docs/prenop.md)."""
    facts = read_header(t.log)
    if facts is None:
        if t.original is not None and read_file(t.original)[1] != read_file(t.source)[1]:
            return FileReport(t.rel, Status.MISMATCH, message=f"{t.source} differs from {t.original} and has no log")
        rewritten = _rewritten_without_log(t)
        if rewritten is not None:
            return FileReport(t.rel, Status.MISMATCH, message=rewritten)
        return FileReport(t.rel, Status.NO_LOG)
    report = FileReport(t.rel, Status.VERIFIED, facts.kind.value, facts.sites_touched)
    try:
        raw, content, compression = read_file(t.source)
    except ImageError as e:  # a finding, as verify says it: the log says what the file should be
        return _mismatch(report, unreadable_output(e, t.log))
    output = _as_output(content, facts)
    container = None if output is not content else not_the_output_file(t.source, raw, compression, facts.output)
    if container is not None:
        return _mismatch(report, container)
    if output is None and _sha(content) == facts.input.content_sha256:
        # Not a mismatch, which would read as a broken file: the tree was undone (--undo keeps the logs).
        message = f"{t.source} already is the original (the input of {t.log}), not its output: undone since?"
        return report._replace(status=Status.ORIGINAL, nopped=0, message=message)
    if output is None:
        return _mismatch(report, f"{t.source} is not the output of {t.log}{_how_it_differs(t, content, facts)}")
    # A pristine file that cannot be read is bad input (failed, exit 2), not a finding: read outside the try.
    original = None if t.original is None else read_file(t.original)[1]
    try:
        log = load(t.log)
        resigned = len(output) != len(content) or any(isinstance(e, Append) for e in log.edits)
        report = report._replace(signature="re-signed" if resigned else "")
        if original is None:
            _undo_with_log(t, output, facts, log)
            return report
        if _sha(original) != facts.input.content_sha256:
            return _mismatch(report, f"{t.original} is not the input of {t.log}")
        expected = bytes(log.replay(original))
    except RewriteError as e:
        return _mismatch(report, str(e))
    if expected != output:
        return _mismatch(report, f"{t.source}: replaying {t.log} on {t.original} gives other bytes")
    return report


def _mismatch(report: FileReport, message: str) -> FileReport:
    """``report`` of a file that did not verify: its sites are not counted as nopped (its log's
    count was, in the `mismatch` row and the total, as if the file held them)."""
    return report._replace(status=Status.MISMATCH, nopped=0, message=message)


def _copy_if_different(src: Path, dest: Path) -> bool:
    """``dest`` holds ``src``'s bytes and mode afterwards, written only if it did not already (a
    link at ``dest`` is replaced, never compared through); whether it was written."""
    data = read_regular(src)
    if not dest.is_symlink() and dest.is_file() and dest.read_bytes() == data and _mode(dest) == _mode(src):
        return False
    publish([NewFile(dest, data, _mode(src))])
    return True


class Copied(NamedTuple):
    """What :func:`copy_others` did: the files copied (or found already there), the links made
    (or found), and one line for each entry it could not copy."""

    files: int
    links: int
    errors: tuple[str, ...]


def copy_others(copies: Sequence[Copy]) -> Copied:
    """Make ``-o``'s copy of a tree complete (:class:`Copy`): each directory made, each file copied
    byte for byte with its mode, each link made anew with the same target (never followed: a
    ``build`` link to the kernel's source tree stays a link). An entry that cannot be copied is one
    error line and the others are still copied; the run exits 2 (OUT is incomplete)."""
    files = links = 0
    errors: list[str] = []
    for c in copies:
        try:
            if c.kind is EntryKind.DIRECTORY:
                c.dest.mkdir(parents=True, exist_ok=True)
            elif c.kind is EntryKind.LINK:
                _copy_link(c.source, c.dest)
                links += 1
            else:
                _copy_if_different(c.source, c.dest)
                files += 1
        except RewriteError as e:
            errors.append(f"{c.source}: not copied to {c.dest}: {e}")
        except OSError as e:
            errors.append(f"{c.source}: not copied to {c.dest}: {e.strerror}")
    return Copied(files, links, tuple(errors))


def _copy_link(src: Path, dest: Path) -> None:
    """A link at ``dest`` with ``src``'s target (:func:`rewriter.output.atomic_symlink`)."""
    target = os.readlink(src)
    if dest.is_symlink() and os.readlink(dest) == target:
        return
    dest.parent.mkdir(parents=True, exist_ok=True)
    atomic_symlink(dest, target)


# -- many files -----------------------------------------------------------------------------

Job = Callable[[Target], FileReport]


def _failure(t: Target, e: Exception) -> FileReport:
    if isinstance(e, RewriteError):
        built_for = e.release if isinstance(e, OtherRelease) else ""
        return FileReport(t.rel, Status.FAILED, message=str(e), built_for=built_for)
    if isinstance(e, ValueError | IndexError | OverflowError | MemoryError):
        # A corrupt file that slipped past the structural checks: still one line, not a traceback.
        return FileReport(t.rel, Status.FAILED, message=f"{t.source}: corrupt ELF data ({type(e).__name__}: {e})")
    raise e


def _guarded(t: Target, job: Job) -> FileReport:
    try:
        return job(t)
    except Exception as e:
        return _failure(t, e)


IO_THREADS = 4


Compute = Callable[[Target], tuple[FileReport, tuple[NewFile, ...]]]


def _compute_then_publish(batch: Sequence[Target], compute: Compute) -> list[FileReport]:
    """Compute each file on this process and write its outputs to their temporary files here
    (``stage``); fsync and rename them on a few threads (``land``): those wait on the disk, not
    the CPU, so the next file is computed meanwhile."""
    reports: list[FileReport] = []
    writing: list[tuple[int, Future[None]]] = []
    with ThreadPoolExecutor(IO_THREADS) as io:
        for t in batch:
            staged: list[Pending] = []
            try:
                report, outputs = compute(t)
                staged = stage(outputs) if outputs else []
                if staged:
                    writing.append((len(reports), io.submit(land, staged)))
                    staged = []  # the I/O thread's now: it lands them whole, or removes them
            except Exception as e:  # _failure re-raises what is not a per-file failure
                report = _failure(t, e)
            finally:
                # Staged and not handed over: a signal (or a failure) came between; nobody would land
                # them, and their temporary files stayed in the tree.
                for p in staged:
                    p.discard()
            reports.append(report)
        for i, fut in writing:
            try:
                fut.result()
            except Exception as e:
                reports[i] = _failure(batch[i], e)
    return reports


def _prenop_batch(batch: Sequence[Target], settings: Settings) -> list[FileReport]:
    signer = settings.signing.load() if settings.signing is not None else None
    reports = _compute_then_publish(batch, lambda t: prenop_target(t, settings, signer))
    if settings.dry_run:
        return reports
    return [_forget_log(t, r) if r.status is Status.RESTORED else r for t, r in zip(batch, reports, strict=True)]


def _forget_log(t: Target, report: FileReport) -> FileReport:
    """A file written back to its original (``restored``) keeps no log: the rewrite it describes
    is gone, and ``--verify`` would take the file for one undone since. Removed after the file is
    written: a run killed between leaves the log, which the next run or an undo still reads."""
    try:
        t.log.unlink(missing_ok=True)
    except OSError as e:
        return _failure(t, RewriteError(f"{t.log}: {e.strerror}: the original was written back, its log not removed"))
    return report


def _undo_batch(batch: Sequence[Target], dry_run: bool) -> list[FileReport]:
    return _compute_then_publish(batch, lambda t: undo_target(t, dry_run))


def _verify_batch(batch: Sequence[Target]) -> list[FileReport]:
    return [_guarded(t, verify_target) for t in batch]


def run(
    ts: Sequence[Target], settings: Settings, jobs: int, tick: Callable[[], None] | None = None
) -> list[FileReport]:
    """Pre-nop every target; reports in the order of ``ts``. The modules are held to the loop of
    the vmlinux of their release named with them (:func:`_run_kernels`), and refused when none is."""
    settings = replace(settings, kernels=_run_kernels(ts, settings))
    refuse_whole_run(ts, settings)
    refuse_signed_without_choice(ts, settings)
    reports = _map(partial(_prenop_batch, settings=settings), ts, jobs, tick)
    if settings.dry_run or no_site_anywhere(reports):
        return reports
    return _copy_bare(ts, reports)


SAMPLE: Final = 4
"""How many modules the policy nops sites of :func:`refuse_whole_run` decides before the first write."""
READ_AT_MOST: Final = 4 * SAMPLE
"""How many modules with sites it reads at most to find them (a policy that keeps most modules whole)."""


def refuse_whole_run(ts: Sequence[Target], settings: Settings) -> None:
    """Before the first write (and before a dry run's first file): decide the run's first modules,
    up to :data:`SAMPLE` the policy nops sites of, and refuse the whole run in one line
    (PrenopError, exit 2, nothing written) when one is rewritten by an earlier run whose logs are
    not where this one looks (a rerun of ``--in-place --log-dir L`` without ``--log-dir``), or when
    those read are all built for another release than the run's vmlinux or read against a
    ``--generation`` their contents contradict (the run's arguments, not the modules, are wrong).
    One that fails so beside one that passes is a stray, and fails alone, before or after it: a
    tree whose first module was a stray was refused whole, told to name that module's vmlinux.
    Each was found file by file: one error line per module, thousands over a tree, after the
    vmlinux and whatever else passed had been written. A module the policy leaves whole has no log
    and is the original, and one with no site shows nothing: neither refuses, and the next is
    decided (only modules the policy nops sites of are counted: a rerun whose policy keeps the
    tree's first modules whole was not refused, and said one line per module; at most
    :data:`READ_AT_MOST` modules with sites are read to find them). Pristine files of the run's
    release pass, so a first run is never refused here; what this costs is :data:`SAMPLE` modules
    read and scanned twice (5 ms on Debian 6.12's tree). A failure of another kind, or a module
    past the sample, fails in its turn with its own line."""
    modules = [t for t in ts if t.source.name.endswith(MODULE_SUFFIXES)]
    decided = passed = agreed = 0  # the policy nops sites of; with sites, passed; passed at all
    wrong: list[tuple[Target, RewriteError]] = []  # of another release, or contradicting --generation
    for t in modules:
        if decided >= SAMPLE or passed >= READ_AT_MOST or len(wrong) >= SAMPLE:
            break
        try:
            d = _decide(t, settings)
        except RewrittenWithoutLog as e:
            raise PrenopError(_whole_run_line(t, e, len(modules))) from None
        except (OtherRelease, Contradicted) as e:
            wrong.append((t, e))
            continue
        except (RewriteError, OSError, ValueError, IndexError, OverflowError):
            continue  # the run reports it in its turn
        agreed += 1
        passed += bool(d.sc.sites)
        decided += bool(d.chosen)
    if wrong and not agreed:
        raise PrenopError(_whole_run_line(*wrong[0], len(modules)))


def _whole_run_line(t: Target, e: RewriteError, modules: int) -> str:
    """The one line of a run :func:`refuse_whole_run` refuses: ``t``'s own error, the tree it is in,
    and what to do."""
    tree = _tree_of(t)
    refused = f"the run ({counted(modules, 'module')}) is refused before its first write (nothing written)"
    if isinstance(e, RewrittenWithoutLog):
        fix = (
            "give --log-dir DIR, the directory that run wrote the logs to, naming the same tree (logs are named "
            "by the path below it), or start from the original tree"
            if e.beside is None
            else _DROP_LOG_DIR.format(beside=e.beside, what="tree")
        )
        return (
            f"{tree}: rewritten by an earlier run whose patch logs are not where this run looks ({t.source}: "
            f"{zeroed_records(e.zeroed)}, as a rewrite leaves them, and no patch log at {t.log}): "
            f"{fix}; {refused}"
        )
    if isinstance(e, OtherRelease):
        return f"{e}; {refused}: name the vmlinux of {e.release or 'its release'}, or the modules of the vmlinux named"
    return f"{e}; {refused}"


def _tree_of(t: Target) -> Path:
    """The tree ``t`` was found in: its path without its name in the tree (for a file named by
    itself, its directory; the file itself if the name is not the path's end)."""
    parts = Path(t.rel).parts
    if t.source.parts[-len(parts) :] != parts:
        return t.source
    head = t.source.parts[: -len(parts)]
    return Path(*head) if head else Path(".")


def refuse_signed_without_choice(ts: Sequence[Target], settings: Settings) -> None:
    """Before the first write of a run given no signature choice (neither ``--strip-signature`` nor
    ``--sign-key``): refuse the run if a signed module would be nopped (PrenopError, exit 2, nothing
    written). Found file by file, each such module failed once the vmlinux and the other modules
    had been written: a signed tree (Debian's: ``modules_install`` signs every module) was left
    half done, and only a rerun with the option did the rest. A module is decided here only when
    its original may be signed and the policy may nop in it (:func:`_may_need_a_signature_choice`),
    and the first refused ends the check; a module that fails otherwise fails in its turn, with its
    own line. A dry run lists each such module instead (it writes nothing)."""
    if settings.strip_signature or settings.signing is not None or settings.dry_run:
        return
    for t in ts:
        try:
            if not _may_need_a_signature_choice(t, settings.policy):
                continue
            d = _decide(t, settings)
        except (RewriteError, OSError, ValueError, IndexError, OverflowError):
            continue  # the run reports it in its turn
        try:
            _check_signed(t, d.image, d.chosen, resolved=False)
        except RewriteError as e:
            raise PrenopError(
                f"{e}; the run is refused before its first write, as every signed module it nops would be "
                "(nothing written)"
            ) from None


def _may_need_a_signature_choice(t: Target, policy: Policy) -> bool:
    """Whether ``t`` is a module whose original may carry a signature (the file does, or a log that
    leads to its original says the run that wrote it cut one off: a rerun, or with ``-o`` a tree
    rewritten in place, applies the policy to the original) and in which the policy may nop a
    site. Reads the file once (an uncompressed one's end only, unless it is signed), never scans it."""
    signed, read = _ends_signed(t.source)
    if not signed and not any(_stripped_by(log) for log in _logs_of_original(t)):
        return False
    content, compression = read if read is not None else read_file(t.source)[1:]
    image = Image(t.source, content, compression)
    return image.kind is Kind.MODULE and policy.for_file(module_name(image)).may_nop


def _logs_of_original(t: Target) -> tuple[Path, ...]:
    """The logs that may lead :func:`_decide` back to ``t``'s original: its own, and with ``-o``
    the one beside the source (:func:`_log_beside_source`: a tree rewritten in place, the input of
    another)."""
    return (t.log,) if t.dest == t.source else (t.log, default_log_path(t.source))


def _stripped_by(log: Path) -> bool:
    """Whether the header of ``log`` says the run that wrote it cut a signature off."""
    header = read_header(log)
    return header is not None and bool(header.summary.get("signature_stripped"))


def _ends_signed(path: Path) -> tuple[bool, tuple[bytes, Compression] | None]:
    """Whether the file's content (decompressed) ends in a module signature's marker, and the
    content when that took reading it whole (a compressed file: not decompressed twice). An
    uncompressed file is not read whole for it: a build tree's modules, with their debug
    information, are gigabytes."""
    with path.open("rb") as fh:
        if detect_compression(fh.read(8)) is not Compression.NONE:
            _, content, compression = read_file(path)
            return content.endswith(MODULE_SIG_MAGIC), (content, compression)
        size = fh.seek(0, os.SEEK_END)
        fh.seek(max(size - len(MODULE_SIG_MAGIC), 0))
        return fh.read() == MODULE_SIG_MAGIC, None


def no_site_anywhere(reports: Sequence[FileReport]) -> bool:
    """No file of the run has any ftrace site at all, and none failed: the run found nothing to
    do (a wrong directory, a tree built without ftrace; one nopped before whose logs are not
    given fails instead: :func:`_refuse_nopped_without_log`),
    says so (exit 1) and writes nothing, not even the copies -o would hold."""
    return bool(reports) and all(r.no_sites for r in reports)


def _copy_bare(ts: Sequence[Target], reports: Sequence[FileReport]) -> list[FileReport]:
    """Copy each file with no ftrace site at all to its -o output, which :func:`prenop_target` left
    for the run to decide (:func:`no_site_anywhere`): the output tree is a copy of the tree,
    untouched files included. A copy that cannot be written fails its file, as a rewrite would."""
    out = []
    for t, r in zip(ts, reports, strict=True):
        if r.no_sites and t.dest != t.source:
            try:
                r = r._replace(copied=_copy_if_different(t.source, t.dest))
            except Exception as e:  # _failure re-raises what is not a per-file failure
                r = _failure(t, e)
        out.append(r)
    return out


def _run_kernels(ts: Sequence[Target], settings: Settings) -> Kernels:
    """The vmlinux images named in this run, each with the release it names and the
    ftrace_process_locs() loop (``rewriter.locs``) it holds its modules to: the kernels that will
    load the run's modules (``rewriter.kernels``). A bad file is reported in its turn."""
    found = []
    for t in ts:
        if t.source.name.endswith(MODULE_SUFFIXES):
            continue
        try:
            image = Image.load(t.source)
        except (RewriteError, OSError):
            continue
        if image.kind is Kind.VMLINUX:
            try:
                generation, loop = kernel_loop(image, settings.hints.mcount_addr, settings.hints.generation)
                locs = loop_for_modules(generation, loop)
            except RewriteError:
                locs = Locs.UNKNOWN  # reported in its turn
            found.append(Kernel(t.source, kernel_release(image), locs))
    return Kernels(tuple(found))


def _refuse_other_release(module: Scan, kernels: Kernels) -> None:
    """A module built for another release than each vmlinux of the run: its records would be
    dropped by the loop of a kernel that does not load it (``nop --kernel`` refuses that vmlinux
    too: ``files._check_release``; audit warns, ``release-mismatch``)."""
    if module.kind is not Kind.MODULE or not kernels.refuse(module.release):
        return
    if len(kernels.known) == 1:
        k = kernels.known[0]
        theirs = f"this run's vmlinux {k.path} is Linux {k.release}: not the kernel that loads it"
    else:
        theirs = f"this run's vmlinux images are {kernels.releases()}: none is the kernel that loads it"
    raise OtherRelease(f"{module.path}: built for {module.release} (its vermagic), and {theirs}", module.release or "")


def undo(
    ts: Sequence[Target], jobs: int, tick: Callable[[], None] | None = None, dry_run: bool = False
) -> list[FileReport]:
    return _map(partial(_undo_batch, dry_run=dry_run), ts, jobs, tick)


def verify(ts: Sequence[Target], jobs: int, tick: Callable[[], None] | None = None) -> list[FileReport]:
    return _map(_verify_batch, ts, jobs, tick)


BATCH_BYTES = 4 << 20  # a batch is about this much input: one vmlinux alone, or some dozens of modules


def _batches(ts: Sequence[Target]) -> list[list[int]]:
    """Indexes of ``ts`` in batches, biggest files first, so the vmlinux starts at once and the
    modules fill the other workers around it."""
    sizes = []
    for i, t in enumerate(ts):
        try:
            sizes.append((t.source.stat().st_size, i))
        except OSError:
            sizes.append((0, i))
    sizes.sort(key=lambda x: (-x[0], x[1]))
    out: list[list[int]] = []
    cur: list[int] = []
    total = 0
    for size, i in sizes:
        cur.append(i)
        total += size
        if total >= BATCH_BYTES or len(cur) >= 48:
            out.append(cur)
            cur, total = [], 0
    if cur:
        out.append(cur)
    return out


Batch = Callable[[Sequence[Target]], list[FileReport]]


def _map(fn: Batch, ts: Sequence[Target], jobs: int, tick: Callable[[], None] | None) -> list[FileReport]:
    """``fn`` over :func:`_batches` of ``ts`` in batch's worker pool (on this process with one job
    or one batch); a tick per file as its batch ends, and the reports in the order of ``ts``.
    Workers keep the parent's signal handlers: they publish files, and an interrupt must unwind
    them so that no temporary file is left."""
    reports: list[FileReport | None] = [None] * len(ts)
    batches = _batches(ts)
    for b, results in map_batches(fn, [[ts[i] for i in idx] for idx in batches], jobs, quiet_workers=False):
        for i, r in zip(batches[b], results, strict=True):
            reports[i] = r
            if tick:
                tick()
    return [r for r in reports if r is not None]
