"""The transition tables agree with the slot contents, and each layout restricts them for a reason."""

from __future__ import annotations

import pytest

from rewriter import ppc
from rewriter.errors import PlanRejected
from rewriter.generations import (
    LAYOUTS,
    OOL_STATES,
    TWO_SLOT_STATES,
    Generation,
    Variant,
    default_variant,
    state_rejection,
    step_for,
    steps_from,
)
from rewriter.states import OOL_TRANSITIONS, TRANSITIONS, Insn, SiteState, Slot, Step

M, STD, PATCH, OOL = Variant.MPROFILE, Variant.MPROFILE_STD, Variant.PATCHABLE, Variant.OOL


def _one_word_writes(
    states: dict[SiteState, tuple[Insn, ...]], slots: tuple[Slot, ...]
) -> dict[tuple[SiteState, SiteState], tuple[Slot, Insn, Insn]]:
    """Every pair of states whose slots differ in exactly one word, derived from the state words."""
    out = {}
    for src, before in states.items():
        for dst, after in states.items():
            diff = [(s, x, y) for s, x, y in zip(slots, before, after, strict=True) if x is not y]
            if len(diff) == 1:
                out[(src, dst)] = diff[0]
    return out


def _state_of(a: Insn, b: Insn) -> SiteState:
    return LAYOUTS[M].state_of((a, b))


def test_every_row_is_the_one_word_that_differs_between_its_states():
    writes = _one_word_writes(dict(TWO_SLOT_STATES), (Slot.A, Slot.B))
    for key, step in TRANSITIONS.items():
        assert writes[key] == (step.slot, step.old, step.new), key


def test_table_holds_every_one_word_write_except_those_into_broken():
    expected = {k for k in _one_word_writes(dict(TWO_SLOT_STATES), (Slot.A, Slot.B)) if k[1] is not SiteState.BROKEN}
    assert set(TRANSITIONS) == expected


def test_ool_table_is_the_entry_word_both_ways():
    writes = _one_word_writes(dict(OOL_STATES), (Slot.B,))
    assert {k: (s.slot, s.old, s.new) for k, s in OOL_TRANSITIONS.items()} == writes
    assert set(writes) == {(SiteState.DISABLED, SiteState.ENABLED), (SiteState.ENABLED, SiteState.DISABLED)}


def test_only_writes_that_make_b_a_bl_need_a_barrier():
    for (src, dst), step in TRANSITIONS.items():
        assert step.needs_barrier_before == (step.slot is Slot.B and step.new is Insn.CALL), (src, dst)


def test_ool_writes_need_no_barrier_and_never_touch_mflr():
    """The stub's mflr runs right before its bl and is never written by a plan."""
    assert all(s == Step(Slot.B, s.old, s.new, False, False) for s in OOL_TRANSITIONS.values())
    assert LAYOUTS[OOL].stub[:2] == (Insn.MFLR, Insn.CALL)
    assert not LAYOUTS[OOL].mflr_in_site
    assert all(LAYOUTS[v].mflr_in_site for v in (M, STD, PATCH))


def test_mflr_write_flag_marks_exactly_the_writes_touching_mflr():
    for step in (*TRANSITIONS.values(), *OOL_TRANSITIONS.values()):
        assert step.mflr_write == (step.slot is Slot.A and Insn.MFLR in (step.old, step.new))


def test_no_row_leads_into_broken():
    assert all(dst is not SiteState.BROKEN for _, dst in TRANSITIONS)
    assert _state_of(Insn.NOP, Insn.CALL) is SiteState.BROKEN
    assert LAYOUTS[PATCH].words(SiteState.BROKEN) == (Insn.NOP, Insn.CALL)
    with pytest.raises(KeyError):
        LAYOUTS[OOL].words(SiteState.BROKEN)


def test_only_gcc5_has_no_b8_states():
    """b +8 at ip-8 lands on gcc 5's bl; in mprofile and patchable (A at ip-4) it lands past B."""
    assert SiteState.GUARDED not in LAYOUTS[STD].states
    assert SiteState.ARMED not in LAYOUTS[STD].states
    for variant in (M, PATCH):
        assert {SiteState.GUARDED, SiteState.ARMED} <= set(LAYOUTS[variant].states)


@pytest.mark.parametrize("variant", [M, STD, PATCH])
def test_b8_in_slot_a_lands_where_the_offsets_say(variant):
    """b .+8 in A guards B only if it lands past B; the offsets decide, not the slot count."""
    lay = LAYOUTS[variant]
    a, b = lay.offset(Slot.A), lay.offset(Slot.B)
    assert a is not None and b is not None
    lands = a + ppc.branch_offset(ppc.B_PLUS_8)
    guards = lands > b
    assert guards == (SiteState.GUARDED in lay.states), variant
    assert guards is (variant is not STD)
    assert (lands == b) is (variant is STD)


def test_step_for_refuses_broken_as_target_with_reason():
    with pytest.raises(PlanRejected, match="not holding LR"):
        step_for(M, SiteState.DISABLED, SiteState.BROKEN)


def test_step_for_refuses_two_word_changes():
    with pytest.raises(PlanRejected, match="one aligned 4-byte write"):
        step_for(M, SiteState.NOPPED, SiteState.ENABLED)


def test_step_for_explains_why_gcc5_has_no_guarded_state():
    with pytest.raises(PlanRejected, match="lands on the bl"):
        step_for(STD, SiteState.NOPPED, SiteState.GUARDED)


def test_step_for_refuses_unknown():
    with pytest.raises(PlanRejected, match="unknown"):
        step_for(M, SiteState.UNKNOWN, SiteState.NOPPED)


@pytest.mark.parametrize("state", [SiteState.NOPPED, SiteState.GUARDED, SiteState.ARMED, SiteState.BROKEN])
def test_ool_has_only_enabled_and_disabled_and_says_why(state):
    reason = state_rejection(OOL, state)
    assert reason is not None and "not a state of an ool site" in reason


def test_steps_from_respects_the_variant():
    assert set(steps_from(M, SiteState.NOPPED)) == {SiteState.DISABLED, SiteState.GUARDED}
    assert set(steps_from(PATCH, SiteState.NOPPED)) == {SiteState.DISABLED, SiteState.GUARDED}
    assert set(steps_from(STD, SiteState.NOPPED)) == {SiteState.DISABLED}
    assert set(steps_from(STD, SiteState.BROKEN)) == {SiteState.ENABLED, SiteState.NOPPED}
    assert set(steps_from(OOL, SiteState.DISABLED)) == {SiteState.ENABLED}
    assert steps_from(OOL, SiteState.NOPPED) == {}


def test_enabled_means_traced_and_disabled_not_in_every_generation():
    """The state names keep their run-time meaning: enabled calls the tracer, disabled does not."""
    for generation in Generation:
        lay = LAYOUTS[default_variant(generation)]
        traced = {Insn.CALL, Insn.STUB}
        assert traced & set(lay.words(SiteState.ENABLED)), generation
        assert not traced & set(lay.words(SiteState.DISABLED)), generation
        assert lay.booted is SiteState.DISABLED
