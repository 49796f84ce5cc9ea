"""What a kernel's module loader makes of a module whose allocated sections share a name, or that
holds a REL table.

A module made by the kernel's build has one section of each name: scripts/module.lds gathers the
compiler's ``__patchable_function_entries`` into one, though objects of gcc 13 and later have one
per function (``rewriter.records``). A module linked without that script keeps them apart, and
then the loader's version decides, as qemu shows (tests/test_record_sections.py):

* It makes a sysfs file of each allocated section with bytes in it,
  ``/sys/module/NAME/sections/SECTION`` (kernel/module/sysfs.c ``add_sect_attrs()``), and the
  second of a name fails: "sysfs: cannot create duplicate filename".
* From 6.12 (upstream "module: abort module loading when sysfs setup suffer errors", 2024) that
  fails the load: insmod says "File exists", and none of the module's functions is ever traced.
  Seen on Debian's 6.12.107 and 7.2.13.
* Before, the load goes on with the warning, and ftrace reads the first allocated section of the
  name (kernel/module/main.c ``find_sec()``): the records in the others are never read, so their
  functions are never traced. Seen on Debian's 6.1.

The loader also refuses a module with no symbol table, no ``.gnu.linkonce.this_module`` or no ``.stubs`` section
(:func:`missing_section_refusal`), one with a relocation of a type it does not apply
(:func:`unknown_type_refusal`: which types depends on the kernel's version and build), one with an
SHT_REL table (:func:`rel_table_refusal`), and one with a record row of a relocation type it does
not know (``records.loader_refusal``: it reads the record tables).
"""

from __future__ import annotations

from typing import Final

import numpy as np

from rewriter import arrays
from rewriter.elf import structs as S
from rewriter.elf.image import Image, Kind, Section
from rewriter.elf.release import kernel_version
from rewriter.errors import ImageError

REFUSED_FROM: Final = (6, 12)
"""The first kernel whose loader refuses a module with two allocated sections of one name."""


def shared_names(image: Image) -> tuple[str, ...]:
    """A module's allocated section names that more than one section has (none in other files)."""
    return image.shared_alloc_names() if image.kind is Kind.MODULE else ()


def refusal(image: Image) -> str | None:
    """Why the kernel refuses to load this module, or None when it loads it: a REL table
    (:func:`rel_table_refusal`, met first: the loader applies relocations before it makes the sysfs
    files), or two allocated sections of one name. A module that names no kernel version (no
    vermagic) is taken to be for a current kernel. A missing section is met before both: the
    loader looks for them as it lays the module out."""
    return (
        missing_section_refusal(image)
        or rel_table_refusal(image)
        or unknown_type_refusal(image)
        or _shared_name_refusal(image)
    )


def missing_section_refusal(image: Image) -> str | None:
    """Sections every module has, and the loader (6.1 to 7.2 alike) fails the load without:
    kernel/module/main.c first looks for the SHT_SYMTAB ("module has no symbols (stripped?)": a
    module run through ``strip`` without ``--strip-debug`` has none, nor its relocation tables),
    then finds the allocated ``.gnu.linkonce.this_module`` (``find_sec()``: "No
    module found in object"; 7.2 says of an unallocated one that it "must occupy memory during
    process execution"), then arch/powerpc/kernel/module_64.c
    ``module_frob_arch_sections()`` the section named ``.stubs``, whatever its flags (the branch
    stubs, and ool's ftrace stubs, are carved from it: "doesn't contain .stubs")."""
    if image.kind is not Kind.MODULE:
        return None
    if not any(sec.type == S.SHT_SYMTAB for sec in image.sections):
        return (
            "no symbol table (strip without --strip-debug): the module loader refuses the module "
            "(module has no symbols (stripped?))"
        )
    if image.first_alloc_section(".gnu.linkonce.this_module") is None:
        return (
            "no allocated .gnu.linkonce.this_module section: the module loader refuses the module "
            "(insmod: invalid module format)"
        )
    if image.section(".stubs") is None:
        return "no .stubs section: the ppc64 module loader refuses the module (doesn't contain .stubs)"
    return None


def rel_table_refusal(image: Image) -> str | None:
    """ppc64 modules are RELA only (``MODULES_USE_ELF_RELA``): kernel/module/main.c
    ``apply_relocations()`` hands an SHT_REL table aimed at an allocated section to the generic
    ``apply_relocate()``, which prints "REL relocation unsupported" and fails the load."""
    if image.kind is not Kind.MODULE:
        return None
    for sec in image.sections:
        target = image.target_of(sec) if sec.type == S.SHT_REL else None
        if target is not None and target.flags & S.SHF_ALLOC:
            return (
                f"relocation section {sec.name} is SHT_REL, which the ppc64 module loader does not apply: "
                "it refuses the module (REL relocation unsupported)"
            )
    return None


