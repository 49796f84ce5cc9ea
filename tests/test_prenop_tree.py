"""What `prenop` takes from a tree and what its -o makes of it: every input readable before any
work, -o a whole copy of the tree (files that are no module, links, directories), a vmlinux below
a directory named as left out, options that would do nothing refused, and the lines a run prints
(one for a one-file run that failed, counts that say what was verified, a hint prenop can take)."""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import pytest
from conftest import FIXTURES, assert_one_line, invoke, mini_vmlinux, policy_file, unwrapped
from test_bad_input import _as_unprivileged, mcountrw
from test_prenop_review import _row

BIN = FIXTURES / "bin"
OBJ = BIN / "prof-le.o"  # 6 mprofile sites; prenop takes it as a module under a .ko name
ROOT = Path(__file__).resolve().parent.parent


def _shas(root: Path) -> dict[str, str]:
    """Every regular file below ``root`` by its sha256, and every link by its target."""
    out = {}
    for p in sorted(root.rglob("*")):
        if p.is_symlink():
            out[p.relative_to(root).as_posix()] = "-> " + os.readlink(p)
        elif p.is_file():
            out[p.relative_to(root).as_posix()] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def _policy(tmp: Path, text: str = "default nop\n") -> Path:
    return policy_file(tmp, text)


def _tree(where: Path) -> Path:
    """``kernel/a.ko`` and ``kernel/sub/b.ko`` (6 sites each), as a module tree has them."""
    (where / "kernel" / "sub").mkdir(parents=True)
    shutil.copy(OBJ, where / "kernel" / "a.ko")
    shutil.copy(OBJ, where / "kernel" / "sub" / "b.ko")
    return where


# -- 1. an input that cannot be read refuses the run, before any work --------------------------------


@pytest.mark.parametrize("how", [("--in-place",), ("-o", "OUT"), ("--dry-run",)])
def test_unreadable_modules_refuse_the_run_one_line_each_and_nothing_is_written(
    tmp_path: Path, how: tuple[str, ...]
) -> None:
    """The walk takes modules by their names, so an unreadable one passed it: the run failed that
    file on one line, nopped the others (in place) and exited 2, a tree half rewritten."""
    tree = _tree(tmp_path / "tree")
    shutil.copy(OBJ, tree / "kernel" / "c.ko")
    policy = _policy(tmp_path)
    for name in ("a.ko", "c.ko"):
        (tree / "kernel" / name).chmod(0)
    before = _shas(tmp_path)
    args = [str(tmp_path / "out") if a == "OUT" else a for a in how]
    proc = mcountrw("prenop", "--policy", str(policy), *args, str(tree), timeout=120, **_as_unprivileged())
    assert proc.returncode == 2, proc.stderr
    whole = f"every module below {tree} must be readable"
    assert proc.stderr.splitlines() == [
        f"mcountrw: error: {tree / 'kernel' / name}: Permission denied: {whole}" for name in ("a.ko", "c.ko")
    ]
    assert not proc.stdout and not (tmp_path / "out").exists()
    for name in ("a.ko", "c.ko"):
        (tree / "kernel" / name).chmod(0o644)
    assert _shas(tmp_path) == before


def test_an_unreadable_file_that_o_would_copy_refuses_the_run(tmp_path: Path) -> None:
    tree = _tree(tmp_path / "tree")
    (tree / "modules.order").write_text("kernel/a.ko\n")
    (tree / "modules.order").chmod(0)
    proc = mcountrw(
        "prenop", "--policy", str(_policy(tmp_path)), "-o", str(tmp_path / "out"), str(tree),
        timeout=120, **_as_unprivileged(),
    )  # fmt: skip
    (tree / "modules.order").chmod(0o644)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.splitlines() == [
        f"mcountrw: error: {tree / 'modules.order'}: Permission denied: -o copies the whole tree, this file too"
    ]
    assert not (tmp_path / "out").exists()


# -- 2. -o OUT is a copy of the whole tree ------------------------------------------------------------


