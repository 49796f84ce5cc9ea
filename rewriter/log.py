"""The patch log: JSON Lines, enough to undo and to verify a rewrite.

Line 1 is a header (tool version, input and output sha256, image kind, the plan); then one line
per edit in the order it was applied (``write``, ``bytes``, ``rela``, ``truncate``) with a
``barrier`` line between the stages of the plan; the last line is a footer that counts the lines
and carries the sha256 of everything before it, so a truncated or edited log is refused.

A compressed input is described so that undo gives its exact bytes back: the header's
``recompress`` is the recipe that turns its content into those bytes (``rewriter.elf.compress``),
or, when no recipe does, an ``original`` line before the footer carries the bytes themselves.

Keys are sorted and numbers that are words or addresses are hex strings, so logs diff well and
the same inputs always give the same log (there are no timestamps).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from rewriter.edits import BytesEdit, Edit, RelaEdit, Truncate, WordWrite
from rewriter.elf.compress import Recipe
from rewriter.errors import LogError

FORMAT: Final = "mcountrw-log"
VERSION: Final = 1


@dataclass(frozen=True)
class FileFacts:
    """A file as it is on disk (``sha256``, ``size``) and as mcountrw edits it (``content_sha256``:
    after decompression; the same as ``sha256`` for an uncompressed file)."""

    path: str
    sha256: str
    size: int
    content_sha256: str
    compression: str

    def to_json(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "sha256": self.sha256,
            "size": self.size,
            "content_sha256": self.content_sha256,
            "compression": self.compression,
        }


@dataclass(frozen=True)
class Log:
    tool: str
    kind: str
    byteorder: str
    input: FileFacts
    output: FileFacts
    target: str
    plan: dict[str, Any] | None
    edits: tuple[Edit, ...]
    barriers: tuple[tuple[int, str], ...]  # (after stage, name)
    summary: dict[str, Any]
    recipe: Recipe | None = None  # compressed input: how its content becomes its bytes again
    original: bytes | None = None  # compressed input that no recipe rebuilds: its bytes


def _hex(n: int | None) -> str | None:
    return None if n is None else f"{n:#x}"


def _edit_json(e: Edit, disasm: Any) -> dict[str, Any]:
    if isinstance(e, WordWrite):
        return {
            "type": "write",
            "stage": e.stage,
            "address": _hex(e.addr),
            "offset": _hex(e.offset),
            "section": e.section,
            "section_offset": _hex(e.section_offset),
            "function": e.function,
            "slot": e.slot,
            "old": f"{e.old:08x}",
            "new": f"{e.new:08x}",
            "old_asm": disasm(e.old, e.addr),
            "new_asm": disasm(e.new, e.addr),
            "state_before": e.state_before,
            "state_after": e.state_after,
        }
    if isinstance(e, BytesEdit):
        return {"type": "bytes", "offset": _hex(e.offset), "old": e.old.hex(), "new": e.new.hex(), "why": e.why}
    if isinstance(e, RelaEdit):
        return {
            "type": "rela",
            "section": e.section,
            "offset": _hex(e.offset),
            "size": e.size,
            "entsize": e.entsize,
            "removed": list(e.removed),
            "entries": [x.hex() for x in e.entries],
            "keep": e.keep,
            "why": e.why,
        }
    return {"type": "truncate", "size": e.size, "tail": e.tail.hex(), "why": e.why}


def dumps(log: Log, disasm: Any, body: list[str] | None = None) -> bytes:
    """The log, UTF-8 encoded. ``disasm(word, addr) -> str`` prints a word (capstone-style); ``body`` is
    :func:`body_lines` of ``log`` if the caller already made it (e.g. while hashing the files)."""
    header = {
        "type": "header",
        "format": FORMAT,
        "version": VERSION,
        "tool": log.tool,
        "kind": log.kind,
        "byteorder": log.byteorder,
        "input": log.input.to_json(),
        "output": log.output.to_json(),
        "target": log.target,
        "plan": log.plan,
        "summary": log.summary,
    }
    if log.input.compression != "none":
        header["recompress"] = None if log.recipe is None else log.recipe.to_json()
    lines = [json.dumps(header, sort_keys=True)]
    lines += body if body is not None else body_lines(log.edits, log.barriers, disasm)
    if log.original is not None:
        why = "the compressed input, which no recipe rebuilds from its content"
        lines.append(json.dumps({"type": "original", "data": log.original.hex(), "why": why}, sort_keys=True))
    lines.append("")  # the newline after the last line, without another copy of 20 MB
    data = "\n".join(lines).encode()
    footer = {"type": "footer", "lines": len(lines) - 1, "sha256": hashlib.sha256(data).hexdigest()}
    return data + json.dumps(footer, sort_keys=True).encode() + b"\n"


def body_lines(edits: Sequence[Edit], barriers: Sequence[tuple[int, str]], disasm: Any) -> list[str]:
    """One line per edit, with a barrier line between stages."""
    lines: list[str] = []
    barrier_after = dict(barriers)
    stage = 0
    quote = _Quoter()
    quoted = quote.cache
    fixed: dict[int, str] = getattr(disasm, "cache", {})  # words whose text does not depend on the address
    for e in edits:
        if type(e) is WordWrite:
            # The hot loop of a vmlinux rewrite (67,380 writes): unpacked, cached, no dict per line.
            n, offset, addr, section, section_offset, function, slot, old, new, before, after = e
            while n > stage:
                if stage in barrier_after:
                    lines.append(json.dumps({"type": "barrier", "after_stage": stage, "name": barrier_after[stage]}))
                stage += 1
            qf = quoted.get(function) or quote(function)
            qs = quoted.get(section) or quote(section)
            a = "null" if addr is None else f'"{hex(addr)}"'
            new_asm = fixed.get(new) or disasm(new, addr)
            old_asm = fixed.get(old) or disasm(old, addr)
            lines.append(
                f'{{"address": {a}, "function": {qf}, "new": "{new:08x}", "new_asm": "{new_asm}", '
                f'"offset": "{hex(offset)}", "old": "{old:08x}", "old_asm": "{old_asm}", "section": {qs}, '
                f'"section_offset": "{hex(section_offset)}", "slot": "{slot}", "stage": {n}, '
                f'"state_after": "{after}", "state_before": "{before}", "type": "write"}}'
            )
        elif isinstance(e, BytesEdit):
            lines.append(
                f'{{"new": "{e.new.hex()}", "offset": "{e.offset:#x}", "old": "{e.old.hex()}", '
                f'"type": "bytes", "why": {quote(e.why)}}}'
            )
        else:
            lines.append(json.dumps(_edit_json(e, disasm), sort_keys=True))
    return lines


class _Quoter:
    """JSON string literals of the few distinct strings (functions, sections, states), made once each."""

    def __init__(self) -> None:
        self.cache: dict[str | None, str] = {}

    def __call__(self, text: str | None) -> str:
        q = self.cache.get(text)
        if q is None:
            q = self.cache[text] = json.dumps(text)
        return q


# -- reading --------------------------------------------------------------------------------


def load(path: Path) -> Log:
    try:
        text = path.read_text()
    except OSError as e:
        raise LogError(f"{path}: {e.strerror}") from None
    except UnicodeDecodeError:
        raise LogError(f"{path}: not a patch log (not text)") from None
    return loads(text, str(path))


def loads(text: str, name: str) -> Log:
    lines = text.splitlines(keepends=True)
    if not lines:
        raise LogError(f"{name}: empty patch log")
    writes = _write_lines(lines, text)
    others = [n for n, w in enumerate(writes) if w is None]
    decoded = iter(_json_lines([lines[n] for n in others], name, others))
    records: list[dict[str, Any] | WordWrite] = [w if w is not None else next(decoded) for w in writes]
    header, footer = records[0], records[-1]
    if not isinstance(header, dict) or not isinstance(footer, dict):
        raise LogError(f"{name}: not an mcountrw patch log (no header)")
    if header.get("type") != "header" or header.get("format") != FORMAT:
        raise LogError(f"{name}: not an mcountrw patch log (no header)")
    if header.get("version") != VERSION:
        raise LogError(f"{name}: patch log version {header.get('version')!r}, this mcountrw reads {VERSION}")
    if footer.get("type") != "footer":
        raise LogError(f"{name}: truncated patch log (no footer)")
    body = "".join(lines[:-1])
    if footer.get("lines") != len(lines) - 1 or footer.get("sha256") != hashlib.sha256(body.encode()).hexdigest():
        raise LogError(f"{name}: patch log was edited or truncated (footer checksum does not match)")
    edits: list[Edit] = []
    barriers: list[tuple[int, str]] = []
    original = None
    for n, rec in enumerate(records[1:-1], start=2):
        if type(rec) is WordWrite:
            edits.append(rec)
            continue
        assert isinstance(rec, dict)
        try:
            if rec.get("type") == "barrier":
                barriers.append((int(rec["after_stage"]), str(rec["name"])))
            elif rec.get("type") == "original":
                original = bytes.fromhex(rec["data"])
            else:
                edits.append(_edit_from(rec))
        except (KeyError, TypeError, ValueError, OverflowError) as e:
            raise LogError(f"{name}:{n}: malformed {rec.get('type', 'record')} record ({e})") from None
    try:
        return Log(
            tool=str(header["tool"]),
            kind=str(header["kind"]),
            byteorder=_byteorder(header["byteorder"]),
            input=_facts(header["input"]),
            output=_facts(header["output"]),
            target=str(header["target"]),
            plan=header.get("plan"),
            edits=tuple(edits),
            barriers=tuple(barriers),
            summary=dict(header.get("summary") or {}),
            recipe=None if header.get("recompress") is None else Recipe.from_json(header["recompress"]),
            original=original,
        )
    except (KeyError, TypeError, ValueError, OverflowError) as e:
        raise LogError(f"{name}:1: malformed header ({e})") from None


# A write line exactly as body_lines() formats it. Such lines (67,380 for a vmlinux) are read with
# this pattern, twice as fast as json; anything else, hand-edited or not, goes through json. The
# footer checksum has already vouched that the text is what mcountrw wrote.
_STR = r'"[^"\\\n]*"|"(?:[^"\\\n]|\\.)*"'  # the plain case first: no escapes to step through
_WRITE_LINES = re.compile(
    r'^\{"address": (null|"0x[0-9a-f]+"), "function": (null|' + _STR + r'), "new": "([0-9a-f]{8})", '
    r'"new_asm": "[^"\\\n]*", "offset": "0x([0-9a-f]+)", "old": "([0-9a-f]{8})", "old_asm": "[^"\\\n]*", '
    r'"section": (' + _STR + r'), "section_offset": "0x([0-9a-f]+)", "slot": "([ASB])", "stage": ([0-9]{1,9}), '
    r'"state_after": "([a-z]+)", "state_before": "([a-z]+)", "type": "write"\}$',
    re.MULTILINE,
)
_WRITE_START = '{"address": '


def _unquote(literal: str) -> str:
    """A JSON string literal's value; json only when it holds an escape."""
    return json.loads(literal) if "\\" in literal else literal[1:-1]


