"""Rewriting the patchable (6.12) and ool (7.2) kernels offline.

The kernel's boot-time ftrace init accepts at a recorded place only the words the compiler built
there, so on these generations pre-nopping drops records and writes no word. Shown here: the
vmlinux recipe (slot zeroed, its R_PPC64_RELATIVE moved past DT_RELASZ), the module recipe (the
record's R_PPC64_ADDR64 removed), the ool stub counts, the refusals, byte-exact undo of both
trees with their .ko.xz bytes, and the results booted under qemu (the judge).
"""

from __future__ import annotations

import fnmatch
import hashlib
import lzma
import shutil
import subprocess
import sys
import time
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

import numpy as np
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
from conftest import FIXTURES

from rewriter.batch import map_chunks
from rewriter.edits import BytesEdit, RelaEdit, WordWrite, apply_edits
from rewriter.elf import structs as S
from rewriter.elf.compress import Compression, decompress, recipe_of
from rewriter.elf.dynamic import dynamic_value, processed_relative
from rewriter.elf.image import Image
from rewriter.errors import ImageError, NothingToDo, PlanRejected
from rewriter.files import apply_file, undo_file, verify_files
from rewriter.generations import Generation
from rewriter.log import load
from rewriter.rewrite import Options, Selection
from rewriter.sites import scan
from rewriter.states import SiteState, Slot

NOP_DROP = Options(SiteState.NOPPED, drop_records=True, strip_signature=True)
NEW = ["6.12", "7.2"]  # their counts are tests/boot.py's
# The boots below run on the 64k-page builds too: a second configuration of each generation.
BOOT_KERNELS = [*NEW, "6.12-64k", "7.2-64k"]


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _log(out: Path) -> Path:
    return out.with_name(out.name + ".mcountrw.jsonl")


def _cli(*args: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "rewriter", *map(str, args)], capture_output=True, text=True, timeout=300
    )


def _one_line_error(proc: subprocess.CompletedProcess[str], *words: str) -> str:
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and lines[0].startswith("mcountrw: error: "), proc.stderr
    for w in words:
        assert w in lines[0], lines[0]
    return lines[0]


# -- vmlinux ---------------------------------------------------------------------------------


