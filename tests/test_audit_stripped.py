"""`mcountrw audit` on stripped images: ``--generation`` reaches the scan (one file, and a tree
audited by worker processes), and the report says what it could not check without symbols
instead of "no anomalies".

Fixtures are stripped with ``objcopy --strip-all`` (``clean`` is an mprofile ELFv2 LE executable);
the corpus tests strip the 6.1, 6.12 and 7.2 vmlinux."""

from __future__ import annotations

import json
import os
from pathlib import Path

import jsonschema
import pytest
from boot import counts, require_kernel
from conftest import unwrapped
from test_bad_input import assert_cli_error, mcountrw
from test_stripped import BIN, mcount_of, strip

from rewriter.code import code_view
from rewriter.elf.image import Image
from rewriter.report import jsonfmt


def _audit_json(*args: str) -> tuple[int, dict]:  # type: ignore[type-arg]
    proc = mcountrw("audit", "--format", "json", *args)
    assert proc.returncode in (0, 1), proc.stderr
    return proc.returncode, json.loads(proc.stdout)


# -- --generation ---------------------------------------------------------------------------------


def test_generation_overrides_what_the_audit_detects_in_a_stripped_file(tmp_path: Path) -> None:
    """``clean`` is mprofile: as it is, its three records name ``bl _mcount``. Audited as patchable,
    each record must name the first of two nops, so each is dangling, in the kernel's words."""
    bare = strip(BIN / "clean", tmp_path / "clean")
    code, doc = _audit_json(str(bare))
    (img,) = doc["images"]
    assert code == 0 and img["generation"] == "mprofile" and img["counts"]["sites"] == 3
    assert [a for a in img["anomalies"] if a["severity"] != "note"] == []
    code, doc = _audit_json(str(bare), "--generation", "patchable")
    (img,) = doc["images"]
    assert code == 1 and img["generation"] == "patchable" and img["counts"]["sites"] == 0
    dangling = [a for a in img["anomalies"] if a["kind"] == "dangling"]
    assert len(dangling) == 3 and all(a["severity"] == "error" for a in dangling)
    assert all("expected (60000000) != found (" in a["message"] for a in dangling)
    assert all(a["message"].endswith("not the first of two nops") for a in dangling)
    # the contents say mprofile (the bl words call one entry most): obeyed, and warned of
    (override,) = [a for a in img["anomalies"] if a["kind"] == "generation-override"]
    assert override["severity"] == "warning"
    assert override["message"].startswith("--generation patchable overrides what the image says: mprofile (")


def test_dangling_message_quotes_the_word_as_its_evidence_does(tmp_path: Path) -> None:
    """A record moved to a ``bl`` that goes elsewhere (clean_nonleaf's call of clean_leaf): the
    message names its target as the evidence line does (``bl 0x10000100``), not by its offset
    disassembled at 0."""
    image = Image.load(BIN / "clean")
    view = code_view(image)
    mcount = mcount_of(BIN / "clean")
    call, callee = next((int(p), int(t)) for p, t in zip(view.bl_places, view.bl_targets, strict=True) if t != mcount)
    table = image.section("__mcount_loc")
    data = bytearray(image.data)
    data[table.offset : table.offset + 8] = call.to_bytes(8, "little")  # record 0 := the other call
    moved = tmp_path / "clean"
    moved.write_bytes(bytes(data))
    code, doc = _audit_json(str(moved))
    (dangling,) = [a for a in doc["images"][0]["anomalies"] if a["kind"] == "dangling"]
    assert code == 1
    (line,) = dangling["evidence"]
    assert line.endswith(f"  bl {callee:#x}")
    assert dangling["message"] == f"record points at 'bl {callee:#x}', not a call to _mcount"


def test_a_mcount_addr_no_recorded_call_names_is_refused_naming_the_one_they_call(tmp_path: Path) -> None:
    """A stripped image with records and a wrong ``--mcount-addr``: every record named no site and
    scan and audit said ftrace breaks at boot (FTRACE OFF, three dangling errors), a confident
    false verdict; now one line names the address the recorded bl words call, exit 2."""
    bare = strip(BIN / "clean", tmp_path / "clean")
    mcount = mcount_of(BIN / "clean")
    for command in ("scan", "audit", "nop"):
        out = tmp_path / f"{command}.out"
        proc = mcountrw(command, str(bare), "--mcount-addr", hex(mcount - 0x30), "-o", str(out))
        assert proc.returncode == 2 and not proc.stdout and not out.exists()
        assert proc.stderr.strip() == (
            f"mcountrw: error: {bare}: --mcount-addr {mcount - 0x30:#x}: no recorded bl calls it; "
            f"the recorded bl words call {mcount:#x} (is that _mcount's address?)"
        )
    assert mcountrw("scan", str(bare), "--mcount-addr", hex(mcount)).returncode == 0


