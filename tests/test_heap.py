"""The collector pauses of rewriter.heap: what a CLI run's pauses made is frozen, a library's not."""

from __future__ import annotations

import gc

import pytest

from rewriter import heap


def test_a_pause_in_a_cli_run_freezes_what_it_made(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(heap, "_freeze_after", False)
    heap.freeze_after_pauses()
    try:
        with heap.collector_paused():
            made = [[n] for n in range(1000)]
        assert gc.isenabled()
        assert gc.get_freeze_count() >= len(made)  # never walked again by the collector
    finally:
        gc.unfreeze()


def test_a_pause_elsewhere_freezes_nothing_and_nested_pauses_keep_the_collector_off(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(heap, "_freeze_after", False)
    before = gc.get_freeze_count()
    with heap.collector_paused():
        with heap.collector_paused():
            made = [[n] for n in range(1000)]
        assert not gc.isenabled()
    assert gc.isenabled()
    assert len(made) == 1000 and gc.get_freeze_count() == before
