"""No silent no-ops (issue 12): a rewrite that finds no site at all, or whose selection matches
none, exits 1 with one line naming the likely cause or the selection, and writes nothing; a
rerun whose sites are all at the target already exits 0 and says so (in place it writes nothing,
so the log that leads back to the original stays); prenop on files with no site at all exits 1.

Each case runs the real CLI (``python3 -m rewriter``) on a committed fixture or a variant of one
made here: ``clean`` without its ``__mcount_loc`` (the issue's test program, built with ``-pg
-mprofile-kernel`` and no records), and the same without ``_mcount`` either (a program built
without ``-pg``)."""

from __future__ import annotations

import dataclasses
import hashlib
import subprocess
from pathlib import Path

from conftest import FIXTURES
from test_bad_input import Elf, mcountrw

from rewriter.elf.image import Image
from rewriter.files import ScanHints, no_site_cause
from rewriter.log import default_log_path
from rewriter.sites import Records, scan

BIN = FIXTURES / "bin"


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _rename(elf: Elf, table: str, old: bytes, new: bytes) -> None:
    """Rename a section (``.shstrtab``) or a symbol (``.strtab``) in place, same length."""
    sec = elf.image.section(table)
    assert sec is not None and len(old) == len(new)
    names = bytes(elf.data[sec.offset : sec.offset + sec.size])
    at = sec.offset + names.index(b"\0" + old + b"\0") + 1
    elf.data[at : at + len(old)] = new


def no_records(tmp_path: Path, name: str = "prog") -> Path:
    """``clean`` as the issue's test program: calls to _mcount, no __mcount_loc."""
    elf = Elf((BIN / "clean").read_bytes())
    _rename(elf, ".shstrtab", b"__mcount_loc", b"XXmcount_loc")
    path = tmp_path / name
    path.write_bytes(elf.bytes())
    return path


def no_mcount(tmp_path: Path) -> Path:
    """A program built without -pg, in miniature: no records, and no _mcount to call."""
    elf = Elf(no_records(tmp_path).read_bytes())
    _rename(elf, ".strtab", b"_mcount", b"_mXount")
    path = tmp_path / "plain"
    path.write_bytes(elf.bytes())
    return path


