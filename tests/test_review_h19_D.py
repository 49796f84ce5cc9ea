"""Review h19, helper D: a black-box pass over diff, audit, verify/undo and prenop.

* ``diff`` of a kernel against its rewrite read without the rewrite's patch log listed the nopped
  sites as removed and their functions as removed functions (a 6.12 vmlinux against its prenop'ed
  copy: 38710 sites, 38247 functions), and said nothing of the zeroed record slots that explain
  it, which ``scan`` of the same file names. Now the pair says so, and JSON has ``zeroed``/``logs``.
* ``verify`` said "offset X holds 69, the log says 68" of the first differing byte, one the log
  never writes too, and nothing of how many more differ.
* ``undo`` of a file changed after its rewrite said only "this log is for another file".
* An interrupted ``prenop --undo --in-place`` said the tree "may be half done", each file "as it was
  or rewritten whole with its log": the words of a run that rewrites.
* A rerun of ``prenop --in-place`` given a ``--log-dir`` its first run was not given (the logs are
  beside the files) was told to "give --log-dir DIR, the directory that run wrote the logs to",
  which it had just done; now it is told the log is beside the file and to drop ``--log-dir``.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
from boot import require_kernel
from conftest import FIXTURES, interrupted_when, invoke
from typer.testing import CliRunner

from rewriter.cli import app


def _nopped_without_log(tmp_path: Path) -> tuple[Path, Path, Path]:
    """The fixture ``clean``, a copy nopped with its records dropped, and the copy's log moved away."""
    src, out = FIXTURES / "bin" / "clean", tmp_path / "clean.nop"
    assert CliRunner().invoke(app, ["nop", str(src), "-o", str(out), "--drop-records"]).exit_code == 0
    log = tmp_path / "elsewhere.jsonl"
    shutil.move(tmp_path / "clean.nop.mcountrw.jsonl", log)
    return src, out, log


def test_diff_against_a_rewrite_read_without_its_log_says_the_records_are_zeroed(tmp_path: Path) -> None:
    src, out, _ = _nopped_without_log(tmp_path)
    shown = CliRunner().invoke(app, ["diff", str(src), str(out)])
    assert shown.exit_code == 1, shown.output
    (line,) = [x for x in shown.output.splitlines() if x.startswith("**Zeroed records")]
    assert line.startswith("**Zeroed records, no patch log read:** B: 3 zeroed record slots, "), line
    assert "read as removed sites" in line and "--log" in line, line
    assert "Sites: 3 removed;" in shown.output  # what the line explains, still said
    (pair,) = json.loads(CliRunner().invoke(app, ["diff", str(src), str(out), "--format", "json"]).output)["images"]
    assert pair["zeroed"] == [0, 3] and pair["logs"] == [None, None]


def test_diff_with_the_log_has_no_zeroed_line_and_names_the_log(tmp_path: Path) -> None:
    src, out, log = _nopped_without_log(tmp_path)
    shown = CliRunner().invoke(app, ["diff", str(src), str(out), "--log", str(log)])
    assert shown.exit_code == 1 and "Zeroed records" not in shown.output, shown.output
    assert "Sites: 3 record-removed, 3 state;" in shown.output, shown.output
    args = ["diff", str(src), str(out), "--log", str(log), "--format", "json"]
    (pair,) = json.loads(CliRunner().invoke(app, args).output)["images"]
    assert pair["zeroed"] == [0, 3] and pair["logs"] == [None, str(log)]
    same = CliRunner().invoke(app, ["diff", str(src), str(src)])
    assert same.exit_code == 0 and "Zeroed records" not in same.output


# -- verify: what a mismatch says ----------------------------------------------------------


def _verify(original: Path, patched: Path, log: Path) -> tuple[int, str]:
    result = CliRunner().invoke(app, ["verify", str(original), str(patched), "--log", str(log)])
    return result.exit_code, result.output


