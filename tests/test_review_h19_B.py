"""Review h19, helper B: prenop runs refused once, before anything is written.

* A rerun of ``prenop --in-place --log-dir LOGS TREE`` that forgets ``--log-dir`` saw each module
  as rewritten by a run whose log is not here, and refused it: one error line per module
  (thousands over a tree). Now one line naming the tree and ``--log-dir``, exit 2, nothing written.
* A tree given with a vmlinux of another release, or with a ``--generation`` its modules
  contradict, failed module by module after the vmlinux was written. Now one line, before the
  first write, naming the first module and the count.
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest
from boot import require_kernel
from conftest import interrupted_when, invoke

pytestmark = pytest.mark.corpus

NLS = ["nls_ascii.ko.xz", "nls_cp437.ko.xz", "nls_cp850.ko.xz", "nls_iso8859-1.ko.xz", "nls_utf8.ko.xz"]


def _state(root: Path) -> dict[str, str]:
    files = [p for p in root.rglob("*") if p.is_file()]
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


def _tree(tmp_path: Path) -> Path:
    """A copy of five of Debian 6.12's nls modules, in ``kernel/fs/nls``."""
    k612 = require_kernel("6.12")
    tree = tmp_path / "kernel"
    (tree / "fs" / "nls").mkdir(parents=True)
    for name in NLS:
        shutil.copy(k612.modules_dir / "fs/nls" / name, tree / "fs" / "nls")
    return tree


def _policy(tmp_path: Path, text: str = "default nop\n") -> Path:
    policy = tmp_path / "p.policy"
    policy.write_text(text)
    return policy


def test_a_rerun_in_place_without_its_log_dir_is_refused_once_naming_the_tree(tmp_path: Path) -> None:
    """Each module was one error line (five here, 3,154 over the tree); now one line naming the
    tree and the fix, exit 2, the tree and the logs as they were. With the --log-dir the same run
    changes nothing."""
    tree = _tree(tmp_path)
    logs = tmp_path / "logs"
    policy = _policy(tmp_path)
    first = invoke("prenop", "--policy", policy, "--in-place", "--log-dir", logs, "--strip-signature", tree)
    assert first.exit_code == 0, first.output
    before, logs_before = _state(tree), _state(logs)
    again = invoke("prenop", "--policy", policy, "--in-place", "--strip-signature", tree)
    lines = again.stderr.strip().splitlines()
    assert again.exit_code == 2 and len(lines) == 1, again.output
    assert lines[0].startswith(f"mcountrw: error: {tree}: rewritten by an earlier run whose patch logs are not"), lines
    assert "give --log-dir DIR" in lines[0] and "(5 modules) is refused before its first write" in lines[0], lines
    assert again.stdout == ""
    assert _state(tree) == before and _state(logs) == logs_before
    # -o from that tree, also without the logs: refused the same way, OUT not made
    out = tmp_path / "out"
    copy = invoke("prenop", "--policy", policy, "-o", out, "--strip-signature", tree)
    assert copy.exit_code == 2 and len(copy.stderr.strip().splitlines()) == 1, copy.output
    assert "give --log-dir DIR" in copy.stderr and not out.exists()
    done = invoke("prenop", "--policy", policy, "--in-place", "--log-dir", logs, "--strip-signature", tree)
    assert done.exit_code == 0 and "nothing changed" in done.stdout, done.output
    assert _state(tree) == before


def test_a_first_run_whose_first_modules_are_kept_or_siteless_is_not_refused(tmp_path: Path) -> None:
    """The check before the first write decides a few modules: one the policy keeps whole (no
    log, the original) or one with no site passes it, and a first run is done whole."""
    tree = _tree(tmp_path)
    (tree / "fs" / "nls" / "aa-nothing.ko").write_bytes(b"")  # sorted first; fails alone in its turn
    policy = _policy(tmp_path, "default nop\nkeep :mod:nls_ascii\nkeep :mod:nls_cp437\n")
    logs = tmp_path / "logs"
    run = invoke("prenop", "--policy", policy, "--in-place", "--log-dir", logs, "--strip-signature", tree)
    assert run.exit_code == 2, run.output  # the empty file's own line, and the others written
    assert [line for line in run.stderr.splitlines() if "aa-nothing.ko" in line] == run.stderr.strip().splitlines()
    assert sorted(p.name for p in logs.rglob("*.jsonl")) == sorted(
        f"{n}.mcountrw.jsonl" for n in NLS if n not in ("nls_ascii.ko.xz", "nls_cp437.ko.xz")
    )


def test_a_tree_given_with_a_vmlinux_of_another_release_is_refused_before_the_first_write(tmp_path: Path) -> None:
    """The vmlinux (6.1) was written to OUT, then each 6.12 module failed; now one line naming the
    first module and the count, and OUT not made."""
    tree = _tree(tmp_path)
    k61 = require_kernel("6.1")
    out = tmp_path / "out"
    run = invoke("prenop", "--policy", _policy(tmp_path), "--strip-signature", "-o", out, k61.vmlinux, tree)
    lines = run.stderr.strip().splitlines()
    assert run.exit_code == 2 and len(lines) == 1, run.output
    assert lines[0].startswith(f"mcountrw: error: {tree / 'fs/nls/nls_ascii.ko.xz'}: built for 6.12.107"), lines
    assert "(5 modules) is refused before its first write (nothing written)" in lines[0], lines
    assert not out.exists()


