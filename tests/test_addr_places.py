"""`--addr SECTION+0xOFF` (docs/rewrite.md, "Selecting sites"): a module's or object's sites have no
address, and scan shows each as the call slot's offset in its section; that text, given to
`--addr`, selects exactly that site (in a linked image too), one that names no site is nothing to
do naming it, and a malformed one is bad input (one line, exit 2, nothing written)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from click.testing import Result
from conftest import FIXTURES, assert_one_line, invoke

from rewriter.elf.image import Image
from rewriter.rewrite import Selection
from rewriter.sites import scan

BIN = FIXTURES / "bin"

# (fixture, the place scan shows, its function, its state after nop --drop-records): one site of each generation
# and byte order. ool and patchable sites are built as nop already: nop --drop-records drops the
# record of the selected one only, which leaves it untraceable.
ONE_SITE = [
    ("prof-le.o", ".text+0x34", "leaf_add", "nopped"),
    ("prof-be.o", ".text+0x64", "nonleaf_calls", "nopped"),
    ("ool-le.o", ".text+0xd0", "sum8", "disabled"),
    ("patchable-le.o", ".text+0x154", "fp_mix", "nopped"),
]


def states(path: Path) -> dict[str, tuple[str, str, bool]]:
    """Each site's (place as scan shows it, state, recorded) by function, from scan's JSON (which
    reads the patch log beside the file, so a site nopped and unrecorded is still there)."""
    result = invoke("scan", path, "--format", "json")
    assert result.exit_code == 0, result.output
    (image,) = json.loads(result.stdout)["images"]
    return {s["function"]: (f"{s['section']}+{s['offset']:#x}", s["state"], s["recorded"]) for s in image["sites"]}


def call_slots(path: Path) -> list[str]:
    """The "call slot" column of scan's table, as a user would copy it."""
    result = invoke("scan", path)
    assert result.exit_code == 0, result.output
    rows = result.stdout.splitlines()[1:]
    header = next(n for n, row in enumerate(rows) if row.split()[:2] == ["call", "slot"])
    return [row.split()[0] for row in rows[header + 1 :] if row.strip()]


def _changed(result: Result) -> int:
    assert result.exit_code == 0, result.output
    found = re.search(r"would (?:change|make) (\d+) sites? (?:to|untraceable)", result.stderr)
    assert found, result.stderr
    return int(found[1])


# -- a place selects its site ---------------------------------------------------------------------


@pytest.mark.parametrize(("name", "place", "function", "after"), ONE_SITE)
def test_a_place_selects_its_one_site_in_a_dry_run(name: str, place: str, function: str, after: str) -> None:
    src = BIN / name
    assert states(src)[function][0] == place  # what scan shows, so the case is the one it claims
    assert _changed(invoke("nop", src, "--drop-records", "--dry-run", "--addr", place)) == 1


@pytest.mark.parametrize(("name", "place", "function", "after"), ONE_SITE)
def test_a_place_changes_that_site_and_no_other(
    name: str, place: str, function: str, after: str, tmp_path: Path
) -> None:
    src, out = BIN / name, tmp_path / name
    assert invoke("nop", src, "-o", out, "--drop-records", "--addr", place).exit_code == 0
    old, new = states(src), states(out)
    assert {f for f in old if old[f] != new[f]} == {function}, (old, new)
    assert old[function][2] and new[function] == (place, after, False)
    lines = [json.loads(line) for line in out.with_name(f"{name}.mcountrw.jsonl").read_text().splitlines()]
    assert {w["function"] for w in lines if w["type"] == "write"} <= {function}  # ool, patchable: none
    assert [s["columns"]["function"] for s in lines if s["type"] == "sites"] == [[function]]


def test_every_place_scan_shows_selects_exactly_its_site() -> None:
    """Copied from scan's table, each call slot selects one site: the six of prof-le.o in turn."""
    src = BIN / "prof-le.o"
    places = call_slots(src)
    assert places == [".text+0x4", ".text+0x34", ".text+0x6c", ".text+0xf4", ".text+0x154", ".text+0x17c"]
    for place in places:
        assert _changed(invoke("nop", src, "--dry-run", "--drop-records", "--addr", place)) == 1, place


