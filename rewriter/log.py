"""The patch log (JSON Lines): how it is built and read; enough to undo and to verify a rewrite.

Line 1 is a header (tool version, input and output sha256, image kind, the plan, and the log this
one builds on: ``base``); then one line per edit in the order it was applied (each kind writes and
reads its own: ``rewriter.edits``) with a ``barrier`` line between the stages of the plan; then a
few ``sites`` lines describing every site the rewrite touched or an earlier one left changed,
column by column, referring to the edits for what they hold (``rewriter.known``: information,
not edits; undo and verify skip them); the last line is a footer that counts the lines and
carries the sha256 of everything before it, so a truncated or edited log is refused.

A compressed input is described so that undo gives its exact bytes back: the header's
``recompress`` is the recipe that turns its content into those bytes (``rewriter.elf.compress``),
or, when no recipe does, an ``original`` line before the footer carries the bytes themselves.

Keys are sorted and numbers that are words or addresses are hex strings, so logs diff well and
the same inputs always give the same log (there are no timestamps). This module is the only one
that knows the layout of a log; the rest ask it for a :class:`Log` or a :class:`Header`.
"""

from __future__ import annotations

import errno
import hashlib
import json
import mmap
import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from itertools import groupby
from operator import attrgetter
from pathlib import Path
from typing import Any, Final, NamedTuple, TypeAlias, cast

from rewriter import __version__
from rewriter.edits import (
    BYTES_LINE_START,
    KINDS,
    WRITE_LINE_START,
    BytesEdit,
    Edit,
    LineText,
    WordWrite,
    apply_edits,
    byteorder,
    bytes_lines,
    bytes_lines_in,
    invert_edits,
    write_lines,
    write_lines_in,
)
from rewriter.elf.compress import Compression, Recipe, Restore, compress
from rewriter.elf.image import Kind
from rewriter.elf.structs import ByteOrder
from rewriter.errors import LogError
from rewriter.heap import collector_paused
from rewriter.known import (
    GROUP_LINE_START,
    GROUP_TYPE,
    LINE_TYPE,
    SiteLine,
    group_lines,
    read_groups,
    site_lines_in,
    with_log,
)
from rewriter.prose import json_problem, listed
from rewriter.reading import NO_SUCH_FILE, file_at, read_regular
from rewriter.rewrite import Options, Rewrite
from rewriter.sites import Scan
from rewriter.states import SiteState

FORMAT: Final = "mcountrw-log"
VERSION: Final = 3
"""2: ``site`` lines (one per site) and the header's ``base`` (a version-1 reader would refuse the
new lines); 3: ``sites`` lines instead (a group of sites each, column by column, referring to the
edits), a tenth of the bytes and of the time."""
READS: Final = (1, 2, 3)
LOG_SUFFIX: Final = ".mcountrw.jsonl"
"""A file's log is, by default, the file's name and this, beside it."""


def default_log_path(output: Path) -> Path:
    return output.with_name(output.name + LOG_SUFFIX)


def log_path_in(log_dir: Path, name: str) -> Path:
    """Where ``--log-dir`` keeps the log of the file named ``name`` in its tree
    (:func:`rewriter.batch.tree_name`): the tree mirrored, ``DIR/kernel/fs/ext4/ext4.ko.mcountrw.jsonl``.
    prenop writes it there, and scan, audit, diff and policy check read it from there."""
    return log_dir / (name + LOG_SUFFIX)


def own_name_place(log_dir: Path, name: str) -> Path | None:
    """Where ``--log-dir`` keeps the log of a file by its own name, when its name in its tree is a
    path below a directory (:func:`log_path_in` of the last part of ``name``): a file named by
    itself has it there, and so had a file named below a directory named with it before its name
    was its path below that directory (b7d1dda). None when that is the file's own place. Only ever
    named to the user, never read as the file's log: a run writes each log where it reads it."""
    own = Path(name).name
    return None if own == name else log_path_in(log_dir, own)


Data: TypeAlias = bytes | bytearray | memoryview | mmap.mmap


