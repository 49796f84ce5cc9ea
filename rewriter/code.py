"""The code view: an image's executable words, laid out once and shared by the scan and the walk.

Every ``SHT_PROGBITS`` executable section, in place order, as one flat ``uint32`` array (native
order), so that word number ``i`` is a plain index for numpy and for the walk, and a place (a
virtual address in linked images, a ``rel_place`` number in ET_REL files, see
``rewriter.elf.symbols``) maps to a word number and back. The scan also needs every relative
``bl`` and its target: they are found here, once, with the words.

Build it with :func:`code_view`; ``rewriter.audit`` builds one per image and hands it to both
``rewriter.sites.scan`` and ``rewriter.flow.load_code``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

import numpy as np

from rewriter import ppc
from rewriter.elf import structs as S
from rewriter.elf.image import Image, Section
from rewriter.elf.symbols import rel_place

OUTSIDE: Final = -1
"""The word number of a place that no executable section holds."""


@dataclass(frozen=True, slots=True)
class CodeView:
    """Section k starts at place ``base[k]``, is word ``first[k]`` of ``words`` and ``sizes[k]``
    words long (sections sorted by place). ``bl_places``/``bl_targets``: every relative ``bl``
    and where its offset goes, in linked images only (empty in ET_REL, where that target means
    nothing: relocations say where a call goes)."""

    sections: tuple[Section, ...]
    base: np.ndarray  # uint64
    first: np.ndarray  # int64
    sizes: np.ndarray  # int64
    words: np.ndarray  # uint32
    bl_places: np.ndarray  # uint64
    bl_targets: np.ndarray  # uint64

    @classmethod
    def of_words(cls, bases: Sequence[int], words: Sequence[np.ndarray], sections: Sequence[Section] = ()) -> CodeView:
        """The view of sections that start at ``bases`` (ascending) and hold ``words``."""
        flat = np.concatenate([np.asarray(w, np.uint32) for w in words]) if words else np.zeros(0, np.uint32)
        return _view(tuple(sections), np.array(bases, np.uint64), np.array([len(w) for w in words], np.int64), flat)

    def index(self, places: np.ndarray) -> np.ndarray:
        """Word number of each place (``int64``), or :data:`OUTSIDE`."""
        places = np.asarray(places, np.uint64)
        if not len(self.base):
            return np.full(len(places), OUTSIDE, np.int64)
        k, word, ok = self._find(places)
        return np.where(ok, self.first[k] + word, OUTSIDE)

    def _find(self, places: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(section slot, word within it, whether the place is a word of that section) per place,
        for a view with sections. A handful of numpy calls: a module's scan makes a few of these
        look-ups, each of them once a cost fixed per call, not per place."""
        k = np.searchsorted(self.base, places, side="right") - 1
        # base[k] <= place where k >= 0: the unsigned difference is the distance, read as int64 so
        # that no comparison mixes signed and unsigned (numpy 1 compares those as floats).
        rel = (places - self.base[k]).view(np.int64)
        ok = (k >= 0) & (rel >= 0) & (rel < self.sizes[k] * ppc.INSN_SIZE) & (rel % ppc.INSN_SIZE == 0)
        return k, rel // ppc.INSN_SIZE, ok

    def place(self, i: int) -> int:
        """The place of word ``i``."""
        k = int(np.searchsorted(self.first, i, side="right")) - 1
        return int(self.base[k]) + ppc.INSN_SIZE * (i - int(self.first[k]))

    def places(self, idx: np.ndarray) -> np.ndarray:
        """The place of each word number (``uint64``)."""
        return _places(self.base, self.first, idx)

    def locate(self, places: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(section slot in ``sections`` or -1, word number within that section, 0 where none)."""
        places = np.asarray(places, np.uint64)
        if not len(self.base):
            return np.full(len(places), -1, np.int64), np.zeros(len(places), np.int64)
        k, word, ok = self._find(places)
        return np.where(ok, k, -1), np.where(ok, word, 0)

    def words_at(self, k: np.ndarray, i: np.ndarray) -> np.ndarray:
        """Word ``i`` of section slot ``k`` (0 where ``k`` is -1 or ``i`` is out of the section)."""
        if not len(self.first):
            return np.zeros(len(k), np.uint32)
        kk = np.maximum(k, 0)
        ok = (k >= 0) & (i >= 0) & (i < self.sizes[kk])
        at = np.where(ok, self.first[kk] + i, 0)
        return np.where(ok, self.words[at] if len(self.words) else 0, 0).astype(np.uint32)

    def words_of(self, places: np.ndarray) -> np.ndarray:
        """The word at each place (0 where no executable section holds it)."""
        i = self.index(places)
        if not len(self.words):
            return np.zeros(len(i), np.uint32)
        return np.where(i >= 0, self.words[np.maximum(i, 0)], 0).astype(np.uint32)


def _places(base: np.ndarray, first: np.ndarray, idx: np.ndarray) -> np.ndarray:
    if not len(idx):
        return np.zeros(0, np.uint64)
    k = np.searchsorted(first, idx, side="right") - 1
    return np.asarray(base[k] + (idx - first[k]).astype(np.uint64) * np.uint64(ppc.INSN_SIZE), np.uint64)


def _view(
    sections: tuple[Section, ...], base: np.ndarray, sizes: np.ndarray, flat: np.ndarray, linked: bool = True
) -> CodeView:
    # where each section's words start (empty without sections: [0] there made words_at index an
    # empty `sizes`, an IndexError that tests/test_fuzz.py found on main)
    first = (np.cumsum(sizes) - sizes).astype(np.int64)
    bl_places, bl_targets = [np.zeros(0, np.uint64)], [np.zeros(0, np.uint64)]
    # Only linked images call through `bl` targets; in a module this pass was a tenth of the scan.
    for k in range(len(sizes) if linked else 0):  # per section: a place is then a multiply-add, no search
        words = flat[int(first[k]) : int(first[k] + sizes[k])]
        idx = np.flatnonzero(ppc.bl_mask(words)).astype(np.uint64)
        bl_places.append(base[k] + idx * np.uint64(ppc.INSN_SIZE))
        bl_targets.append(ppc.branch_targets(bl_places[-1], words[idx.astype(np.int64)]))
    return CodeView(sections, base, first, sizes, flat, np.concatenate(bl_places), np.concatenate(bl_targets))


def code_view(image: Image) -> CodeView:
    """The view of ``image``'s executable sections (relocatable files: by section index, which is
    their place order). The words are converted from the file straight into the flat array (what
    ``Image.words`` does per section, without a second copy to join them)."""
    found = image.exec_sections()  # SHT_PROGBITS only
    linked = image.type != S.ET_REL
    if linked:
        places = np.array([s.addr for s in found], np.uint64)
    else:
        places = rel_place(np.array([s.shndx for s in found], np.uint64), 0)
    order = np.argsort(places, kind="stable")
    sections = tuple(found[i] for i in order.tolist())
    counts = [s.size // ppc.INSN_SIZE for s in sections]
    flat = np.empty(sum(counts), np.uint32)
    at = 0
    dtype = S.word_dtype(image.endian)
    for sec, n in zip(sections, counts, strict=True):
        flat[at : at + n] = np.frombuffer(image.data, dtype, count=n, offset=sec.offset)
        at += n
    return _view(sections, places[order], np.array(counts, np.int64), flat, linked)
