"""The image: one ELF64 PowerPC file, its sections, symbols and relocations as numpy tables.

Naming (as in cle's ``Region``): ``addr`` is a virtual address, ``offset`` a file offset.
For relocatable files (ET_REL) sections have no address; a place is (section, offset in
section) and :meth:`Image.offset_of` is not used.

Every structure is bounds-checked when it is first read, so a corrupt or hostile file gives
one :class:`ImageError` naming the file and the problem, never an IndexError or a huge
allocation.
"""

from __future__ import annotations

import enum
import heapq
import mmap
import os
import struct
from dataclasses import dataclass
from functools import cached_property
from operator import itemgetter
from pathlib import Path
from typing import Final, NamedTuple

import numpy as np

from rewriter import arrays
from rewriter.elf import structs as S
from rewriter.elf.compress import (
    MODULE_SUFFIXES,
    Compression,
    HeaderRefusal,
    compression_named,
    decompress,
    detect_compression,
    header_refusal,
)
from rewriter.elf.signature import Trailer, TrailerError, parse_trailer
from rewriter.errors import ImageError, UnmappedAddress
from rewriter.ppc import Addr, Offset
from rewriter.prose import printable
from rewriter.reading import open_regular, zero_size_text


def _unpacker(endian: S.Endian, dtype: np.dtype) -> struct.Struct:
    """The ``struct`` twin of a table of unsigned integer fields in ``endian`` order: it reads a
    module's few dozen rows into tuples at a third of what ``np.frombuffer(...).tolist()`` costs."""
    codes = {1: "B", 2: "H", 4: "I", 8: "Q"}
    fields = [dtype[name] for name in dtype.names or ()]
    assert all(field.kind == "u" for field in fields)
    return struct.Struct(endian + "".join(codes[field.itemsize] for field in fields))


# The table layouts, built once for each byte order (a structured dtype takes microseconds to
# build, and every file asks for these).
_EHDR: Final = {e: S.ehdr_dtype(e) for e in ("<", ">")}
_SHDR: Final = {e: S.shdr_dtype(e) for e in ("<", ">")}
_SHDR_ROWS: Final = {e: _unpacker(e, _SHDR[e]) for e in ("<", ">")}
_SYM: Final = {e: S.sym_dtype(e) for e in ("<", ">")}
_RELA: Final = {e: S.rela_dtype(e) for e in ("<", ">")}


class Kind(enum.Enum):
    VMLINUX = "vmlinux"
    MODULE = "module"
    OBJECT = "object"
    EXECUTABLE = "executable"


class Abi(enum.Enum):
    ELFV1 = "elfv1"
    ELFV2 = "elfv2"


class Section(NamedTuple):
    shndx: int  # its index in the section header table (st_shndx, sh_link and sh_info name it)
    name: str
    type: int
    flags: int
    addr: int
    offset: int
    size: int
    link: int
    info: int
    entsize: int

    @property
    def is_exec(self) -> bool:
        return bool(self.flags & S.SHF_EXECINSTR) and self.type == S.SHT_PROGBITS

    def contains_addr(self, addr: int) -> bool:
        return bool(self.flags & S.SHF_ALLOC) and self.addr <= addr < self.addr + self.size


_ADDR_MAX: Final = (1 << 64) - 1  # the highest 64-bit address


class _AddrPieces(NamedTuple):
    """An image's address space in pieces (:meth:`Image.section_of_addr`): ``starts`` ascending,
    each piece running to the next start (the last to the top of the address space), and the
    index of the section that has each piece (None: no section)."""

    starts: np.ndarray
    owners: list[int | None]


