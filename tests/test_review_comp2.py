"""Compressed modules and ``--kernel``: what each loader takes, and the vmlinux a module names.

* ``--kernel VMLINUX`` of another release (the module's ``vermagic`` against the vmlinux's
  ``linux_banner``) or byte order was taken, and its ftrace_process_locs() loop decided a drop
  for a kernel that does not load the module.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from boot import require_be_kernel, require_kernel
from conftest import assert_one_line, invoke

NLS = Path("fs") / "nls"


@pytest.mark.corpus
def test_a_kernel_of_another_release_is_not_the_one_that_loads_the_module(tmp_path: Path) -> None:
    """6.12's nls_utf8 with the 64k-page 6.12 vmlinux: the same generation and version, another
    release (6.12.107+deb13-powerpc64le-64k), whose loader refuses the module's vermagic."""
    module = require_kernel("6.12").modules_dir / NLS / "nls_utf8.ko.xz"
    other = require_kernel("6.12-64k").vmlinux
    out = tmp_path / "m.ko.xz"
    drop = ("--only", "char2uni", "--drop-records", "--strip-signature")
    for command in (("nop", module, "-o", out, *drop), ("apply", module, "--to", "nopped", "-o", out, *drop)):
        line = assert_one_line(invoke(*command, "--kernel", other), 2, "error")
        assert line == (
            f"mcountrw: error: --kernel {other}: Linux 6.12.107+deb13-powerpc64le-64k, and {module} was built for "
            "6.12.107+deb13-powerpc64le (its vermagic): not the kernel that loads it"
        )
    assert list(tmp_path.iterdir()) == []
    own = invoke("nop", module, "-o", out, *drop, "--kernel", require_kernel("6.12").vmlinux)
    assert own.exit_code == 0 and out.is_file(), own.output


@pytest.mark.corpus
def test_a_kernel_of_another_byte_order_is_not_the_one_that_loads_the_module(tmp_path: Path) -> None:
    """Both mprofile: the big-endian 7.2 (gcc 12) and Debian's little-endian 6.1. The byte order
    is said first: the loader reads no ELF header of the other order."""
    be, le = require_be_kernel(), require_kernel("6.1")
    out = tmp_path / "m.ko"
    pairs = ((be.modules / "nls_utf8.ko", le.vmlinux, "little", "big"),
             (le.modules_dir / NLS / "nls_utf8.ko", be.vmlinux, "big", "little"))  # fmt: skip
    for module, kernel, theirs, ours in pairs:
        line = assert_one_line(invoke("nop", module, "-o", out, "--kernel", kernel), 2, "error")
        assert line == (
            f"mcountrw: error: --kernel {kernel}: a {theirs}-endian vmlinux, and {module} is a {ours}-endian "
            "module: not the kernel that loads it"
        )
    assert list(tmp_path.iterdir()) == []