def _dressed(tree: Path) -> Path:
    """:func:`_tree` with what an installed module tree holds beside its modules."""
    (tree / "modules.order").write_text("kernel/a.ko\nkernel/sub/b.ko\n")
    (tree / "modules.order").chmod(0o600)
    (tree / "kernel" / "sub" / "README").write_text("not a module\n")
    (tree / "build").symlink_to("/usr/src/linux-headers-none")  # dangling: never followed
    (tree / "source").symlink_to("kernel")  # a link to a directory stays a link
    (tree / "empty").mkdir()
    os.mkfifo(tree / "fifo")
    return tree


@pytest.mark.parametrize("undo", [False, True])
def test_an_output_tree_holds_every_other_file_link_and_directory(tmp_path: Path, undo: bool) -> None:
    """-o OUT held the rewritten modules and their logs and nothing else: modules.order, the
    `build` link, README were dropped in silence. `--undo -o` likewise."""
    tree = _dressed(_tree(tmp_path / "tree"))
    out, logs = tmp_path / "out", tmp_path / "logs"
    if undo:
        assert invoke("prenop", "--policy", _policy(tmp_path), "--in-place", "--log-dir", logs, tree).exit_code == 0
        result = invoke("prenop", "--undo", "--log-dir", logs, "-o", out, tree)
    else:
        result = invoke("prenop", "--policy", _policy(tmp_path), "-o", out, "--log-dir", logs, tree)
    assert result.exit_code == 0, result.output
    assert f"copied to {out}: 2 other files and 2 symlinks, as they are" in result.stdout.splitlines()
    assert result.stderr.splitlines() == [
        f"mcountrw: warning: 1 FIFO, socket or device not copied to {out}; first: {tree / 'fifo'}"
    ]
    for rel in ("modules.order", "kernel/sub/README"):
        assert (out / rel).read_bytes() == (tree / rel).read_bytes()
        assert (out / rel).stat().st_mode == (tree / rel).stat().st_mode
    assert os.readlink(out / "build") == "/usr/src/linux-headers-none"
    assert (out / "source").is_symlink() and os.readlink(out / "source") == "kernel"
    assert (out / "empty").is_dir() and not (out / "fifo").exists()
    assert sorted(p.name for p in (out / "kernel").rglob("*.ko")) == ["a.ko", "b.ko"]
    # A second run finds the copies there and changes nothing.
    before = _shas(out)
    again = (
        invoke("prenop", "--undo", "--log-dir", logs, "-o", out, tree)
        if undo
        else invoke("prenop", "--policy", _policy(tmp_path), "-o", out, "--log-dir", logs, tree)
    )
    assert again.exit_code == 0, again.output
    assert _shas(out) == before


def test_a_file_of_the_tree_named_as_a_file_too_is_not_copied_over_its_rewrite(tmp_path: Path) -> None:
    tree = _tree(tmp_path / "tree")
    shutil.copy(OBJ, tree / "prog.o")  # no module by its name: the tree's copy would be the original
    out = tmp_path / "out"
    result = invoke("prenop", "--policy", _policy(tmp_path), "-o", out, tree, tree / "prog.o")
    assert result.exit_code == 0, result.output
    assert (out / "prog.o").read_bytes() != OBJ.read_bytes()
    assert invoke("verify", OBJ, out / "prog.o").exit_code == 0


# -- 3. options that would do nothing ------------------------------------------------------------------

USELESS = {
    "--mcount-addr over modules alone": (
        "--policy {p} --dry-run --mcount-addr 0x100 {t}",
        "--mcount-addr: every file given is a module or object",
    ),
    "--mcount-addr with --undo": (
        "--undo -o {w}/u --mcount-addr 0x100 {t}",
        "--undo and --verify take no --mcount-addr",
    ),
    "--generation with --verify": ("--verify --generation mprofile {t}", "--undo and --verify take no --generation"),
    "--hash without --sign-key": ("--policy {p} --dry-run --hash sha512 {t}", "--hash goes with --sign-key"),
    "--undo --replace-stale-logs": (
        "--undo -o {w}/u --replace-stale-logs {t}",
        "--undo and --verify take no --replace-stale-logs",
    ),
    "--verify --dry-run": ("--verify --dry-run {t}", "--verify writes nothing anyway: drop --dry-run"),
}