def _write_lines(lines: list[str], text: str) -> list[WordWrite | None]:
    """Each body line that is a well-formed write line, as a WordWrite; None for every other line.

    All write lines are matched in one pass over the text (one C call instead of 67,380); they line
    up with the lines that start like one, or, if any such line is malformed, nothing is taken from
    the pattern and json reads every line (and says where the log is broken)."""
    out: list[WordWrite | None] = [None] * len(lines)
    starts = [n for n in range(1, len(lines) - 1) if lines[n].startswith(_WRITE_START)]
    found = _WRITE_LINES.findall(text)
    if len(found) != len(starts):
        return out
    strings: dict[str, str | None] = {"null": None}
    for n, (addr, function, new, offset, old, section, section_offset, slot, stage, after, before) in zip(
        starts, found, strict=True
    ):
        fn = strings[function] if function in strings else strings.setdefault(function, _unquote(function))
        sec = strings[section] if section in strings else strings.setdefault(section, _unquote(section))
        out[n] = WordWrite(
            int(stage), int(offset, 16), None if addr == "null" else int(addr[1:-1], 16), str(sec),
            int(section_offset, 16), fn, slot, int(old, 16), int(new, 16), before, after,
        )  # fmt: skip
    return out


def _json_lines(lines: list[str], name: str, numbers: list[int]) -> list[dict[str, Any]]:
    """Every line parsed in one call (a vmlinux log has 67,000 lines: one json.loads per line
    costs more than the undo itself); line by line only to say where a broken log breaks.
    ``numbers`` are the lines' indexes in the log, for the message."""
    records: list[dict[str, Any]] | None
    try:
        records = json.loads("[" + ",".join(lines) + "]")
    except (json.JSONDecodeError, RecursionError):
        records = None
    if records is None or len(records) != len(lines) or not all(isinstance(r, dict) for r in records):
        return [_json_line(line, name, n + 1) for n, line in zip(numbers, lines, strict=True)]
    return records