def _sha256(data: Data) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class FileFacts:
    """A file as it is on disk (``sha256``, ``size``) and as mcountrw edits it (``content_sha256``:
    after decompression; the same as ``sha256`` for an uncompressed file)."""

    path: str
    sha256: str
    size: int
    content_sha256: str
    compression: Compression

    @classmethod
    def of(cls, path: Path, raw: Data, content: Data, compression: Compression) -> FileFacts:
        sha = _sha256(raw)
        content_sha = sha if compression is Compression.NONE else _sha256(content)
        return cls(str(path), sha, len(raw), content_sha, compression)

    def to_json(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "sha256": self.sha256,
            "size": self.size,
            "content_sha256": self.content_sha256,
            "compression": self.compression.value,
        }

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> FileFacts:
        path, sha, content_sha = str(d["path"]), str(d["sha256"]), str(d["content_sha256"])
        return cls(path, sha, int(d["size"]), content_sha, Compression(d["compression"]))


@dataclass(frozen=True)
class Base:
    """The log a rewrite builds on (its input's log): where it is and its own sha256. In a log file
    ``path`` is relative to that log's directory (:meth:`written_for`); older logs wrote it from
    the directory the rewrite was run in, so :func:`find_base` tries both."""

    path: str
    sha256: str

    def to_json(self) -> dict[str, str]:
        return {"path": self.path, "sha256": self.sha256}

    @classmethod
    def from_json(cls, d: Mapping[str, Any] | None) -> Base | None:
        return None if d is None else cls(str(d["path"]), str(d["sha256"]))

    def written_for(self, log: Path) -> Base:
        """This base as the log at ``log`` names it: from its directory, so that the chain holds
        wherever a later command runs (a path from the working directory did not)."""
        return Base(os.path.relpath(self.path, log.parent if str(log.parent) else "."), self.sha256)


def find_base(base: Base, log: Path) -> Path | None:
    """The log ``base`` names, as the log at ``log`` names it: its path from that log's directory,
    from here (an older log's), or its name beside that log (moved together), whichever holds the
    log with the sha256 named; None if none does."""
    named = Path(base.path)
    for place in dict.fromkeys((log.parent / named, named, log.parent / named.name)):
        try:
            if file_at(place) and hashlib.sha256(read_regular(place)).hexdigest() == base.sha256:
                return _plain(place)
        except OSError:
            continue
    return None


def _plain(place: Path) -> Path:
    """``place`` without its ``..`` parts when that names the same file (a link above a ``..``
    may not): undo said "its own log: /dev/shm/v/../../../tmp/l.jsonl" of /tmp/l.jsonl, the base
    path being written from the new log's directory."""
    plain = Path(os.path.normpath(place))
    try:
        return plain if plain != place and os.path.samefile(plain, place) else place
    except OSError:
        return place


@dataclass(frozen=True)
class Header:
    """The first line: what was rewritten into what, how, and (compressed input) how its bytes
    come back (``recipe``; None: by an ``original`` line, or, in an older log, not promised)."""

    tool: str
    kind: Kind
    byteorder: ByteOrder
    input: FileFacts
    output: FileFacts
    target: SiteState
    plan: dict[str, Any] | None
    summary: dict[str, Any]
    recipe: Recipe | None = None
    base: Base | None = None

    @property
    def sites_touched(self) -> int:
        """Sites whose words changed, or whose records went or came back if more (patchable and
        ool: no word changes, the records are what goes or comes back)."""
        counts = ("sites_changed", "records_dropped", "records_restored")
        return max(int(self.summary.get(k, 0)) for k in counts)

    def describes(self, sha256: str, content_sha256: str | None = None) -> bool:
        """Whether this log's output is the file with these hashes (on disk, or decompressed)."""
        return sha256 == self.output.sha256 or content_sha256 == self.output.content_sha256

    def made_from(self, sha256: str, content_sha256: str | None = None) -> bool:
        """Whether this log's input is the file with these hashes: an undo already gave it back."""
        return sha256 == self.input.sha256 or content_sha256 == self.input.content_sha256

    def to_json(self) -> dict[str, Any]:
        header = {
            "type": "header",
            "format": FORMAT,
            "version": VERSION,
            "tool": self.tool,
            "kind": self.kind.value,
            "byteorder": self.byteorder,
            "input": self.input.to_json(),
            "output": self.output.to_json(),
            "target": self.target.value,
            "plan": self.plan,
            "summary": self.summary,
            "base": None if self.base is None else self.base.to_json(),
        }
        if self.input.compression is not Compression.NONE:
            header["recompress"] = None if self.recipe is None else self.recipe.to_json()
        return header

    @classmethod
    def from_json(cls, rec: Mapping[str, Any]) -> Header:
        return cls(
            tool=str(rec["tool"]),
            kind=Kind(rec["kind"]),
            byteorder=byteorder(rec["byteorder"]),
            input=FileFacts.from_json(rec["input"]),
            output=FileFacts.from_json(rec["output"]),
            target=SiteState(rec["target"]),
            plan=rec.get("plan"),
            summary=dict(rec.get("summary") or {}),
            recipe=None if rec.get("recompress") is None else Recipe.from_json(rec["recompress"]),
            base=Base.from_json(rec.get("base")),
        )


