"""A patch log says whether the rewrite cut a signature off (`summary.signature_stripped`), not
only that `--strip-signature` was given (`summary.strip_signature`): on an unsigned module the
option strips nothing, and the log read as if it had."""

from __future__ import annotations

import json
from pathlib import Path

from boot import require_corpus
from conftest import invoke

from rewriter.elf.signature import parse_trailer


def _summary(log: Path) -> dict:
    header: dict = json.loads(log.read_text().splitlines()[0])
    summary: dict = header["summary"]
    return summary


def test_the_log_says_whether_a_signature_was_cut_off(tmp_path: Path) -> None:
    signed = tmp_path / "signed.ko"
    signed.write_bytes((require_corpus().modules_dir / "fs/nls/nls_utf8.ko").read_bytes())
    trailer = parse_trailer(signed.read_bytes())
    assert trailer is not None
    unsigned = tmp_path / "unsigned.ko"
    unsigned.write_bytes(signed.read_bytes()[: trailer.elf_end])
    for src, stripped in ((signed, True), (unsigned, False)):
        out = tmp_path / f"{src.stem}.nop.ko"
        done = invoke("nop", src, "-o", out, "--only", "char2uni", "--drop-records", "--strip-signature")
        assert done.exit_code == 0, done.output
        summary = _summary(Path(f"{out}.mcountrw.jsonl"))
        assert (summary["strip_signature"], summary["signature_stripped"]) == (True, stripped)
        assert (parse_trailer(out.read_bytes()) is None) and (out.stat().st_size == trailer.elf_end)
