"""The kernel version an image was built for, read from the image itself.

Some kernel behaviour that decides how a site is treated depends on the kernel's version rather
than on its ftrace generation: a 6.12 kernel built by a compiler without working
``-fpatchable-function-entry`` (Debian 12's, by gcc 12) still has ``mflr r0; bl _mcount`` sites,
but runs 6.12's boot checks. A module says which kernel it was built for in its ``vermagic``
(``.modinfo``: ``vermagic=6.12.118+deb12-powerpc64le SMP ...``); a vmlinux in ``linux_banner``
(``Linux version 6.12.118+deb12-powerpc64le (...)``).
"""

from __future__ import annotations

import re
from types import MappingProxyType
from typing import Final

from rewriter.elf import structs as S
from rewriter.elf.image import Image, Kind
from rewriter.errors import UnmappedAddress

# The release (UTS_RELEASE, what ``uname -r`` says) is the first word of both; the kernel's
# __NEW_UTS_LEN holds 64 bytes of it.
_RELEASE_LEN = 64
_VERMAGIC = re.compile(rb"(?:^|\0)vermagic=([^\0]*)")  # the whole line: the release, then the build's words
_BANNER = re.compile(rb"Linux version ([^\0 ]{1,64}) ")
# At most 4 digits a number: a longer one names no kernel, and 5,000 of them passed Python's
# limit on int() of a string (ValueError, an internal error in nop and diff).
_VERSION = re.compile(r"(\d{1,4})\.(\d{1,4})(?:[.\-+]|$)")
BANNER_SYMBOL = "linux_banner"
_BANNER_START = b"Linux version "
_BANNER_READ = 14 + 65  # "Linux version ", the release and the space after it
# The whole of init/version-timestamp.c's banner, "Linux version " UTS_RELEASE " (" LINUX_COMPILE_BY
# "@" LINUX_COMPILE_HOST ") (" LINUX_COMPILER ") " UTS_VERSION "\n" (UTS_VERSION is "#1 SMP ...",
# "# SMP ..." in the weak copy init/version.c leaves before it), and its NUL: other strings start the
# same way (linux_proc_banner's "%s version %s" does not, but a driver's message may), and the first
# of them named the release.
_BANNER_WHOLE = re.compile(rb"Linux version (\d[^\0 ]{0,63}) \([^\0\n]*@[^\0\n]*\) \([^\0\n]*\) #[^\0\n]*\n\0")
_BANNER_WHOLE_READ = 4096  # far more than a banner: the compiler's own version line is its longest part


def kernel_version(image: Image) -> tuple[int, int] | None:
    """(major, minor) of the kernel ``image`` belongs to, or None when the image does not say
    (an object file, a test program, a vmlinux without a banner)."""
    release = kernel_release(image)
    found = None if release is None else _VERSION.match(release)
    return None if found is None else (int(found[1]), int(found[2]))


def kernel_release(image: Image) -> str | None:
    """The release of the kernel ``image`` belongs to (``6.12.107+deb13-powerpc64le``): a module's
    ``vermagic``, a vmlinux's ``linux_banner``; None when the image does not say."""
    if image.kind is Kind.MODULE:
        found = _module_release(image)
    elif image.kind is Kind.VMLINUX:
        found = _vmlinux_release(image)
    else:
        return None
    return None if found is None else found.decode("ascii", "backslashreplace")


def _module_release(image: Image) -> bytes | None:
    line = _vermagic(image)
    release = None if line is None else line.split(b" ", 1)[0]
    return release if release and len(release) <= _RELEASE_LEN else None


def _vermagic(image: Image) -> bytes | None:
    """A module's ``vermagic`` line (``.modinfo``), or None (another file, a module without one)."""
    sec = image.section(".modinfo") if image.kind is Kind.MODULE else None
    found = None if sec is None else _VERMAGIC.search(image.section_bytes(sec))
    return None if found is None else found[1]


def _vmlinux_release(image: Image) -> bytes | None:
    syms = image.symbols
    hits = None if syms is None else syms.find(BANNER_SYMBOL)
    if syms is None or hits is None or not len(hits):
        return _stripped_release(image)
    try:
        at = image.offset_of(int(syms.table["st_value"][hits[0]]))
    except UnmappedAddress:
        return None
    found = _BANNER.match(bytes(image.data[at : at + _BANNER_READ]))
    return None if found is None else found[1]


def _stripped_release(image: Image) -> bytes | None:
    """The release of a vmlinux without the ``linux_banner`` symbol (stripped): the first whole
    banner in ``.rodata``, where init/version.c puts it (near its start in the Debian kernels: byte
    1,264 of 4.7 MB on 6.12, its weak copy, with the same release). A stripped 6.12 built by gcc 12
    has mprofile sites and 6.12's boot checks: taken for a 6.1, its scan judged rewritten sites by
    6.1's init, and said nothing of the weak bodies the kernel disables."""
    sec = image.section(".rodata")
    if sec is None or sec.type == S.SHT_NOBITS or sec.offset + sec.size > len(image.data):
        return None
    end = sec.offset + sec.size
    at = image.data.find(_BANNER_START, sec.offset, end)
    while at >= 0:
        found = _BANNER_WHOLE.match(bytes(image.data[at : min(at + _BANNER_WHOLE_READ, end)]))
        if found is not None:
            return found[1]
        at = image.data.find(_BANNER_START, at + 1, end)
    return None


def vermagic_words(image: Image) -> tuple[str, ...]:
    """The words of a module's ``vermagic`` (``6.12.107+deb13-powerpc64le SMP mod_unload modversions
    patchable-function-entry relocatable``), or none (another file, a module without one)."""
    line = _vermagic(image)
    return () if line is None else tuple(line.decode("ascii", "replace").split())


# What a module's vermagic says of its kernel's FTRACE_CALLSITE_SECTION (include/linux/ftrace.h:
# "__patchable_function_entries" where the build defines CC_USING_PATCHABLE_FUNCTION_ENTRY, which
# arch/powerpc/Makefile does with CONFIG_ARCH_USING_PATCHABLE_FUNCTION_ENTRY, else "__mcount_loc";
# arch/powerpc/include/asm/vermagic.h names the same config: 6.1 to 7.2).
_CALLSITE_OF_VERMAGIC: Final = MappingProxyType(
    {"patchable-function-entry": "__patchable_function_entries", "mprofile-kernel": "__mcount_loc"}
)


def vermagic_callsite(image: Image) -> str | None:
    """The record section a module's kernel reads (FTRACE_CALLSITE_SECTION), as its vermagic says;
    None when it says neither (another file, an older or stripped vermagic)."""
    found = [_CALLSITE_OF_VERMAGIC[w] for w in vermagic_words(image) if w in _CALLSITE_OF_VERMAGIC]
    return found[0] if found else None


def releases_differ(ours: str | None, theirs: str | None) -> bool:
    """Both name a release (a module's vermagic, a vmlinux's linux_banner), and not the same one:
    the vmlinux is not the kernel that loads the module (nop --kernel, prenop, policy check, audit)."""
    return ours is not None and theirs is not None and ours != theirs