def test_verify_mismatch_counts_the_bytes_and_says_what_the_log_does_at_the_first(tmp_path: Path) -> None:
    """Verify said "offset 0x100000 holds 69, the log says 68" for a byte the log never writes: read as a write
    of the log's, and one offset named hid how many bytes differ."""
    src, out, log = _nopped_without_log(tmp_path)
    made = out.read_bytes()
    first_write = int(json.loads(log.read_text().splitlines()[1])["offset"], 16)
    # a byte the log leaves alone, past every write: the original's last byte
    untouched = bytearray(made)
    untouched[-1] ^= 1
    (tmp_path / "untouched").write_bytes(untouched)
    code, text = _verify(src, tmp_path / "untouched", log)
    assert code == 1, text
    assert f"1 byte differs from what the log makes of {src}; it is at offset {len(made) - 1:#x}: " in text, text
    assert "as the original does (the log leaves that byte as it was)" in text, text
    # a word the log writes put back as it was, and a byte past every write changed too
    undone = bytearray(made)
    undone[first_write : first_write + 4] = src.read_bytes()[first_write : first_write + 4]
    undone[-1] ^= 1
    (tmp_path / "undone").write_bytes(undone)
    n = sum(x != y for x, y in zip(undone, made, strict=True))
    code, text = _verify(src, tmp_path / "undone", log)
    assert code == 1 and n > 1, text
    assert f"{n} bytes differ from what the log makes of {src}; the first is at offset " in text, text
    assert "a byte the log writes (the original holds " in text, text


def test_verify_of_a_file_of_another_size_says_it_is_not_the_logs_output(tmp_path: Path) -> None:
    src, out, log = _nopped_without_log(tmp_path)
    longer = tmp_path / "longer"
    longer.write_bytes(out.read_bytes() + b"\0")
    code, text = _verify(src, longer, log)
    size = out.stat().st_size
    assert code == 1, text
    assert f"{longer}: its ELF is {size + 1} bytes, where the log replayed on {src} makes {size} bytes: " in text, text
    assert "not the file the log made" in text, text


def test_undo_of_a_file_changed_since_its_rewrite_says_so_not_only_another_file(tmp_path: Path) -> None:
    """undo of a rewritten file one byte of which changed since said only "this log is for another
    file", of the log written beside it for it; a file as long as the log's output is said to be
    that, with verify to count the bytes. Nothing is written."""
    out = tmp_path / "clean.nop"
    assert CliRunner().invoke(app, ["nop", str(FIXTURES / "bin" / "clean"), "-o", str(out)]).exit_code == 0
    changed = bytearray(out.read_bytes())
    changed[-1] ^= 1
    out.write_bytes(changed)
    back = tmp_path / "back"
    result = CliRunner().invoke(app, ["undo", str(out), "-o", str(back)])
    (line,) = result.stderr.strip().splitlines()
    assert result.exit_code == 2 and not back.exists(), result.output
    assert line.startswith(f"mcountrw: error: {out}.mcountrw.jsonl: this log is for another file"), line
    assert f"{out} is as long as its output: changed since the rewrite? `mcountrw verify ORIGINAL {out}`" in line


# -- prenop: a rerun given a --log-dir the first run was not given ---------------------------------


def _state(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in root.rglob("*") if p.is_file()
    }


@pytest.mark.corpus
def test_a_rerun_given_a_log_dir_the_first_run_was_not_is_told_to_drop_it(tmp_path: Path) -> None:
    k612 = require_kernel("6.12")
    tree = tmp_path / "kernel"
    (tree / "fs" / "nls").mkdir(parents=True)
    for name in ("nls_ascii.ko.xz", "nls_cp437.ko.xz", "nls_utf8.ko.xz"):
        shutil.copy(k612.modules_dir / "fs/nls" / name, tree / "fs" / "nls")
    policy = tmp_path / "p.policy"
    policy.write_text("default nop\n")
    first = invoke("prenop", "--policy", policy, "--in-place", "--strip-signature", tree)
    assert first.exit_code == 0, first.output
    before = _state(tree)
    logs = tmp_path / "logs"
    again = invoke("prenop", "--policy", policy, "--in-place", "--strip-signature", "--log-dir", logs, tree)
    (line,) = again.stderr.strip().splitlines()
    assert again.exit_code == 2 and not again.stdout, again.output
    beside = tree / "fs/nls/nls_ascii.ko.xz.mcountrw.jsonl"
    assert line.startswith(f"mcountrw: error: {tree}: rewritten by an earlier run whose patch logs are not"), line
    assert f"its patch log is beside it ({beside}), where a run given no --log-dir writes it: drop --log-dir" in line
    assert "give --log-dir DIR" not in line and "(3 modules) is refused before its first write" in line, line
    assert _state(tree) == before and not logs.exists()
    # what the line says to do finishes the run: nothing to change
    done = invoke("prenop", "--policy", policy, "--in-place", "--strip-signature", tree)
    assert done.exit_code == 0 and "nothing changed" in done.stdout, done.output
    assert _state(tree) == before


