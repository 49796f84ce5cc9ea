"""What a new user's review of the rewriting commands found: `prenop -o` naming its input or a place
inside the tree it reads, `prenop --undo/--verify` calling a rewritten file with no log found its own
original, and the grammar of one file."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest
from conftest import FIXTURES, assert_one_line, invoke

BIN = FIXTURES / "bin"
OBJ = BIN / "prof-le.o"  # 6 mprofile sites; prenop takes it as a module under a .ko name


def _shas(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in root.rglob("*") if p.is_file()
    }


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """``tree/a/y.ko`` and ``tree/a/b/x.ko``, and a policy ``nop.policy`` beside it that nops all."""
    (tmp_path / "tree" / "a" / "b").mkdir(parents=True)
    shutil.copy(OBJ, tmp_path / "tree" / "a" / "b" / "x.ko")
    shutil.copy(OBJ, tmp_path / "tree" / "a" / "y.ko")
    (tmp_path / "nop.policy").write_text("default nop\n")
    return tmp_path / "tree"


# -- prenop -o: never the input, never inside the tree ------------------------------------------------


@pytest.mark.parametrize(
    ("out", "inputs", "words"),
    [
        ("a/y.ko", ("a/y.ko",), "is the input"),  # it rewrote the input in place, its log in the tree
        ("a", ("a",), "is the input"),
        ("a/out", ("a",), "inside the tree"),  # a second run took OUT/x.ko for input: OUT/OUT/...
        ("link.ko", ("a/y.ko",), "an input"),  # a hard link: the same file by another name
    ],
)
def test_prenop_output_is_never_its_input(tree: Path, out: str, inputs: tuple[str, ...], words: str) -> None:
    (tree / "link.ko").hardlink_to(tree / "a" / "y.ko")
    before = _shas(tree)
    args = ("prenop", "--policy", tree.parent / "nop.policy", "-o", tree / out, *(tree / i for i in inputs))
    assert_one_line(invoke(*args), 2, "error", f"-o {tree / out}", words)
    assert _shas(tree) == before


# -- prenop --undo/--verify: a rewritten file whose log is not found is not "original" ---------------


def test_undo_of_a_subtree_whose_logs_were_named_from_the_tree_above(tree: Path) -> None:
    """The logs of a run over ``tree/a`` are named ``b/x.ko...``; an undo of ``tree/a/b`` looks for
    ``x.ko...``. One file there has its log (named alone, it is found by its own name): the run
    used to say "all 2 files already are their originals", exit 0, with x.ko still nopped."""
    logs = tree.parent / "logs"
    policy = tree.parent / "nop.policy"
    assert invoke("prenop", "--policy", policy, "--in-place", "--log-dir", logs, tree / "a").exit_code == 0
    lone = tree.parent / "lone.ko"
    shutil.copy(OBJ, lone)
    assert invoke("prenop", "--policy", policy, "--in-place", "--log-dir", logs, lone).exit_code == 0
    nopped = (tree / "a" / "b" / "x.ko").read_bytes()
    undo = invoke("prenop", "--undo", "--in-place", "--log-dir", logs, lone, tree / "a" / "b")
    assert undo.exit_code == 2, undo.output
    assert "already are their originals" not in undo.stdout
    assert "x.ko: no patch log at" in undo.stderr and "6 of its records are zeroed" in undo.stderr
    assert (tree / "a" / "b" / "x.ko").read_bytes() == nopped  # not touched
    assert lone.read_bytes() == OBJ.read_bytes()  # the one with its log was undone
    verify = invoke("prenop", "--verify", "--log-dir", logs, tree / "a" / "b", lone)
    assert verify.exit_code == 1 and "MISMATCH: x.ko" in verify.stderr, verify.output
    # named as the run named it, the tree comes back
    assert invoke("prenop", "--undo", "--in-place", "--log-dir", logs, tree / "a").exit_code == 0
    assert (tree / "a" / "b" / "x.ko").read_bytes() == OBJ.read_bytes()


def test_a_file_never_rewritten_still_counts_as_its_original(tree: Path) -> None:
    """No zeroed record: a file with no log is what it was (a tree with files prenop left alone)."""
    logs = tree.parent / "logs"
    policy = tree.parent / "nop.policy"
    assert invoke("prenop", "--policy", policy, "--in-place", "--log-dir", logs, tree / "a" / "y.ko").exit_code == 0
    assert invoke("prenop", "--undo", "--in-place", "--log-dir", logs, tree / "a" / "y.ko").exit_code == 0
    result = invoke("prenop", "--undo", "--in-place", "--log-dir", logs, tree / "a" / "y.ko", tree / "a" / "b")
    assert result.exit_code == 0, result.output
    assert "nothing changed: all 2 files already are their originals (1 of them with no log: never rewritten)" in (
        result.stdout
    )


# -- a FIFO where a file is read: one line, at once ----------------------------------------------------


@pytest.mark.parametrize(
    "args",
    [
        ("undo", "{fifo}", "--log", "{log}", "-o", "{out}"),
        ("verify", "{fifo}", "{nop}", "--log", "{log}"),
        ("verify", "{prog}", "{fifo}", "--log", "{log}"),
        ("undo", "{nop}", "--log", "{fifo}", "-o", "{out}"),
        ("verify", "{prog}", "{nop}", "--log", "{fifo}"),
        ("apply", "{nop}", "--to", "enabled", "--input-log", "{fifo}", "-o", "{out}"),
        ("prenop", "--policy", "{fifo}", "-o", "{out}", "{prog}"),
        ("check-plan", "{fifo}"),
        ("scan", "{nop}", "--log", "{fifo}"),
        ("diff", "{prog}", "{nop}", "--log", "{fifo}"),
        ("diff", "{fifo}", "{nop}", "--log", "{log}"),
        ("verify", "{prog}", "/dev/null", "--log", "{log}"),  # a device: was MISMATCH, exit 1
    ],
)
def test_a_fifo_or_device_named_as_a_file_is_refused_at_once(tmp_path: Path, args: tuple[str, ...]) -> None:
    """These opened it blocking: ``undo FIFO`` still waited for a writer eleven minutes later."""
    import os
    import subprocess

    from test_bad_input import mcountrw

    prog, nop, fifo, out = tmp_path / "prog", tmp_path / "nop", tmp_path / "fifo", tmp_path / "out"
    shutil.copy(BIN / "prof-le", prog)
    assert invoke("nop", prog, "-o", nop).exit_code == 0
    os.mkfifo(fifo)
    names = {"prog": prog, "nop": nop, "fifo": fifo, "out": out, "log": tmp_path / "nop.mcountrw.jsonl"}
    try:
        proc = mcountrw(*(a.format(**names) for a in args), timeout=60)
    except subprocess.TimeoutExpired:
        pytest.fail(f"{args[0]} blocked on the FIFO")
    named = "/dev/null" if "/dev/null" in args else str(fifo)
    hint = "; a plan piped in is read by `check-plan -`" if args[0] == "check-plan" else ""  # <(plan ...)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines() == [
        f"mcountrw: error: {named}: not a regular file (a FIFO, socket or device){hint}"
    ]
    assert not out.exists()


# -- verify promises the file's bytes, not only its content ------------------------------------------


def test_verify_of_a_module_compressed_again_says_the_file_is_not_the_logs_output(tmp_path: Path) -> None:
    """The ELF inside is the log's output, the file is not (another xz check, or decompressed):
    verify passed it, exit 0, "exactly as the log says", while scan --log refused the same log.
    Undo still gives the original content back, and says what it wrote."""
    import lzma

    orig = tmp_path / "m.ko.xz"
    orig.write_bytes(lzma.compress(OBJ.read_bytes(), check=lzma.CHECK_CRC32))
    out = tmp_path / "n.ko.xz"
    assert invoke("nop", orig, "-o", out, "--drop-records").exit_code == 0
    log = tmp_path / "n.ko.xz.mcountrw.jsonl"
    assert invoke("verify", orig, out, "--log", log).exit_code == 0
    content = lzma.decompress(out.read_bytes())
    again, plain = tmp_path / "again.ko.xz", tmp_path / "plain.ko"
    again.write_bytes(lzma.compress(content, check=lzma.CHECK_CRC64))
    plain.write_bytes(content)
    for other, stored in ((again, "xz-compressed"), (plain, "uncompressed")):
        result = invoke("verify", orig, other, "--log", log)
        assert result.exit_code == 1, result.output
        assert f"its content is exactly the log's output, but the file is not: {stored}" in result.output
    back = tmp_path / "back.ko"
    result = invoke("undo", plain, "--log", log, "-o", back)
    assert result.exit_code == 0, result.output
    assert back.read_bytes() == OBJ.read_bytes()
    want = hashlib.sha256(OBJ.read_bytes()).hexdigest()[:16]
    assert f"wrote {back} (sha256 {want}..., the original's content, stored as {plain} was" in result.stderr


def test_verify_of_an_original_decompressed_or_compressed_again_says_it_is_not_the_logs_input(tmp_path: Path) -> None:
    """The same promise on the ORIGINAL side: a plain or gzip copy of an xz module has the log's
    input content, not its bytes. verify passed it, exit 0, "differs ... exactly as the log says"."""
    import gzip
    import lzma

    orig = tmp_path / "m.ko.xz"
    orig.write_bytes(lzma.compress(OBJ.read_bytes(), check=lzma.CHECK_CRC32))
    out = tmp_path / "n.ko.xz"
    assert invoke("nop", orig, "-o", out, "--drop-records").exit_code == 0
    plain, gz = tmp_path / "m.ko", tmp_path / "m.ko.gz"
    plain.write_bytes(OBJ.read_bytes())
    gz.write_bytes(gzip.compress(OBJ.read_bytes(), mtime=0))
    for other, stored in ((plain, "uncompressed"), (gz, "gzip-compressed")):
        result = invoke("verify", other, out)
        assert result.exit_code == 1, result.output
        assert f"{other}: its content is exactly the log's input, but the file is not: {stored}" in result.output
    assert invoke("verify", orig, out).exit_code == 0


def test_prenop_verify_of_a_tree_compressed_again(tmp_path: Path) -> None:
    import lzma

    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "m.ko.xz").write_bytes(lzma.compress(OBJ.read_bytes(), check=lzma.CHECK_CRC32))
    policy = tmp_path / "p.policy"
    policy.write_text("default nop\n")
    logs = tmp_path / "logs"
    assert invoke("prenop", "--policy", policy, "--in-place", "--log-dir", logs, tree).exit_code == 0
    assert invoke("prenop", "--verify", "--log-dir", logs, tree).exit_code == 0
    nopped = tree / "m.ko.xz"
    nopped.write_bytes(lzma.compress(lzma.decompress(nopped.read_bytes()), check=lzma.CHECK_CRC64))
    result = invoke("prenop", "--verify", "--log-dir", logs, tree)
    assert result.exit_code == 1 and "but the file is not: xz-compressed" in result.output, result.output


# -- a log edited with its footer made right again: the log's fault, named -----------------------------


def _forge(log: Path, edit: object) -> None:
    """Change ``log``'s lines with ``edit`` (a function of the list of parsed lines) and make its
    footer checksum right again: what the checksum alone cannot catch."""
    import json

    lines = [json.loads(line) for line in log.read_text().splitlines()]
    body = lines[:-1]
    edit(body)  # type: ignore[operator]
    text = "".join(json.dumps(x, sort_keys=True) + "\n" for x in body)
    footer = {"lines": lines[-1]["lines"], "sha256": hashlib.sha256(text.encode()).hexdigest(), "type": "footer"}
    log.write_text(text + json.dumps(footer, sort_keys=True) + "\n")


def test_undo_with_a_write_line_edited_names_the_log(tmp_path: Path) -> None:
    prog, out = tmp_path / "prog", tmp_path / "nop"
    shutil.copy(BIN / "prof-le", prog)
    assert invoke("nop", prog, "-o", out).exit_code == 0
    log = tmp_path / "nop.mcountrw.jsonl"

    def new_word(body: list[dict[str, object]]) -> None:
        write = next(x for x in body if x.get("type") == "write")
        write["new"] = "4e800020"  # blr: not what the file holds there

    _forge(log, new_word)
    result = invoke("undo", out, "--log", log, "-o", tmp_path / "back")
    line = assert_one_line(result, 2, "error", f"{log}: undoing it on {out} fails", "the log and the file disagree")
    assert "expected 4e800020" in line
    assert not (tmp_path / "back").exists()


def test_a_record_put_back_that_a_scan_cannot_find_blames_the_log_for_a_logs_site() -> None:
    """Putting back the record of a site only the patch log knows, then finding no site there, is
    the log's lie (an edited log whose checksum was made right again), not mcountrw's bug: it was
    ``internal error: ... this is a bug in mcountrw``, exit 3. A site read from the file itself
    stays an internal error."""
    import dataclasses

    from rewriter.elf.image import Image
    from rewriter.errors import InternalError, LogError
    from rewriter.rewrite import _Choice, _read_back_restored
    from rewriter.sites import Source, scan

    image = Image.load(BIN / "prof-le")
    before = dataclasses.replace(scan(image), log=Path("prof-le.mcountrw.jsonl"))
    site = before.sites[0]
    nowhere = site._replace(place=site.place + 8)  # no site there
    content = bytes(image.data)
    for source, error in ((Source.LOG, LogError), (Source.IMAGE, InternalError)):
        choice = _Choice([], {}, [], [], [nowhere._replace(source=source)])
        with pytest.raises(error) as caught:
            _read_back_restored(content, image, before, choice, set())
        if source is Source.LOG:
            assert str(caught.value).startswith("prof-le.mcountrw.jsonl: ")
            assert "the log's site lines do not match the file" in str(caught.value)


def test_a_log_whose_site_moved_is_not_taken_for_the_files_log(tmp_path: Path) -> None:
    """A site line moved by 8 bytes, the footer made right: the log no longer matches the file's
    edits, so it is set aside with a warning, and nothing pretends to be done. It is the file's
    log (its header says so), damaged: said so, not "not its log"."""
    prog, out = tmp_path / "prog", tmp_path / "nop"
    shutil.copy(BIN / "prof-le", prog)
    assert invoke("nop", prog, "-o", out, "--drop-records").exit_code == 0
    log = tmp_path / "nop.mcountrw.jsonl"

    def move_site(body: list[dict[str, object]]) -> None:
        sites = next(x for x in body if "columns" in x)
        offsets = sites["columns"]["section_offset"]  # type: ignore[index]
        offsets[-1] = hex(int(offsets[-1], 16) + 8)

    _forge(log, move_site)
    result = invoke("apply", out, "--to", "enabled", "-o", tmp_path / "en")
    assert result.exit_code == 1, result.output
    assert "the patch log beside it cannot be read" in result.stderr and "malformed site line" in result.stderr
    assert "is not its log" not in result.stderr and not result.stdout
    assert not (tmp_path / "en").exists()


# -- a dry run checks what the run it previews would; --in-place never through a symlink; --route ---


@pytest.mark.parametrize(
    ("extra", "words"),
    [
        (("-o", "{missing}/x"), "does not exist"),
        (("-o", "{out}", "--in-place"), "--in-place writes the input; do not also give -o"),
    ],
)
def test_a_dry_run_refuses_the_output_options_the_real_run_would(
    tmp_path: Path, extra: tuple[str, ...], words: str
) -> None:
    prog = tmp_path / "prog"
    shutil.copy(BIN / "prof-le", prog)
    names = {"missing": tmp_path / "missing", "out": tmp_path / "out"}
    args = [a.format(**names) for a in extra]
    for dry in ((), ("--dry-run",)):
        assert_one_line(invoke("nop", prog, *args, *dry), 2, "error", words)
    assert invoke("nop", prog, "--dry-run").exit_code == 0  # no output asked for: nothing to check


def test_in_place_through_a_symlink_is_refused(tmp_path: Path) -> None:
    """The rename that replaces the file replaced the link with a regular file, the target left
    as it was (``/boot/vmlinux -> vmlinux-6.1...``)."""
    real, link = tmp_path / "real", tmp_path / "link"
    shutil.copy(BIN / "prof-le", real)
    link.symlink_to(real.name)
    for args in (("nop", link, "--in-place"), ("apply", link, "--to", "disabled", "--in-place")):
        assert_one_line(invoke(*args), 2, "error", f"{link}: is a symlink", "name the file itself")
    assert link.is_symlink() and real.read_bytes() == (BIN / "prof-le").read_bytes()


def test_apply_refuses_a_route_for_one_word_sites(tmp_path: Path) -> None:
    """As ``plan --generation ool --route b8`` does: ool sites have no write order to choose."""
    result = invoke("apply", BIN / "ool-le.o", "--to", "disabled", "--route", "b8", "-o", tmp_path / "x.o")
    assert_one_line(result, 2, "error", "--route b8: ool sites are one word")
    assert not (tmp_path / "x.o").exists()
    ok = invoke("apply", BIN / "prof-le", "--to", "disabled", "--route", "b8", "-o", tmp_path / "y")
    assert ok.exit_code == 0, ok.output


def test_prenop_log_dir_that_is_a_file_is_refused_before_anything(tmp_path: Path) -> None:
    """It printed the run's table, then ``.../x.ko.mcountrw.jsonl: Not a directory`` for each file."""
    (tmp_path / "logs").write_text("a file\n")
    (tmp_path / "nop.policy").write_text("default nop\n")
    tree = tmp_path / "tree"
    tree.mkdir()
    shutil.copy(OBJ, tree / "x.ko")
    args = ("prenop", "--policy", tmp_path / "nop.policy", "-o", tmp_path / "out", "--log-dir", tmp_path / "logs", tree)
    result = invoke(*args)
    assert_one_line(result, 2, "error", f"--log-dir {tmp_path / 'logs'}: not a directory")
    assert not result.stdout and not (tmp_path / "out").exists()


