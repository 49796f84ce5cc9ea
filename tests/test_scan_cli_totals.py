"""`mcountrw scan` over several images, as a table, closes with one total line: the sums of what
each image's summary line says, added up from counts the workers send back with their text, and
how many errors it leaves out. One image has none, and JSON and CSV are what they were."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from functools import partial
from pathlib import Path

import pytest
from conftest import FIXTURES, unwrapped
from typer.testing import CliRunner

from rewriter.batch import expand, render_many, scan_one
from rewriter.cli import app
from rewriter.report import scanfmt
from rewriter.report.scanfmt import NO_TOTALS, Totals

BIN = FIXTURES / "bin"


def _scan(*args: str) -> tuple[int, str]:
    got = CliRunner().invoke(app, ["scan", "--jobs", "1", *args])
    return got.exit_code, got.stdout


def _totals_of_json(*paths: Path) -> Totals:
    """The counts of the total line, read back from the JSON report of the same files: an image
    is a module or not, and its sites, traceable sites, records and sites without a record."""
    code, out = _scan("--format", "json", *map(str, paths))
    assert code in (0, 2), out
    images = json.loads(out)["images"]
    return Totals(
        len(images),
        sum(1 for i in images if i["kind"] == "module"),
        sum(i["summary"]["sites"] for i in images),
        sum(i["summary"]["traceable"] for i in images),
        sum(i["records"]["count"] for i in images),
        sum(1 for i in images for s in i["sites"] if not s["recorded"]),
    )


def test_a_table_of_several_images_closes_with_their_totals() -> None:
    code, out = _scan(str(BIN / "prof-le"), str(BIN / "clean.o"))
    assert code == 0
    assert out.endswith("\ntotal: 2 images, 9 sites, 9 traceable after boot; 9 records, 0 sites unrecorded\n")


def test_the_total_line_adds_up_the_json_counts_of_every_fixture() -> None:
    """23 fixtures, some with untraceable (broken, dangling) and unrecorded sites."""
    code, out = _scan(str(BIN))
    assert code == 0
    totals = _totals_of_json(BIN)
    assert totals.sites != totals.traceable and totals.unrecorded  # the counts differ: a real check
    assert unwrapped(out).splitlines()[-1] == scanfmt.total_line(totals, 0)
    total = "total: 23 images, 102 sites, 88 traceable after boot; 102 records, 2 sites unrecorded"
    assert unwrapped(out).splitlines()[-1] == total
    assert out.count("total: ") == 1


def test_one_image_has_no_total_line() -> None:
    code, out = _scan(str(BIN / "prof-le"))
    scanned = scan_one(BIN / "prof-le").scan
    assert code == 0 and scanned is not None
    assert out == scanfmt.table_text(scanned, 20)


@pytest.mark.parametrize("fmt", ["json", "csv"])
def test_json_and_csv_of_several_images_are_unchanged(fmt: str) -> None:
    """Other tools parse them: no total line, byte for byte the report of the scans."""
    code, out = _scan("--format", fmt, str(BIN))
    files, _ = expand([BIN])
    scans = [s for s in (scan_one(p).scan for p in files) if s is not None]
    assert code == 0 and len(scans) == len(files)
    expected = scanfmt.scans_json_text(scans, []) + "\n" if fmt == "json" else scanfmt.csv_text(scans)
    assert out == expected and "total: " not in out


def test_the_total_line_says_how_many_files_failed(tmp_path: Path) -> None:
    for name in ("prof-le", "clean.o", "anom-unrecorded"):
        shutil.copyfile(BIN / name, tmp_path / name)
    (tmp_path / "bad.ko").write_bytes(b"\x7fELF but nothing else")
    code, out = _scan(str(tmp_path))
    assert code == 2  # bad input
    totals = _totals_of_json(tmp_path)
    assert totals.images == 3
    assert unwrapped(out).splitlines()[-1] == scanfmt.total_line(totals, 1)
    assert unwrapped(out).splitlines()[-1].endswith("; 11 records, 1 site unrecorded; 1 error (on stderr)")


def test_two_files_one_failing_still_close_with_a_total(tmp_path: Path) -> None:
    """Two files were to be scanned: the line tells that only one was counted. A path that names
    no file is no image to scan: one file and one such path have no total line."""
    (tmp_path / "bad.ko").write_bytes(b"\x7fELF but nothing else")
    code, out = _scan(str(BIN / "clean.o"), str(tmp_path / "bad.ko"))
    assert code == 2
    assert unwrapped(out).splitlines()[-1] == (
        "total: 1 image, 3 sites, 3 traceable after boot; 3 records, 0 sites unrecorded; 1 error (on stderr)"
    )
    code, out = _scan(str(BIN / "clean.o"), str(tmp_path / "missing.ko"))
    assert code == 2 and "total: " not in out


def test_workers_send_the_counts_with_the_text() -> None:
    """The parent adds up counts, not text it would have to parse: each worker's report is its
    table text and the :class:`Totals` of that image's summary line."""
    files, _ = expand([BIN])
    render = partial(scanfmt.table_text_totals, limit=20)
    for rendered in render_many(files, 2, render):
        assert rendered.report is not None, rendered.error
        text, totals = rendered.report
        assert totals == _totals_of_json(rendered.path)
        scanned = scan_one(rendered.path).scan
        assert scanned is not None and text == scanfmt.table_text(scanned, 20)


