"""Compare the sites of two images (two kernel builds, or one image before and after a rewrite).

Sites are matched by function name, not by address: between two builds nearly every address
moves. Within a function, sites pair up in address order (a function has one site, but names
repeat: vmlinux holds dozens of static functions called ``init_once``, so the n-th site of a name
in A pairs with the n-th in B). A site whose offset from its function's start changed has *moved*;
one whose function merely sits elsewhere is only counted as *relocated*. Two trees are compared
file by file, paired by their path below the tree's root.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np

from rewriter.elf.image import Image
from rewriter.errors import RewriteError
from rewriter.sites import Scan, Site, scan


class Change(enum.Enum):
    ADDED = "added"
    REMOVED = "removed"
    MOVED = "moved"
    STATE = "state"
    VARIANT = "variant"
    RECORD_ADDED = "record-added"
    RECORD_REMOVED = "record-removed"


class SiteChange(NamedTuple):
    change: Change
    function: str | None
    before: Site | None
    after: Site | None
    detail: str


@dataclass(frozen=True, slots=True)
class ImageDiff:
    a: Path
    b: Path
    changes: tuple[SiteChange, ...]
    unchanged: int  # sites paired with no change
    relocated: int  # of those, sites whose function moved as a whole
    records: tuple[int, int]  # record count in A and in B


@dataclass(frozen=True, slots=True)
class Diff:
    images: tuple[ImageDiff, ...]
    only_a: tuple[Path, ...]  # trees: files with no counterpart
    only_b: tuple[Path, ...]
    errors: tuple[str, ...]

    @property
    def changed(self) -> bool:
        return bool(self.only_a or self.only_b or any(d.changes for d in self.images))


class _Keyed(NamedTuple):
    site: Site
    delta: int  # offset of the call slot from its function's start (-1: no function)


def _keyed(image: Image, result: Scan) -> dict[tuple[str, int], _Keyed]:
    """Sites keyed by (function name, n-th site of that name in address order); unnamed sites by
    their place, which is all that identifies them."""
    funcs = result.functions
    places = np.array([s.place for s in result.sites], np.uint64)
    fi = funcs.containing(places) if len(places) and len(funcs) else np.full(len(places), -1, np.int64)
    seen: dict[str, int] = {}
    out = {}
    for site, place, f in sorted(zip(result.sites, places.tolist(), fi.tolist(), strict=True), key=lambda t: t[1]):
        delta = place - int(funcs.start[f]) if f >= 0 else -1
        if site.function is None:
            out[(f"@{site.place_text}", 0)] = _Keyed(site, delta)
            continue
        n = seen.get(site.function, 0)
        seen[site.function] = n + 1
        out[(site.function, n)] = _Keyed(site, delta)
    return out


def _pair(before: _Keyed, after: _Keyed) -> list[SiteChange]:
    a, b = before.site, after.site
    fn = a.function
    out = []
    if before.delta != after.delta:
        out.append(SiteChange(Change.MOVED, fn, a, b, f"{fn}+{before.delta:#x} -> {fn}+{after.delta:#x}"))
    if a.state is not b.state:
        out.append(SiteChange(Change.STATE, fn, a, b, f"{a.state.value} -> {b.state.value}"))
    if a.variant is not b.variant:
        out.append(SiteChange(Change.VARIANT, fn, a, b, f"{a.variant.value} -> {b.variant.value}"))
    if a.recorded != b.recorded:
        change = Change.RECORD_ADDED if b.recorded else Change.RECORD_REMOVED
        out.append(SiteChange(change, fn, a, b, "recorded" if b.recorded else "no longer recorded"))
    return out


def diff_scans(image_a: Image, scan_a: Scan, image_b: Image, scan_b: Scan) -> ImageDiff:
    ka, kb = _keyed(image_a, scan_a), _keyed(image_b, scan_b)
    changes: list[SiteChange] = []
    unchanged = relocated = 0
    for key in sorted(ka.keys() | kb.keys()):
        before, after = ka.get(key), kb.get(key)
        if after is None and before is not None:
            s = before.site
            changes.append(SiteChange(Change.REMOVED, s.function, s, None, f"{s.state.value} site at {s.place_text}"))
        elif before is None and after is not None:
            s = after.site
            changes.append(SiteChange(Change.ADDED, s.function, None, s, f"{s.state.value} site at {s.place_text}"))
        elif before is not None and after is not None:
            found = _pair(before, after)
            changes += found
            if not found:
                unchanged += 1
                relocated += before.site.place != after.site.place
    return ImageDiff(
        scan_a.path, scan_b.path, tuple(changes), unchanged, relocated, (scan_a.records.count, scan_b.records.count)
    )


def diff_files(a: Path, b: Path) -> ImageDiff:
    image_a, image_b = Image.load(a), Image.load(b)
    return diff_scans(image_a, scan(image_a), image_b, scan(image_b))


def _relative(files: Sequence[Path], root: Path) -> dict[Path, Path]:
    return {p.relative_to(root): p for p in files}


def diff_paths(a: Path, b: Path, files_a: Sequence[Path], files_b: Sequence[Path]) -> Diff:
    """Two files, or two trees (``files_*`` found below ``a`` and ``b``) paired by relative path."""
    if not a.is_dir() and not b.is_dir():
        return Diff((diff_files(a, b),), (), (), ())
    ra, rb = _relative(files_a, a), _relative(files_b, b)
    images, errors = [], []
    for rel in sorted(ra.keys() & rb.keys()):
        try:
            images.append(diff_files(ra[rel], rb[rel]))
        except RewriteError as e:
            errors.append(str(e))
    only_a = tuple(ra[r] for r in sorted(ra.keys() - rb.keys()))
    only_b = tuple(rb[r] for r in sorted(rb.keys() - ra.keys()))
    return Diff(tuple(images), only_a, only_b, tuple(errors))
