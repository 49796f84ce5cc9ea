"""Stripped images end to end (issue 12): ``--mcount-addr`` and ``--generation`` on ``apply``,
``nop`` and ``prenop``; ``--drop-records`` on a stripped image whose records the scan found
(in their section, or by search in a stripped vmlinux) works, verifies and undoes byte for byte.

Fixtures are stripped with ``objcopy --strip-all`` (both endians: ``clean`` is ELFv2 LE,
``prof-be`` ELFv1 BE); the corpus tests strip the 6.1 and 6.12 vmlinux, and one boot of the
stripped 6.12 kernel with its .init.text records dropped judges the result: no ftrace bug, and
``ftrace: allocating`` counts exactly the records left (6.12 skips zeroed slots before counting)."""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path

import pytest
from boot import QEMU, STANDARD_APPEND, boot, counts, require_kernel, require_tool
from conftest import FIXTURES
from test_bad_input import Elf, assert_cli_error, mcountrw

from rewriter.elf.image import Image
from rewriter.log import default_log_path
from rewriter.sites import scan

BIN = FIXTURES / "bin"


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def strip(src: Path, dest: Path) -> Path:
    objcopy = require_tool("powerpc64le-linux-gnu-objcopy")
    subprocess.run([str(objcopy), "--strip-all", str(src), str(dest)], check=True)
    assert Image.load(dest).symbols is None
    return dest


def mcount_of(path: Path) -> int:
    """_mcount's code address (ELFv1: through its descriptor), as System.map would give it."""
    (entry,) = scan(Image.load(path)).mcount_entries
    return entry


def assert_round_trip(original: Path, out: Path) -> None:
    """``verify`` passes and ``undo`` gives the original back, sha256 for sha256."""
    log = default_log_path(out)
    proc = mcountrw("verify", str(original), str(out), "--log", str(log))
    assert proc.returncode == 0 and proc.stdout.startswith("ok: "), proc.stdout + proc.stderr
    back = out.with_name(out.name + ".back")
    proc = mcountrw("undo", str(out), "--log", str(log), "-o", str(back))
    assert proc.returncode == 0, proc.stderr
    assert _sha(back) == _sha(original)


# -- fixtures ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["clean", "prof-be"])
def test_stripped_fixture_drops_its_records_and_undoes_exactly(name: str, tmp_path: Path) -> None:
    bare = strip(BIN / name, tmp_path / name)
    sites = len(scan(Image.load(BIN / name)).sites)
    out = tmp_path / f"{name}.nop"
    proc = mcountrw("nop", str(bare), "-o", str(out), "--drop-records")
    assert proc.returncode == 0, proc.stderr
    assert f"changed {sites} sites to nopped (0 already nopped); {sites} records dropped" in proc.stderr
    after = scan(Image.load(out), mcount_of(BIN / name))
    assert not after.sites and after.records.zeroed == sites
    assert_round_trip(bare, out)


@pytest.mark.parametrize("name", ["clean", "prof-be"])
def test_stripped_fixture_with_mcount_addr_nops_drops_and_comes_back(name: str, tmp_path: Path) -> None:
    bare = strip(BIN / name, tmp_path / name)
    mcount = hex(mcount_of(BIN / name))
    out = tmp_path / f"{name}.nop"
    proc = mcountrw("nop", str(bare), "-o", str(out), "--drop-records", "--mcount-addr", mcount)
    assert proc.returncode == 0, proc.stderr
    assert_round_trip(bare, out)
    # ...and back to enabled with apply, the records kept this time
    kept = tmp_path / f"{name}.dis"
    assert mcountrw("apply", str(bare), "--to", "disabled", "-o", str(kept), "--mcount-addr", mcount).returncode == 0
    en = tmp_path / f"{name}.en"
    proc = mcountrw("apply", str(kept), "--to", "enabled", "-o", str(en), "--mcount-addr", mcount)
    assert proc.returncode == 0, proc.stderr
    assert _sha(en) == _sha(bare)


def test_stripped_fixture_without_records_needs_mcount_addr(tmp_path: Path) -> None:
    """No symbols and no __mcount_loc: the scan cannot look (exit 2, saying what to pass); with
    ``--mcount-addr`` every call is found, nopped, and undone."""
    elf = Elf(strip(BIN / "clean", tmp_path / "stripped").read_bytes())
    names = elf.image.section_bytes(elf.image.sections[int(elf.image.ehdr["e_shstrndx"])])
    at = elf.get(elf.shdr(".shstrtab", "sh_offset")) + names.index(b"__mcount_loc\0")
    elf.data[at : at + 2] = b"XX"
    bare = tmp_path / "bare"
    bare.write_bytes(elf.bytes())
    out = tmp_path / "out"
    assert_cli_error(mcountrw("nop", str(bare), "-o", str(out)), "stripped image", "--mcount-addr", "--generation")
    wrong = mcountrw("nop", str(bare), "-o", str(out), "--mcount-addr", hex(mcount_of(BIN / "clean") + 4))
    assert_cli_error(wrong, "--mcount-addr", "no bl in this stripped image calls it")
    both = mcountrw("nop", str(bare), "-o", str(out), "--mcount-addr", "0x1000", "--generation", "patchable")
    assert_cli_error(both, "--mcount-addr names _mcount", "not patchable")
    proc = mcountrw("nop", str(bare), "-o", str(out), "--mcount-addr", hex(mcount_of(BIN / "clean")))
    assert proc.returncode == 0 and "changed 3 sites to nopped" in proc.stderr, proc.stderr
    assert_round_trip(bare, out)


