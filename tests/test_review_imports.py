"""What a rewrite imports: numpy.ma costs 6 to 14 ms of every nop and undo (rewriter/arrays.py), and
a module-level ``np.union1d`` in modload brought it back into every command that scans."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from conftest import FIXTURES


def _imports(*args: object, cwd: Path) -> set[str]:
    run = [sys.executable, "-X", "importtime", "-m", "rewriter", *(str(a) for a in args)]
    done = subprocess.run(run, capture_output=True, text=True, cwd=cwd)
    assert done.returncode == 0, done.stderr[-2000:]
    # "import time: self | cumulative | <indent>module"
    return {line.rsplit("|", 1)[1].strip() for line in done.stderr.splitlines() if line.startswith("import time:")}


def test_nop_and_undo_do_not_import_numpy_ma(tmp_path: Path) -> None:
    root = Path(__file__).resolve().parent.parent
    out = tmp_path / "prog.nop"
    nop = _imports("nop", FIXTURES / "bin" / "prof-le", "-o", out, "--drop-records", cwd=root)
    undo = _imports("undo", out, "-o", tmp_path / "prog.back", cwd=root)
    for modules in (nop, undo):
        assert {"rewriter.sites", "rewriter.modload"} <= modules  # the scan's code was imported
        assert not {"numpy.ma", "numpy.ma.core"} & modules