@dataclass(frozen=True)
class Log:
    header: Header
    edits: tuple[Edit, ...]
    barriers: tuple[tuple[int, str], ...] = ()  # (after stage, name)
    original: bytes | None = None  # compressed input that no recipe rebuilds: its bytes
    sites: tuple[SiteLine, ...] = ()  # information for later rewrites, not edits

    def replay(self, content: bytes | bytearray) -> bytearray:
        """``content`` (the input's) with every edit applied, as the rewrite left it."""
        return apply_edits(bytearray(content), self.edits, self.header.byteorder)

    def input_size(self, output_size: int) -> int:
        """The size of the content the edits were applied to, from the size they left."""
        return output_size - sum(e.growth for e in self.edits)

    def revert(self, content: bytes | bytearray, in_place: bool = False) -> bytearray:
        """``content`` (the output's) with every edit undone, last first; ``in_place``: in
        ``content`` itself if it is a bytearray (whose caller is done with it), not in a copy."""
        buf = content if in_place and isinstance(content, bytearray) else bytearray(content)
        return invert_edits(buf, self.edits, self.header.byteorder)

    def original_file(self, content: bytes | bytearray, kind: Compression) -> tuple[bytes | bytearray, str | None]:
        """The original file from its restored ``content``, and the sha256 it must have (None: an
        older log without a recipe, which promises the content only). ``kind`` is how the patched
        file is compressed: the original was compressed the same way."""
        if kind is Compression.NONE:
            return content, None  # the content's own sha256 is checked
        if self.original is not None:
            return self.original, self.header.input.sha256
        if self.header.recipe is not None:
            return compress(content, self.header.recipe), self.header.input.sha256
        return compress(content, kind), None


# -- building -------------------------------------------------------------------------------


@collector_paused()
def render(
    image_kind: Kind,
    order: ByteOrder,
    result: Rewrite,
    options: Options,
    facts: Callable[[], tuple[FileFacts, FileFacts]],
    restore: Restore,
    base: Base | None = None,
) -> bytes:
    """The patch log of ``result`` (UTF-8). ``facts`` gives the input's and output's
    :class:`FileFacts`; it is asked only once the lines are formatted, so that a caller can hash
    the files meanwhile. ``restore`` says how a compressed input's bytes come back; ``base``
    names the input's own log, if it has one."""
    body = body_lines(result.edits, result.barriers, order) + group_lines(result.site_lines, result.edits)
    input_facts, output_facts = facts()
    header = Header(
        tool=f"mcountrw {__version__}",
        kind=image_kind,
        byteorder=order,
        input=input_facts,
        output=output_facts,
        target=options.target,
        plan=_plan_json(result),
        summary=_summary(result, options),
        recipe=restore.recipe,
        base=base,
    )
    log = Log(header, result.edits, result.barriers, restore.original, result.site_lines)
    return dumps(log, body)


