"""Ground truth for the enable column of the generation table: the words the kernel itself writes.

Each unmodified Debian kernel (6.1 mprofile, 6.12 patchable, 7.2 ool) boots under qemu; its init
script filters the function tracer to ``vfs_*`` and turns it on, so the kernel's own
ftrace_replace_code() enables those sites and no other. The host then saves the vmlinux's ``.text``
through QMP (tests/boot.py ``boot_and_dump``) and reads every recorded ``.text`` site back:

* the sites the kernel enabled (exactly the traceable ``vfs_*`` sites `scan` names, as many as the
  kernel lists in ``set_ftrace_filter``) hold the words of ``LAYOUTS[variant].words(enabled)``:
  ``mflr r0`` where the layout has it, a ``bl`` to a tracer entry (``TRACER_NAMES``) in the call
  slot, and on ool a ``b`` to the very stub `scan` assigns the record (``Site.call_target``);
* every other recorded ``.text`` site still holds its ``boot_state`` words: enabling wrote B alone
  (the model check-plan proves plans under) and nothing elsewhere.
"""

from __future__ import annotations

import re
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Final

import pytest
from boot import (
    READY_MARKER,
    boot_and_dump,
    make_initramfs,
)
from test_boot_memory import Memory, compare_sites, load_kernel

from rewriter import ppc
from rewriter.elf.symbols import code_addrs
from rewriter.generations import LAYOUTS
from rewriter.sites import TRACER_NAMES, Site, scan
from rewriter.states import Insn, SiteState

pytestmark = [pytest.mark.boot, pytest.mark.corpus]

FILTER: Final = "vfs_*"
APPEND: Final = "console=hvc0 panic=-1"  # no ftrace= : the init script enables the tracer itself
# An init script's start: what a script needs to reach the tracing files ($T)
TRACING_INIT: Final = """#!/bin/sh
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t tracefs tracefs /sys/kernel/tracing
T=/sys/kernel/tracing
"""
ENABLE_SCRIPT: Final = f"""{TRACING_INIT}echo '{FILTER}' > $T/set_ftrace_filter
echo function > $T/current_tracer
echo "MCOUNTRW-TRACER rc=$?"
echo "MCOUNTRW-FILTERED $(wc -l < $T/set_ftrace_filter)"
echo {READY_MARKER}
sleep 600
poweroff -f
"""


def _enabled_problem(site: Site, memory: Memory, tracers: set[int]) -> str | None:
    """Why the words at an enabled site are not ``words(enabled)`` of its layout (None if they are)."""
    assert site.addr is not None
    lay = LAYOUTS[site.variant]
    for slot, insn in zip(lay.state_slots, lay.words(SiteState.ENABLED), strict=True):
        delta = lay.offset(slot)
        assert delta is not None
        at = site.addr + delta
        word = memory.word(at)
        if word is None:
            return f"{at:#x} outside the saved text"
        if insn is Insn.MFLR and word == ppc.MFLR_R0:
            continue
        if insn is Insn.CALL and ppc.is_bl(word) and ppc.branch_target(at, word) in tracers:
            continue
        if insn is Insn.STUB and ppc.is_b(word) and ppc.branch_target(at, word) == site.call_target:
            continue
        to = f" {ppc.branch_target(at, word):#x}" if ppc.is_b(word) or ppc.is_bl(word) else ""
        want = f" {site.call_target:#x}" if insn is Insn.STUB and site.call_target is not None else ""
        return f"{site.function} {at:#x}: want {insn.value}{want}, memory {ppc.describe(word)}{to}"
    return None


@pytest.mark.parametrize("name", ["6.1", "6.12", "7.2"])
def test_the_kernel_enables_exactly_the_words_the_layout_names(name: str, tmp_path: Path) -> None:
    files, image, text, whole = load_kernel(name)
    initrd = make_initramfs(tmp_path / "initrd.cpio", files.busybox, [], ENABLE_SCRIPT)
    dump = boot_and_dump(files.vmlinux, APPEND, initrd, lambda _console: [whole], timeout=120)
    console = dump.boot.console
    assert dump.ready and dump.boot.tracer_rc == 0 and not dump.boot.ftrace_bug, console[-3000:]
    filtered = re.search(r"MCOUNTRW-FILTERED (\d+)", console)
    assert filtered is not None, console[-3000:]
    memory = Memory(text.addr, dump.memory[whole])

    recorded = [s for s in scan(image).sites if s.section == ".text" and s.recorded]
    enabled = [s for s in recorded if s.traceable and fnmatchcase(s.function or "", FILTER)]
    others = [s for s in recorded if s not in set(enabled)]
    tracers = set(code_addrs(image, TRACER_NAMES))
    wrong = [p for s in enabled if (p := _enabled_problem(s, memory, tracers)) is not None]
    compared, still_wrong = compare_sites(others, lambda s: s.addr or 0, memory.word, image)

    assert 0 < len(enabled) == int(filtered.group(1)), (len(enabled), filtered.group(1))
    assert not wrong, f"{name}: {len(wrong)} of {len(enabled)} enabled sites:\n" + "\n".join(wrong[:50])
    assert compared == len(recorded) - len(enabled) > 0
    assert not still_wrong, f"{name}: {len(still_wrong)} of {compared} other sites:\n" + "\n".join(still_wrong[:50])
