"""Which records the kernel's ftrace_process_locs() skips, read from its code (rewriter.locs).

The loop changed in 2025: the newer one (Debian 6.12.107, 7.2.13) skips a zero record and, in the
core kernel, a record outside kernel text, before ftrace_call_adjust(); the older one (Debian 6.1)
tests only what ftrace_call_adjust() returns. qemu judges the difference on the real kernels: a
record moved outside the text turns ftrace off on 6.1 and is skipped on 6.12."""

from __future__ import annotations

import json
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from boot import QEMU, STANDARD_APPEND, boot, require_kernel, require_tool
from conftest import FIXTURES, unwrapped

from rewriter.boot import boot_of
from rewriter.elf.image import Image
from rewriter.elf.symbols import functions
from rewriter.locs import ZERO_ADJUSTED, Locs, kernel_locs
from rewriter.sites import scan

pytestmark = pytest.mark.corpus


def process_locs(image: Image) -> Locs:
    return kernel_locs(image, functions(image))


def mcountrw(*args: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "rewriter", *map(str, args)], capture_output=True, text=True)


LOOPS = [("6.1", Locs.ADJUSTS_FIRST), ("6.12", Locs.CHECKS_TEXT), ("7.2", Locs.CHECKS_TEXT)]


@pytest.mark.parametrize(("name", "locs"), LOOPS)
def test_each_debian_kernel_says_which_loop_it_has(name: str, locs: Locs) -> None:
    assert process_locs(Image.load(require_kernel(name).vmlinux)) is locs


@pytest.mark.parametrize(("name", "locs"), LOOPS)
def test_scan_json_says_which_loop_the_kernel_has(name: str, locs: Locs) -> None:
    proc = mcountrw("scan", "--format", "json", require_kernel(name).vmlinux)
    assert proc.returncode == 0 and json.loads(proc.stdout)["images"][0]["process_locs"] == locs.value


def test_a_file_that_is_no_vmlinux_says_nothing() -> None:
    for fixture in ("prof-le", "prof-le.o", "patchable-le.o"):
        assert process_locs(Image.load(FIXTURES / "bin" / fixture)) is Locs.UNKNOWN
    proc = mcountrw("scan", "--format", "json", FIXTURES / "bin" / "patchable-le.o")
    assert json.loads(proc.stdout)["images"][0]["process_locs"] == "unknown"


def _anomalies(path: Path) -> list[dict[str, str]]:
    proc = mcountrw("audit", "--format", "json", path)
    assert proc.returncode in (0, 1), proc.stderr
    return [{"kind": a["kind"], "severity": a["severity"]} for a in json.loads(proc.stdout)["images"][0]["anomalies"]]


def _symbol(image: Image, name: str) -> tuple[int, int]:
    """(st_value, st_size) of the first symbol called ``name``."""
    assert image.symbols is not None
    row = image.symbols.table[image.symbols.find(name)[0]]
    return int(row["st_value"]), int(row["st_size"])


def _record_outside_text(vmlinux: Path, out: Path, index: int = 10) -> int:
    """A copy of ``vmlinux`` whose record ``index`` points 4 KiB past ``_etext``: its slot's
    R_PPC64_RELATIVE addend, the value relocate() writes at boot. Returns that value."""
    image = Image.load(vmlinux)
    slot = _symbol(image, "__start_mcount_loc")[0] + 8 * index
    outside = _symbol(image, "_etext")[0] + 0x1000
    dyn = image.section(".rela.dyn")
    assert dyn is not None
    rows = image.relocations(dyn)
    (row,) = np.flatnonzero(rows["r_offset"] == slot)
    at = dyn.offset + int(row) * rows.itemsize + rows.dtype.fields["r_addend"][1]
    data = bytearray(image.data)
    data[at : at + 8] = outside.to_bytes(8, "little")
    out.write_bytes(data)
    return outside


@pytest.fixture(scope="module")
def outside_text(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, int]]:
    """Per kernel, 6.1 and 6.12: the copy of :func:`_record_outside_text` and the place its record
    names, made once for the scan test and the boot test."""
    made = {}
    for name in ("6.1", "6.12"):
        copy = tmp_path_factory.mktemp("outside") / f"vmlinux-{name}"
        made[name] = (copy, _record_outside_text(require_kernel(name).vmlinux, copy))
    return made