def _json_line(line: str, name: str, n: int) -> dict[str, Any]:
    try:
        rec = json.loads(line)
    except json.JSONDecodeError:
        raise LogError(f"{name}:{n}: not JSON (truncated or edited patch log?)") from None
    if not isinstance(rec, dict):
        raise LogError(f"{name}:{n}: not a log record")
    return rec


def _byteorder(value: Any) -> str:
    if value not in ("little", "big"):
        raise ValueError(f"byteorder {value!r}")
    return str(value)


def _facts(d: dict[str, Any]) -> FileFacts:
    return FileFacts(str(d["path"]), str(d["sha256"]), int(d["size"]), str(d["content_sha256"]), str(d["compression"]))


def _int(value: Any) -> int:
    return int(value, 16) if isinstance(value, str) else int(value)


def _count(value: Any, what: str, limit: int = 1 << 64) -> int:
    """A non-negative integer below ``limit``: a log whose footer was recomputed after an edit
    must still not make undo index backwards from the end of a file or loop on a zero stride."""
    n = _int(value) if not isinstance(value, bool) else -1
    if not 0 <= n < limit:
        raise ValueError(f"{what} {value!r} out of range")
    return n


_HEX = str


def _write_from(rec: dict[str, Any]) -> WordWrite | None:
    """The common case, as ``dumps`` writes it, converted without a call per field; None sends an
    unusual but maybe valid record (ints instead of hex strings) to the careful path."""
    offset, addr, section_offset = rec["offset"], rec["address"], rec["section_offset"]
    stage, old, new = rec["stage"], rec["old"], rec["new"]
    if not (type(offset) is type(section_offset) is type(old) is type(new) is _HEX and type(stage) is int):
        return None
    if addr is not None and type(addr) is not _HEX:
        return None
    w = WordWrite(
        stage, int(offset, 16), None if addr is None else int(addr, 16), str(rec["section"]), int(section_offset, 16),
        None if rec["function"] is None else str(rec["function"]), str(rec["slot"]), int(old, 16), int(new, 16),
        str(rec["state_before"]), str(rec["state_after"]),
    )  # fmt: skip
    limit = 1 << 64
    if not (0 <= w.stage < limit and 0 <= w.offset < limit and 0 <= w.section_offset < limit):
        raise ValueError("stage or offset out of range")
    if not (0 <= w.old < 1 << 32 and 0 <= w.new < 1 << 32) or (w.addr is not None and not 0 <= w.addr < limit):
        raise ValueError("word or address out of range")
    return w


