"""Review h17, helper Z: docs/build-integration as a new user runs it."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from boot import require_tool
from conftest import ROOT

FRAGMENT = ROOT / "docs" / "build-integration" / "mcountrw.mk"


def _make(tmp_path: Path, target: str, *assignments: str) -> subprocess.CompletedProcess[str]:
    """``make -f mcountrw.mk TARGET`` by hand, outside kbuild, with `echo` for mcountrw: what it would run."""
    env = {k: v for k, v in os.environ.items() if k not in ("MODLIB", "KERNELRELEASE", "INSTALL_MOD_PATH")}
    cmd = [str(require_tool("make")), "-f", str(FRAGMENT), target, "MCOUNTRW=echo mcountrw", *assignments]
    return subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True)


@pytest.mark.parametrize("target", ["mcountrw-modules", "mcountrw-modules-undo"])
def test_module_targets_without_modlib_refuse_rather_than_nop_every_installed_kernel(
    tmp_path: Path, target: str
) -> None:
    """Run by hand as the fragment's header shows, but with MODLIB forgotten and no kbuild to set
    KERNELRELEASE, MODLIB was `/lib/modules/` and the target ran `prenop --in-place` (or its undo)
    over every kernel installed on the build machine, exit 0. It now stops before running anything."""
    r = _make(tmp_path, target)
    assert r.returncode != 0, r.stdout
    assert "mcountrw.mk: set MODLIB to the modules' directory (or KERNELRELEASE)" in r.stderr
    assert "mcountrw" not in r.stdout and "/lib/modules" not in r.stdout


@pytest.mark.parametrize(
    ("assignments", "modlib"),
    [
        (("MODLIB=/build/tree",), "/build/tree"),
        (("KERNELRELEASE=6.1.0-50-powerpc64le", "INSTALL_MOD_PATH=/stage"), "/stage/lib/modules/6.1.0-50-powerpc64le"),
    ],
)
def test_module_targets_run_on_the_directory_they_are_given(
    tmp_path: Path, assignments: tuple[str, ...], modlib: str
) -> None:
    r = _make(tmp_path, "mcountrw-modules", *assignments)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[-1].endswith(f" --log-dir .mcountrw-logs/modules {modlib}"), r.stdout
