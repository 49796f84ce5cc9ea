"""Review h18-C: what the live kernel does while a plan's words are written, what its enabled `bl` calls.

* Whether the corpus kernels patch under stop_machine(): read from the Debian binaries themselves.
* The tracer entry a trace names: what each kernel's enabled `bl` calls at run time.
"""

from __future__ import annotations

from typing import Final

import numpy as np
import pytest
from boot import KERNELS, require_kernel
from typer.testing import CliRunner

from rewriter import ppc
from rewriter.check import BUILTINS, check
from rewriter.cli import app
from rewriter.elf.image import Image
from rewriter.elf.symbols import code_addrs, functions
from rewriter.generations import LAYOUTS, Variant

runner = CliRunner()

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


# ---------------------------------------------------------------- 2. what a trace's `bl` calls


def test_the_tracer_entry_a_trace_names_is_the_generation_tables() -> None:
    """A run-time trace names what the kernel's enabled `bl` calls, from the generation table (one home)."""
    for variant, lay in LAYOUTS.items():
        assert lay.tracer == "ftrace_caller", variant


@pytest.mark.parametrize("builtin", ["naive-enable", "b8-enable-gcc5"])
def test_an_mprofile_race_trace_names_ftrace_caller_not_mcount(builtin: str) -> None:
    """6.1's ftrace_make_call() (and 6.12's ftrace_replace_code() on Debian 12's gcc-12 mprofile
    build) writes `bl ftrace_caller` (or ftrace_regs_caller, or a trampoline to it) into B; `_mcount`
    is only the word the file holds, which boot init nops. The trace said `bl _mcount`."""
    result = check(BUILTINS[builtin].plan)
    assert not result.safe
    assert "bl ftrace_caller with r0 not holding LR" in result.reason
    assert "_mcount" not in result.reason
    assert any("B: bl ftrace_caller" in step.action for step in result.trace)
    out = runner.invoke(app, ["check-plan", "--builtin", builtin])
    assert out.exit_code == 1
    assert "bl ftrace_caller with r0 NOT = LR" in out.output and "_mcount" not in out.output


def test_mprofile_and_patchable_traces_name_the_same_entry() -> None:
    """The same race on mprofile and patchable names the same callee: both kernels' enable writes a
    `bl` to ftrace_caller (the patchable trace already said so, the mprofile one said `_mcount`)."""
    mprofile = check(BUILTINS["naive-enable"].plan).reason
    patchable = check(BUILTINS["patchable-naive-enable"].plan).reason
    assert mprofile == patchable
    assert KERNELS["6.12-gcc12"].generation == "mprofile"
    assert LAYOUTS[Variant.MPROFILE].tracer == LAYOUTS[Variant.PATCHABLE].tracer
