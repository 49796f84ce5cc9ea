"""A kernel developer's review of rewriting modules: compressed files are read as their loader reads
them, or refused in one line with nothing written.

A module is decompressed by kmod (libkmod-file-{xz,zlib,zstd}.c) or, when the kernel's own
decompressor takes its compression, by the kernel (kernel/module/decompress.c). The kernel stops at
the end of the first stream; kmod reads on (xz: LZMA_CONCATENATED; gzip: gzread() over every
member; zstd: ZSTD_decompress() over every frame) and refuses what is not a stream. mcountrw read
the first stream alone and ignored the rest, so it scanned and rewrote one module where kmod loads
another (and wrote the output without the rest)."""

from __future__ import annotations

import gzip
import hashlib
import json
import lzma
from collections.abc import Callable
from pathlib import Path

import pytest
import zstandard
from conftest import FIXTURES, assert_one_line, invoke

from rewriter.elf import compress

OBJ = FIXTURES / "bin" / "prof-le.o"  # 6 mprofile sites


def _xz(d: bytes) -> bytes:
    return lzma.compress(d, check=lzma.CHECK_CRC32)  # the check Kbuild's xz --check=crc32 writes


def _gz(d: bytes) -> bytes:
    return gzip.compress(d, mtime=0)


def _zst(d: bytes) -> bytes:
    return zstandard.ZstdCompressor(write_checksum=True).compress(d)  # as the zstd CLI writes them


_PACK: dict[str, Callable[[bytes], bytes]] = {"xz": _xz, "gz": _gz, "zst": _zst}
_SKIPPABLE = (0x184D2A50).to_bytes(4, "little") + (4).to_bytes(4, "little") + b"note"


def _module(tmp_path: Path, kind: str, after: Callable[[bytes], bytes]) -> Path:
    path = tmp_path / f"m.ko.{kind}"
    path.write_bytes(_PACK[kind](OBJ.read_bytes()) + after(OBJ.read_bytes()))
    return path


def _files(root: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in root.iterdir()}


# fmt: off
REFUSED = [
    # what follows the first stream, and the words of the one line
    ("xz", lambda d: _xz(b"other module"), "another xz stream"),  # kmod reads both streams
    ("xz", lambda d: b"garbage!", "not xz stream padding"),  # kmod: LZMA_DATA_ERROR; kernel: ignored
    ("xz", lambda d: bytes(3), "not xz stream padding"),  # padding is a multiple of 4 bytes
    ("gz", lambda d: _gz(b"other module"), "another gzip member"),  # gzread() reads both members
    ("zst", lambda d: _zst(b"x"), "another zstd frame"),  # kmod: dst too small; kernel: first frame
    ("zst", lambda d: b"garbage!", "not zstd skippable frames"),  # kmod: unknown frame; kernel: ignored
    ("zst", lambda d: _SKIPPABLE[:-1], "not zstd skippable frames"),  # a skippable frame cut short
]
# fmt: on


@pytest.mark.parametrize(("kind", "after", "words"), REFUSED, ids=[f"{k}-{w}" for k, _, w in REFUSED])
def test_what_follows_the_first_stream_and_loads_otherwise_is_refused(
    tmp_path: Path, kind: str, after: Callable[[bytes], bytes], words: str
) -> None:
    path = _module(tmp_path, kind, after)
    before = _files(tmp_path)
    assert_one_line(invoke("scan", path), 2, "error", str(path), "after the first", words)
    out = tmp_path / f"out.ko.{kind}"
    assert_one_line(invoke("nop", path, "-o", out, "--drop-records"), 2, "error", str(path), words)
    assert _files(tmp_path) == before  # no output, no log


ACCEPTED = [
    ("xz", lambda d: bytes(8)),  # xz stream padding: kmod's liblzma skips it, the kernel ignores it
    ("gz", lambda d: bytes(512)),  # gzread() skips what is not a member, the kernel ignores it
    ("zst", lambda d: _SKIPPABLE),  # ZSTD_decompress() skips skippable frames, the kernel ignores them
]


