"""Policies name modules as the kernel does: by the module's own name, never its file's.

``policy.module_name`` took a module's name from its file name: a renamed copy
(``nls_utf8.ko.xz.orig``, ``renamed-copy.ko.xz``) was another module, or no module at all (the
core kernel) to ``:mod:`` patterns. The kernel never sees the file name; ftrace lists a module's
sites under its ``struct module``'s name (rewriter/elf/modname.py), as qemu shows below.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
from boot import QEMU, boot, make_initramfs, module_load_script, require_kernel, require_tool, unsigned_module
from conftest import FIXTURES, invoke, scan_table

from rewriter.elf.image import Image
from rewriter.elf.modname import NAME_LEN, NAME_OFFSET, THIS_MODULE, module_name

NLS_UTF8 = "fs/nls/nls_utf8.ko*"
NLS_UTF8_SITES = 3  # char2uni, uni2char, init_nls_utf8 (every kernel of the corpus)


def _renamed(name: str, pattern: str, out: Path) -> Path:
    """Corpus kernel ``name``'s module ``pattern`` copied as it is to ``out`` (another file name)."""
    src = next(require_kernel(name).modules_dir.glob(pattern))
    shutil.copyfile(src, out)
    return out


def _named_inside(module: Path, name: str) -> Path:
    """``module`` (an uncompressed, unsigned .ko) with its ``struct module``'s name made ``name``;
    its ``.modinfo`` still says ``name=`` the old one."""
    image = Image.load(module)
    sec = image.first_alloc_section(THIS_MODULE)
    assert sec is not None
    data = bytearray(module.read_bytes())
    at = sec.offset + NAME_OFFSET
    data[at : at + NAME_LEN] = name.encode().ljust(NAME_LEN, b"\0")
    module.write_bytes(data)
    return module


def _rule_row(output: str, rule: str) -> tuple[int, int]:
    """(matches, decides) of ``rule``'s row in ``policy check``'s table."""
    found = re.search(rf"^\s+\d+\s+{re.escape(rule)}\s+(\d+)\s+(\d+)", output, re.MULTILINE)
    assert found is not None, output
    return int(found[1]), int(found[2])


@pytest.mark.parametrize("file_name", ["nls_utf8.ko.xz.orig", "renamed-copy.ko.xz", "nls_utf8.ko.xz"])
def test_policy_check_and_prenop_match_a_module_by_its_own_name_whatever_its_file_is(
    file_name: str, tmp_path: Path
) -> None:
    module = _renamed("6.12", NLS_UTF8, tmp_path / file_name)
    policy = tmp_path / "p.policy"
    policy.write_text("default keep\nnop :mod:nls_utf8\n")
    check = invoke("policy", "check", policy, module)
    assert check.exit_code == 0, check.output
    assert _rule_row(check.stdout, "nop :mod:nls_utf8") == (NLS_UTF8_SITES, NLS_UTF8_SITES)
    assert "[nls_utf8]" in check.stdout and "once loaded" in check.stdout  # a module, not the core kernel
    out = tmp_path / "out" / file_name
    out.parent.mkdir()
    run = invoke("prenop", "--policy", policy, "--strip-signature", module, "-o", out)
    assert run.exit_code == 0, run.output
    assert re.search(rf"^\s+nopped\s+1\s+{NLS_UTF8_SITES}\s+0$", run.stdout, re.MULTILINE), run.stdout


