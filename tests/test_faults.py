"""Faults: a run killed at any moment, a full disk or a failed read-back loses nothing and leaves no
half-written file; apply followed by undo is the identity for any selection and plan.

The kill tests run the real command on the corpus vmlinux (~2.4 s, 46 MB written) and SIGKILL it
at twenty moments spread over its run, then look at what is on disk: the output is absent or is,
byte for byte, the output of a complete run (which `verify` accepts against its log); the input
is untouched; the only other files are the writer's ``.*.mcountrw-tmp`` leftovers, which SIGKILL
leaves behind by design (docs/bad-input.md). SIGTERM, which can be caught, leaves none.
"""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from boot import _missing, require_tool
from conftest import FIXTURES
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rewriter import output as writer
from rewriter import rewrite as rewrite_module
from rewriter.elf.image import Image
from rewriter.errors import ImageError, InternalError, NothingToDo, OutputError, PlanRejected, RewriteError
from rewriter.files import apply_file, undo_file, verify_files
from rewriter.log import default_log_path, load
from rewriter.output import TMP_SUFFIX
from rewriter.plan import Route
from rewriter.rewrite import Options, Selection
from rewriter.sites import scan
from rewriter.states import SiteState

BIN = FIXTURES / "bin"
KILLS = 20


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def command(*args: str) -> list[str]:
    return [sys.executable, "-m", "rewriter", *args]


def leftovers(directory: Path, keep: set[str]) -> list[str]:
    """Files other than ``keep``; each must be a writer temporary file."""
    extra = sorted(p.name for p in directory.iterdir() if p.name not in keep)
    assert all(name.startswith(".") and name.endswith(TMP_SUFFIX) for name in extra), extra
    return extra


def kill_times(seconds: float, count: int, came_after_the_end: Callable[[], bool]) -> Iterator[float]:
    """``count`` delays spread over a run measured at ``seconds``, then later ones, each 1.5 times
    the last, until a kill came after the end (or the delays pass 8 times the run). A loaded machine can stretch
    one run well past the measured one: CI once saw ten kills over 1.25 times the run all land
    before the commit, and the test asked for a rewritten file it never got."""
    for i in range(count):
        yield seconds * (i + 0.5) / count
    delay = seconds
    while not came_after_the_end() and delay < 8 * seconds:
        delay *= 1.5
        yield delay


def kill_at(args: list[str], delay: float, sig: int = signal.SIGKILL) -> subprocess.CompletedProcess[str]:
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(delay)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=60)
    return subprocess.CompletedProcess(args, proc.returncode, out, err)


@pytest.fixture(scope="module")
def reference(corpus, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, float]:
    """One complete, verified run: the output every interrupted run must match if it has one."""
    work = tmp_path_factory.mktemp("reference")
    out = work / "vmlinux"
    start = time.perf_counter()
    done = subprocess.run(
        command("nop", str(corpus.vmlinux), "-o", str(out), "--drop-records"), capture_output=True, text=True
    )
    seconds = time.perf_counter() - start
    assert done.returncode == 0, done.stderr
    assert verify_files(corpus.vmlinux, out, default_log_path(out)).ok
    return out, seconds


@pytest.mark.slow
@pytest.mark.corpus
def test_sigkill_at_any_moment_leaves_the_output_absent_or_complete(corpus, reference, tmp_path: Path) -> None:
    ref, seconds = reference
    ref_sha = sha256(ref)
    input_sha = sha256(corpus.vmlinux)
    seen = {"absent": 0, "complete": 0, "log only": 0}
    for i, delay in enumerate(kill_times(seconds, KILLS, lambda: seen["complete"] > 0)):
        work = tmp_path / f"kill{i}"
        work.mkdir()
        out = work / "vmlinux"
        kill_at(command("nop", str(corpus.vmlinux), "-o", str(out), "--drop-records"), delay)
        log = default_log_path(out)
        leftovers(work, {out.name, log.name})
        if out.exists():
            assert sha256(out) == ref_sha, f"kill {i}: {out} exists but is not the complete output"
            assert verify_files(corpus.vmlinux, out, log).ok  # an output never exists without its log
            seen["complete"] += 1
        elif log.exists():
            assert load(log).header.output.sha256 == ref_sha  # a whole log (its footer checks), for the output to come
            seen["log only"] += 1
        else:
            seen["absent"] += 1
        shutil.rmtree(work)
    assert sha256(corpus.vmlinux) == input_sha
    assert seen["absent"] and seen["complete"], seen  # the kills really did land before and after


