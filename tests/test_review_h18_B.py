"""Review h18, helper B: runs left half done, trees left empty, logs left where they contradict
their file, and runs interrupted or raced.

* A ``prenop`` given no signature choice over a tree with signed modules (Debian's 6.1 tree: every
  module signed) wrote the vmlinux and the unsigned modules, then failed each signed one: the
  tree half done. The refusal is found before the first write now.
* ``prenop -o OUT`` in which every file failed left OUT behind (empty, or holding only the tree's
  other entries).
* ``undo --in-place F --log L`` with L elsewhere left the log beside F, which described F as it no
  longer was: every later scan warned that it was ignored.
* ``nop F --log st/x --stage-images st`` with st not made yet was refused ("directory st does not
  exist"), where ``--stage-images st`` alone makes st.
* Interrupted runs: a SIGTERM to a prenop's process alone left its workers writing the rest of the
  tree; Ctrl-C twice raised again in the workers' clean-up (temporary files, logs beside original
  files, tracebacks); a signal between a file's staging and its hand-over to an I/O thread, or
  just after an open, link, symlink or rename, left temporary files or a log beside the old file.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import shutil
import signal
import subprocess
from pathlib import Path

import pytest
from boot import require_kernel, unsigned_module
from conftest import invoke


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _tree_state(root: Path) -> dict[str, str]:
    """Every file below ``root`` (and ``root`` itself if a file), by its path, with its sha256."""
    return {str(p.relative_to(root)): _sha(p) for p in sorted(root.rglob("*")) if p.is_file()}


def _signed_and_unsigned(tmp_path: Path) -> Path:
    """A 6.1 tree with a signed module (Debian's nls_utf8.ko) and an unsigned one (nls_ascii.ko,
    its signature cut off), and a modules.order."""
    tree = tmp_path / "tree"
    (tree / "fs").mkdir(parents=True)
    shutil.copy(require_kernel("6.1").modules_dir / "fs/nls/nls_utf8.ko", tree / "fs/nls_utf8.ko")
    unsigned_module("6.1", "fs/nls/nls_ascii.ko", tree / "fs/nls_ascii.ko")
    (tree / "modules.order").write_text("kernel/fs/nls_utf8.ko\nkernel/fs/nls_ascii.ko\n")
    return tree


def _policy(tmp_path: Path, text: str = "default nop\n") -> Path:
    policy = tmp_path / "p.policy"
    policy.write_text(text)
    return policy


# -- 1. a signed tree without a signature choice: refused before the first write ------------------


@pytest.mark.corpus
def test_signed_module_without_a_signature_choice_refuses_the_run_before_any_write(tmp_path: Path) -> None:
    """The unsigned module was nopped and logged, the signed one failed: exit 2 over a tree half
    done. Now one line, exit 2, and the tree as it was (no file changed, no log)."""
    tree = _signed_and_unsigned(tmp_path)
    before = _tree_state(tree)
    logs = tmp_path / "logs"
    r = invoke("prenop", "--policy", _policy(tmp_path), "--in-place", "--log-dir", logs, tree)
    assert r.exit_code == 2, r.output
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "fs/nls_utf8.ko: signed module" in lines[0], r.stderr
    assert "--strip-signature" in lines[0] and "nothing written" in lines[0], lines[0]
    assert _tree_state(tree) == before
    assert not logs.exists()
    # the same run with the choice given does the whole tree
    r = invoke("prenop", "--policy", _policy(tmp_path), "--in-place", "--log-dir", logs, "--strip-signature", tree)
    assert r.exit_code == 0, r.output
    written = sorted(p.name for p in logs.rglob("*.jsonl"))
    assert written == ["nls_ascii.ko.mcountrw.jsonl", "nls_utf8.ko.mcountrw.jsonl"]


@pytest.mark.corpus
def test_a_signed_compressed_module_is_found_before_any_write_too(tmp_path: Path) -> None:
    """The signature of a .ko.xz is inside the compressed data (modules_install signs, then
    compresses): the check decompresses it, where an uncompressed module's end is read alone."""
    tree = tmp_path / "tree"
    tree.mkdir()
    shutil.copy(require_kernel("6.12").modules_dir / "fs/nls/nls_utf8.ko.xz", tree / "nls_utf8.ko.xz")
    unsigned_module("6.1", "fs/nls/nls_ascii.ko", tree / "nls_ascii.ko")
    before = _tree_state(tree)
    r = invoke("prenop", "--policy", _policy(tmp_path), "--in-place", tree)
    assert r.exit_code == 2 and "nls_utf8.ko.xz: signed module" in r.stderr, r.output
    assert _tree_state(tree) == before