def _plan_json(result: Rewrite) -> dict[str, Any] | None:
    p = result.plan
    if p is None:
        return None
    return {
        "route": p.route.value if p.routed else None,  # as the plan JSON says it: ool sites have no A
        "cmodx": p.cmodx.value,
        "mode": "runtime" if p.runtime else "offline",
        "stages": len(p.stages),
        "barriers": [b.value for b in p.barriers],
        "settle": None if p.settle is None else p.settle.value,
        "writes": result.word_writes,
        "requests": [f"{r.variant.value} {r.current.value} -> {r.target.value}" for r in p.sites],
    }


def _summary(result: Rewrite, options: Options) -> dict[str, Any]:
    out: dict[str, Any] = {
        "sites_changed": len(result.sites),
        "sites_already_at_target": result.unchanged,
        "drop_records": options.drop_records,
        "strip_signature": options.strip_signature,  # the option as given
        "signature_stripped": result.signature_stripped,  # what it did: a signature was there, and went
    }
    if result.dropped:
        out["records_dropped"] = len(result.dropped)
    if result.restored:
        out["records_restored"] = len(result.restored)
    if options.keep_records:
        out["keep_records"] = True  # recorded places may hold words the kernel refuses: a negative control
    if result.stubs is not None:
        out["ool_stubs"] = {
            when: [{"area": c.area, "stubs": c.stubs, "used": c.used} for c in counts]
            for when, counts in zip(("before", "after"), result.stubs, strict=True)
        }
    return out


def dumps(log: Log, body: list[str] | None = None) -> bytes:
    """The log, UTF-8 encoded. ``body`` is :func:`body_lines` of ``log`` if the caller made it already."""
    lines = [json.dumps(log.header.to_json(), sort_keys=True)]
    if body is None:
        body = body_lines(log.edits, log.barriers, log.header.byteorder) + group_lines(log.sites, log.edits)
    lines += body
    if log.original is not None:
        why = "the compressed input, which no recipe rebuilds from its content"
        lines.append(json.dumps({"type": "original", "data": log.original.hex(), "why": why}, sort_keys=True))
    # Each line encoded on its own and hashed a slice of lines at a time, so that the 30 MB of a
    # vmlinux log are copied once, into the result: the text joined, encoded, then the footer
    # added made four copies (some 14 ms each, page faults mostly) and held three at once.
    encoded = [line.encode() for line in lines]
    digest = hashlib.sha256()
    for start in range(0, len(encoded), _HASHED_AT_ONCE):
        digest.update(b"\n".join(encoded[start : start + _HASHED_AT_ONCE]))
        digest.update(b"\n")
    footer = {"type": "footer", "lines": len(encoded), "sha256": digest.hexdigest()}
    encoded += (json.dumps(footer, sort_keys=True).encode(), b"")  # b"": the newline after the footer
    return b"\n".join(encoded)


_HASHED_AT_ONCE: Final = 4096
"""Lines hashed together by :func:`dumps`: a slice small enough to stay in the cache."""


def body_lines(edits: Sequence[Edit], barriers: Sequence[tuple[int, str]], order: ByteOrder) -> list[str]:
    """One line per edit, and a barrier line before the first write of each stage that follows one."""
    text = LineText(order)
    lines: list[str] = []
    barrier_after = dict(barriers)
    stage = 0
    for n, run in groupby(edits, attrgetter("stage")):
        if n is None:
            lines += _other_lines(run, text)
            continue
        while n > stage:
            if stage in barrier_after:
                barrier = {"type": "barrier", "after_stage": stage, "name": barrier_after[stage]}
                lines.append(json.dumps(barrier, sort_keys=True))
            stage += 1
        lines += write_lines(cast("Iterator[WordWrite]", run), text)  # only word writes have a stage
    return lines


def _other_lines(edits: Iterable[Edit], text: LineText) -> list[str]:
    """The lines of edits without a stage: each run of bytes edits (a vmlinux pre-nop's 33,689
    zeroed record slots) in one loop, any other edit by its own ``to_line``."""
    lines: list[str] = []
    for kind, run in groupby(edits, type):
        if kind is BytesEdit:
            lines += bytes_lines(cast("Iterator[BytesEdit]", run), text)
        else:
            lines += [e.to_line(text) for e in run]
    return lines


# -- reading --------------------------------------------------------------------------------


