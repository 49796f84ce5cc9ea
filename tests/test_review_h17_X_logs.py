"""A review of where rewrites find and leave their patch logs: `--in-place` with `--input-log`,
the logs `--log-dir` keeps, and what each refusal says of the log it names."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from boot import _missing, require_kernel, require_tool
from conftest import FIXTURES, assert_one_line, invoke

# -- --in-place with --input-log: the log beside the file judged for what it is ---------------------


def _nopped_with_log_elsewhere(tmp_path: Path, source: Path, *select: str) -> tuple[Path, Path]:
    """``source`` copied, its sites nopped and unrecorded but ``select``; the output and a copy of
    its log kept in logs/ (the log beside the output stays)."""
    original, nopped = tmp_path / source.name, tmp_path / f"{source.name}.nop"
    shutil.copy(source, original)
    done = invoke("nop", original, "-o", nopped, "--drop-records", *select)
    assert done.exit_code == 0, done.output
    kept = tmp_path / "logs" / "L"
    kept.parent.mkdir()
    shutil.copy(f"{nopped}.mcountrw.jsonl", kept)
    return nopped, kept


def test_in_place_with_a_copy_of_the_files_own_log_given_as_input_log(tmp_path: Path) -> None:
    """`apply F --in-place --input-log logs/L`, L a copy of the log beside F: refused with "F's log:
    not the log of F", which it is. Replacing a copy loses nothing (the new log names L): the
    run works, and undo in place then finds L."""
    nopped, kept = _nopped_with_log_elsewhere(tmp_path, FIXTURES / "bin" / "prof-le", "--exclude", "leaf_add")
    original = tmp_path / "prof-le"
    done = invoke("apply", nopped, "--to", "enabled", "--only", "sum8", "--in-place", "--input-log", kept)
    assert done.exit_code == 0, done.output
    assert f"the log builds on {kept}" in done.stderr, done.stderr
    undone = invoke("undo", nopped, "--in-place")
    assert undone.exit_code == 0, undone.output
    assert f"its own log: {kept}" in undone.stderr, undone.stderr
    assert invoke("verify", original, nopped, "--log", kept).exit_code == 0


def test_in_place_refusal_says_what_the_log_beside_the_file_is(tmp_path: Path) -> None:
    """Given `--input-log` elsewhere, the log beside F is not replaced unless it is a copy of that
    log; the refusal names it for what it is: another log of F too, one that cannot be read, or
    (only then) not the log of F."""
    nopped, kept = _nopped_with_log_elsewhere(tmp_path, FIXTURES / "bin" / "prof-le", "--exclude", "leaf_add")
    beside = Path(f"{nopped}.mcountrw.jsonl")
    twin = tmp_path / "twin"
    assert invoke("nop", tmp_path / "prof-le", "-o", twin, "--drop-records", "--exclude", "leaf_add").exit_code == 0
    assert twin.read_bytes() == nopped.read_bytes()
    other = tmp_path / "other"
    assert invoke("nop", tmp_path / "prof-le", "-o", other, "--drop-records", "--only", "leaf_add").exit_code == 0
    cases = (
        (Path(f"{twin}.mcountrw.jsonl").read_bytes(), "a patch log of", f"not the --input-log {kept}"),
        (kept.read_bytes()[:300], "cannot be read", "truncated"),
        (Path(f"{other}.mcountrw.jsonl").read_bytes(), "not the log of", str(nopped)),
    )
    before = nopped.read_bytes()
    for text, *words in cases:
        beside.write_bytes(text)
        done = invoke("apply", nopped, "--to", "enabled", "--only", "sum8", "--in-place", "--input-log", kept)
        assert_one_line(done, 2, "error", str(beside), "an in-place rewrite would replace it", *words)
        assert nopped.read_bytes() == before and beside.read_bytes() == text


def test_in_place_with_the_log_beside_named_by_another_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`--input-log $PWD/F.mcountrw.jsonl` is the log beside F, which `--in-place` moves aside as it
    does without the option; spelled otherwise than `F.mcountrw.jsonl`, it was refused as a log
    "which its undo needs (only --in-place ... moves it aside first)", given --in-place."""
    nopped, _ = _nopped_with_log_elsewhere(tmp_path, FIXTURES / "bin" / "prof-le", "--exclude", "leaf_add")
    monkeypatch.chdir(tmp_path)
    beside = tmp_path / f"{nopped.name}.mcountrw.jsonl"
    done = invoke("apply", nopped.name, "--to", "enabled", "--only", "sum8", "--in-place", "--input-log", beside)
    assert done.exit_code == 0, done.output
    for _ in range(2):  # the step, then the nop before it: the chain was kept beside the file
        assert invoke("undo", nopped.name, "--in-place").exit_code == 0
    assert nopped.read_bytes() == (tmp_path / "prof-le").read_bytes()
    assert not beside.exists()


