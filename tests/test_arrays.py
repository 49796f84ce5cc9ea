"""rewriter.arrays: the set operations agree with numpy's own on any column."""

from __future__ import annotations

import numpy as np
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays as columns

from rewriter import arrays

DTYPES = st.sampled_from([np.dtype(np.uint64), np.dtype(np.int64), np.dtype(np.uint32)])


@st.composite
def two_columns(draw: st.DrawFn) -> tuple[np.ndarray, np.ndarray]:
    """Values and test values of one type, drawn from a small range so that they meet often."""
    dtype = draw(DTYPES)
    small = st.integers(0, 40) if draw(st.booleans()) else st.integers(0, 2**31)
    values = draw(columns(dtype, st.integers(0, 60), elements=small))
    test = draw(columns(dtype, st.integers(0, 30), elements=small))
    return values, test


@given(two_columns())
def test_member_is_isin(pair: tuple[np.ndarray, np.ndarray]) -> None:
    values, test = pair
    got = arrays.member(values, test)
    assert got.dtype == bool and got.shape == values.shape
    assert np.array_equal(got, np.isin(values, test))
    assert np.array_equal(arrays.member(values, test.tolist()), np.isin(values, test))


def test_member_at_the_edges_of_its_two_ways() -> None:
    """Eight test values are compared one by one, nine are searched; the largest and values past
    it, the empty column and the extremes of the type."""
    top = np.iinfo(np.uint64).max
    values = np.array([0, 1, 7, 8, 9, 100, top - 1, top], np.uint64)
    for test in ([], [8], list(range(1, 9)), list(range(1, 10)), [top], [0, top, 9, 9, 9, 9, 9, 9, 9]):
        want = np.isin(values, np.array(test, np.uint64))
        assert np.array_equal(arrays.member(values, test), want), test
    assert arrays.member(np.zeros(0, np.uint64), [1, 2]).shape == (0,)


def test_member_leaves_mixed_types_to_numpy() -> None:
    """An int64 test column against uint64 values: numpy's own promotion, not a cast."""
    values = np.array([1, 2, 3], np.uint64)
    test = np.array([-1, 2], np.int64)
    assert arrays.member(values, test).tolist() == np.isin(values, test).tolist() == [False, True, False]


@given(columns(np.uint64, st.integers(0, 80), elements=st.integers(0, 20)))
def test_distinct_and_repeated(values: np.ndarray) -> None:
    assert np.array_equal(arrays.distinct(values), np.unique(values))
    uniq, counts = np.unique(values, return_counts=True)
    assert np.array_equal(arrays.repeated(values), uniq[counts > 1])


@given(st.integers(0, 40).flatmap(lambda n: st.tuples(st.just(n), st.lists(st.integers(0, max(n - 1, 0)), max_size=n))))
def test_without_is_delete(case: tuple[int, list[int]]) -> None:
    n, indexes = case
    if not n:
        indexes = []
    rows = np.arange(n * 3, dtype=np.uint8).reshape(n, 3)
    want = np.delete(rows, indexes, axis=0)
    assert np.array_equal(arrays.without(rows, indexes), want)
    assert np.array_equal(arrays.without(rows, np.array(indexes, np.int64)), want)
