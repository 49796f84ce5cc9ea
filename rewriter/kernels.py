"""Which vmlinux of a run loads each module given with it.

A module is loaded by the kernel whose ``linux_banner`` names the release its ``vermagic`` names
(``rewriter.elf.release``): the loader refuses any other, or with CONFIG_MODVERSIONS one whose
imported CRCs all agree. A run may name several kernels, Debian's 4k- and 64k-page builds of one
version with their two trees: each module is held to its own kernel's ftrace_process_locs() loop
(``rewriter.locs``), and a module that no kernel of the run loads is refused by ``prenop`` and
warned of by ``policy check``. A run with one kernel says it as before: that kernel, or none.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from rewriter.locs import Locs
from rewriter.prose import listed


@dataclass(frozen=True)
class Kernel:
    path: Path | None  # None: a caller that names no file (policy check's tally counts sites, not files)
    release: str | None  # what its linux_banner names; None: it names none (stripped, or no banner)
    locs: Locs  # the loop it holds its modules' records to (``rewriter.locs.loop_for_modules``)


@dataclass(frozen=True)
class Kernels:
    """The vmlinux images of a run, in the order given."""

    known: tuple[Kernel, ...] = ()

    def loader(self, release: str | None) -> Kernel | None:
        """The kernel of the run that loads a module whose vermagic names ``release``: the one that
        names it; else the first that names no release (it may be that one), and for a module that
        names none, the first. None: no kernel in the run, or each names another release."""
        if not self.known:
            return None
        if release is None:
            return self.known[0]
        for k in self.known:
            if k.release == release:
                return k
        return next((k for k in self.known if k.release is None), None)

    def refuse(self, release: str | None) -> bool:
        """No kernel of the run loads a module built for ``release`` (:meth:`loader`)."""
        return bool(self.known) and self.loader(release) is None

    def locs_for(self, release: str | None) -> Locs:
        """The loop a module built for ``release`` is held to: its loader's, unknown without one."""
        k = self.loader(release)
        return Locs.UNKNOWN if k is None else k.locs

    def releases(self) -> str:
        """What the run's kernels name, for an error: ``Linux R``, or ``Linux R1 and Linux R2``."""
        return listed([f"Linux {k.release}" for k in self.known if k.release is not None])
