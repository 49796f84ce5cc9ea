"""The committed fixture binaries behave as fixtures/manifest.json says.

* Each runnable executable, under qemu-user, prints exactly the expected output,
  including which call sites reached `_mcount` and how often.
* The words at every listed site are the ones its variant and state imply.
* fixtures/build.sh reproduces every committed binary byte for byte.

Standard library plus pytest only; nothing here imports `rewriter`, so these
tests check the fixtures themselves, independently of the code under test.
A missing qemu or cross toolchain skips, or fails under MCOUNTRW_REQUIRE_TOOLS=1.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
MANIFEST = json.loads((FIXTURES / "manifest.json").read_text())
BINARIES: dict[str, dict[str, Any]] = MANIFEST["binaries"]
RUNNABLE = sorted(p for p, b in BINARIES.items() if b["kind"] == "executable" and b["run"])
BUILD_TOOLS = [
    f"{prefix}-{tool}"
    for prefix in ("powerpc64le-linux-gnu", "powerpc64-linux-gnu")
    for tool in ("gcc", "objdump", "readelf")
]

MFLR_R0 = 0x7C0802A6
NOP = 0x60000000
STD_R0_16_R1 = 0xF8010010
MAX_FIXTURE_BYTES = 1 << 20


def require_tool(name: str) -> str:
    """Skip locally; in CI (MCOUNTRW_REQUIRE_TOOLS=1) a missing tool is a failure."""
    path = shutil.which(name)
    if path is None:
        reason = f"{name} not installed"
        if os.environ.get("MCOUNTRW_REQUIRE_TOOLS") == "1":
            pytest.fail(f"{reason} (MCOUNTRW_REQUIRE_TOOLS=1)")
        pytest.skip(reason)
    return path


def word_at(path: str, offset: int) -> int:
    data = (FIXTURES / path).read_bytes()[offset : offset + 4]
    return int.from_bytes(data, "little" if BINARIES[path]["endian"] == "little" else "big")


def is_bl(word: int) -> bool:
    return word & 0xFC000003 == 0x48000001


def test_manifest_lists_exactly_the_committed_binaries() -> None:
    committed = {f"bin/{p.name}" for p in (FIXTURES / "bin").iterdir()}
    assert committed == set(BINARIES)


@pytest.mark.parametrize("path", sorted(BINARIES))
def test_committed_binary_is_under_one_megabyte(path: str) -> None:
    assert (FIXTURES / path).stat().st_size < MAX_FIXTURE_BYTES


def expected_words(variant: str, state: str) -> list[str]:
    """The site's words from its first to its call slot, as the fixtures' sources imply them."""
    first = "mflr" if state in ("enabled", "disabled") else "nop"
    call = "bl" if state in ("enabled", "broken") else "nop"
    if variant == "ool":  # one word; `disabled` is the nop the compiler leaves
        return [call]
    return [first, "std", call] if variant == "mprofile-std" else [first, call]


def word_matches(kind: str, word: int) -> bool:
    return is_bl(word) if kind == "bl" else word == {"mflr": MFLR_R0, "nop": NOP, "std": STD_R0_16_R1}[kind]


@pytest.mark.parametrize("path", sorted(BINARIES))
def test_site_words_match_declared_variant_and_state(path: str) -> None:
    for site in BINARIES[path]["sites"]:
        slot = int(site["slot_offset"], 16)
        words = expected_words(site["variant"], site["state"])
        first = slot - 4 * (len(words) - 1)
        where = f"{path}: {site['function']} at offset {slot:#x}"
        for n, kind in enumerate(words):
            assert word_matches(kind, word_at(path, first + 4 * n)), f"{where}: word {n} is not {kind}"


@pytest.mark.parametrize("path", sorted(BINARIES))
def test_every_site_carries_its_binary_generation(path: str) -> None:
    generation = BINARIES[path]["generation"]
    allowed = {"mprofile": {"mprofile", "mprofile-std"}, "patchable": {"patchable"}, "ool": {"ool"}}[generation]
    for site in BINARIES[path]["sites"]:
        assert site["generation"] == generation and site["variant"] in allowed, site["function"]


@pytest.mark.parametrize("path", RUNNABLE)
def test_executable_prints_expected_output_and_mcount_hits(path: str) -> None:
    run = BINARIES[path]["run"]
    qemu = require_tool(run["qemu"])

    result = subprocess.run([qemu, str(FIXTURES / path)], capture_output=True, text=True, timeout=60)

    assert result.returncode == run["expected_exit_code"], result.stderr
    assert result.stdout == run["expected_stdout"]
    lines = result.stdout.splitlines()
    assert f"mcount total {run['expected_total']}" in lines
    hits_by_addr = {int(w[1], 16): int(w[2]) for w in (line.split() for line in lines) if w[0] == "site"}
    for site in BINARIES[path]["sites"]:
        assert hits_by_addr.get(int(site["slot_addr"], 16), 0) == run["expected_hits"][site["function"]]


def test_build_script_reproduces_committed_binaries_byte_for_byte(tmp_path: Path) -> None:
    for tool in [*BUILD_TOOLS, "python3"]:
        require_tool(tool)
    out = tmp_path / "bin"

    subprocess.run(
        ["bash", str(FIXTURES / "build.sh"), str(out), str(tmp_path / "manifest.json")],
        check=True,
        capture_output=True,
        text=True,
        timeout=300,
    )

    rebuilt = {f"bin/{p.name}" for p in out.iterdir()}
    assert rebuilt == set(BINARIES)
    differing = [p for p in sorted(BINARIES) if (out / Path(p).name).read_bytes() != (FIXTURES / p).read_bytes()]
    assert differing == []
    assert (tmp_path / "manifest.json").read_text() == (FIXTURES / "manifest.json").read_text()
