"""`mcountrw audit`: every seeded fixture anomaly exactly once with its severity, clean fixtures
clean, anomalies made by editing copies of the fixtures, the exit-code contract, the JSON schema,
and the real corpus (clean of false anomalies, >= 99.9 % of sites decided)."""

from __future__ import annotations

import json
import re
import shutil
import time
from collections import Counter
from pathlib import Path

import jsonschema
import pytest
from conftest import FIXTURES, ROOT
from typer.testing import CliRunner

from rewriter import audit, flow, ppc
from rewriter.audit import AnomalyKind, Severity
from rewriter.batch import expand
from rewriter.cli import app
from rewriter.elf.image import Image
from rewriter.report import jsonfmt, md
from rewriter.sites import scan

BINARIES = sorted(p.name for p in (FIXTURES / "bin").iterdir())
TABLE = flow.build_table()

# The severity each seeded kind must carry (rewriter.audit.RULES argues them; r0live is a warning
# because the fixture's mflr is still in place).
EXPECTED_SEVERITY = {
    "broken": Severity.ERROR,
    "unrecorded": Severity.WARNING,
    "dangling": Severity.ERROR,
    "r0live": Severity.WARNING,
    "patchable-before-gep": Severity.ERROR,
}


def _audit(path: Path) -> audit.ImageAudit:
    outcome = audit.audit_one(path, audit.group_of(path), TABLE)
    assert outcome.audit is not None, outcome.error
    return outcome.audit


def _anomaly_place(entry: dict) -> int:
    return int(entry.get("slot_addr") or entry["record_addr"], 16)


@pytest.mark.parametrize("name", BINARIES)
def test_fixture_anomalies_are_reported_exactly_once(name: str, manifest: dict) -> None:
    expected = manifest["binaries"][f"bin/{name}"]["anomalies"]
    got = _audit(FIXTURES / "bin" / name)
    linked = got.kind.value == "executable"
    found = Counter((a.kind.value, a.function, a.addr if linked else a.offset) for a in got.anomalies)
    want = Counter((e["kind"], e["function"], _anomaly_place(e)) for e in expected)
    assert found == want
    for a in got.anomalies:
        assert a.severity is EXPECTED_SEVERITY[a.kind.value], a


def test_every_seeded_kind_is_covered(manifest: dict) -> None:
    kinds = {a["kind"] for entry in manifest["binaries"].values() for a in entry["anomalies"]}
    assert kinds == set(EXPECTED_SEVERITY)


def test_live_verdict_is_shown_with_the_instruction_that_reads_r0() -> None:
    got = _audit(FIXTURES / "bin" / "anom-r0live")
    (a,) = got.anomalies
    assert a.evidence[-1].startswith("0x10000114: f8010010  std r0, 0x10(r1)  <- reads r0")
    assert "std r0, 0x10(r1)  <- reads r0" in md.audit_markdown(audit.Audit((got,), ()))


# -- anomalies made by editing copies of the fixtures -----------------------------------------


def _patched(tmp_path: Path, name: str, edits: dict[int, int]) -> Path:
    """A copy of a fixture with 32-bit words replaced at file offsets."""
    out = tmp_path / name
    shutil.copyfile(FIXTURES / "bin" / name, out)
    order = Image.load(out).byteorder
    with open(out, "r+b") as fh:
        for offset, word in edits.items():
            fh.seek(offset)
            fh.write(word.to_bytes(4, order))
    return out


def _site(path: Path, function: str):
    return next(s for s in scan(Image.load(path)).sites if s.function == function)


def test_nopped_site_that_reads_r0_is_an_error(tmp_path: Path) -> None:
    site = _site(FIXTURES / "bin" / "anom-r0live", "r0live_fn")
    path = _patched(tmp_path, "anom-r0live", {site.file_offset - 4: ppc.NOP, site.file_offset: ppc.NOP})
    (a,) = [a for a in _audit(path).anomalies if a.kind is AnomalyKind.R0_LIVE]
    assert a.severity is Severity.ERROR and "gone (nopped)" in a.message


def test_mixed_states_are_a_note(tmp_path: Path) -> None:
    site = _site(FIXTURES / "bin" / "clean", "clean_leaf")
    got = _audit(_patched(tmp_path, "clean", {site.file_offset: ppc.NOP}))
    assert [(a.kind, a.severity) for a in got.anomalies] == [(AnomalyKind.MIXED_STATES, Severity.NOTE)]
    assert "1 disabled, 2 enabled" in got.anomalies[0].message


def test_unexpected_words_in_slot_a_are_an_error(tmp_path: Path) -> None:
    site = _site(FIXTURES / "bin" / "clean", "clean_toc")
    got = _audit(_patched(tmp_path, "clean", {site.file_offset - 4: 0x3800_0000}))  # li r0,0
    assert [(a.kind, a.severity, a.function) for a in got.anomalies] == [
        (AnomalyKind.UNEXPECTED_WORDS, Severity.ERROR, "clean_toc")
    ]


def test_call_to_mcount_inside_a_function_is_not_at_entry(tmp_path: Path) -> None:
    image = Image.load(FIXTURES / "bin" / "clean")
    result = scan(image)
    site = next(s for s in result.sites if s.function == "clean_nonleaf")
    where = site.addr + 8  # two words into the body
    call = ppc.bl(where, result.mcount_entries[0])
    got = _audit(_patched(tmp_path, "clean", {image.offset_of(where): call}))
    kinds = sorted((a.kind.value, a.severity.value) for a in got.anomalies)
    # the new call is also unrecorded, and its site's A slot holds no mflr
    assert ("not-at-entry", "warning") in kinds
    assert all(a.addr == where for a in got.anomalies if a.kind is not AnomalyKind.MIXED_STATES)