def test_a_generation_the_modules_contradict_is_refused_before_the_first_write(tmp_path: Path) -> None:
    """``--generation ool`` over 6.12 (patchable) modules: each failed in its turn, each other
    module written; now one line, nothing written."""
    tree = _tree(tmp_path)
    before = _state(tree)
    logs = tmp_path / "logs"
    run = invoke("prenop", "--policy", _policy(tmp_path), "--in-place", "--log-dir", logs, "--strip-signature",
                 "--generation", "ool", tree)  # fmt: skip
    lines = run.stderr.strip().splitlines()
    assert run.exit_code == 2 and len(lines) == 1, run.output
    assert "nls_ascii.ko.xz: --generation ool contradicts" in lines[0], lines
    assert "(5 modules) is refused before its first write" in lines[0], lines
    assert _state(tree) == before and not logs.exists()


# -- an interrupted -o OUT says OUT is incomplete, and a rerun finishes it -----------------------


def _fs_tree(tmp_path: Path) -> Path:
    """A copy of Debian 6.12's kernel/fs (130 modules) and a modules.order."""
    k612 = require_kernel("6.12")
    tree = tmp_path / "kernel"
    shutil.copytree(k612.modules_dir / "fs", tree / "fs")
    (tree / "modules.order").write_text("kernel/fs/ext4/ext4.ko.xz\n")
    return tree


def test_an_interrupted_o_run_says_out_is_incomplete_and_a_rerun_finishes_it(tmp_path: Path) -> None:
    """SIGINT to `prenop TREE -o OUT` mid-run said `no output was left half-written` and left an OUT
    lacking most of the tree, with nothing to tell it from a finished one. The line now says OUT
    is incomplete and to run the same command again; each file there is new with its log (no
    temporary), and the rerun makes OUT what an uninterrupted run makes, byte for byte."""
    import json
    import signal

    tree = _fs_tree(tmp_path)
    policy = _policy(tmp_path)
    out = tmp_path / "out"
    args = ["prenop", "--policy", str(policy), "--strip-signature", "--jobs", "1", "-o", str(out), str(tree)]
    code, err = interrupted_when(args, lambda: len(list(out.rglob("*.jsonl"))) >= 3)
    assert code == 128 + signal.SIGINT, err
    assert err.strip().splitlines() == [
        f"mcountrw: interrupted by SIGINT: {out} is incomplete: some files of the tree are not written or copied "
        "there yet; run the same command again to finish it (what is written is kept)"
    ], err
    written = list(out.rglob("*.ko.xz"))
    assert 0 < len(written) < 130 and not [p for p in out.rglob("*") if "mcountrw-tmp" in p.name]
    for module in written:
        header = json.loads(Path(f"{module}.mcountrw.jsonl").read_text().split("\n", 1)[0])
        assert header["output"]["sha256"] == hashlib.sha256(module.read_bytes()).hexdigest()
    rerun = invoke("prenop", "--policy", policy, "--strip-signature", "-o", out, tree)
    assert rerun.exit_code == 0, rerun.output
    whole = tmp_path / "whole"
    assert invoke("prenop", "--policy", policy, "--strip-signature", "-o", whole, tree).exit_code == 0
    assert _state(out) == _state(whole)


# -- two runs writing one -o OUT at once: the one whose file lands last is told -------------------

PROF = Path(__file__).resolve().parent.parent / "fixtures" / "bin" / "prof-le"


def _another_run_lands(monkeypatch: pytest.MonkeyPatch, target_suffix: str, data: bytes) -> list[Path]:
    """Make ``rewriter.output.commit`` act as a second run would in a close race: once this run's
    last file is renamed into place, another file lands over this run's target ending in
    ``target_suffix`` (as the other run's log landing between this run's two renames). Returns
    the targets it replaced."""
    import os

    import rewriter.output as output

    real = output.commit
    replaced: list[Path] = []

    def racing(pending: output.Pending) -> None:
        real(pending)
        if not str(pending.path).endswith(".mcountrw.jsonl") and not replaced:
            for p in pending.path.parent.iterdir():
                if str(p).endswith(target_suffix):
                    theirs = p.with_name(p.name + ".theirs")
                    theirs.write_bytes(data)
                    os.replace(theirs, p)
                    replaced.append(p)

    monkeypatch.setattr(output, "commit", racing)
    return replaced


def test_nop_o_out_whose_log_another_run_replaced_meanwhile_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two `nop F -o OUT` at once: only the last file renamed was checked, so the run whose OUT
    landed last exited 0 with the other run's log beside it. Now it fails, one line naming the
    log and saying both may not match."""
    f = tmp_path / "F"
    f.write_bytes(PROF.read_bytes())
    out = tmp_path / "OUT"
    replaced = _another_run_lands(monkeypatch, "OUT.mcountrw.jsonl", b"another run's log\n")
    r = invoke("nop", f, "-o", out)
    assert replaced == [tmp_path / "OUT.mcountrw.jsonl"]
    lines = r.stderr.strip().splitlines()
    assert r.exit_code == 2 and len(lines) == 1, r.output
    assert lines[0].startswith(
        f"mcountrw: error: {out}.mcountrw.jsonl: after the rename, not the file that was written"
    ), lines
    assert f"{out}.mcountrw.jsonl and {out} may not match; run again, alone" in lines[0], lines


def test_prenop_o_out_whose_log_another_run_replaced_meanwhile_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same race between two `prenop --policy P F -o OUT`: the file's line says so, exit 2."""
    f = tmp_path / "F"
    f.write_bytes(PROF.read_bytes())
    out = tmp_path / "OUT"
    replaced = _another_run_lands(monkeypatch, "OUT.mcountrw.jsonl", b"another run's log\n")
    r = invoke("prenop", "--policy", _policy(tmp_path), "--jobs", "1", f, "-o", out)
    assert replaced == [tmp_path / "OUT.mcountrw.jsonl"]
    assert r.exit_code == 2 and "after the rename, not the file that was written" in r.stderr, r.output
    assert "may not match; run again, alone" in r.stderr, r.output