@pytest.mark.slow
def test_a_record_outside_text_turns_ftrace_off_on_6_1_and_is_skipped_on_6_12(
    outside_text: dict[str, tuple[Path, int]],
) -> None:
    """6.1's loop has no text check: init reads the words there, refuses them, ftrace_bug(). The
    scan and the audit said "skipped, harmless" for every kernel; now only where the code checks."""
    old, place = outside_text["6.1"]
    result = scan(Image.load(old))
    assert not result.records.skipped and [p.place for p in result.records.unmatched] == [place]
    assert boot_of(result).ftrace_off is not None
    assert {"kind": "dangling", "severity": "error"} in _anomalies(old)

    new, place = outside_text["6.12"]
    result = scan(Image.load(new))
    assert [p.place for p in result.records.skipped] == [place] and not result.records.unmatched
    assert boot_of(result).ftrace_off is None


@pytest.mark.boot
def test_qemu_agrees_a_record_outside_text_is_fatal_on_6_1_only(outside_text: dict[str, tuple[Path, int]]) -> None:
    """The judge: the same edit boots each kernel; 6.1 prints its ftrace bug, 6.12 skips the record.
    The two boots run side by side (each qemu takes one core)."""
    require_tool(QEMU)
    bugs = {"6.1": True, "6.12": False}
    with ThreadPoolExecutor(len(bugs)) as pool:
        results = dict(
            zip(bugs, pool.map(lambda n: boot(outside_text[n][0], STANDARD_APPEND, timeout=90), bugs), strict=True)
        )
    for name, bug in bugs.items():
        result = results[name]
        assert not result.timed_out, result.console[-3000:]
        assert result.ftrace_bug is bug, (name, result.console[-3000:])