def test_prenop_takes_mcount_addr_for_a_stripped_file(tmp_path: Path) -> None:
    elf = Elf(strip(BIN / "clean", tmp_path / "stripped").read_bytes())
    names = elf.image.section_bytes(elf.image.sections[int(elf.image.ehdr["e_shstrndx"])])
    at = elf.get(elf.shdr(".shstrtab", "sh_offset")) + names.index(b"__mcount_loc\0")
    elf.data[at : at + 2] = b"XX"
    f = tmp_path / "vmlinux"
    f.write_bytes(elf.bytes())
    original = _sha(f)
    policy = tmp_path / "all.policy"
    policy.write_text("default nop\n")
    mcount = hex(mcount_of(BIN / "clean"))
    proc = mcountrw("prenop", "--policy", str(policy), "--in-place", "--mcount-addr", mcount, str(f))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert _sha(f) != original and proc.stdout.splitlines()[3].split() == ["nopped", "1", "3", "0"], proc.stdout
    proc = mcountrw("prenop", "--verify", str(f))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert mcountrw("prenop", "--undo", "--in-place", str(f)).returncode == 0
    assert _sha(f) == original


# -- stripped vmlinux -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def stripped(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The 6.1 and 6.12 vmlinux, stripped (their records are found by search)."""
    d = tmp_path_factory.mktemp("stripped")
    return {name: strip(require_kernel(name).vmlinux, d / f"vmlinux-{name}") for name in ("6.1", "6.12")}


@pytest.mark.corpus
@pytest.mark.slow
def test_stripped_61_vmlinux_nop_drop_records_with_mcount_addr(stripped: dict[str, Path], tmp_path: Path) -> None:
    bare = stripped["6.1"]
    out = tmp_path / "vmlinux.nop"
    mcount = hex(mcount_of(require_kernel("6.1").vmlinux))
    proc = mcountrw("nop", str(bare), "-o", str(out), "--drop-records", "--mcount-addr", mcount,
                    "--section", ".init.text")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    n = counts("6.1").init_text
    assert f"changed {n} sites to nopped (0 already nopped); {n} records dropped" in proc.stderr
    after = scan(Image.load(out), int(mcount, 16))
    assert after.records.count == counts("6.1").records - n and after.records.zeroed == n
    assert_round_trip(bare, out)


@pytest.mark.corpus
def test_stripped_61_vmlinux_says_its_likely_mcount_and_no_pointer_table_passes_for_records(
    stripped: dict[str, Path],
) -> None:
    """The words of a stripped 6.1 say mprofile: 33,690 prologues `mflr r0; bl X`, one X, _mcount.
    The error names it as the likely --mcount-addr, and a --generation that says otherwise is
    reported as overriding mprofile. No other table of code pointers passes for the records: 6.1's
    __soft_mask_table (4 of its 11 entries on nops) used to be taken for a patchable table, and a
    nop --drop-records zeroed 4 of its entries."""
    bare = stripped["6.1"]
    mcount = mcount_of(require_kernel("6.1").vmlinux)
    proc = mcountrw("scan", str(bare))
    assert proc.returncode == 2
    n = counts("6.1").records
    assert proc.stderr.rstrip().endswith(
        f"the words look mprofile: {n} `mflr r0; bl {mcount:#x}` prologues: calls to _mcount, so likely "
        f"--mcount-addr {mcount:#x} (check System.map)"
    )
    doc = json.loads(mcountrw("scan", "--format", "json", "--generation", "patchable", str(bare)).stdout)
    (img,) = doc["images"]
    assert img["generation_override"] == {
        "detected": "mprofile", "reason": f"{n} `mflr r0; bl {mcount:#x}` prologues: calls to _mcount"
    }  # fmt: skip
    assert img["records"]["count"] < 11 and not img["sites"]
    assert all("__soft_mask_table" not in s for s in img["records"]["unmatched"])


@pytest.mark.corpus
@pytest.mark.slow
def test_stripped_612_vmlinux_nop_drop_records_with_generation(stripped: dict[str, Path], tmp_path: Path) -> None:
    out = _stripped_612_without_init_records(stripped, tmp_path)
    assert_round_trip(stripped["6.12"], out)


def _stripped_612_without_init_records(stripped: dict[str, Path], tmp_path: Path) -> Path:
    out = tmp_path / "vmlinux.nop"
    proc = mcountrw("nop", str(stripped["6.12"]), "-o", str(out), "--drop-records", "--generation", "patchable",
                    "--section", ".init.text")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    n = counts("6.12").init_text
    assert f"made {n} sites untraceable after boot: records dropped, words unchanged (nop; nop)" in proc.stderr
    return out


@pytest.mark.corpus
@pytest.mark.boot
def test_stripped_612_vmlinux_without_init_records_boots_clean(stripped: dict[str, Path], tmp_path: Path) -> None:
    require_tool(QEMU)
    out = _stripped_612_without_init_records(stripped, tmp_path)
    b = boot(out, STANDARD_APPEND, timeout=120)
    assert not b.timed_out and not b.ftrace_bug and not b.oopsed, b.console[-3000:]
    assert b.ftrace_entries == counts("6.12").text  # ftrace allocates for the records left
    assert "do_one_initcall" in b.traced_functions