@pytest.mark.corpus
def test_a_vmlinux_rerun_given_a_log_dir_the_first_run_was_not_is_told_to_drop_it(tmp_path: Path) -> None:
    vmlinux = tmp_path / "vmlinux"
    shutil.copy(require_kernel("6.12").vmlinux, vmlinux)
    policy = tmp_path / "p.policy"
    policy.write_text("default nop\nkeep vfs_*\n")
    assert invoke("prenop", "--policy", policy, "--in-place", vmlinux).exit_code == 0
    before = _state(tmp_path)
    again = invoke("prenop", "--policy", policy, "--in-place", "--log-dir", tmp_path / "logs", vmlinux)
    assert again.exit_code == 2, again.output
    (line,) = again.stderr.strip().splitlines()
    assert line.startswith(f"mcountrw: error: {vmlinux}: "), line
    assert f"its patch log is beside it ({vmlinux}.mcountrw.jsonl), where a run given no --log-dir" in line, line
    assert "give the --log-dir its run wrote" not in line, line
    assert _state(tmp_path) == before


@pytest.mark.corpus
def test_a_rerun_whose_policy_keeps_the_first_modules_whole_is_still_refused_once(tmp_path: Path) -> None:
    """The check before the first write counted the modules the policy keeps whole among the
    four it decides, though they show nothing (no log, the original): a rerun without its
    --log-dir whose policy keeps the tree's first four modules was not refused, and said one
    error line for every module after them (40 over a tree of 45)."""
    k612 = require_kernel("6.12")
    tree = tmp_path / "kernel"
    (tree / "fs" / "nls").mkdir(parents=True)
    kept = ["nls_ascii", "nls_cp437", "nls_cp850", "nls_cp852"]
    for name in [*kept, "nls_iso8859-1", "nls_utf8"]:
        shutil.copy(k612.modules_dir / "fs/nls" / f"{name}.ko.xz", tree / "fs" / "nls")
    policy = tmp_path / "p.policy"
    policy.write_text("default nop\n" + "".join(f"keep :mod:{m}\n" for m in kept))
    logs = tmp_path / "logs"
    first = invoke("prenop", "--policy", policy, "--in-place", "--log-dir", logs, "--strip-signature", tree)
    assert first.exit_code == 0, first.output
    assert sorted(p.name for p in logs.rglob("*.jsonl")) == [
        "nls_iso8859-1.ko.xz.mcountrw.jsonl", "nls_utf8.ko.xz.mcountrw.jsonl"
    ]  # fmt: skip
    before = _state(tree)
    again = invoke("prenop", "--policy", policy, "--in-place", "--strip-signature", tree)
    (line,) = again.stderr.strip().splitlines()
    assert again.exit_code == 2 and not again.stdout, again.output
    assert line.startswith(f"mcountrw: error: {tree}: rewritten by an earlier run whose patch logs are not"), line
    assert "nls_iso8859-1.ko.xz: " in line and "the run (6 modules) is refused before its first write" in line, line
    assert _state(tree) == before


@pytest.mark.corpus
def test_a_stray_module_of_another_release_sorted_first_fails_alone(tmp_path: Path) -> None:
    """One 6.1 module sorted before a 6.12 tree's modules, run with the 6.12 vmlinux: the whole run
    was refused on it, told to "name the vmlinux of 6.1.0-50-powerpc64le, or the modules of the
    vmlinux named", though every other module is the vmlinux's. A stray after a module that passed
    failed alone; before one, it fails alone too. A tree all of another release is still refused."""
    k612, k61 = require_kernel("6.12"), require_kernel("6.1")
    tree = tmp_path / "kernel"
    (tree / "fs" / "nls").mkdir(parents=True)
    for name in ("nls_ascii.ko.xz", "nls_cp437.ko.xz", "nls_utf8.ko.xz"):
        shutil.copy(k612.modules_dir / "fs/nls" / name, tree / "fs" / "nls")
    (tree / "arch").mkdir()
    stray = tree / "arch" / "aaa_stray.ko"
    shutil.copy(k61.modules_dir / "fs/nls/nls_utf8.ko", stray)
    policy = tmp_path / "p.policy"
    policy.write_text("default nop\n")
    args = ["prenop", "--policy", policy, "--dry-run", "--strip-signature", k612.vmlinux, tree]
    run = invoke(*args)
    (line,) = run.stderr.strip().splitlines()
    assert run.exit_code == 2, run.output
    assert line.startswith(f"mcountrw: error: {stray}: built for 6.1.0-50-powerpc64le (its vermagic)"), line
    assert "refused before its first write" not in line and "name the vmlinux of" not in line, line
    # the others were decided: the vmlinux and the three 6.12 modules
    assert any(x.split()[:3] == ["would", "nop", "4"] for x in run.stdout.splitlines()), run.output
    # the same tree with no module of the vmlinux's release: refused whole, as before
    for name in ("nls_ascii.ko.xz", "nls_cp437.ko.xz", "nls_utf8.ko.xz"):
        (tree / "fs" / "nls" / name).unlink()
    shutil.copy(k61.modules_dir / "fs/nls/nls_ascii.ko", tree / "fs" / "nls")
    whole = invoke(*args)
    (line,) = whole.stderr.strip().splitlines()
    assert whole.exit_code == 2 and "the run (2 modules) is refused before its first write" in line, whole.output


