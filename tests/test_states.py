"""The transition table agrees with the slot contents, and variants restrict it for a reason."""

from __future__ import annotations

import pytest

from rewriter.errors import PlanRejected
from tests_compat import SLOTS, STATE_SLOTS, VARIANT_STATES, Variant, state_of, step_for, steps_from
from rewriter.states import TRANSITIONS, Insn, SiteState, Slot


def _one_word_writes() -> dict[tuple[SiteState, SiteState], tuple[Slot, Insn, Insn]]:
    """Every pair of classified states whose slots differ in exactly one word, derived from STATE_SLOTS."""
    out = {}
    for src, (a0, b0) in STATE_SLOTS.items():
        for dst, (a1, b1) in STATE_SLOTS.items():
            if (a0 != a1) + (b0 != b1) == 1:
                out[(src, dst)] = (Slot.A, a0, a1) if a0 != a1 else (Slot.B, b0, b1)
    return out


def test_every_row_is_the_one_word_that_differs_between_its_states():
    writes = _one_word_writes()
    for key, step in TRANSITIONS.items():
        assert writes[key] == (step.slot, step.old, step.new), key


def test_table_holds_every_one_word_write_except_those_into_broken():
    expected = {k for k in _one_word_writes() if k[1] is not SiteState.BROKEN}
    assert set(TRANSITIONS) == expected


def test_only_writes_that_make_b_a_bl_need_a_barrier():
    for (src, dst), step in TRANSITIONS.items():
        assert step.needs_barrier_before == (step.slot is Slot.B and step.new is Insn.CALL), (src, dst)


def test_mflr_write_flag_marks_exactly_the_writes_touching_mflr():
    for step in TRANSITIONS.values():
        assert step.mflr_write == (step.slot is Slot.A and Insn.MFLR in (step.old, step.new))


def test_no_row_leads_into_broken():
    assert all(dst is not SiteState.BROKEN for _, dst in TRANSITIONS)
    assert state_of(Insn.NOP, Insn.CALL) is SiteState.BROKEN


def test_only_gcc5_has_no_b8_states():
    """b +8 at ip-8 lands on gcc 5's bl; in mprofile and patchable (A at ip-4) it lands past B."""
    assert SiteState.GUARDED not in VARIANT_STATES[Variant.MPROFILE_STD]
    assert SiteState.ARMED not in VARIANT_STATES[Variant.MPROFILE_STD]
    for variant in (Variant.MPROFILE, Variant.PATCHABLE):
        assert {SiteState.GUARDED, SiteState.ARMED} <= VARIANT_STATES[variant]


def test_b8_in_the_gcc5_mflr_slot_would_land_on_the_bl():
    slots = SLOTS[Variant.MPROFILE_STD]
    assert slots.index(Slot.A) + 2 == slots.index(Slot.B)
    assert slots.index(Slot.A) + 2 == len(SLOTS[Variant.MPROFILE])  # two-slot: past B


def test_step_for_refuses_broken_as_target_with_reason():
    with pytest.raises(PlanRejected, match="not holding LR"):
        step_for(Variant.MPROFILE, SiteState.DISABLED, SiteState.BROKEN)


def test_step_for_refuses_two_word_changes():
    with pytest.raises(PlanRejected, match="one aligned 4-byte write"):
        step_for(Variant.MPROFILE, SiteState.NOPPED, SiteState.ENABLED)


def test_step_for_explains_why_gcc5_has_no_guarded_state():
    with pytest.raises(PlanRejected, match="lands on the bl"):
        step_for(Variant.MPROFILE_STD, SiteState.NOPPED, SiteState.GUARDED)


def test_step_for_refuses_unknown():
    with pytest.raises(PlanRejected, match="unknown"):
        step_for(Variant.MPROFILE, SiteState.UNKNOWN, SiteState.NOPPED)


def test_steps_from_respects_the_variant():
    assert set(steps_from(Variant.MPROFILE, SiteState.NOPPED)) == {SiteState.DISABLED, SiteState.GUARDED}
    assert set(steps_from(Variant.PATCHABLE, SiteState.NOPPED)) == {SiteState.DISABLED, SiteState.GUARDED}
    assert set(steps_from(Variant.MPROFILE_STD, SiteState.NOPPED)) == {SiteState.DISABLED}
    assert set(steps_from(Variant.MPROFILE_STD, SiteState.BROKEN)) == {SiteState.ENABLED, SiteState.NOPPED}
