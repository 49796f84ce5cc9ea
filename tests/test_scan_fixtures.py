"""The scanner on the project's own fixtures: every site of fixtures/manifest.json (written from
the sources and objdump, not by mcountrw), on both endians and every variant."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import FIXTURES

from rewriter.elf.image import Image
from rewriter.sites import scan

BINARIES = sorted(p.name for p in (FIXTURES / "bin").iterdir())


def _expected(entry: dict, linked: bool) -> set[tuple]:
    return {(int(s["slot_addr"], 16), s["function"], s["variant"], s["state"], s["recorded"]) for s in entry["sites"]}


def _found(path: Path) -> tuple[set[tuple], object]:
    result = scan(Image.load(path))
    linked = result.kind.value in ("executable", "vmlinux")
    got = {
        (s.addr if linked else s.offset, s.function, s.variant.value, s.state.value, s.recorded) for s in result.sites
    }
    return got, result


@pytest.mark.parametrize("name", BINARIES)
def test_fixture_sites_match_manifest(name: str, manifest: dict) -> None:
    entry = manifest["binaries"][f"bin/{name}"]
    got, result = _found(FIXTURES / "bin" / name)
    assert got == _expected(entry, result.kind.value == "executable")
    assert result.kind.value == entry["kind"]
    assert result.endian == entry["endian"] and result.abi.value == entry["abi"]
    assert result.records.count == entry["num_records"]
    assert len(result.records.unmatched) == len(entry["extra_records"])


def test_big_endian_elfv1_functions_resolve_through_descriptors(manifest: dict) -> None:
    got, result = _found(FIXTURES / "bin" / "prof-be")
    assert result.abi.value == "elfv1" and result.endian == "big"
    assert {f for _, f, *_ in got} == {
        "static_helper",
        "leaf_add",
        "nonleaf_calls",
        "sum8",
        "fp_mix",
        "touch_global",
    }


def test_every_variant_is_represented() -> None:
    variants = set()
    for name in BINARIES:
        variants |= {s.variant.value for s in scan(Image.load(FIXTURES / "bin" / name)).sites}
    assert variants == {"mprofile", "mprofile-std", "patchable"}