def test_duplicate_record_is_an_error(tmp_path: Path) -> None:
    image = Image.load(FIXTURES / "bin" / "clean")
    sec = image.section("__mcount_loc")
    first = image.data[sec.offset : sec.offset + 8]
    path = tmp_path / "clean"
    data = bytearray(image.data)
    data[sec.offset + 8 : sec.offset + 16] = first  # record 1 := record 0
    path.write_bytes(bytes(data))
    kinds = Counter((a.kind, a.severity) for a in _audit(path).anomalies)
    assert kinds[(AnomalyKind.DUPLICATE_RECORD, Severity.ERROR)] == 1
    assert kinds[(AnomalyKind.UNRECORDED, Severity.WARNING)] == 1  # the site that lost its record


def test_elfv1_flag_on_an_elfv2_object_is_an_abi_mismatch(tmp_path: Path) -> None:
    path = tmp_path / "clean.o"
    data = bytearray((FIXTURES / "bin" / "clean.o").read_bytes())
    data[48:52] = (1).to_bytes(4, "little")  # e_flags: ELFv1
    path.write_bytes(bytes(data))
    got = [a for a in _audit(path).anomalies if a.kind is AnomalyKind.ABI_MISMATCH]
    assert len(got) == 1 and got[0].severity is Severity.ERROR


def test_group_is_the_directory_under_kernel() -> None:
    kernel = Path("/lib/modules/6.1.0/kernel")
    assert audit.group_of(kernel / "fs/ext4/ext4.ko", [kernel]) == "fs/ext4"
    assert audit.group_of(Path("/tmp/t/a/b.ko"), [Path("/tmp/t")]) == "a"
    assert audit.group_of(Path("/boot/vmlinux")) == "vmlinux"


# -- the command ------------------------------------------------------------------------------


def _run(*args: str):
    return CliRunner().invoke(app, ["audit", *args])


@pytest.mark.parametrize(
    ("name", "fail_on", "code"),
    [
        ("clean", "error", 0),
        ("anom-broken", "error", 1),
        ("anom-broken", "never", 0),
        ("anom-unrecorded", "error", 0),
        ("anom-unrecorded", "warning", 1),
        ("anom-r0live.o", "warning", 1),
    ],
)
def test_fail_on_sets_the_exit_code(name: str, fail_on: str, code: int) -> None:
    result = _run(str(FIXTURES / "bin" / name), "--fail-on", fail_on, "--format", "json")
    assert result.exit_code == code, result.output


@pytest.mark.parametrize("args", [["/nonexistent/vmlinux"], ["--format", "pdf"], ["--fail-on", "sometimes"]])
def test_bad_input_exits_2(args: list[str]) -> None:
    extra = [] if args[0].startswith("/") else [str(FIXTURES / "bin" / "clean")]
    assert _run(*args, *extra).exit_code == 2


def test_not_an_elf_exits_2_with_one_line(tmp_path: Path) -> None:
    bogus = tmp_path / "vmlinux"
    bogus.write_bytes(b"not an elf at all")
    result = _run(str(bogus))
    assert result.exit_code == 2 and "not an ELF" in result.output


def test_json_report_follows_the_schema(tmp_path: Path) -> None:
    out = tmp_path / "audit.json"
    result = _run(str(FIXTURES / "bin"), "--format", "json", "-o", str(out), "--fail-on", "never", "-j", "2")
    assert result.exit_code == 0, result.output
    doc = json.loads(out.read_text())
    jsonschema.Draft202012Validator(jsonfmt.SCHEMA).validate(doc)
    by_name = {Path(i["path"]).name: i for i in doc["images"]}
    r0 = by_name["anom-r0live"]["mflr_nop_safety"]
    assert (r0["safe"], r0["live"], r0["unknown"]) == (2, 1, 0)
    live = [s for s in r0["sites"] if s["verdict"] == "live"]
    assert live[0]["function"] == "r0live_fn" and "std r0" in live[0]["evidence"][-1]
    assert doc["totals"]["sites"] == sum(i["counts"]["sites"] for i in doc["images"])


def test_docs_print_the_schema_the_code_uses() -> None:
    text = (ROOT / "docs" / "audit.md").read_text()
    block = re.search(r"<!-- schema -->\n```json\n(.*?)\n```", text, re.S)
    assert block is not None
    assert json.loads(block.group(1)) == json.loads(json.dumps(jsonfmt.SCHEMA))


# -- the corpus -------------------------------------------------------------------------------


@pytest.mark.corpus
def test_vmlinux_audit_is_clean_and_decided(corpus) -> None:
    start = time.perf_counter()
    got = audit.audit_files([corpus.vmlinux])
    seconds = time.perf_counter() - start
    (img,) = got.images
    assert img.anomalies == ()
    safety = img.safety_counts()
    assert safety[flow.Verdict.LIVE] == 0
    assert safety[flow.Verdict.SAFE] + safety[flow.Verdict.LIVE] >= 0.999 * img.counts.sites
    assert img.counts.sites == 33_690 and img.counts.init_sites == 1_509
    assert seconds < 10  # ~1 s here; bench/ holds the 3 s budget


@pytest.mark.corpus
@pytest.mark.slow
def test_module_tree_audit_is_clean_and_decided(corpus) -> None:
    files, errors = expand([corpus.modules_dir])
    got = audit.audit_files(files, [corpus.modules_dir], jobs=2)
    assert not errors and not got.errors
    assert [a for img in got.images for a in img.anomalies] == []
    total = audit.summarise(got.images, "all")
    assert total.sites == 157_277 and total.safety["live"] == 0
    assert total.safety["safe"] >= 0.999 * total.sites
    groups = {g.group: g for g in audit.roll_up(got)}
    assert groups["fs/ext4"].images == 1 and groups["fs/ext4"].sites == 851
