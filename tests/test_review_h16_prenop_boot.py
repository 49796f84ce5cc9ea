"""One prenop run over Debian's 4k- and 64k-page 6.12 with a module tree of each (ext4 and what it
needs), each module held to the vmlinux of its release (rewriter/kernels.py); then each kernel
boots under qemu with its own pre-nopped modules: the kernel is the judge."""

from __future__ import annotations

import lzma
import shutil
from pathlib import Path

import pytest
from boot import STANDARD_APPEND, boot, make_initramfs, module_load_script, require_kernel
from conftest import invoke

from rewriter.elf.image import Image
from rewriter.sites import scan

MODULES = ("crc16", "mbcache", "jbd2", "ext4")  # in load order
PATHS = ("lib/crc16.ko.xz", "fs/mbcache.ko.xz", "fs/jbd2/jbd2.ko.xz", "fs/ext4/ext4.ko.xz")


@pytest.mark.boot
def test_both_page_sizes_prenopped_in_one_run_boot_and_load_their_modules(tmp_path: Path) -> None:
    kernels = [require_kernel("6.12"), require_kernel("6.12-64k")]
    tree = tmp_path / "modules"
    for k in kernels:
        for rel in PATHS:
            (tree / k.kernel.release / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(k.modules_dir / rel, tree / k.kernel.release / rel)
    policy, out = tmp_path / "p.policy", tmp_path / "out"
    policy.write_text("default nop\nkeep do_one_initcall\nkeep vfs_*\nkeep :mod:ext4\n")
    vmlinux = [k.vmlinux for k in kernels]
    done = invoke("prenop", "--policy", policy, *vmlinux, tree, "-o", out, "--strip-signature")
    assert done.exit_code == 0, done.output
    for k in kernels:
        mods = []
        for name, rel in zip(MODULES, PATHS, strict=True):
            plain = tmp_path / k.kernel.release / f"{name}.ko"
            plain.parent.mkdir(exist_ok=True)
            plain.write_bytes(lzma.decompress((out / k.kernel.release / rel).read_bytes()))
            mods.append(plain)
        ramfs = make_initramfs(
            tmp_path / k.kernel.release / "initrd.cpio", k.busybox, mods, module_load_script(list(MODULES))
        )
        r = boot(out / k.vmlinux.name, STANDARD_APPEND, initrd=ramfs, timeout=240)
        assert r.insmod == dict.fromkeys(MODULES, 0), r.console[-3000:]
        assert r.tracer_rc == 0 and not r.ftrace_bug and not r.oopsed and r.done, r.console[-3000:]
        kept = scan(Image.load(out / k.vmlinux.name))
        assert r.ftrace_entries == len(kept.sites)  # 6.12 counts only the records left
        aff = r.available_filter_functions or []
        assert {f.split(" [")[1].rstrip("]") for f in aff if " [" in f} == {"ext4"}  # the others nopped whole
        assert {"do_one_initcall", "vfs_read"} <= {f for f in aff if " [" not in f}
