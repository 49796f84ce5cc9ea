"""Small defects helper S found and left (outside its files): a file named on both sides of a diff
printed its error twice; scan's init note said "1 of the traceable sites are"."""

from __future__ import annotations

from pathlib import Path

from boot import require_kernel
from conftest import invoke


def test_diff_of_one_bad_file_on_both_sides_says_its_error_once(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    done = invoke("diff", empty, empty)
    assert done.exit_code == 2, done.output
    assert done.stderr.splitlines() == [f"mcountrw: error: {empty}: empty file"], done.stderr


def test_scan_init_note_counts_one_site_in_the_singular() -> None:
    module = require_kernel("6.12").modules_dir / "fs/nls/nls_utf8.ko.xz"  # init_nls_utf8 alone in .init.text
    done = invoke("scan", module)
    assert done.exit_code == 0, done.output
    notes = [line for line in done.stdout.splitlines() if line.startswith("  init text: ")]
    assert len(notes) == 1 and notes[0].startswith("  init text: 1 of the traceable sites is in init sections"), notes
