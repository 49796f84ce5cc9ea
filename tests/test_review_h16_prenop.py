"""prenop and policy check over whole trees, as a distro kernel maintainer runs them: Debian's 4k-
and 64k-page builds of one version in one run, and their layouts (7.2's vmlinuz inside its module
tree)."""

from __future__ import annotations

import shutil
from pathlib import Path

from boot import require_kernel
from conftest import invoke, unwrapped

NLS_UTF8 = "fs/nls/nls_utf8.ko.xz"


def _policy(tmp_path: Path) -> Path:
    policy = tmp_path / "p.policy"
    policy.write_text("default keep\nnop :mod:nls_utf8\nnop vfs_read\n")
    return policy


def test_policy_check_takes_two_trees_whose_files_share_their_paths(tmp_path: Path) -> None:
    """The 4k- and 64k-page module trees hold the same paths below them (kernel/fs/nls/...): policy
    check writes nothing and, with no --log-dir, looks no log up by those names, yet it refused
    the two trees with prenop's line about 'the output and the logs' it has neither of."""
    k4, k64 = require_kernel("6.12"), require_kernel("6.12-64k")
    trees = []
    for name, kernel in (("4k", k4), ("64k", k64)):
        (tmp_path / name).mkdir()
        shutil.copy(kernel.modules_dir / NLS_UTF8, tmp_path / name)
        trees.append(tmp_path / name)
    policy = _policy(tmp_path)
    done = invoke("policy", "check", policy, k4.vmlinux, k64.vmlinux, *trees)
    assert done.exit_code == 0, done.output
    rows = {line.split()[0]: line.split() for line in done.stdout.splitlines() if line.startswith("     ")}
    assert rows["2"][3:5] == ["6", "6"], rows  # nls_utf8's 3 sites in each of the two copies
    assert rows["3"][3:5] == ["2", "2"], rows  # vfs_read in each vmlinux
    # Under --log-dir the names are where the logs are looked up: refused, saying so.
    done = invoke("policy", "check", "--log-dir", tmp_path / "logs", policy, *trees)
    assert done.exit_code == 2 and "Traceback" not in done.output, done.output
    assert done.stderr.count("\n") == 1 and "under --log-dir" in done.stderr, done.stderr


def test_prenop_writes_a_named_vmlinuz_where_its_tree_has_it(tmp_path: Path) -> None:
    """Debian 7.2 ships vmlinuz in /usr/lib/modules/<release>/. Named with a directory above both
    releases (4k and 64k pages in one run), each vmlinuz was named `vmlinuz`: the run was refused
    as two files sharing one name, and one kernel named so was written to OUT/vmlinuz, its place
    in the copied tree OUT/<release>/vmlinuz left empty. A file named itself below a directory
    named is named by its path below it, as the tree walk names everything else there."""
    tree = tmp_path / "modules"
    vmlinuz = []
    for kernel in (require_kernel("7.2"), require_kernel("7.2-64k")):
        release = kernel.modules_dir.parent
        (tree / release.name / "kernel" / "fs").mkdir(parents=True)
        shutil.copy(kernel.modules_dir / NLS_UTF8, tree / release.name / "kernel" / "fs")
        shutil.copy(release / "vmlinuz", tree / release.name)
        vmlinuz.append(tree / release.name / "vmlinuz")
    out, logs = tmp_path / "out", tmp_path / "logs"
    args = ("-o", out, "--log-dir", logs, "--strip-signature")
    done = invoke("prenop", "--policy", _policy(tmp_path), *vmlinuz, tree, *args)
    assert done.exit_code == 0, done.output
    assert not (out / "vmlinuz").exists() and not (logs / "vmlinuz.mcountrw.jsonl").exists()
    for v in vmlinuz:
        rel = v.relative_to(tree)
        assert (out / rel).read_bytes() != v.read_bytes()
        assert (logs / f"{rel}.mcountrw.jsonl").is_file()
    again = invoke("prenop", "--verify", "--log-dir", logs, *(out / v.relative_to(tree) for v in vmlinuz), out)
    assert again.exit_code == 0 and again.stdout.count("verified") == 1, again.output
    assert "verified      4             8" in again.stdout, again.stdout  # 2 vmlinuz (vfs_read), 2 nls_utf8 (3)


def test_a_policy_with_several_errors_is_refused_with_one_line_for_each(tmp_path: Path) -> None:
    """A policy with four mistakes was refused naming the first only: four runs to mend it. Each is
    one line naming file:line, exit 2, and nothing written (the -o tree is not made)."""
    module = require_kernel("6.12").modules_dir / NLS_UTF8
    policy = tmp_path / "bad.policy"
    policy.write_text("default nop\nkeep foo bar\nfrob x\n# fine\nkeep vfs_*\nkeep\ndefault keep\n")
    expected = [
        f"mcountrw: error: {policy}:2: one pattern a line, found 2 in `keep foo bar`",
        f"mcountrw: error: {policy}:3: expected `keep PATTERN`, `nop PATTERN` or `default ...`, found `frob x`",
        f"mcountrw: error: {policy}:6: one pattern a line, found 0 in `keep`",
        f"mcountrw: error: {policy}:7: a second `default` line (a policy has exactly one)",
    ]
    out = tmp_path / "out"
    for args in (
        ("prenop", "--policy", policy, module, "-o", out, "--strip-signature"),
        ("policy", "check", policy, module),
    ):
        done = invoke(*args)
        assert done.exit_code == 2 and done.stdout == "", done.output
        assert done.stderr.splitlines() == expected, done.stderr
    assert not out.exists()