@dataclass(frozen=True)
class Symbols:
    """A symbol table as numpy columns plus its string table (names decoded on demand)."""

    table: np.ndarray
    strtab: bytes

    def name(self, index: int) -> str:
        return self.name_at(int(self.table["st_name"][index]))

    def name_at(self, st_name: int) -> str:
        text = self._text
        if text is not None:  # see names_at
            end = text.find("\0", st_name)
            return text[st_name:end] if end >= 0 else text[st_name:]
        end = self.strtab.find(b"\0", st_name)
        if end < 0:
            end = len(self.strtab)
        return printable(self.strtab[st_name:end].decode("utf-8", "replace"))

    def names_at(self, st_names: list[int]) -> list[str]:
        """:meth:`name_at` of each index. A kernel's string table is printable ASCII: it is then
        decoded once and cut as text, not once per name."""
        text = self._text
        if text is None:
            return [self.name_at(i) for i in st_names]
        out = []
        for i in st_names:
            end = text.find("\0", i)
            out.append(text[i:end] if end >= 0 else text[i:])
        return out

    @cached_property
    def _text(self) -> str | None:
        return _printable_ascii(self.strtab)

    def find(self, name: str) -> np.ndarray:
        """Indexes of the symbols called exactly ``name``.

        Linkers share string tails ("_mcount" inside "__ksymtab__mcount"), so a name can start
        in the middle of a longer string: match every place the NUL-terminated name occurs."""
        key = name.encode() + b"\0"
        places = []
        pos = self.strtab.find(key)
        while pos >= 0:
            places.append(pos)
            pos = self.strtab.find(key, pos + 1)
        if not places:  # most look-ups are for names an image lacks: skip the table
            return np.zeros(0, dtype=np.intp)
        return np.flatnonzero(arrays.member(self.table["st_name"], places))


def relocatable_at_a_glance(path: Path) -> bool:
    """Whether ``path`` is a relocatable ELF (a module or object) by its name or its first bytes
    (:func:`read_head`), without loading it: a compressed module is one; a file that cannot be
    read so is not (its load reports why, in its turn)."""
    if path.name.endswith(MODULE_SUFFIXES):
        return True
    try:
        head = read_head(path)
    except OSError:
        return False
    return head_type(head) == S.ET_REL


def head_type(head: bytes) -> int | None:
    """A file's ``e_type`` from its first bytes (:func:`read_head`), or None if they are not an ELF
    header with a byte order."""
    order = S.ident_byte_order(head)
    if len(head) < S.E_TYPE.stop or not is_elf(head) or order is None:
        return None
    return int.from_bytes(head[S.E_TYPE], order)


def is_ppc64_executable(head: bytes) -> bool:
    """Whether a file's first bytes (:func:`read_head`) are those of a 64-bit PowerPC ``ET_EXEC``
    image, in either byte order: what every vmlinux is (the corpus' four, 6.1 to 7.2). Not
    ``ET_DYN``: a build tree's vDSO (``vdso64.so``) is one, and no vmlinux here."""
    order = S.ident_byte_order(head)
    if head_type(head) != S.ET_EXEC or order is None or len(head) < S.E_MACHINE.stop:
        return False
    return head[S.EI_CLASS] == S.ELFCLASS64 and int.from_bytes(head[S.E_MACHINE], order) == S.EM_PPC64


def read_head(path: Path) -> bytes:
    """The first bytes of the file ``path``: its ELF identification, ``e_type`` and ``e_machine``,
    if it is ELF (``OSError`` if it cannot be read). Only for a file known not to block: a tree
    walk's regular files, or a path a user named, which the load opens non-blocking in its turn."""
    with path.open("rb") as fh:
        return fh.read(S.E_MACHINE.stop)


def is_elf(head: bytes) -> bool:
    """Whether a file's first bytes (:func:`read_head`) are an ELF file's."""
    return head.startswith(S.ELF_MAGIC)


def _archive(head: bytes) -> str:
    """What to say of a file that is an ar archive instead: mcountrw reads its members."""
    if head.startswith(S.THIN_AR_MAGIC):
        return ": a thin ar archive; give the object files it names"
    if head.startswith(S.AR_MAGIC):
        return ": an ar archive; give its members (ar x), or the objects it was made from"
    return ""