# The relocation types arch/powerpc/kernel/module_64.c ``apply_relocate_add()`` applies; its
# ``default:`` fails the load, "Unknown ADD relocation". Up to 6.3, and from 6.4 in a build without
# CONFIG_PPC_KERNEL_PCREL (Debian's): ADDR32, REL24, REL32, ADDR64, REL64, TOC16, TOC16_LO,
# TOC16_HA, TOC, TOC16_DS, TOC16_LO_DS, TOCSAVE, ENTRY, REL16_LO, REL16_HA. The corpus's modules use
# 10, 26, 38, 44, 48, 50, 64 and 118.
TOC_TYPES: Final = np.array([1, 10, 26, 38, 44, 47, 48, 50, 51, 63, 64, 109, 118, 250, 252])
# From 6.4 ("powerpc/64: modules support building with PCREL addressing"), a CONFIG_PPC_KERNEL_PCREL
# build has no TOC: the TOC types and TOCSAVE are #ifndef'd out, and REL24_NOTOC, PCREL34 and
# GOT_PCREL34 are applied instead.
PCREL_TYPES: Final = np.array([1, 10, 26, 38, 44, 116, 118, 132, 133, 250, 252])
LOADER_TYPES: Final = arrays.distinct(np.concatenate([TOC_TYPES, PCREL_TYPES]))  # np.union1d, without numpy.ma
"""The types some ppc64 module loader applies (a row of any other type is refused by all)."""
PCREL_FROM: Final = (6, 4)
"""The first kernel whose module loader applies the PCREL types (in a CONFIG_PPC_KERNEL_PCREL build)."""
PCREL_MARK: Final = ".mygot"
"""The section a CONFIG_PPC_KERNEL_PCREL build puts in every module (asm/module.h), and whose
absence makes its loader refuse one (module_frob_arch_sections(): "doesn't contain .mygot")."""
# Whether each build's loader applies each type below 256, as one table look-up a row (np.isin sorted
# each table: a sixth of a module-tree scan). 255 is none of them, and stands for every type above it.
_APPLIED: Final = np.zeros((2, 256), bool)
_APPLIED[0, TOC_TYPES] = True
_APPLIED[1, PCREL_TYPES] = True


def unknown_type_refusal(image: Image) -> str | None:
    """A row of a RELA table aimed at an allocated section, of a type the loader of the module's
    kernel does not apply (kernel/module/main.c ``apply_relocations()`` skips tables aimed at other
    sections): :func:`pcrel_build` says which loader. A record table's rows are
    ``records.loader_refusal``'s, and a table that cannot be read is left to the commands that
    read it. The tables' types are tested together: a module has a dozen tables, and a tree
    thousands of modules."""
    if image.kind is not Kind.MODULE:
        return None
    tables, infos = _applied_tables(image)
    if not tables:
        return None
    types = np.minimum(S.r_type(np.concatenate(infos)), 255)
    unknown = np.flatnonzero(~_APPLIED[0][types])  # a TOC build's loader: every module of the corpus
    if len(unknown) or image.section(PCREL_MARK) is not None:
        unknown = np.flatnonzero(~_APPLIED[int(pcrel_build(image))][types])
    if not len(unknown):
        return None
    ends = np.cumsum([len(i) for i in infos])
    which = int(np.searchsorted(ends, unknown[0], side="right"))
    k, rtype = int(unknown[0]) - (int(ends[which - 1]) if which else 0), int(types[unknown[0]])
    return (
        f"relocation section {tables[which].name} entry {k} is of type {rtype}, which the ppc64 module "
        f"loader{_which_loader(image, rtype)} does not apply: it refuses the module (Unknown ADD relocation: {rtype})"
    )


def pcrel_build(image: Image) -> bool:
    """Whether the module is for a CONFIG_PPC_KERNEL_PCREL kernel: one of 6.4 or later (a module
    that names no version is taken to be for a current kernel) that has the ``.mygot`` section
    such a build gives every module and requires of it."""
    version = kernel_version(image)
    return (version is None or version >= PCREL_FROM) and image.section(PCREL_MARK) is not None


def _which_loader(image: Image, rtype: int) -> str:
    """Which loader refuses ``rtype``, where another one applies it."""
    if rtype not in LOADER_TYPES:
        return ""
    version = kernel_version(image)
    if version is not None and version < PCREL_FROM:
        return f" before {PCREL_FROM[0]}.{PCREL_FROM[1]} (the module's vermagic says {version[0]}.{version[1]})"
    if pcrel_build(image):
        return f" of a CONFIG_PPC_KERNEL_PCREL kernel (the module has {PCREL_MARK}: no TOC types)"
    return f" of a kernel built without CONFIG_PPC_KERNEL_PCREL (the module has no {PCREL_MARK})"


def _applied_tables(image: Image) -> tuple[list[Section], list[np.ndarray]]:
    """The readable RELA tables the loader applies that are not record tables, and their ``r_info``."""
    from rewriter.records import REL_RECORD_SECTIONS  # (records reads modload: imported here, not above)

    dtype = S.rela_dtype(image.endian)
    tables, infos = [], []
    for sec in image.relocation_sections():
        target = image.target_of(sec)
        if target is None or not target.flags & S.SHF_ALLOC or target.name in REL_RECORD_SECTIONS:
            continue
        try:
            infos.append(image.table(sec, dtype, "relocation")["r_info"])
        except ImageError:
            continue
        tables.append(sec)
    return tables, infos


def _shared_name_refusal(image: Image) -> str | None:
    names = shared_names(image)
    if not names:
        return None
    version = kernel_version(image)
    if version is not None and version < REFUSED_FROM:
        return None
    built_for = "" if version is None else f" {version[0]}.{version[1]}"
    return (
        f"more than one allocated section named {', '.join(names)}: the{built_for} module loader cannot "
        f"create /sys/module/*/sections/{names[0]} twice and refuses the module (insmod: File exists)"
    )


def reads_section(image: Image, sec: Section) -> bool:
    """Whether the loader of a module it loads reads ``sec`` where it looks a section up by name:
    find_sec() takes the first allocated one (module_64.c counts the ool stubs from the first of
    any flags: in a module the two agree). True for every section of other files."""
    if image.kind is not Kind.MODULE or not image.shares_alloc_name(sec.name):
        return True
    first = image.first_alloc_section(sec.name)
    return first is not None and first.shndx == sec.shndx
