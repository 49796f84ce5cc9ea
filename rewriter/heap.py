"""The cyclic garbage collector, paused around the steps that make most of a run's objects.

A vmlinux rewrite makes about two million small objects that live until it returns (33,689 sites,
101,000 edits, their log lines; parsing the log back makes as many), and none of them is part of
a reference cycle. CPython's collector runs every 700 allocations and, ever more often as the heap
grows, walks every live object: on the 6.1 vmlinux that was 0.6 s of a 3 s ``nop`` and a third of
an ``undo``. Pausing it for the length of such a step frees nothing later than it would have
been: what the step made is still referenced when it returns, and the collector runs again from
then on (a cycle made meanwhile is collected then).
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator

_freeze_after = False


def freeze_after_pauses() -> None:
    """From now on, what exists when the outermost pause ends is frozen (``gc.freeze``): the
    collector never walks it again. For a process that ends soon after its work (the CLI): a
    vmlinux ``nop`` made two million objects during its pauses, and the first collection after
    them walked them all, 34 ms on the way out. Frozen objects are still freed when their last
    reference goes; only a reference cycle among them would outlive the process's need of it."""
    global _freeze_after
    _freeze_after = True


@contextlib.contextmanager
def collector_paused() -> Iterator[None]:
    """No cyclic garbage collection inside the ``with`` block (or the decorated function); the
    collector's state is restored after it, so pauses nest."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            if _freeze_after:
                gc.freeze()
            gc.enable()
