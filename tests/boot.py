"""Boot a ppc64le kernel under qemu and read what its console says about ftrace.

Strategy: run `qemu-system-ppc64 -M pseries` with the console on stdio and `-no-reboot`, so qemu
exits when the guest panics (`panic=-1` reboots at once; pseries also reports `ibm,os-term`)
or powers off. Everything a test needs is parsed out of the console text afterwards:
the kernel's own ftrace messages, the `ftrace_dump_on_oops` dump that the panic prints, and
`MCOUNTRW-*` marker lines that our init script prints.

Standard library (plus pytest for skip/fail) only; nothing here imports `rewriter`.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final, NamedTuple, NoReturn

import pytest

# Pinned in corpus/fetch.sh; repeated here because the stamp names are the only "fetch finished" signal.
KERNEL_RELEASE: Final = "6.1.0-50-powerpc64le"
STAMPS: Final = (".complete-bookworm", ".complete-bookworm-6.12", ".complete-trixie-sid", ".complete-pages-64k")


class Counts(NamedTuple):
    """What one corpus kernel holds, measured by hand (readelf, objdump, pyelftools; issue 10) and
    re-derived by the tests from their own independent readings. The one home of these numbers: a
    kernel added to the corpus gets its row here and every corpus test takes it up."""

    records: int  # the vmlinux record table (__start_mcount_loc..__stop_mcount_loc), none zero
    text: int  # of those, in .text
    init_text: int  # in .init.text
    weak_bodies: int  # records in no sized STT_FUNC: the bodies of overridden weak functions
    weak_kept: int  # of those, what test_for_valid_rec() keeps (within 16 bytes of kallsyms' symbol; 6.1 keeps all)
    modules: int  # module files in the tree
    module_sites: int  # the records of all of them
    stubs: tuple[int, int, int] | None = None  # ool: ftrace_ool_stub_text, _text_end, _inittext in stubs


class Kernel(NamedTuple):
    """One pinned Debian kernel of the corpus: its ftrace generation, where its files are, and its counts."""

    name: str  # "6.1", "6.12", "7.2", "6.12-gcc12", "6.12-64k", "7.2-64k"
    release: str  # the `uname -r`, as in the module directory's name
    generation: str  # "mprofile", "patchable", "ool"
    vmlinux_rel: str  # paths relative to the extraction root
    modules_rel: str
    counts: Counts

    def vmlinux(self, root: Path) -> Path:
        return root / self.vmlinux_rel

    def modules(self, root: Path) -> Path:
        return root / self.modules_rel


KERNELS: Final = {
    "6.1": Kernel(
        "6.1",
        KERNEL_RELEASE,
        "mprofile",
        f"boot/vmlinux-{KERNEL_RELEASE}",
        f"lib/modules/{KERNEL_RELEASE}/kernel",
        Counts(33_690, 32_181, 1_509, 243, 243, 3_126, 157_277),
    ),
    "6.12": Kernel(
        "6.12",
        "6.12.107+deb13-powerpc64le",
        "patchable",
        "boot/vmlinux-6.12.107+deb13-powerpc64le",
        "usr/lib/modules/6.12.107+deb13-powerpc64le/kernel",
        Counts(38_791, 37_157, 1_634, 262, 1, 3_154, 175_941),
    ),
    # linux-binary-7.2.13+deb14 ships the vmlinux as `vmlinuz`: an uncompressed ELF despite its name.
    "7.2": Kernel(
        "7.2",
        "7.2.13+deb14-powerpc64le",
        "ool",
        "usr/lib/modules/7.2.13+deb14-powerpc64le/vmlinuz",
        "usr/lib/modules/7.2.13+deb14-powerpc64le/kernel",
        Counts(42_648, 40_889, 1_759, 285, 26, 3_127, 181_790, (32_768, 8_121, 1_759)),
    ),
    # Debian 12's 6.12, built by gcc 12: no working -fpatchable-function-entry, so a 6.12 kernel with
    # mprofile sites (CONFIG_MPROFILE_KERNEL without ARCH_USING_PATCHABLE_FUNCTION_ENTRY in its config).
    "6.12-gcc12": Kernel(
        "6.12-gcc12",
        "6.12.118+deb12-powerpc64le",
        "mprofile",
        "boot/vmlinux-6.12.118+deb12-powerpc64le",
        "lib/modules/6.12.118+deb12-powerpc64le/kernel",
        Counts(38_891, 37_276, 1_615, 262, 5, 3_154, 176_055),
    ),
    # The 6.12 and 7.2 kernels built for 64k pages: a second configuration of each new generation, whose
    # counts the tests read independently, so that no test passes only on the binaries it was written on.
    "6.12-64k": Kernel(
        "6.12-64k",
        "6.12.107+deb13-powerpc64le-64k",
        "patchable",
        "boot/vmlinux-6.12.107+deb13-powerpc64le-64k",
        "usr/lib/modules/6.12.107+deb13-powerpc64le-64k/kernel",
        Counts(38_800, 37_164, 1_636, 262, 1, 3_156, 172_073),
    ),
    "7.2-64k": Kernel(
        "7.2-64k",
        "7.2.13+deb14-powerpc64le-64k",
        "ool",
        "usr/lib/modules/7.2.13+deb14-powerpc64le-64k/vmlinuz",
        "usr/lib/modules/7.2.13+deb14-powerpc64le-64k/kernel",
        Counts(42_652, 40_891, 1_761, 285, 26, 3_128, 176_094, (32_768, 8_123, 1_761)),
    ),
}


def counts(name: str) -> Counts:
    """The counts of corpus kernel ``name`` (a key of :data:`KERNELS`)."""
    return KERNELS[name].counts


# Verified on the unmodified corpus vmlinux: the root-fs panic prints "Dumping ftrace buffer:" with
# one `do_one_initcall <-kernel_init_freeable` line per initcall (~540). The filter keeps the ring
# buffer, and so the dump, small; without it the dump would be the whole boot.
STANDARD_APPEND: Final = "console=hvc0 panic=-1 ftrace=function ftrace_filter=do_one_initcall ftrace_dump_on_oops"

QEMU: Final = "qemu-system-ppc64"
# x-vof=on: qemu's built-in Virtual Open Firmware boots `-kernel vmlinux` directly (no SLOF), which is
# most of why a boot takes ~2 s. TCG cannot emulate the Spectre caps and only warns about them.
QEMU_ARGS: Final = (
    "-M",
    "pseries,x-vof=on",
    "-cpu",
    "power9",
    "-m",
    "1G",
    "-nographic",
    "-vga",
    "none",
    "-no-reboot",
)


# ---------------------------------------------------------------- corpus


def corpus_dir() -> Path | None:
    """The fetched corpus root (as corpus/fetch.sh computes it), or None if the fetch never completed."""
    env = os.environ.get("MCOUNTRW_CORPUS")
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    root = Path(env) if env else cache / "mcountrw" / "corpus"
    whole = all((root / stamp).is_file() for stamp in STAMPS)
    return root if whole and all(k.vmlinux(root / "root").is_file() for k in KERNELS.values()) else None


def _in_corpus(relative: str) -> Path | None:
    root = corpus_dir()
    return None if root is None else root / "root" / relative


def corpus_vmlinux() -> Path | None:
    return _in_corpus(KERNELS["6.1"].vmlinux_rel)


def corpus_modules_dir() -> Path | None:
    """The 6.1 `kernel/` tree of modules, e.g. `corpus_modules_dir() / "fs/nls/nls_utf8.ko"`."""
    return _in_corpus(KERNELS["6.1"].modules_rel)


def corpus_busybox() -> Path | None:
    return _in_corpus("bin/busybox")


class Corpus(NamedTuple):
    """The 6.1 kernel (the first corpus) and busybox; :func:`require_kernel` gives the others."""

    vmlinux: Path
    modules_dir: Path
    busybox: Path


class KernelFiles(NamedTuple):
    kernel: Kernel
    vmlinux: Path
    modules_dir: Path
    busybox: Path


# ---------------------------------------------------------------- pytest skip / fail


def _missing(reason: str) -> NoReturn:
    """Skip locally; in CI (MCOUNTRW_REQUIRE_TOOLS=1) a skip would hide a broken runner, so fail."""
    if os.environ.get("MCOUNTRW_REQUIRE_TOOLS") == "1":
        pytest.fail(f"{reason} (MCOUNTRW_REQUIRE_TOOLS=1)")
    pytest.skip(reason)


def require_tool(name: str) -> Path:
    found = shutil.which(name)
    if found is None:
        _missing(f"{name} not found on PATH")
    return Path(found)


def require_corpus() -> Corpus:
    vmlinux, modules_dir, busybox = corpus_vmlinux(), corpus_modules_dir(), corpus_busybox()
    if vmlinux is None or modules_dir is None or busybox is None:
        _missing("real corpus not fetched: run corpus/fetch.sh (or set MCOUNTRW_CORPUS)")
    for path in (modules_dir, busybox):
        if not path.exists():
            _missing(f"corpus incomplete: {path} is missing; re-run corpus/fetch.sh")
    return Corpus(vmlinux, modules_dir, busybox)


BE_KERNEL: Final = "be-7.2"  # corpus/build-be.sh's build, beside root/ in the corpus cache


class BeKernel(NamedTuple):
    """The big-endian 7.2 that corpus/build-be.sh builds from Debian's linux-source-7.2."""

    vmlinux: Path
    modules: Path  # its .ko files, in one directory


