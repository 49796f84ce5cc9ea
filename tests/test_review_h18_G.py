"""h18-G: check-plan holds a plan of an image's sites (``plan --image``) to the image itself.

check-plan re-derived every word from the places the plan file gives, but never read the image:
a site's ``call`` moved together with its ``new_word``, a renamed ``function``, another
``variant``, a ``current`` state boot does not leave, or another ``image`` were all SAFE. Each
test fails on b6fb6e8."""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path

import pytest
from boot import require_kernel
from click.testing import Result
from conftest import assert_one_line, invoke

from rewriter.elf.image import Image
from rewriter.generations import Variant
from rewriter.plan import Plan, plan
from rewriter.sites import scan
from rewriter.states import SiteState

pytestmark = pytest.mark.corpus

HELD = "held to the image"


@pytest.fixture(scope="module")
def plans(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Plan]]:
    """Per kernel (6.1 and 7.2), a copy of its vmlinux and plan --image's plan of its vfs_read* sites."""
    out = {}
    for name in ("6.1", "7.2"):
        where = tmp_path_factory.mktemp(f"hG-{name}")
        vmlinux = where / "vmlinux"
        shutil.copyfile(require_kernel(name).vmlinux, vmlinux)
        made = where / "plan.json"
        result = invoke("plan", "--image", vmlinux, "--only", "vfs_read*", "--to", "enabled", "--format", "json")
        assert result.exit_code == 0, result.output
        made.write_text(result.stdout)
        out[name] = (made, Plan.from_json(made.read_text()))
    return out


def _edited(p: Plan, site: int = 0, place: dict[str, object] | None = None, **request: object) -> Plan:
    """``p`` with one site's request or place changed, re-planned so that every write and word
    is consistent with the edit (what a careful editor of the file would write)."""
    assert p.places is not None
    requests = list(p.sites)
    requests[site] = requests[site]._replace(**request)  # type: ignore[arg-type]
    places = list(p.places)
    places[site] = places[site]._replace(**(place or {}))  # type: ignore[arg-type]
    new = plan(requests, p.route if p.routed else None, p.cmodx, runtime=True)
    return replace(new, places=tuple(places), image=p.image)


def _check(tmp_path: Path, p: Plan, *args: object) -> tuple[Path, Result]:
    path = tmp_path / "edited.json"
    path.write_text(p.to_json())
    return path, invoke("check-plan", path, *args)


def test_a_plan_made_by_plan_image_is_held_to_its_image(plans: dict[str, tuple[Path, Plan]]) -> None:
    """The SAFE line said only that the words are the kinds at the places the file gives."""
    for made, _ in plans.values():
        result = invoke("check-plan", made)
        assert result.exit_code == 0, result.output
        assert result.stdout.startswith(f"{made}: SAFE") and HELD in result.stdout, result.output
        assert "note" not in result.output


@pytest.mark.parametrize("kernel", ["6.1", "7.2"])
def test_check_plan_refuses_a_call_moved_with_its_word(
    plans: dict[str, tuple[Path, Plan]], kernel: str, tmp_path: Path
) -> None:
    """A site's ``call`` moved 8 bytes (a `bl` into ftrace_caller's middle, a `b` into a stub's),
    its ``new_word`` re-encoded to match, was SAFE."""
    _, p = plans[kernel]
    assert p.places is not None and p.places[0].call is not None
    edited, result = _check(tmp_path, _edited(p, place={"call": p.places[0].call + 8}))
    line = assert_one_line(result, 2, "error", str(edited), "sites[0]", "says its call is", f"{p.places[0].call:#x}")
    assert f"{p.places[0].addr:#x}" in line


@pytest.mark.parametrize("kernel", ["6.1", "7.2"])
def test_check_plan_refuses_a_renamed_function(
    plans: dict[str, tuple[Path, Plan]], kernel: str, tmp_path: Path
) -> None:
    _, p = plans[kernel]
    assert p.places is not None
    edited, result = _check(tmp_path, _edited(p, 1, place={"function": "kmalloc"}))
    assert_one_line(result, 2, "error", str(edited), "sites[1]", f"says its function is {p.places[1].function}")


