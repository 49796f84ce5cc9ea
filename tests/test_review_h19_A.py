"""Review h19-A: the text a kernel developer reads over a module tree and at 80 columns: notes said
once for a run of several images, prose wrapped at 80 columns, distinct names for the two weak-body
counts, and percentages written as ``100%``."""

from __future__ import annotations

import json
import re
from pathlib import Path

from boot import require_kernel
from conftest import FIXTURES, invoke, scan_table, unwrapped

BIN = FIXTURES / "bin"


def test_audit_writes_percentages_without_a_space_before_the_sign() -> None:
    got = invoke("audit", "--jobs", "1", "--fail-on", "never", BIN / "prof-le", BIN / "clean")
    assert got.exit_code == 0, got.output
    assert "(100% decided)" in got.stdout
    assert not re.search(r"\d %", got.stdout), got.stdout


# -- 1. a note that says the same of every image of a run is said once ------------------------------


def _crypto_modules() -> Path:
    """A few patchable modules of Debian's 6.12 (their records name the word before the call slot,
    and each has an init-text site)."""
    return require_kernel("6.12").modules_dir / "arch" / "powerpc" / "crypto"


def test_a_module_tree_says_each_shared_note_once_before_its_total() -> None:
    tree = _crypto_modules()
    got = invoke("scan", "--jobs", "1", tree)
    assert got.exit_code == 0, got.output
    lines = got.stdout.splitlines()
    images = sum(1 for line in lines if line.startswith(str(tree)))
    assert images > 2
    said_once = "records name the word 4 bytes before each call slot of the "
    offset = [n for n, line in enumerate(lines) if said_once in line]
    init = [n for n, line in enumerate(lines) if "init text:" in line]
    assert len(offset) == len(init) == 1, got.stdout
    total = next(n for n, line in enumerate(lines) if line.startswith("total: "))
    notes = lines.index("notes on the images above:")
    assert notes < min(offset[0], init[0]) and max(offset[0], init[0]) < total
    # the init note adds up what each module's own table says of it
    inits = [
        m.group(0)
        for m in re.finditer(r"(?m)^\s*\.init\.text\+0x\w+ ", invoke("scan", "--jobs", "1", "--all", tree).stdout)
    ]
    said = " ".join(lines[init[0] : total])
    assert f"{len(inits)} of the traceable sites, in {images} modules," in said, said
    # the table of each image still parses, under the tables
    assert len(scan_table(got.stdout)) == sum(
        min(len(scan_table(invoke("scan", p).stdout)), 20) for p in sorted(tree.iterdir())
    )


def test_one_module_keeps_its_notes_under_it() -> None:
    one = sorted(_crypto_modules().iterdir())[0]
    got = invoke("scan", one)
    assert got.exit_code == 0, got.output
    assert "notes on the images above" not in got.stdout
    text = " ".join(line.strip() for line in got.stdout.splitlines())
    assert "records name the word 4 bytes before each call slot (the kernel's" in text
    assert "init text: 1 of the traceable sites is in init sections" in text


def test_json_and_csv_of_a_tree_are_what_they_were() -> None:
    """The reports other tools parse: compared with the bytes of the run before this change, read
    through the image-by-image functions (a table-only change must not reach them)."""
    from rewriter.batch import expand, scan_one
    from rewriter.report import scanfmt

    files, _ = expand([_crypto_modules()])
    scans = [o.scan for o in map(scan_one, files) if o.scan is not None]
    assert (
        invoke("scan", "--jobs", "1", "--format", "json", _crypto_modules()).stdout
        == scanfmt.scans_json_text(scans, []) + "\n"
    )
    assert invoke("scan", "--jobs", "1", "--format", "csv", _crypto_modules()).stdout == scanfmt.csv_text(scans)


# -- 2. prose wrapped at 80 columns, with a hanging indent ------------------------------------------


