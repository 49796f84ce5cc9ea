"""The command line contract: exit codes 0 / 1 findings / 2 bad input / 3 internal error on every path
(the console script and CliRunner), one-line errors, outputs, and the old command lines."""

from __future__ import annotations

import functools
import inspect
import json
import os
import re
import shlex
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import click
import pytest
import typer
from click.testing import Result
from conftest import FIXTURES, scan_table, unwrapped
from typer.models import CommandInfo
from typer.testing import CliRunner

from rewriter.cli import app
from rewriter.cli.audit import AuditFormat, DiffFormat, FailOn
from rewriter.cli.common import CallSlot
from rewriter.cli.exits import EXIT_CODES, ExitCode, kind_of
from rewriter.cli.plans import PlanFormat
from rewriter.cli.rewrite import Target
from rewriter.cli.scan import ScanFormat
from rewriter.elf.image import Image
from rewriter.errors import ArgumentError, InternalError, NoRoute, PlanFormatError, PlanRejected
from rewriter.generations import Generation, Variant
from rewriter.plan import Cmodx, Route
from rewriter.ppc import EncodingError
from rewriter.states import SiteState

PROF = FIXTURES / "bin" / "prof-le"
ROOT = FIXTURES.parent


def mcountrw(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "rewriter", *args], capture_output=True, text=True, cwd=cwd)


def assert_one_line_error(proc: subprocess.CompletedProcess[str], *words: str) -> None:
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("mcountrw: error: "), proc.stderr
    assert "Traceback" not in proc.stderr
    for w in words:
        assert w in lines[0]


def test_scan_table_json_and_csv_agree() -> None:
    table = mcountrw("scan", str(PROF))
    data = json.loads(mcountrw("scan", "--format", "json", str(PROF)).stdout)
    csv = mcountrw("scan", "--format", "csv", str(PROF)).stdout.splitlines()
    assert table.returncode == 0
    assert "generation mprofile: 6 sites (6 enabled->disabled), 6 traceable after boot" in unwrapped(table.stdout)
    assert data["images"][0]["generation"] == "mprofile"
    assert len(data["images"][0]["sites"]) == 6 == len(csv) - 1
    # The first eight columns are the old contract; new ones only ever go at the end.
    assert csv[0] == (
        "path,address,section,offset,function,variant,state,recorded,generation,record,boot_state,traceable,stub,source,"
        "listed_as"
    )
    for row in csv[1:]:
        cols = row.split(",")
        # mprofile: the record names the call slot itself.
        assert cols[8:] == ["mprofile", cols[1], "disabled", "1", "", "image", ""]


def test_scan_table_marks_what_the_kernel_cannot_trace() -> None:
    """An unrecorded site stays as it is and is untraceable; a recorded site holding words the
    kernel's init refuses turns ftrace off for the whole boot, so no site is traceable."""
    unrec = unwrapped(mcountrw("scan", str(FIXTURES / "bin" / "anom-unrecorded")).stdout).splitlines()
    assert "(2 enabled->disabled, 1 enabled->enabled), 2 traceable after boot" in unrec[0]
    row = next(r for r in scan_table("\n".join(unrec)) if r["function"] == "unrecorded_fn")
    assert (row["file->boot"], row["rec"], row["traceable"]) == ("enabled->enabled", "UNREC", "NO unrecorded")
    broken = unwrapped(mcountrw("scan", str(FIXTURES / "bin" / "anom-broken")).stdout).splitlines()
    # init stops at broken_fn: ok_toc, after it, keeps its `mflr r0; bl _mcount`
    assert "(1 broken->refused, 1 enabled->disabled, 1 enabled->enabled), 0 traceable after boot" in broken[0]
    assert broken[1].startswith("  FTRACE OFF after boot: 1 recorded site with words ftrace_init_nop() refuses")
    row = next(r for r in scan_table("\n".join(broken)) if r["function"] == "broken_fn")
    assert (row["file->boot"], row["traceable"]) == ("broken->REFUSED", "NO refused")
    assert "recorded" in row["every site"].split(", ")
    image = json.loads(mcountrw("scan", "--format", "json", str(FIXTURES / "bin" / "anom-broken")).stdout)["images"][0]
    assert [s["boot_state"] for s in image["sites"]] == ["disabled", None, "enabled"]
    assert not any(s["traceable"] for s in image["sites"]) and image["summary"]["ftrace_off"]
    assert image["summary"]["untraceable"] == {
        "not-loaded": 0, "unrecorded": 0, "refused": 1, "no-stub": 0, "duplicate": 0, "weak-body": 0,
        "ftrace-off": 2, "stub-unknown": 0, "unallocated": 0,
    }  # fmt: skip


def test_scan_table_columns_stay_aligned_with_long_section_names(tmp_path: Path) -> None:
    """A -ffunction-sections object's sections (.text.nonleaf_calls) are long: each column is as
    wide as its widest cell, so every row's cells start where the header's do. They ran into the
    next column, a different place on each row. (A relocatable file's call slot names its section,
    so the call slot column is the one that widens; one site nopped and unrecorded puts columns
    after it; its state, one for each traceable cell, is said above the table.)"""
    fixture = FIXTURES / "bin" / "patchable-fs-le.o"
    nopped = tmp_path / "one.o"
    done = mcountrw("nop", str(fixture), "--only", "leaf_add", "--drop-records", "-o", str(nopped))
    assert done.returncode == 0, done.stderr
    lines = mcountrw("scan", str(nopped)).stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if line.lstrip().startswith("call slot"))
    rows = lines[header + 1 :]
    assert len(rows) == 6 and any(len(r.split()[0]) > 20 for r in rows)
    starts = [lines[header].index(name) for name in ("rec", "traceable")]
    for row in rows:
        cells = row.split()
        assert [row.index(f" {cell}") + 1 for cell in cells[1:3]] == starts, row
        assert row.index(cells[0]) + len(cells[0]) == lines[header].index("call slot") + len("call slot")


def _scan_json(path: Path) -> dict[str, Any]:
    done = mcountrw("scan", "--format", "json", str(path))
    assert done.returncode == 0, done.stderr
    image: dict[str, Any] = json.loads(done.stdout)["images"][0]
    return image


def test_a_duplicate_record_turns_ftrace_off_at_boot_as_the_audit_says(tmp_path: Path) -> None:
    """mprofile: ftrace_process_locs() makes a record of each entry, and the second record of one
    `bl` finds the nop the first wrote: ftrace_bug() at boot. The scan said all traceable before."""
    data = bytearray((FIXTURES / "bin" / "clean").read_bytes())
    table = Image.load(FIXTURES / "bin" / "clean").section("__mcount_loc")
    data[table.offset + 8 : table.offset + 16] = data[table.offset : table.offset + 8]  # record 1 := record 0
    (tmp_path / "clean").write_bytes(bytes(data))
    image = _scan_json(tmp_path / "clean")
    assert image["summary"]["traceable"] == 0
    assert "1 place recorded more than once" in image["summary"]["ftrace_off"]
    assert image["summary"]["untraceable"]["duplicate"] == 1
    (twice,) = image["records"]["duplicates"]
    assert [s["function"] for s in image["sites"] if s["address"] == int(twice, 16)] == ["clean_leaf"]
    text = unwrapped(mcountrw("scan", str(tmp_path / "clean")).stdout)
    assert "FTRACE OFF after boot: 1 place recorded more than once" in text.splitlines()[1]


