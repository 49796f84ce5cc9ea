"""h19-C: plan --image of a rewritten vmlinux, for an ops that saves regs, and check-plan's details.

* A rewritten vmlinux: plan --image read only the image, so a site whose record an earlier
  `mcountrw nop --drop-records` dropped vanished from the plan without a word, and a vmlinux whose
  boot turns ftrace off (a site's words refused by ftrace_init_nop()) was planned as if ftrace ran.
* ``--caller ftrace_regs_caller``: the `bl` the kernel writes for an ops with FTRACE_OPS_FL_SAVE_REGS.
* check-plan: one wording for a bad ``image`` field; a word of 9 hex digits refused.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from boot import require_kernel
from conftest import assert_one_line, invoke

pytestmark = pytest.mark.corpus


def _rewritten(name: str, where: Path, *args: str) -> Path:
    """``mcountrw nop`` of kernel ``name``'s vmlinux with ``args``, written (with its log) under ``where``."""
    out = where / "vmlinux"
    result = invoke("nop", require_kernel(name).vmlinux, "-o", out, *args)
    assert result.exit_code == 0, result.output
    return out


def _plan_json(vmlinux: Path, *args: str) -> tuple[dict, str]:
    result = invoke("plan", "--image", vmlinux, "--to", "enabled", "--format", "json", *args)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout), result.stderr


# ---------------------------------------------------------------- a rewritten vmlinux


@pytest.mark.parametrize("name", ["6.1", "6.12"])
def test_plan_image_of_a_rewritten_vmlinux_says_its_dropped_sites_are_left_out(name: str, tmp_path: Path) -> None:
    """After `nop --only vfs_read --drop-records`, vfs_read has no record (ftrace never patches
    it): plan --image 'vfs_read*' leaves it out with a warning naming it, as the patch log beside
    the file says it is there; the other sites are planned from their state after boot, with the
    words plan --image gives them in the file as built. Before, vfs_read vanished unsaid."""
    rewritten = _rewritten(name, tmp_path, "--only", "vfs_read", "--drop-records")
    doc, said = _plan_json(rewritten, "--only", "vfs_read*")
    left_out = "1 selected site left out: ftrace cannot trace it after boot: no kernel record: ftrace never patches it"
    assert f"{left_out} (vfs_read)" in said, said
    original, _ = _plan_json(require_kernel(name).vmlinux, "--only", "vfs_read*")
    kept = [s for s in original["sites"] if s["function"] != "vfs_read"]
    assert [s["addr"] for s in doc["sites"]] == [s["addr"] for s in kept] and kept
    assert all(s["current"] == "disabled" for s in doc["sites"])
    words = sorted((w["addr"], w["old_word"], w["new_word"]) for stage in doc["stages"] for w in stage)
    addrs = {s["addr"] for s in kept}
    assert words == sorted(
        (w["addr"], w["old_word"], w["new_word"]) for stage in original["stages"] for w in stage if w["addr"] in addrs
    )
    plan_file = tmp_path / "p.json"
    plan_file.write_text(json.dumps(doc))
    held = invoke("check-plan", plan_file)
    assert held.exit_code == 0 and "held to the image" in held.stdout, held.output


def test_plan_image_of_a_vmlinux_whose_dropped_sites_are_all_it_selects_is_nothing_to_do(tmp_path: Path) -> None:
    rewritten = _rewritten("6.1", tmp_path, "--only", "vfs_read*", "--drop-records")
    result = invoke("plan", "--image", rewritten, "--only", "vfs_read*", "--to", "enabled")
    assert_one_line(result, 1, "nothing to do", "no kernel record: ftrace never patches them", "vfs_readv")


def test_plan_image_of_a_vmlinux_whose_boot_turns_ftrace_off_plans_nothing(tmp_path: Path) -> None:
    """6.1 with vfs_read nopped and its record kept: ftrace_init_nop() refuses it, ftrace bug, ftrace
    off for the boot: no site can be enabled. plan --image planned the other sites (and those whose
    records sort after it as `enabled -> enabled`, their `bl _mcount` left by the stopped init)."""
    rewritten = _rewritten("6.1", tmp_path, "--only", "vfs_read", "--keep-records")
    result = invoke("plan", "--image", rewritten, "--only", "vfs_read*", "--to", "enabled")
    assert_one_line(result, 1, "nothing to do", "ftrace is off for the whole boot: 1 recorded site", "vfs_readv")
