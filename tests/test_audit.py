"""`mcountrw audit`: every seeded fixture anomaly exactly once with its severity, clean fixtures
clean, anomalies made by editing copies of the fixtures, the exit-code contract, the JSON schema,
and the real corpus (clean of false anomalies, >= 99.9 % of sites decided)."""

from __future__ import annotations

import json
import re
import shutil
from collections import Counter
from pathlib import Path

import jsonschema
import numpy as np
import pytest
from boot import KERNELS, counts, require_kernel
from conftest import FIXTURES, ROOT
from typer.testing import CliRunner

from rewriter import audit, flow, ppc
from rewriter.anomalies import RULES, Anomaly, AnomalyKind, Severity
from rewriter.batch import expand
from rewriter.cli import app
from rewriter.elf.image import Image
from rewriter.generations import Generation
from rewriter.ppc.table import build_table
from rewriter.report import jsonfmt, md
from rewriter.sites import scan

BINARIES = sorted(p.name for p in (FIXTURES / "bin").iterdir())
TABLE = build_table()

# The severity each seeded kind must carry (rewriter.anomalies.RULES argues them; r0live is a warning
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


def test_module_evidence_names_the_symbol_a_branch_is_relocated_to() -> None:
    """In a .o or .ko a ``bl``'s offset is 0 until the loader applies its R_PPC64_REL24: read bare
    it branches to itself (``bl 4`` at .text+0x4). The evidence names the relocation's symbol."""
    got = _audit(FIXTURES / "bin" / "anom-r0live.o")
    (a,) = got.anomalies
    assert a.evidence[:2] == (".text+0x0: 7c0802a6  mflr r0", ".text+0x4: 48000001  bl _mcount")
    (site,) = [s for s in got.sites if s.evidence]
    assert site.evidence[:2] == a.evidence[:2]


def test_the_headlines_count_in_the_singular_and_the_plural() -> None:
    """Say "1 image, 1 warning", not "1 images, 1 warnings": in the Markdown and the HTML headline."""
    from rewriter.report import html

    one = _audit(FIXTURES / "bin" / "anom-r0live")  # one image, one warning
    two = audit.Audit((one, _audit(FIXTURES / "bin" / "prof-le")), ())
    sites = len(one.sites)
    assert f"**1 image, {sites} site{'' if sites == 1 else 's'}**" in md.audit_markdown(audit.Audit((one,), ()))
    assert "**Anomalies:** 0 errors, 1 warning, 0 notes." in md.audit_markdown(audit.Audit((one,), ()))
    assert "**2 images, " in md.audit_markdown(two)
    page = html.audit_html(audit.Audit((one,), ()))
    assert f"<p id='summary'>1 image, {sites} site" in page and "Anomalies: 0 errors, 1 warning, 0 notes." in page


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


def test_recorded_site_rewritten_is_refused_at_boot_and_mixed_states_a_note(tmp_path: Path) -> None:
    """A disabled mprofile site that keeps its record: ftrace_init_nop finds no bl (ftrace bug)."""
    site = _site(FIXTURES / "bin" / "clean", "clean_leaf")
    got = _audit(_patched(tmp_path, "clean", {site.file_offset: ppc.NOP}))
    kinds = [(a.kind, a.severity) for a in got.anomalies]
    assert kinds == [(AnomalyKind.BOOT_REFUSED, Severity.ERROR), (AnomalyKind.MIXED_STATES, Severity.NOTE)]
    refused, mixed = got.anomalies
    assert refused.message.startswith(f"{site.addr:#x}: expected (bl) != found (60000000)")
    assert refused.function == "clean_leaf" and refused.addr == site.addr
    assert "1 disabled, 2 enabled" in mixed.message