def test_a_duplicate_ool_record_leaves_the_boot_on_but_its_site_untraceable(tmp_path: Path) -> None:
    """ool: init leaves the entry nop, so both records pass it; enabling the second finds the
    first one's `b stub`. ftrace stays on for the boot; the duplicated site is not traceable."""
    image = Image.load(FIXTURES / "bin" / "ool-le.o")
    rela = image.section(".rela__patchable_function_entries")
    data = bytearray(image.data)
    data[rela.offset + 24 + 16 : rela.offset + 48] = data[rela.offset + 16 : rela.offset + 24]  # row 1's addend := 0's
    (tmp_path / "ool.o").write_bytes(bytes(data))
    got = _scan_json(tmp_path / "ool.o")
    assert got["summary"]["ftrace_off"] is None
    (twice,) = got["records"]["duplicates"]
    # (the nop that lost its record is no site: an ool site is known by its record)
    assert [s["record"] for s in got["sites"] if not s["traceable"]] == [twice]
    assert got["summary"]["untraceable"]["duplicate"] == 1
    assert got["summary"]["traceable"] == len(got["sites"]) - 1 == 4


def test_scan_patchable_object_names_the_first_nop_as_its_record() -> None:
    table = unwrapped(mcountrw("scan", str(FIXTURES / "bin" / "patchable-le.o")).stdout)
    assert "generation patchable: 6 sites (6 nopped->disabled), 6 traceable after boot" in table
    assert "records name the word 4 bytes before each call slot" in table
    image = json.loads(mcountrw("scan", "--format", "json", str(FIXTURES / "bin" / "patchable-le.o")).stdout)
    site = image["images"][0]["sites"][0]
    assert site == {
        "address": None, "section": ".text", "offset": 4, "function": "static_helper", "variant": "patchable",
        "state": "nopped", "recorded": True, "record": ".text+0x0", "boot_state": "disabled", "traceable": True,
        "stub": None, "source": "image", "listed_as": None,
    }  # fmt: skip


def test_scan_generation_overrides_detection() -> None:
    forced = json.loads(mcountrw("scan", "--format", "json", "--generation", "patchable", str(PROF)).stdout)
    image = forced["images"][0]
    # prof-le's records name `bl _mcount` words: read as patchable entries, none is a site.
    assert image["generation"] == "patchable" and image["records"]["count"] == 6
    assert len(image["records"]["unmatched"]) == 6 - len(image["sites"])
    # obeyed, and said: the JSON names what the contents say, the table says it in a line
    assert image["generation_override"] == {"detected": "mprofile", "reason": "calls to _mcount"}
    table = unwrapped(mcountrw("scan", "--generation", "patchable", str(PROF)).stdout).splitlines()
    assert table[1] == (
        "  --generation patchable overrides what the image says: mprofile (calls to _mcount); "
        "what follows is the image read as patchable"
    )


def test_rewrite_with_a_contradicting_generation_is_refused(tmp_path: Path) -> None:
    """scan and audit obey a --generation the contents contradict (and say so); a rewrite does not:
    the layout decides what it writes. Exit 2, one line, nothing written; an agreeing one runs."""
    for name, given, detected in (("patchable-le.o", "ool", "patchable"), ("ool-le.o", "patchable", "ool")):
        out = tmp_path / name
        proc = mcountrw("nop", str(FIXTURES / "bin" / name), "--generation", given, "--drop-records", "-o", str(out))
        assert proc.returncode == 2 and not out.exists() and not list(tmp_path.iterdir())
        assert proc.stderr.splitlines() == [
            f"mcountrw: error: {FIXTURES / 'bin' / name}: --generation {given} contradicts what the image says: "
            f"{detected} ({_REASONS[detected]}); a rewrite goes by the image's own layout (scan and audit can "
            f"read it as {given})"
        ]
    agreeing = ("nop", str(FIXTURES / "bin" / "ool-le.o"), "--generation", "ool", "--drop-records")
    assert mcountrw(*agreeing, "-o", str(tmp_path / "o.o")).returncode == 0


_REASONS = {
    "patchable": "every recorded nop is followed by a nop: two patchable nops",
    "ool": "6 of 6 recorded nops not followed by a nop: one patchable nop",
}


def test_scan_generation_that_agrees_overrides_nothing() -> None:
    for args in (("--generation", "mprofile"), ()):
        image = json.loads(mcountrw("scan", "--format", "json", *args, str(PROF)).stdout)["images"][0]
        assert image["generation"] == "mprofile" and image["generation_override"] is None
    obj = str(FIXTURES / "bin" / "patchable-le.o")
    forced = json.loads(mcountrw("scan", "--format", "json", "--generation", "ool", obj).stdout)["images"][0]
    assert forced["generation_override"] == {
        "detected": "patchable", "reason": "every recorded nop is followed by a nop: two patchable nops"
    }  # fmt: skip


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (("scan", "--generation", "gcc5"), ("--generation", "'gcc5'", "'mprofile', 'patchable', 'ool'")),
        (("scan", "--generation", "ool", "--mcount-addr", "0x100"), ("--mcount-addr", "mprofile")),
        (("policy", "check", "--generation", "6.12", str(ROOT / "examples" / "keep-core.policy")), ("--generation",)),
    ],
)
def test_bad_generation_is_bad_input(args: tuple[str, ...], words: tuple[str, ...]) -> None:
    assert_one_line_error(mcountrw(*args, str(PROF)), *words)


def test_scan_of_a_directory_reports_bad_files_and_scans_the_rest(tmp_path: Path) -> None:
    (tmp_path / "good.o").write_bytes((FIXTURES / "bin" / "clean.o").read_bytes())
    (tmp_path / "bad.ko").write_bytes(b"\x7fELF this is not an ELF file at all")
    proc = mcountrw("scan", "--format", "json", str(tmp_path))
    assert proc.returncode == 2
    assert "bad.ko" in proc.stderr and proc.stderr.count("\n") == 1
    images = json.loads(proc.stdout)["images"]
    assert [Path(i["path"]).name for i in images] == ["good.o"]


def test_scan_of_a_missing_file_is_bad_input(tmp_path: Path) -> None:
    assert_one_line_error(mcountrw("scan", str(tmp_path / "nope")), "nope", "No such file or directory")


def test_plan_exits_1_when_no_legal_route() -> None:
    ok = mcountrw("plan", "--from", "nopped", "--to", "enabled", "--format", "json")
    assert ok.returncode == 0 and json.loads(ok.stdout)["format"] == "mcountrw-plan"
    refused = mcountrw("plan", "--from", "nopped", "--to", "enabled", "--cmodx", "3.0")
    assert refused.returncode == 1 and "3.0" in refused.stderr


@pytest.mark.parametrize(("name", "code"), [("naive-enable", 1), ("reverse-disable", 1), ("b8-enable", 0),
                                            ("mflr-first-enable", 0), ("disable", 0)])  # fmt: skip
