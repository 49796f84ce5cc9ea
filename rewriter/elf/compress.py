"""Compressed modules (.ko.xz, .ko.gz, .ko.zst): recognised by magic, not by name; read, and written
again so that the original compressed bytes can always come back (:class:`Restore`)."""

from __future__ import annotations

import enum
import gzip
import lzma
import mmap
import zlib
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Final, NamedTuple

from rewriter.errors import ImageError

MODULE_SUFFIXES: Final = (".ko", ".ko.xz", ".ko.gz", ".ko.zst")
"""The names of kernel module files: plain, or compressed as modules_install leaves them. A tree
walk finds modules by these; reading one goes by magic (:func:`detect_compression`), not by name."""


class Compression(enum.Enum):
    NONE = "none"
    XZ = "xz"
    GZIP = "gzip"
    ZSTD = "zstd"


_MAGIC = {
    b"\xfd7zXZ\x00": Compression.XZ,
    b"\x1f\x8b": Compression.GZIP,
    b"\x28\xb5\x2f\xfd": Compression.ZSTD,
}

# The largest module of the Debian 6.1 ppc64el corpus (amdgpu.ko) is 14.6 MB decompressed; a
# decompression bomb, or a frame header claiming a terabyte, must not make us allocate gigabytes.
MAX_DECOMPRESSED = 256 << 20
# zstd feeds input in pieces this small: one block can expand at most 128 KiB per 4 input bytes
# (an RLE block), so a piece never yields more than 32 MiB past the cap.
_ZSTD_PIECE = 1024


SUFFIX: Final[Mapping[Compression, str]] = MappingProxyType(
    {Compression.NONE: "", Compression.XZ: ".xz", Compression.GZIP: ".gz", Compression.ZSTD: ".zst"}
)
"""The file-name suffix each compression is known by (modules_install's, and xz/gzip/zstd's own)."""


def compression_named(path: Path) -> Compression | None:
    """The compression a file's name claims: by its suffix, or none for a module named ``.ko``;
    None when the name says nothing (``vmlinux``, ``out``, ``prog.o``)."""
    for kind, suffix in SUFFIX.items():
        if suffix and path.name.endswith(suffix):
            return kind
    return Compression.NONE if path.name.endswith(".ko") else None


def uncompressed(path: Path) -> Path:
    """``path`` less a module's compression suffix: ``ext4.ko.xz`` is the module ``ext4.ko`` (a diff
    pairs the two; a SARIF fingerprint names the module by it)."""
    kind = compression_named(path)
    suffix = "" if kind is None else SUFFIX[kind]
    return path.with_name(path.name.removesuffix(suffix)) if suffix else path


class HeaderRefusal(NamedTuple):
    """What in a compressed module's header one of its two loaders refuses, when the other takes
    it: whether the module loads depends on the system (the audit's warnings). kmod hands a module
    to the kernel's own decompressor (kernel/module/decompress.c, ``finit_module()`` with
    ``MODULE_INIT_COMPRESSED_FILE``) when ``/sys/module/compression`` names its compression, one
    per kernel build (Debian's 6.12 and 7.2: xz), decompresses it itself otherwise, and neither
    retries the other way."""

    compression: Compression
    what: str  # "xz check CRC64", "zstd frame without a content size"


# The xz stream header's check ID (its 8th byte) the kernel's own xz decoder takes: none or CRC32,
# as Kbuild writes them (xz --check=crc32). Tried under qemu on Debian's 6.12 and 7.2 by
# finit_module(MODULE_INIT_COMPRESSED_FILE): a CRC64 module fails, "decompression failed with
# status 6", EINVAL (tests/test_review_modrw_boot.py).
_KERNEL_XZ_CHECKS: Final = frozenset({0, 1})
_XZ_CHECK_NAMES: Final = MappingProxyType({0: "none", 1: "CRC32", 4: "CRC64", 10: "SHA-256"})

# The gzip header's flags (RFC 1952 2.3.1) after which the kernel's own gzip decoder does not find
# the deflate data: module_gzip_header_len() skips the 10 fixed bytes and a file name (FNAME), no
# extra field, comment or header CRC, and inflates from there (the same in 5.17's and 7.2's
# kernel/module/decompress.c). kmod's gzread() (zlib) reads every field. FTEXT is only a hint.
# Tried under qemu on a 7.2 built with CONFIG_MODULE_COMPRESS_GZIP (by hand: no corpus kernel
# decompresses gzip): each of the three fails, "decompression failed with status -3", EINVAL.
_GZIP_FLAGS_KERNEL_SKIPS_NOT: Final = MappingProxyType({0x02: "FHCRC", 0x04: "FEXTRA", 0x10: "FCOMMENT"})
_GZIP_FLAGS: Final = 3

