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


# -- verify: what a mismatch says ----------------------------------------------------------


def _verify(original: Path, patched: Path, log: Path) -> tuple[int, str]:
    result = CliRunner().invoke(app, ["verify", str(original), str(patched), "--log", str(log)])
    return result.exit_code, result.output


def test_verify_mismatch_counts_the_bytes_and_says_what_the_log_does_at_the_first(tmp_path: Path) -> None:
    """Verify said "offset 0x100000 holds 69, the log says 68" for a byte the log never writes: read as a write
    of the log's, and one offset named hid how many bytes differ."""
    src, out, log = _nopped_without_log(tmp_path)
    made = out.read_bytes()
    first_write = int(json.loads(log.read_text().splitlines()[1])["offset"], 16)
    # a byte the log leaves alone, past every write: the original's last byte
    untouched = bytearray(made)
    untouched[-1] ^= 1
    (tmp_path / "untouched").write_bytes(untouched)
    code, text = _verify(src, tmp_path / "untouched", log)
    assert code == 1, text
    assert f"1 byte differs from what the log makes of {src}; it is at offset {len(made) - 1:#x}: " in text, text
    assert "as the original does (the log leaves that byte as it was)" in text, text
    # a word the log writes put back as it was, and a byte past every write changed too
    undone = bytearray(made)
    undone[first_write : first_write + 4] = src.read_bytes()[first_write : first_write + 4]
    undone[-1] ^= 1
    (tmp_path / "undone").write_bytes(undone)
    n = sum(x != y for x, y in zip(undone, made, strict=True))
    code, text = _verify(src, tmp_path / "undone", log)
    assert code == 1 and n > 1, text
    assert f"{n} bytes differ from what the log makes of {src}; the first is at offset " in text, text
    assert "a byte the log writes (the original holds " in text, text


def test_verify_of_a_file_of_another_size_says_it_is_not_the_logs_output(tmp_path: Path) -> None:
    src, out, log = _nopped_without_log(tmp_path)
    longer = tmp_path / "longer"
    longer.write_bytes(out.read_bytes() + b"\0")
    code, text = _verify(src, longer, log)
    size = out.stat().st_size
    assert code == 1, text
    assert f"{longer}: its ELF is {size + 1} bytes, where the log replayed on {src} makes {size} bytes: " in text, text
    assert "not the file the log made" in text, text
