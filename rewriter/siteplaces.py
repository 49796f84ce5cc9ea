"""Where a plan's sites are in one image, and the exact words each of its writes puts there.

A plan (:mod:`rewriter.plan`) is symbolic: a write names a site, a slot and two words by kind
(``nop -> bl``). A plan made for the sites of one vmlinux (``mcountrw plan --image``,
:mod:`rewriter.imageplan`) also carries, per site, a :class:`Place`: the call slot's address, the
function, and where its branch goes when it calls (``bl ftrace_caller`` from that address, or
``b`` to its ool stub). From these and the layout's slot offsets every write has one address and
two 4-byte words, which the plan file spells out and ``check-plan`` re-derives: a file whose words
are not exactly its writes' kinds at those addresses is refused, so that proving the symbolic plan
proves the words too. Pure: values in, values out.
"""

from __future__ import annotations

from typing import Final, NamedTuple

from rewriter.generations import LAYOUTS, Variant
from rewriter.states import Insn, Slot, word_for


class Place(NamedTuple):
    """One site of a plan, where it is: its call slot's ``addr`` and its ``function`` (the name
    ftrace lists it under). ``call`` is where its ``bl`` (mprofile, patchable) or ``b stub`` (ool)
    goes once enabled at run time, and ``call_to`` what that is (``ftrace_caller``, a trampoline,
    ``ool stub``); ``call`` is None where the image does not decide it, and ``call_to`` then says why."""

    addr: int
    function: str
    call: int | None
    call_to: str


class PlacedWrite(NamedTuple):
    """One write as words: the slot's address, and the word found and written there (None: a
    branch whose target the image does not decide, :attr:`Place.call`)."""

    addr: int
    old: int | None
    new: int | None


_BRANCHES: Final = (Insn.CALL, Insn.STUB)  # the kinds whose word depends on the address and target


def slot_addr(place: Place, variant: Variant, slot: Slot) -> int:
    """The address of ``slot`` of a ``variant`` site at ``place``."""
    delta = LAYOUTS[variant].offset(slot)
    assert delta is not None  # a slot the write names is one the layout has (Plan validates it)
    return place.addr + delta


def word(place: Place, variant: Variant, slot: Slot, insn: Insn) -> int | None:
    """The 4-byte word ``insn`` is in ``slot`` of the site at ``place``; None for a branch whose
    target the image does not decide."""
    if insn in _BRANCHES and place.call is None:
        return None
    return word_for(insn, slot_addr(place, variant, slot), place.call or 0)


def placed(place: Place, variant: Variant, slot: Slot, old: Insn, new: Insn) -> PlacedWrite:
    """One write of the site at ``place``, as an address and two words."""
    at = slot_addr(place, variant, slot)
    return PlacedWrite(at, word(place, variant, slot, old), word(place, variant, slot, new))


def hex_text(value: int | None) -> str | None:
    """An address or a word as a plan file writes it: hex text (JSON numbers lose bits past 2**53)."""
    return None if value is None else f"{value:#x}"