def test_unexpected_words_in_slot_a_are_an_error(tmp_path: Path) -> None:
    site = _site(FIXTURES / "bin" / "clean", "clean_toc")
    got = _audit(_patched(tmp_path, "clean", {site.file_offset - 4: 0x3800_0000}))  # li r0,0
    assert [(a.kind, a.severity, a.function) for a in got.anomalies] == [
        (AnomalyKind.UNEXPECTED_WORDS, Severity.ERROR, "clean_toc")
    ]


def test_patchable_site_with_mflr_written_offline_is_refused_as_the_kernel_says(tmp_path: Path) -> None:
    """6.12's ftrace_init_nop checks both nops first: `expected (60000000) != found (7c0802a6)`."""
    site = _site(FIXTURES / "bin" / "patchable-le.o", "leaf_add")
    got = _audit(_patched(tmp_path, "patchable-le.o", {site.file_offset - 4: ppc.MFLR_R0}))
    refused = [a for a in got.anomalies if a.kind is AnomalyKind.BOOT_REFUSED]
    assert [(a.severity, a.function, a.section, a.offset) for a in refused] == [
        (Severity.ERROR, "leaf_add", ".text", site.offset)
    ]
    assert refused[0].message.startswith(f".text+{site.offset - 4:#x}: expected (60000000) != found (7c0802a6)")


def test_patchable_body_that_reads_r0_is_a_warning_whatever_the_state(tmp_path: Path) -> None:
    """The kernel writes the first nop's mflr at boot: the read is never garbage, but the nop must
    not stay one."""
    site = _site(FIXTURES / "bin" / "patchable-le.o", "leaf_add")
    got = _audit(_patched(tmp_path, "patchable-le.o", {site.file_offset + 4: 0x7C09_03A6}))  # mtctr r0
    (live,) = [a for a in got.anomalies if a.kind is AnomalyKind.R0_LIVE]
    assert live.severity is Severity.WARNING and live.function == "leaf_add"
    assert "the first nop must become mflr r0" in live.message
    assert "mtctr r0  <- reads r0" in live.evidence[-1]


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
    # A subsystem's own kernel/ directory is not the tree's: arch/powerpc/kernel, not "kernel".
    assert audit.group_of(kernel / "arch/powerpc/kernel/rtas_flash.ko", [kernel / "arch"]) == "arch/powerpc/kernel"
    assert audit.group_of(Path("kernel/arch/powerpc/kernel/rtas_flash.ko")) == "arch/powerpc/kernel"
    assert audit.group_of(kernel / "kernel/trace/x.ko") == "kernel/trace"