def test_generation_that_agrees_is_no_anomaly() -> None:
    for args in ((), ("--generation", "ool")):
        _, doc = _audit_json(str(BIN / "ool-le.o"), *args)
        assert not [a for a in doc["images"][0]["anomalies"] if a["kind"] == "generation-override"]
    proc = mcountrw("audit", str(BIN / "ool-le.o"), "--generation", "patchable")
    assert (
        "- **warning** `generation-override`: --generation patchable overrides what the image says: ool "
        "(6 of 6 recorded nops not followed by a nop: one patchable nop); every finding here reads the image "
        "as patchable"
    ) in proc.stdout


def test_generation_reaches_every_worker_of_a_tree(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    tree.mkdir()
    for name in ("clean", "prof-le", "anom-unrecorded"):
        strip(BIN / name, tree / name)
    _, doc = _audit_json(str(tree), "-j", "2")
    assert {i["generation"] for i in doc["images"]} == {"mprofile"}
    _, doc = _audit_json(str(tree), "-j", "2", "--generation", "ool")
    assert len(doc["images"]) == 3 and {i["generation"] for i in doc["images"]} == {"ool"}
    assert all(any(a["kind"] == "dangling" for a in i["anomalies"]) for i in doc["images"])


def test_generation_other_than_mprofile_refuses_mcount_addr(tmp_path: Path) -> None:
    bare = strip(BIN / "clean", tmp_path / "clean")
    proc = mcountrw("audit", str(bare), "--generation", "ool", "--mcount-addr", "0x10000000")
    assert_cli_error(proc, "--mcount-addr names _mcount", "not ool")
    assert proc.stdout == ""


def test_audit_help_gives_generation_the_help_scan_gives_it() -> None:
    def generation_help(command: str) -> str:
        out = mcountrw(command, "--help", env={**os.environ, "COLUMNS": "200", "TERM": "dumb"}).stdout
        (line,) = [x for x in out.splitlines() if "--generation" in x]
        return " ".join(line.split("--generation", 1)[1].replace("│", "").split())

    assert generation_help("audit") == generation_help("scan")
    assert "override the generation detected from the image (stripped images)" in generation_help("audit")


# -- what a stripped image could not check --------------------------------------------------------


def test_stripped_executable_notes_the_checks_that_need_symbols(tmp_path: Path) -> None:
    """The same file with symbols gets no note; stripped, one image-wide note names the checks
    that did not run, and the weak-body count reads "unknown" instead of 0."""
    full = mcountrw("audit", str(BIN / "clean"))
    assert full.returncode == 0 and "no-symbols" not in full.stdout and "_No anomalies._" in full.stdout
    bare = strip(BIN / "clean", tmp_path / "clean")
    code, doc = _audit_json(str(bare))
    jsonschema.validate(doc, jsonfmt.SCHEMA)
    (img,) = doc["images"]
    (note,) = img["anomalies"]
    assert code == 0 and (note["kind"], note["severity"], note["address"]) == ("no-symbols", "note", None)
    assert "did not run: weak-body, not-at-entry" in note["message"] and "mflr-nop walk" in note["message"]
    assert img["ool_stubs_unchecked"] is None and img["ool_stubs"] == []
    proc = mcountrw("audit", str(bare))
    assert (
        "| recorded sites in weak-function bodies (disabled by the kernel or not) | unknown (no function symbols) |"
        in proc.stdout
    )
    assert "- **note** `no-symbols`: no function symbols: sites are unnamed" in proc.stdout
    assert "_Highest severity: note._" in proc.stdout and "ool stubs" not in proc.stdout


def test_unchecked_ool_stubs_show_in_every_format() -> None:
    """The renderers, given an ool vmlinux audit whose stub areas were not found (the corpus test
    below makes a real one): md row and anomaly, JSON field and anomaly, SARIF rule and result, HTML."""
    from dataclasses import replace

    from rewriter import audit
    from rewriter.anomalies import Anomaly, AnomalyKind, Severity
    from rewriter.elf.image import Kind
    from rewriter.generations import Generation
    from rewriter.ppc.table import build_table
    from rewriter.report import html, md, sarif

    outcome = audit.audit_one(BIN / "ool-le.o", "fixtures", build_table())
    assert outcome.audit is not None and outcome.audit.stub_gap is None  # an object: no stub areas to find
    assert not [a for a in outcome.audit.anomalies if a.kind is AnomalyKind.OOL_STUBS_UNCHECKED]
    gap = audit.StubGap(7, "no symbols")
    warning = Anomaly(AnomalyKind.OOL_STUBS_UNCHECKED, Severity.WARNING, "coverage unchecked")
    img = replace(outcome.audit, kind=Kind.VMLINUX, generation=Generation.OOL, stub_gap=gap, anomalies=(warning,))
    report = audit.Audit((img,), ())
    text = md.audit_markdown(report)
    assert "| ool stubs | not found (no symbols): coverage of 7 records unchecked |" in text
    assert "- **warning** `ool-stubs-unchecked`: coverage unchecked" in text
    doc = jsonfmt.audit_json(report)
    jsonschema.validate(doc, jsonfmt.SCHEMA)
    assert doc["images"][0]["ool_stubs_unchecked"] == {"records": 7, "reason": "no symbols"}
    run = sarif.audit_sarif(report)["runs"][0]
    assert "ool-stubs-unchecked" in [r["id"] for r in run["tool"]["driver"]["rules"]]
    ((rule_id, level),) = [(r["ruleId"], r["level"]) for r in run["results"]]
    assert (rule_id, level) == ("ool-stubs-unchecked", "warning")
    assert run["artifacts"][0]["properties"]["ool_stubs_unchecked"] == {"records": 7, "reason": "no symbols"}
    page = html.audit_html(report)
    assert "not found (no symbols): coverage of 7 records unchecked" in page and "ool-stubs-unchecked" in page


# -- the corpus, stripped -------------------------------------------------------------------------


@pytest.mark.corpus
def test_stripped_ool_vmlinux_says_its_stub_coverage_is_unchecked(tmp_path: Path) -> None:
    """7.2 stripped: its records are found by search, but not its stub areas. The audit used to
    say "_No anomalies_" and exit 0 with --fail-on warning; now it warns, in every format."""
    bare = strip(require_kernel("7.2").vmlinux, tmp_path / "vmlinux")
    proc = mcountrw("audit", str(bare), "--fail-on", "warning")
    assert proc.returncode == 1, proc.stderr
    n = counts("7.2").records
    assert f"| ool stubs | not found (no symbols): coverage of {n} records unchecked |" in proc.stdout
    assert "- **warning** `ool-stubs-unchecked`: ool stub areas not found (no symbols)" in proc.stdout
    assert "**Anomalies:** 0 errors, 1 warning, 1 note." in proc.stdout
    assert "_Highest severity: warning._" in proc.stdout
    code, doc = _audit_json(str(bare))
    jsonschema.validate(doc, jsonfmt.SCHEMA)
    (img,) = doc["images"]
    assert code == 0 and img["generation"] == "ool" and img["ool_stubs"] == []
    assert img["ool_stubs_unchecked"] == {"records": counts("7.2").records, "reason": "no symbols"}
    assert sorted((a["kind"], a["severity"]) for a in img["anomalies"]) == [
        ("no-symbols", "note"),
        ("ool-stubs-unchecked", "warning"),
    ]
    proc = mcountrw("audit", str(bare), "--format", "sarif")
    run = json.loads(proc.stdout)["runs"][0]
    assert "ool-stubs-unchecked" in [r["id"] for r in run["tool"]["driver"]["rules"]]
    assert sorted((r["ruleId"], r["level"]) for r in run["results"]) == [
        ("no-symbols", "note"),
        ("ool-stubs-unchecked", "warning"),
    ]
    proc = mcountrw("audit", str(bare), "--format", "html")
    assert f"not found (no symbols): coverage of {counts('7.2').records} records unchecked" in proc.stdout


@pytest.mark.corpus
def test_an_unstripped_vmlinux_read_as_ool_is_not_told_to_be_audited_unstripped() -> None:
    """6.12 read with --generation ool: it has symbols and no stub area. The audit's advice was
    "audit the unstripped vmlinux" (it is), and scan's table said nothing of the stubs at all."""
    vmlinux = str(require_kernel("6.12").vmlinux)
    proc = mcountrw("audit", vmlinux, "--generation", "ool")
    (warning,) = [line for line in proc.stdout.splitlines() if "`ool-stubs-unchecked`" in line]
    assert "no ftrace_ool_stub_text or ftrace_ool_stub_text_end or ftrace_ool_stub_inittext symbol" in warning
    assert warning.endswith("every ool (6.13+) vmlinux defines them: is it one?") and "unstripped" not in warning
    table = unwrapped(mcountrw("scan", vmlinux, "--generation", "ool").stdout).splitlines()
    assert "  ool stubs: this vmlinux defines no stub area (ftrace_ool_stub_text...), which every ool kernel has: " in (
        "\n".join(table[:6])
    )
    assert not [line for line in mcountrw("scan", vmlinux).stdout.splitlines()[:6] if "ool stubs" in line]


@pytest.mark.corpus
@pytest.mark.parametrize("name", ["6.1", "6.12"])
def test_stripped_mprofile_and_patchable_vmlinux_get_a_note_and_no_false_errors(name: str, tmp_path: Path) -> None:
    """No stubs to miss: the one thing said is the note. 6.1 needs _mcount's address (System.map)."""
    bare = strip(require_kernel(name).vmlinux, tmp_path / "vmlinux")
    extra = ["--mcount-addr", hex(mcount_of(require_kernel(name).vmlinux))] if name == "6.1" else []
    generation = "mprofile" if name == "6.1" else "patchable"
    for args in (extra, [*extra, "--generation", generation]):
        code, doc = _audit_json(str(bare), "--fail-on", "warning", *args)
        (img,) = doc["images"]
        assert code == 0 and img["generation"] == generation and img["ool_stubs_unchecked"] is None
        ((kind, severity),) = [(a["kind"], a["severity"]) for a in img["anomalies"]]
        assert (kind, severity) == ("no-symbols", "note")
        assert img["mflr_nop_safety"]["live"] == 0
    assert ("patchable-before-gep" in img["anomalies"][0]["message"]) is (name == "6.12")
