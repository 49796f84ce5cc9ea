"""The kernel itself judges `traceable`: booted under qemu, each unmodified Debian kernel of the
corpus (the 64k-page builds too) lists in available_filter_functions exactly the .text sites that
`scan` calls traceable after boot.

After init the kernel frees .init.text and its records, so the file holds one line per .text
record. A record that test_for_valid_rec() disabled (a weak-function body more than
FTRACE_MCOUNT_MAX_OFFSET past its kallsyms symbol; powerpc 6.2+ only) is listed as
``__ftrace_invalid_address___<offset>`` (kernel/trace/ftrace.c print_rec()), so the count of those
lines is the kernel's own count of what scan must call untraceable. The file is counted inside the
guest (busybox wc/grep): printing ~40,000 lines over the emulated console would take seconds.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from boot import (
    KERNELS,
    QEMU,
    STANDARD_APPEND,
    boot,
    make_initramfs,
    module_load_script,
    require_kernel,
    require_tool,
)

from rewriter.elf.compress import Compression, decompress
from rewriter.elf.image import Image
from rewriter.sites import scan

pytestmark = [pytest.mark.boot, pytest.mark.corpus]

COUNT_SCRIPT = """#!/bin/sh
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t tracefs tracefs /sys/kernel/tracing
A=/sys/kernel/tracing/available_filter_functions
echo "MCOUNTRW-AFF-LINES $(wc -l < $A)"
echo "MCOUNTRW-AFF-INVALID $(grep -c __ftrace_invalid_address $A)"
echo MCOUNTRW-DONE
poweroff -f
"""


@pytest.mark.parametrize("name", list(KERNELS))
def test_available_filter_functions_are_exactly_the_traceable_text_sites(name: str, tmp_path: Path) -> None:
    require_tool(QEMU)
    kernel = require_kernel(name)
    result = scan(Image.load(kernel.vmlinux))
    text = [s for s in result.sites if s.section == ".text" and s.recorded]
    traceable = sum(s.traceable for s in text)

    initrd = make_initramfs(tmp_path / "initrd.cpio", kernel.busybox, [], COUNT_SCRIPT)
    booted = boot(kernel.vmlinux, STANDARD_APPEND, initrd, timeout=90)

    assert booted.done and not booted.ftrace_bug, booted.console[-3000:]
    lines = re.search(r"MCOUNTRW-AFF-LINES (\d+)", booted.console)
    invalid = re.search(r"MCOUNTRW-AFF-INVALID (\d+)", booted.console)
    assert lines is not None and invalid is not None, booted.console[-3000:]
    assert int(lines.group(1)) == len(text)
    assert int(invalid.group(1)) == len(text) - traceable


# What each kernel makes of kvm.ko's four weak-body records: how many it disables, and (7.2) the one it
# keeps, whose record lies 16 bytes past kvm_arch_irqfd_allowed and is listed as a second line of it.
KVM_WEAK = {"6.1": (0, None), "6.12-gcc12": (4, None), "6.12": (4, None), "7.2": (3, "kvm_arch_irqfd_allowed")}


@pytest.mark.parametrize("name", list(KVM_WEAK))
def test_a_modules_weak_bodies_are_what_its_kernel_makes_of_them(name: str, tmp_path: Path) -> None:
    """kvm.ko has four records in the bodies of overridden weak functions. Whether the kernel keeps
    them is its version's, not its generation's: 6.1 keeps them, and 6.12 disables them both with
    mprofile sites (built by gcc 12) and with patchable ones. scan reads the version from the
    module's vermagic; the kernel lists a disabled record as __ftrace_invalid_address___<offset>.
    7.2's kvm has one within FTRACE_MCOUNT_MAX_OFFSET of the symbol before it, which the kernel keeps
    and lists under that symbol's name: the one case where a record with no function is traceable."""
    require_tool(QEMU)
    kernel = require_kernel(name)
    src = next(kernel.modules_dir.glob("arch/powerpc/kvm/kvm.ko*"))
    plain = tmp_path / "kvm.ko"
    data = src.read_bytes()
    plain.write_bytes(decompress(src, data, Compression.XZ) if src.suffix == ".xz" else data)
    sites = scan(Image.load(plain)).sites
    weak = [s for s in sites if s.function is None]
    assert len(weak) == 4

    script = module_load_script(["kvm"], aff_grep="[kvm]")
    booted = boot(kernel.vmlinux, STANDARD_APPEND, make_initramfs(tmp_path / "i.cpio", kernel.busybox, [plain], script))

    assert booted.done and booted.insmod == {"kvm": 0} and not booted.ftrace_bug, booted.console[-3000:]
    listed = [line for line in booted.available_filter_functions or [] if line.endswith("[kvm]")]
    assert len(listed) == len(sites)
    invalid = sum(line.startswith("__ftrace_invalid_address___") for line in listed)
    disabled, kept_as = KVM_WEAK[name]
    assert invalid == sum(not s.traceable for s in sites) == disabled
    if kept_as is not None:
        (kept,) = [s for s in weak if s.traceable]
        assert listed.count(f"{kept_as} [kvm]") == 2
        assert [s.function for s in sites].count(kept_as) == 1
        assert kept.section == ".text" and 0 < kept.offset - _symbol_value(plain, kept_as) <= 16


def _symbol_value(path: Path, name: str) -> int:
    """A symbol's st_value (its section offset in an ET_REL), read with pyelftools."""
    from elftools.elf.elffile import ELFFile

    with open(path, "rb") as fh:
        (sym,) = ELFFile(fh).get_section_by_name(".symtab").get_symbol_by_name(name)
        return int(sym["st_value"])
