"""Compressed modules and ``--kernel``: what each loader takes, and the vmlinux a module names.

* ``--kernel VMLINUX`` of another release (the module's ``vermagic`` against the vmlinux's
  ``linux_banner``) or byte order was taken, and its ftrace_process_locs() loop decided a drop
  for a kernel that does not load the module.
* A module one of its two loaders refuses by its header, the other takes, had no warning, as a
  CRC64 .ko.xz has (xz-check): a .ko.zst without a content size, which kmod 34 and later refuse
  (libkmod-file-zstd.c: ZSTD_getFrameContentSize), and a .ko.gz with an extra field, a comment or
  a header CRC, from which the kernel's own gzip decoder inflates (kernel/module/decompress.c's
  module_gzip_header_len() skips a file name only). Debian's 6.12 and 7.2 decompress xz alone:
  under qemu they refuse a .ko.zst or .ko.gz handed to them, so kmod decompresses those there.
"""

from __future__ import annotations

import json
import lzma
import re
import subprocess
import zlib
from pathlib import Path

import pytest
import zstandard
from boot import QEMU, boot, make_program_initramfs, require_be_kernel, require_kernel, require_tool
from conftest import FIXTURES, assert_one_line, invoke

NLS = Path("fs") / "nls"
INIT_SOURCE = Path(__file__).resolve().parent / "data" / "finit_compressed.c"
EINVAL = 22
FTEXT, FHCRC, FEXTRA, FNAME, FCOMMENT = 0x01, 0x02, 0x04, 0x08, 0x10


@pytest.mark.corpus
def test_a_kernel_of_another_release_is_not_the_one_that_loads_the_module(tmp_path: Path) -> None:
    """6.12's nls_utf8 with the 64k-page 6.12 vmlinux: the same generation and version, another
    release (6.12.107+deb13-powerpc64le-64k), whose loader refuses the module's vermagic."""
    module = require_kernel("6.12").modules_dir / NLS / "nls_utf8.ko.xz"
    other = require_kernel("6.12-64k").vmlinux
    out = tmp_path / "m.ko.xz"
    drop = ("--only", "char2uni", "--drop-records", "--strip-signature")
    for command in (("nop", module, "-o", out, *drop), ("apply", module, "--to", "nopped", "-o", out, *drop)):
        line = assert_one_line(invoke(*command, "--kernel", other), 2, "error")
        assert line == (
            f"mcountrw: error: --kernel {other}: Linux 6.12.107+deb13-powerpc64le-64k, and {module} was built for "
            "6.12.107+deb13-powerpc64le (its vermagic): not the kernel that loads it"
        )
    assert list(tmp_path.iterdir()) == []
    own = invoke("nop", module, "-o", out, *drop, "--kernel", require_kernel("6.12").vmlinux)
    assert own.exit_code == 0 and out.is_file(), own.output


@pytest.mark.corpus
def test_a_kernel_of_another_byte_order_is_not_the_one_that_loads_the_module(tmp_path: Path) -> None:
    """Both mprofile: the big-endian 7.2 (gcc 12) and Debian's little-endian 6.1. The byte order
    is said first: the loader reads no ELF header of the other order."""
    be, le = require_be_kernel(), require_kernel("6.1")
    out = tmp_path / "m.ko"
    pairs = ((be.modules / "nls_utf8.ko", le.vmlinux, "little", "big"),
             (le.modules_dir / NLS / "nls_utf8.ko", be.vmlinux, "big", "little"))  # fmt: skip
    for module, kernel, theirs, ours in pairs:
        line = assert_one_line(invoke("nop", module, "-o", out, "--kernel", kernel), 2, "error")
        assert line == (
            f"mcountrw: error: --kernel {kernel}: a {theirs}-endian vmlinux, and {module} is a {ours}-endian "
            "module: not the kernel that loads it"
        )
    assert list(tmp_path.iterdir()) == []


