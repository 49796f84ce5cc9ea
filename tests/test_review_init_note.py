"""scan's table says how many traceable sites lie in init sections.

The kernel drops the records of init text with its memory: a vmlinux's at the end of boot
(``ftrace_free_init_mem()``), a module's once its init has run (``ftrace_free_mem()`` in
``do_init_module()``). tests/test_boot_traceable.py counts them out of available_filter_functions
under qemu. "38530 traceable after boot" alone had read as 38,530 functions to trace later, 1,627
of which the kernel has long forgotten.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from boot import require_kernel
from conftest import invoke

pytestmark = pytest.mark.corpus


def _init_traceable(path: Path) -> int:
    result = invoke("scan", "--format", "json", path)
    assert result.exit_code == 0, result.output
    (image,) = json.loads(result.stdout)["images"]
    return sum(1 for s in image["sites"] if s["traceable"] and s["section"].startswith(".init"))


def _noted(path: Path) -> int | None:
    result = invoke("scan", path)
    assert result.exit_code == 0, result.output
    found = re.search(r"^  init text: (\d+) of the traceable sites (?:is|are) in init sections", result.stdout, re.M)
    return None if found is None else int(found.group(1))


@pytest.mark.parametrize("name", ["6.1", "6.12", "7.2"])
def test_the_note_counts_the_traceable_init_sites(name: str) -> None:
    files = require_kernel(name)
    want = _init_traceable(files.vmlinux)
    assert want > 1000  # every Debian kernel has more than a thousand __init functions
    assert _noted(files.vmlinux) == want


def test_a_module_says_its_init_is_traced_while_it_initialises() -> None:
    files = require_kernel("6.1")
    module = files.modules_dir / "fs" / "nls" / "nls_utf8.ko"
    assert _noted(module) == _init_traceable(module) == 1
    assert "do_init_module()" in invoke("scan", module).stdout


def test_no_note_without_traceable_init_sites() -> None:
    clean = Path(__file__).resolve().parent.parent / "fixtures" / "bin" / "clean"  # .text only
    assert _init_traceable(clean) == 0
    assert _noted(clean) is None