# A zstd frame header's descriptor (RFC 8878 3.1.1.1.1): its 5th byte. The frame has no content size
# when Frame_Content_Size_flag (bits 7-6) and Single_Segment_flag (bit 5) are all clear (zstd writes
# them so from a pipe, or with --no-content-size). kmod 34 and later (libkmod-file-zstd.c) allocate
# what ZSTD_getFrameContentSize() says and refuse a frame without one ("zstd: Failed to determine
# decompression size", EINVAL); kmod before 34 and the kernel's zstd decoder stream it (a 7.2
# built with CONFIG_MODULE_COMPRESS_ZSTD loads it under qemu).
_ZSTD_DESCRIPTOR: Final = 4
_ZSTD_SIZE_BITS: Final = 0xE0


def header_refusal(head: bytes) -> HeaderRefusal | None:
    """What in a compressed file's header (``head``: its first 8 bytes) one loader refuses, if any."""
    kind = detect_compression(head)
    if kind is Compression.XZ:
        check = _xz_check_kernel_refuses(head)
        return None if check is None else HeaderRefusal(kind, f"xz check {check}")
    if kind is Compression.GZIP and len(head) > _GZIP_FLAGS:
        flags = [name for bit, name in _GZIP_FLAGS_KERNEL_SKIPS_NOT.items() if head[_GZIP_FLAGS] & bit]
        return HeaderRefusal(kind, f"gzip header with {', '.join(flags)}") if flags else None
    if kind is Compression.ZSTD and len(head) > _ZSTD_DESCRIPTOR and not head[_ZSTD_DESCRIPTOR] & _ZSTD_SIZE_BITS:
        return HeaderRefusal(kind, "zstd frame without a content size")
    return None


def _xz_check_kernel_refuses(head: bytes) -> str | None:
    """The name of an xz stream header's check (``head``: the file's first bytes) when the kernel's
    own decompressor refuses it, else None (not xz, or a check it takes)."""
    if detect_compression(head) is not Compression.XZ or len(head) < 8:
        return None
    check = head[7] & 0x0F
    if check in _KERNEL_XZ_CHECKS:
        return None
    return _XZ_CHECK_NAMES.get(check, f"check ID {check}")


def detect_compression(head: bytes) -> Compression:
    for magic, kind in _MAGIC.items():
        if head.startswith(magic):
            return kind
    return Compression.NONE


def decompress(path: Path, data: bytes, kind: Compression) -> bytes:
    """The content of a compressed file, as every loader reads it, or an :class:`ImageError`.

    Only the first stream (member, frame) is read, and what follows it must be what every loader
    skips: kmod decompresses a module itself unless the kernel's own decompressor takes its
    compression (``/sys/module/compression``), and the two read different things past the first
    stream (:func:`_check_after_stream`)."""
    try:
        if kind is Compression.XZ:
            content, rest = _unxz(path, data)
        elif kind is Compression.GZIP:
            content, rest = _ungzip(path, data)
        elif kind is Compression.ZSTD:
            content, rest = _unzstd(path, data)
        else:
            return data
    except (lzma.LZMAError, zlib.error, gzip.BadGzipFile, EOFError) as e:
        raise ImageError(f"{path}: corrupt {kind.value} data ({e})") from None
    except Exception as e:  # zstandard.ZstdError has no stable import path across versions
        if type(e).__module__.startswith("zstandard"):
            raise ImageError(f"{path}: corrupt zstd data ({e})") from None
        raise
    _check_after_stream(path, kind, rest)
    if not content:  # not "empty file", which the file is not
        raise ImageError(f"{path}: {kind.value} data that decompresses to nothing")
    return content


def _unfinished(path: Path, kind: Compression, produced: int) -> ImageError:
    """A stream that did not end: the cap reached (a bomb, or a frame header's claim), or the data cut."""
    if produced >= MAX_DECOMPRESSED:
        return ImageError(f"{path}: {kind.value} data decompresses to more than {MAX_DECOMPRESSED >> 20} MiB")
    return ImageError(f"{path}: truncated {kind.value} data")


