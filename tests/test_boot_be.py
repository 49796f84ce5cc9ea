"""A big-endian kernel, judged by itself under qemu: the corpus's one big-endian ppc64 image,
Debian's linux-source-7.2 built here (corpus/build-be.sh; Debian's own big-endian kernels are in
its ports archive, out of this project's reach).

Its sites are mprofile when bookworm's gcc 12 builds it (ELFv2, 7.2's default for big-endian), the
little-endian layout byte-swapped: so every read and write of a word goes through the image's byte
order. Nothing here is a count written down: the scan is compared with what the booted kernel
lists, by name (kallsyms names an address by one of its aliases, and a kept weak body by the
symbol before it: both resolved with pyelftools, not with the tool's own function table).

The boots have no busybox (Debian ships none for big-endian ppc64 outside ports), so /init is
tests/data/be_init.c, built static by the big-endian cross gcc.
"""

from __future__ import annotations

import bisect
import json
import shutil
import subprocess
from collections import Counter
from pathlib import Path

import pytest
from boot import QEMU, BeKernel, BootResult, boot, make_program_initramfs, require_be_kernel, require_tool
from conftest import invoke

from rewriter.elf.image import Image
from rewriter.sites import Scan, Site, scan

pytestmark = [pytest.mark.boot, pytest.mark.corpus]

INIT_SOURCE = Path(__file__).resolve().parent / "data" / "be_init.c"
APPEND = "console=hvc0 panic=-1"
LOAD_ORDER = ("nls_base.ko", "nls_utf8.ko", "ext2.ko")  # nls_utf8 needs nls_base
POLICY = "default nop\nkeep do_one_initcall\nkeep vfs_*\nkeep :mod:ext2\n"


@pytest.fixture(scope="module")
def kernel() -> BeKernel:
    require_tool(QEMU)
    return require_be_kernel()


@pytest.fixture(scope="module")
def init(tmp_path_factory: pytest.TempPathFactory) -> Path:
    cc = require_tool("powerpc64-linux-gnu-gcc")
    out = tmp_path_factory.mktemp("init") / "init"
    subprocess.run([cc, "-static", "-O2", str(INIT_SOURCE), "-o", str(out)], check=True)
    return out


def _boot(vmlinux: Path, modules: list[Path], init: Path, tmp_path: Path) -> BootResult:
    initrd = make_program_initramfs(tmp_path / "initrd.cpio", init, modules)
    booted = boot(vmlinux, APPEND, initrd, timeout=120)
    assert booted.done and not booted.ftrace_bug and not booted.oopsed, booted.console[-3000:]
    assert booted.insmod == dict.fromkeys((m.name for m in modules), 0), booted.insmod
    assert booted.tracer_rc == 0 and booted.available_filter_functions is not None, booted.console[-3000:]
    return booted


class Symbols:
    """A linked image's FUNC symbols, read with pyelftools: each name's addresses, and which
    symbol kallsyms names an address by (the nearest at or before it)."""

    def __init__(self, path: Path) -> None:
        from elftools.elf.elffile import ELFFile

        with path.open("rb") as f:
            table = ELFFile(f).get_section_by_name(".symtab")
            funcs = sorted((s["st_value"], s.name) for s in table.iter_symbols() if s["st_info"]["type"] == "STT_FUNC")
        self.starts = [a for a, _ in funcs]
        self.names = [n for _, n in funcs]
        self.addresses: dict[str, set[int]] = {}
        for a, n in funcs:
            self.addresses.setdefault(n, set()).add(a)

    def before(self, address: int) -> str:
        return self.names[bisect.bisect_right(self.starts, address) - 1]


def _traceable(result: Scan, symbols: Symbols | None, sections: tuple[str, ...] | None = (".text",)) -> Counter[str]:
    """The names the kernel lists for the sites scan calls traceable in ``sections`` (None: all of
    them). A vmlinux frees its .init.text and their records after boot: .text alone; a module's
    .init.text functions stay listed after its init (tests/test_boot_baseline.py)."""
    return Counter(
        _listed_name(s, symbols) for s in result.sites if s.traceable and (sections is None or s.section in sections)
    )


def _listed_name(site: Site, symbols: Symbols | None) -> str:
    """A site's function; a kept weak body (traceable, in no function) is listed under the symbol
    before it, as kallsyms names it."""
    if site.function is not None:
        return site.function
    assert symbols is not None and site.record is not None, site
    return symbols.before(site.record)