@pytest.mark.corpus
@pytest.mark.parametrize("name", NEW)
def test_vmlinux_nop_drops_every_record_writes_no_word_and_undoes_exactly(name: str, tmp_path: Path) -> None:
    k = require_kernel(name)
    out = tmp_path / "vmlinux"
    r = apply_file(k.vmlinux, out, Selection(), NOP_DROP).rewrite
    assert not r.sites and len(r.dropped) == counts(name).records and r.unchanged == counts(name).records
    assert not [e for e in r.edits if isinstance(e, WordWrite)]
    after = scan(Image.load(out))
    assert after.records.count == 0 and after.records.zeroed == counts(name).records
    assert verify_files(k.vmlinux, out, _log(out)).ok
    tampered = tmp_path / "tampered"
    data = bytearray(out.read_bytes())
    data[len(data) // 2] ^= 0x40
    tampered.write_bytes(data)
    assert not verify_files(k.vmlinux, tampered, _log(out)).ok
    undo_file(out, _log(out), tmp_path / "back")
    assert _sha(tmp_path / "back") == _sha(k.vmlinux)


@pytest.mark.corpus
@pytest.mark.parametrize("name", NEW)
def test_a_dropped_record_is_zeroed_and_its_relative_leaves_the_processed_block(name: str, tmp_path: Path) -> None:
    """Zeroing alone does nothing (relocate() writes the addend back): the relocation moves past
    DT_RELASZ, which drops by 24, and DT_RELACOUNT by 1; `.dynamic` is read by section."""
    k = require_kernel(name)
    before = Image.load(k.vmlinux)
    site = next(s for s in scan(before).sites if s.function == "do_one_initcall")
    out = tmp_path / "vmlinux"
    apply_file(k.vmlinux, out, Selection(only=("do_one_initcall",)), NOP_DROP)
    after = Image.load(out)
    assert not [s for s in scan(after).sites if s.function == "do_one_initcall"]
    assert scan(after).records.count == counts(name).records - 1
    for tag, less in ((S.DT_RELASZ, 24), (S.DT_RELACOUNT, 1)):
        assert dynamic_value(after, tag) == (dynamic_value(before, tag) or 0) - less
    old_rel, new_rel = processed_relative(before), processed_relative(after)
    assert old_rel is not None and new_rel is not None and len(new_rel) == len(old_rel) - 1
    gone = old_rel[old_rel["r_addend"].astype(np.uint64) == np.uint64(site.record or 0)]
    assert len(gone) == 1 and gone["r_offset"][0] not in new_rel["r_offset"]
    log = load(_log(out))
    assert next(e.why for e in log.edits if isinstance(e, BytesEdit)) == "__mcount_loc entry"
    rela_dyn = before.section(".rela.dyn")
    assert rela_dyn is not None
    # moved to follow every other row: the end of the table, past what DT_RELASZ covers
    assert [e.keep for e in log.edits if isinstance(e, RelaEdit)] == [rela_dyn.size // 24 - 1]


@pytest.mark.corpus
def test_ool_stub_counts_are_logged_before_and_after(tmp_path: Path) -> None:
    """7.2: the stubs are sized at build time, one per record; dropping the .init.text records frees
    init stubs and leaves the text areas as they were."""
    k = require_kernel("7.2")
    out = tmp_path / "vmlinuz"
    apply_file(k.vmlinux, out, Selection(sections=(".init.text",)), NOP_DROP)
    stubs = load(_log(out)).header.summary["ool_stubs"]
    before = {a["area"]: (a["stubs"], a["used"]) for a in stubs["before"]}
    after = {a["area"]: (a["stubs"], a["used"]) for a in stubs["after"]}
    text, text_end, init = counts("7.2").stubs or ()
    assert before == {
        "ftrace_ool_stub_text": (text, text),
        "ftrace_ool_stub_text_end": (text_end, text_end),
        "ftrace_ool_stub_inittext": (init, init),
    }
    assert after == {**before, "ftrace_ool_stub_inittext": (init, 0)}
    proc = _cli("nop", k.vmlinux, "--drop-records", "--only", "do_one_initcall", "-o", tmp_path / "one")
    assert proc.returncode == 0
    assert f"before ftrace_ool_stub_text {text}/{text}" in proc.stderr
    # the kernel fills ftrace_ool_stub_text first: the record freed is one fewer in text_end
    after_one = f"after ftrace_ool_stub_text {text}/{text}, ftrace_ool_stub_text_end {text_end - 1}/{text_end}"
    assert after_one in proc.stderr


@pytest.mark.corpus
def test_an_image_whose_records_exceed_its_stubs_is_never_written(tmp_path: Path) -> None:
    """7.2 has no spare stub (as many stubs as records in each area). With one init stub
    fewer in the input, dropping a .text record still leaves the init records one over: refused,
    since ftrace_init_ool_stub would WARN and ftrace_bug() turn ftrace off."""
    k = require_kernel("7.2")
    image = Image.load(k.vmlinux)
    assert image.symbols is not None
    count_at = image.offset_of(
        int(image.symbols.table["st_value"][image.symbols.find("ftrace_ool_stub_inittext_count")[0]])
    )
    data = bytearray(k.vmlinux.read_bytes())
    n = counts("7.2").init_text
    assert int.from_bytes(data[count_at : count_at + 4], "little") == n
    data[count_at : count_at + 4] = (n - 1).to_bytes(4, "little")
    short = tmp_path / "short"
    short.write_bytes(data)
    with pytest.raises(ImageError, match=f"ftrace_ool_stub_inittext: {n - 1} stubs, {n} records"):
        apply_file(short, tmp_path / "out", Selection(only=("do_one_initcall",)), NOP_DROP)
    assert not (tmp_path / "out").exists()
    r = apply_file(short, tmp_path / "out", Selection(sections=(".init.text",)), NOP_DROP).rewrite
    assert r.stubs is not None and [(c.area, c.used) for c in r.stubs[1]][-1] == ("ftrace_ool_stub_inittext", 0)


# -- what is refused -------------------------------------------------------------------------


@pytest.mark.corpus
@pytest.mark.parametrize("name", NEW)
def test_a_recorded_place_left_unbuilt_is_refused_unless_its_record_goes(name: str, tmp_path: Path) -> None:
    """6.12: `disabled` puts mflr r0 in the first nop, which the kernel's own init refuses to find
    there. Refused in one line, nothing written; with --drop-records the record goes; with
    --keep-records the image is built on purpose (the boot test's negative control)."""
    k = require_kernel(name)
    out = tmp_path / "out"
    if name == "6.12":
        line = _one_line_error(
            _cli("apply", k.vmlinux, "--to", "disabled", "--only", "do_one_initcall", "-o", out),
            "do_one_initcall",
            "recorded place",
            "accepts only nop; nop",
            "--drop-records",
        )
        assert "mflr r0; nop" in line and not out.exists()
        kept = Options(SiteState.DISABLED, keep_records=True)
        r = apply_file(k.vmlinux, out, Selection(only=("do_one_initcall",)), kept).rewrite
        assert [(e.slot, e.old, e.new) for e in r.edits if isinstance(e, WordWrite)] == [
            (Slot.A, 0x60000000, 0x7C0802A6)
        ]
        assert load(_log(out)).header.summary["keep_records"] is True
        dropped = Options(SiteState.DISABLED, drop_records=True)
        assert len(apply_file(k.vmlinux, out, Selection(only=("do_one_initcall",)), dropped).rewrite.dropped) == 1
    _one_line_error(_cli("apply", k.vmlinux, "--to", "enabled", "--dry-run"), "is not written offline")
    _one_line_error(_cli("nop", k.vmlinux, "--dry-run"), "already are nop as built", "--drop-records")
    _one_line_error(_cli("nop", k.vmlinux, "--drop-records", "--keep-records", "--dry-run"), "not both")


@pytest.mark.corpus
def test_the_boot_rule_holds_for_61_as_well(corpus, tmp_path: Path) -> None:
    """6.1's recorded place must hold `bl _mcount`: nopping it and keeping the record is refused."""
    with pytest.raises(PlanRejected, match="accepts only mflr r0; bl"):
        apply_file(corpus.vmlinux, None, Selection(only=("do_one_initcall",)), Options(SiteState.NOPPED), dry_run=True)


@pytest.mark.corpus
def test_nopping_61_sites_already_nopped_and_recorded_is_refused_as_on_612(corpus, tmp_path: Path) -> None:
    """A 6.1 module an earlier --keep-records left refused at load: nopping the same site again
    said "nothing to change", wrote a copy as broken and exited 0; 6.12 refuses its analogue."""
    module = corpus.modules_dir / "fs/nls/nls_utf8.ko"
    broken, out = tmp_path / "broken.ko", tmp_path / "out.ko"
    keep = Options(SiteState.NOPPED, keep_records=True, strip_signature=True)
    apply_file(module, broken, Selection(only=("char2uni",)), keep)
    line = _one_line_error(_cli("nop", broken, "--only", "char2uni", "-o", out), "(char2uni)", "--drop-records")
    assert "already holds nopped (nop; nop) at a recorded place" in line and not out.exists()
    assert _cli("nop", broken, "--only", "char2uni", "--keep-records", "-o", out).returncode == 0
    assert _cli("nop", broken, "--only", "char2uni", "--drop-records", "-o", tmp_path / "dropped.ko").returncode == 0


# -- compressed modules ----------------------------------------------------------------------


@pytest.mark.corpus
@pytest.mark.parametrize("name", NEW)
def test_a_ko_xz_is_written_as_kbuild_would_and_undo_gives_its_bytes(name: str, tmp_path: Path) -> None:
    k = require_kernel(name)
    src = k.modules_dir / "fs/nls/nls_utf8.ko.xz"
    out = tmp_path / "nls_utf8.ko.xz"
    r = apply_file(src, out, Selection(), NOP_DROP).rewrite
    assert len(r.dropped) == 3 and not [e for e in r.edits if isinstance(e, WordWrite)]
    removed = [e for e in r.edits if isinstance(e, RelaEdit)]
    assert [(e.section, len(e.removed)) for e in removed] == [(".rela__patchable_function_entries", 3)]
    raw = out.read_bytes()
    recipe = recipe_of(raw, lzma.decompress(raw), Compression.XZ)
    assert recipe is not None and (recipe.dict_size, recipe.check, recipe.header_size) == (1 << 20, 1, 20)
    assert load(_log(out)).header.recipe == recipe and load(_log(out)).original is None
    after = scan(Image.load(out))
    assert after.records.count == 0 and after.records.zeroed == 3 and Image.load(out).signature is None
    if name == "7.2":
        stubs = load(_log(out)).header.summary["ool_stubs"]
        assert stubs == {"before": [{"area": ".stubs", "stubs": 3, "used": 3}],
                         "after": [{"area": ".stubs", "stubs": 3, "used": 0}]}  # fmt: skip
    undo_file(out, _log(out), tmp_path / "back.ko.xz")
    assert _sha(tmp_path / "back.ko.xz") == _sha(src)


def test_a_compressor_no_recipe_rebuilds_is_kept_in_the_log(tmp_path: Path) -> None:
    """xz with a CRC64 check is not rebuilt here: the log carries the original bytes, and undo
    gives them back; the output is still xz, with Kbuild's settings."""
    plain = (FIXTURES / "bin" / "prof-le.o").read_bytes()
    src = tmp_path / "prof-le.o.xz"
    src.write_bytes(lzma.compress(plain, check=lzma.CHECK_CRC64))
    out = tmp_path / "out.o.xz"
    apply_file(src, out, Selection(), Options(SiteState.NOPPED, drop_records=True))
    log = load(_log(out))
    assert log.header.recipe is None and log.original == src.read_bytes()
    assert decompress(out, out.read_bytes(), Compression.XZ) != plain
    undo_file(out, _log(out), tmp_path / "back.o.xz")
    assert (tmp_path / "back.o.xz").read_bytes() == src.read_bytes()


def _xz_claiming_dictionary(plain: bytes, props: int) -> bytes:
    """``plain`` as Kbuild compresses it (CRC32, a 1 MiB dictionary), its block header then made to
    claim the dictionary LZMA2 property ``props`` names (40: 4 GiB), its CRC32 made good. liblzma
    decodes it: the data never looks back further than 1 MiB."""
    raw = bytearray(
        lzma.compress(plain, check=lzma.CHECK_CRC32, filters=[{"id": lzma.FILTER_LZMA2, "dict_size": 1 << 20}])
    )
    size = (raw[12] + 1) * 4
    assert raw[13] == 0 and raw[14:16] == b"\x21\x01"  # no sizes in the header; LZMA2, 1 byte of props
    raw[16] = props
    raw[12 + size - 4 : 12 + size] = zlib.crc32(raw[12 : 12 + size - 4]).to_bytes(4, "little")
    assert lzma.decompress(bytes(raw)) == plain
    return bytes(raw)


@pytest.mark.parametrize("props", [37, 39, 40])
def test_xz_that_claims_a_dictionary_no_preset_uses_is_kept_in_the_log(props: int, tmp_path: Path) -> None:
    """A block header claiming a 1.5, 3 or 4 GiB dictionary: the recipe encoded with it, which
    allocated gigabytes for a small module (MemoryError) or was refused by liblzma (3 GiB and up):
    exit 3, and prenop ended the whole tree there. Past xz's largest preset (64 MiB) there is no
    recipe: the log carries the original bytes, and undo gives them back."""
    _kept_in_the_log(_xz_claiming_dictionary((FIXTURES / "bin" / "prof-le.o").read_bytes(), props), tmp_path)


_OTHER_XZ: Final = {
    "preset 1": {"preset": 1},
    "preset 9e": {"preset": 9 | lzma.PRESET_EXTREME},
    "lc=4": {"filters": [{"id": lzma.FILTER_LZMA2, "preset": 6, "dict_size": 1 << 20, "lc": 4}]},
}


def _other_xz_round_trip(plain: bytes, settings: dict[str, Any], tmp_path: Path) -> None:
    """xz with a CRC32 check, as Kbuild's, but other encoder settings: its container reads like
    Kbuild's, yet its LZMA2 data is not what the recipe makes. The log must carry the original
    bytes (before, the recipe was trusted: the rewrite went through and undo then refused)."""
    _kept_in_the_log(lzma.compress(plain, check=lzma.CHECK_CRC32, **settings), tmp_path)


def _kept_in_the_log(raw: bytes, tmp_path: Path) -> None:
    """``raw``, an xz module no recipe rebuilds, nopped: the log carries its bytes, and undo gives
    them back."""
    src = tmp_path / "m.ko.xz"
    src.write_bytes(raw)
    out = tmp_path / "out.ko.xz"
    apply_file(src, out, Selection(), Options(SiteState.NOPPED, drop_records=True, strip_signature=True))
    log = load(_log(out))
    assert log.header.recipe is None and log.original == src.read_bytes()
    undo_file(out, _log(out), tmp_path / "back.ko.xz")
    assert (tmp_path / "back.ko.xz").read_bytes() == src.read_bytes()


@pytest.mark.parametrize("settings", _OTHER_XZ.values(), ids=_OTHER_XZ.keys())
def test_xz_made_with_other_settings_is_kept_in_the_log(settings: dict[str, Any], tmp_path: Path) -> None:
    """A file shorter than the checked prefix: checked whole."""
    _other_xz_round_trip((FIXTURES / "bin" / "prof-le.o").read_bytes(), settings, tmp_path)


@pytest.mark.corpus
@pytest.mark.parametrize("settings", _OTHER_XZ.values(), ids=_OTHER_XZ.keys())
def test_a_module_xz_made_with_other_settings_is_kept_in_the_log(settings: dict[str, Any], tmp_path: Path) -> None:
    """A module longer than the checked prefix (binfmt_misc, 38,943 bytes): checked on it."""
    plain = lzma.decompress((require_kernel("6.12").modules_dir / "fs/binfmt_misc.ko.xz").read_bytes())
    assert len(plain) > 1 << 14
    _other_xz_round_trip(plain, settings, tmp_path)


@pytest.mark.parametrize("tool", [("xz", "-T2", "--check=crc32", "--lzma2=dict=1MiB"), ("gzip", "-n"), ("zstd", "-q")])
def test_kbuild_compressed_files_round_trip_to_their_bytes(tool: Sequence[str], tmp_path: Path) -> None:
    """The real compressors, as Makefile.modinst runs them, on a fixture: nop, undo, same bytes."""
    require_tool(tool[0])
    src = tmp_path / "prof-le.o.c"
    raw = subprocess.run([*tool, "-c"], input=(FIXTURES / "bin" / "prof-le.o").read_bytes(), capture_output=True)
    src.write_bytes(raw.stdout)
    out = tmp_path / "out.o.c"
    apply_file(src, out, Selection(), Options(SiteState.NOPPED, drop_records=True))
    assert verify_files(src, out, _log(out)).ok
    undo_file(out, _log(out), tmp_path / "back")
    assert (tmp_path / "back").read_bytes() == src.read_bytes()


# -- whole trees -----------------------------------------------------------------------------


def _module_round_trip(jobs: Sequence[tuple[Path, Path]]) -> list[tuple[str, bool, bool, bool, bool]]:
    """For each module: nop --drop-records --strip-signature, verify, verify a copy with one byte
    flipped, undo; (name, rewritten, verified, flip caught, undo sha256-identical)."""
    out_list = []
    for src, work in jobs:
        out = work / src.name
        try:
            r = apply_file(src, out, Selection(), NOP_DROP).rewrite
        except NothingToDo:
            # a module without any site is refused, not copied; it must truly have none
            out_list.append((str(src), False, not scan(Image.load(src)).sites, not out.exists(), True))
            continue
        ok = verify_files(src, out, _log(out)).ok
        data = bytearray(out.read_bytes())
        data[len(data) // 2] ^= 0x40
        tampered = work / ("t." + src.name)
        tampered.write_bytes(data)
        caught = not verify_files(src, tampered, _log(out)).ok
        back = work / ("b." + src.name)
        undo_file(out, _log(out), back)
        same = back.read_bytes() == src.read_bytes()
        out_list.append((str(src), bool(r.edits), ok, caught, same))
        for p in (out, _log(out), tampered, back):
            p.unlink()
    return out_list


@pytest.mark.slow
@pytest.mark.corpus
@pytest.mark.parametrize("name", NEW)
def test_modules_round_trip_to_their_compressed_bytes(name: str, tmp_path: Path) -> None:
    """The single-file path (apply, verify, undo) on every 8th module of the tree, and ext4, whose
    sites keep-core.policy keeps: every other module with a site is rewritten and undone to its
    compressed bytes through prenop by test_whole_patchable_and_ool_trees_... (tests/test_prenop.py),
    with the same compression code. Both ran on every module, doubling ~3 min of CI for nothing."""
    k = require_kernel(name)
    every = sorted(k.modules_dir.rglob("*.ko.xz"))
    assert len(every) == counts(name).modules
    modules = sorted(set(every[::8]) | {k.modules_dir / "fs/ext4/ext4.ko.xz"})
    work = [tmp_path / str(i) for i in range(len(modules))]
    for d in work:
        d.mkdir()
    start = time.monotonic()
    results = list(map_chunks(_module_round_trip, list(zip(modules, work, strict=True)), 2))
    seconds = time.monotonic() - start
    assert [r for r in results if not all(r[2:])] == []
    rewritten = sum(r[1] for r in results)
    print(f"{name}: {len(results)} modules ({rewritten} with records) round-tripped in {seconds:.0f} s")
    assert rewritten > 0.9 * len(results) and any(r[0].endswith("/ext4.ko.xz") and r[1] for r in results)
    shutil.rmtree(tmp_path, ignore_errors=True)


# -- boots (qemu is the judge) ---------------------------------------------------------------

BOOT_TIMEOUT = 120
# do_one_initcall plus a second function traced once at boot, so that the filter is never empty:
# with do_one_initcall's own record gone, an empty filter would trace every function (a boot of
# 11-21 s and a dump of millions of lost events).
TWO_FILTERS = STANDARD_APPEND.replace(
    "ftrace_filter=do_one_initcall", "ftrace_filter=do_one_initcall,kernel_init_freeable"
)


def _aff_then_panic_script() -> str:
    """/init: print available_filter_functions between markers, then exit: the kernel panics
    ("Attempted to kill init!") and ftrace_dump_on_oops dumps the trace."""
    return """#!/bin/sh
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t tracefs tracefs /sys/kernel/tracing
echo MCOUNTRW-AFF-BEGIN
cat /sys/kernel/tracing/available_filter_functions
echo MCOUNTRW-AFF-END
echo MCOUNTRW-DONE
exit 0
"""


@pytest.fixture(scope="module", params=BOOT_KERNELS)
def new_kernel(request: pytest.FixtureRequest) -> KernelFiles:
    require_tool(QEMU)
    return require_kernel(request.param)


@pytest.mark.boot
@pytest.mark.corpus
def test_all_but_do_one_initcall_dropped_boots_clean_with_one_traceable_function(
    new_kernel: KernelFiles, tmp_path: Path
) -> None:
    out = tmp_path / "vmlinux"
    r = apply_file(new_kernel.vmlinux, out, Selection(exclude=("do_one_initcall",)), NOP_DROP).rewrite
    assert len(r.dropped) == counts(new_kernel.kernel.name).records - 1 and not r.sites
    ramfs = make_initramfs(tmp_path / "initrd.cpio", new_kernel.busybox, [], _aff_then_panic_script())
    b = boot(out, STANDARD_APPEND, initrd=ramfs, timeout=BOOT_TIMEOUT)
    assert b.done and b.panicked and not b.ftrace_bug and not b.timed_out, b.console[-3000:]
    assert b.ftrace_entries == 1  # zeroed slots are skipped before counting (6.1 counted them)
    assert "do_one_initcall" in b.traced_functions
    assert b.available_filter_functions == ["do_one_initcall"]
    print(f"{new_kernel.kernel.name}: {b.seconds:.1f} s, allocating {b.ftrace_entries} entries")


@pytest.mark.boot
@pytest.mark.corpus
def test_do_one_initcall_alone_dropped_is_absent_from_the_trace(new_kernel: KernelFiles, tmp_path: Path) -> None:
    out = tmp_path / "vmlinux"
    apply_file(new_kernel.vmlinux, out, Selection(only=("do_one_initcall",)), NOP_DROP)
    b = boot(out, TWO_FILTERS, timeout=BOOT_TIMEOUT)
    assert b.panicked and not b.ftrace_bug and not b.timed_out, b.console[-3000:]
    assert b.ftrace_entries == counts(new_kernel.kernel.name).records - 1
    assert "kernel_init_freeable" in b.traced_functions  # the tracer works...
    assert "do_one_initcall" not in b.traced_functions  # ...and the dropped function is gone from it


@pytest.mark.boot
@pytest.mark.corpus
def test_a_recorded_place_rewritten_without_dropping_its_record_is_an_ftrace_bug(
    new_kernel: KernelFiles, tmp_path: Path
) -> None:
    """The negative control. 6.12: `--keep-records` builds it (mflr r0 in do_one_initcall's first
    nop, what the kernel itself would write there). 7.2 has no such state (its one word is nop or
    `b stub`, and a stub is only filled at boot), so the test writes `b .+4`, a branch to the next
    word that changes nothing but the word, with the library."""
    out = tmp_path / "vmlinux"
    site = next(s for s in scan(Image.load(new_kernel.vmlinux)).sites if s.function == "do_one_initcall")
    if new_kernel.kernel.generation == "patchable":
        kept = Options(SiteState.DISABLED, keep_records=True)
        apply_file(new_kernel.vmlinux, out, Selection(only=("do_one_initcall",)), kept)
        found = "7c0802a6"
    else:
        b4 = WordWrite(0, site.file_offset, site.addr, site.section, site.offset, site.function, Slot.B,
                       0x60000000, 0x48000004, SiteState.DISABLED, SiteState.UNKNOWN)  # fmt: skip
        out.write_bytes(apply_edits(bytearray(new_kernel.vmlinux.read_bytes()), [b4], "little"))
        found = "48000004"
    b = boot(out, STANDARD_APPEND, timeout=BOOT_TIMEOUT)
    assert b.ftrace_bug, b.console[-3000:]
    assert f"expected (60000000) != found ({found})" in b.console


@pytest.mark.boot
@pytest.mark.corpus
def test_prenopped_module_loads_and_only_its_kept_functions_are_traceable(
    new_kernel: KernelFiles, tmp_path: Path
) -> None:
    """binfmt_misc (no dependencies) with every site but the bm_*_read/_write handlers dropped,
    signature stripped, decompressed for busybox's insmod."""
    src = new_kernel.modules_dir / "fs/binfmt_misc.ko.xz"
    out = tmp_path / "binfmt_misc.ko.xz"
    kept = ("bm_*_read", "bm_*_write")
    r = apply_file(src, out, Selection(exclude=kept), NOP_DROP).rewrite
    names = {s.function for s in scan(Image.load(src)).sites}
    expect = {n for n in names if n is not None and any(fnmatch.fnmatchcase(n, g) for g in kept)}
    assert len(expect) >= 4 and len(r.dropped) == len(names) - len(expect)
    plain = tmp_path / "binfmt_misc.ko"
    plain.write_bytes(decompress(out, out.read_bytes(), Compression.XZ))
    script = module_load_script(["binfmt_misc"], aff_grep="[binfmt_misc]")
    ramfs = make_initramfs(tmp_path / "initrd.cpio", new_kernel.busybox, [plain], script)
    b = boot(new_kernel.vmlinux, STANDARD_APPEND, initrd=ramfs, timeout=BOOT_TIMEOUT)
    assert b.done and b.insmod == {"binfmt_misc": 0} and b.tracer_rc == 0, b.console[-3000:]
    assert not b.ftrace_bug
    aff = b.available_filter_functions or []
    assert {line.split()[0] for line in aff if line.endswith("[binfmt_misc]")} == expect


@pytest.mark.parametrize(("name", "words"), [("patchable-le.o", "nop; nop"), ("ool-be.o", "nop")])
def test_a_records_only_rewrite_says_what_the_kernel_makes_of_the_sites(name: str, words: str, tmp_path: Path) -> None:
    """Nopping a patchable or ool site writes no word: the summary says the sites become untraceable
    (and, brought back, traceable again) with their words unchanged, never "N already nopped",
    a state ool does not even have."""
    from typer.testing import CliRunner

    from rewriter.cli import app

    src, nopped, back = FIXTURES / "bin" / name, tmp_path / "n.o", tmp_path / "e.o"
    done = CliRunner().invoke(app, ["nop", str(src), "--drop-records", "-o", str(nopped)])
    assert done.exit_code == 0, done.output
    line = f"made 6 sites untraceable after boot: records dropped, words unchanged ({words}); 0 word writes"
    assert line in done.output and "already nopped" not in done.output, done.output
    done = CliRunner().invoke(app, ["apply", str(nopped), "--to", "enabled", "-o", str(back)])
    assert done.exit_code == 0, done.output
    line = f"made 6 sites traceable after boot again: records restored, words unchanged ({words}); 0 word writes"
    assert line in done.output and "already enabled" not in done.output, done.output
    assert back.read_bytes() == src.read_bytes()


def test_a_patchable_site_rewritten_with_its_record_kept_is_still_seen_as_patchable(tmp_path: Path) -> None:
    """`apply --to disabled --keep-records` leaves `mflr r0; nop` at recorded places (an image the
    kernel refuses at boot, built on purpose): the scan must still read the generation from the
    words at the records, find the sites in the file itself (not only in the patch log), and
    match every record to them, so that the audit reports each refused site once."""
    out = tmp_path / "kr.o"
    apply_file(FIXTURES / "bin" / "patchable-le.o", out, Selection(), Options(SiteState.DISABLED, keep_records=True))
    result = scan(Image.load(out))
    assert result.generation is Generation.PATCHABLE
    assert len(result.sites) == 6 and {s.state for s in result.sites} == {SiteState.DISABLED}
    assert all(s.recorded for s in result.sites) and not result.records.unmatched


def test_an_output_named_for_another_compression_is_refused_and_stage_images_are_named_as_elf(tmp_path: Path) -> None:
    """The output is compressed as its input was: `-o m.ko` from an .ko.xz (or `-o x.o.xz` from an
    ELF) would name xz data as an ELF (or the reverse), so it is refused, exit 2, nothing written;
    a name that says nothing is accepted. Stage images are the decompressed ELF, named without .xz."""
    from typer.testing import CliRunner

    from rewriter.cli import app

    src = tmp_path / "m.ko.xz"
    src.write_bytes(lzma.compress((FIXTURES / "bin" / "patchable-le.o").read_bytes(), check=lzma.CHECK_CRC32))
    for out, said in ((tmp_path / "plain.ko", "uncompressed"), (tmp_path / "x.ko.gz", "gzip-compressed")):
        done = CliRunner().invoke(app, ["nop", str(src), "--drop-records", "-o", str(out)])
        assert done.exit_code == 2 and f"its name says {said}, but the output is xz-compressed" in done.output
        assert not out.exists() and not (tmp_path / (out.name + ".mcountrw.jsonl")).exists()
    plain = FIXTURES / "bin" / "patchable-le.o"
    done = CliRunner().invoke(app, ["nop", str(plain), "--drop-records", "-o", str(tmp_path / "x.o.xz")])
    assert done.exit_code == 2 and "drop its suffix" in done.output and not (tmp_path / "x.o.xz").exists()
    stages = tmp_path / "stages"
    args = ["apply", str(src), "--to", "disabled", "--keep-records", "-o", str(tmp_path / "out")]
    done = CliRunner().invoke(app, [*args, "--stage-images", str(stages)])
    assert done.exit_code == 0, done.output
    assert [p.name for p in stages.iterdir()] == ["m.ko.stage1"]
    assert (stages / "m.ko.stage1").read_bytes()[:4] == b"\x7fELF"


def test_the_summary_names_the_state_written_and_the_settle_barrier(tmp_path: Path) -> None:
    """A patchable site brought back by `--to enabled` gets its words as built (`nop; nop`) and its
    record: the summary said "changed 6 sites to enabled (0 already enabled)", a state no site took,
    and "barriers: none" for a plan that ends with synchronize_rcu_tasks."""
    from typer.testing import CliRunner

    from rewriter.cli import app

    src, off, back = FIXTURES / "bin" / "patchable-le.o", tmp_path / "d.o", tmp_path / "e.o"
    done = CliRunner().invoke(app, ["apply", str(src), "--to", "disabled", "--drop-records", "-o", str(off)])
    assert done.exit_code == 0, done.output
    assert "6 word writes in 1 stage, barriers: synchronize_rcu_tasks (settle, after the last stage);" in done.output
    done = CliRunner().invoke(app, ["apply", str(off), "--to", "enabled", "-o", str(back)])
    assert done.exit_code == 0, done.output
    assert "changed 6 sites to nopped (0 already nopped); 6 records restored;" in done.output, done.output
    assert "--to enabled: the kernel enables these sites itself at run time" in done.output
    assert "to enabled" not in done.output.replace("--to enabled", "") and back.read_bytes() == src.read_bytes()


# -- a 6.12 with mprofile sites (Debian 12's, built by gcc 12) --------------------------------------
#
# Same kernel code as 6.12, the sites of 6.1: nopping writes both words (mflr r0 and bl _mcount) and
# drops the records, as on 6.1. Its boot check is 6.12's ftrace_init_nop, which validates the mflr
# before the bl (6.1's ftrace_make_nop compared only the bl).


@pytest.mark.boot
@pytest.mark.corpus
def test_gcc12_612_all_but_do_one_initcall_nopped_boots_clean_with_one_traceable_function(tmp_path: Path) -> None:
    require_tool(QEMU)
    k = require_kernel("6.12-gcc12")
    out = tmp_path / "vmlinux"
    r = apply_file(k.vmlinux, out, Selection(exclude=("do_one_initcall",)), NOP_DROP).rewrite
    assert len(r.dropped) == counts("6.12-gcc12").records - 1
    after = scan(Image.load(out))
    assert [(s.function, s.state) for s in after.sites] == [("do_one_initcall", SiteState.ENABLED)]
    ramfs = make_initramfs(tmp_path / "initrd.cpio", k.busybox, [], _aff_then_panic_script())
    b = boot(out, STANDARD_APPEND, initrd=ramfs, timeout=BOOT_TIMEOUT)
    assert b.done and b.panicked and not b.ftrace_bug and not b.timed_out, b.console[-3000:]
    assert b.ftrace_entries == 1
    assert b.available_filter_functions == ["do_one_initcall"] and "do_one_initcall" in b.traced_functions


@pytest.mark.boot
@pytest.mark.corpus
def test_gcc12_612_checks_the_mflr_of_a_recorded_site_at_boot(tmp_path: Path) -> None:
    """Why mcountrw never writes a recorded mprofile site's mflr and keeps its record: here the
    kernel refuses `nop; bl _mcount` at do_one_initcall (slot A nopped, written with the library),
    where 6.1's check would have read only the bl. Not finding `mflr r0` at ip-4, 6.12's
    ftrace_init_nop takes the site for gcc 5's and looks for `mflr r0; std r0,16(r1)` at ip-8 and
    ip-4. After the ftrace bug this kernel stops at boot: the console up to the timeout is enough."""
    require_tool(QEMU)
    k = require_kernel("6.12-gcc12")
    site = next(s for s in scan(Image.load(k.vmlinux)).sites if s.function == "do_one_initcall")
    assert site.addr is not None
    a = WordWrite(0, site.file_offset - 4, site.addr - 4, site.section, site.offset - 4, site.function, Slot.A,
                  0x7C0802A6, 0x60000000, SiteState.ENABLED, SiteState.UNKNOWN)  # fmt: skip
    out = tmp_path / "vmlinux"
    out.write_bytes(apply_edits(bytearray(k.vmlinux.read_bytes()), [a], "little"))
    with pytest.raises(PlanRejected):  # the tool's own plans refuse it
        apply_file(k.vmlinux, tmp_path / "kept", Selection(only=("do_one_initcall",)), Options(SiteState.NOPPED))
    b = boot(out, STANDARD_APPEND, timeout=20)
    assert b.ftrace_bug, b.console[-3000:]
    assert f"{site.addr - 4:#x}: expected (f8010010) != found (60000000)" in b.console, b.console[-3000:]
    assert f"{site.addr - 8:#x}: expected (7c0802a6) != found (" in b.console
