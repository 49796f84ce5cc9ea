"""Review h17, helper Z: `mcountrw scan` as a new user runs it (README, overrides, odd trees)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from boot import require_kernel
from conftest import FIXTURES, invoke


@pytest.mark.parametrize(
    ("kernel", "given", "detected"),
    [("6.1", "patchable", "mprofile"), ("7.2", "patchable", "ool")],
)
def test_a_contradicted_generation_on_a_kernel_is_obeyed_not_blamed_on_its_build(
    kernel: str, given: str, detected: str
) -> None:
    """`scan --generation patchable` on 6.1's and 7.2's vmlinux exited 2 with "built with
    -fpatchable-function-entry=M,N, N > 0": a build neither kernel had, named because the forced
    generation made a few records look like nops before an entry. Every other contradicted
    --generation is obeyed and says what it overrode (README); so is this one now."""
    vmlinux = require_kernel(kernel).vmlinux
    result = invoke("scan", "--generation", given, vmlinux)
    assert result.exit_code == 0, result.output
    assert "-fpatchable-function-entry=M,N" not in result.output
    assert f"--generation {given} overrides what the image says: {detected} (" in result.stdout
    header = result.stdout.splitlines()[0]
    assert header.startswith(f"{vmlinux}: vmlinux, little-endian elfv2, generation {given}: "), header


def test_a_contradicted_generation_on_a_patchable_object_is_not_called_classic_pg(tmp_path: Path) -> None:
    """`scan --generation mprofile fixtures/bin/patchable-lep-le.o` exited 2 with "6 calls to
    _mcount after the prologue ... classic -pg": the object calls no _mcount at all (its records
    name `nop; nop` after the global entry). It is obeyed now, in every format, and says so; a
    rewrite still refuses the contradiction, naming it."""
    obj = FIXTURES / "bin" / "patchable-lep-le.o"
    table = invoke("scan", "--generation", "mprofile", obj)
    assert table.exit_code == 0, table.output
    assert "classic -pg" not in table.output
    assert "--generation mprofile overrides what the image says: patchable (" in table.stdout
    as_json = invoke("scan", "--generation", "mprofile", "--format", "json", obj)
    assert as_json.exit_code == 0, as_json.output
    image = json.loads(as_json.stdout)["images"][0]
    assert image["generation"] == "mprofile" and image["generation_override"]["detected"] == "patchable"
    out = tmp_path / "out.o"
    refused = invoke("nop", "--generation", "mprofile", obj, "-o", out)
    assert refused.exit_code == 2 and "contradicts what the image says: patchable" in refused.stderr
    assert not out.exists()
