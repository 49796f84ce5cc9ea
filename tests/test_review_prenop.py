"""Review of prenop and policies at build time: what a kernel developer writes in a policy meets
the names the kernel gives the sites (docs/prenop.md)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from boot import require_tool
from conftest import _MINI_LDS, FIXTURES, invoke, mini_vmlinux, policy_file, unwrapped

from rewriter.elf.image import Image
from rewriter.sites import scan

# leaf_add (GLOBAL FUNC, row 12) gets two aliases at its start, after it in the symbol table: a
# weak `compat_leaf_add` (as 6.1's COND_SYSCALL makes `compat_sys_*` weak aliases of
# `sys_ni_syscall`) and `__se_leaf_add` (as SYSCALL_DEFINE's `__se_sys_*`).
ALIASES = ("compat_leaf_add=.text:0x30,weak,function", "__se_leaf_add=.text:0x30,global,function")


def _aliased_object(tmp_path: Path) -> Path:
    out = tmp_path / "aliased.o"
    objcopy = require_tool("powerpc64le-linux-gnu-objcopy")
    args = [a for alias in ALIASES for a in ("--add-symbol", alias)]
    subprocess.run([objcopy, *args, FIXTURES / "bin" / "prof-le.o", out], check=True)
    return out


def _aliased_vmlinux(tmp_path: Path) -> Path:
    ld = require_tool("powerpc64le-linux-gnu-ld")
    script, out = tmp_path / "mini.lds", tmp_path / "vmlinux"
    script.write_text(_MINI_LDS)
    link = [ld, "-pie", "--no-dynamic-linker", "--no-warn-rwx-segments", "-T", script]
    subprocess.run([*link, _aliased_object(tmp_path), "-o", out], check=True)
    return out


def test_an_aliased_vmlinux_function_has_the_name_kallsyms_gives_it(tmp_path: Path) -> None:
    """scripts/kallsyms.c sorts a vmlinux's symbols of one address strong before weak, then by
    fewer leading underscores, then in `nm -n` order (by name); kallsyms_lookup() returns the first
    (kernel/kallsyms.c: "Search for the first aliased symbol"). 6.1's available_filter_functions
    lists `sys_ni_syscall` and `quirk_nvidia_hda_pm.part.0` (booted under qemu), which scan named
    `compat_sys_mq_open` and `quirk_radeon_pm.part.0`, so `keep sys_ni_syscall` matched nothing."""
    vmlinux = _aliased_vmlinux(tmp_path)
    names = {s.function for s in scan(Image.load(vmlinux)).sites}
    assert "leaf_add" in names and not names & {"compat_leaf_add", "__se_leaf_add"}, names
    policy = policy_file(tmp_path, "default nop\nkeep leaf_add\n")
    result = invoke("policy", "check", policy, vmlinux)
    assert result.exit_code == 0 and "matches nothing" not in result.output, result.output


def test_an_aliased_module_function_has_the_name_its_loader_gives_it(tmp_path: Path) -> None:
    """A module's kallsyms keeps the first symbol of the best value in symbol-table order
    (kernel/module/kallsyms.c find_kallsyms_symbol(): `thisval > bestval`): leaf_add, row 12."""
    obj = _aliased_object(tmp_path)
    names = {s.function for s in scan(Image.load(obj)).sites}
    assert "leaf_add" in names and not names & {"compat_leaf_add", "__se_leaf_add"}, names


def test_prenop_keeps_an_aliased_function_by_the_kernels_name(tmp_path: Path) -> None:
    vmlinux = _aliased_vmlinux(tmp_path)
    policy = policy_file(tmp_path, "default nop\nkeep leaf_add\n")
    out = tmp_path / "out"
    done = invoke("prenop", "--policy", policy, "-o", out, "--log-dir", tmp_path / "logs", vmlinux)
    assert done.exit_code == 0, done.output
    kept = [s for s in scan(Image.load(out)).sites if s.function == "leaf_add"]
    assert len(kept) == 1 and kept[0].recorded, kept


# -- the build integration -------------------------------------------------------------------------

DOCS = FIXTURES.parent / "docs"


def _documented_postlink_step() -> str:
    """The ```make block of docs/prenop.md that goes into arch/powerpc/Makefile.postlink."""
    text = (DOCS / "prenop.md").read_text()
    blocks = re.findall(r"```make\n(.*?)```", text, re.DOTALL)
    step = [b for b in blocks if "cmd,mcountrw_vmlinux" in b]
    assert len(step) == 1, blocks
    return step[0]


def test_the_documented_postlink_step_runs_where_the_link_makes_vmlinux_unstripped(tmp_path: Path) -> None:
    """7.2's scripts/Makefile.vmlinux links vmlinux.unstripped and runs `$(MAKE) -f $(ARCH_POSTLINK)
    vmlinux.unstripped`, then objcopies it to vmlinux. With the documented step under a `vmlinux:`
    rule alone, make found no rule for the existing file, did nothing and exited 0: the kernel
    shipped un-nopped, and the build said nothing."""
    make = require_tool("make")
    srctree = tmp_path / "src"
    (srctree / "scripts").mkdir(parents=True)
    shutil.copy(DOCS / "build-integration" / "mcountrw.mk", srctree / "scripts" / "mcountrw.mk")
    postlink = tmp_path / "Makefile.postlink"
    postlink.write_text(
        "cmd = @set -e; echo '  $(quiet_cmd_$(1))'; $(cmd_$(1))\n"  # kbuild's, reduced
        + _documented_postlink_step()
        + "FORCE:\n"
    )
    unstripped = mini_vmlinux(tmp_path, "vmlinux.unstripped")
    policy = policy_file(tmp_path, "default nop\nkeep leaf_add\n")
    env = {**os.environ, "MCOUNTRW": f"{sys.executable} -m rewriter"}
    args = [f"srctree={srctree}", f"MCOUNTRW_POLICY={policy}", f"MCOUNTRW_LOG_DIR={tmp_path / 'logs'}"]
    r = subprocess.run([make, "-C", tmp_path, "-f", postlink, "vmlinux.unstripped", *args],
                       env=env, capture_output=True, text=True)  # fmt: skip
    assert r.returncode == 0, r.stdout + r.stderr
    assert "PRENOP  vmlinux.unstripped" in r.stdout, r.stdout + r.stderr
    assert {s.function for s in scan(Image.load(unstripped)).sites} == {"leaf_add"}
    assert (tmp_path / "logs" / "vmlinux" / "vmlinux.unstripped.mcountrw.jsonl").is_file()


# -- a tree nopped before, its logs elsewhere --------------------------------------------------------


def _module_tree(where: Path) -> Path:
    """``kernel/a.ko`` and ``kernel/b.ko``: fixtures/bin/prof-le.o (6 mprofile sites) as modules."""
    (where / "kernel").mkdir(parents=True)
    for name in ("a.ko", "b.ko"):
        shutil.copy(FIXTURES / "bin" / "prof-le.o", where / "kernel" / name)
    return where


def test_a_tree_nopped_before_is_refused_without_its_logs_not_taken_as_matching(tmp_path: Path) -> None:
    """`nop leaf_add` over the tree, logs in logs/; then `default keep` without --log-dir: each
    file's leaf_add site is nopped and unrecorded (invisible to a scan), so the run saw only
    sites to keep and said `nothing changed: all 2 files already match the policy`, exit 0,
    leaving leaf_add nopped against the policy. The run is now refused in one line, exit 2, nothing
    written; with the --log-dir the same run restores the originals."""
    tree = _module_tree(tmp_path / "tree")
    original = (tree / "kernel" / "a.ko").read_bytes()
    logs = tmp_path / "logs"
    first = invoke("prenop", "--policy", policy_file(tmp_path, "default keep\nnop leaf_add\n"), "--in-place",
                   "--log-dir", logs, tree)  # fmt: skip
    assert first.exit_code == 0, first.output
    nopped = (tree / "kernel" / "a.ko").read_bytes()
    keep = policy_file(tmp_path, "default keep\n")
    again = invoke("prenop", "--policy", keep, "--in-place", tree)
    # refused in one line for the whole tree, before its first write (tests/test_review_h19_B.py)
    errors = again.stderr.strip().splitlines()
    assert again.exit_code == 2 and len(errors) == 1, again.output
    assert "zeroed, as a rewrite leaves them" in errors[0] and "--log-dir" in errors[0], errors
    assert "already match" not in again.output
    assert (tree / "kernel" / "a.ko").read_bytes() == nopped
    assert not list(tree.rglob("*.jsonl"))
    restored = invoke("prenop", "--policy", keep, "--in-place", "--log-dir", logs, tree)
    assert restored.exit_code == 0, restored.output
    assert (tree / "kernel" / "a.ko").read_bytes() == original


def test_policy_check_over_a_tree_nopped_before_says_its_logs_are_missing(tmp_path: Path) -> None:
    """Without the --log-dir, the sites a prenop nopped are invisible: the table counted 10 sites
    of 12 and exited 0, saying nothing (scan says `2 zeroed slots`)."""
    tree = _module_tree(tmp_path / "tree")
    logs = tmp_path / "logs"
    nop_one = policy_file(tmp_path, "default keep\nnop leaf_add\n")
    assert invoke("prenop", "--policy", nop_one, "--in-place", "--log-dir", logs, tree).exit_code == 0
    (tmp_path / "all.policy").write_text("default nop\n")
    blind = invoke("policy", "check", tmp_path / "all.policy", tree)
    assert blind.exit_code == 1, blind.output
    warning = [line for line in unwrapped(blind.stdout).splitlines() if line.startswith("warning: ")]
    assert len(warning) == 1 and "1 of its records is zeroed" in warning[0] and "(and 1 more file)" in warning[0]
    assert "--log-dir" in warning[0]
    seeing = invoke("policy", "check", "--log-dir", logs, tmp_path / "all.policy", tree)
    assert seeing.exit_code == 0 and "12 sites" in unwrapped(seeing.stdout).splitlines()[0], seeing.output


def test_an_output_tree_of_a_tree_nopped_in_place_applies_the_policy_to_the_original(tmp_path: Path) -> None:
    """`nop leaf_add` in place (logs beside the modules), then `-o OUT` with `default keep`: OUT
    got the nopped modules (leaf_add unrecorded: invisible, `nothing to nop`), and with `default
    nop` OUT's logs led back to the nopped tree, not the pristine one."""
    tree = _module_tree(tmp_path / "tree")
    original = (tree / "kernel" / "a.ko").read_bytes()
    nop_one = policy_file(tmp_path, "default keep\nnop leaf_add\n")
    assert invoke("prenop", "--policy", nop_one, "--in-place", tree).exit_code == 0
    nopped = (tree / "kernel" / "a.ko").read_bytes()
    assert nopped != original
    keep = invoke("prenop", "--policy", policy_file(tmp_path, "default keep\n"), "-o", tmp_path / "kept", tree)
    assert keep.exit_code == 0, keep.output
    assert (tmp_path / "kept" / "kernel" / "a.ko").read_bytes() == original
    assert (tree / "kernel" / "a.ko").read_bytes() == nopped  # the input tree and its logs untouched
    assert (tree / "kernel" / "a.ko.mcountrw.jsonl").is_file()
    out = tmp_path / "all"
    all_nop = policy_file(tmp_path, "default nop\n")
    assert invoke("prenop", "--policy", all_nop, "-o", out, tree).exit_code == 0
    rerun = invoke("prenop", "--policy", all_nop, "-o", out, tree)
    assert rerun.exit_code == 0 and "nothing changed" in rerun.stdout, rerun.output
    assert invoke("prenop", "--undo", "-o", tmp_path / "undone", out).exit_code == 0
    assert (tmp_path / "undone" / "kernel" / "a.ko").read_bytes() == original
