"""A module's name, as the kernel knows it: read from the module, never from its file name.

The kernel never sees a module's file name (``init_module()`` takes a buffer, ``finit_module()``
a file descriptor). Its name is the ``name`` field of the ``struct module`` that modpost's
``.mod.c`` puts in ``.gnu.linkonce.this_module`` (``.name = KBUILD_MODNAME``): kernel/module/main.c
lays the module out around that struct, and every later use reads ``mod->name`` -- lsmod,
``/sys/module/NAME``, kallsyms, and so ftrace's ``func [NAME]`` in ``available_filter_functions``
and its ``:mod:NAME`` commands (kernel/trace/ftrace.c ``lookup_ip()`` -> ``kallsyms_lookup()``).

modpost also writes ``name=KBUILD_MODNAME`` into ``.modinfo``; the loader reads it first
(``setup_load_info()``: "Try to find a name early so we can log errors with a module name",
falling back to the struct's) for its messages and the blacklist. It is only this tool's
fallback: a module with no ``.gnu.linkonce.this_module`` is refused by the loader (6.1 to 7.2),
so it has no name ftrace shows, but its messages would call it that.
"""

from __future__ import annotations

import re
from typing import Final

from rewriter.elf import structs as S
from rewriter.elf.image import Image, Kind

THIS_MODULE: Final = ".gnu.linkonce.this_module"

NAME_OFFSET: Final = 24
"""Where ``name`` sits in a 64-bit ``struct module`` (include/linux/module.h, unchanged from 6.1
to 7.2): after ``enum module_state state`` (4 bytes, padded to 8) and ``struct list_head list``
(two pointers)."""

NAME_LEN: Final = 56
"""``MODULE_NAME_LEN``: ``64 - sizeof(unsigned long)`` (include/linux/moduleparam.h)."""

_MODINFO_NAME = re.compile(rb"(?:^|\0)name=([^\0]*)")


def module_name(image: Image) -> str | None:
    """The name the kernel gives the module ``image`` (``struct module``'s, else ``.modinfo``'s
    ``name=``); ``""`` for a module that says neither (the loader refuses it); None for anything
    that is not a module (a vmlinux, an object file)."""
    if image.kind is not Kind.MODULE:
        return None
    name = _struct_name(image)
    return name if name is not None else _modinfo_name(image) or ""


def _struct_name(image: Image) -> str | None:
    """``name`` of the ``struct module`` in the first allocated ``.gnu.linkonce.this_module`` (the
    section the loader finds: ``find_sec()``); None without one holding the field."""
    sec = image.first_alloc_section(THIS_MODULE)
    if sec is None or sec.type == S.SHT_NOBITS or sec.size < NAME_OFFSET + NAME_LEN:
        return None
    field = image.section_bytes(sec)[NAME_OFFSET : NAME_OFFSET + NAME_LEN]
    return _text(field.split(b"\0", 1)[0])


def _modinfo_name(image: Image) -> str | None:
    sec = image.section(".modinfo")
    if sec is None or sec.type == S.SHT_NOBITS:
        return None
    found = _MODINFO_NAME.search(image.section_bytes(sec))
    return None if found is None else _text(found[1])


def _text(name: bytes) -> str:
    """A name's bytes as text: KBUILD_MODNAME is ASCII; other bytes are shown escaped, not lost."""
    return name.decode("utf-8", "backslashreplace")