@pytest.mark.corpus
def test_an_interrupted_undo_in_place_says_the_tree_may_be_half_undone(tmp_path: Path) -> None:
    """SIGINT to `prenop --undo --in-place T` said "T may be half done: each file is as it was or
    rewritten whole with its log", the line of a run that rewrites; an undo puts files back: each
    is still rewritten (its log kept) or its original. The rerun finishes the undo."""
    import signal

    k612 = require_kernel("6.12")
    tree = tmp_path / "kernel"
    shutil.copytree(k612.modules_dir / "fs", tree / "fs")
    pristine = _state(tree)
    policy = tmp_path / "p.policy"
    policy.write_text("default nop\n")
    assert invoke("prenop", "--policy", policy, "--in-place", "--strip-signature", tree).exit_code == 0
    modules = sorted(tree.rglob("*.ko.xz"))
    # the first module put back (renamed into place: a new inode), whichever the run takes first
    inodes = {m: m.stat().st_ino for m in modules}
    code, err = interrupted_when(
        ["prenop", "--undo", "--in-place", "--jobs", "1", str(tree)],
        lambda: any(m.stat().st_ino != ino for m, ino in inodes.items()),
    )
    # 130 modules one at a time: the interrupt comes after the first of them, long before the last
    assert code == 128 + signal.SIGINT, err
    assert err.strip().splitlines() == [
        f"mcountrw: interrupted by SIGINT: {tree} may be half undone: each file is still rewritten, with its log, "
        "or its original; run the same command again to finish it (what is written is kept)"
    ], err
    again = invoke("prenop", "--undo", "--in-place", tree)
    assert again.exit_code == 0, again.output
    assert {k: v for k, v in _state(tree).items() if not k.endswith(".jsonl")} == pristine


@pytest.mark.corpus
def test_prenop_verify_against_the_pristine_tree_says_how_a_module_differs(tmp_path: Path) -> None:
    """`prenop --verify --against TREE OUT` of a module changed after the run said only "M is not the
    output of LOG"; it now says how many bytes differ from what the log makes of the pristine
    module, and the first, as `verify` does."""
    import lzma

    k612 = require_kernel("6.12")
    tree = tmp_path / "kernel"
    (tree / "fs" / "nls").mkdir(parents=True)
    for name in ("nls_ascii.ko.xz", "nls_utf8.ko.xz"):
        shutil.copy(k612.modules_dir / "fs/nls" / name, tree / "fs" / "nls")
    policy = tmp_path / "p.policy"
    policy.write_text("default nop\n")
    out, logs = tmp_path / "out", tmp_path / "logs"
    args = ("--policy", policy, "--strip-signature", "--log-dir", logs, "-o", out, tree)
    assert invoke("prenop", *args).exit_code == 0
    module = out / "fs" / "nls" / "nls_utf8.ko.xz"
    content = bytearray(lzma.decompress(module.read_bytes()))
    content[-1] ^= 1  # past every edit of the log
    module.write_bytes(lzma.compress(bytes(content), check=lzma.CHECK_CRC32))
    result = invoke("prenop", "--verify", "--log-dir", logs, "--against", tree, out)
    assert result.exit_code == 1, result.output
    (line,) = [x for x in result.output.splitlines() if x.startswith("MISMATCH: ")]
    pristine = tree / "fs" / "nls" / "nls_utf8.ko.xz"
    assert f"{module} is not the output of {logs / 'fs/nls/nls_utf8.ko.xz.mcountrw.jsonl'}; " in line, line
    assert (
        f"{module}: 1 byte differs from what the log makes of {pristine}; it is at offset {len(content) - 1:#x}: "
        in line
    )
    assert "as the original does (the log leaves that byte as it was)" in line, line