def _gzip(content: bytes, flags: int) -> bytes:
    """A gzip member (RFC 1952) with the optional header fields ``flags`` names, each filled in."""
    header = bytearray(b"\x1f\x8b\x08" + bytes((flags,)) + bytes(4) + b"\x00\x03")
    if flags & FEXTRA:
        header += (8).to_bytes(2, "little") + b"MC\x04\x00rwrw"  # one subfield: id MC, 4 bytes
    if flags & FNAME:
        header += b"nls_utf8.ko\x00"
    if flags & FCOMMENT:
        header += b"a comment\x00"
    if flags & FHCRC:
        header += (zlib.crc32(header) & 0xFFFF).to_bytes(2, "little")
    deflate = zlib.compressobj(6, zlib.DEFLATED, -15)
    body = deflate.compress(content) + deflate.flush()
    return bytes(header) + body + zlib.crc32(content).to_bytes(4, "little") + len(content).to_bytes(4, "little")


def _kernel_inflates(raw: bytes, content: bytes) -> bool:
    """The rule of module_gzip_header_len() and module_gzip_decompress() (kernel/module/decompress.c,
    6.12 and 7.2): the magic and method, 10 bytes, a NUL-ended file name if FNAME; raw deflate
    from there to its end."""
    if raw[:3] != b"\x1f\x8b\x08":
        return False
    start = raw.index(b"\x00", 10) + 1 if raw[3] & FNAME else 10
    inflate = zlib.decompressobj(-15)
    try:
        return inflate.decompress(raw[start:]) == content and inflate.eof
    except zlib.error:
        return False


def _audit_kinds(path: Path) -> list[str]:
    result = invoke("audit", "--format", "json", path)
    assert result.exit_code == 0, result.output
    (image,) = json.loads(result.stdout)["images"]
    return [a["kind"] for a in image["anomalies"]]


def _content(name: str) -> bytes:
    return (require_kernel("6.1").modules_dir / NLS / name).read_bytes()


@pytest.mark.corpus
def test_a_gzip_header_the_kernels_decoder_misreads_is_warned_and_rewritten_without_it(tmp_path: Path) -> None:
    """Every optional field: warned (gzip-header) exactly where the kernel's rule fails to inflate
    the module, never for a file name or FTEXT; the rewrite's header is one the kernel reads."""
    content = _content("nls_utf8.ko")
    for flags in (0, FTEXT, FNAME, FEXTRA, FCOMMENT, FHCRC, FEXTRA | FNAME | FCOMMENT | FHCRC):
        src, out = tmp_path / f"m{flags}.ko.gz", tmp_path / f"out{flags}.ko.gz"
        src.write_bytes(_gzip(content, flags))
        assert zlib.decompress(src.read_bytes(), 31) == content  # what kmod's gzread() reads
        warned = "gzip-header" in _audit_kinds(src)
        assert warned is not _kernel_inflates(src.read_bytes(), content), (flags, warned)
        nop = invoke("nop", src, "-o", out, "--drop-records", "--strip-signature")
        assert nop.exit_code == 0, nop.output
        rewritten = zlib.decompress(out.read_bytes(), 31)
        assert _kernel_inflates(out.read_bytes(), rewritten) and "gzip-header" not in _audit_kinds(out)
        undo = invoke("undo", out, "-o", tmp_path / f"undone{flags}.ko.gz")
        assert undo.exit_code == 0 and (tmp_path / f"undone{flags}.ko.gz").read_bytes() == src.read_bytes()


@pytest.mark.corpus
def test_a_zstd_frame_without_a_content_size_is_warned_and_rewritten_with_one(tmp_path: Path) -> None:
    """kmod 34 on takes ZSTD_getFrameContentSize() (zstandard.frame_content_size, -1: unknown) as the
    size to decompress into; mcountrw streams the frame as the kernel does, so it read the module,
    and the rewrite must write the size kmod needs."""
    content = _content("nls_utf8.ko")
    for sized in (False, True):
        src, out = tmp_path / f"m{sized}.ko.zst", tmp_path / f"out{sized}.ko.zst"
        src.write_bytes(zstandard.ZstdCompressor(write_content_size=sized, write_checksum=True).compress(content))
        assert zstandard.frame_content_size(src.read_bytes()) == (len(content) if sized else -1)
        assert ("zstd-size" in _audit_kinds(src)) is not sized
        nop = invoke("nop", src, "-o", out, "--drop-records", "--strip-signature")
        assert nop.exit_code == 0, nop.output
        size = zstandard.frame_content_size(out.read_bytes())
        assert size == len(zstandard.ZstdDecompressor().decompress(out.read_bytes())) > 0
        assert "zstd-size" not in _audit_kinds(out)
        undo = invoke("undo", out, "-o", tmp_path / f"undone{sized}.ko.zst")
        assert undo.exit_code == 0 and (tmp_path / f"undone{sized}.ko.zst").read_bytes() == src.read_bytes()


