"""h18-E's review of the last hour's plan --image, prenop and scan table, as a kernel developer
uses them from the CLI."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
from boot import require_kernel
from typer.testing import CliRunner

from rewriter.cli import app
from rewriter.elf.image import Image
from rewriter.generations import Variant
from rewriter.plan import SiteRequest, plan
from rewriter.siteplaces import Place
from rewriter.states import SiteState

runner = CliRunner()

TRACER = 0xC00000000006E270  # 6.1's ftrace_caller; the call slots below are 6.1's vfs_readv and vfs_read
SLOTS = (0xC00000000052926C, 0xC00000000052AB4C)


def _image_plan_doc(to: SiteState, slots: tuple[int, int] = SLOTS) -> dict[str, object]:
    """A plan --image file of two mprofile sites at ``slots``, as plan --image writes it."""
    request = SiteRequest(Variant.MPROFILE, SiteState.DISABLED, to)
    p = plan([request, request], runtime=True)
    places = tuple(
        Place(addr, name, TRACER, "ftrace_caller") for addr, name in zip(slots, ("vfs_readv", "vfs_read"), strict=True)
    )
    doc: dict[str, object] = json.loads(replace(p, places=places, image="vmlinux-6.1").to_json())
    return doc


def test_check_plan_refuses_two_sites_at_one_address(tmp_path: Path) -> None:
    """check-plan proves each site alone (another's writes cannot affect it): a plan edited to
    give two sites one address, each write's words right for it, was SAFE although its one stage
    wrote the same word twice (the second CAS would fail); so is one site's A on another's B."""
    for to in (SiteState.ENABLED, SiteState.NOPPED):
        good = _image_plan_doc(to)
        ok = tmp_path / "ok.json"
        ok.write_text(json.dumps(good))
        assert runner.invoke(app, ["check-plan", str(ok)]).exit_code == 0
        doc = json.loads(json.dumps(good))
        sites, stages = doc["sites"], doc["stages"]
        assert isinstance(sites, list) and isinstance(stages, list)
        sites[1] = dict(sites[0], function="vfs_read")
        stages[0][1] = dict(stages[0][0], site=1)
        bad = tmp_path / "bad.json"
        bad.write_text(json.dumps(doc))
        result = runner.invoke(app, ["check-plan", str(bad)])
        assert result.exit_code == 2, result.output
        assert result.output.count("\n") == 1 and f"{bad}: sites[1].addr: " in result.output
        assert "a word of site 0" in result.output


def test_check_plan_refuses_a_site_whose_words_are_anothers(tmp_path: Path) -> None:
    """An mprofile site 4 bytes past another has its A slot on the other's B: both checked alone,
    the file (every word re-derived from its place) was SAFE."""
    doc = _image_plan_doc(SiteState.ENABLED, (SLOTS[0], SLOTS[0] + 4))
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(doc))
    result = runner.invoke(app, ["check-plan", str(bad)])
    assert result.exit_code == 2, result.output
    assert f"{bad}: sites[1].addr: {SLOTS[0] + 4:#x} puts its A at {SLOTS[0]:#x}, a word of site 0" in result.output


@pytest.mark.corpus
def test_plan_image_refuses_to_unknown_as_bad_input(tmp_path: Path) -> None:
    """`plan --from X --to unknown` is bad input (exit 2, docs/bad-input.md); with --image it was
    exit 1, 'no legal route: site 0: mprofile: a site in state unknown (its slots hold other
    words) cannot be planned', of a site that is disabled; and -o is left unwritten."""
    out = tmp_path / "p.json"
    vmlinux = str(require_kernel("6.1").vmlinux)
    result = runner.invoke(app, ["plan", "--image", vmlinux, "--only", "vfs_read", "--to", "unknown", "-o", str(out)])
    assert result.exit_code == 2, result.output
    said = "mcountrw: error: --to unknown: a site whose words are none of its states cannot be planned\n"
    assert result.output == said
    assert not out.exists()


@pytest.mark.corpus
def test_prenop_o_of_a_tree_stripped_in_place_is_refused_before_its_first_write(tmp_path: Path) -> None:
    """A signed tree prenopped --in-place --strip-signature (its logs beside its modules), then
    taken as the input of `prenop -o OUT` without a signature choice: the module whose original
    the log beside it says was signed is not signed now, so the check before the first write
    passed it; the unsigned module was written to OUT, the other failed in its turn (OUT half
    done, exit 2). Now refused before the first write, OUT not made."""
    nls = require_kernel("6.1").modules_dir / "fs" / "nls"
    tree, out = tmp_path / "tree", tmp_path / "out"
    tree.mkdir()
    shutil.copy(nls / "mac-celtic.ko", tree / "a.ko")
    unsigned = Image.load(nls / "nls_utf8.ko")  # an unsigned module: its signature cut off
    assert unsigned.signature is not None
    (tree / "b.ko").write_bytes(unsigned.data[: unsigned.elf_end])
    policy = tmp_path / "nop.policy"
    policy.write_text("default nop\n")
    done = runner.invoke(
        app, ["prenop", "--policy", str(policy), str(tree / "a.ko"), "--in-place", "--strip-signature"]
    )
    assert done.exit_code == 0, done.output
    result = runner.invoke(app, ["prenop", "--policy", str(policy), str(tree), "-o", str(out)])
    assert result.exit_code == 2, result.output
    assert f"{tree / 'a.ko'}: signed module: " in result.output
    assert "the run is refused before its first write" in result.output
    assert not out.exists()


def test_check_plan_refuses_two_ool_sites_sharing_a_stub(tmp_path: Path) -> None:
    """An ool stub serves one record (its last word branches back to that site): a plan file whose
    two sites' `b stub` reach one stub, each word right for its place, was SAFE."""
    request = SiteRequest(Variant.OOL, SiteState.DISABLED, SiteState.ENABLED)
    stub = 0xC0000000000CCE18  # 7.2's stub for vfs_read (ftrace_ool_stub_text)
    slots = (0xC000000000800328, 0xC000000000800A28)
    for calls, code in (((stub, stub + 24), 0), ((stub, stub), 2)):
        places = tuple(
            Place(addr, f"f{i}", call, "its ool stub") for i, (addr, call) in enumerate(zip(slots, calls, strict=True))
        )
        p = replace(plan([request, request], runtime=True), places=places, image="vmlinux-7.2")
        path = tmp_path / "p.json"
        path.write_text(p.to_json())
        result = runner.invoke(app, ["check-plan", str(path)])
        assert result.exit_code == code, result.output
    assert result.output == (
        f"mcountrw: error: {path}: sites[1].call: {stub:#x} is the ool stub of site 0: a stub returns to the one "
        "site it serves\n"
    )