@pytest.mark.corpus
def test_signed_tree_refused_with_o_leaves_no_output_tree(tmp_path: Path) -> None:
    tree = _signed_and_unsigned(tmp_path)
    out = tmp_path / "deep" / "out"
    r = invoke("prenop", "--policy", _policy(tmp_path), "-o", out, tree)
    assert r.exit_code == 2 and "signed module" in r.stderr, r.output
    assert not (tmp_path / "deep").exists()


@pytest.mark.corpus
def test_rerun_without_the_signature_choice_of_the_first_run_is_refused_before_any_write(tmp_path: Path) -> None:
    """A tree nopped with --strip-signature, rerun under a changed policy without it: the module
    whose original was signed (its file no longer is: the log says a signature was cut off) failed
    after the other had been rewritten under the new policy. Refused before any write now."""
    tree = _signed_and_unsigned(tmp_path)
    logs = tmp_path / "logs"
    r = invoke("prenop", "--policy", _policy(tmp_path), "--in-place", "--log-dir", logs, "--strip-signature", tree)
    assert r.exit_code == 0, r.output
    before = _tree_state(tree)
    logs_before = _tree_state(logs)
    changed = _policy(tmp_path, "default nop\nkeep utf8_*\nkeep char2uni\n")
    r = invoke("prenop", "--policy", changed, "--in-place", "--log-dir", logs, tree)
    assert r.exit_code == 2 and "fs/nls_utf8.ko: signed module" in r.stderr, r.output
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert _tree_state(tree) == before and _tree_state(logs) == logs_before


@pytest.mark.corpus
def test_dry_run_of_a_signed_tree_still_lists_each_signed_module(tmp_path: Path) -> None:
    """A dry run writes nothing: it previews, file by file, what the run refuses."""
    tree = _signed_and_unsigned(tmp_path)
    r = invoke("prenop", "--policy", _policy(tmp_path), "--dry-run", "--in-place", tree)
    assert r.exit_code == 2, r.output
    assert "fs/nls_utf8.ko: signed module" in r.stderr and "would nop" in r.stdout, r.output


# -- 2. -o OUT whose every file failed: no OUT left behind ------------------------------------------


@pytest.mark.corpus
def test_o_run_whose_every_file_failed_leaves_no_output_tree(tmp_path: Path) -> None:
    """Every module fails (each cut short after its ELF header; a --generation that every module
    contradicts is refused before the run now: tests/test_review_h19_B.py): OUT was left with the
    tree's other entries (modules.order, the directories), no module. Now no OUT, and the line says so."""
    tree = _signed_and_unsigned(tmp_path)
    for module in tree.rglob("*.ko"):
        module.write_bytes(module.read_bytes()[:64])
    out = tmp_path / "new" / "out"
    policy = _policy(tmp_path)
    r = invoke("prenop", "--policy", policy, "--strip-signature", "-o", out, tree)
    assert r.exit_code == 2, r.output
    assert not (tmp_path / "new").exists()
    assert f"nothing written to {out}: all 2 files failed" in r.stderr, r.stderr
    assert "copied to" not in r.stdout, r.stdout