@pytest.mark.parametrize("case", USELESS)
def test_an_option_that_would_do_nothing_is_refused(tmp_path: Path, case: str) -> None:
    """Each was accepted, exit 0, as if it had mattered."""
    tree = _tree(tmp_path / "tree")
    policy = _policy(tmp_path)
    line, words = USELESS[case]
    args = line.format(p=policy, t=tree, w=tmp_path).split()
    before = _shas(tmp_path)
    assert_one_line(invoke("prenop", *args), 2, "error", words)
    assert _shas(tmp_path) == before


# -- 4. a vmlinux below a directory is named as left out -----------------------------------------------


def test_a_directory_holding_only_a_vmlinux_says_what_directories_contribute(tmp_path: Path) -> None:
    """It said `D: no vmlinux or module found below it`, and a vmlinux there is never taken."""
    d = tmp_path / "modules"
    d.mkdir()
    vmlinuz = mini_vmlinux(d, "vmlinuz")
    (d / "mini.lds").unlink()
    want = (
        f"{d}: no module below it: a directory contributes its modules (.ko, .ko.xz, .ko.gz, .ko.zst); "
        f"name a vmlinux as a file ({vmlinuz} is one)"
    )
    for command in (("prenop", "--policy", _policy(tmp_path), "--dry-run"), ("policy", "check", _policy(tmp_path))):
        result = invoke(*command, d)
        assert result.exit_code == 2, result.output
        assert result.stderr.splitlines() == [f"mcountrw: error: {want}"], command


def test_a_vmlinux_below_a_directory_is_named_as_left_out_and_as_copied(tmp_path: Path) -> None:
    """Debian 7.2 ships vmlinuz in /usr/lib/modules/<version>/: prenop and policy check of that
    directory left the kernel out in silence (scan and audit of it read it), and -o copied it."""
    tree = _tree(tmp_path / "tree")
    vmlinuz = mini_vmlinux(tree, "vmlinuz")
    (tree / "mini.lds").unlink()
    out = tmp_path / "out"
    left = "a PowerPC64 executable (a vmlinux?) below a directory"
    result = invoke("prenop", "--policy", _policy(tmp_path), "-o", out, tree)
    assert result.exit_code == 0, result.output
    assert result.stderr.splitlines() == [
        f"mcountrw: warning: {vmlinuz}: {left}, not rewritten (copied unchanged to {out / 'vmlinuz'}): "
        "a directory contributes its modules only; name it as a file to apply the policy to it"
    ]
    assert (out / "vmlinuz").read_bytes() == vmlinuz.read_bytes()
    check = invoke("policy", "check", _policy(tmp_path), tree)
    assert check.exit_code == 0, check.output
    assert check.stderr.splitlines() == [
        f"mcountrw: warning: {vmlinuz}: {left}, not checked: a directory contributes its modules only; "
        "name it as a file to check the policy against it"
    ]
    # Named as a file too, it is rewritten, and no copy of the original replaces its output.
    named = invoke("prenop", "--policy", _policy(tmp_path), "-o", tmp_path / "out2", tree, vmlinuz)
    assert named.exit_code == 0 and not named.stderr, named.output
    assert invoke("verify", vmlinuz, tmp_path / "out2" / "vmlinuz").exit_code == 0


# -- 5-9. what a run prints ------------------------------------------------------------------------------


def test_a_rerun_without_the_log_dir_is_told_of_log_dir_not_input_log(tmp_path: Path) -> None:
    """prenop has no --input-log, which the hint named (rewriter.files holds it for apply and nop)."""
    tree = _tree(tmp_path / "tree")
    policy = _policy(tmp_path)
    assert invoke("prenop", "--policy", policy, "--in-place", "--log-dir", tmp_path / "logs", tree).exit_code == 0
    result = invoke("prenop", "--policy", policy, "--in-place", tree)
    # the run is refused (its records are zeroed and its log is elsewhere: tests/test_review_h19_B.py)
    errors = result.stderr.strip().splitlines()
    assert result.exit_code == 2 and len(errors) == 1, result.output
    assert "give --log-dir DIR, the directory that run wrote the logs to" in errors[0], errors
    assert "--input-log" not in result.output