def is_foreign_elf(head: bytes) -> bool:
    """Whether a file's first bytes (:func:`read_head`) are those of an ELF file built for another
    machine: neither PowerPC (a kernel build tree's host tools), or 32-bit PowerPC (its 32-bit vDSO
    objects). Never a file whose ``e_machine`` says PowerPC64 in either byte order, nor 32-bit
    PowerPC in a 64-bit file: those are damaged PowerPC64 files, whose load says what is wrong
    (a flipped byte-order or class byte must not make a file vanish from a tree's report). False
    too for what is not ELF, or too short to say."""
    if not is_elf(head) or len(head) < S.E_MACHINE.stop:
        return False
    machines = {int.from_bytes(head[S.E_MACHINE], order) for order in ("little", "big")}
    if S.EM_PPC64 in machines:
        return False
    if S.EM_PPC in machines:
        return head[S.EI_CLASS] == S.ELFCLASS32
    return True


def index_name(shndx: int) -> str:
    """What a section with no name of its own is called, and a place whose section index names no
    section header: its index, as readelf numbers sections (``[5]``, so ``[5]+0x4``)."""
    return f"[{shndx}]"


def _printable_ascii(strings: bytes) -> str | None:
    """A string table as text, when every name in it is printable ASCII (every kernel's): the
    names are then cut from it as they are. None otherwise: each name is decoded on its own and
    :func:`~rewriter.prose.printable` escapes what would break a line or drive a terminal."""
    if not strings.isascii():
        return None
    text = strings.decode("ascii")
    return text if text.replace("\0", "").isprintable() else None


def _read_all(fd: int, size: int) -> bytes:
    """The whole file, to its end whatever ``size`` (from fstat) said. Plain reads on the
    descriptor: a file object around a dup of it cost more than the read of a small module."""
    parts: list[bytes] = []
    while True:
        part = os.read(fd, max(size, 1 << 16))
        if not part:
            return parts[0] if len(parts) == 1 else b"".join(parts)
        parts.append(part)