def require_be_kernel() -> BeKernel:
    """The big-endian kernel; skips (fails in CI) without it. Not one of :data:`KERNELS`: it is
    built here, not fetched, and its counts are the compiler's."""
    root = corpus_dir()
    if root is None or not (root / f".complete-{BE_KERNEL}").is_file():
        _missing("the big-endian kernel is not built: run corpus/fetch.sh (it runs corpus/build-be.sh)")
    return BeKernel(root / BE_KERNEL / "vmlinux", root / BE_KERNEL / "modules")


GCC_14: Final = "gcc-14"  # corpus/fetch.sh's Debian 13 cross gcc 14 for this machine, beside root/


def require_gcc14() -> list[str]:
    """The argv that runs Debian 13's powerpc64le cross gcc 14.2 (the compiler of the trixie 6.12)
    from the corpus; skips (fails in CI) without it. Its host libraries are trixie's, newer than
    this machine's glibc: the driver runs through trixie's loader, and so do the programs it
    starts (``-wrapper``). Use it with ``-S`` or ``-c`` (the assembler is this machine's)."""
    root = corpus_dir()
    if root is None or not (root / f".complete-{GCC_14}").is_file():
        _missing("Debian 13's cross gcc 14 is not fetched: run corpus/fetch.sh")
    base = root / GCC_14
    loader = base / "usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2"
    libs = f"{base}/usr/lib/x86_64-linux-gnu:{base}/lib/x86_64-linux-gnu"
    driver = base / "usr/bin/powerpc64le-linux-gnu-gcc-14"
    programs = base / "usr/libexec/gcc-cross/powerpc64le-linux-gnu/14"
    wrapper = f"{loader},--library-path,{libs}"
    return [str(loader), "--library-path", libs, str(driver), f"-B{programs}/", "-wrapper", wrapper]


