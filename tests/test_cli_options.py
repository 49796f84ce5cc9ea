"""Options that say what they do: a refused prenop run leaves no directory, the no-output line
names only options the command has, the selection options say how they combine, an address given
to `--addr` for a module or object says why it selects nothing (and what does), and `apply --to`
offers only real targets."""

from __future__ import annotations

import hashlib
import re
import shutil
from pathlib import Path

import click
import pytest
import typer
from click.testing import Result
from conftest import FIXTURES, assert_one_line, invoke
from typer.testing import CliRunner

from rewriter.cli import app
from rewriter.cli.rewrite import Target
from rewriter.states import SiteState

BIN = FIXTURES / "bin"
PROF = BIN / "prof-le"  # linked: 6 sites in .text, static_helper's at 0x10000eb4
PROF_O = BIN / "prof-le.o"  # relocatable: the same 6 sites, at .text+0x4 ...
SELECTION_OPTIONS = ("--only", "--section", "--addr", "--exclude")


def command(name: str) -> click.Command:
    group = typer.main.get_command(app)
    assert isinstance(group, click.Group)
    return group.commands[name]


def options_of(name: str) -> set[str]:
    return {o for p in command(name).params for o in p.opts}


def _shas(root: Path) -> dict[str, str]:
    """Every file below ``root`` (the inputs and the policies) by its sha256."""
    return {str(p.relative_to(root)): _sha(p) for p in root.rglob("*") if p.is_file()}


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# -- prenop: a refused run makes no output directory ------------------------------------------------


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (("--policy", "MISSING", "-o", "OUT", "TREE"), "No such file or directory"),
        (("--policy", "POLICY", "--in-place", "-o", "OUT", "TREE"), "give either --in-place or -o OUT, not both"),
        (("--policy", "GARBAGE", "-o", "OUT", "TREE"), "expected `keep PATTERN`"),
        (("--policy", "POLICY", "-o", "OUT", "EMPTY"), "no module below it: a directory contributes its modules"),
        (("--policy", "POLICY", "-o", "OUT", "MISSING"), "No such file or directory"),
        (("--policy", "POLICY", "--generation", "ool", "--mcount-addr", "0x10", "-o", "OUT", "TREE"),
         "--mcount-addr names _mcount"),
        (("--undo", "--in-place", "-o", "OUT", "TREE"), "give either --in-place or -o OUT, not both"),
        (("--undo", "-o", "OUT", "MISSING"), "No such file or directory"),
    ],
)  # fmt: skip
def test_prenop_refused_for_its_options_policy_or_paths_makes_no_output_directory(
    args: tuple[str, ...], words: str, tmp_path: Path
) -> None:
    tree = tmp_path / "tree"
    tree.mkdir()
    shutil.copy2(PROF_O, tree / "m.ko")
    (tmp_path / "empty").mkdir()
    (tmp_path / "p.policy").write_text("default nop\n")
    (tmp_path / "garbage.policy").write_text("default nop\ngarbage here\n")  # one error: each is a line of its own
    names = {
        "TREE": tree,
        "EMPTY": tmp_path / "empty",
        "MISSING": tmp_path / "missing",
        "POLICY": tmp_path / "p.policy",
        "GARBAGE": tmp_path / "garbage.policy",
        "OUT": tmp_path / "out" / "deeper",
    }
    before = _shas(tmp_path)
    result = invoke("prenop", *(names.get(a, a) for a in args))
    assert_one_line(result, 2, "error", words)
    assert not (tmp_path / "out").exists()
    assert _shas(tmp_path) == before


# -- the no-output line names only options the command has -------------------------------------------


@pytest.mark.parametrize(
    "args", [("apply", "IMAGE", "--to", "disabled"), ("nop", "IMAGE"), ("undo", "IMAGE", "--log", "LOG")]
)
def test_no_output_line_names_only_options_the_command_has(args: tuple[str, ...], tmp_path: Path) -> None:
    image = tmp_path / "prof-le"
    shutil.copy2(PROF, image)
    names = {"IMAGE": image, "LOG": tmp_path / "prof-le.mcountrw.jsonl"}
    line = assert_one_line(invoke(*(names.get(a, a) for a in args)), 2, "error", f"{image}: no output: give")
    offered = set(re.findall(r"(?<![\w-])(-o|--[a-z][a-z-]+)", line.split("no output: ")[1]))
    assert {"-o", "--in-place"} <= offered <= options_of(args[0]), offered - options_of(args[0])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["prof-le"]


# -- the selection options: what they say, and that it is what they do -------------------------------


@pytest.mark.parametrize("name", ["apply", "nop"])
def test_each_selection_option_says_how_the_options_combine(name: str) -> None:
    helps = {o: p.help or "" for p in command(name).params if isinstance(p, click.Option) for o in p.opts}
    for option in ("--only", "--section", "--addr"):
        others = [o for o in SELECTION_OPTIONS[:3] if o != option]
        assert "add" in helps[option] and all(o in helps[option] for o in others), (option, helps[option])
    assert "taken out of" in helps["--exclude"] and all(o in helps["--exclude"] for o in SELECTION_OPTIONS[:3])