@pytest.mark.corpus
def test_o_run_whose_every_file_failed_leaves_an_existing_output_as_it_was(tmp_path: Path) -> None:
    tree = _signed_and_unsigned(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    (out / "earlier").write_text("an earlier run's\n")
    r = invoke("prenop", "--policy", _policy(tmp_path), "--strip-signature", "--generation", "ool", "-o", out, tree)
    assert r.exit_code == 2, r.output
    assert _tree_state(out) == {"earlier": hashlib.sha256(b"an earlier run's\n").hexdigest()}


@pytest.mark.corpus
def test_signed_modules_the_policy_keeps_whole_need_no_signature_choice(tmp_path: Path) -> None:
    """The check before the first write refuses only what the run would: a policy that keeps every
    module site nops nothing in a signed module, which keeps its signature (exit 0)."""
    tree = _signed_and_unsigned(tmp_path)
    before = _tree_state(tree)
    r = invoke("prenop", "--policy", _policy(tmp_path, "default nop\nkeep :mod:*\n"), "--in-place", tree)
    assert r.exit_code == 0, r.output
    assert "signed module" not in r.output and _tree_state(tree) == before


# -- 3. undo --in-place F --log L elsewhere: the log beside F settled as with F's own log ------------

PROF = Path(__file__).resolve().parent.parent / "fixtures" / "bin" / "prof-le"


def test_undo_in_place_with_a_copy_of_the_log_elsewhere_removes_the_log_beside_the_file(tmp_path: Path) -> None:
    """The log beside F described F nopped; after the exact undo with a copy kept elsewhere it
    stayed, and every later scan of F warned that it was ignored. Removed now, as with F's own log;
    the copy named by --log stays."""
    f = tmp_path / "F"
    f.write_bytes(PROF.read_bytes())
    assert invoke("nop", f, "--in-place").exit_code == 0
    beside = tmp_path / "F.mcountrw.jsonl"
    kept = tmp_path / "keep" / "L"
    kept.parent.mkdir()
    kept.write_bytes(beside.read_bytes())
    r = invoke("undo", "--in-place", f, "--log", kept)
    assert r.exit_code == 0, r.output
    assert f.read_bytes() == PROF.read_bytes()
    assert not beside.exists() and kept.exists()
    assert f"removed {beside}: the step it describes is undone" in r.stderr, r.stderr
    scan = invoke("scan", f)
    assert scan.exit_code == 0 and "warning" not in scan.stderr, scan.output


def test_undo_in_place_with_a_copy_of_a_chain_log_puts_the_base_log_back_beside_the_file(tmp_path: Path) -> None:
    f = tmp_path / "F"
    f.write_bytes(PROF.read_bytes())
    assert invoke("nop", f, "--in-place", "--only", "sum8").exit_code == 0
    step1 = f.read_bytes()
    beside = tmp_path / "F.mcountrw.jsonl"
    first_log = beside.read_bytes()
    assert invoke("nop", f, "--in-place").exit_code == 0
    kept = tmp_path / "keep" / "L"
    kept.parent.mkdir()
    kept.write_bytes(beside.read_bytes())
    r = invoke("undo", "--in-place", f, "--log", kept)
    assert r.exit_code == 0, r.output
    assert f.read_bytes() == step1 and beside.read_bytes() == first_log
    assert sorted(p.name for p in tmp_path.iterdir()) == ["F", "F.mcountrw.jsonl", "keep"]
    assert invoke("undo", "--in-place", f).exit_code == 0 and f.read_bytes() == PROF.read_bytes()


def test_undo_in_place_leaves_a_log_beside_the_file_of_another_step(tmp_path: Path) -> None:
    """A log beside F that is not of the step undone is not this undo's to remove."""
    f = tmp_path / "F"
    f.write_bytes(PROF.read_bytes())
    elsewhere = tmp_path / "L"
    assert invoke("nop", f, "--in-place", "--log", elsewhere).exit_code == 0
    other = tmp_path / "F.mcountrw.jsonl"
    g = tmp_path / "G"
    g.write_bytes(PROF.read_bytes())
    assert invoke("nop", g, "--in-place", "--only", "sum8", "--log", other).exit_code == 0
    r = invoke("undo", "--in-place", f, "--log", elsewhere)
    assert r.exit_code == 0 and f.read_bytes() == PROF.read_bytes(), r.output
    assert other.exists() and "removed" not in r.stderr, r.stderr


# -- 4. --log st/x --stage-images st, st not made yet -----------------------------------------------


def test_log_in_the_stage_images_directory_not_made_yet_is_written_there(tmp_path: Path) -> None:
    """`--stage-images st` alone makes st; with `--log st/x` too it was refused, "directory st does
    not exist". The run makes st first now; the log undoes the output."""
    f = tmp_path / "F"
    f.write_bytes(PROF.read_bytes())
    st = tmp_path / "st"
    r = invoke("nop", f, "-o", tmp_path / "G", "--log", st / "x", "--stage-images", st)
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in st.iterdir()) == ["F.stage1", "F.stage2", "x"]
    r = invoke("undo", tmp_path / "G", "--log", st / "x", "-o", tmp_path / "back")
    assert r.exit_code == 0 and (tmp_path / "back").read_bytes() == PROF.read_bytes(), r.output


def test_output_in_the_stage_images_directory_of_a_records_only_rewrite(tmp_path: Path) -> None:
    """A patchable object nopped by dropping records writes no word, so no stage image: st is made
    for the output and the log all the same."""
    src = Path(__file__).resolve().parent.parent / "fixtures" / "bin" / "patchable-le.o"
    f = tmp_path / "P.o"
    f.write_bytes(src.read_bytes())
    st = tmp_path / "st"
    r = invoke("nop", f, "--drop-records", "-o", st / "Q.o", "--log", st / "x", "--stage-images", st)
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in st.iterdir()) == ["Q.o", "x"]


