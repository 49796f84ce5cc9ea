"""h19-E: plan --image --caller, and plans of (rewritten) vmlinux files, as a stranger uses them.

* A plan did not say which caller it was made for, and check-plan held a site's place to either
  caller's: a ``--caller ftrace_regs_caller`` plan edited to one ``bl ftrace_caller`` passed. The
  plan now records ``caller`` (a file without it is an ftrace_caller plan, as plan --image made
  before ``--caller``), and check-plan holds every site's branch to it.
* ``--caller`` given for a plan that writes no branch to the tracer is refused: it never has one.
* A rewritten vmlinux whose patch log is gone or not read: plan and check-plan say what that hides.
* An empty glob is refused; the text plan and check-plan's SAFE line name a non-default caller.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from boot import require_kernel
from conftest import assert_one_line, invoke

from rewriter import ppc
from rewriter.elf.image import Image
from rewriter.elf.symbols import code_addrs

pytestmark = pytest.mark.corpus

OTHER = {"ftrace_caller": "ftrace_regs_caller", "ftrace_regs_caller": "ftrace_caller"}


def _plan_json(vmlinux: Path, *args: str) -> dict:
    result = invoke("plan", "--image", vmlinux, "--to", "enabled", "--format", "json", *args)
    assert result.exit_code == 0, result.output
    doc: dict = json.loads(result.stdout)
    return doc


def _entry(image: Image, name: str) -> int:
    (addr,) = code_addrs(image, [name], local_entries=True)
    return int(addr)


def _repoint(doc: dict, site: int, image: Image, name: str, call_to: str | None = None) -> dict:
    """``doc`` with site ``site``'s bl pointed at tracer entry ``name``, its ``call`` and words
    edited consistently, its ``call_to`` set to ``call_to`` (None: left as it is)."""
    doc = json.loads(json.dumps(doc))
    target = _entry(image, name)
    doc["sites"][site].update(call=hex(target), call_to=call_to or doc["sites"][site]["call_to"])
    for w in (w for stage in doc["stages"] for w in stage if w["site"] == site):
        if w["new_word"] is not None and ppc.is_bl(int(w["new_word"], 16)):
            w["new_word"] = hex(ppc.bl(int(w["addr"], 16), target))
    return doc


@pytest.mark.parametrize(("name", "caller"), [("6.1", "ftrace_regs_caller"), ("6.12", "ftrace_caller")])
def test_a_plan_records_its_caller_and_check_plan_holds_every_bl_to_it(name: str, caller: str, tmp_path: Path) -> None:
    """A plan made for one caller, one of whose sites is edited to the other caller's bl (call
    and word together), is refused in one line naming the plan's caller: it was SAFE, held to the
    image, as either caller's place passed. With its call_to edited too, the file alone refuses
    it, the image there or not (a plan checked on another machine)."""
    vmlinux = require_kernel(name).vmlinux
    image = Image.load(vmlinux)
    doc = _plan_json(vmlinux, "--only", "vfs_re*", "--caller", caller)
    assert {s["call_to"] for s in doc["sites"]} == {caller} and len(doc["sites"]) > 1
    plan_file = tmp_path / "p.json"
    plan_file.write_text(json.dumps(doc))
    held = invoke("check-plan", plan_file)
    assert held.exit_code == 0 and "held to the image" in held.stdout, held.output
    plan_file.write_text(json.dumps(_repoint(doc, 1, image, OTHER[caller])))
    refused = invoke("check-plan", plan_file)
    want, got = _entry(image, caller), _entry(image, OTHER[caller])
    said = f"says its call is {want:#x}, not {got:#x} (for the plan's caller, {caller})"
    assert_one_line(refused, 2, "error", f"{plan_file}: sites[1] ({doc['sites'][1]['function']} at", said)
    renamed = _repoint(doc, 1, image, OTHER[caller], OTHER[caller])
    for where in (str(vmlinux), str(tmp_path / "elsewhere" / "vmlinux")):
        plan_file.write_text(json.dumps({**renamed, "image": where}))
        said = f"sites[1].call_to: '{OTHER[caller]}' is not the plan's caller, {caller} (each bl of a plan --image"
        assert_one_line(invoke("check-plan", plan_file), 2, "error", f"{plan_file}: {said}")
    assert doc["caller"] == caller


def test_a_plan_file_without_caller_is_an_ftrace_caller_plan(tmp_path: Path) -> None:
    """A plan --image file made before plans named their caller is read as the ftrace_caller plan
    plan --image then always made: one of ftrace_caller's words is held SAFE, one of
    ftrace_regs_caller's (a --caller plan of the hours before) is refused, saying why."""
    vmlinux = require_kernel("6.12").vmlinux
    plan_file = tmp_path / "p.json"
    for caller, code in (("ftrace_caller", 0), ("ftrace_regs_caller", 2)):
        doc = _plan_json(vmlinux, "--only", "vfs_read", "--caller", caller)
        del doc["caller"]
        plan_file.write_text(json.dumps(doc))
        result = invoke("check-plan", plan_file)
        if code == 0:
            assert result.exit_code == 0 and "held to the image" in result.stdout, result.output
        else:
            said = "sites[0].call_to: 'ftrace_regs_caller' is not the plan's caller, ftrace_caller"
            assert_one_line(result, 2, "error", said, 'a file without "caller" is an ftrace_caller plan')


