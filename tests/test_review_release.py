"""audit of a vmlinux with modules built for another release: ``nop --kernel`` refuses such a
vmlinux (tests/test_review_comp2.py), but an audit of the two together said nothing, and judged the
modules' zeroed records by that vmlinux's ftrace_process_locs() loop."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from boot import require_kernel
from conftest import invoke, unwrapped

NLS_UTF8 = "fs/nls/nls_utf8.ko.xz"


def _sites(*paths: object) -> int:
    """The sites scan finds in ``paths``: what policy check's table counts of them."""
    done = invoke("scan", "--format", "json", *paths)
    assert done.exit_code == 0, done.output
    return sum(image["summary"]["sites"] for image in json.loads(done.stdout)["images"])


def _release_warnings(*paths: object) -> list[dict[str, object]]:
    done = invoke("audit", "--format", "json", *paths)
    assert done.exit_code == 0, done.output  # a warning, not an error: --fail-on error passes
    doc = json.loads(done.stdout)
    return [a for image in doc["images"] for a in image["anomalies"] if a["kind"] == "release-mismatch"]


def test_a_module_of_another_release_than_the_audited_vmlinux_is_a_warning() -> None:
    k612, k612_64k = require_kernel("6.12"), require_kernel("6.12-64k")
    module = k612.modules_dir / NLS_UTF8
    found = _release_warnings(k612_64k.vmlinux, module)
    assert len(found) == 1 and found[0]["severity"] == "warning", found
    message = str(found[0]["message"])
    assert "built for 6.12.107+deb13-powerpc64le (its vermagic)" in message
    assert f"audited with {k612_64k.vmlinux}, Linux 6.12.107+deb13-powerpc64le-64k" in message
    assert _release_warnings(k612.vmlinux, module) == []  # its own kernel
    assert _release_warnings(module) == []  # no vmlinux: nothing to compare


def test_prenop_refuses_a_module_built_for_another_release_than_its_vmlinux(tmp_path: Path) -> None:
    """prenop drops a module's records by the loop of the vmlinux named with it: one of another
    release is not the kernel that loads the module, as ``nop --kernel`` says. The run's first
    module refuses the whole run, before its first write (one line, exit 2, nothing written: the
    vmlinux was written, and each module of the tree failed with a line of its own)."""
    k612, k612_64k = require_kernel("6.12"), require_kernel("6.12-64k")
    tree = tmp_path / "in" / "nls"
    tree.mkdir(parents=True)
    module = Path(shutil.copy(k612.modules_dir / NLS_UTF8, tree))
    out = tmp_path / "out"
    policy = Path(__file__).resolve().parent.parent / "examples" / "keep-core.policy"
    run = invoke("prenop", "--policy", policy, k612_64k.vmlinux, tmp_path / "in", "-o", out, "--strip-signature")
    assert run.exit_code == 2, run.output
    errors = [line for line in run.stderr.splitlines() if line.startswith("mcountrw: error: ")]
    assert errors[0] == (
        f"mcountrw: error: {module}: built for 6.12.107+deb13-powerpc64le (its vermagic), and this run's vmlinux "
        f"{k612_64k.vmlinux} is Linux 6.12.107+deb13-powerpc64le-64k: not the kernel that loads it; the run "
        "(1 module) is refused before its first write (nothing written): name the vmlinux of "
        "6.12.107+deb13-powerpc64le, or the modules of the vmlinux named"
    )
    assert len(run.stderr.splitlines()) == 1, run.stderr
    assert not out.exists()