def require_kernel(name: str) -> KernelFiles:
    """The files of corpus kernel ``name`` (a key of :data:`KERNELS`); skips (fails in CI) without them."""
    base = require_corpus()
    root = base.busybox.parent.parent
    kernel = KERNELS[name]
    vmlinux, modules_dir = kernel.vmlinux(root), kernel.modules(root)
    for path in (vmlinux, modules_dir):
        if not path.exists():
            _missing(f"corpus incomplete: {path} is missing; re-run corpus/fetch.sh")
    return KernelFiles(kernel, vmlinux, modules_dir, base.busybox)


# ---------------------------------------------------------------- console parsing


@dataclass(frozen=True, slots=True)
class BootResult:
    console: str  # guest console (hvc0) plus qemu's own messages, "\r\n" -> "\n"
    returncode: int | None  # qemu's exit status; None if we killed it at the timeout
    timed_out: bool
    seconds: float  # wall time of the qemu run
    ftrace_bug: bool  # "ftrace bug" / "ftrace failed" anywhere (ftrace_bug() prints both)
    ftrace_entries: int | None  # ftrace: allocating N entries in P pages
    ftrace_pages: tuple[int, int] | None  # ftrace: allocated N pages with M groups -> (N, M)
    traced_functions: frozenset[str]  # callees in the ftrace_dump_on_oops dump
    panicked: bool
    oopsed: bool  # an Oops, BUG or WARN ("cut here") anywhere
    insmod: dict[str, int]  # MCOUNTRW-INSMOD <name> rc=<n>
    tracer_rc: int | None  # MCOUNTRW-TRACER rc=<n>
    tainted: int | None  # MCOUNTRW-TAINTED <n>: /proc/sys/kernel/tainted after the insmods
    available_filter_functions: list[str] | None  # between MCOUNTRW-AFF-BEGIN/END
    done: bool  # the init script reached its end (MCOUNTRW-DONE)