def test_verify_counts_no_nopped_site_in_a_file_that_did_not_verify(tmp_path: Path) -> None:
    """The mismatch row said `sites nopped 6` and the total counted them."""
    tree = _tree(tmp_path / "tree")
    logs = tmp_path / "logs"
    assert invoke("prenop", "--policy", _policy(tmp_path), "--in-place", "--log-dir", logs, tree).exit_code == 0
    data = bytearray((tree / "kernel" / "a.ko").read_bytes())
    data[0x100] ^= 0xFF
    (tree / "kernel" / "a.ko").write_bytes(data)
    result = invoke("prenop", "--verify", "--log-dir", logs, tree)
    assert result.exit_code == 1, result.output
    assert _row(result.stdout, "mismatch") == ["1", "0"]
    assert _row(result.stdout, "verified") == ["1", "6"] and _row(result.stdout, "total") == ["2", "6"]


def test_one_unplaced_record_is_counted_in_the_singular(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    tree.mkdir()
    shutil.copy(BIN / "anom-dangling.o", tree / "x.ko")
    result = invoke("prenop", "--policy", _policy(tmp_path), "--dry-run", tree)
    assert result.exit_code == 0, result.output
    assert (
        "warning: 1 record in 1 file points at no site mcountrw recognises, and was left alone. First: x.ko"
        in result.stdout.splitlines()
    )


def test_policy_check_reports_the_rest_of_a_tree_with_an_unreadable_directory(tmp_path: Path) -> None:
    """It printed the one line and no report; scan and audit report the rest and exit 2."""
    tree = _tree(tmp_path / "tree")
    hidden = tree / "kernel" / "sub"
    hidden.chmod(0)
    try:
        proc = mcountrw(
            "policy", "check", str(_policy(tmp_path)), str(tree), timeout=120, **_as_unprivileged()
        )  # fmt: skip
    finally:
        hidden.chmod(0o755)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.splitlines() == [f"mcountrw: error: {hidden}: Permission denied"]
    head = f"policy {tmp_path / 'p.policy'}: default nop, 0 rules; 1 file (mprofile 1), 6 sites"
    assert unwrapped(proc.stdout).startswith(head)  # the header is prose, wrapped at 80 columns


def test_an_output_tree_copies_no_patch_log_of_the_input_over_its_own(tmp_path: Path) -> None:
    """A tree rewritten in place holds a log beside each module it changed: the run's, not the
    tree's. Copied into OUT it would replace the log a run wrote beside its output (and after
    --undo -o, sit beside an original it does not describe as its output)."""
    tree = _tree(tmp_path / "tree")
    (tree / "modules.order").write_text("kernel/a.ko\n")
    one = _policy(tmp_path, "default keep\nnop leaf_add\n")
    assert invoke("prenop", "--policy", one, "--in-place", tree).exit_code == 0
    assert (tree / "kernel" / "a.ko.mcountrw.jsonl").is_file()
    out, undone = tmp_path / "out", tmp_path / "undone"
    more = invoke("prenop", "--policy", _policy(tmp_path, "default nop\n"), "-o", out, tree)
    assert more.exit_code == 0, more.output
    assert f"copied to {out}: 1 other file, as they are" in more.stdout.splitlines()
    assert invoke("prenop", "--verify", out).exit_code == 0  # each log beside OUT's modules is OUT's
    assert invoke("prenop", "--undo", "-o", undone, tree).exit_code == 0
    assert sorted(p.relative_to(undone).as_posix() for p in undone.rglob("*") if p.is_file()) == [
        "kernel/a.ko", "kernel/sub/b.ko", "modules.order"
    ]  # fmt: skip
    assert (undone / "kernel" / "a.ko").read_bytes() == OBJ.read_bytes()