def test_the_scan_of_every_fixture_fits_80_columns_and_each_head_line_starts_with_its_path() -> None:
    files = sorted(BIN.iterdir())
    got = invoke("scan", "--jobs", "1", *files)
    assert got.exit_code == 0, got.output
    long = [line for line in got.stdout.splitlines() if len(line) > 80]
    assert not long, long
    heads = [line for line in got.stdout.splitlines() if not line.startswith(" ")]
    assert [h.split(": ", 1)[0] for h in heads if not h.startswith(("total: ", "notes on"))] == list(map(str, files))
    # the words are those of the one long line each was before: only where the lines break moved
    one = invoke("scan", BIN / "prof-le").stdout
    assert unwrapped(one).splitlines()[0] == (
        f"{BIN / 'prof-le'}: executable, little-endian elfv2, generation mprofile: 6 sites (6 enabled->disabled), "
        "6 traceable after boot; 6 records (0 skipped, 0 unmatched), 0 zeroed slots, 0 sites unrecorded"
    )
    assert one.splitlines()[1].startswith("    ")  # the hanging indent


def test_a_long_path_stays_whole_on_the_first_line(tmp_path: Path) -> None:
    deep = tmp_path / ("d" * 70) / "prof le"  # longer than a line, and a space in it
    deep.parent.mkdir()
    deep.write_bytes((BIN / "prof-le").read_bytes())
    first = invoke("scan", deep).stdout.splitlines()[0]
    assert first.startswith(f"{deep}: executable,"), first


def test_policy_checks_result_line_is_wrapped(tmp_path: Path) -> None:
    policy = tmp_path / "p"
    policy.write_text("default nop\nkeep leaf_add\n")
    got = invoke("policy", "check", policy, *sorted(BIN.iterdir()))
    assert got.exit_code == 0, got.output
    lines = got.stdout.splitlines()
    start = next(n for n, line in enumerate(lines) if line.startswith("result: "))
    assert all(len(line) <= 80 for line in lines[start:]), lines[start:]
    result = next(line for line in unwrapped(got.stdout).splitlines() if line.startswith("result: "))
    assert result.endswith("(untraceable: records dropped)") and len(result) > 80, result


def test_the_helper_packs_words_and_never_splits_one() -> None:
    from rewriter.prose import wrapped

    text = "  note: " + " ".join(["word"] * 40) + " " + "x" * 100
    lines = wrapped(text)
    assert " ".join(line.strip() for line in lines) == text.strip()
    assert all(len(line) <= 80 for line in lines[:-1]) and lines[-1] == "      " + "x" * 100
    assert all(line.startswith("      ") for line in lines[1:])


# -- 4. two weak-body counts, two names -------------------------------------------------------------


def test_scan_and_audit_name_their_two_weak_body_counts_apart() -> None:
    """6.12: scan's 261 are the weak-function bodies the kernel disables, audit's 262 every recorded
    site in one (one is within FTRACE_MCOUNT_MAX_OFFSET of a symbol, and kept): both were said as
    "weak-function bodies"."""
    vmlinux = require_kernel("6.12").vmlinux
    disabled = json.loads(invoke("scan", "--format", "json", vmlinux).stdout)["images"][0]["summary"]["untraceable"]
    counts = json.loads(invoke("audit", "--format", "json", "--fail-on", "never", vmlinux).stdout)
    every = counts["images"][0]["counts"]["weak_bodies"]
    assert disabled["weak-body"] < every
    scan = unwrapped(invoke("scan", vmlinux).stdout)
    assert (
        f"not traceable: {disabled['weak-body']} sites (weak-body) are weak-function bodies the kernel disables, "
        in scan
    )
    audit = invoke("audit", "--fail-on", "never", vmlinux).stdout
    assert f"| recorded sites in weak-function bodies (disabled by the kernel or not) | {every} |" in audit


def test_an_ool_module_trees_stubs_line_is_said_once_when_they_serve_every_record() -> None:
    tree = require_kernel("7.2").modules_dir / "fs" / "nls"
    got = invoke("scan", "--jobs", "1", tree)
    assert got.exit_code == 0, got.output
    text = unwrapped(got.stdout)
    doc = json.loads(invoke("scan", "--jobs", "1", "--format", "json", tree).stdout)["images"]
    served = [i for i in doc if i["stubs"] and i["stubs"][0]["used"] == i["records"]["count"]]
    assert len(served) > 2
    (line,) = [line for line in text.splitlines() if "ool stubs:" in line]
    records = sum(i["records"]["count"] for i in served)
    said = f"serve all {records} records of {len(served)} modules"
    assert line == f"  ool stubs: .stubs, carved out at load, one per table entry: {said}", line
    one = unwrapped(invoke("scan", served[0]["path"]).stdout)
    assert "  ool stubs: .stubs, carved out at load, one per table entry (" in one