@pytest.mark.parametrize("variant", [Variant.MPROFILE_STD, Variant.PATCHABLE])
def test_check_plan_refuses_another_variant(
    plans: dict[str, tuple[Path, Plan]], variant: Variant, tmp_path: Path
) -> None:
    """6.1's mprofile site said to be mprofile-std or patchable was SAFE (as that variant)."""
    _, p = plans["6.1"]
    edited, result = _check(tmp_path, _edited(p, variant=variant))
    assert_one_line(result, 2, "error", str(edited), "sites[0]", f"says its variant is mprofile, not {variant.value}")


@pytest.mark.parametrize(("kernel", "state"), [("6.1", SiteState.NOPPED), ("7.2", SiteState.ENABLED)])
def test_check_plan_refuses_a_current_state_boot_does_not_leave(
    plans: dict[str, tuple[Path, Plan]], kernel: str, state: SiteState, tmp_path: Path
) -> None:
    edited, result = _check(tmp_path, _edited(plans[kernel][1], current=state))
    assert_one_line(result, 2, "error", str(edited), "sites[0]", f"says boot leaves it disabled, not {state.value}")


def test_check_plan_refuses_a_plan_naming_another_image(plans: dict[str, tuple[Path, Plan]], tmp_path: Path) -> None:
    """6.1's plan renamed to the 7.2 vmlinux was SAFE; and so held with --image."""
    six, p = plans["6.1"]
    seven = plans["7.2"][0].parent / "vmlinux"
    edited, result = _check(tmp_path, replace(p, image=str(seven)))
    assert_one_line(result, 2, "error", str(edited), "sites[0]", str(seven))
    assert_one_line(invoke("check-plan", six, "--image", seven), 2, "error", str(six), "sites[0]", str(seven))


def test_check_plan_of_an_image_not_here_says_so_in_a_note(plans: dict[str, tuple[Path, Plan]], tmp_path: Path) -> None:
    """On another machine the image is not there: a note, and the check as before; --image
    names where it is."""
    _, p = plans["7.2"]
    gone = str(tmp_path / "elsewhere" / "vmlinux")
    edited, result = _check(tmp_path, replace(p, image=gone))
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith(f"{edited}: SAFE") and "not held to the image" in result.stdout
    note = result.stderr.strip()
    assert "\n" not in note and note.startswith(f"mcountrw: note: {edited}: {gone} is not here"), note
    vmlinux = plans["7.2"][0].parent / "vmlinux"
    held = invoke("check-plan", edited, "--image", vmlinux)
    assert held.exit_code == 0 and f"held to {vmlinux}" in held.stdout and not held.stderr, held.output


def test_check_plan_image_option_wants_a_plan_of_an_image(tmp_path: Path) -> None:
    vmlinux = require_kernel("6.1").vmlinux
    result = invoke("check-plan", "--builtin", next(iter(_builtins())), "--image", vmlinux)
    assert_one_line(result, 2, "error", "--image", "a plan of abstract sites")


def _builtins() -> dict[str, object]:
    from rewriter.check import BUILTINS

    return dict(BUILTINS)


def test_check_plan_refuses_a_site_plan_image_leaves_out(plans: dict[str, tuple[Path, Plan]], tmp_path: Path) -> None:
    """A site moved to a call slot in .init.text (freed after the initcalls, its record dropped)
    was SAFE: plan --image leaves such sites out, and check-plan says why."""
    made, p = plans["6.1"]
    found = scan(Image.load(made.parent / "vmlinux"))
    init = next(s for s in found.sites if s.section == ".init.text" and s.boot_state is SiteState.DISABLED)
    assert init.addr is not None and init.function is not None
    place = {"addr": init.addr, "function": init.function, "call": init.addr + 0x100}
    edited, result = _check(tmp_path, _edited(p, place=place))
    assert_one_line(result, 2, "error", str(edited), "sites[0]", "leaves it out", ".init.text")