@pytest.mark.corpus
def test_in_place_with_a_copy_of_the_log_on_the_612_vmlinux(tmp_path: Path) -> None:
    """The same on the 6.12 vmlinux, whose sites come back by their records alone."""
    nopped, kept = _nopped_with_log_elsewhere(tmp_path, require_kernel("6.12").vmlinux, "--exclude", "do_one_initcall")
    done = invoke("apply", nopped, "--to", "enabled", "--only", "vfs_*", "--in-place", "--input-log", kept)
    assert done.exit_code == 0, done.output
    assert "records restored" in done.stderr and f"the log builds on {kept}" in done.stderr, done.stderr


# -- a stage image's place refused before anything is written -----------------------------------------


def test_a_stage_image_place_that_is_a_directory_is_refused_before_any_write(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`nop F -o G --stage-images st` with st/F.stage2 a directory: the rename at the end found it,
    once the output, its log and stage 1's image were written (then removed), and a dry run
    passed. The plan says how many stages there are: every place is checked before the first write."""
    import rewriter.files

    source = tmp_path / "prof-le"
    shutil.copy(FIXTURES / "bin" / "prof-le", source)
    (tmp_path / "st" / "prof-le.stage2").mkdir(parents=True)
    written: list[Path] = []
    real = rewriter.files.write_temp

    def spy(path: Path, *args: object, **kwargs: object) -> object:
        written.append(path)
        return real(path, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(rewriter.files, "write_temp", spy)
    for where in (("-o", tmp_path / "out"), ("--dry-run",)):
        done = invoke("nop", source, *where, "--drop-records", "--stage-images", tmp_path / "st")
        assert_one_line(done, 2, "error", "--stage-images", "the image of stage 2", "prof-le.stage2: Is a directory")
        assert written == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["prof-le", "st"]
    long_name = tmp_path / ("a" * 250)
    shutil.copy(source, long_name)
    done = invoke("nop", long_name, "-o", tmp_path / "out", "--drop-records", "--stage-images", tmp_path / "new")
    assert_one_line(done, 2, "error", "the image of stage 1", "File name too long")
    assert written == [] and not (tmp_path / "new").exists()


# -- a log --log-dir keeps by the file's own name, the file now named by its path below a directory ----


def _tree_with_log_by_name(tmp_path: Path) -> tuple[Path, Path, Path]:
    """T/R/prof-le nopped in place by a run that named it by itself (`--log-dir L T/R/prof-le`:
    its log L/prof-le.mcountrw.jsonl, where mcountrw before b7d1dda kept it also when T was named
    with it), T/R/kernel/a.ko a file with no site."""
    tree = tmp_path / "T"
    (tree / "R" / "kernel").mkdir(parents=True)
    kernel = tree / "R" / "prof-le"
    shutil.copy(FIXTURES / "bin" / "prof-le", kernel)
    shutil.copy(FIXTURES / "bin" / "clean", tree / "R" / "kernel" / "a.ko")
    policy = tmp_path / "p.policy"
    policy.write_text("default nop\nkeep sum8\n")
    logs = tmp_path / "L"
    done = invoke("prenop", "--policy", policy, "--in-place", "--log-dir", logs, kernel)
    assert done.exit_code == 0, done.output
    assert (logs / "prof-le.mcountrw.jsonl").is_file()
    return tree, kernel, logs


def test_undo_rerun_and_verify_name_the_log_kept_by_the_files_own_name(tmp_path: Path) -> None:
    """Named with the directory above it, the file's log is looked up at L/R/prof-le.mcountrw.jsonl
    (b7d1dda); a tree rewritten in place by the older tool, its log at L/prof-le.mcountrw.jsonl,
    was refused by --undo, a rerun and --verify as having "no patch log at L/R/...". The log is
    named, not taken (only if its hashes say it is the file's); moved where it is looked for, it
    undoes the file."""
    tree, kernel, logs = _tree_with_log_by_name(tmp_path)
    policy = tmp_path / "p.policy"
    old, new = logs / "prof-le.mcountrw.jsonl", logs / "R" / "prof-le.mcountrw.jsonl"
    nopped = kernel.read_bytes()
    hint = (f"{old} is its log", f"move it to {new}")
    undo = invoke("prenop", "--undo", "--in-place", "--log-dir", logs, kernel, tree)
    assert_one_line(undo, 1, "nothing to do", "no patch log found", *hint)
    shutil.copy(FIXTURES / "bin" / "prof-le.o", tree / "R" / "kernel" / "b.ko")  # a file with a log: past that check
    assert invoke("prenop", "--policy", policy, "--in-place", "--log-dir", logs, tree).exit_code == 0
    for args, code in (
        (("--undo", "--in-place"), 2),
        (("--policy", policy, "--in-place"), 2),
        (("--verify",), 1),
    ):
        done = invoke("prenop", *args, "--log-dir", logs, kernel, tree)
        assert done.exit_code == code, done.output
        assert all(h in done.output for h in hint), done.output
        assert kernel.read_bytes() == nopped and not new.exists()
    old.rename(new)
    assert invoke("prenop", "--undo", "--in-place", "--log-dir", logs, kernel, tree).exit_code == 0
    assert kernel.read_bytes() == (FIXTURES / "bin" / "prof-le").read_bytes()


def test_a_log_by_the_files_own_name_that_is_not_its_log_is_not_named(tmp_path: Path) -> None:
    """The log at the file's own name is named only when its hashes say the file is its output or
    input: another file's log there says nothing of this one."""
    tree, kernel, logs = _tree_with_log_by_name(tmp_path)
    other = tmp_path / "other"
    shutil.copy(FIXTURES / "bin" / "prof-le", other)
    assert invoke("nop", other, "-o", tmp_path / "o", "--drop-records", "--only", "leaf_add").exit_code == 0
    shutil.copy(tmp_path / "o.mcountrw.jsonl", logs / "prof-le.mcountrw.jsonl")
    undo = invoke("prenop", "--undo", "--in-place", "--log-dir", logs, kernel, tree)
    line = assert_one_line(undo, 1, "nothing to do", "no patch log found", "a wrong --log-dir")
    assert "is its log" not in line


# -- two trees of the same names: refused, saying where the name would be shared -----------------------


def test_two_trees_of_one_name_are_refused_saying_where_the_names_are_used(tmp_path: Path) -> None:
    """`prenop A/kernel B/kernel` (Debian's 4k- and 64k-page trees are both <release>/kernel): the
    refusal said "in the output and the logs" of every run, an --in-place run without --log-dir
    (logs beside each file, no output) and a dry run included. It names the places the run gives
    (and the report, whose lines name files by it), and offers a run per tree too."""
    policy = tmp_path / "p.policy"
    policy.write_text("default nop\n")
    for tree in ("A", "B"):
        (tmp_path / tree / "kernel").mkdir(parents=True)
        shutil.copy(FIXTURES / "bin" / "prof-le.o", tmp_path / tree / "kernel" / "a.ko")
    trees = (tmp_path / "A" / "kernel", tmp_path / "B" / "kernel")
    out, logs = tmp_path / "OUT", tmp_path / "L"
    cases = (
        (("--in-place",), "in the report (each file's line and --report)"),
        (("--dry-run",), "in the report (each file's line and --report)"),
        (("-o", out), f"in -o {out} and the report"),
        (("--in-place", "--log-dir", logs), f"in --log-dir {logs} and the report"),
    )
    for args, where in cases:
        done = invoke("prenop", "--policy", policy, *args, *trees)
        line = assert_one_line(done, 2, "error", f"would share the name a.ko {where}", "or run once per tree")
        assert "output and the logs" not in line
    assert not out.exists() and not logs.exists()
    assert (tmp_path / "A" / "kernel" / "a.ko").read_bytes() == (FIXTURES / "bin" / "prof-le.o").read_bytes()


def test_an_output_on_the_stage_images_directory_is_refused_before_any_write(tmp_path: Path) -> None:
    """`nop F -o st --stage-images st` wrote the stage images into st, then could not rename the
    output over the directory it had made: "st: Is a directory" of a path that was none (so too
    `-o o --stage-images o/st`, a log or a backup there). Each is refused first, and nothing is made."""
    source = tmp_path / "prof-le"
    shutil.copy(FIXTURES / "bin" / "prof-le", source)
    out = tmp_path / "o"
    cases = (
        (("-o", out, "--stage-images", out), f"{out}: -o is the --stage-images directory"),
        (("-o", out, "--stage-images", out / "st"), f"{out}: -o would hold the --stage-images directory"),
        (("-o", out, "--stage-images", f"{out}.mcountrw.jsonl"), "the patch log is the --stage-images directory"),
        (("--in-place", "--backup", "--stage-images", f"{source}.orig"), "the backup is the --stage-images directory"),
    )
    for args, words in cases:
        done = invoke("nop", source, *args, "--drop-records")
        assert_one_line(done, 2, "error", words)
        assert sorted(p.name for p in tmp_path.iterdir()) == ["prof-le"]
    assert source.read_bytes() == (FIXTURES / "bin" / "prof-le").read_bytes()


# -- a read-only file system said as such ------------------------------------------------------------


@pytest.fixture
def read_only_mount(tmp_path: Path) -> Iterator[Path]:
    """A tmpfs holding prof-le, mounted read-only (root: the mode of a directory does not stop it).
    Without the right to mount, this skips locally and fails in CI, as test_faults' tiny tmpfs."""
    mount = require_tool("mount")
    mnt = tmp_path / "ro"
    mnt.mkdir()
    try:
        subprocess.run([mount, "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mnt)], check=True, capture_output=True)
    except (OSError, subprocess.CalledProcessError) as e:
        _missing(f"cannot mount a tmpfs here (needs root / CAP_SYS_ADMIN): {e}")
    try:
        shutil.copy(FIXTURES / "bin" / "prof-le", mnt / "prof-le")
        subprocess.run([mount, "-o", "remount,ro", str(mnt)], check=True, capture_output=True)
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], check=False)


def test_outputs_on_a_read_only_file_system_say_so(tmp_path: Path, read_only_mount: Path) -> None:
    """`-o`, `--in-place`, a log and prenop's outputs on a read-only mount said "cannot write in D",
    which reads as a permission to change; `--stage-images` there said "(a read-only file system)".
    Every one says it now (output.cannot_write_in), before any work."""
    ro, src = read_only_mount, read_only_mount / "prof-le"
    policy = tmp_path / "p.policy"
    policy.write_text("default nop\n")
    runs = (
        (("nop", src, "--in-place", "--drop-records"), src),
        (("nop", src, "-o", ro / "out", "--drop-records"), ro / "out"),
        (("nop", src, "-o", tmp_path / "out", "--log", ro / "l", "--drop-records"), ro / "l"),
        (("nop", src, "-o", tmp_path / "out", "--stage-images", ro / "st"), "--stage-images"),
        (("prenop", "--policy", policy, "-o", ro / "OUT", src), ro / "OUT"),
    )
    for args, blamed in runs:
        done = invoke(*args)
        assert_one_line(done, 2, "error", f"{blamed}", f"cannot write in {ro} (a read-only file system)")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.policy", "ro"]


def test_undo_names_the_step_befores_log_without_dot_dot(tmp_path: Path) -> None:
    """A base is written from the new log's directory (`../../logs/L`); undo named the step
    before's log by that path joined to the file's directory: "its own log:
    .../a/b/../../logs/L". The same file, named plainly."""
    work = tmp_path / "a" / "b"
    work.mkdir(parents=True)
    (tmp_path / "logs").mkdir()
    f, kept = work / "f", tmp_path / "logs" / "L"
    shutil.copy(FIXTURES / "bin" / "prof-le", f)
    assert invoke("nop", f, "--in-place", "--drop-records", "--log", kept).exit_code == 0
    done = invoke("apply", f, "--to", "enabled", "--only", "sum8", "--in-place", "--input-log", kept)
    assert done.exit_code == 0, done.output
    undone = invoke("undo", f, "--in-place")
    assert undone.exit_code == 0, undone.output
    assert f"its own log: {kept} (undo with it" in undone.stderr, undone.stderr
    back = invoke("undo", f, "--in-place", "--log", kept)
    assert back.exit_code == 0 and f.read_bytes() == (FIXTURES / "bin" / "prof-le").read_bytes()


def test_in_place_whose_archived_log_name_is_too_long_is_refused_first(tmp_path: Path) -> None:
    """A second in-place rewrite moves the log beside F to F.mcountrw.<12 hex>.jsonl, 13 characters
    longer: with F's name 240 bytes its log's fits (255) and the archived one not. The run was
    refused at the end, after writing and removing its output, as "F.mcountrw.jsonl: File name
    too long" of the log that was there. Refused first now, naming the archived name."""
    f = tmp_path / ("f" * 240)
    shutil.copy(FIXTURES / "bin" / "prof-le", f)
    assert invoke("nop", f, "--in-place", "--drop-records", "--only", "sum8").exit_code == 0
    before = f.read_bytes()
    done = invoke("nop", f, "--in-place", "--drop-records", "--only", "leaf_add")
    assert_one_line(done, 2, "error", ".mcountrw.", "File name too long", "where the in-place rewrite would keep")
    assert "--log" in done.stderr and f.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([f.name, f"{f.name}.mcountrw.jsonl"])


def test_a_log_given_for_its_own_input_says_the_file_is_its_input(tmp_path: Path) -> None:
    """`--input-log L` (or scan's `--log L`) of a file that is L's input, undone since: "L: not the
    log of F: its output has sha256 ..." alone, where the warnings of a log found beside a file say
    "(changed since, or undone)". It says which of the two."""
    original, nopped = tmp_path / "f", tmp_path / "g"
    shutil.copy(FIXTURES / "bin" / "prof-le", original)
    assert invoke("nop", original, "-o", nopped, "--drop-records").exit_code == 0
    log = f"{nopped}.mcountrw.jsonl"
    for args in (("apply", original, "--to", "enabled", "-o", tmp_path / "h", "--input-log", log),
                 ("scan", original, "--log", log)):  # fmt: skip
        assert_one_line(invoke(*args), 2, "error", "not the log of", f"({original} is its input: undone since?)")
    other = tmp_path / "other"
    shutil.copy(FIXTURES / "bin" / "prof-be", other)
    line = assert_one_line(invoke("scan", other, "--log", log), 2, "error", "not the log of")
    assert "is its input" not in line


# -- an output that cannot be replaced, found before the work -------------------------------------------


@pytest.fixture
def chattr(tmp_path: Path) -> Iterator[list[Path]]:
    """The files flagged immutable or append-only by a test, unflagged after it; skips (fails in
    CI) where chattr is missing or the file system keeps no such flags."""
    tool = require_tool("chattr")
    probe = tmp_path / "probe"
    probe.write_bytes(b"")
    if subprocess.run([tool, "+i", probe], capture_output=True).returncode:
        _missing("chattr +i refused here (not root, or a file system without the flag)")
    flagged = [probe]
    try:
        yield flagged
    finally:
        for f in flagged:
            subprocess.run([tool, "-i", "-a", f], check=False)
        probe.unlink()


def test_an_immutable_output_is_refused_before_any_write(tmp_path: Path, chattr: list[Path]) -> None:
    """`nop F --in-place` of an immutable F (or -o onto one, or a log onto an append-only file):
    the rename at the end failed, "F: Operation not permitted", after the output and its log were
    written and removed. Refused first, saying why the rename would fail. prenop keeps it a
    failure of that file alone, the other files done (docs/prenop.md)."""
    src, locked, appended = tmp_path / "src", tmp_path / "locked", tmp_path / "appended"
    for f in (src, locked, appended):
        shutil.copy(FIXTURES / "bin" / "prof-le", f)
    subprocess.run(["chattr", "+i", locked], check=True)
    subprocess.run(["chattr", "+a", appended], check=True)
    chattr += [locked, appended]
    written: list[str] = []
    for args, blamed in (
        ((locked, "--in-place"), locked),
        ((src, "-o", locked), locked),
        ((src, "-o", tmp_path / "out", "--log", appended), appended),
        ((appended, "--dry-run", "--in-place"), appended),
    ):
        done = invoke("nop", *args, "--drop-records")
        assert_one_line(done, 2, "error", f"{blamed}: immutable or append-only", "the rename that replaces it")
        written += [p.name for p in tmp_path.iterdir() if p.name not in {"src", "locked", "appended", "probe"}]
    assert written == []
    stages = tmp_path / "st"
    stages.mkdir()
    (stages / "src.stage1").write_bytes(b"")
    subprocess.run(["chattr", "+i", stages / "src.stage1"], check=True)
    chattr.append(stages / "src.stage1")
    done = invoke("nop", src, "-o", tmp_path / "out", "--drop-records", "--stage-images", stages)
    assert_one_line(done, 2, "error", "the image of stage 1", "immutable or append-only")
    assert not (tmp_path / "out").exists()
    tree = tmp_path / "T"
    tree.mkdir()
    for name in ("a.ko", "b.ko"):
        shutil.copy(FIXTURES / "bin" / "prof-le.o", tree / name)
    subprocess.run(["chattr", "+i", tree / "a.ko"], check=True)
    chattr.append(tree / "a.ko")
    policy = tmp_path / "p.policy"
    policy.write_text("default nop\n")
    done = invoke("prenop", "--policy", policy, "--in-place", tree)
    assert done.exit_code == 2 and (tree / "b.ko.mcountrw.jsonl").is_file(), done.output


def test_prenop_refuses_a_directory_in_any_files_place_before_any_write(tmp_path: Path) -> None:
    """prenop checked the place of the first file of each directory before the work, and found a
    directory in another file's place (its output under -o, or its log under --log-dir) by the
    rename at the end: that file failed, the others were written, "OUT is incomplete"."""
    tree = tmp_path / "T" / "kernel"
    tree.mkdir(parents=True)
    for name in ("a.ko", "b.ko"):
        shutil.copy(FIXTURES / "bin" / "prof-le.o", tree / name)
    policy = tmp_path / "p.policy"
    policy.write_text("default nop\n")
    out, logs = tmp_path / "OUT", tmp_path / "L"
    for taken, args in (
        (logs / "kernel" / "b.ko.mcountrw.jsonl", ("-o", out, "--log-dir", logs)),
        (out / "kernel" / "b.ko", ("-o", out)),
    ):
        taken.mkdir(parents=True)
        done = invoke("prenop", "--policy", policy, *args, tmp_path / "T")
        assert_one_line(done, 2, "error", f"{taken}: Is a directory")
        assert [p for p in tmp_path.rglob("*") if p.is_file() and p.parent != tree] == [policy]
        shutil.rmtree(logs, ignore_errors=True)
        shutil.rmtree(out, ignore_errors=True)


def test_scan_audit_and_policy_check_name_a_log_kept_by_the_files_own_name(tmp_path: Path) -> None:
    """scan, audit and policy check --log-dir of the same tree read T/R/prof-le as never rewritten
    (its 5 nopped sites unseen: 1 site), with no word of the log at L/prof-le.mcountrw.jsonl that
    describes it. One warning names it and where it is looked for; it is not read."""
    tree, kernel, logs = _tree_with_log_by_name(tmp_path)
    old, new = logs / "prof-le.mcountrw.jsonl", logs / "R" / "prof-le.mcountrw.jsonl"
    policy = tmp_path / "p.policy"
    for args in (("scan",), ("audit",), ("policy", "check", policy)):
        done = invoke(*args, "--log-dir", logs, kernel, tree)
        warning = f"mcountrw: warning: {old}: the log of {kernel} by its own name, not read: it is looked for at {new}"
        assert warning in done.stderr, done.output
    scanned = invoke("scan", "--log-dir", logs, kernel)  # named by itself: its log is read, nothing said
    assert scanned.exit_code == 0 and "by its own name" not in scanned.stderr and "from the patch log" in scanned.stdout
