"""Set operations on the integer columns the scan and the rewrite work with (places, offsets,
symbol indexes), cheap on the small arrays of one module as well as on a vmlinux's.

numpy's own set routines pay a fixed cost whatever the size: ``np.isin`` sorts or hashes both
sides even to test for one value (~18 us), ``np.unique`` checks its arguments (~25 us), and
``np.delete`` normalises its index argument in Python (~10 us). A 6.1 module tree's prenop called
them some 60,000 times, on a few dozen values each time. And the first ``np.unique`` of a process
(``np.union1d`` too) imports ``numpy.ma`` to ask whether its argument is masked: 6 to 14 ms of
every nop and undo of a vmlinux, which :func:`distinct` spares them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

import numpy as np

# Up to this many test values, one comparison each beats a sort and a binary search.
_FEW: Final = 8


def member(values: np.ndarray, of: np.ndarray | Sequence[int]) -> np.ndarray:
    """``np.isin(values, of)`` for 1-D columns: which of ``values`` is one of ``of``. A list
    ``of`` is taken in ``values``' type; an array of another type goes to ``np.isin`` itself,
    which promotes mixed types its own way."""
    test = of if isinstance(of, np.ndarray) else np.array(of, dtype=values.dtype)
    if test.dtype != values.dtype or values.ndim != 1 or test.ndim != 1:
        return np.isin(values, test)
    if not len(test) or not len(values):
        return np.zeros(len(values), bool)
    if len(test) <= _FEW:
        out: np.ndarray = values == test[0]
        for value in test[1:]:
            out |= values == value
        return out
    ordered = np.sort(test)
    at = np.searchsorted(ordered, values)
    np.minimum(at, len(ordered) - 1, out=at)  # past the largest: compared with it, and unequal
    hit: np.ndarray = ordered[at] == values
    return hit


def distinct(values: np.ndarray) -> np.ndarray:
    """``np.unique(values)`` for a 1-D column, in a few calls."""
    ordered = np.sort(values)
    first = np.ones(len(ordered), bool)
    first[1:] = ordered[1:] != ordered[:-1]
    out: np.ndarray = ordered[first]
    return out


def repeated(values: np.ndarray) -> np.ndarray:
    """The values that occur more than once, each once, sorted (as :func:`distinct`)."""
    ordered = np.sort(values)
    same = ordered[1:] == ordered[:-1]
    # the second of each run of equal values: equal to the one before, which is not a repeat
    second = same.copy()
    second[1:] &= ~same[:-1]
    out: np.ndarray = ordered[1:][second]
    return out


def without(rows: np.ndarray, indexes: np.ndarray | Sequence[int]) -> np.ndarray:
    """``np.delete(rows, indexes, axis=0)`` for indexes in range: ``rows`` (a copy) with those
    rows taken out, the others in order."""
    keep = np.ones(len(rows), bool)
    keep[indexes] = False
    out: np.ndarray = rows[keep]
    return out


def shift(places: np.ndarray, delta: int) -> np.ndarray:
    """``places + delta`` for a signed ``delta``, in uint64 (wrapping like the hardware)."""
    return places.astype(np.uint64) + np.uint64(delta % (1 << 64))
