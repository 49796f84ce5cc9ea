"""The command line contract: exit codes 0 / 1 findings / 2 bad input, one-line errors, outputs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import FIXTURES

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
    assert "generation mprofile: 6 sites (6 enabled->disabled), 6 traceable after boot" in table.stdout
    assert data["images"][0]["generation"] == "mprofile"
    assert len(data["images"][0]["sites"]) == 6 == len(csv) - 1
    # The first eight columns are the old contract; new ones only ever go at the end.
    assert csv[0] == (
        "path,address,section,offset,function,variant,state,recorded,generation,record,boot_state,traceable,stub,source"
    )
    for row in csv[1:]:
        cols = row.split(",")
        # mprofile: the record names the call slot itself.
        assert cols[8:] == ["mprofile", cols[1], "disabled", "1", "", "image"]


def test_scan_table_marks_what_the_kernel_cannot_trace() -> None:
    """An unrecorded site stays as it is and is untraceable; a recorded site holding words the
    kernel's init refuses turns ftrace off for the whole boot, so no site is traceable."""
    unrec = mcountrw("scan", str(FIXTURES / "bin" / "anom-unrecorded")).stdout.splitlines()
    assert "(2 enabled->disabled, 1 enabled->enabled), 2 traceable after boot" in unrec[0]
    row = next(line for line in unrec if line.endswith(" unrecorded_fn"))
    assert row.split()[3:6] == ["enabled->enabled", "UNREC", "NO"]
    broken = mcountrw("scan", str(FIXTURES / "bin" / "anom-broken")).stdout.splitlines()
    assert "(1 broken->refused, 2 enabled->disabled), 0 traceable after boot" in broken[0]
    assert broken[1].startswith("  FTRACE OFF after boot: 1 recorded site(s) hold words ftrace_init_nop() refuses")
    assert next(line for line in broken if line.endswith(" broken_fn")).split()[3:6] == ["broken->REFUSED", "rec", "NO"]
    image = json.loads(mcountrw("scan", "--format", "json", str(FIXTURES / "bin" / "anom-broken")).stdout)["images"][0]
    assert [s["boot_state"] for s in image["sites"]] == ["disabled", None, "disabled"]
    assert not any(s["traceable"] for s in image["sites"]) and image["summary"]["ftrace_off"]
    assert image["summary"]["untraceable"] == {"unrecorded": 0, "refused": 1, "weak-body": 0, "ftrace-off": 2}


def test_scan_patchable_object_names_the_first_nop_as_its_record() -> None:
    table = mcountrw("scan", str(FIXTURES / "bin" / "patchable-le.o")).stdout
    assert "generation patchable: 6 sites (6 nopped->disabled), 6 traceable after boot" in table
    assert "records name the word 4 bytes before each call slot" in table
    image = json.loads(mcountrw("scan", "--format", "json", str(FIXTURES / "bin" / "patchable-le.o")).stdout)
    site = image["images"][0]["sites"][0]
    assert site == {
        "address": None, "section": ".text", "offset": 4, "function": "static_helper", "variant": "patchable",
        "state": "nopped", "recorded": True, "record": ".text+0x0", "boot_state": "disabled", "traceable": True,
        "stub": None, "source": "image",
    }  # fmt: skip


def test_scan_generation_overrides_detection() -> None:
    forced = json.loads(mcountrw("scan", "--format", "json", "--generation", "patchable", str(PROF)).stdout)
    image = forced["images"][0]
    # prof-le's records name `bl _mcount` words: read as patchable entries, none is a site.
    assert image["generation"] == "patchable" and image["records"]["count"] == 6
    assert len(image["records"]["unmatched"]) == 6 - len(image["sites"])


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
    assert_one_line_error(mcountrw("scan", str(tmp_path / "nope")), "nope", "no such file")


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
    assert_one_line_error(mcountrw("undo", str(PROF), "--log", str(log), "-o", str(tmp_path / "x")), "another file")
    assert not (tmp_path / "x").exists()


def test_signed_module_needs_strip_signature(corpus, tmp_path: Path) -> None:
    src = corpus.modules_dir / "fs/nls/nls_utf8.ko"
    assert_one_line_error(mcountrw("nop", str(src), "-o", str(tmp_path / "m.ko")), "signed module", "--strip-signature")
    assert not (tmp_path / "m.ko").exists()
    # --drop-records too: a nopped site that stays recorded is refused (the kernel's boot check).
    assert (
        mcountrw("nop", str(src), "-o", str(tmp_path / "m.ko"), "--strip-signature", "--drop-records").returncode == 0
    )


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
    """The log reader's fast path for write lines gives exactly what json gives."""
    import json as _json

    from rewriter.edits import KINDS
    from rewriter.log import load

    out = tmp_path / "out"
    assert mcountrw("nop", str(FIXTURES / "bin" / "prof-le.o"), "-o", str(out)).returncode == 0
    log = tmp_path / "out.mcountrw.jsonl"
    records = [_json.loads(line) for line in log.read_text().splitlines()[1:-1]]
    slow = [KINDS[r["type"]](r) for r in records if r["type"] != "barrier"]
    assert list(load(log).edits) == slow


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