def test_check_plan_builtins(name: str, code: int) -> None:
    proc = mcountrw("check-plan", "--builtin", name)
    assert proc.returncode == code
    assert ("SAFE" if code == 0 else "UNSAFE") in proc.stdout


def test_check_plan_reads_a_plan_file_and_rejects_garbage(tmp_path: Path) -> None:
    good = tmp_path / "plan.json"
    good.write_text(mcountrw("plan", "--from", "enabled", "--to", "nopped", "--format", "json").stdout)
    assert mcountrw("check-plan", str(good), "--tasks", "3").returncode == 0
    bad = tmp_path / "bad.json"
    bad.write_text('{"format": "mcountrw-plan", "version": 1}')
    assert_one_line_error(mcountrw("check-plan", str(bad)), "bad.json")


def test_plan_can_be_made_for_stale_fetch_and_check_plan_proves_it(tmp_path: Path) -> None:
    """check-plan --stale-fetch calls every plain `plan` output from nopped UNSAFE; `plan` had no way
    to ask for the safe one (an isync IPI before each barrier), which the library makes."""
    made, plain = tmp_path / "sf.json", tmp_path / "plain.json"
    made.write_text(mcountrw("plan", "--from", "nopped", "--to", "enabled", "--stale-fetch", "--format", "json").stdout)
    plain.write_text(mcountrw("plan", "--from", "nopped", "--to", "enabled", "--format", "json").stdout)
    assert json.loads(made.read_text())["stale_fetch"] is True
    assert mcountrw("check-plan", str(made), "--stale-fetch").returncode == 0
    assert mcountrw("check-plan", str(plain), "--stale-fetch").returncode == 1
    text = mcountrw("plan", "--from", "nopped", "--to", "enabled", "--stale-fetch").stdout
    assert "barrier: isync on every CPU (IPI), then synchronize_rcu_tasks()" in text
    refused = mcountrw("plan", "--from", "nopped", "--to", "enabled", "--stale-fetch", "--offline")
    assert_one_line_error(refused, "--offline")


def test_an_offline_plan_is_checked_without_tasks_and_says_so(tmp_path: Path) -> None:
    """The checker runs no task during an offline plan; the SAFE line printed the --tasks it was
    given (`3 tasks x 2 entries`), and the 2019 race read SAFE under it. Options about tasks are
    refused for an offline plan; a runtime plan still reports what it explored."""
    offline = tmp_path / "off.json"
    plan = mcountrw("plan", "--from", "nopped", "--to", "enabled", "--offline", "--format", "json")
    offline.write_text(plan.stdout)
    proc = mcountrw("check-plan", str(offline))
    assert proc.returncode == 0 and "offline: no task runs while the image is edited" in proc.stdout, proc.stdout
    assert "tasks x" not in proc.stdout
    refused = mcountrw("check-plan", str(offline), "--tasks", "3", "--stale-fetch")
    assert_one_line_error(refused, "off.json", "--tasks, --stale-fetch do not apply")
    assert mcountrw("check-plan", str(offline), "--no-stale-fetch").returncode == 0  # what an offline check does
    # --cmodx is about what a running CPU may execute while a word changes: none runs offline
    assert_one_line_error(mcountrw("check-plan", str(offline), "--cmodx", "3.0"), "off.json", "--cmodx does not")
    runtime = mcountrw("check-plan", "--builtin", "b8-enable", "--tasks", "3")
    assert runtime.returncode == 0 and "3 tasks x 2 entries" in runtime.stdout


def test_the_verdict_line_prints_the_plan_file_name_escaped(tmp_path: Path) -> None:
    """The error lines escaped a plan file's name, the SAFE line printed it raw: a name can hold a
    terminal's escape sequence."""
    named = tmp_path / "p\x1b[2J.json"
    named.write_text(mcountrw("plan", "--from", "nopped", "--to", "enabled", "--format", "json").stdout)
    proc = mcountrw("check-plan", str(named))
    assert proc.returncode == 0 and proc.stdout.startswith(f"{tmp_path}/p\\x1b[2J.json: SAFE"), proc.stdout


def test_apply_refuses_to_overwrite_its_input(tmp_path: Path) -> None:
    copy = tmp_path / "prog"
    copy.write_bytes(PROF.read_bytes())
    before = copy.read_bytes()
    assert_one_line_error(mcountrw("nop", str(copy), "-o", str(copy)), "--in-place")
    assert copy.read_bytes() == before


def test_apply_in_place_with_backup_and_dry_run(tmp_path: Path) -> None:
    copy = tmp_path / "prog"
    copy.write_bytes(PROF.read_bytes())
    dry = mcountrw("nop", str(copy), "--dry-run")
    assert dry.returncode == 0 and "would change 6 sites" in dry.stderr
    assert copy.read_bytes() == PROF.read_bytes() and sorted(p.name for p in tmp_path.iterdir()) == ["prog"]
    done = mcountrw("nop", str(copy), "--in-place", "--backup", "--log", str(tmp_path / "log"))
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "prog.orig").read_bytes() == PROF.read_bytes()
    assert mcountrw("verify", str(tmp_path / "prog.orig"), str(copy), "--log", str(tmp_path / "log")).returncode == 0


