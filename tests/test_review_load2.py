"""What the kernel makes of odd modules and vmlinux images: open items of the 2026-12-05 fuzz pass.

A module the loader refuses (here one without ``.stubs``: module_frob_arch_sections() fails the
load, tests/test_review_fuzz.py shows it under qemu) never has its ``.stubs`` carved: scan said
its ool records were served by stubs all the same."""

from __future__ import annotations

import json
from pathlib import Path

from boot import unsigned_module
from conftest import invoke


def _rename_section(ko: Path, name: str) -> None:
    """Rename section ``name`` in its ``.shstrtab`` (its last letter made ``X``)."""
    data = bytearray(ko.read_bytes())
    at = data.index(b"\0" + name.encode() + b"\0") + len(name)
    data[at] = ord("X")
    ko.write_bytes(data)


def test_a_refused_ool_module_has_no_stub_serving_its_records(tmp_path: Path) -> None:
    ko = unsigned_module("7.2", "fs/nls/nls_utf8.ko*", tmp_path / "nls_utf8.ko")
    loaded = json.loads(invoke("scan", "--format", "json", ko).stdout)["images"][0]
    assert loaded["stubs"][0]["used"] == loaded["records"]["count"] > 0
    _rename_section(ko, ".stubs")
    scanned = invoke("scan", ko)
    doc = json.loads(invoke("scan", "--format", "json", ko).stdout)["images"][0]
    assert "no .stubs section" in doc["summary"]["not_loaded"]
    assert doc["stubs"][0]["used"] == 0 and all(s["stub"] is None for s in doc["sites"])
    assert "NOT LOADED" in scanned.stdout and "serve 0 of" in scanned.stdout