def test_places_add_up_with_the_other_selection_options() -> None:
    src = BIN / "prof-le.o"
    args = ("nop", src, "--dry-run", "--drop-records")
    assert _changed(invoke(*args, "--addr", ".text+0x4", "--addr", ".text+0x34")) == 2
    assert _changed(invoke(*args, "--addr", ".text+0x4", "--only", "sum8")) == 2
    assert _changed(invoke(*args, "--addr", ".text+0x4", "--only", "static_helper")) == 1  # the same site
    assert _changed(invoke(*args, "--addr", ".text+0o64")) == 1  # 0o64 is 0x34: a base prefix says which


def test_a_place_in_another_section_of_the_same_offset_is_another_site() -> None:
    """``Selection.section_places`` names the section: the same offset elsewhere is not this site.
    (The fixtures have one text section; the corpus test below has two with the same offset.)"""
    sites = scan(Image.load(BIN / "prof-le.o")).sites
    leaf = next(s for s in sites if s.function == "leaf_add")
    elsewhere = leaf._replace(section=".init.text", section_index=leaf.section_index + 1)
    chosen = Selection(section_places=frozenset({(".text", leaf.offset)})).select([leaf, elsewhere])
    assert chosen == [leaf]
    assert Selection(section_places=frozenset({(".init.text", leaf.offset)})).select([leaf, elsewhere]) == [elsewhere]


# -- a place that names no site ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("place", "why"),
    [
        (".text+0x99", "no word there"),
        (".text+0x30", "leaf_add's mflr r0: the word before its call slot"),
        (".data+0x34", "leaf_add's offset, in another section"),
        (".TEXT+0x34", "section names are case-sensitive"),
    ],
)
def test_a_place_with_no_site_is_nothing_to_do_naming_it(place: str, why: str, tmp_path: Path) -> None:
    out = tmp_path / "out.o"
    result = invoke("nop", BIN / "prof-le.o", "-o", out, "--drop-records", "--addr", place)
    line = assert_one_line(result, 1, "nothing to do", f"--addr {place}: matches none of its 6 sites")
    assert "no address" not in line, why  # the module note is for addresses only
    assert not list(tmp_path.iterdir())


def test_a_patchable_record_is_not_the_call_slot() -> None:
    """patchable records name the word 4 bytes before the call slot (scan says so); --addr takes
    the call slot, as the "call slot" column shows it."""
    result = invoke("apply", BIN / "patchable-le.o", "--to", "enabled", "--dry-run", "--addr", ".text+0x30")
    assert_one_line(result, 1, "nothing to do", "--addr .text+0x30: matches none of its 6 sites")


def test_a_place_the_exclusions_take_back_leaves_none_in_the_same_words() -> None:
    src = BIN / "prof-le.o"
    result = invoke("nop", src, "--dry-run", "--drop-records", "--addr", ".text+0x34", "--exclude", "leaf_add")
    assert_one_line(result, 1, "nothing to do", "--exclude leaf_add --addr .text+0x34: leaves none of its 6 sites")


def test_an_unmatched_place_is_named_beside_the_other_unmatched_parts() -> None:
    src = BIN / "prof-le.o"
    result = invoke("nop", src, "--dry-run", "--drop-records", "--section", ".init.text", "--addr", ".text+0x99")
    assert_one_line(result, 1, "nothing to do", "--section .init.text, --addr .text+0x99: match none of its 6 sites")