def test_a_module_is_named_by_its_struct_module_before_its_modinfo(tmp_path: Path) -> None:
    """The struct's name is the one ftrace shows (qemu: below); ``.modinfo``'s ``name=`` the loader's
    messages' fallback for a module without the struct, which it refuses; neither: ``""``."""
    module = _named_inside(unsigned_module("6.12", NLS_UTF8, tmp_path / "nls_utf8.ko"), "mcountrw_named")
    assert module_name(Image.load(module)) == "mcountrw_named"
    policy = tmp_path / "p.policy"
    policy.write_text("default keep\nnop :mod:mcountrw_named\nnop :mod:nls_utf8\n")
    check = invoke("policy", "check", policy, module)
    assert _rule_row(check.stdout, "nop :mod:mcountrw_named") == (NLS_UTF8_SITES, NLS_UTF8_SITES), check.output
    assert _rule_row(check.stdout, "nop :mod:nls_utf8") == (0, 0), check.output

    objcopy = require_tool("powerpc64le-linux-gnu-objcopy")
    for modinfo, name in ((b"license=GPL\0name=from_modinfo\0", "from_modinfo"), (b"license=GPL\0", "")):
        info, obj = tmp_path / "modinfo", tmp_path / f"m{len(name)}.ko"
        info.write_bytes(modinfo)
        subprocess.run([objcopy, "--add-section", f".modinfo={info}", FIXTURES / "bin" / "prof-le.o", obj], check=True)
        assert module_name(Image.load(obj)) == name
    assert module_name(Image.load(FIXTURES / "bin" / "prof-le.o")) is None  # an object file is no module
    assert module_name(Image.load(require_kernel("6.12").vmlinux)) is None


def test_ftrace_lists_a_renamed_module_file_under_its_struct_module_name(tmp_path: Path) -> None:
    """Under qemu (7.2): a module file named ``renamed_copy.ko`` is listed ``[nls_utf8]`` in
    available_filter_functions, and one whose ``struct module`` says ``mcountrw_named`` (its
    ``.modinfo`` still ``name=nls_ascii``) is listed under that: the names policy check gives them."""
    files = require_kernel("7.2")
    require_tool(QEMU)
    mods = tmp_path / "modules"
    mods.mkdir()
    copy = unsigned_module("7.2", NLS_UTF8, mods / "renamed_copy.ko")
    named = _named_inside(unsigned_module("7.2", "fs/nls/nls_ascii.ko*", mods / "other_file.ko"), "mcountrw_named")
    script = module_load_script(["renamed_copy", "other_file"], aff_grep=" [")
    booted = boot(
        files.vmlinux,
        "console=hvc0 panic=-1",
        make_initramfs(tmp_path / "i.cpio", files.busybox, [copy, named], script),
    )
    assert booted.done and booted.insmod == {"renamed_copy": 0, "other_file": 0}, booted.console[-3000:]
    assert booted.available_filter_functions is not None
    listed = {m[1] for line in booted.available_filter_functions if (m := re.search(r" \[(\S+)\]$", line))}
    assert listed == {"nls_utf8", "mcountrw_named"}, booted.available_filter_functions
    assert [module_name(Image.load(m)) for m in (copy, named)] == ["nls_utf8", "mcountrw_named"]


# -- prenop -o with a policy that nops nothing ------------------------------------------------------


def test_prenop_to_a_new_output_that_nops_nothing_copies_and_says_so(tmp_path: Path) -> None:
    """A first run to a new OUT wrote OUT, a copy of the input (no log: nothing was nopped), and
    said ``nothing changed``; a build step that names OUT needs it there (exit 0), and the line
    now says it was copied. The rerun, which writes nothing, says ``nothing changed``; a dry run
    says it would copy, and writes nothing."""
    module = _renamed("6.12", NLS_UTF8, tmp_path / "nls_utf8.ko.xz")
    policy = tmp_path / "keep.policy"
    policy.write_text("default keep\n")
    out = tmp_path / "out.ko.xz"
    dry = invoke("prenop", "--policy", policy, module, "-o", out, "--dry-run")
    assert dry.exit_code == 0 and "would be copied to the output as it is" in dry.stdout, dry.output
    assert not out.exists()
    first = invoke("prenop", "--policy", policy, module, "-o", out)
    assert first.exit_code == 0, first.output
    assert "nothing to nop: the file already matches the policy; copied to the output as it is" in first.stdout
    assert "nothing changed" not in first.stdout
    assert out.read_bytes() == module.read_bytes() and sorted(p.name for p in tmp_path.iterdir()) == [
        "keep.policy", "nls_utf8.ko.xz", "out.ko.xz"
    ]  # fmt: skip
    before = out.stat()
    again = invoke("prenop", "--policy", policy, module, "-o", out)
    assert again.exit_code == 0 and "nothing changed: the file already matches the policy" in again.stdout
    assert "copied" not in again.stdout and out.stat().st_ino == before.st_ino  # not written again


# -- a site in no function has the name ftrace lists it under -----------------------------------------


