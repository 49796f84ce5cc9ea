"""Review h19-A: the text a kernel developer reads over a module tree and at 80 columns: notes said
once for a run of several images, prose wrapped at 80 columns, distinct names for the two weak-body
counts, and percentages written as ``100%``."""

from __future__ import annotations

import re

from conftest import FIXTURES, invoke

BIN = FIXTURES / "bin"


def test_audit_writes_percentages_without_a_space_before_the_sign() -> None:
    got = invoke("audit", "--jobs", "1", "--fail-on", "never", BIN / "prof-le", BIN / "clean")
    assert got.exit_code == 0, got.output
    assert "(100% decided)" in got.stdout
    assert not re.search(r"\d %", got.stdout), got.stdout
