"""Rewriting files: apply, undo and verify, with the patch log, stage images and atomic output.

This is the only module besides ``elf.writer`` that writes files. Order of writes, so that a run
killed at any moment leaves nothing half-done: everything is computed and checked in memory
(the new image is re-scanned and must show the planned states), then the log is written, then
the output, each atomically (temporary file, fsync, rename). The input is never opened for
writing; ``--in-place`` replaces it by rename only once the new file is complete.
"""

from __future__ import annotations

import hashlib
import mmap
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np

from rewriter import __version__, ppc
from rewriter.edits import Truncate, WordWrite, apply_edits, invert_edits
from rewriter.elf.compress import Compression, Recipe, compress, recipe_of
from rewriter.elf.image import Image
from rewriter.elf.writer import Pending, atomic_write, commit, write_temp
from rewriter.errors import ImageError, LogError, OutputError, RewriteError
from rewriter.generations import LAYOUTS
from rewriter.log import FileFacts, Log, body_lines, check_extent, dumps, load
from rewriter.ppc import TEXT, Disassembler, branch_text, is_b, is_bl
from rewriter.rewrite import Options, Rewrite, Selection, rewrite, target_state, words_of
from rewriter.sites import Scan, scan
from rewriter.states import Insn, SiteState, insn_kind, word_for

LOG_SUFFIX = ".mcountrw.jsonl"


def default_log_path(output: Path) -> Path:
    return output.with_name(output.name + LOG_SUFFIX)


@dataclass(frozen=True)
class ApplyResult:
    input: Path
    output: Path | None
    log: Path | None
    rewrite: Rewrite
    scan: Scan
    stage_images: tuple[Path, ...]


def _sha256(data: bytes | bytearray | memoryview) -> str:
    return hashlib.sha256(data).hexdigest()


def _on_disk(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as e:
        raise RewriteError(f"{path}: {e.strerror}") from None


def check_output_path(input_path: Path, output: Path | None, in_place: bool) -> Path:
    if in_place:
        if output is not None and output.resolve() != input_path.resolve():
            raise OutputError(f"{output}: --in-place writes the input; do not also give -o")
        output = input_path
    elif output is None:
        raise OutputError(f"{input_path}: no output: give -o OUT, --in-place or --dry-run")
    elif output.exists() and output.resolve() == input_path.resolve():
        raise OutputError(f"{output}: output is the input; use --in-place to rewrite it")
    if output.is_dir():
        raise OutputError(f"{output}: is a directory")
    # The file is replaced by a rename, so it is the directory that must be writable.
    parent = output.parent if str(output.parent) else Path(".")
    if not parent.is_dir():
        raise OutputError(f"{output}: directory {parent} does not exist")
    if not os.access(parent, os.W_OK):
        raise OutputError(f"{output}: cannot write in {parent}")
    return output


def check_side_paths(input_path: Path, out: Path, log: Path, in_place: bool, backup: bool) -> None:
    """Before any work: the patch log must not land on the input or the output (a log written over
    the input would destroy it), and an ``--in-place --backup`` copy must not replace an earlier
    one (a second run would otherwise overwrite the true original with a rewritten file)."""
    if backup and not in_place:
        raise OutputError(f"{input_path}: --backup goes with --in-place (with -o the input is left as it is)")
    for other, what in ((input_path, "the input"), (out, "the output")):
        if log == other or (log.exists() and other.exists() and log.resolve() == other.resolve()):
            raise OutputError(f"{log}: the patch log would overwrite {what}")
    if log.is_dir():
        raise OutputError(f"{log}: is a directory")
    saved = input_path.with_name(input_path.name + ".orig")
    if backup and (saved.exists() or saved.is_symlink()):
        raise OutputError(f"{saved}: exists (a backup from an earlier run?); move it away or drop --backup")


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
) -> ApplyResult:
    out = None if dry_run else check_output_path(path, output, in_place)
    if out is not None:
        check_side_paths(path, out, log_path or default_log_path(out), in_place, backup)
    image = Image.load(path)
    before = scan(image)
    result = rewrite(image, before, selection, options, keep_stages=stage_dir is not None and not dry_run)
    check_states(result.content, image, result, options.target)
    if dry_run or out is None:
        return ApplyResult(path, None, None, result, before, ())
    # An uncompressed input is already mapped: hash and back it up from the mapping, not a re-read.
    raw = image.data if image.compression is Compression.NONE else _on_disk(path)
    restore = restore_of(raw, image.data, image.compression)
    # Nothing changed (a module without records): its bytes as they are, not compressed again.
    new_raw = output_bytes(result.content, image.compression, restore) if result.edits else bytes(raw)
    log = log_path or default_log_path(out)
    stage_paths = _write_stage_images(stage_dir, path, result) if stage_dir else ()
    mode = path.stat().st_mode & 0o7777
    # The two files are hashed and the output's 46 MB written, fsynced and read back in a thread
    # while the log's 67,000 lines are formatted (hashlib and file I/O let go of the GIL); nothing
    # is published until the output, the log and the backup are all complete.
    with ThreadPoolExecutor(max_workers=1) as pool:
        facts = pool.submit(_file_facts, image, path, raw, out, new_raw, result.content)
        out_future = pool.submit(write_temp, out, new_raw, mode)
        pending: list[Pending] = []
        try:
            text = render_log(image, path, raw, out, new_raw, result, options, facts=facts.result, restore=restore)
            pending.append(write_temp(log, text, 0o644))
            if in_place and backup:
                pending.append(write_temp(path.with_name(path.name + ".orig"), raw, mode))
            pending.append(out_future.result())
        except BaseException:
            for p in pending:
                p.discard()
            if out_future.exception() is None:  # waits for the writer thread: its file must go too
                out_future.result().discard()
            raise
    # The log is published first: an output never exists without the log that can undo it.
    for p in pending:
        commit(p)
    return ApplyResult(path, out, log, result, before, stage_paths)


