"""What a new user's review of the read-only commands (scan, audit, diff, policy check) found: `-o`
naming a file the command reads, `--jobs` beyond the cores, `--mcount-addr` out of range or beside
an `_mcount` symbol, failed files in the HTML audit, module trees of .ko against .ko.xz, and a
policy checked against no image."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest
from conftest import FIXTURES, assert_one_line, invoke

BIN = FIXTURES / "bin"
PROF = BIN / "prof-le"


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# -- -o never replaces what the command reads ---------------------------------------------------------


@pytest.mark.parametrize(
    "args",
    [
        ("scan", "-o", "{prog}", "{prog}"),
        ("scan", "--format", "json", "-o", "{prog}", "{prog}"),
        ("audit", "-o", "{prog}", "{prog}"),
        ("audit", "--format", "html", "-o", "{prog}", "{prog}"),
        ("diff", "-o", "{other}", "{prog}", "{other}"),
        ("scan", "-o", "{tree}/prog", "{tree}"),  # a file inside the directory scanned
        ("scan", "-o", "{link}", "{prog}"),  # another name of the same file
    ],
)
def test_output_naming_an_input_is_refused(tmp_path: Path, args: tuple[str, ...]) -> None:
    prog, other, tree = tmp_path / "prog", tmp_path / "other", tmp_path / "tree"
    for p in (prog, other):
        shutil.copy(PROF, p)
    tree.mkdir()
    shutil.copy(PROF, tree / "prog")
    (tmp_path / "link").hardlink_to(prog)
    names = {"prog": prog, "other": other, "tree": tree, "link": tmp_path / "link"}
    before = {p: _sha(p) for p in (prog, other, tree / "prog")}
    result = invoke(*(a.format(**names) for a in args))
    assert_one_line(result, 2, "error", "-o", "an input this command reads", "would replace it")
    assert {p: _sha(p) for p in before} == before


def test_output_naming_the_patch_log_is_refused(tmp_path: Path) -> None:
    """The log beside a rewritten image is what undo needs: a report written over it loses it."""
    out = tmp_path / "prog.nop"
    assert invoke("nop", PROF, "-o", out).exit_code == 0
    log = tmp_path / "prog.nop.mcountrw.jsonl"
    sha = _sha(log)
    for command in ("scan", "audit"):
        result = invoke(command, out, "-o", log)
        assert_one_line(result, 2, "error", str(log), "a patch log this command reads")
        assert _sha(log) == sha
    # a report beside them is fine, and still knows the log's sites
    result = invoke("scan", out, "-o", tmp_path / "report.txt")
    assert result.exit_code == 0, result.output
    assert "6 sites" in (tmp_path / "report.txt").read_text()


# -- --jobs: never more workers than cores, nor than tasks ------------------------------------------


def test_jobs_beyond_the_cores_use_the_cores() -> None:
    from rewriter.batch import default_jobs
    from rewriter.cli.common import workers

    assert workers(0) == workers(100_000) == default_jobs()
    assert workers(1) == 1


def test_a_pool_has_no_more_workers_than_tasks(monkeypatch: pytest.MonkeyPatch) -> None:
    """``-j 100000`` once forked thousands of workers for 21 files and ran the machine out of memory."""
    from contextlib import contextmanager

    import rewriter.batch as batch

    asked: list[int] = []
    real = batch.worker_pool

    @contextmanager
    def spy(jobs: int, quiet_workers: bool = True):  # type: ignore[no-untyped-def]
        asked.append(jobs)
        with real(jobs, quiet_workers) as pool:
            yield pool

    monkeypatch.setattr(batch, "worker_pool", spy)
    assert list(batch.map_chunks(_double, list(range(10)), 1000)) == [2 * i for i in range(10)]
    assert asked == [len(batch.chunks_of(list(range(10)), 1000))] and asked[0] < 10
    got = dict(batch.map_batches(_double, [[1], [2], [3]], 1000))
    assert got == {0: [2], 1: [4], 2: [6]} and asked[1] == 3


def _double(items: list[int]) -> list[int]:
    return [2 * i for i in items]


# -- --mcount-addr: a 64-bit address, and only where no symbol names _mcount ------------------------


@pytest.mark.parametrize("value", ["-5", "0x10000000000000000", "0xffffffffffffffffff"])
def test_mcount_addr_out_of_range_is_the_options_fault(value: str) -> None:
    """Not ``prof-le: corrupt ELF data (OverflowError ...)``: the file is fine, the option is not."""
    for command in ("scan", "audit"):
        line = assert_one_line(invoke(command, "--mcount-addr", value, PROF), 2, "error", "--mcount-addr")
        assert "64-bit address" in line and "corrupt" not in line


def test_mcount_addr_beside_an_mcount_symbol() -> None:
    """The same address as the image's ``_mcount`` is harmless; another is refused, naming both
    (added, it would make every ``bl`` to it a site)."""
    from rewriter.elf.image import Image

    image = Image.load(PROF)
    assert image.symbols is not None
    (mcount,) = [int(image.symbols.table[i]["st_value"]) for i in image.symbols.find("_mcount")]
    plain = invoke("scan", "--format", "json", PROF)
    same = invoke("scan", "--format", "json", "--mcount-addr", hex(mcount), PROF)
    assert same.exit_code == 0 and same.stdout == plain.stdout
    other = invoke("scan", "--mcount-addr", hex(mcount + 0x40), PROF)
    assert_one_line(other, 2, "error", str(PROF), f"{mcount + 0x40:#x}", f"_mcount at {mcount:#x}", "stripped")


# -- every audit format names the files it could not read --------------------------------------------


@pytest.mark.parametrize("fmt", ["html", "md", "json", "sarif"])
def test_audit_reports_name_the_files_left_out(tmp_path: Path, fmt: str) -> None:
    """A tree with a truncated ELF and a truncated .ko.xz: exit 2, and the report, HTML included,
    names both (the HTML page once read as a clean audit of "1 image")."""
    tree = tmp_path / "tree"
    tree.mkdir()
    shutil.copy(PROF, tree / "good")
    (tree / "trunc.elf").write_bytes(PROF.read_bytes()[:3000])
    (tree / "bad.ko.xz").write_bytes(b"\xfd7zXZ\x00" + bytes(40))
    out = tmp_path / f"report.{fmt}"
    result = invoke("audit", "--format", fmt, "-o", out, tree)
    assert result.exit_code == 2, result.output
    text = out.read_text()
    assert "trunc.elf" in text and "bad.ko.xz" in text
    if fmt == "html":
        assert "2 files not read" in text and "<h2>Errors</h2>" in text


# -- diff of two trees: ext4.ko pairs with ext4.ko.xz ----------------------------------------------


def test_trees_pair_a_module_with_its_compressed_self(tmp_path: Path) -> None:
    """Debian 6.1 ships .ko and 6.12 .ko.xz: the same module under both names is one pair. A
    tree holding both names keeps them apart (each pairs only with its own name)."""
    import json
    import lzma

    a, b = tmp_path / "a" / "m", tmp_path / "b" / "m"
    a.mkdir(parents=True)
    b.mkdir(parents=True)
    obj = (BIN / "prof-le.o").read_bytes()
    (a / "x.ko").write_bytes(obj)
    (b / "x.ko.xz").write_bytes(lzma.compress(obj, check=lzma.CHECK_CRC32))
    (a / "both.ko").write_bytes(obj)
    (b / "both.ko").write_bytes(obj)
    (b / "both.ko.xz").write_bytes(lzma.compress(obj, check=lzma.CHECK_CRC32))
    for jobs in ("1", "2"):
        result = invoke("diff", "--jobs", jobs, "--format", "json", a.parent, b.parent)
        assert result.exit_code == 1, result.output  # a file only in B is a difference
        report = json.loads(result.stdout)
        pairs = sorted((Path(i["a"]).name, Path(i["b"]).name) for i in report["images"])
        assert pairs == [("both.ko", "both.ko"), ("x.ko", "x.ko.xz")]
        assert [Path(p).name for p in report["only_b"]] == ["both.ko.xz"] and report["only_a"] == []
        assert all(i["changes"] == [] and i["unchanged"] == 6 for i in report["images"])


# -- policy check: --mcount-addr as prenop has it, and no report when no image was read ------------


def test_policy_check_takes_the_mcount_addr_a_stripped_image_needs(tmp_path: Path) -> None:
    """The error that tells the user to pass --mcount-addr is only honest if the command has it:
    policy check does, as scan, audit and prenop do."""
    from test_bad_input import Elf
    from test_stripped import mcount_of, strip

    elf = Elf(strip(BIN / "clean", tmp_path / "stripped").read_bytes())
    names = elf.image.section_bytes(elf.image.sections[int(elf.image.ehdr["e_shstrndx"])])
    at = elf.get(elf.shdr(".shstrtab", "sh_offset")) + names.index(b"__mcount_loc\0")
    elf.data[at : at + 2] = b"XX"  # no record table to find: only --mcount-addr finds the calls
    bare = tmp_path / "bare"
    bare.write_bytes(elf.bytes())
    policy = tmp_path / "p.policy"
    policy.write_text("default nop\n")
    without = invoke("policy", "check", policy, bare)
    assert_one_line(without, 2, "error", str(bare), "--mcount-addr")
    assert not without.stdout
    given = invoke("policy", "check", policy, bare, "--mcount-addr", hex(mcount_of(BIN / "clean")))
    assert given.exit_code == 0, given.output
    assert "1 file (mprofile 1), 3 sites" in given.stdout and "(unnamed)" in given.stdout


def test_policy_check_of_nothing_readable_prints_no_report(tmp_path: Path) -> None:
    """Every image failed: the errors and exit 2, not a table of rules that "match nothing"."""
    policy = tmp_path / "p.policy"
    policy.write_text("default nop\nkeep leaf_add\n")
    text = tmp_path / "notes.ko"
    text.write_text("not an ELF\n")
    result = invoke("policy", "check", policy, text)
    assert_one_line(result, 2, "error", str(text))
    assert result.stdout == ""
    # one image read: the report, and its one warning is true
    result = invoke("policy", "check", policy, PROF, text)
    assert result.exit_code == 2 and "1 file (mprofile 1), 6 sites" in result.stdout
    assert "matches nothing" not in result.stdout
