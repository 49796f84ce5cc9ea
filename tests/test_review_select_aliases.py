"""--only and --exclude match a function by any of its names.

A site carries one name of its function's start (the one kallsyms gives: a module's first in its
symbol table): 6.1's ``sys_ni_syscall`` is one of 46 names of one function. A glob that named
another of them had matched nothing: ``--exclude 'compat_sys_*'`` left ``sys_ni_syscall``'s site to
be nopped, and ``--only`` of an alias was refused as matching none (exit 1).
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from boot import require_tool
from test_cli import mcountrw

SOURCE = """
int counter;
void real_fn(int x) { counter += x; }
void alias_fn(int x) __attribute__((alias("real_fn")));
void other_fn(int x) { counter -= x; }
"""


@pytest.fixture(scope="module")
def objects(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    gcc = require_tool("powerpc64le-linux-gnu-gcc")
    root = tmp_path_factory.mktemp("aliases")
    (root / "a.c").write_text(SOURCE)
    flags = {"mprofile": ["-pg", "-mprofile-kernel"], "patchable": ["-fpatchable-function-entry=2"]}
    for name, extra in flags.items():
        subprocess.run([gcc, "-O2", "-c", *extra, str(root / "a.c"), "-o", str(root / f"{name}.o")], check=True)
    return {name: root / f"{name}.o" for name in flags}


def _states(path: Path) -> dict[str, str]:
    proc = mcountrw("scan", "--format", "json", str(path))
    assert proc.returncode == 0, proc.stderr
    (image,) = json.loads(proc.stdout)["images"]
    return {s["function"]: s["state"] for s in image["sites"]}


def test_the_site_is_named_by_one_name_only(objects: dict[str, Path]) -> None:
    assert set(_states(objects["mprofile"])) == {"real_fn", "other_fn"}  # alias_fn names no site


def test_only_an_alias_selects_its_function(objects: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "out.o"
    proc = mcountrw("nop", str(objects["mprofile"]), "--only", "alias_fn", "-o", str(out))
    assert proc.returncode == 0, proc.stderr
    assert _states(out) == {"real_fn": "nopped", "other_fn": "enabled"}


def test_exclude_an_alias_spares_its_function(objects: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "out.o"
    proc = mcountrw("nop", str(objects["mprofile"]), "--exclude", "alias_*", "-o", str(out))
    assert proc.returncode == 0, proc.stderr
    assert _states(out) == {"real_fn": "enabled", "other_fn": "nopped"}


def test_exclude_an_alias_keeps_its_record(objects: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "out.o"
    proc = mcountrw("nop", str(objects["patchable"]), "--exclude", "alias_fn", "--drop-records", "-o", str(out))
    assert proc.returncode == 0, proc.stderr
    assert "made 1 site untraceable after boot: records dropped" in proc.stderr
    assert _traceable(out) == {"real_fn": True, "other_fn": False}


def _traceable(path: Path) -> dict[str, bool]:
    proc = mcountrw("scan", "--format", "json", str(path))
    (image,) = json.loads(proc.stdout)["images"]
    return {s["function"]: s["traceable"] for s in image["sites"]}


def test_a_name_no_function_has_still_matches_none(objects: dict[str, Path]) -> None:
    proc = mcountrw("nop", str(objects["mprofile"]), "--exclude", "no_such_fn", "--dry-run")
    assert proc.returncode == 1
    assert "--exclude no_such_fn: matches none of its 2 sites" in proc.stderr
