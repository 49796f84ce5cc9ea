"""h19-C: plan --image of a rewritten vmlinux, for an ops that saves regs, and check-plan's details.

* A rewritten vmlinux: plan --image read only the image, so a site whose record an earlier
  `mcountrw nop --drop-records` dropped vanished from the plan without a word, and a vmlinux whose
  boot turns ftrace off (a site's words refused by ftrace_init_nop()) was planned as if ftrace ran.
* ``--caller ftrace_regs_caller``: the `bl` the kernel writes for an ops with FTRACE_OPS_FL_SAVE_REGS.
* check-plan: one wording for a bad ``image`` field; a word of 9 hex digits refused.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Final

import pytest
from boot import READY_MARKER, boot_and_dump, make_initramfs, require_kernel
from conftest import assert_one_line, invoke
from test_boot_memory_enabled import TRACING_INIT

from rewriter import ppc
from rewriter.elf.image import Image
from rewriter.elf.symbols import code_addrs
from rewriter.sites import scan

pytestmark = pytest.mark.corpus


def _rewritten(name: str, where: Path, *args: str) -> Path:
    """``mcountrw nop`` of kernel ``name``'s vmlinux with ``args``, written (with its log) under ``where``."""
    out = where / "vmlinux"
    result = invoke("nop", require_kernel(name).vmlinux, "-o", out, *args)
    assert result.exit_code == 0, result.output
    return out


def _plan_json(vmlinux: Path, *args: str) -> tuple[dict, str]:
    result = invoke("plan", "--image", vmlinux, "--to", "enabled", "--format", "json", *args)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout), result.stderr


# ---------------------------------------------------------------- a rewritten vmlinux


@pytest.mark.parametrize("name", ["6.1", "6.12"])
def test_plan_image_of_a_rewritten_vmlinux_says_its_dropped_sites_are_left_out(name: str, tmp_path: Path) -> None:
    """After `nop --only vfs_read --drop-records`, vfs_read has no record (ftrace never patches
    it): plan --image 'vfs_read*' leaves it out with a warning naming it, as the patch log beside
    the file says it is there; the other sites are planned from their state after boot, with the
    words plan --image gives them in the file as built. Before, vfs_read vanished unsaid."""
    rewritten = _rewritten(name, tmp_path, "--only", "vfs_read", "--drop-records")
    doc, said = _plan_json(rewritten, "--only", "vfs_read*")
    left_out = "1 selected site left out (unrecorded): it has no kernel record, so ftrace never patches it"
    assert f"{left_out} (vfs_read)" in said, said
    original, _ = _plan_json(require_kernel(name).vmlinux, "--only", "vfs_read*")
    kept = [s for s in original["sites"] if s["function"] != "vfs_read"]
    assert [s["addr"] for s in doc["sites"]] == [s["addr"] for s in kept] and kept
    assert all(s["current"] == "disabled" for s in doc["sites"])
    words = sorted((w["addr"], w["old_word"], w["new_word"]) for stage in doc["stages"] for w in stage)
    addrs = {s["addr"] for s in kept}
    assert words == sorted(
        (w["addr"], w["old_word"], w["new_word"]) for stage in original["stages"] for w in stage if w["addr"] in addrs
    )
    plan_file = tmp_path / "p.json"
    plan_file.write_text(json.dumps(doc))
    held = invoke("check-plan", plan_file)
    assert held.exit_code == 0 and "held to the image" in held.stdout, held.output


def test_plan_image_of_a_vmlinux_whose_dropped_sites_are_all_it_selects_is_nothing_to_do(tmp_path: Path) -> None:
    rewritten = _rewritten("6.1", tmp_path, "--only", "vfs_read*", "--drop-records")
    result = invoke("plan", "--image", rewritten, "--only", "vfs_read*", "--to", "enabled")
    said = "left out (unrecorded): they have no kernel record, so ftrace never patches them"
    assert_one_line(result, 1, "nothing to do", said, "vfs_readv")


def test_plan_image_of_a_vmlinux_whose_boot_turns_ftrace_off_plans_nothing(tmp_path: Path) -> None:
    """6.1 with vfs_read nopped and its record kept: ftrace_init_nop() refuses it, ftrace bug, ftrace
    off for the boot: no site can be enabled. plan --image planned the other sites (and those whose
    records sort after it as `enabled -> enabled`, their `bl _mcount` left by the stopped init)."""
    rewritten = _rewritten("6.1", tmp_path, "--only", "vfs_read", "--keep-records")
    result = invoke("plan", "--image", rewritten, "--only", "vfs_read*", "--to", "enabled")
    assert_one_line(result, 1, "nothing to do", "ftrace is off for the whole boot: 1 recorded site", "vfs_readv")


