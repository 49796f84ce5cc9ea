"""Findings of the 2026-12-05 black-box pass over audit and diff, on copies of Debian's kernels
edited the way a bad tool or a bad build could."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from boot import require_kernel
from conftest import invoke

from rewriter.elf.image import Image

MFLR_R0 = 0x7C0802A6


def _scan(path: Path, *more: str) -> dict:
    done = invoke("scan", "--format", "json", *more, path)
    assert done.exit_code == 0, done.output
    image: dict = json.loads(done.output)["images"][0]
    return image


def _audit(path: Path) -> dict:
    done = invoke("audit", "--format", "json", path)
    image: dict = json.loads(done.stdout)["images"][0]
    return image


def _put_word(path: Path, address: int, word: int) -> None:
    image = Image.load(path)
    at = image.offset_of(address)
    data = bytearray(path.read_bytes())
    data[at : at + 4] = word.to_bytes(4, "little")
    path.write_bytes(data)


def test_one_edited_patchable_site_leaves_the_image_patchable_and_is_an_error(tmp_path: Path) -> None:
    """A `nop; nop` site whose second nop another tool overwrote was read as ool's one nop, and
    that one record made all 38,791 sites ool: disabled, safety n/a, 0 errors, for a kernel whose
    ftrace_init_nop() fails that site (both words must be nops) and turns ftrace off."""
    vmlinux = tmp_path / "vmlinux"
    shutil.copyfile(require_kernel("6.12").vmlinux, vmlinux)
    site = next(s for s in _scan(vmlinux)["sites"] if s["function"] == "do_one_initcall")
    _put_word(vmlinux, site["address"], MFLR_R0)
    after = _scan(vmlinux)
    assert after["generation"] == "patchable" and "ftrace bug at boot" in after["summary"]["ftrace_off"]
    states = {s["state"] for s in after["sites"] if s["function"] != "do_one_initcall"}
    assert states == {"nopped"}
    audit = _audit(vmlinux)
    errors = [a for a in audit["anomalies"] if a["severity"] == "error"]
    assert errors and all(a["address"] in (site["address"], site["record"]) for a in errors if a["address"])


def test_a_patchable_vmlinux_with_symbols_and_no_stub_area_is_never_ool(tmp_path: Path) -> None:
    """Even when most of its sites were edited: a vmlinux built for ool links its stub areas in."""
    vmlinux = tmp_path / "vmlinux"
    shutil.copyfile(require_kernel("6.12").vmlinux, vmlinux)
    sites = _scan(vmlinux)["sites"]
    image = Image.load(vmlinux)
    data = bytearray(vmlinux.read_bytes())
    for s in sites[: len(sites) * 2 // 3]:
        at = image.offset_of(s["address"])
        data[at : at + 4] = MFLR_R0.to_bytes(4, "little")
    vmlinux.write_bytes(data)
    assert _scan(vmlinux)["generation"] == "patchable"