@pytest.mark.parametrize(("kind", "after"), ACCEPTED, ids=[k for k, _ in ACCEPTED])
def test_what_every_loader_skips_is_read_and_undo_gives_the_file_back(
    tmp_path: Path, kind: str, after: Callable[[bytes], bytes]
) -> None:
    path = _module(tmp_path, kind, after)
    out, back = tmp_path / f"out.ko.{kind}", tmp_path / f"back.ko.{kind}"
    assert invoke("nop", path, "-o", out, "--drop-records").exit_code == 0
    assert invoke("undo", out, "-o", back).exit_code == 0
    assert back.read_bytes() == path.read_bytes()


@pytest.mark.parametrize("kind", ["xz", "gz", "zst"])
def test_compressed_nothing_is_not_called_an_empty_file(tmp_path: Path, kind: str) -> None:
    path = tmp_path / f"m.ko.{kind}"
    path.write_bytes(_PACK[kind](b""))
    line = assert_one_line(invoke("scan", path), 2, "error", str(path), "decompresses to nothing")
    assert "empty file" not in line


def test_a_stream_past_the_cap_is_not_called_truncated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """It said "truncated gzip data, or more than 256 MiB" for both; each is now its own line."""
    monkeypatch.setattr(compress, "MAX_DECOMPRESSED", 1000)
    whole = _gz(OBJ.read_bytes())
    with pytest.raises(compress.ImageError, match="decompresses to more than") as big:
        compress.decompress(tmp_path / "m.ko.gz", whole, compress.Compression.GZIP)
    assert "truncated" not in str(big.value)
    with pytest.raises(compress.ImageError, match=r"truncated gzip data$"):
        compress.decompress(tmp_path / "m.ko.gz", whole[:100], compress.Compression.GZIP)


# -- a patch log's recipe is one a rewrite writes ------------------------------------------------------


def _forge_recipe(log: Path, **change: object) -> None:
    """``log`` with its header's recipe changed and its footer made right again (an edit that keeps
    the checksum: the footer guards against accidents, a recipe no rewrite writes against the rest)."""
    lines = log.read_text().splitlines(keepends=True)
    header = json.loads(lines[0])
    header["recompress"].update(change)
    lines[0] = json.dumps(header, sort_keys=True) + "\n"
    body = "".join(lines[:-1]).encode()
    footer = {"type": "footer", "lines": len(lines) - 1, "sha256": hashlib.sha256(body).hexdigest()}
    lines[-1] = json.dumps(footer, sort_keys=True) + "\n"
    log.write_text("".join(lines))


@pytest.mark.parametrize(
    "change",
    [
        {"dict_size": (1 << 39) + 5},  # internal error: ValueError: Invalid filter specifier (exit 3)
        {"header_size": 1028},  # past the format's 1024: internal error, ValueError: bytes must be in range
        {"kind": "none"},  # zstd-compressed the content
    ],
    ids=["dict", "header", "kind"],
)
def test_undo_refuses_a_recipe_no_rewrite_writes_as_a_malformed_log(tmp_path: Path, change: dict[str, object]) -> None:
    path = tmp_path / "m.ko.xz"
    path.write_bytes(_xz(OBJ.read_bytes()))
    out = tmp_path / "out.ko.xz"
    assert invoke("nop", path, "-o", out, "--drop-records").exit_code == 0
    log = tmp_path / "out.ko.xz.mcountrw.jsonl"
    assert json.loads(log.read_text().splitlines()[0])["recompress"] is not None  # a recipe rebuilds it
    _forge_recipe(log, **change)
    back = tmp_path / "back.ko.xz"
    assert_one_line(invoke("undo", out, "-o", back), 2, "error", str(log), "malformed header", "recipe")
    assert not back.exists()