def test_policy_check_warns_of_the_modules_prenop_refuses_for_their_release(tmp_path: Path) -> None:
    """policy check says first what prenop refuses (exit 1, a warning): here a module built for
    another release than the vmlinux checked with it. The right vmlinux gives no such line."""
    k612, k612_64k = require_kernel("6.12"), require_kernel("6.12-64k")
    tree = tmp_path / "nls"
    tree.mkdir()
    shutil.copy(k612.modules_dir / NLS_UTF8, tree)
    shutil.copy(k612.modules_dir / "fs/nls/nls_ascii.ko.xz", tree)
    policy = tmp_path / "p.policy"
    policy.write_text("default nop\nkeep vfs_read\n")
    other = invoke("policy", "check", policy, k612_64k.vmlinux, tree)
    assert other.exit_code == 1, other.output
    assert unwrapped(other.stdout).splitlines()[-1] == (
        "warning: module nls_ascii (and 1 more module): built for 6.12.107+deb13-powerpc64le (its vermagic), and "
        "the vmlinux is Linux 6.12.107+deb13-powerpc64le-64k: not the kernel that loads them; prenop refuses them "
        f"(the counts above include their {_sites(tree)} sites)"
    )
    own = invoke("policy", "check", policy, k612.vmlinux, tree)
    assert own.exit_code == 0 and "its vermagic" not in own.stdout, own.output


def test_prenop_tells_the_modules_of_one_other_release_in_one_line_after_the_first(tmp_path: Path) -> None:
    """Modules of another release after one of the vmlinux's (strays: the run's first module
    passed, so the run is not refused whole): each fails for its release. The first is told in
    full, the rest of that release in one counted line (a whole tree printed thousands of lines
    alike, where policy check prints one); --report still lists each, with its error."""
    k612, k612_64k = require_kernel("6.12"), require_kernel("6.12-64k")
    tree = tmp_path / "in"
    (tree / "b").mkdir(parents=True)
    (tree / "a").mkdir()
    shutil.copy(k612_64k.modules_dir / "fs/nls/nls_utf8.ko.xz", tree / "a")
    names = ["b/nls_ascii.ko.xz", "b/nls_utf8.ko.xz", "b/nls_cp437.ko.xz"]
    for name in names:
        shutil.copy(k612.modules_dir / "fs/nls" / Path(name).name, tree / "b")
    out, report = tmp_path / "out", tmp_path / "report.json"
    policy = tmp_path / "p.policy"
    policy.write_text("default nop\n")
    run = invoke(
        "prenop", "--policy", policy, "--strip-signature", k612_64k.vmlinux, tree, "-o", out, "--report", report
    )
    assert run.exit_code == 2, run.output
    errors = [line for line in run.stderr.splitlines() if line.startswith("mcountrw: error: ")]
    assert errors[0].startswith(f"mcountrw: error: {tree / 'b/nls_ascii.ko.xz'}: built for 6.12.107+deb13-powerpc64le")
    assert errors[1] == (
        "mcountrw: error: 2 more modules built for 6.12.107+deb13-powerpc64le refused the same way, not written "
        "(first: b/nls_cp437.ko.xz)"
    )
    assert len(errors) == 3 and errors[2].startswith(f"mcountrw: error: {out} is incomplete: 3 files failed")
    files = {f["path"]: f for f in json.loads(report.read_text())["files"]}
    for name in names:
        assert files[name]["status"] == "failed" and "its vermagic" in files[name]["message"], files
        assert not (out / name).exists()


def test_policy_check_names_each_other_release_in_a_line_of_its_own(tmp_path: Path) -> None:
    """Modules of two other releases than the vmlinux: one warning per release, each saying what its
    modules were built for (one line named the first module's release for all of them)."""
    k612, k612_64k, k72 = require_kernel("6.12"), require_kernel("6.12-64k"), require_kernel("7.2")
    tree = tmp_path / "nls"
    (tree / "a").mkdir(parents=True)
    (tree / "b").mkdir()
    shutil.copy(k612.modules_dir / NLS_UTF8, tree / "a")
    shutil.copy(k72.modules_dir / NLS_UTF8, tree / "b")
    policy = tmp_path / "p.policy"
    policy.write_text("default nop\n")
    done = invoke("policy", "check", policy, k612_64k.vmlinux, tree)
    assert done.exit_code == 1, done.output
    warnings = [line for line in unwrapped(done.stdout).splitlines() if "its vermagic" in line]
    assert sorted(w.split(": built for ")[1].split(" ")[0] for w in warnings) == [
        "6.12.107+deb13-powerpc64le",
        "7.2.13+deb14-powerpc64le",
    ], warnings
    assert all(w.startswith("warning: module nls_utf8: built for ") for w in warnings), warnings


