"""Byte layouts and constants of ELF64 for PowerPC64: the one place that knows them.

References: the System V gABI (ELF-64 Object File Format, version 1.5) and the
64-bit ELF V2 ABI Specification, Power Architecture, revision 1.5 (ELFv2), and the
64-bit PowerPC ELF Application Binary Interface Supplement 1.9 (ELFv1).

Tables are numpy structured dtypes so that a ``frombuffer`` view over the file costs
nothing: pyelftools builds one object per entry, measured at 1.9 s for the symbols of
the Debian 6.1 vmlinux and 1.2 ms per module just to list the section headers.
"""

from __future__ import annotations

from typing import Final, Literal

import numpy as np

Endian = Literal["<", ">"]  # numpy and struct spell byte order this way
ByteOrder = Literal["little", "big"]  # int.from_bytes and the logs spell it this way

ELF_MAGIC: Final = b"\x7fELF"
EI_CLASS: Final = 4  # e_ident indexes
EI_DATA: Final = 5
EI_NIDENT: Final = 16
ELFCLASS32: Final = 1
ELFCLASS64: Final = 2
ELFDATA2LSB: Final = 1
ELFDATA2MSB: Final = 2
E_TYPE: Final = slice(16, 18)  # e_type's bytes, the same in ELF32 and ELF64
E_MACHINE: Final = slice(18, 20)  # e_machine's bytes, the same in ELF32 and ELF64
EM_PPC64: Final = 21
EM_PPC: Final = 20

ET_REL: Final = 1
ET_EXEC: Final = 2
ET_DYN: Final = 3
ET_CORE: Final = 4
# ar(1) archives (a kernel build's built-in.a, vmlinux.a, lib.a): members, not one ELF file; a thin
# archive only names its members' files
AR_MAGIC: Final = b"!<arch>\n"
THIN_AR_MAGIC: Final = b"!<thin>\n"

EF_PPC64_ABI: Final = 0x3  # e_flags: 0 unspecified, 1 ELFv1, 2 ELFv2

# An ELFv1 function descriptor in .opd (64-bit ELF ABI 1.9, 3.2.5): the code address, then the
# function's TOC pointer (r2), then an environment pointer; a function symbol names it, not code.
OPD_ENTRY: Final = 0
OPD_TOC: Final = 8


def ident_byte_order(ident: bytes) -> ByteOrder | None:
    """The byte order an ELF identification names, or None for an encoding that is neither."""
    data = ident[EI_DATA] if len(ident) > EI_DATA else None
    if data == ELFDATA2LSB:
        return "little"
    return "big" if data == ELFDATA2MSB else None


PN_XNUM: Final = 0xFFFF  # e_phnum: the program header count is in section header 0

SHN_UNDEF: Final = 0
SHN_LORESERVE: Final = 0xFF00
SHN_ABS: Final = 0xFFF1
SHN_XINDEX: Final = 0xFFFF

SHT_NULL: Final = 0
SHT_PROGBITS: Final = 1
SHT_SYMTAB: Final = 2
SHT_STRTAB: Final = 3
SHT_RELA: Final = 4
SHT_REL: Final = 9
SHT_DYNAMIC: Final = 6
SHT_NOBITS: Final = 8
SHT_DYNSYM: Final = 11

SHF_WRITE: Final = 0x1
SHF_ALLOC: Final = 0x2
SHF_EXECINSTR: Final = 0x4

STT_NOTYPE: Final = 0
STT_OBJECT: Final = 1
STT_FUNC: Final = 2
STT_SECTION: Final = 3

DT_NULL: Final = 0
DT_RELA: Final = 7
DT_RELASZ: Final = 8
DT_RELAENT: Final = 9
DT_RELACOUNT: Final = 0x6FFF_FFF9

