"""The lead's review of h18-E's leftovers in ``plan --image`` (each fails on 2c9f83a)."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
from boot import require_kernel
from conftest import assert_one_line, invoke
from test_review_h18_E import _image_plan_doc

from rewriter.states import SiteState


def test_check_plan_refuses_an_image_plan_said_offline(tmp_path: Path) -> None:
    """``plan --image`` refuses ``--offline`` (a vmlinux's sites are planned for its running
    kernel), but its file edited to ``"mode": "offline"`` was certified SAFE ("offline: no task
    runs"), a claim no plan makes."""
    doc = _image_plan_doc(SiteState.ENABLED)
    doc["mode"] = "offline"
    edited = tmp_path / "offline.json"
    edited.write_text(json.dumps(doc))
    assert_one_line(invoke("check-plan", str(edited)), 2, "error", str(edited), 'mode: "offline" with an image')


@pytest.mark.corpus
def test_plan_image_of_an_ool_module_names_its_stub_not_a_trampoline(tmp_path: Path) -> None:
    """A 7.2 module's enabled entry is a `b` to a `.stubs` stub: the refusal said only "the
    trampoline its bl reaches", a 6.12 module's."""
    module = require_kernel("7.2").modules_dir / "fs" / "nls" / "nls_utf8.ko.xz"
    out = tmp_path / "p.json"
    refused = invoke("plan", "--image", str(module), "--to", "enabled", "-o", str(out))
    assert_one_line(refused, 2, "error", str(module), "a module, not a vmlinux", "a trampoline or an ool stub")
    assert not out.exists()


@pytest.mark.corpus
def test_plan_image_counts_sites_in_no_function_as_sites() -> None:
    """The left-out warnings listed weak bodies (in no function) by address and counted them as
    functions: '(0xc..., 0xc..., 0xc... (and 248 more functions))'. They are counted as sites now."""
    result = invoke("plan", "--image", str(require_kernel("6.12").vmlinux), "--to", "enabled", "-o", "/dev/null")
    assert result.exit_code == 0, result.output
    untraceable = next(line for line in result.output.splitlines() if "left out (weak-body)" in line)
    assert re.search(r"\(\d+ sites in no function\)$", untraceable), untraceable
    assert "0x" not in untraceable and "more functions" not in untraceable
    freed = next(line for line in result.output.splitlines() if ".init.text left out" in line)
    assert re.search(r"\(and \d+ more functions\); \d+ sites? in no function\)$", freed), freed


def test_a_directory_above_that_cannot_be_locked_keeps_no_run_out(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """h18-H made every writing run hold a shared flock on each directory above what it writes. A
    directory whose file system has no flock (ENOLCK: an NFS mount without lockd, some FUSE) then
    refused every run under it ('cannot lock it'), which ran before: no run can hold such a
    directory, so it keeps no run out and is left out. The file the run writes is still refused."""
    import errno
    import fcntl

    from rewriter import lock

    target = tmp_path / "d" / "x.ko"
    target.parent.mkdir()
    target.write_bytes(b"x")
    real = fcntl.flock

    def no_flock_on_directories(fd: int, how: int) -> None:
        if os.path.isdir(f"/proc/self/fd/{fd}"):
            raise OSError(errno.ENOLCK, "No locks available")
        real(fd, how)

    monkeypatch.setattr(fcntl, "flock", no_flock_on_directories)
    with lock.hold([target], shared=lock.above([target])):
        pass
    with pytest.raises(lock.Unlockable, match="cannot lock it"), lock.hold([target.parent]):
        pass


@pytest.mark.corpus
@pytest.mark.parametrize(("name", "other"), [("6.12", "6.12-gcc12"), ("6.12-gcc12", "6.12")])
def test_a_612_plan_is_held_to_its_own_build_and_refused_by_the_other(name: str, other: str, tmp_path: Path) -> None:
    """h18-G tested the image hold on 6.1 and 7.2 only. Debian's two 6.12 builds differ in generation
    (patchable; gcc 12's mprofile): each plan is held to its own vmlinux, and refused, one line, by
    the other's."""
    made = tmp_path / "p.json"
    kernel = require_kernel(name).vmlinux
    result = invoke("plan", "--image", kernel, "--only", "vfs_read*", "--to", "enabled", "--format", "json", "-o", made)
    assert result.exit_code == 0, result.output
    held = invoke("check-plan", made)
    assert held.exit_code == 0 and "SAFE" in held.stdout and "held to the image" in held.stdout, held.output
    refused = invoke("check-plan", made, "--image", require_kernel(other).vmlinux)
    assert_one_line(refused, 2, "error", str(made), "sites[0]", str(require_kernel(other).vmlinux))