# -- malformed ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "says"),
    [
        (".text+zz", "'.text+zz': the offset 'zz' after .text+ is not a number"),
        ("+0x4", "'+0x4': no section name before +"),
        (".text+", "'.text+': no offset after .text+"),
        (".text+-4", "'.text+-4' is negative"),
        ("-4", "'-4' is negative"),
        (".text", "'.text' is not a number (use 0x... for hex), nor SECTION+0xOFF"),
        ("0x10+4", "'0x10+4' is not a number (use 0x... for hex), nor SECTION+0xOFF"),  # not a section
    ],
)
def test_a_malformed_addr_is_one_line_exit_2_and_writes_nothing(value: str, says: str, tmp_path: Path) -> None:
    out = tmp_path / "out.o"
    result = invoke("nop", BIN / "prof-le.o", "-o", out, "--drop-records", "--addr", value)
    assert_one_line(result, 2, "error", "Invalid value for '--addr'", says)
    assert not list(tmp_path.iterdir())


# -- linked images ------------------------------------------------------------------------------


def test_an_address_still_selects_in_a_linked_image(tmp_path: Path) -> None:
    src, out = BIN / "prof-le", tmp_path / "prof-le"
    assert states(src)["static_helper"] == (".text+0xad4", "enabled", True)
    result = invoke("nop", src, "-o", out, "--drop-records", "--addr", "0x10000eb4")
    assert result.exit_code == 0 and "changed 1 site to nopped" in result.stderr, result.output
    before, after = states(src), states(out)
    assert {f for f in before if before[f] != after[f]} == {"static_helper"}
    assert after["static_helper"][1] == "nopped"


def test_a_place_selects_in_a_linked_image_as_its_address_does(tmp_path: Path) -> None:
    """In a linked image a section and offset is as well defined as the address: both runs write
    the same file (the log's paths aside)."""
    src = BIN / "prof-le"
    by_addr, by_place = tmp_path / "a", tmp_path / "p"
    assert invoke("nop", src, "-o", by_addr, "--drop-records", "--addr", "0x10000eb4").exit_code == 0
    assert invoke("nop", src, "-o", by_place, "--drop-records", "--addr", ".text+0xad4").exit_code == 0
    assert by_addr.read_bytes() == by_place.read_bytes() != src.read_bytes()
    assert _changed(invoke("nop", src, "--dry-run", "--addr", ".text+0xad4", "--addr", "0x10000eb4")) == 1


# -- a corpus module ------------------------------------------------------------------------------


@pytest.mark.corpus
def test_a_place_selects_one_of_two_sites_at_the_same_offset_in_a_corpus_module(  # type: ignore[no-untyped-def]
    corpus, tmp_path: Path
) -> None:
    """nls_utf8.ko has char2uni at .text+0x14 and init_nls_utf8 at .init.text+0x14: the section
    tells them apart. A signed module: --strip-signature, and --drop-records for the boot rule."""
    ko, out = corpus.modules_dir / "fs/nls/nls_utf8.ko", tmp_path / "nls_utf8.ko"
    before = states(ko)
    assert before["char2uni"][:2] == (".text+0x14", "enabled")
    assert before["init_nls_utf8"][:2] == (".init.text+0x14", "enabled")
    args = ("--drop-records", "--strip-signature", "--addr", ".init.text+0x14")
    assert invoke("nop", ko, "-o", out, *args).exit_code == 0
    after = states(out)
    assert {f for f in before if before[f] != after[f]} == {"init_nls_utf8"}
    assert after["init_nls_utf8"] == (".init.text+0x14", "nopped", False)


def test_a_place_offset_is_hex_as_scan_shows_it() -> None:
    """`.text+20`, typed from scan's `.text+0x20`, was read as decimal 20 (0x14): another place,
    or none. An offset of 10 or more must say 0x; below 10 both bases agree."""
    result = invoke("nop", BIN / "patchable-le.o", "--addr", ".text+20", "--drop-records", "--dry-run")
    assert result.exit_code == 2 and result.stderr.count("\n") == 1, result.output
    said = "'.text+20': give the offset in hex, as scan shows it (.text+20 is .text+0x14; did you mean .text+0x20?)"
    assert said in result.stderr, result.stderr
    assert invoke("nop", BIN / "patchable-le.o", "--addr", ".text+4", "--drop-records", "--dry-run").exit_code != 2