def test_check_plan_refuses_a_bad_caller_field(tmp_path: Path) -> None:
    """``caller`` is one of the two tracer entries, a string; a plan of abstract sites has none."""
    doc = _plan_json(require_kernel("6.1").vmlinux, "--only", "vfs_read")
    bad = tmp_path / "bad.json"
    for value, said in (
        ("ftrace_regs", "caller: expected one of 'ftrace_caller', 'ftrace_regs_caller', found 'ftrace_regs'"),
        (12, "caller: expected str, found 12"),
    ):
        bad.write_text(json.dumps({**doc, "caller": value}))
        assert_one_line(invoke("check-plan", bad), 2, "error", f"{bad}: {said}")
    abstract = invoke("plan", "--from", "disabled", "--to", "enabled", "--format", "json")
    bad.write_text(json.dumps({**json.loads(abstract.stdout), "caller": "ftrace_caller"}))
    assert_one_line(invoke("check-plan", bad), 2, "error", f"{bad}: caller: a plan of abstract sites has no caller")


@pytest.mark.parametrize(
    ("name", "target"),
    [("6.1", "nopped"), ("6.12", "disabled"), ("6.12", "guarded"), ("7.2", "disabled")],
)
def test_caller_for_a_plan_that_writes_no_branch_to_the_tracer_is_refused(
    name: str, target: str, tmp_path: Path
) -> None:
    """``--caller`` chooses the target of the bl (ool: the stub's) a plan writes; of a plan that
    writes none it chose nothing, and was accepted silently (and would be recorded as if it had
    chosen). Refused, as --route is where both routes write the same; no -o file is written."""
    out = tmp_path / "p.json"
    vmlinux = require_kernel(name).vmlinux
    for caller in ("ftrace_caller", "ftrace_regs_caller"):
        result = invoke("plan", "--image", vmlinux, "--only", "vfs_read", "--to", target, "--caller", caller, "-o", out)
        said = f"--caller {caller}: --to {target} writes no branch to the tracer; there is no caller to choose"
        assert_one_line(result, 2, "error", said)
        assert not out.exists()
        # a bad pair of options whatever the image: refused before the selection is looked at (it said
        # "nothing to do", exit 1, for a glob that matches nothing)
        nothing = invoke("plan", "--image", vmlinux, "--only", "no_such_fn_*", "--to", target, "--caller", caller)
        assert_one_line(nothing, 2, "error", said)
    assert invoke("plan", "--image", vmlinux, "--only", "vfs_read", "--to", target).exit_code == 0


# ---------------------------------------------------------------- a rewritten vmlinux whose log is not read


LOOKS = "(plan --image and check-plan look for it beside the file: vmlinux.mcountrw.jsonl)"


def _rewritten(where: Path) -> Path:
    """6.1's vmlinux with vfs_read nopped and its record dropped, under ``where`` with its patch log."""
    where.mkdir()
    out = where / "vmlinux"
    result = invoke("nop", require_kernel("6.1").vmlinux, "-o", out, "--only", "vfs_read", "--drop-records")
    assert result.exit_code == 0, result.output
    return out


def _rewritten_without_log(tmp_path: Path) -> Path:
    out = _rewritten(tmp_path / "nolog")
    (out.parent / "vmlinux.mcountrw.jsonl").unlink()
    return out


def test_plan_image_of_a_rewritten_vmlinux_whose_log_was_deleted_says_what_it_cannot_select(tmp_path: Path) -> None:
    """Without the patch log, vfs_read (nopped, its record dropped) is in no table of the file:
    'vfs_read*' planned the other vfs_read* sites and vfs_read vanished unsaid, as it does not
    when the log is there (left out by name) or there but edited (one warning). The zeroed
    record says a rewrite dropped sites: one warning line says the log is not there, and where
    plan --image looks for it."""
    rewritten = _rewritten_without_log(tmp_path)
    result = invoke("plan", "--image", rewritten, "--only", "vfs_read*", "--to", "enabled", "--format", "json")
    assert result.exit_code == 0, result.output
    assert {s["function"] for s in json.loads(result.stdout)["sites"]} >= {"vfs_readv"}
    said = result.stderr
    assert said.count("\n") == 1 and said.startswith(f"mcountrw: warning: {rewritten}: 1 of its records"), said
    assert f"whose patch log is not here {LOOKS}" in said
    assert said.rstrip().endswith("the sites only it names are not selected"), said
    pristine = invoke("plan", "--image", require_kernel("6.1").vmlinux, "--only", "vfs_read*", "--to", "enabled")
    assert pristine.exit_code == 0 and not pristine.stderr, pristine.output