def load(path: Path, sites: bool = True) -> Log:
    """The log at ``path``; ``sites=False`` leaves its site lines unread (``Log.sites`` empty):
    undo and verify need only the edits, and a vmlinux log has 33,689 site lines."""
    try:
        raw = read_regular(path)
        text = raw.decode()
    except OSError as e:
        raise LogError(f"{path}: {e.strerror}") from None
    except UnicodeDecodeError:
        raise LogError(f"{path}: not a patch log (not text)") from None
    return loads(text, str(path), sites, raw)


def read_header(path: Path) -> Header | None:
    """The header of the log at ``path`` (None if there is none), its footer checksum checked.

    Parsing every line of a log costs more than rewriting the file it describes (a vmlinux log
    has 67k lines), and most runs need only the two hashes; :func:`load` reads the edits when a
    file has to be taken back to its original."""
    try:
        text = read_regular(path)
    except FileNotFoundError:
        return None
    except OSError as e:
        if e.errno == errno.ENAMETOOLONG:  # a log beside a file with a long name: none can be there
            return None
        raise LogError(f"{path}: {e.strerror}") from None
    body_end = text.rfind(b"\n", 0, len(text) - 1) + 1
    try:
        footer = json.loads(text[body_end:])
        header = Header.from_json(json.loads(text[: text.index(b"\n")]))
        _ = header.sites_touched  # what prenop reports: a log without it is refused here, with the rest
        ok = footer["sha256"] == hashlib.sha256(text[:body_end]).hexdigest()
    except (ValueError, KeyError, TypeError, RecursionError):
        raise LogError(f"{path}: not an mcountrw patch log, or a truncated one") from None
    if not ok:
        raise LogError(f"{path}: patch log was edited or truncated (footer checksum does not match)")
    return header


@dataclass(frozen=True)
class Known:
    """A patch log as a source of sites: its header and ``site`` lines, and the sha256 of the log
    file itself (what a log built on this one names as its ``base``)."""

    path: Path
    sha256: str
    header: Header
    sites: tuple[SiteLine, ...]

    @property
    def base(self) -> Base:
        return Base(str(self.path), self.sha256)


SITE_LINE_START: Final = '{"at": '
"""How every version-2 ``site`` line begins (keys sorted: ``at`` first), and no other kind's line."""
_SITE_INFO: Final = {2: SITE_LINE_START, 3: GROUP_LINE_START}
"""How the lines that describe sites begin, by format version (version 1 has none)."""


def load_known(path: Path) -> Known:
    """The log at ``path`` as a source of sites: its header and site lines, its footer checksum
    checked (the edits are read too: the sites lines of version 3 refer to them)."""
    try:
        raw = read_regular(path)
        text = raw.decode()
    except OSError as e:
        raise LogError(f"{path}: {e.strerror}") from None
    except UnicodeDecodeError:
        raise LogError(f"{path}: not a patch log (not text)") from None
    log = loads(text, str(path), raw=raw)
    return Known(path, hashlib.sha256(raw).hexdigest(), log.header, log.sites)


def _site_lines(lines: list[str], numbers: list[int], name: str) -> list[SiteLine]:
    """The version-2 site lines ``numbers`` of ``lines``: read by the pattern of
    :func:`site_lines_in` when every one is as mcountrw wrote it, else each by json (which says
    where a broken one breaks)."""
    fast = site_lines_in("".join(lines[n] for n in numbers))
    if len(fast) == len(numbers):
        return fast
    return [SiteLine.from_json(rec) for rec in _json_lines([lines[n] for n in numbers], name, numbers)]


def for_file(
    path: Path, sha256: str, explicit: Path | None = None, content_sha256: str | None = None
) -> tuple[Known | None, str | None]:
    """The patch log whose output is the file at ``path`` (its ``sha256`` given, and for a
    compressed file its content's), read as a source of sites, and a warning; as :func:`log_of`
    decides, but reading the log once."""
    chosen = explicit if explicit is not None else default_log_path(path)
    if explicit is None and not file_at(chosen):
        return None, None
    try:
        known = load_known(chosen)
    except LogError as e:
        if explicit is not None:
            raise
        return None, f"{e}: ignored"
    warning = _judge(known.header, path, chosen, explicit is not None, sha256, content_sha256)
    return (None, warning) if warning is not None else (known, None)