class Restore(NamedTuple):
    """How a compressed input's exact bytes come back from its content: by a ``recipe``, or, when
    none rebuilds them, kept as they are (``original``). Both None for an uncompressed file."""

    recipe: Recipe | None = None
    original: bytes | None = None


def restore_of(raw: bytes | bytearray | mmap.mmap, content: bytes | mmap.mmap, kind: Compression) -> Restore:
    if kind is Compression.NONE:
        return Restore()
    recipe = recipe_of(bytes(raw), bytes(content), kind)
    return Restore(recipe, None if recipe is not None else bytes(raw))


def output_bytes(content: bytes | bytearray, kind: Compression, restore: Restore) -> bytes | bytearray:
    """The file to write for ``content``: compressed as its input was (Kbuild's settings if no
    recipe describes the input)."""
    if kind is Compression.NONE:
        return content
    return compress(content, restore.recipe or kind)


def check_states(content: bytes | bytearray, image: Image, result: Rewrite, target: SiteState) -> None:
    """Read every changed site back from ``content``: its slots must now hold the target state.

    This reads the words themselves rather than re-running the scanner, because a pre-nopped site
    whose records were dropped, in a function with no symbol, is invisible to a scan."""
    sites = result.sites
    if not sites:
        return
    dt = np.dtype("<u4" if image.byteorder == "little" else ">u4")
    raw = np.frombuffer(content, np.uint8)
    b_off = np.array([s.file_offset for s in sites], dtype=np.int64)
    ok = np.ones(len(sites), bool)
    variants = {s.variant for s in sites}
    for v in variants:
        idx = np.arange(len(sites)) if len(variants) == 1 else np.flatnonzero([s.variant is v for s in sites])
        lay = LAYOUTS[v]
        for slot, want in zip(lay.state_slots, words_of(v, target_state(v, target)), strict=True):
            off = b_off[idx] + (lay.offset(slot) or 0)
            words = raw[off[:, None] + np.arange(4)].copy().view(dt).ravel().astype(np.uint32)
            ok[idx] &= _holds(words, want)
    bad = np.flatnonzero(~ok)
    if len(bad):
        site = sites[int(bad[0])]
        lay = LAYOUTS[site.variant]
        found = []
        for slot in lay.state_slots:
            at = site.file_offset + (lay.offset(slot) or 0)
            found.append(insn_kind(int.from_bytes(content[at : at + 4], image.byteorder), True, True))  # type: ignore[arg-type]
        raise RewriteError(
            f"{site.place_text} ({site.function or '?'}): read back {lay.state_of(tuple(found)).value}, "
            f"planned {target_state(site.variant, target).value} ({len(bad)} sites differ)"
        )


def _holds(words: np.ndarray, want: Insn) -> np.ndarray:
    if want is Insn.CALL:
        return ppc.bl_mask(words)
    if want is Insn.STUB:
        return ppc.b_mask(words)
    same: np.ndarray = words == word_for(want, 0, 0)
    return same


