"""Review h19-F: scan's text as a kernel developer reads it at an 80-column terminal: each reason a
site is not traceable said as one sentence that names its JSON key."""

from __future__ import annotations

import json
import re

import pytest
from boot import require_kernel
from conftest import FIXTURES, invoke, unwrapped

from rewriter.boot import Untraceable

BIN = FIXTURES / "bin"


# -- 2. a reason a site is not traceable reads as one sentence ---------------------------------------


@pytest.mark.parametrize("reason", list(Untraceable))
def test_each_not_traceable_note_is_one_sentence_naming_its_key(reason: Untraceable) -> None:
    """The note read "not traceable: 261 weak-body: weak-function bodies the kernel disables: in no
    sized function ..., the kernel marks them ...": three labels in a row before the sentence."""
    from rewriter.boot import said_text  # here, not at the top: the other tests run on the old code too

    for n, noun in ((1, "1 site "), (3, "3 sites ")):
        text = said_text(reason, n)
        assert text.startswith(f"{noun}({reason.value}) "), text
        assert ":" not in text, text  # the note's one colon is the one after "not traceable"
    assert not re.search(r"\b(them|their|they|bodies|are|have|hold)\b", said_text(reason, 1)), reason


def test_an_unrecorded_site_is_one_sentence_in_the_table() -> None:
    table = unwrapped(invoke("scan", BIN / "anom-unrecorded").stdout)
    assert "  not traceable: 1 site (unrecorded) has no kernel record, so ftrace never patches it\n" in table


def test_the_612_weak_bodies_are_one_sentence_with_the_json_key_and_the_kernels_reason() -> None:
    vmlinux = require_kernel("6.12").vmlinux
    doc = json.loads(invoke("scan", "--format", "json", vmlinux).stdout)
    weak = doc["images"][0]["summary"]["untraceable"]["weak-body"]
    notes = [line for line in unwrapped(invoke("scan", vmlinux).stdout).splitlines() if "not traceable" in line]
    assert notes == [
        f"  not traceable: {weak} sites (weak-body) are weak-function bodies the kernel disables, in no sized "
        "function and more than FTRACE_MCOUNT_MAX_OFFSET past a symbol, so the kernel marks their records "
        "FTRACE_FL_DISABLED"
    ]


# -- 3. what a stranger reads: every line true -------------------------------------------------------


def test_the_shared_stubs_note_of_ool_objects_calls_them_objects() -> None:
    """`scan fixtures/bin/*` said the .stubs of ool-be.o, ool-le.o and ool-fs-le.o "serve all 18
    records of 3 modules": they are objects (kind "object" in the head line and the JSON)."""
    objects = [BIN / "ool-be.o", BIN / "ool-le.o", BIN / "ool-fs-le.o"]
    doc = json.loads(invoke("scan", "--jobs", "1", "--format", "json", *objects).stdout)
    assert {image["kind"] for image in doc["images"]} == {"object"}
    records = sum(image["records"]["count"] for image in doc["images"])
    notes = unwrapped(invoke("scan", "--jobs", "1", *objects).stdout)
    assert f"serve all {records} records of 3 objects\n" in notes, notes
    assert "module" not in notes.split("notes on the images above:")[1], notes
