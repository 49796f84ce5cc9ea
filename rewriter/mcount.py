"""The mprofile generation's calls to ``_mcount``, and the rules of ``--mcount-addr``.

An mprofile site is a ``bl`` to an *mcount entry*: ``_mcount`` itself (``._mcount`` and ELFv1
descriptors too), a linker stub one ``b`` away from it, or, in a stripped vmlinux, the address
``--mcount-addr`` gives (from System.map) or the one the recorded ``bl`` words call most. A linked
image's calls are found over its whole text at once; a relocatable file's are its
``R_PPC64_REL24`` relocations against ``_mcount``. Patchable and ool kernels call no ``_mcount``:
the option is refused for them, and for runs of modules alone, rather than ignored.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Final

import numpy as np

from rewriter import arrays, ppc
from rewriter.code import CodeView
from rewriter.elf import structs as S
from rewriter.elf.image import Image, relocatable_at_a_glance
from rewriter.elf.symbols import code_addrs, rel_place
from rewriter.errors import ArgumentError
from rewriter.generations import Generation

MCOUNT_NAMES: Final = ("_mcount", "._mcount")


def check_mcount_addr(generation: Generation | None, mcount_addr: int | None, path: Path | None = None) -> None:
    """Refuse ``--mcount-addr`` for an image of a generation that calls no ``_mcount`` (patchable,
    ool): there it selects nothing and means nothing, and a run that ignored it would let a user
    believe it mattered. The one home of the rule: the CLI asks it about an explicit
    ``--generation`` before anything is read (no ``path``), :func:`scan` about the generation it
    detected in a linked image (naming the file). A relocatable file is never asked: its calls
    come from its relocations, not from an address, and the option, one per run over a tree,
    names the stripped vmlinux's ``_mcount`` beside modules that have none of their own."""
    if mcount_addr is None or generation is None or generation is Generation.MPROFILE:
        return
    message = f"--mcount-addr names _mcount, which only the mprofile generation calls (not {generation.value})"
    raise ArgumentError(message if path is None else f"{path}: {message}")


_BY_RELOCATIONS: Final = "by their relocations (the option is for a stripped vmlinux)"
"""Why ``--mcount-addr`` means nothing for a module or an object: the end of both refusals."""


def check_mcount_addr_used(paths: Sequence[Path], mcount_addr: int | None) -> None:
    """Refuse ``--mcount-addr`` for a run of modules and objects alone (scan, audit, policy check
    over files or trees): it is for a stripped vmlinux beside them, and with none there it would be
    ignored in silence, as if it had mattered."""
    if mcount_addr is None or not paths or not all(map(relocatable_at_a_glance, paths)):
        return
    raise ArgumentError(
        f"--mcount-addr: every file given is a module or object, which find their calls to _mcount {_BY_RELOCATIONS}"
    )


def check_mcount_addr_alone(image: Image, mcount_addr: int | None) -> None:
    """Refuse ``--mcount-addr`` for a relocatable file rewritten on its own: :func:`check_mcount_addr`
    lets it pass a module because one option serves a whole run, but with one module named there is
    no linked image for it to mean anything in, and ignoring it would read as if it had mattered."""
    if mcount_addr is not None and image.type == S.ET_REL:
        raise ArgumentError(
            f"{image.path}: --mcount-addr has no meaning for a module or object: its calls to _mcount are found "
            + _BY_RELOCATIONS
        )


def mprofile_calls(image: Image, text: CodeView, mcount_addr: int | None) -> tuple[np.ndarray, np.ndarray]:
    """(mcount entries, call-slot places of the calls to them), in a linked image (a relocatable
    file's are its relocations: :func:`rel_call_places`)."""
    entries = _mcount_entries(image, text, mcount_addr)
    return entries, text.bl_places[arrays.member(text.bl_targets, entries)]


def _mcount_entries(image: Image, text: CodeView, mcount_addr: int | None) -> np.ndarray:
    found: list[int] = [] if mcount_addr is None else [mcount_addr]
    syms = image.symbols
    if syms is not None:
        named = code_addrs(image, MCOUNT_NAMES, local_entries=True)
        _check_mcount_addr_named(image, mcount_addr, named)
        found.extend(named)
        found.extend(_stub_symbols(image))
    entries = arrays.distinct(np.array(found, dtype=np.uint64))
    return arrays.distinct(np.concatenate([entries, _branch_stubs(text, entries)]))  # np.union1d, without numpy.ma


