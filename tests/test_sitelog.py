"""The patch log as a source of sites (issue 12): site lines, and the commands that read them.

A rewrite writes one `site` line per site it touched; `scan`, `audit`, `diff`, `policy check`,
`apply` and `nop` read the log beside a file when its output is that file (else warn once and go
on without it), or the log named by `--log` / `--input-log` (refused, exit 2, if it is another
file's). Sites only the log knows say `"source": "log"`."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import FIXTURES, scan_table, unwrapped

from rewriter.edits import BytesEdit, RelaEdit, RelaPut, WordWrite, apply_edits, invert_edits
from rewriter.errors import LogError, WordMismatch
from rewriter.files import apply_file
from rewriter.known import GROUP_LINE_START
from rewriter.log import default_log_path, dumps, load, load_known, loads
from rewriter.rewrite import Options, Selection
from rewriter.states import SiteState

NOP_DROP = Options(SiteState.NOPPED, drop_records=True)
OLD = Path(__file__).resolve().parent / "data" / "old-logs"


def mcountrw(*args: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "rewriter", *map(str, args)], capture_output=True, text=True)


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def nopped(tmp_path: Path) -> Path:
    """prof-le with every site nopped and unrecorded: no scan of the file finds one."""
    out = tmp_path / "prog.nop"
    apply_file(FIXTURES / "bin" / "prof-le", out, Selection(), NOP_DROP)
    return out


# -- the lines ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["prof-le", "prof-be.o", "std-le.o", "patchable-le.o", "ool-be.o"])
def test_sites_lines_read_back_as_the_rewrite_made_them(name: str, tmp_path: Path) -> None:
    """A few `sites` lines (version 3), column by column, read back as the rewrite's site lines by
    load and load_known alike; each is exactly what json writes with sorted keys."""
    out = tmp_path / name
    lines = apply_file(FIXTURES / "bin" / name, out, Selection(), NOP_DROP).rewrite.site_lines
    assert lines
    text = default_log_path(out).read_text()
    groups = [line for line in text.splitlines() if line.startswith(GROUP_LINE_START)]
    assert groups and all(json.dumps(json.loads(g), sort_keys=True) == g for g in groups)
    assert sum(json.loads(g)["sites"] for g in groups) == len(lines)
    assert list(load(default_log_path(out)).sites) == list(lines) == list(load_known(default_log_path(out)).sites)


def test_a_relocatable_files_branch_reads_as_its_displacement(tmp_path: Path) -> None:
    """An object's `bl _mcount` is unrelocated (`bl .+0` until the loader applies its REL24) and
    has no address: its write line quotes it by displacement, not as a call to address 0; the
    line's call_relocation names the target. A linked file's branch still reads by its target."""
    logs = {}
    for name in ("prof-be.o", "prof-le"):
        out = tmp_path / name
        apply_file(FIXTURES / "bin" / name, out, Selection(), NOP_DROP)
        lines = [json.loads(line) for line in default_log_path(out).read_text().splitlines()]
        logs[name] = {line["old_asm"] for line in lines if line.get("type") == "write" and line["slot"] == "B"}
    assert logs["prof-be.o"] == {"bl .+0"}
    assert all(text.startswith("bl 0x") for text in logs["prof-le"]) and logs["prof-le"]


@pytest.mark.parametrize(
    ("name", "columns"),
    [("prof-le", {"call_target": WordWrite, "record_slot": BytesEdit}),
     ("prof-be.o", {"call_relocation": RelaEdit, "record_relocation": RelaEdit}),
     ("patchable-le.o", {"record_relocation": RelaEdit})],
)  # fmt: skip
def test_sites_lines_refer_to_the_edits_instead_of_repeating_them(
    name: str, columns: dict[str, type], tmp_path: Path
) -> None:
    """The original bl (the write that replaced it), the relocation entries taken out and the record
    slots' old values are the edits' own: a sites line names the edit, it does not copy it."""
    out = tmp_path / name
    apply_file(FIXTURES / "bin" / name, out, Selection(), NOP_DROP)
    log = load(default_log_path(out))
    text = default_log_path(out).read_text()
    sites = [line for line in text.splitlines() if line.startswith(GROUP_LINE_START)]
    (group,) = [json.loads(line) for line in sites]
    assert set(group["columns"]) == {"section_offset", "function", *columns}
    for column, kind in columns.items():
        for ref in group["columns"][column]:
            edit = log.edits[ref if isinstance(ref, int) else ref[0]]
            assert type(edit) is kind, (column, ref)
    for e in log.edits:
        held = [e.old] if isinstance(e, BytesEdit) else list(e.entries) if isinstance(e, RelaEdit) else []
        assert not any(h.hex() in sites[0] for h in held if len(h) >= 8)


def test_a_sites_line_with_escapes_round_trips(nopped: Path) -> None:
    log = load(default_log_path(nopped))
    odd = log.sites[0]._replace(function='we"ird\\name\u00e9', section=".text\ttab")
    text = dumps(log.__class__(log.header, log.edits, log.barriers, log.original, (odd,))).decode()
    assert loads(text, "x").sites == (odd,)


def test_a_chain_writes_out_what_its_edits_do_not_hold(tmp_path: Path) -> None:
    """A log built on another carries forward the sites still nopped: their facts are in the base
    log's edits, not in this log's, so they are written out; the newest log alone describes them."""
    nop = tmp_path / "prof-le.nop"
    first = apply_file(FIXTURES / "bin" / "prof-le", nop, Selection(), NOP_DROP).rewrite.site_lines
    back = tmp_path / "prof-le.back"
    second = apply_file(nop, back, Selection(only=("sum8",)), Options(SiteState.ENABLED)).rewrite.site_lines
    carried = [line for line in first if line.function != "sum8"]
    assert [line for line in second if line.function != "sum8"] == carried
    assert list(load_known(default_log_path(back)).sites) == list(second)
    groups = [json.loads(line) for line in default_log_path(back).read_text().splitlines()
              if line.startswith(GROUP_LINE_START)]  # fmt: skip
    inline = [g for g in groups if g["sites"] == len(carried)]
    assert len(inline) == 1 and all(isinstance(t, str) for t in inline[0]["columns"]["call_target"])


def test_a_sites_line_naming_the_wrong_edit_is_refused(nopped: Path) -> None:
    """A reference must name an edit of the right kind at the right place (a log edited on purpose,
    its footer recomputed, is still refused in one line; undo, which reads no site, still reads it)."""
    import hashlib

    lines = default_log_path(nopped).read_text().splitlines()[:-1]
    n = next(i for i, line in enumerate(lines) if line.startswith(GROUP_LINE_START))
    group = json.loads(lines[n])
    group["columns"]["call_target"][0] = group["columns"]["record_slot"][0]  # a bytes edit, not a write
    lines[n] = json.dumps(group, sort_keys=True)
    body = "\n".join(lines) + "\n"
    footer = {"type": "footer", "lines": len(lines), "sha256": hashlib.sha256(body.encode()).hexdigest()}
    text = body + json.dumps(footer, sort_keys=True) + "\n"
    with pytest.raises(LogError, match=r"malformed site line .*names no WordWrite"):
        loads(text, "edited")
    assert len(loads(text, "edited", sites=False).edits) == len(load(default_log_path(nopped)).edits)


def test_undo_and_verify_ignore_the_site_lines(nopped: Path) -> None:
    log = load(default_log_path(nopped), sites=False)
    assert log.sites == () and len(log.edits) == len(load(default_log_path(nopped)).edits)
    assert mcountrw("verify", FIXTURES / "bin" / "prof-le", nopped, "--log", default_log_path(nopped)).returncode == 0


def test_a_log_of_a_newer_format_is_refused_in_one_line(nopped: Path, tmp_path: Path) -> None:
    text = default_log_path(nopped).read_text().replace('"version": 3', '"version": 4', 1)
    with pytest.raises(LogError, match="version 4, this mcountrw reads 1, 2 and 3"):
        loads(text, "newer")


def _table(rows: list[bytes]) -> bytearray:
    return bytearray(b"HEAD" + b"".join(rows) + b"TAIL")


def test_rela_put_takes_back_what_a_rela_edit_took_out() -> None:
    rows = [bytes([n]) * 24 for n in range(1, 7)]
    buf = _table(rows)
    dropped = RelaEdit("t", 4, 6 * 24, 24, (1, 4), (rows[1], rows[4]), None, "drop")
    after = apply_edits(bytearray(buf), [dropped], "little")
    assert after[4 + 4 * 24 : 4 + 6 * 24] == bytes(48)
    put = RelaPut("t", 4, 6 * 24, 24, (1, 4), (rows[1], rows[4]), None, "put back")
    assert apply_edits(bytearray(after), [put], "little") == buf
    assert invert_edits(bytearray(buf), [put], "little") == after
    # moved, not dropped: rows 4 and 5 go to indexes 0 and 2
    moved = RelaPut("t", 4, 6 * 24, 24, (0, 2), (rows[5], rows[4]), (5, 4), "move")
    done = apply_edits(bytearray(buf), [moved], "little")
    assert done == _table([rows[5], rows[0], rows[4], rows[1], rows[2], rows[3]])
    assert invert_edits(done, [moved], "little") == buf
    with pytest.raises(WordMismatch, match="zeroed entries"):
        apply_edits(bytearray(buf), [put], "little")  # nothing freed to put it into
    line = json.loads(moved.to_line(None))  # type: ignore[arg-type]
    assert RelaPut.from_json(line) == moved
    with pytest.raises(ValueError, match="pair up"):
        RelaPut.from_json({**line, "to": [2, 0]})


# -- the commands ---------------------------------------------------------------------------


def test_scan_shows_the_sites_only_the_log_knows(nopped: Path) -> None:
    """The issue's first example: `nop` all, then `scan` said 0 sites."""
    table = mcountrw("scan", nopped)
    assert table.returncode == 0, table.stderr
    assert "6 sites (6 nopped->nopped, 6 of them from the patch log)" in unwrapped(table.stdout)
    assert f"LOG: 6 sites known only from the patch log {nopped}" in unwrapped(table.stdout)
    rows = scan_table(table.stdout)  # every site LOG: said once, above the table
    assert len(rows) == 6 and all("known only from the patch log (LOG)" in r["every site"].split(", ") for r in rows)
    doc = json.loads(mcountrw("scan", nopped, "--format", "json").stdout)["images"][0]
    assert doc["log"] == str(default_log_path(nopped)) and doc["summary"]["by_source"] == {"image": 0, "log": 6}
    assert {(s["source"], s["state"], s["recorded"], s["traceable"]) for s in doc["sites"]} == {
        ("log", "nopped", False, False)
    }
    rows = list(csv.DictReader(io.StringIO(mcountrw("scan", nopped, "--format", "csv").stdout)))
    assert [r["source"] for r in rows] == ["log"] * 6
    plain = json.loads(mcountrw("scan", FIXTURES / "bin" / "prof-le", "--format", "json").stdout)["images"][0]
    assert plain["log"] is None and {s["source"] for s in plain["sites"]} == {"image"}