@pytest.mark.parametrize("name", ["scan", "diff"])
def test_all_says_that_an_output_file_lists_every_row(name: str) -> None:
    """With -o every row is written, --all or not; the help said only "not the first 20" (200)."""
    helps = {o: p.help or "" for p in command(name).params if isinstance(p, click.Option) for o in p.opts}
    assert "-o always lists every one" in helps["--all"], helps["--all"]


def _changed(result: Result) -> int:
    """How many sites a dry run says it would change (exit 0)."""
    assert result.exit_code == 0, result.output
    found = re.search(r"would change (\d+) sites? to", result.stderr)
    assert found, result.stderr
    return int(found[1])


@pytest.mark.parametrize(
    ("selection", "sites"),
    [
        ((), 6),
        (("--only", "leaf_add"), 1),
        (("--only", "leaf_add", "--addr", "0x10000eb4"), 2),  # static_helper's: added, not intersected
        (("--section", ".text", "--only", "leaf_add"), 6),  # all of .text, leaf_add among them
        (("--section", ".text", "--exclude", "leaf_add"), 5),
        (("--only", "leaf_add", "--addr", "0x10000eb4", "--exclude", "static_helper"), 1),
    ],
)
def test_selection_options_add_up_and_exclude_takes_out(selection: tuple[str, ...], sites: int) -> None:
    """docs/rewrite.md, "Selecting sites": the union of --only, --section and --addr, minus --exclude."""
    assert _changed(invoke("apply", PROF, "--to", "disabled", "--dry-run", "--drop-records", *selection)) == sites


@pytest.mark.corpus
def test_section_and_only_select_the_union_in_a_corpus_module(corpus) -> None:  # type: ignore[no-untyped-def]
    """The example of docs/rewrite.md: .init.text's one site and char2uni's."""
    ko = corpus.modules_dir / "fs/nls/nls_utf8.ko"
    args = ("nop", ko, "--dry-run", "--drop-records", "--strip-signature", "--section", ".init.text")
    assert _changed(invoke(*args, "--only", "char2uni")) == 2


# -- --addr in a relocatable file -------------------------------------------------------------------


def test_an_address_in_an_object_says_its_sites_have_none_and_what_selects_them() -> None:
    result = invoke("nop", PROF_O, "--dry-run", "--drop-records", "--addr", "0x4")
    assert_one_line(result, 1, "nothing to do", "--addr 0x4: matches none", "have no address", "SECTION+0xOFF")
    result = invoke("nop", PROF_O, "--dry-run", "--drop-records", "--addr", "0x4", "--only", "leaf_add")
    assert_one_line(result, 1, "nothing to do", "--addr 0x4: matches none", "have no address", ".text+0x14")


def test_addr_in_a_linked_image_gets_no_note_about_modules() -> None:
    line = assert_one_line(invoke("nop", PROF, "--dry-run", "--addr", "0x4"), 1, "nothing to do", "--addr 0x4")
    assert "no address" not in line


def test_addr_given_as_a_place_in_a_section_selects_the_site_there() -> None:
    """scan shows prof-le.o's static_helper at .text+0x4: that text selects it (tests/test_addr_places.py
    has the rest); a number before the + is still a mistyped address, not a section."""
    assert _changed(invoke("nop", PROF_O, "--dry-run", "--drop-records", "--addr", ".text+0x4")) == 1
    result = invoke("nop", PROF, "--dry-run", "--addr", "0x10+4")
    assert_one_line(result, 2, "error", "'0x10+4' is not a number", "SECTION+0xOFF")


@pytest.mark.corpus
def test_addr_in_a_corpus_module_says_its_sites_have_no_address(corpus) -> None:  # type: ignore[no-untyped-def]
    ko = corpus.modules_dir / "fs/nls/nls_utf8.ko"
    result = invoke("nop", ko, "--dry-run", "--drop-records", "--strip-signature", "--addr", "0x14")
    assert_one_line(result, 1, "nothing to do", "--addr 0x14: matches none of its 3 sites", "have no address")


# -- apply --to: only states a file rewrite can reach ----------------------------------------------


def test_apply_to_offers_only_real_targets() -> None:
    """broken (the race state) and unknown (other words) are never a goal: the planner refuses them."""
    assert {SiteState(t.value) for t in Target}.isdisjoint({SiteState.BROKEN, SiteState.UNKNOWN})
    (to,) = (p for p in command("apply").params if p.name == "to")
    assert isinstance(to.type, click.Choice) and list(to.type.choices) == ["enabled", "disabled", "nopped"]
    assert "[enabled|disabled|nopped]" in CliRunner().invoke(app, ["apply", "--help"], env={"COLUMNS": "200"}).output
    for state in ("broken", "unknown", "guarded"):
        result = invoke("apply", PROF, "--to", state, "--dry-run")
        assert_one_line(result, 2, "error", "--to", f"'{state}' is not one of 'enabled', 'disabled', 'nopped'")
