"""nop, apply, verify and undo print their paths escaped, as scan and audit do: a newline in a
file's name split each of their one-line accounts ("wrote /x/new" and "line and ..." on two lines),
so that a build log could not be read line by line."""

from __future__ import annotations

import shutil
from pathlib import Path

from conftest import FIXTURES, invoke

PROGRAM = FIXTURES / "bin" / "prof-le"


def _lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line]


def test_every_line_of_a_rewrite_and_its_undo_names_the_files_escaped(tmp_path: Path) -> None:
    src = shutil.copy(PROGRAM, tmp_path / "in\nput")
    out, back, again = tmp_path / "new\nline", tmp_path / "ba\nck", tmp_path / "x\ty"
    steps = [
        (invoke("nop", src, "-o", out, "--drop-records"), 0),
        (invoke("verify", src, out), 0),
        (invoke("apply", out, "--to", "enabled", "-o", again), 0),
        (invoke("undo", out, "-o", back), 0),
    ]
    for result, code in steps:
        assert result.exit_code == code, result.output
        lines = _lines(result.output)
        assert lines, result.output
        # every line that names a file names it whole, escaped; none starts with a name's tail
        assert not any(line.startswith(("put", "line", "ck", "y")) for line in lines), lines
        assert "\t" not in result.output
    assert "wrote " + str(tmp_path / "new\\nline") in steps[0][0].output
    assert f"ok: {tmp_path}/new\\nline differs from {tmp_path}/in\\nput" in steps[1][0].output
    assert "the log builds on " + str(tmp_path / "new\\nline.mcountrw.jsonl") in steps[2][0].output
    assert "wrote " + str(tmp_path / "ba\\nck") in steps[3][0].output
    assert back.read_bytes() == PROGRAM.read_bytes()  # the files themselves keep their real names