def log_of(
    path: Path,
    sha256: str,
    explicit: Path | None = None,
    content_sha256: str | None = None,
    *,
    at: Path | None = None,
) -> tuple[Path | None, str | None]:
    """Which patch log describes the file at ``path`` (its ``sha256`` given, and for a compressed
    file its content's), and a warning; only the header is read.

    ``explicit`` (``--log``) must be that file's log: :class:`LogError` otherwise, naming both
    hashes. Without it the log ``at`` the file's place (under ``--log-dir``: :func:`log_path_in`),
    by default the one beside the file (:func:`default_log_path`), is used if its output is this
    file; if it is not, or cannot be read, it is ignored with a one-line warning (a log left
    beside a file that was changed since, or restored by undo, describes another file)."""
    place = at if at is not None else default_log_path(path)
    chosen = explicit if explicit is not None else place
    try:
        header = read_header(chosen)
    except LogError as e:
        if explicit is not None:
            raise
        return None, f"{e}: ignored"
    if header is None:
        if explicit is not None:
            raise LogError(f"{explicit}: {NO_SUCH_FILE}")
        return None, None
    warning = _judge(header, path, chosen, explicit is not None, sha256, content_sha256)
    return (None, warning) if warning is not None else (chosen, None)


def _judge(
    header: Header, path: Path, log: Path, explicit: bool, sha256: str, content_sha256: str | None
) -> str | None:
    """None if ``header``'s output is the file; else the warning (raised, for an explicit log)."""
    if header.describes(sha256, content_sha256):
        return None
    if explicit:
        undone = f" ({path} is its input: undone since?)" if header.made_from(sha256, content_sha256) else ""
        raise LogError(
            f"{log}: not the log of {path}: its output has sha256 {header.output.sha256}, the file has {sha256}"
            + undone
        )
    return (
        f"{log}: ignored: its output has sha256 {header.output.sha256[:16]}..., {path} has {sha256[:16]}... "
        "(changed since, or undone)"
    )


class FoundLogs(NamedTuple):
    """What :func:`logs_at` found."""

    logs: dict[Path, Path]  # each file that has one -> the log that describes it
    warnings: list[str]  # one per log ignored: it describes none of the files that looked for it
    present: int  # places that hold a log at all (0 under --log-dir: the wrong directory?)


def logs_at(places: Sequence[tuple[Path, Path]]) -> FoundLogs:
    """The patch log of each file that has one, ``places`` pairing each file with where its log
    would be: beside it, or under ``--log-dir`` (:func:`log_path_in`). Each log is judged by
    :func:`log_of` and given to the file it describes. Several files may look in one place (the
    same name in diff's two trees, under one ``--log-dir``): a log is ignored, with one warning,
    only if it describes none of them. A place with no log means no log, not an error."""
    logs: dict[Path, Path] = {}
    ignored: dict[Path, str] = {}  # a place -> the first warning about its log
    present: set[Path] = set()
    for path, place in places:
        if not file_at(place):
            continue
        present.add(place)
        try:
            sha = hashlib.sha256(read_regular(path)).hexdigest()
        except OSError:
            continue  # the scan says what is wrong with the file
        log, warning = log_of(path, sha, at=place)
        if log is not None:
            logs[path] = log
        elif warning is not None:
            ignored.setdefault(place, warning)
    claimed = set(logs.values())
    return FoundLogs(logs, [w for place, w in ignored.items() if place not in claimed], len(present))


def logged(result: Scan, logs: Mapping[Path, Path]) -> Scan:
    """``result`` with the sites of its file's patch log (``logs`` maps files to the logs found to
    describe them, by :func:`log_of`), or as it is if there is none."""
    log = logs.get(result.path)
    if log is None:
        return result
    return with_log(result, load_known(log).sites, log)