def _unxz(path: Path, data: bytes) -> tuple[bytes, bytes]:
    d = lzma.LZMADecompressor(format=lzma.FORMAT_XZ)
    out = d.decompress(data, max_length=MAX_DECOMPRESSED)
    if not d.eof:
        raise _unfinished(path, Compression.XZ, len(out))
    return out, d.unused_data


def _ungzip(path: Path, data: bytes) -> tuple[bytes, bytes]:
    z = zlib.decompressobj(wbits=31)
    out = z.decompress(data, MAX_DECOMPRESSED)
    if not z.eof:
        raise _unfinished(path, Compression.GZIP, len(out))
    return out, z.unused_data


def _unzstd(path: Path, data: bytes) -> tuple[bytes, bytes]:
    """``ZstdDecompressor.decompress`` trusts the frame header's content size (it allocates what the
    header claims, whatever ``max_output_size`` says) and ``stream_reader`` returns a truncated frame
    as if it were complete, so feed a decompression object small pieces and check its end."""
    import zstandard

    d = zstandard.ZstdDecompressor().decompressobj()
    out: list[bytes] = []
    total = 0
    for start in range(0, len(data), _ZSTD_PIECE):
        piece = d.decompress(data[start : start + _ZSTD_PIECE])
        total += len(piece)
        if total > MAX_DECOMPRESSED:
            raise _unfinished(path, Compression.ZSTD, total)
        out.append(piece)
        if d.eof:
            return b"".join(out), d.unused_data + data[start + _ZSTD_PIECE :]
    raise _unfinished(path, Compression.ZSTD, total)


# After the first stream, the two loaders part ways (kmod's libkmod-file-{xz,zlib,zstd}.c; the
# kernel's kernel/module/decompress.c, which stops at the first stream's end and ignores the rest):
# * xz: kmod's liblzma decoder runs with LZMA_CONCATENATED, so it decodes a second stream too and
#   refuses anything else but zero padding of a multiple of 4 bytes (the xz format's stream padding).
# * gzip: kmod's gzread() reads every member, and skips what follows them if it is not one.
# * zstd: kmod's ZSTD_decompress() decodes every frame into the first frame's content size (a
#   second frame that holds anything fails), skips skippable frames and refuses anything else.
# Reading the first stream alone would scan one file and load another, so only what both skip passes.
_ZSTD_SKIPPABLE: Final = range(0x184D2A50, 0x184D2A60)
_KERNEL_STOPS: Final = "the kernel's decompressor stops before them"
_STREAM: Final = MappingProxyType({Compression.XZ: "stream", Compression.GZIP: "member", Compression.ZSTD: "frame"})


def _check_after_stream(path: Path, kind: Compression, rest: bytes) -> None:
    what = _not_skipped(kind, rest) if rest else None
    if what is not None:
        raise ImageError(f"{path}: {len(rest)} bytes after the first {kind.value} {_STREAM[kind]}: {what}")


def _not_skipped(kind: Compression, rest: bytes) -> str | None:
    """Why ``rest``, the bytes after the first stream, would load differently, or None if both
    loaders skip it."""
    if rest.startswith(tuple(m for m, k in _MAGIC.items() if k is kind)):
        return f"another {kind.value} {_STREAM[kind]}, which kmod reads too (or refuses the file), and {_KERNEL_STOPS}"
    if kind is Compression.XZ and (rest.count(0) != len(rest) or len(rest) % 4):
        padding = "not xz stream padding (zero bytes, a multiple of 4)"
        return f"{padding}: kmod's liblzma refuses the file, and {_KERNEL_STOPS}"
    if kind is Compression.ZSTD and not _skippable_frames(rest):
        return f"not zstd skippable frames: kmod's ZSTD_decompress() refuses the file, and {_KERNEL_STOPS}"
    return None


def _skippable_frames(rest: bytes) -> bool:
    """Whether ``rest`` is whole zstd skippable frames: a magic number, a 4-byte size, that many bytes."""
    at = 0
    while at < len(rest):
        if len(rest) - at < 8 or int.from_bytes(rest[at : at + 4], "little") not in _ZSTD_SKIPPABLE:
            return False
        at += 8 + int.from_bytes(rest[at + 4 : at + 8], "little")
    return at == len(rest)