@pytest.mark.slow
@pytest.mark.corpus
def test_sigkill_during_in_place_keeps_the_original_or_the_complete_result(corpus, reference, tmp_path: Path) -> None:
    ref, _ = reference
    original_sha, ref_sha = sha256(corpus.vmlinux), sha256(ref)
    work = tmp_path / "inplace"
    target = work / "vmlinux"
    args = command("nop", str(target), "--in-place", "--backup", "--drop-records")
    work.mkdir()
    shutil.copy(corpus.vmlinux, target)
    start = time.perf_counter()
    assert subprocess.run(args, capture_output=True).returncode == 0
    seconds = time.perf_counter() - start
    shutil.rmtree(work)
    outcomes: set[str] = set()
    for i, delay in enumerate(kill_times(seconds, KILLS // 2, lambda: "rewritten" in outcomes)):
        work.mkdir()
        shutil.copy(corpus.vmlinux, target)
        kill_at(args, delay)
        backup, log = work / "vmlinux.orig", default_log_path(target)
        leftovers(work, {target.name, backup.name, log.name})
        now = sha256(target)
        assert now in (original_sha, ref_sha), f"kill {i}: the input is neither the original nor the result"
        if now == ref_sha:
            # Replaced: the backup and the log were published first.
            assert sha256(backup) == original_sha
            assert verify_files(backup, target, log).ok
        assert not backup.exists() or sha256(backup) == original_sha
        outcomes.add("rewritten" if now == ref_sha else "original")
        shutil.rmtree(work)
    assert outcomes == {"original", "rewritten"}, outcomes


@pytest.mark.slow
@pytest.mark.corpus
def test_sigterm_cleans_up_and_says_so(corpus, reference, tmp_path: Path) -> None:
    _, seconds = reference
    for i, fraction in enumerate((0.3, 0.6, 0.85)):
        work = tmp_path / f"term{i}"
        work.mkdir()
        out = work / "vmlinux"
        proc = kill_at(
            command("nop", str(corpus.vmlinux), "-o", str(out), "--drop-records"), seconds * fraction, signal.SIGTERM
        )
        if proc.returncode == 0:
            continue  # finished first
        assert proc.returncode == 128 + signal.SIGTERM, proc.stderr
        assert proc.stderr.strip().splitlines()[-1].startswith("mcountrw: interrupted by SIGTERM")
        assert leftovers(work, {out.name, default_log_path(out).name}) == []


# -- a signal between writing and publishing ---------------------------------------------------------
# A signal can land after the temporary files are complete and before they are renamed: while the
# writer thread is joined, or between two renames. test_sigterm_cleans_up_and_says_so once left the
# log's and the output's temporary files there, on a loaded machine; these put the signal there.


class _SignalAtJoin(ThreadPoolExecutor):
    """The writer pool, with a SIGTERM (as the handler raises it) landing as the pool is joined."""

    def __exit__(self, *exc: object) -> bool | None:
        super().__exit__(*exc)
        raise KeyboardInterrupt


def test_a_signal_while_the_writer_is_joined_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import rewriter.files

    """apply (the output, its log) and undo (the original) each stop with nothing written."""
    with monkeypatch.context() as m, pytest.raises(KeyboardInterrupt):
        m.setattr(rewriter.files, "ThreadPoolExecutor", _SignalAtJoin)
        apply_file(BIN / "prof-le", tmp_path / "out", Selection(), Options(SiteState.NOPPED))
    assert sorted(p.name for p in tmp_path.iterdir()) == []
    done = tmp_path / "done"
    apply_file(BIN / "prof-le", done, Selection(), Options(SiteState.NOPPED))
    with monkeypatch.context() as m, pytest.raises(KeyboardInterrupt):
        m.setattr(rewriter.files, "ThreadPoolExecutor", _SignalAtJoin)
        undo_file(done, default_log_path(done), tmp_path / "back")
    assert leftovers(tmp_path, {done.name, default_log_path(done).name}) == []


def test_a_signal_between_two_renames_leaves_no_temporary_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The log is renamed first, then the signal: the output's temporary file goes, the log
    stays (a log without its output is harmless; an output without its log is what must never be)."""
    renames = []
    real = writer.commit

    def commit_then_signal(pending: writer.Pending) -> None:
        if renames:
            raise KeyboardInterrupt
        real(pending)
        renames.append(pending.path)

    monkeypatch.setattr(writer, "commit", commit_then_signal)
    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        apply_file(BIN / "prof-le", out, Selection(), Options(SiteState.NOPPED))
    assert renames == [default_log_path(out)]
    assert leftovers(tmp_path, {default_log_path(out).name}) == []


# -- a full disk ------------------------------------------------------------------------------------


@pytest.fixture
def tiny_tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A 1200 KiB tmpfs: room for prof-le (916 KiB) once, not twice. Without the right to mount
    one this skips locally and fails in CI (MCOUNTRW_REQUIRE_TOOLS=1), like a missing tool: a
    skip there would hide that the full-disk path was never run."""
    mount = require_tool("mount")
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    try:
        subprocess.run([mount, "-t", "tmpfs", "-o", "size=1200k", "tmpfs", str(mnt)], check=True,
                       capture_output=True)  # fmt: skip
    except (OSError, subprocess.CalledProcessError) as e:
        _missing(f"cannot mount a tmpfs here (needs root / CAP_SYS_ADMIN): {e}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], check=False)


def test_disk_full_on_a_real_small_file_system(tiny_tmpfs: Path) -> None:
    src = tiny_tmpfs / "prof-le"
    shutil.copy(BIN / "prof-le", src)
    before = sha256(src)
    for args in (("-o", str(tiny_tmpfs / "out")), ("--in-place",)):
        proc = subprocess.run(command("nop", str(src), *args), capture_output=True, text=True)
        assert proc.returncode == 2, proc.stderr
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and "No space left on device" in lines[0], proc.stderr
        assert sorted(p.name for p in tiny_tmpfs.iterdir()) == ["prof-le"]  # no output, no log, no temp
        assert sha256(src) == before


def test_disk_full_while_writing_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """ENOSPC from fsync (where a full disk shows up on file systems that allocate late)."""

    def full(fd: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(writer.os, "fsync", full)
    src = tmp_path / "clean"
    shutil.copy(BIN / "clean", src)
    with pytest.raises(OutputError, match="No space left on device"):
        apply_file(src, tmp_path / "out", Selection(), Options(SiteState.NOPPED))
    with pytest.raises(OutputError, match="No space left on device"):
        apply_file(src, None, Selection(), Options(SiteState.NOPPED), in_place=True, backup=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clean"]
    assert src.read_bytes() == (BIN / "clean").read_bytes()


def test_a_read_back_that_differs_publishes_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A file system that returns other bytes than were written: --in-place keeps the original."""
    real_write = os.write

    def corrupting(fd: int, data: bytes | memoryview) -> int:
        damaged = bytearray(data)
        damaged[len(damaged) // 2] ^= 0x01
        return real_write(fd, damaged)

    monkeypatch.setattr(writer.os, "write", corrupting)
    src = tmp_path / "prof-le.o"
    shutil.copy(BIN / "prof-le.o", src)
    with pytest.raises(OutputError, match="read back differs"):
        apply_file(src, None, Selection(), Options(SiteState.NOPPED), in_place=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["prof-le.o"]
    assert src.read_bytes() == (BIN / "prof-le.o").read_bytes()


def test_a_rewrite_that_does_not_read_back_is_an_internal_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """If the edits did not leave the planned words (here: they are not applied at all), that is
    mcountrw's own mistake: InternalError, which is no RewriteError (those say the input is bad),
    and nothing is written."""
    monkeypatch.setattr(rewrite_module, "apply_edits", lambda buf, edits, order: buf)
    src = tmp_path / "prof-le"
    shutil.copy(BIN / "prof-le", src)
    with pytest.raises(InternalError, match=r"read back enabled, planned nopped \(6 sites differ\)") as caught:
        apply_file(src, tmp_path / "out", Selection(), Options(SiteState.NOPPED, drop_records=True))
    assert not isinstance(caught.value, RewriteError)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["prof-le"]


def test_in_place_with_backup_keeps_the_original(tmp_path: Path) -> None:
    src = tmp_path / "std-le"
    shutil.copy(BIN / "std-le", src)
    result = apply_file(src, None, Selection(), Options(SiteState.DISABLED), in_place=True, backup=True)
    assert result.output == src and (tmp_path / "std-le.orig").read_bytes() == (BIN / "std-le").read_bytes()
    assert verify_files(tmp_path / "std-le.orig", src, default_log_path(src)).ok
    assert {s.state for s in scan(Image.load(src)).sites} == {SiteState.DISABLED}
    assert os.stat(src).st_mode == os.stat(BIN / "std-le").st_mode  # the mode is kept
    assert result.backup == tmp_path / "std-le.orig"


def test_in_place_with_backup_says_where_the_original_is(tmp_path: Path) -> None:
    """It said only "wrote F and F.mcountrw.jsonl", not the F.orig it also wrote."""
    src = tmp_path / "std-le"
    shutil.copy(BIN / "std-le", src)
    done = subprocess.run(
        [sys.executable, "-m", "rewriter", "nop", str(src), "--in-place", "--backup"], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert f"wrote {src} and {src}.mcountrw.jsonl, the original kept as {src}.orig" in done.stderr.splitlines()


# -- apply then undo is the identity ------------------------------------------------------------------

FIXTURE_SITES = {
    p.name: sorted({s.function for s in scan(Image.load(p)).sites if s.function}) for p in sorted(BIN.iterdir())
}


@st.composite
def plans(draw, name: str):  # type: ignore[no-untyped-def]
    functions = FIXTURE_SITES[name]
    everything = draw(st.booleans()) or not functions
    chosen = () if everything else tuple(draw(st.lists(st.sampled_from(functions), min_size=1, unique=True)))
    target = draw(st.sampled_from([SiteState.ENABLED, SiteState.DISABLED, SiteState.NOPPED]))
    route = draw(st.sampled_from([None, Route.MFLR_FIRST, Route.B8]))
    return Selection(only=chosen), Options(target, route, drop_records=draw(st.booleans()), strip_signature=True)


@settings(max_examples=150, derandomize=True, database=None, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])  # fmt: skip
@given(data=st.data(), name=st.sampled_from(sorted(FIXTURE_SITES)))
def test_apply_then_undo_is_the_identity(data: st.DataObject, name: str, tmp_path_factory) -> None:  # type: ignore[no-untyped-def]
    """One to three applies with random selections and plans, each verified against its log, then
    undone last first: every byte of the original comes back."""
    work = tmp_path_factory.mktemp("identity")
    chain = [BIN / name]
    for step in range(data.draw(st.integers(1, 3))):
        selection, options = data.draw(plans(name))
        out = work / f"step{step}"
        try:
            apply_file(chain[-1], out, selection, options)
        except (PlanRejected, ImageError, NothingToDo) as e:
            # Legal refusals: no route for this variant (b +8 over gcc 5's std), a site whose words
            # are unknown, a broken site the plan will not touch, nothing left to select (an earlier
            # step nopped the sites and dropped their records). Nothing may be written then.
            assert not out.exists() and not default_log_path(out).exists(), e
            continue
        assert verify_files(chain[-1], out, default_log_path(out)).ok
        chain.append(out)
    for later, earlier in zip(reversed(chain[1:]), reversed(chain[:-1]), strict=True):
        back = work / (later.name + ".back")
        undo_file(later, default_log_path(later), back)
        assert back.read_bytes() == earlier.read_bytes()


def test_a_report_is_replaced_whole_but_not_forced_to_disk(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Reports (scan/audit/plan -o) are renamed into place without an fsync; rewritten files are
    fsynced: a failing fsync stops the second and never reaches the first."""
    synced: list[int] = []

    def failing(fd: int) -> None:
        synced.append(fd)
        raise OSError(errno.EIO, os.strerror(errno.EIO))

    monkeypatch.setattr(writer.os, "fsync", failing)
    report = tmp_path / "report.json"
    report.write_text("old")
    writer.atomic_write(report, b'{"new": true}\n', durable=False)
    assert report.read_bytes() == b'{"new": true}\n' and synced == []
    assert [p.name for p in tmp_path.iterdir()] == ["report.json"]  # no temporary file left
    image = tmp_path / "image"
    with pytest.raises(OutputError, match="Input/output error"):
        writer.atomic_write(image, b"rewritten")
    assert synced and not image.exists()
    assert [p.name for p in tmp_path.iterdir()] == ["report.json"]


def test_a_report_on_a_full_disk_leaves_nothing(tiny_tmpfs: Path) -> None:
    """Not fsynced, a report still fails whole on a full file system: one line, exit 2, no file."""
    filler = tiny_tmpfs / "filler"
    with open(filler, "wb", buffering=0) as fh, pytest.raises(OSError, match="No space left"):
        while True:  # fill the file system to its last block
            fh.write(b"\0" * 4096)
    proc = subprocess.run(command("scan", "--format", "json", "-o", str(tiny_tmpfs / "r.json"), str(BIN / "prof-le")),
                          capture_output=True, text=True)  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "No space left on device" in lines[0], proc.stderr
    assert sorted(p.name for p in tiny_tmpfs.iterdir()) == ["filler"]


def test_files_published_together_are_put_back_together_when_one_cannot_be_replaced(tmp_path: Path) -> None:
    """A log, then the file it describes: when the file could not be replaced (immutable, a
    directory in its place), the new log stayed, over the log of what the file still was, and
    `prenop --verify` took the file for one undone since (undo could not read it back either)."""
    from rewriter.errors import OutputError
    from rewriter.output import NewFile, publish

    log, new_log, target = tmp_path / "f.log", tmp_path / "g.log", tmp_path / "f"
    log.write_bytes(b"the old log")
    target.mkdir()
    (target / "busy").write_bytes(b"")  # a non-empty directory: no rename replaces it
    with pytest.raises(OutputError):
        publish([NewFile(log, b"the new log", 0o644), NewFile(new_log, b"new", 0o644), NewFile(target, b"x", 0o644)])
    assert log.read_bytes() == b"the old log" and not new_log.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f", "f.log"]  # no temporary file, no kept link
    publish([NewFile(log, b"the new log", 0o644), NewFile(tmp_path / "h", b"x", 0o644)])
    assert log.read_bytes() == b"the new log" and sorted(p.name for p in tmp_path.iterdir()) == ["f", "f.log", "h"]


def test_a_target_whose_earlier_file_was_not_kept_is_never_removed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The put-back removed every target it had no link for, as if each had been new: with hard
    links refused (vfat, protected_hardlinks) a failed publish deleted the log and the image; a
    single file interrupted after its rename (in the directory's fsync) was deleted too."""
    import errno

    from rewriter import output as writer
    from rewriter.errors import OutputError
    from rewriter.output import NewFile, publish

    log, image, target = tmp_path / "f.log", tmp_path / "img", tmp_path / "f"
    log.write_bytes(b"old log")
    image.write_bytes(b"old image")
    target.mkdir()
    (target / "busy").write_bytes(b"")

    def no_links(*args: object, **kwargs: object) -> None:
        raise OSError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(writer.os, "link", no_links)
    with pytest.raises(OutputError):
        publish([NewFile(log, b"new log", 0o644), NewFile(image, b"new image", 0o644), NewFile(target, b"x", 0o644)])
    assert log.read_bytes() == b"new log" and image.read_bytes() == b"new image"  # not known: left as published
    monkeypatch.undo()

    def interrupted(directory: Path) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(writer, "_fsync_dir", interrupted)
    with pytest.raises(KeyboardInterrupt):
        publish([NewFile(image, b"newer image", 0o644)])
    assert image.read_bytes() == b"newer image"
    assert not [p.name for p in tmp_path.iterdir() if p.name.endswith(TMP_SUFFIX)]
