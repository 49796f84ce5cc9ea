"""Review h18-C: what the live kernel does while a plan's words are written, what its enabled `bl` calls.

* Whether the corpus kernels patch under stop_machine(): read from the Debian binaries themselves.
* The tracer entry a trace names: what each kernel's enabled `bl` calls at run time.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Final

import numpy as np
import pytest
from boot import KERNELS, boot_and_dump, make_initramfs, require_kernel
from conftest import FIXTURES
from typer.testing import CliRunner, Result

from rewriter import ppc
from rewriter.check import BUILTINS, check
from rewriter.cli import app
from rewriter.elf.image import Image
from rewriter.elf.symbols import code_addrs, functions
from rewriter.generations import LAYOUTS, Variant
from rewriter.sites import scan

runner = CliRunner()

# ---------------------------------------------------------------- 1. no stop_machine() on powerpc

_UPDATE: Final = "arch_ftrace_update_code"


def _calls_of(image: Image, name: str) -> list[int]:
    """The targets of every `bl` in function ``name`` of ``image`` (its sized symbol's words)."""
    (entry,) = code_addrs(image, [name])
    funcs = functions(image)
    i = int(np.searchsorted(funcs.start, entry, side="right")) - 1
    assert int(funcs.start[i]) == entry
    count = (int(funcs.end[i]) - entry) // ppc.INSN_SIZE
    words = np.frombuffer(image.data, image.endian + "u4", count, image.offset_of(entry)).tolist()
    return [ppc.branch_target(entry + 4 * k, w) for k, w in enumerate(words) if ppc.is_bl(w)]


def _entries(image: Image, names: list[str]) -> set[int]:
    """Both entries (global and local) of each of ``names``: a `bl` may target either."""
    return set(code_addrs(image, names)) | set(code_addrs(image, names, True))


@pytest.mark.corpus
@pytest.mark.parametrize("name", ["6.1", "6.12", "6.12-gcc12", "7.2"])
def test_powerpc_arch_ftrace_update_code_calls_ftrace_modify_all_code_without_stop_machine(name: str) -> None:
    """docs/state-machine.md: powerpc's arch_ftrace_update_code() overrides the generic __weak one
    (which runs ftrace_run_stop_machine()) with a direct call of ftrace_modify_all_code(): other CPUs
    keep executing while the sites are written, the situation the checker's tasks model."""
    files = require_kernel(name)
    image = Image.load(files.vmlinux)
    modify_all = _entries(image, ["ftrace_modify_all_code"])
    stop = _entries(image, ["ftrace_run_stop_machine", "stop_machine"])
    assert modify_all and stop  # both exist: the generic one is linked, and not what powerpc runs
    calls = _calls_of(image, _UPDATE)
    assert calls and all(t in modify_all for t in calls), [hex(t) for t in calls]
    assert not stop & set(calls)


# ---------------------------------------------------------------- 2. what a trace's `bl` calls


def test_the_tracer_entry_a_trace_names_is_the_generation_tables() -> None:
    """A run-time trace names what the kernel's enabled `bl` calls, from the generation table (one home)."""
    for variant, lay in LAYOUTS.items():
        assert lay.tracer == "ftrace_caller", variant


@pytest.mark.parametrize("builtin", ["naive-enable", "b8-enable-gcc5"])
def test_an_mprofile_race_trace_names_ftrace_caller_not_mcount(builtin: str) -> None:
    """6.1's ftrace_make_call() (and 6.12's ftrace_replace_code() on Debian 12's gcc-12 mprofile
    build) writes `bl ftrace_caller` (or ftrace_regs_caller, or a trampoline to it) into B; `_mcount`
    is only the word the file holds, which boot init nops. The trace said `bl _mcount`."""
    result = check(BUILTINS[builtin].plan)
    assert not result.safe
    assert "bl ftrace_caller with r0 not holding LR" in result.reason
    assert "_mcount" not in result.reason
    assert any("B: bl ftrace_caller" in step.action for step in result.trace)
    out = runner.invoke(app, ["check-plan", "--builtin", builtin])
    assert out.exit_code == 1
    assert "bl ftrace_caller with r0 NOT = LR" in out.output and "_mcount" not in out.output


def test_mprofile_and_patchable_traces_name_the_same_entry() -> None:
    """The same race on mprofile and patchable names the same callee: both kernels' enable writes a
    `bl` to ftrace_caller (the patchable trace already said so, the mprofile one said `_mcount`)."""
    mprofile = check(BUILTINS["naive-enable"].plan).reason
    patchable = check(BUILTINS["patchable-naive-enable"].plan).reason
    assert mprofile == patchable
    assert KERNELS["6.12-gcc12"].generation == "mprofile"
    assert LAYOUTS[Variant.MPROFILE].tracer == LAYOUTS[Variant.PATCHABLE].tracer


# ---------------------------------------------------------------- 3. plan --image: the sites of one vmlinux

_CORPUS: Final = ("6.1", "6.12", "6.12-gcc12", "7.2")


def _plan(*args: str) -> Result:
    return runner.invoke(app, ["plan", *args])


@pytest.mark.corpus
@pytest.mark.parametrize("name", _CORPUS)
def test_plan_image_writes_the_selected_functions_words_at_their_addresses(name: str, tmp_path: Path) -> None:
    """`plan --image VMLINUX --only GLOB --to enabled`: each selected site, from its state after boot,
    with its address, function and the exact words (a bl to ftrace_caller from there, or a b to the
    ool stub scan assigns it); check-plan reads it back, re-derives the words and says the concrete
    sites checked as their abstract requests. There was no such command: plan took only states."""
    files = require_kernel(name)
    image = Image.load(files.vmlinux)
    by_addr = {s.addr: s for s in scan(image).sites if s.traceable and s.section == ".text"}
    want = {a for a, s in by_addr.items() if fnmatchcase(s.function or "", "vfs_re*")}
    out = tmp_path / "p.json"
    args = ["--image", str(files.vmlinux), "--only", "vfs_re*", "--to", "enabled", "--format", "json", "-o", str(out)]
    result = _plan(*args)
    assert result.exit_code == 0, result.output
    doc = json.loads(out.read_text())
    assert doc["image"] == str(files.vmlinux)
    assert {int(s["addr"], 16) for s in doc["sites"]} == want and want
    assert all(s["current"] == "disabled" and s["target"] == "enabled" for s in doc["sites"])
    writes = [w for stage in doc["stages"] for w in stage]
    assert len(writes) == len(want)  # from disabled: the call slot alone, in every generation
    (tracer,) = code_addrs(image, ["ftrace_caller"])
    for w in writes:
        site = doc["sites"][w["site"]]
        at, new, call = int(w["addr"], 16), int(w["new_word"], 16), int(site["call"], 16)
        assert int(w["old_word"], 16) == ppc.NOP and at == int(site["addr"], 16)
        assert by_addr[at].function == site["function"]
        if site["variant"] == "ool":
            assert ppc.is_b(new) and ppc.branch_target(at, new) == call == by_addr[at].call_target
        else:
            assert ppc.is_bl(new) and ppc.branch_target(at, new) == call == tracer
            assert site["call_to"] == "ftrace_caller"
    check = runner.invoke(app, ["check-plan", str(out)])
    assert check.exit_code == 0, check.output
    assert f"{len(want)} sites of {files.vmlinux} at their addresses" in check.output
    assert "checked as its abstract request" in check.output


@pytest.mark.boot
@pytest.mark.corpus
@pytest.mark.parametrize("name", ["6.1", "6.12", "6.12-gcc12", "7.2"])
def test_plan_image_words_are_what_the_running_kernel_writes(name: str, tmp_path: Path) -> None:
    """The judge of the exact words: the kernel boots under qemu, its own ftrace enables the
    function tracer for `vfs_*`, and its memory holds, at every address the plan names, the new
    word `plan --image ... --only 'vfs_*' --to enabled` wrote there (6.1: ftrace_make_call();
    6.12 and 7.2: ftrace_replace_code()); ftrace_regs_caller or a trampoline would differ."""
    from test_boot_memory import Memory, load_kernel
    from test_boot_memory_enabled import APPEND, ENABLE_SCRIPT, FILTER

    files, _image, text, whole = load_kernel(name)
    out = tmp_path / "p.json"
    result = _plan(
        "--image", str(files.vmlinux), "--only", FILTER, "--to", "enabled", "--format", "json", "-o", str(out)
    )
    assert result.exit_code == 0, result.output
    writes = [w for stage in json.loads(out.read_text())["stages"] for w in stage]
    initrd = make_initramfs(tmp_path / "initrd.cpio", files.busybox, [], ENABLE_SCRIPT)
    dump = boot_and_dump(files.vmlinux, APPEND, initrd, lambda _console: [whole], timeout=120)
    assert dump.ready and dump.boot.tracer_rc == 0 and not dump.boot.ftrace_bug, dump.boot.console[-3000:]
    memory = Memory(text.addr, dump.memory[whole])
    wrong = [w for w in writes if memory.word(int(w["addr"], 16)) != int(w["new_word"], 16)]
    assert writes and not wrong, f"{name}: {len(wrong)} of {len(writes)} writes differ: {wrong[:5]}"


def _kernel(name: str) -> str:
    return str(require_kernel(name).vmlinux)


@pytest.mark.corpus
def test_plan_image_text_names_each_write_by_address_words_and_function() -> None:
    result = _plan("--image", _kernel("6.12"), "--only", "vfs_read", "--to", "enabled")
    assert result.exit_code == 0, result.output
    assert "  patchable disabled -> enabled: site 0\n" in result.output
    line = next(x for x in result.output.splitlines() if x.startswith("    0x"))
    assert re.fullmatch(r"    0x[0-9a-f]+: 60000000 -> [0-9a-f]{8}  site 0 vfs_read \(-> ftrace_caller\)", line), line


@pytest.mark.corpus
def test_plan_image_from_a_nopped_mflr_plans_the_2019_fix_with_its_words(tmp_path: Path) -> None:
    """The seed case at one address: a 6.1 vmlinux whose vfs_read had its `mflr r0` nopped (the
    2019 thread's naive nopping) boots that site `nopped` (6.1's init checks only the bl), and
    `plan --image` enables it as the fix does: A `nop -> mflr r0` at the word before the call slot,
    synchronize_rcu_tasks(), then B `nop -> bl ftrace_caller`; b8 takes `b .+8` first."""
    vmlinux = require_kernel("6.1").vmlinux
    image = Image.load(vmlinux)
    (site,) = [s for s in scan(image).sites if s.function == "vfs_read"]
    data = bytearray(vmlinux.read_bytes())
    data[site.file_offset - 4 : site.file_offset] = ppc.NOP.to_bytes(4, "little")
    edited = tmp_path / "vmlinux"
    edited.write_bytes(data)
    result = _plan("--image", str(edited), "--only", "vfs_read", "--to", "enabled", "--format", "json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.output)
    assert doc["sites"][0]["current"] == "nopped" and doc["barriers"] == ["synchronize_rcu_tasks"]
    (a,), (b,) = doc["stages"]
    assert (a["slot"], int(a["addr"], 16), a["old_word"], a["new_word"]) == (
        "A",
        site.addr - 4,
        "0x60000000",
        "0x7c0802a6",
    )
    assert (b["slot"], int(b["addr"], 16), b["old_word"]) == ("B", site.addr, "0x60000000")
    b8 = _plan("--image", str(edited), "--only", "vfs_read", "--to", "enabled", "--route", "b8", "--format", "json")
    assert json.loads(b8.output)["stages"][0][0]["new_word"] == f"{ppc.B_PLUS_8:#x}"
    no_route = _plan("--image", str(edited), "--only", "vfs_read", "--to", "enabled", "--cmodx", "3.0")
    assert no_route.exit_code == 1 and "no legal route" in no_route.output


@pytest.mark.corpus
def test_check_plan_refuses_a_plan_whose_words_are_not_its_writes(tmp_path: Path) -> None:
    """check-plan proves the symbolic writes: a word edited in the file (here the `bl`'s target)
    would be certified unread, so the file is refused, one line, exit 2."""
    out = tmp_path / "p.json"
    made = _plan("--image", _kernel("7.2"), "--only", "vfs_read", "--to", "enabled", "--format", "json", "-o", str(out))
    assert made.exit_code == 0, made.output
    doc = json.loads(out.read_text())
    doc["stages"][0][0]["new_word"] = hex(int(doc["stages"][0][0]["new_word"], 16) + 4)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(doc))
    result = runner.invoke(app, ["check-plan", str(bad)])
    assert result.exit_code == 2
    assert result.output.count("\n") == 1 and f"{bad}: stages[0][0].new_word: " in result.output
    for key, value, said in [
        ("call", "0x0", "sites[0].call: 0x0 is beyond branch range of the call slot at"),  # was: no file named
        ("addr", "0x" + "f" * 5000, "sites[0].addr: expected hex text (0x...) of at most 64 bits"),
        ("addr", "0xc00000000000000e", "sites[0].addr: 0xc00000000000000e is no call slot"),
    ]:
        edited = json.loads(out.read_text())
        edited["sites"][0][key] = value
        bad.write_text(json.dumps(edited))
        result = runner.invoke(app, ["check-plan", str(bad)])
        assert result.exit_code == 2 and result.output.count("\n") == 1, result.output
        assert f"{bad}: {said}" in result.output and len(result.output) < 300, result.output
    del doc["sites"][0]["addr"]
    bad.write_text(json.dumps(doc))
    result = runner.invoke(app, ["check-plan", str(bad)])
    assert result.exit_code == 2 and "sites[0]: missing 'addr'" in result.output


@pytest.mark.corpus
def test_plan_image_bad_inputs_and_nothing_to_do(tmp_path: Path) -> None:
    k = _kernel("6.1")
    module = next(require_kernel("6.1").modules_dir.rglob("nls_utf8.ko"))
    cases = [
        (["--image", str(module), "--to", "enabled"], 2, "a module, not a vmlinux"),
        (["--image", str(FIXTURES / "bin" / "prof-le"), "--to", "enabled"], 2, "prof-le: an executable, not a vmlinux"),
        (["--image", k, "--from", "disabled", "--to", "enabled"], 2, "--from: --image takes each site's"),
        (["--image", k, "--offline", "--to", "enabled"], 2, "--offline: --image"),
        (["--only", "vfs_read", "--from", "disabled", "--to", "enabled"], 2, "--only selects the sites of --image"),
        (["--to", "enabled"], 2, "give --from STATE"),
        (["--image", k, "--only", "no_such_function", "--to", "enabled"], 1, "matches none of its"),
        (["--image", k, "--only", "start_kernel", "--to", "enabled"], 1, "none of the sites it selects"),
        (["--image", k, "--only", "vfs_read", "--to", "nopped", "--route", "b8"], 0, ""),
    ]
    for args, code, said in cases:
        result = _plan(*args)
        assert result.exit_code == code, (args, result.output)
        assert said in result.output, (args, result.output)
    stripped = tmp_path / "vmlinux.stripped"
    tool = shutil.which("powerpc64le-linux-gnu-strip") or shutil.which("llvm-strip")
    if tool is not None:  # the scan asked for --mcount-addr, an option plan does not have
        subprocess.run([tool, "-o", str(stripped), k], check=True)
        result = _plan("--image", str(stripped), "--to", "enabled")
        assert result.exit_code == 2 and "stripped (no .symtab): plan --image needs" in result.output, result.output
    warned = _plan("--image", k, "--only", "vfs_read", "--only", "start_kernel", "--to", "enabled")
    assert warned.exit_code == 0
    assert "warning: 1 selected site in .init.text left out" in warned.output