def test_group_does_not_depend_on_how_the_path_is_spelled(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`audit .` grouped its files under '' (the name of `.`). Inside an installed tree
    (modules/VERSION/kernel) a file groups as from above it; elsewhere `.` stands for its directory's
    name; and a `kernel` directory above what was named (a source tree under ~/kernel) is no tree's."""
    installed = tmp_path / "lib" / "modules" / "6.12.0" / "kernel" / "fs" / "nls"
    installed.mkdir(parents=True)
    monkeypatch.chdir(installed)
    assert audit.group_of(Path("nls_utf8.ko"), [Path(".")]) == "fs/nls"
    assert audit.group_of(Path("./nls_utf8.ko"), [Path(".")]) == "fs/nls"
    flat = tmp_path / "flat"
    flat.mkdir()
    monkeypatch.chdir(flat)
    assert audit.group_of(Path("x.ko"), [Path(".")]) == "flat" == audit.group_of(flat / "x.ko", [flat])
    source = tmp_path / "kernel" / "linux-6.12"
    (source / "drivers" / "net").mkdir(parents=True)
    monkeypatch.chdir(source)
    assert audit.group_of(Path("vmlinux")) == "vmlinux"
    assert audit.group_of(Path("drivers/net/foo.ko"), [Path("drivers")]) == "net"


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


def test_docs_give_every_anomaly_kind_its_severity() -> None:
    text = (ROOT / "docs" / "audit.md").read_text()
    table = text.split("## Anomalies and their severities", 1)[1].split("\n## ", 1)[0]
    rows = dict(re.findall(r"^\| `([a-z0-9-]+)` \| ([a-z, ()]+?) \|", table, re.M))
    assert set(rows) == {k.value for k in AnomalyKind}
    for kind, rule in RULES.items():
        assert rows[kind.value].startswith(rule.severity.value), kind


# -- the corpus -------------------------------------------------------------------------------

KERNEL_NAMES = tuple(KERNELS)  # their counts are tests/boot.py's


def _weak_notes(img: audit.ImageAudit) -> list[Anomaly]:
    return [a for a in img.anomalies if a.kind is AnomalyKind.WEAK_BODY]


@pytest.mark.corpus
@pytest.mark.parametrize("name", KERNEL_NAMES)
def test_vmlinux_audit_has_no_errors_or_warnings_and_notes_weak_bodies(name: str) -> None:
    files = require_kernel(name)
    got = audit.audit_files([files.vmlinux])
    (img,) = got.images
    c = counts(name)
    sites, weak, kept = c.records, c.weak_bodies, c.weak_kept
    assert img.generation is not None and img.generation.value == files.kernel.generation
    assert img.counts.sites == sites and img.counts.recorded == sites
    assert [a for a in img.anomalies if a.severity is not Severity.NOTE] == []
    notes = _weak_notes(img)
    assert len(notes) == len(img.anomalies) == img.counts.weak_bodies == weak
    by_place = {s.site.place: s.site for s in img.sites}
    assert all(by_place[a.addr].function is None and by_place[a.addr].recorded for a in notes)
    traceable = [a for a in notes if by_place[a.addr].traceable]
    assert len(traceable) == kept
    # the kernel's own reason, and the symbol test_for_valid_rec() would name
    reason = "has no test_for_valid_rec()" if name == "6.1" else "within FTRACE_MCOUNT_MAX_OFFSET (16)"
    assert all(reason in a.message for a in traceable)
    assert all("marks it FTRACE_FL_DISABLED" in a.message for a in notes if a not in traceable)
    safety = img.safety_counts()
    assert safety[flow.Verdict.LIVE] == 0
    if img.generation is Generation.OOL:
        assert safety[flow.Verdict.N_A] == sites
        areas = ("ftrace_ool_stub_text", "ftrace_ool_stub_text_end", "ftrace_ool_stub_inittext")
        assert [(a.name, a.stub_count, a.used, a.covers) for a in img.stubs] == [
            (area, n, n, True) for area, n in zip(areas, c.stubs or (), strict=True)
        ]
    else:
        assert safety[flow.Verdict.SAFE] >= 0.999 * sites and not img.stubs


@pytest.mark.corpus
def test_weak_check_symbol_decides_whether_the_kernel_has_test_for_valid_rec() -> None:
    """The initcall that runs test_for_valid_rec() exists exactly when FTRACE_MCOUNT_MAX_OFFSET is
    defined: present in 6.12 and 7.2 (4k and 64k pages, and the 6.12 gcc 12 built with mprofile
    sites), absent in 6.1 (its name in .strtab, read with pyelftools)."""
    from elftools.elf.elffile import ELFFile

    for name in KERNEL_NAMES:
        files = require_kernel(name)
        with open(files.vmlinux, "rb") as fh:
            strtab = ELFFile(fh).get_section_by_name(".strtab").data()
        found = b"\0ftrace_check_for_weak_functions\0" in strtab
        assert found is (name != "6.1")
        assert (scan(Image.load(files.vmlinux)).weak_max_offset is not None) is found


@pytest.mark.corpus
@pytest.mark.slow
@pytest.mark.parametrize("name", KERNEL_NAMES)
def test_module_tree_audit_has_no_errors_or_warnings(name: str) -> None:
    """6.1: 3,126 .ko; 6.12: 3,154 .ko.xz; 7.2: 3,127 .ko.xz (and the 64k-page builds'). The only notes: kvm.ko's four
    records in the bodies of overridden weak functions (kvm_arch_irqfd_allowed+0x14, ...)."""
    files = require_kernel(name)
    paths, errors = expand([files.modules_dir])
    got = audit.audit_files(paths, [files.modules_dir], jobs=2)
    assert not errors and not got.errors
    anomalies = [(img.path.name, a.kind, a.severity) for img in got.images for a in img.anomalies]
    kvm = "kvm.ko" if name == "6.1" else "kvm.ko.xz"
    # 6.2+ disables those more than 16 bytes past kallsyms' symbol (test_for_valid_rec()), whatever
    # the generation (6.12-gcc12's are mprofile): the module names its kernel in its vermagic.
    notes = [a for img in got.images if img.path.name == kvm for a in img.anomalies]
    past = [int(re.search(r"nearest is \w+\+(0x[0-9a-f]+)", a.message)[1], 16) for a in notes]  # type: ignore[index]
    traceable = {
        (s.site.section, s.site.offset): s.site.traceable
        for img in got.images
        if img.path.name == kvm
        for s in img.sites
    }
    assert [traceable[a.section, a.offset] for a in notes] == [name == "6.1" or p <= 16 for p in past]
    assert anomalies == [(kvm, AnomalyKind.WEAK_BODY, Severity.NOTE)] * 4
    total = audit.summarise(got.images, "all")
    assert total.safety["live"] == 0
    asked = total.sites - total.safety["n/a"]
    assert total.safety["safe"] >= 0.999 * asked
    assert total.sites == counts(name).module_sites
    if files.kernel.generation == "ool":
        assert asked == 0
    if name == "6.1":
        groups = {g.group: g for g in audit.roll_up(got)}
        assert groups["fs/ext4"].images == 1 and groups["fs/ext4"].sites == 851


# -- ool stubs and records the kernel skips, made by editing a copy of the 7.2 vmlinux ----------


def _word_at_symbol(image: Image, name: str) -> int:
    syms = image.symbols
    return image.offset_of(int(syms.table["st_value"][syms.find(name)[0]]))


def _relative_addend_offset(image: Image, slot: int) -> int:
    """File offset of the r_addend of the R_PPC64_RELATIVE that fills the table slot at ``slot``."""
    sec = image.section(".rela.dyn")
    rela = image.relocations(sec)
    (n,) = (rela["r_offset"] == slot).nonzero()[0]
    return sec.offset + int(n) * rela.dtype.itemsize + 16


@pytest.mark.corpus
def test_ool_stubs_short_of_the_records_are_an_error_and_skipped_records_a_note(tmp_path: Path) -> None:
    """One stub fewer in ftrace_ool_stub_inittext than .init.text records: the last one gets none
    (ftrace_init_ool_stub: WARN_ON(index > count), ftrace bug). A record moved outside kernel text:
    ftrace_process_locs() skips it. An entry nop overwritten with mflr r0: the kernel's words."""
    src = require_kernel("7.2").vmlinux
    image = Image.load(src)
    result = scan(image)
    (table,) = result.records.tables
    first_text = next(s.record for s in result.sites if s.section == ".text")
    k = int(np.flatnonzero(table.values == first_text)[0])
    count_at = _word_at_symbol(image, "ftrace_ool_stub_inittext_count")
    addend_at = _relative_addend_offset(image, table.addr + 8 * k)
    outside = table.addr  # the table itself, in .init.data: not kernel text
    victim = next(s for s in result.sites if s.function == "do_one_initcall")
    path = tmp_path / "vmlinuz"
    data = bytearray(image.data)
    n = counts("7.2").init_text  # as many inittext stubs as .init.text records, then one fewer
    data[count_at : count_at + 4] = (n - 1).to_bytes(4, "little")
    data[addend_at : addend_at + 8] = outside.to_bytes(8, "little")
    data[victim.file_offset : victim.file_offset + 4] = ppc.MFLR_R0.to_bytes(4, "little")
    path.write_bytes(bytes(data))

    (img,) = audit.audit_files([path]).images
    errors = [a for a in img.anomalies if a.severity is Severity.ERROR]
    assert [(a.kind, a.function) for a in errors] == [
        (AnomalyKind.DANGLING, "do_one_initcall"),
        (AnomalyKind.OOL_STUBS, "ftrace_ool_stub_inittext"),
    ]
    assert errors[0].message.startswith(f"{victim.addr:#x}: expected (60000000) != found (7c0802a6)")
    assert f"{n - 1} stubs, {n} records want one here, none for 1 record" in errors[1].message
    inittext = {a.name: a for a in img.stubs}["ftrace_ool_stub_inittext"]
    assert (inittext.stub_count, inittext.used, inittext.need, inittext.covers) == (n - 1, n - 1, 1, False)
    (skipped,) = [a for a in img.anomalies if a.kind is AnomalyKind.SKIPPED_RECORDS]
    assert skipped.severity is Severity.NOTE and skipped.addr == outside and "1 record outside" in skipped.message
    assert img.counts.sites == counts("7.2").records - 2 and img.counts.skipped_records == 1
    result = _run(str(path), "--format", "sarif", "-o", str(tmp_path / "a.sarif"))
    assert result.exit_code == 1
    sarif = json.loads((tmp_path / "a.sarif").read_text())
    stubs = sarif["runs"][0]["artifacts"][0]["properties"]["ool_stubs"]
    assert [s["covers"] for s in stubs] == [True, True, False]


def test_percentages_are_whole_only_when_exact() -> None:
    assert [md.percent(n, d) for n, d in ((6, 6), (0, 6), (33_689, 33_690), (999_999, 10**6), (1, 10**6))] == [
        "100%",
        "0%",
        "99.997%",
        "99.999%",
        "0.001%",
    ]
    assert md.percent(0, 0) == "n/a"
    assert "(100% decided)" in md.audit_markdown(audit.Audit((_audit(FIXTURES / "bin" / "prof-le"),), ()))


def test_fail_on_with_the_report_in_a_file_says_why_it_exits_1(tmp_path: Path) -> None:
    """With -o FILE the report is not on the screen: exit 1 alone said nothing of the finding."""
    out = tmp_path / "a.json"
    result = CliRunner().invoke(
        app,
        ["audit", str(FIXTURES / "bin" / "anom-broken"), "--fail-on", "warning", "-o", str(out), "--format", "json"],
    )
    assert result.exit_code == 1 and out.exists()
    assert result.stderr == f"mcountrw: 1 error at or above --fail-on warning: see {out}\n", result.output
    assert CliRunner().invoke(app, ["audit", str(FIXTURES / "bin" / "clean"), "-o", str(out)]).stderr == ""


@pytest.mark.corpus
def test_an_mprofile_module_naming_no_kernel_version_is_taken_as_61_and_the_note_says_so(tmp_path: Path) -> None:
    """kvm.ko of the gcc-12 6.12 with its vermagic renamed: the module no longer says which kernel
    it is for, so its weak bodies are taken as 6.1 takes them (traceable), and each note says why."""
    from rewriter.elf.compress import Compression, decompress

    src = require_kernel("6.12-gcc12").modules_dir / "arch/powerpc/kvm/kvm.ko.xz"
    data = decompress(src, src.read_bytes(), Compression.XZ)
    assert data.count(b"\0vermagic=") == 1
    nameless = tmp_path / "kvm.ko"
    nameless.write_bytes(data.replace(b"\0vermagic=", b"\0xermagic="))
    (img,) = audit.audit_files([nameless]).images
    notes = _weak_notes(img)
    assert len(notes) == 4
    assert all("this image names no kernel version: taken to be 6.1" in a.message for a in notes)
    assert all(s.site.traceable for s in img.sites)