def _write_stage_images(directory: Path, path: Path, result: Rewrite) -> tuple[Path, ...]:
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OutputError(f"{directory}: {e.strerror}") from None
    out = []
    for i, content in enumerate(result.stages, start=1):
        p = directory / f"{path.name}.stage{i}"
        atomic_write(p, content, path.stat().st_mode & 0o7777)
        out.append(p)
    return tuple(out)


def _file_facts(
    image: Image, path: Path, raw: object, out: Path, new_raw: object, content: object
) -> tuple[FileFacts, FileFacts]:
    return _facts(path, raw, image.data, image.compression), _facts(out, new_raw, content, image.compression)


def render_log(
    image: Image,
    path: Path,
    raw: bytes | bytearray | mmap.mmap,
    out: Path,
    new_raw: bytes | bytearray,
    result: Rewrite,
    options: Options,
    facts: Callable[[], tuple[FileFacts, FileFacts]] | None = None,
    restore: Restore | None = None,
) -> bytes:
    """The patch log (UTF-8). ``facts`` gives the input's and output's facts if the caller is
    already computing them (it is asked once the lines are formatted); ``restore`` says how a
    compressed input's bytes come back (:func:`restore_of`)."""
    dis = _Printer(image.big_endian)
    p = result.plan
    plan_summary = None
    if p is not None:
        plan_summary = {
            "route": p.route.value,
            "cmodx": p.cmodx.value,
            "mode": "runtime" if p.runtime else "offline",
            "stages": len(p.stages),
            "barriers": [b.value for b in p.barriers],
            "settle": None if p.settle is None else p.settle.value,
            "writes": sum(1 for e in result.edits if isinstance(e, WordWrite)),
            "requests": [f"{r.variant.value} {r.current.value} -> {r.target.value}" for r in p.sites],
        }
    body = body_lines(result.edits, result.barriers, dis)
    if facts is not None:
        input_facts, output_facts = facts()
    else:
        input_facts, output_facts = _file_facts(image, path, raw, out, new_raw, result.content)
    log = Log(
        tool=f"mcountrw {__version__}",
        kind=image.kind.value,
        byteorder=image.byteorder,
        input=input_facts,
        output=output_facts,
        target=options.target.value,
        plan=plan_summary,
        edits=result.edits,
        barriers=result.barriers,
        summary=_summary(result, options),
        recipe=None if restore is None else restore.recipe,
        original=None if restore is None else restore.original,
    )
    return dumps(log, dis, body)


def _summary(result: Rewrite, options: Options) -> dict[str, object]:
    out: dict[str, object] = {
        "sites_changed": len(result.sites),
        "sites_already_at_target": result.unchanged,
        "drop_records": options.drop_records,
        "strip_signature": options.strip_signature,
    }
    if result.dropped:
        out["records_dropped"] = len(result.dropped)
    if options.keep_records:
        out["keep_records"] = True  # recorded places may hold words the kernel refuses: a negative control
    if result.stubs is not None:
        out["ool_stubs"] = {
            when: [{"area": c.area, "stubs": c.stubs, "used": c.used} for c in counts]
            for when, counts in zip(("before", "after"), result.stubs, strict=True)
        }
    return out


def _facts(path: Path, raw: bytes | object, content: bytes | object, compression: Compression) -> FileFacts:
    sha = _sha256(raw)  # type: ignore[arg-type]
    content_sha = sha if compression is Compression.NONE else _sha256(content)  # type: ignore[arg-type]
    return FileFacts(str(path), sha, len(raw), content_sha, compression.value)  # type: ignore[arg-type]


class _Printer:
    """capstone's text for each word. The fixed words and the branches come from ``ppc`` (checked
    against capstone in tests): a capstone call per ``bl`` would cost more than the rest of a
    vmlinux rewrite. Anything else (never written by mcountrw, but logged if found) asks capstone."""

    def __init__(self, big_endian: bool) -> None:
        self.big_endian = big_endian
        self.cache: dict[int, str] = dict(TEXT)
        self.dis: Disassembler | None = None

    def __call__(self, word: int, addr: int | None) -> str:
        text = self.cache.get(word)
        if text is not None:
            return text
        if is_bl(word) or is_b(word):
            return branch_text(addr or 0, word)
        if self.dis is None:
            self.dis = Disassembler(self.big_endian)
        text = self.cache[word] = self.dis.text(word)
        return text


# -- undo and verify ------------------------------------------------------------------------