_TIMESTAMP = re.compile(r"^\[\s*\d+\.\d+\] ?")
# A dumped function-tracer line: "swapper/-1   0..... 68870us : do_one_initcall <-kernel_init_freeable"
_TRACE_LINE = re.compile(r"^\S.*?\s\d+us : (\S+) <-(\S+)")


def unsigned_module(name: str, pattern: str, out: Path) -> Path:
    """Kernel ``name``'s module ``pattern`` (a glob below its ``kernel/`` tree, e.g.
    ``fs/nls/nls_utf8.ko*``), uncompressed and without its signature, at ``out``: what a test edits
    (an edited module's signature no longer matches, and the loader rejects it for that first)."""
    from rewriter.elf.compress import Compression, decompress
    from rewriter.elf.signature import parse_trailer

    src = next(require_kernel(name).modules_dir.glob(pattern))
    data = src.read_bytes()
    data = decompress(src, data, Compression.XZ) if src.suffix == ".xz" else data
    trailer = parse_trailer(data)
    out.write_bytes(data if trailer is None else data[: trailer.elf_end])
    return out


def _int_match(pattern: str, text: str) -> int | None:
    m = re.search(pattern, text)
    return int(m.group(1)) if m else None


def _traced_functions(lines: list[str]) -> frozenset[str]:
    """Callees from the lines after "Dumping ftrace buffer:" (printk prefixes stripped)."""
    names: set[str] = set()
    dumping = False
    for line in lines:
        body = _TIMESTAMP.sub("", line)
        if body.startswith("Dumping ftrace buffer:"):
            dumping = True
        elif dumping and (m := _TRACE_LINE.match(body)):
            names.add(m.group(1))
    return frozenset(names)


def _between_markers(lines: list[str], begin: str, end: str) -> list[str] | None:
    """Lines between two marker lines, minus kernel printk lines that the console interleaved."""
    if begin not in lines or end not in lines:
        return None
    inner = lines[lines.index(begin) + 1 : lines.index(end)]
    return [line for line in inner if not _TIMESTAMP.match(line)]