def test_a_log_beside_another_file_is_ignored_with_one_warning(nopped: Path) -> None:
    """A file changed after its rewrite (here: undone in place) no longer matches the log beside it."""
    saved = default_log_path(nopped).read_bytes()
    assert mcountrw("undo", nopped, "--log", default_log_path(nopped), "--in-place").returncode == 0
    default_log_path(nopped).write_bytes(saved)  # undo leaves the log where it was anyway
    done = mcountrw("scan", nopped, "--format", "json")
    assert done.returncode == 0
    warning = done.stderr.splitlines()
    assert len(warning) == 1 and warning[0].startswith(f"mcountrw: warning: {default_log_path(nopped)}: ignored")
    assert sha(nopped)[:16] in warning[0]
    assert json.loads(done.stdout)["images"][0]["summary"]["by_source"] == {"image": 6, "log": 0}


def test_an_explicit_log_of_another_file_is_refused_naming_both_hashes(nopped: Path, tmp_path: Path) -> None:
    other = tmp_path / "other"
    shutil.copy(FIXTURES / "bin" / "prof-le", other)
    log = default_log_path(nopped)
    out_sha = load_known(log).header.output.sha256
    for args in (("scan", other, "--log", log), ("apply", other, "--to", "enabled", "--dry-run", "--input-log", log),
                 ("audit", other, "--log", log), ("policy", "check", FIXTURES.parent / "examples" / "keep-core.policy",
                                                  other, "--log", log)):  # fmt: skip
        done = mcountrw(*args)
        assert done.returncode == 2, (args, done.stderr)
        assert done.stderr.count("\n") == 1 and out_sha in done.stderr and sha(other) in done.stderr
    done = mcountrw("scan", other, nopped, "--log", log)
    assert done.returncode == 2 and "names the log of one image" in done.stderr


