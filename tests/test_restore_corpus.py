"""Selected functions come back on the real kernels (issue 12), and the kernels agree.

The chain on each corpus kernel: pre-nop the vmlinux with `--drop-records` but for do_one_initcall,
then bring back `vfs_*` from the nop's log; drop every record of nls_utf8, then bring back
char2uni. A scan with the newest log sees every site again; undo takes each step back
sha256-exactly; booted, the kernel traces exactly the functions brought back (its own
available_filter_functions, read from an initramfs), with no `ftrace bug`."""

from __future__ import annotations

import fnmatch
import hashlib
from pathlib import Path
from typing import NamedTuple

import pytest
from boot import (
    QEMU,
    STANDARD_APPEND,
    KernelFiles,
    boot,
    counts,
    make_initramfs,
    module_load_script,
    require_kernel,
    require_tool,
)

from rewriter.elf.compress import Compression, decompress
from rewriter.elf.image import Image
from rewriter.files import apply_file, undo_file
from rewriter.log import default_log_path, find_base, load_known, logged
from rewriter.rewrite import Options, Selection
from rewriter.sites import Source, scan
from rewriter.states import SiteState

pytestmark = [pytest.mark.corpus, pytest.mark.slow]

NOP_DROP = Options(SiteState.NOPPED, drop_records=True, strip_signature=True)
ENABLE = Options(SiteState.ENABLED)
KEPT = "do_one_initcall"
BACK = "vfs_*"
BOOT_TIMEOUT = 150
# Each corpus vmlinux's sites are counts(name).records (tests/boot.py); 6.1 has 75 `vfs_*` names.


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


class Chain(NamedTuple):
    kernel: KernelFiles
    vmlinux: tuple[Path, Path, Path]  # original, nopped, vfs_* back
    module: tuple[Path, Path, Path]  # original, all dropped, char2uni back
    back: tuple[int, int]  # sites whose records came back: vmlinux, module


@pytest.fixture(scope="module", params=["6.1", "6.12", "7.2"])
def chain(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Chain:
    k = require_kernel(request.param)
    d = tmp_path_factory.mktemp(f"chain-{request.param}")
    nop, en = d / "vmlinux.nop", d / "vmlinux"
    apply_file(k.vmlinux, nop, Selection(exclude=(KEPT,)), NOP_DROP)
    r = apply_file(nop, en, Selection(only=(BACK,)), ENABLE).rewrite
    src = k.modules_dir / ("fs/nls/nls_utf8.ko" if request.param == "6.1" else "fs/nls/nls_utf8.ko.xz")
    mnop, men = d / f"nop-{src.name}", d / src.name
    apply_file(src, mnop, Selection(), NOP_DROP)
    m = apply_file(mnop, men, Selection(only=("char2uni",)), ENABLE).rewrite
    return Chain(k, (k.vmlinux, nop, en), (src, mnop, men), (len(r.restored), len(m.restored)))


def test_a_scan_with_the_newest_log_sees_every_site(chain: Chain) -> None:
    name = chain.kernel.kernel.name
    original = scan(Image.load(chain.vmlinux[0]))
    wanted = [s for s in original.sites if fnmatch.fnmatchcase(original.name_of(s) or "", BACK)]
    assert chain.back[0] == len(wanted) and (name != "6.1" or len(wanted) == 75)
    # KEPT's sites: on 6.1 also the weak body after it, which the kernel lists (--exclude matches) as KEPT
    kept = [s for s in original.sites if original.name_of(s) == KEPT]
    assert len(kept) == (2 if name == "6.1" else 1)
    newest = chain.vmlinux[2]
    plain = scan(Image.load(newest))
    assert sorted(plain.name_of(s) or "" for s in plain.sites) == sorted(
        [KEPT] * len(kept) + [original.name_of(s) or "" for s in wanted]
    )
    assert all(s.recorded and s.boot_state is not None for s in plain.sites)
    seen = logged(plain, {newest: default_log_path(newest)})
    assert len(seen.sites) == len(original.sites) == counts(name).records
    assert {s.place for s in seen.sites} == {s.place for s in original.sites}
    assert sum(s.source is Source.LOG for s in seen.sites) == counts(name).records - len(wanted) - len(kept)
    # the newest log alone describes every site the chain changed, and names the log before it
    known = load_known(default_log_path(newest))
    base = known.header.base
    assert base is not None and find_base(base, default_log_path(newest)) == default_log_path(chain.vmlinux[1])
    assert len(known.sites) == counts(name).records - len(kept)


@pytest.mark.parametrize("which", ["vmlinux", "module"])
def test_undo_takes_each_step_back_sha256_exactly(chain: Chain, which: str, tmp_path: Path) -> None:
    files = chain.vmlinux if which == "vmlinux" else chain.module
    for before, after in ((files[1], files[2]), (files[0], files[1])):
        back = tmp_path / after.name
        undo_file(after, default_log_path(after), back)
        assert _sha(back) == _sha(before)


def test_the_module_gets_char2uni_back_alone(chain: Chain) -> None:
    assert chain.back[1] == 1
    sites = scan(Image.load(chain.module[2])).sites
    assert [(s.function, s.recorded) for s in sites] == [("char2uni", True)]


def _plain_module(path: Path, out: Path) -> Path:
    """busybox's insmod takes plain .ko files."""
    data = path.read_bytes()
    out.write_bytes(decompress(path, data, Compression.XZ) if path.name.endswith(".xz") else data)
    return out


@pytest.mark.boot
def test_booted_the_kernel_traces_exactly_what_came_back(chain: Chain, tmp_path: Path) -> None:
    """The original kernel's `vfs_*` lines of available_filter_functions, and the rewritten one's
    whole list: do_one_initcall, the same `vfs_*` lines, and char2uni from the module. (6.1 prints
    `ftrace: allocating N entries` for its whole table, zeroed slots included: N proves nothing.)"""
    require_tool(QEMU)
    k = chain.kernel
    grep = make_initramfs(tmp_path / "grep.cpio", k.busybox, [], module_load_script([], aff_grep="vfs_"))
    before = boot(k.vmlinux, STANDARD_APPEND, initrd=grep, timeout=BOOT_TIMEOUT)
    assert before.done and not before.ftrace_bug, before.console[-3000:]
    vfs = sorted(f for f in before.available_filter_functions or [] if fnmatch.fnmatchcase(f, BACK))
    assert len(vfs) > 20

    module = _plain_module(chain.module[2], tmp_path / "nls_utf8.ko")
    ramfs = make_initramfs(tmp_path / "initrd.cpio", k.busybox, [module], module_load_script(["nls_utf8"]))
    after = boot(chain.vmlinux[2], STANDARD_APPEND, initrd=ramfs, timeout=BOOT_TIMEOUT)
    assert after.done and after.insmod == {"nls_utf8": 0} and after.tracer_rc == 0, after.console[-3000:]
    assert not after.ftrace_bug and not after.oopsed, after.console[-3000:]
    kept = [KEPT] * (2 if k.kernel.name == "6.1" else 1)  # 6.1 lists the weak body after it as KEPT too
    assert sorted(after.available_filter_functions or []) == sorted([*kept, *vfs, "char2uni [nls_utf8]"])
    print(f"{k.kernel.name}: {len(vfs)} vfs_* lines back, booted in {after.seconds:.1f} s")
