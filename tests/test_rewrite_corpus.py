"""Rewriting the real Debian kernel: round trips are byte-exact, and the results boot and load."""

from __future__ import annotations

import hashlib
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pytest
from boot import STANDARD_APPEND, boot, counts, make_initramfs, module_load_script

from rewriter.elf.image import Image
from rewriter.errors import NothingToDo
from rewriter.files import apply_file, undo_file, verify_files
from rewriter.rewrite import Options, Selection
from rewriter.sites import scan
from rewriter.states import SiteState

NOP_ALL = Options(SiteState.NOPPED, drop_records=True, strip_signature=True)


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _log(out: Path) -> Path:
    return out.with_name(out.name + ".mcountrw.jsonl")


def _round_trip(args: tuple[Path, Path]) -> tuple[str, bool, bool, bool]:
    """nop everything (mflr and bl, records dropped, signature stripped), verify, tamper-verify, undo."""
    src, work = args
    out = work / src.name
    try:
        apply_file(src, out, Selection(), NOP_ALL)
    except NothingToDo:
        # a module without any site is refused, not copied; it must truly have none
        return str(src), not scan(Image.load(src)).sites, not out.exists(), True
    ok = verify_files(src, out, _log(out)).ok
    data = bytearray(out.read_bytes())
    data[len(data) // 2] ^= 0x40
    tampered = work / (src.name + ".tampered")
    tampered.write_bytes(data)
    caught = not verify_files(src, tampered, _log(out)).ok
    back = work / (src.name + ".back")
    undo_file(out, _log(out), back)
    same = back.read_bytes() == src.read_bytes()
    for p in (out, _log(out), tampered, back):
        p.unlink()
    return str(src), ok, caught, same


def test_vmlinux_nop_undo_is_sha256_identical(corpus, tmp_path: Path) -> None:
    _, ok, caught, same = _round_trip((corpus.vmlinux, tmp_path))
    assert ok and caught and same


@pytest.mark.slow
def test_every_module_round_trips_byte_for_byte(corpus, tmp_path: Path) -> None:
    modules = sorted(corpus.modules_dir.rglob("*.ko"))
    assert len(modules) == 3_126
    dirs = []
    for i in range(len(modules)):
        d = tmp_path / str(i)
        d.mkdir()
        dirs.append(d)
    with ProcessPoolExecutor(2) as pool:
        results = list(pool.map(_round_trip, zip(modules, dirs, strict=True), chunksize=32))
    assert [r for r in results if not all(r[1:])] == []


def test_undo_restores_the_module_signature(corpus, tmp_path: Path) -> None:
    src = corpus.modules_dir / "fs/nls/nls_utf8.ko"
    out = tmp_path / "nls_utf8.ko"
    apply_file(src, out, Selection(only=("char2uni",)), NOP_ALL)
    assert Image.load(out).signature is None
    back = tmp_path / "back.ko"
    undo_file(out, _log(out), back)
    assert _sha(back) == _sha(src) and Image.load(back).signature is not None


# -- booting --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def original_boot(corpus):
    return boot(corpus.vmlinux, STANDARD_APPEND)


@pytest.mark.boot
def test_original_kernel_traces_do_one_initcall(original_boot) -> None:
    assert original_boot.ftrace_entries == counts("6.1").records
    assert not original_boot.ftrace_bug
    assert "do_one_initcall" in original_boot.traced_functions


@pytest.mark.boot
def test_all_but_do_one_initcall_prenopped_boots_clean(corpus, tmp_path: Path) -> None:
    out = tmp_path / "vmlinux"
    apply_file(
        corpus.vmlinux, out, Selection(exclude=("do_one_initcall",)), Options(SiteState.NOPPED, drop_records=True)
    )
    result = scan(Image.load(out))
    # and the weak body after it, which 6.1 lists (and --exclude matches) as do_one_initcall
    assert [(result.name_of(s), s.state) for s in result.sites] == [("do_one_initcall", SiteState.ENABLED)] * 2
    assert result.records.zeroed == 33_688
    r = boot(out, STANDARD_APPEND)
    assert r.panicked and not r.ftrace_bug
    assert "do_one_initcall" in r.traced_functions
    assert r.ftrace_pages == (8, 1)  # 13 pages with 3 groups in the original


# The standard filter and one more function, traced on every boot: with do_one_initcall gone, what
# shows that the tracer ran and its buffer was dumped, so that an absence from the dump means something.
TWO_FILTERS = STANDARD_APPEND.replace(
    "ftrace_filter=do_one_initcall", "ftrace_filter=do_one_initcall,kernel_init_freeable"
)


@pytest.mark.boot
def test_do_one_initcall_alone_prenopped_is_no_longer_traced(corpus, tmp_path: Path) -> None:
    """Absence alone passes on a boot whose dump never happened (no tracer, a panic before the
    dump, an empty buffer): kernel_init_freeable, filtered too, must be in the same dump."""
    out = tmp_path / "vmlinux"
    apply_file(corpus.vmlinux, out, Selection(only=("do_one_initcall",)), Options(SiteState.NOPPED, drop_records=True))
    r = boot(out, TWO_FILTERS)
    assert r.panicked and not r.ftrace_bug, r.console[-3000:]
    assert "Dumping ftrace buffer:" in r.console, r.console[-3000:]
    assert "kernel_init_freeable" in r.traced_functions, sorted(r.traced_functions)  # the tracer works...
    assert "do_one_initcall" not in r.traced_functions  # ...and the nopped function is gone from it


@pytest.mark.boot
def test_prenopped_without_dropping_records_is_an_ftrace_bug(corpus, tmp_path: Path) -> None:
    """The negative control: the kernel checks every recorded site, so the check is live."""
    out = tmp_path / "vmlinux"
    apply_file(corpus.vmlinux, out, Selection(only=("do_one_initcall",)), Options(SiteState.NOPPED, keep_records=True))
    r = boot(out, STANDARD_APPEND)
    assert r.ftrace_bug


@pytest.mark.boot
def test_prenopped_modules_load_and_keep_only_kept_functions(corpus, tmp_path: Path) -> None:
    """nls_utf8 (no dependencies) with char2uni nopped, nls_cp437 with all but two nopped, and
    binfmt_misc (15 sites, no dependencies) with the five bm_*_read/_write handlers kept."""
    mods = corpus.modules_dir
    plans = {
        "nls_utf8": (mods / "fs/nls/nls_utf8.ko", Selection(only=("char2uni",))),
        "binfmt_misc": (mods / "fs/binfmt_misc.ko", Selection(exclude=("bm_*_read", "bm_*_write"))),
        "nls_cp437": (mods / "fs/nls/nls_cp437.ko", Selection(exclude=("uni2char", "init_nls_cp437"))),
    }
    built = []
    for src, sel in plans.values():
        out = tmp_path / src.name
        apply_file(src, out, sel, NOP_ALL)
        built.append(out)
    ramfs = make_initramfs(tmp_path / "initrd.cpio", corpus.busybox, built, module_load_script(list(plans)))
    r = boot(corpus.vmlinux, STANDARD_APPEND, initrd=ramfs, timeout=120)
    assert r.insmod == {name: 0 for name in plans}
    assert r.tracer_rc == 0
    aff = set(r.available_filter_functions or [])
    assert "char2uni [nls_utf8]" not in aff and "uni2char [nls_utf8]" in aff
    kept = {"bm_status_read", "bm_entry_read", "bm_register_write", "bm_entry_write", "bm_status_write"}
    assert {f.split()[0] for f in aff if f.endswith("[binfmt_misc]")} == kept
    assert {f for f in aff if f.endswith("[nls_cp437]")} == {"uni2char [nls_cp437]", "init_nls_cp437 [nls_cp437]"}