def test_an_explicit_log_is_read_wherever_it_is(nopped: Path, tmp_path: Path) -> None:
    moved = tmp_path / "elsewhere.jsonl"
    default_log_path(nopped).rename(moved)
    assert "0 sites" in mcountrw("scan", nopped).stdout
    assert "6 of them from the patch log" in unwrapped(mcountrw("scan", nopped, "--log", moved).stdout)
    r = apply_file(nopped, None, Selection(only=("sum8",)), Options(SiteState.ENABLED), dry_run=True, input_log=moved)
    assert [s.function for s in r.rewrite.restored] == ["sum8"] and r.base is not None and r.base.path == str(moved)


def test_diff_sees_a_nopped_site_change_instead_of_vanishing(nopped: Path, tmp_path: Path) -> None:
    done = mcountrw("diff", FIXTURES / "bin" / "prof-le", nopped, "--format", "json")
    assert done.returncode == 1  # a difference, as diff(1) says it
    changes = json.loads(done.stdout)["images"][0]["changes"]
    assert sorted({c["change"] for c in changes}) == ["record-removed", "state"] and len(changes) == 12
    # --log goes to the file it describes, whichever side it is given for; a log of neither is refused
    moved = tmp_path / "x.jsonl"
    default_log_path(nopped).rename(moved)
    gone = json.loads(mcountrw("diff", FIXTURES / "bin" / "prof-le", nopped, "--format", "json").stdout)
    assert {c["change"] for c in gone["images"][0]["changes"]} == {"removed"}
    again = mcountrw("diff", FIXTURES / "bin" / "prof-le", nopped, "--format", "json", "--log", moved)
    assert json.loads(again.stdout)["images"][0]["changes"] == changes
    neither = mcountrw("diff", FIXTURES / "bin" / "prof-be", FIXTURES / "bin" / "prof-le", "--log", moved)
    assert neither.returncode == 2 and "the log of neither file" in neither.stderr


