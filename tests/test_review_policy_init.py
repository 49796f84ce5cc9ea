"""policy check says how many kept sites lie in init sections, as scan's table does.

Keeping an ``__init`` function keeps a site the kernel traces only until it frees init memory and
drops the records (``ftrace_free_init_mem()``; a module's in ``do_init_module()``): "1510 traceable
after boot" for ``keep :section:.init.text`` on 6.1 read as 1,510 functions to trace later.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from boot import require_kernel
from conftest import invoke, unwrapped

pytestmark = pytest.mark.corpus


def _result(policy: Path, image: Path) -> str:
    check = invoke("policy", "check", policy, image)
    assert check.exit_code == 0, check.output
    (line,) = [x for x in unwrapped(check.stdout).splitlines() if x.startswith("result: ")]
    return line


def test_kept_init_sites_are_counted_as_such(tmp_path: Path) -> None:
    module = require_kernel("6.1").modules_dir / "fs" / "nls" / "nls_utf8.ko"  # 1 site in .init.text, 2 in .text
    policy = tmp_path / "p"
    policy.write_text("default nop\nkeep :section:.init.text\n")
    assert _result(policy, module).startswith(
        "result: keep 1 site (1 traceable once loaded, 1 of them in init sections, traced until the kernel frees them)"
    )
    policy.write_text("default nop\nkeep char2uni\n")
    line = _result(policy, module)
    assert line.startswith("result: keep 1 site (1 traceable once loaded)") and "init sections" not in line


def test_the_count_is_scans(tmp_path: Path) -> None:
    vmlinux = require_kernel("6.12").vmlinux
    policy = tmp_path / "p"
    policy.write_text("default keep\n")
    kept = re.search(r"\((\d+) traceable after boot, (\d+) of them in init sections", _result(policy, vmlinux))
    noted = re.search(r"^  init text: (\d+) of the traceable sites", unwrapped(invoke("scan", vmlinux).stdout), re.M)
    assert kept is not None and noted is not None
    assert int(kept.group(2)) == int(noted.group(1)) == 1627
    assert int(kept.group(1)) == 38530