@collector_paused()
def loads(text: str, name: str, sites: bool = True, raw: bytes | None = None) -> Log:
    """The log in ``text`` (``name`` says where, in messages); ``sites=False`` leaves its site
    information unread, as :func:`load`. ``raw``: the bytes ``text`` was decoded from, if the
    caller read them, which the footer checksum is checked on (else ``text`` encoded again)."""
    lines = text.splitlines(keepends=True)
    if not lines:
        raise LogError(f"{name}: empty patch log")
    version = _json_line(lines[0], name, 1).get("version")
    records, aside = _records(lines, text, name, _SITE_INFO.get(version) if type(version) is int else None)
    header_rec, footer = records[0], records[-1]
    _check_frame(header_rec, footer, text.encode() if raw is None else raw, lines, name)
    assert isinstance(header_rec, dict)
    body = _Body([], [], [], [], None)
    for n, rec in enumerate(records[1:-1], start=2):
        if type(rec) is WordWrite or type(rec) is BytesEdit:  # a write or bytes line, read by a pattern
            body.edits.append(rec)
        elif rec is not None:  # (None: site information, read below)
            body = _read_line(cast(dict[str, Any], rec), body, f"{name}:{n}")
    try:
        header = Header.from_json(header_rec)
    except (KeyError, TypeError, ValueError, OverflowError, IndexError) as e:
        raise LogError(f"{name}:1: malformed header ({e})") from None
    edits = tuple(body.edits)
    site_lines: tuple[SiteLine, ...] = ()
    if sites:
        try:
            site_lines = _read_sites(lines, aside, body, edits, version, name)
        except (KeyError, TypeError, ValueError, OverflowError, IndexError) as e:  # "" where a pair was
            raise LogError(f"{name}: malformed site line ({e})") from None
    return Log(header, edits, tuple(body.barriers), body.original, site_lines)


def _read_sites(
    lines: list[str], aside: list[int], body: _Body, edits: tuple[Edit, ...], version: object, name: str
) -> tuple[SiteLine, ...]:
    """The sites the log describes: version 2's site lines (``aside``: those as mcountrw wrote
    them; ``body.sites`` any other), or version 3's sites lines, resolved against ``edits``."""
    if version == 2:
        return (*_site_lines(lines, aside, name), *body.sites)
    groups = [*_json_lines([lines[n] for n in aside], name, aside), *body.groups]
    return tuple(read_groups(groups, edits)) if groups else ()


class _Body(NamedTuple):
    """The lines of a log between header and footer, as they are read."""

    edits: list[Edit]
    barriers: list[tuple[int, str]]
    sites: list[SiteLine]  # version-2 site lines not as mcountrw wrote them (keys in another order)
    groups: list[dict[str, Any]]  # version-3 sites lines not as mcountrw writes them
    original: bytes | None


def _read_line(rec: dict[str, Any], body: _Body, where: str) -> _Body:
    try:
        kind = rec["type"]
        if kind == "barrier":
            body.barriers.append((int(rec["after_stage"]), str(rec["name"])))
        elif kind == "original":
            return body._replace(original=bytes.fromhex(rec["data"]))
        elif kind == LINE_TYPE:
            body.sites.append(SiteLine.from_json(rec))
        elif kind == GROUP_TYPE:
            body.groups.append(rec)
        elif kind in KINDS:
            body.edits.append(KINDS[kind](rec))
        else:
            raise ValueError(f"unknown record type {kind!r}")
    except (KeyError, TypeError, ValueError, OverflowError) as e:
        raise LogError(f"{where}: malformed {rec.get('type', 'record')} record ({e})") from None
    return body


def _check_frame(
    header: _Record,
    footer: _Record,
    data: bytes,
    lines: list[str],
    name: str,
) -> None:
    """The first line is an mcountrw header of a version this code reads; the last a footer whose
    checksum covers every line before it. ``data``: the log's UTF-8 bytes, hashed in place (a
    slice of the text encoded again made two copies of a vmlinux log's 30 MB)."""
    if not isinstance(header, dict) or not isinstance(footer, dict):
        raise LogError(f"{name}: not an mcountrw patch log (no header)")
    if header.get("type") != "header" or header.get("format") != FORMAT:
        raise LogError(f"{name}: not an mcountrw patch log (no header)")
    if header.get("version") not in READS:
        versions = listed([str(v) for v in READS])
        raise LogError(f"{name}: patch log version {header.get('version')!r}, this mcountrw reads {versions}")
    if footer.get("type") != "footer":
        raise LogError(f"{name}: truncated patch log (no footer)")
    body = memoryview(data)[: len(data) - len(lines[-1].encode())]
    if footer.get("lines") != len(lines) - 1 or footer.get("sha256") != hashlib.sha256(body).hexdigest():
        raise LogError(f"{name}: patch log was edited or truncated (footer checksum does not match)")