def test_verify_exit_codes_and_undo(tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert mcountrw("apply", str(PROF), "--to", "disabled", "-o", str(out), "--only", "sum8").returncode == 0
    log = tmp_path / "out.mcountrw.jsonl"
    assert mcountrw("verify", str(PROF), str(out), "--log", str(log)).returncode == 0
    other = FIXTURES / "bin" / "std-le"
    assert mcountrw("verify", str(other), str(out), "--log", str(log)).returncode == 1
    back = tmp_path / "back"
    assert mcountrw("undo", str(out), "--log", str(log), "-o", str(back)).returncode == 0
    assert back.read_bytes() == PROF.read_bytes()
    assert_one_line_error(mcountrw("undo", str(other), "--log", str(log), "-o", str(tmp_path / "x")), "another file")
    assert not (tmp_path / "x").exists()
    # PROF is the log's input: not another file, the original (tests/test_cli_hygiene.py)
    again = mcountrw("undo", str(PROF), "--log", str(log), "-o", str(tmp_path / "x"))
    assert again.returncode == 0 and "nothing to undo: it already is the original" in again.stderr


def test_signed_module_needs_strip_signature(corpus, tmp_path: Path) -> None:
    src = corpus.modules_dir / "fs/nls/nls_utf8.ko"
    assert_one_line_error(mcountrw("nop", str(src), "-o", str(tmp_path / "m.ko")), "signed module", "--strip-signature")
    assert not (tmp_path / "m.ko").exists()
    # --drop-records too: a nopped site that stays recorded is refused (the kernel's boot check).
    assert (
        mcountrw("nop", str(src), "-o", str(tmp_path / "m.ko"), "--strip-signature", "--drop-records").returncode == 0
    )


def test_signed_module_stage_images_lose_the_signature_too(corpus, tmp_path: Path) -> None:
    """Every stage image of a signed module rewritten with --strip-signature ends where the ELF
    ends, as the output does: the old signature no longer matches their words."""
    from rewriter.elf.image import Image

    src = corpus.modules_dir / "fs/nls/nls_utf8.ko"
    signed = Image.load(src)
    assert signed.signature is not None and signed.elf_end < len(signed.data)
    args = ("nop", str(src), "-o", str(tmp_path / "m.ko"), "--strip-signature", "--drop-records")
    assert mcountrw(*args, "--stage-images", str(tmp_path / "st")).returncode == 0
    stages = sorted((tmp_path / "st").iterdir())
    assert stages
    for stage in stages:
        data = stage.read_bytes()
        assert len(data) == signed.elf_end, stage.name
        assert Image.load(stage).signature is None, stage.name
    assert Image.load(tmp_path / "m.ko").signature is None


def test_bad_option_values_are_bad_input() -> None:
    assert_one_line_error(mcountrw("apply", str(PROF), "--to", "sideways", "--dry-run"), "--to")
    assert_one_line_error(mcountrw("scan", "--format", "xml", str(PROF)), "--format")


def test_fast_scan_json_equals_the_plain_json_dump() -> None:
    import json as _json

    from rewriter.batch import scan_one
    from rewriter.report import scanfmt

    names = ("prof-le", "prof-le.o", "std-le", "anom-dangling", "anom-broken", "anom-unrecorded", "patchable-le.o")
    results = [scan_one(FIXTURES / "bin" / n).scan for n in names]
    fast = scanfmt.scans_json_text(results, ['x: "quoted" error'])
    assert fast == _json.dumps(scanfmt.scans_json(results, ['x: "quoted" error']), separators=(",", ":"))


def test_write_lines_read_by_pattern_equal_the_json_reading(tmp_path: Path) -> None:
    """The log reader's fast path for write lines gives exactly what json gives, and the writer's
    fast path writes exactly what json writes (sorted keys)."""
    import json as _json

    from rewriter.edits import KINDS
    from rewriter.log import load

    out = tmp_path / "out"
    assert mcountrw("nop", str(FIXTURES / "bin" / "prof-le.o"), "-o", str(out), "--drop-records").returncode == 0
    log = tmp_path / "out.mcountrw.jsonl"
    lines = log.read_text().splitlines()[1:-1]
    records = [_json.loads(line) for line in lines]
    slow = [KINDS[r["type"]](r) for r in records if r["type"] not in ("barrier", "sites")]  # sites lines: not edits
    assert list(load(log).edits) == slow and len(slow) > 12
    writes = [line for line, r in zip(lines, records, strict=True) if r["type"] == "write"]
    assert len(writes) == 12 and all(_json.dumps(_json.loads(w), sort_keys=True) == w for w in writes)


def test_log_round_trips_names_that_need_escapes() -> None:
    from rewriter.edits import WordWrite
    from rewriter.elf.compress import Compression
    from rewriter.elf.image import Kind
    from rewriter.log import FileFacts, Header, Log, dumps, loads
    from rewriter.states import SiteState, Slot

    facts = FileFacts("a", "0" * 64, 1, "0" * 64, Compression.NONE)
    writes = tuple(
        WordWrite(
            0,
            0x40 + 4 * i,
            None if i else 0x1000,
            ".text",
            4 * i,
            name,
            Slot.B,
            0x48000001,
            0x60000000,
            SiteState.ENABLED,
            SiteState.DISABLED,
        )
        for i, name in enumerate(['quote"d', "back\\slash", "caf\u00e9", None] * 20)
    )
    log = Log(Header("t", Kind.OBJECT, "little", facts, facts, SiteState.DISABLED, None, {}), writes)
    assert loads(dumps(log).decode(), "x").edits == writes


# -- one exit-code table, on every path ------------------------------------------------------------
# rewriter.cli.exits: 0 success, 1 findings, 2 bad input (one line), 3 internal error. The same
# table must hold through the console script's path (python3 -m rewriter) and typer's CliRunner.


def invoke(*args: str) -> Result:
    return CliRunner().invoke(app, list(args))


def assert_same_on_both_paths(args: tuple[str, ...], code: int) -> str:
    """Run ``args`` in a subprocess and through CliRunner: the same code, the same stderr."""
    proc, result = mcountrw(*args), invoke(*args)
    assert proc.returncode == result.exit_code == code, (proc.returncode, result.exit_code, proc.stderr)
    assert proc.stderr == result.stderr
    assert "Traceback" not in proc.stderr
    return proc.stderr


END_PROBE = """
import atexit, sys
atexit.register(lambda: sys.stderr.write("shutdown ran\\n"))
from rewriter.cli import {entry}
sys.argv = ["mcountrw", *sys.argv[1:]]
{entry}()
"""


@pytest.mark.parametrize(
    ("args", "code"),
    [
        (("scan", "--format", "json", str(FIXTURES / "bin")), 0),  # 31 kB of stdout, flushed in pieces
        (("audit", str(FIXTURES / "bin" / "anom-r0live"), "--fail-on", "warning"), 1),
        (("scan", "/nonexistent/vmlinux"), 2),
    ],
)
def test_the_process_ends_with_its_command(args: tuple[str, ...], code: int) -> None:
    """``run_process`` (the console script, ``python3 -m rewriter``) ends the process once the
    command is over, without Python's shutdown (``end_now``): an atexit hook never runs, yet the
    exit code and every byte of stdout and stderr are the command's, as with ``run`` alone, which
    leaves the ending to Python."""
    ends = {
        entry: subprocess.run(
            [sys.executable, "-c", END_PROBE.format(entry=entry), *args], capture_output=True, text=True
        )
        for entry in ("run_process", "run")
    }
    fast, slow = ends["run_process"], ends["run"]
    assert fast.returncode == slow.returncode == code, (fast.stderr, slow.stderr)
    assert slow.stderr.endswith("shutdown ran\n") and "shutdown ran" not in fast.stderr
    assert fast.stderr == slow.stderr.removesuffix("shutdown ran\n")
    assert fast.stdout == slow.stdout and (fast.stdout or code == 2)


EXIT_CASES = [
    pytest.param(("scan", "/nonexistent/vmlinux"), 2, "/nonexistent/vmlinux", id="missing-file"),
    pytest.param(("nop", str(ROOT / "README.md"), "--dry-run"), 2, "not an ELF file", id="not-elf"),
    pytest.param(("scan", "--format", "xml", str(PROF)), 2, "'xml' is not one of 'table', 'json', 'csv'", id="choice"),
    pytest.param(("apply", str(PROF), "--to", "sideways", "--dry-run"), 2, "--to", id="choice-to"),
    pytest.param(("plan", "--from", "nopped", "--to", "on"), 2, "--to", id="choice-state"),
    pytest.param(("audit", str(PROF), "--fail-on", "sometimes"), 2, "--fail-on", id="choice-fail-on"),
    pytest.param(("plan", "--from", "enabled", "--to", "nopped", "--cmodx", "2.0"), 2, "--cmodx", id="choice-cmodx"),
    pytest.param(("apply", str(PROF), "--to", "nopped", "--route", "b16"), 2, "--route", id="choice-route"),
    pytest.param(("check-plan", "--builtin", "b8-enable", "--tasks", "9"), 2, "--tasks", id="range"),
    pytest.param(("scan", "--mcount-addr", "zz", str(PROF)), 2, "'zz' is not a number", id="address"),
    pytest.param(
        ("apply", str(PROF), "--dry-run"),
        2,
        "Missing option '--to'. Choose from: enabled, disabled, nopped",
        id="missing-option",
    ),
    pytest.param(("frobnicate",), 2, "No such command 'frobnicate'", id="no-such-command"),
    pytest.param(("prenop", "--undo", "--verify", "x"), 2, "give --undo or --verify, not both", id="options"),
    pytest.param(("plan", "--from", "nopped", "--to", "enabled", "--cmodx", "3.0"), 1, "", id="no-route"),
    pytest.param(("check-plan", "--builtin", "naive-enable"), 1, None, id="unsafe"),
    pytest.param(("audit", str(FIXTURES / "bin" / "anom-broken"), "--format", "json"), 1, None, id="anomalies"),
    pytest.param(("scan", str(PROF)), 0, None, id="ok"),
]


@pytest.mark.parametrize(("args", "code", "words"), EXIT_CASES)
def test_exit_codes_are_the_same_on_every_path(args: tuple[str, ...], code: int, words: str | None) -> None:
    stderr = assert_same_on_both_paths(args, code)
    if words is None:  # findings and success say nothing on stderr
        assert stderr == ""
    elif code == 1:
        assert stderr.startswith("mcountrw: no legal route: site 0: ") and stderr.count("\n") == 1
    else:
        assert stderr.startswith("mcountrw: error: ") and stderr.count("\n") == 1, stderr
        assert words in stderr


def test_no_legal_route_in_apply_is_a_finding_on_both_paths(tmp_path: Path) -> None:
    nopped, out = tmp_path / "nopped", tmp_path / "enabled"
    assert mcountrw("nop", str(FIXTURES / "bin" / "std-le"), "-o", str(nopped)).returncode == 0
    stderr = assert_same_on_both_paths(("apply", str(nopped), "--to", "enabled", "--route", "b8", "-o", str(out)), 1)
    assert stderr.startswith("mcountrw: no legal route: ") and "guards nothing" in stderr
    assert not out.exists()


def test_a_bad_plan_file_is_bad_input_naming_the_file(tmp_path: Path) -> None:
    plan = tmp_path / "p.json"
    plan.write_text('{"format": "mcountrw-plan", "version": 1, "mode": "offline", "sites": []}')
    stderr = assert_same_on_both_paths(("check-plan", str(plan)), 2)
    assert stderr == f"mcountrw: error: {plan}: sites: empty (a plan names at least one site)\n"
    plan.write_bytes(b"\xff\xfe")
    assert (
        assert_same_on_both_paths(("check-plan", str(plan)), 2)
        == f"mcountrw: error: {plan}: not a plan (not UTF-8 text)\n"
    )
    missing = tmp_path / "missing.json"
    stderr = assert_same_on_both_paths(("check-plan", str(missing)), 2)
    assert stderr == f"mcountrw: error: {missing}: No such file or directory\n"


BOOM = "read back enabled, planned nopped (6 sites differ)"
RAISE_IN_APPLY = """
import sys
import rewriter.files
from rewriter.errors import InternalError
def boom(*args, **kwargs):
    raise {error}
rewriter.files.apply_file = boom
sys.argv = ["mcountrw", *sys.argv[1:]]
from rewriter.cli import run
run()
"""


@pytest.mark.parametrize(
    ("error", "line"),
    [
        (f"InternalError({BOOM!r})", f"mcountrw: internal error: {BOOM}; "),
        ("KeyError('slot')", "mcountrw: internal error: KeyError: 'slot'; "),  # any other exception: a bug
    ],
)
def test_internal_errors_exit_3_and_ask_for_a_report(
    error: str, line: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import rewriter.files

    args = ("nop", str(PROF), "-o", str(tmp_path / "out"))
    script = RAISE_IN_APPLY.format(error=error)
    proc = subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True)

    def boom(*_: object, **__: object) -> None:
        exec(f"raise {error}", {"InternalError": InternalError})

    monkeypatch.setattr(rewriter.files, "apply_file", boom)
    result = invoke(*args)
    assert proc.returncode == result.exit_code == 3
    assert proc.stderr == result.stderr and proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.startswith(line)
    assert "please report it with the command line" in proc.stderr and "mcountrw --version" in proc.stderr
    # MCOUNTRW_DEBUG=1: the traceback, for the report.
    env = {**os.environ, "MCOUNTRW_DEBUG": "1"}
    debug = subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True, env=env)
    assert debug.returncode != 0 and "Traceback" in debug.stderr
    assert not (tmp_path / "out").exists()


