"""Review h19, helper D: a black-box pass over diff, audit, verify/undo and prenop.

* ``diff`` of a kernel against its rewrite read without the rewrite's patch log listed the nopped
  sites as removed and their functions as removed functions (a 6.12 vmlinux against its prenop'ed
  copy: 38710 sites, 38247 functions), and said nothing of the zeroed record slots that explain
  it, which ``scan`` of the same file names. Now the pair says so, and JSON has ``zeroed``/``logs``.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from conftest import FIXTURES
from typer.testing import CliRunner

from rewriter.cli import app


def _nopped_without_log(tmp_path: Path) -> tuple[Path, Path, Path]:
    """The fixture ``clean``, a copy nopped with its records dropped, and the copy's log moved away."""
    src, out = FIXTURES / "bin" / "clean", tmp_path / "clean.nop"
    assert CliRunner().invoke(app, ["nop", str(src), "-o", str(out), "--drop-records"]).exit_code == 0
    log = tmp_path / "elsewhere.jsonl"
    shutil.move(tmp_path / "clean.nop.mcountrw.jsonl", log)
    return src, out, log


def test_diff_against_a_rewrite_read_without_its_log_says_the_records_are_zeroed(tmp_path: Path) -> None:
    src, out, _ = _nopped_without_log(tmp_path)
    shown = CliRunner().invoke(app, ["diff", str(src), str(out)])
    assert shown.exit_code == 1, shown.output
    (line,) = [x for x in shown.output.splitlines() if x.startswith("**Zeroed records")]
    assert line.startswith("**Zeroed records, no patch log read:** B: 3 zeroed record slots, "), line
    assert "read as removed sites" in line and "--log" in line, line
    assert "Sites: 3 removed;" in shown.output  # what the line explains, still said
    (pair,) = json.loads(CliRunner().invoke(app, ["diff", str(src), str(out), "--format", "json"]).output)["images"]
    assert pair["zeroed"] == [0, 3] and pair["logs"] == [None, None]


def test_diff_with_the_log_has_no_zeroed_line_and_names_the_log(tmp_path: Path) -> None:
    src, out, log = _nopped_without_log(tmp_path)
    shown = CliRunner().invoke(app, ["diff", str(src), str(out), "--log", str(log)])
    assert shown.exit_code == 1 and "Zeroed records" not in shown.output, shown.output
    assert "Sites: 3 record-removed, 3 state;" in shown.output, shown.output
    args = ["diff", str(src), str(out), "--log", str(log), "--format", "json"]
    (pair,) = json.loads(CliRunner().invoke(app, args).output)["images"]
    assert pair["zeroed"] == [0, 3] and pair["logs"] == [None, str(log)]
    same = CliRunner().invoke(app, ["diff", str(src), str(src)])
    assert same.exit_code == 0 and "Zeroed records" not in same.output