def test_plan_image_nothing_to_do_of_a_rewritten_vmlinux_names_no_option_plan_lacks(tmp_path: Path) -> None:
    """A selection that matches nothing said 'whose patch log is not here (give it with
    --input-log)', an option plan does not have; and with an edited log beside the file, 'its
    patch log ... is here (`mcountrw undo ... --log ...` gives the original back)', of a log
    plan did not read (undo refuses it too). Each now says what plan does with the log."""
    rewritten = _rewritten_without_log(tmp_path)
    missing = invoke("plan", "--image", rewritten, "--only", "vfs_read", "--to", "enabled")
    line = assert_one_line(missing, 1, "nothing to do", "--only vfs_read: matches none of its 33689 sites")
    assert LOOKS in line and "--input-log" not in line
    rewritten = _rewritten(tmp_path / "edited")
    log = rewritten.parent / "vmlinux.mcountrw.jsonl"
    lines = log.read_text().splitlines(keepends=True)
    log.write_text("".join([lines[0], lines[1].rstrip("\n") + " \n", *lines[2:]]))  # JSON still, the sum not
    edited = invoke("plan", "--image", rewritten, "--only", "vfs_read", "--to", "enabled")
    line = assert_one_line(edited, 1, "nothing to do", "the patch log beside it cannot be read", "edited or truncated")
    assert "gives the original back" not in line


def test_a_text_plan_says_its_caller_where_its_words_do_not() -> None:
    """On ool the --caller ftrace_regs_caller plan's words are ftrace_caller's (the stub's own bl is
    the kernel's to repoint): its text, saved with -o, was the same plan word for word, its caller
    said only on stderr. It says its caller in one line; the default plan's text is unchanged."""
    vmlinux = require_kernel("7.2").vmlinux
    args = ("plan", "--image", vmlinux, "--only", "vfs_read", "--to", "enabled")
    regs, plain = invoke(*args, "--caller", "ftrace_regs_caller"), invoke(*args)
    assert regs.exit_code == plain.exit_code == 0, regs.output
    extra = [line for line in regs.stdout.splitlines() if line not in plain.stdout.splitlines()]
    assert extra == ["  caller ftrace_regs_caller: the tracer entry each enabled bl calls (an ool stub's too)"]
    assert len(regs.stdout.splitlines()) == len(plain.stdout.splitlines()) + 1
    assert "caller" not in plain.stdout


@pytest.mark.parametrize("option", ["--only", "--exclude"])
@pytest.mark.parametrize("command", ["plan", "nop"])
def test_an_empty_glob_is_refused(command: str, option: str, tmp_path: Path) -> None:
    """An empty glob matched the sites in no function ftrace does not list (their name is the
    empty one): `plan --image 6.12 --only ''` selected the 261 weak bodies (and left them out),
    `nop --only ''` dropped their records. It names no function: refused, no file written."""
    out = tmp_path / "out"
    vmlinux = require_kernel("6.12").vmlinux
    args = ("plan", "--image", vmlinux, "--to", "enabled") if command == "plan" else ("nop", vmlinux, "--drop-records")
    result = invoke(*args, option, "", "-o", out)
    assert_one_line(result, 2, "error", f"{option} '': an empty glob names no function")
    assert not list(tmp_path.iterdir())


def test_check_plan_held_to_a_rewritten_vmlinux_without_its_log_says_why_a_site_is_not_there(tmp_path: Path) -> None:
    """A plan of 6.1's vfs_read*, held to a copy whose vfs_read record a rewrite dropped and whose
    log is gone: vfs_read is in no table of that file, and check-plan said only 'has no ftrace call
    slot there'; it adds what the file shows, a zeroed record, and where the log is looked for."""
    plan_file = tmp_path / "p.json"
    made = invoke("plan", "--image", require_kernel("6.1").vmlinux, "--only", "vfs_read*", "--to", "enabled",
                  "--format", "json", "-o", plan_file)  # fmt: skip
    assert made.exit_code == 0, made.output
    rewritten = _rewritten_without_log(tmp_path)
    line = assert_one_line(invoke("check-plan", plan_file, "--image", rewritten), 2, "error", "(vfs_read at 0x")
    assert line.endswith(
        f"{rewritten} has no ftrace call slot there (1 of its records is zeroed: its sites were nopped by an earlier "
        f"rewrite whose patch log is not here {LOOKS})"
    ), line


def test_check_plans_safe_line_says_the_caller_it_held_the_plan_to(tmp_path: Path) -> None:
    """The SAFE line of a --caller ftrace_regs_caller plan read as the ftrace_caller plan's (on ool
    word for word the same): it names the caller its places were held to; the default's is as it was."""
    vmlinux = require_kernel("7.2").vmlinux
    plan_file = tmp_path / "p.json"
    lines = []
    for caller in ("ftrace_regs_caller", "ftrace_caller"):
        plan_file.write_text(json.dumps(_plan_json(vmlinux, "--only", "vfs_read", "--caller", caller)))
        result = invoke("check-plan", plan_file)
        assert result.exit_code == 0, result.output
        lines.append(result.stdout)
    assert f"1 site of {vmlinux} at its address for ftrace_regs_caller, held to the image: " in lines[0]
    assert f"1 site of {vmlinux} at its address, held to the image: " in lines[1]