def test_audit_and_policy_check_count_the_log_sites(nopped: Path, tmp_path: Path) -> None:
    doc = json.loads(mcountrw("audit", nopped, "--format", "json").stdout)
    counts = doc["images"][0]["counts"]
    assert (counts["sites"], counts["from_log"], counts["by_state"]) == (6, 6, {"nopped": 6})
    policy = tmp_path / "p.policy"
    policy.write_text("default nop\nkeep leaf_add\n")
    done = mcountrw("policy", "check", policy, nopped)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "6 sites" in unwrapped(done.stdout).splitlines()[0]


def test_a_version_1_log_beside_its_file_still_reads(tmp_path: Path) -> None:
    """tests/data/old-logs: no site lines, no base; the file's log all the same."""
    patched = tmp_path / "prof-be.o.nop"
    shutil.copy(OLD / "prof-be.o.nop", patched)
    shutil.copy(OLD / "prof-be.o.nop.mcountrw.jsonl", default_log_path(patched))
    done = mcountrw("scan", patched, "--format", "json")
    assert done.returncode == 0 and done.stderr == ""
    image = json.loads(done.stdout)["images"][0]
    assert image["log"] == str(default_log_path(patched)) and image["summary"]["by_source"]["log"] == 0


def test_every_line_of_a_patch_log_has_sorted_keys(tmp_path: Path) -> None:
    """docs/rewrite.md: "Keys are sorted". The barrier lines were written in insertion order."""
    from typer.testing import CliRunner

    from rewriter.cli import app

    out = tmp_path / "p.nop"
    done = CliRunner().invoke(app, ["nop", str(FIXTURES / "bin" / "prof-le"), "--drop-records", "-o", str(out)])
    assert done.exit_code == 0, done.output
    lines = Path(f"{out}.mcountrw.jsonl").read_text().splitlines()
    assert any('"type": "barrier"' in line for line in lines), lines
    for line in lines:
        assert line == json.dumps(json.loads(line), sort_keys=True), line