def parse_console(console: str, returncode: int | None, timed_out: bool, seconds: float) -> BootResult:
    lines = console.splitlines()
    pages = re.search(r"ftrace: allocated (\d+) pages with (\d+) groups", console)
    return BootResult(
        console=console,
        returncode=returncode,
        timed_out=timed_out,
        seconds=seconds,
        ftrace_bug=bool(re.search(r"ftrace (bug|failed)", console, re.IGNORECASE)),
        ftrace_entries=_int_match(r"ftrace: allocating (\d+) entries", console),
        ftrace_pages=(int(pages.group(1)), int(pages.group(2))) if pages else None,
        traced_functions=_traced_functions(lines),
        panicked="Kernel panic - not syncing" in console,
        oopsed=bool(re.search(r"Oops:|BUG:|-\[ cut here \]-", console)),
        insmod={m.group(1): int(m.group(2)) for m in re.finditer(r"MCOUNTRW-INSMOD (\S+) rc=(\d+)", console)},
        tracer_rc=_int_match(r"MCOUNTRW-TRACER rc=(\d+)", console),
        tainted=_int_match(r"MCOUNTRW-TAINTED (\d+)", console),
        available_filter_functions=_between_markers(lines, "MCOUNTRW-AFF-BEGIN", "MCOUNTRW-AFF-END"),
        done="MCOUNTRW-DONE" in lines,
    )


# ---------------------------------------------------------------- running qemu


def qemu_command(kernel: Path, append: str, initrd: Path | None = None) -> list[str]:
    if initrd is not None:
        append = f"{append} rdinit=/init"
    cmd = [QEMU, *QEMU_ARGS, "-kernel", str(kernel), "-append", append]
    if initrd is not None:
        cmd += ["-initrd", str(initrd)]
    return cmd


def boot(kernel: Path, append: str, initrd: Path | None = None, timeout: float = 60) -> BootResult:
    """Boot `kernel` until qemu exits (panic, poweroff) or `timeout` seconds pass, then kill it."""
    cmd = qemu_command(kernel, append, initrd)
    start = time.monotonic()
    # stdin must not be our terminal: -nographic would put it in raw mode and read Ctrl-A escapes.
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        out, _ = proc.communicate(timeout=timeout)
        timed_out = False
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
        timed_out = True
    seconds = time.monotonic() - start
    console = out.decode("utf-8", "replace").replace("\r\n", "\n")
    return parse_console(console, None if timed_out else proc.returncode, timed_out, seconds)


# ---------------------------------------------------------------- initramfs

# Applets the standard script uses, as /bin symlinks so any init script can say `#!/bin/sh`.
# A script that needs more can run `/bin/busybox --install -s /bin` after mounting /proc.
APPLETS: Final = (
    "sh",
    "mount",
    "insmod",
    "rmmod",
    "lsmod",
    "cat",
    "grep",
    "head",
    "wc",
    "dmesg",
    "sleep",
    "poweroff",
    "mkdir",
    "ls",
    "echo",
    "sync",
)

_S_IFDIR, _S_IFREG, _S_IFLNK, _S_IFCHR = 0o040000, 0o100000, 0o120000, 0o020000


def _cpio_entry(ino: int, name: str, mode: int, data: bytes = b"", rdev: tuple[int, int] = (0, 0)) -> bytes:
    """One "newc" (SVR4, no CRC) record: 110-byte ASCII header, name, data, each padded to 4 bytes.

    mtime, uid and gid are 0 so the same inputs give the same archive.
    """
    fields = (ino, mode, 0, 0, 1, 0, len(data), 0, 0, rdev[0], rdev[1], len(name) + 1, 0)
    header = b"070701" + b"".join(b"%08X" % f for f in fields)
    record = header + name.encode() + b"\0"
    record += b"\0" * (-len(record) % 4) + data
    return record + b"\0" * (-len(record) % 4)