def test_the_table_has_one_row_per_kind_and_subclasses_first() -> None:
    kinds = [row.error for row in EXIT_CODES]
    assert kind_of(NoRoute("x")).code is ExitCode.FINDINGS
    assert kind_of(PlanRejected("x")).code is ExitCode.BAD_INPUT
    assert kind_of(PlanFormatError("x")).code is ExitCode.BAD_INPUT
    assert kind_of(EncodingError("x")).code is ExitCode.BAD_INPUT
    assert kind_of(InternalError("x")).code is ExitCode.INTERNAL
    assert kind_of(ZeroDivisionError()).code is ExitCode.INTERNAL
    for i, a in enumerate(kinds):  # a row after its base would never match
        assert not any(issubclass(a, b) for b in kinds[:i]), a


# -- prenop: one mode, its options checked in one place ---------------------------------------------


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--undo", "--verify"), "give --undo or --verify, not both"),
        (("--policy", "p", "--in-place", "--against", "x"), "--against goes with --verify"),
        (("--undo", "--in-place", "--against", "x"), "--against goes with --verify"),
        (("--policy", "p", "--in-place", "--sign-key", "k"), "--sign-key and --sign-cert go together"),
        (("--policy", "p", "--in-place", "--sign-key", "k", "--sign-cert", "c", "--strip-signature"),
         "give --sign-key/--sign-cert (re-sign) or --strip-signature, not both"),
        (("--in-place",), "--policy FILE is required (or --undo / --verify)"),
        (("--dry-run",), "--policy FILE is required (or --undo / --verify)"),
        (("--undo", "--in-place", "--policy", "p"), "--undo and --verify take no --policy or signing options"),
        (("--verify", "--strip-signature"), "--undo and --verify take no --policy or signing options"),
        (("--policy", "p"), "no output: give --in-place or -o OUT (or --dry-run)"),
        (("--undo",), "no output: give --in-place or -o OUT (or --dry-run)"),
        (("--verify", "-o", "out"), "--verify writes nothing: drop --in-place / -o"),
        (("--policy", "p", "--in-place", "--hash", "md5"), "'md5' is not one of 'sha256', 'sha384', 'sha512'"),
    ],
)  # fmt: skip
def test_prenop_refuses_options_that_do_not_go_together(args: tuple[str, ...], message: str, tmp_path: Path) -> None:
    """Checked before anything is read: the paths and the policy named do not even exist."""
    result = invoke("prenop", *args, str(tmp_path / "nowhere"))
    assert result.exit_code == 2 and result.stderr.count("\n") == 1, result.output
    assert result.stderr.startswith("mcountrw: error: ") and message in result.stderr
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("flags", "mode"),
    [
        ((False, False, False), "PRENOP"),
        ((False, False, True), "DRY_RUN"),
        ((True, False, False), "UNDO"),
        ((True, False, True), "UNDO_DRY_RUN"),
        ((False, True, False), "VERIFY"),
    ],
)
def test_prenop_mode_is_one_value(flags: tuple[bool, bool, bool], mode: str) -> None:
    from rewriter.cli.prenop import MODES, Mode, _mode

    assert _mode(*flags) is Mode[mode]
    assert set(MODES) == set(Mode)