# -- output -----------------------------------------------------------------------------------
#
# A rewritten module is written in its own compression, and undo must give back the original
# compressed bytes exactly (sha256), so each input is described by a :class:`Recipe`: what it
# takes to compress the content again into those very bytes.
#
# * xz: scripts/Makefile.modinst runs ``xz --check=crc32 --lzma2=dict=1MiB``. From xz 5.6 on the
#   CLI compresses with threads by default, and the threaded encoder (liblzma stream_encoder_mt.c)
#   cuts the input into blocks of 3 x dict size, encodes each alone, writes each block's compressed
#   and uncompressed sizes into its header, and reserves every header's room for the largest sizes
#   a block could have (20 bytes here, where the sizes need 16). The LZMA2 data of each block is
#   what the single-block encoder gives for that piece. The container is read back from the input
#   (:func:`recipe_of`) and rebuilt around python's raw LZMA2 encoder (:func:`_xz`); this gives the
#   Debian 6.12 and 7.2 module trees back byte for byte (every module: tests/test_rewrite_generations.py).
# * gzip: Makefile.modinst runs ``gzip -n -f`` (level 6). GNU gzip has its own deflate, not
#   zlib's, so its bytes are checked, not assumed: a recipe only if zlib gives them back.
# * zstd: ``zstd --rm -f -q`` (level 3, content size and checksum in the frame): checked the same way.

KBUILD_XZ_DICT: Final = 1 << 20
_XZ_CHECKS: Final = {0: 0, 1: 4}  # xz check id -> its size: none, CRC32 (the ones rebuilt here)
_LZMA2_ID: Final = 0x21
_LZMA_MIN_DICT: Final = 4096  # liblzma's smallest dictionary


class Recipe(NamedTuple):
    """How to compress content into the bytes a given compressor made.

    xz only: ``block_size`` uncompressed bytes per block (0: one block), ``header_size`` of every
    block header, whether headers carry the block's sizes, the LZMA2 ``dict_size``, the ``check``
    id (1: CRC32)."""

    kind: Compression
    block_size: int = 0
    header_size: int = 0
    sizes_in_headers: bool = False
    dict_size: int = KBUILD_XZ_DICT
    check: int = 1

    def to_json(self) -> dict[str, object]:
        return {
            "kind": self.kind.value,
            "block_size": self.block_size,
            "header_size": self.header_size,
            "sizes_in_headers": self.sizes_in_headers,
            "dict_size": self.dict_size,
            "check": self.check,
        }

    @classmethod
    def from_json(cls, d: Mapping[str, object]) -> Recipe:
        ints = [d[k] for k in ("block_size", "header_size", "dict_size", "check")]
        sized = d["sizes_in_headers"]
        if not isinstance(sized, bool):
            raise ValueError(f"recipe {d!r}")
        block_size, header_size, dict_size, check = (_small_int(v, d) for v in ints)
        recipe = cls(Compression(d["kind"]), block_size, header_size, sized, dict_size, check)
        if not recipe.makeable():
            raise ValueError(f"recipe {dict(d)!r}: not one a rewrite writes")
        return recipe

    def makeable(self) -> bool:
        """Whether :func:`compress` can follow this recipe, as :func:`recipe_of` only ever finds:
        a compression, and for xz a check it writes, a dictionary no larger than xz's presets use
        (``_XZ_MAX_DICT``: encoding with a larger one allocates gigabytes) and a block header
        size the format allows (a multiple of 4, at most 1024). A log read back is held to it,
        so that an edited one is refused as malformed, not followed into a MemoryError."""
        if self.kind is Compression.NONE:
            return False
        if self.kind is not Compression.XZ:
            return True
        dict_ok = _LZMA_MIN_DICT <= self.dict_size <= _XZ_MAX_DICT
        return self.check in _XZ_CHECKS and dict_ok and self.header_size % 4 == 0 and self.header_size <= 1024


def _small_int(value: object, recipe: Mapping[str, object]) -> int:
    """A recipe's number: an int (not a bool) in [0, 2**40)."""
    if type(value) is not int or not 0 <= value < 1 << 40:
        raise ValueError(f"recipe {dict(recipe)!r}")
    return value


KBUILD: Final = {
    # xz 5.6+ as Debian's trixie and sid builds ran it: threaded, 3 MiB blocks, 20-byte headers.
    Compression.XZ: Recipe(Compression.XZ, 3 * KBUILD_XZ_DICT, 20, True),
    Compression.GZIP: Recipe(Compression.GZIP),
    Compression.ZSTD: Recipe(Compression.ZSTD),
}
"""What ``make modules_install`` would write, for content whose original bytes say nothing."""