def test_a_refused_run_with_its_log_in_the_stage_images_directory_makes_no_directory(tmp_path: Path) -> None:
    f = tmp_path / "F"
    f.write_bytes(PROF.read_bytes())
    st = tmp_path / "st"
    r = invoke("nop", f, "-o", tmp_path / "G", "--log", st / "x", "--stage-images", st, "--only", "no_such_fn")
    assert r.exit_code == 1 and "nothing to do" in r.stderr, r.output
    assert not st.exists() and not (tmp_path / "G").exists()
    r = invoke("nop", f, "-o", tmp_path / "G", "--log", st / "sub" / "x", "--stage-images", st)
    assert r.exit_code == 2 and f"directory {st / 'sub'} does not exist" in r.stderr, r.output
    assert not st.exists()


# -- 5. interrupted runs ----------------------------------------------------------------------------


def _new_or_old(tree: Path, logs: Path, originals: dict[str, str]) -> tuple[int, list[str]]:
    """How many files are new (their log, under ``logs``, leads from the original to them), and the
    files that are neither that nor the original without a log."""
    new, bad = 0, []
    for rel, h in originals.items():
        now = _sha(tree / rel)
        log = logs / f"{rel}.mcountrw.jsonl"
        if log.exists():
            header = json.loads(log.read_text().split("\n", 1)[0])
            if header["input"]["sha256"] == h and header["output"]["sha256"] == now:
                new += 1
                continue
        if now != h or log.exists():
            bad.append(rel)
    return new, bad


def _run_until_logs(tmp_path: Path, src: Path, logs_wanted: int):  # type: ignore[no-untyped-def]
    """A `prenop --jobs 2` of a copy of ``src`` in its own session, once it has written
    ``logs_wanted`` logs (or ended): (the process, the tree, the logs, the originals' sha256)."""
    import os
    import sys
    import time

    tree, logs = tmp_path / "tree", tmp_path / "logs"
    shutil.copytree(src, tree)
    originals = {str(p.relative_to(tree)): _sha(p) for p in tree.rglob("*.ko*")}
    root = Path(__file__).resolve().parent.parent
    cmd = [sys.executable, "-m", "rewriter", "prenop", "--policy", _policy(tmp_path), "--in-place",
           "--strip-signature", "--log-dir", str(logs), "--jobs", "2", str(tree)]  # fmt: skip
    env = dict(os.environ, PYTHONPATH=str(root))
    proc = subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE, text=True, start_new_session=True)
    deadline = time.monotonic() + 60
    while len(list(logs.rglob("*.jsonl"))) < logs_wanted and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    return proc, tree, logs, originals


@pytest.mark.corpus
def test_sigterm_to_the_parent_alone_stops_the_workers_of_a_prenop(tmp_path: Path) -> None:
    """`kill PID` (or `timeout`) reaches the parent only: it unwound, and the pool's shutdown then
    ran every batch left, the workers writing the rest of the tree (15 s more over 130 modules)
    before the run said it was interrupted. Now the workers are stopped with it: the run ends at
    once, each file old or new with its log, no temporary file, no process left."""
    import os
    import time

    proc, tree, logs, originals = _run_until_logs(tmp_path, require_kernel("6.12").modules_dir / "fs", 1)
    try:
        assert proc.poll() is None, "the run ended before its first log: nothing to interrupt"
        proc.send_signal(signal.SIGTERM)
        sent = time.monotonic()
        _, err = proc.communicate(timeout=60)
        took = time.monotonic() - sent
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 128 + signal.SIGTERM and "interrupted by SIGTERM" in err, err
    left = subprocess.run(["pgrep", "-s", str(proc.pid)], capture_output=True, text=True).stdout.split()
    assert not left, f"processes of the run left: {left}"
    new, bad = _new_or_old(tree, logs, originals)
    assert not bad and not [p for p in tmp_path.rglob("*") if "mcountrw-tmp" in p.name]
    assert new < len(originals) - 20, f"{new} of {len(originals)} written after the signal ({took:.1f} s)"
    r = invoke("prenop", "--verify", "--log-dir", logs, tree)
    assert r.exit_code == 0, r.output