def _older_loop(vmlinux: Path, out: Path) -> None:
    """A copy whose ftrace_process_locs() forms none of the text bounds (its body past the global
    entry's two words made nops): what the tool reads as the older loop. Not bootable; read only."""
    image = Image.load(vmlinux)
    addr, size = _symbol(image, "ftrace_process_locs")
    start = image.offset_of(addr)
    data = bytearray(image.data)
    nop = (0x60000000).to_bytes(4, "little")
    data[start + 8 : start + size] = nop * ((size - 8) // 4)
    out.write_bytes(data)


@pytest.mark.slow
def test_dropping_a_record_from_a_patchable_kernel_with_the_older_loop_is_refused(tmp_path: Path) -> None:
    """On patchable, ftrace_call_adjust() adds 4: the older loop turns a zeroed record into
    address 4, init refuses it, ftrace is off. The rewrite refuses; a copy already dropped says why."""
    kernel = require_kernel("6.12")
    older = tmp_path / "vmlinux"
    _older_loop(kernel.vmlinux, older)
    assert process_locs(Image.load(older)) is Locs.ADJUSTS_FIRST
    out = tmp_path / "out"
    proc = mcountrw("nop", older, "-o", out, "--only", "vfs_read", "--drop-records")
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert proc.stderr.startswith(f"mcountrw: error: {older}: ") and ZERO_ADJUSTED in proc.stderr
    assert not out.exists() and not Path(f"{out}.mcountrw.jsonl").exists()

    dropped = tmp_path / "dropped"  # the newer loop lets it drop; then read it as the older one
    assert mcountrw("nop", kernel.vmlinux, "-o", dropped, "--only", "vfs_read", "--drop-records").returncode == 0
    _older_loop(dropped, dropped)
    result = scan(Image.load(dropped))
    assert result.records.zeroed == 1 and ZERO_ADJUSTED in (boot_of(result).ftrace_off or "")
    assert [a for a in _anomalies(dropped) if a["kind"] == "zeroed-records"] == [
        {"kind": "zeroed-records", "severity": "error"}
    ]


@pytest.mark.slow
def test_prenop_holds_the_modules_to_the_loop_of_the_vmlinux_named_with_them(tmp_path: Path) -> None:
    """The loop runs for modules too: a patchable module whose records were dropped turns ftrace
    off once it loads on a kernel with the older loop. prenop reads the vmlinux of its run and
    refuses those modules; with the newer loop (Debian's) the same run drops them."""
    kernel = require_kernel("6.12")
    module = next(kernel.modules_dir.rglob("nls_utf8.ko.xz"))
    policy = tmp_path / "p.policy"
    policy.write_text("default nop\n")
    for older in (True, False):
        tree = tmp_path / ("older" if older else "newer")
        tree.mkdir()
        vmlinux = tree / "vmlinux"
        if older:
            _older_loop(kernel.vmlinux, vmlinux)
        else:
            vmlinux.write_bytes(kernel.vmlinux.read_bytes())
        (tree / module.name).write_bytes(module.read_bytes())
        args = ["prenop", "--policy", policy, "--dry-run", "--strip-signature", vmlinux, tree / module.name]
        proc = mcountrw(*args)
        said = proc.stdout + proc.stderr
        checked = mcountrw("policy", "check", policy, vmlinux, tree / module.name)  # says so before the run
        warned = [line for line in unwrapped(checked.stdout).splitlines() if ZERO_ADJUSTED in line]
        if older:
            assert proc.returncode == 2 and "read in the vmlinux named with it" in said, said
            assert checked.returncode == 1 and len(warned) == 2, checked.stdout
            assert warned[1].startswith("warning: 1 module: nop on ") and "prenop refuses it" in warned[1]
        else:
            assert proc.returncode == 0 and "read in the vmlinux" not in said, said
            assert checked.returncode == 0 and not warned, checked.stdout
            assert "no patchable vmlinux in the run" not in said, said
    # The module alone: dropped, and said to be unchecked (no kernel's loop to hold it to).
    alone = mcountrw("prenop", "--policy", policy, "--dry-run", "--strip-signature", tmp_path / "newer" / module.name)
    unchecked = [line for line in alone.stdout.splitlines() if "no patchable vmlinux in the run" in line]
    assert alone.returncode == 0 and len(unchecked) == 1, alone.stdout
    assert unchecked[0].startswith("warning: ") and unchecked[0].endswith(f"First: {module.name}")


@pytest.mark.slow
def test_nop_of_a_module_holds_its_records_to_the_kernel_named_with_kernel(tmp_path: Path) -> None:
    """A module alone does not say which kernel loads it: dropping a patchable module's records
    warns that this was not checked; ``--kernel VMLINUX`` checks, refusing under the older loop
    (nothing written) and saying nothing more under the newer one."""
    kernel = require_kernel("6.12")
    module = next(kernel.modules_dir.rglob("nls_utf8.ko.xz"))
    older = tmp_path / "vmlinux"
    _older_loop(kernel.vmlinux, older)
    drop = ("--only", "char2uni", "--drop-records", "--strip-signature")
    runs = {"alone": (), "newer": ("--kernel", kernel.vmlinux), "older": ("--kernel", older)}
    procs = {name: mcountrw("nop", module, "-o", tmp_path / f"{name}.ko.xz", *drop, *extra)
             for name, extra in runs.items()}  # fmt: skip
    warnings = {
        name: [w for w in p.stderr.splitlines() if w.startswith("mcountrw: warning:")] for name, p in procs.items()
    }
    warning = warnings["alone"]
    assert procs["alone"].returncode == 0 and len(warning) == 1, procs["alone"].stderr
    assert warning[0].startswith(f"mcountrw: warning: {module}: 1 record dropped from a patchable module without")
    assert warning[0].endswith("--kernel VMLINUX checks")
    assert procs["newer"].returncode == 0 and not warnings["newer"], procs["newer"].stderr
    refused = procs["older"]
    assert refused.returncode == 2 and refused.stderr.count("\n") == 1, refused.stderr
    assert ZERO_ADJUSTED in refused.stderr and "read in the vmlinux named with it" in refused.stderr
    assert not (tmp_path / "older.ko.xz").exists() and not (tmp_path / "older.ko.xz.mcountrw.jsonl").exists()
    assert (tmp_path / "alone.ko.xz").read_bytes() == (tmp_path / "newer.ko.xz").read_bytes()


@pytest.mark.slow
def test_a_kernel_of_another_generation_does_not_hold_a_module_to_its_loop(tmp_path: Path) -> None:
    """6.1 has the older loop, but an mprofile kernel cannot load a patchable module at all: named
    with --kernel it is refused as not the module's kernel (it was refused for "adds 4", false on
    mprofile); named in a prenop run, the module fails as built for another release than the run's
    vmlinux (tests/test_review_release.py; it was dropped as unchecked), never for "adds 4"."""
    module = next(require_kernel("6.12").modules_dir.rglob("nls_utf8.ko.xz"))
    old = require_kernel("6.1").vmlinux
    out = tmp_path / "m.ko.xz"
    proc = mcountrw(
        "nop", module, "-o", out, "--only", "char2uni", "--drop-records", "--strip-signature", "--kernel", old
    )
    assert proc.returncode == 2 and proc.stderr == (
        f"mcountrw: error: --kernel {old}: a kernel of mprofile generation, and {module} is a patchable module: "
        "not the kernel that loads it\n"
    ), proc.stderr
    assert not out.exists() and not list(tmp_path.iterdir())
    policy = tmp_path / "p.policy"
    policy.write_text("default keep\nnop char2uni\n")
    run = mcountrw("prenop", "--policy", policy, "--dry-run", "--strip-signature", old, module)
    said = run.stdout + run.stderr
    assert run.returncode == 2 and ZERO_ADJUSTED not in said, said
    assert f"{module}: built for 6.12.107+deb13-powerpc64le (its vermagic), and this run's vmlinux {old}" in said
    checked = mcountrw("policy", "check", policy, old, module)
    assert ZERO_ADJUSTED not in checked.stdout and "prenop refuses it" in checked.stdout, checked.stdout


@pytest.mark.slow
def test_audit_holds_a_modules_zeroed_records_to_the_loop_of_its_vmlinux(tmp_path: Path) -> None:
    """A patchable module with a dropped record is fine for a kernel with the newer loop (a note)
    and fatal once loaded by one with the older loop: audited with such a vmlinux, an error."""
    kernel = require_kernel("6.12")
    module = next(kernel.modules_dir.rglob("nls_utf8.ko.xz"))
    dropped = tmp_path / "nls_utf8.ko.xz"
    done = mcountrw("nop", module, "-o", dropped, "--only", "char2uni", "--drop-records", "--strip-signature")
    assert done.returncode == 0, done.stderr
    older = tmp_path / "vmlinux"
    _older_loop(kernel.vmlinux, older)
    for vmlinux, severity in ((kernel.vmlinux, "note"), (older, "error")):
        proc = mcountrw("audit", "--format", "json", vmlinux, dropped)
        images = {Path(i["path"]).name: i for i in json.loads(proc.stdout)["images"]}
        zeroed = [a for a in images[dropped.name]["anomalies"] if a["kind"] == "zeroed-records"]
        assert [a["severity"] for a in zeroed] == [severity], zeroed


def test_generation_ool_does_not_get_round_the_older_loops_refusal(tmp_path: Path) -> None:
    """A patchable vmlinux never fits ool (an ool kernel names its stub areas): --generation ool
    there is a contradiction a rewrite refuses, not a way past the older loop's refusal to drop
    records (a review found a first version of detect.Detect.also letting it through: ftrace off)."""
    older = tmp_path / "vmlinux"
    _older_loop(require_kernel("6.12").vmlinux, older)
    out = tmp_path / "out"
    for extra in ((), ("--generation", "ool")):
        proc = mcountrw("nop", older, "-o", out, "--only", "vfs_read", "--drop-records", *extra)
        assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and not out.exists(), proc.stderr
    assert "contradicts what the image says: patchable" in proc.stderr
    scanned = mcountrw("scan", "--generation", "ool", older)
    assert "--generation ool overrides what the image says: patchable" in scanned.stdout
