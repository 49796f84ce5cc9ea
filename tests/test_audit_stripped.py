"""`mcountrw audit` on stripped images: ``--generation`` reaches the scan (one file, and a tree
audited by worker processes), and the report says what it could not check without symbols
instead of "no anomalies".

Fixtures are stripped with ``objcopy --strip-all`` (``clean`` is an mprofile ELFv2 LE executable);
the corpus tests strip the 6.1, 6.12 and 7.2 vmlinux."""

from __future__ import annotations

import json
import os
from pathlib import Path

from test_bad_input import assert_cli_error, mcountrw
from test_stripped import BIN, strip


def _audit_json(*args: str) -> tuple[int, dict]:  # type: ignore[type-arg]
    proc = mcountrw("audit", "--format", "json", *args)
    assert proc.returncode in (0, 1), proc.stderr
    return proc.returncode, json.loads(proc.stdout)


# -- --generation ---------------------------------------------------------------------------------


def test_generation_overrides_what_the_audit_detects_in_a_stripped_file(tmp_path: Path) -> None:
    """``clean`` is mprofile: as it is, its three records name ``bl _mcount``. Audited as patchable,
    each record must name the first of two nops, so each is dangling, in the kernel's words."""
    bare = strip(BIN / "clean", tmp_path / "clean")
    code, doc = _audit_json(str(bare))
    (img,) = doc["images"]
    assert code == 0 and img["generation"] == "mprofile" and img["counts"]["sites"] == 3
    assert [a for a in img["anomalies"] if a["severity"] != "note"] == []
    code, doc = _audit_json(str(bare), "--generation", "patchable")
    (img,) = doc["images"]
    assert code == 1 and img["generation"] == "patchable" and img["counts"]["sites"] == 0
    dangling = [a for a in img["anomalies"] if a["kind"] == "dangling"]
    assert len(dangling) == 3 and all(a["severity"] == "error" for a in dangling)
    assert all("expected (60000000) != found (" in a["message"] for a in dangling)
    assert all(a["message"].endswith("not the first of two nops") for a in dangling)


def test_generation_reaches_every_worker_of_a_tree(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    tree.mkdir()
    for name in ("clean", "prof-le", "anom-unrecorded"):
        strip(BIN / name, tree / name)
    _, doc = _audit_json(str(tree), "-j", "2")
    assert {i["generation"] for i in doc["images"]} == {"mprofile"}
    _, doc = _audit_json(str(tree), "-j", "2", "--generation", "ool")
    assert len(doc["images"]) == 3 and {i["generation"] for i in doc["images"]} == {"ool"}
    assert all(any(a["kind"] == "dangling" for a in i["anomalies"]) for i in doc["images"])


def test_generation_other_than_mprofile_refuses_mcount_addr(tmp_path: Path) -> None:
    bare = strip(BIN / "clean", tmp_path / "clean")
    proc = mcountrw("audit", str(bare), "--generation", "ool", "--mcount-addr", "0x10000000")
    assert_cli_error(proc, "--mcount-addr names _mcount", "not ool")
    assert proc.stdout == ""


def test_audit_help_gives_generation_the_help_scan_gives_it() -> None:
    def generation_help(command: str) -> str:
        out = mcountrw(command, "--help", env={**os.environ, "COLUMNS": "200", "TERM": "dumb"}).stdout
        (line,) = [x for x in out.splitlines() if "--generation" in x]
        return " ".join(line.split("--generation", 1)[1].replace("│", "").split())

    assert generation_help("audit") == generation_help("scan")
    assert "override the generation detected from the image (stripped images)" in generation_help("audit")
