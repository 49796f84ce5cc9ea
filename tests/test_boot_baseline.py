"""The unmodified Debian 6.1 ppc64le corpus boots under qemu: the baseline every rewrite is compared to.

Both boots take ~2-7 s with TCG on a 2-core machine (see tests/boot.py for what is measured).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from boot import (
    QEMU,
    STANDARD_APPEND,
    boot,
    counts,
    make_initramfs,
    module_load_script,
    require_corpus,
    require_tool,
)

pytestmark = pytest.mark.boot

# `ftrace: allocating 33690 entries in 13 pages` -- the __mcount_loc count of the pinned vmlinux.
CORPUS_FTRACE_ENTRIES = counts("6.1").records
# available_filter_functions once init memory is freed: the vmlinux's 32181 .text records (its __init
# sites are dropped) plus nls_utf8's 3 (char2uni, uni2char, init_nls_utf8).
CORPUS_FILTER_FUNCTIONS_WITH_NLS_UTF8 = counts("6.1").text + 3


def test_unmodified_vmlinux_boots_to_rootfs_panic_and_dumps_initcall_trace() -> None:
    require_tool(QEMU)
    corpus = require_corpus()

    result = boot(corpus.vmlinux, STANDARD_APPEND, timeout=60)

    assert not result.timed_out, result.console[-3000:]
    assert result.ftrace_entries == CORPUS_FTRACE_ENTRIES
    assert result.ftrace_pages == (13, 3)
    assert not result.ftrace_bug
    assert not result.oopsed
    assert result.panicked and "VFS: Unable to mount root fs" in result.console
    assert "do_one_initcall" in result.traced_functions


def test_unmodified_signed_module_loads_and_its_functions_are_traceable(tmp_path: Path) -> None:
    require_tool(QEMU)
    corpus = require_corpus()
    initrd = make_initramfs(
        tmp_path / "initrd.cpio",
        corpus.busybox,
        [corpus.modules_dir / "fs/nls/nls_utf8.ko"],
        module_load_script(["nls_utf8"]),
    )

    result = boot(corpus.vmlinux, STANDARD_APPEND, initrd, timeout=90)

    assert result.done, result.console[-3000:]
    assert result.insmod == {"nls_utf8": 0}
    assert result.tainted == 0  # Debian's signature verifies against the built-in key
    assert result.available_filter_functions is not None
    assert {"char2uni [nls_utf8]", "uni2char [nls_utf8]"} <= set(result.available_filter_functions)
    assert len(result.available_filter_functions) == CORPUS_FILTER_FUNCTIONS_WITH_NLS_UTF8
    assert result.tracer_rc == 0
    assert not result.ftrace_bug
    assert not result.oopsed
    assert not result.panicked