def test_a_signal_between_staging_and_landing_leaves_no_temporary_file(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """A signal that came after a file's outputs were staged (temporary files written) and before
    they were handed to an I/O thread to land left them in the tree: nobody landed or removed them."""
    from concurrent.futures import ThreadPoolExecutor

    import rewriter.prenop as P
    from rewriter.output import NewFile

    class Signal(BaseException):
        pass

    class Interrupted(ThreadPoolExecutor):
        def submit(self, *args, **kwargs):  # type: ignore[no-untyped-def]
            raise Signal()

    monkeypatch.setattr(P, "ThreadPoolExecutor", Interrupted)
    out = tmp_path / "out"
    out.mkdir()
    t = P.Target(tmp_path / "x.ko", out / "x.ko", "x.ko", out / "x.ko.mcountrw.jsonl")
    files = (NewFile(t.log, b"log\n", 0o644), NewFile(t.dest, b"module\n", 0o644))
    with pytest.raises(Signal):
        P._compute_then_publish([t], lambda _: (P.FileReport(t.rel, P.Status.NOPPED), files))
    assert sorted(p.name for p in out.iterdir()) == []


# A signal's handler runs as the system call it interrupted returns: each test below makes the call
# (open, link, symlink, rename), then raises as that handler would, once.


class _Signal(BaseException):
    """What the CLI's handler raises (rewriter.cli.exits.Interrupted): no ``except Exception`` stops it."""


def _then_signal(monkeypatch, name: str, when) -> None:  # type: ignore[no-untyped-def]
    """Patch ``os.NAME`` to do its work, then raise :class:`_Signal` the first time ``when(args)``."""
    import os

    real = getattr(os, name)
    fired = []

    def call(*args, **kwargs):  # type: ignore[no-untyped-def]
        out = real(*args, **kwargs)
        if not fired and when(args):
            fired.append(args)
            raise _Signal()
        return out

    monkeypatch.setattr(os, name, call)


def _temporaries(d: Path) -> list[str]:
    return sorted(p.name for p in d.iterdir() if p.name.endswith(".mcountrw-tmp"))


def test_a_signal_as_a_temporary_file_is_opened_leaves_no_file(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """tempfile.mkstemp made the file inside: a prenop worker interrupted in that open left
    `.fuse.ko.<random>.mcountrw-tmp` in the tree (the double Ctrl-C trials)."""
    from rewriter.output import atomic_write

    _then_signal(monkeypatch, "open", lambda a: str(a[0]).endswith(".mcountrw-tmp"))
    with pytest.raises(_Signal):
        atomic_write(tmp_path / "out", b"data")
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_a_signal_as_a_file_is_renamed_over_its_target_puts_the_pair_back(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """The log renamed over its old one, then the signal: the rename was taken as not made, so the
    new log was not put back, and stayed beside the old file it does not describe."""
    from rewriter.output import commit_all, write_temp

    log, f = tmp_path / "f.mcountrw.jsonl", tmp_path / "f"
    log.write_bytes(b"old log\n")
    f.write_bytes(b"old file\n")
    pending = [write_temp(log, b"new log\n"), write_temp(f, b"new file\n")]
    _then_signal(monkeypatch, "replace", lambda a: str(a[1]) == str(log))
    with pytest.raises(_Signal):
        commit_all(pending)
    assert log.read_bytes() == b"old log\n" and f.read_bytes() == b"old file\n"
    assert _temporaries(tmp_path) == []


def test_a_signal_as_the_earlier_file_is_kept_leaves_no_link(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """commit_all keeps each target's earlier file as a hard link until the pair is in place: one
    made as the signal came stayed (`.overlay.ko.<random>.previous.mcountrw-tmp`)."""
    from rewriter.output import commit_all, write_temp

    log, f = tmp_path / "f.mcountrw.jsonl", tmp_path / "f"
    log.write_bytes(b"old log\n")
    f.write_bytes(b"old file\n")
    pending = [write_temp(log, b"new log\n"), write_temp(f, b"new file\n")]
    _then_signal(monkeypatch, "link", lambda a: True)
    with pytest.raises(_Signal):
        commit_all(pending)
    assert log.read_bytes() == b"old log\n" and f.read_bytes() == b"old file\n"
    assert _temporaries(tmp_path) == []


def test_a_signal_as_a_link_is_made_leaves_no_temporary_link(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """prenop -o copies a tree's links through atomic_symlink: the temporary link was made before
    the block that removes it."""
    from rewriter.output import atomic_symlink

    _then_signal(monkeypatch, "symlink", lambda a: True)
    with pytest.raises(_Signal):
        atomic_symlink(tmp_path / "build", "/usr/src/linux")
    assert sorted(p.name for p in tmp_path.iterdir()) == []


@pytest.mark.corpus
def test_ctrl_c_twice_during_the_writes_leaves_every_file_whole_with_its_log(tmp_path: Path) -> None:
    """Ctrl-C twice (both to the process group, 30 ms apart) while the workers land files: the
    second raised again in a worker's clean-up of the first, which stopped halfway: temporary files
    left in the tree, and logs left beside the original files they do not describe (3 trials in 5
    on the 6.1 fs tree). A worker spends the second now; up to three tries here."""

    src = require_kernel("6.1").modules_dir / "fs"
    for n in range(3):
        proc, tree, logs, originals = _run_until_logs(tmp_path / str(n), src, 15)
        err = _signal_twice(proc, signal.SIGINT, 0.03)
        assert proc.returncode in (0, 128 + signal.SIGINT) and "Traceback" not in err, err
        left = subprocess.run(["pgrep", "-s", str(proc.pid)], capture_output=True, text=True).stdout.split()
        _, bad = _new_or_old(tree, logs, originals)
        temporaries = [str(p) for p in (tmp_path / str(n)).rglob("*") if "mcountrw-tmp" in p.name]
        assert not bad and not temporaries and not left, (n, bad, temporaries, left)


@pytest.mark.corpus
def test_sigterm_twice_while_nop_writes_a_vmlinux_leaves_no_temporary_file(tmp_path: Path) -> None:
    """The second signal raised again in the clean-up of the first (the temporary file removed as the
    run unwinds) and left `.v.<random>.mcountrw-tmp` beside the vmlinux, every time (5 in 5). It is
    spent now; the vmlinux is its original, or the new one with its log."""
    import os
    import sys
    import time

    v = tmp_path / "v"
    shutil.copy(require_kernel("6.1").vmlinux, v)
    original = _sha(v)
    root = Path(__file__).resolve().parent.parent
    cmd = [sys.executable, "-m", "rewriter", "nop", str(v), "--in-place", "--drop-records"]
    env = dict(os.environ, PYTHONPATH=str(root))
    proc = subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while proc.poll() is None and not _temporaries(tmp_path) and time.monotonic() < deadline:
            time.sleep(0.001)
    except BaseException:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        raise
    err = _signal_twice(proc, signal.SIGTERM, 0.01)
    assert proc.returncode in (0, 128 + signal.SIGTERM) and "Traceback" not in err, err
    assert _temporaries(tmp_path) == []
    log = tmp_path / "v.mcountrw.jsonl"
    if log.exists():  # the new one, which its log describes
        header = json.loads(log.read_text().split("\n", 1)[0])
        assert (header["input"]["sha256"], header["output"]["sha256"]) == (original, _sha(v))
    else:
        assert _sha(v) == original


def test_undo_rerun_in_place_settles_the_log_an_interrupted_undo_left(tmp_path: Path) -> None:
    """An undo interrupted once the original was in place, before the log beside it was removed (or
    one with --log elsewhere before that was settled), left the file original and the log beside it
    describing the nopped file; the rerun said there was nothing to undo and left the log, which
    every scan warned of. The rerun settles it now, as the undo would have."""
    f = tmp_path / "F"
    f.write_bytes(PROF.read_bytes())
    assert invoke("nop", f, "--in-place").exit_code == 0
    f.write_bytes(PROF.read_bytes())  # what the interrupted undo left: the original, its log beside
    beside = tmp_path / "F.mcountrw.jsonl"
    r = invoke("undo", "--in-place", f)
    assert r.exit_code == 0 and "nothing to undo" in r.stderr, r.output
    assert f"removed {beside}: the step it describes is undone" in r.stderr, r.stderr
    assert not beside.exists() and f.read_bytes() == PROF.read_bytes()
    scan = invoke("scan", f)
    assert scan.exit_code == 0 and "warning" not in scan.stderr, scan.output


def _signal_twice(proc: subprocess.Popen[str], signum: int, gap: float) -> str:
    """Send ``signum`` to ``proc``'s process group twice, ``gap`` seconds apart, and wait for it to
    end; its stderr. Whatever happens, the group is killed after."""
    import os
    import time

    try:
        for _ in range(2):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signum)
            time.sleep(gap)
        return proc.communicate(timeout=60)[1]
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
