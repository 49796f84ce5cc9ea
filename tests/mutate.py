"""Mutations of a little-endian ELF module in place, as the tests that ask what the kernel's loader
makes of an odd module build them (tests/test_review_fuzz.py, tests/test_review_load2.py)."""

from __future__ import annotations

from pathlib import Path

from rewriter.elf import structs as S
from rewriter.elf.image import Image


def rename_section(ko: Path, name: str) -> None:
    """Rename section ``name`` in its ``.shstrtab`` (its last letter made ``X``)."""
    data = bytearray(ko.read_bytes())
    at = data.index(b"\0" + name.encode() + b"\0") + len(name)
    data[at] = ord("X")
    ko.write_bytes(data)


def clear_alloc(ko: Path, name: str) -> None:
    """Take SHF_ALLOC from section ``name``'s flags: the loader no longer places it, and its
    find_sec() no longer finds it."""
    image = Image.load(ko)
    sec = image.section(name)
    assert sec is not None
    data = bytearray(ko.read_bytes())
    at = int(image.ehdr["e_shoff"]) + sec.shndx * 64 + 8  # sh_flags
    data[at : at + 8] = (sec.flags & ~S.SHF_ALLOC).to_bytes(8, "little")
    ko.write_bytes(data)


def set_relocation_type(ko: Path, table: str, rtype: int) -> None:
    """Give the first row of relocation table ``table`` the type ``rtype``."""
    image = Image.load(ko)
    sec = image.section(table)
    assert sec is not None
    data = bytearray(ko.read_bytes())
    info = int.from_bytes(data[sec.offset + 8 : sec.offset + 16], "little")
    data[sec.offset + 8 : sec.offset + 16] = (info & ~0xFFFF_FFFF | rtype).to_bytes(8, "little")
    ko.write_bytes(data)