def test_prenop_verify_with_dry_run_is_refused() -> None:
    """--verify writes nothing anyway: --dry-run with it was accepted and did nothing."""
    from rewriter.cli.prenop import _mode

    with pytest.raises(ArgumentError, match="--verify writes nothing anyway: drop --dry-run"):
        _mode(False, True, True)


# -- the command lines of the docs and the build scripts still parse, and mean the same -------------


def _commands(typer_app: typer.Typer, prefix: str = "") -> Iterator[tuple[str, CommandInfo]]:
    for info in typer_app.registered_commands:
        yield prefix + (info.name or ""), info
    for group in typer_app.registered_groups:
        assert group.typer_instance is not None
        yield from _commands(group.typer_instance, f"{prefix}{group.name} ")


def parse(monkeypatch: pytest.MonkeyPatch, *args: str) -> tuple[str, dict[str, Any]]:
    """The command a line runs and the values its function is called with, as typer converts them;
    each command's function is replaced by one that only records them."""
    seen: list[tuple[str, dict[str, Any]]] = []
    for name, info in _commands(app):
        assert info.callback is not None

        def record(fn: Callable[..., None], name: str = name) -> Callable[..., None]:
            @functools.wraps(fn)
            def recorded(**kwargs: Any) -> None:
                seen.append((name, kwargs))

            return recorded

        monkeypatch.setattr(info, "callback", record(info.callback))
    result = invoke(*args)
    assert result.exit_code == 0 and len(seen) == 1, (args, result.output)
    return seen[0]


OLD_LINES = [
    # README.md, docs/*.md
    ("scan --format json -o sites.json K", "scan", {"fmt": ScanFormat.JSON, "output": Path("sites.json")}),
    ("scan --mcount-addr 0xc000000000001234 --generation mprofile K", "scan",
     {"mcount_addr": 0xC000000000001234, "generation": Generation.MPROFILE}),
    ("scan -j 2 --all --format csv K", "scan", {"jobs": 2, "show_all": True, "fmt": ScanFormat.CSV}),
    ("plan --from nopped --to enabled --cmodx 3.0", "plan",
     {"from_": SiteState.NOPPED, "to": SiteState.ENABLED, "cmodx": Cmodx.V3_0, "fmt": PlanFormat.TEXT}),
    # cmodx None: not given, ISA 3.1 (None lets an --offline plan refuse it)
    ("plan --generation ool --from disabled --to enabled --format json", "plan",
     {"generation": Generation.OOL, "fmt": PlanFormat.JSON, "cmodx": None}),
    ("plan --variant mprofile-std --route b8 --offline --from enabled --to nopped", "plan",
     {"variant": Variant.MPROFILE_STD, "route": Route.B8, "offline": True}),
    # entries None: not given, the default 2 (None lets an offline plan refuse the options it ignores)
    ("check-plan --builtin b8-enable --tasks 3", "check-plan", {"builtin": "b8-enable", "tasks": 3, "entries": None}),
    ("check-plan plan.json --cmodx 3.0 --no-stale-fetch --entries 4", "check-plan",
     {"plan_file": "plan.json", "cmodx": Cmodx.V3_0, "stale_fetch": False, "entries": 4}),  # as given: ./- is no -
    ("nop K -o vmlinux.nop --exclude do_one_initcall --drop-records", "nop",
     {"output": Path("vmlinux.nop"), "exclude": ["do_one_initcall"], "drop_records": True}),
    ("apply prog --to disabled -o prog.off --stage-images stages/", "apply",
     {"to": Target.DISABLED, "stage_images": Path("stages")}),
    ("apply prog --to nopped --addr 0x10000eb4 --addr 4096 --addr .text+0x14 --route mflr-first --dry-run", "apply",
     {"to": Target.NOPPED, "addr": [CallSlot(None, 0x10000EB4), CallSlot(None, 4096), CallSlot(".text", 0x14)],
      "route": Route.MFLR_FIRST, "dry_run": True}),
    ("verify K vmlinux.nop --log vmlinux.nop.mcountrw.jsonl", "verify", {"log": Path("vmlinux.nop.mcountrw.jsonl")}),
    ("undo vmlinux.nop --log L --in-place", "undo", {"in_place": True, "output": None}),
    ("audit K M --format sarif -o audit.sarif --fail-on warning", "audit",
     {"fmt": AuditFormat.SARIF, "fail_on": FailOn.WARNING, "paths": [Path("K"), Path("M")]}),
    ("audit M -j 2 --format html -o audit.html", "audit",
     {"jobs": 2, "fmt": AuditFormat.HTML, "fail_on": FailOn.ERROR}),
    ("diff old/kernel new/kernel --format json --generation patchable --generation ool", "diff",
     {"fmt": DiffFormat.JSON, "generation": [Generation.PATCHABLE, Generation.OOL]}),
    ("policy check examples/keep-core.policy K M --generation patchable", "policy check",
     {"policy_file": Path("examples/keep-core.policy"), "images": [Path("K"), Path("M")],
      "generation": Generation.PATCHABLE}),
    # docs/build-integration/mcountrw.mk and prenop-installed-kernel.sh
    ("prenop --policy ftrace.policy --in-place --replace-stale-logs --log-dir logs/vmlinux --jobs 4 vmlinux",
     "prenop", {"policy": Path("ftrace.policy"), "in_place": True, "replace_stale_logs": True, "jobs": 4}),
    ("prenop --policy P --in-place --replace-stale-logs --log-dir logs/modules "
     "--sign-key certs/signing_key.pem --sign-cert certs/signing_key.x509 --hash sha512 MODLIB", "prenop",
     {"sign_key": Path("certs/signing_key.pem"), "sign_cert": Path("certs/signing_key.x509"), "hash_name": "sha512"}),
    ("prenop --undo --in-place --log-dir logs/modules MODLIB", "prenop", {"undo": True, "in_place": True}),
    ("prenop --verify --log-dir logs vmlinux MODULES --against pristine", "prenop",
     {"verify": True, "against": Path("pristine")}),
    ("prenop --policy P --dry-run --report r.json --reproducible -o out T", "prenop",
     {"dry_run": True, "report": Path("r.json"), "reproducible": True, "hash_name": "sha256"}),
]  # fmt: skip