def make_initramfs(out: Path, busybox: Path, modules: list[Path], script: str) -> Path:
    """Write a newc cpio: /init (`script`), /bin/busybox plus applet links, /modules/<name>.ko."""
    entries: list[tuple[str, int, bytes, tuple[int, int]]] = [
        (d, _S_IFDIR | 0o755, b"", (0, 0)) for d in ("bin", "dev", "proc", "sys", "modules")
    ]
    # The kernel's built-in initramfs usually has /dev/console already; init's stdio needs it.
    entries.append(("dev/console", _S_IFCHR | 0o600, b"", (5, 1)))
    entries.append(("bin/busybox", _S_IFREG | 0o755, busybox.read_bytes(), (0, 0)))
    entries += [(f"bin/{a}", _S_IFLNK | 0o777, b"busybox", (0, 0)) for a in APPLETS]
    entries += [(f"modules/{m.name}", _S_IFREG | 0o644, m.read_bytes(), (0, 0)) for m in modules]
    entries.append(("init", _S_IFREG | 0o755, script.encode(), (0, 0)))
    return _write_cpio(out, entries)


def make_program_initramfs(out: Path, init: Path, modules: list[Path]) -> Path:
    """Write a newc cpio whose /init is the program ``init`` (a static binary: the big-endian
    boots have no busybox), with /modules/<name>.ko and /modules/order naming them in load order."""
    entries: list[tuple[str, int, bytes, tuple[int, int]]] = [
        (d, _S_IFDIR | 0o755, b"", (0, 0)) for d in ("dev", "proc", "sys", "modules")
    ]
    entries.append(("dev/console", _S_IFCHR | 0o600, b"", (5, 1)))
    entries += [(f"modules/{m.name}", _S_IFREG | 0o644, m.read_bytes(), (0, 0)) for m in modules]
    order = "".join(f"{m.name}\n" for m in modules).encode()
    entries.append(("modules/order", _S_IFREG | 0o644, order, (0, 0)))
    entries.append(("init", _S_IFREG | 0o755, init.read_bytes(), (0, 0)))
    return _write_cpio(out, entries)


def _write_cpio(out: Path, entries: list[tuple[str, int, bytes, tuple[int, int]]]) -> Path:
    blob = b"".join(_cpio_entry(i + 1, name, mode, data, rdev) for i, (name, mode, data, rdev) in enumerate(entries))
    blob += _cpio_entry(0, "TRAILER!!!", 0)
    out.write_bytes(blob)
    return out


def module_load_script(module_names: list[str], extra: str = "", aff_grep: str | None = None) -> str:
    """The standard /init: load /modules/<name>.ko in order, show ftrace's view, power off.

    The full available_filter_functions is ~32k lines and takes ~4.5 s on the console under TCG;
    `aff_grep` (a grep pattern, e.g. `[nls_utf8]` as fixed string) prints only matching lines.
    Tracing is switched nop -> function with the filter cleared, because `ftrace=function` on the
    command line already selected "function" and re-selecting the current tracer is a no-op; this
    way every call site in the kernel and the modules is really enabled, then disabled again
    (`nop`) so poweroff isn't slowed by tracing every function under TCG.
    `extra` is shell run after the tracer step, before poweroff.
    """
    insmods = "\n".join(f'insmod /modules/{shlex.quote(n)}.ko; echo "MCOUNTRW-INSMOD {n} rc=$?"' for n in module_names)
    aff_filter = "" if aff_grep is None else f" | grep -F -e {shlex.quote(aff_grep)}"
    return f"""#!/bin/sh
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t tracefs tracefs /sys/kernel/tracing
T=/sys/kernel/tracing
{insmods}
echo "MCOUNTRW-TAINTED $(cat /proc/sys/kernel/tainted)"
echo MCOUNTRW-AFF-BEGIN
cat $T/available_filter_functions{aff_filter}
echo MCOUNTRW-AFF-END
echo nop > $T/current_tracer
echo > $T/set_ftrace_filter
echo function > $T/current_tracer; echo "MCOUNTRW-TRACER rc=$?"
echo nop > $T/current_tracer
{extra}
echo MCOUNTRW-DONE
poweroff -f
"""