@pytest.mark.boot
@pytest.mark.corpus
@pytest.mark.parametrize("name", ["6.12", "7.2"])
def test_debians_kernels_decompress_xz_alone_so_kmod_decides_for_zstd_and_gzip(name: str, tmp_path: Path) -> None:
    """finit_module(MODULE_INIT_COMPRESSED_FILE), as kmod calls it when /sys/module/compression
    names the file's compression: the shipped .ko.xz loads, and the same module as a .ko.zst
    (without a content size, or with) or a .ko.gz (plain, or with an extra field) is refused,
    "not an xz compressed module": CONFIG_MODULE_COMPRESS_XZ, so kmod decompresses those itself,
    and the zstd-size warning is kmod's to decide, gzip-header that of a kernel built for gzip."""
    files = require_kernel(name)
    require_tool(QEMU)
    cc = require_tool("powerpc64le-linux-gnu-gcc")
    init = tmp_path / "init"
    subprocess.run([cc, "-static", "-O2", str(INIT_SOURCE), "-o", str(init)], check=True)
    shipped = (files.modules_dir / NLS / "nls_utf8.ko.xz").read_bytes()
    plain = lzma.decompress(shipped)
    mods = tmp_path / "mods"
    mods.mkdir()
    made = {
        "a_shipped.ko.xz": shipped,
        "b_nosize.ko.zst": zstandard.ZstdCompressor(write_content_size=False).compress(plain),
        "c_sized.ko.zst": zstandard.ZstdCompressor().compress(plain),
        "d_plain.ko.gz": _gzip(plain, 0),
        "e_fextra.ko.gz": _gzip(plain, FEXTRA),
    }
    for file, data in made.items():
        (mods / file).write_bytes(data)
    modules = [mods / file for file in made]
    booted = boot(files.vmlinux, "console=hvc0 panic=-1", make_program_initramfs(tmp_path / "i.cpio", init, modules))
    assert booted.done, booted.console[-3000:]
    errnos = {m.group(1): int(m.group(2)) for m in re.finditer(r"MCOUNTRW-FINIT (\S+) errno=(\d+)", booted.console)}
    assert errnos == {file: 0 if file.endswith(".xz") else EINVAL for file in made}, booted.console[-3000:]
    assert booted.console.count("not an xz compressed module") == 4, booted.console[-3000:]


def test_o_onto_a_symlink_replaces_the_link_whether_its_target_exists_or_not(tmp_path: Path) -> None:
    """Every output is renamed into place (rewriter/output.py), as ``install`` does: a link at
    ``-o`` is replaced by the output file, its target left as it was; a dangling link the same way
    (``cp`` writes through a link to a file and refuses a dangling one)."""
    src = FIXTURES / "bin" / "prof-le"
    kept = tmp_path / "kept"
    kept.write_bytes(b"not to be written\n")
    (tmp_path / "to-file").symlink_to(kept.name)
    (tmp_path / "dangling").symlink_to("missing")
    for name in ("to-file", "dangling"):
        out = tmp_path / name
        result = invoke("nop", src, "-o", out)
        assert result.exit_code == 0, result.output
        assert not out.is_symlink() and out.is_file() and out.read_bytes() != src.read_bytes()
        assert invoke("verify", src, out).exit_code == 0
    assert kept.read_bytes() == b"not to be written\n" and not (tmp_path / "missing").exists()