def compress(data: bytes | bytearray, how: Compression | Recipe) -> bytes:
    """Compress ``data`` by a recipe, or as Kbuild does for a compression kind."""
    recipe = KBUILD.get(how) if isinstance(how, Compression) else how
    if recipe is None:
        return bytes(data)
    if recipe.kind is Compression.XZ:
        return _xz(data, recipe)
    if recipe.kind is Compression.GZIP:
        return gzip.compress(data, compresslevel=6, mtime=0)
    import zstandard

    return zstandard.ZstdCompressor(level=3, write_checksum=True).compress(data)


def recipe_of(raw: bytes, content: bytes, kind: Compression) -> Recipe | None:
    """How to get ``raw`` back from ``content`` (its decompression), or None if it cannot be
    rebuilt and must be kept as it is. gzip and zstd are cheap to compress, so they are checked
    whole. xz is read from its container, and its LZMA2 data checked on a prefix
    (:func:`_encodes_like`): compressing a whole tree's modules again would cost more than
    rewriting them."""
    if kind is Compression.XZ:
        recipe = _xz_recipe(raw, len(content))
        # makeable(): a log is read back only with a recipe its reader accepts (Recipe.from_json).
        return recipe if recipe is not None and recipe.makeable() and _encodes_like(raw, content, recipe) else None
    recipe = KBUILD.get(kind)
    if recipe is None or compress(content, recipe) != raw:
        return None
    return recipe


class Restore(NamedTuple):
    """How a compressed input's exact bytes come back from its content: by a ``recipe``, or, when
    none rebuilds them, kept as they are (``original``). Both None for an uncompressed file."""

    recipe: Recipe | None = None
    original: bytes | None = None

    @classmethod
    def of(cls, raw: bytes | bytearray | mmap.mmap, content: bytes | mmap.mmap, kind: Compression) -> Restore:
        if kind is Compression.NONE:
            return cls()
        recipe = recipe_of(bytes(raw), bytes(content), kind)
        return cls(recipe, None if recipe is not None else bytes(raw))

    def compressed(self, content: bytes | bytearray, kind: Compression) -> bytes | bytearray:
        """The file to write for ``content``: compressed as its input was (Kbuild's settings if no
        recipe describes the input); ``content`` itself if ``kind`` is none."""
        if kind is Compression.NONE:
            return content
        return compress(content, self.recipe or kind)


def _varint(n: int) -> bytes:
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _crc(data: bytes) -> bytes:
    return zlib.crc32(data).to_bytes(4, "little")


def _pad4(data: bytes) -> bytes:
    return data + bytes(-len(data) % 4)