def test_a_module_named_twice_by_a_link_is_one_file(tmp_path: Path) -> None:
    """`prenop F LINK -o OUT`, LINK a symlink to F: one file, as `prenop F F -o OUT` is. The run
    took OUT for one file's output but wrote two targets in it: refused as `OUT/F: directory OUT
    does not exist`; policy check counted the module twice (2 files, 6 sites)."""
    module = tmp_path / "nls_utf8.ko.xz"
    shutil.copy(require_kernel("6.12").modules_dir / NLS_UTF8, module)
    link = tmp_path / "link.ko.xz"
    link.symlink_to(module)
    out = tmp_path / "out.ko.xz"
    _one_file_named_twice(tmp_path, module, link, out)
    assert invoke("prenop", "--verify", out).exit_code == 0


def test_a_log_dir_inside_the_tree_is_not_copied_as_the_trees_files(tmp_path: Path) -> None:
    """`prenop -o OUT --log-dir TREE/logs TREE`: the first run wrote its logs there, and every rerun
    was refused (exit 2), each log a file -o copies that its own rewrite's log would replace;
    `--undo -o` copied the logs into the tree it restored. The run's --log-dir is not the tree's."""
    tree = tmp_path / "tree"
    (tree / "kernel").mkdir(parents=True)
    shutil.copy(require_kernel("6.12").modules_dir / NLS_UTF8, tree / "kernel")
    policy, out, logs = _policy(tmp_path), tmp_path / "out", tree / "logs"
    for _ in range(2):
        done = invoke("prenop", "--policy", policy, tree, "-o", out, "--log-dir", logs, "--strip-signature")
        assert done.exit_code == 0, done.output
    assert "nothing changed" in done.stdout, done.stdout
    assert (logs / "kernel/nls_utf8.ko.xz.mcountrw.jsonl").is_file()
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*")) == ["kernel", "kernel/nls_utf8.ko.xz"]
    # In place, then undone to another tree: the logs inside the tree are not copied there.
    done = invoke("prenop", "--policy", policy, tree, "--in-place", "--log-dir", logs, "--strip-signature")
    assert done.exit_code == 0, done.output
    undone = tmp_path / "undone"
    done = invoke("prenop", "--undo", "--log-dir", logs, "-o", undone, tree)
    assert done.exit_code == 0, done.output
    assert sorted(p.relative_to(undone).as_posix() for p in undone.rglob("*")) == ["kernel", "kernel/nls_utf8.ko.xz"]
    assert (undone / "kernel/nls_utf8.ko.xz").read_bytes() == (
        require_kernel("6.12").modules_dir / NLS_UTF8
    ).read_bytes()


def test_policy_check_notes_the_unchecked_drops_prenop_warns_of(tmp_path: Path) -> None:
    """prenop warns when it drops records from patchable modules with no vmlinux whose loop was
    read; policy check over the same files said nothing of it. Named with its vmlinux: no note."""
    k612 = require_kernel("6.12")
    module, policy = k612.modules_dir / NLS_UTF8, _policy(tmp_path)
    alone = invoke("policy", "check", policy, module)
    notes = [line for line in alone.stdout.splitlines() if line.startswith("note: ")]
    assert len(notes) == 1 and notes[0].startswith("note: nop on 3 sites of 1 patchable module drops"), alone.stdout
    ran = invoke("prenop", "--policy", policy, module, "--dry-run", "--strip-signature")
    assert ran.exit_code == 0, ran.output
    assert "warning: 3 records would be dropped from 1 patchable module" in ran.stdout, ran.output  # a dry run
    both = invoke("policy", "check", policy, k612.vmlinux, module)
    assert not [line for line in both.stdout.splitlines() if line.startswith("note: ")], both.stdout


def test_a_tree_named_twice_by_a_link_is_one_tree(tmp_path: Path) -> None:
    """`prenop TREE LINK -o OUT`, LINK a symlink to TREE: each module was found twice, and the run
    refused as two files sharing a name ('name a directory above both'); policy check counted
    every module twice."""
    tree = tmp_path / "tree"
    tree.mkdir()
    shutil.copy(require_kernel("6.12").modules_dir / NLS_UTF8, tree)
    link = tmp_path / "link"
    link.symlink_to(tree)
    out = tmp_path / "out"
    _one_file_named_twice(tmp_path, tree, link, out)
    assert sorted(p.name for p in out.iterdir()) == ["nls_utf8.ko.xz", "nls_utf8.ko.xz.mcountrw.jsonl"]


def _one_file_named_twice(tmp_path: Path, named: Path, link: Path, out: Path) -> None:
    """prenop of ``named`` and ``link`` (a symlink to it) to ``out`` succeeds, and policy check
    over the two counts the one module once."""
    policy = _policy(tmp_path)
    done = invoke("prenop", "--policy", policy, named, link, "-o", out, "--strip-signature")
    assert done.exit_code == 0, done.output
    check = invoke("policy", "check", policy, named, link)
    assert "; 1 file (patchable 1), 3 sites" in unwrapped(check.stdout).splitlines()[0], check.output