def _edit_from(rec: dict[str, Any]) -> Edit:
    kind = rec["type"]
    if kind == "write":
        fast = _write_from(rec)
        if fast is not None:
            return fast
        return WordWrite(
            stage=_count(rec["stage"], "stage"),
            offset=_count(rec["offset"], "offset"),
            addr=None if rec["address"] is None else _count(rec["address"], "address"),
            section=str(rec["section"]),
            section_offset=_count(rec["section_offset"], "section_offset"),
            function=None if rec["function"] is None else str(rec["function"]),
            slot=str(rec["slot"]),
            old=_count(int(rec["old"], 16), "old", 1 << 32),
            new=_count(int(rec["new"], 16), "new", 1 << 32),
            state_before=str(rec["state_before"]),
            state_after=str(rec["state_after"]),
        )
    if kind == "bytes":
        old, new = bytes.fromhex(rec["old"]), bytes.fromhex(rec["new"])
        if not old or len(old) != len(new):
            raise ValueError("old and new bytes differ in length")
        return BytesEdit(_count(rec["offset"], "offset"), old, new, str(rec["why"]))
    if kind == "rela":
        entsize = _count(rec["entsize"], "entsize")
        size = _count(rec["size"], "size")
        if not entsize or size % entsize:
            raise ValueError(f"table size {size} is not a multiple of entry size {entsize}")
        entries = tuple(bytes.fromhex(x) for x in rec["entries"])
        removed = tuple(_count(i, "removed index", size // entsize) for i in rec["removed"])
        if len(entries) != len(removed) or list(removed) != sorted(set(removed)):
            raise ValueError("removed indexes and entries do not pair up")
        if any(len(x) != entsize for x in entries):
            raise ValueError(f"an entry is not {entsize} bytes")
        keep = rec["keep"]
        return RelaEdit(
            str(rec["section"]), _count(rec["offset"], "offset"), size, entsize, removed, entries,
            None if keep is None else _count(keep, "keep", size // entsize - len(removed) + 1), str(rec["why"]),
        )  # fmt: skip
    if kind == "truncate":
        return Truncate(_count(rec["size"], "size"), bytes.fromhex(rec["tail"]), str(rec["why"]))
    raise ValueError(f"unknown record type {kind!r}")


def check_extent(log: Log, name: str, original_size: int) -> None:
    """Every edit lies inside the file as the edits before it leave it, replayed from a file of
    ``original_size`` bytes. The footer checksum catches an accidental edit; this catches a log
    edited on purpose (footer recomputed) before a replay reads or writes past the end."""
    size = original_size
    for n, e in enumerate(log.edits, start=1):
        if isinstance(e, Truncate):
            end = e.size + len(e.tail)
        elif isinstance(e, WordWrite):
            end = e.offset + 4
        elif isinstance(e, BytesEdit):
            end = e.offset + len(e.old)
        else:
            end = e.offset + e.size
        if end > size or (isinstance(e, Truncate) and end != size):
            raise LogError(f"{name}: edit {n} reaches offset {end:#x}, the file is {size:#x} bytes there")
        if isinstance(e, Truncate):
            size = e.size


def word_writes(edits: Sequence[Edit]) -> list[WordWrite]:
    return [e for e in edits if isinstance(e, WordWrite)]