# ---------------------------------------------------------------- --caller ftrace_regs_caller

_PROBED: Final = ("vfs_read", "vfs_write")
# kprobes on the entry of each function: KPROBES_ON_FTRACE registers kprobe_ftrace_ops, which has
# FTRACE_OPS_FL_SAVE_REGS, so ftrace enables those sites with FTRACE_REGS_ADDR (enabled_functions: R)
KPROBE_SCRIPT: Final = f"""{TRACING_INIT}echo 'p:mcountrw_a {_PROBED[0]}' > $T/kprobe_events
echo 'p:mcountrw_b {_PROBED[1]}' >> $T/kprobe_events
echo 1 > $T/events/kprobes/enable
echo "MCOUNTRW-TRACER rc=$?"
echo MCOUNTRW-ENABLED-BEGIN
cat $T/enabled_functions
echo MCOUNTRW-ENABLED-END
echo {READY_MARKER}
sleep 600
poweroff -f
"""


def _bl_target(image: Image, at: int, word: int) -> str:
    """The name of the tracer entry or trampoline a `bl` at ``at`` calls."""
    target = ppc.branch_target(at, word)
    for name in ("ftrace_caller", "ftrace_regs_caller", "ftrace_tramp_text"):
        if target in code_addrs(image, [name], local_entries=True):
            return name
    return hex(target)


def _data_addr(image: Image, name: str) -> int:
    """The address of the one symbol ``name`` of ``image`` (a data object: no entries to follow)."""
    assert image.symbols is not None
    (i,) = image.symbols.find(name).tolist()
    return int(image.symbols.table[i]["st_value"])


@pytest.mark.boot
@pytest.mark.parametrize("name", ["6.1", "6.12", "6.12-gcc12", "7.2"])
def test_plan_image_caller_regs_words_are_what_the_kernel_writes_for_a_kprobe(name: str, tmp_path: Path) -> None:
    """The kernel boots under qemu with a kprobe on vfs_read and vfs_write (ftrace-based, its ops
    saves regs): memory holds at every address of `plan --image --caller ftrace_regs_caller` the
    plan's new word. On 6.1 and 6.12 that is a `bl ftrace_regs_caller`, not the plain plan's `bl
    ftrace_caller`; on 7.2 the entry is the same `b stub` for both, and the kernel repointed the
    stub's own second word to ftrace_regs_caller, as plan's warning says, and wrote the kprobe's
    ops into the stub's ops slot (DYNAMIC_FTRACE_WITH_CALL_OPS; boot init leaves ftrace_nop_ops)."""
    from test_boot_memory import Memory, load_kernel

    files, image, text, whole = load_kernel(name)
    only = [arg for f in _PROBED for arg in ("--only", f)]
    regs, said = _plan_json(files.vmlinux, *only, "--caller", "ftrace_regs_caller")
    plain, _ = _plan_json(files.vmlinux, *only)
    initrd = make_initramfs(tmp_path / "initrd.cpio", files.busybox, [], KPROBE_SCRIPT)
    dump = boot_and_dump(files.vmlinux, "console=hvc0 panic=-1", initrd, lambda _console: [whole], timeout=120)
    console = dump.boot.console
    assert dump.ready and dump.boot.tracer_rc == 0 and not dump.boot.ftrace_bug, console[-3000:]
    enabled = console.split("MCOUNTRW-ENABLED-BEGIN")[1].split("MCOUNTRW-ENABLED-END")[0]
    assert all(re.search(rf"^{f} \(1\) +R", enabled, re.M) for f in _PROBED), enabled
    memory = Memory(text.addr, dump.memory[whole])
    writes = [w for stage in regs["stages"] for w in stage]
    assert len(writes) == len(_PROBED)
    for w, p in zip(writes, (w for stage in plain["stages"] for w in stage), strict=True):
        at, new = int(w["addr"], 16), int(w["new_word"], 16)
        assert memory.word(at) == new, (name, w)
        site = regs["sites"][w["site"]]
        if site["variant"] == "ool":
            assert new == int(p["new_word"], 16) and "the entry word of 2 ool sites is the same b" in said
            stub_bl = int(site["call"], 16) + ppc.INSN_SIZE
            assert _bl_target(image, stub_bl, memory.word(stub_bl)) == "ftrace_regs_caller"
            # DYNAMIC_FTRACE_WITH_CALL_OPS: the 8 bytes before the stub hold the one ops tracing it
            ops_slot = int(site["call"], 16) - 8
            ops = memory.word(ops_slot + 4) << 32 | memory.word(ops_slot)
            assert ops == _data_addr(image, "kprobe_ftrace_ops"), hex(ops)
        else:
            assert new != int(p["new_word"], 16) and site["call_to"] == "ftrace_regs_caller"
            assert _bl_target(image, at, new) == "ftrace_regs_caller" and not said


