"""Compressed modules (.ko.xz, .ko.gz, .ko.zst): recognised by magic, not by name."""

from __future__ import annotations

import enum
import gzip
import lzma
import zlib
from pathlib import Path

from rewriter.errors import ImageError


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


def detect_compression(head: bytes) -> Compression:
    for magic, kind in _MAGIC.items():
        if head.startswith(magic):
            return kind
    return Compression.NONE


def decompress(path: Path, data: bytes, kind: Compression) -> bytes:
    try:
        if kind is Compression.XZ:
            d = lzma.LZMADecompressor()
            out = d.decompress(data, max_length=MAX_DECOMPRESSED)
            if not d.eof:
                raise ImageError(f"{path}: truncated xz data, or more than {MAX_DECOMPRESSED >> 20} MiB")
            return out
        if kind is Compression.GZIP:
            z = zlib.decompressobj(wbits=31)
            out = z.decompress(data, MAX_DECOMPRESSED)
            if not z.eof:
                raise ImageError(f"{path}: truncated gzip data, or more than {MAX_DECOMPRESSED >> 20} MiB")
            return out
        if kind is Compression.ZSTD:
            return _unzstd(path, data)
    except (lzma.LZMAError, zlib.error, gzip.BadGzipFile, EOFError) as e:
        raise ImageError(f"{path}: corrupt {kind.value} data ({e})") from None
    except Exception as e:  # zstandard.ZstdError has no stable import path across versions
        if type(e).__module__.startswith("zstandard"):
            raise ImageError(f"{path}: corrupt zstd data ({e})") from None
        raise
    return data


def _unzstd(path: Path, data: bytes) -> bytes:
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
            raise ImageError(f"{path}: zstd data decompresses to more than {MAX_DECOMPRESSED >> 20} MiB")
        out.append(piece)
        if d.eof:
            break
    if not d.eof:
        raise ImageError(f"{path}: truncated zstd data")
    return b"".join(out)


def compress(data: bytes, kind: Compression) -> bytes:
    """Compress the way the kernel's Makefile.modinst does (xz --check=crc32 --lzma2=dict=1MiB,
    gzip -n -f -9, zstd -T0 --rm -f -q); byte-identity with the original is not promised."""
    if kind is Compression.XZ:
        return lzma.compress(
            data,
            format=lzma.FORMAT_XZ,
            check=lzma.CHECK_CRC32,
            filters=[{"id": lzma.FILTER_LZMA2, "dict_size": 1 << 20}],
        )
    if kind is Compression.GZIP:
        return gzip.compress(data, compresslevel=9, mtime=0)
    if kind is Compression.ZSTD:
        import zstandard

        return zstandard.ZstdCompressor(write_checksum=True).compress(data)  # the zstd CLI's default
    return data