class Image:
    """A loaded ELF64 PowerPC file. Read-only: a rewrite builds new bytes beside it
    (``rewriter.rewrite``, ``rewriter.edits``).

    ``data`` is the whole file as it is on disk after decompression, signature trailer
    included; the ELF structures never reach past ``elf_end``.
    """

    def __init__(
        self,
        path: Path,
        data: bytes | mmap.mmap,
        compression: Compression,
        header_refusal: HeaderRefusal | None = None,
    ) -> None:
        self.path = path
        self.data = data
        self.compression = compression
        # What in a compressed file's header one loader refuses (an xz CRC64 check): compress.header_refusal
        self.header_refusal = header_refusal
        self.size = len(data)
        if self.size < S.EI_NIDENT:
            head = bytes(data)
            raise self.error(
                "empty file" if self.size == 0 else f"not an ELF file (too short){_archive(head) or self._named()}"
            )
        ident = bytes(data[: S.EI_NIDENT])
        if not is_elf(ident):
            raise self.error(f"not an ELF file{_archive(ident) or self._named()}")
        if ident[S.EI_CLASS] != S.ELFCLASS64:
            raise self.error(f"ELF class {ident[S.EI_CLASS]} is not ELF64 (a 32-bit file?)")
        order = S.ident_byte_order(ident)
        if order is None:
            raise self.error(f"bad ELF data encoding {ident[S.EI_DATA]} (not little or big endian)")
        self.endian: S.Endian = "<" if order == "little" else ">"
        self.signature = self._find_signature()
        self.elf_end = self.signature.elf_end if self.signature else self.size
        ehdr_dt = _EHDR[self.endian]
        if self.elf_end < ehdr_dt.itemsize:
            raise self.error("truncated ELF header")
        self.ehdr = np.frombuffer(data, ehdr_dt, count=1)[0]
        if int(self.ehdr["e_machine"]) != S.EM_PPC64:
            raise self.error(f"machine {int(self.ehdr['e_machine'])} is not PowerPC64 (EM_PPC64 = {S.EM_PPC64})")
        self.type = int(self.ehdr["e_type"])
        if self.type not in (S.ET_REL, S.ET_EXEC, S.ET_DYN):
            core = " (a core dump)" if self.type == S.ET_CORE else ""
            raise self.error(f"ELF type {self.type}{core} is not a relocatable, executable or shared file")
        self._check_program_headers(None)
        self.sections = self._read_sections()
        self._by_name = {s.name: s for s in reversed(self.sections)}

    # -- construction ---------------------------------------------------------------------

    def _named(self) -> str:
        """For a file that is not ELF: that its name promised compressed data it does not hold
        (``x.ko.xz`` that is not xz), since its name is why it was read as a module."""
        kind = compression_named(self.path)
        if kind in (None, Compression.NONE) or self.compression is not Compression.NONE:
            return ""
        return f"; nor {kind.value} data, as its name says"

    @classmethod
    def load(cls, path: Path) -> Image:
        """Open ``path`` (mmap'ed; .xz/.gz/.zst modules decompressed in memory).

        Only regular files: a FIFO would block the open (hence ``O_NONBLOCK``) and a device has no
        size to map. The mapping is read-only and mcountrw never writes into a file it maps (output
        is a new file renamed into place), but another process truncating the file while it is
        mapped would still make reads past the new end fault (SIGBUS): see docs/bad-input.md."""
        try:
            fd, st = open_regular(path)
        except OSError as e:
            raise ImageError(f"{path}: {e.strerror or e}") from None
        try:
            if st.st_size == 0:
                raise ImageError(f"{path}: {zero_size_text(fd)}")
            head = os.pread(fd, 8, 0)
            compression = detect_compression(head)
            if compression is not Compression.NONE:
                data: bytes | mmap.mmap = decompress(path, _read_all(fd, st.st_size), compression)
            else:
                data = mmap.mmap(fd, 0, access=mmap.ACCESS_READ)
        except OSError as e:
            raise ImageError(f"{path}: {e.strerror or e}") from None
        except ValueError:  # mmap of a file emptied since the fstat
            raise ImageError(f"{path}: empty file") from None
        finally:
            os.close(fd)
        return cls(path, data, compression, header_refusal(head))

    @classmethod
    def from_bytes(cls, path: Path, data: bytes) -> Image:
        return cls(path, data, Compression.NONE)

    def error(self, message: str) -> ImageError:
        return ImageError(f"{self.path}: {message}")

    def _find_signature(self) -> Trailer | None:
        try:
            return parse_trailer(self.data)
        except TrailerError as e:
            raise self.error(str(e)) from None

    def _read_sections(self) -> list[Section]:
        e = self.ehdr
        shoff, shnum, shentsize = int(e["e_shoff"]), int(e["e_shnum"]), int(e["e_shentsize"])
        if shoff == 0:
            raise self.error("no section header table")
        dt = _SHDR[self.endian]
        if shentsize != dt.itemsize:
            raise self.error(f"section header size {shentsize}, expected {dt.itemsize}")
        if shnum == 0:
            # gABI: if e_shnum is 0 and e_shoff is not, the real count is in sh_size of entry 0.
            self._check_range(shoff, dt.itemsize, "section header 0")
            shnum = int(np.frombuffer(self.data, dt, count=1, offset=shoff)[0]["sh_size"])
            if shnum == 0:
                raise self.error("no sections (e_shnum and the count in section header 0 are both 0)")
        self._check_range(shoff, shnum * dt.itemsize, "section header table")
        # Python tuples at once: reading numpy fields one at a time would cost a third of a
        # module's whole scan (~60 sections x 10 fields).
        rows = list(_SHDR_ROWS[self.endian].iter_unpack(memoryview(self.data)[shoff : shoff + shnum * dt.itemsize]))
        strndx = int(e["e_shstrndx"])
        if strndx == S.SHN_XINDEX:
            strndx = rows[0][6]  # sh_link
        if strndx == S.SHN_UNDEF:
            raise self.error("no section name string table (e_shstrndx is 0)")
        if not 0 < strndx < shnum:
            raise self.error(f"section name string table index {strndx} out of range (1..{shnum - 1})")
        nobits, null, elf_end = S.SHT_NOBITS, S.SHT_NULL, self.elf_end
        has_data = [i for i, r in enumerate(rows) if r[5] and r[1] != nobits and r[1] != null]
        for i in has_data:
            if rows[i][4] + rows[i][5] > elf_end:  # the fields are unsigned: only the end can be wrong
                self._check_range(rows[i][4], rows[i][5], f"section {i} data")
        if int(e["e_phnum"]) == S.PN_XNUM:
            self._check_program_headers(rows[0][7])  # sh_info
        names = bytes(self.data[rows[strndx][4] : rows[strndx][4] + rows[strndx][5]])
        # The table's columns, then every Section in one pass (Section._make: a tuple from a tuple,
        # not a call with ten arguments per section).
        name_off, typ, flags, addr, offset, size, link, info, _, entsize = zip(*rows, strict=True)
        named = self._section_names(name_off, names)
        fields = zip(range(shnum), named, typ, flags, addr, offset, size, link, info, entsize, strict=True)
        sections = list(map(Section._make, fields))
        self._check_links(sections)
        self._check_overlaps(sections, has_data, shoff, shnum * dt.itemsize)
        return sections

    def _section_names(self, offsets: tuple[int, ...], names: bytes) -> list[str]:
        """Each section's name, from its offset into the names section (printable ASCII in every
        kernel: then decoded once and cut as text; see :func:`_printable_ascii`). A section past
        the first whose name is empty (no toolchain makes one) is called by its index
        (:func:`index_name`): a place in it then reads ``[N]+0x4``, which ``--addr`` takes back,
        not ``+0x4``, which names no section."""
        out = []
        end = max(len(names), 1)
        text = _printable_ascii(names)
        for i, at in enumerate(offsets):
            if at >= end:
                raise self.error(f"section {i} name index {at} out of range")
            if text is not None:
                stop = text.find("\0", at)
                out.append(text[at:stop] if stop >= 0 else text[at:])
            else:
                stop = names.find(b"\0", at)
                out.append(printable(names[at : stop if stop >= 0 else len(names)].decode("utf-8", "replace")))
        if "" in out[1:]:
            out[1:] = [name or index_name(i) for i, name in enumerate(out[1:], 1)]
        return out

    def _check_links(self, sections: list[Section]) -> None:
        """A symbol table names its string table in sh_link; a relocation table its symbol table in
        sh_link and the section it applies to in sh_info (gABI, Figure 4-12)."""
        n = len(sections)
        for sec in [s for s in sections if s.type == S.SHT_SYMTAB or s.type == S.SHT_RELA]:
            if sec.type == S.SHT_SYMTAB:
                links: tuple[tuple[str, int], ...] = (("sh_link", sec.link),)
            else:
                links = (("sh_link", sec.link), ("sh_info", sec.info))
            for what, index in links:
                if index >= n:
                    raise self.error(f"section {sec.shndx} ({sec.name}): {what} {index} names no section (0..{n - 1})")

    def _check_program_headers(self, count: int | None) -> None:
        """The program header table is not read, but a rewritten file keeps it: it must be whole.
        ``count``: sh_info of section 0, once read, for PN_XNUM."""
        e = self.ehdr
        phoff, phnum = int(e["e_phoff"]), int(e["e_phnum"])
        if phnum == S.PN_XNUM:  # gABI: the real count is in sh_info of section 0, read later
            if count is None:
                return
            phnum = count
        if phnum == 0:
            return
        dt = S.phdr_dtype(self.endian)
        if int(e["e_phentsize"]) != dt.itemsize:
            raise self.error(f"program header size {int(e['e_phentsize'])}, expected {dt.itemsize}")
        self._check_range(phoff, phnum * dt.itemsize, "program header table")

    def _check_overlaps(self, sections: list[Section], has_data: list[int], shoff: int, shsize: int) -> None:
        """No two sections share file bytes, and none covers the ELF header or the section header
        table: a write meant for one would silently change the other (gABI: "sections in a file
        may not overlap. No byte in a file resides in more than one section")."""
        spans = [(0, self.ehdr.dtype.itemsize, -2), (shoff, shsize, -1)]
        spans += [(sec.offset, sec.size, sec.shndx) for sec in map(sections.__getitem__, has_data)]
        spans.sort(key=itemgetter(0))  # stable: equal starts keep header, table, index order
        reach = 0
        for n, (start, size, index) in enumerate(spans):
            if start < reach and n:
                # The earliest span reaching past this start: the first whose end lies beyond it.
                other, other_size, other_index = next(span for span in spans[:n] if span[0] + span[1] > start)
                raise self.error(
                    f"{self._span_name(sections, index)} at offset {start:#x} overlaps "
                    f"{self._span_name(sections, other_index)} ({other:#x}..{other + other_size:#x})"
                )
            if start + size > reach:
                reach = start + size

    @staticmethod
    def _span_name(sections: list[Section], index: int) -> str:
        if index < 0:
            return "the ELF header" if index == -2 else "the section header table"
        return f"section {index} ({sections[index].name})"

    def _check_range(self, offset: int, size: int, what: str) -> None:
        if offset < 0 or size < 0 or offset + size > self.elf_end:
            raise self.error(f"{what} at offset {offset:#x} size {size:#x} runs past the end of the file")

    # -- facts ----------------------------------------------------------------------------

    @property
    def big_endian(self) -> bool:
        return self.endian == ">"

    @property
    def byteorder(self) -> S.ByteOrder:
        return "big" if self.big_endian else "little"

    @cached_property
    def abi(self) -> Abi:
        """e_flags says 1 or 2 on modern toolchains; if unset, an ``.opd`` section means ELFv1."""
        flag = int(self.ehdr["e_flags"]) & S.EF_PPC64_ABI
        if flag == 2:
            return Abi.ELFV2
        if flag == 1 or ".opd" in self._by_name:
            return Abi.ELFV1
        return Abi.ELFV2 if not self.big_endian else Abi.ELFV1

    @cached_property
    def kind(self) -> Kind:
        if self.type == S.ET_REL:
            return Kind.MODULE if ".modinfo" in self._by_name else Kind.OBJECT
        if self.symbols is not None and len(self.symbols.find("__start_mcount_loc")):
            return Kind.VMLINUX
        if "__ksymtab" in self._by_name:
            return Kind.VMLINUX
        return Kind.EXECUTABLE

    # -- sections -------------------------------------------------------------------------

    def section(self, name: str) -> Section | None:
        return self._by_name.get(name)

    def section_at(self, index: int) -> Section:
        if not 0 <= index < len(self.sections):
            raise self.error(f"section index {index} out of range")
        return self.sections[index]

    def shared_alloc_names(self) -> tuple[str, ...]:
        """The names that more than one allocated section with bytes in it has (SHF_ALLOC, a
        non-zero sh_size: what a module's loader makes a sysfs file of, per name, and refuses the
        module over when it cannot)."""
        return self._shared_alloc_names

    @cached_property
    def _shared_alloc_names(self) -> tuple[str, ...]:
        """Once per image: the loader's questions come once per record section, and a module can
        have one per function (thousands, each asking about them all)."""
        if len(self._by_name) == len(self.sections):  # every name once: the common case, for free
            return ()
        seen: dict[str, int] = {}
        for s in self.sections:
            if s.flags & S.SHF_ALLOC and s.size:
                seen[s.name] = seen.get(s.name, 0) + 1
        return tuple(name for name, n in seen.items() if n > 1)

    def shares_alloc_name(self, name: str) -> bool:
        """Whether ``name`` is one of :meth:`shared_alloc_names` (a set: a crafted module can
        share thousands of names)."""
        return name in self._shared_alloc_set

    @cached_property
    def _shared_alloc_set(self) -> frozenset[str]:
        return frozenset(self._shared_alloc_names)

    def first_alloc_section(self, name: str) -> Section | None:
        """The first allocated section called ``name`` in section header order (what the module
        loader's find_sec() finds), or None."""
        return self._first_alloc.get(name)

    @cached_property
    def _first_alloc(self) -> dict[str, Section]:
        """Built once, in one pass: looked up once per record section (see ``_shared_alloc_names``)."""
        first: dict[str, Section] = {}
        for s in self.sections:
            if s.flags & S.SHF_ALLOC:
                first.setdefault(s.name, s)
        return first

    def exec_sections(self) -> list[Section]:
        """Sections of code (``is_exec``) with bytes in them."""
        return [s for s in self.sections if s.flags & S.SHF_EXECINSTR and s.type == S.SHT_PROGBITS and s.size]

    def section_bytes(self, sec: Section) -> bytes:
        return bytes(self.data[sec.offset : sec.offset + sec.size])

    def words(self, sec: Section) -> np.ndarray:
        """The section's 32-bit words, in native byte order (instructions are 4-byte aligned)."""
        n = sec.size // 4
        return np.frombuffer(self.data, S.word_dtype(self.endian), count=n, offset=sec.offset).astype(np.uint32)

    def word_at(self, offset: int) -> int:
        self._check_range(offset, 4, "word")
        return int.from_bytes(self.data[offset : offset + 4], self.byteorder)

    def table(self, sec: Section, dtype: np.dtype, what: str) -> np.ndarray:
        if sec.type == S.SHT_NOBITS:
            raise self.error(f"{what} section {sec.name} has no data")
        if sec.size % dtype.itemsize:
            raise self.error(f"{what} section {sec.name} size {sec.size} is not a multiple of {dtype.itemsize}")
        if sec.type in (S.SHT_SYMTAB, S.SHT_RELA, S.SHT_DYNAMIC) and sec.entsize not in (0, dtype.itemsize):
            raise self.error(f"{what} section {sec.name} entry size {sec.entsize}, expected {dtype.itemsize}")
        return np.frombuffer(self.data, dtype, count=sec.size // dtype.itemsize, offset=sec.offset)

    # -- symbols and relocations ----------------------------------------------------------

    @cached_property
    def symbols(self) -> Symbols | None:
        """``.symtab`` (None when stripped)."""
        sec = next((s for s in self.sections if s.type == S.SHT_SYMTAB), None)
        if sec is None:
            return None
        table = self.table(sec, _SYM[self.endian], "symbol table")
        strsec = self.section_at(sec.link)
        if strsec.type != S.SHT_STRTAB:
            raise self.error(f"symbol table {sec.name} links to {strsec.name}, which is not a string table")
        strtab = self.section_bytes(strsec)
        if len(table) and int(table["st_name"].max()) >= max(len(strtab), 1):
            raise self.error(f"symbol name index out of range of {strsec.name}")
        return Symbols(table, strtab)

    def relocation_sections(self) -> list[Section]:
        return [s for s in self.sections if s.type == S.SHT_RELA]

    def target_of(self, sec: Section) -> Section | None:
        """The section a relocation section applies to (its ``sh_info``), or None when that names
        none (0, or past the table)."""
        return self.sections[sec.info] if 0 < sec.info < len(self.sections) else None

    def relocations(self, sec: Section) -> np.ndarray:
        """The entries of a SHT_RELA section. Each names a symbol by index into the symbol table
        its sh_link names (gABI "Relocation"): an index past that table is refused here, once,
        so that no caller indexes past it."""
        rela = self.table(sec, _RELA[self.endian], "relocation")
        if len(rela):
            link = self.sections[sec.link] if 0 < sec.link < len(self.sections) else None
            symbols = (
                link.size // S.sym_dtype("<").itemsize
                if link is not None and link.type in (S.SHT_SYMTAB, S.SHT_DYNSYM)
                else 1
            )
            if self.symbols is not None and link is not None and link.type == S.SHT_SYMTAB:
                symbols = min(symbols, len(self.symbols.table))
            top = int(S.r_sym(rela["r_info"]).max())
            if top and (link is None or link.type not in (S.SHT_SYMTAB, S.SHT_DYNSYM)):
                named = f"section {sec.link} ({link.name or index_name(link.shndx)})" if link else f"section {sec.link}"
                raise self.error(f"relocation section {sec.name}: its sh_link names {named}, not a symbol table")
            if top >= symbols:
                raise self.error(f"relocation section {sec.name} names symbol {top}, past the {symbols} it can name")
        return rela

    # -- addresses ------------------------------------------------------------------------

    def offset_of(self, addr: int) -> Offset:
        """File offset of a virtual address in an allocated section with file data."""
        for sec in self.sections:
            if sec.type != S.SHT_NOBITS and sec.contains_addr(addr):
                return Offset(sec.offset + addr - sec.addr)
        raise UnmappedAddress(f"{self.path}: address {addr:#x} is in no section with file data")

    def offset_of_named(self, name: str, addr: int) -> Offset:
        """:meth:`offset_of` of what a symbol or table ``name`` says lies at ``addr``: where it lies
        in no section with file data, the error names it, not only the address."""
        try:
            return self.offset_of(addr)
        except UnmappedAddress:
            raise self.error(f"{name} at {addr:#x} is in no allocated section with file data") from None

    def addr_of(self, offset: int) -> Addr:
        for sec in self.sections:
            if sec.type != S.SHT_NOBITS and sec.flags & S.SHF_ALLOC and sec.offset <= offset < sec.offset + sec.size:
                return Addr(sec.addr + offset - sec.offset)
        raise UnmappedAddress(f"{self.path}: file offset {offset:#x} is in no allocated section")

    def section_of_addr(self, addr: int) -> Section | None:
        """The first section, in section header order, whose bytes in the file hold ``addr``
        (allocated, not SHT_NOBITS), or None. A binary search of :attr:`_addr_pieces`: it is asked
        once for each record that names no site (a crafted table can hold thousands of them, and
        as many sections)."""
        pieces = self._addr_pieces
        if not 0 <= addr <= _ADDR_MAX or not len(pieces.starts):
            return None
        k = int(np.searchsorted(pieces.starts, np.uint64(addr), side="right")) - 1
        owner = pieces.owners[k] if k >= 0 else None
        return None if owner is None else self.sections[owner]

    @cached_property
    def _addr_pieces(self) -> _AddrPieces:
        """The address space cut where any allocated section with file bytes starts or ends, each
        piece owned by the first section (in header order) that covers it. Sections may overlap
        (every one of a relocatable file starts at 0), so the owner of a piece is the lowest index
        among the sections open there: a sweep over the cuts with a heap of them, by index."""
        spans = sorted(
            (s.addr, s.shndx, s.addr + s.size)
            for s in self.sections
            if s.flags & S.SHF_ALLOC and s.type != S.SHT_NOBITS and s.size
        )
        cuts = sorted({start for start, _, _ in spans} | {end for _, _, end in spans if end <= _ADDR_MAX})
        open_: list[tuple[int, int]] = []  # (shndx, end) of the sections begun so far
        owners: list[int | None] = []
        begun = 0
        for cut in cuts:
            while begun < len(spans) and spans[begun][0] <= cut:
                heapq.heappush(open_, (spans[begun][1], spans[begun][2]))
                begun += 1
            while open_ and open_[0][1] <= cut:  # ended (one that ends under the top goes when it tops)
                heapq.heappop(open_)
            owners.append(open_[0][0] if open_ else None)
        return _AddrPieces(np.array(cuts, np.uint64), owners)