@pytest.mark.parametrize("name", ["6.1", "6.12", "6.12-gcc12"])
def test_plan_image_caller_regs_writes_bl_ftrace_regs_caller_and_check_plan_holds_it(name: str, tmp_path: Path) -> None:
    """plan --image always wrote `bl ftrace_caller`; a site a kprobe or livepatch traces gets `bl
    ftrace_regs_caller` (6.1: ftrace_make_call(rec, FTRACE_REGS_ADDR); 6.12:
    ftrace_get_call_inst()). check-plan re-derives those words and holds their places to the image,
    and still refuses a place that is neither caller's."""
    vmlinux = require_kernel(name).vmlinux
    image = Image.load(vmlinux)
    doc, said = _plan_json(vmlinux, "--only", "vfs_re*", "--caller", "ftrace_regs_caller")
    assert not said and doc["sites"]
    for w in (w for stage in doc["stages"] for w in stage):
        at, new = int(w["addr"], 16), int(w["new_word"], 16)
        assert ppc.is_bl(new) and _bl_target(image, at, new) == "ftrace_regs_caller"
        assert doc["sites"][w["site"]]["call_to"] == "ftrace_regs_caller"
    plan_file = tmp_path / "p.json"
    plan_file.write_text(json.dumps(doc))
    held = invoke("check-plan", plan_file)
    assert held.exit_code == 0 and "held to the image" in held.stdout, held.output
    (entry,) = code_addrs(image, ["ftrace_caller"], local_entries=True)
    doc["sites"][0]["call"] = hex(entry)  # ftrace_caller's address, named ftrace_regs_caller
    for w in (w for stage in doc["stages"] for w in stage if w["site"] == 0):
        w["new_word"] = hex(ppc.bl(int(w["addr"], 16), entry))
    plan_file.write_text(json.dumps(doc))
    refused = invoke("check-plan", plan_file)
    (regs,) = code_addrs(image, ["ftrace_regs_caller"], local_entries=True)
    assert_one_line(refused, 2, "error", "sites[0] (vfs_re", f"says its call is {regs:#x}, not {entry:#x}")


def test_plan_image_caller_on_ool_says_the_entry_word_is_the_same_and_what_else_the_kernel_writes() -> None:
    """7.2 (ool): the entry word is `b stub` for either caller; what changes is the stub's own `bl`,
    which the plan does not write: said in one warning, not pretended."""
    vmlinux = require_kernel("7.2").vmlinux
    regs, said = _plan_json(vmlinux, "--only", "vfs_read", "--caller", "ftrace_regs_caller")
    plain, quiet = _plan_json(vmlinux, "--only", "vfs_read")
    assert regs == {**plain, "caller": "ftrace_regs_caller"} and not quiet
    assert said.count("\n") == 1 and "the entry word of 1 ool site is the same b to its stub" in said
    assert "each stub's bl (its second word) to ftrace_regs_caller" in said


def test_caller_without_image_is_refused() -> None:
    result = invoke("plan", "--from", "disabled", "--to", "enabled", "--caller", "ftrace_regs_caller")
    assert_one_line(result, 2, "error", "--caller", "give --image")


# ---------------------------------------------------------------- check-plan's details