# Relocation types used here (ELFv2 ABI, table 3.9 "Relocation Table").
R_PPC64_NONE: Final = 0
R_PPC64_REL24: Final = 10  # (S + A - P) >> 2, low24: the branch of `bl`
R_PPC64_REL14: Final = 11  # (S + A - P) >> 2, low14: the branch of `bc`
R_PPC64_REL14_BRTAKEN: Final = 12  # the same, with a "taken" hint
R_PPC64_REL14_BRNTAKEN: Final = 13  # the same, with a "not taken" hint
R_PPC64_RELATIVE: Final = 22  # B + A
R_PPC64_REL32: Final = 26  # S + A - P, word32: the self-relative fields of __ex_table
R_PPC64_ADDR64: Final = 38  # S + A
R_PPC64_REL24_NOTOC: Final = 116  # (S + A - P) >> 2, low24: a `bl` that needs no TOC restore

BRANCH_RELOCS: Final = np.array(
    [R_PPC64_REL24, R_PPC64_REL14, R_PPC64_REL14_BRTAKEN, R_PPC64_REL14_BRNTAKEN, R_PPC64_REL24_NOTOC], np.uint64
)
"""The relocations that name the target of a relative branch."""


def ehdr_dtype(e: Endian) -> np.dtype:
    return np.dtype([
        ("e_ident", "S16"), ("e_type", e + "u2"), ("e_machine", e + "u2"), ("e_version", e + "u4"),
        ("e_entry", e + "u8"), ("e_phoff", e + "u8"), ("e_shoff", e + "u8"), ("e_flags", e + "u4"),
        ("e_ehsize", e + "u2"), ("e_phentsize", e + "u2"), ("e_phnum", e + "u2"),
        ("e_shentsize", e + "u2"), ("e_shnum", e + "u2"), ("e_shstrndx", e + "u2"),
    ])  # fmt: skip


def shdr_dtype(e: Endian) -> np.dtype:
    return np.dtype([
        ("sh_name", e + "u4"), ("sh_type", e + "u4"), ("sh_flags", e + "u8"), ("sh_addr", e + "u8"),
        ("sh_offset", e + "u8"), ("sh_size", e + "u8"), ("sh_link", e + "u4"), ("sh_info", e + "u4"),
        ("sh_addralign", e + "u8"), ("sh_entsize", e + "u8"),
    ])  # fmt: skip


def phdr_dtype(e: Endian) -> np.dtype:
    return np.dtype([
        ("p_type", e + "u4"), ("p_flags", e + "u4"), ("p_offset", e + "u8"), ("p_vaddr", e + "u8"),
        ("p_paddr", e + "u8"), ("p_filesz", e + "u8"), ("p_memsz", e + "u8"), ("p_align", e + "u8"),
    ])  # fmt: skip


def sym_dtype(e: Endian) -> np.dtype:
    return np.dtype([
        ("st_name", e + "u4"), ("st_info", "u1"), ("st_other", "u1"),
        ("st_shndx", e + "u2"), ("st_value", e + "u8"), ("st_size", e + "u8"),
    ])  # fmt: skip


def rela_dtype(e: Endian) -> np.dtype:
    return np.dtype([("r_offset", e + "u8"), ("r_info", e + "u8"), ("r_addend", e + "i8")])


def dyn_dtype(e: Endian) -> np.dtype:
    return np.dtype([("d_tag", e + "i8"), ("d_val", e + "u8")])


def word_dtype(e: Endian) -> np.dtype:
    return np.dtype(e + "u4")


def addr_dtype(e: Endian) -> np.dtype:
    return np.dtype(e + "u8")


def r_sym(info: np.ndarray) -> np.ndarray:
    return info >> np.uint64(32)


def r_type(info: np.ndarray) -> np.ndarray:
    return info & np.uint64(0xFFFF_FFFF)


def st_type(info: np.ndarray) -> np.ndarray:
    return info & np.uint8(0xF)


def ppc64_local_entry_offset(st_other: np.ndarray) -> np.ndarray:
    """ELFv2 ABI 3.4.1 "Symbol Values": bits 5-7 of st_other encode the distance from the
    global to the local entry point: 0 and 1 mean none, 2..6 mean 4 << (n - 2) bytes (7 reserved)."""
    offsets: np.ndarray = _LOCAL_ENTRY[(st_other.astype(np.intp) >> 5) & 7]
    return offsets


_LOCAL_ENTRY: Final = np.array([0, 0, 4, 8, 16, 32, 64, 0], np.int64)
"""ppc64_local_entry_offset by the three st_other bits: one look-up, not eight numpy calls."""
