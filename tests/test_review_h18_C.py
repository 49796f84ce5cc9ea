"""Review h18-C: what the live kernel does while a plan's words are written, what its enabled `bl` calls.

* Whether the corpus kernels patch under stop_machine(): read from the Debian binaries themselves.
"""

from __future__ import annotations

from typing import Final

import numpy as np
import pytest
from boot import require_kernel

from rewriter import ppc
from rewriter.elf.image import Image
from rewriter.elf.symbols import code_addrs, functions

# ---------------------------------------------------------------- 1. no stop_machine() on powerpc

_UPDATE: Final = "arch_ftrace_update_code"


def _calls_of(image: Image, name: str) -> list[int]:
    """The targets of every `bl` in function ``name`` of ``image`` (its sized symbol's words)."""
    (entry,) = code_addrs(image, [name])
    funcs = functions(image)
    i = int(np.searchsorted(funcs.start, entry, side="right")) - 1
    assert int(funcs.start[i]) == entry
    count = (int(funcs.end[i]) - entry) // ppc.INSN_SIZE
    words = np.frombuffer(image.data, image.endian + "u4", count, image.offset_of(entry)).tolist()
    return [ppc.branch_target(entry + 4 * k, w) for k, w in enumerate(words) if ppc.is_bl(w)]


def _entries(image: Image, names: list[str]) -> set[int]:
    """Both entries (global and local) of each of ``names``: a `bl` may target either."""
    return set(code_addrs(image, names)) | set(code_addrs(image, names, True))


@pytest.mark.corpus
@pytest.mark.parametrize("name", ["6.1", "6.12", "6.12-gcc12", "7.2"])
def test_powerpc_arch_ftrace_update_code_calls_ftrace_modify_all_code_without_stop_machine(name: str) -> None:
    """docs/state-machine.md: powerpc's arch_ftrace_update_code() overrides the generic __weak one
    (which runs ftrace_run_stop_machine()) with a direct call of ftrace_modify_all_code(): other CPUs
    keep executing while the sites are written, the situation the checker's tasks model."""
    files = require_kernel(name)
    image = Image.load(files.vmlinux)
    modify_all = _entries(image, ["ftrace_modify_all_code"])
    stop = _entries(image, ["ftrace_run_stop_machine", "stop_machine"])
    assert modify_all and stop  # both exist: the generic one is linked, and not what powerpc runs
    calls = _calls_of(image, _UPDATE)
    assert calls and all(t in modify_all for t in calls), [hex(t) for t in calls]
    assert not stop & set(calls)