@pytest.fixture(scope="module")
def image_plan(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """plan --image's plan of 6.12's vfs_read, as JSON."""
    result = invoke(
        "plan", "--image", require_kernel("6.12").vmlinux, "--only", "vfs_read", "--to", "enabled", "--format", "json"
    )
    assert result.exit_code == 0, result.output
    doc: dict = json.loads(result.stdout)
    return doc


@pytest.mark.parametrize("value", ["", 12, None, ["vmlinux"]])
def test_check_plan_names_a_bad_image_field_one_way(image_plan: dict, value: object, tmp_path: Path) -> None:
    """An empty `image` said `image: empty ...`, one of another type `plan.image: expected str`:
    the field is named as every other error about a top-level field names it, `image: ...`."""
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({**image_plan, "image": value}))
    line = assert_one_line(invoke("check-plan", bad), 2, "error", f"{bad}: image: ")
    assert "plan.image" not in line


def test_check_plan_refuses_a_word_of_nine_hex_digits(image_plan: dict, tmp_path: Path) -> None:
    """`0x060000000` is 9 hex digits: no word, though its value is the nop's; it was accepted (a
    value under 2**32 was all the check asked), as `0x1060000000` is refused."""
    doc = json.loads(json.dumps(image_plan))
    write = doc["stages"][0][0]
    assert write["old_word"] == "0x60000000"
    bad = tmp_path / "bad.json"
    for word in ("0x060000000", "0x1060000000"):
        write["old_word"] = word
        bad.write_text(json.dumps(doc))
        said = "stages[0][0].old_word: expected hex text (0x...) of at most 32 bits (8 digits) or null, found"
        assert_one_line(invoke("check-plan", bad), 2, "error", said, word)
    write["old_word"] = "0x60000000"
    bad.write_text(json.dumps(doc))
    assert invoke("check-plan", bad).exit_code == 0


def test_plan_image_says_when_the_patch_log_beside_a_rewritten_vmlinux_is_not_read(tmp_path: Path) -> None:
    """A log beside the file that does not describe it (here edited: its checksum fails) is not
    read, as scan does not read it; plan --image says so, since the sites only it knows (vfs_read,
    its record dropped) are then not selected and would vanish unsaid."""
    rewritten = _rewritten("6.12", tmp_path, "--only", "vfs_read", "--drop-records")
    log = tmp_path / "vmlinux.mcountrw.jsonl"
    lines = log.read_text().splitlines(keepends=True)
    log.write_text("".join([lines[0], lines[1].rstrip("\n") + " \n", *lines[2:]]))  # JSON still, the sum not
    doc, said = _plan_json(rewritten, "--only", "vfs_read*")
    assert said.count("\n") == 1 and f"warning: {log}: patch log was edited or truncated" in said, said
    assert "the sites it names whose records a rewrite dropped are not selected" in said
    assert "vfs_read" not in {s["function"] for s in doc["sites"]} and doc["sites"]


@pytest.mark.boot
@pytest.mark.parametrize("name", ["6.1", "6.12", "7.2"])
def test_plan_image_words_of_a_rewritten_vmlinux_are_what_it_writes_when_booted(name: str, tmp_path: Path) -> None:
    """The rewritten file itself boots (vfs_read nopped, its record dropped) and its own ftrace
    enables `vfs_*`: memory holds at every address of `plan --image REWRITTEN --only 'vfs_*'` the
    plan's new word, and vfs_read, which the plan leaves out by name, keeps the rewrite's nops."""
    from test_boot_memory import Memory, load_kernel
    from test_boot_memory_enabled import APPEND, ENABLE_SCRIPT, FILTER

    files, image, text, whole = load_kernel(name)
    rewritten = _rewritten(name, tmp_path, "--only", "vfs_read", "--drop-records")
    doc, said = _plan_json(rewritten, "--only", FILTER)
    assert "it has no kernel record, so ftrace never patches it (vfs_read)" in said, said
    initrd = make_initramfs(tmp_path / "initrd.cpio", files.busybox, [], ENABLE_SCRIPT)
    dump = boot_and_dump(rewritten, APPEND, initrd, lambda _console: [whole], timeout=120)
    assert dump.ready and dump.boot.tracer_rc == 0 and not dump.boot.ftrace_bug, dump.boot.console[-3000:]
    memory = Memory(text.addr, dump.memory[whole])
    writes = [w for stage in doc["stages"] for w in stage]
    wrong = [w for w in writes if memory.word(int(w["addr"], 16)) != int(w["new_word"], 16)]
    assert writes and not wrong, f"{name}: {len(wrong)} of {len(writes)} writes differ: {wrong[:5]}"
    (read,) = [s for s in scan(image).sites if s.function == "vfs_read"]
    assert read.addr is not None and memory.word(read.addr) == ppc.NOP