def _content(path: Path, raw: bytes) -> tuple[bytes, Compression]:
    from rewriter.elf.compress import decompress, detect_compression

    kind = detect_compression(raw[:8])
    return (decompress(path, raw, kind) if kind is not Compression.NONE else raw), kind


def _read_and_hash(path: Path) -> tuple[bytes, str]:
    raw = _on_disk(path)
    return raw, _sha256(raw)


def undo_file(patched: Path, log_path: Path, output: Path | None, in_place: bool = False) -> tuple[Path, Log]:
    """Restore the original bytes. Refuses a log made for another file."""
    out = check_output_path(patched, output, in_place)
    # The patched file is read and hashed in a thread (hashlib lets go of the GIL) while the log,
    # 67,000 lines for a vmlinux, is parsed.
    with ThreadPoolExecutor(max_workers=1) as pool:
        read = pool.submit(_read_and_hash, patched)
        log = load(log_path)
        raw, raw_sha = read.result()
    content, kind = _content(patched, raw)
    if raw_sha != log.output.sha256 and _sha256(content) != log.output.content_sha256:
        raise LogError(f"{log_path}: this log is for another file (sha256 of {patched} does not match its output)")
    if out == log_path or (out.exists() and out.resolve() == log_path.resolve()):
        raise OutputError(f"{out}: the output would overwrite the patch log")
    check_extent(log, str(log_path), len(content) + sum(len(e.tail) for e in log.edits if isinstance(e, Truncate)))
    original = invert_edits(bytearray(content), log.edits, log.byteorder)
    new_raw, raw_want = original_bytes(log, original, kind)
    # Written to its temporary file while the result is hashed; published only if the hash is right.
    with ThreadPoolExecutor(max_workers=1) as pool:
        written = pool.submit(write_temp, out, new_raw, patched.stat().st_mode & 0o7777)
        try:
            right = _sha256(original) == log.input.content_sha256
            exact = raw_want is None or _sha256(new_raw) == raw_want
        except BaseException:  # Ctrl-C or SIGTERM: the writer's file must not stay behind
            if written.exception() is None:
                written.result().discard()
            raise
        pending = written.result()
    if not (right and exact):
        pending.discard()
        if not right:
            raise LogError(f"{log_path}: undo does not give back the original (sha256 mismatch); log and file disagree")
        raise LogError(
            f"{log_path}: undo gives back the original content, but compressing it again does not give the "
            f"original {kind.value} bytes (sha256 differs: another liblzma than the one that made the file?)"
        )
    commit(pending)
    return out, log


def original_bytes(log: Log, content: bytes | bytearray, kind: Compression) -> tuple[bytes | bytearray, str | None]:
    """The original file from its restored ``content``, and the sha256 it must have (None: an older
    log without a recipe, which promises the content only). ``kind`` is how the patched file is
    compressed: the original was compressed the same way."""
    if kind is Compression.NONE:
        return content, None  # the content's own sha256 is checked
    if log.original is not None:
        return log.original, log.input.sha256
    if log.recipe is not None:
        return compress(content, log.recipe), log.input.sha256
    return compress(content, kind), None


@dataclass(frozen=True)
class Verdict:
    ok: bool
    reason: str


def verify_files(original: Path, patched: Path, log_path: Path) -> Verdict:
    """Exit 0 iff the byte difference between the two files is exactly what the log says."""
    log = load(log_path)
    orig, _ = _content(original, _on_disk(original))
    try:
        got, _ = _content(patched, _on_disk(patched))
    except ImageError as e:  # e.g. one flipped byte in a .ko.xz: its check fails
        return Verdict(False, str(e))
    if _sha256(orig) != log.input.content_sha256:
        return Verdict(False, f"{original} is not the file this log was made from (sha256 differs)")
    check_extent(log, str(log_path), len(orig))
    try:
        expected = bytes(apply_edits(bytearray(orig), log.edits, log.byteorder))
    except RewriteError as e:
        return Verdict(False, f"replaying the log on {original} fails: {e}")
    if expected == got:
        return Verdict(True, f"{patched} differs from {original} exactly as {log_path} says ({len(log.edits)} edits)")
    if len(expected) != len(got):
        return Verdict(False, f"{patched}: size {len(got)}, the log says {len(expected)}")
    import numpy as np

    first = int(np.flatnonzero(np.frombuffer(got, np.uint8) != np.frombuffer(expected, np.uint8))[0])
    return Verdict(False, f"{patched}: offset {first:#x} holds {got[first]:02x}, the log says {expected[first]:02x}")