def test_the_total_is_the_same_with_workers(tmp_path: Path) -> None:
    def run(jobs: str) -> str:
        cmd = [sys.executable, "-m", "rewriter", "scan", "--jobs", jobs, str(BIN)]
        return subprocess.run(cmd, capture_output=True, text=True, check=True).stdout

    two = run("2")
    assert two == run("1") and unwrapped(two).splitlines()[-1].startswith("total: 23 images, 102 sites")


def test_the_total_line_counts_in_the_singular_and_says_when_sites_are_traceable() -> None:
    assert scanfmt.total_line(Totals(2, 2, 1, 1, 1, 1), 2) == (
        "total: 2 images, 1 site, 1 traceable once loaded; 1 record, 1 site unrecorded; 2 errors (on stderr)"
    )
    assert "940 traceable after boot or once loaded;" in scanfmt.total_line(Totals(4, 3, 947, 940, 947, 0), 0)
    assert "940 traceable after boot;" in scanfmt.total_line(Totals(4, 0, 947, 940, 947, 0), 0)


def test_totals_add_field_by_field() -> None:
    parts = [Totals(1, 1, 474, 470, 474, 0), Totals(1, 0, 6, 5, 5, 1), Totals(1, 1, 3, 3, 3, 0)]
    assert scanfmt.add_totals(parts) == Totals(3, 2, 483, 478, 482, 1)
    assert scanfmt.add_totals([]) == NO_TOTALS


@pytest.mark.corpus
def test_a_few_real_modules_close_with_their_totals(tmp_path: Path) -> None:
    """kvm.ko of 6.12 and 7.2 hold weak-function bodies the kernel disables (4 and 3): traceable is
    fewer than sites. Modules of both generations, copied; then with a vmlinux, not copied."""
    from boot import require_kernel

    old, new = require_kernel("6.12"), require_kernel("7.2")
    for kernel in (old, new):
        for rel in ("arch/powerpc/kvm/kvm.ko.xz", "fs/nls/nls_utf8.ko.xz"):
            out = tmp_path / kernel.kernel.name / rel
            out.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(kernel.modules_dir / rel, out)
    code, out = _scan(str(tmp_path))
    assert code == 0
    assert (
        unwrapped(out).splitlines()[-1]
        == "total: 4 images, 947 sites, 940 traceable once loaded; 947 records, 0 sites unrecorded"
    )
    assert unwrapped(out).splitlines()[-1] == scanfmt.total_line(_totals_of_json(tmp_path), 0)
    code, out = _scan(str(old.vmlinux), str(tmp_path / "6.12"))
    assert code == 0
    assert unwrapped(out).splitlines()[-1] == (
        "total: 3 images, 39268 sites, 39003 traceable after boot or once loaded; 39268 records, 0 sites unrecorded"
    )