def _same_up_to_aliases(listed: Counter[str], scanned: Counter[str], symbols: Symbols) -> None:
    """``listed`` (the kernel's names) equals ``scanned``, where a name may stand for another at the
    same address (kallsyms keeps one of a function's aliases: ``sys_mmap`` for ``__se_sys_mmap``)."""
    only_listed, only_scanned = listed - scanned, scanned - listed
    for name, n in list(only_listed.items()):
        at = symbols.addresses.get(name, set())
        for _ in range(n):
            alias = next((a for a in only_scanned if symbols.addresses.get(a, set()) & at), None)
            assert alias is not None, f"{name}: listed by the kernel, not a traceable site of scan nor an alias"
            only_scanned[alias] -= 1
            only_scanned = +only_scanned
    assert not only_scanned, f"traceable in scan, not listed by the kernel: {dict(only_scanned)}"


def _split(lines: list[str]) -> tuple[Counter[str], int, dict[str, Counter[str]]]:
    """available_filter_functions: the vmlinux's names, its ``__ftrace_invalid_address___`` lines
    (records the kernel disabled), and each module's names (``name [module]``)."""
    core: Counter[str] = Counter()
    invalid = 0
    modules: dict[str, Counter[str]] = {}
    for line in lines:
        name, _, module = line.strip().partition(" [")
        if name.startswith("__ftrace_invalid_address___"):
            invalid += 1
        elif module:
            modules.setdefault(module.rstrip("]"), Counter())[name] += 1
        else:
            core[name] += 1
    return core, invalid, modules


def test_a_big_endian_kernel_lists_exactly_what_scan_calls_traceable(
    kernel: BeKernel, init: Path, tmp_path: Path
) -> None:
    image = Image.load(kernel.vmlinux)
    result = scan(image)
    assert (image.endian, image.abi.value) == (">", "elfv2") and result.generation is not None
    assert len(result.sites) == result.records.count and all(s.recorded for s in result.sites)
    audited = invoke("audit", "--format", "json", kernel.vmlinux)
    assert audited.exit_code == 0, audited.output
    anomalies = json.loads(audited.stdout)["totals"]["anomalies"]
    assert anomalies["error"] == anomalies["warning"] == 0, anomalies

    modules = [kernel.modules / name for name in LOAD_ORDER]
    booted = _boot(kernel.vmlinux, modules, init, tmp_path)
    core, invalid, listed_modules = _split(booted.available_filter_functions or [])
    symbols = Symbols(kernel.vmlinux)
    _same_up_to_aliases(core, _traceable(result, symbols), symbols)
    untraceable = sum(1 for s in result.sites if s.section == ".text" and not s.traceable)
    assert invalid == untraceable and untraceable > 0  # the weak bodies, disabled at boot
    for path in modules:
        found = scan(Image.load(path))
        assert len(found.sites) == found.records.count
        assert listed_modules.get(path.name.removesuffix(".ko"), Counter()) == _traceable(found, None, None), path.name
    valid = sum(core.values()) + sum(sum(c.values()) for c in listed_modules.values())
    assert f"MCOUNTRW-ENABLED {valid}" in booted.console  # the function tracer took every one


def test_a_prenopped_big_endian_tree_boots_with_only_what_it_kept(kernel: BeKernel, init: Path, tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    (tree / "modules").mkdir(parents=True)
    shutil.copy(kernel.vmlinux, tree / "vmlinux")
    modules = [Path(shutil.copy(kernel.modules / name, tree / "modules" / name)) for name in LOAD_ORDER]
    policy, logs = tmp_path / "keep.policy", tmp_path / "logs"
    policy.write_text(POLICY)
    files = (tree / "vmlinux", tree / "modules")  # a tree's modules, and the vmlinux named (docs/prenop.md)
    done = invoke("prenop", "--policy", policy, "--in-place", "--log-dir", logs, *files)
    assert done.exit_code == 0, done.output
    assert invoke("prenop", "--verify", "--log-dir", logs, *files).exit_code == 0

    kept = scan(Image.load(tree / "vmlinux"))
    kept_text = _traceable(kept, Symbols(tree / "vmlinux"))
    assert set(kept_text) == {"do_one_initcall"} | {n for n in kept_text if n.startswith("vfs_")}
    booted = _boot(tree / "vmlinux", modules, init, tmp_path)
    core, invalid, listed_modules = _split(booted.available_filter_functions or [])
    _same_up_to_aliases(core, kept_text, Symbols(tree / "vmlinux"))
    assert invalid == 0 and booted.ftrace_entries == len(kept.sites)
    ext2 = scan(Image.load(tree / "modules" / "ext2.ko"))
    assert listed_modules == {"ext2": _traceable(ext2, None, None)} and len(ext2.sites) > 0  # nls_*: all nopped

    assert invoke("prenop", "--undo", "--in-place", "--log-dir", logs, *files).exit_code == 0
    assert (tree / "vmlinux").read_bytes() == kernel.vmlinux.read_bytes()
    for path in modules:
        assert path.read_bytes() == (kernel.modules / path.name).read_bytes(), path.name
