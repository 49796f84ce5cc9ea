"""Fixes of my own review (session 19), each failing on the commit before it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from boot import require_kernel
from conftest import assert_one_line, invoke
from test_stripped import BIN, mcount_of, strip

from rewriter.elf.image import Image
from rewriter.prose import WIDTH, wrapped
from rewriter.sites import scan


def _bare(tmp_path: Path) -> Path:
    """``clean``, stripped, its __mcount_loc renamed: only --mcount-addr finds its sites."""
    data = bytearray(strip(BIN / "clean", tmp_path / "stripped").read_bytes())
    at = data.index(b"__mcount_loc\0")
    data[at : at + 2] = b"XX"
    bare = tmp_path / "bare"
    bare.write_bytes(bytes(data))
    return bare


def test_diff_of_two_trees_takes_mcount_addr_to_their_files(tmp_path: Path) -> None:
    """`diff A B --mcount-addr ADDR` of two directories passed the address to a two-file diff
    only: each pair of a tree's stripped files failed, saying to give the --mcount-addr given."""
    bare = _bare(tmp_path)
    for side in ("a", "b"):
        (tmp_path / side).mkdir()
        shutil.copy(bare, tmp_path / side / "prog")
    mcount = hex(mcount_of(BIN / "clean"))
    sites = len(scan(Image.load(BIN / "clean")).sites)
    result = invoke("diff", tmp_path / "a", tmp_path / "b", "--mcount-addr", mcount, "--format", "json")
    assert result.exit_code == 0, result.output
    assert "error" not in result.stderr, result.stderr
    (pair,) = json.loads(result.stdout)["images"]
    assert pair["unchanged"] == sites and pair["changes"] == []


def test_nop_of_a_module_of_data_alone_says_it_has_no_function(tmp_path: Path) -> None:
    """6.12's nls_ucs2_utils.ko holds tables alone: scan says it has no function symbol
    (7e688d0), and nop said "not built with -pg -mprofile-kernel or -fpatchable-function-entry?"
    of it, which it was. Both now give the one reason (sites.no_site_guess)."""
    module = require_kernel("6.12").modules_dir / "fs/nls/nls_ucs2_utils.ko.xz"
    out = tmp_path / "out.ko.xz"
    result = invoke("nop", module, "-o", out)
    assert_one_line(result, 1, "nothing to do", "no ftrace call site found: the file has no function symbol")
    assert "-fpatchable-function-entry?" not in result.stderr and not out.exists()


def test_a_label_is_not_left_alone_at_the_end_of_a_wrapped_line() -> None:
    """policy check's `warning: PATH: ...` with a long PATH wrapped as `warning:` alone, the path
    on the next line: a reader (and tests/test_review_prenop.py, in a deep pytest directory) found no
    line that starts `warning: ` and names the file. A label takes the next piece with it."""
    path = "/tmp/" + "d" * 70 + "/a.ko:"
    lines = wrapped(f"warning: {path} 1 of its records is zeroed, as a rewrite leaves them")
    assert lines[0] == f"warning: {path}", lines
    assert all(len(line) <= WIDTH for line in lines[1:]) and lines[1].startswith("    1 of its"), lines
    # a label that fits with what follows is wrapped as any piece is
    assert wrapped("result: " + "word " * 30)[0].startswith("result: word word")