def test_a_weak_body_is_selected_by_the_name_ftrace_lists_it_under(tmp_path: Path) -> None:
    """nls_utf8's ``uni2char`` made a NOTYPE label: its site is in no sized function, and the kernel
    lists it as ``uni2char`` (kallsyms: the nearest symbol before it), so ``set_ftrace_filter``
    takes it by that name. ``--only uni2char`` and a policy's ``nop uni2char`` matched nothing (only
    ``*`` did): the site stayed listed, and traceable, under the name a policy nopped. Under qemu
    (7.2): the prenop output no longer lists it; the original does."""
    from test_module_kallsyms import _edit_symbol

    ko = unsigned_module("7.2", NLS_UTF8, tmp_path / "nls_utf8.ko")
    _edit_symbol(ko, "uni2char", "notype")
    policy = tmp_path / "p.policy"
    policy.write_text("default keep\nnop uni2char\n")
    check = invoke("policy", "check", policy, ko)
    assert _rule_row(check.stdout, "nop uni2char") == (1, 1), check.output
    only = invoke("nop", ko, "--only", "uni2char", "--drop-records", "-o", tmp_path / "only.ko")
    assert only.exit_code == 0, only.output
    out = tmp_path / "out" / "nls_utf8.ko"
    out.parent.mkdir()
    run = invoke("prenop", "--policy", policy, ko, "-o", out)
    assert run.exit_code == 0 and re.search(r"^\s+nopped\s+1\s+1\s+2$", run.stdout, re.MULTILINE), run.output
    require_tool(QEMU)
    kernel = require_kernel("7.2")
    listed = {}
    for which, module in (("original", ko), ("prenopped", out)):
        script = module_load_script(["nls_utf8"], aff_grep="[nls_utf8]")
        initrd = make_initramfs(tmp_path / f"{which}.cpio", kernel.busybox, [module], script)
        booted = boot(kernel.vmlinux, "console=hvc0 panic=-1", initrd)
        assert booted.done and booted.insmod == {"nls_utf8": 0}, booted.console[-3000:]
        listed[which] = sorted(line.removesuffix(" [nls_utf8]") for line in booted.available_filter_functions or [])
    assert listed == {"original": ["char2uni", "init_nls_utf8", "uni2char"], "prenopped": ["char2uni", "init_nls_utf8"]}


def test_a_vmlinux_weak_body_matches_the_name_its_kernel_lists_twice(tmp_path: Path) -> None:
    """7.2's ``bpf_jit_compile`` (8 bytes) is followed by an overridden weak function's body, whose
    record is 0x10 past it: test_for_valid_rec() keeps it, and available_filter_functions lists
    ``bpf_jit_compile`` twice (qemu). A policy's ``nop bpf_jit_compile`` matches both sites."""
    kernel = require_kernel("7.2")
    policy = tmp_path / "p.policy"
    policy.write_text("default keep\nnop bpf_jit_compile\n")
    check = invoke("policy", "check", policy, kernel.vmlinux)
    assert _rule_row(check.stdout, "nop bpf_jit_compile") == (2, 2), check.output
    require_tool(QEMU)
    script = module_load_script([], aff_grep="bpf_jit_compile")
    booted = boot(
        kernel.vmlinux, "console=hvc0 panic=-1", make_initramfs(tmp_path / "i.cpio", kernel.busybox, [], script)
    )
    assert booted.done, booted.console[-3000:]
    assert booted.available_filter_functions == ["bpf_jit_compile", "bpf_jit_compile"]


def test_scans_table_shows_the_name_a_site_in_no_function_is_listed_under(tmp_path: Path) -> None:
    """The site of a NOTYPE ``uni2char`` showed as ``?`` in scan's table, while policies and
    ``--only`` select it by the name ftrace lists it under: the table says that name."""
    from test_module_kallsyms import _edit_symbol

    ko = unsigned_module("7.2", NLS_UTF8, tmp_path / "nls_utf8.ko")
    _edit_symbol(ko, "uni2char", "notype")
    table = invoke("scan", ko)
    assert table.exit_code == 0, table.output
    functions = [r["function"] for r in scan_table(table.stdout)]
    assert functions.count("? (listed as uni2char)") == 1, table.stdout
    assert "?" not in functions, table.stdout