def test_a_selection_matching_nothing_in_a_copy_without_its_log_says_why(tmp_path: Path) -> None:
    """A rewritten file copied without its log: the function asked for is among the sites only the
    log knows; the message said only "matches none of its 1 sites"."""
    prog, out, copy = tmp_path / "prog", tmp_path / "nop", tmp_path / "copy"
    shutil.copy(BIN / "prof-le", prog)
    assert invoke("nop", prog, "-o", out, "--drop-records", "--exclude", "leaf_add").exit_code == 0
    shutil.copy(out, copy)
    result = invoke("apply", copy, "--to", "enabled", "--only", "sum8", "-o", tmp_path / "en")
    assert_one_line(
        result, 1, "nothing to do", "--only sum8: matches none of its 1 site;", "5 of its records are zeroed",
        "patch log is not here (give it with --input-log)",
    )  # fmt: skip
    given = invoke("apply", copy, "--to", "enabled", "--only", "sum8", "--input-log", tmp_path / "nop.mcountrw.jsonl",
                   "-o", tmp_path / "en")  # fmt: skip
    assert given.exit_code == 0, given.output


@pytest.mark.corpus
def test_keep_records_says_the_kernel_will_refuse_what_it_wrote(corpus, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """``--keep-records`` builds, on purpose, an image whose recorded places hold words the boot-time
    init refuses: it said nothing of it. Booted kinds only: an executable is never booted."""
    module = corpus.modules_dir / "fs/nls/nls_utf8.ko"
    result = invoke("nop", module, "-o", tmp_path / "n.ko", "--keep-records", "--strip-signature")
    assert result.exit_code == 0, result.output
    assert (
        f"warning: {module}: 3 recorded sites now hold nopped words" in result.stderr and "ftrace bug" in result.stderr
    )
    plain = invoke("nop", BIN / "prof-le", "-o", tmp_path / "p", "--keep-records")
    assert plain.exit_code == 0 and "warning" not in plain.stderr, plain.output


def test_stage_images_names_a_directory_and_makes_none_for_nothing(tmp_path: Path) -> None:
    """``--stage-images FILE`` said ``FILE: File exists``; a records-only rewrite made an empty one."""
    prog = tmp_path / "prog"
    shutil.copy(BIN / "prof-le", prog)
    result = invoke("apply", prog, "--to", "disabled", "-o", tmp_path / "out", "--stage-images", prog)
    assert_one_line(result, 2, "error", f"--stage-images {prog}: not a directory")
    assert not (tmp_path / "out").exists()
    stages = tmp_path / "stages"
    result = invoke("nop", BIN / "patchable-le.o", "--drop-records", "-o", tmp_path / "p.o", "--stage-images", stages)
    assert result.exit_code == 0 and f"no stage image written to {stages}" in result.stderr, result.output
    assert not stages.exists()


def test_undo_of_a_chain_step_names_the_log_before_from_where_it_runs(tmp_path: Path) -> None:
    """It printed the path the log names (from where the first run was made), also after that file
    had gone."""
    import os

    first, second, third = tmp_path / "c1", tmp_path / "c2", tmp_path / "c3"
    shutil.copy(BIN / "prof-le", first)
    assert invoke("nop", first, "--only", "leaf_add", "-o", second).exit_code == 0
    assert invoke("nop", second, "--only", "sum8", "-o", third).exit_code == 0
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    here = Path.cwd()
    os.chdir(elsewhere)
    try:
        log = Path("..") / "c3.mcountrw.jsonl"
        result = invoke("undo", Path("..") / "c3", "--log", log, "-o", "back")
        assert "c2.mcountrw.jsonl (undo with it for the step before)" in result.stderr, result.output
        (tmp_path / "c2.mcountrw.jsonl").unlink()
        result = invoke("undo", Path("..") / "c3", "--log", log, "-o", "back2")
        assert "is not found" in result.stderr and "cannot be undone without it" in result.stderr, result.output
    finally:
        os.chdir(here)


def test_undo_of_a_chain_step_finds_the_log_before_from_the_undone_logs_directory(tmp_path: Path) -> None:
    """A step run from its log's own directory names the log before relative to it
    (``../a/L1.jsonl``); an undo run from elsewhere said that log was not found, though it was
    there and undid the step before byte for byte."""
    import os

    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    src = tmp_path / "in"
    shutil.copy(BIN / "prof-le", src)
    here = Path.cwd()
    try:
        os.chdir(tmp_path)
        assert invoke("nop", "in", "--only", "leaf_add", "-o", "a/s1", "--log", "a/L1.jsonl").exit_code == 0
        os.chdir(tmp_path / "b")
        step = ("apply", "../a/s1", "--to", "disabled", "--input-log", "../a/L1.jsonl", "-o", "s2", "--log", "L2.jsonl")
        assert invoke(*step).exit_code == 0
        os.chdir(tmp_path.anchor)
        result = invoke("undo", tmp_path / "b" / "s2", "--log", tmp_path / "b" / "L2.jsonl", "-o", tmp_path / "u1")
    finally:
        os.chdir(here)
    assert result.exit_code == 0, result.output
    assert f"its own log: {tmp_path / 'a' / 'L1.jsonl'} (undo with it" in result.stderr, result.output
    assert (tmp_path / "u1").read_bytes() == (tmp_path / "a" / "s1").read_bytes()


# -- undo and verify find the log where apply and nop wrote it ------------------------------------------


def test_undo_and_verify_take_the_log_beside_the_file_by_default(tmp_path: Path) -> None:
    """`nop F -o OUT` writes OUT.mcountrw.jsonl, and says so: `undo OUT` and `verify F OUT` read it
    from there without `--log` (they required it before, "Missing option '--log'")."""
    original = tmp_path / "prof-le.o"
    shutil.copy(OBJ, original)
    nopped = tmp_path / "nopped.o"
    assert invoke("nop", original, "-o", nopped).exit_code == 0
    assert (tmp_path / "nopped.o.mcountrw.jsonl").is_file()

    checked = invoke("verify", original, nopped)
    assert checked.exit_code == 0 and checked.stdout.startswith("ok: ")
    assert "nopped.o.mcountrw.jsonl says" in checked.stdout, checked.stdout

    back = tmp_path / "back.o"
    undone = invoke("undo", nopped, "-o", back)
    assert undone.exit_code == 0, undone.output
    assert back.read_bytes() == original.read_bytes()


def test_undo_and_verify_without_a_log_beside_the_file_say_where_they_looked(tmp_path: Path) -> None:
    """No `--log` and none beside the file: one line naming the file and the log's name, exit 2,
    nothing written."""
    original = tmp_path / "prof-le.o"
    shutil.copy(OBJ, original)
    before = _shas(tmp_path)
    for args in (("undo", original, "-o", tmp_path / "out.o"), ("verify", original, original)):
        assert_one_line(invoke(*args), 2, "error", str(original), "prof-le.o.mcountrw.jsonl", "pass --log")
    assert _shas(tmp_path) == before