# ---------------------------------------------------------------- memory dumps through QMP
#
# The guest's init prints READY_MARKER and sleeps; the host then stops the VM through a QMP socket,
# saves the ranges it wants, and quits qemu. On ppc64 book3s the kernel runs at physical 0 and its
# linear map is VA = LINEAR_MAP + physical, so vmlinux text is read with `pmemsave` at VA - LINEAR_MAP;
# module text lives in vmalloc space and is read with `memsave` (virtual, through CPU 0's MMU).

READY_MARKER: Final = "MCOUNTRW-READY"
LINEAR_MAP: Final = 0xC000000000000000
_SECTION_LINE = re.compile(r"^MCOUNTRW-SECTION (\S+) (\S+) 0x([0-9a-fA-F]+)\s*$", re.MULTILINE)


class MemRange(NamedTuple):
    """``size`` bytes at ``address``: guest physical (``physical``, QMP pmemsave) or virtual (memsave)."""

    address: int
    size: int
    physical: bool


@dataclass(frozen=True, slots=True)
class DumpResult:
    boot: BootResult  # the console up to qemu's exit (after the dump, `quit`)
    ready: bool  # the init script printed READY_MARKER before the timeout
    memory: dict[MemRange, bytes]  # what was saved, one entry per requested range


def ready_script(module_names: list[str]) -> str:
    """An /init that loads /modules/<name>.ko in order, prints where each loaded module's sections
    are (``MCOUNTRW-SECTION <module> <section> 0x<address>``, every file of
    /sys/module/<module>/sections), prints READY_MARKER and sleeps until the host stops the VM.
    Module names in /sys use ``_`` for ``-``."""
    lines = []
    for name in module_names:
        sysname = name.replace("-", "_")
        lines.append(f'insmod /modules/{shlex.quote(name)}.ko; echo "MCOUNTRW-INSMOD {name} rc=$?"')
        lines.append(
            f"for f in /sys/module/{sysname}/sections/.[!.]* /sys/module/{sysname}/sections/*; do "
            f'[ -f "$f" ] && echo "MCOUNTRW-SECTION {sysname} ${{f##*/}} $(cat "$f")"; done'
        )
    body = "\n".join(lines)
    return f"""#!/bin/sh
mount -t proc proc /proc
mount -t sysfs sysfs /sys
{body}
echo {READY_MARKER}
sleep 600
poweroff -f
"""


def module_sections(console: str) -> dict[tuple[str, str], int]:
    """(module, section) -> load address, from the ``MCOUNTRW-SECTION`` lines of :func:`ready_script`."""
    return {(m.group(1), m.group(2)): int(m.group(3), 16) for m in _SECTION_LINE.finditer(console)}


class _Qmp:
    """A minimal QMP client over a unix socket: one command at a time, events skipped."""

    def __init__(self, path: Path, timeout: float) -> None:
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.settimeout(timeout)
        self._sock.connect(str(path))
        self._file = self._sock.makefile("rwb")
        self._read()  # the greeting
        self.command("qmp_capabilities")

    def _read(self) -> dict[str, object]:
        while True:
            line = self._file.readline()
            if not line:
                raise ConnectionError("QMP socket closed")
            reply: dict[str, object] = json.loads(line)
            if "event" not in reply:
                return reply

    def command(self, name: str, **arguments: object) -> object:
        self._file.write(json.dumps({"execute": name, "arguments": arguments}).encode() + b"\n")
        self._file.flush()
        reply = self._read()
        if "error" in reply:
            raise RuntimeError(f"QMP {name} {arguments}: {reply['error']}")
        return reply.get("return")

    def close(self) -> None:
        self._file.close()
        self._sock.close()


def _watch_console(proc: subprocess.Popen[bytes], out: list[bytes], ready: threading.Event, marker: str) -> None:
    """Read qemu's stdout into ``out`` until EOF; set ``ready`` once a line is exactly ``marker``."""
    assert proc.stdout is not None
    pattern = re.compile(rb"(^|\n)" + re.escape(marker.encode()) + rb"\r?\n")
    tail = b"\n"
    while chunk := os.read(proc.stdout.fileno(), 65536):
        out.append(chunk)
        tail = tail[-len(marker) - 4 :] + chunk
        if pattern.search(tail):
            ready.set()
    ready.set()  # EOF: wake the waiter (it checks the marker itself)