def check_mcount_addr_recorded(
    image: Image, text: CodeView, mcount_addr: int | None, calls: np.ndarray, records: np.ndarray
) -> None:
    """``--mcount-addr`` on a stripped image with records, where no recorded word calls it but the
    recorded ``bl`` words call another address: a mistyped address, which would make every record
    name no site and the report say ftrace breaks at boot. Refused, naming the address the records
    call, as :func:`_check_mcount_addr_named` refuses one the symbols contradict."""
    if mcount_addr is None or not len(records) or arrays.member(calls, records).any():
        return
    called = entries_from_records(text, records)
    if not len(called):  # the records name no bl at all: a broken image, for the report to say
        return
    raise image.error(
        f"--mcount-addr {mcount_addr:#x}: no recorded bl calls it; the recorded bl words call {int(called[0]):#x} "
        "(is that _mcount's address?)"
    )


def _check_mcount_addr_named(image: Image, mcount_addr: int | None, named: list[int]) -> None:
    """``--mcount-addr`` on an image whose symbols name ``_mcount``: the option is for a stripped
    image. The same address is harmless; another would make every ``bl`` to it a site (a
    mistyped address, or a function's), so it is refused rather than added or ignored."""
    if mcount_addr is None or not named or mcount_addr in named:
        return
    where = ", ".join(f"{a:#x}" for a in sorted(set(named)))
    raise image.error(
        f"--mcount-addr {mcount_addr:#x}: the image's symbols put _mcount at {where} "
        "(the option is for a stripped image)"
    )


def _stub_symbols(image: Image) -> list[int]:
    """Linker stubs named ``<id>.long_branch._mcount`` / ``<id>.plt_branch._mcount``."""
    syms = image.symbols
    assert syms is not None
    starts = []  # where each name holding a suffix starts in the string table
    for suffix in (b".long_branch._mcount\0", b".plt_branch._mcount\0"):
        pos = syms.strtab.find(suffix)
        while pos >= 0:
            starts.append(syms.strtab.rfind(b"\0", 0, pos) + 1)
            pos = syms.strtab.find(suffix, pos + 1)
    if not starts:
        return []
    # One look-up for them all: the whole symbol table compared once per name is quadratic in a
    # file with many such names (Debian's kernels have none; nothing bounds a crafted one's).
    named = arrays.member(syms.table["st_name"], np.array(starts, syms.table["st_name"].dtype))
    out: list[int] = syms.table["st_value"][named].tolist()
    return out


def _branch_stubs(text: CodeView, entries: np.ndarray) -> np.ndarray:
    """``bl`` targets that are a plain ``b`` to an mcount entry: linker long-branch stubs,
    found even in a stripped file."""
    if not len(entries):
        return entries
    targets = arrays.distinct(text.bl_targets)
    k, i = text.locate(targets)
    words = text.words_at(k, i)
    is_b = (k >= 0) & ppc.b_mask(words)
    hop = ppc.branch_targets(targets[is_b], words[is_b])
    stubs: np.ndarray = targets[is_b][arrays.member(hop, entries)]
    return stubs


def rel_call_places(image: Image) -> np.ndarray:
    syms = image.symbols
    if syms is None:
        return np.zeros(0, np.uint64)
    found = [hit for hit in map(syms.find, MCOUNT_NAMES) if len(hit)]
    if not found:  # patchable and ool modules call no _mcount: skip their relocations
        return np.zeros(0, np.uint64)
    mcount_syms = np.concatenate(found).astype(np.uint64)
    out = []
    for rsec in image.relocation_sections():
        target = image.section_at(rsec.info) if rsec.info else None
        if target is None or not target.is_exec:
            continue
        rela = image.relocations(rsec)
        hit = (S.r_type(rela["r_info"]) == S.R_PPC64_REL24) & arrays.member(S.r_sym(rela["r_info"]), mcount_syms)
        out.append(rel_place(target.shndx, rela["r_offset"][hit]))
    return np.concatenate(out) if out else np.zeros(0, np.uint64)


def entries_from_records(text: CodeView, records: np.ndarray) -> np.ndarray:
    """Stripped image: the mcount entry is whatever the recorded ``bl`` words call most."""
    hit = arrays.member(text.bl_places, records)
    if not hit.any():
        return np.zeros(0, np.uint64)
    values, counts = np.unique(text.bl_targets[hit], return_counts=True)
    return values[np.argmax(counts) : np.argmax(counts) + 1]