def _dict_props(dict_size: int) -> int:
    """The LZMA2 property byte: the smallest encoded dictionary size that holds ``dict_size``."""
    for p in range(41):
        if (2 | (p & 1)) << (p // 2 + 11) >= dict_size:
            return p
    return 40


def _xz(data: bytes | bytearray, r: Recipe) -> bytes:
    """The xz format (tukaani.org/xz/xz-file-format.txt): stream header, blocks, index, footer."""
    flags = bytes((0, r.check))
    out = [b"\xfd7zXZ\x00" + flags + _crc(flags)]
    filters = [{"id": lzma.FILTER_LZMA2, "dict_size": r.dict_size}]
    records = []
    step = r.block_size or max(len(data), 1)
    for start in range(0, max(len(data), 1), step):
        piece = bytes(data[start : start + step])
        packed = lzma.compress(piece, format=lzma.FORMAT_RAW, filters=filters)
        sizes = _varint(len(packed)) + _varint(len(piece)) if r.sizes_in_headers else b""
        body = bytes((0xC0 if r.sizes_in_headers else 0,)) + sizes + bytes((_LZMA2_ID, 1, _dict_props(r.dict_size)))
        size = max(r.header_size, (1 + len(body) + 4 + 3) // 4 * 4)
        header = bytes((size // 4 - 1,)) + body
        header += bytes(size - 4 - len(header))
        header += _crc(header)
        check = _crc(piece) if r.check == 1 else b""
        out.append(header + _pad4(packed) + check)
        records.append((len(header) + len(packed) + len(check), len(piece)))
    index = _pad4(b"\x00" + _varint(len(records)) + b"".join(_varint(u) + _varint(n) for u, n in records))
    index += _crc(index)
    backward = (len(index) // 4 - 1).to_bytes(4, "little") + flags
    out.append(index + _crc(backward) + backward + b"YZ")
    return b"".join(out)


def _read_varint(raw: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    for i in range(9):
        byte = raw[pos + i]
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, pos + i + 1
    raise ValueError("varint")


_PREFIX: Final = 1 << 14
"""How much content :func:`_encodes_like` compresses: ~4 ms here (LZMA2 at xz's default preset
compresses ~4 MB/s), 10 CPU-s over the 6.12 tree's 3,154 modules, whose rewrite takes ~100."""


def _encodes_like(raw: bytes, content: bytes, r: Recipe) -> bool:
    """Whether python's LZMA2 encoder at xz's default preset (with the container's dictionary)
    begins the first block as ``raw`` does: it compresses the first 16 KiB of ``content`` and
    compares the first half of its first chunk's data (the encoder's choices near the cut see
    the cut). 60 modules of the 6.12 tree compressed again with xz's presets 0, 1 and 3, -6e,
    -9e, lc=4, pb=0, nice=32 or nice=128 all failed it, so such files keep their bytes in the
    log; all 6,281 modules of the 6.12 and 7.2 trees, as Debian built them, pass. A match finder
    or search depth of its own often passes (bt3: 33 of the 60): undo's sha256 still catches
    that, and refuses (the content is intact). Content no longer than the prefix is compressed
    whole anyway, so it is checked whole."""
    if len(content) <= _PREFIX:
        return compress(content, r) == raw
    start = 12 + (raw[12] + 1) * 4  # the stream header, then the first block's header
    filters = [{"id": lzma.FILTER_LZMA2, "dict_size": r.dict_size}]
    test = lzma.compress(bytes(content[:_PREFIX]), format=lzma.FORMAT_RAW, filters=filters)
    # Each holds one chunk here: control, sizes and props (6 bytes; the sizes differ), then data.
    half = (len(test) - 6) // 2
    return test[6 : 6 + half] == raw[start + 6 : start + 6 + half]


def _xz_recipe(raw: bytes, content_size: int) -> Recipe | None:
    """The recipe an xz file was made with, if :func:`_xz` can make it: one stream, a CRC32 (or no)
    check, LZMA2 alone, equal blocks but the last, equal headers. Anything else: None."""
    try:
        return _parse_xz(raw, content_size)
    except (ValueError, IndexError):
        return None


def _parse_xz(raw: bytes, content_size: int) -> Recipe | None:
    check = raw[7]
    if raw[6] or check not in _XZ_CHECKS or raw[-2:] != b"YZ" or raw[-4:-2] != raw[6:8]:
        return None
    index_size = (int.from_bytes(raw[-8:-4], "little") + 1) * 4
    index_at = len(raw) - 12 - index_size
    if raw[index_at] != 0:
        return None
    count, pos = _read_varint(raw, index_at + 1)
    blocks = []
    for _ in range(count):
        unpadded, pos = _read_varint(raw, pos)
        size, pos = _read_varint(raw, pos)
        blocks.append((unpadded, size))
    headers = set()
    block_at = 12
    props = set()
    for unpadded, _ in blocks:
        header_size = (raw[block_at] + 1) * 4
        flags = raw[block_at + 1]
        sized = flags & 0xC0
        if flags & 0x3F or sized not in (0, 0xC0):
            return None
        pos = block_at + 2
        if sized:
            pos = _read_varint(raw, _read_varint(raw, pos)[1])[1]
        if raw[pos : pos + 2] != bytes((_LZMA2_ID, 1)):
            return None
        props.add(raw[pos + 2])
        headers.add((header_size, bool(sized)))
        block_at += unpadded + (-unpadded % 4)
    sizes = [size for _, size in blocks]
    if block_at != index_at or len(headers) != 1 or len(props) != 1 or sum(sizes) != content_size:
        return None
    block_size = sizes[0] if len(sizes) > 1 else 0
    if any(s != block_size for s in sizes[:-1]) or (block_size and sizes[-1] > block_size):
        return None
    (header_size, sized_headers), (p,) = headers.pop(), props
    dict_size = (2 | (p & 1)) << (p // 2 + 11)
    if dict_size > _XZ_MAX_DICT:
        return None
    return Recipe(Compression.XZ, block_size, header_size, sized_headers, dict_size, check)


# The largest dictionary an xz preset uses (-9, -9e: 64 MiB). A block header may claim up to
# 4 GiB (props 40; 41 and up are invalid), and liblzma decodes such a file, but encoding with the
# dictionary it names would allocate ten times as much (a 6 KB module: 2 GB before a MemoryError)
# or be refused outright (3 GiB and up). No recipe then: the file keeps its bytes in the log.
_XZ_MAX_DICT: Final = 64 << 20