def _two_kernels_tree(tmp_path: Path) -> tuple[list[Path], Path]:
    """The 4k- and 64k-page 6.12 vmlinux images, and a tree with a module of each and one of 7.2."""
    k612, k612_64k, k72 = require_kernel("6.12"), require_kernel("6.12-64k"), require_kernel("7.2")
    tree = tmp_path / "in"
    for name, kernel in (("4k", k612), ("64k", k612_64k), ("72", k72)):
        (tree / name).mkdir(parents=True)
        shutil.copy(kernel.modules_dir / NLS_UTF8, tree / name)
    return [k612.vmlinux, k612_64k.vmlinux], tree


def test_prenop_holds_each_module_to_the_vmlinux_of_its_release_among_several(tmp_path: Path) -> None:
    """Debian's 4k- and 64k-page builds of 6.12 in one run, each with a module: each module is the
    one of its own kernel (the second kernel's was refused against the first), and a module of a
    release neither names is refused, naming both."""
    kernels, tree = _two_kernels_tree(tmp_path)
    out, policy = tmp_path / "out", tmp_path / "p.policy"
    policy.write_text("default keep\nnop :mod:nls_utf8\n")
    run = invoke("prenop", "--policy", policy, *kernels, tree, "-o", out, "--strip-signature")
    assert run.exit_code == 2, run.output
    errors = [line for line in run.stderr.splitlines() if line.startswith("mcountrw: error: ")]
    assert errors[0] == (
        f"mcountrw: error: {tree / '72' / 'nls_utf8.ko.xz'}: built for 7.2.13+deb14-powerpc64le (its vermagic), and "
        "this run's vmlinux images are Linux 6.12.107+deb13-powerpc64le and Linux 6.12.107+deb13-powerpc64le-64k: "
        "none is the kernel that loads it"
    ), errors
    assert len(errors) == 2 and " is incomplete: 1 file failed" in errors[1], errors
    for name in ("4k", "64k"):
        assert invoke("prenop", "--verify", out / name / "nls_utf8.ko.xz").exit_code == 0
    assert not (out / "72" / "nls_utf8.ko.xz").exists()


def test_policy_check_holds_each_module_to_the_vmlinux_of_its_release_among_several(tmp_path: Path) -> None:
    kernels, tree = _two_kernels_tree(tmp_path)
    policy = tmp_path / "p.policy"
    policy.write_text("default keep\nnop :mod:nls_utf8\n")
    done = invoke("policy", "check", policy, *kernels, tree)
    assert done.exit_code == 1, done.output
    assert [line for line in unwrapped(done.stdout).splitlines() if "vermagic" in line] == [
        "warning: module nls_utf8: built for 7.2.13+deb14-powerpc64le (its vermagic), and the vmlinux images are "
        "Linux 6.12.107+deb13-powerpc64le and Linux 6.12.107+deb13-powerpc64le-64k: none loads it; prenop refuses it "
        f"(the counts above include its {_sites(tree / '72')} sites)"
    ]


def test_audit_holds_each_module_to_the_vmlinux_of_its_release_among_several(tmp_path: Path) -> None:
    """Two vmlinux images audited with their modules: no cross-image check ran at all (it needed
    exactly one vmlinux), so a module no kernel of the run loads was not warned of. Each module is
    now held to the vmlinux of its release; one of a release neither names is a warning."""
    kernels, tree = _two_kernels_tree(tmp_path)
    done = invoke("audit", "--format", "json", *kernels, tree)
    assert done.exit_code == 0, done.output
    found = {
        image["path"]: [a["message"] for a in image["anomalies"] if a["kind"] == "release-mismatch"]
        for image in json.loads(done.stdout)["images"]
    }
    assert found[str(tree / "72" / "nls_utf8.ko.xz")] == [
        "built for 7.2.13+deb14-powerpc64le (its vermagic), audited with vmlinux images of Linux "
        "6.12.107+deb13-powerpc64le and Linux 6.12.107+deb13-powerpc64le-64k: likely none loads it"
    ], found
    assert [path for path, messages in found.items() if messages] == [str(tree / "72" / "nls_utf8.ko.xz")]