@pytest.mark.parametrize(("line", "command", "params"), OLD_LINES, ids=[line for line, _, _ in OLD_LINES])
def test_old_command_lines_parse_and_mean_the_same(
    line: str, command: str, params: dict[str, object], monkeypatch: pytest.MonkeyPatch
) -> None:
    path, parsed = parse(monkeypatch, *line.split())
    assert path == command
    for name, value in params.items():
        assert parsed[name] == value, name


def _doc_lines() -> list[str]:
    """Every `mcountrw ...` line of a code block in README.md and docs/*.md that is a real command
    line (not a synopsis with | [ ] or ( )), continuation lines joined, comments dropped."""
    lines = []
    for doc in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        block, pending = False, ""
        for raw in doc.read_text().splitlines():
            if raw.startswith("```"):
                block = not block
                continue
            text = (pending + raw).rstrip()
            pending = text[:-1] + " " if block and text.endswith("\\") else ""
            command = text.strip().removeprefix("$ ")
            if block and not pending and command.startswith("mcountrw "):
                command = command.split(" # ")[0].strip()
                if not any(c in command for c in "|[]()"):
                    lines.append(command)
    return lines


def test_every_command_line_in_the_docs_parses(monkeypatch: pytest.MonkeyPatch) -> None:
    lines = _doc_lines()
    assert len(lines) >= 25 and "mcountrw check-plan --builtin b8-enable --tasks 3" in lines
    for line in lines:
        words = shlex.split(line)[1:]
        assert parse(monkeypatch, *words)[0] in (words[0], f"{words[0]} {words[1]}")


def test_the_build_scripts_use_only_options_that_exist() -> None:
    """mcountrw.mk and prenop-installed-kernel.sh: every --option they pass to mcountrw exists."""
    prenop_options = {o for p in typer.main.get_command(app).commands["prenop"].params for o in p.opts}  # type: ignore[attr-defined]
    for script in ("mcountrw.mk", "prenop-installed-kernel.sh"):
        text = (ROOT / "docs" / "build-integration" / script).read_text()
        used = set(re.findall(r"(?<![\w-])(--[a-z][a-z-]+)", text))
        assert used and used <= prenop_options | {"--jobs"}, used - prenop_options


def test_help_and_version_and_completion() -> None:
    assert mcountrw("--version").stdout.startswith("mcountrw ")
    assert "Usage: mcountrw scan" in invoke("scan", "--help").output
    completion = subprocess.run([sys.executable, "-m", "rewriter"], capture_output=True, text=True,
                                env={**os.environ, "_MCOUNTRW_COMPLETE": "complete_bash",
                                     "COMP_WORDS": "mcountrw apply x --to ", "COMP_CWORD": "4"})  # fmt: skip
    assert completion.stdout.split() == ["enabled", "disabled", "nopped"]


# -- start-up: a command imports only what it needs ------------------------------------------


def test_the_entry_point_lists_the_commands_as_the_full_app_does() -> None:
    """`mcountrw --help` lists each command from the table in rewriter.cli.main, without importing
    it: the table's summaries are the commands' own, and the listing is the full app's."""
    from rewriter.cli.main import COMMANDS, GROUPS, entry_app, unwrapped

    group = typer.main.get_group(app)
    assert list(group.commands) == [*COMMANDS, *GROUPS]
    for name, entry in COMMANDS.items():
        doc = inspect.getdoc(group.commands[name].callback) or ""
        assert entry.summary == doc.split("\n\n")[0], name
        assert group.commands[name].help == unwrapped(doc), name
    for name, sub in GROUPS.items():
        built = group.commands[name]
        assert isinstance(built, click.Group) and built.help == sub.summary
        assert list(built.commands) == list(sub.commands)
        for command, entry in sub.commands.items():
            assert entry.summary == (inspect.getdoc(built.commands[command].callback) or "").split("\n\n")[0]
    for args in (["--help"], [], ["policy", "--help"], ["nop", "--help"], ["scna"]):
        lazy, full = CliRunner().invoke(entry_app(), args), CliRunner().invoke(app, args)
        assert (lazy.exit_code, lazy.output) == (full.exit_code, full.output), args


def test_help_shows_each_paragraph_unbroken(monkeypatch: pytest.MonkeyPatch) -> None:
    """The help texts are docstring paragraphs, wrapped at 100 columns; shown with their line
    breaks, rich ended each row early and began a new one mid-sentence. On a terminal wide enough,
    each paragraph is one unbroken row: the summaries in the command list and every paragraph of a
    command's page, in the entry point's app and the full app alike."""
    import typer.rich_utils

    from rewriter.cli.main import COMMANDS, GROUPS, entry_app, unwrapped

    # typer reads TERMINAL_WIDTH once, when it is imported
    monkeypatch.setattr(typer.rich_utils, "MAX_WIDTH", 1000)
    assert any("\n" in e.summary for e in COMMANDS.values())  # the case this is about
    for built in (entry_app(), app):
        listing = CliRunner().invoke(built, ["--help"]).output
        for name, entry in COMMANDS.items():
            assert f"{name}  " in listing and entry.listed in listing, name
            page = CliRunner().invoke(built, [name, "--help"]).output
            doc = inspect.getdoc(typer.main.get_group(app).commands[name].callback) or ""
            for paragraph in unwrapped(doc).split("\n\n"):  # the command's page: every paragraph
                assert paragraph in page, (name, paragraph)
        for name, group in GROUPS.items():
            sub = CliRunner().invoke(built, [name, "--help"]).output
            for entry in group.commands.values():
                assert entry.listed in sub, name


@pytest.mark.parametrize(
    ("args", "loaded"),
    [
        (["--version"], set()),
        (["--help"], set()),
        (["undo", "--help"], {"rewriter.cli.rewrite"}),
        (["policy", "check", "--help"], {"rewriter.cli.prenop", "rewriter.cli.rewrite"}),
    ],
)
def test_start_up_imports_only_what_the_command_needs(args: list[str], loaded: set[str]) -> None:
    """`mcountrw --version` and `--help` import no command module, no numpy and no audit (a
    third of a second of start-up); a command imports its own module."""
    probe = (
        "import sys\nfrom rewriter.cli import run\nsys.argv = ['mcountrw', *sys.argv[1:]]\ntry:\n    run()\n"
        "except SystemExit:\n    pass\nprint(' '.join(m for m in sys.modules if m.startswith(('rewriter', 'numpy'))))"
    )
    done = subprocess.run([sys.executable, "-c", probe, *args], capture_output=True, text=True, check=True)
    from rewriter.cli.main import COMMANDS

    modules = set(done.stdout.splitlines()[-1].split())
    commands = modules & {entry.module for entry in COMMANDS.values()}
    assert commands == loaded
    if not loaded:
        assert "numpy" not in modules and "rewriter.audit" not in modules