def assert_nothing_to_do(proc: subprocess.CompletedProcess[str], *words: str) -> str:
    """Exit 1 and exactly one line on stderr, ``mcountrw: nothing to do: ...``, with ``words``."""
    assert proc.returncode == 1, (proc.returncode, proc.stdout, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("mcountrw: nothing to do: "), proc.stderr
    for w in words:
        assert w in lines[0], f"{w!r} not in {lines[0]!r}"
    return lines[0]


def _listing(d: Path) -> list[str]:
    return sorted(p.relative_to(d).as_posix() for p in d.rglob("*"))


# -- no site at all --------------------------------------------------------------------------


def test_the_issues_test_program_nopped_then_applied_says_its_sites_were_nopped_earlier(tmp_path: Path) -> None:
    """With its patch log beside it, the nopped program's sites come back from the log (issue 12);
    without the log nothing is left to find, and the refusal says why."""
    prog = no_records(tmp_path)
    done = mcountrw("nop", str(prog), "-o", str(tmp_path / "all"))
    assert done.returncode == 0 and "changed 3 sites to nopped" in done.stderr, done.stderr
    back = mcountrw("apply", str(tmp_path / "all"), "--to", "enabled", "-o", str(tmp_path / "en"))
    assert back.returncode == 0, back.stderr
    assert _sha(tmp_path / "en") == _sha(prog)  # the log's sites came back, word for word
    default_log_path(tmp_path / "all").unlink()
    before = _listing(tmp_path)
    proc = mcountrw("apply", str(tmp_path / "all"), "--to", "enabled", "-o", str(tmp_path / "en2"),
                    "--stage-images", str(tmp_path / "st"))  # fmt: skip
    words = ("no ftrace call site found", "_mcount is there", "nopped by an earlier rewrite")
    line = assert_nothing_to_do(proc, f"{tmp_path / 'all'}: ", *words, "whose patch log is not here")
    assert _listing(tmp_path) == before, line  # no output, no log, no stage image
    assert_nothing_to_do(mcountrw("nop", str(tmp_path / "all"), "--in-place"), "whose patch log is not here")


def test_a_stale_log_beside_the_file_is_named_but_not_used(tmp_path: Path) -> None:
    """A log beside the file that is not its log (another output's hash) is not read, and the
    refusal says so, without suggesting an undo that log cannot do."""
    prog = no_records(tmp_path)
    assert mcountrw("nop", str(prog), "-o", str(tmp_path / "all")).returncode == 0
    log = default_log_path(tmp_path / "all")
    text = log.read_text()
    (tmp_path / "other").write_bytes((tmp_path / "all").read_bytes() + b"\0")  # same sites, another hash
    default_log_path(tmp_path / "other").write_text(text)
    proc = mcountrw("apply", str(tmp_path / "other"), "--to", "enabled", "--dry-run")
    line = assert_nothing_to_do(proc, "the patch log beside it is not its log", "other.mcountrw.jsonl: ignored")
    assert "mcountrw undo" not in line  # that log would not undo this file


def test_dropped_records_name_the_earlier_rewrite(tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert mcountrw("nop", str(BIN / "clean"), "-o", str(out), "--drop-records").returncode == 0
    rerun = mcountrw("nop", str(out), "--in-place", "--drop-records")  # its log knows the sites: a no-op
    assert rerun.returncode == 0 and "nothing to change" in rerun.stderr, rerun.stderr
    default_log_path(out).unlink()
    proc = mcountrw("nop", str(out), "--in-place", "--drop-records")
    assert_nothing_to_do(proc, "its 3 records are all zeroed (--drop-records)", "earlier rewrite")
    # the same for a relocatable object: its records' relocations went, the slots stay zero
    obj = tmp_path / "obj.o"
    assert mcountrw("nop", str(BIN / "prof-le.o"), "-o", str(obj), "--drop-records").returncode == 0
    assert mcountrw("apply", str(obj), "--to", "enabled", "--dry-run").returncode == 0  # back from its log
    default_log_path(obj).unlink()
    assert_nothing_to_do(mcountrw("apply", str(obj), "--to", "enabled", "--dry-run"), "its 6 records are all zeroed")


def test_a_program_built_without_pg_says_so(tmp_path: Path) -> None:
    plain = no_mcount(tmp_path)
    proc = mcountrw("nop", str(plain), "-o", str(tmp_path / "out"))
    assert_nothing_to_do(proc, "no records (__mcount_loc", "no bl to an mcount entry", "-pg")
    assert not (tmp_path / "out").exists()


def test_a_stripped_image_with_no_site_suggests_mcount_addr_and_generation(tmp_path: Path) -> None:
    """Where the scan of a stripped image succeeds but finds nothing (a stripped image the scan
    cannot even search is refused by the scan itself, exit 2, with the same advice:
    tests/test_bad_input.py::stripped-no-records)."""
    image = Image.load(BIN / "clean")
    bare = Image.from_bytes(tmp_path / "stripped", _stripped_bytes())
    empty = dataclasses.replace(scan(image), sites=(), records=Records(0, 0, (), ()), mcount_entries=())
    cause = no_site_cause(bare, empty, ScanHints())
    assert "stripped image" in cause and "--mcount-addr" in cause and "--generation" in cause
    assert "stripped" not in no_site_cause(bare, empty, ScanHints(mcount_addr=0x10000000))


def _stripped_bytes() -> bytes:
    from rewriter.elf import structs as S

    elf = Elf((BIN / "clean").read_bytes())
    elf.set(elf.shdr(".symtab", "sh_type"), S.SHT_PROGBITS)  # no symbol table: stripped
    return elf.bytes()


# -- selections ------------------------------------------------------------------------------


def test_selections_that_match_nothing_name_themselves_and_write_nothing(tmp_path: Path) -> None:
    clean = str(BIN / "clean")
    out = str(tmp_path / "out")
    cases = [
        (("--only", "no_such_fn"), ("--only no_such_fn: matches none of its 3 sites",)),
        (("--exclude", "clean_lef"), ("--exclude clean_lef: matches none",)),  # a typo would nop clean_leaf
        (("--section", ".init.text", "--addr", "0x4"), ("--section .init.text, --addr 0x4: match none",)),
        (("--only", "clean_*", "--exclude", "clean_*"), ("--only clean_* --exclude clean_*: leaves none",)),
    ]
    for args, words in cases:
        assert_nothing_to_do(mcountrw("nop", clean, "-o", out, "--drop-records", *args), *words)
        assert_nothing_to_do(mcountrw("apply", clean, "--to", "disabled", "-o", out, *args), *words)
    assert not list(tmp_path.iterdir())


# -- reruns ----------------------------------------------------------------------------------


def test_a_rerun_in_place_is_a_no_op_that_says_so_and_keeps_the_log(tmp_path: Path) -> None:
    f = tmp_path / "clean"
    f.write_bytes((BIN / "clean").read_bytes())
    assert mcountrw("nop", str(f), "--in-place").returncode == 0  # records kept: an executable boots nothing
    shas = (_sha(f), _sha(default_log_path(f)))
    again = mcountrw("nop", str(f), "--in-place")
    assert again.returncode == 0, again.stderr
    assert again.stderr.strip() == (
        f"{f}: nothing to change: all 3 selected sites are already nopped (nop; nop); "
        "nothing written (the file and its patch log stay as they are)"
    )
    assert (_sha(f), _sha(default_log_path(f))) == shas
    back = mcountrw("undo", str(f), "--log", str(default_log_path(f)), "-o", str(tmp_path / "back"))
    assert back.returncode == 0 and _sha(tmp_path / "back") == _sha(BIN / "clean")  # the log still leads back


def test_a_rerun_to_a_copy_says_so_and_names_what_it_wrote(tmp_path: Path) -> None:
    proc = mcountrw("apply", str(BIN / "clean"), "--to", "enabled", "-o", str(tmp_path / "en"),
                    "--stage-images", str(tmp_path / "st"))  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "nothing to change: all 3 selected sites are already enabled (mflr r0; bl); wrote" in proc.stderr
    assert f"no stage image written to {tmp_path / 'st'}" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_stage_images_of_a_records_only_rewrite_say_none_was_written(tmp_path: Path) -> None:
    proc = mcountrw("nop", str(BIN / "patchable-le.o"), "-o", str(tmp_path / "out.o"), "--drop-records",
                    "--stage-images", str(tmp_path / "st"))  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert f"no stage image written to {tmp_path / 'st'}: this rewrite writes no word (records only)" in proc.stderr
    assert not list((tmp_path / "st").glob("*"))


# -- prenop ----------------------------------------------------------------------------------


def test_prenop_on_files_without_any_site_exits_1_and_says_why(tmp_path: Path) -> None:
    policy = tmp_path / "p.policy"
    policy.write_text("default nop\nkeep no_such_fn\n")
    plain = no_mcount(tmp_path)
    proc = mcountrw("prenop", "--policy", str(policy), "--in-place", str(plain))
    assert proc.returncode == 1, (proc.stdout, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert lines[-1].startswith("mcountrw: nothing to do: no ftrace call site in the one file; plain: ")
    assert "no bl to an mcount entry" in lines[-1]
    assert not default_log_path(plain).exists()


def test_prenop_warns_about_rules_that_decide_nothing_and_notes_files_without_sites(tmp_path: Path) -> None:
    policy = tmp_path / "p.policy"
    policy.write_text("default nop\nkeep no_such_fn\nkeep clean_leaf\n")
    clean = tmp_path / "clean"
    clean.write_bytes((BIN / "clean").read_bytes())
    plain = no_mcount(tmp_path)
    proc = mcountrw("prenop", "--policy", str(policy), "--in-place", str(clean), str(plain))
    assert proc.returncode == 0, (proc.stdout, proc.stderr)
    assert f"warning: {policy}:2: `keep no_such_fn` decides no site in these 2 files" in proc.stdout
    assert f"{policy}:3" not in proc.stdout
    assert "note: 1 file with no ftrace site at all; first: plain: no records" in proc.stdout
