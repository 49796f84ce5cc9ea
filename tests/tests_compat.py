"""Names the state-machine tests were written against, read off the generation table."""

from __future__ import annotations

from rewriter.generations import LAYOUTS, TWO_SLOT_STATES, Variant, state_rejection, step_for, steps_from
from rewriter.states import Insn, SiteState

SLOTS = {v: lay.slots for v, lay in LAYOUTS.items()}
STATE_SLOTS = TWO_SLOT_STATES
VARIANT_STATES = {v: frozenset(lay.states) for v, lay in LAYOUTS.items()}


def state_of(a: Insn, b: Insn) -> SiteState:
    return LAYOUTS[Variant.MPROFILE].state_of((a, b))


__all__ = ["SLOTS", "STATE_SLOTS", "VARIANT_STATES", "Variant", "state_of", "state_rejection", "step_for", "steps_from"]