_Record: TypeAlias = dict[str, Any] | WordWrite | BytesEdit | None
"""A log line as :func:`_records` reads it: an edit read by a pattern, a JSON object, or None."""


def _records(lines: list[str], text: str, name: str, aside: str | None) -> tuple[list[_Record], list[int]]:
    """Each line as a WordWrite or BytesEdit (a well-formed write or bytes line) or a parsed JSON
    object, but the lines between header and footer that start with ``aside`` (site information:
    None here), whose numbers come second.

    All write lines are matched in one pass over the part of the text that holds them, and so are
    all bytes lines; each kind lines up with the body lines that start like one, or, if any such
    line is malformed, nothing of that kind is taken from the pattern and json reads those lines
    (and says where the log is broken). The footer checksum, checked next, vouches that the text
    is what mcountrw wrote."""
    writes: list[int] = []
    patches: list[int] = []  # bytes lines
    put_aside: list[int] = []
    others = [0]
    for n in range(1, len(lines) - 1):
        line = lines[n]
        if line.startswith(WRITE_LINE_START):
            writes.append(n)
        elif line.startswith(BYTES_LINE_START):
            patches.append(n)
        elif aside is not None and line.startswith(aside):
            put_aside.append(n)
        else:
            others.append(n)
    others.append(len(lines) - 1)
    records: list[_Record] = [None] * len(lines)
    for numbers, read in ((writes, write_lines_in), (patches, bytes_lines_in)):
        edits: Sequence[WordWrite | BytesEdit] = read(text) if numbers else []
        if len(edits) == len(numbers):
            for n, e in zip(numbers, edits, strict=True):
                records[n] = e
        else:
            others += numbers
    others.sort()
    for n, rec in zip(others, _json_lines([lines[n] for n in others], name, others), strict=True):
        records[n] = rec
    return records, put_aside


def _json_lines(lines: list[str], name: str, numbers: list[int]) -> list[dict[str, Any]]:
    """Every line parsed in one call (a vmlinux log has 67,000 lines: one json.loads per line
    costs more than the undo itself); line by line only to say where a broken log breaks.
    ``numbers`` are the lines' indexes in the log, for the message."""
    records: list[dict[str, Any]] | None
    try:
        records = json.loads("[" + ",".join(lines) + "]")
    except (ValueError, RecursionError):  # line by line below, to say which
        records = None
    if records is None or len(records) != len(lines) or not all(isinstance(r, dict) for r in records):
        return [_json_line(line, name, n + 1) for n, line in zip(numbers, lines, strict=True)]
    return records


def _json_line(line: str, name: str, n: int) -> dict[str, Any]:
    try:
        rec = json.loads(line)
    except (ValueError, RecursionError) as e:
        why = "" if isinstance(e, json.JSONDecodeError) else f": {json_problem(e)}"
        raise LogError(f"{name}:{n}: not JSON (truncated or edited patch log?){why}") from None
    if not isinstance(rec, dict):
        raise LogError(f"{name}:{n}: not a log record")
    return rec


def check_extent(log: Log, name: str, original_size: int) -> None:
    """Every edit lies inside the file as the edits before it leave it, replayed from a file of
    ``original_size`` bytes; an edit that changes the size reaches exactly the end of the file.
    The footer checksum catches an accidental edit; this catches a log edited on purpose (footer
    recomputed) before a replay reads or writes past the end."""
    size = original_size
    for n, e in enumerate(log.edits, start=1):
        end, growth = e.reach(), e.growth
        if end > size or (growth and end != size):
            raise LogError(f"{name}: edit {n} reaches offset {end:#x}, the file is {size:#x} bytes there")
        size += growth