SAVE_ATTEMPTS: Final = 20


def _save(qmp: _Qmp, ranges: Sequence[MemRange], workdir: Path) -> dict[MemRange, bytes]:
    """Stop the VM and save each range to a file in ``workdir``; read them back. ``memsave``
    translates through CPU 0's MMU as it stands: stopped while it runs user code (the init script's
    shell or ``sleep``; ~2 boots in 37 here, NIP 0x100be678), the kernel's vmalloc addresses are not
    readable and QMP says ``Invalid addr``. Then the VM runs a moment and the whole save is redone."""
    for attempt in range(SAVE_ATTEMPTS):
        try:
            return _save_once(qmp, ranges, workdir)
        except RuntimeError:
            if attempt == SAVE_ATTEMPTS - 1 or all(r.physical for r in ranges):
                raise
            qmp.command("cont")
            time.sleep(0.05)
    raise AssertionError("unreachable")


def _save_once(qmp: _Qmp, ranges: Sequence[MemRange], workdir: Path) -> dict[MemRange, bytes]:
    qmp.command("stop")
    memory: dict[MemRange, bytes] = {}
    for i, r in enumerate(ranges):
        path = workdir / f"mem{i}.bin"
        val = r.address - (1 << 64) if r.address >= 1 << 63 else r.address  # QMP's `val` is an int64
        if r.physical:
            qmp.command("pmemsave", val=val, size=r.size, filename=str(path))
        else:
            qmp.command("memsave", val=val, size=r.size, filename=str(path), **{"cpu-index": 0})
        memory[r] = path.read_bytes()
        path.unlink()
    return memory


def boot_and_dump(
    kernel: Path,
    append: str,
    initrd: Path,
    ranges: Callable[[str], Sequence[MemRange]],
    timeout: float = 90,
    marker: str = READY_MARKER,
) -> DumpResult:
    """Boot `kernel` with a QMP socket; when the console shows a line `marker` (see
    :func:`ready_script`), stop the VM, save the memory ``ranges(console so far)`` names, and quit.
    Without the marker (panic, timeout) nothing is saved and ``ready`` is False."""
    workdir = Path(tempfile.mkdtemp(prefix="mcountrw-qmp-"))  # short: a unix socket path is <= 107 bytes
    sock = workdir / "qmp.sock"
    cmd = [*qemu_command(kernel, append, initrd), "-qmp", f"unix:{sock},server=on,wait=off"]
    start = time.monotonic()
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    out: list[bytes] = []
    event = threading.Event()
    reader = threading.Thread(target=_watch_console, args=(proc, out, event, marker), daemon=True)
    reader.start()
    memory: dict[MemRange, bytes] = {}
    try:
        event.wait(timeout)
        text = b"".join(out).decode("utf-8", "replace").replace("\r\n", "\n")
        ready = f"\n{marker}\n" in f"\n{text}"
        if ready:
            qmp = _Qmp(sock, timeout)
            try:
                memory = _save(qmp, ranges(text), workdir)
                qmp.command("quit")
            finally:
                qmp.close()
        returncode = _finish(proc, reader)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        shutil.rmtree(workdir, ignore_errors=True)
    console = b"".join(out).decode("utf-8", "replace").replace("\r\n", "\n")
    result = parse_console(console, returncode, not ready, time.monotonic() - start)
    return DumpResult(result, ready, memory)


def _finish(proc: subprocess.Popen[bytes], reader: threading.Thread) -> int | None:
    """Wait briefly for qemu to exit after `quit` (kill it otherwise) and for the console reader."""
    try:
        code: int | None = proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        code = None
    reader.join(timeout=10)
    return code