def test_summaries_count_in_the_singular_and_the_plural(tmp_path: Path) -> None:
    """apply's and scan's summary lines say "1 site", "1 record", not "1 sites", "1 records"."""
    out = tmp_path / "one"
    src = str(FIXTURES / "bin" / "prof-le")
    one = CliRunner().invoke(
        app, ["apply", src, "--to", "nopped", "--only", "leaf_add", "--drop-records", "-o", str(out)]
    )
    assert one.exit_code == 0, one.output
    assert "changed 1 site to nopped (0 already nopped); 1 record dropped; 2 word writes in 2 stages" in one.output
    lines = unwrapped(CliRunner().invoke(app, ["scan", str(out)]).output).splitlines()
    head = lines[0]
    assert ": 6 sites (" in head and "1 of them from the patch log" in head
    assert (
        "an earlier rewrite dropped its record, and its words call nothing: no scan of the file finds it)" in (lines[1])
    ), lines[1]  # one site: not "their records"
    assert head.endswith("5 records (0 skipped, 0 unmatched), 1 zeroed slot, 1 site unrecorded"), head
    again = CliRunner().invoke(app, ["nop", str(out), "--only", "leaf_add", "-o", str(tmp_path / "again")])
    assert (
        again.exit_code == 0
        and "nothing to change: the 1 selected site is already nopped (nop; nop); wrote" in again.output
    )


def test_the_docs_runs_are_what_the_commands_print() -> None:
    """Every ```` $ mcountrw ... ```` block in docs/ shows the command's real stdout, byte for byte."""
    from conftest import ROOT

    runs = [
        (doc.name, m.group(1), m.group(2))
        for doc in sorted((ROOT / "docs").glob("*.md"))
        for m in re.finditer(r"```\n\$ mcountrw ([^\n]*)\n(.*?)```", doc.read_text(), re.S)
    ]
    assert runs  # docs/state-machine.md has two
    for doc, args, shown in runs:
        got = CliRunner().invoke(app, shlex.split(args))
        assert got.stdout == shown, (doc, args)


def test_check_plan_refuses_a_hand_made_offline_plan_that_writes_b_stub(tmp_path: Path) -> None:
    """The runtime ool enable, relabelled offline: `plan --offline` refuses it (the file's stubs are
    zero until boot), and check-plan called it SAFE."""
    doc = json.loads(
        mcountrw("plan", "--generation", "ool", "--from", "disabled", "--to", "enabled", "--format", "json").stdout
    )
    doc["mode"] = "offline"
    made = tmp_path / "ool-offline.json"
    made.write_text(json.dumps(doc))
    proc = mcountrw("check-plan", str(made))
    assert proc.returncode == 1 and "UNSAFE (kernel-only)" in proc.stdout and "only the boot fills" in proc.stdout
    refused = mcountrw("plan", "--generation", "ool", "--from", "disabled", "--to", "enabled", "--offline")
    assert refused.returncode == 1 and "no offline route" in refused.stderr


@pytest.mark.parametrize("state", ["guarded", "nopped", "armed", "broken"])
def test_plan_offline_to_a_state_ool_lacks_is_refused_in_one_line(state: str) -> None:
    """Was an internal error (KeyError, exit 3): the offline check asked the ool layout for its words."""
    for pair in (("--from", "disabled", "--to", state), ("--from", state, "--to", "disabled")):
        proc = mcountrw("plan", "--generation", "ool", *pair, "--offline")
        assert proc.returncode == 1 and f"{state} is not a state of an ool site" in proc.stderr, proc.stderr
        assert "internal error" not in proc.stderr and proc.stderr.count("\n") == 1


def test_cmodx_3_0_refusal_does_not_send_a_patchable_enable_offline() -> None:
    """A patchable (or ool) site is enabled only by the running kernel: "rewrite the file offline"
    sent the user to a route `plan --offline` and `apply` refuse. So did it for a target with mflr
    r0 in A on either generation (`disabled`: a file holding `mflr r0; nop` at a recorded site is
    refused by boot init, and apply refuses to write it): the way there under ISA 3.0 is a reboot
    into the built words, which init makes `disabled`, then an enable, which leaves A alone."""
    for generation, built in (("patchable", "nop; nop"), ("mprofile", "mflr r0; bl")):
        for target in ("disabled", "enabled"):
            proc = mcountrw("plan", "--generation", generation, "--from", "nopped", "--to", target, "--cmodx", "3.0")
            assert proc.returncode == 1 and "offline" not in proc.stderr, proc.stderr
            assert f"reboot into a file whose site holds the words it was built with ({built})" in proc.stderr
            assert "makes a recorded site disabled" in proc.stderr and proc.stderr.count("\n") == 1
    # what an offline rewrite is right for under 3.0: taking mflr out (nopped, its record dropped)
    nop = mcountrw("plan", "--generation", "mprofile", "--from", "disabled", "--to", "nopped", "--cmodx", "3.0")
    assert nop.returncode == 1 and "rewrite the file offline" in nop.stderr


def test_check_plan_safe_says_what_it_was_proven_under(tmp_path: Path) -> None:
    """SAFE named only the workload, while UNSAFE named the CPU rules too: a SAFE under --cmodx 3.0
    --stale-fetch read the same as one under the defaults."""
    made = tmp_path / "sf.json"
    made.write_text(mcountrw("plan", "--from", "disabled", "--to", "enabled", "--stale-fetch", "--format=json").stdout)
    strict = mcountrw("check-plan", str(made), "--cmodx", "3.0").stdout
    assert re.search(r"SAFE \(\d+ states explored, 2 tasks x 2 entries, cmodx 3\.0, stale fetch\)\n$", strict), strict
    plain = mcountrw("check-plan", str(made), "--no-stale-fetch").stdout
    assert re.search(r"SAFE \(\d+ states explored, 2 tasks x 2 entries, cmodx 3\.1\)\n$", plain), plain


def test_a_runtime_plan_to_nopped_says_a_stock_kernel_enable_would_race(tmp_path: Path) -> None:
    """A stock kernel enables by writing B alone (ftrace_make_call checks only B): from nopped that
    is the 2019 race, which the model does not see unless the enable is a plan too."""
    nopped = mcountrw("plan", "--generation", "patchable", "--from", "enabled", "--to", "nopped")
    assert "a stock kernel's ftrace enables a site by writing B alone" in nopped.stdout
    made = tmp_path / "n.json"
    made.write_text(mcountrw("plan", "--from", "enabled", "--to", "nopped", "--format", "json").stdout)
    assert "stock kernel" in mcountrw("check-plan", str(made)).stdout
    for target in ("disabled", "guarded"):
        assert "stock kernel" not in mcountrw("plan", "--from", "enabled", "--to", target).stdout
    assert "stock kernel" not in mcountrw("plan", "--from", "enabled", "--to", "nopped", "--offline").stdout


def test_a_broken_patchable_site_is_not_sent_offline_to_enabled() -> None:
    """The runtime refusal of a broken site said "repair the file offline", and the offline plan to
    `enabled` is refused (only the running kernel writes a patchable call)."""
    proc = mcountrw("plan", "--generation", "patchable", "--from", "broken", "--to", "enabled")
    assert proc.returncode == 1 and "repair the file offline to nopped, and let the running kernel" in proc.stderr
    repair = ("plan", "--generation", "patchable", "--from", "broken", "--to", "nopped", "--offline")
    assert mcountrw(*repair).returncode == 0
    mprofile = mcountrw("plan", "--generation", "mprofile", "--from", "broken", "--to", "enabled")
    assert mprofile.returncode == 1 and mprofile.stderr.rstrip().endswith("repair the file offline")
