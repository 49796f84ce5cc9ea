"""The module signature trailer that scripts/sign-file.c appends and the kernel's module_sig_check()
reads from the end (include/linux/module_signature.h): the PKCS#7 blob, ``struct module_signature``,
then the marker. Reading a module (:mod:`rewriter.elf.image`) and signing one (:mod:`rewriter.sign`)
both parse and build it here, so that the two agree on what a trailer is.
"""

from __future__ import annotations

import mmap
from typing import Final, NamedTuple

from rewriter.elf import structs as S

MODULE_SIG_MAGIC: Final = b"~Module signature appended~\n"
# struct module_signature: algo, hash, id_type, signer_len, key_id_len, __pad[3], then sig_len
# as a big-endian u32; 12 bytes, just before the marker.
MODULE_SIG_STRUCT_SIZE: Final = 12
PKEY_ID_PKCS7: Final = 2  # the only id_type the kernel accepts since 4.x
ELF64_EHDR_SIZE: Final = S.ehdr_dtype("<").itemsize  # what is before a trailer holds an ELF header at least


class TrailerError(ValueError):
    """A marker whose struct or length cannot be right (the caller names the file)."""


class Trailer(NamedTuple):
    """A parsed signature trailer. ``elf_end``: where the module's own bytes stop."""

    elf_end: int
    cms: bytes
    algo: int
    hash: int
    id_type: int
    signer_len: int
    key_id_len: int
    pad: bytes


def parse_trailer(data: bytes | mmap.mmap) -> Trailer | None:
    """The trailer at the end of ``data``; None if there is no marker."""
    size = len(data)
    if size < len(MODULE_SIG_MAGIC) or data[size - len(MODULE_SIG_MAGIC) :] != MODULE_SIG_MAGIC:
        return None
    end = size - len(MODULE_SIG_MAGIC)
    if end < MODULE_SIG_STRUCT_SIZE:
        raise TrailerError("truncated module signature")
    head = bytes(data[end - MODULE_SIG_STRUCT_SIZE : end])
    sig_len = int.from_bytes(head[8:12], "big")
    elf_end = end - MODULE_SIG_STRUCT_SIZE - sig_len
    if elf_end < ELF64_EHDR_SIZE:
        raise TrailerError(f"module signature length {sig_len} runs past the start of the file")
    cms = bytes(data[elf_end : elf_end + sig_len])
    return Trailer(elf_end, cms, head[0], head[1], head[2], head[3], head[4], head[5:8])


def module_signature(sig_len: int) -> bytes:
    """``struct module_signature`` for a PKCS#7 signature of ``sig_len`` bytes."""
    return bytes([0, 0, PKEY_ID_PKCS7, 0, 0, 0, 0, 0]) + sig_len.to_bytes(4, "big")
